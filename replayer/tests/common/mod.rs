//! Shared helpers: a small synthetic device, a trace builder, and a VMM-like driver.
#![allow(dead_code)]

use std::os::fd::OwnedFd;
use std::sync::Arc;

use hwrr_device::{eventfd, Device, IrqSetRequest, SparseMemory};
use hwrr_formats::{
    AccessData, DeviceIdentity, DmaMapping, DmaRead, DmaWrite, Event, EventKind, Irq, IrqAction,
    IrqData, IrqInfo, IrqSetup, RegionAccess, RegionInfo, RegionKind, TraceHeader,
};
use hwrr_replayer::{MemorySource, ReplayOptions, Replayer};

/// MSI-X capability offset in the synthetic config space.
pub const MSIX_CAP: usize = 0x70;
/// MSI capability offset.
pub const MSI_CAP: usize = 0x50;
/// PM capability offset.
pub const PM_CAP: usize = 0x40;
/// MSI-X table offset in BAR0.
pub const MSIX_TABLE: u64 = 0xE000;
/// MSI-X PBA offset in BAR0.
pub const MSIX_PBA: u64 = 0xF000;
/// MSI-X vectors.
pub const MSIX_VECTORS: u32 = 5;

/// A NIC-like device: BAR0 128 KiB MMIO (MSI-X table at 0xE000, PBA at 0xF000), BAR1 32-byte I/O,
/// BAR2/3 64-bit prefetchable 16 KiB, a 32 KiB ROM, PM + MSI (64-bit, 4 vectors) + MSI-X (5).
pub fn header() -> TraceHeader {
    let mut c = vec![0u8; 256];
    let put16 = |c: &mut Vec<u8>, o: usize, v: u16| c[o..o + 2].copy_from_slice(&v.to_le_bytes());
    let put32 = |c: &mut Vec<u8>, o: usize, v: u32| c[o..o + 4].copy_from_slice(&v.to_le_bytes());
    put16(&mut c, 0x00, 0x8086);
    put16(&mut c, 0x02, 0x10d3);
    put16(&mut c, 0x04, 0x0000); // command
    put16(&mut c, 0x06, 0x0010); // status: capability list
    c[0x08] = 0x01; // revision
    c[0x0b] = 0x02; // class: network
    put32(&mut c, 0x10, 0xfebc_0000); // BAR0 mem32
    put32(&mut c, 0x14, 0x0000_c001); // BAR1 I/O
    put32(&mut c, 0x18, 0xfe00_000c); // BAR2 mem64 prefetchable
    put32(&mut c, 0x1c, 0x0000_0001); // BAR3: high dword
    put16(&mut c, 0x2c, 0x8086);
    put16(&mut c, 0x2e, 0x0001);
    put32(&mut c, 0x30, 0xfeb0_0000); // ROM BAR, disabled
    c[0x34] = PM_CAP as u8;
    c[0x3d] = 1; // INTA
                 // PM
    c[PM_CAP] = 0x01;
    c[PM_CAP + 1] = MSI_CAP as u8;
    put16(&mut c, PM_CAP + 2, 0x0003);
    // MSI: 64-bit, multiple message capable = 4 vectors (MMC=2)
    c[MSI_CAP] = 0x05;
    c[MSI_CAP + 1] = MSIX_CAP as u8;
    put16(&mut c, MSI_CAP + 2, 0x0080 | (2 << 1));
    // MSI-X: 5 entries, table BIR 0 @ 0xE000, PBA BIR 0 @ 0xF000
    c[MSIX_CAP] = 0x11;
    c[MSIX_CAP + 1] = 0;
    put16(&mut c, MSIX_CAP + 2, (MSIX_VECTORS - 1) as u16);
    put32(&mut c, MSIX_CAP + 4, MSIX_TABLE as u32);
    put32(&mut c, MSIX_CAP + 8, MSIX_PBA as u32);
    let rom: Vec<u8> = (0..0x8000u32).map(|i| (i * 7 + 0x55) as u8).collect();
    TraceHeader {
        device: DeviceIdentity::from_config_space(&c, Some("0000:00:19.0".into())).expect("header"),
        config_space: c,
        regions: vec![
            region(0, RegionKind::Mmio, 0x20000),
            region(1, RegionKind::Pio, 0x20),
            region(2, RegionKind::Mmio, 0x4000),
            region(6, RegionKind::Rom, 0x8000),
            region(7, RegionKind::Config, 256),
        ],
        irqs: vec![
            IrqInfo {
                index: 0,
                count: 1,
                flags: 1 | 2 | 4,
            },
            IrqInfo {
                index: 1,
                count: 4,
                flags: 1 | 8,
            },
            IrqInfo {
                index: 2,
                count: MSIX_VECTORS,
                flags: 1 | 8,
            },
        ],
        rom: Some(rom),
        ..Default::default()
    }
}

