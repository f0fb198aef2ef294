//! The accept loop, after mini-redis `server.rs`, and shutdown.
//!
//! - The listener holds a semaphore for the connection limit and an mpsc sender whose last drop
//!   signals that every connection has finished.
//! - Each accepted connection whose peer credentials are allowed gets a thread of its own
//!   ([`crate::conn`]): it answers the version byte, then reads, runs and answers requests,
//!   with the runtime's blocking pool for the requests that must run concurrently and the
//!   [watcher](crate::watch) for requests that arrive while it is busy in the module.
//! - `C_WaitForSlotEvent` waits are async tasks on this runtime.
//! - At shutdown every connection sees the end of its input (`shutdown(SHUT_RD)`), finishes
//!   what is in flight, closes every session its peer left open and ends its logins.

use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use p11fwd_wire::frame::Limits;
use tokio::net::UnixListener;
use tokio::net::UnixStream;
use tokio::sync::{OwnedSemaphorePermit, Semaphore, mpsc};
use tracing::{error, info, warn};

use crate::conn::{self, Env};
use crate::state::Shared;
use crate::watch::Watcher;

/// Stack of a connection thread, which runs module calls: about the runtime's blocking threads'
/// 2 MiB (a module may need it; only the pages touched are resident), but short of 2 MiB so that
/// no transparent huge page fits in it (with THP `always`, a 2 MiB-aligned stack could become
/// 2 MiB of resident memory per connection).
const CONN_STACK: usize = (2 << 20) - (64 << 10);

/// How long a shutdown waits for connections to finish before closing their sockets.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(5);

/// Caps and access rules of a server.
#[derive(Clone, Debug)]
pub struct Config {
    /// Frame size caps.
    pub limits: Limits,
    /// Connections served at once; more wait in the listen backlog.
    pub max_connections: usize,
    /// Requests of one connection in flight at once; the connection is not read further
    /// until one finishes.
    pub max_in_flight: u32,
    /// `-u`: the peer's uid must be one of these (see [`Config::peer_allowed`]).
    pub allowed_uids: Vec<u32>,
    /// `-g`: the peer's (primary) gid must be one of these.
    pub allowed_gids: Vec<u32>,
    /// Exit after this long without connections (`-t`).
    pub idle_timeout: Option<Duration>,
    /// Blocking `C_WaitForSlotEvent` calls pending at once, all connections together; more
    /// are answered CKR_FUNCTION_FAILED.
    pub max_waits: usize,
    /// Blocking `C_WaitForSlotEvent` calls pending at once on one connection.
    pub max_waits_per_connection: usize,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            limits: Limits::DEFAULT,
            max_connections: 1024,
            max_in_flight: 64,
            allowed_uids: Vec::new(),
            allowed_gids: Vec::new(),
            idle_timeout: None,
            max_waits: 1024,
            max_waits_per_connection: 8,
        }
    }
}

impl Config {
    /// Whether a peer with SO_PEERCRED `uid`/`gid` may connect to a server running as `me`.
    /// Without `-u`/`-g` only our own uid. With them, exactly `p11-kit server`'s
    /// `check_credentials`: the uid must be the `-u` one **and** the gid the `-g` one (each
    /// only if given), and our own uid is no exception (`-u alice` run by root refuses root).
    pub fn peer_allowed(&self, uid: u32, gid: u32, me: u32) -> bool {
        if self.allowed_uids.is_empty() && self.allowed_gids.is_empty() {
            return uid == me;
        }
        (self.allowed_uids.is_empty() || self.allowed_uids.contains(&uid))
            && (self.allowed_gids.is_empty() || self.allowed_gids.contains(&gid))
    }
}

/// Listens and serves until `shutdown` completes (or the idle timeout passes); then waits for
/// every connection to clean up.
pub async fn run(
    listener: UnixListener,
    shared: Arc<Shared>,
    config: Config,
    shutdown: impl Future,
) {
    let watcher = match Watcher::new() {
        Ok(w) => w,
        Err(e) => {
            error!(cause = %e, "cannot create the connection watcher");
            return;
        }
    };
    let watch_thread = {
        let w = watcher.clone();
        match std::thread::Builder::new()
            .name("p11fwd-watch".into())
            .spawn(move || w.run())
        {
            Ok(t) => t,
            Err(e) => {
                error!(cause = %e, "cannot start the connection watcher");
                return;
            }
        }
    };
    let (shutdown_complete_tx, mut shutdown_complete_rx) = mpsc::channel::<()>(1);
    let active = Arc::new(AtomicUsize::new(0));
    let modules = shared.modules.clone();
    let events = shared.events.clone();
    let prearmed = shared.clone();
    let env = Arc::new(Env {
        shared,
        limits: config.limits,
        max_in_flight: config.max_in_flight as usize,
        max_waits_per_connection: config.max_waits_per_connection,
        waits: Arc::new(Semaphore::new(config.max_waits)),
        rt: tokio::runtime::Handle::current(),
        watcher: watcher.clone(),
    });
    let mut server = Listener {
        listener,
        env,
        limit_connections: Arc::new(Semaphore::new(config.max_connections)),
        config: Arc::new(config),
        shutdown_complete_tx,
        active: active.clone(),
    };
    let idle = server.config.idle_timeout;
    tokio::select! {
        res = server.run() => {
            if let Err(e) = res {
                error!(cause = %e, "failed to accept");
            }
        }
        _ = shutdown => {
            info!("shutting down");
        }
        _ = idle_timer(idle, active) => {
            info!("no connections for the idle timeout; exiting");
        }
    }
    let Listener {
        shutdown_complete_tx,
        ..
    } = server;
    watcher.shutdown_all();
    drop(shutdown_complete_tx);
    // Calls inside the module finish; a peer that stopped reading would keep its connection's
    // reply pending for ever, so after a grace period the sockets are closed both ways.
    if tokio::time::timeout(SHUTDOWN_GRACE, shutdown_complete_rx.recv())
        .await
        .is_err()
    {
        warn!(
            grace = ?SHUTDOWN_GRACE,
            "connections still busy at shutdown; closing their sockets"
        );
        watcher.abort_all();
        let _ = shutdown_complete_rx.recv().await;
    }
    watcher.stop();
    // Every connection is gone: end the module waits of the slot event threads.
    let _ = tokio::task::spawn_blocking(move || {
        let _ = watch_thread.join();
        prearmed.prearm.stop();
        events.shutdown(&modules, Duration::from_secs(2));
    })
    .await;
}

