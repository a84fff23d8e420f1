//! The CLI contract of `hwrr info|dump|verify|recover|slice|diff|export` on traces built here.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use hwrr_formats::{
    AccessData, ConfigAccess, DmaMapping, DmaWrite, Event, EventKind, Irq, RegionAccess,
    RegionInfo, RegionKind, TraceHeader, TraceWriter, WriterOptions,
};
use serde_json::Value;

fn hwrr(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_hwrr"))
        .args(args)
        .output()
        .expect("run hwrr")
}

/// `hwrr recover FROM -o TO`.
fn recover(from: &Path, to: &Path) -> Output {
    hwrr(&[
        "recover",
        from.to_str().unwrap(),
        "-o",
        to.to_str().unwrap(),
    ])
}

fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

fn header() -> TraceHeader {
    let mut config = vec![0u8; 256];
    config[0..4].copy_from_slice(&[0x86, 0x80, 0xd3, 0x10]);
    TraceHeader {
        device: hwrr_formats::DeviceIdentity::from_config_space(&config, None).unwrap(),
        config_space: config,
        regions: vec![
            RegionInfo {
                index: 0,
                kind: RegionKind::Mmio,
                size: 0x20000,
                flags: 3,
                alias_of: None,
            },
            RegionInfo {
                index: 2,
                kind: RegionKind::Pio,
                size: 32,
                flags: 3,
                alias_of: None,
            },
        ],
        ..Default::default()
    }
}

fn mmio_read(offset: u64, value: u64) -> EventKind {
    EventKind::MmioRead(RegionAccess {
        region: 0,
        offset,
        data: AccessData::Value { size: 4, value },
    })
}

fn mmio_write(offset: u64, value: u64) -> EventKind {
    EventKind::MmioWrite(RegionAccess {
        region: 0,
        offset,
        data: AccessData::Value { size: 4, value },
    })
}

/// A trace of `n` events: config, DMA map, then a pattern of register accesses, interrupts and
/// DMA writes; `changed_write` alters the value of the write at that index.
fn build_trace(path: &Path, n: u64, changed_write: Option<u64>, chunk_events: usize) {
    let opts = WriterOptions {
        chunk_events,
        flush_interval: None,
        ..WriterOptions::default()
    };
    let mut w = TraceWriter::create(path, &header(), opts).unwrap();
    for seq in 0..n {
        let kind = match seq {
            0 => EventKind::ConfigRead(ConfigAccess {
                offset: 0,
                data: AccessData::Value {
                    size: 4,
                    value: 0x10d3_8086,
                },
            }),
            1 => EventKind::ConfigWrite(ConfigAccess {
                offset: 4,
                data: AccessData::Value {
                    size: 2,
                    value: 0x0106,
                },
            }),
            2 => EventKind::DmaMap(DmaMapping {
                iova: 0x10_0000,
                len: 0x10_0000,
                flags: 3,
            }),
            s if s % 10 == 3 => {
                let v = if Some(s) == changed_write { 0xbad } else { s };
                mmio_write(0x100, v)
            }
            s if s % 10 == 7 => EventKind::Irq(Irq {
                index: 2,
                vector: (s % 3) as u32,
            }),
            s if s % 10 == 9 => EventKind::DmaWrite(DmaWrite {
                iova: 0x10_0000 + (s % 64) * 64,
                data: vec![s as u8; 64],
                before: Some(vec![0; 64]),
            }),
            s if s % 10 == 5 => EventKind::PioWrite(RegionAccess {
                region: 2,
                offset: 4,
                data: AccessData::Value {
                    size: 1,
                    value: s & 0xff,
                },
            }),
            s => mmio_read(0x8, s / 4),
        };
        w.append(&Event::new(seq, 1000 * seq, kind)).unwrap();
    }
    w.finish().unwrap();
}

fn tmp(dir: &tempfile::TempDir, name: &str) -> PathBuf {
    dir.path().join(name)
}

