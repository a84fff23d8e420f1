//! The slice of the Linux VFIO uAPI (`<linux/vfio.h>`) that QEMU's vfio-pci uses, with the values
//! the kernel's type1 IOMMU driver and vfio-pci report.

/// `VFIO_TYPE` (`';'`) and `VFIO_BASE` (100): every VFIO ioctl is `_IO(';', 100 + n)`.
const fn vfio_io(n: u64) -> u64 {
    (b';' as u64) << 8 | (100 + n)
}

/// `VFIO_API_VERSION`.
pub const API_VERSION: i32 = 0;

/// `VFIO_GET_API_VERSION` (container).
pub const GET_API_VERSION: u64 = vfio_io(0);
/// `VFIO_CHECK_EXTENSION` (container).
pub const CHECK_EXTENSION: u64 = vfio_io(1);
/// `VFIO_SET_IOMMU` (container).
pub const SET_IOMMU: u64 = vfio_io(2);
/// `VFIO_GROUP_GET_STATUS`.
pub const GROUP_GET_STATUS: u64 = vfio_io(3);
/// `VFIO_GROUP_SET_CONTAINER`.
pub const GROUP_SET_CONTAINER: u64 = vfio_io(4);
/// `VFIO_GROUP_UNSET_CONTAINER`.
pub const GROUP_UNSET_CONTAINER: u64 = vfio_io(5);
/// `VFIO_GROUP_GET_DEVICE_FD`.
pub const GROUP_GET_DEVICE_FD: u64 = vfio_io(6);
/// `VFIO_DEVICE_GET_INFO`.
pub const DEVICE_GET_INFO: u64 = vfio_io(7);
/// `VFIO_DEVICE_GET_REGION_INFO`.
pub const DEVICE_GET_REGION_INFO: u64 = vfio_io(8);
/// `VFIO_DEVICE_GET_IRQ_INFO`.
pub const DEVICE_GET_IRQ_INFO: u64 = vfio_io(9);
/// `VFIO_DEVICE_SET_IRQS`.
pub const DEVICE_SET_IRQS: u64 = vfio_io(10);
/// `VFIO_DEVICE_RESET`.
pub const DEVICE_RESET: u64 = vfio_io(11);
/// `VFIO_DEVICE_GET_PCI_HOT_RESET_INFO` (device fd); the same number is `VFIO_IOMMU_GET_INFO` on a
/// container fd.
pub const DEVICE_GET_PCI_HOT_RESET_INFO: u64 = vfio_io(12);
/// `VFIO_IOMMU_GET_INFO` (container).
pub const IOMMU_GET_INFO: u64 = vfio_io(12);
/// `VFIO_IOMMU_MAP_DMA` (container).
pub const IOMMU_MAP_DMA: u64 = vfio_io(13);
/// `VFIO_IOMMU_UNMAP_DMA` (container).
pub const IOMMU_UNMAP_DMA: u64 = vfio_io(14);

/// `VFIO_TYPE1_IOMMU`.
pub const TYPE1_IOMMU: u64 = 1;
/// `VFIO_TYPE1v2_IOMMU`.
pub const TYPE1V2_IOMMU: u64 = 3;

/// `VFIO_GROUP_FLAGS_VIABLE`.
pub const GROUP_FLAGS_VIABLE: u32 = 1;
/// `VFIO_GROUP_FLAGS_CONTAINER_SET`.
pub const GROUP_FLAGS_CONTAINER_SET: u32 = 2;

/// `VFIO_DEVICE_FLAGS_RESET`.
pub const DEVICE_FLAGS_RESET: u32 = 1;
/// `VFIO_DEVICE_FLAGS_PCI`.
pub const DEVICE_FLAGS_PCI: u32 = 2;
/// `VFIO_PCI_NUM_REGIONS`.
pub const PCI_NUM_REGIONS: u32 = 9;
/// `VFIO_PCI_NUM_IRQS`.
pub const PCI_NUM_IRQS: u32 = 5;
/// `VFIO_PCI_CONFIG_REGION_INDEX`.
pub const PCI_CONFIG_REGION_INDEX: u32 = 7;

