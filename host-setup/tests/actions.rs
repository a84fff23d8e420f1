//! `bind`, `unbind` and `reset` on fake trees: the exact sysfs write sequences and the state file.

mod common;

use std::fs;

use common::{FakeDevice, FakeHost};
use hwrr_host_setup::{bind, reset, state, unbind, Bdf, HostError, Status};

const NIC: &str = "0000:00:19.0";

fn bdf() -> Bdf {
    NIC.parse().unwrap()
}

fn w(path: &str, value: &str) -> (String, String) {
    (path.to_string(), value.to_string())
}

fn host(driver: Option<&'static str>) -> FakeHost {
    let h = FakeHost::healthy();
    h.add_device(FakeDevice::nic(NIC, 12, driver));
    h
}

#[test]
fn bind_uses_driver_override_and_records_the_old_driver() {
    let h = host(Some("e1000e"));
    let r = bind(&h.root, bdf()).unwrap();
    assert_eq!(
        h.writes(),
        vec![
            w("bus/pci/devices/0000:00:19.0/driver_override", "vfio-pci"),
            w("bus/pci/drivers/e1000e/unbind", NIC),
            w("bus/pci/drivers_probe", NIC),
        ]
    );
    assert!(h.writes().iter().all(|(p, _)| !p.ends_with("new_id")));
    assert_eq!(r.final_driver.as_deref(), Some("vfio-pci"));
    assert_eq!(h.driver_of(NIC).as_deref(), Some("vfio-pci"));
    assert!(r
        .steps
        .iter()
        .any(|s| s.what.contains("/dev/vfio/12 is ready")));
    let st = state::load(&h.root, &bdf()).unwrap();
    assert_eq!(st.previous_driver.as_deref(), Some("e1000e"));
    assert_eq!(st.ids, "8086:10d3");
    let on_disk = fs::read_to_string(h.base().join("run/hwrr/0000:00:19.0.json")).unwrap();
    assert!(
        on_disk.contains("\"previous_driver\": \"e1000e\""),
        "{on_disk}"
    );
}

#[test]
fn bind_an_unbound_device_and_bind_twice() {
    let h = host(None);
    bind(&h.root, bdf()).unwrap();
    assert_eq!(
        h.writes(),
        vec![
            w("bus/pci/devices/0000:00:19.0/driver_override", "vfio-pci"),
            w("bus/pci/drivers_probe", NIC),
        ]
    );
    assert_eq!(state::load(&h.root, &bdf()).unwrap().previous_driver, None);
    let again = bind(&h.root, bdf()).unwrap();
    assert_eq!(h.writes().len(), 2, "a second bind writes nothing");
    assert!(again.steps[0].what.contains("already bound"));
}

#[test]
fn bind_without_vfio_pci_says_modprobe_and_writes_nothing() {
    let h = host(Some("e1000e"));
    fs::remove_dir_all(h.base().join("sys/bus/pci/drivers/vfio-pci")).unwrap();
    let err = bind(&h.root, bdf()).unwrap_err();
    assert!(matches!(err.error, HostError::VfioPciMissing));
    assert!(err.to_string().contains("modprobe vfio-pci"), "{err}");
    assert!(h.writes().is_empty());
    assert_eq!(h.driver_of(NIC).as_deref(), Some("e1000e"));
}

#[test]
fn bind_reports_a_probe_that_did_not_take() {
    let h = host(Some("e1000e"));
    // No simulated kernel: writes land in files but nothing binds.
    let mut root = h.root.clone();
    root.write_hook = None;
    fs::remove_file(h.base().join("sys/bus/pci/devices/0000:00:19.0/driver")).unwrap();
    let err = bind(&root, bdf()).unwrap_err();
    assert!(
        err.to_string()
            .contains("not on vfio-pci after drivers_probe"),
        "{err}"
    );
    let last = err.steps.last().map(|s| s.what.as_str()).unwrap_or("");
    assert!(
        last.ends_with("> /sys/bus/pci/drivers_probe"),
        "{:?}",
        err.steps
    );
}