#[test]
fn info_json_has_the_contract_fields() {
    let dir = tempfile::tempdir().unwrap();
    let t = tmp(&dir, "a.hwrr");
    build_trace(&t, 1000, None, 128);
    let o = hwrr(&["info", t.to_str().unwrap(), "--json"]);
    assert!(o.status.success(), "{o:?}");
    let v: Value = serde_json::from_str(&stdout(&o)).unwrap();
    assert_eq!(v["events"], 1000);
    let by_kind = v["by_kind"].as_object().unwrap();
    for k in [
        "mmio_read",
        "mmio_write",
        "pio_read",
        "pio_write",
        "config_read",
        "config_write",
        "irq",
        "irq_setup",
        "dma_map",
        "dma_unmap",
        "dma_read",
        "dma_write",
        "reset",
        "marker",
    ] {
        assert!(by_kind[k].is_u64(), "by_kind.{k}");
    }
    let sum: u64 = by_kind.values().map(|x| x.as_u64().unwrap()).sum();
    assert_eq!(sum, 1000);
    assert_eq!(by_kind["config_read"], 1);
    assert_eq!(by_kind["dma_map"], 1);
    assert_eq!(by_kind["irq"], 100);
    assert_eq!(v["file_bytes"], std::fs::metadata(&t).unwrap().len());
    assert_eq!(v["chunks"], 8); // 1000 events in chunks of 128
    assert_eq!(v["duration_ns"], 999_000);
    assert_eq!(v["device"]["vendor"], "0x8086");
    assert_eq!(v["device"]["device"], "0x10d3");
    assert_eq!(v["regions"][0]["index"], 0);
    assert_eq!(v["regions"][0]["kind"], "mmio");
    assert_eq!(v["regions"][0]["bytes"], 0x20000);
    assert_eq!(v["regions"][1]["kind"], "pio");
}

#[test]
fn dump_json_lines_from_and_count() {
    let dir = tempfile::tempdir().unwrap();
    let t = tmp(&dir, "a.hwrr");
    build_trace(&t, 300, None, 64);
    let o = hwrr(&[
        "dump",
        t.to_str().unwrap(),
        "--json",
        "--from",
        "120",
        "--count",
        "10",
    ]);
    assert!(o.status.success());
    let lines: Vec<Value> = stdout(&o)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(lines.len(), 10);
    assert_eq!(lines[0]["seq"], 120);
    assert_eq!(lines[0]["t_ns"], 120_000);
    let w = &lines[3]; // seq 123: a write
    assert_eq!(w["kind"], "mmio_write");
    assert_eq!(w["region"], 0);
    assert_eq!(w["offset"], 0x100);
    assert_eq!(w["size"], 4);
    assert_eq!(w["value"], 123);
    let irq = &lines[7];
    assert_eq!(irq["kind"], "irq");
    assert_eq!(irq["index"], 2);
    assert_eq!(irq["vector"], 127 % 3);
    let dma = &lines[9];
    assert_eq!(dma["kind"], "dma_write");
    assert_eq!(dma["len"], 64);
    assert_eq!(dma["iova"], 0x10_0000 + 64); // seq 129: (129 % 64) * 64

    let regmap = tmp(&dir, "map.toml");
    std::fs::write(
        &regmap,
        "[[register]]\nname = \"STATUS\"\nregion = 0\noffset = 8\nwidth = 4\n",
    )
    .unwrap();
    let o = hwrr(&[
        "dump",
        t.to_str().unwrap(),
        "--json",
        "--count",
        "5",
        "--regmap",
        regmap.to_str().unwrap(),
    ]);
    let named: Vec<Value> = stdout(&o)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .filter(|v: &Value| v["kind"] == "mmio_read")
        .collect();
    assert!(!named.is_empty());
    assert!(named.iter().all(|v| v["name"] == "STATUS"));
}

#[test]
fn verify_and_recover_exit_codes() {
    let dir = tempfile::tempdir().unwrap();
    let t = tmp(&dir, "a.hwrr");
    build_trace(&t, 2000, None, 100);
    let o = hwrr(&["verify", t.to_str().unwrap()]);
    assert_eq!(o.status.code(), Some(0), "{o:?}");

    let missing = tmp(&dir, "missing.hwrr");
    assert_eq!(
        hwrr(&["verify", missing.to_str().unwrap()]).status.code(),
        Some(2)
    );

    // Flip a byte in the middle of the file: a chunk's checksum fails.
    let mut bytes = std::fs::read(&t).unwrap();
    let mid = bytes.len() / 2;
    bytes[mid] ^= 0x40;
    let bad = tmp(&dir, "bad.hwrr");
    std::fs::write(&bad, &bytes).unwrap();
    let o = hwrr(&["verify", bad.to_str().unwrap()]);
    assert_eq!(o.status.code(), Some(1), "{o:?}");
    let msg = String::from_utf8_lossy(&o.stderr);
    assert!(msg.contains("chunk") && msg.contains("offset"), "{msg}");

    // Truncate: recover keeps a sound prefix that verifies.
    let cut = tmp(&dir, "cut.hwrr");
    std::fs::write(&cut, &std::fs::read(&t).unwrap()[..mid]).unwrap();
    assert_eq!(
        hwrr(&["verify", cut.to_str().unwrap()]).status.code(),
        Some(1)
    );
    let out = tmp(&dir, "rec.hwrr");
    let o = recover(&cut, &out);
    assert!(o.status.success(), "{o:?}");
    assert!(stdout(&o).contains("recovered"));
    assert_eq!(
        hwrr(&["verify", out.to_str().unwrap()]).status.code(),
        Some(0)
    );
    let v: Value =
        serde_json::from_str(&stdout(&hwrr(&["info", out.to_str().unwrap(), "--json"]))).unwrap();
    let kept = v["events"].as_u64().unwrap();
    assert!(
        kept > 0 && kept < 2000 && kept % 100 == 0,
        "whole chunks kept: {kept}"
    );
}

