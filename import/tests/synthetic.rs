//! Synthetic QEMU logs, one rule of `docs/FORMAT.md §9` at a time. The passthrough lines use the
//! exact formats of QEMU's `hw/vfio/trace-events`.

use std::io::Write;
use std::path::PathBuf;

use hwrr_formats::{AccessData, ConfigAccess, Event, EventKind, Irq, RegionAccess, RegionKind};
use hwrr_import::{scan, Dialect, ImportError, ImportOptions, QemuImport};
use proptest::prelude::*;

struct Log {
    _dir: tempfile::TempDir,
    path: PathBuf,
}

fn write_log(name: &str, text: &str) -> Log {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join(name);
    std::fs::write(&path, text).expect("write log");
    Log { _dir: dir, path }
}

fn import(text: &str, device: Option<&str>) -> (QemuImport, Vec<Event>, hwrr_import::ImportReport) {
    let log = write_log("trace.log", text);
    let imp = scan(
        &log.path,
        &ImportOptions {
            device: device.map(str::to_string),
            ..ImportOptions::default()
        },
    )
    .expect("scan");
    let (events, report) = imp.collect_events().expect("events");
    (imp, events, report)
}

fn kinds(events: &[Event]) -> Vec<EventKind> {
    events.iter().map(|e| e.kind.clone()).collect()
}

fn val(size: u8, value: u64) -> AccessData {
    AccessData::Value { size, value }
}

fn access(region: u32, offset: u64, size: u8, value: u64) -> RegionAccess {
    RegionAccess {
        region,
        offset,
        data: val(size, value),
    }
}

fn pio(offset: u64, size: u8, value: u64) -> RegionAccess {
    access(0, offset, size, value)
}

fn cfg(offset: u32, size: u8, value: u64) -> ConfigAccess {
    ConfigAccess {
        offset,
        data: val(size, value),
    }
}

/// An emulated NIC `foonic` at 00:03.0 with an I/O BAR0 and a same-size memory BAR1 that QEMU
/// aliases onto BAR0 (as rtl8139 does), plus a second device's noise, DMA translations and INTx.
const EMULATED: &str = "\
100@1000.000000:pci_cfg_read foonic 00:03.0 @0x0 -> 0x1234abcd
100@1000.000010:pci_cfg_read foonic 00:03.0 @0x10 -> 0x1
100@1000.000020:pci_cfg_write foonic 00:03.0 @0x10 <- 0xffffffff
100@1000.000030:pci_cfg_read foonic 00:03.0 @0x10 -> 0xffffff01
100@1000.000040:pci_cfg_write foonic 00:03.0 @0x10 <- 0xc001
100@1000.000050:pci_cfg_read foonic 00:03.0 @0x14 -> 0x0
100@1000.000060:pci_cfg_write foonic 00:03.0 @0x14 <- 0xffffffff
100@1000.000070:pci_cfg_read foonic 00:03.0 @0x14 -> 0xffffff00
100@1000.000080:pci_cfg_write foonic 00:03.0 @0x14 <- 0xfebc0000
100@1000.000090:pci_cfg_read foonic 00:03.0 @0x3d -> 0x1
100@1000.000100:pci_cfg_write foonic 00:03.0 @0x4 <- 0x103
100@1000.000110:pci_update_mappings_add foonic 00:03.0 0,0xc000+0x100
100@1000.000120:pci_update_mappings_add foonic 00:03.0 1,0xfebc0000+0x100
100@1000.000130:pci_cfg_read other 00:04.0 @0x0 -> 0x11112222
100@1000.000140:pci_update_mappings_add other 00:04.0 0,0xfe000000+0x1000
100@1000.000150:memory_region_ops_read cpu 0 mr 0x1 addr 0xfe000010 value 0x5 size 4 name 'other'
100@1000.000160:memory_region_ops_write cpu 0 mr 0x2 addr 0xc010 value 0xab size 1 name 'foonic'
100@1000.000170:ioapic_set_irq vector: 21 level: 0
100@1000.000180:ioapic_set_irq vector: 21 level: 1
100@1000.000190:memory_region_ops_read cpu 0 mr 0x2 addr 0xc03e value 0x1 size 2 name 'foonic'
100@1000.000200:ioapic_set_irq vector: 21 level: 1
100@1000.000210:ioapic_eoi_broadcast EOI broadcast for vector 21
100@1000.000220:memory_region_ops_write cpu 0 mr 0x2 addr 0xc03e value 0x1 size 2 name 'foonic'
100@1000.000230:ioapic_set_irq vector: 21 level: 0
101@1000.000240:vtd_dmar_translate dev 00:03.00 iova 0x1000 -> gpa 0x2000 mask 0xfff
101@1000.000250:vtd_iotlb_page_hit IOTLB page hit sid 0x18 iova 0x1000 slpte 0x2003 domain 0x1
101@1000.000260:ioapic_set_irq vector: 21 level: 1
100@1000.000270:memory_region_ops_write cpu 0 mr 0x1 addr 0xfe000010 value 0x1 size 4 name 'other'
100@1000.000280:ioapic_set_irq vector: 5 level: 1
100@1000.000290:memory_region_ops_read cpu 0 mr 0x2 addr 0xc000 value 0x12345678 size 4 name 'foonic'
100@1000.000300:pci_update_mappings_del foonic 00:03.0 0,0xc000+0x100
100@1000.000310:memory_region_ops_read cpu 0 mr 0x2 addr 0xc000 value 0x0 size 4 name 'foonic'
100@1000.000320:pci_update_mappings_add foonic 00:03.0 0,0xd000+0x100
100@1000.000330:memory_region_ops_read cpu 0 mr 0x2 addr 0xd004 value 0x7 size 4 name 'foonic'
";

