//! Shared helpers for the tests that load the built `p11fwd.so` into the real `openssl` CLI.

#![allow(dead_code, unreachable_pub)] // each test binary uses a subset

use std::error::Error;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

pub type TestResult = Result<(), Box<dyn Error>>;

/// The cdylib built by this `cargo test`/`cargo nextest` run.
///
/// The test executable is `<target>/<profile>/deps/<test>-<hash>`, and cargo builds the cdylib
/// in the same rustc run as the rlib the tests link, as `deps/libp11fwd_provider.so`. Only
/// `cargo build` copies it up to `<target>/<profile>/`, so that copy may be stale during
/// `cargo test`: `deps/` is searched first. `P11FWD_PROVIDER_SO` overrides. Fails loudly if
/// missing.
pub fn provider_library() -> PathBuf {
    const NAME: &str = "libp11fwd_provider.so";
    if let Some(path) = std::env::var_os("P11FWD_PROVIDER_SO") {
        let path = PathBuf::from(path);
        assert!(
            path.is_file(),
            "P11FWD_PROVIDER_SO={} does not exist",
            path.display()
        );
        return path;
    }
    let mut candidates = Vec::new();
    if let Some(deps) = std::env::current_exe()
        .ok()
        .as_deref()
        .and_then(Path::parent)
    {
        candidates.push(deps.join(NAME));
        if let Some(profile_dir) = deps.parent() {
            candidates.push(profile_dir.join(NAME));
        }
    }
    if let Some(target) = std::env::var_os("CARGO_TARGET_DIR") {
        candidates.push(PathBuf::from(target).join("debug").join(NAME));
    }
    candidates.push(
        Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../target/debug")
            .join(NAME),
    );
    candidates
        .into_iter()
        .find(|p| p.is_file())
        .unwrap_or_else(|| {
            panic!(
                "{NAME} not found next to the test binary, in $CARGO_TARGET_DIR/debug or in \
             target/debug: run `cargo build -p p11fwd-provider` (or set P11FWD_PROVIDER_SO)"
            )
        })
}

/// A temporary module directory holding the provider as `p11fwd.so`, plus files for the test.
pub struct ModuleDir {
    dir: tempfile::TempDir,
}

impl ModuleDir {
    pub fn new() -> Result<Self, Box<dyn Error>> {
        let dir = tempfile::tempdir()?;
        // A copy, so a concurrent rebuild cannot change the library under a running test.
        std::fs::copy(provider_library(), dir.path().join("p11fwd.so"))?;
        // An empty config, so the machine's openssl.cnf cannot influence the tests.
        std::fs::write(dir.path().join("empty.cnf"), "")?;
        Ok(Self { dir })
    }

    pub fn path(&self) -> &Path {
        self.dir.path()
    }

    /// Writes an openssl.cnf into the directory and returns its path.
    pub fn write_config(&self, name: &str, text: &str) -> Result<PathBuf, Box<dyn Error>> {
        let path = self.dir.path().join(name);
        std::fs::write(&path, text)?;
        Ok(path)
    }

    /// Runs `openssl args...` with `OPENSSL_MODULES` pointing here, `OPENSSL_CONF` set to
    /// `config` (or an empty file), no `P11FWD_DEBUG` unless `env` sets it.
    pub fn openssl(
        &self,
        args: &[&str],
        config: Option<&Path>,
        env: &[(&str, &str)],
    ) -> Result<Run, Box<dyn Error>> {
        let mut cmd = Command::new("openssl");
        cmd.args(args)
            .env("OPENSSL_MODULES", self.path())
            .env(
                "OPENSSL_CONF",
                config.map_or_else(|| self.path().join("empty.cnf"), Path::to_path_buf),
            )
            .env_remove("P11FWD_DEBUG")
            .env_remove("OPENSSL_CONF_INCLUDE");
        for (key, value) in env {
            cmd.env(key, value);
        }
        let output = cmd
            .output()
            .map_err(|e| format!("cannot run the openssl CLI (Debian package `openssl`): {e}"))?;
        Ok(Run::from(output))
    }
}

/// The result of one `openssl` run.
#[derive(Debug)]
pub struct Run {
    pub success: bool,
    pub stdout: String,
    pub stderr: String,
}

impl From<Output> for Run {
    fn from(output: Output) -> Self {
        Self {
            success: output.status.success(),
            stdout: String::from_utf8_lossy(&output.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&output.stderr).into_owned(),
        }
    }
}

impl Run {
    /// Fails with the whole output unless the run succeeded without any panic message.
    pub fn ok(self) -> Result<Self, Box<dyn Error>> {
        if !self.success || self.stderr.contains("panicked") {
            return Err(format!("openssl failed:\n{self}").into());
        }
        Ok(self)
    }
}

impl std::fmt::Display for Run {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "success: {}\n--- stdout\n{}--- stderr\n{}",
            self.success, self.stdout, self.stderr
        )
    }
}

/// The block of `openssl list -providers -verbose` output about `provider`.
pub fn provider_block<'a>(listing: &'a str, provider: &str) -> Option<&'a str> {
    let header = format!("\n  {provider}\n");
    let start = listing.find(&header)? + header.len();
    let rest = &listing[start..];
    let end = rest
        .find("\n  ")
        .filter(|&i| !rest[i + 3..].starts_with(' '))
        .unwrap_or(rest.len());
    Some(&rest[..end])
}
