//! The URI-PEM file format of pkcs11-provider: a small file that names a token key by its
//! `pkcs11:` URI, so that code which only knows how to load a key *file*
//! (`SSL_CTX_use_PrivateKey_file`, `PEM_read_bio_PrivateKey`, curl 7.88's `--key`) reaches a key
//! on a token through an OpenSSL 3 provider's decoder.
//!
//! ```text
//! -----BEGIN PKCS#11 PROVIDER URI-----
//! MEQaGVBLQ1MjMTEgUHJvdmlkZXIgVVJJIHYxLjAMJ3BrY3MxMTp0b2tlbj10O29i
//! amVjdD1rZXk7dHlwZT1wcml2YXRl
//! -----END PKCS#11 PROVIDER URI-----
//! ```
//!
//! The body is the DER of (pkcs11-provider's `P11PROV_PK11_URI`):
//!
//! ```text
//! PKCS11ProviderURI ::= SEQUENCE {
//!     desc VisibleString,   -- exactly "PKCS#11 Provider URI v1.0"
//!     uri  UTF8String       -- the pkcs11: URI
//! }
//! ```
//!
//! [`encode_pem`]/[`decode_pem`] and [`encode_der`]/[`decode_der`] write and read exactly that.
//! Reading is strict about the structure (definite lengths, the exact description, nothing after
//! the SEQUENCE) and never panics. The URI is not interpreted here beyond requiring the
//! `pkcs11:` scheme; note that a URI with `pin-value` puts the PIN in the file in clear text.

use crate::der;

/// The PEM label (`-----BEGIN PKCS#11 PROVIDER URI-----`).
pub const PEM_LABEL: &str = "PKCS#11 PROVIDER URI";

/// The description string the first element must hold.
pub const DESCRIPTION: &str = "PKCS#11 Provider URI v1.0";

/// The DER structure name pkcs11-provider's decoders use (`structure=pk11-uri`).
pub const DER_STRUCTURE: &str = "pk11-uri";

const SEQUENCE: u8 = 0x30;
const VISIBLE_STRING: u8 = 0x1a;
const UTF8_STRING: u8 = 0x0c;

/// Why a URI-PEM file or its DER body cannot be read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum UriPemError {
    /// No `-----BEGIN PKCS#11 PROVIDER URI-----` block in the text.
    #[error("no -----BEGIN {PEM_LABEL}----- block")]
    NoBlock,
    /// The block has no matching END line.
    #[error("the {PEM_LABEL} block has no END line")]
    Unterminated,
    /// The block body is not valid base64.
    #[error("the {PEM_LABEL} block is not valid base64")]
    Base64,
    /// The DER does not have the expected structure.
    #[error("not a PKCS#11 provider URI structure: {0}")]
    Structure(&'static str),
    /// The description is not "PKCS#11 Provider URI v1.0".
    #[error("unknown PKCS#11 provider URI version (description is not {DESCRIPTION:?})")]
    Description,
    /// The URI is not UTF-8 or does not start with `pkcs11:`.
    #[error("the file does not hold a pkcs11: URI")]
    NotAUri,
    /// The URI given to [`pem_for_uri`] cannot name a key.
    #[error("{0}")]
    Uri(String),
}

/// The DER body for `uri`.
pub fn encode_der(uri: &str) -> Vec<u8> {
    let mut content = der::tlv(VISIBLE_STRING, DESCRIPTION.as_bytes());
    content.extend(der::tlv(UTF8_STRING, uri.as_bytes()));
    der::tlv(SEQUENCE, &content)
}

/// The PEM file for `uri` (64-column base64 lines, as OpenSSL's `PEM_write_bio` writes them).
pub fn encode_pem(uri: &str) -> String {
    der::pem_encode(PEM_LABEL, &encode_der(uri))
}

/// The URI-PEM file for a key URI, as `p11fwd uri-pem` writes it, and warnings for the user.
///
/// The URI must parse, name one object (`object=` and/or `id=`), and be of `type=private` or
/// have no type (a URI-PEM file stands for a private key file; without a type p11fwd's decoder
/// looks for a private key). A `pin-value` is allowed (unattended programs may need it) but
/// warned about: it is then in the file in clear text.
pub fn pem_for_uri(uri: &str) -> Result<(String, Vec<&'static str>), UriPemError> {
    let parsed = crate::uri::Pkcs11Uri::parse(uri).map_err(|e| UriPemError::Uri(e.to_string()))?;
    if parsed.object().is_none() && parsed.id().is_none() {
        return Err(UriPemError::Uri(
            "the URI must name a key with object= (its label) or id=".into(),
        ));
    }
    match parsed.object_type() {
        None | Some(crate::uri::ObjectClass::PrivateKey) => {}
        Some(_) => {
            return Err(UriPemError::Uri(
                "a URI-PEM file names a private key: use type=private or no type".into(),
            ));
        }
    }
    let mut warnings = Vec::new();
    if parsed.pin_value().is_some() {
        warnings.push(
            "the URI has a pin-value: the PIN is in the file in clear text; prefer \
             pin-source=file:... or the provider's pkcs11-module-token-pin",
        );
    }
    Ok((encode_pem(uri), warnings))
}

