//! Async frame I/O over tokio, for the forwarder (and async test clients).
//!
//! Only framing lives here; the forwarder owns its connection state machine. Clean EOF between
//! frames is `Ok(None)`; EOF inside a frame or a header over the limits is an error.

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

use crate::dialect::{Dialect, MAX_VERSION};
use crate::error::{Error, Result};
use crate::frame::{Frame, HEADER_LEN, Header, Limits};

/// Server side of the version exchange: read the offered byte and answer `min(offered, 2)`.
/// Returns the offered byte and the negotiated dialect.
pub async fn accept_version<S>(stream: &mut S) -> Result<(u8, Dialect)>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let mut b = [0u8; 1];
    match stream.read_exact(&mut b).await {
        Ok(_) => {}
        Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => return Err(Error::Closed),
        Err(e) => return Err(e.into()),
    }
    let answer = b[0].min(MAX_VERSION);
    stream.write_all(&[answer]).await?;
    stream.flush().await?;
    Ok((b[0], Dialect::from_version(answer)))
}

/// Client side of the version exchange: offer `offer`, return the dialect answered.
pub async fn offer_version<S>(stream: &mut S, offer: u8) -> Result<Dialect>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    stream.write_all(&[offer]).await?;
    stream.flush().await?;
    let mut b = [0u8; 1];
    stream
        .read_exact(&mut b)
        .await
        .map_err(|e| match e.kind() {
            std::io::ErrorKind::UnexpectedEof => Error::Closed,
            _ => Error::Io(e),
        })?;
    Ok(Dialect::from_version(b[0].min(offer)))
}

/// Reads whole frames from an async stream.
#[derive(Debug)]
pub struct FrameReader<R> {
    inner: R,
    limits: Limits,
}

impl<R: AsyncRead + Unpin> FrameReader<R> {
    /// A reader with caps.
    pub fn new(inner: R, limits: Limits) -> Self {
        Self { inner, limits }
    }

    /// The next frame, or `None` on a clean EOF between frames.
    pub async fn read_frame(&mut self) -> Result<Option<Frame>> {
        let mut h = [0u8; HEADER_LEN];
        // Distinguish EOF before the first byte (clean) from EOF inside the header.
        let n = self.inner.read(&mut h).await?;
        if n == 0 {
            return Ok(None);
        }
        if n < HEADER_LEN {
            self.inner
                .read_exact(&mut h[n..])
                .await
                .map_err(eof_is_truncation)?;
        }
        let header = Header::parse(&h, self.limits)?;
        let mut options = vec![0u8; header.options_len as usize];
        self.inner
            .read_exact(&mut options)
            .await
            .map_err(eof_is_truncation)?;
        let mut body = vec![0u8; header.body_len as usize];
        self.inner
            .read_exact(&mut body)
            .await
            .map_err(eof_is_truncation)?;
        Ok(Some(Frame {
            code: header.code,
            options,
            body,
        }))
    }

    /// The underlying reader.
    pub fn into_inner(self) -> R {
        self.inner
    }
}

fn eof_is_truncation(e: std::io::Error) -> Error {
    if e.kind() == std::io::ErrorKind::UnexpectedEof {
        Error::Protocol(crate::error::ProtocolError::Truncated("frame"))
    } else {
        Error::Io(e)
    }
}

/// Write one frame (header, options and body in one buffer).
pub async fn write_frame<W: AsyncWrite + Unpin>(w: &mut W, frame: &Frame) -> Result<()> {
    // The copy may hold decrypted data or a derived secret: wipe it like the frame itself.
    let bytes = zeroize::Zeroizing::new(frame.to_bytes());
    w.write_all(&bytes).await?;
    Ok(())
}
