//! Record mode: QEMU talks to the kernel's VFIO as usual; the shim watches the container, group and
//! device fds and logs the device's traffic through the same [`Tap`] and trace writer as
//! `hwrr record`.
//!
//! - Config-space and BAR accesses through the device fd (`pread`/`pwrite`; BARs only with
//!   `x-no-mmap=on`: an mmapped BAR bypasses the shim, and the shim warns when one is mapped).
//! - `SET_IRQS`: the tap substitutes its own eventfds, hands them to the kernel and relays every
//!   interrupt to QEMU's eventfd, logging it.
//! - `MAP_DMA`/`UNMAP_DMA` on the container: forwarded to the kernel unchanged, logged on success.
//! - `DEVICE_RESET`.
//!
//! The device's own DMA (the hardware writing guest RAM) is invisible from user space. Each
//! device's tap runs the recorder's watch set over the memory QEMU maps for DMA, read in place
//! ([`crate::guest_ram`]): what changes in the pages registers and descriptors name is logged as
//! `dma_write` events, with the watch set's limits (`docs/RECORDING.md`).

use std::collections::{HashMap, HashSet};
use std::ffi::{c_int, c_void, CStr, CString};
use std::os::fd::{AsRawFd, RawFd};
use std::sync::Arc;

use hwrr_device::{
    dma_flags, Device, DeviceDescription, DeviceError, DeviceIdentity, DmaMapping, DmaRegion,
    GuestMemory, IrqData, IrqInfo, IrqSetRequest, RegionInfo, RegionKind,
};
use hwrr_recorder::{capture_header, Recorder, RecorderOptions, Tap};

use crate::config::{normalize_bdf, vfio_hosts_in_cmdline, Config, DeviceSpec};
use crate::emulator::parse_irq_set;
use crate::guest_ram;
use crate::log::Logger;
use crate::shim::{unwatch, watch};
use crate::uapi;

fn last_errno() -> i32 {
    std::io::Error::last_os_error()
        .raw_os_error()
        .unwrap_or(libc::EIO)
}

/// A device fd the kernel gave QEMU, seen as a [`Device`] so the recorder's tap can wrap it.
///
/// DMA mapping calls are logged by the tap but made by QEMU itself on its container fd (the shim
/// forwards them), so this adapter's `dma_map`/`dma_unmap` only acknowledge them.
pub struct KernelDevice {
    fd: RawFd,
    description: DeviceDescription,
    offsets: HashMap<u32, u64>,
    config_offset: u64,
}

