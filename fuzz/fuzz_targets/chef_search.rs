//! A Chef partial-search answer (any bytes a Chef server or a proxy may
//! send) turned into hosts: errors, never a panic.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let _ = vesemir_controller::fuzzing::chef_search_answer(data);
});
