//! `hwrr dump`: events one per line, as text or JSON lines.

use std::io::{self, BufWriter, Write};
use std::path::PathBuf;

use anyhow::Context;
use clap::Args;
use hwrr_formats::json::{event_to_json, event_to_text, JsonOptions};
use hwrr_formats::regmap::RegisterMap;

/// Print events one per line.
#[derive(Args, Debug)]
pub struct DumpArgs {
    /// The trace file.
    trace: PathBuf,
    /// First sequence number to print.
    #[arg(long)]
    from: Option<u64>,
    /// How many events to print.
    #[arg(long)]
    count: Option<u64>,
    /// Print JSON lines.
    #[arg(long)]
    json: bool,
    /// Name registers with this register map (TOML).
    #[arg(long)]
    regmap: Option<PathBuf>,
    /// Include DMA and marker payload bytes (hex) in JSON output.
    #[arg(long)]
    payloads: bool,
}

/// Runs `hwrr dump`.
pub fn run(args: DumpArgs) -> anyhow::Result<i32> {
    let (reader, _) = super::open_trace(&args.trace)?;
    let regmap = args.regmap.as_deref().map(RegisterMap::load).transpose()?;
    let from = args.from.unwrap_or_else(|| reader.first_seq());
    let limit = args.count.unwrap_or(u64::MAX);
    let opts = JsonOptions {
        payloads: args.payloads,
    };
    let stdout = io::stdout();
    let mut out = BufWriter::new(stdout.lock());
    let result = (|| -> anyhow::Result<()> {
        for ev in reader
            .iter_from(from)
            .take(limit.try_into().unwrap_or(usize::MAX))
        {
            let ev = ev.context("cannot decode trace")?;
            if args.json {
                serde_json::to_writer(&mut out, &event_to_json(&ev, regmap.as_ref(), opts))?;
                out.write_all(b"\n")?;
            } else {
                writeln!(out, "{}", event_to_text(&ev, regmap.as_ref()))?;
            }
        }
        out.flush()?;
        Ok(())
    })();
    match result {
        Ok(()) => Ok(0),
        // `hwrr dump | head` closes the pipe early: not an error.
        Err(e) if is_broken_pipe(&e) => Ok(0),
        Err(e) => Err(e),
    }
}

/// Whether an error chain ends in a closed pipe.
pub fn is_broken_pipe(e: &anyhow::Error) -> bool {
    e.chain().any(|c| {
        c.downcast_ref::<io::Error>()
            .is_some_and(|io| io.kind() == io::ErrorKind::BrokenPipe)
            || c.downcast_ref::<serde_json::Error>()
                .and_then(|j| j.io_error_kind())
                .is_some_and(|k| k == io::ErrorKind::BrokenPipe)
    })
}
