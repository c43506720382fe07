#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| lumen::fuzzing::run("streams_file", data));
