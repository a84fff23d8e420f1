//! The recorder's queue and writer thread.

use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use hwrr_formats::{Event, EventKind, FormatError, TraceHeader, TraceWriter, WriterOptions};

use crate::clock::{Clock, ClockSource, RECALIBRATE_EVERY};
use crate::queue::{Consumer, EventQueue};

/// Errors of the recorder.
#[derive(Debug, thiserror::Error)]
pub enum RecorderError {
    /// The trace could not be written.
    #[error("trace writer failed: {0}")]
    Format(#[from] FormatError),
    /// The writer thread could not be started or died.
    #[error("recorder writer thread: {0}")]
    Thread(String),
}

/// How the recorder queues and writes.
#[derive(Clone, Debug)]
pub struct RecorderOptions {
    /// Events the queue holds before producers block (and count a stall).
    pub queue_capacity: usize,
    /// Trace writer settings (chunk size, flush interval, compression).
    pub writer: WriterOptions,
}

impl Default for RecorderOptions {
    fn default() -> Self {
        RecorderOptions {
            queue_capacity: 1 << 16,
            writer: WriterOptions {
                flush_interval: Some(Duration::from_millis(100)),
                ..WriterOptions::default()
            },
        }
    }
}

/// What the recorder did, reported at the end.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct RecorderStats {
    /// Events written.
    pub events: u64,
    /// Bytes of the finished trace file.
    pub bytes: u64,
    /// The most events that were ever waiting in the queue.
    pub queue_high_water: u64,
    /// How many times a producer found the queue full and had to wait.
    pub stalls: u64,
}

/// What producers and the writer thread share.
///
/// Producers take a stamp from the clock, a slot in the lock-free queue and a sequence number (two
/// `fetch_add`s, no lock); the writer thread puts events back in sequence order and raises each
/// stamp to the previous one, so stamps are non-decreasing along the stream whichever thread
/// logged. A stamp is read before its sequence number is taken, so raising it never moves it past
/// the moment its sequence number was handed out.
struct Shared {
    queue: EventQueue,
    clock: Clock,
    /// The next sequence number; on its own cache line (producers on every core write it).
    next_seq: SeqCounter,
    /// Events written to the trace (for the stats).
    written: AtomicU64,
    /// Set by [`Recorder::finish`]: the writer closes the queue, drains it and finishes the trace.
    finishing: AtomicBool,
}

#[repr(align(128))]
struct SeqCounter(AtomicU64);

/// A place in the event stream, reserved when a call starts so that what the device does during
/// the call (DMA, interrupts) is ordered after the call that caused it. Submit it with
/// [`RecorderHandle::submit`]; a ticket dropped unsubmitted becomes an `hwrr.abandoned` marker so the
/// stream has no hole.
pub struct Ticket<'a> {
    seq: u64,
    t_ns: u64,
    handle: Option<&'a RecorderHandle>,
}

impl Ticket<'_> {
    /// When the place was reserved (nanoseconds since the recorder started). The trace may carry a
    /// later stamp: each stamp is raised to the one before it in sequence order.
    pub fn t_ns(&self) -> u64 {
        self.t_ns
    }
}

impl Drop for Ticket<'_> {
    fn drop(&mut self) {
        if let Some(h) = self.handle.take() {
            h.fill(self.seq, self.t_ns, abandoned(), 0, 0);
        }
    }
}

fn abandoned() -> EventKind {
    EventKind::Marker(hwrr_formats::Marker {
        label: "hwrr.abandoned".into(),
        data: None,
    })
}

/// A cloneable handle that logs events into the recorder's queue.
#[derive(Clone)]
pub struct RecorderHandle {
    shared: Arc<Shared>,
}

/// Owns the writer thread. Dropping it without [`Recorder::finish`] still finishes the trace.
pub struct Recorder {
    handle: RecorderHandle,
    thread: Option<JoinHandle<Result<u64, RecorderError>>>,
}

impl Recorder {
    /// Creates `path` with `header` and starts the writer thread.
    pub fn create(
        path: &Path,
        header: &TraceHeader,
        opts: RecorderOptions,
    ) -> Result<Self, RecorderError> {
        let writer = TraceWriter::create(path, header, opts.writer.clone())?;
        Self::start(writer, opts)
    }

