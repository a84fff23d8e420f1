//! The rust-vmm `vfio_user` client (crates.io 0.1.7), an independent implementation, against our
//! server: region reads and writes, IRQ info and wiring, DMA maps with an fd, unmap, reset.

mod common;

use std::os::fd::AsRawFd;

use common::*;
use hwrr_device::{eventfd, MappedMemory};
use hwrr_vfio_user::server::ServerOptions;

const VFIO_IRQ_SET_DATA_EVENTFD: u32 = 1 << 2;
const VFIO_IRQ_SET_DATA_NONE: u32 = 1;
const VFIO_IRQ_SET_ACTION_TRIGGER: u32 = 1 << 5;

#[test]
fn rust_vmm_client_drives_our_server() {
    let h = Harness::start(ServerOptions::default());
    let log = h.log.clone();
    {
        let mut c = vfio_user::Client::new(h.path()).expect("rust-vmm client connects");
        // It enumerated every region while connecting.
        let r0 = c.region(0).expect("BAR0");
        assert_eq!(r0.size, BAR0_SIZE);
        assert!(r0.file_offset.is_none(), "trapped regions pass no fd");
        assert_eq!(c.region(6).unwrap().size, ROM_SIZE);
        assert_eq!(c.region(1).unwrap().size, 0);

        c.region_write(0, 0x18, &0xdead_beefu32.to_le_bytes())
            .unwrap();
        let mut b = [0u8; 4];
        c.region_read(0, 0x18, &mut b).unwrap();
        assert_eq!(u32::from_le_bytes(b), 0xdead_beef);
        let mut id = [0u8; 2];
        c.region_read(7, 0, &mut id).unwrap();
        assert_eq!(u16::from_le_bytes(id), VENDOR);
        let mut rom = vec![0u8; 16];
        c.region_read(6, 0, &mut rom).unwrap();
        assert_eq!(rom[1], 10);

        let msix = c.get_irq_info(2).unwrap();
        assert_eq!((msix.index, msix.count), (2, 4));
        let efds: Vec<_> = (0..4).map(|_| eventfd::create().unwrap()).collect();
        let raw: Vec<i32> = efds.iter().map(|f| f.as_raw_fd()).collect();
        c.set_irqs(
            2,
            VFIO_IRQ_SET_DATA_EVENTFD | VFIO_IRQ_SET_ACTION_TRIGGER,
            0,
            4,
            &raw,
        )
        .unwrap();
        // The device raises vector 1 when told to.
        c.region_write(0, REG_CMD, &(3u32 | (1 << 8)).to_le_bytes())
            .unwrap();
        assert_eq!(eventfd::drain(&efds[1]).unwrap(), 1);
        // A trigger with no data fires the vector.
        c.set_irqs(
            2,
            VFIO_IRQ_SET_DATA_NONE | VFIO_IRQ_SET_ACTION_TRIGGER,
            3,
            1,
            &[],
        )
        .unwrap();
        assert_eq!(eventfd::drain(&efds[3]).unwrap(), 1);

        // Shared-memory DMA: the device writes into the memfd the client mapped.
        let fd = memfd(0x2000);
        let view = MappedMemory::map_fd(fd.try_clone().unwrap(), 0, 0x2000, true).unwrap();
        c.dma_map(0, 0x4000_0000, 0x2000, fd.as_raw_fd()).unwrap();
        c.region_write(0, DMA_BUF, &[0x5a; 32]).unwrap();
        c.region_write(0, REG_DMA_ADDR, &0x4000_0100u64.to_le_bytes())
            .unwrap();
        c.region_write(0, REG_DMA_LEN, &32u32.to_le_bytes())
            .unwrap();
        c.region_write(0, REG_CMD, &1u32.to_le_bytes()).unwrap();
        let mut status = [0u8; 4];
        c.region_read(0, REG_STATUS, &mut status).unwrap();
        assert_eq!(u32::from_le_bytes(status), 0);
        let mut got = [0u8; 32];
        view.read(0x100, &mut got).unwrap();
        assert_eq!(got, [0x5a; 32]);
        c.dma_unmap(0x4000_0000, 0x2000).unwrap();
        c.reset().unwrap();
        c.region_read(0, 0x18, &mut b).unwrap();
        assert_eq!(b, [0; 4], "reset reached the device");
    }
    drop(h.finish());
    let log = log.lock().unwrap();
    assert_eq!(log.maps.len(), 1);
    assert!(log.maps[0].1, "fd-backed map handed the device its memory");
    assert_eq!(log.unmaps.len(), 1);
    assert_eq!(log.resets, 1);
}
