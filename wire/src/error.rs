//! Errors: transport failures, protocol violations by the peer, and PKCS#11 return values.

use crate::{CallId, Rv, consts};

/// A specialized `Result` for this crate.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Everything that can go wrong talking p11-kit RPC.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// Reading from or writing to the socket failed.
    // The cause is in the message, not in `source()`, so error chains do not print it twice.
    #[error("I/O error: {0}")]
    Io(std::io::Error),
    /// The peer sent something that is not valid p11-kit RPC.
    #[error("protocol error: {0}")]
    Protocol(ProtocolError),
    /// The call reached the module, which returned this CK_RV.
    #[error("{call} failed: {rv}")]
    Rv {
        /// The call that failed.
        call: CallId,
        /// What the token (or the server) returned.
        rv: Rv,
    },
    /// The peer closed the connection.
    #[error("connection closed by the peer")]
    Closed,
    /// No reply arrived in time; the connection is no longer usable.
    #[error("timed out waiting for the peer")]
    Timeout,
    /// The request cannot be expressed to this peer (its generation lacks the encoding).
    #[error("{what}")]
    Unsupported {
        /// What is missing, for the user.
        what: &'static str,
        /// The CK_RV a PKCS#11 caller should see.
        rv: Rv,
    },
    /// The caller passed a value that cannot be encoded at all.
    #[error("invalid argument: {0}")]
    Invalid(&'static str),
}

impl From<std::io::Error> for Error {
    fn from(e: std::io::Error) -> Self {
        Self::Io(e)
    }
}

impl From<ProtocolError> for Error {
    fn from(e: ProtocolError) -> Self {
        Self::Protocol(e)
    }
}

impl Error {
    /// The one place that maps an error to the CK_RV a PKCS#11 caller sees.
    ///
    /// Transport and protocol failures become `CKR_DEVICE_ERROR`, as p11-kit's client does.
    pub fn rv(&self) -> Rv {
        match self {
            Self::Rv { rv, .. } => *rv,
            Self::Unsupported { rv, .. } => *rv,
            Self::Invalid(_) => Rv(consts::CKR_ARGUMENTS_BAD),
            Self::Io(_) | Self::Protocol(_) | Self::Closed | Self::Timeout => {
                Rv(consts::CKR_DEVICE_ERROR)
            }
        }
    }

    /// Whether the connection this error came from can no longer be used.
    pub fn is_fatal(&self) -> bool {
        matches!(
            self,
            Self::Io(_) | Self::Protocol(_) | Self::Closed | Self::Timeout
        )
    }
}

/// A violation of the wire format by the peer (or by a caller building a message).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ProtocolError {
    /// The message ended in the middle of a field.
    #[error("message truncated while reading {0}")]
    Truncated(&'static str),
    /// A length or count exceeds what we accept, or what the message can hold.
    #[error("{what} of {len} exceeds the limit of {max}")]
    TooLarge {
        /// What was too large.
        what: &'static str,
        /// The length the peer sent.
        len: u64,
        /// The limit.
        max: u64,
    },
    /// A call id outside the table, or one the negotiated version does not allow.
    #[error("unknown call id {0}")]
    UnknownCall(u32),
    /// The signature string does not match the call's.
    #[error("signature mismatch for {call}: expected {expected:?}, got {got:?}")]
    SignatureMismatch {
        /// The call.
        call: CallId,
        /// What the table says.
        expected: &'static str,
        /// What arrived.
        got: String,
    },
    /// A reply for a different call than the request.
    #[error("expected a reply to {expected}, got call id {got}")]
    UnexpectedReply {
        /// The call we sent.
        expected: CallId,
        /// The call id in the reply.
        got: u32,
    },
    /// A value that its encoding does not allow (bad validity byte, wrong IV length, ...).
    #[error("invalid {0}")]
    BadValue(&'static str),
    /// Templates nested deeper than the limit.
    #[error("attribute templates nested deeper than {0} levels")]
    TooDeep(usize),
    /// An ERROR frame that carries CKR_OK, which p11-kit treats as a protocol error.
    #[error("error reply without an error code")]
    ErrorWithoutCode,
    /// The arguments given for a message do not match its signature.
    #[error("arguments do not match signature {0:?}")]
    ArgumentMismatch(&'static str),
}
