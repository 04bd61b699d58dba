#![no_main]
//! `carnet_syncd::fuzzing::fhir`: see there for the input and the property.

libfuzzer_sys::fuzz_target!(|data: &[u8]| carnet_syncd::fuzzing::fhir(data));
