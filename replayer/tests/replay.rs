//! Exact replay and deviating clients under each policy, driving the engine like a VMM.

mod common;

use common::*;
use hwrr_device::Device;
use hwrr_replayer::{check, MemorySource, Policy, ReplayOptions, Replayer};
use std::sync::Arc;

const CTRL: u64 = 0x0;
const STATUS: u64 = 0x8;
const ICR: u64 = 0xC0;
const IMS: u64 = 0xD0;
const RDBAL: u64 = 0x2800;
const RDBAH: u64 = 0x2804;
const RDT: u64 = 0x2818;

const RING: u64 = 0x10_0000;
const BUF: u64 = 0x10_1000;

fn policies() -> [Policy; 3] {
    [Policy::Strict, Policy::resync(), Policy::Model]
}

/// A NIC receive bring-up: reset, poll STATUS, program a ring, the device fetches the descriptor,
/// writes a packet and the descriptor status, raises vector 0; the driver reads ICR, vector 1 fires.
fn nic_trace() -> (Trace, u64) {
    let mut t = Trace::new();
    t.irq_setup(2, MSIX_VECTORS);
    t.config_read(0, 0x10d3_8086);
    t.dma_map(RING, 0x10_0000);
    t.write(CTRL, 0x0400_0000);
    t.read(STATUS, 0x1);
    t.read(STATUS, 0x1);
    t.read(STATUS, 0x1);
    t.read(STATUS, 0x2);
    t.write(RDBAL, RING as u32);
    t.write(RDBAH, 0);
    let rdt = t.write(RDT, 8);
    let mut desc = BUF.to_le_bytes().to_vec();
    desc.extend_from_slice(&[0u8; 8]);
    t.dma_read(RING, &desc);
    t.dma_write(BUF, &[0xAA; 64], Some(&[0; 64]));
    t.dma_write(RING + 8, &[1, 0, 0, 0, 0, 0, 0, 0], Some(&[0; 8]));
    t.irq(2, 0);
    t.read(ICR, 0x80);
    t.irq(2, 1);
    t.write(IMS, 0x1);
    t.read_sized(1, 0x4, 4, 0x1234);
    t.read_sized(2, 0x8, 8, 0xdead_beef_cafe);
    (t, rdt)
}

/// The driver of `nic_trace`, with its ring and buffer at the given IOVAs. Returns what it read.
fn nic_driver(vmm: &mut Vmm, ring: u64, buf: u64) -> Vec<u64> {
    let mut seen = Vec::new();
    let mut desc = buf.to_le_bytes().to_vec();
    desc.extend_from_slice(&[0u8; 8]);
    vmm.put_mem(ring, &desc);
    vmm.write(CTRL, 0x0400_0000);
    loop {
        let s = vmm.read(STATUS);
        seen.push(s as u64);
        if s == 2 {
            break;
        }
    }
    vmm.write(RDBAL, ring as u32);
    vmm.write(RDBAH, (ring >> 32) as u32);
    assert_eq!(vmm.irqs(0), 0, "no interrupt before the tail write");
    vmm.write(RDT, 8);
    assert_eq!(
        vmm.irqs(0),
        1,
        "vector 0 fires right after the recorded access"
    );
    seen.push(vmm.read(ICR) as u64);
    assert_eq!(vmm.irqs(1), 1, "vector 1 fires after the ICR read");
    vmm.write(IMS, 1);
    let mut b = [0u8; 4];
    vmm.dev.region_read(1, 0x4, &mut b).unwrap();
    seen.push(u32::from_le_bytes(b) as u64);
    let mut q = [0u8; 8];
    vmm.dev.region_read(2, 0x8, &mut q).unwrap();
    seen.push(u64::from_le_bytes(q));
    seen
}

#[test]
fn exact_replay_returns_recorded_values_interrupts_and_dma() {
    for chunk in [1, 3, 4096] {
        let (t, _) = nic_trace();
        let mut vmm = Vmm::new(t, chunk, opts(Policy::Strict));
        let seen = nic_driver(&mut vmm, RING, BUF);
        assert_eq!(seen, vec![1, 1, 1, 2, 0x80, 0x1234, 0xdead_beef_cafe]);
        assert_eq!(vmm.mem_bytes(BUF, 64), vec![0xAA; 64]);
        assert_eq!(vmm.mem_bytes(RING + 8, 1), vec![1]);
        let r = vmm.dev.report();
        assert_eq!(r.counters.accesses, 12, "chunk {chunk}");
        assert_eq!(r.counters.matched, 12);
        assert!(!r.diverged);
        assert_eq!(r.counters.irqs_delivered, 2);
        assert_eq!(r.counters.dma_writes_applied, 2);
        assert!(r.relocations.is_empty());
        assert!(r.trace_finished);
        assert!(check(&r, 0));
    }
}

#[test]
fn dma_write_skips_bytes_the_guest_changed() {
    let (t, _) = nic_trace();
    let mut vmm = Vmm::new(t, 4096, opts(Policy::Strict));
    // The guest already used bytes 10..20 of the buffer: the replayed write must not clobber them.
    vmm.put_mem(BUF + 10, &[0x11; 10]);
    nic_driver(&mut vmm, RING, BUF);
    let got = vmm.mem_bytes(BUF, 64);
    assert_eq!(&got[..10], &[0xAA; 10]);
    assert_eq!(&got[10..20], &[0x11; 10]);
    assert_eq!(&got[20..], &[0xAA; 44]);
    let r = vmm.dev.report();
    assert_eq!(r.counters.dma_writes_partial, 1);
    assert_eq!(r.counters.dma_writes_applied, 1);
}

#[test]
fn rings_at_other_iovas_are_relocated_under_every_policy() {
    let new_ring = 0x80_0000u64;
    let new_buf = 0x80_4000u64;
    for policy in policies() {
        let (t, _) = nic_trace();
        let mut vmm = Vmm::new(t, 4096, opts(policy));
        let seen = nic_driver(&mut vmm, new_ring, new_buf);
        assert_eq!(seen, vec![1, 1, 1, 2, 0x80, 0x1234, 0xdead_beef_cafe]);
        assert_eq!(vmm.mem_bytes(new_buf, 64), vec![0xAA; 64], "{policy:?}");
        assert_eq!(vmm.mem_bytes(new_ring + 8, 1), vec![1]);
        assert_eq!(vmm.mem_bytes(BUF, 64), vec![0; 64], "old buffer untouched");
        let r = vmm.dev.report();
        assert!(!r.diverged, "{policy:?}: {:?}", r.first_divergence);
        assert_eq!(r.counters.matched, r.counters.accesses);
        assert_eq!(r.counters.dma_writes_applied, 2);
        assert_eq!(vmm.dev.state_ref().relocations().translate(RING), new_ring);
        assert_eq!(vmm.dev.state_ref().relocations().translate(BUF), new_buf);
        assert!(check(&r, 0));
    }
}

#[test]
fn relocation_through_a_register_map_and_64bit_halves() {
    // The ring base above 4 GiB, written as two halves; the register map names the pair.
    let regmap = hwrr_formats::regmap::RegisterMap::parse(
        "[[register]]\nname='RDBAL'\nregion=0\noffset=0x2800\nwidth=4\naddress='lo'\npair='RDBAH'\n\
         [[register]]\nname='RDBAH'\nregion=0\noffset=0x2804\nwidth=4\naddress='hi'\npair='RDBAL'\n",
    )
    .unwrap();
    let mut t = Trace::new();
    t.write(RDBAL, 0x2000);
    t.write(RDBAH, 0x1);
    t.dma_write(0x1_0000_2000, &[7; 4], None);
    t.irq(2, 0);
    t.read(ICR, 1);
    let options = ReplayOptions {
        policy: Policy::Strict,
        regmap: Some(regmap),
        ..Default::default()
    };
    let mut vmm = Vmm::new(t, 4096, options);
    vmm.write(RDBAL, 0x0010_0000);
    vmm.write(RDBAH, 0);
    assert_eq!(vmm.read(ICR), 1);
    assert_eq!(vmm.mem_bytes(0x10_0000, 4), vec![7; 4]);
    let r = vmm.dev.report();
    assert!(!r.diverged, "{:?}", r.first_divergence);
    assert_eq!(
        vmm.dev.state_ref().relocations().translate(0x1_0000_2000),
        0x10_0000
    );
}

#[test]
fn changed_register_write_under_each_policy() {
    for policy in policies() {
        let (t, _) = nic_trace();
        let mut vmm = Vmm::new(t, 4096, opts(policy));
        vmm.write(CTRL, 0x0400_0001); // recorded: 0x0400_0000, not an address
        let status = vmm.read(STATUS);
        // Strict stopped following: the model has never seen STATUS.
        let expected = if policy == Policy::Strict { 0 } else { 1 };
        assert_eq!(status, expected, "{policy:?}");
        let r = vmm.dev.report();
        assert!(r.diverged);
        let d = r.first_divergence.as_ref().unwrap();
        assert_eq!(d.seq, 3, "{policy:?}");
        assert_eq!(d.t_ns, 300);
        assert_eq!(d.expected["kind"], "mmio_write");
        assert_eq!(d.expected["value"], 0x0400_0000);
        assert_eq!(d.actual["kind"], "mmio_write");
        assert_eq!(d.actual["value"], 0x0400_0001);
        assert_eq!(d.context.len(), 3);
        assert_eq!(d.context[2]["kind"], "dma_map");
        match policy {
            Policy::Strict => {
                assert!(r.stopped_following);
                assert!(!check(&r, 100));
                // The device keeps answering (from the model) instead of hanging the VMM.
                let before = vmm.dev.report().counters.fallbacks;
                vmm.read(ICR);
                vmm.write(IMS, 5);
                assert_eq!(vmm.read(IMS), 5, "model answers the last written value");
                assert_eq!(vmm.dev.report().counters.fallbacks, before + 3);
                assert_eq!(vmm.dev.report().first_divergence.unwrap().seq, 3, "final");
            }
            Policy::Resync { .. } => {
                assert_eq!(r.counters.inserted, 1);
                assert_eq!(r.counters.skipped, 1);
                assert!(check(&r, 2));
                assert!(!check(&r, 1));
            }
            Policy::Model => {
                assert_eq!(r.counters.fallbacks, 1);
                assert_eq!(r.counters.skipped + r.counters.inserted, 0);
                assert!(check(&r, 1));
                assert!(!check(&r, 0));
            }
        }
    }
}

fn poll_trace() -> Trace {
    let mut t = Trace::new();
    t.write(CTRL, 1);
    for _ in 0..5 {
        t.read(STATUS, 1);
    }
    t.write(CTRL, 0);
    t.read(STATUS, 0);
    t
}

#[test]
fn longer_and_shorter_polls_match_under_every_policy() {
    for policy in policies() {
        for (reads, extended, shortened) in [(8, 1, 0), (2, 0, 1), (5, 0, 0)] {
            let mut vmm = Vmm::new(poll_trace(), 3, opts(policy));
            vmm.write(CTRL, 1);
            for _ in 0..reads {
                assert_eq!(vmm.read(STATUS), 1);
            }
            vmm.write(CTRL, 0);
            assert_eq!(vmm.read(STATUS), 0);
            let r = vmm.dev.report();
            assert!(
                !r.diverged,
                "{policy:?} reads={reads}: {:?}",
                r.first_divergence
            );
            assert_eq!(r.counters.poll_extended, extended, "{policy:?} {reads}");
            assert_eq!(r.counters.poll_shortened, shortened, "{policy:?} {reads}");
            assert_eq!(r.counters.matched, r.counters.accesses);
            assert!(r.trace_finished);
            assert!(check(&r, 0));
        }
    }
}

#[test]
fn shorten_polls_serves_the_transition_early_and_never_lengthens() {
    let mut t = Trace::new();
    for _ in 0..10 {
        t.read(STATUS, 1);
    }
    t.irq(2, 2);
    t.read(STATUS, 2);
    t.write(CTRL, 9);
    // Chunks of 1 and 4 events put the run and its transition in different chunks.
    for (k, chunk) in [
        (Some(3), 4096),
        (Some(3), 4),
        (Some(3), 1),
        (None, 4096),
        (None, 1),
    ] {
        let options = ReplayOptions {
            shorten_polls: k,
            ..Default::default()
        };
        let mut t2 = Trace::new();
        t2.events = t.events.clone();
        let mut vmm = Vmm::new(t2, chunk, options);
        let mut reads = 0;
        while vmm.read(STATUS) != 2 {
            reads += 1;
            assert!(reads < 100);
        }
        assert_eq!(
            vmm.irqs(2),
            1,
            "the interrupt inside the skipped part still fires"
        );
        vmm.write(CTRL, 9);
        let r = vmm.dev.report();
        assert!(!r.diverged);
        assert_eq!(
            r.counters.matched, r.counters.accesses,
            "each guest read counts once"
        );
        assert!(r.trace_finished);
        match k {
            Some(k) => {
                assert_eq!(reads, k as usize, "chunk {chunk}");
                assert_eq!(r.counters.poll_shortened, 1);
            }
            None => {
                assert_eq!(reads, 10);
                assert_eq!(r.counters.poll_shortened, 0);
            }
        }
    }
}

