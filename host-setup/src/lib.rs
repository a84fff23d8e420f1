//! Host setup for VFIO passthrough: `doctor`, `bind`, `unbind`, `reset`.
//!
//! Every file the kernel exposes is reached through a [`HostRoot`] (prefixes for `/sys`, `/proc`,
//! `/dev`, `/lib/modules`, a kernel-log source and a state directory), so each check and action
//! runs on a fake tree in tests and for real on a VFIO host.
//!
//! - [`doctor`] checks that the IOMMU is on, the kernel is recent enough, the vfio modules are
//!   loaded, and for one device: its group is viable, `/dev/vfio/N` is usable, and the kernel log
//!   has no flood of DMA remapping faults. Each [`Finding`] says what to do.
//! - [`bind`] moves a device to `vfio-pci` through `driver_override` (never `new_id`, which grabs
//!   every device with the same ids and survives a rescan) and records the driver it replaced.
//! - [`unbind`] gives the device back to its host driver.
//! - [`reset`] runs the recovery sequence for a device left in a bad state: unbind, function
//!   reset, remove, rescan, rebind the host driver (the recorded one, else the one its `modalias`
//!   resolves to).

#![deny(missing_docs)]

mod actions;
pub mod bdf;
mod doctor;
pub mod klog;
pub mod modalias;
mod root;
pub mod state;

use std::path::PathBuf;

use serde::Serialize;

pub use actions::{bind, reset, unbind, ActionError, ActionReport, Step};
pub use bdf::{Bdf, BdfError};
pub use doctor::{doctor, DoctorReport, Finding, DMAR_FLOOD_THRESHOLD, MIN_KERNEL};
pub use root::{HostRoot, KernelLog, User, WriteHook};

/// The outcome of one check or step.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Status {
    /// Fine.
    Ok,
    /// Works, but worth knowing (or could not be checked).
    Warn,
    /// Broken: passthrough will not work until it is fixed.
    Fail,
}

impl Status {
    /// `ok`, `warn` or `FAIL`, for terminal output.
    pub fn label(self) -> &'static str {
        match self {
            Status::Ok => "ok",
            Status::Warn => "warn",
            Status::Fail => "FAIL",
        }
    }
}

/// Errors of host-setup operations. Each message says what to do.
#[derive(Debug, thiserror::Error)]
pub enum HostError {
    /// The device is not in sysfs.
    #[error("no PCI device {0} in sysfs: check the address with `lspci -D`")]
    NoDevice(Bdf),
    /// The root prefix has no sysfs at all.
    #[error("{0} is not a sysfs tree (no bus/pci): wrong --root?")]
    NoSysfs(PathBuf),
    /// vfio-pci is not loaded.
    #[error(
        "the vfio-pci driver is not loaded: run `modprobe vfio-pci` (hwrr loads no modules itself)"
    )]
    VfioPciMissing,
    /// A sysfs write failed.
    #[error("writing {value:?} to {} failed: {source} ({hint})", path.display())]
    Write {
        /// The attribute.
        path: PathBuf,
        /// What was written.
        value: String,
        /// What to do about it.
        hint: String,
        /// The OS error.
        #[source]
        source: std::io::Error,
    },
    /// The kernel did not do what a write asked for.
    #[error("{0}")]
    Unexpected(String),
    /// The state directory could not be used.
    #[error("state file {}: {source}", path.display())]
    State {
        /// The state file.
        path: PathBuf,
        /// The error.
        #[source]
        source: std::io::Error,
    },
}
