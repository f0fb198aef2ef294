//! Which modules to serve: `--provider` (a path or a name), or every module registered with
//! p11-kit (pkcs11.conf(5)), read from its module config files ourselves.
//!
//! Config directories, later ones overriding files of the same name: `/usr/share/p11-kit/modules`,
//! `/etc/pkcs11/modules`, `~/.config/pkcs11/modules`. Keys used: `module:`, `enable:`,
//! `disable-in:`, `enable-in:` (our program names are `p11fwd`, `p11-kit-server` and
//! `p11-kit-remote`, the names under which the stock server loads modules), `priority:` (higher
//! first, then by name, as p11-kit sorts) and `x-init-reserved:`.
//!
//! Client and proxy modules are never loaded (p11-kit issue #531: a server that loads
//! `p11-kit-client.so` connects to itself until it runs out of memory): they are recognised by
//! file name and by strings only they contain (`P11_KIT_SERVER_ADDRESS` in RPC clients,
//! `p11_kit_modules_load` in the proxy).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

/// The program names a module config may enable or disable us under.
pub const PROGRAM_NAMES: [&str; 3] = ["p11fwd", "p11-kit-server", "p11-kit-remote"];

/// One registered module.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Registered {
    /// The config name (file name without `.module`).
    pub name: String,
    /// The module file.
    pub path: PathBuf,
    /// `priority:` (0 if absent).
    pub priority: i64,
    /// `x-init-reserved:`, passed to `C_Initialize` as `pReserved`.
    pub init_reserved: Option<String>,
    /// Whether the config lets us load it.
    pub enabled: bool,
}

/// p11-kit's default module directory (where relative `module:` paths are looked up).
pub fn module_dir() -> PathBuf {
    let multiarch = PathBuf::from(format!(
        "/usr/lib/{}-linux-gnu/pkcs11",
        std::env::consts::ARCH
    ));
    if multiarch.is_dir() {
        multiarch
    } else {
        PathBuf::from("/usr/lib/pkcs11")
    }
}

/// The config directories, in override order.
pub fn config_dirs() -> Vec<PathBuf> {
    let mut dirs = vec![
        PathBuf::from("/usr/share/p11-kit/modules"),
        PathBuf::from("/etc/pkcs11/modules"),
    ];
    let user = std::env::var_os("XDG_CONFIG_HOME")
        .filter(|d| !d.is_empty())
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".config")));
    if let Some(u) = user {
        dirs.push(u.join("pkcs11").join("modules"));
    }
    dirs
}

fn words(v: &str) -> impl Iterator<Item = &str> {
    v.split(|c: char| c == ',' || c.is_whitespace())
        .filter(|w| !w.is_empty())
}

/// Parse one module config file.
pub fn parse_config(name: &str, text: &str) -> Option<Registered> {
    let mut keys = BTreeMap::new();
    for line in text.lines() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        if let Some((k, v)) = line.split_once(':') {
            keys.insert(k.trim().to_owned(), v.trim().to_owned());
        }
    }
    let module = keys.get("module")?;
    let path = if module.contains('/') {
        PathBuf::from(module)
    } else {
        module_dir().join(module)
    };
    let mut enabled = !matches!(
        keys.get("enable")
            .map(|s| s.to_ascii_lowercase())
            .as_deref(),
        Some("no" | "false" | "0")
    );
    if let Some(d) = keys.get("disable-in")
        && words(d).any(|w| PROGRAM_NAMES.contains(&w))
    {
        enabled = false;
    }
    if let Some(e) = keys.get("enable-in")
        && !words(e).any(|w| PROGRAM_NAMES.contains(&w))
    {
        enabled = false;
    }
    Some(Registered {
        name: name.to_owned(),
        path,
        priority: keys
            .get("priority")
            .and_then(|p| p.parse().ok())
            .unwrap_or(0),
        init_reserved: keys
            .get("x-init-reserved")
            .filter(|s| !s.is_empty())
            .cloned(),
        enabled,
    })
}

/// Every registered module (enabled or not), sorted as p11-kit sorts them.
pub fn registered_in(dirs: &[PathBuf]) -> Vec<Registered> {
    let mut by_name: BTreeMap<String, Registered> = BTreeMap::new();
    for dir in dirs {
        let Ok(entries) = std::fs::read_dir(dir) else {
            continue;
        };
        for e in entries.flatten() {
            let file = e.file_name();
            let Some(name) = file.to_str().and_then(|f| f.strip_suffix(".module")) else {
                continue;
            };
            let Ok(text) = std::fs::read_to_string(e.path()) else {
                continue;
            };
            match parse_config(name, &text) {
                Some(r) => {
                    by_name.insert(name.to_owned(), r);
                }
                None => {
                    by_name.remove(name);
                }
            }
        }
    }
    let mut v: Vec<Registered> = by_name.into_values().collect();
    v.sort_by(|a, b| {
        b.priority
            .cmp(&a.priority)
            .then_with(|| a.name.cmp(&b.name))
    });
    v
}

/// Every registered module in the standard directories.
pub fn registered() -> Vec<Registered> {
    registered_in(&config_dirs())
}

