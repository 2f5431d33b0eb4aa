//! Async framing over QUIC/TLS streams: the IO shell around
//! `vesemir_protocol::frame`.

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
