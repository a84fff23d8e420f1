//! Real processes and sockets: `hwrr replay` serves a trace, `hwrr record --vfio-user` proxies it
//! to a driver and records, and the new trace's access stream equals the original's.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use hwrr_testdev::driver::{self, DriverOptions, DMA_AREA_SIZE};
use hwrr_testdev::TestDevice;
use hwrr_vfio_user::{Client, ClientOptions, RemoteDevice, Server, ServerOptions};

fn hwrr() -> Command {
    Command::new(env!("CARGO_BIN_EXE_hwrr"))
}

fn wait_for_socket(path: &Path, child: &mut Child) {
    let deadline = Instant::now() + Duration::from_secs(30);
    while !path.exists() {
        if let Some(status) = child.try_wait().unwrap() {
            panic!("{path:?}: the server exited early with {status}");
        }
        assert!(Instant::now() < deadline, "{path:?} never appeared");
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// Starts `hwrr record --vfio-user SERVER --listen LISTEN -o TRACE EXTRA...` and waits for its
/// socket.
fn start_recording(server: &Path, listen: &Path, trace: &Path, extra: &[&str]) -> Child {
    let mut record = hwrr()
        .args(["record", "--vfio-user"])
        .arg(server)
        .arg("--listen")
        .arg(listen)
        .arg("-o")
        .arg(trace)
        .args(extra)
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    wait_for_socket(listen, &mut record);
    record
}

fn finish(mut child: Child, what: &str) -> String {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            let mut err = String::new();
            use std::io::Read;
            child
                .stderr
                .take()
                .unwrap()
                .read_to_string(&mut err)
                .unwrap();
            assert!(status.success(), "{what} failed with {status}: {err}");
            return err;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            panic!("{what} did not exit");
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

#[test]
fn record_a_replay_and_get_the_same_accesses() {
    let dir = tempfile::tempdir().unwrap();
    let p = |n: &str| -> PathBuf { dir.path().join(n) };
    let original = p("original.hwrr");
    let demo = hwrr().args(["demo", "-o"]).arg(&original).output().unwrap();
    assert!(demo.status.success(), "{demo:?}");

    let (replay_sock, record_sock) = (p("replay.sock"), p("record.sock"));
    let report = p("report.json");
    let mut replay = hwrr()
        .arg("replay")
        .arg(&original)
        .arg("--listen")
        .arg(&replay_sock)
        .args(["--once", "--check", "--report"])
        .arg(&report)
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    wait_for_socket(&replay_sock, &mut replay);
    let again = p("again.hwrr");
    let record = start_recording(
        &replay_sock,
        &record_sock,
        &again,
        &["--once", "--label", "test=record_replay"],
    );

    // The mode of the sockets: only their owner may connect.
    use std::os::unix::fs::PermissionsExt;
    for s in [&replay_sock, &record_sock] {
        assert_eq!(
            std::fs::metadata(s).unwrap().permissions().mode() & 0o777,
            0o600
        );
    }

    let client = Client::connect(&record_sock, ClientOptions::default()).unwrap();
    let mut dev = RemoteDevice::new(client).unwrap();
    let iova = 0x1000_0000;
    let mem = driver::setup_guest_memory(&mut dev, iova, DMA_AREA_SIZE).unwrap();
    let seen = driver::run(
        &mut dev,
        &mem,
        DriverOptions {
            iova_base: iova,
            ..DriverOptions::default()
        },
    )
    .unwrap();
    assert_eq!(seen.id, u32::from_le_bytes(*b"HWRR"));
    assert_eq!(seen.rx_frames.len(), 3);
    drop(dev);

    let rec_err = finish(record, "hwrr record");
    assert!(rec_err.contains("wrote"), "{rec_err}");
    finish(replay, "hwrr replay --check");

    let v: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&report).unwrap()).unwrap();
    assert_eq!(v["diverged"], false, "{v}");
    assert_eq!(v["policy"], "strict");
    assert!(v["accesses"].as_u64().unwrap() > 100);
    assert_eq!(v["accesses"], v["matched"]);

    let diff = hwrr()
        .arg("diff")
        .arg(&original)
        .arg(&again)
        .output()
        .unwrap();
    assert_eq!(
        diff.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&diff.stdout)
    );
    let info = hwrr()
        .args(["info", "--json"])
        .arg(&again)
        .output()
        .unwrap();
    let info: serde_json::Value = serde_json::from_slice(&info.stdout).unwrap();
    assert_eq!(info["capture"]["source"], "vfio-user");
    assert_eq!(info["labels"]["test"], "record_replay");
    assert!(info["by_kind"]["irq"].as_u64().unwrap() > 0);
}

