//! Where the workspace's build products are.
//!
//! The target directory is `CARGO_TARGET_DIR` (a relative value is taken from the workspace root)
//! or `<workspace>/target`; the artefacts are the debug ones. When they are not there, the
//! directory the running test executable was built into is tried too (`<dir>/deps/<test>`).
//! Missing artefacts are a panic that says "build it first: cargo build --workspace".

use std::os::unix::fs::symlink;
use std::path::{Path, PathBuf};

use tempfile::TempDir;

/// The workspace root (the parent of this package).
pub fn workspace_root() -> PathBuf {
    let manifest = Path::new(env!("CARGO_MANIFEST_DIR"));
    manifest.parent().unwrap_or(manifest).to_path_buf()
}

/// `CARGO_TARGET_DIR`, or `<workspace>/target`.
pub fn target_dir() -> PathBuf {
    match std::env::var_os("CARGO_TARGET_DIR") {
        Some(dir) if !dir.is_empty() => workspace_root().join(dir),
        _ => workspace_root().join("target"),
    }
}

/// The directory of the debug artefacts: `<target>/debug`.
pub fn profile_dir() -> PathBuf {
    target_dir().join("debug")
}

/// The directories searched for an artefact, in order.
fn search_dirs() -> Vec<PathBuf> {
    let mut dirs = vec![profile_dir()];
    if let Ok(exe) = std::env::current_exe()
        && let Some(deps) = exe.parent()
        && deps.file_name().is_some_and(|n| n == "deps")
        && let Some(dir) = deps.parent()
        && !dirs.iter().any(|d| d == dir)
    {
        dirs.push(dir.to_path_buf());
    }
    dirs
}

/// Finds the build product `file_name`, or `None`.
pub fn find(file_name: &str) -> Option<PathBuf> {
    search_dirs()
        .into_iter()
        .map(|d| d.join(file_name))
        .find(|p| p.is_file())
}

/// Finds the build product `file_name`.
///
/// # Panics
/// If it has not been built, naming the paths that were tried.
#[track_caller]
pub fn require(file_name: &str) -> PathBuf {
    find(file_name).unwrap_or_else(|| {
        let tried: Vec<String> = search_dirs()
            .iter()
            .map(|d| d.join(file_name).display().to_string())
            .collect();
        panic!(
            "{file_name} not found (tried {}): build it first: cargo build --workspace",
            tried.join(", ")
        )
    })
}

/// The forwarder binary `p11fwd`.
#[track_caller]
pub fn forwarder_bin() -> PathBuf {
    require("p11fwd")
}

/// The PKCS#11 module `libp11fwd_client.so` (installed as `p11fwd-client.so`).
#[track_caller]
pub fn client_module() -> PathBuf {
    require("libp11fwd_client.so")
}

/// The OpenSSL provider `libp11fwd_provider.so` (installed as `p11fwd.so`).
#[track_caller]
pub fn provider_module() -> PathBuf {
    require("libp11fwd_provider.so")
}

/// The `p11fwd-test-token` helper that provisions SoftHSM tokens (built with this package).
#[track_caller]
pub fn test_token_helper() -> PathBuf {
    find("p11fwd-test-token").unwrap_or_else(|| {
        panic!(
            "p11fwd-test-token not found in {:?}: build it first: cargo build --workspace \
             (or cargo build -p p11fwd-tests)",
            search_dirs()
        )
    })
}

/// A temp dir laid out like an install tree, with symlinks to the debug artefacts under their
/// installed names: `ossl-modules/p11fwd.so` (OpenSSL finds a provider by file name, so it must be
/// called `p11fwd.so`) and `pkcs11/p11fwd-client.so`.
#[derive(Debug)]
pub struct ModuleTree {
    dir: TempDir,
}

impl ModuleTree {
    /// Creates the tree.
    ///
    /// # Panics
    /// If an artefact has not been built, or the temp dir cannot be made.
    #[track_caller]
    pub fn new() -> Self {
        let provider = provider_module();
        let client = client_module();
        let dir = tempfile::Builder::new()
            .prefix("p11fwd-modules.")
            .tempdir()
            .expect("temp dir");
        for (sub, name, target) in [
            ("ossl-modules", "p11fwd.so", provider),
            ("pkcs11", "p11fwd-client.so", client),
        ] {
            let sub = dir.path().join(sub);
            std::fs::create_dir_all(&sub).expect("create module dir");
            symlink(&target, sub.join(name)).expect("symlink module");
        }
        Self { dir }
    }

    /// The root of the tree.
    pub fn path(&self) -> &Path {
        self.dir.path()
    }

    /// The directory for `OPENSSL_MODULES` (holds `p11fwd.so`).
    pub fn ossl_modules_dir(&self) -> PathBuf {
        self.dir.path().join("ossl-modules")
    }

    /// `ossl-modules/p11fwd.so`.
    pub fn provider(&self) -> PathBuf {
        self.ossl_modules_dir().join("p11fwd.so")
    }

    /// `pkcs11/p11fwd-client.so`.
    pub fn client(&self) -> PathBuf {
        self.dir.path().join("pkcs11").join("p11fwd-client.so")
    }
}

impl Default for ModuleTree {
    fn default() -> Self {
        Self::new()
    }
}
