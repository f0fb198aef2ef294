//! Signatures with token keys: RSA (PKCS#1 v1.5, PSS, raw), ECDSA and EdDSA.
//!
//! One round trip per signature: `C_SignInit` and `C_Sign` (with a buffer of the key's known
//! signature size) go out in one write, with `C_Login(CKU_CONTEXT_SPECIFIC)` between them for
//! CKA_ALWAYS_AUTHENTICATE keys.
//!
//! Digest-and-sign hashes locally as the data streams in, and keeps the data too (up to
//! [`MAX_BUFFERED`]): at the end it uses the token's hashed mechanism (CKM_SHA256_RSA_PKCS,
//! CKM_ECDSA_SHA256, ...) when the token and the key's CKA_ALLOWED_MECHANISMS allow it, and
//! otherwise signs the local digest with the raw mechanism (DigestInfo built here for PKCS#1).

use std::ffi::{CStr, CString};
use std::sync::Arc;

use p11fwd_wire::consts::*;
use p11fwd_wire::{CallId, MechParam, Mechanism};

use crate::der::{self, oid};
use crate::error::Error;
use crate::ffi::cast::{Castable, OwnershipBox};
use crate::ffi::params::ParamBuilder;
use crate::hash::{Hash, Hasher};
use crate::key::{Key, KeyKind};
use crate::provider::ProvCtx;
use crate::rsa_pad;
use crate::sys;

/// Data kept for a token-side hashed mechanism; beyond this, the local digest is signed.
const MAX_BUFFERED: usize = 1 << 20;

/// RSA padding (`OSSL_SIGNATURE_PARAM_PAD_MODE`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Padding {
    Pkcs1,
    Pss,
    None,
}

impl Padding {
    /// OpenSSL's `RSA_*_PADDING` numbers.
    pub(crate) fn from_int(v: i32) -> Option<Self> {
        match v {
            1 => Some(Self::Pkcs1),
            3 => Some(Self::None),
            6 => Some(Self::Pss),
            _ => None,
        }
    }

    pub(crate) fn from_name(s: &str) -> Option<Self> {
        match s {
            "pkcs1" => Some(Self::Pkcs1),
            "none" => Some(Self::None),
            "pss" => Some(Self::Pss),
            _ => None,
        }
    }

    pub(crate) fn as_int(self) -> i32 {
        match self {
            Self::Pkcs1 => 1,
            Self::None => 3,
            Self::Pss => 6,
        }
    }

    pub(crate) fn name(self) -> &'static CStr {
        match self {
            Self::Pkcs1 => c"pkcs1",
            Self::None => c"none",
            Self::Pss => c"pss",
        }
    }
}

/// PSS salt length (`OSSL_SIGNATURE_PARAM_PSS_SALTLEN`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum SaltLen {
    /// The digest length (-1).
    Digest,
    /// The maximum (-3).
    Max,
    /// For signing: the maximum (-2).
    Auto,
    /// An explicit length.
    Len(usize),
}

impl SaltLen {
    pub(crate) fn from_int(v: i32) -> Option<Self> {
        match v {
            -1 => Some(Self::Digest),
            -2 => Some(Self::Auto),
            -3 => Some(Self::Max),
            n if n >= 0 => Some(Self::Len(n as usize)),
            _ => None,
        }
    }

    pub(crate) fn from_name(s: &str) -> Option<Self> {
        match s {
            "digest" => Some(Self::Digest),
            "max" => Some(Self::Max),
            "auto" => Some(Self::Auto),
            n => n.parse::<usize>().ok().map(Self::Len),
        }
    }

    pub(crate) fn as_int(self) -> i32 {
        match self {
            Self::Digest => -1,
            Self::Auto => -2,
            Self::Max => -3,
            Self::Len(n) => i32::try_from(n).unwrap_or(i32::MAX),
        }
    }

