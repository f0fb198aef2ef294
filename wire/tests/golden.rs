#![allow(clippy::unwrap_used)] // Tests: a panic is the failure report.

//! Golden tests: every frame of every capture between stock p11-kit 0.24.1, 0.25.5 and 0.26.4
//! peers decodes, and re-encodes to the same bytes, in the dialect of the generation that sent
//! it. Requests are encoded by the client's generation, replies by the server's (rpc §14).
//!
//! `vectors/every-call/` holds captures in which a stock client sends every call id of its
//! generation to a stock server of the same generation (made by `tests/capture/`); the
//! coverage of those is asserted per generation.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::path::{Path, PathBuf};

use p11fwd_wire::consts::*;
use p11fwd_wire::frame::{self, Frame, Limits};
use p11fwd_wire::{Arg, CallId, Dialect, Mechanism, Reply, Request, Rv};

struct Capture {
    name: String,
    c2s: Vec<u8>,
    s2c: Vec<u8>,
}

fn vectors() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/vectors")
}

fn load(path: &Path) -> Capture {
    let text = std::fs::read_to_string(path).unwrap();
    let (mut c2s, mut s2c) = (Vec::new(), Vec::new());
    for line in text.lines() {
        let v: serde_json::Value = serde_json::from_str(line).unwrap();
        let Some(h) = v.get("hex").and_then(|h| h.as_str()) else {
            continue;
        };
        let bytes = hex::decode(h).unwrap();
        match v["dir"].as_str().unwrap() {
            "C>S" => c2s.extend(bytes),
            "S>C" => s2c.extend(bytes),
            d => panic!("direction {d}"),
        }
    }
    Capture {
        name: path.display().to_string(),
        c2s,
        s2c,
    }
}

fn dialect_of(generation: &str) -> Dialect {
    match generation {
        "0.24.1" => Dialect::V0,
        "0.25.5" => Dialect::V1,
        "0.26.4" => Dialect::V2,
        g => panic!("unknown generation {g}"),
    }
}

fn frames(bytes: &[u8]) -> Vec<(Frame, Vec<u8>)> {
    let mut out = Vec::new();
    let mut rest = bytes;
    while let Some((f, n)) = frame::parse(rest, Limits::DEFAULT).unwrap() {
        out.push((f, rest[..n].to_vec()));
        rest = &rest[n..];
    }
    // A capture may end inside a frame only if the peer dropped the connection mid-write,
    // which never happens in these captures.
    assert!(rest.is_empty(), "{} trailing bytes", rest.len());
    out
}

fn mech_of(req: &Request) -> Option<u64> {
    req.args.iter().find_map(|a| match a {
        Arg::Mechanism(Some(Mechanism { ty, .. })) => Some(*ty),
        _ => None,
    })
}

/// A size query of CKA_ALLOWED_MECHANISMS: stock servers answer with a count and no elements,
/// which no stock client (and not our decoder) can parse (rpc §3.2).
fn is_allowed_mechanisms_size_query(req: &Request) -> bool {
    req.call == CallId::GetAttributeValue
        && req.args.iter().any(|a| {
            matches!(a, Arg::AttrBuffer(s) if s.iter().any(|s| s.ty == CKA_ALLOWED_MECHANISMS && s.buflen == 0))
        })
}

/// 0.25.4/0.25.5 clients write a stray nested count after template size queries (rpc §14 D2);
/// we decode it but never send it, so the bytes differ by design.
fn has_template_slot(req: &Request) -> bool {
    req.args.iter().any(|a| {
        matches!(a, Arg::AttrBuffer(s) if s.iter().any(|s| p11fwd_wire::dialect::is_template_type(s.ty)))
    })
}

