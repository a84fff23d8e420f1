//! Compiling a chunk of events into the engine's compact form: a `Vec<Op>` of small `Copy` records
//! that the hot path walks without allocating, plus side tables for payloads.

use std::collections::{HashMap, HashSet};
use std::sync::OnceLock;

use hwrr_formats::{region_index, AccessData, Event, EventKind, RegionAccess};

use crate::config::MsixLayout;

/// What an op does.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u8)]
pub(crate) enum OpKind {
    /// A region read: `value` is what the device answered.
    Read,
    /// A region write: `value` is what the VMM wrote.
    Write,
    /// An interrupt: `offset` holds the IRQ index, `value` the vector.
    Irq,
    /// A device DMA write: `value` is the IOVA, `aux` indexes `dma_writes`.
    DmaWrite,
    /// A device DMA read: `value` is the IOVA, `aux` indexes `dma_reads`.
    DmaRead,
    /// A DMA mapping added: `value` is the IOVA, `offset` the length.
    DmaMap,
    /// A DMA mapping removed: `value` is the IOVA, `offset` the length.
    DmaUnmap,
    /// A device reset.
    Reset,
}

impl OpKind {
    /// Whether a guest call must match this op (as opposed to the device acting on its own).
    #[inline]
    pub fn is_guest_call(self) -> bool {
        matches!(self, OpKind::Read | OpKind::Write | OpKind::Reset)
    }
}

/// One compiled event. 24 bytes, `Copy`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Op {
    /// Register offset (accesses), IRQ index, or mapping length.
    pub offset: u64,
    /// Value read or written, vector, or IOVA.
    pub value: u64,
    /// Reads: how many identical reads (same key and value) follow this one in the chunk, including
    /// itself. Byte accesses (`size == 0`): index into `bytes`. DMA: index into a payload table.
    pub aux: u32,
    /// Canonical region index (aliases resolved).
    pub region: u8,
    /// Access width 1/2/4/8, or 0 for a byte access (payload in `bytes`).
    pub size: u8,
    /// What the op does.
    pub kind: OpKind,
    /// The recorded call failed (its event has a nonzero status): replaying it fails the same way.
    pub failed: bool,
}

impl Op {
    /// Whether two accesses address the same register the same way.
    #[inline]
    pub fn same_key(&self, other: &Op) -> bool {
        self.region == other.region && self.offset == other.offset && self.size == other.size
    }
}

/// A recorded DMA write payload.
#[derive(Clone, Debug)]
pub(crate) struct DmaWritePayload {
    pub data: Vec<u8>,
    pub before: Option<Vec<u8>>,
}

/// The key of a register in the model: region, offset, width.
pub(crate) type RegKey = (u8, u64, u8);

/// A compiled chunk.
#[derive(Debug, Default)]
pub(crate) struct CompiledChunk {
    /// The ops, in stream order.
    pub ops: Vec<Op>,
    /// Sequence number of each op's event.
    pub seqs: Vec<u64>,
    /// Timestamp of each op's event.
    pub t_ns: Vec<u64>,
    /// (op index, errno) of recorded calls that failed, in op order.
    pub statuses: Vec<(u32, u32)>,
    /// Payloads of byte accesses.
    pub bytes: Vec<Vec<u8>>,
    /// Payloads of DMA writes.
    pub dma_writes: Vec<DmaWritePayload>,
    /// Payloads of DMA reads.
    pub dma_reads: Vec<Vec<u8>>,
    /// Sorted, de-duplicated 4 KiB pages the chunk's DMA touches (addresses the device used).
    pub dma_pages: Vec<u64>,
    /// The last value seen per register by the end of the chunk: (op index, value). Built on first
    /// use: only model answers need it, and building it per chunk would slow compilation.
    last_values: OnceLock<HashMap<RegKey, (u32, u64)>>,
}

