//! vfio-user messages: the header, every command's body, parsing and encoding.
//!
//! Layouts follow `docs/vfio-user.rst` of nutanix/libvfio-user (little-endian, offsets from the end
//! of the 16-byte header). Parsers take the body (the bytes after the header, exactly as long as the
//! header's `size` says) and check every length, offset and count; they never panic and never
//! allocate more than the body they were given.

use std::fmt;

/// Size of the message header.
pub const HEADER_SIZE: usize = 16;
/// Protocol major version we speak.
pub const MAJOR_VERSION: u16 = 0;
/// Highest protocol minor version we speak.
pub const MINOR_VERSION: u16 = 1;
/// Default `max_data_xfer_size` (spec default).
pub const DEFAULT_MAX_DATA_XFER: u32 = 1 << 20;
/// The largest `max_data_xfer_size` we ever negotiate (QEMU's own ceiling).
pub const MAX_MAX_DATA_XFER: u32 = 64 << 20;
/// Default `max_msg_fds` when a peer does not say (spec default).
pub const DEFAULT_MAX_MSG_FDS: u32 = 1;
/// The most file descriptors we accept or send in one message.
pub const MAX_MSG_FDS: u32 = 16;
/// Default `max_dma_maps`.
pub const DEFAULT_MAX_DMA_MAPS: u32 = 65535;
/// Default page sizes (4 KiB).
pub const DEFAULT_PGSIZES: u64 = 4096;
/// Largest VERSION capability document we accept.
pub const MAX_VERSION_JSON: usize = 64 << 10;
/// Largest data item in one `REGION_WRITE_MULTI` entry (QEMU's `VFIO_USER_MULTI_DATA`).
pub const MULTI_DATA: usize = 8;
/// Most entries in one `REGION_WRITE_MULTI` (QEMU's `VFIO_USER_MULTI_MAX`).
pub const MULTI_MAX: u64 = 200;
/// Size of one `REGION_WRITE_MULTI` entry.
pub const MULTI_ENTRY_SIZE: usize = 16 + MULTI_DATA;
/// Bytes a message may carry beyond `max_data_xfer_size` (the largest fixed part: a DMA or region
/// access body, a region-info reply with capabilities, a VERSION document).
pub const MESSAGE_OVERHEAD: usize = MAX_VERSION_JSON + 64;

/// Header flag bits.
pub mod flags {
    /// Mask of the message type field.
    pub const TYPE_MASK: u32 = 0xf;
    /// Type: command.
    pub const TYPE_COMMAND: u32 = 0;
    /// Type: reply.
    pub const TYPE_REPLY: u32 = 1;
    /// The sender expects no reply.
    pub const NO_REPLY: u32 = 1 << 4;
    /// The reply carries an error (`error` field holds the errno).
    pub const ERROR: u32 = 1 << 5;
}

/// `VFIO_DEVICE_FLAGS_*` in `DEVICE_GET_INFO`.
pub mod device_flags {
    /// The device supports `DEVICE_RESET`.
    pub const RESET: u32 = 1 << 0;
    /// The device is a PCI device.
    pub const PCI: u32 = 1 << 1;
}

/// `VFIO_IRQ_SET_*` flag bits in `DEVICE_SET_IRQS`.
pub mod irq_set_flags {
    /// No data: act on every vector in the range.
    pub const DATA_NONE: u32 = 1 << 0;
    /// One byte per vector follows.
    pub const DATA_BOOL: u32 = 1 << 1;
    /// One eventfd per vector travels as `SCM_RIGHTS`.
    pub const DATA_EVENTFD: u32 = 1 << 2;
    /// Mask.
    pub const ACTION_MASK: u32 = 1 << 3;
    /// Unmask.
    pub const ACTION_UNMASK: u32 = 1 << 4;
    /// Trigger (or wire, with eventfds).
    pub const ACTION_TRIGGER: u32 = 1 << 5;
    /// All data-type bits.
    pub const DATA_MASK: u32 = DATA_NONE | DATA_BOOL | DATA_EVENTFD;
    /// All action bits.
    pub const ACTION_MASK_ALL: u32 = ACTION_MASK | ACTION_UNMASK | ACTION_TRIGGER;
}

/// `DMA_UNMAP` flag bits.
pub mod unmap_flags {
    /// Return a dirty bitmap (not supported: answered `ENOTSUP`).
    pub const GET_DIRTY_BITMAP: u32 = 1 << 0;
    /// Unmap every mapping (`address` and `size` must be zero).
    pub const ALL: u32 = 1 << 1;
}

/// `DMA_MAP` flag bits.
pub mod map_flags {
    /// The server may read the range.
    pub const READ: u32 = 1 << 0;
    /// The server may write the range.
    pub const WRITE: u32 = 1 << 1;
}

/// Region capability ids (`VFIO_REGION_INFO_CAP_*`).
pub mod region_cap {
    /// Sparse mmap areas.
    pub const SPARSE_MMAP: u16 = 1;
    /// Region type/subtype.
    pub const TYPE: u16 = 2;
}

/// Errors found while parsing or validating a message.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ProtocolError {
    /// Fewer bytes than the structure needs.
    #[error("{what}: need {need} bytes, got {got}")]
    Truncated {
        /// The structure being parsed.
        what: &'static str,
        /// Bytes needed.
        need: usize,
        /// Bytes present.
        got: usize,
    },
    /// More bytes than the structure has.
    #[error("{what}: expected {expected} bytes, got {got}")]
    WrongLength {
        /// The structure being parsed.
        what: &'static str,
        /// Bytes expected.
        expected: usize,
        /// Bytes present.
        got: usize,
    },
    /// A header whose `size` is smaller than a header.
    #[error("message size {0} is smaller than the header")]
    HeaderTooSmall(u32),
    /// A header whose `size` exceeds the negotiated maximum.
    #[error("message size {size} exceeds the maximum {max}")]
    MessageTooLarge {
        /// Claimed size.
        size: u32,
        /// Maximum accepted.
        max: usize,
    },
    /// A message type other than command or reply.
    #[error("unknown message type {0:#x}")]
    BadMessageType(u32),
    /// A command number we do not know.
    #[error("unknown command {0}")]
    UnknownCommand(u16),
    /// A command we know but do not implement.
    #[error("unsupported: {0}")]
    Unsupported(&'static str),
    /// A data count larger than allowed.
    #[error("{what}: count {count} exceeds the maximum {max}")]
    TooLarge {
        /// What was counted.
        what: &'static str,
        /// Count given.
        count: u64,
        /// Maximum allowed.
        max: u64,
    },
    /// A well-formed message with an invalid field.
    #[error("invalid {what}: {detail}")]
    Invalid {
        /// The field.
        what: &'static str,
        /// Why it is invalid.
        detail: String,
    },
    /// File descriptors that do not match what the message needs.
    #[error("{what}: expected {expected} file descriptors, got {got}")]
    WrongFdCount {
        /// The message.
        what: &'static str,
        /// Descriptors expected.
        expected: usize,
        /// Descriptors received.
        got: usize,
    },
    /// The peer's VERSION is incompatible.
    #[error("incompatible protocol version {major}.{minor}")]
    IncompatibleVersion {
        /// Major version offered.
        major: u16,
        /// Minor version offered.
        minor: u16,
    },
}

