//! `doctor`: is this host ready for VFIO passthrough of a device, and if not, what to do.

use std::os::unix::fs::MetadataExt;
use std::path::Path;

use serde::Serialize;

use crate::{klog, Bdf, HostError, HostRoot, Status};

/// VFIO needs at least this kernel (major, minor).
pub const MIN_KERNEL: (u32, u32) = (3, 12);
/// This many DMA remapping faults from one device count as a flood (a failure, not a warning).
pub const DMAR_FLOOD_THRESHOLD: usize = 10;

/// One check's result.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Finding {
    /// Short check name (`iommu-groups`, `group-viability`, ...).
    pub check: &'static str,
    /// Outcome.
    pub status: Status,
    /// What was found and, when not ok, what to do.
    pub message: String,
}

/// Every finding of one `doctor` run.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct DoctorReport {
    /// The device checked, if any.
    pub device: Option<Bdf>,
    /// Findings in check order.
    pub findings: Vec<Finding>,
}

impl DoctorReport {
    /// The worst status (ok when empty).
    pub fn worst(&self) -> Status {
        self.findings
            .iter()
            .map(|f| f.status)
            .max()
            .unwrap_or(Status::Ok)
    }

    /// Exit code for the CLI: 0 when nothing failed (warnings allowed), 1 when a check failed.
    /// (2, "could not run", is for a [`HostError`] from [`doctor`].)
    pub fn exit_code(&self) -> i32 {
        match self.worst() {
            Status::Fail => 1,
            _ => 0,
        }
    }

    /// The finding of a check, if it ran.
    pub fn finding(&self, check: &str) -> Option<&Finding> {
        self.findings.iter().find(|f| f.check == check)
    }

    fn push(&mut self, check: &'static str, status: Status, message: impl Into<String>) {
        self.findings.push(Finding {
            check,
            status,
            message: message.into(),
        });
    }
}

/// Runs every check (and the device checks when `device` is given).
///
/// Fails only when `root` has no sysfs at all; everything else becomes a finding.
pub fn doctor(root: &HostRoot, device: Option<Bdf>) -> Result<DoctorReport, HostError> {
    if !root.sys.join("bus/pci").is_dir() {
        return Err(HostError::NoSysfs(root.sys.clone()));
    }
    let mut r = DoctorReport {
        device,
        findings: Vec::new(),
    };
    let log = root.kernel_log_lines();
    check_iommu(root, &mut r, log.as_ref().ok());
    check_kernel(root, &mut r);
    check_modules(root, &mut r);
    check_memlock(root, &mut r);
    if let Some(bdf) = device {
        check_device(root, &mut r, &bdf);
    }
    check_faults(&mut r, &log, device);
    Ok(r)
}

fn cpu_is_amd(root: &HostRoot) -> bool {
    std::fs::read_to_string(root.proc.join("cpuinfo")).is_ok_and(|s| s.contains("AuthenticAMD"))
}

fn check_iommu(root: &HostRoot, r: &mut DoctorReport, log: Option<&Vec<String>>) {
    let groups_dir = root.sys.join("kernel/iommu_groups");
    let groups = std::fs::read_dir(&groups_dir)
        .map(|d| d.filter_map(|e| e.ok()).count())
        .unwrap_or(0);
    let cmdline = root
        .read_attr(&root.proc.join("cmdline"))
        .unwrap_or_default();
    let params: Vec<&str> = cmdline.split_whitespace().collect();
    let has = |p: &str| params.contains(&p);
    let on_param = if cpu_is_amd(root) {
        "amd_iommu=on"
    } else {
        "intel_iommu=on"
    };
    let off = ["intel_iommu=off", "amd_iommu=off", "iommu=off"]
        .into_iter()
        .find(|p| has(p));

    if groups > 0 {
        r.push(
            "iommu-groups",
            Status::Ok,
            format!("{groups} IOMMU groups in /sys/kernel/iommu_groups"),
        );
    } else if let Some(off) = off {
        r.push(
            "iommu-groups",
            Status::Fail,
            format!(
                "IOMMU is off: the kernel command line has {off}: remove it and add {on_param}"
            ),
        );
    } else {
        r.push(
            "iommu-groups",
            Status::Fail,
            format!(
                "IOMMU is off: add {on_param} to the kernel command line (and enable VT-d/AMD-Vi in \
                 the firmware setup)"
            ),
        );
    }

    let explicit = [
        "intel_iommu=on",
        "amd_iommu=on",
        "amd_iommu=force",
        "iommu=pt",
    ]
    .into_iter()
    .filter(|p| has(p))
    .collect::<Vec<_>>();
    if let Some(off) = off {
        r.push(
            "iommu-cmdline",
            Status::Fail,
            format!("{off} on the kernel command line: remove it and add {on_param}"),
        );
    } else if !explicit.is_empty() {
        r.push(
            "iommu-cmdline",
            Status::Ok,
            format!("{} on the kernel command line", explicit.join(" ")),
        );
    } else if groups > 0 {
        r.push(
            "iommu-cmdline",
            Status::Ok,
            format!("no IOMMU option on the kernel command line; the kernel enabled it by default ({on_param} makes it explicit)"),
        );
    } else {
        r.push(
            "iommu-cmdline",
            Status::Fail,
            format!("no IOMMU option on the kernel command line and the kernel did not enable one: add {on_param}"),
        );
    }

    match log {
        None => r.push(
            "iommu-kernel-log",
            Status::Warn,
            "could not read the kernel log (run as root, or pass a dmesg file)",
        ),
        Some(lines) => {
            let enabled = klog::iommu_enabled_lines(lines);
            if let Some(first) = enabled.first() {
                r.push(
                    "iommu-kernel-log",
                    Status::Ok,
                    format!("kernel log: {first}"),
                );
            } else if lines
                .iter()
                .any(|l| l.contains("DMAR") || l.contains("AMD-Vi"))
            {
                r.push(
                    "iommu-kernel-log",
                    Status::Warn,
                    "the kernel log mentions DMAR/AMD-Vi but not that the IOMMU was enabled: \
                     check `dmesg | grep -e DMAR -e AMD-Vi`",
                );
            } else {
                r.push(
                    "iommu-kernel-log",
                    Status::Warn,
                    "no DMAR/AMD-Vi lines in the kernel log (it may have wrapped since boot)",
                );
            }
        }
    }
}

