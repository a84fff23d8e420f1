//! [`VfioSys`] on the real kernel, through rust-vmm `vfio-ioctls`: the legacy container/group API,
//! or (with the `iommufd` feature) the VFIO device cdev bound to an iommufd IOAS. Both give the same
//! kind of device fd, so everything but DMA mapping and IOMMU limits is shared. Raw ioctls cover
//! what that crate hides errors of or lacks a wrapper for (`SET_IRQS` with arbitrary data, `RESET`,
//! `MAP_DMA` with read-only flags, `IOMMU_GET_INFO`, `IOMMU_IOAS_IOVA_RANGES`).

use std::io;
use std::os::fd::AsRawFd;
use std::path::Path;
use std::sync::Arc;

#[cfg(feature = "iommufd")]
use vfio_ioctls::VfioIommufd;
use vfio_ioctls::{VfioContainer, VfioDevice, VfioOps, VfioRegionInfoCap};

use crate::iommu::IommuInfo;
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
/// Where the kernel puts VFIO device cdevs (vfio-ioctls opens them here).
const CDEV_DIR: &str = "/dev/vfio/devices";

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
    /// The iommufd path was asked for, but this build has no `iommufd` feature.
    #[error(
        "this hwrr was built without the iommufd feature (cargo feature `iommufd` of \
         hwrr-vfio-backend); use the group path"
    )]
    IommufdNotBuilt,
    /// The kernel shows no VFIO device cdev for the device (no `vfio-dev/vfioN` in sysfs, or no
    /// `/dev/vfio/devices/vfioN`).
    #[error(
        "no /dev/vfio/devices/vfioN for {bdf}: the kernel has no VFIO_DEVICE_CDEV; use the group \
         path ({why})"
    )]
    NoCdev {
        /// The device.
        bdf: String,
        /// What was missing.
        why: String,
    },
    /// `/dev/iommu` could not be opened or an IOAS could not be allocated (only with the
    /// `iommufd` feature; the variant exists in every build so that matches do not depend on it).
    #[error("iommufd (/dev/iommu; modprobe iommufd if it is a module): {0}")]
    Iommufd(#[source] vfio_ioctls::VfioError),
}

/// What maps DMA for the device: where `MAP_DMA`-like calls go.
enum Iommu {
    /// The legacy type1 container the device's group is in.
    Container(Arc<VfioContainer>),
    /// An iommufd and the IOAS the device cdev is attached to.
    #[cfg(feature = "iommufd")]
    Iommufd(Arc<VfioIommufd>),
}

impl Iommu {
    fn fd(&self) -> i32 {
        match self {
            Iommu::Container(c) => c.as_raw_fd(),
            #[cfg(feature = "iommufd")]
            Iommu::Iommufd(i) => i.iommufd().as_raw_fd(),
        }
    }
}

/// A device opened through `/dev/vfio/vfio` and its group, or (with the `iommufd` feature) through
/// its VFIO cdev and `/dev/iommu`.
pub struct KernelVfio {
    // Field order matters: the device must close (and, on iommufd, detach from the IOAS) before the
    // container drops its group or the IOAS is destroyed.
    device: VfioDevice,
    iommu: Iommu,
    facts: DeviceFacts,
}

impl std::fmt::Debug for KernelVfio {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KernelVfio")
            .field("device_fd", &self.device.as_raw_fd())
            .field(
                match self.iommu {
                    Iommu::Container(_) => "container_fd",
                    #[cfg(feature = "iommufd")]
                    Iommu::Iommufd(_) => "iommufd",
                },
                &self.iommu.fd(),
            )
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

/// The VFIO device at `sysfs_path` behind `ops` (a container, or an iommufd with `attach_ioas`).
fn device_at(
    sysfs_path: &Path,
    ops: Arc<dyn VfioOps>,
    attach_ioas: bool,
) -> Result<VfioDevice, OpenError> {
    VfioDevice::new(sysfs_path, ops, attach_ioas).map_err(|source| OpenError::Device {
        path: sysfs_path.display().to_string(),
        source,
    })
}

impl KernelVfio {
    /// Opens the device at `sysfs_path` (e.g. `/sys/bus/pci/devices/0000:00:02.0`, bound to
    /// vfio-pci) in a new container.
    pub fn open(sysfs_path: &Path) -> Result<Self, OpenError> {
        let container = Arc::new(VfioContainer::new(None).map_err(OpenError::Container)?);
        let device = device_at(sysfs_path, container.clone(), false)?;
        Self::with_device(device, Iommu::Container(container))
    }