#[test]
fn reordered_timer_blocks_under_each_policy() {
    let mut t = Trace::new();
    let a = t.read(0x5000, 7); // watchdog timer block
    t.irq(2, 3);
    t.write(0x5004, 1);
    t.read(0x4000, 100); // statistics timer block
    t.read(0x4004, 200);
    t.write(0x10, 5);
    for policy in policies() {
        let mut t2 = Trace::new();
        t2.events = t.events.clone();
        let mut vmm = Vmm::new(t2, 2, opts(policy));
        let b1 = vmm.read(0x4000);
        let b2 = vmm.read(0x4004);
        let a1 = vmm.read(0x5000);
        vmm.write(0x5004, 1);
        vmm.write(0x10, 5);
        let r = vmm.dev.report();
        assert!(r.diverged);
        assert_eq!(r.first_divergence.as_ref().unwrap().seq, a);
        match policy {
            Policy::Strict => {
                assert!(r.stopped_following);
                assert!(!check(&r, 10));
            }
            Policy::Resync { .. } => {
                assert_eq!(
                    (b1, b2, a1),
                    (100, 200, 7),
                    "skipped reads answer from the model"
                );
                assert_eq!(r.counters.skipped, 2);
                assert_eq!(r.counters.inserted, 2);
                assert_eq!(
                    vmm.irqs(3),
                    1,
                    "interrupts inside skipped accesses are delivered"
                );
                assert!(r.trace_finished);
            }
            Policy::Model => {
                // The model never saw the statistics block; the stream is followed where it
                // matches (block A), and the recorded block B stays ahead of the cursor.
                assert_eq!((b1, b2, a1), (0, 0, 7));
                assert_eq!(r.counters.fallbacks, 3);
                assert_eq!(r.counters.skipped, 0);
                assert!(!r.trace_finished);
                assert_eq!(vmm.irqs(3), 1);
            }
        }
    }
}

#[test]
fn recorded_msix_table_accesses_and_config_reads_are_not_sequenced() {
    let mut t = Trace::new();
    t.msix_table_write(1, 0, 0xfee0_0000);
    t.msix_table_write(1, 2, 0x41);
    t.msix_table_write(1, 3, 0);
    t.config_read(0x4, 0x0010_0006);
    t.write(CTRL, 1);
    t.read(MSIX_PBA, 0);
    t.irq(2, 1);
    t.read(ICR, 4);
    for policy in policies() {
        let mut t2 = Trace::new();
        t2.events = t.events.clone();
        let mut vmm = Vmm::new(t2, 4096, opts(policy));
        let mut b = [0u8; 4];
        vmm.dev.config_read(0, &mut b).unwrap(); // extra config reads
        assert_eq!(u32::from_le_bytes(b), 0x10d3_8086);
        vmm.write(CTRL, 1);
        vmm.dev.config_read(0x2c, &mut b).unwrap();
        assert_eq!(
            vmm.irqs(1),
            1,
            "unmasked: the VMM emulates the table itself"
        );
        assert_eq!(vmm.read(ICR), 4);
        let r = vmm.dev.report();
        assert!(!r.diverged, "{policy:?}");
        assert_eq!(r.counters.accesses, 2);
        assert_eq!(r.counters.config_reads, 2);
        assert!(check(&r, 0));
    }
}

#[test]
fn masked_msix_vector_is_pending_and_fires_on_unmask() {
    let mut t = Trace::new();
    t.write(CTRL, 1);
    t.irq(2, 1);
    t.read(ICR, 4);
    t.irq(2, 1);
    t.read(ICR, 0);
    let mut vmm = Vmm::new(t, 4096, opts(Policy::Strict));
    let entry = MSIX_TABLE + 16;
    vmm.write(entry, 0xfee0_0000);
    vmm.write(entry + 8, 0x41);
    vmm.write(entry + 12, 1); // masked
    vmm.write(CTRL, 1);
    assert_eq!(vmm.irqs(1), 0);
    assert_eq!(vmm.read(MSIX_PBA), 0b10, "pending bit of vector 1");
    assert_eq!(vmm.read(entry + 8), 0x41);
    vmm.write(entry + 12, 0); // unmask
    assert_eq!(vmm.irqs(1), 1);
    assert_eq!(vmm.read(MSIX_PBA), 0);
    // Function mask in config space.
    let control = (MSIX_CAP + 2) as u32;
    vmm.dev
        .config_write(control, &0xC000u16.to_le_bytes())
        .unwrap();
    assert_eq!(vmm.read(ICR), 4);
    assert_eq!(vmm.irqs(1), 0, "function masked");
    assert_eq!(vmm.read(MSIX_PBA), 0b10);
    vmm.dev
        .config_write(control, &0x8000u16.to_le_bytes())
        .unwrap();
    assert_eq!(vmm.irqs(1), 1, "fires when the function mask clears");
    assert_eq!(vmm.read(ICR), 0);
    let r = vmm.dev.report();
    assert!(!r.diverged);
    assert_eq!(r.counters.irqs_pending, 2);
    assert_eq!(r.counters.irqs_delivered, 2);
}

#[test]
fn trace_end_is_a_divergence_and_the_device_keeps_answering() {
    let mut t = Trace::new();
    t.write(CTRL, 1);
    t.read(STATUS, 3);
    let mut vmm = Vmm::new(t, 4096, opts(Policy::Strict));
    vmm.write(CTRL, 1);
    assert_eq!(vmm.read(STATUS), 3);
    assert_eq!(vmm.read(STATUS), 3, "a longer poll");
    vmm.write(CTRL, 2);
    assert_eq!(vmm.read(STATUS), 3, "model: last value read");
    let r = vmm.dev.report();
    let d = r.first_divergence.unwrap();
    assert_eq!(d.seq, 2);
    assert!(d.expected.is_null());
    assert_eq!(d.context.len(), 2);
}

#[test]
fn report_json_has_the_contract_fields_and_register_names() {
    let regmap = hwrr_formats::regmap::RegisterMap::parse(
        "[[register]]\nname='CTRL'\nregion=0\noffset=0\nwidth=4",
    )
    .unwrap();
    let (t, _) = nic_trace();
    let options = ReplayOptions {
        regmap: Some(regmap),
        context_events: 2,
        ..Default::default()
    };
    let mut vmm = Vmm::new(t, 4096, options);
    vmm.write(CTRL, 0x77);
    let v = serde_json::to_value(vmm.dev.report()).unwrap();
    for key in [
        "policy",
        "accesses",
        "matched",
        "skipped",
        "inserted",
        "fallbacks",
        "diverged",
        "first_divergence",
        "irqs_delivered",
        "dma_writes_applied",
        "poll_extended",
        "poll_shortened",
    ] {
        assert!(v.get(key).is_some(), "missing {key}");
    }
    assert_eq!(v["policy"], "strict");
    assert_eq!(v["diverged"], true);
    let d = &v["first_divergence"];
    assert_eq!(d["seq"], 3);
    assert_eq!(d["expected"]["name"], "CTRL");
    assert_eq!(d["actual"]["name"], "CTRL");
    assert_eq!(d["actual"]["value"], 0x77);
    assert_eq!(d["context"].as_array().unwrap().len(), 2);
    assert_eq!(d["context"][0]["seq"], 1);
}

#[test]
fn an_unrecorded_read_inside_a_poll_leaves_the_run_intact() {
    for policy in [Policy::resync(), Policy::Model] {
        let mut t = Trace::new();
        for _ in 0..3 {
            t.read(STATUS, 1);
        }
        t.read(STATUS, 2);
        t.write(CTRL, 3);
        let mut vmm = Vmm::new(t, 4096, opts(policy));
        let mut seen = vec![vmm.read(STATUS)];
        vmm.read(ICR); // not in the trace
        loop {
            let s = vmm.read(STATUS);
            seen.push(s);
            if s == 2 {
                break;
            }
        }
        vmm.write(CTRL, 3);
        assert_eq!(seen, vec![1, 1, 1, 2], "{policy:?}");
        let r = vmm.dev.report();
        assert_eq!(r.counters.poll_shortened, 0);
        assert_eq!(r.counters.skipped, 0);
        assert_eq!(r.counters.inserted + r.counters.fallbacks, 1);
        assert!(r.trace_finished);
    }
}

#[test]
fn a_second_attach_is_a_new_client() {
    let (t, _) = nic_trace();
    let mut vmm = Vmm::new(t, 4096, opts(Policy::Strict));
    vmm.write(CTRL, 0x0400_0000);
    assert_eq!(vmm.read(STATUS), 1);
    vmm.dev.attach_memory(vmm.mem.clone());
    assert_eq!(vmm.dev.report().counters.accesses, 0);
    vmm.write(CTRL, 0x0400_0000);
    assert_eq!(vmm.read(STATUS), 1);
    assert!(!vmm.dev.report().diverged);
    assert_eq!(vmm.dev.past_sessions().len(), 1);
}

#[test]
fn recorded_interrupt_delays_are_honoured_only_when_asked() {
    // The interrupt came 200 ns after the write (the builder spaces events 100 ns apart and the
    // DMA write sits between them).
    let mut t = Trace::new();
    t.write(CTRL, 1);
    t.dma_write(BUF, &[1], None);
    t.irq(2, 0);
    t.read(ICR, 1);
    let events = t.events;
    for honor in [false, true] {
        let options = ReplayOptions {
            honor_delays: honor,
            ..Default::default()
        };
        let mut vmm = Vmm::new(
            Trace {
                events: events.clone(),
            },
            4096,
            options,
        );
        vmm.write(CTRL, 1);
        assert_eq!(vmm.irqs(0), 1);
        let waited = vmm.dev.report().counters.delay_ns_waited;
        assert_eq!(waited, if honor { 200 } else { 0 });
    }
}

#[test]
fn a_whole_ram_mapping_does_not_make_control_values_addresses() {
    // QEMU maps all guest RAM for DMA: every small number is "inside a mapping".
    let mut t = Trace::new();
    t.dma_map(0, 1 << 32);
    t.write(CTRL, 0x0010_4000);
    t.read(STATUS, 1);
    let mut vmm = Vmm::new(t, 4096, opts(Policy::Strict));
    vmm.write(CTRL, 0x0010_8000); // also readable guest memory
    let r = vmm.dev.report();
    assert!(r.diverged, "a changed control value is not a relocation");
    assert!(r.relocations.is_empty());
    assert_eq!(r.first_divergence.unwrap().seq, 1);
}

#[test]
fn a_ring_base_in_a_small_mapping_relocates_without_dma_evidence() {
    let mut t = Trace::new();
    t.dma_map(RING, 0x10_0000);
    t.write_sized(0, RDBAL, 8, RING);
    t.read(STATUS, 1);
    let mut vmm = Vmm::new(t, 4096, opts(Policy::Strict));
    vmm.dev
        .region_write(0, RDBAL, &0x80_0000u64.to_le_bytes())
        .unwrap();
    assert_eq!(vmm.read(STATUS), 1);
    let r = vmm.dev.report();
    assert!(!r.diverged, "{:?}", r.first_divergence);
    assert_eq!(r.relocations.len(), 1);
    assert_eq!(r.relocations[0].recorded, RING);
    assert_eq!(r.relocations[0].replay, 0x80_0000);
}

#[test]
fn a_relocated_ring_base_reads_back_as_the_guest_wrote_it() {
    let mut t = Trace::new();
    t.dma_map(RING, 0x10_0000);
    t.write(RDBAL, RING as u32);
    t.write(RDBAH, 0);
    t.read(RDBAL, RING as u32); // the driver checks what it programmed
    t.read(STATUS, RING as u32); // an unrelated register with the same value is not rewritten
    let mut vmm = Vmm::new(t, 4096, opts(Policy::Strict));
    vmm.write(RDBAL, 0x80_0000);
    vmm.write(RDBAH, 0);
    assert_eq!(vmm.read(RDBAL), 0x80_0000);
    assert_eq!(vmm.read(STATUS), RING as u32);
    let r = vmm.dev.report();
    assert!(!r.diverged, "{:?}", r.first_divergence);
}

