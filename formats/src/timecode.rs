//! The time stream of chunk encodings 2 and 3: time deltas entropy-coded with static rANS tables
//! chosen per event by a context of access keys.
//!
//! QEMU's microsecond timestamps carry real jitter, but how long the driver takes between two
//! accesses depends strongly on *which* two accesses they are (and a little on how long the
//! previous gap was). The encoder counts the chunk's deltas per context `(previous event's class,
//! this event's class, bucket of the previous delta)`, gives a context its own frequency table when
//! that pays for the table, lets the remaining contexts of a class share a class table and the rest
//! share one global table, and codes each delta's symbol under its context's table with rANS, in
//! four independent lanes so a decoder overlaps their dependency chains. Decoding is two table
//! lookups and one multiply per event, with no adaptation.
//! `docs/FORMAT.md` §3.3 is the specification; §3.4 says what encoding 3 changes (finer buckets of
//! the previous delta, tables stored as columns), which [`TimeLayout`] carries.

use crate::codec::{put_varint, unzigzag, zigzag, Rd};

/// Context classes: 0..=53 for the most used access keys, 54 for every other access key, 55 for
/// "before the first event", 56..=63 for the non-access kinds (tags 6..=13).
pub(crate) const CLASS_COUNT: usize = 64;
/// Class of the access keys the class map does not name.
pub(crate) const CLASS_OTHER_KEY: u8 = 54;
/// Class of the (absent) event before a chunk's first event.
pub(crate) const CLASS_START: u8 = 55;
/// Classes 56..=63 are the non-access kind tags 6..=13: class = tag + this.
const NON_ACCESS_CLASS_OFFSET: u8 = 50;
/// Kind tags below this are accesses.
const FIRST_NON_ACCESS_TAG: u8 = 6;
/// Most buckets of the previous delta an encoding uses (see [`TimeLayout`]).
const MAX_BUCKETS: usize = 16;
/// Deltas below this are their own symbol.
const DIRECT: u64 = 1 << DIRECT_BITS;
const DIRECT_BITS: u32 = 7;
/// Symbols: 64 direct deltas, then 4 per binary exponent 6..=63.
pub(crate) const SYMBOLS: usize = DIRECT as usize + (64 - DIRECT_BITS as usize) * 4;
/// Largest table precision (log2 of a table's frequency total). 11 bits keep a decoding slot in
/// 32 bits (symbol 9, frequency 12, bias 11) and the tables of a chunk in cache.
const MAX_PRECISION: u32 = 11;
/// Independent rANS lanes: the chunk's events are cut into this many consecutive runs, each with
/// its own state, so the decoder interleaves four dependency chains instead of waiting on one.
pub(crate) const LANES: usize = 4;

/// First event of each lane (and the end), for a chunk of `n` events.
pub(crate) fn lane_bounds(n: usize) -> [usize; LANES + 1] {
    let per = n.div_ceil(LANES);
    let mut b = [0; LANES + 1];
    for (k, v) in b.iter_mut().enumerate() {
        *v = (k * per).min(n);
    }
    b
}

/// Uses in a chunk below which an access key shares the "other keys" class instead of getting a
/// class of its own: a rare key's contexts cannot pay for tables of their own, and pooled with the
/// other rare keys they can share one (measured on the corpus: −0.4 % / −0.1 % nvme / rtl8139
/// file size; 8 and 16 uses gain less, more than 32 nothing more).
const MIN_USES_FOR_OWN_CLASS: u32 = 32;

/// Lower bound of the rANS state; the state lives in [RANS_L, 2^32) and moves 16 bits at a time.
const RANS_L: u32 = 1 << 16;
/// Estimated cost in bits of one stored table entry and of one table header after zstd (for the
/// encoder's decision whether a table pays for itself; sizes barely move between 4 and 12).
const TABLE_ENTRY_BITS: f64 = 8.0;
const TABLE_HEADER_BITS: f64 = 40.0;

/// What distinguishes the time streams of encodings 2 and 3.
#[derive(Clone, Copy, Debug)]
pub(crate) struct TimeLayout {
    /// Number of buckets of the previous delta.
    buckets: usize,
    /// The bucket of every symbol's delta (the decoder's invalid symbol never reaches a lookup
    /// that matters).
    bucket_of_symbol: &'static [u8; 512],
    /// The tables are stored as columns (headers, symbol gaps, weight code differences) rather
    /// than one after the other.
    columnar: bool,
}

/// Encoding 2: 8 buckets by bit length (0, 1, 2..3, 4..7, ..., 32..63, 64 and more), tables one
/// after the other.
pub(crate) const TIME_V2: TimeLayout = TimeLayout {
    buckets: 8,
    bucket_of_symbol: &BUCKET_OF_SYMBOL_V2,
    columnar: false,
};

/// Encoding 3: 16 buckets by half bit length (0, 1, 2, 3, 4..5, 6..7, 8..11, ..., 96..127,
/// 128..191, 192 and more), columnar tables. The finer buckets tell apart gaps within the range
/// where a driver's own pace lies (tens to hundreds of microseconds).
pub(crate) const TIME_V3: TimeLayout = TimeLayout {
    buckets: MAX_BUCKETS,
    bucket_of_symbol: &BUCKET_OF_SYMBOL_V3,
    columnar: true,
};

impl TimeLayout {
    /// The bucket of a previous delta `d` (in quanta). The decoder finds the same bucket from
    /// the delta's symbol (`bucket_of_symbol`).
    #[inline(always)]
    fn bucket(&self, d: u64) -> usize {
        if self.buckets == MAX_BUCKETS {
            bucket_v3(d)
        } else {
            bucket_v2(d)
        }
    }
}

static BUCKET_OF_SYMBOL_V2: [u8; 512] = bucket_table(false);
static BUCKET_OF_SYMBOL_V3: [u8; 512] = bucket_table(true);

/// The bucket of every symbol, by [`bucket_v3`] (`half_octaves`) or [`bucket_v2`] of its smallest
/// delta: neither bucketing splits the deltas a large symbol stands for (symbols 128 and 129 are
/// 128..=191, and the larger ones are all in the last bucket).
const fn bucket_table(half_octaves: bool) -> [u8; 512] {
    const fn bucket(d: u64, half_octaves: bool) -> usize {
        if half_octaves {
            bucket_v3(d)
        } else {
            bucket_v2(d)
        }
    }
    let mut b = [bucket(u64::MAX, half_octaves) as u8; 512];
    let mut s = 0;
    while s < DIRECT as usize + 2 {
        let smallest = if s < DIRECT as usize {
            s as u64
        } else {
            DIRECT
        };
        b[s] = bucket(smallest, half_octaves) as u8;
        s += 1;
    }
    b
}

/// Encoding 2's bucket of a previous delta `d` (in quanta): its bit length, at most 7.
const fn bucket_v2(d: u64) -> usize {
    let b = 64 - d.leading_zeros() as usize;
    if b < 8 {
        b
    } else {
        7
    }
}

/// Encoding 3's bucket of a previous delta `d`: `d` below 4, else twice its highest bit's position
/// plus its next bit, at most 15.
const fn bucket_v3(d: u64) -> usize {
    if d < 4 {
        d as usize
    } else {
        let e = 63 - d.leading_zeros() as usize;
        let b = 2 * e + ((d >> (e - 1)) & 1) as usize;
        if b < MAX_BUCKETS {
            b
        } else {
            MAX_BUCKETS - 1
        }
    }
}

/// Symbol of the decoder's stand-in table for contexts without a table.
const INVALID_SYMBOL: u64 = 0x1ff;

