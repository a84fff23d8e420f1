//! The chunk payload encodings: columnar event streams (encodings 1 and 2) and blob tables.
//!
//! An encoding 1 event chunk payload is nine streams (see `docs/FORMAT.md`): kind tags, time deltas
//! divided by a per-chunk quantum, an access-key dictionary, access-key symbols, values XOR-coded
//! against the last value of the same key, inline bytes, the fields of non-access events, and
//! sparse status and duration streams. Repetitive register traffic turns into runs of identical
//! small symbols, which zstd then squeezes. Encoding 2 keeps the same streams but replaces the time
//! deltas by a context-modelled rANS code (`timecode.rs`), stored after the zstd frame. Encoding 3
//! is encoding 2 with key offsets coded as differences and its time tables laid out as columns.

use std::collections::HashMap;
use std::hash::{BuildHasherDefault, Hasher};

use crate::event::*;
use crate::layout::{has_raw_suffix, ENCODING_V1, ENCODING_V2, ENCODING_V3};
use crate::timecode::{ContextRows, TimeDecoder, TimeEncoder, NON_ACCESS, TIME_V2, TIME_V3};

/// Number of streams in an encoding 1 event chunk payload.
pub const STREAM_COUNT: usize = 9;
/// Number of streams in an encoding 2 or 3 event chunk payload (the time stream is split in two).
const STREAM_COUNT_V2: usize = 10;
/// Access data longer than this many bytes goes to a blob instead of the inline byte stream.
pub const INLINE_BYTES_MAX: usize = 64;

const S_TAGS: usize = 0;
const S_TIME: usize = 1;
const S_KEYS: usize = 2;
const S_SYMS: usize = 3;
const S_VALUES: usize = 4;
const S_BYTES: usize = 5;
const S_MISC: usize = 6;
const S_STATUS: usize = 7;
const S_DURATION: usize = 8;
/// Encoding 2: the rANS lanes of the time stream (`S_TIME` holds its model).
const S_TIME_CODE: usize = 9;

/// Order of the streams in a v1 payload (and in its length table).
const ORDER_V1: [usize; STREAM_COUNT] = [0, 1, 2, 3, 4, 5, 6, 7, 8];
/// Order of the streams in a v2 or v3 payload: the time stream last, so the part zstd compresses is a
/// prefix and the entropy-coded time stream a suffix stored as is.
const ORDER_V2: [usize; STREAM_COUNT_V2] = [
    S_TAGS,
    S_KEYS,
    S_SYMS,
    S_VALUES,
    S_BYTES,
    S_MISC,
    S_STATUS,
    S_DURATION,
    S_TIME,
    S_TIME_CODE,
];

fn stream_order(encoding: u8) -> &'static [usize] {
    if has_raw_suffix(encoding) {
        &ORDER_V2
    } else {
        &ORDER_V1
    }
}

/// Width byte of a key whose accesses carry raw bytes.
const WIDTH_BYTES: u8 = 0;

/// Zigzag coding of a signed difference as an unsigned varint value: 0, −1, 1, −2, 2, … become
/// 0, 1, 2, 3, 4, … (encoding 3's key offsets and time-table weight codes).
#[inline]
pub(crate) fn zigzag(d: i64) -> u64 {
    ((d << 1) ^ (d >> 63)) as u64
}

/// The inverse of [`zigzag`].
#[inline]
pub(crate) fn unzigzag(z: u64) -> i64 {
    (z >> 1) as i64 ^ -((z & 1) as i64)
}

/// Encoding 3 stores a key's offset as the zigzag-coded difference from the previous key's offset
/// (wrapping, as a two's-complement i64): a device's registers are defined near each other.
#[inline]
fn zigzag_offset(offset: u64, previous: u64) -> u64 {
    zigzag(offset.wrapping_sub(previous) as i64)
}

/// The inverse of [`zigzag_offset`].
#[inline]
fn unzigzag_offset(z: u64, previous: u64) -> u64 {
    previous.wrapping_add(unzigzag(z) as u64)
}

#[inline]
pub(crate) fn put_varint(out: &mut Vec<u8>, mut v: u64) {
    while v >= 0x80 {
        out.push((v as u8) | 0x80);
        v >>= 7;
    }
    out.push(v as u8);
}

/// A bounds-checked reader over one stream.
pub(crate) struct Rd<'a> {
    b: &'a [u8],
    p: usize,
    name: &'static str,
}

impl<'a> Rd<'a> {
    pub(crate) fn new(b: &'a [u8], name: &'static str) -> Self {
        Rd { b, p: 0, name }
    }

    fn eof(&self) -> String {
        format!("{} stream ends early", self.name)
    }

    /// One varint. One- and two-byte varints (most symbols, values and time deltas; symbols of
    /// chunks with more than 128 access keys) take the inlined fast path.
    #[inline(always)]
    pub(crate) fn varint(&mut self) -> Result<u64, String> {
        if let Some(&byte) = self.b.get(self.p) {
            if byte < 0x80 {
                self.p += 1;
                return Ok(byte as u64);
            }
            if let Some(&high) = self.b.get(self.p + 1) {
                if high < 0x80 {
                    self.p += 2;
                    return Ok((byte & 0x7f) as u64 | (high as u64) << 7);
                }
            }
        }
        self.varint_slow()
    }

    #[inline(never)]
    fn varint_slow(&mut self) -> Result<u64, String> {
        let mut v: u64 = 0;
        let mut shift = 0u32;
        loop {
            let Some(&byte) = self.b.get(self.p) else {
                return Err(self.eof());
            };
            self.p += 1;
            if shift == 63 && byte > 1 {
                return Err(format!("{} stream: varint overflows 64 bits", self.name));
            }
            v |= ((byte & 0x7f) as u64) << shift;
            if byte < 0x80 {
                return Ok(v);
            }
            shift += 7;
            if shift > 63 {
                return Err(format!("{} stream: varint too long", self.name));
            }
        }
    }