impl KernelDevice {
    /// Queries region and IRQ info and config space through the device fd.
    pub fn probe(fd: RawFd, bdf: &str) -> Result<KernelDevice, i32> {
        let mut info = uapi::DeviceInfo {
            argsz: 16,
            ..Default::default()
        };
        // SAFETY: a valid vfio_device_info for the kernel to fill.
        if unsafe { libc::ioctl(fd, uapi::DEVICE_GET_INFO as _, &mut info) } < 0 {
            return Err(last_errno());
        }
        let mut regions = Vec::new();
        let mut offsets = HashMap::new();
        let mut config_offset =
            u64::from(uapi::PCI_CONFIG_REGION_INDEX) << uapi::REGION_OFFSET_SHIFT;
        let mut config_size = 256;
        for index in 0..info.num_regions.min(uapi::PCI_NUM_REGIONS) {
            let mut r = uapi::RegionInfo {
                argsz: 32,
                index,
                ..Default::default()
            };
            // SAFETY: a valid vfio_region_info for the kernel to fill.
            if unsafe { libc::ioctl(fd, uapi::DEVICE_GET_REGION_INFO as _, &mut r) } < 0
                || r.size == 0
            {
                continue;
            }
            let kind = match index {
                6 => RegionKind::Rom,
                7 => {
                    config_offset = r.offset;
                    config_size = r.size.min(4096) as usize;
                    RegionKind::Config
                }
                _ => RegionKind::Mmio,
            };
            offsets.insert(index, r.offset);
            regions.push(RegionInfo {
                index,
                kind,
                size: r.size,
                flags: r.flags,
                alias_of: None,
            });
        }
        let mut irqs = Vec::new();
        for index in 0..info.num_irqs.min(uapi::PCI_NUM_IRQS) {
            let mut i = uapi::IrqInfo {
                argsz: 16,
                index,
                ..Default::default()
            };
            // SAFETY: a valid vfio_irq_info for the kernel to fill.
            if unsafe { libc::ioctl(fd, uapi::DEVICE_GET_IRQ_INFO as _, &mut i) } == 0
                && i.count > 0
            {
                irqs.push(IrqInfo {
                    index,
                    count: i.count,
                    flags: i.flags,
                });
            }
        }
        let mut config = vec![0u8; config_size];
        // SAFETY: reading into our own buffer of that size.
        let n = unsafe {
            libc::pread64(
                fd,
                config.as_mut_ptr().cast(),
                config.len(),
                config_offset as i64,
            )
        };
        if n < 64 {
            return Err(if n < 0 { last_errno() } else { libc::EIO });
        }
        config.truncate(n as usize);
        // An I/O BAR has bit 0 set in its config-space BAR register.
        for r in regions.iter_mut().filter(|r| r.index < 6) {
            let at = 0x10 + 4 * r.index as usize;
            if config.get(at).is_some_and(|b| b & 1 == 1) {
                r.kind = RegionKind::Pio;
            }
        }
        let identity =
            DeviceIdentity::from_config_space(&config, Some(bdf.to_string())).ok_or(libc::EIO)?;
        Ok(KernelDevice {
            fd,
            description: DeviceDescription {
                identity,
                config_space: config,
                regions,
                irqs,
                rom: None,
            },
            offsets,
            config_offset,
        })
    }

    fn offset(&self, region: u32, offset: u64, len: usize) -> hwrr_device::Result<u64> {
        self.description.check_access(region, offset, len)?;
        let base = self
            .offsets
            .get(&region)
            .ok_or(DeviceError::NoSuchRegion(region))?;
        Ok(base + offset)
    }

    fn pread_at(&self, at: u64, data: &mut [u8]) -> hwrr_device::Result<()> {
        // SAFETY: reading into the caller's buffer of that length.
        let n = unsafe { libc::pread64(self.fd, data.as_mut_ptr().cast(), data.len(), at as i64) };
        if n < 0 {
            return Err(std::io::Error::last_os_error().into());
        }
        if n as usize != data.len() {
            return Err(DeviceError::Io(std::io::Error::from_raw_os_error(
                libc::EIO,
            )));
        }
        Ok(())
    }

    fn pwrite_at(&self, at: u64, data: &[u8]) -> hwrr_device::Result<()> {
        // SAFETY: writing from the caller's buffer of that length.
        let n = unsafe { libc::pwrite64(self.fd, data.as_ptr().cast(), data.len(), at as i64) };
        if n < 0 {
            return Err(std::io::Error::last_os_error().into());
        }
        if n as usize != data.len() {
            return Err(DeviceError::Io(std::io::Error::from_raw_os_error(
                libc::EIO,
            )));
        }
        Ok(())
    }
}

