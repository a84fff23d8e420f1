//! An emulated PCI test device, built into hwrr so that the whole record/replay path can run without
//! hardware, and a scripted driver for it.
//!
//! [`TestDevice`] implements [`hwrr_device::Device`] and behaves like a small NIC-like card:
//! - configuration space with BAR sizing semantics, MSI and MSI-X capabilities, INTx pin A and an
//!   expansion ROM ([`config`], [`rom`]);
//! - BAR0: identity, scratch, control/status with a BUSY bit that stays set for a few reads after a
//!   command (a polling run), interrupt cause/mask/ack/trigger, a DMA engine (guest to device,
//!   device to guest, fill), TX/RX descriptor rings in guest memory whose TX side loops frames back
//!   into RX, a MAC address, and a 2 KiB device-buffer window ([`regs`]);
//! - BAR2: I/O ports with an index/data pair into BAR0;
//! - BAR4: the MSI-X table and PBA (4 vectors).
//!
//! It is deterministic: no timers and no threads. Work started by a register write finishes either
//! during that write (rings, software interrupts) or at the [`regs::BUSY_READS`]-th read of STATUS
//! (reset, DMA), so a driver sees a real polling run. Interrupts go through
//! [`hwrr_device::IrqRouter`] to MSI-X, MSI or INTx, whichever the driver enabled; DMA goes through
//! the attached [`hwrr_device::GuestMemory`] and only to IOVAs mapped with `dma_map`, as behind an
//! IOMMU.

#![deny(missing_docs)]

pub mod config;
pub mod driver;
pub mod regs;
pub mod rom;

use std::sync::Arc;

use hwrr_device::{
    dma_flags, Device, DeviceDescription, DeviceError, DeviceIdentity, DmaMapping, DmaRegion,
    GuestMemory, IrqInfo, IrqRouter, IrqSetRequest, RegionInfo, RegionKind, Result,
};
use hwrr_formats::{irq_index, region_flags, region_index};

use config::{command, ConfigSpace, MSIX_ENABLE, MSIX_FUNCTION_MASK, MSI_ENABLE};
use regs::*;

/// `VFIO_IRQ_INFO_*` flag bits used in the IRQ table.
mod irq_flags {
    pub const EVENTFD: u32 = 1;
    pub const MASKABLE: u32 = 2;
    pub const AUTOMASKED: u32 = 4;
    pub const NORESIZE: u32 = 8;
}

const MSIX_ENTRY_SIZE: usize = 16;
const MSIX_TABLE_BYTES: usize = MSIX_VECTORS as usize * MSIX_ENTRY_SIZE;

/// What the device did, for tests and the demo's statistics.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct TestDeviceStats {
    /// Bytes the device read from guest memory.
    pub dma_bytes_read: u64,
    /// Bytes the device wrote to guest memory.
    pub dma_bytes_written: u64,
    /// DMA accesses refused (bus mastering off, unmapped IOVA, no memory attached).
    pub dma_faults: u64,
    /// Interrupts handed to the IRQ router (MSI-X, MSI or INTx), whatever became of them.
    pub interrupts_raised: u64,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum PendingWork {
    Reset,
    Dma(u32),
}

#[derive(Clone, Debug, Default)]
struct Ring {
    base: u64,
    size: u32,
    head: u32,
    tail: u32,
}

impl Ring {
    fn set_base_lo(&mut self, v: u32) {
        self.base = (self.base & !0xffff_ffff) | u64::from(v);
        self.head = 0;
        self.tail = 0;
    }
    fn set_base_hi(&mut self, v: u32) {
        self.base = (self.base & 0xffff_ffff) | (u64::from(v) << 32);
        self.head = 0;
        self.tail = 0;
    }
    fn set_size(&mut self, v: u32) {
        self.size = if v.is_power_of_two() && v <= MAX_RING {
            v
        } else {
            0
        };
        self.head = 0;
        self.tail = 0;
    }
    fn set_tail(&mut self, v: u32) {
        if self.size != 0 {
            self.tail = v % self.size;
        }
    }
    fn desc_iova(&self, i: u32) -> Option<u64> {
        self.base.checked_add(u64::from(i) * desc::SIZE)
    }
}

