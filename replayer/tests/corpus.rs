//! Real driver traces: the QEMU logs in `../shared/corpus` (relative to the workspace root;
//! `HWRR_CORPUS` overrides the location), imported with `hwrr-import` and replayed in process by a
//! guest that issues the recorded register accesses. Skips with a message when the corpus is absent.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use hwrr_device::{eventfd, Device, IrqSetRequest, SparseMemory};
use hwrr_formats::{
    AccessData, Event, EventKind, IrqAction, IrqData, IrqSetup, RegionAccess, TraceHeader,
};
use hwrr_import::{scan, ImportOptions};
use hwrr_replayer::{check, MemorySource, Policy, ReplayOptions, Replayer};

fn corpus_dir() -> Option<PathBuf> {
    let dir = match std::env::var_os("HWRR_CORPUS") {
        Some(d) => PathBuf::from(d),
        None => Path::new(env!("CARGO_MANIFEST_DIR")).join("../../shared/corpus"),
    };
    if dir.is_dir() {
        Some(dir)
    } else {
        eprintln!(
            "SKIP: QEMU trace corpus not found at {} (set HWRR_CORPUS to its location)",
            dir.display()
        );
        None
    }
}

fn import(dir: &Path, name: &str) -> (TraceHeader, Vec<Event>) {
    let log = dir.join(name).join("trace.device.log.zst");
    let imported = scan(&log, &ImportOptions::default()).expect("scan");
    let (events, _) = imported.collect_events().expect("import");
    (imported.header().clone(), events)
}

/// The MSI-X table and PBA (region, start, end) from the snapshot's capability, which the engine
/// models instead of sequencing.
fn msix_ranges(header: &TraceHeader) -> Vec<(u32, u64, u64)> {
    let c = &header.config_space;
    let mut ptr = c.get(0x34).copied().unwrap_or(0) as usize & 0xfc;
    let mut hops = 0;
    while ptr >= 0x40 && ptr + 12 <= c.len() && hops < 48 {
        if c[ptr] == 0x11 {
            let entries = (u16::from_le_bytes([c[ptr + 2], c[ptr + 3]]) & 0x7ff) as u64 + 1;
            let dword = |o: usize| u32::from_le_bytes([c[o], c[o + 1], c[o + 2], c[o + 3]]);
            let (t, p) = (dword(ptr + 4), dword(ptr + 8));
            let t_off = (t & !7) as u64;
            let p_off = (p & !7) as u64;
            return vec![
                (t & 7, t_off, t_off + entries * 16),
                (p & 7, p_off, p_off + entries.div_ceil(64) * 8),
            ];
        }
        ptr = c[ptr + 1] as usize & 0xfc;
        hops += 1;
    }
    Vec::new()
}

fn modelled(ranges: &[(u32, u64, u64)], header: &TraceHeader, a: &RegionAccess) -> bool {
    let region = header
        .region(a.region)
        .and_then(|r| r.alias_of)
        .unwrap_or(a.region);
    region == 6
        || ranges
            .iter()
            .any(|&(r, s, e)| r == region && a.offset < e && a.offset + a.data.len() as u64 > s)
}

struct Outcome {
    reads_checked: u64,
    irqs_recorded: u64,
}

