//! `hwrr slice`: a smaller, valid trace with the state it starts from in its header.

use std::path::PathBuf;

use anyhow::{bail, Context};
use clap::Args;
use hwrr_formats::slice::StateTracker;
use hwrr_formats::{TraceWriter, WriterOptions};

/// Write the events of a sequence or time range as a trace of their own.
#[derive(Args, Debug)]
pub struct SliceArgs {
    /// The trace file.
    trace: PathBuf,
    /// First sequence number (inclusive).
    #[arg(long, requires = "to", conflicts_with_all = ["from_time", "to_time"])]
    from: Option<u64>,
    /// Last sequence number (inclusive).
    #[arg(long, requires = "from")]
    to: Option<u64>,
    /// First timestamp in ns (inclusive).
    #[arg(long, requires = "to_time")]
    from_time: Option<u64>,
    /// Last timestamp in ns (inclusive).
    #[arg(long, requires = "from_time")]
    to_time: Option<u64>,
    /// The output trace.
    #[arg(short = 'o', long)]
    output: PathBuf,
}

/// Runs `hwrr slice`.
pub fn run(args: SliceArgs) -> anyhow::Result<i32> {
    let (reader, _) = super::open_trace(&args.trace)?;
    let first = reader.first_seq();
    let end = first + reader.event_count(); // one past the last sequence number
    let (from, to) = match (args.from, args.to, args.from_time, args.to_time) {
        (Some(f), Some(t), _, _) => (f, t),
        (_, _, Some(ft), Some(tt)) => {
            if ft > tt {
                bail!("--from-time {ft} is after --to-time {tt}");
            }
            let f = reader.seq_at_time(ft).unwrap_or(end);
            let t = match tt.checked_add(1).and_then(|t| reader.seq_at_time(t)) {
                Some(s) => s.saturating_sub(1),
                None => end.saturating_sub(1),
            };
            if f > t || f >= end {
                bail!("no events between {ft} ns and {tt} ns");
            }
            (f, t)
        }
        _ => bail!("give --from and --to, or --from-time and --to-time"),
    };
    if from > to {
        bail!("--from {from} is after --to {to}");
    }
    if from < first || to >= end {
        bail!(
            "range {from}..={to} is outside the trace's events {first}..={}",
            end.saturating_sub(1)
        );
    }

    let mut tracker = StateTracker::new(reader.header());
    for ev in reader.iter() {
        let ev = ev.context("cannot decode trace")?;
        if ev.seq >= from {
            break;
        }
        tracker.apply(&ev);
    }
    let mut events = reader.iter_from(from).peekable();
    let first_t = match events.peek() {
        Some(Ok(ev)) => ev.t_ns,
        _ => 0,
    };
    let header = tracker.slice_header(reader.header(), from, first_t);
    let mut writer = TraceWriter::create(&args.output, &header, WriterOptions::default())
        .with_context(|| format!("cannot create {}", args.output.display()))?;
    for ev in events {
        let ev = ev.context("cannot decode trace")?;
        if ev.seq > to {
            break;
        }
        writer.append(&ev)?;
    }
    let written = writer.events_written();
    writer.finish()?;
    println!(
        "wrote {} events ({from}..={to}) to {}",
        written,
        args.output.display()
    );
    Ok(0)
}
