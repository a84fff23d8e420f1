//! A scripted driver for the test device: it probes and exercises the device the way a real driver
//! does and returns everything it observed, so two runs (against the device, through a recorder,
//! against a replay) can be compared with `==`.
//!
//! The driver only uses the [`Device`] trait and guest memory, so it drives any backend. Nothing it
//! observes depends on the IOVAs it was given: a replay may place the driver's memory elsewhere
//! ([`DriverOptions::iova_base`]) and must still produce equal [`Observations`].

use std::os::fd::{AsRawFd, OwnedFd};
use std::sync::Arc;
use std::time::Duration;

use hwrr_device::{
    dma_flags, eventfd, Device, DeviceError, DmaMapping, DmaRegion, GuestMemory, IrqSetRequest,
    MappedMemory, SparseMemory,
};
use hwrr_formats::{irq_index, region_index, IrqAction, IrqData, IrqSetup};
use serde::{Serialize, Serializer};

use crate::config::{command, MSIX_ENABLE, MSI_ENABLE};
use crate::regs::{self, bar0, bar2, cause, control, desc, dma_cmd, status};

/// How the driver asks for interrupts.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum IrqMode {
    /// One MSI-X vector per cause.
    Msix,
    /// One MSI vector for every cause.
    Msi,
    /// Legacy INTx (level, auto-masked, unmasked by the driver after each interrupt).
    Intx,
}

impl IrqMode {
    fn index(self) -> u32 {
        match self {
            IrqMode::Msix => irq_index::MSIX,
            IrqMode::Msi => irq_index::MSI,
            IrqMode::Intx => irq_index::INTX,
        }
    }
    fn vectors(self) -> u32 {
        match self {
            IrqMode::Msix => regs::MSIX_VECTORS,
            _ => 1,
        }
    }
    /// The vector a cause arrives on.
    fn vector_for(self, cause_bit: u32) -> u32 {
        match self {
            IrqMode::Msix => cause_bit.trailing_zeros(),
            _ => 0,
        }
    }
}

/// Where the driver's DMA memory lives and how it waits.
#[derive(Clone, Debug)]
pub struct DriverOptions {
    /// IOVA of the driver's DMA area ([`DMA_AREA_SIZE`] bytes, mapped in the guest memory given to
    /// [`run`]). Rings, buffers and DMA targets are laid out inside it. The driver itself maps and
    /// unmaps [`STREAM_SIZE`] bytes right after the area, which must therefore be free.
    pub iova_base: u64,
    /// Interrupt mode.
    pub irq_mode: IrqMode,
    /// How long to wait for one interrupt before giving up (a replay over a socket may be slow).
    pub irq_timeout: Duration,
    /// Frames sent through the loopback rings (1..[`RING_ENTRIES`]).
    pub frames: usize,
}

impl Default for DriverOptions {
    fn default() -> Self {
        DriverOptions {
            iova_base: 0x1000_0000,
            irq_mode: IrqMode::Msix,
            irq_timeout: Duration::from_secs(5),
            frames: 3,
        }
    }
}

/// Size of the driver's DMA area.
pub const DMA_AREA_SIZE: u64 = 0x10000;
/// Descriptors per ring.
pub const RING_ENTRIES: u32 = 8;
const TX_RING: u64 = 0x0000;
const RX_RING: u64 = 0x1000;
const TX_BUFS: u64 = 0x2000;
const RX_BUFS: u64 = 0x6000;
const BUF_STRIDE: u64 = 0x800;
const DMA_WRITE_DST: u64 = 0xa000;
const DMA_READ_SRC: u64 = 0xb000;
const FILL_DST: u64 = 0xc000;
const DMA_LEN: u32 = 256;
const FILL_LEN: u32 = 96;
const FILL_PATTERN: u32 = 0xa5c3_0ff0;
/// Size of the streaming DMA mapping the driver adds right after its area and removes again.
pub const STREAM_SIZE: u64 = 0x1000;
const STREAM_FILL_LEN: u32 = 64;
const STREAM_PATTERN: u32 = 0x1122_3344;
/// STATUS reads after which a command that never finishes counts as hung.
const MAX_POLLS: u32 = 10_000;