#[derive(Clone, Debug)]
struct Registers {
    scratch: u32,
    io_scratch: u32,
    io_index: u32,
    ready: bool,
    dma_error: bool,
    ring_error: bool,
    ring_enabled: bool,
    busy_reads_left: u32,
    pending: Option<PendingWork>,
    irq_cause: u32,
    irq_mask: u32,
    dma_src: u64,
    dma_dst: u64,
    dma_len: u32,
    dma_pattern: u32,
    tx: Ring,
    rx: Ring,
    tx_count: u32,
    rx_count: u32,
    rx_dropped: u32,
}

impl Registers {
    fn power_on() -> Self {
        Registers {
            scratch: 0,
            io_scratch: 0,
            io_index: 0,
            ready: true,
            dma_error: false,
            ring_error: false,
            ring_enabled: false,
            busy_reads_left: 0,
            pending: None,
            irq_cause: 0,
            irq_mask: 0,
            dma_src: 0,
            dma_dst: 0,
            dma_len: 0,
            dma_pattern: 0,
            tx: Ring::default(),
            rx: Ring::default(),
            tx_count: 0,
            rx_count: 0,
            rx_dropped: 0,
        }
    }

    fn status(&self) -> u32 {
        let mut s = 0;
        if self.busy_reads_left > 0 {
            s |= status::BUSY;
        }
        if self.ready {
            s |= status::READY;
        }
        if self.dma_error {
            s |= status::DMA_ERROR;
        }
        if self.ring_enabled {
            s |= status::RING_ENABLED;
        }
        if self.ring_error {
            s |= status::RING_ERROR;
        }
        s
    }
}

fn lo(v: u64) -> u32 {
    v as u32
}
fn hi(v: u64) -> u32 {
    (v >> 32) as u32
}
fn set_lo(v: &mut u64, x: u32) {
    *v = (*v & !0xffff_ffff) | u64::from(x);
}
fn set_hi(v: &mut u64, x: u32) {
    *v = (*v & 0xffff_ffff) | (u64::from(x) << 32);
}

/// Why a DMA access did not happen.
#[derive(Debug)]
struct DmaRefused;

/// The emulated test device. See the crate documentation for its behaviour.
pub struct TestDevice {
    config: ConfigSpace,
    regs: Registers,
    buffer: Vec<u8>,
    msix_table: [u8; MSIX_TABLE_BYTES],
    msix_pending: u32,
    rom: Vec<u8>,
    irq_table: Vec<IrqInfo>,
    irqs: IrqRouter,
    memory: Option<Arc<dyn GuestMemory>>,
    iommu: Vec<DmaMapping>,
    intx_level: bool,
    stats: TestDeviceStats,
}

impl std::fmt::Debug for TestDevice {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TestDevice")
            .field("regs", &self.regs)
            .field("msix_pending", &self.msix_pending)
            .field("iommu", &self.iommu)
            .field("intx_level", &self.intx_level)
            .field("stats", &self.stats)
            .finish_non_exhaustive()
    }
}

impl Default for TestDevice {
    fn default() -> Self {
        Self::new()
    }
}

impl TestDevice {
    /// A device in its power-on state, with no memory attached and no interrupts wired.
    pub fn new() -> Self {
        let irq_table = vec![
            IrqInfo {
                index: irq_index::INTX,
                count: 1,
                flags: irq_flags::EVENTFD | irq_flags::MASKABLE | irq_flags::AUTOMASKED,
            },
            IrqInfo {
                index: irq_index::MSI,
                count: 1,
                flags: irq_flags::EVENTFD | irq_flags::NORESIZE,
            },
            IrqInfo {
                index: irq_index::MSIX,
                count: MSIX_VECTORS,
                flags: irq_flags::EVENTFD | irq_flags::NORESIZE,
            },
        ];
        TestDevice {
            config: ConfigSpace::new(),
            regs: Registers::power_on(),
            buffer: vec![0; BUFFER_SIZE],
            msix_table: [0; MSIX_TABLE_BYTES],
            msix_pending: 0,
            rom: rom::image(),
            irqs: IrqRouter::new(&irq_table),
            irq_table,
            memory: None,
            iommu: Vec::new(),
            intx_level: false,
            stats: TestDeviceStats::default(),
        }
    }

    /// What the device has done since it was created.
    pub fn stats(&self) -> TestDeviceStats {
        self.stats.clone()
    }