/// Table kinds in the stream, in the order they must appear.
const KIND_GLOBAL: u8 = 0;
const KIND_CLASS: u8 = 1;
const KIND_CONTEXT: u8 = 2;

/// `event_keys` entry of a non-access event: this bit plus its kind tag.
pub(crate) const NON_ACCESS: u32 = 1 << 31;

/// The class of context `ctx` (`buckets` is 8 or 16: a shift, not a division).
#[inline(always)]
fn class_of_context(ctx: u32, buckets: usize) -> usize {
    (ctx as usize >> buckets.trailing_zeros()) % CLASS_COUNT
}

#[inline(always)]
fn context(prev_class: u8, class: u8, bucket: usize, buckets: usize) -> usize {
    (prev_class as usize * CLASS_COUNT + class as usize) * buckets + bucket
}

/// The symbol of delta `d`, with the number and value of its extra raw bits.
#[inline(always)]
fn symbolize(d: u64) -> (u16, u32, u64) {
    if d < DIRECT {
        return (d as u16, 0, 0);
    }
    let e = 63 - d.leading_zeros();
    let extra = e - 2;
    let top = (d >> extra) & 3;
    (
        (DIRECT + (e - DIRECT_BITS) as u64 * 4 + top) as u16,
        extra,
        d & ((1u64 << extra) - 1),
    )
}

/// Class of a non-access event's kind tag.
#[inline(always)]
fn non_access_class(tag: u8) -> u8 {
    tag + NON_ACCESS_CLASS_OFFSET
}

/// Reusable buffers of the encoder.
#[derive(Default)]
pub(crate) struct TimeEncoder {
    ctx_slot: Vec<u32>,
    used: Vec<u32>,
    /// Per used context and symbol: how many events it codes, saturating. Counts only weigh the
    /// tables (any symbol counted gets a frequency); 16 bits halve what the counting loop's
    /// scattered increments touch, the hottest part of encoding.
    counts: Vec<u16>,
    class_counts: Vec<u32>,
    residual: Vec<u32>,
    global: Vec<u32>,
    /// Per table and symbol: what the rANS step needs (entries of symbols a table does not code
    /// are stale, never read).
    enc: Vec<SymbolCoding>,
    /// Per event: its context's index in `used`.
    slot_of_event: Vec<u32>,
    /// Per used context: its table's `index << 4 | precision`.
    table_of_slot: Vec<u32>,
    sym_of_event: Vec<u16>,
    sym_uses: Vec<(u32, u32)>,
    /// (context slot, symbol) of every symbol some context uses.
    nonzero: Vec<(u32, u16)>,
    /// Each lane's emitted rANS words.
    words: [Vec<u16>; LANES],
}

/// How the encoder codes one symbol of one table: one 16-byte entry, so a step touches one cache
/// line for it, not two.
#[derive(Clone, Copy, Default)]
#[repr(C, align(16))]
struct SymbolCoding {
    /// ceil(2^64 / frequency), to divide by a multiplication (0 for frequency 1).
    reciprocal: u64,
    /// frequency << 16 | cumulative frequency.
    freq_cum: u32,
}

/// One frequency table chosen by the encoder.
struct TableDef {
    kind: u8,
    /// Class (KIND_CLASS) or context index (KIND_CONTEXT).
    coord: u32,
    precision: u32,
    /// The symbols it codes, in increasing order.
    symbols: Vec<u16>,
    /// Their weight codes.
    codes: Vec<u8>,
    /// Their frequencies (from the codes).
    freqs: Vec<u32>,
}

/// Whether a table of its own for a distribution costs less than coding it with its parent's:
/// `counts` are (count, parent's count) of the symbols it uses (the parent covers each of them),
/// `parent_total` the parent's count over all its symbols. Own cost: the empirical entropy plus
/// the table's estimated size; parent's: the cross entropy.
fn pays_for_itself(counts: impl Iterator<Item = (u32, u32)>, parent_total: u64) -> bool {
    let (mut total, mut nnz) = (0u64, 0usize);
    let (mut own, mut cross) = (0.0f64, 0.0f64);
    for (c, p) in counts {
        let c_f = c as f64;
        total += c as u64;
        nnz += 1;
        own -= c_f * c_f.log2();
        cross -= c_f * (p.max(1) as f64).log2();
    }
    let total_f = total as f64;
    own += total_f * total_f.log2();
    cross += total_f * (parent_total.max(1) as f64).log2();
    own + TABLE_HEADER_BITS + TABLE_ENTRY_BITS * (nnz as f64) < cross
}

fn ceil_log2(x: u64) -> u32 {
    if x <= 1 {
        0
    } else {
        64 - (x - 1).leading_zeros()
    }
}

/// Every code's weight, in code order (increasing).
static CODE_WEIGHTS: [u64; 256] = {
    let mut w = [0u64; 256];
    let mut c = 0;
    while c < 256 {
        w[c] = code_weight(c as u8);
        c += 1;
    }
    w
};

/// The weight a table stores for a symbol, by its one-byte code: exact up to 16, then a float
/// with a 4-bit mantissa (at most 3 % off), up to 2^19.
const fn code_weight(code: u8) -> u64 {
    if code < 16 {
        code as u64 + 1
    } else {
        (17 + (code & 15) as u64) << ((code >> 4) - 1)
    }
}

/// The code whose weight is nearest to `w` (at least 1).
fn weight_code(w: u64) -> u8 {
    // Weights increase with the code: binary search for the first one at or above `w`.
    let hi = CODE_WEIGHTS.partition_point(|cw| *cw < w).min(255) as u8;
    if hi > 0 && w - code_weight(hi - 1) < code_weight(hi).saturating_sub(w) {
        hi - 1
    } else {
        hi
    }
}

/// Frequencies summing to `2^precision` from weights (`weights.len() <= 2^precision`): every symbol
/// gets 1 plus its share of the rest, rounded down, and what rounding leaves goes to the first
/// symbol of largest weight. The decoder computes exactly this.
fn frequencies(weights: &[u64], precision: u32) -> Vec<u32> {
    let m = 1u64 << precision;
    let spare = m - weights.len() as u64;
    let total: u64 = weights.iter().sum::<u64>().max(1);
    let mut freqs: Vec<u32> = weights
        .iter()
        .map(|w| 1 + (*w as u128 * spare as u128 / total as u128) as u32)
        .collect();
    let assigned: u64 = freqs.iter().map(|f| *f as u64).sum();
    let mut largest = 0;
    for (i, w) in weights.iter().enumerate() {
        if *w > weights[largest] {
            largest = i;
        }
    }
    if let Some(f) = freqs.get_mut(largest) {
        *f += (m - assigned) as u32;
    }
    freqs
}

/// Chooses the table for `counts`: its precision, codes and frequencies.
fn quantize(kind: u8, coord: u32, counts: &[u32]) -> TableDef {
    let used: Vec<(u16, u32)> = counts
        .iter()
        .enumerate()
        .filter(|(_, c)| **c != 0)
        .map(|(s, c)| (s as u16, *c))
        .collect();
    let total: u64 = used.iter().map(|u| u.1 as u64).sum();
    let nnz = used.len() as u64;
    // A table never has more slots than about two per event it codes: bounded decoder memory,
    // and small tables stay small in cache.
    let precision = if nnz <= 1 {
        0
    } else {
        ceil_log2(nnz).max(ceil_log2(total)).min(MAX_PRECISION)
    };
    // Counts beyond the largest code weight are scaled down together.
    let max = used.iter().map(|u| u.1).max().unwrap_or(1) as u64;
    let shift = 64 - (max >> 19).leading_zeros();
    let codes: Vec<u8> = used
        .iter()
        .map(|u| weight_code(((u.1 as u64) >> shift).max(1)))
        .collect();
    let weights: Vec<u64> = codes.iter().map(|c| code_weight(*c)).collect();
    let freqs = frequencies(&weights, precision);
    TableDef {
        kind,
        coord,
        precision,
        symbols: used.iter().map(|u| u.0).collect(),
        codes,
        freqs,
    }
}

