//! Security defaults of `p11fwd server`: who may connect (SO_PEERCRED, `-u`, `-g`), the
//! connection cap, and a `-v` trace that shows calls but never PINs or data.
#![allow(clippy::unwrap_used)]

mod common;

use std::io::{Read, Write};
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::os::unix::net::UnixStream;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use common::{FwdExt, find_one, session};
use p11fwd_tests::run::run;
use p11fwd_tests::{Key, RunOutput, StockServer, TestToken};
use p11fwd_wire::Mechanism;
use p11fwd_wire::client::{OutCap, Output};
use p11fwd_wire::consts::*;
use tempfile::TempDir;

const NOBODY: u32 = 65534;
const NOGROUP: u32 = 65534;
const DAEMON: u32 = 1;

#[track_caller]
fn require_root() {
    assert!(
        rustix::process::geteuid().is_root(),
        "this test runs clients under other uids and needs root (CI runs the tests as root)"
    );
}

/// A copy of the binary that any user can run, in a directory any user can enter.
fn public_bin() -> (TempDir, PathBuf) {
    let dir = tempfile::Builder::new()
        .prefix("p11fwd-bin.")
        .tempdir()
        .unwrap();
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    let bin = dir.path().join("p11fwd");
    std::fs::copy(common::bin(), &bin).unwrap();
    std::fs::set_permissions(&bin, std::fs::Permissions::from_mode(0o755)).unwrap();
    (dir, bin)
}

/// `p11fwd list -a <socket>` as `uid`/`gid`.
fn list_as(bin: &Path, socket: &Path, uid: u32, gid: u32) -> RunOutput {
    run(Command::new(bin)
        .args(["list", "-a"])
        .arg(socket)
        .env("HOME", "/")
        .uid(uid)
        .gid(gid))
}

/// Let other users reach a socket in the fixture's (0700) temp dir.
fn open_dir(socket: &Path) {
    let dir = socket.parent().unwrap();
    std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o711)).unwrap();
}

#[test]
fn only_our_uid_connects_unless_u_or_g_say_otherwise() {
    require_root();
    let (_bin_dir, bin) = public_bin();
    let token = TestToken::builder().with(Key::EcP256).build();

    // Default: mode 0600, owned by us; another uid that gets past the file mode (we open it
    // up) is still refused by SO_PEERCRED, with a warning.
    let fwd = common::start(&token);
    let socket = fwd.socket_path();
    let meta = std::fs::metadata(socket).unwrap();
    assert_eq!(meta.mode() & 0o777, 0o600);
    assert_eq!((meta.uid(), meta.gid()), (0, 0));
    open_dir(socket);
    let denied = list_as(&bin, socket, NOBODY, NOGROUP);
    assert!(!denied.success(), "{denied}");
    std::fs::set_permissions(socket, std::fs::Permissions::from_mode(0o666)).unwrap();
    let refused = list_as(&bin, socket, NOBODY, NOGROUP);
    assert!(!refused.success(), "{refused}");
    assert!(
        fwd.stderr()
            .contains("connection refused: peer credentials not allowed"),
        "{}",
        fwd.log()
    );
    let ours = list_as(&bin, socket, 0, 0);
    assert!(ours.stdout.contains("ec-p256"), "{ours}");

    // -u nobody: the socket is nobody's and nobody may connect; daemon still may not.
    let fwd = common::builder(&token).args(["-u", "nobody"]).start();
    let socket = fwd.socket_path();
    let meta = std::fs::metadata(socket).unwrap();
    assert_eq!((meta.mode() & 0o777, meta.uid()), (0o600, NOBODY));
    open_dir(socket);
    let allowed = list_as(&bin, socket, NOBODY, NOGROUP);
    assert!(allowed.stdout.contains("ec-p256"), "{allowed}");
    std::fs::set_permissions(socket, std::fs::Permissions::from_mode(0o666)).unwrap();
    let other = list_as(&bin, socket, DAEMON, DAEMON);
    assert!(!other.success(), "{other}");

    // -g nogroup: mode 0660, group nogroup; a member (by primary gid) may connect.
    let fwd = common::builder(&token).args(["-g", "nogroup"]).start();
    let socket = fwd.socket_path();
    let meta = std::fs::metadata(socket).unwrap();
    assert_eq!((meta.mode() & 0o777, meta.gid()), (0o660, NOGROUP));
    open_dir(socket);
    let member = list_as(&bin, socket, DAEMON, NOGROUP);
    assert!(member.stdout.contains("ec-p256"), "{member}");
    let outsider = list_as(&bin, socket, DAEMON, DAEMON);
    assert!(!outsider.success(), "{outsider}");
}

