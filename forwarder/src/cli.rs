//! `p11fwd server`: the command line of `p11-kit server` (rpc §7.1), socket setup, daemonizing
//! and signals around [`crate::server::run`].

use std::io::{Read, Write};
use std::os::unix::fs::PermissionsExt;
use std::os::unix::net::UnixListener as StdListener;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result, bail};
use p11fwd_conf::Pkcs11Uri;
use p11fwd_conf::discovery::{
    ProcessEnvironment, ServerAddress, default_server_socket, format_unix_address,
};
use p11fwd_conf::shell::{ShellSyntax, kill_snippet, start_snippet};
use tracing::{info, warn};

use crate::daemon::{self, Forked};
use crate::module::{Module, RawParams, registry};
use crate::server::{self, Config};
use crate::state::Shared;

/// Arguments of `p11fwd server` (the options of `p11-kit server`).
#[derive(Debug, clap::Args)]
pub struct ServerArgs {
    /// The PKCS#11 module to serve: a path, or a module name (registered with p11-kit, or a
    /// file in p11-kit's module directory). Default: every module registered with p11-kit.
    #[arg(short = 'p', long = "provider", value_name = "MODULE")]
    pub provider: Option<String>,
    /// The socket: a path or `unix:path=PATH`. Default: `$XDG_RUNTIME_DIR/p11-kit/pkcs11-<pid>`.
    #[arg(short = 'n', long = "name", value_name = "NAME")]
    pub name: Option<String>,
    /// Stay in the foreground.
    #[arg(short = 'f', long = "foreground")]
    pub foreground: bool,
    /// Stop the server named by `$P11_KIT_SERVER_PID` and print commands to unset the variables.
    #[arg(short = 'k', long = "kill")]
    pub kill: bool,
    /// Print Bourne shell commands.
    #[arg(short = 's', long = "sh", conflicts_with = "csh")]
    pub sh: bool,
    /// Print C shell commands.
    #[arg(short = 'c', long = "csh")]
    pub csh: bool,
    /// Only this user (name or uid) may connect, instead of the server's own uid (as with
    /// `p11-kit server`); the socket is given to them.
    #[arg(short = 'u', long = "user", value_name = "USER")]
    pub user: Option<String>,
    /// Only peers whose primary group is this one (name or gid) may connect (with `-u`: that
    /// user, with this group); the socket is given to the group, mode 0660.
    #[arg(short = 'g', long = "group", value_name = "GROUP")]
    pub group: Option<String>,
    /// Exit after this many seconds without connections.
    #[arg(short = 't', long = "timeout", value_name = "SECS")]
    pub timeout: Option<u64>,
    /// Log every forwarded call (function, session, CK_RV, duration, sizes; never values).
    #[arg(short = 'v', long = "verbose")]
    pub verbose: bool,
    /// Accepted for compatibility with `p11-kit server`.
    #[arg(short = 'q', long = "quiet")]
    pub quiet: bool,
    /// Vendor-defined mechanisms (ids >= 0x80000000, hex or decimal, comma-separated) whose
    /// parameters may reach the module as the client's raw bytes. Only for mechanisms whose
    /// parameter holds no pointers: the module would use a client's addresses. Other raw
    /// parameters of vendor mechanisms are refused (CKR_MECHANISM_PARAM_INVALID).
    #[arg(
        long = "pass-raw-params",
        value_name = "MECHS",
        value_delimiter = ',',
        value_parser = parse_vendor_mechanism
    )]
    pub pass_raw_params: Vec<u64>,
    /// Spare sessions per key and mechanism on which the next `C_SignInit` (`C_DecryptInit`)
    /// is done ahead, so that a signature waits only for `C_Sign` (0: off).
    #[arg(long = "sign-ahead", env = "P11FWD_SIGN_AHEAD", value_name = "N",
          default_value_t = crate::prearm::DEFAULT_PER_KEY,
          value_parser = clap::value_parser!(u8).range(0..=16))]
    pub sign_ahead: u8,
    /// The tokens to serve (`pkcs11:` URIs, e.g. `pkcs11:token=mine`; `pkcs11:` is every token).
    #[arg(value_name = "URI")]
    pub uris: Vec<String>,
}

