//! A private `sshd` on 127.0.0.1 (own config, port and host key), for OpenSSH tests: `ssh -I`
//! with a PKCS#11 module, and `ssh -R` forwarding of the server socket.
//!
//! `sshd` runs as the test user, which is root on the CI machine; it then needs its
//! privilege-separation directory `/run/sshd`, created here when missing (the Debian service
//! would create it at boot).

use std::fs::File;
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::run::{require_tool, run_ok};

/// A running `sshd`, killed on drop.
#[derive(Debug)]
pub struct Sshd {
    child: Child,
    port: u16,
    log: PathBuf,
}

impl Sshd {
    /// Starts `sshd` with its files in `dir`, accepting the public keys in `authorized_keys`
    /// (OpenSSH format, one per line); `extra` lines are appended to its config.
    #[track_caller]
    pub fn start(dir: &Path, authorized_keys: &str, extra: &[&str]) -> Self {
        std::fs::create_dir_all("/run/sshd").expect("create /run/sshd");
        let host_key = dir.join("host_ed25519");
        run_ok(
            Command::new(require_tool("ssh-keygen"))
                .args(["-q", "-t", "ed25519", "-N", "", "-f"])
                .arg(&host_key),
        );
        let keys = dir.join("authorized_keys");
        std::fs::write(&keys, authorized_keys).expect("write authorized_keys");
        let port = TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .expect("a free port")
            .port();
        let mut config = format!(
            "Port {port}\nListenAddress 127.0.0.1\nHostKey {}\nAuthorizedKeysFile {}\n\
             PidFile {}\nPubkeyAuthentication yes\nPasswordAuthentication no\n\
             KbdInteractiveAuthentication no\nUsePAM no\nStrictModes no\n\
             PermitRootLogin prohibit-password\n",
            host_key.display(),
            keys.display(),
            dir.join("sshd.pid").display()
        );
        for line in extra {
            config.push_str(line);
            config.push('\n');
        }
        let config_path = dir.join("sshd_config");
        std::fs::write(&config_path, config).expect("write sshd_config");
        let log = dir.join("sshd.log");
        let child = Command::new(require_tool("sshd"))
            .args(["-D", "-e", "-f"])
            .arg(&config_path)
            .stdin(Stdio::null())
            .stdout(File::create(dir.join("sshd.out")).expect("sshd.out"))
            .stderr(File::create(&log).expect("sshd.log"))
            .spawn()
            .expect("start sshd");
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

    /// The TCP port it listens on (127.0.0.1).
    pub fn port(&self) -> u16 {
        self.port
    }

    /// What it logged so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// `ssh` options for a non-interactive client of this server: no config file, no host key
    /// checks, public-key authentication only, no agent.
    pub fn client_args(&self) -> Vec<String> {
        [
            "-F",
            "/dev/null",
            "-p",
            &self.port.to_string(),
            "-o",
            "StrictHostKeyChecking=no",
            "-o",
            "UserKnownHostsFile=/dev/null",
            "-o",
            "PreferredAuthentications=publickey",
            "-o",
            "IdentityAgent=none",
            "-o",
            "ConnectTimeout=20",
        ]
        .iter()
        .map(|s| (*s).to_owned())
        .collect()
    }
}

impl Drop for Sshd {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
