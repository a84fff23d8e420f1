//! `libhwrr_vfio.so`: an `LD_PRELOAD` library that stands in for Linux VFIO inside an unmodified
//! QEMU (or S2E's QEMU fork), the way S2E's libs2e stands in for `/dev/kvm`.
//!
//! - **Replay** (`HWRR_MODE=replay HWRR_TRACE=in.hwrr`): no `/dev/vfio`, no root, no IOMMU. The shim
//!   emulates the VFIO container, group and device files and the device's sysfs entries for the
//!   traced device, and serves it with the replay engine ([`hwrr_replayer::Replayer`]).
//! - **Record** (`HWRR_MODE=record HWRR_TRACE=out.hwrr`): passes through to the kernel and logs.
//!
//! Every other call goes to the next definition (`dlsym(RTLD_NEXT)`), so the shim stacks with other
//! preloaded libraries. See `docs/INTERPOSER.md` for the environment variables and limits.

#![deny(missing_docs)]

pub mod config;
pub mod emulator;
pub mod guest_ram;
pub mod log;
mod real;
pub mod record;
mod shim;
pub mod uapi;