/// SIGTERM (and SIGINT) make `hwrr record` finish the trace: footer, index, a sound file.
#[test]
fn sigterm_finishes_the_trace() {
    let dir = tempfile::tempdir().unwrap();
    let p = |n: &str| -> PathBuf { dir.path().join(n) };
    let original = p("original.hwrr");
    let demo = hwrr().args(["demo", "-o"]).arg(&original).output().unwrap();
    assert!(demo.status.success(), "{demo:?}");
    let (replay_sock, record_sock) = (p("replay.sock"), p("record.sock"));
    let mut replay = hwrr()
        .arg("replay")
        .arg(&original)
        .arg("--listen")
        .arg(&replay_sock)
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    wait_for_socket(&replay_sock, &mut replay);
    for signal in [libc_sigterm(), libc_sigint()] {
        let trace = p(&format!("signalled-{signal}.hwrr"));
        let record = start_recording(&replay_sock, &record_sock, &trace, &[]);
        // A VMM session: a few accesses go into the trace before the signal.
        {
            let client = Client::connect(&record_sock, ClientOptions::default()).unwrap();
            let mut dev = RemoteDevice::new(client).unwrap();
            let mut id = [0u8; 4];
            hwrr_device::Device::config_read(&mut dev, 0, &mut id).unwrap();
        }
        let kill = Command::new("kill")
            .arg(format!("-{signal}"))
            .arg(record.id().to_string())
            .status()
            .unwrap();
        assert!(kill.success());
        finish(record, "hwrr record after a signal");
        let verify = hwrr().arg("verify").arg(&trace).output().unwrap();
        assert_eq!(verify.status.code(), Some(0), "{verify:?}");
        let reader = hwrr_formats::TraceReader::open(&trace).unwrap();
        assert!(reader.counts().get(hwrr_formats::KindTag::ConfigRead) >= 1);
        let _ = std::fs::remove_file(&record_sock);
    }
    let _ = replay.kill();
    let _ = replay.wait();
}

fn libc_sigterm() -> i32 {
    15
}

fn libc_sigint() -> i32 {
    2
}

#[test]
fn the_recorder_offers_the_vmm_what_the_remote_server_negotiated() {
    // A server with tighter limits than hwrr's own: the proxy must not accept from the VMM what
    // the server behind it would refuse (more descriptors or mappings, larger transfers).
    let dir = tempfile::tempdir().unwrap();
    let p = |n: &str| -> PathBuf { dir.path().join(n) };
    let (backend_sock, record_sock) = (p("backend.sock"), p("record.sock"));
    let mut server = Server::bind(
        &backend_sock,
        ServerOptions {
            once: true,
            max_msg_fds: 4,
            max_dma_maps: 7,
            max_data_xfer_size: 64 << 10,
            ..ServerOptions::default()
        },
    )
    .unwrap();
    let backend = std::thread::spawn(move || {
        let mut device = TestDevice::new();
        server.serve(&mut device).map(|_| ())
    });
    let record = start_recording(&backend_sock, &record_sock, &p("t.hwrr"), &["--once"]);
    let client = Client::connect(&record_sock, ClientOptions::default()).unwrap();
    let caps = client.server_capabilities();
    assert_eq!(
        (caps.max_msg_fds, caps.max_dma_maps, caps.max_data_xfer_size),
        (4, 7, 64 << 10),
        "{caps:?}"
    );
    drop(client);
    finish(record, "hwrr record");
    backend.join().unwrap().unwrap();
}
