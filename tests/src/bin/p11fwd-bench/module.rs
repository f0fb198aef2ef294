//! `p11fwd-bench module-driver`: drives a PKCS#11 module directly (SoftHSM, `p11fwd-client.so`,
//! `p11-kit-client.so`) with the same phases and output as the OpenSSL driver (`driver.c`).
//!
//! Each operation is what a generic PKCS#11 application does: `C_SignInit`, `C_Sign` with a NULL
//! buffer (size query), `C_Sign` into a buffer of that size (the `cryptoki` crate's `sign`);
//! decryption likewise. The module's configuration (server address, `SOFTHSM2_CONF`) comes from
//! the environment the harness sets.
#![allow(unsafe_code)] // Calling a PKCS#11 module; each block says why it is sound.

use std::ffi::c_void;
use std::io::{BufRead, Write};
use std::path::PathBuf;
use std::ptr;
use std::time::Instant;

use anyhow::{Context, Result, anyhow, bail};
use cryptoki_sys::*;
use libloading::Library;

/// What to do (parsed from the command line by `main`).
#[derive(Debug)]
pub(crate) struct Args {
    pub(crate) module: PathBuf,
    pub(crate) op: String,
    pub(crate) label: String,
    pub(crate) pin: String,
    pub(crate) n: usize,
    pub(crate) threads: usize,
    pub(crate) ciphertext: Option<PathBuf>,
    /// Before each measured operation, one request → reply with an [`crate::alone::EchoPeer`]
    /// (per thread): the module in process plus a server that costs nothing, an ideal forwarder.
    pub(crate) echo: bool,
}

/// A loaded module and its 2.40 function list (every module has one).
struct Module {
    f: &'static CK_FUNCTION_LIST,
    _lib: Library,
}

fn ck(what: &str, rv: CK_RV) -> Result<()> {
    if rv == CKR_OK {
        Ok(())
    } else {
        Err(anyhow!("{what} failed: rv {rv:#x}"))
    }
}

macro_rules! call {
    ($m:expr, $f:ident $(, $arg:expr)* $(,)?) => {{
        let f = $m.f.$f.ok_or_else(|| anyhow!(concat!(stringify!($f), " missing")))?;
        // SAFETY: a function of the loaded module's list, called with arguments that follow
        // its PKCS#11 contract (pointers to live buffers of the stated lengths, or NULL where
        // allowed).
        unsafe { f($($arg),*) }
    }};
}

impl Module {
    fn load(path: &std::path::Path) -> Result<Self> {
        // SAFETY: loading a PKCS#11 module runs its initialisers; the modules benchmarked are
        // the system's SoftHSM/p11-kit client and our own client.
        let lib = unsafe { Library::new(path) }.with_context(|| format!("dlopen {path:?}"))?;
        let get: CK_C_GetFunctionList =
            // SAFETY: the standard entry point, with its C signature.
            *unsafe { lib.get::<CK_C_GetFunctionList>(b"C_GetFunctionList\0") }?;
        let get = get.ok_or_else(|| anyhow!("C_GetFunctionList is NULL"))?;
        let mut list: *mut CK_FUNCTION_LIST = ptr::null_mut();
        // SAFETY: a valid out pointer.
        ck("C_GetFunctionList", unsafe { get(&mut list) })?;
        // SAFETY: the module returned its static function list, valid while the library is
        // loaded; `_lib` keeps it loaded for as long as `Module` lives, and `f` is only used
        // through `Module`.
        let f = unsafe { list.as_ref() }.ok_or_else(|| anyhow!("NULL function list"))?;
        Ok(Self { f, _lib: lib })
    }
}

/// An operation on one session.
struct Worker<'a> {
    m: &'a Module,
    h: CK_SESSION_HANDLE,
    key: CK_OBJECT_HANDLE,
    op: &'a str,
    ciphertext: &'a [u8],
}

