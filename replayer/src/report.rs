//! The replay report (`--report` JSON) and the `--check` verdict.

use serde::Serialize;

use crate::reloc::Relocation;

/// How the engine handles a guest access that does not match the recorded stream.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(tag = "name", rename_all = "lowercase")]
pub enum Policy {
    /// The first mismatch is a divergence: the report is final and the device answers from its
    /// register model from then on (so the VMM never hangs).
    Strict,
    /// Look ahead up to `window` recorded accesses for the guest's access and skip the ones before
    /// it; when none matches, answer from the model and count an insertion.
    Resync {
        /// Look-ahead window in recorded accesses.
        window: u32,
    },
    /// Answer mismatches from the register model (last written value, or last value read at that
    /// offset) and keep following the stream where it matches.
    Model,
}

impl Policy {
    /// The default look-ahead window of [`Policy::Resync`]: 64 recorded accesses, about one
    /// interrupt handler's or one timer callback's worth of register traffic in the corpus drivers.
    pub const DEFAULT_WINDOW: u32 = 64;

    /// `resync` with the default window.
    pub fn resync() -> Self {
        Policy::Resync {
            window: Self::DEFAULT_WINDOW,
        }
    }

    /// The CLI name: `strict`, `resync` or `model`.
    pub fn name(&self) -> &'static str {
        match self {
            Policy::Strict => "strict",
            Policy::Resync { .. } => "resync",
            Policy::Model => "model",
        }
    }
}

/// Counters kept while replaying.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct Counters {
    /// Region accesses the guest made (config space and the MSI-X table/PBA excluded).
    pub accesses: u64,
    /// Accesses matched to the recorded stream (including extended polls).
    pub matched: u64,
    /// Recorded accesses skipped because the guest did not make them (resync, resets found ahead).
    pub skipped: u64,
    /// Guest accesses the trace lacked, answered from the model (resync).
    pub inserted: u64,
    /// Accesses answered from the model after a mismatch (model policy, and strict after the
    /// divergence).
    pub fallbacks: u64,
    /// Polling runs the guest read more often than recorded.
    pub poll_extended: u64,
    /// Polling runs the guest left early (or that `shorten_polls` cut).
    pub poll_shortened: u64,
    /// Guest reads answered with a recorded read farther ahead while the cursor stays (counted in
    /// `inserted`, resync): reads found past a write the guest has not made, and an interrupt
    /// handler's first reads of a register when the capture's handler ran later.
    pub answered_from_ahead: u64,
    /// Guest calls that did not match the recorded stream at the cursor (the report's
    /// `divergences` lists the first 32).
    pub mismatches: u64,
    /// Interrupts written to a VMM eventfd.
    pub irqs_delivered: u64,
    /// Interrupts that found their vector masked (left pending), or INTx held by INTx Disable.
    pub irqs_pending: u64,
    /// Interrupts with no eventfd registered for their vector.
    pub irqs_no_listener: u64,
    /// Device DMA writes applied in full.
    pub dma_writes_applied: u64,
    /// Device DMA writes applied only where guest memory still held the recorded `before` bytes.
    pub dma_writes_partial: u64,
    /// Device DMA writes not applied at all (guest changed every byte, or no memory attached).
    pub dma_writes_not_applied: u64,
    /// Device DMA writes (with recorded "before" bytes) withheld from guest pages the replay has
    /// no evidence the guest gave the device (not relocated, not named by a register the guest
    /// wrote the same, not holding the recorded guest's bytes): the guest's buffers moved and the
    /// engine did not learn where. Also counted as not applied or partial.
    pub dma_writes_unconfirmed: u64,
    /// Device DMA writes that hit unmapped guest memory.
    pub dma_write_faults: u64,
    /// Fields of device write-backs given the replay guest's value instead of the recorded one:
    /// identifiers the device echoes from what it read (an NVMe completion's command id).
    pub dma_echoes_rewritten: u64,
    /// Recorded DMA reads compared against the replay guest's memory for pointers.
    pub dma_reads_checked: u64,
    /// Relocations learned (register writes and descriptors).
    pub relocations_learned: u64,
    /// Guest resets matched to a recorded reset.
    pub resets_matched: u64,
    /// Guest resets the trace had no reset for (also counted as an insertion under resync and a
    /// fallback under model).
    pub resets_unmatched: u64,
    /// Device resets before the guest's first register access that the trace did not have at
    /// its start (a VMM's machine-reset reset): absorbed, the device stays as the capture found
    /// it.
    pub power_on_resets: u64,
    /// Nanoseconds waited to honour recorded interrupt delays (`honor_delays`).
    pub delay_ns_waited: u64,
    /// Config-space reads (modelled).
    pub config_reads: u64,
    /// Config-space writes (modelled).
    pub config_writes: u64,
    /// MSI-X table and PBA accesses (modelled).
    pub msix_accesses: u64,
    /// ROM reads (modelled).
    pub rom_reads: u64,
}

/// The first access that did not match the recorded stream.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct DivergenceReport {
    /// Sequence number of the recorded event the guest was expected to match (one past the last
    /// event when the trace had ended).
    pub seq: u64,
    /// Its timestamp (the last event's when the trace had ended).
    pub t_ns: u64,
    /// The recorded event in `hwrr dump --json` form, or `null` when the trace had ended.
    pub expected: serde_json::Value,
    /// The guest's access, in the same form (`kind`, `region`, `offset`, `size`, `value` for
    /// writes, `name` with a register map).
    pub actual: serde_json::Value,
    /// Why it did not match.
    pub reason: String,
    /// The events before it, oldest first, in `hwrr dump --json` form.
    pub context: Vec<serde_json::Value>,
}

/// What a replay session did.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct ReplayReport {
    /// `strict`, `resync` or `model`.
    pub policy: &'static str,
    /// The resync window (0 for other policies).
    pub window: u32,
    /// Counters (flattened into the report object).
    #[serde(flatten)]
    pub counters: Counters,
    /// Whether any guest access failed to match the stream at the cursor.
    pub diverged: bool,
    /// Whether the engine stopped following the trace (strict, after the divergence).
    pub stopped_following: bool,
    /// The first divergence.
    pub first_divergence: Option<DivergenceReport>,
    /// The first 32 divergences, in order (the first one again), without context: where the
    /// guest left the recording each time, for a replay that diverges more than once.
    pub divergences: Vec<DivergenceReport>,
    /// Learned relocations.
    pub relocations: Vec<Relocation>,
    /// Events in the trace.
    pub trace_events: u64,
    /// Sequence number of the next recorded guest call (one past the last event at the end).
    pub position_seq: u64,
    /// Whether every recorded guest call has been consumed.
    pub trace_finished: bool,
    /// A trace read error that ended the replay early.
    pub source_error: Option<String>,
}

/// The `--check` verdict: false on any divergence under `strict`, and under `resync`/`model` when
/// skipped + inserted + fallbacks exceed `max_skips`.
pub fn check(report: &ReplayReport, max_skips: u64) -> bool {
    if report.policy == "strict" {
        return !report.diverged && report.source_error.is_none();
    }
    let c = &report.counters;
    c.skipped + c.inserted + c.fallbacks <= max_skips && report.source_error.is_none()
}
