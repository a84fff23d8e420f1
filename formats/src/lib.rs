//! The hwrr event model and trace file format.
//!
//! A trace is a header (device identity, config-space snapshot, region and IRQ tables, ROM,
//! capture metadata), a stream of checksummed zstd chunks of events and of de-duplicated DMA payload
//! blobs, and a footer index. `docs/FORMAT.md` is the specification.
//!
//! Write with [`TraceWriter`], read with [`TraceReader`], check with [`verify_file`], repair with
//! [`recover`].

#![deny(missing_docs)]

mod codec;
pub mod error;
pub mod event;
pub mod fuzzing;
pub mod header;
pub mod hex;
pub mod json;
pub mod layout;
pub mod reader;
pub mod recover;
pub mod regmap;
pub mod slice;
mod timecode;
pub mod writer;

pub use codec::{AccessKey, ChunkColumns, NO_KEY};
pub use error::{ChunkType, FormatError};
pub use event::*;
pub use header::*;
pub use layout::{BlobChunkInfo, ChunkInfo};
pub use reader::{Events, TraceReader, VerifyReport};
pub use recover::{
    open_or_recover, recover, recover_bytes, scan, verify_file, RecoverReport, ScanReport,
    VerifyError,
};
pub use writer::{EventEncoding, TraceWriter, WriteSummary, WriterOptions};
