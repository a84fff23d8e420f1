//! The trace reader: opens a finished trace through its trailer and footer index, without touching
//! any event, then decodes chunks on demand.

use std::cell::RefCell;
use std::fs::File;
use std::path::Path;
use std::sync::{Arc, OnceLock};

use crate::codec::{decode_blobs, decode_columns, BlobSource, BlobTable, ChunkColumns, ChunkShape};
use crate::error::{ChunkType, FormatError};
use crate::event::{Event, KindCounts, KindTag};
use crate::header::TraceHeader;
use crate::layout::*;

enum Storage {
    Mapped(memmap2::Mmap),
    Owned(Vec<u8>),
}

impl Storage {
    fn bytes(&self) -> &[u8] {
        match self {
            Storage::Mapped(m) => m,
            Storage::Owned(v) => v,
        }
    }
}

/// What [`TraceReader::verify`] checked.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct VerifyReport {
    /// Event chunks checked.
    pub event_chunks: usize,
    /// Blob chunks checked.
    pub blob_chunks: usize,
    /// Events decoded.
    pub events: u64,
    /// Blobs decoded and hash-checked.
    pub blobs: u64,
    /// File length in bytes.
    pub file_bytes: u64,
}

/// The parsed header block.
pub(crate) struct ParsedHeader {
    pub prefix: FileHeaderPrefix,
    pub header: TraceHeader,
    /// File offset of the first chunk.
    pub chunks_start: u64,
}

/// Parses and checks the header block at the start of `bytes` (the ROM is not resolved).
pub(crate) fn parse_header(bytes: &[u8]) -> Result<ParsedHeader, FormatError> {
    let prefix = FileHeaderPrefix::parse(bytes)?;
    if !matches!(
        prefix.version,
        FORMAT_VERSION | FORMAT_VERSION_2 | FORMAT_VERSION_1
    ) {
        return Err(FormatError::UnsupportedVersion {
            found: prefix.version,
            supported: FORMAT_VERSION,
        });
    }
    let corrupt = |reason: String| FormatError::CorruptHeader { reason };
    let end = FILE_HEADER_LEN
        .checked_add(prefix.json_zlen as usize)
        .filter(|e| *e <= bytes.len())
        .ok_or_else(|| corrupt("the JSON header runs past the end of the file".into()))?;
    let json_z = &bytes[FILE_HEADER_LEN..end];
    if !sums_match(crc32fast::hash(json_z) == prefix.json_crc) {
        return Err(corrupt("JSON header checksum mismatch".into()));
    }
    if prefix.json_len > MAX_HEADER_JSON_LEN {
        return Err(corrupt(format!(
            "JSON header claims {} bytes",
            prefix.json_len
        )));
    }
    let json = zstd::bulk::decompress(json_z, prefix.json_len as usize)
        .map_err(|e| corrupt(format!("JSON header does not decompress: {e}")))?;
    if json.len() != prefix.json_len as usize {
        return Err(corrupt("JSON header has the wrong length".into()));
    }
    let header: TraceHeader = serde_json::from_slice(&json)
        .map_err(|e| corrupt(format!("JSON header does not parse: {e}")))?;
    Ok(ParsedHeader {
        prefix,
        header,
        chunks_start: end as u64,
    })
}

/// Reads, checks and decompresses the chunk whose header is at `offset`. Returns the header and the
/// uncompressed payload.
pub(crate) fn load_chunk(
    bytes: &[u8],
    offset: u64,
    chunk_type: ChunkType,
    index: usize,
) -> Result<(ChunkHeader, Vec<u8>), FormatError> {
    let mut payload = Vec::new();
    let header = load_chunk_into(bytes, offset, chunk_type, index, &mut payload)?;
    Ok((header, payload))
}

