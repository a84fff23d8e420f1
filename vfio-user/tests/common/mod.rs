//! A small device for protocol tests: registers in a Vec, a DMA engine driven by registers, MSI-X
//! through `IrqRouter`, and a shared log the test inspects while the server owns the device.
#![allow(dead_code)]

use std::os::fd::{FromRawFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;

use hwrr_device::irq::{Delivery, IRQ_INFO_AUTOMASKED};
use hwrr_device::{
    Device, DeviceDescription, DeviceError, DeviceIdentity, DmaMapping, DmaRegion, GuestMemory,
    IrqInfo, IrqRouter, IrqSetRequest, RegionInfo, RegionKind, Result,
};
use hwrr_vfio_user::server::{ServeSummary, Server, ServerOptions};

/// BAR0 layout.
pub const REG_DMA_ADDR: u64 = 0x100;
pub const REG_DMA_LEN: u64 = 0x108;
/// Write: 1 = DMA write the buffer to guest memory, 2 = DMA read guest memory into the buffer,
/// 3 = raise MSI-X vector `value >> 8`, 4 = raise INTx.
pub const REG_CMD: u64 = 0x10c;
/// Read: 0 after a successful command, else the errno of the failure.
pub const REG_STATUS: u64 = 0x110;
pub const DMA_BUF: u64 = 0x200;
pub const DMA_BUF_LEN: usize = 0x400;
pub const BAR0_SIZE: u64 = 0x1000;
pub const BAR2_SIZE: u64 = 0x100;
pub const ROM_SIZE: u64 = 0x800;

pub const VENDOR: u16 = 0x1b36;
pub const DEVICE: u16 = 0x0005;

#[derive(Default)]
pub struct Log {
    /// The memory the server attached, so tests can DMA from another thread.
    pub memory: Option<Arc<dyn GuestMemory>>,
    pub maps: Vec<(DmaMapping, bool)>,
    pub unmaps: Vec<DmaMapping>,
    pub resets: u32,
    /// DMA/IRQ commands the device finished.
    pub commands: u32,
    pub attaches: u32,
    pub disconnects: u32,
    pub writes: Vec<(u32, u64, Vec<u8>)>,
    pub deliveries: Vec<Delivery>,
}

pub struct TestDevice {
    bar0: Vec<u8>,
    bar2: Vec<u8>,
    rom: Vec<u8>,
    config: Vec<u8>,
    router: IrqRouter,
    memory: Option<Arc<dyn GuestMemory>>,
    pub log: Arc<Mutex<Log>>,
}

pub fn irqs() -> Vec<IrqInfo> {
    vec![
        IrqInfo {
            index: 0,
            count: 1,
            flags: 1 | 2 | IRQ_INFO_AUTOMASKED,
        },
        IrqInfo {
            index: 2,
            count: 4,
            flags: 1 | 2 | 8,
        },
    ]
}

impl TestDevice {
    pub fn new() -> Self {
        let mut config = vec![0u8; 256];
        config[0..2].copy_from_slice(&VENDOR.to_le_bytes());
        config[2..4].copy_from_slice(&DEVICE.to_le_bytes());
        config[0x18] = 1; // BAR2 is I/O
        config[0x2c..0x2e].copy_from_slice(&0x1af4u16.to_le_bytes());
        let rom = (0..ROM_SIZE as usize).map(|i| (i * 7 + 3) as u8).collect();
        TestDevice {
            bar0: vec![0; BAR0_SIZE as usize],
            bar2: vec![0; BAR2_SIZE as usize],
            rom,
            config,
            router: IrqRouter::new(&irqs()),
            memory: None,
            log: Arc::new(Mutex::new(Log::default())),
        }
    }

    fn u64_at(&self, o: u64) -> u64 {
        let o = o as usize;
        u64::from_le_bytes(self.bar0[o..o + 8].try_into().unwrap())
    }

    fn set_status(&mut self, errno: i32) {
        let o = REG_STATUS as usize;
        self.bar0[o..o + 4].copy_from_slice(&(errno as u32).to_le_bytes());
    }

    fn command(&mut self, value: u32) {
        let addr = self.u64_at(REG_DMA_ADDR);
        let len = ((self.u64_at(REG_DMA_LEN) & 0xffff_ffff) as usize).min(DMA_BUF_LEN);
        let buf = DMA_BUF as usize;
        let result: Result<()> = match value & 0xff {
            1 => match &self.memory {
                Some(m) => m.write(addr, &self.bar0[buf..buf + len]),
                None => Err(DeviceError::Invalid("no memory".into())),
            },
            2 => match &self.memory {
                Some(m) => m.read(addr, &mut self.bar0[buf..buf + len]),
                None => Err(DeviceError::Invalid("no memory".into())),
            },
            3 => self.router.raise(2, value >> 8).map(|d| {
                self.log.lock().unwrap().deliveries.push(d);
            }),
            4 => self.router.raise(0, 0).map(|d| {
                self.log.lock().unwrap().deliveries.push(d);
            }),
            _ => Err(DeviceError::Invalid("unknown command".into())),
        };
        self.set_status(result.err().map(|e| e.errno()).unwrap_or(0));
        self.log.lock().unwrap().commands += 1;
    }
}

impl Device for TestDevice {
    fn describe(&self) -> DeviceDescription {
        DeviceDescription {
            identity: DeviceIdentity::from_config_space(&self.config, None).unwrap(),
            config_space: self.config.clone(),
            regions: vec![
                RegionInfo {
                    index: 0,
                    kind: RegionKind::Mmio,
                    size: BAR0_SIZE,
                    flags: 3,
                    alias_of: None,
                },
                RegionInfo {
                    index: 2,
                    kind: RegionKind::Pio,
                    size: BAR2_SIZE,
                    flags: 3,
                    alias_of: None,
                },
                RegionInfo {
                    index: 6,
                    kind: RegionKind::Rom,
                    size: ROM_SIZE,
                    flags: 1,
                    alias_of: None,
                },
                RegionInfo {
                    index: 7,
                    kind: RegionKind::Config,
                    size: 256,
                    flags: 3,
                    alias_of: None,
                },
            ],
            irqs: irqs(),
            rom: Some(self.rom.clone()),
        }
    }

    fn region_read(&mut self, region: u32, offset: u64, data: &mut [u8]) -> Result<()> {
        let src = match region {
            0 => &self.bar0,
            2 => &self.bar2,
            6 => &self.rom,
            r => return Err(DeviceError::NoSuchRegion(r)),
        };
        let o = offset as usize;
        let s = src.get(o..o + data.len()).ok_or(DeviceError::OutOfRange {
            region,
            offset,
            len: data.len() as u64,
            size: src.len() as u64,
        })?;
        data.copy_from_slice(s);
        Ok(())
    }

    fn region_write(&mut self, region: u32, offset: u64, data: &[u8]) -> Result<()> {
        self.log
            .lock()
            .unwrap()
            .writes
            .push((region, offset, data.to_vec()));
        let dst = match region {
            0 => &mut self.bar0,
            2 => &mut self.bar2,
            r => return Err(DeviceError::NoSuchRegion(r)),
        };
        let o = offset as usize;
        let len = dst.len();
        dst.get_mut(o..o + data.len())
            .ok_or(DeviceError::OutOfRange {
                region,
                offset,
                len: data.len() as u64,
                size: len as u64,
            })?
            .copy_from_slice(data);
        if region == 0 && offset == REG_CMD && data.len() == 4 {
            self.command(u32::from_le_bytes(data.try_into().unwrap()));
        }
        Ok(())
    }

    fn config_read(&mut self, offset: u32, data: &mut [u8]) -> Result<()> {
        let o = offset as usize;
        data.copy_from_slice(
            self.config
                .get(o..o + data.len())
                .ok_or(DeviceError::Invalid("config".into()))?,
        );
        Ok(())
    }

    fn config_write(&mut self, offset: u32, data: &[u8]) -> Result<()> {
        let o = offset as usize;
        // Identity stays read-only.
        if o < 4 {
            return Ok(());
        }
        self.config
            .get_mut(o..o + data.len())
            .ok_or(DeviceError::Invalid("config".into()))?
            .copy_from_slice(data);
        Ok(())
    }

    fn set_irqs(&mut self, request: IrqSetRequest) -> Result<()> {
        self.router.set_irqs(request)
    }

    fn dma_map(&mut self, region: DmaRegion) -> Result<()> {
        self.log
            .lock()
            .unwrap()
            .maps
            .push((region.mapping, region.memory.is_some()));
        Ok(())
    }

    fn dma_unmap(&mut self, mapping: DmaMapping) -> Result<()> {
        self.log.lock().unwrap().unmaps.push(mapping);
        Ok(())
    }

    fn reset(&mut self) -> Result<()> {
        self.bar0.iter_mut().for_each(|b| *b = 0);
        self.router.clear();
        self.log.lock().unwrap().resets += 1;
        Ok(())
    }

    fn attach_memory(&mut self, memory: Arc<dyn GuestMemory>) {
        self.memory = Some(memory.clone());
        let mut log = self.log.lock().unwrap();
        log.attaches += 1;
        log.memory = Some(memory);
    }

    fn disconnect(&mut self) {
        self.memory = None;
        self.log.lock().unwrap().disconnects += 1;
    }
}

/// A server on a temp socket serving a fresh TestDevice in a thread.
pub struct Harness {
    pub dir: tempfile::TempDir,
    pub path: PathBuf,
    pub log: Arc<Mutex<Log>>,
    pub stop: Arc<std::sync::atomic::AtomicBool>,
    pub thread: Option<JoinHandle<ServeSummary>>,
}

impl Harness {
    pub fn start(mut options: ServerOptions) -> Harness {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("dev.sock");
        let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
        options.stop = Some(stop.clone());
        options.poll_interval = std::time::Duration::from_millis(20);
        let mut server = Server::bind(&path, options).unwrap();
        let mut dev = TestDevice::new();
        let log = dev.log.clone();
        let thread = std::thread::spawn(move || server.serve(&mut dev).unwrap());
        Harness {
            dir,
            path,
            log,
            stop,
            thread: Some(thread),
        }
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Stops the server and returns its summary.
    pub fn finish(mut self) -> ServeSummary {
        self.stop.store(true, std::sync::atomic::Ordering::Relaxed);
        self.thread.take().unwrap().join().unwrap()
    }
}

impl Drop for Harness {
    fn drop(&mut self) {
        self.stop.store(true, std::sync::atomic::Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// A memfd of `len` bytes.
pub fn memfd(len: usize) -> OwnedFd {
    // SAFETY: memfd_create with a static name; result checked.
    let fd = unsafe { libc::memfd_create(c"hwrr-test".as_ptr(), libc::MFD_CLOEXEC) };
    assert!(fd >= 0);
    // SAFETY: fresh descriptor.
    let fd = unsafe { OwnedFd::from_raw_fd(fd) };
    // SAFETY: ftruncate on our descriptor.
    assert_eq!(
        unsafe { libc::ftruncate(std::os::fd::AsRawFd::as_raw_fd(&fd), len as i64) },
        0
    );
    fd
}

/// A raw vfio-user message: header with `flags`, then `body`.
pub fn raw_message(id: u16, command: u16, flags: u32, body: &[u8]) -> Vec<u8> {
    use hwrr_vfio_user::protocol::{Header, HEADER_SIZE};
    let mut v = Header {
        id,
        command,
        size: (HEADER_SIZE + body.len()) as u32,
        flags,
        error: 0,
    }
    .to_bytes()
    .to_vec();
    v.extend_from_slice(body);
    v
}

/// Sends `bytes` with `fds` attached (SCM_RIGHTS) in one `sendmsg`.
pub fn send_with_fds(s: &std::os::unix::net::UnixStream, bytes: &[u8], fds: &[i32]) {
    use std::os::fd::AsRawFd;
    let mut iov = libc::iovec {
        iov_base: bytes.as_ptr() as *mut _,
        iov_len: bytes.len(),
    };
    let mut cbuf = [0u64; 32];
    // SAFETY: test-only sendmsg with an aligned control buffer large enough for the fds.
    unsafe {
        let mut m: libc::msghdr = std::mem::zeroed();
        m.msg_iov = &mut iov;
        m.msg_iovlen = 1;
        let payload = std::mem::size_of_val(fds) as u32;
        m.msg_control = cbuf.as_mut_ptr().cast();
        m.msg_controllen = libc::CMSG_SPACE(payload) as _;
        let c = libc::CMSG_FIRSTHDR(&m);
        (*c).cmsg_level = libc::SOL_SOCKET;
        (*c).cmsg_type = libc::SCM_RIGHTS;
        (*c).cmsg_len = libc::CMSG_LEN(payload) as _;
        std::ptr::copy_nonoverlapping(
            fds.as_ptr().cast::<u8>(),
            libc::CMSG_DATA(c),
            payload as usize,
        );
        assert_eq!(libc::sendmsg(s.as_raw_fd(), &m, 0), bytes.len() as isize);
    }
}
