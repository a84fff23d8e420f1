//! Framing over a UNIX stream socket: buffered message reads with `SCM_RIGHTS` file descriptors,
//! and whole-message writes in one `sendmsg`.
//!
//! Reads are buffered so that a small message costs one `recvmsg`. File descriptors belong to the
//! message that contains the last byte of the `recvmsg` that brought them: Linux attaches a
//! `sendmsg`'s descriptors to its first socket buffer and ends a `recvmsg` right after a buffer
//! that carried descriptors, so that byte always lies in the sending message.

use std::collections::VecDeque;
use std::io;
use std::os::fd::{AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd};

use crate::protocol::{Header, ProtocolError, HEADER_SIZE};

/// Most descriptors one `recvmsg` can bring (more are closed by the kernel, and the message fails
/// its descriptor-count check).
const RECV_FDS: usize = 64;
/// Initial read buffer; grows up to the connection's maximum message size on demand.
const INITIAL_BUF: usize = 64 << 10;

/// One message read off the socket.
#[derive(Debug, Default)]
pub(crate) struct Incoming {
    pub header: Header,
    pub body: Vec<u8>,
    pub fds: Vec<OwnedFd>,
}

impl Incoming {
    /// A deep copy of header and body; descriptors move.
    pub fn take(&mut self) -> Incoming {
        Incoming {
            header: self.header,
            body: self.body.clone(),
            fds: std::mem::take(&mut self.fds),
        }
    }
}

/// Why no message was read.
#[derive(Debug)]
pub(crate) enum ReadError {
    /// The peer closed the connection.
    Closed,
    /// The socket's read timeout expired (or a signal arrived); call again.
    TimedOut,
    /// The stream cannot be framed any more (garbage header, oversize message).
    Framing(ProtocolError),
    /// The socket failed.
    Io(io::Error),
}

/// Buffered message reader.
#[derive(Debug)]
pub(crate) struct MsgReader {
    fd: RawFd,
    accept_fds: bool,
    buf: Vec<u8>,
    start: usize,
    end: usize,
    /// Stream offset of `buf[start]`.
    offset: u64,
    /// `(stream offset one past the last byte of the read, descriptors)`.
    fd_marks: VecDeque<(u64, Vec<OwnedFd>)>,
    max_msg: usize,
}

impl MsgReader {
    /// A reader for `fd` (which the caller keeps open for the reader's life) accepting messages up
    /// to `max_msg` bytes.
    pub fn new(fd: BorrowedFd<'_>, max_msg: usize) -> Self {
        Self::with_fds(fd, max_msg, true)
    }

    /// A reader that passes a control buffer only when `accept_fds`: a peer that never sends
    /// descriptors (a server, to a client) is read with plain `recv`, which the kernel serves a
    /// little faster than `recvmsg`; descriptors it sends anyway are closed by the kernel.
    pub fn with_fds(fd: BorrowedFd<'_>, max_msg: usize, accept_fds: bool) -> Self {
        MsgReader {
            accept_fds,
            fd: fd.as_raw_fd(),
            buf: vec![0; INITIAL_BUF.min(max_msg.max(HEADER_SIZE))],
            start: 0,
            end: 0,
            offset: 0,
            fd_marks: VecDeque::new(),
            max_msg,
        }
    }

    /// Reads the next whole message into `out` (reusing its buffers), blocking until one arrives.
    pub fn read(&mut self, out: &mut Incoming) -> Result<(), ReadError> {
        self.read_until(out, None)
    }

    /// Like [`MsgReader::read`], but gives up with [`ReadError::TimedOut`] at `deadline`. The
    /// blocking path sets no socket timeout: a timed `recvmsg` costs a kernel timer per wait,
    /// which the request fast path must not pay; timed waits poll first instead.
    pub fn read_until(
        &mut self,
        out: &mut Incoming,
        deadline: Option<std::time::Instant>,
    ) -> Result<(), ReadError> {
        loop {
            let avail = self.end - self.start;
            if avail >= HEADER_SIZE {
                let header =
                    Header::parse(&self.buf[self.start..self.end]).map_err(ReadError::Framing)?;
                header
                    .validate_framing(self.max_msg)
                    .map_err(ReadError::Framing)?;
                let size = header.size as usize;
                if avail >= size {
                    out.header = header;
                    out.body.clear();
                    out.body
                        .extend_from_slice(&self.buf[self.start + HEADER_SIZE..self.start + size]);
                    out.fds.clear();
                    let msg_end = self.offset + size as u64;
                    while let Some((mark, _)) = self.fd_marks.front() {
                        if *mark > msg_end {
                            break;
                        }
                        if let Some((mark, fds)) = self.fd_marks.pop_front() {
                            // Descriptors from a read that ended inside this message are its own.
                            if mark > self.offset {
                                out.fds.extend(fds);
                            }
                        }
                    }
                    self.start += size;
                    self.offset = msg_end;
                    if self.start == self.end {
                        self.start = 0;
                        self.end = 0;
                    }
                    return Ok(());
                }
                self.make_room(size)?;
            } else {
                self.make_room(HEADER_SIZE)?;
            }
            if let Some(deadline) = deadline {
                self.wait_readable(deadline)?;
            }
            self.fill()?;
        }
    }

