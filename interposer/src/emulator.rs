//! Replay mode: the VFIO container, group and device files of the traced devices, emulated on top of
//! the replay engine. Everything here works on plain values and raw ioctl argument pointers, so it is
//! driven the same way by the `LD_PRELOAD` wrappers and by in-process tests.

use std::collections::HashMap;
use std::ffi::{c_void, CStr};
use std::os::fd::{FromRawFd, OwnedFd, RawFd};
use std::path::PathBuf;
use std::sync::Arc;

use hwrr_device::{
    Device, DeviceDescription, DeviceError, DmaMapping, DmaRegion, IrqAction, IrqData,
    IrqSetRequest, IrqSetup, MappedMemory, SparseMemory,
};
use hwrr_replayer::{ReplayOptions, ReplayReport, Replayer};

use crate::config::{normalize_bdf, Config};
use crate::log::Logger;
use crate::uapi;

/// An errno value (positive).
pub type Errno = i32;

/// What a path names, for the stat family, `access`, `readlink` and `realpath`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum PathAnswer {
    /// A directory that exists.
    Directory,
    /// A symbolic link with this target.
    Symlink(String),
    /// A character device (`/dev/vfio/vfio`, `/dev/vfio/<group>`).
    CharDevice,
}

/// Which emulated file an fd is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FdKind {
    /// `/dev/vfio/vfio`, by container id.
    Container(usize),
    /// `/dev/vfio/<group>`, by device slot.
    Group(usize),
    /// A device fd from `GROUP_GET_DEVICE_FD`, by device slot.
    Device(usize),
}

/// An emulated type1 container.
#[derive(Debug)]
struct Container {
    iommu: Option<u64>,
    memory: Arc<SparseMemory>,
    open: bool,
}

/// One traced device the shim answers for.
struct Slot {
    bdf: String,
    group: u32,
    trace: PathBuf,
    replayer: Option<Replayer>,
    description: DeviceDescription,
    container: Option<usize>,
    device_fds: usize,
    memory_attached: bool,
}

/// The emulated VFIO world of replay mode.
pub struct Emulator {
    slots: Vec<Slot>,
    containers: Vec<Container>,
    fds: HashMap<RawFd, FdKind>,
    /// Whether the group opened last was emulated (`None`: no group opened yet). The next
    /// `/dev/vfio/vfio` open belongs to it (QEMU opens the group, then a container for it), so a
    /// real device's container stays real; a program that opens the container first (rust-vmm's
    /// vfio-ioctls) gets an emulated one.
    last_group_fake: Option<bool>,
    log: Arc<Logger>,
}

fn sys_dev(bdf: &str) -> String {
    format!("/sys/bus/pci/devices/{bdf}")
}

/// Invents the IOMMU group number of a device: stable for a BDF, far above the numbers a
/// kernel hands out on ordinary machines, so it cannot name a real group.
pub fn invented_group(bdf: &str, index: usize) -> u32 {
    let mut parts = bdf.split([':', '.']);
    let _domain = parts.next();
    let bus = parts
        .next()
        .and_then(|b| u32::from_str_radix(b, 16).ok())
        .unwrap_or(0);
    let dev = parts
        .next()
        .and_then(|d| u32::from_str_radix(d, 16).ok())
        .unwrap_or(0);
    let func = parts
        .next()
        .and_then(|f| u32::from_str_radix(f, 16).ok())
        .unwrap_or(0);
    10_000 + ((bus << 8) | (dev << 3) | func) + 0x1_0000 * index as u32
}

/// Reads a `T` from an ioctl argument after checking its `argsz` (the first `u32`).
///
/// # Safety
/// `arg` must be null or point to at least `min(argsz, size_of::<T>())` readable bytes, as the
/// ioctl's contract requires of the caller.
unsafe fn read_arg<T: Copy>(arg: *mut c_void) -> Result<T, Errno> {
    if arg.is_null() {
        return Err(libc::EFAULT);
    }
    // SAFETY: non-null and, by the caller's contract, the start of the ioctl's structure.
    let argsz = unsafe { std::ptr::read_unaligned(arg as *const u32) };
    if (argsz as usize) < std::mem::size_of::<T>() {
        return Err(libc::EINVAL);
    }
    // SAFETY: argsz says the caller's buffer holds at least a whole `T`.
    Ok(unsafe { std::ptr::read_unaligned(arg as *const T) })
}

