//! Fixed-width byte layouts of the trace file: file header prefix, chunk header, footer, trailer.
//!
//! Every multi-byte integer is little-endian. `docs/FORMAT.md` documents each field.

use crate::event::KindTag;

/// File magic, the first 8 bytes of every trace.
pub const FILE_MAGIC: [u8; 8] = *b"HWRRTRCE";
/// The format version this crate writes by default (it reads this one, [`FORMAT_VERSION_2`] and
/// [`FORMAT_VERSION_1`]).
pub const FORMAT_VERSION: u16 = 3;
/// Version 2: files whose event chunks use [`ENCODING_V2`] (or [`ENCODING_V1`]).
pub const FORMAT_VERSION_2: u16 = 2;
/// Version 1: files whose event chunks all use [`ENCODING_V1`].
pub const FORMAT_VERSION_1: u16 = 1;
/// Size of the fixed file header prefix (followed by the compressed JSON header).
pub const FILE_HEADER_LEN: usize = 64;
/// Chunk magic.
pub const CHUNK_MAGIC: [u8; 4] = *b"HWCK";
/// Size of a chunk header.
pub const CHUNK_HEADER_LEN: usize = 112;
/// Footer magic.
pub const FOOTER_MAGIC: [u8; 8] = *b"HWRRFOOT";
/// Size of the fixed part of the footer.
pub const FOOTER_FIXED_LEN: usize = 160;
/// Size of one event-chunk entry of the footer.
pub const EVENT_ENTRY_LEN: usize = 48;
/// Size of one blob-chunk entry of the footer.
pub const BLOB_ENTRY_LEN: usize = 32;
/// Trailer magic.
pub const TRAILER_MAGIC: [u8; 8] = *b"HWRRTAIL";
/// Size of the trailer (the last bytes of a finished trace).
pub const TRAILER_LEN: usize = 32;
/// `rom_blob` value meaning "no ROM".
pub const NO_ROM: u64 = u64::MAX;
/// Largest uncompressed chunk payload a reader accepts (bounds memory on hostile input).
pub const MAX_PAYLOAD_LEN: u32 = 256 << 20;
/// Largest uncompressed JSON header a reader accepts.
pub const MAX_HEADER_JSON_LEN: u32 = 64 << 20;

/// Chunk type byte of an event chunk.
pub const CHUNK_TYPE_EVENTS: u8 = 1;
/// Chunk type byte of a blob chunk.
pub const CHUNK_TYPE_BLOBS: u8 = 2;
/// Encoding byte of the v1 columnar event encoding (and of the blob table, in every version).
pub const ENCODING_V1: u8 = 1;
/// Encoding byte of the v2 event encoding: the v1 streams with a context-modelled rANS time stream.
pub const ENCODING_V2: u8 = 2;
/// Encoding byte of the v3 event encoding: encoding 2 with access-key offsets coded as differences
/// and the time tables' symbols and weights stored as columns.
pub const ENCODING_V3: u8 = 3;

/// Whether an event chunk of `encoding` stores its payload as a zstd frame followed by an
/// uncompressed suffix (the rANS time code), rather than as one zstd frame.
pub(crate) fn has_raw_suffix(encoding: u8) -> bool {
    matches!(encoding, ENCODING_V2 | ENCODING_V3)
}

/// Whether a stored checksum or content hash matched the computed one. Fuzzing builds
/// (`--cfg fuzzing`, set by cargo-fuzz) accept mismatches so the fuzzer reaches the decoders behind
/// the checksums instead of stopping at them; every other build enforces them.
#[inline]
pub(crate) fn sums_match(matched: bool) -> bool {
    matched || cfg!(fuzzing)
}

pub(crate) fn u16_at(b: &[u8], o: usize) -> u16 {
    u16::from_le_bytes([b[o], b[o + 1]])
}
pub(crate) fn u32_at(b: &[u8], o: usize) -> u32 {
    u32::from_le_bytes([b[o], b[o + 1], b[o + 2], b[o + 3]])
}
pub(crate) fn u64_at(b: &[u8], o: usize) -> u64 {
    let mut a = [0u8; 8];
    a.copy_from_slice(&b[o..o + 8]);
    u64::from_le_bytes(a)
}
fn put_u16(b: &mut [u8], o: usize, v: u16) {
    b[o..o + 2].copy_from_slice(&v.to_le_bytes());
}
fn put_u32(b: &mut [u8], o: usize, v: u32) {
    b[o..o + 4].copy_from_slice(&v.to_le_bytes());
}
fn put_u64(b: &mut [u8], o: usize, v: u64) {
    b[o..o + 8].copy_from_slice(&v.to_le_bytes());
}

