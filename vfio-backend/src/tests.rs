//! The backend's logic against a fake kernel: offsets, bounds, error mapping, IRQ packing, DMA
//! bookkeeping, the ROM, the mmap path.

use std::collections::HashMap;
use std::io;
use std::sync::{Arc, Mutex};

use hwrr_device::{
    dma_flags, Device, DeviceError, DmaMapping, DmaRegion, IrqAction, IrqData, IrqSetRequest,
    IrqSetup, MappedMemory, RegionKind,
};

use super::*;

/// vfio-pci puts region `i` at file offset `i << 40`.
const SHIFT: u32 = 40;

#[derive(Debug, Clone, PartialEq, Eq)]
enum Call {
    Pread(u64, usize),
    Pwrite(u64, Vec<u8>),
    Mmap(u64, usize),
    SetIrqs(Vec<u8>),
    Reset,
    DmaMap {
        iova: u64,
        size: u64,
        vaddr: u64,
        flags: u32,
    },
    DmaUnmap(u64, u64),
    IommuInfo(usize),
}

#[derive(Debug, Default)]
struct State {
    /// Region contents by index.
    contents: HashMap<u32, Vec<u8>>,
    calls: Vec<Call>,
    /// File offsets whose access fails with this errno.
    fail: HashMap<u64, i32>,
    /// File offsets whose access transfers only this many bytes.
    short: HashMap<u64, usize>,
    fail_set_irqs: Option<i32>,
    fail_unmap: Option<i32>,
    iommu_answer: Vec<u8>,
    /// What an iommufd-style seam reports instead of a type1 answer (`decoded_iommu_info`).
    ioas_answer: Option<Result<IommuInfo, i32>>,
}

#[derive(Debug, Clone)]
struct Fake {
    facts: DeviceFacts,
    state: Arc<Mutex<State>>,
}

impl Fake {
    fn state(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap()
    }

    fn locate(&self, at: u64, len: usize) -> io::Result<(u32, usize)> {
        let index = (at >> SHIFT) as u32;
        let off = (at & ((1 << SHIFT) - 1)) as usize;
        let r = self
            .facts
            .regions
            .iter()
            .find(|r| r.index == index)
            .ok_or_else(|| io::Error::from_raw_os_error(libc::EINVAL))?;
        if off + len > r.size as usize {
            return Err(io::Error::from_raw_os_error(libc::EINVAL));
        }
        Ok((index, off))
    }

    fn take_calls(&self) -> Vec<Call> {
        std::mem::take(&mut self.state().calls)
    }
}

impl VfioSys for Fake {
    fn facts(&self) -> &DeviceFacts {
        &self.facts
    }

    fn pread(&self, at: u64, data: &mut [u8]) -> io::Result<usize> {
        let mut s = self.state();
        s.calls.push(Call::Pread(at, data.len()));
        if let Some(e) = s.fail.get(&at) {
            return Err(io::Error::from_raw_os_error(*e));
        }
        let (index, off) = self.locate(at, data.len())?;
        let n = s.short.get(&at).copied().unwrap_or(data.len());
        let c = &s.contents[&index];
        data[..n].copy_from_slice(&c[off..off + n]);
        Ok(n)
    }

    fn pwrite(&self, at: u64, data: &[u8]) -> io::Result<usize> {
        let mut s = self.state();
        s.calls.push(Call::Pwrite(at, data.to_vec()));
        if let Some(e) = s.fail.get(&at) {
            return Err(io::Error::from_raw_os_error(*e));
        }
        let (index, off) = self.locate(at, data.len())?;
        let n = s.short.get(&at).copied().unwrap_or(data.len());
        s.contents.get_mut(&index).unwrap()[off..off + n].copy_from_slice(&data[..n]);
        Ok(n)
    }

