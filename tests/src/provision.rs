//! The child-process half of [`crate::TestToken`]: initialise a SoftHSM token and import the key
//! material `openssl` made, with the attributes the fixture promises.
//!
//! Run as `p11fwd-test-token MODULE DIR LABEL SO_PIN USER_PIN [--profile=fixture|vectors] KEY...`
//! with `SOFTHSM2_CONF` set; `DIR` holds the files written by the parent (see `token.rs`).

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{Context, Result, bail, ensure};
use cryptoki_sys::*;

use crate::der::{self, Reader, TAG_BIT_STRING, TAG_OCTET_STRING, TAG_OID, TAG_SEQUENCE};
use crate::ffi::{Attr, Module};
use crate::token::{Key, Profile};

const OID_RSA: &[u8] = &[0x2a, 0x86, 0x48, 0x86, 0xf7, 0x0d, 0x01, 0x01, 0x01];
const OID_EC_PUBLIC_KEY: &[u8] = &[0x2a, 0x86, 0x48, 0xce, 0x3d, 0x02, 0x01];
const OID_ED25519: &[u8] = &[0x2b, 0x65, 0x70];
const OID_ED448: &[u8] = &[0x2b, 0x65, 0x71];
const OID_X25519: &[u8] = &[0x2b, 0x65, 0x6e];

/// Entry point of the `p11fwd-test-token` binary.
pub fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    match run(&args) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("p11fwd-test-token: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn run(args: &[String]) -> Result<()> {
    let [module, dir, label, so_pin, user_pin, keys @ ..] = args else {
        bail!("usage: p11fwd-test-token MODULE DIR LABEL SO_PIN USER_PIN [--profile=P] KEY...");
    };
    let (profile, keys) = match keys.split_first() {
        Some((first, rest)) if first.starts_with("--profile=") => (
            Profile::from_arg(first).with_context(|| format!("unknown profile {first:?}"))?,
            rest,
        ),
        _ => (Profile::Fixture, keys),
    };
    ensure!(
        std::env::var_os("SOFTHSM2_CONF").is_some(),
        "SOFTHSM2_CONF is not set"
    );
    let keys: Vec<Key> = keys
        .iter()
        .map(|k| Key::from_label(k).with_context(|| format!("unknown key {k:?}")))
        .collect::<Result<_>>()?;
    let dir = PathBuf::from(dir);

    let module = Module::load(Path::new(module))?;
    module.initialize()?;
    let slot = free_slot(&module)?;
    module.init_token(slot, so_pin, label)?;
    // SoftHSM gives an initialised token a new slot id: look it up again by label.
    let slot = slot_by_label(&module, label)?;
    let session = module.open_session(slot)?;
    module.login(session, CKU_SO, so_pin).context("SO login")?;
    module.init_pin(session, user_pin)?;
    module.logout(session)?;
    module
        .login(session, CKU_USER, user_pin)
        .context("user login")?;
    for key in keys {
        import(&module, session, &dir, key, profile).with_context(|| format!("creating {key}"))?;
    }
    module.logout(session)?;
    module.close_session(session)?;
    module.finalize()
}

fn token_label(info: &CK_TOKEN_INFO) -> String {
    String::from_utf8_lossy(&info.label).trim_end().to_owned()
}

fn free_slot(module: &Module) -> Result<CK_SLOT_ID> {
    for slot in module.slots()? {
        if module.token_info(slot)?.flags & CKF_TOKEN_INITIALIZED == 0 {
            return Ok(slot);
        }
    }
    bail!("SoftHSM offers no uninitialised slot")
}

fn slot_by_label(module: &Module, label: &str) -> Result<CK_SLOT_ID> {
    for slot in module.slots()? {
        let info = module.token_info(slot)?;
        if info.flags & CKF_TOKEN_INITIALIZED != 0 && token_label(&info) == label {
            return Ok(slot);
        }
    }
    bail!("no initialised token labelled {label:?} after C_InitToken")
}