#[test]
fn a_recorded_failed_access_fails_the_same_way() {
    let mut t = Trace::new();
    t.write(CTRL, 1);
    let seq = t.read(STATUS, 0) as usize;
    t.events[seq].status = 19; // ENODEV
    t.read(STATUS, 0);
    t.read(STATUS, 0);
    let mut vmm = Vmm::new(t, 4096, opts(Policy::Strict));
    vmm.write(CTRL, 1);
    let mut b = [0u8; 4];
    let err = vmm.dev.region_read(0, STATUS, &mut b).unwrap_err();
    assert_eq!(err.errno(), 19);
    assert_eq!(
        vmm.read(STATUS),
        0,
        "the failed read is not part of the run after it"
    );
    assert_eq!(vmm.read(STATUS), 0);
    let r = vmm.dev.report();
    assert!(!r.diverged);
    assert_eq!(r.counters.matched, 4);
    assert!(r.trace_finished);
}

#[test]
fn a_32bit_ring_base_next_to_another_register_relocates() {
    // 0x28 holds a ring size, 0x2c a 32-bit ring base: not a lo/hi pair, although adjacent.
    let mut t = Trace::new();
    t.dma_map(RING, 0x10_0000);
    t.write(0x28, 16);
    t.write(0x2c, (RING + 0x8000) as u32);
    t.dma_write(RING + 0x8000, &[9; 4], None);
    t.irq(2, 0);
    t.read(ICR, 1);
    let mut vmm = Vmm::new(t, 4096, opts(Policy::Strict));
    vmm.write(0x28, 16);
    vmm.write(0x2c, 0x80_8000);
    assert_eq!(vmm.read(ICR), 1);
    assert_eq!(vmm.mem_bytes(0x80_8000, 4), vec![9; 4]);
    let r = vmm.dev.report();
    assert!(!r.diverged, "{:?}", r.first_divergence);
}

#[test]
fn byte_accesses_away_from_the_cursor_resync() {
    let mut t = Trace::new();
    t.write(CTRL, 1);
    t.bytes(false, 0x100, &[1, 2, 3]);
    t.bytes(true, 0x200, &[9, 9, 9]);
    t.irq(2, 0);
    t.read(STATUS, 5);

    // The guest skips the recorded byte read and does the byte write: found ahead.
    let mut vmm = Vmm::new(
        Trace {
            events: t.events.clone(),
        },
        2,
        opts(Policy::resync()),
    );
    vmm.write(CTRL, 1);
    vmm.dev.region_write(0, 0x200, &[9, 9, 9]).unwrap();
    assert_eq!(vmm.irqs(0), 1, "the interrupt after the byte write");
    assert_eq!(vmm.read(STATUS), 5);
    let r = vmm.dev.report();
    assert_eq!((r.counters.skipped, r.counters.inserted), (1, 0));
    assert_eq!(r.counters.matched, 3);
    assert_eq!(r.first_divergence.expect("divergence").seq, 1);

    // The guest skips the CTRL write and reads the bytes: answered from the recording.
    let mut vmm = Vmm::new(
        Trace {
            events: t.events.clone(),
        },
        4096,
        opts(Policy::resync()),
    );
    let mut b = [0u8; 3];
    vmm.dev.region_read(0, 0x100, &mut b).unwrap();
    assert_eq!(b, [1, 2, 3]);
    // Other bytes than recorded are not the recorded write: inserted, the cursor stays.
    vmm.dev.region_write(0, 0x200, &[9, 9, 8]).unwrap();
    vmm.dev.region_write(0, 0x200, &[9, 9, 9]).unwrap();
    let r = vmm.dev.report();
    assert_eq!((r.counters.skipped, r.counters.inserted), (1, 1));
    assert_eq!(vmm.irqs(0), 1);

    // Under strict the same access is the divergence.
    let mut vmm = Vmm::new(t, 4096, opts(Policy::Strict));
    vmm.dev.region_write(0, 0x200, &[9, 9, 9]).unwrap();
    let r = vmm.dev.report();
    assert!(r.stopped_following);
    assert_eq!(vmm.irqs(0), 0);
}

#[test]
fn shorten_polls_keeps_a_run_without_transition_and_shortens_the_next() {
    let mut t = Trace::new();
    for _ in 0..6 {
        t.read(STATUS, 1);
    }
    t.write(CTRL, 9); // the first run ends in a write: nothing to serve early
    for _ in 0..6 {
        t.read(STATUS, 1);
    }
    t.read(STATUS, 2);
    for chunk in [3, 4096] {
        let options = ReplayOptions {
            shorten_polls: Some(2),
            ..Default::default()
        };
        let mut vmm = Vmm::new(
            Trace {
                events: t.events.clone(),
            },
            chunk,
            options,
        );
        for _ in 0..6 {
            assert_eq!(vmm.read(STATUS), 1, "chunk {chunk}: the run as recorded");
        }
        vmm.write(CTRL, 9);
        assert_eq!(vmm.read(STATUS), 1);
        assert_eq!(vmm.read(STATUS), 1);
        assert_eq!(
            vmm.read(STATUS),
            2,
            "chunk {chunk}: the second run is shortened"
        );
        let r = vmm.dev.report();
        assert!(!r.diverged, "{:?}", r.first_divergence);
        assert_eq!(r.counters.poll_shortened, 1);
        assert_eq!(r.counters.matched, r.counters.accesses);
        assert!(r.trace_finished);
    }
}

const MDIC: u64 = 0x20;
const MDIC_READY: u32 = 1 << 28;

/// An MDIC-like register: write a request (PHY register number in bits 16..21), poll the same
/// register until READY, take the data from its low 16 bits.
fn phy_request(reg: u32) -> u32 {
    0x0800_0000 | (reg << 16)
}

fn phy_read(vmm: &mut Vmm, reg: u32) -> Option<u32> {
    vmm.write(MDIC, phy_request(reg));
    for _ in 0..20 {
        let v = vmm.read(MDIC);
        if v & MDIC_READY != 0 {
            return Some(v & 0xffff);
        }
    }
    None
}

fn phy_trace(chunk_gap: usize) -> Trace {
    let mut t = Trace::new();
    t.write(CTRL, 1);
    // PHY register 1 (status): busy, busy, ready with 0x796d.
    t.write(MDIC, phy_request(1));
    t.read(MDIC, phy_request(1));
    t.read(MDIC, phy_request(1));
    t.read(MDIC, phy_request(1) | MDIC_READY | 0x796d);
    for _ in 0..chunk_gap {
        t.read(STATUS, 3);
    }
    // PHY register 2 (id): ready at once with 0x0141.
    t.write(MDIC, phy_request(2));
    t.read(MDIC, phy_request(2) | MDIC_READY | 0x0141);
    t.write(CTRL, 2);
    t
}

#[test]
fn a_request_register_answers_requests_made_in_another_order() {
    for policy in policies() {
        // Chunks of 7 or 1 events (a recorder flushing often) put the two requests chunks apart.
        for (gap, chunk) in [(0, 4096), (80, 4096), (8, 7), (80, 7), (80, 1)] {
            let mut vmm = Vmm::new(phy_trace(gap), chunk, opts(policy));
            vmm.write(CTRL, 1);
            // The guest asks for the id first, then the status twice (a watchdog ran once more).
            assert_eq!(phy_read(&mut vmm, 2), Some(0x0141), "{policy:?} gap {gap}");
            assert_eq!(phy_read(&mut vmm, 1), Some(0x796d), "{policy:?} gap {gap}");
            assert_eq!(phy_read(&mut vmm, 1), Some(0x796d), "{policy:?} gap {gap}");
            // A request the trace never made is not answered with another request's data: the
            // register reads back as written.
            assert_eq!(phy_read(&mut vmm, 9), None, "{policy:?} gap {gap}");
            assert_eq!(vmm.read(MDIC), phy_request(9));
            let r = vmm.dev.report();
            assert!(r.diverged, "the guest left the recorded order");
            let c = &r.counters;
            assert_eq!(
                c.matched + c.inserted + c.fallbacks,
                c.accesses,
                "{policy:?}: {c:?}"
            );
        }
    }
}

#[test]
fn a_response_ends_at_the_next_other_access() {
    let mut vmm = Vmm::new(phy_trace(0), 4096, opts(Policy::resync()));
    vmm.write(CTRL, 1);
    vmm.write(MDIC, phy_request(2)); // found ahead: matched in the stream
    vmm.write(MDIC, phy_request(1)); // off the stream: the recorded response is learned
    assert_eq!(vmm.read(MDIC), phy_request(1), "busy, as recorded");
    // Another register read ends the response: MDIC then answers its last value, not the next
    // recorded one.
    vmm.read(STATUS);
    assert_eq!(vmm.read(MDIC), phy_request(1));
    assert_eq!(vmm.read(MDIC), phy_request(1));
}

/// The recorded driver programs its receive ring (the VMM maps all guest RAM) and reads STATUS.
fn ring_bring_up_trace() -> Trace {
    let mut t = Trace::new();
    t.irq_setup(2, MSIX_VECTORS);
    t.dma_map(0, 1 << 30);
    t.write(RDBAL, RING as u32);
    t.write(RDBAH, 0);
    t.write(RDT, 8);
    t.read(STATUS, 0x2);
    t
}

/// The replay guest's side of `ring_bring_up_trace`, its descriptor at `ring` pointing at `buf`
/// (`None`: no descriptor written).
fn ring_bring_up(vmm: &mut Vmm, ring: u64, buf: Option<u64>) {
    if let Some(buf) = buf {
        let mut desc = buf.to_le_bytes().to_vec();
        desc.extend_from_slice(&[0u8; 8]);
        vmm.put_mem(ring, &desc);
    }
    vmm.write(RDBAL, ring as u32);
    vmm.write(RDBAH, (ring >> 32) as u32);
    vmm.write(RDT, 8);
    assert_eq!(vmm.read(STATUS), 2);
}

/// A receive as a watch set records it on a VMM that maps all guest RAM: no descriptor read (the
/// device reads guest memory directly), the packet written first, then the descriptor written back
/// over the buffer address the driver had put there (kept as the write's "before" bytes).
fn watched_rx_trace() -> Trace {
    let mut t = ring_bring_up_trace();
    let mut desc = BUF.to_le_bytes().to_vec();
    desc.extend_from_slice(&[0u8; 8]);
    let mut written_back = vec![0x40, 0, 0, 0, 0, 0, 0, 0];
    written_back.extend_from_slice(&[3, 0, 0, 0, 0, 0, 0, 0]);
    t.dma_write(BUF, &[0xAA; 64], Some(&[0; 64]));
    t.dma_write(RING, &written_back, Some(&desc));
    t.irq(2, 0);
    t.read(ICR, 0x80);
    t
}

#[test]
fn buffers_named_only_by_written_back_descriptors_are_relocated() {
    let new_ring = 0x80_0000u64;
    let new_buf = 0x80_4000u64;
    // Chunks of one event: the ring's DMA comes several chunks after its base register.
    for (policy, chunk) in policies().into_iter().flat_map(|p| [(p, 4096), (p, 1)]) {
        let mut vmm = Vmm::new(watched_rx_trace(), chunk, opts(policy));
        ring_bring_up(&mut vmm, new_ring, Some(new_buf));
        assert_eq!(vmm.irqs(0), 1);
        assert_eq!(vmm.read(ICR), 0x80);
        assert_eq!(vmm.mem_bytes(new_buf, 64), vec![0xAA; 64], "{policy:?}");
        assert_eq!(
            vmm.mem_bytes(new_ring, 1),
            vec![0x40],
            "descriptor written back"
        );
        assert_eq!(
            vmm.mem_bytes(BUF, 64),
            vec![0; 64],
            "recorded buffer untouched"
        );
        let r = vmm.dev.report();
        assert!(!r.diverged, "{policy:?}: {:?}", r.first_divergence);
        assert_eq!(r.counters.dma_writes_applied, 2, "{policy:?}");
        assert_eq!(vmm.dev.state_ref().relocations().translate(BUF), new_buf);
    }
}

#[test]
fn inferred_writes_land_only_where_the_guest_keeps_its_buffers() {
    for policy in policies() {
        // The same layout as recorded: the descriptor confirms the buffer, the ring register the
        // ring.
        let mut vmm = Vmm::new(watched_rx_trace(), 4096, opts(policy));
        ring_bring_up(&mut vmm, RING, Some(BUF));
        assert_eq!(vmm.mem_bytes(BUF, 64), vec![0xAA; 64], "{policy:?}");
        assert_eq!(vmm.mem_bytes(RING, 1), vec![0x40]);
        let c = vmm.dev.report().counters;
        assert_eq!((c.dma_writes_applied, c.dma_writes_unconfirmed), (2, 0));

        // The guest's memory holds no descriptor where the recorded one was, and nothing says
        // where its buffer went: the recorded buffer's page is left alone.
        let mut vmm = Vmm::new(watched_rx_trace(), 4096, opts(policy));
        ring_bring_up(&mut vmm, RING, None);
        assert_eq!(vmm.mem_bytes(BUF, 64), vec![0; 64], "{policy:?}");
        let c = vmm.dev.report().counters;
        assert_eq!(c.dma_writes_unconfirmed, 1, "{policy:?}: {c:?}");
        assert_eq!(c.dma_writes_applied, 0, "{policy:?}: {c:?}");
    }
}