impl Device for KernelDevice {
    fn describe(&self) -> DeviceDescription {
        self.description.clone()
    }
    fn region_read(
        &mut self,
        region: u32,
        offset: u64,
        data: &mut [u8],
    ) -> hwrr_device::Result<()> {
        let at = self.offset(region, offset, data.len())?;
        self.pread_at(at, data)
    }
    fn region_write(&mut self, region: u32, offset: u64, data: &[u8]) -> hwrr_device::Result<()> {
        let at = self.offset(region, offset, data.len())?;
        self.pwrite_at(at, data)
    }
    fn config_read(&mut self, offset: u32, data: &mut [u8]) -> hwrr_device::Result<()> {
        self.pread_at(self.config_offset + u64::from(offset), data)
    }
    fn config_write(&mut self, offset: u32, data: &[u8]) -> hwrr_device::Result<()> {
        self.pwrite_at(self.config_offset + u64::from(offset), data)
    }
    fn set_irqs(&mut self, request: IrqSetRequest) -> hwrr_device::Result<()> {
        let s = &request.setup;
        let action = match s.action {
            hwrr_device::IrqAction::Mask => uapi::IRQ_SET_ACTION_MASK,
            hwrr_device::IrqAction::Unmask => uapi::IRQ_SET_ACTION_UNMASK,
            hwrr_device::IrqAction::Trigger => uapi::IRQ_SET_ACTION_TRIGGER,
        };
        let (kind, payload): (u32, Vec<u8>) = match &s.data {
            IrqData::None => (uapi::IRQ_SET_DATA_NONE, Vec::new()),
            IrqData::Bool(b) => (
                uapi::IRQ_SET_DATA_BOOL,
                b.iter().map(|&x| u8::from(x)).collect(),
            ),
            IrqData::Eventfd(_) => (
                uapi::IRQ_SET_DATA_EVENTFD,
                request
                    .fds
                    .iter()
                    .flat_map(|f| f.as_ref().map_or(-1, |f| f.as_raw_fd()).to_ne_bytes())
                    .collect(),
            ),
        };
        let head = uapi::IrqSet {
            argsz: (std::mem::size_of::<uapi::IrqSet>() + payload.len()) as u32,
            flags: kind | action,
            index: s.index,
            start: s.start,
            count: s.count,
        };
        let mut buf = vec![0u8; head.argsz as usize];
        // SAFETY: `buf` holds the header followed by the payload.
        unsafe { std::ptr::write_unaligned(buf.as_mut_ptr() as *mut uapi::IrqSet, head) };
        buf[std::mem::size_of::<uapi::IrqSet>()..].copy_from_slice(&payload);
        // SAFETY: a complete vfio_irq_set; the fds in it are alive for the call (`request` owns them).
        if unsafe { libc::ioctl(self.fd, uapi::DEVICE_SET_IRQS as _, buf.as_mut_ptr()) } < 0 {
            return Err(std::io::Error::last_os_error().into());
        }
        Ok(())
    }
    fn dma_map(&mut self, _region: DmaRegion) -> hwrr_device::Result<()> {
        Ok(())
    }
    fn dma_unmap(&mut self, _mapping: DmaMapping) -> hwrr_device::Result<()> {
        Ok(())
    }
    fn reset(&mut self) -> hwrr_device::Result<()> {
        // SAFETY: VFIO_DEVICE_RESET takes no argument.
        if unsafe { libc::ioctl(self.fd, uapi::DEVICE_RESET as _) } < 0 {
            return Err(std::io::Error::last_os_error().into());
        }
        Ok(())
    }
    fn attach_memory(&mut self, _memory: Arc<dyn GuestMemory>) {}
}

struct Recorded {
    tap: Tap<KernelDevice>,
    recorder: Option<Recorder>,
    container: Option<RawFd>,
    trace: std::path::PathBuf,
}

/// The recording state of the process.
pub struct Recording {
    log: Arc<Logger>,
    specs: Vec<DeviceSpec>,
    hosts: Vec<String>,
    /// Per container: its DMA mappings and the process address each maps.
    containers: HashMap<RawFd, Vec<(DmaMapping, u64)>>,
    groups: HashMap<RawFd, Option<RawFd>>,
    devices: HashMap<RawFd, Recorded>,
    used: HashSet<usize>,
}

impl Recording {
    /// Starts watching for the devices in `config`.
    pub fn new(config: &Config, log: Arc<Logger>) -> Recording {
        let cmdline = std::fs::read("/proc/self/cmdline").unwrap_or_default();
        Recording {
            log,
            specs: config.devices.clone(),
            hosts: vfio_hosts_in_cmdline(&cmdline),
            containers: HashMap::new(),
            groups: HashMap::new(),
            devices: HashMap::new(),
            used: HashSet::new(),
        }
    }

