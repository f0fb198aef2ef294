//! Live interop of `wire`'s blocking transport and typed client with the stock `p11-kit server`
//! 0.24.1 (protocol version 0) in front of SoftHSM: every group of calls a client needs, checked
//! against the token, and signatures checked by `openssl` with the fixture's public keys.

#![allow(clippy::unwrap_used)] // Tests: a panic is the failure report.

use std::io::{Read, Write};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::Path;
use std::process::Command;
use std::sync::Arc;

use p11fwd_tests::{Key, StockServer, TestToken, require_tool, run_ok};
use p11fwd_wire::client::{Client, OutCap, Output, parse, req};
use p11fwd_wire::consts::*;
use p11fwd_wire::info::unpad;
use p11fwd_wire::transport::blocking::{Connection, Options};
use p11fwd_wire::value::AttrSlot;
use p11fwd_wire::{Attribute, CallId, Dialect, Error, MechParam, Mechanism, Rv, Value};

fn connect(server: &StockServer) -> Client {
    Client::connect(server.socket_path(), Options::default()).expect("connect to the stock server")
}

/// Initialize, open a session on the only slot, log in.
fn logged_in(client: &Client, token: &TestToken) -> u64 {
    client.initialize(None).unwrap();
    let slot = client.slots(true).unwrap()[0];
    let s = client
        .open_session(slot, CKF_SERIAL_SESSION | CKF_RW_SESSION)
        .unwrap();
    client
        .login(s, CKU_USER, Some(token.user_pin().as_bytes()))
        .unwrap();
    s
}

fn find_one(client: &Client, s: u64, class: u64, label: &str) -> u64 {
    let found = client
        .find_all(
            s,
            vec![
                Attribute::ulong(CKA_CLASS, class),
                Attribute::bytes(CKA_LABEL, label),
            ],
            8,
        )
        .unwrap();
    assert_eq!(found.len(), 1, "{label}: {found:?}");
    found[0]
}

fn sign(client: &Client, s: u64, key: u64, mech: Mechanism, data: &[u8]) -> Vec<u8> {
    client.sign_init(s, Some(mech), key).unwrap();
    match client.sign(s, data, OutCap::Buffer(1024)).unwrap() {
        Output::Data(d) => d,
        other => panic!("no signature: {other:?}"),
    }
}

fn openssl() -> Command {
    Command::new(require_tool("openssl"))
}

fn write(dir: &Path, name: &str, data: &[u8]) -> std::path::PathBuf {
    let p = dir.join(name);
    std::fs::write(&p, data).unwrap();
    p
}

/// ECDSA r|s as a DER `SEQUENCE { INTEGER r, INTEGER s }`, for `openssl pkeyutl -verify`.
fn ecdsa_der(raw: &[u8]) -> Vec<u8> {
    fn int(x: &[u8]) -> Vec<u8> {
        let mut x = x
            .iter()
            .copied()
            .skip_while(|b| *b == 0)
            .collect::<Vec<_>>();
        if x.is_empty() || x[0] & 0x80 != 0 {
            x.insert(0, 0);
        }
        let mut v = vec![0x02, x.len() as u8];
        v.extend(x);
        v
    }
    let (r, s) = raw.split_at(raw.len() / 2);
    let body = [int(r), int(s)].concat();
    let mut v = vec![0x30];
    if body.len() >= 0x80 {
        v.push(0x81);
    }
    v.push(body.len() as u8);
    v.extend(body);
    v
}

#[test]
fn general_slot_and_token_calls_against_p11_kit_0_24() {
    let token = TestToken::builder()
        .with(Key::Rsa2048)
        .with(Key::EcP256)
        .build();
    let server = StockServer::start(&token);
    let client = connect(&server);
    // The stock 0.24 server answers 0 to our offer of 2.
    assert_eq!(client.dialect(), Dialect::V0);
    // Calls before C_Initialize are refused by the server's proxy.
    let err = client.get_slot_info(0x11).unwrap_err();
    assert_eq!(err.rv(), Rv(CKR_CRYPTOKI_NOT_INITIALIZED));
    client.initialize(None).unwrap();
    let info = client.get_info().unwrap();
    assert_eq!(unpad(&info.manufacturer_id), "PKCS#11 Kit");
    assert_eq!(
        (info.cryptoki_version.major, info.cryptoki_version.minor),
        (2, 40)
    );
    let slots = client.slots(true).unwrap();
    assert_eq!(slots, vec![0x11]);
    // The exact buffer conventions: a size query, then a buffer too small.
    assert_eq!(
        client.get_slot_list(false, OutCap::Query).unwrap(),
        p11fwd_wire::client::UlongOutput::Size(1)
    );
    let slot_info = client.get_slot_info(0x11).unwrap();
    assert!(slot_info.flags & CKF_TOKEN_PRESENT != 0);
    let ti = client.get_token_info(0x11).unwrap();
    assert_eq!(unpad(&ti.label), token.label());
    assert!(ti.flags & CKF_LOGIN_REQUIRED != 0);
    // The server side does not filter mechanisms; SoftHSM 2.6.1 offers 70.
    let mechs = client.mechanisms(0x11).unwrap();
    assert!(mechs.len() >= 60, "{}", mechs.len());
    for m in [
        CKM_RSA_PKCS,
        CKM_RSA_PKCS_PSS,
        CKM_ECDSA,
        CKM_EDDSA,
        CKM_SHA256_RSA_PKCS_PSS,
        CKM_AES_GCM,
    ] {
        assert!(mechs.contains(&m), "{m:#x} missing");
    }
    let mi = client.get_mechanism_info(0x11, CKM_RSA_PKCS_PSS).unwrap();
    assert!(mi.flags & CKF_SIGN != 0 && mi.max_key_size >= 2048);
    let err = client.get_slot_info(0x99).unwrap_err();
    assert!(matches!(
        err,
        Error::Rv {
            call: CallId::GetSlotInfo,
            rv: Rv(CKR_SLOT_ID_INVALID)
        }
    ));
    // The connection survives error replies.
    assert_eq!(client.slots(true).unwrap(), vec![0x11]);
    client.finalize().unwrap();
}