#[test]
fn unfinished_traces_are_read_as_recovered_and_damage_still_fails() {
    let dir = tempfile::tempdir().unwrap();
    let t = tmp(&dir, "a.hwrr");
    build_trace(&t, 2000, None, 100);
    let whole = std::fs::read(&t).unwrap();
    // A writer killed mid-stream: no footer, no trailer, a partial chunk at the end.
    let cut = tmp(&dir, "cut.hwrr");
    std::fs::write(&cut, &whole[..whole.len() / 2]).unwrap();
    let recovered = tmp(&dir, "rec.hwrr");
    let o = recover(&cut, &recovered);
    assert!(o.status.success(), "{o:?}");

    // info and dump read it as `recover` would have written it, and say so on stderr.
    let o = hwrr(&["info", cut.to_str().unwrap(), "--json"]);
    assert!(o.status.success(), "{o:?}");
    let warning = String::from_utf8_lossy(&o.stderr);
    assert!(
        warning.contains("unfinished") && warning.contains("hwrr recover"),
        "{warning}"
    );
    let v: Value = serde_json::from_str(&stdout(&o)).unwrap();
    let want: Value = serde_json::from_str(&stdout(&hwrr(&[
        "info",
        recovered.to_str().unwrap(),
        "--json",
    ])))
    .unwrap();
    assert_eq!(v["unfinished"], Value::Bool(true));
    assert_eq!(want["unfinished"], Value::Bool(false));
    assert_eq!(v["events"], want["events"]);
    assert_eq!(v["recovered"]["events"], want["events"]);
    assert!(v["recovered"]["dropped_bytes"].as_u64().unwrap() > 0);
    let dump = |p: &Path| stdout(&hwrr(&["dump", p.to_str().unwrap(), "--json"]));
    assert_eq!(dump(&cut), dump(&recovered));
    assert!(!dump(&cut).is_empty());
    // verify still reports the missing trailer: the file on disk is not sound.
    assert_eq!(
        hwrr(&["verify", cut.to_str().unwrap()]).status.code(),
        Some(1)
    );

    // A finished trace whose footer is damaged (the trailer holds) is not papered over.
    let mut bytes = whole.clone();
    let footer_byte = bytes.len() - 40;
    bytes[footer_byte] ^= 0x01;
    let bad = tmp(&dir, "badfooter.hwrr");
    std::fs::write(&bad, &bytes).unwrap();
    let o = hwrr(&["info", bad.to_str().unwrap()]);
    assert!(!o.status.success(), "{o:?}");
    assert!(
        String::from_utf8_lossy(&o.stderr).contains("footer"),
        "{o:?}"
    );
}

#[test]
fn slice_by_seq_and_time_keeps_numbers_and_start_state() {
    let dir = tempfile::tempdir().unwrap();
    let t = tmp(&dir, "a.hwrr");
    build_trace(&t, 500, None, 64);
    let s = tmp(&dir, "s.hwrr");
    let o = hwrr(&[
        "slice",
        t.to_str().unwrap(),
        "--from",
        "100",
        "--to",
        "199",
        "-o",
        s.to_str().unwrap(),
    ]);
    assert!(o.status.success(), "{o:?}");
    let reader = hwrr_formats::TraceReader::open(&s).unwrap();
    assert_eq!(reader.event_count(), 100);
    assert_eq!(reader.first_seq(), 100);
    let evs: Vec<Event> = reader.iter().map(|e| e.unwrap()).collect();
    assert_eq!(evs.first().unwrap().seq, 100);
    assert_eq!(evs.last().unwrap().seq, 199);
    let st = reader.header().start_state.as_ref().expect("start state");
    assert_eq!(st.first_seq, 100);
    assert_eq!(st.dma_mappings.len(), 1);
    assert!(st.registers.iter().any(|r| r.offset == 0x100));
    // The config write before the slice is in the slice's config snapshot.
    assert_eq!(&reader.header().config_space[4..6], &[0x06, 0x01]);

    let s2 = tmp(&dir, "s2.hwrr");
    let o = hwrr(&[
        "slice",
        t.to_str().unwrap(),
        "--from-time",
        "250000",
        "--to-time",
        "260500",
        "-o",
        s2.to_str().unwrap(),
    ]);
    assert!(o.status.success(), "{o:?}");
    let r2 = hwrr_formats::TraceReader::open(&s2).unwrap();
    assert_eq!(r2.first_seq(), 250);
    assert_eq!(r2.event_count(), 11); // 250..=260
    let bad = hwrr(&[
        "slice",
        t.to_str().unwrap(),
        "--from",
        "400",
        "--to",
        "600",
        "-o",
        s2.to_str().unwrap(),
    ]);
    assert_eq!(bad.status.code(), Some(2));
}

