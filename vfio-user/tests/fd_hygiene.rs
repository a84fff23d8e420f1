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
    let mut v = Header {
        id,
        command: cmd,
        size: (HEADER_SIZE + body.len()) as u32,
        flags: 0,
        error: 0,
    }
    .to_bytes()
    .to_vec();
    v.extend_from_slice(body);
    v
}

fn send_with(s: &UnixStream, bytes: &[u8], fds: &[i32]) {
    let mut iov = libc::iovec {
        iov_base: bytes.as_ptr() as *mut _,
        iov_len: bytes.len(),
    };
    let mut cbuf = [0u64; 32];
    // SAFETY: test-only sendmsg with an aligned control buffer large enough for the fds.
    unsafe {
        let mut m: libc::msghdr = std::mem::zeroed();
        m.msg_iov = &mut iov;
        m.msg_iovlen = 1;
        let payload = std::mem::size_of_val(fds) as u32;
        m.msg_control = cbuf.as_mut_ptr().cast();
        m.msg_controllen = libc::CMSG_SPACE(payload) as _;
        let c = libc::CMSG_FIRSTHDR(&m);
        (*c).cmsg_level = libc::SOL_SOCKET;
        (*c).cmsg_type = libc::SCM_RIGHTS;
        (*c).cmsg_len = libc::CMSG_LEN(payload) as _;
        std::ptr::copy_nonoverlapping(
            fds.as_ptr().cast::<u8>(),
            libc::CMSG_DATA(c),
            payload as usize,
        );
        assert_eq!(libc::sendmsg(s.as_raw_fd(), &m, 0), bytes.len() as isize);
    }
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
        send_with(
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
