//! Process-level operations that need `unsafe`: forking into the background and adopting the
//! listening socket systemd passes (`LISTEN_FDS`). Nothing else in the crate outside
//! `module/ffi.rs` uses `unsafe`.
#![allow(unsafe_code)]

use std::os::fd::{FromRawFd, OwnedFd};

/// Which side of a fork we are on.
#[derive(Debug)]
pub enum Forked {
    /// The parent, with the child's PID.
    Parent(u32),
    /// The child.
    Child,
}

/// `fork()`.
///
/// Must be called before any thread is started (in particular before the tokio runtime is
/// built), so that the child is a complete copy of the process.
pub fn fork() -> std::io::Result<Forked> {
    // SAFETY: the caller guarantees the process is single-threaded, so the child inherits no
    // lock held by another thread and may run arbitrary code.
    let pid = unsafe { libc::fork() };
    match pid {
        -1 => Err(std::io::Error::last_os_error()),
        0 => Ok(Forked::Child),
        p => Ok(Forked::Parent(p as u32)),
    }
}

/// The first socket-activation descriptor (`SD_LISTEN_FDS_START`).
const LISTEN_FDS_START: i32 = 3;

/// Take the listening socket passed by systemd, if `LISTEN_PID` is us and `LISTEN_FDS` is 1.
/// The variables are removed so that children do not see them.
pub fn listen_fd() -> Result<Option<OwnedFd>, String> {
    let pid = std::env::var("LISTEN_PID").ok();
    let fds = std::env::var("LISTEN_FDS").ok();
    let (Some(pid), Some(fds)) = (pid, fds) else {
        return Ok(None);
    };
    if pid.trim().parse::<u32>().ok() != Some(std::process::id()) {
        return Ok(None);
    }
    let n: i32 = fds
        .trim()
        .parse()
        .map_err(|_| format!("bad LISTEN_FDS {fds:?}"))?;
    if n != 1 {
        return Err(format!("LISTEN_FDS={n}: exactly one socket is supported"));
    }
    // SAFETY: removing variables while no other thread exists (we run before the runtime).
    unsafe {
        std::env::remove_var("LISTEN_PID");
    }
    // SAFETY: as above.
    unsafe {
        std::env::remove_var("LISTEN_FDS");
    }
    // SAFETY: systemd passes an open descriptor at LISTEN_FDS_START that nothing else in this
    // process owns; we take ownership of it exactly once.
    let fd = unsafe { OwnedFd::from_raw_fd(LISTEN_FDS_START) };
    check_listener(&fd)?;
    // Like sd_listen_fds(): nothing we might start inherits it.
    rustix::io::fcntl_setfd(&fd, rustix::io::FdFlags::CLOEXEC)
        .map_err(|e| format!("LISTEN_FDS: fd 3: {e}"))?;
    Ok(Some(fd))
}

/// The descriptor must be a listening Unix stream socket: anything else would only fail later,
/// at the first accept.
fn check_listener(fd: &OwnedFd) -> Result<(), String> {
    use rustix::net::{AddressFamily, SocketType, sockopt};
    let what = |e: rustix::io::Errno| format!("LISTEN_FDS: fd 3 is not a socket ({e})");
    let domain = sockopt::socket_domain(fd).map_err(what)?;
    let ty = sockopt::socket_type(fd).map_err(what)?;
    let listening = sockopt::socket_acceptconn(fd).map_err(what)?;
    if domain != AddressFamily::UNIX || ty != SocketType::STREAM || !listening {
        return Err(format!(
            "LISTEN_FDS: fd 3 must be a listening Unix stream socket (family {domain:?}, type \
             {ty:?}, listening {listening})"
        ));
    }
    Ok(())
}