/// Writes a `T` back to an ioctl argument.
///
/// # Safety
/// `arg` must point to at least `size_of::<T>()` writable bytes (checked by [`read_arg`]).
unsafe fn write_arg<T: Copy>(arg: *mut c_void, value: T) {
    // SAFETY: the caller checked argsz with `read_arg`.
    unsafe { std::ptr::write_unaligned(arg as *mut T, value) }
}

fn errno_of(e: &DeviceError) -> Errno {
    e.errno()
}

/// A fresh real fd that stands for an emulated file, so `close`, `dup` and `poll` stay sane.
fn placeholder_fd(name: &CStr) -> Result<RawFd, Errno> {
    // SAFETY: memfd_create with a valid NUL-terminated name; the result is checked.
    let fd = unsafe { libc::memfd_create(name.as_ptr(), libc::MFD_CLOEXEC) };
    if fd < 0 {
        return Err(std::io::Error::last_os_error()
            .raw_os_error()
            .unwrap_or(libc::EMFILE));
    }
    Ok(fd)
}

impl Emulator {
    /// Resolves which BDF each trace answers for (`cmdline_hosts`: the vfio-pci hosts on QEMU's
    /// command line) and opens the traces. A trace that cannot be opened is logged and skipped:
    /// QEMU then reports "no such host device" itself.
    pub fn new(config: &Config, cmdline_hosts: &[String], log: Arc<Logger>) -> Emulator {
        let mut slots = Vec::new();
        let mut unclaimed = cmdline_hosts.iter();
        for (index, spec) in config.devices.iter().enumerate() {
            let options = ReplayOptions {
                policy: config.policy,
                ..ReplayOptions::default()
            };
            let replayer = match hwrr_replayer::open(&spec.trace, options) {
                Ok(r) => r,
                Err(e) => {
                    log.warn(&format!("cannot replay {}: {e}", spec.trace.display()));
                    continue;
                }
            };
            for caveat in replayer.caveats() {
                log.warn(&format!("{}: {caveat}", spec.trace.display()));
            }
            let description = replayer.describe();
            let bdf = spec
                .bdf
                .clone()
                .or_else(|| {
                    // One trace without a BDF: the device QEMU's command line names.
                    let taken: Vec<&String> = config
                        .devices
                        .iter()
                        .filter_map(|d| d.bdf.as_ref())
                        .collect();
                    unclaimed.find(|h| !taken.contains(h)).cloned()
                })
                .or_else(|| description.identity.bdf.as_deref().and_then(normalize_bdf))
                .unwrap_or_else(|| "0000:00:00.0".to_string());
            let group = invented_group(&bdf, index);
            log.debug(|| {
                format!(
                    "replaying {} as {bdf} (IOMMU group {group}), {:04x}:{:04x}, policy {}",
                    spec.trace.display(),
                    description.identity.vendor_id,
                    description.identity.device_id,
                    config.policy.name()
                )
            });
            slots.push(Slot {
                bdf,
                group,
                trace: spec.trace.clone(),
                replayer: Some(replayer),
                description,
                container: None,
                device_fds: 0,
                memory_attached: false,
            });
        }
        Emulator {
            slots,
            containers: Vec::new(),
            fds: HashMap::new(),
            last_group_fake: None,
            log,
        }
    }

    /// Whether this process ever opened an emulated group (helper processes QEMU spawns inherit
    /// `LD_PRELOAD` and the environment, but never touch the device: they write no report).
    pub fn was_used(&self) -> bool {
        self.last_group_fake.is_some() || !self.fds.is_empty() || !self.containers.is_empty()
    }

    /// The BDFs and invented groups the emulator answers for.
    pub fn devices(&self) -> Vec<(String, u32)> {
        self.slots
            .iter()
            .map(|s| (s.bdf.clone(), s.group))
            .collect()
    }

    /// Whether `fd` is one of the emulated files.
    pub fn kind(&self, fd: RawFd) -> Option<FdKind> {
        self.fds.get(&fd).copied()
    }