thread_local! {
    /// A decompression context per thread, reused across chunks (creating one per chunk showed in
    /// decode profiles).
    static DECOMPRESSOR: RefCell<Option<zstd::bulk::Decompressor<'static>>> =
        const { RefCell::new(None) };
    /// A payload buffer per thread for event chunks, reused across chunks.
    static PAYLOAD: RefCell<Vec<u8>> = const { RefCell::new(Vec::new()) };
}

/// Decompresses one zstd frame into `out` (cleared), which must come to exactly `len` bytes.
fn decompress_exact(z: &[u8], len: usize, out: &mut Vec<u8>) -> std::io::Result<()> {
    out.clear();
    out.reserve_exact(len);
    // `try_with`: during thread or process exit (an atexit report, as the interposer writes)
    // thread-locals are gone; decode with a fresh context then.
    let reused = DECOMPRESSOR
        .try_with(|cell| {
            let Ok(mut slot) = cell.try_borrow_mut() else {
                return None;
            };
            let d = match &mut *slot {
                Some(d) => d,
                None => slot.insert(zstd::bulk::Decompressor::new().ok()?),
            };
            Some(d.decompress_to_buffer(z, out))
        })
        .ok()
        .flatten();
    match reused {
        Some(result) => result.map(|_| ()),
        None => {
            *out = zstd::bulk::decompress(z, len)?;
            Ok(())
        }
    }
}

/// Like [`load_chunk`], decompressing into `payload` (replacing its contents).
pub(crate) fn load_chunk_into(
    bytes: &[u8],
    offset: u64,
    chunk_type: ChunkType,
    index: usize,
    payload: &mut Vec<u8>,
) -> Result<ChunkHeader, FormatError> {
    let corrupt = |reason: String| FormatError::CorruptChunk {
        chunk_type,
        index,
        offset,
        reason,
    };
    let start = usize::try_from(offset)
        .ok()
        .filter(|s| *s <= bytes.len())
        .ok_or_else(|| corrupt("offset beyond the end of the file".into()))?;
    let header = ChunkHeader::parse(&bytes[start..]).map_err(corrupt)?;
    let want = match chunk_type {
        ChunkType::Events => CHUNK_TYPE_EVENTS,
        ChunkType::Blobs => CHUNK_TYPE_BLOBS,
    };
    if header.chunk_type != want {
        return Err(corrupt(format!(
            "chunk type {} is not a {chunk_type}",
            header.chunk_type
        )));
    }
    let pstart = start + CHUNK_HEADER_LEN;
    let pend = pstart
        .checked_add(header.payload_zlen as usize)
        .filter(|e| *e <= bytes.len())
        .ok_or_else(|| corrupt("payload runs past the end of the file".into()))?;
    let z = &bytes[pstart..pend];
    if !sums_match(crc32fast::hash(z) == header.payload_crc) {
        return Err(corrupt("payload checksum mismatch".into()));
    }
    if has_raw_suffix(header.encoding) {
        // Encodings 2 and 3: u32 frame length, the zstd frame, then the payload's uncompressed suffix.
        let frame_len = z
            .get(..4)
            .map(|b| u32_at(b, 0) as usize)
            .ok_or_else(|| corrupt("payload shorter than its frame length".into()))?;
        let frame_end = frame_len
            .checked_add(4)
            .filter(|e| *e <= z.len())
            .ok_or_else(|| corrupt("zstd frame runs past the payload".into()))?;
        let suffix = &z[frame_end..];
        let framed_len = (header.payload_len as usize)
            .checked_sub(suffix.len())
            .ok_or_else(|| corrupt("uncompressed suffix longer than the payload".into()))?;
        decompress_exact(&z[4..frame_end], framed_len, payload)
            .map_err(|e| corrupt(format!("payload does not decompress: {e}")))?;
        payload.extend_from_slice(suffix);
    } else {
        decompress_exact(z, header.payload_len as usize, payload)
            .map_err(|e| corrupt(format!("payload does not decompress: {e}")))?;
    }
    if payload.len() != header.payload_len as usize {
        return Err(corrupt("payload has the wrong uncompressed length".into()));
    }
    Ok(header)
}

