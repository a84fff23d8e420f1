//! The v2 time stream (chunk encoding 2): time deltas entropy-coded with static rANS tables chosen
//! per event by a context of access keys.
//!
//! QEMU's microsecond timestamps carry real jitter, but how long the driver takes between two
//! accesses depends strongly on *which* two accesses they are (and a little on how long the
//! previous gap was). The encoder counts the chunk's deltas per context `(previous event's class,
//! this event's class, bucket of the previous delta)`, gives a context its own frequency table when
//! that pays for the table, lets the remaining contexts of a class share a class table and the rest
//! share one global table, and codes each delta's symbol with a single rANS state under its
//! context's table. Decoding is one table lookup and one multiply per event, with no adaptation.
//! `docs/FORMAT.md` §3.3 is the specification.

use crate::codec::{put_varint, Rd};

/// Context classes: 0..=53 for the most used access keys, 54 for every other access key, 55 for
/// "before the first event", 56..=63 for the non-access kinds (tags 6..=13).
pub(crate) const CLASS_COUNT: usize = 64;
/// Class of the access keys the class map does not name.
pub(crate) const CLASS_OTHER_KEY: u8 = 54;
/// Class of the (absent) event before a chunk's first event.
pub(crate) const CLASS_START: u8 = 55;
/// Classes 56..=63 are the non-access kind tags 6..=13: class = tag + this.
const NON_ACCESS_CLASS_OFFSET: u8 = 50;
/// Buckets of the previous delta: 0, 1, 2..3, 4..7, 8 and more (in quanta).
const BUCKETS: usize = 5;
/// Number of contexts: (previous class, class, bucket).
pub(crate) const CONTEXTS: usize = CLASS_COUNT * CLASS_COUNT * BUCKETS;
/// Deltas below this are their own symbol.
const DIRECT: u64 = 64;
/// Symbols: 64 direct deltas, then 4 per binary exponent 6..=63.
pub(crate) const SYMBOLS: usize = DIRECT as usize + 58 * 4;
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

/// Lower bound of the rANS state; the state lives in [RANS_L, 2^32) and moves 16 bits at a time.
const RANS_L: u32 = 1 << 16;
/// Estimated cost in bits of one stored table entry and of one table header (for the encoder's
/// decision whether a table pays for itself; zstd shrinks the real thing somewhat).
const TABLE_ENTRY_BITS: f64 = 12.0;
const TABLE_HEADER_BITS: f64 = 24.0;

/// Symbol of the decoder's stand-in table for contexts without a table.
const INVALID_SYMBOL: u64 = 0x1ff;

/// Table kinds in the stream, in the order they must appear.
const KIND_GLOBAL: u8 = 0;
const KIND_CLASS: u8 = 1;
const KIND_CONTEXT: u8 = 2;

/// `event_keys` entry of a non-access event: this bit plus its kind tag.
pub(crate) const NON_ACCESS: u32 = 1 << 31;

/// Class of the previous delta `d` (in quanta).
#[inline(always)]
fn bucket(d: u64) -> usize {
    (64 - d.leading_zeros() as usize).min(BUCKETS - 1)
}

#[inline(always)]
fn context(prev_class: u8, class: u8, bucket: usize) -> usize {
    (prev_class as usize * CLASS_COUNT + class as usize) * BUCKETS + bucket
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
        (DIRECT + (e as u64 - 6) * 4 + top) as u16,
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
    counts: Vec<u32>,
    class_counts: Vec<u32>,
    residual: Vec<u32>,
    global: Vec<u32>,
    enc: Vec<u32>,
    lut: Vec<u32>,
    ctx_of_event: Vec<u32>,
    sym_of_event: Vec<u16>,
    sym_uses: Vec<(u32, u32)>,
    words: Vec<u16>,
}

/// One frequency table chosen by the encoder.
struct TableDef {
    kind: u8,
    /// Class (KIND_CLASS) or context index (KIND_CONTEXT).
    coord: u32,
    precision: u32,
    /// (symbol, frequency), by symbol.
    freqs: Vec<(u16, u32)>,
}

