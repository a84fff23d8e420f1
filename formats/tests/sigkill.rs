//! A writer process killed with SIGKILL mid-stream loses nothing older than its flush bound.
//!
//! The test re-runs its own binary as the writer (`HWRR_SIGKILL_CHILD` names the trace path). The
//! child reports, through an atomically renamed progress file, the events it knows are durable: after
//! every append, all but the last `chunk_events - 1` events (the event bound) and after each `tick()` that follows a sleep longer
//! than the flush interval (the time bound). No assertion depends on how fast anything runs.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::*;
use hwrr_formats::*;

const CHUNK_EVENTS: usize = 500;
const FLUSH_INTERVAL: Duration = Duration::from_millis(2);

fn progress_path(trace: &Path) -> PathBuf {
    trace.with_extension("progress")
}

/// Child side: writes events forever, publishing the count it knows has reached the OS.
#[test]
fn sigkill_child_writer() {
    let Some(path) = std::env::var_os("HWRR_SIGKILL_CHILD") else {
        return;
    };
    let path = PathBuf::from(path);
    let opts = WriterOptions {
        chunk_events: CHUNK_EVENTS,
        flush_interval: Some(FLUSH_INTERVAL),
        ..WriterOptions::default()
    };
    let mut w = TraceWriter::create(&path, &header(None, 0), opts).unwrap();
    let events = mixed_events(0, 200_000);
    let mut durable = 0u64;
    let mut publish = |at_least: u64| {
        durable = durable.max(at_least);
        let tmp = path.with_extension("progress.tmp");
        std::fs::write(&tmp, durable.to_string()).unwrap();
        std::fs::rename(&tmp, progress_path(&path)).unwrap();
    };
    for (i, e) in events.iter().enumerate() {
        w.append(e).unwrap();
        let n = i as u64 + 1;
        if n % 50 == 0 {
            // The event bound: the open chunk never holds `chunk_events` events, because the append
            // that fills it writes it through to the OS.
            publish(n.saturating_sub(CHUNK_EVENTS as u64 - 1));
        }
        if n % 997 == 0 {
            // Let the open chunk age past the flush interval; tick must then write it out.
            std::thread::sleep(FLUSH_INTERVAL * 2);
            w.tick().unwrap();
            publish(n);
        }
    }
    // Out of events before the parent killed us (a very slow parent): wait to be killed rather
    // than exit, but not forever if the parent died.
    std::thread::sleep(Duration::from_secs(120));
}

#[test]
fn killed_writer_loses_nothing_older_than_its_flush_bound() {
    let dir = tempfile::tempdir().unwrap();
    let trace = dir.path().join("killed.hwrr");
    let mut child = Command::new(std::env::current_exe().unwrap())
        .args([
            "--exact",
            "sigkill_child_writer",
            "--nocapture",
            "--test-threads=1",
        ])
        .env("HWRR_SIGKILL_CHILD", &trace)
        .stdout(Stdio::null())
        .stderr(Stdio::inherit())
        .spawn()
        .unwrap();
    let read_progress = || -> u64 {
        std::fs::read_to_string(progress_path(&trace))
            .ok()
            .and_then(|s| s.parse().ok())
            .unwrap_or(0)
    };
    let deadline = Instant::now() + Duration::from_secs(120);
    while read_progress() < 3000 {
        assert!(Instant::now() < deadline, "child writer made no progress");
        assert!(
            child.try_wait().unwrap().is_none(),
            "child writer exited early"
        );
        std::thread::sleep(Duration::from_millis(5));
    }
    child.kill().unwrap(); // SIGKILL on Unix
    child.wait().unwrap();
    let durable = read_progress();
    assert!(matches!(
        TraceReader::open(&trace),
        Err(FormatError::MissingTrailer { .. })
    ));
    let out = dir.path().join("recovered.hwrr");
    let report = recover(&trace, &out).unwrap();
    assert!(!report.had_footer);
    assert!(
        report.events >= durable,
        "recovered {} events, but {durable} were durable before the kill",
        report.events
    );
    let r = TraceReader::open(&out).unwrap();
    r.verify().unwrap();
    let expected = mixed_events(0, report.events);
    assert_eq!(read_all(&r), expected);
    // Read in place, the killed writer's file gives the same events and the same report.
    let (in_place, in_place_report) = open_or_recover(&trace).unwrap();
    assert_eq!(read_all(&in_place), expected);
    assert_eq!(in_place_report, Some(report));
    assert_eq!(
        open_or_recover(&out).unwrap().1,
        None,
        "a sound file is opened as is"
    );
}
