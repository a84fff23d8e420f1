//! The test device's PCI configuration space: header type 0, four BARs, an expansion ROM BAR, MSI
//! and MSI-X capabilities, with hardware write semantics (a per-byte write mask, BAR sizing,
//! read-only type bits).

use crate::regs::*;

/// Command register bits.
pub mod command {
    /// I/O space enable.
    pub const IO: u16 = 1 << 0;
    /// Memory space enable.
    pub const MEMORY: u16 = 1 << 1;
    /// Bus master enable (DMA and MSI/MSI-X).
    pub const BUS_MASTER: u16 = 1 << 2;
    /// INTx disable.
    pub const INTX_DISABLE: u16 = 1 << 10;
}

/// Status register bit: INTx is asserted.
pub const STATUS_INTERRUPT: u16 = 1 << 3;
/// Status register bit: the capability list is valid.
pub const STATUS_CAP_LIST: u16 = 1 << 4;

/// MSI message control: enable.
pub const MSI_ENABLE: u16 = 1 << 0;
/// MSI message control: 64-bit address capable.
pub const MSI_64BIT: u16 = 1 << 7;
/// MSI-X message control: function mask.
pub const MSIX_FUNCTION_MASK: u16 = 1 << 14;
/// MSI-X message control: enable.
pub const MSIX_ENABLE: u16 = 1 << 15;

/// Configuration space with its write mask.
#[derive(Clone, Debug)]
pub struct ConfigSpace {
    bytes: [u8; CONFIG_SIZE],
    writable: [u8; CONFIG_SIZE],
}

fn put(buf: &mut [u8], off: usize, v: &[u8]) {
    buf[off..off + v.len()].copy_from_slice(v);
}

impl ConfigSpace {
    /// The power-on configuration space.
    pub fn new() -> Self {
        let mut b = [0u8; CONFIG_SIZE];
        let mut w = [0u8; CONFIG_SIZE];
        put(&mut b, 0x00, &VENDOR_ID.to_le_bytes());
        put(&mut b, 0x02, &DEVICE_ID.to_le_bytes());
        let cmd_mask = command::IO | command::MEMORY | command::BUS_MASTER | command::INTX_DISABLE;
        put(&mut w, 0x04, &cmd_mask.to_le_bytes());
        put(&mut b, 0x06, &STATUS_CAP_LIST.to_le_bytes());
        b[0x08] = REVISION;
        put(&mut b, 0x09, &CLASS_CODE.to_le_bytes()[..3]);
        w[0x0c] = 0xff; // cache line size
        w[0x0d] = 0xff; // latency timer
                        // BAR0: 32-bit non-prefetchable memory; the writable bits are exactly the size mask.
        put(&mut w, 0x10, &(!(BAR0_SIZE as u32 - 1)).to_le_bytes());
        // BAR2: I/O space (bit 0 reads 1, read-only).
        b[0x18] = 0x01;
        put(
            &mut w,
            0x18,
            &(!(BAR2_SIZE as u32 - 1) & !0x3).to_le_bytes(),
        );
        // BAR4/5: 64-bit memory (type bits 0b10 << 1).
        b[0x20] = 0x04;
        put(&mut w, 0x20, &(!(BAR4_SIZE as u32 - 1)).to_le_bytes());
        put(&mut w, 0x24, &u32::MAX.to_le_bytes());
        put(&mut b, 0x2c, &SUBSYSTEM_VENDOR_ID.to_le_bytes());
        put(&mut b, 0x2e, &SUBSYSTEM_ID.to_le_bytes());
        // Expansion ROM BAR: address bits by size, plus the enable bit.
        put(&mut w, 0x30, &((!(ROM_SIZE as u32 - 1)) | 1).to_le_bytes());
        b[0x34] = MSI_CAP as u8;
        w[0x3c] = 0xff; // interrupt line
        b[0x3d] = 0x01; // interrupt pin A
                        // MSI: 64-bit, one vector.
        let m = MSI_CAP as usize;
        b[m] = 0x05;
        b[m + 1] = MSIX_CAP as u8;
        put(&mut b, m + 2, &MSI_64BIT.to_le_bytes());
        put(&mut w, m + 2, &MSI_ENABLE.to_le_bytes());
        put(&mut w, m + 4, &0xffff_fffcu32.to_le_bytes());
        put(&mut w, m + 8, &u32::MAX.to_le_bytes());
        put(&mut w, m + 12, &0xffffu16.to_le_bytes());
        // MSI-X: table and PBA in BAR4.
        let x = MSIX_CAP as usize;
        b[x] = 0x11;
        b[x + 1] = 0x00;
        put(&mut b, x + 2, &((MSIX_VECTORS - 1) as u16).to_le_bytes());
        put(
            &mut w,
            x + 2,
            &(MSIX_ENABLE | MSIX_FUNCTION_MASK).to_le_bytes(),
        );
        put(
            &mut b,
            x + 4,
            &((MSIX_TABLE_OFFSET as u32) | 4).to_le_bytes(),
        );
        put(&mut b, x + 8, &((MSIX_PBA_OFFSET as u32) | 4).to_le_bytes());
        ConfigSpace {
            bytes: b,
            writable: w,
        }
    }

