//! `docs/FORMAT.md` is complete enough to write a reader from: `spec_time_reader.py`, written from
//! the spec alone (the v1, v2 and v3 time streams, the stored payload of v2 and v3, their tables,
//! contexts, lanes and extra bits, and the key dictionaries), must find exactly the timestamps and
//! access keys hwrr's reader finds. Skips with a message when `python3` or the `zstd` command is
//! missing.

use std::path::{Path, PathBuf};
use std::process::Command;

use hwrr_formats::{ChunkColumns, TraceReader};

fn available(program: &str) -> bool {
    Command::new(program)
        .arg("--version")
        .output()
        .is_ok_and(|o| o.status.success())
}

#[test]
fn spec_reader_finds_the_same_timestamps() {
    if !available("python3") || !available("zstd") {
        eprintln!("python3 or zstd missing: the independent spec reader is not run");
        return;
    }
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let script = root.join("tests/spec_time_reader.py");
    let mut files: Vec<PathBuf> = ["all_kinds.hwrr", "slice.hwrr", "timing.hwrr"]
        .iter()
        .flat_map(|f| {
            [
                root.join("tests/golden").join(f),
                root.join("tests/golden/v2").join(f),
                root.join("tests/golden/v3").join(f),
            ]
        })
        .collect();
    for f in ["all_kinds.hwrr", "slice.hwrr"] {
        files.push(root.join("tests/golden/v2/earlier").join(f));
    }
    let seeds = root.join("../fuzz/corpus/trace_reader");
    files.push(seeds.join("rtl8139_v2_3000_events.hwrr"));
    files.push(seeds.join("nvme_v2_2000_events.hwrr"));
    files.push(seeds.join("rtl8139_v3_3000_events.hwrr"));
    files.push(seeds.join("nvme_v3_2000_events.hwrr"));
    for file in files {
        let out = Command::new("python3")
            .arg(&script)
            .arg(&file)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}: {}",
            file.display(),
            String::from_utf8_lossy(&out.stderr)
        );
        let text = String::from_utf8(out.stdout).unwrap();
        let (times, keys) = text.split_once("keys\n").unwrap();
        let theirs: Vec<u64> = times.lines().map(|l| l.parse().unwrap()).collect();
        let r = TraceReader::open(&file).unwrap();
        let ours: Vec<u64> = r.iter().map(|e| e.unwrap().t_ns).collect();
        assert!(!ours.is_empty());
        assert_eq!(theirs, ours, "{}", file.display());
        let mut our_keys = String::new();
        let mut cols = ChunkColumns::default();
        for chunk in 0..r.chunk_count() {
            r.read_chunk_columns(chunk, &mut cols).unwrap();
            for k in &cols.keys {
                our_keys += &format!(
                    "{chunk} {} {} {} {}\n",
                    k.tag as u8, k.region, k.offset, k.width
                );
            }
        }
        assert!(!our_keys.is_empty(), "{}", file.display());
        assert_eq!(keys, our_keys, "{}", file.display());
    }
}