/// `VFIO_REGION_INFO_FLAG_MMAP`: the shim never offers it, so QEMU traps every BAR access.
pub const REGION_INFO_FLAG_MMAP: u32 = 4;
/// `VFIO_REGION_INFO_FLAG_CAPS`.
pub const REGION_INFO_FLAG_CAPS: u32 = 8;

/// `VFIO_IRQ_SET_DATA_NONE`.
pub const IRQ_SET_DATA_NONE: u32 = 1 << 0;
/// `VFIO_IRQ_SET_DATA_BOOL`.
pub const IRQ_SET_DATA_BOOL: u32 = 1 << 1;
/// `VFIO_IRQ_SET_DATA_EVENTFD`.
pub const IRQ_SET_DATA_EVENTFD: u32 = 1 << 2;
/// `VFIO_IRQ_SET_ACTION_MASK`.
pub const IRQ_SET_ACTION_MASK: u32 = 1 << 3;
/// `VFIO_IRQ_SET_ACTION_UNMASK`.
pub const IRQ_SET_ACTION_UNMASK: u32 = 1 << 4;
/// `VFIO_IRQ_SET_ACTION_TRIGGER`.
pub const IRQ_SET_ACTION_TRIGGER: u32 = 1 << 5;

/// `VFIO_IOMMU_INFO_PGSIZES`.
pub const IOMMU_INFO_PGSIZES: u32 = 1;
/// `VFIO_IOMMU_INFO_CAPS`.
pub const IOMMU_INFO_CAPS: u32 = 2;
/// `VFIO_IOMMU_TYPE1_INFO_CAP_IOVA_RANGE`.
pub const IOMMU_TYPE1_INFO_CAP_IOVA_RANGE: u16 = 1;
/// `VFIO_IOMMU_TYPE1_INFO_DMA_AVAIL`.
pub const IOMMU_TYPE1_INFO_DMA_AVAIL: u16 = 3;

/// `VFIO_DMA_MAP_FLAG_READ`.
pub const DMA_MAP_FLAG_READ: u32 = 1;
/// `VFIO_DMA_MAP_FLAG_WRITE`.
pub const DMA_MAP_FLAG_WRITE: u32 = 2;
/// `VFIO_DMA_UNMAP_FLAG_ALL`.
pub const DMA_UNMAP_FLAG_ALL: u32 = 2;

/// Page sizes the shim's IOMMU offers: 4 KiB, 2 MiB, 1 GiB, as on the VT-d box.
pub const IOMMU_PGSIZES: u64 = 0x4020_1000;
/// IOVA ranges the shim's IOMMU offers: below and above the x86 interrupt window, 39 bits.
pub const IOVA_RANGES: [(u64, u64); 2] = [(0, 0xfedf_ffff), (0xfef0_0000, 0x7f_ffff_ffff)];
/// `dma_entry_limit` default of the type1 driver.
pub const DMA_AVAIL: u32 = 65535;

/// Shift of a region's offset in the device fd: vfio-pci puts region `i` at `i << 40`.
pub const REGION_OFFSET_SHIFT: u32 = 40;

/// `struct vfio_group_status`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct GroupStatus {
    /// Size of the structure.
    pub argsz: u32,
    /// `VFIO_GROUP_FLAGS_*`.
    pub flags: u32,
}

/// `struct vfio_device_info` (without the 5.x `cap_offset`).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct DeviceInfo {
    /// Size of the structure.
    pub argsz: u32,
    /// `VFIO_DEVICE_FLAGS_*`.
    pub flags: u32,
    /// Number of regions.
    pub num_regions: u32,
    /// Number of IRQ indices.
    pub num_irqs: u32,
}

