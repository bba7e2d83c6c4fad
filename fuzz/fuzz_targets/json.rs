#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| iotrules_fuzz::json(data));
