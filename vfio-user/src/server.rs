//! The vfio-user server: serves a [`Device`] on a UNIX socket, one client at a time.
//!
//! Per connection: VERSION negotiation, then requests until the client leaves. The device gets a
//! fresh [`GuestMemory`] for each connection ([`Device::attach_memory`]) and [`Device::disconnect`]
//! when it ends. DMA to mappings the client sent with an fd goes straight to the mapped memory; DMA
//! to mappings without an fd becomes `DMA_READ`/`DMA_WRITE` messages to the client, sent while the
//! request that caused them is being handled (client requests that arrive meanwhile are queued).
//!
//! ## DMA message layout
//! QEMU's client reads `DMA_READ`/`DMA_WRITE` with a 4-byte count and data at +12 and answers a
//! `DMA_WRITE` with a bare header; the spec (and libvfio-user) use an 8-byte count and data at +16.
//! [`DmaLayout::Auto`] picks QEMU's layout for a client whose VERSION proposes minor version 0 and
//! includes the `write_multiple` capability — exactly what QEMU ≥ 10.1 sends (libvfio-user and
//! rust-vmm propose 0.1; nothing before QEMU 10.1 sent `write_multiple`) — and the spec layout for
//! everyone else.
//!
//! QEMU's client handles server requests on its main loop, which cannot run while a vCPU waits
//! for a reply from us. So `DMA_WRITE`s to QEMU are posted (no reply awaited; see
//! [`ServerOptions::post_dma_writes`]), and a `DMA_READ` issued while QEMU waits on a request
//! stalls until QEMU's `x-msg-timeout`: give QEMU shared guest RAM (`memory-backend-memfd`,
//! `share=on`) so its DMA maps carry fds and device reads need no messages.
//!
//! ## Bad input
//! A message whose header frames it (size between 16 bytes and the maximum, type command or reply)
//! is consumed whole; if its body is bad, its command unknown, its region or offset out of range, a
//! count too large or its descriptors wrong, the client gets an error reply with an errno and the
//! connection goes on (stray descriptors are closed). A header that cannot frame a message closes
//! the connection; the server then waits for the next client.

use std::collections::{HashMap, HashSet, VecDeque};
use std::io;
use std::os::fd::{AsFd, AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::fs::FileTypeExt;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU16, AtomicU32, AtomicU8, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use hwrr_device::memory::Resolved;
use hwrr_device::{
    Device, DeviceDescription, DeviceError, DmaMapping, DmaRegion, GuestMemory, IrqAction, IrqData,
    IrqSetRequest, IrqSetup, MappedMemory, SparseMemory,
};
use hwrr_formats::{region_flags, region_index};

use crate::protocol::{
    self, device_flags, flags, irq_set_flags, map_flags, unmap_flags, Capabilities, Command,
    DeviceInfo, DmaAccess, DmaLayout, DmaMap, DmaUnmap, Header, IrqInfoMsg, MessageBuilder,
    ProtocolError, RegionAccess, RegionInfoMsg, SetIrqsMsg, Version, WriteMulti,
};
use crate::wire::{self, Incoming, MsgReader, ReadError};

/// Regions a PCI device reports (`VFIO_PCI_NUM_REGIONS`: six BARs, ROM, config, VGA).
const PCI_NUM_REGIONS: u32 = 9;
/// IRQ indices a PCI device reports (`VFIO_PCI_NUM_IRQS`: INTx, MSI, MSI-X, ERR, REQ).
const PCI_NUM_IRQS: u32 = 5;
/// Most client requests buffered while a server-initiated DMA waits for its reply.
const MAX_QUEUED_REQUESTS: usize = 1024;

/// Errors of the server itself (not of one request).
#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    /// Something that is not a socket exists at the path.
    #[error("{0} exists and is not a socket; refusing to replace it")]
    NotASocket(PathBuf),
    /// A live server already listens at the path.
    #[error("a server is already listening on {0}")]
    InUse(PathBuf),
    /// The path does not fit in a `sockaddr_un`.
    #[error("socket path {0} is too long")]
    PathTooLong(PathBuf),
    /// An operating-system error.
    #[error("{context}: {source}")]
    Io {
        /// What was being done.
        context: String,
        /// The error.
        #[source]
        source: io::Error,
    },
}

fn io_err(context: impl Into<String>) -> impl FnOnce(io::Error) -> ServerError {
    let context = context.into();
    move |source| ServerError::Io { context, source }
}

/// Server settings.
#[derive(Clone, Debug)]
pub struct ServerOptions {
    /// DMA message layout for fd-less mappings.
    pub dma_layout: DmaLayout,
    /// Largest data count we accept in one message (offered as `max_data_xfer_size`).
    pub max_data_xfer_size: u32,
    /// Most descriptors we accept in one message (offered as `max_msg_fds`).
    pub max_msg_fds: u32,
    /// Most DMA mappings at once (offered as `max_dma_maps`).
    pub max_dma_maps: u32,
    /// Serve one client, then return.
    pub once: bool,
    /// Set to stop serving (e.g. from a SIGINT handler); noticed within `poll_interval`, also in
    /// the middle of a connection (the server then shuts the client's socket).
    pub stop: Option<Arc<AtomicBool>>,
    /// How often a blocked server checks `stop`.
    pub poll_interval: Duration,
    /// How long a server-initiated DMA waits for the client's reply.
    pub dma_timeout: Duration,
    /// Send `DMA_WRITE` with the no-reply flag instead of waiting for the client's answer.
    /// `None`: post to QEMU (its client handles server requests on its main loop, which cannot
    /// run while a vCPU waits for a reply from us, so a waited-for DMA_WRITE inside a request
    /// deadlocks until QEMU's timeout), wait for everyone else.
    pub post_dma_writes: Option<bool>,
}

