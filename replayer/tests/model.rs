//! The config-space model, the ROM, aliases, state save/restore, resets and reconnects.

mod common;

use std::sync::Arc;

use common::*;
use hwrr_device::{Device, SparseMemory};
use hwrr_formats::{region_flags, RegionInfo, RegionKind};
use hwrr_replayer::{MemorySource, Policy, ReplayOptions, Replayer};

fn cfg32(dev: &mut Replayer, offset: u32) -> u32 {
    let mut b = [0u8; 4];
    dev.config_read(offset, &mut b).unwrap();
    u32::from_le_bytes(b)
}

fn cfg16(dev: &mut Replayer, offset: u32) -> u16 {
    let mut b = [0u8; 2];
    dev.config_read(offset, &mut b).unwrap();
    u16::from_le_bytes(b)
}

fn put32(dev: &mut Replayer, offset: u32, v: u32) {
    dev.config_write(offset, &v.to_le_bytes()).unwrap();
}

fn put16(dev: &mut Replayer, offset: u32, v: u16) {
    dev.config_write(offset, &v.to_le_bytes()).unwrap();
}

fn device() -> Replayer {
    let mut t = Trace::new();
    t.write(0, 1);
    Replayer::new(t.source(16), ReplayOptions::default()).unwrap()
}

#[test]
fn bar_sizing_returns_size_masks_with_flag_bits() {
    let mut dev = device();
    assert_eq!(cfg32(&mut dev, 0x10), 0xfebc_0000, "snapshot served");
    put32(&mut dev, 0x10, 0xffff_ffff);
    assert_eq!(cfg32(&mut dev, 0x10), 0xfffe_0000, "128 KiB memory BAR");
    put32(&mut dev, 0x10, 0xfebc_0000);
    assert_eq!(cfg32(&mut dev, 0x10), 0xfebc_0000);
    put32(&mut dev, 0x14, 0xffff_ffff);
    assert_eq!(
        cfg32(&mut dev, 0x14),
        0xffff_ffe1,
        "32-byte I/O BAR keeps its I/O bit"
    );
    put32(&mut dev, 0x18, 0xffff_ffff);
    put32(&mut dev, 0x1c, 0xffff_ffff);
    assert_eq!(
        cfg32(&mut dev, 0x18),
        0xffff_c00c,
        "64-bit prefetchable 16 KiB"
    );
    assert_eq!(
        cfg32(&mut dev, 0x1c),
        0xffff_ffff,
        "upper half of a 64-bit BAR"
    );
    put32(&mut dev, 0x20, 0xffff_ffff);
    assert_eq!(cfg32(&mut dev, 0x20), 0, "unimplemented BAR reads zero");
    put32(&mut dev, 0x30, 0xffff_f800);
    assert_eq!(cfg32(&mut dev, 0x30), 0xffff_8000, "32 KiB ROM, disabled");
    put32(&mut dev, 0x30, 0xffff_ffff);
    assert_eq!(
        cfg32(&mut dev, 0x30),
        0xffff_8001,
        "ROM enable bit is writable"
    );
}

#[test]
fn read_only_bits_survive_and_command_status_follow_pci_rules() {
    let mut dev = device();
    put32(&mut dev, 0x00, 0xffff_ffff);
    assert_eq!(cfg32(&mut dev, 0x00), 0x10d3_8086, "ids are read-only");
    put16(&mut dev, 0x04, 0xffff);
    assert_eq!(
        cfg16(&mut dev, 0x04),
        0x0547,
        "only command bits a guest may set"
    );
    put16(&mut dev, 0x04, 0x0006);
    assert_eq!(cfg16(&mut dev, 0x04), 0x0006);
    put16(&mut dev, 0x06, 0xffff);
    assert_eq!(
        cfg16(&mut dev, 0x06),
        0x0010,
        "status: capability bit stays, W1C sets nothing"
    );
    dev.config_write(0x3c, &[0x0b]).unwrap();
    let mut b = [0u8; 2];
    dev.config_read(0x3c, &mut b).unwrap();
    assert_eq!(
        b,
        [0x0b, 0x01],
        "interrupt line writable, interrupt pin read-only"
    );
    dev.config_write(0x0c, &[0x10]).unwrap();
    assert_eq!(cfg32(&mut dev, 0x0c) & 0xff, 0x10, "cache line size");
    put32(&mut dev, 0x2c, 0);
    assert_eq!(
        cfg32(&mut dev, 0x2c),
        0x0001_8086,
        "subsystem ids read-only"
    );
    assert!(dev.config_read(0xfe, &mut [0u8; 4]).is_err());
    assert!(dev.config_write(0x100, &[1]).is_err());
    assert_eq!(
        dev.describe().config_space[4],
        0x06,
        "describe shows the live config"
    );
}

