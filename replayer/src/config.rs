//! The configuration-space model: the captured snapshot plus PCI write rules (writable masks,
//! write-one-to-clear status bits, BAR sizing, MSI and MSI-X control), and the MSI-X table/PBA model.

use hwrr_formats::{RegionKind, TraceHeader};

/// PCI capability ids the model gives write rules to.
mod cap_id {
    pub const PM: u8 = 0x01;
    pub const MSI: u8 = 0x05;
    pub const PCIE: u8 = 0x10;
    pub const MSIX: u8 = 0x11;
}

/// Command register bits a guest may change: I/O, memory, bus master, parity, SERR, INTx disable.
const COMMAND_WRITABLE: u16 = 0x0001 | 0x0002 | 0x0004 | 0x0040 | 0x0100 | 0x0400;
/// Status register bits that are write-one-to-clear (error bits).
const STATUS_W1C: u16 = 0xF900;
/// Status bit: the device has a capability list.
const STATUS_CAP_LIST: u16 = 0x0010;
/// MSI-X control: enable.
pub(crate) const MSIX_ENABLE: u16 = 1 << 15;
/// MSI-X control: function mask.
pub(crate) const MSIX_FUNCTION_MASK: u16 = 1 << 14;

/// Where the MSI-X table and PBA live, from the MSI-X capability.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct MsixLayout {
    /// Config-space offset of the capability.
    pub cap: usize,
    /// Number of table entries.
    pub entries: u32,
    /// Region (BAR) holding the table.
    pub table_bar: u32,
    /// Offset of the table in that region.
    pub table_offset: u64,
    /// Region holding the PBA.
    pub pba_bar: u32,
    /// Offset of the PBA.
    pub pba_offset: u64,
}

impl MsixLayout {
    /// Bytes the table spans.
    pub fn table_len(&self) -> u64 {
        self.entries as u64 * 16
    }

    /// Bytes the PBA spans (whole qwords).
    pub fn pba_len(&self) -> u64 {
        (self.entries as u64).div_ceil(64) * 8
    }

    /// Whether `offset..offset+len` of `region` touches the table.
    #[inline]
    pub fn in_table(&self, region: u32, offset: u64, len: u64) -> bool {
        region == self.table_bar
            && offset < self.table_offset + self.table_len()
            && offset.saturating_add(len) > self.table_offset
    }

    /// Whether `offset..offset+len` of `region` touches the PBA.
    #[inline]
    pub fn in_pba(&self, region: u32, offset: u64, len: u64) -> bool {
        region == self.pba_bar
            && offset < self.pba_offset + self.pba_len()
            && offset.saturating_add(len) > self.pba_offset
    }
}

/// The write rules for configuration space, derived once from the header.
#[derive(Clone, Debug)]
pub(crate) struct ConfigRules {
    /// The snapshot, padded to the config size.
    pub snapshot: Vec<u8>,
    /// Per byte: bits a guest write may change.
    pub writable: Vec<u8>,
    /// Per byte: bits a guest write of 1 clears.
    pub w1c: Vec<u8>,
    /// MSI capability offset and its message-control word at capture.
    pub msi: Option<usize>,
    /// Offset of the MSI per-vector mask bits, when the MSI capability has per-vector masking
    /// (the pending bits follow 4 bytes later).
    pub msi_mask: Option<usize>,
    /// MSI-X layout.
    pub msix: Option<MsixLayout>,
}

fn rd16(b: &[u8], o: usize) -> u16 {
    match b.get(o..o + 2) {
        Some(s) => u16::from_le_bytes([s[0], s[1]]),
        None => 0,
    }
}

fn rd32(b: &[u8], o: usize) -> u32 {
    match b.get(o..o + 4) {
        Some(s) => u32::from_le_bytes([s[0], s[1], s[2], s[3]]),
        None => 0,
    }
}

fn set_mask(mask: &mut [u8], offset: usize, bits: u64, len: usize) {
    for i in 0..len {
        if let Some(m) = mask.get_mut(offset + i) {
            *m = (bits >> (8 * i)) as u8;
        }
    }
}

/// The BAR size rounded up to a power of two (BARs decode naturally aligned power-of-two ranges).
fn bar_size(size: u64) -> u64 {
    size.checked_next_power_of_two().unwrap_or(0)
}

