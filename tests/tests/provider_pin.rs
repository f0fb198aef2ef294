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
    CKF_PROTECTED_AUTHENTICATION_PATH, Env, KINDS, dgst_sign, spy_calls, spy_count, under_pty,
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
        let bin = env.compile_c("load_sign", LOAD_SIGN_C);
        let mut program = env.c_command(&bin);
        program.arg(&uri);
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
        let bin = env.compile_c("load_sign", LOAD_SIGN_C);
        let mut program = env.c_command(&bin);
        program.arg(&uri);
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
