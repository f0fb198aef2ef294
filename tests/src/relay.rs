//! A Unix-socket relay that adds a fixed one-way delay to every chunk in both directions, keeping
//! order: a stand-in for a forwarded socket over a slow link (`ssh -R`). It counts connections and
//! round trips, a round trip being a client-to-server write that comes after the previous reply
//! began (the Rust twin of `../shared/tools/latency-relay.py`).
//!
//! ```no_run
//! # fn main() -> std::io::Result<()> {
//! use p11fwd_tests::relay::Relay;
//! use std::time::Duration;
//!
//! let relay = Relay::start("/tmp/slow.sock", "/tmp/server.sock", Duration::from_millis(10))?;
//! // ... point a client at relay.address() ...
//! println!("{} round trips", relay.stats().round_trips);
//! # Ok(())
//! # }
//! ```
//!
//! [`Relay::start_recording`] also keeps every byte of every connection ([`Relay::transcripts`]),
//! for tests that check what went over the wire.

use std::io::{self, Read, Write};
use std::net::Shutdown;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

/// What the relay has seen so far.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct RelayStats {
    /// Connections accepted.
    pub conns: u64,
    /// Client-to-server writes that came after the previous reply began.
    pub round_trips: u64,
    /// Bytes from clients to the server.
    pub c2s_bytes: u64,
    /// Bytes from the server to clients.
    pub s2c_bytes: u64,
}

/// Every byte of one connection, in each direction (version byte included).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Transcript {
    /// What the client sent.
    pub client_to_server: Vec<u8>,
    /// What the server sent.
    pub server_to_client: Vec<u8>,
}

#[derive(Debug, Default)]
struct Shared {
    stats: Mutex<RelayStats>,
    /// The process id of every accepted client (`SO_PEERCRED`), in accept order.
    peers: Mutex<Vec<i32>>,
    /// `Some` when recording: one transcript per connection, in accept order.
    transcripts: Option<Mutex<Vec<Transcript>>>,
    /// Every stream of every connection, so that drop can shut them down.
    streams: Mutex<Vec<UnixStream>>,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

impl Shared {
    fn stats(&self) -> MutexGuard<'_, RelayStats> {
        self.stats.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// A running relay; stopped on drop (the listening socket is removed, open connections are shut
/// down).
#[derive(Debug)]
pub struct Relay {
    listen: PathBuf,
    shared: Arc<Shared>,
    stop: Arc<AtomicBool>,
    /// A handle on the listening socket, to wake the accept loop on drop.
    listener: UnixListener,
    acceptor: Option<JoinHandle<()>>,
}

impl Relay {
    /// Listens on `listen_path` (an existing file there is removed) and relays every connection to
    /// `target_path`, delaying each chunk by `one_way_delay` in each direction.
    pub fn start(
        listen_path: impl AsRef<Path>,
        target_path: impl AsRef<Path>,
        one_way_delay: Duration,
    ) -> io::Result<Self> {
        Self::start_with(listen_path, target_path, one_way_delay, false)
    }

    /// [`Relay::start`] without delay, keeping every byte of every connection for
    /// [`Relay::transcripts`].
    pub fn start_recording(
        listen_path: impl AsRef<Path>,
        target_path: impl AsRef<Path>,
    ) -> io::Result<Self> {
        Self::start_with(listen_path, target_path, Duration::ZERO, true)
    }

    fn start_with(
        listen_path: impl AsRef<Path>,
        target_path: impl AsRef<Path>,
        one_way_delay: Duration,
        record: bool,
    ) -> io::Result<Self> {
        let listen = listen_path.as_ref().to_path_buf();
        let target = target_path.as_ref().to_path_buf();
        if listen.exists() {
            std::fs::remove_file(&listen)?;
        }
        let listener = UnixListener::bind(&listen)?;
        let handle = listener.try_clone()?;
        let shared = Arc::new(Shared {
            transcripts: record.then(Mutex::default),
            ..Shared::default()
        });
        let stop = Arc::new(AtomicBool::new(false));
        let acceptor = {
            let (shared, stop) = (Arc::clone(&shared), Arc::clone(&stop));
            thread::Builder::new()
                .name("relay-accept".into())
                .spawn(move || {
                    for client in listener.incoming() {
                        if stop.load(Ordering::SeqCst) {
                            break;
                        }
                        let Ok(client) = client else { continue };
                        shared.stats().conns += 1;
                        if let Ok(cred) = rustix::net::sockopt::socket_peercred(&client) {
                            lock(&shared.peers).push(cred.pid.as_raw_pid());
                        }
                        // A connection whose target is not there is just closed, as the Python relay does.
                        let _ = relay_connection(client, &target, one_way_delay, &shared);
                    }
                })?
        };
        Ok(Self {
            listen,
            shared,
            stop,
            listener: handle,
            acceptor: Some(acceptor),
        })
    }