    #[inline(always)]
    pub(crate) fn varint_u32(&mut self) -> Result<u32, String> {
        let v = self.varint()?;
        u32::try_from(v).map_err(|_| format!("{} stream: {v} does not fit in 32 bits", self.name))
    }

    #[inline]
    pub(crate) fn u8(&mut self) -> Result<u8, String> {
        let Some(&byte) = self.b.get(self.p) else {
            return Err(self.eof());
        };
        self.p += 1;
        Ok(byte)
    }

    pub(crate) fn bytes(&mut self, n: usize) -> Result<&'a [u8], String> {
        let end = self.p.checked_add(n).ok_or_else(|| self.eof())?;
        let s = self.b.get(self.p..end).ok_or_else(|| self.eof())?;
        self.p = end;
        Ok(s)
    }

    pub(crate) fn at_end(&self) -> bool {
        self.p >= self.b.len()
    }

    pub(crate) fn expect_end(&self) -> Result<(), String> {
        if self.at_end() {
            Ok(())
        } else {
            Err(format!(
                "{} stream has {} unused bytes",
                self.name,
                self.b.len() - self.p
            ))
        }
    }
}

/// A cheap multiplicative hasher for the access-key dictionary (keys are a few integers; SipHash
/// would dominate the encoder's per-event cost).
#[derive(Default)]
pub(crate) struct KeyHasher(u64);

impl Hasher for KeyHasher {
    fn finish(&self) -> u64 {
        self.0
    }
    fn write(&mut self, bytes: &[u8]) {
        for b in bytes {
            self.write_u64(*b as u64);
        }
    }
    fn write_u8(&mut self, i: u8) {
        self.write_u64(i as u64);
    }
    fn write_u32(&mut self, i: u32) {
        self.write_u64(i as u64);
    }
    fn write_u64(&mut self, i: u64) {
        self.0 = (self.0.rotate_left(5) ^ i).wrapping_mul(0x51_7c_c1_b7_27_22_0a_95);
    }
}

/// An access key as the encoder's dictionary hashes it.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
struct EncoderKey {
    tag: u8,
    width: u8,
    region: u32,
    offset: u64,
}

/// Encoded event chunk, ready to be written.
pub(crate) struct EncodedChunk {
    /// Uncompressed payload.
    pub payload: Vec<u8>,
    /// Chunk encoding of the payload.
    pub encoding: u8,
    /// Encodings 2 and 3: length of the time code, the payload's suffix that is stored
    /// uncompressed.
    pub raw_suffix: usize,
    pub first_seq: u64,
    pub count: u32,
    pub first_t_ns: u64,
    pub last_t_ns: u64,
    pub counts: [u32; KindTag::COUNT],
}

/// Accumulates events of one chunk into column streams.
pub(crate) struct ChunkEncoder {
    encoding: u8,
    /// Encodings 2 and 3 only: chunks with fewer events are written in encoding 1.
    v2_min_events: usize,
    /// The dictionary's keys in order of definition, `(region, offset, width)`: the keys stream is
    /// written when the chunk closes, in the encoding chosen then.
    key_defs: Vec<(u32, u64, u8)>,
    count: u32,
    first_seq: u64,
    first_t_ns: u64,
    last_t_ns: u64,
    deltas: Vec<u64>,
    streams: [Vec<u8>; STREAM_COUNT_V2],
    last_status_idx: Option<u32>,
    last_duration_idx: Option<u32>,
    dict: HashMap<EncoderKey, u32, BuildHasherDefault<KeyHasher>>,
    key_cache: Box<[Option<(EncoderKey, u32)>]>,
    last_values: Vec<u64>,
    counts: [u32; KindTag::COUNT],
    /// Per event: its access-key symbol, or [`NON_ACCESS`] | its tag (the rANS time contexts).
    event_keys: Vec<u32>,
    time_encoder: TimeEncoder,
}

impl ChunkEncoder {
    /// An encoder of chunks in `encoding` ([`ENCODING_V1`], [`ENCODING_V2`] or [`ENCODING_V3`]; with
    /// encodings 2 and 3, chunks of fewer than `v2_min_events` events still use encoding 1).
    pub(crate) fn new(encoding: u8, v2_min_events: usize) -> Self {
        ChunkEncoder {
            encoding,
            v2_min_events,
            key_defs: Vec::new(),
            count: 0,
            first_seq: 0,
            first_t_ns: 0,
            last_t_ns: 0,
            deltas: Vec::new(),
            streams: Default::default(),
            last_status_idx: None,
            last_duration_idx: None,
            dict: HashMap::default(),
            key_cache: vec![None; 1 << KEY_CACHE_BITS].into_boxed_slice(),
            last_values: Vec::new(),
            counts: [0; KindTag::COUNT],
            event_keys: Vec::new(),
            time_encoder: TimeEncoder::default(),
        }
    }

    pub(crate) fn len(&self) -> u32 {
        self.count
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.count == 0
    }

    /// Bytes buffered in the streams so far (the payload size if the chunk closed now, give or
    /// take the time stream).
    pub(crate) fn buffered_bytes(&self) -> usize {
        self.streams.iter().map(|s| s.len()).sum::<usize>() + self.deltas.len() * 2
    }