/// An NVMe-like command: the guest puts a command naming a whole page into the ring at `RING`
/// (its submission queue), programs a completion ring at `CQ` and the device fills the page
/// (Identify data, a read) and, with `completes`, posts the completion and interrupts. No
/// descriptor is written back over the pointer, so only the submitted command says the page is
/// the device's.
const CQ: u64 = 0x10_8000;
const CQ_LO: u64 = 0x3800;
const CQ_HI: u64 = 0x3804;
const DATA: u64 = 0x10_4000;

fn submitted_page_trace(completes: bool) -> Trace {
    let mut t = queues_trace();
    t.dma_write(DATA + 0x800, &[0x5A; 16], Some(&[0; 16]));
    if completes {
        t.dma_write(CQ + 14, &[1], Some(&[0]));
    }
    t.irq(2, 0);
    t.read(ICR, 0x80);
    t
}

#[test]
fn a_page_named_by_a_submitted_command_receives_the_completed_write() {
    for policy in policies() {
        for (completes, named, landed) in [
            // The guest's submission ring names the page and the group posts a completion: the
            // write lands (past the 2 KiB a written-back descriptor's buffer is trusted for: a
            // command names a whole page).
            (true, Some(DATA), true),
            // Another page, an address inside the page (a page-aligned pointer names a page;
            // packet buffers are not page-aligned), nothing named, or a group that completes
            // nothing (the guest's own writes to a buffer it just handed out): the page is left
            // alone.
            (true, Some(DATA + 0x1000), false),
            (true, Some(DATA + 0x100), false),
            (true, None, false),
            (false, Some(DATA), false),
        ] {
            let mut vmm = Vmm::new(submitted_page_trace(completes), 4096, opts(policy));
            ring_bring_up(&mut vmm, RING, named);
            vmm.write(CQ_LO, CQ as u32);
            vmm.write(CQ_HI, 0);
            assert_eq!(vmm.read(ICR), 0x80);
            assert_eq!(vmm.irqs(0), 1);
            let want = if landed { [0x5A; 16] } else { [0; 16] };
            let case = format!("{policy:?} completes={completes} named={named:x?}");
            assert_eq!(vmm.mem_bytes(DATA + 0x800, 16), want, "{case}");
            let c = vmm.dev.report().counters;
            assert_eq!(
                c.dma_writes_unconfirmed,
                u64::from(!landed),
                "{case}: {c:?}"
            );
            if completes {
                assert_eq!(vmm.mem_bytes(CQ + 14, 1), [1], "{case}: completion posted");
            }
        }
    }
}

#[test]
fn a_mapping_the_recorded_iommu_refused_is_refused_again() {
    use hwrr_device::{DmaMapping, DmaRegion};
    let region = |iova: u64, len: u64| DmaRegion {
        mapping: DmaMapping {
            iova,
            len,
            flags: 3,
        },
        memory: None,
    };
    let mut t = Trace::new();
    t.dma_map(RING, 0x1000);
    let refused = t.dma_map(0xfee0_0000, 0x1000) as usize; // the MSI window
    t.events[refused].status = 22;
    t.write(CTRL, 1);
    t.read(STATUS, 2);
    for chunk in [4096, 1] {
        let mut t2 = Trace::new();
        t2.events = t.events.clone();
        let mut vmm = Vmm::new(t2, chunk, opts(Policy::Strict));
        vmm.dev
            .dma_map(region(RING, 0x1000))
            .expect("recorded as mapped");
        let err = vmm
            .dev
            .dma_map(region(0xfee0_0000, 0x1000))
            .expect_err("recorded as refused");
        assert_eq!(err.errno(), 22, "chunk {chunk}: {err}");
        // A mapping the trace never saw is the frontend's business: accepted.
        vmm.dev
            .dma_map(region(0x4000_0000, 0x1000))
            .expect("unknown");
        vmm.write(CTRL, 1);
        assert_eq!(vmm.read(STATUS), 2);
        assert!(!vmm.dev.report().diverged);
    }
}

#[test]
fn the_report_lists_each_divergence_in_order() {
    let mut t = Trace::new();
    for i in 0..40 {
        t.write(CTRL, i);
    }
    let mut vmm = Vmm::new(t, 4096, opts(Policy::Model));
    for i in 0..40 {
        // Every third write differs from the recording.
        vmm.write(CTRL, if i % 3 == 0 { 1000 + i } else { i });
    }
    let r = vmm.dev.report();
    assert_eq!(r.counters.mismatches, 14);
    assert_eq!(r.divergences.len(), 14);
    assert_eq!(r.divergences[0], {
        let mut first = r.first_divergence.clone().unwrap();
        first.context.clear();
        first
    });
    for (k, d) in r.divergences.iter().enumerate() {
        let i = 3 * k as u64;
        assert_eq!(d.seq, i);
        assert_eq!(d.expected["value"], i);
        assert_eq!(d.actual["value"], 1000 + i);
        assert!(d.context.is_empty());
    }
    let json = serde_json::to_value(&r).unwrap();
    assert_eq!(json["mismatches"], 14);
    assert_eq!(json["divergences"].as_array().unwrap().len(), 14);

    // The list is bounded; the counter is not.
    let mut t = Trace::new();
    for i in 0..100 {
        t.write(CTRL, i);
    }
    let mut vmm = Vmm::new(t, 4096, opts(Policy::Model));
    for i in 0..100 {
        vmm.write(CTRL, 1000 + i);
    }
    let r = vmm.dev.report();
    assert_eq!(r.counters.mismatches, 100);
    assert_eq!(r.divergences.len(), 32);
    assert_eq!(r.divergences[31].seq, 31);
}

/// A receive recorded by a watch set on a legacy descriptor: the device writes the frame and then
/// only the status byte, so no before bytes name the buffer.
fn status_only_rx_trace() -> Trace {
    let mut t = ring_bring_up_trace();
    t.dma_write(BUF, &[0xAA; 64], Some(&[0; 64]));
    t.dma_write(RING + 12, &[1], Some(&[0]));
    t.irq(2, 0);
    t.read(ICR, 0x80);
    t
}

#[test]
fn the_guests_own_ring_confirms_its_buffers() {
    for (guest_buf, chunk) in [(BUF, 4096), (BUF, 1), (0x80_4000, 4096)] {
        let mut vmm = Vmm::new(status_only_rx_trace(), chunk, opts(Policy::resync()));
        ring_bring_up(&mut vmm, RING, Some(guest_buf));
        assert_eq!(vmm.read(ICR), 0x80);
        assert_eq!(
            vmm.mem_bytes(RING + 12, 1),
            vec![1],
            "the ring is the guest's"
        );
        let c = vmm.dev.report().counters;
        if guest_buf == BUF {
            // The guest's descriptor points where the recorded one did.
            assert_eq!(vmm.mem_bytes(BUF, 64), vec![0xAA; 64], "chunk {chunk}");
            assert_eq!((c.dma_writes_applied, c.dma_writes_unconfirmed), (2, 0));
        } else {
            // It points elsewhere and nothing says where the recorded buffer went: the frame is
            // withheld rather than written over whatever the guest keeps at the recorded IOVA.
            assert_eq!(vmm.mem_bytes(BUF, 64), vec![0; 64]);
            assert_eq!((c.dma_writes_applied, c.dma_writes_unconfirmed), (1, 1));
        }
    }
}

#[test]
fn inferred_writes_land_only_in_buffers_the_device_completes() {
    const BUF2: u64 = 0x10_3000;
    const ELSEWHERE: u64 = 0x18_0000;
    // Kernel data both runs keep at the same addresses (a guest that boots the same way).
    const KERNEL: [u8; 8] = [1, 2, 3, 4, 5, 6, 7, 8];
    let mut t = ring_bring_up_trace();
    t.dma_write(BUF, &[0xAA; 64], Some(&[0; 64]));
    t.dma_write(RING + 12, &[1], Some(&[0]));
    t.irq(2, 0);
    t.read(ICR, 0x80);
    // The driver takes the buffer back and gives the descriptor a new one.
    t.write(RDT, 9);
    // A watch set then logs the recorded guest's own writes as device writes: into the buffer it
    // took back (an skb's shared info), into a page it never gave the device, past the end of
    // the new buffer, and into the new buffer before the device completes it.
    t.dma_write(BUF + 0x100, &[0x55; 8], Some(&KERNEL));
    t.dma_write(ELSEWHERE, &[0x66; 8], Some(&KERNEL));
    t.dma_write(BUF2 + 2048, &[0x77; 8], Some(&KERNEL));
    t.dma_write(BUF2 + 32, &[0x99; 8], Some(&KERNEL));
    t.read(ICR, 0);
    // The device fills the new buffer and completes its descriptor.
    t.dma_write(BUF2 + 16, &[0x88; 8], Some(&[0; 8]));
    t.dma_write(RING + 12, &[1], Some(&[0]));
    t.read(ICR, 0x80);
    for chunk in [4096, 1] {
        let mut trace = Trace::new();
        trace.events = t.events.clone();
        let mut vmm = Vmm::new(trace, chunk, opts(Policy::resync()));
        for at in [BUF + 0x100, ELSEWHERE, BUF2 + 2048, BUF2 + 32] {
            vmm.put_mem(at, &KERNEL);
        }
        ring_bring_up(&mut vmm, RING, Some(BUF));
        assert_eq!(vmm.read(ICR), 0x80);
        assert_eq!(vmm.mem_bytes(BUF, 64), vec![0xAA; 64], "chunk {chunk}");
        let mut desc = BUF2.to_le_bytes().to_vec();
        desc.extend_from_slice(&[0u8; 8]);
        vmm.put_mem(RING, &desc);
        vmm.write(RDT, 9);
        assert_eq!(vmm.read(ICR), 0);
        assert_eq!(vmm.read(ICR), 0x80);
        for at in [BUF + 0x100, ELSEWHERE, BUF2 + 2048, BUF2 + 32] {
            assert_eq!(
                vmm.mem_bytes(at, 8),
                KERNEL,
                "chunk {chunk}: {at:#x} untouched"
            );
        }
        assert_eq!(vmm.mem_bytes(BUF2 + 16, 8), vec![0x88; 8], "chunk {chunk}");
        assert_eq!(vmm.mem_bytes(RING + 12, 1), vec![1], "chunk {chunk}");
        let r = vmm.dev.report();
        assert!(!r.diverged, "{:?}", r.first_divergence);
        let c = r.counters;
        assert_eq!(
            (c.dma_writes_applied, c.dma_writes_unconfirmed),
            (4, 4),
            "chunk {chunk}: {c:?}"
        );
    }
}

#[test]
fn a_descriptor_given_a_buffer_is_the_drivers_write_not_the_devices() {
    const BUF2: u64 = 0x10_3000;
    let mut t = ring_bring_up_trace();
    // A watch set logs the recorded driver refilling descriptor 1 (a 64-bit address, and one
    // whose high half did not change) as device writes; the device later writes that buffer.
    t.dma_write(RING + 16, &BUF2.to_le_bytes(), Some(&[0; 8]));
    t.dma_write(RING + 32, &(BUF2 as u32).to_le_bytes(), Some(&[0; 4]));
    t.read(ICR, 0);
    t.dma_write(BUF2, &[0xAA; 64], Some(&[0; 64]));
    t.read(ICR, 0x80);
    for chunk in [4096, 1] {
        let mut trace = Trace::new();
        trace.events = t.events.clone();
        let mut vmm = Vmm::new(trace, chunk, opts(Policy::resync()));
        ring_bring_up(&mut vmm, RING, Some(BUF));
        assert_eq!(vmm.read(ICR), 0);
        assert_eq!(vmm.mem_bytes(RING + 16, 24), vec![0; 24], "chunk {chunk}");
        assert_eq!(vmm.read(ICR), 0x80);
        // No descriptor of the replay guest names BUF2: the frame is withheld too.
        assert_eq!(vmm.mem_bytes(BUF2, 64), vec![0; 64], "chunk {chunk}");
        let c = vmm.dev.report().counters;
        assert_eq!(
            (c.dma_writes_applied, c.dma_writes_unconfirmed),
            (0, 3),
            "chunk {chunk}: {c:?}"
        );
    }
}

