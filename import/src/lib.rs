//! Import foreign device traces (QEMU trace-event logs) into hwrr traces.
//!
//! [`scan`] reads a QEMU `-trace` log (log backend, plain or zstd) once to find the device, its BARs
//! and their aliases, its interrupt wiring and its config-space snapshot, and builds the
//! [`TraceHeader`]. [`QemuImport::events`] then reads the log a second time and streams the device's
//! events in log order, so memory use does not depend on the log's size. `docs/FORMAT.md §9`
//! documents the mapping from trace events to hwrr events.
#![deny(missing_docs)]

mod config;
mod engine;
mod input;
pub mod line;

use std::path::{Path, PathBuf};

use hwrr_formats::{Event, KindCounts, TraceHeader};

pub use engine::Dialect;

/// What to import.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ImportOptions {
    /// The device: its name as QEMU prints it (`nvme`, `rtl8139`, `e1000e`; for passthrough logs
    /// the vfio device name, i.e. the host address) or a guest BDF (`00:02.0`, `0000:00:19.0`).
    /// `None` picks the device with the most register accesses in the log.
    pub device: Option<String>,
    /// The IOAPIC GSI the device's INTx pin is wired to. `None` infers it from the log (see
    /// `docs/FORMAT.md §9`).
    pub intx_gsi: Option<u32>,
}

/// Why an import failed.
#[derive(Debug, thiserror::Error)]
pub enum ImportError {
    /// The log could not be read or decompressed.
    #[error("cannot read {path}: {source}")]
    Io {
        /// The log.
        path: PathBuf,
        /// The underlying error.
        #[source]
        source: std::io::Error,
    },
    /// `--device` names no device of the log.
    #[error("no device named {wanted} in the log; devices seen: {seen}")]
    NoSuchDevice {
        /// What was asked for.
        wanted: String,
        /// The devices the log shows, as `name@bdf`.
        seen: String,
    },
    /// The log shows no device with register or config accesses.
    #[error("no PCI device with register or config accesses in the log ({lines} lines, {malformed} malformed{example})")]
    NoDevice {
        /// Lines read.
        lines: u64,
        /// Malformed lines.
        malformed: u64,
        /// The first malformed line, if any, formatted for the message.
        example: String,
    },
    /// The consumer of [`QemuImport::events`] failed.
    #[error("event sink failed: {0}")]
    Sink(String),
}

/// The outcome of pass 2.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ImportReport {
    /// Lines read.
    pub lines: u64,
    /// Events produced.
    pub events: u64,
    /// Events produced, by kind.
    pub by_kind: KindCounts,
    /// Lines that could not be parsed (truncated, bad numbers, not a trace line).
    pub malformed: u64,
    /// The first few malformed lines: (1-based line number, reason and text).
    pub malformed_examples: Vec<(u64, String)>,
    /// Well-formed lines that produced no event: other devices, DMA translations, EOIs, BAR
    /// mapping changes, MSI-X bookkeeping, device-model events that are not interrupts or resets.
    pub ignored: u64,
    /// Accesses to a region named after the device that fell in none of its mapped BARs (part of
    /// `ignored`).
    pub unmapped: u64,
    /// Events whose timestamp went backwards (QEMU threads print out of order) and were clamped
    /// to the previous event's time.
    pub timestamps_clamped: u64,
}

/// How many malformed lines the report quotes.
pub const MAX_MALFORMED_EXAMPLES: usize = 5;

/// The device an import selected.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SelectedDevice {
    /// Passthrough (`vfio_*` events) or emulated (`memory_region_ops_*`, `pci_cfg_*`).
    pub dialect: Dialect,
    /// QEMU's name for it.
    pub name: String,
    /// Its PCI address as the log shows it (`bus:dev.fn`).
    pub bdf: String,
    /// The INTx GSI in use, when the log shows INTx for it.
    pub intx_gsi: Option<u32>,
}

/// A scanned QEMU log, ready to stream its device's events.
#[derive(Clone, Debug)]
pub struct QemuImport {
    path: PathBuf,
    header: TraceHeader,
    device: SelectedDevice,
    plan: engine::Plan,
    scan_report: ImportReport,
}

/// Pass 1 over the log: finds the device, its BARs and aliases, its IRQ wiring, and reconstructs
/// the config-space snapshot; builds the [`TraceHeader`].
pub fn scan(path: &Path, opts: &ImportOptions) -> Result<QemuImport, ImportError> {
    engine::scan(path, opts)
}

impl QemuImport {
    /// The header of the trace to write.
    pub fn header(&self) -> &TraceHeader {
        &self.header
    }

    /// The device selected.
    pub fn device(&self) -> &SelectedDevice {
        &self.device
    }

    /// Line and malformed counts of pass 1 (events are not produced in pass 1).
    pub fn scan_report(&self) -> &ImportReport {
        &self.scan_report
    }

    /// Pass 2: streams events in log order to `sink` (memory use independent of log size).
    pub fn events(
        &self,
        sink: &mut dyn FnMut(Event) -> Result<(), ImportError>,
    ) -> Result<ImportReport, ImportError> {
        engine::emit(&self.path, &self.plan, sink)
    }

    /// Collects every event into a vector (for tests and small logs).
    pub fn collect_events(&self) -> Result<(Vec<Event>, ImportReport), ImportError> {
        let mut v = Vec::new();
        let report = self.events(&mut |e| {
            v.push(e);
            Ok(())
        })?;
        Ok((v, report))
    }
}