    /// Adds `ev` (already validated for seq/time order by the writer). `blob` stores a payload and
    /// returns its blob id.
    pub(crate) fn push(
        &mut self,
        ev: &Event,
        blob: &mut dyn FnMut(&[u8]) -> u64,
    ) -> Result<(), String> {
        if self.count == 0 {
            self.first_seq = ev.seq;
            self.first_t_ns = ev.t_ns;
            self.last_t_ns = ev.t_ns;
        }
        let idx = self.count;
        let tag = ev.tag();
        match &ev.kind {
            EventKind::MmioRead(a)
            | EventKind::MmioWrite(a)
            | EventKind::PioRead(a)
            | EventKind::PioWrite(a) => {
                let sym = self.push_access(tag, a.region, a.offset, &a.data, blob)?;
                self.event_keys.push(sym);
            }
            EventKind::ConfigRead(c) | EventKind::ConfigWrite(c) => {
                let sym = self.push_access(tag, 0, c.offset as u64, &c.data, blob)?;
                self.event_keys.push(sym);
            }
            EventKind::Irq(i) => {
                let m = &mut self.streams[S_MISC];
                put_varint(m, i.index as u64);
                put_varint(m, i.vector as u64);
            }
            EventKind::IrqSetup(s) => {
                let m = &mut self.streams[S_MISC];
                put_varint(m, s.index as u64);
                put_varint(m, s.start as u64);
                put_varint(m, s.count as u64);
                m.push(match s.action {
                    IrqAction::Mask => 0,
                    IrqAction::Unmask => 1,
                    IrqAction::Trigger => 2,
                });
                let flags = match &s.data {
                    IrqData::None => {
                        m.push(0);
                        None
                    }
                    IrqData::Bool(v) => {
                        m.push(1);
                        Some(v)
                    }
                    IrqData::Eventfd(v) => {
                        m.push(2);
                        Some(v)
                    }
                };
                if let Some(v) = flags {
                    put_varint(m, v.len() as u64);
                    for group in v.chunks(8) {
                        let mut byte = 0u8;
                        for (bit, on) in group.iter().enumerate() {
                            byte |= (*on as u8) << bit;
                        }
                        m.push(byte);
                    }
                }
            }
            EventKind::DmaMap(d) | EventKind::DmaUnmap(d) => {
                let m = &mut self.streams[S_MISC];
                put_varint(m, d.iova);
                put_varint(m, d.len);
                put_varint(m, d.flags as u64);
            }
            EventKind::DmaRead(d) => {
                let id = blob(&d.data);
                let m = &mut self.streams[S_MISC];
                put_varint(m, d.iova);
                put_varint(m, id);
            }
            EventKind::DmaWrite(d) => {
                let id = blob(&d.data);
                let before = d.before.as_ref().map(|b| blob(b) + 1).unwrap_or(0);
                let m = &mut self.streams[S_MISC];
                put_varint(m, d.iova);
                put_varint(m, id);
                put_varint(m, before);
            }
            EventKind::Reset => {}
            EventKind::Marker(mk) => {
                let data = mk.data.as_ref().map(|b| blob(b) + 1).unwrap_or(0);
                let m = &mut self.streams[S_MISC];
                put_varint(m, mk.label.len() as u64);
                put_varint(m, data);
                self.streams[S_BYTES].extend_from_slice(mk.label.as_bytes());
            }
        }
        if !tag.is_access() {
            self.event_keys.push(NON_ACCESS | tag as u32);
        }
        self.streams[S_TAGS].push(tag as u8);
        self.deltas.push(ev.t_ns - self.last_t_ns);
        self.last_t_ns = ev.t_ns;
        if ev.status != 0 {
            let gap = idx - self.last_status_idx.map_or(0, |p| p + 1);
            put_varint(&mut self.streams[S_STATUS], gap as u64);
            put_varint(&mut self.streams[S_STATUS], ev.status as u64);
            self.last_status_idx = Some(idx);
        }
        if ev.duration_ns != 0 {
            let gap = idx - self.last_duration_idx.map_or(0, |p| p + 1);
            put_varint(&mut self.streams[S_DURATION], gap as u64);
            put_varint(&mut self.streams[S_DURATION], ev.duration_ns);
            self.last_duration_idx = Some(idx);
        }
        self.counts[tag as usize] += 1;
        self.count += 1;
        Ok(())
    }

    // Always inlined into `push`: as a call of its own it cost about 8 % of encoding (rtl8139,
    // `encode_loop`), in the prologue and the arguments it re-reads.
    #[inline(always)]
    fn push_access(
        &mut self,
        tag: KindTag,
        region: u32,
        offset: u64,
        data: &AccessData,
        blob: &mut dyn FnMut(&[u8]) -> u64,
    ) -> Result<u32, String> {
        let width = match data {
            AccessData::Value { size, .. } => {
                if !matches!(size, 1 | 2 | 4 | 8) {
                    return Err(format!("access width {size} is not 1, 2, 4 or 8"));
                }
                *size
            }
            AccessData::Bytes(_) => WIDTH_BYTES,
        };
        let key = EncoderKey {
            tag: tag as u8,
            width,
            region,
            offset,
        };
        let next = self.last_values.len() as u32;
        // A direct-mapped cache in front of the dictionary: register traffic hits a few keys
        // over and over, and a full hash-map lookup per access dominated the encoder's profile.
        let slot = ((offset ^ (region as u64) << 40 ^ (tag as u64) << 56 ^ (width as u64) << 61)
            .wrapping_mul(0x9e37_79b9_7f4a_7c15)
            >> (64 - KEY_CACHE_BITS)) as usize;
        let sym = match self.key_cache[slot] {
            Some((k, sym)) if k == key => sym,
            _ => {
                let sym = *self.dict.entry(key).or_insert(next);
                self.key_cache[slot] = Some((key, sym));
                sym
            }
        };
        if sym == next {
            self.define_key(region, offset, width);
        }
        put_varint(&mut self.streams[S_SYMS], sym as u64);
        match data {
            AccessData::Value { value, .. } => {
                let last = &mut self.last_values[sym as usize];
                put_varint(&mut self.streams[S_VALUES], *value ^ *last);
                *last = *value;
            }
            AccessData::Bytes(b) => {
                put_varint(&mut self.streams[S_VALUES], b.len() as u64);
                if b.len() <= INLINE_BYTES_MAX {
                    self.streams[S_BYTES].extend_from_slice(b);
                } else {
                    let id = blob(b);
                    put_varint(&mut self.streams[S_VALUES], id);
                }
            }
        }
        Ok(sym)
    }

    /// Adds a key to the chunk's dictionary (rare: most accesses reuse a key).
    #[cold]
    #[inline(never)]
    fn define_key(&mut self, region: u32, offset: u64, width: u8) {
        self.key_defs.push((region, offset, width));
        self.last_values.push(0);
    }

