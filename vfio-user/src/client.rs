//! The vfio-user client: drives a remote server, and serves the server's `DMA_READ`/`DMA_WRITE`
//! requests from a local [`GuestMemory`] while it waits for replies.
//!
//! [`RemoteDevice`] wraps a [`Client`] as a [`Device`], so the recorder can proxy a remote
//! vfio-user device; a DMA observer hook reports every byte the server moves by message DMA.

use std::io;
use std::os::fd::{AsRawFd, BorrowedFd, RawFd};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use hwrr_device::{
    Device, DeviceDescription, DeviceError, DeviceIdentity, DmaMapping, DmaRegion, GuestMemory,
    IrqAction, IrqData, IrqInfo, IrqSetRequest, RegionInfo, RegionKind,
};
use hwrr_formats::{region_flags, region_index};

use crate::protocol::{
    self, flags, irq_set_flags, map_flags, unmap_flags, Capabilities, Command, DeviceInfo,
    DmaAccess, DmaLayout, DmaMap, DmaUnmap, IrqInfoMsg, MessageBuilder, MultiWrite, ProtocolError,
    RegionAccess, RegionInfoMsg, SetIrqsMsg, Version, WriteMulti,
};
use crate::wire::{self, Incoming, MsgReader, ReadError};

/// Direction of a server-initiated DMA.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum DmaDirection {
    /// The device read guest memory (`DMA_READ`).
    Read,
    /// The device wrote guest memory (`DMA_WRITE`).
    Write,
}

/// Called for every server-initiated DMA the client served: direction, IOVA, bytes moved.
pub type DmaObserver = Box<dyn Fn(DmaDirection, u64, &[u8]) + Send + Sync>;

/// Client errors.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// Socket failure.
    #[error("vfio-user socket: {0}")]
    Io(#[from] io::Error),
    /// A malformed message from the server.
    #[error("bad message from the server: {0}")]
    Protocol(#[from] ProtocolError),
    /// The server answered with an error.
    #[error("server answered {command} with errno {errno} ({})", io::Error::from_raw_os_error(*errno))]
    Remote {
        /// The command.
        command: Command,
        /// The errno.
        errno: i32,
    },
    /// The server closed the connection.
    #[error("the server closed the connection")]
    Closed,
    /// No reply within the timeout.
    #[error("no reply to {0} within the timeout")]
    Timeout(Command),
    /// A request the caller got wrong.
    #[error("invalid request: {0}")]
    Invalid(String),
}

impl ClientError {
    /// The errno this error stands for.
    pub fn errno(&self) -> i32 {
        match self {
            ClientError::Io(e) => e.raw_os_error().unwrap_or(libc::EIO),
            ClientError::Remote { errno, .. } => *errno,
            ClientError::Timeout(_) => libc::ETIMEDOUT,
            ClientError::Invalid(_) | ClientError::Protocol(_) => libc::EINVAL,
            ClientError::Closed => libc::ENOTCONN,
        }
    }
}

impl From<ClientError> for DeviceError {
    fn from(e: ClientError) -> Self {
        match e {
            ClientError::Io(e) => DeviceError::Io(e),
            ClientError::Invalid(s) => DeviceError::Invalid(s),
            other => DeviceError::Io(io::Error::from_raw_os_error(other.errno())),
        }
    }
}

/// Result of a client call.
pub type Result<T> = std::result::Result<T, ClientError>;

/// Client settings.
#[derive(Clone, Debug)]
pub struct ClientOptions {
    /// The layout the client expects for server-initiated DMA. [`DmaLayout::Qemu`] also makes the
    /// client introduce itself like QEMU (VERSION 0.0 with `write_multiple`), so a server in
    /// `Auto` mode picks that layout; `Spec` and `Auto` introduce themselves as 0.1.
    pub dma_layout: DmaLayout,
    /// Largest data count we accept from the server in one message.
    pub max_data_xfer_size: u32,
    /// Most descriptors we accept in one message.
    pub max_msg_fds: u32,
    /// Offer `REGION_WRITE_MULTI` support.
    pub write_multiple: bool,
    /// How long to wait for a reply; `None` waits as long as the server takes (a server that dies
    /// closes the socket, which ends the wait). A timeout costs a `poll` per request.
    pub reply_timeout: Option<Duration>,
}

impl Default for ClientOptions {
    fn default() -> Self {
        ClientOptions {
            dma_layout: DmaLayout::Spec,
            max_data_xfer_size: protocol::DEFAULT_MAX_DATA_XFER,
            max_msg_fds: protocol::MAX_MSG_FDS,
            write_multiple: true,
            reply_timeout: None,
        }
    }
}

/// A reply: header and body.
#[derive(Debug)]
pub struct Reply {
    /// The reply header.
    pub header: crate::protocol::Header,
    /// The reply body.
    pub body: Vec<u8>,
}

/// A connection to a vfio-user server.
pub struct Client {
    stream: UnixStream,
    reader: MsgReader,
    options: ClientOptions,
    layout: DmaLayout,
    next_id: u16,
    send_buf: Vec<u8>,
    reply_buf: Vec<u8>,
    incoming: Incoming,
    server_caps: Capabilities,
    server_minor: u16,
    memory: Option<Arc<dyn GuestMemory>>,
    observer: Option<DmaObserver>,
    dma_served: u64,
}

impl std::fmt::Debug for Client {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Client")
            .field("layout", &self.layout)
            .field("server_caps", &self.server_caps)
            .field("server_minor", &self.server_minor)
            .finish_non_exhaustive()
    }
}

