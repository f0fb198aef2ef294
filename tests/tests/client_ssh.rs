//! `p11fwd-client.so` in OpenSSH: `ssh-keygen -D` prints the token's public keys, and
//! `ssh -I` logs in to an `sshd` on 127.0.0.1 (own config, port, host key; the token's P-256 key
//! in `AuthorizedKeysFile`) and runs a command. The PIN comes from `SSH_ASKPASS`. Against a
//! stock `p11-kit server` and `p11fwd server`.
//!
//! `sshd` must run as root here (it is started as the test user, which is root on the CI
//! machine) and then needs its privilege-separation directory `/run/sshd`, which the test
//! creates when it is missing (the Debian service would create it at boot).
#![allow(clippy::unwrap_used)] // Tests unwrap: a panic is a test failure.

mod client_common;

use std::fs::File;
use std::net::{TcpListener, TcpStream};
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use client_common::{Kind, Server, module};
use p11fwd_tests::{Key, TestToken, require_tool, run_ok};

/// The public key in OpenSSH form (`type base64`) of a PEM SubjectPublicKeyInfo.
fn ssh_public(pem: &Path) -> String {
    let out = run_ok(
        Command::new(require_tool("ssh-keygen"))
            .args(["-i", "-m", "PKCS8", "-f"])
            .arg(pem),
    );
    let mut fields = out.stdout.split_whitespace();
    format!("{} {}", fields.next().unwrap(), fields.next().unwrap())
}

/// A private `sshd` on 127.0.0.1, killed on drop.
struct Sshd {
    child: Child,
    port: u16,
    log: std::path::PathBuf,
}

impl Sshd {
    fn start(dir: &Path, authorized_keys: &str) -> Self {
        std::fs::create_dir_all("/run/sshd").unwrap();
        let host_key = dir.join("host_ed25519");
        run_ok(
            Command::new(require_tool("ssh-keygen"))
                .args(["-q", "-t", "ed25519", "-N", "", "-f"])
                .arg(&host_key),
        );
        let keys = dir.join("authorized_keys");
        std::fs::write(&keys, authorized_keys).unwrap();
        let port = TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let config = dir.join("sshd_config");
        std::fs::write(
            &config,
            format!(
                "Port {port}\nListenAddress 127.0.0.1\nHostKey {}\nAuthorizedKeysFile {}\n\
                 PidFile {}\nPubkeyAuthentication yes\nPasswordAuthentication no\n\
                 KbdInteractiveAuthentication no\nUsePAM no\nStrictModes no\n\
                 PermitRootLogin prohibit-password\n",
                host_key.display(),
                keys.display(),
                dir.join("sshd.pid").display()
            ),
        )
        .unwrap();
        let log = dir.join("sshd.log");
        let child = Command::new(require_tool("sshd"))
            .args(["-D", "-e", "-f"])
            .arg(&config)
            .stdin(Stdio::null())
            .stdout(File::create(dir.join("sshd.out")).unwrap())
            .stderr(File::create(&log).unwrap())
            .spawn()
            .unwrap();
        let mut sshd = Self { child, port, log };
        let deadline = Instant::now() + Duration::from_secs(10);
        while TcpStream::connect(("127.0.0.1", port)).is_err() {
            if let Ok(Some(status)) = sshd.child.try_wait() {
                panic!("sshd exited with {status}:\n{}", sshd.log());
            }
            assert!(Instant::now() < deadline, "sshd not up:\n{}", sshd.log());
            std::thread::sleep(Duration::from_millis(20));
        }
        sshd
    }

    fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for Sshd {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn ssh_works(kind: Kind) {
    let token = TestToken::builder()
        .with(Key::Rsa2048)
        .with(Key::EcP256)
        .build();
    let server = Server::start(kind, &token);
    let env = server.p11env();
    let ours = module();

    // ssh-keygen -D: the token's public keys.
    let listed = env
        .run_ok(env.command(require_tool("ssh-keygen")).arg("-D").arg(&ours))
        .stdout;
    let ec = ssh_public(&token.public_pem("ec-p256"));
    let rsa = ssh_public(&token.public_pem("rsa2048"));
    assert!(listed.contains(&ec), "{ec} missing:\n{listed}");
    assert!(listed.contains(&rsa), "{rsa} missing:\n{listed}");

    // ssh -I: a login with the token's P-256 key.
    let dir = tempfile::tempdir().unwrap();
    let sshd = Sshd::start(dir.path(), &format!("{ec} p11fwd-test\n"));
    let askpass = dir.path().join("askpass");
    std::fs::write(&askpass, format!("#!/bin/sh\necho {}\n", token.user_pin())).unwrap();
    std::fs::set_permissions(&askpass, std::fs::Permissions::from_mode(0o700)).unwrap();
    let out = env.run(
        env.command(require_tool("ssh"))
            .env("SSH_ASKPASS", &askpass)
            .env("SSH_ASKPASS_REQUIRE", "force")
            .env("DISPLAY", ":0")
            .args(["-F", "/dev/null", "-p", &sshd.port.to_string()])
            .args([
                "-o",
                "StrictHostKeyChecking=no",
                "-o",
                "UserKnownHostsFile=/dev/null",
            ])
            .args([
                "-o",
                "PreferredAuthentications=publickey",
                "-o",
                "IdentityAgent=none",
            ])
            .args(["-o", "ConnectTimeout=20", "-I"])
            .arg(&ours)
            .args(["root@127.0.0.1", "echo", "p11fwd-ssh-login-ok"]),
    );
    assert!(
        out.success() && out.stdout.contains("p11fwd-ssh-login-ok"),
        "{out}\n--- sshd ---\n{}",
        sshd.log()
    );
}

#[test]
fn ssh_stock_server() {
    ssh_works(Kind::Stock);
}

#[test]
fn ssh_p11fwd_server() {
    ssh_works(Kind::Fwd);
}