/// `-u` and `-g` together, against `p11-kit server` and ours: the peer must be that user *and*
/// have that primary group (stock's `check_credentials`), and the server's own uid (root here)
/// is refused too. Both servers admit exactly the same peers.
#[test]
fn u_and_g_together_admit_only_that_user_in_that_group_like_stock() {
    require_root();
    let (_bin_dir, bin) = public_bin();
    let token = TestToken::builder().with(Key::EcP256).build();
    let peers = [
        (NOBODY, NOGROUP),
        (NOBODY, DAEMON),
        (DAEMON, NOGROUP),
        (DAEMON, DAEMON),
        (0, NOGROUP),
        (0, 0),
    ];
    let admitted = |socket: &Path| -> Vec<bool> {
        open_dir(socket);
        // Past the file mode (stock's is 0771 with -g), so that SO_PEERCRED decides.
        std::fs::set_permissions(socket, std::fs::Permissions::from_mode(0o666)).unwrap();
        peers
            .iter()
            .map(|(uid, gid)| {
                let out = list_as(&bin, socket, *uid, *gid);
                assert_eq!(out.success(), out.stdout.contains("ec-p256"), "{out}");
                out.success()
            })
            .collect()
    };
    let args = ["-u", "nobody", "-g", "nogroup"];
    let stock = StockServer::start_args(&token, &token.uri(), &args);
    let meta = std::fs::metadata(stock.socket_path()).unwrap();
    assert_eq!((meta.uid(), meta.gid()), (NOBODY, NOGROUP));
    let stock_admits = admitted(stock.socket_path());
    let fwd = common::builder(&token).args(args).start();
    let meta = std::fs::metadata(fwd.socket_path()).unwrap();
    assert_eq!(
        (meta.mode() & 0o777, meta.uid(), meta.gid()),
        (0o660, NOBODY, NOGROUP)
    );
    let ours = admitted(fwd.socket_path());
    assert_eq!(ours, stock_admits, "peers {peers:?}\n{}", fwd.log());
    assert_eq!(ours, [true, false, false, false, false, false]);
    // -u alone: the user with any group, but not the server's own uid.
    let fwd = common::builder(&token).args(["-u", "nobody"]).start();
    assert_eq!(
        admitted(fwd.socket_path()),
        [true, true, false, false, false, false]
    );
}

/// Connect and exchange the version byte; `None` if no answer came within `wait`.
fn handshake(socket: &Path, wait: Duration) -> (UnixStream, Option<u8>) {
    let mut s = UnixStream::connect(socket).unwrap();
    s.write_all(&[2]).unwrap();
    s.set_read_timeout(Some(wait)).unwrap();
    let mut v = [0u8];
    let answer = s.read_exact(&mut v).ok().map(|()| v[0]);
    (s, answer)
}

#[test]
fn at_most_1024_connections_are_served_at_once() {
    let token = TestToken::builder().with(Key::EcP256).build();
    let fwd = common::start(&token);
    let mut open = Vec::new();
    for i in 0..1024 {
        let (s, v) = handshake(fwd.socket_path(), Duration::from_secs(10));
        assert_eq!(v, Some(2), "connection {i}");
        open.push(s);
    }
    // The next one waits in the backlog, unanswered ...
    let (mut waiting, v) = handshake(fwd.socket_path(), Duration::from_millis(500));
    assert_eq!(v, None, "a connection over the cap was served");
    // ... until another one leaves.
    drop(open.pop());
    waiting
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    let mut v = [0u8];
    waiting.read_exact(&mut v).unwrap();
    assert_eq!(v[0], 2);
    drop(open);
    // And the server still serves normally.
    let c = fwd.client(2);
    assert_eq!(c.slots(true).unwrap(), [0x11]);
}

