//! Damaged traces: truncation, bit flips, zeroed chunks and lying footers must end in the exact
//! sound prefix (through `recover`) or a clear error, never a panic. Every case runs on a v1 and on
//! a v2 trace.

mod common;

use common::*;
use hwrr_formats::layout::*;
use hwrr_formats::*;

struct Fixture {
    events: Vec<Event>,
    bytes: Vec<u8>,
    /// (offset, len, is_event_chunk, events in it), in file order.
    chunks: Vec<(u64, u64, bool, u64)>,
    header_end: u64,
    footer_offset: u64,
}

fn fixture(event_encoding: EventEncoding) -> Fixture {
    let h = header(Some(vec![7u8; 3000]), 0);
    let events = mixed_events(0, 2400);
    let opts = WriterOptions {
        blob_chunk_bytes: 2000,
        event_encoding,
        ..small_chunks(160)
    };
    let bytes = write_trace(&h, &events, opts);
    let r = TraceReader::from_bytes(bytes.clone()).unwrap();
    let mut chunks: Vec<(u64, u64, bool, u64)> = r
        .chunks()
        .iter()
        .map(|c| (c.offset, c.len, true, c.count as u64))
        .collect();
    for i in 0..r.blob_chunk_count() {
        let b = r.blob_chunk(i);
        chunks.push((b.offset, b.len, false, 0));
    }
    chunks.sort();
    assert!(r.chunk_count() >= 15 && r.blob_chunk_count() >= 5);
    let header_end = chunks[0].0;
    let last = chunks.last().unwrap();
    Fixture {
        events,
        footer_offset: last.0 + last.1,
        bytes,
        chunks,
        header_end,
    }
}

impl Fixture {
    /// Events in the event chunks that end at or before `cut` and come before chunk `bad`.
    fn events_before(&self, cut: u64) -> u64 {
        self.chunks
            .iter()
            .take_while(|c| c.0 + c.1 <= cut)
            .map(|c| c.3)
            .sum()
    }
}

/// Recovers `bytes` and checks the result is a sound trace holding exactly the first `want` events.
fn assert_recovers(f: &Fixture, bytes: &[u8], want: u64) {
    let (report, out) = recover_bytes(bytes).unwrap();
    assert_eq!(report.events, want);
    let r = TraceReader::from_bytes(out).unwrap();
    r.verify().unwrap();
    assert_eq!(r.event_count(), want);
    assert_eq!(read_all(&r), f.events[..want as usize]);
}

/// Every reader entry point on damaged bytes: errors are fine, panics are not.
fn exercise(bytes: &[u8]) {
    if let Ok(r) = TraceReader::from_bytes(bytes.to_vec()) {
        for e in r.iter() {
            if e.is_err() {
                break;
            }
        }
        let _ = r.verify();
        let _ = r.seq_at_time(5000);
        let _ = r.iter_from(1000).next();
    }
    let _ = recover_bytes(bytes);
}

#[test]
fn truncation_at_every_chunk_boundary() {
    for encoding in [EventEncoding::V1, EventEncoding::V2, EventEncoding::V3] {
        truncation_at_every_chunk_boundary_in(&fixture(encoding));
    }
}

fn truncation_at_every_chunk_boundary_in(f: &Fixture) {
    for (i, c) in f.chunks.iter().enumerate() {
        let cut = &f.bytes[..c.0 as usize];
        assert!(matches!(
            TraceReader::from_bytes(cut.to_vec()),
            Err(FormatError::MissingTrailer { .. })
        ));
        let want: u64 = f.chunks[..i].iter().map(|c| c.3).sum();
        assert_recovers(f, cut, want);
    }
    // Cut right before the footer: everything survives.
    assert_recovers(f, &f.bytes[..f.footer_offset as usize], 2400);
    // Cut inside the header: a clear error.
    for cut in [0usize, 7, 40, f.header_end as usize - 1] {
        let err = recover_bytes(&f.bytes[..cut]).unwrap_err();
        assert!(err.is_corruption(), "cut {cut}: {err}");
    }
}

#[test]
fn truncation_at_pseudo_random_offsets() {
    for encoding in [EventEncoding::V1, EventEncoding::V2, EventEncoding::V3] {
        truncation_at_pseudo_random_offsets_in(&fixture(encoding));
    }
}

fn truncation_at_pseudo_random_offsets_in(f: &Fixture) {
    let mut x = 12345u64;
    for _ in 0..300 {
        x = x
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        let cut = f.header_end + (x >> 11) % (f.bytes.len() as u64 - f.header_end);
        let bytes = &f.bytes[..cut as usize];
        exercise(bytes);
        assert_recovers(f, bytes, f.events_before(cut).min(2400));
    }
}

