//! The DMA decision log: why each recorded device write did or did not land in the replay
//! guest's memory.
//!
//! A replay that stalls usually stalls on one withheld or misplaced DMA write (a completion whose
//! command id the guest does not know, a buffer the replay did not trust). The counters say how
//! many writes were withheld; this log says which, and why: one JSON object per line, for every
//! recorded `dma_write` and `dma_read` the replay passes, and for the echoed fields it confirms.
//! `hwrr replay --dma-log FILE` writes it; docs/REPLAY.md describes the fields.

use std::fmt;
use std::io::Write;
use std::sync::{Arc, Mutex};

/// A shared sink for the DMA decision log (cheap to clone: every clone writes to the same sink).
#[derive(Clone)]
pub struct DmaLog {
    inner: Arc<Mutex<Sink>>,
}

struct Sink {
    out: Box<dyn Write + Send>,
    /// The first write error; the log stops at it and the caller asks for it with
    /// [`DmaLog::finish`].
    error: Option<std::io::Error>,
}

impl DmaLog {
    /// A log written to `out` (buffer it: the replay writes a line per DMA event).
    pub fn new(out: impl Write + Send + 'static) -> Self {
        DmaLog {
            inner: Arc::new(Mutex::new(Sink {
                out: Box::new(out),
                error: None,
            })),
        }
    }

    /// Appends one JSON object as a line. A failed write ends the log (the replay goes on).
    pub(crate) fn line(&self, value: &serde_json::Value) {
        let Ok(mut sink) = self.inner.lock() else {
            return;
        };
        if sink.error.is_some() {
            return;
        }
        let result = serde_json::to_writer(&mut sink.out, value)
            .map_err(std::io::Error::from)
            .and_then(|()| sink.out.write_all(b"\n"));
        if let Err(e) = result {
            sink.error = Some(e);
        }
    }

    /// Flushes the log and returns the first error it met, if any.
    pub fn finish(&self) -> std::io::Result<()> {
        let Ok(mut sink) = self.inner.lock() else {
            return Err(std::io::Error::other("the DMA log's lock is poisoned"));
        };
        if let Some(e) = sink.error.take() {
            return Err(e);
        }
        sink.out.flush()
    }
}

impl fmt::Debug for DmaLog {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("DmaLog")
    }
}

/// What the replay did with one recorded device write.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum WriteOutcome {
    /// Every byte landed.
    Applied,
    /// Some bytes landed.
    Partial,
    /// No byte landed.
    NotApplied,
}

impl WriteOutcome {
    pub(crate) fn name(self) -> &'static str {
        match self {
            WriteOutcome::Applied => "applied",
            WriteOutcome::Partial => "partial",
            WriteOutcome::NotApplied => "not_applied",
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A writer that fails after `ok` bytes.
    struct Failing {
        ok: usize,
    }

    impl Write for Failing {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            if self.ok == 0 {
                return Err(std::io::Error::other("disk full"));
            }
            let n = buf.len().min(self.ok);
            self.ok -= n;
            Ok(n)
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    #[test]
    fn a_failed_write_is_reported_once_and_ends_the_log() {
        let log = DmaLog::new(Failing { ok: 4 });
        log.line(&serde_json::json!({"seq": 1}));
        log.line(&serde_json::json!({"seq": 2}));
        let err = log.finish().expect_err("the write failed");
        assert!(err.to_string().contains("disk full"), "{err}");
        assert!(log.finish().is_ok(), "the error is handed out once");
    }

    #[test]
    fn lines_are_json_objects() {
        let buf = Arc::new(Mutex::new(Vec::new()));
        struct Shared(Arc<Mutex<Vec<u8>>>);
        impl Write for Shared {
            fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
                self.0
                    .lock()
                    .map_err(|_| std::io::Error::other("poisoned"))?
                    .extend_from_slice(b);
                Ok(b.len())
            }
            fn flush(&mut self) -> std::io::Result<()> {
                Ok(())
            }
        }
        let log = DmaLog::new(Shared(Arc::clone(&buf)));
        log.line(&serde_json::json!({"seq": 7, "kind": "dma_write"}));
        log.clone().line(&serde_json::json!({"seq": 8}));
        log.finish().expect("flushed");
        let text = String::from_utf8(buf.lock().expect("not poisoned").clone()).expect("utf-8");
        let lines: Vec<serde_json::Value> = text
            .lines()
            .map(|l| serde_json::from_str(l).expect("a JSON line"))
            .collect();
        assert_eq!(lines.len(), 2);
        assert_eq!(lines[0]["kind"], "dma_write");
        assert_eq!(lines[1]["seq"], 8);
    }
}
