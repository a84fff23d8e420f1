//! The recorder's queue and writer thread.

use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use hwrr_formats::{Event, EventKind, FormatError, TraceHeader, TraceWriter, WriterOptions};

use crate::clock::{Clock, ClockSource, RECALIBRATE_EVERY};
use crate::entry::{Entry, Role};
use crate::queue::{Consumer, EventQueue, Pushed};

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
    /// Events the queue holds before producers block (and count a stall); rounded up to a power
    /// of two (at least 2). Each takes 64 bytes.
    pub queue_capacity: usize,
    /// Trace writer settings (chunk size, flush interval, compression).
    pub writer: WriterOptions,
}

impl Default for RecorderOptions {
    /// 256 Ki queued events (16 MiB): at 20 M events/s that is 13 ms, longer than a loaded host
    /// keeps the writer thread off the CPU (the bench saw 9 ms with 3 runnable threads per core).
    fn default() -> Self {
        RecorderOptions {
            queue_capacity: 1 << 18,
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
    /// CPU time the writer thread used (numbering, encoding, compressing, writing), in ns: what
    /// recording cost besides the access path.
    pub writer_cpu_ns: u64,
}

/// CPU time the calling thread has used, in ns (0 if the kernel cannot say).
pub(crate) fn thread_cpu_ns() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `ts` is a live timespec the call writes into; the clock id is a constant.
    let r = unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut ts) };
    if r != 0 {
        return 0;
    }
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}

/// What producers and the writer thread share.
///
/// A producer reads the clock, then takes a place in the lock-free queue (one `fetch_add`) and
/// fills it: no lock, no allocation for register accesses, interrupts and DMA map/unmap. The
/// writer thread numbers events in queue order and raises each stamp to the previous one, so
/// stamps are non-decreasing along the stream whichever thread logged. A stamp is read before its
/// place is taken, so raising it never moves it past the moment the place was handed out.
struct Shared {
    queue: EventQueue,
    clock: Clock,
    /// Events written to the trace (for the stats).
    written: AtomicU64,
    /// Set by [`Recorder::finish`]: the writer closes the queue, drains it and finishes the trace.
    finishing: AtomicBool,
}