    /// Starts the writer thread on an already created trace writer, with the best clock this
    /// machine allows ([`Clock::new`]).
    pub fn start<W: std::io::Write + Send + 'static>(
        writer: TraceWriter<W>,
        opts: RecorderOptions,
    ) -> Result<Self, RecorderError> {
        Self::start_with_clock(writer, opts, Clock::new())
    }

    /// Starts the writer thread on an already created trace writer, stamping events with `clock`.
    pub fn start_with_clock<W: std::io::Write + Send + 'static>(
        mut writer: TraceWriter<W>,
        opts: RecorderOptions,
        clock: Clock,
    ) -> Result<Self, RecorderError> {
        let shared = Arc::new(Shared {
            queue: EventQueue::new(opts.queue_capacity),
            clock,
            next_seq: SeqCounter(AtomicU64::new(0)),
            written: AtomicU64::new(0),
            finishing: AtomicBool::new(false),
        });
        let tick = opts
            .writer
            .flush_interval
            .map(|d| (d / 2).max(Duration::from_millis(1)))
            .unwrap_or(Duration::from_millis(50))
            // Events wait in the queue at most this long before the writer looks.
            .min(Duration::from_millis(5));
        let worker = shared.clone();
        let thread = std::thread::Builder::new()
            .name("hwrr-writer".into())
            .spawn(move || -> Result<u64, RecorderError> {
                // Whatever happens to this thread (an error, a panic), producers waiting on a full
                // queue are let go.
                let _gone = ConsumerGone(&worker.queue);
                worker.queue.set_consumer(std::thread::current());
                write_loop(&worker, &mut writer, tick)?;
                let summary = writer.finish()?;
                Ok(summary.bytes)
            })
            .map_err(|e| RecorderError::Thread(e.to_string()))?;
        Ok(Recorder {
            handle: RecorderHandle { shared },
            thread: Some(thread),
        })
    }

    /// A handle for producers.
    pub fn handle(&self) -> RecorderHandle {
        self.handle.clone()
    }

    /// Where the recorder's timestamps come from.
    pub fn clock_source(&self) -> ClockSource {
        self.handle.shared.clock.source()
    }

    /// Stops accepting events, writes what is queued, the footer and the trailer, and reports.
    /// Events logged through handles after this are dropped silently (the trace is complete);
    /// places reserved and not yet submitted become `hwrr.abandoned` markers.
    pub fn finish(mut self) -> Result<RecorderStats, RecorderError> {
        self.finish_inner()
    }

    fn finish_inner(&mut self) -> Result<RecorderStats, RecorderError> {
        let shared = &self.handle.shared;
        shared.finishing.store(true, Ordering::SeqCst);
        let bytes = match self.thread.take() {
            Some(t) => {
                t.thread().unpark();
                t.join()
                    .map_err(|_| RecorderError::Thread("writer thread panicked".into()))??
            }
            None => 0,
        };
        Ok(RecorderStats {
            events: shared.written.load(Ordering::Relaxed),
            bytes,
            queue_high_water: shared.queue.high_water(),
            stalls: shared.queue.stalls(),
        })
    }
}

impl Drop for Recorder {
    fn drop(&mut self) {
        if self.thread.is_some() {
            if let Err(e) = self.finish_inner() {
                tracing::error!("recorder: finishing the trace failed: {e}");
            }
        }
    }
}

/// Lets producers go when the writer thread ends, however it ends.
struct ConsumerGone<'a>(&'a EventQueue);

impl Drop for ConsumerGone<'_> {
    fn drop(&mut self) {
        self.0.consumer_gone();
    }
}

/// The writer thread: drains the queue into the trace writer until the recorder finishes, then
/// drains what was queued before the close.
fn write_loop<W: std::io::Write>(
    shared: &Shared,
    writer: &mut TraceWriter<W>,
    tick: Duration,
) -> Result<(), RecorderError> {
    let queue = &shared.queue;
    let mut consumer = Consumer::new();
    let mut reorder = Reorder::default();
    let mut last_calibration = Instant::now();
    let mut end: Option<u64> = None;
    loop {
        consumer.sample_depth(queue);
        let mut taken = 0u32;
        while let Some(ev) = consumer.pop(queue) {
            reorder.push(ev, writer)?;
            taken = taken.wrapping_add(1);
            if taken % 16384 == 0 {
                consumer.sample_depth(queue);
                shared.written.store(reorder.written, Ordering::Relaxed);
                if last_calibration.elapsed() >= RECALIBRATE_EVERY {
                    shared.clock.recalibrate();
                    last_calibration = Instant::now();
                }
            }
        }
        consumer.release(queue);
        shared.written.store(reorder.written, Ordering::Relaxed);
        if let Some(end) = end {
            if consumer.taken() >= end {
                break;
            }
            // A producer claimed a place before the close and is still filling it.
            std::thread::yield_now();
            continue;
        }
        writer.tick()?;
        if last_calibration.elapsed() >= RECALIBRATE_EVERY {
            shared.clock.recalibrate();
            last_calibration = Instant::now();
        }
        if shared.finishing.load(Ordering::SeqCst) {
            end = Some(queue.close());
            continue;
        }
        consumer.wait(queue, tick);
    }
    // Places reserved and never submitted before the close leave holes: they become markers, so
    // the stream stays dense.
    reorder.fill_holes(writer)?;
    shared.written.store(reorder.written, Ordering::Relaxed);
    Ok(())
}