/// A finished trace, opened for reading. Cheap to share between threads (`Send + Sync`).
pub struct TraceReader {
    data: Storage,
    header: TraceHeader,
    footer: FooterFixed,
    /// File offset of the event-chunk entries.
    entries_at: usize,
    /// File offset of the blob-chunk entries.
    blob_entries_at: usize,
    footer_offset: u64,
    chunks_start: u64,
    blob_tables: Vec<OnceLock<Result<Arc<BlobTable>, String>>>,
}

impl std::fmt::Debug for TraceReader {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TraceReader")
            .field("file_len", &self.file_len())
            .field("events", &self.event_count())
            .field("chunks", &self.chunk_count())
            .finish()
    }
}

impl TraceReader {
    /// Maps `path` and opens it: reads the header, the trailer and the footer index. Does no
    /// per-event work.
    pub fn open(path: &Path) -> Result<Self, FormatError> {
        let file = File::open(path)?;
        let len = file.metadata()?.len();
        if len == 0 {
            return Err(FormatError::NotATrace);
        }
        // SAFETY: the map is read-only and private to this reader. If another process truncates or
        // rewrites the file while it is mapped, reads may see changed bytes (every chunk is checked
        // against its CRC before use) or fault; hwrr never modifies a finished trace in place.
        let map = unsafe { memmap2::Mmap::map(&file)? };
        Self::with_storage(Storage::Mapped(map))
    }

    /// Opens a trace held in memory.
    pub fn from_bytes(bytes: Vec<u8>) -> Result<Self, FormatError> {
        Self::with_storage(Storage::Owned(bytes))
    }

    fn with_storage(data: Storage) -> Result<Self, FormatError> {
        let bytes = data.bytes();
        let parsed = parse_header(bytes)?;
        let file_len = bytes.len() as u64;
        let missing = |reason: &str| FormatError::MissingTrailer {
            reason: reason.into(),
        };
        if bytes.len() < parsed.chunks_start as usize + TRAILER_LEN {
            return Err(missing("file ends before a trailer could fit"));
        }
        let trailer =
            Trailer::parse(&bytes[bytes.len() - TRAILER_LEN..]).map_err(|r| missing(&r))?;
        let footer_end = trailer
            .footer_offset
            .checked_add(trailer.footer_len)
            .ok_or_else(|| missing("trailer points outside the file"))?;
        if trailer.footer_offset < parsed.chunks_start
            || footer_end != file_len - TRAILER_LEN as u64
        {
            return Err(missing("trailer points outside the file"));
        }
        let footer_offset = trailer.footer_offset;
        let bad_footer = |reason: String| FormatError::CorruptFooter {
            offset: footer_offset,
            reason,
        };
        let footer_bytes = &bytes[footer_offset as usize..footer_end as usize];
        if !sums_match(crc32fast::hash(footer_bytes) == trailer.footer_crc) {
            return Err(bad_footer("footer checksum mismatch".into()));
        }
        let footer = FooterFixed::parse(footer_bytes).map_err(bad_footer)?;
        let expected_len = footer
            .event_chunks
            .checked_mul(EVENT_ENTRY_LEN as u64)
            .and_then(|e| {
                footer
                    .blob_chunks
                    .checked_mul(BLOB_ENTRY_LEN as u64)
                    .and_then(|b| b.checked_add(e))
            })
            .and_then(|x| x.checked_add(FOOTER_FIXED_LEN as u64));
        if expected_len != Some(trailer.footer_len) {
            return Err(bad_footer(
                "footer length does not match its entry counts".into(),
            ));
        }
        let first_seq = parsed
            .header
            .start_state
            .as_ref()
            .map_or(0, |s| s.first_seq);
        if footer.first_seq != first_seq {
            return Err(bad_footer(format!(
                "footer says the first event is {}, the header says {first_seq}",
                footer.first_seq
            )));
        }
        let entries_at = footer_offset as usize + FOOTER_FIXED_LEN;
        let blob_entries_at = entries_at + footer.event_chunks as usize * EVENT_ENTRY_LEN;
        let blob_chunks = footer.blob_chunks as usize;
        let mut reader = TraceReader {
            header: parsed.header,
            footer,
            entries_at,
            blob_entries_at,
            footer_offset,
            chunks_start: parsed.chunks_start,
            blob_tables: (0..blob_chunks).map(|_| OnceLock::new()).collect(),
            data,
        };
        reader.check_index().map_err(bad_footer)?;
        let prefix = parsed.prefix;
        if prefix.rom_blob != NO_ROM {
            let rom =
                reader
                    .blob(prefix.rom_blob)
                    .map_err(|reason| FormatError::CorruptHeader {
                        reason: format!("ROM blob: {reason}"),
                    })?;
            if rom.len() as u64 != prefix.rom_len {
                return Err(FormatError::CorruptHeader {
                    reason: "ROM blob has the wrong length".into(),
                });
            }
            reader.header.rom = Some(rom);
        }
        Ok(reader)
    }