    /// The listening socket.
    pub fn path(&self) -> &Path {
        &self.listen
    }

    /// `unix:path=<listening socket>`.
    pub fn address(&self) -> String {
        format!(
            "unix:path={}",
            crate::percent_encode(&self.listen.to_string_lossy())
        )
    }

    /// The counts so far.
    pub fn stats(&self) -> RelayStats {
        *self.shared.stats()
    }

    /// The process ids of the clients whose connections were accepted since the last
    /// [`Relay::reset_stats`], in accept order (one entry per connection).
    pub fn peer_pids(&self) -> Vec<i32> {
        lock(&self.shared.peers).clone()
    }

    /// Every byte each connection carried so far, one transcript per connection in accept
    /// order (bytes a side has sent are recorded before they are passed on, so everything a
    /// peer has received is in). Empty unless started with [`Relay::start_recording`].
    pub fn transcripts(&self) -> Vec<Transcript> {
        self.shared.transcripts.as_ref().map_or_else(Vec::new, |t| {
            t.lock().unwrap_or_else(PoisonError::into_inner).clone()
        })
    }

    /// Sets every count back to zero (to measure one phase of a test).
    pub fn reset_stats(&self) {
        *self.shared.stats() = RelayStats::default();
        lock(&self.shared.peers).clear();
    }
}

impl Drop for Relay {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        // Wake the accept loop so it sees the flag: on Linux, shutting down a listening socket
        // makes a blocked accept() fail, even if someone removed the socket file.
        let _ = rustix::net::shutdown(&self.listener, rustix::net::Shutdown::Read);
        if let Some(acceptor) = self.acceptor.take() {
            let _ = acceptor.join();
        }
        for stream in self
            .shared
            .streams
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .drain(..)
        {
            let _ = stream.shutdown(Shutdown::Both);
        }
        let _ = std::fs::remove_file(&self.listen);
    }
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Direction {
    ClientToServer,
    ServerToClient,
}

fn relay_connection(
    client: UnixStream,
    target: &Path,
    delay: Duration,
    shared: &Arc<Shared>,
) -> io::Result<()> {
    let server = UnixStream::connect(target)?;
    {
        let mut streams = shared
            .streams
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        streams.push(client.try_clone()?);
        streams.push(server.try_clone()?);
    }
    let index = shared.transcripts.as_ref().map(|t| {
        let mut t = t.lock().unwrap_or_else(PoisonError::into_inner);
        t.push(Transcript::default());
        t.len() - 1
    });
    let awaiting_reply = Arc::new(AtomicBool::new(false));
    let link = Link {
        delay,
        shared: Arc::clone(shared),
        awaiting_reply,
        index,
    };
    pump(
        client.try_clone()?,
        server.try_clone()?,
        Direction::ClientToServer,
        link.clone(),
    )?;
    pump(server, client, Direction::ServerToClient, link)
}

/// What both directions of one connection share.
#[derive(Clone)]
struct Link {
    delay: Duration,
    shared: Arc<Shared>,
    awaiting_reply: Arc<AtomicBool>,
    /// The connection's transcript, when recording.
    index: Option<usize>,
}

impl Link {
    fn record(&self, direction: Direction, data: &[u8]) {
        let (Some(t), Some(i)) = (&self.shared.transcripts, self.index) else {
            return;
        };
        let mut t = t.lock().unwrap_or_else(PoisonError::into_inner);
        match direction {
            Direction::ClientToServer => t[i].client_to_server.extend_from_slice(data),
            Direction::ServerToClient => t[i].server_to_client.extend_from_slice(data),
        }
    }
}

/// Copies `from` to `to` with a reader thread (which stamps each chunk with its due time) and a
/// writer thread (which sleeps until then), so chunks keep their order and their spacing.
fn pump(
    mut from: UnixStream,
    mut to: UnixStream,
    direction: Direction,
    link: Link,
) -> io::Result<()> {
    let (tx, rx) = mpsc::channel::<(Instant, Vec<u8>)>();
    thread::Builder::new()
        .name("relay-read".into())
        .spawn(move || {
            let mut buf = vec![0u8; 65536];
            loop {
                let n = match from.read(&mut buf) {
                    Ok(0) | Err(_) => break,
                    Ok(n) => n,
                };
                {
                    let mut stats = link.shared.stats();
                    match direction {
                        Direction::ClientToServer => {
                            stats.c2s_bytes += n as u64;
                            if !link.awaiting_reply.swap(true, Ordering::SeqCst) {
                                stats.round_trips += 1;
                            }
                        }
                        Direction::ServerToClient => {
                            stats.s2c_bytes += n as u64;
                            link.awaiting_reply.store(false, Ordering::SeqCst);
                        }
                    }
                }
                link.record(direction, &buf[..n]);
                if tx
                    .send((Instant::now() + link.delay, buf[..n].to_vec()))
                    .is_err()
                {
                    break;
                }
            }
            // Dropping `tx` tells the writer that this direction has ended.
        })?;
    thread::Builder::new()
        .name("relay-write".into())
        .spawn(move || {
            for (due, data) in rx {
                let now = Instant::now();
                if due > now {
                    thread::sleep(due - now);
                }
                if to.write_all(&data).is_err() {
                    break;
                }
            }
            // Pass the end of this direction on, keeping the other one open.
            let _ = to.shutdown(Shutdown::Write);
        })?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// An echo server on a Unix socket, one thread per connection.
    fn echo_server(path: &Path) -> io::Result<()> {
        let listener = UnixListener::bind(path)?;
        thread::spawn(move || {
            for conn in listener.incoming() {
                let Ok(mut conn) = conn else { return };
                thread::spawn(move || {
                    let mut buf = [0u8; 4096];
                    while let Ok(n) = conn.read(&mut buf) {
                        if n == 0 || conn.write_all(&buf[..n]).is_err() {
                            break;
                        }
                    }
                });
            }
        });
        Ok(())
    }

    fn ping_pong(stream: &mut UnixStream, msg: &[u8]) -> io::Result<()> {
        stream.write_all(msg)?;
        let mut reply = vec![0u8; msg.len()];
        stream.read_exact(&mut reply)?;
        assert_eq!(reply, msg);
        Ok(())
    }

    fn setup(delay: Duration) -> io::Result<(tempfile::TempDir, Relay)> {
        let dir = tempfile::tempdir()?;
        echo_server(&dir.path().join("echo.sock"))?;
        let relay = Relay::start(
            dir.path().join("relay.sock"),
            dir.path().join("echo.sock"),
            delay,
        )?;
        Ok((dir, relay))
    }

    #[test]
    fn relays_without_delay_and_counts_round_trips() -> io::Result<()> {
        let (_dir, relay) = setup(Duration::ZERO)?;
        let mut stream = UnixStream::connect(relay.path())?;
        for i in 0..5u8 {
            ping_pong(&mut stream, &[i; 10])?;
        }
        let stats = relay.stats();
        assert_eq!(
            stats,
            RelayStats {
                conns: 1,
                round_trips: 5,
                c2s_bytes: 50,
                s2c_bytes: 50
            }
        );
        relay.reset_stats();
        assert_eq!(relay.stats(), RelayStats::default());
        Ok(())
    }

    #[test]
    fn delays_each_direction_and_keeps_order() -> io::Result<()> {
        let delay = Duration::from_millis(20);
        let (_dir, relay) = setup(delay)?;
        let mut stream = UnixStream::connect(relay.path())?;
        let start = Instant::now();
        for i in 0..3u8 {
            ping_pong(&mut stream, &[i; 100])?;
        }
        assert!(
            start.elapsed() >= 3 * 2 * delay,
            "took only {:?}",
            start.elapsed()
        );
        assert_eq!(relay.stats().round_trips, 3);

        // Two writes before the reply is one round trip, and the bytes come back in order.
        relay.reset_stats();
        stream.write_all(b"first ")?;
        stream.write_all(b"second")?;
        let mut reply = [0u8; 12];
        stream.read_exact(&mut reply)?;
        assert_eq!(&reply, b"first second");
        assert_eq!(relay.stats().round_trips, 1);
        Ok(())
    }

    #[test]
    fn records_every_byte_of_every_connection() -> io::Result<()> {
        let dir = tempfile::tempdir()?;
        echo_server(&dir.path().join("echo.sock"))?;
        let relay =
            Relay::start_recording(dir.path().join("relay.sock"), dir.path().join("echo.sock"))?;
        for msg in [&b"one"[..], b"two two"] {
            let mut stream = UnixStream::connect(relay.path())?;
            ping_pong(&mut stream, msg)?;
        }
        let t = relay.transcripts();
        assert_eq!(t.len(), 2);
        assert_eq!(t[1].client_to_server, b"two two");
        assert_eq!(t[1].server_to_client, b"two two");
        assert_eq!(t[0].client_to_server, b"one");
        Ok(())
    }

    #[test]
    fn stops_even_when_the_socket_file_is_gone() -> io::Result<()> {
        let (_dir, relay) = setup(Duration::ZERO)?;
        std::fs::remove_file(relay.path())?;
        drop(relay);
        Ok(())
    }

    #[test]
    fn counts_connections_and_passes_end_of_stream() -> io::Result<()> {
        let (_dir, relay) = setup(Duration::from_millis(5))?;
        for _ in 0..2 {
            let mut stream = UnixStream::connect(relay.path())?;
            ping_pong(&mut stream, b"x")?;
            stream.shutdown(Shutdown::Write)?;
            let mut rest = Vec::new();
            stream.read_to_end(&mut rest)?;
            assert!(rest.is_empty());
        }
        let stats = relay.stats();
        assert_eq!((stats.conns, stats.round_trips), (2, 2));
        Ok(())
    }
}
