//! Key pair generation on the token (keymgmt `gen`): RSA, EC (P-256/384/521), Ed25519, Ed448,
//! and structurally X25519/X448.
//!
//! `openssl genpkey -provider p11fwd -provider default -algorithm EC -pkeyopt
//! ec_paramgen_curve:P-256 -pkeyopt pkcs11_uri:pkcs11:token=t;object=NAME -out key.pem` makes
//! the pair on the token (`CKA_TOKEN=true`; the private key sensitive and not extractable),
//! labelled from the URI's `object`, with the URI's `id` or 16 fresh random bytes as `CKA_ID`,
//! and `-out` writes the URI-PEM file of the new key (the PrivateKeyInfo encoder).
//!
//! p11fwd generates keys only on a token: without `pkcs11_uri` the generation is refused with
//! a message saying how to get a software key instead (OpenSSL picks the keymgmt of the first
//! loaded provider for `genpkey`, and for TLS ephemeral keys: load `default` first).
//!
//! Round trips: the login and `C_GenerateKeyPair` in one write, then the new objects'
//! attributes (after connecting, which is 3 when the process has not connected yet).

use std::sync::Arc;

use p11fwd_conf::uri::Pkcs11Uri;
use p11fwd_wire::Attribute;
use p11fwd_wire::Mechanism;
use p11fwd_wire::client::{parse, req};
use p11fwd_wire::consts::*;
use zeroize::Zeroizing;

use crate::backend::{Link, PinFrom, Token};
use crate::der::oid;
use crate::error::Error;
use crate::ffi::cast::{Castable, OwnershipBox};
use crate::key::{Curve, Key, KeyKind, Parts};
use crate::provider::ProvCtx;

/// A key generation context.
#[derive(Debug)]
pub(crate) struct GenCtx {
    provctx: Arc<ProvCtx>,
    pub(crate) kind: KeyKind,
    /// `pkcs11_uri`.
    pub(crate) uri: Option<String>,
    /// `pkcs11_key_usage`: space-separated X.509 key usage names.
    pub(crate) key_usage: Option<String>,
    /// `bits` (RSA).
    pub(crate) bits: usize,
    /// `e` (RSA), big-endian.
    pub(crate) exponent: Vec<u8>,
    /// `group` (EC).
    pub(crate) curve: Option<Curve>,
}

impl Castable for GenCtx {
    type Ownership = OwnershipBox;
    const WHAT: &'static str = "key generation ctx";
}

/// Which attributes the key's usage turns on.
#[derive(Debug, Clone, Copy)]
struct Usage {
    sign: bool,
    encrypt: bool,
    wrap: bool,
    derive: bool,
}

impl GenCtx {
    pub(crate) fn new(provctx: Arc<ProvCtx>, kind: KeyKind) -> Self {
        Self {
            provctx,
            kind,
            uri: None,
            key_usage: None,
            bits: 2048,
            exponent: vec![0x01, 0x00, 0x01],
            curve: None,
        }
    }

    fn usage(&self) -> Result<Usage, Error> {
        let Some(list) = &self.key_usage else {
            return Ok(match self.kind {
                KeyKind::Rsa | KeyKind::RsaPss => Usage {
                    sign: true,
                    encrypt: true,
                    wrap: false,
                    derive: false,
                },
                KeyKind::Ec(_) => Usage {
                    sign: true,
                    encrypt: false,
                    wrap: false,
                    derive: true,
                },
                KeyKind::Ed25519 | KeyKind::Ed448 => Usage {
                    sign: true,
                    encrypt: false,
                    wrap: false,
                    derive: false,
                },
                KeyKind::X25519 | KeyKind::X448 => Usage {
                    sign: false,
                    encrypt: false,
                    wrap: false,
                    derive: true,
                },
            });
        };
        let mut u = Usage {
            sign: false,
            encrypt: false,
            wrap: false,
            derive: false,
        };
        for word in list.split_whitespace() {
            match word {
                "digitalSignature" => u.sign = true,
                "dataEncipherment" => u.encrypt = true,
                "keyEncipherment" => u.wrap = true,
                "keyAgreement" => u.derive = true,
                _ => {
                    return Err(Error::KeyGen(format!(
                        "pkcs11_key_usage: unknown usage {word:?} (digitalSignature, \
                         dataEncipherment, keyEncipherment, keyAgreement)"
                    )));
                }
            }
        }
        Ok(u)
    }

    fn mechanism(&self) -> Result<u64, Error> {
        Ok(match self.kind {
            KeyKind::Rsa => CKM_RSA_PKCS_KEY_PAIR_GEN,
            KeyKind::Ec(_) => CKM_EC_KEY_PAIR_GEN,
            KeyKind::Ed25519 | KeyKind::Ed448 => CKM_EC_EDWARDS_KEY_PAIR_GEN,
            KeyKind::X25519 | KeyKind::X448 => CKM_EC_MONTGOMERY_KEY_PAIR_GEN,
            KeyKind::RsaPss => {
                return Err(Error::Unsupported(
                    "generating RSA-PSS keys (generate an RSA key on the token)",
                ));
            }
        })
    }

