//! RSA decryption with token keys (and encryption with their public part, in software).
//!
//! One round trip per decryption: `C_DecryptInit` + `C_Decrypt` in one write, with an output
//! buffer of the modulus size.
//!
//! PKCS#1 v1.5 must not be a padding oracle (Bleichenbacher). OpenSSL's default provider, which
//! we follow:
//! - TLS (`RSA_PKCS1_WITH_TLS_PADDING` + `tls-client-version` / `tls-negotiated-version`, what
//!   libssl sets for the RSA key exchange): always 48 bytes, a random premaster on any failure
//!   (padding or version), chosen in constant time.
//! - otherwise implicit rejection (OpenSSL 3.2+): a bad padding yields a deterministic synthetic
//!   message instead of an error; `implicit-rejection=0` restores the error (3.0's behaviour).
//!
//! Mechanism choice: raw RSA (`CKM_RSA_X_509`) on the token and the unpadding here in constant
//! time ([`crate::rsa_pad`]) when the token has it and the key's CKA_ALLOWED_MECHANISMS allow
//! it: then the token never sees whether the padding was good, so neither its timing nor its
//! error codes can leak it. Otherwise `CKM_RSA_PKCS` on the token, whose failure is turned into
//! the same random premaster / synthetic message (the token's own timing is then what it is).
//!
//! OAEP: the token's `CKM_RSA_PKCS_OAEP` when it accepts the parameters (digest, MGF1 digest,
//! label; OpenSSL's default SHA-1 when none are set); a token that refuses them at
//! `C_DecryptInit` (SoftHSM accepts only SHA-1 without a label) is remembered, and raw RSA with
//! OAEP decoding here is used when allowed; else a clear error.

use std::collections::HashSet;
use std::sync::{Arc, Mutex, OnceLock};

use p11fwd_wire::consts::*;
use p11fwd_wire::{CallId, MechParam, Mechanism};
use zeroize::Zeroizing;

use crate::error::Error;
use crate::ffi::cast::{Castable, OwnershipBox};
use crate::ffi::params::ParamBuilder;
use crate::hash::Hash;
use crate::key::{Key, KeyKind, OpError, OpStep, Stage};
use crate::provider::ProvCtx;
use crate::rsa_pad::{self, KdkSecrets, TLS_PREMASTER_LEN};

/// RSA padding of the asymmetric cipher (`OSSL_ASYM_CIPHER_PARAM_PAD_MODE`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum RsaPadding {
    /// `RSA_PKCS1_PADDING` (1).
    Pkcs1,
    /// `RSA_NO_PADDING` (3).
    None,
    /// `RSA_PKCS1_OAEP_PADDING` (4).
    Oaep,
    /// `RSA_PKCS1_WITH_TLS_PADDING` (7): the TLS premaster.
    Tls,
}

impl RsaPadding {
    pub(crate) fn from_int(v: i32) -> Option<Self> {
        match v {
            1 => Some(Self::Pkcs1),
            3 => Some(Self::None),
            4 => Some(Self::Oaep),
            7 => Some(Self::Tls),
            _ => None,
        }
    }

    pub(crate) fn from_name(s: &str) -> Option<Self> {
        match s {
            "pkcs1" => Some(Self::Pkcs1),
            "none" => Some(Self::None),
            "oaep" | "oeap" => Some(Self::Oaep),
            _ => None,
        }
    }

    pub(crate) fn as_int(self) -> i32 {
        match self {
            Self::Pkcs1 => 1,
            Self::None => 3,
            Self::Oaep => 4,
            Self::Tls => 7,
        }
    }

    pub(crate) fn name(self) -> &'static std::ffi::CStr {
        match self {
            Self::Pkcs1 | Self::Tls => c"pkcs1",
            Self::None => c"none",
            Self::Oaep => c"oaep",
        }
    }
}

