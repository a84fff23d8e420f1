//! The device interface that every hwrr backend implements and every frontend serves.
//!
//! A backend (the real VFIO device, a remote vfio-user device, the replay engine, the built-in test
//! device) implements [`Device`]. A frontend (the vfio-user server, the VFIO interposer, a Rust test)
//! drives it. The device side reaches back through two channels: interrupts go to the eventfds the
//! VMM registered with [`Device::set_irqs`] (see [`IrqRouter`]), and DMA goes through the
//! [`GuestMemory`] the frontend attaches with [`Device::attach_memory`].

#![deny(missing_docs)]

pub mod eventfd;
pub mod irq;
pub mod memory;

use std::os::fd::OwnedFd;
use std::sync::Arc;

pub use hwrr_formats::{
    DeviceIdentity, DmaMapping, IrqAction, IrqData, IrqInfo, IrqSetup, RegionInfo, RegionKind,
};
pub use irq::IrqRouter;
pub use memory::{GuestMemory, MappedMemory, SparseMemory};

/// Errors a device operation reports. Every variant maps to an errno for protocol replies.
#[derive(Debug, thiserror::Error)]
pub enum DeviceError {
    /// The region index is not in the device's region table.
    #[error("region {0} does not exist")]
    NoSuchRegion(u32),
    /// The access does not fit in the region.
    #[error(
        "access of {len} bytes at offset {offset:#x} is outside region {region} ({size} bytes)"
    )]
    OutOfRange {
        /// Region index.
        region: u32,
        /// Offset of the access.
        offset: u64,
        /// Length of the access.
        len: u64,
        /// Size of the region.
        size: u64,
    },
    /// The IRQ index or vector range is not in the device's IRQ table.
    #[error("IRQ index {index} vectors {start}..{end} do not exist")]
    NoSuchIrq {
        /// IRQ index.
        index: u32,
        /// First vector.
        start: u32,
        /// One past the last vector.
        end: u32,
    },
    /// A request that is well-formed but makes no sense for this device.
    #[error("invalid request: {0}")]
    Invalid(String),
    /// The backend does not implement this operation.
    #[error("not supported: {0}")]
    Unsupported(String),
    /// A DMA access outside every mapping, or to a mapping without the needed permission.
    #[error("DMA of {len} bytes at IOVA {iova:#x} is not mapped{detail}")]
    DmaFault {
        /// IOVA of the access.
        iova: u64,
        /// Length of the access.
        len: u64,
        /// Extra detail (empty or starting with ": ").
        detail: String,
    },
    /// The replay engine stopped following the trace (strict policy) and answers from its model.
    #[error("replay diverged: {0}")]
    Diverged(String),
    /// An operating-system error from the backend.
    #[error(transparent)]
    Io(#[from] std::io::Error),
}

impl DeviceError {
    /// The errno a protocol reply should carry for this error.
    pub fn errno(&self) -> i32 {
        match self {
            DeviceError::NoSuchRegion(_) | DeviceError::NoSuchIrq { .. } => libc::EINVAL,
            DeviceError::OutOfRange { .. } => libc::EINVAL,
            DeviceError::Invalid(_) => libc::EINVAL,
            DeviceError::Unsupported(_) => libc::ENOTSUP,
            DeviceError::DmaFault { .. } => libc::EFAULT,
            DeviceError::Diverged(_) => libc::EIO,
            DeviceError::Io(e) => e.raw_os_error().unwrap_or(libc::EIO),
        }
    }
}

/// Result of a device operation.
pub type Result<T> = std::result::Result<T, DeviceError>;

/// What a device looks like to a VMM: the same facts a trace header records.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct DeviceDescription {
    /// PCI identity.
    pub identity: DeviceIdentity,
    /// Configuration space as it is now (up to 4096 bytes).
    pub config_space: Vec<u8>,
    /// Regions, by VFIO index. The config region (index 7) is listed too.
    pub regions: Vec<RegionInfo>,
    /// IRQ indices.
    pub irqs: Vec<IrqInfo>,
    /// The expansion ROM image, when the device has one.
    pub rom: Option<Vec<u8>>,
}

impl DeviceDescription {
    /// The region with this index.
    pub fn region(&self, index: u32) -> Option<&RegionInfo> {
        self.regions.iter().find(|r| r.index == index)
    }

    /// The IRQ entry with this index.
    pub fn irq(&self, index: u32) -> Option<&IrqInfo> {
        self.irqs.iter().find(|i| i.index == index)
    }

    /// Checks that `len` bytes at `offset` fit in region `index`.
    pub fn check_access(&self, index: u32, offset: u64, len: usize) -> Result<&RegionInfo> {
        let r = self.region(index).ok_or(DeviceError::NoSuchRegion(index))?;
        match offset.checked_add(len as u64) {
            Some(end) if end <= r.size => Ok(r),
            _ => Err(DeviceError::OutOfRange {
                region: index,
                offset,
                len: len as u64,
                size: r.size,
            }),
        }
    }
}

