//! Verification with exit-code semantics, and recovery of damaged or unfinished traces.

use std::fs::File;
use std::io::Write;
use std::path::Path;

use crate::codec::{decode_blobs, decode_events, BlobSource, ChunkShape};
use crate::error::{ChunkType, FormatError};
use crate::event::KindTag;
use crate::layout::*;
use crate::reader::{load_chunk, parse_header, TraceReader, VerifyReport};

/// Why [`verify_file`] failed.
#[derive(Debug, thiserror::Error)]
pub enum VerifyError {
    /// The file could not be read at all (missing, permission denied...).
    #[error("cannot read trace: {0}")]
    Unreadable(FormatError),
    /// The file was read and is damaged; the error names the first bad chunk and its offset.
    #[error("{0}")]
    Corrupt(FormatError),
}

impl VerifyError {
    /// The process exit code `hwrr verify` uses: 2 when unreadable, 1 when corrupt.
    pub fn exit_code(&self) -> i32 {
        match self {
            VerifyError::Unreadable(_) => 2,
            VerifyError::Corrupt(_) => 1,
        }
    }
}

fn classify(e: FormatError) -> VerifyError {
    if matches!(e, FormatError::Io(_)) {
        VerifyError::Unreadable(e)
    } else {
        VerifyError::Corrupt(e)
    }
}

/// Opens `path` and checks everything [`TraceReader::verify`] checks.
pub fn verify_file(path: &Path) -> Result<VerifyReport, VerifyError> {
    let reader = TraceReader::open(path).map_err(classify)?;
    reader.verify().map_err(classify)
}

/// What a recovery scan found.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ScanReport {
    /// Sound event chunks, in file order.
    pub chunks: Vec<ChunkInfo>,
    /// Sound blob chunks, in file order.
    pub blob_chunks: Vec<BlobChunkInfo>,
    /// Events in the sound chunks.
    pub events: u64,
    /// Blobs in the sound blob chunks.
    pub blobs: u64,
    /// Sequence number of the first event.
    pub first_seq: u64,
    /// Events by kind.
    pub counts: [u64; KindTag::COUNT],
    /// File offset where the sound prefix ends.
    pub sound_end: u64,
    /// Why the scan stopped before the end of the file, if it did (`None` when it stopped at a
    /// footer or at the exact end of the file).
    pub stopped_because: Option<String>,
    /// Whether the header's ROM blob is inside the sound prefix with the length the header gives
    /// (true when there is no ROM). When false, the recovered trace has no ROM.
    pub rom_kept: bool,
}

/// Lengths of the blobs stored so far during a scan: a reference must name one of them (the bytes
/// themselves are not needed to check an event chunk, so zeros of the right length stand in).
struct SeenBlobs<'a>(&'a [u32]);

impl BlobSource for SeenBlobs<'_> {
    fn blob(&self, id: u64) -> Result<Vec<u8>, String> {
        match usize::try_from(id).ok().and_then(|i| self.0.get(i)) {
            Some(len) => Ok(vec![0; *len as usize]),
            None => Err(format!("blob {id} is not stored before this chunk")),
        }
    }
}