    pub(crate) fn name(self) -> String {
        match self {
            Self::Digest => "digest".into(),
            Self::Auto => "auto".into(),
            Self::Max => "max".into(),
            Self::Len(n) => n.to_string(),
        }
    }
}

/// A signature context (`OSSL_FUNC_signature_newctx`).
#[derive(Debug, Clone)]
pub(crate) struct SigCtx {
    /// Keeps the provider instance alive while the context exists.
    _provctx: Arc<ProvCtx>,
    /// The algorithm this context was fetched as.
    pub(crate) algorithm: Algorithm,
    key: Option<Arc<Key>>,
    pub(crate) md: Option<Hash>,
    pub(crate) padding: Padding,
    pub(crate) mgf1: Option<Hash>,
    pub(crate) saltlen: SaltLen,
    /// Output raw `r|s` instead of DER for ECDSA (`p11fwd-ecdsa-raw`).
    pub(crate) ecdsa_raw: bool,
    data: Vec<u8>,
    hasher: Option<Hasher>,
    overflow: bool,
}

/// The registered signature algorithms.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Algorithm {
    Rsa,
    Ecdsa,
    Ed25519,
    Ed448,
}

impl Castable for SigCtx {
    type Ownership = OwnershipBox;
    const WHAT: &'static str = "signature ctx";
}

impl SigCtx {
    pub(crate) fn new(provctx: Arc<ProvCtx>, algorithm: Algorithm) -> Self {
        Self {
            _provctx: provctx,
            algorithm,
            key: None,
            md: None,
            padding: Padding::Pkcs1,
            mgf1: None,
            saltlen: SaltLen::Auto,
            ecdsa_raw: false,
            data: Vec::new(),
            hasher: None,
            overflow: false,
        }
    }

    fn key(&self) -> Result<&Arc<Key>, Error> {
        self.key
            .as_ref()
            .ok_or(Error::Internal("signature ctx without a key"))
    }

    /// `sign_init` (and `digest_sign_init` with `md`).
    pub(crate) fn init(&mut self, key: Option<Arc<Key>>, md: Option<&str>) -> Result<(), Error> {
        self.init_for(key, md, false)
    }

    /// `verify_init` (and `digest_verify_init` with `md`): any key with a public part.
    pub(crate) fn init_verify(
        &mut self,
        key: Option<Arc<Key>>,
        md: Option<&str>,
    ) -> Result<(), Error> {
        self.init_for(key, md, true)
    }

    fn init_for(
        &mut self,
        key: Option<Arc<Key>>,
        md: Option<&str>,
        verify: bool,
    ) -> Result<(), Error> {
        if let Some(key) = key {
            let fits = matches!(
                (self.algorithm, key.kind),
                (Algorithm::Rsa, KeyKind::Rsa | KeyKind::RsaPss)
                    | (Algorithm::Ecdsa, KeyKind::Ec(_))
                    | (Algorithm::Ed25519, KeyKind::Ed25519)
                    | (Algorithm::Ed448, KeyKind::Ed448)
            );
            if !fits {
                return Err(Error::Unsupported(
                    "this key type with this signature algorithm",
                ));
            }
            if !verify && !key.has_private() {
                return Err(Error::Unsupported("signing with a public key"));
            }
            self.padding = if key.kind == KeyKind::RsaPss {
                Padding::Pss
            } else {
                Padding::Pkcs1
            };
            self.key = Some(key);
        }
        self.key()?;
        self.data.clear();
        self.overflow = false;
        self.hasher = None;
        if let Some(md) = md.filter(|m| !m.is_empty()) {
            self.set_digest(md)?;
        }
        if matches!(self.algorithm, Algorithm::Rsa | Algorithm::Ecdsa) && md.is_some() {
            let md = match self.md {
                Some(md) => md,
                None => {
                    self.md = Some(Hash::Sha256);
                    Hash::Sha256
                }
            };
            self.hasher = Some(md.hasher());
        }
        Ok(())
    }