    /// The region table (BAR0, BAR2, BAR4, ROM, config), as VFIO would report it.
    pub fn regions() -> Vec<RegionInfo> {
        let rw = region_flags::READ | region_flags::WRITE;
        let region = |index, kind, size, flags| RegionInfo {
            index,
            kind,
            size,
            flags,
            alias_of: None,
        };
        vec![
            region(region_index::BAR0, RegionKind::Mmio, BAR0_SIZE, rw),
            region(2, RegionKind::Pio, BAR2_SIZE, rw),
            region(4, RegionKind::Mmio, BAR4_SIZE, rw),
            region(
                region_index::ROM,
                RegionKind::Rom,
                ROM_SIZE,
                region_flags::READ,
            ),
            region(
                region_index::CONFIG,
                RegionKind::Config,
                CONFIG_SIZE as u64,
                rw,
            ),
        ]
    }

    fn soft_reset(&mut self) {
        self.regs = Registers::power_on();
        self.buffer.iter_mut().for_each(|b| *b = 0);
        self.set_intx_level(false);
    }

    // ---------------------------------------------------------------- interrupts

    fn msix_active(&self) -> bool {
        self.config.msix_control() & MSIX_ENABLE != 0
            || (0..MSIX_VECTORS).any(|v| self.irqs.is_wired(irq_index::MSIX, v))
    }

    fn msi_active(&self) -> bool {
        self.config.msi_control() & MSI_ENABLE != 0 || self.irqs.is_wired(irq_index::MSI, 0)
    }

    fn bus_master(&self) -> bool {
        self.config.command() & command::BUS_MASTER != 0
    }

    fn msix_vector_masked(&self, v: u32) -> bool {
        let at = v as usize * MSIX_ENTRY_SIZE + 12;
        self.msix_table[at] & 1 != 0
    }

    fn raise(&mut self, index: u32, vector: u32) {
        self.stats.interrupts_raised += 1;
        // The only failure is an index/vector outside the IRQ table, which this device never asks
        // for; an interrupt that nobody listens to is lost, as on hardware.
        let _ = self.irqs.raise(index, vector);
    }

    /// Latches `bits` into IRQ_CAUSE and signals the newly fired, enabled causes.
    fn set_cause(&mut self, bits: u32) {
        self.regs.irq_cause |= bits & cause::ALL;
        self.signal(bits & self.regs.irq_mask & cause::ALL);
    }

    fn signal(&mut self, fired: u32) {
        if self.msix_active() {
            // Message-signalled modes never assert the pin.
            self.set_intx_level(false);
            let function_masked = self.config.msix_control() & MSIX_FUNCTION_MASK != 0;
            for v in 0..MSIX_VECTORS {
                if fired & (1 << v) == 0 {
                    continue;
                }
                if function_masked || self.msix_vector_masked(v) || !self.bus_master() {
                    self.msix_pending |= 1 << v;
                } else {
                    self.raise(irq_index::MSIX, v);
                }
            }
        } else if self.msi_active() {
            self.set_intx_level(false);
            // MSI is a memory write: without bus mastering it cannot be sent.
            if fired != 0 && self.bus_master() {
                self.raise(irq_index::MSI, 0);
            }
        } else {
            self.update_intx();
            if fired != 0 && self.intx_level {
                self.raise(irq_index::INTX, 0);
            }
        }
    }

    fn update_intx(&mut self) {
        let level = self.regs.irq_cause & self.regs.irq_mask != 0
            && self.config.command() & command::INTX_DISABLE == 0
            && !self.msix_active()
            && !self.msi_active();
        self.set_intx_level(level);
    }

    fn set_intx_level(&mut self, level: bool) {
        self.intx_level = level;
        self.config.set_interrupt_status(level);
    }

    /// Sends MSI-X messages held in the PBA whose vectors are no longer masked.
    fn flush_msix_pending(&mut self) {
        if !self.msix_active()
            || self.config.msix_control() & MSIX_FUNCTION_MASK != 0
            || !self.bus_master()
        {
            return;
        }
        for v in 0..MSIX_VECTORS {
            if self.msix_pending & (1 << v) != 0 && !self.msix_vector_masked(v) {
                self.msix_pending &= !(1 << v);
                self.raise(irq_index::MSIX, v);
            }
        }
    }

    // ---------------------------------------------------------------- DMA

    fn dma_allowed(&self, iova: u64, len: usize, need: u32) -> bool {
        if !self.bus_master() {
            return false;
        }
        let Some(end) = iova.checked_add(len as u64) else {
            return false;
        };
        // Every byte must lie in some mapping with the needed permission; mappings never overlap.
        let mut at = iova;
        while at < end {
            let Some(m) = self
                .iommu
                .iter()
                .find(|m| m.iova <= at && at - m.iova < m.len && m.flags & need == need)
            else {
                return false;
            };
            at = m.iova.saturating_add(m.len);
        }
        true
    }

