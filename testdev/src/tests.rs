//! Unit tests of the device against its register map, and of the scripted driver against the device.

use std::os::fd::OwnedFd;

use hwrr_device::{eventfd, Device, DmaMapping, GuestMemory, IrqSetRequest};
use hwrr_formats::{IrqAction, IrqData, IrqSetup};

use super::*;
use crate::driver::{self, DriverOptions, IrqMode};

const IOVA: u64 = 0x4000_0000;

fn enabled_device() -> (TestDevice, Arc<hwrr_device::SparseMemory>) {
    let mut dev = TestDevice::new();
    let mem = driver::setup_guest_memory(&mut dev, IOVA, 0x10000).unwrap();
    let cmd = command::IO | command::MEMORY | command::BUS_MASTER;
    dev.config_write(4, &cmd.to_le_bytes()).unwrap();
    (dev, mem)
}

fn rd(dev: &mut TestDevice, region: u32, off: u64) -> u32 {
    let mut b = [0u8; 4];
    dev.region_read(region, off, &mut b).unwrap();
    u32::from_le_bytes(b)
}

fn wr(dev: &mut TestDevice, region: u32, off: u64, v: u32) {
    dev.region_write(region, off, &v.to_le_bytes()).unwrap();
}

fn wire(dev: &mut TestDevice, index: u32, n: u32) -> Vec<OwnedFd> {
    let fds: Vec<OwnedFd> = (0..n).map(|_| eventfd::create().unwrap()).collect();
    dev.set_irqs(IrqSetRequest {
        setup: IrqSetup {
            index,
            start: 0,
            count: n,
            action: IrqAction::Trigger,
            data: IrqData::Eventfd(vec![true; n as usize]),
        },
        fds: fds.iter().map(|f| Some(f.try_clone().unwrap())).collect(),
    })
    .unwrap();
    fds
}

/// Starts a DMA command and polls STATUS until it completes; returns (polls, status).
fn dma(dev: &mut TestDevice, cmd: u32, src: u64, dst: u64, len: u32) -> (u32, u32) {
    wr(dev, 0, bar0::DMA_SRC_LO, src as u32);
    wr(dev, 0, bar0::DMA_SRC_HI, (src >> 32) as u32);
    wr(dev, 0, bar0::DMA_DST_LO, dst as u32);
    wr(dev, 0, bar0::DMA_DST_HI, (dst >> 32) as u32);
    wr(dev, 0, bar0::DMA_LEN, len);
    wr(dev, 0, bar0::DMA_CMD, cmd);
    for polls in 1..100 {
        let s = rd(dev, 0, bar0::STATUS);
        if s & status::BUSY == 0 {
            return (polls, s);
        }
    }
    panic!("DMA never finished");
}

#[test]
fn describe_matches_config_space() {
    let dev = TestDevice::new();
    let d = dev.describe();
    assert_eq!(d.identity.vendor_id, VENDOR_ID);
    assert_eq!(d.identity.device_id, DEVICE_ID);
    assert_eq!(d.identity.class_code, CLASS_CODE);
    assert_eq!(d.config_space.len(), CONFIG_SIZE);
    assert_eq!(d.region(0).map(|r| r.size), Some(BAR0_SIZE));
    assert_eq!(d.region(2).map(|r| r.kind), Some(RegionKind::Pio));
    assert_eq!(d.irq(irq_index::MSIX).map(|i| i.count), Some(MSIX_VECTORS));
    assert_eq!(d.rom.as_ref().map(Vec::len), Some(ROM_SIZE as usize));
}

