//! KEYMGMT for token keys: RSA, RSA-PSS, EC, ED25519, ED448, X25519, X448.
//!
//! Token keys come from the store (`load` of a reference) or are generated on the token (`gen`,
//! `crate::keygen`); `has`, `match`, `get_params` and the export of **public** parts (so that
//! OpenSSL can verify and encrypt in software, and compare with keys from files). `new` +
//! `import` take **public** keys only (the ECDH peer key, keys from files that OpenSSL hands to
//! p11fwd for verification): a private key from elsewhere is refused, so it stays with its own
//! provider and is never copied onto the token.

use core::ffi::{c_char, c_int, c_void};
use std::sync::Arc;

use crate::error::Error;
use crate::ffi::boundary::entry;
use crate::ffi::cast::{ArcCastable, BoxCastable, Castable, bytes};
use crate::ffi::dispatch::{DispatchTable, dispatch_table};
use crate::ffi::params::{ParamBuilder, ParamTable, Params, ParamsMut, param_table};
use crate::key::{Curve, Key, KeyKind, PublicMaterial, registry};
use crate::keygen::GenCtx;
use crate::provider::ProvCtx;
use crate::sys::{self, OSSL_CALLBACK, OSSL_PARAM};

macro_rules! keymgmt_table {
    ($name:ident, $query:ident, $gettable:ident, $export_types:ident, $new:ident, $import:ident, $gen_init:ident) => {
        pub(crate) static $name: DispatchTable = dispatch_table![
            keymgmt_new => $new,
            keymgmt_gen_init => $gen_init,
            keymgmt_gen_set_params => p11fwd_keymgmt_gen_set_params,
            keymgmt_gen_settable_params => p11fwd_keymgmt_gen_settable_params,
            keymgmt_gen => p11fwd_keymgmt_gen,
            keymgmt_gen_cleanup => p11fwd_keymgmt_gen_cleanup,
            keymgmt_free => p11fwd_keymgmt_free,
            keymgmt_load => p11fwd_keymgmt_load,
            keymgmt_has => p11fwd_keymgmt_has,
            keymgmt_match => p11fwd_keymgmt_match,
            keymgmt_get_params => p11fwd_keymgmt_get_params,
            keymgmt_gettable_params => $gettable,
            keymgmt_import => $import,
            keymgmt_import_types => $export_types,
            keymgmt_export => p11fwd_keymgmt_export,
            keymgmt_export_types => $export_types,
            keymgmt_query_operation_name => $query,
        ];
    };
}

keymgmt_table!(
    RSA_FUNCTIONS,
    query_rsa,
    gettable_rsa,
    export_types_rsa,
    new_rsa,
    import_rsa,
    gen_init_rsa
);
keymgmt_table!(
    RSA_PSS_FUNCTIONS,
    query_rsa,
    gettable_rsa,
    export_types_rsa,
    new_rsa_pss,
    import_rsa_pss,
    gen_init_rsa_pss
);
keymgmt_table!(
    EC_FUNCTIONS,
    query_ec,
    gettable_ec,
    export_types_ec,
    new_ec,
    import_ec,
    gen_init_ec
);
keymgmt_table!(
    ED25519_FUNCTIONS,
    query_ed25519,
    gettable_raw,
    export_types_raw,
    new_ed25519,
    import_ed25519,
    gen_init_ed25519
);
keymgmt_table!(
    ED448_FUNCTIONS,
    query_ed448,
    gettable_raw,
    export_types_raw,
    new_ed448,
    import_ed448,
    gen_init_ed448
);
keymgmt_table!(
    X25519_FUNCTIONS,
    query_x25519,
    gettable_raw,
    export_types_raw,
    new_x25519,
    import_x25519,
    gen_init_x25519
);
keymgmt_table!(
    X448_FUNCTIONS,
    query_x448,
    gettable_raw,
    export_types_raw,
    new_x448,
    import_x448,
    gen_init_x448
);

/// What `new` makes before `import` fills it in: the kind, no public material yet.
fn empty(kind: KeyKind) -> PublicMaterial {
    match kind {
        KeyKind::Rsa | KeyKind::RsaPss => PublicMaterial::Rsa {
            n: Vec::new(),
            e: Vec::new(),
        },
        KeyKind::Ec(_) => PublicMaterial::Ec(Vec::new()),
        _ => PublicMaterial::Raw(Vec::new()),
    }
}

