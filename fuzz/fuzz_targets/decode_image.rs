//! Upload bytes through decoding (under limits) and CLIP preprocessing: no input may panic or
//! allocate past the limits.
#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let _ = clipsteer_server::harness::decode_and_preprocess(data);
});