    /// Opens the device at `sysfs_path` through its VFIO cdev: finds `vfio-dev/vfioN` in sysfs,
    /// opens `/dev/vfio/devices/vfioN` and `/dev/iommu`, binds the device to the iommufd, allocates
    /// an IOAS and attaches the device to it. DMA mappings then go to that IOAS at fixed IOVAs.
    ///
    /// Without the `iommufd` feature this returns [`OpenError::IommufdNotBuilt`].
    pub fn open_iommufd(sysfs_path: &Path) -> Result<Self, OpenError> {
        let bdf = sysfs_path.file_name().map_or_else(
            || sysfs_path.display().to_string(),
            |n| n.to_string_lossy().into_owned(),
        );
        let cdev =
            crate::preflight::vfio_cdev_name(sysfs_path).map_err(|why| OpenError::NoCdev {
                bdf: bdf.clone(),
                why,
            })?;
        let node = Path::new(CDEV_DIR).join(&cdev);
        if !node.exists() {
            return Err(OpenError::NoCdev {
                bdf,
                why: format!("sysfs names {cdev}, but {} does not exist", node.display()),
            });
        }
        Self::open_cdev(sysfs_path)
    }

    #[cfg(not(feature = "iommufd"))]
    fn open_cdev(_sysfs_path: &Path) -> Result<Self, OpenError> {
        Err(OpenError::IommufdNotBuilt)
    }

    #[cfg(feature = "iommufd")]
    fn open_cdev(sysfs_path: &Path) -> Result<Self, OpenError> {
        use iommufd_ioctls::IommuFd;
        let iommufd = IommuFd::new()
            .map_err(|e| OpenError::Iommufd(vfio_ioctls::VfioError::NewVfioIommufd(e)))?;
        let iommufd =
            Arc::new(VfioIommufd::new(Arc::new(iommufd), None, None).map_err(OpenError::Iommufd)?);
        // attach_ioas: the device joins the IOAS now, so mappings made later reach it.
        let device = device_at(sysfs_path, iommufd.clone(), true)?;
        Self::with_device(device, Iommu::Iommufd(iommufd))
    }

    /// Reads the device's facts (flags, regions, IRQs): the same for both ways of opening it.
    fn with_device(device: VfioDevice, iommu: Iommu) -> Result<Self, OpenError> {
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
            iommu,
        })
    }

    /// Whether the device was opened through its cdev and iommufd (else: container/group).
    pub fn is_iommufd(&self) -> bool {
        !matches!(self.iommu, Iommu::Container(_))
    }
}

// Without the iommufd feature `Iommu` has one variant, and the matches that pick the container
// look infallible to clippy.
#[cfg_attr(
    not(feature = "iommufd"),
    allow(clippy::infallible_destructuring_match)
)]
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
        let container = match &self.iommu {
            Iommu::Container(c) => c,
            #[cfg(feature = "iommufd")]
            // SAFETY: the caller keeps `vaddr..vaddr+size` mapped until it is unmapped (this
            // function's own contract).
            Iommu::Iommufd(i) => return unsafe { ioas::map(i, iova, size, vaddr, flags) },
        };
        let mut arg = DmaMap {
            argsz: std::mem::size_of::<DmaMap>() as u32,
            flags,
            vaddr,
            iova,
            size,
        };
        ioctl_ptr(
            container.as_raw_fd(),
            VFIO_IOMMU_MAP_DMA,
            (&mut arg as *mut DmaMap).cast(),
        )?;
        Ok(())
    }

    fn dma_unmap(&self, iova: u64, size: u64) -> io::Result<u64> {
        let container = match &self.iommu {
            Iommu::Container(c) => c,
            #[cfg(feature = "iommufd")]
            Iommu::Iommufd(i) => return ioas::unmap(i, iova, size),
        };
        let mut arg = DmaUnmap {
            argsz: std::mem::size_of::<DmaUnmap>() as u32,
            flags: 0,
            iova,
            size,
        };
        ioctl_ptr(
            container.as_raw_fd(),
            VFIO_IOMMU_UNMAP_DMA,
            (&mut arg as *mut DmaUnmap).cast(),
        )?;
        Ok(arg.size)
    }

    fn iommu_info(&self, buf: &mut [u8]) -> io::Result<()> {
        let container = match &self.iommu {
            Iommu::Container(c) => c,
            // An iommufd has no VFIO_IOMMU_GET_INFO; `decoded_iommu_info` answers instead.
            #[cfg(feature = "iommufd")]
            Iommu::Iommufd(_) => return Err(io::Error::from_raw_os_error(libc::ENOTTY)),
        };
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
            container.as_raw_fd(),
            VFIO_IOMMU_GET_INFO,
            aligned.as_mut_ptr().cast(),
        )?;
        // SAFETY: as above, back the other way.
        unsafe {
            std::ptr::copy_nonoverlapping(aligned.as_ptr().cast(), buf.as_mut_ptr(), buf.len())
        };
        Ok(())
    }

    fn decoded_iommu_info(&self) -> Option<io::Result<IommuInfo>> {
        match &self.iommu {
            Iommu::Container(_) => None,
            #[cfg(feature = "iommufd")]
            Iommu::Iommufd(i) => Some(ioas::info(i)),
        }
    }
}