macro_rules! new_and_import {
    ($new:ident, $import:ident, $kind:expr) => {
        entry! {
            /// `OSSL_FUNC_keymgmt_new`: an empty public key, for `import`.
            fn $new(provctx: *mut c_void) -> *mut c_void {
                // SAFETY: the core passes our provctx, live until teardown.
                let provctx = unsafe { ProvCtx::clone_arc(provctx) }?;
                let kind = $kind;
                Ok(Key::arc_into_raw(Arc::new(Key::detached(provctx, kind, empty(kind)))))
            }
        }

        entry! {
            /// `OSSL_FUNC_keymgmt_import`: public keys only (a private key stays with its
            /// own provider, so OpenSSL uses that provider's operations for it).
            fn $import(keydata: *mut c_void, selection: c_int, params: *const OSSL_PARAM) -> c_int {
                // SAFETY: `new` made this keydata and nobody else holds it yet.
                let key = unsafe { Key::unique_mut(keydata) }?;
                // SAFETY: the caller's END-terminated array, valid for this call.
                let params = unsafe { Params::from_ptr(params) };
                Ok(c_int::from(import_public(key, selection, params)?))
            }
        }
    };
}

new_and_import!(new_rsa, import_rsa, KeyKind::Rsa);
new_and_import!(new_rsa_pss, import_rsa_pss, KeyKind::RsaPss);
new_and_import!(new_ec, import_ec, KeyKind::Ec(Curve::P256));
new_and_import!(new_ed25519, import_ed25519, KeyKind::Ed25519);
new_and_import!(new_ed448, import_ed448, KeyKind::Ed448);
new_and_import!(new_x25519, import_x25519, KeyKind::X25519);
new_and_import!(new_x448, import_x448, KeyKind::X448);

/// `pkcs11_uri` (generation parameter, pkcs11-provider's name): where and under which label/id
/// to create the key.
pub(crate) const GEN_URI: &core::ffi::CStr = c"pkcs11_uri";
/// `pkcs11_key_usage` (pkcs11-provider's name): space-separated X.509 key usages.
pub(crate) const GEN_KEY_USAGE: &core::ffi::CStr = c"pkcs11_key_usage";

static GEN_SETTABLE: ParamTable = param_table![
    (GEN_URI, Utf8String),
    (GEN_KEY_USAGE, Utf8String),
    (sys::OSSL_PKEY_PARAM_RSA_BITS, UnsignedInteger),
    (sys::OSSL_PKEY_PARAM_RSA_PRIMES, UnsignedInteger),
    (sys::OSSL_PKEY_PARAM_RSA_E, UnsignedInteger),
    (sys::OSSL_PKEY_PARAM_GROUP_NAME, Utf8String),
    (sys::OSSL_PKEY_PARAM_EC_ENCODING, Utf8String),
    (sys::OSSL_PKEY_PARAM_EC_POINT_CONVERSION_FORMAT, Utf8String),
];

macro_rules! gen_init {
    ($name:ident, $kind:expr) => {
        entry! {
            /// `OSSL_FUNC_keymgmt_gen_init`: key pairs on the token only.
            fn $name(provctx: *mut c_void, selection: c_int, params: *const OSSL_PARAM) -> *mut c_void {
                // SAFETY: the core passes our provctx, live until teardown.
                let provctx = unsafe { ProvCtx::clone_arc(provctx) }?;
                if selection & sys::OSSL_KEYMGMT_SELECT_KEYPAIR as c_int == 0 {
                    return Err(Error::Unsupported(
                        "generating parameters only (p11fwd generates key pairs on the token)",
                    ));
                }
                let mut ctx = GenCtx::new(provctx, $kind);
                // SAFETY: the caller's END-terminated array, valid for this call.
                gen_set_params(&mut ctx, unsafe { Params::from_ptr(params) })?;
                Ok(ctx.into_raw())
            }
        }
    };
}

gen_init!(gen_init_rsa, KeyKind::Rsa);
gen_init!(gen_init_rsa_pss, KeyKind::RsaPss);
gen_init!(gen_init_ec, KeyKind::Ec(Curve::P256));
gen_init!(gen_init_ed25519, KeyKind::Ed25519);
gen_init!(gen_init_ed448, KeyKind::Ed448);
gen_init!(gen_init_x25519, KeyKind::X25519);
gen_init!(gen_init_x448, KeyKind::X448);