    /// Answers the stat family, `access`, `readlink` and `realpath` for the devices' sysfs and
    /// `/dev/vfio` paths; `None` for every other path.
    pub fn path(&self, path: &str) -> Option<PathAnswer> {
        let path = path.trim_end_matches('/');
        if path == "/dev/vfio/vfio" && !self.slots.is_empty() {
            return Some(PathAnswer::CharDevice);
        }
        if path == "/dev/vfio" && !self.slots.is_empty() {
            return Some(PathAnswer::Directory);
        }
        for s in &self.slots {
            let dev = sys_dev(&s.bdf);
            let group_dir = format!("/sys/kernel/iommu_groups/{}", s.group);
            if path == dev
                || path == group_dir
                || path == format!("{group_dir}/devices")
                || path == format!("{group_dir}/devices/{}", s.bdf)
            {
                return Some(PathAnswer::Directory);
            }
            if path == format!("{dev}/iommu_group") {
                return Some(PathAnswer::Symlink(format!(
                    "../../../kernel/iommu_groups/{}",
                    s.group
                )));
            }
            if path == format!("{dev}/subsystem") {
                return Some(PathAnswer::Symlink("../../../bus/pci".into()));
            }
            if path == format!("{dev}/driver") {
                return Some(PathAnswer::Symlink(
                    "../../../bus/pci/drivers/vfio-pci".into(),
                ));
            }
            if path == format!("/dev/vfio/{}", s.group) {
                return Some(PathAnswer::CharDevice);
            }
        }
        None
    }

    /// The canonical form `realpath` gives for an emulated path.
    pub fn realpath(&self, path: &str) -> Option<String> {
        let path = path.trim_end_matches('/');
        for s in &self.slots {
            let dev = sys_dev(&s.bdf);
            if path == format!("{dev}/subsystem") {
                return Some("/sys/bus/pci".into());
            }
            if path == format!("{dev}/iommu_group") {
                return Some(format!("/sys/kernel/iommu_groups/{}", s.group));
            }
            if path == format!("{dev}/driver") {
                return Some("/sys/bus/pci/drivers/vfio-pci".into());
            }
        }
        self.path(path).map(|_| path.to_string())
    }

    /// `open` of `/dev/vfio/vfio` or `/dev/vfio/<group>`: `None` when the path is not emulated.
    pub fn open(&mut self, path: &str) -> Option<Result<RawFd, Errno>> {
        if path == "/dev/vfio/vfio" {
            if self.slots.is_empty() || self.last_group_fake == Some(false) {
                return None;
            }
            let fd = match placeholder_fd(c"hwrr-vfio-container") {
                Ok(fd) => fd,
                Err(e) => return Some(Err(e)),
            };
            self.containers.push(Container {
                iommu: None,
                memory: Arc::new(SparseMemory::new()),
                open: true,
            });
            self.fds
                .insert(fd, FdKind::Container(self.containers.len() - 1));
            self.log
                .debug(|| format!("open /dev/vfio/vfio -> emulated container fd {fd}"));
            return Some(Ok(fd));
        }
        let group = path.strip_prefix("/dev/vfio/")?;
        let Some(slot) = self.slots.iter().position(|s| s.group.to_string() == group) else {
            if group.parse::<u32>().is_ok() {
                self.last_group_fake = Some(false);
            }
            return None;
        };
        if self.fds.values().any(|k| *k == FdKind::Group(slot)) {
            // The kernel lets a group be opened once at a time.
            return Some(Err(libc::EBUSY));
        }
        let fd = match placeholder_fd(c"hwrr-vfio-group") {
            Ok(fd) => fd,
            Err(e) => return Some(Err(e)),
        };
        self.fds.insert(fd, FdKind::Group(slot));
        self.last_group_fake = Some(true);
        self.log
            .debug(|| format!("open {path} -> emulated group fd {fd}"));
        Some(Ok(fd))
    }

    /// `close` of an emulated fd: forgets it. Returns whether it was one.
    pub fn close(&mut self, fd: RawFd) -> bool {
        let Some(kind) = self.fds.remove(&fd) else {
            return false;
        };
        match kind {
            FdKind::Container(c) => {
                if let Some(cont) = self.containers.get_mut(c) {
                    cont.open = false;
                }
            }
            FdKind::Group(slot) => {
                // Closing the group drops it from its container, as the kernel does.
                if let Some(s) = self.slots.get_mut(slot) {
                    if s.device_fds == 0 {
                        s.container = None;
                    }
                }
            }
            FdKind::Device(slot) => {
                if let Some(s) = self.slots.get_mut(slot) {
                    s.device_fds = s.device_fds.saturating_sub(1);
                }
            }
        }
        self.log.debug(|| format!("close {kind:?} fd {fd}"));
        true
    }

    /// An ioctl on an emulated fd: `None` when `fd` is not emulated, else the return value or errno.
    ///
    /// # Safety
    /// `arg` must be what the ioctl's contract says (a pointer to its structure, or an integer).
    pub unsafe fn ioctl(
        &mut self,
        fd: RawFd,
        request: u64,
        arg: *mut c_void,
    ) -> Option<Result<i32, Errno>> {
        let kind = self.kind(fd)?;
        let request = request & 0xffff_ffff;
        // SAFETY: forwarded contract.
        let result = unsafe {
            match kind {
                FdKind::Container(c) => self.container_ioctl(c, request, arg),
                FdKind::Group(s) => self.group_ioctl(s, request, arg),
                FdKind::Device(s) => self.device_ioctl(s, request, arg),
            }
        };
        if let Err(e) = result {
            self.log
                .debug(|| format!("ioctl {kind:?} fd {fd} request {request:#x} -> errno {e}"));
        }
        Some(result)
    }

