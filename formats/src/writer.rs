//! The streaming trace writer.

use std::collections::HashMap;
use std::fs::File;
use std::io::{BufWriter, Write};
use std::path::Path;
use std::time::{Duration, Instant};

use crate::codec::{encode_blobs, ChunkEncoder};
use crate::error::FormatError;
use crate::event::{Event, EventKind, KindCounts, KindTag};
use crate::header::TraceHeader;
use crate::layout::*;

/// Uncompressed bytes at which the open chunk is closed whatever its event count, so a chunk of
/// large inline data (marker labels) stays far below the payload limit readers enforce.
const MAX_OPEN_CHUNK_BYTES: usize = 64 << 20;

/// How a [`TraceWriter`] cuts and compresses chunks.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct WriterOptions {
    /// Maximum number of events per event chunk: the crash-loss bound in events.
    pub chunk_events: usize,
    /// Maximum age of the open chunk before it is written out: the crash-loss bound in time. Checked
    /// on `append` (every few hundred events) and on [`TraceWriter::tick`].
    pub flush_interval: Option<Duration>,
    /// zstd compression level of chunk payloads.
    pub zstd_level: i32,
    /// Pending blob bytes that force a blob chunk out before the event chunk is full.
    pub blob_chunk_bytes: usize,
    /// Event chunk encoding, which also sets the file's version: [`EventEncoding::V3`] (the
    /// default) writes version 3 files, [`EventEncoding::V2`] and [`EventEncoding::V1`] version 2
    /// and 1 files that older readers read.
    pub event_encoding: EventEncoding,
    /// With [`EventEncoding::V3`] or [`EventEncoding::V2`], event chunks of fewer events than this
    /// are written in encoding 1 (a version 2 or 3 file may mix both): below about a thousand
    /// events, the rANS encodings' per-chunk frequency tables cost more bytes and time than they
    /// save (measured on the corpus: 512-event chunks are 5–8 % larger in encoding 2). 0 writes
    /// every chunk in the file's own encoding.
    pub v2_min_chunk_events: usize,
}

/// The event chunk encodings a writer can produce (`docs/FORMAT.md` §3.2, §3.3).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum EventEncoding {
    /// Encoding 1 (format version 1): time deltas as varints, compressed by zstd with the rest.
    V1,
    /// Encoding 2 (format version 2): time deltas rANS-coded under access-key contexts.
    V2,
    /// Encoding 3 (format version 3): encoding 2 with access-key offsets coded as differences and
    /// the time tables stored as columns, which zstd compresses better.
    #[default]
    V3,
}

impl EventEncoding {
    /// The chunk `encoding` byte.
    pub fn chunk_encoding(self) -> u8 {
        match self {
            EventEncoding::V1 => ENCODING_V1,
            EventEncoding::V2 => ENCODING_V2,
            EventEncoding::V3 => ENCODING_V3,
        }
    }

    /// The file `version` of a trace whose event chunks use this encoding.
    pub fn file_version(self) -> u16 {
        match self {
            EventEncoding::V1 => FORMAT_VERSION_1,
            EventEncoding::V2 => FORMAT_VERSION_2,
            EventEncoding::V3 => FORMAT_VERSION,
        }
    }
}

impl Default for WriterOptions {
    /// 64 Ki events per chunk, at most 100 ms of events lost in a crash, zstd level 3: the setting
    /// the size and speed targets are measured at (see `benches/format.rs`).
    fn default() -> Self {
        WriterOptions {
            chunk_events: 64 * 1024,
            flush_interval: Some(Duration::from_millis(100)),
            zstd_level: 3,
            blob_chunk_bytes: 4 << 20,
            event_encoding: EventEncoding::default(),
            v2_min_chunk_events: 1024,
        }
    }
}