#[test]
fn bit_flips_in_every_chunk_recover_the_prefix_before_it() {
    for encoding in [EventEncoding::V1, EventEncoding::V2, EventEncoding::V3] {
        bit_flips_in_every_chunk_recover_the_prefix_before_it_in(&fixture(encoding));
    }
}

fn bit_flips_in_every_chunk_recover_the_prefix_before_it_in(f: &Fixture) {
    let mut event_index = 0usize;
    for (i, c) in f.chunks.iter().enumerate() {
        let want: u64 = f.chunks[..i].iter().map(|c| c.3).sum();
        for at in [c.0 + 2, c.0 + 20, c.0 + 109, c.0 + 115, c.0 + c.1 - 1] {
            let mut bytes = f.bytes.clone();
            bytes[at as usize] ^= 0x10;
            exercise(&bytes);
            assert_recovers(f, &bytes, want);
            let r = match TraceReader::from_bytes(bytes) {
                Ok(r) => r,
                // The first blob chunk holds the ROM, which opening resolves.
                Err(FormatError::CorruptHeader { .. }) if i == 0 => continue,
                Err(e) => panic!("flip at {at} in chunk {i}: {e}"),
            };
            match r.verify() {
                Err(FormatError::CorruptChunk {
                    chunk_type,
                    index,
                    offset,
                    ..
                }) if c.2 => {
                    assert_eq!(chunk_type, ChunkType::Events);
                    assert_eq!(index, event_index);
                    assert_eq!(offset, c.0);
                }
                Err(FormatError::CorruptChunk {
                    chunk_type: ChunkType::Blobs,
                    offset,
                    ..
                }) if !c.2 => assert_eq!(offset, c.0),
                other => panic!("flip at {at} in chunk {i}: {other:?}"),
            }
        }
        if c.2 {
            event_index += 1;
        }
    }
}

#[test]
fn zeroed_chunk() {
    for encoding in [EventEncoding::V1, EventEncoding::V2, EventEncoding::V3] {
        zeroed_chunk_in(&fixture(encoding));
    }
}

fn zeroed_chunk_in(f: &Fixture) {
    for (i, c) in f.chunks.iter().enumerate().step_by(3) {
        let mut bytes = f.bytes.clone();
        bytes[c.0 as usize..(c.0 + c.1) as usize].fill(0);
        exercise(&bytes);
        let want: u64 = f.chunks[..i].iter().map(|c| c.3).sum();
        assert_recovers(f, &bytes, want);
        let r = match TraceReader::from_bytes(bytes) {
            Ok(r) => r,
            Err(FormatError::CorruptHeader { .. }) if i == 0 => continue,
            Err(e) => panic!("zeroed chunk {i}: {e}"),
        };
        assert!(
            matches!(r.verify(), Err(FormatError::CorruptChunk { offset, .. }) if offset == c.0)
        );
    }
}

#[test]
fn bit_flips_in_header_and_footer() {
    for encoding in [EventEncoding::V1, EventEncoding::V2, EventEncoding::V3] {
        bit_flips_in_header_and_footer_in(&fixture(encoding));
    }
}

fn bit_flips_in_header_and_footer_in(f: &Fixture) {
    for at in [0usize, 9, 13, 30, 61, 70, f.header_end as usize - 3] {
        let mut bytes = f.bytes.clone();
        bytes[at] ^= 1;
        exercise(&bytes);
        let err = TraceReader::from_bytes(bytes.clone()).unwrap_err();
        assert!(err.is_corruption(), "{err}");
        assert!(recover_bytes(&bytes).unwrap_err().is_corruption());
    }
    let len = f.bytes.len();
    for at in [
        f.footer_offset as usize,
        f.footer_offset as usize + 30,
        f.footer_offset as usize + 200,
        len - 40,
        len - 20,
        len - 1,
    ] {
        let mut bytes = f.bytes.clone();
        bytes[at] ^= 0x80;
        exercise(&bytes);
        let err = TraceReader::from_bytes(bytes.clone()).unwrap_err();
        assert!(
            matches!(
                err,
                FormatError::CorruptFooter { .. } | FormatError::MissingTrailer { .. }
            ),
            "flip at {at}: {err}"
        );
        let (report, _) = recover_bytes(&bytes).unwrap();
        assert!(!report.had_footer);
        assert_recovers(f, &bytes, 2400);
    }
}

