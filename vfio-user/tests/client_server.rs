//! Our client against our server, for every command.

mod common;

use std::os::fd::AsFd;
use std::os::unix::fs::PermissionsExt;
use std::sync::{Arc, Mutex};

use common::*;
use hwrr_device::{eventfd, Device, GuestMemory, IrqAction, IrqData, MappedMemory, SparseMemory};
use hwrr_vfio_user::client::{Client, ClientOptions, DmaDirection, RemoteDevice};
use hwrr_vfio_user::protocol::{DmaLayout, MultiWrite};
use hwrr_vfio_user::server::ServerOptions;
use hwrr_vfio_user::ClientError;

fn write_u64(c: &mut Client, off: u64, v: u64) {
    c.region_write(0, off, &v.to_le_bytes()).unwrap();
}
fn read_u32(c: &mut Client, off: u64) -> u32 {
    let mut b = [0u8; 4];
    c.region_read(0, off, &mut b).unwrap();
    u32::from_le_bytes(b)
}

fn run_cmd(c: &mut Client, cmd: u32) -> u32 {
    c.region_write(0, REG_CMD, &cmd.to_le_bytes()).unwrap();
    read_u32(c, REG_STATUS)
}

#[test]
fn socket_is_0600_and_infos_describe_the_device() {
    let h = Harness::start(ServerOptions::default());
    let mode = std::fs::metadata(h.path()).unwrap().permissions().mode();
    assert_eq!(mode & 0o777, 0o600);
    let mut c = Client::connect(h.path(), ClientOptions::default()).unwrap();
    assert_eq!(c.minor_version(), 1);
    let info = c.device_info().unwrap();
    assert_eq!(info.num_regions, 9);
    assert_eq!(info.num_irqs, 5);
    assert_eq!(info.flags, 3);
    let r0 = c.region_info(0).unwrap();
    assert_eq!((r0.size, r0.flags & 3), (BAR0_SIZE, 3));
    let r1 = c.region_info(1).unwrap();
    assert_eq!(r1.size, 0);
    let rom = c.region_info(6).unwrap();
    assert_eq!((rom.size, rom.flags & 3), (ROM_SIZE, 1));
    assert_eq!(c.region_info(7).unwrap().size, 256);
    assert!(matches!(
        c.region_info(9),
        Err(ClientError::Remote {
            errno: libc::EINVAL,
            ..
        })
    ));
    let msix = c.irq_info(2).unwrap();
    assert_eq!(msix.count, 4);
    assert_eq!(c.irq_info(1).unwrap().count, 0);
    drop(c);
    let s = h.finish();
    assert_eq!(s.connections, 1);
}

