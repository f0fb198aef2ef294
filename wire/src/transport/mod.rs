//! The blocking transport (for host processes). There is no async one: the forwarder frames
//! its connections itself (`docs/design.md` §2.3).
pub mod blocking;
