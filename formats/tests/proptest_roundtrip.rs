//! Property tests: any sequence of events of any kinds round-trips at any chunk size, and any
//! single-byte damage ends in an error or a prefix of the original events, never a panic.

mod common;

use common::*;
use hwrr_formats::*;
use proptest::prelude::*;

fn access_data() -> impl Strategy<Value = AccessData> {
    prop_oneof![
        4 => (prop::sample::select(vec![1u8, 2, 4, 8]), any::<u64>())
            .prop_map(|(s, v)| AccessData::value(s, v).unwrap()),
        1 => prop::collection::vec(any::<u8>(), 0..150).prop_map(AccessData::Bytes),
    ]
}

fn small_bytes() -> impl Strategy<Value = Vec<u8>> {
    prop_oneof![
        prop::collection::vec(any::<u8>(), 0..40),
        prop::collection::vec(0u8..3, 0..600),
    ]
}

fn region_access() -> impl Strategy<Value = RegionAccess> {
    (0u32..8, prop_oneof![0u64..64, any::<u64>()], access_data()).prop_map(
        |(region, offset, data)| RegionAccess {
            region,
            offset,
            data,
        },
    )
}

fn config_access() -> impl Strategy<Value = ConfigAccess> {
    (0u32..4096, access_data()).prop_map(|(offset, data)| ConfigAccess { offset, data })
}

fn flags() -> impl Strategy<Value = Vec<bool>> {
    prop::collection::vec(any::<bool>(), 0..20)
}

fn kind() -> impl Strategy<Value = EventKind> {
    let mapping = (any::<u64>(), any::<u64>(), any::<u32>())
        .prop_map(|(iova, len, flags)| DmaMapping { iova, len, flags });
    prop_oneof![
        region_access().prop_map(EventKind::MmioRead),
        region_access().prop_map(EventKind::MmioWrite),
        region_access().prop_map(EventKind::PioRead),
        region_access().prop_map(EventKind::PioWrite),
        config_access().prop_map(EventKind::ConfigRead),
        config_access().prop_map(EventKind::ConfigWrite),
        (any::<u32>(), any::<u32>())
            .prop_map(|(index, vector)| EventKind::Irq(Irq { index, vector })),
        (
            any::<u32>(),
            any::<u32>(),
            any::<u32>(),
            prop::sample::select(vec![IrqAction::Mask, IrqAction::Unmask, IrqAction::Trigger]),
            prop_oneof![
                Just(IrqData::None),
                flags().prop_map(IrqData::Bool),
                flags().prop_map(IrqData::Eventfd)
            ]
        )
            .prop_map(|(index, start, count, action, data)| EventKind::IrqSetup(
                IrqSetup {
                    index,
                    start,
                    count,
                    action,
                    data
                }
            )),
        mapping.clone().prop_map(EventKind::DmaMap),
        mapping.prop_map(EventKind::DmaUnmap),
        (any::<u64>(), small_bytes())
            .prop_map(|(iova, data)| EventKind::DmaRead(DmaRead { iova, data })),
        (any::<u64>(), small_bytes(), prop::option::of(small_bytes()))
            .prop_map(|(iova, data, before)| EventKind::DmaWrite(DmaWrite { iova, data, before })),
        Just(EventKind::Reset),
        (".{0,12}", prop::option::of(small_bytes()))
            .prop_map(|(label, data)| EventKind::Marker(Marker { label, data })),
    ]
}