/// `DigestInfo` prefix of SHA-256 (what OpenSSL builds for PKCS#1 v1.5 signatures).
const SHA256_DIGEST_INFO: [u8; 19] = [
    0x30, 0x31, 0x30, 0x0d, 0x06, 0x09, 0x60, 0x86, 0x48, 0x01, 0x65, 0x03, 0x04, 0x02, 0x01, 0x05,
    0x00, 0x04, 0x20,
];

impl Worker<'_> {
    fn one(&self) -> Result<()> {
        let mut input = Vec::with_capacity(51);
        let (init_rv, mech) = match self.op {
            "ec-sign" => {
                input.extend_from_slice(&[0x42; 32]);
                (true, CKM_ECDSA)
            }
            "rsa-sign" => {
                input.extend_from_slice(&SHA256_DIGEST_INFO);
                input.extend_from_slice(&[0x42; 32]);
                (true, CKM_RSA_PKCS)
            }
            "rsa-decrypt" => {
                input.extend_from_slice(self.ciphertext);
                (false, CKM_RSA_PKCS)
            }
            other => bail!("unknown operation {other}"),
        };
        let mut mechanism = CK_MECHANISM {
            mechanism: mech,
            pParameter: ptr::null_mut(),
            ulParameterLen: 0,
        };
        let m = self.m;
        let data = input.as_mut_ptr();
        let data_len = input.len() as CK_ULONG;
        let mut len: CK_ULONG = 0;
        if init_rv {
            ck(
                "C_SignInit",
                call!(m, C_SignInit, self.h, &mut mechanism, self.key),
            )?;
            ck(
                "C_Sign (size)",
                call!(m, C_Sign, self.h, data, data_len, ptr::null_mut(), &mut len),
            )?;
            let mut out = vec![0u8; len as usize];
            ck(
                "C_Sign",
                call!(
                    m,
                    C_Sign,
                    self.h,
                    data,
                    data_len,
                    out.as_mut_ptr(),
                    &mut len
                ),
            )?;
        } else {
            ck(
                "C_DecryptInit",
                call!(m, C_DecryptInit, self.h, &mut mechanism, self.key),
            )?;
            ck(
                "C_Decrypt (size)",
                call!(
                    m,
                    C_Decrypt,
                    self.h,
                    data,
                    data_len,
                    ptr::null_mut(),
                    &mut len
                ),
            )?;
            let mut out = vec![0u8; len as usize];
            ck(
                "C_Decrypt",
                call!(
                    m,
                    C_Decrypt,
                    self.h,
                    data,
                    data_len,
                    out.as_mut_ptr(),
                    &mut len
                ),
            )?;
            out.truncate(len as usize);
            if out != crate::PLAINTEXT {
                bail!("wrong plaintext");
            }
        }
        Ok(())
    }
}

fn wait_line() {
    let mut line = String::new();
    let _ = std::io::stdin().lock().read_line(&mut line);
}

