//! Record mode's view of the memory a device may write: the buffers the program hands to
//! `VFIO_IOMMU_MAP_DMA` (QEMU's guest RAM), read in place by each recorded device's watch set so
//! that what the device writes there is captured as `dma_write` events.
//!
//! Reading another part of the program's address space is only sound while it stays mapped. The
//! kernel pins the pages of a DMA mapping, but the program may still `munmap` the virtual range
//! before it unmaps the IOVAs (VFIO allows it). So every range handed to a watch set is registered
//! here, and the shim's `munmap` asks [`before_unmap`] first: any watch set reading an overlapping
//! range stops (logging what the device wrote so far) before the range goes away.
//!
//! The check on every `munmap` must be cheap and must not lock or allocate on the way (the
//! allocator unmaps from inside `free`, and the watch set's own thread frees memory while it holds
//! its lock): the registered ranges live in a fixed table of atomics, and only a `munmap` that
//! overlaps one takes the lock.

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

use hwrr_device::{DmaMapping, MappedMemory};
use hwrr_recorder::WatchSet;

/// Ranges that can be watched at once (QEMU maps a handful: RAM below and above 4 GiB, ROMs).
const RANGES: usize = 64;

/// One registered virtual range; `end == 0` marks a free entry.
struct Range {
    start: AtomicU64,
    end: AtomicU64,
}

static TABLE: [Range; RANGES] = [const {
    Range {
        start: AtomicU64::new(0),
        end: AtomicU64::new(0),
    }
}; RANGES];

/// Entries in use: `munmap` returns at once while it is 0.
static IN_USE: AtomicUsize = AtomicUsize::new(0);

/// Who reads each registered range.
struct Reader {
    entry: usize,
    watch: Arc<WatchSet>,
    mapping: DmaMapping,
}

static READERS: Mutex<Vec<Reader>> = Mutex::new(Vec::new());

fn readers() -> MutexGuard<'static, Vec<Reader>> {
    READERS.lock().unwrap_or_else(|p| p.into_inner())
}

fn release(entry: usize) {
    TABLE[entry].end.store(0, Ordering::SeqCst);
    TABLE[entry].start.store(0, Ordering::SeqCst);
    IN_USE.fetch_sub(1, Ordering::SeqCst);
}

/// Registers the `len` bytes at `vaddr` that `mapping` gave the device, to be read by `watch`,
/// and returns them as memory the watch set can read. `None` when the range cannot be watched
/// safely (empty, not addressable, or the table is full): the device's writes there then go
/// unrecorded, as before this existed.
pub fn register(
    vaddr: u64,
    len: u64,
    watch: &Arc<WatchSet>,
    mapping: DmaMapping,
) -> Option<Arc<MappedMemory>> {
    let end = vaddr.checked_add(len)?;
    let bytes = usize::try_from(len).ok()?;
    if vaddr == 0 || len == 0 {
        return None;
    }
    let mut readers = readers();
    let entry = (0..RANGES).find(|&i| TABLE[i].end.load(Ordering::SeqCst) == 0)?;
    TABLE[entry].start.store(vaddr, Ordering::SeqCst);
    TABLE[entry].end.store(end, Ordering::SeqCst);
    IN_USE.fetch_add(1, Ordering::SeqCst);
    readers.push(Reader {
        entry,
        watch: watch.clone(),
        mapping,
    });
    // SAFETY: `vaddr..vaddr+len` is memory of this process that the kernel just accepted (and
    // pinned) for VFIO_IOMMU_MAP_DMA, so it is mapped and readable now. It stays so for the life
    // of the handle: the handle lives only in `watch`'s mapping table, which drops it when the
    // IOVAs are unmapped (`forget`) or, through the shim's `munmap`, before the range itself is
    // unmapped (`before_unmap`). The watch set only reads through it.
    Some(Arc::new(unsafe {
        MappedMemory::from_raw(vaddr as *mut u8, bytes)
    }))
}

/// The IOVAs `lo..hi` were unmapped (the watch set has already dropped them): forgets the ranges
/// `watch` registered for mappings inside them.
pub fn forget(watch: &Arc<WatchSet>, lo: u64, hi: u64) {
    let mut readers = readers();
    readers.retain(|r| {
        let end = r.mapping.iova.saturating_add(r.mapping.len);
        let gone = Arc::ptr_eq(&r.watch, watch) && r.mapping.iova >= lo && end <= hi;
        if gone {
            release(r.entry);
        }
        !gone
    });
}

/// Forgets every range `watch` reads (its device is closed).
pub fn forget_all(watch: &Arc<WatchSet>) {
    forget(watch, 0, u64::MAX);
}

