//! Sysfs checks before opening a device, so that a refusal says what to do instead of an errno
//! from deep inside the group/device open.

use std::path::{Path, PathBuf};

/// Why a device cannot be opened through VFIO, found in sysfs.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum PreflightError {
    /// No such PCI device.
    #[error("no PCI device {bdf} ({path} does not exist)")]
    NoSuchDevice {
        /// The device.
        bdf: String,
        /// The sysfs path looked at.
        path: PathBuf,
    },
    /// The device has no IOMMU group: the IOMMU is off or absent.
    #[error(
        "{bdf} has no IOMMU group: the IOMMU is off (add intel_iommu=on or amd_iommu=on to the \
         kernel command line) or absent"
    )]
    NoIommuGroup {
        /// The device.
        bdf: String,
    },
    /// The device is not bound to vfio-pci.
    #[error("{bdf} is bound to {}, not vfio-pci: bind it first (hwrr bind {bdf})",
        driver.as_deref().unwrap_or("no driver"))]
    NotBoundToVfio {
        /// The device.
        bdf: String,
        /// The driver it is bound to, if any.
        driver: Option<String>,
    },
    /// Another device of the group is bound to a host driver, so the group is not viable.
    #[error("IOMMU group {group} also holds {other} (driver {driver}): bind it to vfio-pci too")]
    GroupNotViable {
        /// The group number.
        group: u32,
        /// The other device.
        other: String,
        /// Its driver.
        driver: String,
    },
}

/// What the checks found.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Preflight {
    /// The device's sysfs directory.
    pub path: PathBuf,
    /// Its IOMMU group (`/dev/vfio/<group>`).
    pub group: u32,
}

fn link_name(path: &Path) -> Option<String> {
    std::fs::read_link(path)
        .ok()?
        .file_name()?
        .to_str()
        .map(str::to_string)
}

/// Drivers that leave a group viable: vfio-pci itself and pci-stub (which binds and does nothing).
fn viable_driver(driver: &str) -> bool {
    matches!(driver, "vfio-pci" | "pci-stub")
}

/// Checks `<sysfs_root>/bus/pci/devices/<bdf>`: it exists, has an IOMMU group, is bound to
/// vfio-pci, and every other device of its group is bound to vfio-pci, pci-stub or nothing.
/// `bdf` must already be normalised (see [`crate::normalize_bdf`]).
pub fn check(sysfs_root: &Path, bdf: &str) -> Result<Preflight, PreflightError> {
    let path = sysfs_root.join("bus/pci/devices").join(bdf);
    if !path.exists() {
        return Err(PreflightError::NoSuchDevice {
            bdf: bdf.to_string(),
            path,
        });
    }
    let group = link_name(&path.join("iommu_group"))
        .and_then(|g| g.parse::<u32>().ok())
        .ok_or_else(|| PreflightError::NoIommuGroup {
            bdf: bdf.to_string(),
        })?;
    let driver = link_name(&path.join("driver"));
    if driver.as_deref() != Some("vfio-pci") {
        return Err(PreflightError::NotBoundToVfio {
            bdf: bdf.to_string(),
            driver,
        });
    }
    let members = path.join("iommu_group/devices");
    let mut others: Vec<String> = std::fs::read_dir(&members)
        .map(|rd| {
            rd.filter_map(|e| e.ok()?.file_name().to_str().map(str::to_string))
                .filter(|name| name != bdf)
                .collect()
        })
        .unwrap_or_default();
    others.sort();
    for other in others {
        if let Some(driver) = link_name(&members.join(&other).join("driver")) {
            if !viable_driver(&driver) {
                return Err(PreflightError::GroupNotViable {
                    group,
                    other,
                    driver,
                });
            }
        }
    }
    Ok(Preflight { path, group })
}