/// Reads one TLV: (tag, content, rest).
fn read_tlv(data: &[u8]) -> Result<(u8, &[u8], &[u8]), UriPemError> {
    der::read_tlv(data).ok_or(UriPemError::Structure(
        "truncated or unsupported length encoding",
    ))
}

/// The URI in a DER body.
pub fn decode_der(der: &[u8]) -> Result<String, UriPemError> {
    let (tag, seq, rest) = read_tlv(der)?;
    if tag != SEQUENCE {
        return Err(UriPemError::Structure("not a SEQUENCE"));
    }
    if !rest.is_empty() {
        return Err(UriPemError::Structure("data after the SEQUENCE"));
    }
    let (tag, desc, seq) = read_tlv(seq)?;
    if tag != VISIBLE_STRING {
        return Err(UriPemError::Structure(
            "the first element is not a VisibleString",
        ));
    }
    if desc != DESCRIPTION.as_bytes() {
        return Err(UriPemError::Description);
    }
    let (tag, uri, seq) = read_tlv(seq)?;
    if tag != UTF8_STRING {
        return Err(UriPemError::Structure(
            "the second element is not a UTF8String",
        ));
    }
    if !seq.is_empty() {
        return Err(UriPemError::Structure("extra elements in the SEQUENCE"));
    }
    let uri = core::str::from_utf8(uri).map_err(|_| UriPemError::NotAUri)?;
    let scheme = uri.get(..7).ok_or(UriPemError::NotAUri)?;
    if !scheme.eq_ignore_ascii_case("pkcs11:") {
        return Err(UriPemError::NotAUri);
    }
    Ok(uri.to_owned())
}

/// The DER body of the first `PKCS#11 PROVIDER URI` block in `text` (other PEM blocks, e.g. a
/// certificate in the same file, are skipped). Accepts CRLF line ends and surrounding blanks.
pub fn pem_block_der(text: &str) -> Result<Vec<u8>, UriPemError> {
    let begin = format!("-----BEGIN {PEM_LABEL}-----");
    let end = format!("-----END {PEM_LABEL}-----");
    let mut lines = text.lines().map(str::trim);
    lines
        .by_ref()
        .find(|l| *l == begin)
        .ok_or(UriPemError::NoBlock)?;
    let mut body = String::new();
    for line in lines {
        if line == end {
            return der::base64_decode(&body).ok_or(UriPemError::Base64);
        }
        if line.starts_with("-----") {
            return Err(UriPemError::Unterminated);
        }
        // Encapsulated headers (RFC 1421 "Name: value") are not used by this format.
        if line.contains(':') {
            return Err(UriPemError::Base64);
        }
        body.push_str(line);
    }
    Err(UriPemError::Unterminated)
}