/// An asymmetric cipher context.
#[derive(Debug, Clone)]
pub(crate) struct CipherCtx {
    _provctx: Arc<ProvCtx>,
    key: Option<Arc<Key>>,
    pub(crate) padding: RsaPadding,
    /// The OAEP digest (OpenSSL's default: SHA-1).
    pub(crate) oaep_md: Hash,
    /// The MGF1 digest; `None`: the OAEP digest.
    pub(crate) mgf1: Option<Hash>,
    /// The OAEP label; `None` and empty are the same.
    pub(crate) label: Option<Zeroizing<Vec<u8>>>,
    pub(crate) client_version: u32,
    pub(crate) alt_version: u32,
    pub(crate) implicit_rejection: bool,
}

impl Castable for CipherCtx {
    type Ownership = OwnershipBox;
    const WHAT: &'static str = "asym cipher ctx";
}

/// Tokens (by identity) that refused these OAEP parameters at `C_DecryptInit`.
fn oaep_refused() -> &'static Mutex<HashSet<String>> {
    static SET: OnceLock<Mutex<HashSet<String>>> = OnceLock::new();
    SET.get_or_init(|| Mutex::new(HashSet::new()))
}

impl CipherCtx {
    pub(crate) fn new(provctx: Arc<ProvCtx>) -> Self {
        Self {
            _provctx: provctx,
            key: None,
            padding: RsaPadding::Pkcs1,
            oaep_md: Hash::Sha1,
            mgf1: None,
            label: None,
            client_version: 0,
            alt_version: 0,
            implicit_rejection: true,
        }
    }

    fn key(&self) -> Result<&Arc<Key>, Error> {
        self.key
            .as_ref()
            .ok_or(Error::Internal("asym cipher ctx without a key"))
    }

    /// `encrypt_init` / `decrypt_init`.
    pub(crate) fn init(&mut self, key: Arc<Key>, decrypt: bool) -> Result<(), Error> {
        if key.kind != KeyKind::Rsa {
            return Err(Error::Unsupported("RSA encryption with this key type"));
        }
        if decrypt && !key.has_private() {
            return Err(Error::Unsupported("decryption with a public key"));
        }
        *self = Self::new(Arc::clone(&self._provctx));
        self.key = Some(key);
        Ok(())
    }

    /// The output size for a size query.
    pub(crate) fn max_output(&self) -> Result<usize, Error> {
        let key = self.key()?;
        Ok(match self.padding {
            RsaPadding::Tls => TLS_PREMASTER_LEN,
            _ => key.modulus_len(),
        })
    }

    fn mgf1_md(&self) -> Hash {
        self.mgf1.unwrap_or(self.oaep_md)
    }

    fn label(&self) -> &[u8] {
        self.label.as_ref().map_or(&[][..], |l| l.as_slice())
    }

    /// Encrypts with the key's public part, in software.
    pub(crate) fn encrypt(&self, data: &[u8]) -> Result<Vec<u8>, Error> {
        let key = self.key()?;
        let pad = match self.padding {
            RsaPadding::Tls => RsaPadding::Pkcs1,
            p => p,
        };
        let md = self.oaep_md.name();
        let mgf1 = self.mgf1_md().name();
        let md = std::ffi::CString::new(md).map_err(|_| Error::Internal("digest name"))?;
        let mgf1 = std::ffi::CString::new(mgf1).map_err(|_| Error::Internal("digest name"))?;
        let mut b =
            ParamBuilder::new().utf8(crate::sys::OSSL_ASYM_CIPHER_PARAM_PAD_MODE, pad.name());
        if pad == RsaPadding::Oaep {
            b = b
                .utf8(crate::sys::OSSL_ASYM_CIPHER_PARAM_OAEP_DIGEST, &md)
                .utf8(crate::sys::OSSL_ASYM_CIPHER_PARAM_MGF1_DIGEST, &mgf1);
            if !self.label().is_empty() {
                b = b.octets(crate::sys::OSSL_ASYM_CIPHER_PARAM_OAEP_LABEL, self.label());
            }
        }
        crate::ffi::soft::encrypt(&key.spki(), &b.build(), data)
    }