/// Why the driver stopped.
#[derive(Debug, thiserror::Error)]
pub enum DriverError {
    /// A device call failed.
    #[error("device call failed: {0}")]
    Device(#[from] DeviceError),
    /// The device is not the test device.
    #[error("not the hwrr test device: {vendor:04x}:{device:04x}")]
    WrongDevice {
        /// Vendor id read from config space.
        vendor: u16,
        /// Device id read from config space.
        device: u16,
    },
    /// STATUS never reached the expected state.
    #[error("{what}: STATUS still {status:#x} after {polls} reads")]
    PollTimeout {
        /// What the driver was waiting for.
        what: &'static str,
        /// The last STATUS value.
        status: u32,
        /// How many reads.
        polls: u32,
    },
    /// An expected interrupt did not arrive.
    #[error("no interrupt on {mode:?} vector {vector} within {timeout:?} ({what})")]
    IrqTimeout {
        /// What the driver was waiting for.
        what: &'static str,
        /// Interrupt mode.
        mode: IrqMode,
        /// Vector.
        vector: u32,
        /// How long it waited.
        timeout: Duration,
    },
    /// The options do not describe a usable layout.
    #[error("bad driver options: {0}")]
    Options(String),
    /// An eventfd or poll call failed.
    #[error("eventfd: {0}")]
    Io(#[from] std::io::Error),
}

fn hex<S: Serializer>(bytes: &[u8], s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(&hwrr_formats::hex::encode(bytes))
}

/// One BAR as sized by the driver.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct BarObservation {
    /// BAR number (0..=5).
    pub index: u32,
    /// `mmio32`, `mmio64` or `io`.
    pub kind: &'static str,
    /// Size decoded from the all-ones write.
    pub size: u64,
}

/// One DMA command and its outcome.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct DmaObservation {
    /// `device-to-guest`, `guest-to-device` or `fill`.
    pub command: &'static str,
    /// STATUS reads until BUSY cleared.
    pub polls: u32,
    /// STATUS after completion.
    pub status: u32,
    /// IRQ_CAUSE seen in the interrupt handler.
    pub cause: u32,
    /// The bytes that arrived: in guest memory (device-to-guest, fill) or in the device buffer read
    /// back through BAR0 (guest-to-device).
    #[serde(serialize_with = "hex")]
    pub bytes: Vec<u8>,
}

/// One frame that came back through the RX ring.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct RxFrame {
    /// Descriptor flags written by the device.
    pub flags: u16,
    /// The frame bytes.
    #[serde(serialize_with = "hex")]
    pub bytes: Vec<u8>,
}

/// Everything the driver saw. Independent of IOVAs and of timing.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Observations {
    /// Interrupt mode used.
    pub irq_mode: IrqMode,
    /// Vendor id.
    pub vendor_id: u16,
    /// Device id.
    pub device_id: u16,
    /// Subsystem vendor id.
    pub subsystem_vendor_id: u16,
    /// Subsystem id.
    pub subsystem_id: u16,
    /// Class code.
    pub class_code: u32,
    /// Revision.
    pub revision: u8,
    /// Capability list as (id, offset).
    pub capabilities: Vec<(u8, u8)>,
    /// MSI-X table size from the capability.
    pub msix_table_size: u16,
    /// BARs found by sizing.
    pub bars: Vec<BarObservation>,
    /// Expansion ROM BAR size.
    pub rom_bar_size: u64,
    /// ROM image length from its header (512-byte units times 512).
    pub rom_image_len: usize,
    /// Vendor and device id in the ROM's PCI data structure.
    pub rom_pcir_ids: (u16, u16),
    /// Whether the ROM's bytes sum to zero.
    pub rom_checksum_ok: bool,
    /// ID register.
    pub id: u32,
    /// VERSION register.
    pub version: u32,
    /// ID read through the I/O BAR.
    pub io_id: u32,
    /// MAC address.
    pub mac: [u8; 6],
    /// SCRATCH after writing a test value.
    pub scratch: u32,
    /// I/O SCRATCH after writing a test value.
    pub io_scratch: u32,
    /// SCRATCH written through the I/O index/data pair, read back through BAR0.
    pub indirect_scratch: u32,
    /// STATUS reads until the soft reset finished.
    pub reset_polls: u32,
    /// STATUS after the reset.
    pub status_after_reset: u32,
    /// The DMA commands: device-to-guest, guest-to-device, fill, a fill into a streaming mapping,
    /// and the same fill after that mapping was removed (which must fail).
    pub dma: Vec<DmaObservation>,
    /// TX descriptor flags after transmission.
    pub tx_flags: Vec<u16>,
    /// Frames received through the RX ring.
    pub rx_frames: Vec<RxFrame>,
    /// TX_HEAD, RX_HEAD, TX_COUNT, RX_COUNT, RX_DROPPED after the ring test.
    pub ring_registers: [u32; 5],
    /// Causes seen in the ring interrupt handler(s), OR-ed.
    pub ring_causes: u32,
    /// IRQ_CAUSE in the software-interrupt handler.
    pub soft_cause: u32,
    /// Interrupts counted per vector (eventfd counts) over the whole run, including signals that
    /// arrived after their handler ran (collected when the vectors are disconnected at the end). A
    /// backend that relays interrupts from another thread must have delivered them by then.
    pub irq_counts: Vec<u64>,
    /// STATUS at the end, after the final reset.
    pub final_status: u32,
}