fn region(index: u32, kind: RegionKind, size: u64) -> RegionInfo {
    RegionInfo {
        index,
        kind,
        size,
        flags: 3 | 4,
        alias_of: None,
    }
}

/// Builds a trace event by event, with dense sequence numbers and 100 ns steps.
#[derive(Default)]
pub struct Trace {
    pub events: Vec<Event>,
}

impl Trace {
    pub fn new() -> Self {
        Self::default()
    }

    fn push(&mut self, kind: EventKind) -> u64 {
        let seq = self.events.len() as u64;
        self.events.push(Event::new(seq, seq * 100, kind));
        seq
    }

    fn access(region: u32, offset: u64, size: u8, value: u64) -> RegionAccess {
        RegionAccess {
            region,
            offset,
            data: AccessData::value(size, value).expect("size"),
        }
    }

    pub fn read(&mut self, offset: u64, value: u32) -> u64 {
        self.push(EventKind::MmioRead(Self::access(
            0,
            offset,
            4,
            value as u64,
        )))
    }

    pub fn write(&mut self, offset: u64, value: u32) -> u64 {
        self.push(EventKind::MmioWrite(Self::access(
            0,
            offset,
            4,
            value as u64,
        )))
    }

    pub fn read_sized(&mut self, region: u32, offset: u64, size: u8, value: u64) -> u64 {
        let a = Self::access(region, offset, size, value);
        self.push(if region == 1 {
            EventKind::PioRead(a)
        } else {
            EventKind::MmioRead(a)
        })
    }

    pub fn write_sized(&mut self, region: u32, offset: u64, size: u8, value: u64) -> u64 {
        let a = Self::access(region, offset, size, value);
        self.push(if region == 1 {
            EventKind::PioWrite(a)
        } else {
            EventKind::MmioWrite(a)
        })
    }

    /// A BAR0 access of `data.len()` bytes (not 1, 2, 4 or 8: recorded as bytes).
    pub fn bytes(&mut self, write: bool, offset: u64, data: &[u8]) -> u64 {
        let a = RegionAccess {
            region: 0,
            offset,
            data: AccessData::Bytes(data.to_vec()),
        };
        self.push(if write {
            EventKind::MmioWrite(a)
        } else {
            EventKind::MmioRead(a)
        })
    }

    pub fn irq(&mut self, index: u32, vector: u32) -> u64 {
        self.push(EventKind::Irq(Irq { index, vector }))
    }

    pub fn irq_setup(&mut self, index: u32, count: u32) -> u64 {
        self.push(EventKind::IrqSetup(IrqSetup {
            index,
            start: 0,
            count,
            action: IrqAction::Trigger,
            data: IrqData::Eventfd(vec![true; count as usize]),
        }))
    }

    pub fn dma_map(&mut self, iova: u64, len: u64) -> u64 {
        self.push(EventKind::DmaMap(DmaMapping {
            iova,
            len,
            flags: 3,
        }))
    }

    pub fn dma_write(&mut self, iova: u64, data: &[u8], before: Option<&[u8]>) -> u64 {
        self.push(EventKind::DmaWrite(DmaWrite {
            iova,
            data: data.to_vec(),
            before: before.map(|b| b.to_vec()),
        }))
    }