    /// Decrypts on the token; see the module docs for what each padding returns.
    pub(crate) fn decrypt(&self, input: &[u8]) -> Result<Zeroizing<Vec<u8>>, Error> {
        let key = Arc::clone(self.key()?);
        let k = key.modulus_len();
        if input.len() > k {
            return Err(Error::Decrypt("the ciphertext is longer than the modulus"));
        }
        // PKCS#11 wants the ciphertext as long as the modulus.
        let mut ct = vec![0u8; k - input.len()];
        ct.extend_from_slice(input);
        tracing::debug!(
            padding = ?self.padding,
            raw = key.allows(CKM_RSA_X_509),
            implicit_rejection = self.implicit_rejection,
            "decrypt"
        );
        match self.padding {
            RsaPadding::None => {
                if !key.allows(CKM_RSA_X_509) {
                    return Err(Error::Unsupported(
                        "raw RSA decryption (the key or the token does not allow CKM_RSA_X_509)",
                    ));
                }
                Ok(raw(&key, &ct)?)
            }
            RsaPadding::Tls => self
                .decrypt_tls(&key, &ct)
                .map(|pm| Zeroizing::new(pm.to_vec())),
            RsaPadding::Pkcs1 => self.decrypt_pkcs1(&key, &ct),
            RsaPadding::Oaep => self.decrypt_oaep(&key, &ct),
        }
    }

    fn decrypt_tls(
        &self,
        key: &Key,
        ct: &[u8],
    ) -> Result<Zeroizing<[u8; TLS_PREMASTER_LEN]>, Error> {
        if self.client_version == 0 {
            return Err(Error::Param {
                key: "tls-client-version".into(),
                problem: "RSA_PKCS1_WITH_TLS_PADDING needs the TLS client version",
            });
        }
        if ct.len() < rsa_pad::PKCS1_PADDING_SIZE + TLS_PREMASTER_LEN {
            return Err(Error::Decrypt("the key is too small for a TLS premaster"));
        }
        // Made before decrypting, so that both outcomes take the same path.
        let mut random = Zeroizing::new([0u8; TLS_PREMASTER_LEN]);
        crate::ffi::rand::fill(&mut random[..]);
        if key.allows(CKM_RSA_X_509) {
            let em = raw(key, ct)?;
            return Ok(rsa_pad::tls_premaster(
                &em,
                self.client_version,
                self.alt_version,
                &random,
            ));
        }
        let msg = token_pkcs1(key, ct)?;
        Ok(rsa_pad::tls_premaster_from_message(
            msg.as_deref().map(|m| m.as_slice()),
            self.client_version,
            self.alt_version,
            &random,
        ))
    }

