//! The watch set captures DMA a device does straight into mapped guest memory (as real hardware does
//! through the IOMMU), and the recorded trace replays it.

use std::os::fd::OwnedFd;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use hwrr_device::{
    eventfd, Device, DeviceDescription, DeviceError, DmaRegion, GuestMemory, IrqRouter,
    IrqSetRequest, MappedMemory, Result, SparseMemory,
};
use hwrr_formats::{
    region_flags, DmaMapping, DmaWrite, Event, EventKind, IrqAction, IrqData, IrqInfo, IrqSetup,
    RegionInfo, RegionKind, TraceHeader, TraceReader,
};
use hwrr_recorder::{Recorder, RecorderOptions, Tap, WatchOptions, WatchStats};

const RDBAL: u64 = 0x2800;
const RDBAH: u64 = 0x2804;
const RDLEN: u64 = 0x2808;
const RDH: u64 = 0x2810;
const RDT: u64 = 0x2818;
const ICR: u64 = 0x00c0;
const IMS: u64 = 0x00d0;
/// Test hook: a frame of this many bytes arrives from the wire.
const RX_INJECT: u64 = 0x3000;

const MSIX: u32 = 2;
const GUEST_BASE: u64 = 0x1_0000_0000;
const GUEST_LEN: usize = 1 << 20;
const RING: u64 = GUEST_BASE + 0x1_0000;
const DESCS: u64 = 8;
/// Receive buffers sit behind a header's room, as a NIC driver's do (an skb's data starts after
/// its headroom): a page-aligned pointer names a structure (a queue, a pointer list), not a buffer.
const BUFFERS: u64 = GUEST_BASE + 0x4_0040;
const BUFFER_STRIDE: u64 = 0x1000;
const STATUS_DD_EOP: u8 = 0x03;

/// A NIC-like receive engine: a ring of 16-byte descriptors (buffer address, then length and
/// status written back), base programmed as lo/hi halves. A received frame is written into the
/// head descriptor's buffer, the descriptor gets its length and status, then MSI-X vector 0 fires
/// (when enabled in IMS). DMA goes straight into the memory received in `dma_map`, like hardware
/// through an IOMMU, unless `via_guest_memory` (then through the attached `GuestMemory`, like a
/// vfio-user device using DMA messages).
struct RxNic {
    regs: Vec<u32>,
    irqs: IrqRouter,
    maps: Vec<(u64, Arc<MappedMemory>)>,
    guest_memory: Option<Arc<dyn GuestMemory>>,
    via_guest_memory: bool,
    frames: u32,
}

fn irq_table() -> Vec<IrqInfo> {
    vec![IrqInfo {
        index: MSIX,
        count: 1,
        flags: 1,
    }]
}

fn regions() -> Vec<RegionInfo> {
    vec![RegionInfo {
        index: 0,
        kind: RegionKind::Mmio,
        size: 0x4000,
        flags: region_flags::READ | region_flags::WRITE,
        alias_of: None,
    }]
}

/// The bytes of the `n`th frame: never zero, so every byte differs from a zeroed buffer.
fn frame(n: u32, len: usize) -> Vec<u8> {
    (0..len)
        .map(|i| ((i as u32 * 7 + n * 13 + 3) % 251 + 1) as u8)
        .collect()
}

impl RxNic {
    fn new(via_guest_memory: bool) -> Self {
        RxNic {
            regs: vec![0; 0x1000],
            irqs: IrqRouter::new(&irq_table()),
            maps: Vec::new(),
            guest_memory: None,
            via_guest_memory,
            frames: 0,
        }
    }

    fn reg(&self, off: u64) -> u32 {
        self.regs[(off / 4) as usize]
    }

    fn dma(&self, iova: u64, len: usize) -> Result<(&Arc<MappedMemory>, u64)> {
        self.maps
            .iter()
            .find(|(start, m)| iova >= *start && iova + len as u64 <= start + m.len() as u64)
            .map(|(start, m)| (m, iova - start))
            .ok_or(DeviceError::DmaFault {
                iova,
                len: len as u64,
                detail: String::new(),
            })
    }

    fn dma_read(&self, iova: u64, buf: &mut [u8]) -> Result<()> {
        if self.via_guest_memory {
            let m = self
                .guest_memory
                .as_ref()
                .ok_or(DeviceError::Invalid("no memory".into()))?;
            return m.read(iova, buf);
        }
        let (m, off) = self.dma(iova, buf.len())?;
        m.read(off, buf)
    }

    fn dma_write(&self, iova: u64, data: &[u8]) -> Result<()> {
        if self.via_guest_memory {
            let m = self
                .guest_memory
                .as_ref()
                .ok_or(DeviceError::Invalid("no memory".into()))?;
            return m.write(iova, data);
        }
        let (m, off) = self.dma(iova, data.len())?;
        m.write(off, data)
    }

    fn receive(&mut self, len: usize) -> Result<()> {
        let ring = (self.reg(RDBAH) as u64) << 32 | self.reg(RDBAL) as u64;
        let count = (self.reg(RDLEN) / 16).max(1);
        let head = self.reg(RDH) % count;
        let desc = ring + head as u64 * 16;
        let mut addr = [0u8; 8];
        self.dma_read(desc, &mut addr)?;
        let bytes = frame(self.frames, len);
        self.frames += 1;
        self.dma_write(u64::from_le_bytes(addr), &bytes)?;
        let mut wb = [0u8; 8];
        wb[..2].copy_from_slice(&(len as u16).to_le_bytes());
        wb[4] = STATUS_DD_EOP;
        self.dma_write(desc + 8, &wb)?;
        self.regs[(RDH / 4) as usize] = (head + 1) % count;
        self.regs[(ICR / 4) as usize] |= 0x80;
        if self.reg(IMS) & 0x80 != 0 {
            self.irqs.raise(MSIX, 0)?;
        }
        Ok(())
    }
}

