//! The test device's register map: PCI identity, BAR layout, BAR0 and BAR2 registers, descriptor
//! format. Public so drivers, register maps for divergence reports and tests share one definition.

/// PCI vendor id. 0x1234 is not assigned by the PCI-SIG; QEMU uses it for its own emulated devices
/// (std VGA, edu), so no real hardware driver claims it.
pub const VENDOR_ID: u16 = 0x1234;
/// PCI device id ("rr"), unused by QEMU's own 0x1234 devices.
pub const DEVICE_ID: u16 = 0x7272;
/// Subsystem vendor id.
pub const SUBSYSTEM_VENDOR_ID: u16 = 0x1234;
/// Subsystem id.
pub const SUBSYSTEM_ID: u16 = 0x0001;
/// Revision id.
pub const REVISION: u8 = 0x01;
/// Class code: base class 0xff ("device does not fit any defined class").
pub const CLASS_CODE: u32 = 0xff_00_00;

/// BAR0: 4 KiB of 32-bit MMIO registers plus the device buffer window.
pub const BAR0_SIZE: u64 = 4096;
/// BAR2: I/O ports.
pub const BAR2_SIZE: u64 = 32;
/// BAR4 (64-bit): MSI-X table and PBA.
pub const BAR4_SIZE: u64 = 4096;
/// Expansion ROM size.
pub const ROM_SIZE: u64 = 8192;
/// Configuration space size (conventional PCI).
pub const CONFIG_SIZE: usize = 256;

/// MSI-X vectors.
pub const MSIX_VECTORS: u32 = 4;
/// Offset of the MSI-X table in BAR4.
pub const MSIX_TABLE_OFFSET: u64 = 0;
/// Offset of the MSI-X PBA in BAR4.
pub const MSIX_PBA_OFFSET: u64 = 0x800;
/// Config-space offset of the MSI capability.
pub const MSI_CAP: u32 = 0x40;
/// Config-space offset of the MSI-X capability.
pub const MSIX_CAP: u32 = 0x50;

/// BAR0 registers (all 32 bits wide).
pub mod bar0 {
    /// Device identification magic ("HWRR" little-endian), read-only.
    pub const ID: u64 = 0x000;
    /// Version: major << 16 | minor, read-only.
    pub const VERSION: u64 = 0x004;
    /// Free read/write register.
    pub const SCRATCH: u64 = 0x008;
    /// Control: write [`super::control`] bits.
    pub const CONTROL: u64 = 0x00c;
    /// Status: [`super::status`] bits, read-only.
    pub const STATUS: u64 = 0x010;
    /// Latched interrupt causes ([`super::cause`] bits), read-only.
    pub const IRQ_CAUSE: u64 = 0x014;
    /// Enabled interrupt causes, read/write.
    pub const IRQ_MASK: u64 = 0x018;
    /// Write 1s to clear causes; reads 0.
    pub const IRQ_ACK: u64 = 0x01c;
    /// Write 1s to raise causes by software; reads 0.
    pub const IRQ_TRIGGER: u64 = 0x020;
    /// DMA source: an IOVA (low half) or a device-buffer offset, by command.
    pub const DMA_SRC_LO: u64 = 0x024;
    /// DMA source, high half.
    pub const DMA_SRC_HI: u64 = 0x028;
    /// DMA destination: an IOVA (low half) or a device-buffer offset, by command.
    pub const DMA_DST_LO: u64 = 0x02c;
    /// DMA destination, high half.
    pub const DMA_DST_HI: u64 = 0x030;
    /// DMA length in bytes.
    pub const DMA_LEN: u64 = 0x034;
    /// DMA fill pattern (repeated little-endian).
    pub const DMA_PATTERN: u64 = 0x038;
    /// DMA command: a [`super::dma_cmd`] value; starts the engine.
    pub const DMA_CMD: u64 = 0x03c;
    /// MAC address bytes 0..4, read-only.
    pub const MAC_LO: u64 = 0x040;
    /// MAC address bytes 4..6 in the low half, read-only.
    pub const MAC_HI: u64 = 0x044;
    /// TX descriptor ring base, low half.
    pub const TX_RING_LO: u64 = 0x080;
    /// TX descriptor ring base, high half.
    pub const TX_RING_HI: u64 = 0x084;
    /// TX ring size in descriptors (power of two, at most [`super::MAX_RING`]).
    pub const TX_RING_SIZE: u64 = 0x088;
    /// TX head: next descriptor the device consumes, read-only.
    pub const TX_HEAD: u64 = 0x08c;
    /// TX tail: one past the last descriptor the driver filled (doorbell).
    pub const TX_TAIL: u64 = 0x090;
    /// RX descriptor ring base, low half.
    pub const RX_RING_LO: u64 = 0x0a0;
    /// RX descriptor ring base, high half.
    pub const RX_RING_HI: u64 = 0x0a4;
    /// RX ring size in descriptors.
    pub const RX_RING_SIZE: u64 = 0x0a8;
    /// RX head: next descriptor the device fills, read-only.
    pub const RX_HEAD: u64 = 0x0ac;
    /// RX tail: one past the last descriptor the driver made available.
    pub const RX_TAIL: u64 = 0x0b0;
    /// Frames transmitted since reset, read-only.
    pub const TX_COUNT: u64 = 0x0c0;
    /// Frames received since reset, read-only.
    pub const RX_COUNT: u64 = 0x0c4;
    /// Frames dropped since reset (no RX descriptor available), read-only.
    pub const RX_DROPPED: u64 = 0x0c8;
    /// Start of the device-buffer window (read/write, any width).
    pub const BUFFER: u64 = 0x800;
}

