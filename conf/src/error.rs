//! The one error type of this crate.

use std::io;
use std::path::PathBuf;

/// Everything that can go wrong in `p11fwd-conf`.
///
/// Messages name the attribute, file, variable or address at fault, so they can be shown to a
/// user as they are. They never contain a PIN: the value of `pin-value` is never echoed, and the
/// content of a PIN file is never quoted.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The text does not start with the `pkcs11:` scheme.
    #[error("not a PKCS#11 URI: it must start with `pkcs11:`")]
    NotPkcs11Uri,

    /// The URI is malformed outside of any single attribute value.
    #[error("invalid PKCS#11 URI: {reason}")]
    UriSyntax {
        /// What is wrong, and where.
        reason: String,
    },

    /// A standard attribute (or a path attribute of any kind) appears twice.
    #[error("invalid PKCS#11 URI: attribute `{name}` appears more than once")]
    DuplicateAttribute {
        /// The canonical attribute name.
        name: String,
    },

    /// A `%` is not followed by two hexadecimal digits.
    #[error(
        "invalid PKCS#11 URI: bad percent-encoding in the value of `{name}` at byte {offset} \
         (a `%` must be followed by two hexadecimal digits)"
    )]
    PercentEncoding {
        /// The attribute whose value is malformed.
        name: String,
        /// Byte offset of the bad `%` inside the (still encoded) value.
        offset: usize,
    },

    /// An attribute value does not have the form its attribute requires.
    #[error("invalid PKCS#11 URI: attribute `{name}`: {reason}")]
    InvalidAttribute {
        /// The attribute name as written in the URI.
        name: String,
        /// What is wrong with the value.
        reason: String,
    },

    /// A field given to a URI builder is not UTF-8, so it cannot become a text attribute.
    #[error("cannot build a PKCS#11 URI: the {field} is not valid UTF-8")]
    NotUtf8 {
        /// Which field, e.g. "token label".
        field: &'static str,
    },

    /// `pin-source=|command`: running a command to get a PIN is not supported.
    #[error(
        "pin-source commands (`|command`) are not supported; put the PIN in a file and use \
         pin-source=file:/path/to/file"
    )]
    PinCommandUnsupported,

    /// No terminal to ask for a PIN on, or reading from it failed.
    #[error("cannot ask for a PIN: {reason}")]
    PinPrompt {
        /// What went wrong.
        reason: String,
    },

    /// A `pin-source` value that names no file.
    #[error("invalid pin-source: {reason}")]
    InvalidPinSource {
        /// What is wrong with it.
        reason: String,
    },

    /// The PIN file could not be opened or read.
    #[error("cannot read PIN file {}: {source}", path.display())]
    PinFileIo {
        /// The file named by `pin-source`.
        path: PathBuf,
        /// The underlying error.
        source: io::Error,
    },

    /// The PIN file was read but holds no usable PIN.
    #[error("PIN file {}: {reason}", path.display())]
    PinFileContent {
        /// The file named by `pin-source`.
        path: PathBuf,
        /// What is wrong with its first line (never the line itself).
        reason: &'static str,
    },

    /// A p11-kit server address that is malformed or of an unsupported kind.
    #[error("invalid p11-kit server address `{address}`: {reason}")]
    InvalidAddress {
        /// The address as given (lossily converted to UTF-8).
        address: String,
        /// What is wrong with it.
        reason: String,
    },

    /// None of the places p11-kit looks at yields a runtime directory.
    #[error("cannot determine the runtime directory for the p11-kit socket: {reason}")]
    NoRuntimeDir {
        /// Which variables were missing.
        reason: String,
    },

    /// A template could not be rendered with the given directories.
    #[error("cannot render {template}: {reason}")]
    Template {
        /// The template's file name.
        template: &'static str,
        /// What is wrong with the input.
        reason: String,
    },
}