/// The name of the device's VFIO cdev (`vfioN`, the node in `/dev/vfio/devices`), from the one
/// entry of `<device>/vfio-dev/`. The error says what is missing; kernels without
/// `CONFIG_VFIO_DEVICE_CDEV` (before 6.6, or built without iommufd) have no `vfio-dev` at all.
pub fn vfio_cdev_name(device_path: &Path) -> Result<String, String> {
    let dir = device_path.join("vfio-dev");
    let rd = std::fs::read_dir(&dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    let mut names: Vec<String> = rd
        .filter_map(|e| e.ok()?.file_name().to_str().map(str::to_string))
        .filter(|n| {
            n.strip_prefix("vfio")
                .is_some_and(|k| !k.is_empty() && k.bytes().all(|b| b.is_ascii_digit()))
        })
        .collect();
    names.sort();
    match names.as_slice() {
        [one] => Ok(one.clone()),
        [] => Err(format!("{} holds no vfioN entry", dir.display())),
        many => Err(format!(
            "{} holds {} vfioN entries ({})",
            dir.display(),
            many.len(),
            many.join(", ")
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::symlink;

    /// A fake sysfs with devices (bdf, group, driver) laid out as the kernel does: devices under
    /// `devices/pci0000:00`, links from `bus/pci/devices`, groups under `kernel/iommu_groups`.
    fn fake_sysfs(devices: &[(&str, Option<u32>, Option<&str>)]) -> tempfile::TempDir {
        let root = tempfile::tempdir().unwrap();
        let r = root.path();
        std::fs::create_dir_all(r.join("bus/pci/devices")).unwrap();
        for (bdf, group, driver) in devices {
            let dev = r.join("devices/pci0000:00").join(bdf);
            std::fs::create_dir_all(&dev).unwrap();
            symlink(&dev, r.join("bus/pci/devices").join(bdf)).unwrap();
            if let Some(g) = group {
                let gdir = r.join("kernel/iommu_groups").join(g.to_string());
                std::fs::create_dir_all(gdir.join("devices")).unwrap();
                symlink(&gdir, dev.join("iommu_group")).unwrap();
                symlink(&dev, gdir.join("devices").join(bdf)).unwrap();
            }
            if let Some(d) = driver {
                let ddir = r.join("bus/pci/drivers").join(d);
                std::fs::create_dir_all(&ddir).unwrap();
                symlink(&ddir, dev.join("driver")).unwrap();
            }
        }
        root
    }

    #[test]
    fn a_bound_device_alone_in_its_group_passes() {
        let t = fake_sysfs(&[("0000:00:02.0", Some(7), Some("vfio-pci"))]);
        let p = check(t.path(), "0000:00:02.0").unwrap();
        assert_eq!(p.group, 7);
    }

    #[test]
    fn the_cdev_name_comes_from_the_one_vfio_dev_entry() {
        let t = fake_sysfs(&[("0000:00:02.0", Some(7), Some("vfio-pci"))]);
        let dev = t.path().join("bus/pci/devices/0000:00:02.0");
        let e = vfio_cdev_name(&dev).unwrap_err();
        assert!(e.contains("vfio-dev"), "{e}");
        std::fs::create_dir_all(dev.join("vfio-dev")).unwrap();
        let e = vfio_cdev_name(&dev).unwrap_err();
        assert!(e.contains("no vfioN entry"), "{e}");
        std::fs::create_dir_all(dev.join("vfio-dev/vfio3")).unwrap();
        // Not a vfioN name: ignored, as the kernel only ever puts vfioN there.
        std::fs::create_dir_all(dev.join("vfio-dev/vfiox")).unwrap();
        assert_eq!(vfio_cdev_name(&dev).unwrap(), "vfio3");
        std::fs::create_dir_all(dev.join("vfio-dev/vfio12")).unwrap();
        let e = vfio_cdev_name(&dev).unwrap_err();
        assert!(e.contains("2 vfioN entries (vfio12, vfio3)"), "{e}");
    }

    #[test]
    fn each_refusal_names_the_fix() {
        let t = fake_sysfs(&[
            ("0000:00:02.0", Some(7), Some("e1000e")),
            ("0000:00:03.0", None, Some("vfio-pci")),
            ("0000:00:04.0", Some(9), None),
            ("0000:00:1f.0", Some(12), Some("vfio-pci")),
            ("0000:00:1f.3", Some(12), Some("snd_hda_intel")),
            ("0000:00:1f.4", Some(12), None),
        ]);
        let e = check(t.path(), "0000:00:05.0").unwrap_err();
        assert!(matches!(e, PreflightError::NoSuchDevice { .. }));
        let e = check(t.path(), "0000:00:02.0").unwrap_err();
        assert_eq!(
            e.to_string(),
            "0000:00:02.0 is bound to e1000e, not vfio-pci: bind it first (hwrr bind 0000:00:02.0)"
        );
        let e = check(t.path(), "0000:00:03.0").unwrap_err();
        assert!(e.to_string().contains("intel_iommu=on"), "{e}");
        let e = check(t.path(), "0000:00:04.0").unwrap_err();
        assert!(e.to_string().contains("bound to no driver"), "{e}");
        let e = check(t.path(), "0000:00:1f.0").unwrap_err();
        assert_eq!(
            e,
            PreflightError::GroupNotViable {
                group: 12,
                other: "0000:00:1f.3".into(),
                driver: "snd_hda_intel".into()
            }
        );
    }
}
