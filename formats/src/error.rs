//! Errors of the trace file format.

use std::fmt;

/// Which kind of chunk an error is about.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum ChunkType {
    /// A chunk of events.
    Events,
    /// A chunk of blobs (DMA payloads, the ROM, long access data).
    Blobs,
}

impl fmt::Display for ChunkType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            ChunkType::Events => "event chunk",
            ChunkType::Blobs => "blob chunk",
        })
    }
}

/// Everything that can go wrong reading or writing a trace.
#[derive(Debug, thiserror::Error)]
pub enum FormatError {
    /// The operating system refused a read or a write.
    #[error("I/O error: {0}")]
    Io(#[from] std::io::Error),
    /// The file does not start with the trace magic.
    #[error("not an hwrr trace (bad magic at offset 0)")]
    NotATrace,
    /// The file was written by a newer, incompatible version of the format.
    #[error("unsupported trace format version {found} (this reader reads version {supported})")]
    UnsupportedVersion {
        /// Version in the file.
        found: u16,
        /// Version this reader implements.
        supported: u16,
    },
    /// The file header block is damaged.
    #[error("corrupt file header: {reason}")]
    CorruptHeader {
        /// What is wrong.
        reason: String,
    },
    /// A chunk is damaged or inconsistent with its neighbours or the footer.
    #[error("corrupt {chunk_type} {index} at file offset {offset}: {reason}")]
    CorruptChunk {
        /// Events or blobs.
        chunk_type: ChunkType,
        /// Index of the chunk among the chunks of its type, in file order.
        index: usize,
        /// File offset of the chunk's header.
        offset: u64,
        /// What is wrong.
        reason: String,
    },
    /// The file has no (readable) trailer: the writer did not finish it. `recover` can repair it.
    #[error(
        "trace has no valid trailer (writer killed or file truncated?); run recover: {reason}"
    )]
    MissingTrailer {
        /// What is wrong.
        reason: String,
    },
    /// The footer index is damaged or does not match the file.
    #[error("corrupt footer at file offset {offset}: {reason}")]
    CorruptFooter {
        /// File offset of the footer.
        offset: u64,
        /// What is wrong.
        reason: String,
    },
    /// The writer was given an event whose sequence number is not the next one.
    #[error("event sequence numbers must be dense: expected {expected}, got {found}")]
    SeqNotDense {
        /// The sequence number the writer expected.
        expected: u64,
        /// The sequence number it got.
        found: u64,
    },
    /// The writer was given an event older than the previous one.
    #[error(
        "event timestamps must not decrease: seq {seq} has t_ns {found} < previous {previous}"
    )]
    TimeWentBackwards {
        /// The offending event.
        seq: u64,
        /// Its timestamp.
        found: u64,
        /// The previous event's timestamp.
        previous: u64,
    },
    /// The writer was given an event it cannot represent.
    #[error("invalid event seq {seq}: {reason}")]
    InvalidEvent {
        /// The offending event.
        seq: u64,
        /// What is wrong.
        reason: String,
    },
    /// A sequence number outside the trace was asked for.
    #[error("sequence number {seq} is outside the trace ({first}..{end})")]
    SeqOutOfRange {
        /// Requested sequence number.
        seq: u64,
        /// First sequence number of the trace.
        first: u64,
        /// One past the last sequence number.
        end: u64,
    },
    /// A chunk index outside the trace was asked for.
    #[error("chunk index {index} is outside the trace ({count} event chunks)")]
    ChunkOutOfRange {
        /// Requested index.
        index: usize,
        /// Number of event chunks.
        count: usize,
    },
    /// The header could not be encoded as JSON.
    #[error("cannot encode the trace header: {0}")]
    HeaderEncode(String),
}

impl FormatError {
    /// True when the error means the bytes are damaged or inconsistent (as opposed to an I/O
    /// failure, or a misuse of the writer).
    pub fn is_corruption(&self) -> bool {
        matches!(
            self,
            FormatError::NotATrace
                | FormatError::UnsupportedVersion { .. }
                | FormatError::CorruptHeader { .. }
                | FormatError::CorruptChunk { .. }
                | FormatError::MissingTrailer { .. }
                | FormatError::CorruptFooter { .. }
        )
    }
}