fn gen_set_params(ctx: &mut GenCtx, params: Params<'_>) -> Result<(), Error> {
    for p in params.iter() {
        let k = p.key();
        if k == GEN_URI {
            ctx.uri = Some(p.utf8()?.to_owned());
        } else if k == GEN_KEY_USAGE {
            ctx.key_usage = Some(p.utf8()?.to_owned());
        } else if k == sys::OSSL_PKEY_PARAM_RSA_BITS {
            ctx.bits = p.size_t()?;
        } else if k == sys::OSSL_PKEY_PARAM_RSA_PRIMES {
            if p.size_t()? != 2 {
                return Err(Error::Unsupported("multi-prime RSA keys"));
            }
        } else if k == sys::OSSL_PKEY_PARAM_RSA_E {
            ctx.exponent = p.biguint_be()?;
        } else if k == sys::OSSL_PKEY_PARAM_GROUP_NAME {
            ctx.curve = Some(
                Curve::from_group_name(p.utf8()?)
                    .ok_or(Error::Unsupported("this EC group (P-256, P-384, P-521)"))?,
            );
        }
    }
    Ok(())
}

entry! {
    /// `OSSL_FUNC_keymgmt_gen_set_params`
    fn p11fwd_keymgmt_gen_set_params(genctx: *mut c_void, params: *const OSSL_PARAM) -> c_int {
        // SAFETY: our gen ctx, not used concurrently.
        let ctx = unsafe { GenCtx::borrow_mut(genctx) }?;
        // SAFETY: the caller's END-terminated array.
        gen_set_params(ctx, unsafe { Params::from_ptr(params) })?;
        Ok(1)
    }
}

entry! {
    /// `OSSL_FUNC_keymgmt_gen_settable_params`
    fn p11fwd_keymgmt_gen_settable_params(_genctx: *mut c_void, _provctx: *mut c_void) -> *const OSSL_PARAM {
        Ok(GEN_SETTABLE.as_ptr())
    }
}

entry! {
    /// `OSSL_FUNC_keymgmt_gen`: creates the pair on the token.
    fn p11fwd_keymgmt_gen(genctx: *mut c_void, _cb: OSSL_CALLBACK, _cbarg: *mut c_void) -> *mut c_void {
        // SAFETY: our gen ctx, not used concurrently.
        let ctx = unsafe { GenCtx::borrow_mut(genctx) }?;
        let key = ctx.generate()?;
        Ok(Key::arc_into_raw(Arc::new(key)))
    }
}

entry! {
    /// `OSSL_FUNC_keymgmt_gen_cleanup`
    fn p11fwd_keymgmt_gen_cleanup(genctx: *mut c_void) {
        // SAFETY: the core hands the ctx back once.
        drop(unsafe { GenCtx::from_raw(genctx) });
        Ok(())
    }
}

/// Fills a `new` key from exported public parameters. `Ok(false)` (import refused) for private
/// keys and for selections without a public key.
fn import_public(key: &mut Key, selection: c_int, params: Params<'_>) -> Result<bool, Error> {
    if key.has_private() || key.is_on_token() {
        return Err(Error::Internal("import into a token key"));
    }
    let private_param = [sys::OSSL_PKEY_PARAM_PRIV_KEY, sys::OSSL_PKEY_PARAM_RSA_D]
        .iter()
        .any(|k| params.locate(k).is_some());
    if private_param || selection & sys::OSSL_KEYMGMT_SELECT_PUBLIC_KEY as c_int == 0 {
        tracing::debug!(
            selection,
            private_param,
            "import refused: p11fwd imports public keys only"
        );
        return Ok(false);
    }
    match key.kind {
        KeyKind::Rsa | KeyKind::RsaPss => {
            let n = params.locate(sys::OSSL_PKEY_PARAM_RSA_N);
            let e = params.locate(sys::OSSL_PKEY_PARAM_RSA_E);
            let (Some(n), Some(e)) = (n, e) else {
                return Ok(false);
            };
            key.public = PublicMaterial::Rsa {
                n: n.biguint_be()?,
                e: e.biguint_be()?,
            };
        }
        KeyKind::Ec(_) => {
            let group = params.locate(sys::OSSL_PKEY_PARAM_GROUP_NAME);
            let point = params.locate(sys::OSSL_PKEY_PARAM_PUB_KEY);
            let (Some(group), Some(point)) = (group, point) else {
                return Ok(false);
            };
            let curve = Curve::from_group_name(group.utf8()?).ok_or(Error::Unsupported(
                "this EC group (p11fwd knows P-256, P-384, P-521)",
            ))?;
            key.kind = KeyKind::Ec(curve);
            key.public = PublicMaterial::Ec(point.octets()?.to_vec());
        }
        _ => {
            let Some(point) = params.locate(sys::OSSL_PKEY_PARAM_PUB_KEY) else {
                return Ok(false);
            };
            key.public = PublicMaterial::Raw(point.octets()?.to_vec());
        }
    }
    Ok(true)
}

