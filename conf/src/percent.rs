//! Percent-encoding: a strict decoder and the encode sets of RFC 7512 and of p11-kit's
//! `p11_path_encode`.
//!
//! The `percent-encoding` crate's decoder passes a malformed `%` through unchanged; a URI with a
//! broken escape must be an error instead, so decoding is done here.

use std::fmt;

use percent_encoding::{AsciiSet, NON_ALPHANUMERIC, percent_encode};

/// Characters left unescaped in an RFC 7512 path attribute value: `unreserved` plus
/// `pk11-path-res-avail` (`: [ ] @ ! $ ' ( ) * + , = &`). Everything else, including `;`, `?`,
/// `/`, `%` and `#`, is written as `%XX`.
const PATH_VALUE: &AsciiSet = &NON_ALPHANUMERIC
    .remove(b'-')
    .remove(b'.')
    .remove(b'_')
    .remove(b'~')
    .remove(b':')
    .remove(b'[')
    .remove(b']')
    .remove(b'@')
    .remove(b'!')
    .remove(b'$')
    .remove(b'\'')
    .remove(b'(')
    .remove(b')')
    .remove(b'*')
    .remove(b'+')
    .remove(b',')
    .remove(b'=')
    .remove(b'&');

/// Characters left unescaped in an RFC 7512 query attribute value: `unreserved` plus
/// `pk11-query-res-avail` (`: [ ] @ ! $ ' ( ) * + , = / ? |`). `&` is escaped.
const QUERY_VALUE: &AsciiSet = &NON_ALPHANUMERIC
    .remove(b'-')
    .remove(b'.')
    .remove(b'_')
    .remove(b'~')
    .remove(b':')
    .remove(b'[')
    .remove(b']')
    .remove(b'@')
    .remove(b'!')
    .remove(b'$')
    .remove(b'\'')
    .remove(b'(')
    .remove(b')')
    .remove(b'*')
    .remove(b'+')
    .remove(b',')
    .remove(b'=')
    .remove(b'/')
    .remove(b'?')
    .remove(b'|');

/// p11-kit's `p11_path_encode`: `[A-Za-z0-9._/-]` and `\` stay, everything else is `%XX`.
const P11_PATH: &AsciiSet = &NON_ALPHANUMERIC
    .remove(b'.')
    .remove(b'-')
    .remove(b'_')
    .remove(b'/')
    .remove(b'\\');

/// Where a value is written; decides the encode set.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Component {
    /// A path attribute value (between `pkcs11:` and `?`).
    Path,
    /// A query attribute value (after `?`).
    Query,
}

/// Writes `value` percent-encoded for `component`, upper-case hex.
pub(crate) fn write_value(
    out: &mut dyn fmt::Write,
    value: &[u8],
    component: Component,
) -> fmt::Result {
    let set = match component {
        Component::Path => PATH_VALUE,
        Component::Query => QUERY_VALUE,
    };
    for chunk in percent_encode(value, set) {
        out.write_str(chunk)?;
    }
    Ok(())
}

/// Writes every byte as `%XX` (upper-case), as p11tool and pkcs11-provider write `id`.
pub(crate) fn write_all_hex(out: &mut dyn fmt::Write, value: &[u8]) -> fmt::Result {
    for b in value {
        write!(out, "%{b:02X}")?;
    }
    Ok(())
}

/// `p11_path_encode`.
pub(crate) fn encode_path(path: &[u8]) -> String {
    percent_encode(path, P11_PATH).to_string()
}

/// Decodes `%XX` escapes in `input`, appending the bytes to `out`. Every other byte is copied.
///
/// On a `%` that is not followed by two hex digits, returns the byte offset of that `%`. `out`
/// may then hold a partial result; callers that decode secrets pass a zeroizing buffer.
pub(crate) fn decode_into(input: &[u8], out: &mut Vec<u8>) -> Result<(), usize> {
    let mut bytes = input.iter().enumerate();
    while let Some((offset, &b)) = bytes.next() {
        if b != b'%' {
            out.push(b);
            continue;
        }
        let hi = bytes.next().and_then(|(_, &c)| hex_value(c));
        let lo = bytes.next().and_then(|(_, &c)| hex_value(c));
        match (hi, lo) {
            (Some(hi), Some(lo)) => out.push((hi << 4) | lo),
            _ => return Err(offset),
        }
    }
    Ok(())
}

/// [`decode_into`] into a fresh vector.
pub(crate) fn decode(input: &[u8]) -> Result<Vec<u8>, usize> {
    let mut out = Vec::with_capacity(input.len());
    decode_into(input, &mut out)?;
    Ok(out)
}

fn hex_value(c: u8) -> Option<u8> {
    match c {
        b'0'..=b'9' => Some(c - b'0'),
        b'a'..=b'f' => Some(c - b'a' + 10),
        b'A'..=b'F' => Some(c - b'A' + 10),
        _ => None,
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)] // Tests unwrap: a panic is a test failure.
mod tests {
    use super::*;

    fn path(value: &[u8]) -> String {
        let mut s = String::new();
        write_value(&mut s, value, Component::Path).unwrap();
        s
    }

    fn query(value: &[u8]) -> String {
        let mut s = String::new();
        write_value(&mut s, value, Component::Query).unwrap();
        s
    }

    #[test]
    fn decodes_mixed_case_escapes() {
        assert_eq!(
            decode(b"%01%Ba%dd%cA%fe").unwrap(),
            [0x01, 0xba, 0xdd, 0xca, 0xfe]
        );
        assert_eq!(decode(b"a%20b").unwrap(), b"a b");
        assert_eq!(decode(b"").unwrap(), b"");
    }

    #[test]
    fn rejects_truncated_and_non_hex_escapes() {
        assert_eq!(decode(b"%"), Err(0));
        assert_eq!(decode(b"ab%4"), Err(2));
        assert_eq!(decode(b"%zz"), Err(0));
        assert_eq!(decode(b"x%4g"), Err(1));
        assert_eq!(decode(b"%41%"), Err(3));
    }

    #[test]
    fn path_values_escape_delimiters_but_not_rfc_extras() {
        assert_eq!(path(b"a;b?c/d%e#f g"), "a%3Bb%3Fc%2Fd%25e%23f%20g");
        assert_eq!(path(b":[]@!$'()*+,=&-._~"), ":[]@!$'()*+,=&-._~");
        assert_eq!(path("á".as_bytes()), "%C3%A1");
    }

    #[test]
    fn query_values_escape_ampersand_but_keep_slash() {
        assert_eq!(query(b"file:/etc/pin"), "file:/etc/pin");
        assert_eq!(query(b"|cmd?x=1"), "|cmd?x=1");
        assert_eq!(query(b"a&b;c%d e"), "a%26b%3Bc%25d%20e");
    }

    #[test]
    fn all_hex_is_upper_case() {
        let mut s = String::new();
        write_all_hex(&mut s, &[0x01, 0xab, b'A']).unwrap();
        assert_eq!(s, "%01%AB%41");
    }

    #[test]
    fn path_encoding_matches_p11_path_encode() {
        assert_eq!(
            encode_path(b"/run/user/1000/p11-kit/pkcs11"),
            "/run/user/1000/p11-kit/pkcs11"
        );
        assert_eq!(
            encode_path(b"/tmp/a b+c%/x_y.z\\w~"),
            "/tmp/a%20b%2Bc%25/x_y.z\\w%7E"
        );
    }
}