/// Builds the context lookup table of a chunk whose events may have the classes in `present` (bit
/// `c` for class `c`), the way section 3.3 of `docs/FORMAT.md` picks a table: context table, else
/// class table, else global table. Only those classes get rows (renumbered densely in `dense`,
/// `u8::MAX` for the others), so a small chunk does not pay for all 32 Ki contexts. `tables` are
/// (kind, coordinate, entry) in increasing kind order; entries are `slot_offset << 4 | precision`,
/// `missing` where no table applies. Returns the table and the number of classes used (its rows are
/// `(prev × used + class) × buckets`).
fn dense_lut(
    present: u64,
    tables: &[(u8, u32, u32)],
    missing: u32,
    buckets: usize,
    dense: &mut [u8; CLASS_COUNT],
) -> (Vec<u32>, usize) {
    dense.fill(u8::MAX);
    let mut used = 0usize;
    for (class, d) in dense.iter_mut().enumerate() {
        if present >> class & 1 == 1 {
            *d = used as u8;
            used += 1;
        }
    }
    let row = |prev: usize, class: usize| (prev * used + class) * buckets;
    let mut lut = vec![missing; used * used * buckets];
    for &(kind, coord, entry) in tables {
        match kind {
            KIND_GLOBAL => lut.fill(entry),
            KIND_CLASS => {
                let class = dense[coord as usize % CLASS_COUNT];
                if class != u8::MAX {
                    for prev in 0..used {
                        let at = row(prev, class as usize);
                        lut[at..at + buckets].fill(entry);
                    }
                }
            }
            _ => {
                let (pair, bucket) = (coord as usize / buckets, coord as usize % buckets);
                let (prev, class) = (
                    dense[pair / CLASS_COUNT % CLASS_COUNT],
                    dense[pair % CLASS_COUNT],
                );
                if prev != u8::MAX && class != u8::MAX {
                    lut[row(prev as usize, class as usize) + bucket] = entry;
                }
            }
        }
    }
    (lut, used)
}

