//! [`VfioSys`] on the real kernel: the legacy container/group API through rust-vmm `vfio-ioctls`,
//! plus raw ioctls where that crate hides errors or lacks a wrapper (`SET_IRQS` with arbitrary
//! data, `RESET`, `MAP_DMA` with read-only flags, `IOMMU_GET_INFO`).

use std::io;
use std::os::fd::AsRawFd;
use std::path::Path;
use std::sync::Arc;

use vfio_ioctls::{VfioContainer, VfioDevice, VfioOps, VfioRegionInfoCap};

use crate::sys::{BarMapping, DeviceFacts, IrqFacts, RegionFacts, VfioSys};

/// `_IO(VFIO_TYPE, VFIO_BASE + n)`: VFIO ioctls carry no size in their number.
const fn vfio_io(n: u64) -> u64 {
    ((b';' as u64) << 8) | (100 + n)
}
const VFIO_DEVICE_GET_INFO: u64 = vfio_io(7);
const VFIO_DEVICE_SET_IRQS: u64 = vfio_io(10);
const VFIO_DEVICE_RESET: u64 = vfio_io(11);
const VFIO_IOMMU_GET_INFO: u64 = vfio_io(12);
const VFIO_IOMMU_MAP_DMA: u64 = vfio_io(13);
const VFIO_IOMMU_UNMAP_DMA: u64 = vfio_io(14);
const REGION_FLAG_MMAP: u32 = 1 << 2;

/// `struct vfio_iommu_type1_dma_map`.
#[repr(C)]
struct DmaMap {
    argsz: u32,
    flags: u32,
    vaddr: u64,
    iova: u64,
    size: u64,
}

/// `struct vfio_iommu_type1_dma_unmap` without the dirty-bitmap tail (not requested).
#[repr(C)]
struct DmaUnmap {
    argsz: u32,
    flags: u32,
    iova: u64,
    size: u64,
}

/// Why the kernel device could not be opened.
#[derive(Debug, thiserror::Error)]
pub enum OpenError {
    /// `/dev/vfio/vfio` could not be opened or set up (type1v2).
    #[error("VFIO container: {0}")]
    Container(#[source] vfio_ioctls::VfioError),
    /// The group or device could not be opened (not bound to vfio-pci, group not viable, ...).
    #[error("VFIO device {path}: {source}")]
    Device {
        /// The sysfs path of the device.
        path: String,
        /// What vfio-ioctls reported.
        #[source]
        source: vfio_ioctls::VfioError,
    },
    /// `VFIO_DEVICE_GET_INFO` failed.
    #[error("VFIO_DEVICE_GET_INFO: {0}")]
    DeviceInfo(#[source] io::Error),
}

/// A device opened through `/dev/vfio/vfio` and its group.
pub struct KernelVfio {
    // Field order matters: the device must close before the container drops its group.
    device: VfioDevice,
    container: Arc<VfioContainer>,
    facts: DeviceFacts,
}

impl std::fmt::Debug for KernelVfio {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KernelVfio")
            .field("device_fd", &self.device.as_raw_fd())
            .field("container_fd", &self.container.as_raw_fd())
            .field("facts", &self.facts)
            .finish()
    }
}

fn ioctl_ptr(fd: i32, request: u64, arg: *mut libc::c_void) -> io::Result<i32> {
    // SAFETY: every caller passes a pointer to a live buffer laid out as `request` expects, sized
    // by its `argsz` field; the kernel writes at most `argsz` bytes.
    let r = unsafe { libc::ioctl(fd, request as _, arg) };
    if r < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(r)
    }
}

impl KernelVfio {
    /// Opens the device at `sysfs_path` (e.g. `/sys/bus/pci/devices/0000:00:02.0`, bound to
    /// vfio-pci) in a new container.
    pub fn open(sysfs_path: &Path) -> Result<Self, OpenError> {
        let container = Arc::new(VfioContainer::new(None).map_err(OpenError::Container)?);
        let ops: Arc<dyn VfioOps> = container.clone();
        let device =
            VfioDevice::new(sysfs_path, ops, false).map_err(|source| OpenError::Device {
                path: sysfs_path.display().to_string(),
                source,
            })?;
        // struct vfio_device_info { argsz, flags, num_regions, num_irqs } (cap_offset unused here)
        let mut info = [16u32, 0, 0, 0];
        ioctl_ptr(
            device.as_raw_fd(),
            VFIO_DEVICE_GET_INFO,
            info.as_mut_ptr().cast(),
        )
        .map_err(OpenError::DeviceInfo)?;
        let [_, flags, num_regions, num_irqs] = info;
        let regions = (0..num_regions)
            .map(|index| {
                let size = device.get_region_size(index);
                let rflags = device.get_region_flags(index);
                let sparse = device
                    .get_region_caps(index)
                    .into_iter()
                    .find_map(|c| match c {
                        VfioRegionInfoCap::SparseMmap(s) => Some(s.areas),
                        _ => None,
                    });
                let mmap_areas = match sparse {
                    _ if rflags & REGION_FLAG_MMAP == 0 || size == 0 => Vec::new(),
                    Some(areas) => areas.iter().map(|a| (a.offset, a.size)).collect(),
                    None => vec![(0, size)],
                };
                RegionFacts {
                    index,
                    flags: rflags,
                    size,
                    offset: device.get_region_offset(index),
                    mmap_areas,
                }
            })
            .collect();
        let irqs = (0..num_irqs)
            .filter_map(|i| device.get_irq_info(i))
            .map(|i| IrqFacts {
                index: i.index,
                flags: i.flags,
                count: i.count,
            })
            .collect();
        Ok(KernelVfio {
            facts: DeviceFacts {
                flags,
                regions,
                irqs,
            },
            device,
            container,
        })
    }
}