#[test]
fn bind_of_a_missing_device() {
    let h = FakeHost::healthy();
    let err = bind(&h.root, bdf()).unwrap_err();
    assert!(matches!(err.error, HostError::NoDevice(_)));
    assert!(err.to_string().contains("lspci -D"));
}

#[test]
fn unbind_gives_the_device_back_to_the_recorded_driver() {
    let h = host(Some("e1000e"));
    bind(&h.root, bdf()).unwrap();
    let before = h.writes().len();
    let r = unbind(&h.root, bdf()).unwrap();
    assert_eq!(
        h.writes()[before..].to_vec(),
        vec![
            w("bus/pci/drivers/vfio-pci/unbind", NIC),
            w("bus/pci/devices/0000:00:19.0/driver_override", "\n"),
            w("bus/pci/drivers/e1000e/bind", NIC),
        ]
    );
    assert_eq!(r.final_driver.as_deref(), Some("e1000e"));
    assert!(state::load(&h.root, &bdf()).is_none());
    assert!(!h.base().join("dev/vfio/12").exists());
    let o = fs::read_to_string(
        h.base()
            .join("sys/bus/pci/devices/0000:00:19.0/driver_override"),
    );
    assert_eq!(o.unwrap(), "(null)\n");
}

#[test]
fn reset_runs_the_recovery_sequence() {
    let h = host(Some("e1000e"));
    bind(&h.root, bdf()).unwrap();
    let before = h.writes().len();
    let r = reset(&h.root, bdf()).unwrap();
    assert_eq!(
        h.writes()[before..].to_vec(),
        vec![
            w("bus/pci/drivers/vfio-pci/unbind", NIC),
            w("bus/pci/devices/0000:00:19.0/reset", "1"),
            w("bus/pci/devices/0000:00:19.0/remove", "1"),
            w("bus/pci/rescan", "1"),
            w("bus/pci/devices/0000:00:19.0/driver_override", "\n"),
        ]
    );
    let text: Vec<&str> = r.steps.iter().map(|s| s.what.as_str()).collect();
    assert!(
        text.contains(&"host driver recorded by bind: e1000e"),
        "{text:?}"
    );
    assert!(text.contains(&"reset method: pm"), "{text:?}");
    assert!(
        text.contains(&"0000:00:19.0 is already bound to e1000e"),
        "{text:?}"
    );
    assert_eq!(r.final_driver.as_deref(), Some("e1000e"));
    assert!(state::load(&h.root, &bdf()).is_none());
}

#[test]
fn reset_without_state_resolves_the_modalias_and_binds() {
    let h = FakeHost::healthy();
    let mut d = FakeDevice::nic(NIC, 12, Some("vfio-pci"));
    d.native = None; // the rescan leaves it unbound
    h.add_device(d);
    let r = reset(&h.root, bdf()).unwrap();
    let text: Vec<&str> = r.steps.iter().map(|s| s.what.as_str()).collect();
    assert!(
        text.iter()
            .any(|t| t.starts_with("modalias pci:v00008086d000010D3")
                && t.ends_with("e1000e, some_generic_nic")),
        "{text:?}"
    );
    assert_eq!(
        h.writes().last().unwrap(),
        &w("bus/pci/drivers/e1000e/bind", NIC)
    );
    assert_eq!(h.driver_of(NIC).as_deref(), Some("e1000e"));
}

