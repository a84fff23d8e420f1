//! The recorder's queue and writer thread.

use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use hwrr_formats::{Event, EventKind, FormatError, TraceHeader, TraceWriter, WriterOptions};

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

/// The queue between producers and the writer thread.
///
/// One lock hands out sequence numbers and timestamps (so timestamps are non-decreasing in sequence
/// order, whichever thread logs) and appends to the batch the writer takes whole. Producers wake the
/// writer only when the batch passes half the capacity; otherwise it wakes on its own tick. An event
/// therefore costs one uncontended lock and a push, not a channel send and a futex wake.
struct Shared {
    queue: Mutex<Queue>,
    /// Signalled when the batch passes half the capacity, or when the recorder finishes.
    work: Condvar,
    /// Signalled when the writer took the batch, for producers waiting on a full queue.
    room: Condvar,
    capacity: usize,
    start: Instant,
    dequeued: AtomicU64,
    high_water: AtomicU64,
    stalls: AtomicU64,
}

struct Queue {
    next_seq: u64,
    last_t_ns: u64,
    batch: Vec<Event>,
    /// Events ever queued.
    enqueued: u64,
    /// Set by [`Recorder::finish`]: later events are dropped.
    closed: bool,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, Queue> {
        self.queue.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// A place in the event stream, reserved when a call starts so that what the device does during
/// the call (DMA, interrupts) is ordered after the call that caused it. Submit it with
/// [`RecorderHandle::submit`]; a ticket dropped unsubmitted becomes an `hwrr.abandoned` marker so the
/// stream has no hole.
pub struct Ticket {
    seq: u64,
    t_ns: u64,
    handle: Option<RecorderHandle>,
}

impl Ticket {
    /// When the place was reserved (nanoseconds since the recorder started).
    pub fn t_ns(&self) -> u64 {
        self.t_ns
    }
}

impl Drop for Ticket {
    fn drop(&mut self) {
        if let Some(h) = self.handle.take() {
            let ev = Event {
                seq: self.seq,
                t_ns: self.t_ns,
                status: 0,
                duration_ns: 0,
                kind: EventKind::Marker(hwrr_formats::Marker {
                    label: "hwrr.abandoned".into(),
                    data: None,
                }),
            };
            let q = h.shared.lock();
            h.push(q, ev);
        }
    }
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

    /// Starts the writer thread on an already created trace writer.
    pub fn start<W: std::io::Write + Send + 'static>(
        mut writer: TraceWriter<W>,
        opts: RecorderOptions,
    ) -> Result<Self, RecorderError> {
        let capacity = opts.queue_capacity.max(1);
        let shared = Arc::new(Shared {
            queue: Mutex::new(Queue {
                next_seq: 0,
                last_t_ns: 0,
                batch: Vec::with_capacity(capacity),
                enqueued: 0,
                closed: false,
            }),
            work: Condvar::new(),
            room: Condvar::new(),
            capacity,
            start: Instant::now(),
            dequeued: AtomicU64::new(0),
            high_water: AtomicU64::new(0),
            stalls: AtomicU64::new(0),
        });
        let tick = opts
            .writer
            .flush_interval
            .map(|d| (d / 2).max(Duration::from_millis(1)))
            .unwrap_or(Duration::from_millis(50))
            // Events wait in the batch at most this long before the writer looks.
            .min(Duration::from_millis(5));
        let worker = shared.clone();
        let thread = std::thread::Builder::new()
            .name("hwrr-writer".into())
            .spawn(move || -> Result<u64, RecorderError> {
                // Calls that started earlier can finish later: events wait here until every
                // earlier sequence number has been written.
                let mut reorder = Reorder::default();
                let mut taken: Vec<Event> = Vec::with_capacity(capacity);
                loop {
                    let closed = {
                        let mut q = worker.lock();
                        // Taking small batches would bounce the lock between cores: wait for
                        // half a queue (producers signal it) or the tick, whichever comes first.
                        if q.batch.len() < worker.capacity.div_ceil(2) && !q.closed {
                            q = worker
                                .work
                                .wait_timeout(q, tick)
                                .unwrap_or_else(|p| p.into_inner())
                                .0;
                        }
                        std::mem::swap(&mut q.batch, &mut taken);
                        q.closed
                    };
                    if !taken.is_empty() {
                        worker.room.notify_all();
                        worker
                            .dequeued
                            .fetch_add(taken.len() as u64, Ordering::Relaxed);
                        for ev in taken.drain(..) {
                            reorder.push(ev, &mut writer)?;
                        }
                    }
                    writer.tick()?;
                    if closed && worker.lock().batch.is_empty() {
                        break;
                    }
                }
                if !reorder.waiting.is_empty() {
                    return Err(RecorderError::Thread(format!(
                        "{} events wait for sequence number {} that never came",
                        reorder.waiting.len(),
                        reorder.next
                    )));
                }
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

    /// Stops accepting events, writes what is queued, the footer and the trailer, and reports.
    /// Events logged through handles after this are dropped silently (the trace is complete).
    pub fn finish(mut self) -> Result<RecorderStats, RecorderError> {
        self.finish_inner()
    }

    fn finish_inner(&mut self) -> Result<RecorderStats, RecorderError> {
        let shared = &self.handle.shared;
        shared.lock().closed = true;
        shared.work.notify_all();
        shared.room.notify_all();
        let bytes = match self.thread.take() {
            Some(t) => t
                .join()
                .map_err(|_| RecorderError::Thread("writer thread panicked".into()))??,
            None => 0,
        };
        Ok(RecorderStats {
            events: shared.dequeued.load(Ordering::Relaxed),
            bytes,
            queue_high_water: shared.high_water.load(Ordering::Relaxed),
            stalls: shared.stalls.load(Ordering::Relaxed),
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

impl RecorderHandle {
    /// Nanoseconds since the recorder started.
    pub fn now_ns(&self) -> u64 {
        self.shared.start.elapsed().as_nanos() as u64
    }

    /// Hands out the next sequence number, stamped `now` (read before the lock was taken, to keep
    /// the clock out of the critical section) or the last stamp, whichever is later.
    fn stamp(q: &mut Queue, now: u64) -> (u64, u64) {
        let t_ns = now.max(q.last_t_ns);
        let seq = q.next_seq;
        q.next_seq += 1;
        q.last_t_ns = t_ns;
        (seq, t_ns)
    }

    /// Reserves the next place in the stream, stamped now.
    pub fn reserve(&self) -> Ticket {
        let now = self.now_ns();
        let (seq, t_ns) = Self::stamp(&mut self.shared.lock(), now);
        Ticket {
            seq,
            t_ns,
            handle: Some(self.clone()),
        }
    }

    /// Fills a reserved place with what the call did.
    pub fn submit(&self, mut ticket: Ticket, kind: EventKind, status: u32, duration_ns: u64) {
        ticket.handle = None;
        let ev = Event {
            seq: ticket.seq,
            t_ns: ticket.t_ns,
            status,
            duration_ns,
            kind,
        };
        self.push(self.shared.lock(), ev);
    }

    /// Logs one event at the next place in the stream, stamped now.
    pub fn log(&self, kind: EventKind, status: u32, duration_ns: u64) {
        self.log_at(kind, status, duration_ns, self.now_ns());
    }

    /// Logs one event at the next place in the stream, stamped `t_ns` (a [`RecorderHandle::now_ns`]
    /// the caller already read; raised to the last stamp handed out, so stamps never decrease).
    pub fn log_at(&self, kind: EventKind, status: u32, duration_ns: u64, t_ns: u64) {
        let mut q = self.shared.lock();
        let (seq, t_ns) = Self::stamp(&mut q, t_ns);
        let ev = Event {
            seq,
            t_ns,
            status,
            duration_ns,
            kind,
        };
        self.push(q, ev);
    }

    /// Queues an event; blocks (and counts a stall) while the queue is full. After
    /// [`Recorder::finish`] events are dropped: the trace is complete.
    fn push(&self, mut q: MutexGuard<'_, Queue>, ev: Event) {
        let shared = &*self.shared;
        if q.batch.len() >= shared.capacity && !q.closed {
            shared.stalls.fetch_add(1, Ordering::Relaxed);
            shared.work.notify_one();
            while q.batch.len() >= shared.capacity && !q.closed {
                q = shared.room.wait(q).unwrap_or_else(|p| p.into_inner());
            }
        }
        if q.closed {
            return;
        }
        q.batch.push(ev);
        q.enqueued += 1;
        let queued = q.batch.len();
        if queued as u64 > shared.high_water.load(Ordering::Relaxed) {
            shared.high_water.store(queued as u64, Ordering::Relaxed);
        }
        // Woken early only when the batch is big enough to be worth it (or could fill up).
        if queued == shared.capacity.div_ceil(2) {
            shared.work.notify_one();
        }
    }

    /// Events logged so far.
    pub fn logged(&self) -> u64 {
        self.shared.lock().enqueued
    }
}

/// Puts events back in sequence order before they reach the trace writer.
#[derive(Default)]
struct Reorder {
    next: u64,
    waiting: std::collections::BTreeMap<u64, Event>,
}

impl Reorder {
    fn push<W: std::io::Write>(
        &mut self,
        ev: Event,
        writer: &mut TraceWriter<W>,
    ) -> Result<(), RecorderError> {
        if ev.seq != self.next {
            self.waiting.insert(ev.seq, ev);
            return Ok(());
        }
        writer.append(&ev)?;
        self.next += 1;
        while let Some(ev) = self.waiting.remove(&self.next) {
            writer.append(&ev)?;
            self.next += 1;
        }
        Ok(())
    }
}
