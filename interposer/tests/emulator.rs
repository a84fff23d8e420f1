//! Drives the replay-mode VFIO emulation in-process the way QEMU's vfio-pci does: sysfs lookups,
//! group and container setup, IOMMU info, DMA mapping of real memory, device info, SET_IRQS with a
//! real eventfd, config and BAR accesses through pread/pwrite at `index << 40` offsets.

use std::ffi::c_void;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::path::Path;
use std::sync::Arc;

use hwrr_device::MappedMemory;
use hwrr_formats::{
    AccessData, DeviceIdentity, DmaWrite, Event, EventKind, Irq, IrqInfo, RegionAccess, RegionInfo,
    RegionKind, TraceHeader, TraceWriter, WriterOptions,
};
use hwrr_vfio::config::{Config, DeviceSpec, LogTarget, Mode};
use hwrr_vfio::emulator::{report_json, Emulator, FdKind, PathAnswer};
use hwrr_vfio::log::Logger;
use hwrr_vfio::uapi;

const BDF: &str = "0000:00:19.0";

fn header() -> TraceHeader {
    let mut config = vec![0u8; 256];
    config[0..2].copy_from_slice(&0x8086u16.to_le_bytes());
    config[2..4].copy_from_slice(&0x10d3u16.to_le_bytes());
    config[0x3d] = 1;
    TraceHeader {
        device: DeviceIdentity {
            vendor_id: 0x8086,
            device_id: 0x10d3,
            // Captured elsewhere: the shim must answer for the BDF QEMU names, not this one.
            bdf: Some("0000:00:02.0".into()),
            ..Default::default()
        },
        config_space: config,
        regions: vec![
            RegionInfo {
                index: 0,
                kind: RegionKind::Mmio,
                size: 0x1000,
                flags: 7,
                alias_of: None,
            },
            RegionInfo {
                index: 7,
                kind: RegionKind::Config,
                size: 256,
                flags: 3,
                alias_of: None,
            },
        ],
        irqs: vec![
            IrqInfo {
                index: 0,
                count: 1,
                flags: 7,
            },
            IrqInfo {
                index: 1,
                count: 1,
                flags: 9,
            },
        ],
        ..Default::default()
    }
}

fn mmio(seq: u64, write: bool, offset: u64, value: u64) -> Event {
    let access = RegionAccess {
        region: 0,
        offset,
        data: AccessData::Value { size: 4, value },
    };
    Event::new(
        seq,
        seq * 1000,
        if write {
            EventKind::MmioWrite(access)
        } else {
            EventKind::MmioRead(access)
        },
    )
}

fn write_trace(path: &Path) {
    let events = vec![
        mmio(0, false, 0x8, 0x8008_0783),
        mmio(1, true, 0x10, 0x1234),
        Event::new(
            2,
            2500,
            EventKind::Irq(Irq {
                index: 1,
                vector: 0,
            }),
        ),
        Event::new(
            3,
            2600,
            EventKind::DmaWrite(DmaWrite {
                iova: 0x1000,
                data: vec![1, 2, 3, 4],
                before: None,
            }),
        ),
        mmio(4, false, 0x8, 2),
    ];
    let mut w = TraceWriter::create(path, &header(), WriterOptions::default()).unwrap();
    for e in &events {
        w.append(e).unwrap();
    }
    w.finish().unwrap();
}

fn emulator(trace: &Path) -> Emulator {
    let config = Config {
        mode: Mode::Replay,
        devices: vec![DeviceSpec {
            bdf: None,
            trace: trace.to_path_buf(),
        }],
        policy: hwrr_replayer::Policy::Strict,
        report: None,
        log: LogTarget::Quiet,
    };
    Emulator::new(
        &config,
        &[BDF.to_string()],
        Arc::new(Logger::new(&LogTarget::Quiet)),
    )
}