#[test]
fn a_guessed_relocation_span_does_not_carry_writes_past_the_named_page() {
    let new_ring = 0x80_0000u64;
    let mut t = ring_bring_up_trace();
    // The ring's write-back, then a recorded write two pages further on: inside the relocation's
    // 64 KiB guess, but nothing says the replay guest keeps anything of the device's there.
    t.dma_write(RING + 12, &[1], Some(&[0]));
    t.dma_write(RING + 0x2000, &[0xEE; 32], Some(&[0; 32]));
    t.read(ICR, 0x80);
    let mut vmm = Vmm::new(t, 4096, opts(Policy::resync()));
    ring_bring_up(&mut vmm, new_ring, None);
    assert_eq!(vmm.read(ICR), 0x80);
    assert_eq!(
        vmm.dev.state_ref().relocations().translate(RING + 0x2000),
        new_ring + 0x2000,
        "the guess covers the page"
    );
    assert_eq!(
        vmm.mem_bytes(new_ring + 12, 1),
        vec![1],
        "the named page is written"
    );
    assert_eq!(
        vmm.mem_bytes(new_ring + 0x2000, 32),
        vec![0; 32],
        "the guessed one is not"
    );
    let c = vmm.dev.report().counters;
    assert_eq!((c.dma_writes_applied, c.dma_writes_unconfirmed), (1, 1));
}

#[test]
fn a_small_control_value_is_not_an_address_even_on_a_dma_page() {
    const ITR: u64 = 0xC4;
    let mut t = Trace::new();
    t.dma_map(0, 1 << 30);
    t.write(ITR, 0x117);
    t.read(STATUS, 2);
    // A watch set once saw page 0 written: the page is "used by DMA" in the recording.
    t.dma_write(0x100, &[1; 8], Some(&[0; 8]));
    t.read(ICR, 0);
    for policy in [Policy::resync(), Policy::Model] {
        let mut t2 = Trace::new();
        t2.events = t.events.clone();
        let mut vmm = Vmm::new(t2, 4096, opts(policy));
        vmm.write(ITR, 0x1b2);
        assert_eq!(vmm.read(STATUS), 2);
        let r = vmm.dev.report();
        assert!(r.relocations.is_empty(), "{policy:?}: {:?}", r.relocations);
        assert!(r.diverged, "a changed control value is a divergence");
    }
}

#[test]
fn a_page_the_guest_named_at_its_relocated_address_takes_the_write() {
    const DMA_ADDR: u64 = 0x3000;
    let new_ring = 0x80_0000u64;
    let mut t = ring_bring_up_trace();
    // The driver points a DMA engine two pages into the area its ring starts: inside the ring
    // relocation's guess, named by a register of its own.
    t.write(DMA_ADDR, (RING + 0x2000) as u32);
    t.dma_write(RING + 12, &[1], Some(&[0]));
    t.dma_write(RING + 0x2000, &[0xEE; 32], Some(&[0; 32]));
    t.read(ICR, 0x80);
    let mut vmm = Vmm::new(t, 4096, opts(Policy::Strict));
    ring_bring_up(&mut vmm, new_ring, None);
    vmm.write(DMA_ADDR, (new_ring + 0x2000) as u32);
    assert_eq!(vmm.read(ICR), 0x80);
    let r = vmm.dev.report();
    assert!(!r.diverged, "{:?}", r.first_divergence);
    assert_eq!(vmm.mem_bytes(new_ring + 0x2000, 32), vec![0xEE; 32]);
    assert_eq!(vmm.mem_bytes(RING + 0x2000, 32), vec![0; 32]);
    assert_eq!(vmm.mem_bytes(new_ring + 12, 1), vec![1]);
    assert_eq!(r.counters.dma_writes_unconfirmed, 0);
}

/// An NVMe-style enable handshake: the controller is disabled (CC.EN = 0), CSTS.RDY reads 0, it
/// is enabled, and CSTS.RDY reads 1.
fn enable_handshake_trace() -> Trace {
    const CAP: u64 = 0x0;
    let mut t = Trace::new();
    t.write(NVME_CC, 0);
    t.read(CAP, 0x0f01_07ff);
    t.read(NVME_CSTS, 0);
    t.write(NVME_CC, 0x46_0001);
    t.read(NVME_CSTS, 1);
    t
}
const NVME_CC: u64 = 0x14;
const NVME_CSTS: u64 = 0x1c;

#[test]
fn a_read_does_not_resync_past_a_write_the_guest_has_not_made() {
    // The replayed driver reads CSTS once more than the recorded one did, before disabling: the
    // answer is the recorded one ahead, but the cursor stays before the CC write, so the poll
    // after the guest's own CC.EN = 0 still sees RDY = 0 and the enable is matched too.
    let mut vmm = Vmm::new(enable_handshake_trace(), 4096, opts(Policy::resync()));
    assert_eq!(vmm.read(NVME_CSTS), 0);
    vmm.write(NVME_CC, 0);
    assert_eq!(vmm.read(NVME_CSTS), 0, "RDY after the disable");
    assert_eq!(
        vmm.read(NVME_CSTS),
        0,
        "polls longer than recorded: the same answer"
    );
    vmm.write(NVME_CC, 0x46_0001);
    assert_eq!(vmm.read(NVME_CSTS), 1, "RDY after the enable");
    let r = vmm.dev.report();
    assert_eq!(r.counters.inserted, 1, "the early read");
    assert_eq!(r.counters.skipped, 1, "the CAP read the guest did not make");
    assert!(r.trace_finished);
}

#[test]
fn a_read_resyncs_past_a_recorded_write_the_guest_made_with_another_value() {
    // The guest's CC write differs from the recorded one (inserted); the recorded write is
    // still the guest's, so a read may resync past it.
    let mut vmm = Vmm::new(enable_handshake_trace(), 4096, opts(Policy::resync()));
    vmm.write(NVME_CC, 0x10);
    assert_eq!(vmm.read(0x0), 0x0f01_07ff);
    assert_eq!(vmm.read(NVME_CSTS), 0);
    let r = vmm.dev.report();
    assert_eq!((r.counters.inserted, r.counters.skipped), (1, 1));
}

#[test]
fn an_imported_qemu_log_is_replayed_with_a_caveat_about_dma() {
    let recorded = Replayer::new(Trace::new().source(16), opts(Policy::resync())).unwrap();
    assert!(recorded.caveats().is_empty(), "{:?}", recorded.caveats());
    let mut h = header();
    h.capture.source = "qemu-trace".into();
    let source = Arc::new(MemorySource::with_chunk_size(h, Vec::new(), 16));
    let imported = Replayer::new(source, opts(Policy::resync())).unwrap();
    let caveats = imported.caveats();
    assert_eq!(caveats.len(), 1);
    assert!(caveats[0].contains("no DMA data"), "{caveats:?}");
}

#[test]
fn an_interrupt_handler_that_runs_earlier_reads_what_the_captured_one_read() {
    // At capture the handler of the interrupt the driver provoked (ICS) ran 80 accesses later,
    // between the driver's table writes; at replay it runs at once and must see the cause.
    const ICS: u64 = 0xc8;
    const MTA: u64 = 0x5200;
    let mut t = Trace::new();
    t.write(ICS, 4);
    t.irq(2, 0);
    for i in 0..80 {
        t.write(MTA + 4 * i, 0);
    }
    t.read(ICR, 0x8000_0004);
    t.write(CTRL, 1);
    let mut vmm = Vmm::new(t, 4096, opts(Policy::resync()));
    vmm.write(ICS, 4);
    assert_eq!(vmm.irqs(0), 1);
    assert_eq!(
        vmm.read(ICR),
        0x8000_0004,
        "the handler sees the cause it tests for"
    );
    for i in 0..80 {
        vmm.write(MTA + 4 * i, 0);
    }
    vmm.write(CTRL, 1);
    let r = vmm.dev.report();
    assert_eq!(r.counters.answered_from_ahead, 1);
    assert_eq!(
        r.counters.skipped, 1,
        "the recorded handler read, made early"
    );
    assert!(r.trace_finished);
    // Without an interrupt in between, a read that far ahead is not looked for.
    let mut t = Trace::new();
    for i in 0..80 {
        t.write(MTA + 4 * i, 0);
    }
    t.read(ICR, 0x8000_0004);
    let mut vmm = Vmm::new(t, 4096, opts(Policy::resync()));
    assert_eq!(vmm.read(ICR), 0);
}

#[test]
fn a_driver_that_leaves_the_recorded_path_resyncs_its_reads_after_a_few() {
    // The capture's watchdog took the PHY semaphore and read the PHY before the statistics; the
    // replayed one reads the statistics at once. The first reads are answered from ahead with
    // the cursor standing; then the reads skip the PHY block and match.
    const SWFLAG: u64 = 0xf00;
    const STATS: u64 = 0x4000;
    let mut t = Trace::new();
    t.read(SWFLAG, 8);
    t.write(SWFLAG, 0x28);
    t.write(MDIC, 0x0436_0000);
    t.read(MDIC, 0x1436_0000);
    t.write(SWFLAG, 8);
    for i in 0..20u32 {
        t.read(STATS + 4 * i as u64, i);
    }
    t.write(CTRL, 1);
    let mut vmm = Vmm::new(t, 4096, opts(Policy::resync()));
    for i in 0..20u32 {
        assert_eq!(vmm.read(STATS + 4 * i as u64), i);
    }
    vmm.write(CTRL, 1);
    let r = vmm.dev.report();
    assert_eq!(r.counters.answered_from_ahead, 8);
    assert_eq!(r.counters.matched, 12 + 1);
    assert!(r.trace_finished, "{:?}", r.counters);
}

const SQ_DOORBELL: u64 = 0x1000;

/// An NVMe-like exchange as a watch-set recorder logs it: per command, the submission doorbell,
/// the command the guest wrote (a `dma_read`: opcode, flags, 16-bit id, namespace 1), then the
/// completion written into the completion ring (submission head, queue id, the echoed id, the
/// phase bit) and an interrupt.
fn echo_trace(recorded_ids: &[u16], with_reads: bool) -> Trace {
    echo_trace_of(recorded_ids, with_reads, command)
}

/// [`echo_trace`] with the commands `make` builds from the ids.
fn echo_trace_of(recorded_ids: &[u16], with_reads: bool, make: impl Fn(u16) -> Vec<u8>) -> Trace {
    let mut t = queues_trace();
    for (k, id) in recorded_ids.iter().enumerate() {
        t.write(SQ_DOORBELL, k as u32 + 1);
        if with_reads {
            t.dma_read(RING + 64 * k as u64, &make(*id));
        }
        let [lo, hi] = id.to_le_bytes();
        let entry = [k as u8 + 1, 0, 0, 0, lo, hi, 1];
        t.dma_write(CQ + 16 * k as u64 + 8, &entry, Some(&[0; 7]));
        t.irq(2, 0);
        t.read(ICR, 0x80);
    }
    t
}

fn command(id: u16) -> Vec<u8> {
    let mut c = vec![0u8; 64];
    c[0] = 0x06;
    c[2..4].copy_from_slice(&id.to_le_bytes());
    c[4] = 1;
    c
}

/// [`command`] with its data pointer (offset 24) naming `page`.
fn command_with_data(id: u16, page: u64) -> Vec<u8> {
    let mut c = command(id);
    c[24..32].copy_from_slice(&page.to_le_bytes());
    c
}

/// `ring_bring_up_trace` with the completion ring's base written too.
fn queues_trace() -> Trace {
    let mut t = ring_bring_up_trace();
    t.write(CQ_LO, CQ as u32);
    t.write(CQ_HI, 0);
    t
}