impl ProtocolError {
    /// The errno an error reply should carry.
    pub fn errno(&self) -> i32 {
        match self {
            ProtocolError::UnknownCommand(_) => libc::ENOSYS,
            ProtocolError::Unsupported(_) => libc::ENOTSUP,
            ProtocolError::TooLarge { .. } | ProtocolError::MessageTooLarge { .. } => libc::E2BIG,
            _ => libc::EINVAL,
        }
    }

    fn invalid(what: &'static str, detail: impl Into<String>) -> Self {
        ProtocolError::Invalid {
            what,
            detail: detail.into(),
        }
    }
}

/// Result of parsing.
pub type Result<T> = std::result::Result<T, ProtocolError>;

/// vfio-user command numbers.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[repr(u16)]
pub enum Command {
    /// `VFIO_USER_VERSION`.
    Version = 1,
    /// `VFIO_USER_DMA_MAP`.
    DmaMap = 2,
    /// `VFIO_USER_DMA_UNMAP`.
    DmaUnmap = 3,
    /// `VFIO_USER_DEVICE_GET_INFO`.
    DeviceGetInfo = 4,
    /// `VFIO_USER_DEVICE_GET_REGION_INFO`.
    DeviceGetRegionInfo = 5,
    /// `VFIO_USER_DEVICE_GET_REGION_IO_FDS`.
    DeviceGetRegionIoFds = 6,
    /// `VFIO_USER_DEVICE_GET_IRQ_INFO`.
    DeviceGetIrqInfo = 7,
    /// `VFIO_USER_DEVICE_SET_IRQS`.
    DeviceSetIrqs = 8,
    /// `VFIO_USER_REGION_READ`.
    RegionRead = 9,
    /// `VFIO_USER_REGION_WRITE`.
    RegionWrite = 10,
    /// `VFIO_USER_DMA_READ` (server to client).
    DmaRead = 11,
    /// `VFIO_USER_DMA_WRITE` (server to client).
    DmaWrite = 12,
    /// `VFIO_USER_DEVICE_RESET`.
    DeviceReset = 13,
    /// `VFIO_USER_DIRTY_PAGES` (old migration interface).
    DirtyPages = 14,
    /// `VFIO_USER_REGION_WRITE_MULTI`.
    RegionWriteMulti = 15,
    /// `VFIO_USER_DEVICE_FEATURE`.
    DeviceFeature = 16,
    /// `VFIO_USER_MIG_DATA_READ`.
    MigDataRead = 17,
    /// `VFIO_USER_MIG_DATA_WRITE`.
    MigDataWrite = 18,
}

impl Command {
    /// The command with this number.
    pub fn from_u16(v: u16) -> Option<Command> {
        use Command::*;
        Some(match v {
            1 => Version,
            2 => DmaMap,
            3 => DmaUnmap,
            4 => DeviceGetInfo,
            5 => DeviceGetRegionInfo,
            6 => DeviceGetRegionIoFds,
            7 => DeviceGetIrqInfo,
            8 => DeviceSetIrqs,
            9 => RegionRead,
            10 => RegionWrite,
            11 => DmaRead,
            12 => DmaWrite,
            13 => DeviceReset,
            14 => DirtyPages,
            15 => RegionWriteMulti,
            16 => DeviceFeature,
            17 => MigDataRead,
            18 => MigDataWrite,
            _ => return None,
        })
    }
}

impl fmt::Display for Command {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(self, f)
    }
}

fn u16_at(b: &[u8], o: usize) -> u16 {
    u16::from_le_bytes([b[o], b[o + 1]])
}
fn u32_at(b: &[u8], o: usize) -> u32 {
    u32::from_le_bytes([b[o], b[o + 1], b[o + 2], b[o + 3]])
}
fn u64_at(b: &[u8], o: usize) -> u64 {
    let mut a = [0u8; 8];
    a.copy_from_slice(&b[o..o + 8]);
    u64::from_le_bytes(a)
}

fn need(what: &'static str, body: &[u8], n: usize) -> Result<()> {
    if body.len() < n {
        return Err(ProtocolError::Truncated {
            what,
            need: n,
            got: body.len(),
        });
    }
    Ok(())
}

fn exact(what: &'static str, body: &[u8], n: usize) -> Result<()> {
    need(what, body, n)?;
    if body.len() != n {
        return Err(ProtocolError::WrongLength {
            what,
            expected: n,
            got: body.len(),
        });
    }
    Ok(())
}

/// The 16-byte header in front of every message.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Header {
    /// Message id: a reply carries its command's id.
    pub id: u16,
    /// Command number (see [`Command`]).
    pub command: u16,
    /// Size of the whole message, header included.
    pub size: u32,
    /// Type and flag bits (see [`flags`]).
    pub flags: u32,
    /// Errno of an error reply.
    pub error: u32,
}

impl Header {
    /// Parses a header from the first 16 bytes of `b` (extra bytes are ignored).
    pub fn parse(b: &[u8]) -> Result<Header> {
        need("header", b, HEADER_SIZE)?;
        Ok(Header {
            id: u16_at(b, 0),
            command: u16_at(b, 2),
            size: u32_at(b, 4),
            flags: u32_at(b, 8),
            error: u32_at(b, 12),
        })
    }

    /// Checks that the header can frame a message: a size between the header size and `max_size`
    /// and a known message type. A header that fails cannot be skipped reliably.
    pub fn validate_framing(&self, max_size: usize) -> Result<()> {
        if (self.size as usize) < HEADER_SIZE {
            return Err(ProtocolError::HeaderTooSmall(self.size));
        }
        if self.size as usize > max_size {
            return Err(ProtocolError::MessageTooLarge {
                size: self.size,
                max: max_size,
            });
        }
        let t = self.flags & flags::TYPE_MASK;
        if t != flags::TYPE_COMMAND && t != flags::TYPE_REPLY {
            return Err(ProtocolError::BadMessageType(t));
        }
        Ok(())
    }

    /// The header's encoding.
    pub fn to_bytes(&self) -> [u8; HEADER_SIZE] {
        let mut b = [0u8; HEADER_SIZE];
        b[0..2].copy_from_slice(&self.id.to_le_bytes());
        b[2..4].copy_from_slice(&self.command.to_le_bytes());
        b[4..8].copy_from_slice(&self.size.to_le_bytes());
        b[8..12].copy_from_slice(&self.flags.to_le_bytes());
        b[12..16].copy_from_slice(&self.error.to_le_bytes());
        b
    }

    /// Whether this is a reply.
    pub fn is_reply(&self) -> bool {
        self.flags & flags::TYPE_MASK == flags::TYPE_REPLY
    }

    /// Whether the sender wants no reply.
    pub fn no_reply(&self) -> bool {
        self.flags & flags::NO_REPLY != 0
    }