/// `struct vfio_region_info`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct RegionInfo {
    /// Size of the structure.
    pub argsz: u32,
    /// `VFIO_REGION_INFO_FLAG_*`.
    pub flags: u32,
    /// Region index.
    pub index: u32,
    /// Offset of the first capability.
    pub cap_offset: u32,
    /// Region size.
    pub size: u64,
    /// Offset of the region in the device fd.
    pub offset: u64,
}

/// `struct vfio_irq_info`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct IrqInfo {
    /// Size of the structure.
    pub argsz: u32,
    /// `VFIO_IRQ_INFO_*`.
    pub flags: u32,
    /// IRQ index.
    pub index: u32,
    /// Number of vectors.
    pub count: u32,
}

/// `struct vfio_irq_set` without its flexible `data[]`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct IrqSet {
    /// Size of the structure including `data`.
    pub argsz: u32,
    /// `VFIO_IRQ_SET_*`.
    pub flags: u32,
    /// IRQ index.
    pub index: u32,
    /// First vector.
    pub start: u32,
    /// Number of vectors.
    pub count: u32,
}

/// `struct vfio_iommu_type1_info`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct IommuType1Info {
    /// Size of the structure including capabilities.
    pub argsz: u32,
    /// `VFIO_IOMMU_INFO_*`.
    pub flags: u32,
    /// Supported page sizes.
    pub iova_pgsizes: u64,
    /// Offset of the first capability.
    pub cap_offset: u32,
    /// Padding.
    pub pad: u32,
}

/// `struct vfio_iommu_type1_dma_map`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct DmaMap {
    /// Size of the structure.
    pub argsz: u32,
    /// `VFIO_DMA_MAP_FLAG_*`.
    pub flags: u32,
    /// Process virtual address.
    pub vaddr: u64,
    /// I/O virtual address.
    pub iova: u64,
    /// Length in bytes.
    pub size: u64,
}

/// `struct vfio_iommu_type1_dma_unmap` without its flexible `data[]`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct DmaUnmap {
    /// Size of the structure.
    pub argsz: u32,
    /// `VFIO_DMA_UNMAP_FLAG_*`.
    pub flags: u32,
    /// I/O virtual address.
    pub iova: u64,
    /// Length in bytes (on return: bytes unmapped).
    pub size: u64,
}

/// Builds the capability chain of `VFIO_IOMMU_GET_INFO`, offsets relative to the start of the
/// info structure (the chain starts right after it).
pub fn iommu_info_caps() -> Vec<u8> {
    let base = std::mem::size_of::<IommuType1Info>() as u32;
    let mut caps = Vec::new();
    // IOVA range capability: header (id, version, next), nr_iovas, reserved, ranges.
    let iova_len = 8 + 8 + 16 * IOVA_RANGES.len() as u32;
    caps.extend_from_slice(&IOMMU_TYPE1_INFO_CAP_IOVA_RANGE.to_ne_bytes());
    caps.extend_from_slice(&1u16.to_ne_bytes());
    caps.extend_from_slice(&(base + iova_len).to_ne_bytes());
    caps.extend_from_slice(&(IOVA_RANGES.len() as u32).to_ne_bytes());
    caps.extend_from_slice(&0u32.to_ne_bytes());
    for (start, end) in IOVA_RANGES {
        caps.extend_from_slice(&start.to_ne_bytes());
        caps.extend_from_slice(&end.to_ne_bytes());
    }
    // DMA-avail capability, last in the chain (next 0).
    caps.extend_from_slice(&IOMMU_TYPE1_INFO_DMA_AVAIL.to_ne_bytes());
    caps.extend_from_slice(&1u16.to_ne_bytes());
    caps.extend_from_slice(&0u32.to_ne_bytes());
    caps.extend_from_slice(&DMA_AVAIL.to_ne_bytes());
    caps
}