/// Re-encode a C_GetAttributeValue the way 0.25.4/0.25.5 clients lay out `fA`.
fn encode_like_0255(req: &Request) -> Vec<u8> {
    use p11fwd_wire::codec::Writer;
    use p11fwd_wire::value::{AttrBufferLayout, encode_attr_buffer};
    let [
        Arg::Ulong(session),
        Arg::Ulong(object),
        Arg::AttrBuffer(slots),
    ] = req.args.as_slice()
    else {
        panic!("not a C_GetAttributeValue: {req:?}");
    };
    let mut w = Writer::new();
    w.u32(req.call.id());
    w.byte_array(Some(b"uufA")).unwrap();
    w.u64(*session);
    w.u64(*object);
    encode_attr_buffer(&mut w, slots, AttrBufferLayout::NestedAlways).unwrap();
    w.into_inner()
}

#[derive(Default)]
struct Stats {
    requests: usize,
    replies: usize,
    calls: BTreeSet<u32>,
}

/// What came back for one request.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Outcome {
    /// A normal reply, decoded and re-encoded byte for byte.
    Reply,
    /// An ERROR frame, decoded and re-encoded byte for byte.
    Error(Rv),
    /// No reply in the capture (the server dropped the connection).
    Missing,
    /// A reply no stock client can parse either (the CKA_ALLOWED_MECHANISMS size query).
    Unparseable,
}

/// One request of a capture and what came back.
struct Exchange {
    code: u32,
    call: u32,
    outcome: Outcome,
}

fn check(cap: &Capture, client: Dialect, server_gen: &str, stats: &mut Stats) -> Vec<Exchange> {
    let server = dialect_of(server_gen);
    let offered = cap.c2s[0];
    let answered = cap.s2c[0];
    let server_max = server.version();
    assert_eq!(
        answered,
        offered.min(server_max),
        "{}: version answer",
        cap.name
    );
    if server_max == 2 {
        // Our server answers exactly as the newest stock server does.
        assert_eq!(Dialect::answer_offer(offered).version(), answered);
    }
    let replies: HashMap<u32, (Frame, Vec<u8>)> = frames(&cap.s2c[1..])
        .into_iter()
        .map(|(f, b)| (f.code, (f, b)))
        .collect();
    let mut exchanges = Vec::new();
    for (f, raw) in frames(&cap.c2s[1..]) {
        assert_eq!(f.to_bytes(), raw, "{}: frame re-encoding", cap.name);
        assert_eq!(f.options, b"client");
        let req = Request::decode(&f.body, client)
            .unwrap_or_else(|e| panic!("{}: request code 0x{:x}: {e}", cap.name, f.code));
        stats.requests += 1;
        stats.calls.insert(req.call.id());
        let again = req.encode(client).unwrap();
        if client == Dialect::V1 && has_template_slot(&req) {
            assert_eq!(
                encode_like_0255(&req),
                f.body,
                "{}: 0.25.5 fA layout",
                cap.name
            );
        } else {
            assert_eq!(
                again, f.body,
                "{}: {} request re-encoding",
                cap.name, req.call
            );
        }
        let mut exchange = Exchange {
            code: f.code,
            call: req.call.id(),
            outcome: Outcome::Missing,
        };
        let Some((rf, rraw)) = replies.get(&f.code) else {
            exchanges.push(exchange);
            continue;
        };
        assert_eq!(&rf.to_bytes(), rraw);
        assert!(rf.options.is_empty(), "stock servers send no options");
        let decoded = Reply::decode(&rf.body, req.call, server, mech_of(&req));
        let reply = match decoded {
            Ok(r) => r,
            Err(_) if is_allowed_mechanisms_size_query(&req) => {
                exchange.outcome = Outcome::Unparseable;
                exchanges.push(exchange);
                continue;
            }
            Err(e) => panic!(
                "{}: reply to {} (code 0x{:x}): {e}",
                cap.name, req.call, f.code
            ),
        };
        stats.replies += 1;
        exchange.outcome = match &reply {
            Reply::Ok { call, .. } => {
                stats.calls.insert(call.id());
                Outcome::Reply
            }
            Reply::Error(rv) => Outcome::Error(*rv),
        };
        let again = reply.encode(server, mech_of(&req)).unwrap();
        assert_eq!(
            again, rf.body,
            "{}: reply to {} re-encoding",
            cap.name, req.call
        );
        exchanges.push(exchange);
    }
    exchanges
}

