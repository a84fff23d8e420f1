//! Malformed messages over a raw socket: each re-synchronisable one gets an error reply with a
//! proper errno and the SAME connection then serves a valid request; unframeable garbage closes the
//! connection and the server still accepts the next client.

mod common;

use std::io::{Read, Write};
use std::os::fd::{AsRawFd, RawFd};
use std::os::unix::net::UnixStream;
use std::time::Duration;

use common::*;
use hwrr_device::eventfd;
use hwrr_vfio_user::protocol::{flags, Header, HEADER_SIZE};
use hwrr_vfio_user::server::ServerOptions;

struct Raw {
    s: UnixStream,
    id: u16,
}

fn msg(id: u16, cmd: u16, fl: u32, body: &[u8]) -> Vec<u8> {
    raw_message(id, cmd, fl, body)
}

fn body_u32s(v: &[u32]) -> Vec<u8> {
    v.iter().flat_map(|x| x.to_le_bytes()).collect()
}

fn region_rw(offset: u64, region: u32, count: u32, data: &[u8]) -> Vec<u8> {
    let mut b = offset.to_le_bytes().to_vec();
    b.extend_from_slice(&region.to_le_bytes());
    b.extend_from_slice(&count.to_le_bytes());
    b.extend_from_slice(data);
    b
}

impl Raw {
    fn connect(h: &Harness) -> Raw {
        let s = UnixStream::connect(h.path()).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        let mut r = Raw { s, id: 100 };
        let (hd, _) = r.call(1, 0, b"\0\0\x01\0{}\0");
        assert_eq!(hd.flags & flags::ERROR, 0, "version accepted");
        r
    }

    fn next_id(&mut self) -> u16 {
        self.id += 1;
        self.id
    }

    fn read_reply(&mut self) -> (Header, Vec<u8>) {
        let mut hb = [0u8; HEADER_SIZE];
        self.s.read_exact(&mut hb).unwrap();
        let h = Header::parse(&hb).unwrap();
        let mut body = vec![0u8; h.size as usize - HEADER_SIZE];
        self.s.read_exact(&mut body).unwrap();
        (h, body)
    }

    fn call(&mut self, cmd: u16, fl: u32, body: &[u8]) -> (Header, Vec<u8>) {
        let id = self.next_id();
        self.s.write_all(&msg(id, cmd, fl, body)).unwrap();
        let r = self.read_reply();
        assert_eq!(r.0.id, id);
        assert!(r.0.is_reply());
        r
    }

    fn call_fds(&mut self, cmd: u16, body: &[u8], fds: &[RawFd]) -> (Header, Vec<u8>) {
        let id = self.next_id();
        send_with_fds(&self.s, &msg(id, cmd, 0, body), fds);
        let r = self.read_reply();
        assert_eq!(r.0.id, id);
        r
    }

    fn expect_errno(&mut self, cmd: u16, body: &[u8], errno: i32) {
        let (h, _) = self.call(cmd, 0, body);
        assert_eq!(h.error(), Some(errno), "command {cmd}");
        assert_eq!(h.size as usize, HEADER_SIZE);
        self.valid_read_works();
    }

    /// A valid REGION_READ on the same connection.
    fn valid_read_works(&mut self) {
        let (h, body) = self.call(9, 0, &region_rw(0, 7, 2, &[]));
        assert_eq!(h.error(), None);
        assert_eq!(&body[16..18], &VENDOR.to_le_bytes());
    }

    /// Whether the server closed this connection.
    fn is_closed(&mut self) -> bool {
        let mut b = [0u8; 1];
        matches!(self.s.read(&mut b), Ok(0) | Err(_))
    }
}

