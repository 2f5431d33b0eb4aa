//! Async framing of protocol messages over any byte stream (QUIC streams,
//! TLS over TCP): the thin IO shell around `vesemir_protocol::frame`, shared
//! by controller and agent. The length is checked against the frame limit
//! before the payload buffer is allocated.
#![warn(missing_docs)]

use serde::{de::DeserializeOwned, Serialize};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use vesemir_protocol::frame::{decode_payload, encode, payload_len, FrameError, HEADER_LEN};

/// A stream broke or carried something that is not our protocol.
#[derive(Debug, thiserror::Error)]
pub enum WireError {
    /// The peer sent a bad frame.
    #[error(transparent)]
    Frame(#[from] FrameError),
    /// The transport failed.
    #[error("stream error: {0}")]
    Io(#[from] std::io::Error),
}

/// Reads one frame; `Ok(None)` on a clean end of stream before a header.
pub async fn read_frame<T: DeserializeOwned, R: AsyncRead + Unpin>(
    r: &mut R,
) -> Result<Option<T>, WireError> {
    let mut header = [0u8; HEADER_LEN];
    match r.read_exact(&mut header).await {
        Ok(_) => {}
        Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => return Ok(None),
        Err(e) => return Err(e.into()),
    }
    let len = payload_len(header)?;
    let mut payload = vec![0u8; len];
    r.read_exact(&mut payload).await?;
    Ok(Some(decode_payload(&payload)?))
}

/// Writes one frame.
pub async fn write_frame<T: Serialize, W: AsyncWrite + Unpin>(
    w: &mut W,
    msg: &T,
) -> Result<(), WireError> {
    let bytes = encode(msg)?;
    w.write_all(&bytes).await?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use vesemir_protocol::control::AgentMessage;

    #[tokio::test]
    async fn frames_round_trip_and_end_cleanly() {
        let (mut a, mut b) = tokio::io::duplex(64);
        let msg = AgentMessage::RenewRequest {
            csr_pem: "x".repeat(1000),
        };
        let m = msg.clone();
        let writer = tokio::spawn(async move {
            write_frame(&mut a, &m).await.unwrap();
            write_frame(&mut a, &m).await.unwrap();
        });
        assert_eq!(
            read_frame::<AgentMessage, _>(&mut b).await.unwrap(),
            Some(msg.clone())
        );
        assert_eq!(
            read_frame::<AgentMessage, _>(&mut b).await.unwrap(),
            Some(msg)
        );
        writer.await.unwrap();
        assert_eq!(read_frame::<AgentMessage, _>(&mut b).await.unwrap(), None);
    }

    #[tokio::test]
    async fn oversized_header_is_refused_before_reading_on() {
        let (mut a, mut b) = tokio::io::duplex(64);
        a.write_all(&u32::MAX.to_be_bytes()).await.unwrap();
        let err = read_frame::<AgentMessage, _>(&mut b).await.unwrap_err();
        assert!(
            matches!(err, WireError::Frame(FrameError::TooLarge { .. })),
            "{err}"
        );
    }
}