/// Bits to code `counts` with its own ideal table (its empirical entropy).
fn self_bits(counts: &[u32]) -> (f64, usize) {
    let total: u64 = counts.iter().map(|c| *c as u64).sum();
    let mut bits = 0.0;
    let mut nnz = 0;
    for &c in counts {
        if c != 0 {
            nnz += 1;
            bits += c as f64 * (total as f64 / c as f64).log2();
        }
    }
    (bits, nnz)
}

/// Bits to code `counts` with `parent`'s distribution (which covers every symbol of `counts`).
fn cross_bits(counts: &[u32], parent: &[u32]) -> f64 {
    let total: u64 = parent.iter().map(|c| *c as u64).sum();
    let mut bits = 0.0;
    for (c, p) in counts.iter().zip(parent) {
        if *c != 0 {
            bits += *c as f64 * (total as f64 / (*p).max(1) as f64).log2();
        }
    }
    bits
}

/// Whether a table of its own for `counts` costs less than coding them with `parent`.
fn pays_for_itself(counts: &[u32], parent: &[u32]) -> bool {
    let (own, nnz) = self_bits(counts);
    own + TABLE_HEADER_BITS + TABLE_ENTRY_BITS * (nnz as f64) < cross_bits(counts, parent)
}

fn ceil_log2(x: u64) -> u32 {
    if x <= 1 {
        0
    } else {
        64 - (x - 1).leading_zeros()
    }
}

/// Quantizes `counts` to frequencies summing to a power of two (every used symbol keeps at least 1).
fn normalize(kind: u8, coord: u32, counts: &[u32]) -> TableDef {
    let total: u64 = counts.iter().map(|c| *c as u64).sum();
    let mut freqs: Vec<(u16, u32)> = counts
        .iter()
        .enumerate()
        .filter(|(_, c)| **c != 0)
        .map(|(s, c)| (s as u16, *c))
        .collect();
    let nnz = freqs.len() as u64;
    // A table never has more slots than about two per event it codes: bounded decoder memory,
    // and small tables stay small in cache.
    let precision = if nnz <= 1 {
        0
    } else {
        ceil_log2(nnz).max(ceil_log2(total)).min(MAX_PRECISION)
    };
    let m = 1u64 << precision;
    let mut sum = 0u64;
    for (_, f) in freqs.iter_mut() {
        let scaled = ((*f as u64 * m * 2 + total) / (2 * total)).max(1);
        *f = scaled as u32;
        sum += scaled;
    }
    while sum != m {
        // Adjust the largest frequency (the cheapest place to absorb rounding) until the total is
        // exact; when shrinking, never below 1.
        let (i, _) = freqs
            .iter()
            .enumerate()
            .max_by_key(|(_, (_, f))| *f)
            .unwrap_or((0, &(0, 0)));
        if sum < m {
            freqs[i].1 += (m - sum) as u32;
            sum = m;
        } else {
            let take = (sum - m).min(freqs[i].1 as u64 - 1);
            freqs[i].1 -= take as u32;
            sum -= take;
        }
    }
    TableDef {
        kind,
        coord,
        precision,
        freqs,
    }
}

/// Fills the context lookup table from table definitions the way the decoder does: global first,
/// then class tables over every (previous class, bucket), then per-context tables. Entries are
/// `slot_offset << 4 | precision`, or `missing` for a context with no table.
fn fill_lut(lut: &mut Vec<u32>, tables: &[(u8, u32, u32)], missing: u32) {
    lut.clear();
    lut.resize(CONTEXTS, missing);
    for &(kind, coord, entry) in tables {
        match kind {
            KIND_GLOBAL => lut.fill(entry),
            KIND_CLASS => {
                for prev in 0..CLASS_COUNT {
                    let base = context(prev as u8, coord as u8, 0);
                    lut[base..base + BUCKETS].fill(entry);
                }
            }
            _ => lut[coord as usize] = entry,
        }
    }
}