impl ConfigRules {
    /// Derives the rules from the header's snapshot, region table and capabilities.
    pub fn new(header: &TraceHeader) -> Self {
        let declared = header
            .region(hwrr_formats::region_index::CONFIG)
            .map(|r| r.size as usize)
            .unwrap_or(0);
        let size = declared
            .max(header.config_space.len())
            .clamp(256, 4096)
            .next_power_of_two()
            .min(4096);
        let mut snapshot = header.config_space.clone();
        snapshot.resize(size, 0);
        let mut writable = vec![0u8; size];
        let mut w1c = vec![0u8; size];

        set_mask(&mut writable, 0x04, COMMAND_WRITABLE as u64, 2);
        set_mask(&mut w1c, 0x06, STATUS_W1C as u64, 2);
        writable[0x0c] = 0xff; // cache line size
        writable[0x0d] = 0xff; // latency timer
        writable[0x3c] = 0xff; // interrupt line

        let header_type = snapshot[0x0e] & 0x7f;
        if header_type == 0 {
            Self::bar_rules(header, &mut snapshot, &mut writable);
        }

        let mut rules = ConfigRules {
            snapshot,
            writable,
            w1c,
            msi: None,
            msi_mask: None,
            msix: None,
        };
        rules.capability_rules();
        rules
    }

    fn bar_rules(header: &TraceHeader, snapshot: &mut [u8], writable: &mut [u8]) {
        let mut bar = 0u32;
        while bar < 6 {
            let off = 0x10 + bar as usize * 4;
            let region = header.region(bar).filter(|r| r.size > 0);
            let Some(region) = region else {
                bar += 1;
                continue;
            };
            let size = bar_size(region.size);
            let mut low = rd32(snapshot, off);
            if region.kind == RegionKind::Pio {
                // I/O BAR: bit 0 set, bit 1 reserved.
                low = (low & !0x3) | 0x1;
                set_mask(snapshot, off, low as u64, 4);
                set_mask(writable, off, !(size - 1) & 0xFFFF_FFFC, 4);
                bar += 1;
                continue;
            }
            low &= !0x1;
            set_mask(snapshot, off, low as u64, 4);
            let is_64 = (low >> 1) & 0x3 == 0x2 && bar < 5;
            let mask = !(size - 1);
            set_mask(writable, off, mask & 0xFFFF_FFF0, 4);
            if is_64 {
                set_mask(writable, off + 4, mask >> 32, 4);
                bar += 2;
            } else {
                bar += 1;
            }
        }
        // Expansion ROM BAR.
        let rom_size = header
            .region(hwrr_formats::region_index::ROM)
            .map(|r| r.size)
            .filter(|s| *s > 0)
            .or_else(|| header.rom.as_ref().map(|r| r.len() as u64))
            .filter(|s| *s > 0);
        if let Some(size) = rom_size {
            let mask = (!(bar_size(size).max(2048) - 1) & 0xFFFF_F800) | 0x1;
            set_mask(writable, 0x30, mask, 4);
        }
    }

