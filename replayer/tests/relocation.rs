//! Relocating DMA addresses written as two 32-bit halves, without a register map: both halves
//! changing in either order, pairs at 8- and 4-aligned offsets, only the high half changing, and
//! values that merely look like addresses.

mod common;

use common::*;
use hwrr_replayer::{check, Policy};

const ICR: u64 = 0xC0;
const STATUS: u64 = 0x8;

/// Recorded buffer the device writes by DMA (inside the test VMM's memory at 0x10_0000).
const BUF: u64 = 0x10_4000;
/// Where the replay guest puts it: above 4 GiB, so both halves of the address change.
const HIGH: u64 = 0x4_2000_4000;

/// A VMM whose guest memory also maps 1 MiB at `HIGH`'s megabyte.
fn vmm_with_high_memory(t: Trace, chunk: usize, policy: Policy) -> Vmm {
    let vmm = Vmm::new(t, chunk, opts(policy));
    vmm.mem
        .add_local(HIGH & !0xF_FFFF, 0x10_0000, 3)
        .expect("map high memory");
    vmm
}

/// A trace that programs `BUF` into the pair (`lo`, `lo + 4`) in the given order, after which the
/// device writes the buffer and raises vector 0; the driver then reads ICR.
fn pair_trace(lo: u64, hi_first: bool) -> Trace {
    pair_trace_after(Trace::new(), lo, hi_first)
}

/// `pair_trace` whose recording first mapped `BUF`'s page for DMA (a small mapping is evidence of
/// an address however far away the DMA is).
fn mapped_pair_trace(lo: u64, hi_first: bool) -> Trace {
    let mut t = Trace::new();
    t.dma_map(BUF & !0xFFF, 0x1000);
    pair_trace_after(t, lo, hi_first)
}

fn pair_trace_after(mut t: Trace, lo: u64, hi_first: bool) -> Trace {
    t.write(0x0, 1);
    if hi_first {
        t.write(lo + 4, (BUF >> 32) as u32);
        t.write(lo, BUF as u32);
    } else {
        t.write(lo, BUF as u32);
        t.write(lo + 4, (BUF >> 32) as u32);
    }
    t.write(0x10, 1); // start
    t.dma_write(BUF, &[0x5A; 32], None);
    t.irq(2, 0);
    t.read(ICR, 1);
    t
}

/// The driver of `pair_trace` with its buffer at `addr`.
fn pair_driver(vmm: &mut Vmm, lo: u64, hi_first: bool, addr: u64) {
    vmm.write(0x0, 1);
    if hi_first {
        vmm.write(lo + 4, (addr >> 32) as u32);
        vmm.write(lo, addr as u32);
    } else {
        vmm.write(lo, addr as u32);
        vmm.write(lo + 4, (addr >> 32) as u32);
    }
    vmm.write(0x10, 1);
    assert_eq!(vmm.irqs(0), 1, "the interrupt after the start write");
    assert_eq!(vmm.read(ICR), 1);
}

/// Asserts a clean strict replay whose only relocation maps `BUF`'s page to `addr`'s page.
fn assert_relocated_once(vmm: &Vmm, addr: u64, what: &str) {
    let r = vmm.dev.report();
    assert!(!r.diverged, "{what}: {:?}", r.first_divergence);
    assert!(check(&r, 0), "{what}");
    assert_eq!(
        vmm.mem_bytes(addr, 32),
        vec![0x5A; 32],
        "{what}: DMA landed"
    );
    assert_eq!(
        vmm.mem_bytes(BUF, 32),
        vec![0; 32],
        "{what}: old buffer untouched"
    );
    assert_eq!(
        r.relocations.len(),
        1,
        "{what}: the half-address guess was replaced, not kept: {:?}",
        r.relocations
    );
    assert_eq!(r.relocations[0].recorded, BUF);
    assert_eq!(r.relocations[0].replay, addr);
}

#[test]
fn both_halves_changing_relocate_in_either_order_at_8_and_4_aligned_offsets() {
    // 0x2800: an 8-aligned pair (lo at 8k); 0x2c: a 4-aligned pair (lo at 8k+4, hi at 8k+8).
    // Chunks of 1 and 3 events put the two halves in different chunks (the mapping is the
    // evidence there: the DMA is chunks away).
    for chunk in [1, 3, 4096] {
        for lo in [0x2800u64, 0x2c] {
            for hi_first in [false, true] {
                let what = format!("pair at {lo:#x}, hi first: {hi_first}, chunk {chunk}");
                let t = if chunk == 4096 {
                    pair_trace(lo, hi_first)
                } else {
                    mapped_pair_trace(lo, hi_first)
                };
                let mut vmm = vmm_with_high_memory(t, chunk, Policy::Strict);
                pair_driver(&mut vmm, lo, hi_first, HIGH);
                assert_relocated_once(&vmm, HIGH, &what);
            }
        }
    }
}

