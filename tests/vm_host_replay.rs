//! The VT-d box's e1000e trace replayed on the host, with no device (issue 6, item 3): runs
//! `tests/vm/host-replay.sh` when the trace exists (`HWRR_E1000E_TRACE`, else
//! `tests/vm/vtdbox-record.sh`'s default output `/tmp/vtdbox-record/e1000e.hwrr`) and prints
//! `SKIPPED: ...` otherwise.
//!
//! The script serves the trace with `hwrr replay --check` (this package's binary) and runs
//! `vfio-backend/examples/e1000e_exercise.rs` against it at another IOVA: the observations must
//! equal the box run's, and a changed register write must make `--check` fail with a report that
//! names it. Artefacts land in `HOST_REPLAY_OUT` (default `/tmp/host-replay`).

use std::path::{Path, PathBuf};
use std::process::Command;

const DEFAULT_TRACE: &str = "/tmp/vtdbox-record/e1000e.hwrr";

/// The exercise `cargo test --workspace` builds next to this package's binary, when it did.
fn prebuilt_exercise() -> Option<PathBuf> {
    let hwrr = Path::new(env!("CARGO_BIN_EXE_hwrr"));
    let exercise = hwrr.parent()?.join("examples").join("e1000e_exercise");
    exercise.is_file().then_some(exercise)
}

#[test]
fn the_box_trace_replays_on_the_host_with_the_same_observations() {
    let trace = std::env::var_os("HWRR_E1000E_TRACE")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(DEFAULT_TRACE));
    if !trace.is_file() {
        println!(
            "SKIPPED: no e1000e trace from the VT-d box at {} (run tests/vm/vtdbox-record.sh, or set HWRR_E1000E_TRACE)",
            trace.display()
        );
        return;
    }
    let repo = Path::new(env!("CARGO_MANIFEST_DIR"));
    let mut script = Command::new("bash");
    script
        .arg(repo.join("tests/vm/host-replay.sh"))
        .arg(&trace)
        .env("HWRR_BIN", env!("CARGO_BIN_EXE_hwrr"))
        .env(
            "OUT",
            std::env::var_os("HOST_REPLAY_OUT").unwrap_or_else(|| "/tmp/host-replay".into()),
        );
    match prebuilt_exercise() {
        Some(exercise) => {
            script.env("EXERCISE_BIN", exercise);
        }
        // The script builds both binaries itself (debug) when one is not given.
        None => {
            script.env_remove("HWRR_BIN");
        }
    }
    let out = script.output().expect("run bash tests/vm/host-replay.sh");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    println!("{stdout}");
    eprintln!("{stderr}");
    match out.status.code() {
        Some(77) => panic!("host-replay.sh found a prerequisite missing (exit 77): {stderr}"),
        Some(0) => {}
        other => panic!("host-replay.sh failed ({other:?}): see its HOSTREPLAY lines above"),
    }
    assert!(
        stdout.contains("HOSTREPLAY observations-identical OK")
            && stdout.contains("HOSTREPLAY changed-divergence-names-the-access OK"),
        "the script passed without its two central verdicts"
    );
}