#[test]
fn status_error_bits_are_write_one_to_clear() {
    let mut h = header();
    h.config_space[0x07] = 0xA0; // detected parity error + received master abort
    let src = Arc::new(MemorySource::from_events(h, Vec::new()));
    let mut dev = Replayer::new(src, ReplayOptions::default()).unwrap();
    assert_eq!(cfg16(&mut dev, 0x06), 0xA010);
    put16(&mut dev, 0x06, 0x2000);
    assert_eq!(cfg16(&mut dev, 0x06), 0x8010, "only the written 1 clears");
    put16(&mut dev, 0x06, 0x0000);
    assert_eq!(cfg16(&mut dev, 0x06), 0x8010);
}

#[test]
fn msi_and_msix_control_follow_pci_rules() {
    let mut dev = device();
    let msi = (MSI_CAP + 2) as u32;
    put16(&mut dev, msi, 0x0071);
    assert_eq!(
        cfg16(&mut dev, msi),
        0x0080 | (2 << 1) | (2 << 4) | 1,
        "enable set, multiple-message enable clamped to capable (4 vectors)"
    );
    put16(&mut dev, msi, 0x0011);
    assert_eq!(cfg16(&mut dev, msi), 0x0080 | (2 << 1) | (1 << 4) | 1);
    put32(&mut dev, (MSI_CAP + 4) as u32, 0xfee0_0003);
    assert_eq!(
        cfg32(&mut dev, (MSI_CAP + 4) as u32),
        0xfee0_0000,
        "address is dword aligned"
    );
    let msix = (MSIX_CAP + 2) as u32;
    put16(&mut dev, msix, 0xffff);
    assert_eq!(
        cfg16(&mut dev, msix),
        0xC000 | (MSIX_VECTORS as u16 - 1),
        "table size read-only"
    );
    put16(&mut dev, msix, 0x8000);
    assert_eq!(cfg16(&mut dev, msix), 0x8000 | (MSIX_VECTORS as u16 - 1));
    put32(&mut dev, (MSIX_CAP + 4) as u32, 0);
    assert_eq!(
        cfg32(&mut dev, (MSIX_CAP + 4) as u32),
        MSIX_TABLE as u32,
        "table location read-only"
    );
    let pm = (PM_CAP + 4) as u32;
    put16(&mut dev, pm, 0x0003);
    assert_eq!(cfg16(&mut dev, pm) & 0x3, 3, "power state writable");
}

#[test]
fn describe_rom_and_regions() {
    let mut dev = device();
    let d = dev.describe();
    assert_eq!(d.identity.vendor_id, 0x8086);
    assert!(d.region(7).is_some() && d.region(6).is_some());
    assert!(
        d.regions.iter().all(|r| r.flags & region_flags::MMAP == 0),
        "every access is trapped"
    );
    let mut b = [0u8; 8];
    dev.region_read(6, 0x100, &mut b).unwrap();
    let rom = header().rom.unwrap();
    assert_eq!(&b[..], &rom[0x100..0x108]);
    assert!(
        dev.region_read(6, 0x8000, &mut b).is_err(),
        "beyond the ROM region"
    );
    assert!(dev.region_read(0, 0x20000 - 2, &mut [0u8; 4]).is_err());
    assert!(dev.region_read(5, 0, &mut [0u8; 4]).is_err());
    assert!(
        dev.region_read(7, 0, &mut [0u8; 4]).is_err(),
        "config space is not a region access"
    );
    let r = dev.report();
    assert_eq!(r.counters.rom_reads, 1);
    assert_eq!(r.counters.accesses, 0, "ROM reads are not sequenced");
}

#[test]
fn an_alias_region_is_served_from_its_targets_stream() {
    // rtl8139-style: MMIO BAR 4 mirrors I/O BAR 1.
    let mut h = header();
    h.regions.push(RegionInfo {
        index: 4,
        kind: RegionKind::Mmio,
        size: 0x20,
        flags: 3,
        alias_of: Some(1),
    });
    let mut t = Trace::new();
    t.read_sized(1, 0x4, 2, 0xbeef);
    t.write_sized(1, 0x8, 1, 0x5);
    let src = Arc::new(MemorySource::from_events(h, t.events));
    let mut dev = Replayer::new(src, ReplayOptions::default()).unwrap();
    let mut b = [0u8; 2];
    dev.region_read(4, 0x4, &mut b).unwrap();
    assert_eq!(u16::from_le_bytes(b), 0xbeef);
    dev.region_write(1, 0x8, &[5]).unwrap();
    let r = dev.report();
    assert!(!r.diverged);
    assert_eq!(r.counters.matched, 2);
    assert!(dev.describe().region(4).unwrap().alias_of.is_none());
}

