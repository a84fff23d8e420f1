//! What `replay` and `record` share: stopping on SIGINT/SIGTERM and the QEMU command line.

use std::path::Path;
use std::sync::atomic::AtomicBool;
use std::sync::Arc;

use anyhow::Context;

/// A flag that SIGINT and SIGTERM set, so a server finishes cleanly (and a recorder writes its
/// footer) instead of dying.
pub fn stop_on_signals() -> anyhow::Result<Arc<AtomicBool>> {
    let stop = Arc::new(AtomicBool::new(false));
    for sig in [signal_hook::consts::SIGINT, signal_hook::consts::SIGTERM] {
        signal_hook::flag::register(sig, stop.clone())
            .with_context(|| format!("cannot install the handler for signal {sig}"))?;
    }
    Ok(stop)
}

/// The `-device` argument for QEMU ≥ 10.1's vfio-user client. QEMU only accepts the socket in its
/// JSON form.
pub fn qemu_device_arg(socket: &Path) -> String {
    let path = std::path::absolute(socket).unwrap_or_else(|_| socket.to_path_buf());
    let json = serde_json::json!({
        "driver": "vfio-user-pci",
        "id": "hwrr0",
        "socket": {"type": "unix", "path": path.display().to_string()},
    });
    format!("-device '{json}'")
}