#[test]
fn sessions_login_find_and_attributes_against_p11_kit_0_24() {
    let token = TestToken::builder()
        .with(Key::Rsa2048)
        .with(Key::RsaPss)
        .with(Key::Aes256)
        .build();
    let server = StockServer::start(&token);
    let client = connect(&server);
    client.initialize(None).unwrap();
    let s = client.open_session(0x11, CKF_SERIAL_SESSION).unwrap();
    assert_eq!(
        client.get_session_info(s).unwrap().state,
        CKS_RO_PUBLIC_SESSION
    );
    // Without login no private key is visible.
    let none = client
        .find_all(s, vec![Attribute::ulong(CKA_CLASS, CKO_PRIVATE_KEY)], 8)
        .unwrap();
    assert!(none.is_empty());
    let err = client.login(s, CKU_USER, Some(b"000000")).unwrap_err();
    assert!(
        matches!(
            err,
            Error::Rv {
                call: CallId::Login,
                rv: Rv(CKR_PIN_INCORRECT)
            }
        ),
        "{err:?}"
    );
    client
        .login(s, CKU_USER, Some(token.user_pin().as_bytes()))
        .unwrap();
    assert_eq!(
        client.get_session_info(s).unwrap().state,
        CKS_RO_USER_FUNCTIONS
    );
    let key = find_one(&client, s, CKO_PRIVATE_KEY, "rsa2048");

    // A size query, then the value.
    let (attrs, rv) = client
        .get_attribute_value(
            s,
            key,
            vec![AttrSlot {
                ty: CKA_MODULUS,
                buflen: 0,
                nested: None,
            }],
        )
        .unwrap();
    assert_eq!(rv, Rv::OK);
    assert_eq!(attrs[0].native_len(), Some(256));
    assert_eq!(attrs[0].value(), Some(&Value::Bytes(None)));
    let attrs = client
        .attributes(
            s,
            key,
            &[CKA_MODULUS, CKA_PUBLIC_EXPONENT, CKA_KEY_TYPE, CKA_SIGN],
            1024,
        )
        .unwrap();
    assert_eq!(attrs[0].as_bytes().map(<[u8]>::len), Some(256));
    assert_eq!(attrs[1].as_bytes(), Some(&[1u8, 0, 1][..]));
    assert_eq!(attrs[2].as_ulong(), Some(CKK_RSA));
    assert_eq!(attrs[3].as_bool(), Some(true));
    // Sensitive, unknown, and too small, embedded in a normal reply (rpc §3.2).
    let (attrs, rv) = client
        .get_attribute_value(
            s,
            key,
            vec![
                AttrSlot {
                    ty: CKA_PRIVATE_EXPONENT,
                    buflen: 512,
                    nested: None,
                },
                AttrSlot {
                    ty: 0x0bad_beef,
                    buflen: 8,
                    nested: None,
                },
            ],
        )
        .unwrap();
    assert!(
        rv == Rv(CKR_ATTRIBUTE_SENSITIVE) || rv == Rv(CKR_ATTRIBUTE_TYPE_INVALID),
        "{rv:?}"
    );
    assert!(attrs.iter().all(Attribute::is_unavailable));
    let (attrs, rv) = client
        .get_attribute_value(
            s,
            key,
            vec![AttrSlot {
                ty: CKA_MODULUS,
                buflen: 4,
                nested: None,
            }],
        )
        .unwrap();
    assert_eq!(rv, Rv(CKR_BUFFER_TOO_SMALL));
    assert!(attrs[0].is_unavailable());

    // CKA_ALLOWED_MECHANISMS with a buffer (a size query would fail against stock servers).
    let pss = find_one(&client, s, CKO_PRIVATE_KEY, "rsa-pss");
    let attrs = client
        .attributes(s, pss, &[CKA_ALLOWED_MECHANISMS], 512)
        .unwrap();
    let allowed = attrs[0].as_mechanisms().unwrap();
    assert!(
        allowed.contains(&CKM_RSA_PKCS_PSS) && !allowed.contains(&CKM_RSA_PKCS),
        "{allowed:x?}"
    );

    // Multi-part find.
    client.find_objects_init(s, vec![]).unwrap();
    let mut all = Vec::new();
    loop {
        let batch = client.find_objects(s, 2).unwrap();
        if batch.is_empty() {
            break;
        }
        all.extend(batch);
    }
    client.find_objects_final(s).unwrap();
    assert_eq!(
        all.len(),
        2 + 1 + 2 + 1,
        "rsa2048 pair + cert, rsa-pss pair, aes256"
    );

    client.logout(s).unwrap();
    assert_eq!(
        client.get_session_info(s).unwrap().state,
        CKS_RO_PUBLIC_SESSION
    );
    client.close_session(s).unwrap();
    assert_eq!(
        client.get_session_info(s).unwrap_err().rv(),
        Rv(CKR_SESSION_HANDLE_INVALID)
    );
    client.finalize().unwrap();
}