impl Client {
    /// Connects to the socket at `path` and negotiates the version.
    pub fn connect(path: impl AsRef<Path>, options: ClientOptions) -> Result<Client> {
        let stream = UnixStream::connect(path)?;
        Self::from_stream(stream, options)
    }

    /// Negotiates the version over an already-connected stream.
    pub fn from_stream(stream: UnixStream, options: ClientOptions) -> Result<Client> {
        let max_msg = options
            .max_data_xfer_size
            .clamp(4096, protocol::MAX_MAX_DATA_XFER) as usize
            + protocol::MESSAGE_OVERHEAD;
        // vfio-user servers send no descriptors to clients.
        let reader = MsgReader::with_fds(std::os::fd::AsFd::as_fd(&stream), max_msg, false);
        let layout = match options.dma_layout {
            DmaLayout::Qemu => DmaLayout::Qemu,
            _ => DmaLayout::Spec,
        };
        let mut c = Client {
            stream,
            reader,
            options,
            layout,
            next_id: 0,
            send_buf: Vec::with_capacity(4096),
            reply_buf: Vec::with_capacity(4096),
            incoming: Incoming::default(),
            server_caps: Capabilities::default(),
            server_minor: 0,
            memory: None,
            observer: None,
            dma_served: 0,
        };
        c.negotiate()?;
        Ok(c)
    }

    fn negotiate(&mut self) -> Result<()> {
        let ours = Capabilities {
            max_msg_fds: self.options.max_msg_fds.min(protocol::MAX_MSG_FDS),
            max_data_xfer_size: self.options.max_data_xfer_size,
            max_dma_maps: protocol::DEFAULT_MAX_DMA_MAPS,
            pgsizes: protocol::DEFAULT_PGSIZES,
            write_multiple: self.options.write_multiple || self.layout == DmaLayout::Qemu,
            migration: None,
        };
        let minor = if self.layout == DmaLayout::Qemu {
            0
        } else {
            protocol::MINOR_VERSION
        };
        let v = Version {
            major: protocol::MAJOR_VERSION,
            minor,
            data: Some(ours.to_json()),
        };
        let id = self.alloc_id();
        let mut m = MessageBuilder::new(&mut self.send_buf, id, Command::Version as u16, 0, 0);
        v.encode_body(&mut m);
        let n = m.finish();
        self.send_raw(n, &[])?;
        self.wait_reply(id, Command::Version)?;
        let reply = Version::parse(&self.incoming.body)?;
        if reply.major != protocol::MAJOR_VERSION || reply.minor > minor {
            return Err(ProtocolError::IncompatibleVersion {
                major: reply.major,
                minor: reply.minor,
            }
            .into());
        }
        self.server_caps = reply.capabilities()?;
        self.server_minor = reply.minor;
        Ok(())
    }