#[test]
fn bars_do_not_decode_until_enabled_and_rom_is_read_only() {
    let mut dev = TestDevice::new();
    assert_eq!(rd(&mut dev, 0, bar0::ID), u32::MAX);
    wr(&mut dev, 0, bar0::SCRATCH, 5);
    dev.config_write(4, &command::MEMORY.to_le_bytes()).unwrap();
    assert_eq!(rd(&mut dev, 0, bar0::ID), ID_MAGIC);
    assert_eq!(
        rd(&mut dev, 0, bar0::SCRATCH),
        0,
        "write while disabled was dropped"
    );
    assert_eq!(
        rd(&mut dev, 2, bar2::ID),
        u32::MAX,
        "I/O decoding is separate"
    );
    let mut b = [0u8; 2];
    dev.region_read(region_index::ROM, 0, &mut b).unwrap();
    assert_eq!(b, [0x55, 0xaa]);
    assert!(dev.region_write(region_index::ROM, 0, &[0]).is_err());
    assert!(dev.region_read(0, BAR0_SIZE - 2, &mut [0; 4]).is_err());
    assert!(dev.region_read(1, 0, &mut [0; 4]).is_err());
    assert!(dev
        .region_read(region_index::CONFIG, 0, &mut [0; 4])
        .is_err());
    assert!(dev.config_read(254, &mut [0; 4]).is_err());
    assert!(dev.region_read(0, u64::MAX, &mut [0; 4]).is_err());
}

#[test]
fn partial_and_wide_register_accesses_merge_like_hardware() {
    let (mut dev, _mem) = enabled_device();
    wr(&mut dev, 0, bar0::SCRATCH, 0x1122_3344);
    dev.region_write(0, bar0::SCRATCH + 1, &[0xaa]).unwrap();
    assert_eq!(rd(&mut dev, 0, bar0::SCRATCH), 0x1122_aa44);
    let mut b = [0u8; 8];
    dev.region_read(0, bar0::ID, &mut b).unwrap();
    assert_eq!(&b[..4], b"HWRR");
    assert_eq!(u32::from_le_bytes([b[4], b[5], b[6], b[7]]), VERSION);
    // Read-only registers ignore writes.
    wr(&mut dev, 0, bar0::ID, 0);
    assert_eq!(rd(&mut dev, 0, bar0::ID), ID_MAGIC);
    // The I/O index/data pair reaches BAR0.
    wr(&mut dev, 2, bar2::INDEX, bar0::SCRATCH as u32);
    wr(&mut dev, 2, bar2::DATA, 0xfeed_beef);
    assert_eq!(rd(&mut dev, 0, bar0::SCRATCH), 0xfeed_beef);
    assert_eq!(rd(&mut dev, 2, bar2::DATA), 0xfeed_beef);
    // The buffer window takes any width.
    dev.region_write(0, bar0::BUFFER + 3, &[1, 2, 3]).unwrap();
    let mut w = [0u8; 5];
    dev.region_read(0, bar0::BUFFER + 2, &mut w).unwrap();
    assert_eq!(w, [0, 1, 2, 3, 0]);
}

#[test]
fn busy_stays_set_for_a_polling_run_and_dma_moves_bytes() {
    let (mut dev, mem) = enabled_device();
    for (i, b) in (0u32..16).enumerate() {
        wr(&mut dev, 0, bar0::BUFFER + 4 * i as u64, b * 0x0101_0101);
    }
    wr(&mut dev, 0, bar0::DMA_LEN, 64);
    wr(&mut dev, 0, bar0::DMA_DST_LO, IOVA as u32);
    wr(&mut dev, 0, bar0::DMA_CMD, dma_cmd::DEVICE_TO_GUEST);
    let mut seen = Vec::new();
    for _ in 0..BUSY_READS + 1 {
        seen.push(rd(&mut dev, 0, bar0::STATUS) & status::BUSY);
    }
    assert_eq!(
        seen,
        [1, 1, 0, 0],
        "BUSY for BUSY_READS-1 reads, clear on the last"
    );
    let mut got = [0u8; 64];
    mem.read(IOVA, &mut got).unwrap();
    assert_eq!(got[4..8], [1, 1, 1, 1]);
    assert_eq!(got[60..64], [15, 15, 15, 15]);
    assert_eq!(rd(&mut dev, 0, bar0::IRQ_CAUSE), cause::DMA_DONE);
    assert_eq!(dev.stats().dma_bytes_written, 64);

    mem.write(IOVA + 0x100, &[9; 32]).unwrap();
    let (polls, s) = dma(&mut dev, dma_cmd::GUEST_TO_DEVICE, IOVA + 0x100, 0x7e0, 32);
    assert_eq!((polls, s & status::DMA_ERROR), (BUSY_READS, 0));
    assert_eq!(rd(&mut dev, 0, bar0::BUFFER + 0x7fc), 0x0909_0909);

    wr(&mut dev, 0, bar0::DMA_PATTERN, 0x0403_0201);
    let (_, s) = dma(&mut dev, dma_cmd::FILL, 0, IOVA + 0x200, 6);
    assert_eq!(s & status::DMA_ERROR, 0);
    let mut f = [0u8; 7];
    mem.read(IOVA + 0x200, &mut f).unwrap();
    assert_eq!(f, [1, 2, 3, 4, 1, 2, 0]);
}