fn three_step_trace() -> Trace {
    let mut t = Trace::new();
    t.write(0x0, 1);
    t.read(0x8, 10);
    t.irq(2, 0);
    t.read(0x8, 20);
    t.write(0x0, 2);
    t.read(0x8, 30);
    t
}

#[test]
fn state_clone_and_restore() {
    let mut vmm = Vmm::new(three_step_trace(), 2, ReplayOptions::default());
    vmm.write(0x0, 1);
    assert_eq!(vmm.read(0x8), 10);
    let saved = vmm.dev.state();
    assert_eq!(vmm.irqs(0), 1);
    // One fork follows the trace...
    assert_eq!(vmm.read(0x8), 20);
    vmm.write(0x0, 2);
    assert_eq!(vmm.read(0x8), 30);
    assert!(!vmm.dev.report().diverged);
    let finished = vmm.dev.state();
    // ...another diverges, then goes back.
    vmm.dev.restore(saved.clone()).unwrap();
    assert_eq!(vmm.dev.state(), saved);
    vmm.write(0x0, 99);
    assert!(vmm.dev.report().diverged);
    vmm.dev.restore(saved.clone()).unwrap();
    assert!(
        !vmm.dev.report().diverged,
        "divergence is part of the state"
    );
    assert_eq!(vmm.read(0x8), 20);
    vmm.write(0x0, 2);
    assert_eq!(vmm.read(0x8), 30);
    assert_eq!(vmm.dev.report().counters.accesses, 5);
    assert_eq!(vmm.dev.state(), finished);
    assert_eq!(
        vmm.irqs(0),
        0,
        "the interrupt before the fork point is not delivered again"
    );
}

#[test]
fn reset_matches_a_recorded_reset_or_diverges() {
    let mut t = Trace::new();
    t.write(0x0, 1);
    t.reset();
    t.read(0x8, 7);
    let events = t.events.clone();
    let mut vmm = Vmm::new(t, 4096, ReplayOptions::default());
    vmm.dev.config_write(4, &6u16.to_le_bytes()).unwrap();
    vmm.write(0x0, 1);
    vmm.dev.reset().unwrap();
    assert_eq!(
        cfg16(&mut vmm.dev, 4),
        0,
        "reset restores the config snapshot"
    );
    assert_eq!(vmm.read(0x8), 7);
    let r = vmm.dev.report();
    assert!(!r.diverged);
    assert_eq!(r.counters.resets_matched, 1);

    // A reset near the cursor (one access early) is found and the access skipped.
    let mut vmm = Vmm::new(
        Trace {
            events: events.clone(),
        },
        4096,
        ReplayOptions::default(),
    );
    vmm.dev.reset().unwrap();
    assert_eq!(vmm.read(0x8), 7);
    let r = vmm.dev.report();
    assert_eq!((r.counters.resets_matched, r.counters.skipped), (1, 1));

    // A reset the trace does not have.
    let mut t = Trace::new();
    t.write(0x0, 1);
    t.read(0x8, 7);
    for policy in [Policy::Strict, Policy::resync(), Policy::Model] {
        let mut vmm = Vmm::new(
            Trace {
                events: t.events.clone(),
            },
            4096,
            opts(policy),
        );
        // Before the first register access it is the VMM's machine-reset reset: absorbed.
        vmm.dev.reset().unwrap();
        let r = vmm.dev.report();
        assert!(!r.diverged, "{policy:?}");
        assert_eq!(r.counters.power_on_resets, 1);
        vmm.write(0x0, 1);
        vmm.dev.reset().unwrap();
        let r = vmm.dev.report();
        assert!(r.diverged, "{policy:?}");
        let d = r.first_divergence.unwrap();
        assert_eq!(d.actual["kind"], "reset");
        assert_eq!(d.seq, 1);
        assert_eq!(r.stopped_following, policy == Policy::Strict);
        assert_eq!(r.counters.power_on_resets, 1);
    }
}