/// The attributes every object of `key` carries.
fn common(class: CK_OBJECT_CLASS, key: Key, profile: Profile) -> Vec<Attr> {
    let label = if class == CKO_CERTIFICATE {
        profile.cert_label(key)
    } else {
        key.label().to_owned()
    };
    vec![
        Attr::ulong(CKA_CLASS, class),
        Attr::bool(CKA_TOKEN, true),
        Attr::bytes(CKA_LABEL, label),
        Attr::bytes(CKA_ID, [profile.id(key)]),
    ]
}

/// Every usage flag of a private key (SoftHSM defaults the unspecified ones to TRUE, so all are
/// set explicitly); `usage` lists the TRUE ones.
const PRIVATE_USAGE: [CK_ATTRIBUTE_TYPE; 5] = [
    CKA_SIGN,
    CKA_SIGN_RECOVER,
    CKA_DECRYPT,
    CKA_UNWRAP,
    CKA_DERIVE,
];
/// Every usage flag of a public key.
const PUBLIC_USAGE: [CK_ATTRIBUTE_TYPE; 5] = [
    CKA_VERIFY,
    CKA_VERIFY_RECOVER,
    CKA_ENCRYPT,
    CKA_WRAP,
    CKA_DERIVE,
];

fn usage(all: &[CK_ATTRIBUTE_TYPE], set: &[CK_ATTRIBUTE_TYPE]) -> impl Iterator<Item = Attr> {
    all.iter().map(move |ty| Attr::bool(*ty, set.contains(ty)))
}

fn private_common(
    key: Key,
    profile: Profile,
    key_type: CK_KEY_TYPE,
    set: &[CK_ATTRIBUTE_TYPE],
) -> Vec<Attr> {
    let mut t = common(CKO_PRIVATE_KEY, key, profile);
    t.extend([
        Attr::ulong(CKA_KEY_TYPE, key_type),
        Attr::bool(CKA_PRIVATE, true),
        Attr::bool(CKA_SENSITIVE, true),
        Attr::bool(CKA_EXTRACTABLE, false),
    ]);
    t.extend(usage(&PRIVATE_USAGE, set));
    t
}

fn public_common(
    key: Key,
    profile: Profile,
    key_type: CK_KEY_TYPE,
    set: &[CK_ATTRIBUTE_TYPE],
) -> Vec<Attr> {
    let mut t = common(CKO_PUBLIC_KEY, key, profile);
    t.extend([
        Attr::ulong(CKA_KEY_TYPE, key_type),
        Attr::bool(CKA_PRIVATE, false),
    ]);
    t.extend(usage(&PUBLIC_USAGE, set));
    t
}

/// A parsed PKCS#8 PrivateKeyInfo.
struct Pkcs8<'a> {
    algorithm: &'a [u8],
    /// The AlgorithmIdentifier parameters (whole element), if any.
    parameters: Option<&'a [u8]>,
    private_key: &'a [u8],
}

fn parse_pkcs8(der: &[u8]) -> Result<Pkcs8<'_>> {
    let mut top = Reader::new(der);
    let mut info = top.expect(TAG_SEQUENCE)?.reader();
    info.unsigned()?; // version
    let mut alg = info.expect(TAG_SEQUENCE)?.reader();
    let algorithm = alg.expect(TAG_OID)?.content;
    let parameters = if alg.is_empty() {
        None
    } else {
        Some(alg.any()?.raw)
    };
    let private_key = info.expect(TAG_OCTET_STRING)?.content;
    Ok(Pkcs8 {
        algorithm,
        parameters,
        private_key,
    })
}

/// The subjectPublicKey bits of a SubjectPublicKeyInfo.
fn parse_spki(der: &[u8]) -> Result<Vec<u8>> {
    let mut top = Reader::new(der);
    let mut spki = top.expect(TAG_SEQUENCE)?.reader();
    spki.expect(TAG_SEQUENCE)?;
    let bits = spki.expect(TAG_BIT_STRING)?.content;
    ensure!(
        bits.first() == Some(&0),
        "public key BIT STRING with unused bits"
    );
    Ok(bits[1..].to_vec())
}