#[test]
fn dma_errors_set_status_and_never_touch_memory() {
    let (mut dev, mem) = enabled_device();
    // Beyond the device buffer.
    let (_, s) = dma(&mut dev, dma_cmd::GUEST_TO_DEVICE, IOVA, 0x7f0, 32);
    assert_ne!(s & status::DMA_ERROR, 0);
    // An IOVA the IOMMU does not map.
    let (_, s) = dma(&mut dev, dma_cmd::FILL, 0, IOVA + 0x10000 - 4, 8);
    assert_ne!(s & status::DMA_ERROR, 0);
    // An unknown command.
    let (_, s) = dma(&mut dev, 77, 0, IOVA, 4);
    assert_ne!(s & status::DMA_ERROR, 0);
    // Bus mastering off.
    dev.config_write(4, &command::MEMORY.to_le_bytes()).unwrap();
    wr(&mut dev, 0, bar0::DMA_PATTERN, 0xffff_ffff);
    let (_, s) = dma(&mut dev, dma_cmd::FILL, 0, IOVA, 4);
    assert_ne!(s & status::DMA_ERROR, 0);
    let mut b = [0u8; 4];
    mem.read(IOVA, &mut b).unwrap();
    assert_eq!(b, [0; 4]);
    // After unmapping, the same IOVA faults even with bus mastering back on.
    dev.config_write(4, &(command::MEMORY | command::BUS_MASTER).to_le_bytes())
        .unwrap();
    dev.dma_unmap(DmaMapping {
        iova: 0,
        len: 0,
        flags: hwrr_device::dma_flags::UNMAP_ALL,
    })
    .unwrap();
    let (_, s) = dma(&mut dev, dma_cmd::FILL, 0, IOVA, 4);
    assert_ne!(s & status::DMA_ERROR, 0);
    assert_eq!(dev.stats().dma_faults, 3);
    assert_eq!(dev.stats().dma_bytes_written, 0);
}

#[test]
fn a_command_while_busy_is_ignored() {
    let (mut dev, mem) = enabled_device();
    wr(&mut dev, 0, bar0::DMA_PATTERN, 0x1111_1111);
    wr(&mut dev, 0, bar0::DMA_DST_LO, IOVA as u32);
    wr(&mut dev, 0, bar0::DMA_LEN, 4);
    wr(&mut dev, 0, bar0::DMA_CMD, dma_cmd::FILL);
    wr(&mut dev, 0, bar0::DMA_CMD, dma_cmd::DEVICE_TO_GUEST);
    for _ in 0..BUSY_READS {
        rd(&mut dev, 0, bar0::STATUS);
    }
    let mut b = [0u8; 4];
    mem.read(IOVA, &mut b).unwrap();
    assert_eq!(
        b, [0x11; 4],
        "the first command ran, the second was dropped"
    );
    assert_eq!(rd(&mut dev, 0, bar0::STATUS) & status::BUSY, 0);
}