#[test]
fn a_new_connection_restarts_the_trace() {
    let mut vmm = Vmm::new(three_step_trace(), 2, ReplayOptions::default());
    vmm.write(0x0, 1);
    assert_eq!(vmm.read(0x8), 10);
    vmm.write(0x0, 77); // diverges
    assert!(vmm.dev.report().diverged);
    vmm.dev.disconnect();
    let mem = Arc::new(SparseMemory::new());
    vmm.dev.attach_memory(mem);
    let fds = wire_msix(&mut vmm.dev);
    vmm.write(0x0, 1);
    assert_eq!(vmm.read(0x8), 10);
    assert_eq!(
        hwrr_device::eventfd::drain(&fds[0]).unwrap(),
        1,
        "new eventfds get interrupts"
    );
    let r = vmm.dev.report();
    assert!(!r.diverged);
    assert_eq!(r.counters.accesses, 2);
    assert_eq!(vmm.dev.past_sessions().len(), 1);
    assert!(vmm.dev.past_sessions()[0].diverged);
}

#[test]
fn construction_rejects_a_header_without_config_space() {
    let mut h = header();
    h.config_space.truncate(16);
    let src = Arc::new(MemorySource::from_events(h, Vec::new()));
    assert!(Replayer::new(src, ReplayOptions::default()).is_err());
}

#[test]
fn forks_share_the_trace_and_diverge_independently() {
    let mut vmm = Vmm::new(three_step_trace(), 2, ReplayOptions::default());
    vmm.write(0x0, 1);
    assert_eq!(vmm.read(0x8), 10);
    let mut fork = vmm.dev.fork();
    fork.attach_memory(Arc::new(SparseMemory::new()));
    let fork_fds = wire_msix(&mut fork);
    // The parent diverges; the fork follows the trace.
    vmm.write(0x0, 5);
    assert!(vmm.dev.report().diverged);
    let mut b = [0u8; 4];
    fork.region_read(0, 0x8, &mut b).unwrap();
    assert_eq!(u32::from_le_bytes(b), 20);
    fork.region_write(0, 0x0, &2u32.to_le_bytes()).unwrap();
    fork.region_read(0, 0x8, &mut b).unwrap();
    assert_eq!(u32::from_le_bytes(b), 30);
    let r = fork.report();
    assert!(!r.diverged);
    assert_eq!(
        r.counters.accesses, 5,
        "the fork carries the parent's counters"
    );
    assert!(r.trace_finished);
    // The interrupt recorded before the fork point was delivered once, by the parent.
    assert_eq!(hwrr_device::eventfd::drain(&fork_fds[0]).unwrap(), 0);
    assert_eq!(vmm.irqs(0), 1);
}

#[test]
fn a_trace_file_opens_and_replays_chunk_by_chunk() {
    use hwrr_formats::{TraceWriter, WriterOptions};
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("t.hwrr");
    let mut t = Trace::new();
    for i in 0..1000u32 {
        t.write(0x0, i);
        t.read(0x8, i * 3);
        if i % 100 == 0 {
            t.irq(2, 1);
        }
    }
    let opts = WriterOptions {
        chunk_events: 64,
        ..Default::default()
    };
    let mut w = TraceWriter::create(&path, &header(), opts).unwrap();
    for e in &t.events {
        w.append(e).unwrap();
    }
    w.finish().unwrap();

    let mut dev = hwrr_replayer::open(&path, ReplayOptions::default()).unwrap();
    dev.attach_memory(Arc::new(SparseMemory::new()));
    let fds = wire_msix(&mut dev);
    let mut b = [0u8; 4];
    for i in 0..1000u32 {
        dev.region_write(0, 0x0, &i.to_le_bytes()).unwrap();
        dev.region_read(0, 0x8, &mut b).unwrap();
        assert_eq!(u32::from_le_bytes(b), i * 3);
    }
    assert_eq!(hwrr_device::eventfd::drain(&fds[1]).unwrap(), 10);
    let r = dev.report();
    assert!(!r.diverged && r.trace_finished);
    assert_eq!(r.trace_events, t.events.len() as u64);
    // A divergence report reads its context back from the file.
    dev.region_write(0, 0x0, &1u32.to_le_bytes()).unwrap();
    let d = dev.report().first_divergence.unwrap();
    assert_eq!(d.seq, t.events.len() as u64);
    assert_eq!(d.context.len(), 16);
    assert!(hwrr_replayer::open(&dir.path().join("missing"), ReplayOptions::default()).is_err());
}