    /// Checks that the footer entries describe a plausible layout: chunks inside the chunk area, in
    /// file order, dense sequence numbers and blob ids, consistent totals. O(chunks), no decoding.
    fn check_index(&self) -> Result<(), String> {
        let mut next_seq = self.footer.first_seq;
        let mut last_t = 0u64;
        let mut end = self.chunks_start;
        let mut total = 0u64;
        for i in 0..self.chunk_count() {
            let c = self.chunk(i);
            if c.offset < end || c.len < CHUNK_HEADER_LEN as u64 {
                return Err(format!(
                    "event chunk {i} overlaps its predecessor or is too short"
                ));
            }
            end = c
                .offset
                .checked_add(c.len)
                .filter(|e| *e <= self.footer_offset)
                .ok_or_else(|| format!("event chunk {i} runs into the footer"))?;
            if c.first_seq != next_seq || c.count == 0 {
                return Err(format!(
                    "event chunk {i} starts at seq {} instead of {next_seq}",
                    c.first_seq
                ));
            }
            if c.first_t_ns < last_t || c.last_t_ns < c.first_t_ns {
                return Err(format!("event chunk {i} has timestamps out of order"));
            }
            last_t = c.last_t_ns;
            next_seq = next_seq
                .checked_add(c.count as u64)
                .ok_or("sequence numbers overflow")?;
            total += c.count as u64;
        }
        if total != self.footer.event_count {
            return Err(format!(
                "chunks hold {total} events, the footer says {}",
                self.footer.event_count
            ));
        }
        let by_kind = self
            .footer
            .counts
            .iter()
            .try_fold(0u64, |a, c| a.checked_add(*c));
        if by_kind != Some(total) {
            return Err("counts by kind do not add up to the event count".into());
        }
        let mut next_blob = 0u64;
        let mut end = self.chunks_start;
        for i in 0..self.footer.blob_chunks as usize {
            let b = self.blob_chunk(i);
            if b.offset < end || b.len < CHUNK_HEADER_LEN as u64 {
                return Err(format!(
                    "blob chunk {i} overlaps its predecessor or is too short"
                ));
            }
            end = b
                .offset
                .checked_add(b.len)
                .filter(|e| *e <= self.footer_offset)
                .ok_or_else(|| format!("blob chunk {i} runs into the footer"))?;
            if b.first_blob != next_blob {
                return Err(format!(
                    "blob chunk {i} starts at blob {} instead of {next_blob}",
                    b.first_blob
                ));
            }
            next_blob = next_blob
                .checked_add(b.count as u64)
                .ok_or("blob ids overflow")?;
        }
        if next_blob != self.footer.blob_count {
            return Err("blob chunks do not add up to the blob count".into());
        }
        Ok(())
    }

    fn bytes(&self) -> &[u8] {
        self.data.bytes()
    }

    /// The trace header, with `rom` filled from its blob.
    pub fn header(&self) -> &TraceHeader {
        &self.header
    }