#[test]
fn emulated_accesses_map_to_bar_offsets_and_io_kinds() {
    let (imp, events, report) = import(EMULATED, Some("foonic"));
    assert_eq!(imp.device().dialect, Dialect::Emulated);
    assert_eq!(imp.device().intx_gsi, Some(21));
    let intx = EventKind::Irq(Irq {
        index: 0,
        vector: 0,
    });
    assert_eq!(
        kinds(&events),
        vec![
            EventKind::ConfigRead(cfg(0, 4, 0x1234_abcd)),
            EventKind::ConfigRead(cfg(0x10, 4, 1)),
            EventKind::ConfigWrite(cfg(0x10, 4, 0xffff_ffff)),
            EventKind::ConfigRead(cfg(0x10, 4, 0xffff_ff01)),
            EventKind::ConfigWrite(cfg(0x10, 4, 0xc001)),
            EventKind::ConfigRead(cfg(0x14, 4, 0)),
            EventKind::ConfigWrite(cfg(0x14, 4, 0xffff_ffff)),
            EventKind::ConfigRead(cfg(0x14, 4, 0xffff_ff00)),
            EventKind::ConfigWrite(cfg(0x14, 4, 0xfebc_0000)),
            EventKind::ConfigRead(cfg(0x3d, 1, 1)),
            EventKind::ConfigWrite(cfg(0x4, 2, 0x103)),
            EventKind::PioWrite(pio(0x10, 1, 0xab)),
            // 0 -> 1 on the device's GSI; the repeated level 1 is no new interrupt.
            intx.clone(),
            EventKind::PioRead(pio(0x3e, 2, 1)),
            EventKind::PioWrite(pio(0x3e, 2, 1)),
            // Raised from the main loop after the device's DMA (attributed by the DMA lines).
            intx,
            EventKind::PioRead(pio(0, 4, 0x1234_5678)),
            // BAR0 moved: the access at the old base is unmapped, the new base maps.
            EventKind::PioRead(pio(4, 4, 7)),
        ]
    );
    assert_eq!(report.unmapped, 1);
    assert_eq!(report.malformed, 0);
    assert_eq!(report.lines, EMULATED.lines().count() as u64);
    assert_eq!(report.ignored, report.lines - report.events);
    // Timestamps: ns since the first line.
    assert_eq!(events[0].t_ns, 0);
    assert_eq!(events[1].t_ns, 10_000);
    assert_eq!(imp.header().capture.start_unix_ns, 1_000_000_000_000);
    assert_eq!(imp.header().capture.source, "qemu-trace");
}

#[test]
fn emulated_header_has_snapshot_regions_alias_and_irqs() {
    let (imp, _, _) = import(EMULATED, Some("00:03.0"));
    let h = imp.header();
    assert_eq!(h.device.vendor_id, 0xabcd);
    assert_eq!(h.device.device_id, 0x1234);
    assert_eq!(h.device.bdf.as_deref(), Some("0000:00:03.0"));
    assert_eq!(h.config_space.len(), 256);
    // First values read before any write: the sizing writes and the programmed bases are not in it.
    assert_eq!(&h.config_space[0x10..0x18], &[1, 0, 0, 0, 0, 0, 0, 0]);
    assert_eq!(h.config_space[0x3d], 1);
    let r0 = h.region(0).expect("BAR0");
    assert_eq!(
        (r0.kind, r0.size, r0.alias_of),
        (RegionKind::Pio, 0x100, None)
    );
    let r1 = h.region(1).expect("BAR1");
    assert_eq!(
        (r1.kind, r1.size, r1.alias_of),
        (RegionKind::Mmio, 0x100, Some(0))
    );
    assert_eq!(
        h.region(7).map(|r| (r.kind, r.size)),
        Some((RegionKind::Config, 256))
    );
    assert_eq!(h.irq(0).map(|i| i.count), Some(1));
    assert_eq!(
        h.labels.get("qemu.intx_gsi").map(String::as_str),
        Some("21")
    );
}