impl Device for RxNic {
    fn describe(&self) -> DeviceDescription {
        DeviceDescription {
            regions: regions(),
            irqs: irq_table(),
            config_space: vec![0; 256],
            ..Default::default()
        }
    }
    fn region_read(&mut self, region: u32, offset: u64, data: &mut [u8]) -> Result<()> {
        if region != 0 || data.len() != 4 || offset >= 0x4000 {
            return Err(DeviceError::Invalid("4-byte BAR0 reads only".into()));
        }
        data.copy_from_slice(&self.reg(offset).to_le_bytes());
        if offset == ICR {
            self.regs[(ICR / 4) as usize] = 0;
        }
        Ok(())
    }
    fn region_write(&mut self, region: u32, offset: u64, data: &[u8]) -> Result<()> {
        if region != 0 || offset % 4 != 0 || offset + data.len() as u64 > 0x4000 {
            return Err(DeviceError::Invalid("aligned BAR0 writes only".into()));
        }
        // A 64-bit write sets two registers.
        let mut v = 0;
        for (i, word) in data.chunks(4).enumerate() {
            let b = <[u8; 4]>::try_from(word)
                .map_err(|_| DeviceError::Invalid("4- or 8-byte writes only".into()))?;
            v = u32::from_le_bytes(b);
            self.regs[(offset / 4) as usize + i] = v;
        }
        if offset == RX_INJECT {
            self.receive(v as usize)?;
        }
        Ok(())
    }
    fn config_read(&mut self, _offset: u32, data: &mut [u8]) -> Result<()> {
        data.fill(0);
        Ok(())
    }
    fn config_write(&mut self, _offset: u32, _data: &[u8]) -> Result<()> {
        Ok(())
    }
    fn set_irqs(&mut self, request: IrqSetRequest) -> Result<()> {
        self.irqs.set_irqs(request)
    }
    fn dma_map(&mut self, region: DmaRegion) -> Result<()> {
        if let Some(m) = region.memory {
            self.maps.push((region.mapping.iova, m));
        }
        Ok(())
    }
    fn dma_unmap(&mut self, mapping: DmaMapping) -> Result<()> {
        self.maps.retain(|(s, _)| *s != mapping.iova);
        Ok(())
    }
    fn reset(&mut self) -> Result<()> {
        self.regs.fill(0);
        Ok(())
    }
    fn attach_memory(&mut self, memory: Arc<dyn GuestMemory>) {
        self.guest_memory = Some(memory);
    }
}

/// The guest: its RAM, and the eventfd its interrupt arrives on.
struct Guest {
    ram: Arc<MappedMemory>,
    irq: OwnedFd,
}

impl Guest {
    fn write(&self, iova: u64, data: &[u8]) {
        self.ram.write(iova - GUEST_BASE, data).unwrap();
    }
    fn read(&self, iova: u64, len: usize) -> Vec<u8> {
        let mut b = vec![0u8; len];
        self.ram.read(iova - GUEST_BASE, &mut b).unwrap();
        b
    }
    fn fill_descriptor(&self, i: u64, buffer: u64) {
        let mut d = [0u8; 16];
        d[..8].copy_from_slice(&buffer.to_le_bytes());
        self.write(RING + i * 16, &d);
    }
}

fn write32(dev: &mut impl Device, offset: u64, value: u32) {
    dev.region_write(0, offset, &value.to_le_bytes()).unwrap();
}

fn read32(dev: &mut impl Device, offset: u64) -> u32 {
    let mut b = [0u8; 4];
    dev.region_read(0, offset, &mut b).unwrap();
    u32::from_le_bytes(b)
}

fn wait_for_irq(fd: &OwnedFd) -> u64 {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let n = eventfd::drain(fd).unwrap();
        if n > 0 || Instant::now() > deadline {
            return n;
        }
        std::thread::sleep(Duration::from_millis(1));
    }
}

/// What a driver does to bring the receive ring up: memory, mapping, interrupt, descriptors, ring
/// registers (base as lo then hi), tail doorbell.
fn bring_up(dev: &mut impl Device, irq_enabled: bool) -> Guest {
    bring_up_with(dev, irq_enabled, false)
}

/// [`bring_up`], with the ring base's high half written first when `hi_first`.
fn bring_up_with(dev: &mut impl Device, irq_enabled: bool, hi_first: bool) -> Guest {
    let ram = Arc::new(MappedMemory::anonymous(GUEST_LEN).unwrap());
    let sparse = Arc::new(SparseMemory::new());
    sparse.add_mapped(GUEST_BASE, 3, ram.clone()).unwrap();
    dev.attach_memory(sparse);
    dev.dma_map(DmaRegion {
        mapping: DmaMapping {
            iova: GUEST_BASE,
            len: GUEST_LEN as u64,
            flags: 3,
        },
        memory: Some(ram.clone()),
    })
    .unwrap();
    let irq = eventfd::create().unwrap();
    dev.set_irqs(IrqSetRequest {
        setup: IrqSetup {
            index: MSIX,
            start: 0,
            count: 1,
            action: IrqAction::Trigger,
            data: IrqData::Eventfd(vec![true]),
        },
        fds: vec![Some(irq.try_clone().unwrap())],
    })
    .unwrap();
    let guest = Guest { ram, irq };
    for i in 0..DESCS {
        guest.fill_descriptor(i, BUFFERS + i * BUFFER_STRIDE);
    }
    write32(dev, IMS, if irq_enabled { 0x80 } else { 0 });
    if hi_first {
        write32(dev, RDBAH, (RING >> 32) as u32);
        write32(dev, RDBAL, RING as u32);
    } else {
        write32(dev, RDBAL, RING as u32);
        write32(dev, RDBAH, (RING >> 32) as u32);
    }
    write32(dev, RDLEN, (DESCS * 16) as u32);
    write32(dev, RDH, 0);
    write32(dev, RDT, (DESCS - 1) as u32);
    guest
}

fn header() -> TraceHeader {
    TraceHeader {
        regions: regions(),
        irqs: irq_table(),
        config_space: vec![0; 256],
        ..Default::default()
    }
}

fn no_sweep() -> WatchOptions {
    WatchOptions {
        sweep_interval: None,
        ..WatchOptions::default()
    }
}

fn events_of(path: &Path) -> Vec<Event> {
    let reader = TraceReader::open(path).unwrap();
    reader.iter().map(|e| e.unwrap()).collect()
}

fn dma_writes(events: &[Event]) -> Vec<(usize, &DmaWrite)> {
    events
        .iter()
        .enumerate()
        .filter_map(|(i, e)| match &e.kind {
            EventKind::DmaWrite(w) => Some((i, w)),
            _ => None,
        })
        .collect()
}

fn overlaps(w: &DmaWrite, iova: u64, len: u64) -> bool {
    w.iova < iova + len && iova < w.iova + w.data.len() as u64
}

