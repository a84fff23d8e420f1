//! Replay engine: serve a trace as a virtual PCI device.
//!
//! [`Replayer`] implements [`hwrr_device::Device`], so the vfio-user server, the VFIO interposer and
//! Rust tests all drive it the same way:
//!
//! - **Modelled, not sequenced:** configuration space (the captured snapshot plus PCI write rules:
//!   writable masks, W1C status bits, BAR and ROM BAR sizing, MSI/MSI-X/PM/PCIe control words), the
//!   expansion ROM (`header.rom`) and the MSI-X table and PBA (located from the MSI-X capability).
//!   Recorded accesses to those are dropped when a chunk is compiled.
//! - **Sequenced:** region accesses are matched against the recorded stream at a cursor. A read
//!   returns the recorded value; a write is checked against the recorded write, after relocation.
//!   On a mismatch the [`Policy`] decides: `strict` (the first mismatch is final; the device then
//!   answers from its register model so the VMM never hangs), `resync` (look ahead
//!   [`Policy::DEFAULT_WINDOW`] = 64 recorded accesses by default; skip what the guest skipped;
//!   answer accesses the trace lacks from the model and count them as insertions) or `model`
//!   (answer mismatches from the register model and keep following the stream where it matches).
//! - **Polling runs** (consecutive identical recorded reads) are one unit: a guest that polls
//!   longer gets the run's value again, one that leaves early skips the rest; both count as matched
//!   ([`Counters::poll_extended`], [`Counters::poll_shortened`]). [`ReplayOptions::shorten_polls`]
//!   serves the post-transition value after K reads.
//! - **Device actions** recorded between accesses happen right after the access that preceded them:
//!   interrupts go to whatever eventfd the VMM registered (recorded `irq_setup` events are not
//!   replayed; MSI-X vector and function masks leave the vector pending until unmasked), DMA writes
//!   are re-applied through the attached [`hwrr_device::GuestMemory`] only where guest memory still
//!   holds the recorded `before` bytes.
//! - **Relocation:** recorded IOVAs are mapped to the replay guest's from written ring bases (64-bit
//!   values, pairs of 32-bit halves, register-map `address` registers) and from pointers in
//!   recorded descriptor reads; the map applies to DMA re-application and to write checks.
//!
//! [`open`] serves a trace file (the format's memory-mapped reader implements
//! [`EventSource`]); [`Replayer::new`] takes any source, e.g. a [`MemorySource`] built in a test.
//! Traces are read chunk by chunk through an [`EventSource`] and compiled into 24-byte ops; a few
//! compiled chunks are cached and shared (`Arc`) between an engine and its [`Replayer::fork`]s, so
//! [`ReplayState`] (cursor, models, relocation map, counters, divergence) stays small: save it with
//! [`Replayer::state`], go back with [`Replayer::restore`].
//!
//! ```
//! use std::sync::Arc;
//! use hwrr_device::Device;
//! use hwrr_formats::{AccessData, Event, EventKind, RegionAccess, RegionInfo, RegionKind, TraceHeader};
//! use hwrr_replayer::{MemorySource, ReplayOptions, Replayer};
//!
//! let header = TraceHeader {
//!     config_space: vec![0; 256],
//!     regions: vec![RegionInfo { index: 0, kind: RegionKind::Mmio, size: 0x1000, flags: 3, alias_of: None }],
//!     ..Default::default()
//! };
//! let read = |seq, offset, value| Event::new(seq, seq * 10, EventKind::MmioRead(RegionAccess {
//!     region: 0, offset, data: AccessData::Value { size: 4, value },
//! }));
//! let source = Arc::new(MemorySource::from_events(header, vec![read(0, 0x8, 1), read(1, 0x8, 2)]));
//! let mut dev = Replayer::new(source, ReplayOptions::default()).unwrap();
//! let mut buf = [0u8; 4];
//! dev.region_read(0, 0x8, &mut buf).unwrap();
//! assert_eq!(u32::from_le_bytes(buf), 1);
//! dev.region_read(0, 0x8, &mut buf).unwrap();
//! assert_eq!(u32::from_le_bytes(buf), 2);
//! let report = dev.report();
//! assert!(hwrr_replayer::check(&report, 0));
//! assert_eq!(report.counters.matched, 2);
//! ```
#![deny(missing_docs)]

mod compile;
mod config;
mod engine;
mod file;
pub mod reloc;
pub mod report;
pub mod source;

pub use engine::{DmaLog, ReplayError, ReplayOptions, ReplayState, Replayer};
pub use file::{open, OpenError};
pub use hwrr_formats::json::{event_to_json, JsonOptions};
pub use reloc::{Relocation, RelocationMap};
pub use report::{check, Counters, DivergenceReport, Policy, ReplayReport};
pub use source::{EventSource, MemorySource, SourceError};
