//! The seam between the backend's logic and the kernel: every VFIO syscall the backend makes goes
//! through [`VfioSys`], so the logic (offsets, bounds, argument packing, DMA bookkeeping, error
//! mapping) is unit-tested against a fake on machines without `/dev/vfio`.

use std::io;

/// One VFIO region as `VFIO_DEVICE_GET_REGION_INFO` describes it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RegionFacts {
    /// VFIO region index.
    pub index: u32,
    /// `VFIO_REGION_INFO_FLAG_*` bits.
    pub flags: u32,
    /// Size in bytes (0: the region does not exist on this device, e.g. the upper half of a 64-bit
    /// BAR).
    pub size: u64,
    /// Offset of the region in the device file (for `pread`/`pwrite`/`mmap`).
    pub offset: u64,
    /// Parts of the region that may be `mmap`ed, as `(offset in region, size)`: the sparse-mmap
    /// capability's areas when the kernel gives one, else the whole region when it is mmap-able,
    /// else none.
    pub mmap_areas: Vec<(u64, u64)>,
}

/// One VFIO IRQ index as `VFIO_DEVICE_GET_IRQ_INFO` describes it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct IrqFacts {
    /// VFIO IRQ index.
    pub index: u32,
    /// `VFIO_IRQ_INFO_*` bits.
    pub flags: u32,
    /// Number of vectors.
    pub count: u32,
}

/// What the kernel says about the device when it is opened.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct DeviceFacts {
    /// `VFIO_DEVICE_FLAGS_*` bits (bit 0: the device supports `VFIO_DEVICE_RESET`).
    pub flags: u32,
    /// Regions by index (`num_regions` entries, some possibly of size 0).
    pub regions: Vec<RegionFacts>,
    /// IRQ indices (`num_irqs` entries; indices the kernel refuses to describe are left out).
    pub irqs: Vec<IrqFacts>,
}

/// `VFIO_DEVICE_FLAGS_RESET`.
pub const DEVICE_FLAG_RESET: u32 = 1 << 0;

/// A part of the device file mapped into this process (`mmap` of a BAR area). Unmapped on drop.
#[derive(Debug)]
pub struct BarMapping {
    ptr: *mut u8,
    len: usize,
}

// SAFETY: the mapping is device memory (or, in tests, anonymous memory) reached only through
// bounds-checked volatile accesses; no Rust references into it exist, so the handle may move
// between threads.
unsafe impl Send for BarMapping {}
// SAFETY: as above; concurrent volatile accesses are what MMIO is.
unsafe impl Sync for BarMapping {}

impl BarMapping {
    /// Takes ownership of a mapping made with `mmap`.
    ///
    /// # Safety
    /// `ptr..ptr+len` must be a live mapping made by `mmap` that nothing else unmaps; it is
    /// unmapped when the returned value drops.
    pub unsafe fn from_mmap(ptr: *mut u8, len: usize) -> Self {
        BarMapping { ptr, len }
    }

    /// Length of the mapping.
    pub fn len(&self) -> usize {
        self.len
    }

    /// True for an empty mapping.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Reads `data.len()` (1, 2, 4 or 8) bytes at `offset` with one volatile access of that width.
    /// Returns `false` (and touches nothing) when the access is not a naturally aligned 1/2/4/8-byte
    /// access inside the mapping, so the caller falls back to `pread`.
    pub fn read(&self, offset: u64, data: &mut [u8]) -> bool {
        if !self.fits(offset, data.len()) {
            return false;
        }
        // SAFETY: `fits` checked that the access is naturally aligned and inside the live mapping.
        unsafe {
            let p = self.ptr.add(offset as usize);
            match data.len() {
                1 => data[0] = std::ptr::read_volatile(p),
                2 => data.copy_from_slice(&std::ptr::read_volatile(p.cast::<u16>()).to_le_bytes()),
                4 => data.copy_from_slice(&std::ptr::read_volatile(p.cast::<u32>()).to_le_bytes()),
                _ => data.copy_from_slice(&std::ptr::read_volatile(p.cast::<u64>()).to_le_bytes()),
            }
        }
        true
    }

