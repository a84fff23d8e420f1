//! Trace format benchmarks.
//!
//! * `encode/*`, `decode/*` on the corpus logs (`../shared/corpus`, or `$HWRR_CORPUS`; skipped with a
//!   message when absent), imported by `hwrr-import` with its default options: hwrr's default
//!   `WriterOptions` (format v3) against a row-wise fixed-width + zstd-1 baseline implemented here,
//!   and against hwrr's own earlier encodings (`EventEncoding::V2` and `V1`, benchmarks named
//!   `hwrr_v2*` and `hwrr_v1*`). "Encode" = events in memory -> complete trace bytes (header, chunks,
//!   footer). "Decode events" = trace bytes -> every event materialized as an
//!   `hwrr_formats::Event` (hwrr: `TraceReader::read_chunk_into` on every chunk, reusing one vector;
//!   baseline: zstd + row parsing into `Event`s). "Decode columns" = hwrr's fast path,
//!   `TraceReader::read_chunk_columns`: checksums, zstd, and every field of every event decoded into
//!   reusable column vectors (times, kinds, access keys, values; complete `Event`s only for events
//!   that are not value accesses), no per-event allocation; its baseline counterpart
//!   (`baseline_fixed_zstd1_columns`) decompresses the rows and copies every field into reusable
//!   column vectors. A summary of events/s, bytes per access and ratios to the baseline, measured in the
//!   same run, is printed at the end of each corpus.
//! * `open_seek/*`: open a synthetic trace of 10^9 events in 10^5 chunks and seek to an event.
//!
//! Run: `cargo bench -p hwrr-formats --bench format`.

#[path = "support/corpus.rs"]
mod corpus;

use std::hint::black_box;
use std::io::Write;
use std::time::{Duration, Instant};

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use hwrr_formats::layout::*;
use hwrr_formats::*;

const CORPORA: [&str; 2] = ["rtl8139-linux-8139cp", "nvme-linux-nvme"];

/// The baseline: one fixed-width little-endian row per event, zstd-1 per 64 Ki rows.
mod baseline {
    use super::*;

    pub const ROW: usize = 8 + 8 + 1 + 4 + 8 + 1 + 8 + 4 + 8;
    const ROWS_PER_BLOCK: usize = 64 * 1024;

    fn row(e: &Event, out: &mut Vec<u8>) {
        let (region, offset, size, value) = match &e.kind {
            EventKind::MmioRead(a)
            | EventKind::MmioWrite(a)
            | EventKind::PioRead(a)
            | EventKind::PioWrite(a) => match a.data {
                AccessData::Value { size, value } => (a.region, a.offset, size, value),
                AccessData::Bytes(_) => (a.region, a.offset, 0, 0),
            },
            EventKind::ConfigRead(c) | EventKind::ConfigWrite(c) => match c.data {
                AccessData::Value { size, value } => (0, c.offset as u64, size, value),
                AccessData::Bytes(_) => (0, c.offset as u64, 0, 0),
            },
            EventKind::Irq(i) => (i.index, i.vector as u64, 0, 0),
            _ => (0, 0, 0, 0),
        };
        out.extend_from_slice(&e.seq.to_le_bytes());
        out.extend_from_slice(&e.t_ns.to_le_bytes());
        out.push(e.tag() as u8);
        out.extend_from_slice(&region.to_le_bytes());
        out.extend_from_slice(&offset.to_le_bytes());
        out.push(size);
        out.extend_from_slice(&value.to_le_bytes());
        out.extend_from_slice(&e.status.to_le_bytes());
        out.extend_from_slice(&e.duration_ns.to_le_bytes());
    }

    pub fn encode(events: &[Event]) -> Vec<Vec<u8>> {
        let mut c = zstd::bulk::Compressor::new(1).unwrap();
        let mut buf = Vec::with_capacity(ROW * ROWS_PER_BLOCK);
        events
            .chunks(ROWS_PER_BLOCK)
            .map(|block| {
                buf.clear();
                block.iter().for_each(|e| row(e, &mut buf));
                c.compress(&buf).unwrap()
            })
            .collect()
    }

    fn u64_at(b: &[u8], o: usize) -> u64 {
        u64::from_le_bytes(b[o..o + 8].try_into().unwrap())
    }