#[test]
fn an_unused_memory_bar_beside_a_used_memory_bar_is_no_alias() {
    // foonic's BAR0 made a memory BAR at 0xfeb00000 (accesses moved with it): BAR1 (memory, same
    // size, never accessed) is a BAR of its own, as e1000e's flash BAR beside its registers.
    let text = EMULATED
        .replace("@0x10 -> 0xffffff01", "@0x10 -> 0xffffff00")
        .replace("@0x10 <- 0xc001", "@0x10 <- 0xfeb00000")
        .replace("0,0xc000+0x100", "0,0xfeb00000+0x100")
        .replace("0,0xd000+0x100", "0,0xfeb01000+0x100")
        .replace("addr 0xc0", "addr 0xfeb000")
        .replace("addr 0xd004", "addr 0xfeb01004");
    let (imp, events, _) = import(&text, Some("foonic"));
    let kinds: Vec<(u32, RegionKind, Option<u32>)> = imp
        .header()
        .regions
        .iter()
        .map(|r| (r.index, r.kind, r.alias_of))
        .collect();
    assert_eq!(
        kinds,
        vec![
            (0, RegionKind::Mmio, None),
            (1, RegionKind::Mmio, None),
            (7, RegionKind::Config, None)
        ]
    );
    assert!(events
        .iter()
        .any(|e| matches!(&e.kind, EventKind::MmioWrite(a) if a.region == 0 && a.offset == 0x10)));
}

#[test]
fn no_alias_when_the_unused_bar_has_another_size_or_is_accessed() {
    let text = EMULATED.replace("1,0xfebc0000+0x100", "1,0xfebc0000+0x1000");
    let (imp, _, _) = import(&text, Some("foonic"));
    assert_eq!(imp.header().region(1).and_then(|r| r.alias_of), None);
    assert_eq!(imp.header().region(1).map(|r| r.size), Some(0x1000));

    let text = format!(
        "{EMULATED}100@1000.000400:memory_region_ops_read cpu 0 mr 0x3 addr 0xfebc0004 value 0x7 size 4 name 'foonic'\n"
    );
    let (imp, events, _) = import(&text, Some("foonic"));
    assert_eq!(imp.header().region(1).and_then(|r| r.alias_of), None);
    assert_eq!(
        events.last().map(|e| e.kind.clone()),
        Some(EventKind::MmioRead(RegionAccess {
            region: 1,
            offset: 4,
            data: val(4, 7)
        }))
    );
}

#[test]
fn prefiltered_and_whole_logs_give_the_same_events() {
    let filtered: String = EMULATED
        .lines()
        .filter(|l| !l.contains("other") && !l.contains("vector: 5 "))
        .map(|l| format!("{l}\n"))
        .collect();
    let (_, whole, _) = import(EMULATED, Some("foonic"));
    let (imp, part, _) = import(&filtered, None);
    assert_eq!(imp.device().name, "foonic");
    assert_eq!(whole, part);
}

#[test]
fn auto_detect_picks_the_busiest_device_and_unknown_names_are_errors() {
    let (imp, _, _) = import(EMULATED, None);
    assert_eq!(imp.device().name, "foonic");
    let log = write_log("t.log", EMULATED);
    let err = scan(
        &log.path,
        &ImportOptions {
            device: Some("e1000e".into()),
            ..ImportOptions::default()
        },
    )
    .expect_err("no such device");
    let msg = err.to_string();
    assert!(matches!(err, ImportError::NoSuchDevice { .. }));
    assert!(msg.contains("no device named e1000e"), "{msg}");
    assert!(
        msg.contains("foonic@00:03.0") && msg.contains("other@00:04.0"),
        "{msg}"
    );
}

#[test]
fn nothing_importable_is_an_error_that_says_why() {
    let log = write_log(
        "t.log",
        "hello, world\n12@34\nvtd_dmar_translate dev 00:02.00 iova 0x0 -> gpa 0x0 mask 0xfff\n",
    );
    let err = scan(&log.path, &ImportOptions::default()).expect_err("nothing");
    let msg = err.to_string();
    assert!(
        matches!(
            err,
            ImportError::NoDevice {
                lines: 3,
                malformed: 2,
                ..
            }
        ),
        "{msg}"
    );
    assert!(msg.contains("line 1"), "{msg}");
    let missing = scan(
        std::path::Path::new("/nonexistent/x.log"),
        &ImportOptions::default(),
    );
    assert!(matches!(missing, Err(ImportError::Io { .. })));
}