    fn dma_read(&mut self, iova: u64, buf: &mut [u8]) -> std::result::Result<(), DmaRefused> {
        let ok = self.dma_allowed(iova, buf.len(), dma_flags::READ)
            && self
                .memory
                .as_ref()
                .is_some_and(|m| m.read(iova, buf).is_ok());
        if ok {
            self.stats.dma_bytes_read += buf.len() as u64;
            Ok(())
        } else {
            self.stats.dma_faults += 1;
            Err(DmaRefused)
        }
    }

    fn dma_write(&mut self, iova: u64, data: &[u8]) -> std::result::Result<(), DmaRefused> {
        let ok = self.dma_allowed(iova, data.len(), dma_flags::WRITE)
            && self
                .memory
                .as_ref()
                .is_some_and(|m| m.write(iova, data).is_ok());
        if ok {
            self.stats.dma_bytes_written += data.len() as u64;
            Ok(())
        } else {
            self.stats.dma_faults += 1;
            Err(DmaRefused)
        }
    }

    fn run_dma(&mut self, cmd: u32) {
        let r = &self.regs;
        let len = r.dma_len as usize;
        let (src, dst, pattern) = (r.dma_src, r.dma_dst, r.dma_pattern);
        let buffer_range = |off: u64| -> Option<std::ops::Range<usize>> {
            let start = usize::try_from(off).ok()?;
            let end = start.checked_add(len)?;
            (end <= BUFFER_SIZE).then_some(start..end)
        };
        let ok = match cmd {
            dma_cmd::GUEST_TO_DEVICE => match buffer_range(dst) {
                Some(range) => {
                    let mut tmp = vec![0u8; len];
                    let res = self.dma_read(src, &mut tmp);
                    if res.is_ok() {
                        self.buffer[range].copy_from_slice(&tmp);
                    }
                    res.is_ok()
                }
                None => false,
            },
            dma_cmd::DEVICE_TO_GUEST => match buffer_range(src) {
                Some(range) => {
                    let tmp = self.buffer[range].to_vec();
                    self.dma_write(dst, &tmp).is_ok()
                }
                None => false,
            },
            dma_cmd::FILL if len <= BUFFER_SIZE => {
                let tmp: Vec<u8> = pattern
                    .to_le_bytes()
                    .iter()
                    .copied()
                    .cycle()
                    .take(len)
                    .collect();
                self.dma_write(dst, &tmp).is_ok()
            }
            _ => false,
        };
        self.regs.dma_error = !ok;
        self.set_cause(cause::DMA_DONE);
    }

    // ---------------------------------------------------------------- rings

    fn read_desc(&mut self, iova: u64) -> Option<[u8; desc::SIZE as usize]> {
        let mut d = [0u8; desc::SIZE as usize];
        self.dma_read(iova, &mut d).ok().map(|_| d)
    }

    fn process_tx(&mut self) {
        if !self.regs.ring_enabled || self.regs.tx.size == 0 {
            return;
        }
        let mut sent = false;
        while self.regs.tx.head != self.regs.tx.tail {
            let Some(desc_iova) = self.regs.tx.desc_iova(self.regs.tx.head) else {
                self.regs.ring_error = true;
                break;
            };
            let Some(mut d) = self.read_desc(desc_iova) else {
                self.regs.ring_error = true;
                break;
            };
            let addr =
                u64::from_le_bytes(d[desc::ADDR..desc::ADDR + 8].try_into().unwrap_or([0; 8]));
            let len = u16::from_le_bytes([d[desc::LEN], d[desc::LEN + 1]]) as usize;
            let mut frame = vec![0u8; len.min(MAX_FRAME)];
            let fetched = len <= MAX_FRAME && self.dma_read(addr, &mut frame).is_ok();
            let flags = if fetched {
                desc::FLAG_DONE | desc::FLAG_EOP
            } else {
                self.regs.ring_error = true;
                desc::FLAG_DONE | desc::FLAG_ERROR
            };
            d[desc::FLAGS..desc::FLAGS + 2].copy_from_slice(&flags.to_le_bytes());
            if self
                .dma_write(
                    desc_iova + desc::FLAGS as u64,
                    &d[desc::FLAGS..desc::FLAGS + 2],
                )
                .is_err()
            {
                self.regs.ring_error = true;
                break;
            }
            self.regs.tx.head = (self.regs.tx.head + 1) % self.regs.tx.size;
            sent = true;
            if fetched {
                self.regs.tx_count = self.regs.tx_count.wrapping_add(1);
                self.receive(&frame);
            }
        }
        if sent {
            self.set_cause(cause::TX_DONE);
        }
    }

