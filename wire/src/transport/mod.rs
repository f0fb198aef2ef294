//! Transports: blocking (for host processes) and tokio (for the forwarder).
pub mod blocking;
#[cfg(feature = "tokio")]
pub mod tokio;