#[test]
fn verbose_trace_shows_calls_but_never_pins_or_data() {
    let token = TestToken::builder()
        .with(Key::EcP256)
        .with(Key::Aes256)
        .build();
    // -v alone decides what is logged (no P11FWD_LOG).
    let fwd = common::builder(&token).arg("-v").log_filter(None).start();
    let c = fwd.client(2);
    let s = session(&c);
    let pin = b"123456";
    let new_pin = b"Xq7-secret-PIN-zZ";
    c.login(s, CKU_USER, Some(pin)).unwrap();
    // A distinctive PIN, so that finding it in the log cannot be a coincidence.
    c.set_pin(s, Some(pin), Some(new_pin)).unwrap();
    c.logout(s).unwrap();
    assert!(c.login(s, CKU_USER, Some(b"Wrong-PIN-qqq")).is_err());
    c.login(s, CKU_USER, Some(new_pin)).unwrap();
    let key = find_one(&c, s, "ec-p256", CKO_PRIVATE_KEY);
    let digest = [0xa5u8; 32];
    c.sign_init(s, Some(Mechanism::new(CKM_ECDSA)), key)
        .unwrap();
    let Output::Data(sig) = c.sign(s, &digest, OutCap::Buffer(128)).unwrap() else {
        panic!("no signature");
    };
    // A secret value read back (CKA_LABEL) and a sensitive one refused.
    let aes = find_one(&c, s, "aes256", CKO_SECRET_KEY);
    let slots = vec![
        p11fwd_wire::value::AttrSlot {
            ty: CKA_LABEL,
            buflen: 64,
            nested: None,
        },
        p11fwd_wire::value::AttrSlot {
            ty: CKA_VALUE,
            buflen: 64,
            nested: None,
        },
    ];
    let _ = c.get_attribute_value(s, aes, slots);
    c.close_session(s).unwrap();
    c.finalize().unwrap();
    drop(c);

    let log = fwd.stderr();
    // One line per call: function, session, CK_RV, duration, sizes.
    let line = |call: &str| {
        log.lines()
            .find(|l| l.contains(&format!("call=\"{call}\"")))
            .unwrap_or_else(|| panic!("no trace of {call}:\n{log}"))
            .to_owned()
    };
    let sign = line("C_Sign");
    for field in [
        "session=Some(",
        "rv=CKR_OK",
        " us=",
        "in_bytes=",
        "out_bytes=",
    ] {
        assert!(sign.contains(field), "{field} missing: {sign}");
    }
    assert!(
        log.lines()
            .any(|l| l.contains("call=\"C_Login\"") && l.contains("rv=CKR_PIN_INCORRECT")),
        "{log}"
    );
    assert!(
        line("C_GetAttributeValue").contains("rv=CKR_ATTRIBUTE_SENSITIVE"),
        "{log}"
    );
    // Never a PIN or data, in any spelling.
    let hex = |b: &[u8]| b.iter().map(|x| format!("{x:02x}")).collect::<String>();
    let list = |b: &[u8]| {
        b.iter()
            .map(|x| x.to_string())
            .collect::<Vec<_>>()
            .join(", ")
    };
    for (what, secret) in [
        ("new PIN", &new_pin[..]),
        ("wrong PIN", &b"Wrong-PIN-qqq"[..]),
        ("signature", &sig[..16]),
        ("digest", &digest[..16]),
        // Attribute values (the label is in the FindObjects template and the reply).
        ("label", &b"aes256"[..]),
    ] {
        let text = String::from_utf8_lossy(secret).into_owned();
        for form in [text, hex(secret), hex(secret).to_uppercase(), list(secret)] {
            assert!(
                !log.contains(&form),
                "{what} in the log as {form:?}:\n{log}"
            );
        }
    }
    // The first PIN is digits, which timestamps contain too: only its byte spellings.
    assert!(
        !log.contains(&hex(pin)) && !log.contains(&list(pin)),
        "{log}"
    );
}
