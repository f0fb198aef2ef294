//! Primitive encodings: big-endian integers and p11-kit's byte array (`u32 len` + bytes, with
//! `0xFFFFFFFF` meaning a NULL pointer).
//!
//! [`Reader`] never reads past its input and refuses any length that the remaining bytes cannot
//! hold, so a peer cannot make us allocate more than it actually sent.

use crate::error::ProtocolError;

/// The byte-array length that means "NULL pointer, no data".
pub const NULL_LEN: u32 = 0xFFFF_FFFF;

/// Byte arrays must be shorter than this (p11-kit refuses `len >= 0x7fffffff`).
pub const MAX_BYTE_ARRAY: u32 = 0x7FFF_FFFF;

/// A cursor over a message body.
#[derive(Debug, Clone)]
pub struct Reader<'a> {
    buf: &'a [u8],
    pos: usize,
}

impl<'a> Reader<'a> {
    /// A reader over `buf`.
    pub fn new(buf: &'a [u8]) -> Self {
        Self { buf, pos: 0 }
    }

    /// Bytes not read yet.
    pub fn remaining(&self) -> usize {
        self.buf.len() - self.pos
    }

    /// Whether everything has been read.
    pub fn is_empty(&self) -> bool {
        self.remaining() == 0
    }

    /// The current offset.
    pub fn position(&self) -> usize {
        self.pos
    }

    /// Take the next `n` bytes.
    pub fn take(&mut self, n: usize, what: &'static str) -> Result<&'a [u8], ProtocolError> {
        if n > self.remaining() {
            return Err(ProtocolError::Truncated(what));
        }
        let s = &self.buf[self.pos..self.pos + n];
        self.pos += n;
        Ok(s)
    }

    /// Look at the next `n` bytes without consuming them.
    pub fn peek(&self, n: usize) -> Option<&'a [u8]> {
        self.buf.get(self.pos..self.pos.checked_add(n)?)
    }

    /// A `u8`.
    pub fn u8(&mut self, what: &'static str) -> Result<u8, ProtocolError> {
        Ok(self.take(1, what)?[0])
    }

    /// A big-endian `u32`.
    pub fn u32(&mut self, what: &'static str) -> Result<u32, ProtocolError> {
        let b = self.take(4, what)?;
        Ok(u32::from_be_bytes([b[0], b[1], b[2], b[3]]))
    }

    /// A big-endian `u64`.
    pub fn u64(&mut self, what: &'static str) -> Result<u64, ProtocolError> {
        let b = self.take(8, what)?;
        let mut a = [0u8; 8];
        a.copy_from_slice(b);
        Ok(u64::from_be_bytes(a))
    }

    /// A byte array: `None` for the NULL marker.
    pub fn byte_array(&mut self, what: &'static str) -> Result<Option<&'a [u8]>, ProtocolError> {
        let len = self.u32(what)?;
        if len == NULL_LEN {
            return Ok(None);
        }
        if len >= MAX_BYTE_ARRAY {
            return Err(ProtocolError::TooLarge {
                what,
                len: len.into(),
                max: (MAX_BYTE_ARRAY - 1).into(),
            });
        }
        Ok(Some(self.take(len as usize, what)?))
    }

    /// A count of elements that each take at least `min_size` bytes: rejected if the rest of
    /// the message cannot hold that many, or if it exceeds `max`. Checked before allocating.
    pub fn count(
        &mut self,
        what: &'static str,
        min_size: usize,
        max: u32,
    ) -> Result<usize, ProtocolError> {
        let n = self.u32(what)?;
        if n > max {
            return Err(ProtocolError::TooLarge {
                what,
                len: n.into(),
                max: max.into(),
            });
        }
        let n = n as usize;
        if n.saturating_mul(min_size.max(1)) > self.remaining() {
            return Err(ProtocolError::Truncated(what));
        }
        Ok(n)
    }
}

/// A growing message body.
///
/// Bodies carry PINs and secrets: the buffer grows by copying into a larger one and wiping the
/// old one (never by `realloc`, which can leave a copy in freed memory), and a writer dropped
/// before [`Writer::into_inner`] (an encoding error half-way) wipes what it holds.
#[derive(Debug, Default, Clone)]
pub struct Writer {
    buf: Vec<u8>,
}

impl Drop for Writer {
    fn drop(&mut self) {
        zeroize::Zeroize::zeroize(&mut self.buf);
    }
}

impl Writer {
    /// An empty writer.
    pub fn new() -> Self {
        Self::default()
    }

    /// An empty writer with room for `n` bytes.
    pub fn with_capacity(n: usize) -> Self {
        Self {
            buf: Vec::with_capacity(n),
        }
    }