    /// Loops a transmitted frame back into the RX ring.
    fn receive(&mut self, frame: &[u8]) {
        let rx = &self.regs.rx;
        if !self.regs.ring_enabled || rx.size == 0 || rx.head == rx.tail {
            self.regs.rx_dropped = self.regs.rx_dropped.wrapping_add(1);
            return;
        }
        let Some(desc_iova) = rx.desc_iova(rx.head) else {
            self.regs.ring_error = true;
            return;
        };
        let Some(mut d) = self.read_desc(desc_iova) else {
            self.regs.ring_error = true;
            return;
        };
        let addr = u64::from_le_bytes(d[desc::ADDR..desc::ADDR + 8].try_into().unwrap_or([0; 8]));
        let room = u16::from_le_bytes([d[desc::LEN], d[desc::LEN + 1]]) as usize;
        let (len, flags) = if frame.len() > room {
            self.regs.rx_dropped = self.regs.rx_dropped.wrapping_add(1);
            (0u16, desc::FLAG_DONE | desc::FLAG_ERROR)
        } else if self.dma_write(addr, frame).is_ok() {
            self.regs.rx_count = self.regs.rx_count.wrapping_add(1);
            (frame.len() as u16, desc::FLAG_DONE | desc::FLAG_EOP)
        } else {
            self.regs.ring_error = true;
            (0, desc::FLAG_DONE | desc::FLAG_ERROR)
        };
        d[desc::LEN..desc::LEN + 2].copy_from_slice(&len.to_le_bytes());
        d[desc::FLAGS..desc::FLAGS + 2].copy_from_slice(&flags.to_le_bytes());
        if self
            .dma_write(desc_iova + desc::LEN as u64, &d[desc::LEN..desc::LEN + 4])
            .is_err()
        {
            self.regs.ring_error = true;
            return;
        }
        self.regs.rx.head = (self.regs.rx.head + 1) % self.regs.rx.size;
        self.set_cause(cause::RX);
    }

    // ---------------------------------------------------------------- BAR0 registers

    /// A register's value without read side effects (for partial writes).
    fn peek_reg(&self, off: u64) -> u32 {
        let r = &self.regs;
        match off {
            bar0::ID => ID_MAGIC,
            bar0::VERSION => VERSION,
            bar0::SCRATCH => r.scratch,
            bar0::CONTROL => u32::from(r.ring_enabled) * control::RING_ENABLE,
            bar0::STATUS => r.status(),
            bar0::IRQ_CAUSE => r.irq_cause,
            bar0::IRQ_MASK => r.irq_mask,
            bar0::DMA_SRC_LO => lo(r.dma_src),
            bar0::DMA_SRC_HI => hi(r.dma_src),
            bar0::DMA_DST_LO => lo(r.dma_dst),
            bar0::DMA_DST_HI => hi(r.dma_dst),
            bar0::DMA_LEN => r.dma_len,
            bar0::DMA_PATTERN => r.dma_pattern,
            bar0::MAC_LO => u32::from_le_bytes([MAC[0], MAC[1], MAC[2], MAC[3]]),
            bar0::MAC_HI => u32::from_le_bytes([MAC[4], MAC[5], 0, 0]),
            bar0::TX_RING_LO => lo(r.tx.base),
            bar0::TX_RING_HI => hi(r.tx.base),
            bar0::TX_RING_SIZE => r.tx.size,
            bar0::TX_HEAD => r.tx.head,
            bar0::TX_TAIL => r.tx.tail,
            bar0::RX_RING_LO => lo(r.rx.base),
            bar0::RX_RING_HI => hi(r.rx.base),
            bar0::RX_RING_SIZE => r.rx.size,
            bar0::RX_HEAD => r.rx.head,
            bar0::RX_TAIL => r.rx.tail,
            bar0::TX_COUNT => r.tx_count,
            bar0::RX_COUNT => r.rx_count,
            bar0::RX_DROPPED => r.rx_dropped,
            o if o >= bar0::BUFFER => self.buffer_dword(o),
            _ => 0,
        }
    }