/// Events with dense seqs from `first` and non-decreasing times.
fn events(max: usize) -> impl Strategy<Value = (u64, Vec<Event>)> {
    (
        prop_oneof![Just(0u64), any::<u32>().prop_map(u64::from)],
        prop::collection::vec(
            (
                prop_oneof![
                    Just(0u64),
                    0u64..5000,
                    (0u64..100).prop_map(|d| d * 1000),
                    any::<u32>().prop_map(u64::from)
                ],
                prop_oneof![4 => Just(0u32), 1 => any::<u32>()],
                // Equal times, QEMU-like microsecond gaps (the v2 time coder's direct and
                // exponent symbols) and anything at all.
                prop_oneof![4 => Just(0u64), 3 => (1u64..3000).prop_map(|us| us * 1000), 1 => any::<u64>()],
                kind(),
            ),
            0..max,
        ),
    )
        .prop_map(|(first, rows)| {
            let mut t = 0u64;
            let evs = rows
                .into_iter()
                .enumerate()
                .map(|(i, (dt, status, duration_ns, kind))| {
                    t = t.saturating_add(dt);
                    Event {
                        seq: first + i as u64,
                        t_ns: t,
                        status,
                        duration_ns,
                        kind,
                    }
                })
                .collect();
            (first, evs)
        })
}

fn encoding() -> impl Strategy<Value = EventEncoding> {
    prop_oneof![
        Just(EventEncoding::V1),
        Just(EventEncoding::V2),
        Just(EventEncoding::V3)
    ]
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(128))]

    #[test]
    fn round_trip(
        (first, evs) in events(400),
        chunk in 1usize..200,
        blob_bytes in 1usize..5000,
        event_encoding in encoding(),
    ) {
        let h = header(None, first);
        let opts = WriterOptions { blob_chunk_bytes: blob_bytes, event_encoding, ..small_chunks(chunk) };
        let bytes = write_trace(&h, &evs, opts);
        let r = TraceReader::from_bytes(bytes).unwrap();
        prop_assert_eq!(r.event_count(), evs.len() as u64);
        prop_assert_eq!(r.chunk_count(), evs.len().div_ceil(chunk));
        let got = read_all(&r);
        prop_assert_eq!(&got, &evs);
        r.verify().unwrap();
        let mut cols = ChunkColumns::default();
        let mut from_columns = Vec::new();
        for i in 0..r.chunk_count() {
            r.read_chunk_columns(i, &mut cols).unwrap();
            prop_assert_eq!(cols.len(), r.chunk(i).count as usize);
            from_columns.extend(cols.events());
        }
        prop_assert_eq!(&from_columns, &evs);
        if let Some(mid) = evs.get(evs.len() / 2) {
            let from: Vec<Event> = r.iter_from(mid.seq).map(|e| e.unwrap()).collect();
            prop_assert_eq!(&from[..], &evs[evs.len() / 2..]);
            let at = r.seq_at_time(mid.t_ns).unwrap();
            prop_assert_eq!(Some(at), evs.iter().find(|e| e.t_ns >= mid.t_ns).map(|e| e.seq));
        }
    }

    #[test]
    fn damage_never_panics_and_recovers_a_prefix(
        (first, evs) in events(200),
        chunk in 1usize..50,
        at in any::<prop::sample::Index>(),
        xor in 1u8..=255,
        truncate in any::<bool>(),
        event_encoding in encoding(),
    ) {
        let h = header(Some(vec![1, 2, 3]), first);
        let opts = WriterOptions { event_encoding, ..small_chunks(chunk) };
        let mut bytes = write_trace(&h, &evs, opts);
        let i = at.index(bytes.len());
        if truncate {
            bytes.truncate(i);
        } else {
            bytes[i] ^= xor;
        }
        if let Ok(r) = TraceReader::from_bytes(bytes.clone()) {
            let _ = r.verify();
            for e in r.iter() {
                match e {
                    Ok(e) => prop_assert_eq!(&e, &evs[(e.seq - first) as usize]),
                    Err(_) => break,
                }
            }
        }
        if let Ok((report, out)) = recover_bytes(&bytes) {
            let r = TraceReader::from_bytes(out).unwrap();
            r.verify().unwrap();
            let got = read_all(&r);
            prop_assert_eq!(got.len() as u64, report.events);
            prop_assert_eq!(&got[..], &evs[..got.len()]);
        }
    }
}
