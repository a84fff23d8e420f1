//! `VFIO_IOMMU_GET_INFO`: page sizes, usable IOVA ranges and the DMA mapping budget of the
//! container's IOMMU. vfio-ioctls has no wrapper for it.

/// `VFIO_IOMMU_INFO_PGSIZES`: `iova_pgsizes` is valid.
pub const INFO_PGSIZES: u32 = 1 << 0;
/// `VFIO_IOMMU_INFO_CAPS`: `cap_offset` is valid.
pub const INFO_CAPS: u32 = 1 << 1;
/// `VFIO_IOMMU_TYPE1_INFO_CAP_IOVA_RANGE`.
pub const CAP_IOVA_RANGE: u16 = 1;
/// `VFIO_IOMMU_TYPE1_INFO_CAP_MIGRATION`.
pub const CAP_MIGRATION: u16 = 2;
/// `VFIO_IOMMU_TYPE1_INFO_DMA_AVAIL`.
pub const CAP_DMA_AVAIL: u16 = 3;

/// Size of `struct vfio_iommu_type1_info` without capabilities.
pub const INFO_LEN: usize = 24;

/// What the IOMMU behind the container allows.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct IommuInfo {
    /// `VFIO_IOMMU_INFO_*` flags.
    pub flags: u32,
    /// Bitmap of supported IOMMU page sizes (bit n: 2^n bytes), when the kernel gives it.
    pub iova_pgsizes: Option<u64>,
    /// Usable IOVA ranges, inclusive `(start, end)`, when the kernel gives them.
    pub iova_ranges: Vec<(u64, u64)>,
    /// How many more DMA mappings the container accepts, when the kernel says.
    pub dma_avail: Option<u32>,
    /// Capability ids present but not decoded here.
    pub other_caps: Vec<u16>,
}

impl IommuInfo {
    /// What an iommufd IOAS reports (`IOMMU_IOAS_IOVA_RANGES`): its usable ranges (inclusive) and
    /// the alignment every IOVA needs, which stands in as the only "page size" (it is the smallest
    /// page the IOAS maps). No flags and no mapping budget: iommufd has neither.
    pub fn from_ioas(iova_alignment: u64, iova_ranges: Vec<(u64, u64)>) -> Self {
        IommuInfo {
            flags: 0,
            iova_pgsizes: iova_alignment.is_power_of_two().then_some(iova_alignment),
            iova_ranges,
            dma_avail: None,
            other_caps: Vec::new(),
        }
    }

    /// The smallest supported page size (the alignment a DMA mapping needs), if known.
    pub fn min_page_size(&self) -> Option<u64> {
        self.iova_pgsizes
            .filter(|m| *m != 0)
            .map(|m| 1u64 << m.trailing_zeros())
    }

    /// Whether `iova..iova+len` lies inside one usable IOVA range (true when the kernel gave no
    /// ranges: nothing is known to be unusable).
    pub fn iova_usable(&self, iova: u64, len: u64) -> bool {
        if self.iova_ranges.is_empty() {
            return true;
        }
        let Some(last) = len.checked_sub(1).and_then(|l| iova.checked_add(l)) else {
            return false;
        };
        self.iova_ranges
            .iter()
            .any(|&(s, e)| s <= iova && last <= e)
    }
}

/// Why a `VFIO_IOMMU_GET_INFO` answer could not be decoded.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum IommuInfoError {
    /// The buffer is shorter than the fixed part of the structure.
    #[error("IOMMU info of {0} bytes is shorter than its 24-byte header")]
    Short(usize),
    /// A capability header or body lies outside the buffer.
    #[error("IOMMU info capability at offset {0} lies outside the {1}-byte answer")]
    CapOutOfBounds(usize, usize),
    /// The capability chain loops or is implausibly long.
    #[error("IOMMU info capability chain does not end")]
    CapLoop,
}

