//! The small state file `bind` leaves behind: which driver the device had before vfio-pci, so that
//! `unbind` and `reset` can give it back.

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use crate::{Bdf, HostError, HostRoot};

/// What `bind` recorded about one device.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct BindState {
    /// The device (`0000:00:19.0`).
    pub bdf: String,
    /// `vendor:device` in hex, for a sanity check when the state is used.
    pub ids: String,
    /// The driver the device was bound to before, `None` if it had none.
    pub previous_driver: Option<String>,
}

/// `state_dir/<bdf>.json`.
pub fn path(root: &HostRoot, bdf: &Bdf) -> PathBuf {
    root.state_dir.join(format!("{bdf}.json"))
}

/// The recorded state, if there is a readable one. A corrupt file counts as absent (the caller
/// falls back to the modalias) rather than blocking a recovery.
pub fn load(root: &HostRoot, bdf: &Bdf) -> Option<BindState> {
    let text = std::fs::read_to_string(path(root, bdf)).ok()?;
    serde_json::from_str(&text).ok()
}

/// Records `state` (creating the state directory).
pub fn save(root: &HostRoot, bdf: &Bdf, state: &BindState) -> Result<(), HostError> {
    let p = path(root, bdf);
    let err = |source| HostError::State {
        path: p.clone(),
        source,
    };
    std::fs::create_dir_all(&root.state_dir).map_err(err)?;
    let json = serde_json::to_string_pretty(state)
        .map_err(|e| err(std::io::Error::other(e.to_string())))?;
    let tmp = p.with_extension("json.tmp");
    std::fs::write(&tmp, json + "\n").map_err(err)?;
    std::fs::rename(&tmp, &p).map_err(err)
}

/// Forgets the state; a missing file is fine.
pub fn remove(root: &HostRoot, bdf: &Bdf) -> Result<(), HostError> {
    let p = path(root, bdf);
    match std::fs::remove_file(&p) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(source) => Err(HostError::State { path: p, source }),
    }
}