    /// (key type, type-specific public template, type-specific private template).
    fn templates(&self) -> Result<(u64, Vec<Attribute>), Error> {
        Ok(match self.kind {
            KeyKind::Rsa | KeyKind::RsaPss => {
                if !(1024..=16384).contains(&self.bits) {
                    return Err(Error::KeyGen(format!(
                        "RSA keys of {} bits (1024 to 16384)",
                        self.bits
                    )));
                }
                (
                    CKK_RSA,
                    vec![
                        Attribute::ulong(CKA_MODULUS_BITS, self.bits as u64),
                        Attribute::bytes(CKA_PUBLIC_EXPONENT, self.exponent.clone()),
                    ],
                )
            }
            KeyKind::Ec(_) => {
                let curve = self.curve.ok_or(Error::KeyGen(
                    "an EC key needs a curve: -pkeyopt ec_paramgen_curve:P-256 (or P-384, P-521)"
                        .into(),
                ))?;
                (
                    CKK_EC,
                    vec![Attribute::bytes(CKA_EC_PARAMS, oid(curve.oid()))],
                )
            }
            KeyKind::Ed25519 => (
                CKK_EC_EDWARDS,
                vec![Attribute::bytes(CKA_EC_PARAMS, oid(oid::ED25519))],
            ),
            KeyKind::Ed448 => (
                CKK_EC_EDWARDS,
                vec![Attribute::bytes(CKA_EC_PARAMS, oid(oid::ED448))],
            ),
            KeyKind::X25519 => (
                CKK_EC_MONTGOMERY,
                vec![Attribute::bytes(CKA_EC_PARAMS, oid(oid::X25519))],
            ),
            KeyKind::X448 => (
                CKK_EC_MONTGOMERY,
                vec![Attribute::bytes(CKA_EC_PARAMS, oid(oid::X448))],
            ),
        })
    }

    /// The token the URI names: exactly one.
    fn token(&self, link: &Link, uri: &Pkcs11Uri) -> Result<Arc<Token>, Error> {
        let matching: Vec<&Arc<Token>> = link
            .tokens
            .iter()
            .filter(|t| {
                let view = p11fwd_conf::uri::TokenView {
                    label: &t.info.label,
                    manufacturer: &t.info.manufacturer_id,
                    model: &t.info.model,
                    serial: &t.info.serial_number,
                };
                uri.matches_token(&view) && uri.slot_id().is_none_or(|id| id == t.slot)
            })
            .collect();
        match matching.as_slice() {
            [t] => Ok(Arc::clone(t)),
            [] => Err(Error::NoMatch(format!(
                "{} (no token to generate the key on)",
                uri.to_string_without_pin()
            ))),
            many => Err(Error::KeyGen(format!(
                "{} tokens match {}; name one with token= (found: {})",
                many.len(),
                uri.to_string_without_pin(),
                many.iter()
                    .map(|t| t.label())
                    .collect::<Vec<_>>()
                    .join(", ")
            ))),
        }
    }

    /// The user login: the URI's PIN, the configuration's, one that worked before, else a
    /// terminal prompt (`Backend::login_pin`: after reading the PIN state again).
    fn pin(
        &self,
        link: &Link,
        uri: &Pkcs11Uri,
        token: &Token,
    ) -> Result<(Option<Zeroizing<String>>, PinFrom), Error> {
        let backend = self.provctx.backend();
        let given = backend.given_pin(uri, &uri.to_string_without_pin(), token)?;
        backend.login_pin(link, token, given, &mut crate::ffi::ui::TerminalPrompt)
    }

