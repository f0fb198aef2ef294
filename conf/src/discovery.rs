//! Where a client finds its server, exactly as `p11-kit-client.so` does it, and the address
//! syntax (rpc §2.1).
//!
//! Order (`client.c:get_server_address`, `runtime.c:p11_get_runtime_directory`):
//! 1. `P11_KIT_SERVER_ADDRESS`, if set and not empty;
//! 2. otherwise `unix:path=<runtime>/p11-kit/pkcs11`, where `<runtime>` is `$XDG_RUNTIME_DIR`
//!    (if set and not empty), else `/run/user/<uid>` or `/var/run/user/<uid>` if it is a
//!    directory, else `$XDG_CACHE_HOME`, else `$HOME/.cache`.
//!
//! p11-kit takes the last fallback's home directory from the password database; we use
//! `$HOME`, which needs no `getpwuid_r`. Like p11-kit's `secure_getenv`,
//! [`ProcessEnvironment`] ignores the environment in set-user-ID and set-group-ID processes.
//!
//! Addresses are `unix:path=/absolute` (percent-decoded) and `vsock:cid=N;port=M` /
//! `vsock:port=M` (numbers as C `strtoul` base 0 reads them). Everything goes through the
//! [`Environment`] trait, so discovery is a pure function in tests.

use std::ffi::{OsStr, OsString};
use std::fmt;
use std::os::unix::ffi::{OsStrExt, OsStringExt};
use std::path::{Path, PathBuf};
use std::str::FromStr;

use crate::error::Error;
use crate::percent;

/// The variable that holds the server address, for clients and in the `p11-kit server` snippet.
pub const SERVER_ADDRESS_ENV: &str = "P11_KIT_SERVER_ADDRESS";

/// The variable that holds the server's PID, used by `p11-kit server -k`.
pub const SERVER_PID_ENV: &str = "P11_KIT_SERVER_PID";

/// The socket a client connects to by default, relative to the runtime directory.
pub const DEFAULT_SOCKET: &str = "p11-kit/pkcs11";

/// A p11-kit server address.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum ServerAddress {
    /// `unix:path=…`: a Unix stream socket.
    Unix(PathBuf),
    /// `vsock:cid=N;port=M`: an `AF_VSOCK` socket. `cid: None` means `VMADDR_CID_ANY`.
    Vsock {
        /// The context id, if given.
        cid: Option<u32>,
        /// The port.
        port: u32,
    },
}

impl ServerAddress {
    /// Parses a client-side address (`P11_KIT_SERVER_ADDRESS` syntax).
    pub fn parse(address: &str) -> Result<Self, Error> {
        Self::parse_bytes(address.as_bytes())
    }

    /// [`ServerAddress::parse`] for an address that may not be UTF-8, such as an environment
    /// variable's value.
    pub fn parse_os(address: &OsStr) -> Result<Self, Error> {
        Self::parse_bytes(address.as_bytes())
    }

    fn parse_bytes(address: &[u8]) -> Result<Self, Error> {
        let invalid = |reason: &str| Error::InvalidAddress {
            address: String::from_utf8_lossy(address).into_owned(),
            reason: reason.to_owned(),
        };
        if let Some(encoded) = address.strip_prefix(b"unix:path=") {
            if !encoded.starts_with(b"/") {
                return Err(invalid("the socket path must be absolute"));
            }
            let path = percent::decode(encoded).map_err(|offset| {
                invalid(&format!(
                    "bad percent-encoding at byte {} of the path",
                    offset + "unix:path=".len()
                ))
            })?;
            if path.contains(&0) {
                return Err(invalid("the socket path contains a NUL byte"));
            }
            Ok(Self::Unix(PathBuf::from(OsString::from_vec(path))))
        } else if address.starts_with(b"unix:") {
            Err(invalid(
                "only `unix:path=/absolute/path` is supported for Unix sockets",
            ))
        } else if let Some(params) = address.strip_prefix(b"vsock:") {
            parse_vsock(params).ok_or_else(|| {
                invalid("expected `vsock:cid=N;port=M` or `vsock:port=M` with 32-bit numbers")
            })
        } else if address.starts_with(b"|") {
            Err(invalid("command addresses (`|command`) are not supported"))
        } else if address.is_empty() {
            Err(invalid("it is empty"))
        } else {
            Err(invalid(
                "expected `unix:path=/absolute/path` or `vsock:cid=N;port=M`",
            ))
        }
    }