impl Default for ServerOptions {
    fn default() -> Self {
        ServerOptions {
            dma_layout: DmaLayout::Auto,
            max_data_xfer_size: protocol::DEFAULT_MAX_DATA_XFER,
            max_msg_fds: protocol::MAX_MSG_FDS,
            max_dma_maps: protocol::DEFAULT_MAX_DMA_MAPS,
            once: false,
            stop: None,
            poll_interval: Duration::from_millis(100),
            dma_timeout: Duration::from_secs(5),
            post_dma_writes: None,
        }
    }
}

impl ServerOptions {
    fn stopped(&self) -> bool {
        self.stop
            .as_ref()
            .is_some_and(|s| s.load(Ordering::Relaxed))
    }

    fn max_xfer(&self) -> u32 {
        self.max_data_xfer_size
            .clamp(4096, protocol::MAX_MAX_DATA_XFER)
    }

    /// Largest message we accept: the largest data transfer plus the largest fixed part.
    fn max_msg(&self) -> usize {
        self.max_xfer() as usize + protocol::MESSAGE_OVERHEAD
    }
}

/// What one connection did.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ConnectionSummary {
    /// Requests handled (including bad ones).
    pub requests: u64,
    /// Requests answered with an error (or that failed silently when posted).
    pub errors: u64,
    /// Server-initiated DMA messages sent.
    pub dma_messages: u64,
    /// Why the connection ended: `None` when the client closed it.
    pub closed_because: Option<String>,
    /// The DMA layout used with this client.
    pub dma_layout: Option<DmaLayout>,
}

/// What a `serve` call did.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ServeSummary {
    /// Connections served.
    pub connections: u64,
    /// Requests handled over all connections.
    pub requests: u64,
    /// Error replies over all connections.
    pub errors: u64,
    /// The last connection's summary.
    pub last: Option<ConnectionSummary>,
}

/// A listening vfio-user socket.
#[derive(Debug)]
pub struct Server {
    listener: UnixListener,
    path: PathBuf,
    options: ServerOptions,
}

impl Server {
    /// Creates the socket at `path` with mode 0600. A stale socket (nobody listening) is replaced;
    /// anything else at the path is an error.
    pub fn bind(path: impl AsRef<Path>, options: ServerOptions) -> Result<Server, ServerError> {
        let path = path.as_ref().to_path_buf();
        match std::fs::symlink_metadata(&path) {
            Ok(meta) => {
                if !meta.file_type().is_socket() {
                    return Err(ServerError::NotASocket(path));
                }
                if UnixStream::connect(&path).is_ok() {
                    return Err(ServerError::InUse(path));
                }
                std::fs::remove_file(&path)
                    .map_err(io_err(format!("removing {}", path.display())))?;
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => return Err(io_err(format!("checking {}", path.display()))(e)),
        }
        let listener = bind_0600(&path)?;
        Ok(Server {
            listener,
            path,
            options,
        })
    }

    /// The socket path.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The options.
    pub fn options(&self) -> &ServerOptions {
        &self.options
    }

    /// Serves clients one at a time until `stop` is set, or after one client with `once`.
    pub fn serve(&mut self, device: &mut dyn Device) -> Result<ServeSummary, ServerError> {
        let mut summary = ServeSummary::default();
        self.listener
            .set_nonblocking(true)
            .map_err(io_err("setting the listener non-blocking"))?;
        let interval_ms = self.options.poll_interval.as_millis().clamp(1, 10_000) as i32;
        loop {
            if self.options.stopped() {
                return Ok(summary);
            }
            let mut pfd = libc::pollfd {
                fd: self.listener.as_raw_fd(),
                events: libc::POLLIN,
                revents: 0,
            };
            // SAFETY: one valid pollfd for the duration of the call.
            let r = unsafe { libc::poll(&mut pfd, 1, interval_ms) };
            if r < 0 {
                let e = io::Error::last_os_error();
                if e.kind() == io::ErrorKind::Interrupted {
                    continue;
                }
                return Err(io_err("polling the listener")(e));
            }
            if r == 0 {
                continue;
            }
            let stream = match self.listener.accept() {
                Ok((s, _)) => s,
                Err(e)
                    if matches!(
                        e.kind(),
                        io::ErrorKind::WouldBlock | io::ErrorKind::Interrupted
                    ) =>
                {
                    continue
                }
                Err(e) => return Err(io_err("accepting a client")(e)),
            };
            let conn = serve_connection(device, stream, &self.options)?;
            summary.connections += 1;
            summary.requests += conn.requests;
            summary.errors += conn.errors;
            summary.last = Some(conn);
            if self.options.once {
                return Ok(summary);
            }
        }
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.path);
    }
}

/// Binds a listening socket at `path` with mode 0600. The socket is bound, restricted and put to
/// listen under a temporary name in the same directory, then renamed into place: a client that
/// waits for the path to appear (QEMU, a script, a test) would otherwise find it between bind()
/// and listen() and be refused. A path too long for a temporary name beside it is bound directly.
fn bind_0600(path: &Path) -> Result<UnixListener, ServerError> {
    let Some(staging) = staging_path(path) else {
        return bind_listening_0600(path);
    };
    let listener = bind_listening_0600(&staging)?;
    if let Err(e) = std::fs::rename(&staging, path) {
        let _ = std::fs::remove_file(&staging);
        return Err(io_err(format!("moving the socket to {}", path.display()))(
            e,
        ));
    }
    Ok(listener)
}

/// A temporary socket name beside `path`, if it fits in a socket address.
fn staging_path(path: &Path) -> Option<PathBuf> {
    use std::os::unix::ffi::OsStrExt;
    static NEXT: AtomicU32 = AtomicU32::new(0);
    let n = NEXT.fetch_add(1, Ordering::Relaxed);
    let name = format!(".hwrr-bind-{}-{n}", std::process::id());
    let staging = match path.parent() {
        Some(dir) if !dir.as_os_str().is_empty() => dir.join(name),
        _ => PathBuf::from(name),
    };
    // sun_path holds 108 bytes with the terminating NUL.
    (staging.as_os_str().as_bytes().len() < 108).then_some(staging)
}

