//! Rebuilding a device's configuration-space snapshot and its region and IRQ tables from the
//! config accesses a log shows.

use hwrr_formats::{region_flags, IrqInfo, RegionInfo, RegionKind};

/// Size of extended configuration space.
pub const EXTENDED_CONFIG: usize = 4096;
/// Size of conventional configuration space.
pub const CONVENTIONAL_CONFIG: usize = 256;

/// The access width of an emulated-device config access. QEMU's `pci_cfg_read/write` events do not
/// print the length, so it is inferred: the width of the standard header field at `offset`
/// (vendor/device/command/status/class/subsystem words, BAR and ROM dwords, byte fields), widened
/// to the smallest of 1/2/4 bytes that holds `value`, and narrowed to what the offset's alignment
/// allows. Offsets from 0x40 (capabilities) use the value alone.
pub fn infer_config_width(offset: u32, value: u32) -> u8 {
    let by_value: u8 = if value > 0xffff {
        4
    } else if value > 0xff {
        2
    } else {
        1
    };
    let by_field: u8 = match offset {
        0x00 | 0x02 | 0x04 | 0x06 | 0x0a | 0x2c | 0x2e => 2,
        0x10 | 0x14 | 0x18 | 0x1c | 0x20 | 0x24 | 0x28 | 0x30 => 4,
        _ => 1,
    };
    let mut w = by_value.max(by_field);
    while w > 1 && offset % w as u32 != 0 {
        w /= 2;
    }
    w
}

/// The BAR whose register starts at `offset`, if any.
fn bar_at(offset: u32) -> Option<usize> {
    match offset {
        0x10..=0x27 if offset % 4 == 0 => Some(((offset - 0x10) / 4) as usize),
        0x30 => Some(6),
        _ => None,
    }
}

/// Everything the log says about one device's config space.
#[derive(Debug, Clone)]
pub struct ConfigRecon {
    /// The first value read at each byte before any write to it.
    first: Vec<Option<u8>>,
    /// Bytes written at least once.
    written: Vec<bool>,
    /// The current contents as the log shows them (reads and writes applied).
    live: Vec<u8>,
    /// Highest byte touched + 1.
    extent: usize,
    /// BARs whose register last saw a sizing write (all address bits set).
    sizing: [bool; 7],
    /// Sizes learned from sizing reads.
    pub sized: [Option<u64>; 7],
    /// I/O (true) vs memory (false) as seen in BAR values read.
    pub bar_io: [Option<bool>; 7],
    /// BARs that are the upper half of a 64-bit memory BAR.
    pub upper_half: [bool; 7],
}

impl Default for ConfigRecon {
    fn default() -> Self {
        ConfigRecon {
            first: vec![None; EXTENDED_CONFIG],
            written: vec![false; EXTENDED_CONFIG],
            live: vec![0; EXTENDED_CONFIG],
            extent: 0,
            sizing: [false; 7],
            sized: [None; 7],
            bar_io: [None; 7],
            upper_half: [false; 7],
        }
    }
}

impl ConfigRecon {
    /// Records a config read of `width` bytes.
    pub fn read(&mut self, offset: u32, width: u8, value: u32) {
        let o = offset as usize;
        let w = width as usize;
        if o + w > EXTENDED_CONFIG {
            return;
        }
        self.extent = self.extent.max(o + w);
        if let Some(bar) = bar_at(offset).filter(|&b| w == 4 && !self.upper_half[b]) {
            if self.sizing[bar] {
                self.sizing[bar] = false;
                self.learn_size(bar, value);
            } else if bar < 6 && value != 0 {
                self.learn_kind(bar, value);
            }
        }
        for i in 0..w {
            let b = (value >> (8 * i)) as u8;
            if !self.written[o + i] && self.first[o + i].is_none() {
                self.first[o + i] = Some(b);
            }
            self.live[o + i] = b;
        }
    }

    /// Records a config write of `width` bytes.
    pub fn write(&mut self, offset: u32, width: u8, value: u32) {
        let o = offset as usize;
        let w = width as usize;
        if o + w > EXTENDED_CONFIG {
            return;
        }
        self.extent = self.extent.max(o + w);
        if let Some(bar) = bar_at(offset).filter(|_| w == 4) {
            let addr_bits = if bar == 6 { 0xffff_f800 } else { 0xffff_fff0 };
            self.sizing[bar] = value & addr_bits == addr_bits;
        }
        for i in 0..w {
            self.written[o + i] = true;
            self.live[o + i] = (value >> (8 * i)) as u8;
        }
    }

    fn learn_kind(&mut self, bar: usize, raw: u32) {
        let io = raw & 1 == 1;
        self.bar_io[bar] = Some(io);
        if !io && (raw >> 1) & 3 == 2 && bar < 5 {
            self.upper_half[bar + 1] = true;
        }
    }

    fn learn_size(&mut self, bar: usize, raw: u32) {
        let mask = if bar == 6 {
            0xffff_f800
        } else {
            self.learn_kind(bar, raw);
            if raw & 1 == 1 {
                0xffff_fffc
            } else {
                0xffff_fff0
            }
        };
        let bits = raw & mask;
        if bits != 0 {
            self.sized[bar] = Some((!bits).wrapping_add(1) as u64);
        }
    }

    /// True when the log touched extended config space (offset ≥ 256).
    pub fn extended(&self) -> bool {
        self.extent > CONVENTIONAL_CONFIG
    }

