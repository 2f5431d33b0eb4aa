//! Every protocol message decoded from an arbitrary payload (the first byte
//! picks the type): no panic, and whatever decodes re-encodes stably.
#![no_main]

use libfuzzer_sys::fuzz_target;
use serde::{de::DeserializeOwned, Serialize};
use vesemir_protocol::control::{AgentMessage, ControllerMessage, Facts};
use vesemir_protocol::enroll::{EnrollRequest, EnrollResponse};
use vesemir_protocol::frame::{decode_payload, encode, HEADER_LEN};
use vesemir_protocol::job::{JobEvent, JobOutcome, JobRequest};
use vesemir_protocol::{Hello, Welcome};

fn check<T: Serialize + DeserializeOwned>(payload: &[u8]) {
    let Ok(msg) = decode_payload::<T>(payload) else {
        return;
    };
    let frame = encode(&msg).expect("a decoded message encodes");
    let back: T = decode_payload(&frame[HEADER_LEN..]).expect("a re-encoded message decodes");
    assert_eq!(encode(&back).unwrap(), frame, "round trip changed the message");
}

fuzz_target!(|data: &[u8]| {
    let Some((kind, payload)) = data.split_first() else {
        return;
    };
    match kind % 10 {
        0 => check::<Hello>(payload),
        1 => check::<Welcome>(payload),
        2 => check::<AgentMessage>(payload),
        3 => check::<ControllerMessage>(payload),
        4 => check::<Facts>(payload),
        5 => check::<JobRequest>(payload),
        6 => check::<JobEvent>(payload),
        7 => check::<JobOutcome>(payload),
        8 => check::<EnrollRequest>(payload),
        _ => check::<EnrollResponse>(payload),
    }
    // The close codes a peer sends.
    if payload.len() >= 8 {
        let code = u64::from_le_bytes(payload[..8].try_into().unwrap());
        if let Some(r) = vesemir_protocol::control::CloseReason::from_code(code) {
            assert_eq!(u64::from(r.code()), code);
        }
    }
});