impl VfioSys for KernelVfio {
    fn facts(&self) -> &DeviceFacts {
        &self.facts
    }

    fn pread(&self, file_offset: u64, data: &mut [u8]) -> io::Result<usize> {
        let off = libc::off_t::try_from(file_offset)
            .map_err(|_| io::Error::from_raw_os_error(libc::EINVAL))?;
        // SAFETY: reads at most `data.len()` bytes into the live buffer `data`.
        let n = unsafe {
            libc::pread(
                self.device.as_raw_fd(),
                data.as_mut_ptr().cast(),
                data.len(),
                off,
            )
        };
        if n < 0 {
            Err(io::Error::last_os_error())
        } else {
            Ok(n as usize)
        }
    }

    fn pwrite(&self, file_offset: u64, data: &[u8]) -> io::Result<usize> {
        let off = libc::off_t::try_from(file_offset)
            .map_err(|_| io::Error::from_raw_os_error(libc::EINVAL))?;
        // SAFETY: writes `data.len()` bytes from the live buffer `data`.
        let n = unsafe {
            libc::pwrite(
                self.device.as_raw_fd(),
                data.as_ptr().cast(),
                data.len(),
                off,
            )
        };
        if n < 0 {
            Err(io::Error::last_os_error())
        } else {
            Ok(n as usize)
        }
    }

