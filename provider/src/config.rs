//! The provider's configuration: keys of its openssl.cnf section, read once in
//! `OSSL_provider_init` through the core's `core_get_params` upcall.
//!
//! ```text
//! [p11fwd_sect]
//! activate = 1
//! p11fwd-server-address = unix:path=/run/user/1000/p11-kit/pkcs11
//! pkcs11-module-token-pin = file:/etc/p11fwd/pin
//! pkcs11-module-login-behavior = auto
//! pkcs11-module-cache-pins = cache
//! pkcs11-module-block-operations = digest
//! p11fwd-debug = 1
//! ```
//!
//! Parsing is a pure function of the looked-up strings ([`Config::parse`]), so it is unit-tested
//! without OpenSSL; `ffi::core::Core::config_values` does the lookup for any list of keys.

use core::ffi::{CStr, c_int};
use std::fmt;
use std::path::PathBuf;

use zeroize::Zeroizing;

use crate::error::Error;
use crate::sys;
use crate::trace;

/// The openssl.cnf keys p11fwd reads.
pub(crate) mod keys {
    use core::ffi::CStr;

    /// Where the p11-kit RPC server listens (`unix:path=...`, as `P11_KIT_SERVER_ADDRESS`).
    pub(crate) const SERVER_ADDRESS: &CStr = c"p11fwd-server-address";
    /// The user PIN: a literal, or `file:<path>` (first line of the file). pkcs11-provider's key.
    pub(crate) const TOKEN_PIN: &CStr = c"pkcs11-module-token-pin";
    /// `auto` (default), `always` or `never`. pkcs11-provider's key.
    pub(crate) const LOGIN_BEHAVIOR: &CStr = c"pkcs11-module-login-behavior";
    /// `cache` (or a boolean) keeps PINs obtained by prompting. pkcs11-provider's key.
    pub(crate) const CACHE_PINS: &CStr = c"pkcs11-module-cache-pins";
    /// Operations (`digest signature ...`) the provider does not offer. pkcs11-provider's key.
    pub(crate) const BLOCK_OPERATIONS: &CStr = c"pkcs11-module-block-operations";
    /// A boolean or a `tracing` filter: turns on the stderr trace (like `P11FWD_DEBUG`).
    pub(crate) const DEBUG: &CStr = c"p11fwd-debug";
    /// pkcs11-provider's module path: meaningless for p11fwd, which loads no module. Read only
    /// to warn about it.
    pub(crate) const MODULE_PATH: &CStr = c"pkcs11-module-path";
    /// pkcs11-provider's keys that p11fwd does not implement, read to warn about them (or, for
    /// `allow-export = 1`, to refuse): see [`super::Config::parse`].
    pub(crate) const INIT_ARGS: &CStr = c"pkcs11-module-init-args";
    pub(crate) const ALLOW_EXPORT: &CStr = c"pkcs11-module-allow-export";
    pub(crate) const LOAD_BEHAVIOR: &CStr = c"pkcs11-module-load-behavior";
    pub(crate) const CACHE_KEYS: &CStr = c"pkcs11-module-cache-keys";
    pub(crate) const CACHE_SESSIONS: &CStr = c"pkcs11-module-cache-sessions";
    pub(crate) const QUIRKS: &CStr = c"pkcs11-module-quirks";
    pub(crate) const ASSUME_FIPS: &CStr = c"pkcs11-module-assume-fips";
    pub(crate) const ENCODE_URI_TO_PEM: &CStr = c"pkcs11-module-encode-provider-uri-to-pem";
}

/// Every key [`Config::parse`] looks at.
pub(crate) const KEYS: &[&CStr] = &[
    keys::SERVER_ADDRESS,
    keys::TOKEN_PIN,
    keys::LOGIN_BEHAVIOR,
    keys::CACHE_PINS,
    keys::BLOCK_OPERATIONS,
    keys::DEBUG,
    keys::MODULE_PATH,
    keys::INIT_ARGS,
    keys::ALLOW_EXPORT,
    keys::LOAD_BEHAVIOR,
    keys::CACHE_KEYS,
    keys::CACHE_SESSIONS,
    keys::QUIRKS,
    keys::ASSUME_FIPS,
    keys::ENCODE_URI_TO_PEM,
];