/// Rewrites the footer with `edit` applied to its bytes, then fixes both checksums so only the
/// content lies.
fn lying_footer(f: &Fixture, edit: impl Fn(&mut [u8])) -> Vec<u8> {
    let mut bytes = f.bytes.clone();
    let len = bytes.len();
    let fo = f.footer_offset as usize;
    edit(&mut bytes[fo..len - TRAILER_LEN]);
    let crc = crc32fast::hash(&bytes[fo..len - TRAILER_LEN]);
    bytes[len - 8..len - 4].copy_from_slice(&crc.to_le_bytes());
    let tcrc = crc32fast::hash(&bytes[len - TRAILER_LEN..len - 4]);
    bytes[len - 4..].copy_from_slice(&tcrc.to_le_bytes());
    bytes
}

#[test]
fn footers_that_lie() {
    for encoding in [EventEncoding::V1, EventEncoding::V2, EventEncoding::V3] {
        footers_that_lie_in(&fixture(encoding));
    }
}

fn footers_that_lie_in(f: &Fixture) {
    let e0 = FOOTER_FIXED_LEN;
    let add = |b: &mut [u8], at: usize, d: i64| {
        let v = u64::from_le_bytes(b[at..at + 8].try_into().unwrap());
        b[at..at + 8].copy_from_slice(&(v as i64 + d).to_le_bytes());
    };
    type Edit<'a> = Box<dyn Fn(&mut [u8]) + 'a>;
    let edits: Vec<(&str, Edit)> = vec![
        (
            "entry offset +1",
            Box::new(move |b| add(b, e0 + 5 * EVENT_ENTRY_LEN, 1)),
        ),
        (
            "entry offset -4",
            Box::new(move |b| add(b, e0 + 2 * EVENT_ENTRY_LEN, -4)),
        ),
        (
            "entry first seq",
            Box::new(move |b| add(b, e0 + 3 * EVENT_ENTRY_LEN + 16, 1)),
        ),
        (
            "entry count",
            Box::new(move |b| b[e0 + 4 * EVENT_ENTRY_LEN + 40] ^= 1),
        ),
        (
            "entry time",
            Box::new(move |b| add(b, e0 + 6 * EVENT_ENTRY_LEN + 24, 1000)),
        ),
        ("event total", Box::new(|b| add(b, 24, 1))),
        ("chunk count", Box::new(|b| add(b, 8, -1))),
        ("blob count", Box::new(|b| add(b, 40, 1))),
        (
            "kind counts shifted",
            Box::new(|b| {
                add(b, 48, -1);
                add(b, 56, 1);
            }),
        ),
        (
            "entries swapped",
            Box::new(move |b| {
                let (x, y) = (e0 + EVENT_ENTRY_LEN, e0 + 2 * EVENT_ENTRY_LEN);
                let tmp = b[x..y].to_vec();
                b.copy_within(y..y + EVENT_ENTRY_LEN, x);
                b[y..y + EVENT_ENTRY_LEN].copy_from_slice(&tmp);
            }),
        ),
        (
            "blob entry offset",
            Box::new(|b| {
                let at = b.len() - BLOB_ENTRY_LEN;
                add(b, at, 3);
            }),
        ),
        ("first seq", Box::new(|b| add(b, 32, 5))),
    ];
    for (name, edit) in edits {
        let bytes = lying_footer(f, edit);
        exercise(&bytes);
        let outcome = TraceReader::from_bytes(bytes.clone()).and_then(|r| {
            // Reading every chunk through the lying index must fail too, not return wrong events.
            r.verify()?;
            Ok(read_all(&r))
        });
        match outcome {
            Err(e) => assert!(e.is_corruption(), "{name}: {e}"),
            Ok(events) => panic!("{name}: lying footer accepted ({} events)", events.len()),
        }
        assert_recovers(f, &bytes, 2400);
    }
}

/// Found by the fuzzer: a header whose ROM length disagrees with the ROM blob (checksums intact)
/// must not survive into a recovered trace.
#[test]
fn rom_length_that_lies_is_dropped_by_recovery() {
    for encoding in [EventEncoding::V1, EventEncoding::V2, EventEncoding::V3] {
        rom_length_that_lies_is_dropped_by_recovery_in(&fixture(encoding));
    }
}

fn rom_length_that_lies_is_dropped_by_recovery_in(f: &Fixture) {
    let mut bytes = f.bytes.clone();
    bytes[32..40].copy_from_slice(&2999u64.to_le_bytes());
    let crc = crc32fast::hash(&bytes[..60]);
    bytes[60..64].copy_from_slice(&crc.to_le_bytes());
    assert!(matches!(
        TraceReader::from_bytes(bytes.clone()),
        Err(FormatError::CorruptHeader { .. })
    ));
    exercise(&bytes);
    let (report, out) = recover_bytes(&bytes).unwrap();
    assert_eq!(report.events, 2400);
    let r = TraceReader::from_bytes(out).unwrap();
    assert_eq!(r.header().rom, None);
    r.verify().unwrap();
}