static GETTABLE_RSA: ParamTable = param_table![
    (sys::OSSL_PKEY_PARAM_BITS, Integer),
    (sys::OSSL_PKEY_PARAM_SECURITY_BITS, Integer),
    (sys::OSSL_PKEY_PARAM_MAX_SIZE, Integer),
    (sys::OSSL_PKEY_PARAM_DEFAULT_DIGEST, Utf8String),
    (sys::OSSL_PKEY_PARAM_RSA_N, UnsignedInteger),
    (sys::OSSL_PKEY_PARAM_RSA_E, UnsignedInteger),
];
static GETTABLE_EC: ParamTable = param_table![
    (sys::OSSL_PKEY_PARAM_BITS, Integer),
    (sys::OSSL_PKEY_PARAM_SECURITY_BITS, Integer),
    (sys::OSSL_PKEY_PARAM_MAX_SIZE, Integer),
    (sys::OSSL_PKEY_PARAM_DEFAULT_DIGEST, Utf8String),
    (sys::OSSL_PKEY_PARAM_GROUP_NAME, Utf8String),
    (sys::OSSL_PKEY_PARAM_ENCODED_PUBLIC_KEY, OctetString),
    (sys::OSSL_PKEY_PARAM_PUB_KEY, OctetString),
];
static GETTABLE_RAW: ParamTable = param_table![
    (sys::OSSL_PKEY_PARAM_BITS, Integer),
    (sys::OSSL_PKEY_PARAM_SECURITY_BITS, Integer),
    (sys::OSSL_PKEY_PARAM_MAX_SIZE, Integer),
    (sys::OSSL_PKEY_PARAM_MANDATORY_DIGEST, Utf8String),
    (sys::OSSL_PKEY_PARAM_ENCODED_PUBLIC_KEY, OctetString),
    (sys::OSSL_PKEY_PARAM_PUB_KEY, OctetString),
];
static EXPORT_RSA: ParamTable = param_table![
    (sys::OSSL_PKEY_PARAM_RSA_N, UnsignedInteger),
    (sys::OSSL_PKEY_PARAM_RSA_E, UnsignedInteger),
];
static EXPORT_EC: ParamTable = param_table![
    (sys::OSSL_PKEY_PARAM_GROUP_NAME, Utf8String),
    (sys::OSSL_PKEY_PARAM_PUB_KEY, OctetString),
];
static EXPORT_RAW: ParamTable = param_table![(sys::OSSL_PKEY_PARAM_PUB_KEY, OctetString)];

macro_rules! static_answer {
    ($name:ident($($arg:ident: $ty:ty),*) -> $ret:ty = $value:expr) => {
        entry! {
            #[doc = concat!("Static answer: `", stringify!($name), "`.")]
            fn $name($($arg: $ty),*) -> $ret {
                $(let _ = $arg;)*
                Ok($value)
            }
        }
    };
}