/// A vendor-defined mechanism id, `0x...` or decimal.
fn parse_vendor_mechanism(s: &str) -> Result<u64, String> {
    let s = s.trim();
    let id = match s.strip_prefix("0x").or_else(|| s.strip_prefix("0X")) {
        Some(hex) => u64::from_str_radix(hex, 16),
        None => s.parse(),
    }
    .map_err(|_| format!("{s:?} is not a mechanism id (0x... or decimal)"))?;
    if !(p11fwd_wire::consts::CKM_VENDOR_DEFINED..=u64::from(u32::MAX)).contains(&id) {
        return Err(format!(
            "{s}: only vendor-defined mechanisms (0x80000000 to 0xffffffff) can be named"
        ));
    }
    Ok(id)
}

fn syntax(args: &ServerArgs) -> ShellSyntax {
    let explicit = if args.csh {
        Some(ShellSyntax::Csh)
    } else if args.sh {
        Some(ShellSyntax::Sh)
    } else {
        None
    };
    ShellSyntax::resolve(explicit, std::env::var_os("SHELL").as_deref())
}

/// A user or group given by name or number, looked up in `/etc/passwd` or `/etc/group`.
fn lookup_id(db: &str, name: &str) -> Result<u32> {
    if let Ok(n) = name.parse() {
        return Ok(n);
    }
    let text = std::fs::read_to_string(db).with_context(|| format!("reading {db}"))?;
    for line in text.lines() {
        let mut f = line.split(':');
        if f.next() == Some(name)
            && let Some(id) = f.nth(1).and_then(|id| id.parse().ok())
        {
            return Ok(id);
        }
    }
    bail!("no {name:?} in {db}")
}

fn init_logging(verbose: bool) {
    let filter = std::env::var("P11FWD_LOG")
        .or_else(|_| std::env::var("RUST_LOG"))
        .unwrap_or_else(|_| {
            if verbose {
                "info,p11fwd_forwarder=debug,p11fwd::call=debug".to_owned()
            } else {
                "warn".to_owned()
            }
        });
    let _ = tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_env_filter(tracing_subscriber::EnvFilter::new(filter))
        .try_init();
}

/// The modules to serve.
fn load_modules(provider: Option<&str>) -> Result<Vec<Arc<Module>>> {
    if let Some(p) = provider {
        let r = registry::resolve_provider(p).with_context(|| {
            format!(
                "module {p:?} not found (give a path, a registered module name, or a file in {})",
                registry::module_dir().display()
            )
        })?;
        let m = Module::load(&r.name, &r.path, r.init_reserved.as_deref())?;
        return Ok(vec![Arc::new(m)]);
    }
    let mut out = Vec::new();
    for r in registry::registered() {
        if !r.enabled {
            info!(module = %r.name, "disabled for p11fwd in its config");
            continue;
        }
        match Module::load(&r.name, &r.path, r.init_reserved.as_deref()) {
            Ok(m) => out.push(Arc::new(m)),
            Err(e) => warn!(module = %r.name, cause = %e, "skipping module"),
        }
    }
    if out.is_empty() {
        bail!("no usable PKCS#11 module is registered with p11-kit (use --provider)");
    }
    Ok(out)
}

/// Where to listen.
enum Socket {
    /// A socket we created at this path (removed on exit); `dir` if we created its directory.
    Bound {
        listener: StdListener,
        path: PathBuf,
        dir: Option<PathBuf>,
    },
    /// A socket passed by systemd.
    Activated(StdListener),
}

fn bind(args: &ServerArgs, uid: Option<u32>, gid: Option<u32>) -> Result<Socket> {
    if let Some(fd) = daemon::listen_fd().map_err(anyhow::Error::msg)? {
        return Ok(Socket::Activated(StdListener::from(fd)));
    }
    let (path, dir) = match &args.name {
        Some(name) => match ServerAddress::from_server_name(name)? {
            ServerAddress::Unix(p) => (p, None),
            _ => bail!("only unix sockets are supported: {name:?}"),
        },
        None => {
            let p = default_server_socket(&ProcessEnvironment, std::process::id())?;
            let dir = p.parent().map(Path::to_path_buf);
            if let Some(d) = &dir {
                std::fs::create_dir_all(d).with_context(|| format!("creating {}", d.display()))?;
                std::fs::set_permissions(d, std::fs::Permissions::from_mode(0o700))?;
            }
            (p, dir)
        }
    };
    let path = if path.is_absolute() {
        path
    } else {
        std::env::current_dir()?.join(path)
    };
    // Like p11-kit, replace whatever is at the path.
    let _ = std::fs::remove_file(&path);
    let old = rustix::process::umask(rustix::fs::Mode::from_raw_mode(0o177));
    let bound = StdListener::bind(&path);
    rustix::process::umask(old);
    let listener = bound.with_context(|| format!("binding {}", path.display()))?;
    let mode = if gid.is_some() { 0o660 } else { 0o600 };
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(mode))?;
    if uid.is_some() || gid.is_some() {
        rustix::fs::chown(
            &path,
            uid.map(rustix::process::Uid::from_raw),
            gid.map(rustix::process::Gid::from_raw),
        )
        .with_context(|| format!("chown {}", path.display()))?;
    }
    Ok(Socket::Bound {
        listener,
        path,
        dir,
    })
}