fn import(
    module: &Module,
    session: CK_SESSION_HANDLE,
    dir: &Path,
    key: Key,
    profile: Profile,
) -> Result<()> {
    let read = |ext: &str| {
        let path = dir.join(format!("{}.{ext}", key.label()));
        std::fs::read(&path).with_context(|| format!("reading {}", path.display()))
    };
    if key == Key::Aes256 {
        let mut t = common(CKO_SECRET_KEY, key, profile);
        t.extend([
            Attr::ulong(CKA_KEY_TYPE, CKK_AES),
            Attr::bytes(CKA_VALUE, read("key")?),
            Attr::bool(CKA_PRIVATE, true),
            Attr::bool(CKA_SENSITIVE, true),
            Attr::bool(CKA_EXTRACTABLE, false),
            Attr::bool(CKA_ENCRYPT, true),
            Attr::bool(CKA_DECRYPT, true),
            Attr::bool(CKA_WRAP, true),
            Attr::bool(CKA_UNWRAP, true),
            Attr::bool(CKA_SIGN, false),
            Attr::bool(CKA_VERIFY, false),
            Attr::bool(CKA_DERIVE, false),
            Attr::template(
                CKA_WRAP_TEMPLATE,
                vec![
                    Attr::ulong(CKA_CLASS, CKO_SECRET_KEY),
                    Attr::ulong(CKA_KEY_TYPE, CKK_AES),
                ],
            ),
        ]);
        module.create_object(session, &t).context("secret key")?;
        return Ok(());
    }

    let private_der = read("key.der")?;
    let pkcs8 = parse_pkcs8(&private_der)?;
    let public = parse_spki(&read("pub.der")?)?;
    let cert = if key.has_certificate() {
        Some(read("cert.der")?)
    } else {
        None
    };
    let cert_info = cert.as_deref().map(der::cert_info).transpose()?;

    let (mut private, mut public) = match pkcs8.algorithm {
        OID_RSA => rsa_templates(key, profile, pkcs8.private_key)?,
        OID_EC_PUBLIC_KEY => {
            let params = pkcs8
                .parameters
                .context("EC key without curve parameters")?;
            ec_templates(key, profile, params, pkcs8.private_key, &public)?
        }
        OID_ED25519 | OID_ED448 | OID_X25519 => {
            let key_type = if pkcs8.algorithm == OID_X25519 {
                CKK_EC_MONTGOMERY
            } else {
                CKK_EC_EDWARDS
            };
            let params = der::encode(TAG_OID, pkcs8.algorithm);
            // CurvePrivateKey ::= OCTET STRING, inside the PKCS#8 OCTET STRING.
            let seed = Reader::new(pkcs8.private_key)
                .expect(TAG_OCTET_STRING)?
                .content
                .to_vec();
            let (usage_private, usage_public): (&[_], &[_]) = if key_type == CKK_EC_EDWARDS {
                (&[CKA_SIGN], &[CKA_VERIFY])
            } else {
                (&[CKA_DERIVE], &[])
            };
            let mut private = private_common(key, profile, key_type, usage_private);
            private.extend([
                Attr::bytes(CKA_EC_PARAMS, params.clone()),
                Attr::bytes(CKA_VALUE, seed),
            ]);
            let mut public_t = public_common(key, profile, key_type, usage_public);
            public_t.extend([
                Attr::bytes(CKA_EC_PARAMS, params),
                Attr::bytes(CKA_EC_POINT, der::encode(TAG_OCTET_STRING, &public)),
            ]);
            (private, public_t)
        }
        other => bail!("unexpected key algorithm OID {other:02x?}"),
    };
    // The capture token's keys were generated on the token, without a subject.
    if let Some(info) = cert_info.as_ref().filter(|_| profile == Profile::Fixture) {
        private.push(Attr::bytes(CKA_SUBJECT, info.subject));
        public.push(Attr::bytes(CKA_SUBJECT, info.subject));
    }
    module
        .create_object(session, &private)
        .context("private key")?;
    module
        .create_object(session, &public)
        .context("public key")?;

    if let (Some(cert), Some(info)) = (&cert, &cert_info) {
        let mut t = common(CKO_CERTIFICATE, key, profile);
        t.extend([
            Attr::ulong(CKA_CERTIFICATE_TYPE, CKC_X_509),
            Attr::bool(CKA_PRIVATE, false),
            Attr::bytes(CKA_SUBJECT, info.subject),
            Attr::bytes(CKA_ISSUER, info.issuer),
            Attr::bytes(CKA_SERIAL_NUMBER, info.serial),
            Attr::bytes(CKA_VALUE, cert.clone()),
        ]);
        module.create_object(session, &t).context("certificate")?;
    }
    Ok(())
}