impl TimeEncoder {
    /// Appends the time stream of a chunk to `out`. `deltas` are in quanta; `event_keys[i]` is the
    /// access-key symbol of event `i`, or [`NON_ACCESS`] | its tag.
    pub(crate) fn encode(
        &mut self,
        out: &mut Vec<u8>,
        quantum: u64,
        deltas: &[u64],
        event_keys: &[u32],
        key_count: usize,
    ) {
        let n = deltas.len();
        put_varint(out, quantum);

        // Class map: the most used keys get classes of their own.
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
        ranked.truncate(CLASS_OTHER_KEY as usize);
        let map_len = ranked.iter().map(|u| u.1 + 1).max().unwrap_or(0) as usize;
        let mut class_map = vec![CLASS_OTHER_KEY; map_len];
        for (class, u) in ranked.iter().enumerate() {
            class_map[u.1 as usize] = class as u8;
        }
        put_varint(out, map_len as u64);
        out.extend_from_slice(&class_map);

        // Count symbols per context.
        self.ctx_slot.clear();
        self.ctx_slot.resize(CONTEXTS, u32::MAX);
        self.used.clear();
        self.counts.clear();
        self.ctx_of_event.clear();
        self.sym_of_event.clear();
        let bounds = lane_bounds(n);
        let mut prev_class = CLASS_START;
        let mut prev_delta = 0u64;
        for (i, (&d, &k)) in deltas.iter().zip(event_keys).enumerate() {
            if bounds[1..LANES].contains(&i) {
                // A lane does not see the previous lane's deltas.
                prev_delta = 0;
            }
            let class = if k & NON_ACCESS != 0 {
                non_access_class((k & !NON_ACCESS) as u8)
            } else {
                class_map
                    .get(k as usize)
                    .copied()
                    .unwrap_or(CLASS_OTHER_KEY)
            };
            let ctx = context(prev_class, class, bucket(prev_delta));
            let mut slot = self.ctx_slot[ctx];
            if slot == u32::MAX {
                slot = self.used.len() as u32;
                self.ctx_slot[ctx] = slot;
                self.used.push(ctx as u32);
                self.counts.resize(self.counts.len() + SYMBOLS, 0);
            }
            let (sym, _, _) = symbolize(d);
            self.counts[slot as usize * SYMBOLS + sym as usize] += 1;
            self.ctx_of_event.push(ctx as u32);
            self.sym_of_event.push(sym);
            prev_class = class;
            prev_delta = d;
        }

        // Choose tables: a context of its own when it beats its class's distribution, a class
        // table for the class's remaining contexts when it beats the global distribution, the
        // global table for everything else.
        self.class_counts.clear();
        self.class_counts.resize(CLASS_COUNT * SYMBOLS, 0);
        self.global.clear();
        self.global.resize(SYMBOLS, 0);
        for (slot, &ctx) in self.used.iter().enumerate() {
            let class = (ctx as usize / BUCKETS) % CLASS_COUNT;
            let c = &self.counts[slot * SYMBOLS..(slot + 1) * SYMBOLS];
            for (s, v) in c.iter().enumerate() {
                self.class_counts[class * SYMBOLS + s] += v;
                self.global[s] += v;
            }
        }
        self.residual.clear();
        self.residual.resize(CLASS_COUNT * SYMBOLS, 0);
        let mut context_tables = Vec::new();
        let mut order: Vec<(u32, u32)> = self
            .used
            .iter()
            .enumerate()
            .map(|(slot, ctx)| (*ctx, slot as u32))
            .collect();
        order.sort_unstable();
        for &(ctx, slot) in &order {
            let class = (ctx as usize / BUCKETS) % CLASS_COUNT;
            let c = &self.counts[slot as usize * SYMBOLS..(slot as usize + 1) * SYMBOLS];
            let parent = &self.class_counts[class * SYMBOLS..(class + 1) * SYMBOLS];
            if pays_for_itself(c, parent) {
                context_tables.push(normalize(KIND_CONTEXT, ctx, c));
            } else {
                for (r, v) in self.residual[class * SYMBOLS..(class + 1) * SYMBOLS]
                    .iter_mut()
                    .zip(c)
                {
                    *r += v;
                }
            }
        }
        let mut rest = vec![0u32; SYMBOLS];
        let mut class_tables = Vec::new();
        for class in 0..CLASS_COUNT {
            let r = &self.residual[class * SYMBOLS..(class + 1) * SYMBOLS];
            if r.iter().all(|v| *v == 0) {
                continue;
            }
            if pays_for_itself(r, &self.global) {
                class_tables.push(normalize(KIND_CLASS, class as u32, r));
            } else {
                for (g, v) in rest.iter_mut().zip(r) {
                    *g += v;
                }
            }
        }
        let mut tables = Vec::new();
        if rest.iter().any(|v| *v != 0) {
            tables.push(normalize(KIND_GLOBAL, 0, &rest));
        }
        tables.extend(class_tables);
        tables.extend(context_tables);

        // Write the tables and build the encoder's (frequency, cumulative) per table and symbol.
        put_varint(out, tables.len() as u64);
        self.enc.clear();
        self.enc.resize(tables.len() * SYMBOLS, 0);
        let mut lut_entries = Vec::with_capacity(tables.len());
        for (t, def) in tables.iter().enumerate() {
            out.push(def.kind);
            match def.kind {
                KIND_GLOBAL => {}
                KIND_CLASS => out.push(def.coord as u8),
                _ => put_varint(out, def.coord as u64),
            }
            out.push(def.precision as u8);
            put_varint(out, def.freqs.len() as u64);
            let mut next_sym = 0u16;
            let mut cum = 0u32;
            for &(s, f) in &def.freqs {
                put_varint(out, (s - next_sym) as u64);
                put_varint(out, f as u64 - 1);
                next_sym = s + 1;
                self.enc[t * SYMBOLS + s as usize] = f << 16 | cum;
                cum += f;
            }
            lut_entries.push((def.kind, def.coord, (t as u32) << 4 | def.precision));
        }
        fill_lut(&mut self.lut, &lut_entries, u32::MAX);

        // rANS per lane, last event first, so the decoder reads forwards.
        for lane in 0..LANES {
            self.words.clear();
            let mut x: u32 = RANS_L;
            for i in (bounds[lane]..bounds[lane + 1]).rev() {
                let entry = self.lut[self.ctx_of_event[i] as usize];
                let (t, precision) = ((entry >> 4) as usize, (entry & 15) as u32);
                let fc = self.enc[t * SYMBOLS + self.sym_of_event[i] as usize];
                let (freq, cum) = (fc >> 16, fc & 0xffff);
                let x_max = (1u64 << (32 - precision)) * freq as u64;
                if x as u64 >= x_max {
                    self.words.push(x as u16);
                    x >>= 16;
                }
                x = ((x / freq) << precision) + (x % freq) + cum;
            }
            let rans_len = 4 + 2 * self.words.len();
            put_varint(out, rans_len as u64);
            out.extend_from_slice(&x.to_le_bytes());
            for w in self.words.iter().rev() {
                out.extend_from_slice(&w.to_le_bytes());
            }
            write_extra_bits(out, &deltas[bounds[lane]..bounds[lane + 1]]);
        }
    }
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

/// A parsed time stream, ready to decode once the events' classes are known.
pub(crate) struct TimeDecoder<'a> {
    quantum: u64,
    class_map: &'a [u8],
    lut: Vec<u32>,
    slots: Vec<u32>,
    lanes: [LaneInput<'a>; LANES],
}

impl<'a> TimeDecoder<'a> {
    /// Parses the stream's tables. `count` is the chunk's event count (it bounds the tables).
    pub(crate) fn parse(stream: &'a [u8], count: usize) -> Result<Self, String> {
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
        for _ in 0..table_count {
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
                    if c >= CONTEXTS as u64 {
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
            if slots.len() as u64 + size > slot_limit {
                return Err("time tables are larger than the chunk allows".into());
            }
            let nnz = rd.varint()?;
            if nnz == 0 || nnz > SYMBOLS as u64 {
                return Err(format!("time table with {nnz} symbols"));
            }
            let offset = slots.len() as u64;
            let mut sym = 0u64;
            let mut cum = 0u64;
            for i in 0..nnz {
                sym += rd.varint()?;
                if i > 0 {
                    sym += 1;
                }
                if sym >= SYMBOLS as u64 {
                    return Err("time table symbol out of range".into());
                }
                let freq = rd.varint()?.checked_add(1).filter(|f| cum + f <= size);
                let Some(freq) = freq else {
                    return Err("time table frequencies exceed its total".into());
                };
                for bias in 0..freq {
                    slots.push((sym | freq << 9 | bias << 21) as u32);
                }
                cum += freq;
            }
            if cum != size {
                return Err("time table frequencies do not add up to its total".into());
            }
            // Fits: at most 20,545 tables of at most 2^11 slots each.
            entries.push((kind, coord as u32, (offset as u32) << 4 | precision));
        }
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
        if !rd.at_end() {
            return Err("time stream has unused bytes".into());
        }
        // Contexts without a table decode from a one-slot table whose symbol is invalid, so the
        // hot loop needs no check of its own.
        let missing = (slots.len() as u32) << 4;
        slots.push(INVALID_SYMBOL as u32 | 1 << 9);
        let mut lut = Vec::new();
        fill_lut(&mut lut, &entries, missing);
        if std::env::var_os("TC_DEBUG").is_some() {
            eprintln!(
                "tables {} slots {} count {count} kinds {:?}",
                entries.len(),
                slots.len(),
                [0u8, 1, 2].map(|k| entries.iter().filter(|e| e.0 == k).count())
            );
        }
        Ok(TimeDecoder {
            quantum,
            class_map,
            lut,
            slots,
            lanes,
        })
    }

    /// Class of an access event with key symbol `sym`.
    #[inline(always)]
    pub(crate) fn access_class(&self, sym: u32) -> u8 {
        self.class_map
            .get(sym as usize)
            .copied()
            .unwrap_or(CLASS_OTHER_KEY)
    }

    /// Class of a non-access event with kind tag `tag`.
    #[inline(always)]
    pub(crate) fn other_class(tag: u8) -> u8 {
        non_access_class(tag)
    }

    /// Decodes the timestamps of events whose classes are `classes[1..]` (`classes[0]` is
    /// [`CLASS_START`]) into `out`, starting from `first_t_ns`, and checks that the first delta is
    /// 0 and that every byte of the stream is used. Returns the last timestamp.
    pub(crate) fn decode(
        &self,
        classes: &[u8],
        first_t_ns: u64,
        out: &mut Vec<u64>,
    ) -> Result<u64, String> {
        let n = classes.len().saturating_sub(1);
        let bounds = lane_bounds(n);
        let base = out.len();
        out.resize(base + n, 0);
        let deltas = &mut out[base..];
        let mut lanes: [LaneState<'_>; LANES] = std::array::from_fn(|k| LaneState {
            x: 0,
            pos: 4,
            rans: self.lanes[k].rans,
            raw: BitReader::new(self.lanes[k].raw),
            prev_delta: 0,
        });
        for lane in &mut lanes {
            let r = lane.rans;
            lane.x = u32::from_le_bytes([r[0], r[1], r[2], r[3]]);
            if lane.x < RANS_L {
                return Err("time rANS state is out of range".into());
            }
        }
        // The lanes' dependency chains are independent: stepping them in turn lets the CPU overlap
        // them. Every lane but the last has `per` events; all four run together for the last
        // lane's length.
        let per = bounds[1] - bounds[0];
        let together = bounds[LANES] - bounds[LANES - 1];
        for j in 0..together {
            for (k, lane) in lanes.iter_mut().enumerate() {
                let i = bounds[k] + j;
                deltas[i] = self.step(lane, classes[i], classes[i + 1])?;
            }
        }
        for j in together..per {
            for (k, lane) in lanes.iter_mut().enumerate().take(LANES - 1) {
                let i = bounds[k] + j;
                if i < bounds[k + 1] {
                    deltas[i] = self.step(lane, classes[i], classes[i + 1])?;
                }
            }
        }
        if n > 0 && deltas[0] != 0 {
            return Err("first event's time differs from the chunk header".into());
        }
        let mut t = first_t_ns;
        for d in deltas.iter_mut() {
            t = d
                .checked_mul(self.quantum)
                .and_then(|dt| t.checked_add(dt))
                .ok_or("timestamp overflows")?;
            *d = t;
        }
        for lane in &lanes {
            if lane.x != RANS_L || lane.pos != lane.rans.len() {
                return Err("time rANS section does not end where it should".into());
            }
            lane.raw.expect_end()?;
        }
        Ok(t)
    }

