#![no_main]
//! `carnet_syncd::fuzzing::frame`: see there for the input and the property.

libfuzzer_sys::fuzz_target!(|data: &[u8]| carnet_syncd::fuzzing::frame(data));