    /// The snapshot: first values read, zero where the log never read a byte before writing it.
    pub fn snapshot(&self) -> Vec<u8> {
        let len = if self.extended() {
            EXTENDED_CONFIG
        } else {
            CONVENTIONAL_CONFIG
        };
        self.first[..len].iter().map(|b| b.unwrap_or(0)).collect()
    }

    /// A little-endian word of the live config space.
    pub fn live_u16(&self, offset: usize) -> u16 {
        match self.live.get(offset..offset + 2) {
            Some(b) => u16::from_le_bytes([b[0], b[1]]),
            None => 0,
        }
    }

    /// A little-endian dword of the live config space.
    pub fn live_u32(&self, offset: usize) -> u32 {
        match self.live.get(offset..offset + 4) {
            Some(b) => u32::from_le_bytes([b[0], b[1], b[2], b[3]]),
            None => 0,
        }
    }
}

/// Walks the standard capability list of a snapshot and returns the offset of capability `id`.
pub fn find_capability(config: &[u8], id: u8) -> Option<usize> {
    let status = u16::from_le_bytes([*config.get(6)?, *config.get(7)?]);
    if status & 0x10 == 0 && config.get(0x34).copied().unwrap_or(0) == 0 {
        return None;
    }
    let mut ptr = (*config.get(0x34)? & 0xfc) as usize;
    for _ in 0..48 {
        if ptr < 0x40 || ptr + 1 >= config.len().min(CONVENTIONAL_CONFIG) {
            return None;
        }
        if config[ptr] == id {
            return Some(ptr);
        }
        ptr = (config[ptr + 1] & 0xfc) as usize;
    }
    None
}

/// MSI-X table placement read from the capability: (BAR, offset in the BAR, entries).
pub fn msix_table(config: &[u8]) -> Option<(usize, u64, u32)> {
    let cap = find_capability(config, 0x11)?;
    let ctrl = u16::from_le_bytes([*config.get(cap + 2)?, *config.get(cap + 3)?]);
    let t = u32::from_le_bytes([
        *config.get(cap + 4)?,
        *config.get(cap + 5)?,
        *config.get(cap + 6)?,
        *config.get(cap + 7)?,
    ]);
    Some(((t & 7) as usize, (t & !7) as u64, (ctrl & 0x7ff) as u32 + 1))
}

/// MSI vectors the capability offers (Multiple Message Capable).
pub fn msi_vectors(config: &[u8]) -> Option<u32> {
    let cap = find_capability(config, 0x05)?;
    let ctrl = u16::from_le_bytes([*config.get(cap + 2)?, *config.get(cap + 3)?]);
    Some(1 << ((ctrl >> 1) & 7).min(5))
}

/// One region's description for the table.
pub fn region(index: u32, kind: RegionKind, size: u64, alias_of: Option<u32>) -> RegionInfo {
    let flags = match kind {
        RegionKind::Rom => region_flags::READ,
        _ => region_flags::READ | region_flags::WRITE,
    };
    RegionInfo {
        index,
        kind,
        size,
        flags,
        alias_of,
    }
}

/// The IRQ table: INTx when the interrupt pin is set (or INTx was seen), MSI and MSI-X when
/// their capabilities (or the vectors seen) say so.
pub fn irq_table(intx: bool, msi: Option<u32>, msix: Option<u32>) -> Vec<IrqInfo> {
    const EVENTFD: u32 = 1;
    const MASKABLE: u32 = 2;
    const AUTOMASKED: u32 = 4;
    const NORESIZE: u32 = 8;
    let mut v = Vec::new();
    if intx {
        v.push(IrqInfo {
            index: 0,
            count: 1,
            flags: EVENTFD | MASKABLE | AUTOMASKED,
        });
    }
    if let Some(n) = msi {
        v.push(IrqInfo {
            index: 1,
            count: n,
            flags: EVENTFD | NORESIZE,
        });
    }
    if let Some(n) = msix {
        v.push(IrqInfo {
            index: 2,
            count: n,
            flags: EVENTFD | NORESIZE,
        });
    }
    v
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn widths_follow_fields_values_and_alignment() {
        assert_eq!(infer_config_width(0x0, 0x10ec), 2);
        assert_eq!(infer_config_width(0x0, 0x8139_10ec), 4);
        assert_eq!(infer_config_width(0xe, 0), 1);
        assert_eq!(infer_config_width(0x14, 0), 4);
        assert_eq!(infer_config_width(0x3c, 0xb), 1);
        assert_eq!(infer_config_width(0x42, 0x8010), 2);
        assert_eq!(infer_config_width(0x41, 0x8010), 1);
    }

    #[test]
    fn sizing_learns_sizes_without_polluting_the_snapshot() {
        let mut c = ConfigRecon::default();
        c.read(0x10, 4, 0x1);
        c.write(0x10, 4, 0xffff_ffff);
        c.read(0x10, 4, 0xffff_ff01);
        c.write(0x10, 4, 0xc001);
        c.read(0x10, 4, 0xc001);
        assert_eq!(c.sized[0], Some(0x100));
        assert_eq!(c.bar_io[0], Some(true));
        assert_eq!(&c.snapshot()[0x10..0x14], &[1, 0, 0, 0]);
        c.write(0x30, 4, 0xffff_f800);
        c.read(0x30, 4, 0xfffc_0000);
        assert_eq!(c.sized[6], Some(0x40000));
        assert!(!c.extended());
        c.read(0x100, 4, 0x1);
        assert_eq!(c.snapshot().len(), 4096);
    }
}