async fn idle_timer(timeout: Option<Duration>, active: Arc<AtomicUsize>) {
    let Some(timeout) = timeout else {
        return std::future::pending().await;
    };
    let mut idle_since = Instant::now();
    loop {
        tokio::time::sleep(Duration::from_millis(250)).await;
        if active.load(Ordering::SeqCst) > 0 {
            idle_since = Instant::now();
        } else if idle_since.elapsed() >= timeout {
            return;
        }
    }
}

struct Listener {
    listener: UnixListener,
    env: Arc<Env>,
    config: Arc<Config>,
    limit_connections: Arc<Semaphore>,
    shutdown_complete_tx: mpsc::Sender<()>,
    active: Arc<AtomicUsize>,
}

/// What a connection holds until it is completely gone.
#[derive(Debug)]
struct Held {
    _permit: OwnedSemaphorePermit,
    _active: ActiveGuard,
    /// The last drop completes the server's shutdown.
    _shutdown_complete: mpsc::Sender<()>,
}

impl Listener {
    async fn run(&mut self) -> std::io::Result<()> {
        loop {
            let permit = self
                .limit_connections
                .clone()
                .acquire_owned()
                .await
                .map_err(std::io::Error::other)?;
            let stream = self.accept().await?;
            if !self.peer_allowed(&stream) {
                let cred = stream.peer_cred().ok();
                warn!(uid = ?cred.map(|c| c.uid()), gid = ?cred.map(|c| c.gid()), "connection refused: peer credentials not allowed");
                continue;
            }
            let held = Held {
                _permit: permit,
                _active: ActiveGuard::new(self.active.clone()),
                _shutdown_complete: self.shutdown_complete_tx.clone(),
            };
            let sock = match stream.into_std().and_then(|s| {
                s.set_nonblocking(false)?;
                Ok(s)
            }) {
                Ok(s) => s,
                Err(e) => {
                    warn!(cause = %e, "cannot take over a connection");
                    continue;
                }
            };
            let env = self.env.clone();
            if let Err(e) = std::thread::Builder::new()
                .name("p11fwd-conn".into())
                .stack_size(CONN_STACK)
                .spawn(move || conn::serve(env, sock, Box::new(held)))
            {
                warn!(cause = %e, "cannot start a connection thread; connection closed");
            }
        }
    }

    fn peer_allowed(&self, stream: &UnixStream) -> bool {
        let Ok(cred) = stream.peer_cred() else {
            return false;
        };
        self.config
            .peer_allowed(cred.uid(), cred.gid(), rustix::process::geteuid().as_raw())
    }

    /// Accept, retrying with backoff on errors such as EMFILE.
    async fn accept(&mut self) -> std::io::Result<UnixStream> {
        let mut backoff = 1;
        loop {
            match self.listener.accept().await {
                Ok((stream, _)) => return Ok(stream),
                Err(e) => {
                    if backoff > 64 {
                        return Err(e);
                    }
                    warn!(cause = %e, "accept failed; retrying");
                }
            }
            tokio::time::sleep(Duration::from_millis(100 * backoff)).await;
            backoff *= 2;
        }
    }
}

/// Counts live connections for the idle timeout.
#[derive(Debug)]
struct ActiveGuard(Arc<AtomicUsize>);

impl ActiveGuard {
    fn new(a: Arc<AtomicUsize>) -> Self {
        a.fetch_add(1, Ordering::SeqCst);
        Self(a)
    }
}

impl Drop for ActiveGuard {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::SeqCst);
    }
}

#[cfg(test)]
mod tests {
    use super::Config;

    #[test]
    fn peer_credentials_like_p11_kit_server() {
        let (me, nobody, nogroup, daemon) = (0, 65534, 65534, 1);
        let with = |uids: &[u32], gids: &[u32]| Config {
            allowed_uids: uids.to_vec(),
            allowed_gids: gids.to_vec(),
            ..Config::default()
        };
        let none = with(&[], &[]);
        assert!(none.peer_allowed(me, daemon, me));
        assert!(!none.peer_allowed(nobody, nogroup, me));
        let u = with(&[nobody], &[]);
        assert!(u.peer_allowed(nobody, daemon, me));
        assert!(
            !u.peer_allowed(me, me, me),
            "our own uid is not admitted with -u"
        );
        let g = with(&[], &[nogroup]);
        assert!(g.peer_allowed(daemon, nogroup, me));
        assert!(!g.peer_allowed(me, me, me));
        let ug = with(&[nobody], &[nogroup]);
        assert!(ug.peer_allowed(nobody, nogroup, me));
        assert!(!ug.peer_allowed(nobody, daemon, me));
        assert!(!ug.peer_allowed(daemon, nogroup, me));
        assert!(!ug.peer_allowed(me, nogroup, me));
    }
}
