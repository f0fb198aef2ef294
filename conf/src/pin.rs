//! PINs from URIs: `pin-value`, and `pin-source` files.
//!
//! A `pin-source` is one of
//! - `file:/abs/path` or `file:///abs/path` (also `file://localhost/abs/path`),
//! - a bare path, as pkcs11-provider accepts,
//! - `|command`, which is refused with [`Error::PinCommandUnsupported`].
//!
//! The PIN is the file's **first line**, without its trailing `\r\n` (pkcs11-provider reads it
//! the same way). The value is the URI's already percent-decoded `pin-source`; it is not decoded
//! a second time.
//!
//! When a URI has both, `pin-value` wins over `pin-source`, as in GnuTLS; see [`resolve_pin`].
//!
//! PINs are returned as [`Zeroizing`] strings, the buffers they are read into are zeroized, and
//! no error message or `Debug` output contains one.

use std::fs::File;
use std::io::{ErrorKind, Read};
use std::path::{Path, PathBuf};

use zeroize::Zeroizing;

use crate::error::Error;
use crate::uri::Pkcs11Uri;

/// The longest first line a PIN file may have, in bytes.
pub const MAX_PIN_LINE: usize = 4096;

/// Where a `pin-source` says the PIN is.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum PinSource {
    /// Read the first line of this file.
    File(PathBuf),
}

impl PinSource {
    /// Interprets a (percent-decoded) `pin-source` value.
    pub fn parse(source: &str) -> Result<Self, Error> {
        if source.is_empty() {
            return Err(Error::InvalidPinSource {
                reason: "it is empty".to_owned(),
            });
        }
        if source.starts_with('|') {
            return Err(Error::PinCommandUnsupported);
        }
        let path = match source.strip_prefix("file:") {
            None => source,
            Some(rest) => match rest.strip_prefix("//") {
                None => rest,
                // `file://` takes an authority; only the local host makes sense.
                Some(authority_and_path) => {
                    let (host, path) = match authority_and_path.find('/') {
                        Some(slash) => authority_and_path.split_at(slash),
                        None => (authority_and_path, ""),
                    };
                    if !(host.is_empty() || host.eq_ignore_ascii_case("localhost")) {
                        return Err(Error::InvalidPinSource {
                            reason: format!(
                                "file URI names host `{host}`; only local files are supported"
                            ),
                        });
                    }
                    path
                }
            },
        };
        if path.is_empty() {
            return Err(Error::InvalidPinSource {
                reason: "it names no file".to_owned(),
            });
        }
        Ok(Self::File(PathBuf::from(path)))
    }

    /// Reads the PIN.
    pub fn read(&self) -> Result<Zeroizing<String>, Error> {
        match self {
            Self::File(path) => read_pin_file(path),
        }
    }
}

/// Reads the PIN a `pin-source` value points to.
pub fn read_pin_source(source: &str) -> Result<Zeroizing<String>, Error> {
    PinSource::parse(source)?.read()
}

/// Reads the first line of `path`, without its trailing `\r\n`, as a PIN.
///
/// Fails if the file cannot be read, if the line is empty, longer than [`MAX_PIN_LINE`] bytes or
/// not UTF-8. The messages name the file, never its content.
pub fn read_pin_file(path: &Path) -> Result<Zeroizing<String>, Error> {
    let io_error = |source| Error::PinFileIo {
        path: path.to_owned(),
        source,
    };
    let content_error = |reason| Error::PinFileContent {
        path: path.to_owned(),
        reason,
    };

    let mut file = File::open(path).map_err(io_error)?;
    // A fixed buffer (no reallocation leaves stray copies behind), zeroized on drop.
    let mut buf = Zeroizing::new(vec![0u8; MAX_PIN_LINE + 1]);
    let mut filled = 0;
    let line_end = loop {
        if let Some(newline) = buf
            .get(..filled)
            .and_then(|b| b.iter().position(|&c| c == b'\n'))
        {
            break newline;
        }
        let Some(free) = buf.get_mut(filled..).filter(|free| !free.is_empty()) else {
            return Err(content_error("the first line is longer than 4096 bytes"));
        };
        match file.read(free) {
            Ok(0) => break filled,
            Ok(n) => filled += n,
            Err(e) if e.kind() == ErrorKind::Interrupted => {}
            Err(e) => return Err(io_error(e)),
        }
    };
    if line_end > MAX_PIN_LINE {
        return Err(content_error("the first line is longer than 4096 bytes"));
    }
    let line = buf.get(..line_end).unwrap_or_default();
    let end = line
        .iter()
        .rposition(|&c| c != b'\r')
        .map_or(0, |last| last + 1);
    let line = line.get(..end).unwrap_or_default();
    if line.is_empty() {
        return Err(content_error("the first line is empty"));
    }
    let pin = std::str::from_utf8(line).map_err(|_| content_error("the PIN is not valid UTF-8"))?;
    Ok(Zeroizing::new(pin.to_owned()))
}

