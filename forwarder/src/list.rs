//! `p11fwd list [URI]`: the tokens and objects behind a p11-kit compatible socket.

use std::process::ExitCode;

/// Arguments of `p11fwd list`.
#[derive(Debug, clap::Args)]
pub struct ListArgs {
    /// Only tokens and objects matching this pkcs11: URI.
    pub uri: Option<String>,
}

/// Run `p11fwd list`.
pub fn run(_args: ListArgs) -> anyhow::Result<ExitCode> {
    anyhow::bail!("not implemented yet")
}