/// Issues every recorded region access (through `via` instead of the recorded region when the
/// header makes `via` an alias of it), skipping the indices in `drop`; checks every sequenced read.
fn drive<D: Device + ?Sized>(
    dev: &mut D,
    header: &TraceHeader,
    events: &[Event],
    via_alias: bool,
    drop: &[usize],
    check_reads: bool,
) -> Outcome {
    let ranges = msix_ranges(header);
    let alias_for = |region: u32| {
        header
            .regions
            .iter()
            .find(|r| r.alias_of == Some(region))
            .map(|r| r.index)
    };
    let mut out = Outcome {
        reads_checked: 0,
        irqs_recorded: 0,
    };
    let mut dropped = drop.iter().peekable();
    for (i, e) in events.iter().enumerate() {
        if dropped.peek() == Some(&&i) {
            dropped.next();
            continue;
        }
        match &e.kind {
            EventKind::MmioRead(a) | EventKind::PioRead(a) => {
                let region = if via_alias {
                    alias_for(a.region).unwrap_or(a.region)
                } else {
                    a.region
                };
                let mut buf = vec![0u8; a.data.len()];
                dev.region_read(region, a.offset, &mut buf).expect("read");
                if check_reads && !modelled(&ranges, header, a) {
                    assert_eq!(
                        AccessData::from_le_bytes(&buf),
                        a.data,
                        "seq {}: read of region {} offset {:#x}",
                        e.seq,
                        a.region,
                        a.offset
                    );
                    out.reads_checked += 1;
                }
            }
            EventKind::MmioWrite(a) | EventKind::PioWrite(a) => {
                dev.region_write(a.region, a.offset, &a.data.to_le_bytes())
                    .expect("write");
            }
            EventKind::ConfigRead(c) => {
                let mut buf = vec![0u8; c.data.len()];
                dev.config_read(c.offset, &mut buf).expect("config read");
            }
            EventKind::ConfigWrite(c) => {
                dev.config_write(c.offset, &c.data.to_le_bytes())
                    .expect("config write");
            }
            EventKind::Reset => dev.reset().expect("reset"),
            EventKind::Irq(irq) => {
                out.irqs_recorded += 1;
                // INTx masks itself when it fires; a VMM unmasks it at the guest's EOI.
                if irq.index == 0 {
                    dev.set_irqs(IrqSetRequest {
                        setup: IrqSetup {
                            index: 0,
                            start: 0,
                            count: 1,
                            action: IrqAction::Unmask,
                            data: IrqData::None,
                        },
                        fds: Vec::new(),
                    })
                    .expect("unmask INTx");
                }
            }
            _ => {}
        }
    }
    out
}

fn wire_all<D: Device + ?Sized>(dev: &mut D) -> Vec<std::os::fd::OwnedFd> {
    // A few vectors per request: a vfio-user message carries a bounded number of descriptors.
    const BATCH: u32 = 8;
    let mut keep = Vec::new();
    for info in dev.describe().irqs {
        if info.count == 0 || info.index > 2 {
            continue;
        }
        let mut start = 0;
        while start < info.count {
            let count = BATCH.min(info.count - start);
            let fds: Vec<_> = (0..count)
                .map(|_| eventfd::create().expect("eventfd"))
                .collect();
            dev.set_irqs(IrqSetRequest {
                setup: IrqSetup {
                    index: info.index,
                    start,
                    count,
                    action: IrqAction::Trigger,
                    data: IrqData::Eventfd(vec![true; count as usize]),
                },
                fds: fds
                    .iter()
                    .map(|f| Some(f.try_clone().expect("dup")))
                    .collect(),
            })
            .expect("set_irqs");
            keep.extend(fds);
            start += count;
        }
    }
    keep
}

fn replayer(header: &TraceHeader, events: &[Event], policy: Policy) -> Replayer {
    let src = Arc::new(MemorySource::from_events(header.clone(), events.to_vec()));
    let options = ReplayOptions {
        policy,
        ..Default::default()
    };
    let mut dev = Replayer::new(src, options).expect("replayer");
    dev.attach_memory(Arc::new(SparseMemory::new()));
    dev
}

