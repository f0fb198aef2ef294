//! The built provider loaded by the real `openssl` CLI (OpenSSL 3.0.x on Debian 12).

mod common;

use common::{ModuleDir, TestResult, provider_block};

#[test]
fn command_line_load_reports_name_version_and_active_status() -> TestResult {
    let modules = ModuleDir::new()?;
    let run = modules
        .openssl(
            &["list", "-providers", "-verbose", "-provider", "p11fwd"],
            None,
            &[],
        )?
        .ok()?;
    let block =
        provider_block(&run.stdout, "p11fwd").ok_or_else(|| format!("no p11fwd in\n{run}"))?;
    assert!(block.contains("name: p11fwd"), "{run}");
    assert!(
        block.contains(&format!("version: {}", env!("CARGO_PKG_VERSION"))),
        "{run}"
    );
    assert!(block.contains("status: active"), "{run}");
    assert!(block.contains("build info: p11fwd "), "{run}");
    // gettable_params is listed too.
    assert!(
        block.contains("buildinfo: pointer to a UTF8 encoded string"),
        "{run}"
    );
    assert!(
        !run.stderr.contains("Unable to query provider parameters"),
        "{run}"
    );
    Ok(())
}

#[test]
fn config_file_activates_p11fwd_beside_default_and_its_keys_are_read() -> TestResult {
    let modules = ModuleDir::new()?;
    let config = modules.write_config(
        "openssl.cnf",
        "openssl_conf = openssl_init\n\
         [openssl_init]\nproviders = provider_sect\n\
         [provider_sect]\ndefault = default_sect\np11fwd = p11fwd_sect\n\
         [default_sect]\nactivate = 1\n\
         [p11fwd_sect]\nactivate = 1\n\
         p11fwd-server-address = unix:path=/tmp/p11fwd-test-socket\n\
         pkcs11-module-token-pin = not-a-real-pin-4242\n\
         pkcs11-module-path = /usr/lib/softhsm/libsofthsm2.so\n\
         p11fwd-debug = 1\n",
    )?;
    let run = modules
        .openssl(&["list", "-providers", "-verbose"], Some(&config), &[])?
        .ok()?;
    for provider in ["default", "p11fwd"] {
        let block =
            provider_block(&run.stdout, provider).ok_or_else(|| format!("no {provider}\n{run}"))?;
        assert!(block.contains("status: active"), "{run}");
    }
    // `p11fwd-debug = 1` turned the trace on, and it shows what the config section held.
    assert!(run.stderr.contains("p11fwd provider initialised"), "{run}");
    assert!(
        run.stderr.contains("unix:path=/tmp/p11fwd-test-socket"),
        "{run}"
    );
    assert!(run.stderr.contains("pkcs11-module-path"), "{run}");
    // The PIN is read (its length is traced) but never printed.
    assert!(run.stderr.contains("Literal(<19 bytes>)"), "{run}");
    assert!(!run.stderr.contains("not-a-real-pin-4242"), "{run}");
    Ok(())
}

#[test]
fn env_var_turns_the_trace_on_and_exit_is_clean() -> TestResult {
    let modules = ModuleDir::new()?;
    let quiet = modules
        .openssl(&["list", "-providers", "-provider", "p11fwd"], None, &[])?
        .ok()?;
    assert!(quiet.stderr.is_empty(), "{quiet}");
    // `trace` also enables the per-callback spans, including at process exit, when OpenSSL tears
    // the provider down after the thread-locals are gone (that used to abort).
    let traced = modules
        .openssl(
            &["list", "-providers", "-provider", "p11fwd"],
            None,
            &[("P11FWD_DEBUG", "trace")],
        )?
        .ok()?;
    assert!(
        traced.stderr.contains("p11fwd provider initialised"),
        "{traced}"
    );
    assert!(traced.stderr.contains(r#"loaded_as="p11fwd""#), "{traced}");
    Ok(())
}

#[test]
fn bad_config_value_fails_init_with_a_p11fwd_error() -> TestResult {
    let modules = ModuleDir::new()?;
    // Not activated from the file: `-provider p11fwd` then loads it with the section's keys, and
    // the CLI prints the error queue when loading fails.
    let config = modules.write_config(
        "openssl.cnf",
        "openssl_conf = openssl_init\n\
         [openssl_init]\nproviders = provider_sect\n\
         [provider_sect]\np11fwd = p11fwd_sect\n\
         [p11fwd_sect]\npkcs11-module-login-behavior = sometimes\n",
    )?;
    let run = modules.openssl(
        &["list", "-providers", "-provider", "p11fwd"],
        Some(&config),
        &[],
    )?;
    assert!(!run.success, "{run}");
    let line = run
        .stderr
        .lines()
        .find(|l| l.contains(":p11fwd:"))
        .ok_or_else(|| format!("no p11fwd error line\n{run}"))?;
    // error:<code>:p11fwd:OSSL_provider_init:<reason text>:<file>:<line>:<message>
    assert!(
        line.contains(":p11fwd:OSSL_provider_init:invalid configuration:"),
        "{line}"
    );
    assert!(
        line.ends_with(
            r#":pkcs11-module-login-behavior: "sometimes" is not one of auto, always, never"#
        ),
        "{line}"
    );
    assert!(!run.stderr.contains("panicked"), "{run}");
    Ok(())
}

#[test]
fn tls_contexts_still_work_with_p11fwd_loaded() -> TestResult {
    // SSL_CTX_new asks every provider for its TLS-GROUP capability and fails if one says 0.
    let modules = ModuleDir::new()?;
    let run = modules
        .openssl(
            &[
                "ciphers",
                "-s",
                "-provider",
                "p11fwd",
                "-provider",
                "default",
            ],
            None,
            &[],
        )?
        .ok()?;
    assert!(run.stdout.contains("TLS_AES_128_GCM_SHA256"), "{run}");
    Ok(())
}

#[test]
fn part_one_algorithms_are_offered() -> TestResult {
    let modules = ModuleDir::new()?;
    let run = modules
        .openssl(
            &[
                "list",
                "-key-managers",
                "-signature-algorithms",
                "-digest-algorithms",
                "-encoders",
                "-store-loaders",
                "-provider",
                "p11fwd",
                "-provider",
                "default",
            ],
            None,
            &[],
        )?
        .ok()?;
    for needle in [
        "pkcs11 @ p11fwd",
        "ECDSA @ p11fwd",
        "ED25519",
        "RSA-PSS",
        "SHA2-256",
        "structure=SubjectPublicKeyInfo",
    ] {
        assert!(run.stdout.contains(needle), "{needle} missing:\n{run}");
    }
    Ok(())
}