/// The address of a socket passed by systemd, from its own name (getsockname). A socket
/// without a path (unnamed, or in the abstract namespace) cannot be named in the snippet, which
/// p11-kit clients read as `unix:path=`: refused.
fn activated_address(listener: &StdListener) -> Result<String> {
    let local = listener
        .local_addr()
        .context("getsockname on the socket passed by systemd")?;
    match local.as_pathname() {
        Some(path) => Ok(format_unix_address(path)),
        None => bail!(
            "the socket passed by systemd (LISTEN_FDS) has no path, so the snippet cannot name \
             it: give its address with -n"
        ),
    }
}

/// SIGTERM or SIGINT. The handlers are installed when this is called (inside the runtime), not
/// when the future is first polled, so that the caller can announce readiness after it.
fn signals() -> Result<impl Future<Output = ()>> {
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = signal(SignalKind::terminate()).context("SIGTERM handler")?;
    let mut int = signal(SignalKind::interrupt()).context("SIGINT handler")?;
    Ok(async move {
        tokio::select! {
            _ = term.recv() => {}
            _ = int.recv() => {}
        }
    })
}

/// Raise the soft limit on open files towards the hard one, so that `max_connections` clients
/// (plus the module's own descriptors) fit: a systemd user service starts with a soft limit of
/// 1024.
fn raise_fd_limit(config: &Config) {
    use rustix::process::{Resource, getrlimit, setrlimit};
    let want = (config.max_connections as u64).saturating_mul(2) + 256;
    let lim = getrlimit(Resource::Nofile);
    let Some(current) = lim.current else { return };
    if current >= want {
        return;
    }
    let target = lim.maximum.map_or(want, |max| want.min(max));
    if target > current {
        let new = rustix::process::Rlimit {
            current: Some(target),
            maximum: lim.maximum,
        };
        match setrlimit(Resource::Nofile, new) {
            Ok(()) => info!(from = current, to = target, "raised the open file limit"),
            Err(e) => warn!(cause = %e, "cannot raise the open file limit"),
        }
    }
    if target < want {
        warn!(
            limit = target,
            connections = config.max_connections,
            "the open file limit may not allow every connection"
        );
    }
}

/// Serve until SIGTERM/SIGINT (or the idle timeout). `ready` runs once the signal handlers are
/// in place (it prints the snippet or tells the daemon's parent), so that a client that saw the
/// snippet can always stop the server cleanly.
fn serve(
    listener: StdListener,
    shared: Arc<Shared>,
    config: Config,
    ready: impl FnOnce() -> Result<()>,
) -> Result<()> {
    raise_fd_limit(&config);
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .thread_name("p11fwd")
        .build()?;
    rt.block_on(async move {
        listener.set_nonblocking(true)?;
        let listener = tokio::net::UnixListener::from_std(listener)?;
        let stop = signals()?;
        ready()?;
        server::run(listener, shared, config, stop).await;
        Ok::<_, anyhow::Error>(())
    })?;
    rt.shutdown_timeout(Duration::from_secs(2));
    Ok(())
}

