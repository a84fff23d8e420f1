//! `hwrr record`: serve a device to a VMM over vfio-user and record everything it does.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::{bail, Context};
use clap::{ArgGroup, Args};
use hwrr_device::Device;
use hwrr_host_setup::{Bdf, HostRoot};
use hwrr_recorder::{capture_header, Recorder, RecorderOptions, Tap, WatchOptions};
use hwrr_vfio_backend::{IommuApi, OpenOptions, VfioBackend};
use hwrr_vfio_user::{Client, ClientOptions, RemoteDevice, Server, ServerOptions};

use super::serve::{qemu_device_arg, stop_on_signals};

/// Record a device: a real one through kernel VFIO, or a remote vfio-user device.
#[derive(Args, Debug)]
#[command(group(ArgGroup::new("backend").required(true).args(["vfio", "vfio_user"])))]
pub struct RecordArgs {
    /// A device bound to vfio-pci, by PCI address (e.g. 0000:00:19.0).
    #[arg(long)]
    vfio: Option<String>,
    /// Open the --vfio device through its VFIO cdev and iommufd instead of its group (needs hwrr
    /// built with `--features iommufd` and a kernel with VFIO_DEVICE_CDEV).
    #[arg(long, requires = "vfio")]
    iommufd: bool,
    /// A vfio-user server's socket (QEMU's x-vfio-user-server, libvfio-user devices, hwrr replay).
    #[arg(long = "vfio-user")]
    vfio_user: Option<PathBuf>,
    /// The socket the VMM connects to (created with mode 0600).
    #[arg(long)]
    listen: PathBuf,
    /// The trace to write.
    #[arg(short = 'o', long)]
    output: PathBuf,
    /// Longest time events wait in memory before they reach the file (what a crash can lose).
    #[arg(long, default_value_t = 100)]
    flush_ms: u64,
    /// A label for the trace header (repeatable).
    #[arg(long = "label", value_name = "KEY=VALUE")]
    labels: Vec<String>,
    /// After recording, give the device back to the host driver it had before `hwrr bind`.
    #[arg(long)]
    restore_driver: bool,
    /// Serve one VMM connection, then finish the trace.
    #[arg(long)]
    once: bool,
    /// Do not infer DMA into memory the device writes directly (the watch set; docs/RECORDING.md).
    #[arg(long)]
    no_watch: bool,
    /// Watch-set sweep interval for drivers that poll memory (0 turns the sweep off).
    #[arg(long, default_value_t = 10)]
    watch_sweep_ms: u64,
    /// Most guest pages the watch set shadows at once.
    #[arg(long, default_value_t = 4096)]
    watch_max_pages: usize,
}

fn parse_labels(labels: &[String]) -> anyhow::Result<BTreeMap<String, String>> {
    labels
        .iter()
        .map(|l| match l.split_once('=') {
            Some((k, v)) if !k.is_empty() => Ok((k.to_string(), v.to_string())),
            _ => bail!("--label {l:?}: expected KEY=VALUE"),
        })
        .collect()
}