/// Applies `writes` to a copy of `image` (guest RAM as it was before them), checking each write's
/// before-bytes against the image as it stands then.
fn apply_checking_before(image: &mut [u8], writes: &[(usize, &DmaWrite)]) {
    for (i, w) in writes {
        let at = (w.iova - GUEST_BASE) as usize;
        let before = w
            .before
            .as_ref()
            .expect("the watch set records before-bytes");
        assert_eq!(
            &image[at..at + w.data.len()],
            &before[..],
            "event {i}: before-bytes are what memory held"
        );
        image[at..at + w.data.len()].copy_from_slice(&w.data);
    }
}

/// Records a run: bring up, one frame received with an interrupt, ICR read.
fn record_one_frame(path: &Path, options: WatchOptions) -> (Guest, WatchStats, Vec<u8>) {
    let recorder = Recorder::create(path, &header(), RecorderOptions::default()).unwrap();
    let mut tap = Tap::with_options(RxNic::new(false), recorder.handle(), options).unwrap();
    let guest = bring_up(&mut tap, true);
    let before = guest.read(GUEST_BASE, GUEST_LEN);
    write32(&mut tap, RX_INJECT, 1000);
    assert_eq!(
        wait_for_irq(&guest.irq),
        1,
        "the interrupt reached the guest"
    );
    assert_eq!(read32(&mut tap, ICR), 0x80);
    let stats = tap.watch_stats().unwrap();
    drop(tap);
    recorder.finish().unwrap();
    (guest, stats, before)
}

#[test]
fn direct_device_writes_are_logged_with_before_bytes_ahead_of_the_interrupt() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("t.hwrr");
    let (guest, stats, before) = record_one_frame(&path, no_sweep());

    // The guest sees the frame and the status: the device really wrote its memory.
    let expected = frame(0, 1000);
    assert_eq!(guest.read(BUFFERS, 1000), expected);
    assert_eq!(guest.read(RING + 12, 1), [STATUS_DD_EOP]);

    let events = events_of(&path);
    let writes = dma_writes(&events);
    assert!(stats.dma_writes_logged >= 2, "{stats:?}");
    assert_eq!(writes.len() as u64, stats.dma_writes_logged);
    assert!(stats.pages_named_by_registers >= 1 && stats.pages_named_by_pointers >= 1);

    // Exactly the frame and the descriptor write-back, nothing else.
    let frame_write = writes
        .iter()
        .find(|(_, w)| w.iova == BUFFERS)
        .expect("a dma_write at the buffer");
    assert_eq!(frame_write.1.data, expected);
    assert_eq!(frame_write.1.before, Some(vec![0; 1000]));
    let status_write = writes
        .iter()
        .find(|(_, w)| overlaps(w, RING + 12, 1))
        .expect("a dma_write of the descriptor status");
    let w = status_write.1;
    let status_at = (RING + 12 - w.iova) as usize;
    assert_eq!(w.data[status_at], STATUS_DD_EOP);
    assert_eq!(w.before.as_ref().unwrap()[status_at], 0);
    assert_eq!(writes.len(), 2, "only the device's two writes: {writes:?}");

    // Replaying the logged writes over memory as it was reproduces memory as it is.
    let mut image = before;
    apply_checking_before(&mut image, &writes);
    assert_eq!(image, guest.read(GUEST_BASE, GUEST_LEN));

    // Order: the RX write, then the DMA, then the interrupt, then the ICR read.
    let inject = events
        .iter()
        .position(|e| matches!(&e.kind, EventKind::MmioWrite(a) if a.offset == RX_INJECT))
        .unwrap();
    let irq = events
        .iter()
        .position(|e| matches!(e.kind, EventKind::Irq(_)))
        .unwrap();
    let icr = events
        .iter()
        .position(|e| matches!(&e.kind, EventKind::MmioRead(a) if a.offset == ICR))
        .unwrap();
    for (i, _) in &writes {
        assert!(
            inject < *i && *i < irq,
            "dma_write {i} between {inject} and {irq}"
        );
    }
    assert!(irq < icr);
}

/// Starts recording to `path` (no sweep), brings the ring up and receives one 200-byte frame with
/// its interrupt, as a driver does (descriptors filled before the ring is named).
fn recording_after_one_frame(path: &Path) -> (Recorder, Tap<RxNic>, Guest) {
    let recorder = Recorder::create(path, &header(), RecorderOptions::default()).unwrap();
    let mut tap = Tap::with_options(RxNic::new(false), recorder.handle(), no_sweep()).unwrap();
    let guest = bring_up(&mut tap, true);
    write32(&mut tap, RX_INJECT, 200);
    assert_eq!(wait_for_irq(&guest.irq), 1);
    assert_eq!(read32(&mut tap, ICR), 0x80);
    (recorder, tap, guest)
}

#[test]
fn guest_writes_before_a_doorbell_are_not_reported_as_device_writes() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("t.hwrr");
    let (recorder, mut tap, guest) = recording_after_one_frame(&path);

    // The driver consumes the frame: clears the descriptor's write-back, scribbles on the buffer
    // it handed up, re-points descriptor 0 at a new buffer in a watched page, and returns it with a
    // tail write.
    guest.write(RING + 8, &[0; 8]);
    guest.write(BUFFERS, b"the guest's own bytes");
    guest.fill_descriptor(0, BUFFERS + 3 * BUFFER_STRIDE + 0x400);
    write32(&mut tap, RDT, 0);
    let absorbed = tap.watch_stats().unwrap();
    assert!(absorbed.guest_ranges_absorbed >= 2, "{absorbed:?}");

    // The next frame lands in descriptor 1's buffer.
    write32(&mut tap, RX_INJECT, 300);
    assert_eq!(wait_for_irq(&guest.irq), 1);
    assert_eq!(read32(&mut tap, ICR), 0x80);
    drop(tap);
    recorder.finish().unwrap();

    let events = events_of(&path);
    let writes = dma_writes(&events);
    assert_eq!(writes.len(), 4, "two frames, two write-backs: {writes:?}");
    let guest_ranges = [
        (RING + 8, 8),
        (BUFFERS, 21),
        (RING, 8), // descriptor 0's new buffer pointer
    ];
    let second = writes
        .iter()
        .find(|(_, w)| w.iova == BUFFERS + BUFFER_STRIDE)
        .expect("the second frame");
    assert_eq!(second.1.data, frame(1, 300));
    assert!(writes.iter().any(|(_, w)| overlaps(w, RING + 16 + 12, 1)));
    // None of the writes after the doorbell touches descriptor 0 or buffer 0.
    let doorbell = events
        .iter()
        .rposition(|e| matches!(&e.kind, EventKind::MmioWrite(a) if a.offset == RDT))
        .unwrap();
    for (i, w) in writes.iter().filter(|(i, _)| *i > doorbell) {
        for (iova, len) in guest_ranges {
            assert!(
                !overlaps(w, iova, len),
                "event {i} reports guest bytes: {w:?}"
            );
        }
    }
}