    fn buffer_dword(&self, off: u64) -> u32 {
        let at = (off - bar0::BUFFER) as usize;
        self.buffer
            .get(at..at + 4)
            .map_or(0, |b| u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
    }

    fn read_reg(&mut self, off: u64) -> u32 {
        if off == bar0::STATUS && self.regs.busy_reads_left > 0 {
            self.regs.busy_reads_left -= 1;
            if self.regs.busy_reads_left == 0 {
                match self.regs.pending.take() {
                    Some(PendingWork::Reset) => self.regs.ready = true,
                    Some(PendingWork::Dma(cmd)) => self.run_dma(cmd),
                    None => {}
                }
            }
        }
        self.peek_reg(off)
    }

    fn write_reg(&mut self, off: u64, v: u32) {
        let busy = self.regs.busy_reads_left > 0;
        let r = &mut self.regs;
        match off {
            bar0::SCRATCH => r.scratch = v,
            bar0::CONTROL => {
                if v & control::RESET != 0 {
                    self.soft_reset();
                    self.regs.ready = false;
                    self.regs.busy_reads_left = BUSY_READS;
                    self.regs.pending = Some(PendingWork::Reset);
                } else {
                    r.ring_enabled = v & control::RING_ENABLE != 0;
                    self.process_tx();
                }
            }
            bar0::IRQ_MASK => {
                let newly_enabled = v & !r.irq_mask;
                r.irq_mask = v & cause::ALL;
                let fire = self.regs.irq_cause & newly_enabled;
                self.signal(fire);
                self.update_intx_if_pin_mode();
            }
            bar0::IRQ_ACK => {
                r.irq_cause &= !v;
                self.update_intx_if_pin_mode();
            }
            bar0::IRQ_TRIGGER => self.set_cause(v),
            bar0::DMA_SRC_LO => set_lo(&mut r.dma_src, v),
            bar0::DMA_SRC_HI => set_hi(&mut r.dma_src, v),
            bar0::DMA_DST_LO => set_lo(&mut r.dma_dst, v),
            bar0::DMA_DST_HI => set_hi(&mut r.dma_dst, v),
            bar0::DMA_LEN => r.dma_len = v,
            bar0::DMA_PATTERN => r.dma_pattern = v,
            // A command written while the engine (or a reset) is busy is ignored, as on hardware.
            bar0::DMA_CMD if !busy && r.ready => {
                r.dma_error = false;
                r.busy_reads_left = BUSY_READS;
                r.pending = Some(PendingWork::Dma(v));
            }
            bar0::TX_RING_LO => r.tx.set_base_lo(v),
            bar0::TX_RING_HI => r.tx.set_base_hi(v),
            bar0::TX_RING_SIZE => r.tx.set_size(v),
            bar0::TX_TAIL => {
                r.tx.set_tail(v);
                self.process_tx();
            }
            bar0::RX_RING_LO => r.rx.set_base_lo(v),
            bar0::RX_RING_HI => r.rx.set_base_hi(v),
            bar0::RX_RING_SIZE => r.rx.set_size(v),
            bar0::RX_TAIL => r.rx.set_tail(v),
            o if o >= bar0::BUFFER => {
                let at = (o - bar0::BUFFER) as usize;
                if let Some(b) = self.buffer.get_mut(at..at + 4) {
                    b.copy_from_slice(&v.to_le_bytes());
                }
            }
            // Read-only and unassigned registers ignore writes.
            _ => {}
        }
    }

    fn update_intx_if_pin_mode(&mut self) {
        if !self.msix_active() && !self.msi_active() {
            self.update_intx();
        }
    }

    fn bar0_read_dword(&mut self, off: u64) -> u32 {
        if off >= bar0::BUFFER {
            self.buffer_dword(off)
        } else {
            self.read_reg(off)
        }
    }

    // ---------------------------------------------------------------- BAR2 (I/O)

    fn io_read(&mut self, off: u64) -> u32 {
        match off {
            bar2::ID => ID_MAGIC,
            bar2::SCRATCH => self.regs.io_scratch,
            bar2::IRQ_CAUSE => self.regs.irq_cause,
            bar2::INDEX => self.regs.io_index,
            bar2::DATA => {
                let idx = u64::from(self.regs.io_index & !3);
                if idx < BAR0_SIZE {
                    self.bar0_read_dword(idx)
                } else {
                    u32::MAX
                }
            }
            _ => 0,
        }
    }

    fn io_peek(&self, off: u64) -> u32 {
        match off {
            bar2::SCRATCH => self.regs.io_scratch,
            bar2::INDEX => self.regs.io_index,
            bar2::DATA => {
                let idx = u64::from(self.regs.io_index & !3);
                self.peek_reg(idx)
            }
            _ => 0,
        }
    }

    fn io_write(&mut self, off: u64, v: u32) {
        match off {
            bar2::SCRATCH => self.regs.io_scratch = v,
            bar2::INDEX => self.regs.io_index = v,
            bar2::DATA => {
                let idx = u64::from(self.regs.io_index & !3);
                if idx < BAR0_SIZE {
                    self.write_reg(idx, v);
                }
            }
            _ => {}
        }
    }

    // ---------------------------------------------------------------- BAR4 (MSI-X)

    fn msix_read(&self, offset: u64, data: &mut [u8]) {
        for (i, b) in data.iter_mut().enumerate() {
            let at = offset + i as u64;
            *b = if (at as usize) < MSIX_TABLE_BYTES {
                self.msix_table[at as usize]
            } else if (MSIX_PBA_OFFSET..MSIX_PBA_OFFSET + 8).contains(&at) {
                u64::from(self.msix_pending).to_le_bytes()[(at - MSIX_PBA_OFFSET) as usize]
            } else {
                0
            };
        }
    }

    fn msix_write(&mut self, offset: u64, data: &[u8]) {
        for (i, b) in data.iter().enumerate() {
            let at = offset + i as u64;
            if (at as usize) < MSIX_TABLE_BYTES {
                let in_entry = at as usize % MSIX_ENTRY_SIZE;
                // Vector control: only the mask bit is writable.
                let v = if in_entry == 12 {
                    b & 1
                } else if in_entry > 12 {
                    0
                } else {
                    *b
                };
                self.msix_table[at as usize] = v;
            }
        }
        self.flush_msix_pending();
    }

    // ---------------------------------------------------------------- dispatch

    fn decodes(&self, region: u32) -> bool {
        let cmd = self.config.command();
        match region {
            2 => cmd & command::IO != 0,
            _ => cmd & command::MEMORY != 0,
        }
    }

    /// Splits an access into 32-bit register slots: `(slot offset, byte offset in slot, length)`.
    fn slots(offset: u64, len: usize) -> impl Iterator<Item = (u64, usize, usize)> {
        let end = offset + len as u64;
        let mut at = offset;
        std::iter::from_fn(move || {
            if at >= end {
                return None;
            }
            let slot = at & !3;
            let start = (at - slot) as usize;
            let n = ((slot + 4).min(end) - at) as usize;
            at += n as u64;
            Some((slot, start, n))
        })
    }
}

impl Device for TestDevice {
    fn describe(&self) -> DeviceDescription {
        let config_space = self.config.bytes().to_vec();
        let identity = DeviceIdentity::from_config_space(&config_space, None).unwrap_or_default();
        DeviceDescription {
            identity,
            config_space,
            regions: Self::regions(),
            irqs: self.irq_table.clone(),
            rom: Some(self.rom.clone()),
        }
    }