    /// Closes the chunk: returns its payload and resets the encoder for the next chunk.
    pub(crate) fn finish(&mut self) -> EncodedChunk {
        let quantum = deltas_gcd(&self.deltas);
        let divider = Divider::new(quantum);
        // Below `v2_min_events`, the rANS encodings' per-chunk tables cost more than they save.
        let encoding =
            if has_raw_suffix(self.encoding) && (self.count as usize) < self.v2_min_events {
                ENCODING_V1
            } else {
                self.encoding
            };
        let keys = &mut self.streams[S_KEYS];
        let mut previous_offset = 0;
        for &(region, offset, width) in &self.key_defs {
            put_varint(keys, region as u64);
            if encoding == ENCODING_V3 {
                put_varint(keys, zigzag_offset(offset, previous_offset));
                previous_offset = offset;
            } else {
                put_varint(keys, offset);
            }
            keys.push(width);
        }
        if has_raw_suffix(encoding) {
            for d in self.deltas.iter_mut() {
                *d = divider.div(*d);
            }
            let (head, code) = self.streams.split_at_mut(S_TIME_CODE);
            self.time_encoder.encode(
                &mut head[S_TIME],
                &mut code[0],
                quantum,
                &self.deltas,
                &self.event_keys,
                self.last_values.len(),
                if encoding == ENCODING_V3 {
                    TIME_V3
                } else {
                    TIME_V2
                },
            );
        } else {
            let time = &mut self.streams[S_TIME];
            put_varint(time, quantum);
            for d in &self.deltas {
                put_varint(time, divider.div(*d));
            }
        }
        let total: usize = self.streams.iter().map(|s| s.len()).sum();
        let mut payload = Vec::with_capacity(4 * STREAM_COUNT_V2 + total);
        let order = stream_order(encoding);
        for &s in order {
            payload.extend_from_slice(&(self.streams[s].len() as u32).to_le_bytes());
        }
        for &s in order {
            payload.extend_from_slice(&self.streams[s]);
        }
        let raw_suffix = if has_raw_suffix(encoding) {
            self.streams[S_TIME_CODE].len()
        } else {
            0
        };
        let out = EncodedChunk {
            payload,
            encoding,
            raw_suffix,
            first_seq: self.first_seq,
            count: self.count,
            first_t_ns: self.first_t_ns,
            last_t_ns: self.last_t_ns,
            counts: self.counts,
        };
        self.count = 0;
        self.deltas.clear();
        self.event_keys.clear();
        for s in &mut self.streams {
            s.clear();
        }
        self.last_status_idx = None;
        self.last_duration_idx = None;
        self.dict.clear();
        self.key_cache.fill(None);
        self.last_values.clear();
        self.key_defs.clear();
        self.counts = [0; KindTag::COUNT];
        out
    }
}

/// log2 of the encoder's key cache size.
const KEY_CACHE_BITS: u32 = 10;

/// The GCD of all deltas (at least 1). Divisibility by the running GCD is checked with one
/// multiplication (Lemire's test) instead of a division per delta.
fn deltas_gcd(deltas: &[u64]) -> u64 {
    let mut g = 0u64;
    let mut divider = Divider::new(1);
    for &d in deltas {
        if g != 0 && divider.divides(d) {
            continue;
        }
        g = gcd(g, d);
        if g == 1 {
            return 1;
        }
        divider = Divider::new(g);
    }
    g.max(1)
}

/// Division by a fixed divisor with a multiplication when the dividend fits in 32 bits.
struct Divider {
    d: u64,
    /// ceil(2^64 / d) when d fits in 32 bits, else 0.
    m: u64,
}

impl Divider {
    fn new(d: u64) -> Self {
        let m = if d > 1 && d <= u32::MAX as u64 {
            (u64::MAX / d).wrapping_add(1)
        } else {
            0
        };
        Divider { d, m }
    }

    #[inline]
    fn div(&self, n: u64) -> u64 {
        if self.m != 0 && n <= u32::MAX as u64 {
            ((self.m as u128 * n as u128) >> 64) as u64
        } else {
            n / self.d
        }
    }

    #[inline]
    fn divides(&self, n: u64) -> bool {
        if self.m != 0 && n <= u32::MAX as u64 {
            n.wrapping_mul(self.m) < self.m
        } else {
            n % self.d == 0
        }
    }
}

fn gcd(mut a: u64, mut b: u64) -> u64 {
    while b != 0 {
        (a, b) = (b, a % b);
    }
    a
}

/// Where decoded events find their blobs.
pub(crate) trait BlobSource {
    /// The bytes of blob `id`.
    fn blob(&self, id: u64) -> Result<Vec<u8>, String>;
}

/// Splits a payload into its streams.
fn split_streams(payload: &[u8], encoding: u8) -> Result<[&[u8]; STREAM_COUNT_V2], String> {
    let order = stream_order(encoding);
    if payload.len() < 4 * order.len() {
        return Err("payload shorter than its stream table".into());
    }
    let mut out: [&[u8]; STREAM_COUNT_V2] = [&[]; STREAM_COUNT_V2];
    let mut pos = 4 * order.len();
    for (i, &stream) in order.iter().enumerate() {
        let s = &mut out[stream];
        let len = crate::layout::u32_at(payload, 4 * i) as usize;
        let end = pos
            .checked_add(len)
            .filter(|e| *e <= payload.len())
            .ok_or_else(|| format!("stream {i} runs past the payload"))?;
        *s = &payload[pos..end];
        pos = end;
    }
    if pos != payload.len() {
        return Err(format!(
            "{} bytes after the last stream",
            payload.len() - pos
        ));
    }
    Ok(out)
}

/// Expected shape of a chunk, from its header.
pub(crate) struct ChunkShape {
    /// Payload encoding ([`ENCODING_V1`], [`ENCODING_V2`] or [`ENCODING_V3`]).
    pub encoding: u8,
    pub first_seq: u64,
    pub count: u32,
    pub first_t_ns: u64,
    pub last_t_ns: u64,
    pub counts: [u32; KindTag::COUNT],
}

