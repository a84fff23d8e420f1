//! Writer -> reader round trips, seeking, and index queries.

mod common;

use common::*;
use hwrr_formats::*;

#[test]
fn every_kind_round_trips_with_rom_and_blobs() {
    let h = header(Some((0..=255u8).cycle().take(4096).collect()), 0);
    let events = mixed_events(0, 5000);
    let bytes = write_trace(&h, &events, small_chunks(300));
    let r = TraceReader::from_bytes(bytes).unwrap();
    assert_eq!(r.header(), &h);
    assert_eq!(r.event_count(), 5000);
    assert_eq!(r.chunk_count(), 17);
    assert_eq!(read_all(&r), events);
    let mut counts = KindCounts::default();
    events.iter().for_each(|e| counts.add(e.tag()));
    assert_eq!(r.counts(), counts);
    assert_eq!(
        r.time_range(),
        Some((events[0].t_ns, events.last().unwrap().t_ns))
    );
    let report = r.verify().unwrap();
    assert_eq!(report.events, 5000);
    assert_eq!(report.event_chunks, 17);
    assert!(report.blob_chunks >= 1);
}

#[test]
fn blobs_are_deduplicated() {
    let h = header(None, 0);
    let payload = vec![0xabu8; 10_000];
    let events: Vec<Event> = (0..100)
        .map(|i| {
            Event::new(
                i,
                i * 10,
                EventKind::DmaRead(DmaRead {
                    iova: 0x1000 * i,
                    data: payload.clone(),
                }),
            )
        })
        .collect();
    let bytes = write_trace(&h, &events, small_chunks(10));
    let r = TraceReader::from_bytes(bytes).unwrap();
    assert_eq!(r.blob_count(), 1);
    assert_eq!(read_all(&r), events);
}

#[test]
fn seek_by_seq_and_time() {
    let h = header(None, 1000);
    let events = mixed_events(1000, 3000);
    let bytes = write_trace(&h, &events, small_chunks(128));
    let r = TraceReader::from_bytes(bytes).unwrap();
    assert_eq!(r.first_seq(), 1000);
    for seq in [1000u64, 1001, 1127, 1128, 2500, 3999] {
        let got: Vec<Event> = r.iter_from(seq).map(|e| e.unwrap()).collect();
        assert_eq!(got, events[(seq - 1000) as usize..], "iter_from({seq})");
    }
    assert_eq!(r.iter_from(4000).count(), 0);
    assert_eq!(r.iter_from(0).count(), 3000);
    for e in events.iter().step_by(97) {
        let want = events.iter().find(|x| x.t_ns >= e.t_ns).unwrap().seq;
        assert_eq!(r.seq_at_time(e.t_ns), Some(want));
        let want = events.iter().find(|x| x.t_ns > e.t_ns).map(|x| x.seq);
        assert_eq!(r.seq_at_time(e.t_ns + 1), want);
    }
    assert_eq!(r.seq_at_time(0), Some(1000));
    assert_eq!(r.seq_at_time(u64::MAX), None);
    let i = r.chunk_of_seq(1300).unwrap();
    let c = r.chunk(i);
    assert!(c.first_seq <= 1300 && 1300 < c.first_seq + c.count as u64);
}

#[test]
fn writer_rejects_gaps_and_time_reversal() {
    let h = header(None, 0);
    let mut w = TraceWriter::new(Vec::new(), &h, WriterOptions::default()).unwrap();
    w.append(&Event::new(0, 10, EventKind::Reset)).unwrap();
    assert!(matches!(
        w.append(&Event::new(2, 10, EventKind::Reset)),
        Err(FormatError::SeqNotDense {
            expected: 1,
            found: 2
        })
    ));
    assert!(matches!(
        w.append(&Event::new(1, 9, EventKind::Reset)),
        Err(FormatError::TimeWentBackwards { .. })
    ));
    let bad = Event::new(
        1,
        10,
        EventKind::MmioRead(RegionAccess {
            region: 0,
            offset: 0,
            data: AccessData::Value { size: 3, value: 1 },
        }),
    );
    assert!(matches!(
        w.append(&bad),
        Err(FormatError::InvalidEvent { .. })
    ));
    w.append(&Event::new(1, 10, EventKind::Reset)).unwrap();
    assert_eq!(w.events_written(), 2);
    let (summary, bytes) = w.finish_into_inner().unwrap();
    assert_eq!(summary.events, 2);
    assert_eq!(summary.bytes, bytes.len() as u64);
    let r = TraceReader::from_bytes(bytes).unwrap();
    assert_eq!(r.event_count(), 2);
}

#[test]
fn empty_trace_opens() {
    let h = header(None, 0);
    let bytes = write_trace(&h, &[], WriterOptions::default());
    let r = TraceReader::from_bytes(bytes).unwrap();
    assert_eq!(r.event_count(), 0);
    assert_eq!(r.time_range(), None);
    assert_eq!(r.iter().count(), 0);
    assert_eq!(r.seq_at_time(0), None);
    r.verify().unwrap();
}