    unsafe fn container_ioctl(
        &mut self,
        c: usize,
        request: u64,
        arg: *mut c_void,
    ) -> Result<i32, Errno> {
        let groups_attached = self.slots.iter().any(|s| s.container == Some(c));
        let iommu = self.containers.get(c).and_then(|k| k.iommu);
        match request {
            uapi::GET_API_VERSION => Ok(uapi::API_VERSION),
            uapi::CHECK_EXTENSION => {
                let ext = arg as u64;
                Ok(i32::from(
                    ext == uapi::TYPE1_IOMMU || ext == uapi::TYPE1V2_IOMMU,
                ))
            }
            uapi::SET_IOMMU => {
                let ty = arg as u64;
                if !groups_attached {
                    return Err(libc::EINVAL);
                }
                if ty != uapi::TYPE1_IOMMU && ty != uapi::TYPE1V2_IOMMU {
                    return Err(libc::ENODEV);
                }
                if iommu.is_some() {
                    return Err(libc::EBUSY);
                }
                if let Some(k) = self.containers.get_mut(c) {
                    k.iommu = Some(ty);
                }
                self.log
                    .debug(|| format!("container {c}: SET_IOMMU type {ty}"));
                Ok(0)
            }
            uapi::IOMMU_GET_INFO => {
                if iommu.is_none() {
                    return Err(libc::EINVAL);
                }
                // SAFETY: forwarded contract; argsz checked.
                let mut info: uapi::IommuType1Info = unsafe { read_arg(arg)? };
                let caps = uapi::iommu_info_caps();
                let base = std::mem::size_of::<uapi::IommuType1Info>();
                let full = (base + caps.len()) as u32;
                info.flags = uapi::IOMMU_INFO_PGSIZES | uapi::IOMMU_INFO_CAPS;
                info.iova_pgsizes = uapi::IOMMU_PGSIZES;
                if info.argsz < full {
                    info.argsz = full;
                    info.cap_offset = 0;
                } else {
                    info.cap_offset = base as u32;
                    // SAFETY: argsz says the caller's buffer holds the capability chain too.
                    unsafe {
                        std::ptr::copy_nonoverlapping(
                            caps.as_ptr(),
                            (arg as *mut u8).add(base),
                            caps.len(),
                        )
                    };
                }
                // SAFETY: checked by read_arg.
                unsafe { write_arg(arg, info) };
                Ok(0)
            }
            uapi::IOMMU_MAP_DMA => {
                if iommu.is_none() {
                    return Err(libc::EINVAL);
                }
                // SAFETY: forwarded contract; argsz checked.
                let map: uapi::DmaMap = unsafe { read_arg(arg)? };
                self.map_dma(c, map)
            }
            uapi::IOMMU_UNMAP_DMA => {
                if iommu.is_none() {
                    return Err(libc::EINVAL);
                }
                // SAFETY: forwarded contract; argsz checked.
                let mut unmap: uapi::DmaUnmap = unsafe { read_arg(arg)? };
                unmap.size = self.unmap_dma(c, unmap)?;
                // SAFETY: checked by read_arg.
                unsafe { write_arg(arg, unmap) };
                Ok(0)
            }
            _ => {
                self.log
                    .warn(&format!("unsupported container ioctl {request:#x}: ENOTTY"));
                Err(libc::ENOTTY)
            }
        }
    }