    fn mmap(&self, at: u64, len: usize) -> io::Result<BarMapping> {
        let mut s = self.state();
        s.calls.push(Call::Mmap(at, len));
        if let Some(e) = s.fail.get(&at) {
            return Err(io::Error::from_raw_os_error(*e));
        }
        let (index, off) = self.locate(at, len)?;
        // SAFETY: a fresh anonymous shared mapping standing in for the device's BAR.
        let ptr = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_SHARED | libc::MAP_ANONYMOUS,
                -1,
                0,
            )
        };
        assert_ne!(ptr, libc::MAP_FAILED);
        let src = &s.contents[&index][off..off + len];
        // SAFETY: `ptr` is a fresh `len`-byte mapping; `src` is `len` bytes.
        unsafe { std::ptr::copy_nonoverlapping(src.as_ptr(), ptr.cast(), len) };
        // SAFETY: the mapping was just made and is owned by nothing else.
        Ok(unsafe { BarMapping::from_mmap(ptr.cast(), len) })
    }

    fn set_irqs(&self, packed: &[u8]) -> io::Result<()> {
        let mut s = self.state();
        s.calls.push(Call::SetIrqs(packed.to_vec()));
        match s.fail_set_irqs {
            Some(e) => Err(io::Error::from_raw_os_error(e)),
            None => Ok(()),
        }
    }

    fn reset(&self) -> io::Result<()> {
        self.state().calls.push(Call::Reset);
        Ok(())
    }

    unsafe fn dma_map(&self, iova: u64, size: u64, vaddr: u64, flags: u32) -> io::Result<()> {
        self.state().calls.push(Call::DmaMap {
            iova,
            size,
            vaddr,
            flags,
        });
        Ok(())
    }

    fn dma_unmap(&self, iova: u64, size: u64) -> io::Result<u64> {
        let mut s = self.state();
        s.calls.push(Call::DmaUnmap(iova, size));
        match s.fail_unmap {
            Some(e) => Err(io::Error::from_raw_os_error(e)),
            None => Ok(size),
        }
    }

    fn iommu_info(&self, buf: &mut [u8]) -> io::Result<()> {
        let mut s = self.state();
        s.calls.push(Call::IommuInfo(buf.len()));
        if s.iommu_answer.is_empty() {
            return Err(io::Error::from_raw_os_error(libc::ENOTTY));
        }
        let n = buf.len().min(s.iommu_answer.len());
        buf[..n].copy_from_slice(&s.iommu_answer[..n]);
        Ok(())
    }

    fn decoded_iommu_info(&self) -> Option<io::Result<IommuInfo>> {
        self.state()
            .ioas_answer
            .clone()
            .map(|a| a.map_err(io::Error::from_raw_os_error))
    }
}

fn region(index: u32, flags: u32, size: u64, mmap_areas: Vec<(u64, u64)>) -> RegionFacts {
    RegionFacts {
        index,
        flags,
        size,
        offset: u64::from(index) << SHIFT,
        mmap_areas,
    }
}

/// A device shaped like QEMU's e1000e as VFIO shows it in the VT-d box (smaller BARs).
fn e1000e_like() -> Fake {
    let facts = DeviceFacts {
        flags: sys::DEVICE_FLAG_RESET | 2, // RESET | PCI
        regions: vec![
            region(0, 0x7, 0x2_0000, vec![(0, 0x2_0000)]),
            region(1, 0x0, 0, vec![]),
            region(2, 0x3, 32, vec![]),
            region(3, 0xf, 0x4000, vec![(0x3000, 0x1000)]),
            region(4, 0, 0, vec![]),
            region(5, 0, 0, vec![]),
            region(6, 0x1, 0x2_0000, vec![]),
            region(7, 0x3, 256, vec![]),
            region(8, 0, 0, vec![]),
        ],
        irqs: vec![
            IrqFacts {
                index: 0,
                flags: 0x7,
                count: 1,
            },
            IrqFacts {
                index: 1,
                flags: 0x9,
                count: 1,
            },
            IrqFacts {
                index: 2,
                flags: 0x9,
                count: 5,
            },
            IrqFacts {
                index: 3,
                flags: 0x9,
                count: 1,
            },
            IrqFacts {
                index: 4,
                flags: 0x9,
                count: 1,
            },
        ],
    };
    let mut config = vec![0u8; 256];
    config[0..2].copy_from_slice(&0x8086u16.to_le_bytes());
    config[2..4].copy_from_slice(&0x10d3u16.to_le_bytes());
    config[8] = 0x00;
    config[9..12].copy_from_slice(&[0x00, 0x00, 0x02]);
    config[0x10..0x14].copy_from_slice(&0xfebc_0000u32.to_le_bytes());
    config[0x18..0x1c].copy_from_slice(&0xc001u32.to_le_bytes());
    config[0x1c..0x20].copy_from_slice(&0xfebd_0000u32.to_le_bytes());
    config[0x2c..0x30].copy_from_slice(&[0x86, 0x80, 0x00, 0x00]);
    let mut bar0 = vec![0u8; 0x2_0000];
    bar0[8..12].copy_from_slice(&0x0008_0283u32.to_le_bytes());
    bar0[0x5400..0x5404].copy_from_slice(&0x1200_5452u32.to_le_bytes());
    let rom: Vec<u8> = (0..0x2_0000u32).map(|i| (i * 7 % 251) as u8).collect();
    let mut contents = HashMap::new();
    contents.insert(0, bar0);
    contents.insert(2, vec![0u8; 32]);
    contents.insert(3, vec![0u8; 0x4000]);
    contents.insert(6, rom);
    contents.insert(7, config);
    Fake {
        facts,
        state: Arc::new(Mutex::new(State {
            contents,
            iommu_answer: iommu::tests::vtdbox_answer(),
            ..State::default()
        })),
    }
}