/// Parses `6.1.0-56-amd64` into (6, 1).
fn parse_release(release: &str) -> Option<(u32, u32)> {
    let mut it = release.split(|c: char| !c.is_ascii_digit());
    let major = it.next()?.parse().ok()?;
    let minor = it.next()?.parse().ok()?;
    Some((major, minor))
}

fn check_kernel(root: &HostRoot, r: &mut DoctorReport) {
    match root.kernel_release() {
        None => r.push(
            "kernel-version",
            Status::Warn,
            "could not read /proc/sys/kernel/osrelease",
        ),
        Some(rel) => match parse_release(&rel) {
            Some(v) if v >= MIN_KERNEL => {
                r.push("kernel-version", Status::Ok, format!("kernel {rel}"))
            }
            Some(_) => r.push(
                "kernel-version",
                Status::Fail,
                format!(
                    "kernel {rel} is older than {}.{}: VFIO needs a newer kernel",
                    MIN_KERNEL.0, MIN_KERNEL.1
                ),
            ),
            None => r.push(
                "kernel-version",
                Status::Warn,
                format!("cannot parse the kernel release {rel:?}"),
            ),
        },
    }
}

fn check_modules(root: &HostRoot, r: &mut DoctorReport) {
    let proc_modules = std::fs::read_to_string(root.proc.join("modules")).unwrap_or_default();
    let loaded = |m: &str| {
        root.sys.join("module").join(m).is_dir()
            || proc_modules
                .lines()
                .any(|l| l.split_whitespace().next() == Some(m))
    };
    let missing: Vec<&str> = ["vfio", "vfio_pci", "vfio_iommu_type1"]
        .into_iter()
        .filter(|m| !loaded(m))
        .collect();
    let driver = root.pci_driver("vfio-pci").is_dir();
    if missing.is_empty() && driver {
        r.push(
            "vfio-modules",
            Status::Ok,
            "vfio, vfio_pci and vfio_iommu_type1 are loaded",
        );
    } else if missing.is_empty() {
        r.push(
            "vfio-modules",
            Status::Fail,
            "vfio_pci is loaded but /sys/bus/pci/drivers/vfio-pci is missing: run `modprobe vfio-pci`",
        );
    } else {
        let cmd = missing
            .iter()
            .map(|m| if *m == "vfio_pci" { "vfio-pci" } else { m })
            .collect::<Vec<_>>()
            .join(" ");
        r.push(
            "vfio-modules",
            Status::Fail,
            format!(
                "not loaded: {}: run `modprobe -a {cmd}`",
                missing.join(", ")
            ),
        );
    }
}

/// Below this locked-memory limit a non-root VMM cannot pin a useful amount of guest RAM.
const MEMLOCK_MIN: u64 = 1 << 30;