/// DMA through an iommufd IOAS (`IOMMU_IOAS_MAP`/`UNMAP`/`IOVA_RANGES`).
#[cfg(feature = "iommufd")]
mod ioas {
    use std::io;
    use std::os::fd::AsRawFd;

    use iommufd_bindings::iommufd as uapi;
    use iommufd_ioctls::IommufdError;
    use vfio_ioctls::VfioIommufd;

    use super::ioctl_ptr;
    use crate::iommu::IommuInfo;

    /// `IOMMU_IOAS_IOVA_RANGES`: `_IO(IOMMUFD_TYPE, IOMMUFD_CMD_IOAS_IOVA_RANGES)`.
    pub(super) const IOMMU_IOAS_IOVA_RANGES: u64 =
        ((uapi::IOMMUFD_TYPE as u64) << 8) | uapi::IOMMUFD_CMD_IOAS_IOVA_RANGES as u64;
    /// More ranges than any IOMMU reports: a kernel asking for more is not believed.
    const MAX_RANGES: u32 = 4096;

    fn errno(e: IommufdError) -> io::Error {
        match e {
            IommufdError::IommuIoasMap(s) | IommufdError::IommuIoasUnmap(s) => {
                io::Error::from_raw_os_error(s.errno())
            }
            other => io::Error::other(other),
        }
    }

    /// The IOAS map flags for `VFIO_DMA_MAP_FLAG_READ`/`WRITE` (whose bits differ), at a fixed IOVA.
    pub(super) fn map_flags(vfio_flags: u32) -> u32 {
        let mut f = uapi::iommufd_ioas_map_flags_IOMMU_IOAS_MAP_FIXED_IOVA;
        if vfio_flags & hwrr_device::dma_flags::READ != 0 {
            f |= uapi::iommufd_ioas_map_flags_IOMMU_IOAS_MAP_READABLE;
        }
        if vfio_flags & hwrr_device::dma_flags::WRITE != 0 {
            f |= uapi::iommufd_ioas_map_flags_IOMMU_IOAS_MAP_WRITEABLE;
        }
        f
    }

    /// # Safety
    /// As [`crate::VfioSys::dma_map`].
    pub(super) unsafe fn map(
        i: &VfioIommufd,
        iova: u64,
        size: u64,
        vaddr: u64,
        flags: u32,
    ) -> io::Result<()> {
        let arg = uapi::iommu_ioas_map {
            size: std::mem::size_of::<uapi::iommu_ioas_map>() as u32,
            flags: map_flags(flags),
            ioas_id: i.ioas().id(),
            __reserved: 0,
            user_va: vaddr,
            length: size,
            iova,
        };
        i.iommufd().map_iommu_ioas(&arg).map_err(errno)
    }

    /// Unmaps `iova..iova+size`; returns the length the kernel unmapped.
    pub(super) fn unmap(i: &VfioIommufd, iova: u64, size: u64) -> io::Result<u64> {
        let mut arg = uapi::iommu_ioas_unmap {
            size: std::mem::size_of::<uapi::iommu_ioas_unmap>() as u32,
            ioas_id: i.ioas().id(),
            iova,
            length: size,
        };
        i.iommufd().unmap_iommu_ioas(&mut arg).map_err(errno)?;
        Ok(arg.length)
    }

