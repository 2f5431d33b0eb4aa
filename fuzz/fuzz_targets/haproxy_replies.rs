//! HAProxy runtime API replies (`get weight`, `show servers state`,
//! `show stat`) and name validation: errors, never a panic; a validated
//! name never carries a byte that would split a runtime API command.
#![no_main]

use libfuzzer_sys::fuzz_target;
use vesemir_agent::haproxy::{parse_servers_state, parse_stat, parse_weight, validate_name};

fuzz_target!(|data: &[u8]| {
    let Some((kind, rest)) = data.split_first() else {
        return;
    };
    let reply = String::from_utf8_lossy(rest);
    match kind % 4 {
        0 => {
            let _ = parse_weight("get weight b/s", &reply);
        }
        1 => {
            let _ = parse_servers_state("show servers state b", &reply);
        }
        2 => {
            let _ = parse_stat("show stat", &reply);
        }
        _ => {
            if validate_name("server", &reply).is_ok() {
                assert!(
                    !reply.contains([' ', ';', '\n', '\r', '\0', '/', '\t']),
                    "validated name {reply:?} carries a separator"
                );
            }
        }
    }
});
