//! Detecting process exit, for the diagnostics.
//!
//! At `exit()`, glibc destroys the main thread's thread-locals first and only then runs the
//! `atexit` handlers, among them `OPENSSL_cleanup`, which tears providers down. The `tracing`
//! subscriber keeps per-thread state in thread-locals, so tracing from that teardown would panic
//! ("cannot access a Thread Local Storage value during or after destruction"). When our
//! subscriber is installed we register an `atexit` handler of our own: registered after
//! OpenSSL's, it runs before `OPENSSL_cleanup` and switches tracing off (see `trace::install`).

use std::sync::Once;
use std::sync::atomic::{AtomicBool, Ordering};

static EXITING: AtomicBool = AtomicBool::new(false);

/// Whether the process has started running its exit handlers (once [`watch_exit`] was called).
pub(crate) fn exiting() -> bool {
    EXITING.load(Ordering::Relaxed)
}

/// Registers the exit handler, once per process.
pub(crate) fn watch_exit() {
    static REGISTER: Once = Once::new();
    REGISTER.call_once(|| {
        // SAFETY: `mark_exiting` is a plain `extern "C" fn()` that stays mapped for the life of
        // the process (the library is linked `-z nodelete`, see build.rs).
        let rc = unsafe { libc::atexit(mark_exiting) };
        if rc != 0 {
            tracing::debug!(rc, "atexit registration failed; tracing may panic at exit");
        }
    });
}

/// The `atexit` handler. An atomic store cannot panic, so it needs no `entry!` guard.
extern "C" fn mark_exiting() {
    EXITING.store(true, Ordering::Relaxed);
}