    /// Writes `data` (1, 2, 4 or 8 bytes) at `offset` with one volatile access of that width;
    /// `false` when the access does not qualify (see [`BarMapping::read`]).
    pub fn write(&self, offset: u64, data: &[u8]) -> bool {
        if !self.fits(offset, data.len()) {
            return false;
        }
        // SAFETY: `fits` checked that the access is naturally aligned and inside the live mapping.
        unsafe {
            let p = self.ptr.add(offset as usize);
            match data.len() {
                1 => std::ptr::write_volatile(p, data[0]),
                2 => std::ptr::write_volatile(
                    p.cast::<u16>(),
                    u16::from_le_bytes([data[0], data[1]]),
                ),
                4 => std::ptr::write_volatile(
                    p.cast::<u32>(),
                    u32::from_le_bytes([data[0], data[1], data[2], data[3]]),
                ),
                _ => {
                    let mut b = [0u8; 8];
                    b.copy_from_slice(data);
                    std::ptr::write_volatile(p.cast::<u64>(), u64::from_le_bytes(b))
                }
            }
        }
        true
    }

    fn fits(&self, offset: u64, len: usize) -> bool {
        matches!(len, 1 | 2 | 4 | 8)
            && offset % len as u64 == 0
            && (self.ptr as usize) % len == 0
            && offset
                .checked_add(len as u64)
                .is_some_and(|end| end <= self.len as u64)
    }
}

impl Drop for BarMapping {
    fn drop(&mut self) {
        // SAFETY: the mapping was made by mmap with this length (see `from_mmap`) and is unmapped
        // exactly once, here.
        unsafe { libc::munmap(self.ptr.cast(), self.len) };
    }
}

/// The VFIO syscalls the backend makes. One implementation talks to the kernel
/// ([`crate::kernel::KernelVfio`]); tests use a fake.
pub trait VfioSys: Send {
    /// Device flags, regions and IRQ indices, as read at open.
    fn facts(&self) -> &DeviceFacts;

    /// `pread` on the device file. Returns the byte count the kernel returned.
    fn pread(&self, file_offset: u64, data: &mut [u8]) -> io::Result<usize>;

    /// `pwrite` on the device file. Returns the byte count the kernel returned.
    fn pwrite(&self, file_offset: u64, data: &[u8]) -> io::Result<usize>;

    /// `mmap`s `len` bytes of the device file at `file_offset`, shared, read-write.
    fn mmap(&self, file_offset: u64, len: usize) -> io::Result<BarMapping>;

    /// `VFIO_DEVICE_SET_IRQS` with a packed `struct vfio_irq_set` (header and data).
    fn set_irqs(&self, packed: &[u8]) -> io::Result<()>;

    /// `VFIO_DEVICE_RESET`.
    fn reset(&self) -> io::Result<()>;

    /// `VFIO_IOMMU_MAP_DMA`.
    ///
    /// # Safety
    /// `vaddr..vaddr+size` must stay mapped in this process until the mapping is removed with
    /// [`VfioSys::dma_unmap`]; the device may read and write it at any time meanwhile.
    unsafe fn dma_map(&self, iova: u64, size: u64, vaddr: u64, flags: u32) -> io::Result<()>;

    /// `VFIO_IOMMU_UNMAP_DMA` of `iova..iova+size`. Returns the size the kernel unmapped.
    fn dma_unmap(&self, iova: u64, size: u64) -> io::Result<u64>;

    /// `VFIO_IOMMU_GET_INFO` into `buf` (whose first 4 bytes hold `argsz`).
    fn iommu_info(&self, buf: &mut [u8]) -> io::Result<()>;

    /// The IOMMU's limits, when this seam learns them some other way than the type1
    /// `VFIO_IOMMU_GET_INFO` answer (iommufd: `IOMMU_IOAS_IOVA_RANGES`). `None` (the default)
    /// means "decode [`VfioSys::iommu_info`]".
    fn decoded_iommu_info(&self) -> Option<io::Result<crate::IommuInfo>> {
        None
    }
}
