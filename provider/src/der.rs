//! The little DER the provider needs: SubjectPublicKeyInfo, AlgorithmIdentifiers, DigestInfo,
//! ECDSA signatures (raw `r|s` ↔ DER), and reading OIDs and OCTET STRINGs from token attributes.
//!
//! Writing is infallible; reading never panics on token data (every length is checked).

/// An object identifier in its DER content encoding (without tag and length).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Oid(pub(crate) &'static [u8]);

/// Well-known OIDs, DER content bytes.
pub(crate) mod oid {
    use super::Oid;

    pub(crate) const RSA_ENCRYPTION: Oid =
        Oid(&[0x2a, 0x86, 0x48, 0x86, 0xf7, 0x0d, 0x01, 0x01, 0x01]);
    pub(crate) const RSASSA_PSS: Oid = Oid(&[0x2a, 0x86, 0x48, 0x86, 0xf7, 0x0d, 0x01, 0x01, 0x0a]);
    pub(crate) const MGF1: Oid = Oid(&[0x2a, 0x86, 0x48, 0x86, 0xf7, 0x0d, 0x01, 0x01, 0x08]);
    pub(crate) const SHA1_WITH_RSA: Oid =
        Oid(&[0x2a, 0x86, 0x48, 0x86, 0xf7, 0x0d, 0x01, 0x01, 0x05]);
    pub(crate) const SHA224_WITH_RSA: Oid =
        Oid(&[0x2a, 0x86, 0x48, 0x86, 0xf7, 0x0d, 0x01, 0x01, 0x0e]);
    pub(crate) const SHA256_WITH_RSA: Oid =
        Oid(&[0x2a, 0x86, 0x48, 0x86, 0xf7, 0x0d, 0x01, 0x01, 0x0b]);
    pub(crate) const SHA384_WITH_RSA: Oid =
        Oid(&[0x2a, 0x86, 0x48, 0x86, 0xf7, 0x0d, 0x01, 0x01, 0x0c]);
    pub(crate) const SHA512_WITH_RSA: Oid =
        Oid(&[0x2a, 0x86, 0x48, 0x86, 0xf7, 0x0d, 0x01, 0x01, 0x0d]);
    pub(crate) const EC_PUBLIC_KEY: Oid = Oid(&[0x2a, 0x86, 0x48, 0xce, 0x3d, 0x02, 0x01]);
    pub(crate) const ECDSA_SHA1: Oid = Oid(&[0x2a, 0x86, 0x48, 0xce, 0x3d, 0x04, 0x01]);
    pub(crate) const ECDSA_SHA224: Oid = Oid(&[0x2a, 0x86, 0x48, 0xce, 0x3d, 0x04, 0x03, 0x01]);
    pub(crate) const ECDSA_SHA256: Oid = Oid(&[0x2a, 0x86, 0x48, 0xce, 0x3d, 0x04, 0x03, 0x02]);
    pub(crate) const ECDSA_SHA384: Oid = Oid(&[0x2a, 0x86, 0x48, 0xce, 0x3d, 0x04, 0x03, 0x03]);
    pub(crate) const ECDSA_SHA512: Oid = Oid(&[0x2a, 0x86, 0x48, 0xce, 0x3d, 0x04, 0x03, 0x04]);
    pub(crate) const P256: Oid = Oid(&[0x2a, 0x86, 0x48, 0xce, 0x3d, 0x03, 0x01, 0x07]);
    pub(crate) const P384: Oid = Oid(&[0x2b, 0x81, 0x04, 0x00, 0x22]);
    pub(crate) const P521: Oid = Oid(&[0x2b, 0x81, 0x04, 0x00, 0x23]);
    pub(crate) const X25519: Oid = Oid(&[0x2b, 0x65, 0x6e]);
    pub(crate) const X448: Oid = Oid(&[0x2b, 0x65, 0x6f]);
    pub(crate) const ED25519: Oid = Oid(&[0x2b, 0x65, 0x70]);
    pub(crate) const ED448: Oid = Oid(&[0x2b, 0x65, 0x71]);
    pub(crate) const SHA1: Oid = Oid(&[0x2b, 0x0e, 0x03, 0x02, 0x1a]);
    pub(crate) const SHA224: Oid = Oid(&[0x60, 0x86, 0x48, 0x01, 0x65, 0x03, 0x04, 0x02, 0x04]);
    pub(crate) const SHA256: Oid = Oid(&[0x60, 0x86, 0x48, 0x01, 0x65, 0x03, 0x04, 0x02, 0x01]);
    pub(crate) const SHA384: Oid = Oid(&[0x60, 0x86, 0x48, 0x01, 0x65, 0x03, 0x04, 0x02, 0x02]);
    pub(crate) const SHA512: Oid = Oid(&[0x60, 0x86, 0x48, 0x01, 0x65, 0x03, 0x04, 0x02, 0x03]);
}

