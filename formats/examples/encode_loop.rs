//! Encodes an imported corpus trace in a loop, for profilers and A/B runs:
//! `ENCODE_SECONDS=5 cargo run --release -p hwrr-formats --example encode_loop [rtl|nvme] [v1|v2|v3]`.
//! Prints the best pass's rate (a whole file: header, chunks, footer).

#[path = "../benches/support/corpus.rs"]
mod corpus;

use std::time::{Duration, Instant};

use hwrr_formats::*;

fn main() -> Result<(), FormatError> {
    let args: Vec<String> = std::env::args().collect();
    let which = args.get(1).cloned().unwrap_or_default();
    let event_encoding = match args.get(2).map(String::as_str) {
        Some("v1") => EventEncoding::V1,
        Some("v2") => EventEncoding::V2,
        _ => EventEncoding::V3,
    };
    let seconds: f64 = std::env::var("ENCODE_SECONDS")
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
        let opts = WriterOptions {
            event_encoding,
            ..WriterOptions::default()
        };
        let mut best = Duration::MAX;
        let mut bytes = 0;
        let start = Instant::now();
        while start.elapsed().as_secs_f64() < seconds {
            let pass = Instant::now();
            let mut w = TraceWriter::new(Vec::new(), &header, opts.clone())?;
            for e in &events {
                w.append(e)?;
            }
            bytes = w.finish_into_inner()?.1.len();
            best = best.min(pass.elapsed());
        }
        println!(
            "{name} {event_encoding:?}: {bytes} bytes, best pass {:.1} M events/s",
            events.len() as f64 / best.as_secs_f64() / 1e6
        );
    }
    Ok(())
}
