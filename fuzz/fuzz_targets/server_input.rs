//! What a server reads: frames and request bodies from an untrusted client, in every dialect.
#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| p11fwd_wire::fuzzing::server_input(data));
