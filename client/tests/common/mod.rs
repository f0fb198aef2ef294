//! Shared harness of the FFI tests: load `libp11fwd_client.so` with `dlopen` (as applications
//! do), drive its function list, and run the servers it talks to (stock `p11-kit server` and
//! `p11fwd server`) in their own process groups so that a test can kill and restart them.
//!
//! The module's state is global to the process, so every test takes [`lock`] first and calls
//! `C_Finalize` before it ends; under nextest each test also runs in its own process.
#![allow(
    dead_code,
    unreachable_pub,
    unsafe_code,
    clippy::unwrap_used,
    clippy::missing_safety_doc
)]

use std::ffi::c_void;
use std::fs::File;
use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::ptr;
use std::sync::{Mutex, MutexGuard};
use std::time::{Duration, Instant};

use cryptoki_sys::*;
use p11fwd_tests::relay::Relay;
use p11fwd_tests::{TestToken, artifacts, percent_encode, require_tool};
use tempfile::TempDir;

/// Serialises the tests of one binary: the module and the environment are process-global.
static LOCK: Mutex<()> = Mutex::new(());

/// Take the test lock (a failed test's poison is ignored).
pub fn lock() -> MutexGuard<'static, ()> {
    LOCK.lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// Set (or clear) an environment variable the module reads at `C_Initialize`.
pub fn set_env(name: &str, value: Option<&str>) {
    match value {
        // SAFETY: tests hold `lock()`; no other thread of this process reads the environment
        // while it changes (the module reads it inside C_Initialize, called by this thread).
        Some(v) => unsafe { std::env::set_var(name, v) },
        // SAFETY: as above.
        None => unsafe { std::env::remove_var(name) },
    }
}

/// Which server a test talks to.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    /// Debian's `p11-kit server` 0.24.1 (protocol version 0).
    Stock,
    /// `p11fwd server` (protocol version 2).
    Fwd,
}

/// A server serving a [`TestToken`] on a fixed socket; it can be killed and started again on
/// the same socket (a restart).
#[derive(Debug)]
pub struct Server {
    kind: Kind,
    child: Option<Child>,
    dir: TempDir,
    socket: PathBuf,
    env: Vec<(String, PathBuf)>,
    module: PathBuf,
    uri: String,
}

impl Server {
    /// Start a server of `kind` for `token`.
    #[track_caller]
    pub fn start(kind: Kind, token: &TestToken) -> Self {
        let dir = tempfile::Builder::new()
            .prefix("p11fwd-client-test.")
            .tempdir()
            .unwrap();
        let socket = dir.path().join("server.sock");
        let mut s = Self {
            kind,
            child: None,
            dir,
            socket,
            env: token
                .env()
                .iter()
                .map(|(k, v)| ((*k).to_owned(), v.to_path_buf()))
                .collect(),
            module: token.module_path().to_path_buf(),
            uri: token.uri(),
        };
        s.spawn();
        s
    }

