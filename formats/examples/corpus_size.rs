//! Prints bytes per access and single-run encode/decode speed of the imported corpus logs at given
//! writer settings, for exploring settings quickly (the benchmark is the reference):
//! `cargo run --release -p hwrr-formats --example corpus_size [chunk_events] [zstd_level] [v1|v2|v3]`.
//! It also checks that every event reads back as written.

#[path = "../benches/support/corpus.rs"]
mod corpus;

use std::time::Instant;

use hwrr_formats::*;

fn main() -> Result<(), FormatError> {
    let args: Vec<String> = std::env::args().collect();
    let mut opts = WriterOptions::default();
    if let Some(n) = args.get(1).and_then(|a| a.parse().ok()) {
        opts.chunk_events = n;
    }
    if let Some(l) = args.get(2).and_then(|a| a.parse().ok()) {
        opts.zstd_level = l;
    }
    match args.get(3).map(String::as_str) {
        Some("v1") => opts.event_encoding = EventEncoding::V1,
        Some("v2") => opts.event_encoding = EventEncoding::V2,
        _ => {}
    }
    for name in ["rtl8139-linux-8139cp", "nvme-linux-nvme"] {
        let Some((header, events)) = corpus::import(name) else {
            println!("{name}: corpus absent, skipped");
            continue;
        };
        // Best of several runs: the machine is shared.
        let runs = std::env::var("RUNS")
            .ok()
            .and_then(|r| r.parse().ok())
            .unwrap_or(20);
        let mut enc = std::time::Duration::MAX;
        let mut written = None;
        for _ in 0..runs {
            let start = Instant::now();
            let mut w = TraceWriter::new(Vec::new(), &header, opts.clone())?;
            for e in &events {
                w.append(e)?;
            }
            written = Some(w.finish_into_inner()?);
            enc = enc.min(start.elapsed());
        }
        let Some((summary, bytes)) = written else {
            return Ok(());
        };
        let r = TraceReader::from_bytes(bytes)?;
        // Best of several runs: the machine is shared.
        let mut cols = ChunkColumns::default();
        let mut n = 0;
        let mut dec = std::time::Duration::MAX;
        for _ in 0..runs {
            let start = Instant::now();
            n = 0;
            for i in 0..r.chunk_count() {
                r.read_chunk_columns(i, &mut cols)?;
                n += cols.len();
            }
            dec = dec.min(start.elapsed());
        }
        let back: Vec<Event> = r.iter().collect::<Result<_, _>>()?;
        assert!(back == events, "{name}: events do not read back as written");
        let accesses = summary.counts.accesses();
        println!(
            "{name}: {} events ({n} decoded), {accesses} accesses, {} bytes, {:.3} bytes/access, \
             encode {:.1} M ev/s, decode (columns) {:.1} M ev/s",
            events.len(),
            summary.bytes,
            summary.bytes as f64 / accesses as f64,
            events.len() as f64 / enc.as_secs_f64() / 1e6,
            n as f64 / dec.as_secs_f64() / 1e6,
        );
    }
    Ok(())
}