fn exact_replay(name: &str, via_alias: bool) {
    let Some(dir) = corpus_dir() else { return };
    let (header, events) = import(&dir, name);
    let mut dev = replayer(&header, &events, Policy::Strict);
    let _fds = wire_all(&mut dev);
    let out = drive(&mut dev, &header, &events, via_alias, &[], true);
    let r = dev.report();
    assert!(!r.diverged, "{name}: {:?}", r.first_divergence);
    assert_eq!(r.counters.matched, r.counters.accesses);
    assert!(
        r.trace_finished,
        "{name}: stopped at seq {}",
        r.position_seq
    );
    assert!(
        out.reads_checked >= 5,
        "{name}: {} reads",
        out.reads_checked
    );
    let c = &r.counters;
    assert_eq!(
        c.irqs_delivered + c.irqs_pending + c.irqs_no_listener,
        out.irqs_recorded,
        "{name}: every recorded interrupt is raised once"
    );
    assert_eq!(
        c.irqs_delivered, out.irqs_recorded,
        "{name}: with INTx unmasked at each EOI, every interrupt reaches its eventfd"
    );
    assert!(check(&r, 0));
    eprintln!(
        "{name}: {} accesses, {} reads checked, {} irqs ({} delivered)",
        c.accesses, out.reads_checked, out.irqs_recorded, c.irqs_delivered
    );
}

#[test]
fn rtl8139_replays_exactly() {
    exact_replay("rtl8139-linux-8139cp", false);
}

#[test]
fn rtl8139_replays_exactly_through_its_mmio_alias() {
    exact_replay("rtl8139-linux-8139cp", true);
}

#[test]
fn nvme_replays_exactly() {
    exact_replay("nvme-linux-nvme", false);
}

/// A guest that skips some recorded writes (each followed by an access to another register):
/// strict stops at the first, resync skips exactly those and every read still returns the
/// recorded value.
#[test]
fn rtl8139_guest_skipping_writes() {
    let Some(dir) = corpus_dir() else { return };
    let (header, events) = import(&dir, "rtl8139-linux-8139cp");
    let key = |e: &Event| match &e.kind {
        EventKind::MmioRead(a) | EventKind::PioRead(a) => Some((false, a.region, a.offset)),
        EventKind::MmioWrite(a) | EventKind::PioWrite(a) => Some((true, a.region, a.offset)),
        _ => None,
    };
    // Writes whose neighbouring accesses are to other registers, one every ~5000 events.
    let mut drop = Vec::new();
    let accesses: Vec<usize> = (0..events.len())
        .filter(|&i| key(&events[i]).is_some())
        .collect();
    for w in accesses.windows(3) {
        let (p, i, n) = (w[0], w[1], w[2]);
        let Some((true, region, offset)) = key(&events[i]) else {
            continue;
        };
        let other = |j: usize| key(&events[j]).is_some_and(|k| (k.1, k.2) != (region, offset));
        let prev_read_same_as_next = key(&events[p])
            .zip(key(&events[n]))
            .is_some_and(|(a, b)| !a.0 && !b.0 && (a.1, a.2) == (b.1, b.2));
        if other(p)
            && other(n)
            && !prev_read_same_as_next
            && drop.last().map_or(true, |l| i > l + 5000)
        {
            drop.push(i);
        }
    }
    assert!(drop.len() > 5);

    let mut strict = replayer(&header, &events, Policy::Strict);
    // After the divergence strict answers from its model, so reads are not checked.
    drive(&mut strict, &header, &events, false, &drop[..1], false);
    let r = strict.report();
    assert!(r.diverged && r.stopped_following);
    assert_eq!(
        r.first_divergence.as_ref().unwrap().seq,
        events[drop[0]].seq
    );
    assert!(!check(&r, 1000));

    let mut resync = replayer(&header, &events, Policy::resync());
    let out = drive(&mut resync, &header, &events, false, &drop, true);
    assert!(out.reads_checked > 40_000);
    let r = resync.report();
    assert_eq!(
        r.counters.skipped,
        drop.len() as u64,
        "{:?}",
        r.first_divergence
    );
    assert_eq!(r.counters.inserted, 0);
    assert!(r.trace_finished);
    assert!(check(&r, drop.len() as u64));
    assert!(!check(&r, drop.len() as u64 - 1));
}