    /// Interprets the `-n`/`--name` argument of `p11-kit server`: `vsock:…` as above,
    /// `unix:path=…` with the prefix removed but **not** percent-decoded, anything else as a
    /// socket path, which may be relative. This mirrors what `p11-kit server` does.
    pub fn from_server_name(name: &str) -> Result<Self, Error> {
        if name.starts_with("vsock:") {
            return Self::parse(name);
        }
        let path = name.strip_prefix("unix:path=").unwrap_or(name);
        if path.is_empty() {
            return Err(Error::InvalidAddress {
                address: name.to_owned(),
                reason: "the socket path is empty".to_owned(),
            });
        }
        Ok(Self::Unix(PathBuf::from(path)))
    }

    /// The socket path of a Unix address.
    pub fn unix_path(&self) -> Option<&Path> {
        match self {
            Self::Unix(path) => Some(path),
            Self::Vsock { .. } => None,
        }
    }
}

impl FromStr for ServerAddress {
    type Err = Error;

    fn from_str(address: &str) -> Result<Self, Error> {
        Self::parse(address)
    }
}

/// The address as p11-kit writes it: `unix:path=` with [`encode_path`], or
/// `vsock:cid=N;port=M` / `vsock:port=M`.
impl fmt::Display for ServerAddress {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Unix(path) => f.write_str(&format_unix_address(path)),
            Self::Vsock {
                cid: Some(cid),
                port,
            } => write!(f, "vsock:cid={cid};port={port}"),
            Self::Vsock { cid: None, port } => write!(f, "vsock:port={port}"),
        }
    }
}

/// `p11_vsock_parse_addr`: `;`-separated `cid=`/`port=` (one trailing `;` allowed), port
/// required.
fn parse_vsock(params: &[u8]) -> Option<ServerAddress> {
    let mut cid = None;
    let mut port = None;
    let params = params.strip_suffix(b";").unwrap_or(params);
    for item in params.split(|&b| b == b';') {
        if let Some(value) = item.strip_prefix(b"cid=") {
            cid = Some(parse_c_ulong(value)?);
        } else if let Some(value) = item.strip_prefix(b"port=") {
            port = Some(parse_c_ulong(value)?);
        } else {
            return None;
        }
    }
    Some(ServerAddress::Vsock { cid, port: port? })
}

/// A whole string as `strtoul(…, 0)` reads it (`0x` hex, leading-`0` octal, else decimal),
/// limited to 32 bits.
fn parse_c_ulong(text: &[u8]) -> Option<u32> {
    let (digits, radix) = if let Some(hex) = text
        .strip_prefix(b"0x")
        .or_else(|| text.strip_prefix(b"0X"))
    {
        (hex, 16)
    } else if text.len() > 1 && text.starts_with(b"0") {
        (text.get(1..)?, 8)
    } else {
        (text, 10)
    };
    if digits.is_empty() || !digits.iter().all(|&b| char::from(b).is_digit(radix)) {
        return None;
    }
    u32::from_str_radix(std::str::from_utf8(digits).ok()?, radix).ok()
}

/// `p11_path_encode`: `[A-Za-z0-9._/-]` and `\` unchanged, every other byte `%XX` (upper-case).
pub fn encode_path(path: &Path) -> String {
    percent::encode_path(path.as_os_str().as_bytes())
}

/// `unix:path=` followed by [`encode_path`], as `p11-kit server` prints and clients build it.
pub fn format_unix_address(path: &Path) -> String {
    format!("unix:path={}", encode_path(path))
}

/// What discovery reads: environment variables, whether a path is a directory, and the uid.
pub trait Environment {
    /// The value of an environment variable.
    fn var(&self, name: &str) -> Option<OsString>;
    /// Whether `path` is a directory (following symlinks, like `stat`).
    fn is_dir(&self, path: &Path) -> bool;
    /// The real user id.
    fn uid(&self) -> u32;
}

