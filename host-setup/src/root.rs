//! Where the host's `/sys`, `/proc`, `/dev`, `/lib/modules`, kernel log and hwrr's state live, so
//! every check and action runs on a fake tree in tests and for real on a VFIO host.

use std::fmt;
use std::io::{self, Read};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use crate::HostError;

/// Where to read the kernel log from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum KernelLog {
    /// `/dev/kmsg` records (`6,339,5140900,-;DMAR: IOMMU enabled`), read without blocking. A regular
    /// file in the same format works too.
    Kmsg(PathBuf),
    /// The output of the `dmesg` command (`[    0.012] DMAR: ...`).
    DmesgCommand,
    /// A file holding `dmesg` output (or plain log lines).
    File(PathBuf),
}

/// Called after every write to a sysfs attribute with the path and the bytes written: the seam
/// through which fake-tree tests play the kernel (a bind on `drivers_probe`, a vanishing device on
/// `remove`).
pub type WriteHook = Arc<dyn Fn(&Path, &str) + Send + Sync>;

/// The effective user doctor judges `/dev/vfio` permissions for.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct User {
    /// Effective user id.
    pub uid: u32,
    /// Primary and supplementary group ids.
    pub gids: Vec<u32>,
}

impl User {
    /// The user this process runs as.
    pub fn current() -> Self {
        // SAFETY: geteuid/getegid take no arguments and cannot fail.
        let (uid, gid) = unsafe { (libc::geteuid(), libc::getegid()) };
        let mut gids = vec![gid];
        // SAFETY: a zero-length query returns the number of supplementary groups.
        let n = unsafe { libc::getgroups(0, std::ptr::null_mut()) };
        if n > 0 {
            let mut buf = vec![0 as libc::gid_t; n as usize];
            // SAFETY: `buf` holds `n` entries, as the call is told.
            let got = unsafe { libc::getgroups(n, buf.as_mut_ptr()) };
            if got > 0 {
                gids.extend(buf.into_iter().take(got as usize));
            }
        }
        User { uid, gids }
    }
}

/// The host as hwrr sees it: path prefixes for the kernel's file systems, the kernel log, the
/// state directory, and the user.
#[derive(Clone)]
pub struct HostRoot {
    /// Where sysfs is mounted (`/sys`).
    pub sys: PathBuf,
    /// Where procfs is mounted (`/proc`).
    pub proc: PathBuf,
    /// Where devtmpfs is mounted (`/dev`).
    pub dev: PathBuf,
    /// The kernel module tree (`/lib/modules`).
    pub lib_modules: PathBuf,
    /// The kernel log source.
    pub kernel_log: KernelLog,
    /// Where `bind` records the driver it replaced (`/run/hwrr`).
    pub state_dir: PathBuf,
    /// Whose permissions `/dev/vfio` is checked against.
    pub user: User,
    /// Observer of sysfs writes (tests).
    pub write_hook: Option<WriteHook>,
}

impl fmt::Debug for HostRoot {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("HostRoot")
            .field("sys", &self.sys)
            .field("proc", &self.proc)
            .field("dev", &self.dev)
            .field("lib_modules", &self.lib_modules)
            .field("kernel_log", &self.kernel_log)
            .field("state_dir", &self.state_dir)
            .field("user", &self.user)
            .field("write_hook", &self.write_hook.is_some())
            .finish()
    }
}

impl HostRoot {
    /// The real host: `/sys`, `/proc`, `/dev`, `/lib/modules`, `/dev/kmsg`, `/run/hwrr`.
    pub fn real() -> Self {
        Self::under(Path::new("/"))
    }

    /// A tree under `root` laid out like `/`: `root/sys`, `root/proc`, `root/dev`,
    /// `root/lib/modules`, the kernel log from `root/dev/kmsg`, state in `root/run/hwrr`.
    pub fn under(root: &Path) -> Self {
        HostRoot {
            sys: root.join("sys"),
            proc: root.join("proc"),
            dev: root.join("dev"),
            lib_modules: root.join("lib/modules"),
            kernel_log: KernelLog::Kmsg(root.join("dev/kmsg")),
            state_dir: root.join("run/hwrr"),
            user: User::current(),
            write_hook: None,
        }
    }

    /// `sys/bus/pci/devices/<bdf>`.
    pub fn pci_device(&self, bdf: &crate::Bdf) -> PathBuf {
        self.sys.join("bus/pci/devices").join(bdf.to_string())
    }

    /// `sys/bus/pci/drivers/<name>`.
    pub fn pci_driver(&self, name: &str) -> PathBuf {
        self.sys.join("bus/pci/drivers").join(name)
    }

    /// Reads a small text file, trimmed; `None` if it does not exist or cannot be read.
    pub fn read_attr(&self, path: &Path) -> Option<String> {
        std::fs::read_to_string(path)
            .ok()
            .map(|s| s.trim().to_string())
    }

