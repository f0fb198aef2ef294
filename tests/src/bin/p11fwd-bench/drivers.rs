//! Running a driver process (the OpenSSL driver `driver.c` or `p11fwd-bench module-driver`) and
//! following its phases, reading the relay's round-trip counter between them.

use std::io::{BufRead, BufReader, Write};
use std::process::{Child, ChildStdin, ChildStdout, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, anyhow, bail};
use p11fwd_tests::relay::Relay;

/// How a run ended.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum Status {
    Ok,
    /// The stack cannot do this (e.g. the provider has no decryption yet).
    Unsupported(String),
    Failed(String),
}

/// A driver process between its phases.
#[derive(Debug)]
pub(crate) struct Driver {
    child: Child,
    stdin: Option<ChildStdin>,
    stdout: BufReader<ChildStdout>,
    stderr_file: tempfile::NamedTempFile,
    deadline: Instant,
    /// Set when the driver is gone; until then a watchdog kills it at the deadline.
    gone: Arc<AtomicBool>,
}

/// What the driver reported once its key was loaded.
#[derive(Debug)]
pub(crate) enum Ready {
    /// Key load time.
    Loaded(Duration),
    /// The driver stopped: unsupported or failed.
    Stopped(Status),
}

/// Per-operation latencies and the run's wall time.
#[derive(Debug, Default)]
pub(crate) struct Done {
    pub(crate) lat_ns: Vec<u64>,
    pub(crate) wall: Duration,
    pub(crate) errors: usize,
}

impl Driver {
    /// Start `cmd` with piped stdin/stdout.
    pub(crate) fn spawn(mut cmd: Command, timeout: Duration) -> Result<Self> {
        let stderr_file = tempfile::NamedTempFile::new()?;
        let mut child = cmd
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(stderr_file.reopen()?)
            .spawn()
            .with_context(|| format!("spawning {cmd:?}"))?;
        let stdout = child.stdout.take().ok_or_else(|| anyhow!("no stdout"))?;
        let gone = Arc::new(AtomicBool::new(false));
        let deadline = Instant::now() + timeout;
        {
            let gone = Arc::clone(&gone);
            let pid = i32::try_from(child.id())
                .ok()
                .and_then(rustix::process::Pid::from_raw);
            std::thread::spawn(move || {
                while Instant::now() < deadline {
                    if gone.load(Ordering::SeqCst) {
                        return;
                    }
                    std::thread::sleep(Duration::from_millis(100));
                }
                if !gone.load(Ordering::SeqCst)
                    && let Some(pid) = pid
                {
                    let _ = rustix::process::kill_process(pid, rustix::process::Signal::KILL);
                }
            });
        }
        Ok(Self {
            stdin: child.stdin.take(),
            child,
            stdout: BufReader::new(stdout),
            stderr_file,
            deadline,
            gone,
        })
    }

    fn stderr(&self) -> String {
        let s = std::fs::read_to_string(self.stderr_file.path()).unwrap_or_default();
        let s = s.trim();
        // The last lines say what went wrong.
        let lines: Vec<&str> = s.lines().collect();
        lines[lines.len().saturating_sub(6)..].join(" | ")
    }

    fn line(&mut self) -> Result<String> {
        if Instant::now() > self.deadline {
            bail!("driver timed out");
        }
        let mut line = String::new();
        let n = self.stdout.read_line(&mut line)?;
        if n == 0 {
            let status = self.child.wait()?;
            bail!("driver ended ({status}): {}", self.stderr());
        }
        Ok(line.trim_end().to_owned())
    }

    /// Wait for `ready`.
    pub(crate) fn ready(&mut self) -> Ready {
        match self.line() {
            Ok(l) => {
                if let Some(ns) = l.strip_prefix("ready ") {
                    match ns.parse::<u64>() {
                        Ok(ns) => Ready::Loaded(Duration::from_nanos(ns)),
                        Err(_) => Ready::Stopped(Status::Failed(format!("bad line: {l}"))),
                    }
                } else if let Some(why) = l.strip_prefix("unsupported ") {
                    Ready::Stopped(Status::Unsupported(why.to_owned()))
                } else {
                    Ready::Stopped(Status::Failed(format!("{l} {}", self.stderr())))
                }
            }
            Err(e) => Ready::Stopped(Status::Failed(format!("{e:#}"))),
        }
    }

