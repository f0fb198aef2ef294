//! Finding peer programs and running them with a timeout.
//!
//! Every run captures stdout and stderr; an assertion that fails prints the command line (with the
//! environment variables it sets), the exit status and both outputs in full.

use std::ffi::OsStr;
use std::fmt;
use std::io::{Read, Write};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitStatus, Stdio};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError, mpsc};
use std::thread;
use std::time::{Duration, Instant};

/// How long to wait for the end of the output after the command has exited.
const PIPE_GRACE: Duration = Duration::from_millis(500);

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

/// How long a command may run before it is killed: 60 s, or `P11FWD_TEST_TIMEOUT` seconds.
pub fn default_timeout() -> Duration {
    std::env::var("P11FWD_TEST_TIMEOUT")
        .ok()
        .and_then(|s| s.parse().ok())
        .map_or(Duration::from_secs(60), Duration::from_secs)
}

/// Finds the executable `name` in `PATH` (and the sbin directories, where `sshd` lives).
///
/// # Panics
/// If it is not there, with "`name` not found: run `make deps`".
pub fn require_tool(name: &str) -> PathBuf {
    find_tool(name).unwrap_or_else(|| panic!("{name} not found: run `make deps`"))
}

/// Finds the executable `name` in `PATH` and the sbin directories, or `None`.
pub fn find_tool(name: &str) -> Option<PathBuf> {
    if name.contains('/') {
        return is_executable(Path::new(name)).then(|| PathBuf::from(name));
    }
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain(["/usr/local/sbin", "/usr/sbin", "/sbin"].map(PathBuf::from))
        .map(|dir| dir.join(name))
        .find(|p| is_executable(p))
}

fn is_executable(path: &Path) -> bool {
    use std::os::unix::fs::PermissionsExt;
    path.metadata()
        .is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
}

/// What a finished command produced.
#[derive(Debug, Clone)]
pub struct RunOutput {
    /// The command line, with the environment variables it sets in front.
    pub command: String,
    /// The exit status.
    pub status: ExitStatus,
    /// stdout, lossily decoded.
    pub stdout: String,
    /// stderr, lossily decoded.
    pub stderr: String,
    /// stdout as bytes (for binary output such as signatures).
    pub stdout_bytes: Vec<u8>,
}

impl RunOutput {
    /// Whether the command exited with status 0.
    pub fn success(&self) -> bool {
        self.status.success()
    }

    /// Panics with the whole output unless the command succeeded.
    #[track_caller]
    pub fn assert_ok(self) -> Self {
        assert!(self.success(), "command failed:\n{self}");
        self
    }

    /// Panics with the whole output unless the command failed.
    #[track_caller]
    pub fn assert_fail(self) -> Self {
        assert!(
            !self.success(),
            "command succeeded but should have failed:\n{self}"
        );
        self
    }

    /// Panics with the whole output unless stdout contains `needle`.
    #[track_caller]
    pub fn assert_stdout_contains(self, needle: &str) -> Self {
        assert!(
            self.stdout.contains(needle),
            "stdout lacks {needle:?}:\n{self}"
        );
        self
    }
}

impl fmt::Display for RunOutput {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(f, "$ {}", self.command)?;
        writeln!(f, "status: {}", self.status)?;
        writeln!(f, "--- stdout ---\n{}", self.stdout.trim_end())?;
        write!(f, "--- stderr ---\n{}", self.stderr.trim_end())
    }
}

/// Formats a command as a shell would show it, with the variables it sets in front.
pub fn describe(cmd: &Command) -> String {
    fn quote(s: &OsStr) -> String {
        let s = s.to_string_lossy();
        if !s.is_empty()
            && s.chars()
                .all(|c| c.is_ascii_alphanumeric() || "-_./:=,+@%".contains(c))
        {
            s.into_owned()
        } else {
            format!("'{}'", s.replace('\'', r"'\''"))
        }
    }
    let mut parts: Vec<String> = cmd
        .get_envs()
        .map(|(k, v)| match v {
            Some(v) => format!("{}={}", k.to_string_lossy(), quote(v)),
            None => format!("-u {}", k.to_string_lossy()),
        })
        .collect();
    parts.push(quote(cmd.get_program()));
    parts.extend(cmd.get_args().map(quote));
    parts.join(" ")
}

/// Runs `cmd` with stdin from /dev/null and the [`default_timeout`], without judging the status.
///
/// # Panics
/// If the command cannot be started or runs past the timeout (it is killed first).
#[track_caller]
pub fn run(cmd: &mut Command) -> RunOutput {
    run_with(cmd, None, default_timeout())
}

/// Like [`run`], feeding `input` to the command's stdin.
#[track_caller]
pub fn run_input(cmd: &mut Command, input: &[u8]) -> RunOutput {
    run_with(cmd, Some(input), default_timeout())
}

/// Runs `cmd` and panics with its whole output unless it exits with status 0.
#[track_caller]
pub fn run_ok(cmd: &mut Command) -> RunOutput {
    run(cmd).assert_ok()
}

/// Runs `cmd` and panics with its whole output unless it fails.
#[track_caller]
pub fn run_fail(cmd: &mut Command) -> RunOutput {
    run(cmd).assert_fail()
}

