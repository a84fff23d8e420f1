//! Per-chunk summaries for looking around the cursor across many chunks.
//!
//! A recorder closes a chunk at every flush interval, so a quiet stretch of a trace can be hundreds
//! of tiny chunks: how far the engine looks for evidence (the DMA the recorded device went on to do,
//! a recorded answer to a request, the register that named a buffer) is bounded in recorded ops,
//! not in chunks. The compiled chunk cache holds a few chunks; a summary is small and kept for many,
//! so repeated look-arounds do not decode the same chunks again.

use std::collections::{HashMap, HashSet};

use super::*;
use crate::compile::NamedPage;

/// How many recorded ops a look-around covers in each direction.
pub(super) const LOOKAROUND_OPS: usize = 1 << 16;

/// How many chunks a look-around visits at most in each direction (tiny flush-interval chunks).
pub(super) const LOOKAROUND_CHUNKS: usize = 256;

/// Summaries kept before the cache is cleared.
const MAX_SUMMARIES: usize = 1 << 14;

/// What the look-arounds need to know about a chunk without its ops.
#[derive(Debug, Default)]
pub(crate) struct ChunkSummary {
    /// Recorded ops in the chunk.
    pub ops: usize,
    /// Sorted 4 KiB pages the chunk's DMA touches.
    pub dma_pages: Vec<u64>,
    /// Registers written and then read as the very next guest call.
    pub polled_after_write: HashSet<RegKey>,
    /// The register the chunk's last guest call writes (its response starts in the next chunk).
    pub ends_with_write: Option<RegKey>,
    /// Pages named by register writes, with the register and value (the last such write).
    pub register_named_pages: HashMap<u64, NamedPage>,
    /// Echoed fields seen in the chunk's groups of device actions.
    pub echoes: super::echo::ChunkEchoes,
    /// Per recorded 4 KiB page: how many reads (what the guest handed the device) start in it,
    /// and in how many groups of device actions (between guest calls) device writes do.
    pub page_traffic: HashMap<u64, (u32, u32)>,
}

impl ChunkSummary {
    fn of(chunk: &CompiledChunk) -> Self {
        let last_call = chunk.ops.iter().rev().find(|o| o.kind.is_guest_call());
        ChunkSummary {
            ops: chunk.ops.len(),
            dma_pages: chunk.dma_pages.clone(),
            polled_after_write: chunk.polled_after_write(),
            ends_with_write: last_call
                .filter(|o| o.kind == OpKind::Write)
                .map(|o| (o.region, o.offset, o.size)),
            register_named_pages: chunk.register_named_pages(),
            echoes: super::echo::chunk_echoes(chunk),
            page_traffic: page_traffic(chunk),
        }
    }

    /// Whether a request to `key` may start a response in this chunk.
    pub fn may_answer(&self, key: RegKey) -> bool {
        self.polled_after_write.contains(&key) || self.ends_with_write == Some(key)
    }
}

/// How many reads start in each page of `chunk`, and in how many groups of device actions
/// device writes do (a group cut by the chunk's edges counts in each chunk).
fn page_traffic(chunk: &CompiledChunk) -> HashMap<u64, (u32, u32)> {
    let mut traffic: HashMap<u64, (u32, u32)> = HashMap::new();
    let mut written_in_group: HashSet<u64> = HashSet::new();
    for op in &chunk.ops {
        match op.kind {
            k if k.is_guest_call() => written_in_group.clear(),
            OpKind::DmaRead => {
                let entry = traffic.entry(op.value / PAGE).or_default();
                entry.0 = entry.0.saturating_add(1);
            }
            OpKind::DmaWrite => {
                let page = op.value / PAGE;
                if written_in_group.insert(page) {
                    let entry = traffic.entry(page).or_default();
                    entry.1 = entry.1.saturating_add(1);
                }
            }
            _ => {}
        }
    }
    traffic
}

impl Shared {
    /// The summary of chunk `index` (decoding it the first time), `None` when it cannot be read.
    pub(super) fn summary(&self, index: usize) -> Option<Arc<ChunkSummary>> {
        {
            let map = self.summaries.lock().unwrap_or_else(|p| p.into_inner());
            if let Some(s) = map.get(&index) {
                return Some(Arc::clone(s));
            }
        }
        let chunk = self.chunk(index).ok()?;
        let summary = Arc::new(ChunkSummary::of(&chunk));
        let mut map = self.summaries.lock().unwrap_or_else(|p| p.into_inner());
        if map.len() >= MAX_SUMMARIES {
            map.clear();
        }
        map.insert(index, Arc::clone(&summary));
        Some(summary)
    }

    /// Chunk indices after `current`, nearest first, within the look-around bounds.
    pub(super) fn chunks_after(
        &self,
        current: usize,
    ) -> impl Iterator<Item = (usize, Arc<ChunkSummary>)> + '_ {
        self.bounded((current + 1..self.chunk_count).take(LOOKAROUND_CHUNKS))
    }

    /// Chunk indices before `current`, nearest first, within the look-around bounds.
    pub(super) fn chunks_before(
        &self,
        current: usize,
    ) -> impl Iterator<Item = (usize, Arc<ChunkSummary>)> + '_ {
        self.bounded(
            (0..current.min(self.chunk_count))
                .rev()
                .take(LOOKAROUND_CHUNKS),
        )
    }

    fn bounded<'a>(
        &'a self,
        chunks: impl Iterator<Item = usize> + 'a,
    ) -> impl Iterator<Item = (usize, Arc<ChunkSummary>)> + 'a {
        let mut budget = LOOKAROUND_OPS;
        chunks.map_while(move |c| {
            if budget == 0 {
                return None;
            }
            let summary = self.summary(c)?;
            budget = budget.saturating_sub(summary.ops.max(1));
            Some((c, summary))
        })
    }
}
