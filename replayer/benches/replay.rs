//! In-process replay matching throughput (accesses/s) on a synthetic trace of ~1M register accesses
//! with polling runs, interrupts and DMA writes, against a baseline that walks the same accesses in a
//! plain `Vec` (the guest's own loop with no engine), measured in the same run.
//!
//! `cargo bench -p hwrr-replayer --bench replay`; the ratio of the `replay/*` times to
//! `replay/baseline_vec` is the engine's overhead.

use std::hint::black_box;
use std::sync::Arc;

use criterion::{criterion_group, criterion_main, BatchSize, Criterion, Throughput};
use hwrr_device::{Device, SparseMemory};
use hwrr_formats::{
    AccessData, DeviceIdentity, DmaWrite, Event, EventKind, Irq, RegionAccess, RegionInfo,
    RegionKind, TraceHeader,
};
use hwrr_replayer::{MemorySource, ReplayOptions, Replayer};

/// One guest access as the baseline sees it.
#[derive(Clone, Copy)]
struct Access {
    write: bool,
    offset: u64,
    value: u32,
}

fn header() -> TraceHeader {
    let mut c = vec![0u8; 256];
    c[0..2].copy_from_slice(&0x8086u16.to_le_bytes());
    c[2..4].copy_from_slice(&0x10d3u16.to_le_bytes());
    // An MSI-X capability (4 vectors, table at BAR0 0xE000, PBA at 0xF000) as real NICs have:
    // every access pays the "is this the MSI-X table?" check.
    c[0x06] = 0x10;
    c[0x34] = 0x70;
    c[0x70] = 0x11;
    c[0x72] = 3;
    c[0x74..0x78].copy_from_slice(&0xE000u32.to_le_bytes());
    c[0x78..0x7c].copy_from_slice(&0xF000u32.to_le_bytes());
    TraceHeader {
        device: DeviceIdentity::from_config_space(&c, None).unwrap_or_default(),
        config_space: c,
        regions: vec![RegionInfo {
            index: 0,
            kind: RegionKind::Mmio,
            size: 0x20000,
            flags: 3,
            alias_of: None,
        }],
        irqs: vec![hwrr_formats::IrqInfo {
            index: 2,
            count: 4,
            flags: 1,
        }],
        ..Default::default()
    }
}

/// ~1M accesses: blocks of a doorbell write, a 12-read polling run, the post-transition read, a
/// few register reads; one interrupt and one DMA write every 16 blocks.
fn synthetic(target: usize) -> (Vec<Event>, Vec<Access>) {
    let mut events = Vec::with_capacity(target + target / 8);
    let mut accesses = Vec::with_capacity(target);
    let push = |events: &mut Vec<Event>, kind: EventKind| {
        let seq = events.len() as u64;
        events.push(Event::new(seq, seq * 50, kind));
    };
    let acc = |offset: u64, value: u32| RegionAccess {
        region: 0,
        offset,
        data: AccessData::Value {
            size: 4,
            value: value as u64,
        },
    };
    let mut block = 0u32;
    while accesses.len() < target {
        let mut record = |events: &mut Vec<Event>, write: bool, offset: u64, value: u32| {
            let a = acc(offset, value);
            push(
                events,
                if write {
                    EventKind::MmioWrite(a)
                } else {
                    EventKind::MmioRead(a)
                },
            );
            accesses.push(Access {
                write,
                offset,
                value,
            });
        };
        record(&mut events, true, 0x3818, block & 0xff);
        for _ in 0..12 {
            record(&mut events, false, 0x8, 0x1);
        }
        record(&mut events, false, 0x8, 0x2);
        for r in 0..6u64 {
            record(
                &mut events,
                false,
                0x4000 + r * 4,
                block.wrapping_mul(r as u32 + 1),
            );
        }
        if block % 16 == 0 {
            push(
                &mut events,
                EventKind::DmaWrite(DmaWrite {
                    iova: 0x10_0000 + (block as u64 % 256) * 16,
                    data: vec![block as u8; 16],
                    before: None,
                }),
            );
            push(
                &mut events,
                EventKind::Irq(Irq {
                    index: 2,
                    vector: 0,
                }),
            );
        }
        block += 1;
    }
    (events, accesses)
}

fn drive(dev: &mut Replayer, accesses: &[Access]) -> u64 {
    let mut sum = 0u64;
    let mut buf = [0u8; 4];
    for a in accesses {
        // A VMM checks every result; so does the bench (and it keeps the error path honest).
        let ok = if a.write {
            dev.region_write(0, a.offset, &a.value.to_le_bytes())
                .is_ok()
        } else {
            let ok = dev.region_read(0, a.offset, &mut buf).is_ok();
            sum = sum.wrapping_add(u32::from_le_bytes(buf) as u64);
            ok
        };
        sum = sum.wrapping_add(!ok as u64);
    }
    sum
}

fn bench(c: &mut Criterion) {
    let (events, accesses) = synthetic(1_000_000);
    let n = accesses.len() as u64;
    let source = Arc::new(MemorySource::from_events(header(), events));
    let mem = Arc::new(SparseMemory::new());
    let _ = mem.add_local(0x10_0000, 0x10_0000, 3);

    let mut group = c.benchmark_group("replay");
    group.throughput(Throughput::Elements(n));
    group.sample_size(10);

    // Baseline: the same accesses walked in a Vec, comparing each against the expected one.
    group.bench_function("baseline_vec", |b| {
        b.iter(|| {
            let mut sum = 0u64;
            for a in black_box(&accesses[..]) {
                let e = black_box(a);
                if e.write {
                    sum = sum.wrapping_add((e.offset == a.offset && e.value == a.value) as u64);
                } else {
                    sum = sum.wrapping_add(e.value as u64);
                }
            }
            sum
        })
    });

    for (name, cache) in [
        ("engine_warm_cache", 1024usize),
        ("engine_cold_4_chunks", 4),
    ] {
        let options = ReplayOptions {
            chunk_cache: cache,
            ..Default::default()
        };
        let mut dev = match Replayer::new(source.clone(), options) {
            Ok(d) => d,
            Err(e) => panic!("replayer: {e}"),
        };
        dev.attach_memory(mem.clone());
        let start = dev.state();
        // Warm the cache (and check the run replays exactly once before measuring).
        drive(&mut dev, &accesses);
        let r = dev.report();
        assert!(
            !r.diverged && r.counters.matched == n,
            "{:?}",
            r.first_divergence
        );
        group.bench_function(name, |b| {
            b.iter_batched(
                || start.clone(),
                |s| {
                    let _ = dev.restore(s);
                    drive(&mut dev, black_box(&accesses))
                },
                BatchSize::LargeInput,
            )
        });
    }
    group.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