/// Maps `len` bytes of fresh shared memory (a memfd, so a frontend that talks to another process,
/// such as a vfio-user client, can pass the fd on) at `iova` for the device: adds it to a new
/// [`SparseMemory`], calls `dma_map` with the memory, as a VMM maps guest RAM, and attaches the
/// memory to the device. Returns the guest memory for [`run`].
pub fn setup_guest_memory(
    dev: &mut dyn Device,
    iova: u64,
    len: u64,
) -> Result<Arc<SparseMemory>, DriverError> {
    let size = usize::try_from(len).map_err(|_| DriverError::Options(format!("{len} bytes")))?;
    let mapped = Arc::new(MappedMemory::map_fd(memfd(len)?, 0, size, true)?);
    let mem = Arc::new(SparseMemory::new());
    let flags = dma_flags::READ | dma_flags::WRITE;
    mem.add_mapped(iova, flags, mapped.clone())?;
    dev.attach_memory(mem.clone());
    dev.dma_map(DmaRegion {
        mapping: DmaMapping { iova, len, flags },
        memory: Some(mapped),
    })?;
    Ok(mem)
}

/// A zero-filled memfd of `len` bytes.
fn memfd(len: u64) -> std::io::Result<OwnedFd> {
    let size = libc::off_t::try_from(len)
        .map_err(|_| std::io::Error::new(std::io::ErrorKind::InvalidInput, "too large"))?;
    // SAFETY: a NUL-terminated name and plain flags; the result is checked before it is owned.
    let fd = unsafe { libc::memfd_create(c"hwrr-testdev-guest-ram".as_ptr(), libc::MFD_CLOEXEC) };
    if fd < 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: `fd` is a fresh descriptor that nothing else owns.
    let fd = unsafe { <OwnedFd as std::os::fd::FromRawFd>::from_raw_fd(fd) };
    // SAFETY: ftruncate on a descriptor we own.
    if unsafe { libc::ftruncate(fd.as_raw_fd(), size) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(fd)
}

struct Driver<'a> {
    dev: &'a mut dyn Device,
    mem: &'a SparseMemory,
    opts: DriverOptions,
    fds: Vec<OwnedFd>,
    counts: Vec<u64>,
}

/// Runs the whole script against `dev`. `mem` is the guest memory the device was given (see
/// [`setup_guest_memory`]); it must map [`DMA_AREA_SIZE`] bytes at `opts.iova_base`.
pub fn run(
    dev: &mut dyn Device,
    mem: &SparseMemory,
    opts: DriverOptions,
) -> Result<Observations, DriverError> {
    if opts.frames == 0 || opts.frames >= RING_ENTRIES as usize {
        return Err(DriverError::Options(format!(
            "frames must be 1..{RING_ENTRIES}, not {}",
            opts.frames
        )));
    }
    if mem.resolve(opts.iova_base, DMA_AREA_SIZE).is_none() {
        return Err(DriverError::Options(format!(
            "guest memory does not map {DMA_AREA_SIZE:#x} bytes at IOVA {:#x}",
            opts.iova_base
        )));
    }
    if !stream_range_free(mem, opts.iova_base) {
        return Err(DriverError::Options(format!(
            "the {STREAM_SIZE:#x} bytes after the DMA area at {:#x} must be unmapped and addressable",
            opts.iova_base
        )));
    }
    let mut d = Driver {
        dev,
        mem,
        opts,
        fds: Vec::new(),
        counts: Vec::new(),
    };
    d.script()
}

