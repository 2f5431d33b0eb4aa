//! The incremental frame decoder fed arbitrary bytes in arbitrary chunks:
//! never panics, never buffers more than one frame plus one chunk, and every
//! frame it yields re-encodes to a frame that decodes to the same bytes.
#![no_main]

use libfuzzer_sys::fuzz_target;
use vesemir_protocol::frame::{encode, FrameDecoder, HEADER_LEN, MAX_FRAME_LEN};
use vesemir_protocol::job::JobEvent;

fuzz_target!(|input: (Vec<u8>, Vec<u8>)| {
    let (cuts, data) = input;
    let mut dec = FrameDecoder::new();
    let mut rest: &[u8] = &data;
    let mut cuts = cuts.into_iter().cycle();
    while !rest.is_empty() {
        let n = (cuts.next().unwrap_or(255) as usize + 1).min(rest.len());
        let (chunk, tail) = rest.split_at(n);
        rest = tail;
        dec.push(chunk);
        loop {
            match dec.next_frame::<JobEvent>() {
                Ok(Some(ev)) => {
                    let again = encode(&ev).expect("a decoded event encodes");
                    let back: JobEvent =
                        vesemir_protocol::decode(&again).expect("a re-encoded event decodes");
                    assert_eq!(encode(&back).unwrap(), again, "round trip changed the event");
                }
                Ok(None) => break,
                // The connection is dropped on any error; nothing more to check.
                Err(_) => return,
            }
        }
        assert!(
            dec.buffered() <= HEADER_LEN + MAX_FRAME_LEN + 256,
            "decoder buffers {} bytes",
            dec.buffered()
        );
    }
});