fn open(fake: &Fake, access: AccessMode) -> VfioBackend<Fake> {
    let b = VfioBackend::with_sys(fake.clone(), Some("0000:00:02.0".into()), access, true).unwrap();
    fake.take_calls();
    b
}

fn r32(b: &mut VfioBackend<Fake>, region: u32, off: u64) -> hwrr_device::Result<u32> {
    let mut d = [0u8; 4];
    b.region_read(region, off, &mut d)?;
    Ok(u32::from_le_bytes(d))
}

#[test]
fn describe_reports_identity_kinds_irqs_and_the_rom() {
    let fake = e1000e_like();
    let b = open(&fake, AccessMode::FileIo);
    let d = b.describe();
    assert_eq!(d.identity.vendor_id, 0x8086);
    assert_eq!(d.identity.device_id, 0x10d3);
    assert_eq!(d.identity.class_code, 0x02_0000);
    assert_eq!(d.identity.subsystem_vendor_id, 0x8086);
    assert_eq!(d.identity.bdf.as_deref(), Some("0000:00:02.0"));
    let kinds: Vec<(u32, RegionKind, u64, u32)> = d
        .regions
        .iter()
        .map(|r| (r.index, r.kind, r.size, r.flags))
        .collect();
    assert_eq!(
        kinds,
        vec![
            (0, RegionKind::Mmio, 0x2_0000, 0x7),
            (2, RegionKind::Pio, 32, 0x3),
            (3, RegionKind::Mmio, 0x4000, 0xf),
            (6, RegionKind::Rom, 0x2_0000, 0x1),
            (7, RegionKind::Config, 256, 0x3),
        ],
        "regions of size 0 (64-bit BAR halves, absent BARs, VGA) are not listed"
    );
    assert_eq!(d.irqs.len(), 5);
    assert_eq!(
        (d.irqs[2].index, d.irqs[2].count, d.irqs[2].flags),
        (2, 5, 0x9)
    );
    let rom = d.rom.expect("ROM captured at open");
    assert_eq!(rom, fake.state().contents[&6]);
    assert_eq!(d.config_space, fake.state().contents[&7]);
    assert_eq!(b.rom_error(), None);
    assert_eq!(b.device_flags() & sys::DEVICE_FLAG_RESET, 1);
}

#[test]
fn describe_shows_config_space_as_it_is_now() {
    let fake = e1000e_like();
    let mut b = open(&fake, AccessMode::FileIo);
    b.config_write(4, &0x0006u16.to_le_bytes()).unwrap();
    assert_eq!(b.describe().config_space[4..6], [0x06, 0x00]);
}

