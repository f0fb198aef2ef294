//! Token keys as OpenSSL sees them: [`Key`] (the keymgmt `keydata`), built from the objects a
//! search found, and the process-wide registry that turns a store reference into a key.
//!
//! A key holds its public material (read once from the private key, its public key object or
//! its certificate), what identifies it on the token (class, key type, CKA_ID, CKA_LABEL), the
//! token's mechanism list and the key's CKA_ALLOWED_MECHANISMS. Private material never leaves
//! the token. Object handles are valid for one connection (`epoch`); [`Key::resolve`] finds the
//! object again by its attributes after a reconnect (e.g. in a `fork()` child).

use std::collections::HashMap;
use std::ffi::CStr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};

use p11fwd_conf::uri::{ObjectClass, ObjectView, Pkcs11Uri, TokenView};
use p11fwd_wire::client::{OutCap, parse, req};
use p11fwd_wire::consts::*;
use p11fwd_wire::{Attribute, CallId, Mechanism};
use zeroize::Zeroizing;

use crate::backend::{Auth, Link, ObjectAttrs, PinFrom, Token};
use crate::der::{self, EcParams, oid};
use crate::error::Error;
use crate::ffi::cast::{Castable, OwnershipArc};
use crate::provider::ProvCtx;

/// The NIST curves p11fwd supports.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Curve {
    P256,
    P384,
    P521,
}

impl Curve {
    /// From an OpenSSL group name (any of its aliases).
    pub(crate) fn from_group_name(name: &str) -> Option<Self> {
        match name.to_ascii_lowercase().as_str() {
            "prime256v1" | "p-256" | "secp256r1" => Some(Self::P256),
            "secp384r1" | "p-384" => Some(Self::P384),
            "secp521r1" | "p-521" => Some(Self::P521),
            _ => None,
        }
    }

    fn from_oid(o: &[u8]) -> Option<Self> {
        [Self::P256, Self::P384, Self::P521]
            .into_iter()
            .find(|c| c.oid().0 == o)
    }

    pub(crate) fn oid(self) -> der::Oid {
        match self {
            Self::P256 => oid::P256,
            Self::P384 => oid::P384,
            Self::P521 => oid::P521,
        }
    }

    /// OpenSSL's group name.
    pub(crate) fn group_name(self) -> &'static CStr {
        match self {
            Self::P256 => c"prime256v1",
            Self::P384 => c"secp384r1",
            Self::P521 => c"secp521r1",
        }
    }

    pub(crate) fn bits(self) -> usize {
        match self {
            Self::P256 => 256,
            Self::P384 => 384,
            Self::P521 => 521,
        }
    }

    /// Bytes of one coordinate.
    pub(crate) fn field_len(self) -> usize {
        self.bits().div_ceil(8)
    }
}

/// What kind of key, in OpenSSL's terms.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum KeyKind {
    Rsa,
    /// An RSA key whose CKA_ALLOWED_MECHANISMS allow only PSS.
    RsaPss,
    Ec(Curve),
    Ed25519,
    Ed448,
    X25519,
    X448,
}

impl KeyKind {
    /// The keymgmt name (`OSSL_OBJECT_PARAM_DATA_TYPE`).
    pub(crate) fn name(self) -> &'static CStr {
        match self {
            Self::Rsa => c"RSA",
            Self::RsaPss => c"RSA-PSS",
            Self::Ec(_) => c"EC",
            Self::Ed25519 => c"ED25519",
            Self::Ed448 => c"ED448",
            Self::X25519 => c"X25519",
            Self::X448 => c"X448",
        }
    }

    /// Length of the raw public key of the Edwards and Montgomery curves.
    fn raw_len(self) -> Option<usize> {
        match self {
            Self::Ed25519 | Self::X25519 => Some(32),
            Self::Ed448 => Some(57),
            Self::X448 => Some(56),
            _ => None,
        }
    }
}

/// Public key material.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum PublicMaterial {
    /// Modulus and public exponent, big-endian without leading zeros.
    Rsa { n: Vec<u8>, e: Vec<u8> },
    /// The uncompressed EC point (`04 || x || y`).
    Ec(Vec<u8>),
    /// The raw Edwards/Montgomery public key.
    Raw(Vec<u8>),
}

/// How to find an object again on a new connection.
#[derive(Debug)]
pub(crate) struct ObjectRef {
    class: u64,
    key_type: Option<u64>,
    id: Option<Vec<u8>>,
    label: Option<Vec<u8>>,
    /// (connection epoch, handle)
    handle: Mutex<(u64, u64)>,
}