#[test]
fn a_completion_the_driver_finds_before_any_observation_is_still_the_devices() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("t.hwrr");
    // The descriptors were filled before the ring was named, so the device's write-back is the
    // first change the ring's page shows: a ring only the device has written so far.
    let (recorder, mut tap, guest) = recording_after_one_frame(&path);

    // The next completion raises no interrupt (another device's shared line woke the driver,
    // say) and the driver reads no register: its next call is a doorbell.
    write32(&mut tap, IMS, 0);
    write32(&mut tap, RX_INJECT, 300);
    assert_eq!(guest.read(RING + 16 + 12, 1), [STATUS_DD_EOP]);
    write32(&mut tap, RDT, 1);
    let stats = tap.watch_stats().unwrap();
    drop(tap);
    recorder.finish().unwrap();

    // The write-back, and the frame it completes (in a buffer a descriptor names).
    assert_eq!(stats.device_ring_ranges_kept, 2, "{stats:?}");
    let events = events_of(&path);
    let doorbell = events
        .iter()
        .rposition(|e| matches!(&e.kind, EventKind::MmioWrite(a) if a.offset == RDT))
        .unwrap();
    let kept = dma_writes(&events)
        .into_iter()
        .find(|(_, w)| overlaps(w, RING + 16 + 12, 1))
        .expect("the second write-back is logged");
    assert!(kept.0 < doorbell, "logged before the doorbell it precedes");
    let at = (RING + 16 + 12 - kept.1.iova) as usize;
    assert_eq!(kept.1.data[at], STATUS_DD_EOP);
    assert_eq!(kept.1.before.as_ref().unwrap()[at], 0);
    let frame_write = dma_writes(&events)
        .into_iter()
        .find(|(_, w)| w.iova == BUFFERS + BUFFER_STRIDE)
        .expect("the second frame is logged with its completion");
    assert!(frame_write.0 < doorbell);
    assert_eq!(frame_write.1.data, frame(1, 300));
}

#[test]
fn the_sweep_catches_a_write_without_an_interrupt() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("t.hwrr");
    let recorder = Recorder::create(&path, &header(), RecorderOptions::default()).unwrap();
    let options = WatchOptions {
        sweep_interval: Some(Duration::from_millis(2)),
        ..WatchOptions::default()
    };
    let mut tap = Tap::with_options(RxNic::new(false), recorder.handle(), options).unwrap();
    let guest = bring_up(&mut tap, false);
    let before = guest.read(GUEST_BASE, GUEST_LEN);
    write32(&mut tap, RX_INJECT, 64);
    // A polling driver would look at memory; here nothing touches the device until sweeps have
    // found the frame and the status (or ten seconds passed).
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut stats = tap.watch_stats().unwrap();
    while stats.dma_bytes_logged < 64 + 5 && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(1));
        stats = tap.watch_stats().unwrap();
    }
    assert!(stats.sweeps >= 1);
    // Only sweeps looked (a sweep is counted just before it diffs, so it may be one ahead).
    assert!(stats.observations <= stats.sweeps, "{stats:?}");
    assert_eq!(eventfd::drain(&guest.irq).unwrap(), 0, "no interrupt");
    drop(tap);
    recorder.finish().unwrap();
    let events = events_of(&path);
    assert!(!events.iter().any(|e| matches!(e.kind, EventKind::Irq(_))));
    let writes = dma_writes(&events);
    // A sweep may land between the device's two writes (or, rarely, inside one): whatever the
    // split, the logged writes rebuild memory exactly, each with true before-bytes.
    assert!(writes.len() >= 2, "{writes:?}");
    let mut image = before;
    apply_checking_before(&mut image, &writes);
    assert_eq!(image, guest.read(GUEST_BASE, GUEST_LEN));
    assert_eq!(guest.read(BUFFERS, 64), frame(0, 64));
}

#[test]
fn ring_halves_in_either_order_and_a_register_map_name_the_ring() {
    use hwrr_formats::regmap::RegisterMap;
    let regmap = RegisterMap::parse(
        r#"
        [[register]]
        name = "RDBAL"
        region = 0
        offset = 0x2800
        width = 4
        address = "lo"
        pair = "RDBAH"
        [[register]]
        name = "RDBAH"
        region = 0
        offset = 0x2804
        width = 4
        address = "hi"
        pair = "RDBAL"
        "#,
    )
    .unwrap();
    let with_map = WatchOptions {
        regmap: Some(regmap),
        ..no_sweep()
    };
    let empty_map = WatchOptions {
        regmap: Some(RegisterMap::parse("").unwrap()),
        ..no_sweep()
    };
    for (options, hi_first, named) in [
        (no_sweep(), true, true),
        (no_sweep(), false, true),
        (with_map.clone(), true, true),
        (with_map, false, true),
        // A register map that lists no address register names nothing: the frame goes unseen.
        (empty_map, false, false),
    ] {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("t.hwrr");
        let recorder = Recorder::create(&path, &header(), RecorderOptions::default()).unwrap();
        let mut tap = Tap::with_options(RxNic::new(false), recorder.handle(), options).unwrap();
        let guest = bring_up_with(&mut tap, true, hi_first);
        write32(&mut tap, RX_INJECT, 128);
        assert_eq!(wait_for_irq(&guest.irq), 1);
        let stats = tap.watch_stats().unwrap();
        drop(tap);
        recorder.finish().unwrap();
        let writes_seen = dma_writes(&events_of(&path))
            .iter()
            .any(|(_, w)| w.iova == BUFFERS && w.data == frame(0, 128));
        assert_eq!(writes_seen, named, "hi_first {hi_first}: {stats:?}");
        assert_eq!(stats.pages_named_by_registers > 0, named);
    }
}

