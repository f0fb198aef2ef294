//! The registry of live connections and the **watcher**: one thread (`p11fwd-watch`) in
//! `epoll_wait` that notices requests arriving on a connection while its own thread is busy in
//! the module (see [`crate::conn`]).
//!
//! Every connection socket is in the watcher's epoll set with `EPOLLONESHOT` and no events, so
//! it costs nothing while its thread reads it. A connection thread arms it (`EPOLLIN`, one
//! `epoll_ctl`) before it runs requests itself and disarms it after: the watcher wakes only
//! when a request arrives during such a run, and then reads it and hands it to the pool.

use std::collections::HashMap;
use std::os::fd::OwnedFd;
use std::os::unix::net::UnixStream;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use rustix::event::{EventfdFlags, epoll, eventfd};
use tracing::{debug, error};

use crate::conn::Link;

/// The epoll token of the stop eventfd (connection ids start at 1 and never reach it).
const STOP: u64 = u64::MAX;

/// Live connections, and the epoll set of the watcher thread.
#[derive(Debug)]
pub(crate) struct Watcher {
    epoll: OwnedFd,
    stop: OwnedFd,
    stopping: AtomicBool,
    reg: Mutex<Registry>,
}

#[derive(Debug, Default)]
struct Registry {
    /// Every connection socket, from its accept to the end of its thread.
    socks: HashMap<u64, Arc<UnixStream>>,
    /// The connections past their version byte.
    links: HashMap<u64, Arc<Link>>,
}

impl Watcher {
    pub(crate) fn new() -> std::io::Result<Arc<Self>> {
        let epoll = epoll::create(epoll::CreateFlags::CLOEXEC)?;
        let stop = eventfd(0, EventfdFlags::CLOEXEC | EventfdFlags::NONBLOCK)?;
        epoll::add(
            &epoll,
            &stop,
            epoll::EventData::new_u64(STOP),
            epoll::EventFlags::IN,
        )?;
        Ok(Arc::new(Self {
            epoll,
            stop,
            stopping: AtomicBool::new(false),
            reg: Mutex::new(Registry::default()),
        }))
    }

    fn reg(&self) -> MutexGuard<'_, Registry> {
        self.reg.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Whether the server is shutting down (connection threads stop reading).
    pub(crate) fn stopping(&self) -> bool {
        self.stopping.load(Ordering::Relaxed)
    }

    /// Adds a connection socket, disarmed; `false` if the server is shutting down.
    pub(crate) fn register(&self, id: u64, sock: &Arc<UnixStream>) -> bool {
        let mut reg = self.reg();
        if self.stopping() {
            return false;
        }
        if let Err(e) = epoll::add(
            &self.epoll,
            sock,
            epoll::EventData::new_u64(id),
            epoll::EventFlags::ONESHOT,
        ) {
            error!(cause = %e, "cannot watch a connection");
            return false;
        }
        reg.socks.insert(id, sock.clone());
        true
    }

    /// Lets the watcher hand the connection's events to `link`.
    pub(crate) fn attach(&self, link: &Arc<Link>) {
        self.reg().links.insert(link.id, link.clone());
    }

    /// Removes a connection (its thread is ending).
    pub(crate) fn unregister(&self, id: u64) {
        let mut reg = self.reg();
        reg.links.remove(&id);
        if let Some(sock) = reg.socks.remove(&id) {
            let _ = epoll::delete(&self.epoll, &*sock);
        }
    }

    /// Watch `sock` for one arrival.
    pub(crate) fn arm(&self, id: u64, sock: &UnixStream) {
        let _ = epoll::modify(
            &self.epoll,
            sock,
            epoll::EventData::new_u64(id),
            epoll::EventFlags::IN | epoll::EventFlags::ONESHOT,
        );
    }

    /// Stop watching `sock` (its thread reads it again).
    pub(crate) fn disarm(&self, id: u64, sock: &UnixStream) {
        let _ = epoll::modify(
            &self.epoll,
            sock,
            epoll::EventData::new_u64(id),
            epoll::EventFlags::ONESHOT,
        );
    }

    /// Shutdown: no new connections; every connection thread sees the end of its input
    /// (`shutdown(SHUT_RD)`), finishes what is in flight and cleans up.
    pub(crate) fn shutdown_all(&self) {
        let reg = self.reg();
        self.stopping.store(true, Ordering::Relaxed);
        for sock in reg.socks.values() {
            let _ = sock.shutdown(std::net::Shutdown::Read);
        }
    }

    /// Shutdown, when connections did not finish in time (a peer that stopped reading blocks a
    /// send for ever): `shutdown(SHUT_RDWR)` makes every blocked send fail.
    pub(crate) fn abort_all(&self) {
        let reg = self.reg();
        for sock in reg.socks.values() {
            let _ = sock.shutdown(std::net::Shutdown::Both);
        }
    }

    /// Ends the watcher thread.
    pub(crate) fn stop(&self) {
        let _ = rustix::io::write(&self.stop, &1u64.to_ne_bytes());
    }

    /// The watcher thread: hand each event to its connection until [`Watcher::stop`].
    pub(crate) fn run(&self) {
        let mut events: Vec<epoll::Event> = Vec::with_capacity(64);
        loop {
            events.clear();
            match epoll::wait(
                &self.epoll,
                rustix::buffer::spare_capacity(&mut events),
                None,
            ) {
                Ok(_) => {}
                Err(rustix::io::Errno::INTR) => continue,
                Err(e) => {
                    error!(cause = %e, "epoll_wait failed; the watcher stops");
                    return;
                }
            }
            for ev in &events {
                let id = ev.data.u64();
                if id == STOP {
                    debug!("watcher stopped");
                    return;
                }
                let link = self.reg().links.get(&id).cloned();
                if let Some(link) = link {
                    link.on_readable();
                }
            }
        }
    }
}
