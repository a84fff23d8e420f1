//! The recorder's costs, each against a baseline measured in the same run:
//!
//! - `tap/*`: a 4-byte register read and write through a tap around a memory-backed device, against
//!   the bare device (`tap/bare_*`). Target: < 200 ns added per access. Variants: the watch set off,
//!   and on with one 64 KiB ring watched (every read then diffs the ring: the price of capturing
//!   direct DMA).
//! - `clock/*`: one reading of the recorder's clock (the TSC where usable) against
//!   `Instant::elapsed` (`clock_gettime`).
//! - `writer/*`: sustained events per second from one producer through the queue, the sequencing
//!   stage and the trace writer (zstd) into a sink. Target: ≥ 20 M events/s without stalls.
//!
//! `cargo bench -p hwrr-recorder --bench tap`. Besides criterion's report, the bench prints the
//! derived numbers (ns added per access, events/s, stalls) measured in the same run, each both in
//! wall-clock time and in the CPU time of the thread concerned: on a shared machine the wall-clock
//! numbers include time other processes took, the CPU numbers do not.

use std::hint::black_box;
use std::sync::Arc;
use std::time::{Duration, Instant};

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use hwrr_device::{
    Device, DeviceDescription, DeviceError, DmaRegion, GuestMemory, IrqSetRequest, MappedMemory,
    Result,
};
use hwrr_formats::{
    region_flags, AccessData, DmaMapping, EventKind, RegionAccess, RegionInfo, RegionKind,
    TraceHeader, TraceWriter, WriterOptions,
};
use hwrr_recorder::{Clock, Recorder, RecorderOptions, Tap, WatchOptions};

/// Registers in memory: the cheapest device there is, so the tap's cost is what remains.
struct MemDevice {
    regs: Vec<u8>,
}

impl Device for MemDevice {
    fn describe(&self) -> DeviceDescription {
        DeviceDescription {
            regions: vec![RegionInfo {
                index: 0,
                kind: RegionKind::Mmio,
                size: self.regs.len() as u64,
                flags: region_flags::READ | region_flags::WRITE,
                alias_of: None,
            }],
            ..Default::default()
        }
    }
    fn region_read(&mut self, _region: u32, offset: u64, data: &mut [u8]) -> Result<()> {
        let o = offset as usize;
        let src = self
            .regs
            .get(o..o + data.len())
            .ok_or(DeviceError::OutOfRange {
                region: 0,
                offset,
                len: data.len() as u64,
                size: self.regs.len() as u64,
            })?;
        data.copy_from_slice(src);
        Ok(())
    }
    fn region_write(&mut self, _region: u32, offset: u64, data: &[u8]) -> Result<()> {
        let o = offset as usize;
        let len = self.regs.len() as u64;
        self.regs
            .get_mut(o..o + data.len())
            .ok_or(DeviceError::OutOfRange {
                region: 0,
                offset,
                len: data.len() as u64,
                size: len,
            })?
            .copy_from_slice(data);
        Ok(())
    }
    fn config_read(&mut self, _offset: u32, data: &mut [u8]) -> Result<()> {
        data.fill(0);
        Ok(())
    }
    fn config_write(&mut self, _offset: u32, _data: &[u8]) -> Result<()> {
        Ok(())
    }
    fn set_irqs(&mut self, _request: IrqSetRequest) -> Result<()> {
        Ok(())
    }
    fn dma_map(&mut self, _region: DmaRegion) -> Result<()> {
        Ok(())
    }
    fn dma_unmap(&mut self, _mapping: DmaMapping) -> Result<()> {
        Ok(())
    }
    fn reset(&mut self) -> Result<()> {
        Ok(())
    }
    fn attach_memory(&mut self, _memory: Arc<dyn GuestMemory>) {}
}

fn device() -> MemDevice {
    MemDevice {
        regs: vec![0; 4096],
    }
}

/// The queue size `hwrr record` uses.
fn default_capacity() -> usize {
    RecorderOptions::default().queue_capacity
}

