//! A fake host tree in a tempdir, and a tiny kernel simulation driven by sysfs writes.
#![allow(dead_code)]

use std::collections::BTreeMap;
use std::fs;
use std::os::unix::fs::symlink;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use hwrr_host_setup::{HostRoot, KernelLog, User};

/// One simulated PCI function.
#[derive(Clone, Debug)]
pub struct FakeDevice {
    pub bdf: &'static str,
    pub ids: (&'static str, &'static str),
    pub class: &'static str,
    pub group: Option<u32>,
    pub driver: Option<&'static str>,
    /// The driver a probe without override picks.
    pub native: Option<&'static str>,
}

impl FakeDevice {
    pub fn nic(bdf: &'static str, group: u32, driver: Option<&'static str>) -> Self {
        FakeDevice {
            bdf,
            ids: ("8086", "10d3"),
            class: "0x020000",
            group: Some(group),
            driver,
            native: Some("e1000e"),
        }
    }
}

#[derive(Default)]
struct SimState {
    /// Removed devices waiting for a rescan, with the driver a probe picks.
    removed: Vec<(String, PathBuf, Option<String>)>,
    native: BTreeMap<String, Option<String>>,
    new_id: Option<String>,
    writes: Vec<(String, String)>,
}

pub struct FakeHost {
    pub dir: tempfile::TempDir,
    pub root: HostRoot,
    sim: Arc<Mutex<SimState>>,
}

fn touch(p: &Path, content: &str) {
    fs::create_dir_all(p.parent().unwrap()).unwrap();
    fs::write(p, content).unwrap();
}

impl FakeHost {
    /// A healthy Intel host: kernel 6.1, IOMMU on, vfio modules and drivers loaded, root user.
    pub fn healthy() -> Self {
        let dir = tempfile::tempdir().unwrap();
        let base = dir.path().to_path_buf();
        let mut root = HostRoot::under(&base);
        root.user = User {
            uid: 0,
            gids: vec![0],
        };
        let sim = Arc::new(Mutex::new(SimState::default()));
        root.write_hook = Some(kernel_sim(sim.clone(), base.clone()));
        let host = FakeHost { dir, root, sim };
        fs::create_dir_all(base.join("sys/bus/pci/devices")).unwrap();
        fs::create_dir_all(base.join("sys/kernel/iommu_groups")).unwrap();
        touch(&base.join("sys/bus/pci/drivers_probe"), "");
        touch(&base.join("sys/bus/pci/rescan"), "");
        touch(
            &base.join("proc/cmdline"),
            "BOOT_IMAGE=/vmlinuz root=/dev/sda1 intel_iommu=on quiet\n",
        );
        touch(&base.join("proc/sys/kernel/osrelease"), "6.1.0-56-amd64\n");
        touch(&base.join("proc/cpuinfo"), "vendor_id\t: GenuineIntel\n");
        touch(
            &base.join("proc/modules"),
            "vfio_pci 16384 0 - Live 0x0\nvfio_iommu_type1 45056 0 - Live 0x0\nvfio 45056 2 vfio_pci,vfio_iommu_type1, Live 0x0\n",
        );
        touch(&base.join("dev/vfio/vfio"), "");
        host.set_log(&[
            "6,1,100,-;DMAR: Host address width 39",
            "6,2,200,-;DMAR: IOMMU enabled",
            "6,3,300,-;DMAR-IR: Enabled IRQ remapping in xapic mode",
        ]);
        host.add_driver("vfio-pci");
        host.add_driver("e1000e");
        touch(
            &base.join("lib/modules/6.1.0-56-amd64/modules.alias"),
            "alias pci:v00008086d000010D3sv*sd*bc*sc*i* e1000e\nalias vfio_pci:v*d*sv*sd*bc*sc*i* vfio_pci\nalias pci:v*d*sv*sd*bc02sc00i* some_generic_nic\n",
        );
        host
    }

    pub fn base(&self) -> PathBuf {
        self.dir.path().to_path_buf()
    }

    pub fn set_log(&self, lines: &[&str]) {
        touch(&self.base().join("dev/kmsg"), &(lines.join("\n") + "\n"));
    }

    pub fn add_driver(&self, name: &str) {
        let d = self.base().join("sys/bus/pci/drivers").join(name);
        for f in ["bind", "unbind", "new_id", "remove_id"] {
            touch(&d.join(f), "");
        }
    }

    pub fn add_device(&self, dev: FakeDevice) {
        let base = self.base();
        let d = base.join("sys/bus/pci/devices").join(dev.bdf);
        touch(&d.join("vendor"), &format!("0x{}\n", dev.ids.0));
        touch(&d.join("device"), &format!("0x{}\n", dev.ids.1));
        touch(&d.join("class"), &format!("{}\n", dev.class));
        let class = u32::from_str_radix(dev.class.trim_start_matches("0x"), 16).unwrap();
        touch(
            &d.join("modalias"),
            &format!(
                "pci:v0000{}d0000{}sv00008086sd0000A01Fbc{:02X}sc{:02X}i{:02X}\n",
                dev.ids.0.to_uppercase(),
                dev.ids.1.to_uppercase(),
                class >> 16,
                (class >> 8) & 0xff,
                class & 0xff
            ),
        );
        touch(&d.join("driver_override"), "(null)\n");
        touch(&d.join("reset"), "");
        touch(&d.join("reset_method"), "pm\n");
        touch(&d.join("remove"), "");
        if let Some(g) = dev.group {
            let gdir = base.join("sys/kernel/iommu_groups").join(g.to_string());
            fs::create_dir_all(gdir.join("devices")).unwrap();
            symlink(&gdir, d.join("iommu_group")).unwrap();
            symlink(&d, gdir.join("devices").join(dev.bdf)).unwrap();
        }
        self.sim
            .lock()
            .unwrap()
            .native
            .insert(dev.bdf.to_string(), dev.native.map(str::to_string));
        if let Some(drv) = dev.driver {
            bind_link(&base, dev.bdf, drv);
        }
    }