    fn wait_readable(&self, deadline: std::time::Instant) -> Result<(), ReadError> {
        let left = deadline.saturating_duration_since(std::time::Instant::now());
        if left.is_zero() {
            return Err(ReadError::TimedOut);
        }
        let ms = left.as_millis().clamp(1, i32::MAX as u128) as i32;
        let mut pfd = libc::pollfd {
            fd: self.fd,
            events: libc::POLLIN,
            revents: 0,
        };
        // SAFETY: one valid pollfd for the duration of the call.
        let r = unsafe { libc::poll(&mut pfd, 1, ms) };
        if r < 0 {
            let e = io::Error::last_os_error();
            if e.kind() == io::ErrorKind::Interrupted {
                return Err(ReadError::TimedOut);
            }
            return Err(ReadError::Io(e));
        }
        if r == 0 {
            return Err(ReadError::TimedOut);
        }
        Ok(())
    }

    /// Ensures the buffer can hold a message of `size` bytes starting at `start`.
    fn make_room(&mut self, size: usize) -> Result<(), ReadError> {
        if self.start + size <= self.buf.len() {
            return Ok(());
        }
        if self.start > 0 {
            self.buf.copy_within(self.start..self.end, 0);
            self.end -= self.start;
            self.start = 0;
        }
        if size > self.buf.len() {
            // Bounded: `size` passed `validate_framing` against `max_msg`.
            self.buf.resize(size, 0);
        }
        Ok(())
    }

    fn fill(&mut self) -> Result<(), ReadError> {
        if self.end == self.buf.len() {
            // Defensive: make_room guarantees space, but never spin on a full buffer.
            let grow = (self.buf.len() * 2).min(self.max_msg.max(self.buf.len() + HEADER_SIZE));
            self.buf.resize(grow, 0);
        }
        let mut fds = Vec::new();
        let n = if self.accept_fds {
            recv_with_fds(self.fd, &mut self.buf[self.end..], &mut fds)
        } else {
            recv_plain(self.fd, &mut self.buf[self.end..])
        };
        match n {
            Ok(0) => Err(ReadError::Closed),
            Ok(n) => {
                self.end += n;
                if !fds.is_empty() {
                    let mark = self.offset + (self.end - self.start) as u64;
                    self.fd_marks.push_back((mark, fds));
                }
                Ok(())
            }
            Err(e) => match e.kind() {
                io::ErrorKind::WouldBlock
                | io::ErrorKind::TimedOut
                | io::ErrorKind::Interrupted => Err(ReadError::TimedOut),
                io::ErrorKind::ConnectionReset => Err(ReadError::Closed),
                _ => Err(ReadError::Io(e)),
            },
        }
    }
}

fn recv_plain(fd: RawFd, buf: &mut [u8]) -> io::Result<usize> {
    // SAFETY: reads at most buf.len() bytes into a live, writable buffer.
    let n = unsafe { libc::recv(fd, buf.as_mut_ptr().cast(), buf.len(), 0) };
    if n < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(n as usize)
}

fn send_plain(fd: RawFd, mut bytes: &[u8]) -> io::Result<()> {
    while !bytes.is_empty() {
        // SAFETY: sends from a live buffer of bytes.len() bytes.
        let n = unsafe { libc::send(fd, bytes.as_ptr().cast(), bytes.len(), libc::MSG_NOSIGNAL) };
        if n < 0 {
            let e = io::Error::last_os_error();
            if e.kind() == io::ErrorKind::Interrupted {
                continue;
            }
            return Err(e);
        }
        bytes = &bytes[n as usize..];
    }
    Ok(())
}