/// Scans a trace linearly from its header and returns the longest sound prefix of chunks: each
/// chunk's header and payload checksums hold, its payload decodes, its sequence numbers continue the
/// previous chunk's, and every blob it references is stored earlier. The footer, if any, is ignored.
pub fn scan(bytes: &[u8]) -> Result<ScanReport, FormatError> {
    let parsed = parse_header(bytes)?;
    let first_seq = parsed
        .header
        .start_state
        .as_ref()
        .map_or(0, |s| s.first_seq);
    let mut r = ScanReport {
        first_seq,
        ..ScanReport::default()
    };
    let mut pos = parsed.chunks_start;
    let mut next_seq = first_seq;
    let mut last_t = 0u64;
    let mut blob_lens = Vec::new();
    loop {
        let rest = &bytes[pos as usize..];
        if rest.is_empty() {
            break;
        }
        if rest.len() >= FOOTER_MAGIC.len() && rest[..FOOTER_MAGIC.len()] == FOOTER_MAGIC {
            break;
        }
        match scan_one(bytes, pos, &mut r, &mut blob_lens, next_seq, last_t) {
            Ok((len, seq, t)) => {
                pos += len;
                next_seq = seq;
                last_t = t;
            }
            Err(reason) => {
                r.stopped_because = Some(format!("at offset {pos}: {reason}"));
                break;
            }
        }
    }
    r.sound_end = pos;
    r.events = next_seq - first_seq;
    let rom = &parsed.prefix;
    r.rom_kept = rom.rom_blob == NO_ROM
        || usize::try_from(rom.rom_blob)
            .ok()
            .and_then(|i| blob_lens.get(i))
            .is_some_and(|len| *len as u64 == rom.rom_len);
    Ok(r)
}

fn scan_one(
    bytes: &[u8],
    pos: u64,
    r: &mut ScanReport,
    blob_lens: &mut Vec<u32>,
    next_seq: u64,
    last_t: u64,
) -> Result<(u64, u64, u64), String> {
    let h = ChunkHeader::parse(&bytes[pos as usize..])?;
    if h.chunk_type == CHUNK_TYPE_BLOBS {
        let (h, payload) = load_chunk(bytes, pos, ChunkType::Blobs, r.blob_chunks.len())
            .map_err(|e| e.to_string())?;
        if h.first_id != r.blobs {
            return Err(format!(
                "blob chunk starts at blob {} instead of {}",
                h.first_id, r.blobs
            ));
        }
        let table = decode_blobs(payload, h.count)?;
        blob_lens.extend(table.ranges.iter().map(|r| r.len() as u32));
        r.blob_chunks.push(BlobChunkInfo {
            offset: pos,
            len: h.total_len(),
            first_blob: h.first_id,
            count: h.count,
        });
        r.blobs += h.count as u64;
        Ok((h.total_len(), next_seq, last_t))
    } else {
        let (h, payload) =
            load_chunk(bytes, pos, ChunkType::Events, r.chunks.len()).map_err(|e| e.to_string())?;
        if h.first_id != next_seq {
            return Err(format!(
                "chunk starts at seq {} instead of {next_seq}",
                h.first_id
            ));
        }
        if h.first_t_ns < last_t {
            return Err("chunk is older than its predecessor".into());
        }
        let shape = ChunkShape {
            encoding: h.encoding,
            first_seq: h.first_id,
            count: h.count,
            first_t_ns: h.first_t_ns,
            last_t_ns: h.last_t_ns,
            counts: h.counts,
        };
        decode_events(&payload, &shape, &SeenBlobs(blob_lens))?;
        r.chunks.push(ChunkInfo {
            offset: pos,
            len: h.total_len(),
            first_seq: h.first_id,
            first_t_ns: h.first_t_ns,
            last_t_ns: h.last_t_ns,
            count: h.count,
        });
        for (tag, c) in KindTag::ALL.iter().zip(h.counts) {
            r.counts[*tag as usize] += c as u64;
        }
        Ok((h.total_len(), h.first_id + h.count as u64, h.last_t_ns))
    }
}

/// What [`recover`] kept.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RecoverReport {
    /// Events kept.
    pub events: u64,
    /// Event chunks kept.
    pub event_chunks: usize,
    /// Blob chunks kept.
    pub blob_chunks: usize,
    /// Bytes of the input that were not kept (damaged or partial chunks, old footer and trailer).
    pub dropped_bytes: u64,
    /// Length of the recovered trace.
    pub output_bytes: u64,
    /// Why the scan stopped early, if it did.
    pub stopped_because: Option<String>,
    /// Whether the input had a valid footer and trailer.
    pub had_footer: bool,
}

