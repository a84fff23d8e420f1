//! The tap logs every call with its result, relays interrupts, and logs DMA exactly.

use std::os::fd::OwnedFd;
use std::sync::Arc;
use std::time::{Duration, Instant};

use hwrr_device::{
    eventfd, Device, DeviceDescription, DeviceError, DmaRegion, GuestMemory, IrqRouter,
    IrqSetRequest, Result, SparseMemory,
};
use hwrr_formats::{
    region_flags, AccessData, DmaMapping, EventKind, IrqAction, IrqData, IrqInfo, IrqSetup,
    RegionInfo, RegionKind, TraceHeader, TraceReader, WriterOptions,
};
use hwrr_recorder::{Recorder, RecorderOptions, Tap};

/// A device with 256 bytes of registers in BAR0 and 16 I/O ports in BAR2. Writing an IOVA to
/// register 0x10 makes it DMA-read 4 bytes there, add one to each, write them back 4 bytes later and
/// raise MSI-X vector 1.
struct RegDevice {
    regs: Vec<u8>,
    ports: Vec<u8>,
    irqs: IrqRouter,
    mem: Option<Arc<dyn GuestMemory>>,
}

impl RegDevice {
    fn new() -> Self {
        RegDevice {
            regs: vec![0; 256],
            ports: vec![0; 16],
            irqs: IrqRouter::new(&Self::irq_table()),
            mem: None,
        }
    }
    fn irq_table() -> Vec<IrqInfo> {
        vec![IrqInfo {
            index: 2,
            count: 2,
            flags: 1,
        }]
    }
}

impl Device for RegDevice {
    fn describe(&self) -> DeviceDescription {
        DeviceDescription {
            regions: vec![
                RegionInfo {
                    index: 0,
                    kind: RegionKind::Mmio,
                    size: 256,
                    flags: region_flags::READ | region_flags::WRITE,
                    alias_of: None,
                },
                RegionInfo {
                    index: 2,
                    kind: RegionKind::Pio,
                    size: 16,
                    flags: region_flags::READ | region_flags::WRITE,
                    alias_of: None,
                },
            ],
            irqs: Self::irq_table(),
            config_space: vec![0; 256],
            ..Default::default()
        }
    }
    fn region_read(&mut self, region: u32, offset: u64, data: &mut [u8]) -> Result<()> {
        let backing = match region {
            0 => &self.regs,
            2 => &self.ports,
            r => return Err(DeviceError::NoSuchRegion(r)),
        };
        let o = offset as usize;
        let src = backing
            .get(o..o + data.len())
            .ok_or(DeviceError::OutOfRange {
                region,
                offset,
                len: data.len() as u64,
                size: backing.len() as u64,
            })?;
        data.copy_from_slice(src);
        Ok(())
    }
    fn region_write(&mut self, region: u32, offset: u64, data: &[u8]) -> Result<()> {
        let backing = match region {
            0 => &mut self.regs,
            2 => &mut self.ports,
            r => return Err(DeviceError::NoSuchRegion(r)),
        };
        let o = offset as usize;
        let len = backing.len() as u64;
        backing
            .get_mut(o..o + data.len())
            .ok_or(DeviceError::OutOfRange {
                region,
                offset,
                len: data.len() as u64,
                size: len,
            })?
            .copy_from_slice(data);
        if region == 0 && offset == 0x10 && data.len() == 8 {
            let iova = u64::from_le_bytes(data.try_into().unwrap());
            let mem = self
                .mem
                .clone()
                .ok_or(DeviceError::Invalid("no memory".into()))?;
            let mut buf = [0u8; 4];
            mem.read(iova, &mut buf)?;
            for b in buf.iter_mut() {
                *b += 1;
            }
            mem.write(iova + 4, &buf)?;
            self.irqs.raise(2, 1)?;
        }
        Ok(())
    }
    fn config_read(&mut self, _offset: u32, data: &mut [u8]) -> Result<()> {
        data.fill(0xab);
        Ok(())
    }
    fn config_write(&mut self, _offset: u32, _data: &[u8]) -> Result<()> {
        Err(DeviceError::Unsupported("read-only config".into()))
    }
    fn set_irqs(&mut self, request: IrqSetRequest) -> Result<()> {
        self.irqs.set_irqs(request)
    }
    fn dma_map(&mut self, _region: DmaRegion) -> Result<()> {
        Ok(())
    }
    fn dma_unmap(&mut self, _mapping: DmaMapping) -> Result<()> {
        Ok(())
    }
    fn reset(&mut self) -> Result<()> {
        self.regs.fill(0);
        Ok(())
    }
    fn attach_memory(&mut self, memory: Arc<dyn GuestMemory>) {
        self.mem = Some(memory);
    }
}

