//! Checks, on the host, a trace that `e1000e_exercise --trace` recorded in the VT-d box: the
//! header describes the e1000e (identity, config snapshot, regions with the I/O BAR, IRQ table, the
//! ROM image), and the events hold what the exercise did (reset, MAC reads, the TX kick, DMA map and
//! unmap-all, MSI-X and INTx wiring, the interrupts relayed). It prints `CHECK` lines and exits 0
//! iff all pass.
//!
//! Usage: `check_e1000e_trace TRACE [--mac 52:54:00:12:34:56]`

use hwrr_formats::header::region_index::BAR0;
use hwrr_formats::{
    irq_index, AccessData, EventKind, IrqAction, IrqData, KindTag, RegionKind, TraceReader,
};

const IOVA_RX_BUF0: u64 = 0x1000_4000;
const MSI_WINDOW_IOVA: u64 = 0xfee0_0000;
const TDT: u64 = 0x3818;
const RAL0: u64 = 0x5400;
const RAH0: u64 = 0x5404;

fn value(d: &AccessData) -> Option<u64> {
    match d {
        AccessData::Value { value, .. } => Some(*value),
        AccessData::Bytes(_) => None,
    }
}

fn main() {
    let mut args = std::env::args().skip(1);
    let Some(path) = args.next() else {
        eprintln!("usage: check_e1000e_trace TRACE [--mac MAC]");
        std::process::exit(2);
    };
    let mut want_mac = None;
    while let Some(a) = args.next() {
        if a == "--mac" {
            want_mac = args.next();
        }
    }
    match check(&path, want_mac.as_deref()) {
        Ok(failed) => std::process::exit(i32::from(failed > 0)),
        Err(e) => {
            println!("check_e1000e_trace: ERROR {e}");
            std::process::exit(2);
        }
    }
}

