//! The check the fuzz target runs on untrusted bytes, shared with the corpus replay test so CI (no
//! nightly toolchain) exercises the same code.

use crate::reader::TraceReader;
use crate::recover::recover_bytes;

/// Opens `bytes` as a trace, iterates, seeks, verifies, and runs the recovery scan. Any outcome is
/// fine except a panic or a broken promise: a trace that verifies must iterate all its events, and
/// whatever recovery produces must open, verify and hold the events it reports.
pub fn check_untrusted_trace(bytes: &[u8]) {
    if let Ok(reader) = TraceReader::from_bytes(bytes.to_vec()) {
        let verified = reader.verify();
        let mut decoded = 0u64;
        let mut failed = false;
        for event in reader.iter() {
            match event {
                Ok(_) => decoded += 1,
                Err(_) => {
                    failed = true;
                    break;
                }
            }
        }
        if verified.is_ok() {
            assert!(!failed, "a verified trace failed to iterate");
            assert_eq!(
                decoded,
                reader.event_count(),
                "a verified trace lost events"
            );
        }
        let _ = reader.iter_from(reader.first_seq() + decoded / 2).next();
        if let Some((first, last)) = reader.time_range() {
            let _ = reader.try_seq_at_time(first + (last - first) / 2);
        }
    }
    if let Ok((report, out)) = recover_bytes(bytes) {
        let recovered = match TraceReader::from_bytes(out) {
            Ok(r) => r,
            Err(e) => panic!("recovered trace does not open: {e}"),
        };
        if let Err(e) = recovered.verify() {
            panic!("recovered trace does not verify: {e}");
        }
        assert_eq!(recovered.event_count(), report.events);
    }
}