impl CompiledChunk {
    /// The errno the recorded call at op `index` failed with (EIO when the table lacks it).
    pub fn status_of(&self, index: usize) -> u32 {
        match self.statuses.binary_search_by_key(&(index as u32), |e| e.0) {
            Ok(i) => self.statuses[i].1,
            Err(_) => 5,
        }
    }

    /// The last value seen per register by the end of the chunk: (op index, value).
    pub fn last_values(&self) -> &HashMap<RegKey, (u32, u64)> {
        self.last_values.get_or_init(|| {
            let mut map = HashMap::new();
            for (i, op) in self.ops.iter().enumerate() {
                if matches!(op.kind, OpKind::Read | OpKind::Write) && op.size != 0 {
                    map.insert((op.region, op.offset, op.size), (i as u32, op.value));
                }
            }
            map
        })
    }

    /// Pages (IOVA / 4 KiB, page 0 excluded) named by the chunk's register writes, with the
    /// write that named them (the last such write): 64-bit values, 32-bit values, and 32-bit pairs
    /// (a register and the one 4 bytes above it as the high half). Computed for the chunk's
    /// summary, which keeps it.
    pub fn register_named_pages(&self) -> HashMap<u64, NamedPage> {
        let mut pages = HashMap::new();
        let mut last: HashMap<(u8, u64), u64> = HashMap::new();
        for op in self.ops.iter().filter(|o| o.kind == OpKind::Write) {
            let key = (op.region, op.offset, op.size);
            let mut name = |addr: u64| {
                if addr / PAGE != 0 {
                    let named = NamedPage {
                        key,
                        value: op.value,
                        addr,
                    };
                    pages.insert(addr / PAGE, named);
                }
            };
            match op.size {
                8 => name(op.value),
                4 => {
                    name(op.value);
                    if let Some(hi) = last.get(&(op.region, op.offset + 4)) {
                        name((hi << 32) | op.value);
                    }
                    if let Some(lo) = op
                        .offset
                        .checked_sub(4)
                        .and_then(|o| last.get(&(op.region, o)))
                    {
                        name((op.value << 32) | lo);
                    }
                    last.insert((op.region, op.offset), op.value);
                }
                _ => {}
            }
        }
        pages
    }

    /// Registers that this chunk writes and then reads as the very next guest call. Computed for
    /// the chunk's summary, which keeps it.
    pub fn polled_after_write(&self) -> HashSet<RegKey> {
        let mut set = HashSet::new();
        let mut last_write: Option<RegKey> = None;
        for op in self.ops.iter().filter(|o| o.kind.is_guest_call()) {
            let key = (op.region, op.offset, op.size);
            if op.kind == OpKind::Read && last_write == Some(key) && op.size != 0 {
                set.insert(key);
            }
            last_write = (op.kind == OpKind::Write).then_some(key);
        }
        set
    }
}

/// A register write that named a page: the register, the value written to it, and the whole
/// address it formed (with its partner half for a 32-bit pair).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct NamedPage {
    pub key: RegKey,
    pub value: u64,
    pub addr: u64,
}

/// What the compiler needs to know about the device.
#[derive(Clone, Debug)]
pub(crate) struct CompileContext {
    /// For each region index 0..=8, the canonical region (alias target), or `None` for regions that
    /// are not sequenced (absent, ROM, config).
    pub canonical: [Option<u8>; 9],
    /// The MSI-X layout (recorded table/PBA accesses are dropped).
    pub msix: Option<MsixLayout>,
}

/// How a value compares as a key for runs.
fn access_parts(a: &RegionAccess, bytes: &mut Vec<Vec<u8>>) -> (u8, u64, u32) {
    match &a.data {
        AccessData::Value { size, value } => (*size, *value, 0),
        AccessData::Bytes(b) => {
            bytes.push(b.clone());
            (0, 0, (bytes.len() - 1) as u32)
        }
    }
}

const PAGE: u64 = 4096;

impl CompileContext {
    /// The canonical region of `region`, when it is sequenced.
    #[inline]
    pub fn canonical(&self, region: u32) -> Option<u8> {
        self.canonical.get(region as usize).copied().flatten()
    }

