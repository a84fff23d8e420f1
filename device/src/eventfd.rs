//! Minimal eventfd helpers: create, signal, drain.

use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};

/// Creates a non-blocking, close-on-exec eventfd.
pub fn create() -> io::Result<OwnedFd> {
    // SAFETY: eventfd takes no pointers; a negative return is checked before the fd is owned.
    let fd = unsafe { libc::eventfd(0, libc::EFD_CLOEXEC | libc::EFD_NONBLOCK) };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: `fd` is a fresh descriptor that nothing else owns.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// Adds 1 to the eventfd's counter (one interrupt).
pub fn signal(fd: &impl AsRawFd) -> io::Result<()> {
    let one: u64 = 1;
    // SAFETY: writes 8 bytes from a live u64 to a descriptor the caller keeps open.
    let n = unsafe { libc::write(fd.as_raw_fd(), (&one as *const u64).cast(), 8) };
    if n == 8 {
        Ok(())
    } else if n < 0 {
        let e = io::Error::last_os_error();
        // A full counter (EAGAIN on a non-blocking eventfd) still means "signalled".
        if e.raw_os_error() == Some(libc::EAGAIN) {
            Ok(())
        } else {
            Err(e)
        }
    } else {
        Err(io::Error::new(
            io::ErrorKind::WriteZero,
            "short eventfd write",
        ))
    }
}

/// Reads and resets the counter: how many signals arrived since the last drain (0 if none, for a
/// non-blocking eventfd).
pub fn drain(fd: &impl AsRawFd) -> io::Result<u64> {
    let mut v: u64 = 0;
    // SAFETY: reads 8 bytes into a live u64.
    let n = unsafe { libc::read(fd.as_raw_fd(), (&mut v as *mut u64).cast(), 8) };
    if n == 8 {
        Ok(v)
    } else if n < 0 {
        let e = io::Error::last_os_error();
        if e.raw_os_error() == Some(libc::EAGAIN) {
            Ok(0)
        } else {
            Err(e)
        }
    } else {
        Err(io::Error::new(
            io::ErrorKind::UnexpectedEof,
            "short eventfd read",
        ))
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn signal_and_drain() {
        let fd = super::create().unwrap();
        assert_eq!(super::drain(&fd).unwrap(), 0);
        super::signal(&fd).unwrap();
        super::signal(&fd).unwrap();
        assert_eq!(super::drain(&fd).unwrap(), 2);
        assert_eq!(super::drain(&fd).unwrap(), 0);
    }
}
