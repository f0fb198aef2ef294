//! The command line: daemon mode prints an eval-able snippet with the child's PID, `-k` stops
//! it and removes the socket; a client module is never loaded.
#![allow(clippy::unwrap_used)]

mod common;

use std::os::linux::net::SocketAddrExt;
use std::process::Command;
use std::time::Duration;

use p11fwd_tests::{Key, P11Env, P11KIT_CLIENT_MODULE, TestToken, require_tool, run_fail, run_ok};

#[test]
fn daemon_snippet_and_kill() {
    let token = TestToken::builder().with(Key::EcP256).build();
    let dir = tempfile::tempdir().unwrap();
    let socket = dir.path().join("d.sock");
    let out = run_ok(
        Command::new(common::bin())
            .envs(token.env())
            .args(["server", "-s", "--provider"])
            .arg(token.module_path())
            .arg("-n")
            .arg(&socket)
            .arg(token.uri()),
    );
    let mut address = None;
    let mut pid = None;
    for part in out.stdout.split(';').map(str::trim) {
        if let Some(a) = part.strip_prefix("P11_KIT_SERVER_ADDRESS=") {
            address = Some(a.to_owned());
        }
        if let Some(p) = part.strip_prefix("P11_KIT_SERVER_PID=") {
            pid = Some(p.to_owned());
        }
    }
    let (address, pid) = (address.unwrap(), pid.unwrap());
    let meta = std::fs::metadata(&socket).unwrap();
    assert_eq!(
        std::os::unix::fs::PermissionsExt::mode(&meta.permissions()) & 0o777,
        0o600
    );
    let l = P11Env::new(&address).run_ok(Command::new(require_tool("pkcs11-tool")).args([
        "--module",
        P11KIT_CLIENT_MODULE,
        "-L",
    ]));
    assert!(l.stdout.contains(token.label()), "{}", l.stdout);
    let k = run_ok(
        Command::new(common::bin())
            .args(["server", "-k", "-s"])
            .env("P11_KIT_SERVER_PID", &pid),
    );
    assert_eq!(
        k.stdout,
        "unset P11_KIT_SERVER_ADDRESS;\nunset P11_KIT_SERVER_PID;\n"
    );
    for _ in 0..300 {
        if !socket.exists() {
            break;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    assert!(!socket.exists(), "socket not removed on SIGTERM");
}

#[test]
fn refuses_client_modules() {
    let out = run_fail(Command::new(common::bin()).args([
        "server",
        "-f",
        "-p",
        P11KIT_CLIENT_MODULE,
        "-n",
        "/tmp/p11fwd-never.sock",
        "pkcs11:",
    ]));
    assert!(out.stderr.contains("refusing to load"), "{}", out.stderr);
}

/// Pulls `NAME=value` / `setenv NAME value` out of a start snippet.
fn snippet_value(snippet: &str, name: &str) -> String {
    for part in snippet.split([';', '\n']).map(str::trim) {
        if let Some(v) = part.strip_prefix(&format!("{name}=")) {
            return v.to_owned();
        }
        if let Some(v) = part.strip_prefix(&format!("setenv {name} ")) {
            return v.trim().to_owned();
        }
    }
    panic!("no {name} in {snippet:?}");
}

#[test]
fn csh_snippet_and_default_socket_in_xdg_runtime_dir() {
    use std::os::unix::fs::PermissionsExt;
    let token = TestToken::builder().with(Key::EcP256).build();
    let runtime = tempfile::tempdir().unwrap();
    let out = run_ok(
        Command::new(common::bin())
            .envs(token.env())
            .env("XDG_RUNTIME_DIR", runtime.path())
            .args(["server", "-c", "--provider"])
            .arg(token.module_path())
            .arg(token.uri()),
    );
    assert!(
        out.stdout.starts_with("setenv P11_KIT_SERVER_ADDRESS "),
        "{}",
        out.stdout
    );
    let pid = snippet_value(&out.stdout, "P11_KIT_SERVER_PID");
    let address = snippet_value(&out.stdout, "P11_KIT_SERVER_ADDRESS");
    let dir = runtime.path().join("p11-kit");
    // Like stock (rpc §7.1), the name has the pre-fork PID and the snippet the daemon's.
    let sockets: Vec<_> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    assert_eq!(sockets.len(), 1, "{sockets:?}");
    let socket = sockets[0].clone();
    let name = socket.file_name().unwrap().to_string_lossy().into_owned();
    let before_fork: u32 = name.strip_prefix("pkcs11-").unwrap().parse().unwrap();
    assert_ne!(before_fork.to_string(), pid);
    assert_eq!(
        address,
        format!(
            "unix:path={}",
            p11fwd_tests::percent_encode(&socket.to_string_lossy())
        )
    );
    let mode = |p: &std::path::Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode(&dir), 0o700);
    assert_eq!(mode(&socket), 0o600);
    let l = P11Env::new(&address).run_ok(Command::new(require_tool("pkcs11-tool")).args([
        "--module",
        P11KIT_CLIENT_MODULE,
        "-L",
    ]));
    assert!(l.stdout.contains(token.label()), "{}", l.stdout);
    let k = run_ok(
        Command::new(common::bin())
            .args(["server", "-k", "-c"])
            .env("P11_KIT_SERVER_PID", &pid),
    );
    assert_eq!(
        k.stdout,
        "unsetenv P11_KIT_SERVER_ADDRESS;\nunsetenv P11_KIT_SERVER_PID;\n"
    );
    wait_gone(&socket);
    wait_gone(&dir);
}

#[track_caller]
fn wait_gone(path: &std::path::Path) {
    for _ in 0..300 {
        if !path.exists() {
            return;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    panic!("{} not removed", path.display());
}

#[test]
fn sigint_removes_the_socket_and_t_exits_when_idle() {
    let token = TestToken::builder().with(Key::EcP256).build();
    let mut fwd = common::start(&token);
    let socket = fwd.socket_path().to_owned();
    fwd.signal(rustix::process::Signal::INT);
    let status = fwd.wait_exit(Duration::from_secs(5));
    assert!(
        status.is_some_and(|s| s.success()),
        "{status:?}\n{}",
        fwd.log()
    );
    assert!(!socket.exists());

    // -t 1: a connection keeps it alive; a second after the last one leaves, it exits.
    let start = std::time::Instant::now();
    let mut fwd = common::builder(&token).args(["-t", "1"]).start();
    let c = common::connect(fwd.socket_path(), 2);
    std::thread::sleep(Duration::from_millis(1800));
    assert!(fwd.alive(), "exited with a connection open");
    assert_eq!(c.slots(true).unwrap(), [0x11]);
    drop(c);
    let status = fwd.wait_exit(Duration::from_secs(5));
    assert!(
        status.is_some_and(|s| s.success()),
        "{status:?}\n{}",
        fwd.log()
    );
    assert!(start.elapsed() >= Duration::from_secs(2));
    assert!(!fwd.socket_path().exists());
}

/// `p11fwd server ARGS --provider <softhsm> <uri>` under a shell that moves `fd` (given as
/// stdin) to fd 3 and sets `LISTEN_PID` to its own pid before exec'ing the server, as systemd
/// does.
fn under_systemd(
    token: &TestToken,
    fd: impl Into<std::os::fd::OwnedFd>,
    listen_fds: &str,
    args: &[&str],
) -> Command {
    let mut cmd = Command::new("/bin/sh");
    cmd.arg("-c")
        .arg(format!(
            "exec 3<&0 </dev/null; LISTEN_PID=$$ LISTEN_FDS={listen_fds} exec \"$0\" \"$@\""
        ))
        .arg(common::bin())
        .envs(token.env())
        .arg("server")
        .args(args)
        .arg("--provider")
        .arg(token.module_path())
        .arg(token.uri())
        .stdin(std::process::Stdio::from(fd.into()));
    cmd
}

/// `p11fwd server -f` socket-activated (see [`under_systemd`]), with its output piped.
fn socket_activated(
    token: &TestToken,
    listener: std::os::unix::net::UnixListener,
    listen_fds: &str,
    extra: &[&str],
) -> std::process::Child {
    let mut args = vec!["-f"];
    args.extend(extra);
    under_systemd(token, listener, listen_fds, &args)
        .env("P11FWD_LOG", "info")
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap()
}

#[test]
fn systemd_socket_activation_uses_the_passed_socket() {
    use std::os::unix::fs::MetadataExt;
    let token = TestToken::builder().with(Key::EcP256).build();
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("activated.sock");
    let listener = std::os::unix::net::UnixListener::bind(&path).unwrap();
    let inode = std::fs::metadata(&path).unwrap().ino();
    let name = path.to_string_lossy().into_owned();
    let child = socket_activated(&token, listener, "1", &["-n", &name]);
    let address = format!("unix:path={}", p11fwd_tests::percent_encode(&name));
    let mut listed = None;
    for _ in 0..100 {
        let l = P11Env::new(&address).run(Command::new(require_tool("pkcs11-tool")).args([
            "--module",
            P11KIT_CLIENT_MODULE,
            "-L",
        ]));
        if l.stdout.contains(token.label()) {
            listed = Some(l);
            break;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    assert!(listed.is_some(), "the activated server never answered");
    // The server used our socket: same file, not rebound.
    assert_eq!(std::fs::metadata(&path).unwrap().ino(), inode);
    let pid = rustix::process::Pid::from_raw(child.id() as i32).unwrap();
    rustix::process::kill_process(pid, rustix::process::Signal::TERM).unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success(), "{out:?}");
    // -n only names the address in the snippet, and the socket belongs to systemd: kept.
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(stdout.contains(&address), "{stdout}");
    assert!(path.exists(), "the activated socket was removed");

    // Anything but exactly one listening socket is refused.
    let other = dir.path().join("other.sock");
    let listener = std::os::unix::net::UnixListener::bind(&other).unwrap();
    let out = socket_activated(&token, listener, "2", &[])
        .wait_with_output()
        .unwrap();
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("exactly one socket"),
        "{out:?}"
    );
    let (a, _b) = std::os::unix::net::UnixStream::pair().unwrap();
    let out = under_systemd(&token, a, "1", &["-f"]).output().unwrap();
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("listening Unix stream socket"),
        "{out:?}"
    );
}

#[test]
fn registered_modules_without_provider_but_never_client_modules() {
    let token = TestToken::builder().with(Key::EcP256).build();
    // The system registers softhsm2 (and opensc, p11-kit-trust); the user config adds the stock
    // client under its own name and under another one, and a copy with a neutral file name.
    let config = tempfile::tempdir().unwrap();
    let modules = config.path().join("pkcs11/modules");
    std::fs::create_dir_all(&modules).unwrap();
    let copy = config.path().join("libneutral.so");
    std::fs::copy(P11KIT_CLIENT_MODULE, &copy).unwrap();
    std::fs::write(
        modules.join("aa-client.module"),
        format!("module: {P11KIT_CLIENT_MODULE}\npriority: 100\n"),
    )
    .unwrap();
    std::fs::write(
        modules.join("ab-disguised.module"),
        format!("module: {}\npriority: 100\n", copy.display()),
    )
    .unwrap();
    let fwd = common::builder(&token)
        .provider("")
        .env("XDG_CONFIG_HOME", config.path())
        .start();
    assert!(
        !fwd.command_line().contains("--provider"),
        "{}",
        fwd.command_line()
    );
    let l = fwd
        .p11env()
        .run_ok(Command::new(require_tool("pkcs11-tool")).args([
            "--module",
            P11KIT_CLIENT_MODULE,
            "-L",
        ]));
    assert!(l.stdout.contains(token.label()), "{}", l.stdout);
    let log = fwd.stderr();
    for name in ["aa-client", "ab-disguised"] {
        assert!(
            log.lines().any(|l| l.contains("skipping module")
                && l.contains(name)
                && l.contains("refusing")),
            "{name} not refused:\n{log}"
        );
    }
}

/// The daemon's snippet as users take it: `eval "$(p11fwd server -s ...)"` in a shell, the stock
/// client through the exported address, then `eval "$(p11fwd server -k)"`.
#[test]
fn the_snippet_evaluated_by_a_shell() {
    let token = TestToken::builder().with(Key::EcP256).build();
    let runtime = tempfile::tempdir().unwrap();
    let script = r#"set -e
eval "$("$P11FWD" server -s --provider "$MODULE" "$URI")"
echo "pid=$P11_KIT_SERVER_PID"
echo "address=$P11_KIT_SERVER_ADDRESS"
pkcs11-tool --module "$CLIENT" -L
eval "$("$P11FWD" server -k)"
echo "after=${P11_KIT_SERVER_PID-unset},${P11_KIT_SERVER_ADDRESS-unset}"
"#;
    let out = run_ok(
        Command::new("/bin/sh")
            .args(["-c", script])
            .envs(token.env())
            .env("XDG_RUNTIME_DIR", runtime.path())
            .env("SHELL", "/bin/sh")
            .env("P11FWD", common::bin())
            .env("MODULE", token.module_path())
            .env("URI", token.uri())
            .env("CLIENT", P11KIT_CLIENT_MODULE)
            .env("PATH", std::env::var_os("PATH").unwrap())
            .env_remove("P11_KIT_SERVER_ADDRESS")
            .env_remove("P11_KIT_SERVER_PID"),
    );
    let line = |key: &str| {
        out.stdout
            .lines()
            .find_map(|l| l.strip_prefix(key))
            .unwrap_or_else(|| panic!("no {key} in {out}"))
            .to_owned()
    };
    assert!(out.stdout.contains(token.label()), "{out}");
    assert_eq!(line("after="), "unset,unset", "{out}");
    let address = line("address=");
    let socket = std::path::PathBuf::from(address.strip_prefix("unix:path=").unwrap());
    assert!(socket.starts_with(runtime.path().join("p11-kit")), "{out}");
    // The server stopped, and took its socket and directory with it.
    let pid: i32 = line("pid=").parse().unwrap();
    wait_exited(pid);
    wait_gone(&socket);
    wait_gone(&runtime.path().join("p11-kit"));
}

/// Waits (≤ 3 s) until process `pid` is gone (or a zombie nobody reaped yet).
#[track_caller]
fn wait_exited(pid: i32) {
    let stat = format!("/proc/{pid}/stat");
    for _ in 0..300 {
        match std::fs::read_to_string(&stat) {
            Err(_) => return,
            Ok(s)
                if s.rsplit(')')
                    .next()
                    .is_some_and(|r| r.trim_start().starts_with('Z')) =>
            {
                return;
            }
            Ok(_) => std::thread::sleep(Duration::from_millis(10)),
        }
    }
    panic!("process {pid} still running");
}

/// Socket activation in daemon mode without `-n`: the snippet names the socket systemd passed
/// (getsockname), not an empty address.
#[test]
fn socket_activation_in_daemon_mode_names_the_passed_socket() {
    let token = TestToken::builder().with(Key::EcP256).build();
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("activated daemon.sock");
    let listener = std::os::unix::net::UnixListener::bind(&path).unwrap();
    let log = std::fs::File::create(dir.path().join("log")).unwrap();
    let out = under_systemd(&token, listener, "1", &["-s"])
        .stderr(log)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{out:?}");
    let address = snippet_value(&stdout, "P11_KIT_SERVER_ADDRESS");
    assert_eq!(
        address,
        format!(
            "unix:path={}",
            p11fwd_tests::percent_encode(&path.to_string_lossy())
        )
    );
    let l = P11Env::new(&address).run_ok(Command::new(require_tool("pkcs11-tool")).args([
        "--module",
        P11KIT_CLIENT_MODULE,
        "-L",
    ]));
    assert!(l.stdout.contains(token.label()), "{l}");
    let pid = snippet_value(&stdout, "P11_KIT_SERVER_PID");
    run_ok(
        Command::new(common::bin())
            .args(["server", "-k", "-s"])
            .env("P11_KIT_SERVER_PID", &pid),
    );
    wait_exited(pid.parse().unwrap());
    assert!(path.exists(), "the activated socket belongs to systemd");

    // A socket without a path (abstract) cannot be named: refused, with what to do.
    let name = format!("p11fwd-test-{}", std::process::id());
    let unnamed = std::os::unix::net::UnixListener::bind_addr(
        &std::os::unix::net::SocketAddr::from_abstract_name(name).unwrap(),
    )
    .unwrap();
    let out = under_systemd(&token, unnamed, "1", &["-s"])
        .output()
        .unwrap();
    assert!(!out.status.success(), "{out:?}");
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("give its address with -n"),
        "{out:?}"
    );
}