    fn spawn(&mut self) {
        let mut cmd = match self.kind {
            Kind::Stock => {
                let mut c = Command::new(require_tool("p11-kit"));
                c.arg("server");
                c
            }
            Kind::Fwd => {
                let mut c = Command::new(artifacts::forwarder_bin());
                c.arg("server");
                c
            }
        };
        let _ = std::fs::remove_file(&self.socket);
        cmd.envs(self.env.iter().map(|(k, v)| (k, v)))
            .arg("-f")
            .arg("--provider")
            .arg(&self.module)
            .arg("-n")
            .arg(&self.socket)
            .arg(&self.uri)
            .stdin(Stdio::null())
            .stdout(File::create(self.dir.path().join("server.out")).unwrap())
            .stderr(File::create(self.dir.path().join("server.log")).unwrap())
            // Its own process group: `stop` also kills the stock server's per-connection
            // `p11-kit-remote` children, which would otherwise keep serving old connections.
            .process_group(0);
        let child = cmd.spawn().unwrap();
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(10);
        while UnixStream::connect(&self.socket).is_err() {
            if let Some(Ok(Some(status))) = self.child.as_mut().map(Child::try_wait) {
                panic!(
                    "{:?} server exited with {status}:\n{}",
                    self.kind,
                    self.log()
                );
            }
            assert!(
                Instant::now() < deadline,
                "{:?} server not up:\n{}",
                self.kind,
                self.log()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Kill the server and everything it started (SIGKILL to the process group).
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            if let Some(pid) = rustix::process::Pid::from_raw(child.id() as i32) {
                let _ = rustix::process::kill_process_group(pid, rustix::process::Signal::KILL);
            }
            let _ = child.wait();
        }
        let _ = std::fs::remove_file(&self.socket);
    }

    /// Start it again on the same socket.
    pub fn restart(&mut self) {
        self.stop();
        self.spawn();
    }

    /// The kind.
    pub fn kind(&self) -> Kind {
        self.kind
    }

    /// `unix:path=...`.
    pub fn address(&self) -> String {
        format!(
            "unix:path={}",
            percent_encode(&self.socket.to_string_lossy())
        )
    }

    /// The socket path.
    pub fn socket(&self) -> &Path {
        &self.socket
    }

    /// What the server logged.
    pub fn log(&self) -> String {
        let read = |n: &str| std::fs::read_to_string(self.dir.path().join(n)).unwrap_or_default();
        format!(
            "--- stdout ---\n{}--- stderr ---\n{}",
            read("server.out"),
            read("server.log")
        )
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.stop();
    }
}

/// A server of `kind` behind a relay without delay that counts round trips, with
/// `P11FWD_SERVER_ADDRESS` pointing at the relay.
pub struct Relayed {
    /// The relay.
    pub relay: Relay,
    /// The server.
    pub server: Server,
    /// A temporary directory (the relay's socket is in it).
    pub dir: TempDir,
}

impl Relayed {
    /// Start both.
    pub fn start(kind: Kind, token: &TestToken) -> Self {
        let server = Server::start(kind, token);
        let dir = tempfile::tempdir().unwrap();
        let relay = Relay::start(
            dir.path().join("relay.sock"),
            server.socket(),
            Duration::ZERO,
        )
        .unwrap();
        set_env("P11FWD_SERVER_ADDRESS", Some(&relay.address()));
        Self { relay, server, dir }
    }
}

/// [`Relayed`] and the module initialised against the relay.
pub struct Rig {
    /// The module.
    pub lib: Lib,
    /// The relay.
    pub relay: Relay,
    _rest: (Server, TempDir),
}

impl Rig {
    /// Start it.
    pub fn new(kind: Kind, token: &TestToken) -> Self {
        let Relayed { relay, server, dir } = Relayed::start(kind, token);
        set_env("P11FWD_TIMEOUT", Some("20"));
        let lib = Lib::ours();
        assert_eq!(lib.init(), CKR_OK);
        Self {
            lib,
            relay,
            _rest: (server, dir),
        }
    }

    /// Round trips since the last call.
    pub fn rt(&self) -> u64 {
        let n = self.relay.stats().round_trips;
        self.relay.reset_stats();
        n
    }
}

/// A fake server's side of the protocol: answer the version byte with 0, then read one request
/// frame; returns its message code (to reply with).
pub fn accept_request(s: &mut UnixStream) -> std::io::Result<u32> {
    let mut b = [0u8; 1];
    s.read_exact(&mut b)?;
    s.write_all(&[0])?;
    let mut h = [0u8; 12];
    s.read_exact(&mut h)?;
    let word = |i: usize| u32::from_be_bytes([h[i], h[i + 1], h[i + 2], h[i + 3]]);
    let mut rest = vec![0u8; (word(4) + word(8)) as usize];
    s.read_exact(&mut rest)?;
    Ok(word(0))
}

/// Write a reply frame with message `code`, no options, and `body` (call id, signature, values).
pub fn send_reply(s: &mut UnixStream, code: u32, body: &[u8]) -> std::io::Result<()> {
    let mut frame = Vec::with_capacity(12 + body.len());
    frame.extend_from_slice(&code.to_be_bytes());
    frame.extend_from_slice(&0u32.to_be_bytes());
    frame.extend_from_slice(&(body.len() as u32).to_be_bytes());
    frame.extend_from_slice(body);
    s.write_all(&frame)
}

/// Both server kinds (the forwarder is part of the workspace build).
pub const KINDS: [Kind; 2] = [Kind::Stock, Kind::Fwd];

/// `CK_RV` results.
pub type Ck<T> = Result<T, CK_RV>;

fn ck(rv: CK_RV) -> Ck<()> {
    if rv == CKR_OK { Ok(()) } else { Err(rv) }
}

/// One `#[test]` per server kind for each test body `fn(Kind)`:
/// `per_server! { body => stock_test_name, p11fwd_test_name; ... }`.
#[macro_export]
macro_rules! per_server {
    ($($body:ident => $stock:ident, $fwd:ident;)*) => {$(
        #[test]
        fn $stock() {
            $body($crate::common::Kind::Stock);
        }

        #[test]
        fn $fwd() {
            $body($crate::common::Kind::Fwd);
        }
    )*};
}

/// A loaded PKCS#11 module and its 3.0 function list.
#[derive(Debug)]
pub struct Lib {
    lib: libloading::Library,
    /// The function list (3.0 layout; the module guarantees every entry).
    pub f: &'static CK_FUNCTION_LIST_3_0,
}

/// Call a function of the list: `call!(lib, C_Logout, h)`.
#[macro_export]
macro_rules! call {
    ($lib:expr, $f:ident $(, $arg:expr)* $(,)?) => {{
        let f = $lib.f.$f.expect(stringify!($f));
        // SAFETY: a function of the module under test, called with the arguments the test
        // chose (possibly deliberately bad ones: the module must cope).
        unsafe { f($($arg),*) }
    }};
}

impl Lib {
    /// `libp11fwd_client.so` from the target directory.
    pub fn ours() -> Self {
        Self::load(&artifacts::client_module())
    }