    fn decrypt_pkcs1(&self, key: &Key, ct: &[u8]) -> Result<Zeroizing<Vec<u8>>, Error> {
        if ct.len() < rsa_pad::PKCS1_PADDING_SIZE {
            return Err(Error::Decrypt("the key is too small for PKCS#1 v1.5"));
        }
        let key_id = format!("{}\u{0}{}", key.token_identity, key.uri);
        let raw_allowed = key.allows(CKM_RSA_X_509);
        if !self.implicit_rejection {
            if raw_allowed {
                let em = raw(key, ct)?;
                return rsa_pad::pkcs1(&em).ok_or(Error::Decrypt("PKCS#1 v1.5 decryption failed"));
            }
            return token_pkcs1(key, ct)?.ok_or(Error::Decrypt("PKCS#1 v1.5 decryption failed"));
        }
        if raw_allowed {
            let (secret, em) = match KdkSecrets::cached(&key_id) {
                Some(secret) => (secret, raw(key, ct)?),
                None => {
                    // First use in this process: the secret's input in the same round trip.
                    let fixed = rsa_pad::fixed_input(ct.len());
                    let mut r = key.token_ops(&[raw_step(&fixed), raw_step(ct)]).into_iter();
                    let x = r.next().unwrap_or_else(no_reply).map_err(raw_error)?;
                    let em = pad_raw(
                        r.next().unwrap_or_else(no_reply).map_err(raw_error)?,
                        ct.len(),
                    )?;
                    (KdkSecrets::derive(&key_id, &x), em)
                }
            };
            let kdk = Zeroizing::new(rsa_pad::kdk(&secret, ct, ct.len()));
            return Ok(rsa_pad::pkcs1_implicit(&em, &kdk));
        }
        if !key.allows(CKM_RSA_PKCS) {
            return Err(unsupported_pkcs1());
        }
        let (secret, msg) = match KdkSecrets::cached(&key_id) {
            Some(secret) => (secret, token_pkcs1(key, ct)?),
            None => {
                let digest_info =
                    Hash::Sha256.digest_info(&Hash::Sha256.digest(rsa_pad::FIXED_MESSAGE));
                let mut r = key
                    .token_ops(&[
                        OpStep {
                            init: CallId::SignInit,
                            op: CallId::Sign,
                            mech: Mechanism::new(CKM_RSA_PKCS),
                            input: &digest_info,
                            cap: ct.len() as u64,
                        },
                        pkcs1_step(ct),
                    ])
                    .into_iter();
                let sig = r.next().unwrap_or_else(no_reply);
                let msg = pkcs1_result(r.next().unwrap_or_else(no_reply))?;
                let secret = match sig {
                    Ok(sig) => KdkSecrets::derive(&key_id, &sig),
                    Err(e) => {
                        tracing::debug!(error = %e.error, "no signature for the implicit-rejection secret; a random one per process");
                        KdkSecrets::random(&key_id)
                    }
                };
                (secret, msg)
            }
        };
        // The synthetic message is computed either way, so that our own time does not add to
        // what the token's reply already says.
        let kdk = Zeroizing::new(rsa_pad::kdk(&secret, ct, ct.len()));
        let synthetic = rsa_pad::implicit_rejection_message(&kdk, ct.len());
        Ok(msg.unwrap_or(synthetic))
    }

    fn decrypt_oaep(&self, key: &Key, ct: &[u8]) -> Result<Zeroizing<Vec<u8>>, Error> {
        let (md, mgf1, label) = (self.oaep_md, self.mgf1_md(), self.label());
        let refused_key = format!(
            "{}\u{0}{}\u{0}{}\u{0}{}",
            key.token_identity,
            md.name(),
            mgf1.name(),
            !label.is_empty()
        );
        let refused = oaep_refused()
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .contains(&refused_key);
        if key.allows(CKM_RSA_PKCS_OAEP) && !refused {
            let mech = Mechanism::with(
                CKM_RSA_PKCS_OAEP,
                MechParam::RsaPkcsOaep {
                    hash_alg: md.ckm(),
                    mgf: mgf1.mgf1(),
                    source: CKZ_DATA_SPECIFIED,
                    source_data: (!label.is_empty()).then(|| label.to_vec()),
                },
            );
            match key.token_op(
                CallId::DecryptInit,
                CallId::Decrypt,
                mech,
                ct,
                ct.len() as u64,
            ) {
                Ok(msg) => return Ok(Zeroizing::new(msg)),
                Err(OpError {
                    stage: Stage::Operation,
                    rv: Some(_),
                    ..
                }) => {
                    // Some tokens accept parameters at C_DecryptInit that they then ignore
                    // (SoftHSM 2.6 and OAEP labels): decode the raw result here when allowed.
                    // This adds nothing an attacker could use: the answer to a bad ciphertext
                    // is the same single error, and the token's own verdict was already given.
                    if !key.allows(CKM_RSA_X_509) {
                        return Err(Error::Decrypt("OAEP decryption failed"));
                    }
                    let em = raw(key, ct)?;
                    let msg = rsa_pad::oaep(&em, md, mgf1, label)
                        .ok_or(Error::Decrypt("OAEP decryption failed"))?;
                    tracing::debug!(
                        digest = md.name(),
                        mgf1 = mgf1.name(),
                        label = !label.is_empty(),
                        "the token's OAEP failed where p11fwd's succeeded; decoding OAEP here from now on"
                    );
                    oaep_refused()
                        .lock()
                        .unwrap_or_else(std::sync::PoisonError::into_inner)
                        .insert(refused_key);
                    return Ok(msg);
                }
                Err(e) if e.is_parameter_refusal() => {
                    tracing::debug!(
                        digest = md.name(),
                        mgf1 = mgf1.name(),
                        label = !label.is_empty(),
                        error = %e.error,
                        "the token refuses these OAEP parameters; decoding OAEP here"
                    );
                    oaep_refused()
                        .lock()
                        .unwrap_or_else(std::sync::PoisonError::into_inner)
                        .insert(refused_key);
                }
                Err(e) => return Err(e.error),
            }
        }
        if key.allows(CKM_RSA_X_509) {
            let em = raw(key, ct)?;
            return rsa_pad::oaep(&em, md, mgf1, label)
                .ok_or(Error::Decrypt("OAEP decryption failed"));
        }
        Err(Error::Unsupported(
            "OAEP with these parameters: the token refuses them (or lacks CKM_RSA_PKCS_OAEP) and \
             the key does not allow raw RSA (CKM_RSA_X_509) to decode OAEP in p11fwd",
        ))
    }
}