/// Called before the program unmaps `len` bytes at `addr`: every watch set reading an
/// overlapping registered range logs what changed there and stops reading it.
pub fn before_unmap(addr: u64, len: u64) {
    if IN_USE.load(Ordering::SeqCst) == 0 {
        return;
    }
    let end = addr.saturating_add(len);
    let overlaps = |r: &Range| {
        let e = r.end.load(Ordering::SeqCst);
        e != 0 && r.start.load(Ordering::SeqCst) < end && addr < e
    };
    if !TABLE.iter().any(overlaps) {
        return;
    }
    let doomed: Vec<Reader> = {
        let mut readers = readers();
        let (gone, kept) = readers
            .drain(..)
            .partition(|r: &Reader| overlaps(&TABLE[r.entry]));
        *readers = kept;
        for r in &gone {
            release(r.entry);
        }
        gone
    };
    // Outside the registry's lock: the watch set takes its own.
    for r in doomed {
        // Flags 0: this range only, not "every mapping".
        r.watch.remove_mapping(DmaMapping {
            flags: 0,
            ..r.mapping
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use hwrr_formats::{EventKind, TraceHeader, TraceReader};
    use hwrr_recorder::{Recorder, RecorderOptions, WatchOptions};

    #[test]
    fn a_munmap_stops_the_watch_set_reading_the_range_and_nothing_else() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("t.hwrr");
        let recorder =
            Recorder::create(&path, &TraceHeader::default(), RecorderOptions::default()).unwrap();
        let options = WatchOptions {
            sweep_interval: None,
            ..WatchOptions::default()
        };
        let watch = Arc::new(WatchSet::new(options, recorder.handle()));
        // The program's buffer, and the device's view of it at IOVA 1 MiB.
        let buffer = MappedMemory::anonymous(0x4000).unwrap();
        let vaddr = buffer.as_ptr() as u64;
        let mapping = DmaMapping {
            iova: 0x10_0000,
            len: 0x4000,
            flags: 3,
        };
        let memory = register(vaddr, 0x4000, &watch, mapping).expect("registered");
        watch.add_mapping(mapping, Some(memory));

        // A register names the first page (a ring base), then "the device" writes it.
        watch.before_register_write(0, 0x3800, &0x10_0000u64.to_le_bytes());
        buffer.write(0, &[0xaa; 16]).unwrap();
        watch.observe();
        assert_eq!(watch.stats().dma_writes_logged, 1);

        // The ring span, clipped to the mapping: all four pages.
        assert_eq!(watch.stats().pages_watched, 4);
        // Unmapping something else leaves it alone.
        before_unmap(vaddr + 0x10_0000, 0x1000);
        assert_eq!(watch.stats().pages_watched, 4);

        // Unmapping the buffer: what changed is logged first, then the range is let go.
        buffer.write(16, &[0xbb; 16]).unwrap();
        before_unmap(vaddr + 0x1000, 0x1000);
        let stats = watch.stats();
        assert_eq!(stats.dma_writes_logged, 2, "{stats:?}");
        assert_eq!(stats.pages_watched, 0, "{stats:?}");
        buffer.write(32, &[0xcc; 16]).unwrap();
        watch.observe();
        watch.before_register_write(0, 0x3800, &0x10_0000u64.to_le_bytes());
        assert_eq!(watch.stats().dma_writes_logged, 2);
        assert_eq!(
            watch.stats().pages_watched,
            0,
            "no mapping to name pages in"
        );
        assert!(TABLE.iter().all(|r| r.end.load(Ordering::SeqCst) == 0));

        drop(watch);
        recorder.finish().unwrap();
        let writes: Vec<_> = TraceReader::open(&path)
            .unwrap()
            .iter()
            .map(|e| e.unwrap().kind)
            .filter_map(|k| match k {
                EventKind::DmaWrite(w) => Some((w.iova, w.data)),
                _ => None,
            })
            .collect();
        assert_eq!(
            writes,
            vec![(0x10_0000, vec![0xaa; 16]), (0x10_0010, vec![0xbb; 16])]
        );
    }

    #[test]
    fn ranges_that_cannot_be_watched_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let recorder = Recorder::create(
            &dir.path().join("t.hwrr"),
            &TraceHeader::default(),
            RecorderOptions::default(),
        )
        .unwrap();
        let watch = Arc::new(WatchSet::new(WatchOptions::disabled(), recorder.handle()));
        let m = DmaMapping {
            iova: 0,
            len: 0x1000,
            flags: 3,
        };
        assert!(register(0, 0x1000, &watch, m).is_none());
        assert!(register(0x1000, 0, &watch, m).is_none());
        assert!(register(u64::MAX - 10, 0x1000, &watch, m).is_none());
    }
}