    /// File length in bytes.
    pub fn file_len(&self) -> u64 {
        self.bytes().len() as u64
    }

    /// Number of events.
    pub fn event_count(&self) -> u64 {
        self.footer.event_count
    }

    /// Sequence number of the first event (`header.start_state.first_seq`, else 0).
    pub fn first_seq(&self) -> u64 {
        self.footer.first_seq
    }

    /// One past the last sequence number.
    pub fn end_seq(&self) -> u64 {
        self.footer.first_seq + self.footer.event_count
    }

    /// Number of event chunks.
    pub fn chunk_count(&self) -> usize {
        self.footer.event_chunks as usize
    }

    /// Number of blob chunks.
    pub fn blob_chunk_count(&self) -> usize {
        self.footer.blob_chunks as usize
    }

    /// Number of distinct blobs.
    pub fn blob_count(&self) -> u64 {
        self.footer.blob_count
    }

    /// The footer entry of event chunk `i` (`i < chunk_count()`), read in place.
    pub fn chunk(&self, i: usize) -> ChunkInfo {
        let at = self.entries_at + i * EVENT_ENTRY_LEN;
        ChunkInfo::parse(&self.bytes()[at..at + EVENT_ENTRY_LEN])
    }

    /// The footer entry of blob chunk `i` (`i < blob_chunk_count()`), read in place.
    pub fn blob_chunk(&self, i: usize) -> BlobChunkInfo {
        let at = self.blob_entries_at + i * BLOB_ENTRY_LEN;
        BlobChunkInfo::parse(&self.bytes()[at..at + BLOB_ENTRY_LEN])
    }

    /// Every event chunk's footer entry.
    pub fn chunks(&self) -> Vec<ChunkInfo> {
        (0..self.chunk_count()).map(|i| self.chunk(i)).collect()
    }

    /// Events by kind, from the footer.
    pub fn counts(&self) -> KindCounts {
        KindCounts(self.footer.counts)
    }

    /// First and last timestamp, from the footer (`None` for an empty trace).
    pub fn time_range(&self) -> Option<(u64, u64)> {
        let n = self.chunk_count();
        (n > 0).then(|| (self.chunk(0).first_t_ns, self.chunk(n - 1).last_t_ns))
    }

    /// Binary search over the footer entries: the first chunk for which `past` is false.
    fn partition_chunks(&self, past: impl Fn(&ChunkInfo) -> bool) -> usize {
        let (mut lo, mut hi) = (0usize, self.chunk_count());
        while lo < hi {
            let mid = lo + (hi - lo) / 2;
            if past(&self.chunk(mid)) {
                lo = mid + 1;
            } else {
                hi = mid;
            }
        }
        lo
    }

    /// Index of the event chunk holding `seq`.
    pub fn chunk_of_seq(&self, seq: u64) -> Result<usize, FormatError> {
        if seq < self.first_seq() || seq >= self.end_seq() {
            return Err(FormatError::SeqOutOfRange {
                seq,
                first: self.first_seq(),
                end: self.end_seq(),
            });
        }
        Ok(self.partition_chunks(|c| c.first_seq + c.count as u64 <= seq))
    }

    /// Decodes event chunk `index`.
    pub fn read_chunk(&self, index: usize) -> Result<Vec<Event>, FormatError> {
        if index >= self.chunk_count() {
            return Err(FormatError::ChunkOutOfRange {
                index,
                count: self.chunk_count(),
            });
        }
        let mut events = Vec::new();
        self.read_chunk_into(index, &mut events)?;
        Ok(events)
    }

    /// Decodes event chunk `index` into `out` (replacing its contents, reusing its allocation): the
    /// fast way to walk a trace chunk by chunk.
    pub fn read_chunk_into(&self, index: usize, out: &mut Vec<Event>) -> Result<(), FormatError> {
        if index >= self.chunk_count() {
            return Err(FormatError::ChunkOutOfRange {
                index,
                count: self.chunk_count(),
            });
        }
        let info = self.chunk(index);
        let mut cols = ChunkColumns::default();
        self.read_chunk_checked(index, &info, u64::MAX, &mut cols)?;
        out.clear();
        out.reserve(cols.len());
        out.extend(cols.events());
        Ok(())
    }

