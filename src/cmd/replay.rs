//! `hwrr replay`: serve a trace as a vfio-user device.

use std::path::{Path, PathBuf};

use anyhow::Context;
use clap::{Args, ValueEnum};
use hwrr_formats::regmap::RegisterMap;
use hwrr_host_setup::Bdf;
use hwrr_replayer::{check, Policy, ReplayOptions, ReplayReport};
use hwrr_vfio_user::{DmaLayout, Server, ServerOptions};
use serde_json::json;

use super::serve::{qemu_device_arg, stop_on_signals};

/// Quotes `s` for a POSIX shell when it needs it.
fn shell_quote(s: &str) -> String {
    let plain = |b: u8| b.is_ascii_alphanumeric() || b"/._-:=,+@%".contains(&b);
    if !s.is_empty() && s.bytes().all(plain) {
        s.to_string()
    } else {
        format!("'{}'", s.replace('\'', r"'\''"))
    }
}

/// The command line that replays `trace` as host device `host` inside an unmodified QEMU (any
/// version, S2E's fork) through the VFIO interposer at `lib`. The machine, memory, kernel and disk
/// arguments are the user's (`...`).
///
/// The interposer is not linked into this binary: its libc wrappers would replace the binary's own
/// (and a static build has no `dlsym(RTLD_NEXT)` to fall back on).
fn interposer_command_line(trace: &Path, host: Bdf, lib: &Path) -> String {
    let trace = std::path::absolute(trace).unwrap_or_else(|_| trace.to_path_buf());
    format!(
        "LD_PRELOAD={} HWRR_MODE=replay HWRR_TRACE={} qemu-system-x86_64 ... -device vfio-pci,host={host},x-no-mmap=on",
        shell_quote(&lib.display().to_string()),
        shell_quote(&trace.display().to_string()),
    )
}

/// What to do when the guest's access does not match the trace.
#[derive(Clone, Copy, Debug, ValueEnum)]
pub enum PolicyArg {
    /// Stop following the trace at the first mismatch (report it; answer from the model).
    Strict,
    /// Look ahead for the access and skip what the guest skipped.
    Resync,
    /// Answer mismatches from the register model and keep going.
    Model,
}

/// DMA message layout for vfio-user clients without shared memory.
#[derive(Clone, Copy, Debug, ValueEnum)]
pub enum LayoutArg {
    /// Detect per client.
    Auto,
    /// The vfio-user specification's layout.
    Spec,
    /// QEMU's client's layout.
    Qemu,
}

/// Serve a trace as a vfio-user device.
#[derive(Args, Debug)]
pub struct ReplayArgs {
    /// The trace file.
    trace: PathBuf,
    /// The UNIX socket to serve on (created with mode 0600).
    #[arg(long, required_unless_present = "print_qemu_args")]
    listen: Option<PathBuf>,
    /// Mismatch policy.
    #[arg(long, value_enum, default_value = "strict")]
    policy: PolicyArg,
    /// Look-ahead window of `resync`, in recorded accesses.
    #[arg(long, default_value_t = Policy::DEFAULT_WINDOW)]
    window: u32,
    /// Exit 1 on any divergence under strict, or when skips, insertions and fallbacks exceed
    /// --max-skips under resync/model.
    #[arg(long)]
    check: bool,
    /// Tolerated skips + insertions + fallbacks with --check.
    #[arg(long, default_value_t = 0)]
    max_skips: u64,
    /// Write the replay report (JSON) here.
    #[arg(long)]
    report: Option<PathBuf>,
    /// Write a line of JSON per recorded DMA event here: where each device write went, how much
    /// of it landed, and why the rest was withheld (see docs/REPLAY.md).
    #[arg(long)]
    dma_log: Option<PathBuf>,
    /// Register names and DMA-address registers (TOML).
    #[arg(long)]
    regmap: Option<PathBuf>,
    /// Serve one client, then exit.
    #[arg(long)]
    once: bool,
    /// Serve a polling run's final value after this many reads (for drivers with poll timeouts).
    #[arg(long)]
    shorten_polls: Option<u32>,
    /// DMA message layout for clients without shared memory.
    #[arg(long, value_enum, default_value = "auto")]
    dma_layout: LayoutArg,
    /// Print the command line that replays the trace inside an unmodified QEMU (any version, S2E)
    /// through the VFIO interposer (LD_PRELOAD), and exit.
    #[arg(long, conflicts_with = "listen")]
    print_qemu_args: bool,
    /// With --print-qemu-args: the PCI address QEMU's vfio-pci `host=` names.
    #[arg(long, default_value = "0000:00:19.0", requires = "print_qemu_args")]
    host: String,
}

/// The report file: the last session's report at top level, every session under `sessions`.
fn report_json(sessions: &[ReplayReport]) -> anyhow::Result<serde_json::Value> {
    let last = sessions.last().context("no session to report")?;
    let mut v = serde_json::to_value(last)?;
    v["sessions"] = json!(sessions.len());
    if sessions.len() > 1 {
        v["all_sessions"] = serde_json::to_value(sessions)?;
    }
    Ok(v)
}