impl TimeEncoder {
    /// Appends a chunk's time model stream to `out` and its time code stream to `code`. `deltas`
    /// are in quanta; `event_keys[i]` is the access-key symbol of event `i`, or [`NON_ACCESS`] |
    /// its tag; `key_count` is the size of the chunk's access-key dictionary; `layout` is the
    /// encoding's.
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn encode(
        &mut self,
        out: &mut Vec<u8>,
        code: &mut Vec<u8>,
        quantum: u64,
        deltas: &[u64],
        event_keys: &[u32],
        key_count: usize,
        layout: TimeLayout,
    ) {
        let buckets = layout.buckets;
        let n = deltas.len();
        put_varint(out, quantum);

        // Class map: the most used keys get classes of their own, rare ones share one.
        self.sym_uses.clear();
        self.sym_uses.resize(key_count, (0, 0));
        for (s, u) in self.sym_uses.iter_mut().enumerate() {
            u.1 = s as u32;
        }
        for &k in event_keys {
            if k & NON_ACCESS == 0 {
                if let Some(u) = self.sym_uses.get_mut(k as usize) {
                    u.0 += 1;
                }
            }
        }
        let mut ranked: Vec<(u32, u32)> =
            self.sym_uses.iter().copied().filter(|u| u.0 > 0).collect();
        ranked.sort_unstable_by(|a, b| b.0.cmp(&a.0).then(a.1.cmp(&b.1)));
        ranked.retain(|u| u.0 >= MIN_USES_FOR_OWN_CLASS);
        ranked.truncate(CLASS_OTHER_KEY as usize);
        let map_len = ranked.iter().map(|u| u.1 + 1).max().unwrap_or(0) as usize;
        let mut class_map = vec![CLASS_OTHER_KEY; map_len];
        for (class, u) in ranked.iter().enumerate() {
            class_map[u.1 as usize] = class as u8;
        }
        put_varint(out, map_len as u64);
        out.extend_from_slice(&class_map);

        // Count symbols per context. The context map covers only the classes this chunk's events
        // can have (the class map's, the other keys', the start and the non-access kinds), in
        // dense rows: a few thousand entries that stay in cache, where all 32 or 64 Ki contexts
        // would cost a new encoder more than a small chunk's whole encoding.
        let mut row_of_class = [u8::MAX; CLASS_COUNT];
        let mut rows = 0usize;
        let own_classes = 0..ranked.len() as u8;
        let non_access = FIRST_NON_ACCESS_TAG..CLASS_COUNT as u8 - NON_ACCESS_CLASS_OFFSET;
        for class in own_classes
            .chain([CLASS_OTHER_KEY, CLASS_START])
            .chain(non_access.map(non_access_class))
        {
            row_of_class[class as usize] = rows as u8;
            rows += 1;
        }
        self.ctx_slot.clear();
        self.ctx_slot.resize(rows * rows * buckets, u32::MAX);
        self.used.clear();
        self.counts.clear();
        self.nonzero.clear();
        // Written by index, and the encoder's vectors borrowed apart: the loop then keeps no
        // vector's length or pointer in memory but the ones that grow.
        self.slot_of_event.clear();
        self.slot_of_event.resize(n, 0);
        self.sym_of_event.clear();
        self.sym_of_event.resize(n, 0);
        let TimeEncoder {
            ctx_slot,
            used,
            counts,
            nonzero,
            slot_of_event,
            sym_of_event,
            ..
        } = self;
        let bounds = lane_bounds(n);
        let mut prev_class = CLASS_START;
        let mut prev_row = row_of_class[CLASS_START as usize] as usize;
        for lane in 0..LANES {
            // A lane does not see the previous lane's deltas.
            let mut prev_delta = 0u64;
            for i in bounds[lane]..bounds[lane + 1] {
                let (d, k) = (deltas[i], event_keys[i]);
                let class = if k & NON_ACCESS != 0 {
                    non_access_class((k & !NON_ACCESS) as u8)
                } else {
                    class_map
                        .get(k as usize)
                        .copied()
                        .unwrap_or(CLASS_OTHER_KEY)
                };
                let row = row_of_class[class as usize] as usize;
                let bucket = layout.bucket(prev_delta);
                let at = (prev_row * rows + row) * buckets + bucket;
                let mut slot = ctx_slot[at];
                if slot == u32::MAX {
                    slot = used.len() as u32;
                    ctx_slot[at] = slot;
                    used.push(context(prev_class, class, bucket, buckets) as u32);
                    counts.resize(counts.len() + SYMBOLS, 0);
                }
                let (sym, _, _) = symbolize(d);
                let cell = &mut counts[slot as usize * SYMBOLS + sym as usize];
                if *cell == 0 {
                    nonzero.push((slot, sym));
                }
                *cell = cell.saturating_add(1);
                slot_of_event[i] = slot;
                sym_of_event[i] = sym;
                prev_class = class;
                prev_row = row;
                prev_delta = d;
            }
        }

        // Choose tables: a context of its own when it beats its class's distribution, a class
        // table for the class's remaining contexts when it beats the global distribution, the
        // global table for everything else.
        // Rows of the classes this chunk uses, zeroed before use (the others are never read).
        let mut classes_seen = 0u64;
        for &ctx in &self.used {
            classes_seen |= 1 << class_of_context(ctx, buckets);
        }
        let seen: Vec<usize> = (0..CLASS_COUNT)
            .filter(|c| classes_seen >> c & 1 == 1)
            .collect();
        self.class_counts.resize(CLASS_COUNT * SYMBOLS, 0);
        self.residual.resize(CLASS_COUNT * SYMBOLS, 0);
        for &class in &seen {
            self.class_counts[class * SYMBOLS..(class + 1) * SYMBOLS].fill(0);
            self.residual[class * SYMBOLS..(class + 1) * SYMBOLS].fill(0);
        }
        self.global.clear();
        self.global.resize(SYMBOLS, 0);
        // Each context's used symbols, contiguous and in order: the per-context work below is
        // proportional to them, not to all 356 symbols.
        self.nonzero.sort_unstable();
        let mut nonzero_of_slot = vec![0u32; self.used.len() + 1];
        for &(slot, _) in &self.nonzero {
            nonzero_of_slot[slot as usize + 1] += 1;
        }
        for i in 0..self.used.len() {
            nonzero_of_slot[i + 1] += nonzero_of_slot[i];
        }
        let mut class_total = [0u64; CLASS_COUNT];
        for &(slot, sym) in &self.nonzero {
            let class = class_of_context(self.used[slot as usize], buckets);
            let v = self.counts[slot as usize * SYMBOLS + sym as usize] as u32;
            self.class_counts[class * SYMBOLS + sym as usize] += v;
            self.global[sym as usize] += v;
            class_total[class] += v as u64;
        }
        let mut context_tables = Vec::new();
        // Per used context: its own table's position among the context tables, if it gets one.
        let mut own_table = vec![None; self.used.len()];
        let mut order: Vec<(u32, u32)> = self
            .used
            .iter()
            .enumerate()
            .map(|(slot, ctx)| (*ctx, slot as u32))
            .collect();
        order.sort_unstable();
        for &(ctx, slot) in &order {
            let class = class_of_context(ctx, buckets);
            let c = &self.counts[slot as usize * SYMBOLS..(slot as usize + 1) * SYMBOLS];
            let parent = &self.class_counts[class * SYMBOLS..(class + 1) * SYMBOLS];
            let syms = &self.nonzero[nonzero_of_slot[slot as usize] as usize
                ..nonzero_of_slot[slot as usize + 1] as usize];
            let sparse = syms
                .iter()
                .map(|&(_, sym)| (c[sym as usize] as u32, parent[sym as usize]));
            if pays_for_itself(sparse, class_total[class]) {
                own_table[slot as usize] = Some(context_tables.len());
                let wide: Vec<u32> = c.iter().map(|&v| v as u32).collect();
                context_tables.push(quantize(KIND_CONTEXT, ctx, &wide));
            } else {
                let residual = &mut self.residual[class * SYMBOLS..(class + 1) * SYMBOLS];
                for &(_, sym) in syms {
                    residual[sym as usize] += c[sym as usize] as u32;
                }
            }
        }
        let mut rest = vec![0u32; SYMBOLS];
        let mut class_tables = Vec::new();
        let mut class_table = [None; CLASS_COUNT];
        for &class in &seen {
            let r = &self.residual[class * SYMBOLS..(class + 1) * SYMBOLS];
            if r.iter().all(|v| *v == 0) {
                continue;
            }
            let sparse = r
                .iter()
                .zip(&self.global)
                .filter(|(c, _)| **c != 0)
                .map(|(c, g)| (*c, *g));
            if pays_for_itself(sparse, n as u64) {
                class_table[class] = Some(class_tables.len());
                class_tables.push(quantize(KIND_CLASS, class as u32, r));
            } else {
                for (g, v) in rest.iter_mut().zip(r) {
                    *g += v;
                }
            }
        }
        let mut tables = Vec::new();
        if rest.iter().any(|v| *v != 0) {
            tables.push(quantize(KIND_GLOBAL, 0, &rest));
        }
        let class_base = tables.len();
        let context_base = class_base + class_tables.len();
        tables.extend(class_tables);
        tables.extend(context_tables);
        // Each used context's table, by the decoder's rule: its own, else its class's, else the
        // global one (which exists whenever some context has neither).
        let table_index: Vec<usize> = self
            .used
            .iter()
            .zip(&own_table)
            .map(|(&ctx, own)| match own {
                Some(t) => context_base + t,
                None => class_table[class_of_context(ctx, buckets)].map_or(0, |t| class_base + t),
            })
            .collect();

        // Write the tables and build the encoder's (frequency, cumulative) per table and symbol.
        write_tables(out, &tables, layout.columnar);
        // Only the coded symbols' entries are written and read: grown, never cleared.
        if self.enc.len() < tables.len() * SYMBOLS {
            self.enc
                .resize(tables.len() * SYMBOLS, SymbolCoding::default());
        }
        for (t, def) in tables.iter().enumerate() {
            let mut cum = 0u32;
            for (&s, &f) in def.symbols.iter().zip(&def.freqs) {
                self.enc[t * SYMBOLS + s as usize] = SymbolCoding {
                    reciprocal: if f > 1 { u64::MAX / f as u64 + 1 } else { 0 },
                    freq_cum: f << 16 | cum,
                };
                cum += f;
            }
        }

        // The few used contexts' tables in a small array the per-event loop reads.
        self.table_of_slot.clear();
        self.table_of_slot.extend(
            table_index
                .iter()
                .map(|&t| (t as u32) << 4 | tables[t].precision),
        );

        // rANS per lane, last event first, so the decoder reads forwards. The four lanes' state
        // chains are independent: stepping them in turn lets the CPU overlap them.
        // At most one word per event; written unconditionally, kept when emitted (whether a
        // state overflows is a coin toss a branch would lose).
        let mut x = [RANS_L; LANES];
        let mut emitted = [0usize; LANES];
        for (lane, words) in self.words.iter_mut().enumerate() {
            words.clear();
            words.resize(bounds[lane + 1] - bounds[lane] + 1, 0);
        }
        let enc = &self.enc[..];
        let (table_of_slot, slot_of_event, sym_of_event) = (
            &self.table_of_slot[..],
            &self.slot_of_event[..],
            &self.sym_of_event[..],
        );
        let words = &mut self.words;
        macro_rules! step {
            ($k:expr, $i:expr) => {{
                let (k, i): (usize, usize) = ($k, $i);
                let entry = table_of_slot[slot_of_event[i] as usize];
                let (t, precision) = ((entry >> 4) as usize, entry & 15);
                let at = t * SYMBOLS + sym_of_event[i] as usize;
                let coding = enc[at];
                let (freq, cum) = (coding.freq_cum >> 16, coding.freq_cum & 0xffff);
                let x_max = (1u64 << (32 - precision)) * freq as u64;
                let emit = x[k] as u64 >= x_max;
                words[k][emitted[k]] = x[k] as u16;
                emitted[k] += emit as usize;
                let xk = if emit { x[k] >> 16 } else { x[k] };
                // x / freq by multiplication: exact for 32-bit x with ceil(2^64 / freq).
                let q = match coding.reciprocal {
                    0 => xk,
                    m => ((m as u128 * xk as u128) >> 64) as u32,
                };
                x[k] = (q << precision) + (xk - q * freq) + cum;
            }};
        }
        let per = bounds[1] - bounds[0];
        let last = bounds[LANES] - bounds[LANES - 1];
        for j in (last..per).rev() {
            for k in 0..LANES - 1 {
                if bounds[k] + j < bounds[k + 1] {
                    step!(k, bounds[k] + j);
                }
            }
        }
        for j in (0..last).rev() {
            step!(0, bounds[0] + j);
            step!(1, bounds[1] + j);
            step!(2, bounds[2] + j);
            step!(3, bounds[3] + j);
        }
        for lane in 0..LANES {
            let words = &mut self.words[lane];
            words.truncate(emitted[lane]);
            let rans_len = 4 + 2 * words.len();
            put_varint(code, rans_len as u64);
            code.extend_from_slice(&x[lane].to_le_bytes());
            for w in words.iter().rev() {
                code.extend_from_slice(&w.to_le_bytes());
            }
            write_extra_bits(code, &deltas[bounds[lane]..bounds[lane + 1]]);
        }
    }
}

