//! Smoke tests of the test infrastructure against real peers: the SoftHSM fixture seen by
//! `pkcs11-tool` directly and through the stock `p11-kit server` + `p11-kit-client.so`, and the
//! key material checked with plain `openssl`.

use std::collections::BTreeMap;
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::Result;
use p11fwd_tests::relay::Relay;
use p11fwd_tests::{
    Key, P11KIT_CLIENT_MODULE, SOFTHSM_MODULE, StockServer, TestToken, artifacts, require_file,
    require_tool, run_fail, run_ok,
};

/// `pkcs11-tool --module <module>` with the token's environment.
fn pkcs11_tool(token: &TestToken, module: &str) -> Command {
    let mut cmd = token.command(require_tool("pkcs11-tool"));
    cmd.arg("--module").arg(require_file(module));
    cmd
}

/// Counts the objects per label in `pkcs11-tool -O` output.
fn labels(listing: &str) -> BTreeMap<String, usize> {
    let mut count = BTreeMap::new();
    for line in listing.lines() {
        if let Some(label) = line.trim().strip_prefix("label:") {
            *count.entry(label.trim().to_owned()).or_default() += 1;
        }
    }
    count
}

/// What `labels` must find on a token holding `keys`.
fn expected_labels(keys: &[Key]) -> BTreeMap<String, usize> {
    keys.iter()
        .map(|k| {
            let n = match (k.is_pair(), k.has_certificate()) {
                (false, _) => 1,
                (true, false) => 2,
                (true, true) => 3,
            };
            (k.label().to_owned(), n)
        })
        .collect()
}

fn openssl() -> Command {
    Command::new(require_tool("openssl"))
}

fn sha256(data: &Path, out: &Path) {
    run_ok(
        openssl()
            .args(["dgst", "-sha256", "-binary", "-out"])
            .arg(out)
            .arg(data),
    );
}

#[test]
fn full_token_lists_every_object_directly() -> Result<()> {
    let start = Instant::now();
    let token = TestToken::full();
    let took = start.elapsed();
    assert!(
        took < Duration::from_secs(10),
        "creating the full token took {took:?}"
    );
    eprintln!("full token created in {took:?}");

    let out = run_ok(pkcs11_tool(&token, SOFTHSM_MODULE).args([
        "-O",
        "--login",
        "--pin",
        token.user_pin(),
    ]));
    assert_eq!(labels(&out.stdout), expected_labels(token.keys()), "{out}");
    for key in token.keys() {
        assert!(
            out.stdout
                .contains(&format!("ID:         {}", key.id_hex())),
            "{key}:\n{out}"
        );
    }
    // The attributes pkcs11-tool shows for the special keys.
    assert!(out.stdout.contains("always authenticate"), "{out}");
    assert!(
        out.stdout
            .contains("RSA-PKCS-PSS,SHA256-RSA-PKCS-PSS,SHA384-RSA-PKCS-PSS,SHA512-RSA-PKCS-PSS"),
        "{out}"
    );
    assert!(out.stdout.contains("EC_EDWARDS"), "{out}");
    assert!(
        out.stdout.contains("Secret Key Object; AES length 32"),
        "{out}"
    );
    assert!(
        out.stdout
            .contains("subject:    DN: CN=rsa2048, O=p11fwd-test"),
        "{out}"
    );

    // Without login only the public objects are visible.
    let out = run_ok(pkcs11_tool(&token, SOFTHSM_MODULE).arg("-O"));
    assert!(!out.stdout.contains("Private Key Object"), "{out}");
    assert!(out.stdout.contains("Certificate Object"), "{out}");
    Ok(())
}