/// The environment of this process.
///
/// In a set-user-ID or set-group-ID process (real and effective ids differ), every variable reads
/// as unset, like glibc's `secure_getenv`, which p11-kit uses.
#[derive(Clone, Copy, Debug, Default)]
pub struct ProcessEnvironment;

impl Environment for ProcessEnvironment {
    fn var(&self, name: &str) -> Option<OsString> {
        let privileged = rustix::process::getuid() != rustix::process::geteuid()
            || rustix::process::getgid() != rustix::process::getegid();
        if privileged {
            None
        } else {
            std::env::var_os(name)
        }
    }

    fn is_dir(&self, path: &Path) -> bool {
        path.is_dir()
    }

    fn uid(&self) -> u32 {
        rustix::process::getuid().as_raw()
    }
}

/// Which rule produced the runtime directory.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum RuntimeDirSource {
    /// `$XDG_RUNTIME_DIR`.
    XdgRuntimeDir,
    /// `/run/user/<uid>`.
    RunUser,
    /// `/var/run/user/<uid>`.
    VarRunUser,
    /// `$XDG_CACHE_HOME`.
    XdgCacheHome,
    /// `$HOME/.cache`.
    HomeCache,
}

impl fmt::Display for RuntimeDirSource {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::XdgRuntimeDir => "$XDG_RUNTIME_DIR",
            Self::RunUser => "/run/user/<uid>",
            Self::VarRunUser => "/var/run/user/<uid>",
            Self::XdgCacheHome => "$XDG_CACHE_HOME",
            Self::HomeCache => "$HOME/.cache",
        })
    }
}

/// Where a discovered address came from.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum AddressOrigin {
    /// `P11_KIT_SERVER_ADDRESS`.
    Environment,
    /// The default socket in the runtime directory found by this rule.
    Default(RuntimeDirSource),
}

/// The result of [`discover`]: the address, and where it came from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Discovered {
    /// The address to connect to.
    pub address: ServerAddress,
    /// Where it came from.
    pub origin: AddressOrigin,
}

/// For messages such as `no server at {discovered}`: the socket path (or the address), then
/// `(from P11_KIT_SERVER_ADDRESS)` or `(default; set P11_KIT_SERVER_ADDRESS)`.
impl fmt::Display for Discovered {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.address {
            ServerAddress::Unix(path) => write!(f, "{}", path.display())?,
            other => write!(f, "{other}")?,
        }
        match self.origin {
            AddressOrigin::Environment => write!(f, " (from {SERVER_ADDRESS_ENV})"),
            AddressOrigin::Default(_) => write!(f, " (default; set {SERVER_ADDRESS_ENV})"),
        }
    }
}

/// A variable's value if it is set and not empty.
fn non_empty<E: Environment + ?Sized>(env: &E, name: &str) -> Option<OsString> {
    env.var(name).filter(|v| !v.is_empty())
}

/// The runtime directory, by p11-kit's rules (module docs), and the rule that produced it.
pub fn runtime_dir<E: Environment + ?Sized>(env: &E) -> Result<(PathBuf, RuntimeDirSource), Error> {
    if let Some(dir) = non_empty(env, "XDG_RUNTIME_DIR") {
        return Ok((dir.into(), RuntimeDirSource::XdgRuntimeDir));
    }
    let uid = env.uid();
    for (base, source) in [
        ("/run", RuntimeDirSource::RunUser),
        ("/var/run", RuntimeDirSource::VarRunUser),
    ] {
        let dir = PathBuf::from(format!("{base}/user/{uid}"));
        if env.is_dir(&dir) {
            return Ok((dir, source));
        }
    }
    if let Some(dir) = non_empty(env, "XDG_CACHE_HOME") {
        return Ok((dir.into(), RuntimeDirSource::XdgCacheHome));
    }
    match non_empty(env, "HOME").map(PathBuf::from) {
        Some(home) if home.is_absolute() => Ok((home.join(".cache"), RuntimeDirSource::HomeCache)),
        _ => Err(Error::NoRuntimeDir {
            reason: format!(
                "XDG_RUNTIME_DIR is not set, neither /run/user/{uid} nor /var/run/user/{uid} is a \
                 directory, and neither XDG_CACHE_HOME nor an absolute HOME is set"
            ),
        }),
    }
}

