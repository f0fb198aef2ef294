//! The forwarder (`p11fwd server`) and the command-line tools of the `p11fwd` binary.

pub mod list;