#[repr(C, align(8))]
struct CmsgBuf([u8; 320]);

fn recv_with_fds(fd: RawFd, buf: &mut [u8], fds: &mut Vec<OwnedFd>) -> io::Result<usize> {
    let mut iov = libc::iovec {
        iov_base: buf.as_mut_ptr().cast(),
        iov_len: buf.len(),
    };
    let mut cmsg = CmsgBuf([0; 320]);
    // SAFETY: msghdr is a plain C struct; all-zero is a valid empty value.
    let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
    msg.msg_iov = &mut iov;
    msg.msg_iovlen = 1;
    msg.msg_control = cmsg.0.as_mut_ptr().cast();
    // SAFETY: CMSG_SPACE only computes a size.
    let space = unsafe { libc::CMSG_SPACE((RECV_FDS * 4) as u32) } as usize;
    msg.msg_controllen = space.min(cmsg.0.len()) as _;
    // SAFETY: iov points at `buf` and control at `cmsg`, both live and writable for the call.
    let n = unsafe { libc::recvmsg(fd, &mut msg, libc::MSG_CMSG_CLOEXEC) };
    if n < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: walking the control messages the kernel just wrote into `cmsg`, with the libc macros
    // that bound every step by msg_controllen.
    unsafe {
        let mut c = libc::CMSG_FIRSTHDR(&msg);
        while !c.is_null() {
            if (*c).cmsg_level == libc::SOL_SOCKET && (*c).cmsg_type == libc::SCM_RIGHTS {
                let data = libc::CMSG_DATA(c).cast::<i32>();
                let len = ((*c).cmsg_len as usize).saturating_sub(libc::CMSG_LEN(0) as usize);
                for i in 0..len / 4 {
                    let raw = std::ptr::read_unaligned(data.add(i));
                    if raw >= 0 {
                        // The kernel installed this descriptor for us; nothing else owns it.
                        fds.push(OwnedFd::from_raw_fd(raw));
                    }
                }
            }
            c = libc::CMSG_NXTHDR(&msg, c);
        }
    }
    Ok(n as usize)
}

/// Sends `bytes` with `fds` attached, in one `sendmsg` when the socket takes it all.
pub(crate) fn send_with_fds(fd: RawFd, bytes: &[u8], fds: &[RawFd]) -> io::Result<()> {
    if fds.is_empty() {
        return send_plain(fd, bytes);
    }
    if fds.len() > RECV_FDS {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            "too many file descriptors for one message",
        ));
    }
    let mut sent = 0usize;
    let mut first = true;
    while sent < bytes.len() || (first && !fds.is_empty()) {
        let rest = &bytes[sent..];
        let mut iov = libc::iovec {
            iov_base: rest.as_ptr() as *mut libc::c_void,
            iov_len: rest.len(),
        };
        // SAFETY: plain C struct, zero is a valid empty value.
        let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
        msg.msg_iov = &mut iov;
        msg.msg_iovlen = 1;
        let mut cmsg = CmsgBuf([0; 320]);
        if first && !fds.is_empty() {
            let payload = std::mem::size_of_val(fds);
            // SAFETY: size computation only.
            let space = unsafe { libc::CMSG_SPACE(payload as u32) } as usize;
            msg.msg_control = cmsg.0.as_mut_ptr().cast();
            msg.msg_controllen = space as _;
            // SAFETY: the control buffer is 8-aligned and large enough for CMSG_SPACE(payload)
            // (payload ≤ 256 bytes); the header and data are written inside it.
            unsafe {
                let c = libc::CMSG_FIRSTHDR(&msg);
                (*c).cmsg_level = libc::SOL_SOCKET;
                (*c).cmsg_type = libc::SCM_RIGHTS;
                (*c).cmsg_len = libc::CMSG_LEN(payload as u32) as _;
                std::ptr::copy_nonoverlapping(
                    fds.as_ptr().cast::<u8>(),
                    libc::CMSG_DATA(c),
                    payload,
                );
            }
        }
        // SAFETY: iov and control point at live buffers for the duration of the call.
        let n = unsafe { libc::sendmsg(fd, &msg, libc::MSG_NOSIGNAL) };
        if n < 0 {
            let e = io::Error::last_os_error();
            if e.kind() == io::ErrorKind::Interrupted {
                continue;
            }
            return Err(e);
        }
        first = false;
        sent += n as usize;
        if bytes.is_empty() {
            break;
        }
    }
    Ok(())
}
