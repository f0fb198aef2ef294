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
pub fn client_input(data: &[u8]) {
    let Some((&selector, body)) = data.split_first() else {
        return;
    };
    let call = CallId::ALL[usize::from(selector) % CallId::ALL.len()];
    for d in [Dialect::V0, Dialect::V1, Dialect::V2] {
        let _ = Reply::decode(body, call, d, Some(u64::from(selector)));
    }
    let mut buf = data;
    while let Ok(Some((_, n))) = frame::parse(buf, Limits::DEFAULT) {
        buf = &buf[n..];
    }
}