/// A client that connects as soon as the socket's path appears (as QEMU, scripts and tests do) is
/// never refused: the path appears only once the socket listens. The race itself is too short to
/// lose reliably in a test, so the directory's inotify events show how the path appeared: moved
/// into place (after listen), never created in place (at bind, before listen).
#[test]
fn the_socket_appears_only_when_it_listens() {
    use hwrr_vfio_user::server::Server;
    use std::os::unix::ffi::OsStrExt;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("race.sock");
    // SAFETY: plain inotify_init1(2); the result is checked.
    let fd = unsafe { libc::inotify_init1(libc::IN_NONBLOCK | libc::IN_CLOEXEC) };
    assert!(fd >= 0);
    // SAFETY: `fd` is ours from here on.
    let fd = unsafe { <std::os::fd::OwnedFd as std::os::fd::FromRawFd>::from_raw_fd(fd) };
    let dir_c = std::ffi::CString::new(dir.path().as_os_str().as_bytes()).unwrap();
    // SAFETY: a valid inotify descriptor and a NUL-terminated path.
    let wd = unsafe {
        libc::inotify_add_watch(
            std::os::fd::AsRawFd::as_raw_fd(&fd),
            dir_c.as_ptr(),
            libc::IN_CREATE | libc::IN_MOVED_TO,
        )
    };
    assert!(wd >= 0);
    let server = Server::bind(&path, ServerOptions::default()).unwrap();
    std::os::unix::net::UnixStream::connect(&path).unwrap();
    let mut buf = [0u8; 4096];
    // SAFETY: reads into a buffer of the given length.
    let n = unsafe {
        libc::read(
            std::os::fd::AsRawFd::as_raw_fd(&fd),
            buf.as_mut_ptr().cast(),
            buf.len(),
        )
    };
    assert!(n > 0, "no inotify events");
    // struct inotify_event: wd i32, mask u32, cookie u32, len u32, then `len` bytes of name.
    let mut events = Vec::new();
    let mut at = 0;
    while at + 16 <= n as usize {
        let mask = u32::from_ne_bytes(buf[at + 4..at + 8].try_into().unwrap());
        let len = u32::from_ne_bytes(buf[at + 12..at + 16].try_into().unwrap()) as usize;
        let name = &buf[at + 16..at + 16 + len];
        let name = String::from_utf8_lossy(name)
            .trim_end_matches('\0')
            .to_string();
        events.push((name, mask));
        at += 16 + len;
    }
    let ours: Vec<u32> = events
        .iter()
        .filter(|(name, _)| name == "race.sock")
        .map(|(_, mask)| *mask)
        .collect();
    assert!(
        ours.iter().any(|m| m & libc::IN_MOVED_TO != 0),
        "{events:?}"
    );
    assert!(
        ours.iter().all(|m| m & libc::IN_CREATE == 0),
        "the socket was created at its path before it listened: {events:?}"
    );
    drop(server);
    let left: Vec<_> = std::fs::read_dir(dir.path()).unwrap().collect();
    assert!(left.is_empty(), "temporary sockets left behind: {left:?}");
}

#[test]
fn region_config_rom_access_and_errors_keep_the_connection() {
    let h = Harness::start(ServerOptions::default());
    let mut c = Client::connect(h.path(), ClientOptions::default()).unwrap();
    c.region_write(0, 0x10, &[1, 2, 3, 4]).unwrap();
    let mut b = [0u8; 4];
    c.region_read(0, 0x10, &mut b).unwrap();
    assert_eq!(b, [1, 2, 3, 4]);
    c.region_write(2, 0x4, &[0xaa]).unwrap();
    let mut one = [0u8; 1];
    c.region_read(2, 0x4, &mut one).unwrap();
    assert_eq!(one, [0xaa]);
    // Config space through region 7.
    let mut id = [0u8; 4];
    c.region_read(7, 0, &mut id).unwrap();
    assert_eq!(u16::from_le_bytes([id[0], id[1]]), VENDOR);
    c.region_write(7, 0x40, &[5, 6]).unwrap();
    let mut cfg = [0u8; 2];
    c.region_read(7, 0x40, &mut cfg).unwrap();
    assert_eq!(cfg, [5, 6]);
    // The ROM, in one read.
    let mut rom = vec![0u8; ROM_SIZE as usize];
    c.region_read(6, 0, &mut rom).unwrap();
    assert_eq!(rom[5], (5 * 7 + 3) as u8);
    // Errors carry errnos and the connection keeps going.
    let e = c.region_read(0, BAR0_SIZE - 2, &mut b).unwrap_err();
    assert_eq!(e.errno(), libc::EINVAL);
    let e = c.region_read(3, 0, &mut b).unwrap_err();
    assert_eq!(e.errno(), libc::EINVAL);
    let e = c.region_write(6, 0, &[1]).unwrap_err();
    assert_eq!(e.errno(), libc::EINVAL, "{e}");
    c.region_read(0, 0x10, &mut b).unwrap();
    assert_eq!(b, [1, 2, 3, 4]);
    drop(c);
    let s = h.finish();
    assert!(s.errors >= 3);
}

