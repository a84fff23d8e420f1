//! The expansion ROM image: one legacy x86 image with a PCI data structure, whose init entry is a
//! far return so firmware that runs it (SeaBIOS) does nothing harmful.

use crate::regs::{CLASS_CODE, DEVICE_ID, REVISION, ROM_SIZE, VENDOR_ID};

/// Offset of the PCI data structure ("PCIR") in the image.
pub const PCIR_OFFSET: usize = 0x20;

/// Builds the ROM image (deterministic; [`ROM_SIZE`] bytes, byte sum zero).
pub fn image() -> Vec<u8> {
    let size = ROM_SIZE as usize;
    let mut rom = vec![0u8; size];
    rom[0] = 0x55;
    rom[1] = 0xaa;
    rom[2] = (size / 512) as u8;
    rom[3] = 0xcb; // retf: the init entry returns at once
    rom[0x18..0x1a].copy_from_slice(&(PCIR_OFFSET as u16).to_le_bytes());
    let p = PCIR_OFFSET;
    rom[p..p + 4].copy_from_slice(b"PCIR");
    rom[p + 4..p + 6].copy_from_slice(&VENDOR_ID.to_le_bytes());
    rom[p + 6..p + 8].copy_from_slice(&DEVICE_ID.to_le_bytes());
    rom[p + 0x0a..p + 0x0c].copy_from_slice(&0x18u16.to_le_bytes()); // structure length
    rom[p + 0x0c] = 0; // structure revision
    rom[p + 0x0d..p + 0x10].copy_from_slice(&CLASS_CODE.to_le_bytes()[..3]);
    rom[p + 0x10..p + 0x12].copy_from_slice(&((size / 512) as u16).to_le_bytes());
    rom[p + 0x12..p + 0x14].copy_from_slice(&u16::from(REVISION).to_le_bytes());
    rom[p + 0x14] = 0; // code type: x86
    rom[p + 0x15] = 0x80; // last image
    let text = b"hwrr test device option ROM\0";
    rom[0x40..0x40 + text.len()].copy_from_slice(text);
    // A recognisable body so a short or shifted ROM read shows up in comparisons.
    for (i, b) in rom[0x100..size - 1].iter_mut().enumerate() {
        *b = (i as u32).wrapping_mul(2_654_435_761).to_le_bytes()[3];
    }
    let sum = rom.iter().fold(0u8, |a, b| a.wrapping_add(*b));
    rom[size - 1] = 0u8.wrapping_sub(sum);
    rom
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rom_has_signature_pcir_and_zero_checksum() {
        let rom = image();
        assert_eq!(&rom[..2], &[0x55, 0xaa]);
        assert_eq!(rom[2] as usize * 512, rom.len());
        let p = u16::from_le_bytes([rom[0x18], rom[0x19]]) as usize;
        assert_eq!(&rom[p..p + 4], b"PCIR");
        assert_eq!(u16::from_le_bytes([rom[p + 4], rom[p + 5]]), VENDOR_ID);
        assert_eq!(rom.iter().fold(0u8, |a, b| a.wrapping_add(*b)), 0);
    }
}
