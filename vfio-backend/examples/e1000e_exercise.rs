//! Drives QEMU's emulated e1000e (82574L, 8086:10d3) like a tiny user-space driver, through
//! [`VfioBackend`] and any [`Device`] wrapped around it.
//!
//! Runs inside the VT-d box (`tests/vm/vtdbox-record.sh`): the NIC is bound to vfio-pci and the
//! program does what a driver does at probe and for one ARP exchange — VFIO reset, MAC from
//! RAL/RAH, link status, a TX and an RX ring in DMA memory mapped with `VFIO_IOMMU_MAP_DMA`, one
//! ARP who-has 10.0.2.2 sent (the device DMA-reads it) and slirp's reply received (the device
//! DMA-writes it), MSI-X and INTx interrupts through eventfds. It prints one `OBS key=value` line
//! per observation (what a replay must reproduce) and one `CHECK name OK|FAIL` line per
//! expectation; the exit code is 0 iff every check passed.
//!
//! A device writes received frames straight into memory: no call of the device interface carries
//! them, so a tap cannot log them as it logs accesses. [`DmaWatch`] shows what a recorder's watch
//! set needs to do it: shadow copies of the pages the driver handed to the device (named by the
//! ring base registers and by the buffer pointers in the descriptors), diffed at the points where
//! the driver looks (after an interrupt, before reading a descriptor). Its findings are printed as
//! `WATCH` lines.
//!
//! With `--trace PATH` the backend is wrapped in
//! `hwrr_recorder::Tap` and every call lands in a trace file; the recorder's relay stands between
//! the device's eventfds and the exercise's. `--log-watch` also logs the watch's findings into that
//! trace as `dma_write` events (with before bytes); the header's `dma_write_source` label says they
//! come from this exercise's watch, not from the recorder.
//!
//! With `--vfio-user SOCKET` the exercise is a vfio-user client (`RemoteDevice`) of a server such
//! as `hwrr record --vfio BDF --listen SOCKET`: the same driver steps reach the NIC through the
//! socket, the recorder's tap and this backend, and DMA memory is a memfd the server maps.
//!
//! For a replay (`hwrr replay TRACE --listen SOCKET`, `tests/vm/host-replay.sh`), `--iova BASE`
//! maps the DMA memory (rings and buffers, zeroed) at another IOVA than the capture's, so the
//! received frame can only come from the replay's DMA writes, relocated; `--change-write` writes
//! one register with another value than the capture did (a `CHANGED` line names it), which
//! `hwrr replay --check` must report. IOVAs are printed as offsets from the base, so the `OBS` and
//! `WATCH` lines of runs at different IOVAs compare as text.
//!
//! With `--iommufd` the device is opened through its VFIO cdev and an iommufd IOAS instead of a
//! container and its group (`tests/vm/vtdbox-iommufd.sh`; needs the crate's `iommufd` feature and a
//! kernel with `CONFIG_VFIO_DEVICE_CDEV`); every step and check is the same.
//!
//! Usage: `e1000e_exercise [--bdf BDF] [--sysfs-root DIR] [--iommufd] [--mmap]
//! [--trace PATH [--log-watch]] [--bench N] [--iova BASE] [--change-write]` or
//! `e1000e_exercise --vfio-user SOCKET [--iova BASE] [--change-write]`
//! (BDF defaults to `$VTDBOX_BDF`, then `0000:00:02.0`).

use std::os::fd::{AsRawFd, OwnedFd};
use std::sync::Arc;
use std::time::{Duration, Instant};

use hwrr_device::{
    dma_flags, eventfd, Device, DmaMapping, DmaRegion, IrqAction, IrqData, IrqSetRequest, IrqSetup,
    MappedMemory,
};
use hwrr_formats::header::region_index::BAR0;
use hwrr_formats::irq_index;
use hwrr_vfio_backend::{AccessMode, IommuApi, OpenOptions, VfioBackend};

// e1000e registers (BAR0 offsets) and bits, from the 82574 datasheet.
const CTRL: u64 = 0x0000;
const STATUS: u64 = 0x0008;
const ICR: u64 = 0x00c0;
const ICS: u64 = 0x00c8;
const IMS: u64 = 0x00d0;
const IMC: u64 = 0x00d8;
const IVAR: u64 = 0x00e4;
const RCTL: u64 = 0x0100;
const TCTL: u64 = 0x0400;
const RDBAL: u64 = 0x2800;
const RDBAH: u64 = 0x2804;
const RDLEN: u64 = 0x2808;
const RDH: u64 = 0x2810;
const RDT: u64 = 0x2818;
const TDBAL: u64 = 0x3800;
const TDBAH: u64 = 0x3804;
const TDLEN: u64 = 0x3808;
const TDH: u64 = 0x3810;
const TDT: u64 = 0x3818;
const RAL0: u64 = 0x5400;
const RAH0: u64 = 0x5404;

