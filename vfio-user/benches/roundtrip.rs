//! A 4-byte REGION_READ and REGION_WRITE round trip through our server with our client, against a
//! plain UNIX-socket ping-pong of the same request and reply byte counts, measured in the same run
//! with client and server threads pinned to ONE CPU (`HWRR_BENCH_CPU`, default: the CPU the bench
//! starts on). Prints each ratio to the floor.
//!
//! Run: `cargo bench -p hwrr-vfio-user --bench roundtrip`.

use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use criterion::{criterion_group, criterion_main, Criterion};
use hwrr_device::{
    Device, DeviceDescription, DeviceError, DmaMapping, DmaRegion, GuestMemory, IrqSetRequest,
    RegionInfo, RegionKind,
};
use hwrr_vfio_user::{Client, ClientOptions, Server, ServerOptions};

/// REGION_READ: 16 header + 16 fixed; reply adds 4 data bytes.
const READ_REQ: usize = 32;
const READ_REPLY: usize = 36;
/// REGION_WRITE: request carries the 4 bytes; reply is header + 16 fixed.
const WRITE_REQ: usize = 36;
const WRITE_REPLY: usize = 32;

struct Regs {
    bar0: Vec<u8>,
}

impl Device for Regs {
    fn describe(&self) -> DeviceDescription {
        DeviceDescription {
            regions: vec![RegionInfo {
                index: 0,
                kind: RegionKind::Mmio,
                size: self.bar0.len() as u64,
                flags: 3,
                alias_of: None,
            }],
            config_space: vec![0; 256],
            ..Default::default()
        }
    }
    fn region_read(&mut self, _r: u32, offset: u64, data: &mut [u8]) -> hwrr_device::Result<()> {
        let o = offset as usize;
        data.copy_from_slice(&self.bar0[o..o + data.len()]);
        Ok(())
    }
    fn region_write(&mut self, _r: u32, offset: u64, data: &[u8]) -> hwrr_device::Result<()> {
        let o = offset as usize;
        self.bar0[o..o + data.len()].copy_from_slice(data);
        Ok(())
    }
    fn config_read(&mut self, _o: u32, data: &mut [u8]) -> hwrr_device::Result<()> {
        data.fill(0);
        Ok(())
    }
    fn config_write(&mut self, _o: u32, _d: &[u8]) -> hwrr_device::Result<()> {
        Ok(())
    }
    fn set_irqs(&mut self, _r: IrqSetRequest) -> hwrr_device::Result<()> {
        Err(DeviceError::Unsupported("irqs".into()))
    }
    fn dma_map(&mut self, _r: DmaRegion) -> hwrr_device::Result<()> {
        Ok(())
    }
    fn dma_unmap(&mut self, _m: DmaMapping) -> hwrr_device::Result<()> {
        Ok(())
    }
    fn reset(&mut self) -> hwrr_device::Result<()> {
        Ok(())
    }
    fn attach_memory(&mut self, _m: Arc<dyn GuestMemory>) {}
}

fn pin(cpu: usize) {
    // SAFETY: cpu_set_t is plain data; sched_setaffinity(0) applies to the calling thread.
    unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        libc::CPU_SET(cpu, &mut set);
        if libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &set) != 0 {
            panic!("sched_setaffinity: {}", std::io::Error::last_os_error());
        }
    }
}

fn bench_cpu() -> usize {
    std::env::var("HWRR_BENCH_CPU")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| {
            // SAFETY: sched_getcpu has no arguments.
            let c = unsafe { libc::sched_getcpu() };
            c.max(0) as usize
        })
}

/// A server that reads `req` bytes and answers `reply` bytes, forever.
fn floor_server(mut s: UnixStream, cpu: usize, req: usize, reply: usize) {
    pin(cpu);
    let mut buf = vec![0u8; req];
    let out = vec![0x5au8; reply];
    loop {
        if s.read_exact(&mut buf).is_err() {
            return;
        }
        if s.write_all(&out).is_err() {
            return;
        }
    }
}

#[derive(Default)]
struct Tally {
    iters: u64,
    time: Duration,
}

impl Tally {
    fn per_iter_ns(&self) -> f64 {
        self.time.as_nanos() as f64 / self.iters.max(1) as f64
    }
}

fn measured(tally: &Arc<Mutex<Tally>>, iters: u64, mut op: impl FnMut()) -> Duration {
    let t = Instant::now();
    for _ in 0..iters {
        op();
    }
    let e = t.elapsed();
    let mut g = tally.lock().unwrap();
    g.iters += iters;
    g.time += e;
    e
}