#[test]
fn rom_read_failure_is_kept_not_fatal() {
    let fake = e1000e_like();
    fake.state()
        .fail
        .insert((6 << SHIFT) + ROM_CHUNK as u64, libc::EIO);
    let b = VfioBackend::with_sys(fake.clone(), None, AccessMode::FileIo, true).unwrap();
    assert!(b.describe().rom.is_none());
    assert!(
        b.rom_error().unwrap().contains("Input/output error"),
        "{:?}",
        b.rom_error()
    );
    // and without read_rom the ROM is never touched
    let fake = e1000e_like();
    let b = VfioBackend::with_sys(fake.clone(), None, AccessMode::FileIo, false).unwrap();
    assert!(b.describe().rom.is_none());
    assert!(!fake
        .take_calls()
        .iter()
        .any(|c| matches!(c, Call::Pread(at, _) if at >> SHIFT == 6)));
}

#[test]
fn accesses_land_at_region_offset_plus_offset() {
    let fake = e1000e_like();
    let mut b = open(&fake, AccessMode::FileIo);
    assert_eq!(r32(&mut b, 0, 8).unwrap(), 0x0008_0283);
    assert_eq!(r32(&mut b, 0, 0x5400).unwrap(), 0x1200_5452);
    b.region_write(2, 4, &[1, 2, 3, 4]).unwrap();
    let mut cfg = [0u8; 2];
    b.config_read(0x2c, &mut cfg).unwrap();
    assert_eq!(cfg, [0x86, 0x80]);
    b.config_write(4, &[6, 0]).unwrap();
    assert_eq!(
        fake.take_calls(),
        vec![
            Call::Pread(8, 4),
            Call::Pread(0x5400, 4),
            Call::Pwrite((2 << SHIFT) + 4, vec![1, 2, 3, 4]),
            Call::Pread((7 << SHIFT) + 0x2c, 2),
            Call::Pwrite((7 << SHIFT) + 4, vec![6, 0]),
        ]
    );
    assert_eq!(fake.state().contents[&2][4..8], [1, 2, 3, 4]);
}

#[test]
fn out_of_bounds_and_missing_regions_never_reach_the_kernel() {
    let fake = e1000e_like();
    let mut b = open(&fake, AccessMode::FileIo);
    let mut d = [0u8; 4];
    assert!(matches!(
        b.region_read(2, 30, &mut d),
        Err(DeviceError::OutOfRange {
            region: 2,
            offset: 30,
            len: 4,
            size: 32
        })
    ));
    assert!(matches!(
        b.region_read(2, u64::MAX, &mut d),
        Err(DeviceError::OutOfRange { .. })
    ));
    assert!(matches!(
        b.region_read(1, 0, &mut d),
        Err(DeviceError::NoSuchRegion(1))
    ));
    assert!(matches!(
        b.region_write(9, 0, &d),
        Err(DeviceError::NoSuchRegion(9))
    ));
    assert!(matches!(
        b.config_read(254, &mut d),
        Err(DeviceError::OutOfRange { .. })
    ));
    assert!(matches!(
        b.config_write(u32::MAX, &d),
        Err(DeviceError::OutOfRange { .. })
    ));
    assert!(
        matches!(b.region_write(6, 0, &d), Err(DeviceError::Unsupported(_))),
        "the ROM region is read-only"
    );
    assert_eq!(fake.take_calls(), vec![]);
}

#[test]
fn kernel_errors_are_reported_with_their_errno() {
    let fake = e1000e_like();
    let mut b = open(&fake, AccessMode::FileIo);
    fake.state().fail.insert(0x10, libc::EIO);
    let e = r32(&mut b, 0, 0x10).unwrap_err();
    assert_eq!(e.errno(), libc::EIO);
    fake.state().fail.insert((7 << SHIFT) + 0x40, libc::EPERM);
    assert_eq!(b.config_write(0x40, &[0]).unwrap_err().errno(), libc::EPERM);
    fake.state().short.insert(0x20, 2);
    let e = r32(&mut b, 0, 0x20).unwrap_err();
    assert!(e.to_string().contains("short read: 2 of 4"), "{e}");
    fake.state().short.insert(0x24, 1);
    let e = b.region_write(0, 0x24, &[0; 4]).unwrap_err();
    assert!(e.to_string().contains("short write: 1 of 4"), "{e}");
}