#[test]
fn completions_echo_the_replay_guests_command_ids() {
    let recorded: [u16; 4] = [0x0110, 0x2111, 0x0112, 0x3013];
    let guest: [u16; 4] = [0x0230, 0x0231, 0x1232, 0x0233];
    let trace = |case: &str| match case {
        "constant" => echo_trace(&[0x0110; 4], true),
        "no reads" => echo_trace(&recorded, false),
        _ => echo_trace(&recorded, true),
    };
    for (case, want_echo) in [
        // The ids differ from command to command and each is the only field of its command
        // holding the value: the completion carries the replay guest's id.
        ("echoed", true),
        // One id over and over is no evidence of an echo (a constant a device writes back).
        ("constant", false),
        // Without the commands in the trace, nothing is known about them.
        ("no reads", false),
    ] {
        for policy in policies() {
            let mut vmm = queues_brought_up(&trace(case), policy);
            for (k, id) in guest.iter().enumerate() {
                vmm.put_mem(RING + 64 * k as u64, &command(*id));
                vmm.write(SQ_DOORBELL, k as u32 + 1);
                assert_eq!(vmm.read(ICR), 0x80);
                let got = vmm.mem_bytes(CQ + 16 * k as u64 + 12, 2);
                let recorded_id = if case == "constant" {
                    0x0110
                } else {
                    recorded[k]
                };
                let want = if want_echo { *id } else { recorded_id };
                assert_eq!(got, want.to_le_bytes(), "{case} {policy:?} command {k}");
                // The rest of the completion is as recorded.
                assert_eq!(vmm.mem_bytes(CQ + 16 * k as u64 + 8, 1), [k as u8 + 1]);
                assert_eq!(vmm.mem_bytes(CQ + 16 * k as u64 + 14, 1), [1]);
            }
            let c = vmm.dev.report().counters;
            assert_eq!(
                c.dma_echoes_rewritten,
                if want_echo { 4 } else { 0 },
                "{case} {policy:?}: {c:?}"
            );
            assert_eq!(c.dma_writes_applied, 4, "{case} {policy:?}: {c:?}");
        }
    }
}

#[test]
fn a_stale_command_in_the_ring_does_not_vouch_for_a_page_the_kernel_reused() {
    // The kernel's list pointers (what a replay once overwrote: `list_del corruption`).
    const KERNEL: [u8; 8] = 0xffff_8880_0612_3440u64.to_le_bytes();
    const RECORDED_KERNEL: [u8; 8] = 0xffff_8880_0589_ea00u64.to_le_bytes();
    const HANDLER: [u8; 8] = [1, 2, 3, 4, 5, 6, 7, 8];
    let command_naming = |page: u64| command_with_data(0x0110, page);
    let mut t = queues_trace();
    // Command 0 names the DATA page; the device fills it and completes.
    t.write(SQ_DOORBELL, 1);
    t.dma_read(RING, &command_naming(DATA));
    t.dma_write(DATA, &[0x5A; 16], Some(&[0; 16]));
    t.dma_write(CQ + 8, &[1, 0, 0, 0, 0x10, 1, 1], Some(&[0; 7]));
    t.irq(2, 0);
    t.read(ICR, 0x80);
    // Command 1 names nothing; the kernel has reused the DATA page meanwhile, and a watch set
    // logged its writes there as the device's, in the group that completes command 1: its
    // pointers and other data before the interrupt, more data after it (the interrupt
    // handler's).
    t.write(SQ_DOORBELL, 2);
    t.dma_read(RING + 64, &command(0x0111));
    t.dma_write(DATA + 0x100, &RECORDED_KERNEL, Some(&KERNEL));
    t.dma_write(DATA + 0x300, &[0x41; 8], Some(&[0x31; 8]));
    t.dma_write(CQ + 24, &[2, 0, 0, 0, 0x11, 1, 1], Some(&[0; 7]));
    t.irq(2, 0);
    t.dma_write(DATA + 0x200, &[0x77; 8], Some(&HANDLER));
    t.read(ICR, 0x80);
    for policy in policies() {
        let mut vmm = queues_brought_up(&t, policy);
        vmm.put_mem(DATA + 0x100, &KERNEL);
        vmm.put_mem(DATA + 0x200, &HANDLER);
        vmm.put_mem(DATA + 0x300, &[0x31; 8]);
        vmm.put_mem(RING, &command_naming(DATA));
        vmm.write(SQ_DOORBELL, 1);
        assert_eq!(vmm.read(ICR), 0x80);
        assert_eq!(
            vmm.mem_bytes(DATA, 16),
            [0x5A; 16],
            "{policy:?}: the command's data"
        );
        // Command 0 stays in the ring's first page.
        vmm.put_mem(RING + 64, &command(0x0111));
        vmm.write(SQ_DOORBELL, 2);
        assert_eq!(vmm.read(ICR), 0x80);
        assert_eq!(
            vmm.mem_bytes(DATA + 0x100, 8),
            KERNEL,
            "{policy:?}: kernel pointers spared {:?}",
            vmm.dev.report().counters
        );
        assert_eq!(
            vmm.mem_bytes(DATA + 0x200, 8),
            HANDLER,
            "{policy:?}: the handler's data spared"
        );
        assert_eq!(
            vmm.mem_bytes(DATA + 0x300, 8),
            [0x31; 8],
            "{policy:?}: the kernel's other data spared (the device writes the page in one group)"
        );
        assert_eq!(
            vmm.mem_bytes(CQ + 24, 1),
            [2],
            "{policy:?}: completion posted"
        );
    }
}

/// A replayer over `t` whose guest has brought up the submission ring and the completion ring.
fn queues_brought_up(t: &Trace, policy: Policy) -> Vmm {
    queues_brought_up_in_chunks(t, policy, 4096)
}

/// [`queues_brought_up`] over a trace cut into chunks of `chunk` events.
fn queues_brought_up_in_chunks(t: &Trace, policy: Policy, chunk: usize) -> Vmm {
    let mut vmm = Vmm::new(t_events(t), chunk, opts(policy));
    ring_bring_up(&mut vmm, RING, None);
    vmm.write(CQ_LO, CQ as u32);
    vmm.write(CQ_HI, 0);
    vmm
}

#[test]
fn completions_in_a_queue_a_command_created_land_when_they_echo_the_command() {
    const IO_CQ: u64 = 0x10_a000;
    let create_queue = {
        let mut c = command_with_data(0x0105, IO_CQ);
        c[0] = 0x05;
        c
    };
    // The first id is 0 (Linux's first tag, generation 0): the fresh queue's entry keeps the 0
    // it held, and is still the echo of its command.
    let ids: [u16; 4] = [0x0000, 0x0121, 0x0122, 0x0123];
    // A recorder logs the first change to a page a command handed over as the whole page, so a
    // fresh completion queue's first entry may come as a 4 KiB write: a completion all the same.
    for first_logged_whole in [false, true] {
        let mut t = queues_trace();
        // An admin command creates the queue (completed in the register-named ring)...
        t.write(SQ_DOORBELL, 1);
        t.dma_read(RING, &create_queue);
        t.dma_write(CQ + 8, &[1, 0, 0, 0, 0x05, 1, 1], Some(&[0; 7]));
        t.irq(2, 0);
        t.read(ICR, 0x80);
        // ...then commands complete into it, echoing their ids.
        for (k, id) in ids.iter().enumerate() {
            t.write(SQ_DOORBELL, k as u32 + 2);
            t.dma_read(RING + 64 * (k as u64 + 1), &command(*id));
            let [lo, hi] = id.to_le_bytes();
            let entry = [k as u8 + 1, 0, 1, 0, lo, hi, 1];
            if k == 0 && first_logged_whole {
                let mut page = vec![0u8; 4096];
                page[8..15].copy_from_slice(&entry);
                t.dma_write(IO_CQ, &page, Some(&[0; 4096]));
            } else {
                t.dma_write(IO_CQ + 16 * k as u64 + 8, &entry, Some(&[0; 7]));
            }
            t.irq(2, 0);
            t.read(ICR, 0x80);
        }
        for policy in policies() {
            let mut vmm = queues_brought_up(&t, policy);
            vmm.put_mem(RING, &create_queue);
            vmm.write(SQ_DOORBELL, 1);
            assert_eq!(vmm.read(ICR), 0x80);
            for k in 0..ids.len() {
                let id = 0x0230 + k as u16;
                vmm.put_mem(RING + 64 * (k as u64 + 1), &command(id));
                vmm.write(SQ_DOORBELL, k as u32 + 2);
                assert_eq!(vmm.read(ICR), 0x80);
                let got = vmm.mem_bytes(IO_CQ + 16 * k as u64 + 8, 7);
                let case = format!("{policy:?}, first logged whole {first_logged_whole}");
                assert_eq!(got[6], 1, "{case}: completion {k} posted");
                assert_eq!(got[4..6], id.to_le_bytes(), "{case}: completion {k}'s id");
            }
            let c = vmm.dev.report().counters;
            assert_eq!(c.dma_writes_unconfirmed, 0, "{policy:?}: {c:?}");
        }
    }
}

#[test]
fn a_page_a_command_hands_over_is_filled_whole_whatever_it_held() {
    let command_naming = |page: u64| command_with_data(0x0110, page);
    let mut filled = vec![0x5Au8; 4096];
    filled[100..200].fill(0x11); // bytes the device wrote with the value they had
    for (case, len) in [("whole page", 4096usize), ("part of it", 16)] {
        let mut t = queues_trace();
        t.write(SQ_DOORBELL, 1);
        t.dma_read(RING, &command_naming(DATA));
        t.dma_write(DATA, &filled[..len], Some(&vec![0x11; len]));
        t.dma_write(CQ + 8, &[1, 0, 0, 0, 0x10, 1, 1], Some(&[0; 7]));
        t.irq(2, 0);
        t.read(ICR, 0x80);
        for policy in policies() {
            let mut vmm = queues_brought_up(&t, policy);
            // The replay guest's buffer has another history than the recorded one's.
            vmm.put_mem(DATA, &[0x22; 4096]);
            vmm.put_mem(RING, &command_naming(DATA));
            vmm.write(SQ_DOORBELL, 1);
            assert_eq!(vmm.read(ICR), 0x80);
            let got = vmm.mem_bytes(DATA, len);
            if len == 4096 {
                assert_eq!(
                    got, filled,
                    "{case} {policy:?}: the device's fill, all of it"
                );
            } else {
                // A partial write keeps to the rule: only where the recorded bytes still are.
                assert_eq!(got, vec![0x22; len], "{case} {policy:?}");
            }
        }
    }
}

#[test]
fn a_command_written_before_another_register_write_still_names_its_data_page() {
    const CQ_HEAD_DOORBELL: u64 = 0x1004;
    let c = command_with_data(0x0003, DATA);
    let mut t = queues_trace();
    // The driver writes its next command, then acknowledges an earlier completion (the read is
    // logged after that write), then rings the submission doorbell.
    t.write(CQ_HEAD_DOORBELL, 0);
    t.dma_read(RING, &c);
    t.write(SQ_DOORBELL, 1);
    t.dma_write(DATA, &[0x5A; 16], Some(&[0; 16]));
    t.dma_write(CQ + 8, &[1, 0, 0, 0, 3, 0, 1], Some(&[0; 7]));
    t.irq(2, 0);
    t.read(ICR, 0x80);
    for policy in policies() {
        let mut vmm = queues_brought_up(&t, policy);
        vmm.put_mem(RING, &c);
        vmm.write(CQ_HEAD_DOORBELL, 0);
        vmm.write(SQ_DOORBELL, 1);
        assert_eq!(vmm.read(ICR), 0x80);
        assert_eq!(vmm.mem_bytes(DATA, 16), [0x5A; 16], "{policy:?}");
    }
}

#[test]
fn a_command_whose_first_word_looks_like_an_address_still_echoes_its_id() {
    // Namespace 0 (an admin command) and ids near 0x10: the command's first word is 0x10_0006,
    // inside the ring's own page, which the device used by DMA.
    let admin = |id: u16| {
        let mut c = command(id);
        c[4] = 0;
        c
    };
    let recorded: [u16; 4] = [0x0010, 0x0011, 0x0012, 0x0013];
    let guest: [u16; 4] = [0x0030, 0x0031, 0x0032, 0x0033];
    let t = echo_trace_of(&recorded, true, admin);
    for policy in policies() {
        let mut vmm = queues_brought_up(&t, policy);
        for (k, id) in guest.iter().enumerate() {
            vmm.put_mem(RING + 64 * k as u64, &admin(*id));
            vmm.write(SQ_DOORBELL, k as u32 + 1);
            assert_eq!(vmm.read(ICR), 0x80);
            let got = vmm.mem_bytes(CQ + 16 * k as u64 + 12, 2);
            assert_eq!(got, id.to_le_bytes(), "{policy:?} command {k}");
        }
    }
}