    /// The baseline's rows read into reusable column vectors (no `Event`s, no per-event
    /// allocation): the counterpart of hwrr's `read_chunk_columns`.
    #[derive(Default)]
    pub struct Columns {
        raw: Vec<u8>,
        seq: Vec<u64>,
        t_ns: Vec<u64>,
        tag: Vec<u8>,
        region: Vec<u32>,
        offset: Vec<u64>,
        size: Vec<u8>,
        value: Vec<u64>,
        status: Vec<u32>,
        duration: Vec<u64>,
    }

    pub fn decode_columns(blocks: &[Vec<u8>], events: usize, c: &mut Columns) -> usize {
        let mut d = zstd::bulk::Decompressor::new().unwrap();
        let mut n = 0;
        for b in blocks {
            c.raw.clear();
            c.raw.reserve(ROW * ROWS_PER_BLOCK);
            d.decompress_to_buffer(b, &mut c.raw).unwrap();
            let Columns {
                raw,
                seq,
                t_ns,
                tag,
                region,
                offset,
                size,
                value,
                status,
                duration,
            } = c;
            for v in [&mut *seq, t_ns, offset, value, duration] {
                v.clear();
            }
            for v in [&mut *tag, size] {
                v.clear();
            }
            region.clear();
            status.clear();
            for r in raw.chunks_exact(ROW) {
                seq.push(u64_at(r, 0));
                t_ns.push(u64_at(r, 8));
                tag.push(r[16]);
                region.push(u32::from_le_bytes(r[17..21].try_into().unwrap()));
                offset.push(u64_at(r, 21));
                size.push(r[29]);
                value.push(u64_at(r, 30));
                status.push(u32::from_le_bytes(r[38..42].try_into().unwrap()));
                duration.push(u64_at(r, 42));
            }
            n += seq.len();
        }
        assert_eq!(n, events);
        n
    }

    pub fn decode(blocks: &[Vec<u8>], events: usize) -> usize {
        let mut d = zstd::bulk::Decompressor::new().unwrap();
        let mut n = 0;
        for b in blocks {
            let raw = d.decompress(b, ROW * ROWS_PER_BLOCK).unwrap();
            let out: Vec<Event> = raw
                .chunks_exact(ROW)
                .map(|r| {
                    let tag = KindTag::from_u8(r[16]).unwrap();
                    let region = u32::from_le_bytes(r[17..21].try_into().unwrap());
                    let offset = u64_at(r, 21);
                    let size = r[29];
                    let value = u64_at(r, 30);
                    let data = AccessData::Value { size, value };
                    let access = RegionAccess {
                        region,
                        offset,
                        data: data.clone(),
                    };
                    let kind = match tag {
                        KindTag::MmioRead => EventKind::MmioRead(access),
                        KindTag::MmioWrite => EventKind::MmioWrite(access),
                        KindTag::PioRead => EventKind::PioRead(access),
                        KindTag::PioWrite => EventKind::PioWrite(access),
                        KindTag::ConfigRead => EventKind::ConfigRead(ConfigAccess {
                            offset: offset as u32,
                            data,
                        }),
                        KindTag::ConfigWrite => EventKind::ConfigWrite(ConfigAccess {
                            offset: offset as u32,
                            data,
                        }),
                        _ => EventKind::Irq(Irq {
                            index: region,
                            vector: offset as u32,
                        }),
                    };
                    Event {
                        seq: u64_at(r, 0),
                        t_ns: u64_at(r, 8),
                        status: u32::from_le_bytes(r[38..42].try_into().unwrap()),
                        duration_ns: u64_at(r, 42),
                        kind,
                    }
                })
                .collect();
            n += out.len();
        }
        assert_eq!(n, events);
        n
    }
}

fn hwrr_encode(header: &TraceHeader, events: &[Event], event_encoding: EventEncoding) -> Vec<u8> {
    let opts = WriterOptions {
        event_encoding,
        ..WriterOptions::default()
    };
    let mut w = TraceWriter::new(Vec::new(), header, opts).unwrap();
    for e in events {
        w.append(e).unwrap();
    }
    w.finish_into_inner().unwrap().1
}