#[test]
fn posted_writes_and_write_multi_are_applied_in_order() {
    let h = Harness::start(ServerOptions::default());
    let mut c = Client::connect(h.path(), ClientOptions::default()).unwrap();
    assert!(c.server_capabilities().write_multiple);
    for i in 0..50u32 {
        c.region_write_posted(0, 0x20, &i.to_le_bytes()).unwrap();
    }
    assert_eq!(read_u32(&mut c, 0x20), 49);
    let vals: Vec<[u8; 4]> = (0..10u32).map(|i| (i + 100).to_le_bytes()).collect();
    let writes: Vec<MultiWrite<'_>> = vals
        .iter()
        .enumerate()
        .map(|(i, v)| MultiWrite {
            offset: 0x40 + 4 * i as u64,
            region: 0,
            data: v,
        })
        .collect();
    c.write_multi(&writes).unwrap();
    for i in 0..10u64 {
        assert_eq!(read_u32(&mut c, 0x40 + 4 * i), 100 + i as u32);
    }
    let log = h.log.lock().unwrap();
    let multi_writes = log
        .writes
        .iter()
        .filter(|w| w.1 >= 0x40 && w.1 < 0x68)
        .count();
    assert_eq!(
        multi_writes, 10,
        "each write of a batch is one region_write"
    );
}

/// Wires MSI-X vectors 0..count to new eventfds in one SET_IRQS request.
fn wire_msix(c: &mut Client, count: u32) -> Vec<std::os::fd::OwnedFd> {
    let fds: Vec<_> = (0..count).map(|_| eventfd::create().unwrap()).collect();
    let borrowed: Vec<_> = fds.iter().map(|f| f.as_fd()).collect();
    c.set_irqs(
        2,
        0,
        count,
        IrqAction::Trigger,
        &IrqData::Eventfd(vec![true; count as usize]),
        &borrowed,
    )
    .unwrap();
    fds
}

#[test]
fn msix_irqs_reach_eventfds_and_masked_vectors_fire_on_unmask() {
    let h = Harness::start(ServerOptions::default());
    let mut c = Client::connect(h.path(), ClientOptions::default()).unwrap();
    let fds = wire_msix(&mut c, 4);
    assert_eq!(run_cmd(&mut c, 3 | (2 << 8)), 0);
    assert_eq!(eventfd::drain(&fds[2]).unwrap(), 1);
    assert_eq!(eventfd::drain(&fds[1]).unwrap(), 0);
    // Mask vector 1, raise it: pending, not delivered.
    c.set_irqs(2, 1, 1, IrqAction::Mask, &IrqData::None, &[])
        .unwrap();
    assert_eq!(run_cmd(&mut c, 3 | (1 << 8)), 0);
    assert_eq!(eventfd::drain(&fds[1]).unwrap(), 0);
    c.set_irqs(2, 1, 1, IrqAction::Unmask, &IrqData::Bool(vec![true]), &[])
        .unwrap();
    assert_eq!(eventfd::drain(&fds[1]).unwrap(), 1);
    // A trigger from the client fires the vector too.
    c.set_irqs(2, 3, 1, IrqAction::Trigger, &IrqData::None, &[])
        .unwrap();
    assert_eq!(eventfd::drain(&fds[3]).unwrap(), 1);
    // Disconnect vectors 0..2 (fd-less eventfd request, as QEMU sends -1 runs).
    c.set_irqs(
        2,
        0,
        2,
        IrqAction::Trigger,
        &IrqData::Eventfd(vec![false; 2]),
        &[],
    )
    .unwrap();
    assert_eq!(run_cmd(&mut c, 3), 0);
    assert_eq!(eventfd::drain(&fds[0]).unwrap(), 0);
    // INTx auto-masks after one interrupt.
    let intx = eventfd::create().unwrap();
    c.set_irqs(
        0,
        0,
        1,
        IrqAction::Trigger,
        &IrqData::Eventfd(vec![true]),
        &[intx.as_fd()],
    )
    .unwrap();
    run_cmd(&mut c, 4);
    run_cmd(&mut c, 4);
    assert_eq!(eventfd::drain(&intx).unwrap(), 1);
    c.set_irqs(0, 0, 1, IrqAction::Unmask, &IrqData::None, &[])
        .unwrap();
    assert_eq!(
        eventfd::drain(&intx).unwrap(),
        1,
        "pending INTx fires on unmask"
    );
    // Out-of-range vectors are refused.
    let e = c
        .set_irqs(2, 3, 2, IrqAction::Mask, &IrqData::None, &[])
        .unwrap_err();
    assert_eq!(e.errno(), libc::EINVAL);
}