/// What a finished trace holds.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct WriteSummary {
    /// Events written.
    pub events: u64,
    /// Event chunks written.
    pub event_chunks: usize,
    /// Blob chunks written.
    pub blob_chunks: usize,
    /// Distinct blobs stored.
    pub blobs: u64,
    /// Total file length in bytes.
    pub bytes: u64,
    /// Events by kind.
    pub counts: KindCounts,
}

/// De-duplicating store of blobs waiting for their chunk.
struct BlobStore {
    ids: HashMap<[u8; 32], u64>,
    pending: Vec<(blake3::Hash, Vec<u8>)>,
    pending_bytes: usize,
    next_id: u64,
}

impl BlobStore {
    fn intern(&mut self, bytes: &[u8]) -> u64 {
        let hash = blake3::hash(bytes);
        if let Some(id) = self.ids.get(hash.as_bytes()) {
            return *id;
        }
        let id = self.next_id;
        self.next_id += 1;
        self.ids.insert(*hash.as_bytes(), id);
        self.pending_bytes += bytes.len() + 36;
        self.pending.push((hash, bytes.to_vec()));
        id
    }
}

/// Writes a trace: header, then chunks as events arrive, then footer and trailer on
/// [`finish`](TraceWriter::finish). Every prefix of what it has flushed is a recoverable trace.
pub struct TraceWriter<W: Write> {
    out: W,
    opts: WriterOptions,
    encoder: ChunkEncoder,
    compressor: zstd::bulk::Compressor<'static>,
    blobs: BlobStore,
    first_seq: u64,
    next_seq: u64,
    last_t_ns: Option<u64>,
    position: u64,
    chunk_opened: Instant,
    chunks: Vec<ChunkInfo>,
    blob_chunks: Vec<BlobChunkInfo>,
    counts: KindCounts,
}

impl TraceWriter<BufWriter<File>> {
    /// Creates (or truncates) `path` and writes the header.
    pub fn create(
        path: &Path,
        header: &TraceHeader,
        opts: WriterOptions,
    ) -> Result<Self, FormatError> {
        let file = File::create(path)?;
        TraceWriter::new(BufWriter::with_capacity(1 << 20, file), header, opts)
    }
}

impl<W: Write> TraceWriter<W> {
    /// Writes the header (and the ROM blob, if any) to `out`.
    pub fn new(out: W, header: &TraceHeader, opts: WriterOptions) -> Result<Self, FormatError> {
        let compressor = zstd::bulk::Compressor::new(opts.zstd_level)?;
        let encoding = opts.event_encoding;
        let v2_min_events = opts.v2_min_chunk_events;
        let first_seq = header.start_state.as_ref().map_or(0, |s| s.first_seq);
        let mut w = TraceWriter {
            out,
            opts,
            encoder: ChunkEncoder::new(encoding.chunk_encoding(), v2_min_events),
            compressor,
            blobs: BlobStore {
                ids: HashMap::new(),
                pending: Vec::new(),
                pending_bytes: 0,
                next_id: 0,
            },
            first_seq,
            next_seq: first_seq,
            last_t_ns: None,
            position: 0,
            chunk_opened: Instant::now(),
            chunks: Vec::new(),
            blob_chunks: Vec::new(),
            counts: KindCounts::default(),
        };
        let json =
            serde_json::to_vec(header).map_err(|e| FormatError::HeaderEncode(e.to_string()))?;
        let json_z = zstd::bulk::compress(&json, 3)?;
        let (rom_blob, rom_len) = match &header.rom {
            Some(rom) => (w.blobs.intern(rom), rom.len() as u64),
            None => (NO_ROM, 0),
        };
        let prefix = FileHeaderPrefix {
            version: w.opts.event_encoding.file_version(),
            json_zlen: u32::try_from(json_z.len())
                .map_err(|_| FormatError::HeaderEncode("header too large".into()))?,
            json_len: u32::try_from(json.len())
                .map_err(|_| FormatError::HeaderEncode("header too large".into()))?,
            json_crc: crc32fast::hash(&json_z),
            rom_blob,
            rom_len,
        };
        w.write_bytes(&prefix.encode())?;
        w.write_bytes(&json_z)?;
        w.write_pending_blobs()?;
        w.out.flush()?;
        Ok(w)
    }