    /// The IOAS's usable IOVA ranges and required IOVA alignment.
    pub(super) fn info(i: &VfioIommufd) -> io::Result<IommuInfo> {
        let fd = i.iommufd().as_raw_fd();
        let mut ranges: Vec<uapi::iommu_iova_range> = Vec::new();
        for _ in 0..4 {
            let mut arg = uapi::iommu_ioas_iova_ranges {
                size: std::mem::size_of::<uapi::iommu_ioas_iova_ranges>() as u32,
                ioas_id: i.ioas().id(),
                num_iovas: ranges.len() as u32,
                __reserved: 0,
                allowed_iovas: ranges.as_mut_ptr() as u64,
                out_iova_alignment: 0,
            };
            // The kernel writes at most `num_iovas` ranges to `allowed_iovas` (the live, correctly
            // sized `ranges`) and sets `num_iovas` to how many there are; EMSGSIZE means "more".
            match ioctl_ptr(
                fd,
                IOMMU_IOAS_IOVA_RANGES,
                &mut arg as *mut _ as *mut libc::c_void,
            ) {
                Ok(_) => {
                    ranges.truncate(arg.num_iovas as usize);
                    let ranges = ranges.iter().map(|r| (r.start, r.last)).collect();
                    return Ok(IommuInfo::from_ioas(arg.out_iova_alignment, ranges));
                }
                Err(e) if e.raw_os_error() == Some(libc::EMSGSIZE) => {
                    if arg.num_iovas > MAX_RANGES {
                        break;
                    }
                    ranges = vec![uapi::iommu_iova_range::default(); arg.num_iovas as usize];
                }
                Err(e) => return Err(e),
            }
        }
        Err(io::Error::other(
            "IOMMU_IOAS_IOVA_RANGES: the kernel kept asking for a larger buffer",
        ))
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

    /// Without a VFIO cdev in sysfs (the 6.1 box, any kernel without VFIO_DEVICE_CDEV) the iommufd
    /// path says so and points at the group path, whatever the build.
    #[test]
    fn no_cdev_in_sysfs_is_a_clear_error() {
        let t = tempfile::tempdir().unwrap();
        let dev = t.path().join("0000:00:02.0");
        std::fs::create_dir_all(&dev).unwrap();
        let e = KernelVfio::open_iommufd(&dev).unwrap_err();
        let msg = e.to_string();
        assert!(matches!(e, OpenError::NoCdev { .. }), "{e}");
        assert!(
            msg.starts_with(
                "no /dev/vfio/devices/vfioN for 0000:00:02.0: the kernel has no VFIO_DEVICE_CDEV; \
                 use the group path"
            ),
            "{msg}"
        );
        // sysfs names a cdev that /dev does not have.
        std::fs::create_dir_all(dev.join("vfio-dev/vfio987654")).unwrap();
        if !Path::new("/dev/vfio/devices/vfio987654").exists() {
            let e = KernelVfio::open_iommufd(&dev).unwrap_err();
            assert!(
                e.to_string()
                    .contains("vfio987654, but /dev/vfio/devices/vfio987654 does not exist"),
                "{e}"
            );
        }
    }

    #[cfg(feature = "iommufd")]
    #[test]
    fn iommufd_abi_matches_the_uapi() {
        use iommufd_bindings::iommufd as iuapi;
        // include/uapi/linux/iommufd.h: IOMMU_IOAS_IOVA_RANGES is _IO(';', 0x84).
        assert_eq!(ioas::IOMMU_IOAS_IOVA_RANGES, 0x3b84);
        let fixed = iuapi::iommufd_ioas_map_flags_IOMMU_IOAS_MAP_FIXED_IOVA;
        let r = iuapi::iommufd_ioas_map_flags_IOMMU_IOAS_MAP_READABLE;
        let w = iuapi::iommufd_ioas_map_flags_IOMMU_IOAS_MAP_WRITEABLE;
        // VFIO's READ/WRITE bits (1, 2) are not iommufd's (4, 2): they are translated.
        assert_eq!(ioas::map_flags(hwrr_device::dma_flags::READ), fixed | r);
        assert_eq!(ioas::map_flags(hwrr_device::dma_flags::WRITE), fixed | w);
        assert_eq!(
            ioas::map_flags(hwrr_device::dma_flags::READ | hwrr_device::dma_flags::WRITE),
            fixed | r | w
        );
        assert_eq!(size_of::<iuapi::iommu_ioas_iova_ranges>(), 32);
        assert_eq!(size_of::<iuapi::iommu_iova_range>(), 16);
    }

    /// Without the feature, a device that does have a cdev is refused with the reason.
    #[cfg(not(feature = "iommufd"))]
    #[test]
    fn without_the_feature_the_cdev_path_says_so() {
        let e = KernelVfio::open_cdev(Path::new("/nonexistent")).unwrap_err();
        assert!(matches!(e, OpenError::IommufdNotBuilt));
        assert!(e.to_string().contains("without the iommufd feature"), "{e}");
    }
}