impl ObjectRef {
    fn new(o: &ObjectAttrs, epoch: u64) -> Self {
        Self {
            class: o.class.unwrap_or(CKO_PRIVATE_KEY),
            key_type: o.key_type,
            id: o.id.clone(),
            label: o.label.clone(),
            handle: Mutex::new((epoch, o.handle)),
        }
    }

    fn template(&self) -> Vec<Attribute> {
        let mut t = vec![Attribute::ulong(CKA_CLASS, self.class)];
        if let Some(k) = self.key_type {
            t.push(Attribute::ulong(CKA_KEY_TYPE, k));
        }
        if let Some(id) = &self.id {
            t.push(Attribute::bytes(CKA_ID, id.clone()));
        }
        if let Some(label) = &self.label {
            t.push(Attribute::bytes(CKA_LABEL, label.clone()));
        }
        t
    }
}

/// A key on the token (the keymgmt's `keydata`). Shared: OpenSSL may use one key from several
/// threads, and every operation only reads it.
#[derive(Debug)]
pub(crate) struct Key {
    pub(crate) provctx: Arc<ProvCtx>,
    pub(crate) kind: KeyKind,
    pub(crate) public: PublicMaterial,
    /// The private key object; `None` for a public key.
    pub(crate) private: Option<ObjectRef>,
    /// The public key object, when the token has one (for verification on the token).
    pub(crate) public_object: Option<ObjectRef>,
    pub(crate) token_identity: String,
    pub(crate) token_label: String,
    pub(crate) always_authenticate: bool,
    pub(crate) allowed_mechanisms: Option<Vec<u64>>,
    pub(crate) mechanisms: Vec<u64>,
    /// The exact URI of the key (without any PIN).
    pub(crate) uri: String,
    /// For CKA_ALWAYS_AUTHENTICATE keys: the PIN for the per-operation context login.
    pub(crate) auth_pin: Mutex<Option<Zeroizing<String>>>,
}

impl Castable for Key {
    type Ownership = OwnershipArc;
    const WHAT: &'static str = "keydata";
}

/// The objects a key is made of.
#[derive(Debug, Default)]
pub(crate) struct Parts<'a> {
    pub(crate) private: Option<&'a ObjectAttrs>,
    pub(crate) public: Option<&'a ObjectAttrs>,
    pub(crate) cert: Option<&'a ObjectAttrs>,
}

/// Whether every allowed mechanism is a PSS one (an "RSA-PSS" key).
fn pss_only(allowed: Option<&[u64]>) -> bool {
    const PSS: [u64; 6] = [
        CKM_RSA_PKCS_PSS,
        CKM_SHA1_RSA_PKCS_PSS,
        CKM_SHA224_RSA_PKCS_PSS,
        CKM_SHA256_RSA_PKCS_PSS,
        CKM_SHA384_RSA_PKCS_PSS,
        CKM_SHA512_RSA_PKCS_PSS,
    ];
    allowed.is_some_and(|a| !a.is_empty() && a.iter().all(|m| PSS.contains(m)))
}

fn edwards_kind(
    params: Option<&[u8]>,
    point_len: Option<usize>,
    montgomery: bool,
) -> Option<KeyKind> {
    let by_params = params.and_then(der::ec_params).and_then(|p| match p {
        EcParams::Oid(o) if o == oid::ED25519.0 => Some(KeyKind::Ed25519),
        EcParams::Oid(o) if o == oid::ED448.0 => Some(KeyKind::Ed448),
        EcParams::Oid(o) if o == oid::X25519.0 => Some(KeyKind::X25519),
        EcParams::Oid(o) if o == oid::X448.0 => Some(KeyKind::X448),
        EcParams::Name(b"edwards25519") => Some(KeyKind::Ed25519),
        EcParams::Name(b"edwards448") => Some(KeyKind::Ed448),
        EcParams::Name(b"curve25519") => Some(KeyKind::X25519),
        EcParams::Name(b"curve448") => Some(KeyKind::X448),
        _ => None,
    });
    by_params.or(match (point_len, montgomery) {
        (Some(32), false) => Some(KeyKind::Ed25519),
        (Some(57), false) => Some(KeyKind::Ed448),
        (Some(32), true) => Some(KeyKind::X25519),
        (Some(56), true) => Some(KeyKind::X448),
        _ => None,
    })
}

