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