const SEQUENCE: u8 = 0x30;
const INTEGER: u8 = 0x02;
const BIT_STRING: u8 = 0x03;
const OCTET_STRING: u8 = 0x04;
const NULL: u8 = 0x05;
const OID: u8 = 0x06;
const PRINTABLE_STRING: u8 = 0x13;

/// A tag-length-value (shared with the URI-PEM code in `conf`).
pub(crate) use p11fwd_conf::der::tlv;

/// A SEQUENCE of already encoded elements.
pub(crate) fn sequence(parts: &[&[u8]]) -> Vec<u8> {
    tlv(SEQUENCE, &parts.concat())
}

/// An OBJECT IDENTIFIER.
pub(crate) fn oid(oid: Oid) -> Vec<u8> {
    tlv(OID, oid.0)
}

/// NULL.
pub(crate) fn null() -> Vec<u8> {
    vec![NULL, 0]
}

/// An OCTET STRING.
pub(crate) fn octet_string(content: &[u8]) -> Vec<u8> {
    tlv(OCTET_STRING, content)
}

/// A BIT STRING with no unused bits.
pub(crate) fn bit_string(content: &[u8]) -> Vec<u8> {
    let mut c = Vec::with_capacity(content.len() + 1);
    c.push(0);
    c.extend_from_slice(content);
    tlv(BIT_STRING, &c)
}

/// A non-negative INTEGER from big-endian magnitude bytes.
pub(crate) fn unsigned_integer(be: &[u8]) -> Vec<u8> {
    let trimmed = {
        let skip = be.iter().take_while(|&&b| b == 0).count();
        &be[skip..]
    };
    let mut c = Vec::with_capacity(trimmed.len() + 1);
    if trimmed.first().is_none_or(|&b| b & 0x80 != 0) {
        c.push(0);
    }
    c.extend_from_slice(trimmed);
    tlv(INTEGER, &c)
}

/// A small non-negative INTEGER.
pub(crate) fn small_integer(v: u64) -> Vec<u8> {
    unsigned_integer(&v.to_be_bytes())
}

/// A context-specific constructed tag `[n]` around `content`.
pub(crate) fn explicit(n: u8, content: &[u8]) -> Vec<u8> {
    tlv(0xa0 | n, content)
}

/// An AlgorithmIdentifier with the parameters absent.
pub(crate) fn algorithm(id: Oid) -> Vec<u8> {
    sequence(&[&oid(id)])
}

/// An AlgorithmIdentifier with NULL parameters.
pub(crate) fn algorithm_null(id: Oid) -> Vec<u8> {
    sequence(&[&oid(id), &null()])
}

/// SubjectPublicKeyInfo.
pub(crate) fn spki(algorithm: &[u8], public_key: &[u8]) -> Vec<u8> {
    sequence(&[algorithm, &bit_string(public_key)])
}

/// PKCS#1 RSAPublicKey.
pub(crate) fn rsa_public_key(modulus: &[u8], exponent: &[u8]) -> Vec<u8> {
    sequence(&[&unsigned_integer(modulus), &unsigned_integer(exponent)])
}

/// A bounds-checked reader over DER.
#[derive(Debug)]
pub(crate) struct Reader<'a> {
    data: &'a [u8],
}

impl<'a> Reader<'a> {
    pub(crate) fn new(data: &'a [u8]) -> Self {
        Self { data }
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.data.is_empty()
    }

    /// The next TLV: (tag, content).
    pub(crate) fn next(&mut self) -> Option<(u8, &'a [u8])> {
        let (tag, content, rest) = p11fwd_conf::der::read_tlv(self.data)?;
        self.data = rest;
        Some((tag, content))
    }

    /// The next TLV if it has `tag`.
    pub(crate) fn expect(&mut self, tag: u8) -> Option<&'a [u8]> {
        match self.next()? {
            (t, c) if t == tag => Some(c),
            _ => None,
        }
    }
}

/// What `CKA_EC_PARAMS` names: an OID (content bytes) or a printable curve name.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum EcParams<'a> {
    Oid(&'a [u8]),
    Name(&'a [u8]),
}

/// Parses `CKA_EC_PARAMS` (ECParameters: a namedCurve OID, or a PrintableString curve name as
/// PKCS#11 3.0 allows for Edwards/Montgomery curves).
pub(crate) fn ec_params(der: &[u8]) -> Option<EcParams<'_>> {
    let mut r = Reader::new(der);
    match r.next()? {
        (OID, c) if r.is_empty() => Some(EcParams::Oid(c)),
        (PRINTABLE_STRING, c) if r.is_empty() => Some(EcParams::Name(c)),
        _ => None,
    }
}

/// The point inside `CKA_EC_POINT`: PKCS#11 says a DER OCTET STRING, some tokens send the raw
/// point. `raw_len` is the expected raw length, if known.
pub(crate) fn ec_point(value: &[u8], raw_len: Option<usize>) -> Vec<u8> {
    if raw_len == Some(value.len()) && value.first() != Some(&OCTET_STRING) {
        return value.to_vec();
    }
    let mut r = Reader::new(value);
    match r.next() {
        Some((OCTET_STRING, c)) if r.is_empty() && raw_len.is_none_or(|n| n == c.len()) => {
            c.to_vec()
        }
        _ => value.to_vec(),
    }
}