fn roundtrip(c: &mut Criterion) {
    let cpu = bench_cpu();
    pin(cpu);

    // Our server and client.
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("bench.sock");
    let stop = Arc::new(AtomicBool::new(false));
    let mut server = Server::bind(
        &path,
        ServerOptions {
            stop: Some(stop.clone()),
            ..Default::default()
        },
    )
    .unwrap();
    let server_thread = std::thread::spawn(move || {
        pin(cpu);
        let mut dev = Regs {
            bar0: vec![0; 4096],
        };
        server.serve(&mut dev).unwrap();
    });
    let mut client = Client::connect(&path, ClientOptions::default()).unwrap();

    // The floors: same byte counts, plain read/write.
    let (mut read_floor, r_srv) = UnixStream::pair().unwrap();
    let (mut write_floor, w_srv) = UnixStream::pair().unwrap();
    let t1 = std::thread::spawn(move || floor_server(r_srv, cpu, READ_REQ, READ_REPLY));
    let t2 = std::thread::spawn(move || floor_server(w_srv, cpu, WRITE_REQ, WRITE_REPLY));

    let tallies: Vec<Arc<Mutex<Tally>>> = (0..4).map(|_| Arc::default()).collect();
    let mut group = c.benchmark_group("roundtrip_4_bytes");
    group
        .sample_size(20)
        .warm_up_time(Duration::from_millis(500))
        .measurement_time(Duration::from_secs(2));

    let req = [0u8; WRITE_REQ];
    let mut rep = [0u8; READ_REPLY];
    group.bench_function("floor_read", |b| {
        b.iter_custom(|n| {
            measured(&tallies[0], n, || {
                read_floor.write_all(&req[..READ_REQ]).unwrap();
                read_floor.read_exact(&mut rep[..READ_REPLY]).unwrap();
            })
        })
    });
    let mut data = [0u8; 4];
    group.bench_function("vfio_user_region_read", |b| {
        b.iter_custom(|n| {
            measured(&tallies[1], n, || {
                client.region_read(0, 0x10, &mut data).unwrap();
            })
        })
    });
    group.bench_function("floor_write", |b| {
        b.iter_custom(|n| {
            measured(&tallies[2], n, || {
                write_floor.write_all(&req[..WRITE_REQ]).unwrap();
                write_floor.read_exact(&mut rep[..WRITE_REPLY]).unwrap();
            })
        })
    });
    let value = 0x1234_5678u32.to_le_bytes();
    group.bench_function("vfio_user_region_write", |b| {
        b.iter_custom(|n| {
            measured(&tallies[3], n, || {
                client.region_write(0, 0x10, &value).unwrap();
            })
        })
    });
    group.finish();

    let ns: Vec<f64> = tallies
        .iter()
        .map(|t| t.lock().unwrap().per_iter_ns())
        .collect();
    println!("pinned to CPU {cpu}");
    println!(
        "criterion means: floor_read {:.0} ns, region_read {:.0} ns ({:.3}x); floor_write {:.0} ns, region_write {:.0} ns ({:.3}x)",
        ns[0],
        ns[1],
        ns[1] / ns[0],
        ns[2],
        ns[3],
        ns[3] / ns[2]
    );

    // Interleaved: a loaded machine drifts over seconds, so the floor and our path alternate in
    // short batches and the ratio is the median of per-batch ratios (200k round trips each).
    const ROUNDS: usize = 40;
    const BATCH: u64 = 5_000;
    let mut read_ratios = Vec::with_capacity(ROUNDS);
    let mut write_ratios = Vec::with_capacity(ROUNDS);
    let mut totals = [Duration::ZERO; 4];
    let time = |n: u64, op: &mut dyn FnMut()| {
        let t = Instant::now();
        for _ in 0..n {
            op();
        }
        t.elapsed()
    };
    for _ in 0..ROUNDS {
        let f = time(BATCH, &mut || {
            read_floor.write_all(&req[..READ_REQ]).unwrap();
            read_floor.read_exact(&mut rep[..READ_REPLY]).unwrap();
        });
        let o = time(BATCH, &mut || {
            client.region_read(0, 0x10, &mut data).unwrap()
        });
        read_ratios.push(o.as_secs_f64() / f.as_secs_f64());
        totals[0] += f;
        totals[1] += o;
        let f = time(BATCH, &mut || {
            write_floor.write_all(&req[..WRITE_REQ]).unwrap();
            write_floor.read_exact(&mut rep[..WRITE_REPLY]).unwrap();
        });
        let o = time(BATCH, &mut || client.region_write(0, 0x10, &value).unwrap());
        write_ratios.push(o.as_secs_f64() / f.as_secs_f64());
        totals[2] += f;
        totals[3] += o;
    }
    let median = |v: &mut Vec<f64>| {
        v.sort_by(|a, b| a.total_cmp(b));
        v[v.len() / 2]
    };
    let per = |d: Duration| d.as_nanos() as f64 / (ROUNDS as u64 * BATCH) as f64;
    println!(
        "interleaved {} x {} round trips: REGION_READ 4 B floor {:.0} ns, vfio-user {:.0} ns, median ratio {:.3}x",
        ROUNDS,
        BATCH,
        per(totals[0]),
        per(totals[1]),
        median(&mut read_ratios)
    );
    println!(
        "interleaved {} x {} round trips: REGION_WRITE 4 B floor {:.0} ns, vfio-user {:.0} ns, median ratio {:.3}x",
        ROUNDS,
        BATCH,
        per(totals[2]),
        per(totals[3]),
        median(&mut write_ratios)
    );

    drop(client);
    drop(read_floor);
    drop(write_floor);
    stop.store(true, Ordering::Relaxed);
    let _ = server_thread.join();
    let _ = t1.join();
    let _ = t2.join();
}

criterion_group!(benches, roundtrip);
criterion_main!(benches);
