//! Frames (rpc §2.3): `{u32 code, u32 options_len, u32 body_len}`, options, body. Sans-IO.
//!
//! `code` is a per-request serial number that the server echoes; replies may arrive in any
//! order. Stock peers allocate whatever the header says; we check both lengths against
//! [`Limits`] as soon as the 12 header bytes are in, before reading or allocating the rest.

use crate::error::ProtocolError;

/// Size of the frame header.
pub const HEADER_LEN: usize = 12;

/// What a client sends as options (`p11-kit-client.so` sends `"client"`).
pub const CLIENT_OPTIONS: &[u8] = b"client";

/// Caps on what a peer may send.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Limits {
    /// Largest body accepted.
    pub max_body: u32,
    /// Largest options area accepted.
    pub max_options: u32,
}

impl Limits {
    /// 16 MiB bodies: far above any signature, certificate or attribute set, and large enough
    /// for bulk encryption through the token.
    pub const DEFAULT: Self = Self {
        max_body: 16 << 20,
        max_options: 4096,
    };
}

impl Default for Limits {
    fn default() -> Self {
        Self::DEFAULT
    }
}

/// A frame header.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Header {
    /// The request serial number.
    pub code: u32,
    /// Length of the options area.
    pub options_len: u32,
    /// Length of the body.
    pub body_len: u32,
}

impl Header {
    /// Parse and check a header against `limits`.
    pub fn parse(b: &[u8; HEADER_LEN], limits: Limits) -> Result<Self, ProtocolError> {
        let u = |i: usize| u32::from_be_bytes([b[i], b[i + 1], b[i + 2], b[i + 3]]);
        let h = Self {
            code: u(0),
            options_len: u(4),
            body_len: u(8),
        };
        if h.options_len > limits.max_options {
            return Err(ProtocolError::TooLarge {
                what: "frame options",
                len: h.options_len.into(),
                max: limits.max_options.into(),
            });
        }
        if h.body_len > limits.max_body {
            return Err(ProtocolError::TooLarge {
                what: "frame body",
                len: h.body_len.into(),
                max: limits.max_body.into(),
            });
        }
        Ok(h)
    }

    /// Total frame length (header included).
    pub fn frame_len(&self) -> usize {
        HEADER_LEN + self.options_len as usize + self.body_len as usize
    }
}

/// A whole frame.
#[derive(Clone, PartialEq, Eq)]
pub struct Frame {
    /// The request serial number.
    pub code: u32,
    /// The options bytes (read and discarded by both stock ends).
    pub options: Vec<u8>,
    /// The body (rpc §2.4).
    pub body: Vec<u8>,
}

impl std::fmt::Debug for Frame {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "Frame(code=0x{:x}, options={}, body={})",
            self.code,
            self.options.len(),
            self.body.len()
        )
    }
}

// Frames carry PINs (C_Login, C_InitPIN, C_SetPIN, ...) and can carry secrets (a derived
// key's CKA_VALUE, decrypted data): wipe them when they go away.
impl Drop for Frame {
    fn drop(&mut self) {
        zeroize::Zeroize::zeroize(&mut self.options);
        zeroize::Zeroize::zeroize(&mut self.body);
    }
}

impl Frame {
    /// A frame.
    pub fn new(code: u32, options: &[u8], body: Vec<u8>) -> Self {
        Self {
            code,
            options: options.to_vec(),
            body,
        }
    }

    /// The wire bytes, header included, in one buffer (one write, one syscall).
    pub fn to_bytes(&self) -> Vec<u8> {
        encode(self.code, &self.options, &self.body)
    }
}

/// The wire bytes of a frame. Callers that send PINs or secrets should wipe the result (the
/// blocking transport does).
pub fn encode(code: u32, options: &[u8], body: &[u8]) -> Vec<u8> {
    let mut v = Vec::with_capacity(HEADER_LEN + options.len() + body.len());
    encode_into(&mut v, code, options, body);
    v
}

/// [`encode`], appended to `out` (which the caller sizes: frames may carry PINs, and a buffer
/// that grows leaves copies behind).
pub fn encode_into(out: &mut Vec<u8>, code: u32, options: &[u8], body: &[u8]) {
    out.extend_from_slice(&code.to_be_bytes());
    out.extend_from_slice(&(options.len() as u32).to_be_bytes());
    out.extend_from_slice(&(body.len() as u32).to_be_bytes());
    out.extend_from_slice(options);
    out.extend_from_slice(body);
}

/// Try to take one frame from the front of `buf`.
///
/// Returns `Ok(None)` when more bytes are needed, `Ok(Some((frame, consumed)))` when a frame is
/// complete, and an error as soon as the header exceeds `limits`.
pub fn parse(buf: &[u8], limits: Limits) -> Result<Option<(Frame, usize)>, ProtocolError> {
    let Some(head) = buf.get(..HEADER_LEN) else {
        return Ok(None);
    };
    let mut h = [0u8; HEADER_LEN];
    h.copy_from_slice(head);
    let header = Header::parse(&h, limits)?;
    let total = header.frame_len();
    if buf.len() < total {
        return Ok(None);
    }
    let opt_end = HEADER_LEN + header.options_len as usize;
    let frame = Frame {
        code: header.code,
        options: buf[HEADER_LEN..opt_end].to_vec(),
        body: buf[opt_end..total].to_vec(),
    };
    Ok(Some((frame, total)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_incrementally() {
        let bytes = encode(0x10, CLIENT_OPTIONS, &[0, 0, 0, 3, 0, 0, 0, 0]);
        for cut in 0..bytes.len() {
            assert_eq!(parse(&bytes[..cut], Limits::DEFAULT).unwrap(), None);
        }
        let (f, n) = parse(&bytes, Limits::DEFAULT).unwrap().unwrap();
        assert_eq!(n, bytes.len());
        assert_eq!(f.code, 0x10);
        assert_eq!(f.options, b"client");
        assert_eq!(f.to_bytes(), bytes);
    }

    #[test]
    fn rejects_huge_lengths_from_the_header_alone() {
        let h = [0, 0, 0, 1, 0, 0, 0, 0, 0xff, 0xff, 0xff, 0xff];
        assert!(matches!(
            parse(&h, Limits::DEFAULT),
            Err(ProtocolError::TooLarge {
                what: "frame body",
                ..
            })
        ));
        let h = [0, 0, 0, 1, 0x10, 0, 0, 0, 0, 0, 0, 0];
        assert!(matches!(
            parse(&h, Limits::DEFAULT),
            Err(ProtocolError::TooLarge {
                what: "frame options",
                ..
            })
        ));
    }
}