/// A recorder writing a real trace (zstd chunks) into a sink.
fn sink_recorder(queue_capacity: usize) -> Recorder {
    let header = TraceHeader::default();
    let writer = TraceWriter::new(std::io::sink(), &header, WriterOptions::default())
        .expect("a trace writer into a sink");
    Recorder::start(
        writer,
        RecorderOptions {
            queue_capacity,
            writer: WriterOptions::default(),
        },
    )
    .expect("the writer thread")
}

/// CPU time this thread has used, in ns.
fn thread_cpu_ns() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `ts` is a live timespec the call writes into.
    let r = unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut ts) };
    assert_eq!(r, 0, "CLOCK_THREAD_CPUTIME_ID");
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}

/// Nanoseconds per call of `f` over `n` calls: (wall clock, this thread's CPU time).
#[derive(Clone, Copy)]
struct PerCall {
    wall: f64,
    cpu: f64,
}

fn ns_per(n: u64, mut f: impl FnMut(u64)) -> PerCall {
    let cpu0 = thread_cpu_ns();
    let t0 = Instant::now();
    for i in 0..n {
        f(i);
    }
    PerCall {
        wall: t0.elapsed().as_nanos() as f64 / n as f64,
        cpu: (thread_cpu_ns() - cpu0) as f64 / n as f64,
    }
}

/// "bare -> tapped (+added)" in wall-clock and CPU time.
fn added(bare: PerCall, tapped: PerCall) -> String {
    format!(
        "{:.1} -> {:.1} ns (+{:.1} ns) wall, {:.1} -> {:.1} ns (+{:.1} ns) cpu",
        bare.wall,
        tapped.wall,
        tapped.wall - bare.wall,
        bare.cpu,
        tapped.cpu,
        tapped.cpu - bare.cpu
    )
}

/// A tap with one 64 KiB ring watched (named by a 64-bit register write).
fn watched_tap(recorder: &Recorder, ram: &Arc<MappedMemory>) -> Tap<MemDevice> {
    let options = WatchOptions {
        sweep_interval: None,
        ..WatchOptions::default()
    };
    let mut tap = Tap::with_options(device(), recorder.handle(), options).expect("tap");
    tap.dma_map(DmaRegion {
        mapping: DmaMapping {
            iova: 0x10_0000,
            len: ram.len() as u64,
            flags: 3,
        },
        memory: Some(ram.clone()),
    })
    .expect("map");
    tap.region_write(0, 0x100, &0x10_0000u64.to_le_bytes())
        .expect("ring base");
    tap
}

