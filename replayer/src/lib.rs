//! Replay engine: serve a trace as a virtual PCI device.
#![deny(missing_docs)]