    fn mmap(&self, file_offset: u64, len: usize) -> io::Result<BarMapping> {
        let off = libc::off_t::try_from(file_offset)
            .map_err(|_| io::Error::from_raw_os_error(libc::EINVAL))?;
        // SAFETY: a fresh shared mapping of the device file chosen by the kernel; the result is
        // checked against MAP_FAILED before it is owned.
        let ptr = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_SHARED,
                self.device.as_raw_fd(),
                off,
            )
        };
        if ptr == libc::MAP_FAILED {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: `ptr..ptr+len` is the mapping just made, owned by nothing else.
        Ok(unsafe { BarMapping::from_mmap(ptr.cast(), len) })
    }

    fn set_irqs(&self, packed: &[u8]) -> io::Result<()> {
        // The kernel only reads the argument; copy it into an aligned, mutable buffer for the call.
        let mut buf = vec![0u32; packed.len().div_ceil(4)];
        // SAFETY: `buf` holds at least `packed.len()` bytes and does not overlap `packed`.
        unsafe {
            std::ptr::copy_nonoverlapping(packed.as_ptr(), buf.as_mut_ptr().cast(), packed.len())
        };
        ioctl_ptr(
            self.device.as_raw_fd(),
            VFIO_DEVICE_SET_IRQS,
            buf.as_mut_ptr().cast(),
        )?;
        Ok(())
    }

    fn reset(&self) -> io::Result<()> {
        // SAFETY: VFIO_DEVICE_RESET takes no argument.
        let r = unsafe { libc::ioctl(self.device.as_raw_fd(), VFIO_DEVICE_RESET as _) };
        if r < 0 {
            Err(io::Error::last_os_error())
        } else {
            Ok(())
        }
    }

    unsafe fn dma_map(&self, iova: u64, size: u64, vaddr: u64, flags: u32) -> io::Result<()> {
        let mut arg = DmaMap {
            argsz: std::mem::size_of::<DmaMap>() as u32,
            flags,
            vaddr,
            iova,
            size,
        };
        ioctl_ptr(
            self.container.as_raw_fd(),
            VFIO_IOMMU_MAP_DMA,
            (&mut arg as *mut DmaMap).cast(),
        )?;
        Ok(())
    }

    fn dma_unmap(&self, iova: u64, size: u64) -> io::Result<u64> {
        let mut arg = DmaUnmap {
            argsz: std::mem::size_of::<DmaUnmap>() as u32,
            flags: 0,
            iova,
            size,
        };
        ioctl_ptr(
            self.container.as_raw_fd(),
            VFIO_IOMMU_UNMAP_DMA,
            (&mut arg as *mut DmaUnmap).cast(),
        )?;
        Ok(arg.size)
    }

    fn iommu_info(&self, buf: &mut [u8]) -> io::Result<()> {
        let argsz = buf
            .get(..4)
            .and_then(|b| b.try_into().ok())
            .map(u32::from_ne_bytes);
        if !matches!(argsz, Some(a) if a as usize <= buf.len()) {
            // The kernel would write `argsz` bytes: never more than the buffer holds.
            return Err(io::Error::from_raw_os_error(libc::EINVAL));
        }
        let mut aligned = vec![0u64; buf.len().div_ceil(8)];
        // SAFETY: `aligned` holds at least `buf.len()` bytes; the regions do not overlap.
        unsafe {
            std::ptr::copy_nonoverlapping(buf.as_ptr(), aligned.as_mut_ptr().cast(), buf.len())
        };
        ioctl_ptr(
            self.container.as_raw_fd(),
            VFIO_IOMMU_GET_INFO,
            aligned.as_mut_ptr().cast(),
        )?;
        // SAFETY: as above, back the other way.
        unsafe {
            std::ptr::copy_nonoverlapping(aligned.as_ptr().cast(), buf.as_mut_ptr(), buf.len())
        };
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use std::mem::{offset_of, size_of};

    use vfio_bindings::bindings::vfio as uapi;

    use super::*;
    use crate::{iommu, irqset, sys};

    /// The raw ioctls and structures written by hand here match the kernel's uapi header as
    /// vfio-bindings generated it.
    #[test]
    fn hand_written_abi_matches_the_uapi_bindings() {
        let io = |n: u32| (u64::from(uapi::VFIO_TYPE) << 8) | u64::from(uapi::VFIO_BASE + n);
        assert_eq!(VFIO_DEVICE_GET_INFO, io(7));
        assert_eq!(VFIO_DEVICE_SET_IRQS, io(10));
        assert_eq!(VFIO_DEVICE_RESET, io(11));
        assert_eq!(VFIO_IOMMU_GET_INFO, io(12));
        assert_eq!(VFIO_IOMMU_MAP_DMA, io(13));
        assert_eq!(VFIO_IOMMU_UNMAP_DMA, io(14));

        assert_eq!(
            size_of::<DmaMap>(),
            size_of::<uapi::vfio_iommu_type1_dma_map>()
        );
        assert_eq!(
            offset_of!(DmaMap, vaddr),
            offset_of!(uapi::vfio_iommu_type1_dma_map, vaddr)
        );
        assert_eq!(
            offset_of!(DmaMap, iova),
            offset_of!(uapi::vfio_iommu_type1_dma_map, iova)
        );
        assert_eq!(
            offset_of!(DmaMap, size),
            offset_of!(uapi::vfio_iommu_type1_dma_map, size)
        );
        assert_eq!(
            offset_of!(DmaUnmap, iova),
            offset_of!(uapi::vfio_iommu_type1_dma_unmap, iova)
        );
        assert_eq!(
            offset_of!(DmaUnmap, size),
            offset_of!(uapi::vfio_iommu_type1_dma_unmap, size)
        );
        assert_eq!(size_of::<uapi::vfio_irq_set>(), irqset::HEADER_LEN);
        assert_eq!(size_of::<uapi::vfio_iommu_type1_info>(), iommu::INFO_LEN);
        assert_eq!(
            size_of::<uapi::vfio_device_info>(),
            24,
            "argsz 16 asks for the first four fields"
        );
        assert_eq!(offset_of!(uapi::vfio_device_info, num_irqs), 12);

        assert_eq!(irqset::DATA_NONE, uapi::VFIO_IRQ_SET_DATA_NONE);
        assert_eq!(irqset::DATA_BOOL, uapi::VFIO_IRQ_SET_DATA_BOOL);
        assert_eq!(irqset::DATA_EVENTFD, uapi::VFIO_IRQ_SET_DATA_EVENTFD);
        assert_eq!(irqset::ACTION_MASK, uapi::VFIO_IRQ_SET_ACTION_MASK);
        assert_eq!(irqset::ACTION_UNMASK, uapi::VFIO_IRQ_SET_ACTION_UNMASK);
        assert_eq!(irqset::ACTION_TRIGGER, uapi::VFIO_IRQ_SET_ACTION_TRIGGER);
        assert_eq!(sys::DEVICE_FLAG_RESET, uapi::VFIO_DEVICE_FLAGS_RESET);
        assert_eq!(REGION_FLAG_MMAP, uapi::VFIO_REGION_INFO_FLAG_MMAP);
        assert_eq!(iommu::INFO_PGSIZES, uapi::VFIO_IOMMU_INFO_PGSIZES);
        assert_eq!(iommu::INFO_CAPS, uapi::VFIO_IOMMU_INFO_CAPS);
        assert_eq!(
            u32::from(iommu::CAP_IOVA_RANGE),
            uapi::VFIO_IOMMU_TYPE1_INFO_CAP_IOVA_RANGE
        );
        assert_eq!(
            u32::from(iommu::CAP_MIGRATION),
            uapi::VFIO_IOMMU_TYPE1_INFO_CAP_MIGRATION
        );
        assert_eq!(
            u32::from(iommu::CAP_DMA_AVAIL),
            uapi::VFIO_IOMMU_TYPE1_INFO_DMA_AVAIL
        );
        assert_eq!(hwrr_device::dma_flags::READ, uapi::VFIO_DMA_MAP_FLAG_READ);
        assert_eq!(hwrr_device::dma_flags::WRITE, uapi::VFIO_DMA_MAP_FLAG_WRITE);
    }
}