/// The fixed prefix of the file header block.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FileHeaderPrefix {
    /// Format version.
    pub version: u16,
    /// Length of the zstd-compressed JSON header that follows the prefix.
    pub json_zlen: u32,
    /// Length of the JSON header once decompressed.
    pub json_len: u32,
    /// CRC32 of the compressed JSON bytes.
    pub json_crc: u32,
    /// Blob id of the expansion ROM image, or [`NO_ROM`].
    pub rom_blob: u64,
    /// Length of the ROM image in bytes (0 without ROM).
    pub rom_len: u64,
}

/// Why a fixed structure could not be parsed.
pub(crate) type LayoutResult<T> = Result<T, String>;

impl FileHeaderPrefix {
    /// Encodes the prefix.
    pub fn encode(&self) -> [u8; FILE_HEADER_LEN] {
        let mut b = [0u8; FILE_HEADER_LEN];
        b[0..8].copy_from_slice(&FILE_MAGIC);
        put_u16(&mut b, 8, self.version);
        put_u16(&mut b, 10, 0);
        put_u32(&mut b, 12, self.json_zlen);
        put_u32(&mut b, 16, self.json_len);
        put_u32(&mut b, 20, self.json_crc);
        put_u64(&mut b, 24, self.rom_blob);
        put_u64(&mut b, 32, self.rom_len);
        let crc = crc32fast::hash(&b[..60]);
        put_u32(&mut b, 60, crc);
        b
    }

    /// Parses the prefix. Checks magic and CRC, not the version.
    pub(crate) fn parse(b: &[u8]) -> Result<Self, crate::FormatError> {
        use crate::FormatError;
        if b.len() < 8 || b[0..8] != FILE_MAGIC {
            return Err(FormatError::NotATrace);
        }
        if b.len() < FILE_HEADER_LEN {
            return Err(FormatError::CorruptHeader {
                reason: format!("file is {} bytes, shorter than the header prefix", b.len()),
            });
        }
        let stored = u32_at(b, 60);
        if !sums_match(crc32fast::hash(&b[..60]) == stored) {
            return Err(FormatError::CorruptHeader {
                reason: "header prefix checksum mismatch".into(),
            });
        }
        Ok(FileHeaderPrefix {
            version: u16_at(b, 8),
            json_zlen: u32_at(b, 12),
            json_len: u32_at(b, 16),
            json_crc: u32_at(b, 20),
            rom_blob: u64_at(b, 24),
            rom_len: u64_at(b, 32),
        })
    }
}

/// The plain header in front of every chunk.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ChunkHeader {
    /// [`CHUNK_TYPE_EVENTS`] or [`CHUNK_TYPE_BLOBS`].
    pub chunk_type: u8,
    /// Payload encoding ([`ENCODING_V1`]).
    pub encoding: u8,
    /// Compressed payload length (bytes that follow the header).
    pub payload_zlen: u32,
    /// Payload length once decompressed.
    pub payload_len: u32,
    /// Event chunks: sequence number of the first event. Blob chunks: id of the first blob.
    pub first_id: u64,
    /// Number of events (or blobs) in the chunk.
    pub count: u32,
    /// Timestamp of the first event (0 in blob chunks).
    pub first_t_ns: u64,
    /// Timestamp of the last event (0 in blob chunks).
    pub last_t_ns: u64,
    /// Events by kind (all zero in blob chunks).
    pub counts: [u32; KindTag::COUNT],
    /// CRC32 of the compressed payload.
    pub payload_crc: u32,
}

impl ChunkHeader {
    /// Encodes the header, computing its own CRC.
    pub fn encode(&self) -> [u8; CHUNK_HEADER_LEN] {
        let mut b = [0u8; CHUNK_HEADER_LEN];
        b[0..4].copy_from_slice(&CHUNK_MAGIC);
        b[4] = self.chunk_type;
        b[5] = self.encoding;
        put_u32(&mut b, 8, self.payload_zlen);
        put_u32(&mut b, 12, self.payload_len);
        put_u64(&mut b, 16, self.first_id);
        put_u32(&mut b, 24, self.count);
        put_u64(&mut b, 32, self.first_t_ns);
        put_u64(&mut b, 40, self.last_t_ns);
        for (i, c) in self.counts.iter().enumerate() {
            put_u32(&mut b, 48 + 4 * i, *c);
        }
        put_u32(&mut b, 104, self.payload_crc);
        let crc = crc32fast::hash(&b[..108]);
        put_u32(&mut b, 108, crc);
        b
    }