/// The same exact replay through the vfio-user server, driven by our vfio-user client as a
/// `Device`: every read crosses the socket and still returns the recorded value; every interrupt
/// reaches the client's eventfds (MSI-X table writes go to the engine's model over the socket).
fn exact_replay_through_vfio_user(name: &str) -> Outcome {
    use hwrr_vfio_user::{Client, ClientOptions, RemoteDevice, Server, ServerOptions};
    let Some(dir) = corpus_dir() else {
        return Outcome {
            reads_checked: 0,
            irqs_recorded: 0,
        };
    };
    let (header, events) = import(&dir, name);
    let device = replayer(&header, &events, Policy::Strict);
    let sockdir = tempfile::tempdir().unwrap();
    let path = sockdir.path().join("replay.sock");
    let mut server = Server::bind(
        &path,
        ServerOptions {
            once: true,
            ..Default::default()
        },
    )
    .unwrap();
    let serving = std::thread::spawn(move || {
        let mut device = device;
        server.serve(&mut device).expect("serve");
        device
    });
    let client = Client::connect(&path, ClientOptions::default()).unwrap();
    let mut remote = RemoteDevice::new(client).unwrap();
    let fds = wire_all(&mut remote);
    let out = drive(&mut remote, &header, &events, false, &[], true);
    let signalled: u64 = fds.iter().map(|f| eventfd::drain(f).unwrap()).sum();
    drop(remote);
    let device = serving.join().unwrap();
    let r = device.report();
    assert!(!r.diverged, "{name}: {:?}", r.first_divergence);
    assert_eq!(r.counters.matched, r.counters.accesses);
    assert!(r.trace_finished);
    assert_eq!(r.counters.irqs_delivered, out.irqs_recorded, "{name}");
    assert!(
        signalled > 0 && signalled <= out.irqs_recorded,
        "{name}: eventfd counts coalesce"
    );
    out
}

#[test]
fn rtl8139_replays_exactly_through_vfio_user() {
    let out = exact_replay_through_vfio_user("rtl8139-linux-8139cp");
    if out.irqs_recorded > 0 {
        assert_eq!(
            out.reads_checked, 44_276,
            "every register read of the corpus README"
        );
    }
}

#[test]
fn nvme_replays_exactly_through_vfio_user() {
    let out = exact_replay_through_vfio_user("nvme-linux-nvme");
    if out.irqs_recorded > 0 {
        assert!(out.irqs_recorded > 12_000);
    }
}

/// Real polling runs in the rtl8139 trace polled longer (one extra read after runs the next
/// access does not continue) and shorter (one read fewer in runs of 2 or more): matched under
/// strict, counted, and every read still returns the recorded value.
/// (The driver's real runs are short: reads of one register back to back, twice.)
#[test]
fn rtl8139_longer_and_shorter_polls() {
    let Some(dir) = corpus_dir() else { return };
    let (header, events) = import(&dir, "rtl8139-linux-8139cp");
    let read_key = |e: &Event| match &e.kind {
        EventKind::MmioRead(a) | EventKind::PioRead(a) => {
            Some((a.region, a.offset, a.data.clone()))
        }
        _ => None,
    };
    let is_access = |e: &Event| {
        matches!(
            e.kind,
            EventKind::MmioRead(_)
                | EventKind::PioRead(_)
                | EventKind::MmioWrite(_)
                | EventKind::PioWrite(_)
        )
    };
    // Runs: maximal sequences of identical reads with nothing in between.
    let mut guest = Vec::with_capacity(events.len());
    let (mut extended, mut shortened) = (0u64, 0u64);
    let mut i = 0;
    while i < events.len() {
        let Some(k) = read_key(&events[i]) else {
            guest.push(events[i].clone());
            i += 1;
            continue;
        };
        let mut j = i + 1;
        while j < events.len() && read_key(&events[j]) == Some(k.clone()) {
            j += 1;
        }
        let len = j - i;
        let next_access = events[j..].iter().find(|e| is_access(e));
        let continues = next_access
            .and_then(read_key)
            .is_some_and(|n| (n.0, n.1) == (k.0, k.1));
        if len >= 2 && extended > shortened {
            guest.extend(events[i..j - 1].iter().cloned());
            shortened += 1;
        } else if !continues && next_access.is_some() {
            guest.extend(events[i..j].iter().cloned());
            guest.push(events[j - 1].clone());
            extended += 1;
        } else {
            guest.extend(events[i..j].iter().cloned());
        }
        i = j;
    }
    eprintln!("rtl8139: {extended} runs extended, {shortened} shortened");
    assert!(extended > 100 && shortened > 10, "{extended} {shortened}");
    let mut dev = replayer(&header, &events, Policy::Strict);
    let _fds = wire_all(&mut dev);
    drive(&mut dev, &header, &guest, false, &[], true);
    let r = dev.report();
    assert!(!r.diverged, "{:?}", r.first_divergence);
    assert_eq!(r.counters.poll_extended, extended);
    assert_eq!(r.counters.poll_shortened, shortened);
    assert_eq!(r.counters.matched, r.counters.accesses);
    assert!(r.trace_finished);
}