fn hwrr_decode(r: &TraceReader, out: &mut Vec<Event>) -> usize {
    (0..r.chunk_count())
        .map(|i| {
            r.read_chunk_into(i, out).unwrap();
            out.len()
        })
        .sum()
}

fn hwrr_decode_columns(r: &TraceReader, out: &mut ChunkColumns) -> usize {
    (0..r.chunk_count())
        .map(|i| {
            r.read_chunk_columns(i, out).unwrap();
            out.len()
        })
        .sum()
}

/// Best-of-`runs` events per second of `f`, for the printed ratio summary.
fn rate(events: usize, runs: usize, mut f: impl FnMut()) -> f64 {
    let best = (0..runs)
        .map(|_| {
            let start = Instant::now();
            f();
            start.elapsed()
        })
        .min()
        .unwrap();
    events as f64 / best.as_secs_f64()
}

fn corpus(c: &mut Criterion) {
    for name in CORPORA {
        let Some((header, events)) = corpus::import(name) else {
            eprintln!("corpus {name} absent (no ../shared/corpus and no $HWRR_CORPUS): skipped");
            continue;
        };
        let n = events.len();
        let mut counts = KindCounts::default();
        events.iter().for_each(|e| counts.add(e.tag()));
        let accesses = counts.accesses() as f64;

        let trace = hwrr_encode(&header, &events, EventEncoding::V3);
        let reader = TraceReader::from_bytes(trace.clone()).unwrap();
        let trace_v2 = hwrr_encode(&header, &events, EventEncoding::V2);
        let reader_v2 = TraceReader::from_bytes(trace_v2.clone()).unwrap();
        let trace_v1 = hwrr_encode(&header, &events, EventEncoding::V1);
        let reader_v1 = TraceReader::from_bytes(trace_v1.clone()).unwrap();
        for r in [&reader, &reader_v2, &reader_v1] {
            assert_eq!(
                r.iter().map(|e| e.unwrap()).collect::<Vec<_>>(),
                events,
                "hwrr must be lossless"
            );
            assert_eq!(r.header(), &header);
        }
        let blocks = baseline::encode(&events);
        let baseline_bytes: usize = blocks.iter().map(|b| b.len()).sum();

        let mut g = c.benchmark_group(format!("encode/{name}"));
        g.throughput(Throughput::Elements(n as u64));
        g.bench_function("hwrr", |b| {
            b.iter(|| black_box(hwrr_encode(&header, &events, EventEncoding::V3)))
        });
        g.bench_function("hwrr_v2", |b| {
            b.iter(|| black_box(hwrr_encode(&header, &events, EventEncoding::V2)))
        });
        g.bench_function("hwrr_v1", |b| {
            b.iter(|| black_box(hwrr_encode(&header, &events, EventEncoding::V1)))
        });
        g.bench_function("baseline_fixed_zstd1", |b| {
            b.iter(|| black_box(baseline::encode(&events)))
        });
        g.finish();
        let mut g = c.benchmark_group(format!("decode/{name}"));
        g.throughput(Throughput::Elements(n as u64));
        let mut scratch = Vec::new();
        g.bench_function("hwrr_events", |b| {
            b.iter(|| black_box(hwrr_decode(&reader, &mut scratch)))
        });
        let mut cols = ChunkColumns::default();
        g.bench_function("hwrr_columns", |b| {
            b.iter(|| black_box(hwrr_decode_columns(&reader, &mut cols)))
        });
        g.bench_function("hwrr_v2_columns", |b| {
            b.iter(|| black_box(hwrr_decode_columns(&reader_v2, &mut cols)))
        });
        g.bench_function("hwrr_v1_columns", |b| {
            b.iter(|| black_box(hwrr_decode_columns(&reader_v1, &mut cols)))
        });
        g.bench_function("baseline_fixed_zstd1", |b| {
            b.iter(|| black_box(baseline::decode(&blocks, n)))
        });
        let mut base_cols = baseline::Columns::default();
        g.bench_function("baseline_fixed_zstd1_columns", |b| {
            b.iter(|| black_box(baseline::decode_columns(&blocks, n, &mut base_cols)))
        });
        g.finish();

        let enc = rate(n, 7, || {
            drop(black_box(hwrr_encode(&header, &events, EventEncoding::V3)))
        });
        let enc_v2 = rate(n, 7, || {
            drop(black_box(hwrr_encode(&header, &events, EventEncoding::V2)))
        });
        let enc_v1 = rate(n, 7, || {
            drop(black_box(hwrr_encode(&header, &events, EventEncoding::V1)))
        });
        let enc_base = rate(n, 7, || drop(black_box(baseline::encode(&events))));
        let dec = rate(n, 7, || {
            black_box(hwrr_decode(&reader, &mut scratch));
        });
        let dec_cols = rate(n, 7, || {
            black_box(hwrr_decode_columns(&reader, &mut cols));
        });
        let dec_cols_v2 = rate(n, 7, || {
            black_box(hwrr_decode_columns(&reader_v2, &mut cols));
        });
        let dec_cols_v1 = rate(n, 7, || {
            black_box(hwrr_decode_columns(&reader_v1, &mut cols));
        });
        let dec_v1 = rate(n, 7, || {
            black_box(hwrr_decode(&reader_v1, &mut scratch));
        });
        let dec_base = rate(n, 7, || {
            black_box(baseline::decode(&blocks, n));
        });
        let dec_base_cols = rate(n, 7, || {
            black_box(baseline::decode_columns(&blocks, n, &mut base_cols));
        });
        println!(
            "\n== {name}: {n} events, {accesses} register+config accesses\n\
             size    hwrr {:.3} bytes/access ({} bytes) | baseline {:.3} ({} bytes) | ratio {:.2}x smaller\n\
             encode  hwrr {:.1} M events/s | baseline {:.1} M/s | ratio {:.2}\n\
             decode  hwrr events {:.1} M events/s, columns {:.1} M/s | baseline events {:.1} M/s, columns {:.1} M/s | ratios {:.2}, {:.2}\n\
             v2      size {:.3} bytes/access ({} bytes, v3/v2 {:.3}) | encode {:.1} M/s (v3/v2 {:.2}) | \
             decode columns {:.1} M/s (v3/v2 {:.2})\n\
             v1      size {:.3} bytes/access ({} bytes, v3/v1 {:.3}) | encode {:.1} M/s (v3/v1 {:.2}) | \
             decode events {:.1} M/s, columns {:.1} M/s (v3/v1 {:.2}, {:.2})\n",
            trace.len() as f64 / accesses,
            trace.len(),
            baseline_bytes as f64 / accesses,
            baseline_bytes,
            baseline_bytes as f64 / trace.len() as f64,
            enc / 1e6,
            enc_base / 1e6,
            enc / enc_base,
            dec / 1e6,
            dec_cols / 1e6,
            dec_base / 1e6,
            dec_base_cols / 1e6,
            dec / dec_base,
            dec_cols / dec_base_cols,
            trace_v2.len() as f64 / accesses,
            trace_v2.len(),
            trace.len() as f64 / trace_v2.len() as f64,
            enc_v2 / 1e6,
            enc / enc_v2,
            dec_cols_v2 / 1e6,
            dec_cols / dec_cols_v2,
            trace_v1.len() as f64 / accesses,
            trace_v1.len(),
            trace.len() as f64 / trace_v1.len() as f64,
            enc_v1 / 1e6,
            enc / enc_v1,
            dec_v1 / 1e6,
            dec_cols_v1 / 1e6,
            dec / dec_v1,
            dec_cols / dec_cols_v1,
        );
    }
}

