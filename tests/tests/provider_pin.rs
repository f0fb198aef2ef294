//! p11fwd.so: where the PIN comes from, end to end, against SoftHSM behind a stock `p11-kit
//! server` 0.24.1 and behind `p11fwd server` (every test loops over both): `pin-source=file:` in
//! the URI; `pkcs11-module-token-pin` in openssl.cnf, literal and `file:`; the application's
//! passphrase callback (`-passin`, and the openssl CLI's own prompt on a terminal); p11fwd's own
//! terminal prompt "Enter PIN for <token>: " when the application has no callback; no prompt and
//! no PIN at all when the token has a PIN pad (CKF_PROTECTED_AUTHENTICATION_PATH, given by the
//! test shim `fixtures/token-shim.c`, which SoftHSM cannot be); one context-specific login per
//! signature for CKA_ALWAYS_AUTHENTICATE keys (counted with pkcs11-spy).
//!
//! Terminals are pseudo-terminals made by util-linux `script` (`provider_common::under_pty`),
//! which types the PIN only once the prompt is shown.

#![allow(clippy::unwrap_used)]

mod provider_common;

use p11fwd_tests::Key;
use p11fwd_tests::run::run;
use provider_common::{
    CKF_PROTECTED_AUTHENTICATION_PATH, CKF_USER_PIN_FINAL_TRY, CKF_USER_PIN_TO_BE_CHANGED, Env,
    KINDS, dgst_sign, spy_calls, spy_count, under_pty,
};

/// `load_sign URI [N]`: loads the private key with OSSL_STORE and no passphrase callback (so the
/// PIN comes from the URI, the configuration or p11fwd's own prompt), then signs data.txt N
/// times (default 1) with SHA-256 and verifies each signature with the key's public part.
const LOAD_SIGN_C: &str = r#"
#include "p11fwd_test.h"

int main(int argc, char **argv) {
    static const unsigned char data[] = "p11fwd signs this\n";
    int n = argc > 2 ? atoi(argv[2]) : 1;
    if (argc < 2 || !load_providers())
        return 2;
    EVP_PKEY *key = load_key(argv[1]);
    if (key == NULL)
        return 3;
    for (int k = 0; k < n; k++) {
        unsigned char sig[1024];
        size_t len = sizeof sig;
        EVP_MD_CTX *m = EVP_MD_CTX_new();
        int ok = EVP_DigestSignInit_ex(m, NULL, "SHA256", NULL, NULL, key, NULL) == 1
            && EVP_DigestSign(m, sig, &len, data, sizeof data - 1) == 1;
        EVP_MD_CTX_free(m);
        m = EVP_MD_CTX_new();
        ok = ok && EVP_DigestVerifyInit_ex(m, NULL, "SHA256", NULL, NULL, key, NULL) == 1
            && EVP_DigestVerify(m, sig, len, data, sizeof data - 1) == 1;
        EVP_MD_CTX_free(m);
        if (!ok) {
            fprintf(stderr, "signature %d failed\n", k + 1);
            ERR_print_errors_fp(stderr);
            return 4;
        }
    }
    printf("signed %d\n", n);
    EVP_PKEY_free(key);
    return 0;
}
"#;

/// The URI of the token key `label` without any PIN.
fn bare_uri(env: &Env, label: &str) -> String {
    format!("{};type=private", env.token.object_uri(label))
}

#[test]
fn pin_from_the_uri_file_the_config_and_the_application() {
    for kind in KINDS {
        let env = Env::new(kind, &[Key::EcP256]);
        let uri = bare_uri(&env, "ec-p256");
        let public = env.token.public_pem("ec-p256");
        let pin_file = env.path("pin.txt");
        std::fs::write(&pin_file, "123456\n").unwrap();
        // pin-source=file: in the URI.
        let with_source = format!("{uri}?pin-source=file:{}", pin_file.display());
        let sig = env.path("source.sig");
        env.ok(&dgst_sign("-sha256", &with_source, &sig));
        env.verify(&public, &sig, &["-sha256"]);
        // The application's passphrase callback (`-passin`), named after the token.
        let out = env.ok(&["pkey", "-in", &uri, "-passin", "pass:123456", "-pubout"]);
        assert!(
            out.stdout.contains("BEGIN PUBLIC KEY"),
            "{kind}: {}",
            out.stdout
        );
        // openssl.cnf only (no -provider flags): the PIN as `file:` and as a literal.
        for (name, pin) in [
            ("file", format!("file:{}", pin_file.display())),
            ("literal", "123456".to_owned()),
        ] {
            let cnf = env.config_with(
                &format!("{name}.cnf"),
                &format!("pkcs11-module-token-pin = {pin}\n"),
            );
            let sig = env.path(&format!("{name}.sig"));
            let mut cmd = env.openssl_cmd(&dgst_sign("-sha256", &uri, &sig));
            cmd.env("OPENSSL_CONF", &cnf)
                .env_remove("P11FWD_SERVER_ADDRESS");
            let out = run(&mut cmd);
            assert!(out.success(), "{kind}, {name} PIN: {}", out.stderr);
            env.verify(&public, &sig, &["-sha256"]);
        }
    }
}

