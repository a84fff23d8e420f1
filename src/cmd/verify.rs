//! `hwrr verify` and `hwrr recover`.

use std::path::PathBuf;

use clap::Args;
use hwrr_formats::{recover, verify_file};

/// Check every checksum and the index of a trace.
#[derive(Args, Debug)]
pub struct VerifyArgs {
    /// The trace file.
    trace: PathBuf,
}

/// Runs `hwrr verify`: exit 0 when sound, 1 when corrupt (naming the first bad chunk and its file
/// offset), 2 when the file cannot be read.
pub fn run_verify(args: VerifyArgs) -> anyhow::Result<i32> {
    match verify_file(&args.trace) {
        Ok(r) => {
            println!(
                "{}: sound: {} events in {} event chunks, {} blobs in {} blob chunks, {} bytes",
                args.trace.display(),
                r.events,
                r.event_chunks,
                r.blobs,
                r.blob_chunks,
                r.file_bytes
            );
            Ok(0)
        }
        Err(e) => {
            eprintln!("{}: {e}", args.trace.display());
            Ok(e.exit_code())
        }
    }
}

/// Write the longest sound prefix of a damaged or unfinished trace as a complete trace.
#[derive(Args, Debug)]
pub struct RecoverArgs {
    /// The damaged or unfinished trace.
    trace: PathBuf,
    /// Where to write the recovered trace.
    #[arg(short = 'o', long)]
    output: PathBuf,
}

/// Runs `hwrr recover`.
pub fn run_recover(args: RecoverArgs) -> anyhow::Result<i32> {
    let r = recover(&args.trace, &args.output)?;
    println!(
        "recovered {} events in {} event chunks and {} blob chunks into {} ({} bytes; {} bytes of the input dropped{})",
        r.events,
        r.event_chunks,
        r.blob_chunks,
        args.output.display(),
        r.output_bytes,
        r.dropped_bytes,
        match (&r.stopped_because, r.had_footer) {
            (Some(why), _) => format!("; stopped at: {why}"),
            (None, true) => "; the input was complete".to_string(),
            (None, false) => "; the input had no footer".to_string(),
        }
    );
    Ok(0)
}
