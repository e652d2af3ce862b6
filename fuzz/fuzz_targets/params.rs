//! The `params` field of a describe request: any bytes give params or an error, never a panic.
#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let _ = clipsteer_server::harness::params(data);
});