/// A `SET_IRQS` request with the eventfds it carries.
#[derive(Debug)]
pub struct IrqSetRequest {
    /// What was asked (index, vectors, action, data kind).
    pub setup: IrqSetup,
    /// With `IrqData::Eventfd`: one entry per vector, `None` for fd -1 (disconnect). Empty otherwise.
    pub fds: Vec<Option<OwnedFd>>,
}

/// A DMA mapping handed to the device.
#[derive(Clone, Debug)]
pub struct DmaRegion {
    /// Address, length and permission flags.
    pub mapping: DmaMapping,
    /// The memory behind the mapping when the frontend could map it into this process (a vfio-user
    /// mapping with an fd, or the VMM's own memory in the interposer). `None` for mappings the device
    /// reaches only through messages (vfio-user `DMA_READ`/`DMA_WRITE`).
    pub memory: Option<Arc<MappedMemory>>,
}

/// A PCI device as a VMM drives it.
///
/// Offsets are region-relative. Accesses that do not fit in their region are errors, never panics.
/// Config-space accesses use [`Device::config_read`]/[`Device::config_write`], not region index 7.
pub trait Device: Send {
    /// Identity, config space, regions, IRQs and ROM.
    fn describe(&self) -> DeviceDescription;

    /// Reads `data.len()` bytes at `offset` of region `region` (a BAR or the ROM).
    fn region_read(&mut self, region: u32, offset: u64, data: &mut [u8]) -> Result<()>;

    /// Writes `data` at `offset` of region `region`.
    fn region_write(&mut self, region: u32, offset: u64, data: &[u8]) -> Result<()>;

    /// Reads configuration space.
    fn config_read(&mut self, offset: u32, data: &mut [u8]) -> Result<()>;

    /// Writes configuration space.
    fn config_write(&mut self, offset: u32, data: &[u8]) -> Result<()>;

    /// Wires, masks, unmasks or triggers interrupts (`VFIO_DEVICE_SET_IRQS` semantics).
    fn set_irqs(&mut self, request: IrqSetRequest) -> Result<()>;

    /// Adds a DMA mapping.
    fn dma_map(&mut self, region: DmaRegion) -> Result<()>;

    /// Removes DMA mappings: `mapping.flags & DMA_UNMAP_ALL` removes every mapping.
    fn dma_unmap(&mut self, mapping: DmaMapping) -> Result<()>;

    /// Resets the device.
    fn reset(&mut self) -> Result<()>;

    /// Gives the device its way into guest memory for DMA. Frontends call it once per client
    /// connection, before any other call; a new connection replaces the previous memory.
    fn attach_memory(&mut self, memory: Arc<dyn GuestMemory>);

    /// Called when the frontend's client goes away (a socket closed). The default does nothing.
    fn disconnect(&mut self) {}
}

/// vfio-user / VFIO DMA flag bits.
pub mod dma_flags {
    /// Map: the device may read.
    pub const READ: u32 = 1 << 0;
    /// Map: the device may write.
    pub const WRITE: u32 = 1 << 1;
    /// Unmap: remove every mapping (vfio-user `VFIO_DMA_UNMAP_FLAG_ALL`).
    pub const UNMAP_ALL: u32 = 1 << 1;
}

impl<D: Device + ?Sized> Device for Box<D> {
    fn describe(&self) -> DeviceDescription {
        (**self).describe()
    }
    fn region_read(&mut self, region: u32, offset: u64, data: &mut [u8]) -> Result<()> {
        (**self).region_read(region, offset, data)
    }
    fn region_write(&mut self, region: u32, offset: u64, data: &[u8]) -> Result<()> {
        (**self).region_write(region, offset, data)
    }
    fn config_read(&mut self, offset: u32, data: &mut [u8]) -> Result<()> {
        (**self).config_read(offset, data)
    }
    fn config_write(&mut self, offset: u32, data: &[u8]) -> Result<()> {
        (**self).config_write(offset, data)
    }
    fn set_irqs(&mut self, request: IrqSetRequest) -> Result<()> {
        (**self).set_irqs(request)
    }
    fn dma_map(&mut self, region: DmaRegion) -> Result<()> {
        (**self).dma_map(region)
    }
    fn dma_unmap(&mut self, mapping: DmaMapping) -> Result<()> {
        (**self).dma_unmap(mapping)
    }
    fn reset(&mut self) -> Result<()> {
        (**self).reset()
    }
    fn attach_memory(&mut self, memory: Arc<dyn GuestMemory>) {
        (**self).attach_memory(memory)
    }
    fn disconnect(&mut self) {
        (**self).disconnect()
    }
}