/// Finds the server address as `p11-kit-client.so` does (module docs).
pub fn discover<E: Environment + ?Sized>(env: &E) -> Result<Discovered, Error> {
    if let Some(address) = non_empty(env, SERVER_ADDRESS_ENV) {
        return Ok(Discovered {
            address: ServerAddress::parse_os(&address)?,
            origin: AddressOrigin::Environment,
        });
    }
    let (dir, source) = runtime_dir(env)?;
    let path = dir.join(DEFAULT_SOCKET);
    if !path.is_absolute() {
        return Err(Error::InvalidAddress {
            address: format_unix_address(&path),
            reason: format!("the socket path must be absolute; {source} is a relative path"),
        });
    }
    Ok(Discovered {
        address: ServerAddress::Unix(path),
        origin: AddressOrigin::Default(source),
    })
}

/// [`discover`] with this process's environment.
pub fn discover_from_process() -> Result<Discovered, Error> {
    discover(&ProcessEnvironment)
}

/// The socket `p11-kit server` creates when no `-n` is given:
/// `$XDG_RUNTIME_DIR/p11-kit/pkcs11-<pid>`. Unlike clients, the server requires
/// `XDG_RUNTIME_DIR`. The caller creates the `p11-kit` directory (mode 0700).
pub fn default_server_socket<E: Environment + ?Sized>(env: &E, pid: u32) -> Result<PathBuf, Error> {
    let dir = non_empty(env, "XDG_RUNTIME_DIR").ok_or_else(|| Error::NoRuntimeDir {
        reason: "XDG_RUNTIME_DIR is not set (give the socket path with -n)".to_owned(),
    })?;
    Ok(PathBuf::from(dir)
        .join("p11-kit")
        .join(format!("pkcs11-{pid}")))
}

#[cfg(test)]
#[allow(clippy::unwrap_used)] // Tests unwrap: a panic is a test failure.
mod tests {
    use std::collections::HashMap;

    use super::*;

    #[derive(Default)]
    struct FakeEnv {
        vars: HashMap<&'static str, OsString>,
        dirs: Vec<PathBuf>,
        uid: u32,
    }

    impl FakeEnv {
        fn with(mut self, name: &'static str, value: impl Into<OsString>) -> Self {
            self.vars.insert(name, value.into());
            self
        }
        fn dir(mut self, dir: &str) -> Self {
            self.dirs.push(dir.into());
            self
        }
    }

    impl Environment for FakeEnv {
        fn var(&self, name: &str) -> Option<OsString> {
            self.vars.get(name).cloned()
        }
        fn is_dir(&self, path: &Path) -> bool {
            self.dirs.iter().any(|d| d == path)
        }
        fn uid(&self) -> u32 {
            self.uid
        }
    }

    fn unix(path: &str) -> ServerAddress {
        ServerAddress::Unix(path.into())
    }

    fn env() -> FakeEnv {
        FakeEnv {
            uid: 1000,
            ..FakeEnv::default()
        }
    }

    #[test]
    fn env_var_wins() {
        let e = env()
            .with(SERVER_ADDRESS_ENV, "unix:path=/tmp/a%20b")
            .with("XDG_RUNTIME_DIR", "/run/user/1000");
        let found = discover(&e).unwrap();
        assert_eq!(found.address, unix("/tmp/a b"));
        assert_eq!(found.origin, AddressOrigin::Environment);
        assert_eq!(found.to_string(), "/tmp/a b (from P11_KIT_SERVER_ADDRESS)");
    }

    #[test]
    fn empty_env_var_is_ignored() {
        let e = env()
            .with(SERVER_ADDRESS_ENV, "")
            .with("XDG_RUNTIME_DIR", "/xdg");
        let found = discover(&e).unwrap();
        assert_eq!(found.address, unix("/xdg/p11-kit/pkcs11"));
        assert_eq!(
            found.origin,
            AddressOrigin::Default(RuntimeDirSource::XdgRuntimeDir)
        );
        assert_eq!(
            found.to_string(),
            "/xdg/p11-kit/pkcs11 (default; set P11_KIT_SERVER_ADDRESS)"
        );
    }

