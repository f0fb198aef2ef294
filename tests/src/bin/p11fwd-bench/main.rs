//! `p11fwd-bench`: the benchmark harness of issues 3 and 7 (run it with `make bench`).
//!
//! In one invocation it runs the same private-key workloads (ECDSA P-256 and RSA-2048
//! signatures, RSA-2048 decryption, `openssl req -new`) through every stack:
//!
//! | id | stack |
//! |---|---|
//! | `provider-fwd` | OpenSSL + `p11fwd.so` (provider) → `p11fwd server` |
//! | `provider-stock` | OpenSSL + `p11fwd.so` → stock `p11-kit server` |
//! | `engine-stock` | OpenSSL + libp11 engine → `p11-kit-client.so` → `p11-kit server` (p11-kit's remoting guide) |
//! | `engine-ours` | OpenSSL + libp11 engine → `p11fwd-client.so` → `p11fwd server` |
//! | `client-fwd` | a PKCS#11 application → `p11fwd-client.so` → `p11fwd server` |
//! | `client-stock` | a PKCS#11 application → `p11-kit-client.so` → `p11-kit server` |
//! | `softhsm` | a PKCS#11 application → SoftHSM (the module directly) |
//! | `engine-softhsm` | OpenSSL + libp11 engine → SoftHSM directly |
//!
//! at 0 and 10 ms one-way delay (`p11fwd_tests::relay::Relay`, which also counts round trips),
//! with 1 and 8 threads; then the forwarder alone: connection setup time, memory per idle
//! connection with 1,000 open, and 64 clients signing at once. It writes the tables and a chart
//! into docs/benchmarks.md (between the generated-section markers), docs/benchmarks.svg and the
//! raw numbers into docs/benchmarks.json, and prints pass/fail per target.
//!
//! OpenSSL stacks are driven in-process by a small C program (`driver.c`, compiled here with
//! `cc ... -lcrypto`); PKCS#11 modules by `p11fwd-bench module-driver` (`module.rs`). Both report
//! per-operation latencies; the harness gates their phases on stdin so that key loading and the
//! operations are counted separately.

mod alone;
mod drivers;
mod module;
mod report;

use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, anyhow, bail};
use p11fwd_tests::relay::Relay;
use p11fwd_tests::{ForwarderServer, Key, P11KIT_CLIENT_MODULE, Server, StockServer, TestToken};

use crate::drivers::{Driver, Ready, Status, measure};
use crate::report::{MemoryRow, OpRun, Report, ReqRun, SetupRow, SignersRow, Target, pct_ms};

/// The plaintext of the decryption workload (48 bytes, a TLS premaster secret's size).
pub(crate) const PLAINTEXT: &[u8] = b"p11fwd-bench premaster secret of 48 bytes.......";

/// The OpenSSL driver's source, compiled at run time.
const DRIVER_C: &str = include_str!("driver.c");

/// Where the operations are sent.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Dest {
    /// `p11fwd server`.
    Fwd,
    /// Stock `p11-kit server`.
    Stock,
    /// SoftHSM in the client process.
    Direct,
}

/// Which PKCS#11 module a driver loads.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum ModuleKind {
    Ours,
    StockClient,
    SoftHsm,
    /// SoftHSM, and a bare socket round trip before each operation (the ideal forwarder).
    SoftHsmEcho,
}

/// How the operations are made.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Via {
    /// OpenSSL with the `p11fwd` provider.
    Provider,
    /// OpenSSL with libp11's engine loading this module.
    Engine(ModuleKind),
    /// A PKCS#11 application loading this module.
    Module(ModuleKind),
}

/// A stack under test.
#[derive(Debug)]
pub(crate) struct Stack {
    pub(crate) id: &'static str,
    pub(crate) label: &'static str,
    pub(crate) server: Dest,
    pub(crate) via: Via,
}

impl Stack {
    /// Whether it talks to a server (so a delay applies).
    pub(crate) fn remote(&self) -> bool {
        self.server != Dest::Direct
    }
    fn openssl(&self) -> bool {
        matches!(self.via, Via::Provider | Via::Engine(_))
    }
}

/// Every stack, in table order.
pub(crate) const STACKS: &[Stack] = &[
    Stack {
        id: "provider-fwd",
        label: "p11fwd.so provider → p11fwd server",
        server: Dest::Fwd,
        via: Via::Provider,
    },
    Stack {
        id: "provider-stock",
        label: "p11fwd.so provider → p11-kit server",
        server: Dest::Stock,
        via: Via::Provider,
    },
    Stack {
        id: "engine-stock",
        label: "libp11 engine → p11-kit-client.so → p11-kit server",
        server: Dest::Stock,
        via: Via::Engine(ModuleKind::StockClient),
    },
    Stack {
        id: "engine-ours",
        label: "libp11 engine → p11fwd-client.so → p11fwd server",
        server: Dest::Fwd,
        via: Via::Engine(ModuleKind::Ours),
    },
    Stack {
        id: "client-fwd",
        label: "PKCS#11 app → p11fwd-client.so → p11fwd server",
        server: Dest::Fwd,
        via: Via::Module(ModuleKind::Ours),
    },
    Stack {
        id: "client-stock",
        label: "PKCS#11 app → p11-kit-client.so → p11-kit server",
        server: Dest::Stock,
        via: Via::Module(ModuleKind::StockClient),
    },
    Stack {
        id: "softhsm",
        label: "PKCS#11 app → SoftHSM directly",
        server: Dest::Direct,
        via: Via::Module(ModuleKind::SoftHsm),
    },
    Stack {
        id: "ideal",
        label: "PKCS#11 app → SoftHSM directly + a bare socket round trip (an ideal forwarder)",
        server: Dest::Direct,
        via: Via::Module(ModuleKind::SoftHsmEcho),
    },
    Stack {
        id: "engine-softhsm",
        label: "libp11 engine → SoftHSM directly",
        server: Dest::Direct,
        via: Via::Engine(ModuleKind::SoftHsm),
    },
];