/// ECDSA-Sig-Value (DER) from raw `r|s` (each half the length).
pub(crate) fn ecdsa_der_from_raw(raw: &[u8]) -> Vec<u8> {
    let (r, s) = raw.split_at(raw.len() / 2);
    sequence(&[&unsigned_integer(r), &unsigned_integer(s)])
}

/// The largest DER ECDSA signature for a group whose order has `order_bits` bits.
pub(crate) fn ecdsa_der_max(order_bits: usize) -> usize {
    let n = order_bits.div_ceil(8) + usize::from(order_bits.is_multiple_of(8));
    let int = 2 + n;
    let content = 2 * int;
    content + if content < 0x80 { 2 } else { 3 }
}

/// The SubjectPublicKeyInfo of a certificate: (algorithm OID content, parameters TLV, key bits).
pub(crate) fn certificate_spki(cert: &[u8]) -> Option<(Vec<u8>, Vec<u8>, Vec<u8>)> {
    let mut outer = Reader::new(cert);
    let mut cert = Reader::new(outer.expect(SEQUENCE)?);
    let mut tbs = Reader::new(cert.expect(SEQUENCE)?);
    let mut first = tbs.next()?;
    if first.0 == 0xa0 {
        first = tbs.next()?;
    }
    let _ = first;
    for _ in 0..4 {
        tbs.expect(SEQUENCE)?; // signature, issuer, validity, subject
    }
    let mut spki = Reader::new(tbs.expect(SEQUENCE)?);
    let mut alg = Reader::new(spki.expect(SEQUENCE)?);
    let alg_oid = alg.expect(OID)?.to_vec();
    let params = alg.next().map(|(t, c)| tlv(t, c)).unwrap_or_default();
    let bits = spki.expect(BIT_STRING)?;
    let (&unused, key) = bits.split_first()?;
    if unused != 0 {
        return None;
    }
    Some((alg_oid, params, key.to_vec()))
}

/// RSAPublicKey → (modulus, exponent), big-endian without leading zeros.
pub(crate) fn parse_rsa_public_key(der: &[u8]) -> Option<(Vec<u8>, Vec<u8>)> {
    let mut outer = Reader::new(der);
    let mut seq = Reader::new(outer.expect(SEQUENCE)?);
    let strip = |b: &[u8]| {
        let skip = b.iter().take_while(|&&x| x == 0).count();
        b[skip..].to_vec()
    };
    let n = strip(seq.expect(INTEGER)?);
    let e = strip(seq.expect(INTEGER)?);
    Some((n, e))
}

/// A PEM block with 64-column lines.
pub(crate) use p11fwd_conf::der::pem_encode as pem;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn encodes_lengths_and_integers() {
        assert_eq!(tlv(0x04, &[1, 2]), [4, 2, 1, 2]);
        assert_eq!(tlv(0x04, &[0; 200])[..3], [4, 0x81, 200]);
        assert_eq!(tlv(0x04, &[0; 300])[..4], [4, 0x82, 1, 44]);
        assert_eq!(unsigned_integer(&[0, 0, 0x80]), [2, 2, 0, 0x80]);
        assert_eq!(unsigned_integer(&[0, 0x7f]), [2, 1, 0x7f]);
        assert_eq!(unsigned_integer(&[]), [2, 1, 0]);
        assert_eq!(small_integer(32), [2, 1, 32]);
    }

    #[test]
    fn ecdsa_sizes_match_openssl() {
        assert_eq!(ecdsa_der_max(256), 72);
        assert_eq!(ecdsa_der_max(384), 104);
        assert_eq!(ecdsa_der_max(521), 139);
        let raw = [0x80u8; 64];
        let der = ecdsa_der_from_raw(&raw);
        assert_eq!(der.len(), 72);
    }

    #[test]
    fn reads_ec_points_wrapped_or_raw() {
        let point = [4u8; 65];
        assert_eq!(ec_point(&octet_string(&point), Some(65)), point);
        assert_eq!(ec_point(&point, Some(65)), point);
        let ed = [7u8; 32];
        assert_eq!(ec_point(&octet_string(&ed), Some(32)), ed);
    }

    #[test]
    fn pem_armor() {
        assert!(pem("PUBLIC KEY", &[0; 100]).starts_with("-----BEGIN PUBLIC KEY-----\n"));
    }

    #[test]
    fn parses_ec_params() {
        assert_eq!(ec_params(&oid(oid::P256)), Some(EcParams::Oid(oid::P256.0)));
        assert_eq!(
            ec_params(&tlv(0x13, b"edwards25519")),
            Some(EcParams::Name(b"edwards25519"))
        );
        assert_eq!(ec_params(&[6, 10, 1]), None);
    }
}