#[test]
fn unmapping_logs_pending_writes_and_forgets_the_pages() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("t.hwrr");
    let recorder = Recorder::create(&path, &header(), RecorderOptions::default()).unwrap();
    let mut tap = Tap::with_options(RxNic::new(false), recorder.handle(), no_sweep()).unwrap();
    let guest = bring_up(&mut tap, false);
    // No interrupt, no read, no sweep: only the unmap looks.
    write32(&mut tap, RX_INJECT, 32);
    tap.dma_unmap(DmaMapping {
        iova: GUEST_BASE,
        len: GUEST_LEN as u64,
        flags: 0,
    })
    .unwrap();
    let stats = tap.watch_stats().unwrap();
    assert_eq!(stats.pages_watched, 0);
    drop(tap);
    recorder.finish().unwrap();
    let events = events_of(&path);
    let unmap = events
        .iter()
        .position(|e| matches!(e.kind, EventKind::DmaUnmap(_)))
        .unwrap();
    let writes = dma_writes(&events);
    assert_eq!(writes.len(), 2, "{writes:?}");
    assert!(writes.iter().all(|(i, _)| *i < unmap));
    assert_eq!(guest.read(BUFFERS, 32), frame(0, 32));
}

#[test]
fn the_page_cap_evicts_pointer_pages_first_and_counts() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("t.hwrr");
    let recorder = Recorder::create(&path, &header(), RecorderOptions::default()).unwrap();
    let options = WatchOptions {
        max_pages: 4,
        ring_span: 4096,
        ..no_sweep()
    };
    let mut tap = Tap::with_options(RxNic::new(false), recorder.handle(), options).unwrap();
    let guest = bring_up(&mut tap, true);
    let stats = tap.watch_stats().unwrap();
    // One ring page and eight buffer pages named; four fit.
    assert_eq!(stats.pages_watched, 4, "{stats:?}");
    assert_eq!(stats.pages_named_by_registers, 1);
    assert_eq!(stats.pages_named_by_pointers, 8);
    assert_eq!(stats.evictions, 5);
    write32(&mut tap, RX_INJECT, 100);
    assert_eq!(wait_for_irq(&guest.irq), 1);
    drop(tap);
    recorder.finish().unwrap();
    let events = events_of(&path);
    let writes = dma_writes(&events);
    // The oldest buffer pages went first: the frame in buffer 0 is not seen (a stated limit), the
    // ring page survived and its write-back is.
    assert!(!writes.iter().any(|(_, w)| overlaps(w, BUFFERS, 100)));
    assert!(writes.iter().any(|(_, w)| overlaps(w, RING + 12, 1)));
}

#[test]
fn writes_logged_exactly_are_not_logged_again() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("t.hwrr");
    let recorder = Recorder::create(&path, &header(), RecorderOptions::default()).unwrap();
    let options = WatchOptions {
        sweep_interval: Some(Duration::from_millis(1)),
        ..WatchOptions::default()
    };
    let mut tap = Tap::with_options(RxNic::new(true), recorder.handle(), options).unwrap();
    let guest = bring_up(&mut tap, true);
    for n in 0..4u32 {
        write32(&mut tap, RX_INJECT, 100 + n);
        assert_eq!(wait_for_irq(&guest.irq), 1);
        assert_eq!(read32(&mut tap, ICR), 0x80);
    }
    // Let a few sweeps pass over the written pages.
    let sweeps = tap.watch_stats().unwrap().sweeps;
    let deadline = Instant::now() + Duration::from_secs(10);
    while tap.watch_stats().unwrap().sweeps < sweeps + 3 && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(1));
    }
    let stats = tap.watch_stats().unwrap();
    drop(tap);
    recorder.finish().unwrap();
    assert_eq!(stats.dma_writes_logged, 0, "{stats:?}");
    assert!(stats.exact_writes_absorbed >= 8, "{stats:?}");
    let events = events_of(&path);
    let writes = dma_writes(&events);
    // Exactly the device's eight writes, each once, from the logging memory.
    assert_eq!(writes.len(), 8, "{writes:?}");
    for n in 0..4u64 {
        let buf = BUFFERS + n * BUFFER_STRIDE;
        assert_eq!(
            writes.iter().filter(|(_, w)| overlaps(w, buf, 1)).count(),
            1
        );
    }
}

#[test]
fn disabled_watch_logs_no_inferred_writes() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("t.hwrr");
    let recorder = Recorder::create(&path, &header(), RecorderOptions::default()).unwrap();
    let mut tap = Tap::with_options(
        RxNic::new(false),
        recorder.handle(),
        WatchOptions::disabled(),
    )
    .unwrap();
    assert!(tap.watch_stats().is_none());
    let guest = bring_up(&mut tap, true);
    write32(&mut tap, RX_INJECT, 100);
    assert_eq!(wait_for_irq(&guest.irq), 1);
    drop(tap);
    recorder.finish().unwrap();
    // The device wrote memory, but without the watch set nothing says so: what this feature adds.
    assert_eq!(guest.read(BUFFERS, 100), frame(0, 100));
    assert!(dma_writes(&events_of(&path)).is_empty());
}

#[test]
fn the_recorded_trace_replays_the_frame_into_fresh_guest_memory() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("t.hwrr");
    let (recorded, _, _) = record_one_frame(&path, no_sweep());
    let mut replay = hwrr_replayer::open(&path, hwrr_replayer::ReplayOptions::default()).unwrap();
    let guest = bring_up(&mut replay, true);
    assert_eq!(
        guest.read(BUFFERS, 1000),
        vec![0; 1000],
        "fresh, zeroed buffers"
    );
    write32(&mut replay, RX_INJECT, 1000);
    assert_eq!(wait_for_irq(&guest.irq), 1, "the replayed interrupt");
    assert_eq!(read32(&mut replay, ICR), 0x80);
    assert_eq!(guest.read(BUFFERS, 1000), frame(0, 1000));
    assert_eq!(guest.read(RING + 12, 1), [STATUS_DD_EOP]);
    assert_eq!(
        guest.read(GUEST_BASE, GUEST_LEN),
        recorded.read(GUEST_BASE, GUEST_LEN),
        "replayed guest memory matches the recorded run's"
    );
}

/// A memfd of `len` bytes: guest RAM a VMM shares with a vfio-user server.
fn memfd(len: usize) -> OwnedFd {
    use std::os::fd::FromRawFd;
    // SAFETY: memfd_create with a static NUL-terminated name; the result is checked.
    let fd = unsafe { libc::memfd_create(c"hwrr-watch-test".as_ptr(), libc::MFD_CLOEXEC) };
    assert!(fd >= 0, "memfd_create: {}", std::io::Error::last_os_error());
    // SAFETY: a fresh descriptor nobody else owns.
    let fd = unsafe { OwnedFd::from_raw_fd(fd) };
    // SAFETY: ftruncate on a descriptor we own.
    assert_eq!(
        unsafe { libc::ftruncate(std::os::fd::AsRawFd::as_raw_fd(&fd), len as i64) },
        0
    );
    fd
}

