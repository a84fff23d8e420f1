//! `hwrr demo`: record the built-in test device through the full path, replay the trace to the same
//! driver, and compare what the driver saw.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::thread;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use clap::Args;
use hwrr_device::Device;
use hwrr_formats::{KindTag, TraceReader};
use hwrr_recorder::{capture_header, Recorder, RecorderOptions, RecorderStats, Tap};
use hwrr_replayer::{check, Policy, ReplayOptions, ReplayReport};
use hwrr_testdev::driver::{self, DriverOptions, Observations, DMA_AREA_SIZE};
use hwrr_testdev::TestDevice;
use hwrr_vfio_user::{Client, ClientOptions, RemoteDevice, Server, ServerOptions};

/// Record and replay the built-in test device; no hardware, no root.
#[derive(Args, Debug)]
pub struct DemoArgs {
    /// Keep the trace here (default: a temporary directory, deleted at the end).
    #[arg(short = 'o', long)]
    output: Option<PathBuf>,
    /// Print the replay report as JSON.
    #[arg(long)]
    json: bool,
}

/// IOVA of the driver's DMA area while recording.
const RECORD_IOVA: u64 = 0x1000_0000;
/// IOVA of the driver's DMA area while replaying: elsewhere, so the replay must relocate; above
/// 4 GiB, so both 32-bit halves of every address register (DMA source/destination, rings) change.
const REPLAY_IOVA: u64 = 0x4_2000_0000;

/// Runs the scripted driver as a VMM would: through our vfio-user client, against `socket`.
fn drive(socket: &Path, iova: u64) -> anyhow::Result<Observations> {
    let client = Client::connect(socket, ClientOptions::default())
        .with_context(|| format!("cannot connect to {}", socket.display()))?;
    let mut dev = RemoteDevice::new(client)?;
    let mem = driver::setup_guest_memory(&mut dev, iova, DMA_AREA_SIZE)?;
    let opts = DriverOptions {
        iova_base: iova,
        ..DriverOptions::default()
    };
    Ok(driver::run(&mut dev, &mem, opts)?)
}

/// Serves `device` for one client on `socket` in a thread; returns the device when the client left.
fn serve_once<D: Device + 'static>(
    socket: &Path,
    mut device: D,
) -> anyhow::Result<thread::JoinHandle<anyhow::Result<D>>> {
    let mut server = Server::bind(
        socket,
        ServerOptions {
            once: true,
            ..ServerOptions::default()
        },
    )?;
    Ok(thread::spawn(move || {
        server.serve(&mut device)?;
        Ok(device)
    }))
}

fn join<T>(h: thread::JoinHandle<anyhow::Result<T>>) -> anyhow::Result<T> {
    h.join()
        .map_err(|_| anyhow::anyhow!("server thread panicked"))?
}

fn record(dir: &Path, trace: &Path) -> anyhow::Result<(Observations, RecorderStats, Duration)> {
    let device = TestDevice::new();
    let mut labels = BTreeMap::new();
    labels.insert("demo".to_string(), "built-in test device".to_string());
    let header = capture_header(&device.describe(), "demo", labels);
    let recorder = Recorder::create(trace, &header, RecorderOptions::default())?;
    let tap = Tap::new(device, recorder.handle())?;
    let socket = dir.join("record.sock");
    let t0 = Instant::now();
    let server = serve_once(&socket, tap)?;
    let seen = drive(&socket, RECORD_IOVA);
    let tap = join(server)?;
    drop(tap);
    let stats = recorder.finish()?;
    Ok((seen?, stats, t0.elapsed()))
}

fn replay(
    dir: &Path,
    trace: &Path,
) -> anyhow::Result<(anyhow::Result<Observations>, ReplayReport, Duration)> {
    let device = hwrr_replayer::open(
        trace,
        ReplayOptions {
            policy: Policy::Strict,
            ..ReplayOptions::default()
        },
    )?;
    let socket = dir.join("replay.sock");
    let t0 = Instant::now();
    let server = serve_once(&socket, device)?;
    let seen = drive(&socket, REPLAY_IOVA);
    let device = join(server)?;
    Ok((seen, device.report(), t0.elapsed()))
}