/// Values looked up in the provider's config section, in request order; absent keys are absent.
#[derive(Default)]
pub(crate) struct RawConfig {
    values: Vec<(&'static CStr, Zeroizing<String>)>,
}

impl RawConfig {
    /// Records `value` for `key`.
    pub(crate) fn insert(&mut self, key: &'static CStr, value: String) {
        self.values.push((key, Zeroizing::new(value)));
    }

    /// The value of `key`, if the section has it.
    pub(crate) fn get(&self, key: &CStr) -> Option<&str> {
        self.values
            .iter()
            .find(|(k, _)| *k == key)
            .map(|(_, v)| v.as_str())
    }

    /// The keys that have a value (for tracing: values may be PINs).
    pub(crate) fn keys(&self) -> impl Iterator<Item = &'static CStr> + '_ {
        self.values.iter().map(|(k, _)| *k)
    }
}

impl fmt::Debug for RawConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_list().entries(self.keys()).finish()
    }
}

/// The parsed configuration of one provider instance.
#[derive(Debug, Default)]
pub(crate) struct Config {
    /// `p11fwd-server-address`; `None` means discovery (`P11_KIT_SERVER_ADDRESS`, runtime dir).
    pub(crate) server_address: Option<String>,
    /// `pkcs11-module-token-pin`.
    pub(crate) token_pin: Option<PinSource>,
    /// `pkcs11-module-login-behavior`.
    pub(crate) login_behavior: LoginBehavior,
    /// `pkcs11-module-cache-pins`.
    pub(crate) cache_pins: bool,
    /// `pkcs11-module-block-operations`: OpenSSL operation ids the provider hides.
    pub(crate) blocked_operations: Vec<c_int>,
    /// `p11fwd-debug`, as a `tracing` filter; `None` when off or absent.
    pub(crate) debug: Option<String>,
    /// pkcs11-provider keys that were set and that p11fwd ignores: (key, what p11fwd does
    /// instead). Printed once per process at provider init.
    pub(crate) ignored: Vec<(&'static str, &'static str)>,
}

/// Where the user PIN comes from.
#[derive(Clone)]
pub(crate) enum PinSource {
    /// The PIN itself, from the config file. Zeroized on drop.
    Literal(Zeroizing<String>),
    /// `file:<path>`: the first line of that file, read when needed.
    File(PathBuf),
}

impl fmt::Debug for PinSource {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            // Never the PIN, only its length.
            Self::Literal(pin) => write!(f, "Literal(<{} bytes>)", pin.len()),
            Self::File(path) => f.debug_tuple("File").field(path).finish(),
        }
    }
}

/// When to log in to the token (pkcs11-provider's `pkcs11-module-login-behavior`).
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub(crate) enum LoginBehavior {
    /// Search without logging in first; log in and retry if nothing is found.
    #[default]
    Auto,
    /// Log in before every search.
    Always,
    /// Never log in (public objects only).
    Never,
}

impl Config {
    /// Parses the looked-up values. Errors name the key, never the value (it may be a PIN).
    pub(crate) fn parse(raw: &RawConfig) -> Result<Self, Error> {
        let mut config = Self::default();
        if let Some(address) = raw.get(keys::SERVER_ADDRESS) {
            let address = address.trim();
            if address.is_empty() {
                return Err(config_error(keys::SERVER_ADDRESS, "empty value"));
            }
            config.server_address = Some(address.to_owned());
        }
        if let Some(pin) = raw.get(keys::TOKEN_PIN) {
            config.token_pin = Some(match pin.strip_prefix("file:") {
                Some("") => return Err(config_error(keys::TOKEN_PIN, "empty file: path")),
                Some(path) => PinSource::File(PathBuf::from(path)),
                None if pin.is_empty() => return Err(config_error(keys::TOKEN_PIN, "empty PIN")),
                None => PinSource::Literal(Zeroizing::new(pin.to_owned())),
            });
        }
        if let Some(behavior) = raw.get(keys::LOGIN_BEHAVIOR) {
            config.login_behavior = match behavior.trim() {
                "auto" => LoginBehavior::Auto,
                "always" => LoginBehavior::Always,
                "never" => LoginBehavior::Never,
                other => {
                    return Err(config_error(
                        keys::LOGIN_BEHAVIOR,
                        &format!("{other:?} is not one of auto, always, never"),
                    ));
                }
            };
        }
        if let Some(cache) = raw.get(keys::CACHE_PINS) {
            config.cache_pins = match cache.trim() {
                "cache" => true,
                other => parse_bool(other).ok_or_else(|| {
                    config_error(
                        keys::CACHE_PINS,
                        &format!("{other:?} is not `cache` or a boolean"),
                    )
                })?,
            };
        }
        if let Some(list) = raw.get(keys::BLOCK_OPERATIONS) {
            for name in list
                .split(|c: char| c.is_ascii_whitespace() || c == ',')
                .filter(|n| !n.is_empty())
            {
                let id = OPERATIONS
                    .iter()
                    .find(|(n, _)| n.eq_ignore_ascii_case(name))
                    .map(|(_, id)| *id)
                    .ok_or_else(|| {
                        config_error(
                            keys::BLOCK_OPERATIONS,
                            &format!(
                                "{name:?} is not an operation (one of {})",
                                OPERATIONS.map(|(n, _)| n).join(", ")
                            ),
                        )
                    })?;
                if !config.blocked_operations.contains(&id) {
                    config.blocked_operations.push(id);
                }
            }
        }
        if let Some(debug) = raw.get(keys::DEBUG) {
            config.debug =
                trace::directive(debug).map_err(|problem| config_error(keys::DEBUG, &problem))?;
        }
        config.ignored = ignored_keys(raw)?;
        Ok(config)
    }
}