/// Decodes an event chunk payload and checks it against its header.
pub(crate) fn decode_events(
    payload: &[u8],
    shape: &ChunkShape,
    blobs: &dyn BlobSource,
) -> Result<Vec<Event>, String> {
    let mut cols = ChunkColumns::default();
    decode_columns(payload, shape, blobs, &mut cols)?;
    Ok(cols.events().collect())
}

/// One access key of a chunk's dictionary.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct AccessKey {
    /// The kind of the accesses with this key (one of the six access kinds).
    pub tag: KindTag,
    /// Region index (0 for config accesses).
    pub region: u32,
    /// Offset in the region (or in config space).
    pub offset: u64,
    /// Access width: 1, 2, 4 or 8, or 0 for byte accesses (whose data is in `ChunkColumns::others`).
    pub width: u8,
}

/// `ChunkColumns::key` entry of an event that is not a value access.
pub const NO_KEY: u32 = u32::MAX;

/// One event chunk decoded into columns: the fast path for scanning a trace (no per-event heap
/// allocation, 21 bytes per event written instead of a full [`Event`]). Every field of every event
/// is there: value accesses in the columns, other events (and byte accesses) fully decoded in
/// `others`.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ChunkColumns {
    /// Sequence number of event 0.
    pub first_seq: u64,
    /// Kind tag of each event.
    pub tags: Vec<u8>,
    /// Timestamp of each event.
    pub t_ns: Vec<u64>,
    /// For each value access, its index in `keys`; [`NO_KEY`] for other events.
    pub key: Vec<u32>,
    /// For each value access, the value; for each `irq` event, `index << 32 | vector`; 0 for other
    /// events.
    pub value: Vec<u64>,
    /// The chunk's access-key dictionary.
    pub keys: Vec<AccessKey>,
    /// Events that are neither value accesses nor interrupts, complete (seq, time, status,
    /// duration), in order.
    pub others: Vec<Event>,
    /// (event index, status) of the events whose status is not 0, in order.
    pub status: Vec<(u32, u32)>,
    /// (event index, duration) of the events whose duration is not 0, in order.
    pub duration: Vec<(u32, u64)>,
}

impl ChunkColumns {
    /// Number of events.
    pub fn len(&self) -> usize {
        self.tags.len()
    }

    /// True when the chunk holds no events.
    pub fn is_empty(&self) -> bool {
        self.tags.is_empty()
    }

    fn clear(&mut self) {
        self.tags.clear();
        self.t_ns.clear();
        self.key.clear();
        self.value.clear();
        self.keys.clear();
        self.others.clear();
        self.status.clear();
        self.duration.clear();
    }

    /// Materializes every event, in order.
    pub fn events(&self) -> impl Iterator<Item = Event> + '_ {
        let mut others = self.others.iter();
        let mut status = self.status.iter().peekable();
        let mut duration = self.duration.iter().peekable();
        (0..self.len()).map(move |i| {
            let at = i as u32;
            while status.next_if(|(s, _)| *s < at).is_some() {}
            while duration.next_if(|(d, _)| *d < at).is_some() {}
            let k = self.key[i];
            let kind = if k != NO_KEY {
                let key = self.keys[k as usize];
                let data = AccessData::Value {
                    size: key.width,
                    value: self.value[i],
                };
                access_kind(key.tag, key.region, key.offset, data)
            } else if self.tags[i] == KindTag::Irq as u8 {
                EventKind::Irq(Irq {
                    index: (self.value[i] >> 32) as u32,
                    vector: self.value[i] as u32,
                })
            } else {
                // `others` holds exactly the remaining events, in order, complete.
                return others.next().cloned().unwrap_or_else(|| {
                    Event::new(self.first_seq + i as u64, self.t_ns[i], EventKind::Reset)
                });
            };
            let status = status.next_if(|(s, _)| *s == at).map_or(0, |(_, v)| *v);
            let duration_ns = duration.next_if(|(d, _)| *d == at).map_or(0, |(_, v)| *v);
            Event {
                seq: self.first_seq + i as u64,
                t_ns: self.t_ns[i],
                status,
                duration_ns,
                kind,
            }
        })
    }
}

fn access_kind(tag: KindTag, region: u32, offset: u64, data: AccessData) -> EventKind {
    let access = RegionAccess {
        region,
        offset,
        data,
    };
    match tag {
        KindTag::MmioRead => EventKind::MmioRead(access),
        KindTag::MmioWrite => EventKind::MmioWrite(access),
        KindTag::PioRead => EventKind::PioRead(access),
        KindTag::PioWrite => EventKind::PioWrite(access),
        // Config keys are checked to fit u32 when defined.
        KindTag::ConfigRead => EventKind::ConfigRead(ConfigAccess {
            offset: offset as u32,
            data: access.data,
        }),
        _ => EventKind::ConfigWrite(ConfigAccess {
            offset: offset as u32,
            data: access.data,
        }),
    }
}

/// What the decoder needs of an access key on every access, in one place.
struct KeyState {
    /// The key's previous value (values are coded as the XOR with it).
    last: u64,
    /// Kind tag of the key's accesses.
    tag: u8,
    /// Whether the accesses carry bytes rather than a value.
    bytes: bool,
    /// The key's time context row (encodings 2 and 3).
    row: u8,
}

