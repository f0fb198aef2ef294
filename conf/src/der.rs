//! The few DER and PEM primitives p11fwd needs (URI-PEM files here, public keys and algorithm
//! identifiers in the provider): definite-length TLVs, base64 and PEM armor. Decoders return
//! `None` on anything malformed and never read past their input.

/// The base64 alphabet (RFC 4648, standard, with `=` padding).
const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";

/// A tag-length-value with a definite length (short form below 128 bytes).
pub fn tlv(tag: u8, content: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(content.len() + 6);
    out.push(tag);
    let len = content.len();
    if len < 0x80 {
        out.push(len as u8);
    } else {
        let bytes = len.to_be_bytes();
        let skip = bytes.iter().take_while(|&&b| b == 0).count();
        out.push(0x80 | (bytes.len() - skip) as u8);
        out.extend_from_slice(&bytes[skip..]);
    }
    out.extend_from_slice(content);
    out
}

/// The first TLV of `data`: `(tag, content, rest)`. Definite lengths of at most 4 length bytes;
/// `None` if truncated or otherwise encoded.
pub fn read_tlv(data: &[u8]) -> Option<(u8, &[u8], &[u8])> {
    let (&tag, rest) = data.split_first()?;
    let (&first, rest) = rest.split_first()?;
    let (len, rest) = if first < 0x80 {
        (usize::from(first), rest)
    } else {
        let n = usize::from(first & 0x7f);
        if n == 0 || n > 4 {
            return None;
        }
        let (len_bytes, rest) = rest.split_at_checked(n)?;
        let len = len_bytes
            .iter()
            .fold(0usize, |a, &b| (a << 8) | usize::from(b));
        (len, rest)
    };
    let (content, rest) = rest.split_at_checked(len)?;
    Some((tag, content, rest))
}

/// Standard base64 with padding.
pub fn base64_encode(data: &[u8]) -> String {
    let mut out = String::with_capacity(data.len().div_ceil(3) * 4);
    for chunk in data.chunks(3) {
        let b = [
            chunk[0],
            chunk.get(1).copied().unwrap_or(0),
            chunk.get(2).copied().unwrap_or(0),
        ];
        let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
        for i in 0..4 {
            if i <= chunk.len() {
                out.push(char::from(ALPHABET[((n >> (18 - 6 * i)) & 63) as usize]));
            } else {
                out.push('=');
            }
        }
    }
    out
}

/// Standard base64 with padding; whitespace is ignored. `None` if malformed.
pub fn base64_decode(text: &str) -> Option<Vec<u8>> {
    let symbols: Vec<u8> = text.bytes().filter(|b| !b.is_ascii_whitespace()).collect();
    if !symbols.len().is_multiple_of(4) {
        return None;
    }
    let mut out = Vec::with_capacity(symbols.len() / 4 * 3);
    let quads = symbols.len() / 4;
    for (qi, quad) in symbols.chunks(4).enumerate() {
        let last = qi + 1 == quads;
        let mut n = 0u32;
        let mut pad = 0;
        for (i, &c) in quad.iter().enumerate() {
            let v = if c == b'=' {
                // Padding only at the end of the last quad.
                if !last || i < 2 {
                    return None;
                }
                pad += 1;
                0
            } else {
                if pad > 0 {
                    return None;
                }
                u32::try_from(ALPHABET.iter().position(|&a| a == c)?).ok()?
            };
            n = (n << 6) | v;
        }
        let bytes = n.to_be_bytes();
        out.extend_from_slice(&bytes[1..4 - pad]);
    }
    Some(out)
}

/// A PEM block with 64-column lines, as OpenSSL's `PEM_write_bio` writes them.
pub fn pem_encode(label: &str, der: &[u8]) -> String {
    let b64 = base64_encode(der);
    let mut out = format!("-----BEGIN {label}-----\n");
    for line in b64.as_bytes().chunks(64) {
        // Base64 output is ASCII.
        out.push_str(&String::from_utf8_lossy(line));
        out.push('\n');
    }
    out.push_str(&format!("-----END {label}-----\n"));
    out
}

#[cfg(test)]
#[allow(clippy::unwrap_used)] // Tests: a panic is the failure report.
mod tests {
    use super::*;

    #[test]
    fn tlv_lengths_round_trip() {
        for len in [0, 1, 127, 128, 255, 256, 300, 70000] {
            let content = vec![7u8; len];
            let enc = tlv(0x04, &content);
            let (tag, c, rest) = read_tlv(&enc).unwrap();
            assert_eq!((tag, c.len(), rest.len()), (0x04, len, 0));
        }
        assert_eq!(tlv(0x04, &[0; 200])[..3], [4, 0x81, 200]);
        assert_eq!(tlv(0x04, &[0; 300])[..4], [4, 0x82, 1, 44]);
        assert_eq!(read_tlv(&[0x30, 0x85, 0, 0, 0, 0, 1]), None);
        assert_eq!(read_tlv(&[0x30, 0x80]), None);
        assert_eq!(read_tlv(&[0x30, 0x05, 1]), None);
        assert_eq!(read_tlv(&[0x30]), None);
    }

    #[test]
    fn base64_matches_rfc4648() {
        for (plain, b64) in [
            ("", ""),
            ("f", "Zg=="),
            ("fo", "Zm8="),
            ("foo", "Zm9v"),
            ("foob", "Zm9vYg=="),
            ("fooba", "Zm9vYmE="),
        ] {
            assert_eq!(base64_encode(plain.as_bytes()), b64);
            assert_eq!(base64_decode(b64).unwrap(), plain.as_bytes());
        }
        assert_eq!(base64_decode("Zm9v\nYg==").unwrap(), b"foob");
        assert_eq!(base64_decode("Zm=v"), None);
        assert_eq!(base64_decode("Zm9"), None);
        assert_eq!(base64_decode("Zm9*"), None);
    }

    #[test]
    fn pem_lines_are_64_columns() {
        let pem = pem_encode("TEST", &[0u8; 100]);
        let lines: Vec<&str> = pem.lines().collect();
        assert_eq!(lines[0], "-----BEGIN TEST-----");
        assert_eq!(lines[1].len(), 64);
        assert_eq!(lines.last(), Some(&"-----END TEST-----"));
    }
}
