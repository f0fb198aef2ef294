//! Entry points for the fuzz targets in `fuzz/` (not a stable API).

use crate::frame::{self, Limits};
use crate::{CallId, Dialect, Reply, Request};

/// Feed bytes to the server side: frames, then request bodies, in every dialect.
pub fn server_input(data: &[u8]) {
    let mut buf = data;
    while let Ok(Some((f, n))) = frame::parse(buf, Limits::DEFAULT) {
        for d in [Dialect::V0, Dialect::V1, Dialect::V2] {
            if let Ok(req) = Request::decode(&f.body, d) {
                // Whatever decodes must encode again.
                let _ = req.encode(d);
            }
        }
        buf = &buf[n..];
    }
    for d in [Dialect::V0, Dialect::V1, Dialect::V2] {
        let _ = Request::decode(data, d);
    }
}

/// Feed bytes to the client side: reply bodies for every call, in every dialect.
///
/// Input: one byte that picks the call, the mechanism type of the request as a big-endian `u32`
/// (what a `C_DeriveKey2` reply's parameter update is decoded by), then the reply body. The
/// call and the mechanism are separate bytes, so every update codec is reachable.
pub fn client_input(data: &[u8]) {
    let [selector, m0, m1, m2, m3, body @ ..] = data else {
        return;
    };
    let call = CallId::ALL[usize::from(*selector) % CallId::ALL.len()];
    let mech = u64::from(u32::from_be_bytes([*m0, *m1, *m2, *m3]));
    for d in [Dialect::V0, Dialect::V1, Dialect::V2] {
        let _ = Reply::decode(body, call, d, Some(mech));
    }
    let mut buf = data;
    while let Ok(Some((_, n))) = frame::parse(buf, Limits::DEFAULT) {
        buf = &buf[n..];
    }
}