    fn region_read(&mut self, region: u32, offset: u64, data: &mut [u8]) -> Result<()> {
        let desc = self.describe_regions_check(region, offset, data.len())?;
        if desc == RegionKind::Rom {
            let at = offset as usize;
            data.copy_from_slice(&self.rom[at..at + data.len()]);
            return Ok(());
        }
        if !self.decodes(region) {
            // Master abort: a disabled BAR reads all-ones.
            data.fill(0xff);
            return Ok(());
        }
        if region == 4 {
            self.msix_read(offset, data);
            return Ok(());
        }
        let mut pos = 0;
        for (slot, start, n) in Self::slots(offset, data.len()) {
            let v = if region == 0 {
                self.bar0_read_dword(slot)
            } else {
                self.io_read(slot)
            };
            data[pos..pos + n].copy_from_slice(&v.to_le_bytes()[start..start + n]);
            pos += n;
        }
        Ok(())
    }

    fn region_write(&mut self, region: u32, offset: u64, data: &[u8]) -> Result<()> {
        let kind = self.describe_regions_check(region, offset, data.len())?;
        if kind == RegionKind::Rom {
            return Err(DeviceError::Invalid(
                "the expansion ROM is read-only".into(),
            ));
        }
        if !self.decodes(region) {
            return Ok(());
        }
        if region == 4 {
            self.msix_write(offset, data);
            return Ok(());
        }
        let mut pos = 0;
        for (slot, start, n) in Self::slots(offset, data.len()) {
            let old = if region == 0 {
                self.peek_reg(slot)
            } else {
                self.io_peek(slot)
            };
            let mut bytes = old.to_le_bytes();
            bytes[start..start + n].copy_from_slice(&data[pos..pos + n]);
            let v = u32::from_le_bytes(bytes);
            if region == 0 {
                self.write_reg(slot, v);
            } else {
                self.io_write(slot, v);
            }
            pos += n;
        }
        Ok(())
    }