    /// Decodes event chunk `index` into columns (replacing `out`'s contents, reusing its
    /// allocations): the fastest way to scan a trace.
    pub fn read_chunk_columns(
        &self,
        index: usize,
        out: &mut ChunkColumns,
    ) -> Result<(), FormatError> {
        if index >= self.chunk_count() {
            return Err(FormatError::ChunkOutOfRange {
                index,
                count: self.chunk_count(),
            });
        }
        let info = self.chunk(index);
        self.read_chunk_checked(index, &info, u64::MAX, out)
    }

    /// Decodes event chunk `index`, resolving only blobs from blob chunks that start before
    /// `blob_limit` (the file-order rule `verify` enforces).
    fn read_chunk_checked(
        &self,
        index: usize,
        info: &ChunkInfo,
        blob_limit: u64,
        out: &mut ChunkColumns,
    ) -> Result<(), FormatError> {
        // A nested or exiting thread (thread-locals gone at process exit) gets a fresh buffer.
        let reused = PAYLOAD.try_with(|cell| {
            cell.try_borrow_mut().ok().map(|mut payload| {
                self.decode_chunk_with(index, info, blob_limit, out, &mut payload)
            })
        });
        match reused {
            Ok(Some(result)) => result,
            _ => self.decode_chunk_with(index, info, blob_limit, out, &mut Vec::new()),
        }
    }

    fn decode_chunk_with(
        &self,
        index: usize,
        info: &ChunkInfo,
        blob_limit: u64,
        out: &mut ChunkColumns,
        payload: &mut Vec<u8>,
    ) -> Result<(), FormatError> {
        let corrupt = |reason: String| FormatError::CorruptChunk {
            chunk_type: ChunkType::Events,
            index,
            offset: info.offset,
            reason,
        };
        let h = load_chunk_into(self.bytes(), info.offset, ChunkType::Events, index, payload)?;
        if h.total_len() != info.len
            || h.first_id != info.first_seq
            || h.count != info.count
            || h.first_t_ns != info.first_t_ns
            || h.last_t_ns != info.last_t_ns
        {
            return Err(corrupt(
                "chunk header disagrees with the footer index".into(),
            ));
        }
        let shape = ChunkShape {
            encoding: h.encoding,
            first_seq: h.first_id,
            count: h.count,
            first_t_ns: h.first_t_ns,
            last_t_ns: h.last_t_ns,
            counts: h.counts,
        };
        let blobs = LimitedBlobs {
            reader: self,
            before_offset: blob_limit,
        };
        decode_columns(payload, &shape, &blobs, out).map_err(corrupt)
    }