    fn map_dma(&mut self, c: usize, map: uapi::DmaMap) -> Result<i32, Errno> {
        let rw = map.flags & (uapi::DMA_MAP_FLAG_READ | uapi::DMA_MAP_FLAG_WRITE);
        if map.flags & !rw != 0 {
            // VADDR updates (live update) are not emulated.
            return Err(libc::EINVAL);
        }
        if map.size == 0
            || map.vaddr == 0
            || map.iova.checked_add(map.size).is_none()
            || map.size % 4096 != 0
            || map.iova % 4096 != 0
            || map.vaddr % 4096 != 0
        {
            return Err(libc::EINVAL);
        }
        let len = usize::try_from(map.size).map_err(|_| libc::EINVAL)?;
        let Some(container) = self.containers.get(c) else {
            return Err(libc::EINVAL);
        };
        // SAFETY: QEMU hands the kernel this range of its own address space to pin for the
        // device; VFIO's contract is that it stays mapped until VFIO_IOMMU_UNMAP_DMA, which
        // removes it from the table before QEMU frees the memory (its memory listener unmaps
        // a section before the RAM block goes away).
        let memory = Arc::new(unsafe { MappedMemory::from_raw(map.vaddr as *mut u8, len) });
        if let Err(e) = container.memory.add_mapped(map.iova, rw, memory.clone()) {
            self.log.debug(|| format!("MAP_DMA refused: {e}"));
            return Err(libc::EEXIST);
        }
        self.log.debug(|| {
            format!(
                "container {c}: MAP_DMA iova {:#x} size {:#x} vaddr {:#x} flags {rw}",
                map.iova, map.size, map.vaddr
            )
        });
        let mapping = DmaMapping {
            iova: map.iova,
            len: map.size,
            flags: rw,
        };
        for s in self.slots.iter_mut().filter(|s| s.container == Some(c)) {
            if let Some(r) = s.replayer.as_mut() {
                if let Err(e) = r.dma_map(DmaRegion {
                    mapping,
                    memory: Some(memory.clone()),
                }) {
                    self.log.debug(|| format!("{}: dma_map: {e}", s.bdf));
                }
            }
        }
        Ok(0)
    }

    fn unmap_dma(&mut self, c: usize, unmap: uapi::DmaUnmap) -> Result<u64, Errno> {
        let Some(container) = self.containers.get(c) else {
            return Err(libc::EINVAL);
        };
        let all = unmap.flags & uapi::DMA_UNMAP_FLAG_ALL != 0;
        if unmap.flags & !uapi::DMA_UNMAP_FLAG_ALL != 0 {
            return Err(libc::EINVAL);
        }
        let (iova, size) = if all {
            if unmap.iova != 0 || unmap.size != 0 {
                return Err(libc::EINVAL);
            }
            (0, u64::MAX)
        } else {
            (unmap.iova, unmap.size)
        };
        let end = iova.saturating_add(size);
        let doomed: Vec<(u64, u64, u32)> = container
            .memory
            .mappings()
            .into_iter()
            .filter(|(s, l, _)| *s >= iova && s.saturating_add(*l) <= end)
            .collect();
        // The type1v2 driver refuses to split a mapping: an unmap that cuts one is EINVAL.
        let cut = container.memory.mappings().into_iter().any(|(s, l, _)| {
            let e = s.saturating_add(l);
            s < end && e > iova && !(s >= iova && e <= end)
        });
        if cut {
            return Err(libc::EINVAL);
        }
        container.memory.remove_range(iova, size);
        let bytes: u64 = doomed.iter().map(|(_, l, _)| *l).sum();
        for s in self.slots.iter_mut().filter(|s| s.container == Some(c)) {
            if let Some(r) = s.replayer.as_mut() {
                for (start, len, _) in &doomed {
                    let _ = r.dma_unmap(DmaMapping {
                        iova: *start,
                        len: *len,
                        flags: 0,
                    });
                }
            }
        }
        self.log.debug(|| {
            format!("container {c}: UNMAP_DMA iova {iova:#x} size {size:#x} -> {bytes:#x} bytes")
        });
        Ok(bytes)
    }

