//! Length-prefixed bincode frames.
//!
//! A frame is a 4-byte big-endian payload length followed by the bincode
//! (serde, standard config) encoding of one message. The length is checked
//! against [`MAX_FRAME_LEN`] before any buffer is allocated, and the bincode
//! decoder itself runs with the same limit, so a peer can't make us allocate
//! more than that by lying about a collection's length inside a frame.

use serde::{de::DeserializeOwned, Serialize};

/// Largest payload a frame may carry (1 MiB). Log lines are split well below it.
pub const MAX_FRAME_LEN: usize = 1024 * 1024;
/// Size of the length prefix.
pub const HEADER_LEN: usize = 4;

const CONFIG: bincode::config::Configuration<
    bincode::config::LittleEndian,
    bincode::config::Varint,
    bincode::config::Limit<MAX_FRAME_LEN>,
> = bincode::config::standard().with_limit::<MAX_FRAME_LEN>();

/// Why a frame could not be encoded or decoded.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum FrameError {
    /// The declared or actual payload length is above [`MAX_FRAME_LEN`].
    #[error("frame of {len} bytes exceeds the {max}-byte limit")]
    TooLarge {
        /// Declared length.
        len: usize,
        /// The limit.
        max: usize,
    },
    /// The input ended before the frame did.
    #[error("truncated frame: need {needed} more bytes")]
    Truncated {
        /// Bytes still missing.
        needed: usize,
    },
    /// The payload is not a valid encoding of the expected message.
    #[error("malformed frame: {0}")]
    Malformed(String),
    /// The payload decoded but left bytes over: the peer speaks something else.
    #[error("malformed frame: {0} trailing bytes")]
    Trailing(usize),
    /// The message could not be encoded (should not happen for our types).
    #[error("cannot encode message: {0}")]
    Encode(String),
}

/// Encodes `msg` into one frame (header + payload).
pub fn encode<T: Serialize>(msg: &T) -> Result<Vec<u8>, FrameError> {
    let mut out = vec![0u8; HEADER_LEN];
    bincode::serde::encode_into_std_write(msg, &mut out, CONFIG)
        .map_err(|e| FrameError::Encode(e.to_string()))?;
    let len = out.len() - HEADER_LEN;
    if len > MAX_FRAME_LEN {
        return Err(FrameError::TooLarge {
            len,
            max: MAX_FRAME_LEN,
        });
    }
    out[..HEADER_LEN].copy_from_slice(&(len as u32).to_be_bytes());
    Ok(out)
}

/// Reads the payload length from a frame header, refusing oversized frames
/// before the caller allocates a buffer for them.
pub fn payload_len(header: [u8; HEADER_LEN]) -> Result<usize, FrameError> {
    let len = u32::from_be_bytes(header) as usize;
    if len > MAX_FRAME_LEN {
        return Err(FrameError::TooLarge {
            len,
            max: MAX_FRAME_LEN,
        });
    }
    Ok(len)
}

/// Decodes one payload (without header) into a message. The whole payload
/// must be consumed.
pub fn decode_payload<T: DeserializeOwned>(payload: &[u8]) -> Result<T, FrameError> {
    if payload.len() > MAX_FRAME_LEN {
        return Err(FrameError::TooLarge {
            len: payload.len(),
            max: MAX_FRAME_LEN,
        });
    }
    let (msg, used) = bincode::serde::decode_from_slice(payload, CONFIG)
        .map_err(|e| FrameError::Malformed(e.to_string()))?;
    if used != payload.len() {
        return Err(FrameError::Trailing(payload.len() - used));
    }
    Ok(msg)
}

/// Decodes exactly one whole frame (header + payload) from `buf`.
pub fn decode<T: DeserializeOwned>(buf: &[u8]) -> Result<T, FrameError> {
    if buf.len() < HEADER_LEN {
        return Err(FrameError::Truncated {
            needed: HEADER_LEN - buf.len(),
        });
    }
    let len = payload_len(buf[..HEADER_LEN].try_into().expect("4 bytes"))?;
    let rest = &buf[HEADER_LEN..];
    if rest.len() < len {
        return Err(FrameError::Truncated {
            needed: len - rest.len(),
        });
    }
    if rest.len() > len {
        return Err(FrameError::Trailing(rest.len() - len));
    }
    decode_payload(rest)
}

/// Incremental decoder: feed bytes as they arrive, take whole frames out.
/// Buffers at most one frame (plus one read's worth of bytes).
#[derive(Debug, Default)]
pub struct FrameDecoder {
    buf: Vec<u8>,
}

impl FrameDecoder {
    /// A new, empty decoder.
    pub fn new() -> Self {
        Self::default()
    }

    /// Appends received bytes.
    pub fn push(&mut self, bytes: &[u8]) {
        self.buf.extend_from_slice(bytes);
    }

    /// Bytes buffered and not yet decoded.
    pub fn buffered(&self) -> usize {
        self.buf.len()
    }