/// Size of the device buffer (the DMA engine's device-side memory), visible at [`bar0::BUFFER`].
pub const BUFFER_SIZE: usize = 2048;
/// Largest ring the device accepts.
pub const MAX_RING: u32 = 256;
/// Largest frame the loopback NIC moves.
pub const MAX_FRAME: usize = 2048;
/// How many STATUS reads a command keeps BUSY set for.
pub const BUSY_READS: u32 = 3;
/// ID register value ("HWRR").
pub const ID_MAGIC: u32 = u32::from_le_bytes(*b"HWRR");
/// VERSION register value (1.0).
pub const VERSION: u32 = 0x0001_0000;
/// The MAC address the device reports.
pub const MAC: [u8; 6] = [0x02, 0x68, 0x77, 0x72, 0x72, 0x01];

/// CONTROL bits.
pub mod control {
    /// Soft reset: registers, rings and causes return to their reset values.
    pub const RESET: u32 = 1 << 0;
    /// Enable the TX/RX rings.
    pub const RING_ENABLE: u32 = 1 << 1;
}

/// STATUS bits.
pub mod status {
    /// A command (reset or DMA) is in progress.
    pub const BUSY: u32 = 1 << 0;
    /// The device finished its reset and accepts commands.
    pub const READY: u32 = 1 << 1;
    /// The last DMA command failed (bad length, bus mastering off, or an IOMMU fault).
    pub const DMA_ERROR: u32 = 1 << 2;
    /// The rings are enabled.
    pub const RING_ENABLED: u32 = 1 << 3;
    /// A ring descriptor could not be processed (IOMMU fault or bad length).
    pub const RING_ERROR: u32 = 1 << 4;
}

/// Interrupt cause bits; cause bit `n` uses MSI-X vector `n`.
pub mod cause {
    /// A DMA command completed (check STATUS.DMA_ERROR).
    pub const DMA_DONE: u32 = 1 << 0;
    /// TX descriptors were consumed.
    pub const TX_DONE: u32 = 1 << 1;
    /// A frame was received into the RX ring.
    pub const RX: u32 = 1 << 2;
    /// Raised by software through IRQ_TRIGGER.
    pub const SOFT: u32 = 1 << 3;
    /// Every cause.
    pub const ALL: u32 = DMA_DONE | TX_DONE | RX | SOFT;
}

/// DMA_CMD values.
pub mod dma_cmd {
    /// Device reads guest memory: DMA_SRC is an IOVA, DMA_DST a device-buffer offset.
    pub const GUEST_TO_DEVICE: u32 = 1;
    /// Device writes guest memory: DMA_SRC is a device-buffer offset, DMA_DST an IOVA.
    pub const DEVICE_TO_GUEST: u32 = 2;
    /// Device fills guest memory at DMA_DST with DMA_PATTERN.
    pub const FILL: u32 = 3;
}

/// BAR2 I/O registers (32 bits wide).
pub mod bar2 {
    /// The ID magic again, read-only.
    pub const ID: u64 = 0x00;
    /// An I/O scratch register of its own.
    pub const SCRATCH: u64 = 0x04;
    /// A read-only mirror of IRQ_CAUSE.
    pub const IRQ_CAUSE: u64 = 0x08;
    /// Index register: a BAR0 register offset for [`DATA`].
    pub const INDEX: u64 = 0x0c;
    /// Data register: reads/writes the BAR0 register selected by [`INDEX`].
    pub const DATA: u64 = 0x10;
}