#[test]
fn set_irqs_passes_the_packed_request_and_reports_kernel_errors() {
    let fake = e1000e_like();
    let mut b = open(&fake, AccessMode::FileIo);
    let efd = hwrr_device::eventfd::create().unwrap();
    let raw = std::os::fd::AsRawFd::as_raw_fd(&efd);
    b.set_irqs(IrqSetRequest {
        setup: IrqSetup {
            index: 2,
            start: 0,
            count: 1,
            action: IrqAction::Trigger,
            data: IrqData::Eventfd(vec![true]),
        },
        fds: vec![Some(efd)],
    })
    .unwrap();
    let calls = fake.take_calls();
    let [Call::SetIrqs(bytes)] = calls.as_slice() else {
        panic!("{calls:?}")
    };
    let mut want = Vec::new();
    for w in [
        24u32,
        irqset::DATA_EVENTFD | irqset::ACTION_TRIGGER,
        2,
        0,
        1,
        raw as u32,
    ] {
        want.extend_from_slice(&w.to_ne_bytes());
    }
    assert_eq!(bytes, &want);
    // an index the device lacks is refused before the kernel
    let bad = IrqSetRequest {
        setup: IrqSetup {
            index: 5,
            start: 0,
            count: 1,
            action: IrqAction::Unmask,
            data: IrqData::None,
        },
        fds: vec![],
    };
    assert!(matches!(
        b.set_irqs(bad),
        Err(DeviceError::NoSuchIrq { index: 5, .. })
    ));
    assert_eq!(fake.take_calls(), vec![]);
    fake.state().fail_set_irqs = Some(libc::EINVAL);
    let unmask = IrqSetRequest {
        setup: IrqSetup {
            index: 0,
            start: 0,
            count: 1,
            action: IrqAction::Unmask,
            data: IrqData::None,
        },
        fds: vec![],
    };
    assert_eq!(b.set_irqs(unmask).unwrap_err().errno(), libc::EINVAL);
}

fn dma(iova: u64, len: u64, flags: u32, memory: &Arc<MappedMemory>) -> DmaRegion {
    DmaRegion {
        mapping: DmaMapping { iova, len, flags },
        memory: Some(memory.clone()),
    }
}

#[test]
fn dma_map_bookkeeping() {
    let fake = e1000e_like();
    let mut b = open(&fake, AccessMode::FileIo);
    let rw = dma_flags::READ | dma_flags::WRITE;
    let m1 = Arc::new(MappedMemory::anonymous(0x4000).unwrap());
    let m2 = Arc::new(MappedMemory::anonymous(0x1000).unwrap());
    b.dma_map(dma(0x1000_0000, 0x4000, rw, &m1)).unwrap();
    b.dma_map(dma(0x1000_4000, 0x1000, dma_flags::READ, &m2))
        .unwrap();
    assert_eq!(
        fake.take_calls(),
        vec![
            Call::DmaMap {
                iova: 0x1000_0000,
                size: 0x4000,
                vaddr: m1.as_ptr() as u64,
                flags: rw
            },
            Call::DmaMap {
                iova: 0x1000_4000,
                size: 0x1000,
                vaddr: m2.as_ptr() as u64,
                flags: 1
            },
        ]
    );
    assert_eq!(
        Arc::strong_count(&m1),
        2,
        "the backend keeps mapped memory alive"
    );
    // refused before the kernel: overlap, misalignment, too long, no memory, bad flags
    assert!(matches!(
        b.dma_map(dma(0x1000_3000, 0x1000, rw, &m2)),
        Err(DeviceError::Invalid(_))
    ));
    assert!(matches!(
        b.dma_map(dma(0x2000_0800, 0x1000, rw, &m2)),
        Err(DeviceError::Invalid(_))
    ));
    assert!(matches!(
        b.dma_map(dma(0x2000_0000, 0x2000, rw, &m2)),
        Err(DeviceError::Invalid(_))
    ));
    assert!(matches!(
        b.dma_map(dma(0x2000_0000, 0x1000, 0, &m2)),
        Err(DeviceError::Invalid(_))
    ));
    assert!(matches!(
        b.dma_map(dma(0x2000_0000, 0x1000, 4 | 1, &m2)),
        Err(DeviceError::Invalid(_))
    ));
    assert!(matches!(
        b.dma_map(dma(u64::MAX - 0xfff, 0x1000, rw, &m2)),
        Err(DeviceError::Invalid(_))
    ));
    let no_memory = DmaRegion {
        mapping: DmaMapping {
            iova: 0x3000_0000,
            len: 0x1000,
            flags: rw,
        },
        memory: None,
    };
    assert!(matches!(
        b.dma_map(no_memory),
        Err(DeviceError::Unsupported(_))
    ));
    assert_eq!(fake.take_calls(), vec![]);
    assert_eq!(
        b.dma_mappings(),
        vec![
            DmaMapping {
                iova: 0x1000_0000,
                len: 0x4000,
                flags: rw
            },
            DmaMapping {
                iova: 0x1000_4000,
                len: 0x1000,
                flags: 1
            },
        ]
    );

    // unmap: splitting is refused, an empty range is an error, a covering range unmaps each
    let unmap = |iova, len, flags| DmaMapping { iova, len, flags };
    assert!(matches!(
        b.dma_unmap(unmap(0x1000_0000, 0x1000, 0)),
        Err(DeviceError::Invalid(_))
    ));
    assert!(matches!(
        b.dma_unmap(unmap(0x5000_0000, 0x1000, 0)),
        Err(DeviceError::Invalid(_))
    ));
    assert!(matches!(
        b.dma_unmap(unmap(u64::MAX, 2, 0)),
        Err(DeviceError::Invalid(_))
    ));
    assert_eq!(fake.take_calls(), vec![]);
    b.dma_unmap(unmap(0x0, 0x1000_5000, 0)).unwrap();
    assert_eq!(
        fake.take_calls(),
        vec![
            Call::DmaUnmap(0x1000_0000, 0x4000),
            Call::DmaUnmap(0x1000_4000, 0x1000)
        ]
    );
    assert!(b.dma_mappings().is_empty());
    assert_eq!(Arc::strong_count(&m1), 1, "unmapped memory is released");
}

