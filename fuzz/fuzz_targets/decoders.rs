//! Fuzz the frame reader and every message decoder through their shared entry point.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let _ = engine::fuzzing::decode_untrusted(data);
});
