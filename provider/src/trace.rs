//! Opt-in diagnostics: a `tracing` subscriber writing to stderr.
//!
//! Off by default. `P11FWD_DEBUG` (read at provider init) or the `p11fwd-debug` config key turns
//! it on: a boolean (`1`, `yes`, `on`, ...) means "debug for the p11fwd crates", anything else is
//! taken as a `tracing` filter (`trace`, `p11fwd_provider=trace`). The subscriber is installed
//! once, with `try_init`, so a host application that owns the global subscriber keeps it (our
//! events then go to the host's subscriber, if that copy of `tracing` is ours; usually it is not).
//! PINs and key material are never traced, only their lengths.

use std::sync::OnceLock;

use tracing::subscriber::Interest;
use tracing::{Metadata, Subscriber};
use tracing_subscriber::layer::{Context, Layer, SubscriberExt};
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::{EnvFilter, fmt};

use crate::config::parse_bool;
use crate::ffi::process;

/// The environment variable that turns tracing on.
pub(crate) const ENV: &str = "P11FWD_DEBUG";

/// The filter a plain "on" stands for.
const DEFAULT_FILTER: &str = "p11fwd_provider=debug,p11fwd_wire=debug,p11fwd_conf=debug";

/// Interprets a `P11FWD_DEBUG` or `p11fwd-debug` value: `Ok(None)` is off, `Ok(Some(filter))`
/// is on with that filter, `Err` names the problem.
pub(crate) fn directive(value: &str) -> Result<Option<String>, String> {
    let value = value.trim();
    if value.is_empty() {
        return Ok(None);
    }
    match parse_bool(value) {
        Some(true) => Ok(Some(DEFAULT_FILTER.to_owned())),
        Some(false) => Ok(None),
        None => match EnvFilter::try_new(value) {
            Ok(_) => Ok(Some(value.to_owned())),
            Err(e) => Err(format!(
                "{value:?} is neither a boolean nor a tracing filter ({e})"
            )),
        },
    }
}

/// Installs the subscriber if `P11FWD_DEBUG` asks for it.
pub(crate) fn init_from_env() {
    let Ok(value) = std::env::var(ENV) else {
        return;
    };
    match directive(&value) {
        Ok(Some(filter)) => {
            install(&filter);
        }
        Ok(None) => {}
        Err(problem) => {
            // The user wants diagnostics; give them the default ones and say why.
            install(DEFAULT_FILTER);
            tracing::warn!(env = ENV, %problem, "using the default filter");
        }
    }
}

/// Installs the stderr subscriber with `filter`, once per process. Returns whether ours is the
/// global subscriber now.
///
/// The outermost layer drops everything once the process exits (`ffi::process`): the
/// subscriber's thread-locals are gone by the time OpenSSL tears the provider down. It answers
/// per event (`Interest::sometimes`), so the check is not cached away.
pub(crate) fn install(filter: &str) -> bool {
    static INSTALLED: OnceLock<bool> = OnceLock::new();
    *INSTALLED.get_or_init(|| {
        let installed = tracing_subscriber::registry()
            .with(fmt::layer().with_writer(std::io::stderr).with_ansi(false))
            .with(EnvFilter::new(filter))
            .with(StopAtExit)
            .try_init()
            .is_ok();
        if installed {
            process::watch_exit();
        }
        installed
    })
}

/// The outermost layer: disables every span and event once the process exits.
struct StopAtExit;

impl<S: Subscriber> Layer<S> for StopAtExit {
    fn register_callsite(&self, _: &'static Metadata<'static>) -> Interest {
        // Never cache: the answer changes at exit.
        Interest::sometimes()
    }

    fn enabled(&self, _: &Metadata<'_>, _: Context<'_, S>) -> bool {
        !process::exiting()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn booleans_and_filters() {
        assert_eq!(directive("").unwrap(), None);
        assert_eq!(directive("off").unwrap(), None);
        assert_eq!(directive("1").unwrap().as_deref(), Some(DEFAULT_FILTER));
        assert_eq!(directive("trace").unwrap().as_deref(), Some("trace"));
        assert_eq!(
            directive("p11fwd_provider=trace").unwrap().as_deref(),
            Some("p11fwd_provider=trace")
        );
        assert!(directive("p11fwd_provider=loud").is_err());
    }
}
