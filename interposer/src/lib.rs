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
pub mod log;
mod real;
pub mod record;
mod shim;
pub mod uapi;

use std::path::Path;

/// Quotes `s` for a POSIX shell when it needs it.
fn shell_quote(s: &str) -> String {
    if !s.is_empty()
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"/._-:=,+@%".contains(&b))
    {
        s.to_string()
    } else {
        format!("'{}'", s.replace('\'', r"'\''"))
    }
}

/// The command line that replays `trace` as host device `bdf` inside an unmodified QEMU with the
/// interposer at `lib`, for `hwrr replay TRACE --print-qemu-args`. The machine, memory, kernel and
/// disk arguments are the user's (`...`).
pub fn qemu_args(trace: &Path, bdf: &str, lib: &Path) -> String {
    let bdf = config::normalize_bdf(bdf).unwrap_or_else(|| bdf.to_string());
    format!(
        "LD_PRELOAD={} HWRR_MODE=replay HWRR_TRACE={} qemu-system-x86_64 ... -device vfio-pci,host={},x-no-mmap=on",
        shell_quote(&lib.display().to_string()),
        shell_quote(&trace.display().to_string()),
        bdf
    )
}

/// Where `hwrr replay --print-qemu-args` expects the interposer: next to the running executable
/// (`target/release/hwrr` and `target/release/libhwrr_vfio.so` are built side by side).
pub fn library_next_to_current_exe() -> Option<std::path::PathBuf> {
    let exe = std::env::current_exe().ok()?;
    Some(exe.with_file_name("libhwrr_vfio.so"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn qemu_command_line() {
        let s = qemu_args(
            Path::new("/tmp/my trace.hwrr"),
            "00:19.0",
            Path::new("/opt/hwrr/libhwrr_vfio.so"),
        );
        assert_eq!(
            s,
            "LD_PRELOAD=/opt/hwrr/libhwrr_vfio.so HWRR_MODE=replay HWRR_TRACE='/tmp/my trace.hwrr' qemu-system-x86_64 ... -device vfio-pci,host=0000:00:19.0,x-no-mmap=on"
        );
    }
}