    #[test]
    fn bad_env_address_is_an_error() {
        let e = env().with(SERVER_ADDRESS_ENV, "tcp:localhost:1234");
        let err = discover(&e).unwrap_err();
        assert!(err.to_string().contains("tcp:localhost:1234"), "{err}");
    }

    #[test]
    fn runtime_dir_fallback_order() {
        let e = env()
            .dir("/run/user/1000")
            .dir("/var/run/user/1000")
            .with("XDG_CACHE_HOME", "/c");
        assert_eq!(
            runtime_dir(&e).unwrap(),
            ("/run/user/1000".into(), RuntimeDirSource::RunUser)
        );
        let e = env().dir("/var/run/user/1000").with("XDG_CACHE_HOME", "/c");
        assert_eq!(
            runtime_dir(&e).unwrap(),
            ("/var/run/user/1000".into(), RuntimeDirSource::VarRunUser)
        );
        let e = env()
            .dir("/run/user/1001")
            .with("XDG_CACHE_HOME", "/c")
            .with("HOME", "/h");
        assert_eq!(
            runtime_dir(&e).unwrap(),
            ("/c".into(), RuntimeDirSource::XdgCacheHome)
        );
        let e = env().with("XDG_CACHE_HOME", "").with("HOME", "/h");
        assert_eq!(
            runtime_dir(&e).unwrap(),
            ("/h/.cache".into(), RuntimeDirSource::HomeCache)
        );
        let e = env().with("XDG_RUNTIME_DIR", "").dir("/run/user/1000");
        assert_eq!(runtime_dir(&e).unwrap().1, RuntimeDirSource::RunUser);
        assert!(matches!(
            runtime_dir(&env()),
            Err(Error::NoRuntimeDir { .. })
        ));
        assert!(matches!(
            runtime_dir(&env().with("HOME", "rel")),
            Err(Error::NoRuntimeDir { .. })
        ));
    }

    #[test]
    fn default_address_describes_itself() {
        let found = discover(&env().dir("/run/user/1000")).unwrap();
        assert_eq!(
            found.address.to_string(),
            "unix:path=/run/user/1000/p11-kit/pkcs11"
        );
        assert_eq!(
            found.to_string(),
            "/run/user/1000/p11-kit/pkcs11 (default; set P11_KIT_SERVER_ADDRESS)"
        );
        let relative = env().with("XDG_RUNTIME_DIR", "relative");
        assert!(matches!(
            discover(&relative),
            Err(Error::InvalidAddress { .. })
        ));
    }

    #[test]
    fn non_utf8_runtime_dir_is_kept() {
        use std::os::unix::ffi::OsStringExt;
        let dir = OsString::from_vec(b"/tmp/\xff".to_vec());
        let found = discover(&env().with("XDG_RUNTIME_DIR", dir)).unwrap();
        assert_eq!(
            found.address.to_string(),
            "unix:path=/tmp/%FF/p11-kit/pkcs11"
        );
        assert_eq!(
            ServerAddress::parse(&found.address.to_string()).unwrap(),
            found.address
        );
    }

    #[test]
    fn parses_unix_addresses() {
        assert_eq!(
            ServerAddress::parse("unix:path=/a/b").unwrap(),
            unix("/a/b")
        );
        assert_eq!(
            ServerAddress::parse("unix:path=/a%2Bb%25").unwrap(),
            unix("/a+b%")
        );
        for bad in [
            "unix:path=relative",
            "unix:path=",
            "unix:path=/a%2",
            "unix:path=/a%00b",
            "unix:abstract=x",
            "",
            "/run/user/1000/p11-kit/pkcs11",
            "|p11-kit remote /x.so",
            "tcp:host=x",
        ] {
            assert!(
                matches!(ServerAddress::parse(bad), Err(Error::InvalidAddress { .. })),
                "{bad}"
            );
        }
    }