/// The key kind and public material from a certificate's SubjectPublicKeyInfo.
fn from_certificate(cert: &[u8]) -> Option<(KeyKind, PublicMaterial)> {
    let (alg, params, bits) = der::certificate_spki(cert)?;
    if alg == oid::RSA_ENCRYPTION.0 || alg == oid::RSASSA_PSS.0 {
        let (n, e) = der::parse_rsa_public_key(&bits)?;
        let kind = if alg == oid::RSASSA_PSS.0 {
            KeyKind::RsaPss
        } else {
            KeyKind::Rsa
        };
        return Some((kind, PublicMaterial::Rsa { n, e }));
    }
    if alg == oid::EC_PUBLIC_KEY.0 {
        let curve = match der::ec_params(&params)? {
            EcParams::Oid(o) => Curve::from_oid(o)?,
            EcParams::Name(_) => return None,
        };
        return Some((KeyKind::Ec(curve), PublicMaterial::Ec(bits)));
    }
    let kind = [oid::ED25519, oid::ED448, oid::X25519, oid::X448]
        .into_iter()
        .zip([
            KeyKind::Ed25519,
            KeyKind::Ed448,
            KeyKind::X25519,
            KeyKind::X448,
        ])
        .find(|(o, _)| o.0 == alg.as_slice())?
        .1;
    Some((kind, PublicMaterial::Raw(bits)))
}

impl Key {
    /// Builds a key from its objects. `private` decides whether this is a private key; the
    /// public material comes from the first object that has it.
    pub(crate) fn build(
        provctx: &Arc<ProvCtx>,
        link: &Link,
        token: &Token,
        parts: &Parts<'_>,
        want_private: bool,
    ) -> Result<Self, Error> {
        let main = if want_private {
            parts.private
        } else {
            parts.public.or(parts.private)
        }
        .ok_or(Error::Internal("a key needs a key object"))?;
        let key_type = parts
            .private
            .and_then(|o| o.key_type)
            .or(parts.public.and_then(|o| o.key_type));
        let allowed = main.allowed_mechanisms.clone();
        let cert_material = parts
            .cert
            .and_then(|c| c.value.as_deref())
            .and_then(from_certificate);
        let ec_params = parts
            .private
            .and_then(|o| o.ec_params.as_deref())
            .or(parts.public.and_then(|o| o.ec_params.as_deref()));
        let (kind, public) = match key_type {
            Some(CKK_RSA) => {
                let from = [parts.private, parts.public]
                    .into_iter()
                    .flatten()
                    .find_map(|o| Some((o.modulus.clone()?, o.public_exponent.clone()?)));
                let material = match (from, &cert_material) {
                    (Some((n, e)), _) => PublicMaterial::Rsa {
                        n: strip(&n),
                        e: strip(&e),
                    },
                    (None, Some((_, m @ PublicMaterial::Rsa { .. }))) => m.clone(),
                    _ => return Err(missing_public(main)),
                };
                let kind = if pss_only(allowed.as_deref()) {
                    KeyKind::RsaPss
                } else {
                    KeyKind::Rsa
                };
                (kind, material)
            }
            Some(CKK_EC) => {
                let curve = match ec_params.and_then(der::ec_params) {
                    Some(EcParams::Oid(o)) => Curve::from_oid(o),
                    _ => None,
                }
                .or(match &cert_material {
                    Some((KeyKind::Ec(c), _)) => Some(*c),
                    _ => None,
                })
                .ok_or(Error::Unsupported(
                    "this EC curve (p11fwd supports P-256, P-384, P-521)",
                ))?;
                let point = parts
                    .public
                    .and_then(|o| o.ec_point.as_deref())
                    .or(parts.private.and_then(|o| o.ec_point.as_deref()))
                    .map(|p| der::ec_point(p, Some(1 + 2 * curve.field_len())))
                    .or(match &cert_material {
                        Some((_, PublicMaterial::Ec(p))) => Some(p.clone()),
                        _ => None,
                    })
                    .ok_or_else(|| missing_public(main))?;
                (KeyKind::Ec(curve), PublicMaterial::Ec(point))
            }
            Some(t @ (CKK_EC_EDWARDS | CKK_EC_MONTGOMERY)) => {
                let montgomery = t == CKK_EC_MONTGOMERY;
                let raw_point = parts
                    .public
                    .and_then(|o| o.ec_point.as_deref())
                    .or(parts.private.and_then(|o| o.ec_point.as_deref()));
                let kind = edwards_kind(
                    ec_params,
                    raw_point.map(|p| der::ec_point(p, None).len()),
                    montgomery,
                )
                .or(cert_material.as_ref().map(|(k, _)| *k))
                .ok_or(Error::Unsupported("this Edwards/Montgomery curve"))?;
                let point = raw_point
                    .map(|p| der::ec_point(p, kind.raw_len()))
                    .or(match &cert_material {
                        Some((_, PublicMaterial::Raw(p))) => Some(p.clone()),
                        _ => None,
                    })
                    .ok_or_else(|| missing_public(main))?;
                (kind, PublicMaterial::Raw(point))
            }
            _ => return Err(Error::Unsupported("this key type")),
        };
        let class = if want_private {
            ObjectClass::PrivateKey
        } else {
            ObjectClass::PublicKey
        };
        let uri = object_uri(token, main, class)?;
        let always_authenticate = want_private && main.always_authenticate;
        Ok(Self {
            provctx: Arc::clone(provctx),
            kind,
            public,
            private: want_private.then(|| ObjectRef::new(main, link.epoch)),
            public_object: parts.public.map(|o| ObjectRef::new(o, link.epoch)),
            token_identity: token.identity().to_owned(),
            token_label: token.label(),
            always_authenticate,
            allowed_mechanisms: allowed,
            mechanisms: token.mechanisms.clone(),
            uri,
            auth_pin: Mutex::new(None),
        })
    }

