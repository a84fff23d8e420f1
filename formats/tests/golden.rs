//! Golden traces: files written by format v1 (`tests/golden/*.hwrr`), v2 (`tests/golden/v2/`) and
//! v3 (`tests/golden/v3/`) and committed, so every later version proves it still reads them
//! exactly, and the writers prove they still produce them byte for byte. Regenerate one version's
//! files (only when deliberately changing that version's writer output, which must stay readable
//! anyway) with `HWRR_REGENERATE_GOLDEN=v1` (or `=1`), `=v2` or `=v3`
//! `cargo test -p hwrr-formats --test golden`.

use std::collections::BTreeMap;
use std::path::PathBuf;

use hwrr_formats::*;

fn golden_dir(encoding: EventEncoding) -> PathBuf {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/golden");
    match encoding {
        EventEncoding::V1 => dir,
        EventEncoding::V2 => dir.join("v2"),
        EventEncoding::V3 => dir.join("v3"),
    }
}

/// Whether this run regenerates the goldens of `encoding`.
fn regenerate(encoding: EventEncoding) -> bool {
    match std::env::var("HWRR_REGENERATE_GOLDEN").as_deref() {
        Ok("1") | Ok("v1") => encoding == EventEncoding::V1,
        Ok("v2") => encoding == EventEncoding::V2,
        Ok("v3") => encoding == EventEncoding::V3,
        _ => false,
    }
}

const ENCODINGS: [EventEncoding; 3] = [EventEncoding::V1, EventEncoding::V2, EventEncoding::V3];

fn golden_header(start_state: Option<StartState>) -> TraceHeader {
    let mut config = vec![0u8; 256];
    config[..4].copy_from_slice(&[0x86, 0x80, 0xd3, 0x10]);
    config[8] = 0x02;
    config[9..12].copy_from_slice(&[0x00, 0x00, 0x02]);
    TraceHeader {
        device: DeviceIdentity::from_config_space(&config, Some("0000:00:19.0".into())).unwrap(),
        config_space: config,
        regions: vec![
            RegionInfo {
                index: 0,
                kind: RegionKind::Mmio,
                size: 0x20000,
                flags: 7,
                alias_of: None,
            },
            RegionInfo {
                index: 2,
                kind: RegionKind::Pio,
                size: 0x20,
                flags: 3,
                alias_of: None,
            },
            RegionInfo {
                index: 6,
                kind: RegionKind::Rom,
                size: 0x40000,
                flags: 1,
                alias_of: None,
            },
        ],
        irqs: vec![
            IrqInfo {
                index: 0,
                count: 1,
                flags: 7,
            },
            IrqInfo {
                index: 2,
                count: 5,
                flags: 9,
            },
        ],
        rom: Some((0..1024u32).map(|i| (i * 7 % 251) as u8).collect()),
        capture: CaptureMeta {
            tool: "hwrr 0.1.0".into(),
            source: "synthetic".into(),
            kernel: Some("6.1.0".into()),
            host: None,
            start_unix_ns: 1_795_495_474_934_078_000,
        },
        labels: BTreeMap::from([("purpose".to_string(), "golden v1".to_string())]),
        start_state,
    }
}

fn mmio(region: u32, offset: u64, size: u8, value: u64) -> RegionAccess {
    RegionAccess {
        region,
        offset,
        data: AccessData::value(size, value).unwrap(),
    }
}

