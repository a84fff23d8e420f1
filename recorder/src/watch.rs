//! The watch set: DMA capture for devices that write guest memory directly.
//!
//! Real hardware (through the IOMMU) and vfio-user servers that share guest RAM by fd write guest
//! memory without telling the recorder. The watch set infers those writes: it keeps shadow copies of
//! the pages the device is likely to write (rings named by register writes, buffers named by pointers
//! in those rings, and structures named by page-aligned pointers: queues, pointer lists, the pages
//! they list) and diffs them against live memory wherever the guest could observe a device
//! write: before an interrupt is logged, before a register read is logged, and in a periodic sweep.
//! Changed byte ranges become `dma_write` events with the bytes they replaced.
//!
//! A diff cannot tell who wrote a byte. Guest writes (descriptors, buffers) are absorbed silently
//! right before every register write is forwarded: drivers fill memory and then ring a doorbell, and
//! hardware DMA happens after the doorbell, so what changes later is attributed to the device. The
//! exception is the first page of a register-named ring the guest has not been seen writing (no
//! pointer ever written there: a completion queue, which only the device writes): its changes, and
//! those of the buffers that changed with it, are logged there too, since a driver may consume a
//! completion without an observation point in between (a polling driver, a shared INTx line) and
//! write the queue's head doorbell next.
//! `docs/RECORDING.md` states the limits.

use std::collections::{BTreeMap, VecDeque};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::Duration;

use hwrr_device::{dma_flags, MappedMemory};
use hwrr_formats::regmap::{AddressPart, RegisterMap};
use hwrr_formats::{DmaMapping, DmaRead, DmaWrite, EventKind};

use crate::writer::RecorderHandle;

/// Shadow granularity: pages are watched and evicted in units of this many bytes.
pub const WATCH_PAGE_SIZE: u64 = 4096;

/// How many recent 32-bit register writes are kept to pair address halves.
const RECENT_WRITES: usize = 8;

/// How the watch set names and diffs pages.
#[derive(Clone, Debug)]
pub struct WatchOptions {
    /// Whether the watch set runs at all.
    pub enabled: bool,
    /// Bytes watched from an address a register write names (a descriptor ring and its
    /// neighbours), clipped to the DMA mapping.
    pub ring_span: u64,
    /// Bytes watched from a pointer found in a watched ring (a buffer), clipped to the mapping.
    pub pointer_span: u64,
    /// Whether pointers found in register-named pages name more pages.
    pub follow_pointers: bool,
    /// How many pointers deep pages are named. A page-aligned pointer names a structure of its
    /// own (a queue, a pointer list, a data page: NVMe's I/O queues, PRP lists and the data they
    /// list), whose pointers are followed in turn while it is fewer than this many pointers from
    /// a register-named ring. 1 follows descriptors to buffers only.
    pub max_pointer_depth: u8,
    /// Alignment an address must have to be believed (register values and pointers alike): random
    /// register values and descriptor fields rarely are aligned, rings and buffers are.
    pub address_align: u64,
    /// Most pages watched at once; beyond it the least recently named page is evicted (pointer-named
    /// pages before register-named ones).
    pub max_pages: usize,
    /// Periodic sweep interval, for drivers that poll memory; `None` disables the sweep.
    pub sweep_interval: Option<Duration>,
    /// Changed ranges in one page closer than this many bytes are logged as one write.
    pub merge_gap: usize,
    /// Whether what the guest wrote to watched pages before a register write is logged as
    /// `dma_read` events after it: the descriptors, commands and data the doorbell hands the
    /// device, which reads them directly.
    pub log_reads: bool,
    /// Registers that hold DMA addresses. When given, only these name pages; otherwise any 64-bit
    /// register write, or 32-bit halves written to adjacent registers, whose value lies in a
    /// mapping does.
    pub regmap: Option<RegisterMap>,
}

impl Default for WatchOptions {
    fn default() -> Self {
        WatchOptions {
            enabled: true,
            ring_span: 64 * 1024,
            pointer_span: 2048,
            follow_pointers: true,
            max_pointer_depth: 3,
            address_align: 16,
            max_pages: 4096,
            sweep_interval: Some(Duration::from_millis(10)),
            merge_gap: 16,
            log_reads: true,
            regmap: None,
        }
    }
}

impl WatchOptions {
    /// Options with the watch set switched off.
    pub fn disabled() -> Self {
        WatchOptions {
            enabled: false,
            ..WatchOptions::default()
        }
    }
}