    /// Iterates over every event.
    pub fn iter(&self) -> Events<'_> {
        Events {
            reader: self,
            next_chunk: 0,
            buffered: Vec::new(),
            pos: 0,
            skip_below: 0,
            failed: false,
        }
    }

    /// Iterates from the event with sequence number `seq` (from the first event when `seq` is below
    /// it; nothing when `seq` is past the end). Finds the chunk by binary search.
    pub fn iter_from(&self, seq: u64) -> Events<'_> {
        let start = seq.max(self.first_seq());
        let next_chunk = match self.chunk_of_seq(start) {
            Ok(i) => i,
            Err(_) => self.chunk_count(),
        };
        Events {
            reader: self,
            next_chunk,
            buffered: Vec::new(),
            pos: 0,
            skip_below: start,
            failed: false,
        }
    }

    /// Sequence number of the first event with `t_ns >= t_ns`, or `None` when every event is
    /// older (or the chunk holding it is damaged: see [`try_seq_at_time`](Self::try_seq_at_time)).
    pub fn seq_at_time(&self, t_ns: u64) -> Option<u64> {
        self.try_seq_at_time(t_ns).ok().flatten()
    }

    /// Like [`seq_at_time`](Self::seq_at_time), reporting a damaged chunk as an error.
    pub fn try_seq_at_time(&self, t_ns: u64) -> Result<Option<u64>, FormatError> {
        let i = self.partition_chunks(|c| c.last_t_ns < t_ns);
        if i == self.chunk_count() {
            return Ok(None);
        }
        let info = self.chunk(i);
        if info.first_t_ns >= t_ns {
            return Ok(Some(info.first_seq));
        }
        let events = self.read_chunk(i)?;
        Ok(events.iter().find(|e| e.t_ns >= t_ns).map(|e| e.seq))
    }

    /// The bytes of blob `id`.
    pub fn read_blob(&self, id: u64) -> Result<Vec<u8>, FormatError> {
        self.blob(id).map_err(|reason| FormatError::CorruptFooter {
            offset: self.footer_offset,
            reason,
        })
    }

    fn blob_table(&self, i: usize) -> Result<Arc<BlobTable>, String> {
        let cell = &self.blob_tables[i];
        cell.get_or_init(|| {
            let info = self.blob_chunk(i);
            let (h, payload) = load_chunk(self.bytes(), info.offset, ChunkType::Blobs, i)
                .map_err(|e| e.to_string())?;
            if h.total_len() != info.len || h.first_id != info.first_blob || h.count != info.count {
                return Err(format!(
                    "blob chunk {i} at offset {}: header disagrees with the footer index",
                    info.offset
                ));
            }
            decode_blobs(payload, h.count)
                .map(Arc::new)
                .map_err(|r| format!("blob chunk {i} at offset {}: {r}", info.offset))
        })
        .clone()
    }

    /// Finds the blob chunk holding blob `id`.
    fn blob_chunk_of(&self, id: u64) -> Result<usize, String> {
        let (mut lo, mut hi) = (0usize, self.blob_chunk_count());
        while lo < hi {
            let mid = lo + (hi - lo) / 2;
            let b = self.blob_chunk(mid);
            if b.first_blob + b.count as u64 <= id {
                lo = mid + 1;
            } else {
                hi = mid;
            }
        }
        if lo == self.blob_chunk_count() {
            return Err(format!("blob {id} does not exist"));
        }
        Ok(lo)
    }

    fn blob(&self, id: u64) -> Result<Vec<u8>, String> {
        let i = self.blob_chunk_of(id)?;
        let table = self.blob_table(i)?;
        let first = self.blob_chunk(i).first_blob;
        let range = table
            .ranges
            .get((id - first) as usize)
            .ok_or_else(|| format!("blob {id} does not exist"))?;
        Ok(table.payload[range.clone()].to_vec())
    }

    /// Checks every checksum, every content hash, the index against every chunk header, that
    /// chunks tile the file, and that every blob an event references lies in an earlier chunk.
    pub fn verify(&self) -> Result<VerifyReport, FormatError> {
        let mut report = VerifyReport {
            file_bytes: self.file_len(),
            ..VerifyReport::default()
        };
        let (mut e, mut b) = (0usize, 0usize);
        let mut pos = self.chunks_start;
        let mut scratch = ChunkColumns::default();
        while e < self.chunk_count() || b < self.blob_chunk_count() {
            let next_event = (e < self.chunk_count()).then(|| self.chunk(e));
            let next_blob = (b < self.blob_chunk_count()).then(|| self.blob_chunk(b));
            let take_blob = match (next_event, next_blob) {
                (Some(ev), Some(bl)) => bl.offset < ev.offset,
                (None, Some(_)) => true,
                _ => false,
            };
            if take_blob {
                let bl = self.blob_chunk(b);
                if bl.offset != pos {
                    return Err(FormatError::CorruptChunk {
                        chunk_type: ChunkType::Blobs,
                        index: b,
                        offset: bl.offset,
                        reason: format!("expected a chunk at offset {pos}"),
                    });
                }
                self.blob_table(b)
                    .map_err(|reason| FormatError::CorruptChunk {
                        chunk_type: ChunkType::Blobs,
                        index: b,
                        offset: bl.offset,
                        reason,
                    })?;
                report.blobs += bl.count as u64;
                pos = bl.offset + bl.len;
                b += 1;
            } else {
                let info = self.chunk(e);
                if info.offset != pos {
                    return Err(FormatError::CorruptChunk {
                        chunk_type: ChunkType::Events,
                        index: e,
                        offset: info.offset,
                        reason: format!("expected a chunk at offset {pos}"),
                    });
                }
                self.read_chunk_checked(e, &info, info.offset, &mut scratch)?;
                report.events += scratch.len() as u64;
                pos = info.offset + info.len;
                e += 1;
            }
        }
        if pos != self.footer_offset {
            return Err(FormatError::CorruptFooter {
                offset: self.footer_offset,
                reason: format!(
                    "{} unindexed bytes before the footer",
                    self.footer_offset - pos
                ),
            });
        }
        let mut counts = KindCounts::default();
        // Kind counts: re-derive from the chunk headers, which decode_events checked against the
        // payloads.
        for i in 0..self.chunk_count() {
            let info = self.chunk(i);
            let start = info.offset as usize;
            let h = ChunkHeader::parse(&self.bytes()[start..]).map_err(|reason| {
                FormatError::CorruptChunk {
                    chunk_type: ChunkType::Events,
                    index: i,
                    offset: info.offset,
                    reason,
                }
            })?;
            for (tag, c) in KindTag::ALL.iter().zip(h.counts) {
                counts.0[*tag as usize] += c as u64;
            }
        }
        if counts.0 != self.footer.counts {
            return Err(FormatError::CorruptFooter {
                offset: self.footer_offset,
                reason: "counts by kind disagree with the chunks".into(),
            });
        }
        report.event_chunks = e;
        report.blob_chunks = b;
        Ok(report)
    }
}

