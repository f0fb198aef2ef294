//! Just enough DER to take apart what `openssl` writes for the fixtures (PKCS#8 private keys,
//! SubjectPublicKeyInfo, X.509 certificates) and to build the few values PKCS#11 wants in DER
//! (`CKA_EC_POINT`).

use anyhow::{Result, bail, ensure};

pub(crate) const TAG_INTEGER: u8 = 0x02;
pub(crate) const TAG_BIT_STRING: u8 = 0x03;
pub(crate) const TAG_OCTET_STRING: u8 = 0x04;
pub(crate) const TAG_OID: u8 = 0x06;
pub(crate) const TAG_SEQUENCE: u8 = 0x30;

/// One tag-length-value element.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Tlv<'a> {
    pub(crate) tag: u8,
    /// The value bytes only.
    pub(crate) content: &'a [u8],
    /// The whole element, tag and length included.
    pub(crate) raw: &'a [u8],
}

impl<'a> Tlv<'a> {
    /// A reader over the content of a constructed element.
    pub(crate) fn reader(&self) -> Reader<'a> {
        Reader::new(self.content)
    }
}

/// Reads consecutive elements from a byte slice.
#[derive(Debug, Clone)]
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

    /// The next element, whatever its tag.
    pub(crate) fn any(&mut self) -> Result<Tlv<'a>> {
        let data = self.data;
        ensure!(data.len() >= 2, "DER: truncated header");
        let tag = data[0];
        ensure!(tag & 0x1f != 0x1f, "DER: multi-byte tags are not supported");
        let (len, header) = match data[1] {
            n if n < 0x80 => (usize::from(n), 2),
            0x80 => bail!("DER: indefinite length"),
            n => {
                let count = usize::from(n & 0x7f);
                ensure!(
                    count <= 4 && data.len() >= 2 + count,
                    "DER: bad long length"
                );
                let len = data[2..2 + count]
                    .iter()
                    .fold(0usize, |acc, b| (acc << 8) | usize::from(*b));
                (len, 2 + count)
            }
        };
        ensure!(
            data.len() - header >= len,
            "DER: element longer than its container"
        );
        let tlv = Tlv {
            tag,
            content: &data[header..header + len],
            raw: &data[..header + len],
        };
        self.data = &data[header + len..];
        Ok(tlv)
    }

    /// The next element, which must have tag `tag`.
    pub(crate) fn expect(&mut self, tag: u8) -> Result<Tlv<'a>> {
        let tlv = self.any()?;
        ensure!(
            tlv.tag == tag,
            "DER: expected tag 0x{tag:02x}, found 0x{:02x}",
            tlv.tag
        );
        Ok(tlv)
    }

    /// The next element if it has tag `tag`.
    pub(crate) fn optional(&mut self, tag: u8) -> Result<Option<Tlv<'a>>> {
        if self.data.first() == Some(&tag) {
            self.expect(tag).map(Some)
        } else {
            Ok(None)
        }
    }

    /// The next INTEGER as an unsigned big-endian number without leading zero bytes, the form
    /// PKCS#11 big integers (`CKA_MODULUS`, ...) take.
    pub(crate) fn unsigned(&mut self) -> Result<Vec<u8>> {
        let int = self.expect(TAG_INTEGER)?;
        ensure!(!int.content.is_empty(), "DER: empty INTEGER");
        ensure!(int.content[0] & 0x80 == 0, "DER: negative INTEGER");
        let first = int
            .content
            .iter()
            .position(|b| *b != 0)
            .unwrap_or(int.content.len() - 1);
        Ok(int.content[first..].to_vec())
    }
}

/// Encodes a length in DER.
fn length(len: usize) -> Vec<u8> {
    if len < 0x80 {
        return vec![len as u8];
    }
    let bytes: Vec<u8> = len
        .to_be_bytes()
        .into_iter()
        .skip_while(|b| *b == 0)
        .collect();
    let mut out = vec![0x80 | bytes.len() as u8];
    out.extend(bytes);
    out
}

/// Encodes one element.
pub(crate) fn encode(tag: u8, content: &[u8]) -> Vec<u8> {
    let mut out = vec![tag];
    out.extend(length(content.len()));
    out.extend_from_slice(content);
    out
}

/// The parts of a certificate PKCS#11 wants as attributes.
#[derive(Debug)]
pub(crate) struct CertInfo<'a> {
    pub(crate) serial: &'a [u8],
    pub(crate) issuer: &'a [u8],
    pub(crate) subject: &'a [u8],
}

/// Takes `serialNumber`, `issuer` and `subject` (each as whole DER elements) from a certificate.
pub(crate) fn cert_info(cert: &[u8]) -> Result<CertInfo<'_>> {
    let mut top = Reader::new(cert);
    let certificate = top.expect(TAG_SEQUENCE)?;
    let mut cert_fields = certificate.reader();
    let tbs = cert_fields.expect(TAG_SEQUENCE)?;
    let mut tbs = tbs.reader();
    tbs.optional(0xa0)?; // [0] version
    let serial = tbs.expect(TAG_INTEGER)?.raw;
    tbs.expect(TAG_SEQUENCE)?; // signature algorithm
    let issuer = tbs.expect(TAG_SEQUENCE)?.raw;
    tbs.expect(TAG_SEQUENCE)?; // validity
    let subject = tbs.expect(TAG_SEQUENCE)?.raw;
    Ok(CertInfo {
        serial,
        issuer,
        subject,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn encodes_short_and_long_lengths() {
        assert_eq!(encode(TAG_OCTET_STRING, &[1, 2]), vec![0x04, 2, 1, 2]);
        let long = encode(TAG_OCTET_STRING, &[0; 200]);
        assert_eq!(&long[..3], &[0x04, 0x81, 200]);
        let longer = encode(TAG_OCTET_STRING, &[0; 300]);
        assert_eq!(&longer[..4], &[0x04, 0x82, 0x01, 0x2c]);
    }

    #[test]
    fn reads_back_what_it_encodes() -> Result<()> {
        let inner = [
            encode(TAG_INTEGER, &[0x00, 0x80, 0x01]),
            encode(TAG_OID, &[0x2b, 0x65, 0x70]),
        ]
        .concat();
        let outer = encode(TAG_SEQUENCE, &inner);
        let mut r = Reader::new(&outer);
        let seq = r.expect(TAG_SEQUENCE)?;
        assert!(r.is_empty());
        let mut r = seq.reader();
        assert_eq!(r.unsigned()?, vec![0x80, 0x01]);
        assert!(r.optional(TAG_INTEGER)?.is_none());
        assert_eq!(r.expect(TAG_OID)?.raw, &[0x06, 0x03, 0x2b, 0x65, 0x70]);
        assert!(r.any().is_err());
        Ok(())
    }

    #[test]
    fn rejects_element_longer_than_container() {
        assert!(Reader::new(&[0x04, 0x05, 1, 2]).any().is_err());
        assert!(Reader::new(&[0x04, 0x80, 1, 2]).any().is_err());
    }
}