    /// The server's capabilities.
    pub fn server_capabilities(&self) -> &Capabilities {
        &self.server_caps
    }

    /// The negotiated minor version.
    pub fn minor_version(&self) -> u16 {
        self.server_minor
    }

    /// The DMA layout this client serves.
    pub fn dma_layout(&self) -> DmaLayout {
        self.layout
    }

    /// Server-initiated DMA requests served so far.
    pub fn dma_requests_served(&self) -> u64 {
        self.dma_served
    }

    /// Sets the memory that serves the server's `DMA_READ`/`DMA_WRITE`.
    pub fn set_memory(&mut self, memory: Arc<dyn GuestMemory>) {
        self.memory = Some(memory);
    }

    /// Sets a hook told about every server-initiated DMA served.
    pub fn set_dma_observer(&mut self, observer: DmaObserver) {
        self.observer = Some(observer);
    }

    fn alloc_id(&mut self) -> u16 {
        let id = self.next_id;
        self.next_id = self.next_id.wrapping_add(1);
        id
    }

    fn send_raw(&mut self, len: usize, fds: &[RawFd]) -> Result<()> {
        wire::send_with_fds(self.stream.as_raw_fd(), &self.send_buf[..len], fds)?;
        Ok(())
    }

    /// Sends a raw request (any command, flags and body) and returns the reply. For tests and
    /// tools; the typed methods below are the normal interface.
    pub fn request_raw(
        &mut self,
        command: u16,
        flags: u32,
        body: &[u8],
        fds: &[BorrowedFd<'_>],
    ) -> Result<Reply> {
        let id = self.alloc_id();
        let n = protocol::encode_message(&mut self.send_buf, id, command, flags, 0, body);
        let raw: Vec<RawFd> = fds.iter().map(|f| f.as_raw_fd()).collect();
        self.send_raw(n, &raw)?;
        let cmd = Command::from_u16(command).unwrap_or(Command::Version);
        self.wait_any_reply(id, cmd)?;
        Ok(Reply {
            header: self.incoming.header,
            body: self.incoming.body.clone(),
        })
    }

    /// Waits for the reply to `id` (serving DMA meanwhile); errors on an error reply. The reply is
    /// left in `self.incoming`.
    fn wait_reply(&mut self, id: u16, cmd: Command) -> Result<()> {
        self.wait_any_reply(id, cmd)?;
        if let Some(errno) = self.incoming.header.error() {
            return Err(ClientError::Remote {
                command: cmd,
                errno,
            });
        }
        Ok(())
    }

    fn wait_any_reply(&mut self, id: u16, cmd: Command) -> Result<()> {
        let deadline = self.options.reply_timeout.map(|t| Instant::now() + t);
        loop {
            match self.reader.read_until(&mut self.incoming, deadline) {
                Ok(()) => {}
                Err(ReadError::TimedOut) => {
                    if deadline.is_some_and(|d| Instant::now() >= d) {
                        return Err(ClientError::Timeout(cmd));
                    }
                    continue;
                }
                Err(ReadError::Closed) => return Err(ClientError::Closed),
                Err(ReadError::Framing(e)) => return Err(e.into()),
                Err(ReadError::Io(e)) => return Err(e.into()),
            }
            if self.incoming.header.is_reply() {
                if self.incoming.header.id == id {
                    return Ok(());
                }
                // A reply to something else (a posted request the server answered anyway).
                continue;
            }
            self.serve_server_request()?;
        }
    }

    /// Answers one server-initiated request sitting in `self.incoming`.
    fn serve_server_request(&mut self) -> Result<()> {
        let h = self.incoming.header;
        let max = self.options.max_data_xfer_size;
        let result: std::result::Result<usize, i32> = if !self.incoming.fds.is_empty() {
            self.incoming.fds.clear();
            Err(libc::EINVAL)
        } else {
            match Command::from_u16(h.command) {
                Some(Command::DmaRead) => {
                    match DmaAccess::parse_read_request(&self.incoming.body, self.layout, max) {
                        Err(e) => Err(e.errno()),
                        Ok(req) => self.serve_dma_read(h.id, req.address, req.count as usize),
                    }
                }
                Some(Command::DmaWrite) => {
                    let body = std::mem::take(&mut self.incoming.body);
                    let r = match DmaAccess::parse_with_data(&body, self.layout, max) {
                        Err(e) => Err(e.errno()),
                        Ok(req) => self.serve_dma_write(h.id, req.address, req.data),
                    };
                    self.incoming.body = body;
                    r
                }
                Some(_) => Err(libc::ENOTSUP),
                None => Err(libc::ENOSYS),
            }
        };
        if h.no_reply() {
            return Ok(());
        }
        let n = match result {
            Ok(n) => n,
            Err(errno) => MessageBuilder::new(
                &mut self.reply_buf,
                h.id,
                h.command,
                flags::TYPE_REPLY | flags::ERROR,
                errno as u32,
            )
            .finish(),
        };
        wire::send_with_fds(self.stream.as_raw_fd(), &self.reply_buf[..n], &[])?;
        Ok(())
    }

    fn serve_dma_read(
        &mut self,
        id: u16,
        addr: u64,
        count: usize,
    ) -> std::result::Result<usize, i32> {
        let Some(mem) = self.memory.clone() else {
            return Err(libc::EFAULT);
        };
        let layout = self.layout;
        let mut m = MessageBuilder::new(
            &mut self.reply_buf,
            id,
            Command::DmaRead as u16,
            flags::TYPE_REPLY,
            0,
        );
        m.u64(addr);
        match layout {
            DmaLayout::Qemu => {
                m.u32(count as u32);
            }
            _ => {
                m.u64(count as u64);
            }
        }
        let data = m.zeroes(count);
        mem.read(addr, data).map_err(|e| e.errno())?;
        if let Some(obs) = &self.observer {
            obs(DmaDirection::Read, addr, data);
        }
        if layout == DmaLayout::Qemu {
            // QEMU's reply is sizeof(VFIOUserDMARW) + count: 4 bytes of tail padding.
            m.u32(0);
        }
        self.dma_served += 1;
        Ok(m.finish())
    }

    fn serve_dma_write(
        &mut self,
        id: u16,
        addr: u64,
        data: &[u8],
    ) -> std::result::Result<usize, i32> {
        let Some(mem) = self.memory.clone() else {
            return Err(libc::EFAULT);
        };
        mem.write(addr, data).map_err(|e| e.errno())?;
        if let Some(obs) = &self.observer {
            obs(DmaDirection::Write, addr, data);
        }
        self.dma_served += 1;
        let mut m = MessageBuilder::new(
            &mut self.reply_buf,
            id,
            Command::DmaWrite as u16,
            flags::TYPE_REPLY,
            0,
        );
        if self.layout != DmaLayout::Qemu {
            m.u64(addr).u64(data.len() as u64);
        }
        Ok(m.finish())
    }

    fn call(
        &mut self,
        cmd: Command,
        fds: &[RawFd],
        body: impl FnOnce(&mut MessageBuilder<'_>),
    ) -> Result<()> {
        let id = self.alloc_id();
        let mut m = MessageBuilder::new(&mut self.send_buf, id, cmd as u16, 0, 0);
        body(&mut m);
        let n = m.finish();
        self.send_raw(n, fds)?;
        self.wait_reply(id, cmd)
    }

    /// `DEVICE_GET_INFO`.
    pub fn device_info(&mut self) -> Result<DeviceInfo> {
        self.call(Command::DeviceGetInfo, &[], |m| {
            DeviceInfo {
                argsz: DeviceInfo::SIZE as u32,
                ..Default::default()
            }
            .encode_body(m)
        })?;
        Ok(DeviceInfo::parse(&self.incoming.body)?)
    }

    /// `DEVICE_GET_REGION_INFO`, asking again with a larger `argsz` when the region has
    /// capabilities.
    pub fn region_info(&mut self, index: u32) -> Result<RegionInfoMsg> {
        let mut argsz = RegionInfoMsg::SIZE as u32;
        for _ in 0..2 {
            self.call(Command::DeviceGetRegionInfo, &[], |m| {
                RegionInfoMsg {
                    argsz,
                    index,
                    ..Default::default()
                }
                .encode_request(m)
            })?;
            self.incoming.fds.clear();
            let info = RegionInfoMsg::parse_reply(&self.incoming.body)?;
            if info.argsz <= argsz || info.argsz as usize > protocol::MESSAGE_OVERHEAD {
                return Ok(info);
            }
            argsz = info.argsz;
        }
        Err(ClientError::Invalid(format!(
            "region {index} info keeps growing"
        )))
    }

    /// `DEVICE_GET_IRQ_INFO`.
    pub fn irq_info(&mut self, index: u32) -> Result<IrqInfoMsg> {
        self.call(Command::DeviceGetIrqInfo, &[], |m| {
            IrqInfoMsg {
                argsz: IrqInfoMsg::SIZE as u32,
                index,
                ..Default::default()
            }
            .encode_body(m)
        })?;
        Ok(IrqInfoMsg::parse(&self.incoming.body)?)
    }

    /// `DEVICE_SET_IRQS`. With [`IrqData::Eventfd`], `fds` holds one descriptor per vector (or
    /// none, to disconnect all of them).
    pub fn set_irqs(
        &mut self,
        index: u32,
        start: u32,
        count: u32,
        action: IrqAction,
        data: &IrqData,
        fds: &[BorrowedFd<'_>],
    ) -> Result<()> {
        let action_bit = match action {
            IrqAction::Mask => irq_set_flags::ACTION_MASK,
            IrqAction::Unmask => irq_set_flags::ACTION_UNMASK,
            IrqAction::Trigger => irq_set_flags::ACTION_TRIGGER,
        };
        let (data_bit, bools) = match data {
            IrqData::None => (irq_set_flags::DATA_NONE, Vec::new()),
            IrqData::Bool(b) => (irq_set_flags::DATA_BOOL, b.clone()),
            IrqData::Eventfd(_) => (irq_set_flags::DATA_EVENTFD, Vec::new()),
        };
        if data_bit == irq_set_flags::DATA_BOOL && bools.len() != count as usize {
            return Err(ClientError::Invalid("one bool per vector".into()));
        }
        if !fds.is_empty()
            && (data_bit != irq_set_flags::DATA_EVENTFD || fds.len() != count as usize)
        {
            return Err(ClientError::Invalid("one eventfd per vector".into()));
        }
        // The server takes at most `max_msg_fds` descriptors per message: wire longer runs of
        // vectors in consecutive pieces.
        let max_fds = self.server_caps.max_msg_fds.max(1) as usize;
        if fds.len() > max_fds {
            for (k, piece) in fds.chunks(max_fds).enumerate() {
                let first = start + (k * max_fds) as u32;
                let data = IrqData::Eventfd(vec![true; piece.len()]);
                self.set_irqs(index, first, piece.len() as u32, action, &data, piece)?;
            }
            return Ok(());
        }
        let msg = SetIrqsMsg {
            argsz: (SetIrqsMsg::SIZE + bools.len()) as u32,
            flags: action_bit | data_bit,
            index,
            start,
            count,
            bools,
        };
        let raw: Vec<RawFd> = fds.iter().map(|f| f.as_raw_fd()).collect();
        self.call(Command::DeviceSetIrqs, &raw, |m| msg.encode_body(m))
    }

    /// `REGION_READ` of `data.len()` bytes.
    pub fn region_read(&mut self, region: u32, offset: u64, data: &mut [u8]) -> Result<()> {
        let count = self.check_count(data.len())?;
        self.call(Command::RegionRead, &[], |m| {
            m.u64(offset).u32(region).u32(count);
        })?;
        let r = RegionAccess::parse_with_data(&self.incoming.body, u32::MAX)?;
        if r.data.len() != data.len() {
            return Err(ProtocolError::WrongLength {
                what: "REGION_READ reply",
                expected: data.len(),
                got: r.data.len(),
            }
            .into());
        }
        data.copy_from_slice(r.data);
        Ok(())
    }

    fn check_count(&self, len: usize) -> Result<u32> {
        let max = self.server_caps.max_data_xfer_size as usize;
        if len > max {
            return Err(ClientError::Invalid(format!(
                "{len} bytes exceed the server's max_data_xfer_size {max}"
            )));
        }
        Ok(len as u32)
    }

    /// `REGION_WRITE`, waiting for the reply.
    pub fn region_write(&mut self, region: u32, offset: u64, data: &[u8]) -> Result<()> {
        let count = self.check_count(data.len())?;
        self.call(Command::RegionWrite, &[], |m| {
            RegionAccess {
                offset,
                region,
                count,
                data,
            }
            .encode_body(m)
        })
    }

    /// A posted `REGION_WRITE` (no reply; a later request's reply orders it).
    pub fn region_write_posted(&mut self, region: u32, offset: u64, data: &[u8]) -> Result<()> {
        let count = self.check_count(data.len())?;
        let id = self.alloc_id();
        let mut m = MessageBuilder::new(
            &mut self.send_buf,
            id,
            Command::RegionWrite as u16,
            flags::NO_REPLY,
            0,
        );
        RegionAccess {
            offset,
            region,
            count,
            data,
        }
        .encode_body(&mut m);
        let n = m.finish();
        self.send_raw(n, &[])
    }

    /// A posted `REGION_WRITE_MULTI` (as QEMU sends it).
    pub fn write_multi(&mut self, writes: &[MultiWrite<'_>]) -> Result<()> {
        if !self.server_caps.write_multiple {
            return Err(ClientError::Invalid(
                "the server did not offer write_multiple".into(),
            ));
        }
        let id = self.alloc_id();
        let mut m = MessageBuilder::new(
            &mut self.send_buf,
            id,
            Command::RegionWriteMulti as u16,
            flags::NO_REPLY,
            0,
        );
        WriteMulti::encode_body(writes, &mut m)?;
        let n = m.finish();
        self.send_raw(n, &[])
    }

    /// `DMA_MAP`; with `fd` the server maps `fd` at `fd_offset`, without it the server uses
    /// `DMA_READ`/`DMA_WRITE` messages.
    pub fn dma_map(
        &mut self,
        iova: u64,
        size: u64,
        map_flags_bits: u32,
        fd: Option<(BorrowedFd<'_>, u64)>,
    ) -> Result<()> {
        let (raw, offset) = match fd {
            Some((f, o)) => (vec![f.as_raw_fd()], o),
            None => (Vec::new(), 0),
        };
        let map = DmaMap {
            argsz: DmaMap::SIZE as u32,
            flags: map_flags_bits & (map_flags::READ | map_flags::WRITE),
            offset,
            address: iova,
            size,
        };
        self.call(Command::DmaMap, &raw, |m| map.encode_body(m))
    }

    /// `DMA_UNMAP` of one mapping.
    pub fn dma_unmap(&mut self, iova: u64, size: u64) -> Result<()> {
        let u = DmaUnmap {
            argsz: DmaUnmap::SIZE as u32,
            flags: 0,
            address: iova,
            size,
        };
        self.call(Command::DmaUnmap, &[], |m| u.encode_body(m))
    }

    /// `DMA_UNMAP` with the unmap-all flag.
    pub fn dma_unmap_all(&mut self) -> Result<()> {
        let u = DmaUnmap {
            argsz: DmaUnmap::SIZE as u32,
            flags: unmap_flags::ALL,
            address: 0,
            size: 0,
        };
        self.call(Command::DmaUnmap, &[], |m| u.encode_body(m))
    }

    /// `DEVICE_RESET`.
    pub fn reset(&mut self) -> Result<()> {
        self.call(Command::DeviceReset, &[], |_| {})
    }

    /// Waits up to `timeout` for server-initiated requests and serves them (for servers that DMA
    /// outside of a request). Returns how many were served.
    pub fn poll_server_requests(&mut self, timeout: Duration) -> Result<u64> {
        let deadline = Instant::now() + timeout;
        let before = self.dma_served;
        loop {
            match self.reader.read_until(&mut self.incoming, Some(deadline)) {
                Ok(()) => {
                    if !self.incoming.header.is_reply() {
                        self.serve_server_request()?;
                    }
                }
                Err(ReadError::TimedOut) => {
                    if Instant::now() >= deadline {
                        return Ok(self.dma_served - before);
                    }
                }
                Err(ReadError::Closed) => return Err(ClientError::Closed),
                Err(ReadError::Framing(e)) => return Err(e.into()),
                Err(ReadError::Io(e)) => return Err(e.into()),
            }
        }
    }
}

/// A remote vfio-user device as a [`Device`].
pub struct RemoteDevice {
    client: Client,
    desc: DeviceDescription,
}

impl std::fmt::Debug for RemoteDevice {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RemoteDevice")
            .field("client", &self.client)
            .field("identity", &self.desc.identity)
            .finish_non_exhaustive()
    }
}

/// Largest ROM the wrapper reads at start.
const MAX_ROM: u64 = 16 << 20;

impl RemoteDevice {
    /// Reads the device's description (infos, config space, ROM) through `client`.
    pub fn new(mut client: Client) -> Result<RemoteDevice> {
        let info = client.device_info()?;
        let mut regions = Vec::new();
        let mut config_size = 0u64;
        for index in 0..info.num_regions.min(64) {
            let r = client.region_info(index)?;
            if r.size == 0 {
                continue;
            }
            if index == region_index::CONFIG {
                config_size = r.size;
            }
            regions.push((index, r.size, r.flags));
        }
        let cfg_len = config_size.clamp(0, 4096) as usize;
        let mut config = vec![0u8; cfg_len];
        read_chunked(&mut client, region_index::CONFIG, 0, &mut config)?;
        let regions: Vec<RegionInfo> = regions
            .into_iter()
            .map(|(index, size, flags)| RegionInfo {
                index,
                kind: RegionKind::of_vfio_region(index, &config),
                size,
                flags: flags & !region_flags::CAPS,
                alias_of: None,
            })
            .collect();
        let mut irqs = Vec::new();
        for index in 0..info.num_irqs.min(16) {
            let i = client.irq_info(index)?;
            if i.count > 0 {
                irqs.push(IrqInfo {
                    index,
                    count: i.count,
                    flags: i.flags,
                });
            }
        }
        let rom = match regions.iter().find(|r| r.index == region_index::ROM) {
            Some(r) if r.size <= MAX_ROM => {
                let mut rom = vec![0u8; r.size as usize];
                // QEMU's x-vfio-user-server refuses ROM reads until the guest maps the ROM BAR;
                // the guest's own ROM reads are recorded as accesses either way.
                read_chunked(&mut client, region_index::ROM, 0, &mut rom)
                    .ok()
                    .map(|()| rom)
            }
            _ => None,
        };
        let identity = DeviceIdentity::from_config_space(&config, None).unwrap_or_default();
        Ok(RemoteDevice {
            client,
            desc: DeviceDescription {
                identity,
                config_space: config,
                regions,
                irqs,
                rom,
            },
        })
    }

    /// The client underneath.
    pub fn client(&mut self) -> &mut Client {
        &mut self.client
    }

    /// Sets a hook told about every DMA the remote server does through messages.
    pub fn set_dma_observer(&mut self, observer: DmaObserver) {
        self.client.set_dma_observer(observer);
    }
}

fn read_chunked(client: &mut Client, region: u32, offset: u64, buf: &mut [u8]) -> Result<()> {
    let chunk = (client.server_capabilities().max_data_xfer_size as usize).clamp(4, 1 << 20);
    for (i, piece) in buf.chunks_mut(chunk).enumerate() {
        client.region_read(region, offset + (i * chunk) as u64, piece)?;
    }
    Ok(())
}

impl Device for RemoteDevice {
    fn describe(&self) -> DeviceDescription {
        self.desc.clone()
    }

    fn region_read(
        &mut self,
        region: u32,
        offset: u64,
        data: &mut [u8],
    ) -> hwrr_device::Result<()> {
        self.desc.check_access(region, offset, data.len())?;
        Ok(self.client.region_read(region, offset, data)?)
    }

    fn region_write(&mut self, region: u32, offset: u64, data: &[u8]) -> hwrr_device::Result<()> {
        self.desc.check_access(region, offset, data.len())?;
        Ok(self.client.region_write(region, offset, data)?)
    }

    fn config_read(&mut self, offset: u32, data: &mut [u8]) -> hwrr_device::Result<()> {
        self.client
            .region_read(region_index::CONFIG, offset as u64, data)?;
        Ok(())
    }

    fn config_write(&mut self, offset: u32, data: &[u8]) -> hwrr_device::Result<()> {
        self.client
            .region_write(region_index::CONFIG, offset as u64, data)?;
        let start = offset as usize;
        if let Some(end) = start.checked_add(data.len()) {
            if end <= self.desc.config_space.len() {
                // Keep the cached snapshot in step; read-only bits may differ until re-read.
                let mut fresh = vec![0u8; data.len()];
                if self
                    .client
                    .region_read(region_index::CONFIG, offset as u64, &mut fresh)
                    .is_ok()
                {
                    self.desc.config_space[start..end].copy_from_slice(&fresh);
                }
            }
        }
        Ok(())
    }

    fn set_irqs(&mut self, request: IrqSetRequest) -> hwrr_device::Result<()> {
        let s = &request.setup;
        let fds: Vec<BorrowedFd<'_>> = request
            .fds
            .iter()
            .filter_map(|f| f.as_ref().map(std::os::fd::AsFd::as_fd))
            .collect();
        if let IrqData::Eventfd(_) = s.data {
            if !fds.is_empty() && fds.len() != request.fds.len() {
                // vfio-user cannot mix wired and unwired vectors in one message: send runs.
                let mut i = 0usize;
                while i < request.fds.len() {
                    let wired = request.fds[i].is_some();
                    let mut j = i;
                    while j < request.fds.len() && request.fds[j].is_some() == wired {
                        j += 1;
                    }
                    let run: Vec<BorrowedFd<'_>> = request.fds[i..j]
                        .iter()
                        .filter_map(|f| f.as_ref().map(std::os::fd::AsFd::as_fd))
                        .collect();
                    self.client.set_irqs(
                        s.index,
                        s.start + i as u32,
                        (j - i) as u32,
                        s.action,
                        &s.data,
                        &run,
                    )?;
                    i = j;
                }
                return Ok(());
            }
        }
        Ok(self
            .client
            .set_irqs(s.index, s.start, s.count, s.action, &s.data, &fds)?)
    }

    fn dma_map(&mut self, region: DmaRegion) -> hwrr_device::Result<()> {
        let m = region.mapping;
        match region
            .memory
            .as_ref()
            .and_then(|mm| mm.fd().map(|fd| (fd, mm.fd_offset())))
        {
            Some((fd, off)) => self
                .client
                .dma_map(m.iova, m.len, m.flags, Some((fd, off)))?,
            None => self.client.dma_map(m.iova, m.len, m.flags, None)?,
        }
        Ok(())
    }

    fn dma_unmap(&mut self, mapping: DmaMapping) -> hwrr_device::Result<()> {
        if mapping.flags & hwrr_device::dma_flags::UNMAP_ALL != 0 {
            self.client.dma_unmap_all()?;
        } else {
            self.client.dma_unmap(mapping.iova, mapping.len)?;
        }
        Ok(())
    }

    fn reset(&mut self) -> hwrr_device::Result<()> {
        Ok(self.client.reset()?)
    }

    fn attach_memory(&mut self, memory: Arc<dyn GuestMemory>) {
        self.client.set_memory(memory);
    }
}