    pub(crate) fn set_digest(&mut self, name: &str) -> Result<(), Error> {
        let md = Hash::from_name(name).ok_or(Error::Unsupported("this digest"))?;
        if matches!(self.algorithm, Algorithm::Ed25519 | Algorithm::Ed448) {
            return Err(Error::Unsupported("a digest with EdDSA"));
        }
        self.md = Some(md);
        if self.hasher.is_some() {
            self.hasher = Some(md.hasher());
        }
        Ok(())
    }

    /// The signature size for a size query.
    pub(crate) fn max_size(&self) -> Result<usize, Error> {
        let key = self.key()?;
        Ok(if self.ecdsa_raw {
            key.raw_signature_len()
        } else {
            key.max_size()
        })
    }

    /// `digest_sign_update`.
    pub(crate) fn update(&mut self, data: &[u8]) -> Result<(), Error> {
        if matches!(self.algorithm, Algorithm::Ed25519 | Algorithm::Ed448) {
            // EdDSA is one-shot: keep everything.
            self.data.extend_from_slice(data);
            return Ok(());
        }
        let hasher = self
            .hasher
            .as_mut()
            .ok_or(Error::Internal("digest update without digest init"))?;
        hasher.update(data);
        if !self.overflow {
            if self.data.len() + data.len() > MAX_BUFFERED {
                self.overflow = true;
                self.data = Vec::new();
            } else {
                self.data.extend_from_slice(data);
            }
        }
        Ok(())
    }

    /// `digest_sign_final`: signs what `update` collected.
    pub(crate) fn sign_final(&mut self) -> Result<Vec<u8>, Error> {
        if matches!(self.algorithm, Algorithm::Ed25519 | Algorithm::Ed448) {
            let data = std::mem::take(&mut self.data);
            return self.sign_message_eddsa(&data);
        }
        let md = self.md.ok_or(Error::Internal("no digest"))?;
        let hasher = self
            .hasher
            .replace(md.hasher())
            .ok_or(Error::Internal("digest final without digest init"))?;
        let digest = hasher.finish();
        let data = (!self.overflow).then(|| std::mem::take(&mut self.data));
        self.data.clear();
        self.overflow = false;
        self.sign_hashed(md, data.as_deref(), &digest)
    }

    /// `digest_sign`: one shot.
    pub(crate) fn digest_sign(&mut self, data: &[u8]) -> Result<Vec<u8>, Error> {
        if matches!(self.algorithm, Algorithm::Ed25519 | Algorithm::Ed448) {
            return self.sign_message_eddsa(data);
        }
        let md = self.md.unwrap_or(Hash::Sha256);
        let digest = md.digest(data);
        let data = (data.len() <= MAX_BUFFERED).then_some(data);
        self.sign_hashed(md, data, &digest)
    }

