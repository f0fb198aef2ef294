//! The hash functions p11fwd knows: names, sizes, OIDs, the matching PKCS#11 mechanisms, and a
//! local implementation (the pure-Rust `sha1`/`sha2` crates: never fetched through OpenSSL from
//! inside the provider, which could recurse into our own digests).

use sha1::Digest as _;

use crate::der::{Oid, oid};
use p11fwd_wire::consts::*;

/// A hash algorithm.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Hash {
    Sha1,
    Sha224,
    Sha256,
    Sha384,
    Sha512,
}

impl Hash {
    pub(crate) const ALL: [Self; 5] = [
        Self::Sha1,
        Self::Sha224,
        Self::Sha256,
        Self::Sha384,
        Self::Sha512,
    ];

    /// Parses an OpenSSL digest name (any of its aliases, case-insensitive) or OID.
    pub(crate) fn from_name(name: &str) -> Option<Self> {
        let n = name.trim().to_ascii_uppercase();
        Some(match n.as_str() {
            "SHA1" | "SHA-1" | "SSL3-SHA1" | "1.3.14.3.2.26" => Self::Sha1,
            "SHA224" | "SHA-224" | "SHA2-224" | "2.16.840.1.101.3.4.2.4" => Self::Sha224,
            "SHA256" | "SHA-256" | "SHA2-256" | "2.16.840.1.101.3.4.2.1" => Self::Sha256,
            "SHA384" | "SHA-384" | "SHA2-384" | "2.16.840.1.101.3.4.2.2" => Self::Sha384,
            "SHA512" | "SHA-512" | "SHA2-512" | "2.16.840.1.101.3.4.2.3" => Self::Sha512,
            _ => return None,
        })
    }

    /// OpenSSL's canonical name.
    pub(crate) fn name(self) -> &'static str {
        match self {
            Self::Sha1 => "SHA1",
            Self::Sha224 => "SHA2-224",
            Self::Sha256 => "SHA2-256",
            Self::Sha384 => "SHA2-384",
            Self::Sha512 => "SHA2-512",
        }
    }

    /// Output size in bytes.
    pub(crate) fn size(self) -> usize {
        match self {
            Self::Sha1 => 20,
            Self::Sha224 => 28,
            Self::Sha256 => 32,
            Self::Sha384 => 48,
            Self::Sha512 => 64,
        }
    }

    /// Block size in bytes.
    pub(crate) fn block_size(self) -> usize {
        match self {
            Self::Sha1 | Self::Sha224 | Self::Sha256 => 64,
            Self::Sha384 | Self::Sha512 => 128,
        }
    }

    pub(crate) fn oid(self) -> Oid {
        match self {
            Self::Sha1 => oid::SHA1,
            Self::Sha224 => oid::SHA224,
            Self::Sha256 => oid::SHA256,
            Self::Sha384 => oid::SHA384,
            Self::Sha512 => oid::SHA512,
        }
    }

    /// `CKM_SHA*` (the `hashAlg` of PSS parameters).
    pub(crate) fn ckm(self) -> u64 {
        match self {
            Self::Sha1 => CKM_SHA_1,
            Self::Sha224 => CKM_SHA224,
            Self::Sha256 => CKM_SHA256,
            Self::Sha384 => CKM_SHA384,
            Self::Sha512 => CKM_SHA512,
        }
    }

    /// `CKG_MGF1_SHA*`.
    pub(crate) fn mgf1(self) -> u64 {
        match self {
            Self::Sha1 => CKG_MGF1_SHA1,
            Self::Sha224 => CKG_MGF1_SHA224,
            Self::Sha256 => CKG_MGF1_SHA256,
            Self::Sha384 => CKG_MGF1_SHA384,
            Self::Sha512 => CKG_MGF1_SHA512,
        }
    }

    /// `CKM_SHA*_RSA_PKCS`.
    pub(crate) fn rsa_pkcs(self) -> u64 {
        match self {
            Self::Sha1 => CKM_SHA1_RSA_PKCS,
            Self::Sha224 => CKM_SHA224_RSA_PKCS,
            Self::Sha256 => CKM_SHA256_RSA_PKCS,
            Self::Sha384 => CKM_SHA384_RSA_PKCS,
            Self::Sha512 => CKM_SHA512_RSA_PKCS,
        }
    }

    /// `CKM_SHA*_RSA_PKCS_PSS`.
    pub(crate) fn rsa_pss(self) -> u64 {
        match self {
            Self::Sha1 => CKM_SHA1_RSA_PKCS_PSS,
            Self::Sha224 => CKM_SHA224_RSA_PKCS_PSS,
            Self::Sha256 => CKM_SHA256_RSA_PKCS_PSS,
            Self::Sha384 => CKM_SHA384_RSA_PKCS_PSS,
            Self::Sha512 => CKM_SHA512_RSA_PKCS_PSS,
        }
    }

    /// `CKM_ECDSA_SHA*`.
    pub(crate) fn ecdsa(self) -> u64 {
        match self {
            Self::Sha1 => CKM_ECDSA_SHA1,
            Self::Sha224 => CKM_ECDSA_SHA224,
            Self::Sha256 => CKM_ECDSA_SHA256,
            Self::Sha384 => CKM_ECDSA_SHA384,
            Self::Sha512 => CKM_ECDSA_SHA512,
        }
    }

    /// The `*WithRSAEncryption` signature OID.
    pub(crate) fn rsa_sig_oid(self) -> Oid {
        match self {
            Self::Sha1 => oid::SHA1_WITH_RSA,
            Self::Sha224 => oid::SHA224_WITH_RSA,
            Self::Sha256 => oid::SHA256_WITH_RSA,
            Self::Sha384 => oid::SHA384_WITH_RSA,
            Self::Sha512 => oid::SHA512_WITH_RSA,
        }
    }

    /// The `ecdsa-with-SHA*` signature OID.
    pub(crate) fn ecdsa_sig_oid(self) -> Oid {
        match self {
            Self::Sha1 => oid::ECDSA_SHA1,
            Self::Sha224 => oid::ECDSA_SHA224,
            Self::Sha256 => oid::ECDSA_SHA256,
            Self::Sha384 => oid::ECDSA_SHA384,
            Self::Sha512 => oid::ECDSA_SHA512,
        }
    }

    /// PKCS#1 v1.5 DigestInfo for `digest`.
    pub(crate) fn digest_info(self, digest: &[u8]) -> Vec<u8> {
        use crate::der;
        der::sequence(&[&der::algorithm_null(self.oid()), &der::octet_string(digest)])
    }

    /// A fresh local hasher.
    pub(crate) fn hasher(self) -> Hasher {
        match self {
            Self::Sha1 => Hasher::Sha1(sha1::Sha1::new()),
            Self::Sha224 => Hasher::Sha224(sha2::Sha224::new()),
            Self::Sha256 => Hasher::Sha256(sha2::Sha256::new()),
            Self::Sha384 => Hasher::Sha384(sha2::Sha384::new()),
            Self::Sha512 => Hasher::Sha512(sha2::Sha512::new()),
        }
    }

    /// Hashes `data` at once.
    pub(crate) fn digest(self, data: &[u8]) -> Vec<u8> {
        let mut h = self.hasher();
        h.update(data);
        h.finish()
    }
}