#[test]
fn unmap_all_and_failed_unmaps_keep_the_memory() {
    let fake = e1000e_like();
    let mut b = open(&fake, AccessMode::FileIo);
    let rw = dma_flags::READ | dma_flags::WRITE;
    let m = Arc::new(MappedMemory::anonymous(0x1000).unwrap());
    let m2 = Arc::new(MappedMemory::anonymous(0x1000).unwrap());
    b.dma_map(dma(0x8000, 0x1000, rw, &m)).unwrap();
    b.dma_map(dma(0x10000, 0x1000, rw, &m2)).unwrap();
    fake.take_calls();
    fake.state().fail_unmap = Some(libc::EBUSY);
    let all = DmaMapping {
        iova: 0,
        len: 0,
        flags: dma_flags::UNMAP_ALL,
    };
    assert_eq!(b.dma_unmap(all).unwrap_err().errno(), libc::EBUSY);
    assert_eq!(b.dma_mappings().len(), 2, "failed unmaps stay tracked");
    assert_eq!(Arc::strong_count(&m), 2);
    fake.state().fail_unmap = None;
    fake.take_calls();
    b.dma_unmap(all).unwrap();
    assert_eq!(
        fake.take_calls(),
        vec![
            Call::DmaUnmap(0x8000, 0x1000),
            Call::DmaUnmap(0x10000, 0x1000)
        ]
    );
    assert!(b.dma_mappings().is_empty());
    assert_eq!(Arc::strong_count(&m), 1);
    // dropping the backend unmaps what is left
    b.dma_map(dma(0x8000, 0x1000, rw, &m)).unwrap();
    fake.take_calls();
    drop(b);
    assert_eq!(fake.take_calls(), vec![Call::DmaUnmap(0x8000, 0x1000)]);
    assert_eq!(Arc::strong_count(&m), 1);
}

