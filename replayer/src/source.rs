//! Where the engine gets events from: a trace split into chunks that are loaded on demand, so a
//! multi-GB trace never has to sit in memory as [`Event`]s.

use hwrr_formats::{Event, TraceHeader};

/// Errors loading events from a source.
#[derive(Debug, thiserror::Error)]
pub enum SourceError {
    /// The chunk index is past the end.
    #[error("chunk {index} does not exist (the source has {count})")]
    NoSuchChunk {
        /// Requested chunk.
        index: usize,
        /// Number of chunks.
        count: usize,
    },
    /// The underlying trace could not be read or decoded.
    #[error("cannot load chunk {index}: {message}")]
    Load {
        /// Requested chunk.
        index: usize,
        /// What went wrong.
        message: String,
    },
}

/// A trace as the replay engine reads it: a header and a sequence of chunks of events, in order.
pub trait EventSource: Send + Sync {
    /// The trace header.
    fn header(&self) -> &TraceHeader;
    /// Sequence number of the first event.
    fn first_seq(&self) -> u64;
    /// Total number of events.
    fn event_count(&self) -> u64;
    /// Number of chunks.
    fn chunk_count(&self) -> usize;
    /// Sequence number of the first event of chunk `index` (for `index == chunk_count()`, one past the
    /// last event).
    fn chunk_first_seq(&self, index: usize) -> u64;
    /// Decodes chunk `index`.
    fn load_chunk(&self, index: usize) -> Result<Vec<Event>, SourceError>;
}

/// An in-memory trace: a header and its events in chunks.
#[derive(Clone, Debug)]
pub struct MemorySource {
    header: TraceHeader,
    chunks: Vec<Vec<Event>>,
}

impl MemorySource {
    /// Events per chunk used by [`MemorySource::from_events`].
    pub const DEFAULT_CHUNK_EVENTS: usize = 4096;

    /// A source over `events`, split into chunks of [`MemorySource::DEFAULT_CHUNK_EVENTS`].
    pub fn from_events(header: TraceHeader, events: Vec<Event>) -> Self {
        Self::with_chunk_size(header, events, Self::DEFAULT_CHUNK_EVENTS)
    }

    /// A source over `events`, split into chunks of `chunk_events` events (at least 1).
    pub fn with_chunk_size(header: TraceHeader, events: Vec<Event>, chunk_events: usize) -> Self {
        let per = chunk_events.max(1);
        let mut chunks = Vec::with_capacity(events.len() / per + 1);
        let mut it = events.into_iter().peekable();
        while it.peek().is_some() {
            chunks.push(it.by_ref().take(per).collect());
        }
        MemorySource { header, chunks }
    }

    /// A source over pre-split chunks.
    pub fn from_chunks(header: TraceHeader, chunks: Vec<Vec<Event>>) -> Self {
        let chunks = chunks.into_iter().filter(|c| !c.is_empty()).collect();
        MemorySource { header, chunks }
    }
}

impl EventSource for MemorySource {
    fn header(&self) -> &TraceHeader {
        &self.header
    }

    fn first_seq(&self) -> u64 {
        self.chunks
            .first()
            .and_then(|c| c.first())
            .map(|e| e.seq)
            .or_else(|| self.header.start_state.as_ref().map(|s| s.first_seq))
            .unwrap_or(0)
    }

    fn event_count(&self) -> u64 {
        self.chunks.iter().map(|c| c.len() as u64).sum()
    }

    fn chunk_count(&self) -> usize {
        self.chunks.len()
    }

    fn chunk_first_seq(&self, index: usize) -> u64 {
        match self.chunks.get(index).and_then(|c| c.first()) {
            Some(e) => e.seq,
            None => self
                .chunks
                .last()
                .and_then(|c| c.last())
                .map(|e| e.seq + 1)
                .unwrap_or_else(|| self.first_seq()),
        }
    }

    fn load_chunk(&self, index: usize) -> Result<Vec<Event>, SourceError> {
        self.chunks
            .get(index)
            .cloned()
            .ok_or(SourceError::NoSuchChunk {
                index,
                count: self.chunks.len(),
            })
    }
}