    fn capability_rules(&mut self) {
        if rd16(&self.snapshot, 0x06) & STATUS_CAP_LIST == 0 {
            return;
        }
        let mut ptr = (self.snapshot[0x34] & 0xfc) as usize;
        let mut seen = 0;
        // A malformed snapshot may loop; 48 capabilities fill the 192 bytes after the header.
        while ptr >= 0x40 && ptr + 2 <= 256 && seen < 48 {
            seen += 1;
            let id = self.snapshot[ptr];
            match id {
                cap_id::PM => {
                    // PMCSR: power state (1:0) and PME enable (8) writable, PME status (15) W1C.
                    set_mask(&mut self.writable, ptr + 4, 0x0103, 2);
                    set_mask(&mut self.w1c, ptr + 4, 0x8000, 2);
                }
                cap_id::MSI => {
                    let control = rd16(&self.snapshot, ptr + 2);
                    let is_64 = control & 0x80 != 0;
                    let per_vector = control & 0x100 != 0;
                    // Enable and multiple-message enable.
                    set_mask(&mut self.writable, ptr + 2, 0x0071, 2);
                    set_mask(&mut self.writable, ptr + 4, 0xFFFF_FFFC, 4);
                    let data_at = if is_64 {
                        set_mask(&mut self.writable, ptr + 8, 0xFFFF_FFFF, 4);
                        ptr + 12
                    } else {
                        ptr + 8
                    };
                    set_mask(&mut self.writable, data_at, 0xFFFF, 2);
                    if per_vector && data_at + 12 <= self.snapshot.len() {
                        set_mask(&mut self.writable, data_at + 4, 0xFFFF_FFFF, 4);
                        self.msi_mask = Some(data_at + 4);
                    }
                    self.msi = Some(ptr);
                }
                cap_id::MSIX if ptr + 12 <= self.snapshot.len() => {
                    set_mask(
                        &mut self.writable,
                        ptr + 2,
                        (MSIX_ENABLE | MSIX_FUNCTION_MASK) as u64,
                        2,
                    );
                    let control = rd16(&self.snapshot, ptr + 2);
                    let table = rd32(&self.snapshot, ptr + 4);
                    let pba = rd32(&self.snapshot, ptr + 8);
                    self.msix = Some(MsixLayout {
                        cap: ptr,
                        entries: (control & 0x7ff) as u32 + 1,
                        table_bar: table & 0x7,
                        table_offset: (table & !0x7) as u64,
                        pba_bar: pba & 0x7,
                        pba_offset: (pba & !0x7) as u64,
                    });
                }
                cap_id::PCIE => {
                    // Device control and link control are guest-owned.
                    set_mask(&mut self.writable, ptr + 8, 0xFFFF, 2);
                    set_mask(&mut self.writable, ptr + 0x10, 0xFFFF, 2);
                }
                _ => {}
            }
            let next = (self.snapshot[ptr + 1] & 0xfc) as usize;
            if next == ptr {
                break;
            }
            ptr = next;
        }
    }

    /// Applies a guest write of `data` at `offset` to `space`. Returns false when out of range.
    pub fn write(&self, space: &mut [u8], offset: usize, data: &[u8]) -> bool {
        let Some(end) = offset.checked_add(data.len()) else {
            return false;
        };
        if end > space.len() || end > self.writable.len() {
            return false;
        }
        for (i, &byte) in data.iter().enumerate() {
            let at = offset + i;
            let w = self.writable[at];
            let c = self.w1c[at];
            let old = space[at];
            space[at] = ((old & !w) | (byte & w)) & !(byte & c);
        }
        if let Some(msi) = self.msi {
            // Multiple-message enable may not exceed multiple-message capable.
            let control = rd16(space, msi + 2);
            let capable = (control >> 1) & 0x7;
            let enabled = (control >> 4) & 0x7;
            if enabled > capable {
                let fixed = (control & !0x70) | (capable << 4);
                set_mask(space, msi + 2, fixed as u64, 2);
            }
        }
        true
    }
}

/// One MSI-X table entry.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct MsixEntry {
    /// The 16 bytes: address low, address high, data, vector control.
    pub bytes: [u8; 16],
}

impl MsixEntry {
    /// Vector control bit 0.
    pub fn masked(&self) -> bool {
        self.bytes[12] & 1 != 0
    }
}

/// The MSI-X table and pending bits, as the guest sees them.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct MsixModel {
    /// Table entries; every vector starts masked (PCI reset state).
    pub entries: Vec<MsixEntry>,
    /// Pending bits, one per vector.
    pub pending: Vec<u64>,
    /// Whether the guest has written the table. A VMM that emulates the table itself (QEMU's
    /// vfio-pci) never does, and then per-vector masks are the VMM's business, not ours.
    pub table_written: bool,
}

impl MsixModel {
    /// A table of `entries` masked vectors.
    pub fn new(entries: u32) -> Self {
        let mut e = MsixEntry { bytes: [0; 16] };
        e.bytes[12] = 1;
        MsixModel {
            entries: vec![e; entries as usize],
            pending: vec![0; (entries as usize).div_ceil(64)],
            table_written: false,
        }
    }

    /// Whether vector `v` is pending.
    pub fn is_pending(&self, v: u32) -> bool {
        self.pending
            .get(v as usize / 64)
            .is_some_and(|w| w & (1 << (v % 64)) != 0)
    }

