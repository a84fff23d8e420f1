//! `doctor` on fake host trees: one test per thing that can be wrong, and the happy path.

mod common;

use std::fs;
use std::os::unix::fs::PermissionsExt;

use common::{FakeDevice, FakeHost};
use hwrr_host_setup::{doctor, Bdf, HostError, Status, User};

const NIC: &str = "0000:00:19.0";

fn bdf(s: &str) -> Bdf {
    s.parse().unwrap()
}

fn status_of(r: &hwrr_host_setup::DoctorReport, check: &str) -> (Status, String) {
    let f = r
        .finding(check)
        .unwrap_or_else(|| panic!("no {check} finding in {r:#?}"));
    (f.status, f.message.clone())
}

fn host_with_bound_nic() -> FakeHost {
    let h = FakeHost::healthy();
    h.add_device(FakeDevice::nic(NIC, 12, Some("vfio-pci")));
    fs::write(h.base().join("dev/vfio/12"), "").unwrap();
    h
}

#[test]
fn happy_path_is_all_ok() {
    let h = host_with_bound_nic();
    let r = doctor(&h.root, Some(bdf(NIC))).unwrap();
    for f in &r.findings {
        assert_eq!(f.status, Status::Ok, "{f:?}");
    }
    let checks: Vec<&str> = r.findings.iter().map(|f| f.check).collect();
    assert_eq!(
        checks,
        [
            "iommu-groups",
            "iommu-cmdline",
            "iommu-kernel-log",
            "kernel-version",
            "vfio-modules",
            "device",
            "iommu-group",
            "group-viability",
            "dev-vfio",
            "dma-faults"
        ]
    );
    assert_eq!(r.exit_code(), 0);
    assert!(status_of(&r, "iommu-kernel-log")
        .1
        .contains("DMAR: IOMMU enabled"));
    let json = serde_json::to_value(&r).unwrap();
    assert_eq!(json["device"], NIC);
    assert_eq!(json["findings"][0]["status"], "ok");
}

#[test]
fn iommu_off_says_to_add_intel_iommu_on() {
    let h = FakeHost::healthy();
    fs::write(h.base().join("proc/cmdline"), "root=/dev/sda1 quiet\n").unwrap();
    h.set_log(&["6,1,1,-;Linux version 6.1.0"]);
    let r = doctor(&h.root, None).unwrap();
    let (s, m) = status_of(&r, "iommu-groups");
    assert_eq!(s, Status::Fail);
    assert!(
        m.contains("IOMMU is off: add intel_iommu=on to the kernel command line"),
        "{m}"
    );
    assert_eq!(status_of(&r, "iommu-cmdline").0, Status::Fail);
    assert_eq!(status_of(&r, "iommu-kernel-log").0, Status::Warn);
    assert_eq!(r.exit_code(), 1);
}

#[test]
fn iommu_off_on_amd_and_explicitly_disabled() {
    let h = FakeHost::healthy();
    fs::write(h.base().join("proc/cpuinfo"), "vendor_id\t: AuthenticAMD\n").unwrap();
    fs::write(h.base().join("proc/cmdline"), "root=/dev/sda1\n").unwrap();
    let r = doctor(&h.root, None).unwrap();
    assert!(status_of(&r, "iommu-groups").1.contains("add amd_iommu=on"));
    fs::write(
        h.base().join("proc/cmdline"),
        "root=/dev/sda1 amd_iommu=off\n",
    )
    .unwrap();
    let r = doctor(&h.root, None).unwrap();
    let (s, m) = status_of(&r, "iommu-cmdline");
    assert_eq!(s, Status::Fail);
    assert!(
        m.contains("amd_iommu=off") && m.contains("remove it"),
        "{m}"
    );
}

#[test]
fn groups_present_without_cmdline_option_is_ok_by_kernel_default() {
    let h = host_with_bound_nic();
    fs::write(h.base().join("proc/cmdline"), "root=/dev/sda1\n").unwrap();
    let r = doctor(&h.root, None).unwrap();
    let (s, m) = status_of(&r, "iommu-cmdline");
    assert_eq!(s, Status::Ok);
    assert!(m.contains("default"), "{m}");
}

#[test]
fn device_without_group_fails() {
    let h = FakeHost::healthy();
    let mut d = FakeDevice::nic(NIC, 0, Some("e1000e"));
    d.group = None;
    h.add_device(d);
    let r = doctor(&h.root, Some(bdf(NIC))).unwrap();
    let (s, m) = status_of(&r, "iommu-group");
    assert_eq!(s, Status::Fail);
    assert!(m.contains("no IOMMU group"), "{m}");
    assert!(r.finding("group-viability").is_none());
}

#[test]
fn old_kernel_fails() {
    let h = FakeHost::healthy();
    fs::write(
        h.base().join("proc/sys/kernel/osrelease"),
        "3.10.0-1160.el7.x86_64\n",
    )
    .unwrap();
    let r = doctor(&h.root, None).unwrap();
    let (s, m) = status_of(&r, "kernel-version");
    assert_eq!(s, Status::Fail);
    assert!(m.contains("older than 3.12"), "{m}");
    fs::write(h.base().join("proc/sys/kernel/osrelease"), "3.12.0\n").unwrap();
    assert_eq!(
        status_of(&doctor(&h.root, None).unwrap(), "kernel-version").0,
        Status::Ok
    );
}