#[test]
fn msix_vectors_follow_causes_masks_and_pba() {
    let (mut dev, _mem) = enabled_device();
    let fds = wire(&mut dev, irq_index::MSIX, MSIX_VECTORS);
    wr(&mut dev, 0, bar0::IRQ_TRIGGER, cause::SOFT);
    assert_eq!(
        eventfd::drain(&fds[3]).unwrap(),
        0,
        "cause not enabled in IRQ_MASK"
    );
    wr(&mut dev, 0, bar0::IRQ_MASK, cause::ALL);
    assert_eq!(
        eventfd::drain(&fds[3]).unwrap(),
        1,
        "enabling a latched cause fires it"
    );
    wr(&mut dev, 0, bar0::IRQ_ACK, cause::SOFT);
    assert_eq!(rd(&mut dev, 0, bar0::IRQ_CAUSE), 0);

    // Per-vector mask in the table: the message waits in the PBA.
    wr(&mut dev, 4, MSIX_TABLE_OFFSET + 16 + 12, 1);
    wr(&mut dev, 0, bar0::IRQ_TRIGGER, cause::TX_DONE);
    assert_eq!(eventfd::drain(&fds[1]).unwrap(), 0);
    assert_eq!(rd(&mut dev, 4, MSIX_PBA_OFFSET), 1 << 1);
    wr(&mut dev, 4, MSIX_TABLE_OFFSET + 16 + 12, 0);
    assert_eq!(eventfd::drain(&fds[1]).unwrap(), 1);
    assert_eq!(rd(&mut dev, 4, MSIX_PBA_OFFSET), 0);

    // Function mask in config space.
    let ctl = (MSIX_ENABLE | MSIX_FUNCTION_MASK).to_le_bytes();
    dev.config_write(MSIX_CAP + 2, &ctl).unwrap();
    wr(&mut dev, 0, bar0::IRQ_TRIGGER, cause::RX);
    assert_eq!(eventfd::drain(&fds[2]).unwrap(), 0);
    dev.config_write(MSIX_CAP + 2, &MSIX_ENABLE.to_le_bytes())
        .unwrap();
    assert_eq!(eventfd::drain(&fds[2]).unwrap(), 1);
    assert_eq!(dev.stats().interrupts_raised, 3);
}

#[test]
fn msi_uses_one_vector_and_needs_bus_mastering() {
    let (mut dev, _mem) = enabled_device();
    let fds = wire(&mut dev, irq_index::MSI, 1);
    wr(&mut dev, 0, bar0::IRQ_MASK, cause::ALL);
    wr(&mut dev, 0, bar0::IRQ_TRIGGER, cause::RX | cause::SOFT);
    assert_eq!(eventfd::drain(&fds[0]).unwrap(), 1);
    dev.config_write(4, &command::MEMORY.to_le_bytes()).unwrap();
    wr(&mut dev, 0, bar0::IRQ_TRIGGER, cause::DMA_DONE);
    assert_eq!(eventfd::drain(&fds[0]).unwrap(), 0);
    let mut st = [0u8; 2];
    dev.config_read(6, &mut st).unwrap();
    assert_eq!(u16::from_le_bytes(st) & config::STATUS_INTERRUPT, 0);
}