    /// Parses a chunk header, checking magic, CRC and internal consistency.
    pub(crate) fn parse(b: &[u8]) -> LayoutResult<Self> {
        if b.len() < CHUNK_HEADER_LEN {
            return Err(format!(
                "only {} bytes left, a chunk header needs {CHUNK_HEADER_LEN}",
                b.len()
            ));
        }
        if b[0..4] != CHUNK_MAGIC {
            return Err("bad chunk magic".into());
        }
        if !sums_match(crc32fast::hash(&b[..108]) == u32_at(b, 108)) {
            return Err("chunk header checksum mismatch".into());
        }
        let mut counts = [0u32; KindTag::COUNT];
        for (i, c) in counts.iter_mut().enumerate() {
            *c = u32_at(b, 48 + 4 * i);
        }
        let h = ChunkHeader {
            chunk_type: b[4],
            encoding: b[5],
            payload_zlen: u32_at(b, 8),
            payload_len: u32_at(b, 12),
            first_id: u64_at(b, 16),
            count: u32_at(b, 24),
            first_t_ns: u64_at(b, 32),
            last_t_ns: u64_at(b, 40),
            counts,
            payload_crc: u32_at(b, 104),
        };
        if h.chunk_type != CHUNK_TYPE_EVENTS && h.chunk_type != CHUNK_TYPE_BLOBS {
            return Err(format!("unknown chunk type {}", h.chunk_type));
        }
        let known = match h.chunk_type {
            CHUNK_TYPE_EVENTS => matches!(h.encoding, ENCODING_V1 | ENCODING_V2 | ENCODING_V3),
            _ => h.encoding == ENCODING_V1,
        };
        if !known {
            return Err(format!("unknown chunk encoding {}", h.encoding));
        }
        if h.payload_len > MAX_PAYLOAD_LEN {
            return Err(format!(
                "payload length {} exceeds the limit",
                h.payload_len
            ));
        }
        if h.chunk_type == CHUNK_TYPE_EVENTS {
            let sum: u64 = h.counts.iter().map(|c| *c as u64).sum();
            if sum != h.count as u64 {
                return Err(format!(
                    "kind counts sum to {sum}, chunk claims {} events",
                    h.count
                ));
            }
            if h.count == 0 {
                return Err("empty event chunk".into());
            }
            if h.last_t_ns < h.first_t_ns {
                return Err("last timestamp before first timestamp".into());
            }
            if h.first_id.checked_add(h.count as u64).is_none() {
                return Err("sequence range overflows".into());
            }
        }
        Ok(h)
    }

    /// Total bytes the chunk occupies in the file.
    pub fn total_len(&self) -> u64 {
        CHUNK_HEADER_LEN as u64 + self.payload_zlen as u64
    }
}

/// One event chunk as the footer indexes it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ChunkInfo {
    /// File offset of the chunk header.
    pub offset: u64,
    /// Total length in bytes (header and payload).
    pub len: u64,
    /// Sequence number of the first event.
    pub first_seq: u64,
    /// Timestamp of the first event.
    pub first_t_ns: u64,
    /// Timestamp of the last event.
    pub last_t_ns: u64,
    /// Number of events.
    pub count: u32,
}

impl ChunkInfo {
    pub(crate) fn encode_into(&self, out: &mut Vec<u8>) {
        let mut b = [0u8; EVENT_ENTRY_LEN];
        put_u64(&mut b, 0, self.offset);
        put_u64(&mut b, 8, self.len);
        put_u64(&mut b, 16, self.first_seq);
        put_u64(&mut b, 24, self.first_t_ns);
        put_u64(&mut b, 32, self.last_t_ns);
        put_u32(&mut b, 40, self.count);
        out.extend_from_slice(&b);
    }

    pub(crate) fn parse(b: &[u8]) -> Self {
        ChunkInfo {
            offset: u64_at(b, 0),
            len: u64_at(b, 8),
            first_seq: u64_at(b, 16),
            first_t_ns: u64_at(b, 24),
            last_t_ns: u64_at(b, 32),
            count: u32_at(b, 40),
        }
    }
}

/// One blob chunk as the footer indexes it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BlobChunkInfo {
    /// File offset of the chunk header.
    pub offset: u64,
    /// Total length in bytes (header and payload).
    pub len: u64,
    /// Id of the first blob in the chunk.
    pub first_blob: u64,
    /// Number of blobs.
    pub count: u32,
}

impl BlobChunkInfo {
    pub(crate) fn encode_into(&self, out: &mut Vec<u8>) {
        let mut b = [0u8; BLOB_ENTRY_LEN];
        put_u64(&mut b, 0, self.offset);
        put_u64(&mut b, 8, self.len);
        put_u64(&mut b, 16, self.first_blob);
        put_u32(&mut b, 24, self.count);
        out.extend_from_slice(&b);
    }