    /// Compiles one chunk.
    pub fn compile(&self, events: &[Event]) -> CompiledChunk {
        let mut c = CompiledChunk {
            ops: Vec::with_capacity(events.len()),
            seqs: Vec::with_capacity(events.len()),
            t_ns: Vec::with_capacity(events.len()),
            ..Default::default()
        };
        for e in events {
            let op = match &e.kind {
                EventKind::MmioRead(a)
                | EventKind::PioRead(a)
                | EventKind::MmioWrite(a)
                | EventKind::PioWrite(a) => {
                    let is_read = matches!(e.kind, EventKind::MmioRead(_) | EventKind::PioRead(_));
                    let Some(region) = self.canonical(a.region) else {
                        continue;
                    };
                    if let Some(m) = &self.msix {
                        let len = a.data.len() as u64;
                        if m.in_table(region as u32, a.offset, len)
                            || m.in_pba(region as u32, a.offset, len)
                        {
                            continue;
                        }
                    }
                    let (size, value, aux) = access_parts(a, &mut c.bytes);
                    Op {
                        offset: a.offset,
                        value,
                        aux,
                        region,
                        size,
                        kind: if is_read { OpKind::Read } else { OpKind::Write },
                        failed: e.status != 0,
                    }
                }
                EventKind::Irq(i) => Op {
                    offset: i.index as u64,
                    value: i.vector as u64,
                    aux: 0,
                    region: 0,
                    size: 0,
                    kind: OpKind::Irq,
                    failed: false,
                },
                EventKind::DmaWrite(w) => {
                    add_pages(&mut c.dma_pages, w.iova, w.data.len() as u64);
                    c.dma_writes.push(DmaWritePayload {
                        data: w.data.clone(),
                        before: w.before.clone().filter(|b| b.len() == w.data.len()),
                    });
                    Op {
                        offset: 0,
                        value: w.iova,
                        aux: (c.dma_writes.len() - 1) as u32,
                        region: 0,
                        size: 0,
                        kind: OpKind::DmaWrite,
                        failed: false,
                    }
                }
                EventKind::DmaRead(r) => {
                    add_pages(&mut c.dma_pages, r.iova, r.data.len() as u64);
                    c.dma_reads.push(r.data.clone());
                    Op {
                        offset: 0,
                        value: r.iova,
                        aux: (c.dma_reads.len() - 1) as u32,
                        region: 0,
                        size: 0,
                        kind: OpKind::DmaRead,
                        failed: false,
                    }
                }
                EventKind::DmaMap(m) | EventKind::DmaUnmap(m) => Op {
                    offset: m.len,
                    value: m.iova,
                    aux: m.flags,
                    region: 0,
                    size: 0,
                    kind: if matches!(e.kind, EventKind::DmaMap(_)) {
                        OpKind::DmaMap
                    } else {
                        OpKind::DmaUnmap
                    },
                    failed: e.status != 0,
                },
                EventKind::Reset => Op {
                    offset: 0,
                    value: 0,
                    aux: 0,
                    region: 0,
                    size: 0,
                    kind: OpKind::Reset,
                    failed: false,
                },
                // Config space and the MSI-X table are modelled, IRQ wiring is what the original VMM
                // asked, markers are annotations: none of them is sequenced.
                EventKind::ConfigRead(_)
                | EventKind::ConfigWrite(_)
                | EventKind::IrqSetup(_)
                | EventKind::Marker(_) => continue,
            };
            c.ops.push(op);
            if op.failed {
                c.statuses.push((c.seqs.len() as u32, e.status));
            }
            c.seqs.push(e.seq);
            c.t_ns.push(e.t_ns);
        }
        // Runs of identical reads, counted from the back so each read knows how many remain.
        let mut i = c.ops.len();
        while i > 0 {
            i -= 1;
            let op = c.ops[i];
            if op.kind != OpKind::Read || op.size == 0 || op.failed {
                continue;
            }
            let next = c.ops.get(i + 1);
            let run = match next {
                Some(n)
                    if n.kind == OpKind::Read
                        && !n.failed
                        && n.same_key(&op)
                        && n.value == op.value =>
                {
                    n.aux.saturating_add(1)
                }
                _ => 1,
            };
            c.ops[i].aux = run;
        }
        c.dma_pages.sort_unstable();
        c.dma_pages.dedup();
        c
    }
}