#[test]
fn signatures_verify_with_openssl() {
    let token = TestToken::builder()
        .with(Key::Rsa2048)
        .with(Key::EcP256)
        .build();
    let server = StockServer::start(&token);
    let client = connect(&server);
    let s = logged_in(&client, &token);
    let dir = tempfile::tempdir().unwrap();
    let data = b"hello over the p11-kit RPC protocol";
    let data_path = write(dir.path(), "data", data);
    let rsa = find_one(&client, s, CKO_PRIVATE_KEY, "rsa2048");
    let rsa_pub = token.public_pem("rsa2048");

    // PKCS#1 v1.5 with SHA-256 on the token.
    let sig = sign(&client, s, rsa, Mechanism::new(CKM_SHA256_RSA_PKCS), data);
    let sig_path = write(dir.path(), "rsa.sig", &sig);
    run_ok(
        openssl()
            .args(["dgst", "-sha256", "-verify"])
            .arg(&rsa_pub)
            .arg("-signature")
            .arg(&sig_path)
            .arg(&data_path),
    );

    // RSA-PSS over a digest we computed.
    let digest = {
        let out = run_ok(
            openssl()
                .args(["dgst", "-sha256", "-binary"])
                .arg(&data_path),
        );
        out.stdout_bytes.clone()
    };
    let pss = MechParam::RsaPkcsPss {
        hash_alg: CKM_SHA256,
        mgf: CKG_MGF1_SHA256,
        salt_len: 32,
    };
    let sig = sign(
        &client,
        s,
        rsa,
        Mechanism::with(CKM_RSA_PKCS_PSS, pss.clone()),
        &digest,
    );
    let sig_path = write(dir.path(), "pss.sig", &sig);
    let verify_pss = |sig: &Path| {
        run_ok(
            openssl()
                .args([
                    "dgst",
                    "-sha256",
                    "-sigopt",
                    "rsa_padding_mode:pss",
                    "-sigopt",
                    "rsa_pss_saltlen:32",
                    "-verify",
                ])
                .arg(&rsa_pub)
                .arg("-signature")
                .arg(sig)
                .arg(&data_path),
        );
    };
    verify_pss(&sig_path);
    // Hashed PSS: 0.24.1 has no serializer for it, so the parameters travel as native bytes
    // and the stock server hands them to SoftHSM unchanged (a mechanism its client refuses).
    let sig = sign(
        &client,
        s,
        rsa,
        Mechanism::with(CKM_SHA256_RSA_PKCS_PSS, pss),
        data,
    );
    let sig_path = write(dir.path(), "hashed-pss.sig", &sig);
    verify_pss(&sig_path);

    // ECDSA P-256 over the digest.
    let ec = find_one(&client, s, CKO_PRIVATE_KEY, "ec-p256");
    let raw = sign(&client, s, ec, Mechanism::new(CKM_ECDSA), &digest);
    assert_eq!(raw.len(), 64);
    let sig_path = write(dir.path(), "ec.sig", &ecdsa_der(&raw));
    run_ok(
        openssl()
            .args(["dgst", "-sha256", "-verify"])
            .arg(token.public_pem("ec-p256"))
            .arg("-signature")
            .arg(&sig_path)
            .arg(&data_path),
    );

    // Buffer conventions of C_Sign through the stock server (rpc §4).
    client
        .sign_init(s, Some(Mechanism::new(CKM_SHA256_RSA_PKCS)), rsa)
        .unwrap();
    assert_eq!(
        client.sign(s, data, OutCap::Query).unwrap(),
        Output::Size(256)
    );
    assert_eq!(
        client.sign(s, data, OutCap::Buffer(16)).unwrap(),
        Output::Size(256)
    );
    assert!(
        matches!(client.sign(s, data, OutCap::Buffer(256)).unwrap(), Output::Data(d) if d.len() == 256)
    );

    // Pipelined: SignInit and Sign in one write, one round trip.
    let results = client.connection().call_batch(&[
        req::init_with_key(CallId::SignInit, s, Some(Mechanism::new(CKM_ECDSA)), ec),
        req::data_in_out(
            client.dialect(),
            CallId::Sign,
            s,
            &digest,
            OutCap::Buffer(64),
        ),
    ]);
    let mut it = results.into_iter();
    parse::unit(it.next().unwrap().unwrap()).unwrap();
    assert!(
        matches!(parse::output(it.next().unwrap().unwrap()).unwrap(), Output::Data(d) if d.len() == 64)
    );
    client.finalize().unwrap();
}

