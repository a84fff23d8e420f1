//! Trace files as event sources: the in-process API's "open a trace, get a device".

use std::path::Path;
use std::sync::Arc;

use hwrr_formats::{Event, FormatError, TraceHeader, TraceReader};

use crate::engine::{ReplayError, ReplayOptions, Replayer};
use crate::source::{EventSource, SourceError};

impl EventSource for TraceReader {
    fn header(&self) -> &TraceHeader {
        TraceReader::header(self)
    }

    fn first_seq(&self) -> u64 {
        TraceReader::first_seq(self)
    }

    fn event_count(&self) -> u64 {
        TraceReader::event_count(self)
    }

    fn chunk_count(&self) -> usize {
        TraceReader::chunk_count(self)
    }

    fn chunk_first_seq(&self, index: usize) -> u64 {
        if index >= TraceReader::chunk_count(self) {
            self.end_seq()
        } else {
            self.chunk(index).first_seq
        }
    }

    fn load_chunk(&self, index: usize) -> Result<Vec<Event>, SourceError> {
        let count = TraceReader::chunk_count(self);
        if index >= count {
            return Err(SourceError::NoSuchChunk { index, count });
        }
        self.read_chunk(index).map_err(|e| SourceError::Load {
            index,
            message: e.to_string(),
        })
    }
}

/// Why a trace could not be opened for replay.
#[derive(Debug, thiserror::Error)]
pub enum OpenError {
    /// The file is not a readable trace.
    #[error("cannot open trace: {0}")]
    Trace(#[from] FormatError),
    /// The trace cannot be served as a device.
    #[error(transparent)]
    Replay(#[from] ReplayError),
}

/// Opens a trace file (memory-mapped; chunks are decoded on demand) as a replayed device.
pub fn open(path: &Path, options: ReplayOptions) -> Result<Replayer, OpenError> {
    let reader = TraceReader::open(path)?;
    let source: Arc<dyn EventSource> = Arc::new(reader);
    Ok(Replayer::new(source, options)?)
}