/// Decodes an event chunk payload into columns and checks it against its header.
pub(crate) fn decode_columns(
    payload: &[u8],
    shape: &ChunkShape,
    blobs: &dyn BlobSource,
    cols: &mut ChunkColumns,
) -> Result<(), String> {
    cols.clear();
    cols.first_seq = shape.first_seq;
    let streams = split_streams(payload, shape.encoding)?;
    let n = shape.count as usize;
    let tags = streams[S_TAGS];
    if tags.len() != n {
        return Err(format!(
            "tag stream has {} entries, chunk claims {n} events",
            tags.len()
        ));
    }
    // Four interleaved histograms: runs of one kind would otherwise serialize on one counter.
    let mut lanes = [[0u32; 256]; 4];
    let mut quads = tags.chunks_exact(4);
    for q in &mut quads {
        lanes[0][q[0] as usize] += 1;
        lanes[1][q[1] as usize] += 1;
        lanes[2][q[2] as usize] += 1;
        lanes[3][q[3] as usize] += 1;
    }
    for &t in quads.remainder() {
        lanes[0][t as usize] += 1;
    }
    let mut counts = [0u32; KindTag::COUNT];
    for t in 0..256 {
        let c: u32 = lanes.iter().map(|l| l[t]).sum();
        if t < KindTag::COUNT {
            counts[t] = c;
        } else if c != 0 {
            return Err(format!("unknown kind tag {t}"));
        }
    }
    if counts != shape.counts {
        return Err("kind counts differ from the chunk header".into());
    }
    cols.tags.extend_from_slice(tags);

    // rANS time contexts need every event's key, so their times are decoded after the other
    // streams.
    let time_decoder = match shape.encoding {
        ENCODING_V1 => {
            decode_time_v1(streams[S_TIME], shape, n, &mut cols.t_ns)?;
            None
        }
        ENCODING_V2 | ENCODING_V3 => Some(TimeDecoder::parse(
            streams[S_TIME],
            streams[S_TIME_CODE],
            n,
            &counts,
            if shape.encoding == ENCODING_V3 {
                TIME_V3
            } else {
                TIME_V2
            },
        )?),
        e => return Err(format!("unknown event chunk encoding {e}")),
    };
    // v2: each event's time context base, and the context row of the event before (computed,
    // all zero, in v1 too: one store per event is cheaper than a branch).
    let mut bases: Vec<u16> = vec![0; n];
    let contexts = time_decoder
        .as_ref()
        .map_or_else(ContextRows::default, |td| td.context_rows());
    let mut prev_row = contexts.start;

    for (name, stream, out) in [
        (
            "status",
            streams[S_STATUS],
            &mut cols.status as &mut dyn SparsePush,
        ),
        ("duration", streams[S_DURATION], &mut cols.duration),
    ] {
        let mut rd = Rd::new(stream, name);
        let mut next = 0u64;
        while !rd.at_end() {
            let idx = next
                .checked_add(rd.varint()?)
                .filter(|i| *i < n as u64)
                .ok_or_else(|| format!("{name} stream names an event beyond the chunk"))?;
            let v = rd.varint()?;
            if v == 0 {
                return Err(format!("{name} stream stores a zero"));
            }
            out.push_value(idx as u32, v)?;
            next = idx + 1;
        }
    }

    let mut keys = Rd::new(streams[S_KEYS], "key");
    let mut syms = Rd::new(streams[S_SYMS], "symbol");
    let mut values = Rd::new(streams[S_VALUES], "value");
    let mut bytes = Rd::new(streams[S_BYTES], "bytes");
    let mut misc = Rd::new(streams[S_MISC], "misc");
    let mut key_states: Vec<KeyState> = Vec::new();
    let offsets_as_differences = shape.encoding == ENCODING_V3;
    let mut previous_offset = 0u64;
    // Every event writes exactly one key and one value: sized once and written by index, so the
    // loop keeps no vector length in memory.
    cols.key.resize(n, NO_KEY);
    cols.value.resize(n, 0);
    let ChunkColumns {
        key: key_out,
        value: value_out,
        keys: dict,
        others,
        status: status_col,
        duration: duration_col,
        t_ns,
        ..
    } = cols;
    let (key_out, value_out) = (&mut key_out[..n], &mut value_out[..n]);
    let (mut status_at, mut duration_at) = (0usize, 0usize);
    for (i, &tag_byte) in tags.iter().enumerate() {
        let tag = KindTag::ALL[tag_byte as usize];
        let kind = if tag.is_access() {
            let sym = syms.varint()?;
            if sym == dict.len() as u64 {
                let region = keys.varint_u32()?;
                let offset = if offsets_as_differences {
                    let offset = unzigzag_offset(keys.varint()?, previous_offset);
                    previous_offset = offset;
                    offset
                } else {
                    keys.varint()?
                };
                let width = keys.u8()?;
                if !matches!(width, 0 | 1 | 2 | 4 | 8) {
                    return Err(format!("access key width {width} is invalid"));
                }
                if !matches!(
                    tag,
                    KindTag::MmioRead | KindTag::MmioWrite | KindTag::PioRead | KindTag::PioWrite
                ) && (u32::try_from(offset).is_err() || region != 0)
                {
                    return Err("config access key with a region or a 64-bit offset".into());
                }
                dict.push(AccessKey {
                    tag,
                    region,
                    offset,
                    width,
                });
                key_states.push(KeyState {
                    last: 0,
                    tag: tag_byte,
                    bytes: width == WIDTH_BYTES,
                    row: time_decoder
                        .as_ref()
                        .map_or(0, |td| td.access_row(sym as u32)),
                });
            }
            let state = key_states
                .get_mut(sym as usize)
                .ok_or_else(|| format!("access symbol {sym} is not in the dictionary"))?;
            if state.tag != tag_byte {
                return Err(format!("access symbol {sym} belongs to another kind"));
            }
            bases[i] = contexts.base(prev_row, state.row);
            prev_row = state.row;
            if !state.bytes {
                let value = values.varint()? ^ state.last;
                state.last = value;
                key_out[i] = sym as u32;
                value_out[i] = value;
                continue;
            }
            let key = dict[sym as usize];
            let len = values.varint()? as usize;
            let data = if len <= INLINE_BYTES_MAX {
                AccessData::Bytes(bytes.bytes(len)?.to_vec())
            } else {
                let b = blobs.blob(values.varint()?)?;
                if b.len() != len {
                    return Err("long access blob has the wrong length".into());
                }
                AccessData::Bytes(b)
            };
            access_kind(tag, key.region, key.offset, data)
        } else if tag == KindTag::Irq {
            let row = contexts.other_row(tag_byte);
            bases[i] = contexts.base(prev_row, row);
            prev_row = row;
            let index = misc.varint_u32()?;
            let vector = misc.varint_u32()?;
            value_out[i] = (index as u64) << 32 | vector as u64;
            continue;
        } else {
            let row = contexts.other_row(tag_byte);
            bases[i] = contexts.base(prev_row, row);
            prev_row = row;
            decode_other(tag, &mut misc, &mut bytes, blobs)?
        };
        let idx = i as u32;
        while status_col.get(status_at).is_some_and(|(at, _)| *at < idx) {
            status_at += 1;
        }
        while duration_col
            .get(duration_at)
            .is_some_and(|(at, _)| *at < idx)
        {
            duration_at += 1;
        }
        let status = match status_col.get(status_at) {
            Some((at, s)) if *at == idx => *s,
            _ => 0,
        };
        let duration_ns = match duration_col.get(duration_at) {
            Some((at, d)) if *at == idx => *d,
            _ => 0,
        };
        others.push(Event {
            seq: shape.first_seq + i as u64,
            // v2: filled in once time is decoded.
            t_ns: t_ns.get(i).copied().unwrap_or(0),
            status,
            duration_ns,
            kind,
        });
    }
    for rd in [&keys, &syms, &values, &bytes, &misc] {
        rd.expect_end()?;
    }
    if let Some(td) = time_decoder {
        let last = td.decode(&bases, shape.first_t_ns, t_ns)?;
        if last != shape.last_t_ns {
            return Err("last event's time differs from the chunk header".into());
        }
        for ev in others.iter_mut() {
            // `seq - first_seq` is the event's index, below `n` by construction.
            ev.t_ns = t_ns[(ev.seq - shape.first_seq) as usize];
        }
    }
    Ok(())
}

