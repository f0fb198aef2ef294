//! `p11fwd server` (the forwarder built by this workspace) serving a [`TestToken`], the
//! [`Server`] trait it shares with [`StockServer`], and [`AnyServer`] / [`servers`] for tests
//! that run one body against both.

use std::ffi::{OsStr, OsString};
use std::fmt;
use std::fs::File;
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use tempfile::TempDir;

use crate::run::describe;
use crate::{P11Env, StockServer, TestToken, artifacts, percent_encode};

/// How long [`ForwarderServer`] waits for the socket.
const START_TIMEOUT: Duration = Duration::from_secs(10);

/// The log filter a [`ForwarderServer`] gets unless the test says otherwise: `info` plus the
/// per-call trace, so a failing test's `log()` shows every forwarded call (never values).
pub const DEFAULT_FORWARDER_LOG: &str = "info,p11fwd::call=debug";

/// A running `p11fwd server -f --provider <softhsm> -n <dir>/fwd.sock [extra...] <uri>...`,
/// SIGTERMed (then SIGKILLed) on drop.
///
/// ```no_run
/// use p11fwd_tests::{ForwarderServer, P11KIT_CLIENT_MODULE, TestToken};
///
/// let token = TestToken::full();
/// let server = ForwarderServer::start(&token);
/// let env = server.p11env();
/// env.run_ok(env.command("pkcs11-tool").args(["--module", P11KIT_CLIENT_MODULE, "-L"]));
///
/// // Extra flags, several URIs, another binary:
/// let server = ForwarderServer::builder(&token)
///     .uri(format!("{}?write-protected=yes", token.uri()))
///     .arg("-v")
///     .log_filter(None)
///     .start();
/// println!("{}", server.log());
/// ```
#[derive(Debug)]
pub struct ForwarderServer {
    child: Child,
    dir: TempDir,
    socket: PathBuf,
    command: String,
}

/// Builds a [`ForwarderServer`]: [`ForwarderServer::builder`].
#[derive(Debug, Clone)]
pub struct ForwarderServerBuilder {
    bin: Option<PathBuf>,
    provider: PathBuf,
    uris: Vec<String>,
    args: Vec<OsString>,
    env: Vec<(OsString, OsString)>,
    log_filter: Option<String>,
    wait: bool,
    default_uri: String,
}

impl ForwarderServerBuilder {
    /// Adds a URI to serve (the default, when none is added, is `token.uri()`).
    pub fn uri(mut self, uri: impl Into<String>) -> Self {
        self.uris.push(uri.into());
        self
    }

    /// Adds several URIs.
    pub fn uris<I, S>(mut self, uris: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        self.uris.extend(uris.into_iter().map(Into::into));
        self
    }

    /// Adds an argument before the URIs (`-v`, `-t`, `5`, `-u`, ...).
    pub fn arg(mut self, arg: impl AsRef<OsStr>) -> Self {
        self.args.push(arg.as_ref().to_owned());
        self
    }