/// Writes a table's header: kind, coordinate, precision and symbol count.
fn write_table_header(out: &mut Vec<u8>, def: &TableDef) {
    out.push(def.kind);
    match def.kind {
        KIND_GLOBAL => {}
        KIND_CLASS => out.push(def.coord as u8),
        _ => put_varint(out, def.coord as u64),
    }
    out.push(def.precision as u8);
    put_varint(out, def.symbols.len() as u64);
}

/// Writes the table count and the tables. Encoding 2 writes each table whole, its symbols' gaps
/// and weight codes interleaved; encoding 3 (`columnar`) writes every header, then every gap, then
/// every code as the zigzag-coded difference from the table's previous code: a distribution over
/// neighbouring delta symbols is smooth, and like values side by side compress better.
fn write_tables(out: &mut Vec<u8>, tables: &[TableDef], columnar: bool) {
    put_varint(out, tables.len() as u64);
    if !columnar {
        for def in tables {
            write_table_header(out, def);
            let mut next_sym = 0u16;
            for (&s, &code) in def.symbols.iter().zip(&def.codes) {
                put_varint(out, (s - next_sym) as u64);
                out.push(code);
                next_sym = s + 1;
            }
        }
        return;
    }
    for def in tables {
        write_table_header(out, def);
    }
    for def in tables {
        let mut next_sym = 0u16;
        for &s in &def.symbols {
            put_varint(out, (s - next_sym) as u64);
            next_sym = s + 1;
        }
    }
    for def in tables {
        let mut previous = 0u8;
        for &code in &def.codes {
            put_varint(out, zigzag_code(code, previous));
            previous = code;
        }
    }
}

/// A weight code as the zigzag-coded difference from the previous code (0..=510).
fn zigzag_code(code: u8, previous: u8) -> u64 {
    zigzag(code as i64 - previous as i64)
}

/// The inverse of [`zigzag_code`]; `None` when the result is not a code.
fn unzigzag_code(z: u64, previous: u8) -> Option<u8> {
    (previous as i64)
        .checked_add(unzigzag(z))
        .and_then(|c| u8::try_from(c).ok())
}

/// Writes the extra bits of the large deltas among `deltas`, in order, least significant bit
/// first, preceded by their byte length.
fn write_extra_bits(out: &mut Vec<u8>, deltas: &[u64]) {
    let mut bytes = Vec::new();
    let mut acc = 0u64;
    let mut fill = 0u32;
    for &d in deltas {
        let (_, nbits, extra) = symbolize(d);
        let mut value = extra;
        let mut left = nbits;
        while left > 0 {
            let take = left.min(32);
            acc |= (value & ((1u64 << take) - 1)) << fill;
            fill += take;
            value >>= take;
            left -= take;
            while fill >= 8 {
                bytes.push(acc as u8);
                acc >>= 8;
                fill -= 8;
            }
        }
    }
    if fill > 0 {
        bytes.push(acc as u8);
    }
    put_varint(out, bytes.len() as u64);
    out.extend_from_slice(&bytes);
}

/// A lane's coded sections.
#[derive(Clone, Copy, Default)]
struct LaneInput<'a> {
    rans: &'a [u8],
    raw: &'a [u8],
}

/// The context rows of a chunk, for computing each event's context base as its events are
/// decoded. The default (all zero) is what a chunk without a rANS time stream computes, unused.
#[derive(Clone, Copy, Debug, Default)]
pub(crate) struct ContextRows {
    /// Row of the (absent) event before the chunk's first.
    pub(crate) start: u8,
    /// Rows × buckets: the distance between two previous-event rows in the lookup table.
    stride: usize,
    /// Buckets of the previous delta: the distance between two rows.
    buckets: usize,
    /// Row of each non-access kind tag (6..=13; rows of tags `parse` was not told of are
    /// meaningless but in range).
    other: [u8; 16],
}

impl ContextRows {
    /// Context row of a non-access event with kind tag `tag`.
    #[inline(always)]
    pub(crate) fn other_row(&self, tag: u8) -> u8 {
        self.other[tag as usize % 16]
    }

    /// The context base of an event in row `row` after one in row `prev`: the lookup table index
    /// to which the decoder adds the previous delta's bucket.
    #[inline(always)]
    pub(crate) fn base(&self, prev: u8, row: u8) -> u16 {
        // At most (63 × 64 + 63) × 16 = 65,520, and the bucket adds at most 15.
        (prev as usize * self.stride + row as usize * self.buckets) as u16
    }
}

/// A table's header in the time model stream.
struct TableHeader {
    kind: u8,
    /// Class or context (0 for the global table).
    coord: u32,
    precision: u32,
    /// Number of symbols.
    symbols: usize,
}

/// A parsed time stream with its context lookup table, ready to decode once the events' context
/// rows are known. The caller, which decodes the events anyway, computes each event's row with
/// [`TimeDecoder::access_row`] / [`TimeDecoder::other_row`] and its context base with
/// [`TimeDecoder::base`], so the time decoder needs no pass of its own over the events' classes.
pub(crate) struct TimeDecoder<'a> {
    quantum: u64,
    slots: Vec<u32>,
    lanes: [LaneInput<'a>; LANES],
    /// Per context row pair and bucket: the table entry, `slot_offset << 4 | precision`.
    lut: Vec<u32>,
    /// Dense row of every class the chunk may use (`u8::MAX` for the others).
    dense: [u8; CLASS_COUNT],
    /// Number of rows.
    used: usize,
    /// The entry of contexts without a table.
    missing: u32,
    /// Dense row of each access-key symbol the class map names.
    sym_rows: Vec<u8>,
    /// The encoding's buckets and table layout.
    layout: TimeLayout,
}