    unsafe fn group_ioctl(
        &mut self,
        slot: usize,
        request: u64,
        arg: *mut c_void,
    ) -> Result<i32, Errno> {
        match request {
            uapi::GROUP_GET_STATUS => {
                // SAFETY: forwarded contract; argsz checked.
                let mut status: uapi::GroupStatus = unsafe { read_arg(arg)? };
                status.flags = uapi::GROUP_FLAGS_VIABLE;
                if self.slots[slot].container.is_some() {
                    status.flags |= uapi::GROUP_FLAGS_CONTAINER_SET;
                }
                // SAFETY: checked by read_arg.
                unsafe { write_arg(arg, status) };
                Ok(0)
            }
            uapi::GROUP_SET_CONTAINER => {
                if arg.is_null() {
                    return Err(libc::EFAULT);
                }
                // SAFETY: the argument is a pointer to the container fd (an int).
                let cfd = unsafe { std::ptr::read_unaligned(arg as *const i32) };
                let Some(FdKind::Container(c)) = self.kind(cfd) else {
                    // A real container, or not a container at all: the kernel says EINVAL.
                    return Err(libc::EINVAL);
                };
                if self.slots[slot].container.is_some() {
                    return Err(libc::EINVAL);
                }
                self.slots[slot].container = Some(c);
                self.log
                    .debug(|| format!("group {}: SET_CONTAINER {c}", self.slots[slot].group));
                Ok(0)
            }
            uapi::GROUP_UNSET_CONTAINER => {
                let s = &mut self.slots[slot];
                if s.container.is_none() {
                    return Err(libc::EINVAL);
                }
                if s.device_fds > 0 {
                    return Err(libc::EBUSY);
                }
                s.container = None;
                Ok(0)
            }
            uapi::GROUP_GET_DEVICE_FD => {
                if arg.is_null() {
                    return Err(libc::EFAULT);
                }
                // SAFETY: the argument is a NUL-terminated device name.
                let name = unsafe { CStr::from_ptr(arg as *const libc::c_char) };
                let name = name.to_string_lossy();
                if name != self.slots[slot].bdf {
                    return Err(libc::ENODEV);
                }
                let Some(c) = self.slots[slot].container else {
                    return Err(libc::EINVAL);
                };
                let Some(container) = self.containers.get(c) else {
                    return Err(libc::EINVAL);
                };
                if container.iommu.is_none() {
                    return Err(libc::EINVAL);
                }
                let memory = container.memory.clone();
                let fd = placeholder_fd(c"hwrr-vfio-device")?;
                let s = &mut self.slots[slot];
                if !s.memory_attached {
                    if let Some(r) = s.replayer.as_mut() {
                        r.attach_memory(memory);
                    }
                    s.memory_attached = true;
                }
                s.device_fds += 1;
                self.fds.insert(fd, FdKind::Device(slot));
                self.log
                    .debug(|| format!("GET_DEVICE_FD {name} -> emulated device fd {fd}"));
                Ok(fd)
            }
            _ => {
                self.log
                    .warn(&format!("unsupported group ioctl {request:#x}: ENOTTY"));
                Err(libc::ENOTTY)
            }
        }
    }

    unsafe fn device_ioctl(
        &mut self,
        slot: usize,
        request: u64,
        arg: *mut c_void,
    ) -> Result<i32, Errno> {
        match request {
            uapi::DEVICE_GET_INFO => {
                // SAFETY: forwarded contract; argsz checked.
                let mut info: uapi::DeviceInfo = unsafe { read_arg(arg)? };
                info.flags = uapi::DEVICE_FLAGS_PCI | uapi::DEVICE_FLAGS_RESET;
                info.num_regions = uapi::PCI_NUM_REGIONS;
                info.num_irqs = uapi::PCI_NUM_IRQS;
                // SAFETY: checked by read_arg.
                unsafe { write_arg(arg, info) };
                Ok(0)
            }
            uapi::DEVICE_GET_REGION_INFO => {
                // SAFETY: forwarded contract; argsz checked.
                let mut info: uapi::RegionInfo = unsafe { read_arg(arg)? };
                if info.index >= uapi::PCI_NUM_REGIONS {
                    return Err(libc::EINVAL);
                }
                let region = self.slots[slot].description.region(info.index);
                info.cap_offset = 0;
                info.offset = u64::from(info.index) << uapi::REGION_OFFSET_SHIFT;
                match region {
                    Some(r) => {
                        info.size = r.size;
                        // Never offer mmap: every BAR access must come through pread/pwrite.
                        info.flags =
                            r.flags & !(uapi::REGION_INFO_FLAG_MMAP | uapi::REGION_INFO_FLAG_CAPS);
                        if info.flags == 0 && r.size > 0 {
                            info.flags = 3;
                        }
                    }
                    None => {
                        info.size = 0;
                        info.flags = 0;
                    }
                }
                // SAFETY: checked by read_arg.
                unsafe { write_arg(arg, info) };
                Ok(0)
            }
            uapi::DEVICE_GET_IRQ_INFO => {
                // SAFETY: forwarded contract; argsz checked.
                let mut info: uapi::IrqInfo = unsafe { read_arg(arg)? };
                if info.index >= uapi::PCI_NUM_IRQS {
                    return Err(libc::EINVAL);
                }
                match self.slots[slot].description.irq(info.index) {
                    Some(i) => {
                        info.count = i.count;
                        info.flags = i.flags;
                    }
                    None => {
                        info.count = 0;
                        info.flags = 0;
                    }
                }
                // SAFETY: checked by read_arg.
                unsafe { write_arg(arg, info) };
                Ok(0)
            }
            uapi::DEVICE_SET_IRQS => {
                // SAFETY: forwarded contract.
                let request = unsafe { parse_irq_set(arg)? };
                self.log
                    .debug(|| format!("{}: SET_IRQS {:?}", self.slots[slot].bdf, request.setup));
                let Some(r) = self.slots[slot].replayer.as_mut() else {
                    return Err(libc::ENODEV);
                };
                r.set_irqs(request).map_err(|e| errno_of(&e))?;
                Ok(0)
            }
            uapi::DEVICE_RESET => {
                let s = &mut self.slots[slot];
                let Some(r) = s.replayer.as_mut() else {
                    return Err(libc::ENODEV);
                };
                // A reset before any register access that the trace lacks (QEMU's machine-reset
                // reset) is absorbed by the engine as a power-on reset.
                self.log.debug(|| "DEVICE_RESET".into());
                r.reset().map_err(|e| errno_of(&e))?;
                Ok(0)
            }
            uapi::DEVICE_GET_PCI_HOT_RESET_INFO => {
                // The emulated device sits alone on no resettable bus: what the kernel says for a
                // device without slot or bus reset.
                Err(libc::ENODEV)
            }
            _ => {
                self.log
                    .warn(&format!("unsupported device ioctl {request:#x}: ENOTTY"));
                Err(libc::ENOTTY)
            }
        }
    }