/// What the watch set did.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct WatchStats {
    /// Pages watched now.
    pub pages_watched: u64,
    /// Pages ever named by register writes.
    pub pages_named_by_registers: u64,
    /// Pages ever named by pointers in watched pages.
    pub pages_named_by_pointers: u64,
    /// Pages evicted because of the page cap.
    pub evictions: u64,
    /// Bytes compared against shadows.
    pub bytes_compared: u64,
    /// Diffs run (interrupts, register reads, sweeps, unmaps).
    pub observations: u64,
    /// Periodic sweeps run.
    pub sweeps: u64,
    /// Changed ranges attributed to the device.
    pub changes_found: u64,
    /// `dma_write` events logged by the watch set.
    pub dma_writes_logged: u64,
    /// Bytes in those events.
    pub dma_bytes_logged: u64,
    /// Changed ranges absorbed without logging before register writes (presumed guest writes).
    pub guest_ranges_absorbed: u64,
    /// Bytes in those ranges.
    pub guest_bytes_absorbed: u64,
    /// `dma_read` events logged for those ranges (widened to 16-byte blocks).
    pub dma_reads_logged: u64,
    /// Bytes in those events.
    pub dma_read_bytes_logged: u64,
    /// Device writes logged exactly (through the attached guest memory) that touched watched
    /// pages: their shadows were updated instead of reporting them again.
    pub exact_writes_absorbed: u64,
    /// Changed ranges found before a register write in register-named pages that only the
    /// device had written so far (completion queues), and in the buffers that changed with them:
    /// logged as device writes, not absorbed.
    pub device_ring_ranges_kept: u64,
}

#[derive(Default)]
struct Counters {
    pages_named_by_registers: AtomicU64,
    pages_named_by_pointers: AtomicU64,
    evictions: AtomicU64,
    bytes_compared: AtomicU64,
    observations: AtomicU64,
    sweeps: AtomicU64,
    changes_found: AtomicU64,
    dma_writes_logged: AtomicU64,
    dma_bytes_logged: AtomicU64,
    guest_ranges_absorbed: AtomicU64,
    guest_bytes_absorbed: AtomicU64,
    dma_reads_logged: AtomicU64,
    dma_read_bytes_logged: AtomicU64,
    exact_writes_absorbed: AtomicU64,
    device_ring_ranges_kept: AtomicU64,
}

fn bump(c: &AtomicU64, n: u64) {
    c.fetch_add(n, Ordering::Relaxed);
}

/// A DMA mapping whose memory this process can read.
struct Mapped {
    len: u64,
    memory: Arc<MappedMemory>,
}

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Naming {
    Register,
    Pointer,
}

/// How a page came to be watched.
#[derive(Clone, Copy, Debug)]
struct Named {
    naming: Naming,
    /// Pointers between a register-named ring and the page.
    depth: u8,
    /// Whether pointers in the page name more pages.
    names_pages: bool,
    /// Whether a page-aligned pointer the guest just wrote names it: the device is to fill it.
    handed_over: bool,
}

struct Page {
    /// IOVA of the first watched byte (a page boundary, or the mapping's start).
    iova: u64,
    memory: Arc<MappedMemory>,
    /// Offset of `iova` in `memory`.
    offset: u64,
    shadow: Vec<u8>,
    naming: Naming,
    stamp: u64,
    /// Whether an address register's value lies in this page (the first page of a ring, not
    /// one of the neighbours its span watches too).
    ring_head: bool,
    /// Who changed the page so far: `None` until a diff finds a change, then `Device` while every
    /// change was the device's, `Guest` from the first change absorbed before a register write.
    writer: Option<Attribution>,
    /// Pointers between a register-named ring and this page (0 for the ring itself).
    depth: u8,
    /// Named by a page-aligned pointer the guest wrote (a command's data page, a queue it
    /// creates) and not changed since: the device's first change is logged as the whole page,
    /// since a device fills a buffer whatever it held, and bytes it wrote with their old value
    /// would otherwise be missing from the trace.
    fill_pending: bool,
    /// Whether pointers in this page name more pages.
    names_pages: bool,
}

/// What a diff does with the changes it finds.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Attribution {
    /// Log them as device writes.
    Device,
    /// Absorb them as guest writes.
    Guest,
}

struct State {
    mappings: BTreeMap<u64, Mapped>,
    /// Watched pages by page-aligned IOVA.
    pages: BTreeMap<u64, Page>,
    /// Eviction order per naming: stamp → page key.
    lru_pointer: BTreeMap<u64, u64>,
    lru_register: BTreeMap<u64, u64>,
    next_stamp: u64,
    /// Recent 32-bit register writes (region, offset, value), newest last.
    recent: VecDeque<(u32, u64, u32)>,
    /// With a register map: the last value written to each address register.
    last_values: BTreeMap<(u32, u64), u64>,
    scratch: Vec<u8>,
    /// What the guest wrote to watched pages since the last register write, widened to 16-byte
    /// blocks: the device reads it once the write reaches it.
    reads: Vec<DmaRead>,
    /// Ranges (IOVA, length) of pages the guest writes (a submission queue, a transmit ring; or
    /// a page nobody was seen writing yet: a driver's very first command) that an observation
    /// logged as device writes since the last register write: a guest write an interrupt or a
    /// sweep saw before its doorbell. They are read again at the next register write, as what it
    /// hands the device.
    unread: Vec<(u64, usize)>,
}