#[test]
fn over_vfio_user_with_fd_shared_memory_the_frame_is_captured() {
    use hwrr_vfio_user::{Client, ClientOptions, Server, ServerOptions};
    use std::os::fd::AsFd;

    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("t.hwrr");
    let sock = dir.path().join("dev.sock");
    let recorder = Recorder::create(&path, &header(), RecorderOptions::default()).unwrap();
    let mut tap = Tap::with_options(RxNic::new(false), recorder.handle(), no_sweep()).unwrap();
    let mut server = Server::bind(
        &sock,
        ServerOptions {
            once: true,
            ..ServerOptions::default()
        },
    )
    .unwrap();
    let serving = std::thread::spawn(move || {
        let summary = server.serve(&mut tap);
        (summary.map(|s| s.requests), tap.watch_stats())
    });

    // The VMM's side: guest RAM in a memfd, shared with the server by DMA_MAP.
    let mut vmm = Client::connect(&sock, ClientOptions::default()).unwrap();
    let fd = memfd(GUEST_LEN);
    let ram = MappedMemory::map_fd(fd.try_clone().unwrap(), 0, GUEST_LEN, true).unwrap();
    vmm.dma_map(GUEST_BASE, GUEST_LEN as u64, 3, Some((fd.as_fd(), 0)))
        .unwrap();
    let irq = eventfd::create().unwrap();
    vmm.set_irqs(
        MSIX,
        0,
        1,
        IrqAction::Trigger,
        &IrqData::Eventfd(vec![true]),
        &[irq.as_fd()],
    )
    .unwrap();
    for i in 0..DESCS {
        let mut d = [0u8; 16];
        d[..8].copy_from_slice(&(BUFFERS + i * BUFFER_STRIDE).to_le_bytes());
        ram.write(RING + i * 16 - GUEST_BASE, &d).unwrap();
    }
    let w =
        |vmm: &mut Client, off: u64, v: u32| vmm.region_write(0, off, &v.to_le_bytes()).unwrap();
    w(&mut vmm, IMS, 0x80);
    w(&mut vmm, RDBAL, RING as u32);
    w(&mut vmm, RDBAH, (RING >> 32) as u32);
    w(&mut vmm, RDLEN, (DESCS * 16) as u32);
    w(&mut vmm, RDT, (DESCS - 1) as u32);
    w(&mut vmm, RX_INJECT, 600);
    assert_eq!(wait_for_irq(&irq), 1);
    let mut icr = [0u8; 4];
    vmm.region_read(0, ICR, &mut icr).unwrap();
    assert_eq!(u32::from_le_bytes(icr), 0x80);
    let mut got = vec![0u8; 600];
    ram.read(BUFFERS - GUEST_BASE, &mut got).unwrap();
    assert_eq!(
        got,
        frame(0, 600),
        "the device wrote the shared memory directly"
    );
    drop(vmm);
    let (requests, stats) = serving.join().unwrap();
    assert!(requests.unwrap() > 0);
    let stats = stats.unwrap();
    recorder.finish().unwrap();
    assert_eq!(stats.dma_writes_logged, 2, "{stats:?}");
    let events = events_of(&path);
    let writes = dma_writes(&events);
    assert!(writes.iter().any(|(_, w)| w.iova == BUFFERS
        && w.data == frame(0, 600)
        && w.before == Some(vec![0; 600])));
    let irq_at = events
        .iter()
        .position(|e| matches!(e.kind, EventKind::Irq(_)))
        .unwrap();
    assert!(writes.iter().all(|(i, _)| *i < irq_at));
}

#[test]
fn nearby_changes_merge_and_runs_join_across_pages() {
    use hwrr_recorder::WatchSet;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("t.hwrr");
    let recorder = Recorder::create(&path, &header(), RecorderOptions::default()).unwrap();
    let ram = Arc::new(MappedMemory::anonymous(0x4000).unwrap());
    let watch = WatchSet::new(no_sweep(), recorder.handle());
    watch.add_mapping(
        DmaMapping {
            iova: 0x10_0000,
            len: 0x4000,
            flags: 3,
        },
        Some(ram.clone()),
    );
    // A 64-bit register write names the whole mapping (16 KiB < the ring span).
    watch.before_register_write(0, 0x100, &0x10_0000u64.to_le_bytes());
    assert_eq!(watch.stats().pages_watched, 4);
    ram.write(10, &[1]).unwrap();
    ram.write(20, &[2]).unwrap(); // 9 bytes after the last change: merged
    ram.write(100, &[3, 4]).unwrap(); // far: its own write
    ram.write(0x1ffc, &[5; 8]).unwrap(); // crosses into the next page: one write
    watch.observe();
    // Nothing changed since: nothing more is logged.
    watch.observe();
    let stats = watch.stats();
    drop(watch);
    recorder.finish().unwrap();
    let events = events_of(&path);
    let writes: Vec<(u64, Vec<u8>, Vec<u8>)> = dma_writes(&events)
        .into_iter()
        .map(|(_, w)| (w.iova, w.data.clone(), w.before.clone().unwrap()))
        .collect();
    let mut merged = vec![0u8; 11];
    merged[0] = 1;
    merged[10] = 2;
    assert_eq!(
        writes,
        vec![
            (0x10_000a, merged, vec![0; 11]),
            (0x10_0064, vec![3, 4], vec![0; 2]),
            (0x10_1ffc, vec![5; 8], vec![0; 8]),
        ]
    );
    assert_eq!(stats.dma_writes_logged, 3);
    assert_eq!(stats.dma_bytes_logged, 21);
    assert_eq!(stats.observations, 2);
    // The refresh before the register write compared too.
    assert_eq!(stats.bytes_compared, 3 * 0x4000);
}

#[test]
fn pointers_the_guest_writes_before_a_doorbell_name_new_pages() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("t.hwrr");
    let recorder = Recorder::create(&path, &header(), RecorderOptions::default()).unwrap();
    let mut tap = Tap::with_options(RxNic::new(false), recorder.handle(), no_sweep()).unwrap();
    let guest = bring_up(&mut tap, true);
    let named = tap.watch_stats().unwrap().pages_named_by_pointers;
    // Descriptor 0 gets a buffer in a page nobody named yet; then the tail doorbell.
    let fresh = GUEST_BASE + 0x8_0040;
    guest.fill_descriptor(0, fresh);
    write32(&mut tap, RDT, 0);
    let stats = tap.watch_stats().unwrap();
    assert_eq!(stats.pages_named_by_pointers, named + 1, "{stats:?}");
    write32(&mut tap, RX_INJECT, 700);
    assert_eq!(wait_for_irq(&guest.irq), 1);
    drop(tap);
    recorder.finish().unwrap();
    let events = events_of(&path);
    assert!(dma_writes(&events).iter().any(|(_, w)| w.iova == fresh
        && w.data == frame(0, 700)
        && w.before == Some(vec![0; 700])));
}