/// Ring descriptors: 16 bytes, little-endian, in guest memory.
pub mod desc {
    /// Size of one descriptor.
    pub const SIZE: u64 = 16;
    /// Offset of the 64-bit buffer IOVA.
    pub const ADDR: usize = 0;
    /// Offset of the 16-bit length (TX: frame length; RX: buffer size in, frame length out).
    pub const LEN: usize = 8;
    /// Offset of the 16-bit flags.
    pub const FLAGS: usize = 10;
    /// Flag: the device is done with the descriptor.
    pub const FLAG_DONE: u16 = 1 << 0;
    /// Flag: end of packet.
    pub const FLAG_EOP: u16 = 1 << 1;
    /// Flag: the device could not process the descriptor.
    pub const FLAG_ERROR: u16 = 1 << 2;
}

/// The name of the register at `offset` of VFIO region `region` (BAR0, BAR2 or BAR4), for
/// divergence reports and trace dumps. Offsets inside a 32-bit register name that register.
pub fn register_name(region: u32, offset: u64) -> Option<&'static str> {
    let slot = offset & !3;
    match region {
        0 if (bar0::BUFFER..BAR0_SIZE).contains(&offset) => Some("BUFFER"),
        0 => Some(match slot {
            bar0::ID => "ID",
            bar0::VERSION => "VERSION",
            bar0::SCRATCH => "SCRATCH",
            bar0::CONTROL => "CONTROL",
            bar0::STATUS => "STATUS",
            bar0::IRQ_CAUSE => "IRQ_CAUSE",
            bar0::IRQ_MASK => "IRQ_MASK",
            bar0::IRQ_ACK => "IRQ_ACK",
            bar0::IRQ_TRIGGER => "IRQ_TRIGGER",
            bar0::DMA_SRC_LO => "DMA_SRC_LO",
            bar0::DMA_SRC_HI => "DMA_SRC_HI",
            bar0::DMA_DST_LO => "DMA_DST_LO",
            bar0::DMA_DST_HI => "DMA_DST_HI",
            bar0::DMA_LEN => "DMA_LEN",
            bar0::DMA_PATTERN => "DMA_PATTERN",
            bar0::DMA_CMD => "DMA_CMD",
            bar0::MAC_LO => "MAC_LO",
            bar0::MAC_HI => "MAC_HI",
            bar0::TX_RING_LO => "TX_RING_LO",
            bar0::TX_RING_HI => "TX_RING_HI",
            bar0::TX_RING_SIZE => "TX_RING_SIZE",
            bar0::TX_HEAD => "TX_HEAD",
            bar0::TX_TAIL => "TX_TAIL",
            bar0::RX_RING_LO => "RX_RING_LO",
            bar0::RX_RING_HI => "RX_RING_HI",
            bar0::RX_RING_SIZE => "RX_RING_SIZE",
            bar0::RX_HEAD => "RX_HEAD",
            bar0::RX_TAIL => "RX_TAIL",
            bar0::TX_COUNT => "TX_COUNT",
            bar0::RX_COUNT => "RX_COUNT",
            bar0::RX_DROPPED => "RX_DROPPED",
            _ => return None,
        }),
        2 => Some(match slot {
            bar2::ID => "IO_ID",
            bar2::SCRATCH => "IO_SCRATCH",
            bar2::IRQ_CAUSE => "IO_IRQ_CAUSE",
            bar2::INDEX => "IO_INDEX",
            bar2::DATA => "IO_DATA",
            _ => return None,
        }),
        4 if offset < MSIX_TABLE_OFFSET + u64::from(MSIX_VECTORS) * 16 => Some("MSIX_TABLE"),
        4 if (MSIX_PBA_OFFSET..MSIX_PBA_OFFSET + 8).contains(&offset) => Some("MSIX_PBA"),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn register_names() {
        assert_eq!(register_name(0, bar0::STATUS), Some("STATUS"));
        assert_eq!(register_name(0, bar0::STATUS + 2), Some("STATUS"));
        assert_eq!(register_name(0, 0x7fc), None);
        assert_eq!(register_name(0, bar0::BUFFER + 100), Some("BUFFER"));
        assert_eq!(register_name(2, bar2::DATA), Some("IO_DATA"));
        assert_eq!(register_name(4, 0x3c), Some("MSIX_TABLE"));
        assert_eq!(register_name(4, MSIX_PBA_OFFSET), Some("MSIX_PBA"));
        assert_eq!(register_name(4, 0x40), None);
        assert_eq!(register_name(6, 0), None);
    }
}