impl<'a> TimeDecoder<'a> {
    /// Parses the stream's tables. `count` is the chunk's event count (it bounds the tables);
    /// `kind_counts` are the chunk's events per kind tag (which non-access classes occur);
    /// `layout` is the encoding's.
    pub(crate) fn parse(
        stream: &'a [u8],
        code: &'a [u8],
        count: usize,
        kind_counts: &[u32],
        layout: TimeLayout,
    ) -> Result<Self, String> {
        let mut rd = Rd::new(stream, "time");
        let quantum = rd.varint()?;
        if quantum == 0 {
            return Err("time quantum is 0".into());
        }
        let map_len = rd.varint()?;
        if map_len > count as u64 {
            return Err("time class map is longer than the chunk".into());
        }
        let class_map = rd.bytes(map_len as usize)?;
        if class_map.iter().any(|c| *c > CLASS_OTHER_KEY) {
            return Err("time class map names an invalid class".into());
        }
        let table_count = rd.varint()?;
        // Each table takes at least 4 bytes; the stream bounds the count.
        if table_count > stream.len() as u64 {
            return Err("time stream claims more tables than it holds".into());
        }
        let slot_limit = 2 * count as u64;
        let mut slots: Vec<u32> = Vec::new();
        let mut entries = Vec::with_capacity(table_count as usize);
        let mut last_order: Option<u64> = None;
        let mut slot_total = 0u64;
        let mut header = |rd: &mut Rd<'_>| -> Result<TableHeader, String> {
            let kind = rd.u8()?;
            let coord = match kind {
                KIND_GLOBAL => 0u64,
                KIND_CLASS => {
                    let c = rd.u8()?;
                    if c as usize >= CLASS_COUNT {
                        return Err(format!("time table for class {c}"));
                    }
                    c as u64
                }
                KIND_CONTEXT => {
                    let c = rd.varint()?;
                    if c >= (CLASS_COUNT * CLASS_COUNT * layout.buckets) as u64 {
                        return Err(format!("time table for context {c}"));
                    }
                    c
                }
                k => return Err(format!("unknown time table kind {k}")),
            };
            let order = (kind as u64) << 32 | coord;
            if last_order.is_some_and(|l| l >= order) {
                return Err("time tables out of order".into());
            }
            last_order = Some(order);
            let precision = rd.u8()? as u32;
            if precision > MAX_PRECISION {
                return Err(format!("time table precision {precision}"));
            }
            let size = 1u64 << precision;
            if slot_total + size > slot_limit {
                return Err("time tables are larger than the chunk allows".into());
            }
            slot_total += size;
            let nnz = rd.varint()?;
            if nnz == 0 || nnz > SYMBOLS as u64 || nnz > size {
                return Err(format!("time table with {nnz} symbols"));
            }
            Ok(TableHeader {
                kind,
                coord: coord as u32,
                precision,
                symbols: nnz as usize,
            })
        };
        let symbol = |rd: &mut Rd<'_>, previous: Option<u64>| -> Result<u64, String> {
            let gap = rd.varint()?;
            previous
                .map_or(Some(0), |p| p.checked_add(1))
                .and_then(|s| s.checked_add(gap))
                .filter(|s| *s < SYMBOLS as u64)
                .ok_or_else(|| "time table symbol out of range".to_string())
        };
        // Each table's header and its symbols with their weights.
        let mut parsed: Vec<(TableHeader, Vec<u64>, Vec<u64>)> = Vec::new();
        if layout.columnar {
            // Headers are at least 3 bytes each: the stream bounds the count.
            for _ in 0..table_count {
                let h = header(&mut rd)?;
                parsed.push((h, Vec::new(), Vec::new()));
            }
            for (h, symbols, _) in &mut parsed {
                symbols.reserve_exact(h.symbols);
                for _ in 0..h.symbols {
                    let s = symbol(&mut rd, symbols.last().copied())?;
                    symbols.push(s);
                }
            }
            for (h, _, weights) in &mut parsed {
                weights.reserve_exact(h.symbols);
                let mut previous = 0u8;
                for _ in 0..h.symbols {
                    previous = unzigzag_code(rd.varint()?, previous)
                        .ok_or("time table weight code out of range")?;
                    weights.push(code_weight(previous));
                }
            }
        } else {
            for _ in 0..table_count {
                let h = header(&mut rd)?;
                let mut symbols = Vec::with_capacity(h.symbols);
                let mut weights = Vec::with_capacity(h.symbols);
                for _ in 0..h.symbols {
                    symbols.push(symbol(&mut rd, symbols.last().copied())?);
                    weights.push(code_weight(rd.u8()?));
                }
                parsed.push((h, symbols, weights));
            }
        }
        for (h, symbols, weights) in &parsed {
            let offset = slots.len() as u64;
            for (sym, freq) in symbols.iter().zip(frequencies(weights, h.precision)) {
                let freq = freq as u64;
                for bias in 0..freq {
                    slots.push((sym | freq << 9 | bias << 21) as u32);
                }
            }
            // Fits: at most 32,833 tables of at most 2^11 slots each, under 2^27 in all.
            entries.push((h.kind, h.coord, (offset as u32) << 4 | h.precision));
        }
        rd.expect_end()?;
        let mut rd = Rd::new(code, "time code");
        let mut lanes = [LaneInput::default(); LANES];
        for lane in &mut lanes {
            let rans_len = rd.varint()?;
            if rans_len < 4 || rans_len % 2 != 0 {
                return Err("time rANS section has an invalid length".into());
            }
            lane.rans = rd.bytes(rans_len as usize)?;
            let raw_len = rd.varint()?;
            lane.raw =
                rd.bytes(usize::try_from(raw_len).map_err(|_| "time extra bits too long")?)?;
        }
        rd.expect_end()?;
        // Contexts without a table decode from a one-slot table whose symbol is invalid, so the
        // hot loop needs no check of its own.
        let missing = (slots.len() as u32) << 4;
        slots.push(INVALID_SYMBOL as u32 | 1 << 9);

        // The classes events of this chunk can have: the start, the class map's, every other
        // access key's, and those of the non-access kinds it holds.
        let mut present = 1u64 << CLASS_START | 1u64 << CLASS_OTHER_KEY;
        for &c in class_map {
            present |= 1 << c;
        }
        for (tag, &n) in kind_counts.iter().enumerate() {
            if n > 0
                && (FIRST_NON_ACCESS_TAG..CLASS_COUNT as u8 - NON_ACCESS_CLASS_OFFSET)
                    .contains(&(tag as u8))
            {
                present |= 1 << non_access_class(tag as u8);
            }
        }
        let mut dense = [u8::MAX; CLASS_COUNT];
        let (lut, used) = dense_lut(present, &entries, missing, layout.buckets, &mut dense);
        let sym_rows = class_map.iter().map(|&c| dense[c as usize]).collect();
        Ok(TimeDecoder {
            quantum,
            slots,
            lanes,
            lut,
            dense,
            used,
            missing,
            sym_rows,
            layout,
        })
    }

    /// Context row of an access event with key symbol `sym`.
    #[inline(always)]
    pub(crate) fn access_row(&self, sym: u32) -> u8 {
        match self.sym_rows.get(sym as usize) {
            Some(&row) => row,
            None => self.dense[CLASS_OTHER_KEY as usize],
        }
    }

    /// What the chunk decoder needs to compute every event's context base.
    pub(crate) fn context_rows(&self) -> ContextRows {
        let mut other = [0u8; 16];
        for tag in FIRST_NON_ACCESS_TAG..16 {
            other[tag as usize] = self.dense[non_access_class(tag) as usize % CLASS_COUNT];
        }
        ContextRows {
            start: self.dense[CLASS_START as usize],
            stride: self.used * self.layout.buckets,
            buckets: self.layout.buckets,
            other,
        }
    }

    /// Decodes the timestamps of events whose context bases are `bases` (see [`Self::base`])
    /// into `out`, starting from `first_t_ns`, and checks that the first delta is 0 and that every
    /// byte of the stream is used. Returns the last timestamp.
    pub(crate) fn decode(
        &self,
        bases: &[u16],
        first_t_ns: u64,
        out: &mut Vec<u64>,
    ) -> Result<u64, String> {
        let n = bases.len();
        let bounds = lane_bounds(n);
        let base = out.len();
        out.resize(base + n, 0);
        let deltas = &mut out[base..];
        // Hot lane state in plain arrays indexed by constants (registers); the rarely used extra
        // bit readers apart.
        let mut x = [0u32; LANES];
        let mut pos = [4usize; LANES];
        let mut prev_bucket = [0usize; LANES];
        let mut raw: [BitReader<'_>; LANES] =
            std::array::from_fn(|k| BitReader::new(self.lanes[k].raw));
        let rans: [&[u8]; LANES] = std::array::from_fn(|k| self.lanes[k].rans);
        for k in 0..LANES {
            let r = rans[k];
            x[k] = u32::from_le_bytes([r[0], r[1], r[2], r[3]]);
            if x[k] < RANS_L {
                return Err("time rANS state is out of range".into());
            }
        }
        let lut = &self.lut[..];
        let slots = &self.slots[..];
        let bucket_of_symbol = self.layout.bucket_of_symbol;
        let mut large_sum = 0u128;
        // One event of lane `k` at event index `i`.
        macro_rules! step {
            ($k:literal, $i:expr) => {{
                let i = $i;
                // Out of range only for a base the caller did not make with `base`.
                let entry = lut
                    .get(bases[i] as usize + prev_bucket[$k])
                    .copied()
                    .unwrap_or(self.missing);
                let precision = entry & 15;
                let slot = (entry >> 4) as usize + (x[$k] & ((1u32 << precision) - 1)) as usize;
                // In range: a table's slots are contiguous and the state's low bits stay in them.
                let s = slots[slot];
                let (sym, freq, bias) = ((s & 0x1ff) as u64, (s >> 9) & 0xfff, s >> 21);
                let nx = freq * (x[$k] >> precision) + bias;
                // Branch-free refill: whether a state needs one is a coin toss the predictor
                // loses. A refill past the section's end reads 0 and leaves `pos` beyond the end,
                // which the final check reports.
                let word = match rans[$k].get(pos[$k]..pos[$k] + 2) {
                    Some(w) => u16::from_le_bytes([w[0], w[1]]) as u32,
                    None => 0,
                };
                let refill = nx < RANS_L;
                x[$k] = if refill { nx << 16 | word } else { nx };
                pos[$k] += 2 * refill as usize;
                let d = if sym < DIRECT {
                    sym
                } else {
                    let d = large_delta(sym, &mut raw[$k])?;
                    large_sum += d as u128;
                    d
                };
                prev_bucket[$k] = bucket_of_symbol[sym as usize] as usize;
                deltas[i] = d;
            }};
        }
        // The lanes' dependency chains are independent: stepping them in turn lets the CPU overlap
        // them. Every lane but the last has `per` events; all four run together for the last
        // lane's length.
        let per = bounds[1] - bounds[0];
        let together = bounds[LANES] - bounds[LANES - 1];
        for j in 0..together {
            step!(0, bounds[0] + j);
            step!(1, bounds[1] + j);
            step!(2, bounds[2] + j);
            step!(3, bounds[3] + j);
        }
        for j in together..per {
            if bounds[0] + j < bounds[1] {
                step!(0, bounds[0] + j);
            }
            if bounds[1] + j < bounds[2] {
                step!(1, bounds[1] + j);
            }
            if bounds[2] + j < bounds[3] {
                step!(2, bounds[2] + j);
            }
        }
        if n > 0 && deltas[0] != 0 {
            return Err("first event's time differs from the chunk header".into());
        }
        // Direct deltas are below 128, so the deltas add up to at most `DIRECT × n` plus the large
        // ones: when that bound cannot overflow, the running sum needs no check of its own.
        let bound = (DIRECT as u128 * n as u128 + large_sum)
            .checked_mul(self.quantum as u128)
            .and_then(|span| span.checked_add(first_t_ns as u128));
        let mut t = first_t_ns;
        if bound.is_some_and(|b| b <= u64::MAX as u128) {
            for d in deltas.iter_mut() {
                t += *d * self.quantum;
                *d = t;
            }
        } else {
            for d in deltas.iter_mut() {
                t = d
                    .checked_mul(self.quantum)
                    .and_then(|span| t.checked_add(span))
                    .ok_or("timestamp overflows")?;
                *d = t;
            }
        }
        for k in 0..LANES {
            if x[k] != RANS_L || pos[k] != rans[k].len() {
                return Err("time rANS section does not end where it should".into());
            }
            raw[k].expect_end()?;
        }
        Ok(t)
    }
}