const CTRL_ASDE: u32 = 1 << 5;
const CTRL_SLU: u32 = 1 << 6;
const CTRL_RST: u32 = 1 << 26;
const STATUS_LU: u32 = 1 << 1;
const ICR_TXDW: u32 = 1 << 0;
const ICR_LSC: u32 = 1 << 2;
const ICR_RXT0: u32 = 1 << 7;
const ICR_RXQ0: u32 = 1 << 20;
const ICR_TXQ0: u32 = 1 << 22;
const ICR_OTHER: u32 = 1 << 24;
/// IVAR: RxQ0, TxQ0 and Other causes all to MSI-X vector 0 (bit 3 of each field: valid).
const IVAR_ALL_TO_VECTOR0: u32 = 0x8 | (0x8 << 8) | (0x8 << 16);
const RCTL_EN: u32 = 1 << 1;
const RCTL_BAM: u32 = 1 << 15;
const RCTL_SECRC: u32 = 1 << 26;
const TCTL_EN: u32 = 1 << 1;
const TCTL_PSP: u32 = 1 << 3;
const TXD_CMD_EOP: u8 = 1 << 0;
const TXD_CMD_IFCS: u8 = 1 << 1;
const TXD_CMD_RS: u8 = 1 << 3;
const DESC_DD: u8 = 1 << 0;
const PCI_COMMAND: u32 = 0x04;
const PCI_COMMAND_MEMORY_BUSMASTER: u16 = 0x0006;

// DMA layout: offsets inside one buffer, mapped at IOVA_BASE unless `--iova` says otherwise.
const IOVA_BASE: u64 = 0x1000_0000;
const DMA_SIZE: usize = 64 * 1024;
const TX_RING: u64 = 0x0000;
const RX_RING: u64 = 0x1000;
const TX_BUF: u64 = 0x2000;
const RX_BUFS: u64 = 0x4000;
const RX_BUF_SIZE: u64 = 2048;
const NDESC: u32 = 8;
/// x86's MSI address window: never usable as an IOVA.
const MSI_WINDOW_IOVA: u64 = 0xfee0_0000;

type BoxError = Box<dyn std::error::Error>;

/// Register access on BAR0 of any [`Device`].
struct Nic<'a, D: Device> {
    dev: &'a mut D,
}

impl<D: Device> Nic<'_, D> {
    fn r32(&mut self, reg: u64) -> hwrr_device::Result<u32> {
        let mut b = [0u8; 4];
        self.dev.region_read(BAR0, reg, &mut b)?;
        Ok(u32::from_le_bytes(b))
    }

    fn w32(&mut self, reg: u64, v: u32) -> hwrr_device::Result<()> {
        self.dev.region_write(BAR0, reg, &v.to_le_bytes())
    }

    fn command_enable(&mut self) -> hwrr_device::Result<u16> {
        let mut c = [0u8; 2];
        self.dev.config_read(PCI_COMMAND, &mut c)?;
        let v = u16::from_le_bytes(c) | PCI_COMMAND_MEMORY_BUSMASTER;
        self.dev.config_write(PCI_COMMAND, &v.to_le_bytes())?;
        Ok(v)
    }

    fn set_irqs(
        &mut self,
        index: u32,
        count: u32,
        action: IrqAction,
        fd: Option<OwnedFd>,
    ) -> hwrr_device::Result<()> {
        let (data, fds) = match fd {
            Some(fd) => (IrqData::Eventfd(vec![true]), vec![Some(fd)]),
            None => (IrqData::None, vec![]),
        };
        self.dev.set_irqs(IrqSetRequest {
            setup: IrqSetup {
                index,
                start: 0,
                count,
                action,
                data,
            },
            fds,
        })
    }
}

/// A minimal watch set over DMA memory the device may write: shadow copies of named IOVA ranges,
/// diffed on demand. This is the hook a recorder needs to turn "the device wrote guest memory"
/// into `dma_write` events with before-and-after bytes.
struct DmaWatch {
    memory: Arc<MappedMemory>,
    /// The IOVA the memory is mapped at.
    base: u64,
    /// (IOVA, shadow copy)
    ranges: Vec<(u64, Vec<u8>)>,
}

/// Equal bytes that may sit inside one changed run before it is split in two.
const MERGE_GAP: usize = 16;

/// One run of changed bytes found by [`DmaWatch::diff`].
struct WatchedWrite {
    iova: u64,
    before: Vec<u8>,
    after: Vec<u8>,
}

impl DmaWatch {
    fn new(memory: Arc<MappedMemory>, base: u64) -> Self {
        DmaWatch {
            memory,
            base,
            ranges: Vec::new(),
        }
    }

    /// Starts watching `len` bytes at `iova` (inside the one mapping at `base`).
    fn watch(&mut self, iova: u64, len: usize) -> hwrr_device::Result<()> {
        let mut shadow = vec![0u8; len];
        self.memory.read(iova - self.base, &mut shadow)?;
        self.ranges.push((iova, shadow));
        Ok(())
    }