    /// The stock `p11-kit-client.so` (2.40 list only).
    pub fn stock_client() -> Self {
        Self::load(Path::new(p11fwd_tests::P11KIT_CLIENT_MODULE))
    }

    /// `libp11fwd_client.so`'s 2.40 list, from `C_GetFunctionList` (only the 2.40 functions of
    /// `f` may be used).
    pub fn ours_2_40() -> Self {
        Self::load_with(&artifacts::client_module(), false)
    }

    /// Load a module; uses `C_GetInterface` when present, else `C_GetFunctionList`.
    pub fn load(path: &Path) -> Self {
        Self::load_with(path, true)
    }

    fn load_with(path: &Path, interface: bool) -> Self {
        // SAFETY: loading a PKCS#11 module; its initialisers are trusted test subjects.
        let lib = unsafe { libloading::Library::new(path) }.unwrap();
        // SAFETY: the standard PKCS#11 entry points, with their C signatures.
        let get_interface = unsafe { lib.get::<CK_C_GetInterface>(b"C_GetInterface\0") };
        let get_interface = get_interface.ok().and_then(|f| *f).filter(|_| interface);
        let list: *mut c_void = match get_interface {
            Some(get) => {
                let mut iface: *mut CK_INTERFACE = ptr::null_mut();
                // SAFETY: NULL name and version ask for the default interface.
                let rv = unsafe { get(ptr::null_mut(), ptr::null_mut(), &mut iface, 0) };
                assert_eq!(rv, CKR_OK);
                // SAFETY: the module returned a valid interface pointer.
                unsafe { (*iface).pFunctionList }
            }
            None => {
                // SAFETY: as above.
                let get = unsafe { lib.get::<CK_C_GetFunctionList>(b"C_GetFunctionList\0") }
                    .unwrap()
                    .unwrap();
                let mut l: *mut CK_FUNCTION_LIST = ptr::null_mut();
                // SAFETY: a valid out pointer.
                assert_eq!(unsafe { get(&mut l) }, CKR_OK);
                l.cast()
            }
        };
        // SAFETY: the list lives as long as the library, which we keep loaded (and the test
        // never unloads it while the reference is used). Only the 2.40 prefix of the stock
        // client's list may be used.
        let f = unsafe { &*list.cast::<CK_FUNCTION_LIST_3_0>() };
        Self { lib, f }
    }

    /// A raw symbol of the library.
    pub fn symbol<T: Copy>(&self, name: &str) -> T {
        let name = format!("{name}\0");
        // SAFETY: the caller names the right type for the symbol.
        *unsafe { self.lib.get::<T>(name.as_bytes()) }.unwrap()
    }

    /// SoftHSM itself, loaded in this process for `token` and initialised: the reference the
    /// module's answers are compared with. `SOFTHSM2_CONF` is set only while SoftHSM reads it
    /// (callers hold [`lock`]).
    pub fn softhsm(token: &TestToken) -> Self {
        set_env("SOFTHSM2_CONF", Some(&arg(token.conf_path())));
        let lib = Self::load(token.module_path());
        assert_eq!(lib.init(), CKR_OK);
        set_env("SOFTHSM2_CONF", None);
        lib
    }

    /// `C_Initialize` with `CKF_OS_LOCKING_OK`.
    pub fn init(&self) -> CK_RV {
        let mut args = CK_C_INITIALIZE_ARGS {
            CreateMutex: None,
            DestroyMutex: None,
            LockMutex: None,
            UnlockMutex: None,
            flags: CKF_OS_LOCKING_OK,
            pReserved: ptr::null_mut(),
        };
        call!(self, C_Initialize, (&raw mut args).cast())
    }