    /// The raw bytes.
    pub fn bytes(&self) -> &[u8; CONFIG_SIZE] {
        &self.bytes
    }

    /// Reads `data.len()` bytes at `offset`; `false` if the range is outside config space.
    pub fn read(&self, offset: usize, data: &mut [u8]) -> bool {
        match offset.checked_add(data.len()) {
            Some(end) if end <= CONFIG_SIZE => {
                data.copy_from_slice(&self.bytes[offset..end]);
                true
            }
            _ => false,
        }
    }

    /// Writes `data` at `offset` through the write mask; `false` if outside config space.
    pub fn write(&mut self, offset: usize, data: &[u8]) -> bool {
        match offset.checked_add(data.len()) {
            Some(end) if end <= CONFIG_SIZE => {
                for (i, v) in data.iter().enumerate() {
                    let at = offset + i;
                    let w = self.writable[at];
                    self.bytes[at] = (self.bytes[at] & !w) | (v & w);
                }
                true
            }
            _ => false,
        }
    }

    fn u16_at(&self, off: usize) -> u16 {
        u16::from_le_bytes([self.bytes[off], self.bytes[off + 1]])
    }

    /// The command register.
    pub fn command(&self) -> u16 {
        self.u16_at(0x04)
    }

    /// MSI message control.
    pub fn msi_control(&self) -> u16 {
        self.u16_at(MSI_CAP as usize + 2)
    }

    /// MSI-X message control.
    pub fn msix_control(&self) -> u16 {
        self.u16_at(MSIX_CAP as usize + 2)
    }

    /// Sets or clears the status register's interrupt bit (INTx level).
    pub fn set_interrupt_status(&mut self, asserted: bool) {
        let mut s = self.u16_at(0x06);
        if asserted {
            s |= STATUS_INTERRUPT;
        } else {
            s &= !STATUS_INTERRUPT;
        }
        put(&mut self.bytes, 0x06, &s.to_le_bytes());
    }
}

impl Default for ConfigSpace {
    fn default() -> Self {
        Self::new()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn r32(c: &ConfigSpace, off: usize) -> u32 {
        let mut b = [0u8; 4];
        assert!(c.read(off, &mut b));
        u32::from_le_bytes(b)
    }

    #[test]
    fn bar_sizing_reads_back_size_masks_and_type_bits() {
        let mut c = ConfigSpace::new();
        for (off, want) in [
            (0x10, 0xffff_f000u32),
            (0x14, 0),
            (0x18, 0xffff_ffe1),
            (0x20, 0xffff_f004),
            (0x24, 0xffff_ffff),
            (0x30, 0xffff_e001),
        ] {
            assert!(c.write(off, &u32::MAX.to_le_bytes()));
            assert_eq!(r32(&c, off), want, "BAR at {off:#x}");
        }
        assert!(c.write(0x10, &0xfebf_1234u32.to_le_bytes()));
        assert_eq!(r32(&c, 0x10), 0xfebf_1000);
    }

    #[test]
    fn read_only_fields_ignore_writes_and_out_of_range_fails() {
        let mut c = ConfigSpace::new();
        assert!(c.write(0, &[0xff; 4]));
        assert_eq!(
            r32(&c, 0),
            u32::from(VENDOR_ID) | (u32::from(DEVICE_ID) << 16)
        );
        assert!(c.write(4, &0xffffu16.to_le_bytes()));
        assert_eq!(c.command(), 0x0407);
        assert!(!c.write(255, &[0, 0]));
        let mut b = [0u8; 2];
        assert!(!c.read(usize::MAX, &mut b));
        assert!(c.write(MSIX_CAP as usize + 2, &0xffffu16.to_le_bytes()));
        assert_eq!(c.msix_control(), 0xc003);
    }
}