/// Runs `cmd` with optional stdin `input` and a timeout.
#[track_caller]
pub fn run_with(cmd: &mut Command, input: Option<&[u8]>, timeout: Duration) -> RunOutput {
    let command = describe(cmd);
    cmd.stdin(if input.is_some() {
        Stdio::piped()
    } else {
        Stdio::null()
    })
    .stdout(Stdio::piped())
    .stderr(Stdio::piped());
    // Its own process group, so that a timeout kills whatever it started too.
    cmd.process_group(0);
    let mut child = cmd
        .spawn()
        .unwrap_or_else(|e| panic!("cannot start `{command}`: {e}"));

    let stdin = child.stdin.take();
    let input = input.map(<[u8]>::to_vec);
    // Not joined: a daemon the command started may hold the pipe.
    thread::spawn(move || {
        if let (Some(mut stdin), Some(input)) = (stdin, input) {
            // The command may exit without reading everything; that is its business.
            let _ = stdin.write_all(&input);
        }
    });
    let pipes = [
        child
            .stdout
            .take()
            .map(|s| Box::new(s) as Box<dyn Read + Send>),
        child
            .stderr
            .take()
            .map(|s| Box::new(s) as Box<dyn Read + Send>),
    ];
    let readers = pipes.map(|pipe| {
        let buf = Arc::new(Mutex::new(Vec::new()));
        let (done_tx, done_rx) = mpsc::channel::<()>();
        let sink = Arc::clone(&buf);
        thread::spawn(move || {
            let Some(mut pipe) = pipe else {
                return drop(done_tx);
            };
            let mut chunk = [0u8; 8192];
            while let Ok(n) = pipe.read(&mut chunk) {
                if n == 0 {
                    break;
                }
                lock(&sink).extend_from_slice(&chunk[..n]);
            }
            drop(done_tx);
        });
        (buf, done_rx)
    });

    let pid = child.id();
    let (tx, rx) = mpsc::channel();
    thread::spawn(move || {
        let _ = tx.send(child.wait());
    });
    let (status, timed_out) = match rx.recv_timeout(timeout) {
        Ok(status) => (status, false),
        Err(_) => {
            if let Some(pid) = rustix::process::Pid::from_raw(pid as i32) {
                let _ = rustix::process::kill_process_group(pid, rustix::process::Signal::KILL);
            }
            (
                rx.recv().expect("waiter thread ended without a status"),
                true,
            )
        }
    };
    // Once the command has exited, its output ends with the pipes, unless something it left
    // running (a daemon) still holds them: then take what is there after a short grace period.
    let grace = Instant::now() + PIPE_GRACE;
    let [stdout, stderr] = readers.map(|(buf, done)| {
        let _ = done.recv_timeout(grace.saturating_duration_since(Instant::now()));
        std::mem::take(&mut *lock(&buf))
    });
    let status = status.unwrap_or_else(|e| panic!("cannot wait for `{command}`: {e}"));
    let out = RunOutput {
        command,
        status,
        stdout: String::from_utf8_lossy(&stdout).into_owned(),
        stderr: String::from_utf8_lossy(&stderr).into_owned(),
        stdout_bytes: stdout,
    };
    assert!(!timed_out, "command killed after {timeout:?}:\n{out}");
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_sh_and_panics_for_missing_tools() {
        assert!(require_tool("sh").ends_with("sh"));
        let err = std::panic::catch_unwind(|| require_tool("no-such-tool-p11fwd"))
            .expect_err("a missing tool must panic");
        let msg = err.downcast_ref::<String>().cloned().unwrap_or_default();
        assert_eq!(msg, "no-such-tool-p11fwd not found: run `make deps`");
    }

    #[test]
    fn captures_output_and_status() {
        let out = run_ok(
            Command::new("sh")
                .args(["-c", "echo out; echo err >&2"])
                .env("X", "a b"),
        );
        assert_eq!(out.stdout, "out\n");
        assert_eq!(out.stderr, "err\n");
        assert_eq!(out.command, "X='a b' sh -c 'echo out; echo err >&2'");
        let out = run_fail(Command::new("sh").args(["-c", "exit 3"]));
        assert_eq!(out.status.code(), Some(3));
        let out = run_input(&mut Command::new("cat"), b"hello").assert_ok();
        assert_eq!(out.stdout, "hello");
    }

    #[test]
    fn returns_when_a_left_over_process_holds_the_pipes() {
        let start = Instant::now();
        let out = run_ok(Command::new("sh").args(["-c", "echo started; sleep 3 & exit 0"]));
        assert_eq!(out.stdout, "started\n");
        assert!(
            start.elapsed() < Duration::from_secs(3),
            "{:?}",
            start.elapsed()
        );
    }

    #[test]
    fn kills_commands_past_the_timeout() {
        let result = std::panic::catch_unwind(|| {
            run_with(
                Command::new("sleep").arg("10"),
                None,
                Duration::from_millis(100),
            )
        });
        let msg = result.expect_err("must time out");
        let msg = msg.downcast_ref::<String>().cloned().unwrap_or_default();
        assert!(msg.contains("command killed after"), "{msg}");
    }
}