/// A capture file and the generations of its two ends.
struct Source {
    path: PathBuf,
    client: String,
    server: String,
}

/// `<client>-to-<server>[.variant]` (every-call files) or `<client>-to-<server>` (directories).
fn split_pair(name: &str) -> Option<(String, String)> {
    let (client, rest) = name.split_once("-to-")?;
    let server = rest.split('.').take(3).collect::<Vec<_>>().join(".");
    Some((client.to_owned(), server))
}

/// Every capture: `vectors/<client>-to-<server>/*.jsonl`, `vectors/p11-kit-0.24.1/*.jsonl`
/// (0.24.1 on both ends) and `vectors/every-call/<client>-to-<server>[.variant].jsonl`.
fn sources() -> Vec<Source> {
    let mut out = Vec::new();
    let jsonl = |dir: &Path| -> Vec<PathBuf> {
        let mut v: Vec<PathBuf> = std::fs::read_dir(dir)
            .unwrap()
            .map(|f| f.unwrap().path())
            .filter(|f| f.extension().is_some_and(|e| e == "jsonl"))
            .collect();
        v.sort();
        v
    };
    for dir in std::fs::read_dir(vectors()).unwrap() {
        let dir = dir.unwrap().path();
        if !dir.is_dir() {
            continue;
        }
        let name = dir.file_name().unwrap().to_string_lossy().into_owned();
        if name == "every-call" {
            for path in jsonl(&dir) {
                let stem = path.file_stem().unwrap().to_string_lossy().into_owned();
                let (client, server) = split_pair(&stem)
                    .unwrap_or_else(|| panic!("{}: not <c>-to-<s>", path.display()));
                out.push(Source {
                    path,
                    client,
                    server,
                });
            }
            continue;
        }
        let (client, server) =
            split_pair(&name).unwrap_or_else(|| ("0.24.1".to_owned(), "0.24.1".to_owned()));
        for path in jsonl(&dir) {
            out.push(Source {
                path,
                client: client.clone(),
                server: server.clone(),
            });
        }
    }
    out
}

#[test]
fn every_captured_frame_round_trips() {
    let mut stats = Stats::default();
    let mut files = 0;
    for src in sources() {
        check(
            &load(&src.path),
            dialect_of(&src.client),
            &src.server,
            &mut stats,
        );
        files += 1;
    }
    assert!(files >= 80, "only {files} captures found");
    assert!(stats.requests > 1500, "{} requests", stats.requests);
    assert!(stats.replies > 1400, "{} replies", stats.replies);
    // Every call the captures exercise, including C_DeriveKey2 (89) and InitToken-free paths.
    for call in [
        1, 2, 3, 4, 5, 6, 7, 8, 10, 11, 13, 18, 19, 24, 26, 27, 28, 29, 30, 31, 32, 33, 34, 37, 38,
        42, 43, 44, 45, 62, 63, 64, 89,
    ] {
        assert!(stats.calls.contains(&call), "call {call} not covered");
    }
}