    /// Compares the memory with the shadows, returns each changed run of bytes and updates the
    /// shadows.
    fn diff(&mut self) -> hwrr_device::Result<Vec<WatchedWrite>> {
        let mut found = Vec::new();
        for (iova, shadow) in &mut self.ranges {
            let mut now = vec![0u8; shadow.len()];
            self.memory.read(*iova - self.base, &mut now)?;
            let mut i = 0;
            while i < now.len() {
                if now[i] == shadow[i] {
                    i += 1;
                    continue;
                }
                // A run ends after MERGE_GAP equal bytes: a frame holds bytes that happen to
                // equal what was there before (zeros), and one write should stay one event.
                let start = i;
                let mut end = i;
                while i < now.len() && i - end <= MERGE_GAP {
                    if now[i] != shadow[i] {
                        end = i + 1;
                    }
                    i += 1;
                }
                found.push(WatchedWrite {
                    iova: *iova + start as u64,
                    before: shadow[start..end].to_vec(),
                    after: now[start..end].to_vec(),
                });
                i = end;
            }
            *shadow = now;
        }
        Ok(found)
    }
}

/// DMA memory backed by a memfd, so that a vfio-user server can map it too (`DMA_MAP` with the fd);
/// the kernel backend maps the same pages into the IOMMU.
fn shared_memory(len: usize) -> std::io::Result<MappedMemory> {
    // SAFETY: a fresh memfd; the name is a NUL-terminated literal; the result is checked.
    let fd = unsafe { libc::memfd_create(c"hwrr-dma".as_ptr(), libc::MFD_CLOEXEC) };
    if fd < 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: `fd` is a fresh descriptor that nothing else owns.
    let fd = unsafe { <OwnedFd as std::os::fd::FromRawFd>::from_raw_fd(fd) };
    let size =
        libc::off_t::try_from(len).map_err(|_| std::io::Error::from_raw_os_error(libc::EINVAL))?;
    // SAFETY: ftruncate on a descriptor we own.
    if unsafe { libc::ftruncate(fd.as_raw_fd(), size) } < 0 {
        return Err(std::io::Error::last_os_error());
    }
    MappedMemory::map_fd(fd, 0, len, true)
}

/// Collects `CHECK` results.
#[derive(Default)]
struct Checks {
    failed: Vec<String>,
    passed: usize,
}

impl Checks {
    fn check(&mut self, name: &str, ok: bool, detail: impl std::fmt::Display) {
        println!("CHECK {name} {} {detail}", if ok { "OK" } else { "FAIL" });
        if ok {
            self.passed += 1;
        } else {
            self.failed.push(name.to_string());
        }
    }
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

/// Waits up to `timeout` for `fd` to be signalled; returns the counter (0 on timeout).
fn wait_eventfd(fd: &OwnedFd, timeout: Duration) -> std::io::Result<u64> {
    let mut pfd = libc::pollfd {
        fd: fd.as_raw_fd(),
        events: libc::POLLIN,
        revents: 0,
    };
    let ms = i32::try_from(timeout.as_millis()).unwrap_or(i32::MAX);
    // SAFETY: one live pollfd, count 1.
    let r = unsafe { libc::poll(&mut pfd, 1, ms) };
    if r < 0 {
        return Err(std::io::Error::last_os_error());
    }
    eventfd::drain(fd)
}

fn poll_until(timeout: Duration, mut done: impl FnMut() -> bool) -> Option<Duration> {
    let t0 = Instant::now();
    while t0.elapsed() < timeout {
        if done() {
            return Some(t0.elapsed());
        }
        std::thread::sleep(Duration::from_millis(1));
    }
    None
}

/// The exercise's DMA memory and the IOVA it is mapped at.
struct Dma {
    memory: Arc<MappedMemory>,
    base: u64,
}

impl Dma {
    fn read_u8(&self, iova: u64) -> u8 {
        let mut b = [0u8; 1];
        // Reads inside the fixed layout cannot fail; 0 ("not done") is the safe answer if one did.
        self.memory
            .read(iova.wrapping_sub(self.base), &mut b)
            .map_or(0, |_| b[0])
    }

    fn read_u16(&self, iova: u64) -> u16 {
        let mut b = [0u8; 2];
        self.memory
            .read(iova.wrapping_sub(self.base), &mut b)
            .map_or(0, |_| u16::from_le_bytes(b))
    }

