//! Helpers of the `provider_*` tests of part 2 (issue 6): the real `openssl` CLI (and curl, and
//! small C programs) with `p11fwd.so` against SoftHSM behind a stock `p11-kit server` 0.24.1 or
//! `p11fwd server`, with a round-trip counting relay in front of the server.
//!
//! Needs `cargo build --workspace` first (the tests load the built `libp11fwd_provider.so` and
//! start the built `p11fwd`).
#![allow(dead_code, unreachable_pub, clippy::unwrap_used)] // shared by several test crates

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use p11fwd_tests::artifacts::ModuleTree;
use p11fwd_tests::relay::Relay;
use p11fwd_tests::run::run;
use p11fwd_tests::{AnyServer, Key, RunOutput, Server, ServerKind, TestToken};

/// Both server kinds, stock first.
pub const KINDS: [ServerKind; 2] = [ServerKind::Stock, ServerKind::Forwarder];

/// One token, one server, a relay in front of it, a module dir, a scratch dir.
pub struct Env {
    pub token: TestToken,
    pub server: AnyServer,
    pub relay: Relay,
    _relay_dir: tempfile::TempDir,
    pub modules: ModuleTree,
    pub scratch: tempfile::TempDir,
}

/// A token with `keys`.
pub fn token(keys: &[Key]) -> TestToken {
    let mut b = TestToken::builder();
    for k in keys {
        b = b.with(*k);
    }
    b.build()
}

impl Env {
    /// A fresh token with `keys`, served by a server of `kind`.
    pub fn new(kind: ServerKind, keys: &[Key]) -> Self {
        Self::with_token(kind, token(keys))
    }

    /// `token`, served by a server of `kind`.
    pub fn with_token(kind: ServerKind, token: TestToken) -> Self {
        let server = AnyServer::start(kind, &token);
        Self::with_server(token, server)
    }

    /// The tokens of `token`'s SoftHSM that `uri` selects, served by a server of `kind`.
    pub fn with_token_uri(kind: ServerKind, token: TestToken, uri: &str) -> Self {
        let server = AnyServer::start_uri(kind, &token, uri);
        Self::with_server(token, server)
    }

    fn with_server(token: TestToken, server: AnyServer) -> Self {
        let relay_dir = tempfile::tempdir().unwrap();
        let relay = Relay::start(
            relay_dir.path().join("relay.sock"),
            server.socket_path(),
            Duration::ZERO,
        )
        .unwrap();
        let scratch = tempfile::tempdir().unwrap();
        std::fs::write(scratch.path().join("empty.cnf"), "").unwrap();
        std::fs::write(scratch.path().join("data.txt"), b"p11fwd signs this\n").unwrap();
        Self {
            token,
            server,
            relay,
            _relay_dir: relay_dir,
            modules: ModuleTree::new(),
            scratch,
        }
    }

    pub fn kind(&self) -> ServerKind {
        self.server.kind()
    }

    pub fn path(&self, name: &str) -> PathBuf {
        self.scratch.path().join(name)
    }

    /// Where the provider connects: the relay.
    pub fn address(&self) -> String {
        self.relay.address()
    }

    /// `pkcs11:token=...;object=<label>;type=private?pin-value=...`
    pub fn key_uri(&self, label: &str) -> String {
        format!(
            "{};type=private?pin-value={}",
            self.token.object_uri(label),
            self.token.user_pin()
        )
    }

    /// `openssl args...` in the scratch dir with the provider reachable and an empty config.
    pub fn openssl_cmd(&self, args: &[&str]) -> Command {
        let mut cmd = Command::new("openssl");
        cmd.args(args);
        self.provider_env(&mut cmd);
        cmd
    }

    /// The environment every program that loads p11fwd gets.
    pub fn provider_env(&self, cmd: &mut Command) {
        cmd.env("OPENSSL_MODULES", self.modules.ossl_modules_dir())
            .env("OPENSSL_CONF", self.path("empty.cnf"))
            .env("P11FWD_SERVER_ADDRESS", self.address())
            .env_remove("P11FWD_DEBUG")
            .env_remove("P11_KIT_SERVER_ADDRESS")
            .current_dir(self.scratch.path());
        if let Some(filter) = std::env::var_os("P11FWD_TEST_DEBUG") {
            cmd.env("P11FWD_DEBUG", filter);
        }
    }

    /// `openssl <cmd> -provider default -provider p11fwd args...`: `default` first, the order
    /// the notes recommend (and that TLS needs).
    pub fn ossl(&self, args: &[&str]) -> RunOutput {
        let mut all: Vec<&str> = args[..1].to_vec();
        all.extend(["-provider", "default", "-provider", "p11fwd"]);
        all.extend(&args[1..]);
        run(&mut self.openssl_cmd(&all))
    }

    /// `openssl <cmd> -provider p11fwd -provider default args...` (p11fwd first).
    pub fn ossl_p11fwd_first(&self, args: &[&str]) -> RunOutput {
        let mut all: Vec<&str> = args[..1].to_vec();
        all.extend(["-provider", "p11fwd", "-provider", "default"]);
        all.extend(&args[1..]);
        run(&mut self.openssl_cmd(&all))
    }

    /// `openssl args...` with only the default provider (the software reference).
    pub fn soft(&self, args: &[&str]) -> RunOutput {
        run(&mut self.openssl_cmd(args))
    }

    #[track_caller]
    pub fn ok(&self, args: &[&str]) -> RunOutput {
        let out = self.ossl(args);
        assert_ok(&out, &format!("{} / openssl {args:?}", self.kind()));
        out
    }

    #[track_caller]
    pub fn soft_ok(&self, args: &[&str]) -> RunOutput {
        let out = self.soft(args);
        assert_ok(&out, &format!("openssl {args:?} (software)"));
        out
    }

    /// Round trips the relay counted since the last call.
    pub fn take_round_trips(&self) -> u64 {
        let n = self.relay.stats().round_trips;
        self.relay.reset_stats();
        n
    }
}

#[track_caller]
pub fn assert_ok(out: &RunOutput, what: &str) {
    assert!(
        out.success() && !out.stderr.contains("panicked"),
        "{what} failed:\n{}\n{}",
        out.stdout,
        out.stderr
    );
}

pub fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}