    /// `sign`: `tbs` is a digest when a digest is set (or for PSS), else the raw input.
    pub(crate) fn sign(&mut self, tbs: &[u8]) -> Result<Vec<u8>, Error> {
        let key = Arc::clone(self.key()?);
        match self.algorithm {
            Algorithm::Ed25519 | Algorithm::Ed448 => self.sign_message_eddsa(tbs),
            Algorithm::Ecdsa => {
                if let Some(md) = self.md
                    && tbs.len() != md.size()
                {
                    return Err(Error::Param {
                        key: "tbs".into(),
                        problem: "length differs from the digest size",
                    });
                }
                let raw = self.token_sign(&key, Mechanism::new(CKM_ECDSA), tbs)?;
                Ok(self.ecdsa_output(raw))
            }
            Algorithm::Rsa => match self.padding {
                Padding::Pkcs1 => {
                    let input = match self.md {
                        Some(md) => {
                            if tbs.len() != md.size() {
                                return Err(Error::Param {
                                    key: "tbs".into(),
                                    problem: "length differs from the digest size",
                                });
                            }
                            md.digest_info(tbs)
                        }
                        None => tbs.to_vec(),
                    };
                    if raw_rsa_only(&key, CKM_RSA_PKCS) {
                        let em = rsa_pad::pkcs1_type1(&input, key.modulus_len()).ok_or(
                            Error::Param {
                                key: "tbs".into(),
                                problem: "too long for PKCS#1 v1.5 padding with this key",
                            },
                        )?;
                        return self.token_sign(&key, Mechanism::new(CKM_RSA_X_509), &em);
                    }
                    self.token_sign(&key, Mechanism::new(CKM_RSA_PKCS), &input)
                }
                Padding::Pss => {
                    let md = match self.md {
                        Some(md) => md,
                        None => Hash::ALL
                            .into_iter()
                            .find(|h| h.size() == tbs.len())
                            .ok_or(Error::Unsupported("PSS without a digest of known size"))?,
                    };
                    if tbs.len() != md.size() {
                        return Err(Error::Param {
                            key: "tbs".into(),
                            problem: "length differs from the digest size",
                        });
                    }
                    let pad_here = key.allows(CKM_RSA_X_509);
                    if raw_rsa_only(&key, CKM_RSA_PKCS_PSS)
                        || (pad_here && self.pss_refused(&key, CKM_RSA_PKCS_PSS, md))
                    {
                        return self.pss_padded_here(&key, md, tbs);
                    }
                    let mech = Mechanism::with(CKM_RSA_PKCS_PSS, self.pss_params(&key, md)?);
                    match self.try_pss(&key, mech, md, tbs) {
                        Ok(Some(sig)) => Ok(sig),
                        Ok(None) if pad_here => self.pss_padded_here(&key, md, tbs),
                        Ok(None) => Err(Error::Unsupported(
                            "PSS with these parameters: the token refuses them (SoftHSM wants \
                             the MGF1 digest to be the message digest) and the key does not \
                             allow raw RSA (CKM_RSA_X_509) to pad PSS in p11fwd",
                        )),
                        Err(e) => Err(e),
                    }
                }
                Padding::None => {
                    if tbs.len() != key.modulus_len() {
                        return Err(Error::Param {
                            key: "tbs".into(),
                            problem: "raw RSA input must be as long as the modulus",
                        });
                    }
                    self.token_sign(&key, Mechanism::new(CKM_RSA_X_509), tbs)
                }
            },
        }
    }

    /// EMSA-PSS encoded here, the token only exponentiates (CKM_RSA_X_509).
    fn pss_padded_here(&self, key: &Key, md: Hash, tbs: &[u8]) -> Result<Vec<u8>, Error> {
        let salt = self.pss_salt_len(key, md)?;
        let mgf1 = self.mgf1.unwrap_or(md);
        let em = rsa_pad::pss_encode(tbs, md, mgf1, salt, key.bits())
            .ok_or(Error::Unsupported("a PSS salt longer than the key allows"))?;
        self.token_sign(key, Mechanism::new(CKM_RSA_X_509), &em)
    }

    /// Signs with a PSS mechanism of the token; `None` if the token refused its parameters
    /// (then remembered for this token, so that the next signature goes elsewhere at once).
    fn try_pss(
        &self,
        key: &Key,
        mech: Mechanism,
        md: Hash,
        input: &[u8],
    ) -> Result<Option<Vec<u8>>, Error> {
        let ty = mech.ty;
        let cap = key.raw_signature_len() as u64;
        match key.token_op(CallId::SignInit, CallId::Sign, mech, input, cap) {
            Ok(sig) => Ok(Some(sig)),
            Err(e) if e.is_parameter_refusal() => {
                tracing::debug!(mechanism = ty, error = %e.error, "the token refuses these PSS parameters");
                lock_refused().insert(self.pss_refusal(key, ty, md));
                Ok(None)
            }
            Err(e) => Err(e.error),
        }
    }