#[test]
fn resynchronisable_errors_keep_the_connection() {
    let h = Harness::start(ServerOptions::default());
    let mut r = Raw::connect(&h);
    r.valid_read_works();
    // Unknown command, with a body.
    r.expect_errno(99, &[1, 2, 3, 4, 5, 6, 7, 8], libc::ENOSYS);
    // Migration / dirty pages / io fds: not supported.
    for cmd in [14u16, 16, 17, 18, 6] {
        r.expect_errno(cmd, &[0; 8], libc::ENOTSUP);
    }
    // Server-to-client commands sent by the client.
    r.expect_errno(11, &[0; 16], libc::ENOTSUP);
    // Truncated fixed part.
    r.expect_errno(9, &[0; 12], libc::EINVAL);
    // Lying count: says 100 bytes, carries 4.
    r.expect_errno(10, &region_rw(0, 0, 100, &[1, 2, 3, 4]), libc::EINVAL);
    // Lying count the other way: says 2, carries 4.
    r.expect_errno(10, &region_rw(0, 0, 2, &[1, 2, 3, 4]), libc::EINVAL);
    // Out-of-range region, offset, and offset+count wrapping.
    r.expect_errno(9, &region_rw(0, 20, 4, &[]), libc::EINVAL);
    r.expect_errno(9, &region_rw(1, 1, 4, &[]), libc::EINVAL);
    r.expect_errno(9, &region_rw(BAR0_SIZE, 0, 4, &[]), libc::EINVAL);
    r.expect_errno(9, &region_rw(u64::MAX - 1, 0, 4, &[]), libc::EINVAL);
    r.expect_errno(9, &region_rw(0x100, 7, 4, &[]), libc::EINVAL);
    // Oversize count (beyond max_data_xfer_size).
    r.expect_errno(9, &region_rw(0, 0, 64 << 20, &[]), libc::E2BIG);
    // REGION_WRITE_MULTI with absurd entry counts or a bad entry.
    r.expect_errno(15, &1000u64.to_le_bytes(), libc::E2BIG);
    let mut wm = 1u64.to_le_bytes().to_vec();
    wm.extend_from_slice(&region_rw(0, 0, 9, &[0; 8]));
    r.expect_errno(15, &wm, libc::EINVAL);
    // SET_IRQS: two data bits; a vector range beyond the index; a wrapping range.
    let trig_none = (1 << 5) | 1;
    r.expect_errno(8, &body_u32s(&[20, (1 << 5) | 3, 2, 0, 1]), libc::EINVAL);
    r.expect_errno(8, &body_u32s(&[20, trig_none, 2, 3, 2]), libc::EINVAL);
    r.expect_errno(
        8,
        &body_u32s(&[20, trig_none, 2, u32::MAX, 1]),
        libc::EINVAL,
    );
    r.expect_errno(
        8,
        &body_u32s(&[20, trig_none, 2, 0, 1_000_000]),
        libc::E2BIG,
    );
    // DMA_MAP: empty, wrapping, unknown flags; DMA_UNMAP of nothing; dirty bitmap.
    let map = |flags: u32, addr: u64, size: u64| {
        let mut b = body_u32s(&[32, flags]);
        for v in [0u64, addr, size] {
            b.extend_from_slice(&v.to_le_bytes());
        }
        b
    };
    r.expect_errno(2, &map(3, 0x1000, 0), libc::EINVAL);
    r.expect_errno(2, &map(3, u64::MAX - 10, 0x1000), libc::EINVAL);
    r.expect_errno(2, &map(0x80, 0x1000, 0x1000), libc::EINVAL);
    let mut unmap = body_u32s(&[24, 0]);
    unmap.extend_from_slice(&0x5000u64.to_le_bytes());
    unmap.extend_from_slice(&0x1000u64.to_le_bytes());
    r.expect_errno(3, &unmap, libc::ENOENT);
    unmap[4] = 1;
    r.expect_errno(3, &unmap, libc::ENOTSUP);
    // VERSION again, and bad JSON in it.
    r.expect_errno(1, b"\0\0\x01\0{}\0", libc::EINVAL);
    // DEVICE_RESET with a body; GET_INFO with a short argsz.
    r.expect_errno(13, &[0; 4], libc::EINVAL);
    r.expect_errno(4, &body_u32s(&[4, 0, 0, 0]), libc::EINVAL);
    drop(r);
    let s = h.finish();
    assert_eq!(s.connections, 1, "one connection served all of it");
}

#[test]
fn wrong_file_descriptors_are_refused_and_closed() {
    let h = Harness::start(ServerOptions::default());
    let mut r = Raw::connect(&h);
    let e1 = eventfd::create().unwrap();
    let e2 = eventfd::create().unwrap();
    let fds = [e1.as_raw_fd(), e2.as_raw_fd()];
    // Extra fds on a message that takes none.
    let (hd, _) = r.call_fds(9, &region_rw(0, 7, 2, &[]), &fds);
    assert_eq!(hd.error(), Some(libc::EINVAL));
    r.valid_read_works();
    // Missing fds: eventfd SET_IRQS for 2 vectors with 1 fd.
    let eventfd_trigger = (1 << 5) | (1 << 2);
    let (hd, _) = r.call_fds(8, &body_u32s(&[20, eventfd_trigger, 2, 0, 2]), &fds[..1]);
    assert_eq!(hd.error(), Some(libc::EINVAL));
    r.valid_read_works();
    // Two fds for one DMA_MAP.
    let mut map = body_u32s(&[32, 3]);
    for v in [0u64, 0x1000, 0x1000] {
        map.extend_from_slice(&v.to_le_bytes());
    }
    let (hd, _) = r.call_fds(2, &map, &fds);
    assert_eq!(hd.error(), Some(libc::EINVAL));
    r.valid_read_works();
    // A DMA_MAP fd that cannot be mapped (an eventfd).
    let (hd, _) = r.call_fds(2, &map, &fds[..1]);
    assert!(hd.error().is_some());
    r.valid_read_works();
    // And the right number works.
    let (hd, _) = r.call_fds(8, &body_u32s(&[20, eventfd_trigger, 2, 0, 2]), &fds);
    assert_eq!(hd.error(), None);
}