    fn put(&self, iova: u64, data: &[u8]) -> hwrr_device::Result<()> {
        self.memory.write(iova.wrapping_sub(self.base), data)
    }
}

/// An ARP who-has 10.0.2.2 from `mac` (10.0.2.15), padded to the 60-byte minimum.
fn arp_request(mac: [u8; 6]) -> Vec<u8> {
    let mut p = vec![0u8; 60];
    p[0..6].copy_from_slice(&[0xff; 6]);
    p[6..12].copy_from_slice(&mac);
    p[12..14].copy_from_slice(&[0x08, 0x06]);
    p[14..22].copy_from_slice(&[0x00, 0x01, 0x08, 0x00, 6, 4, 0x00, 0x01]);
    p[22..28].copy_from_slice(&mac);
    p[28..32].copy_from_slice(&[10, 0, 2, 15]);
    p[38..42].copy_from_slice(&[10, 0, 2, 2]);
    p
}

/// What may differ between runs of the exercise.
#[derive(Clone, Copy)]
struct Variant {
    /// The IOVA of the DMA memory (rings and buffers).
    iova_base: u64,
    /// Write one register with another value than the capture did (the negative replay test).
    change_write: bool,
}

impl Default for Variant {
    fn default() -> Self {
        Variant {
            iova_base: IOVA_BASE,
            change_write: false,
        }
    }
}

/// The register write `--change-write` alters: the first IMC after the MAC reset. IMS is 0 after a
/// reset, so clearing one mask bit fewer changes nothing on the device; only the access differs.
const CHANGED_WRITE: (&str, u64, u32, u32) = ("IMC", IMC, 0xffff_ffff, 0xffff_fffe);

/// The whole exercise on any device (the bare backend, or a recorder's tap around it).
/// `on_watched` sees each change the watch finds as soon as it is found, before the driver's next
/// access, so a trace holds it where a device's write would be.
fn exercise<D: Device>(
    dev: &mut D,
    checks: &mut Checks,
    variant: Variant,
    on_watched: &mut dyn FnMut(&WatchedWrite),
) -> Result<(), BoxError> {
    let base = variant.iova_base;
    let d = dev.describe();
    println!(
        "OBS identity={:04x}:{:04x} subsys={:04x}:{:04x} class={:06x} rev={}",
        d.identity.vendor_id,
        d.identity.device_id,
        d.identity.subsystem_vendor_id,
        d.identity.subsystem_id,
        d.identity.class_code,
        d.identity.revision
    );
    for r in &d.regions {
        println!(
            "REGION {} {} size={:#x} flags={:#x}",
            r.index,
            r.kind.name(),
            r.size,
            r.flags
        );
    }
    for i in &d.irqs {
        println!(
            "IRQINFO index={} count={} flags={:#x}",
            i.index, i.count, i.flags
        );
    }
    let rom_len = d.rom.as_ref().map_or(0, Vec::len);
    let rom_sig = d.rom.as_ref().is_some_and(|r| r.starts_with(&[0x55, 0xaa]));
    checks.check(
        "rom_captured",
        rom_len > 0 && rom_sig,
        format!("len={rom_len:#x} 55aa={rom_sig}"),
    );
    checks.check(
        "identity",
        (d.identity.vendor_id, d.identity.device_id) == (0x8086, 0x10d3),
        format!("{:04x}:{:04x}", d.identity.vendor_id, d.identity.device_id),
    );

    let mut nic = Nic { dev };
    let cmd = nic.command_enable()?;
    println!("OBS pci_command={cmd:#06x}");

    // Reset: the function (VFIO_DEVICE_RESET), then the MAC (CTRL.RST), as e1000e_reset_hw does.
    let vfio_reset = nic.dev.reset();
    checks.check("vfio_reset", vfio_reset.is_ok(), format!("{vfio_reset:?}"));
    nic.command_enable()?; // a function reset clears COMMAND
    let (name, reg, recorded, changed) = CHANGED_WRITE;
    if variant.change_write {
        println!(
            "CHANGED write {name} offset={reg:#x} value={changed:#x} instead of {recorded:#x}"
        );
        nic.w32(reg, changed)?;
    } else {
        nic.w32(reg, recorded)?;
    }
    let ctrl = nic.r32(CTRL)?;
    nic.w32(CTRL, ctrl | CTRL_RST)?;
    std::thread::sleep(Duration::from_millis(20));
    nic.w32(IMC, 0xffff_ffff)?;
    let icr = nic.r32(ICR)?;
    println!("OBS icr_after_reset={icr:#010x}");
    let ctrl = nic.r32(CTRL)?;
    nic.w32(CTRL, ctrl | CTRL_SLU | CTRL_ASDE)?;

    let mut status = 0;
    let link = poll_until(Duration::from_secs(2), || {
        status = nic.r32(STATUS).unwrap_or(0);
        status & STATUS_LU != 0
    });
    println!("OBS status={status:#010x}");
    checks.check("link_up", link.is_some(), format!("STATUS={status:#010x}"));

    let ral = nic.r32(RAL0)?;
    let rah = nic.r32(RAH0)?;
    let mac = {
        let (l, h) = (ral.to_le_bytes(), rah.to_le_bytes());
        [l[0], l[1], l[2], l[3], h[0], h[1]]
    };
    let mac_s = mac
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect::<Vec<_>>()
        .join(":");
    println!("OBS mac={mac_s} ral={ral:#010x} rah={rah:#010x}");
    checks.check("mac_valid", rah & 0x8000_0000 != 0, format!("mac={mac_s}"));

    // DMA memory, mapped into the IOMMU. A fresh memfd reads as zeros; the RX ring and buffers are
    // zeroed again on purpose: a replay must fill them through its DMA writes, never find them
    // filled.
    let memory = Arc::new(shared_memory(DMA_SIZE)?);
    let dma = Dma {
        memory: memory.clone(),
        base,
    };
    dma.put(
        base + RX_RING,
        &vec![0u8; (RX_BUFS + u64::from(NDESC) * RX_BUF_SIZE - RX_RING) as usize],
    )?;
    let rw = dma_flags::READ | dma_flags::WRITE;
    nic.dev.dma_map(DmaRegion {
        mapping: DmaMapping {
            iova: base,
            len: DMA_SIZE as u64,
            flags: rw,
        },
        memory: Some(memory.clone()),
    })?;
    // The IOVA is not an observation: a replay may (and the host replay test does) move it.
    println!("DMA map iova={base:#x} len={DMA_SIZE:#x}");

    // The kernel refuses a mapping over the interrupt window (0xfee00000, outside the IOMMU's
    // usable IOVA ranges): the error must come back to the caller, with its errno.
    let page = Arc::new(shared_memory(4096)?);
    let refused = nic.dev.dma_map(DmaRegion {
        mapping: DmaMapping {
            iova: MSI_WINDOW_IOVA,
            len: 4096,
            flags: rw,
        },
        memory: Some(page),
    });
    checks.check(
        "dma_map_into_msi_window_refused",
        refused.is_err(),
        format!(
            "{:?}",
            refused.as_ref().map_err(|e| (e.errno(), e.to_string()))
        ),
    );

    // MSI-X vector 0 on an eventfd; the device routes RX, TX and "other" causes to it.
    let msix = eventfd::create()?;
    nic.set_irqs(
        irq_index::MSIX,
        1,
        IrqAction::Trigger,
        Some(msix.try_clone()?),
    )?;
    nic.w32(IVAR, IVAR_ALL_TO_VECTOR0)?;

    // RX ring: NDESC descriptors, each with a 2 KiB buffer.
    for i in 0..u64::from(NDESC) {
        let desc = RX_RING + i * 16;
        dma.put(
            base + desc,
            &(base + RX_BUFS + i * RX_BUF_SIZE).to_le_bytes(),
        )?;
        dma.put(base + desc + 8, &[0u8; 8])?;
    }
    let rx_ring = base + RX_RING;
    nic.w32(RDBAL, rx_ring as u32)?;
    nic.w32(RDBAH, (rx_ring >> 32) as u32)?;
    nic.w32(RDLEN, NDESC * 16)?;
    nic.w32(RDH, 0)?;
    nic.w32(RDT, NDESC - 1)?;
    nic.w32(RCTL, RCTL_EN | RCTL_BAM | RCTL_SECRC)?;

    // TX: one ARP request in descriptor 0.
    let frame = arp_request(mac);
    dma.put(base + TX_BUF, &frame)?;
    let tx0 = base + TX_RING;
    dma.put(tx0, &(base + TX_BUF).to_le_bytes())?;
    dma.put(tx0 + 8, &(frame.len() as u16).to_le_bytes())?;
    dma.put(
        tx0 + 10,
        &[0, TXD_CMD_EOP | TXD_CMD_IFCS | TXD_CMD_RS, 0, 0, 0, 0],
    )?;

    // What a watch set would follow: the rings (named by RDBAL/RDBAH and TDBAL/TDBAH) and the RX
    // buffers the descriptors point at, from here on written by the device only.
    let mut watch = DmaWatch::new(memory.clone(), base);
    watch.watch(tx0, (NDESC * 16) as usize)?;
    watch.watch(rx_ring, (NDESC * 16) as usize)?;
    watch.watch(base + RX_BUFS, (u64::from(NDESC) * RX_BUF_SIZE) as usize)?;
    let mut writes = Vec::new();
    // Diffs at a point where the driver has just looked at memory and before its next access.
    let mut diff_here = |writes: &mut Vec<WatchedWrite>| -> hwrr_device::Result<()> {
        for w in watch.diff()? {
            on_watched(&w);
            writes.push(w);
        }
        Ok(())
    };

    nic.w32(TDBAL, tx0 as u32)?;
    nic.w32(TDBAH, (tx0 >> 32) as u32)?;
    nic.w32(TDLEN, NDESC * 16)?;
    nic.w32(TDH, 0)?;
    nic.w32(TDT, 0)?;
    nic.w32(TCTL, TCTL_EN | TCTL_PSP | (0x0f << 4) | (0x3f << 12))?;
    nic.r32(ICR)?;
    nic.w32(
        IMS,
        ICR_TXDW | ICR_RXT0 | ICR_LSC | ICR_RXQ0 | ICR_TXQ0 | ICR_OTHER,
    )?;
    eventfd::drain(&msix)?;

    nic.w32(TDT, 1)?; // hand descriptor 0 to the device
    let tx_done = poll_until(Duration::from_secs(2), || {
        dma.read_u8(tx0 + 12) & DESC_DD != 0
    });
    // The TX write-back seen: the first watch point.
    diff_here(&mut writes)?;
    let tdh = nic.r32(TDH)?;
    println!("OBS tx_status={:#04x} tdh={tdh}", dma.read_u8(tx0 + 12));
    checks.check(
        "tx_writeback",
        tx_done.is_some(),
        format!("after {tx_done:?}"),
    );
    let n = wait_eventfd(&msix, Duration::from_secs(2))?;
    checks.check("msix_irq", n > 0, format!("eventfd count={n}"));
    // Interrupt delivery: the first point where a driver may look at what the device received.
    diff_here(&mut writes)?;

    // The driver's view after the interrupt.
    let rx0 = rx_ring;
    let rx_done = poll_until(Duration::from_secs(2), || {
        dma.read_u8(rx0 + 12) & DESC_DD != 0
    });
    // Before the driver reads the descriptor it polled: the last watch point.
    diff_here(&mut writes)?;
    let rx_len = dma.read_u16(rx0 + 8) as usize;
    let rx_status = dma.read_u8(rx0 + 12);
    let mut rx_frame = vec![0u8; rx_len.min(RX_BUF_SIZE as usize)];
    memory.read(RX_BUFS, &mut rx_frame)?;
    let rdh = nic.r32(RDH)?;
    println!("OBS rx_status={rx_status:#04x} rx_len={rx_len} rdh={rdh}");
    println!("OBS rx_frame={}", hex(&rx_frame));
    checks.check(
        "rx_writeback",
        rx_done.is_some(),
        format!("after {rx_done:?}"),
    );
    let is_reply = rx_frame.len() >= 42
        && rx_frame[12..14] == [0x08, 0x06]
        && rx_frame[20..22] == [0x00, 0x02]
        && rx_frame[28..32] == [10, 0, 2, 2]
        && rx_frame[32..38] == mac;
    checks.check(
        "rx_arp_reply",
        is_reply,
        "who-has 10.0.2.2 answered to our MAC",
    );

    for w in &writes {
        // Offsets from the DMA base, so that runs at different IOVAs compare.
        println!(
            "WATCH dma_write offset={:#x} len={} before={} after={}",
            w.iova - base,
            w.after.len(),
            hex(&w.before),
            hex(&w.after)
        );
    }
    let frame_seen = writes.iter().any(|w| {
        w.iova == base + RX_BUFS
            && w.after.len() >= 42
            && w.after[..42] == rx_frame[..42.min(rx_frame.len())]
    });
    checks.check(
        "watch_sees_rx_frame",
        frame_seen,
        format!("{} changed runs in the watched pages", writes.len()),
    );
    let n = wait_eventfd(&msix, Duration::from_millis(200))?;
    println!("OBS msix_after_rx={n} icr={:#010x}", nic.r32(ICR)?);

    // INTx: MSI-X off, INTx on an eventfd, a software cause (ICS), unmask after each one (INTx is
    // level-triggered, so VFIO masks it until the driver says it is handled).
    nic.w32(IMC, 0xffff_ffff)?;
    nic.set_irqs(irq_index::MSIX, 0, IrqAction::Trigger, None)?;
    let intx = eventfd::create()?;
    nic.set_irqs(
        irq_index::INTX,
        1,
        IrqAction::Trigger,
        Some(intx.try_clone()?),
    )?;
    nic.r32(ICR)?;
    nic.w32(IMS, ICR_TXDW)?;
    for round in 0..2 {
        eventfd::drain(&intx)?;
        nic.w32(ICS, ICR_TXDW)?;
        let n = wait_eventfd(&intx, Duration::from_secs(2))?;
        let icr = nic.r32(ICR)?; // reading ICR clears the cause and drops the line
        checks.check(
            &format!("intx_irq_{round}"),
            n > 0,
            format!("eventfd count={n} icr={icr:#010x}"),
        );
        nic.set_irqs(irq_index::INTX, 1, IrqAction::Unmask, None)?;
    }
    nic.w32(IMC, 0xffff_ffff)?;
    nic.set_irqs(irq_index::INTX, 0, IrqAction::Trigger, None)?;

    // Quiesce and unmap everything.
    nic.w32(TCTL, 0)?;
    nic.w32(RCTL, 0)?;
    nic.dev.dma_unmap(DmaMapping {
        iova: 0,
        len: 0,
        flags: dma_flags::UNMAP_ALL,
    })?;
    Ok(())
}

struct Args {
    bdf: String,
    sysfs_root: String,
    iommufd: bool,
    mmap: bool,
    trace: Option<std::path::PathBuf>,
    log_watch: bool,
    bench: u32,
    vfio_user: Option<std::path::PathBuf>,
    variant: Variant,
}

fn parse_args() -> Result<Args, BoxError> {
    let mut args = Args {
        bdf: std::env::var("VTDBOX_BDF").unwrap_or_else(|_| "0000:00:02.0".into()),
        sysfs_root: "/sys".into(),
        iommufd: false,
        mmap: false,
        trace: None,
        log_watch: false,
        bench: 0,
        vfio_user: None,
        variant: Variant::default(),
    };
    let mut it = std::env::args().skip(1);
    while let Some(a) = it.next() {
        match a.as_str() {
            "--bdf" => args.bdf = it.next().ok_or("--bdf needs a value")?,
            "--sysfs-root" => args.sysfs_root = it.next().ok_or("--sysfs-root needs a value")?,
            "--iommufd" => args.iommufd = true,
            "--mmap" => args.mmap = true,
            "--trace" => args.trace = Some(it.next().ok_or("--trace needs a value")?.into()),
            "--log-watch" => args.log_watch = true,
            "--vfio-user" => {
                args.vfio_user = Some(it.next().ok_or("--vfio-user needs a value")?.into())
            }
            "--bench" => args.bench = it.next().ok_or("--bench needs a value")?.parse()?,
            "--iova" => {
                let v = it.next().ok_or("--iova needs a value")?;
                let base = match v.strip_prefix("0x") {
                    Some(hex) => u64::from_str_radix(hex, 16)?,
                    None => v.parse()?,
                };
                // Page-aligned, and clear of the MSI window the exercise maps on purpose.
                let end = base.checked_add(DMA_SIZE as u64).ok_or("--iova too high")?;
                if base % 4096 != 0 || (base < MSI_WINDOW_IOVA + 4096 && end > MSI_WINDOW_IOVA) {
                    return Err(format!(
                        "--iova {base:#x}: not page-aligned or over the MSI window"
                    )
                    .into());
                }
                args.variant.iova_base = base;
            }
            "--change-write" => args.variant.change_write = true,
            other => return Err(format!("unknown argument {other:?}").into()),
        }
    }
    Ok(args)
}

fn main() {
    let t0 = Instant::now();
    let code = match run() {
        Ok(checks) => {
            println!(
                "e1000e_exercise: {} checks passed, {} failed ({}) in {:?}",
                checks.passed,
                checks.failed.len(),
                checks.failed.join(","),
                t0.elapsed()
            );
            i32::from(!checks.failed.is_empty())
        }
        Err(e) => {
            println!("e1000e_exercise: ERROR {e}");
            2
        }
    };
    std::process::exit(code);
}

/// Times `n` STATUS reads and `n` config-space reads on the bare backend (before any tap), for a
/// per-access cost of this BAR access mode next to the config path (always pread) in the same run.
fn bench(dev: &mut VfioBackend, n: u32) -> Result<(), BoxError> {
    let mut b = [0u8; 4];
    let t0 = Instant::now();
    for _ in 0..n {
        dev.region_read(BAR0, STATUS, &mut b)?;
    }
    let bar = t0.elapsed();
    let t0 = Instant::now();
    for _ in 0..n {
        dev.config_read(0, &mut b)?;
    }
    let cfg = t0.elapsed();
    println!(
        "BENCH {n} reads: BAR0 STATUS {:.0} ns/read, config {:.0} ns/read, ratio {:.2}",
        bar.as_nanos() as f64 / f64::from(n),
        cfg.as_nanos() as f64 / f64::from(n),
        bar.as_secs_f64() / cfg.as_secs_f64().max(1e-12)
    );
    Ok(())
}

fn run() -> Result<Checks, BoxError> {
    let args = parse_args()?;
    if let Some(socket) = &args.vfio_user {
        let t_open = Instant::now();
        let client =
            hwrr_vfio_user::Client::connect(socket, hwrr_vfio_user::ClientOptions::default())?;
        let mut dev = hwrr_vfio_user::RemoteDevice::new(client)?;
        println!(
            "OPEN vfio-user {} in {:?}",
            socket.display(),
            t_open.elapsed()
        );
        let mut checks = Checks::default();
        exercise(&mut dev, &mut checks, args.variant, &mut |_| {})?;
        return Ok(checks);
    }
    let options = OpenOptions {
        sysfs_root: args.sysfs_root.into(),
        access: if args.mmap {
            AccessMode::Mmap
        } else {
            AccessMode::FileIo
        },
        read_rom: true,
        iommu: if args.iommufd {
            IommuApi::Iommufd
        } else {
            IommuApi::Container
        },
    };
    let t_open = Instant::now();
    let backend = VfioBackend::open(&args.bdf, &options)?;
    println!(
        "OPEN {} ({}) in {:?}",
        args.bdf,
        if backend.sys().is_iommufd() {
            "cdev+iommufd"
        } else {
            "container/group"
        },
        t_open.elapsed()
    );
    match backend.iommu_info() {
        Ok(i) => println!(
            "IOMMU pgsizes={:#x} ranges={:x?} dma_avail={:?}",
            i.iova_pgsizes.unwrap_or(0),
            i.iova_ranges,
            i.dma_avail
        ),
        Err(e) => println!("IOMMU info unavailable: {e}"),
    }
    if let Some(e) = backend.rom_error() {
        println!("ROM not captured: {e}");
    }
    for e in backend.mmap_errors() {
        println!("MMAP fallback: {e}");
    }
    println!("MMAPPED {:x?}", backend.mmapped_areas());
    let mut backend = backend;
    if args.bench > 0 {
        bench(&mut backend, args.bench)?;
    }
    let mut checks = Checks::default();
    match &args.trace {
        None => {
            let mut dev = backend;
            exercise(&mut dev, &mut checks, args.variant, &mut |_| {})?;
        }
        Some(path) => record(
            backend,
            path,
            args.mmap,
            args.log_watch,
            args.variant,
            &mut checks,
        )?,
    }
    Ok(checks)
}

/// Runs the exercise through the recorder's tap, writing a trace to `path`.
fn record(
    backend: VfioBackend,
    path: &std::path::Path,
    mmap: bool,
    log_watch: bool,
    variant: Variant,
    checks: &mut Checks,
) -> Result<(), BoxError> {
    use hwrr_formats::{CaptureMeta, DmaWrite, EventKind, TraceHeader};
    use hwrr_recorder::{Recorder, RecorderOptions, Tap};

    let d = backend.describe();
    let mut labels = std::collections::BTreeMap::new();
    labels.insert("exercise".to_string(), "e1000e".to_string());
    labels.insert(
        "bar_access".to_string(),
        if mmap { "mmap" } else { "pread/pwrite" }.to_string(),
    );
    labels.insert(
        "dma_write_source".to_string(),
        if log_watch {
            "exercise-watch (tx and rx rings, rx buffers; diffed after the tx write-back, at the interrupt and before the rx descriptor read, logged at once)"
        } else {
            "recorder-watch (hwrr-recorder's watch set: pages named by ring-base writes and descriptor pointers)"
        }
        .to_string(),
    );
    let start_unix_ns = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |t| t.as_nanos() as u64);
    let header = TraceHeader {
        device: d.identity.clone(),
        config_space: d.config_space.clone(),
        regions: d.regions.clone(),
        irqs: d.irqs.clone(),
        rom: d.rom.clone(),
        capture: CaptureMeta {
            tool: format!(
                "hwrr-vfio-backend e1000e_exercise {}",
                env!("CARGO_PKG_VERSION")
            ),
            source: "vfio".into(),
            kernel: std::fs::read_to_string("/proc/sys/kernel/osrelease")
                .ok()
                .map(|s| s.trim().to_string()),
            host: std::fs::read_to_string("/proc/sys/kernel/hostname")
                .ok()
                .map(|s| s.trim().to_string()),
            start_unix_ns,
        },
        labels,
        start_state: None,
    };
    let recorder = Recorder::create(path, &header, RecorderOptions::default())?;
    let handle = recorder.handle();
    // With --log-watch the exercise's own watch logs the device's writes, so the recorder's watch set
    // stays off (it would log them a second time); without it, the recorder's watch set is what
    // captures them.
    let mut tap = if log_watch {
        Tap::with_options(
            backend,
            recorder.handle(),
            hwrr_recorder::WatchOptions::disabled(),
        )?
    } else {
        Tap::new(backend, recorder.handle())?
    };
    let result = exercise(&mut tap, checks, variant, &mut |w| {
        if log_watch {
            handle.log(
                EventKind::DmaWrite(DmaWrite {
                    iova: w.iova,
                    data: w.after.clone(),
                    before: Some(w.before.clone()),
                }),
                0,
                0,
            );
        }
    });
    // The tap (and its interrupt relay) goes before the trace is finished, so no event is lost.
    drop(tap);
    let stats = recorder.finish()?;
    println!(
        "TRACE {} events={} bytes={} queue_high_water={} stalls={}",
        path.display(),
        stats.events,
        stats.bytes,
        stats.queue_high_water,
        stats.stalls
    );
    result
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Another base than the capture's, as in a replay with `--iova`.
    const BASE: u64 = 0x2345_6000;