/// Builds a trace of `chunks` chunks of `per_chunk` polling reads by repeating one encoded chunk
/// with fresh headers (writing 10^9 events through the encoder would take minutes).
fn synthetic_trace(path: &std::path::Path, chunks: u64, per_chunk: u64) {
    let step = 1000u64;
    let events: Vec<Event> = (0..per_chunk)
        .map(|i| {
            Event::new(
                i,
                i * step,
                EventKind::MmioRead(RegionAccess {
                    region: 0,
                    offset: 8 * (i % 4),
                    data: AccessData::value(4, (i / 4) % 3).unwrap(),
                }),
            )
        })
        .collect();
    let opts = WriterOptions {
        chunk_events: per_chunk as usize,
        ..WriterOptions::default()
    };
    let mut w = TraceWriter::new(Vec::new(), &TraceHeader::default(), opts).unwrap();
    events.iter().for_each(|e| w.append(e).unwrap());
    let one = w.finish_into_inner().unwrap().1;
    let r = TraceReader::from_bytes(one.clone()).unwrap();
    let c0 = r.chunk(0);
    let header_block = &one[..c0.offset as usize];
    let chunk = &one[c0.offset as usize..(c0.offset + c0.len) as usize];
    let payload = &chunk[CHUNK_HEADER_LEN..];
    let payload_len = u32::from_le_bytes(chunk[12..16].try_into().unwrap());
    let span = (per_chunk - 1) * step;

    let mut out = std::io::BufWriter::new(std::fs::File::create(path).unwrap());
    out.write_all(header_block).unwrap();
    let mut pos = header_block.len() as u64;
    let mut infos = Vec::with_capacity(chunks as usize);
    let mut kind_counts = [0u32; KindTag::COUNT];
    kind_counts[KindTag::MmioRead as usize] = per_chunk as u32;
    for k in 0..chunks {
        let first_t = k * per_chunk * step;
        let h = ChunkHeader {
            chunk_type: CHUNK_TYPE_EVENTS,
            encoding: chunk[5],
            payload_zlen: payload.len() as u32,
            payload_len,
            first_id: k * per_chunk,
            count: per_chunk as u32,
            first_t_ns: first_t,
            last_t_ns: first_t + span,
            counts: kind_counts,
            payload_crc: crc32fast::hash(payload),
        };
        out.write_all(&h.encode()).unwrap();
        out.write_all(payload).unwrap();
        infos.push(ChunkInfo {
            offset: pos,
            len: h.total_len(),
            first_seq: k * per_chunk,
            first_t_ns: first_t,
            last_t_ns: first_t + span,
            count: per_chunk as u32,
        });
        pos += h.total_len();
    }
    let mut counts = [0u64; KindTag::COUNT];
    counts[KindTag::MmioRead as usize] = chunks * per_chunk;
    let fixed = FooterFixed {
        event_chunks: chunks,
        blob_chunks: 0,
        event_count: chunks * per_chunk,
        first_seq: 0,
        blob_count: 0,
        counts,
    };
    out.write_all(&encode_footer_and_trailer(pos, &fixed, &infos, &[]))
        .unwrap();
    out.flush().unwrap();
}