#[test]
fn diff_names_the_first_changed_access() {
    let dir = tempfile::tempdir().unwrap();
    let a = tmp(&dir, "a.hwrr");
    let b = tmp(&dir, "b.hwrr");
    let c = tmp(&dir, "c.hwrr");
    build_trace(&a, 400, None, 64);
    build_trace(&b, 400, None, 100);
    build_trace(&c, 400, Some(253), 64);
    let o = hwrr(&["diff", a.to_str().unwrap(), b.to_str().unwrap()]);
    assert_eq!(o.status.code(), Some(0), "{o:?}");
    let o = hwrr(&["diff", a.to_str().unwrap(), c.to_str().unwrap(), "--json"]);
    assert_eq!(o.status.code(), Some(1), "{o:?}");
    let v: Value = serde_json::from_str(&stdout(&o)).unwrap();
    assert_eq!(v["equal"], false);
    assert_eq!(v["a"]["event"]["seq"], 253);
    assert_eq!(v["a"]["event"]["value"], 253);
    assert_eq!(v["b"]["event"]["value"], 0xbad);
    assert!(!v["a"]["before"].as_array().unwrap().is_empty());
    assert_eq!(
        hwrr(&["diff", a.to_str().unwrap(), "/nonexistent"])
            .status
            .code(),
        Some(2)
    );
}

/// Checks the Chrome trace-event format rules every event must follow.
fn check_trace_event(e: &Value) {
    let ph = e["ph"].as_str().expect("ph");
    assert!(["X", "i", "M"].contains(&ph), "phase {ph}");
    assert!(e["name"].is_string());
    assert!(e["pid"].is_u64() && e["tid"].is_u64());
    if ph != "M" {
        assert!(e["ts"].is_number(), "ts on {e}");
    }
    if ph == "X" {
        assert!(e["dur"].as_f64().unwrap() > 0.0);
    }
    if ph == "i" {
        assert!(["g", "p", "t"].contains(&e["s"].as_str().unwrap()));
    }
    if ph == "M" {
        assert!(["process_name", "thread_name"].contains(&e["name"].as_str().unwrap()));
        assert!(e["args"]["name"].is_string());
    }
}

#[test]
fn export_perfetto_and_csv() {
    let dir = tempfile::tempdir().unwrap();
    let t = tmp(&dir, "a.hwrr");
    build_trace(&t, 300, None, 64);
    let p = tmp(&dir, "t.json");
    let o = hwrr(&[
        "export",
        t.to_str().unwrap(),
        "--format",
        "perfetto",
        "-o",
        p.to_str().unwrap(),
    ]);
    assert!(o.status.success(), "{o:?}");
    let v: Value = serde_json::from_str(&std::fs::read_to_string(&p).unwrap()).unwrap();
    let events = v["traceEvents"].as_array().unwrap();
    for e in events {
        check_trace_event(e);
    }
    let non_meta = events.iter().filter(|e| e["ph"] != "M").count();
    assert_eq!(non_meta, 300);
    let threads: Vec<&str> = events
        .iter()
        .filter(|e| e["name"] == "thread_name")
        .map(|e| e["args"]["name"].as_str().unwrap())
        .collect();
    for want in [
        "region 0",
        "region 2",
        "config space",
        "DMA",
        "MSI-X vector 0",
        "MSI-X vector 2",
    ] {
        assert!(threads.contains(&want), "track {want} in {threads:?}");
    }
    // Timestamps are microseconds.
    let e100 = events.iter().find(|e| e["args"]["seq"] == 100).unwrap();
    assert_eq!(e100["ts"].as_f64().unwrap(), 100.0);

    let c = tmp(&dir, "t.csv");
    let o = hwrr(&[
        "export",
        t.to_str().unwrap(),
        "--format",
        "csv",
        "-o",
        c.to_str().unwrap(),
    ]);
    assert!(o.status.success(), "{o:?}");
    let text = std::fs::read_to_string(&c).unwrap();
    let mut lines = text.lines();
    let head: Vec<&str> = lines.next().unwrap().split(',').collect();
    let rows: Vec<Vec<&str>> = lines.map(|l| l.split(',').collect()).collect();
    assert_eq!(rows.len(), 300);
    assert!(rows.iter().all(|r| r.len() == head.len()));
    let col = |name: &str| head.iter().position(|h| *h == name).unwrap();
    assert_eq!(rows[13][col("kind")], "mmio_write");
    assert_eq!(rows[13][col("value")], "13");
    assert_eq!(rows[13][col("offset")], "256");
}
