//! Helpers of the `provider_*` tests (issues 5 and 6): the real `openssl` CLI (and curl, and
//! small C programs) with `p11fwd.so` against SoftHSM behind a stock `p11-kit server` 0.24.1 or
//! `p11fwd server`, with a round-trip counting relay in front of the server.
//!
//! Needs `cargo build --workspace` first (the tests load the built `libp11fwd_provider.so` and
//! start the built `p11fwd`).
#![allow(dead_code, unreachable_pub, clippy::unwrap_used)] // shared by several test crates

use std::ffi::OsStr;
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use p11fwd_tests::artifacts::ModuleTree;
use p11fwd_tests::relay::Relay;
use p11fwd_tests::run::{describe, run};
use p11fwd_tests::{AnyServer, Key, RunOutput, Server, ServerKind, TestToken, require_tool};

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
    /// `ossl`/`ok` load p11fwd before `default` (see [`Env::p11fwd_first`]).
    p11fwd_first: bool,
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

    /// `token` served by a server of `kind` through `module` (a module wrapping the token's
    /// SoftHSM: pkcs11-spy, a test shim), with `env` added to the server's environment.
    pub fn with_module(
        kind: ServerKind,
        token: TestToken,
        module: &Path,
        env: &[(&str, &OsStr)],
    ) -> Self {
        let server = AnyServer::start_module(kind, &token, module, env);
        Self::with_server(token, server)
    }

    /// A token with `keys` behind OpenSC's pkcs11-spy behind a server of `kind`: every call the
    /// token sees is written to the returned log (read it with [`spy_calls`]).
    pub fn with_spy(kind: ServerKind, keys: &[Key]) -> (Self, PathBuf) {
        let token = token(keys);
        let log = token.dir().join("spy.log");
        let softhsm = token.module_path().to_path_buf();
        let spy = p11fwd_tests::require_file("/usr/lib/x86_64-linux-gnu/pkcs11-spy.so");
        let env = Self::with_module(
            kind,
            token,
            &spy,
            &[
                ("PKCS11SPY", softhsm.as_os_str()),
                ("PKCS11SPY_OUTPUT", log.as_os_str()),
                // Only the client's calls: no spare sessions signing ahead (p11fwd server).
                ("P11FWD_SIGN_AHEAD", OsStr::new("0")),
            ],
        );
        (env, log)
    }

    /// A token with `keys` behind the test shim (`tests/tests/fixtures/token-shim.c`, built
    /// here) behind a server of `kind`: the token reports `flags` on top of SoftHSM's (change
    /// them with [`Shim::set_flags`]), a login without a PIN logs in with the user PIN (a PIN
    /// pad), and every `C_Login` is logged.
    pub fn with_shim(kind: ServerKind, keys: &[Key], flags: u64) -> (Self, Shim) {
        let token = token(keys);
        let dir = token.dir().to_path_buf();
        let shim = Shim {
            flags: dir.join("shim-flags"),
            log: dir.join("shim-logins.log"),
        };
        shim.set_flags(flags);
        // Built in place: it includes fake-softhsm.h from the same directory.
        let source = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/token-shim.c");
        let module = dir.join("libtoken-shim.so");
        let out = run(Command::new(require_tool("cc")).args([
            "-shared",
            "-fPIC",
            "-Wall",
            "-Werror",
            "-o",
            s(&module),
            s(&source),
            "-ldl",
        ]));
        assert_ok(&out, "cc token-shim.c");
        let softhsm = token.module_path().to_path_buf();
        let pin = token.user_pin();
        let env = Self::with_module(
            kind,
            token,
            &module,
            &[
                ("P11FWD_FAKE_REAL", softhsm.as_os_str()),
                ("TOKEN_SHIM_FLAGS", shim.flags.as_os_str()),
                ("TOKEN_SHIM_LOG", shim.log.as_os_str()),
                ("TOKEN_SHIM_PIN", OsStr::new(pin)),
            ],
        );
        (env, shim)
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
            p11fwd_first: false,
        }
    }

    /// `ossl` and `ok` load p11fwd first, then `default` (the part-1 tests' order; part 2 and
    /// the README put `default` first).
    pub fn p11fwd_first(mut self) -> Self {
        self.p11fwd_first = true;
        self
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
    /// the notes recommend (and that TLS needs); p11fwd first after [`Env::p11fwd_first`].
    pub fn ossl(&self, args: &[&str]) -> RunOutput {
        run(&mut self.ossl_cmd(args))
    }

    /// The command [`Env::ossl`] runs.
    pub fn ossl_cmd(&self, args: &[&str]) -> Command {
        let order = if self.p11fwd_first {
            ["p11fwd", "default"]
        } else {
            ["default", "p11fwd"]
        };
        self.openssl_cmd(&with_providers(args, order))
    }

    /// `openssl <cmd> -provider p11fwd -provider default args...` (p11fwd first).
    pub fn ossl_p11fwd_first(&self, args: &[&str]) -> RunOutput {
        run(&mut self.openssl_cmd(&with_providers(args, ["p11fwd", "default"])))
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

    /// Exports the public key of the token key `label` with p11fwd (`pkey -in <private key
    /// URI> -pubout`) and checks it equals the fixture's PEM (not for `rsa-pss`: p11fwd exports
    /// an RSA-PSS SubjectPublicKeyInfo, the fixture has the plain RSA one).
    #[track_caller]
    pub fn export_public(&self, label: &str) -> PathBuf {
        let out = self.path(&format!("{label}.exported.pub.pem"));
        self.ok(&[
            "pkey",
            "-in",
            &self.key_uri(label),
            "-pubout",
            "-out",
            s(&out),
        ]);
        if label != "rsa-pss" {
            let ours = std::fs::read_to_string(&out).unwrap();
            let fixture = std::fs::read_to_string(self.token.public_pem(label)).unwrap();
            assert_eq!(
                ours,
                fixture,
                "{}: exported public key of {label} differs from the fixture",
                self.kind()
            );
        }
        out
    }

    /// Verifies `sig` over data.txt with `dgst -verify` and the default provider only.
    #[track_caller]
    pub fn verify(&self, pubkey: &Path, sig: &Path, extra: &[&str]) {
        let out = self.soft(&dgst_verify(pubkey, sig, extra));
        assert!(
            out.success() && out.stdout.contains("Verified OK"),
            "{}: verification failed: {extra:?}\n{}{}",
            self.kind(),
            out.stdout,
            out.stderr
        );
    }

    /// openssl.cnf `name` in the scratch dir activating `default` and p11fwd (with this
    /// server's address and `extra` appended to p11fwd's section).
    pub fn config_with(&self, name: &str, extra: &str) -> PathBuf {
        let cnf = self.path(name);
        std::fs::write(
            &cnf,
            format!(
                "openssl_conf = openssl_init\n[openssl_init]\nproviders = provider_sect\n\
                 [provider_sect]\ndefault = default_sect\np11fwd = p11fwd_sect\n\
                 [default_sect]\nactivate = 1\n[p11fwd_sect]\nactivate = 1\n\
                 p11fwd-server-address = {}\n{extra}",
                self.address(),
            ),
        )
        .unwrap();
        cnf
    }

    /// Compiles the C program `source` (`cc -Wall -Werror ... -lcrypto -lpthread`) into the
    /// scratch dir. It may `#include "p11fwd_test.h"` ([`C_HELPERS`]).
    #[track_caller]
    pub fn compile_c(&self, name: &str, source: &str) -> PathBuf {
        let src = self.path(&format!("{name}.c"));
        let bin = self.path(name);
        std::fs::write(self.path("p11fwd_test.h"), C_HELPERS).unwrap();
        std::fs::write(&src, source).unwrap();
        let out = run(Command::new(require_tool("cc")).args([
            "-Wall",
            "-Werror",
            "-o",
            s(&bin),
            s(&src),
            "-lcrypto",
            "-lpthread",
        ]));
        assert_ok(&out, &format!("cc {name}.c"));
        bin
    }

    /// A command for a compiled program with the environment `openssl_cmd` gives the CLI.
    pub fn c_command(&self, bin: &Path) -> Command {
        let mut cmd = Command::new(bin);
        self.provider_env(&mut cmd);
        cmd
    }

    /// Round trips the relay counted since the last call.
    pub fn take_round_trips(&self) -> u64 {
        let n = self.relay.stats().round_trips;
        self.relay.reset_stats();
        n
    }
}

/// `args` with `-provider <first> -provider <second>` after the command name.
fn with_providers<'a>(args: &[&'a str], order: [&'a str; 2]) -> Vec<&'a str> {
    let mut all: Vec<&str> = args[..1].to_vec();
    all.extend(["-provider", order[0], "-provider", order[1]]);
    all.extend(&args[1..]);
    all
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

/// `dgst <md> -sign <key> -out <sig> data.txt`: the arguments of a signature over the scratch
/// dir's data.txt, for `Env::ok`, `Env::ossl`, `Env::openssl_cmd`.
pub fn dgst_sign<'a>(md: &'a str, key: &'a str, sig: &'a Path) -> [&'a str; 7] {
    ["dgst", md, "-sign", key, "-out", s(sig), "data.txt"]
}

/// `dgst -verify <pubkey> -signature <sig> <options...> data.txt`.
pub fn dgst_verify<'a>(pubkey: &'a Path, sig: &'a Path, options: &[&'a str]) -> Vec<&'a str> {
    let mut args = vec!["dgst", "-verify", s(pubkey), "-signature", s(sig)];
    args.extend(options);
    args.push("data.txt");
    args
}