/// Every kind and every encoding path: values of each width, short and long byte accesses,
/// statuses, durations, blobs shared between events, optional payloads present and absent.
fn all_kinds_events(first_seq: u64) -> Vec<Event> {
    let page: Vec<u8> = (0..4096u32).map(|i| (i % 256) as u8).collect();
    let kinds = vec![
        EventKind::ConfigRead(ConfigAccess {
            offset: 0,
            data: AccessData::value(4, 0x10d3_8086).unwrap(),
        }),
        EventKind::ConfigWrite(ConfigAccess {
            offset: 4,
            data: AccessData::value(2, 0x0406).unwrap(),
        }),
        EventKind::IrqSetup(IrqSetup {
            index: 2,
            start: 0,
            count: 3,
            action: IrqAction::Trigger,
            data: IrqData::Eventfd(vec![true, true, false]),
        }),
        EventKind::IrqSetup(IrqSetup {
            index: 0,
            start: 0,
            count: 1,
            action: IrqAction::Unmask,
            data: IrqData::Bool(vec![true]),
        }),
        EventKind::IrqSetup(IrqSetup {
            index: 0,
            start: 0,
            count: 0,
            action: IrqAction::Mask,
            data: IrqData::None,
        }),
        EventKind::DmaMap(DmaMapping {
            iova: 0x1_0000_0000,
            len: 0x20_0000,
            flags: 3,
        }),
        EventKind::MmioWrite(mmio(0, 0x2800, 4, 0xdead_b000)),
        EventKind::MmioWrite(mmio(0, 0x2804, 4, 0x1)),
        EventKind::MmioRead(mmio(0, 0x8, 4, 0x8008_0783)),
        EventKind::MmioRead(mmio(0, 0x8, 4, 0x8008_0783)),
        EventKind::MmioRead(mmio(0, 0x8, 4, 0x8008_0787)),
        EventKind::MmioRead(mmio(0, 0x10, 8, u64::MAX)),
        EventKind::PioWrite(mmio(2, 0x0, 1, 0x5a)),
        EventKind::PioRead(mmio(2, 0x4, 2, 0xbeef)),
        EventKind::MmioWrite(RegionAccess {
            region: 0,
            offset: 0x100,
            data: AccessData::Bytes(vec![1, 2, 3]),
        }),
        EventKind::MmioRead(RegionAccess {
            region: 0,
            offset: 0x200,
            data: AccessData::Bytes((0..100u8).collect()),
        }),
        EventKind::DmaRead(DmaRead {
            iova: 0x1_0000_0000,
            data: page.clone(),
        }),
        EventKind::DmaWrite(DmaWrite {
            iova: 0x1_0000_1000,
            data: page[..512].to_vec(),
            before: Some(vec![0; 512]),
        }),
        EventKind::DmaWrite(DmaWrite {
            iova: 0x1_0000_2000,
            data: page.clone(),
            before: None,
        }),
        EventKind::Irq(Irq {
            index: 2,
            vector: 1,
        }),
        EventKind::Irq(Irq {
            index: 0,
            vector: 0,
        }),
        EventKind::Marker(Marker {
            label: "driver loaded ✓".into(),
            data: None,
        }),
        EventKind::Marker(Marker {
            label: "snapshot".into(),
            data: Some(vec![0xff; 70]),
        }),
        EventKind::Reset,
        EventKind::MmioRead(mmio(0, 0x8, 4, 0x8008_0787)),
        EventKind::MmioRead(mmio(0, 0x8, 4, 0x8008_0787)),
        EventKind::MmioRead(mmio(0, 0x8, 4, 0x8008_0783)),
        EventKind::MmioWrite(mmio(0, 0x2804, 4, 0x2)),
        EventKind::MmioWrite(mmio(0, 0x2804, 4, 0x3)),
        EventKind::Irq(Irq {
            index: 2,
            vector: 1,
        }),
        EventKind::MmioRead(mmio(0, 0xc0, 4, 0x1)),
        EventKind::MmioRead(mmio(0, 0xc0, 4, 0x0)),
        EventKind::DmaUnmap(DmaMapping {
            iova: 0x1_0000_0000,
            len: 0x20_0000,
            flags: 0,
        }),
    ];
    let mut t = 5_000u64;
    kinds
        .into_iter()
        .enumerate()
        .map(|(i, kind)| {
            t += 1000 * (i as u64 % 3);
            Event {
                seq: first_seq + i as u64,
                t_ns: t,
                status: if i == 13 { 5 } else { 0 },
                duration_ns: if i % 4 == 1 { 250 + i as u64 } else { 0 },
                kind,
            }
        })
        .collect()
}