/// VFIO pins every DMA-mapped page against RLIMIT_MEMLOCK; root (CAP_IPC_LOCK) is exempt.
fn check_memlock(root: &HostRoot, r: &mut DoctorReport) {
    if root.user.uid == 0 {
        return;
    }
    let limits = std::fs::read_to_string(root.proc.join("self/limits")).unwrap_or_default();
    let Some(line) = limits.lines().find(|l| l.starts_with("Max locked memory")) else {
        r.push(
            "memlock",
            Status::Warn,
            "could not read the locked-memory limit (/proc/self/limits)",
        );
        return;
    };
    let soft = line
        .trim_start_matches("Max locked memory")
        .split_whitespace()
        .next()
        .unwrap_or("");
    match soft {
        "unlimited" => r.push("memlock", Status::Ok, "locked-memory limit: unlimited"),
        v => match v.parse::<u64>() {
            Ok(n) if n >= MEMLOCK_MIN => r.push(
                "memlock",
                Status::Ok,
                format!("locked-memory limit: {} MiB", n >> 20),
            ),
            Ok(n) => r.push(
                "memlock",
                Status::Warn,
                format!(
                    "locked-memory limit is {} KiB: VFIO pins all DMA-mapped memory (the guest's RAM) \
                     against it: raise it (`ulimit -l`, or memlock in /etc/security/limits.conf) or run as root",
                    n >> 10
                ),
            ),
            Err(_) => r.push(
                "memlock",
                Status::Warn,
                format!("cannot parse the locked-memory limit {v:?}"),
            ),
        },
    }
}

fn is_bridge(root: &HostRoot, dev_dir: &Path) -> bool {
    root.read_attr(&dev_dir.join("class"))
        .and_then(|c| u32::from_str_radix(c.trim_start_matches("0x"), 16).ok())
        .is_some_and(|c| c >> 8 == 0x0604 || c >> 8 == 0x0600)
}

fn check_device(root: &HostRoot, r: &mut DoctorReport, bdf: &Bdf) {
    let dir = root.pci_device(bdf);
    if !dir.exists() {
        r.push(
            "device",
            Status::Fail,
            format!("no PCI device {bdf}: check the address with `lspci -D`"),
        );
        return;
    }
    let ids = format!(
        "{}:{}",
        root.read_attr(&dir.join("vendor"))
            .unwrap_or_default()
            .trim_start_matches("0x"),
        root.read_attr(&dir.join("device"))
            .unwrap_or_default()
            .trim_start_matches("0x")
    );
    let driver = root.link_name(&dir.join("driver"));
    match driver.as_deref() {
        Some("vfio-pci") => r.push(
            "device",
            Status::Ok,
            format!("{bdf} [{ids}] is bound to vfio-pci"),
        ),
        Some(d) => r.push(
            "device",
            Status::Warn,
            format!("{bdf} [{ids}] is bound to {d}: run `hwrr bind {bdf}` to hand it to vfio-pci"),
        ),
        None => r.push(
            "device",
            Status::Warn,
            format!("{bdf} [{ids}] has no driver: run `hwrr bind {bdf}` to hand it to vfio-pci"),
        ),
    }

    let Some(group) = root.link_name(&dir.join("iommu_group")) else {
        r.push(
            "iommu-group",
            Status::Fail,
            format!("{bdf} has no IOMMU group: the IOMMU is off or does not cover this device"),
        );
        return;
    };
    r.push(
        "iommu-group",
        Status::Ok,
        format!("{bdf} is in IOMMU group {group}"),
    );

    let (members, blockers) = group_members(root, &group, bdf);
    if blockers.is_empty() {
        let others = members.len().saturating_sub(1);
        r.push(
            "group-viability",
            Status::Ok,
            if others == 0 {
                format!("group {group} holds only {bdf}")
            } else {
                format!("group {group} is viable: its {others} other device(s) are unbound, on vfio-pci, or bridges")
            },
        );
    } else {
        let what = blockers
            .iter()
            .map(|(m, d)| {
                format!(
                    "group {group} also holds {m} (bound to {d}): bind it too (`hwrr bind {m}`)"
                )
            })
            .collect::<Vec<_>>()
            .join("; ");
        r.push("group-viability", Status::Fail, what);
    }

    check_dev_vfio(root, r, &group, driver.as_deref() == Some("vfio-pci"));
}

