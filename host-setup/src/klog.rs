//! What the kernel log says about the IOMMU: whether it came up, and DMA remapping faults.

use std::collections::BTreeMap;

use crate::bdf::{find_all, Bdf};

/// The IOMMU driver's start-up lines, if the log has them.
pub fn iommu_enabled_lines(lines: &[String]) -> Vec<&str> {
    const MARKERS: [&str; 5] = [
        "DMAR: IOMMU enabled",
        "DMAR-IR: Enabled IRQ remapping",
        "AMD-Vi: Interrupt remapping enabled",
        "AMD-Vi: Found IOMMU",
        "AMD-Vi: AMD IOMMUv2",
    ];
    lines
        .iter()
        .filter(|l| MARKERS.iter().any(|m| l.contains(m)))
        .map(String::as_str)
        .collect()
}

/// DMA remapping faults by the device that caused them.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct FaultSummary {
    /// Faults per device, with one example line each.
    pub by_device: BTreeMap<Bdf, (usize, String)>,
    /// Fault lines whose device address could not be read.
    pub anonymous: usize,
    /// Fault messages the kernel's rate limit swallowed (`dmar_fault: 42 callbacks suppressed`):
    /// more than ten faults in five seconds, a flood by definition.
    pub suppressed: usize,
}

impl FaultSummary {
    /// Total faults attributed to a device.
    pub fn total(&self) -> usize {
        self.by_device.values().map(|(n, _)| n).sum()
    }
}

/// Counts Intel VT-d (`DMAR: [DMA Read NO_PASID] Request device [00:19.0] fault addr ...`,
/// `[INTR-REMAP] Request device [..] fault index ...`) and AMD-Vi (`IO_PAGE_FAULT device=00:19.0`
/// or `vfio-pci 0000:01:00.0: AMD-Vi: Event logged [IO_PAGE_FAULT ...]`) faults.
pub fn dma_faults(lines: &[String]) -> FaultSummary {
    let mut s = FaultSummary::default();
    for l in lines {
        let bdf = if let Some(at) = l.find("Request device [") {
            let tail = &l[at + "Request device [".len()..];
            let is_fault = tail.contains("fault");
            tail.split(']')
                .next()
                .filter(|_| is_fault)
                .and_then(|t| t.parse::<Bdf>().ok())
        } else if l.contains("IO_PAGE_FAULT") {
            match l.find("device=") {
                Some(at) => find_all(&l[at + "device=".len()..]).into_iter().next(),
                None => find_all(l).into_iter().next(),
            }
        } else if l.contains("callbacks suppressed") {
            let lower = l.to_ascii_lowercase();
            if ["dmar", "iommu", "fault"].iter().any(|k| lower.contains(k)) {
                s.suppressed += l
                    .split_whitespace()
                    .rev()
                    .nth(2)
                    .and_then(|n| n.parse::<usize>().ok())
                    .unwrap_or(0);
            }
            continue;
        } else {
            // `DMAR: DRHD: handling fault status reg N` heads each burst of device lines; it is
            // not a fault of its own.
            continue;
        };
        match bdf {
            Some(b) => {
                let e = s.by_device.entry(b).or_insert((0, l.clone()));
                e.0 += 1;
            }
            None => s.anonymous += 1,
        }
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_intel_and_amd_faults_by_device() {
        let lines: Vec<String> = [
            "DMAR: DRHD: handling fault status reg 3",
            "DMAR: [DMA Read NO_PASID] Request device [00:19.0] fault addr 0xfffd0000 [fault reason 0x06] PTE Read access is not set",
            "DMAR: [DMA Write] Request device [00:19.0] fault addr fffd0000",
            "DMAR: [INTR-REMAP] Request device [00:02.0] fault index 0x1 [fault reason 0x25] Blocked a compatibility format interrupt request",
            "AMD-Vi: Event logged [IO_PAGE_FAULT device=03:00.0 domain=0x000e address=0xfffd0000 flags=0x0000]",
            "vfio-pci 0000:04:00.1: AMD-Vi: Event logged [IO_PAGE_FAULT domain=0x000e address=0x0 flags=0x0020]",
            "e1000e 0000:00:19.0 eth0: link up",
            "DMAR: [DMA Read] Request device [zz:00.0] fault addr 0",
            "dmar_fault: 42 callbacks suppressed",
            "net_ratelimit: 7 callbacks suppressed",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        let f = dma_faults(&lines);
        let counts: Vec<(String, usize)> = f
            .by_device
            .iter()
            .map(|(b, (n, _))| (b.to_string(), *n))
            .collect();
        assert_eq!(
            counts,
            vec![
                ("0000:00:02.0".to_string(), 1),
                ("0000:00:19.0".to_string(), 2),
                ("0000:03:00.0".to_string(), 1),
                ("0000:04:00.1".to_string(), 1),
            ]
        );
        assert_eq!(f.anonymous, 1);
        assert_eq!(f.suppressed, 42);
        assert_eq!(f.total(), 5);
    }
}
