//! The recorder's queue and writer under concurrency: nothing lost, stamps non-decreasing along the
//! stream, each stamp within the call that logged it, reserved places kept, failures reported
//! without hanging producers.

use std::io::Write;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use hwrr_formats::{
    AccessData, Event, EventKind, Marker, RegionAccess, TraceHeader, TraceReader, TraceWriter,
    WriterOptions,
};
use hwrr_recorder::{Clock, ClockSource, Recorder, RecorderHandle, RecorderOptions};

fn options(queue_capacity: usize) -> RecorderOptions {
    RecorderOptions {
        queue_capacity,
        writer: WriterOptions {
            chunk_events: 1024,
            ..WriterOptions::default()
        },
    }
}

/// An access that says who logged it: region = producer, offset = its counter.
fn access(producer: u32, i: u64) -> EventKind {
    EventKind::MmioRead(RegionAccess {
        region: producer,
        offset: i,
        data: AccessData::Value { size: 4, value: i },
    })
}

fn identity(ev: &Event) -> Option<(u32, u64)> {
    match &ev.kind {
        EventKind::MmioRead(a) | EventKind::MmioWrite(a) => Some((a.region, a.offset)),
        _ => None,
    }
}

fn read_all(path: &std::path::Path) -> Vec<Event> {
    let reader = TraceReader::open(path).unwrap();
    reader.iter().map(|e| e.unwrap()).collect()
}

/// The recorder's clock, read after everything before and before everything after (its RDTSC is
/// unfenced on the access path: it may run a few cycles early or late).
fn fenced(handle: &RecorderHandle) -> u64 {
    #[cfg(target_arch = "x86_64")]
    // SAFETY: LFENCE has no operands and exists on every x86_64 CPU.
    unsafe {
        std::arch::x86_64::_mm_lfence()
    };
    let t = handle.now_ns();
    #[cfg(target_arch = "x86_64")]
    // SAFETY: as above.
    unsafe {
        std::arch::x86_64::_mm_lfence()
    };
    t
}

/// What one producer saw of one of its calls: the clock just before and just after.
struct Bracket {
    producer: u32,
    i: u64,
    before: u64,
    after: u64,
}

/// Four producers log through a small queue (so they stall), some events in reserved places with
/// other events logged while the place is held, while another thread keeps re-anchoring the clock.
/// Every event arrives exactly once, in each producer's own order; stamps never decrease along the
/// stream; and each stamp lies between clock readings taken just before and just after the call
/// that logged it (raising a stamp to its predecessor's never moves it past the call's end).
fn concurrent_producers(clock: Clock) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("t.hwrr");
    let writer = TraceWriter::create(&path, &TraceHeader::default(), options(64).writer).unwrap();
    let source = clock.source();
    let recorder = Recorder::start_with_clock(writer, options(64), clock).unwrap();
    assert_eq!(recorder.clock_source(), source);
    let stop = Arc::new(AtomicBool::new(false));
    let recalibrator = {
        let (handle, stop) = (recorder.handle(), stop.clone());
        std::thread::spawn(move || {
            while !stop.load(Ordering::Relaxed) {
                handle.clock().recalibrate();
                std::thread::yield_now();
            }
        })
    };
    let per_producer = 20_000u64;
    let producers: Vec<_> = (0..4u32)
        .map(|producer| {
            let handle = recorder.handle();
            std::thread::spawn(move || {
                let mut brackets = Vec::with_capacity(per_producer as usize);
                let mut i = 0;
                while i < per_producer {
                    if i % 7 == 3 && i + 1 < per_producer {
                        // A reserved place, an event logged while it is held, then the fill.
                        let before = fenced(&handle);
                        let ticket = handle.reserve();
                        let after = fenced(&handle);
                        brackets.push(Bracket {
                            producer,
                            i,
                            before,
                            after,
                        });
                        let before = fenced(&handle);
                        handle.log(access(producer, i + 1), 0, 0);
                        let after = fenced(&handle);
                        brackets.push(Bracket {
                            producer,
                            i: i + 1,
                            before,
                            after,
                        });
                        handle.submit(ticket, access(producer, i), 0, 0);
                        i += 2;
                    } else {
                        let before = fenced(&handle);
                        handle.log_at(access(producer, i), 0, 0, handle.now_ns());
                        let after = fenced(&handle);
                        brackets.push(Bracket {
                            producer,
                            i,
                            before,
                            after,
                        });
                        i += 1;
                    }
                }
                brackets
            })
        })
        .collect();
    let brackets: Vec<Bracket> = producers
        .into_iter()
        .flat_map(|p| p.join().unwrap())
        .collect();
    stop.store(true, Ordering::Relaxed);
    recalibrator.join().unwrap();
    let stats = recorder.finish().unwrap();
    let total = 4 * per_producer;
    assert_eq!(stats.events, total);
    assert!(stats.queue_high_water <= 64, "{stats:?}");

    let events = read_all(&path);
    assert_eq!(events.len() as u64, total);
    let mut stamp = std::collections::HashMap::new();
    let mut next = [0u64; 4];
    let mut previous_t = 0;
    for (n, ev) in events.iter().enumerate() {
        assert_eq!(ev.seq, n as u64, "dense sequence numbers");
        assert!(
            ev.t_ns >= previous_t,
            "seq {} went back in time: {} after {previous_t}",
            ev.seq,
            ev.t_ns
        );
        previous_t = ev.t_ns;
        let (producer, i) = identity(ev).expect("only the producers' accesses");
        assert_eq!(
            i, next[producer as usize],
            "producer {producer} out of order"
        );
        next[producer as usize] += 1;
        stamp.insert((producer, i), ev.t_ns);
    }
    for b in &brackets {
        let t = stamp[&(b.producer, b.i)];
        assert!(
            b.before <= t && t <= b.after,
            "{source:?}: producer {} event {} stamped {t}, outside its call [{}, {}]",
            b.producer,
            b.i,
            b.before,
            b.after
        );
    }
}

