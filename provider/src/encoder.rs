//! What the public-key encoders write: SubjectPublicKeyInfo (DER and PEM) and a text form that
//! also shows the key's exact `pkcs11:` URI. Private material is never encoded: there is no
//! PrivateKeyInfo encoder, and the text form of a private key shows its public part only.

use p11fwd_conf::uripem;

use crate::der;
use crate::error::Error;
use crate::key::{Key, KeyKind, PublicMaterial};

/// The output an encoder algorithm produces.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Output {
    SpkiDer,
    SpkiPem,
    Text,
    /// "PrivateKeyInfo" of a token key: the URI-PEM file (pkcs11-provider's format), never
    /// key material.
    UriPem,
    /// The same as DER.
    UriDer,
}

/// Encodes `key`.
pub(crate) fn encode(key: &Key, output: Output) -> Result<Vec<u8>, Error> {
    Ok(match output {
        Output::SpkiDer => key.spki(),
        Output::SpkiPem => der::pem("PUBLIC KEY", &key.spki()).into_bytes(),
        Output::Text => text(key).into_bytes(),
        Output::UriPem | Output::UriDer => {
            if !key.has_private() || !key.is_on_token() {
                return Err(Error::Unsupported(
                    "a private key file for a key that is not a private key on the token",
                ));
            }
            if output == Output::UriPem {
                uripem::encode_pem(&key.uri).into_bytes()
            } else {
                uripem::encode_der(&key.uri)
            }
        }
    })
}

fn hex_block(out: &mut String, bytes: &[u8]) {
    for (i, line) in bytes.chunks(15).enumerate() {
        let _ = i;
        out.push_str("    ");
        let hex: Vec<String> = line.iter().map(|b| format!("{b:02x}")).collect();
        out.push_str(&hex.join(":"));
        out.push_str(":\n");
    }
    if out.ends_with(":\n") {
        out.truncate(out.len() - 2);
        out.push('\n');
    }
}

/// OpenSSL-like text, with the URI and where the private key is.
pub(crate) fn text(key: &Key) -> String {
    let mut out = String::new();
    let what = if key.has_private() {
        "Private-Key"
    } else {
        "Public-Key"
    };
    out.push_str(&format!(
        "PKCS11 {} {what} ({} bit, on token {:?}{})\n",
        key.kind.name().to_string_lossy(),
        key.bits(),
        key.token_label,
        if key.has_private() {
            "; the private part stays there"
        } else {
            ""
        }
    ));
    if key.is_on_token() {
        out.push_str(&format!("URI {}\n", key.uri));
    }
    match (&key.public, key.kind) {
        (PublicMaterial::Rsa { n, e }, _) => {
            out.push_str(&format!("Public-Key: ({} bit)\nModulus:\n", key.bits()));
            let mut m = Vec::with_capacity(n.len() + 1);
            if n.first().is_some_and(|b| b & 0x80 != 0) {
                m.push(0);
            }
            m.extend_from_slice(n);
            hex_block(&mut out, &m);
            let ev = e.iter().fold(0u128, |a, &b| (a << 8) | u128::from(b));
            if e.len() <= 8 {
                out.push_str(&format!("Exponent: {ev} (0x{ev:x})\n"));
            } else {
                out.push_str("Exponent:\n");
                hex_block(&mut out, e);
            }
        }
        (PublicMaterial::Ec(p), KeyKind::Ec(c)) => {
            out.push_str(&format!("Public-Key: ({} bit)\npub:\n", c.bits()));
            hex_block(&mut out, p);
            out.push_str(&format!("ASN1 OID: {}\n", c.group_name().to_string_lossy()));
        }
        (PublicMaterial::Ec(p) | PublicMaterial::Raw(p), kind) => {
            out.push_str(&format!(
                "{} Public-Key:\npub:\n",
                kind.name().to_string_lossy()
            ));
            hex_block(&mut out, p);
        }
    }
    out
}