    pub(crate) fn parse(b: &[u8]) -> Self {
        BlobChunkInfo {
            offset: u64_at(b, 0),
            len: u64_at(b, 8),
            first_blob: u64_at(b, 16),
            count: u32_at(b, 24),
        }
    }
}

/// The fixed part of the footer.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FooterFixed {
    /// Number of event-chunk entries.
    pub event_chunks: u64,
    /// Number of blob-chunk entries.
    pub blob_chunks: u64,
    /// Events in the trace.
    pub event_count: u64,
    /// Sequence number of the first event.
    pub first_seq: u64,
    /// Blobs in the trace.
    pub blob_count: u64,
    /// Events by kind tag.
    pub counts: [u64; KindTag::COUNT],
}

impl FooterFixed {
    pub(crate) fn encode_into(&self, out: &mut Vec<u8>) {
        let mut b = [0u8; FOOTER_FIXED_LEN];
        b[0..8].copy_from_slice(&FOOTER_MAGIC);
        put_u64(&mut b, 8, self.event_chunks);
        put_u64(&mut b, 16, self.blob_chunks);
        put_u64(&mut b, 24, self.event_count);
        put_u64(&mut b, 32, self.first_seq);
        put_u64(&mut b, 40, self.blob_count);
        for (i, c) in self.counts.iter().enumerate() {
            put_u64(&mut b, 48 + 8 * i, *c);
        }
        out.extend_from_slice(&b);
    }

    pub(crate) fn parse(b: &[u8]) -> LayoutResult<Self> {
        if b.len() < FOOTER_FIXED_LEN {
            return Err("footer shorter than its fixed part".into());
        }
        if b[0..8] != FOOTER_MAGIC {
            return Err("bad footer magic".into());
        }
        let mut counts = [0u64; KindTag::COUNT];
        for (i, c) in counts.iter_mut().enumerate() {
            *c = u64_at(b, 48 + 8 * i);
        }
        Ok(FooterFixed {
            event_chunks: u64_at(b, 8),
            blob_chunks: u64_at(b, 16),
            event_count: u64_at(b, 24),
            first_seq: u64_at(b, 32),
            blob_count: u64_at(b, 40),
            counts,
        })
    }
}

/// The trailer: the last [`TRAILER_LEN`] bytes of a finished trace.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Trailer {
    pub footer_offset: u64,
    pub footer_len: u64,
    pub footer_crc: u32,
}

impl Trailer {
    pub(crate) fn encode(&self) -> [u8; TRAILER_LEN] {
        let mut b = [0u8; TRAILER_LEN];
        b[0..8].copy_from_slice(&TRAILER_MAGIC);
        put_u64(&mut b, 8, self.footer_offset);
        put_u64(&mut b, 16, self.footer_len);
        put_u32(&mut b, 24, self.footer_crc);
        let crc = crc32fast::hash(&b[..28]);
        put_u32(&mut b, 28, crc);
        b
    }

    pub(crate) fn parse(b: &[u8]) -> LayoutResult<Self> {
        if b.len() != TRAILER_LEN {
            return Err("trailer has the wrong length".into());
        }
        if b[0..8] != TRAILER_MAGIC {
            return Err("bad trailer magic".into());
        }
        if !sums_match(crc32fast::hash(&b[..28]) == u32_at(b, 28)) {
            return Err("trailer checksum mismatch".into());
        }
        Ok(Trailer {
            footer_offset: u64_at(b, 8),
            footer_len: u64_at(b, 16),
            footer_crc: u32_at(b, 24),
        })
    }
}

/// Encodes the footer (fixed part, event-chunk entries, blob-chunk entries) followed by the trailer
/// that points at it, for a footer starting at file offset `footer_offset`.
pub fn encode_footer_and_trailer(
    footer_offset: u64,
    fixed: &FooterFixed,
    chunks: &[ChunkInfo],
    blob_chunks: &[BlobChunkInfo],
) -> Vec<u8> {
    let mut out = Vec::with_capacity(
        FOOTER_FIXED_LEN
            + chunks.len() * EVENT_ENTRY_LEN
            + blob_chunks.len() * BLOB_ENTRY_LEN
            + TRAILER_LEN,
    );
    fixed.encode_into(&mut out);
    for c in chunks {
        c.encode_into(&mut out);
    }
    for b in blob_chunks {
        b.encode_into(&mut out);
    }
    let trailer = Trailer {
        footer_offset,
        footer_len: out.len() as u64,
        footer_crc: crc32fast::hash(&out),
    };
    out.extend_from_slice(&trailer.encode());
    out
}