fn rsa_templates(
    key: Key,
    profile: Profile,
    rsa_private_key: &[u8],
) -> Result<(Vec<Attr>, Vec<Attr>)> {
    let mut top = Reader::new(rsa_private_key);
    let mut r = top.expect(TAG_SEQUENCE)?.reader();
    r.unsigned()?; // version
    let n = r.unsigned()?;
    let e = r.unsigned()?;
    let parts = [
        CKA_PRIVATE_EXPONENT,
        CKA_PRIME_1,
        CKA_PRIME_2,
        CKA_EXPONENT_1,
        CKA_EXPONENT_2,
        CKA_COEFFICIENT,
    ];
    let (usage_private, usage_public): (&[_], &[_]) = match key {
        Key::Rsa2048 => (
            &[CKA_SIGN, CKA_DECRYPT, CKA_UNWRAP],
            &[CKA_VERIFY, CKA_ENCRYPT, CKA_WRAP],
        ),
        Key::RsaPss => (&[CKA_SIGN], &[CKA_VERIFY]),
        _ => (&[CKA_SIGN, CKA_DECRYPT], &[CKA_VERIFY, CKA_ENCRYPT]),
    };
    let mut private = private_common(key, profile, CKK_RSA, usage_private);
    private.extend([
        Attr::bytes(CKA_MODULUS, n.clone()),
        Attr::bytes(CKA_PUBLIC_EXPONENT, e.clone()),
    ]);
    for ty in parts {
        private.push(Attr::bytes(ty, r.unsigned()?));
    }
    let mut public = public_common(key, profile, CKK_RSA, usage_public);
    public.extend([
        Attr::bytes(CKA_MODULUS, n),
        Attr::bytes(CKA_PUBLIC_EXPONENT, e),
    ]);
    match key {
        // make-token.c's list (SoftHSM keeps it as a set and returns it sorted).
        Key::Rsa2048 if profile == Profile::Vectors => private.push(Attr::mechanisms(
            CKA_ALLOWED_MECHANISMS,
            vec![
                CKM_RSA_PKCS,
                CKM_SHA256_RSA_PKCS,
                CKM_RSA_PKCS_PSS,
                CKM_SHA256_RSA_PKCS_PSS,
                CKM_RSA_PKCS_OAEP,
            ],
        )),
        Key::RsaPss => private.push(Attr::mechanisms(
            CKA_ALLOWED_MECHANISMS,
            vec![
                CKM_RSA_PKCS_PSS,
                CKM_SHA256_RSA_PKCS_PSS,
                CKM_SHA384_RSA_PKCS_PSS,
                CKM_SHA512_RSA_PKCS_PSS,
            ],
        )),
        Key::RsaAlwaysAuth => private.push(Attr::bool(CKA_ALWAYS_AUTHENTICATE, true)),
        _ => {}
    }
    Ok((private, public))
}

fn ec_templates(
    key: Key,
    profile: Profile,
    params: &[u8],
    ec_private_key: &[u8],
    point: &[u8],
) -> Result<(Vec<Attr>, Vec<Attr>)> {
    // ECPrivateKey ::= SEQUENCE { version 1, privateKey OCTET STRING, [0] params, [1] publicKey }
    let mut top = Reader::new(ec_private_key);
    let mut r = top.expect(TAG_SEQUENCE)?.reader();
    r.unsigned()?;
    let value = r.expect(TAG_OCTET_STRING)?.content.to_vec();
    let mut private = private_common(key, profile, CKK_EC, &[CKA_SIGN, CKA_DERIVE]);
    private.extend([
        Attr::bytes(CKA_EC_PARAMS, params),
        Attr::bytes(CKA_VALUE, value),
    ]);
    let mut public = public_common(key, profile, CKK_EC, &[CKA_VERIFY]);
    public.extend([
        Attr::bytes(CKA_EC_PARAMS, params),
        Attr::bytes(CKA_EC_POINT, der::encode(TAG_OCTET_STRING, point)),
    ]);
    Ok((private, public))
}
