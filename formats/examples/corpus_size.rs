//! Prints bytes per access and encode/decode speed of the corpus logs at given writer settings:
//! `cargo run --release -p hwrr-formats --example corpus_size [chunk_events] [zstd_level]`.

#[path = "../benches/support/qemu_log.rs"]
mod qemu_log;

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
    for name in ["rtl8139-linux-8139cp", "nvme-linux-nvme"] {
        let Some(log) = qemu_log::load_log(name) else {
            println!("{name}: corpus absent, skipped");
            continue;
        };
        let events = qemu_log::extract(&log);
        let header = qemu_log::header();
        let start = Instant::now();
        let mut w = TraceWriter::new(Vec::new(), &header, opts.clone())?;
        for e in &events {
            w.append(e)?;
        }
        let (summary, bytes) = w.finish_into_inner()?;
        let enc = start.elapsed();
        let r = TraceReader::from_bytes(bytes)?;
        let start = Instant::now();
        let mut n = 0u64;
        for i in 0..r.chunk_count() {
            n += r.read_chunk(i)?.len() as u64;
        }
        let dec = start.elapsed();
        assert_eq!(n, events.len() as u64);
        let accesses = summary.counts.accesses();
        println!(
            "{name}: {} events, {accesses} accesses, {} bytes, {:.3} bytes/access, encode {:.1} M ev/s, decode {:.1} M ev/s",
            events.len(),
            summary.bytes,
            summary.bytes as f64 / accesses as f64,
            events.len() as f64 / enc.as_secs_f64() / 1e6,
            events.len() as f64 / dec.as_secs_f64() / 1e6,
        );
    }
    Ok(())
}