    /// Decodes one delta (in quanta) of `lane`.
    #[inline(always)]
    fn step(&self, lane: &mut LaneState<'_>, prev_class: u8, class: u8) -> Result<u64, String> {
        let entry = self.lut[context(prev_class, class, bucket(lane.prev_delta))];
        let precision = entry & 15;
        let slot = (entry >> 4) as usize + (lane.x & ((1u32 << precision) - 1)) as usize;
        // In range: a table's slots are contiguous and the state's low bits stay inside them.
        let s = self.slots[slot];
        let (sym, freq, bias) = ((s & 0x1ff) as u64, (s >> 9) & 0xfff, s >> 21);
        let x = freq * (lane.x >> precision) + bias;
        // Branch-free refill: whether a state needs one is a coin toss the predictor loses. A
        // refill past the section's end reads 0 and leaves `pos` beyond the end, which the final
        // check reports.
        let word = match lane.rans.get(lane.pos..lane.pos + 2) {
            Some(w) => u16::from_le_bytes([w[0], w[1]]) as u32,
            None => 0,
        };
        let refill = x < RANS_L;
        let x = if refill { x << 16 | word } else { x };
        lane.pos += 2 * refill as usize;
        lane.x = x;
        let d = if sym < DIRECT {
            sym
        } else {
            if sym == INVALID_SYMBOL {
                return Err("an event's time context has no table".into());
            }
            let e = 6 + (sym - DIRECT) / 4;
            let nbits = (e - 2) as u32;
            ((4 + (sym - DIRECT) % 4) << nbits) | lane.raw.read(nbits)?
        };
        lane.prev_delta = d;
        Ok(d)
    }
}

/// Decoding state of one lane.
struct LaneState<'a> {
    x: u32,
    pos: usize,
    rans: &'a [u8],
    raw: BitReader<'a>,
    prev_delta: u64,
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
                let e = 6 + (sym - DIRECT) / 4;
                assert_eq!(nbits as u64, e - 2);
                ((4 + (sym - DIRECT) % 4) << (e - 2)) | extra
            };
            assert_eq!(back, d);
        }
    }

    #[test]
    fn normalize_sums_to_a_power_of_two() {
        let mut counts = vec![0u32; SYMBOLS];
        for (i, c) in [1u32, 1000, 1, 1, 7, 100_000, 3].iter().enumerate() {
            counts[i * 11] = *c;
        }
        let t = normalize(KIND_GLOBAL, 0, &counts);
        assert_eq!(
            t.freqs.iter().map(|f| f.1 as u64).sum::<u64>(),
            1 << t.precision
        );
        assert!(t.freqs.iter().all(|f| f.1 >= 1));
        assert_eq!(t.freqs.len(), 7);
        let mut one = vec![0u32; SYMBOLS];
        one[5] = 9;
        assert_eq!(normalize(KIND_GLOBAL, 0, &one).precision, 0);
    }
}