    /// A public key that is not on the token (imported from another provider: the peer key of
    /// ECDH, a key from a file that OpenSSL hands to p11fwd for verification).
    pub(crate) fn detached(provctx: Arc<ProvCtx>, kind: KeyKind, public: PublicMaterial) -> Self {
        Self {
            provctx,
            kind,
            public,
            private: None,
            public_object: None,
            token_identity: String::new(),
            token_label: String::new(),
            always_authenticate: false,
            allowed_mechanisms: None,
            mechanisms: Vec::new(),
            uri: String::new(),
            auth_pin: Mutex::new(None),
        }
    }

    /// The public key of a certificate on the token, for a token without a public-key object
    /// (many smart cards): `type=public` URIs find it.
    pub(crate) fn from_certificate_object(
        provctx: &Arc<ProvCtx>,
        token: &Token,
        cert: &ObjectAttrs,
    ) -> Result<Self, Error> {
        let (kind, public) =
            cert.value
                .as_deref()
                .and_then(from_certificate)
                .ok_or(Error::Unsupported(
                    "the public key algorithm of this certificate",
                ))?;
        let mut key = Self::detached(Arc::clone(provctx), kind, public);
        key.token_identity = token.identity().to_owned();
        key.token_label = token.label();
        key.mechanisms = token.mechanisms.clone();
        key.uri = object_uri(token, cert, ObjectClass::PublicKey)?;
        Ok(key)
    }

    /// Whether this key lives on a token (has a URI), as opposed to an imported public key.
    pub(crate) fn is_on_token(&self) -> bool {
        !self.uri.is_empty()
    }

    /// A public-only copy (for `OSSL_STORE_INFO_PUBKEY` requests on a private key).
    pub(crate) fn public_only(&self) -> Self {
        Self {
            provctx: Arc::clone(&self.provctx),
            kind: self.kind,
            public: self.public.clone(),
            private: None,
            public_object: self.public_object.as_ref().map(|o| ObjectRef {
                class: o.class,
                key_type: o.key_type,
                id: o.id.clone(),
                label: o.label.clone(),
                handle: Mutex::new(
                    *o.handle
                        .lock()
                        .unwrap_or_else(std::sync::PoisonError::into_inner),
                ),
            }),
            token_identity: self.token_identity.clone(),
            token_label: self.token_label.clone(),
            always_authenticate: false,
            allowed_mechanisms: self.allowed_mechanisms.clone(),
            mechanisms: self.mechanisms.clone(),
            uri: self.uri.replace("type=private", "type=public"),
            auth_pin: Mutex::new(None),
        }
    }

    /// Whether the private key is on the token (the keymgmt `has(PRIVATE_KEY)`).
    pub(crate) fn has_private(&self) -> bool {
        self.private.is_some()
    }

    /// Modulus bits / curve bits.
    pub(crate) fn bits(&self) -> usize {
        match (&self.kind, &self.public) {
            (_, PublicMaterial::Rsa { n, .. }) => n
                .first()
                .map_or(0, |&b| (n.len() - 1) * 8 + (8 - b.leading_zeros() as usize)),
            (KeyKind::Ec(c), _) => c.bits(),
            (KeyKind::Ed25519 | KeyKind::X25519, _) => 253,
            (KeyKind::Ed448, _) => 456,
            (KeyKind::X448, _) => 448,
            _ => 0,
        }
    }