    /// Opens a VFIO path through the kernel and watches the fd; `None` for other paths.
    pub fn open(&mut self, path: &str, flags: c_int) -> Option<c_int> {
        let rest = path.strip_prefix("/dev/vfio/")?;
        let cpath = CString::new(path).ok()?;
        // SAFETY: a NUL-terminated path; this thread is inside the shim, so libc's open is reached.
        let fd = unsafe { libc::open(cpath.as_ptr(), flags) };
        if fd < 0 {
            return Some(fd);
        }
        if rest == "vfio" {
            self.containers.insert(fd, Vec::new());
        } else if rest.parse::<u32>().is_ok() {
            self.groups.insert(fd, None);
        } else {
            return Some(fd);
        }
        watch(fd);
        Some(fd)
    }

    /// Forgets a closed fd; a device fd's trace is finished.
    pub fn close(&mut self, fd: RawFd) {
        self.containers.remove(&fd);
        self.groups.remove(&fd);
        if let Some(mut rec) = self.devices.remove(&fd) {
            Self::finish_one(&self.log, &mut rec);
        }
    }

    fn spec_for(&mut self, name: &str) -> Option<(usize, DeviceSpec)> {
        let bdf = normalize_bdf(name)?;
        let pos = self.specs.iter().enumerate().position(|(i, s)| {
            !self.used.contains(&i)
                && match &s.bdf {
                    Some(b) => *b == bdf,
                    // One trace without a BDF: the first vfio-pci host on the command line.
                    None => self.hosts.first().map_or(true, |h| *h == bdf),
                }
        })?;
        self.used.insert(pos);
        Some((pos, self.specs[pos].clone()))
    }

    fn start_device(&mut self, group: RawFd, dev_fd: RawFd, name: &str) {
        let Some((_, spec)) = self.spec_for(name) else {
            return;
        };
        let device = match KernelDevice::probe(dev_fd, name) {
            Ok(d) => d,
            Err(e) => {
                self.log.warn(&format!(
                    "{name}: cannot describe the device (errno {e}); not recording"
                ));
                return;
            }
        };
        let header = capture_header(&device.describe(), "hwrr-interposer", Default::default());
        let recorder = match Recorder::create(&spec.trace, &header, RecorderOptions::default()) {
            Ok(r) => r,
            Err(e) => {
                self.log.warn(&format!(
                    "cannot create {}: {e}; not recording",
                    spec.trace.display()
                ));
                return;
            }
        };
        let mut tap = match Tap::new(device, recorder.handle()) {
            Ok(t) => t,
            Err(e) => {
                self.log
                    .warn(&format!("{name}: cannot start the interrupt relay: {e}"));
                return;
            }
        };
        let container = self.groups.get(&group).copied().flatten();
        // Mappings made before the device was opened (QEMU maps guest RAM first).
        if let Some(maps) = container.and_then(|c| self.containers.get(&c)) {
            for (mapping, vaddr) in maps {
                Self::map_into(&mut tap, *mapping, *vaddr);
            }
        }
        self.log
            .warn(&format!("recording {name} to {}", spec.trace.display()));
        watch(dev_fd);
        self.devices.insert(
            dev_fd,
            Recorded {
                tap,
                recorder: Some(recorder),
                container,
                trace: spec.trace.clone(),
            },
        );
    }