#[test]
fn missing_modules_say_modprobe() {
    let h = FakeHost::healthy();
    fs::write(h.base().join("proc/modules"), "vfio 45056 0 - Live 0x0\n").unwrap();
    let r = doctor(&h.root, None).unwrap();
    let (s, m) = status_of(&r, "vfio-modules");
    assert_eq!(s, Status::Fail);
    assert!(m.contains("vfio_pci, vfio_iommu_type1"), "{m}");
    assert!(m.contains("modprobe -a vfio-pci vfio_iommu_type1"), "{m}");
    // Built-in or listed under /sys/module counts as loaded.
    for m in ["vfio_pci", "vfio_iommu_type1"] {
        fs::create_dir_all(h.base().join("sys/module").join(m)).unwrap();
    }
    assert_eq!(
        status_of(&doctor(&h.root, None).unwrap(), "vfio-modules").0,
        Status::Ok
    );
    fs::remove_dir_all(h.base().join("sys/bus/pci/drivers/vfio-pci")).unwrap();
    let (s, m) = status_of(&doctor(&h.root, None).unwrap(), "vfio-modules");
    assert_eq!(s, Status::Fail);
    assert!(m.contains("modprobe vfio-pci"), "{m}");
}

#[test]
fn non_viable_group_names_the_other_device() {
    let h = FakeHost::healthy();
    h.add_driver("snd_hda_intel");
    h.add_driver("pcieport");
    h.add_device(FakeDevice::nic(NIC, 12, Some("vfio-pci")));
    h.add_device(FakeDevice {
        bdf: "0000:00:1f.3",
        ids: ("8086", "a170"),
        class: "0x040300",
        group: Some(12),
        driver: Some("snd_hda_intel"),
        native: Some("snd_hda_intel"),
    });
    h.add_device(FakeDevice {
        bdf: "0000:00:1c.0",
        ids: ("8086", "a110"),
        class: "0x060400",
        group: Some(12),
        driver: Some("pcieport"),
        native: Some("pcieport"),
    });
    let r = doctor(&h.root, Some(bdf(NIC))).unwrap();
    let (s, m) = status_of(&r, "group-viability");
    assert_eq!(s, Status::Fail);
    assert!(
        m.contains("group 12 also holds 0000:00:1f.3 (bound to snd_hda_intel): bind it too"),
        "{m}"
    );
    assert!(
        !m.contains("00:1c.0"),
        "a bridge does not block the group: {m}"
    );
    // Unbinding the sound function makes the group viable.
    fs::remove_file(h.base().join("sys/bus/pci/devices/0000:00:1f.3/driver")).unwrap();
    let r = doctor(&h.root, Some(bdf(NIC))).unwrap();
    assert_eq!(status_of(&r, "group-viability").0, Status::Ok);
}

#[test]
fn dev_vfio_permissions_for_a_non_root_user() {
    let mut h = host_with_bound_nic();
    let node = h.base().join("dev/vfio/12");
    fs::set_permissions(&node, fs::Permissions::from_mode(0o600)).unwrap();
    h.root.user = User {
        uid: 4242,
        gids: vec![4242],
    };
    let r = doctor(&h.root, Some(bdf(NIC))).unwrap();
    let (s, m) = status_of(&r, "dev-vfio");
    assert_eq!(s, Status::Fail);
    assert!(m.starts_with("/dev/vfio/12 belongs to"), "{m}");
    assert!(m.contains("run as root or give your user access"), "{m}");
    fs::set_permissions(&node, fs::Permissions::from_mode(0o666)).unwrap();
    let r = doctor(&h.root, Some(bdf(NIC))).unwrap();
    assert_eq!(status_of(&r, "dev-vfio").0, Status::Ok);
    // Root may always use it.
    fs::set_permissions(&node, fs::Permissions::from_mode(0o600)).unwrap();
    h.root.user = User {
        uid: 0,
        gids: vec![0],
    };
    assert_eq!(
        status_of(&doctor(&h.root, Some(bdf(NIC))).unwrap(), "dev-vfio").0,
        Status::Ok
    );
}

#[test]
fn missing_group_node_depends_on_binding() {
    let h = FakeHost::healthy();
    h.add_device(FakeDevice::nic(NIC, 12, Some("e1000e")));
    let r = doctor(&h.root, Some(bdf(NIC))).unwrap();
    assert_eq!(status_of(&r, "device").0, Status::Warn);
    assert!(status_of(&r, "device").1.contains("hwrr bind 0000:00:19.0"));
    assert_eq!(status_of(&r, "dev-vfio").0, Status::Warn);
    assert_eq!(r.exit_code(), 0, "warnings alone exit 0");
    fs::remove_file(h.base().join("dev/vfio/vfio")).unwrap();
    let r = doctor(&h.root, Some(bdf(NIC))).unwrap();
    assert_eq!(status_of(&r, "dev-vfio").0, Status::Fail);
}

