//! The shell snippets `p11fwd server` prints, byte for byte those of `p11-kit server` (0.24.1,
//! verified against the Debian binary; see `docs/notes-conf.md`).
//!
//! ```text
//! P11_KIT_SERVER_ADDRESS=unix:path=/run/user/1000/p11-kit/pkcs11-123; export P11_KIT_SERVER_ADDRESS;
//! P11_KIT_SERVER_PID=124; export P11_KIT_SERVER_PID;
//! ```
//!
//! Two deliberate differences from p11-kit:
//! - An explicit `-s` wins over a `$SHELL` ending in `csh`; p11-kit 0.24.1 prints csh syntax even
//!   with `-s` then (its `SHELL` check runs whenever csh was not chosen).
//! - An address with characters a shell would interpret (for instance the `;` of
//!   `vsock:cid=3;port=5`) is single-quoted; p11-kit prints it bare, which breaks `eval`.
//!   Addresses from [`crate::discovery::format_unix_address`] never need quoting.

use std::ffi::OsStr;
use std::os::unix::ffi::OsStrExt;

use crate::discovery::{SERVER_ADDRESS_ENV, SERVER_PID_ENV};

/// Which shell syntax to print.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum ShellSyntax {
    /// Bourne shell: `NAME=value; export NAME;`.
    Sh,
    /// C shell: `setenv NAME value;`.
    Csh,
}

impl ShellSyntax {
    /// The syntax for `$SHELL`: csh if it ends in `csh` (`csh`, `tcsh`, `/bin/csh`), else sh.
    pub fn from_shell_env(shell: Option<&OsStr>) -> Self {
        match shell {
            Some(shell) if shell.as_bytes().ends_with(b"csh") => Self::Csh,
            _ => Self::Sh,
        }
    }

    /// `-s`/`-c` if given (`explicit`), else [`ShellSyntax::from_shell_env`].
    pub fn resolve(explicit: Option<Self>, shell: Option<&OsStr>) -> Self {
        explicit.unwrap_or_else(|| Self::from_shell_env(shell))
    }
}

/// What the server prints once its socket is listening: the address and the server's PID.
pub fn start_snippet(syntax: ShellSyntax, address: &str, pid: u32) -> String {
    let address = quote(address);
    match syntax {
        ShellSyntax::Sh => format!(
            "{SERVER_ADDRESS_ENV}={address}; export {SERVER_ADDRESS_ENV};\n\
             {SERVER_PID_ENV}={pid}; export {SERVER_PID_ENV};\n"
        ),
        ShellSyntax::Csh => format!(
            "setenv {SERVER_ADDRESS_ENV} {address};\n\
             setenv {SERVER_PID_ENV} {pid};\n"
        ),
    }
}

/// What `-k` prints after the server was sent SIGTERM.
pub fn kill_snippet(syntax: ShellSyntax) -> String {
    let unset = match syntax {
        ShellSyntax::Sh => "unset",
        ShellSyntax::Csh => "unsetenv",
    };
    format!("{unset} {SERVER_ADDRESS_ENV};\n{unset} {SERVER_PID_ENV};\n")
}

/// The address as is when every character is inert in both shells, else in single quotes.
fn quote(address: &str) -> String {
    let inert = |c: char| c.is_ascii_alphanumeric() || "%+,-./:=@_".contains(c);
    if !address.is_empty() && address.chars().all(inert) {
        address.to_owned()
    } else {
        format!("'{}'", address.replace('\'', r"'\''"))
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)] // Tests unwrap: a panic is a test failure.
mod tests {
    use super::*;

    // Golden output of the Debian p11-kit 0.24.1 binary, captured with
    // `XDG_RUNTIME_DIR=$(mktemp -d) p11-kit server -f {-s|-c} --provider libsofthsm2.so pkcs11:`
    // and `P11_KIT_SERVER_PID=<pid> p11-kit server -k [-c]`.
    const P11KIT_SH: &str = "P11_KIT_SERVER_ADDRESS=unix:path=/tmp/tmp.GY8MlqDGQ4/p11-kit/pkcs11-5398; export P11_KIT_SERVER_ADDRESS;\nP11_KIT_SERVER_PID=5398; export P11_KIT_SERVER_PID;\n";
    const P11KIT_CSH: &str = "setenv P11_KIT_SERVER_ADDRESS unix:path=/tmp/tmp.I5QY3Tnwy2/a%20b%2Bc%25/p11-kit/pkcs11-5562;\nsetenv P11_KIT_SERVER_PID 5562;\n";
    const P11KIT_KILL_SH: &str = "unset P11_KIT_SERVER_ADDRESS;\nunset P11_KIT_SERVER_PID;\n";
    const P11KIT_KILL_CSH: &str =
        "unsetenv P11_KIT_SERVER_ADDRESS;\nunsetenv P11_KIT_SERVER_PID;\n";

    #[test]
    fn start_snippets_match_p11_kit() {
        let sh = start_snippet(
            ShellSyntax::Sh,
            "unix:path=/tmp/tmp.GY8MlqDGQ4/p11-kit/pkcs11-5398",
            5398,
        );
        assert_eq!(sh, P11KIT_SH);
        let path = std::path::Path::new("/tmp/tmp.I5QY3Tnwy2/a b+c%/p11-kit/pkcs11-5562");
        let address = crate::discovery::format_unix_address(path);
        assert_eq!(start_snippet(ShellSyntax::Csh, &address, 5562), P11KIT_CSH);
    }

    #[test]
    fn kill_snippets_match_p11_kit() {
        assert_eq!(kill_snippet(ShellSyntax::Sh), P11KIT_KILL_SH);
        assert_eq!(kill_snippet(ShellSyntax::Csh), P11KIT_KILL_CSH);
    }

    #[test]
    fn chooses_syntax_from_flags_then_shell() {
        let shell = |s: &str| Some(OsStr::new(s).to_owned());
        for (explicit, env, want) in [
            (None, None, ShellSyntax::Sh),
            (None, shell("/bin/bash"), ShellSyntax::Sh),
            (None, shell("/bin/tcsh"), ShellSyntax::Csh),
            (None, shell("/usr/bin/csh"), ShellSyntax::Csh),
            (None, shell("csh"), ShellSyntax::Csh),
            (None, shell("/bin/cshell"), ShellSyntax::Sh),
            (Some(ShellSyntax::Csh), shell("/bin/bash"), ShellSyntax::Csh),
            // p11-kit 0.24.1 would print csh here; an explicit -s wins for us.
            (Some(ShellSyntax::Sh), shell("/bin/tcsh"), ShellSyntax::Sh),
        ] {
            assert_eq!(
                ShellSyntax::resolve(explicit, env.as_deref()),
                want,
                "{env:?}"
            );
        }
    }

    #[test]
    fn quotes_addresses_a_shell_would_split() {
        assert_eq!(
            start_snippet(ShellSyntax::Sh, "vsock:cid=3;port=5000", 7),
            "P11_KIT_SERVER_ADDRESS='vsock:cid=3;port=5000'; export P11_KIT_SERVER_ADDRESS;\n\
             P11_KIT_SERVER_PID=7; export P11_KIT_SERVER_PID;\n"
        );
        assert_eq!(
            start_snippet(ShellSyntax::Csh, "unix:path=/a\\b", 7),
            "setenv P11_KIT_SERVER_ADDRESS 'unix:path=/a\\b';\nsetenv P11_KIT_SERVER_PID 7;\n"
        );
        assert_eq!(quote("it's"), r"'it'\''s'");
        assert_eq!(quote(""), "''");
    }
}