#[test]
fn builder_makes_only_the_requested_keys() -> Result<()> {
    let token = TestToken::builder()
        .label("custom label")
        .with(Key::EcP384)
        .build();
    assert_eq!(token.keys(), &[Key::EcP384]);
    assert_eq!(token.uri(), "pkcs11:token=custom%20label");
    assert_eq!(token.env()[0].0, "SOFTHSM2_CONF");
    let out = run_ok(pkcs11_tool(&token, SOFTHSM_MODULE).args(["-O", "-l", "--pin", "123456"]));
    assert_eq!(
        labels(&out.stdout),
        expected_labels(&[Key::EcP384]),
        "{out}"
    );
    let out = run_ok(pkcs11_tool(&token, SOFTHSM_MODULE).arg("-L"));
    assert!(
        out.stdout.contains("token label        : custom label"),
        "{out}"
    );
    Ok(())
}

#[test]
#[should_panic(expected = "SoftHSM 2.6.1 cannot hold the x25519 key")]
fn x25519_is_refused_loudly() {
    let _ = TestToken::builder().with(Key::X25519);
}

#[test]
fn stock_server_serves_the_token_to_the_stock_client() -> Result<()> {
    let token = TestToken::full();
    let server = StockServer::start(&token);
    assert!(server.address().starts_with("unix:path=/"));
    assert!(server.socket_path().exists());
    let env = server.p11env();

    let out = env.run_ok(pkcs11_tool(&token, P11KIT_CLIENT_MODULE).arg("-L"));
    assert!(
        out.stdout.contains("token label        : p11fwd-test"),
        "{out}"
    );

    let out = env.run_ok(pkcs11_tool(&token, P11KIT_CLIENT_MODULE).args([
        "-O",
        "--login",
        "--pin",
        token.user_pin(),
    ]));
    assert_eq!(labels(&out.stdout), expected_labels(token.keys()), "{out}");

    // A wrong PIN is refused through the server.
    let out = env
        .run_fail(pkcs11_tool(&token, P11KIT_CLIENT_MODULE).args(["-O", "-l", "--pin", "999999"]));
    assert!(out.stderr.contains("CKR_PIN_INCORRECT"), "{out}");
    Ok(())
}

#[test]
fn ecdsa_signature_through_stock_server_verifies_with_openssl() -> Result<()> {
    let token = TestToken::builder().with(Key::EcP256).build();
    let server = StockServer::start(&token);
    let work = tempfile::tempdir()?;
    let (data, hash, sig) = (
        work.path().join("data"),
        work.path().join("hash"),
        work.path().join("sig"),
    );
    std::fs::write(&data, b"p11fwd fixture smoke test\n")?;
    sha256(&data, &hash);

    server.p11env().run_ok(
        pkcs11_tool(&token, P11KIT_CLIENT_MODULE)
            .args([
                "--login",
                "--pin",
                token.user_pin(),
                "--sign",
                "-m",
                "ECDSA",
            ])
            .args([
                "--id",
                &Key::EcP256.id_hex(),
                "--signature-format",
                "openssl",
                "-i",
            ])
            .arg(&hash)
            .arg("-o")
            .arg(&sig),
    );
    run_ok(
        openssl()
            .args(["pkeyutl", "-verify", "-pubin", "-inkey"])
            .arg(token.public_pem("ec-p256"))
            .arg("-in")
            .arg(&hash)
            .arg("-sigfile")
            .arg(&sig),
    )
    .assert_stdout_contains("Signature Verified Successfully");

    // The certificate carries the same key, and the token holds the same certificate.
    let cert_key = run_ok(
        openssl()
            .args(["x509", "-noout", "-pubkey", "-in"])
            .arg(token.cert_pem("ec-p256")),
    );
    assert_eq!(
        cert_key.stdout,
        std::fs::read_to_string(token.public_pem("ec-p256"))?
    );
    let cert = server.p11env().run_ok(
        pkcs11_tool(&token, P11KIT_CLIENT_MODULE)
            .args(["-r", "--type", "cert", "--id", "03", "-o"])
            .arg(work.path().join("c.der")),
    );
    assert!(cert.success());
    assert_eq!(
        std::fs::read(work.path().join("c.der"))?,
        std::fs::read(token.cert_der("ec-p256"))?
    );
    Ok(())
}