/// A private-key workload.
#[derive(Debug)]
pub(crate) struct Workload {
    pub(crate) id: &'static str,
    pub(crate) label: &'static str,
    key: &'static str,
}

/// Every workload, in table order.
pub(crate) const WORKLOADS: &[Workload] = &[
    Workload {
        id: "ec-sign",
        label: "ECDSA P-256 sign",
        key: "ec-p256",
    },
    Workload {
        id: "rsa-sign",
        label: "RSA-2048 PKCS#1 sign",
        key: "rsa2048",
    },
    Workload {
        id: "rsa-decrypt",
        label: "RSA-2048 PKCS#1 decrypt",
        key: "rsa2048",
    },
];

/// Operation counts of a run.
#[derive(Clone, Copy, Debug)]
struct Sizes {
    /// Single-thread operations at 0 ms / 10 ms.
    n0: usize,
    n10: usize,
    /// Single-thread ECDSA signatures at 0 ms: ten times as fast as RSA, `n0` of them would last
    /// some 50 ms, too short on a host whose speed changes from second to second.
    n0_ec: usize,
    /// Operations per thread with 8 threads, at 0 ms / 10 ms.
    t0: usize,
    t10: usize,
    /// `req -new` runs.
    reqs: usize,
    /// Connection setup samples.
    setups: usize,
    /// Idle connections for the forwarder / the stock server.
    idle_fwd: usize,
    idle_stock: usize,
    /// Concurrent signers and signatures each.
    signers: usize,
    signer_ops: usize,
    /// Interleaved repetitions of the 0 ms runs (the median is reported).
    reps0: usize,
    /// Request/reply samples of the socket floor.
    floor: usize,
}

const FULL: Sizes = Sizes {
    n0: 1000,
    n10: 60,
    n0_ec: 5000,
    t0: 300,
    t10: 30,
    reqs: 7,
    setups: 200,
    idle_fwd: 1000,
    idle_stock: 50,
    signers: 64,
    signer_ops: 50,
    reps0: 7,
    floor: 20_000,
};

const QUICK: Sizes = Sizes {
    n0: 60,
    n10: 8,
    n0_ec: 60,
    t0: 30,
    t10: 4,
    reqs: 2,
    setups: 30,
    idle_fwd: 200,
    idle_stock: 10,
    signers: 16,
    signer_ops: 10,
    reps0: 1,
    floor: 2_000,
};

/// Builds of this workspace next to the running harness (release under `make bench`).
#[derive(Debug)]
struct Builds {
    forwarder: PathBuf,
    client: PathBuf,
    /// `OPENSSL_MODULES` directory holding `p11fwd.so`.
    ossl_modules: PathBuf,
    _tree: tempfile::TempDir,
}

fn builds() -> Result<Builds> {
    let exe = std::env::current_exe()?;
    let dir = exe
        .parent()
        .ok_or_else(|| anyhow!("no parent of {exe:?}"))?;
    let need = |name: &str| -> Result<PathBuf> {
        let p = dir.join(name);
        if p.is_file() {
            Ok(p)
        } else {
            bail!("{} not found: build it first (make bench)", p.display())
        }
    };
    let forwarder = need("p11fwd")?;
    let client = need("libp11fwd_client.so")?;
    let provider = need("libp11fwd_provider.so")?;
    let tree = tempfile::Builder::new()
        .prefix("p11fwd-bench-modules.")
        .tempdir()?;
    let ossl_modules = tree.path().join("ossl-modules");
    std::fs::create_dir_all(&ossl_modules)?;
    std::os::unix::fs::symlink(&provider, ossl_modules.join("p11fwd.so"))?;
    Ok(Builds {
        forwarder,
        client,
        ossl_modules,
        _tree: tree,
    })
}