    /// Adds several arguments before the URIs.
    pub fn args<I, S>(mut self, args: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: AsRef<OsStr>,
    {
        self.args
            .extend(args.into_iter().map(|a| a.as_ref().to_owned()));
        self
    }

    /// Sets an environment variable of the server (on top of the token's).
    pub fn env(mut self, key: impl AsRef<OsStr>, value: impl AsRef<OsStr>) -> Self {
        self.env
            .push((key.as_ref().to_owned(), value.as_ref().to_owned()));
        self
    }

    /// The `P11FWD_LOG` filter ([`DEFAULT_FORWARDER_LOG`] by default); `None` leaves
    /// `P11FWD_LOG` unset, so the command line (`-v`, `-q`) decides.
    pub fn log_filter(mut self, filter: Option<&str>) -> Self {
        self.log_filter = filter.map(str::to_owned);
        self
    }

    /// The `--provider` module (default: the token's SoftHSM module); an empty path leaves
    /// `--provider` out, so the server loads p11-kit's registered modules.
    pub fn provider(mut self, module: impl AsRef<Path>) -> Self {
        self.provider = module.as_ref().to_owned();
        self
    }

    /// The `p11fwd` binary (default: [`artifacts::forwarder_bin`]). Tests in the forwarder
    /// package pass `env!("CARGO_BIN_EXE_p11fwd")`, which cargo guarantees is fresh.
    pub fn binary(mut self, bin: impl AsRef<Path>) -> Self {
        self.bin = Some(bin.as_ref().to_owned());
        self
    }

    /// Do not wait for the socket (for a server expected to fail or to bind late); see
    /// [`ForwarderServer::wait_exit`].
    pub fn no_wait(mut self) -> Self {
        self.wait = false;
        self
    }

    /// Starts the server and waits (≤ 10 s) until it has printed its snippet (after which it
    /// handles SIGTERM/SIGINT) and its socket accepts connections.
    ///
    /// # Panics
    /// If the binary has not been built, or the server exits or is not up in time (with its log).
    #[track_caller]
    pub fn start(self) -> ForwarderServer {
        let bin = self.bin.unwrap_or_else(artifacts::forwarder_bin);
        let dir = tempfile::Builder::new()
            .prefix("p11fwd-fwd.")
            .tempdir()
            .expect("temp dir");
        let socket = dir.path().join("fwd.sock");
        let mut cmd = Command::new(bin);
        cmd.env_remove("P11FWD_LOG").env_remove("RUST_LOG");
        if let Some(filter) = &self.log_filter {
            cmd.env("P11FWD_LOG", filter);
        }
        cmd.envs(self.env.iter().map(|(k, v)| (k, v)))
            .arg("server")
            .arg("-f");
        if !self.provider.as_os_str().is_empty() {
            cmd.arg("--provider").arg(&self.provider);
        }
        cmd.arg("-n").arg(&socket).args(&self.args);
        if self.uris.is_empty() {
            cmd.arg(&self.default_uri);
        } else {
            cmd.args(&self.uris);
        }
        cmd.stdin(Stdio::null())
            .stdout(File::create(dir.path().join("fwd.out")).expect("create fwd.out"))
            .stderr(File::create(dir.path().join("fwd.log")).expect("create fwd.log"));
        let command = describe(&cmd);
        let child = cmd
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start `{command}`: {e}"));
        let mut server = ForwarderServer {
            child,
            dir,
            socket,
            command,
        };
        if self.wait {
            server.wait_ready();
        }
        server
    }
}

impl ForwarderServer {
    /// A builder serving `token` (its env, its module); add URIs, flags and env, then `start()`.
    pub fn builder(token: &TestToken) -> ForwarderServerBuilder {
        ForwarderServerBuilder {
            bin: None,
            provider: token.module_path().to_owned(),
            uris: Vec::new(),
            args: Vec::new(),
            env: token
                .env()
                .iter()
                .map(|(k, v)| (OsString::from(k), v.as_os_str().to_owned()))
                .collect(),
            log_filter: Some(DEFAULT_FORWARDER_LOG.to_owned()),
            wait: true,
            default_uri: token.uri(),
        }
    }

    /// Starts `p11fwd server` serving `token.uri()`.
    #[track_caller]
    pub fn start(token: &TestToken) -> Self {
        Self::builder(token).start()
    }

    /// Starts `p11fwd server` serving `uri` (for instance `pkcs11:token=p11fwd-test?write-protected=yes`).
    #[track_caller]
    pub fn start_uri(token: &TestToken, uri: &str) -> Self {
        Self::builder(token).uri(uri).start()
    }

    /// Starts `p11fwd server` with extra arguments (before the URIs) serving `uris`
    /// (`token.uri()` when empty).
    #[track_caller]
    pub fn start_with(token: &TestToken, uris: &[&str], extra: &[&str]) -> Self {
        Self::builder(token)
            .uris(uris.iter().copied())
            .args(extra)
            .start()
    }