/// pkcs11-provider's keys p11fwd does not implement: those set to something p11fwd does not do
/// already, with what it does instead. `pkcs11-module-allow-export = 1` is refused: it asks
/// that public-key operations stay on the token, and p11fwd does them in software.
fn ignored_keys(raw: &RawConfig) -> Result<Vec<(&'static str, &'static str)>, Error> {
    let mut ignored = Vec::new();
    let mut ignore = |key: &CStr, why: &'static str| ignored.push((key_name(key), why));
    let flag = |key: &CStr| -> Result<Option<bool>, Error> {
        raw.get(key)
            .map(|v| {
                parse_bool(v)
                    .ok_or_else(|| config_error(key, &format!("{:?} is not a boolean", v.trim())))
            })
            .transpose()
    };
    if raw.get(keys::MODULE_PATH).is_some() {
        ignore(
            keys::MODULE_PATH,
            "p11fwd loads no PKCS#11 module (the server does); set p11fwd-server-address",
        );
    }
    if raw.get(keys::INIT_ARGS).is_some() {
        ignore(
            keys::INIT_ARGS,
            "the server initialises the module: give the arguments to the module where the \
             server loads it",
        );
    }
    if flag(keys::ALLOW_EXPORT)? == Some(true) {
        return Err(config_error(
            keys::ALLOW_EXPORT,
            "1 (public-key operations on the token) is not possible: p11fwd exports public \
             keys and verifies and encrypts in software; remove the key",
        ));
    }
    if raw
        .get(keys::LOAD_BEHAVIOR)
        .is_some_and(|v| v.trim() == "early")
    {
        ignore(
            keys::LOAD_BEHAVIOR,
            "p11fwd registers its algorithms when loaded and connects at the first use (it \
             offers no RAND that early loading would make available)",
        );
    }
    if raw.get(keys::CACHE_KEYS).is_some() && flag(keys::CACHE_KEYS).ok().flatten() != Some(false) {
        ignore(
            keys::CACHE_KEYS,
            "p11fwd never copies token keys into session objects; every operation uses the \
             token's object",
        );
    }
    if raw.get(keys::CACHE_SESSIONS).is_some() {
        ignore(
            keys::CACHE_SESSIONS,
            "p11fwd keeps up to 8 idle sessions per token and closes the others",
        );
    }
    if let Some(quirks) = raw.get(keys::QUIRKS) {
        // no-deinit, no-operation-state and no-session-callbacks describe what p11fwd does
        // anyway (it never finalizes the server's module, never saves operation state and has
        // no session callbacks).
        let other = quirks.split_ascii_whitespace().any(|q| {
            !matches!(
                q,
                "no-deinit" | "no-operation-state" | "no-session-callbacks"
            )
        });
        if other {
            ignore(
                keys::QUIRKS,
                "only no-deinit, no-operation-state and no-session-callbacks apply, and p11fwd \
                 behaves that way anyway; it always reads CKA_ALLOWED_MECHANISMS \
                 (no-allowed-mechanisms is ignored)",
            );
        }
    }
    if flag(keys::ASSUME_FIPS).ok().flatten() == Some(true) {
        ignore(
            keys::ASSUME_FIPS,
            "p11fwd's algorithms are not tagged fips=yes; a FIPS-only library context will \
             not use them",
        );
    }
    if flag(keys::ENCODE_URI_TO_PEM).ok().flatten() == Some(false) {
        ignore(
            keys::ENCODE_URI_TO_PEM,
            "p11fwd always writes token private keys as URI-PEM (PKCS#11 PROVIDER URI) files; \
             no key material is ever encoded",
        );
    }
    Ok(ignored)
}

