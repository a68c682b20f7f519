#![no_main]

libfuzzer_sys::fuzz_target!(|bytes: &[u8]| ferry_fuzz::manifest(bytes));