fn u16_at(b: &[u8], o: usize) -> Option<u16> {
    Some(u16::from_ne_bytes(b.get(o..o + 2)?.try_into().ok()?))
}
fn u32_at(b: &[u8], o: usize) -> Option<u32> {
    Some(u32::from_ne_bytes(b.get(o..o + 4)?.try_into().ok()?))
}
fn u64_at(b: &[u8], o: usize) -> Option<u64> {
    Some(u64::from_ne_bytes(b.get(o..o + 8)?.try_into().ok()?))
}

/// The `argsz` the kernel asked for (it raises `argsz` when the capabilities do not fit).
pub fn wanted_argsz(buf: &[u8]) -> Option<u32> {
    u32_at(buf, 0)
}

/// Decodes a `struct vfio_iommu_type1_info` answer with its capability chain. Never panics on
/// malformed input.
pub fn parse(buf: &[u8]) -> Result<IommuInfo, IommuInfoError> {
    if buf.len() < INFO_LEN {
        return Err(IommuInfoError::Short(buf.len()));
    }
    let short = || IommuInfoError::Short(buf.len());
    let argsz = u32_at(buf, 0).ok_or_else(short)? as usize;
    let flags = u32_at(buf, 4).ok_or_else(short)?;
    let pgsizes = u64_at(buf, 8).ok_or_else(short)?;
    let cap_offset = u32_at(buf, 16).ok_or_else(short)? as usize;
    // Only the part the kernel filled counts: min(argsz, buffer).
    let valid = &buf[..argsz.clamp(INFO_LEN, buf.len())];
    let mut info = IommuInfo {
        flags,
        iova_pgsizes: (flags & INFO_PGSIZES != 0).then_some(pgsizes),
        ..IommuInfo::default()
    };
    if flags & INFO_CAPS == 0 {
        return Ok(info);
    }
    let mut at = cap_offset;
    let mut seen = 0;
    while at != 0 {
        seen += 1;
        if seen > 64 {
            return Err(IommuInfoError::CapLoop);
        }
        let oob = || IommuInfoError::CapOutOfBounds(at, valid.len());
        let id = u16_at(valid, at).ok_or_else(oob)?;
        let next = u32_at(valid, at + 4).ok_or_else(oob)? as usize;
        match id {
            CAP_IOVA_RANGE => {
                let n = u32_at(valid, at + 8).ok_or_else(oob)? as usize;
                for i in 0..n {
                    let o = at + 16 + i * 16;
                    let start = u64_at(valid, o).ok_or_else(oob)?;
                    let end = u64_at(valid, o + 8).ok_or_else(oob)?;
                    info.iova_ranges.push((start, end));
                }
            }
            CAP_DMA_AVAIL => info.dma_avail = Some(u32_at(valid, at + 8).ok_or_else(oob)?),
            other => info.other_caps.push(other),
        }
        // Capabilities point forward; a backward or self pointer is a loop.
        if next != 0 && next <= at {
            return Err(IommuInfoError::CapLoop);
        }
        at = next;
    }
    Ok(info)
}

#[cfg(test)]
pub(crate) mod tests {
    #[test]
    fn ioas_info_keeps_ranges_and_a_power_of_two_alignment() {
        let i = IommuInfo::from_ioas(4096, vec![(0, 0xfedf_ffff)]);
        assert_eq!(i.min_page_size(), Some(4096));
        assert_eq!(i.iova_ranges, vec![(0, 0xfedf_ffff)]);
        assert!(i.iova_usable(0xfedf_f000, 0x1000));
        assert!(!i.iova_usable(0xfedf_f000, 0x2000));
        // An alignment that is no page size (0, or not a power of two) gives no page size at all.
        assert_eq!(IommuInfo::from_ioas(0, vec![]).min_page_size(), None);
        assert_eq!(IommuInfo::from_ioas(0x3000, vec![]).iova_pgsizes, None);
    }

    use super::*;

