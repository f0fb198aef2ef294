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
    /// `pkcs11-module-path` was set (and is ignored).
    pub(crate) module_path_ignored: bool,
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
        config.module_path_ignored = raw.get(keys::MODULE_PATH).is_some();
        Ok(config)
    }
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
        assert_eq!(config.server_address.as_deref(), Some("unix:path=/run/p11"));
        assert!(
            matches!(&config.token_pin, Some(PinSource::File(p)) if p == &PathBuf::from("/etc/pin"))
        );
        assert_eq!(config.login_behavior, LoginBehavior::Never);
        assert!(config.cache_pins);
        assert!(config.debug.is_some());
        assert!(config.module_path_ignored);
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