type Seen = Arc<Mutex<Vec<(DmaDirection, u64, Vec<u8>)>>>;

fn fd_less_dma(layout: DmaLayout) {
    let h = Harness::start(ServerOptions::default());
    let mut c = Client::connect(
        h.path(),
        ClientOptions {
            dma_layout: layout,
            ..Default::default()
        },
    )
    .unwrap();
    let mem = Arc::new(SparseMemory::new());
    mem.add_local(0x10_0000, 0x2000, 3).unwrap();
    c.set_memory(mem.clone());
    let seen: Seen = Arc::default();
    let s2 = seen.clone();
    c.set_dma_observer(Box::new(move |d, a, b| {
        s2.lock().unwrap().push((d, a, b.to_vec()))
    }));
    c.dma_map(0x10_0000, 0x2000, 3, None).unwrap();
    // Device writes 300 bytes at 0x10_0ff0 (crossing nothing, but odd-sized).
    let pattern: Vec<u8> = (0..300u32).map(|i| (i * 13) as u8).collect();
    c.region_write(0, DMA_BUF, &pattern).unwrap();
    write_u64(&mut c, REG_DMA_ADDR, 0x10_0ff0);
    write_u64(&mut c, REG_DMA_LEN, 300);
    assert_eq!(run_cmd(&mut c, 1), 0);
    let mut got = vec![0u8; 300];
    mem.read(0x10_0ff0, &mut got).unwrap();
    assert_eq!(got, pattern, "{layout:?}: DMA_WRITE landed exactly");
    // Device reads 64 bytes the client put in memory.
    let src: Vec<u8> = (0..64u8).rev().collect();
    mem.write(0x10_1000, &src).unwrap();
    write_u64(&mut c, REG_DMA_ADDR, 0x10_1000);
    write_u64(&mut c, REG_DMA_LEN, 64);
    assert_eq!(run_cmd(&mut c, 2), 0);
    let mut back = vec![0u8; 64];
    c.region_read(0, DMA_BUF, &mut back).unwrap();
    assert_eq!(back, src);
    // Outside the mapping: a DMA fault, reported by the device, connection fine.
    write_u64(&mut c, REG_DMA_ADDR, 0x20_0000);
    assert_eq!(run_cmd(&mut c, 1), libc::EFAULT as u32);
    {
        let seen = seen.lock().unwrap();
        assert_eq!(seen.len(), 2);
        assert_eq!(seen[0].0, DmaDirection::Write);
        assert_eq!((seen[0].1, &seen[0].2), (0x10_0ff0, &pattern));
        assert_eq!((seen[1].0, seen[1].1), (DmaDirection::Read, 0x10_1000));
    }
    c.dma_unmap(0x10_0000, 0x2000).unwrap();
    write_u64(&mut c, REG_DMA_ADDR, 0x10_0000);
    assert_eq!(run_cmd(&mut c, 1), libc::EFAULT as u32, "unmapped");
    assert_eq!(c.dma_requests_served(), 2);
    drop(c);
    let s = h.finish();
    let last = s.last.unwrap();
    let expect = if layout == DmaLayout::Qemu {
        DmaLayout::Qemu
    } else {
        DmaLayout::Spec
    };
    assert_eq!(
        last.dma_layout,
        Some(expect),
        "Auto detected the client's layout"
    );
    assert_eq!(last.dma_messages, 2);
}

#[test]
fn fd_less_dma_spec_layout() {
    fd_less_dma(DmaLayout::Spec);
}

#[test]
fn fd_less_dma_qemu_layout() {
    fd_less_dma(DmaLayout::Qemu);
}