fn slice_start_state() -> StartState {
    StartState {
        first_seq: 1000,
        first_t_ns: 5_000,
        registers: vec![RegisterValue {
            region: 0,
            offset: 0x2800,
            data: AccessData::value(4, 0xdead_b000).unwrap(),
        }],
        dma_mappings: vec![DmaMapping {
            iova: 0x1_0000_0000,
            len: 0x20_0000,
            flags: 3,
        }],
        irq_setups: vec![IrqSetup {
            index: 2,
            start: 0,
            count: 3,
            action: IrqAction::Trigger,
            data: IrqData::Eventfd(vec![true, true, true]),
        }],
    }
}

/// Register traffic with QEMU-like microsecond jitter whose gaps depend on the pair of
/// consecutive accesses, a few long pauses and one huge gap: enough events per chunk for all of
/// v2's time tables (context, class, global), its four lanes and its extra bits to appear.
fn timing_events() -> Vec<Event> {
    let mut x = 0x2545_f491_4f6c_dd1du64;
    let mut t = 0u64;
    let mut prev = 0u64;
    (0..3000u64)
        .map(|i| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            let which = if x % 61 == 0 { 5 } else { (x >> 8) % 5 };
            let kind = match which {
                0 => EventKind::PioWrite(mmio(2, 0x10, 2, i & 0xff)),
                1 => EventKind::Irq(Irq {
                    index: 0,
                    vector: 0,
                }),
                2 => EventKind::PioRead(mmio(2, 0x14, 2, 0x8000)),
                3 => EventKind::PioWrite(mmio(2, 0x14, 2, 0x4000)),
                4 => EventKind::ConfigRead(ConfigAccess {
                    offset: 4,
                    data: AccessData::value(2, 7).unwrap(),
                }),
                _ => EventKind::Reset,
            };
            let gap_us = match i {
                0 => 0,
                1500 => 40_000_000_000,
                _ if i % 97 == 0 => 1000 + x % 5000,
                _ => (1 + (prev * 7 + which * 3) % 11) * (1 + (prev + which) % 4) + (x >> 20) % 3,
            };
            prev = which;
            t += gap_us * 1000;
            Event::new(i, t, kind)
        })
        .collect()
}

struct Golden {
    file: &'static str,
    header: TraceHeader,
    events: Vec<Event>,
    chunk_events: usize,
}

fn goldens() -> Vec<Golden> {
    vec![
        Golden {
            file: "all_kinds.hwrr",
            header: golden_header(None),
            events: all_kinds_events(0),
            chunk_events: 8,
        },
        Golden {
            file: "slice.hwrr",
            header: golden_header(Some(slice_start_state())),
            events: all_kinds_events(1000),
            chunk_events: 64,
        },
        Golden {
            file: "timing.hwrr",
            header: golden_header(None),
            events: timing_events(),
            chunk_events: 1024,
        },
    ]
}

fn write(g: &Golden, event_encoding: EventEncoding) -> Vec<u8> {
    let opts = WriterOptions {
        chunk_events: g.chunk_events,
        flush_interval: None,
        zstd_level: 3,
        blob_chunk_bytes: 4 << 20,
        event_encoding,
        v2_min_chunk_events: 0,
    };
    let mut w = TraceWriter::new(Vec::new(), &g.header, opts).unwrap();
    for e in &g.events {
        w.append(e).unwrap();
    }
    w.finish_into_inner().unwrap().1
}

