//! Arbitrary bytes to every vfio-user parser, and to a live server connection over a socketpair.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    hwrr_vfio_user::fuzzing::parse_messages(data);
    hwrr_vfio_user::fuzzing::serve_bytes(data);
});