/// Compile `driver.c` into `dir`.
fn compile_driver(dir: &Path) -> Result<PathBuf> {
    let src = dir.join("driver.c");
    let bin = dir.join("bench-driver");
    std::fs::write(&src, DRIVER_C)?;
    let out = Command::new("cc")
        .args(["-O2", "-Wall", "-o"])
        .arg(&bin)
        .arg(&src)
        .args(["-lcrypto", "-lpthread"])
        .output()
        .context("running cc (make deps installs gcc and libssl-dev)")?;
    if !out.status.success() {
        bail!(
            "compiling driver.c failed:\n{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(bin)
}

/// Everything a run needs.
#[derive(Debug)]
struct Bench {
    token: TestToken,
    builds: Builds,
    driver: PathBuf,
    work: tempfile::TempDir,
    fwd: ForwarderServer,
    stock: StockServer,
    fwd_relay: Relay,
    stock_relay: Relay,
    sizes: Sizes,
}

fn loadavg() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .map(|s| s.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_default()
}

impl Bench {
    fn module_path(&self, kind: ModuleKind) -> PathBuf {
        match kind {
            ModuleKind::Ours => self.builds.client.clone(),
            ModuleKind::StockClient => PathBuf::from(P11KIT_CLIENT_MODULE),
            ModuleKind::SoftHsm | ModuleKind::SoftHsmEcho => self.token.module_path().to_path_buf(),
        }
    }

    /// The address a client of `stack` uses at `delay_ms`.
    fn address(&self, server: Dest, delay_ms: u32) -> Option<String> {
        Some(match (server, delay_ms) {
            (Dest::Fwd, 0) => self.fwd.address(),
            (Dest::Stock, 0) => self.stock.address(),
            (Dest::Fwd, _) => self.fwd_relay.address(),
            (Dest::Stock, _) => self.stock_relay.address(),
            (Dest::Direct, _) => return None,
        })
    }

    fn relay(&self, server: Dest, delay_ms: u32) -> Option<&Relay> {
        match (server, delay_ms) {
            (_, 0) | (Dest::Direct, _) => None,
            (Dest::Fwd, _) => Some(&self.fwd_relay),
            (Dest::Stock, _) => Some(&self.stock_relay),
        }
    }

    /// The environment of a client process of `stack`.
    fn env(&self, cmd: &mut Command, stack: &Stack, delay_ms: u32) {
        for var in [
            "P11FWD_SERVER_ADDRESS",
            "P11_KIT_SERVER_ADDRESS",
            "P11FWD_DEBUG",
            "P11FWD_LOG",
            "SOFTHSM2_CONF",
            "OPENSSL_CONF",
            "OPENSSL_MODULES",
            "PKCS11_MODULE_PATH",
        ] {
            cmd.env_remove(var);
        }
        cmd.env("OPENSSL_CONF", self.work.path().join("empty.cnf"));
        match self.address(stack.server, delay_ms) {
            Some(a) => {
                cmd.env("P11FWD_SERVER_ADDRESS", &a)
                    .env("P11_KIT_SERVER_ADDRESS", &a);
            }
            None => {
                cmd.env("SOFTHSM2_CONF", self.token.conf_path());
            }
        }
        if stack.via == Via::Provider {
            cmd.env("OPENSSL_MODULES", &self.builds.ossl_modules);
        }
    }

    fn key_uri(&self, label: &str) -> String {
        format!(
            "{};type=private?pin-value={}",
            self.token.object_uri(label),
            self.token.user_pin()
        )
    }

    /// The driver command for `stack` doing `w` `n` times on `threads` threads.
    fn driver_cmd(
        &self,
        stack: &Stack,
        w: &Workload,
        delay_ms: u32,
        n: usize,
        threads: usize,
    ) -> Result<Command> {
        let ciphertext = self.work.path().join("ciphertext");
        let mut cmd = match stack.via {
            Via::Provider | Via::Engine(_) => {
                let mut c = Command::new(&self.driver);
                c.arg(if stack.via == Via::Provider {
                    "provider"
                } else {
                    "engine"
                })
                .arg(w.id)
                .arg(self.key_uri(w.key))
                .arg(n.to_string())
                .arg(threads.to_string())
                .arg("--pubkey")
                .arg(self.token.public_pem(w.key))
                .arg("--ciphertext")
                .arg(&ciphertext);
                if let Via::Engine(m) = stack.via {
                    c.arg("--module")
                        .arg(self.module_path(m))
                        .arg("--pin")
                        .arg(self.token.user_pin());
                }
                c
            }
            Via::Module(m) => {
                let mut c = Command::new(std::env::current_exe()?);
                c.arg("module-driver")
                    .arg("--module")
                    .arg(self.module_path(m))
                    .args([
                        "--op",
                        w.id,
                        "--label",
                        w.key,
                        "--pin",
                        self.token.user_pin(),
                    ])
                    .arg("-n")
                    .arg(n.to_string())
                    .arg("-t")
                    .arg(threads.to_string())
                    .arg("--ciphertext")
                    .arg(&ciphertext);
                if m == ModuleKind::SoftHsmEcho {
                    c.args(["--echo", "1"]);
                }
                c
            }
        };
        self.env(&mut cmd, stack, delay_ms);
        Ok(cmd)
    }

    fn run_ops(
        &self,
        stack: &'static Stack,
        w: &'static Workload,
        delay_ms: u32,
        threads: usize,
    ) -> Result<OpRun> {
        let n = match (delay_ms, threads) {
            (0, 1) if w.id == "ec-sign" => self.sizes.n0_ec,
            (0, 1) => self.sizes.n0,
            (_, 1) => self.sizes.n10,
            (0, _) => self.sizes.t0,
            _ => self.sizes.t10,
        };
        let cmd = self.driver_cmd(stack, w, delay_ms, n, threads)?;
        let relay = self.relay(stack.server, delay_ms);
        let m = measure(cmd, relay, Duration::from_secs(600));
        let mut lat = m.done.lat_ns.clone();
        lat.sort_unstable();
        let ops = lat.len();
        let wall = m.done.wall.as_secs_f64();
        let run = OpRun {
            stack: stack.id,
            workload: w.id,
            delay_ms,
            threads,
            status: m.status,
            ops,
            errors: m.done.errors,
            ops_per_s: if wall > 0.0 {
                ops as f64 / wall
            } else {
                f64::NAN
            },
            p50_ms: pct_ms(&lat, 50.0),
            p99_ms: pct_ms(&lat, 99.0),
            // Round trips per operation are only meaningful for one thread.
            rt_per_op: m
                .op_rt
                .filter(|_| threads == 1 && ops > 0)
                .map(|rt| rt as f64 / ops as f64),
            load_rt: m.load_rt,
            load_ms: m.load.as_secs_f64() * 1e3,
            first_rt: m.first_rt,
            first_ms: m.first.as_secs_f64() * 1e3,
        };
        eprintln!(
            "  {:<15} {:<12} {:>2} ms {} thr: {:>8.0} ops/s  p50 {:>7.2} ms  p99 {:>7.2} ms  rt/op {}  load rt {} first {}  {}",
            stack.id,
            w.id,
            delay_ms,
            threads,
            run.ops_per_s,
            run.p50_ms,
            run.p99_ms,
            run.rt_per_op
                .map_or_else(|| "-".into(), |v| format!("{v:.2}")),
            run.load_rt.map_or_else(|| "-".into(), |v| v.to_string()),
            run.first_rt.map_or_else(|| "-".into(), |v| v.to_string()),
            match &run.status {
                Status::Ok if run.errors == 0 => String::new(),
                Status::Ok => format!("{} errors", run.errors),
                other => format!("{other:?}"),
            }
        );
        Ok(run)
    }

    /// `openssl req -new` through an OpenSSL stack, `runs` times.
    fn run_req(&self, stack: &'static Stack, delay_ms: u32) -> ReqRun {
        let mut walls = Vec::new();
        let mut rts = Vec::new();
        let mut status = Status::Ok;
        let relay = self.relay(stack.server, delay_ms);
        for _ in 0..self.sizes.reqs {
            let mut cmd = Command::new("openssl");
            cmd.args(["req", "-new"]);
            match stack.via {
                Via::Provider => {
                    cmd.args(["-provider", "p11fwd", "-provider", "default"]);
                }
                Via::Engine(m) => {
                    cmd.args(["-engine", "pkcs11", "-keyform", "engine"])
                        .env("PKCS11_MODULE_PATH", self.module_path(m));
                }
                Via::Module(_) => {
                    return ReqRun {
                        stack: stack.id,
                        delay_ms,
                        status: Status::Unsupported("not OpenSSL".into()),
                        runs: 0,
                        wall_ms_median: f64::NAN,
                        wall_ms_min: f64::NAN,
                        rt: None,
                    };
                }
            }
            cmd.arg("-key")
                .arg(self.key_uri("ec-p256"))
                .args(["-subj", "/CN=p11fwd-bench", "-out"])
                .arg(self.work.path().join("bench.csr"));
            self.env(&mut cmd, stack, delay_ms);
            if let Via::Engine(m) = stack.via {
                cmd.env("PKCS11_MODULE_PATH", self.module_path(m));
            }
            if let Some(r) = relay {
                r.reset_stats();
            }
            let t0 = Instant::now();
            let out = p11fwd_tests::run::run(&mut cmd);
            let wall = t0.elapsed().as_secs_f64() * 1e3;
            if !out.success() {
                status = Status::Failed(out.stderr.lines().last().unwrap_or("").to_owned());
                break;
            }
            walls.push(wall);
            if let Some(r) = relay {
                rts.push(r.stats().round_trips);
            }
        }
        walls.sort_by(f64::total_cmp);
        rts.sort_unstable();
        let run = ReqRun {
            stack: stack.id,
            delay_ms,
            status,
            runs: walls.len(),
            wall_ms_median: walls.get(walls.len() / 2).copied().unwrap_or(f64::NAN),
            wall_ms_min: walls.first().copied().unwrap_or(f64::NAN),
            rt: rts.get(rts.len() / 2).copied(),
        };
        eprintln!(
            "  {:<15} req -new     {:>2} ms: median {:.1} ms, min {:.1} ms, {} round trips {}",
            stack.id,
            delay_ms,
            run.wall_ms_median,
            run.wall_ms_min,
            run.rt.map_or_else(|| "-".into(), |v| v.to_string()),
            if run.status == Status::Ok {
                String::new()
            } else {
                format!("{:?}", run.status)
            }
        );
        run
    }

    /// `clients` processes of `p11fwd-client.so`, each on its own connection to `server`
    /// (no delay), signing at once.
    fn signers(&self, server: Dest, clients: usize, ops: usize) -> Result<SignersRow> {
        let stack = STACKS
            .iter()
            .find(|s| s.id == "client-fwd")
            .ok_or_else(|| anyhow!("client-fwd stack"))?;
        let w = &WORKLOADS[0];
        let mut drivers = Vec::new();
        let mut ready = 0;
        for _ in 0..clients {
            let mut cmd = self.driver_cmd(stack, w, 0, ops, 1)?;
            if let Some(a) = self.address(server, 0) {
                cmd.env("P11FWD_SERVER_ADDRESS", &a)
                    .env("P11_KIT_SERVER_ADDRESS", &a);
            }
            let mut d = Driver::spawn(cmd, Duration::from_secs(600))?;
            if let Ready::Loaded(_) = d.ready()
                && d.warm().is_ok()
            {
                ready += 1;
                drivers.push(d);
            }
        }
        let t0 = Instant::now();
        for d in &mut drivers {
            let _ = d.go();
        }
        let mut lat = Vec::new();
        let mut errors = clients - ready;
        let mut ok = 0;
        for d in &mut drivers {
            match d.done() {
                Ok(done) => {
                    errors += done.errors;
                    if done.errors == 0 {
                        ok += 1;
                    }
                    lat.extend(done.lat_ns);
                }
                Err(_) => errors += 1,
            }
        }
        let wall = t0.elapsed().as_secs_f64();
        for d in drivers {
            let _ = d.finish();
        }
        lat.sort_unstable();
        let row = SignersRow {
            server: if server == Dest::Fwd {
                "p11fwd server"
            } else {
                "p11-kit server"
            },
            clients,
            ops_each: ops,
            clients_ok: ok,
            errors,
            ops_per_s: lat.len() as f64 / wall,
            p50_ms: pct_ms(&lat, 50.0),
            p99_ms: pct_ms(&lat, 99.0),
        };
        eprintln!(
            "  {} signers on {}: {} finished cleanly, {} errors, {:.0} ops/s, p50 {:.2} ms, p99 {:.2} ms",
            clients, row.server, row.clients_ok, row.errors, row.ops_per_s, row.p50_ms, row.p99_ms
        );
        Ok(row)
    }
}

/// Parsed command line.
#[derive(Debug)]
struct Options {
    quick: bool,
    out: Option<PathBuf>,
    sections: Vec<String>,
    /// Only these stack ids (all if empty).
    stacks: Vec<String>,
    /// One-way delays in ms.
    delays: Vec<u32>,
    /// Another `p11fwd` binary to serve as the forwarder (to compare builds).
    forwarder: Option<PathBuf>,
}

fn usage() -> ! {
    eprintln!(
        "usage: p11fwd-bench [--quick] [--out DIR | --no-write] [--only ops,req,alone]\n\
         \x20                   [--stacks ID,...] [--delays 10,0] [--forwarder PATH]\n\
         \n\
         Runs every stack and workload and writes DIR/benchmarks.md (the generated section),\n\
         DIR/benchmarks.svg and DIR/benchmarks.json (DIR: the workspace's docs/).\n\
         Build first: make bench (release build of the workspace)."
    );
    std::process::exit(2)
}

fn parse_options(mut args: impl Iterator<Item = OsString>) -> Options {
    let mut o = Options {
        quick: false,
        out: Some(p11fwd_tests::artifacts::workspace_root().join("docs")),
        sections: vec!["ops".into(), "req".into(), "alone".into()],
        stacks: Vec::new(),
        delays: vec![10, 0],
        forwarder: None,
    };
    let list = |v: Option<OsString>| -> Vec<String> {
        v.and_then(|s| s.into_string().ok())
            .unwrap_or_default()
            .split(',')
            .filter(|s| !s.is_empty())
            .map(str::to_owned)
            .collect()
    };
    while let Some(a) = args.next() {
        match a.to_str() {
            Some("--quick") => o.quick = true,
            Some("--no-write") => o.out = None,
            Some("--out") => o.out = args.next().map(PathBuf::from),
            Some("--only") => o.sections = list(args.next()),
            Some("--stacks") => o.stacks = list(args.next()),
            Some("--forwarder") => o.forwarder = args.next().map(PathBuf::from),
            Some("--delays") => {
                o.delays = list(args.next())
                    .iter()
                    .filter_map(|d| d.parse().ok())
                    .collect();
            }
            _ => usage(),
        }
    }
    o
}

fn module_driver_args(mut args: impl Iterator<Item = OsString>) -> Result<module::Args> {
    let mut a = module::Args {
        module: PathBuf::new(),
        op: String::new(),
        label: String::new(),
        pin: String::new(),
        n: 1,
        threads: 1,
        ciphertext: None,
        echo: false,
    };
    while let Some(k) = args.next() {
        let v = args.next().ok_or_else(|| anyhow!("{k:?} needs a value"))?;
        let s = v.to_string_lossy().into_owned();
        match k.to_str() {
            Some("--module") => a.module = PathBuf::from(v),
            Some("--op") => a.op = s,
            Some("--label") => a.label = s,
            Some("--pin") => a.pin = s,
            Some("-n") => a.n = s.parse()?,
            Some("-t") => a.threads = s.parse()?,
            Some("--ciphertext") => a.ciphertext = Some(PathBuf::from(v)),
            Some("--echo") => a.echo = s == "1",
            _ => bail!("unknown module-driver option {k:?}"),
        }
    }
    Ok(a)
}

fn versions() -> Vec<(String, String)> {
    let cmd = |prog: &str, args: &[&str]| {
        Command::new(prog)
            .args(args)
            .output()
            .ok()
            .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_owned())
            .unwrap_or_default()
    };
    let deb = |pkg: &str| cmd("dpkg-query", &["-W", "-f", "${Version}", pkg]);
    vec![
        (
            "p11fwd".into(),
            cmd(
                "git",
                &[
                    "-C",
                    &p11fwd_tests::artifacts::workspace_root().to_string_lossy(),
                    "describe",
                    "--always",
                    "--dirty",
                ],
            ),
        ),
        (
            "OpenSSL".into(),
            cmd("openssl", &["version"])
                .split_whitespace()
                .nth(1)
                .unwrap_or("?")
                .to_owned(),
        ),
        ("p11-kit".into(), deb("p11-kit")),
        ("SoftHSM".into(), deb("softhsm2")),
        ("libp11 engine".into(), deb("libengine-pkcs11-openssl")),
    ]
}

fn machine() -> String {
    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|c| {
            c.lines()
                .find(|l| l.starts_with("model name"))
                .and_then(|l| l.split(':').nth(1))
                .map(|s| s.trim().to_owned())
        })
        .unwrap_or_else(|| "unknown CPU".into());
    let n = std::thread::available_parallelism().map_or(0, |n| n.get());
    format!("{n} × {cpu}")
}