fn bind_listening_0600(path: &Path) -> Result<UnixListener, ServerError> {
    use std::os::unix::ffi::OsStrExt;
    let bytes = path.as_os_str().as_bytes();
    // SAFETY: sockaddr_un is a plain C struct; zero is a valid value.
    let mut addr: libc::sockaddr_un = unsafe { std::mem::zeroed() };
    if bytes.len() >= addr.sun_path.len() || bytes.contains(&0) {
        return Err(ServerError::PathTooLong(path.to_path_buf()));
    }
    addr.sun_family = libc::AF_UNIX as libc::sa_family_t;
    for (d, s) in addr.sun_path.iter_mut().zip(bytes) {
        *d = *s as libc::c_char;
    }
    // SAFETY: plain socket(2) call; the result is checked.
    let raw = unsafe { libc::socket(libc::AF_UNIX, libc::SOCK_STREAM | libc::SOCK_CLOEXEC, 0) };
    if raw < 0 {
        return Err(io_err("creating the socket")(io::Error::last_os_error()));
    }
    // SAFETY: `raw` is a fresh descriptor owned by nothing else.
    let fd = unsafe { OwnedFd::from_raw_fd(raw) };
    let len = (std::mem::size_of::<libc::sa_family_t>() + bytes.len() + 1) as libc::socklen_t;
    // SAFETY: addr is a valid sockaddr_un of at least `len` bytes.
    let r = unsafe {
        libc::bind(
            fd.as_raw_fd(),
            (&addr as *const libc::sockaddr_un).cast(),
            len,
        )
    };
    if r < 0 {
        return Err(io_err(format!("binding {}", path.display()))(
            io::Error::last_os_error(),
        ));
    }
    // Nobody can connect before listen(), so restricting the mode now leaves no window.
    let cpath = std::ffi::CString::new(bytes).map_err(|_| ServerError::PathTooLong(path.into()))?;
    // SAFETY: cpath is a valid NUL-terminated path.
    if unsafe { libc::chmod(cpath.as_ptr(), 0o600) } < 0 {
        let e = io::Error::last_os_error();
        let _ = std::fs::remove_file(path);
        return Err(io_err(format!("chmod 0600 {}", path.display()))(e));
    }
    // SAFETY: listen on our bound socket.
    if unsafe { libc::listen(fd.as_raw_fd(), 8) } < 0 {
        let e = io::Error::last_os_error();
        let _ = std::fs::remove_file(path);
        return Err(io_err(format!("listening on {}", path.display()))(e));
    }
    Ok(UnixListener::from(fd))
}

const LAYOUT_SPEC: u8 = 0;
const LAYOUT_QEMU: u8 = 1;

/// State shared between the request loop and the connection's [`GuestMemory`] (which the device
/// may call from any thread).
#[derive(Debug)]
struct Shared {
    stream: UnixStream,
    reader: Mutex<MsgReader>,
    write_lock: Mutex<()>,
    /// Client requests read while waiting for a DMA reply.
    queued: Mutex<VecDeque<Incoming>>,
    replies: Mutex<Replies>,
    reply_ready: Condvar,
    next_id: AtomicU16,
    layout: AtomicU8,
    client_max_xfer: AtomicU32,
    closed: AtomicBool,
    dma_timeout: Duration,
    post_dma_writes: AtomicBool,
    dma_messages: std::sync::atomic::AtomicU64,
}

#[derive(Debug, Default)]
struct Replies {
    waiting: HashSet<u16>,
    arrived: HashMap<u16, Incoming>,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl Shared {
    fn send(&self, bytes: &[u8]) -> io::Result<()> {
        let _guard = lock(&self.write_lock);
        wire::send_with_fds(self.stream.as_raw_fd(), bytes, &[])
    }

    /// Routes a message read by anyone: replies to their waiter, requests to the queue.
    /// Returns the message back when it is a request and the caller wants requests.
    fn route_reply(&self, msg: &mut Incoming) {
        let mut r = lock(&self.replies);
        if r.waiting.contains(&msg.header.id) {
            r.arrived.insert(msg.header.id, msg.take());
            self.reply_ready.notify_all();
        }
        // A reply nobody waits for (late, or invented by the client) is dropped.
    }

    fn layout(&self) -> DmaLayout {
        if self.layout.load(Ordering::Relaxed) == LAYOUT_QEMU {
            DmaLayout::Qemu
        } else {
            DmaLayout::Spec
        }
    }

    /// Sends a server-initiated request and waits for its reply, reading (and queueing) whatever
    /// else the client sends meanwhile.
    fn transact(&self, msg: &[u8], id: u16) -> Result<Incoming, DeviceError> {
        if self.closed.load(Ordering::Relaxed) {
            return Err(DeviceError::Io(io::Error::new(
                io::ErrorKind::NotConnected,
                "the vfio-user client is gone",
            )));
        }
        lock(&self.replies).waiting.insert(id);
        let result = self.transact_inner(msg, id);
        let mut r = lock(&self.replies);
        r.waiting.remove(&id);
        r.arrived.remove(&id);
        result
    }

    fn transact_inner(&self, msg: &[u8], id: u16) -> Result<Incoming, DeviceError> {
        self.send(msg)?;
        self.dma_messages.fetch_add(1, Ordering::Relaxed);
        let deadline = Instant::now() + self.dma_timeout;
        let mut scratch = Incoming::default();
        loop {
            let mut replies = lock(&self.replies);
            if let Some(r) = replies.arrived.remove(&id) {
                return Ok(r);
            }
            if Instant::now() >= deadline {
                return Err(DeviceError::Io(io::Error::new(
                    io::ErrorKind::TimedOut,
                    "no reply to a DMA message",
                )));
            }
            if self.closed.load(Ordering::Relaxed) {
                return Err(DeviceError::Io(io::Error::new(
                    io::ErrorKind::NotConnected,
                    "the vfio-user client is gone",
                )));
            }
            match self.reader.try_lock() {
                Ok(mut reader) => {
                    drop(replies);
                    match reader.read_until(&mut scratch, Some(deadline)) {
                        Ok(()) => {
                            drop(reader);
                            if scratch.header.is_reply() {
                                if scratch.header.id == id {
                                    return Ok(scratch);
                                }
                                self.route_reply(&mut scratch);
                            } else {
                                let mut q = lock(&self.queued);
                                if q.len() >= MAX_QUEUED_REQUESTS {
                                    // A client that floods requests instead of answering the
                                    // DMA cannot make the server buffer without limit.
                                    drop(q);
                                    self.closed.store(true, Ordering::Relaxed);
                                    let _ = self.stream.shutdown(std::net::Shutdown::Both);
                                    return Err(DeviceError::Io(io::Error::new(
                                        io::ErrorKind::InvalidData,
                                        "client sent too many requests while a DMA was pending",
                                    )));
                                }
                                q.push_back(scratch.take());
                            }
                        }
                        Err(ReadError::TimedOut) => {}
                        Err(_) => {
                            self.closed.store(true, Ordering::Relaxed);
                            self.reply_ready.notify_all();
                        }
                    }
                }
                Err(_) => {
                    // The request loop is reading; it hands replies over through `replies`.
                    let _ = self
                        .reply_ready
                        .wait_timeout(replies, Duration::from_millis(20));
                }
            }
        }
    }
}

/// The guest memory a connection gives its device: a table of the client's DMA mappings, reached
/// through mapped memory or, for mappings without an fd, through DMA messages.
#[derive(Debug)]
pub struct ConnectionMemory {
    table: SparseMemory,
    shared: Arc<Shared>,
}

impl ConnectionMemory {
    /// The mappings as `(iova, len, flags)`.
    pub fn mappings(&self) -> Vec<(u64, u64, u32)> {
        self.table.mappings()
    }