    /// Security bits, as OpenSSL computes them.
    pub(crate) fn security_bits(&self) -> usize {
        match self.kind {
            KeyKind::Rsa | KeyKind::RsaPss => {
                let bits = self.bits();
                match bits {
                    b if b >= 15360 => 256,
                    b if b >= 7680 => 192,
                    b if b >= 3072 => 128,
                    b if b >= 2048 => 112,
                    b if b >= 1024 => 80,
                    _ => 0,
                }
            }
            KeyKind::Ec(c) => c.bits() / 2,
            KeyKind::Ed25519 | KeyKind::X25519 => 128,
            KeyKind::Ed448 | KeyKind::X448 => 224,
        }
    }

    /// Modulus length in bytes (RSA).
    pub(crate) fn modulus_len(&self) -> usize {
        self.bits().div_ceil(8)
    }

    /// The largest signature (DER for ECDSA).
    pub(crate) fn max_size(&self) -> usize {
        match self.kind {
            KeyKind::Rsa | KeyKind::RsaPss => self.modulus_len(),
            KeyKind::Ec(c) => der::ecdsa_der_max(c.bits()),
            KeyKind::Ed25519 => 64,
            KeyKind::Ed448 => 114,
            KeyKind::X25519 => 32,
            KeyKind::X448 => 56,
        }
    }

    /// The raw signature size the token returns.
    pub(crate) fn raw_signature_len(&self) -> usize {
        match self.kind {
            KeyKind::Ec(c) => 2 * c.field_len(),
            _ => self.max_size(),
        }
    }

    /// The default digest OpenSSL should use (`OSSL_PKEY_PARAM_DEFAULT_DIGEST`).
    pub(crate) fn default_digest(&self) -> Option<&'static CStr> {
        match self.kind {
            KeyKind::Rsa | KeyKind::RsaPss | KeyKind::Ec(_) => Some(c"SHA256"),
            _ => None,
        }
    }

    /// The AlgorithmIdentifier of the SubjectPublicKeyInfo.
    fn spki_algorithm(&self) -> Vec<u8> {
        match self.kind {
            KeyKind::Rsa => der::algorithm_null(oid::RSA_ENCRYPTION),
            KeyKind::RsaPss => der::algorithm(oid::RSASSA_PSS),
            KeyKind::Ec(c) => der::sequence(&[&oid(oid::EC_PUBLIC_KEY), &oid(c.oid())]),
            KeyKind::Ed25519 => der::algorithm(oid::ED25519),
            KeyKind::Ed448 => der::algorithm(oid::ED448),
            KeyKind::X25519 => der::algorithm(oid::X25519),
            KeyKind::X448 => der::algorithm(oid::X448),
        }
    }

    /// The public key as it goes in the SPKI bit string.
    pub(crate) fn public_key_bits(&self) -> Vec<u8> {
        match &self.public {
            PublicMaterial::Rsa { n, e } => der::rsa_public_key(n, e),
            PublicMaterial::Ec(p) | PublicMaterial::Raw(p) => p.clone(),
        }
    }

    /// SubjectPublicKeyInfo DER.
    pub(crate) fn spki(&self) -> Vec<u8> {
        der::spki(&self.spki_algorithm(), &self.public_key_bits())
    }

    /// The same public key (keymgmt `match`).
    pub(crate) fn same_public(&self, other: &Self) -> bool {
        self.kind == other.kind && self.public == other.public
    }

    /// Whether the key (its CKA_ALLOWED_MECHANISMS) and the token (its mechanism list) allow
    /// `mech`.
    pub(crate) fn allows(&self, mech: u64) -> bool {
        self.mechanisms.contains(&mech)
            && self
                .allowed_mechanisms
                .as_ref()
                .is_none_or(|a| a.is_empty() || a.contains(&mech))
    }

    /// The connection, the token and the object handle to use now: finds the object again
    /// (and logs in again) if the connection changed since the key was found.
    pub(crate) fn resolve(
        &self,
        object: &ObjectRef,
    ) -> Result<(Arc<Link>, Arc<Token>, u64), Error> {
        let backend = self.provctx.backend();
        let link = backend.link()?;
        let token = link
            .tokens
            .iter()
            .find(|t| t.identity() == self.token_identity)
            .cloned()
            .ok_or_else(|| {
                Error::NoMatch(format!(
                    "token {:?} (the server lists {} token{} now)",
                    self.token_label,
                    link.tokens.len(),
                    if link.tokens.len() == 1 { "" } else { "s" }
                ))
            })?;
        let needs_login =
            object.class == CKO_PRIVATE_KEY && token.login_required() && !token.logged_in();
        let (epoch, handle) = *object
            .handle
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if epoch == link.epoch && !needs_login {
            return Ok((link, token, handle));
        }
        let auth = if needs_login {
            if token.protected_path() {
                Auth::User(None, PinFrom::Typed)
            } else {
                let pin = backend
                    .remembered_pin(&token)
                    .or_else(|| self.auth_pin.lock().ok().and_then(|p| p.clone()));
                let pin = match pin {
                    Some(p) => Some(p),
                    None => backend.configured_pin()?,
                };
                Auth::User(
                    Some(pin.ok_or(Error::PinRequired(token.label()))?),
                    PinFrom::Given,
                )
            }
        } else {
            Auth::None
        };
        let session = token.session(&link)?;
        if epoch == link.epoch {
            link.login(&token, session.handle, &auth)?;
            return Ok((Arc::clone(&link), Arc::clone(&token), handle));
        }
        let (handles, login_error) = link.find(&token, session.handle, object.template(), &auth)?;
        if let Some(e) = login_error {
            return Err(e);
        }
        let [handle] = handles[..] else {
            return Err(Error::NoMatch(format!("{} after reconnecting", self.uri)));
        };
        *object
            .handle
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = (link.epoch, handle);
        drop(session);
        Ok((link, token, handle))
    }
}