    fn watch_over(len: usize) -> (Dma, DmaWatch) {
        let memory = Arc::new(MappedMemory::anonymous(DMA_SIZE).unwrap());
        let mut watch = DmaWatch::new(memory.clone(), BASE);
        watch.watch(BASE + RX_BUFS, len).unwrap();
        (Dma { memory, base: BASE }, watch)
    }

    #[test]
    fn a_frame_with_unchanged_bytes_inside_is_one_write() {
        let (dma, mut watch) = watch_over(4096);
        // Zeros inside the frame equal what the buffer held before.
        let mut frame: Vec<u8> = (0..42u8).map(|i| i | 0x80).collect();
        for z in [2, 14, 15, 30] {
            frame[z] = 0;
        }
        dma.put(BASE + RX_BUFS, &frame).unwrap();
        let w = watch.diff().unwrap();
        assert_eq!(w.len(), 1);
        assert_eq!((w[0].iova, w[0].after.clone()), (BASE + RX_BUFS, frame));
        assert!(w[0].before.iter().all(|&b| b == 0));
        let mut at_offset = [0u8; 42];
        dma.memory.read(RX_BUFS, &mut at_offset).unwrap();
        assert_eq!(at_offset[..], w[0].after[..], "IOVA BASE + x is offset x");
        assert!(
            watch.diff().unwrap().is_empty(),
            "shadows follow the memory"
        );
    }