    /// The errno of an error reply, or `None`.
    pub fn error(&self) -> Option<i32> {
        if self.flags & flags::ERROR != 0 {
            Some(if self.error == 0 {
                libc::EIO
            } else {
                self.error as i32
            })
        } else {
            None
        }
    }

    /// Body length (size minus header), saturating at zero.
    pub fn body_len(&self) -> usize {
        (self.size as usize).saturating_sub(HEADER_SIZE)
    }
}

/// Builds one message in a reusable buffer: header first, body appended, size patched at the end.
#[derive(Debug)]
pub struct MessageBuilder<'a> {
    buf: &'a mut Vec<u8>,
}

impl<'a> MessageBuilder<'a> {
    /// Clears `buf` and starts a message.
    pub fn new(buf: &'a mut Vec<u8>, id: u16, command: u16, flags: u32, error: u32) -> Self {
        buf.clear();
        let h = Header {
            id,
            command,
            size: 0,
            flags,
            error,
        };
        buf.extend_from_slice(&h.to_bytes());
        MessageBuilder { buf }
    }

    /// Appends a little-endian u16.
    pub fn u16(&mut self, v: u16) -> &mut Self {
        self.buf.extend_from_slice(&v.to_le_bytes());
        self
    }
    /// Appends a little-endian u32.
    pub fn u32(&mut self, v: u32) -> &mut Self {
        self.buf.extend_from_slice(&v.to_le_bytes());
        self
    }
    /// Appends a little-endian u64.
    pub fn u64(&mut self, v: u64) -> &mut Self {
        self.buf.extend_from_slice(&v.to_le_bytes());
        self
    }
    /// Appends raw bytes.
    pub fn bytes(&mut self, v: &[u8]) -> &mut Self {
        self.buf.extend_from_slice(v);
        self
    }
    /// Appends `n` zero bytes and returns them for filling.
    pub fn zeroes(&mut self, n: usize) -> &mut [u8] {
        let at = self.buf.len();
        self.buf.resize(at + n, 0);
        &mut self.buf[at..]
    }

    /// Patches the size field. Returns the message length.
    pub fn finish(self) -> usize {
        let len = self.buf.len();
        let size = u32::try_from(len).unwrap_or(u32::MAX);
        self.buf[4..8].copy_from_slice(&size.to_le_bytes());
        len
    }
}

/// Appends a whole message (header plus `body`) to `buf` after clearing it.
pub fn encode_message(
    buf: &mut Vec<u8>,
    id: u16,
    command: u16,
    flags: u32,
    error: u32,
    body: &[u8],
) -> usize {
    let mut m = MessageBuilder::new(buf, id, command, flags, error);
    m.bytes(body);
    m.finish()
}

/// Negotiated or offered capabilities (the `capabilities` object of VERSION).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Capabilities {
    /// Most file descriptors the sender accepts in one message.
    pub max_msg_fds: u32,
    /// Largest data count in one transfer message the sender accepts.
    pub max_data_xfer_size: u32,
    /// Most simultaneous DMA mappings.
    pub max_dma_maps: u32,
    /// Supported DMA page sizes, or'ed.
    pub pgsizes: u64,
    /// Whether `REGION_WRITE_MULTI` is supported.
    pub write_multiple: bool,
    /// The `migration` object, kept verbatim when present (we support no migration).
    pub migration: Option<serde_json::Value>,
}

impl Default for Capabilities {
    fn default() -> Self {
        Capabilities {
            max_msg_fds: DEFAULT_MAX_MSG_FDS,
            max_data_xfer_size: DEFAULT_MAX_DATA_XFER,
            max_dma_maps: DEFAULT_MAX_DMA_MAPS,
            pgsizes: DEFAULT_PGSIZES,
            write_multiple: false,
            migration: None,
        }
    }
}

impl Capabilities {
    /// Parses the capabilities from a VERSION document (`{"capabilities": {...}}`). Missing fields
    /// take the spec defaults; fields of the wrong type are errors; unknown fields are ignored.
    pub fn from_json(doc: &serde_json::Value) -> Result<Capabilities> {
        let mut caps = Capabilities::default();
        let obj = doc
            .as_object()
            .ok_or_else(|| ProtocolError::invalid("version data", "not a JSON object"))?;
        let Some(c) = obj.get("capabilities") else {
            return Ok(caps);
        };
        let c = c
            .as_object()
            .ok_or_else(|| ProtocolError::invalid("capabilities", "not a JSON object"))?;
        let num = |name: &'static str| -> Result<Option<u64>> {
            match c.get(name) {
                None => Ok(None),
                Some(v) => v
                    .as_u64()
                    .map(Some)
                    .ok_or_else(|| ProtocolError::invalid(name, format!("not a number: {v}"))),
            }
        };
        let clamp32 = |v: u64| u32::try_from(v).unwrap_or(u32::MAX);
        if let Some(v) = num("max_msg_fds")? {
            caps.max_msg_fds = clamp32(v);
        }
        if let Some(v) = num("max_data_xfer_size")? {
            caps.max_data_xfer_size = clamp32(v);
        }
        if let Some(v) = num("max_dma_maps")? {
            caps.max_dma_maps = clamp32(v);
        }
        if let Some(v) = num("pgsizes")? {
            caps.pgsizes = v;
        }
        if let Some(v) = c.get("write_multiple") {
            caps.write_multiple = v
                .as_bool()
                .ok_or_else(|| ProtocolError::invalid("write_multiple", "not a boolean"))?;
        }
        caps.migration = c.get("migration").cloned();
        Ok(caps)
    }

    /// The VERSION document for these capabilities.
    pub fn to_json(&self) -> serde_json::Value {
        let mut c = serde_json::Map::new();
        c.insert("max_msg_fds".into(), self.max_msg_fds.into());
        c.insert("max_data_xfer_size".into(), self.max_data_xfer_size.into());
        c.insert("max_dma_maps".into(), self.max_dma_maps.into());
        c.insert("pgsizes".into(), self.pgsizes.into());
        c.insert("write_multiple".into(), self.write_multiple.into());
        if let Some(m) = &self.migration {
            c.insert("migration".into(), m.clone());
        }
        let mut doc = serde_json::Map::new();
        doc.insert("capabilities".into(), serde_json::Value::Object(c));
        serde_json::Value::Object(doc)
    }
}

/// A VERSION request or reply.
#[derive(Clone, Debug, PartialEq)]
pub struct Version {
    /// Major version.
    pub major: u16,
    /// Minor version.
    pub minor: u16,
    /// The JSON document, when present (`None` when the message carries none).
    pub data: Option<serde_json::Value>,
}

