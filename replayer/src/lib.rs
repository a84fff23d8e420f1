//! Replay engine: serve a trace as a virtual PCI device.
//!
//! [`Replayer`] implements [`hwrr_device::Device`]: config space, the expansion ROM and the MSI-X
//! table/PBA are modelled; region accesses are matched against the recorded stream at a cursor
//! under a [`Policy`]; interrupts and device DMA writes recorded between accesses happen at the
//! same point of the replayed stream. Traces are read chunk by chunk through an [`EventSource`] and
//! compiled into compact ops, so the engine state ([`ReplayState`]) stays small and cheap to clone.
#![deny(missing_docs)]

mod compile;
mod config;
mod engine;
pub mod reloc;
pub mod report;
pub mod source;

pub use engine::{ReplayError, ReplayOptions, ReplayState, Replayer};
pub use hwrr_formats::json::event_to_json;
pub use reloc::{Relocation, RelocationMap};
pub use report::{check, Counters, DivergenceReport, Policy, ReplayReport};
pub use source::{EventSource, MemorySource, SourceError};
