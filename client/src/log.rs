//! Tracing for the host process: off unless asked for, installed lazily and never over a
//! subscriber the host already has.
//!
//! - `P11FWD_LOG=<filter>`: an `EnvFilter` directive, e.g. `p11fwd_client=debug,p11fwd_wire=trace`;
//! - `P11FWD_DEBUG=1` (any value but `0` or empty): `p11fwd_client=debug,p11fwd_wire=debug`.
//!
//! Output goes to stderr. PINs, data and key material are never logged, only lengths.

use std::sync::Once;

static INIT: Once = Once::new();

/// Installs the stderr subscriber if the environment asks for one (once per process).
pub(crate) fn init() {
    INIT.call_once(|| {
        let filter = match (
            std::env::var("P11FWD_LOG").ok().filter(|v| !v.is_empty()),
            std::env::var("P11FWD_DEBUG").ok(),
        ) {
            (Some(filter), _) => filter,
            (None, Some(v)) if !v.is_empty() && v != "0" => {
                "p11fwd_client=debug,p11fwd_wire=debug".to_owned()
            }
            _ => return,
        };
        let filter = tracing_subscriber::EnvFilter::try_new(&filter)
            .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("p11fwd_client=debug"));
        // `try_init` fails if the host installed its own subscriber: then we use that one.
        let _ = tracing_subscriber::fmt()
            .with_writer(std::io::stderr)
            .with_ansi(false)
            .with_env_filter(filter)
            .try_init();
    });
}