    /// Let it make its first (checked) operation; its time.
    pub(crate) fn warm(&mut self) -> Result<Duration> {
        self.go()?;
        let l = self.line()?;
        match l.strip_prefix("warm ") {
            Some(ns) => Ok(Duration::from_nanos(ns.parse()?)),
            None => bail!("{l} {}", self.stderr()),
        }
    }

    /// Let it go on to the next phase.
    pub(crate) fn go(&mut self) -> Result<()> {
        let stdin = self.stdin.as_mut().ok_or_else(|| anyhow!("stdin closed"))?;
        stdin.write_all(b"go\n")?;
        stdin.flush()?;
        Ok(())
    }

    /// Read the latencies until `done`.
    pub(crate) fn done(&mut self) -> Result<Done> {
        let mut done = Done::default();
        loop {
            let l = self.line()?;
            if let Some(rest) = l.strip_prefix("lat") {
                for v in rest.split_whitespace() {
                    done.lat_ns.push(v.parse()?);
                }
            } else if let Some(rest) = l.strip_prefix("done ") {
                let mut it = rest.split_whitespace();
                let wall: u64 = it
                    .next()
                    .ok_or_else(|| anyhow!("done without wall"))?
                    .parse()?;
                done.wall = Duration::from_nanos(wall);
                done.errors = it.next().unwrap_or("0").parse()?;
                return Ok(done);
            } else {
                bail!("unexpected driver output: {l} {}", self.stderr());
            }
        }
    }

    /// Let it finish and wait for it.
    pub(crate) fn finish(mut self) -> Result<()> {
        if let Some(mut stdin) = self.stdin.take() {
            let _ = stdin.write_all(b"bye\n");
        }
        let started = Instant::now();
        loop {
            if self.child.try_wait()?.is_some() {
                self.gone.store(true, Ordering::SeqCst);
                return Ok(());
            }
            if started.elapsed() > Duration::from_secs(10) {
                let _ = self.child.kill();
                let _ = self.child.wait();
                return Ok(());
            }
            std::thread::sleep(Duration::from_millis(5));
        }
    }
}

impl Drop for Driver {
    fn drop(&mut self) {
        if matches!(self.child.try_wait(), Ok(None)) {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
        self.gone.store(true, Ordering::SeqCst);
    }
}

/// One driver run with round trips counted by `relay` (if any).
#[derive(Debug)]
pub(crate) struct Measured {
    pub(crate) status: Status,
    pub(crate) load: Duration,
    pub(crate) load_rt: Option<u64>,
    /// The first (checked) operation.
    pub(crate) first: Duration,
    pub(crate) first_rt: Option<u64>,
    pub(crate) done: Done,
    pub(crate) op_rt: Option<u64>,
}

/// Run `cmd` through its phases.
pub(crate) fn measure(cmd: Command, relay: Option<&Relay>, timeout: Duration) -> Measured {
    let mut m = Measured {
        status: Status::Ok,
        load: Duration::ZERO,
        load_rt: None,
        first: Duration::ZERO,
        first_rt: None,
        done: Done::default(),
        op_rt: None,
    };
    if let Some(r) = relay {
        r.reset_stats();
    }
    let mut driver = match Driver::spawn(cmd, timeout) {
        Ok(d) => d,
        Err(e) => {
            m.status = Status::Failed(format!("{e:#}"));
            return m;
        }
    };
    match driver.ready() {
        Ready::Loaded(load) => m.load = load,
        Ready::Stopped(status) => {
            m.status = status;
            return m;
        }
    }
    if let Some(r) = relay {
        m.load_rt = Some(r.stats().round_trips);
        r.reset_stats();
    }
    match driver.warm() {
        Ok(first) => m.first = first,
        Err(e) => {
            m.status = Status::Failed(format!("{e:#}"));
            return m;
        }
    }
    if let Some(r) = relay {
        m.first_rt = Some(r.stats().round_trips);
        r.reset_stats();
    }
    let result = driver.go().and_then(|()| driver.done());
    if let Some(r) = relay {
        m.op_rt = Some(r.stats().round_trips);
    }
    match result {
        Ok(done) => m.done = done,
        Err(e) => m.status = Status::Failed(format!("{e:#}")),
    }
    let _ = driver.finish();
    m
}