impl RecorderHandle {
    /// Nanoseconds since the recorder started, from its clock (see [`Clock`]).
    #[inline]
    pub fn now_ns(&self) -> u64 {
        self.shared.clock.now_ns()
    }

    /// The recorder's clock.
    pub fn clock(&self) -> &Clock {
        &self.shared.clock
    }

    #[inline]
    fn next_seq(&self) -> u64 {
        self.shared.next_seq.0.fetch_add(1, Ordering::Relaxed)
    }

    /// Queues an event for an already taken sequence number. Dropped after the close.
    #[inline]
    fn fill(&self, seq: u64, t_ns: u64, kind: EventKind, status: u32, duration_ns: u64) {
        if let Some(position) = self.shared.queue.claim() {
            self.put(position, seq, t_ns, kind, status, duration_ns);
        }
    }

    #[inline]
    fn put(
        &self,
        position: u64,
        seq: u64,
        t_ns: u64,
        kind: EventKind,
        status: u32,
        duration_ns: u64,
    ) {
        let ev = Event {
            seq,
            t_ns,
            status,
            duration_ns,
            kind,
        };
        // After the close (or when the writer failed, which `finish` reports) the event goes.
        let _ = self.shared.queue.fill(position, ev);
    }

    /// Reserves the next place in the stream, stamped now.
    #[inline]
    pub fn reserve(&self) -> Ticket<'_> {
        // The stamp before the sequence number: see `Shared`.
        let t_ns = self.now_ns();
        let seq = self.next_seq();
        Ticket {
            seq,
            t_ns,
            handle: Some(self),
        }
    }

    /// Fills a reserved place with what the call did.
    #[inline]
    pub fn submit(&self, mut ticket: Ticket<'_>, kind: EventKind, status: u32, duration_ns: u64) {
        ticket.handle = None;
        self.fill(ticket.seq, ticket.t_ns, kind, status, duration_ns);
    }

    /// Logs one event at the next place in the stream, stamped now.
    #[inline]
    pub fn log(&self, kind: EventKind, status: u32, duration_ns: u64) {
        self.log_at(kind, status, duration_ns, self.now_ns());
    }

    /// Logs one event at the next place in the stream, stamped `t_ns` (a [`RecorderHandle::now_ns`]
    /// the caller already read; the trace raises it to the previous stamp in sequence order, so
    /// stamps never decrease). Blocks, and counts a stall, while the queue is full.
    #[inline]
    pub fn log_at(&self, kind: EventKind, status: u32, duration_ns: u64, t_ns: u64) {
        // The queue slot before the sequence number: after the close no number is taken, so the
        // close leaves no hole.
        if let Some(position) = self.shared.queue.claim() {
            let seq = self.next_seq();
            self.put(position, seq, t_ns, kind, status, duration_ns);
        }
    }

    /// Events logged so far (places taken in the queue).
    pub fn logged(&self) -> u64 {
        self.shared.queue.claimed()
    }
}

/// Puts events back in sequence order before they reach the trace writer, and raises each stamp
/// to the one before it.
#[derive(Default)]
struct Reorder {
    next: u64,
    last_t_ns: u64,
    written: u64,
    waiting: std::collections::BTreeMap<u64, Event>,
}

impl Reorder {
    #[inline]
    fn push<W: std::io::Write>(
        &mut self,
        ev: Event,
        writer: &mut TraceWriter<W>,
    ) -> Result<(), RecorderError> {
        if ev.seq != self.next {
            self.waiting.insert(ev.seq, ev);
            return Ok(());
        }
        self.write(ev, writer)?;
        while let Some(ev) = self.waiting.remove(&self.next) {
            self.write(ev, writer)?;
        }
        Ok(())
    }

    #[inline]
    fn write<W: std::io::Write>(
        &mut self,
        mut ev: Event,
        writer: &mut TraceWriter<W>,
    ) -> Result<(), RecorderError> {
        ev.t_ns = ev.t_ns.max(self.last_t_ns);
        writer.append(&ev)?;
        self.last_t_ns = ev.t_ns;
        self.next += 1;
        self.written += 1;
        Ok(())
    }

    /// Writes what waits behind missing sequence numbers, a marker in each hole.
    fn fill_holes<W: std::io::Write>(
        &mut self,
        writer: &mut TraceWriter<W>,
    ) -> Result<(), RecorderError> {
        while let Some((&seq, _)) = self.waiting.first_key_value() {
            while self.next < seq {
                let hole = Event {
                    seq: self.next,
                    t_ns: self.last_t_ns,
                    status: 0,
                    duration_ns: 0,
                    kind: abandoned(),
                };
                self.write(hole, writer)?;
            }
            if let Some(ev) = self.waiting.remove(&seq) {
                self.write(ev, writer)?;
            }
        }
        Ok(())
    }
}