fn open_seek(c: &mut Criterion) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("synthetic-1e9.hwrr");
    let (chunks, per_chunk) = (100_000u64, 10_000u64);
    let start = Instant::now();
    synthetic_trace(&path, chunks, per_chunk);
    let r = TraceReader::open(&path).unwrap();
    assert_eq!(r.event_count(), chunks * per_chunk);
    println!(
        "synthetic trace: {} events in {} chunks, {} bytes, generated in {:.1} s",
        r.event_count(),
        r.chunk_count(),
        r.file_len(),
        start.elapsed().as_secs_f64()
    );
    let mut g = c.benchmark_group("open_seek");
    g.bench_function("open", |b| {
        b.iter(|| black_box(TraceReader::open(&path).unwrap().event_count()))
    });
    let mut x = 0x1234_5678_9abc_def0u64;
    let mut next_seq = move || {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        x % (chunks * per_chunk)
    };
    g.bench_function("open_and_seek_seq", |b| {
        b.iter(|| {
            let r = TraceReader::open(&path).unwrap();
            let seq = next_seq();
            let ev = r.iter_from(seq).next().unwrap().unwrap();
            assert_eq!(ev.seq, seq);
        })
    });
    g.bench_function("open_and_seek_time", |b| {
        b.iter(|| {
            let r = TraceReader::open(&path).unwrap();
            let t = next_seq() * 1000;
            assert_eq!(r.seq_at_time(t), Some(t / 1000));
        })
    });
    g.finish();
}

fn config() -> Criterion {
    Criterion::default()
        .sample_size(10)
        .warm_up_time(Duration::from_millis(300))
        .measurement_time(Duration::from_secs(2))
}

criterion_group! { name = benches; config = config(); targets = corpus, open_seek }
criterion_main!(benches);