    /// Simulates a `new_id` registration of the device's ids with vfio-pci.
    pub fn register_new_id(&self, ids: &str) {
        self.sim.lock().unwrap().new_id = Some(ids.to_string());
    }

    /// Every sysfs write so far, as (path relative to sys, value).
    pub fn writes(&self) -> Vec<(String, String)> {
        self.sim.lock().unwrap().writes.clone()
    }

    pub fn driver_of(&self, bdf: &str) -> Option<String> {
        fs::read_link(
            self.base()
                .join("sys/bus/pci/devices")
                .join(bdf)
                .join("driver"),
        )
        .ok()
        .map(|t| t.file_name().unwrap().to_string_lossy().into_owned())
    }

    pub fn with_log_file(mut self, content: &str) -> Self {
        let p = self.base().join("dmesg.txt");
        fs::write(&p, content).unwrap();
        self.root.kernel_log = KernelLog::File(p);
        self
    }
}

fn bind_link(base: &Path, bdf: &str, drv: &str) {
    let d = base.join("sys/bus/pci/devices").join(bdf);
    let link = d.join("driver");
    let _ = fs::remove_file(&link);
    symlink(base.join("sys/bus/pci/drivers").join(drv), &link).unwrap();
    if drv == "vfio-pci" {
        if let Ok(g) = fs::read_link(d.join("iommu_group")) {
            let g = g.file_name().unwrap().to_string_lossy().into_owned();
            touch(&base.join("dev/vfio").join(g), "");
        }
    }
}

fn unbind_link(base: &Path, bdf: &str) {
    let d = base.join("sys/bus/pci/devices").join(bdf);
    let was_vfio = fs::read_link(d.join("driver")).is_ok_and(|t| t.ends_with("vfio-pci"));
    let _ = fs::remove_file(d.join("driver"));
    if was_vfio {
        if let Ok(g) = fs::read_link(d.join("iommu_group")) {
            let g = g.file_name().unwrap().to_string_lossy().into_owned();
            let _ = fs::remove_file(base.join("dev/vfio").join(g));
        }
    }
}

/// The kernel's side of sysfs writes, just enough for bind/unbind/reset.
fn kernel_sim(sim: Arc<Mutex<SimState>>, base: PathBuf) -> hwrr_host_setup::WriteHook {
    let root_sys = base.join("sys");
    let hook = move |path: &Path, value: &str| {
        let rel = path
            .strip_prefix(&root_sys)
            .unwrap()
            .to_string_lossy()
            .into_owned();
        let mut s = sim.lock().unwrap();
        s.writes.push((rel.clone(), value.to_string()));
        let v = value.trim();
        let parts: Vec<&str> = rel.split('/').collect();
        match parts.as_slice() {
            ["bus", "pci", "drivers", drv, "unbind"] => {
                let link = base.join("sys/bus/pci/devices").join(v).join("driver");
                if fs::read_link(&link).is_ok_and(|t| t.ends_with(drv)) {
                    unbind_link(&base, v);
                }
            }
            ["bus", "pci", "drivers", drv, "bind"] => bind_link(&base, v, drv),
            ["bus", "pci", "drivers", "vfio-pci", "remove_id"] => s.new_id = None,
            ["bus", "pci", "drivers_probe"] => {
                let d = base.join("sys/bus/pci/devices").join(v);
                let ov = fs::read_to_string(d.join("driver_override")).unwrap_or_default();
                let ov = ov.trim();
                let pick = if ov != "(null)" && !ov.is_empty() {
                    Some(ov.to_string())
                } else {
                    s.native.get(v).cloned().flatten()
                };
                if let Some(p) = pick {
                    if base.join("sys/bus/pci/drivers").join(&p).is_dir() {
                        bind_link(&base, v, &p);
                    }
                }
            }
            ["bus", "pci", "devices", bdf, "driver_override"] if v.is_empty() => {
                fs::write(path, "(null)\n").unwrap();
                let _ = bdf;
            }
            ["bus", "pci", "devices", bdf, "remove"] => {
                let bdf = bdf.to_string();
                unbind_link(&base, &bdf);
                let d = base.join("sys/bus/pci/devices").join(&bdf);
                let stash = base.join("stash").join(&bdf);
                fs::create_dir_all(stash.parent().unwrap()).unwrap();
                fs::rename(&d, &stash).unwrap();
                let native = s.native.get(&bdf).cloned().flatten();
                s.removed.push((bdf, stash, native));
            }
            ["bus", "pci", "rescan"] => {
                let removed = std::mem::take(&mut s.removed);
                for (bdf, stash, native) in removed {
                    let d = base.join("sys/bus/pci/devices").join(&bdf);
                    fs::rename(&stash, &d).unwrap();
                    fs::write(d.join("driver_override"), "(null)\n").unwrap();
                    let vendor = fs::read_to_string(d.join("vendor")).unwrap();
                    let device = fs::read_to_string(d.join("device")).unwrap();
                    let ids = format!(
                        "{} {}",
                        vendor.trim().trim_start_matches("0x"),
                        device.trim().trim_start_matches("0x")
                    );
                    if s.new_id.as_deref() == Some(ids.as_str()) {
                        bind_link(&base, &bdf, "vfio-pci");
                    } else if let Some(n) = native {
                        if base.join("sys/bus/pci/drivers").join(&n).is_dir() {
                            bind_link(&base, &bdf, &n);
                        }
                    }
                }
            }
            _ => {}
        }
    };
    Arc::new(hook)
}
