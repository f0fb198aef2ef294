//! Where the server is and how long to wait for it, from the environment.
//!
//! - `P11FWD_SERVER_ADDRESS` (our override, same syntax as `P11_KIT_SERVER_ADDRESS`, e.g.
//!   `unix:path=/run/user/1000/p11fwd.sock`) wins over everything;
//! - otherwise the address `p11-kit-client.so` would use: `P11_KIT_SERVER_ADDRESS`, else
//!   `unix:path=$XDG_RUNTIME_DIR/p11-kit/pkcs11` (and p11-kit's fallbacks), through
//!   [`p11fwd_conf::discovery`];
//! - `P11FWD_TIMEOUT`: the deadline for connecting and for each call's reply, in seconds
//!   (`30`, `2.5`) or with a unit (`500ms`, `10s`); default 120 s (a PIN-pad login may be slow).
//!
//! Like p11-kit's `secure_getenv`, the environment is ignored in set-user-ID processes.

use std::ffi::OsString;
use std::path::PathBuf;
use std::time::Duration;

use p11fwd_conf::discovery::{self, Environment, ProcessEnvironment, ServerAddress};
use p11fwd_wire::transport::blocking::Options;

/// Our override of the server address.
pub(crate) const ADDRESS_ENV: &str = "P11FWD_SERVER_ADDRESS";
/// The per-call timeout.
pub(crate) const TIMEOUT_ENV: &str = "P11FWD_TIMEOUT";

/// How to reach the server.
#[derive(Clone, Debug)]
pub(crate) struct Config {
    /// The Unix socket.
    pub(crate) socket: PathBuf,
    /// Where the address came from, for messages.
    pub(crate) origin: String,
    /// Transport options (timeout).
    pub(crate) options: Options,
}

/// The configuration of this process.
pub(crate) fn from_process() -> Result<Config, String> {
    resolve(&ProcessEnvironment)
}

fn non_empty<E: Environment + ?Sized>(env: &E, name: &str) -> Option<OsString> {
    env.var(name).filter(|v| !v.is_empty())
}

/// The configuration for `env`.
pub(crate) fn resolve<E: Environment + ?Sized>(env: &E) -> Result<Config, String> {
    let (address, origin) = match non_empty(env, ADDRESS_ENV) {
        Some(a) => (
            ServerAddress::parse_os(&a).map_err(|e| format!("{ADDRESS_ENV}: {e}"))?,
            format!("from {ADDRESS_ENV}"),
        ),
        None => {
            let d = discovery::discover(env).map_err(|e| e.to_string())?;
            let origin = match d.origin {
                discovery::AddressOrigin::Environment => {
                    format!("from {}", discovery::SERVER_ADDRESS_ENV)
                }
                discovery::AddressOrigin::Default(source) => format!("default, from {source}"),
            };
            (d.address, origin)
        }
    };
    let socket = match address {
        ServerAddress::Unix(path) => path,
        other => {
            return Err(format!(
                "{other} ({origin}): only unix:path= addresses are supported by p11fwd-client"
            ));
        }
    };
    let mut options = Options::default();
    if let Some(t) = non_empty(env, TIMEOUT_ENV) {
        let text = t.to_string_lossy();
        options.timeout = parse_timeout(&text)
            .ok_or_else(|| format!("{TIMEOUT_ENV}={text}: expected seconds, e.g. 30 or 500ms"))?;
    }
    Ok(Config {
        socket,
        origin,
        options,
    })
}

/// `30`, `2.5`, `10s`, `500ms` → a positive duration.
fn parse_timeout(text: &str) -> Option<Duration> {
    let text = text.trim();
    let (number, scale) = if let Some(ms) = text.strip_suffix("ms") {
        (ms, 0.001)
    } else if let Some(s) = text.strip_suffix('s') {
        (s, 1.0)
    } else {
        (text, 1.0)
    };
    let secs = number.trim().parse::<f64>().ok()? * scale;
    (secs.is_finite() && secs > 0.0 && secs < 1e9).then(|| Duration::from_secs_f64(secs))
}