#[test]
fn decryption_digest_and_random() {
    let token = TestToken::builder().with(Key::Rsa2048).build();
    let server = StockServer::start(&token);
    let client = connect(&server);
    let s = logged_in(&client, &token);
    let dir = tempfile::tempdir().unwrap();
    let key = find_one(&client, s, CKO_PRIVATE_KEY, "rsa2048");
    let secret = b"a secret for the token";
    let plain = write(dir.path(), "plain", secret);

    for (padding, mech) in [
        ("pkcs1", Mechanism::new(CKM_RSA_PKCS)),
        (
            "oaep",
            Mechanism::with(
                CKM_RSA_PKCS_OAEP,
                MechParam::RsaPkcsOaep {
                    hash_alg: CKM_SHA_1,
                    mgf: CKG_MGF1_SHA1,
                    source: CKZ_DATA_SPECIFIED,
                    source_data: None,
                },
            ),
        ),
    ] {
        let enc = dir.path().join(format!("{padding}.enc"));
        run_ok(
            openssl()
                .args(["pkeyutl", "-encrypt", "-pubin", "-inkey"])
                .arg(token.public_pem("rsa2048"))
                .args(["-pkeyopt", &format!("rsa_padding_mode:{padding}"), "-in"])
                .arg(&plain)
                .arg("-out")
                .arg(&enc),
        );
        let ciphertext = std::fs::read(&enc).unwrap();
        client.decrypt_init(s, Some(mech), key).unwrap();
        // Size query first, as applications do; then the real call.
        let Output::Size(n) = client.decrypt(s, &ciphertext, OutCap::Query).unwrap() else {
            panic!()
        };
        assert!(n >= secret.len() as u64);
        let out = client.decrypt(s, &ciphertext, OutCap::Buffer(n)).unwrap();
        assert_eq!(out, Output::Data(secret.to_vec()), "{padding}");
    }

    client
        .digest_init(s, Some(Mechanism::new(CKM_SHA256)))
        .unwrap();
    let d = client.digest(s, b"abc", OutCap::Buffer(32)).unwrap();
    let expected = "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad";
    let Output::Data(d) = d else { panic!() };
    assert_eq!(
        d.iter().map(|b| format!("{b:02x}")).collect::<String>(),
        expected
    );

    let Output::Data(r1) = client.generate_random(s, OutCap::Buffer(32)).unwrap() else {
        panic!()
    };
    let Output::Data(r2) = client.generate_random(s, OutCap::Buffer(32)).unwrap() else {
        panic!()
    };
    assert_eq!(r1.len(), 32);
    assert_ne!(r1, r2);
    client.logout(s).unwrap();
    client.finalize().unwrap();
}

#[test]
fn threads_share_one_connection() {
    let token = TestToken::builder().with(Key::EcP256).build();
    let server = StockServer::start(&token);
    let client = Arc::new(connect(&server));
    let s = logged_in(&client, &token);
    let key = find_one(&client, s, CKO_PRIVATE_KEY, "ec-p256");
    let threads: Vec<_> = (0..8)
        .map(|_| {
            let client = client.clone();
            std::thread::spawn(move || {
                let s = client.open_session(0x11, CKF_SERIAL_SESSION).unwrap();
                for _ in 0..20 {
                    client
                        .sign_init(s, Some(Mechanism::new(CKM_ECDSA)), key)
                        .unwrap();
                    let out = client.sign(s, &[7; 32], OutCap::Buffer(64)).unwrap();
                    assert!(matches!(out, Output::Data(d) if d.len() == 64));
                }
                client.close_session(s).unwrap();
            })
        })
        .collect();
    for t in threads {
        t.join().unwrap();
    }
    client.finalize().unwrap();
}

#[test]
fn version_fallback_when_the_server_closes_on_a_nonzero_offer() {
    // A p11-kit 0.23 / go-p11-kit style front: it closes the connection unless offered 0, then
    // relays to the real server. The client must reconnect and offer 0 (rpc §2.2).
    let token = TestToken::builder().with(Key::EcP256).build();
    let server = StockServer::start(&token);
    let dir = tempfile::tempdir().unwrap();
    let front = dir.path().join("old.sock");
    let listener = UnixListener::bind(&front).unwrap();
    let upstream = server.socket_path().to_owned();
    let offers = Arc::new(std::sync::Mutex::new(Vec::new()));
    let seen = offers.clone();
    std::thread::spawn(move || {
        for conn in listener.incoming() {
            let mut c = conn.unwrap();
            let mut b = [0u8];
            if c.read_exact(&mut b).is_err() {
                continue;
            }
            seen.lock().unwrap().push(b[0]);
            if b[0] != 0 {
                continue; // drop: what old servers do
            }
            let mut up = UnixStream::connect(&upstream).unwrap();
            up.write_all(&[0]).unwrap();
            let (mut c2, mut up2) = (c.try_clone().unwrap(), up.try_clone().unwrap());
            std::thread::spawn(move || std::io::copy(&mut up2, &mut c2));
            std::thread::spawn(move || std::io::copy(&mut c, &mut up));
        }
    });
    let conn = Connection::connect(&front, Options::default()).unwrap();
    assert_eq!(conn.dialect(), Dialect::V0);
    assert_eq!(*offers.lock().unwrap(), vec![2, 0]);
    let client = Client::new(conn);
    client.initialize(None).unwrap();
    assert_eq!(client.slots(true).unwrap(), vec![0x11]);
    // The same fallback when C_Initialize travels with the version byte.
    let client = Client::connect_initialized(&front, Options::default(), None).unwrap();
    assert_eq!(client.dialect(), Dialect::V0);
    assert_eq!(*offers.lock().unwrap(), vec![2, 0, 2, 0]);
    assert_eq!(client.slots(true).unwrap(), vec![0x11]);
}