/// Writes the longest sound prefix of `input` (see [`scan`]) to `output` as a complete trace with a
/// fresh footer and trailer. Fails only when the header itself is unreadable or on I/O errors.
pub fn recover(input: &Path, output: &Path) -> Result<RecoverReport, FormatError> {
    let file = File::open(input)?;
    if let (Ok(a), Ok(b)) = (input.canonicalize(), output.canonicalize()) {
        if a == b {
            return Err(FormatError::Io(std::io::Error::new(
                std::io::ErrorKind::InvalidInput,
                "recover cannot write over its input",
            )));
        }
    }
    if file.metadata()?.len() == 0 {
        return Err(FormatError::NotATrace);
    }
    // SAFETY: read-only private map of the input; the output is a different file (checked above).
    let map = unsafe { memmap2::Mmap::map(&file)? };
    let (report, bytes) = recover_bytes(&map)?;
    let mut out = File::create(output)?;
    out.write_all(&bytes)?;
    out.flush()?;
    Ok(report)
}

/// [`recover`] on bytes in memory: returns the report and the recovered trace.
pub fn recover_bytes(input: &[u8]) -> Result<(RecoverReport, Vec<u8>), FormatError> {
    let had_footer = TraceReader::from_bytes(input.to_vec()).is_ok();
    rebuild(input, had_footer)
}

/// Opens `path` like [`TraceReader::open`]; a file without a valid trailer (a recorder or writer
/// that was killed, or a copy cut short) is recovered in memory instead, as [`recover`] would
/// write it, and the report says what was kept. Any other damage is still an error: a file whose
/// trailer holds but whose footer or chunks are damaged needs `verify` and `recover`, not a
/// silent partial read. The recovered trace is held in memory (about the size of its sound
/// prefix); `recover` writes it out once for repeated use.
pub fn open_or_recover(path: &Path) -> Result<(TraceReader, Option<RecoverReport>), FormatError> {
    match TraceReader::open(path) {
        Err(FormatError::MissingTrailer { .. }) => {
            let file = File::open(path)?;
            // SAFETY: read-only private map, as in `TraceReader::open`; the recovered bytes are
            // copied out of it before it is dropped.
            let map = unsafe { memmap2::Mmap::map(&file)? };
            let (report, bytes) = rebuild(&map, false)?;
            Ok((TraceReader::from_bytes(bytes)?, Some(report)))
        }
        other => other.map(|reader| (reader, None)),
    }
}

/// The longest sound prefix of `input` with a fresh footer and trailer.
fn rebuild(input: &[u8], had_footer: bool) -> Result<(RecoverReport, Vec<u8>), FormatError> {
    let scan = scan(input)?;
    let mut out = Vec::with_capacity(scan.sound_end as usize + 4096);
    out.extend_from_slice(&input[..scan.sound_end as usize]);
    if !scan.rom_kept {
        // The ROM's blob chunk was lost with everything after it: the prefix must not point at it.
        let mut prefix = FileHeaderPrefix::parse(input)?;
        prefix.rom_blob = NO_ROM;
        prefix.rom_len = 0;
        out[..FILE_HEADER_LEN].copy_from_slice(&prefix.encode());
    }
    let fixed = FooterFixed {
        event_chunks: scan.chunks.len() as u64,
        blob_chunks: scan.blob_chunks.len() as u64,
        event_count: scan.events,
        first_seq: scan.first_seq,
        blob_count: scan.blobs,
        counts: scan.counts,
    };
    out.extend_from_slice(&encode_footer_and_trailer(
        scan.sound_end,
        &fixed,
        &scan.chunks,
        &scan.blob_chunks,
    ));
    let report = RecoverReport {
        events: scan.events,
        event_chunks: scan.chunks.len(),
        blob_chunks: scan.blob_chunks.len(),
        dropped_bytes: input.len() as u64 - scan.sound_end,
        output_bytes: out.len() as u64,
        stopped_because: scan.stopped_because,
        had_footer,
    };
    Ok((report, out))
}