/// Run `p11fwd server`.
pub fn run(args: ServerArgs) -> Result<ExitCode> {
    let syntax = syntax(&args);
    if args.kill {
        let pid = std::env::var("P11_KIT_SERVER_PID").context("P11_KIT_SERVER_PID is not set")?;
        let pid: i32 = pid.trim().parse().context("bad P11_KIT_SERVER_PID")?;
        let pid = rustix::process::Pid::from_raw(pid).context("bad P11_KIT_SERVER_PID")?;
        rustix::process::kill_process(pid, rustix::process::Signal::TERM)
            .with_context(|| format!("cannot signal process {}", pid.as_raw_nonzero()))?;
        print!("{}", kill_snippet(syntax));
        std::io::stdout().flush()?;
        return Ok(ExitCode::SUCCESS);
    }
    if args.uris.is_empty() {
        bail!(
            "no token URI given (for example `pkcs11:token=mytoken`; `pkcs11:` serves every token)"
        );
    }
    let uris = args
        .uris
        .iter()
        .map(|u| Pkcs11Uri::parse(u).with_context(|| format!("bad URI {u:?}")))
        .collect::<Result<Vec<_>>>()?;
    init_logging(args.verbose);
    let uid = args
        .user
        .as_deref()
        .map(|u| lookup_id("/etc/passwd", u))
        .transpose()?;
    let gid = args
        .group
        .as_deref()
        .map(|g| lookup_id("/etc/group", g))
        .transpose()?;
    let raw_params = RawParams::new(args.pass_raw_params.clone())
        .map_err(|m| anyhow::anyhow!("{m:#x} is not a vendor-defined mechanism"))?;
    let config = Config {
        allowed_uids: uid.into_iter().collect(),
        allowed_gids: gid.into_iter().collect(),
        idle_timeout: args.timeout.map(Duration::from_secs),
        ..Config::default()
    };
    let socket = bind(&args, uid, gid)?;
    let (listener, cleanup) = match socket {
        Socket::Bound {
            listener,
            path,
            dir,
        } => (listener, Some((path, dir))),
        Socket::Activated(l) => (l, None),
    };
    let address = match (&cleanup, &args.name) {
        (Some((path, _)), _) => format_unix_address(path),
        (None, Some(name)) => match ServerAddress::from_server_name(name)? {
            ServerAddress::Unix(p) => format_unix_address(&p),
            other => format!("{other}"),
        },
        // Socket activation without -n: the snippet names the socket systemd passed.
        (None, None) => activated_address(&listener)?,
    };
    let remove = |cleanup: &Option<(PathBuf, Option<PathBuf>)>| {
        if let Some((path, dir)) = cleanup {
            let _ = std::fs::remove_file(path);
            if let Some(d) = dir {
                let _ = std::fs::remove_dir(d);
            }
        }
    };

    if args.foreground {
        let modules = match load_modules(args.provider.as_deref()) {
            Ok(m) => m,
            Err(e) => {
                remove(&cleanup);
                return Err(e);
            }
        };
        let shared = Arc::new(
            Shared::new(modules, uris, raw_params).with_sign_ahead(args.sign_ahead.into()),
        );
        let r = serve(listener, shared, config, || {
            print!("{}", start_snippet(syntax, &address, std::process::id()));
            std::io::stdout().flush()?;
            Ok(())
        });
        remove(&cleanup);
        r?;
        return Ok(ExitCode::SUCCESS);
    }

    // Daemon: fork before any thread exists; the child reports over a pipe whether its modules
    // loaded, so that errors still reach the user's terminal.
    let (mut ready_r, mut ready_w) = std::io::pipe()?;
    match daemon::fork()? {
        Forked::Parent(child) => {
            drop(ready_w);
            let mut msg = String::new();
            let _ = ready_r.read_to_string(&mut msg);
            if msg == "ok" {
                print!("{}", start_snippet(syntax, &address, child));
                std::io::stdout().flush()?;
                Ok(ExitCode::SUCCESS)
            } else {
                eprintln!(
                    "p11fwd: {}",
                    if msg.is_empty() {
                        "the server failed to start"
                    } else {
                        &msg
                    }
                );
                Ok(ExitCode::FAILURE)
            }
        }
        Forked::Child => {
            drop(ready_r);
            let _ = rustix::process::setsid();
            let modules = match load_modules(args.provider.as_deref()) {
                Ok(m) => m,
                Err(e) => {
                    let _ = write!(ready_w, "{e:#}");
                    remove(&cleanup);
                    return Ok(ExitCode::FAILURE);
                }
            };
            let devnull = std::fs::OpenOptions::new()
                .read(true)
                .write(true)
                .open("/dev/null")?;
            rustix::stdio::dup2_stdin(&devnull)?;
            rustix::stdio::dup2_stdout(&devnull)?;
            let shared = Arc::new(
                Shared::new(modules, uris, raw_params).with_sign_ahead(args.sign_ahead.into()),
            );
            let r = serve(listener, shared, config, move || {
                let _ = ready_w.write_all(b"ok");
                drop(ready_w);
                Ok(())
            });
            remove(&cleanup);
            r?;
            Ok(ExitCode::SUCCESS)
        }
    }
}
