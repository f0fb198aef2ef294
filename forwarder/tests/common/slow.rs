//! Fake modules: SoftHSM with some functions replaced, built from `tests/fixtures/*.c` with `cc`
//! and driven through files the test writes (`fake-events.c`, `fake-handles.c`); [`Fake`] is
//! `fake-slow.c`.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use p11fwd_tests::artifacts::workspace_root;
use p11fwd_tests::{ForwarderServerBuilder, TestToken, require_tool, run_ok};
use tempfile::TempDir;

use super::Fwd;

/// A module built from `tests/fixtures/<name>.c`, with the directory of files that drive it.
pub struct FakeModule {
    dir: TempDir,
    module: PathBuf,
    /// The environment variable that names the files' directory to the module.
    env: &'static str,
}

impl FakeModule {
    /// Compile `tests/fixtures/<name>.c`; the module finds its files' directory in `env`.
    pub fn build(name: &str, env: &'static str) -> Self {
        let dir = tempfile::Builder::new()
            .prefix(&format!("p11fwd-{name}."))
            .tempdir()
            .unwrap();
        let module = dir.path().join(format!("lib{name}.so"));
        let source = Path::new(env!("CARGO_MANIFEST_DIR")).join(format!("tests/fixtures/{name}.c"));
        run_ok(
            Command::new(require_tool("cc"))
                .args(["-Wall", "-shared", "-fPIC", "-o"])
                .arg(&module)
                .arg(source)
                // fake-softhsm.h, shared with the provider's token shim.
                .arg("-I")
                .arg(workspace_root().join("tests/tests/fixtures"))
                .arg("-ldl"),
        );
        std::fs::create_dir(dir.path().join("files")).unwrap();
        Self { dir, module, env }
    }

    /// The directory of the files that drive the module.
    pub fn files(&self) -> PathBuf {
        self.dir.path().join("files")
    }

    /// A `p11fwd server` builder for `token`'s SoftHSM through this module.
    pub fn builder(&self, token: &TestToken) -> ForwarderServerBuilder {
        super::builder(token)
            .provider(&self.module)
            .env(self.env, self.files())
    }

    /// `p11fwd server` serving `token` through this module.
    pub fn serve(&self, token: &TestToken) -> Fwd {
        self.builder(token).start()
    }
}

/// `fake-slow.c`: C_GenerateRandom of 13 bytes held until the test creates `release`, and
/// C_Login without a PIN (a PIN pad) held until the test writes the PIN to `pin`.
pub struct Fake(FakeModule);

impl Fake {
    pub fn build() -> Self {
        Self(FakeModule::build("fake-slow", "P11FWD_FAKE_SLOW"))
    }

    pub fn files(&self) -> PathBuf {
        self.0.files()
    }

    pub fn serve(&self, token: &TestToken) -> Fwd {
        self.0.serve(token)
    }

    /// Whether a held C_GenerateRandom is inside the module.
    pub fn in_random(&self) -> bool {
        self.files().join("in-random").exists()
    }

    /// Let one held C_GenerateRandom go.
    pub fn release(&self) {
        let release = self.files().join("release");
        wait_until("the previous release to be taken", || !release.exists());
        std::fs::write(release, "").unwrap();
    }

    pub fn in_login(&self) -> bool {
        self.files().join("in-login").exists()
    }

    /// Type the PIN on the "PIN pad".
    pub fn type_pin(&self, pin: &str) {
        let tmp = self.files().join("pin.new");
        std::fs::write(&tmp, pin).unwrap();
        std::fs::rename(tmp, self.files().join("pin")).unwrap();
    }
}

/// Polls `f` every 10 ms; panics after 10 s.
#[track_caller]
pub fn wait_until(what: &str, mut f: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while !f() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(10));
    }
}