#[test]
fn explicit_server_layout_overrides_detection() {
    // A server forced to QEMU's layout talking to a spec client misplaces data by 4 bytes — the
    // very bug the layouts exist for — so the DMA must not silently succeed with the right bytes.
    let h = Harness::start(ServerOptions {
        dma_layout: DmaLayout::Qemu,
        ..Default::default()
    });
    let mut c = Client::connect(h.path(), ClientOptions::default()).unwrap();
    let mem = Arc::new(SparseMemory::new());
    mem.add_local(0x1000, 0x1000, 3).unwrap();
    c.set_memory(mem.clone());
    c.dma_map(0x1000, 0x1000, 3, None).unwrap();
    c.region_write(0, DMA_BUF, &[1, 2, 3, 4, 5, 6, 7, 8])
        .unwrap();
    write_u64(&mut c, REG_DMA_ADDR, 0x1000);
    write_u64(&mut c, REG_DMA_LEN, 8);
    let status = run_cmd(&mut c, 1);
    let mut got = [0u8; 8];
    mem.read(0x1000, &mut got).unwrap();
    assert!(status != 0 || got != [1, 2, 3, 4, 5, 6, 7, 8]);
}

#[test]
fn fd_backed_dma_goes_straight_to_shared_memory() {
    let h = Harness::start(ServerOptions::default());
    let mut c = Client::connect(h.path(), ClientOptions::default()).unwrap();
    let fd = memfd(0x4000);
    let view = MappedMemory::map_fd(fd.try_clone().unwrap(), 0, 0x4000, true).unwrap();
    c.dma_map(0x8000_0000, 0x3000, 3, Some((fd.as_fd(), 0x1000)))
        .unwrap();
    let pattern: Vec<u8> = (0..128u8).collect();
    c.region_write(0, DMA_BUF, &pattern).unwrap();
    write_u64(&mut c, REG_DMA_ADDR, 0x8000_0010);
    write_u64(&mut c, REG_DMA_LEN, 128);
    assert_eq!(run_cmd(&mut c, 1), 0);
    let mut got = vec![0u8; 128];
    view.read(0x1010, &mut got).unwrap();
    assert_eq!(got, pattern, "fd offset honoured");
    // Overlapping maps are refused with EEXIST; unmap-all empties the table.
    let e = c.dma_map(0x8000_1000, 0x1000, 3, None).unwrap_err();
    assert_eq!(e.errno(), libc::EEXIST);
    assert_eq!(
        c.dma_unmap(0x1234_0000, 0x1000).unwrap_err().errno(),
        libc::ENOENT
    );
    c.dma_unmap_all().unwrap();
    assert_eq!(run_cmd(&mut c, 1), libc::EFAULT as u32);
    drop(c);
    let s = h.finish();
    assert_eq!(s.last.unwrap().dma_messages, 0);
}

#[test]
fn device_sees_maps_unmaps_reset_and_disconnect() {
    let h = Harness::start(ServerOptions::default());
    {
        let mut c = Client::connect(h.path(), ClientOptions::default()).unwrap();
        c.dma_map(0x1000, 0x1000, 1, None).unwrap();
        c.dma_unmap(0x1000, 0x1000).unwrap();
        c.dma_map(0x2000, 0x1000, 3, None).unwrap();
        c.dma_unmap_all().unwrap();
        c.region_write(0, 0, &[9]).unwrap();
        c.reset().unwrap();
        let mut b = [0u8; 1];
        c.region_read(0, 0, &mut b).unwrap();
        assert_eq!(b, [0], "reset cleared the registers");
    }
    // A second client is served after the first leaves.
    let mut c2 = Client::connect(h.path(), ClientOptions::default()).unwrap();
    c2.reset().unwrap();
    drop(c2);
    let s = h.finish();
    assert_eq!(s.connections, 2);
}

#[test]
fn device_log_records_every_call() {
    let h = Harness::start(ServerOptions::default());
    let log = h.log.clone();
    {
        let mut c = Client::connect(h.path(), ClientOptions::default()).unwrap();
        c.dma_map(0x1000, 0x1000, 1, None).unwrap();
        c.dma_unmap_all().unwrap();
        c.reset().unwrap();
    }
    drop(h.finish());
    let log = log.lock().unwrap();
    assert_eq!(log.maps.len(), 1);
    assert!(!log.maps[0].1, "fd-less map has no memory");
    assert_eq!(log.unmaps.len(), 1);
    assert_eq!(log.unmaps[0].flags, 2);
    assert_eq!(log.resets, 1);
    assert_eq!(log.attaches, 1);
    assert_eq!(log.disconnects, 1);
}