#[test]
fn malformed_lines_are_counted_with_examples_and_not_fatal() {
    let text = format!(
        "{EMULATED}100@1000.000500:memory_region_ops_read cpu 0 mr 0x2 addr 0xc0zz value 0x1 size 2 name 'foonic'\n\
         100@1000.000510:memory_region_ops_read cpu 0 mr 0x2 addr 0xc000 value 0x1 size 3 name 'foonic'\n\
         100@1000.0005\n\
         100@1000.000520:pci_cfg_read foonic 00:03.0 @0x0 ->\n\
         100@1000.000530:ioapic_set_irq vector: x level: 1\n"
    );
    let (_, events, report) = import(&text, Some("foonic"));
    assert_eq!(events.len(), 18);
    assert_eq!(report.malformed, 5);
    assert_eq!(report.malformed_examples.len(), 5);
    let first_bad = EMULATED.lines().count() as u64 + 1;
    assert_eq!(report.malformed_examples[0].0, first_bad);
    assert!(report.malformed_examples[0].1.contains("bad addr"));
    assert!(report.malformed_examples[1].1.contains("size"));
}

#[test]
fn iso_and_missing_timestamps_and_backwards_time() {
    let text = "\
pci_cfg_read foonic 00:03.0 @0x0 -> 0x1234abcd
2026-11-24T05:40:01.000100Z pci_cfg_read foonic 00:03.0 @0x10 -> 0x1
2026-11-24T05:40:01.000300Z pci_cfg_write foonic 00:03.0 @0x10 <- 0xc001
2026-11-24T05:40:01.000300Z pci_update_mappings_add foonic 00:03.0 0,0xc000+0x100
2026-11-24T05:40:01.000200Z memory_region_ops_read cpu 0 mr 0x2 addr 0xc004 value 0x1 size 1 name 'foonic'
memory_region_ops_read cpu 0 mr 0x2 addr 0xc005 value 0x2 size 1 name 'foonic'
2026-11-24T05:40:01.000900Z memory_region_ops_read cpu 0 mr 0x2 addr 0xc006 value 0x3 size 1 name 'foonic'
";
    let (imp, events, report) = import(text, None);
    assert_eq!(
        imp.header().capture.start_unix_ns,
        1_795_498_801_000_100_000
    );
    let t: Vec<u64> = events.iter().map(|e| e.t_ns).collect();
    // Before the first timestamp: 0. Backwards (0.000200 after 0.000300): clamped. No
    // timestamp: the previous line's time.
    assert_eq!(t, vec![0, 0, 200_000, 200_000, 200_000, 800_000]);
    assert_eq!(report.timestamps_clamped, 2);
    assert_eq!(
        events.iter().map(|e| e.seq).collect::<Vec<_>>(),
        (0..6).collect::<Vec<_>>()
    );
}

#[test]
fn zstd_is_detected_by_magic_not_by_name() {
    let compressed = zstd::encode_all(EMULATED.as_bytes(), 3).expect("compress");
    let log = write_log("trace.log", "");
    std::fs::File::create(&log.path)
        .and_then(|mut f| f.write_all(&compressed))
        .expect("write");
    let imp = scan(&log.path, &ImportOptions::default()).expect("scan zstd");
    let (zevents, _) = imp.collect_events().expect("events");
    let (_, plain, _) = import(EMULATED, None);
    assert_eq!(zevents, plain);

    // A truncated .zst is a read error, not a panic.
    let cut = write_log("trace.log.zst", "");
    std::fs::write(&cut.path, &compressed[..compressed.len() / 2]).expect("write");
    assert!(matches!(
        scan(&cut.path, &ImportOptions::default()),
        Err(ImportError::Io { .. })
    ));
}

/// nvme-like device: MSI-X vectors named by device events, reset events, `msix_write_config`
/// bookkeeping and `vtd-ir` writes that must not double count.
#[test]
fn vector_events_and_resets() {
    let text = "\
7@5.000001:pci_nvme_pci_reset PCI Function Level Reset
7@5.000002:pci_cfg_read nvme 00:02.0 @0x0 -> 0x101b36
7@5.000003:pci_cfg_read nvme 00:02.0 @0x10 -> 0x4
7@5.000004:pci_update_mappings_add nvme 00:02.0 0,0xfebc4000+0x4000
7@5.000005:msix_write_config dev nvme enabled 1 masked 0
7@5.000006:memory_region_ops_write cpu 0 mr 0x1 addr 0xfebc6000 value 0xfee00218 size 4 name 'msix-table'
7@5.000007:memory_region_ops_write cpu 0 mr 0x1 addr 0xfebc5000 value 0x1 size 4 name 'nvme'
8@5.000008:vtd_dmar_translate dev 00:02.00 iova 0xfffff000 -> gpa 0x3fc03000 mask 0xfff
8@5.000009:pci_nvme_irq_msix raising MSI-X IRQ vector 3
8@5.000010:memory_region_ops_write cpu -1 mr 0x5 addr 0xfee00218 value 0x0 size 4 name 'vtd-ir'
8@5.000011:pci_nvme_irq_msi raising MSI IRQ vector 1
8@5.000012:pci_nvme_mmio_write addr 0x1000 data 0x1 size 4
";
    let (imp, events, report) = import(text, None);
    assert_eq!(
        kinds(&events),
        vec![
            EventKind::Reset,
            EventKind::ConfigRead(cfg(0, 4, 0x10_1b36)),
            EventKind::ConfigRead(cfg(0x10, 4, 4)),
            EventKind::MmioWrite(RegionAccess {
                region: 0,
                offset: 0x2000,
                data: val(4, 0xfee0_0218)
            }),
            EventKind::MmioWrite(RegionAccess {
                region: 0,
                offset: 0x1000,
                data: val(4, 1)
            }),
            EventKind::Irq(Irq {
                index: 2,
                vector: 3
            }),
            EventKind::Irq(Irq {
                index: 1,
                vector: 1
            }),
        ]
    );
    assert_eq!(report.ignored, 5);
    // No capability in the snapshot: the vector counts come from the vectors seen.
    assert_eq!(imp.header().irq(2).map(|i| i.count), Some(4));
    assert_eq!(imp.header().irq(1).map(|i| i.count), Some(2));
    // 64-bit BAR0: BAR1 is its upper half.
    assert!(imp.header().region(1).is_none());
}