/// The delta of a symbol of 64 or more: its exponent and top bits, and extra bits from `raw`.
#[cold]
fn large_delta(sym: u64, raw: &mut BitReader<'_>) -> Result<u64, String> {
    if sym == INVALID_SYMBOL {
        return Err("an event's time context has no table".into());
    }
    let e = DIRECT_BITS as u64 + (sym - DIRECT) / 4;
    let nbits = (e - 2) as u32;
    Ok(((4 + (sym - DIRECT) % 4) << nbits) | raw.read(nbits)?)
}

/// Reads bits least significant first.
struct BitReader<'a> {
    b: &'a [u8],
    pos: usize,
    acc: u64,
    fill: u32,
}

impl<'a> BitReader<'a> {
    fn new(b: &'a [u8]) -> Self {
        BitReader {
            b,
            pos: 0,
            acc: 0,
            fill: 0,
        }
    }

    /// Reads `n` ≤ 61 bits.
    fn read(&mut self, n: u32) -> Result<u64, String> {
        let mut value = 0u64;
        let mut got = 0u32;
        while got < n {
            if self.fill == 0 {
                let Some(&byte) = self.b.get(self.pos) else {
                    return Err("time extra bits end early".into());
                };
                self.pos += 1;
                self.acc = byte as u64;
                self.fill = 8;
            }
            let take = (n - got).min(self.fill);
            value |= (self.acc & ((1u64 << take) - 1)) << got;
            self.acc >>= take;
            self.fill -= take;
            got += take;
        }
        Ok(value)
    }