    fn write_bytes(&mut self, b: &[u8]) -> Result<(), FormatError> {
        self.out.write_all(b)?;
        self.position += b.len() as u64;
        Ok(())
    }

    /// Appends one event. Its `seq` must be the next sequence number and its `t_ns` must not be
    /// below the previous event's.
    pub fn append(&mut self, ev: &Event) -> Result<(), FormatError> {
        if ev.seq != self.next_seq {
            return Err(FormatError::SeqNotDense {
                expected: self.next_seq,
                found: ev.seq,
            });
        }
        if let Some(previous) = self.last_t_ns {
            if ev.t_ns < previous {
                return Err(FormatError::TimeWentBackwards {
                    seq: ev.seq,
                    found: ev.t_ns,
                    previous,
                });
            }
        }
        if self.encoder.is_empty() {
            self.chunk_opened = Instant::now();
        }
        let blobs = &mut self.blobs;
        self.encoder
            .push(ev, &mut |b| blobs.intern(b))
            .map_err(|reason| FormatError::InvalidEvent {
                seq: ev.seq,
                reason,
            })?;
        self.next_seq += 1;
        self.last_t_ns = Some(ev.t_ns);
        let open = self.encoder.len() as usize;
        // Only marker labels and IRQ setup flags are unbounded; every other event adds at most a
        // few dozen bytes, so summing the streams every 64 events (and after each of those) keeps
        // the bound.
        let check_size =
            open % 64 == 0 || matches!(ev.kind, EventKind::Marker(_) | EventKind::IrqSetup(_));
        if open >= self.opts.chunk_events
            || (check_size && self.encoder.buffered_bytes() >= MAX_OPEN_CHUNK_BYTES)
        {
            self.flush()?;
        } else if self.blobs.pending_bytes >= self.opts.blob_chunk_bytes {
            self.write_pending_blobs()?;
        } else if open % 256 == 0 {
            self.tick()?;
        }
        Ok(())
    }

    /// Writes the open chunk (after the blobs it references) and flushes the underlying writer, so
    /// everything appended so far survives the process being killed.
    pub fn flush(&mut self) -> Result<(), FormatError> {
        self.write_pending_blobs()?;
        if !self.encoder.is_empty() {
            let chunk = self.encoder.finish();
            let framed = chunk.payload.len() - chunk.raw_suffix;
            let z = if has_raw_suffix(chunk.encoding) {
                // The entropy-coded suffix gains nothing from zstd and would slow both ways.
                let frame = self.compressor.compress(&chunk.payload[..framed])?;
                let mut z = Vec::with_capacity(4 + frame.len() + chunk.raw_suffix);
                z.extend_from_slice(&(frame.len() as u32).to_le_bytes());
                z.extend_from_slice(&frame);
                z.extend_from_slice(&chunk.payload[framed..]);
                z
            } else {
                self.compressor.compress(&chunk.payload)?
            };
            let header = ChunkHeader {
                chunk_type: CHUNK_TYPE_EVENTS,
                encoding: chunk.encoding,
                payload_zlen: u32::try_from(z.len()).map_err(|_| chunk_too_big(chunk.first_seq))?,
                payload_len: u32::try_from(chunk.payload.len())
                    .ok()
                    .filter(|l| *l <= MAX_PAYLOAD_LEN)
                    .ok_or_else(|| chunk_too_big(chunk.first_seq))?,
                first_id: chunk.first_seq,
                count: chunk.count,
                first_t_ns: chunk.first_t_ns,
                last_t_ns: chunk.last_t_ns,
                counts: chunk.counts,
                payload_crc: crc32fast::hash(&z),
            };
            let offset = self.position;
            self.write_bytes(&header.encode())?;
            self.write_bytes(&z)?;
            self.chunks.push(ChunkInfo {
                offset,
                len: header.total_len(),
                first_seq: chunk.first_seq,
                first_t_ns: chunk.first_t_ns,
                last_t_ns: chunk.last_t_ns,
                count: chunk.count,
            });
            for (tag, c) in KindTag::ALL.iter().zip(chunk.counts) {
                self.counts.0[*tag as usize] += c as u64;
            }
        }
        self.out.flush()?;
        Ok(())
    }

