//! The stock `p11-kit server` (0.24.1 on Debian 12) serving a [`TestToken`]: the reference
//! server our client and provider must work with, and the other half of differential tests.

use std::fs::File;
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use tempfile::TempDir;

use crate::run::{describe, require_tool};
use crate::{P11Env, TestToken, percent_encode};

/// How long [`StockServer::start`] waits for the socket.
const START_TIMEOUT: Duration = Duration::from_secs(10);

/// A running `p11-kit server -f --provider <softhsm> -n <dir>/stock.sock "pkcs11:token=<label>"`,
/// killed on drop.
#[derive(Debug)]
pub struct StockServer {
    child: Child,
    dir: TempDir,
    socket: PathBuf,
}

impl StockServer {
    /// Starts the server for `token` (serving `token.uri()`) and waits until its socket accepts
    /// connections.
    ///
    /// # Panics
    /// If `p11-kit` is missing, or the socket is not up within 10 s (with the server's log).
    #[track_caller]
    pub fn start(token: &TestToken) -> Self {
        Self::start_uri(token, &token.uri())
    }

    /// Like [`StockServer::start`], serving the tokens that match `uri` (for instance
    /// `pkcs11:token=p11fwd-test?write-protected=yes`).
    #[track_caller]
    pub fn start_uri(token: &TestToken, uri: &str) -> Self {
        Self::start_full(token, uri, token.module_path(), &[], &[])
    }

    /// Like [`StockServer::start_uri`], with more options before the URI (`-u`, `-g`, ...).
    #[track_caller]
    pub fn start_args(token: &TestToken, uri: &str, args: &[&str]) -> Self {
        Self::start_full(token, uri, token.module_path(), &[], args)
    }

    /// Like [`StockServer::start_uri`], with `module` as `--provider` (a module that wraps the
    /// token's SoftHSM, such as OpenSC's pkcs11-spy) and `env` added to the server's environment.
    #[track_caller]
    pub fn start_module(
        token: &TestToken,
        uri: &str,
        module: &Path,
        env: &[(&str, &std::ffi::OsStr)],
    ) -> Self {
        Self::start_full(token, uri, module, env, &[])
    }

    #[track_caller]
    fn start_full(
        token: &TestToken,
        uri: &str,
        module: &Path,
        env: &[(&str, &std::ffi::OsStr)],
        args: &[&str],
    ) -> Self {
        let p11kit = require_tool("p11-kit");
        let dir = tempfile::Builder::new()
            .prefix("p11fwd-stock.")
            .tempdir()
            .expect("temp dir");
        let socket = dir.path().join("stock.sock");
        let log = dir.path().join("stock.log");
        let out = dir.path().join("stock.out");
        let mut cmd = Command::new(p11kit);
        cmd.envs(token.env())
            .envs(env.iter().copied())
            .arg("server")
            .arg("-f")
            .arg("--provider")
            .arg(module)
            .arg("-n")
            .arg(&socket)
            .args(args)
            .arg(uri)
            .stdin(Stdio::null())
            // `-f` still prints the `P11_KIT_SERVER_ADDRESS=...` snippet.
            .stdout(File::create(&out).expect("create stock.out"))
            .stderr(File::create(&log).expect("create stock.log"));
        let command = describe(&cmd);
        let child = cmd
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start `{command}`: {e}"));
        let mut server = Self { child, dir, socket };
        server.wait_ready(&command);
        server
    }

    fn wait_ready(&mut self, command: &str) {
        let deadline = Instant::now() + START_TIMEOUT;
        loop {
            if let Ok(Some(status)) = self.child.try_wait() {
                panic!(
                    "`{command}` exited with {status} before its socket was up:\n{}",
                    self.log()
                );
            }
            // A successful connect makes the server fork a p11-kit-remote, which exits as soon
            // as we hang up.
            if UnixStream::connect(&self.socket).is_ok() {
                return;
            }
            if Instant::now() > deadline {
                panic!(
                    "`{command}`: socket not up after {START_TIMEOUT:?}:\n{}",
                    self.log()
                );
            }
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

    /// What the server wrote so far: stdout (the snippet) and stderr.
    pub fn log(&self) -> String {
        let read =
            |name: &str| std::fs::read_to_string(self.dir.path().join(name)).unwrap_or_default();
        format!(
            "--- stdout ---\n{}--- stderr ---\n{}",
            read("stock.out"),
            read("stock.log")
        )
    }
}

impl Drop for StockServer {
    fn drop(&mut self) {
        // SIGTERM lets the server remove its socket; SIGKILL if it does not go within 2 s.
        if let Some(pid) = rustix::process::Pid::from_raw(self.child.id() as i32) {
            let _ = rustix::process::kill_process(pid, rustix::process::Signal::TERM);
        }
        let deadline = Instant::now() + Duration::from_secs(2);
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