#[test]
fn dmar_fault_flood_names_the_device_and_count() {
    let h = host_with_bound_nic();
    let mut lines = vec!["6,2,200,-;DMAR: IOMMU enabled".to_string()];
    for i in 0..25 {
        lines.push(format!(
            "3,{},{},-;DMAR: [DMA Read NO_PASID] Request device [00:19.0] fault addr 0xfffd{i:04x} [fault reason 0x06] PTE Read access is not set",
            10 + i,
            1000 + i
        ));
    }
    let refs: Vec<&str> = lines.iter().map(String::as_str).collect();
    h.set_log(&refs);
    let r = doctor(&h.root, Some(bdf(NIC))).unwrap();
    let (s, m) = status_of(&r, "dma-faults");
    assert_eq!(s, Status::Fail);
    assert!(
        m.contains("25 faults from 0000:00:19.0 (the device checked)"),
        "{m}"
    );
    assert!(m.contains("hwrr reset"), "{m}");
    assert_eq!(r.exit_code(), 1);
}

#[test]
fn a_few_amd_faults_are_a_warning_from_a_dmesg_file() {
    let h = host_with_bound_nic().with_log_file(
        "[    0.5] AMD-Vi: Interrupt remapping enabled\n\
         [   10.1] vfio-pci 0000:03:00.0: AMD-Vi: Event logged [IO_PAGE_FAULT domain=0x000e address=0xfffd0000 flags=0x0000]\n\
         [   10.2] AMD-Vi: Event logged [IO_PAGE_FAULT device=03:00.0 domain=0x000e address=0xfffd0040 flags=0x0000]\n",
    );
    let r = doctor(&h.root, None).unwrap();
    assert_eq!(status_of(&r, "iommu-kernel-log").0, Status::Ok);
    let (s, m) = status_of(&r, "dma-faults");
    assert_eq!(s, Status::Warn);
    assert!(m.contains("2 faults from 0000:03:00.0"), "{m}");
}

#[test]
fn unknown_device_and_missing_sysfs() {
    let h = FakeHost::healthy();
    let r = doctor(&h.root, Some(bdf("0000:05:00.0"))).unwrap();
    let (s, m) = status_of(&r, "device");
    assert_eq!(s, Status::Fail);
    assert!(m.contains("lspci -D"), "{m}");
    let empty = tempfile::tempdir().unwrap();
    let root = hwrr_host_setup::HostRoot::under(empty.path());
    assert!(matches!(doctor(&root, None), Err(HostError::NoSysfs(_))));
}

#[test]
fn unreadable_kernel_log_is_a_warning_not_an_error() {
    let h = host_with_bound_nic();
    fs::remove_file(h.base().join("dev/kmsg")).unwrap();
    let r = doctor(&h.root, None).unwrap();
    assert_eq!(status_of(&r, "iommu-kernel-log").0, Status::Warn);
    assert!(r.finding("dma-faults").is_none());
}

#[test]
fn memlock_limit_matters_only_for_non_root() {
    let mut h = host_with_bound_nic();
    fs::create_dir_all(h.base().join("proc/self")).unwrap();
    fs::write(
        h.base().join("proc/self/limits"),
        "Limit                     Soft Limit           Hard Limit           Units\n\
         Max locked memory         8388608              8388608              bytes\n",
    )
    .unwrap();
    assert!(
        doctor(&h.root, None).unwrap().finding("memlock").is_none(),
        "root is exempt"
    );
    h.root.user = User {
        uid: 4242,
        gids: vec![4242],
    };
    let (s, m) = status_of(&doctor(&h.root, None).unwrap(), "memlock");
    assert_eq!(s, Status::Warn);
    assert!(m.contains("8192 KiB") && m.contains("ulimit -l"), "{m}");
    fs::write(
        h.base().join("proc/self/limits"),
        "Max locked memory         unlimited            unlimited            bytes\n",
    )
    .unwrap();
    assert_eq!(
        status_of(&doctor(&h.root, None).unwrap(), "memlock").0,
        Status::Ok
    );
}

#[test]
fn rate_limited_fault_messages_count_as_a_flood() {
    let h = host_with_bound_nic().with_log_file(
        "[   10.1] DMAR: DRHD: handling fault status reg 2\n\
         [   10.1] DMAR: [DMA Write NO_PASID] Request device [00:19.0] fault addr 0x1000 [fault reason 0x05] PTE Write access is not set\n\
         [   15.2] dmar_fault: 1234 callbacks suppressed\n",
    );
    let r = doctor(&h.root, Some(bdf(NIC))).unwrap();
    let (s, m) = status_of(&r, "dma-faults");
    assert_eq!(s, Status::Fail);
    assert!(m.contains("1 faults from 0000:00:19.0"), "{m}");
    assert!(m.contains("1234 more fault messages suppressed"), "{m}");
    assert!(
        !m.contains("without a device"),
        "the DRHD header is not a fault: {m}"
    );
}