#[test]
fn a_4_aligned_pair_after_another_pair_is_not_read_as_its_high_half() {
    // The test device's layout: DMA_SRC at 0x24/0x28, DMA_DST at 0x2c/0x30. 0x2c is next to both
    // 0x28 and 0x30; only the pair (0x2c, 0x30) makes a recorded DMA address.
    let mut t = Trace::new();
    t.write(0x24, 0);
    t.write(0x28, 0);
    t.write(0x2c, BUF as u32);
    t.write(0x30, 0);
    t.write(0x3c, 1);
    t.dma_write(BUF, &[0x5A; 32], None);
    t.irq(2, 0);
    t.read(ICR, 1);
    let mut vmm = vmm_with_high_memory(t, 4096, Policy::Strict);
    vmm.write(0x24, 0);
    vmm.write(0x28, 0);
    vmm.write(0x2c, HIGH as u32);
    vmm.write(0x30, (HIGH >> 32) as u32);
    vmm.write(0x3c, 1);
    assert_eq!(vmm.read(ICR), 1);
    assert_relocated_once(&vmm, HIGH, "DMA_DST after DMA_SRC");
}

#[test]
fn only_the_high_half_changing_relocates() {
    // Same low 32 bits, another 4 GiB window: the low half matches as recorded, the high half
    // alone carries the change.
    let addr = 0x4_0000_0000 | BUF;
    for (lo, chunk) in [(0x2800u64, 4096), (0x2c, 4096), (0x2800, 3), (0x2c, 1)] {
        for hi_first in [false, true] {
            let what = format!("pair at {lo:#x}, hi first: {hi_first}, chunk {chunk}");
            let t = if chunk == 4096 {
                pair_trace(lo, hi_first)
            } else {
                mapped_pair_trace(lo, hi_first)
            };
            let mut vmm = Vmm::new(t, chunk, opts(Policy::Strict));
            vmm.mem
                .add_local(addr & !0xF_FFFF, 0x10_0000, 3)
                .expect("map");
            pair_driver(&mut vmm, lo, hi_first, addr);
            assert_relocated_once(&vmm, addr, &what);
        }
    }
}

#[test]
fn a_stale_high_half_guess_is_revised_by_an_unchanged_high_half() {
    // The driver first programs a buffer above 4 GiB, then one below: when the second low half
    // arrives the model still holds the first high half (4), so the guess is 0x4_xxxx_xxxx; the
    // unchanged high half (0, as recorded) must correct it.
    let second = 0x10_8000u64;
    let second_replay = 0x80_8000u64;
    let mut t = pair_trace(0x2800, false);
    t.write(0x2800, second as u32);
    t.write(0x2804, 0);
    t.write(0x10, 1);
    t.dma_write(second, &[0x6B; 16], None);
    t.read(STATUS, 7);
    let mut vmm = vmm_with_high_memory(t, 4096, Policy::Strict);
    pair_driver(&mut vmm, 0x2800, false, HIGH);
    vmm.write(0x2800, second_replay as u32);
    vmm.write(0x2804, 0);
    vmm.write(0x10, 1);
    assert_eq!(vmm.read(STATUS), 7);
    let r = vmm.dev.report();
    assert!(!r.diverged, "{:?}", r.first_divergence);
    assert_eq!(vmm.mem_bytes(second_replay, 16), vec![0x6B; 16]);
    let relocations = vmm.dev.state_ref().relocations();
    assert_eq!(relocations.translate(second), second_replay);
    assert_eq!(relocations.translate(BUF), HIGH);
    assert!(
        relocations
            .ranges()
            .iter()
            .all(|r| r.replay >> 32 == 0 || r.recorded == BUF),
        "no guess with the stale high half is left: {:?}",
        relocations.ranges()
    );
}