/// Where a one-round-trip token operation failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Stage {
    /// Before anything reached the token (connection, login, finding the key again).
    Setup,
    /// `C_*Init`: the mechanism or its parameters (independent of the input data).
    Init,
    /// The context-specific login of a CKA_ALWAYS_AUTHENTICATE key.
    Login,
    /// The operation itself (`C_Sign`, `C_Decrypt`): may depend on the input data.
    Operation,
}

/// A failed token operation: the stage, the error, and the token's CK_RV when there is one.
#[derive(Debug)]
pub(crate) struct OpError {
    pub(crate) stage: Stage,
    pub(crate) rv: Option<u64>,
    pub(crate) error: Error,
}

impl From<OpError> for Error {
    fn from(e: OpError) -> Self {
        e.error
    }
}

impl OpError {
    /// Whether the token refused the mechanism or its parameters (at `C_*Init`, independent of
    /// the input), or the server cannot carry them: another mechanism may still work.
    pub(crate) fn is_parameter_refusal(&self) -> bool {
        match (self.stage, self.rv) {
            (Stage::Init, Some(rv)) => matches!(
                rv,
                CKR_ARGUMENTS_BAD | CKR_MECHANISM_PARAM_INVALID | CKR_MECHANISM_INVALID
            ),
            (Stage::Setup | Stage::Init, None) => matches!(self.error, Error::Unsupported(_)),
            _ => false,
        }
    }

    fn setup(error: Error) -> Self {
        Self {
            stage: Stage::Setup,
            rv: None,
            error,
        }
    }

    fn wire(stage: Stage, e: p11fwd_wire::Error) -> Self {
        let rv = match &e {
            p11fwd_wire::Error::Rv { rv, .. } => Some(rv.0),
            _ => None,
        };
        let error = match rv {
            Some(CKR_PIN_INCORRECT) if stage == Stage::Login => Error::PinIncorrect,
            _ => e.into(),
        };
        Self { stage, rv, error }
    }
}

impl Key {
    /// `[init, (Login CONTEXT_SPECIFIC), op]` with the private key in one round trip
    /// (`C_SignInit` + `C_Sign`, `C_DecryptInit` + `C_Decrypt`), the output buffer `cap` bytes.
    pub(crate) fn token_op(
        &self,
        init: CallId,
        op: CallId,
        mech: Mechanism,
        input: &[u8],
        cap: u64,
    ) -> Result<Vec<u8>, OpError> {
        self.token_ops(&[OpStep {
            init,
            op,
            mech,
            input,
            cap,
        }])
        .pop()
        .unwrap_or_else(|| Err(OpError::setup(Error::Internal("no reply"))))
    }