    fn expect_end(&self) -> Result<(), String> {
        if self.pos != self.b.len() || self.acc != 0 {
            return Err("time extra bits have unused bytes".into());
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn symbols_cover_every_delta() {
        for d in (0..5000u64).chain([u64::MAX, u64::MAX - 1, 1 << 63, (1 << 40) + 12345]) {
            let (sym, nbits, extra) = symbolize(d);
            assert!((sym as usize) < SYMBOLS);
            let sym = sym as u64;
            let back = if sym < DIRECT {
                sym
            } else {
                let e = DIRECT_BITS as u64 + (sym - DIRECT) / 4;
                assert_eq!(nbits as u64, e - 2);
                ((4 + (sym - DIRECT) % 4) << (e - 2)) | extra
            };
            assert_eq!(back, d);
        }
    }

    #[test]
    fn quantized_tables_sum_to_a_power_of_two() {
        let mut counts = vec![0u32; SYMBOLS];
        for (i, c) in [1u32, 1000, 1, 1, 7, 100_000, 3, u32::MAX]
            .iter()
            .enumerate()
        {
            counts[i * 11] = *c;
        }
        let t = quantize(KIND_GLOBAL, 0, &counts);
        assert_eq!(
            t.freqs.iter().map(|f| *f as u64).sum::<u64>(),
            1 << t.precision
        );
        assert!(t.freqs.iter().all(|f| *f >= 1));
        assert_eq!(t.freqs.len(), 8);
        // The most frequent symbol gets the most slots.
        let (best, _) = t.freqs.iter().enumerate().max_by_key(|f| f.1).unwrap();
        assert_eq!(t.symbols[best], 77);
        let mut one = vec![0u32; SYMBOLS];
        one[5] = 9;
        let t = quantize(KIND_GLOBAL, 0, &one);
        assert_eq!((t.precision, t.freqs.clone()), (0, vec![1]));
    }

    #[test]
    fn weight_codes_are_monotonic_and_nearest() {
        for c in 1..=255u8 {
            assert!(code_weight(c) > code_weight(c - 1), "code {c}");
        }
        for w in 1..100_000u64 {
            let c = weight_code(w);
            let err = code_weight(c).abs_diff(w);
            if c > 0 {
                assert!(err <= code_weight(c - 1).abs_diff(w), "{w}");
            }
            if c < 255 {
                assert!(err <= code_weight(c + 1).abs_diff(w), "{w}");
            }
            assert!(err * 32 <= w, "{w} coded as {}", code_weight(c));
        }
    }

    /// A small xorshift generator: the tests need varied, reproducible data, not crypto.
    struct Rng(u64);
    impl Rng {
        fn next(&mut self) -> u64 {
            self.0 ^= self.0 << 13;
            self.0 ^= self.0 >> 7;
            self.0 ^= self.0 << 17;
            self.0
        }
    }

    fn encode_sample(
        rng: &mut Rng,
        n: usize,
        layout: TimeLayout,
    ) -> (Vec<u8>, Vec<u8>, Vec<u64>, Vec<u32>) {
        // Symbols are numbered by first use, so a chunk never has more keys than events.
        let keys = 1 + (rng.next() % 80).min(n.saturating_sub(1) as u64) as usize;
        let mut deltas = Vec::new();
        let mut event_keys = Vec::new();
        for i in 0..n {
            let k = rng.next();
            event_keys.push(if k % 5 == 0 {
                NON_ACCESS | (6 + (k >> 8) % 8) as u32
            } else {
                ((k >> 8) % keys as u64) as u32
            });
            let d = match (rng.next() % 10, i) {
                (_, 0) => 0,
                // Any size in short chunks (whose sums may overflow), below 2^40 in long ones.
                (0, _) => rng.next() >> (rng.next() % 64).max(if n > 100 { 24 } else { 0 }),
                (1..=4, _) => 1 + rng.next() % 4,
                _ => 20 + rng.next() % 200,
            };
            deltas.push(d);
        }
        let (mut model, mut code) = (Vec::new(), Vec::new());
        let mut enc = TimeEncoder::default();
        enc.encode(&mut model, &mut code, 1, &deltas, &event_keys, keys, layout);
        (model, code, deltas, event_keys)
    }

    /// Decodes a sample's time streams the way the chunk decoder does: kind counts and context
    /// bases from the events' keys.
    fn decode_sample(
        model: &[u8],
        code: &[u8],
        event_keys: &[u32],
        out: &mut Vec<u64>,
        layout: TimeLayout,
    ) -> Result<u64, String> {
        let mut kind_counts = [0u32; 14];
        for &k in event_keys {
            if k & NON_ACCESS != 0 {
                kind_counts[(k & !NON_ACCESS) as usize] += 1;
            } else {
                kind_counts[0] += 1;
            }
        }
        let decoder = TimeDecoder::parse(model, code, event_keys.len(), &kind_counts, layout)?;
        let rows = decoder.context_rows();
        let mut prev = rows.start;
        let bases: Vec<u16> = event_keys
            .iter()
            .map(|&k| {
                let row = if k & NON_ACCESS != 0 {
                    rows.other_row((k & !NON_ACCESS) as u8)
                } else {
                    decoder.access_row(k)
                };
                let base = rows.base(prev, row);
                prev = row;
                base
            })
            .collect();
        decoder.decode(&bases, 0, out)
    }

    #[test]
    fn random_deltas_round_trip() {
        let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
        for (n, layout) in [0usize, 1, 2, 3, 4, 5, 7, 100, 1000, 20_000]
            .into_iter()
            .flat_map(|n| [(n, TIME_V2), (n, TIME_V3)])
        {
            let (model, code, deltas, event_keys) = encode_sample(&mut rng, n, layout);
            let mut out = Vec::new();
            // Quantum 1 from time 0: timestamps are the running sums, unless they overflow.
            let mut want = Vec::new();
            let mut t = Some(0u64);
            for d in &deltas {
                t = t.and_then(|t| t.checked_add(*d));
                want.push(t);
            }
            match decode_sample(&model, &code, &event_keys, &mut out, layout) {
                Ok(last) => {
                    assert!(want.iter().all(|t| t.is_some()));
                    let want: Vec<u64> = want.into_iter().flatten().collect();
                    assert_eq!(out, want);
                    assert_eq!(Some(&last), want.last().or(Some(&0)));
                }
                Err(e) => {
                    assert!(want.iter().any(|t| t.is_none()), "{n}: {e}");
                    assert!(n <= 100, "{n}: long chunks must round trip");
                }
            }
        }
    }

    /// The encoder buckets a delta by its value, the decoder by its symbol: they must agree.
    #[test]
    fn a_deltas_symbol_gives_its_bucket() {
        let mut deltas: Vec<u64> = (0..5000).collect();
        for e in 12..64 {
            deltas.extend([1 << e, (1 << e) + 1, (3 << (e - 1)) - 1, 3 << (e - 1)]);
        }
        deltas.push(u64::MAX);
        for layout in [TIME_V2, TIME_V3] {
            for &d in &deltas {
                let bucket = layout.bucket(d);
                assert!(bucket < layout.buckets);
                assert_eq!(
                    layout.bucket_of_symbol[symbolize(d).0 as usize] as usize,
                    bucket,
                    "delta {d}, {layout:?}"
                );
            }
        }
        assert_eq!(TIME_V3.bucket(5), 4);
        assert_eq!(TIME_V3.bucket(6), 5);
        assert_eq!(TIME_V3.bucket(191), 14);
        assert_eq!(TIME_V3.bucket(192), 15);
        assert_eq!(TIME_V2.bucket(63), 6);
        assert_eq!(TIME_V2.bucket(64), 7);
    }

    #[test]
    fn weight_code_differences_invert() {
        for previous in 0..=255u8 {
            for code in 0..=255u8 {
                let z = zigzag_code(code, previous);
                assert!(z <= 510);
                assert_eq!(unzigzag_code(z, previous), Some(code));
            }
        }
        assert_eq!(unzigzag_code(2, 255), None);
        assert_eq!(unzigzag_code(1, 0), None);
        assert_eq!(unzigzag_code(u64::MAX, 0), None);
        assert_eq!(unzigzag_code(u64::MAX - 1, 255), None);
    }

    #[test]
    fn damaged_streams_are_errors_not_panics() {
        for layout in [TIME_V2, TIME_V3] {
            damaged_streams_are_errors(layout);
        }
    }

    fn damaged_streams_are_errors(layout: TimeLayout) {
        let mut rng = Rng(12345);
        let (model, code, _, event_keys) = encode_sample(&mut rng, 3000, layout);
        let mut rejected = 0;
        for round in 0..3000 {
            let (mut m, mut c) = (model.clone(), code.clone());
            let target = if round % 2 == 0 { &mut m } else { &mut c };
            match rng.next() % 3 {
                0 => {
                    let at = (rng.next() as usize) % target.len();
                    target[at] ^= 1 << (rng.next() % 8);
                }
                1 => {
                    let at = (rng.next() as usize) % target.len();
                    target.truncate(at);
                }
                _ => {
                    let at = (rng.next() as usize) % target.len();
                    target[at] = rng.next() as u8;
                }
            }
            let mut out = Vec::new();
            let result = decode_sample(&m, &c, &event_keys, &mut out, layout);
            rejected += result.is_err() as u32;
        }
        // Most damage is caught (a flipped extra bit or a changed weight code can still decode).
        assert!(
            rejected > 2000,
            "only {rejected} of 3000 damaged streams rejected ({layout:?})"
        );
    }
}