/// The URI in the first `PKCS#11 PROVIDER URI` block of `text`.
pub fn decode_pem(text: &str) -> Result<String, UriPemError> {
    decode_der(&pem_block_der(text)?)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::der::base64_encode;

    const URI: &str = "pkcs11:token=p11fwd-test;object=ec-p256;type=private";

    /// The DER written by hand from the ASN.1 definition (pkcs11-provider's `pk11_uri.pre`):
    /// `SEQUENCE { VisibleString "PKCS#11 Provider URI v1.0", UTF8String uri }`.
    fn by_hand(uri: &str) -> Vec<u8> {
        let desc = b"PKCS#11 Provider URI v1.0";
        assert_eq!(desc.len(), 0x19);
        let mut body = vec![0x1a, 0x19];
        body.extend_from_slice(desc);
        body.push(0x0c);
        assert!(uri.len() < 0x80);
        body.push(uri.len() as u8);
        body.extend_from_slice(uri.as_bytes());
        let mut der = vec![0x30, body.len() as u8];
        der.extend(body);
        der
    }

    #[test]
    fn der_matches_the_asn1_definition() {
        let der = encode_der(URI);
        assert_eq!(der, by_hand(URI));
        assert_eq!(decode_der(&by_hand(URI)).unwrap(), URI);
    }

    #[test]
    fn a_file_in_pkcs11_provider_format_is_read() {
        // What `PEM_write_bio_P11PROV_PK11_URI` writes for this URI: the hand-made DER in
        // base64, 64 columns, OpenSSL's BEGIN/END lines.
        let uri = "pkcs11:model=SoftHSM%20v2;manufacturer=SoftHSM%20project;\
                   serial=1234567890abcdef;token=softtoken;id=%01;object=rsa2048;type=private";
        let der = by_hand_long(uri);
        let mut file = String::from("-----BEGIN PKCS#11 PROVIDER URI-----\n");
        for line in base64_encode(&der).as_bytes().chunks(64) {
            file.push_str(core::str::from_utf8(line).unwrap());
            file.push('\n');
        }
        file.push_str("-----END PKCS#11 PROVIDER URI-----\n");
        assert_eq!(decode_pem(&file).unwrap(), uri);
        assert_eq!(encode_pem(uri), file);
    }

    /// The same by hand, for a URI of 128..=255 bytes (long-form length 0x81).
    fn by_hand_long(uri: &str) -> Vec<u8> {
        let desc = b"PKCS#11 Provider URI v1.0";
        let mut body = vec![0x1a, 0x19];
        body.extend_from_slice(desc);
        body.push(0x0c);
        assert!((0x80..0x100).contains(&uri.len()));
        body.extend([0x81, uri.len() as u8]);
        body.extend_from_slice(uri.as_bytes());
        let mut der = vec![0x30];
        if body.len() < 0x80 {
            der.push(body.len() as u8);
        } else {
            der.extend([0x81, body.len() as u8]);
        }
        der.extend(body);
        der
    }

    #[test]
    fn pem_round_trip_and_layout() {
        let long = format!("pkcs11:token=t;object={}", "x".repeat(400));
        for uri in [URI, long.as_str()] {
            let pem = encode_pem(uri);
            assert!(pem.starts_with("-----BEGIN PKCS#11 PROVIDER URI-----\n"));
            assert!(pem.ends_with("-----END PKCS#11 PROVIDER URI-----\n"));
            assert!(pem.lines().all(|l| l.len() <= 64 || l.starts_with("-----")));
            assert_eq!(decode_pem(&pem).unwrap(), uri);
            assert_eq!(decode_der(&encode_der(uri)).unwrap(), uri);
        }
    }

    #[test]
    fn other_blocks_crlf_and_blanks_are_tolerated() {
        let pem = encode_pem(URI);
        let text = format!(
            "-----BEGIN CERTIFICATE-----\nMAA=\n-----END CERTIFICATE-----\n\r\n  {}",
            pem.replace('\n', "\r\n")
        );
        assert_eq!(decode_pem(&text).unwrap(), URI);
    }

    #[test]
    fn malformed_input_is_refused_without_panicking() {
        assert_eq!(decode_pem("nothing"), Err(UriPemError::NoBlock));
        assert_eq!(
            decode_pem("-----BEGIN PKCS#11 PROVIDER URI-----\nMAA=\n"),
            Err(UriPemError::Unterminated)
        );
        assert_eq!(
            decode_pem(
                "-----BEGIN PKCS#11 PROVIDER URI-----\n!!!!\n-----END PKCS#11 PROVIDER URI-----\n"
            ),
            Err(UriPemError::Base64)
        );
        let mut bad_desc = by_hand(URI);
        bad_desc[10] ^= 1;
        assert_eq!(decode_der(&bad_desc), Err(UriPemError::Description));
        let mut trailing = by_hand(URI);
        trailing.push(0);
        assert!(matches!(
            decode_der(&trailing),
            Err(UriPemError::Structure(_))
        ));
        assert!(matches!(
            decode_der(&by_hand("https://example.invalid/")),
            Err(UriPemError::NotAUri)
        ));
        let good = by_hand(URI);
        for cut in 0..good.len() {
            assert!(decode_der(&good[..cut]).is_err(), "cut at {cut}");
        }
        // Every single-byte corruption either fails or still yields some URI; never a panic.
        for i in 0..good.len() {
            for x in [0x01u8, 0x80, 0xff] {
                let mut c = good.clone();
                c[i] ^= x;
                let _ = decode_der(&c);
            }
        }
    }

    #[test]
    fn pem_for_uri_checks_the_uri() {
        let (pem, warnings) = pem_for_uri(URI).unwrap();
        assert_eq!(decode_pem(&pem).unwrap(), URI);
        assert!(warnings.is_empty());
        let (_, warnings) = pem_for_uri("pkcs11:object=k?pin-value=1234").unwrap();
        assert_eq!(warnings.len(), 1);
        assert!(!warnings[0].contains("1234"));
        assert!(pem_for_uri("pkcs11:id=%01").is_ok());
        for bad in [
            "pkcs11:token=t",
            "pkcs11:object=k;type=cert",
            "http://x",
            "pkcs11:object=%zz",
        ] {
            assert!(
                matches!(pem_for_uri(bad), Err(UriPemError::Uri(_))),
                "{bad}"
            );
        }
    }
}