    /// Whether this token refused PSS with `mech` and these parameters before.
    fn pss_refused(&self, key: &Key, mech: u64, md: Hash) -> bool {
        lock_refused().contains(&self.pss_refusal(key, mech, md))
    }

    fn pss_refusal(&self, key: &Key, mech: u64, md: Hash) -> String {
        let mgf1 = self.mgf1.unwrap_or(md);
        format!(
            "{}\u{0}{mech}\u{0}{}\u{0}{}",
            key.token_identity,
            md.name(),
            mgf1.name()
        )
    }

    /// The PSS salt length in bytes for this key and digest.
    fn pss_salt_len(&self, key: &Key, md: Hash) -> Result<usize, Error> {
        let em_bits = key.bits().saturating_sub(1);
        let max = em_bits.div_ceil(8).saturating_sub(md.size() + 2);
        match self.saltlen {
            SaltLen::Digest => Ok(md.size()),
            SaltLen::Max | SaltLen::Auto => Ok(max),
            SaltLen::Len(n) if n <= max => Ok(n),
            SaltLen::Len(_) => Err(Error::Unsupported("a PSS salt longer than the key allows")),
        }
    }

    fn pss_params(&self, key: &Key, md: Hash) -> Result<MechParam, Error> {
        let mgf1 = self.mgf1.unwrap_or(md);
        let salt = self.pss_salt_len(key, md)?;
        Ok(MechParam::RsaPkcsPss {
            hash_alg: md.ckm(),
            mgf: mgf1.mgf1(),
            salt_len: salt as u64,
        })
    }

    /// Signs a digest (or, with `data`, prefers the token's hashed mechanism over `data`).
    fn sign_hashed(
        &mut self,
        md: Hash,
        data: Option<&[u8]>,
        digest: &[u8],
    ) -> Result<Vec<u8>, Error> {
        let key = Arc::clone(self.key()?);
        if let Some(data) = data {
            let hashed = match (self.algorithm, self.padding) {
                (Algorithm::Ecdsa, _) => Some(Mechanism::new(md.ecdsa())),
                (Algorithm::Rsa, Padding::Pkcs1) => Some(Mechanism::new(md.rsa_pkcs())),
                (Algorithm::Rsa, Padding::Pss) => {
                    Some(Mechanism::with(md.rsa_pss(), self.pss_params(&key, md)?))
                }
                _ => None,
            };
            let raw_allowed = match (self.algorithm, self.padding) {
                (Algorithm::Ecdsa, _) => key.allows(CKM_ECDSA),
                (Algorithm::Rsa, Padding::Pkcs1) => key.allows(CKM_RSA_PKCS),
                (Algorithm::Rsa, Padding::Pss) => key.allows(CKM_RSA_PKCS_PSS),
                _ => true,
            };
            // The token's hashed mechanism when it has one; the raw one (one round trip
            // either way) otherwise. Prefer hashed only if the key allows it.
            let hashed = hashed.filter(|m| key.allows(m.ty) && !self.pss_refused(&key, m.ty, md));
            if let Some(mech) = hashed
                && (!raw_allowed || prefer_token_hash())
            {
                if self.padding == Padding::Pss && self.algorithm == Algorithm::Rsa {
                    // Parameters the token refuses: signed as a digest below.
                    if let Some(sig) = self.try_pss(&key, mech, md, data)? {
                        return Ok(sig);
                    }
                } else {
                    let sig = self.token_sign(&key, mech, data)?;
                    return Ok(if self.algorithm == Algorithm::Ecdsa {
                        self.ecdsa_output(sig)
                    } else {
                        sig
                    });
                }
            }
        }
        let saved = self.md;
        self.md = Some(md);
        let r = self.sign(digest);
        self.md = saved;
        r
    }