#[test]
fn concurrent_producers_with_the_best_clock() {
    concurrent_producers(Clock::new());
}

#[test]
fn concurrent_producers_with_the_monotonic_clock() {
    let clock = Clock::monotonic();
    assert_eq!(clock.source(), ClockSource::Monotonic);
    concurrent_producers(clock);
}

/// Eight producers through a two-slot queue: they stall all the time, and nothing is lost.
#[test]
fn a_tiny_queue_stalls_many_producers_and_loses_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("t.hwrr");
    let recorder = Recorder::create(&path, &TraceHeader::default(), options(2)).unwrap();
    let per_producer = 5_000u64;
    let producers: Vec<_> = (0..8u32)
        .map(|producer| {
            let handle = recorder.handle();
            std::thread::spawn(move || {
                for i in 0..per_producer {
                    handle.log(access(producer, i), 0, 0);
                }
            })
        })
        .collect();
    for p in producers {
        p.join().unwrap();
    }
    let stats = recorder.finish().unwrap();
    assert_eq!(stats.events, 8 * per_producer);
    assert!(stats.stalls > 0, "{stats:?}");
    assert_eq!(stats.queue_high_water, 2);
    let mut seen = std::collections::HashSet::new();
    for ev in read_all(&path) {
        assert!(seen.insert(identity(&ev).unwrap()), "twice: {ev:?}");
    }
    assert_eq!(seen.len() as u64, 8 * per_producer);
}

fn marker_label(ev: &Event) -> Option<&str> {
    match &ev.kind {
        EventKind::Marker(Marker { label, .. }) => Some(label),
        _ => None,
    }
}

/// A place still reserved when the recorder finishes becomes an `hwrr.abandoned` marker ahead of
/// what was logged after it; a place dropped unsubmitted too; filling it afterwards is harmless.
#[test]
fn reserved_places_are_kept_through_finish_and_drop() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("t.hwrr");
    let recorder = Recorder::create(&path, &TraceHeader::default(), options(16)).unwrap();
    let handle: RecorderHandle = recorder.handle();
    let dropped = handle.reserve();
    handle.log(access(0, 0), 0, 0);
    drop(dropped);
    let held = handle.reserve();
    handle.log(access(0, 1), 0, 0);
    handle.log(access(0, 2), 0, 0);
    let stats = recorder.finish().unwrap();
    assert_eq!(stats.events, 5);
    handle.submit(held, access(0, 99), 0, 0);
    handle.log(access(0, 100), 0, 0);
    let events = read_all(&path);
    let described: Vec<String> = events
        .iter()
        .map(|e| match (marker_label(e), identity(e)) {
            (Some(label), _) => label.to_string(),
            (None, Some((_, i))) => i.to_string(),
            _ => format!("{:?}", e.kind),
        })
        .collect();
    assert_eq!(
        described,
        ["hwrr.abandoned", "0", "hwrr.abandoned", "1", "2"],
        "{events:?}"
    );
}

/// A sink that takes the header, then fails every write.
struct FailsAfter(usize);

impl Write for FailsAfter {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        if self.0 < buf.len() {
            return Err(std::io::Error::other("disk full"));
        }
        self.0 -= buf.len();
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// When the trace cannot be written the writer thread stops: producers blocked on the full queue
/// are let go (their events are lost with the trace) and `finish` reports the error.
#[test]
fn a_failing_trace_releases_producers_and_finish_reports_it() {
    let opts = RecorderOptions {
        queue_capacity: 4,
        writer: WriterOptions {
            chunk_events: 8,
            ..WriterOptions::default()
        },
    };
    let writer = TraceWriter::new(
        FailsAfter(4096),
        &TraceHeader::default(),
        opts.writer.clone(),
    )
    .expect("the header fits");
    let recorder = Recorder::start(writer, opts).unwrap();
    let producers: Vec<_> = (0..3u32)
        .map(|producer| {
            let handle = recorder.handle();
            std::thread::spawn(move || {
                for i in 0..50_000 {
                    handle.log(access(producer, i), 0, 0);
                }
            })
        })
        .collect();
    for p in producers {
        p.join().unwrap();
    }
    let err = recorder.finish().expect_err("the sink failed");
    assert!(err.to_string().contains("disk full"), "{err}");
}
