//! A throwaway extractor of QEMU `-trace` device logs into hwrr events, for benchmarks only (the
//! real importer lives in `hwrr-import`). It keeps the lines that dominate the corpus: BAR accesses
//! (`memory_region_ops_read/write` mapped through `pci_update_mappings_add`), config-space accesses,
//! INTx assertions (`ioapic_set_irq ... level: 1`) and MSI-X interrupts (`pci_nvme_irq_msix`).

use std::path::{Path, PathBuf};

use hwrr_formats::*;

/// The corpus directory: `$HWRR_CORPUS` when set, else `../shared/corpus` next to the repository.
pub fn corpus_dir() -> Option<PathBuf> {
    let dir = match std::env::var_os("HWRR_CORPUS") {
        Some(d) => PathBuf::from(d),
        None => Path::new(env!("CARGO_MANIFEST_DIR")).join("../../shared/corpus"),
    };
    dir.is_dir().then_some(dir)
}

/// Reads and decompresses `trace.device.log.zst` of corpus folder `name`.
pub fn load_log(name: &str) -> Option<String> {
    let path = corpus_dir()?.join(name).join("trace.device.log.zst");
    let file = std::fs::File::open(path).ok()?;
    let bytes = zstd::stream::decode_all(file).ok()?;
    String::from_utf8(bytes).ok()
}

fn hex(s: &str) -> Option<u64> {
    u64::from_str_radix(s.strip_prefix("0x")?, 16).ok()
}

/// Turns a QEMU device log into events (timestamps clamped to be non-decreasing).
pub fn extract(log: &str) -> Vec<Event> {
    let mut bars: Vec<(u32, u64, u64)> = Vec::new();
    let mut device: Option<String> = None;
    let mut events = Vec::new();
    let mut first_us: Option<u64> = None;
    let mut last_t = 0u64;
    for line in log.lines() {
        let Some((prefix, rest)) = line.split_once(':') else {
            continue;
        };
        let Some((_, time)) = prefix.split_once('@') else {
            continue;
        };
        let Some((sec, usec)) = time.split_once('.') else {
            continue;
        };
        let (Ok(sec), Ok(usec)) = (sec.parse::<u64>(), usec.parse::<u64>()) else {
            continue;
        };
        let us = sec * 1_000_000 + usec;
        let f: Vec<&str> = rest.split_whitespace().collect();
        let kind = match f.first().copied() {
            Some("pci_update_mappings_add") if f.len() >= 4 => {
                device.get_or_insert_with(|| f[1].to_string());
                let Some((bar, range)) = f[3].split_once(',') else {
                    continue;
                };
                let Some((base, size)) = range.split_once('+') else {
                    continue;
                };
                if let (Ok(bar), Some(base), Some(size)) =
                    (bar.parse::<u32>(), hex(base), hex(size))
                {
                    bars.retain(|b| b.0 != bar);
                    bars.push((bar, base, size));
                }
                continue;
            }
            Some(op @ ("memory_region_ops_read" | "memory_region_ops_write")) if f.len() >= 13 => {
                let name = f[12].trim_matches('\'');
                if Some(name) != device.as_deref() && name != "msix-table" {
                    continue;
                }
                let (Some(addr), Some(value), Ok(size)) =
                    (hex(f[6]), hex(f[8]), f[10].parse::<u8>())
                else {
                    continue;
                };
                let Some(&(bar, base, _)) = bars
                    .iter()
                    .find(|(_, base, size)| addr >= *base && addr < base + size)
                else {
                    continue;
                };
                let Some(data) = AccessData::value(size, value) else {
                    continue;
                };
                let access = RegionAccess {
                    region: bar,
                    offset: addr - base,
                    data,
                };
                let pio = base < 0x1_0000;
                match (op == "memory_region_ops_read", pio) {
                    (true, true) => EventKind::PioRead(access),
                    (false, true) => EventKind::PioWrite(access),
                    (true, false) => EventKind::MmioRead(access),
                    (false, false) => EventKind::MmioWrite(access),
                }
            }
            Some(op @ ("pci_cfg_read" | "pci_cfg_write")) if f.len() >= 6 => {
                let (Some(offset), Some(value)) = (f[3].strip_prefix('@').and_then(hex), hex(f[5]))
                else {
                    continue;
                };
                let size = if offset % 4 == 0 {
                    4
                } else if offset % 2 == 0 {
                    2
                } else {
                    1
                };
                let Some(data) = AccessData::value(size, value) else {
                    continue;
                };
                let access = ConfigAccess {
                    offset: offset as u32,
                    data,
                };
                if op == "pci_cfg_read" {
                    EventKind::ConfigRead(access)
                } else {
                    EventKind::ConfigWrite(access)
                }
            }
            Some("ioapic_set_irq") if rest.ends_with("level: 1") => EventKind::Irq(Irq {
                index: irq_index::INTX,
                vector: 0,
            }),
            Some("pci_nvme_irq_msix") => {
                let Some(Ok(vector)) = f.last().map(|v| v.parse::<u32>()) else {
                    continue;
                };
                EventKind::Irq(Irq {
                    index: irq_index::MSIX,
                    vector,
                })
            }
            _ => continue,
        };
        let first = *first_us.get_or_insert(us);
        let t = (us.saturating_sub(first) * 1000).max(last_t);
        last_t = t;
        events.push(Event::new(events.len() as u64, t, kind));
    }
    events
}

/// A header for extracted events.
pub fn header() -> TraceHeader {
    TraceHeader {
        capture: CaptureMeta {
            tool: "hwrr bench".into(),
            source: "qemu-trace".into(),
            ..CaptureMeta::default()
        },
        ..TraceHeader::default()
    }
}