/// Resolves blobs through the reader, refusing blobs stored at or after `before_offset`.
struct LimitedBlobs<'a> {
    reader: &'a TraceReader,
    before_offset: u64,
}

impl BlobSource for LimitedBlobs<'_> {
    fn blob(&self, id: u64) -> Result<Vec<u8>, String> {
        let i = self.reader.blob_chunk_of(id)?;
        if self.reader.blob_chunk(i).offset >= self.before_offset {
            return Err(format!(
                "blob {id} is stored after the chunk that references it"
            ));
        }
        self.reader.blob(id)
    }
}

/// Iterator over a trace's events, decoding one chunk at a time.
pub struct Events<'a> {
    reader: &'a TraceReader,
    next_chunk: usize,
    /// The decoded chunk; events before `pos` have been handed out (replaced by placeholders).
    buffered: Vec<Event>,
    pos: usize,
    skip_below: u64,
    failed: bool,
}

impl Iterator for Events<'_> {
    type Item = Result<Event, FormatError>;

    fn next(&mut self) -> Option<Self::Item> {
        loop {
            if let Some(slot) = self.buffered.get_mut(self.pos) {
                self.pos += 1;
                if slot.seq < self.skip_below {
                    continue;
                }
                // Move the event out without freeing the chunk buffer, which the next chunk reuses.
                let placeholder = Event::new(0, 0, crate::event::EventKind::Reset);
                return Some(Ok(std::mem::replace(slot, placeholder)));
            }
            if self.failed || self.next_chunk >= self.reader.chunk_count() {
                return None;
            }
            let i = self.next_chunk;
            self.next_chunk += 1;
            self.pos = 0;
            match self.reader.read_chunk_into(i, &mut self.buffered) {
                Ok(()) => {}
                Err(e) => {
                    self.buffered.clear();
                    self.failed = true;
                    return Some(Err(e));
                }
            }
        }
    }
}