    /// `C_Finalize(NULL)`.
    pub fn finalize(&self) -> CK_RV {
        call!(self, C_Finalize, ptr::null_mut())
    }

    /// `C_GetInfo`.
    pub fn info(&self) -> Ck<CK_INFO> {
        let mut info = CK_INFO::default();
        ck(call!(self, C_GetInfo, &mut info))?;
        Ok(info)
    }

    /// Slots with a token.
    pub fn slots(&self) -> Ck<Vec<CK_SLOT_ID>> {
        let mut n: CK_ULONG = 0;
        ck(call!(self, C_GetSlotList, CK_TRUE, ptr::null_mut(), &mut n))?;
        let mut v = vec![0; n as usize];
        ck(call!(self, C_GetSlotList, CK_TRUE, v.as_mut_ptr(), &mut n))?;
        v.truncate(n as usize);
        Ok(v)
    }

    /// The mechanisms of `slot`.
    pub fn mechanisms(&self, slot: CK_SLOT_ID) -> Ck<Vec<CK_MECHANISM_TYPE>> {
        let mut n: CK_ULONG = 0;
        ck(call!(
            self,
            C_GetMechanismList,
            slot,
            ptr::null_mut(),
            &mut n
        ))?;
        let mut v = vec![0; n as usize];
        ck(call!(
            self,
            C_GetMechanismList,
            slot,
            v.as_mut_ptr(),
            &mut n
        ))?;
        v.truncate(n as usize);
        Ok(v)
    }

    /// A read-write session on `slot`.
    pub fn open(&self, slot: CK_SLOT_ID) -> Ck<CK_SESSION_HANDLE> {
        let mut h = 0;
        ck(call!(
            self,
            C_OpenSession,
            slot,
            CKF_SERIAL_SESSION | CKF_RW_SESSION,
            ptr::null_mut(),
            None,
            &mut h
        ))?;
        Ok(h)
    }

    /// `C_Login` as the user.
    pub fn login(&self, h: CK_SESSION_HANDLE, pin: &str) -> Ck<()> {
        ck(call!(
            self,
            C_Login,
            h,
            CKU_USER,
            pin.as_ptr().cast_mut(),
            pin.len() as CK_ULONG
        ))
    }

    /// The first slot, a session on it, logged in with the test PIN.
    pub fn session(&self) -> CK_SESSION_HANDLE {
        let slot = self.slots().unwrap()[0];
        let h = self.open(slot).unwrap();
        self.login(h, p11fwd_tests::USER_PIN).unwrap();
        h
    }

    /// Objects of `class` labelled `label`.
    pub fn find(
        &self,
        h: CK_SESSION_HANDLE,
        class: CK_OBJECT_CLASS,
        label: &str,
    ) -> Ck<Vec<CK_OBJECT_HANDLE>> {
        let mut class = class;
        let mut t = [
            CK_ATTRIBUTE {
                type_: CKA_CLASS,
                pValue: (&raw mut class).cast(),
                ulValueLen: 8,
            },
            CK_ATTRIBUTE {
                type_: CKA_LABEL,
                pValue: label.as_ptr().cast_mut().cast(),
                ulValueLen: label.len() as CK_ULONG,
            },
        ];
        ck(call!(self, C_FindObjectsInit, h, t.as_mut_ptr(), 2))?;
        let mut found = vec![0; 16];
        let mut n = 0;
        ck(call!(
            self,
            C_FindObjects,
            h,
            found.as_mut_ptr(),
            16,
            &mut n
        ))?;
        ck(call!(self, C_FindObjectsFinal, h))?;
        found.truncate(n as usize);
        Ok(found)
    }

    /// The one object of `class` labelled `label`.
    pub fn object(
        &self,
        h: CK_SESSION_HANDLE,
        class: CK_OBJECT_CLASS,
        label: &str,
    ) -> CK_OBJECT_HANDLE {
        let v = self.find(h, class, label).unwrap();
        assert_eq!(v.len(), 1, "objects labelled {label}");
        v[0]
    }

    /// Sign `data` with `mech` (size query, then the signature).
    pub fn sign(
        &self,
        h: CK_SESSION_HANDLE,
        mech: &mut CK_MECHANISM,
        key: CK_OBJECT_HANDLE,
        data: &[u8],
    ) -> Ck<Vec<u8>> {
        ck(call!(self, C_SignInit, h, mech, key))?;
        let mut n = 0;
        ck(call!(
            self,
            C_Sign,
            h,
            data.as_ptr().cast_mut(),
            data.len() as CK_ULONG,
            ptr::null_mut(),
            &mut n
        ))?;
        let mut sig = vec![0; n as usize];
        ck(call!(
            self,
            C_Sign,
            h,
            data.as_ptr().cast_mut(),
            data.len() as CK_ULONG,
            sig.as_mut_ptr(),
            &mut n
        ))?;
        sig.truncate(n as usize);
        Ok(sig)
    }