/// Signs `data` on the token with `mechanism` and verifies the result with `openssl pkeyutl`.
fn sign_and_verify(token: &TestToken, work: &Path, key: Key, mechanism: &str, verify: &[&str]) {
    let data = work.join("data");
    let sig = work.join(format!("{key}.sig"));
    std::fs::write(&data, b"sign me").expect("write data");
    run_ok(
        pkcs11_tool(token, SOFTHSM_MODULE)
            .args([
                "--login",
                "--pin",
                token.user_pin(),
                "--sign",
                "-m",
                mechanism,
            ])
            .args(["--id", &key.id_hex(), "-i"])
            .arg(&data)
            .arg("-o")
            .arg(&sig),
    );
    run_ok(
        openssl()
            .args(["pkeyutl", "-verify", "-pubin", "-inkey"])
            .arg(token.public_pem(key.label()))
            .args(verify)
            .arg("-in")
            .arg(&data)
            .arg("-sigfile")
            .arg(&sig),
    )
    .assert_stdout_contains("Signature Verified Successfully");
}

#[test]
fn every_signing_key_matches_its_public_pem() -> Result<()> {
    let token = TestToken::full();
    let work = tempfile::tempdir()?;
    let w = work.path();
    let rsa = ["-rawin", "-digest", "sha256"];
    sign_and_verify(&token, w, Key::Rsa2048, "SHA256-RSA-PKCS", &rsa);
    sign_and_verify(&token, w, Key::RsaAlwaysAuth, "SHA256-RSA-PKCS", &rsa);
    let pss = [
        "-rawin",
        "-digest",
        "sha256",
        "-pkeyopt",
        "rsa_padding_mode:pss",
        "-pkeyopt",
        "rsa_pss_saltlen:32",
    ];
    sign_and_verify(&token, w, Key::RsaPss, "SHA256-RSA-PKCS-PSS", &pss);
    sign_and_verify(&token, w, Key::Ed25519, "EDDSA", &["-rawin"]);
    sign_and_verify(&token, w, Key::Ed448, "EDDSA", &["-rawin"]);
    for key in [Key::EcP384, Key::EcP521] {
        let (data, hash, sig) = (w.join("data"), w.join("hash"), w.join("ec.sig"));
        sha256(&data, &hash);
        run_ok(
            pkcs11_tool(&token, SOFTHSM_MODULE)
                .args([
                    "-l",
                    "--pin",
                    "123456",
                    "--sign",
                    "-m",
                    "ECDSA",
                    "--signature-format",
                    "openssl",
                ])
                .args(["--id", &key.id_hex(), "-i"])
                .arg(&hash)
                .arg("-o")
                .arg(&sig),
        );
        run_ok(
            openssl()
                .args(["pkeyutl", "-verify", "-pubin", "-inkey"])
                .arg(token.public_pem(key.label()))
                .arg("-in")
                .arg(&hash)
                .arg("-sigfile")
                .arg(&sig),
        );
    }
    // The RSA certificate is the self-signed certificate of the rsa2048 key.
    run_ok(
        openssl()
            .args(["verify", "-CAfile"])
            .arg(token.cert_pem("rsa2048"))
            .arg(token.cert_pem("rsa2048")),
    );
    Ok(())
}

