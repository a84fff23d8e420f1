//! Import foreign device traces (QEMU trace-event logs) into hwrr traces.
#![deny(missing_docs)]