    pub fn dma_read(&mut self, iova: u64, data: &[u8]) -> u64 {
        self.push(EventKind::DmaRead(DmaRead {
            iova,
            data: data.to_vec(),
        }))
    }

    pub fn reset(&mut self) -> u64 {
        self.push(EventKind::Reset)
    }

    pub fn config_read(&mut self, offset: u32, value: u32) -> u64 {
        self.push(EventKind::ConfigRead(hwrr_formats::ConfigAccess {
            offset,
            data: AccessData::value(4, value as u64).expect("size"),
        }))
    }

    pub fn msix_table_write(&mut self, vector: u32, word: u64, value: u32) -> u64 {
        self.write(MSIX_TABLE + vector as u64 * 16 + word * 4, value)
    }

    pub fn source(self, chunk: usize) -> Arc<MemorySource> {
        Arc::new(MemorySource::with_chunk_size(header(), self.events, chunk))
    }
}

/// A VMM-like driver around a replayer: guest memory and one eventfd per MSI-X vector.
pub struct Vmm {
    pub dev: Replayer,
    pub mem: Arc<SparseMemory>,
    pub msix: Vec<OwnedFd>,
}

impl Vmm {
    /// A replayer over `trace` (chunks of `chunk` events) with `options`, 1 MiB of guest memory at
    /// IOVA 0x10_0000 and another at 0x80_0000, and eventfds on every MSI-X vector.
    pub fn new(trace: Trace, chunk: usize, options: ReplayOptions) -> Self {
        let mut dev = Replayer::new(trace.source(chunk), options).expect("replayer");
        let mem = Arc::new(SparseMemory::new());
        mem.add_local(0x10_0000, 0x10_0000, 3).expect("map");
        mem.add_local(0x80_0000, 0x10_0000, 3).expect("map");
        dev.attach_memory(mem.clone());
        let msix = wire_msix(&mut dev);
        Vmm { dev, mem, msix }
    }

    pub fn read(&mut self, offset: u64) -> u32 {
        let mut b = [0u8; 4];
        self.dev.region_read(0, offset, &mut b).expect("read");
        u32::from_le_bytes(b)
    }

    pub fn write(&mut self, offset: u64, value: u32) {
        self.dev
            .region_write(0, offset, &value.to_le_bytes())
            .expect("write");
    }

    pub fn irqs(&self, vector: usize) -> u64 {
        eventfd::drain(&self.msix[vector]).expect("drain")
    }

    pub fn mem_bytes(&self, iova: u64, len: usize) -> Vec<u8> {
        use hwrr_device::GuestMemory;
        let mut b = vec![0u8; len];
        self.mem.read(iova, &mut b).expect("mem read");
        b
    }

    pub fn put_mem(&self, iova: u64, data: &[u8]) {
        use hwrr_device::GuestMemory;
        self.mem.write(iova, data).expect("mem write");
    }
}

/// Registers one eventfd per MSI-X vector; returns the VMM's ends.
pub fn wire_msix(dev: &mut Replayer) -> Vec<OwnedFd> {
    let fds: Vec<OwnedFd> = (0..MSIX_VECTORS)
        .map(|_| eventfd::create().expect("eventfd"))
        .collect();
    let request = IrqSetRequest {
        setup: IrqSetup {
            index: 2,
            start: 0,
            count: MSIX_VECTORS,
            action: IrqAction::Trigger,
            data: IrqData::Eventfd(vec![true; MSIX_VECTORS as usize]),
        },
        fds: fds
            .iter()
            .map(|f| Some(f.try_clone().expect("dup")))
            .collect(),
    };
    dev.set_irqs(request).expect("set_irqs");
    fds
}

/// Options with a policy.
pub fn opts(policy: hwrr_replayer::Policy) -> ReplayOptions {
    ReplayOptions {
        policy,
        ..Default::default()
    }
}