#[test]
fn intx_is_a_level_with_status_bit_and_disable() {
    let (mut dev, _mem) = enabled_device();
    let fds = wire(&mut dev, irq_index::INTX, 1);
    let status_bit = |dev: &mut TestDevice| {
        let mut st = [0u8; 2];
        dev.config_read(6, &mut st).unwrap();
        u16::from_le_bytes(st) & config::STATUS_INTERRUPT != 0
    };
    wr(&mut dev, 0, bar0::IRQ_MASK, cause::SOFT);
    wr(&mut dev, 0, bar0::IRQ_TRIGGER, cause::SOFT);
    assert_eq!(eventfd::drain(&fds[0]).unwrap(), 1);
    assert!(status_bit(&mut dev));
    wr(&mut dev, 0, bar0::IRQ_ACK, cause::SOFT);
    assert!(!status_bit(&mut dev));
    let cmd = command::MEMORY | command::BUS_MASTER | command::INTX_DISABLE;
    dev.config_write(4, &cmd.to_le_bytes()).unwrap();
    // The index auto-masked on the first interrupt; unmask it so only INTX_DISABLE holds it back.
    dev.set_irqs(IrqSetRequest {
        setup: IrqSetup {
            index: irq_index::INTX,
            start: 0,
            count: 1,
            action: IrqAction::Unmask,
            data: IrqData::None,
        },
        fds: vec![],
    })
    .unwrap();
    wr(&mut dev, 0, bar0::IRQ_TRIGGER, cause::SOFT);
    assert_eq!(eventfd::drain(&fds[0]).unwrap(), 0);
    assert!(!status_bit(&mut dev));
    dev.config_write(4, &(command::MEMORY).to_le_bytes())
        .unwrap();
    assert!(
        status_bit(&mut dev),
        "re-enabling the pin with a pending cause asserts it"
    );
}

#[test]
fn rings_drop_without_rx_buffers_and_flag_oversized_frames() {
    let (mut dev, mem) = enabled_device();
    let desc_at = |ring: u64, i: u64| IOVA + ring + i * desc::SIZE;
    let mut d = [0u8; 16];
    d[..8].copy_from_slice(&(IOVA + 0x8000).to_le_bytes());
    d[8..10].copy_from_slice(&100u16.to_le_bytes());
    mem.write(desc_at(0, 0), &d).unwrap();
    mem.write(desc_at(0, 1), &d).unwrap();
    // RX buffer of 50 bytes: too small for the 100-byte frame.
    d[8..10].copy_from_slice(&50u16.to_le_bytes());
    mem.write(desc_at(0x1000, 0), &d).unwrap();
    wr(&mut dev, 0, bar0::TX_RING_LO, IOVA as u32);
    wr(&mut dev, 0, bar0::TX_RING_SIZE, 4);
    wr(&mut dev, 0, bar0::RX_RING_LO, (IOVA + 0x1000) as u32);
    wr(&mut dev, 0, bar0::RX_RING_SIZE, 4);
    wr(&mut dev, 0, bar0::RX_TAIL, 1);
    wr(&mut dev, 0, bar0::TX_TAIL, 2);
    assert_eq!(
        rd(&mut dev, 0, bar0::TX_HEAD),
        0,
        "rings disabled: nothing moves"
    );
    wr(&mut dev, 0, bar0::CONTROL, control::RING_ENABLE);
    assert_eq!(rd(&mut dev, 0, bar0::TX_HEAD), 2);
    assert_eq!(rd(&mut dev, 0, bar0::TX_COUNT), 2);
    assert_eq!(rd(&mut dev, 0, bar0::RX_COUNT), 0);
    assert_eq!(
        rd(&mut dev, 0, bar0::RX_DROPPED),
        2,
        "one too big, one with no buffer"
    );
    mem.read(desc_at(0x1000, 0), &mut d).unwrap();
    assert_eq!(
        u16::from_le_bytes([d[10], d[11]]),
        desc::FLAG_DONE | desc::FLAG_ERROR
    );
    assert_eq!(rd(&mut dev, 0, bar0::IRQ_CAUSE), cause::TX_DONE | cause::RX);
    // A non-power-of-two size disables the ring.
    wr(&mut dev, 0, bar0::TX_RING_SIZE, 3);
    assert_eq!(rd(&mut dev, 0, bar0::TX_RING_SIZE), 0);
}

#[test]
fn ring_descriptor_outside_the_iommu_sets_ring_error() {
    let (mut dev, _mem) = enabled_device();
    wr(&mut dev, 0, bar0::TX_RING_LO, 0x10);
    wr(&mut dev, 0, bar0::TX_RING_SIZE, 2);
    wr(&mut dev, 0, bar0::CONTROL, control::RING_ENABLE);
    wr(&mut dev, 0, bar0::TX_TAIL, 1);
    assert_ne!(rd(&mut dev, 0, bar0::STATUS) & status::RING_ERROR, 0);
    assert_eq!(rd(&mut dev, 0, bar0::TX_HEAD), 0);
}