impl Version {
    /// Parses a VERSION body: 4 bytes of version, then an optional NUL-terminated JSON document.
    pub fn parse(body: &[u8]) -> Result<Version> {
        need("VERSION", body, 4)?;
        let major = u16_at(body, 0);
        let minor = u16_at(body, 2);
        let rest = &body[4..];
        if rest.len() > MAX_VERSION_JSON {
            return Err(ProtocolError::TooLarge {
                what: "VERSION data",
                count: rest.len() as u64,
                max: MAX_VERSION_JSON as u64,
            });
        }
        let text = match rest.iter().position(|&b| b == 0) {
            Some(n) => &rest[..n],
            None => rest,
        };
        let data = if text.iter().all(|b| b.is_ascii_whitespace()) {
            None
        } else {
            let v: serde_json::Value = serde_json::from_slice(text)
                .map_err(|e| ProtocolError::invalid("VERSION data", e.to_string()))?;
            Some(v)
        };
        Ok(Version { major, minor, data })
    }

    /// The capabilities in the document (defaults when absent).
    pub fn capabilities(&self) -> Result<Capabilities> {
        match &self.data {
            Some(d) => Capabilities::from_json(d),
            None => Ok(Capabilities::default()),
        }
    }

    /// Appends the body (version and NUL-terminated JSON).
    pub fn encode_body(&self, m: &mut MessageBuilder<'_>) {
        m.u16(self.major).u16(self.minor);
        if let Some(d) = &self.data {
            m.bytes(d.to_string().as_bytes()).bytes(&[0]);
        }
    }
}

/// `DMA_MAP` request.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct DmaMap {
    /// Size of the structure (32).
    pub argsz: u32,
    /// [`map_flags`].
    pub flags: u32,
    /// Offset in the file descriptor sent with the message.
    pub offset: u64,
    /// IOVA.
    pub address: u64,
    /// Length.
    pub size: u64,
}

impl DmaMap {
    /// Body size.
    pub const SIZE: usize = 32;

    /// Parses a DMA_MAP body.
    pub fn parse(body: &[u8]) -> Result<DmaMap> {
        exact("DMA_MAP", body, Self::SIZE)?;
        let m = DmaMap {
            argsz: u32_at(body, 0),
            flags: u32_at(body, 4),
            offset: u64_at(body, 8),
            address: u64_at(body, 16),
            size: u64_at(body, 24),
        };
        if (m.argsz as usize) < Self::SIZE {
            return Err(ProtocolError::invalid("DMA_MAP argsz", m.argsz.to_string()));
        }
        if m.flags & !(map_flags::READ | map_flags::WRITE) != 0 {
            return Err(ProtocolError::invalid(
                "DMA_MAP flags",
                format!("{:#x}", m.flags),
            ));
        }
        if m.size == 0 || m.address.checked_add(m.size).is_none() {
            return Err(ProtocolError::invalid(
                "DMA_MAP range",
                format!("{:#x}+{:#x}", m.address, m.size),
            ));
        }
        Ok(m)
    }

    /// Appends the body.
    pub fn encode_body(&self, m: &mut MessageBuilder<'_>) {
        m.u32(self.argsz)
            .u32(self.flags)
            .u64(self.offset)
            .u64(self.address)
            .u64(self.size);
    }
}

/// `DMA_UNMAP` request and reply.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct DmaUnmap {
    /// Size of the structure (24).
    pub argsz: u32,
    /// [`unmap_flags`].
    pub flags: u32,
    /// IOVA.
    pub address: u64,
    /// Length.
    pub size: u64,
}

impl DmaUnmap {
    /// Body size.
    pub const SIZE: usize = 24;

    /// Parses a DMA_UNMAP body.
    pub fn parse(body: &[u8]) -> Result<DmaUnmap> {
        need("DMA_UNMAP", body, Self::SIZE)?;
        let m = DmaUnmap {
            argsz: u32_at(body, 0),
            flags: u32_at(body, 4),
            address: u64_at(body, 8),
            size: u64_at(body, 16),
        };
        if m.flags & unmap_flags::GET_DIRTY_BITMAP != 0 {
            return Err(ProtocolError::Unsupported("DMA_UNMAP dirty bitmap"));
        }
        exact("DMA_UNMAP", body, Self::SIZE)?;
        if m.flags & !unmap_flags::ALL != 0 {
            return Err(ProtocolError::invalid(
                "DMA_UNMAP flags",
                format!("{:#x}", m.flags),
            ));
        }
        if m.flags & unmap_flags::ALL != 0 && (m.address != 0 || m.size != 0) {
            return Err(ProtocolError::invalid(
                "DMA_UNMAP",
                "unmap-all with a non-zero range",
            ));
        }
        Ok(m)
    }

    /// Appends the body.
    pub fn encode_body(&self, m: &mut MessageBuilder<'_>) {
        m.u32(self.argsz)
            .u32(self.flags)
            .u64(self.address)
            .u64(self.size);
    }
}

/// `DEVICE_GET_INFO` request and reply.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct DeviceInfo {
    /// Size of the reply structure (16).
    pub argsz: u32,
    /// [`device_flags`].
    pub flags: u32,
    /// Number of regions.
    pub num_regions: u32,
    /// Number of IRQ indices.
    pub num_irqs: u32,
}

impl DeviceInfo {
    /// Body size.
    pub const SIZE: usize = 16;

    /// Parses a DEVICE_GET_INFO body.
    pub fn parse(body: &[u8]) -> Result<DeviceInfo> {
        exact("DEVICE_GET_INFO", body, Self::SIZE)?;
        Ok(DeviceInfo {
            argsz: u32_at(body, 0),
            flags: u32_at(body, 4),
            num_regions: u32_at(body, 8),
            num_irqs: u32_at(body, 12),
        })
    }

    /// Appends the body.
    pub fn encode_body(&self, m: &mut MessageBuilder<'_>) {
        m.u32(self.argsz)
            .u32(self.flags)
            .u32(self.num_regions)
            .u32(self.num_irqs);
    }
}

/// One capability of a region-info capability chain.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum RegionCapability {
    /// Areas of the region that may be mmapped: `(offset, size)` pairs.
    SparseMmap(Vec<(u64, u64)>),
    /// A device-specific region type.
    Type {
        /// Type.
        region_type: u32,
        /// Subtype.
        subtype: u32,
    },
    /// A capability we do not interpret.
    Other {
        /// Capability id.
        id: u16,
        /// Capability version.
        version: u16,
        /// Bytes after the 8-byte capability header.
        data: Vec<u8>,
    },
}

/// `DEVICE_GET_REGION_INFO` request and reply.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct RegionInfoMsg {
    /// In a request: room the client has for the reply. In a reply: size the full reply needs.
    pub argsz: u32,
    /// `VFIO_REGION_INFO_FLAG_*`.
    pub flags: u32,
    /// Region index.
    pub index: u32,
    /// Offset of the first capability from the start of this structure (0: none).
    pub cap_offset: u32,
    /// Region size.
    pub size: u64,
    /// Offset to use when mmapping the region's fd.
    pub offset: u64,
    /// Capabilities (reply only; empty when the client's argsz was too small for them).
    pub caps: Vec<RegionCapability>,
}

impl RegionInfoMsg {
    /// Size of the fixed part.
    pub const SIZE: usize = 32;
    /// Most capabilities we follow in one chain.
    pub const MAX_CAPS: usize = 64;