/// `pkeyutl -sign -rawin -inkey <key> -in data.txt -out <sig>`: an EdDSA signature over
/// data.txt (OpenSSL 3.0's `dgst` cannot sign with EdDSA keys).
pub fn rawin_sign<'a>(key: &'a str, sig: &'a Path) -> [&'a str; 9] {
    [
        "pkeyutl",
        "-sign",
        "-rawin",
        "-inkey",
        key,
        "-in",
        "data.txt",
        "-out",
        s(sig),
    ]
}

/// `p11fwd_test.h`, for the tests' C programs: the usual headers, `load_providers()` (`default`
/// then p11fwd), `load_key(uri)` (the first private key OSSL_STORE finds, with no passphrase
/// callback: the PIN comes from the URI, the configuration or p11fwd's own prompt) and
/// `sign_digest(key)` (`EVP_PKEY_sign` of a SHA-256-sized digest; 1 on success, errors printed).
pub const C_HELPERS: &str = r#"
#include <openssl/err.h>
#include <openssl/evp.h>
#include <openssl/provider.h>
#include <openssl/store.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static inline int load_providers(void) {
    if (OSSL_PROVIDER_load(NULL, "default") != NULL && OSSL_PROVIDER_load(NULL, "p11fwd") != NULL)
        return 1;
    ERR_print_errors_fp(stderr);
    return 0;
}