/// The PIN a URI supplies: `pin-value` if present, else the content of `pin-source`, else
/// `None`.
///
/// `pin-value` winning follows GnuTLS; p11-kit keeps both and leaves the choice to the caller,
/// and pkcs11-provider takes whichever comes last in the URI.
pub fn resolve_pin(uri: &Pkcs11Uri) -> Result<Option<Zeroizing<String>>, Error> {
    if let Some(pin) = uri.pin_value() {
        return Ok(Some(Zeroizing::new(pin.to_owned())));
    }
    uri.pin_source().map(read_pin_source).transpose()
}

/// Ask for a PIN on the controlling terminal (`/dev/tty`), with echo off.
///
/// `prompt` is written to the terminal, not to stdout, so the command's output stays clean. A
/// process without a controlling terminal gets [`Error::PinPrompt`]: daemons must use a
/// `pin-source` instead.
pub fn prompt_tty(prompt: &str) -> Result<Zeroizing<String>, Error> {
    use std::io::Write;

    use rustix::termios::{self, LocalModes, OptionalActions};

    let fail = |what: &str, e: std::io::Error| Error::PinPrompt {
        reason: format!("{what}: {e}"),
    };
    let mut tty = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/tty")
        .map_err(|e| fail("no terminal (/dev/tty)", e))?;
    let saved = termios::tcgetattr(&tty).map_err(|e| fail("not a terminal", e.into()))?;
    let mut quiet = saved.clone();
    quiet.local_modes.remove(LocalModes::ECHO);
    quiet.local_modes.insert(LocalModes::ECHONL);
    termios::tcsetattr(&tty, OptionalActions::Flush, &quiet)
        .map_err(|e| fail("terminal", e.into()))?;
    let result = (|| {
        tty.write_all(prompt.as_bytes())
            .map_err(|e| fail("terminal", e))?;
        tty.flush().map_err(|e| fail("terminal", e))?;
        let mut line = Zeroizing::new(Vec::new());
        let mut byte = [0u8; 1];
        loop {
            match tty.read(&mut byte) {
                Ok(0) => break,
                Ok(_) if byte[0] == b'\n' => break,
                Ok(_) if line.len() < MAX_PIN_LINE => line.push(byte[0]),
                Ok(_) => {}
                Err(e) if e.kind() == ErrorKind::Interrupted => {}
                Err(e) => return Err(fail("reading the terminal", e)),
            }
        }
        if line.last() == Some(&b'\r') {
            line.pop();
        }
        let text = std::str::from_utf8(&line).map_err(|_| Error::PinPrompt {
            reason: "the PIN is not UTF-8".into(),
        })?;
        Ok(Zeroizing::new(text.to_owned()))
    })();
    // Restore echo whatever happened.
    let _ = termios::tcsetattr(&tty, OptionalActions::Flush, &saved);
    result
}

#[cfg(test)]
#[allow(clippy::unwrap_used)] // Tests unwrap: a panic is a test failure.
mod tests {
    use std::io::Write;

    use super::*;

    fn pin_file(content: &[u8]) -> tempfile::NamedTempFile {
        let mut file = tempfile::NamedTempFile::new().unwrap();
        file.write_all(content).unwrap();
        file
    }

    fn read(content: &[u8]) -> Result<String, Error> {
        let file = pin_file(content);
        read_pin_file(file.path()).map(|pin| pin.as_str().to_owned())
    }