    #[test]
    fn writes_further_apart_than_the_gap_stay_apart() {
        let (dma, mut watch) = watch_over(4096);
        dma.put(BASE + RX_BUFS + 10, &[1]).unwrap();
        let far = 10 + 1 + MERGE_GAP as u64 + 1;
        dma.put(BASE + RX_BUFS + far, &[2, 3]).unwrap();
        dma.put(BASE + RX_BUFS + 4095, &[9]).unwrap();
        let w = watch.diff().unwrap();
        let got: Vec<(u64, Vec<u8>)> = w
            .iter()
            .map(|w| (w.iova - BASE - RX_BUFS, w.after.clone()))
            .collect();
        assert_eq!(got, vec![(10, vec![1]), (far, vec![2, 3]), (4095, vec![9])]);
        // A write back to the old value is a change too, with the right before bytes.
        dma.put(BASE + RX_BUFS + 10, &[0]).unwrap();
        let w = watch.diff().unwrap();
        assert_eq!(
            (w.len(), w[0].before.clone(), w[0].after.clone()),
            (1, vec![1], vec![0])
        );
    }

    #[test]
    fn the_arp_request_is_well_formed() {
        let mac = [2, 0, 0, 0, 0, 1];
        let p = arp_request(mac);
        assert_eq!(p.len(), 60);
        assert_eq!(p[12..14], [0x08, 0x06]);
        assert_eq!(p[20..22], [0x00, 0x01], "who-has");
        assert_eq!(p[22..28], mac);
        assert_eq!(p[38..42], [10, 0, 2, 2]);
    }
}