#[test]
fn calls_the_server_cannot_take_are_refused_locally() {
    let token = TestToken::builder().with(Key::EcP256).build();
    let server = StockServer::start(&token);
    let client = connect(&server);
    let s = logged_in(&client, &token);
    // Call ids >= 66 would make a 0.24 server drop the connection (rpc §6).
    let err = client.session_cancel(s, 0).unwrap_err();
    assert_eq!(err.rv(), Rv(CKR_FUNCTION_NOT_SUPPORTED));
    // A cancel (NULL mechanism) and ECDH parameters cannot be expressed to 0.24 either.
    assert_eq!(
        client.sign_init(s, None, 1).unwrap_err().rv(),
        Rv(CKR_FUNCTION_NOT_SUPPORTED)
    );
    let ecdh = Mechanism::with(
        CKM_ECDH1_DERIVE,
        MechParam::Ecdh1Derive {
            kdf: CKD_NULL,
            shared_data: None,
            public_data: Some(vec![4; 65]),
        },
    );
    let err = client.derive_key(s, ecdh, 1, vec![]).unwrap_err();
    assert_eq!(err.rv(), Rv(CKR_MECHANISM_PARAM_INVALID));
    // None of that reached (or hurt) the server.
    assert!(!client.connection().is_broken());
    assert_eq!(client.slots(true).unwrap(), vec![0x11]);
}

#[test]
fn initialize_travels_with_the_version_byte() {
    // One round trip for connect + version + C_Initialize + C_GetSlotList, against the stock
    // 0.24.1 server, counted by a relay.
    let token = TestToken::builder().with(Key::EcP256).build();
    let server = StockServer::start(&token);
    let dir = tempfile::tempdir().unwrap();
    let relay = p11fwd_tests::relay::Relay::start(
        dir.path().join("relay.sock"),
        server.socket_path(),
        std::time::Duration::from_millis(5),
    )
    .unwrap();
    let (conn, replies) = Connection::connect_with(
        relay.path(),
        Options::default(),
        &[
            req::initialize(None),
            req::get_slot_list(true, OutCap::Buffer(16)),
        ],
    )
    .unwrap();
    assert_eq!(conn.dialect(), Dialect::V0);
    let mut replies = replies.into_iter();
    parse::unit(replies.next().unwrap().unwrap()).unwrap();
    let slots = parse::ulong_output(replies.next().unwrap().unwrap()).unwrap();
    assert_eq!(slots, p11fwd_wire::client::UlongOutput::Data(vec![0x11]));
    assert_eq!(relay.stats().round_trips, 1, "{:?}", relay.stats());
    // The connection goes on normally, codes continuing after the first requests.
    let client = Client::new(conn);
    assert_eq!(
        unpad(&client.get_token_info(0x11).unwrap().label),
        token.label()
    );
    assert_eq!(relay.stats().round_trips, 2);

    // The typed helper: connect + C_Initialize in one round trip.
    relay.reset_stats();
    let client = Client::connect_initialized(relay.path(), Options::default(), None).unwrap();
    assert_eq!(client.slots(true).unwrap(), vec![0x11]);
    assert_eq!(relay.stats().round_trips, 2, "{:?}", relay.stats());

    // A request whose bytes depend on the version cannot go first.
    let err = Connection::connect_with(
        server.socket_path(),
        Options::default(),
        &[req::digest_init(0x11, Some(Mechanism::new(CKM_SHA256)))],
    )
    .unwrap_err();
    assert!(matches!(err, Error::Invalid(_)), "{err:?}");
}

#[test]
fn large_replies_arrive_whole() {
    // A 64 KiB random buffer: several recv calls into the connection's inbox.
    let token = TestToken::builder().with(Key::EcP256).build();
    let server = StockServer::start(&token);
    let client =
        Client::connect_initialized(server.socket_path(), Options::default(), None).unwrap();
    let s = client.open_session(0x11, CKF_SERIAL_SESSION).unwrap();
    let Output::Data(r) = client.generate_random(s, OutCap::Buffer(65536)).unwrap() else {
        panic!()
    };
    assert_eq!(r.len(), 65536);
    assert!(r.iter().any(|b| *b != 0));
}

/// A call that reached the server: its value, or `None` for a CK_RV the server (or SoftHSM)
/// answered. Anything else (a broken stream, a reply we could not decode) fails the test.
fn answered<T>(what: &str, r: p11fwd_wire::Result<T>) -> Option<T> {
    match r {
        Ok(v) => Some(v),
        Err(Error::Rv { .. }) => None,
        Err(e) => panic!("{what}: {e:?}"),
    }
}

/// The scratch token next to the fixture's one, for C_InitToken / C_InitPIN / C_SetPIN.
const SCRATCH: &str = "scratch";