    /// Parses a request body.
    pub fn parse_request(body: &[u8]) -> Result<RegionInfoMsg> {
        exact("DEVICE_GET_REGION_INFO", body, Self::SIZE)?;
        let r = Self::parse_fixed(body);
        if (r.argsz as usize) < Self::SIZE {
            return Err(ProtocolError::invalid(
                "DEVICE_GET_REGION_INFO argsz",
                r.argsz.to_string(),
            ));
        }
        Ok(r)
    }

    fn parse_fixed(body: &[u8]) -> RegionInfoMsg {
        RegionInfoMsg {
            argsz: u32_at(body, 0),
            flags: u32_at(body, 4),
            index: u32_at(body, 8),
            cap_offset: u32_at(body, 12),
            size: u64_at(body, 16),
            offset: u64_at(body, 24),
            caps: Vec::new(),
        }
    }

    /// Parses a reply body, following the capability chain when the flags say there is one.
    pub fn parse_reply(body: &[u8]) -> Result<RegionInfoMsg> {
        need("DEVICE_GET_REGION_INFO reply", body, Self::SIZE)?;
        let mut r = Self::parse_fixed(body);
        if r.flags & hwrr_formats::region_flags::CAPS == 0 || r.cap_offset == 0 {
            return Ok(r);
        }
        // Offsets are from the start of the structure, i.e. of `body`.
        let mut next = r.cap_offset as usize;
        let mut last = 0usize;
        while next != 0 {
            if next <= last || next < Self::SIZE {
                return Err(ProtocolError::invalid(
                    "region capability chain",
                    format!("offset {next:#x} does not advance"),
                ));
            }
            if r.caps.len() >= Self::MAX_CAPS {
                return Err(ProtocolError::TooLarge {
                    what: "region capabilities",
                    count: r.caps.len() as u64 + 1,
                    max: Self::MAX_CAPS as u64,
                });
            }
            last = next;
            let hdr_end = next.saturating_add(8);
            need("region capability header", body, hdr_end)?;
            let id = u16_at(body, next);
            let version = u16_at(body, next + 2);
            let following = u32_at(body, next + 4) as usize;
            // A capability extends to the next one, or to the end of the reply.
            let end = if following == 0 {
                body.len()
            } else {
                following.min(body.len())
            };
            let data = body.get(hdr_end..end.max(hdr_end)).unwrap_or(&[]);
            let cap = match id {
                region_cap::SPARSE_MMAP => {
                    need("sparse mmap capability", data, 8)?;
                    let n = u32_at(data, 0) as usize;
                    let areas = &data[8..];
                    let bytes = n.saturating_mul(16);
                    need("sparse mmap areas", areas, bytes)?;
                    RegionCapability::SparseMmap(
                        (0..n)
                            .map(|i| (u64_at(areas, i * 16), u64_at(areas, i * 16 + 8)))
                            .collect(),
                    )
                }
                region_cap::TYPE => {
                    need("region type capability", data, 8)?;
                    RegionCapability::Type {
                        region_type: u32_at(data, 0),
                        subtype: u32_at(data, 4),
                    }
                }
                _ => RegionCapability::Other {
                    id,
                    version,
                    data: data.to_vec(),
                },
            };
            r.caps.push(cap);
            next = following;
        }
        Ok(r)
    }

    /// Bytes the capability chain takes.
    pub fn caps_len(&self) -> usize {
        self.caps.iter().map(cap_len).sum()
    }

    /// Appends the reply body: the fixed part, then the chain when `include_caps`. `argsz` is
    /// always set to the size the full reply needs; the chain (and the CAPS flag) is left out when
    /// the client did not leave room for it.
    pub fn encode_reply(&self, m: &mut MessageBuilder<'_>, include_caps: bool) {
        let full = Self::SIZE + self.caps_len();
        let with_caps = include_caps && !self.caps.is_empty();
        let (flags, cap_offset) = if with_caps {
            (
                self.flags | hwrr_formats::region_flags::CAPS,
                Self::SIZE as u32,
            )
        } else {
            (self.flags & !hwrr_formats::region_flags::CAPS, 0)
        };
        m.u32(u32::try_from(full).unwrap_or(u32::MAX))
            .u32(flags)
            .u32(self.index)
            .u32(cap_offset)
            .u64(self.size)
            .u64(self.offset);
        if with_caps {
            let mut at = Self::SIZE;
            for (i, cap) in self.caps.iter().enumerate() {
                let len = cap_len(cap);
                let next = if i + 1 == self.caps.len() {
                    0
                } else {
                    at + len
                };
                let (id, version) = match cap {
                    RegionCapability::SparseMmap(_) => (region_cap::SPARSE_MMAP, 1),
                    RegionCapability::Type { .. } => (region_cap::TYPE, 1),
                    RegionCapability::Other { id, version, .. } => (*id, *version),
                };
                m.u16(id).u16(version).u32(u32::try_from(next).unwrap_or(0));
                match cap {
                    RegionCapability::SparseMmap(areas) => {
                        m.u32(areas.len() as u32).u32(0);
                        for (o, s) in areas {
                            m.u64(*o).u64(*s);
                        }
                    }
                    RegionCapability::Type {
                        region_type,
                        subtype,
                    } => {
                        m.u32(*region_type).u32(*subtype);
                    }
                    RegionCapability::Other { data, .. } => {
                        m.bytes(data);
                    }
                }
                at += len;
            }
        }
    }

    /// Appends a request body.
    pub fn encode_request(&self, m: &mut MessageBuilder<'_>) {
        m.u32(self.argsz)
            .u32(0)
            .u32(self.index)
            .u32(0)
            .u64(0)
            .u64(0);
    }
}

fn cap_len(c: &RegionCapability) -> usize {
    8 + match c {
        RegionCapability::SparseMmap(a) => 8 + 16 * a.len(),
        RegionCapability::Type { .. } => 8,
        RegionCapability::Other { data, .. } => data.len(),
    }
}

/// `DEVICE_GET_IRQ_INFO` request and reply.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct IrqInfoMsg {
    /// Size of the structure (16).
    pub argsz: u32,
    /// `VFIO_IRQ_INFO_*`.
    pub flags: u32,
    /// IRQ index.
    pub index: u32,
    /// Number of vectors.
    pub count: u32,
}

impl IrqInfoMsg {
    /// Body size.
    pub const SIZE: usize = 16;

    /// Parses a DEVICE_GET_IRQ_INFO body.
    pub fn parse(body: &[u8]) -> Result<IrqInfoMsg> {
        exact("DEVICE_GET_IRQ_INFO", body, Self::SIZE)?;
        Ok(IrqInfoMsg {
            argsz: u32_at(body, 0),
            flags: u32_at(body, 4),
            index: u32_at(body, 8),
            count: u32_at(body, 12),
        })
    }

    /// Appends the body.
    pub fn encode_body(&self, m: &mut MessageBuilder<'_>) {
        m.u32(self.argsz)
            .u32(self.flags)
            .u32(self.index)
            .u32(self.count);
    }
}

