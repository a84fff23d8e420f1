//! Entry points shared by the `message_parser` fuzz target (`vfio-user/fuzz/`) and the test that
//! replays its corpus on stable Rust: arbitrary bytes go to every parser and, framed as a client's
//! stream, to a real server connection over a socketpair.

use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::sync::Arc;
use std::time::Duration;

use hwrr_device::{
    Device, DeviceDescription, DeviceError, DeviceIdentity, DmaMapping, DmaRegion, GuestMemory,
    IrqInfo, IrqRouter, IrqSetRequest, RegionInfo, RegionKind,
};

use crate::protocol::{self, DmaLayout, Header, HEADER_SIZE};
use crate::server::{serve_connection, ServerOptions};

/// Largest input [`serve_bytes`] feeds to the server (bounded so the socket buffer holds it).
pub const MAX_SERVE_INPUT: usize = 64 << 10;

/// Runs `data` through every parser: as one header-framed message after another, and each
/// message body through [`protocol::parse_any`] and the layout-specific parsers.
pub fn parse_messages(data: &[u8]) {
    let mut rest = data;
    while rest.len() >= HEADER_SIZE {
        let Ok(h) = Header::parse(rest) else { return };
        let size = (h.size as usize).clamp(HEADER_SIZE, rest.len());
        let body = &rest[HEADER_SIZE..size];
        let nfds = (h.error % 4) as usize;
        let _ = protocol::parse_any(&h, body, nfds, 1 << 20);
        let _ = protocol::RegionInfoMsg::parse_reply(body);
        let _ = protocol::Version::parse(body).map(|v| v.capabilities());
        let _ = protocol::WriteMulti::parse(body).map(|w| w.iter().count());
        for layout in [DmaLayout::Spec, DmaLayout::Qemu] {
            let _ = protocol::DmaAccess::parse_with_data(body, layout, 1 << 20);
            let _ = protocol::DmaAccess::parse_read_request(body, layout, 1 << 20);
        }
        let _ = protocol::SetIrqsMsg::parse(body, nfds, 64);
        rest = &rest[size..];
    }
}

/// Serves `data` (after a valid VERSION) to a server connection with a [`ScratchDevice`] over a
/// socketpair, and drains the replies. Returns the number of requests the server handled.
pub fn serve_bytes(data: &[u8]) -> u64 {
    let data = &data[..data.len().min(MAX_SERVE_INPUT)];
    let Ok((client, server)) = UnixStream::pair() else {
        return 0;
    };
    let Ok(mut reader) = client.try_clone() else {
        return 0;
    };
    let drain = std::thread::spawn(move || {
        let mut buf = [0u8; 8192];
        while matches!(reader.read(&mut buf), Ok(n) if n > 0) {}
    });
    let mut version = Vec::new();
    let mut m = protocol::MessageBuilder::new(&mut version, 0, 1, 0, 0);
    m.u16(0).u16(1).bytes(b"{}\0");
    let n = m.finish();
    let mut w = &client;
    let _ = w.write_all(&version[..n]);
    let _ = w.write_all(data);
    let _ = client.shutdown(std::net::Shutdown::Write);
    let mut device = ScratchDevice::new();
    let options = ServerOptions {
        dma_timeout: Duration::from_millis(20),
        poll_interval: Duration::from_millis(20),
        max_data_xfer_size: 64 << 10,
        ..Default::default()
    };
    let handled = serve_connection(&mut device, server, &options)
        .map(|s| s.requests)
        .unwrap_or(0);
    let _ = drain.join();
    handled
}

/// A small device for fuzzing: BAR0 registers, an I/O BAR, a ROM, config space, INTx and MSI-X
/// through [`IrqRouter`]. Writing BAR0 offset 0x10 starts a DMA (bit 0: write 16 bytes of BAR0 to
/// guest memory at the address in 0x18, else read them), writing 0x20 raises MSI-X vector `value`.
pub struct ScratchDevice {
    bar0: Vec<u8>,
    bar2: Vec<u8>,
    rom: Vec<u8>,
    config: Vec<u8>,
    router: IrqRouter,
    memory: Option<Arc<dyn GuestMemory>>,
}

impl std::fmt::Debug for ScratchDevice {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ScratchDevice")
            .field("memory_attached", &self.memory.is_some())
            .finish_non_exhaustive()
    }
}

fn scratch_irqs() -> Vec<IrqInfo> {
    vec![
        IrqInfo {
            index: 0,
            count: 1,
            flags: 7,
        },
        IrqInfo {
            index: 2,
            count: 8,
            flags: 3,
        },
    ]
}

impl Default for ScratchDevice {
    fn default() -> Self {
        Self::new()
    }
}