#[test]
fn a_field_that_matches_a_command_now_and_then_is_no_echo() {
    // Eight commands; the completion's submission-head field (k + 2) equals a field of the
    // command (at offset 36) in three of them by chance: three different values, but not most
    // of the completions, so the head is left as recorded. The id, echoed every time, is not.
    let with_field = |id: u16, field: u16| {
        let mut c = command(id);
        c[36..38].copy_from_slice(&field.to_le_bytes());
        c
    };
    let recorded: Vec<u16> = (0..8).map(|k| 0x0120 + k).collect();
    let coincidence = |k: usize| if k < 3 { k as u16 + 2 } else { 0x7777 };
    let mut t = queues_trace();
    for (k, id) in recorded.iter().enumerate() {
        t.write(SQ_DOORBELL, k as u32 + 1);
        t.dma_read(RING + 64 * k as u64, &with_field(*id, coincidence(k)));
        let [lo, hi] = id.to_le_bytes();
        let head = k as u8 + 2;
        t.dma_write(
            CQ + 16 * k as u64 + 8,
            &[head, 0, 0, 0, lo, hi, 1],
            Some(&[0; 7]),
        );
        t.irq(2, 0);
        t.read(ICR, 0x80);
    }
    for policy in policies() {
        let mut vmm = queues_brought_up(&t, policy);
        for k in 0..8 {
            let id = 0x0230 + k as u16;
            vmm.put_mem(RING + 64 * k as u64, &with_field(id, 0x5555));
            vmm.write(SQ_DOORBELL, k as u32 + 1);
            assert_eq!(vmm.read(ICR), 0x80);
            let entry = vmm.mem_bytes(CQ + 16 * k as u64 + 8, 6);
            assert_eq!(
                entry[..2],
                [k as u8 + 2, 0],
                "{policy:?} {k}: head as recorded"
            );
            assert_eq!(entry[4..6], id.to_le_bytes(), "{policy:?} {k}: id echoed");
        }
    }
}

#[test]
fn a_page_aligned_receive_buffer_takes_a_whole_page_fill() {
    // A recorder logs a device's first change to a page a page-aligned descriptor pointer names
    // as the whole page: the buffer the descriptor names takes all of it, not only its first
    // 2 KiB.
    let mut frame = vec![0u8; 4096];
    frame[..64].fill(0xAA);
    let mut t = ring_bring_up_trace();
    let mut desc = BUF.to_le_bytes().to_vec();
    desc.extend_from_slice(&[0u8; 8]);
    let mut written_back = vec![0x40, 0, 0, 0, 0, 0, 0, 0];
    written_back.extend_from_slice(&[3, 0, 0, 0, 0, 0, 0, 0]);
    // The trace holds what the guest handed the device: the descriptor, then another exchange
    // that completes (so the descriptor is no longer a pending command when the frame comes).
    t.dma_read(RING, &desc);
    t.write(CTRL, 1);
    t.dma_write(RING + 16 + 12, &[1], Some(&[0]));
    t.read(STATUS, 2);
    t.dma_read(RING + 32, &[0x11; 16]);
    t.write(CTRL, 2);
    t.dma_write(BUF, &frame, Some(&[0; 4096]));
    t.dma_write(RING, &written_back, Some(&desc));
    t.irq(2, 0);
    t.read(ICR, 0x80);
    for policy in policies() {
        let mut vmm = Vmm::new(t_events(&t), 4096, opts(policy));
        ring_bring_up(&mut vmm, RING, Some(BUF));
        vmm.write(CTRL, 1);
        assert_eq!(vmm.read(STATUS), 2);
        vmm.write(CTRL, 2);
        assert_eq!(vmm.read(ICR), 0x80);
        assert_eq!(vmm.mem_bytes(BUF, 64), vec![0xAA; 64], "{policy:?}");
        let c = vmm.dev.report().counters;
        assert_eq!(c.dma_writes_unconfirmed, 0, "{policy:?}: {c:?}");
    }
}

/// A copy of `t` (the trace builder is not `Clone`).
fn t_events(t: &Trace) -> Trace {
    let mut c = Trace::new();
    c.events = t.events.clone();
    c
}

/// [`echo_trace`] with `extra` adding a watch set's inferred events to group `k` (command `id`)
/// after the command's read.
fn echo_trace_with(recorded_ids: &[u16], extra: impl Fn(&mut Trace, usize, u16)) -> Trace {
    let mut t = queues_trace();
    for (k, id) in recorded_ids.iter().enumerate() {
        t.write(SQ_DOORBELL, k as u32 + 1);
        t.dma_read(RING + 64 * k as u64, &command(*id));
        extra(&mut t, k, *id);
        let [lo, hi] = id.to_le_bytes();
        let entry = [k as u8 + 1, 0, 0, 0, lo, hi, 1];
        t.dma_write(CQ + 16 * k as u64 + 8, &entry, Some(&[0; 7]));
        t.irq(2, 0);
        t.read(ICR, 0x80);
    }
    t
}

/// Replays `t` (from [`echo_trace_with`]) under every policy, the guest numbering its `commands`
/// commands from `first_id`, and checks that every completion carries the guest's id.
fn assert_completions_carry_guest_ids(t: &Trace, commands: usize, first_id: u16) {
    for policy in policies() {
        let mut vmm = queues_brought_up(t, policy);
        for k in 0..commands {
            let id = first_id + k as u16;
            vmm.put_mem(RING + 64 * k as u64, &command(id));
            vmm.write(SQ_DOORBELL, k as u32 + 1);
            assert_eq!(vmm.read(ICR), 0x80, "{policy:?} {k}");
            assert_eq!(
                vmm.mem_bytes(CQ + 16 * k as u64 + 12, 2),
                id.to_le_bytes(),
                "{policy:?} {k}: the replay guest's id"
            );
        }
    }
}

#[test]
fn an_echo_among_write_backs_that_echo_nothing_is_still_an_echo() {
    // A recorder's inferred writes add write-backs at the id's position that echo nothing (a
    // kernel's stores beside the queues), here twice as many as there are completions. The id
    // still echoes every command and no other field pair echoes at that position, so it counts.
    const NOISE: u64 = 0x10_6000;
    let recorded: Vec<u16> = (0..20).map(|k| 0x0140 + k).collect();
    let t = echo_trace_with(&recorded, |t, k, _| {
        for j in 0..2u16 {
            let noise = 0x7000 + 2 * k as u16 + j;
            let at = NOISE + 32 * k as u64 + 16 * j as u64 + 12;
            t.dma_write(at, &noise.to_le_bytes(), Some(&[0, 0]));
        }
    });
    assert_completions_carry_guest_ids(&t, recorded.len(), 0x0530);
}

#[test]
fn a_structure_an_old_command_set_up_takes_small_write_backs_before_the_interrupt_only() {
    // An NVMe doorbell buffer: one admin command names two pages, the guest's shadow doorbells
    // (SHADOW) and the device's event indexes (EVENTS). Each later completion comes with a
    // small write to EVENTS before its interrupt (the device's) and one to SHADOW after it (a
    // recorder's look after the guest's handler stored its new head there). Only the first
    // kind lands, and not where the replay guest keeps a kernel pointer.
    const SHADOW: u64 = 0x10_c000;
    const EVENTS: u64 = 0x10_d000;
    let config = {
        let mut c = command_with_data(0x0107, SHADOW);
        c[0] = 0x7c;
        c[32..40].copy_from_slice(&EVENTS.to_le_bytes());
        c
    };
    // Enough completions for the event-index page to be the device's by the trace's account.
    let ids: Vec<u16> = (0..10).map(|k| 0x0140 + k).collect();
    let mut t = queues_trace();
    t.write(SQ_DOORBELL, 1);
    t.dma_read(RING, &config);
    t.dma_write(CQ + 8, &[1, 0, 0, 0, 0x07, 1, 1], Some(&[0; 7]));
    t.irq(2, 0);
    t.read(ICR, 0x80);
    for (k, id) in ids.iter().enumerate() {
        let k = k as u64 + 1;
        t.write(SQ_DOORBELL, k as u32 + 1);
        t.dma_read(RING + 64 * k, &command(*id));
        let [lo, hi] = id.to_le_bytes();
        t.dma_write(
            CQ + 16 * k + 8,
            &[k as u8 + 1, 0, 0, 0, lo, hi, 1],
            Some(&[0; 7]),
        );
        t.dma_write(
            EVENTS + 8,
            &[k as u8, 0, 0, 0],
            Some(&[k as u8 - 1, 0, 0, 0]),
        );
        t.irq(2, 0);
        t.dma_write(SHADOW + 12, &[k as u8], Some(&[k as u8 - 1]));
        t.read(ICR, 0x80);
    }
    // Small chunks cut some groups in two: a chunk can start between a completion and the
    // write-back it allows.
    let cases = [(false, 4096), (true, 4096)]
        .into_iter()
        .chain((2..=12).map(|chunk| (false, chunk)));
    for (kernel_word, chunk) in cases {
        for policy in policies() {
            let mut vmm = queues_brought_up_in_chunks(&t, policy, chunk);
            if kernel_word {
                // The replay guest keeps a kernel address in the word the write touches.
                vmm.put_mem(EVENTS + 12, &0xffff_8880u32.to_le_bytes());
            }
            vmm.put_mem(RING, &config);
            vmm.write(SQ_DOORBELL, 1);
            assert_eq!(vmm.read(ICR), 0x80);
            for (k, id) in ids.iter().enumerate() {
                let k = k as u64 + 1;
                vmm.put_mem(RING + 64 * k, &command(*id));
                vmm.write(SQ_DOORBELL, k as u32 + 1);
                assert_eq!(vmm.read(ICR), 0x80);
                let events = vmm.mem_bytes(EVENTS + 8, 1)[0];
                let want = if kernel_word { 0 } else { k as u8 };
                assert_eq!(
                    events, want,
                    "{policy:?} kernel word {kernel_word}, chunks of {chunk}: event index {k}"
                );
                assert_eq!(
                    vmm.mem_bytes(SHADOW + 12, 1)[0],
                    0,
                    "{policy:?}: the guest's shadow doorbell is the guest's to write"
                );
            }
        }
    }
}

#[test]
fn a_whole_page_fill_ends_at_the_last_block_the_device_changed() {
    // A 500-byte log page in a buffer that starts a page: the recorder logs the device's fill as
    // the whole page, the rest of which held the recorded kernel's other objects, one of which
    // changed meanwhile. The replay guest's other objects there stay as they are.
    let before = vec![0x33u8; 4096];
    let mut after = before.clone();
    after[..500].fill(0x5A);
    // Another object in the page that the recorded kernel changed meanwhile.
    after[3000..3008].fill(0x77);
    let mut t = queues_trace();
    t.write(SQ_DOORBELL, 1);
    t.dma_read(RING, &command_with_data(0x0110, DATA));
    t.dma_write(DATA, &after, Some(&before));
    t.dma_write(CQ + 8, &[1, 0, 0, 0, 0x10, 1, 1], Some(&[0; 7]));
    t.irq(2, 0);
    t.read(ICR, 0x80);
    for policy in policies() {
        let mut vmm = queues_brought_up(&t, policy);
        vmm.put_mem(DATA, &[0x44; 4096]);
        vmm.put_mem(RING, &command_with_data(0x0110, DATA));
        vmm.write(SQ_DOORBELL, 1);
        assert_eq!(vmm.read(ICR), 0x80);
        let got = vmm.mem_bytes(DATA, 4096);
        assert_eq!(got[..500], after[..500], "{policy:?}: the fill");
        // The fill's last 16-byte block is the recorded page's (the device may have written
        // bytes that kept their value).
        assert_eq!(got[500..512], after[500..512], "{policy:?}");
        assert_eq!(
            got[512..],
            vec![0x44; 4096 - 512],
            "{policy:?}: the rest is the guest's"
        );
    }
}

#[test]
fn a_queue_longer_than_a_page_moves_page_by_page_with_its_first_page() {
    // An I/O submission queue of two pages at another address in the replay guest: the create
    // command's pointer relocates its first page; commands in its second page must be read
    // from the replay guest's second page too, or their ids echo wrong.
    const IO_CQ: u64 = 0x10_a000;
    const IO_SQ: u64 = 0x11_0000;
    const IO_SQ_REPLAY: u64 = 0x13_0000;
    const IO_DOORBELL: u64 = 0x1008;
    let create = |opcode: u8, id: u16, page: u64| {
        let mut c = command_with_data(id, page);
        c[0] = opcode;
        c
    };
    let commands = 70u64;
    let recorded_id = |k: u64| 0x0200 + k as u16;
    let guest_id = |k: u64| 0x0600 + k as u16;
    let mut t = queues_trace();
    for (k, c) in [create(5, 0x0105, IO_CQ), create(1, 0x0106, IO_SQ)]
        .iter()
        .enumerate()
    {
        t.write(SQ_DOORBELL, k as u32 + 1);
        t.dma_read(RING + 64 * k as u64, c);
        let [lo, hi] = (0x0105 + k as u16).to_le_bytes();
        t.dma_write(
            CQ + 16 * k as u64 + 8,
            &[k as u8 + 1, 0, 0, 0, lo, hi, 1],
            Some(&[0; 7]),
        );
        t.irq(2, 0);
        t.read(ICR, 0x80);
    }
    for k in 0..commands {
        t.write(IO_DOORBELL, k as u32 + 1);
        t.dma_read(IO_SQ + 64 * k, &command(recorded_id(k)));
        let [lo, hi] = recorded_id(k).to_le_bytes();
        let entry = [k as u8 + 1, 0, 1, 0, lo, hi, 1];
        t.dma_write(IO_CQ + 16 * k + 8, &entry, Some(&[0; 7]));
        t.irq(2, 0);
        t.read(ICR, 0x80);
    }
    let mut vmm = queues_brought_up(&t, Policy::Strict);
    for (k, c) in [create(5, 0x0105, IO_CQ), create(1, 0x0106, IO_SQ_REPLAY)]
        .iter()
        .enumerate()
    {
        vmm.put_mem(RING + 64 * k as u64, c);
        vmm.write(SQ_DOORBELL, k as u32 + 1);
        assert_eq!(vmm.read(ICR), 0x80);
    }
    for k in 0..commands {
        vmm.put_mem(IO_SQ_REPLAY + 64 * k, &command(guest_id(k)));
        vmm.write(IO_DOORBELL, k as u32 + 1);
        assert_eq!(vmm.read(ICR), 0x80);
        assert_eq!(
            vmm.mem_bytes(IO_CQ + 16 * k + 12, 2),
            guest_id(k).to_le_bytes(),
            "command {k} (page {})",
            k / 64
        );
    }
}

