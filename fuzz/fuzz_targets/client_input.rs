//! What a client reads: reply bodies from an untrusted server (first byte picks the call, the
//! next four are the request's mechanism type; see `p11fwd_wire::fuzzing::client_input`).
#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| p11fwd_wire::fuzzing::client_input(data));
