//! Imports of the real QEMU logs in `../shared/corpus` (relative to the workspace root; the
//! `HWRR_CORPUS` environment variable overrides the location). Counts are checked against an
//! independent count made with `zstd -dc | awk` from the mapping in `docs/FORMAT.md §9`, not
//! with the importer's parser. Each test skips with a message when the corpus is absent.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;

use hwrr_formats::{ConfigAccess, Event, EventKind, KindTag, RegionKind};
use hwrr_import::{scan, ImportOptions};

fn corpus_dir() -> Option<PathBuf> {
    let dir = match std::env::var_os("HWRR_CORPUS") {
        Some(d) => PathBuf::from(d),
        None => Path::new(env!("CARGO_MANIFEST_DIR")).join("../../shared/corpus"),
    };
    if dir.is_dir() {
        Some(dir)
    } else {
        eprintln!(
            "SKIP: QEMU trace corpus not found at {} (set HWRR_CORPUS to its location)",
            dir.display()
        );
        None
    }
}

/// The independent count: `zstd -dc LOG | awk` implementing the documented mapping with plain
/// string matching (accesses to regions named after the device or `msix-table`/`msix-pba`, I/O vs
/// memory by whether the absolute address is below 0x10000; config lines of the device; rising
/// edges of the INTx GSI; vector-naming device events; reset events).
fn awk_counts(
    log: &Path,
    dev: &str,
    bdf: &str,
    gsi: u32,
    vector_event: &str,
    reset_event: &str,
) -> BTreeMap<String, u64> {
    let script = r#"
{
  if (index($0, ":memory_region_ops_")) {
    n = split($0, f, " ")
    name = f[n]; gsub("'", "", name)
    if (name == dev || name == "msix-table" || name == "msix-pba") {
      a = ""
      for (i = 1; i < n; i++) if (f[i] == "addr") a = f[i + 1]
      kind = (length(a) <= 6) ? "pio" : "mmio"
      op = index($0, ":memory_region_ops_read ") ? "_read" : "_write"
      c[kind op]++
    }
  } else if (index($0, ":pci_cfg_read " dev " " bdf " ")) c["config_read"]++
  else if (index($0, ":pci_cfg_write " dev " " bdf " ")) c["config_write"]++
  else if (index($0, ":ioapic_set_irq vector: " gsi " level: ")) {
    if ($NF == 1 && prev != 1) c["irq"]++
    prev = $NF
  }
  else if (vec != "" && index($0, ":" vec " ")) c["irq"]++
  else if (rst != "" && index($0, ":" rst " ")) c["reset"]++
}
END { for (k in c) print k, c[k] }
"#;
    let out = Command::new("sh")
        .arg("-c")
        .arg(format!(
            "zstd -dc '{}' | awk -v dev='{dev}' -v bdf='{bdf}' -v gsi='{gsi}' -v vec='{vector_event}' -v rst='{reset_event}' '{}'",
            log.display(),
            script.replace('\'', "'\\''")
        ))
        .output()
        .expect("run zstd | awk");
    assert!(
        out.status.success(),
        "awk failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| {
            let (k, v) = l.split_once(' ')?;
            Some((k.to_string(), v.parse().ok()?))
        })
        .collect()
}

fn importer_counts(events: &[Event]) -> BTreeMap<String, u64> {
    let mut m = BTreeMap::new();
    for e in events {
        *m.entry(e.tag().name().to_string()).or_insert(0) += 1;
    }
    m
}

/// Events with absolute wall time instead of time since the log's first line (whole and filtered
/// logs start at different lines).
fn absolute(events: &[Event], start: u64) -> Vec<(u64, u64, EventKind)> {
    events
        .iter()
        .map(|e| (e.seq, start + e.t_ns, e.kind.clone()))
        .collect()
}

struct Case {
    folder: &'static str,
    dev: &'static str,
    vector_event: &'static str,
    reset_event: &'static str,
    first: EventKind,
    first_wall_ns: u64,
    last: EventKind,
    last_wall_ns: u64,
}

fn cfg(offset: u32, size: u8, value: u64) -> ConfigAccess {
    ConfigAccess {
        offset,
        data: hwrr_formats::AccessData::Value { size, value },
    }
}