#[test]
fn iommu_info_is_decoded_and_sets_the_dma_alignment() {
    let fake = e1000e_like();
    let b = open(&fake, AccessMode::FileIo);
    let info = b.iommu_info().unwrap();
    assert_eq!(info.dma_avail, Some(65535));
    assert_eq!(info.iova_ranges.len(), 2);
    // The kernel raises argsz when the caps do not fit: the backend asks again with more room.
    let mut answer = iommu::tests::vtdbox_answer();
    answer.resize(600, 0);
    answer[0..4].copy_from_slice(&600u32.to_ne_bytes());
    fake.state().iommu_answer = answer;
    fake.take_calls();
    assert_eq!(b.iommu_info().unwrap().dma_avail, Some(65535));
    assert_eq!(
        fake.take_calls(),
        vec![Call::IommuInfo(256), Call::IommuInfo(600)]
    );
    // A 2 MiB-only IOMMU makes 4 KiB mappings invalid.
    let mut answer = iommu::tests::vtdbox_answer();
    answer[8..16].copy_from_slice(&0x20_0000u64.to_ne_bytes());
    fake.state().iommu_answer = answer;
    let mut b = VfioBackend::with_sys(fake.clone(), None, AccessMode::FileIo, false).unwrap();
    let m = Arc::new(MappedMemory::anonymous(0x1000).unwrap());
    assert!(matches!(
        b.dma_map(dma(0x20_0000, 0x1000, 3, &m)),
        Err(DeviceError::Invalid(_))
    ));
    // No GET_INFO at all (ENOTTY): open still works.
    fake.state().iommu_answer.clear();
    let b = VfioBackend::with_sys(fake.clone(), None, AccessMode::FileIo, false).unwrap();
    assert!(matches!(
        b.iommu_info(),
        Err(VfioBackendError::IommuInfo(_))
    ));
}

/// The iommufd path reports its limits through `decoded_iommu_info` (IOAS ranges and IOVA
/// alignment): the backend takes them instead of asking for a type1 answer, and the alignment
/// governs DMA mappings as the type1 page sizes do.
#[test]
fn an_ioas_answer_replaces_the_type1_info() {
    let fake = e1000e_like();
    fake.state().ioas_answer = Some(Ok(IommuInfo::from_ioas(
        0x1_0000,
        vec![(0, 0xfedf_ffff), (0xfef0_0000, 0x7f_ffff_ffff)],
    )));
    fake.take_calls();
    let mut b = VfioBackend::with_sys(fake.clone(), None, AccessMode::FileIo, false).unwrap();
    let info = b.iommu_info().unwrap();
    assert_eq!(info.iova_pgsizes, Some(0x1_0000));
    assert_eq!(info.dma_avail, None);
    assert!(!info.iova_usable(0xfee0_0000, 0x1000), "the MSI window");
    assert!(info.iova_usable(0x1000_0000, 0x1_0000));
    assert!(
        !fake
            .take_calls()
            .iter()
            .any(|c| matches!(c, Call::IommuInfo(_))),
        "VFIO_IOMMU_GET_INFO is never asked on iommufd"
    );
    // 64 KiB alignment: a 4 KiB mapping is refused before the kernel sees it; with the 4 KiB
    // alignment of the VT-d box's IOAS it reaches the seam.
    let m = Arc::new(MappedMemory::anonymous(0x1000).unwrap());
    assert!(matches!(
        b.dma_map(dma(0x1000_0000, 0x1000, 3, &m)),
        Err(DeviceError::Invalid(_))
    ));
    assert!(!fake
        .take_calls()
        .iter()
        .any(|c| matches!(c, Call::DmaMap { .. })));
    fake.state().ioas_answer = Some(Ok(IommuInfo::from_ioas(0x1000, vec![])));
    let mut b = VfioBackend::with_sys(fake.clone(), None, AccessMode::FileIo, false).unwrap();
    b.dma_map(dma(0x1000_0000, 0x1000, 3, &m)).unwrap();
    // An IOAS query that fails is reported, not replaced by a type1 answer.
    fake.state().ioas_answer = Some(Err(libc::ENOTTY));
    assert!(matches!(
        b.iommu_info(),
        Err(VfioBackendError::IommuInfo(_))
    ));
}

#[test]
fn reset_follows_the_device_flag() {
    let fake = e1000e_like();
    let mut b = open(&fake, AccessMode::FileIo);
    b.reset().unwrap();
    assert_eq!(fake.take_calls(), vec![Call::Reset]);
    let mut fake = e1000e_like();
    fake.facts.flags = 2;
    let mut b = open(&fake, AccessMode::FileIo);
    assert!(matches!(b.reset(), Err(DeviceError::Unsupported(_))));
    assert_eq!(fake.take_calls(), vec![]);
}