/// An independent client: rust-vmm's `vfio_user::Client` (crates.io) connects to our server serving
/// the replay and issues every recorded register access; every sequenced read returns the recorded
/// value and the engine matches every access.
fn exact_replay_through_rust_vmm_client(name: &str) -> u64 {
    use hwrr_vfio_user::{Server, ServerOptions};
    let Some(dir) = corpus_dir() else { return 0 };
    let (header, events) = import(&dir, name);
    let ranges = msix_ranges(&header);
    let device = replayer(&header, &events, Policy::Strict);
    let sockdir = tempfile::tempdir().unwrap();
    let path = sockdir.path().join("replay.sock");
    let mut server = Server::bind(
        &path,
        ServerOptions {
            once: true,
            ..Default::default()
        },
    )
    .unwrap();
    let serving = std::thread::spawn(move || {
        let mut device = device;
        server.serve(&mut device).expect("serve");
        device
    });
    let mut reads_checked = 0u64;
    {
        let mut client = vfio_user::Client::new(&path).expect("rust-vmm client connects");
        for e in &events {
            match &e.kind {
                EventKind::MmioRead(a) | EventKind::PioRead(a) => {
                    let mut buf = vec![0u8; a.data.len()];
                    client
                        .region_read(a.region, a.offset, &mut buf)
                        .expect("read");
                    if !modelled(&ranges, &header, a) {
                        assert_eq!(
                            AccessData::from_le_bytes(&buf),
                            a.data,
                            "seq {}: read of region {} offset {:#x}",
                            e.seq,
                            a.region,
                            a.offset
                        );
                        reads_checked += 1;
                    }
                }
                EventKind::MmioWrite(a) | EventKind::PioWrite(a) => {
                    client
                        .region_write(a.region, a.offset, &a.data.to_le_bytes())
                        .expect("write");
                }
                // Configuration space is VFIO region 7 for this client.
                EventKind::ConfigRead(c) => {
                    let mut buf = vec![0u8; c.data.len()];
                    client
                        .region_read(7, c.offset as u64, &mut buf)
                        .expect("config read");
                }
                EventKind::ConfigWrite(c) => {
                    client
                        .region_write(7, c.offset as u64, &c.data.to_le_bytes())
                        .expect("config write");
                }
                EventKind::Reset => client.reset().expect("reset"),
                _ => {}
            }
        }
    }
    let device = serving.join().unwrap();
    let r = device.report();
    assert!(!r.diverged, "{name}: {:?}", r.first_divergence);
    assert_eq!(r.counters.matched, r.counters.accesses, "{name}");
    assert!(r.trace_finished, "{name}");
    reads_checked
}

#[test]
fn rtl8139_replays_exactly_to_rust_vmm_client() {
    let reads = exact_replay_through_rust_vmm_client("rtl8139-linux-8139cp");
    if corpus_dir().is_some() {
        assert_eq!(reads, 44_276, "every register read of the corpus README");
    }
}

#[test]
fn nvme_replays_exactly_to_rust_vmm_client() {
    let reads = exact_replay_through_rust_vmm_client("nvme-linux-nvme");
    if corpus_dir().is_some() {
        assert!(reads > 0);
    }
}
