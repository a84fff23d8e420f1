//! The hwrr backend for a real PCI device passed through with Linux VFIO.
//!
//! [`VfioBackend`] implements [`hwrr_device::Device`] for a device bound to `vfio-pci`, opened with
//! the kernel's container/group API (rust-vmm `vfio-ioctls`), or, with the `iommufd` feature and
//! [`IommuApi::Iommufd`], through its VFIO cdev bound to an iommufd IOAS (DMA then goes through
//! `IOMMU_IOAS_MAP`; everything else is the same code). Every access is reported with its
//! error: BAR and config accesses go through `pread`/`pwrite` on the device file (or, as an option,
//! through `mmap`ed BARs where the kernel allows it), interrupts are wired with
//! `VFIO_DEVICE_SET_IRQS` to the eventfds the caller hands over, DMA mappings go to the IOMMU with
//! `VFIO_IOMMU_MAP_DMA` and are tracked so "unmap all" works, and the expansion ROM is read once at
//! open so that a recorder can put it in the trace header.
//!
//! All syscalls go through the [`VfioSys`] seam: [`KernelVfio`] is the real one, and the unit tests
//! drive the backend's logic through a fake.

#![deny(missing_docs)]

pub mod iommu;
pub mod irqset;
pub mod kernel;
pub mod preflight;
pub mod sys;

use std::collections::BTreeMap;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use hwrr_device::{
    dma_flags, Device, DeviceDescription, DeviceError, DeviceIdentity, DmaMapping, DmaRegion,
    GuestMemory, IrqInfo, IrqSetRequest, MappedMemory, RegionInfo, RegionKind,
};
use hwrr_formats::header::region_index;

pub use iommu::IommuInfo;
pub use kernel::{KernelVfio, OpenError};
pub use sys::{BarMapping, DeviceFacts, IrqFacts, RegionFacts, VfioSys};

/// VFIO region flag: readable.
const REGION_READ: u32 = 1 << 0;
/// VFIO region flag: writable.
const REGION_WRITE: u32 = 1 << 1;
/// ROM images are read in pieces of this size (vfio-pci maps the ROM for each read).
const ROM_CHUNK: usize = 64 * 1024;
/// Config space is at most this large (PCIe extended config space).
const CONFIG_MAX: u64 = 4096;

/// How BAR accesses reach the device.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum AccessMode {
    /// `pread`/`pwrite` on the device file for every access: the kernel sees (and can refuse) each
    /// one, so a recorder sees every access and every error. The default.
    #[default]
    FileIo,
    /// Naturally aligned 1/2/4/8-byte accesses to parts of BARs the kernel lets us `mmap` go through
    /// the mapping (faster, no syscall); everything else still uses `pread`/`pwrite`.
    Mmap,
}

/// Which kernel interface opens the device and maps its DMA.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum IommuApi {
    /// The legacy container/group API (`/dev/vfio/vfio`, `/dev/vfio/<group>`, type1 IOMMU). Works
    /// on every kernel with VFIO. The default.
    #[default]
    Container,
    /// The VFIO device cdev (`/dev/vfio/devices/vfioN`) bound to an iommufd (`/dev/iommu`) IOAS.
    /// Needs Linux >= 6.6 with `CONFIG_IOMMUFD` and `CONFIG_VFIO_DEVICE_CDEV`, and this crate's
    /// `iommufd` feature (without it, opening fails with [`OpenError::IommufdNotBuilt`]).
    Iommufd,
}

/// How to open a device.
#[derive(Clone, Debug)]
pub struct OpenOptions {
    /// Where sysfs is mounted (`/sys`); the device is `<root>/bus/pci/devices/<BDF>`.
    pub sysfs_root: PathBuf,
    /// How BAR accesses reach the device.
    pub access: AccessMode,
    /// Read the expansion ROM at open (default true). Reading it briefly enables ROM decoding.
    pub read_rom: bool,
    /// Container/group (default) or cdev + iommufd.
    pub iommu: IommuApi,
}

impl Default for OpenOptions {
    fn default() -> Self {
        OpenOptions {
            sysfs_root: PathBuf::from("/sys"),
            access: AccessMode::FileIo,
            read_rom: true,
            iommu: IommuApi::Container,
        }
    }
}