/// Decodes the v1 time stream: a varint quantum, then one varint delta per event.
fn decode_time_v1(
    stream: &[u8],
    shape: &ChunkShape,
    n: usize,
    out: &mut Vec<u64>,
) -> Result<(), String> {
    let mut time = Rd::new(stream, "time");
    let quantum = time.varint()?;
    if quantum == 0 {
        return Err("time quantum is 0".into());
    }
    out.reserve(n);
    let mut t = shape.first_t_ns;
    for i in 0..n {
        let dt = time
            .varint()?
            .checked_mul(quantum)
            .ok_or("time delta overflows")?;
        if i == 0 && dt != 0 {
            return Err("first event's time differs from the chunk header".into());
        }
        t = t.checked_add(dt).ok_or("timestamp overflows")?;
        out.push(t);
    }
    if t != shape.last_t_ns {
        return Err("last event's time differs from the chunk header".into());
    }
    time.expect_end()
}

/// Destination of a sparse stream's (index, value) pairs.
trait SparsePush {
    fn push_value(&mut self, idx: u32, v: u64) -> Result<(), String>;
}

impl SparsePush for Vec<(u32, u32)> {
    fn push_value(&mut self, idx: u32, v: u64) -> Result<(), String> {
        let v = u32::try_from(v).map_err(|_| "status does not fit in 32 bits".to_string())?;
        self.push((idx, v));
        Ok(())
    }
}

impl SparsePush for Vec<(u32, u64)> {
    fn push_value(&mut self, idx: u32, v: u64) -> Result<(), String> {
        self.push((idx, v));
        Ok(())
    }
}

fn decode_other(
    tag: KindTag,
    misc: &mut Rd<'_>,
    bytes: &mut Rd<'_>,
    blobs: &dyn BlobSource,
) -> Result<EventKind, String> {
    Ok(match tag {
        KindTag::Irq => EventKind::Irq(Irq {
            index: misc.varint_u32()?,
            vector: misc.varint_u32()?,
        }),
        KindTag::IrqSetup => {
            let index = misc.varint_u32()?;
            let start = misc.varint_u32()?;
            let count = misc.varint_u32()?;
            let action = match misc.u8()? {
                0 => IrqAction::Mask,
                1 => IrqAction::Unmask,
                2 => IrqAction::Trigger,
                a => return Err(format!("unknown irq action {a}")),
            };
            let data_type = misc.u8()?;
            let data = if data_type == 0 {
                IrqData::None
            } else {
                let len = misc.varint()? as usize;
                let packed = misc.bytes(len.div_ceil(8))?;
                let flags: Vec<bool> = (0..len)
                    .map(|i| packed[i / 8] >> (i % 8) & 1 == 1)
                    .collect();
                match data_type {
                    1 => IrqData::Bool(flags),
                    2 => IrqData::Eventfd(flags),
                    d => return Err(format!("unknown irq data type {d}")),
                }
            };
            EventKind::IrqSetup(IrqSetup {
                index,
                start,
                count,
                action,
                data,
            })
        }
        KindTag::DmaMap | KindTag::DmaUnmap => {
            let m = DmaMapping {
                iova: misc.varint()?,
                len: misc.varint()?,
                flags: misc.varint_u32()?,
            };
            if tag == KindTag::DmaMap {
                EventKind::DmaMap(m)
            } else {
                EventKind::DmaUnmap(m)
            }
        }
        KindTag::DmaRead => {
            let iova = misc.varint()?;
            let data = blobs.blob(misc.varint()?)?;
            EventKind::DmaRead(DmaRead { iova, data })
        }
        KindTag::DmaWrite => {
            let iova = misc.varint()?;
            let data = blobs.blob(misc.varint()?)?;
            let before = optional_blob(misc.varint()?, blobs)?;
            EventKind::DmaWrite(DmaWrite { iova, data, before })
        }
        KindTag::Reset => EventKind::Reset,
        KindTag::Marker => {
            let len = misc.varint()? as usize;
            let data = optional_blob(misc.varint()?, blobs)?;
            let label = std::str::from_utf8(bytes.bytes(len)?)
                .map_err(|_| "marker label is not UTF-8".to_string())?
                .to_string();
            EventKind::Marker(Marker { label, data })
        }
        _ => return Err(format!("kind {} is an access", tag.name())),
    })
}