/// Runs `hwrr replay`.
pub fn run(args: ReplayArgs) -> anyhow::Result<i32> {
    if args.print_qemu_args {
        let host: Bdf = args.host.parse()?;
        let lib = std::env::current_exe()
            .map(|exe| exe.with_file_name("libhwrr_vfio.so"))
            .unwrap_or_else(|_| PathBuf::from("libhwrr_vfio.so"));
        println!("{}", interposer_command_line(&args.trace, host, &lib));
        return Ok(0);
    }
    let Some(listen) = args.listen.clone() else {
        anyhow::bail!("give --listen SOCKET (or --print-qemu-args)");
    };
    let policy = match args.policy {
        PolicyArg::Strict => Policy::Strict,
        PolicyArg::Resync => Policy::Resync {
            window: args.window,
        },
        PolicyArg::Model => Policy::Model,
    };
    let regmap = args.regmap.as_deref().map(RegisterMap::load).transpose()?;
    let dma_log = match &args.dma_log {
        Some(path) => {
            let file = std::fs::File::create(path)
                .with_context(|| format!("cannot create the DMA log {}", path.display()))?;
            Some(hwrr_replayer::DmaLog::new(std::io::BufWriter::new(file)))
        }
        None => None,
    };
    let options = ReplayOptions {
        policy,
        regmap,
        shorten_polls: args.shorten_polls,
        dma_log: dma_log.clone(),
        ..ReplayOptions::default()
    };
    let (reader, _) = super::open_trace(&args.trace)?;
    let source: std::sync::Arc<dyn hwrr_replayer::EventSource> = std::sync::Arc::new(reader);
    let mut device = hwrr_replayer::Replayer::new(source, options)
        .with_context(|| format!("cannot replay {}", args.trace.display()))?;
    for caveat in device.caveats() {
        eprintln!("hwrr: note: {caveat}");
    }
    let stop = stop_on_signals()?;
    let server_opts = ServerOptions {
        once: args.once,
        stop: Some(stop),
        dma_layout: match args.dma_layout {
            LayoutArg::Auto => DmaLayout::Auto,
            LayoutArg::Spec => DmaLayout::Spec,
            LayoutArg::Qemu => DmaLayout::Qemu,
        },
        ..ServerOptions::default()
    };
    let mut server = Server::bind(&listen, server_opts)
        .with_context(|| format!("cannot listen on {}", listen.display()))?;
    eprintln!(
        "hwrr: replaying {} on {}; QEMU ≥ 10.1:\n  {}",
        args.trace.display(),
        listen.display(),
        qemu_device_arg(&listen)
    );
    let served = server.serve(&mut device)?;
    let mut sessions = device.past_sessions().to_vec();
    sessions.push(device.report());
    let last = sessions.last().context("no session")?;
    let c = &last.counters;
    eprintln!(
        "hwrr: {} connection(s), {} requests; last session: {} accesses, {} matched, {} skipped, {} inserted, {} fallbacks, {} polls extended, {} shortened, {} irqs delivered, {} DMA writes applied ({} withheld from unconfirmed pages, {} echoed ids rewritten){}",
        served.connections,
        served.requests,
        c.accesses,
        c.matched,
        c.skipped,
        c.inserted,
        c.fallbacks,
        c.poll_extended,
        c.poll_shortened,
        c.irqs_delivered,
        c.dma_writes_applied,
        c.dma_writes_unconfirmed,
        c.dma_echoes_rewritten,
        match &last.first_divergence {
            Some(d) => format!(
                "; DIVERGED {} time(s), first at seq {}: {}",
                c.mismatches, d.seq, d.reason
            ),
            None => String::new(),
        }
    );
    if let (Some(log), Some(path)) = (&dma_log, &args.dma_log) {
        log.finish()
            .with_context(|| format!("cannot write the DMA log {}", path.display()))?;
    }
    if let Some(path) = &args.report {
        let v = report_json(&sessions)?;
        std::fs::write(path, serde_json::to_string_pretty(&v)? + "\n")
            .with_context(|| format!("cannot write {}", path.display()))?;
    }
    if args.check && !sessions.iter().all(|s| check(s, args.max_skips)) {
        eprintln!("hwrr: --check failed");
        return Ok(1);
    }
    Ok(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn interposer_command_line_quotes_and_normalises() {
        let s = interposer_command_line(
            Path::new("/tmp/my trace.hwrr"),
            "00:19.0".parse().unwrap(),
            Path::new("/opt/hwrr/libhwrr_vfio.so"),
        );
        assert_eq!(
            s,
            "LD_PRELOAD=/opt/hwrr/libhwrr_vfio.so HWRR_MODE=replay HWRR_TRACE='/tmp/my trace.hwrr' qemu-system-x86_64 ... -device vfio-pci,host=0000:00:19.0,x-no-mmap=on"
        );
    }
}