    #[test]
    fn parses_source_forms() {
        let file = |p: &str| PinSource::File(PathBuf::from(p));
        assert_eq!(PinSource::parse("file:/etc/pin").unwrap(), file("/etc/pin"));
        assert_eq!(
            PinSource::parse("file:///etc/pin").unwrap(),
            file("/etc/pin")
        );
        assert_eq!(
            PinSource::parse("file://localhost/etc/pin").unwrap(),
            file("/etc/pin")
        );
        assert_eq!(PinSource::parse("/etc/pin").unwrap(), file("/etc/pin"));
        assert_eq!(PinSource::parse("pin.txt").unwrap(), file("pin.txt"));
        assert_eq!(PinSource::parse("file:pin.txt").unwrap(), file("pin.txt"));
        assert!(matches!(
            PinSource::parse("|/bin/echo 1234"),
            Err(Error::PinCommandUnsupported)
        ));
        assert!(matches!(
            PinSource::parse(""),
            Err(Error::InvalidPinSource { .. })
        ));
        assert!(matches!(
            PinSource::parse("file:"),
            Err(Error::InvalidPinSource { .. })
        ));
        assert!(matches!(
            PinSource::parse("file://"),
            Err(Error::InvalidPinSource { .. })
        ));
        assert!(matches!(
            PinSource::parse("file://remote/etc/pin"),
            Err(Error::InvalidPinSource { .. })
        ));
    }

    #[test]
    fn reads_the_first_line() {
        assert_eq!(read(b"1234").unwrap(), "1234");
        assert_eq!(read(b"1234\n").unwrap(), "1234");
        assert_eq!(read(b"1234\r\n").unwrap(), "1234");
        assert_eq!(read(b"1234\r\r\nsecond line\n").unwrap(), "1234");
        assert_eq!(read(b" 12 34 \n").unwrap(), " 12 34 ");
        assert_eq!(read("pïn\n".as_bytes()).unwrap(), "pïn");
        let long_tail = [b"ok\n".as_slice(), &[b'x'; 10_000]].concat();
        assert_eq!(read(&long_tail).unwrap(), "ok");
        assert_eq!(read(&[b'x'; MAX_PIN_LINE]).unwrap().len(), MAX_PIN_LINE);
    }

    #[test]
    fn rejects_unusable_files() {
        for content in [&b""[..], b"\n", b"\r\n", b"\xff\xfe\n"] {
            let err = read(content).unwrap_err();
            assert!(matches!(err, Error::PinFileContent { .. }), "{err}");
        }
        let err = read(&[b'x'; MAX_PIN_LINE + 1]).unwrap_err();
        assert!(matches!(err, Error::PinFileContent { .. }), "{err}");
    }

    #[test]
    fn missing_file_names_the_path() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("no-such-pin");
        let err = read_pin_source(&format!("file:{}", path.display())).unwrap_err();
        assert!(matches!(err, Error::PinFileIo { .. }));
        let msg = err.to_string();
        assert!(msg.contains(&path.display().to_string()), "{msg}");
    }

    #[test]
    fn errors_do_not_contain_the_pin() {
        let err = read(b"\xffs3cr3t\n").unwrap_err();
        assert!(!err.to_string().contains("s3cr3t"));
        assert!(!format!("{err:?}").contains("s3cr3t"));
    }

    #[test]
    fn pin_value_wins_over_pin_source() {
        let file = pin_file(b"from-file\n");
        let source = format!("file:{}", file.path().display());
        let both: Pkcs11Uri = Pkcs11Uri::new()
            .with_pin_source(source.clone())
            .with_pin_value("from-uri");
        assert_eq!(
            resolve_pin(&both).unwrap().as_deref().map(String::as_str),
            Some("from-uri")
        );
        let only_source = Pkcs11Uri::new().with_pin_source(source);
        assert_eq!(
            resolve_pin(&only_source)
                .unwrap()
                .as_deref()
                .map(String::as_str),
            Some("from-file")
        );
        assert!(resolve_pin(&Pkcs11Uri::new()).unwrap().is_none());
        let command = Pkcs11Uri::new().with_pin_source("|pinentry");
        assert!(matches!(
            resolve_pin(&command),
            Err(Error::PinCommandUnsupported)
        ));
    }

    #[test]
    fn resolves_pin_source_from_a_parsed_uri() {
        let file = pin_file(b"4321\n");
        let text = format!("pkcs11:token=t?pin-source=file:{}", file.path().display());
        let uri: Pkcs11Uri = text.parse().unwrap();
        assert_eq!(
            resolve_pin(&uri).unwrap().as_deref().map(String::as_str),
            Some("4321")
        );
    }
}