/// The operation names of `pkcs11-module-block-operations` (pkcs11-provider's list) and their
/// `OSSL_OP_*` ids. `skeymgmt` (OpenSSL 3.5) is accepted; p11fwd offers none.
const OPERATIONS: [(&str, c_int); 14] = [
    ("digest", sys::OSSL_OP_DIGEST),
    ("cipher", sys::OSSL_OP_CIPHER),
    ("mac", sys::OSSL_OP_MAC),
    ("kdf", sys::OSSL_OP_KDF),
    ("rand", sys::OSSL_OP_RAND),
    ("keymgmt", sys::OSSL_OP_KEYMGMT),
    ("keyexch", sys::OSSL_OP_KEYEXCH),
    ("signature", sys::OSSL_OP_SIGNATURE),
    ("asym-cipher", sys::OSSL_OP_ASYM_CIPHER),
    ("kem", sys::OSSL_OP_KEM),
    ("encoder", sys::OSSL_OP_ENCODER),
    ("decoder", sys::OSSL_OP_DECODER),
    ("store", sys::OSSL_OP_STORE),
    ("skeymgmt", 15), // OSSL_OP_SKEYMGMT (OpenSSL 3.5)
];

impl Config {
    /// Whether `pkcs11-module-block-operations` hides `operation_id`.
    pub(crate) fn blocks(&self, operation_id: c_int) -> bool {
        self.blocked_operations.contains(&operation_id)
    }
}

/// `1/yes/true/on` and `0/no/false/off` (any case), as OpenSSL's own config booleans.
pub(crate) fn parse_bool(value: &str) -> Option<bool> {
    match value.trim().to_ascii_lowercase().as_str() {
        "1" | "yes" | "true" | "on" => Some(true),
        "0" | "no" | "false" | "off" => Some(false),
        _ => None,
    }
}

fn config_error(key: &CStr, problem: &str) -> Error {
    Error::Config {
        key: key_name(key),
        problem: problem.to_owned(),
    }
}

