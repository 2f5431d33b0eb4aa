//! Bytes as the JSON body of every API route that takes one, through the
//! route's validation: errors, never a panic; a decoded deployment request
//! survives the store round trip unchanged.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    vesemir_controller::fuzzing::api_bodies(data);
});