    /// Several `[init, (login), op]` steps with the private key, all in one round trip; one
    /// result per step.
    ///
    /// A connection that died since its last use (the server restarted, an `ssh -R` forward
    /// was re-established) fails every step without a token's answer: the steps are sent again
    /// once, on a new connection. Signing and decryption can be repeated; a context-specific
    /// login (a PIN) is never sent twice.
    pub(crate) fn token_ops(&self, steps: &[OpStep<'_>]) -> Vec<Result<Vec<u8>, OpError>> {
        let (results, retry) = self.token_ops_once(steps);
        if !retry {
            return results;
        }
        tracing::debug!("the connection was lost; once more on a new one");
        self.token_ops_once(steps).0
    }

    /// [`Key::token_ops`] once; `true` if it may be sent again on a new connection.
    fn token_ops_once(&self, steps: &[OpStep<'_>]) -> (Vec<Result<Vec<u8>, OpError>>, bool) {
        let fail_all = |e: Error| {
            let msg = e.to_string();
            let mut out = vec![Err(OpError::setup(e))];
            for _ in 1..steps.len() {
                out.push(Err(OpError::setup(Error::Connection(msg.clone()))));
            }
            out
        };
        let Some(object) = self.private.as_ref() else {
            return (
                fail_all(Error::Unsupported("this operation with a public key")),
                false,
            );
        };
        let (link, token, handle) = match self.resolve(object) {
            Ok(r) => r,
            Err(e) => return (fail_all(e), false),
        };
        let mut session = match token.session(&link) {
            Ok(s) => s,
            Err(e) => return (fail_all(e), false),
        };
        let s = session.handle;
        let d = link.client.dialect();
        let context_login = self.always_authenticate;
        let pin = if context_login {
            let pin = self
                .auth_pin
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner)
                .clone();
            let final_try = token.flags() & CKF_USER_PIN_FINAL_TRY != 0;
            let (pin, from) = match pin {
                Some(p) => (Some(p), PinFrom::Given),
                None if token.protected_path() => (None, PinFrom::Typed),
                None => match crate::ffi::ui::prompt(&token.label(), final_try) {
                    Some(p) => (Some(p), PinFrom::Typed),
                    None => return (fail_all(Error::PinRequired(token.label())), false),
                },
            };
            // The PIN state as the user login left it (that login cleared the final try).
            if let Err(e) = token.check_pin_state(from) {
                return (fail_all(e), false);
            }
            pin
        } else {
            None
        };
        let mut batch = Vec::with_capacity(steps.len() * 3);
        for step in steps {
            batch.push(req::init_with_key(
                step.init,
                s,
                Some(step.mech.clone()),
                handle,
            ));
            if context_login {
                batch.push(req::login(
                    s,
                    CKU_CONTEXT_SPECIFIC,
                    pin.as_ref().map(|p| p.as_bytes()),
                ));
            }
            batch.push(req::data_in_out(
                d,
                step.op,
                s,
                step.input,
                OutCap::Buffer(step.cap),
            ));
        }
        drop(pin);
        let mut replies = link.batch(&batch).into_iter();
        let closed = || Err(p11fwd_wire::Error::Closed);
        let mut results = Vec::with_capacity(steps.len());
        for step in steps {
            let init_reply = replies.next().unwrap_or_else(closed);
            let login = if context_login {
                Some(replies.next().unwrap_or_else(closed))
            } else {
                None
            };
            let op_reply = replies.next().unwrap_or_else(closed);
            if let Err(e) = init_reply {
                results.push(Err(OpError::wire(Stage::Init, e)));
                continue;
            }
            if let Some(Err(e)) = login {
                // The operation is still active on the session: do not reuse it.
                session.discard();
                results.push(Err(OpError::wire(Stage::Login, e)));
                continue;
            }
            let out = op_reply
                .and_then(parse::output)
                .and_then(|o| o.into_data(step.op))
                .map_err(|e| OpError::wire(Stage::Operation, e));
            if matches!(&out, Err(e) if e.rv == Some(CKR_BUFFER_TOO_SMALL)) {
                // The token keeps the operation active after a short buffer.
                session.discard();
            }
            results.push(out);
        }
        // Nothing reached a token (no CK_RV at all) and the connection is now known dead.
        let retry = !context_login
            && link.client.connection().is_broken()
            && results
                .iter()
                .all(|r| matches!(r, Err(e) if e.rv.is_none() && e.stage == Stage::Init));
        (results, retry)
    }
}

/// One `[init, op]` of [`Key::token_ops`].
#[derive(Debug)]
pub(crate) struct OpStep<'a> {
    pub(crate) init: CallId,
    pub(crate) op: CallId,
    pub(crate) mech: Mechanism,
    pub(crate) input: &'a [u8],
    pub(crate) cap: u64,
}