/// The devices of IOMMU group `group`, sorted, and those among them (other than `bdf`) that make
/// the group unusable for VFIO: bound to a driver other than vfio-pci or pci-stub, and not a bridge.
pub(crate) fn group_members(
    root: &HostRoot,
    group: &str,
    bdf: &Bdf,
) -> (Vec<String>, Vec<(String, String)>) {
    let members_dir = root
        .sys
        .join("kernel/iommu_groups")
        .join(group)
        .join("devices");
    let mut members: Vec<String> = std::fs::read_dir(&members_dir)
        .map(|d| {
            d.filter_map(|e| e.ok())
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default();
    members.sort();
    let mut blockers = Vec::new();
    for m in members.iter().filter(|m| **m != bdf.to_string()) {
        let mdir = root.sys.join("bus/pci/devices").join(m);
        let mdrv = root.link_name(&mdir.join("driver"));
        let ok = match mdrv.as_deref() {
            None | Some("vfio-pci") | Some("pci-stub") => true,
            Some(_) => is_bridge(root, &mdir),
        };
        if !ok {
            blockers.push((m.clone(), mdrv.unwrap_or_default()));
        }
    }
    (members, blockers)
}

fn check_dev_vfio(root: &HostRoot, r: &mut DoctorReport, group: &str, bound: bool) {
    let container = root.dev.join("vfio/vfio");
    if !container.exists() {
        r.push(
            "dev-vfio",
            Status::Fail,
            "/dev/vfio/vfio is missing: load the vfio module (`modprobe vfio`)",
        );
        return;
    }
    let node = root.dev.join("vfio").join(group);
    let shown = format!("/dev/vfio/{group}");
    let meta = match std::fs::metadata(&node) {
        Ok(m) => m,
        Err(_) if !bound => {
            r.push(
                "dev-vfio",
                Status::Warn,
                format!("{shown} appears once the device is bound to vfio-pci (`hwrr bind`)"),
            );
            return;
        }
        Err(_) => {
            r.push(
                "dev-vfio",
                Status::Fail,
                format!("{shown} is missing although the device is on vfio-pci: check `dmesg` for vfio errors"),
            );
            return;
        }
    };
    let user = &root.user;
    let mode = meta.mode();
    let can = if user.uid == 0 {
        true
    } else if meta.uid() == user.uid {
        mode & 0o600 == 0o600
    } else if user.gids.contains(&meta.gid()) {
        mode & 0o060 == 0o060
    } else {
        mode & 0o006 == 0o006
    };
    let owner = if meta.uid() == 0 {
        "root".to_string()
    } else {
        format!("uid {}", meta.uid())
    };
    if can {
        let who = if user.uid == 0 { "root" } else { "this user" };
        r.push(
            "dev-vfio",
            Status::Ok,
            format!(
                "{shown} (owner {owner}, mode {:o}) is usable by {who}",
                mode & 0o777
            ),
        );
    } else {
        r.push(
            "dev-vfio",
            Status::Fail,
            format!(
                "{shown} belongs to {owner} (mode {:o}): run as root or give your user access \
                 (chown or a udev rule, e.g. SUBSYSTEM==\"vfio\", GROUP=\"kvm\", MODE=\"0660\"); \
                 also raise the locked-memory limit (ulimit -l) for DMA mappings",
                mode & 0o777
            ),
        );
    }
}

fn check_faults(r: &mut DoctorReport, log: &std::io::Result<Vec<String>>, device: Option<Bdf>) {
    let Ok(lines) = log else {
        return;
    };
    let faults = klog::dma_faults(lines);
    if faults.by_device.is_empty() && faults.anonymous == 0 && faults.suppressed == 0 {
        r.push(
            "dma-faults",
            Status::Ok,
            "no DMA remapping faults in the kernel log",
        );
        return;
    }
    let mut worst = Status::Ok;
    let mut parts = Vec::new();
    for (bdf, (n, example)) in &faults.by_device {
        let status = if *n >= DMAR_FLOOD_THRESHOLD {
            Status::Fail
        } else {
            Status::Warn
        };
        worst = worst.max(status);
        let mine = if Some(*bdf) == device {
            " (the device checked)"
        } else {
            ""
        };
        parts.push(format!("{n} faults from {bdf}{mine}, e.g. \"{example}\""));
    }
    if faults.anonymous > 0 {
        worst = worst.max(Status::Warn);
        parts.push(format!(
            "{} fault reports without a device",
            faults.anonymous
        ));
    }
    if faults.suppressed > 0 {
        // The kernel only rate-limits fault messages when more than ten arrive in five seconds.
        worst = Status::Fail;
        parts.push(format!(
            "{} more fault messages suppressed by the kernel's rate limit",
            faults.suppressed
        ));
    }
    let advice = if worst == Status::Fail {
        ": a flood of DMA faults means the device DMAs to addresses the IOMMU does not map \
         (stale mappings after a VMM crash, or a device left running): run `hwrr reset BDF`"
    } else {
        ""
    };
    r.push("dma-faults", worst, format!("{}{advice}", parts.join("; ")));
}

#[cfg(test)]
mod tests {
    use super::parse_release;

    #[test]
    fn kernel_releases() {
        assert_eq!(parse_release("6.1.0-56-amd64"), Some((6, 1)));
        assert_eq!(parse_release("3.10.0-1160.el7.x86_64"), Some((3, 10)));
        assert_eq!(parse_release("4"), None);
        assert_eq!(parse_release("x"), None);
    }
}