    #[track_caller]
    fn wait_ready(&mut self) {
        let deadline = Instant::now() + START_TIMEOUT;
        loop {
            if let Ok(Some(status)) = self.child.try_wait() {
                panic!(
                    "`{}` exited with {status} before its socket was up:\n{}",
                    self.command,
                    self.log()
                );
            }
            // Ready = the snippet is out (p11fwd prints it once its signal handlers are in
            // place, so a SIGTERM from then on removes the socket) and the socket accepts.
            if self.stdout().contains("P11_KIT_SERVER_PID")
                && UnixStream::connect(&self.socket).is_ok()
            {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "`{}`: socket not up after {START_TIMEOUT:?}:\n{}",
                self.command,
                self.log()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// `unix:path=<socket>` (percent-encoded as p11-kit does).
    pub fn address(&self) -> String {
        format!(
            "unix:path={}",
            percent_encode(&self.socket.to_string_lossy())
        )
    }

    /// The socket path.
    pub fn socket_path(&self) -> &Path {
        &self.socket
    }

    /// An environment for clients of this server.
    pub fn p11env(&self) -> P11Env {
        P11Env::new(self.address())
    }

    /// The server's process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// The command line the server was started with (env vars first).
    pub fn command_line(&self) -> &str {
        &self.command
    }

    /// The server's temp dir (holds the socket, `fwd.out` and `fwd.log`).
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// What the server wrote so far: stdout (the snippet) and stderr (the log).
    pub fn log(&self) -> String {
        format!(
            "--- stdout ---\n{}--- stderr ---\n{}",
            self.stdout(),
            self.stderr()
        )
    }

    /// The server's stdout so far (the `P11_KIT_SERVER_ADDRESS=...` snippet).
    pub fn stdout(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("fwd.out")).unwrap_or_default()
    }

    /// The server's stderr so far (its log).
    pub fn stderr(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("fwd.log")).unwrap_or_default()
    }

    /// Whether the server is still running.
    pub fn alive(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }

    /// Waits up to `timeout` for the server to exit; its exit status, or `None` if it still runs.
    pub fn wait_exit(&mut self, timeout: Duration) -> Option<std::process::ExitStatus> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Ok(Some(status)) = self.child.try_wait() {
                return Some(status);
            }
            if Instant::now() >= deadline {
                return None;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// Sends `signal` to the server.
    pub fn signal(&self, signal: rustix::process::Signal) {
        if let Some(pid) = rustix::process::Pid::from_raw(self.child.id() as i32) {
            let _ = rustix::process::kill_process(pid, signal);
        }
    }
}

impl Drop for ForwarderServer {
    fn drop(&mut self) {
        self.signal(rustix::process::Signal::TERM);
        let deadline = Instant::now() + Duration::from_secs(3);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Which server implementation a [`Server`] is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ServerKind {
    /// The stock `p11-kit server` ([`StockServer`]).
    Stock,
    /// `p11fwd server` ([`ForwarderServer`]).
    Forwarder,
}

impl fmt::Display for ServerKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Stock => "p11-kit server",
            Self::Forwarder => "p11fwd server",
        })
    }
}

/// What tests need from an RPC server serving a [`TestToken`], whichever implementation it is.
pub trait Server: fmt::Debug {
    /// Which implementation this is.
    fn kind(&self) -> ServerKind;
    /// `unix:path=<socket>` (percent-encoded as p11-kit does).
    fn address(&self) -> String;
    /// The socket path.
    fn socket_path(&self) -> &Path;
    /// An environment for clients of this server.
    fn p11env(&self) -> P11Env;
    /// The server's process id.
    fn pid(&self) -> u32;
    /// What the server wrote so far.
    fn log(&self) -> String;
}

impl Server for StockServer {
    fn kind(&self) -> ServerKind {
        ServerKind::Stock
    }
    fn address(&self) -> String {
        Self::address(self)
    }
    fn socket_path(&self) -> &Path {
        Self::socket_path(self)
    }
    fn p11env(&self) -> P11Env {
        Self::p11env(self)
    }
    fn pid(&self) -> u32 {
        Self::pid(self)
    }
    fn log(&self) -> String {
        Self::log(self)
    }
}

impl Server for ForwarderServer {
    fn kind(&self) -> ServerKind {
        ServerKind::Forwarder
    }
    fn address(&self) -> String {
        Self::address(self)
    }
    fn socket_path(&self) -> &Path {
        Self::socket_path(self)
    }
    fn p11env(&self) -> P11Env {
        Self::p11env(self)
    }
    fn pid(&self) -> u32 {
        Self::pid(self)
    }
    fn log(&self) -> String {
        Self::log(self)
    }
}

/// Either server, for a test body that runs against both (see [`servers`]). Implements
/// [`Server`]; `as_stock()` / `as_forwarder()` reach the implementation-specific methods.
#[derive(Debug)]
pub enum AnyServer {
    /// The stock `p11-kit server`.
    Stock(StockServer),
    /// `p11fwd server`.
    Forwarder(ForwarderServer),
}

impl AnyServer {
    /// Starts a server of `kind` serving `token.uri()`.
    #[track_caller]
    pub fn start(kind: ServerKind, token: &TestToken) -> Self {
        Self::start_uri(kind, token, &token.uri())
    }