    fn sign_message_eddsa(&self, message: &[u8]) -> Result<Vec<u8>, Error> {
        let key = Arc::clone(self.key()?);
        // CKM_EDDSA with a NULL parameter: pure Ed25519/Ed448.
        self.token_sign(&key, Mechanism::new(CKM_EDDSA), message)
    }

    fn ecdsa_output(&self, raw: Vec<u8>) -> Vec<u8> {
        if self.ecdsa_raw {
            raw
        } else {
            der::ecdsa_der_from_raw(&raw)
        }
    }

    /// `[SignInit, (Login CONTEXT_SPECIFIC), Sign]` in one round trip.
    fn token_sign(&self, key: &Key, mech: Mechanism, input: &[u8]) -> Result<Vec<u8>, Error> {
        tracing::debug!(mechanism = mech.ty, input = input.len(), "sign");
        let cap = key.raw_signature_len() as u64;
        Ok(key.token_op(CallId::SignInit, CallId::Sign, mech, input, cap)?)
    }

    /// The signature parameters for OpenSSL's own verification of a digest.
    fn verify_params(&self, md: Option<Hash>) -> Result<Vec<(&'static CStr, CString)>, Error> {
        let cs = |v: &str| CString::new(v).map_err(|_| Error::Internal("parameter text"));
        let mut p = Vec::new();
        if let Some(md) = md {
            p.push((sys::OSSL_SIGNATURE_PARAM_DIGEST, cs(md.name())?));
        }
        if self.algorithm == Algorithm::Rsa {
            p.push((
                sys::OSSL_SIGNATURE_PARAM_PAD_MODE,
                self.padding.name().to_owned(),
            ));
            if self.padding == Padding::Pss {
                p.push((
                    sys::OSSL_SIGNATURE_PARAM_PSS_SALTLEN,
                    cs(&self.saltlen.name())?,
                ));
                if let Some(mgf1) = self.mgf1.or(md) {
                    p.push((sys::OSSL_SIGNATURE_PARAM_MGF1_DIGEST, cs(mgf1.name())?));
                }
            }
        }
        Ok(p)
    }

    /// Verifies `sig` over the digest `tbs`, in software with the key's public part.
    fn verify_digest(&self, md: Option<Hash>, tbs: &[u8], sig: &[u8]) -> Result<bool, Error> {
        let key = self.key()?;
        let der;
        let sig = if self.algorithm == Algorithm::Ecdsa && self.ecdsa_raw {
            der = der::ecdsa_der_from_raw(sig);
            &der[..]
        } else {
            sig
        };
        let params = self.verify_params(md)?;
        let mut b = ParamBuilder::new();
        for (k, v) in &params {
            b = b.utf8(k, v);
        }
        crate::ffi::soft::verify_digest(&key.spki(), &b.build(), tbs, sig)
    }

    /// `verify`: `tbs` is a digest (RSA/ECDSA) or the message (EdDSA).
    pub(crate) fn verify(&mut self, sig: &[u8], tbs: &[u8]) -> Result<bool, Error> {
        let key = Arc::clone(self.key()?);
        if matches!(self.algorithm, Algorithm::Ed25519 | Algorithm::Ed448) {
            return crate::ffi::soft::verify_message(&key.spki(), None, tbs, sig);
        }
        self.verify_digest(self.md, tbs, sig)
    }

    /// `digest_verify_final`: verifies what `update` collected.
    pub(crate) fn verify_final(&mut self, sig: &[u8]) -> Result<bool, Error> {
        let key = Arc::clone(self.key()?);
        if matches!(self.algorithm, Algorithm::Ed25519 | Algorithm::Ed448) {
            let data = std::mem::take(&mut self.data);
            return crate::ffi::soft::verify_message(&key.spki(), None, &data, sig);
        }
        let md = self.md.ok_or(Error::Internal("no digest"))?;
        let hasher = self
            .hasher
            .replace(md.hasher())
            .ok_or(Error::Internal("digest final without digest init"))?;
        self.data.clear();
        self.overflow = false;
        self.verify_digest(Some(md), &hasher.finish(), sig)
    }

