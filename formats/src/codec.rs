//! The v1 chunk payload encodings: columnar event streams and blob tables.
//!
//! An event chunk payload is nine streams (see `docs/FORMAT.md`): kind tags, time deltas divided by a
//! per-chunk quantum, an access-key dictionary, access-key symbols, values XOR-coded against the last
//! value of the same key, inline bytes, the fields of non-access events, and sparse status and
//! duration streams. Repetitive register traffic turns into runs of identical small symbols, which
//! zstd then squeezes.

use std::collections::HashMap;
use std::hash::{BuildHasherDefault, Hasher};

use crate::event::*;

/// Number of streams in an event chunk payload.
pub const STREAM_COUNT: usize = 9;
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

/// Width byte of a key whose accesses carry raw bytes.
const WIDTH_BYTES: u8 = 0;

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

    #[inline]
    pub(crate) fn varint(&mut self) -> Result<u64, String> {
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

    fn expect_end(&self) -> Result<(), String> {
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

/// An access key: the identity of a register as the chunk dictionary sees it.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
struct AccessKey {
    tag: u8,
    width: u8,
    region: u32,
    offset: u64,
}

/// Encoded event chunk, ready to be written.
pub(crate) struct EncodedChunk {
    /// Uncompressed payload.
    pub payload: Vec<u8>,
    pub first_seq: u64,
    pub count: u32,
    pub first_t_ns: u64,
    pub last_t_ns: u64,
    pub counts: [u32; KindTag::COUNT],
}

/// Accumulates events of one chunk into column streams.
pub(crate) struct ChunkEncoder {
    count: u32,
    first_seq: u64,
    first_t_ns: u64,
    last_t_ns: u64,
    deltas: Vec<u64>,
    streams: [Vec<u8>; STREAM_COUNT],
    last_status_idx: Option<u32>,
    last_duration_idx: Option<u32>,
    dict: HashMap<AccessKey, u32, BuildHasherDefault<KeyHasher>>,
    last_values: Vec<u64>,
    counts: [u32; KindTag::COUNT],
}

impl ChunkEncoder {
    pub(crate) fn new() -> Self {
        ChunkEncoder {
            count: 0,
            first_seq: 0,
            first_t_ns: 0,
            last_t_ns: 0,
            deltas: Vec::new(),
            streams: Default::default(),
            last_status_idx: None,
            last_duration_idx: None,
            dict: HashMap::default(),
            last_values: Vec::new(),
            counts: [0; KindTag::COUNT],
        }
    }

    pub(crate) fn len(&self) -> u32 {
        self.count
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.count == 0
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
            | EventKind::PioWrite(a) => self.push_access(tag, a.region, a.offset, &a.data, blob)?,
            EventKind::ConfigRead(c) | EventKind::ConfigWrite(c) => {
                self.push_access(tag, 0, c.offset as u64, &c.data, blob)?
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

    #[inline]
    fn push_access(
        &mut self,
        tag: KindTag,
        region: u32,
        offset: u64,
        data: &AccessData,
        blob: &mut dyn FnMut(&[u8]) -> u64,
    ) -> Result<(), String> {
        let width = match data {
            AccessData::Value { size, .. } => {
                if !matches!(size, 1 | 2 | 4 | 8) {
                    return Err(format!("access width {size} is not 1, 2, 4 or 8"));
                }
                *size
            }
            AccessData::Bytes(_) => WIDTH_BYTES,
        };
        let key = AccessKey {
            tag: tag as u8,
            width,
            region,
            offset,
        };
        let next = self.last_values.len() as u32;
        let sym = *self.dict.entry(key).or_insert(next);
        if sym == next {
            let k = &mut self.streams[S_KEYS];
            put_varint(k, region as u64);
            put_varint(k, offset);
            k.push(width);
            self.last_values.push(0);
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
        Ok(())
    }

    /// Closes the chunk: returns its payload and resets the encoder for the next chunk.
    pub(crate) fn finish(&mut self) -> EncodedChunk {
        let quantum = self.deltas.iter().fold(0u64, |g, d| gcd(g, *d)).max(1);
        let time = &mut self.streams[S_TIME];
        put_varint(time, quantum);
        for d in &self.deltas {
            put_varint(time, d / quantum);
        }
        let total: usize = self.streams.iter().map(|s| s.len()).sum();
        let mut payload = Vec::with_capacity(4 * STREAM_COUNT + total);
        for s in &self.streams {
            payload.extend_from_slice(&(s.len() as u32).to_le_bytes());
        }
        for s in &self.streams {
            payload.extend_from_slice(s);
        }
        let out = EncodedChunk {
            payload,
            first_seq: self.first_seq,
            count: self.count,
            first_t_ns: self.first_t_ns,
            last_t_ns: self.last_t_ns,
            counts: self.counts,
        };
        self.count = 0;
        self.deltas.clear();
        for s in &mut self.streams {
            s.clear();
        }
        self.last_status_idx = None;
        self.last_duration_idx = None;
        self.dict.clear();
        self.last_values.clear();
        self.counts = [0; KindTag::COUNT];
        out
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
fn split_streams(payload: &[u8]) -> Result<[&[u8]; STREAM_COUNT], String> {
    if payload.len() < 4 * STREAM_COUNT {
        return Err("payload shorter than its stream table".into());
    }
    let mut out: [&[u8]; STREAM_COUNT] = [&[]; STREAM_COUNT];
    let mut pos = 4 * STREAM_COUNT;
    for (i, s) in out.iter_mut().enumerate() {
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
    let streams = split_streams(payload)?;
    let n = shape.count as usize;
    let tags = streams[S_TAGS];
    if tags.len() != n {
        return Err(format!(
            "tag stream has {} entries, chunk claims {n} events",
            tags.len()
        ));
    }
    let mut time = Rd::new(streams[S_TIME], "time");
    let mut keys = Rd::new(streams[S_KEYS], "key");
    let mut syms = Rd::new(streams[S_SYMS], "symbol");
    let mut values = Rd::new(streams[S_VALUES], "value");
    let mut bytes = Rd::new(streams[S_BYTES], "bytes");
    let mut misc = Rd::new(streams[S_MISC], "misc");
    let mut status = SparseRd::new(streams[S_STATUS], "status")?;
    let mut duration = SparseRd::new(streams[S_DURATION], "duration")?;
    let quantum = time.varint()?;
    if quantum == 0 {
        return Err("time quantum is 0".into());
    }
    let mut dict: Vec<(u8, u8, u32, u64)> = Vec::new();
    let mut last_values: Vec<u64> = Vec::new();
    let mut counts = [0u32; KindTag::COUNT];
    let mut events = Vec::with_capacity(n);
    let mut t = shape.first_t_ns;
    for (i, &tag_byte) in tags.iter().enumerate() {
        let tag =
            KindTag::from_u8(tag_byte).ok_or_else(|| format!("unknown kind tag {tag_byte}"))?;
        counts[tag as usize] += 1;
        let dt = time
            .varint()?
            .checked_mul(quantum)
            .ok_or("time delta overflows")?;
        t = t.checked_add(dt).ok_or("timestamp overflows")?;
        if i == 0 && t != shape.first_t_ns {
            return Err("first event's time differs from the chunk header".into());
        }
        let kind = if tag.is_access() {
            let sym = syms.varint()?;
            let (key_tag, width, region, offset) = if sym == dict.len() as u64 {
                let region = keys.varint_u32()?;
                let offset = keys.varint()?;
                let width = keys.u8()?;
                if !matches!(width, 0 | 1 | 2 | 4 | 8) {
                    return Err(format!("access key width {width} is invalid"));
                }
                dict.push((tag_byte, width, region, offset));
                last_values.push(0);
                (tag_byte, width, region, offset)
            } else {
                *dict
                    .get(sym as usize)
                    .ok_or_else(|| format!("access symbol {sym} is not in the dictionary"))?
            };
            if key_tag != tag_byte {
                return Err(format!("access symbol {sym} belongs to another kind"));
            }
            let data = if width == WIDTH_BYTES {
                let len = values.varint()? as usize;
                if len <= INLINE_BYTES_MAX {
                    AccessData::Bytes(bytes.bytes(len)?.to_vec())
                } else {
                    let b = blobs.blob(values.varint()?)?;
                    if b.len() != len {
                        return Err("long access blob has the wrong length".into());
                    }
                    AccessData::Bytes(b)
                }
            } else {
                let last = &mut last_values[sym as usize];
                let value = values.varint()? ^ *last;
                *last = value;
                AccessData::Value { size: width, value }
            };
            match tag {
                KindTag::MmioRead => EventKind::MmioRead(RegionAccess {
                    region,
                    offset,
                    data,
                }),
                KindTag::MmioWrite => EventKind::MmioWrite(RegionAccess {
                    region,
                    offset,
                    data,
                }),
                KindTag::PioRead => EventKind::PioRead(RegionAccess {
                    region,
                    offset,
                    data,
                }),
                KindTag::PioWrite => EventKind::PioWrite(RegionAccess {
                    region,
                    offset,
                    data,
                }),
                KindTag::ConfigRead | KindTag::ConfigWrite => {
                    let offset = u32::try_from(offset)
                        .map_err(|_| "config offset does not fit in 32 bits".to_string())?;
                    let c = ConfigAccess { offset, data };
                    if tag == KindTag::ConfigRead {
                        EventKind::ConfigRead(c)
                    } else {
                        EventKind::ConfigWrite(c)
                    }
                }
                _ => unreachable!("is_access covers exactly the six access kinds"),
            }
        } else {
            decode_other(tag, &mut misc, &mut bytes, blobs)?
        };
        events.push(Event {
            seq: shape.first_seq + i as u64,
            t_ns: t,
            status: u32::try_from(status.value_at(i as u32)?)
                .map_err(|_| "status does not fit in 32 bits".to_string())?,
            duration_ns: duration.value_at(i as u32)?,
            kind,
        });
    }
    if t != shape.last_t_ns {
        return Err("last event's time differs from the chunk header".into());
    }
    if counts != shape.counts {
        return Err("kind counts differ from the chunk header".into());
    }
    for rd in [&time, &keys, &syms, &values, &bytes, &misc] {
        rd.expect_end()?;
    }
    status.expect_end()?;
    duration.expect_end()?;
    Ok(events)
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

/// Reads a sparse (index gap, value) stream in event order.
struct SparseRd<'a> {
    rd: Rd<'a>,
    next: Option<(u32, u64)>,
}

impl<'a> SparseRd<'a> {
    fn new(b: &'a [u8], name: &'static str) -> Result<Self, String> {
        let mut s = SparseRd {
            rd: Rd::new(b, name),
            next: None,
        };
        s.advance(0)?;
        Ok(s)
    }

    fn advance(&mut self, from: u32) -> Result<(), String> {
        self.next = if self.rd.at_end() {
            None
        } else {
            let gap = self.rd.varint_u32()?;
            let idx = from
                .checked_add(gap)
                .ok_or_else(|| format!("{} index overflows", self.rd.name))?;
            let v = self.rd.varint()?;
            if v == 0 {
                return Err(format!("{} stream stores a zero", self.rd.name));
            }
            Some((idx, v))
        };
        Ok(())
    }

    #[inline]
    fn value_at(&mut self, idx: u32) -> Result<u64, String> {
        match self.next {
            Some((i, v)) if i == idx => {
                self.advance(idx + 1)?;
                Ok(v)
            }
            _ => Ok(0),
        }
    }

    fn expect_end(&self) -> Result<(), String> {
        match self.next {
            None => Ok(()),
            Some((i, _)) => Err(format!(
                "{} stream names event {i} beyond the chunk",
                self.rd.name
            )),
        }
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
        if hash.as_bytes()[..] != payload[i * 36..i * 36 + 32] {
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