    /// Sets or clears the pending bit of vector `v`.
    pub fn set_pending(&mut self, v: u32, on: bool) {
        if let Some(w) = self.pending.get_mut(v as usize / 64) {
            if on {
                *w |= 1 << (v % 64);
            } else {
                *w &= !(1 << (v % 64));
            }
        }
    }

    /// Whether vector `v` is masked by its own vector-control bit (only once the guest uses the
    /// table, see [`MsixModel::table_written`]).
    pub fn vector_masked(&self, v: u32) -> bool {
        self.table_written && self.entries.get(v as usize).is_some_and(|e| e.masked())
    }

    /// Reads table bytes at `offset` (relative to the table).
    pub fn read_table(&self, offset: u64, out: &mut [u8]) {
        for (i, b) in out.iter_mut().enumerate() {
            let at = offset + i as u64;
            *b = self
                .entries
                .get((at / 16) as usize)
                .map(|e| e.bytes[(at % 16) as usize])
                .unwrap_or(0);
        }
    }

    /// Writes table bytes at `offset` (relative to the table).
    pub fn write_table(&mut self, offset: u64, data: &[u8]) {
        self.table_written = true;
        for (i, b) in data.iter().enumerate() {
            let at = offset + i as u64;
            if let Some(e) = self.entries.get_mut((at / 16) as usize) {
                let byte = (at % 16) as usize;
                // Only the mask bit of vector control is writable; the rest is reserved.
                e.bytes[byte] = if byte == 12 {
                    (e.bytes[12] & !1) | (b & 1)
                } else if byte > 12 {
                    0
                } else {
                    *b
                };
            }
        }
    }

    /// Reads PBA bytes at `offset` (relative to the PBA).
    pub fn read_pba(&self, offset: u64, out: &mut [u8]) {
        for (i, b) in out.iter_mut().enumerate() {
            let at = offset + i as u64;
            *b = self
                .pending
                .get((at / 8) as usize)
                .map(|w| (w >> ((at % 8) * 8)) as u8)
                .unwrap_or(0);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use hwrr_formats::RegionInfo;

    fn header_with(config: Vec<u8>, regions: Vec<RegionInfo>) -> TraceHeader {
        TraceHeader {
            config_space: config,
            regions,
            ..Default::default()
        }
    }

    #[test]
    fn a_looping_capability_list_terminates() {
        let mut c = vec![0u8; 256];
        c[0x06] = 0x10;
        c[0x34] = 0x40;
        c[0x40] = 0x05; // MSI
        c[0x41] = 0x48;
        c[0x48] = 0x11; // MSI-X pointing back
        c[0x49] = 0x40;
        let rules = ConfigRules::new(&header_with(c, vec![]));
        assert_eq!(rules.msi, Some(0x40));
        assert_eq!(rules.msix.map(|m| m.cap), Some(0x48));
    }

    #[test]
    fn a_msix_capability_at_the_end_of_config_space_is_ignored() {
        let mut c = vec![0u8; 256];
        c[0x06] = 0x10;
        c[0x34] = 0xfc;
        c[0xfc] = 0x11;
        let rules = ConfigRules::new(&header_with(c, vec![]));
        assert!(rules.msix.is_none());
        let mut space = rules.snapshot.clone();
        assert!(!rules.write(&mut space, 0xfe, &[0xff; 4]));
        assert!(rules.write(&mut space, 0xfc, &[0xff; 4]));
        assert_eq!(
            &space[0xfc..],
            &[0x11, 0, 0, 0],
            "unknown capabilities are read-only"
        );
    }

    #[test]
    fn non_power_of_two_bar_sizes_round_up() {
        let mut c = vec![0u8; 64];
        c[0x10] = 0x00;
        let rules = ConfigRules::new(&header_with(
            c,
            vec![RegionInfo {
                index: 0,
                kind: hwrr_formats::RegionKind::Mmio,
                size: 0x3000,
                flags: 3,
                alias_of: None,
            }],
        ));
        let mut space = rules.snapshot.clone();
        assert_eq!(space.len(), 256, "snapshot padded to a full header");
        rules.write(&mut space, 0x10, &[0xff; 4]);
        assert_eq!(&space[0x10..0x14], &0xffff_c000u32.to_le_bytes());
    }
}
