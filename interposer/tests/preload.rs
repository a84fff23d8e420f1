//! Loads the real `libhwrr_vfio.so` with `LD_PRELOAD` into a Python process that walks the VFIO
//! sequence through libc (`open`, `stat`, `readlink`, `ioctl`, `pread`, `close`), so the exported
//! wrappers, the fd bookkeeping and the pass-through of everything else are tested without QEMU.
//! Skips when `python3` is missing.

use std::path::{Path, PathBuf};
use std::process::Command;

use hwrr_formats::{
    AccessData, DeviceIdentity, Event, EventKind, RegionAccess, RegionInfo, RegionKind,
    TraceHeader, TraceWriter, WriterOptions,
};

fn build_cdylib() -> PathBuf {
    // Integration tests link the rlib; the preload needs the cdylib, built by the same cargo in
    // this test's own profile, so `cargo test --release` reuses its release dependencies instead
    // of building a second, debug tree.
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let (profile_args, profile_dir): (&[&str], &str) = if cfg!(debug_assertions) {
        (&[], "debug")
    } else {
        (&["--release"], "release")
    };
    let status = Command::new(cargo)
        .args(["build", "-p", "hwrr-interposer", "--lib"])
        .args(profile_args)
        .status()
        .expect("run cargo build");
    assert!(status.success(), "cargo build of the cdylib failed");
    let target = std::env::var("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|_| Path::new(env!("CARGO_MANIFEST_DIR")).join("../target"));
    let lib = target.join(profile_dir).join("libhwrr_vfio.so");
    assert!(lib.exists(), "{} missing", lib.display());
    lib
}

fn write_trace(path: &Path) {
    let mut config = vec![0u8; 256];
    config[0..4].copy_from_slice(&[0x86, 0x80, 0xd3, 0x10]);
    let header = TraceHeader {
        device: DeviceIdentity {
            vendor_id: 0x8086,
            device_id: 0x10d3,
            ..Default::default()
        },
        config_space: config,
        regions: vec![RegionInfo {
            index: 0,
            kind: RegionKind::Mmio,
            size: 0x20000,
            flags: 7,
            alias_of: None,
        }],
        ..Default::default()
    };
    let read = |seq: u64, offset: u64, value: u64| {
        Event::new(
            seq,
            seq,
            EventKind::MmioRead(RegionAccess {
                region: 0,
                offset,
                data: AccessData::Value { size: 4, value },
            }),
        )
    };
    let mut w = TraceWriter::create(path, &header, WriterOptions::default()).unwrap();
    w.append(&read(0, 0x5400, 0x12005452)).unwrap();
    w.append(&read(1, 0x5404, 0x8000_5634)).unwrap();
    w.finish().unwrap();
}

const SCRIPT: &str = r#"
import os, sys, fcntl, struct, json, ctypes
libc = ctypes.CDLL(None, use_errno=True)
bdf = "0000:00:19.0"
sysdev = "/sys/bus/pci/devices/" + bdf
assert os.path.isdir(sysdev), "sysfs dir"
link = os.readlink(sysdev + "/iommu_group")
group = int(link.rsplit("/", 1)[1])
g = os.open("/dev/vfio/%d" % group, os.O_RDWR)
c = os.open("/dev/vfio/vfio", os.O_RDWR)
assert fcntl.ioctl(c, 0x3b64) == 0                      # GET_API_VERSION
assert fcntl.ioctl(c, 0x3b65, 3) == 1                   # CHECK_EXTENSION TYPE1v2
st = bytearray(struct.pack("II", 8, 0))
fcntl.ioctl(g, 0x3b67, st)                              # GROUP_GET_STATUS
assert struct.unpack("II", st)[1] & 1, "viable"
fcntl.ioctl(g, 0x3b68, struct.pack("i", c))             # GROUP_SET_CONTAINER
assert fcntl.ioctl(c, 0x3b66, 3) == 0                   # SET_IOMMU
d = libc.ioctl(g, ctypes.c_ulong(0x3b6a), ctypes.c_char_p(bdf.encode()))  # GET_DEVICE_FD
assert d >= 0, ctypes.get_errno()
ri = bytearray(struct.pack("IIIIQQ", 32, 0, 0, 0, 0, 0))
fcntl.ioctl(d, 0x3b6c, ri)                              # GET_REGION_INFO BAR0
_, flags, _, _, size, off = struct.unpack("IIIIQQ", ri)
assert size == 0x20000 and off == 0 and not flags & 4, (size, off, flags)
ral = struct.unpack("<I", os.pread(d, 4, off + 0x5400))[0]
rah = struct.unpack("<I", os.pread(d, 4, off + 0x5404))[0]
cfg = os.pread(d, 4, 7 << 40)
try:
    fcntl.ioctl(d, 0x3b7e)
    unsupported = "succeeded"
except OSError as e:
    unsupported = e.errno
# Everything else passes through: a real file still works.
with open(sys.argv[1], "rb") as f:
    real = len(f.read(4))
for fd in (d, g, c):
    os.close(fd)
print(json.dumps({"ral": ral, "rah": rah, "cfg": cfg.hex(), "unsupported": unsupported, "real": real}))
"#;

#[test]
fn preloaded_shim_serves_vfio_to_an_unmodified_process() {
    if Command::new("python3")
        .arg("-c")
        .arg("pass")
        .status()
        .is_err()
    {
        eprintln!("SKIPPED: python3 is not installed");
        return;
    }
    let lib = build_cdylib();
    let dir = tempfile::tempdir().unwrap();
    let trace = dir.path().join("t.hwrr");
    write_trace(&trace);
    let report = dir.path().join("report.json");
    let out = Command::new("python3")
        .arg("-c")
        .arg(SCRIPT)
        .arg(&trace)
        .env("LD_PRELOAD", &lib)
        .env("HWRR_MODE", "replay")
        .env("HWRR_TRACE", format!("00:19.0={}", trace.display()))
        .env("HWRR_REPORT", &report)
        .output()
        .expect("run python3");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "python failed:\n{stdout}\n{stderr}");
    let v: serde_json::Value = serde_json::from_str(stdout.trim()).expect("json line");
    assert_eq!(v["ral"], 0x12005452);
    assert_eq!(v["rah"], 0x8000_5634u32);
    assert_eq!(v["cfg"], "8680d310");
    assert_eq!(v["unsupported"], libc::ENOTTY);
    assert_eq!(v["real"], 4);
    // The report is written at exit, in `hwrr replay --report` form.
    let r: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&report).expect("report written")).unwrap();
    assert_eq!(r["matched"], 2);
    assert_eq!(r["accesses"], 2);
    assert_eq!(r["diverged"], false);
}

#[test]
fn helper_process_that_never_opens_the_device_writes_no_report() {
    if Command::new("python3")
        .arg("-c")
        .arg("pass")
        .status()
        .is_err()
    {
        eprintln!("SKIPPED: python3 is not installed");
        return;
    }
    let lib = build_cdylib();
    let dir = tempfile::tempdir().unwrap();
    let trace = dir.path().join("t.hwrr");
    write_trace(&trace);
    let report = dir.path().join("report.json");
    // QEMU's helpers (guestfwd commands, bridge helper) inherit LD_PRELOAD and HWRR_*; they must
    // not clobber QEMU's report. Stat-ing an unrelated /sys path goes through the shim's path filter.
    let out = Command::new("python3")
        .arg("-c")
        .arg("import os; os.stat('/sys'); print(open(os.devnull).read() == '')")
        .env("LD_PRELOAD", &lib)
        .env("HWRR_MODE", "replay")
        .env("HWRR_TRACE", &trace)
        .env("HWRR_REPORT", &report)
        .output()
        .expect("run python3");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "True");
    assert!(
        !report.exists(),
        "a process that never opened the device wrote a report"
    );
}