#[test]
fn intx_disable_holds_the_interrupt_until_enabled() {
    let mut t = Trace::new();
    t.write(0x0, 1);
    t.irq(0, 0);
    t.read(0x8, 2);
    let mut dev = Replayer::new(t.source(16), ReplayOptions::default()).unwrap();
    dev.attach_memory(Arc::new(SparseMemory::new()));
    let fd = hwrr_device::eventfd::create().unwrap();
    dev.set_irqs(hwrr_device::IrqSetRequest {
        setup: hwrr_formats::IrqSetup {
            index: 0,
            start: 0,
            count: 1,
            action: hwrr_formats::IrqAction::Trigger,
            data: hwrr_formats::IrqData::Eventfd(vec![true]),
        },
        fds: vec![Some(fd.try_clone().unwrap())],
    })
    .unwrap();
    put16(&mut dev, 0x04, 0x0406); // memory, bus master, INTx disabled
    dev.region_write(0, 0x0, &1u32.to_le_bytes()).unwrap();
    assert_eq!(hwrr_device::eventfd::drain(&fd).unwrap(), 0);
    assert_eq!(
        cfg16(&mut dev, 0x06) & 0x8,
        0x8,
        "Interrupt Status shows the held INTx"
    );
    put16(&mut dev, 0x04, 0x0006);
    assert_eq!(
        hwrr_device::eventfd::drain(&fd).unwrap(),
        1,
        "fires when INTx is enabled"
    );
    assert_eq!(cfg16(&mut dev, 0x06) & 0x8, 0);
    let r = dev.report();
    assert_eq!((r.counters.irqs_pending, r.counters.irqs_delivered), (1, 1));
}

/// A replayer whose MSI capability has per-vector masking (or not), with one eventfd per MSI
/// vector.
fn msi_device(per_vector: bool, t: Trace) -> (Replayer, Vec<std::os::fd::OwnedFd>) {
    let mut h = header();
    if per_vector {
        h.config_space[MSI_CAP + 3] |= 1; // message control bit 8
    }
    let source = Arc::new(MemorySource::with_chunk_size(h, t.events, 16));
    let mut dev = Replayer::new(source, ReplayOptions::default()).unwrap();
    dev.attach_memory(Arc::new(SparseMemory::new()));
    let fds: Vec<_> = (0..4)
        .map(|_| hwrr_device::eventfd::create().unwrap())
        .collect();
    dev.set_irqs(hwrr_device::IrqSetRequest {
        setup: hwrr_formats::IrqSetup {
            index: 1,
            start: 0,
            count: 4,
            action: hwrr_formats::IrqAction::Trigger,
            data: hwrr_formats::IrqData::Eventfd(vec![true; 4]),
        },
        fds: fds.iter().map(|f| Some(f.try_clone().unwrap())).collect(),
    })
    .unwrap();
    (dev, fds)
}

#[test]
fn msi_per_vector_mask_holds_the_interrupt_until_unmasked() {
    // 64-bit MSI with per-vector masking: mask bits at cap + 0x10, pending bits at cap + 0x14.
    let (mask, pending) = ((MSI_CAP + 0x10) as u32, (MSI_CAP + 0x14) as u32);
    let drain = |fd: &std::os::fd::OwnedFd| hwrr_device::eventfd::drain(fd).unwrap();
    let trace = || {
        let mut t = Trace::new();
        t.write(0x0, 1);
        t.irq(1, 2);
        t.irq(1, 0);
        t.read(0x8, 2);
        t
    };
    let (mut dev, fds) = msi_device(true, trace());
    put32(&mut dev, mask, 0b100);
    dev.region_write(0, 0x0, &1u32.to_le_bytes()).unwrap();
    assert_eq!(drain(&fds[0]), 1, "an unmasked vector is delivered");
    assert_eq!(drain(&fds[2]), 0, "a masked vector is held");
    assert_eq!(cfg32(&mut dev, pending), 0b100, "its pending bit is set");
    put32(&mut dev, pending, 0);
    assert_eq!(
        cfg32(&mut dev, pending),
        0b100,
        "pending bits are read-only"
    );
    put32(&mut dev, mask, 0b001);
    assert_eq!(drain(&fds[2]), 1, "sent when unmasked");
    assert_eq!(cfg32(&mut dev, pending), 0);
    assert_eq!(cfg32(&mut dev, mask), 0b001);
    let r = dev.report();
    assert_eq!((r.counters.irqs_pending, r.counters.irqs_delivered), (1, 2));

    // Without per-vector masking the same dword is not a mask (it is reserved): the vector fires.
    let (mut dev, fds) = msi_device(false, trace());
    put32(&mut dev, mask, 0b100);
    dev.region_write(0, 0x0, &1u32.to_le_bytes()).unwrap();
    assert_eq!(drain(&fds[2]), 1);
    assert_eq!(dev.report().counters.irqs_pending, 0);
}