/// Resolve `--provider`: a path (anything with a `/`), a registered module name, or a file in
/// p11-kit's module directory.
pub fn resolve_provider(provider: &str) -> Option<Registered> {
    if provider.contains('/') {
        return Some(Registered {
            name: provider.to_owned(),
            path: PathBuf::from(provider),
            priority: 0,
            init_reserved: None,
            enabled: true,
        });
    }
    if let Some(mut r) = registered().into_iter().find(|r| r.name == provider) {
        r.enabled = true;
        return Some(r);
    }
    let path = module_dir().join(provider);
    path.exists().then(|| Registered {
        name: provider.to_owned(),
        path,
        priority: 0,
        init_reserved: None,
        enabled: true,
    })
}

/// File names of RPC client and proxy modules.
const CLIENT_NAMES: [&str; 5] = [
    "p11-kit-client.so",
    "p11-kit-proxy.so",
    "p11fwd-client.so",
    "libp11fwd_client.so",
    "libp11-kit.so",
];

/// Strings only RPC clients (`P11_KIT_SERVER_ADDRESS`) and the proxy (`p11_kit_modules_load`)
/// contain.
const CLIENT_MARKERS: [&[u8]; 2] = [b"P11_KIT_SERVER_ADDRESS", b"p11_kit_modules_load"];

/// Whether `path` is a p11-kit/p11fwd client module or the p11-kit proxy.
pub fn is_client_module(path: &Path) -> bool {
    let named = |p: &Path| {
        p.file_name().and_then(|n| n.to_str()).is_some_and(|n| {
            CLIENT_NAMES
                .iter()
                .any(|c| n == *c || n.starts_with(&format!("{c}.")))
        })
    };
    if named(path) {
        return true;
    }
    let real = std::fs::canonicalize(path).unwrap_or_else(|_| path.to_path_buf());
    if named(&real) {
        return true;
    }
    // Modules are a few MiB at most; a huge file is not worth scanning (and not a client).
    match std::fs::metadata(&real) {
        Ok(m) if m.len() <= 256 << 20 => {}
        _ => return false,
    }
    let Ok(bytes) = std::fs::read(&real) else {
        return false;
    };
    CLIENT_MARKERS
        .iter()
        .any(|m| bytes.windows(m.len()).any(|w| w == *m))
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn parses_disable_and_enable_in() {
        let r = parse_config("a", "module: /x/a.so\ndisable-in: p11-kit-proxy\n").unwrap();
        assert!(r.enabled);
        let r = parse_config("a", "module: /x/a.so\ndisable-in: p11fwd, other\n").unwrap();
        assert!(!r.enabled);
        let r = parse_config("a", "module: /x/a.so\nenable-in: pkcs11-tool\n").unwrap();
        assert!(!r.enabled);
        let r = parse_config("a", "module: /x/a.so\nenable-in: p11-kit-server\n").unwrap();
        assert!(r.enabled);
        let r = parse_config("a", "module: a.so\npriority: 5\nx-init-reserved: v=1\n").unwrap();
        assert_eq!(r.path, module_dir().join("a.so"));
        assert_eq!(r.priority, 5);
        assert_eq!(r.init_reserved.as_deref(), Some("v=1"));
        assert!(parse_config("a", "# nothing\n").is_none());
        let r = parse_config("a", "module: /x/a.so\nenable: no\n").unwrap();
        assert!(!r.enabled);
    }

    #[test]
    fn sorts_by_priority_then_name_and_later_dirs_override() {
        let d1 = tempfile::tempdir().unwrap();
        let d2 = tempfile::tempdir().unwrap();
        std::fs::write(d1.path().join("b.module"), "module: /b.so\n").unwrap();
        std::fs::write(d1.path().join("a.module"), "module: /a.so\n").unwrap();
        std::fs::write(d1.path().join("t.module"), "module: /t.so\npriority: 1\n").unwrap();
        std::fs::write(d2.path().join("a.module"), "module: /a2.so\n").unwrap();
        std::fs::write(d2.path().join("ignored.txt"), "module: /x.so\n").unwrap();
        let r = registered_in(&[d1.path().to_path_buf(), d2.path().to_path_buf()]);
        let names: Vec<_> = r.iter().map(|r| r.name.as_str()).collect();
        assert_eq!(names, ["t", "a", "b"]);
        assert_eq!(r[1].path, PathBuf::from("/a2.so"));
    }

    #[test]
    fn recognises_client_modules() {
        let client = Path::new("/usr/lib/x86_64-linux-gnu/pkcs11/p11-kit-client.so");
        if client.exists() {
            assert!(is_client_module(client));
        }
        let proxy = Path::new("/usr/lib/x86_64-linux-gnu/p11-kit-proxy.so");
        if proxy.exists() {
            assert!(is_client_module(proxy));
        }
        let d = tempfile::tempdir().unwrap();
        let renamed = d.path().join("innocent.so");
        std::fs::write(&renamed, b"\x7fELF...P11_KIT_SERVER_ADDRESS...").unwrap();
        assert!(is_client_module(&renamed));
        let softhsm = Path::new("/usr/lib/softhsm/libsofthsm2.so");
        if softhsm.exists() {
            assert!(!is_client_module(softhsm));
        }
        assert!(is_client_module(Path::new("/nowhere/p11fwd-client.so")));
    }
}