/// A device without vector-naming events: its MSI-X messages are recognised by matching
/// `vtd-ir` writes against the table it was programmed with, once MSI-X is enabled.
#[test]
fn msix_messages_are_matched_against_the_programmed_table() {
    // Capability list: status bit 4, cap pointer 0x40 -> MSI-X (id 0x11), 4 entries, table in
    // BAR0 at 0x800.
    let text = "\
1@1.000000:pci_cfg_read dev 00:05.0 @0x0 -> 0x56781234
1@1.000001:pci_cfg_read dev 00:05.0 @0x6 -> 0x10
1@1.000002:pci_cfg_read dev 00:05.0 @0x34 -> 0x40
1@1.000003:pci_cfg_read dev 00:05.0 @0x40 -> 0x30011
1@1.000004:pci_cfg_read dev 00:05.0 @0x44 -> 0x800
1@1.000005:pci_cfg_read dev 00:05.0 @0x10 -> 0x0
1@1.000006:pci_update_mappings_add dev 00:05.0 0,0xfe000000+0x1000
1@1.000007:memory_region_ops_write cpu -1 mr 0x9 addr 0xfee00010 value 0x21 size 4 name 'vtd-ir'
1@1.000008:memory_region_ops_write cpu 0 mr 0x1 addr 0xfe000820 value 0xfee00010 size 4 name 'msix-table'
1@1.000009:memory_region_ops_write cpu 0 mr 0x1 addr 0xfe000824 value 0x0 size 4 name 'msix-table'
1@1.000010:memory_region_ops_write cpu 0 mr 0x1 addr 0xfe000828 value 0x21 size 4 name 'msix-table'
1@1.000011:memory_region_ops_write cpu 0 mr 0x1 addr 0xfe00082c value 0x0 size 4 name 'msix-table'
1@1.000012:pci_cfg_write dev 00:05.0 @0x42 <- 0x8003
1@1.000013:memory_region_ops_write cpu 0 mr 0x9 addr 0xfee00010 value 0x21 size 4 name 'vtd-ir'
1@1.000014:memory_region_ops_write cpu -1 mr 0x9 addr 0xfee00010 value 0x22 size 4 name 'apic-msi'
1@1.000015:memory_region_ops_write cpu -1 mr 0x9 addr 0xfee00018 value 0x21 size 4 name 'vtd-ir'
";
    let (imp, events, _) = import(text, None);
    assert_eq!(imp.header().irq(2).map(|i| i.count), Some(4));
    let irqs: Vec<EventKind> = kinds(&events)
        .into_iter()
        .filter(|k| matches!(k, EventKind::Irq(_)))
        .collect();
    // Only the write after MSI-X was enabled, with entry 2's exact address and data.
    assert_eq!(
        irqs,
        vec![EventKind::Irq(Irq {
            index: 2,
            vector: 2
        })]
    );
}