/// `load_sign URI` (loads the key through the provider and signs once), to run on a terminal.
fn load_sign(env: &Env, uri: &str) -> std::process::Command {
    let mut program = env.c_command(&env.compile_c("load_sign", LOAD_SIGN_C));
    program.arg(uri);
    program
}

/// On a terminal: the openssl CLI asks through its passphrase callback ("Enter pass phrase for
/// PKCS#11 token <label>:", the info p11fwd gives it); a program without a callback gets
/// p11fwd's own prompt, "Enter PIN for <label>: ". A wrong PIN typed there is refused once and
/// not retried.
#[test]
fn terminal_prompts_ask_for_the_pin() {
    for kind in KINDS {
        let env = Env::new(kind, &[Key::EcP256]);
        let uri = bare_uri(&env, "ec-p256");
        let cli = env.ossl_cmd(&["pkey", "-in", &uri, "-pubout"]);
        let prompt = "Enter pass phrase for PKCS#11 token p11fwd-test:";
        let (ok, transcript) = under_pty(&cli, Some((prompt, "123456")));
        assert!(
            ok && transcript.contains("BEGIN PUBLIC KEY"),
            "{kind}: openssl's prompt:\n{transcript}"
        );
        let program = load_sign(&env, &uri);
        let prompt = "Enter PIN for p11fwd-test: ";
        let (ok, transcript) = under_pty(&program, Some((prompt, "123456")));
        assert!(
            ok && transcript.contains("signed 1"),
            "{kind}: p11fwd's prompt:\n{transcript}"
        );
        assert_eq!(
            transcript.matches("Enter PIN").count(),
            1,
            "{kind}: one prompt:\n{transcript}"
        );
        let (ok, transcript) = under_pty(&program, Some((prompt, "999999")));
        assert!(
            !ok && transcript.contains("PIN incorrect"),
            "{kind}: a wrong PIN typed:\n{transcript}"
        );
        assert!(!transcript.contains("999999"), "{kind}: PIN echoed");
    }
}

/// A token with a PIN pad (CKF_PROTECTED_AUTHENTICATION_PATH): p11fwd logs in with no PIN and
/// never prompts, even on a terminal and with no PIN anywhere; the token (the shim) gets exactly
/// one `C_Login` per process, without a PIN.
#[test]
fn a_pin_pad_token_logs_in_without_a_pin_or_a_prompt() {
    for kind in KINDS {
        let (env, shim) = Env::with_shim(kind, &[Key::EcP256], CKF_PROTECTED_AUTHENTICATION_PATH);
        let uri = bare_uri(&env, "ec-p256");
        let sig = env.path("pad.sig");
        let dgst = env.ossl_cmd(&dgst_sign("-sha256", &uri, &sig));
        let (ok, transcript) = under_pty(&dgst, None);
        assert!(ok, "{kind}: openssl dgst:\n{transcript}");
        assert!(
            !transcript.contains("Enter"),
            "{kind}: prompted:\n{transcript}"
        );
        env.verify(&env.token.public_pem("ec-p256"), &sig, &["-sha256"]);
        assert_eq!(shim.logins(), ["C_Login user=1 pin=none"], "{kind}");
        // A program without a passphrase callback, on a terminal: no prompt either.
        let program = load_sign(&env, &uri);
        let (ok, transcript) = under_pty(&program, None);
        assert!(
            ok && transcript.contains("signed 1") && !transcript.contains("Enter"),
            "{kind}: load_sign:\n{transcript}"
        );
        assert_eq!(shim.logins().len(), 2, "{kind}: {:?}", shim.logins());
    }
}

/// CKA_ALWAYS_AUTHENTICATE: two signatures in one process are two context-specific logins at
/// the token (after the one user login), each in its signature's round trip.
#[test]
fn always_authenticate_logs_in_once_per_signature() {
    for kind in KINDS {
        let (env, spy_log) = Env::with_spy(kind, &[Key::RsaAlwaysAuth]);
        let bin = env.compile_c("load_sign", LOAD_SIGN_C);
        let out = run(env
            .c_command(&bin)
            .arg(env.key_uri("rsa-always-auth"))
            .arg("2"));
        assert!(
            out.success() && out.stdout.contains("signed 2"),
            "{kind}: {}{}",
            out.stdout,
            out.stderr
        );
        assert_eq!(
            spy_count(&spy_log, "C_Login CKU_CONTEXT_SPECIFIC"),
            2,
            "{kind}: context-specific logins"
        );
        assert_eq!(
            spy_count(&spy_log, "C_Login CKU_USER"),
            1,
            "{kind}: user logins"
        );
        let signatures = spy_calls(&spy_log)
            .iter()
            .filter(|c| *c == "C_Sign")
            .count();
        assert_eq!(signatures, 2, "{kind}: signatures");
    }
}

/// `connect_then_sign FIRST SECOND`: loads everything at FIRST (a public key: connects, no
/// login), prints "connected", waits for a line on stdin, then loads the private key at SECOND
/// and signs once.
const CONNECT_THEN_SIGN_C: &str = r#"
#include "p11fwd_test.h"