#[test]
fn remote_device_proxies_a_server() {
    let h = Harness::start(ServerOptions::default());
    let c = Client::connect(h.path(), ClientOptions::default()).unwrap();
    let mut dev = RemoteDevice::new(c).unwrap();
    let d = dev.describe();
    assert_eq!(d.identity.vendor_id, VENDOR);
    assert_eq!(d.identity.device_id, DEVICE);
    assert_eq!(d.config_space.len(), 256);
    assert_eq!(d.rom.as_ref().unwrap().len(), ROM_SIZE as usize);
    let kinds: Vec<_> = d.regions.iter().map(|r| (r.index, r.kind)).collect();
    assert_eq!(
        kinds,
        vec![
            (0, hwrr_device::RegionKind::Mmio),
            (2, hwrr_device::RegionKind::Pio),
            (6, hwrr_device::RegionKind::Rom),
            (7, hwrr_device::RegionKind::Config)
        ]
    );
    assert_eq!(d.irqs.len(), 2);
    dev.region_write(0, 0x30, &[7, 7]).unwrap();
    let mut b = [0u8; 2];
    dev.region_read(0, 0x30, &mut b).unwrap();
    assert_eq!(b, [7, 7]);
    assert!(dev.region_read(0, BAR0_SIZE, &mut b).is_err());
    dev.config_write(0x44, &[1]).unwrap();
    assert_eq!(dev.describe().config_space[0x44], 1);
    // DMA through the wrapper, observed.
    let mem = Arc::new(SparseMemory::new());
    mem.add_local(0x4000, 0x1000, 3).unwrap();
    dev.attach_memory(mem.clone());
    let seen: Arc<Mutex<Vec<(DmaDirection, u64, usize)>>> = Arc::default();
    let s2 = seen.clone();
    dev.set_dma_observer(Box::new(move |d, a, b| {
        s2.lock().unwrap().push((d, a, b.len()))
    }));
    dev.dma_map(hwrr_device::DmaRegion {
        mapping: hwrr_device::DmaMapping {
            iova: 0x4000,
            len: 0x1000,
            flags: 3,
        },
        memory: None,
    })
    .unwrap();
    dev.region_write(0, DMA_BUF, &[0xee; 16]).unwrap();
    dev.region_write(0, REG_DMA_ADDR, &0x4100u64.to_le_bytes())
        .unwrap();
    dev.region_write(0, REG_DMA_LEN, &16u64.to_le_bytes())
        .unwrap();
    dev.region_write(0, REG_CMD, &1u32.to_le_bytes()).unwrap();
    let mut got = [0u8; 16];
    mem.read(0x4100, &mut got).unwrap();
    assert_eq!(got, [0xee; 16]);
    assert_eq!(
        *seen.lock().unwrap(),
        vec![(DmaDirection::Write, 0x4100, 16)]
    );
    // IRQ wiring with mixed wired/unwired vectors goes out as runs.
    let e0 = eventfd::create().unwrap();
    let e2 = eventfd::create().unwrap();
    dev.set_irqs(hwrr_device::IrqSetRequest {
        setup: hwrr_device::IrqSetup {
            index: 2,
            start: 0,
            count: 3,
            action: IrqAction::Trigger,
            data: IrqData::Eventfd(vec![true, false, true]),
        },
        fds: vec![
            Some(e0.try_clone().unwrap()),
            None,
            Some(e2.try_clone().unwrap()),
        ],
    })
    .unwrap();
    dev.region_write(0, REG_CMD, &(3u32 | (2 << 8)).to_le_bytes())
        .unwrap();
    assert_eq!(eventfd::drain(&e2).unwrap(), 1);
    dev.reset().unwrap();
}