/// The watch set, shared by the tap, the interrupt relay, the sweeper and the logging memory.
pub struct WatchSet {
    options: WatchOptions,
    recorder: RecorderHandle,
    state: Mutex<State>,
    /// Pages watched; read without the lock so an empty watch set costs one atomic load.
    page_count: AtomicU64,
    /// Watchable mappings; read without the lock so register writes cost one atomic load until
    /// the device has memory to write.
    mapping_count: AtomicU64,
    counters: Counters,
}

/// A run of changed bytes waiting to be logged, possibly extended by the next page.
struct PendingWrite {
    iova: u64,
    data: Vec<u8>,
    before: Vec<u8>,
}

impl WatchSet {
    /// A watch set logging to `recorder`.
    pub fn new(options: WatchOptions, recorder: RecorderHandle) -> Self {
        WatchSet {
            options,
            recorder,
            state: Mutex::new(State {
                mappings: BTreeMap::new(),
                pages: BTreeMap::new(),
                lru_pointer: BTreeMap::new(),
                lru_register: BTreeMap::new(),
                next_stamp: 0,
                recent: VecDeque::with_capacity(RECENT_WRITES),
                last_values: BTreeMap::new(),
                scratch: vec![0; WATCH_PAGE_SIZE as usize],
                reads: Vec::new(),
                unread: Vec::new(),
            }),
            page_count: AtomicU64::new(0),
            mapping_count: AtomicU64::new(0),
            counters: Counters::default(),
        }
    }