#[test]
fn function_reset_returns_registers_to_power_on_but_keeps_config() {
    let (mut dev, _mem) = enabled_device();
    wr(&mut dev, 0, bar0::SCRATCH, 42);
    wr(&mut dev, 0, bar0::IRQ_MASK, cause::ALL);
    wr(&mut dev, 4, 12, 1);
    dev.reset().unwrap();
    assert_eq!(rd(&mut dev, 0, bar0::SCRATCH), 0);
    assert_eq!(rd(&mut dev, 0, bar0::IRQ_MASK), 0);
    assert_eq!(rd(&mut dev, 4, 12), 0);
    assert_eq!(rd(&mut dev, 0, bar0::STATUS), status::READY);
    // Soft reset through CONTROL is a polling run ending in READY.
    wr(&mut dev, 0, bar0::CONTROL, control::RESET);
    assert_eq!(rd(&mut dev, 0, bar0::STATUS), status::BUSY);
    assert_eq!(rd(&mut dev, 0, bar0::STATUS), status::BUSY);
    assert_eq!(rd(&mut dev, 0, bar0::STATUS), status::READY);
}

#[test]
fn overlapping_dma_maps_are_refused() {
    let mut dev = TestDevice::new();
    let m = |iova, len| hwrr_device::DmaRegion {
        mapping: DmaMapping {
            iova,
            len,
            flags: 3,
        },
        memory: None,
    };
    dev.dma_map(m(0x1000, 0x1000)).unwrap();
    assert!(dev.dma_map(m(0x1800, 0x1000)).is_err());
    assert!(dev.dma_map(m(0x5000, 0)).is_err());
    assert!(dev.dma_map(m(u64::MAX, 2)).is_err());
    dev.dma_map(m(0x2000, 0x1000)).unwrap();
}

// ------------------------------------------------------------------------ driver

fn run_driver(mode: IrqMode, iova_base: u64) -> driver::Observations {
    let mut dev = TestDevice::new();
    let mem = driver::setup_guest_memory(&mut dev, iova_base, driver::DMA_AREA_SIZE).unwrap();
    let opts = DriverOptions {
        iova_base,
        irq_mode: mode,
        ..DriverOptions::default()
    };
    driver::run(&mut dev, &mem, opts).unwrap()
}

