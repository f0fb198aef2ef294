//! Key exchange with token keys: ECDH on P-256/P-384/P-521 and X25519/X448
//! (`CKM_ECDH1_DERIVE`, raw shared secret, no KDF).
//!
//! The secret is derived on the token into a session object (`CKO_SECRET_KEY`,
//! `CKK_GENERIC_SECRET`, `CKA_TOKEN=false`, not sensitive, extractable), read and destroyed:
//! two round trips, `C_DeriveKey`, then `C_GetAttributeValue(CKA_VALUE)` + `C_DestroyObject`
//! together (the second pair needs the new handle, so it cannot share the first write).
//!
//! `CK_ECDH1_DERIVE_PARAMS` has pointers and no serializer in p11-kit 0.24 (protocol 0), so a
//! stock 0.24 server cannot carry it (p11-kit-rpc.md §5.1); that is said before anything is
//! sent. X25519/X448 are implemented the same way (`CKK_EC_MONTGOMERY` keys) but cannot be
//! tested on SoftHSM 2.6, which has no Montgomery keys.

use std::sync::Arc;

use p11fwd_wire::client::{parse, req};
use p11fwd_wire::consts::*;
use p11fwd_wire::value::AttrSlot;
use p11fwd_wire::{Attribute, MechParam, Mechanism};
use zeroize::Zeroizing;

use crate::error::Error;
use crate::ffi::cast::{Castable, OwnershipBox};
use crate::key::{Key, KeyKind, PublicMaterial};
use crate::provider::ProvCtx;

/// The message for a server whose protocol cannot carry ECDH parameters.
pub(crate) const NO_ECDH_PARAMS: &str = "ECDH through this server: the server's p11-kit \
     (protocol 0) cannot carry ECDH parameters; use p11fwd server or p11-kit >= 0.25";

/// A key exchange context.
#[derive(Debug, Clone)]
pub(crate) struct ExchCtx {
    _provctx: Arc<ProvCtx>,
    key: Option<Arc<Key>>,
    peer: Option<Arc<Key>>,
}

impl Castable for ExchCtx {
    type Ownership = OwnershipBox;
    const WHAT: &'static str = "key exchange ctx";
}

impl ExchCtx {
    pub(crate) fn new(provctx: Arc<ProvCtx>) -> Self {
        Self {
            _provctx: provctx,
            key: None,
            peer: None,
        }
    }

    /// `init`: our private key.
    pub(crate) fn init(&mut self, key: Arc<Key>) -> Result<(), Error> {
        if !matches!(key.kind, KeyKind::Ec(_) | KeyKind::X25519 | KeyKind::X448) {
            return Err(Error::Unsupported("key exchange with this key type"));
        }
        if !key.has_private() {
            return Err(Error::Unsupported("key exchange with a public key"));
        }
        self.key = Some(key);
        self.peer = None;
        Ok(())
    }

    /// `set_peer`: the other side's public key (imported into our keymgmt by OpenSSL).
    pub(crate) fn set_peer(&mut self, peer: Arc<Key>) -> Result<(), Error> {
        let key = self
            .key
            .as_ref()
            .ok_or(Error::Internal("set_peer before init"))?;
        if peer.kind != key.kind {
            return Err(Error::Unsupported(
                "a peer key of another type or curve than the private key",
            ));
        }
        self.peer = Some(peer);
        Ok(())
    }

    /// The secret's size: the field size.
    pub(crate) fn secret_len(&self) -> Result<usize, Error> {
        let key = self
            .key
            .as_ref()
            .ok_or(Error::Internal("derive before init"))?;
        Ok(match key.kind {
            KeyKind::Ec(c) => c.field_len(),
            KeyKind::X25519 => 32,
            KeyKind::X448 => 56,
            _ => 0,
        })
    }

    /// Derives the shared secret on the token.
    pub(crate) fn derive(&self) -> Result<Zeroizing<Vec<u8>>, Error> {
        let key = self
            .key
            .as_ref()
            .ok_or(Error::Internal("derive before init"))?;
        let peer = self.peer.as_ref().ok_or(Error::Param {
            key: "peer".into(),
            problem: "no peer key set",
        })?;
        let public_data = match &peer.public {
            PublicMaterial::Ec(p) | PublicMaterial::Raw(p) if !p.is_empty() => p.clone(),
            _ => {
                return Err(Error::Param {
                    key: "peer".into(),
                    problem: "the peer key has no public value",
                });
            }
        };
        let len = self.secret_len()?;
        let object = key
            .private
            .as_ref()
            .ok_or(Error::Unsupported("key exchange with a public key"))?;
        let (link, token, handle) = key.resolve(object)?;
        if link.client.dialect().serializer(CKM_ECDH1_DERIVE).is_none() {
            return Err(Error::Unsupported(NO_ECDH_PARAMS));
        }
        if !key.allows(CKM_ECDH1_DERIVE) {
            return Err(Error::Unsupported(
                "ECDH with this key (the token lacks CKM_ECDH1_DERIVE or the key does not allow it)",
            ));
        }
        let session = token.session(&link)?;
        let s = session.handle;
        let mech = Mechanism::with(
            CKM_ECDH1_DERIVE,
            MechParam::Ecdh1Derive {
                kdf: CKD_NULL,
                shared_data: None,
                public_data: Some(public_data),
            },
        );
        let template = vec![
            Attribute::ulong(CKA_CLASS, CKO_SECRET_KEY),
            Attribute::ulong(CKA_KEY_TYPE, CKK_GENERIC_SECRET),
            Attribute::bool(CKA_TOKEN, false),
            Attribute::bool(CKA_PRIVATE, false),
            Attribute::bool(CKA_SENSITIVE, false),
            Attribute::bool(CKA_EXTRACTABLE, true),
            Attribute::ulong(CKA_VALUE_LEN, len as u64),
        ];
        tracing::debug!(curve = ?key.kind, "ECDH derive");
        link.count_round_trip();
        let (secret_key, _) = link.client.derive_key(s, mech, handle, template)?;
        let replies = link.batch(&[
            req::get_attribute_value(
                s,
                secret_key,
                vec![AttrSlot {
                    ty: CKA_VALUE,
                    buflen: len as u32,
                    nested: None,
                }],
            ),
            req::destroy_object(s, secret_key),
        ]);
        let mut replies = replies.into_iter();
        let value = replies
            .next()
            .unwrap_or(Err(p11fwd_wire::Error::Closed))
            .and_then(parse::attributes);
        if let Some(Err(e)) = replies.next() {
            tracing::warn!(error = %e, "could not destroy the derived session object");
        }
        let (attrs, _) = value?;
        let value = attrs
            .first()
            .and_then(|a| a.as_bytes())
            .map(|b| Zeroizing::new(b.to_vec()))
            .ok_or(Error::Token {
                call: "C_GetAttributeValue",
                rv: "no CKA_VALUE for the derived secret".into(),
            })?;
        drop(session);
        if value.len() > len {
            return Err(Error::Protocol(
                "derived secret longer than the field".into(),
            ));
        }
        let mut out = Zeroizing::new(vec![0u8; len - value.len()]);
        out.extend_from_slice(&value);
        Ok(out)
    }
}