/// A passthrough device in QEMU's vfio-pci trace formats (hw/vfio/trace-events).
const PASSTHROUGH: &str = "\
2024-05-01T10:00:00.000001Z vfio_populate_device_config Device '0000:01:00.0' config: size: 0x1000, offset: 0x70000000000, flags: 0x3
2024-05-01T10:00:00.000002Z vfio_region_setup Device 0000:01:00.0, region 0 \"0000:01:00.0 BAR 0\", flags: 0xf, offset: 0x0, size: 0x20000
2024-05-01T10:00:00.000003Z vfio_region_setup Device 0000:01:00.0, region 2 \"0000:01:00.0 BAR 2\", flags: 0x3, offset: 0x20000000000, size: 0x20
2024-05-01T10:00:00.000004Z vfio_pci_load_rom Device '0000:01:00.0' ROM: size: 0x40000, offset: 0x60000000000, flags: 0x1
2024-05-01T10:00:00.000005Z vfio_msix_early_setup 0000:01:00.0 PCI MSI-X CAP @0xa0, BAR 3, offset 0x0, entries 5, noresize 0
2024-05-01T10:00:00.000006Z vfio_pci_read_config  (0000:01:00.0, @0x0, len=0x4) 0x10d38086
2024-05-01T10:00:00.000007Z vfio_pci_read_config  (0000:01:00.0, @0x18, len=0x4) 0x1
2024-05-01T10:00:00.000008Z vfio_pci_write_config  (0000:01:00.0, @0x4, 0x7, len=0x2)
2024-05-01T10:00:00.000009Z vfio_rom_read  (0000:01:00.0, 0x0, 0x2) = 0xaa55
2024-05-01T10:00:00.000010Z vfio_region_write  (0000:01:00.0:region0+0xd0, 0x4, 4)
2024-05-01T10:00:00.000011Z vfio_region_read  (0000:01:00.0:region0+0x8, 4) = 0x80283
2024-05-01T10:00:00.000012Z vfio_region_write  (0000:01:00.0:region2+0x0, 0x5400, 4)
2024-05-01T10:00:00.000013Z vfio_intx_interrupt  (0000:01:00.0) Pin A
2024-05-01T10:00:00.000014Z vfio_intx_eoi  (0000:01:00.0) EOI
2024-05-01T10:00:00.000015Z vfio_msi_enable  (0000:01:00.0) Enabled 1 MSI vectors
2024-05-01T10:00:00.000016Z vfio_msi_interrupt  (0000:01:00.0) vector 0 0xfee00000/0x4021
2024-05-01T10:00:00.000017Z vfio_msix_enable  (0000:01:00.0)
2024-05-01T10:00:00.000018Z vfio_msix_vector_do_use  (0000:01:00.0) vector 2 used
2024-05-01T10:00:00.000019Z vfio_msi_interrupt  (0000:01:00.0) vector 2 0xfee00000/0x4022
2024-05-01T10:00:00.000020Z vfio_pci_reset  (0000:01:00.0)
2024-05-01T10:00:00.000021Z vfio_pci_reset_flr 0000:01:00.0 FLR/VFIO_DEVICE_RESET
";

#[test]
fn passthrough_dialect() {
    let (imp, events, report) = import(PASSTHROUGH, None);
    assert_eq!(imp.device().dialect, Dialect::Passthrough);
    assert_eq!(imp.device().name, "0000:01:00.0");
    assert_eq!(report.malformed, 0, "{:?}", report.malformed_examples);
    let r = access;
    assert_eq!(
        kinds(&events),
        vec![
            EventKind::ConfigRead(cfg(0, 4, 0x10d3_8086)),
            EventKind::ConfigRead(cfg(0x18, 4, 1)),
            EventKind::ConfigWrite(cfg(4, 2, 7)),
            EventKind::MmioRead(r(6, 0, 2, 0xaa55)),
            EventKind::MmioWrite(r(0, 0xd0, 4, 4)),
            EventKind::MmioRead(r(0, 8, 4, 0x80283)),
            EventKind::PioWrite(r(2, 0, 4, 0x5400)),
            EventKind::Irq(Irq {
                index: 0,
                vector: 0
            }),
            EventKind::Irq(Irq {
                index: 1,
                vector: 0
            }),
            EventKind::Irq(Irq {
                index: 2,
                vector: 2
            }),
            EventKind::Reset,
        ]
    );
    let h = imp.header();
    assert_eq!((h.device.vendor_id, h.device.device_id), (0x8086, 0x10d3));
    assert_eq!(h.device.bdf.as_deref(), Some("0000:01:00.0"));
    assert_eq!(
        h.region(0).map(|x| (x.kind, x.size)),
        Some((RegionKind::Mmio, 0x20000))
    );
    assert_eq!(
        h.region(2).map(|x| (x.kind, x.size)),
        Some((RegionKind::Pio, 0x20))
    );
    assert_eq!(
        h.region(6).map(|x| (x.kind, x.size)),
        Some((RegionKind::Rom, 0x40000))
    );
    assert_eq!(h.irq(2).map(|i| i.count), Some(5));
    assert_eq!(h.irq(1).map(|i| i.count), Some(1));
    assert_eq!(h.irq(0).map(|i| i.count), Some(1));
    assert_eq!(events[0].t_ns, 5_000);
}