fn check(path: &str, want_mac: Option<&str>) -> Result<usize, Box<dyn std::error::Error>> {
    let t0 = std::time::Instant::now();
    let reader = TraceReader::open(std::path::Path::new(path))?;
    let open_time = t0.elapsed();
    let h = reader.header();
    let mut failed = 0;
    let mut check = |name: &str, ok: bool, detail: String| {
        println!("CHECK {name} {} {detail}", if ok { "OK" } else { "FAIL" });
        failed += usize::from(!ok);
    };
    println!(
        "TRACE {path} bytes={} events={} chunks={} blobs={} opened in {open_time:?}",
        reader.file_len(),
        reader.event_count(),
        reader.chunk_count(),
        reader.blob_count()
    );
    println!("HEADER capture={:?} labels={:?}", h.capture, h.labels);
    check(
        "header_identity",
        (h.device.vendor_id, h.device.device_id) == (0x8086, 0x10d3),
        format!(
            "{:04x}:{:04x} bdf={:?}",
            h.device.vendor_id, h.device.device_id, h.device.bdf
        ),
    );
    check(
        "header_config_snapshot",
        h.config_space.len() >= 256 && h.config_space[..2] == [0x86, 0x80],
        format!("{} bytes", h.config_space.len()),
    );
    let pio = h.regions.iter().any(|r| r.kind == RegionKind::Pio);
    let bar0 = h.region(BAR0).map(|r| (r.kind, r.size));
    check(
        "header_regions",
        pio && bar0 == Some((RegionKind::Mmio, 0x2_0000)),
        format!(
            "{} regions, BAR0 {bar0:?}, an I/O BAR: {pio}",
            h.regions.len()
        ),
    );
    let msix = h.irq(irq_index::MSIX).map(|i| i.count);
    check(
        "header_irqs",
        msix == Some(5),
        format!("MSI-X vectors {msix:?}"),
    );
    let rom = h.rom.as_ref();
    check(
        "header_rom",
        rom.is_some_and(|r| r.len() >= 512 && r.starts_with(&[0x55, 0xaa])),
        format!("{:?} bytes", rom.map(Vec::len)),
    );
    check(
        "header_source",
        h.capture.source == "vfio",
        h.capture.source.clone(),
    );

    let counts = reader.counts();
    let by_kind: Vec<String> = KindTag::ALL
        .iter()
        .filter(|k| counts.get(**k) > 0)
        .map(|k| format!("{}={}", k.name(), counts.get(*k)))
        .collect();
    println!("COUNTS {}", by_kind.join(" "));

    let (mut ral, mut rah, mut tdt_kick, mut resets) = (None, None, false, 0);
    let (mut msix_on, mut msix_off, mut intx_on, mut intx_unmask) = (false, false, false, 0);
    let (mut msix_irqs, mut intx_irqs, mut maps, mut unmap_all) = (0, 0, 0, false);
    let mut rx_frame: Option<(Vec<u8>, Option<Vec<u8>>)> = None;
    let mut failed_events = Vec::new();
    for ev in reader.iter() {
        let ev = ev?;
        if ev.status != 0 {
            failed_events.push((ev.status, ev.kind.clone()));
        }
        match &ev.kind {
            EventKind::MmioRead(a) if a.region == BAR0 && a.offset == RAL0 => ral = value(&a.data),
            EventKind::MmioRead(a) if a.region == BAR0 && a.offset == RAH0 => rah = value(&a.data),
            EventKind::MmioWrite(a) if a.region == BAR0 && a.offset == TDT => {
                tdt_kick |= value(&a.data) == Some(1)
            }
            EventKind::Reset => resets += 1,
            EventKind::IrqSetup(s) => match (s.index, s.action, &s.data, s.count) {
                (irq_index::MSIX, IrqAction::Trigger, IrqData::Eventfd(v), 1) => {
                    msix_on |= v == &[true]
                }
                (irq_index::MSIX, IrqAction::Trigger, IrqData::None, 0) => msix_off = true,
                (irq_index::INTX, IrqAction::Trigger, IrqData::Eventfd(_), 1) => intx_on = true,
                (irq_index::INTX, IrqAction::Unmask, IrqData::None, 1) => intx_unmask += 1,
                _ => {}
            },
            EventKind::Irq(i) if i.index == irq_index::MSIX => msix_irqs += 1,
            EventKind::Irq(i) if i.index == irq_index::INTX => intx_irqs += 1,
            EventKind::DmaMap(_) if ev.status == 0 => maps += 1,
            EventKind::DmaUnmap(m) => unmap_all |= m.flags & 2 != 0,
            // The recorder's watch set may merge the frame with neighbouring changes: take the
            // write that covers the buffer's first byte, from there on.
            EventKind::DmaWrite(w)
                if w.iova <= IOVA_RX_BUF0
                    && IOVA_RX_BUF0 < w.iova.saturating_add(w.data.len() as u64) =>
            {
                let at = (IOVA_RX_BUF0 - w.iova) as usize;
                rx_frame = Some((
                    w.data[at..].to_vec(),
                    w.before.as_ref().map(|b| b[at.min(b.len())..].to_vec()),
                ))
            }
            _ => {}
        }
    }
    // Exactly one call failed: the exercise's DMA map over the MSI window, with the kernel's errno.
    let only_refused_map = matches!(
        failed_events.as_slice(),
        [(errno, EventKind::DmaMap(m))] if *errno != 0 && m.iova == MSI_WINDOW_IOVA
    );
    check(
        "events_failed_only_the_refused_map",
        only_refused_map,
        format!("{failed_events:?}"),
    );
    check("event_reset", resets >= 1, format!("{resets}"));
    let mac = match (ral, rah) {
        (Some(l), Some(h)) => {
            let (l, h) = ((l as u32).to_le_bytes(), (h as u32).to_le_bytes());
            Some(
                [l[0], l[1], l[2], l[3], h[0], h[1]]
                    .iter()
                    .map(|b| format!("{b:02x}"))
                    .collect::<Vec<_>>()
                    .join(":"),
            )
        }
        _ => None,
    };
    check(
        "event_mac_reads",
        mac.is_some() && (want_mac.is_none() || mac.as_deref() == want_mac),
        format!("{mac:?}"),
    );
    check("event_tx_kick", tdt_kick, "TDT=1 written".into());
    check(
        "event_dma_map_unmap_all",
        maps == 1 && unmap_all,
        format!("maps={maps} unmap_all={unmap_all}"),
    );
    check(
        "event_irq_setups",
        msix_on && msix_off && intx_on && intx_unmask >= 2,
        format!("msix on={msix_on} off={msix_off} intx on={intx_on} unmasks={intx_unmask}"),
    );
    check(
        "event_irqs_relayed",
        msix_irqs >= 1 && intx_irqs >= 2,
        format!("msix={msix_irqs} intx={intx_irqs}"),
    );
    // Every trace made with a watch set (the recorder's own, or the exercise's) must hold the frame;
    // only a trace whose header says no watch set ran is exempt.
    let watch = !h
        .labels
        .get("dma_write_source")
        .is_some_and(|s| s.starts_with("none"));
    if watch {
        let ok = rx_frame.as_ref().is_some_and(|(data, before)| {
            data.len() >= 42
                && data[12..14] == [0x08, 0x06]
                && data[20..22] == [0x00, 0x02]
                && data[28..32] == [10, 0, 2, 2]
                && before.as_ref().is_some_and(|b| b.iter().all(|&x| x == 0))
        });
        check(
            "event_dma_write_rx_frame",
            ok,
            format!(
                "{:?}",
                rx_frame.as_ref().map(|(d, _)| hwrr_formats::hex::encode(d))
            ),
        );
    } else {
        println!(
            "NOTE no dma_write expected: the device wrote the RX frame straight into memory and no \
             watch set was running ({} dma_write events)",
            counts.get(KindTag::DmaWrite)
        );
    }
    Ok(failed)
}
