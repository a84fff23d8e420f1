//! The recorder's queue and writer thread.

use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{self, RecvTimeoutError, SyncSender, TrySendError};
use std::sync::{Arc, Mutex};
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

struct Shared {
    /// Sequence numbers and timestamps are handed out under one lock, so timestamps are
    /// non-decreasing in sequence order, whichever thread logs.
    sequencer: Mutex<Sequencer>,
    sender: Mutex<Option<SyncSender<Event>>>,
    start: Instant,
    enqueued: AtomicU64,
    dequeued: Arc<AtomicU64>,
    high_water: AtomicU64,
    stalls: AtomicU64,
}

struct Sequencer {
    next_seq: u64,
    last_t_ns: u64,
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

impl Drop for Ticket {
    fn drop(&mut self) {
        if let Some(h) = self.handle.take() {
            h.send(Event {
                seq: self.seq,
                t_ns: self.t_ns,
                status: 0,
                duration_ns: 0,
                kind: EventKind::Marker(hwrr_formats::Marker {
                    label: "hwrr.abandoned".into(),
                    data: None,
                }),
            });
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
        let (tx, rx) = mpsc::sync_channel::<Event>(opts.queue_capacity.max(1));
        let dequeued = Arc::new(AtomicU64::new(0));
        let dq = dequeued.clone();
        let tick = opts
            .writer
            .flush_interval
            .map(|d| (d / 2).max(Duration::from_millis(1)))
            .unwrap_or(Duration::from_millis(50));
        let thread = std::thread::Builder::new()
            .name("hwrr-writer".into())
            .spawn(move || -> Result<u64, RecorderError> {
                // Calls that started earlier can finish later: events wait here until every
                // earlier sequence number has been written.
                let mut reorder = Reorder::default();
                loop {
                    match rx.recv_timeout(tick) {
                        Ok(ev) => {
                            dq.fetch_add(1, Ordering::SeqCst);
                            reorder.push(ev, &mut writer)?;
                            // Drain what is already queued before looking at the clock again.
                            while let Ok(ev) = rx.try_recv() {
                                dq.fetch_add(1, Ordering::SeqCst);
                                reorder.push(ev, &mut writer)?;
                            }
                            writer.tick()?;
                        }
                        Err(RecvTimeoutError::Timeout) => writer.tick()?,
                        Err(RecvTimeoutError::Disconnected) => break,
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
            handle: RecorderHandle {
                shared: Arc::new(Shared {
                    sequencer: Mutex::new(Sequencer {
                        next_seq: 0,
                        last_t_ns: 0,
                    }),
                    sender: Mutex::new(Some(tx)),
                    start: Instant::now(),
                    enqueued: AtomicU64::new(0),
                    dequeued,
                    high_water: AtomicU64::new(0),
                    stalls: AtomicU64::new(0),
                }),
            },
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
        shared
            .sender
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .take();
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

    /// Reserves the next place in the stream, stamped now.
    pub fn reserve(&self) -> Ticket {
        let mut seq = self
            .shared
            .sequencer
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        let t_ns = self.now_ns().max(seq.last_t_ns);
        let ticket = Ticket {
            seq: seq.next_seq,
            t_ns,
            handle: Some(self.clone()),
        };
        seq.next_seq += 1;
        seq.last_t_ns = t_ns;
        ticket
    }

    /// Fills a reserved place with what the call did.
    pub fn submit(&self, mut ticket: Ticket, kind: EventKind, status: u32, duration_ns: u64) {
        ticket.handle = None;
        self.send(Event {
            seq: ticket.seq,
            t_ns: ticket.t_ns,
            status,
            duration_ns,
            kind,
        });
    }

    /// Logs one event at the next place in the stream, stamped now.
    pub fn log(&self, kind: EventKind, status: u32, duration_ns: u64) {
        let ticket = self.reserve();
        self.submit(ticket, kind, status, duration_ns);
    }

    /// Queues an event; blocks (and counts a stall) while the queue is full. After
    /// [`Recorder::finish`] events are dropped: the trace is complete.
    fn send(&self, ev: Event) {
        let shared = &*self.shared;
        let Some(sender) = shared
            .sender
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
        else {
            return;
        };
        // Counted before it is sent, so the writer's count of received events never passes it.
        let enqueued = shared.enqueued.fetch_add(1, Ordering::SeqCst) + 1;
        let sent = match sender.try_send(ev) {
            Ok(()) => true,
            Err(TrySendError::Full(ev)) => {
                shared.stalls.fetch_add(1, Ordering::Relaxed);
                sender.send(ev).is_ok()
            }
            Err(TrySendError::Disconnected(_)) => false,
        };
        if !sent {
            shared.enqueued.fetch_sub(1, Ordering::SeqCst);
            return;
        }
        let queued = enqueued.saturating_sub(shared.dequeued.load(Ordering::SeqCst));
        shared.high_water.fetch_max(queued, Ordering::Relaxed);
    }

    /// Events logged so far.
    pub fn logged(&self) -> u64 {
        self.shared.enqueued.load(Ordering::Relaxed)
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