fn no_reply() -> Result<Vec<u8>, OpError> {
    Err(OpError {
        stage: Stage::Setup,
        rv: None,
        error: Error::Internal("no reply"),
    })
}

fn raw_step(ct: &[u8]) -> OpStep<'_> {
    OpStep {
        init: CallId::DecryptInit,
        op: CallId::Decrypt,
        mech: Mechanism::new(CKM_RSA_X_509),
        input: ct,
        cap: ct.len() as u64,
    }
}

fn pkcs1_step(ct: &[u8]) -> OpStep<'_> {
    OpStep {
        init: CallId::DecryptInit,
        op: CallId::Decrypt,
        mech: Mechanism::new(CKM_RSA_PKCS),
        input: ct,
        cap: ct.len() as u64,
    }
}

fn raw_error(e: OpError) -> Error {
    match (e.stage, e.rv) {
        (Stage::Operation, Some(_)) => Error::Decrypt("raw RSA decryption failed"),
        _ => e.error,
    }
}

/// The raw result left-padded to the modulus length `k`.
fn pad_raw(out: Vec<u8>, k: usize) -> Result<Zeroizing<Vec<u8>>, Error> {
    let out = Zeroizing::new(out);
    if out.len() > k {
        return Err(Error::Protocol(
            "raw RSA output longer than the modulus".into(),
        ));
    }
    let mut em = Zeroizing::new(vec![0u8; k - out.len()]);
    em.extend_from_slice(&out);
    Ok(em)
}

/// Raw RSA on the token: the modulus-length result.
fn raw(key: &Key, ct: &[u8]) -> Result<Zeroizing<Vec<u8>>, Error> {
    let out = key
        .token_ops(&[raw_step(ct)])
        .pop()
        .unwrap_or_else(no_reply)
        .map_err(raw_error)?;
    pad_raw(out, ct.len())
}

fn unsupported_pkcs1() -> Error {
    Error::Unsupported(
        "PKCS#1 v1.5 decryption (the key or the token allows neither CKM_RSA_X_509 nor \
         CKM_RSA_PKCS)",
    )
}

/// The outcome of `CKM_RSA_PKCS` on the token: `Some(message)`, or `None` when the token
/// refused the ciphertext (any CK_RV of `C_Decrypt`). Other failures are errors.
fn pkcs1_result(r: Result<Vec<u8>, OpError>) -> Result<Option<Zeroizing<Vec<u8>>>, Error> {
    match r {
        Ok(msg) => Ok(Some(Zeroizing::new(msg))),
        Err(OpError {
            stage: Stage::Operation,
            rv: Some(_),
            ..
        }) => Ok(None),
        Err(e) => Err(e.error),
    }
}

/// `CKM_RSA_PKCS` on the token (see [`pkcs1_result`]).
fn token_pkcs1(key: &Key, ct: &[u8]) -> Result<Option<Zeroizing<Vec<u8>>>, Error> {
    if !key.allows(CKM_RSA_PKCS) {
        return Err(unsupported_pkcs1());
    }
    pkcs1_result(
        key.token_ops(&[pkcs1_step(ct)])
            .pop()
            .unwrap_or_else(no_reply),
    )
}
