//! `HWRR_LOG`: what the shim tells the user. Warnings always reach stderr; details only when asked.

use std::fs::File;
use std::io::Write;
use std::sync::Mutex;

use crate::config::LogTarget;

/// A line-oriented logger that never fails the caller.
#[derive(Debug)]
pub struct Logger {
    verbose: bool,
    file: Option<Mutex<File>>,
}

impl Logger {
    /// A logger for `target`; a log file that cannot be opened falls back to stderr.
    pub fn new(target: &LogTarget) -> Logger {
        match target {
            LogTarget::Quiet => Logger {
                verbose: false,
                file: None,
            },
            LogTarget::Stderr => Logger {
                verbose: true,
                file: None,
            },
            LogTarget::File(path) => {
                let file = std::fs::OpenOptions::new()
                    .create(true)
                    .append(true)
                    .open(path);
                if let Err(e) = &file {
                    eprintln!("hwrr-vfio: cannot open HWRR_LOG={}: {e}", path.display());
                }
                Logger {
                    verbose: true,
                    file: file.ok().map(Mutex::new),
                }
            }
        }
    }

    /// Whether details are logged.
    pub fn verbose(&self) -> bool {
        self.verbose
    }

    fn emit(&self, line: &str) {
        if let Some(f) = &self.file {
            let mut f = f.lock().unwrap_or_else(|p| p.into_inner());
            let _ = writeln!(f, "hwrr-vfio: {line}");
        } else {
            let _ = writeln!(std::io::stderr(), "hwrr-vfio: {line}");
        }
    }

    /// A detail (only with `HWRR_LOG`).
    pub fn debug(&self, line: impl FnOnce() -> String) {
        if self.verbose {
            self.emit(&line());
        }
    }

    /// A warning: always shown, on stderr and in the log file.
    pub fn warn(&self, line: &str) {
        if self.file.is_some() {
            self.emit(line);
        }
        let _ = writeln!(std::io::stderr(), "hwrr-vfio: {line}");
    }
}
