//! The provider itself: its identity, the per-instance state OpenSSL holds as `provctx`, and the
//! provider-level parameters. Safe code; the C shims are in `ffi::provider`.

use core::ffi::CStr;

use crate::backend::Backend;
use crate::config::{self, Config};
use crate::error::Error;
use crate::ffi::boundary::const_cstr;
use crate::ffi::cast::{Castable, OwnershipArc};
use crate::ffi::core::{Core, CoreCtx};
use crate::ffi::params::{ParamTable, ParamsMut, param_table};
use crate::sys::{
    OSSL_PROV_PARAM_BUILDINFO, OSSL_PROV_PARAM_CORE_MODULE_FILENAME,
    OSSL_PROV_PARAM_CORE_PROV_NAME, OSSL_PROV_PARAM_CORE_VERSION, OSSL_PROV_PARAM_NAME,
    OSSL_PROV_PARAM_STATUS, OSSL_PROV_PARAM_VERSION,
};
use crate::trace;

/// `OSSL_PROV_PARAM_NAME`.
pub(crate) const NAME: &CStr = c"p11fwd";

/// `OSSL_PROV_PARAM_VERSION`: the crate version.
pub(crate) const VERSION: &CStr = const_cstr!(env!("CARGO_PKG_VERSION"));

/// `OSSL_PROV_PARAM_BUILDINFO`: our version and the OpenSSL we were built against (build.rs).
pub(crate) const BUILDINFO: &CStr = const_cstr!(concat!(
    "p11fwd ",
    env!("CARGO_PKG_VERSION"),
    ", built with OpenSSL ",
    env!("P11FWD_OPENSSL_BUILD_VERSION")
));

/// The property definition of every algorithm we register. `-propquery provider=p11fwd` (or
/// `?provider=p11fwd`) selects our implementations. OpenSSL 3.0 does not derive `provider=` from
/// the config section name, so this is fixed whatever name the provider is loaded under.
pub(crate) const PROPERTIES: &CStr = c"provider=p11fwd";

/// What `gettable_params` announces; [`ProvCtx::get_params`] answers exactly these.
pub(crate) static GETTABLE_PARAMS: ParamTable = param_table![
    (OSSL_PROV_PARAM_NAME, Utf8Ptr),
    (OSSL_PROV_PARAM_VERSION, Utf8Ptr),
    (OSSL_PROV_PARAM_BUILDINFO, Utf8Ptr),
    (OSSL_PROV_PARAM_STATUS, Integer),
];

/// Says on stderr, once per process and key, that an openssl.cnf key of pkcs11-provider is
/// ignored and what p11fwd does instead (a process may load the provider many times).
fn warn_once(key: &'static str, instead: &str) {
    static WARNED: std::sync::Mutex<Vec<&'static str>> = std::sync::Mutex::new(Vec::new());
    let mut warned = WARNED
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    if !warned.contains(&key) {
        warned.push(key);
        tracing::warn!(key, instead, "openssl.cnf key ignored");
        eprintln!("p11fwd: warning: openssl.cnf key {key} is ignored: {instead}");
    }
}

/// One provider instance (one per library context that loads p11fwd): the `provctx`.
/// Shared (`Arc`) so that keys and operation contexts can keep it alive.
#[derive(Debug)]
pub(crate) struct ProvCtx {
    core: Core,
    config: Config,
    backend: Backend,
}

impl Castable for ProvCtx {
    type Ownership = OwnershipArc;
    const WHAT: &'static str = "provctx";
}

impl ProvCtx {
    /// Reads this instance's configuration through the core and builds the provctx.
    pub(crate) fn new(core: Core) -> Result<Self, Error> {
        let core_keys = [
            OSSL_PROV_PARAM_CORE_PROV_NAME,
            OSSL_PROV_PARAM_CORE_MODULE_FILENAME,
            OSSL_PROV_PARAM_CORE_VERSION,
        ];
        let keys: Vec<&'static CStr> = core_keys.iter().chain(config::KEYS).copied().collect();
        let raw = core.string_params(&keys)?;
        let config = Config::parse(&raw)?;
        if let Some(filter) = &config.debug {
            trace::install(filter);
        }
        tracing::debug!(
            loaded_as = raw.get(OSSL_PROV_PARAM_CORE_PROV_NAME),
            module = raw.get(OSSL_PROV_PARAM_CORE_MODULE_FILENAME),
            openssl = raw.get(OSSL_PROV_PARAM_CORE_VERSION),
            libctx = ?core.libctx(),
            config_keys = ?raw,
            ?config,
            "p11fwd provider initialised"
        );
        for (key, instead) in &config.ignored {
            warn_once(key, instead);
        }
        let backend = Backend::new(&config);
        Ok(Self {
            core,
            config,
            backend,
        })
    }

    /// The core handle and upcalls of this instance.
    pub(crate) fn core(&self) -> &Core {
        &self.core
    }

    /// The library context this instance was loaded into.
    pub(crate) fn core_ctx(&self) -> CoreCtx {
        self.core.libctx()
    }

    /// The connection state of this instance.
    pub(crate) fn backend(&self) -> &Backend {
        &self.backend
    }

    /// The configuration of this instance.
    pub(crate) fn config(&self) -> &Config {
        &self.config
    }

    /// `OSSL_FUNC_provider_get_params`: fills the requested entries of [`GETTABLE_PARAMS`];
    /// other keys are left unmodified, as OpenSSL expects.
    pub(crate) fn get_params(&self, params: &mut ParamsMut<'_>) -> Result<(), Error> {
        for mut param in params.iter_mut() {
            let key = param.key();
            if key == OSSL_PROV_PARAM_NAME {
                param.set_static_utf8(NAME)?;
            } else if key == OSSL_PROV_PARAM_VERSION {
                param.set_static_utf8(VERSION)?;
            } else if key == OSSL_PROV_PARAM_BUILDINFO {
                param.set_static_utf8(BUILDINFO)?;
            } else if key == OSSL_PROV_PARAM_STATUS {
                // Always usable: a server that is down is reported per operation.
                param.set_int(1)?;
            }
        }
        Ok(())
    }
}