/// Why a device could not be opened.
#[derive(Debug, thiserror::Error)]
pub enum VfioBackendError {
    /// The PCI address is not of the form `DDDD:BB:DD.F` (or `BB:DD.F`).
    #[error("{0:?} is not a PCI address like 0000:00:02.0")]
    BadBdf(String),
    /// Sysfs shows the device cannot be opened (absent, no IOMMU group, not bound to vfio-pci, group
    /// not viable).
    #[error(transparent)]
    Preflight(#[from] preflight::PreflightError),
    /// The kernel refused to open the container, group or device.
    #[error(transparent)]
    Open(#[from] OpenError),
    /// The device has no config region.
    #[error("the device has no readable config region (VFIO region 7)")]
    NoConfigRegion,
    /// Config space could not be read at open.
    #[error("reading config space: {0}")]
    Config(#[source] DeviceError),
    /// `VFIO_IOMMU_GET_INFO` (iommufd: `IOMMU_IOAS_IOVA_RANGES`) failed or its answer could not be
    /// decoded.
    #[error("IOMMU info: {0}")]
    IommuInfo(String),
}

/// Normalises a PCI address: `00:02.0` becomes `0000:00:02.0`; anything that is not a PCI address
/// (including path separators) is refused, so it is safe to join into a sysfs path.
pub fn normalize_bdf(bdf: &str) -> Result<String, VfioBackendError> {
    let bad = || VfioBackendError::BadBdf(bdf.to_string());
    let full = match bdf.matches(':').count() {
        1 => format!("0000:{bdf}"),
        2 => bdf.to_string(),
        _ => return Err(bad()),
    };
    let (domain, rest) = full.split_once(':').ok_or_else(bad)?;
    let (bus, rest) = rest.split_once(':').ok_or_else(bad)?;
    let (dev, func) = rest.split_once('.').ok_or_else(bad)?;
    let hex = |s: &str, n: usize| s.len() == n && s.bytes().all(|b| b.is_ascii_hexdigit());
    let dev_ok = hex(dev, 2) && u8::from_str_radix(dev, 16).is_ok_and(|d| d < 32);
    let func_ok = func.len() == 1 && matches!(func.as_bytes()[0], b'0'..=b'7');
    if hex(domain, 4) && hex(bus, 2) && dev_ok && func_ok {
        Ok(full.to_ascii_lowercase())
    } else {
        Err(bad())
    }
}

/// A DMA mapping the backend made, with the memory it keeps alive while the IOMMU maps it.
#[derive(Debug)]
struct TrackedDma {
    len: u64,
    flags: u32,
    _memory: Arc<MappedMemory>,
}

/// A device passed through with VFIO, driven as an [`hwrr_device::Device`].
///
/// Generic over the syscall seam; [`VfioBackend::open`] gives the kernel one.
#[derive(Debug)]
pub struct VfioBackend<S: VfioSys = KernelVfio> {
    // Declared first so it drops first: closing the container removes every IOMMU mapping before
    // the memory behind `dma` can be freed.
    sys: S,
    description: DeviceDescription,
    region_facts: BTreeMap<u32, RegionFacts>,
    /// Per region, its mmapped areas as (offset in region, mapping).
    mmaps: BTreeMap<u32, Vec<(u64, BarMapping)>>,
    dma: BTreeMap<u64, TrackedDma>,
    dma_align: u64,
    rom_error: Option<String>,
    mmap_errors: Vec<String>,
}

fn io_err(e: io::Error) -> DeviceError {
    DeviceError::Io(e)
}

impl VfioBackend<KernelVfio> {
    /// Opens the device at PCI address `bdf` (bound to `vfio-pci`) after the sysfs checks of
    /// [`preflight::check`]: in a new VFIO container, or through its cdev in a new iommufd IOAS
    /// ([`OpenOptions::iommu`]).
    pub fn open(bdf: &str, options: &OpenOptions) -> Result<Self, VfioBackendError> {
        let bdf = normalize_bdf(bdf)?;
        let found = preflight::check(&options.sysfs_root, &bdf)?;
        let sys = match options.iommu {
            IommuApi::Container => KernelVfio::open(&found.path)?,
            IommuApi::Iommufd => KernelVfio::open_iommufd(&found.path)?,
        };
        Self::with_sys(sys, Some(bdf), options.access, options.read_rom)
    }

    /// The sysfs directory of `bdf` under `sysfs_root`.
    pub fn sysfs_path(sysfs_root: &Path, bdf: &str) -> Result<PathBuf, VfioBackendError> {
        Ok(sysfs_root.join("bus/pci/devices").join(normalize_bdf(bdf)?))
    }
}

impl<S: VfioSys> VfioBackend<S> {
    /// Builds the backend on an opened device: reads config space (for the identity and to tell
    /// I/O BARs from memory BARs), the ROM when `read_rom`, and maps BARs when `access` asks for it.
    pub fn with_sys(
        sys: S,
        bdf: Option<String>,
        access: AccessMode,
        read_rom: bool,
    ) -> Result<Self, VfioBackendError> {
        let facts = sys.facts().clone();
        let region_facts: BTreeMap<u32, RegionFacts> = facts
            .regions
            .iter()
            .filter(|r| r.size > 0)
            .map(|r| (r.index, r.clone()))
            .collect();
        let config_facts = region_facts
            .get(&region_index::CONFIG)
            .filter(|r| r.flags & REGION_READ != 0)
            .ok_or(VfioBackendError::NoConfigRegion)?;
        let config_len = config_facts.size.min(CONFIG_MAX) as usize;
        let mut config_space = vec![0u8; config_len];
        read_exact(&sys, config_facts.offset, &mut config_space)
            .map_err(VfioBackendError::Config)?;

        let regions = region_facts
            .values()
            .map(|r| RegionInfo {
                index: r.index,
                kind: RegionKind::of_vfio_region(r.index, &config_space),
                size: r.size,
                flags: r.flags,
                alias_of: None,
            })
            .collect();
        let irqs = facts
            .irqs
            .iter()
            .map(|i| IrqInfo {
                index: i.index,
                count: i.count,
                flags: i.flags,
            })
            .collect();
        let identity = DeviceIdentity::from_config_space(&config_space, bdf.clone()).unwrap_or(
            DeviceIdentity {
                bdf,
                ..DeviceIdentity::default()
            },
        );

        let mut backend = VfioBackend {
            sys,
            description: DeviceDescription {
                identity,
                config_space,
                regions,
                irqs,
                rom: None,
            },
            region_facts,
            mmaps: BTreeMap::new(),
            dma: BTreeMap::new(),
            dma_align: 4096,
            rom_error: None,
            mmap_errors: Vec::new(),
        };
        if let Some(page) = backend.iommu_info().ok().and_then(|i| i.min_page_size()) {
            backend.dma_align = page;
        }
        if read_rom {
            backend.read_rom();
        }
        if access == AccessMode::Mmap {
            backend.map_bars();
        }
        Ok(backend)
    }

    fn read_rom(&mut self) {
        let Some(rom) = self.region_facts.get(&region_index::ROM).cloned() else {
            return;
        };
        let Ok(size) = usize::try_from(rom.size) else {
            self.rom_error = Some(format!("ROM of {} bytes is too large", rom.size));
            return;
        };
        let mut image = vec![0u8; size];
        for (i, chunk) in image.chunks_mut(ROM_CHUNK).enumerate() {
            if let Err(e) = read_exact(&self.sys, rom.offset + (i * ROM_CHUNK) as u64, chunk) {
                // A ROM BAR without a valid image (no 0x55AA) makes vfio-pci refuse the read; the
                // device simply has no ROM to capture.
                tracing::warn!("expansion ROM not captured: {e}");
                self.rom_error = Some(e.to_string());
                return;
            }
        }
        self.description.rom = Some(image);
    }

    fn map_bars(&mut self) {
        for r in self.region_facts.values() {
            if r.index > region_index::BAR5 || r.flags & (REGION_READ | REGION_WRITE) == 0 {
                continue;
            }
            let mut areas = Vec::new();
            for &(off, len) in &r.mmap_areas {
                let mapped = usize::try_from(len)
                    .map_err(|_| io::Error::from_raw_os_error(libc::EINVAL))
                    .and_then(|l| {
                        let at = r
                            .offset
                            .checked_add(off)
                            .ok_or_else(|| io::Error::from_raw_os_error(libc::EINVAL))?;
                        self.sys.mmap(at, l)
                    });
                match mapped {
                    Ok(m) => areas.push((off, m)),
                    Err(e) => {
                        // Not fatal: the area keeps working through pread/pwrite.
                        let msg = format!("region {} area {off:#x}+{len:#x}: mmap: {e}", r.index);
                        tracing::warn!("{msg}");
                        self.mmap_errors.push(msg);
                    }
                }
            }
            if !areas.is_empty() {
                self.mmaps.insert(r.index, areas);
            }
        }
    }

    /// The syscall seam (tests inspect their fake through it).
    pub fn sys(&self) -> &S {
        &self.sys
    }

    /// Why the ROM was not captured, when the device has a ROM region but reading it failed.
    pub fn rom_error(&self) -> Option<&str> {
        self.rom_error.as_deref()
    }

    /// Areas that [`AccessMode::Mmap`] could not map (they fall back to `pread`/`pwrite`).
    pub fn mmap_errors(&self) -> &[String] {
        &self.mmap_errors
    }

    /// Regions with at least one `mmap`ed area, as `(index, [(offset, len)])`.
    pub fn mmapped_areas(&self) -> Vec<(u32, Vec<(u64, u64)>)> {
        self.mmaps
            .iter()
            .map(|(i, a)| (*i, a.iter().map(|(o, m)| (*o, m.len() as u64)).collect()))
            .collect()
    }

    /// `VFIO_DEVICE_FLAGS_*` of the device.
    pub fn device_flags(&self) -> u32 {
        self.sys.facts().flags
    }

    /// The container's IOMMU: page sizes, usable IOVA ranges, mapping budget (on iommufd: the
    /// IOAS's ranges and IOVA alignment, see [`IommuInfo::from_ioas`]).
    pub fn iommu_info(&self) -> Result<IommuInfo, VfioBackendError> {
        if let Some(decoded) = self.sys.decoded_iommu_info() {
            return decoded.map_err(|e| VfioBackendError::IommuInfo(e.to_string()));
        }
        let mut size = 256usize;
        for _ in 0..4 {
            let mut buf = vec![0u8; size];
            buf[..4].copy_from_slice(&(size as u32).to_ne_bytes());
            self.sys
                .iommu_info(&mut buf)
                .map_err(|e| VfioBackendError::IommuInfo(e.to_string()))?;
            match iommu::wanted_argsz(&buf) {
                // The kernel raises argsz when the capability chain does not fit: ask again.
                Some(want) if want as usize > size && want <= 1 << 20 => size = want as usize,
                _ => {
                    return iommu::parse(&buf)
                        .map_err(|e| VfioBackendError::IommuInfo(e.to_string()))
                }
            }
        }
        Err(VfioBackendError::IommuInfo(
            "the kernel kept asking for a larger buffer".into(),
        ))
    }

    /// The DMA mappings in force, in IOVA order.
    pub fn dma_mappings(&self) -> Vec<DmaMapping> {
        self.dma
            .iter()
            .map(|(iova, m)| DmaMapping {
                iova: *iova,
                len: m.len,
                flags: m.flags,
            })
            .collect()
    }

    /// The file offset of `len` bytes at `offset` of `region`, after the bounds and permission
    /// checks.
    fn locate(&self, region: u32, offset: u64, len: usize, need: u32) -> Result<u64, DeviceError> {
        self.description.check_access(region, offset, len)?;
        let facts = self
            .region_facts
            .get(&region)
            .ok_or(DeviceError::NoSuchRegion(region))?;
        if facts.flags & need != need {
            let what = if need == REGION_READ {
                "readable"
            } else {
                "writable"
            };
            return Err(DeviceError::Unsupported(format!(
                "region {region} is not {what}"
            )));
        }
        facts
            .offset
            .checked_add(offset)
            .ok_or(DeviceError::OutOfRange {
                region,
                offset,
                len: len as u64,
                size: facts.size,
            })
    }

    fn mapping_for(&self, region: u32, offset: u64) -> Option<(&BarMapping, u64)> {
        self.mmaps
            .get(&region)?
            .iter()
            .find(|(start, m)| offset >= *start && offset - start < m.len() as u64)
            .map(|(start, m)| (m, offset - start))
    }

    fn unmap_tracked(&mut self, iova: u64) -> Result<(), DeviceError> {
        let Some(len) = self.dma.get(&iova).map(|m| m.len) else {
            return Ok(());
        };
        let done = self.sys.dma_unmap(iova, len).map_err(io_err)?;
        if done != len {
            // Keep tracking (and keep the memory alive): the IOMMU may still map part of it.
            return Err(DeviceError::Io(io::Error::other(format!(
                "VFIO_IOMMU_UNMAP_DMA of {iova:#x}+{len:#x} unmapped {done:#x} bytes"
            ))));
        }
        self.dma.remove(&iova);
        Ok(())
    }
}

fn read_exact<S: VfioSys>(sys: &S, at: u64, data: &mut [u8]) -> Result<(), DeviceError> {
    let n = sys.pread(at, data).map_err(io_err)?;
    if n != data.len() {
        return Err(DeviceError::Io(io::Error::new(
            io::ErrorKind::UnexpectedEof,
            format!(
                "short read: {n} of {} bytes at file offset {at:#x}",
                data.len()
            ),
        )));
    }
    Ok(())
}

fn write_exact<S: VfioSys>(sys: &S, at: u64, data: &[u8]) -> Result<(), DeviceError> {
    let n = sys.pwrite(at, data).map_err(io_err)?;
    if n != data.len() {
        return Err(DeviceError::Io(io::Error::new(
            io::ErrorKind::WriteZero,
            format!(
                "short write: {n} of {} bytes at file offset {at:#x}",
                data.len()
            ),
        )));
    }
    Ok(())
}

impl<S: VfioSys> Device for VfioBackend<S> {
    fn describe(&self) -> DeviceDescription {
        let mut d = self.description.clone();
        // Config space "as it is now"; the snapshot from open stands in if the device stopped
        // answering.
        if let Some(cfg) = self.region_facts.get(&region_index::CONFIG) {
            let mut now = vec![0u8; d.config_space.len()];
            if read_exact(&self.sys, cfg.offset, &mut now).is_ok() {
                d.config_space = now;
            }
        }
        d
    }

    fn region_read(
        &mut self,
        region: u32,
        offset: u64,
        data: &mut [u8],
    ) -> hwrr_device::Result<()> {
        let at = self.locate(region, offset, data.len(), REGION_READ)?;
        if let Some((m, off)) = self.mapping_for(region, offset) {
            if m.read(off, data) {
                return Ok(());
            }
        }
        read_exact(&self.sys, at, data)
    }

    fn region_write(&mut self, region: u32, offset: u64, data: &[u8]) -> hwrr_device::Result<()> {
        let at = self.locate(region, offset, data.len(), REGION_WRITE)?;
        if let Some((m, off)) = self.mapping_for(region, offset) {
            if m.write(off, data) {
                return Ok(());
            }
        }
        write_exact(&self.sys, at, data)
    }

    fn config_read(&mut self, offset: u32, data: &mut [u8]) -> hwrr_device::Result<()> {
        let at = self.locate(region_index::CONFIG, offset.into(), data.len(), REGION_READ)?;
        read_exact(&self.sys, at, data)
    }

    fn config_write(&mut self, offset: u32, data: &[u8]) -> hwrr_device::Result<()> {
        let at = self.locate(
            region_index::CONFIG,
            offset.into(),
            data.len(),
            REGION_WRITE,
        )?;
        write_exact(&self.sys, at, data)
    }

    fn set_irqs(&mut self, request: IrqSetRequest) -> hwrr_device::Result<()> {
        let packed = irqset::pack(request, &self.description.irqs)?;
        self.sys.set_irqs(&packed.bytes).map_err(io_err)
        // `packed.fds` close here: the kernel holds its own references to the eventfds.
    }

    fn dma_map(&mut self, region: DmaRegion) -> hwrr_device::Result<()> {
        let DmaMapping { iova, len, flags } = region.mapping;
        let memory = region.memory.ok_or_else(|| {
            DeviceError::Unsupported(
                "the kernel IOMMU maps memory of this process: a DMA mapping without memory \
                 cannot be passed to VFIO_IOMMU_MAP_DMA"
                    .into(),
            )
        })?;
        let rw = dma_flags::READ | dma_flags::WRITE;
        if flags & rw == 0 || flags & !rw != 0 {
            return Err(DeviceError::Invalid(format!(
                "DMA map flags {flags:#x}: want read and/or write, nothing else"
            )));
        }
        if len == 0 || len > memory.len() as u64 {
            return Err(DeviceError::Invalid(format!(
                "DMA mapping of {len:#x} bytes over {:#x} bytes of memory",
                memory.len()
            )));
        }
        let vaddr = memory.as_ptr() as u64;
        let a = self.dma_align;
        if iova % a != 0 || len % a != 0 || vaddr % a != 0 {
            return Err(DeviceError::Invalid(format!(
                "DMA mapping {iova:#x}+{len:#x} (vaddr {vaddr:#x}) is not aligned to the IOMMU page \
                 size {a:#x}"
            )));
        }
        let end = iova
            .checked_add(len)
            .ok_or_else(|| DeviceError::Invalid(format!("DMA mapping {iova:#x}+{len:#x} wraps")))?;
        if let Some((s, m)) = self.dma.range(..end).next_back() {
            if s + m.len > iova {
                return Err(DeviceError::Invalid(format!(
                    "DMA mapping {iova:#x}+{len:#x} overlaps {s:#x}+{:#x}",
                    m.len
                )));
            }
        }
        // SAFETY: `memory` is kept alive in `self.dma` until the kernel confirms the unmap (and,
        // when the backend drops, `sys` closes the container, removing every mapping, before the
        // tracked memory drops); the device's concurrent access is what `MappedMemory` is for.
        unsafe { self.sys.dma_map(iova, len, vaddr, flags) }.map_err(io_err)?;
        self.dma.insert(
            iova,
            TrackedDma {
                len,
                flags,
                _memory: memory,
            },
        );
        Ok(())
    }

    fn dma_unmap(&mut self, mapping: DmaMapping) -> hwrr_device::Result<()> {
        if mapping.flags & dma_flags::UNMAP_ALL != 0 {
            let mut first_error = None;
            let all: Vec<u64> = self.dma.keys().copied().collect();
            for iova in all {
                if let Err(e) = self.unmap_tracked(iova) {
                    first_error.get_or_insert(e);
                }
            }
            return first_error.map_or(Ok(()), Err);
        }
        let end = mapping.iova.checked_add(mapping.len).ok_or_else(|| {
            DeviceError::Invalid(format!(
                "DMA unmap {:#x}+{:#x} wraps",
                mapping.iova, mapping.len
            ))
        })?;
        let mut inside = Vec::new();
        for (s, m) in self.dma.range(..end) {
            let m_end = s + m.len;
            if m_end <= mapping.iova {
                continue;
            }
            if *s < mapping.iova || m_end > end {
                // Type1 v2 never splits a mapping; refuse here with the reason.
                return Err(DeviceError::Invalid(format!(
                    "DMA unmap {:#x}+{:#x} would split mapping {s:#x}+{:#x}",
                    mapping.iova, mapping.len, m.len
                )));
            }
            inside.push(*s);
        }
        if inside.is_empty() {
            return Err(DeviceError::Invalid(format!(
                "DMA unmap {:#x}+{:#x}: nothing is mapped there",
                mapping.iova, mapping.len
            )));
        }
        for iova in inside {
            self.unmap_tracked(iova)?;
        }
        Ok(())
    }

    fn reset(&mut self) -> hwrr_device::Result<()> {
        if self.sys.facts().flags & sys::DEVICE_FLAG_RESET == 0 {
            return Err(DeviceError::Unsupported(
                "the kernel offers no reset for this device (VFIO_DEVICE_FLAGS_RESET is clear)"
                    .into(),
            ));
        }
        self.sys.reset().map_err(io_err)
    }

    /// Nothing to attach: the device reaches guest memory directly through the IOMMU mappings made
    /// by [`Device::dma_map`].
    fn attach_memory(&mut self, _memory: Arc<dyn GuestMemory>) {}
}

impl<S: VfioSys> Drop for VfioBackend<S> {
    fn drop(&mut self) {
        // Unmap explicitly so each failure is logged; closing the container removes the rest.
        let all: Vec<u64> = self.dma.keys().copied().collect();
        for iova in all {
            if let Err(e) = self.unmap_tracked(iova) {
                tracing::warn!("DMA unmap at close: {e}");
            }
        }
    }
}

#[cfg(test)]
mod tests;