    /// Verify `sig` over `data`.
    pub fn verify(
        &self,
        h: CK_SESSION_HANDLE,
        mech: &mut CK_MECHANISM,
        key: CK_OBJECT_HANDLE,
        data: &[u8],
        sig: &[u8],
    ) -> Ck<()> {
        ck(call!(self, C_VerifyInit, h, mech, key))?;
        ck(call!(
            self,
            C_Verify,
            h,
            data.as_ptr().cast_mut(),
            data.len() as CK_ULONG,
            sig.as_ptr().cast_mut(),
            sig.len() as CK_ULONG
        ))
    }

    /// A byte-array attribute.
    pub fn attr_bytes(
        &self,
        h: CK_SESSION_HANDLE,
        obj: CK_OBJECT_HANDLE,
        ty: CK_ATTRIBUTE_TYPE,
    ) -> Ck<Vec<u8>> {
        let mut a = CK_ATTRIBUTE {
            type_: ty,
            pValue: ptr::null_mut(),
            ulValueLen: 0,
        };
        ck(call!(self, C_GetAttributeValue, h, obj, &mut a, 1))?;
        let mut v = vec![0u8; a.ulValueLen as usize];
        a.pValue = v.as_mut_ptr().cast();
        ck(call!(self, C_GetAttributeValue, h, obj, &mut a, 1))?;
        v.truncate(a.ulValueLen as usize);
        Ok(v)
    }
}

/// Runs a call that writes bytes and their length (`pOut, pulOutLen`) with a buffer of `cap`
/// bytes (`None`: a NULL buffer, a size query); returns the CK_RV, the length the call set and
/// the bytes it wrote (none unless `CKR_OK`).
pub fn output(
    cap: Option<usize>,
    f: impl FnOnce(*mut u8, &mut CK_ULONG) -> CK_RV,
) -> (CK_RV, CK_ULONG, Vec<u8>) {
    let mut buf = vec![0u8; cap.unwrap_or(0)];
    let mut len = cap.unwrap_or(0) as CK_ULONG;
    let p = if cap.is_some() {
        buf.as_mut_ptr()
    } else {
        ptr::null_mut()
    };
    let rv = f(p, &mut len);
    buf.truncate(if rv == CKR_OK && cap.is_some() {
        len as usize
    } else {
        0
    });
    (rv, len, buf)
}

/// An input byte array as the C API takes it.
pub fn input(b: &[u8]) -> (*mut u8, CK_ULONG) {
    (b.as_ptr().cast_mut(), b.len() as CK_ULONG)
}

/// A mechanism without a parameter.
pub fn mech(ty: CK_MECHANISM_TYPE) -> CK_MECHANISM {
    CK_MECHANISM {
        mechanism: ty,
        pParameter: ptr::null_mut(),
        ulParameterLen: 0,
    }
}

/// A mechanism whose parameter is `param`.
pub fn mech_with<T>(ty: CK_MECHANISM_TYPE, param: &mut T) -> CK_MECHANISM {
    CK_MECHANISM {
        mechanism: ty,
        pParameter: (param as *mut T).cast(),
        ulParameterLen: size_of::<T>() as CK_ULONG,
    }
}

/// Run `openssl` with `args`, where `{data}`, `{sig}` and `{out}` name temp files holding
/// `data` and `sig` (and an output file); returns what `{out}` holds afterwards.
#[track_caller]
pub fn openssl(args: &[&str], data: &[u8], sig: &[u8]) -> Vec<u8> {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path().join("data");
    let s = dir.path().join("sig");
    let o = dir.path().join("out");
    std::fs::write(&d, data).unwrap();
    std::fs::write(&s, sig).unwrap();
    let mut cmd = Command::new(require_tool("openssl"));
    for a in args {
        let a = a
            .replace("{data}", &d.to_string_lossy())
            .replace("{sig}", &s.to_string_lossy())
            .replace("{out}", &o.to_string_lossy());
        cmd.arg(a);
    }
    p11fwd_tests::run_ok(&mut cmd);
    std::fs::read(&o).unwrap_or_default()
}

/// Lower-case hex, as `openssl -K/-iv` want it.
pub fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

/// A path as a string argument.
pub fn arg(p: &Path) -> String {
    p.to_string_lossy().into_owned()
}

/// A 32-byte space-padded string field as text.
pub fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).trim_end().to_owned()
}
