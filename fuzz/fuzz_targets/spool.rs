//! The audit spool's frame reader, as recovery runs it over a torn segment.
#![no_main]
use libfuzzer_sys::fuzz_target;
use veil_gateway::audit::spool;

fuzz_target!(|data: &[u8]| {
    let mut off = 0;
    while let Some((frame, next)) = spool::frame_at(data, off) {
        assert!(next > off && next <= data.len() && frame.len() == next - off - 8);
        off = next;
    }
});
