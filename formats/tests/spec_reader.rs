//! `docs/FORMAT.md` is complete enough to write a reader from: `spec_time_reader.py`, written from
//! the spec alone (the v1 and v2 time streams, the v2 stored payload, its tables, contexts, lanes
//! and extra bits), must find exactly the timestamps hwrr's reader finds. Skips with a message when
//! `python3` or the `zstd` command is missing.

use std::path::{Path, PathBuf};
use std::process::Command;

use hwrr_formats::TraceReader;

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
            ]
        })
        .collect();
    for f in ["all_kinds.hwrr", "slice.hwrr"] {
        files.push(root.join("tests/golden/v2/earlier").join(f));
    }
    let seeds = root.join("../fuzz/corpus/trace_reader");
    files.push(seeds.join("rtl8139_v2_3000_events.hwrr"));
    files.push(seeds.join("nvme_v2_2000_events.hwrr"));
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
        let theirs: Vec<u64> = String::from_utf8(out.stdout)
            .unwrap()
            .lines()
            .map(|l| l.parse().unwrap())
            .collect();
        let r = TraceReader::open(&file).unwrap();
        let ours: Vec<u64> = r.iter().map(|e| e.unwrap().t_ns).collect();
        assert!(!ours.is_empty());
        assert_eq!(theirs, ours, "{}", file.display());
    }
}