/// A running local hash.
#[derive(Debug, Clone)]
pub(crate) enum Hasher {
    Sha1(sha1::Sha1),
    Sha224(sha2::Sha224),
    Sha256(sha2::Sha256),
    Sha384(sha2::Sha384),
    Sha512(sha2::Sha512),
}

impl Hasher {
    pub(crate) fn update(&mut self, data: &[u8]) {
        match self {
            Self::Sha1(h) => h.update(data),
            Self::Sha224(h) => h.update(data),
            Self::Sha256(h) => h.update(data),
            Self::Sha384(h) => h.update(data),
            Self::Sha512(h) => h.update(data),
        }
    }

    pub(crate) fn finish(self) -> Vec<u8> {
        match self {
            Self::Sha1(h) => h.finalize().to_vec(),
            Self::Sha224(h) => h.finalize().to_vec(),
            Self::Sha256(h) => h.finalize().to_vec(),
            Self::Sha384(h) => h.finalize().to_vec(),
            Self::Sha512(h) => h.finalize().to_vec(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_and_known_answers() {
        assert_eq!(Hash::from_name("sha256"), Some(Hash::Sha256));
        assert_eq!(Hash::from_name("SHA2-512"), Some(Hash::Sha512));
        assert_eq!(Hash::from_name("md5"), None);
        let d = Hash::Sha256.digest(b"abc");
        assert_eq!(d[..4], [0xba, 0x78, 0x16, 0xbf]);
        let d = Hash::Sha1.digest(b"abc");
        assert_eq!(d[..4], [0xa9, 0x99, 0x3e, 0x36]);
        for h in Hash::ALL {
            assert_eq!(h.digest(b"").len(), h.size());
        }
        // The SHA-256 DigestInfo prefix of RFC 8017.
        let di = Hash::Sha256.digest_info(&[0; 32]);
        assert_eq!(
            di[..19],
            [
                0x30, 0x31, 0x30, 0x0d, 0x06, 0x09, 0x60, 0x86, 0x48, 0x01, 0x65, 0x03, 0x04, 0x02,
                0x01, 0x05, 0x00, 0x04, 0x20
            ]
        );
    }
}