#[test]
fn reset_undoes_a_new_id_that_grabs_the_device_again() {
    let h = host(Some("e1000e"));
    bind(&h.root, bdf()).unwrap();
    h.register_new_id("8086 10d3");
    let before = h.writes().len();
    let r = reset(&h.root, bdf()).unwrap();
    let tail = h.writes()[before + 5..].to_vec();
    assert_eq!(
        tail,
        vec![
            w("bus/pci/drivers/vfio-pci/remove_id", "8086 10d3"),
            w("bus/pci/drivers/vfio-pci/unbind", NIC),
            w("bus/pci/drivers/e1000e/bind", NIC),
        ]
    );
    assert!(r
        .steps
        .iter()
        .any(|s| s.status == Status::Warn && s.what.contains("new_id")));
    assert_eq!(h.driver_of(NIC).as_deref(), Some("e1000e"));
}

#[test]
fn reset_with_the_host_driver_not_loaded_says_modprobe() {
    let h = host(Some("vfio-pci"));
    fs::remove_dir_all(h.base().join("sys/bus/pci/drivers/e1000e")).unwrap();
    let r = reset(&h.root, bdf()).unwrap();
    assert!(
        r.steps
            .iter()
            .any(|s| s.status == Status::Warn && s.what.contains("run `modprobe e1000e`")),
        "{:?}",
        r.steps
    );
    assert_eq!(r.final_driver, None);
}

#[test]
fn reset_skips_the_function_reset_without_a_reset_attribute() {
    let h = host(Some("e1000e"));
    fs::remove_file(h.base().join("sys/bus/pci/devices/0000:00:19.0/reset")).unwrap();
    let r = reset(&h.root, bdf()).unwrap();
    assert!(r
        .steps
        .iter()
        .any(|s| s.status == Status::Warn && s.what.contains("no reset attribute")));
    assert!(h.writes().iter().all(|(p, _)| !p.ends_with("/reset")));
    assert_eq!(r.final_driver.as_deref(), Some("e1000e"));
}

#[test]
fn reset_notices_a_device_that_does_not_come_back() {
    let h = host(Some("e1000e"));
    let mut root = h.root.clone();
    // A kernel that removes but never rescans: wrap the simulation and drop rescan writes.
    let inner = root.write_hook.clone().unwrap();
    root.write_hook = Some(std::sync::Arc::new(move |p: &std::path::Path, v: &str| {
        if !p.ends_with("rescan") {
            inner(p, v)
        }
    }));
    let err = reset(&root, bdf()).unwrap_err();
    assert!(
        err.to_string()
            .contains("did not come back after the rescan"),
        "{err}"
    );
}

#[test]
fn write_errors_say_what_to_do() {
    let h = host(Some("e1000e"));
    fs::remove_file(
        h.base()
            .join("sys/bus/pci/devices/0000:00:19.0/driver_override"),
    )
    .unwrap();
    fs::create_dir(
        h.base()
            .join("sys/bus/pci/devices/0000:00:19.0/driver_override"),
    )
    .unwrap();
    let err = bind(&h.root, bdf()).unwrap_err();
    let msg = err.to_string();
    assert!(msg.contains("driver_override"), "{msg}");
    assert_eq!(
        h.driver_of(NIC).as_deref(),
        Some("e1000e"),
        "nothing else was touched"
    );
}

#[test]
fn bind_warns_about_the_rest_of_a_non_viable_group() {
    let h = host(Some("e1000e"));
    h.add_driver("snd_hda_intel");
    h.add_device(FakeDevice {
        bdf: "0000:00:1f.3",
        ids: ("8086", "a170"),
        class: "0x040300",
        group: Some(12),
        driver: Some("snd_hda_intel"),
        native: Some("snd_hda_intel"),
    });
    let r = bind(&h.root, bdf()).unwrap();
    assert!(
        r.steps.iter().any(|s| s.status == Status::Warn
            && s.what.starts_with(
                "group 12 also holds 0000:00:1f.3 (bound to snd_hda_intel): bind it too"
            )),
        "{:?}",
        r.steps
    );
    assert_eq!(
        h.driver_of("0000:00:1f.3").as_deref(),
        Some("snd_hda_intel"),
        "only the named device moves"
    );
}