impl Driver<'_> {
    // ------------------------------------------------------------ access helpers

    fn cfg_read(&mut self, off: u32, len: usize) -> Result<u32, DriverError> {
        let mut b = [0u8; 4];
        self.dev.config_read(off, &mut b[..len])?;
        Ok(u32::from_le_bytes(b))
    }
    fn cfg_write(&mut self, off: u32, len: usize, v: u32) -> Result<(), DriverError> {
        self.dev.config_write(off, &v.to_le_bytes()[..len])?;
        Ok(())
    }
    fn rd(&mut self, region: u32, off: u64) -> Result<u32, DriverError> {
        let mut b = [0u8; 4];
        self.dev.region_read(region, off, &mut b)?;
        Ok(u32::from_le_bytes(b))
    }
    fn wr(&mut self, region: u32, off: u64, v: u32) -> Result<(), DriverError> {
        self.dev.region_write(region, off, &v.to_le_bytes())?;
        Ok(())
    }
    fn reg(&mut self, off: u64) -> Result<u32, DriverError> {
        self.rd(region_index::BAR0, off)
    }
    fn set(&mut self, off: u64, v: u32) -> Result<(), DriverError> {
        self.wr(region_index::BAR0, off, v)
    }
    fn set64(&mut self, lo_off: u64, hi_off: u64, v: u64) -> Result<(), DriverError> {
        self.set(lo_off, v as u32)?;
        self.set(hi_off, (v >> 32) as u32)
    }
    fn iova(&self, off: u64) -> u64 {
        self.opts.iova_base + off
    }

    fn poll_status(&mut self, what: &'static str) -> Result<(u32, u32), DriverError> {
        let mut s = 0;
        for polls in 1..=MAX_POLLS {
            s = self.reg(bar0::STATUS)?;
            if s & status::BUSY == 0 {
                return Ok((polls, s));
            }
        }
        Err(DriverError::PollTimeout {
            what,
            status: s,
            polls: MAX_POLLS,
        })
    }

    // ------------------------------------------------------------ interrupts

    fn irq_request(&self, action: IrqAction, data: IrqData, count: u32) -> IrqSetRequest {
        IrqSetRequest {
            setup: IrqSetup {
                index: self.opts.irq_mode.index(),
                start: 0,
                count,
                action,
                data,
            },
            fds: Vec::new(),
        }
    }

    fn wire_irqs(&mut self) -> Result<(), DriverError> {
        let n = self.opts.irq_mode.vectors();
        self.fds = (0..n)
            .map(|_| eventfd::create())
            .collect::<Result<_, _>>()?;
        self.counts = vec![0; n as usize];
        let mut req = self.irq_request(
            IrqAction::Trigger,
            IrqData::Eventfd(vec![true; n as usize]),
            n,
        );
        req.fds = self
            .fds
            .iter()
            .map(|f| f.try_clone().map(Some))
            .collect::<Result<_, _>>()?;
        self.dev.set_irqs(req)?;
        Ok(())
    }

    fn unwire_irqs(&mut self) -> Result<(), DriverError> {
        let req = self.irq_request(IrqAction::Trigger, IrqData::None, 0);
        self.dev.set_irqs(req)?;
        self.drain_all()
    }

    fn drain_all(&mut self) -> Result<(), DriverError> {
        for (fd, c) in self.fds.iter().zip(self.counts.iter_mut()) {
            *c += eventfd::drain(fd)?;
        }
        Ok(())
    }

    /// Waits for the interrupt that `cause_bit` raises, then reads and acknowledges IRQ_CAUSE.
    fn wait_irq(&mut self, cause_bit: u32, what: &'static str) -> Result<u32, DriverError> {
        let mode = self.opts.irq_mode;
        let vector = mode.vector_for(cause_bit);
        let fd = self
            .fds
            .get(vector as usize)
            .ok_or(DriverError::Options(format!("vector {vector} not wired")))?;
        if !wait_readable(fd, self.opts.irq_timeout)? {
            return Err(DriverError::IrqTimeout {
                what,
                mode,
                vector,
                timeout: self.opts.irq_timeout,
            });
        }
        self.counts[vector as usize] += eventfd::drain(fd)?;
        let c = self.reg(bar0::IRQ_CAUSE)?;
        self.set(bar0::IRQ_ACK, c)?;
        if mode == IrqMode::Intx {
            let req = self.irq_request(IrqAction::Unmask, IrqData::None, 1);
            self.dev.set_irqs(req)?;
        }
        Ok(c)
    }

    // ------------------------------------------------------------ the script

    fn script(&mut self) -> Result<Observations, DriverError> {
        // Identity.
        let vendor = self.cfg_read(0x00, 2)? as u16;
        let device = self.cfg_read(0x02, 2)? as u16;
        if (vendor, device) != (regs::VENDOR_ID, regs::DEVICE_ID) {
            return Err(DriverError::WrongDevice { vendor, device });
        }
        let class_rev = self.cfg_read(0x08, 4)?;
        let subsystem_vendor_id = self.cfg_read(0x2c, 2)? as u16;
        let subsystem_id = self.cfg_read(0x2e, 2)? as u16;
        // A function-level reset first, as a VMM does before it hands a device to a guest.
        self.dev.reset()?;

        // Capabilities.
        let mut capabilities = Vec::new();
        let mut msix_table_size = 0;
        let (mut msi_cap, mut msix_cap) = (None, None);
        if self.cfg_read(0x06, 2)? & u32::from(crate::config::STATUS_CAP_LIST) != 0 {
            let mut ptr = self.cfg_read(0x34, 1)? as u8 & !3;
            // A malformed list could loop; 48 entries is the most 192 bytes can hold.
            for _ in 0..48 {
                if ptr < 0x40 {
                    break;
                }
                let id = self.cfg_read(u32::from(ptr), 1)? as u8;
                capabilities.push((id, ptr));
                match id {
                    0x05 => msi_cap = Some(u32::from(ptr)),
                    0x11 => {
                        msix_cap = Some(u32::from(ptr));
                        msix_table_size =
                            (self.cfg_read(u32::from(ptr) + 2, 2)? as u16 & 0x7ff) + 1;
                    }
                    _ => {}
                }
                ptr = self.cfg_read(u32::from(ptr) + 1, 1)? as u8 & !3;
            }
        }

        // BAR sizing with decoding off, as the PCI core does.
        let cmd = self.cfg_read(0x04, 2)?;
        self.cfg_write(0x04, 2, cmd & !u32::from(command::IO | command::MEMORY))?;
        let mut bars = Vec::new();
        let mut i = 0;
        while i < 6 {
            let off = 0x10 + 4 * i;
            let orig = self.cfg_read(off, 4)?;
            self.cfg_write(off, 4, u32::MAX)?;
            let mask = self.cfg_read(off, 4)?;
            self.cfg_write(off, 4, orig)?;
            if mask == 0 {
                i += 1;
                continue;
            }
            if mask & 1 == 1 {
                let size = u64::from((!(mask & !3)).wrapping_add(1));
                bars.push(BarObservation {
                    index: i,
                    kind: "io",
                    size,
                });
                i += 1;
            } else if (mask >> 1) & 3 == 2 && i < 5 {
                let hi_off = off + 4;
                let orig_hi = self.cfg_read(hi_off, 4)?;
                self.cfg_write(hi_off, 4, u32::MAX)?;
                let mask_hi = self.cfg_read(hi_off, 4)?;
                self.cfg_write(hi_off, 4, orig_hi)?;
                let full = (u64::from(mask_hi) << 32) | u64::from(mask & !0xf);
                bars.push(BarObservation {
                    index: i,
                    kind: "mmio64",
                    size: (!full).wrapping_add(1),
                });
                i += 2;
            } else {
                let size = u64::from((!(mask & !0xf)).wrapping_add(1));
                bars.push(BarObservation {
                    index: i,
                    kind: "mmio32",
                    size,
                });
                i += 1;
            }
        }
        let rom_orig = self.cfg_read(0x30, 4)?;
        self.cfg_write(0x30, 4, 0xffff_f800)?;
        let rom_mask = self.cfg_read(0x30, 4)? & 0xffff_f800;
        self.cfg_write(0x30, 4, rom_orig)?;
        let rom_bar_size = if rom_mask == 0 {
            0
        } else {
            u64::from((!rom_mask).wrapping_add(1))
        };

        // Enable the device.
        let enable = u32::from(command::IO | command::MEMORY | command::BUS_MASTER);
        self.cfg_write(0x04, 2, (cmd | enable) & !u32::from(command::INTX_DISABLE))?;

        // The ROM, read in 256-byte pieces as firmware would.
        let mut rom = vec![0u8; rom_bar_size as usize];
        for (n, chunk) in rom.chunks_mut(256).enumerate() {
            self.dev
                .region_read(region_index::ROM, (n * 256) as u64, chunk)?;
        }
        let rom_image_len = rom.get(2).map_or(0, |b| *b as usize * 512);
        let pcir = rom
            .get(0x18..0x1a)
            .map_or(0, |b| u16::from_le_bytes([b[0], b[1]]) as usize);
        let rom_pcir_ids = match rom.get(pcir..pcir + 8) {
            Some(p) if &p[..4] == b"PCIR" => (
                u16::from_le_bytes([p[4], p[5]]),
                u16::from_le_bytes([p[6], p[7]]),
            ),
            _ => (0, 0),
        };
        let rom_checksum_ok =
            rom.starts_with(&[0x55, 0xaa]) && rom.iter().fold(0u8, |a, b| a.wrapping_add(*b)) == 0;

        // Registers.
        let id = self.reg(bar0::ID)?;
        let version = self.reg(bar0::VERSION)?;
        let io_id = self.rd(2, bar2::ID)?;
        let mac_lo = self.reg(bar0::MAC_LO)?.to_le_bytes();
        let mac_hi = self.reg(bar0::MAC_HI)?.to_le_bytes();
        let mac = [
            mac_lo[0], mac_lo[1], mac_lo[2], mac_lo[3], mac_hi[0], mac_hi[1],
        ];
        self.set(bar0::SCRATCH, 0x1234_5678)?;
        let scratch = self.reg(bar0::SCRATCH)?;
        self.wr(2, bar2::SCRATCH, 0x0bad_f00d)?;
        let io_scratch = self.rd(2, bar2::SCRATCH)?;
        self.wr(2, bar2::INDEX, bar0::SCRATCH as u32)?;
        self.wr(2, bar2::DATA, 0xcafe_0001)?;
        let indirect_scratch = self.reg(bar0::SCRATCH)?;

        // Soft reset and wait for READY.
        self.set(bar0::CONTROL, control::RESET)?;
        let (reset_polls, status_after_reset) = self.poll_status("reset")?;

        // Interrupts.
        self.wire_irqs()?;
        match self.opts.irq_mode {
            IrqMode::Msix => {
                if let Some(cap) = msix_cap {
                    let ctl = self.cfg_read(cap + 2, 2)?;
                    self.cfg_write(cap + 2, 2, ctl | u32::from(MSIX_ENABLE))?;
                }
            }
            IrqMode::Msi => {
                if let Some(cap) = msi_cap {
                    let ctl = self.cfg_read(cap + 2, 2)?;
                    self.cfg_write(cap + 2, 2, ctl | u32::from(MSI_ENABLE))?;
                }
            }
            IrqMode::Intx => {}
        }
        self.set(bar0::IRQ_MASK, cause::ALL)?;

        // DMA: device to guest, guest to device, fill.
        let mut dma = Vec::new();
        let pattern: Vec<u8> = (0..DMA_LEN)
            .map(|i| (i as u8).wrapping_mul(7) ^ 0x5a)
            .collect();
        for (i, chunk) in pattern.chunks(4).enumerate() {
            let v = u32::from_le_bytes([chunk[0], chunk[1], chunk[2], chunk[3]]);
            self.set(bar0::BUFFER + 4 * i as u64, v)?;
        }
        let dst = self.iova(DMA_WRITE_DST);
        let obs = self.dma_command(dma_cmd::DEVICE_TO_GUEST, 0, dst, DMA_LEN, 0)?;
        let mut bytes = vec![0u8; DMA_LEN as usize];
        self.mem.read(dst, &mut bytes)?;
        dma.push(DmaObservation {
            command: "device-to-guest",
            bytes,
            ..obs
        });

        let src = self.iova(DMA_READ_SRC);
        let outbound: Vec<u8> = (0..DMA_LEN).map(|i| (255 - i as u8) ^ 0x33).collect();
        self.mem.write(src, &outbound)?;
        let dev_off = 0x400;
        let obs = self.dma_command(dma_cmd::GUEST_TO_DEVICE, src, dev_off, DMA_LEN, 0)?;
        let mut bytes = Vec::with_capacity(DMA_LEN as usize);
        for i in 0..DMA_LEN as u64 / 4 {
            bytes.extend_from_slice(&self.reg(bar0::BUFFER + dev_off + 4 * i)?.to_le_bytes());
        }
        dma.push(DmaObservation {
            command: "guest-to-device",
            bytes,
            ..obs
        });

        let fill = self.iova(FILL_DST);
        let obs = self.dma_command(dma_cmd::FILL, 0, fill, FILL_LEN, FILL_PATTERN)?;
        let mut bytes = vec![0u8; FILL_LEN as usize];
        self.mem.read(fill, &mut bytes)?;
        dma.push(DmaObservation {
            command: "fill",
            bytes,
            ..obs
        });
        dma.extend(self.streaming_dma()?);

        // Rings: RX buffers first, then frames on TX; the device loops them back.
        let (tx_flags, rx_frames, ring_registers, ring_causes) = self.ring_test()?;

        // A software interrupt on the last vector.
        self.set(bar0::IRQ_TRIGGER, cause::SOFT)?;
        let soft_cause = self.wait_irq(cause::SOFT, "software interrupt")?;

        // Tear down: interrupts off, reset, stop bus mastering.
        self.set(bar0::IRQ_MASK, 0)?;
        self.unwire_irqs()?;
        for cap in [msix_cap, msi_cap].into_iter().flatten() {
            let ctl = self.cfg_read(cap + 2, 2)?;
            let bit = if Some(cap) == msix_cap {
                MSIX_ENABLE
            } else {
                MSI_ENABLE
            };
            self.cfg_write(cap + 2, 2, ctl & !u32::from(bit))?;
        }
        self.set(bar0::CONTROL, control::RESET)?;
        let (_, final_status) = self.poll_status("final reset")?;
        let cmd_now = self.cfg_read(0x04, 2)?;
        self.cfg_write(0x04, 2, cmd_now & !u32::from(command::BUS_MASTER))?;

        Ok(Observations {
            irq_mode: self.opts.irq_mode,
            vendor_id: vendor,
            device_id: device,
            subsystem_vendor_id,
            subsystem_id,
            class_code: class_rev >> 8,
            revision: class_rev as u8,
            capabilities,
            msix_table_size,
            bars,
            rom_bar_size,
            rom_image_len,
            rom_pcir_ids,
            rom_checksum_ok,
            id,
            version,
            io_id,
            mac,
            scratch,
            io_scratch,
            indirect_scratch,
            reset_polls,
            status_after_reset,
            dma,
            tx_flags,
            rx_frames,
            ring_registers,
            ring_causes,
            soft_cause,
            irq_counts: self.counts.clone(),
            final_status,
        })
    }

    fn dma_command(
        &mut self,
        cmd: u32,
        src: u64,
        dst: u64,
        len: u32,
        pattern: u32,
    ) -> Result<DmaObservation, DriverError> {
        self.set64(bar0::DMA_SRC_LO, bar0::DMA_SRC_HI, src)?;
        self.set64(bar0::DMA_DST_LO, bar0::DMA_DST_HI, dst)?;
        self.set(bar0::DMA_LEN, len)?;
        self.set(bar0::DMA_PATTERN, pattern)?;
        self.set(bar0::DMA_CMD, cmd)?;
        let (polls, status) = self.poll_status("DMA")?;
        let cause = self.wait_irq(cause::DMA_DONE, "DMA done")?;
        Ok(DmaObservation {
            command: "",
            polls,
            status,
            cause,
            bytes: Vec::new(),
        })
    }

    /// A streaming DMA mapping, as a driver maps one buffer for one transfer: map it, let the
    /// device fill it, unmap it, and check that the device can no longer reach it.
    fn streaming_dma(&mut self) -> Result<[DmaObservation; 2], DriverError> {
        let iova = self.iova(DMA_AREA_SIZE);
        let flags = dma_flags::READ | dma_flags::WRITE;
        let size = STREAM_SIZE as usize;
        let mapped = Arc::new(MappedMemory::map_fd(memfd(STREAM_SIZE)?, 0, size, true)?);
        self.mem.add_mapped(iova, flags, mapped.clone())?;
        let mapping = DmaMapping {
            iova,
            len: STREAM_SIZE,
            flags,
        };
        self.dev.dma_map(DmaRegion {
            mapping,
            memory: Some(mapped),
        })?;
        let obs = self.dma_command(dma_cmd::FILL, 0, iova, STREAM_FILL_LEN, STREAM_PATTERN)?;
        let mut bytes = vec![0u8; STREAM_FILL_LEN as usize];
        self.mem.read(iova, &mut bytes)?;
        let mapped_fill = DmaObservation {
            command: "streaming-fill",
            bytes,
            ..obs
        };
        self.dev.dma_unmap(DmaMapping {
            flags: 0,
            ..mapping
        })?;
        self.mem.remove(iova, STREAM_SIZE);
        let after = self.dma_command(dma_cmd::FILL, 0, iova, STREAM_FILL_LEN, STREAM_PATTERN)?;
        Ok([
            mapped_fill,
            DmaObservation {
                command: "fill-after-unmap",
                ..after
            },
        ])
    }

    #[allow(clippy::type_complexity)]
    fn ring_test(&mut self) -> Result<(Vec<u16>, Vec<RxFrame>, [u32; 5], u32), DriverError> {
        let n = RING_ENTRIES;
        let frames = self.opts.frames;
        let tx_ring = self.iova(TX_RING);
        let rx_ring = self.iova(RX_RING);
        self.mem
            .write(tx_ring, &vec![0; (u64::from(n) * desc::SIZE) as usize])?;
        self.mem
            .write(rx_ring, &vec![0; (u64::from(n) * desc::SIZE) as usize])?;
        for i in 0..u64::from(n) {
            let d = descriptor(self.iova(RX_BUFS + i * BUF_STRIDE), BUF_STRIDE as u16, 0);
            self.mem.write(rx_ring + i * desc::SIZE, &d)?;
        }
        self.set64(bar0::RX_RING_LO, bar0::RX_RING_HI, rx_ring)?;
        self.set(bar0::RX_RING_SIZE, n)?;
        self.set64(bar0::TX_RING_LO, bar0::TX_RING_HI, tx_ring)?;
        self.set(bar0::TX_RING_SIZE, n)?;
        self.set(bar0::CONTROL, control::RING_ENABLE)?;
        self.set(bar0::RX_TAIL, n - 1)?;

        let mac = regs::MAC;
        for f in 0..frames {
            let len = [60usize, 128, 1514, 64, 200, 300, 400][f % 7];
            let mut frame = vec![0xffu8; 6];
            frame.extend_from_slice(&mac);
            frame.extend_from_slice(&[0x88, 0xb5]);
            frame.extend((0..len - 14).map(|i| (i as u8) ^ (f as u8).wrapping_mul(31)));
            let buf = self.iova(TX_BUFS + f as u64 * BUF_STRIDE);
            self.mem.write(buf, &frame)?;
            let d = descriptor(buf, len as u16, 0);
            self.mem.write(tx_ring + f as u64 * desc::SIZE, &d)?;
        }
        self.set(bar0::TX_TAIL, frames as u32)?;

        let mut ring_causes = 0;
        match self.opts.irq_mode {
            IrqMode::Msix => {
                ring_causes |= self.wait_irq(cause::TX_DONE, "TX done")?;
                ring_causes |= self.wait_irq(cause::RX, "RX")?;
            }
            _ => {
                // One vector for everything: keep taking interrupts until both causes were seen.
                while ring_causes & (cause::TX_DONE | cause::RX) != cause::TX_DONE | cause::RX {
                    ring_causes |= self.wait_irq(cause::TX_DONE, "TX done and RX")?;
                }
            }
        }

        let mut tx_flags = Vec::new();
        let mut rx_frames = Vec::new();
        for i in 0..frames as u64 {
            let mut d = [0u8; desc::SIZE as usize];
            self.mem.read(tx_ring + i * desc::SIZE, &mut d)?;
            tx_flags.push(u16::from_le_bytes([d[desc::FLAGS], d[desc::FLAGS + 1]]));
            self.mem.read(rx_ring + i * desc::SIZE, &mut d)?;
            let flags = u16::from_le_bytes([d[desc::FLAGS], d[desc::FLAGS + 1]]);
            let len = u16::from_le_bytes([d[desc::LEN], d[desc::LEN + 1]]) as usize;
            let mut bytes = vec![0u8; len.min(BUF_STRIDE as usize)];
            self.mem
                .read(self.iova(RX_BUFS + i * BUF_STRIDE), &mut bytes)?;
            rx_frames.push(RxFrame { flags, bytes });
        }
        let ring_registers = [
            self.reg(bar0::TX_HEAD)?,
            self.reg(bar0::RX_HEAD)?,
            self.reg(bar0::TX_COUNT)?,
            self.reg(bar0::RX_COUNT)?,
            self.reg(bar0::RX_DROPPED)?,
        ];
        self.set(bar0::CONTROL, 0)?;
        Ok((tx_flags, rx_frames, ring_registers, ring_causes))
    }
}