    /// `digest_verify`: one shot.
    pub(crate) fn digest_verify(&mut self, sig: &[u8], data: &[u8]) -> Result<bool, Error> {
        let key = Arc::clone(self.key()?);
        if matches!(self.algorithm, Algorithm::Ed25519 | Algorithm::Ed448) {
            return crate::ffi::soft::verify_message(&key.spki(), None, data, sig);
        }
        let md = self.md.unwrap_or(Hash::Sha256);
        self.verify_digest(Some(md), &md.digest(data), sig)
    }

    /// `OSSL_SIGNATURE_PARAM_ALGORITHM_ID`: the AlgorithmIdentifier for X.509 and CMS.
    pub(crate) fn algorithm_id(&self) -> Result<Vec<u8>, Error> {
        let key = self.key()?;
        Ok(match self.algorithm {
            Algorithm::Ed25519 => der::algorithm(oid::ED25519),
            Algorithm::Ed448 => der::algorithm(oid::ED448),
            Algorithm::Ecdsa => der::algorithm(self.md.unwrap_or(Hash::Sha256).ecdsa_sig_oid()),
            Algorithm::Rsa => {
                let md = self.md.unwrap_or(Hash::Sha256);
                match self.padding {
                    Padding::Pkcs1 => der::algorithm_null(md.rsa_sig_oid()),
                    Padding::Pss => {
                        let MechParam::RsaPkcsPss { salt_len, .. } = self.pss_params(key, md)?
                        else {
                            return Err(Error::Internal("pss params"));
                        };
                        let mgf1 = self.mgf1.unwrap_or(md);
                        let mut params = Vec::new();
                        if md != Hash::Sha1 {
                            params.extend(der::explicit(0, &der::algorithm(md.oid())));
                        }
                        if mgf1 != Hash::Sha1 {
                            let mgf =
                                der::sequence(&[&oid(oid::MGF1), &der::algorithm(mgf1.oid())]);
                            params.extend(der::explicit(1, &mgf));
                        }
                        if salt_len != 20 {
                            params.extend(der::explicit(2, &der::small_integer(salt_len)));
                        }
                        der::sequence(&[&oid(oid::RSASSA_PSS), &der::tlv(0x30, &params)])
                    }
                    Padding::None => return Err(Error::Unsupported("an algorithm id for raw RSA")),
                }
            }
        })
    }
}

/// Tokens (by identity), PSS mechanisms and digest/MGF1 pairs the token refused at
/// `C_SignInit` (SoftHSM: an MGF1 digest other than the message digest).
fn lock_refused() -> std::sync::MutexGuard<'static, std::collections::HashSet<String>> {
    static SET: std::sync::OnceLock<std::sync::Mutex<std::collections::HashSet<String>>> =
        std::sync::OnceLock::new();
    SET.get_or_init(Default::default)
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// Whether the key may sign with raw RSA (`CKM_RSA_X_509`) but not with `mech`: then p11fwd pads
/// (EMSA-PKCS1-v1_5 or EMSA-PSS) and the token only exponentiates, as for tokens and cards without
/// PSS (pkcs11-provider #552, libp11 #628). The padded block is public, so this loses nothing.
fn raw_rsa_only(key: &Key, mech: u64) -> bool {
    !key.allows(mech) && key.allows(CKM_RSA_X_509)
}

/// Whether to send the data to the token's hashed mechanism even when the raw mechanism is
/// allowed (`P11FWD_TOKEN_HASH=0` turns it off). Both cost one round trip; the token's hashed
/// mechanism is what some tokens' key policies require, and what the issue asks for.
fn prefer_token_hash() -> bool {
    std::env::var("P11FWD_TOKEN_HASH").map_or(true, |v| v != "0")
}