/// Runs `hwrr record`.
pub fn run(args: RecordArgs) -> anyhow::Result<i32> {
    let labels = parse_labels(&args.labels)?;
    // What a remote server negotiated, offered to the VMM in turn: a proxy that accepted more
    // descriptors, mappings or data per message than the server behind it would pass the VMM's
    // requests on to a server that refuses them (libvfio-user's client sizes its DMA maps by
    // `max_msg_fds`, and its server takes 16 mappings).
    let mut offered = ServerOptions::default();
    let (backend, source, bdf): (Box<dyn Device>, &str, Option<Bdf>) =
        match (&args.vfio, &args.vfio_user) {
            (Some(bdf), None) => {
                let parsed: Bdf = bdf.parse()?;
                let iommu = match args.iommufd {
                    true => IommuApi::Iommufd,
                    false => IommuApi::Container,
                };
                let options = OpenOptions {
                    iommu,
                    ..OpenOptions::default()
                };
                let dev = VfioBackend::open(bdf, &options).with_context(|| {
                    format!("cannot open {bdf} through VFIO (try `hwrr doctor {bdf}`)")
                })?;
                (Box::new(dev), "vfio", Some(parsed))
            }
            (None, Some(sock)) => {
                let client = Client::connect(sock, ClientOptions::default())
                    .with_context(|| format!("cannot connect to {}", sock.display()))?;
                let remote = client.server_capabilities();
                offered.max_msg_fds = offered.max_msg_fds.min(remote.max_msg_fds);
                offered.max_dma_maps = offered.max_dma_maps.min(remote.max_dma_maps);
                offered.max_data_xfer_size =
                    offered.max_data_xfer_size.min(remote.max_data_xfer_size);
                (Box::new(RemoteDevice::new(client)?), "vfio-user", None)
            }
            _ => bail!("give exactly one of --vfio BDF or --vfio-user SOCKET"),
        };
    if args.restore_driver && bdf.is_none() {
        bail!("--restore-driver applies to --vfio devices only");
    }
    let header = capture_header(&backend.describe(), source, labels);
    let mut options = RecorderOptions::default();
    options.writer.flush_interval = Some(Duration::from_millis(args.flush_ms.max(1)));
    let recorder = Recorder::create(&args.output, &header, options)
        .with_context(|| format!("cannot create {}", args.output.display()))?;
    let watch = WatchOptions {
        enabled: !args.no_watch,
        sweep_interval: (args.watch_sweep_ms > 0)
            .then(|| Duration::from_millis(args.watch_sweep_ms)),
        max_pages: args.watch_max_pages.max(1),
        ..WatchOptions::default()
    };
    let mut tap = Tap::with_options(backend, recorder.handle(), watch)?;
    let stop = stop_on_signals()?;
    let mut server = Server::bind(
        &args.listen,
        ServerOptions {
            once: args.once,
            stop: Some(stop),
            ..offered
        },
    )
    .with_context(|| format!("cannot listen on {}", args.listen.display()))?;
    eprintln!(
        "hwrr: recording {} ({source}) to {}; start QEMU ≥ 10.1 with\n  {}",
        args.vfio
            .clone()
            .or_else(|| args.vfio_user.as_ref().map(|p| p.display().to_string()))
            .unwrap_or_default(),
        args.output.display(),
        qemu_device_arg(&args.listen)
    );
    let served = server.serve(&mut tap);
    let watch_stats = tap.watch_stats();
    // Leave a real device healthy for the next user (this reset is not part of the recording). A
    // remote vfio-user server owns its device's life: it is left as the VMM left it.
    let mut backend = tap.into_inner();
    if bdf.is_some() {
        if let Err(e) = backend.reset() {
            eprintln!("hwrr: warning: resetting the device at exit failed: {e}");
        }
    }
    drop(backend);
    let clock = recorder.clock_source().name();
    let stats = recorder.finish()?;
    eprintln!(
        "hwrr: wrote {} events, {} bytes to {} (queue high-water {}, {} stalls, clock {clock}, writer CPU {:.1} ms)",
        stats.events,
        stats.bytes,
        args.output.display(),
        stats.queue_high_water,
        stats.stalls,
        stats.writer_cpu_ns as f64 / 1e6
    );
    if let Some(w) = watch_stats {
        eprintln!(
            "hwrr: watch set: {} dma_write events ({} bytes) inferred from {} changes; {} pages \
             watched ({} named by registers, {} by pointers, {} evicted); {} observations, {} \
             sweeps, {} bytes compared; {} guest ranges ({} bytes) absorbed before register \
             writes, logged after them as {} dma_read events ({} bytes), {} kept as the \
             device's (rings only it had written); {} exact writes not logged twice",
            w.dma_writes_logged,
            w.dma_bytes_logged,
            w.changes_found,
            w.pages_watched,
            w.pages_named_by_registers,
            w.pages_named_by_pointers,
            w.evictions,
            w.observations,
            w.sweeps,
            w.bytes_compared,
            w.guest_ranges_absorbed,
            w.guest_bytes_absorbed,
            w.dma_reads_logged,
            w.dma_read_bytes_logged,
            w.device_ring_ranges_kept,
            w.exact_writes_absorbed
        );
    }
    if let (true, Some(bdf)) = (args.restore_driver, bdf) {
        let report = hwrr_host_setup::unbind(&HostRoot::real(), bdf)
            .with_context(|| format!("cannot give {bdf} back to its host driver"))?;
        if let Some(d) = report.final_driver {
            eprintln!("hwrr: {bdf} is back on {d}");
        }
    }
    let served = served?;
    eprintln!(
        "hwrr: served {} connection(s), {} requests ({} errors)",
        served.connections, served.requests, served.errors
    );
    Ok(0)
}