    fn region_of(offset: u64) -> (u32, u64) {
        (
            (offset >> uapi::REGION_OFFSET_SHIFT) as u32,
            offset & ((1u64 << uapi::REGION_OFFSET_SHIFT) - 1),
        )
    }

    /// `pread` on an emulated fd: `None` when `fd` is not a device fd.
    pub fn pread(
        &mut self,
        fd: RawFd,
        buf: &mut [u8],
        offset: i64,
    ) -> Option<Result<usize, Errno>> {
        let Some(FdKind::Device(slot)) = self.kind(fd) else {
            return self.kind(fd).map(|_| Err(libc::EINVAL));
        };
        if offset < 0 {
            return Some(Err(libc::EINVAL));
        }
        let (index, off) = Self::region_of(offset as u64);
        let s = &mut self.slots[slot];
        let Some(r) = s.replayer.as_mut() else {
            return Some(Err(libc::ENODEV));
        };
        let result = if index == uapi::PCI_CONFIG_REGION_INDEX {
            let Ok(off32) = u32::try_from(off) else {
                return Some(Err(libc::EINVAL));
            };
            r.config_read(off32, buf)
        } else {
            r.region_read(index, off, buf)
        };
        Some(match result {
            Ok(()) => {
                self.log
                    .debug(|| format!("read  region {index} +{off:#x} {}", hex_prefix(buf)));
                Ok(buf.len())
            }
            Err(e) => {
                self.log
                    .debug(|| format!("read region {index} +{off:#x} len {}: {e}", buf.len()));
                Err(errno_of(&e))
            }
        })
    }

    /// `pwrite` on an emulated fd: `None` when `fd` is not a device fd.
    pub fn pwrite(&mut self, fd: RawFd, buf: &[u8], offset: i64) -> Option<Result<usize, Errno>> {
        let Some(FdKind::Device(slot)) = self.kind(fd) else {
            return self.kind(fd).map(|_| Err(libc::EINVAL));
        };
        if offset < 0 {
            return Some(Err(libc::EINVAL));
        }
        let (index, off) = Self::region_of(offset as u64);
        let s = &mut self.slots[slot];
        let Some(r) = s.replayer.as_mut() else {
            return Some(Err(libc::ENODEV));
        };
        let result = if index == uapi::PCI_CONFIG_REGION_INDEX {
            let Ok(off32) = u32::try_from(off) else {
                return Some(Err(libc::EINVAL));
            };
            r.config_write(off32, buf)
        } else {
            r.region_write(index, off, buf)
        };
        self.log
            .debug(|| format!("write region {index} +{off:#x} {}", hex_prefix(buf)));
        Some(match result {
            Ok(()) => Ok(buf.len()),
            Err(e) => {
                self.log.debug(|| format!("write failed: {e}"));
                Err(errno_of(&e))
            }
        })
    }

    /// The replay reports of every device, by BDF.
    pub fn reports(&self) -> Vec<(String, PathBuf, Vec<ReplayReport>)> {
        self.slots
            .iter()
            .filter_map(|s| {
                let r = s.replayer.as_ref()?;
                let mut sessions = r.past_sessions().to_vec();
                sessions.push(r.report());
                Some((s.bdf.clone(), s.trace.clone(), sessions))
            })
            .collect()
    }
}