fn optional_blob(r: u64, blobs: &dyn BlobSource) -> Result<Option<Vec<u8>>, String> {
    if r == 0 {
        Ok(None)
    } else {
        blobs.blob(r - 1).map(Some)
    }
}

/// Encodes a blob chunk payload: a table of (blake3 hash, length) then the concatenated bytes.
pub(crate) fn encode_blobs(blobs: &[(blake3::Hash, Vec<u8>)]) -> Vec<u8> {
    let data: usize = blobs.iter().map(|(_, b)| b.len()).sum();
    let mut out = Vec::with_capacity(blobs.len() * 36 + data);
    for (h, b) in blobs {
        out.extend_from_slice(h.as_bytes());
        out.extend_from_slice(&(b.len() as u32).to_le_bytes());
    }
    for (_, b) in blobs {
        out.extend_from_slice(b);
    }
    out
}

/// A decoded blob chunk: the payload and where each blob lies in it.
#[derive(Debug)]
pub(crate) struct BlobTable {
    pub payload: Vec<u8>,
    pub ranges: Vec<std::ops::Range<usize>>,
}

/// Decodes a blob chunk payload of `count` blobs, checking every content hash.
pub(crate) fn decode_blobs(payload: Vec<u8>, count: u32) -> Result<BlobTable, String> {
    let table_len = (count as usize)
        .checked_mul(36)
        .filter(|l| *l <= payload.len())
        .ok_or("blob table runs past the payload")?;
    let mut ranges = Vec::with_capacity(count as usize);
    let mut pos = table_len;
    for i in 0..count as usize {
        let len = crate::layout::u32_at(&payload, i * 36 + 32) as usize;
        let end = pos
            .checked_add(len)
            .filter(|e| *e <= payload.len())
            .ok_or("blob runs past the payload")?;
        let hash = blake3::hash(&payload[pos..end]);
        if !crate::layout::sums_match(hash.as_bytes()[..] == payload[i * 36..i * 36 + 32]) {
            return Err(format!(
                "blob {i} of the chunk does not match its content hash"
            ));
        }
        ranges.push(pos..end);
        pos = end;
    }
    if pos != payload.len() {
        return Err("bytes after the last blob".into());
    }
    Ok(BlobTable { payload, ranges })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn varints_read_back_through_every_path() {
        // One, two and more bytes, and the boundaries between them.
        let values: Vec<u64> = (0..300)
            .chain(16_000..16_500)
            .chain([1 << 21, (1 << 21) - 1, u32::MAX as u64, u64::MAX])
            .collect();
        let mut stream = Vec::new();
        for &v in &values {
            put_varint(&mut stream, v);
        }
        let mut rd = Rd::new(&stream, "test");
        for &v in &values {
            assert_eq!(rd.varint(), Ok(v));
        }
        rd.expect_end().unwrap();
        // A two-byte varint cut after its first byte, and one whose second byte also continues
        // into nothing, are errors, not values.
        for cut in [&[0x85u8][..], &[0x85, 0x81][..]] {
            assert!(Rd::new(cut, "test").varint().is_err(), "{cut:?}");
        }
        // Overlong forms read as the slow path always read them.
        assert_eq!(Rd::new(&[0x80, 0x00], "test").varint(), Ok(0));
        assert_eq!(Rd::new(&[0xff, 0x7f], "test").varint(), Ok(0x3fff));
    }

    #[test]
    fn divider_matches_division() {
        let mut x = 0x1234_5678_9abc_def1u64;
        for d in [
            1u64,
            2,
            3,
            7,
            1000,
            999_983,
            u32::MAX as u64,
            u32::MAX as u64 + 1,
            u64::MAX,
        ] {
            let div = Divider::new(d);
            for n in [
                0u64,
                1,
                d - 1,
                d,
                d.wrapping_add(1),
                d.wrapping_mul(3),
                u32::MAX as u64,
                u64::MAX,
            ] {
                assert_eq!(div.div(n), n / d, "{n} / {d}");
                assert_eq!(div.divides(n), n % d == 0, "{n} % {d}");
            }
            for _ in 0..10_000 {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                for n in [x, x >> 32, (x >> 40).wrapping_mul(d)] {
                    assert_eq!(div.div(n), n / d, "{n} / {d}");
                    assert_eq!(div.divides(n), n % d == 0, "{n} % {d}");
                }
            }
        }
    }

    #[test]
    fn key_offset_differences_invert_at_the_extremes() {
        let offsets = [
            0,
            1,
            2,
            0x1000,
            0x7fff_ffff_ffff_ffff,
            0x8000_0000_0000_0000,
            u64::MAX,
        ];
        for &previous in &offsets {
            for &offset in &offsets {
                let z = zigzag_offset(offset, previous);
                assert_eq!(
                    unzigzag_offset(z, previous),
                    offset,
                    "{offset:#x} after {previous:#x}"
                );
            }
        }
        // Neighbouring registers cost one byte whichever way they lie.
        assert_eq!(zigzag_offset(0x1004, 0x1000), 8);
        assert_eq!(zigzag_offset(0x1000, 0x1004), 7);
    }

    #[test]
    fn gcd_of_deltas() {
        assert_eq!(deltas_gcd(&[]), 1);
        assert_eq!(deltas_gcd(&[0, 0]), 1);
        assert_eq!(deltas_gcd(&[0, 3000, 5000, 0, 1_000_000]), 1000);
        assert_eq!(deltas_gcd(&[0, 3000, 5003]), 1);
        assert_eq!(deltas_gcd(&[0, 3000, 5001]), 3);
        assert_eq!(deltas_gcd(&[u64::MAX - 1, 2]), 2);
    }
}