    /// Generates the pair on the token and returns the private key.
    pub(crate) fn generate(&self) -> Result<Key, Error> {
        let text = self.uri.as_deref().ok_or(Error::KeyGen(
            "p11fwd generates keys only on a token: add -pkeyopt \
             pkcs11_uri:pkcs11:object=<label> (for a software key, load the default provider \
             before p11fwd, or use -propquery provider=default)"
                .into(),
        ))?;
        let uri = Pkcs11Uri::parse(text).map_err(|e| Error::UriParse {
            uri: String::new(),
            problem: e.to_string(),
        })?;
        if uri.object().is_none() && uri.id().is_none() {
            return Err(Error::KeyGen(
                "pkcs11_uri must give the new key a label (object=) or an id (id=)".into(),
            ));
        }
        let mech = self.mechanism()?;
        let (key_type, specific) = self.templates()?;
        let usage = self.usage()?;
        let backend = self.provctx.backend();
        let link = backend.link()?;
        let token = self.token(&link, &uri)?;
        if !token.mechanisms.contains(&mech) {
            return Err(Error::Unsupported(
                "generating this key type on the token (its mechanism list lacks the key pair \
                 generation mechanism)",
            ));
        }
        let id = match uri.id() {
            Some(id) => id.to_vec(),
            None => {
                let mut id = vec![0u8; 16];
                crate::ffi::rand::fill(&mut id);
                id
            }
        };
        let common = |class: u64| {
            let mut t = vec![
                Attribute::ulong(CKA_CLASS, class),
                Attribute::ulong(CKA_KEY_TYPE, key_type),
                Attribute::bool(CKA_TOKEN, true),
                Attribute::bytes(CKA_ID, id.clone()),
            ];
            if let Some(label) = uri.object() {
                t.push(Attribute::bytes(CKA_LABEL, label.as_bytes().to_vec()));
            }
            t
        };
        // Every usage flag explicitly: tokens (SoftHSM) default the unspecified ones to TRUE.
        let rsa = key_type == CKK_RSA;
        let mut public = common(CKO_PUBLIC_KEY);
        public.extend(specific);
        public.extend([
            Attribute::bool(CKA_PRIVATE, false),
            Attribute::bool(CKA_VERIFY, usage.sign),
            Attribute::bool(CKA_ENCRYPT, rsa && usage.encrypt),
            Attribute::bool(CKA_WRAP, rsa && usage.wrap),
            Attribute::bool(CKA_DERIVE, !rsa && usage.derive),
        ]);
        let mut private = common(CKO_PRIVATE_KEY);
        private.extend([
            Attribute::bool(CKA_PRIVATE, true),
            Attribute::bool(CKA_SENSITIVE, true),
            Attribute::bool(CKA_EXTRACTABLE, false),
            Attribute::bool(CKA_SIGN, usage.sign),
            Attribute::bool(CKA_DECRYPT, rsa && usage.encrypt),
            Attribute::bool(CKA_UNWRAP, rsa && usage.wrap),
            Attribute::bool(CKA_DERIVE, !rsa && usage.derive),
        ]);
        let pin = if token.login_required() && !token.logged_in() {
            Some(self.pin(&link, &uri, &token)?)
        } else {
            None
        };
        // Token objects need a read/write session: open one (the pool's are read-only),
        // logging in on a pooled session in the same round trip.
        let session = token.session(&link)?;
        let mut batch = Vec::new();
        if let Some((pin, from)) = &pin {
            // Never a PIN this token rejected, nor one its PIN state refuses.
            token.check_pin_allowed(pin.as_ref(), *from)?;
            batch.push(req::login(
                session.handle,
                CKU_USER,
                pin.as_ref().map(|p| p.as_bytes()),
            ));
        }
        batch.push(req::open_session(
            token.slot,
            CKF_SERIAL_SESSION | CKF_RW_SESSION,
        ));
        let mut replies = link.batch(&batch).into_iter();
        if let Some((pin, _)) = &pin {
            let login = replies.next().unwrap_or(Err(p11fwd_wire::Error::Closed));
            if let Err(e) = token.record_login(&login, pin.as_ref()) {
                // The read/write session opened in the same round trip is not used.
                if let Some(Ok(args)) = replies.next()
                    && let Ok(rw) = parse::ulong(args)
                {
                    let _ = link.batch(&[req::close_session(rw)]);
                }
                return Err(e);
            }
            if let Some(p) = pin
                && from_config_or_uri(&uri, backend)?
            {
                backend.remember_pin(&token, p);
            }
        }
        drop(session);
        let rw = replies
            .next()
            .unwrap_or(Err(p11fwd_wire::Error::Closed))
            .and_then(parse::ulong)
            .map_err(|e| Error::KeyGen(format!("a read/write session: {e}")))?;
        tracing::debug!(mechanism = mech, kind = ?self.kind, "generate key pair");
        let generated = link
            .batch(&[req::generate_key_pair(
                rw,
                Mechanism::new(mech),
                public,
                private,
            )])
            .pop()
            .unwrap_or(Err(p11fwd_wire::Error::Closed))
            .and_then(parse::ulong_pair);
        let (pub_handle, priv_handle) = match generated {
            Ok(h) => h,
            Err(e) => {
                let _ = link.batch(&[req::close_session(rw)]);
                return Err(Error::KeyGen(format!("C_GenerateKeyPair: {e}")));
            }
        };
        // The new objects' attributes, and the read/write session closed, in one round trip.
        let objects =
            link.attributes_then(rw, &[pub_handle, priv_handle], req::close_session(rw))?;
        let public = objects.iter().find(|o| o.handle == pub_handle);
        let private = objects
            .iter()
            .find(|o| o.handle == priv_handle)
            .ok_or(Error::KeyGen(
                "the new private key cannot be read back".into(),
            ))?;
        let parts = Parts {
            private: Some(private),
            public,
            cert: None,
        };
        let key = Key::build(&self.provctx, &link, &token, &parts, true)?;
        tracing::debug!(uri = %key.uri, "generated");
        Ok(key)
    }
}

/// Whether the PIN came from the URI or the configuration (then it is remembered for logins on
/// later connections, e.g. after `fork()`).
fn from_config_or_uri(uri: &Pkcs11Uri, backend: &crate::backend::Backend) -> Result<bool, Error> {
    Ok(uri.pin_value().is_some()
        || uri.pin_source().is_some()
        || backend.configured_pin()?.is_some())
}
