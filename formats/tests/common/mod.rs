//! Helpers shared by the format tests.
#![allow(dead_code)]

use hwrr_formats::*;

/// A small header with a ROM.
pub fn header(rom: Option<Vec<u8>>, first_seq: u64) -> TraceHeader {
    let mut config = vec![0u8; 256];
    config[0..2].copy_from_slice(&0x10ecu16.to_le_bytes());
    config[2..4].copy_from_slice(&0x8139u16.to_le_bytes());
    TraceHeader {
        device: DeviceIdentity::from_config_space(&config, Some("0000:00:02.0".into())).unwrap(),
        config_space: config,
        regions: vec![
            RegionInfo {
                index: 0,
                kind: RegionKind::Pio,
                size: 256,
                flags: 3,
                alias_of: None,
            },
            RegionInfo {
                index: 1,
                kind: RegionKind::Mmio,
                size: 256,
                flags: 7,
                alias_of: Some(0),
            },
        ],
        irqs: vec![IrqInfo {
            index: 0,
            count: 1,
            flags: 7,
        }],
        rom,
        capture: CaptureMeta {
            tool: "hwrr-formats tests".into(),
            source: "synthetic".into(),
            kernel: None,
            host: None,
            start_unix_ns: 1,
        },
        labels: [("test".to_string(), "yes".to_string())].into(),
        start_state: (first_seq != 0).then(|| StartState {
            first_seq,
            first_t_ns: 0,
            ..StartState::default()
        }),
    }
}

/// One event of every kind, cycling, with deterministic pseudo-random fields.
pub fn mixed_events(first_seq: u64, n: u64) -> Vec<Event> {
    let mut t = 1000u64;
    let mut x = 0x9e37_79b9_7f4a_7c15u64;
    (0..n)
        .map(|i| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            t += (x % 5) * 1000;
            let seq = first_seq + i;
            let acc = |size: u8| RegionAccess {
                region: (x % 2) as u32,
                offset: (x >> 8) % 16 * 4,
                data: AccessData::value(size, x >> 3).unwrap(),
            };
            let kind = match i % 16 {
                0 | 8 => EventKind::MmioRead(acc(4)),
                1 | 9 => EventKind::MmioWrite(acc(2)),
                2 => EventKind::PioRead(acc(1)),
                3 => EventKind::PioWrite(RegionAccess {
                    region: 0,
                    offset: 0x40,
                    data: AccessData::Bytes((0..(x % 100) as u8).collect()),
                }),
                4 => EventKind::ConfigRead(ConfigAccess {
                    offset: (x % 64) as u32 * 4,
                    data: AccessData::value(4, x).unwrap(),
                }),
                5 => EventKind::ConfigWrite(ConfigAccess {
                    offset: 4,
                    data: AccessData::value(2, x).unwrap(),
                }),
                6 => EventKind::Irq(Irq {
                    index: 2,
                    vector: (x % 3) as u32,
                }),
                7 => EventKind::IrqSetup(IrqSetup {
                    index: 2,
                    start: 0,
                    count: 3,
                    action: IrqAction::Trigger,
                    data: IrqData::Eventfd(vec![true, false, true]),
                }),
                10 => EventKind::DmaMap(DmaMapping {
                    iova: x & !0xfff,
                    len: 4096,
                    flags: 3,
                }),
                11 => EventKind::DmaUnmap(DmaMapping {
                    iova: x & !0xfff,
                    len: 4096,
                    flags: 0,
                }),
                12 => EventKind::DmaRead(DmaRead {
                    iova: x,
                    data: vec![(x % 7) as u8; 64],
                }),
                13 => EventKind::DmaWrite(DmaWrite {
                    iova: x,
                    data: vec![(x % 5) as u8; 128],
                    before: (x % 2 == 0).then(|| vec![0u8; 128]),
                }),
                14 => EventKind::Reset,
                _ => EventKind::Marker(Marker {
                    label: format!("marker {i}"),
                    data: (x % 2 == 1).then(|| b"payload".to_vec()),
                }),
            };
            Event {
                seq,
                t_ns: t,
                status: if x % 11 == 0 { 5 } else { 0 },
                duration_ns: if x % 3 == 0 { x % 10_000 } else { 0 },
                kind,
            }
        })
        .collect()
}

/// Writes `events` into an in-memory trace.
pub fn write_trace(header: &TraceHeader, events: &[Event], opts: WriterOptions) -> Vec<u8> {
    let mut w = TraceWriter::new(Vec::new(), header, opts).unwrap();
    for e in events {
        w.append(e).unwrap();
    }
    w.finish_into_inner().unwrap().1
}

/// Options with small chunks (written in the file's encoding whatever their size, so small
/// chunks exercise encoding 2 too).
pub fn small_chunks(n: usize) -> WriterOptions {
    WriterOptions {
        chunk_events: n,
        flush_interval: None,
        v2_min_chunk_events: 0,
        ..WriterOptions::default()
    }
}

/// Reads every event of a trace.
pub fn read_all(r: &TraceReader) -> Vec<Event> {
    r.iter().collect::<Result<Vec<_>, _>>().unwrap()
}