fn wire_msix(tap: &mut impl Device, vector: u32) -> OwnedFd {
    let fd = eventfd::create().unwrap();
    tap.set_irqs(IrqSetRequest {
        setup: IrqSetup {
            index: 2,
            start: vector,
            count: 1,
            action: IrqAction::Trigger,
            data: IrqData::Eventfd(vec![true]),
        },
        fds: vec![Some(fd.try_clone().unwrap())],
    })
    .unwrap();
    fd
}

fn wait_for(fd: &OwnedFd) -> u64 {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let n = eventfd::drain(fd).unwrap();
        if n > 0 || Instant::now() > deadline {
            return n;
        }
        std::thread::sleep(Duration::from_millis(1));
    }
}

#[test]
fn every_call_is_logged_with_status_and_dma_is_exact() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("t.hwrr");
    let dev = RegDevice::new();
    let desc = dev.describe();
    let header = TraceHeader {
        regions: desc.regions.clone(),
        irqs: desc.irqs.clone(),
        config_space: desc.config_space.clone(),
        ..Default::default()
    };
    let recorder = Recorder::create(&path, &header, RecorderOptions::default()).unwrap();
    let mut tap = Tap::new(dev, recorder.handle()).unwrap();

    let mem = Arc::new(SparseMemory::new());
    mem.add_local(0x10000, 0x1000, 3).unwrap();
    mem.write(0x10000, &[1, 2, 3, 4]).unwrap();
    mem.write(0x10004, &[9, 9, 9, 9]).unwrap();
    tap.attach_memory(mem.clone());

    let consumer = wire_msix(&mut tap, 1);
    tap.region_write(0, 0x20, &0xdead_beefu32.to_le_bytes())
        .unwrap();
    let mut v = [0u8; 4];
    tap.region_read(0, 0x20, &mut v).unwrap();
    assert_eq!(u32::from_le_bytes(v), 0xdead_beef);
    tap.region_write(2, 3, &[0x5a]).unwrap();
    let mut b = [0u8; 4];
    assert!(tap.region_read(0, 254, &mut b).is_err());
    let mut c = [0u8; 2];
    tap.config_read(0, &mut c).unwrap();
    assert!(tap.config_write(4, &[1, 0]).is_err());
    tap.region_write(0, 0x10, &0x10000u64.to_le_bytes())
        .unwrap();
    assert_eq!(
        wait_for(&consumer),
        1,
        "the interrupt was relayed to the consumer"
    );
    let mut out = [0u8; 4];
    mem.read(0x10004, &mut out).unwrap();
    assert_eq!(out, [2, 3, 4, 5]);
    tap.reset().unwrap();
    drop(tap);
    let stats = recorder.finish().unwrap();
    assert_eq!(stats.stalls, 0);

    let reader = TraceReader::open(&path).unwrap();
    let events: Vec<_> = reader.iter().map(|e| e.unwrap()).collect();
    assert_eq!(stats.events, events.len() as u64);
    let kinds: Vec<&str> = events.iter().map(|e| e.tag().name()).collect();
    assert_eq!(
        kinds,
        [
            "irq_setup",
            "mmio_write",
            "mmio_read",
            "pio_write",
            "mmio_read",
            "config_read",
            "config_write",
            // The write is reserved when it starts: what it triggers comes after it.
            "mmio_write",
            "dma_read",
            "dma_write",
            "irq",
            "reset"
        ]
    );
    for (i, e) in events.iter().enumerate() {
        assert_eq!(e.seq, i as u64);
        if i > 0 {
            assert!(e.t_ns >= events[i - 1].t_ns);
        }
    }
    match &events[2].kind {
        EventKind::MmioRead(a) => assert_eq!(
            a.data,
            AccessData::Value {
                size: 4,
                value: 0xdead_beef
            }
        ),
        k => panic!("unexpected {k:?}"),
    }
    assert_ne!(events[4].status, 0, "the out-of-range read failed");
    assert_eq!(events[6].status, libc_enotsup(), "the refused config write");
    match &events[9].kind {
        EventKind::DmaWrite(w) => {
            assert_eq!(w.iova, 0x10004);
            assert_eq!(w.data, vec![2, 3, 4, 5]);
            assert_eq!(w.before, Some(vec![9, 9, 9, 9]));
        }
        k => panic!("unexpected {k:?}"),
    }
    match &events[10].kind {
        EventKind::Irq(i) => assert_eq!((i.index, i.vector), (2, 1)),
        k => panic!("unexpected {k:?}"),
    }
}