#[test]
fn mmap_mode_serves_aligned_accesses_from_the_mapping() {
    let fake = e1000e_like();
    let mut b = VfioBackend::with_sys(fake.clone(), None, AccessMode::Mmap, false).unwrap();
    let calls = fake.take_calls();
    let mmaps: Vec<&Call> = calls
        .iter()
        .filter(|c| matches!(c, Call::Mmap(..)))
        .collect();
    assert_eq!(
        mmaps,
        vec![
            &Call::Mmap(0, 0x2_0000),
            &Call::Mmap((3 << SHIFT) + 0x3000, 0x1000)
        ],
        "BAR0 whole; BAR3 only its sparse area; BAR2 (no MMAP flag) not at all"
    );
    assert_eq!(
        b.mmapped_areas(),
        vec![(0, vec![(0, 0x2_0000)]), (3, vec![(0x3000, 0x1000)])]
    );
    assert_eq!(r32(&mut b, 0, 8).unwrap(), 0x0008_0283);
    b.region_write(0, 0x100, &0xdead_beefu32.to_le_bytes())
        .unwrap();
    assert_eq!(r32(&mut b, 0, 0x100).unwrap(), 0xdead_beef);
    let mut q = [0u8; 8];
    b.region_read(3, 0x3008, &mut q).unwrap();
    assert_eq!(
        fake.take_calls(),
        vec![],
        "aligned accesses in mapped areas make no syscall"
    );
    // unaligned, odd-sized and unmapped-area accesses fall back to the file
    let mut three = [0u8; 3];
    b.region_read(0, 8, &mut three).unwrap();
    assert_eq!(three, [0x83, 0x02, 0x08]);
    // (the fake's file does not see writes made through its mapping: this read shows the path)
    assert_eq!(r32(&mut b, 0, 0x102).unwrap(), 0);
    b.region_read(3, 0x10, &mut q).unwrap();
    let calls = fake.take_calls();
    assert_eq!(calls[0], Call::Pread(8, 3));
    assert_eq!(calls[1], Call::Pread(0x102, 4));
    assert!(calls.contains(&Call::Pread((3 << SHIFT) + 0x10, 8)));
    // and bounds still apply before the mapping is tried
    assert!(matches!(
        b.region_read(0, 0x2_0000, &mut q),
        Err(DeviceError::OutOfRange { .. })
    ));
}

#[test]
fn failed_mmaps_fall_back_to_file_io() {
    let fake = e1000e_like();
    fake.state().fail.insert(0, libc::EINVAL);
    let mut b = VfioBackend::with_sys(fake.clone(), None, AccessMode::Mmap, false).unwrap();
    assert_eq!(b.mmap_errors().len(), 1);
    fake.take_calls();
    assert_eq!(r32(&mut b, 0, 8).unwrap(), 0x0008_0283);
    assert_eq!(fake.take_calls(), vec![Call::Pread(8, 4)]);
}

#[test]
fn open_needs_a_readable_config_region() {
    let mut fake = e1000e_like();
    fake.facts.regions.retain(|r| r.index != 7);
    assert!(matches!(
        VfioBackend::with_sys(fake, None, AccessMode::FileIo, false),
        Err(VfioBackendError::NoConfigRegion)
    ));
    let fake = e1000e_like();
    fake.state().fail.insert(7 << SHIFT, libc::EIO);
    assert!(matches!(
        VfioBackend::with_sys(fake, None, AccessMode::FileIo, false),
        Err(VfioBackendError::Config(_))
    ));
}

#[test]
fn bdfs_are_normalised_and_checked() {
    assert_eq!(normalize_bdf("00:02.0").unwrap(), "0000:00:02.0");
    assert_eq!(normalize_bdf("0000:00:1F.3").unwrap(), "0000:00:1f.3");
    for bad in [
        "",
        "00:02",
        "0000:00:02.8",
        "0000:00:20.0",
        "../../x:00.0",
        "0000:0:02.0",
        "a:b:c:d.0",
        "0000:00:02.0/",
    ] {
        assert!(normalize_bdf(bad).is_err(), "{bad:?}");
    }
    assert_eq!(
        VfioBackend::sysfs_path(Path::new("/tmp/fake-sys"), "00:02.0").unwrap(),
        PathBuf::from("/tmp/fake-sys/bus/pci/devices/0000:00:02.0")
    );
}