fn ioctl<T>(em: &mut Emulator, fd: i32, req: u64, arg: &mut T) -> Result<i32, i32> {
    // SAFETY: `arg` is a live, properly sized structure for `req`.
    unsafe { em.ioctl(fd, req, arg as *mut T as *mut c_void) }.expect("emulated fd")
}

fn ioctl_int(em: &mut Emulator, fd: i32, req: u64, arg: u64) -> Result<i32, i32> {
    // SAFETY: these requests take an integer argument.
    unsafe { em.ioctl(fd, req, arg as *mut c_void) }.expect("emulated fd")
}

#[test]
fn qemu_vfio_pci_sequence() {
    let dir = tempfile::tempdir().unwrap();
    let trace = dir.path().join("t.hwrr");
    write_trace(&trace);
    let mut em = emulator(&trace);
    let (bdf, group) = em.devices()[0].clone();
    assert_eq!(bdf, BDF);

    // sysfs as vfio_realize sees it.
    let dev = format!("/sys/bus/pci/devices/{BDF}");
    assert_eq!(em.path(&dev), Some(PathAnswer::Directory));
    assert_eq!(
        em.path(&format!("{dev}/iommu_group")),
        Some(PathAnswer::Symlink(format!(
            "../../../kernel/iommu_groups/{group}"
        )))
    );
    assert_eq!(
        em.realpath(&format!("{dev}/subsystem")).as_deref(),
        Some("/sys/bus/pci")
    );
    assert_eq!(em.path("/sys/bus/pci/devices/0000:00:02.0"), None);

    // After a real group, the next container belongs to the real kernel.
    assert!(em.open("/dev/vfio/7").is_none());
    assert!(em.open("/dev/vfio/vfio").is_none());
    let group_fd = em.open(&format!("/dev/vfio/{group}")).unwrap().unwrap();
    assert_eq!(
        em.open(&format!("/dev/vfio/{group}")),
        Some(Err(libc::EBUSY))
    );
    let container = em.open("/dev/vfio/vfio").unwrap().unwrap();
    assert_eq!(em.kind(container), Some(FdKind::Container(0)));

    assert_eq!(
        ioctl_int(&mut em, container, uapi::GET_API_VERSION, 0),
        Ok(0)
    );
    assert_eq!(
        ioctl_int(
            &mut em,
            container,
            uapi::CHECK_EXTENSION,
            uapi::TYPE1V2_IOMMU
        ),
        Ok(1)
    );
    assert_eq!(
        ioctl_int(&mut em, container, uapi::CHECK_EXTENSION, 8),
        Ok(0)
    );
    // SET_IOMMU needs a group in the container first, as in the kernel.
    assert_eq!(
        ioctl_int(&mut em, container, uapi::SET_IOMMU, uapi::TYPE1V2_IOMMU),
        Err(libc::EINVAL)
    );
    let mut status = uapi::GroupStatus { argsz: 8, flags: 0 };
    ioctl(&mut em, group_fd, uapi::GROUP_GET_STATUS, &mut status).unwrap();
    assert_eq!(status.flags, uapi::GROUP_FLAGS_VIABLE);
    let mut cfd = container;
    ioctl(&mut em, group_fd, uapi::GROUP_SET_CONTAINER, &mut cfd).unwrap();
    ioctl(&mut em, group_fd, uapi::GROUP_GET_STATUS, &mut status).unwrap();
    assert_eq!(
        status.flags,
        uapi::GROUP_FLAGS_VIABLE | uapi::GROUP_FLAGS_CONTAINER_SET
    );
    assert_eq!(
        ioctl_int(&mut em, container, uapi::SET_IOMMU, uapi::TYPE1V2_IOMMU),
        Ok(0)
    );

    // IOMMU info: first with the bare structure (QEMU learns the full size), then with room.
    let mut info = uapi::IommuType1Info {
        argsz: 24,
        ..Default::default()
    };
    ioctl(&mut em, container, uapi::IOMMU_GET_INFO, &mut info).unwrap();
    assert_eq!(info.iova_pgsizes, uapi::IOMMU_PGSIZES);
    assert_eq!(info.cap_offset, 0);
    let full = info.argsz as usize;
    assert!(full > 24);
    let mut buf = vec![0u64; full.div_ceil(8)];
    buf[0] = full as u64; // argsz in the low half, flags 0
                          // SAFETY: `buf` holds `full` bytes.
    unsafe { em.ioctl(container, uapi::IOMMU_GET_INFO, buf.as_mut_ptr().cast()) }
        .unwrap()
        .unwrap();
    let bytes: Vec<u8> = buf.iter().flat_map(|w| w.to_ne_bytes()).collect();
    let cap_offset = u32::from_ne_bytes(bytes[16..20].try_into().unwrap()) as usize;
    assert_eq!(cap_offset, 24);
    let cap_id = u16::from_ne_bytes(bytes[24..26].try_into().unwrap());
    assert_eq!(cap_id, uapi::IOMMU_TYPE1_INFO_CAP_IOVA_RANGE);
    let nr = u32::from_ne_bytes(bytes[32..36].try_into().unwrap());
    assert_eq!(nr, 2);
    let end0 = u64::from_ne_bytes(bytes[48..56].try_into().unwrap());
    assert_eq!(end0, 0xfedf_ffff);

    // Guest RAM: two pages of this process mapped at IOVA 0.
    let ram = MappedMemory::anonymous(0x2000).unwrap();
    let mut map = uapi::DmaMap {
        argsz: 32,
        flags: uapi::DMA_MAP_FLAG_READ | uapi::DMA_MAP_FLAG_WRITE,
        vaddr: ram.as_ptr() as u64,
        iova: 0,
        size: 0x2000,
    };
    ioctl(&mut em, container, uapi::IOMMU_MAP_DMA, &mut map).unwrap();
    assert_eq!(
        ioctl(&mut em, container, uapi::IOMMU_MAP_DMA, &mut map),
        Err(libc::EEXIST)
    );
    let mut unaligned = uapi::DmaMap { size: 0x123, ..map };
    assert_eq!(
        ioctl(&mut em, container, uapi::IOMMU_MAP_DMA, &mut unaligned),
        Err(libc::EINVAL)
    );

    // The device fd, by the name QEMU asks for.
    let wrong = c"0000:00:02.0";
    // SAFETY: a NUL-terminated name.
    let r = unsafe {
        em.ioctl(
            group_fd,
            uapi::GROUP_GET_DEVICE_FD,
            wrong.as_ptr() as *mut c_void,
        )
    };
    assert_eq!(r, Some(Err(libc::ENODEV)));
    let name = c"0000:00:19.0";
    // SAFETY: a NUL-terminated name.
    let dev_fd = unsafe {
        em.ioctl(
            group_fd,
            uapi::GROUP_GET_DEVICE_FD,
            name.as_ptr() as *mut c_void,
        )
    }
    .unwrap()
    .unwrap();
    assert_eq!(em.kind(dev_fd), Some(FdKind::Device(0)));

    let mut dinfo = uapi::DeviceInfo {
        argsz: 16,
        ..Default::default()
    };
    ioctl(&mut em, dev_fd, uapi::DEVICE_GET_INFO, &mut dinfo).unwrap();
    assert_eq!(
        dinfo.flags,
        uapi::DEVICE_FLAGS_PCI | uapi::DEVICE_FLAGS_RESET
    );
    assert_eq!((dinfo.num_regions, dinfo.num_irqs), (9, 5));

    let mut rinfo = uapi::RegionInfo {
        argsz: 32,
        index: 0,
        ..Default::default()
    };
    ioctl(&mut em, dev_fd, uapi::DEVICE_GET_REGION_INFO, &mut rinfo).unwrap();
    assert_eq!((rinfo.size, rinfo.offset), (0x1000, 0));
    assert_eq!(
        rinfo.flags & uapi::REGION_INFO_FLAG_MMAP,
        0,
        "mmap is never offered"
    );
    rinfo.index = 7;
    ioctl(&mut em, dev_fd, uapi::DEVICE_GET_REGION_INFO, &mut rinfo).unwrap();
    assert_eq!(rinfo.offset, 7 << 40);
    rinfo.index = 2;
    ioctl(&mut em, dev_fd, uapi::DEVICE_GET_REGION_INFO, &mut rinfo).unwrap();
    assert_eq!(rinfo.size, 0, "a BAR the device lacks has size 0");
    rinfo.index = 9;
    assert_eq!(
        ioctl(&mut em, dev_fd, uapi::DEVICE_GET_REGION_INFO, &mut rinfo),
        Err(libc::EINVAL)
    );
    let mut short = uapi::RegionInfo {
        argsz: 8,
        ..Default::default()
    };
    assert_eq!(
        ioctl(&mut em, dev_fd, uapi::DEVICE_GET_REGION_INFO, &mut short),
        Err(libc::EINVAL)
    );

    let mut iinfo = uapi::IrqInfo {
        argsz: 16,
        index: 1,
        ..Default::default()
    };
    ioctl(&mut em, dev_fd, uapi::DEVICE_GET_IRQ_INFO, &mut iinfo).unwrap();
    assert_eq!((iinfo.count, iinfo.flags), (1, 9));

    // MSI on an eventfd, as vfio_msi_enable does.
    // SAFETY: plain eventfd creation; checked below.
    let efd = unsafe { libc::eventfd(0, libc::EFD_NONBLOCK | libc::EFD_CLOEXEC) };
    assert!(efd >= 0);
    // SAFETY: `efd` is a fresh fd this test owns.
    let efd = unsafe { OwnedFd::from_raw_fd(efd) };
    #[repr(C)]
    struct IrqSetOne {
        head: uapi::IrqSet,
        fd: i32,
    }
    let mut set = IrqSetOne {
        head: uapi::IrqSet {
            argsz: 24,
            flags: uapi::IRQ_SET_DATA_EVENTFD | uapi::IRQ_SET_ACTION_TRIGGER,
            index: 1,
            start: 0,
            count: 1,
        },
        fd: efd.as_raw_fd(),
    };
    ioctl(&mut em, dev_fd, uapi::DEVICE_SET_IRQS, &mut set).unwrap();
    let mut truncated = IrqSetOne {
        head: uapi::IrqSet {
            argsz: 20,
            ..set.head
        },
        fd: -1,
    };
    assert_eq!(
        ioctl(&mut em, dev_fd, uapi::DEVICE_SET_IRQS, &mut truncated),
        Err(libc::EINVAL)
    );

    // QEMU's machine-reset VFIO_DEVICE_RESET, before any register access: absorbed, not a divergence.
    let mut word = [0u8; 2];
    assert_eq!(em.pwrite(dev_fd, &[0x06, 0x00], (7 << 40) + 4), Some(Ok(2)));
    assert_eq!(ioctl_int(&mut em, dev_fd, uapi::DEVICE_RESET, 0), Ok(0));
    assert_eq!(power_on_resets(&em), 1);
    assert_eq!(em.pread(dev_fd, &mut word, (7 << 40) + 4), Some(Ok(2)));
    assert_eq!(
        u16::from_le_bytes(word),
        0,
        "the reset restored the captured COMMAND register"
    );

    // Config space and BAR0 through the device fd.
    assert_eq!(em.pread(dev_fd, &mut word, 7 << 40), Some(Ok(2)));
    assert_eq!(u16::from_le_bytes(word), 0x8086);
    let mut v = [0u8; 4];
    assert_eq!(em.pread(dev_fd, &mut v, 0x8), Some(Ok(4)));
    assert_eq!(u32::from_le_bytes(v), 0x8008_0783);
    assert_eq!(
        em.pwrite(dev_fd, &0x1234u32.to_le_bytes(), 0x10),
        Some(Ok(4))
    );
    // The recorded MSI after that write reached our eventfd; the recorded DMA write reached RAM.
    let mut count = 0u64;
    // SAFETY: reading 8 bytes into a u64 from our eventfd.
    let n = unsafe { libc::read(efd.as_raw_fd(), (&mut count as *mut u64).cast(), 8) };
    assert_eq!(n, 8, "the recorded interrupt was delivered");
    assert!(count >= 1);
    let mut dma = [0u8; 4];
    ram.read(0x1000, &mut dma).unwrap();
    assert_eq!(dma, [1, 2, 3, 4]);
    assert_eq!(em.pread(dev_fd, &mut v, 0x8), Some(Ok(4)));
    assert_eq!(u32::from_le_bytes(v), 2);
    // Out of the region: EINVAL like the kernel; other fds are not the emulator's business.
    assert_eq!(em.pread(dev_fd, &mut v, 0x1000), Some(Err(libc::EINVAL)));
    assert_eq!(em.pread(group_fd, &mut v, 0), Some(Err(libc::EINVAL)));
    assert_eq!(em.pread(12345, &mut v, 0), None);

    // Unknown ioctls fail the way the kernel fails them.
    assert_eq!(ioctl_int(&mut em, dev_fd, 0x3b7f, 0), Err(libc::ENOTTY));
    assert_eq!(ioctl_int(&mut em, container, 0x3b7f, 0), Err(libc::ENOTTY));

    // Unmapping half a mapping is refused (type1v2); the whole one returns its size.
    let mut unmap = uapi::DmaUnmap {
        argsz: 24,
        flags: 0,
        iova: 0,
        size: 0x1000,
    };
    assert_eq!(
        ioctl(&mut em, container, uapi::IOMMU_UNMAP_DMA, &mut unmap),
        Err(libc::EINVAL)
    );
    unmap.size = 0x2000;
    ioctl(&mut em, container, uapi::IOMMU_UNMAP_DMA, &mut unmap).unwrap();
    assert_eq!(unmap.size, 0x2000);

    // The group cannot leave its container while the device is open.
    assert_eq!(
        ioctl_int(&mut em, group_fd, uapi::GROUP_UNSET_CONTAINER, 0),
        Err(libc::EBUSY)
    );
    let reports = em.reports();
    assert_eq!(reports.len(), 1);
    let report = reports[0].2.last().unwrap();
    assert_eq!(report.counters.matched, 3);
    assert_eq!(report.counters.irqs_delivered, 1);
    assert!(report.first_divergence.is_none());
    let json = report_json(&reports);
    assert_eq!(json["matched"], 3);
    assert_eq!(json["sessions"], 1);

    // A reset after register accesses is the guest's business: the trace has none, strict diverges.
    assert_eq!(ioctl_int(&mut em, dev_fd, uapi::DEVICE_RESET, 0), Ok(0));
    assert_eq!(power_on_resets(&em), 1);
    let after = em.reports();
    assert!(after[0].2.last().unwrap().first_divergence.is_some());

    for fd in [dev_fd, group_fd, container] {
        assert!(em.close(fd));
        // SAFETY: closing the placeholder fds the emulator created.
        unsafe { libc::close(fd) };
    }
    assert!(!em.close(dev_fd));
}

