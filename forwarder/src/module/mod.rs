//! The PKCS#11 modules the forwarder serves: loading (by path, by name, or every module
//! registered with p11-kit), and a safe interface to their function lists.
//!
//! All `unsafe` lives in [`ffi`]; this module and everything above it is safe code.

pub(crate) mod ffi;
pub mod raw_params;
pub mod registry;

use std::path::{Path, PathBuf};

use p11fwd_wire::value::ZERO_LENGTH_BUFFER;

pub(crate) use ffi::{Library, NativeMechanism, NativeTemplate, OutTemplate};
pub use raw_params::RawParams;

/// An output buffer as a client described it in an `fy` (rpc §4).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum OutBuf {
    /// `fy = 0`: a NULL buffer, asking for the size.
    Query,
    /// `fy = 0xFFFFFFFF`: a non-NULL buffer of length 0 (0.25+ clients).
    Empty,
    /// A buffer of this many bytes.
    Len(usize),
}

impl OutBuf {
    /// From the `fy` value.
    pub fn from_fy(fy: u32) -> Self {
        match fy {
            0 => Self::Query,
            ZERO_LENGTH_BUFFER => Self::Empty,
            n => Self::Len(n as usize),
        }
    }
}

/// `C_*Init` calls.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum InitKind {
    /// `C_EncryptInit`
    Encrypt,
    /// `C_DecryptInit`
    Decrypt,
    /// `C_DigestInit` (no key)
    Digest,
    /// `C_SignInit`
    Sign,
    /// `C_SignRecoverInit`
    SignRecover,
    /// `C_VerifyInit`
    Verify,
    /// `C_VerifyRecoverInit`
    VerifyRecover,
}

/// Calls that take input bytes and produce output bytes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[allow(missing_docs)] // the PKCS#11 function of the same name
pub enum InOut {
    Encrypt,
    EncryptUpdate,
    Decrypt,
    DecryptUpdate,
    Digest,
    Sign,
    SignRecover,
    VerifyRecover,
    DigestEncryptUpdate,
    DecryptDigestUpdate,
    SignEncryptUpdate,
    DecryptVerifyUpdate,
}

/// Calls that only produce output bytes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[allow(missing_docs)] // the PKCS#11 function of the same name
pub enum OutOnly {
    EncryptFinal,
    DecryptFinal,
    DigestFinal,
    SignFinal,
    GetOperationState,
}

/// Calls that only take input bytes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[allow(missing_docs)] // the PKCS#11 function of the same name
pub enum InOnly {
    DigestUpdate,
    SignUpdate,
    VerifyUpdate,
    VerifyFinal,
    SeedRandom,
}

/// Why a module could not be used.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ModuleError {
    /// The module is a p11-kit or p11fwd RPC client (or the p11-kit proxy): serving it would
    /// make the server talk to itself (p11-kit issue #531).
    #[error(
        "{0}: refusing to load a p11-kit/p11fwd client or proxy module (it would forward to itself)"
    )]
    ClientModule(PathBuf),
    /// No module of that name.
    #[error("module {0:?} not found (give a path, a registered module name, or a file in {1})")]
    NotFound(String, String),
    /// dlopen, the function list or C_Initialize failed.
    #[error("cannot load {path}: {reason}")]
    Load {
        /// The module file.
        path: PathBuf,
        /// What went wrong.
        reason: String,
    },
}

/// A loaded, initialised module.
#[derive(Debug)]
pub struct Module {
    name: String,
    path: PathBuf,
    pub(crate) lib: Library,
}

impl Module {
    /// Load the module file at `path` (after refusing client modules) and initialise it.
    pub fn load(name: &str, path: &Path, reserved: Option<&str>) -> Result<Self, ModuleError> {
        if registry::is_client_module(path) {
            return Err(ModuleError::ClientModule(path.to_path_buf()));
        }
        let lib = Library::load(path, reserved).map_err(|reason| ModuleError::Load {
            path: path.to_path_buf(),
            reason,
        })?;
        Ok(Self {
            name: name.to_owned(),
            path: path.to_path_buf(),
            lib,
        })
    }

    /// The module's name (its config file name, or the path given).
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The module file.
    pub fn path(&self) -> &Path {
        &self.path
    }
}