    /// Splits `iova..iova+len` into pieces that each lie in one mapping with `need` permission.
    fn pieces(
        &self,
        iova: u64,
        len: usize,
        need: u32,
    ) -> Result<Vec<(u64, usize, Resolved)>, DeviceError> {
        let fault = |at: u64, detail: &str| DeviceError::DmaFault {
            iova: at,
            len: len as u64,
            detail: detail.to_string(),
        };
        let end = iova
            .checked_add(len as u64)
            .ok_or_else(|| fault(iova, ": address wraps"))?;
        let maps = self.table.mappings();
        let mut out = Vec::new();
        let mut at = iova;
        while at < end {
            let (start, mlen, mflags) = maps
                .iter()
                .rev()
                .find(|(s, _, _)| *s <= at)
                .copied()
                .filter(|(s, l, _)| at < s.saturating_add(*l))
                .ok_or_else(|| fault(at, ""))?;
            if mflags & need != need {
                return Err(fault(at, ": mapping lacks the permission"));
            }
            let piece_end = end.min(start.saturating_add(mlen));
            let n = (piece_end - at) as usize;
            let kind = self
                .table
                .resolve(at, n as u64)
                .ok_or_else(|| fault(at, ""))?;
            out.push((at, n, kind));
            at = piece_end;
        }
        Ok(out)
    }

    fn remote_read(&self, iova: u64, buf: &mut [u8]) -> Result<(), DeviceError> {
        let layout = self.shared.layout();
        let chunk = self.shared.client_max_xfer.load(Ordering::Relaxed).max(1) as usize;
        let mut msg = Vec::with_capacity(32);
        for (i, piece) in buf.chunks_mut(chunk).enumerate() {
            let addr = iova + (i * chunk) as u64;
            let id = self.shared.next_id.fetch_add(1, Ordering::Relaxed);
            let mut m = MessageBuilder::new(&mut msg, id, Command::DmaRead as u16, 0, 0);
            // The request has no data: both layouts read as {address u64, count u64/u32+pad}.
            m.u64(addr).u64(piece.len() as u64);
            let n = m.finish();
            let reply = self.shared.transact(&msg[..n], id)?;
            check_dma_reply(&reply, addr, piece.len())?;
            let d = DmaAccess::parse_with_data(&reply.body, layout, u32::MAX)
                .map_err(|e| dma_protocol_error(addr, piece.len(), e))?;
            if d.data.len() != piece.len() {
                return Err(dma_protocol_error(
                    addr,
                    piece.len(),
                    ProtocolError::WrongLength {
                        what: "DMA_READ reply",
                        expected: piece.len(),
                        got: d.data.len(),
                    },
                ));
            }
            piece.copy_from_slice(d.data);
        }
        Ok(())
    }

