//! Fuzz target: the MLLP framer must never panic and never yield a frame over the limit.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let max = 4096;
    let (frames, _stats, _error) = mllp::decode_all(data, max);
    for frame in frames {
        assert!(frame.len() <= max);
    }
});