#[test]
fn the_dma_log_says_what_landed_and_what_was_echoed() {
    use std::io::Write;
    use std::sync::Mutex;
    #[derive(Clone, Default)]
    struct Shared(Arc<Mutex<Vec<u8>>>);
    impl Write for Shared {
        fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
            self.0.lock().expect("not poisoned").extend_from_slice(b);
            Ok(b.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }
    let recorded: [u16; 4] = [0x0110, 0x2111, 0x0112, 0x3013];
    let t = echo_trace(&recorded, true);
    let sink = Shared::default();
    let log = hwrr_replayer::DmaLog::new(sink.clone());
    let mut vmm = Vmm::new(
        t_events(&t),
        4096,
        ReplayOptions {
            dma_log: Some(log.clone()),
            ..opts(Policy::Strict)
        },
    );
    ring_bring_up(&mut vmm, RING, None);
    vmm.write(CQ_LO, CQ as u32);
    vmm.write(CQ_HI, 0);
    for k in 0..recorded.len() {
        vmm.put_mem(RING + 64 * k as u64, &command(0x0230 + k as u16));
        vmm.write(SQ_DOORBELL, k as u32 + 1);
        assert_eq!(vmm.read(ICR), 0x80);
    }
    log.finish().expect("the log is written");
    let text = String::from_utf8(sink.0.lock().expect("not poisoned").clone()).expect("utf-8");
    let lines: Vec<serde_json::Value> = text
        .lines()
        .map(|l| serde_json::from_str(l).expect("a JSON line"))
        .collect();
    let fields: Vec<&serde_json::Value> = lines
        .iter()
        .filter(|l| l["kind"] == "echo_fields")
        .collect();
    assert!(!fields.is_empty(), "{text}");
    assert_eq!(fields[0]["fields"], serde_json::json!([[12, 2]]), "{text}");
    let writes: Vec<&serde_json::Value> =
        lines.iter().filter(|l| l["kind"] == "dma_write").collect();
    assert_eq!(writes.len(), recorded.len(), "{text}");
    for (k, w) in writes.iter().enumerate() {
        assert_eq!(w["outcome"], "applied", "{w}");
        assert_eq!(w["len"], 7, "{w}");
        assert_eq!(w["echoes"][0]["recorded"], recorded[k], "{w}");
        assert_eq!(w["echoes"][0]["replay"], 0x0230 + k as u64, "{w}");
    }
    let reads: Vec<&serde_json::Value> = lines.iter().filter(|l| l["kind"] == "dma_read").collect();
    assert_eq!(reads.len(), recorded.len(), "{text}");
    assert_eq!(
        reads[0]["recorded"],
        hwrr_formats::hex::encode(&command(recorded[0])),
        "{text}"
    );
}

#[test]
fn a_command_in_a_ring_is_the_source_of_an_echo_before_kernel_data_beside_it() {
    // A watch set logs the kernel's stores beside the queues as reads too: here, in one group,
    // a word of kernel data holds the command's id at the id's offset. The command, read from
    // the ring, is still the id's source.
    const NOISE: u64 = 0x10_6000;
    let recorded: Vec<u16> = (0..8).map(|k| 0x0150 + k).collect();
    let t = echo_trace_with(&recorded, |t, k, id| {
        if k == 5 {
            let mut kernel = vec![0x99u8; 16];
            kernel[2..4].copy_from_slice(&id.to_le_bytes());
            t.dma_read(NOISE, &kernel);
        }
    });
    assert_completions_carry_guest_ids(&t, recorded.len(), 0x0730);
}

#[test]
fn a_page_the_guest_hands_over_far_more_than_the_device_writes_stays_the_guests() {
    // NVMe shadow doorbells: the guest writes them and the device reads them, so a watch set logs
    // them as reads after each doorbell; now and then an observation logs one of the guest's
    // stores as a device write, here before the group's interrupt. The page stays the guest's.
    const SHADOW: u64 = 0x10_c000;
    let config = {
        let mut c = command_with_data(0x0107, SHADOW);
        c[0] = 0x7c;
        c
    };
    let mut t = queues_trace();
    t.write(SQ_DOORBELL, 1);
    t.dma_read(RING, &config);
    t.dma_write(CQ + 8, &[1, 0, 0, 0, 0x07, 1, 1], Some(&[0; 7]));
    t.irq(2, 0);
    t.read(ICR, 0x80);
    for k in 1..=6u64 {
        t.write(SQ_DOORBELL, k as u32 + 1);
        t.dma_read(RING + 64 * k, &command(0x0140 + k as u16));
        t.dma_read(
            SHADOW,
            &[k as u8, 0, 0, 0, 0, 0, 0, 0, 1, 0, 0, 0, 0, 0, 0, 0],
        );
        let [lo, hi] = (0x0140 + k as u16).to_le_bytes();
        t.dma_write(
            CQ + 16 * k + 8,
            &[k as u8 + 1, 0, 0, 0, lo, hi, 1],
            Some(&[0; 7]),
        );
        if k == 6 {
            t.dma_write(SHADOW + 12, &[2], Some(&[0]));
        }
        t.irq(2, 0);
        t.read(ICR, 0x80);
    }
    for policy in policies() {
        let mut vmm = queues_brought_up(&t, policy);
        vmm.put_mem(RING, &config);
        vmm.write(SQ_DOORBELL, 1);
        assert_eq!(vmm.read(ICR), 0x80);
        for k in 1..=6u64 {
            vmm.put_mem(RING + 64 * k, &command(0x0140 + k as u16));
            vmm.write(SQ_DOORBELL, k as u32 + 1);
            assert_eq!(vmm.read(ICR), 0x80);
        }
        assert_eq!(
            vmm.mem_bytes(SHADOW + 12, 1),
            [0],
            "{policy:?}: the guest's shadow doorbell is the guest's to write"
        );
    }
}

#[test]
fn a_command_a_recorder_logged_as_a_device_write_still_gives_its_id() {
    // A recorder's observation (an interrupt for an earlier command) can see the guest's next
    // command before its doorbell and log it as a device write into the submission queue. The
    // queue is one commands are read from, so the write is the guest's command: its completion
    // still carries the replay guest's id.
    const IO_CQ: u64 = 0x10_a000;
    const IO_SQ: u64 = 0x11_0000;
    const IO_DOORBELL: u64 = 0x1008;
    let create = |opcode: u8, id: u16, page: u64| {
        let mut c = command_with_data(id, page);
        c[0] = opcode;
        c
    };
    let admin = [create(5, 0x0105, IO_CQ), create(1, 0x0106, IO_SQ)];
    let mut t = queues_trace();
    for (k, c) in admin.iter().enumerate() {
        t.write(SQ_DOORBELL, k as u32 + 1);
        t.dma_read(RING + 64 * k as u64, c);
        let [lo, hi] = (0x0105 + k as u16).to_le_bytes();
        t.dma_write(
            CQ + 16 * k as u64 + 8,
            &[k as u8 + 1, 0, 0, 0, lo, hi, 1],
            Some(&[0; 7]),
        );
        t.irq(2, 0);
        t.read(ICR, 0x80);
    }
    let recorded_id = |k: u64| 0x0200 + k as u16;
    // Command 4 is logged as a device write only, command 5 as a device write and then, at its
    // doorbell, as a read too (one command, pending twice).
    for k in 0..6u64 {
        if k >= 4 {
            t.dma_write(IO_SQ + 64 * k, &command(recorded_id(k)), Some(&[0; 64]));
        }
        t.write(IO_DOORBELL, k as u32 + 1);
        if k != 4 {
            t.dma_read(IO_SQ + 64 * k, &command(recorded_id(k)));
        }
        let [lo, hi] = recorded_id(k).to_le_bytes();
        t.dma_write(
            IO_CQ + 16 * k + 8,
            &[k as u8 + 1, 0, 1, 0, lo, hi, 1],
            Some(&[0; 7]),
        );
        t.irq(2, 0);
        t.read(ICR, 0x80);
    }
    for policy in policies() {
        let mut vmm = queues_brought_up(&t, policy);
        for (k, c) in admin.iter().enumerate() {
            vmm.put_mem(RING + 64 * k as u64, c);
            vmm.write(SQ_DOORBELL, k as u32 + 1);
            assert_eq!(vmm.read(ICR), 0x80);
        }
        for k in 0..6u64 {
            let id = 0x0600 + k as u16;
            vmm.put_mem(IO_SQ + 64 * k, &command(id));
            vmm.write(IO_DOORBELL, k as u32 + 1);
            assert_eq!(vmm.read(ICR), 0x80);
            assert_eq!(
                vmm.mem_bytes(IO_CQ + 16 * k + 12, 2),
                id.to_le_bytes(),
                "{policy:?}: command {k}'s id"
            );
        }
    }
}

#[test]
fn fields_past_the_last_change_of_a_write_back_are_no_echoes() {
    // A doorbell buffer's first fill sets two counters at the start of the page and leaves the
    // zero after them. A pending read holds 0 where commands hold their ids and the replay guest
    // holds another value there: that zero is still left alone.
    const EVENTS: u64 = 0x10_d000;
    const KERNEL: u64 = 0x10_6000;
    let config = {
        let mut c = command_with_data(0x0107, EVENTS);
        c[0] = 0x7c;
        c
    };
    let mut struct_bytes = vec![0x0cu8, 0, 0, 0, 0x55, 0x66, 0x77, 0x11];
    struct_bytes.extend_from_slice(&[0x22; 8]);
    let mut fill = vec![0u8; 4096];
    fill[..8].copy_from_slice(&[10, 0, 0, 0, 9, 0, 0, 0]);
    let recorded: [u16; 4] = [0x0140, 0x0141, 0x0142, 0x0143];
    let mut t = queues_trace();
    t.write(SQ_DOORBELL, 1);
    t.dma_read(RING, &config);
    t.dma_read(KERNEL, &struct_bytes);
    t.dma_write(EVENTS, &fill, Some(&[0; 4096]));
    t.dma_write(CQ + 8, &[1, 0, 0, 0, 0x07, 1, 1], Some(&[0; 7]));
    t.irq(2, 0);
    t.read(ICR, 0x80);
    for (k, id) in recorded.iter().enumerate() {
        let k = k as u64 + 1;
        t.write(SQ_DOORBELL, k as u32 + 1);
        t.dma_read(RING + 64 * k, &command(*id));
        let [lo, hi] = id.to_le_bytes();
        t.dma_write(
            CQ + 16 * k + 8,
            &[k as u8 + 1, 0, 0, 0, lo, hi, 1],
            Some(&[0; 7]),
        );
        t.irq(2, 0);
        t.read(ICR, 0x80);
    }
    for policy in policies() {
        let mut vmm = queues_brought_up(&t, policy);
        // The replay guest's structure: the same but for a value where ids sit in commands.
        let mut replay_struct = struct_bytes.clone();
        replay_struct[2..4].copy_from_slice(&0x1234u16.to_le_bytes());
        vmm.put_mem(KERNEL, &replay_struct);
        vmm.put_mem(RING, &config);
        vmm.write(SQ_DOORBELL, 1);
        assert_eq!(vmm.read(ICR), 0x80);
        let events = vmm.mem_bytes(EVENTS, 16);
        assert_eq!(events[..8], fill[..8], "{policy:?}: the fill");
        assert_eq!(events[8..], [0; 8], "{policy:?}: the zeros after it");
    }
}