fn run_case(case: &Case) {
    let Some(dir) = corpus_dir() else { return };
    let dir = dir.join(case.folder);
    let device_log = dir.join("trace.device.log.zst");
    let full_log = dir.join("trace.full.log.zst");

    let dev_import = scan(&device_log, &ImportOptions::default()).expect("scan device log");
    assert_eq!(dev_import.device().name, case.dev);
    assert_eq!(dev_import.device().bdf, "00:02.0");
    assert_eq!(dev_import.device().intx_gsi, Some(22));
    let (dev_events, dev_report) = dev_import.collect_events().expect("import device log");
    assert_eq!(
        dev_report.malformed, 0,
        "{:?}",
        dev_report.malformed_examples
    );
    assert_eq!(dev_report.events, dev_events.len() as u64);
    assert_eq!(
        dev_report.lines,
        dev_report.events + dev_report.ignored + dev_report.malformed
    );

    let expected = awk_counts(
        &device_log,
        case.dev,
        "00:02.0",
        22,
        case.vector_event,
        case.reset_event,
    );
    assert_eq!(
        importer_counts(&dev_events),
        expected,
        "device log counts vs awk"
    );

    // The whole log, with the device named explicitly and auto-detected.
    let full_import = scan(
        &full_log,
        &ImportOptions {
            device: Some(case.dev.to_string()),
            ..ImportOptions::default()
        },
    )
    .expect("scan full log");
    let auto = scan(&full_log, &ImportOptions::default()).expect("auto-detect in full log");
    assert_eq!(auto.device(), full_import.device());
    assert_eq!(full_import.device().intx_gsi, Some(22));
    let (full_events, full_report) = full_import.collect_events().expect("import full log");
    assert_eq!(full_report.malformed, 0);
    let full_expected = awk_counts(
        &full_log,
        case.dev,
        "00:02.0",
        22,
        case.vector_event,
        case.reset_event,
    );
    assert_eq!(
        importer_counts(&full_events),
        full_expected,
        "full log counts vs awk"
    );

    let h_dev = dev_import.header();
    let h_full = full_import.header();
    assert_eq!(h_dev.config_space, h_full.config_space);
    assert_eq!(h_dev.regions, h_full.regions);
    assert_eq!(h_dev.irqs, h_full.irqs);
    assert_eq!(h_dev.device, h_full.device);
    assert_eq!(h_dev.capture.source, "qemu-trace");
    assert!(h_full.capture.start_unix_ns <= h_dev.capture.start_unix_ns);
    assert_eq!(
        absolute(&dev_events, h_dev.capture.start_unix_ns),
        absolute(&full_events, h_full.capture.start_unix_ns),
        "device and full logs give different event streams"
    );

    let first = &dev_events[0];
    assert_eq!((first.seq, &first.kind), (0, &case.first));
    assert_eq!(h_dev.capture.start_unix_ns + first.t_ns, case.first_wall_ns);
    let last = dev_events.last().expect("events");
    assert_eq!(last.seq, dev_events.len() as u64 - 1);
    assert_eq!(last.kind, case.last);
    assert_eq!(h_dev.capture.start_unix_ns + last.t_ns, case.last_wall_ns);
    assert!(dev_events.windows(2).all(|w| w[0].t_ns <= w[1].t_ns));
    assert!(KindTag::ALL
        .iter()
        .all(|k| dev_report.by_kind.get(*k) == *expected.get(k.name()).unwrap_or(&0)));
}

#[test]
fn rtl8139_corpus_matches_independent_count() {
    run_case(&Case {
        folder: "rtl8139-linux-8139cp",
        dev: "rtl8139",
        vector_event: "",
        reset_event: "",
        first: EventKind::ConfigRead(cfg(0, 2, 0x10ec)),
        first_wall_ns: 1_795_495_474_934_078_000,
        last: EventKind::ConfigWrite(cfg(4, 2, 0x103)),
        last_wall_ns: 1_795_495_484_771_888_000,
    });
}

#[test]
fn nvme_corpus_matches_independent_count() {
    run_case(&Case {
        folder: "nvme-linux-nvme",
        dev: "nvme",
        vector_event: "pci_nvme_irq_msix",
        reset_event: "pci_nvme_pci_reset",
        first: EventKind::Reset,
        first_wall_ns: 1_795_495_526_876_593_000,
        last: EventKind::ConfigWrite(cfg(4, 2, 0x103)),
        last_wall_ns: 1_795_495_532_508_282_000,
    });
}

#[test]
fn rtl8139_header_aliases_the_mmio_bar_onto_the_io_bar() {
    let Some(dir) = corpus_dir() else { return };
    let import = scan(
        &dir.join("rtl8139-linux-8139cp/trace.device.log.zst"),
        &ImportOptions::default(),
    )
    .expect("scan");
    let h = import.header();
    assert_eq!(
        (h.device.vendor_id, h.device.device_id, h.device.revision),
        (0x10ec, 0x8139, 0x20)
    );
    assert_eq!(h.device.bdf.as_deref(), Some("0000:00:02.0"));
    let bar0 = h.region(0).expect("BAR0");
    assert_eq!(
        (bar0.kind, bar0.size, bar0.alias_of),
        (RegionKind::Pio, 0x100, None)
    );
    let bar1 = h.region(1).expect("BAR1");
    assert_eq!(
        (bar1.kind, bar1.size, bar1.alias_of),
        (RegionKind::Mmio, 0x100, Some(0))
    );
    assert_eq!(
        h.region(6).map(|r| (r.kind, r.size)),
        Some((RegionKind::Rom, 0x40000))
    );
    assert_eq!(h.region(7).map(|r| r.size), Some(256));
    // BAR0's flag bit (I/O) survives the sizing writes; the interrupt pin is INTA.
    assert_eq!(&h.config_space[0x10..0x14], &[1, 0, 0, 0]);
    assert_eq!(h.config_space[0x3d], 1);
    assert_eq!(h.irq(0).map(|i| i.count), Some(1));
    assert!(h.irq(2).is_none());
}

#[test]
fn nvme_header_has_extended_config_and_msix_vectors() {
    let Some(dir) = corpus_dir() else { return };
    let import = scan(
        &dir.join("nvme-linux-nvme/trace.device.log.zst"),
        &ImportOptions::default(),
    )
    .expect("scan");
    let h = import.header();
    assert_eq!((h.device.vendor_id, h.device.device_id), (0x1b36, 0x0010));
    assert_eq!(h.device.class_code, 0x010802);
    assert_eq!(h.config_space.len(), 4096);
    assert_eq!(h.region(7).map(|r| r.size), Some(4096));
    let bar0 = h.region(0).expect("BAR0");
    assert_eq!((bar0.kind, bar0.size), (RegionKind::Mmio, 0x4000));
    // 64-bit memory BAR: the upper half is not a region of its own.
    assert!(h.region(1).is_none());
    let msix = h.irq(2).expect("MSI-X in the IRQ table");
    assert!(msix.count >= 1);
}