#[test]
fn driver_observes_the_device_it_expects() {
    let o = run_driver(IrqMode::Msix, 0x1000_0000);
    assert_eq!((o.vendor_id, o.device_id), (VENDOR_ID, DEVICE_ID));
    assert_eq!(o.class_code, CLASS_CODE);
    assert_eq!(o.capabilities, vec![(0x05, 0x40), (0x11, 0x50)]);
    assert_eq!(o.msix_table_size, 4);
    let bars: Vec<_> = o.bars.iter().map(|b| (b.index, b.kind, b.size)).collect();
    assert_eq!(
        bars,
        vec![(0, "mmio32", 4096), (2, "io", 32), (4, "mmio64", 4096)]
    );
    assert_eq!(o.rom_bar_size, ROM_SIZE);
    assert_eq!(o.rom_image_len, ROM_SIZE as usize);
    assert_eq!(o.rom_pcir_ids, (VENDOR_ID, DEVICE_ID));
    assert!(o.rom_checksum_ok);
    assert_eq!((o.id, o.io_id, o.version), (ID_MAGIC, ID_MAGIC, VERSION));
    assert_eq!(o.mac, MAC);
    assert_eq!(
        (o.scratch, o.io_scratch, o.indirect_scratch),
        (0x1234_5678, 0x0bad_f00d, 0xcafe_0001)
    );
    assert_eq!(o.reset_polls, BUSY_READS);
    assert_eq!(o.status_after_reset, status::READY);
    let commands: Vec<&str> = o.dma.iter().map(|d| d.command).collect();
    assert_eq!(
        commands,
        [
            "device-to-guest",
            "guest-to-device",
            "fill",
            "streaming-fill",
            "fill-after-unmap"
        ]
    );
    for d in &o.dma {
        let want = if d.command == "fill-after-unmap" {
            status::READY | status::DMA_ERROR
        } else {
            status::READY
        };
        assert_eq!(d.polls, BUSY_READS, "{}", d.command);
        assert_eq!(d.status, want, "{}", d.command);
        assert_eq!(d.cause, cause::DMA_DONE, "{}", d.command);
    }
    assert_eq!(
        &o.dma[3].bytes[..8],
        &[0x44, 0x33, 0x22, 0x11, 0x44, 0x33, 0x22, 0x11]
    );
    let expect_written: Vec<u8> = (0..256u32)
        .map(|i| (i as u8).wrapping_mul(7) ^ 0x5a)
        .collect();
    assert_eq!(o.dma[0].bytes, expect_written);
    let expect_read: Vec<u8> = (0..256u32).map(|i| (255 - i as u8) ^ 0x33).collect();
    assert_eq!(o.dma[1].bytes, expect_read);
    assert_eq!(&o.dma[2].bytes[..4], &0xa5c3_0ff0u32.to_le_bytes());
    assert_eq!(o.dma[2].bytes.len(), 96);
    assert_eq!(o.tx_flags, vec![desc::FLAG_DONE | desc::FLAG_EOP; 3]);
    let lens: Vec<usize> = o.rx_frames.iter().map(|f| f.bytes.len()).collect();
    assert_eq!(lens, vec![60, 128, 1514]);
    for f in &o.rx_frames {
        assert_eq!(f.flags, desc::FLAG_DONE | desc::FLAG_EOP);
        assert_eq!(&f.bytes[6..12], &MAC);
    }
    assert_eq!(o.ring_registers, [3, 3, 3, 3, 0]);
    assert_eq!(o.ring_causes, cause::TX_DONE | cause::RX);
    assert_eq!(o.soft_cause, cause::SOFT);
    // Five DMA completions on vector 0, one TX batch, one RX interrupt per frame, one software
    // interrupt.
    assert_eq!(o.irq_counts, vec![5, 1, 3, 1]);
    assert_eq!(o.final_status, status::READY);
    let json = serde_json::to_value(&o).unwrap();
    assert_eq!(json["irq_mode"], "msix");
    assert_eq!(json["dma"][0]["bytes"].as_str().map(str::len), Some(512));
}

#[test]
fn driver_observations_do_not_depend_on_iovas() {
    let a = run_driver(IrqMode::Msix, 0x1000_0000);
    let b = run_driver(IrqMode::Msix, 0x7_2345_0000);
    assert_eq!(a, b);
}

#[test]
fn driver_works_in_every_interrupt_mode() {
    let msix = run_driver(IrqMode::Msix, 0x1000_0000);
    for mode in [IrqMode::Msi, IrqMode::Intx] {
        let o = run_driver(mode, 0x1000_0000);
        assert_eq!(o.irq_mode, mode);
        assert_eq!(o.dma, msix.dma);
        assert_eq!(o.rx_frames, msix.rx_frames);
        assert_eq!(o.soft_cause, cause::SOFT);
        assert_eq!(o.irq_counts.len(), 1);
        assert!(o.irq_counts[0] >= 5, "{mode:?}: {:?}", o.irq_counts);
    }
}