#[test]
fn softhsm_enforces_allowed_mechanisms_and_aes_value_is_known() -> Result<()> {
    let token = TestToken::builder()
        .with(Key::RsaPss)
        .with(Key::Aes256)
        .build();
    let work = tempfile::tempdir()?;
    let (data, out) = (work.path().join("data"), work.path().join("out"));
    std::fs::write(&data, [0x42u8; 32])?;

    // CKA_ALLOWED_MECHANISMS: PKCS#1 v1.5 with the PSS-only key is refused.
    let fail = run_fail(
        pkcs11_tool(&token, SOFTHSM_MODULE)
            .args([
                "-l",
                "--pin",
                "123456",
                "--sign",
                "-m",
                "SHA256-RSA-PKCS",
                "--id",
                "02",
                "-i",
            ])
            .arg(&data)
            .arg("-o")
            .arg(&out),
    );
    assert!(fail.stderr.contains("CKR_MECHANISM_INVALID"), "{fail}");

    // AES-256: the token's encryption equals openssl's with the value from `secret`.
    let iv = "000102030405060708090a0b0c0d0e0f";
    run_ok(
        pkcs11_tool(&token, SOFTHSM_MODULE)
            .args([
                "-l",
                "--pin",
                "123456",
                "--encrypt",
                "-m",
                "AES-CBC",
                "--iv",
                iv,
            ])
            .args(["--id", "09", "-i"])
            .arg(&data)
            .arg("-o")
            .arg(&out),
    );
    let key_hex: String = token
        .secret("aes256")
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    let expected = work.path().join("expected");
    run_ok(
        openssl()
            .args([
                "enc",
                "-aes-256-cbc",
                "-nopad",
                "-K",
                &key_hex,
                "-iv",
                iv,
                "-in",
            ])
            .arg(&data)
            .arg("-out")
            .arg(&expected),
    );
    assert_eq!(std::fs::read(&out)?, std::fs::read(&expected)?);

    // CKA_WRAP_TEMPLATE: aes256 wraps an extractable AES key but not a generic secret.
    let login = ["-l", "--pin", "123456"];
    for (id, key_type) in [("20", "AES:32"), ("21", "GENERIC:32")] {
        run_ok(pkcs11_tool(&token, SOFTHSM_MODULE).args(login).args([
            "--keygen",
            "--extractable",
            "--key-type",
            key_type,
            "--id",
            id,
        ]));
    }
    let wrap = |target: &str| {
        let mut cmd = pkcs11_tool(&token, SOFTHSM_MODULE);
        cmd.args(login)
            .args([
                "--wrap",
                "-m",
                "AES-KEY-WRAP",
                "--id",
                "09",
                "--application-id",
                target,
                "-o",
            ])
            .arg(&out);
        cmd
    };
    run_ok(&mut wrap("20"));
    let fail = run_fail(&mut wrap("21"));
    assert!(fail.stderr.contains("CKR_KEY_NOT_WRAPPABLE"), "{fail}");
    Ok(())
}

#[test]
fn relay_counts_round_trips_of_a_real_client() -> Result<()> {
    let token = TestToken::builder().build();
    let server = StockServer::start(&token);
    let work = tempfile::tempdir()?;
    let relay = Relay::start(
        work.path().join("slow.sock"),
        server.socket_path(),
        Duration::from_millis(5),
    )?;
    let out = p11fwd_tests::P11Env::new(relay.address())
        .run_ok(pkcs11_tool(&token, P11KIT_CLIENT_MODULE).arg("-L"));
    assert!(out.stdout.contains("p11fwd-test"), "{out}");
    let stats = relay.stats();
    eprintln!("pkcs11-tool -L through the relay: {stats:?}");
    assert_eq!(stats.conns, 1);
    // Version byte, C_Initialize, GetSlotList x2, GetSlotInfo, GetTokenInfo, ... , C_Finalize.
    assert!(stats.round_trips >= 5, "{stats:?}");
    assert!(stats.c2s_bytes > 0 && stats.s2c_bytes > 0, "{stats:?}");
    Ok(())
}

#[test]
fn artifacts_are_built_and_module_tree_links_them() {
    let tree = artifacts::ModuleTree::new();
    assert!(tree.provider().ends_with("ossl-modules/p11fwd.so"));
    assert_eq!(
        std::fs::canonicalize(tree.provider()).ok(),
        std::fs::canonicalize(artifacts::provider_module()).ok()
    );
    assert_eq!(
        std::fs::canonicalize(tree.client()).ok(),
        std::fs::canonicalize(artifacts::client_module()).ok()
    );
    assert!(artifacts::forwarder_bin().is_file());
}