    fn remote_write(&self, iova: u64, data: &[u8]) -> Result<(), DeviceError> {
        let layout = self.shared.layout();
        let chunk = self.shared.client_max_xfer.load(Ordering::Relaxed).max(1) as usize;
        let mut msg = Vec::with_capacity(32 + data.len().min(chunk));
        for (i, piece) in data.chunks(chunk).enumerate() {
            let addr = iova + (i * chunk) as u64;
            let id = self.shared.next_id.fetch_add(1, Ordering::Relaxed);
            let post = self.shared.post_dma_writes.load(Ordering::Relaxed);
            let fl = if post { flags::NO_REPLY } else { 0 };
            let mut m = MessageBuilder::new(&mut msg, id, Command::DmaWrite as u16, fl, 0);
            DmaAccess {
                address: addr,
                count: piece.len() as u64,
                data: piece,
            }
            .encode_body(layout, &mut m);
            let n = m.finish();
            if post {
                if self.shared.closed.load(Ordering::Relaxed) {
                    return Err(DeviceError::Io(io::Error::new(
                        io::ErrorKind::NotConnected,
                        "the vfio-user client is gone",
                    )));
                }
                self.shared.send(&msg[..n])?;
                self.shared.dma_messages.fetch_add(1, Ordering::Relaxed);
                continue;
            }
            let reply = self.shared.transact(&msg[..n], id)?;
            check_dma_reply(&reply, addr, piece.len())?;
            // QEMU answers with a bare header; the spec echoes address and count.
            if !(reply.body.is_empty() || reply.body.len() == DmaAccess::SIZE) {
                return Err(dma_protocol_error(
                    addr,
                    piece.len(),
                    ProtocolError::WrongLength {
                        what: "DMA_WRITE reply",
                        expected: DmaAccess::SIZE,
                        got: reply.body.len(),
                    },
                ));
            }
        }
        Ok(())
    }
}

fn check_dma_reply(reply: &Incoming, iova: u64, len: usize) -> Result<(), DeviceError> {
    if let Some(errno) = reply.header.error() {
        return Err(DeviceError::DmaFault {
            iova,
            len: len as u64,
            detail: format!(
                ": the client answered {}",
                io::Error::from_raw_os_error(errno)
            ),
        });
    }
    Ok(())
}

fn dma_protocol_error(iova: u64, len: usize, e: ProtocolError) -> DeviceError {
    DeviceError::DmaFault {
        iova,
        len: len as u64,
        detail: format!(": bad reply from the client: {e}"),
    }
}

impl GuestMemory for ConnectionMemory {
    fn read(&self, iova: u64, buf: &mut [u8]) -> hwrr_device::Result<()> {
        if let Some(Resolved::Local) = self.table.resolve(iova, buf.len() as u64) {
            return self.table.read(iova, buf);
        }
        let mut done = 0usize;
        for (at, n, kind) in self.pieces(iova, buf.len(), map_flags::READ)? {
            let part = &mut buf[done..done + n];
            match kind {
                Resolved::Local => self.table.read(at, part)?,
                Resolved::Remote => self.remote_read(at, part)?,
            }
            done += n;
        }
        Ok(())
    }

    fn write(&self, iova: u64, data: &[u8]) -> hwrr_device::Result<()> {
        if let Some(Resolved::Local) = self.table.resolve(iova, data.len() as u64) {
            return self.table.write(iova, data);
        }
        let mut done = 0usize;
        for (at, n, kind) in self.pieces(iova, data.len(), map_flags::WRITE)? {
            let part = &data[done..done + n];
            match kind {
                Resolved::Local => self.table.write(at, part)?,
                Resolved::Remote => self.remote_write(at, part)?,
            }
            done += n;
        }
        Ok(())
    }
}

/// Why a request failed: a protocol error or a device error, both with an errno.
#[derive(Debug)]
enum Failure {
    Protocol(ProtocolError),
    Device(DeviceError),
    Errno(i32, String),
}

impl Failure {
    fn errno(&self) -> i32 {
        match self {
            Failure::Protocol(e) => e.errno(),
            Failure::Device(e) => e.errno(),
            Failure::Errno(n, _) => *n,
        }
    }
}

impl std::fmt::Display for Failure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Failure::Protocol(e) => write!(f, "{e}"),
            Failure::Device(e) => write!(f, "{e}"),
            Failure::Errno(n, s) => write!(f, "{s} (errno {n})"),
        }
    }
}

impl From<ProtocolError> for Failure {
    fn from(e: ProtocolError) -> Self {
        Failure::Protocol(e)
    }
}
impl From<DeviceError> for Failure {
    fn from(e: DeviceError) -> Self {
        Failure::Device(e)
    }
}

struct Connection<'d> {
    device: &'d mut dyn Device,
    shared: Arc<Shared>,
    memory: Arc<ConnectionMemory>,
    desc: DeviceDescription,
    options: ServerOptions,
    negotiated: bool,
    max_xfer: u32,
    max_vectors: u32,
    reply: Vec<u8>,
    summary: ConnectionSummary,
}

/// Serves one client on an already-connected stream until it leaves (or `options.stop` is set),
/// calling `attach_memory` first and `disconnect` last. Used by [`Server::serve`]; public for
/// tests and fuzzing over a socketpair.
pub fn serve_connection(
    device: &mut dyn Device,
    stream: UnixStream,
    options: &ServerOptions,
) -> Result<ConnectionSummary, ServerError> {
    stream
        .set_nonblocking(false)
        .map_err(io_err("setting the client socket blocking"))?;
    let reader = MsgReader::new(stream.as_fd(), options.max_msg());
    let shared = Arc::new(Shared {
        stream,
        reader: Mutex::new(reader),
        write_lock: Mutex::new(()),
        queued: Mutex::new(VecDeque::new()),
        replies: Mutex::new(Replies::default()),
        reply_ready: Condvar::new(),
        next_id: AtomicU16::new(0),
        layout: AtomicU8::new(LAYOUT_SPEC),
        client_max_xfer: AtomicU32::new(protocol::DEFAULT_MAX_DATA_XFER),
        closed: AtomicBool::new(false),
        dma_timeout: options.dma_timeout,
        post_dma_writes: AtomicBool::new(false),
        dma_messages: Default::default(),
    });
    let memory = Arc::new(ConnectionMemory {
        table: SparseMemory::new(),
        shared: shared.clone(),
    });
    device.attach_memory(memory.clone());
    let desc = device.describe();
    let max_vectors = desc.irqs.iter().map(|i| i.count).max().unwrap_or(0).max(1);
    let mut conn = Connection {
        device,
        shared,
        memory,
        desc,
        options: options.clone(),
        negotiated: false,
        max_xfer: options.max_xfer(),
        max_vectors,
        reply: Vec::with_capacity(4096),
        summary: ConnectionSummary::default(),
    };
    // Reads block without a socket timeout (a timed recvmsg costs a kernel timer per request), so
    // a watcher turns `stop` into a shutdown that wakes the blocked read.
    let (done_tx, done_rx) = std::sync::mpsc::channel::<()>();
    let watcher = options.stop.clone().map(|stop| {
        let shared = conn.shared.clone();
        let interval = options.poll_interval.max(Duration::from_millis(1));
        std::thread::spawn(move || loop {
            match done_rx.recv_timeout(interval) {
                Err(std::sync::mpsc::RecvTimeoutError::Timeout) => {
                    if stop.load(Ordering::Relaxed) {
                        let _ = shared.stream.shutdown(std::net::Shutdown::Both);
                        return;
                    }
                }
                _ => return,
            }
        })
    });
    conn.run();
    drop(done_tx);
    if let Some(w) = watcher {
        let _ = w.join();
    }
    conn.shared.closed.store(true, Ordering::Relaxed);
    let _ = conn.shared.stream.shutdown(std::net::Shutdown::Both);
    conn.shared.reply_ready.notify_all();
    conn.device.disconnect();
    conn.summary.dma_messages = conn.shared.dma_messages.load(Ordering::Relaxed);
    Ok(conn.summary)
}

