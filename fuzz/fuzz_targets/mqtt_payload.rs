#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| lumen::fuzzing::run("mqtt_payload", data));