#[test]
fn misaligned_or_unmapped_values_name_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("t.hwrr");
    let recorder = Recorder::create(&path, &header(), RecorderOptions::default()).unwrap();
    let mut tap = Tap::with_options(RxNic::new(false), recorder.handle(), no_sweep()).unwrap();
    let _guest = bring_up_with(&mut tap, true, false);
    let before = tap.watch_stats().unwrap().pages_named_by_registers;
    // A 64-bit value inside the mapping but not 16-byte aligned; one outside every mapping; a
    // pair whose halves are not adjacent.
    tap.region_write(0, 0x100, &(RING + 0x2_0004).to_le_bytes())
        .unwrap();
    tap.region_write(0, 0x108, &(GUEST_BASE + (GUEST_LEN as u64)).to_le_bytes())
        .unwrap();
    write32(&mut tap, 0x200, (RING + 0x3_0000) as u32);
    write32(&mut tap, 0x208, (RING >> 32) as u32);
    assert_eq!(tap.watch_stats().unwrap().pages_named_by_registers, before);
    // The same value as an aligned 64-bit write does name its window.
    tap.region_write(0, 0x100, &(RING + 0x3_0000).to_le_bytes())
        .unwrap();
    assert!(tap.watch_stats().unwrap().pages_named_by_registers > before);
    drop(tap);
    recorder.finish().unwrap();
}

/// An NVMe-like run on a bare watch set: a command in a register-named ring creates a queue (a
/// page-aligned pointer); a command in that queue's second page names a data page and a pointer
/// list, which lists more data pages; the device then writes data pages. Returns the logged
/// writes as (iova, data, before).
fn nested_structures_run(options: WatchOptions) -> Vec<(u64, Vec<u8>, Vec<u8>)> {
    use hwrr_recorder::WatchSet;
    const MAP: u64 = 0x100_0000;
    const RING: u64 = MAP;
    const QUEUE: u64 = MAP + 0x10_0000;
    const DATA1: u64 = MAP + 0x20_0000;
    const LIST: u64 = MAP + 0x21_0000;
    const DATA2: u64 = MAP + 0x22_0000;
    const DATA3: u64 = MAP + 0x23_0000;
    const BEYOND: u64 = MAP + 0x24_0000;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("t.hwrr");
    let recorder = Recorder::create(&path, &header(), RecorderOptions::default()).unwrap();
    let ram = Arc::new(MappedMemory::anonymous(0x40_0000).unwrap());
    let put = |iova: u64, words: &[u64]| {
        let bytes: Vec<u8> = words.iter().flat_map(|w| w.to_le_bytes()).collect();
        ram.write(iova - MAP, &bytes).unwrap();
    };
    let watch = WatchSet::new(options, recorder.handle());
    watch.add_mapping(
        DmaMapping {
            iova: MAP,
            len: 0x40_0000,
            flags: 3,
        },
        Some(ram.clone()),
    );
    watch.before_register_write(0, 0x28, &RING.to_le_bytes());
    // "Create a queue at QUEUE", then its doorbell.
    put(RING, &[0x05, 0, 0, QUEUE, 0, 0, 0, 0]);
    watch.before_register_write(0, 0x1000, &1u32.to_le_bytes());
    // A read command in the queue's second page (the 65th entry): a data page and a pointer
    // list; the list names two more pages, the last of which holds a pointer-like word.
    put(LIST, &[DATA2, DATA3]);
    put(DATA3 + 8, &[BEYOND]);
    put(QUEUE + 0x1000, &[0x02, 0, 0, DATA1, LIST, 0, 0, 0]);
    watch.before_register_write(0, 0x1008, &65u32.to_le_bytes());
    // The device fills the pages and completes.
    ram.write(DATA1 - MAP, &[0xd1; 4096]).unwrap();
    ram.write(DATA3 - MAP + 0x100, &[0xd3; 16]).unwrap();
    ram.write(BEYOND - MAP, &[0xbe; 16]).unwrap();
    watch.observe();
    drop(watch);
    recorder.finish().unwrap();
    dma_writes(&events_of(&path))
        .into_iter()
        .map(|(_, w)| (w.iova, w.data.clone(), w.before.clone().unwrap_or_default()))
        .collect()
}

#[test]
fn pages_behind_page_aligned_pointers_are_watched_to_the_configured_depth() {
    let writes = nested_structures_run(no_sweep());
    // The data page the command names, and the page its pointer list names, each as a whole
    // page (the device fills a page it is handed); the pointer in the second is three pointers
    // from the ring and names nothing, so the write behind it is not seen.
    let mut page3 = vec![0u8; 4096];
    page3[8..16].copy_from_slice(&0x124_0000u64.to_le_bytes());
    let mut filled3 = page3.clone();
    filled3[0x100..0x110].fill(0xd3);
    assert_eq!(
        writes,
        vec![
            (0x120_0000, vec![0xd1; 4096], vec![0; 4096]),
            (0x123_0000, filled3, page3),
        ]
    );
    // Descriptors to buffers only: the queue a command creates is watched (one page, as a buffer)
    // but names nothing.
    let shallow = nested_structures_run(WatchOptions {
        max_pointer_depth: 1,
        ..no_sweep()
    });
    assert!(shallow.is_empty(), "{shallow:?}");
}