impl ScratchDevice {
    /// A fresh device.
    pub fn new() -> Self {
        let mut config = vec![0u8; 256];
        config[0..4].copy_from_slice(&[0x36, 0x1b, 0x05, 0x00]);
        ScratchDevice {
            bar0: vec![0; 0x1000],
            bar2: vec![0; 0x100],
            rom: (0..0x400).map(|i| i as u8).collect(),
            config,
            router: IrqRouter::new(&scratch_irqs()),
            memory: None,
        }
    }

    fn region(&mut self, region: u32) -> hwrr_device::Result<&mut Vec<u8>> {
        match region {
            0 => Ok(&mut self.bar0),
            2 => Ok(&mut self.bar2),
            6 => Ok(&mut self.rom),
            r => Err(DeviceError::NoSuchRegion(r)),
        }
    }
}

fn span(
    len: usize,
    region: u32,
    offset: u64,
    n: usize,
) -> hwrr_device::Result<std::ops::Range<usize>> {
    let start = usize::try_from(offset).unwrap_or(usize::MAX);
    match start.checked_add(n) {
        Some(end) if end <= len => Ok(start..end),
        _ => Err(DeviceError::OutOfRange {
            region,
            offset,
            len: n as u64,
            size: len as u64,
        }),
    }
}

impl Device for ScratchDevice {
    fn describe(&self) -> DeviceDescription {
        let r = |index, kind, size, flags| RegionInfo {
            index,
            kind,
            size,
            flags,
            alias_of: None,
        };
        DeviceDescription {
            identity: DeviceIdentity::from_config_space(&self.config, None).unwrap_or_default(),
            config_space: self.config.clone(),
            regions: vec![
                r(0, RegionKind::Mmio, 0x1000, 3),
                r(2, RegionKind::Pio, 0x100, 3),
                r(6, RegionKind::Rom, 0x400, 1),
                r(7, RegionKind::Config, 256, 3),
            ],
            irqs: scratch_irqs(),
            rom: Some(self.rom.clone()),
        }
    }

    fn region_read(
        &mut self,
        region: u32,
        offset: u64,
        data: &mut [u8],
    ) -> hwrr_device::Result<()> {
        let src = self.region(region)?;
        let s = span(src.len(), region, offset, data.len())?;
        data.copy_from_slice(&src[s]);
        Ok(())
    }

    fn region_write(&mut self, region: u32, offset: u64, data: &[u8]) -> hwrr_device::Result<()> {
        if region == 6 {
            return Err(DeviceError::Invalid("the ROM is read-only".into()));
        }
        let dst = self.region(region)?;
        let s = span(dst.len(), region, offset, data.len())?;
        dst[s].copy_from_slice(data);
        if region == 0 && offset == 0x10 && !data.is_empty() {
            let addr = u64::from_le_bytes(self.bar0[0x18..0x20].try_into().unwrap_or([0; 8]));
            if let Some(m) = self.memory.clone() {
                let _ = if data[0] & 1 == 1 {
                    m.write(addr, &self.bar0[0x100..0x110])
                } else {
                    m.read(addr, &mut self.bar0[0x100..0x110])
                };
            }
        }
        if region == 0 && offset == 0x20 && !data.is_empty() {
            let _ = self.router.raise(2, data[0] as u32);
        }
        Ok(())
    }

    fn config_read(&mut self, offset: u32, data: &mut [u8]) -> hwrr_device::Result<()> {
        let s = span(self.config.len(), 7, offset as u64, data.len())?;
        data.copy_from_slice(&self.config[s]);
        Ok(())
    }

    fn config_write(&mut self, offset: u32, data: &[u8]) -> hwrr_device::Result<()> {
        let s = span(self.config.len(), 7, offset as u64, data.len())?;
        self.config[s].copy_from_slice(data);
        Ok(())
    }

    fn set_irqs(&mut self, request: IrqSetRequest) -> hwrr_device::Result<()> {
        self.router.set_irqs(request)
    }

    fn dma_map(&mut self, _region: DmaRegion) -> hwrr_device::Result<()> {
        Ok(())
    }

    fn dma_unmap(&mut self, _mapping: DmaMapping) -> hwrr_device::Result<()> {
        Ok(())
    }

    fn reset(&mut self) -> hwrr_device::Result<()> {
        self.bar0.iter_mut().for_each(|b| *b = 0);
        self.router.clear();
        Ok(())
    }

    fn attach_memory(&mut self, memory: Arc<dyn GuestMemory>) {
        self.memory = Some(memory);
    }

    fn disconnect(&mut self) {
        self.memory = None;
    }
}