    /// The answer the VT-d box's kernel (6.1, QEMU intel-iommu) gave, rebuilt field by field.
    pub(crate) fn vtdbox_answer() -> Vec<u8> {
        let mut b = vec![0u8; 256];
        let put32 =
            |b: &mut Vec<u8>, o: usize, v: u32| b[o..o + 4].copy_from_slice(&v.to_ne_bytes());
        let put64 =
            |b: &mut Vec<u8>, o: usize, v: u64| b[o..o + 8].copy_from_slice(&v.to_ne_bytes());
        put32(&mut b, 0, 88);
        put32(&mut b, 4, INFO_PGSIZES | INFO_CAPS);
        put64(&mut b, 8, 0x4020_1000);
        put32(&mut b, 16, 24);
        // IOVA range cap at 24: header (id 1, version 1, next 72), nr 2, reserved, 2 ranges
        b[24..26].copy_from_slice(&CAP_IOVA_RANGE.to_ne_bytes());
        b[26..28].copy_from_slice(&1u16.to_ne_bytes());
        put32(&mut b, 28, 72);
        put32(&mut b, 32, 2);
        put64(&mut b, 40, 0);
        put64(&mut b, 48, 0xfedf_ffff);
        put64(&mut b, 56, 0xfef0_0000);
        put64(&mut b, 64, 0x7f_ffff_ffff);
        // DMA avail cap at 72
        b[72..74].copy_from_slice(&CAP_DMA_AVAIL.to_ne_bytes());
        b[74..76].copy_from_slice(&1u16.to_ne_bytes());
        put32(&mut b, 76, 0);
        put32(&mut b, 80, 65535);
        b
    }

    #[test]
    fn decodes_the_vtdbox_answer() {
        let info = parse(&vtdbox_answer()).unwrap();
        assert_eq!(info.iova_pgsizes, Some(0x4020_1000));
        assert_eq!(info.min_page_size(), Some(4096));
        assert_eq!(
            info.iova_ranges,
            vec![(0, 0xfedf_ffff), (0xfef0_0000, 0x7f_ffff_ffff)]
        );
        assert_eq!(info.dma_avail, Some(65535));
        assert!(info.iova_usable(0x1000_0000, 0x10000));
        assert!(
            !info.iova_usable(0xfee0_0000, 0x1000),
            "the MSI window is not usable"
        );
        assert!(!info.iova_usable(0x80_0000_0000, 0x1000), "beyond 39 bits");
        assert!(!info.iova_usable(u64::MAX, 2));
    }

    #[test]
    fn malformed_answers_are_errors_not_panics() {
        assert_eq!(parse(&[0; 10]), Err(IommuInfoError::Short(10)));
        let mut b = vtdbox_answer();
        // a capability that points past the valid length
        b[16..20].copy_from_slice(&200u32.to_ne_bytes());
        assert!(matches!(
            parse(&b),
            Err(IommuInfoError::CapOutOfBounds(200, 88))
        ));
        // a loop: the DMA-avail cap points back at the IOVA cap
        let mut b = vtdbox_answer();
        b[76..80].copy_from_slice(&24u32.to_ne_bytes());
        assert_eq!(parse(&b), Err(IommuInfoError::CapLoop));
        // a range count that runs off the end
        let mut b = vtdbox_answer();
        b[32..36].copy_from_slice(&u32::MAX.to_ne_bytes());
        assert!(matches!(
            parse(&b),
            Err(IommuInfoError::CapOutOfBounds(24, 88))
        ));
        // every truncation of a good answer decodes or errs, never panics
        let good = vtdbox_answer();
        for n in 0..good.len() {
            let _ = parse(&good[..n]);
        }
    }

    #[test]
    fn without_caps_flag_the_chain_is_ignored() {
        let mut b = vtdbox_answer();
        b[4..8].copy_from_slice(&INFO_PGSIZES.to_ne_bytes());
        let info = parse(&b).unwrap();
        assert!(info.iova_ranges.is_empty());
        assert_eq!(info.dma_avail, None);
        assert!(info.iova_usable(0xfee0_0000, 0x1000));
    }
}