#[cfg(test)]
#[allow(clippy::unwrap_used)] // Tests unwrap: a panic is a test failure.
mod tests {
    use std::collections::HashMap;
    use std::path::Path;

    use super::*;

    #[derive(Default)]
    struct Env(HashMap<&'static str, &'static str>);

    impl Environment for Env {
        fn var(&self, name: &str) -> Option<OsString> {
            self.0.get(name).map(OsString::from)
        }
        fn is_dir(&self, _: &Path) -> bool {
            false
        }
        fn uid(&self) -> u32 {
            1000
        }
    }

    fn env(vars: &[(&'static str, &'static str)]) -> Env {
        Env(vars.iter().copied().collect())
    }

    #[test]
    fn override_wins_over_p11kit_address() {
        let c = resolve(&env(&[
            ("P11FWD_SERVER_ADDRESS", "unix:path=/tmp/ours%20x.sock"),
            ("P11_KIT_SERVER_ADDRESS", "unix:path=/tmp/theirs.sock"),
            ("XDG_RUNTIME_DIR", "/run/user/1000"),
        ]))
        .unwrap();
        assert_eq!(c.socket, Path::new("/tmp/ours x.sock"));
        assert_eq!(c.origin, "from P11FWD_SERVER_ADDRESS");
    }

    #[test]
    fn falls_back_to_p11kit_discovery() {
        let c = resolve(&env(&[(
            "P11_KIT_SERVER_ADDRESS",
            "unix:path=/tmp/theirs.sock",
        )]))
        .unwrap();
        assert_eq!(c.socket, Path::new("/tmp/theirs.sock"));
        let c = resolve(&env(&[("XDG_RUNTIME_DIR", "/run/user/1000")])).unwrap();
        assert_eq!(c.socket, Path::new("/run/user/1000/p11-kit/pkcs11"));
        // An empty override is ignored, as p11-kit ignores an empty P11_KIT_SERVER_ADDRESS.
        let c = resolve(&env(&[
            ("P11FWD_SERVER_ADDRESS", ""),
            ("XDG_RUNTIME_DIR", "/run/user/1000"),
        ]))
        .unwrap();
        assert_eq!(c.socket, Path::new("/run/user/1000/p11-kit/pkcs11"));
    }

    #[test]
    fn rejects_bad_addresses_clearly() {
        let e = resolve(&env(&[("P11FWD_SERVER_ADDRESS", "unix:path=relative")])).unwrap_err();
        assert!(e.starts_with("P11FWD_SERVER_ADDRESS: "), "{e}");
        let e = resolve(&env(&[("P11FWD_SERVER_ADDRESS", "vsock:cid=3;port=5")])).unwrap_err();
        assert!(e.contains("only unix:path="), "{e}");
    }

    #[test]
    fn timeouts() {
        assert_eq!(parse_timeout("30"), Some(Duration::from_secs(30)));
        assert_eq!(parse_timeout("2.5"), Some(Duration::from_millis(2500)));
        assert_eq!(parse_timeout("500ms"), Some(Duration::from_millis(500)));
        assert_eq!(parse_timeout(" 10s "), Some(Duration::from_secs(10)));
        assert_eq!(parse_timeout("0"), None);
        assert_eq!(parse_timeout("-1"), None);
        assert_eq!(parse_timeout("soon"), None);
        let c = resolve(&env(&[("XDG_RUNTIME_DIR", "/r"), ("P11FWD_TIMEOUT", "3")])).unwrap();
        assert_eq!(c.options.timeout, Duration::from_secs(3));
        assert!(resolve(&env(&[("XDG_RUNTIME_DIR", "/r"), ("P11FWD_TIMEOUT", "x")])).is_err());
    }
}