    /// Returns the next whole message, `Ok(None)` if more bytes are needed,
    /// or an error if the stream is broken (the connection should be closed).
    pub fn next_frame<T: DeserializeOwned>(&mut self) -> Result<Option<T>, FrameError> {
        if self.buf.len() < HEADER_LEN {
            return Ok(None);
        }
        let len = payload_len(self.buf[..HEADER_LEN].try_into().expect("4 bytes"))?;
        if self.buf.len() < HEADER_LEN + len {
            return Ok(None);
        }
        let msg = decode_payload(&self.buf[HEADER_LEN..HEADER_LEN + len]);
        self.buf.drain(..HEADER_LEN + len);
        msg.map(Some)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::control::{AgentMessage, Facts};
    use crate::handshake::Hello;

    fn facts() -> Facts {
        Facts {
            agent_version: "0.1.0".into(),
            hostname: "web-1".into(),
            os: "Debian GNU/Linux 12".into(),
            kernel: "6.1.0".into(),
            uptime_secs: 42,
            load: [0.5, 0.25, 0.125],
            disk_free_bytes: 1 << 30,
            running_jobs: vec!["j1".into()],
            playbooks: vec![crate::control::PlaybookInfo {
                name: "deploy.yml".into(),
                sha256: "ab".repeat(32),
            }],
        }
    }

    #[test]
    fn round_trips() {
        let msgs = vec![
            AgentMessage::Heartbeat(facts()),
            AgentMessage::RenewRequest {
                csr_pem: "-----BEGIN CERTIFICATE REQUEST-----".into(),
            },
        ];
        for m in msgs {
            let bytes = encode(&m).unwrap();
            assert_eq!(decode::<AgentMessage>(&bytes).unwrap(), m);
        }
        let hello = Hello {
            protocol_version: 1,
            agent_version: "0.1.0".into(),
            node: "web-1".into(),
            instance: 7,
        };
        assert_eq!(decode::<Hello>(&encode(&hello).unwrap()).unwrap(), hello);
    }

    #[test]
    fn truncated_frames_ask_for_more() {
        let bytes = encode(&AgentMessage::Heartbeat(facts())).unwrap();
        for cut in [0, 2, 4, bytes.len() - 1] {
            assert!(matches!(
                decode::<AgentMessage>(&bytes[..cut]),
                Err(FrameError::Truncated { .. })
            ));
            let mut d = FrameDecoder::new();
            d.push(&bytes[..cut]);
            assert_eq!(d.next_frame::<AgentMessage>().unwrap(), None);
        }
    }

    #[test]
    fn oversized_frames_are_refused_from_the_header() {
        let mut d = FrameDecoder::new();
        d.push(&u32::MAX.to_be_bytes());
        assert!(matches!(
            d.next_frame::<AgentMessage>(),
            Err(FrameError::TooLarge { .. })
        ));
        assert!(payload_len(((MAX_FRAME_LEN + 1) as u32).to_be_bytes()).is_err());
        assert!(payload_len((MAX_FRAME_LEN as u32).to_be_bytes()).is_ok());
    }

    #[test]
    fn oversized_messages_are_not_encoded() {
        let big = AgentMessage::RenewRequest {
            csr_pem: "x".repeat(MAX_FRAME_LEN + 1),
        };
        assert!(encode(&big).is_err());
    }

    #[test]
    fn garbage_is_malformed_not_a_panic() {
        // A collection claiming 2^60 elements must not allocate.
        let mut payload = vec![1u8, 0xff];
        payload.extend_from_slice(&(1u64 << 60).to_le_bytes());
        let mut frame = (payload.len() as u32).to_be_bytes().to_vec();
        frame.extend_from_slice(&payload);
        assert!(decode::<AgentMessage>(&frame).is_err());

        let mut seed = 0x9e3779b97f4a7c15u64;
        for _ in 0..2000 {
            let len = (seed % 64) as usize;
            let mut bytes = (len as u32).to_be_bytes().to_vec();
            for _ in 0..len {
                seed ^= seed << 13;
                seed ^= seed >> 7;
                seed ^= seed << 17;
                bytes.push(seed as u8);
            }
            let _ = decode::<AgentMessage>(&bytes);
            let _ = decode::<crate::job::JobEvent>(&bytes);
        }
    }

    #[test]
    fn trailing_bytes_are_malformed() {
        let mut bytes = encode(&AgentMessage::Heartbeat(facts())).unwrap();
        bytes.push(0);
        let len = (bytes.len() - HEADER_LEN) as u32;
        bytes[..4].copy_from_slice(&len.to_be_bytes());
        assert!(matches!(
            decode::<AgentMessage>(&bytes),
            Err(FrameError::Trailing(1))
        ));
    }

    #[test]
    fn decoder_splits_back_to_back_frames() {
        let a = AgentMessage::Heartbeat(facts());
        let b = AgentMessage::RenewRequest {
            csr_pem: "csr".into(),
        };
        let mut bytes = encode(&a).unwrap();
        bytes.extend(encode(&b).unwrap());
        let mut d = FrameDecoder::new();
        for chunk in bytes.chunks(3) {
            d.push(chunk);
        }
        assert_eq!(d.next_frame::<AgentMessage>().unwrap(), Some(a));
        assert_eq!(d.next_frame::<AgentMessage>().unwrap(), Some(b));
        assert_eq!(d.next_frame::<AgentMessage>().unwrap(), None);
        assert_eq!(d.buffered(), 0);
    }
}