#[test]
fn a_command_in_a_later_page_of_a_created_queue_is_read_not_filled() {
    // A queue a command creates spans `ring_span`; only its first page is handed over. The
    // guest writes a command into the queue's second page, an observation (an interrupt for an
    // earlier command) sees it before the doorbell: it is the guest's command, read after the
    // doorbell, not a page the device filled (logged whole, the command was a device write only,
    // and a replay could not echo its id).
    use hwrr_recorder::WatchSet;
    const MAP: u64 = 0x100_0000;
    const RING: u64 = MAP;
    const QUEUE: u64 = MAP + 0x10_0000;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("t.hwrr");
    let recorder = Recorder::create(&path, &header(), RecorderOptions::default()).unwrap();
    let ram = Arc::new(MappedMemory::anonymous(0x40_0000).unwrap());
    let put = |iova: u64, words: &[u64]| {
        let bytes: Vec<u8> = words.iter().flat_map(|w| w.to_le_bytes()).collect();
        ram.write(iova - MAP, &bytes).unwrap();
    };
    let watch = WatchSet::new(no_sweep(), recorder.handle());
    watch.add_mapping(
        DmaMapping {
            iova: MAP,
            len: 0x40_0000,
            flags: 3,
        },
        Some(ram.clone()),
    );
    watch.before_register_write(0, 0x28, &RING.to_le_bytes());
    put(RING, &[0x05, 0, 0, QUEUE, 0, 0, 0, 0]);
    watch.before_register_write(0, 0x1000, &1u32.to_le_bytes());
    let command = [0x0042_0002u64, 1, 0, 0, 0, 0, 0, 0];
    put(QUEUE + 0x1000, &command);
    watch.observe();
    watch.before_register_write(0, 0x1008, &65u32.to_le_bytes());
    watch.log_reads();
    drop(watch);
    recorder.finish().unwrap();
    let events = events_of(&path);
    let writes = dma_writes(&events);
    // (The change the observation saw stays logged as it was seen; the read is what counts.)
    assert!(
        !writes
            .iter()
            .any(|(_, w)| overlaps(w, QUEUE + 0x1000, 0x1000) && w.data.len() == 4096),
        "the guest's command logged as a device fill: {:?}",
        writes
            .iter()
            .map(|(_, w)| (w.iova, w.data.len()))
            .collect::<Vec<_>>()
    );
    let reads: Vec<(u64, Vec<u8>)> = events
        .iter()
        .filter_map(|e| match &e.kind {
            EventKind::DmaRead(r) => Some((r.iova, r.data.clone())),
            _ => None,
        })
        .collect();
    let bytes: Vec<u8> = command.iter().flat_map(|w| w.to_le_bytes()).collect();
    assert!(
        reads
            .iter()
            .any(|(iova, data)| *iova == QUEUE + 0x1000 && data[..] == bytes[..16]),
        "the command is read after its doorbell: {reads:?}"
    );
}

#[test]
fn what_the_guest_hands_the_device_is_logged_as_reads_after_the_doorbell() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("t.hwrr");
    let recorder = Recorder::create(&path, &header(), RecorderOptions::default()).unwrap();
    let mut tap = Tap::with_options(RxNic::new(false), recorder.handle(), no_sweep()).unwrap();
    let guest = bring_up(&mut tap, true);
    // Descriptor 2 gets another buffer (its low 4 bytes change), then the tail doorbell.
    let buffer = BUFFERS + 0x2_0000;
    guest.fill_descriptor(2, buffer);
    write32(&mut tap, RDT, 2);
    let stats = tap.watch_stats().unwrap();
    drop(tap);
    recorder.finish().unwrap();
    // The whole descriptor, right after the doorbell.
    assert_eq!(
        reads_after_last_doorbell(&events_of(&path)),
        vec![(RING + 2 * 16, descriptor(buffer))]
    );
    assert_eq!(stats.dma_reads_logged, 1, "{stats:?}");
    assert_eq!(stats.dma_read_bytes_logged, 16);
    // Switched off, nothing is read.
    let path2 = dir.path().join("t2.hwrr");
    let recorder = Recorder::create(&path2, &header(), RecorderOptions::default()).unwrap();
    let options = WatchOptions {
        log_reads: false,
        ..no_sweep()
    };
    let mut tap = Tap::with_options(RxNic::new(false), recorder.handle(), options).unwrap();
    let guest = bring_up(&mut tap, true);
    guest.fill_descriptor(2, buffer);
    write32(&mut tap, RDT, 2);
    drop(tap);
    recorder.finish().unwrap();
    assert!(!events_of(&path2)
        .iter()
        .any(|e| matches!(e.kind, EventKind::DmaRead(_))));
}

#[test]
fn a_guest_write_an_observation_saw_first_is_still_read_after_its_doorbell() {
    // With the ring seen written by the guest before, and without (the driver's very first
    // command).
    for seen_before in [true, false] {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("t.hwrr");
        let recorder = Recorder::create(&path, &header(), RecorderOptions::default()).unwrap();
        let mut tap = Tap::with_options(RxNic::new(false), recorder.handle(), no_sweep()).unwrap();
        let guest = bring_up(&mut tap, true);
        if seen_before {
            // The guest is seen writing the ring once (a doorbell absorbs it).
            guest.fill_descriptor(1, BUFFERS + 0x2_0000);
            write32(&mut tap, RDT, 1);
        }
        // The guest fills a descriptor, and a register read (an observation) comes before the
        // doorbell: the watch set logs the change as the device's, and the doorbell finds
        // nothing new.
        let buffer = BUFFERS + 0x3_0000;
        guest.fill_descriptor(2, buffer);
        assert_eq!(read32(&mut tap, ICR), 0);
        write32(&mut tap, RDT, 2);
        // The device fills the buffer the descriptor names, which the doorbell made watched.
        guest.write(buffer, b"a frame");
        assert_eq!(read32(&mut tap, ICR), 0);
        drop(tap);
        recorder.finish().unwrap();
        let events = events_of(&path);
        assert_eq!(
            reads_after_last_doorbell(&events),
            vec![(RING + 2 * 16, descriptor(buffer))],
            "seen before: {seen_before}"
        );
        assert!(
            dma_writes(&events)
                .iter()
                .any(|(_, w)| w.iova == buffer && w.data == b"a frame"),
            "seen before: {seen_before}: the buffer's fill is recorded"
        );
    }
}

/// A receive descriptor naming `buffer`, as the guest writes it.
fn descriptor(buffer: u64) -> Vec<u8> {
    let mut d = vec![0u8; 16];
    d[..8].copy_from_slice(&buffer.to_le_bytes());
    d
}

/// The `dma_read` events (IOVA, bytes) after the last tail doorbell.
fn reads_after_last_doorbell(events: &[Event]) -> Vec<(u64, Vec<u8>)> {
    let doorbell = events
        .iter()
        .rposition(|e| matches!(&e.kind, EventKind::MmioWrite(a) if a.offset == RDT))
        .expect("a doorbell");
    events[doorbell + 1..]
        .iter()
        .filter_map(|e| match &e.kind {
            EventKind::DmaRead(r) => Some((r.iova, r.data.clone())),
            _ => None,
        })
        .collect()
}