fn strip(b: &[u8]) -> Vec<u8> {
    let skip = b.iter().take_while(|&&x| x == 0).count();
    b[skip..].to_vec()
}

fn missing_public(o: &ObjectAttrs) -> Error {
    Error::Unsupported(if o.class == Some(CKO_PRIVATE_KEY) {
        "a private key without a public key object or certificate on the token (its public part is needed)"
    } else {
        "a key object without its public attributes"
    })
}

/// The exact URI of an object: token identity, label, id and type.
pub(crate) fn object_uri(
    token: &Token,
    o: &ObjectAttrs,
    class: ObjectClass,
) -> Result<String, Error> {
    let view = TokenView {
        label: &token.info.label,
        manufacturer: &token.info.manufacturer_id,
        model: &token.info.model,
        serial: &token.info.serial_number,
    };
    let object = ObjectView {
        label: o.label.as_deref(),
        id: o.id.as_deref(),
        class: Some(class),
    };
    Pkcs11Uri::for_object(&view, &object)
        .map(|u| u.to_string())
        .map_err(|e| Error::UriParse {
            uri: String::new(),
            problem: e.to_string(),
        })
}

/// The registry behind store references: the store registers each key it hands out, and the
/// keymgmt's `load` looks the reference up. A reference is the key's number and a per-process
/// tag, so a reference from elsewhere (or a stale one) is refused rather than trusted.
pub(crate) mod registry {
    use super::*;

    fn map() -> &'static Mutex<HashMap<u64, Arc<Key>>> {
        static MAP: OnceLock<Mutex<HashMap<u64, Arc<Key>>>> = OnceLock::new();
        MAP.get_or_init(|| Mutex::new(HashMap::new()))
    }

    fn tag() -> u64 {
        static TAG: OnceLock<u64> = OnceLock::new();
        *TAG.get_or_init(|| {
            let t = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_nanos() as u64);
            t ^ (u64::from(std::process::id()) << 32) ^ 0x7031_3166_7764_0001
        })
    }

    static NEXT: AtomicU64 = AtomicU64::new(1);

    /// Registers `key`; returns its number and the reference bytes.
    pub(crate) fn register(key: Arc<Key>) -> (u64, [u8; 16]) {
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        map()
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .insert(n, key);
        let mut reference = [0u8; 16];
        reference[..8].copy_from_slice(&n.to_le_bytes());
        reference[8..].copy_from_slice(&tag().to_le_bytes());
        (n, reference)
    }

    /// The key behind a reference.
    pub(crate) fn lookup(reference: &[u8]) -> Option<Arc<Key>> {
        let (n, t) = reference.split_at_checked(8)?;
        if t != tag().to_le_bytes() {
            return None;
        }
        let n = u64::from_le_bytes(n.try_into().ok()?);
        map()
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .get(&n)
            .cloned()
    }

    fn errors() -> &'static Mutex<HashMap<u64, Error>> {
        static MAP: OnceLock<Mutex<HashMap<u64, Error>>> = OnceLock::new();
        MAP.get_or_init(|| Mutex::new(HashMap::new()))
    }

    /// Registers an error as a key reference, for a decoder whose failure OpenSSL would
    /// otherwise swallow: the keymgmt's `load` of this reference raises it ([`take_error`]),
    /// where OpenSSL keeps it for the user.
    pub(crate) fn register_error(e: Error) -> [u8; 16] {
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        let mut map = errors()
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        // Errors nobody loaded are not kept forever.
        if map.len() > 64 {
            map.clear();
        }
        map.insert(n, e);
        let mut reference = [0u8; 16];
        reference[..8].copy_from_slice(&n.to_le_bytes());
        reference[8..].copy_from_slice(&(!tag()).to_le_bytes());
        reference
    }

    /// The error behind a reference made by [`register_error`].
    pub(crate) fn take_error(reference: &[u8]) -> Option<Error> {
        let (n, t) = reference.split_at_checked(8)?;
        if t != (!tag()).to_le_bytes() {
            return None;
        }
        let n = u64::from_le_bytes(n.try_into().ok()?);
        errors()
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .remove(&n)
    }

    /// Forgets a key (keys already loaded keep their own reference).
    pub(crate) fn unregister(n: u64) {
        map()
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .remove(&n);
    }
}