/// `DEVICE_SET_IRQS` request.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SetIrqsMsg {
    /// Size of the structure plus data.
    pub argsz: u32,
    /// [`irq_set_flags`]: exactly one data bit and one action bit.
    pub flags: u32,
    /// IRQ index.
    pub index: u32,
    /// First vector.
    pub start: u32,
    /// Number of vectors.
    pub count: u32,
    /// With `DATA_BOOL`: one flag per vector.
    pub bools: Vec<bool>,
}

impl SetIrqsMsg {
    /// Size of the fixed part.
    pub const SIZE: usize = 20;

    /// Parses a DEVICE_SET_IRQS body, given how many fds came with it. With `DATA_EVENTFD`, the
    /// request carries either `count` fds, or none (disconnect the vectors: QEMU sends runs of -1
    /// that way). Vector counts are capped by `max_vectors`.
    pub fn parse(body: &[u8], nfds: usize, max_vectors: u32) -> Result<SetIrqsMsg> {
        need("DEVICE_SET_IRQS", body, Self::SIZE)?;
        let mut m = SetIrqsMsg {
            argsz: u32_at(body, 0),
            flags: u32_at(body, 4),
            index: u32_at(body, 8),
            start: u32_at(body, 12),
            count: u32_at(body, 16),
            bools: Vec::new(),
        };
        let data = m.flags & irq_set_flags::DATA_MASK;
        let action = m.flags & irq_set_flags::ACTION_MASK_ALL;
        if data.count_ones() != 1
            || action.count_ones() != 1
            || m.flags & !(irq_set_flags::DATA_MASK | irq_set_flags::ACTION_MASK_ALL) != 0
        {
            return Err(ProtocolError::invalid(
                "DEVICE_SET_IRQS flags",
                format!("{:#x}", m.flags),
            ));
        }
        if m.count > max_vectors {
            return Err(ProtocolError::TooLarge {
                what: "DEVICE_SET_IRQS count",
                count: m.count as u64,
                max: max_vectors as u64,
            });
        }
        if m.start.checked_add(m.count).is_none() {
            return Err(ProtocolError::invalid("DEVICE_SET_IRQS range", "wraps"));
        }
        match data {
            irq_set_flags::DATA_BOOL => {
                exact(
                    "DEVICE_SET_IRQS bool data",
                    body,
                    Self::SIZE + m.count as usize,
                )?;
                m.bools = body[Self::SIZE..].iter().map(|&b| b != 0).collect();
            }
            _ => exact("DEVICE_SET_IRQS", body, Self::SIZE)?,
        }
        let expected_fds = if data == irq_set_flags::DATA_EVENTFD {
            if action != irq_set_flags::ACTION_TRIGGER {
                return Err(ProtocolError::Unsupported("mask/unmask eventfds"));
            }
            if nfds == 0 {
                0
            } else {
                m.count as usize
            }
        } else {
            0
        };
        if nfds != expected_fds {
            return Err(ProtocolError::WrongFdCount {
                what: "DEVICE_SET_IRQS",
                expected: expected_fds,
                got: nfds,
            });
        }
        Ok(m)
    }

    /// Appends the body.
    pub fn encode_body(&self, m: &mut MessageBuilder<'_>) {
        m.u32(self.argsz)
            .u32(self.flags)
            .u32(self.index)
            .u32(self.start)
            .u32(self.count);
        for &b in &self.bools {
            m.bytes(&[b as u8]);
        }
    }
}

/// A `REGION_READ`/`REGION_WRITE` request or reply: the fixed part and its data.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RegionAccess<'a> {
    /// Offset in the region.
    pub offset: u64,
    /// Region index.
    pub region: u32,
    /// Byte count.
    pub count: u32,
    /// The data (write request, read reply) or empty.
    pub data: &'a [u8],
}

impl<'a> RegionAccess<'a> {
    /// Size of the fixed part.
    pub const SIZE: usize = 16;