static_answer!(gettable_rsa(_provctx: *mut c_void) -> *const OSSL_PARAM = GETTABLE_RSA.as_ptr());
static_answer!(gettable_ec(_provctx: *mut c_void) -> *const OSSL_PARAM = GETTABLE_EC.as_ptr());
static_answer!(gettable_raw(_provctx: *mut c_void) -> *const OSSL_PARAM = GETTABLE_RAW.as_ptr());
static_answer!(export_types_rsa(_selection: c_int) -> *const OSSL_PARAM = EXPORT_RSA.as_ptr());
static_answer!(export_types_ec(_selection: c_int) -> *const OSSL_PARAM = EXPORT_EC.as_ptr());
static_answer!(export_types_raw(_selection: c_int) -> *const OSSL_PARAM = EXPORT_RAW.as_ptr());
static_answer!(query_rsa(_op: c_int) -> *const c_char = c"RSA".as_ptr());
static_answer!(query_ec(_op: c_int) -> *const c_char = if _op == sys::OSSL_OP_KEYEXCH { c"ECDH".as_ptr() } else { c"ECDSA".as_ptr() });
static_answer!(query_ed25519(_op: c_int) -> *const c_char = c"ED25519".as_ptr());
static_answer!(query_ed448(_op: c_int) -> *const c_char = c"ED448".as_ptr());
static_answer!(query_x25519(_op: c_int) -> *const c_char = c"X25519".as_ptr());
static_answer!(query_x448(_op: c_int) -> *const c_char = c"X448".as_ptr());

entry! {
    /// `OSSL_FUNC_keymgmt_free`
    fn p11fwd_keymgmt_free(keydata: *mut c_void) {
        // SAFETY: the core gives back the reference `load` handed out, once.
        drop(unsafe { Key::arc_from_raw(keydata) });
        Ok(())
    }
}

entry! {
    /// `OSSL_FUNC_keymgmt_load`: the key behind a store reference.
    fn p11fwd_keymgmt_load(reference: *const c_void, reference_sz: usize) -> *mut c_void {
        // SAFETY: the reference bytes the store handed out, valid for this call.
        let reference = unsafe { bytes(reference.cast(), reference_sz, "reference") }?;
        if let Some(e) = registry::take_error(reference) {
            return Err(e);
        }
        let key = registry::lookup(reference)
            .ok_or(Error::NoMatch("a key reference that is not (or no longer) ours".into()))?;
        Ok(Key::arc_into_raw(key))
    }
}

entry! {
    /// `OSSL_FUNC_keymgmt_has`
    fn p11fwd_keymgmt_has(keydata: *const c_void, selection: c_int) -> c_int {
        // SAFETY: our keydata, live for the call.
        let key = unsafe { Key::borrow(keydata.cast_mut()) }?;
        let private = selection & sys::OSSL_KEYMGMT_SELECT_PRIVATE_KEY as c_int != 0;
        Ok(c_int::from(!private || key.has_private()))
    }
}

entry! {
    /// `OSSL_FUNC_keymgmt_match`: the same public key (and parameters).
    fn p11fwd_keymgmt_match(keydata1: *const c_void, keydata2: *const c_void, _selection: c_int) -> c_int {
        // SAFETY: our keydata, live for the call.
        let a = unsafe { Key::borrow(keydata1.cast_mut()) }?;
        // SAFETY: as above.
        let b = unsafe { Key::borrow(keydata2.cast_mut()) }?;
        Ok(c_int::from(a.same_public(b)))
    }
}

entry! {
    /// `OSSL_FUNC_keymgmt_get_params`
    fn p11fwd_keymgmt_get_params(keydata: *mut c_void, params: *mut OSSL_PARAM) -> c_int {
        // SAFETY: our keydata, live for the call.
        let key = unsafe { Key::borrow(keydata) }?;
        // SAFETY: the caller's END-terminated request array, ours for this call.
        let mut params = unsafe { ParamsMut::from_ptr(params) };
        for mut p in params.iter_mut() {
            let k = p.key();
            if k == sys::OSSL_PKEY_PARAM_BITS {
                p.set_int(key.bits() as c_int)?;
            } else if k == sys::OSSL_PKEY_PARAM_SECURITY_BITS {
                p.set_int(key.security_bits() as c_int)?;
            } else if k == sys::OSSL_PKEY_PARAM_MAX_SIZE {
                p.set_int(key.max_size() as c_int)?;
            } else if k == sys::OSSL_PKEY_PARAM_DEFAULT_DIGEST {
                if let Some(d) = key.default_digest() {
                    p.set_static_utf8(d)?;
                }
            } else if k == sys::OSSL_PKEY_PARAM_MANDATORY_DIGEST {
                if key.default_digest().is_none() {
                    p.set_static_utf8(c"")?;
                }
            } else if k == sys::OSSL_PKEY_PARAM_RSA_N {
                if let PublicMaterial::Rsa { n, .. } = &key.public {
                    p.set_biguint(n)?;
                }
            } else if k == sys::OSSL_PKEY_PARAM_RSA_E {
                if let PublicMaterial::Rsa { e, .. } = &key.public {
                    p.set_biguint(e)?;
                }
            } else if k == sys::OSSL_PKEY_PARAM_GROUP_NAME {
                if let KeyKind::Ec(c) = key.kind {
                    p.set_static_utf8(c.group_name())?;
                }
            } else if (k == sys::OSSL_PKEY_PARAM_ENCODED_PUBLIC_KEY
                || k == sys::OSSL_PKEY_PARAM_PUB_KEY)
                && let PublicMaterial::Ec(v) | PublicMaterial::Raw(v) = &key.public
            {
                p.set_octets(v)?;
            }
        }
        Ok(1)
    }
}