static inline EVP_PKEY *load_key(const char *uri) {
    EVP_PKEY *key = NULL;
    OSSL_STORE_CTX *st = OSSL_STORE_open(uri, NULL, NULL, NULL, NULL);
    while (st != NULL && key == NULL && !OSSL_STORE_eof(st)) {
        OSSL_STORE_INFO *i = OSSL_STORE_load(st);
        if (i != NULL && OSSL_STORE_INFO_get_type(i) == OSSL_STORE_INFO_PKEY)
            key = OSSL_STORE_INFO_get1_PKEY(i);
        OSSL_STORE_INFO_free(i);
    }
    OSSL_STORE_close(st);
    if (key == NULL) {
        fprintf(stderr, "no key at %s\n", uri);
        ERR_print_errors_fp(stderr);
    }
    return key;
}

static inline int sign_digest(EVP_PKEY *key) {
    unsigned char digest[32] = {1}, sig[1024];
    size_t len = sizeof sig;
    EVP_PKEY_CTX *ctx = EVP_PKEY_CTX_new_from_pkey(NULL, key, NULL);
    int ok = ctx != NULL && EVP_PKEY_sign_init(ctx) > 0
        && EVP_PKEY_CTX_set_signature_md(ctx, EVP_sha256()) > 0
        && EVP_PKEY_sign(ctx, sig, &len, digest, sizeof digest) > 0;
    EVP_PKEY_CTX_free(ctx);
    if (!ok)
        ERR_print_errors_fp(stderr);
    return ok;
}
"#;

/// The files of a token behind the test shim ([`Env::with_shim`]).
pub struct Shim {
    /// The token flags the shim adds (hex).
    pub flags: PathBuf,
    /// One line per `C_Login`: `C_Login user=<n> pin=<none|given>`.
    pub log: PathBuf,
}

impl Shim {
    /// From now on the token reports `flags` on top of SoftHSM's own.
    pub fn set_flags(&self, flags: u64) {
        std::fs::write(&self.flags, format!("{flags:#x}\n")).unwrap();
    }