    /// The bytes written.
    pub fn into_inner(mut self) -> Vec<u8> {
        std::mem::take(&mut self.buf)
    }

    /// The bytes written so far.
    pub fn as_slice(&self) -> &[u8] {
        &self.buf
    }

    /// Make room for `extra` more bytes without leaving the old contents behind.
    fn reserve(&mut self, extra: usize) {
        if self.buf.capacity() - self.buf.len() >= extra {
            return;
        }
        let need = self.buf.len().saturating_add(extra);
        let mut bigger =
            Vec::with_capacity(need.max(self.buf.capacity().saturating_mul(2)).max(64));
        bigger.extend_from_slice(&self.buf);
        zeroize::Zeroize::zeroize(&mut self.buf);
        self.buf = bigger;
    }

    /// Append raw bytes.
    pub fn bytes(&mut self, b: &[u8]) {
        self.reserve(b.len());
        self.buf.extend_from_slice(b);
    }

    /// A `u8`.
    pub fn u8(&mut self, v: u8) {
        self.bytes(&[v]);
    }

    /// A big-endian `u32`.
    pub fn u32(&mut self, v: u32) {
        self.bytes(&v.to_be_bytes());
    }

    /// A big-endian `u64`.
    pub fn u64(&mut self, v: u64) {
        self.bytes(&v.to_be_bytes());
    }

    /// A byte array, `None` as the NULL marker. Fails for arrays of `0x7fffffff` bytes or more.
    pub fn byte_array(&mut self, data: Option<&[u8]>) -> Result<(), crate::Error> {
        match data {
            None => self.u32(NULL_LEN),
            Some(d) => {
                let len = u32::try_from(d.len())
                    .ok()
                    .filter(|l| *l < MAX_BYTE_ARRAY)
                    .ok_or(crate::Error::Invalid(
                        "byte array too large for the protocol",
                    ))?;
                self.u32(len);
                self.bytes(d);
            }
        }
        Ok(())
    }

    /// A count (`u32`), failing if it does not fit.
    pub fn count(&mut self, n: usize) -> Result<(), crate::Error> {
        let n = u32::try_from(n).map_err(|_| crate::Error::Invalid("too many elements"))?;
        self.u32(n);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_big_endian_and_byte_arrays() {
        let mut w = Writer::new();
        w.u8(7);
        w.u32(0x0102_0304);
        w.u64(0x1122_3344_5566_7788);
        w.byte_array(Some(b"abc")).unwrap();
        w.byte_array(None).unwrap();
        let bytes = w.into_inner();
        assert_eq!(&bytes[1..5], &[1, 2, 3, 4]);
        let mut r = Reader::new(&bytes);
        assert_eq!(r.u8("a").unwrap(), 7);
        assert_eq!(r.u32("b").unwrap(), 0x0102_0304);
        assert_eq!(r.u64("c").unwrap(), 0x1122_3344_5566_7788);
        assert_eq!(r.byte_array("d").unwrap(), Some(&b"abc"[..]));
        assert_eq!(r.byte_array("e").unwrap(), None);
        assert!(r.is_empty());
    }

    #[test]
    fn growing_keeps_every_byte() {
        let mut w = Writer::with_capacity(1);
        let data: Vec<u8> = (0..=255).cycle().take(5000).collect();
        for chunk in data.chunks(7) {
            w.bytes(chunk);
        }
        w.u8(1);
        assert_eq!(&w.as_slice()[..5000], &data[..]);
        assert_eq!(w.into_inner().len(), 5001);
    }

    #[test]
    fn rejects_byte_array_len_past_end() {
        let mut r = Reader::new(&[0, 0, 0, 9, 1, 2]);
        assert_eq!(r.byte_array("x"), Err(ProtocolError::Truncated("x")));
        let mut r = Reader::new(&[0x7f, 0xff, 0xff, 0xff]);
        assert!(matches!(
            r.byte_array("x"),
            Err(ProtocolError::TooLarge { .. })
        ));
        let mut r = Reader::new(&[0xff, 0xff, 0xff, 0xfe]);
        assert!(matches!(
            r.byte_array("x"),
            Err(ProtocolError::TooLarge { .. })
        ));
    }

    #[test]
    fn rejects_counts_the_message_cannot_hold() {
        // A count of 0x10000000 elements of 8 bytes with 4 bytes left: refused before allocating.
        let mut r = Reader::new(&[0x10, 0, 0, 0, 1, 2, 3, 4]);
        assert_eq!(
            r.count("n", 8, u32::MAX),
            Err(ProtocolError::Truncated("n"))
        );
        let mut r = Reader::new(&[0, 0, 0, 5]);
        assert!(matches!(
            r.count("n", 0, 4),
            Err(ProtocolError::TooLarge { .. })
        ));
    }
}