#[test]
fn bind_refuses_non_sockets_and_live_servers_but_replaces_stale_sockets() {
    use hwrr_vfio_user::server::{Server, ServerError};
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("regular");
    std::fs::write(&file, b"keep me").unwrap();
    assert!(matches!(
        Server::bind(&file, ServerOptions::default()),
        Err(ServerError::NotASocket(_))
    ));
    assert_eq!(std::fs::read(&file).unwrap(), b"keep me");
    let sock = dir.path().join("s.sock");
    let live = Server::bind(&sock, ServerOptions::default()).unwrap();
    assert!(matches!(
        Server::bind(&sock, ServerOptions::default()),
        Err(ServerError::InUse(_))
    ));
    // A stale socket (its listener gone, file left behind) is replaced.
    let stale = std::os::unix::net::UnixListener::bind(dir.path().join("stale.sock")).unwrap();
    drop(stale);
    let again = Server::bind(dir.path().join("stale.sock"), ServerOptions::default()).unwrap();
    let mode = std::fs::metadata(again.path())
        .unwrap()
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o600);
    drop(live);
    assert!(
        !sock.exists(),
        "the socket file is removed when the server goes"
    );
}

#[test]
fn once_serves_a_single_client() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("once.sock");
    let mut server = hwrr_vfio_user::Server::bind(
        &path,
        ServerOptions {
            once: true,
            ..Default::default()
        },
    )
    .unwrap();
    let t = std::thread::spawn(move || server.serve(&mut TestDevice::new()).unwrap());
    let mut c = Client::connect(&path, ClientOptions::default()).unwrap();
    c.reset().unwrap();
    drop(c);
    let s = t.join().unwrap();
    assert_eq!((s.connections, s.requests), (1, 2));
}

#[test]
fn dma_from_another_thread_while_the_server_waits_for_requests() {
    let h = Harness::start(ServerOptions::default());
    let mut c = Client::connect(h.path(), ClientOptions::default()).unwrap();
    let mem = Arc::new(SparseMemory::new());
    mem.add_local(0x9000, 0x1000, 3).unwrap();
    c.set_memory(mem.clone());
    c.dma_map(0x9000, 0x1000, 3, None).unwrap();
    let device_memory = h.log.lock().unwrap().memory.clone().unwrap();
    // The request loop is blocked reading the socket; a device thread DMAs meanwhile.
    let dma = std::thread::spawn(move || {
        device_memory.write(0x9010, b"from a timer")?;
        let mut back = [0u8; 12];
        device_memory.read(0x9010, &mut back)?;
        Ok::<_, hwrr_device::DeviceError>(back)
    });
    let mut served = 0;
    while served < 2 {
        served += c
            .poll_server_requests(std::time::Duration::from_millis(50))
            .unwrap();
    }
    assert_eq!(&dma.join().unwrap().unwrap(), b"from a timer");
    let mut got = [0u8; 12];
    mem.read(0x9010, &mut got).unwrap();
    assert_eq!(&got, b"from a timer");
    // The connection still serves requests afterwards.
    c.reset().unwrap();
}

#[test]
fn stop_flag_ends_an_idle_connection() {
    let h = Harness::start(ServerOptions::default());
    let mut c = Client::connect(h.path(), ClientOptions::default()).unwrap();
    c.reset().unwrap();
    // The client stays connected and idle; the server must still notice the stop flag.
    let s = h.finish();
    assert_eq!(s.last.unwrap().closed_because.as_deref(), Some("stopped"));
    assert!(matches!(
        c.reset(),
        Err(ClientError::Closed) | Err(ClientError::Io(_))
    ));
}

#[test]
fn client_reply_timeout_fires_on_a_silent_server() {
    let (ours, _silent) = std::os::unix::net::UnixStream::pair().unwrap();
    let e = Client::from_stream(
        ours,
        ClientOptions {
            reply_timeout: Some(std::time::Duration::from_millis(50)),
            ..Default::default()
        },
    )
    .unwrap_err();
    assert!(matches!(e, ClientError::Timeout(_)), "{e}");
}