#[test]
fn golden_traces_read_exactly() {
    for (encoding, g) in ENCODINGS
        .iter()
        .flat_map(|e| goldens().into_iter().map(move |g| (*e, g)))
    {
        let path = golden_dir(encoding).join(g.file);
        if regenerate(encoding) {
            std::fs::write(&path, write(&g, encoding)).unwrap();
        }
        let bytes = std::fs::read(&path).unwrap();
        assert_eq!(
            u16::from_le_bytes([bytes[8], bytes[9]]),
            encoding.file_version(),
            "{}",
            path.display()
        );
        let r = TraceReader::open(&path).unwrap();
        assert_eq!(r.header(), &g.header, "{}", g.file);
        let events: Vec<Event> = r.iter().map(|e| e.unwrap()).collect();
        assert_eq!(events, g.events, "{}", g.file);
        assert_eq!(r.chunk_count(), g.events.len().div_ceil(g.chunk_events));
        assert_eq!(r.first_seq(), g.events[0].seq);
        let report = r.verify().unwrap();
        assert_eq!(report.events, g.events.len() as u64);
        let blobs = if g.file == "timing.hwrr" { 1 } else { 6 };
        assert_eq!(
            report.blobs, blobs,
            "ROM, (page, half page, zero page, 100-byte access, marker)"
        );
        for i in 0..r.chunk_count() {
            let chunk = r.chunk(i);
            let at = chunk.offset as usize + 5;
            assert_eq!(bytes[at], encoding.chunk_encoding(), "{}", path.display());
        }
    }
}

/// The writer of each version still produces its goldens byte for byte: a change to either
/// encoding's output is deliberate (and regenerates the goldens), never an accident.
#[test]
fn writers_reproduce_the_goldens() {
    for encoding in ENCODINGS {
        for g in goldens() {
            let path = golden_dir(encoding).join(g.file);
            let committed = std::fs::read(&path).unwrap();
            assert!(
                write(&g, encoding) == committed,
                "{} is no longer what the writer produces",
                path.display()
            );
        }
    }
}

/// v2 files an earlier writer produced (before rare access keys shared the "other keys" time
/// class): the encoding is the same, the bytes differ, and they must still read exactly.
#[test]
fn earlier_v2_writer_output_still_reads_exactly() {
    let dir = golden_dir(EventEncoding::V2).join("earlier");
    let mut read = 0;
    for g in goldens() {
        let path = dir.join(g.file);
        if !path.exists() {
            continue;
        }
        let r = TraceReader::open(&path).unwrap();
        assert_eq!(r.header(), &g.header, "{}", path.display());
        let events: Vec<Event> = r.iter().map(|e| e.unwrap()).collect();
        assert_eq!(events, g.events, "{}", path.display());
        assert_eq!(r.verify().unwrap().events, g.events.len() as u64);
        read += 1;
    }
    assert_eq!(read, 2, "all_kinds.hwrr and slice.hwrr");
    let torn = std::fs::read(dir.join("unfinished.hwrr")).unwrap();
    let (report, out) = recover_bytes(&torn).unwrap();
    assert_eq!(report.event_chunks, 4);
    let events: Vec<Event> = TraceReader::from_bytes(out)
        .unwrap()
        .iter()
        .map(|e| e.unwrap())
        .collect();
    assert_eq!(events, goldens()[0].events[..32]);
}

/// A trace whose writer died after four chunks: no footer, a torn fifth chunk.
#[test]
fn golden_unfinished_traces_recover() {
    for encoding in ENCODINGS {
        let path = golden_dir(encoding).join("unfinished.hwrr");
        let g = &goldens()[0];
        if regenerate(encoding) {
            let full = write(g, encoding);
            let r = TraceReader::from_bytes(full.clone()).unwrap();
            let torn = r.chunk(3).offset + r.chunk(3).len + 50;
            std::fs::write(&path, &full[..torn as usize]).unwrap();
        }
        let bytes = std::fs::read(&path).unwrap();
        assert!(matches!(
            TraceReader::from_bytes(bytes.clone()),
            Err(FormatError::MissingTrailer { .. })
        ));
        let (report, out) = recover_bytes(&bytes).unwrap();
        assert_eq!(report.event_chunks, 4);
        let r = TraceReader::from_bytes(out).unwrap();
        assert_eq!(r.header(), &g.header);
        let events: Vec<Event> = r.iter().map(|e| e.unwrap()).collect();
        assert_eq!(events, g.events[..32], "{}", path.display());
    }
}