/// Whether the streaming mapping after the DMA area at `base` fits in the address space and
/// overlaps no existing mapping.
fn stream_range_free(mem: &SparseMemory, base: u64) -> bool {
    let Some(start) = base.checked_add(DMA_AREA_SIZE) else {
        return false;
    };
    let Some(end) = start.checked_add(STREAM_SIZE) else {
        return false;
    };
    !mem.mappings()
        .iter()
        .any(|(s, l, _)| *s < end && start < s.saturating_add(*l))
}

fn descriptor(addr: u64, len: u16, flags: u16) -> [u8; desc::SIZE as usize] {
    let mut d = [0u8; desc::SIZE as usize];
    d[desc::ADDR..desc::ADDR + 8].copy_from_slice(&addr.to_le_bytes());
    d[desc::LEN..desc::LEN + 2].copy_from_slice(&len.to_le_bytes());
    d[desc::FLAGS..desc::FLAGS + 2].copy_from_slice(&flags.to_le_bytes());
    d
}

/// Waits until `fd` is readable or `timeout` passes; `Ok(false)` on timeout.
fn wait_readable(fd: &OwnedFd, timeout: Duration) -> std::io::Result<bool> {
    let deadline = std::time::Instant::now() + timeout;
    loop {
        let left = deadline.saturating_duration_since(std::time::Instant::now());
        let ms = i32::try_from(left.as_millis()).unwrap_or(i32::MAX);
        let mut pfd = libc::pollfd {
            fd: fd.as_raw_fd(),
            events: libc::POLLIN,
            revents: 0,
        };
        // SAFETY: one valid pollfd on the stack, for the duration of the call.
        let n = unsafe { libc::poll(&mut pfd, 1, ms) };
        if n > 0 {
            return Ok(true);
        }
        if n == 0 {
            return Ok(false);
        }
        let e = std::io::Error::last_os_error();
        if e.kind() != std::io::ErrorKind::Interrupted {
            return Err(e);
        }
    }
}