#[test]
fn passthrough_two_line_formats_of_older_qemus() {
    // QEMU 7.2 prints `Device %s config:\n  size: ...` and `Device %s ROM:\n  size: ...`: the
    // second line starts with blanks and belongs to the event before it.
    let text = PASSTHROUGH
        .replace(
            "Device '0000:01:00.0' config: size: 0x1000,",
            "Device 0000:01:00.0 config:\n  size: 0x1000,",
        )
        .replace(
            "Device '0000:01:00.0' ROM: size: 0x40000,",
            "Device 0000:01:00.0 ROM:\n  size: 0x8000,",
        );
    let (imp, events, report) = import(&text, None);
    assert_eq!(report.malformed, 0, "{:?}", report.malformed_examples);
    assert_eq!(report.lines, PASSTHROUGH.lines().count() as u64 + 2);
    assert_eq!(events.len(), 11);
    assert_eq!(
        imp.header().region(6).map(|x| (x.kind, x.size)),
        Some((RegionKind::Rom, 0x8000))
    );
    // A size PCI does not allow is a malformed line, not a region.
    let text = PASSTHROUGH.replace(
        "Device '0000:01:00.0' ROM: size: 0x40000,",
        "Device 0000:01:00.0 ROM:\n  size: 0xffffffffffffffff,",
    );
    let (imp, _, report) = import(&text, None);
    assert_eq!(report.malformed, 1);
    assert_ne!(imp.header().region(6).map(|x| x.size), Some(u64::MAX));
    // A blank-led line after any other event is ignored, not malformed, and sets nothing.
    let text = PASSTHROUGH.replace(
        "vfio_pci_reset  (0000:01:00.0)\n",
        "vfio_pci_reset  (0000:01:00.0)\n  size: 0x99\n",
    );
    let (imp, _, report) = import(&text, None);
    assert_eq!(report.malformed, 0);
    assert_eq!(imp.header().region(6).map(|x| x.size), Some(0x40000));
}

#[test]
fn passthrough_selected_by_host_address() {
    let both = format!("{PASSTHROUGH}{EMULATED}");
    let (imp, events, _) = import(&both, Some("0000:01:00.0"));
    assert_eq!(imp.device().dialect, Dialect::Passthrough);
    assert_eq!(events.len(), 11);
    let (imp, _, _) = import(&both, Some("foonic"));
    assert_eq!(imp.device().dialect, Dialect::Emulated);
}

fn garble(line: &str, cut: usize, flip: usize, byte: u8) -> String {
    let mut b = line.as_bytes().to_vec();
    if !b.is_empty() {
        let i = flip % b.len();
        b[i] = byte;
        b.truncate(cut % (b.len() + 1));
    }
    String::from_utf8_lossy(&b).into_owned()
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    /// Random bytes and garbled real lines never panic the importer; whatever it returns is
    /// consistent.
    #[test]
    fn garbled_logs_never_panic(
        picks in proptest::collection::vec((0usize..64, 0usize..200, 0usize..200, any::<u8>(), any::<bool>()), 1..60),
        noise in proptest::collection::vec(any::<u8>(), 0..200),
    ) {
        let two_line_formats = [
            "2024-05-01T10:00:00.000001Z vfio_populate_device_config Device 0000:01:00.0 config:",
            "2024-05-01T10:00:00.000002Z vfio_pci_load_rom Device 0000:01:00.0 ROM:",
            "  size: 0x40000, offset: 0x60000000000, flags: 0x1",
            "\tsize: 0xffffffffffffffff",
        ];
        let source: Vec<&str> = EMULATED
            .lines()
            .chain(PASSTHROUGH.lines())
            .chain(two_line_formats)
            .collect();
        let mut text = String::new();
        for (i, cut, flip, byte, keep) in picks {
            let l = source[i % source.len()];
            if keep { text.push_str(l) } else { text.push_str(&garble(l, cut, flip, byte)) }
            text.push('\n');
        }
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("t.log");
        let mut bytes = text.into_bytes();
        bytes.extend_from_slice(&noise);
        std::fs::write(&path, &bytes).unwrap();
        if let Ok(imp) = scan(&path, &ImportOptions::default()) {
            let (events, report) = imp.collect_events().unwrap();
            prop_assert_eq!(report.events as usize, events.len());
            prop_assert_eq!(report.lines, report.events + report.ignored + report.malformed);
            prop_assert!(events.windows(2).all(|w| w[0].t_ns <= w[1].t_ns && w[0].seq + 1 == w[1].seq));
        }
    }
}

proptest! {
    /// Every argument parser accepts arbitrary text without panicking.
    #[test]
    fn line_parsers_never_panic(s in "\\PC{0,120}", prefix in prop::sample::select(vec![
        "", "1@2.3:", "2024-05-01T10:00:00Z ", "2024-05-01T10:00:00.5+02:00 ", "memory_region_ops_read ",
        "vfio_region_read  (", "pci_cfg_read a 00:01.0 @", "12@", "2024-0",
    ])) {
        use hwrr_import::line::*;
        let text = format!("{prefix}{s}");
        let _ = split_line(&text);
        let _ = region_op(&text);
        let _ = cfg_op(&text, "->");
        let _ = mapping_op(&text);
        let _ = ioapic_set_irq(&text);
        let _ = vfio_region(&text, true);
        let _ = vfio_region(&text, false);
        let _ = vfio_config(&text, true);
        let _ = vfio_config(&text, false);
        let _ = vfio_name(&text);
        let _ = vfio_msi_interrupt(&text);
        let _ = vfio_rom_read(&text);
        let _ = vfio_region_setup(&text);
        let _ = normalize_bdf(&text);
        let _ = last_number(&text);
        let _ = field_hex(&text, "size:");
        let _ = described_device(&text);
    }
}

