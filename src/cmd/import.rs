//! `hwrr import`: turn foreign device traces into hwrr traces.

use std::io::IsTerminal;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context;
use clap::{Args, Subcommand};
use hwrr_formats::{KindTag, TraceWriter, WriterOptions};
use hwrr_import::{scan, ImportError, ImportOptions, ImportReport};
use indicatif::{ProgressBar, ProgressStyle};

/// Convert a trace made by another tool into an hwrr trace.
#[derive(Args, Debug)]
pub struct ImportArgs {
    #[command(subcommand)]
    source: ImportSource,
}

/// The source format.
#[derive(Subcommand, Debug)]
enum ImportSource {
    /// QEMU `-trace` output of the `log` backend (plain or zstd): emulated devices
    /// (`memory_region_ops_*`, `pci_cfg_*`) or passthrough devices (`vfio_*`).
    #[command(name = "qemu-trace")]
    QemuTrace(QemuTraceArgs),
}

#[derive(Args, Debug)]
struct QemuTraceArgs {
    /// The QEMU log (`-D FILE`), plain or zstd-compressed.
    log: PathBuf,
    /// The hwrr trace to write.
    #[arg(short = 'o', long = "output")]
    output: PathBuf,
    /// The device: QEMU's name for it (`nvme`, `rtl8139`, `e1000e`, or a vfio host address) or
    /// its BDF (`00:02.0`). Default: the device with the most register accesses.
    #[arg(long)]
    device: Option<String>,
    /// The IOAPIC GSI of the device's INTx pin. Default: inferred from the log.
    #[arg(long)]
    intx_gsi: Option<u32>,
}

/// Runs `hwrr import`; returns the exit code.
pub fn run(args: ImportArgs) -> anyhow::Result<i32> {
    match args.source {
        ImportSource::QemuTrace(a) => run_qemu_trace(a),
    }
}

fn spinner(message: &str) -> Option<ProgressBar> {
    if !std::io::stderr().is_terminal() {
        return None;
    }
    let bar = ProgressBar::new_spinner();
    bar.set_style(
        ProgressStyle::with_template("{spinner} {msg} {pos} events [{elapsed}] {per_sec}")
            .unwrap_or_else(|_| ProgressStyle::default_spinner()),
    );
    bar.set_message(message.to_string());
    bar.enable_steady_tick(Duration::from_millis(100));
    Some(bar)
}

fn run_qemu_trace(args: QemuTraceArgs) -> anyhow::Result<i32> {
    let opts = ImportOptions {
        device: args.device,
        intx_gsi: args.intx_gsi,
    };
    let progress = spinner("scanning");
    let import =
        scan(&args.log, &opts).with_context(|| format!("importing {}", args.log.display()))?;
    // A conversion can simply be run again, so chunks are cut by size only: the time-based flush
    // bound protects live recordings and would only cut chunks by how fast this machine parses.
    let opts = WriterOptions {
        flush_interval: None,
        ..WriterOptions::default()
    };
    let mut writer = TraceWriter::create(&args.output, import.header(), opts)
        .with_context(|| format!("creating {}", args.output.display()))?;
    if let Some(p) = &progress {
        p.set_message("importing");
    }
    let mut since_tick = 0u64;
    let report = import.events(&mut |event| {
        writer
            .append(&event)
            .map_err(|e| ImportError::Sink(e.to_string()))?;
        since_tick += 1;
        if since_tick == 65_536 {
            if let Some(p) = &progress {
                p.inc(since_tick);
            }
            since_tick = 0;
        }
        Ok(())
    })?;
    let summary = writer
        .finish()
        .with_context(|| format!("finishing {}", args.output.display()))?;
    if let Some(p) = progress {
        p.finish_and_clear();
    }
    let d = import.device();
    println!(
        "{}: {} events from {} ({} {}@{}, {} bytes): {}",
        args.output.display(),
        summary.events,
        args.log.display(),
        match d.dialect {
            hwrr_import::Dialect::Emulated => "emulated",
            hwrr_import::Dialect::Passthrough => "passthrough",
        },
        d.name,
        d.bdf,
        summary.bytes,
        summary_line(&report)
    );
    for (line, text) in &report.malformed_examples {
        println!("  malformed line {line}: {text}");
    }
    Ok(0)
}

fn summary_line(report: &ImportReport) -> String {
    let kinds: Vec<String> = KindTag::ALL
        .iter()
        .filter(|k| report.by_kind.get(**k) > 0)
        .map(|k| format!("{} {}", k.name(), report.by_kind.get(*k)))
        .collect();
    format!(
        "{}; {} lines, {} malformed, {} ignored{}{}",
        if kinds.is_empty() {
            "no events".to_string()
        } else {
            kinds.join(", ")
        },
        report.lines,
        report.malformed,
        report.ignored,
        if report.unmapped > 0 {
            format!(" ({} outside the device's BARs)", report.unmapped)
        } else {
            String::new()
        },
        if report.timestamps_clamped > 0 {
            format!(", {} timestamps clamped", report.timestamps_clamped)
        } else {
            String::new()
        }
    )
}