    /// The options it runs with.
    pub fn options(&self) -> &WatchOptions {
        &self.options
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// What it did so far.
    pub fn stats(&self) -> WatchStats {
        let c = &self.counters;
        let get = |a: &AtomicU64| a.load(Ordering::Relaxed);
        WatchStats {
            pages_watched: self.page_count.load(Ordering::Relaxed),
            pages_named_by_registers: get(&c.pages_named_by_registers),
            pages_named_by_pointers: get(&c.pages_named_by_pointers),
            evictions: get(&c.evictions),
            bytes_compared: get(&c.bytes_compared),
            observations: get(&c.observations),
            sweeps: get(&c.sweeps),
            changes_found: get(&c.changes_found),
            dma_writes_logged: get(&c.dma_writes_logged),
            dma_bytes_logged: get(&c.dma_bytes_logged),
            guest_ranges_absorbed: get(&c.guest_ranges_absorbed),
            guest_bytes_absorbed: get(&c.guest_bytes_absorbed),
            dma_reads_logged: get(&c.dma_reads_logged),
            dma_read_bytes_logged: get(&c.dma_read_bytes_logged),
            exact_writes_absorbed: get(&c.exact_writes_absorbed),
            device_ring_ranges_kept: get(&c.device_ring_ranges_kept),
        }
    }

    /// A mapping was added. Only mappings the device may write and whose memory this process
    /// can read are watched.
    pub fn add_mapping(&self, mapping: DmaMapping, memory: Option<Arc<MappedMemory>>) {
        let Some(memory) = memory else { return };
        if mapping.flags & dma_flags::WRITE == 0 || mapping.len == 0 {
            return;
        }
        let len = mapping.len.min(memory.len() as u64);
        let mut st = self.lock();
        st.mappings.insert(mapping.iova, Mapped { len, memory });
        self.mapping_count
            .store(st.mappings.len() as u64, Ordering::Relaxed);
    }

    /// Mappings were removed: what the device wrote there so far is logged, then their pages are
    /// forgotten.
    pub fn remove_mapping(&self, mapping: DmaMapping) {
        let mut st = self.lock();
        self.diff_all(&mut st, Attribution::Device);
        let (lo, hi) = if mapping.flags & dma_flags::UNMAP_ALL != 0 {
            (0, u64::MAX)
        } else {
            (mapping.iova, mapping.iova.saturating_add(mapping.len))
        };
        let doomed: Vec<u64> = st
            .mappings
            .range(lo..hi)
            .filter(|(s, m)| s.saturating_add(m.len) <= hi)
            .map(|(s, _)| *s)
            .collect();
        for start in doomed {
            if let Some(m) = st.mappings.remove(&start) {
                let end = start.saturating_add(m.len);
                let keys: Vec<u64> = st
                    .pages
                    .range(start & !(WATCH_PAGE_SIZE - 1)..end)
                    .filter(|(_, p)| p.iova >= start && p.iova < end)
                    .map(|(k, _)| *k)
                    .collect();
                for k in keys {
                    self.forget_page(&mut st, k);
                }
            }
        }
        self.mapping_count
            .store(st.mappings.len() as u64, Ordering::Relaxed);
    }

    fn forget_page(&self, st: &mut State, key: u64) {
        if let Some(p) = st.pages.remove(&key) {
            match p.naming {
                Naming::Register => st.lru_register.remove(&p.stamp),
                Naming::Pointer => st.lru_pointer.remove(&p.stamp),
            };
            self.page_count.fetch_sub(1, Ordering::Relaxed);
        }
    }

    /// Called before a register write is forwarded: learns pages from the value, then absorbs
    /// every change seen since the last observation as a guest write.
    pub fn before_register_write(&self, region: u32, offset: u64, data: &[u8]) {
        if self.mapping_count.load(Ordering::Relaxed) == 0 {
            return;
        }
        let mut st = self.lock();
        for address in self.addresses_named(&mut st, region, offset, data) {
            let named = Named {
                naming: Naming::Register,
                depth: 0,
                names_pages: self.options.follow_pointers,
                handed_over: false,
            };
            self.watch_range(&mut st, address, self.options.ring_span, named);
        }
        if !st.pages.is_empty() {
            self.diff_all(&mut st, Attribution::Guest);
        }
    }

    /// Called where the guest could observe device writes (an interrupt about to be logged, a
    /// register read about to be logged): logs what changed in watched pages.
    pub fn observe(&self) {
        if self.page_count.load(Ordering::Relaxed) == 0 {
            return;
        }
        let mut st = self.lock();
        self.diff_all(&mut st, Attribution::Device);
    }

    fn sweep(&self) {
        bump(&self.counters.sweeps, 1);
        self.observe();
    }

    /// Runs `write` (a device write of `len` bytes at `iova` that is logged exactly elsewhere)
    /// with the watch set held still, then takes the written bytes into the shadows so the watch
    /// set does not report them again.
    pub fn exact_write<R>(&self, iova: u64, len: usize, write: impl FnOnce() -> R) -> R {
        // Held even when no page is watched: a page named while the write runs (a register write
        // on another thread) must be snapshotted before or after it, never in the middle.
        let mut st = self.lock();
        let r = write();
        let end = iova.saturating_add(len as u64);
        let first = iova & !(WATCH_PAGE_SIZE - 1);
        let mut touched = false;
        let State { pages, scratch, .. } = &mut *st;
        for (_, page) in pages.range_mut(first..end) {
            let page_end = page.iova + page.shadow.len() as u64;
            let lo = iova.max(page.iova);
            let hi = end.min(page_end);
            if lo >= hi {
                continue;
            }
            let n = (hi - lo) as usize;
            let at = (lo - page.iova) as usize;
            scratch.resize(n, 0);
            if page.memory.read(page.offset + at as u64, scratch).is_ok() {
                page.shadow[at..at + n].copy_from_slice(scratch);
                touched = true;
            }
        }
        if touched {
            bump(&self.counters.exact_writes_absorbed, 1);
        }
        r
    }

    /// Addresses a register write names.
    fn addresses_named(&self, st: &mut State, region: u32, offset: u64, data: &[u8]) -> Vec<u64> {
        let value = match data.len() {
            4 => u32::from_le_bytes([data[0], data[1], data[2], data[3]]) as u64,
            8 => {
                let mut b = [0u8; 8];
                b.copy_from_slice(data);
                u64::from_le_bytes(b)
            }
            _ => return Vec::new(),
        };
        if let Some(map) = &self.options.regmap {
            return Self::addresses_from_regmap(map, st, region, offset, value);
        }
        if data.len() == 8 {
            return vec![value];
        }
        let v = value as u32;
        let mut found = Vec::new();
        let newest = |st: &State, off: Option<u64>| {
            let off = off?;
            st.recent
                .iter()
                .rev()
                .find(|(r, o, _)| *r == region && *o == off)
                .map(|(_, _, v)| *v as u64)
        };
        if let Some(hi) = newest(st, offset.checked_add(4)) {
            found.push(hi << 32 | v as u64);
        }
        if let Some(lo) = newest(st, offset.checked_sub(4)) {
            found.push((v as u64) << 32 | lo);
        }
        if st.recent.len() == RECENT_WRITES {
            st.recent.pop_front();
        }
        st.recent.push_back((region, offset, v));
        found
    }

    fn addresses_from_regmap(
        map: &RegisterMap,
        st: &mut State,
        region: u32,
        offset: u64,
        value: u64,
    ) -> Vec<u64> {
        let Some(reg) = map.lookup(region, offset) else {
            return Vec::new();
        };
        if reg.offset != offset {
            return Vec::new();
        }
        let Some(part) = reg.address else {
            return Vec::new();
        };
        st.last_values.insert((region, offset), value);
        // The other half as last written; a low half alone is a 32-bit address (high half 0), a
        // high half alone names nothing until its low half is known.
        let other = || {
            let pair = map.by_name(reg.pair.as_deref()?)?;
            st.last_values.get(&(pair.region, pair.offset)).copied()
        };
        match part {
            AddressPart::Full => vec![value],
            AddressPart::Lo => vec![other().unwrap_or(0) << 32 | (value & 0xffff_ffff)],
            AddressPart::Hi => match other() {
                Some(lo) => vec![value << 32 | (lo & 0xffff_ffff)],
                None => Vec::new(),
            },
        }
    }

    /// The mapping holding `iova`: (start, length, memory).
    fn mapping_of(st: &State, iova: u64) -> Option<(u64, u64, Arc<MappedMemory>)> {
        let (&start, m) = st.mappings.range(..=iova).next_back()?;
        (iova - start < m.len).then(|| (start, m.len, m.memory.clone()))
    }

    /// Watches `span` bytes from `address` (clipped to its mapping) if the address is believable.
    fn watch_range(&self, st: &mut State, address: u64, span: u64, named: Named) -> bool {
        let align = self.options.address_align.max(1);
        if address == 0 || address % align != 0 {
            return false;
        }
        let Some((start, len, memory)) = Self::mapping_of(st, address) else {
            return false;
        };
        let end = address.saturating_add(span.max(1)).min(start + len);
        let first = address & !(WATCH_PAGE_SIZE - 1);
        let mut page = first;
        while page < end {
            let ring_head = named.naming == Naming::Register && page == first;
            // A pointer hands over the page it names; the rest of a ring's span is the ring
            // going on (an NVMe queue's later pages), which the guest fills with commands.
            let named = Named {
                handed_over: named.handed_over && page == first,
                ..named
            };
            self.watch_page(st, page, (start, len, &memory), named, ring_head);
            page = match page.checked_add(WATCH_PAGE_SIZE) {
                Some(p) => p,
                None => break,
            };
        }
        true
    }

    fn watch_page(
        &self,
        st: &mut State,
        key: u64,
        (map_start, map_len, memory): (u64, u64, &Arc<MappedMemory>),
        named: Named,
        ring_head: bool,
    ) {
        let Named {
            naming,
            depth,
            names_pages,
            handed_over,
        } = named;
        let stamp = st.next_stamp;
        st.next_stamp += 1;
        let mut rescan = None;
        if let Some(existing) = st.pages.get_mut(&key) {
            // Named again: it moves to the back of its eviction queue (a register naming wins).
            let old = (existing.naming, existing.stamp);
            let new_naming = if naming == Naming::Register {
                Naming::Register
            } else {
                existing.naming
            };
            existing.naming = new_naming;
            existing.ring_head |= ring_head;
            existing.stamp = stamp;
            existing.depth = existing.depth.min(depth);
            existing.fill_pending |= handed_over;
            if names_pages && !existing.names_pages {
                // Named now as a structure with pointers (a buffer page reused as a pointer
                // list): what it holds is followed like a new page's.
                existing.names_pages = true;
                rescan = Some((existing.shadow.clone(), existing.iova, existing.depth));
            }
            match old.0 {
                Naming::Register => st.lru_register.remove(&old.1),
                Naming::Pointer => st.lru_pointer.remove(&old.1),
            };
            match new_naming {
                Naming::Register => st.lru_register.insert(stamp, key),
                Naming::Pointer => st.lru_pointer.insert(stamp, key),
            };
            if let Some((bytes, iova, depth)) = rescan {
                self.follow_pointers(st, &bytes, iova, depth, 0..bytes.len());
            }
            return;
        }
        while st.pages.len() >= self.options.max_pages.max(1) {
            let victim = st
                .lru_pointer
                .first_key_value()
                .or_else(|| st.lru_register.first_key_value())
                .map(|(_, k)| *k);
            match victim {
                Some(k) => {
                    self.forget_page(st, k);
                    bump(&self.counters.evictions, 1);
                }
                None => break,
            }
        }
        let iova = key.max(map_start);
        let end = (key + WATCH_PAGE_SIZE).min(map_start + map_len);
        let offset = iova - map_start;
        let mut shadow = vec![0u8; (end - iova) as usize];
        if memory.read(offset, &mut shadow).is_err() {
            return;
        }
        // Scanned after the page is in, so the pages it names count against the cap with it.
        let scan = names_pages.then(|| shadow.clone());
        st.pages.insert(
            key,
            Page {
                iova,
                memory: memory.clone(),
                offset,
                shadow,
                naming,
                stamp,
                ring_head,
                writer: None,
                fill_pending: handed_over,
                depth,
                names_pages,
            },
        );
        match naming {
            Naming::Register => {
                st.lru_register.insert(stamp, key);
                bump(&self.counters.pages_named_by_registers, 1);
            }
            Naming::Pointer => {
                st.lru_pointer.insert(stamp, key);
                bump(&self.counters.pages_named_by_pointers, 1);
            }
        }
        self.page_count.fetch_add(1, Ordering::Relaxed);
        if let Some(bytes) = scan {
            self.follow_pointers(st, &bytes, iova, depth, 0..bytes.len());
        }
    }

    /// Watches what the aligned little-endian u64 values in `bytes[changed]` point at; `bytes`
    /// are a page at `depth` pointers from a register-named ring.
    ///
    /// A page-aligned pointer names a structure of its own rather than a packet buffer (receive
    /// buffers sit behind a header's worth of padding): pages of it name more pages while
    /// `max_pointer_depth` allows, and one found in a ring spans `ring_span` (a queue that a
    /// command creates is as long as a ring).
    fn follow_pointers(
        &self,
        st: &mut State,
        bytes: &[u8],
        iova: u64,
        depth: u8,
        changed: std::ops::Range<usize>,
    ) {
        let (from, to) = (changed.start, changed.end);
        let child = depth.saturating_add(1);
        // Widened to the 8-byte-aligned (by IOVA) word holding `from`.
        let mut at = from.saturating_sub(((iova + from as u64) % 8) as usize);
        if (iova + at as u64) % 8 != 0 {
            at += 8 - ((iova + at as u64) % 8) as usize;
        }
        while at + 8 <= bytes.len() && at < to {
            let mut w = [0u8; 8];
            w.copy_from_slice(&bytes[at..at + 8]);
            let ptr = u64::from_le_bytes(w);
            // Pointers back into the page itself are ring links, already watched.
            let self_page = iova & !(WATCH_PAGE_SIZE - 1);
            if ptr & !(WATCH_PAGE_SIZE - 1) != self_page {
                let page_aligned = ptr % WATCH_PAGE_SIZE == 0;
                let structure = page_aligned && child < self.options.max_pointer_depth;
                let span = if structure && depth == 0 {
                    self.options.ring_span
                } else {
                    self.options.pointer_span
                };
                let named = Named {
                    naming: Naming::Pointer,
                    depth: child,
                    names_pages: structure,
                    handed_over: page_aligned,
                };
                self.watch_range(st, ptr, span, named);
            }
            at += 8;
        }
    }

    /// Diffs every watched page against its shadow, updates the shadows, and logs or absorbs the
    /// changes.
    fn diff_all(&self, st: &mut State, attribution: Attribution) {
        if attribution == Attribution::Device {
            bump(&self.counters.observations, 1);
        }
        let gap = self.options.merge_gap;
        let mut pending: Option<PendingWrite> = None;
        let mut compared = 0u64;
        let mut pointer_sources: Vec<(u64, Vec<u8>, u8, std::ops::Range<usize>)> = Vec::new();
        let State {
            pages,
            scratch,
            mappings,
            reads,
            unread,
            ..
        } = &mut *st;
        // A ring the guest has not been seen writing (a completion queue, which only the device
        // writes) is the device's: what changed there before a register write is a completion the
        // driver found without an interrupt (a polling driver, a shared INTx line). A driver that
        // fills a ring gives descriptors buffers, and writes pointers: that makes the ring the
        // guest's (a receive ring, a submission queue).
        let kept_ring = |page: &Page, live: &[u8]| {
            page.ring_head
                && page.writer != Some(Attribution::Guest)
                && !writes_a_pointer(&page.shadow, live, page.iova, mappings)
        };
        // When such a completion is found, the buffers that changed with it hold its data (the
        // Identify data or the read the driver consumed along with the completion).
        let completion_found = attribution == Attribution::Guest
            && pages.values().any(|page| {
                let n = page.shadow.len();
                scratch.resize(n, 0);
                page.ring_head
                    && page.memory.read(page.offset, &mut scratch[..n]).is_ok()
                    && scratch[..n] != page.shadow[..]
                    && kept_ring(page, &scratch[..n])
            });
        for page in pages.values_mut() {
            let n = page.shadow.len();
            scratch.resize(n, 0);
            if page.memory.read(page.offset, &mut scratch[..n]).is_err() {
                continue;
            }
            compared += n as u64;
            if scratch[..n] == page.shadow[..] {
                continue;
            }
            let kept = attribution == Attribution::Guest
                && completion_found
                && (kept_ring(page, &scratch[..n]) || page.naming == Naming::Pointer);
            let page_attribution = if kept {
                Attribution::Device
            } else {
                attribution
            };
            // A page only the device has written so far (a completion queue) hands over nothing.
            let guest_page = page.writer != Some(Attribution::Device);
            if page.writer != Some(Attribution::Guest) {
                page.writer = Some(page_attribution);
            }
            let live = &scratch[..n];
            if std::mem::take(&mut page.fill_pending) && page_attribution == Attribution::Device {
                // The device filled a page a command handed it: all of it, as memory holds it.
                bump(&self.counters.changes_found, 1);
                if kept {
                    bump(&self.counters.device_ring_ranges_kept, 1);
                }
                if let Some(p) = pending.take() {
                    self.log_write(p);
                }
                self.log_write(PendingWrite {
                    iova: page.iova,
                    data: live.to_vec(),
                    before: page.shadow.clone(),
                });
                page.shadow.copy_from_slice(live);
                continue;
            }
            let mut first_changed = usize::MAX;
            let mut last_changed = 0usize;
            let mut i = 0;
            while i < n {
                if live[i] == page.shadow[i] {
                    i += 1;
                    continue;
                }
                // A run of changes, extended over gaps shorter than `gap`.
                let start = i;
                let mut end = i + 1;
                let mut j = end;
                while j < n {
                    if live[j] != page.shadow[j] {
                        end = j + 1;
                        j += 1;
                    } else if j - end + 1 >= gap.max(1) {
                        break;
                    } else {
                        j += 1;
                    }
                }
                first_changed = first_changed.min(start);
                last_changed = last_changed.max(end);
                let run_iova = page.iova + start as u64;
                match page_attribution {
                    Attribution::Device => {
                        bump(&self.counters.changes_found, 1);
                        if guest_page && self.options.log_reads && unread.len() < MAX_UNREAD {
                            unread.push((run_iova, end - start));
                        }
                        if kept {
                            bump(&self.counters.device_ring_ranges_kept, 1);
                        }
                        let contiguous = pending
                            .as_ref()
                            .is_some_and(|p| p.iova + p.data.len() as u64 == run_iova);
                        if contiguous {
                            if let Some(p) = pending.as_mut() {
                                p.data.extend_from_slice(&live[start..end]);
                                p.before.extend_from_slice(&page.shadow[start..end]);
                            }
                        } else {
                            if let Some(p) = pending.take() {
                                self.log_write(p);
                            }
                            pending = Some(PendingWrite {
                                iova: run_iova,
                                data: live[start..end].to_vec(),
                                before: page.shadow[start..end].to_vec(),
                            });
                        }
                    }
                    Attribution::Guest => {
                        bump(&self.counters.guest_ranges_absorbed, 1);
                        bump(&self.counters.guest_bytes_absorbed, (end - start) as u64);
                        if self.options.log_reads {
                            add_read(reads, page.iova, live, start..end);
                        }
                    }
                }
                i = end;
            }
            // A run that ends before the page does cannot continue into the next page.
            if last_changed < n {
                if let Some(p) = pending.take() {
                    self.log_write(p);
                }
            }
            page.shadow.copy_from_slice(live);
            if page_attribution == Attribution::Guest && page.names_pages {
                pointer_sources.push((
                    page.iova,
                    live.to_vec(),
                    page.depth,
                    first_changed..last_changed,
                ));
            }
        }
        if let Some(p) = pending.take() {
            self.log_write(p);
        }
        if attribution == Attribution::Guest {
            // The guest writes observations took for the device's are handed over now too, as
            // memory holds them (the shadows are live after the loop above).
            for (iova, len) in unread.drain(..) {
                let key = iova & !(WATCH_PAGE_SIZE - 1);
                if let Some(page) = pages.get(&key) {
                    let start = (iova - page.iova) as usize;
                    let end = (start + len).min(page.shadow.len());
                    if page.names_pages && self.options.follow_pointers && start < end {
                        // And the buffers it names are the device's to fill from now on.
                        pointer_sources.push((
                            page.iova,
                            page.shadow.clone(),
                            page.depth,
                            start..end,
                        ));
                    }
                    let at = page.iova + start as u64;
                    let covered = reads.iter().any(|r| {
                        r.iova <= at && at + (end - start) as u64 <= r.iova + r.data.len() as u64
                    });
                    if start < end && !covered {
                        add_read(reads, page.iova, &page.shadow, start..end);
                    }
                }
            }
        }
        bump(&self.counters.bytes_compared, compared);
        // Descriptors the guest just filled name the buffers the device will write.
        for (iova, bytes, depth, changed) in pointer_sources {
            self.follow_pointers(st, &bytes, iova, depth, changed);
        }
    }

    /// Logs what the guest wrote to watched pages before the register write just logged (or
    /// reserved) as the device's reads of it.
    pub fn log_reads(&self) {
        if self.page_count.load(Ordering::Relaxed) == 0 {
            return;
        }
        let reads = std::mem::take(&mut self.lock().reads);
        for read in reads {
            bump(&self.counters.dma_reads_logged, 1);
            bump(&self.counters.dma_read_bytes_logged, read.data.len() as u64);
            self.recorder.log(EventKind::DmaRead(read), 0, 0);
        }
    }

    fn log_write(&self, p: PendingWrite) {
        bump(&self.counters.dma_writes_logged, 1);
        bump(&self.counters.dma_bytes_logged, p.data.len() as u64);
        self.recorder.log(
            EventKind::DmaWrite(DmaWrite {
                iova: p.iova,
                data: p.data,
                before: Some(p.before),
            }),
            0,
            0,
        );
    }
}

/// Most ranges kept for re-reading at the next register write (`State::unread`).
const MAX_UNREAD: usize = 1024;

/// Block size to which a guest write is widened when logged as a device read: descriptors and
/// completion entries are 16 bytes, an NVMe command is four such blocks.
const READ_BLOCK: u64 = 16;

/// Adds `live[run]` (of the page at `iova`), widened to whole 16-byte blocks inside the page, to
/// `reads`, joining it to the previous read when they touch.
fn add_read(reads: &mut Vec<DmaRead>, iova: u64, live: &[u8], run: std::ops::Range<usize>) {
    let lead = ((iova + run.start as u64) % READ_BLOCK) as usize;
    let start = run.start - lead.min(run.start);
    let end_iova = (iova + run.end as u64).div_ceil(READ_BLOCK) * READ_BLOCK;
    let end = ((end_iova - iova) as usize).min(live.len());
    let at = iova + start as u64;
    if let Some(last) = reads.last_mut() {
        let last_end = last.iova + last.data.len() as u64;
        if last_end >= at && last.iova <= at {
            let skip = (last_end - at) as usize;
            if skip < end - start {
                last.data.extend_from_slice(&live[start + skip..end]);
            }
            return;
        }
    }
    reads.push(DmaRead {
        iova: at,
        data: live[start..end].to_vec(),
    });
}

/// Smallest value `writes_a_pointer` takes for an address: small numbers are counts and flags,
/// even where a mapping starts at IOVA 0.
const MIN_POINTER: u64 = 1 << 20;

/// Whether a changed 8-byte-aligned (by IOVA) word of a page now holds an address inside a
/// watchable mapping, of any alignment: a transmit descriptor points into a packet's data.
fn writes_a_pointer(
    shadow: &[u8],
    live: &[u8],
    iova: u64,
    mappings: &BTreeMap<u64, Mapped>,
) -> bool {
    let skip = ((8 - iova % 8) % 8) as usize;
    let words = live.get(skip..).unwrap_or_default().chunks_exact(8);
    let old = shadow.get(skip..).unwrap_or_default().chunks_exact(8);
    words.zip(old).any(|(w, o)| {
        if w == o {
            return false;
        }
        let mut b = [0u8; 8];
        b.copy_from_slice(w);
        let value = u64::from_le_bytes(b);
        value >= MIN_POINTER
            && mappings
                .range(..=value)
                .next_back()
                .is_some_and(|(&start, m)| value - start < m.len)
    })
}

/// The periodic sweep thread; stops when dropped.
pub(crate) struct Sweeper {
    stop: Arc<(Mutex<bool>, Condvar)>,
    thread: Option<JoinHandle<()>>,
}

impl Sweeper {
    /// Starts sweeping `watch` every `interval`.
    pub(crate) fn start(watch: Arc<WatchSet>, interval: Duration) -> std::io::Result<Self> {
        let stop = Arc::new((Mutex::new(false), Condvar::new()));
        let s = stop.clone();
        let thread = std::thread::Builder::new()
            .name("hwrr-watch-sweep".into())
            .spawn(move || {
                let (lock, cv) = &*s;
                let mut stopped = lock.lock().unwrap_or_else(|p| p.into_inner());
                loop {
                    let (guard, _) = cv
                        .wait_timeout(stopped, interval)
                        .unwrap_or_else(|p| p.into_inner());
                    stopped = guard;
                    if *stopped {
                        return;
                    }
                    drop(stopped);
                    watch.sweep();
                    stopped = lock.lock().unwrap_or_else(|p| p.into_inner());
                }
            })?;
        Ok(Sweeper {
            stop,
            thread: Some(thread),
        })
    }
}

impl Drop for Sweeper {
    fn drop(&mut self) {
        let (lock, cv) = &*self.stop;
        *lock.lock().unwrap_or_else(|p| p.into_inner()) = true;
        cv.notify_all();
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}