#[test]
fn missing_trace_answers_for_nothing() {
    let mut em = emulator(Path::new("/nonexistent/trace.hwrr"));
    assert!(em.devices().is_empty());
    assert_eq!(em.path(&format!("/sys/bus/pci/devices/{BDF}")), None);
    assert!(em.open("/dev/vfio/vfio").is_none());
}

#[test]
fn container_opened_first_is_emulated() {
    // rust-vmm's vfio-ioctls opens /dev/vfio/vfio before any group.
    let dir = tempfile::tempdir().unwrap();
    let trace = dir.path().join("t.hwrr");
    write_trace(&trace);
    let mut em = emulator(&trace);
    let fd = em.open("/dev/vfio/vfio").unwrap().unwrap();
    assert_eq!(em.kind(fd), Some(FdKind::Container(0)));
    assert!(em.close(fd));
    // SAFETY: closing the placeholder fd the emulator created.
    unsafe { libc::close(fd) };
}

#[test]
fn two_devices_share_a_container_like_qemu_does() {
    let dir = tempfile::tempdir().unwrap();
    let (a, b) = (dir.path().join("a.hwrr"), dir.path().join("b.hwrr"));
    write_trace(&a);
    write_trace(&b);
    let config = Config {
        mode: Mode::Replay,
        devices: vec![
            DeviceSpec {
                bdf: Some("0000:00:19.0".into()),
                trace: a,
            },
            DeviceSpec {
                bdf: Some("0000:03:00.0".into()),
                trace: b,
            },
        ],
        policy: hwrr_replayer::Policy::Strict,
        report: None,
        log: LogTarget::Quiet,
    };
    let mut em = Emulator::new(&config, &[], Arc::new(Logger::new(&LogTarget::Quiet)));
    let devs = em.devices();
    assert_eq!(devs.len(), 2);
    assert_ne!(
        devs[0].1, devs[1].1,
        "each device has its own invented group"
    );
    let ga = em
        .open(&format!("/dev/vfio/{}", devs[0].1))
        .unwrap()
        .unwrap();
    let container = em.open("/dev/vfio/vfio").unwrap().unwrap();
    let mut cfd = container;
    ioctl(&mut em, ga, uapi::GROUP_SET_CONTAINER, &mut cfd).unwrap();
    ioctl_int(&mut em, container, uapi::SET_IOMMU, uapi::TYPE1V2_IOMMU).unwrap();
    // QEMU maps guest RAM once, then offers the existing container to the second group.
    let ram = MappedMemory::anonymous(0x2000).unwrap();
    let mut map = uapi::DmaMap {
        argsz: 32,
        flags: 3,
        vaddr: ram.as_ptr() as u64,
        iova: 0,
        size: 0x2000,
    };
    ioctl(&mut em, container, uapi::IOMMU_MAP_DMA, &mut map).unwrap();
    let gb = em
        .open(&format!("/dev/vfio/{}", devs[1].1))
        .unwrap()
        .unwrap();
    ioctl(&mut em, gb, uapi::GROUP_SET_CONTAINER, &mut cfd).unwrap();
    let name = c"0000:03:00.0";
    // SAFETY: a NUL-terminated name.
    let db = unsafe { em.ioctl(gb, uapi::GROUP_GET_DEVICE_FD, name.as_ptr() as *mut c_void) }
        .unwrap()
        .unwrap();
    // The second device sees the mapping made before it joined: its recorded DMA write lands.
    let mut v = [0u8; 4];
    assert_eq!(em.pread(db, &mut v, 0x8), Some(Ok(4)));
    assert_eq!(em.pwrite(db, &0x1234u32.to_le_bytes(), 0x10), Some(Ok(4)));
    let mut dma = [0u8; 4];
    ram.read(0x1000, &mut dma).unwrap();
    assert_eq!(dma, [1, 2, 3, 4]);
    let json = report_json(&em.reports());
    assert_eq!(json["devices"]["0000:03:00.0"]["matched"], 2);
    assert_eq!(json["devices"]["0000:00:19.0"]["accesses"], 0);
    for fd in [db, gb, ga, container] {
        em.close(fd);
        // SAFETY: closing the placeholder fds the emulator created.
        unsafe { libc::close(fd) };
    }
}

/// Power-on resets the engine absorbed, over the sessions of the emulator's only device.
fn power_on_resets(em: &Emulator) -> u64 {
    em.reports()
        .iter()
        .flat_map(|(_, _, sessions)| sessions.iter())
        .map(|r| r.counters.power_on_resets)
        .sum()
}