    #[test]
    fn parses_vsock_addresses() {
        let vsock = |cid, port| ServerAddress::Vsock { cid, port };
        assert_eq!(
            ServerAddress::parse("vsock:cid=3;port=5000").unwrap(),
            vsock(Some(3), 5000)
        );
        assert_eq!(
            ServerAddress::parse("vsock:port=5000;cid=3").unwrap(),
            vsock(Some(3), 5000)
        );
        assert_eq!(
            ServerAddress::parse("vsock:port=5000").unwrap(),
            vsock(None, 5000)
        );
        assert_eq!(
            ServerAddress::parse("vsock:port=0x10").unwrap(),
            vsock(None, 16)
        );
        assert_eq!(
            ServerAddress::parse("vsock:port=010").unwrap(),
            vsock(None, 8)
        );
        assert_eq!(
            ServerAddress::parse("vsock:port=0").unwrap(),
            vsock(None, 0)
        );
        assert_eq!(
            ServerAddress::parse("vsock:port=7;").unwrap(),
            vsock(None, 7)
        );
        assert_eq!(
            ServerAddress::parse("vsock:cid=4294967295;port=1").unwrap(),
            vsock(Some(u32::MAX), 1)
        );
        for bad in [
            "vsock:",
            "vsock:cid=3",
            "vsock:port=",
            "vsock:port=x",
            "vsock:port=4294967296",
            "vsock:;",
            "vsock:port=1;;",
            "vsock:;port=1",
            "vsock:port=09",
            "vsock:port=0x",
            "vsock:port=1;foo=2",
            "vsock:port=+1",
        ] {
            assert!(
                matches!(ServerAddress::parse(bad), Err(Error::InvalidAddress { .. })),
                "{bad}"
            );
        }
        assert_eq!(vsock(Some(3), 5).to_string(), "vsock:cid=3;port=5");
        assert_eq!(vsock(None, 5).to_string(), "vsock:port=5");
        assert_eq!(vsock(None, 5).unix_path(), None);
    }

    #[test]
    fn server_name_is_not_decoded() {
        assert_eq!(
            ServerAddress::from_server_name("/a/x%20y").unwrap(),
            unix("/a/x%20y")
        );
        assert_eq!(
            ServerAddress::from_server_name("unix:path=/a/x%20y").unwrap(),
            unix("/a/x%20y")
        );
        assert_eq!(
            ServerAddress::from_server_name("rel/sock").unwrap(),
            unix("rel/sock")
        );
        assert_eq!(
            ServerAddress::from_server_name("vsock:port=1").unwrap(),
            ServerAddress::Vsock { cid: None, port: 1 }
        );
        assert!(ServerAddress::from_server_name("").is_err());
        assert!(ServerAddress::from_server_name("unix:path=").is_err());
        // What p11-kit server printed for `-n unix:path=$D/x%20y` (double encoding).
        let addr = ServerAddress::from_server_name("unix:path=/tmp/d/x%20y").unwrap();
        assert_eq!(addr.to_string(), "unix:path=/tmp/d/x%2520y");
    }

    #[test]
    fn formats_like_p11_path_encode() {
        assert_eq!(
            format_unix_address(Path::new("/tmp/tmp.I5QY3Tnwy2/a b+c%/p11-kit/pkcs11-5562")),
            "unix:path=/tmp/tmp.I5QY3Tnwy2/a%20b%2Bc%25/p11-kit/pkcs11-5562"
        );
        assert_eq!(encode_path(Path::new("/a\\b~c")), "/a\\b%7Ec");
    }

    #[test]
    fn default_server_socket_needs_xdg_runtime_dir() {
        let e = env().with("XDG_RUNTIME_DIR", "/run/user/1000");
        assert_eq!(
            default_server_socket(&e, 123).unwrap(),
            PathBuf::from("/run/user/1000/p11-kit/pkcs11-123")
        );
        assert!(default_server_socket(&env().dir("/run/user/1000"), 1).is_err());
    }

    #[test]
    fn process_environment_answers() {
        let e = ProcessEnvironment;
        assert!(e.is_dir(Path::new("/")));
        assert_eq!(e.uid(), rustix::process::getuid().as_raw());
        // Whatever the environment, discovery never panics.
        let _ = discover_from_process();
    }
}
