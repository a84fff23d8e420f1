//! QEMU's x-vfio-user-server refuses ROM reads until the guest has mapped the ROM BAR (it answers
//! EINVAL), so `RemoteDevice::new` must not give up on the whole device when reading the ROM fails:
//! `hwrr record --vfio-user` in front of QEMU's e1000e depends on it.

mod common;

use std::io;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use common::{TestDevice, ROM_SIZE};
use hwrr_device::{
    Device, DeviceDescription, DmaMapping, DmaRegion, GuestMemory, IrqSetRequest, RegionKind,
    Result,
};
use hwrr_vfio_user::client::{Client, ClientOptions, RemoteDevice};
use hwrr_vfio_user::server::{Server, ServerOptions};

/// The test device, except that its ROM region refuses every read.
struct RomRefused(TestDevice);

const ROM_REGION: u32 = 6;

impl Device for RomRefused {
    fn describe(&self) -> DeviceDescription {
        self.0.describe()
    }
    fn region_read(&mut self, region: u32, offset: u64, data: &mut [u8]) -> Result<()> {
        if region == ROM_REGION {
            return Err(io::Error::from_raw_os_error(22).into());
        }
        self.0.region_read(region, offset, data)
    }
    fn region_write(&mut self, region: u32, offset: u64, data: &[u8]) -> Result<()> {
        self.0.region_write(region, offset, data)
    }
    fn config_read(&mut self, offset: u32, data: &mut [u8]) -> Result<()> {
        self.0.config_read(offset, data)
    }
    fn config_write(&mut self, offset: u32, data: &[u8]) -> Result<()> {
        self.0.config_write(offset, data)
    }
    fn set_irqs(&mut self, request: IrqSetRequest) -> Result<()> {
        self.0.set_irqs(request)
    }
    fn dma_map(&mut self, region: DmaRegion) -> Result<()> {
        self.0.dma_map(region)
    }
    fn dma_unmap(&mut self, mapping: DmaMapping) -> Result<()> {
        self.0.dma_unmap(mapping)
    }
    fn reset(&mut self) -> Result<()> {
        self.0.reset()
    }
    fn attach_memory(&mut self, memory: Arc<dyn GuestMemory>) {
        self.0.attach_memory(memory)
    }
    fn disconnect(&mut self) {
        self.0.disconnect()
    }
}

#[test]
fn remote_device_without_a_readable_rom_still_describes_and_proxies_the_device() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("dev.sock");
    let stop = Arc::new(AtomicBool::new(false));
    let options = ServerOptions {
        stop: Some(stop.clone()),
        poll_interval: std::time::Duration::from_millis(20),
        ..ServerOptions::default()
    };
    let mut server = Server::bind(&path, options).unwrap();
    let server_thread = std::thread::spawn(move || {
        let mut dev = RomRefused(TestDevice::new());
        server.serve(&mut dev).unwrap()
    });

    let client = Client::connect(&path, ClientOptions::default()).unwrap();
    let mut dev = RemoteDevice::new(client).expect("a refused ROM read is not fatal");
    let desc = dev.describe();
    assert_eq!(desc.rom, None, "no ROM bytes could be read");
    let rom = desc
        .regions
        .iter()
        .find(|r| r.index == ROM_REGION)
        .expect("the ROM region is still described");
    assert_eq!((rom.kind, rom.size), (RegionKind::Rom, ROM_SIZE));
    // The device works; later ROM reads (once the guest maps it, for QEMU) go to the server.
    dev.region_write(0, 0x30, &[5, 6]).unwrap();
    let mut b = [0u8; 2];
    dev.region_read(0, 0x30, &mut b).unwrap();
    assert_eq!(b, [5, 6]);
    assert!(dev.region_read(ROM_REGION, 0, &mut b).is_err());

    drop(dev);
    stop.store(true, Ordering::Relaxed);
    server_thread.join().unwrap();
}
