//! The corpus logs, imported with `hwrr-import` as `hwrr import qemu-trace` would.

use std::path::{Path, PathBuf};

use hwrr_formats::{Event, TraceHeader};

/// The corpus directory: `$HWRR_CORPUS` when set, else `../shared/corpus` next to the repository.
pub fn corpus_dir() -> Option<PathBuf> {
    let dir = match std::env::var_os("HWRR_CORPUS") {
        Some(d) => PathBuf::from(d),
        None => Path::new(env!("CARGO_MANIFEST_DIR")).join("../../shared/corpus"),
    };
    dir.is_dir().then_some(dir)
}

/// Imports `trace.device.log.zst` of corpus folder `name` with the default import options.
pub fn import(name: &str) -> Option<(TraceHeader, Vec<Event>)> {
    let path = corpus_dir()?.join(name).join("trace.device.log.zst");
    if !path.is_file() {
        return None;
    }
    let import = match hwrr_import::scan(&path, &hwrr_import::ImportOptions::default()) {
        Ok(i) => i,
        Err(e) => {
            eprintln!("cannot import {}: {e}", path.display());
            return None;
        }
    };
    let (events, _) = import.collect_events().ok()?;
    Some((import.header().clone(), events))
}