/// Issue 2: for each generation, its same-generation `every-call` captures contain every call id
/// the generation has as a request, and every one of those requests has a reply (normal or
/// ERROR) that decodes and re-encodes byte for byte.
///
/// A stock client uses C_InitToken (9) only at version 0 and C_InitToken2 (88) from 1, and
/// C_DeriveKey (62) up to version 1 and C_DeriveKey2 (89) at 2 (rpc §2.2), so 0.25.5 and
/// 0.26.4 need two captures: one at their own version and one (`.fallback-v0`) in which the
/// relay refused the first connection like a pre-0.24 server and the client reconnected
/// offering 0.
#[test]
fn every_call_id_of_every_generation() {
    let sources = sources();
    for (generation, dialect) in [
        ("0.24.1", Dialect::V0),
        ("0.25.5", Dialect::V1),
        ("0.26.4", Dialect::V2),
    ] {
        let top = dialect.call_max() - 1;
        let files: Vec<&Source> = sources
            .iter()
            .filter(|s| {
                s.path.parent().unwrap().ends_with("every-call")
                    && s.client == generation
                    && s.server == generation
            })
            .collect();
        let mut negotiated = BTreeSet::new();
        // call id -> (normal replies, ERROR codes)
        let mut answered: BTreeMap<u32, (usize, BTreeSet<Rv>)> = BTreeMap::new();
        for src in &files {
            let cap = load(&src.path);
            let version = cap.s2c[0];
            negotiated.insert(version);
            let exchanges = check(&cap, dialect, generation, &mut Stats::default());
            // The version-dependent ids: exactly the ones `Dialect` picks for this version.
            let ids: BTreeSet<u32> = exchanges.iter().map(|e| e.call).collect();
            let v = Dialect::from_version(version);
            for (used, other) in [
                (v.init_token_call(), [CallId::InitToken, CallId::InitToken2]),
                (v.derive_key_call(), [CallId::DeriveKey, CallId::DeriveKey2]),
            ] {
                assert!(ids.contains(&used.id()), "{}: no {used}", cap.name);
                for o in other.into_iter().filter(|o| *o != used) {
                    assert!(
                        !ids.contains(&o.id()),
                        "{}: {o} sent at version {version}",
                        cap.name
                    );
                }
            }
            for e in exchanges {
                assert!(
                    (1..=top).contains(&e.call),
                    "{}: call id {} is not a {generation} call",
                    cap.name,
                    e.call
                );
                let entry = answered.entry(e.call).or_default();
                match e.outcome {
                    Outcome::Reply => entry.0 += 1,
                    Outcome::Error(rv) => {
                        entry.1.insert(rv);
                    }
                    Outcome::Missing | Outcome::Unparseable => panic!(
                        "{}: request 0x{:x} ({}) has no decodable reply: {:?}",
                        cap.name,
                        e.code,
                        CallId::from_u32(e.call).unwrap(),
                        e.outcome
                    ),
                }
            }
        }
        assert!(
            negotiated.contains(&dialect.version()),
            "{generation}: no capture at its own version {}",
            dialect.version()
        );
        if dialect.version() > 0 {
            assert!(
                negotiated.contains(&0),
                "{generation}: no capture at version 0"
            );
        }
        let missing: Vec<u32> = (1..=top).filter(|i| !answered.contains_key(i)).collect();
        assert!(
            missing.is_empty(),
            "{generation}: call ids never sent (or never answered): {missing:?}"
        );
        // A record for the reader (`cargo test -- --nocapture`): which ids only ever got ERROR.
        let errors: Vec<String> = answered
            .iter()
            .filter(|(_, (ok, _))| *ok == 0)
            .map(|(id, (_, rvs))| format!("{id}:{rvs:?}"))
            .collect();
        eprintln!(
            "{generation}: ids 1..={top} all sent and answered ({} files, versions {negotiated:?}); \
             ERROR only: {}",
            files.len(),
            errors.join(" ")
        );
    }
}

#[test]
fn stock_mechanism_bytes_decode_to_the_right_parameters() {
    // vectors README §4.1, the 0.26.4 client's AES-GCM (v2 framing).
    let m = hex::decode("00001087010000000c000102030405060708090a0b000000000000006000000004aabbccdd0000000000000080").unwrap();
    let mech =
        p11fwd_wire::value::decode_mechanism(&mut p11fwd_wire::codec::Reader::new(&m), Dialect::V2)
            .unwrap()
            .unwrap();
    assert_eq!(mech.ty, CKM_AES_GCM);
    assert_eq!(
        mech.param,
        p11fwd_wire::MechParam::AesGcm {
            iv: Some((0..12).collect()),
            iv_bits: 96,
            aad: Some(vec![0xaa, 0xbb, 0xcc, 0xdd]),
            tag_bits: 128
        }
    );
}
