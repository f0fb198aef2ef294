//! Installable configuration files, embedded from `conf/templates/`.
//!
//! - [`SERVER_SOCKET`], [`SERVER_SERVICE`]: systemd user units, drop-ins for p11-kit's
//!   `p11-kit-server.socket`/`.service` (`ListenStream=%t/p11-kit/pkcs11`, mode 0600 in a 0700
//!   directory; the service is socket-activated through `LISTEN_FDS`).
//! - [`CLIENT_MODULE`]: the p11-kit module registration for `p11fwd-client.so`, with
//!   `disable-in` so that no server ever loads the client (p11-kit issue #531).
//!
//! [`Template::render`] replaces `@BINDIR@` and `@LIBDIR@`; no other placeholder exists.

use crate::error::Error;

/// An embedded configuration file with `@BINDIR@`/`@LIBDIR@` placeholders.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Template {
    name: &'static str,
    text: &'static str,
}

/// `p11fwd-server.socket`, a systemd user socket unit.
pub const SERVER_SOCKET: Template = Template {
    name: "p11fwd-server.socket",
    text: include_str!("../templates/p11fwd-server.socket"),
};

/// `p11fwd-server.service`, a systemd user service unit (uses `@BINDIR@`).
pub const SERVER_SERVICE: Template = Template {
    name: "p11fwd-server.service",
    text: include_str!("../templates/p11fwd-server.service"),
};

/// `p11fwd-client.module`, a p11-kit module registration file (uses `@LIBDIR@`).
pub const CLIENT_MODULE: Template = Template {
    name: "p11fwd-client.module",
    text: include_str!("../templates/p11fwd-client.module"),
};

/// Every template.
pub const ALL: [Template; 3] = [SERVER_SOCKET, SERVER_SERVICE, CLIENT_MODULE];

/// The installation directories substituted into templates.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct InstallDirs<'a> {
    /// Where `p11fwd` is installed, e.g. `/usr/bin`.
    pub bindir: &'a str,
    /// The library directory, e.g. `/usr/lib/x86_64-linux-gnu`; the client module is
    /// `<libdir>/pkcs11/p11fwd-client.so`, next to p11-kit's `p11-kit-client.so`.
    pub libdir: &'a str,
}

const PLACEHOLDERS: [&str; 2] = ["@BINDIR@", "@LIBDIR@"];

impl Template {
    /// The file name to install the rendered text as.
    pub const fn name(&self) -> &'static str {
        self.name
    }

    /// The template text, placeholders included.
    pub const fn source(&self) -> &'static str {
        self.text
    }

    /// The text with `@BINDIR@` and `@LIBDIR@` replaced.
    ///
    /// Both directories must be absolute and free of whitespace, control characters and `%`
    /// (a systemd specifier); a trailing `/` is dropped.
    pub fn render(&self, dirs: &InstallDirs<'_>) -> Result<String, Error> {
        let bindir = self.check_dir("bindir", dirs.bindir)?;
        let libdir = self.check_dir("libdir", dirs.libdir)?;
        Ok(self
            .text
            .replace("@BINDIR@", bindir)
            .replace("@LIBDIR@", libdir))
    }

    /// The placeholders this template uses.
    pub fn placeholders(&self) -> impl Iterator<Item = &'static str> + '_ {
        PLACEHOLDERS.into_iter().filter(|p| self.text.contains(p))
    }

    fn check_dir<'d>(&self, what: &str, dir: &'d str) -> Result<&'d str, Error> {
        let error = |reason: String| Error::Template {
            template: self.name,
            reason,
        };
        if !dir.starts_with('/') {
            return Err(error(format!("{what} `{dir}` is not an absolute path")));
        }
        if dir
            .chars()
            .any(|c| c.is_whitespace() || c.is_control() || c == '%')
        {
            return Err(error(format!(
                "{what} `{}` contains whitespace, a control character or `%`",
                dir.escape_debug()
            )));
        }
        Ok(dir.trim_end_matches('/'))
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)] // Tests unwrap: a panic is a test failure.
mod tests {
    use super::*;

    const DIRS: InstallDirs<'static> = InstallDirs {
        bindir: "/usr/bin",
        libdir: "/usr/lib/x86_64-linux-gnu",
    };

    #[test]
    fn renders_every_placeholder() {
        for template in ALL {
            let text = template.render(&DIRS).unwrap();
            assert!(!text.contains('@'), "{}: {text}", template.name());
        }
    }

    #[test]
    fn no_unknown_placeholders_in_sources() {
        for template in ALL {
            let mut rest = template.source();
            while let Some(start) = rest.find('@') {
                let after = rest.get(start + 1..).unwrap_or_default();
                let end = after.find('@').expect("unterminated placeholder");
                let name = after.get(..end).unwrap_or_default();
                assert!(
                    PLACEHOLDERS.contains(&format!("@{name}@").as_str()),
                    "{name}"
                );
                rest = after.get(end + 1..).unwrap_or_default();
            }
        }
    }

    #[test]
    fn service_runs_the_forwarder_on_the_socket_path() {
        let text = SERVER_SERVICE.render(&DIRS).unwrap();
        assert!(
            text.contains("\nExecStart=/usr/bin/p11fwd server -f -n %t/p11-kit/pkcs11 pkcs11:\n")
        );
        assert!(text.contains("\nRequires=p11fwd-server.socket\n"));
        assert_eq!(
            SERVER_SERVICE.placeholders().collect::<Vec<_>>(),
            ["@BINDIR@"]
        );
    }

    #[test]
    fn socket_is_private() {
        let text = SERVER_SOCKET.render(&DIRS).unwrap();
        for line in [
            "ListenStream=%t/p11-kit/pkcs11",
            "SocketMode=0600",
            "DirectoryMode=0700",
        ] {
            assert!(text.lines().any(|l| l == line), "{line}");
        }
        assert_eq!(SERVER_SOCKET.placeholders().count(), 0);
    }

    #[test]
    fn module_file_points_at_the_client_and_keeps_servers_away() {
        let text = CLIENT_MODULE.render(&DIRS).unwrap();
        let settings: Vec<&str> = text
            .lines()
            .filter(|l| !l.trim_start().starts_with('#') && !l.trim().is_empty())
            .collect();
        assert_eq!(
            settings,
            [
                "module: /usr/lib/x86_64-linux-gnu/pkcs11/p11fwd-client.so",
                "disable-in: p11fwd p11-kit-server p11-kit-remote",
            ]
        );
    }

    #[test]
    fn trailing_slash_is_dropped() {
        let dirs = InstallDirs {
            bindir: "/usr/local/bin/",
            libdir: "/usr/lib/",
        };
        let text = SERVER_SERVICE.render(&dirs).unwrap();
        assert!(text.contains("ExecStart=/usr/local/bin/p11fwd server"));
        let text = CLIENT_MODULE.render(&dirs).unwrap();
        assert!(text.contains("module: /usr/lib/pkcs11/p11fwd-client.so"));
    }

    #[test]
    fn rejects_unsafe_directories() {
        for bad in ["usr/bin", "", "/opt/my dir", "/opt/%t", "/opt/a\nb"] {
            let dirs = InstallDirs {
                bindir: bad,
                libdir: "/usr/lib",
            };
            assert!(
                matches!(SERVER_SERVICE.render(&dirs), Err(Error::Template { .. })),
                "{bad:?}"
            );
            let dirs = InstallDirs {
                bindir: "/usr/bin",
                libdir: bad,
            };
            assert!(
                matches!(CLIENT_MODULE.render(&dirs), Err(Error::Template { .. })),
                "{bad:?}"
            );
        }
    }
}