#[test]
fn dma_spanning_an_fd_mapping_and_a_message_mapping_is_split() {
    let h = Harness::start(ServerOptions::default());
    let mut c = Client::connect(h.path(), ClientOptions::default()).unwrap();
    let fd = memfd(0x1000);
    let view = MappedMemory::map_fd(fd.try_clone().unwrap(), 0, 0x1000, true).unwrap();
    c.dma_map(0x1000, 0x1000, 3, Some((fd.as_fd(), 0))).unwrap();
    let mem = Arc::new(SparseMemory::new());
    mem.add_local(0x2000, 0x1000, 3).unwrap();
    c.set_memory(mem.clone());
    c.dma_map(0x2000, 0x1000, 3, None).unwrap();
    let pattern: Vec<u8> = (0..300u32).map(|i| (i % 251) as u8).collect();
    c.region_write(0, DMA_BUF, &pattern).unwrap();
    write_u64(&mut c, REG_DMA_ADDR, 0x1f00);
    write_u64(&mut c, REG_DMA_LEN, 300);
    assert_eq!(run_cmd(&mut c, 1), 0);
    let mut first = vec![0u8; 256];
    view.read(0xf00, &mut first).unwrap();
    let mut rest = vec![0u8; 44];
    mem.read(0x2000, &mut rest).unwrap();
    assert_eq!(first, pattern[..256]);
    assert_eq!(rest, pattern[256..]);
    assert_eq!(
        c.dma_requests_served(),
        1,
        "only the fd-less part travelled as a message"
    );
    // Reading it back across the boundary.
    c.region_write(0, DMA_BUF, &[0u8; 300]).unwrap();
    assert_eq!(run_cmd(&mut c, 2), 0);
    let mut back = vec![0u8; 300];
    c.region_read(0, DMA_BUF, &mut back).unwrap();
    assert_eq!(back, pattern);
    // A read-only mapping refuses device writes.
    c.dma_map(0x5000, 0x1000, 1, None).unwrap();
    write_u64(&mut c, REG_DMA_ADDR, 0x5000);
    write_u64(&mut c, REG_DMA_LEN, 4);
    assert_eq!(run_cmd(&mut c, 1), libc::EFAULT as u32);
}

#[test]
fn posted_dma_writes_need_no_reply() {
    let h = Harness::start(ServerOptions {
        post_dma_writes: Some(true),
        ..Default::default()
    });
    let mut c = Client::connect(h.path(), ClientOptions::default()).unwrap();
    let mem = Arc::new(SparseMemory::new());
    mem.add_local(0x3000, 0x1000, 3).unwrap();
    c.set_memory(mem.clone());
    c.dma_map(0x3000, 0x1000, 3, None).unwrap();
    c.region_write(0, DMA_BUF, &[0x77; 24]).unwrap();
    write_u64(&mut c, REG_DMA_ADDR, 0x3008);
    write_u64(&mut c, REG_DMA_LEN, 24);
    assert_eq!(run_cmd(&mut c, 1), 0);
    let mut got = [0u8; 26];
    mem.read(0x3007, &mut got).unwrap();
    assert_eq!(got[0], 0);
    assert_eq!(&got[1..25], &[0x77; 24]);
    assert_eq!(got[25], 0);
    drop(c);
    assert_eq!(h.finish().last.unwrap().dma_messages, 1);
}

#[test]
fn more_eventfds_than_the_server_takes_per_message_are_sent_in_pieces() {
    let h = Harness::start(ServerOptions {
        max_msg_fds: 3,
        ..Default::default()
    });
    let mut c = Client::connect(h.path(), ClientOptions::default()).unwrap();
    assert_eq!(c.server_capabilities().max_msg_fds, 3);
    let fds = wire_msix(&mut c, 4);
    for v in 0..4u32 {
        assert_eq!(run_cmd(&mut c, 3 | (v << 8)), 0);
        for (k, fd) in fds.iter().enumerate() {
            let want = u64::from(k as u32 == v);
            assert_eq!(eventfd::drain(fd).unwrap(), want, "vector {v} fd {k}");
        }
    }
}
