//! The main use case end to end: the server socket forwarded with `ssh -R` (an `sshd` on
//! 127.0.0.1 stands for the remote machine), then used on the "remote" side the way the README
//! says, with no address configured: the default `$XDG_RUNTIME_DIR/p11-kit/pkcs11` is the
//! forwarded socket. Through it: `p11fwd list`, `openssl req` with `p11fwd.so`, and
//! `pkcs11-tool` with `p11fwd-client.so` and with the stock `p11-kit-client.so`. Against
//! `p11fwd server` and the stock `p11-kit server`.
#![allow(clippy::unwrap_used)] // Tests: a panic is the failure report.

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use p11fwd_tests::{
    AnyServer, Key, P11KIT_CLIENT_MODULE, Server, ServerKind, Sshd, TestToken, artifacts,
    require_tool, run_ok,
};

/// `ssh -N -R remote:local` in the background, killed on drop.
struct Forward(Child);

impl Drop for Forward {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn forward(sshd: &Sshd, key: &Path, remote: &Path, local: &Path, log: &Path) -> Forward {
    let child = Command::new(require_tool("ssh"))
        .args(sshd.client_args())
        .args(["-i"])
        .arg(key)
        .args(["-N", "-o", "ExitOnForwardFailure=yes", "-R"])
        .arg(format!("{}:{}", remote.display(), local.display()))
        .arg("root@127.0.0.1")
        .stdin(Stdio::null())
        .stderr(std::fs::File::create(log).unwrap())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(20);
    while !remote.exists() {
        assert!(
            Instant::now() < deadline,
            "ssh -R did not create {}:\n{}\n--- sshd ---\n{}",
            remote.display(),
            std::fs::read_to_string(log).unwrap_or_default(),
            sshd.log()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    Forward(child)
}

/// A command run on the "remote" side: only `XDG_RUNTIME_DIR` says where the socket is.
fn remote_cmd(program: impl AsRef<std::ffi::OsStr>, runtime: &Path) -> Command {
    let mut cmd = Command::new(program);
    cmd.env_remove("P11_KIT_SERVER_ADDRESS")
        .env_remove("P11FWD_SERVER_ADDRESS")
        .env("XDG_RUNTIME_DIR", runtime);
    cmd
}

fn forwarded_token_is_usable(kind: ServerKind) {
    let token = TestToken::builder().with(Key::EcP256).build();
    let server = AnyServer::start(kind, &token);
    let dir = tempfile::tempdir().unwrap();

    // The "remote" machine: an sshd that accepts our (software) login key and may create Unix
    // socket forwards; the remote user's runtime directory with its p11-kit/ subdirectory.
    let login_key = dir.path().join("login");
    run_ok(
        Command::new(require_tool("ssh-keygen"))
            .args(["-q", "-t", "ed25519", "-N", "", "-f"])
            .arg(&login_key),
    );
    let login_pub = std::fs::read_to_string(login_key.with_extension("pub")).unwrap();
    let sshd_dir = dir.path().join("sshd");
    std::fs::create_dir(&sshd_dir).unwrap();
    let sshd = Sshd::start(
        &sshd_dir,
        &login_pub,
        &[
            "AllowStreamLocalForwarding yes",
            "StreamLocalBindUnlink yes",
        ],
    );
    let runtime = dir.path().join("remote-run");
    std::fs::create_dir_all(runtime.join("p11-kit")).unwrap();
    let remote_socket = runtime.join("p11-kit/pkcs11");
    let _fwd = forward(
        &sshd,
        &login_key,
        &remote_socket,
        server.socket_path(),
        &dir.path().join("ssh.log"),
    );

    let pin = dir.path().join("pin");
    std::fs::write(&pin, format!("{}\n", token.user_pin())).unwrap();

    // p11fwd list through the forward, by default discovery.
    let out = run_ok(
        remote_cmd(artifacts::forwarder_bin(), &runtime)
            .arg("list")
            .arg("--pin-source")
            .arg(&pin),
    );
    assert!(
        out.stdout.contains("private key (EC P-256)"),
        "{}",
        out.stdout
    );

    // The provider: a CSR signed by the forwarded key, verified.
    let modules = artifacts::ModuleTree::new();
    let csr = dir.path().join("remote.csr");
    let key = format!(
        "pkcs11:token={};object=ec-p256;type=private?pin-source=file:{}",
        token.label(),
        pin.display()
    );
    run_ok(
        remote_cmd(require_tool("openssl"), &runtime)
            .env("OPENSSL_MODULES", modules.ossl_modules_dir())
            .args([
                "req",
                "-new",
                "-provider",
                "p11fwd",
                "-key",
                &key,
                "-subj",
                "/CN=over-ssh",
                "-out",
            ])
            .arg(&csr),
    );
    let out = run_ok(
        Command::new(require_tool("openssl"))
            .args(["req", "-verify", "-noout", "-in"])
            .arg(&csr),
    );
    assert!(
        out.stdout.contains("verify OK") || out.stderr.contains("verify OK"),
        "{out}"
    );
    let out = run_ok(
        Command::new(require_tool("openssl"))
            .args(["req", "-noout", "-pubkey", "-in"])
            .arg(&csr),
    );
    let token_pub = std::fs::read_to_string(token.public_pem("ec-p256")).unwrap();
    assert_eq!(
        out.stdout.trim(),
        token_pub.trim(),
        "the CSR carries the token's key"
    );

    // PKCS#11 modules: ours and the stock client, both finding the forwarded socket by default.
    for module in [modules.client(), Path::new(P11KIT_CLIENT_MODULE).to_owned()] {
        let out = run_ok(
            remote_cmd(require_tool("pkcs11-tool"), &runtime)
                .arg("--module")
                .arg(&module)
                .args(["-O", "--login", "--pin", token.user_pin()]),
        );
        assert!(
            out.stdout.contains("ec-p256"),
            "{}: {}",
            module.display(),
            out.stdout
        );
    }
}

#[test]
fn ssh_forward_of_p11fwd_server() {
    forwarded_token_is_usable(ServerKind::Forwarder);
}

#[test]
fn ssh_forward_of_stock_p11_kit_server() {
    forwarded_token_is_usable(ServerKind::Stock);
}