    /// The last path component of a symlink's target (`driver` -> `e1000e`), if it is a link.
    pub fn link_name(&self, path: &Path) -> Option<String> {
        std::fs::read_link(path)
            .ok()
            .and_then(|t| t.file_name().map(|n| n.to_string_lossy().into_owned()))
    }

    /// Writes `value` to a sysfs attribute (one `write` call, as `echo` does) and tells the hook.
    pub fn write_attr(&self, path: &Path, value: &str) -> Result<(), HostError> {
        let res = std::fs::OpenOptions::new()
            .write(true)
            .truncate(true)
            .open(path)
            .and_then(|mut f| io::Write::write_all(&mut f, value.as_bytes()));
        res.map_err(|source| HostError::Write {
            path: path.to_path_buf(),
            value: value.trim_end().to_string(),
            hint: write_hint(&source),
            source,
        })?;
        if let Some(hook) = &self.write_hook {
            hook(path, value);
        }
        Ok(())
    }

    /// The running kernel's release (`proc/sys/kernel/osrelease`).
    pub fn kernel_release(&self) -> Option<String> {
        self.read_attr(&self.proc.join("sys/kernel/osrelease"))
    }

    /// The kernel log as plain messages (timestamps and kmsg prefixes removed).
    pub fn kernel_log_lines(&self) -> io::Result<Vec<String>> {
        let raw = match &self.kernel_log {
            KernelLog::Kmsg(p) => read_kmsg(p)?,
            KernelLog::File(p) => std::fs::read_to_string(p)?,
            KernelLog::DmesgCommand => {
                let out = std::process::Command::new("dmesg").output()?;
                if !out.status.success() {
                    return Err(io::Error::other(format!(
                        "dmesg failed: {}",
                        String::from_utf8_lossy(&out.stderr).trim()
                    )));
                }
                String::from_utf8_lossy(&out.stdout).into_owned()
            }
        };
        Ok(raw
            .lines()
            .map(strip_log_prefix)
            .map(str::to_string)
            .collect())
    }
}

fn write_hint(e: &io::Error) -> String {
    match e.raw_os_error() {
        Some(libc::EACCES) | Some(libc::EPERM) => "run as root".into(),
        Some(libc::ENOENT) => {
            "the attribute does not exist: is the device or driver present?".into()
        }
        Some(libc::ENODEV) => "no driver accepted the device".into(),
        Some(libc::EBUSY) => {
            "the device is busy: close whatever uses it (a VMM, hwrr record)".into()
        }
        Some(libc::EINVAL) => "the kernel refused the value".into(),
        _ => "see the kernel log (dmesg)".into(),
    }
}

/// Reads every record currently in a kmsg device without blocking (or a whole regular file).
fn read_kmsg(path: &Path) -> io::Result<String> {
    let mut f = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NONBLOCK)
        .open(path)?;
    let mut out = String::new();
    let mut buf = vec![0u8; 16 * 1024];
    loop {
        match f.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => {
                out.push_str(&String::from_utf8_lossy(&buf[..n]));
                // /dev/kmsg returns one record per read, without a newline at the end of some
                // kernels' continuation records: keep records on separate lines.
                if !out.ends_with('\n') {
                    out.push('\n');
                }
            }
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
            // A record was overwritten while we read: the next read continues with the oldest one.
            Err(e) if e.raw_os_error() == Some(libc::EPIPE) => continue,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        }
    }
    Ok(out)
}

/// Removes a kmsg prefix (`6,339,5140900,-;`) or a dmesg timestamp (`[    5.140900] `).
fn strip_log_prefix(line: &str) -> &str {
    let l = line.trim_end();
    if let Some((head, rest)) = l.split_once(';') {
        let mut fields = head.split(',');
        let numeric = fields
            .next()
            .is_some_and(|f| !f.is_empty() && f.bytes().all(|b| b.is_ascii_digit()));
        if numeric && head.split(',').count() >= 3 {
            return rest;
        }
    }
    if let Some(rest) = l.strip_prefix('[') {
        if let Some((ts, after)) = rest.split_once(']') {
            if ts.trim().bytes().all(|b| b.is_ascii_digit() || b == b'.') {
                return after.trim_start();
            }
        }
    }
    l
}

#[cfg(test)]
mod tests {
    use super::strip_log_prefix;

    #[test]
    fn strips_kmsg_and_dmesg_prefixes() {
        assert_eq!(
            strip_log_prefix("6,339,5140900,-;DMAR: IOMMU enabled"),
            "DMAR: IOMMU enabled"
        );
        assert_eq!(
            strip_log_prefix("[    0.012345] DMAR: IOMMU enabled"),
            "DMAR: IOMMU enabled"
        );
        assert_eq!(strip_log_prefix("plain; message"), "plain; message");
        assert_eq!(strip_log_prefix("[x] y"), "[x] y");
    }
}