#[test]
fn file_round_trip_and_verify_file() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("t.hwrr");
    let h = header(Some(vec![0x55, 0xaa, 1, 2]), 0);
    let events = mixed_events(0, 1000);
    let mut w = TraceWriter::create(&path, &h, small_chunks(100)).unwrap();
    for e in &events {
        w.append(e).unwrap();
    }
    let summary = w.finish().unwrap();
    assert_eq!(summary.bytes, std::fs::metadata(&path).unwrap().len());
    let r = TraceReader::open(&path).unwrap();
    assert_eq!(r.header().rom.as_deref(), Some(&[0x55, 0xaa, 1, 2][..]));
    assert_eq!(read_all(&r), events);
    let report = verify_file(&path).unwrap();
    assert_eq!(report.events, 1000);
    let missing = verify_file(&dir.path().join("nope")).unwrap_err();
    assert_eq!(missing.exit_code(), 2);
}

#[test]
fn reader_is_send_and_sync() {
    fn assert_send_sync<T: Send + Sync>() {}
    assert_send_sync::<TraceReader>();
    let h = header(None, 0);
    let events = mixed_events(0, 2000);
    let r = std::sync::Arc::new(
        TraceReader::from_bytes(write_trace(&h, &events, small_chunks(100))).unwrap(),
    );
    let handles: Vec<_> = (0..4)
        .map(|k| {
            let r = r.clone();
            std::thread::spawn(move || r.iter_from(k * 500).map(|e| e.unwrap()).collect::<Vec<_>>())
        })
        .collect();
    for (k, h) in handles.into_iter().enumerate() {
        assert_eq!(h.join().unwrap(), events[k * 500..]);
    }
}

#[test]
fn tick_flushes_an_old_chunk_and_flush_writes_through() {
    let h = header(None, 0);
    let opts = WriterOptions {
        chunk_events: 1_000_000,
        flush_interval: Some(std::time::Duration::ZERO),
        ..WriterOptions::default()
    };
    let mut w = TraceWriter::new(Vec::new(), &h, opts).unwrap();
    let before = w.bytes_written();
    w.append(&Event::new(0, 1, EventKind::Reset)).unwrap();
    assert_eq!(
        w.bytes_written(),
        before,
        "one event does not close a chunk"
    );
    w.tick().unwrap();
    let after_tick = w.bytes_written();
    assert!(
        after_tick > before,
        "tick wrote the chunk older than the interval"
    );
    w.tick().unwrap();
    assert_eq!(
        w.bytes_written(),
        after_tick,
        "nothing open, nothing written"
    );
    w.append(&Event::new(1, 2, EventKind::Reset)).unwrap();
    w.flush().unwrap();
    assert!(w.bytes_written() > after_tick);
    let (summary, bytes) = w.finish_into_inner().unwrap();
    assert_eq!(summary.event_chunks, 2);
    let (report, _) = recover_bytes(&bytes[..bytes.len() - 1]).unwrap();
    assert_eq!(report.events, 2);
}

/// Version 2 and 3 files may mix chunk encodings: by default, chunks under `v2_min_chunk_events`
/// events are written in encoding 1, larger ones in the file's own, and both read back exactly.
#[test]
fn small_chunks_of_a_v2_or_v3_file_use_encoding_1() {
    for (encoding, version) in [(EventEncoding::V2, 2u8), (EventEncoding::V3, 3)] {
        small_chunks_use_encoding_1(encoding, version);
    }
}

fn small_chunks_use_encoding_1(event_encoding: EventEncoding, version: u8) {
    let h = header(None, 0);
    let events = mixed_events(0, 5000);
    let opts = WriterOptions {
        chunk_events: 2000,
        flush_interval: None,
        event_encoding,
        ..WriterOptions::default()
    };
    assert_eq!(opts.v2_min_chunk_events, 1024);
    let bytes = write_trace(&h, &events, opts);
    assert_eq!(
        u16::from_le_bytes([bytes[8], bytes[9]]),
        version as u16,
        "a version {version} file"
    );
    let r = TraceReader::from_bytes(bytes.clone()).unwrap();
    let encodings: Vec<u8> = r
        .chunks()
        .iter()
        .map(|c| bytes[c.offset as usize + 5])
        .collect();
    assert_eq!(
        encodings,
        [version, version, 1],
        "2000, 2000 and 1000 events"
    );
    assert_eq!(read_all(&r), events);
    r.verify().unwrap();
    let (report, out) = recover_bytes(&bytes[..bytes.len() - 40]).unwrap();
    assert_eq!(report.events, 5000);
    assert_eq!(read_all(&TraceReader::from_bytes(out).unwrap()), events);
}
