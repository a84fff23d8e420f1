//! The parsers of host text (kernel log lines, addresses, modalias globs) never panic.

use hwrr_host_setup::{klog, modalias, Bdf};
use proptest::prelude::*;

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    #[test]
    fn bdf_parse_round_trips_or_errors(s in "\\PC{0,16}") {
        if let Ok(b) = s.parse::<Bdf>() {
            prop_assert_eq!(b.to_string().parse::<Bdf>().unwrap(), b);
        }
    }

    #[test]
    fn any_bdf_round_trips(d in any::<u16>(), bus in any::<u8>(), dev in 0u8..32, f in 0u8..8) {
        let b = Bdf { domain: d, bus, device: dev, function: f };
        prop_assert_eq!(b.to_string().parse::<Bdf>().unwrap(), b);
    }

    #[test]
    fn kernel_log_parsing_never_panics(lines in prop::collection::vec(
        prop_oneof![
            "\\PC{0,80}",
            "DMAR: \\[DMA Read\\] Request device \\[\\PC{0,12}\\] fault\\PC{0,20}",
            "\\PC{0,10}IO_PAGE_FAULT device=\\PC{0,16}",
            "[ é€0-9a-f:.\\[\\]]{0,40}",
        ],
        0..20,
    )) {
        let f = klog::dma_faults(&lines);
        prop_assert!(f.total() + f.anonymous <= lines.len());
        let _ = klog::iommu_enabled_lines(&lines);
    }

    #[test]
    fn glob_matching_never_panics(p in "[a-c*?\\[\\]!^-]{0,12}", t in "[a-c\\[\\]-]{0,12}") {
        let _ = modalias::glob_match(&p, &t);
        prop_assert!(modalias::glob_match("*", &t));
        prop_assert!(modalias::glob_match(&t.replace(['[', ']'], "?"), &t));
    }
}

#[test]
fn multibyte_log_lines_are_fine() {
    let lines = vec![
        "é00:19.0 €00:1f.3 Request device [é] fault".to_string(),
        "vfio-pci é€ 0000:03:00.0: AMD-Vi: Event logged [IO_PAGE_FAULT domain=0x1]".to_string(),
    ];
    let f = klog::dma_faults(&lines);
    assert_eq!(f.anonymous, 1);
    assert_eq!(f.total(), 1);
    assert!(f.by_device.contains_key(&"0000:03:00.0".parse().unwrap()));
}