    fn config_read(&mut self, offset: u32, data: &mut [u8]) -> Result<()> {
        if self.config.read(offset as usize, data) {
            Ok(())
        } else {
            Err(config_out_of_range(offset, data.len()))
        }
    }

    fn config_write(&mut self, offset: u32, data: &[u8]) -> Result<()> {
        if !self.config.write(offset as usize, data) {
            return Err(config_out_of_range(offset, data.len()));
        }
        // Command (INTx disable, bus master) and MSI/MSI-X control change how interrupts go out.
        if self.msix_active() || self.msi_active() {
            self.set_intx_level(false);
        } else {
            self.update_intx();
        }
        self.flush_msix_pending();
        Ok(())
    }

    fn set_irqs(&mut self, request: IrqSetRequest) -> Result<()> {
        self.irqs.set_irqs(request)?;
        self.update_intx_if_pin_mode();
        Ok(())
    }

    fn dma_map(&mut self, region: DmaRegion) -> Result<()> {
        let m = region.mapping;
        let end = m
            .iova
            .checked_add(m.len)
            .filter(|_| m.len > 0)
            .ok_or_else(|| {
                DeviceError::Invalid(format!(
                    "DMA mapping of {:#x} bytes at {:#x} is empty or wraps",
                    m.len, m.iova
                ))
            })?;
        if let Some(o) = self
            .iommu
            .iter()
            .find(|o| o.iova < end && m.iova < o.iova + o.len)
        {
            return Err(DeviceError::Invalid(format!(
                "DMA mapping {:#x}+{:#x} overlaps {:#x}+{:#x}",
                m.iova, m.len, o.iova, o.len
            )));
        }
        self.iommu.push(m);
        Ok(())
    }

    fn dma_unmap(&mut self, mapping: DmaMapping) -> Result<()> {
        if mapping.flags & dma_flags::UNMAP_ALL != 0 {
            self.iommu.clear();
            return Ok(());
        }
        let end = mapping.iova.saturating_add(mapping.len);
        self.iommu
            .retain(|m| !(m.iova >= mapping.iova && m.iova.saturating_add(m.len) <= end));
        Ok(())
    }

    fn reset(&mut self) -> Result<()> {
        // A function-level reset: VFIO saves and restores config space around it, so only the
        // device's internal state returns to power-on.
        self.soft_reset();
        self.msix_table = [0; MSIX_TABLE_BYTES];
        self.msix_pending = 0;
        Ok(())
    }

    fn attach_memory(&mut self, memory: Arc<dyn GuestMemory>) {
        self.memory = Some(memory);
    }

    fn disconnect(&mut self) {
        // The client's eventfds and memory go with it.
        self.irqs.clear();
        self.memory = None;
        self.iommu.clear();
    }
}

impl TestDevice {
    /// Checks an access against the BAR/ROM table without allocating (this is on every access).
    fn describe_regions_check(&self, region: u32, offset: u64, len: usize) -> Result<RegionKind> {
        let (kind, size) = match region {
            0 => (RegionKind::Mmio, BAR0_SIZE),
            2 => (RegionKind::Pio, BAR2_SIZE),
            4 => (RegionKind::Mmio, BAR4_SIZE),
            region_index::ROM => (RegionKind::Rom, ROM_SIZE),
            _ => return Err(DeviceError::NoSuchRegion(region)),
        };
        match offset.checked_add(len as u64) {
            Some(end) if end <= size => Ok(kind),
            _ => Err(DeviceError::OutOfRange {
                region,
                offset,
                len: len as u64,
                size,
            }),
        }
    }
}

fn config_out_of_range(offset: u32, len: usize) -> DeviceError {
    DeviceError::OutOfRange {
        region: region_index::CONFIG,
        offset: u64::from(offset),
        len: len as u64,
        size: CONFIG_SIZE as u64,
    }
}

#[cfg(test)]
mod tests;