/// Every call id the stock 0.24.1 server knows (1..=65) goes out once through the typed client
/// and comes back as a decodable reply (normal or CK_RV); every later id (66..=89) is refused
/// locally and never reaches the server, which would drop the connection (rpc §6). The bytes
/// are checked at a recording relay, not taken from the client's word.
#[test]
fn every_call_id_reaches_p11_kit_0_24_and_later_ids_are_refused_locally() {
    let token = TestToken::builder().with(Key::EcP256).build();
    run_ok(token.command(require_tool("softhsm2-util")).args([
        "--init-token",
        "--free",
        "--label",
        SCRATCH,
        "--pin",
        "000000",
        "--so-pin",
        token.so_pin(),
    ]));
    let server = StockServer::start_uri(&token, "pkcs11:model=SoftHSM%20v2");
    let dir = tempfile::tempdir().unwrap();
    let relay = p11fwd_tests::relay::Relay::start_recording(
        dir.path().join("rec.sock"),
        server.socket_path(),
    )
    .unwrap();
    let c = Client::connect(relay.path(), Options::default()).unwrap();
    assert_eq!(c.dialect(), Dialect::V0);
    let pin = token.user_pin().as_bytes();

    // General and slot calls (1-8).
    c.initialize(None).unwrap();
    c.get_info().unwrap();
    c.get_slot_list(true, OutCap::Query).unwrap();
    let slots = c.slots(true).unwrap();
    // The fixture's token, the scratch one, and SoftHSM's free slot.
    assert_eq!(slots.len(), 3, "{slots:?}");
    c.get_slot_info(slots[0]).unwrap();
    let slot_of = |label: &str| {
        *slots
            .iter()
            .find(|s| unpad(&c.get_token_info(**s).unwrap().label) == label)
            .unwrap_or_else(|| panic!("no token {label}"))
    };
    let (main, scratch) = (slot_of(token.label()), slot_of(SCRATCH));
    c.get_mechanism_list(main, OutCap::Query).unwrap();
    c.get_mechanism_info(main, CKM_SHA256).unwrap();

    // Token and PIN management on the scratch token (9, 12, 14, 15).
    let mut label = [b' '; 32];
    label[..SCRATCH.len()].copy_from_slice(SCRATCH.as_bytes());
    c.init_token(scratch, Some(token.so_pin().as_bytes()), &label)
        .unwrap();
    let so = c
        .open_session(scratch, CKF_SERIAL_SESSION | CKF_RW_SESSION)
        .unwrap();
    c.login(so, CKU_SO, Some(token.so_pin().as_bytes()))
        .unwrap();
    c.init_pin(so, Some(b"111111")).unwrap();
    c.logout(so).unwrap();
    c.login(so, CKU_USER, Some(b"111111")).unwrap();
    c.set_pin(so, Some(b"111111"), Some(b"222222")).unwrap();
    c.close_all_sessions(scratch).unwrap();

    // Sessions and objects (10, 13, 16-28).
    let s = c
        .open_session(main, CKF_SERIAL_SESSION | CKF_RW_SESSION)
        .unwrap();
    c.get_session_info(s).unwrap();
    c.login(s, CKU_USER, Some(pin)).unwrap();
    answered("GetOperationState", c.get_operation_state(s, OutCap::Query));
    answered(
        "SetOperationState",
        c.set_operation_state(s, b"state", 0, 0),
    );
    let data_obj = c
        .create_object(
            s,
            vec![
                Attribute::ulong(CKA_CLASS, CKO_DATA),
                Attribute::bool(CKA_TOKEN, false),
                Attribute::bytes(CKA_LABEL, "wire-data"),
                Attribute::bytes(CKA_VALUE, "hello"),
            ],
        )
        .unwrap();
    let copy = c
        .copy_object(s, data_obj, vec![Attribute::bytes(CKA_LABEL, "wire-copy")])
        .unwrap();
    answered("GetObjectSize", c.get_object_size(s, data_obj));
    c.get_attribute_value(
        s,
        data_obj,
        vec![AttrSlot {
            ty: CKA_LABEL,
            buflen: 64,
            nested: None,
        }],
    )
    .unwrap();
    c.set_attribute_value(s, copy, vec![Attribute::bytes(CKA_LABEL, "renamed")])
        .unwrap();
    c.destroy_object(s, copy).unwrap();
    c.find_objects_init(s, vec![Attribute::bytes(CKA_LABEL, "wire-data")])
        .unwrap();
    assert_eq!(c.find_objects(s, 4).unwrap(), vec![data_obj]);
    c.find_objects_final(s).unwrap();

    // Keys (58, 59), made through the RPC.
    let aes = c
        .generate_key(
            s,
            Mechanism::new(CKM_AES_KEY_GEN),
            vec![
                Attribute::ulong(CKA_CLASS, CKO_SECRET_KEY),
                Attribute::ulong(CKA_KEY_TYPE, CKK_AES),
                Attribute::ulong(CKA_VALUE_LEN, 32),
                Attribute::bool(CKA_TOKEN, false),
                Attribute::bool(CKA_ENCRYPT, true),
                Attribute::bool(CKA_DECRYPT, true),
                Attribute::bool(CKA_SENSITIVE, false),
                Attribute::bool(CKA_EXTRACTABLE, true),
            ],
        )
        .unwrap();
    let (rsa_pub, rsa_priv) = c
        .generate_key_pair(
            s,
            Mechanism::new(CKM_RSA_PKCS_KEY_PAIR_GEN),
            vec![
                Attribute::bool(CKA_TOKEN, false),
                Attribute::ulong(CKA_MODULUS_BITS, 2048),
                Attribute::bytes(CKA_PUBLIC_EXPONENT, [1u8, 0, 1]),
                Attribute::bool(CKA_VERIFY, true),
                Attribute::bool(CKA_ENCRYPT, true),
                Attribute::bool(CKA_WRAP, true),
            ],
            vec![
                Attribute::bool(CKA_TOKEN, false),
                Attribute::bool(CKA_PRIVATE, true),
                Attribute::bool(CKA_SIGN, true),
                Attribute::bool(CKA_DECRYPT, true),
                Attribute::bool(CKA_UNWRAP, true),
            ],
        )
        .unwrap();

    // Encryption, decryption, digests (29-41).
    let ecb = || Some(Mechanism::new(CKM_AES_ECB));
    let block = [0x11u8; 16];
    c.encrypt_init(s, ecb(), aes).unwrap();
    let Output::Data(ct) = c.encrypt(s, &block, OutCap::Buffer(64)).unwrap() else {
        panic!()
    };
    c.encrypt_init(s, ecb(), aes).unwrap();
    c.encrypt_update(s, &block, OutCap::Buffer(64)).unwrap();
    c.encrypt_final(s, OutCap::Buffer(64)).unwrap();
    c.decrypt_init(s, ecb(), aes).unwrap();
    assert_eq!(
        c.decrypt(s, &ct, OutCap::Buffer(64)).unwrap(),
        Output::Data(block.to_vec())
    );
    c.decrypt_init(s, ecb(), aes).unwrap();
    c.decrypt_update(s, &ct, OutCap::Buffer(64)).unwrap();
    c.decrypt_final(s, OutCap::Buffer(64)).unwrap();
    let sha256 = || Some(Mechanism::new(CKM_SHA256));
    c.digest_init(s, sha256()).unwrap();
    c.digest(s, b"abc", OutCap::Buffer(64)).unwrap();
    c.digest_init(s, sha256()).unwrap();
    c.digest_update(s, b"abc").unwrap();
    answered("DigestKey", c.digest_key(s, aes));
    answered("DigestFinal", c.digest_final(s, OutCap::Buffer(64)));

    // Signatures and verification (42-53).
    let pkcs1 = || Some(Mechanism::new(CKM_RSA_PKCS));
    let sha_pkcs1 = || Some(Mechanism::new(CKM_SHA256_RSA_PKCS));
    c.sign_init(s, pkcs1(), rsa_priv).unwrap();
    let Output::Data(sig) = c.sign(s, b"hello", OutCap::Buffer(512)).unwrap() else {
        panic!()
    };
    c.sign_init(s, sha_pkcs1(), rsa_priv).unwrap();
    c.sign_update(s, b"hello").unwrap();
    let Output::Data(sig2) = c.sign_final(s, OutCap::Buffer(512)).unwrap() else {
        panic!()
    };
    answered("SignRecoverInit", c.sign_recover_init(s, pkcs1(), rsa_priv));
    answered("SignRecover", c.sign_recover(s, b"x", OutCap::Buffer(512)));
    c.verify_init(s, pkcs1(), rsa_pub).unwrap();
    c.verify(s, b"hello", &sig).unwrap();
    c.verify_init(s, sha_pkcs1(), rsa_pub).unwrap();
    c.verify_update(s, b"hello").unwrap();
    c.verify_final(s, &sig2).unwrap();
    answered(
        "VerifyRecoverInit",
        c.verify_recover_init(s, pkcs1(), rsa_pub),
    );
    answered(
        "VerifyRecover",
        c.verify_recover(s, &sig, OutCap::Buffer(512)),
    );

    // Dual-function calls (54-57): SoftHSM has none, the request still goes out.
    let cap = OutCap::Buffer(64);
    answered(
        "DigestEncryptUpdate",
        c.digest_encrypt_update(s, &block, cap),
    );
    answered(
        "DecryptDigestUpdate",
        c.decrypt_digest_update(s, &block, cap),
    );
    answered("SignEncryptUpdate", c.sign_encrypt_update(s, &block, cap));
    answered(
        "DecryptVerifyUpdate",
        c.decrypt_verify_update(s, &block, cap),
    );

    // Wrapping, derivation, random, slot events (60-65).
    let Output::Data(wrapped) = c
        .wrap_key(
            s,
            Mechanism::new(CKM_RSA_PKCS),
            rsa_pub,
            aes,
            OutCap::Buffer(512),
        )
        .unwrap()
    else {
        panic!()
    };
    c.unwrap_key(
        s,
        Mechanism::new(CKM_RSA_PKCS),
        rsa_priv,
        &wrapped,
        vec![
            Attribute::ulong(CKA_CLASS, CKO_SECRET_KEY),
            Attribute::ulong(CKA_KEY_TYPE, CKK_AES),
            Attribute::bool(CKA_TOKEN, false),
        ],
    )
    .unwrap();
    // 0.24 carries no derivation parameter with pointers (ECDH1 is refused locally, see
    // below); a parameterless mechanism reaches SoftHSM, which refuses it.
    answered(
        "DeriveKey",
        c.derive_key(s, Mechanism::new(CKM_SHA256), aes, vec![]),
    );
    c.seed_random(s, b"seed").unwrap();
    c.generate_random(s, OutCap::Buffer(32)).unwrap();
    answered("WaitForSlotEvent", c.wait_for_slot_event(CKF_DONT_BLOCK));
    c.logout(s).unwrap();
    c.close_session(s).unwrap();
    let bytes_sent = relay.transcripts()[0].client_to_server.len();

    // 66-89: refused here, with the CK_RV a PKCS#11 caller expects.
    let mut refused = Vec::new();
    let mut refuse = |call: CallId, r: p11fwd_wire::Result<()>| {
        let e = r.expect_err(call.name());
        assert!(matches!(e, Error::Unsupported { .. }), "{call}: {e:?}");
        assert_eq!(e.rv(), Rv(CKR_FUNCTION_NOT_SUPPORTED), "{call}");
        refused.push(call.id());
    };
    let gcm = || Mechanism::new(CKM_AES_GCM);
    let (p, d) = (&[0u8; 8][..], &block[..]);
    let unit = |r: p11fwd_wire::Result<Output>| r.map(drop);
    refuse(
        CallId::LoginUser,
        c.login_user(s, CKU_USER, Some(pin), b"user"),
    );
    refuse(CallId::SessionCancel, c.session_cancel(s, 0));
    // The two message-based cipher families (68-72, 73-77) have the same shapes.
    type R<T> = p11fwd_wire::Result<T>;
    type Family = (
        u32,
        fn(&Client, u64, Mechanism, u64) -> R<()>,
        fn(&Client, u64, &[u8], &[u8], &[u8], OutCap) -> R<Output>,
        fn(&Client, u64, &[u8], &[u8]) -> R<()>,
        fn(&Client, u64, &[u8], &[u8], OutCap, u64) -> R<Output>,
        fn(&Client, u64) -> R<()>,
    );
    let families: [Family; 2] = [
        (
            CallId::MessageEncryptInit.id(),
            Client::message_encrypt_init,
            Client::encrypt_message,
            Client::encrypt_message_begin,
            Client::encrypt_message_next,
            Client::message_encrypt_final,
        ),
        (
            CallId::MessageDecryptInit.id(),
            Client::message_decrypt_init,
            Client::decrypt_message,
            Client::decrypt_message_begin,
            Client::decrypt_message_next,
            Client::message_decrypt_final,
        ),
    ];
    for (first, init, one, begin, next, fin) in families {
        let id = |i| CallId::from_u32(first + i).unwrap();
        refuse(id(0), init(&c, s, gcm(), aes));
        refuse(id(1), unit(one(&c, s, p, d, d, cap)));
        refuse(id(2), begin(&c, s, p, d));
        refuse(id(3), unit(next(&c, s, p, d, cap, 0)));
        refuse(id(4), fin(&c, s));
    }
    let pss = || Mechanism::new(CKM_RSA_PKCS);
    refuse(
        CallId::MessageSignInit,
        c.message_sign_init(s, pss(), rsa_priv),
    );
    refuse(CallId::SignMessage, unit(c.sign_message(s, p, d, cap)));
    refuse(CallId::SignMessageBegin, c.sign_message_begin(s, p));
    refuse(
        CallId::SignMessageNext,
        unit(c.sign_message_next(s, p, d, true, cap)),
    );
    refuse(CallId::MessageSignFinal, c.message_sign_final(s));
    refuse(
        CallId::MessageVerifyInit,
        c.message_verify_init(s, pss(), rsa_pub),
    );
    refuse(CallId::VerifyMessage, c.verify_message(s, p, d, &sig));
    refuse(CallId::VerifyMessageBegin, c.verify_message_begin(s, p));
    refuse(
        CallId::VerifyMessageNext,
        c.verify_message_next(s, p, d, &sig),
    );
    refuse(CallId::MessageVerifyFinal, c.message_verify_final(s));
    // The version-2 forms of C_InitToken and C_DeriveKey, forced onto this version-0 link.
    let init2 = req::init_token(Dialect::V2, scratch, Some(b"87654321"), &label);
    assert_eq!(init2.call, CallId::InitToken2);
    refuse(CallId::InitToken2, c.connection().call(&init2).map(drop));
    let derive2 = req::derive_key(Dialect::V2, s, Mechanism::new(CKM_SHA256), aes, vec![]);
    assert_eq!(derive2.call, CallId::DeriveKey2);
    refuse(CallId::DeriveKey2, c.connection().call(&derive2).map(drop));
    assert_eq!(refused, (66..=89).collect::<Vec<u32>>());
    assert_eq!(
        relay.transcripts()[0].client_to_server.len(),
        bytes_sent,
        "a refused call reached the server"
    );
    assert!(!c.connection().is_broken());
    c.finalize().unwrap();
    assert_eq!(relay.stats().conns, 1);

    // What the relay saw: every request decodes, every id 1..=65 went out, each request got
    // one reply that decodes as that call's reply or as an ERROR frame.
    let t = &relay.transcripts()[0];
    assert_eq!((t.client_to_server[0], t.server_to_client[0]), (2, 0));
    let frames = |bytes: &[u8]| {
        let mut rest = &bytes[1..];
        let mut out = Vec::new();
        while !rest.is_empty() {
            let (f, n) = p11fwd_wire::frame::parse(rest, p11fwd_wire::frame::Limits::DEFAULT)
                .unwrap()
                .expect("a whole frame");
            rest = &rest[n..];
            out.push((f.code, f.body.clone()));
        }
        out
    };
    let mut calls = std::collections::HashMap::new();
    for (code, body) in frames(&t.client_to_server) {
        let r = p11fwd_wire::Request::decode(&body, Dialect::V0).unwrap();
        assert!(calls.insert(code, r.call).is_none(), "code {code} reused");
    }
    let mut ok = std::collections::BTreeSet::new();
    let mut rv = std::collections::BTreeMap::new();
    let mut replied = std::collections::BTreeSet::new();
    for (code, body) in frames(&t.server_to_client) {
        let call = calls[&code];
        assert!(replied.insert(code), "two replies to {code}");
        match p11fwd_wire::Reply::decode(&body, call, Dialect::V0, None).unwrap() {
            p11fwd_wire::Reply::Ok { call: c, .. } => {
                assert_eq!(c, call);
                ok.insert(call.id());
            }
            p11fwd_wire::Reply::Error(e) => {
                rv.insert(call.id(), e);
            }
        }
    }
    assert_eq!(replied.len(), calls.len(), "a request without a reply");
    let sent: std::collections::BTreeSet<u32> = calls.values().map(|c| c.id()).collect();
    assert_eq!(sent, (1..=65).collect(), "ids sent");
    // Only what SoftHSM 2.6.1 and the server's token filter refuse (as in the every-call
    // captures): the rest of the typed client works against 0.24.1 end to end.
    let error_only: Vec<u32> = rv.keys().filter(|id| !ok.contains(*id)).copied().collect();
    assert_eq!(
        error_only,
        [16, 17, 46, 47, 52, 53, 54, 55, 56, 57, 62, 65],
        "{rv:?}"
    );
}
