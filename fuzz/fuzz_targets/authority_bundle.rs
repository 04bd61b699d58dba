#![no_main]
//! `carnet_syncd::fuzzing::authority_bundle`: see there for the input and the property.

libfuzzer_sys::fuzz_target!(|data: &[u8]| carnet_syncd::fuzzing::authority_bundle(data));