    /// An ioctl on a watched fd: handled (`Some`, the return value with errno set) or passed on.
    ///
    /// # Safety
    /// `arg` is what the ioctl's contract says.
    pub unsafe fn ioctl(&mut self, fd: RawFd, request: u64, arg: *mut c_void) -> Option<c_int> {
        let request = request & 0xffff_ffff;
        if self.groups.contains_key(&fd) {
            // SAFETY: forwarding QEMU's own call.
            let r = unsafe { libc::ioctl(fd, request as _, arg) };
            if r >= 0 {
                match request {
                    uapi::GROUP_SET_CONTAINER if !arg.is_null() => {
                        // SAFETY: the argument is a pointer to the container fd.
                        let c = unsafe { std::ptr::read_unaligned(arg as *const i32) };
                        if let Some(g) = self.groups.get_mut(&fd) {
                            *g = Some(c);
                        }
                    }
                    uapi::GROUP_UNSET_CONTAINER => {
                        if let Some(g) = self.groups.get_mut(&fd) {
                            *g = None;
                        }
                    }
                    uapi::GROUP_GET_DEVICE_FD if !arg.is_null() => {
                        // SAFETY: the argument is the NUL-terminated device name.
                        let name = unsafe { CStr::from_ptr(arg as *const libc::c_char) }
                            .to_string_lossy()
                            .into_owned();
                        self.start_device(fd, r, &name);
                    }
                    _ => {}
                }
            }
            return Some(r);
        }
        if self.containers.contains_key(&fd) {
            return match request {
                uapi::IOMMU_MAP_DMA | uapi::IOMMU_UNMAP_DMA => {
                    // SAFETY: forwarding QEMU's own call.
                    let r = unsafe { libc::ioctl(fd, request as _, arg) };
                    if r == 0 && !arg.is_null() {
                        // SAFETY: the kernel accepted the structure, so it is readable.
                        unsafe { self.log_dma(fd, request, arg) };
                    }
                    Some(r)
                }
                _ => None,
            };
        }
        let rec = self.devices.get_mut(&fd)?;
        match request {
            uapi::DEVICE_SET_IRQS => {
                // SAFETY: forwarded contract.
                let parsed = match unsafe { parse_irq_set(arg) } {
                    Ok(p) => p,
                    Err(_) => return None, // let the kernel give its own errno
                };
                Some(match rec.tap.set_irqs(parsed) {
                    Ok(()) => 0,
                    Err(e) => {
                        // SAFETY: this thread's errno slot.
                        unsafe { *libc::__errno_location() = e.errno() };
                        -1
                    }
                })
            }
            uapi::DEVICE_RESET => Some(match rec.tap.reset() {
                Ok(()) => 0,
                Err(e) => {
                    // SAFETY: this thread's errno slot.
                    unsafe { *libc::__errno_location() = e.errno() };
                    -1
                }
            }),
            _ => None,
        }
    }

    /// # Safety
    /// `arg` points to the structure the kernel just accepted for `request`.
    unsafe fn log_dma(&mut self, container: RawFd, request: u64, arg: *mut c_void) {
        if request == uapi::IOMMU_MAP_DMA {
            // SAFETY: a vfio_iommu_type1_dma_map the kernel accepted.
            let m = unsafe { std::ptr::read_unaligned(arg as *const uapi::DmaMap) };
            let mapping = DmaMapping {
                iova: m.iova,
                len: m.size,
                flags: m.flags & 3,
            };
            if let Some(list) = self.containers.get_mut(&container) {
                list.push((mapping, m.vaddr));
            }
            for rec in self
                .devices
                .values_mut()
                .filter(|r| r.container == Some(container))
            {
                Self::map_into(&mut rec.tap, mapping, m.vaddr);
            }
        } else {
            // SAFETY: a vfio_iommu_type1_dma_unmap the kernel accepted (size = bytes unmapped).
            let u = unsafe { std::ptr::read_unaligned(arg as *const uapi::DmaUnmap) };
            let mapping = DmaMapping {
                iova: u.iova,
                len: u.size,
                flags: u.flags,
            };
            let (lo, hi) = if u.flags & dma_flags::UNMAP_ALL != 0 {
                (0, u64::MAX)
            } else {
                (u.iova, u.iova.saturating_add(u.size))
            };
            if let Some(list) = self.containers.get_mut(&container) {
                list.retain(|(m, _)| m.iova < lo || m.iova.saturating_add(m.len) > hi);
            }
            for rec in self
                .devices
                .values_mut()
                .filter(|r| r.container == Some(container))
            {
                let _ = rec.tap.dma_unmap(mapping);
                if let Some(watch) = rec.tap.watch_set() {
                    guest_ram::forget(watch, lo, hi);
                }
            }
        }
    }