/// The `&'static str` form of one of our keys (for error messages).
fn key_name(key: &CStr) -> &'static str {
    KEYS.iter()
        .find(|k| **k == key)
        .and_then(|k| k.to_str().ok())
        .unwrap_or("configuration")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn raw(pairs: &[(&'static CStr, &str)]) -> RawConfig {
        let mut raw = RawConfig::default();
        for (key, value) in pairs {
            raw.insert(key, (*value).to_owned());
        }
        raw
    }

    #[test]
    fn empty_section_gives_defaults() {
        let config = Config::parse(&RawConfig::default()).unwrap();
        assert_eq!(config.server_address, None);
        assert!(config.token_pin.is_none());
        assert_eq!(config.login_behavior, LoginBehavior::Auto);
        assert!(!config.cache_pins);
        assert_eq!(config.debug, None);
    }

    #[test]
    fn parses_every_key() {
        let config = Config::parse(&raw(&[
            (keys::SERVER_ADDRESS, " unix:path=/run/p11 "),
            (keys::TOKEN_PIN, "file:/etc/pin"),
            (keys::LOGIN_BEHAVIOR, "never"),
            (keys::CACHE_PINS, "cache"),
            (keys::DEBUG, "yes"),
            (keys::MODULE_PATH, "/usr/lib/softhsm/libsofthsm2.so"),
        ]))
        .unwrap();
        assert_eq!(config.ignored.len(), 1);
        assert_eq!(config.ignored[0].0, "pkcs11-module-path");
        assert_eq!(config.server_address.as_deref(), Some("unix:path=/run/p11"));
        assert!(
            matches!(&config.token_pin, Some(PinSource::File(p)) if p == &PathBuf::from("/etc/pin"))
        );
        assert_eq!(config.login_behavior, LoginBehavior::Never);
        assert!(config.cache_pins);
        assert!(config.debug.is_some());
    }

    #[test]
    fn pkcs11_provider_keys_p11fwd_lacks_are_named_or_refused() {
        let ignored = |pairs: &[(&'static CStr, &str)]| {
            Config::parse(&raw(pairs))
                .unwrap()
                .ignored
                .iter()
                .map(|(k, _)| *k)
                .collect::<Vec<_>>()
        };
        // Values that say what p11fwd does anyway: nothing to warn about.
        assert!(
            ignored(&[
                (keys::ALLOW_EXPORT, "0"),
                (keys::LOAD_BEHAVIOR, "lazy"),
                (keys::CACHE_KEYS, "false"),
                (keys::QUIRKS, "no-deinit no-operation-state"),
                (keys::ASSUME_FIPS, "no"),
                (keys::ENCODE_URI_TO_PEM, "true"),
            ])
            .is_empty()
        );
        assert_eq!(
            ignored(&[
                (keys::INIT_ARGS, "configDir=/etc/nss"),
                (keys::LOAD_BEHAVIOR, "early"),
                (keys::CACHE_KEYS, "true"),
                (keys::CACHE_SESSIONS, "0"),
                (keys::QUIRKS, "no-deinit no-allowed-mechanisms"),
                (keys::ASSUME_FIPS, "true"),
                (keys::ENCODE_URI_TO_PEM, "false"),
            ]),
            [
                "pkcs11-module-init-args",
                "pkcs11-module-load-behavior",
                "pkcs11-module-cache-keys",
                "pkcs11-module-cache-sessions",
                "pkcs11-module-quirks",
                "pkcs11-module-assume-fips",
                "pkcs11-module-encode-provider-uri-to-pem",
            ]
        );
        for bad in ["1", "yes"] {
            let err = Config::parse(&raw(&[(keys::ALLOW_EXPORT, bad)])).unwrap_err();
            assert!(
                err.message().starts_with("pkcs11-module-allow-export: 1"),
                "{}",
                err.message()
            );
        }
        assert!(Config::parse(&raw(&[(keys::ALLOW_EXPORT, "sometimes")])).is_err());
    }

    #[test]
    fn block_operations_take_pkcs11_provider_names() {
        let config = Config::parse(&raw(&[(
            keys::BLOCK_OPERATIONS,
            " digest  Signature,store digest",
        )]))
        .unwrap();
        assert_eq!(
            config.blocked_operations,
            [
                sys::OSSL_OP_DIGEST,
                sys::OSSL_OP_SIGNATURE,
                sys::OSSL_OP_STORE
            ]
        );
        assert!(config.blocks(sys::OSSL_OP_SIGNATURE));
        assert!(!config.blocks(sys::OSSL_OP_KEYMGMT));
        assert!(
            Config::parse(&raw(&[(keys::BLOCK_OPERATIONS, "")]))
                .unwrap()
                .blocked_operations
                .is_empty()
        );
        let err = Config::parse(&raw(&[(keys::BLOCK_OPERATIONS, "digest sign")]))
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("pkcs11-module-block-operations") && err.contains("\"sign\""),
            "{err}"
        );
    }

    #[test]
    fn literal_pin_is_kept_but_never_printed() {
        let config = Config::parse(&raw(&[(keys::TOKEN_PIN, "123456")])).unwrap();
        assert!(matches!(&config.token_pin, Some(PinSource::Literal(p)) if p.as_str() == "123456"));
        let printed = format!("{config:?}");
        assert!(!printed.contains("123456"), "{printed}");
        assert!(printed.contains("6 bytes"), "{printed}");
    }

    #[test]
    fn rejects_bad_values_naming_the_key_only() {
        for (key, value) in [
            (keys::LOGIN_BEHAVIOR, "sometimes"),
            (keys::CACHE_PINS, "maybe"),
            (keys::SERVER_ADDRESS, "  "),
            (keys::TOKEN_PIN, "file:"),
            (keys::TOKEN_PIN, ""),
            (keys::DEBUG, "p11fwd_provider=loud"),
        ] {
            let err = Config::parse(&raw(&[(key, value)])).unwrap_err();
            let message = err.message();
            assert!(message.starts_with(key.to_str().unwrap()), "{message}");
            assert_eq!(err.reason(), crate::error::Reason::Config);
        }
    }

    #[test]
    fn debug_off_values_disable_tracing() {
        for value in ["0", "no", "off", "false"] {
            assert_eq!(
                Config::parse(&raw(&[(keys::DEBUG, value)])).unwrap().debug,
                None
            );
        }
    }
}