/// Run the driver: same protocol as `driver.c` (ready / lat / done).
pub(crate) fn run(args: &Args) -> Result<()> {
    let start = Instant::now();
    let m = Module::load(&args.module)?;
    let mut init = CK_C_INITIALIZE_ARGS {
        CreateMutex: None,
        DestroyMutex: None,
        LockMutex: None,
        UnlockMutex: None,
        flags: CKF_OS_LOCKING_OK,
        pReserved: ptr::null_mut(),
    };
    ck(
        "C_Initialize",
        call!(m, C_Initialize, (&raw mut init).cast::<c_void>()),
    )?;
    let mut n: CK_ULONG = 0;
    ck(
        "C_GetSlotList",
        call!(m, C_GetSlotList, CK_TRUE, ptr::null_mut(), &mut n),
    )?;
    let mut slots = vec![0; n as usize];
    ck(
        "C_GetSlotList",
        call!(m, C_GetSlotList, CK_TRUE, slots.as_mut_ptr(), &mut n),
    )?;
    let slot = *slots
        .first()
        .ok_or_else(|| anyhow!("no slot with a token"))?;
    let mut sessions = Vec::with_capacity(args.threads);
    for _ in 0..args.threads.max(1) {
        let mut h = 0;
        ck(
            "C_OpenSession",
            call!(
                m,
                C_OpenSession,
                slot,
                CKF_SERIAL_SESSION,
                ptr::null_mut(),
                None,
                &mut h
            ),
        )?;
        sessions.push(h);
    }
    let h0 = sessions[0];
    let pin = args.pin.as_bytes();
    ck(
        "C_Login",
        call!(
            m,
            C_Login,
            h0,
            CKU_USER,
            pin.as_ptr().cast_mut(),
            pin.len() as CK_ULONG
        ),
    )?;
    let mut class = CKO_PRIVATE_KEY;
    let label = args.label.as_bytes();
    let mut template = [
        CK_ATTRIBUTE {
            type_: CKA_CLASS,
            pValue: (&raw mut class).cast(),
            ulValueLen: size_of::<CK_OBJECT_CLASS>() as CK_ULONG,
        },
        CK_ATTRIBUTE {
            type_: CKA_LABEL,
            pValue: label.as_ptr().cast_mut().cast(),
            ulValueLen: label.len() as CK_ULONG,
        },
    ];
    ck(
        "C_FindObjectsInit",
        call!(m, C_FindObjectsInit, h0, template.as_mut_ptr(), 2),
    )?;
    let mut key = 0;
    let mut found = 0;
    ck(
        "C_FindObjects",
        call!(m, C_FindObjects, h0, &mut key, 1, &mut found),
    )?;
    ck("C_FindObjectsFinal", call!(m, C_FindObjectsFinal, h0))?;
    if found != 1 {
        bail!("key {} not found", args.label);
    }
    let ciphertext = match &args.ciphertext {
        Some(p) => std::fs::read(p)?,
        None => Vec::new(),
    };
    let load = start.elapsed();
    println!("ready {}", load.as_nanos());
    std::io::stdout().flush()?;
    wait_line();
    let t0 = Instant::now();
    Worker {
        m: &m,
        h: h0,
        key,
        op: &args.op,
        ciphertext: &ciphertext,
    }
    .one()
    .context("the first operation")?;
    println!("warm {}", t0.elapsed().as_nanos());
    std::io::stdout().flush()?;
    wait_line();

    let began = Instant::now();
    let results: Vec<(Vec<u128>, usize)> = std::thread::scope(|s| {
        let handles: Vec<_> = sessions
            .iter()
            .map(|&h| {
                let w = Worker {
                    m: &m,
                    h,
                    key,
                    op: &args.op,
                    ciphertext: &ciphertext,
                };
                s.spawn(move || {
                    let mut lat = Vec::with_capacity(args.n);
                    let mut errors = 0;
                    let mut peer = match args.echo.then(crate::alone::EchoPeer::start) {
                        Some(Err(e)) => {
                            eprintln!("module-driver: {e:#}");
                            return (lat, args.n);
                        }
                        Some(Ok(p)) => Some(p),
                        None => None,
                    };
                    for _ in 0..args.n {
                        let t0 = Instant::now();
                        let pinged = peer.as_mut().map_or(Ok(()), crate::alone::EchoPeer::ping);
                        if let Err(e) = pinged.and_then(|()| w.one()) {
                            if errors == 0 {
                                eprintln!("module-driver: {e:#}");
                            }
                            errors += 1;
                        }
                        lat.push(t0.elapsed().as_nanos());
                    }
                    (lat, errors)
                })
            })
            .collect();
        handles
            .into_iter()
            .map(|h| h.join().unwrap_or_else(|_| (Vec::new(), args.n)))
            .collect()
    });
    let wall = began.elapsed();
    let mut out = std::io::stdout().lock();
    let mut errors = 0;
    for (lat, e) in &results {
        errors += e;
        let line: Vec<String> = lat.iter().map(u128::to_string).collect();
        writeln!(out, "lat {}", line.join(" "))?;
    }
    writeln!(out, "done {} {errors}", wall.as_nanos())?;
    out.flush()?;
    drop(out);
    wait_line();
    for h in sessions {
        call!(m, C_CloseSession, h);
    }
    call!(m, C_Finalize, ptr::null_mut());
    Ok(())
}
