//! Decodes the imported corpus traces in a loop, for profilers:
//! `DECODE_SECONDS=5 cargo run --release -p hwrr-formats --example decode_loop [rtl|nvme]`.

#[path = "../benches/support/corpus.rs"]
mod corpus;

use std::time::{Duration, Instant};

use hwrr_formats::*;

fn main() -> Result<(), FormatError> {
    let which = std::env::args().nth(1).unwrap_or_default();
    let seconds: f64 = std::env::var("DECODE_SECONDS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(3.0);
    for name in ["rtl8139-linux-8139cp", "nvme-linux-nvme"] {
        if !which.is_empty() && !name.starts_with(&which) {
            continue;
        }
        let Some((header, events)) = corpus::import(name) else {
            println!("{name}: corpus absent, skipped");
            continue;
        };
        let mut w = TraceWriter::new(Vec::new(), &header, WriterOptions::default())?;
        for e in &events {
            w.append(e)?;
        }
        let (_, bytes) = w.finish_into_inner()?;
        let r = TraceReader::from_bytes(bytes)?;
        let mut cols = ChunkColumns::default();
        let (mut total, mut best) = (0u64, Duration::MAX);
        let start = Instant::now();
        while start.elapsed().as_secs_f64() < seconds {
            let one = Instant::now();
            for i in 0..r.chunk_count() {
                r.read_chunk_columns(i, &mut cols)?;
                total += cols.len() as u64;
            }
            best = best.min(one.elapsed());
        }
        println!(
            "{name}: {total} events decoded, best pass {:.1} M ev/s",
            events.len() as f64 / best.as_secs_f64() / 1e6
        );
    }
    Ok(())
}
