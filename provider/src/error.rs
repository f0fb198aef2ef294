//! The provider's error type and the reason-code table shown by OpenSSL.
//!
//! Every failure that reaches a C entry point is an [`Error`]. The boundary
//! (`ffi::boundary::guard`) puts it on the OpenSSL error queue with its [`Reason`] code and its
//! `Display` text, so `openssl` prints e.g.
//! `...:error:...:p11fwd:invalid configuration:...:p11fwd_init:pkcs11-module-login-behavior: ...`.
//! [`Error::reason`] is the single place that maps errors to reason codes.

use core::ffi::CStr;
use std::io;

/// Declares [`Reason`]: variant, numeric code (stable: it is ABI for anyone matching on
/// `ERR_GET_REASON`) and the text OpenSSL prints.
macro_rules! reasons {
    ($($(#[$doc:meta])* $variant:ident = $code:literal => $text:literal,)+) => {
        /// OpenSSL reason code of a p11fwd error (`ERR_GET_REASON`), with its printed text.
        #[derive(Debug, Clone, Copy, PartialEq, Eq)]
        #[repr(u32)]
        #[non_exhaustive]
        pub(crate) enum Reason {
            $($(#[$doc])* $variant = $code,)+
        }

        impl Reason {
            /// Every reason, in code order.
            pub(crate) const ALL: &[Self] = &[$(Self::$variant,)+];

            /// The numeric reason code (never 0, and below 2^23 as OpenSSL requires).
            pub(crate) const fn code(self) -> u32 {
                self as u32
            }

            /// The text OpenSSL prints for this reason.
            pub(crate) const fn text(self) -> &'static CStr {
                match self {
                    $(Self::$variant => $text,)+
                }
            }
        }
    };
}

reasons! {
    /// A bug in p11fwd, including a caught panic.
    Internal = 1 => c"internal error",
    /// OpenSSL handed us something we cannot use: a NULL pointer, a parameter of the wrong type.
    InvalidArgument = 2 => c"invalid argument",
    /// A bad value in the provider's openssl.cnf section.
    Config = 3 => c"invalid configuration",
    /// A `pkcs11:` URI that does not parse.
    UriParse = 4 => c"malformed pkcs11 URI",
    /// No token object matches the URI.
    NoMatch = 5 => c"no object matches the URI",
    /// Several token objects match a URI that must name one.
    SeveralMatches = 6 => c"several objects match the URI",
    /// The token rejected the PIN (CKR_PIN_INCORRECT).
    PinIncorrect = 7 => c"PIN incorrect",
    /// The token needs a PIN and none is configured or obtainable.
    PinRequired = 8 => c"PIN required",
    /// The p11-kit/p11fwd server socket cannot be reached.
    ServerUnreachable = 9 => c"cannot reach the p11fwd server",
    /// The server sent something that is not valid p11-kit RPC.
    Protocol = 10 => c"RPC protocol error",
    /// The token returned a PKCS#11 error.
    Token = 11 => c"token error",
    /// The operation or parameter is not supported by p11fwd or the token.
    Unsupported = 12 => c"operation not supported",
    /// A decryption failed (bad padding, wrong key), reported without saying why.
    DecryptionFailed = 13 => c"decryption failed",
    /// Key generation on the token failed or was refused.
    KeyGeneration = 14 => c"key generation failed",
    /// The token's PIN state (final try, to be changed) stops p11fwd from sending a PIN.
    PinNotSent = 15 => c"PIN not sent",
}

/// Every failure of the provider.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub(crate) enum Error {
    /// OpenSSL passed NULL where a pointer is required (the argument is named).
    #[error("NULL {0}")]
    NullPointer(&'static str),
    /// An `OSSL_PARAM` could not be read or written.
    #[error("parameter {key:?}: {problem}")]
    Param {
        /// The parameter key.
        key: String,
        /// What is wrong with it.
        problem: &'static str,
    },
    /// A bad value in the provider's configuration.
    #[error("{key}: {problem}")]
    Config {
        /// The openssl.cnf key.
        key: &'static str,
        /// What is wrong with its value (never the value itself, it may be a PIN).
        problem: String,
    },
    /// A `pkcs11:` URI that does not parse.
    #[error("cannot parse {uri:?}: {problem}")]
    UriParse {
        /// The URI, with any `pin-value` removed.
        uri: String,
        /// What is wrong with it.
        problem: String,
    },
    /// No object matches the URI.
    #[error("nothing matches {0}")]
    NoMatch(String),
    /// Several objects match a URI that must name one.
    #[error("{count} private keys match {uri}; name one with its exact URI: {candidates}")]
    SeveralMatches {
        /// The URI.
        uri: String,
        /// How many objects matched.
        count: usize,
        /// The exact URIs of the candidates, `; `-separated.
        candidates: String,
    },
    /// The token rejected the PIN.
    #[error(
        "the token rejected the PIN (not retried, to avoid locking the token; fix the PIN source)"
    )]
    PinIncorrect,
    /// The user PIN is locked.
    #[error("the user PIN of token {0:?} is locked")]
    PinLocked(String),
    /// The token's PIN state says no PIN should be sent now.
    #[error("no PIN sent to token {token:?}: {why}")]
    PinNotSent {
        /// The token's label.
        token: String,
        /// Which state, and what to do.
        why: &'static str,
    },
    /// A PIN is needed and there is none.
    #[error(
        "token {0:?} needs a PIN: none in the URI (pin-value, pin-source), in \
         pkcs11-module-token-pin, from the application or from a terminal prompt"
    )]
    PinRequired(String),
    /// The connection to the server failed after it was established.
    #[error("the connection to the p11fwd server failed: {0}")]
    Connection(String),
    /// The server socket cannot be reached.
    #[error("cannot connect to {address}")]
    ServerUnreachable {
        /// The server address as configured or discovered.
        address: String,
        /// The connect error.
        #[source]
        source: io::Error,
    },
    /// The server sent invalid RPC.
    #[error("protocol error: {0}")]
    Protocol(String),
    /// The token returned a PKCS#11 error.
    #[error("{call} returned {rv}")]
    Token {
        /// The PKCS#11 call.
        call: &'static str,
        /// The CK_RV name or hex value.
        rv: String,
    },
    /// Not supported.
    #[error("{0} is not supported")]
    Unsupported(&'static str),
    /// A decryption failed; one message for every cause (no padding oracle).
    #[error("{0}")]
    Decrypt(&'static str),
    /// Key generation was refused or failed.
    #[error("key generation: {0}")]
    KeyGen(String),
    /// A panic caught at the C boundary.
    #[error("panic: {0}")]
    Panic(String),
    /// Our own bug, detected without a panic.
    #[error("internal error: {0}")]
    Internal(&'static str),
}

impl Error {
    /// The OpenSSL reason code: the one mapping from errors to [`Reason`].
    pub(crate) fn reason(&self) -> Reason {
        match self {
            Self::NullPointer(_) | Self::Param { .. } => Reason::InvalidArgument,
            Self::Config { .. } => Reason::Config,
            Self::UriParse { .. } => Reason::UriParse,
            Self::NoMatch(_) => Reason::NoMatch,
            Self::SeveralMatches { .. } => Reason::SeveralMatches,
            Self::PinIncorrect | Self::PinLocked(_) => Reason::PinIncorrect,
            Self::PinRequired(_) => Reason::PinRequired,
            Self::PinNotSent { .. } => Reason::PinNotSent,
            Self::ServerUnreachable { .. } | Self::Connection(_) => Reason::ServerUnreachable,
            Self::Protocol(_) => Reason::Protocol,
            Self::Token { .. } => Reason::Token,
            Self::Unsupported(_) => Reason::Unsupported,
            Self::Decrypt(_) => Reason::DecryptionFailed,
            Self::KeyGen(_) => Reason::KeyGeneration,
            Self::Panic(_) | Self::Internal(_) => Reason::Internal,
        }
    }

    /// The text pushed as the error's data: `Display` plus every `source()`, joined by `: `.
    pub(crate) fn message(&self) -> String {
        let mut message = self.to_string();
        let mut source = std::error::Error::source(self);
        while let Some(cause) = source {
            message.push_str(": ");
            message.push_str(&cause.to_string());
            source = cause.source();
        }
        message
    }

    /// Whether this is an expected outcome (logged at `debug`) rather than a misbehaving peer or
    /// our own bug (logged at `warn`/`error`).
    pub(crate) fn is_routine(&self) -> bool {
        matches!(
            self,
            Self::NoMatch(_)
                | Self::PinIncorrect
                | Self::PinRequired(_)
                | Self::Unsupported(_)
                | Self::Decrypt(_)
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reason_codes_are_distinct_nonzero_and_fit_openssl() {
        let mut codes: Vec<u32> = Reason::ALL.iter().map(|r| r.code()).collect();
        codes.sort_unstable();
        codes.dedup();
        assert_eq!(codes.len(), Reason::ALL.len());
        // ERR_REASON_MASK is 0x7FFFFF and the core treats a non-zero library byte as "not ours".
        assert!(codes.iter().all(|&c| c != 0 && c < (1 << 23)));
        assert!(Reason::ALL.iter().all(|r| !r.text().is_empty()));
    }

    #[test]
    fn message_includes_the_source_chain() {
        let err = Error::ServerUnreachable {
            address: "unix:path=/run/p11".into(),
            source: io::Error::new(io::ErrorKind::ConnectionRefused, "refused"),
        };
        assert_eq!(
            err.message(),
            "cannot connect to unix:path=/run/p11: refused"
        );
        assert_eq!(err.reason(), Reason::ServerUnreachable);
    }
}