int main(int argc, char **argv) {
    char line[16];
    if (argc != 3 || !load_providers())
        return 2;
    OSSL_STORE_CTX *st = OSSL_STORE_open(argv[1], NULL, NULL, NULL, NULL);
    while (st != NULL && !OSSL_STORE_eof(st))
        OSSL_STORE_INFO_free(OSSL_STORE_load(st));
    OSSL_STORE_close(st);
    puts("connected");
    fflush(stdout);
    if (fgets(line, sizeof line, stdin) == NULL)
        return 4;
    EVP_PKEY *key = load_key(argv[2]);
    if (key == NULL || !sign_digest(key))
        return 3;
    puts("signed");
    return 0;
}
"#;

/// The token's PIN state stops automatic logins, as pkcs11-provider does: on
/// CKF_USER_PIN_FINAL_TRY no PIN from the URI, the configuration or the application is sent
/// (only one typed at p11fwd's own prompt, which says it is the final try); on
/// CKF_USER_PIN_TO_BE_CHANGED none at all. SoftHSM never sets these flags (it only sets
/// CKF_USER_PIN_COUNT_LOW after wrong PINs), so the test shim adds them.
#[test]
fn final_try_and_pin_to_be_changed_stop_automatic_logins() {
    for kind in KINDS {
        let (env, shim) = Env::with_shim(kind, &[Key::EcP256], CKF_USER_PIN_FINAL_TRY);
        let uri = bare_uri(&env, "ec-p256");
        let sig = env.path("never.sig");
        let cnf = env.config_with("pin.cnf", "pkcs11-module-token-pin = 123456\n");
        for (what, out) in [
            (
                "URI",
                env.ossl(&dgst_sign("-sha256", &env.key_uri("ec-p256"), &sig)),
            ),
            ("-passin", {
                let mut args = dgst_sign("-sha256", &uri, &sig).to_vec();
                args.splice(1..1, ["-passin", "pass:123456"]);
                env.ossl(&args)
            }),
            ("openssl.cnf", {
                let mut cmd = env.openssl_cmd(&dgst_sign("-sha256", &uri, &sig));
                cmd.env("OPENSSL_CONF", &cnf);
                run(&mut cmd)
            }),
        ] {
            assert!(!out.success(), "{kind}: final try, PIN from {what}: signed");
            assert!(
                out.stderr.contains("PIN not sent") && out.stderr.contains("FINAL_TRY"),
                "{kind}: final try, PIN from {what}:\n{}",
                out.stderr
            );
        }
        assert_eq!(shim.logins(), Vec::<String>::new(), "{kind}: no PIN sent");
        // Typed at p11fwd's own prompt, which warns: sent.
        let program = load_sign(&env, &uri);
        let prompt = "Enter PIN for p11fwd-test (final try: a wrong PIN locks it): ";
        let (ok, transcript) = under_pty(&program, Some((prompt, "123456")));
        assert!(
            ok && transcript.contains("signed 1"),
            "{kind}: typed on the final try:\n{transcript}"
        );
        assert_eq!(shim.logins(), ["C_Login user=1 pin=given"], "{kind}");
        // To be changed: no PIN from anywhere, not even typed.
        shim.set_flags(CKF_USER_PIN_TO_BE_CHANGED);
        let out = env.ossl(&dgst_sign("-sha256", &env.key_uri("ec-p256"), &sig));
        assert!(
            !out.success()
                && out.stderr.contains("PIN not sent")
                && out.stderr.contains("TO_BE_CHANGED"),
            "{kind}: PIN to be changed:\n{}",
            out.stderr
        );
        assert_eq!(shim.logins().len(), 1, "{kind}: {:?}", shim.logins());
    }
}

/// The PIN state is read again before an automatic login that does not immediately follow the
/// connection's setup: a process that connected (for a public key) before the token reached
/// its final try sends no PIN when it later loads the private key.
#[test]
fn the_pin_state_is_read_again_before_a_later_login() {
    use std::io::{BufRead, Write};
    for kind in KINDS {
        let (env, shim) = Env::with_shim(kind, &[Key::EcP256], 0);
        let bin = env.compile_c("connect_then_sign", CONNECT_THEN_SIGN_C);
        let mut child = env
            .c_command(&bin)
            .arg(format!("{};type=public", env.token.object_uri("ec-p256")))
            .arg(env.key_uri("ec-p256"))
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        let mut stdout = std::io::BufReader::new(child.stdout.take().unwrap());
        let mut line = String::new();
        stdout.read_line(&mut line).unwrap();
        assert_eq!(line, "connected\n", "{kind}");
        shim.set_flags(CKF_USER_PIN_FINAL_TRY);
        child.stdin.take().unwrap().write_all(b"go\n").unwrap();
        let out = child.wait_with_output().unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(
            !out.status.success() && stderr.contains("FINAL_TRY"),
            "{kind}: {:?}\n{stderr}",
            out.status
        );
        assert_eq!(shim.logins(), Vec::<String>::new(), "{kind}: no PIN sent");
    }
}