/// A place in the event stream, reserved when a call starts so that what the device does during
/// the call (DMA, interrupts) is ordered after the call that caused it. Submit it with
/// [`RecorderHandle::submit`]; a ticket dropped unsubmitted becomes an `hwrr.abandoned` marker so the
/// stream has no hole.
pub struct Ticket<'a> {
    /// The placeholder's queue position (`None` when reserved after the recorder finished).
    position: Option<u64>,
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
        if let (Some(h), Some(position)) = (self.handle.take(), self.position) {
            h.push(Entry::completion(position, 0, 0, abandoned()));
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
    /// The writer thread; it returns the trace's size in bytes and the CPU time it used.
    thread: Option<JoinHandle<Result<(u64, u64), RecorderError>>>,
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
            .spawn(move || -> Result<(u64, u64), RecorderError> {
                // Whatever happens to this thread (an error, a panic), producers waiting on a full
                // queue are let go.
                let _gone = ConsumerGone(&worker.queue);
                worker.queue.set_consumer(std::thread::current());
                write_loop(&worker, &mut writer, tick)?;
                let summary = writer.finish()?;
                Ok((summary.bytes, thread_cpu_ns()))
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
        let (bytes, writer_cpu_ns) = match self.thread.take() {
            Some(t) => {
                t.thread().unpark();
                t.join()
                    .map_err(|_| RecorderError::Thread("writer thread panicked".into()))??
            }
            None => (0, 0),
        };
        Ok(RecorderStats {
            events: shared.written.load(Ordering::Relaxed),
            bytes,
            queue_high_water: shared.queue.high_water(),
            stalls: shared.queue.stalls(),
            writer_cpu_ns,
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
    let mut sequencer = Sequencer::default();
    let mut last_calibration = Instant::now();
    let mut end: Option<u64> = None;
    loop {
        consumer.sample_depth(queue);
        let mut taken = 0u32;
        loop {
            let position = consumer.taken();
            let Some(entry) = consumer.pop(queue) else {
                break;
            };
            sequencer.push(position, entry, writer)?;
            taken = taken.wrapping_add(1);
            if taken % 16384 == 0 {
                consumer.sample_depth(queue);
                shared.written.store(sequencer.written, Ordering::Relaxed);
                if last_calibration.elapsed() >= RECALIBRATE_EVERY {
                    shared.clock.recalibrate();
                    last_calibration = Instant::now();
                }
            }
        }
        consumer.release(queue);
        shared.written.store(sequencer.written, Ordering::Relaxed);
        if let Some(end) = end {
            if consumer.taken() >= end {
                break;
            }
            // A producer took a place before the close and is still filling it.
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
    // Places reserved and never submitted before the close become markers.
    sequencer.abandon_open(writer)?;
    shared.written.store(sequencer.written, Ordering::Relaxed);
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

    /// Queues an entry; returns its queue position, or `None` after the close (the entry is
    /// dropped: the trace is complete). Blocks, and counts a stall, while the queue is full.
    #[inline(always)]
    fn push(&self, entry: Entry) -> Option<u64> {
        let queue = &self.shared.queue;
        let position = queue.claim()?;
        match queue.fill(position, entry) {
            Pushed::Queued => Some(position),
            // The writer failed (`finish` reports it) and is gone.
            Pushed::Closed => None,
        }
    }

    /// Reserves the next place in the stream, stamped now.
    #[inline]
    pub fn reserve(&self) -> Ticket<'_> {
        // The stamp before the place: see `Shared`.
        let t_ns = self.now_ns();
        Ticket {
            position: self.push(Entry::placeholder(t_ns)),
            t_ns,
            handle: Some(self),
        }
    }

    /// Fills a reserved place with what the call did.
    #[inline]
    pub fn submit(&self, mut ticket: Ticket<'_>, kind: EventKind, status: u32, duration_ns: u64) {
        ticket.handle = None;
        if let Some(position) = ticket.position {
            self.push(Entry::completion(position, status, duration_ns, kind));
        }
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
        self.push(Entry::event(t_ns, status, duration_ns, kind));
    }

    /// Entries queued so far (a reserved place counts once when reserved and once when
    /// submitted).
    pub fn logged(&self) -> u64 {
        self.shared.queue.claimed()
    }
}

/// Numbers entries in queue order and writes them as events, holding what follows a placeholder
/// until its completion arrives; raises each stamp to the one before it.
#[derive(Default)]
struct Sequencer {
    /// The sequence number of the next event written (= of `held[0]`).
    next_write: u64,
    /// Events numbered and not yet written because a placeholder before them is still open.
    held: std::collections::VecDeque<Held>,
    /// Open placeholders as (queue position, sequence number): one per call in progress, so a
    /// handful at most.
    open: Vec<(u64, u64)>,
    last_t_ns: u64,
    written: u64,
}

enum Held {
    Ready(Event),
    Open { t_ns: u64 },
}

impl Sequencer {
    #[inline]
    fn push<W: std::io::Write>(
        &mut self,
        position: u64,
        entry: Entry,
        writer: &mut TraceWriter<W>,
    ) -> Result<(), RecorderError> {
        match entry.role() {
            Role::Event => {
                let seq = self.next_write + self.held.len() as u64;
                let t_ns = entry.t_ns();
                let event = entry.into_event(seq, t_ns);
                if self.held.is_empty() {
                    self.write(event, writer)?;
                } else {
                    self.held.push_back(Held::Ready(event));
                }
            }
            Role::Placeholder => {
                let seq = self.next_write + self.held.len() as u64;
                self.open.push((position, seq));
                self.held.push_back(Held::Open { t_ns: entry.t_ns() });
            }
            Role::Completes(placeholder) => {
                // Producers queue a completion only after its placeholder, once: it is open.
                let found = self.open.iter().position(|(p, _)| *p == placeholder);
                let Some((_, seq)) = found.map(|i| self.open.swap_remove(i)) else {
                    return Err(RecorderError::Thread(format!(
                        "a completion for queue position {placeholder}, which holds no open place"
                    )));
                };
                let index = (seq - self.next_write) as usize;
                match self.held.get(index) {
                    // The oldest place: write it straight away (the common case: nothing else
                    // was logged while the call ran), then whatever waited behind it.
                    Some(&Held::Open { t_ns }) if index == 0 => {
                        self.held.pop_front();
                        self.write(entry.into_event(seq, t_ns), writer)?;
                        self.write_ready(writer)?;
                    }
                    Some(&Held::Open { t_ns }) => {
                        self.held[index] = Held::Ready(entry.into_event(seq, t_ns));
                    }
                    _ => {}
                }
            }
        }
        Ok(())
    }

    /// Writes held events from the front up to the first open placeholder.
    fn write_ready<W: std::io::Write>(
        &mut self,
        writer: &mut TraceWriter<W>,
    ) -> Result<(), RecorderError> {
        while let Some(Held::Ready(_)) = self.held.front() {
            if let Some(Held::Ready(event)) = self.held.pop_front() {
                self.write(event, writer)?;
            }
        }
        Ok(())
    }

    #[inline]
    fn write<W: std::io::Write>(
        &mut self,
        mut event: Event,
        writer: &mut TraceWriter<W>,
    ) -> Result<(), RecorderError> {
        event.t_ns = event.t_ns.max(self.last_t_ns);
        writer.append(&event)?;
        self.last_t_ns = event.t_ns;
        self.next_write += 1;
        self.written += 1;
        Ok(())
    }

    /// Writes everything held, an `hwrr.abandoned` marker for each place never filled.
    fn abandon_open<W: std::io::Write>(
        &mut self,
        writer: &mut TraceWriter<W>,
    ) -> Result<(), RecorderError> {
        self.open.clear();
        while let Some(held) = self.held.pop_front() {
            let event = match held {
                Held::Ready(event) => event,
                Held::Open { t_ns } => Event {
                    seq: self.next_write,
                    t_ns,
                    status: 0,
                    duration_ns: 0,
                    kind: abandoned(),
                },
            };
            self.write(event, writer)?;
        }
        Ok(())
    }
}
