//! Running clients against an RPC server: commands with `P11_KIT_SERVER_ADDRESS` set.

use std::ffi::{OsStr, OsString};
use std::process::Command;

use crate::run::{RunOutput, run};

/// An environment for RPC clients: `P11_KIT_SERVER_ADDRESS` plus any other variables.
///
/// ```no_run
/// use p11fwd_tests::{P11Env, P11KIT_CLIENT_MODULE, StockServer, TestToken};
///
/// let token = TestToken::full();
/// let server = StockServer::start(&token);
/// let env = P11Env::new(server.address());
/// let out = env.run_ok(env.command("pkcs11-tool").args(["--module", P11KIT_CLIENT_MODULE, "-L"]));
/// assert!(out.stdout.contains("p11fwd-test"));
/// ```
#[derive(Debug, Clone)]
pub struct P11Env {
    vars: Vec<(OsString, OsString)>,
}

impl P11Env {
    /// An environment with `P11_KIT_SERVER_ADDRESS=address` (`unix:path=/...`).
    pub fn new(address: impl AsRef<OsStr>) -> Self {
        Self {
            vars: vec![("P11_KIT_SERVER_ADDRESS".into(), address.as_ref().to_owned())],
        }
    }

    /// Adds (or replaces) a variable.
    pub fn with(mut self, key: impl AsRef<OsStr>, value: impl AsRef<OsStr>) -> Self {
        let key = key.as_ref().to_owned();
        self.vars.retain(|(k, _)| *k != key);
        self.vars.push((key, value.as_ref().to_owned()));
        self
    }

    /// The server address.
    pub fn address(&self) -> &OsStr {
        self.get("P11_KIT_SERVER_ADDRESS").unwrap_or_default()
    }

    /// The value of a variable of this environment.
    pub fn get(&self, key: &str) -> Option<&OsStr> {
        self.vars
            .iter()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.as_os_str())
    }

    /// The variables, for `Command::envs`.
    pub fn vars(&self) -> impl Iterator<Item = (&OsStr, &OsStr)> {
        self.vars
            .iter()
            .map(|(k, v)| (k.as_os_str(), v.as_os_str()))
    }

    /// Sets this environment on `cmd`.
    pub fn apply<'c>(&self, cmd: &'c mut Command) -> &'c mut Command {
        cmd.envs(self.vars())
    }

    /// A command for `program` with this environment.
    pub fn command(&self, program: impl AsRef<OsStr>) -> Command {
        let mut cmd = Command::new(program);
        self.apply(&mut cmd);
        cmd
    }

    /// Runs `cmd` in this environment without judging its status.
    #[track_caller]
    pub fn run(&self, cmd: &mut Command) -> RunOutput {
        run(self.apply(cmd))
    }

    /// Runs `cmd` in this environment; panics with the whole output unless it succeeds.
    #[track_caller]
    pub fn run_ok(&self, cmd: &mut Command) -> RunOutput {
        self.run(cmd).assert_ok()
    }

    /// Runs `cmd` in this environment; panics with the whole output unless it fails.
    #[track_caller]
    pub fn run_fail(&self, cmd: &mut Command) -> RunOutput {
        self.run(cmd).assert_fail()
    }
}