#[test]
fn a_value_that_only_looks_like_an_address_stays_a_divergence_under_strict() {
    // 0x40/0x44 hold a value in the range of the test VMM's memory, but the recording neither
    // mapped nor used its page by DMA (the one mapping is elsewhere): not an address.
    let mut t = Trace::new();
    t.dma_map(0x20_0000, 0x1000);
    t.write(0x40, 0x10_2000);
    t.write(0x44, 0);
    t.read(STATUS, 1);
    for (lo, hi) in [(0x80_2000u32, 0u32), (0x10_2000, 4)] {
        let mut t2 = Trace::new();
        t2.events = t.events.clone();
        let mut vmm = vmm_with_high_memory(t2, 4096, Policy::Strict);
        vmm.write(0x40, lo);
        vmm.write(0x44, hi);
        let r = vmm.dev.report();
        assert!(r.diverged, "{lo:#x}/{hi:#x} is not a relocation");
        assert!(r.stopped_following);
        assert!(r.relocations.is_empty(), "{:?}", r.relocations);
        let d = r.first_divergence.expect("divergence");
        assert_eq!(d.seq, if hi == 0 { 1 } else { 2 });
        assert_eq!(d.reason, "the trace expects another written value");
    }
}

#[test]
fn a_half_guess_whose_whole_address_is_not_guest_memory_is_dropped() {
    // The recording mapped the buffer (no DMA to it yet), so the high half written first is
    // accepted as a guess; the whole guest address then turns out to be no guest memory: the
    // second half diverges and the guess does not stay in the map.
    for lo in [0x2800u64, 0x2c] {
        let mut t = Trace::new();
        t.dma_map(BUF & !0xFFF, 0x1000);
        t.write(lo + 4, 0);
        t.write(lo, BUF as u32);
        t.read(STATUS, 1);
        let mut vmm = vmm_with_high_memory(t, 4096, Policy::Strict);
        vmm.write(lo + 4, 7); // 0x7_xxxx_xxxx: nothing mapped there
        assert!(!vmm.dev.report().diverged, "the high half alone is a guess");
        vmm.write(lo, 0x3000_0000);
        let r = vmm.dev.report();
        assert!(r.diverged, "pair at {lo:#x}");
        assert_eq!(r.first_divergence.expect("divergence").seq, 2);
        assert!(r.relocations.is_empty(), "{:?}", r.relocations);
    }
}

#[test]
fn a_guess_whose_partner_was_skipped_does_not_pair_with_a_later_write() {
    // Under resync the guest programs only the low half of the first pair (the recorded high
    // half is skipped), then a second pair with the recorded low half and another high half: that
    // high half belongs to the second pair, not to the first guess.
    let other = 0x10_8000u64;
    let other_replay = 0x4_0000_0000 | other;
    let mut t = Trace::new();
    t.dma_map(BUF & !0xFFF, 0x1000);
    t.dma_map(other & !0xFFF, 0x1000);
    t.write(0x2800, BUF as u32);
    t.write(0x2804, 0);
    t.write(0x0, 1);
    t.write(0x2800, other as u32);
    t.write(0x2804, 0);
    t.read(STATUS, 3);
    let mut vmm = vmm_with_high_memory(t, 4096, Policy::resync());
    vmm.mem
        .add_local(other_replay & !0xF_FFFF, 0x10_0000, 3)
        .expect("map");
    vmm.write(0x2800, HIGH as u32); // the high half is guessed from the model: 0
    vmm.write(0x0, 1); // the recorded high half is skipped
    vmm.write(0x2800, other as u32);
    vmm.write(0x2804, (other_replay >> 32) as u32);
    assert_eq!(vmm.read(STATUS), 3);
    let relocations = vmm.dev.state_ref().relocations();
    assert_eq!(relocations.translate(other), other_replay);
    assert_eq!(
        relocations.translate(BUF),
        HIGH & 0xFFFF_FFFF,
        "the first guess is not completed by the second pair: {:?}",
        relocations.ranges()
    );
    assert_eq!(vmm.dev.report().counters.skipped, 1);
}

#[test]
fn resync_finds_a_relocated_half_ahead() {
    // The pair is programmed twice; the second time the guest leaves out the write before it, so
    // resync must recognise the relocated low half ahead of the cursor.
    let mut t = Trace::new();
    t.write(0x2800, BUF as u32);
    t.write(0x2804, 0);
    t.dma_write(BUF, &[1; 8], None);
    t.write(0x0, 1);
    t.write(0x2800, BUF as u32);
    t.write(0x2804, 0);
    t.read(STATUS, 3);
    let mut vmm = vmm_with_high_memory(t, 4096, Policy::resync());
    vmm.write(0x2800, HIGH as u32);
    vmm.write(0x2804, (HIGH >> 32) as u32);
    vmm.write(0x2800, HIGH as u32);
    vmm.write(0x2804, (HIGH >> 32) as u32);
    assert_eq!(vmm.read(STATUS), 3);
    let r = vmm.dev.report();
    assert_eq!((r.counters.skipped, r.counters.inserted), (1, 0));
    assert_eq!(vmm.mem_bytes(HIGH, 8), vec![1; 8]);
}
