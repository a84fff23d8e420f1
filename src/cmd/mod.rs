//! Command-line interface: one module per subcommand.

use clap::{Parser, Subcommand};

mod diff;
mod dump;
mod export;
mod info;
mod slice;
mod verify;

/// Record a PCI device's behaviour through VFIO and replay it without the hardware.
#[derive(Parser, Debug)]
#[command(name = "hwrr", version, about)]
pub struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Print a trace's device, regions and event counts.
    Info(info::InfoArgs),
    /// Print events one per line (text or JSON lines).
    Dump(dump::DumpArgs),
    /// Check every checksum and the index of a trace.
    Verify(verify::VerifyArgs),
    /// Write the longest sound prefix of a damaged or unfinished trace as a complete trace.
    Recover(verify::RecoverArgs),
    /// Write a sequence or time range of a trace as a trace of its own.
    Slice(slice::SliceArgs),
    /// Show the first point where two traces' access streams differ.
    Diff(diff::DiffArgs),
    /// Convert a trace to Perfetto / Chrome trace-event JSON or CSV.
    Export(export::ExportArgs),
}

/// Runs a parsed command line; returns the process exit code.
pub fn run(cli: Cli) -> anyhow::Result<i32> {
    match cli.command {
        Command::Info(a) => info::run(a),
        Command::Dump(a) => dump::run(a),
        Command::Verify(a) => verify::run_verify(a),
        Command::Recover(a) => verify::run_recover(a),
        Command::Slice(a) => slice::run(a),
        Command::Diff(a) => diff::run(a),
        Command::Export(a) => export::run(a),
    }
}
