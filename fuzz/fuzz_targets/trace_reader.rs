#![no_main]
//! Untrusted trace bytes: open, iterate, seek, verify, recover.

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    hwrr_formats::fuzzing::check_untrusted_trace(data);
});
