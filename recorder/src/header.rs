//! The trace header a recording starts with: the backend's description plus capture metadata.

use std::collections::BTreeMap;
use std::time::{SystemTime, UNIX_EPOCH};

use hwrr_device::DeviceDescription;
use hwrr_formats::{CaptureMeta, TraceHeader};

fn uname_field(f: impl Fn(&libc::utsname) -> &[libc::c_char]) -> Option<String> {
    // SAFETY: utsname is plain data; uname fills it and we read NUL-terminated fields within it.
    let mut u: libc::utsname = unsafe { std::mem::zeroed() };
    // SAFETY: `u` is a live, writable utsname.
    if unsafe { libc::uname(&mut u) } != 0 {
        return None;
    }
    let field = f(&u);
    let bytes: Vec<u8> = field
        .iter()
        .take_while(|c| **c != 0)
        .map(|c| *c as u8)
        .collect();
    String::from_utf8(bytes).ok()
}

/// The header for a recording of a device described by `desc`: identity, config space, regions,
/// IRQs and ROM from the backend; tool, kernel, host and start time of this capture; `labels`.
pub fn capture_header(
    desc: &DeviceDescription,
    source: &str,
    labels: BTreeMap<String, String>,
) -> TraceHeader {
    let start_unix_ns = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64)
        .unwrap_or(0);
    TraceHeader {
        device: desc.identity.clone(),
        config_space: desc.config_space.clone(),
        regions: desc.regions.clone(),
        irqs: desc.irqs.clone(),
        rom: desc.rom.clone(),
        capture: CaptureMeta {
            tool: format!("hwrr {}", env!("CARGO_PKG_VERSION")),
            source: source.to_string(),
            kernel: uname_field(|u| &u.release),
            host: uname_field(|u| &u.nodename),
            start_unix_ns,
        },
        labels,
        start_state: None,
    }
}