/// `msix-table` is a generic name: the address decides which device's BAR it is, and another
/// device's table access is neither an event nor "unmapped" for this one.
#[test]
fn generic_msix_regions_go_to_the_device_whose_bar_holds_them() {
    let text = "\
1@1.000000:pci_cfg_read aaa 00:01.0 @0x0 -> 0x11112222
1@1.000001:pci_update_mappings_add aaa 00:01.0 3,0xfebc0000+0x4000
1@1.000002:pci_cfg_read bbb 00:02.0 @0x0 -> 0x33334444
1@1.000003:pci_update_mappings_add bbb 00:02.0 0,0xfebc4000+0x4000
1@1.000004:memory_region_ops_write cpu 0 mr 0x1 addr 0xfebc6010 value 0x1 size 4 name 'msix-table'
1@1.000005:memory_region_ops_read cpu 0 mr 0x1 addr 0xfebc0800 value 0x2 size 4 name 'msix-pba'
";
    let (_, a, ra) = import(text, Some("aaa"));
    let (_, b, rb) = import(text, Some("bbb"));
    assert_eq!(
        kinds(&a)[1..],
        [EventKind::MmioRead(RegionAccess {
            region: 3,
            offset: 0x800,
            data: val(4, 2)
        })]
    );
    assert_eq!(
        kinds(&b)[1..],
        [EventKind::MmioWrite(RegionAccess {
            region: 0,
            offset: 0x2010,
            data: val(4, 1)
        })]
    );
    assert_eq!((ra.unmapped, rb.unmapped), (0, 0));
}

/// Models name the regions inside a BAR after themselves, not after the device type (virtio's
/// `virtio-pci-common-virtio-net` in `virtio-net-pci`'s BAR 4, `ahci` in `ich9-ahci`'s BAR 5):
/// the device whose mapped BAR holds the address owns the access.
#[test]
fn accesses_to_regions_named_otherwise_belong_to_the_bar_that_holds_them() {
    let log = "\
100@1000.000000:pci_cfg_read vnic-pci 00:02.0 @0x0 -> 0x10001af4
100@1000.000010:pci_update_mappings_add vnic-pci 00:02.0 4,0xfebf0000+0x4000
100@1000.000020:pci_update_mappings_add other 00:04.0 0,0xfe000000+0x1000
100@1000.000030:memory_region_ops_write cpu 0 mr 0x1 addr 0xfebf0014 value 0x1 size 1 name 'vnic-common-x'
100@1000.000040:memory_region_ops_read cpu 0 mr 0x1 addr 0xfebf3000 value 0x2 size 2 name 'vnic-device-x'
100@1000.000050:memory_region_ops_read cpu 0 mr 0x2 addr 0xfe000010 value 0x5 size 4 name 'other-regs'
100@1000.000060:memory_region_ops_read cpu 0 mr 0x3 addr 0xfed00000 value 0x6 size 4 name 'hpet'
100@1000.000070:pci_update_mappings_del vnic-pci 00:02.0 4,0xfebf0000+0x4000
100@1000.000080:memory_region_ops_read cpu 0 mr 0x1 addr 0xfebf0014 value 0x1 size 1 name 'vnic-common-x'
";
    let (_, events, report) = import(log, Some("vnic-pci"));
    let mmio = |offset, size, value| access(4, offset, size, value);
    assert_eq!(
        kinds(&events),
        vec![
            EventKind::ConfigRead(cfg(0, 4, 0x1000_1af4)),
            EventKind::MmioWrite(mmio(0x14, 1, 1)),
            EventKind::MmioRead(mmio(0x3000, 2, 2)),
        ],
        "the other device's BAR, a system region and an access after the BAR was unmapped are not \
         the device's"
    );
    assert_eq!(report.malformed, 0);
}

#[test]
fn without_device_the_one_whose_model_events_were_traced_wins() {
    // foonic has the most BAR accesses, but the capture enabled `other`'s own trace events.
    let (imp, _, _) = import(EMULATED, None);
    assert_eq!(imp.header().device.bdf.as_deref(), Some("0000:00:03.0"));
    let text = format!("{EMULATED}100@1000.000500:other_set_link link up\n");
    let (imp, events, _) = import(&text, None);
    assert_eq!(imp.header().device.bdf.as_deref(), Some("0000:00:04.0"));
    assert!(events
        .iter()
        .any(|e| matches!(&e.kind, EventKind::MmioWrite(a) if a.region == 0 && a.offset == 0x10)));
}
