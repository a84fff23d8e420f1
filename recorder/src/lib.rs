//! The hwrr recorder: a tap around any [`hwrr_device::Device`] backend that logs every call, its
//! result and its duration into a trace, without making the access path wait on disk or compression.
//!
//! - [`Recorder`] owns the trace writer thread and a bounded lock-free queue. Producers (the tap's
//!   access path, the interrupt relay thread) enqueue events; when the queue is full they block and
//!   count a stall, so back-pressure is visible and nothing is dropped. Events are stamped by a
//!   [`Clock`] (the invariant TSC where the machine has one, else `CLOCK_MONOTONIC`).
//! - [`Tap`] wraps a backend: every `Device` call is forwarded and logged; `set_irqs` eventfds are
//!   replaced by the tap's own, relayed to the consumer's by a thread that logs each interrupt; DMA the
//!   backend does through the attached guest memory is logged exactly (bytes, and the bytes it
//!   overwrote).
//! - [`WatchSet`] infers the DMA of devices that write guest memory directly (real hardware, fd-shared
//!   vfio-user servers): shadow copies of the pages register writes and descriptors name, diffed at
//!   every interrupt, register read and periodic sweep.

#![deny(missing_docs)]

#[cfg(test)]
mod alloc_count;
mod clock;
mod entry;
mod header;
mod queue;
mod relay;
mod tap;
mod watch;
mod writer;

pub use clock::{Clock, ClockEnvironment, ClockSource, RECALIBRATE_EVERY};
pub use header::capture_header;
pub use tap::{LoggingMemory, Tap};
pub use watch::{WatchOptions, WatchSet, WatchStats, WATCH_PAGE_SIZE};
pub use writer::{Recorder, RecorderError, RecorderHandle, RecorderOptions, RecorderStats, Ticket};