fn libc_enotsup() -> u32 {
    95
}

#[test]
fn a_full_queue_stalls_but_drops_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("t.hwrr");
    let dev = RegDevice::new();
    let header = TraceHeader {
        regions: dev.describe().regions,
        ..Default::default()
    };
    let opts = RecorderOptions {
        queue_capacity: 4,
        writer: WriterOptions::default(),
    };
    let recorder = Recorder::create(&path, &header, opts).unwrap();
    let mut tap = Tap::new(dev, recorder.handle()).unwrap();
    let n = 200_000u64;
    let mut v = [0u8; 4];
    for i in 0..n {
        tap.region_read(0, (i % 64) * 4, &mut v).unwrap();
    }
    drop(tap);
    let stats = recorder.finish().unwrap();
    assert_eq!(stats.events, n);
    // Four in the queue, one being handed over, one counted before the writer counts its receipt.
    assert!(stats.queue_high_water <= 6, "bounded queue: {stats:?}");
    let reader = TraceReader::open(&path).unwrap();
    assert_eq!(reader.event_count(), n);
    assert_eq!(reader.iter().count() as u64, n);
}

/// Region kinds come from the backend's description, whatever the indices: an I/O-port region
/// with a large index is logged as port I/O, a memory region next to it as MMIO.
#[test]
fn accesses_are_classified_by_the_described_region_kind_at_any_index() {
    struct Wide;
    impl Device for Wide {
        fn describe(&self) -> DeviceDescription {
            let region = |index, kind| RegionInfo {
                index,
                kind,
                size: 16,
                flags: region_flags::READ | region_flags::WRITE,
                alias_of: None,
            };
            DeviceDescription {
                regions: vec![
                    region(63, RegionKind::Pio),
                    region(64, RegionKind::Mmio),
                    region(u32::MAX, RegionKind::Pio),
                ],
                ..Default::default()
            }
        }
        fn region_read(&mut self, _region: u32, _offset: u64, data: &mut [u8]) -> Result<()> {
            data.fill(1);
            Ok(())
        }
        fn region_write(&mut self, _region: u32, _offset: u64, _data: &[u8]) -> Result<()> {
            Ok(())
        }
        fn config_read(&mut self, _offset: u32, data: &mut [u8]) -> Result<()> {
            data.fill(0);
            Ok(())
        }
        fn config_write(&mut self, _offset: u32, _data: &[u8]) -> Result<()> {
            Ok(())
        }
        fn set_irqs(&mut self, _request: IrqSetRequest) -> Result<()> {
            Ok(())
        }
        fn dma_map(&mut self, _region: DmaRegion) -> Result<()> {
            Ok(())
        }
        fn dma_unmap(&mut self, _mapping: DmaMapping) -> Result<()> {
            Ok(())
        }
        fn reset(&mut self) -> Result<()> {
            Ok(())
        }
        fn attach_memory(&mut self, _memory: Arc<dyn GuestMemory>) {}
    }
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("t.hwrr");
    let recorder =
        Recorder::create(&path, &TraceHeader::default(), RecorderOptions::default()).unwrap();
    let mut tap = Tap::new(Wide, recorder.handle()).unwrap();
    let mut v = [0u8; 4];
    for region in [63, 64, u32::MAX, 0, 65] {
        tap.region_read(region, 0, &mut v).unwrap();
        tap.region_write(region, 0, &v).unwrap();
    }
    drop(tap);
    recorder.finish().unwrap();
    let reader = TraceReader::open(&path).unwrap();
    let got: Vec<(String, u32)> = reader
        .iter()
        .map(|e| match e.unwrap().kind {
            EventKind::MmioRead(a) => ("mmio_read".to_string(), a.region),
            EventKind::MmioWrite(a) => ("mmio_write".to_string(), a.region),
            EventKind::PioRead(a) => ("pio_read".to_string(), a.region),
            EventKind::PioWrite(a) => ("pio_write".to_string(), a.region),
            k => panic!("unexpected {k:?}"),
        })
        .collect();
    let want: Vec<(String, u32)> = [
        ("pio", 63),
        ("mmio", 64),
        ("pio", u32::MAX),
        ("mmio", 0),
        ("mmio", 65),
    ]
    .iter()
    .flat_map(|(kind, region)| {
        [
            (format!("{kind}_read"), *region),
            (format!("{kind}_write"), *region),
        ]
    })
    .collect();
    assert_eq!(got, want);
}