    fn access(
        &mut self,
        fd: RawFd,
        offset: i64,
        f: impl FnOnce(&mut Tap<KernelDevice>, u32, u64) -> hwrr_device::Result<()>,
    ) -> Option<hwrr_device::Result<()>> {
        let rec = self.devices.get_mut(&fd)?;
        if offset < 0 {
            return None;
        }
        let index = (offset as u64 >> uapi::REGION_OFFSET_SHIFT) as u32;
        let off = offset as u64 & ((1 << uapi::REGION_OFFSET_SHIFT) - 1);
        Some(f(&mut rec.tap, index, off))
    }

    /// A `pread` on a watched device fd, through the tap.
    pub fn pread(&mut self, fd: RawFd, buf: &mut [u8], offset: i64) -> Option<isize> {
        let len = buf.len();
        let r = self.access(fd, offset, |tap, index, off| {
            if index == uapi::PCI_CONFIG_REGION_INDEX {
                tap.config_read(
                    u32::try_from(off).map_err(|_| DeviceError::Invalid("offset".into()))?,
                    buf,
                )
            } else {
                tap.region_read(index, off, buf)
            }
        })?;
        Some(Self::size_result(r, len))
    }

    /// A `pwrite` on a watched device fd, through the tap.
    pub fn pwrite(&mut self, fd: RawFd, buf: &[u8], offset: i64) -> Option<isize> {
        let r = self.access(fd, offset, |tap, index, off| {
            if index == uapi::PCI_CONFIG_REGION_INDEX {
                tap.config_write(
                    u32::try_from(off).map_err(|_| DeviceError::Invalid("offset".into()))?,
                    buf,
                )
            } else {
                tap.region_write(index, off, buf)
            }
        })?;
        Some(Self::size_result(r, buf.len()))
    }

    fn size_result(r: hwrr_device::Result<()>, len: usize) -> isize {
        match r {
            Ok(()) => len as isize,
            Err(e) => {
                // SAFETY: this thread's errno slot.
                unsafe { *libc::__errno_location() = e.errno() };
                -1
            }
        }
    }

    /// An `mmap` of a watched fd: BAR accesses through the mapping will not be recorded.
    pub fn note_mmap(&self, fd: RawFd, offset: i64, len: usize) {
        if self.devices.contains_key(&fd) {
            self.log.warn(&format!(
                "region at device offset {offset:#x} ({len} bytes) is mmapped: its accesses bypass the recorder (run QEMU with x-no-mmap=on)"
            ));
        }
    }

    /// Logs a DMA mapping through `tap`, with the memory behind it for the watch set when the
    /// device may write there.
    fn map_into(tap: &mut Tap<KernelDevice>, mapping: DmaMapping, vaddr: u64) {
        let memory = match tap.watch_set() {
            Some(watch) if mapping.flags & dma_flags::WRITE != 0 => {
                guest_ram::register(vaddr, mapping.len, watch, mapping)
            }
            _ => None,
        };
        let _ = tap.dma_map(DmaRegion { mapping, memory });
    }

    fn finish_one(log: &Logger, rec: &mut Recorded) {
        if rec.recorder.is_some() {
            if let Some(watch) = rec.tap.watch_set() {
                // What the device wrote since the last look is logged, then the program's memory
                // is let go.
                watch.remove_mapping(DmaMapping {
                    iova: 0,
                    len: u64::MAX,
                    flags: dma_flags::UNMAP_ALL,
                });
                guest_ram::forget_all(watch);
            }
            if let Some(stats) = rec.tap.watch_stats() {
                log.warn(&format!("{}: watch set {stats:?}", rec.trace.display()));
            }
        }
        if let Some(recorder) = rec.recorder.take() {
            match recorder.finish() {
                Ok(stats) => log.warn(&format!(
                    "trace {} finished: {stats:?}",
                    rec.trace.display()
                )),
                Err(e) => log.warn(&format!("trace {}: {e}", rec.trace.display())),
            }
        }
    }

    /// Finishes every open trace (at exit).
    pub fn finish(&mut self) {
        for (fd, rec) in self.devices.iter_mut() {
            unwatch(*fd);
            Self::finish_one(&self.log, rec);
        }
    }
}