    fn fixed(body: &'a [u8]) -> RegionAccess<'a> {
        RegionAccess {
            offset: u64_at(body, 0),
            region: u32_at(body, 8),
            count: u32_at(body, 12),
            data: &[],
        }
    }

    fn check_count(&self, max: u32) -> Result<()> {
        if self.count > max {
            return Err(ProtocolError::TooLarge {
                what: "region access count",
                count: self.count as u64,
                max: max as u64,
            });
        }
        Ok(())
    }

    /// Parses a REGION_READ request (no data; `count` at most `max`).
    pub fn parse_read(body: &'a [u8], max: u32) -> Result<RegionAccess<'a>> {
        exact("REGION_READ", body, Self::SIZE)?;
        let r = Self::fixed(body);
        r.check_count(max)?;
        Ok(r)
    }

    /// Parses a REGION_WRITE request or a REGION_READ reply (`count` bytes of data follow).
    pub fn parse_with_data(body: &'a [u8], max: u32) -> Result<RegionAccess<'a>> {
        need("REGION_WRITE", body, Self::SIZE)?;
        let mut r = Self::fixed(body);
        r.check_count(max)?;
        exact("region access data", body, Self::SIZE + r.count as usize)?;
        r.data = &body[Self::SIZE..];
        Ok(r)
    }

    /// Parses a REGION_WRITE reply (no data).
    pub fn parse_write_reply(body: &'a [u8]) -> Result<RegionAccess<'a>> {
        exact("REGION_WRITE reply", body, Self::SIZE)?;
        Ok(Self::fixed(body))
    }

    /// Appends the fixed part and `data`.
    pub fn encode_body(&self, m: &mut MessageBuilder<'_>) {
        m.u64(self.offset)
            .u32(self.region)
            .u32(self.count)
            .bytes(self.data);
    }
}

/// One write of a `REGION_WRITE_MULTI`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MultiWrite<'a> {
    /// Offset in the region.
    pub offset: u64,
    /// Region index.
    pub region: u32,
    /// The bytes (1 to 8).
    pub data: &'a [u8],
}

/// A parsed `REGION_WRITE_MULTI` request: `wr_cnt` (u64) then `wr_cnt` 24-byte entries of
/// `{offset u64, region u32, count u32, data[8]}` (QEMU's `VFIOUserWRMulti`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct WriteMulti<'a> {
    entries: &'a [u8],
    count: usize,
}

impl<'a> WriteMulti<'a> {
    /// Parses and validates every entry (count ≤ 8 each).
    pub fn parse(body: &'a [u8]) -> Result<WriteMulti<'a>> {
        need("REGION_WRITE_MULTI", body, 8)?;
        let n = u64_at(body, 0);
        if n == 0 || n > MULTI_MAX {
            return Err(ProtocolError::TooLarge {
                what: "REGION_WRITE_MULTI entries",
                count: n,
                max: MULTI_MAX,
            });
        }
        let n = n as usize;
        exact("REGION_WRITE_MULTI", body, 8 + n * MULTI_ENTRY_SIZE)?;
        let entries = &body[8..];
        for i in 0..n {
            let c = u32_at(entries, i * MULTI_ENTRY_SIZE + 12);
            if c == 0 || c as usize > MULTI_DATA {
                return Err(ProtocolError::invalid(
                    "REGION_WRITE_MULTI entry count",
                    format!("entry {i} has count {c}"),
                ));
            }
        }
        Ok(WriteMulti { entries, count: n })
    }

    /// Number of writes.
    pub fn len(&self) -> usize {
        self.count
    }

    /// Whether there are no writes (never true for a parsed message).
    pub fn is_empty(&self) -> bool {
        self.count == 0
    }

    /// The writes, in order.
    pub fn iter(&self) -> impl Iterator<Item = MultiWrite<'a>> + 'a {
        let entries = self.entries;
        (0..self.count).map(move |i| {
            let e = &entries[i * MULTI_ENTRY_SIZE..(i + 1) * MULTI_ENTRY_SIZE];
            let c = u32_at(e, 12) as usize;
            MultiWrite {
                offset: u64_at(e, 0),
                region: u32_at(e, 8),
                data: &e[16..16 + c],
            }
        })
    }

    /// Appends a body for `writes` (each 1 to 8 bytes; at most [`MULTI_MAX`]).
    pub fn encode_body(writes: &[MultiWrite<'_>], m: &mut MessageBuilder<'_>) -> Result<()> {
        if writes.is_empty() || writes.len() as u64 > MULTI_MAX {
            return Err(ProtocolError::TooLarge {
                what: "REGION_WRITE_MULTI entries",
                count: writes.len() as u64,
                max: MULTI_MAX,
            });
        }
        m.u64(writes.len() as u64);
        for w in writes {
            if w.data.is_empty() || w.data.len() > MULTI_DATA {
                return Err(ProtocolError::invalid(
                    "REGION_WRITE_MULTI entry",
                    format!("{} bytes", w.data.len()),
                ));
            }
            m.u64(w.offset).u32(w.region).u32(w.data.len() as u32);
            let slot = m.zeroes(MULTI_DATA);
            slot[..w.data.len()].copy_from_slice(w.data);
        }
        Ok(())
    }
}

/// How a peer lays out `DMA_READ`/`DMA_WRITE` messages.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub enum DmaLayout {
    /// The spec and libvfio-user: `{address u64, count u64}` then data at +16; a DMA_WRITE reply
    /// echoes address and count.
    Spec,
    /// QEMU's client: `{address u64, count u32}` then data at +12 (the message is still padded to
    /// `32 + count` bytes); a DMA_WRITE reply is a bare header.
    Qemu,
    /// Decide per client from its VERSION (see `server` for the rule).
    #[default]
    Auto,
}

impl DmaLayout {
    /// Offset of the data in the body.
    pub fn data_offset(self) -> usize {
        match self {
            DmaLayout::Qemu => 12,
            _ => 16,
        }
    }
}

/// The fixed part of a `DMA_READ`/`DMA_WRITE` message. Both layouts put the address at 0 and the
/// count's low 32 bits at 8; the spec's count is 8 bytes, QEMU's 4 (followed by data).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct DmaAccess<'a> {
    /// IOVA.
    pub address: u64,
    /// Byte count.
    pub count: u64,
    /// The data (DMA_WRITE request, DMA_READ reply) or empty.
    pub data: &'a [u8],
}

impl<'a> DmaAccess<'a> {
    /// Size of the fixed part as sent (both layouts pad to 16).
    pub const SIZE: usize = 16;

    /// Parses a DMA_READ request (no data).
    pub fn parse_read_request(body: &'a [u8], layout: DmaLayout, max: u32) -> Result<Self> {
        need("DMA_READ", body, Self::SIZE)?;
        let r = Self::fixed(body, layout);
        check_dma_count(r.count, max)?;
        exact("DMA_READ", body, Self::SIZE)?;
        Ok(r)
    }

    /// Parses a DMA_WRITE request or DMA_READ reply (data follows).
    pub fn parse_with_data(body: &'a [u8], layout: DmaLayout, max: u32) -> Result<Self> {
        need("DMA access", body, Self::SIZE)?;
        let mut r = Self::fixed(body, layout);
        check_dma_count(r.count, max)?;
        let off = layout.data_offset();
        let count = r.count as usize;
        // QEMU's messages are `sizeof(VFIOUserDMARW) + count` = 32 + count bytes, data at +12.
        exact("DMA access data", body, Self::SIZE + count)?;
        r.data = &body[off..off + count];
        Ok(r)
    }

    fn fixed(body: &'a [u8], layout: DmaLayout) -> Self {
        let count = match layout {
            DmaLayout::Qemu => u32_at(body, 8) as u64,
            _ => u64_at(body, 8),
        };
        DmaAccess {
            address: u64_at(body, 0),
            count,
            data: &[],
        }
    }

    /// Appends the fixed part and data in `layout` (padding QEMU's layout to `16 + count`).
    pub fn encode_body(&self, layout: DmaLayout, m: &mut MessageBuilder<'_>) {
        m.u64(self.address);
        match layout {
            DmaLayout::Qemu => {
                m.u32(self.count as u32).bytes(self.data).u32(0);
            }
            _ => {
                m.u64(self.count).bytes(self.data);
            }
        }
    }
}

fn check_dma_count(count: u64, max: u32) -> Result<()> {
    if count > max as u64 {
        return Err(ProtocolError::TooLarge {
            what: "DMA count",
            count,
            max: max as u64,
        });
    }
    Ok(())
}

/// Parses any message body by command, for fuzzing and diagnostics: returns the command on success.
pub fn parse_any(header: &Header, body: &[u8], nfds: usize, max_xfer: u32) -> Result<Command> {
    let cmd =
        Command::from_u16(header.command).ok_or(ProtocolError::UnknownCommand(header.command))?;
    let reply = header.is_reply();
    match (cmd, reply) {
        (Command::Version, _) => {
            let v = Version::parse(body)?;
            v.capabilities()?;
        }
        (Command::DmaMap, false) => {
            DmaMap::parse(body)?;
        }
        (Command::DmaUnmap, _) => {
            DmaUnmap::parse(body)?;
        }
        (Command::DeviceGetInfo, _) => {
            DeviceInfo::parse(body)?;
        }
        (Command::DeviceGetRegionInfo, false) => {
            RegionInfoMsg::parse_request(body)?;
        }
        (Command::DeviceGetRegionInfo, true) => {
            RegionInfoMsg::parse_reply(body)?;
        }
        (Command::DeviceGetIrqInfo, _) => {
            IrqInfoMsg::parse(body)?;
        }
        (Command::DeviceSetIrqs, false) => {
            SetIrqsMsg::parse(body, nfds, 2048)?;
        }
        (Command::RegionRead, false) => {
            RegionAccess::parse_read(body, max_xfer)?;
        }
        (Command::RegionRead, true) | (Command::RegionWrite, false) => {
            RegionAccess::parse_with_data(body, max_xfer)?;
        }
        (Command::RegionWrite, true) => {
            RegionAccess::parse_write_reply(body)?;
        }
        (Command::RegionWriteMulti, false) => {
            WriteMulti::parse(body)?;
        }
        (Command::DmaRead, false) => {
            DmaAccess::parse_read_request(body, DmaLayout::Spec, max_xfer)?;
            DmaAccess::parse_read_request(body, DmaLayout::Qemu, max_xfer)?;
        }
        (Command::DmaRead, true) | (Command::DmaWrite, false) => {
            let _ = DmaAccess::parse_with_data(body, DmaLayout::Qemu, max_xfer);
            DmaAccess::parse_with_data(body, DmaLayout::Spec, max_xfer)?;
        }
        _ => {}
    }
    Ok(cmd)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn header_round_trip_and_framing() {
        let h = Header {
            id: 7,
            command: 9,
            size: 32,
            flags: flags::NO_REPLY,
            error: 0,
        };
        let b = h.to_bytes();
        assert_eq!(Header::parse(&b).unwrap(), h);
        assert!(h.validate_framing(64).is_ok());
        assert!(matches!(
            h.validate_framing(31),
            Err(ProtocolError::MessageTooLarge { .. })
        ));
        let small = Header { size: 15, ..h };
        assert!(small.validate_framing(64).is_err());
        let bad_type = Header { flags: 2, ..h };
        assert!(matches!(
            bad_type.validate_framing(64),
            Err(ProtocolError::BadMessageType(2))
        ));
        assert!(Header::parse(&b[..15]).is_err());
    }

    #[test]
    fn region_access_checks_counts() {
        let mut buf = Vec::new();
        let mut m = MessageBuilder::new(&mut buf, 1, 10, 0, 0);
        RegionAccess {
            offset: 0x10,
            region: 0,
            count: 4,
            data: &[1, 2, 3, 4],
        }
        .encode_body(&mut m);
        let n = m.finish();
        let body = &buf[HEADER_SIZE..n];
        let w = RegionAccess::parse_with_data(body, 1024).unwrap();
        assert_eq!(w.data, &[1, 2, 3, 4]);
        // A count that lies about the data.
        let mut lying = body.to_vec();
        lying[12] = 100;
        assert!(RegionAccess::parse_with_data(&lying, 1024).is_err());
        // Oversize count.
        assert!(matches!(
            RegionAccess::parse_with_data(body, 2),
            Err(ProtocolError::TooLarge { .. })
        ));
    }

    #[test]
    fn write_multi_round_trip() {
        let writes = [
            MultiWrite {
                offset: 4,
                region: 0,
                data: &[1, 2, 3, 4],
            },
            MultiWrite {
                offset: 8,
                region: 2,
                data: &[9],
            },
        ];
        let mut buf = Vec::new();
        let mut m = MessageBuilder::new(&mut buf, 1, 15, flags::NO_REPLY, 0);
        WriteMulti::encode_body(&writes, &mut m).unwrap();
        let n = m.finish();
        let parsed = WriteMulti::parse(&buf[HEADER_SIZE..n]).unwrap();
        let got: Vec<_> = parsed.iter().collect();
        assert_eq!(got, writes);
        let mut bad = buf[HEADER_SIZE..n].to_vec();
        bad[8 + 12] = 9; // count 9 > 8
        assert!(WriteMulti::parse(&bad).is_err());
    }

    #[test]
    fn dma_layouts_differ_only_in_data_offset() {
        for layout in [DmaLayout::Spec, DmaLayout::Qemu] {
            let mut buf = Vec::new();
            let mut m = MessageBuilder::new(&mut buf, 1, 12, 0, 0);
            DmaAccess {
                address: 0x1000,
                count: 3,
                data: &[7, 8, 9],
            }
            .encode_body(layout, &mut m);
            let n = m.finish();
            assert_eq!(n, 32 + 3);
            let body = &buf[HEADER_SIZE..n];
            let d = DmaAccess::parse_with_data(body, layout, 4096).unwrap();
            assert_eq!((d.address, d.count, d.data), (0x1000, 3, &[7u8, 8, 9][..]));
        }
    }

    #[test]
    fn region_info_caps_round_trip_and_loops_rejected() {
        let info = RegionInfoMsg {
            argsz: 0,
            flags: 3,
            index: 0,
            cap_offset: 0,
            size: 0x1000,
            offset: 0,
            caps: vec![
                RegionCapability::SparseMmap(vec![(0, 0x800)]),
                RegionCapability::Type {
                    region_type: 1,
                    subtype: 2,
                },
            ],
        };
        let mut buf = Vec::new();
        let mut m = MessageBuilder::new(&mut buf, 1, 5, 1, 0);
        info.encode_reply(&mut m, true);
        let n = m.finish();
        let body = buf[HEADER_SIZE..n].to_vec();
        let r = RegionInfoMsg::parse_reply(&body).unwrap();
        assert_eq!(r.caps, info.caps);
        assert_eq!(r.argsz as usize, body.len());
        // Make the second capability point back at the first.
        let mut looped = body.clone();
        let second = 32 + 8 + 8 + 16;
        looped[second + 4..second + 8].copy_from_slice(&32u32.to_le_bytes());
        assert!(RegionInfoMsg::parse_reply(&looped).is_err());
    }

    #[test]
    fn version_parses_qemu_document() {
        let doc = br#"{"capabilities":{"migration":{"pgsize":4096,"max_bitmap_size":268435456},"max_msg_fds":16,"max_data_xfer_size":1048576,"pgsizes":4096,"max_dma_maps":65535,"write_multiple":true}}"#;
        let mut body = vec![0, 0, 0, 0];
        body.extend_from_slice(doc);
        body.push(0);
        let v = Version::parse(&body).unwrap();
        let c = v.capabilities().unwrap();
        assert_eq!(c.max_msg_fds, 16);
        assert!(c.write_multiple);
        assert!(Version::parse(b"\0\0\0\0{\"capabilities\":5}\0")
            .unwrap()
            .capabilities()
            .is_err());
        assert!(Version::parse(b"\0\0\0\0{not json\0").is_err());
    }

    #[test]
    fn set_irqs_validates_flags_and_fds() {
        let mut body = Vec::new();
        for v in [
            20u32,
            irq_set_flags::DATA_EVENTFD | irq_set_flags::ACTION_TRIGGER,
            2,
            0,
            2,
        ] {
            body.extend_from_slice(&v.to_le_bytes());
        }
        assert!(SetIrqsMsg::parse(&body, 2, 64).is_ok());
        assert!(SetIrqsMsg::parse(&body, 0, 64).is_ok());
        assert!(matches!(
            SetIrqsMsg::parse(&body, 1, 64),
            Err(ProtocolError::WrongFdCount { .. })
        ));
        body[4..8]
            .copy_from_slice(&(irq_set_flags::DATA_BOOL | irq_set_flags::DATA_NONE).to_le_bytes());
        assert!(SetIrqsMsg::parse(&body, 0, 64).is_err());
    }
}