fn tap_overhead(c: &mut Criterion) {
    let n = 2_000_000u64;
    let mut buf = [0u8; 4];
    let mut bare = device();
    let bare_read = ns_per(n, |i| {
        bare.region_read(0, (i & 255) * 4, &mut buf).expect("read");
        black_box(&buf);
    });
    let bare_write = ns_per(n, |i| {
        bare.region_write(0, (i & 255) * 4, &(i as u32).to_le_bytes())
            .expect("write");
    });
    let recorder = sink_recorder(default_capacity());
    let mut tap = Tap::new(device(), recorder.handle()).expect("tap");
    let tap_read = ns_per(n, |i| {
        tap.region_read(0, (i & 255) * 4, &mut buf).expect("read");
        black_box(&buf);
    });
    let tap_write = ns_per(n, |i| {
        tap.region_write(0, (i & 255) * 4, &(i as u32).to_le_bytes())
            .expect("write");
    });
    drop(tap);
    let clock = recorder.clock_source();
    let stats = recorder.finish().expect("finish");
    eprintln!(
        "tap overhead ({} clock): read {}; write {}; {} stalls of {} events; writer thread {:.1} ns \
         of CPU per event (target: < 200 ns added)",
        clock.name(),
        added(bare_read, tap_read),
        added(bare_write, tap_write),
        stats.stalls,
        stats.events,
        stats.writer_cpu_ns as f64 / stats.events as f64,
    );

    let ram = Arc::new(MappedMemory::anonymous(1 << 20).expect("ram"));
    let recorder = sink_recorder(default_capacity());
    let mut watched = watched_tap(&recorder, &ram);
    let m = 200_000u64;
    let watched_read = ns_per(m, |i| {
        watched
            .region_read(0, (i & 255) * 4, &mut buf)
            .expect("read");
    });
    let pages = watched.watch_stats().map(|s| s.pages_watched).unwrap_or(0);
    drop(watched);
    drop(recorder);
    eprintln!(
        "tap overhead with {pages} watched pages: read {}",
        added(bare_read, watched_read)
    );

    let mut g = c.benchmark_group("tap");
    g.throughput(Throughput::Elements(1));
    let mut bare = device();
    g.bench_function("bare_read", |b| {
        let mut i = 0u64;
        b.iter(|| {
            i += 1;
            bare.region_read(0, (i & 255) * 4, &mut buf).expect("read");
            black_box(&buf);
        })
    });
    let recorder = sink_recorder(default_capacity());
    let mut tap =
        Tap::with_options(device(), recorder.handle(), WatchOptions::disabled()).expect("tap");
    g.bench_function("read_watch_off", |b| {
        let mut i = 0u64;
        b.iter(|| {
            i += 1;
            tap.region_read(0, (i & 255) * 4, &mut buf).expect("read");
            black_box(&buf);
        })
    });
    drop(tap);
    let mut tap = Tap::new(device(), recorder.handle()).expect("tap");
    g.bench_function("read_watch_idle", |b| {
        let mut i = 0u64;
        b.iter(|| {
            i += 1;
            tap.region_read(0, (i & 255) * 4, &mut buf).expect("read");
            black_box(&buf);
        })
    });
    g.bench_function("write_watch_idle", |b| {
        let mut i = 0u64;
        b.iter(|| {
            i += 1;
            tap.region_write(0, (i & 255) * 4, &(i as u32).to_le_bytes())
                .expect("write");
        })
    });
    drop(tap);
    let mut watched = watched_tap(&recorder, &ram);
    g.bench_function("read_watch_64k_ring", |b| {
        let mut i = 0u64;
        b.iter(|| {
            i += 1;
            watched
                .region_read(0, (i & 255) * 4, &mut buf)
                .expect("read");
        })
    });
    drop(watched);
    g.finish();
    drop(recorder);
}

