//! Random traces driven by random guests under every policy: the engine never panics, never hangs,
//! and every guest access is accounted for exactly once (matched, inserted or a fallback).

mod common;

use std::sync::Arc;

use common::*;
use hwrr_device::{Device, SparseMemory};
use hwrr_formats::{AccessData, Event, EventKind, RegionAccess};
use hwrr_replayer::{MemorySource, Policy, ReplayOptions, Replayer};

struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

const OFFSETS: [u64; 6] = [0x0, 0x8, 0x2800, 0x2804, MSIX_TABLE + 12, MSIX_PBA];

fn random_trace(rng: &mut Rng, len: usize) -> Trace {
    let mut t = Trace::new();
    t.dma_map(0x10_0000, 0x10_0000);
    while t.events.len() < len {
        let offset = OFFSETS[rng.below(OFFSETS.len() as u64) as usize];
        let value = (rng.below(4) * 0x10_0000) as u32 | rng.below(3) as u32;
        match rng.below(12) {
            0..=3 => {
                let n = 1 + rng.below(4);
                for _ in 0..n {
                    t.read(offset, value);
                }
            }
            4..=6 => {
                t.write(offset, value);
            }
            7 => {
                t.irq(2, rng.below(6) as u32);
            }
            8 => {
                let before = if rng.below(2) == 0 {
                    Some(&[0u8; 8][..])
                } else {
                    None
                };
                t.dma_write(0x10_0000 + rng.below(0x2000), &[0xAB; 8], before);
            }
            9 => {
                let ptr = 0x10_0000 + rng.below(0x10_0000);
                t.dma_read(0x10_0000 + rng.below(64) * 8, &ptr.to_le_bytes());
            }
            10 => {
                t.reset();
            }
            _ => {
                // A byte access (3 bytes) and a read on another BAR.
                let seq = t.events.len() as u64;
                t.events.push(Event::new(
                    seq,
                    seq * 100,
                    EventKind::MmioWrite(RegionAccess {
                        region: 0,
                        offset: 0x100,
                        data: AccessData::Bytes(vec![1, 2, 3]),
                    }),
                ));
                t.read_sized(2, 0x8, 8, rng.next());
            }
        }
    }
    t
}

fn check_accounting(dev: &Replayer, policy: Policy) {
    let r = dev.report();
    let c = &r.counters;
    let resets = if policy == Policy::Strict {
        0
    } else {
        c.resets_unmatched
    };
    assert_eq!(
        c.matched + c.inserted + c.fallbacks,
        c.accesses + resets,
        "{policy:?}: {c:?}"
    );
    if !r.diverged {
        assert_eq!(c.matched, c.accesses);
    }
    serde_json::to_string(&r).expect("report serializes");
}

#[test]
fn random_guests_on_random_traces() {
    for seed in 1..=60u64 {
        let mut rng = Rng(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1);
        let trace = random_trace(&mut rng, 200);
        let events = trace.events.clone();
        for policy in [Policy::Strict, Policy::Resync { window: 8 }, Policy::Model] {
            let options = ReplayOptions {
                policy,
                shorten_polls: if seed % 2 == 0 { Some(2) } else { None },
                context_events: 4,
                ..Default::default()
            };
            let chunk = 1 + (seed as usize % 17);
            let src = Arc::new(MemorySource::with_chunk_size(
                header(),
                events.clone(),
                chunk,
            ));
            let mut dev = Replayer::new(src, options).unwrap();
            let mem = Arc::new(SparseMemory::new());
            mem.add_local(0x10_0000, 0x10_0000, 3).unwrap();
            dev.attach_memory(mem);
            let _fds = wire_msix(&mut dev);
            let mut saved = None;
            for _ in 0..300 {
                let offset = OFFSETS[rng.below(OFFSETS.len() as u64) as usize];
                match rng.below(20) {
                    0..=8 => {
                        let mut b = [0u8; 4];
                        dev.region_read(0, offset, &mut b).unwrap();
                    }
                    9..=13 => {
                        let v = (rng.below(4) * 0x10_0000) as u32 | rng.below(3) as u32;
                        dev.region_write(0, offset, &v.to_le_bytes()).unwrap();
                    }
                    14 => dev.region_write(0, 0x100, &[1, 2, 3]).unwrap(),
                    15 => {
                        let mut b = [0u8; 8];
                        dev.region_read(2, 0x8, &mut b).unwrap();
                    }
                    16 => dev.reset().unwrap(),
                    17 => {
                        let mut b = [0u8; 4];
                        let _ = dev.config_read(rng.below(260) as u32, &mut b);
                        let _ = dev.config_write(rng.below(260) as u32, &b);
                    }
                    18 => saved = Some(dev.state()),
                    _ => {
                        if let Some(s) = saved.clone() {
                            dev.restore(s).unwrap();
                        }
                    }
                }
                check_accounting(&dev, policy);
            }
            // Bad requests are errors, not panics.
            assert!(dev.region_read(0, u64::MAX - 1, &mut [0u8; 4]).is_err());
            assert!(dev.region_read(9, 0, &mut [0u8; 4]).is_err());
            assert!(dev.config_read(u32::MAX, &mut [0u8; 4]).is_err());
        }
    }
}

#[test]
fn an_exact_guest_never_diverges_on_a_random_trace() {
    for seed in 1..=40u64 {
        let mut rng = Rng(seed.wrapping_mul(0xD1B5_4A32_D192_ED03) | 1);
        let trace = random_trace(&mut rng, 300);
        let events = trace.events.clone();
        let src = Arc::new(MemorySource::with_chunk_size(header(), events.clone(), 7));
        let mut dev = Replayer::new(src, ReplayOptions::default()).unwrap();
        let mem = Arc::new(SparseMemory::new());
        mem.add_local(0x10_0000, 0x10_0000, 3).unwrap();
        dev.attach_memory(mem);
        let mut accesses = 0;
        for e in &events {
            match &e.kind {
                EventKind::MmioRead(a) => {
                    let mut b = vec![0u8; a.data.len()];
                    dev.region_read(a.region, a.offset, &mut b).unwrap();
                    let modelled = a.offset >= MSIX_TABLE && a.region == 0;
                    if !modelled {
                        assert_eq!(b, a.data.to_le_bytes(), "seed {seed} seq {}", e.seq);
                        accesses += 1;
                    }
                }
                EventKind::MmioWrite(a) => {
                    dev.region_write(a.region, a.offset, &a.data.to_le_bytes())
                        .unwrap();
                    if !(a.offset >= MSIX_TABLE && a.region == 0) {
                        accesses += 1;
                    }
                }
                EventKind::Reset => dev.reset().unwrap(),
                _ => {}
            }
        }
        let r = dev.report();
        assert!(!r.diverged, "seed {seed}: {:?}", r.first_divergence);
        assert_eq!(r.counters.accesses, accesses);
        assert!(r.trace_finished);
        assert_eq!(
            r.counters.resets_matched,
            events.iter().filter(|e| e.kind == EventKind::Reset).count() as u64
        );
    }
}