fn now_utc() -> String {
    Command::new("date")
        .args(["-u", "+%Y-%m-%d %H:%M UTC"])
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_owned())
        .unwrap_or_default()
}

fn main() -> Result<()> {
    let mut args = std::env::args_os().skip(1).peekable();
    if args.peek().and_then(|a| a.to_str()) == Some("module-driver") {
        args.next();
        let a = module_driver_args(args)?;
        if let Err(e) = module::run(&a) {
            println!("error {e:#}");
            return Err(e);
        }
        return Ok(());
    }
    if args.peek().and_then(|a| a.to_str()) == Some("echo-peer") {
        return alone::echo_peer();
    }
    let opts = parse_options(args);
    run(&opts)
}

fn run(opts: &Options) -> Result<()> {
    let started = Instant::now();
    let sizes = if opts.quick { QUICK } else { FULL };
    let nofile = alone::raise_nofile();
    let mut report = Report {
        started: now_utc(),
        machine: machine(),
        versions: versions(),
        load_before: loadavg(),
        quick: opts.quick,
        ..Report::default()
    };
    eprintln!(
        "p11fwd-bench: load average {}; open files limit {nofile}",
        report.load_before
    );

    let mut builds = builds()?;
    if let Some(f) = &opts.forwarder {
        builds.forwarder = f.clone();
        report
            .versions
            .push(("forwarder binary".into(), f.display().to_string()));
    }
    let work = tempfile::Builder::new().prefix("p11fwd-bench.").tempdir()?;
    let driver = compile_driver(work.path())?;
    std::fs::write(work.path().join("empty.cnf"), "")?;
    let token = TestToken::builder()
        .with(Key::Rsa2048)
        .with(Key::EcP256)
        .build();
    // The decryption workload's ciphertext, made with the public key.
    std::fs::write(work.path().join("plaintext"), PLAINTEXT)?;
    let out = p11fwd_tests::run::run(
        Command::new("openssl")
            .args(["pkeyutl", "-encrypt", "-pubin", "-inkey"])
            .arg(token.public_pem("rsa2048"))
            .arg("-in")
            .arg(work.path().join("plaintext"))
            .arg("-out")
            .arg(work.path().join("ciphertext")),
    );
    out.assert_ok();
    // The forwarder without per-call logging (a benchmark, not a trace).
    let fwd = ForwarderServer::builder(&token)
        .binary(&builds.forwarder)
        .log_filter(None)
        .start();
    let stock = StockServer::start(&token);
    let delay = Duration::from_millis(10);
    let fwd_relay = Relay::start(work.path().join("fwd-relay.sock"), fwd.socket_path(), delay)?;
    let stock_relay = Relay::start(
        work.path().join("stock-relay.sock"),
        stock.socket_path(),
        delay,
    )?;
    let bench = Bench {
        token,
        builds,
        driver,
        work,
        fwd,
        stock,
        fwd_relay,
        stock_relay,
        sizes,
    };

    let has = |s: &str| opts.sections.iter().any(|x| x == s);
    let wanted = |s: &Stack| opts.stacks.is_empty() || opts.stacks.iter().any(|x| x == s.id);
    if has("ops") {
        for &delay_ms in &opts.delays {
            report
                .load_samples
                .push((format!("operations at {delay_ms} ms"), loadavg()));
            // Without delay the run is CPU-bound and this machine's speed drifts by 10-20 %
            // within minutes: the stacks take turns, and each result is the median of `reps`
            // runs. Within a repetition all stacks run one workload before the next, the
            // module called directly between the two stacks the targets compare with it (and
            // the ideal forwarder next), so that compared runs are adjacent; every other
            // repetition in reverse order, so that no stack always runs first or last.
            let reps = if delay_ms == 0 { sizes.reps0 } else { 1 };
            eprintln!(
                "operations, {delay_ms} ms one-way, {reps} interleaved run(s) (load {}):",
                loadavg()
            );
            let mut runs: Vec<Vec<OpRun>> = Vec::new();
            for rep in 0..reps {
                let mut this = Vec::new();
                let mut stacks: Vec<&Stack> = STACKS
                    .iter()
                    .filter(|s| wanted(s) && (delay_ms == 0 || s.remote()))
                    .collect();
                const ADJACENT: [&str; 4] = ["provider-fwd", "softhsm", "client-fwd", "ideal"];
                stacks.sort_by_key(|s| {
                    ADJACENT
                        .iter()
                        .position(|x| *x == s.id)
                        .unwrap_or(ADJACENT.len())
                });
                if rep % 2 == 1 {
                    stacks.reverse();
                }
                for w in WORKLOADS {
                    for stack in &stacks {
                        this.push(bench.run_ops(stack, w, delay_ms, 1)?);
                    }
                }
                for stack in &stacks {
                    this.push(bench.run_ops(stack, &WORKLOADS[0], delay_ms, 8)?);
                }
                if delay_ms == 0 {
                    let floor = alone::socket_floor(sizes.floor)?;
                    let p50 = pct_ms(&floor, 50.0);
                    eprintln!("  socket floor: request → reply p50 {:.1} µs", p50 * 1e3);
                    report.floor_p50_ms.push(p50);
                }
                runs.push(this);
            }
            if delay_ms == 0 {
                report.reps0.clone_from(&runs);
            }
            report.ops.extend(median_runs(runs));
        }
    }
    if has("req") {
        for &delay_ms in &opts.delays {
            report
                .load_samples
                .push((format!("req -new at {delay_ms} ms"), loadavg()));
            eprintln!(
                "openssl req -new, {delay_ms} ms one-way (load {}):",
                loadavg()
            );
            for stack in STACKS.iter().filter(|s| s.openssl() && wanted(s)) {
                if delay_ms != 0 && !stack.remote() {
                    continue;
                }
                report.reqs.push(bench.run_req(stack, delay_ms));
            }
        }
    }
    if has("alone") {
        report
            .load_samples
            .push(("forwarder alone".into(), loadavg()));
        eprintln!("the forwarder alone (load {}):", loadavg());
        for (name, server) in [
            ("p11fwd server", &bench.fwd as &dyn Server),
            ("p11-kit server", &bench.stock),
        ] {
            let (first, ready) = alone::setup_times(server.socket_path(), sizes.setups)?;
            let (mut first, mut ready) = (first, ready);
            first.sort_unstable();
            ready.sort_unstable();
            let row = SetupRow {
                server: name,
                n: sizes.setups,
                first_p50_ms: pct_ms(&first, 50.0),
                first_p99_ms: pct_ms(&first, 99.0),
                ready_p50_ms: pct_ms(&ready, 50.0),
                ready_p99_ms: pct_ms(&ready, 99.0),
            };
            eprintln!(
                "  setup {name}: first reply p50 {:.3} ms, C_Initialize reply p50 {:.3} ms (p99 {:.3})",
                row.first_p50_ms, row.ready_p50_ms, row.ready_p99_ms
            );
            report.setup.push(row);
        }
        let m =
            alone::idle_memory_single(bench.fwd.socket_path(), bench.fwd.pid(), sizes.idle_fwd)?;
        eprintln!(
            "  idle memory p11fwd server: {:.1} KiB per connection ({} → {} KiB)",
            m.per_conn_kib, m.before_kib, m.after_kib
        );
        report.memory.push(MemoryRow {
            server: "p11fwd server",
            what: "RSS of the process",
            conns: m.conns,
            before_kib: m.before_kib,
            after_kib: m.after_kib,
            per_conn_kib: m.per_conn_kib,
        });
        let m = alone::idle_memory_forking(
            bench.stock.socket_path(),
            bench.stock.pid(),
            sizes.idle_stock,
        )?;
        eprintln!(
            "  idle memory p11-kit server: {:.1} KiB per connection",
            m.per_conn_kib
        );
        report.memory.push(MemoryRow {
            server: "p11-kit server",
            what: "PSS of the server and its per-connection processes",
            conns: m.conns,
            before_kib: m.before_kib,
            after_kib: m.after_kib,
            per_conn_kib: m.per_conn_kib,
        });
        report
            .signers
            .push(bench.signers(Dest::Fwd, sizes.signers, sizes.signer_ops)?);
        report
            .signers
            .push(bench.signers(Dest::Stock, sizes.signers, sizes.signer_ops)?);
    }
    report.load_after = loadavg();
    report.duration_s = started.elapsed().as_secs_f64();
    report.targets = targets(&report);
    eprintln!("\ntargets:");
    for t in &report.targets {
        eprintln!(
            "  [{}] {}: {}",
            match t.pass {
                Some(true) => "pass",
                Some(false) => "MISS",
                None => " n/a",
            },
            t.name,
            t.measured
        );
    }
    if let Some(dir) = &opts.out {
        write_docs(dir, &report)?;
        eprintln!("wrote {}/benchmarks.{{md,svg,json}}", dir.display());
    }
    drop(bench);
    Ok(())
}