fn writer_throughput(c: &mut Criterion) {
    let event = |i: u64| {
        EventKind::MmioRead(RegionAccess {
            region: 0,
            offset: (i & 255) * 4,
            data: AccessData::Value {
                size: 4,
                value: i & 0xff,
            },
        })
    };
    let n = 5_000_000u64;
    // Baseline: the same events appended straight to a trace writer on this thread (sequence and
    // timestamps made up front), no queue, no second thread.
    let mut direct = TraceWriter::new(
        std::io::sink(),
        &TraceHeader::default(),
        WriterOptions::default(),
    )
    .expect("a trace writer into a sink");
    let baseline = ns_per(n, |i| {
        direct
            .append(&hwrr_formats::Event {
                seq: i,
                t_ns: i * 10,
                status: 0,
                duration_ns: 0,
                kind: event(i),
            })
            .expect("append");
    });
    direct.finish().expect("finish");
    eprintln!(
        "writer baseline (TraceWriter::append on one thread): {:.1} M events/s wall, {:.1} M \
         events/s of CPU",
        1e3 / baseline.wall,
        1e3 / baseline.cpu
    );

    // As fast as one producer can log.
    let recorder = sink_recorder(default_capacity());
    let handle = recorder.handle();
    let t0 = Instant::now();
    let producer = ns_per(n, |i| handle.log(event(i), 0, 0));
    drop(handle);
    let stats = recorder.finish().expect("finish");
    let total = t0.elapsed();
    let writer_cpu = stats.writer_cpu_ns as f64 / n as f64;
    eprintln!(
        "writer, unthrottled: {n} events logged at {:.1} M events/s ({:.1} ns of producer CPU \
         each), written at {:.1} M events/s end to end; the writer thread used {:.1} ns of CPU \
         per event (x{:.2} the baseline: capacity {:.1} M events/s of CPU); {} stalls, queue \
         high-water {}",
        1e3 / producer.wall,
        producer.cpu,
        n as f64 / total.as_secs_f64() / 1e6,
        writer_cpu,
        writer_cpu / baseline.cpu,
        1e3 / writer_cpu,
        stats.stalls,
        stats.queue_high_water
    );

    // Offered at the target rate: does the writer keep up without stalling the producer?
    // With a 64 Ki queue and with the default one.
    for capacity in [1 << 16, default_capacity()] {
        let rate = 20e6;
        let recorder = sink_recorder(capacity);
        let handle = recorder.handle();
        let t0 = Instant::now();
        let mut i = 0u64;
        while i < n {
            for _ in 0..1000 {
                handle.log(event(i), 0, 0);
                i += 1;
            }
            while (t0.elapsed().as_secs_f64() * rate) < i as f64 {
                std::hint::spin_loop();
            }
        }
        let offered = n as f64 / t0.elapsed().as_secs_f64();
        drop(handle);
        let stats = recorder.finish().expect("finish");
        let total = t0.elapsed();
        eprintln!(
        "writer, paced at {:.0} M events/s: offered {:.1} M events/s, written at {:.1} M events/s \
         end to end, {} stalls, queue high-water {} of {} (target: >= 20 M events/s without \
         stalls)",
        rate / 1e6,
        offered / 1e6,
        n as f64 / total.as_secs_f64() / 1e6,
        stats.stalls,
        stats.queue_high_water,
        capacity
    );
    }

    let mut g = c.benchmark_group("writer");
    // Large enough that starting a recorder (allocating the queue, calibrating the clock: about
    // 2 ms) is a few percent of an iteration.
    let batch = 1_000_000u64;
    g.throughput(Throughput::Elements(batch));
    g.measurement_time(Duration::from_secs(5));
    g.bench_function("events_end_to_end", |b| {
        b.iter_custom(|iters| {
            let mut spent = Duration::ZERO;
            for _ in 0..iters {
                let recorder = sink_recorder(default_capacity());
                let handle = recorder.handle();
                let t0 = Instant::now();
                for i in 0..batch {
                    handle.log(event(i), 0, 0);
                }
                drop(handle);
                recorder.finish().expect("finish");
                spent += t0.elapsed();
            }
            spent
        })
    });
    g.finish();
}

/// The recorder's clock against `Instant::elapsed` (`clock_gettime` through the vDSO), which it
/// replaces where the TSC is usable.
fn clock_cost(c: &mut Criterion) {
    let n = 10_000_000u64;
    let start = Instant::now();
    let baseline = ns_per(n, |_| {
        black_box(start.elapsed());
    });
    let chosen = Clock::new();
    let tsc = ns_per(n, |_| {
        black_box(chosen.now_ns());
    });
    let monotonic = Clock::monotonic();
    let fallback = ns_per(n, |_| {
        black_box(monotonic.now_ns());
    });
    eprintln!(
        "clock: Instant::elapsed {:.1} ns; recorder clock ({}) {:.1} ns; its monotonic fallback \
         {:.1} ns (CPU time per reading)",
        baseline.cpu,
        chosen.source().name(),
        tsc.cpu,
        fallback.cpu
    );
    let mut g = c.benchmark_group("clock");
    g.bench_function("instant_elapsed", |b| b.iter(|| black_box(start.elapsed())));
    g.bench_function("recorder_clock", |b| b.iter(|| black_box(chosen.now_ns())));
    g.finish();
}

criterion_group!(benches, clock_cost, tap_overhead, writer_throughput);
criterion_main!(benches);