    /// The `C_Login` calls the token got so far.
    pub fn logins(&self) -> Vec<String> {
        std::fs::read_to_string(&self.log)
            .unwrap_or_default()
            .lines()
            .map(str::to_owned)
            .collect()
    }
}

/// CKF_PROTECTED_AUTHENTICATION_PATH: the PIN is entered on the device.
pub const CKF_PROTECTED_AUTHENTICATION_PATH: u64 = 0x100;
/// CKF_USER_PIN_FINAL_TRY: one more wrong user PIN locks it.
pub const CKF_USER_PIN_FINAL_TRY: u64 = 0x2_0000;
/// CKF_USER_PIN_TO_BE_CHANGED: the user PIN must be changed before use.
pub const CKF_USER_PIN_TO_BE_CHANGED: u64 = 0x8_0000;

/// The calls in a pkcs11-spy log, one line each (`C_Login CKU_USER`, `C_SignInit
/// CKM_SHA256_RSA_PKCS`, `C_OpenSession`...): names with the user type or mechanism, never the
/// PIN bytes the spy dumps.
pub fn spy_calls(log: &Path) -> Vec<String> {
    let text = std::fs::read_to_string(log).unwrap_or_default();
    let mut calls: Vec<String> = Vec::new();
    for line in text.lines() {
        if let Some((_, name)) = line.split_once(": C_")
            && line
                .split(':')
                .next()
                .is_some_and(|n| n.trim().parse::<u64>().is_ok())
        {
            calls.push(format!("C_{}", name.trim()));
        } else if let Some(last) = calls.last_mut() {
            for key in ["userType = ", "pMechanism->type = "] {
                if let Some((_, v)) = line.split_once(key) {
                    last.push(' ');
                    last.push_str(v.trim());
                }
            }
        }
    }
    calls
}

/// How many calls of `spy_calls(log)` start with `prefix`.
pub fn spy_count(log: &Path, prefix: &str) -> usize {
    spy_calls(log)
        .iter()
        .filter(|c| c.starts_with(prefix))
        .count()
}

/// Runs `cmd` on a pseudo-terminal (util-linux `script`): its stdin, stdout and stderr are the
/// terminal, so prompts appear. When the transcript shows `answer.0`, `answer.1` and a newline
/// are typed. Returns whether it exited with 0, and the transcript. A program still running
/// 60 s later is killed (the transcript then says so).
pub fn under_pty(cmd: &Command, answer: Option<(&str, &str)>) -> (bool, String) {
    let line = describe_argv(cmd);
    let mut script = Command::new(require_tool("script"));
    script.args(["-qec", &line, "/dev/null"]);
    for (k, v) in cmd.get_envs() {
        match v {
            Some(v) => script.env(k, v),
            None => script.env_remove(k),
        };
    }
    if let Some(dir) = cmd.get_current_dir() {
        script.current_dir(dir);
    }
    let mut child = script
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let transcript = Arc::new(Mutex::new(Vec::new()));
    let reader = {
        let transcript = Arc::clone(&transcript);
        let mut stdout = child.stdout.take().unwrap();
        std::thread::spawn(move || {
            let mut buf = [0u8; 4096];
            while let Ok(n) = stdout.read(&mut buf) {
                if n == 0 {
                    break;
                }
                transcript.lock().unwrap().extend_from_slice(&buf[..n]);
            }
        })
    };
    let text = || String::from_utf8_lossy(&transcript.lock().unwrap()).into_owned();
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut stdin = child.stdin.take();
    let mut pending = answer;
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break Some(status);
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            break None;
        }
        if let Some((prompt, typed)) = pending
            && text().contains(prompt)
        {
            let input = stdin.as_mut().unwrap();
            input.write_all(format!("{typed}\n").as_bytes()).unwrap();
            input.flush().unwrap();
            pending = None;
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    drop(stdin);
    reader.join().unwrap();
    let mut out = text();
    if status.is_none() {
        out.push_str("\n[killed after 60 s]");
    }
    (status.is_some_and(|s| s.success()), out)
}

/// `cmd`'s program and arguments as one shell-quoted line (for `script -c`).
fn describe_argv(cmd: &Command) -> String {
    let mut bare = Command::new(cmd.get_program());
    bare.args(cmd.get_args());
    describe(&bare)
}