    /// Starts a server of `kind` serving `uri`.
    #[track_caller]
    pub fn start_uri(kind: ServerKind, token: &TestToken, uri: &str) -> Self {
        match kind {
            ServerKind::Stock => Self::Stock(StockServer::start_uri(token, uri)),
            ServerKind::Forwarder => Self::Forwarder(ForwarderServer::start_uri(token, uri)),
        }
    }

    /// Starts a server of `kind` serving `token.uri()` through `module` (a module that wraps the
    /// token's SoftHSM: pkcs11-spy, a test shim), with `env` added to the server's environment.
    #[track_caller]
    pub fn start_module(
        kind: ServerKind,
        token: &TestToken,
        module: &Path,
        env: &[(&str, &OsStr)],
    ) -> Self {
        match kind {
            ServerKind::Stock => {
                Self::Stock(StockServer::start_module(token, &token.uri(), module, env))
            }
            ServerKind::Forwarder => {
                let mut b = ForwarderServer::builder(token).provider(module);
                for (k, v) in env {
                    b = b.env(k, v);
                }
                Self::Forwarder(b.start())
            }
        }
    }

    /// The stock server, if this is one.
    pub fn as_stock(&self) -> Option<&StockServer> {
        match self {
            Self::Stock(s) => Some(s),
            Self::Forwarder(_) => None,
        }
    }

    /// The forwarder, if this is one.
    pub fn as_forwarder(&self) -> Option<&ForwarderServer> {
        match self {
            Self::Forwarder(s) => Some(s),
            Self::Stock(_) => None,
        }
    }

    fn inner(&self) -> &dyn Server {
        match self {
            Self::Stock(s) => s,
            Self::Forwarder(s) => s,
        }
    }
}

impl From<StockServer> for AnyServer {
    fn from(s: StockServer) -> Self {
        Self::Stock(s)
    }
}

impl From<ForwarderServer> for AnyServer {
    fn from(s: ForwarderServer) -> Self {
        Self::Forwarder(s)
    }
}

impl Server for AnyServer {
    fn kind(&self) -> ServerKind {
        self.inner().kind()
    }
    fn address(&self) -> String {
        self.inner().address()
    }
    fn socket_path(&self) -> &Path {
        self.inner().socket_path()
    }
    fn p11env(&self) -> P11Env {
        self.inner().p11env()
    }
    fn pid(&self) -> u32 {
        self.inner().pid()
    }
    fn log(&self) -> String {
        self.inner().log()
    }
}

/// Both servers serving `token.uri()`, stock first: `for server in servers(&token) { ... }`.
/// Each message should name `server.kind()`.
#[track_caller]
pub fn servers(token: &TestToken) -> Vec<AnyServer> {
    servers_uri(token, &token.uri())
}

/// Both servers serving `uri`, stock first.
#[track_caller]
pub fn servers_uri(token: &TestToken, uri: &str) -> Vec<AnyServer> {
    vec![
        AnyServer::start_uri(ServerKind::Stock, token, uri),
        AnyServer::start_uri(ServerKind::Forwarder, token, uri),
    ]
}
