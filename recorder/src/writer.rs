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
    /// Sequence numbering and enqueueing happen under one lock so the queue order is the sequence
    /// order, whichever thread logs.
    sequencer: Mutex<Sequencer>,
    start: Instant,
    enqueued: AtomicU64,
    dequeued: Arc<AtomicU64>,
    high_water: AtomicU64,
    stalls: AtomicU64,
}

struct Sequencer {
    next_seq: u64,
    last_t_ns: u64,
    sender: Option<SyncSender<Event>>,
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
                loop {
                    match rx.recv_timeout(tick) {
                        Ok(ev) => {
                            dq.fetch_add(1, Ordering::Relaxed);
                            writer.append(&ev)?;
                            // Drain what is already queued before looking at the clock again.
                            while let Ok(ev) = rx.try_recv() {
                                dq.fetch_add(1, Ordering::Relaxed);
                                writer.append(&ev)?;
                            }
                            writer.tick()?;
                        }
                        Err(RecvTimeoutError::Timeout) => writer.tick()?,
                        Err(RecvTimeoutError::Disconnected) => break,
                    }
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
                        sender: Some(tx),
                    }),
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
            .sequencer
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .sender
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

    /// Logs one event that completed now, with its status and duration. Blocks (and counts a
    /// stall) while the queue is full.
    pub fn log(&self, kind: EventKind, status: u32, duration_ns: u64) {
        let shared = &*self.shared;
        let mut seq = shared.sequencer.lock().unwrap_or_else(|p| p.into_inner());
        // Timestamps are taken under the lock so they are non-decreasing in sequence order.
        let t_ns = self.now_ns().max(seq.last_t_ns);
        let Some(sender) = seq.sender.as_ref() else {
            return;
        };
        let ev = Event {
            seq: seq.next_seq,
            t_ns,
            status,
            duration_ns,
            kind,
        };
        match sender.try_send(ev) {
            Ok(()) => {}
            Err(TrySendError::Full(ev)) => {
                shared.stalls.fetch_add(1, Ordering::Relaxed);
                if sender.send(ev).is_err() {
                    return;
                }
            }
            Err(TrySendError::Disconnected(_)) => return,
        }
        seq.next_seq += 1;
        seq.last_t_ns = t_ns;
        let queued = shared.enqueued.fetch_add(1, Ordering::Relaxed) + 1
            - shared.dequeued.load(Ordering::Relaxed);
        shared.high_water.fetch_max(queued, Ordering::Relaxed);
    }

    /// Events logged so far.
    pub fn logged(&self) -> u64 {
        self.shared.enqueued.load(Ordering::Relaxed)
    }
}