#[test]
fn requests_before_version_are_refused_then_version_works() {
    let h = Harness::start(ServerOptions::default());
    let s = UnixStream::connect(h.path()).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let mut r = Raw { s, id: 0 };
    let (hd, _) = r.call(9, 0, &region_rw(0, 7, 2, &[]));
    assert_eq!(hd.error(), Some(libc::EINVAL));
    let (hd, _) = r.call(1, 0, b"\0\0\x01\0{\"capabilities\": 7}\0");
    assert_eq!(hd.error(), Some(libc::EINVAL));
    let (hd, _) = r.call(1, 0, b"\0\0\x01\0{not json\0");
    assert_eq!(hd.error(), Some(libc::EINVAL));
    let (hd, _) = r.call(1, 0, b"\x01\0\0\0{}\0");
    assert_eq!(hd.error(), Some(libc::EINVAL), "major mismatch");
    let (hd, body) = r.call(1, 0, b"\0\0\x09\0{}\0");
    assert_eq!(hd.error(), None);
    assert_eq!(u16::from_le_bytes([body[2], body[3]]), 1, "minor ≤ ours");
    r.valid_read_works();
}

#[test]
fn posted_bad_writes_get_no_reply_and_do_not_desync() {
    let h = Harness::start(ServerOptions::default());
    let mut r = Raw::connect(&h);
    let id = r.next_id();
    r.s.write_all(&msg(id, 10, flags::NO_REPLY, &region_rw(0, 40, 1, &[1])))
        .unwrap();
    r.valid_read_works();
}

fn unsyncable(bytes: &[u8]) {
    let h = Harness::start(ServerOptions::default());
    let mut r = Raw::connect(&h);
    r.s.write_all(bytes).unwrap();
    assert!(r.is_closed(), "server closed the stream for {bytes:?}");
    let mut r2 = Raw::connect(&h);
    r2.valid_read_works();
    drop((r, r2));
    assert_eq!(h.finish().connections, 2);
}

#[test]
fn header_too_small_closes_and_server_accepts_again() {
    let mut b = msg(1, 9, 0, &[]);
    b[4..8].copy_from_slice(&0u32.to_le_bytes());
    unsyncable(&b);
    let mut b = msg(1, 9, 0, &[]);
    b[4..8].copy_from_slice(&8u32.to_le_bytes());
    unsyncable(&b);
}

#[test]
fn size_beyond_maximum_closes() {
    let mut b = msg(1, 10, 0, &[]);
    b[4..8].copy_from_slice(&u32::MAX.to_le_bytes());
    unsyncable(&b);
}

#[test]
fn unknown_message_type_closes() {
    unsyncable(&msg(1, 9, 7, &[0; 16]));
}

#[test]
fn short_header_then_eof_is_a_clean_close() {
    let h = Harness::start(ServerOptions::default());
    let mut r = Raw::connect(&h);
    r.s.write_all(&[1, 2, 3, 4, 5]).unwrap();
    r.s.shutdown(std::net::Shutdown::Write).unwrap();
    assert!(r.is_closed());
    let mut r2 = Raw::connect(&h);
    r2.valid_read_works();
}

#[test]
fn random_garbage_never_kills_the_server() {
    let h = Harness::start(ServerOptions::default());
    let mut seed = 0x9e3779b97f4a7c15u64;
    for _ in 0..50 {
        let s = UnixStream::connect(h.path()).unwrap();
        let mut g = vec![0u8; 64];
        for b in g.iter_mut() {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            *b = seed as u8;
        }
        // Keep sizes small so the server reads whole messages rather than waiting.
        g[4..8].copy_from_slice(&((seed % 48) as u32 + 16).to_le_bytes());
        let _ = (&s).write_all(&g);
        drop(s);
    }
    let mut r = Raw::connect(&h);
    r.valid_read_works();
}