/// Runs `hwrr demo`.
pub fn run(args: DemoArgs) -> anyhow::Result<i32> {
    let tmp = tempfile_dir()?;
    let trace = args
        .output
        .clone()
        .unwrap_or_else(|| tmp.path().join("demo.hwrr"));

    println!("1. record: the scripted driver drives hwrr's test device through the vfio-user");
    println!(
        "   frontend and the recording tap (registers, DMA rings, MSI-X) at IOVA {RECORD_IOVA:#x}"
    );
    let (recorded, stats, t_rec) = record(tmp.path(), &trace)?;
    println!(
        "   {} events, {} bytes written in {:.1} ms (queue high-water {}, {} stalls)",
        stats.events,
        stats.bytes,
        t_rec.as_secs_f64() * 1e3,
        stats.queue_high_water,
        stats.stalls
    );
    let reader = TraceReader::open(&trace)?;
    let counts = reader.counts();
    let kinds: Vec<String> = KindTag::ALL
        .iter()
        .filter(|k| counts.get(**k) > 0)
        .map(|k| format!("{} {}", k.name(), counts.get(*k)))
        .collect();
    println!("   trace {}: {}", trace.display(), kinds.join(", "));
    reader
        .verify()
        .context("the recorded trace does not verify")?;
    drop(reader);

    println!(
        "2. replay: the same driver, a fresh guest with its DMA area at IOVA {REPLAY_IOVA:#x},"
    );
    println!("   against the trace served by the replay engine (strict policy), no device");
    let (replayed, report, t_rep) = replay(tmp.path(), &trace)?;
    let c = &report.counters;
    println!(
        "   {} accesses: {} matched, {} skipped, {} inserted; {} interrupts delivered; {} DMA writes applied; {} relocations learned ({:.1} ms)",
        c.accesses,
        c.matched,
        c.skipped,
        c.inserted,
        c.irqs_delivered,
        c.dma_writes_applied,
        c.relocations_learned,
        t_rep.as_secs_f64() * 1e3
    );
    if args.json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    }
    let replayed = match replayed {
        Ok(o) => o,
        Err(e) => {
            if let Some(d) = &report.first_divergence {
                println!("   first divergence at seq {}: {}", d.seq, d.reason);
                println!("   expected {}\n   actual   {}", d.expected, d.actual);
            }
            return Err(e.context("the driver failed against the replay"));
        }
    };

    println!("3. compare what the driver saw");
    let same = recorded == replayed;
    println!(
        "   MAC {}, {} frames received by DMA, interrupts per vector {:?}: {}",
        recorded
            .mac
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect::<Vec<_>>()
            .join(":"),
        recorded.rx_frames.len(),
        recorded.irq_counts,
        if same {
            "identical in both runs"
        } else {
            "DIFFERENT"
        }
    );
    if !same {
        let a = serde_json::to_value(&recorded)?;
        let b = serde_json::to_value(&replayed)?;
        if let (Some(a), Some(b)) = (a.as_object(), b.as_object()) {
            for (k, va) in a {
                if b.get(k) != Some(va) {
                    println!("   {k}: recorded {va} replayed {}", b[k]);
                }
            }
        }
    }
    let ok = same && check(&report, 0);
    if !ok {
        if let Some(d) = &report.first_divergence {
            println!("   first divergence at seq {}: {}", d.seq, d.reason);
        }
        bail!("the replay did not reproduce the recording");
    }
    println!("ok: the replay reproduced the recording without the device");
    Ok(0)
}

fn tempfile_dir() -> anyhow::Result<TempDir> {
    TempDir::new()
}

/// A private temporary directory removed on drop (sockets and the default trace live there).
struct TempDir(PathBuf);

impl TempDir {
    fn new() -> anyhow::Result<Self> {
        let base = std::env::temp_dir();
        for i in 0..1000u32 {
            let p = base.join(format!("hwrr-demo-{}-{i}", std::process::id()));
            match std::fs::create_dir(&p) {
                Ok(()) => return Ok(TempDir(p)),
                Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => continue,
                Err(e) => return Err(e).context("cannot create a temporary directory"),
            }
        }
        bail!("cannot create a temporary directory in {}", base.display())
    }

    fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        // Best effort: a leftover directory in /tmp is harmless.
        let _ = std::fs::remove_dir_all(&self.0);
    }
}