/// Up to 16 bytes of an access as hex, for the log.
fn hex_prefix(data: &[u8]) -> String {
    let mut s: String = data.iter().take(16).map(|b| format!("{b:02x}")).collect();
    if data.len() > 16 {
        s.push_str(&format!("... ({} bytes)", data.len()));
    }
    s
}

/// Parses a `struct vfio_irq_set` with its data; eventfds are duplicated so the device owns its
/// copies while QEMU keeps its own.
///
/// # Safety
/// `arg` must point to the structure and `argsz` bytes after it.
pub(crate) unsafe fn parse_irq_set(arg: *mut c_void) -> Result<IrqSetRequest, Errno> {
    // SAFETY: forwarded contract; argsz checked.
    let set: uapi::IrqSet = unsafe { read_arg(arg)? };
    let head = std::mem::size_of::<uapi::IrqSet>();
    let data_kind = set.flags & 0x7;
    let action_kind = set.flags & 0x38;
    if set.flags & !0x3f != 0 || data_kind.count_ones() != 1 || action_kind.count_ones() != 1 {
        return Err(libc::EINVAL);
    }
    let action = match action_kind {
        uapi::IRQ_SET_ACTION_MASK => IrqAction::Mask,
        uapi::IRQ_SET_ACTION_UNMASK => IrqAction::Unmask,
        _ => IrqAction::Trigger,
    };
    let count = set.count as usize;
    let elem = match data_kind {
        uapi::IRQ_SET_DATA_NONE => 0,
        uapi::IRQ_SET_DATA_BOOL => 1,
        _ => 4,
    };
    let need = count.checked_mul(elem).and_then(|n| n.checked_add(head));
    if !need.is_some_and(|n| n <= set.argsz as usize) {
        return Err(libc::EINVAL);
    }
    // SAFETY: argsz covers `head + count * elem` bytes.
    let data = unsafe { (arg as *const u8).add(head) };
    let mut fds = Vec::new();
    let data = match data_kind {
        uapi::IRQ_SET_DATA_NONE => IrqData::None,
        uapi::IRQ_SET_DATA_BOOL => {
            // SAFETY: in bounds, see above.
            IrqData::Bool((0..count).map(|i| unsafe { *data.add(i) } != 0).collect())
        }
        _ => {
            let mut present = Vec::with_capacity(count);
            for i in 0..count {
                // SAFETY: in bounds, see above.
                let fd = unsafe { std::ptr::read_unaligned((data as *const i32).add(i)) };
                if fd < 0 {
                    present.push(false);
                    fds.push(None);
                    continue;
                }
                // SAFETY: F_DUPFD_CLOEXEC on the caller's fd; the result is checked.
                let dup = unsafe { libc::fcntl(fd, libc::F_DUPFD_CLOEXEC, 0) };
                if dup < 0 {
                    return Err(libc::EBADF);
                }
                // SAFETY: `dup` is a fresh fd that nothing else owns.
                fds.push(Some(unsafe { OwnedFd::from_raw_fd(dup) }));
                present.push(true);
            }
            IrqData::Eventfd(present)
        }
    };
    Ok(IrqSetRequest {
        setup: IrqSetup {
            index: set.index,
            start: set.start,
            count: set.count,
            action,
            data,
        },
        fds,
    })
}

/// The report file: for one device, the same JSON as `hwrr replay --report` (the last session at
/// top level, `sessions` and `all_sessions`); for several, `{"devices": {BDF: that}}`.
pub fn report_json(reports: &[(String, PathBuf, Vec<ReplayReport>)]) -> serde_json::Value {
    fn one(trace: &std::path::Path, sessions: &[ReplayReport]) -> serde_json::Value {
        let Some(last) = sessions.last() else {
            return serde_json::Value::Null;
        };
        let mut v = serde_json::to_value(last).unwrap_or(serde_json::Value::Null);
        if let Some(obj) = v.as_object_mut() {
            obj.insert("sessions".into(), sessions.len().into());
            obj.insert("trace".into(), trace.display().to_string().into());
            if sessions.len() > 1 {
                obj.insert(
                    "all_sessions".into(),
                    serde_json::to_value(sessions).unwrap_or_default(),
                );
            }
        }
        v
    }
    match reports {
        [(_, trace, sessions)] => one(trace, sessions),
        many => {
            let devices: serde_json::Map<String, serde_json::Value> = many
                .iter()
                .map(|(bdf, trace, s)| (bdf.clone(), one(trace, s)))
                .collect();
            serde_json::json!({ "devices": devices })
        }
    }
}
