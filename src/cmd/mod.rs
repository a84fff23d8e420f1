//! Command-line interface: one module per subcommand.

use clap::{Parser, Subcommand};

mod demo;
mod diff;
mod dump;
mod export;
mod host;
mod import;
mod info;
mod record;
mod replay;
mod serve;
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
    /// Record the built-in test device, replay the trace without it, and compare (no hardware).
    Demo(demo::DemoArgs),
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
    /// Convert a trace made by another tool (a QEMU trace log) into an hwrr trace.
    Import(import::ImportArgs),
    /// Serve a device to a VMM over vfio-user and record everything it does.
    Record(record::RecordArgs),
    /// Serve a trace as a vfio-user device (QEMU ≥ 10.1, libvfio-user clients, hwrr's client).
    Replay(replay::ReplayArgs),
    /// Check that this host can pass a device through with VFIO.
    Doctor(host::DoctorArgs),
    /// Hand a device to vfio-pci.
    Bind(host::BindArgs),
    /// Give a device back to its host driver.
    Unbind(host::UnbindArgs),
    /// Recover a device: unbind, reset, remove, rescan, rebind.
    Reset(host::ResetArgs),
}

/// Runs a parsed command line; returns the process exit code.
pub fn run(cli: Cli) -> anyhow::Result<i32> {
    match cli.command {
        Command::Demo(a) => demo::run(a),
        Command::Info(a) => info::run(a),
        Command::Dump(a) => dump::run(a),
        Command::Verify(a) => verify::run_verify(a),
        Command::Recover(a) => verify::run_recover(a),
        Command::Slice(a) => slice::run(a),
        Command::Diff(a) => diff::run(a),
        Command::Export(a) => export::run(a),
        Command::Import(a) => import::run(a),
        Command::Record(a) => record::run(a),
        Command::Replay(a) => replay::run(a),
        Command::Doctor(a) => host::run_doctor(a),
        Command::Bind(a) => host::run_bind(a),
        Command::Unbind(a) => host::run_unbind(a),
        Command::Reset(a) => host::run_reset(a),
    }
}

/// Opens a trace for a command that reads it. An unfinished trace (no trailer: the recorder or
/// writer was killed) is recovered in memory, as `hwrr recover` would write it, with a warning on
/// stderr saying what was kept; any other damage is an error.
fn open_trace(
    path: &std::path::Path,
) -> anyhow::Result<(
    hwrr_formats::TraceReader,
    Option<hwrr_formats::RecoverReport>,
)> {
    use anyhow::Context;
    let (reader, recovered) = hwrr_formats::open_or_recover(path)
        .with_context(|| format!("cannot open trace {}", path.display()))?;
    if let Some(r) = &recovered {
        let why = r
            .stopped_because
            .as_deref()
            .map_or(String::new(), |w| format!("; the scan stopped {w}"));
        eprintln!(
            "warning: {} is unfinished (no footer: was its recorder killed?); reading the {} \
             events of its {} sound event chunks, recovered in memory ({} bytes after them \
             dropped{why}). `hwrr recover {} -o FIXED` keeps the recovered trace.",
            path.display(),
            r.events,
            r.event_chunks,
            r.dropped_bytes,
            path.display()
        );
    }
    Ok((reader, recovered))
}
