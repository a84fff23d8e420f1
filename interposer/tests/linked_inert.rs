//! A program that links the rlib (a Rust test driving the emulator in-process) defines the wrapper symbols
//! too, so they interpose its own libc calls; the shim must stay inert there even with
//! `HWRR_MODE=replay` in its environment. The test re-runs this test binary with that environment
//! (set before the process starts: the test harness itself reads `/sys` early).

use std::path::Path;
use std::process::Command;

use hwrr_formats::{RegionInfo, RegionKind, TraceHeader, TraceWriter, WriterOptions};

const CHILD: &str = "HWRR_LINKED_INERT_CHILD";
const LINK: &str = "/sys/bus/pci/devices/0000:00:19.0/iommu_group";

#[test]
fn child_reads_the_emulated_link() {
    if std::env::var_os(CHILD).is_none() {
        return; // only meaningful when started by the test below
    }
    match std::fs::read_link(LINK) {
        Ok(target) => println!("ANSWERED {}", target.display()),
        Err(e) => println!("REAL {e}"),
    }
}

#[test]
fn shim_is_inert_when_linked_into_a_program() {
    if Path::new("/sys/bus/pci/devices/0000:00:19.0").exists() {
        eprintln!("SKIPPED: this host has a real PCI device at 0000:00:19.0");
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let trace = dir.path().join("t.hwrr");
    let mut config = vec![0u8; 256];
    config[0..4].copy_from_slice(&[0x86, 0x80, 0xd3, 0x10]);
    let header = TraceHeader {
        config_space: config,
        regions: vec![RegionInfo {
            index: 0,
            kind: RegionKind::Mmio,
            size: 0x1000,
            flags: 3,
            alias_of: None,
        }],
        ..Default::default()
    };
    TraceWriter::create(&trace, &header, WriterOptions::default())
        .unwrap()
        .finish()
        .unwrap();
    // The trace is servable: an active shim would answer for 0000:00:19.0.
    assert!(hwrr_replayer::open(&trace, Default::default()).is_ok());
    let out = Command::new(std::env::current_exe().unwrap())
        .args([
            "--exact",
            "child_reads_the_emulated_link",
            "--nocapture",
            "--test-threads=1",
        ])
        .env(CHILD, "1")
        .env("HWRR_MODE", "replay")
        .env("HWRR_TRACE", format!("00:19.0={}", trace.display()))
        .output()
        .expect("re-run the test binary");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{stdout}");
    assert!(
        stdout.contains("REAL "),
        "the shim answered inside a program that links it: {stdout}"
    );
    assert_eq!(
        hwrr_vfio::config::normalize_bdf("00:19.0").as_deref(),
        Some("0000:00:19.0")
    );
}