entry! {
    /// `OSSL_FUNC_keymgmt_export`: public parts only.
    fn p11fwd_keymgmt_export(
        keydata: *mut c_void,
        selection: c_int,
        param_cb: OSSL_CALLBACK,
        cbarg: *mut c_void,
    ) -> c_int {
        // SAFETY: our keydata, live for the call.
        let key = unsafe { Key::borrow(keydata) }?;
        export_public(key, selection, param_cb, cbarg)
    }
}

/// Calls `cb` with the public parts of `key` that `selection` asks for. Private parts are never
/// exported: a selection of only the private key fails.
pub(crate) fn export_public(
    key: &Key,
    selection: c_int,
    cb: OSSL_CALLBACK,
    cbarg: *mut c_void,
) -> Result<c_int, Error> {
    let cb = cb.ok_or(Error::NullPointer("export callback"))?;
    // Strict, as pkcs11-provider: a private key exports only when nothing but public parts
    // and parameters are asked for. OpenSSL 3.0 exports with SELECT_ALL when it wants to move
    // a key to another provider for an operation; failing that makes it use our own
    // operation instead of a public-only copy that cannot sign.
    let public_selection =
        (sys::OSSL_KEYMGMT_SELECT_PUBLIC_KEY | sys::OSSL_KEYMGMT_SELECT_ALL_PARAMETERS) as c_int;
    if key.has_private() && selection & !public_selection != 0 {
        return Ok(0);
    }
    let public = selection & sys::OSSL_KEYMGMT_SELECT_PUBLIC_KEY as c_int != 0;
    let domain = selection & sys::OSSL_KEYMGMT_SELECT_DOMAIN_PARAMETERS as c_int != 0;
    if !public && !domain {
        return Err(Error::Unsupported("exporting private key material"));
    }
    let native = |be: &[u8]| -> Vec<u8> {
        if cfg!(target_endian = "little") {
            be.iter().rev().copied().collect()
        } else {
            be.to_vec()
        }
    };
    let rc = match (&key.public, key.kind) {
        (PublicMaterial::Rsa { n, e }, _) => {
            if !public {
                return Ok(1);
            }
            let (n, e) = (native(n), native(e));
            let params = ParamBuilder::new()
                .biguint_native(sys::OSSL_PKEY_PARAM_RSA_N, &n)
                .biguint_native(sys::OSSL_PKEY_PARAM_RSA_E, &e)
                .build();
            // SAFETY: the caller's callback and argument; the array outlives the call.
            unsafe { cb(params.as_ptr(), cbarg) }
        }
        (PublicMaterial::Ec(point), KeyKind::Ec(curve)) => {
            let mut b =
                ParamBuilder::new().utf8(sys::OSSL_PKEY_PARAM_GROUP_NAME, curve.group_name());
            if public {
                b = b.octets(sys::OSSL_PKEY_PARAM_PUB_KEY, point);
            }
            let params = b.build();
            // SAFETY: as above.
            unsafe { cb(params.as_ptr(), cbarg) }
        }
        (PublicMaterial::Raw(raw), _) | (PublicMaterial::Ec(raw), _) => {
            if !public {
                return Ok(1);
            }
            let params = ParamBuilder::new()
                .octets(sys::OSSL_PKEY_PARAM_PUB_KEY, raw)
                .build();
            // SAFETY: as above.
            unsafe { cb(params.as_ptr(), cbarg) }
        }
    };
    Ok(rc)
}
