//! Record mode: pass through to the kernel's VFIO and log what QEMU does with the device.

use std::ffi::{c_int, c_void};
use std::os::fd::RawFd;
use std::sync::Arc;

use crate::config::Config;
use crate::log::Logger;

/// The recording state.
pub struct Recording {
    log: Arc<Logger>,
}

impl Recording {
    /// Starts a recording for `config`.
    pub fn new(_config: &Config, log: Arc<Logger>) -> Recording {
        Recording { log }
    }

    /// An `open` of a VFIO path.
    pub fn open(&mut self, _path: &str, _flags: c_int) -> Option<c_int> {
        None
    }

    /// A `close` of a watched fd.
    pub fn close(&mut self, _fd: RawFd) {}

    /// An ioctl on a watched fd.
    ///
    /// # Safety
    /// The ioctl's contract.
    pub unsafe fn ioctl(&mut self, _fd: RawFd, _request: u64, _arg: *mut c_void) -> Option<c_int> {
        None
    }

    /// A `pread` on a watched fd.
    pub fn pread(&mut self, _fd: RawFd, _buf: &mut [u8], _offset: i64) -> Option<isize> {
        None
    }

    /// A `pwrite` on a watched fd.
    pub fn pwrite(&mut self, _fd: RawFd, _buf: &[u8], _offset: i64) -> Option<isize> {
        None
    }

    /// An `mmap` of a watched fd.
    pub fn note_mmap(&self, fd: RawFd, offset: i64, len: usize) {
        self.log.warn(&format!(
            "fd {fd} region at {offset:#x} ({len} bytes) mmapped: its accesses bypass the recorder (use x-no-mmap=on)"
        ));
    }

    /// Finishes the trace.
    pub fn finish(&mut self) {}
}