impl Connection<'_> {
    fn run(&mut self) {
        let mut msg = Incoming::default();
        loop {
            let queued = lock(&self.shared.queued).pop_front();
            if let Some(q) = queued {
                msg = q;
            } else {
                let r = lock(&self.shared.reader).read(&mut msg);
                match r {
                    Ok(()) => {}
                    Err(ReadError::TimedOut) => {
                        if self.options.stopped() || self.shared.closed.load(Ordering::Relaxed) {
                            self.summary.closed_because = Some("stopped".into());
                            return;
                        }
                        continue;
                    }
                    Err(ReadError::Closed) => {
                        if self.options.stopped() {
                            self.summary.closed_because = Some("stopped".into());
                        }
                        return;
                    }
                    Err(ReadError::Framing(e)) => {
                        tracing::warn!("vfio-user: closing connection: {e}");
                        self.summary.closed_because = Some(e.to_string());
                        return;
                    }
                    Err(ReadError::Io(e)) => {
                        self.summary.closed_because = Some(e.to_string());
                        return;
                    }
                }
            }
            if msg.header.is_reply() {
                self.shared.route_reply(&mut msg);
                continue;
            }
            self.summary.requests += 1;
            let header = msg.header;
            let fds = std::mem::take(&mut msg.fds);
            let result = self.handle(&header, &msg.body, fds);
            let sent = match result {
                Ok(len) => {
                    if header.no_reply() {
                        Ok(())
                    } else {
                        self.shared.send(&self.reply[..len])
                    }
                }
                Err(f) => {
                    self.summary.errors += 1;
                    tracing::debug!(
                        "vfio-user: command {} id {} failed: {f}",
                        header.command,
                        header.id
                    );
                    if header.no_reply() {
                        Ok(())
                    } else {
                        let n = MessageBuilder::new(
                            &mut self.reply,
                            header.id,
                            header.command,
                            flags::TYPE_REPLY | flags::ERROR,
                            f.errno() as u32,
                        )
                        .finish();
                        self.shared.send(&self.reply[..n])
                    }
                }
            };
            if let Err(e) = sent {
                self.summary.closed_because = Some(format!("sending a reply: {e}"));
                return;
            }
        }
    }

    /// Starts a success reply for `h` in `self.reply`.
    fn reply_to(&mut self, h: &Header) -> MessageBuilder<'_> {
        MessageBuilder::new(&mut self.reply, h.id, h.command, flags::TYPE_REPLY, 0)
    }

    fn no_fds(fds: &[OwnedFd], what: &'static str) -> Result<(), Failure> {
        if !fds.is_empty() {
            return Err(ProtocolError::WrongFdCount {
                what,
                expected: 0,
                got: fds.len(),
            }
            .into());
        }
        Ok(())
    }

    /// Handles one request; returns the reply length in `self.reply`.
    fn handle(&mut self, h: &Header, body: &[u8], fds: Vec<OwnedFd>) -> Result<usize, Failure> {
        let Some(cmd) = Command::from_u16(h.command) else {
            return Err(ProtocolError::UnknownCommand(h.command).into());
        };
        if cmd != Command::Version && !self.negotiated {
            return Err(Failure::Errno(
                libc::EINVAL,
                "VERSION must be the first message".into(),
            ));
        }
        match cmd {
            Command::RegionRead => {
                Self::no_fds(&fds, "REGION_READ")?;
                let r = RegionAccess::parse_read(body, self.max_xfer)?;
                self.region_read(h, r.region, r.offset, r.count)
            }
            Command::RegionWrite => {
                Self::no_fds(&fds, "REGION_WRITE")?;
                let w = RegionAccess::parse_with_data(body, self.max_xfer)?;
                self.access_write(w.region, w.offset, w.data)?;
                let mut m = self.reply_to(h);
                m.u64(w.offset).u32(w.region).u32(w.count);
                Ok(m.finish())
            }
            Command::RegionWriteMulti => {
                Self::no_fds(&fds, "REGION_WRITE_MULTI")?;
                let wm = WriteMulti::parse(body)?;
                for w in wm.iter() {
                    self.access_write(w.region, w.offset, w.data)?;
                }
                let mut m = self.reply_to(h);
                m.u64(wm.len() as u64);
                Ok(m.finish())
            }
            Command::Version => {
                Self::no_fds(&fds, "VERSION")?;
                self.version(h, body)
            }
            Command::DmaMap => self.dma_map(h, body, fds),
            Command::DmaUnmap => {
                Self::no_fds(&fds, "DMA_UNMAP")?;
                let u = DmaUnmap::parse(body)?;
                if u.flags & unmap_flags::ALL != 0 {
                    self.memory.table.clear();
                } else if !self.memory.table.remove(u.address, u.size) {
                    return Err(Failure::Errno(
                        libc::ENOENT,
                        format!("no DMA mapping {:#x}+{:#x}", u.address, u.size),
                    ));
                }
                self.device.dma_unmap(DmaMapping {
                    iova: u.address,
                    len: u.size,
                    flags: u.flags,
                })?;
                let mut m = self.reply_to(h);
                u.encode_body(&mut m);
                Ok(m.finish())
            }
            Command::DeviceGetInfo => {
                Self::no_fds(&fds, "DEVICE_GET_INFO")?;
                let req = DeviceInfo::parse(body)?;
                if (req.argsz as usize) < DeviceInfo::SIZE {
                    return Err(Failure::Errno(libc::EINVAL, "argsz too small".into()));
                }
                let info = DeviceInfo {
                    argsz: DeviceInfo::SIZE as u32,
                    flags: device_flags::RESET | device_flags::PCI,
                    num_regions: self.num_regions(),
                    num_irqs: self.num_irqs(),
                };
                let mut m = self.reply_to(h);
                info.encode_body(&mut m);
                Ok(m.finish())
            }
            Command::DeviceGetRegionInfo => {
                Self::no_fds(&fds, "DEVICE_GET_REGION_INFO")?;
                let req = RegionInfoMsg::parse_request(body)?;
                let info = self.region_info(req.index)?;
                let include = req.argsz as usize >= RegionInfoMsg::SIZE + info.caps_len();
                let mut m = self.reply_to(h);
                info.encode_reply(&mut m, include);
                Ok(m.finish())
            }
            Command::DeviceGetIrqInfo => {
                Self::no_fds(&fds, "DEVICE_GET_IRQ_INFO")?;
                let req = IrqInfoMsg::parse(body)?;
                if req.index >= self.num_irqs() {
                    return Err(Failure::Device(DeviceError::NoSuchIrq {
                        index: req.index,
                        start: 0,
                        end: 0,
                    }));
                }
                let (count, iflags) = self
                    .desc
                    .irq(req.index)
                    .map(|i| (i.count, i.flags))
                    .unwrap_or((0, 0));
                let mut m = self.reply_to(h);
                IrqInfoMsg {
                    argsz: IrqInfoMsg::SIZE as u32,
                    flags: iflags,
                    index: req.index,
                    count,
                }
                .encode_body(&mut m);
                Ok(m.finish())
            }
            Command::DeviceSetIrqs => self.set_irqs(h, body, fds),
            Command::DeviceReset => {
                Self::no_fds(&fds, "DEVICE_RESET")?;
                if !body.is_empty() {
                    return Err(ProtocolError::WrongLength {
                        what: "DEVICE_RESET",
                        expected: 0,
                        got: body.len(),
                    }
                    .into());
                }
                self.device.reset()?;
                Ok(self.reply_to(h).finish())
            }
            Command::DeviceGetRegionIoFds => {
                Err(ProtocolError::Unsupported("DEVICE_GET_REGION_IO_FDS").into())
            }
            Command::DmaRead | Command::DmaWrite => Err(ProtocolError::Unsupported(
                "DMA_READ/DMA_WRITE are server-to-client commands",
            )
            .into()),
            Command::DirtyPages
            | Command::DeviceFeature
            | Command::MigDataRead
            | Command::MigDataWrite => {
                Err(ProtocolError::Unsupported("dirty-page tracking and migration").into())
            }
        }
    }

    fn num_regions(&self) -> u32 {
        let max = self
            .desc
            .regions
            .iter()
            .map(|r| r.index + 1)
            .max()
            .unwrap_or(0);
        max.max(PCI_NUM_REGIONS)
    }

    fn num_irqs(&self) -> u32 {
        let max = self
            .desc
            .irqs
            .iter()
            .map(|i| i.index + 1)
            .max()
            .unwrap_or(0);
        max.max(PCI_NUM_IRQS)
    }

    fn config_size(&self) -> u64 {
        match self.desc.region(region_index::CONFIG) {
            Some(r) => r.size,
            None => (self.desc.config_space.len() as u64).max(256),
        }
    }

    fn region_info(&self, index: u32) -> Result<RegionInfoMsg, Failure> {
        if index >= self.num_regions() {
            return Err(DeviceError::NoSuchRegion(index).into());
        }
        let (size, rflags) = if index == region_index::CONFIG {
            (self.config_size(), region_flags::READ | region_flags::WRITE)
        } else {
            match self.desc.region(index) {
                // Every region is trapped: no mmap, so no sparse-mmap capability either.
                Some(r) => (r.size, r.flags & (region_flags::READ | region_flags::WRITE)),
                None => (0, 0),
            }
        };
        Ok(RegionInfoMsg {
            argsz: 0,
            flags: rflags,
            index,
            cap_offset: 0,
            size,
            offset: 0,
            caps: Vec::new(),
        })
    }

    fn check_access(&self, region: u32, offset: u64, len: usize) -> Result<(), Failure> {
        if region == region_index::CONFIG {
            let size = self.config_size();
            match offset.checked_add(len as u64) {
                Some(end) if end <= size => return Ok(()),
                _ => {
                    return Err(DeviceError::OutOfRange {
                        region,
                        offset,
                        len: len as u64,
                        size,
                    }
                    .into())
                }
            }
        }
        self.desc.check_access(region, offset, len)?;
        Ok(())
    }

    fn region_read(
        &mut self,
        h: &Header,
        region: u32,
        offset: u64,
        count: u32,
    ) -> Result<usize, Failure> {
        self.check_access(region, offset, count as usize)?;
        let mut m = MessageBuilder::new(&mut self.reply, h.id, h.command, flags::TYPE_REPLY, 0);
        m.u64(offset).u32(region).u32(count);
        let data = m.zeroes(count as usize);
        if region == region_index::CONFIG {
            self.device.config_read(offset as u32, data)?;
        } else {
            self.device.region_read(region, offset, data)?;
        }
        Ok(m.finish())
    }

    fn access_write(&mut self, region: u32, offset: u64, data: &[u8]) -> Result<(), Failure> {
        self.check_access(region, offset, data.len())?;
        if region == region_index::CONFIG {
            self.device.config_write(offset as u32, data)?;
        } else {
            self.device.region_write(region, offset, data)?;
        }
        Ok(())
    }

    fn version(&mut self, h: &Header, body: &[u8]) -> Result<usize, Failure> {
        if self.negotiated {
            return Err(Failure::Errno(libc::EINVAL, "VERSION sent twice".into()));
        }
        let v = Version::parse(body)?;
        if v.major != protocol::MAJOR_VERSION {
            return Err(ProtocolError::IncompatibleVersion {
                major: v.major,
                minor: v.minor,
            }
            .into());
        }
        let client = v.capabilities()?;
        let minor = v.minor.min(protocol::MINOR_VERSION);
        let layout = match self.options.dma_layout {
            DmaLayout::Auto if v.minor == 0 && client.write_multiple => DmaLayout::Qemu,
            DmaLayout::Auto => DmaLayout::Spec,
            l => l,
        };
        self.shared.layout.store(
            if layout == DmaLayout::Qemu {
                LAYOUT_QEMU
            } else {
                LAYOUT_SPEC
            },
            Ordering::Relaxed,
        );
        self.summary.dma_layout = Some(layout);
        self.shared.post_dma_writes.store(
            self.options
                .post_dma_writes
                .unwrap_or(layout == DmaLayout::Qemu),
            Ordering::Relaxed,
        );
        self.shared.client_max_xfer.store(
            client
                .max_data_xfer_size
                .clamp(1, protocol::MAX_MAX_DATA_XFER),
            Ordering::Relaxed,
        );
        let ours = Capabilities {
            max_msg_fds: self.options.max_msg_fds.min(protocol::MAX_MSG_FDS),
            max_data_xfer_size: self.max_xfer,
            max_dma_maps: self
                .options
                .max_dma_maps
                .min(protocol::DEFAULT_MAX_DMA_MAPS),
            pgsizes: protocol::DEFAULT_PGSIZES,
            write_multiple: client.write_multiple,
            migration: None,
        };
        self.negotiated = true;
        let reply = Version {
            major: protocol::MAJOR_VERSION,
            minor,
            data: Some(ours.to_json()),
        };
        let mut m = self.reply_to(h);
        reply.encode_body(&mut m);
        Ok(m.finish())
    }

    fn dma_map(
        &mut self,
        h: &Header,
        body: &[u8],
        mut fds: Vec<OwnedFd>,
    ) -> Result<usize, Failure> {
        if fds.len() > 1 {
            return Err(ProtocolError::WrongFdCount {
                what: "DMA_MAP",
                expected: 1,
                got: fds.len(),
            }
            .into());
        }
        let map = DmaMap::parse(body)?;
        let existing = self.memory.table.mappings();
        if existing.len() >= self.options.max_dma_maps as usize {
            return Err(Failure::Errno(libc::ENOSPC, "too many DMA mappings".into()));
        }
        let end = map.address + map.size; // checked in parse
        if existing
            .iter()
            .any(|(s, l, _)| map.address < s.saturating_add(*l) && *s < end)
        {
            return Err(Failure::Errno(
                libc::EEXIST,
                format!("DMA mapping {:#x}+{:#x} overlaps", map.address, map.size),
            ));
        }
        let memory = match fds.pop() {
            Some(fd) => {
                let len = usize::try_from(map.size)
                    .map_err(|_| Failure::Errno(libc::EINVAL, "mapping too large".into()))?;
                let mm =
                    MappedMemory::map_fd(fd, map.offset, len, map.flags & map_flags::WRITE != 0)
                        .map_err(|e| Failure::Device(DeviceError::Io(e)))?;
                let mm = Arc::new(mm);
                self.memory
                    .table
                    .add_mapped(map.address, map.flags, mm.clone())?;
                Some(mm)
            }
            None => {
                self.memory
                    .table
                    .add_remote(map.address, map.size, map.flags)?;
                None
            }
        };
        let mapping = DmaMapping {
            iova: map.address,
            len: map.size,
            flags: map.flags,
        };
        if let Err(e) = self.device.dma_map(DmaRegion { mapping, memory }) {
            self.memory.table.remove(map.address, map.size);
            return Err(e.into());
        }
        Ok(self.reply_to(h).finish())
    }

    fn set_irqs(&mut self, h: &Header, body: &[u8], fds: Vec<OwnedFd>) -> Result<usize, Failure> {
        if fds.len() > self.options.max_msg_fds as usize {
            return Err(ProtocolError::WrongFdCount {
                what: "DEVICE_SET_IRQS",
                expected: self.options.max_msg_fds as usize,
                got: fds.len(),
            }
            .into());
        }
        let s = SetIrqsMsg::parse(body, fds.len(), self.max_vectors)?;
        let action = match s.flags & irq_set_flags::ACTION_MASK_ALL {
            irq_set_flags::ACTION_MASK => IrqAction::Mask,
            irq_set_flags::ACTION_UNMASK => IrqAction::Unmask,
            _ => IrqAction::Trigger,
        };
        let count = s.count as usize;
        let (data, fds) = match s.flags & irq_set_flags::DATA_MASK {
            irq_set_flags::DATA_BOOL => (IrqData::Bool(s.bools), Vec::new()),
            irq_set_flags::DATA_EVENTFD => {
                let with = !fds.is_empty();
                let fds: Vec<Option<OwnedFd>> = if with {
                    fds.into_iter().map(Some).collect()
                } else {
                    (0..count).map(|_| None).collect()
                };
                (IrqData::Eventfd(vec![with; count]), fds)
            }
            _ => (IrqData::None, Vec::new()),
        };
        self.device.set_irqs(IrqSetRequest {
            setup: IrqSetup {
                index: s.index,
                start: s.start,
                count: s.count,
                action,
                data,
            },
            fds,
        })?;
        Ok(self.reply_to(h).finish())
    }
}