    fn write_pending_blobs(&mut self) -> Result<(), FormatError> {
        if self.blobs.pending.is_empty() {
            return Ok(());
        }
        let pending = std::mem::take(&mut self.blobs.pending);
        self.blobs.pending_bytes = 0;
        let count = pending.len() as u32;
        let first_blob = self.blobs.next_id - count as u64;
        let payload = encode_blobs(&pending);
        let z = self.compressor.compress(&payload)?;
        let too_big = || FormatError::InvalidEvent {
            seq: self.next_seq,
            reason: "blob chunk exceeds the payload limit".into(),
        };
        let header = ChunkHeader {
            chunk_type: CHUNK_TYPE_BLOBS,
            encoding: ENCODING_V1,
            payload_zlen: u32::try_from(z.len()).map_err(|_| too_big())?,
            payload_len: u32::try_from(payload.len())
                .ok()
                .filter(|l| *l <= MAX_PAYLOAD_LEN)
                .ok_or_else(too_big)?,
            first_id: first_blob,
            count,
            first_t_ns: 0,
            last_t_ns: 0,
            counts: [0; KindTag::COUNT],
            payload_crc: crc32fast::hash(&z),
        };
        let offset = self.position;
        self.write_bytes(&header.encode())?;
        self.write_bytes(&z)?;
        self.blob_chunks.push(BlobChunkInfo {
            offset,
            len: header.total_len(),
            first_blob,
            count,
        });
        Ok(())
    }

    /// Flushes when the open chunk is older than the flush interval. Call it from a timer when
    /// events may stop arriving.
    pub fn tick(&mut self) -> Result<(), FormatError> {
        if let Some(interval) = self.opts.flush_interval {
            if !self.encoder.is_empty() && self.chunk_opened.elapsed() >= interval {
                self.flush()?;
            }
        }
        Ok(())
    }

    /// Events appended so far.
    pub fn events_written(&self) -> u64 {
        self.next_seq - self.first_seq
    }

    /// Bytes handed to the underlying writer so far (the open chunk is not counted).
    pub fn bytes_written(&self) -> u64 {
        self.position
    }

    /// Writes the last chunk, the footer and the trailer.
    pub fn finish(self) -> Result<WriteSummary, FormatError> {
        self.finish_into_inner().map(|(s, _)| s)
    }

    /// Like [`finish`](TraceWriter::finish), and hands back the underlying writer.
    pub fn finish_into_inner(mut self) -> Result<(WriteSummary, W), FormatError> {
        self.flush()?;
        let fixed = FooterFixed {
            event_chunks: self.chunks.len() as u64,
            blob_chunks: self.blob_chunks.len() as u64,
            event_count: self.next_seq - self.first_seq,
            first_seq: self.first_seq,
            blob_count: self.blobs.next_id,
            counts: self.counts.0,
        };
        let tail =
            encode_footer_and_trailer(self.position, &fixed, &self.chunks, &self.blob_chunks);
        self.write_bytes(&tail)?;
        self.out.flush()?;
        let summary = WriteSummary {
            events: fixed.event_count,
            event_chunks: self.chunks.len(),
            blob_chunks: self.blob_chunks.len(),
            blobs: self.blobs.next_id,
            bytes: self.position,
            counts: self.counts,
        };
        Ok((summary, self.out))
    }
}

fn chunk_too_big(seq: u64) -> FormatError {
    FormatError::InvalidEvent {
        seq,
        reason: "event chunk exceeds the payload limit; lower chunk_events".into(),
    }
}