fn add_pages(pages: &mut Vec<u64>, iova: u64, len: u64) {
    let first = iova / PAGE;
    let last = iova.saturating_add(len.max(1) - 1) / PAGE;
    // A huge payload's pages would bloat the table; its first and last pages say enough.
    if last - first > 64 {
        pages.push(first);
        pages.push(last);
        return;
    }
    for p in first..=last {
        pages.push(p);
    }
}

/// Builds the canonical-region table from the header: BARs (with aliases resolved to their target),
/// not the ROM or config space (modelled).
pub(crate) fn canonical_regions(header: &hwrr_formats::TraceHeader) -> [Option<u8>; 9] {
    let mut table = [None; 9];
    for (i, slot) in table.iter_mut().enumerate() {
        let i = i as u32;
        if i == region_index::ROM || i == region_index::CONFIG {
            continue;
        }
        if let Some(r) = header.region(i) {
            let target = r.alias_of.unwrap_or(i);
            if target < 9 && target != region_index::ROM && target != region_index::CONFIG {
                *slot = Some(target as u8);
            }
        }
    }
    table
}

#[cfg(test)]
mod tests {
    use super::*;
    use hwrr_formats::{Irq, RegionInfo, RegionKind, TraceHeader};

    fn read(seq: u64, region: u32, offset: u64, value: u64) -> Event {
        Event::new(
            seq,
            seq,
            EventKind::MmioRead(RegionAccess {
                region,
                offset,
                data: AccessData::Value { size: 4, value },
            }),
        )
    }

    fn ctx() -> CompileContext {
        let region = |index, alias_of| RegionInfo {
            index,
            kind: RegionKind::Mmio,
            size: 0x1000,
            flags: 3,
            alias_of,
        };
        let header = TraceHeader {
            regions: vec![region(0, None), region(1, Some(0)), region(6, None)],
            ..Default::default()
        };
        CompileContext {
            canonical: canonical_regions(&header),
            msix: Some(MsixLayout {
                cap: 0x70,
                entries: 2,
                table_bar: 0,
                table_offset: 0x800,
                pba_bar: 0,
                pba_offset: 0x900,
            }),
        }
    }

    #[test]
    fn runs_aliases_and_dropped_accesses() {
        let events = vec![
            read(10, 0, 8, 1),
            read(11, 1, 8, 1), // alias of region 0: same run
            read(12, 0, 8, 1),
            Event::new(
                13,
                13,
                EventKind::Irq(Irq {
                    index: 2,
                    vector: 1,
                }),
            ),
            read(14, 0, 8, 1),
            read(15, 0, 8, 2),
            read(16, 0, 0x808, 0), // MSI-X table: modelled
            read(17, 0, 0x900, 0), // PBA: modelled
            read(18, 6, 0, 0x55),  // ROM: modelled
            read(19, 3, 0, 0),     // no such region
        ];
        let c = ctx().compile(&events);
        let runs: Vec<u32> = c.ops.iter().map(|o| o.aux).collect();
        assert_eq!(runs, vec![3, 2, 1, 0, 1, 1]);
        assert_eq!(c.seqs, vec![10, 11, 12, 13, 14, 15]);
        assert!(c
            .ops
            .iter()
            .all(|o| o.kind != OpKind::Read || o.region == 0));
        assert_eq!(c.ops[3].kind, OpKind::Irq);
        assert_eq!((c.ops[3].offset, c.ops[3].value), (2, 1));
        assert_eq!(c.last_values().get(&(0, 8, 4)), Some(&(5, 2)));
        assert_eq!(std::mem::size_of::<Op>(), 24);
    }
}
