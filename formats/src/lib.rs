//! The hwrr event model and trace file format.
//!
//! A trace is a header (device identity, config-space snapshot, region and IRQ tables, ROM,
//! capture metadata), a stream of checksummed zstd chunks of events and of de-duplicated DMA payload
//! blobs, and a footer index. `docs/FORMAT.md` is the specification.

#![deny(missing_docs)]

pub mod event;
pub mod header;
pub mod hex;
pub mod json;
pub mod regmap;

pub use event::*;
pub use header::*;