#[test]
fn driver_refuses_bad_options_and_other_devices() {
    let mut dev = TestDevice::new();
    let mem = driver::setup_guest_memory(&mut dev, 0x1000, 0x1000).unwrap();
    let err = driver::run(&mut dev, &mem, DriverOptions::default()).unwrap_err();
    assert!(matches!(err, driver::DriverError::Options(_)), "{err}");
    let opts = DriverOptions {
        iova_base: 0x1000,
        frames: 0,
        ..DriverOptions::default()
    };
    assert!(driver::run(&mut dev, &mem, opts).is_err());
    // The streaming mapping needs the page after the area free.
    let mut dev = TestDevice::new();
    let mem =
        driver::setup_guest_memory(&mut dev, 0x10_0000, driver::DMA_AREA_SIZE + 0x1000).unwrap();
    let opts = DriverOptions {
        iova_base: 0x10_0000,
        ..DriverOptions::default()
    };
    let err = driver::run(&mut dev, &mem, opts).unwrap_err();
    assert!(err.to_string().contains("must be unmapped"), "{err}");
}

#[test]
fn driver_reports_a_missing_interrupt_instead_of_hanging() {
    /// Swallows SET_IRQS so no interrupt ever reaches the driver.
    struct Deaf(TestDevice);
    impl Device for Deaf {
        fn describe(&self) -> DeviceDescription {
            self.0.describe()
        }
        fn region_read(&mut self, r: u32, o: u64, d: &mut [u8]) -> Result<()> {
            self.0.region_read(r, o, d)
        }
        fn region_write(&mut self, r: u32, o: u64, d: &[u8]) -> Result<()> {
            self.0.region_write(r, o, d)
        }
        fn config_read(&mut self, o: u32, d: &mut [u8]) -> Result<()> {
            self.0.config_read(o, d)
        }
        fn config_write(&mut self, o: u32, d: &[u8]) -> Result<()> {
            self.0.config_write(o, d)
        }
        fn set_irqs(&mut self, _: IrqSetRequest) -> Result<()> {
            Ok(())
        }
        fn dma_map(&mut self, r: DmaRegion) -> Result<()> {
            self.0.dma_map(r)
        }
        fn dma_unmap(&mut self, m: DmaMapping) -> Result<()> {
            self.0.dma_unmap(m)
        }
        fn reset(&mut self) -> Result<()> {
            self.0.reset()
        }
        fn attach_memory(&mut self, m: Arc<dyn GuestMemory>) {
            self.0.attach_memory(m)
        }
    }
    let mut dev = Deaf(TestDevice::new());
    let mem = driver::setup_guest_memory(&mut dev, 0x1_0000, driver::DMA_AREA_SIZE).unwrap();
    let opts = DriverOptions {
        iova_base: 0x1_0000,
        irq_timeout: std::time::Duration::from_millis(20),
        ..DriverOptions::default()
    };
    let err = driver::run(&mut dev, &mem, opts).unwrap_err();
    assert!(
        matches!(err, driver::DriverError::IrqTimeout { vector: 0, .. }),
        "{err}"
    );
}

#[test]
fn driver_runs_through_a_boxed_trait_object() {
    fn assert_send<T: Send>() {}
    assert_send::<TestDevice>();
    let mut dev: Box<dyn Device> = Box::new(TestDevice::new());
    let mem = driver::setup_guest_memory(dev.as_mut(), 0x2000_0000, driver::DMA_AREA_SIZE).unwrap();
    let opts = DriverOptions {
        iova_base: 0x2000_0000,
        ..DriverOptions::default()
    };
    let o = driver::run(dev.as_mut(), &mem, opts).unwrap();
    assert_eq!(o, run_driver(IrqMode::Msix, 0x1000_0000));
}

#[test]
fn access_checks_agree_with_the_region_table() {
    let dev = TestDevice::new();
    for r in TestDevice::regions() {
        if r.kind == RegionKind::Config {
            assert!(dev.describe_regions_check(r.index, 0, 1).is_err());
            continue;
        }
        assert_eq!(
            dev.describe_regions_check(r.index, r.size - 4, 4).ok(),
            Some(r.kind)
        );
        assert!(dev.describe_regions_check(r.index, r.size - 3, 4).is_err());
    }
    for absent in [1, 3, 5, 8, 99] {
        assert!(dev.describe_regions_check(absent, 0, 1).is_err());
    }
}
