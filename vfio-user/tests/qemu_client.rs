//! QEMU's own vfio-user client (`-device vfio-user-pci`, QEMU ≥ 10.1) against our server, driven
//! through qtest: QEMU realizes the device over the socket (VERSION, infos, config space, ROM,
//! DMA_MAP of its private RAM without fds), the test programs BAR0 through PCI config cycles, and
//! makes the device DMA into and out of guest RAM. That only works if the server detected QEMU and
//! spoke its DMA_READ/DMA_WRITE layout.
//!
//! Needs `HWRR_QEMU=/path/to/qemu-system-x86_64` (≥ 10.1, e.g. built by
//! `../shared/harness/build-qemu-vfio-user.sh`); skipped otherwise.

mod common;

use std::io::{BufRead, BufReader, Write};
use std::process::{Command, Stdio};

use common::*;
use hwrr_vfio_user::protocol::DmaLayout;
use hwrr_vfio_user::server::ServerOptions;

struct Qtest {
    child: std::process::Child,
    out: BufReader<std::process::ChildStdout>,
}

impl Qtest {
    fn cmd(&mut self, line: &str) -> String {
        let stdin = self.child.stdin.as_mut().unwrap();
        writeln!(stdin, "{line}").unwrap();
        stdin.flush().unwrap();
        loop {
            let mut resp = String::new();
            let n = self.out.read_line(&mut resp).unwrap();
            assert!(n > 0, "QEMU exited during `{line}`");
            let resp = resp.trim().to_string();
            if resp.starts_with("OK") || resp.starts_with("FAIL") {
                assert!(resp.starts_with("OK"), "`{line}` -> {resp}");
                return resp;
            }
            // Asynchronous "IRQ raise/lower" lines.
        }
    }

    fn read(&mut self, line: &str) -> u64 {
        let r = self.cmd(line);
        let v = r.trim_start_matches("OK").trim();
        u64::from_str_radix(v.trim_start_matches("0x"), 16).unwrap()
    }
}

#[test]
fn qemu_vfio_user_pci_drives_our_server_with_its_dma_layout() {
    let Some(qemu) = std::env::var_os("HWRR_QEMU") else {
        eprintln!("skipped: set HWRR_QEMU to a qemu-system-x86_64 >= 10.1 with vfio-user-pci");
        return;
    };
    let h = Harness::start(ServerOptions::default());
    let log = h.log.clone();
    let dev = format!(
        r#"{{"driver":"vfio-user-pci","id":"vu0","addr":"0x4","socket":{{"type":"unix","path":"{}"}}}}"#,
        h.path().display()
    );
    let mut child = Command::new(qemu)
        .args([
            "-machine",
            "q35,accel=qtest",
            "-qtest",
            "stdio",
            "-display",
            "none",
            "-nodefaults",
            "-m",
            "64",
            "-device",
            &dev,
        ])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .unwrap();
    let out = BufReader::new(child.stdout.take().unwrap());
    let mut q = Qtest { child, out };

    // Vendor id through config space (QEMU reads it from the device at realize).
    q.cmd("outl 0xcf8 0x80002000");
    assert_eq!(q.read("inw 0xcfc"), VENDOR as u64);
    // BAR0 at 0xfe000000, memory decode and bus mastering on.
    q.cmd("outl 0xcf8 0x80002010");
    q.cmd("outl 0xcfc 0xfe000000");
    q.cmd("outl 0xcf8 0x80002004");
    q.cmd("outw 0xcfc 0x0006");

    // Register round trip through QEMU's MMIO path.
    q.cmd("writel 0xfe000020 0xcafef00d");
    assert_eq!(q.read("readl 0xfe000020"), 0xcafef00d);

    // Device DMA_WRITE into QEMU's private guest RAM. The server posts it (QEMU handles server
    // requests on its main loop); QEMU applies it when its main loop next runs, so poll guest
    // memory a bounded number of qtest commands (each one is a main-loop iteration).
    q.cmd("writeq 0xfe000200 0x0706050403020100");
    q.cmd("writeq 0xfe000208 0x0f0e0d0c0b0a0908");
    q.cmd("writeq 0xfe000100 0x100000");
    q.cmd("writel 0xfe000108 16");
    q.cmd("writel 0xfe00010c 1");
    assert_eq!(q.read("readl 0xfe000110"), 0, "DMA write status");
    let mut landed = false;
    for _ in 0..100 {
        if q.read("readq 0x100000") == 0x0706050403020100 {
            landed = true;
            break;
        }
    }
    assert!(landed, "DMA_WRITE reached guest RAM");
    assert_eq!(q.read("readq 0x100008"), 0x0f0e0d0c0b0a0908);
    assert_eq!(q.read("readb 0x100010"), 0, "nothing written past the end");
    assert_eq!(
        q.read("readb 0x0fffff"),
        0,
        "nothing written before the start"
    );

    // Device DMA_READ from guest RAM. The server must wait for QEMU's reply, which QEMU can
    // only send while no vCPU (here: qtest) waits on the device: leave QEMU idle until the
    // device finished the command, then read the result.
    q.cmd("writeq 0x200000 0x1122334455667788");
    q.cmd("writeq 0xfe000100 0x200000");
    q.cmd("writel 0xfe000108 8");
    let before = log.lock().unwrap().commands;
    q.cmd("writel 0xfe00010c 2");
    let mut done = false;
    for _ in 0..500 {
        if log.lock().unwrap().commands > before {
            done = true;
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
    assert!(done, "the device's DMA_READ was answered");
    assert_eq!(q.read("readl 0xfe000110"), 0, "DMA read status");
    assert_eq!(q.read("readq 0xfe000200"), 0x1122334455667788);

    // qtest does not end QEMU when its stream closes; the test owns this child.
    let _ = q.child.kill();
    let _ = q.child.wait();
    let s = h.finish();
    let last = s.last.expect("QEMU connected");
    assert_eq!(last.dma_layout, Some(DmaLayout::Qemu), "Auto detected QEMU");
    assert!(last.dma_messages >= 2);
    assert!(log.lock().unwrap().maps.iter().any(|(_, with_fd)| !with_fd));
}
