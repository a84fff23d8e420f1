//! Descriptors a client sends with a message that takes none are closed by the server. The server
//! runs in this process, so its descriptors show up in /proc/self/fd (one test per binary keeps
//! the count stable).

mod common;

use std::io::{Read, Write};
use std::os::fd::AsRawFd;
use std::os::unix::net::UnixStream;
use std::time::Duration;

use common::*;
use hwrr_vfio_user::protocol::{Header, HEADER_SIZE};
use hwrr_vfio_user::server::ServerOptions;

fn open_fds() -> usize {
    std::fs::read_dir("/proc/self/fd").unwrap().count()
}

fn frame(id: u16, cmd: u16, body: &[u8]) -> Vec<u8> {
    raw_message(id, cmd, 0, body)
}

fn reply(s: &mut UnixStream) -> Header {
    let mut hb = [0u8; HEADER_SIZE];
    s.read_exact(&mut hb).unwrap();
    let h = Header::parse(&hb).unwrap();
    let mut body = vec![0u8; h.size as usize - HEADER_SIZE];
    s.read_exact(&mut body).unwrap();
    h
}

#[test]
fn stray_descriptors_are_closed() {
    let h = Harness::start(ServerOptions::default());
    let mut s = UnixStream::connect(h.path()).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    s.write_all(&frame(1, 1, b"\0\0\x01\0{}\0")).unwrap();
    assert_eq!(reply(&mut s).error(), None);
    let mut read = 0u64.to_le_bytes().to_vec();
    read.extend_from_slice(&7u32.to_le_bytes());
    read.extend_from_slice(&2u32.to_le_bytes());
    // Warm up so lazily allocated buffers do not count.
    s.write_all(&frame(2, 9, &read)).unwrap();
    assert_eq!(reply(&mut s).error(), None);
    let baseline = open_fds();
    for i in 0..20u16 {
        let e = hwrr_device::eventfd::create().unwrap();
        let e2 = hwrr_device::eventfd::create().unwrap();
        send_with_fds(
            &s,
            &frame(10 + i, 9, &read),
            &[e.as_raw_fd(), e2.as_raw_fd()],
        );
        assert_eq!(reply(&mut s).error(), Some(libc::EINVAL));
        drop((e, e2));
    }
    assert_eq!(
        open_fds(),
        baseline,
        "the server closed every stray descriptor"
    );
}