/// Per configuration (stack, workload, delay, threads), the run with the median operations per
/// second of its repetitions (each repetition may run them in another order).
fn median_runs(runs: Vec<Vec<OpRun>>) -> Vec<OpRun> {
    let Some(first) = runs.first() else {
        return Vec::new();
    };
    let key = |r: &OpRun| (r.stack, r.workload, r.delay_ms, r.threads);
    first
        .iter()
        .filter_map(|one| {
            let mut same: Vec<&OpRun> = runs
                .iter()
                .flatten()
                .filter(|r| key(r) == key(one))
                .collect();
            same.sort_by(|a, b| a.ops_per_s.total_cmp(&b.ops_per_s));
            same.get(same.len() / 2).map(|r| (*r).clone())
        })
        .collect()
}

/// "; repetitions: a, b, c" when there was more than one 0 ms repetition.
fn each_rep(v: &[f64], show: impl Fn(f64) -> String) -> String {
    if v.len() < 2 {
        return String::new();
    }
    let all: Vec<String> = v.iter().map(|x| show(*x)).collect();
    format!("; repetitions: {}", all.join(", "))
}

/// The targets of issues 7 and 3, from the measurements.
fn targets(r: &Report) -> Vec<Target> {
    fn ok(x: Option<&OpRun>) -> Option<&OpRun> {
        x.filter(|x| x.status == Status::Ok)
    }
    let mut t = Vec::new();
    for stack in ["provider-fwd", "provider-stock", "client-fwd"] {
        let ec = ok(r.find(stack, "ec-sign", 10, 1)).and_then(|x| x.rt_per_op);
        let rsa = ok(r.find(stack, "rsa-sign", 10, 1)).and_then(|x| x.rt_per_op);
        let pass = match (ec, rsa) {
            (Some(a), Some(b)) => Some(a <= 1.0 + 1e-9 && b <= 1.0 + 1e-9),
            _ => {
                if r.ops.is_empty() {
                    None
                } else {
                    Some(false)
                }
            }
        };
        t.push(Target {
            name: format!(
                "1 round trip per ECDSA/RSA signature at 20 ms RTT: {}",
                report::stack_label(stack)
            ),
            measured: format!(
                "ECDSA {}, RSA {}",
                ec.map_or_else(|| "–".into(), |v| format!("{v:.2}")),
                rsa.map_or_else(|| "–".into(), |v| format!("{v:.2}"))
            ),
            pass,
        });
    }
    for stack in ["provider-fwd", "provider-stock"] {
        let load = ok(r.find(stack, "ec-sign", 10, 1)).and_then(|x| x.load_rt);
        t.push(Target {
            name: format!("key load ≤ 5 round trips: {}", report::stack_label(stack)),
            measured: load.map_or_else(|| "–".into(), |v| format!("{v} round trips")),
            pass: load.map(|v| v <= 5),
        });
        let req = r
            .reqs
            .iter()
            .find(|x| x.stack == stack && x.delay_ms == 10 && x.status == Status::Ok);
        t.push(Target {
            name: format!(
                "`req -new` ≤ 6 round trips and ≤ 0.2 s at 20 ms RTT: {}",
                report::stack_label(stack)
            ),
            measured: req.map_or_else(
                || "–".into(),
                |x| {
                    format!(
                        "{} round trips, {:.0} ms",
                        x.rt.map_or_else(|| "–".into(), |v| v.to_string()),
                        x.wall_ms_median
                    )
                },
            ),
            pass: req.map(|x| x.rt.is_some_and(|v| v <= 6) && x.wall_ms_median <= 200.0),
        });
    }
    for stack in ["provider-fwd", "provider-stock", "client-fwd"] {
        let one = ok(r.find(stack, "ec-sign", 10, 1));
        let eight = ok(r.find(stack, "ec-sign", 10, 8));
        let speedup = one.zip(eight).map(|(a, b)| b.ops_per_s / a.ops_per_s);
        t.push(Target {
            name: format!(
                "8 threads ≥ 6× one thread's signatures/s at 20 ms RTT: {}",
                report::stack_label(stack)
            ),
            measured: speedup.map_or_else(|| "–".into(), |v| format!("{v:.2}×")),
            pass: speedup.map(|v| v >= 6.0),
        });
    }
    for w in ["ec-sign", "rsa-sign"] {
        let ours = ok(r.find("provider-fwd", w, 0, 1));
        let direct = ok(r.find("softhsm", w, 0, 1));
        let ratio = ours.zip(direct).map(|(a, b)| a.ops_per_s / b.ops_per_s);
        // What an ideal forwarder (the module in process plus a bare request/reply) keeps of
        // the direct rate.
        let best = ok(r.find("ideal", w, 0, 1))
            .zip(direct)
            .map(|(i, d)| i.ops_per_s / d.ops_per_s);
        t.push(Target {
            name: format!("no delay, {w}: provider + forwarder ≥ 0.9× the module called directly (signatures/s)"),
            measured: ratio.map_or_else(
                || "–".into(),
                |v| {
                    let mut m = match best {
                        Some(b) => format!("{v:.2}× (an ideal forwarder: {b:.2}×)"),
                        None => format!("{v:.2}×"),
                    };
                    m += &each_rep(&r.per_rep("provider-fwd", "softhsm", w, |a, b| {
                        a.ops_per_s / b.ops_per_s
                    }), |x| format!("{x:.2}×"));
                    m
                },
            ),
            pass: ratio.map(|v| v >= 0.9),
        });
    }
    let setup = r.setup.iter().find(|x| x.server == "p11fwd server");
    t.push(Target {
        name: "forwarder connection setup < 1 ms (connect → C_Initialize reply, p50)".into(),
        measured: setup.map_or_else(
            || "–".into(),
            |x| {
                let stock = r
                    .setup
                    .iter()
                    .find(|s| s.server == "p11-kit server")
                    .map_or(f64::NAN, |s| s.ready_p50_ms);
                format!("{:.3} ms (p11-kit server {:.1} ms)", x.ready_p50_ms, stock)
            },
        ),
        pass: setup.map(|x| x.ready_p50_ms < 1.0),
    });
    for w in ["ec-sign", "rsa-sign"] {
        let fwd = ok(r.find("client-fwd", w, 0, 1));
        let direct = ok(r.find("softhsm", w, 0, 1));
        let over = fwd.zip(direct).map(|(a, b)| a.p50_ms / b.p50_ms - 1.0);
        t.push(Target {
            name: format!("signature overhead within 10 % of direct ({w}, p50, p11fwd-client.so → p11fwd server vs SoftHSM)"),
            measured: fwd.zip(direct).map_or_else(
                || "–".into(),
                |(a, b)| {
                    let mut m = format!("{:.3} ms vs {:.3} ms: {:+.0} %", a.p50_ms, b.p50_ms, (a.p50_ms / b.p50_ms - 1.0) * 100.0);
                    if let Some(i) = ok(r.find("ideal", w, 0, 1)) {
                        m += &format!(" (an ideal forwarder: {:+.0} %)", (i.p50_ms / b.p50_ms - 1.0) * 100.0);
                    }
                    m += &each_rep(&r.per_rep("client-fwd", "softhsm", w, |a, b| {
                        a.p50_ms / b.p50_ms - 1.0
                    }), |x| format!("{:+.0} %", x * 100.0));
                    m
                },
            ),
            pass: over.map(|v| v <= 0.10),
        });
    }
    let mem = r.memory.iter().find(|x| x.server == "p11fwd server");
    t.push(Target {
        name: format!(
            "< 64 KiB per idle connection ({} open)",
            mem.map_or(0, |m| m.conns)
        ),
        measured: mem.map_or_else(|| "–".into(), |m| format!("{:.1} KiB", m.per_conn_kib)),
        pass: mem.map(|m| m.per_conn_kib < 64.0),
    });
    let sig = r.signers.iter().find(|x| x.server == "p11fwd server");
    t.push(Target {
        name: format!(
            "{} concurrent signers through p11fwd server without errors",
            sig.map_or(0, |s| s.clients)
        ),
        measured: sig.map_or_else(
            || "–".into(),
            |s| format!("{} errors, {:.0} signatures/s", s.errors, s.ops_per_s),
        ),
        pass: sig.map(|s| s.errors == 0),
    });
    t
}

const BEGIN: &str =
    "<!-- p11fwd-bench: generated section, do not edit (make bench rewrites it) -->";
const END: &str = "<!-- p11fwd-bench: end of generated section -->";

/// Write benchmarks.md (only its generated section), benchmarks.svg and benchmarks.json.
fn write_docs(dir: &Path, r: &Report) -> Result<()> {
    std::fs::create_dir_all(dir)?;
    let md_path = dir.join("benchmarks.md");
    let existing = std::fs::read_to_string(&md_path).unwrap_or_else(|_| {
        format!("# Benchmarks\n\nRun `make bench`.\n\n## Results\n\n{BEGIN}\n{END}\n")
    });
    let generated = format!("{BEGIN}\n\n{}\n{END}", r.markdown());
    let md = match (existing.find(BEGIN), existing.find(END)) {
        (Some(b), Some(e)) if e > b => {
            format!(
                "{}{}{}",
                &existing[..b],
                generated,
                &existing[e + END.len()..]
            )
        }
        _ => format!("{existing}\n{generated}\n"),
    };
    std::fs::write(&md_path, md)?;
    std::fs::write(dir.join("benchmarks.svg"), r.svg())?;
    std::fs::write(dir.join("benchmarks.json"), r.json())?;
    Ok(())
}
