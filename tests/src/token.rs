//! The SoftHSM fixture: a fresh token in its own temp dir, with the keys a test asks for.
//!
//! Key material is made in software by `openssl` (in parallel, one thread per key), so that the
//! certificates are plain `openssl req -x509` output and the public keys and certificates can be
//! handed to `openssl` as PEM files for verification. The `p11fwd-test-token` helper then
//! initialises the token and imports everything with the attributes the fixture promises (see
//! [`Key`] and `docs/notes-tests.md`). `SOFTHSM2_CONF` is passed to child processes through
//! [`TestToken::env`] and never set in the test process.

use std::ffi::OsStr;
use std::fmt;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::thread;

use tempfile::TempDir;

use crate::run::{require_tool, run_ok};
use crate::{SOFTHSM_MODULE, artifacts, percent_encode, require_file};

/// The default token label.
pub const DEFAULT_LABEL: &str = "p11fwd-test";
/// The SO PIN of every test token (a throwaway test value).
pub const SO_PIN: &str = "12345678";
/// The user PIN of every test token (a throwaway test value).
pub const USER_PIN: &str = "123456";
/// The label of the token [`TestToken::add_second_token`] adds.
pub const SECOND_LABEL: &str = "second";
/// Its user PIN.
pub const SECOND_PIN: &str = "654321";
/// The label of its EC key pair.
pub const SECOND_KEY: &str = "ec-second";

/// The objects a [`TestToken`] can hold. Each is a key (pair) with `CKA_LABEL` = [`Key::label`]
/// and `CKA_ID` = [`Key::id`]; some also have a certificate with the same label and id.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Key {
    /// `rsa2048`, id 01: RSA-2048 pair (sign, decrypt, unwrap / verify, encrypt, wrap) and a
    /// self-signed certificate (`CN=rsa2048`).
    Rsa2048,
    /// `rsa-pss`, id 02: RSA-2048 pair whose private key has `CKA_ALLOWED_MECHANISMS` = {RSA_PKCS_PSS,
    /// SHA256/384/512_RSA_PKCS_PSS}; sign only.
    RsaPss,
    /// `ec-p256`, id 03: P-256 pair (sign, derive) and a self-signed certificate (`CN=ec-p256`).
    EcP256,
    /// `ec-p384`, id 04: P-384 pair (sign, derive).
    EcP384,
    /// `ec-p521`, id 05: P-521 pair (sign, derive).
    EcP521,
    /// `ed25519`, id 06: `CKK_EC_EDWARDS` Ed25519 pair (sign).
    Ed25519,
    /// `ed448`, id 07: `CKK_EC_EDWARDS` Ed448 pair (sign).
    Ed448,
    /// `x25519`, id 08: `CKK_EC_MONTGOMERY`. **Not supported by SoftHSM 2.6.1**: asking for it
    /// panics (see [`Key::is_supported`]).
    X25519,
    /// `aes256`, id 09: AES-256 secret key (encrypt, decrypt, wrap, unwrap) with
    /// `CKA_WRAP_TEMPLATE` = {CKA_CLASS=CKO_SECRET_KEY, CKA_KEY_TYPE=CKK_AES}; its value is known
    /// to the test ([`TestToken::secret`]).
    Aes256,
    /// `rsa-always-auth`, id 0a: RSA-2048 pair (sign, decrypt) with `CKA_ALWAYS_AUTHENTICATE`.
    RsaAlwaysAuth,
}

impl Key {
    /// Every key, in id order.
    pub const ALL: [Self; 10] = [
        Self::Rsa2048,
        Self::RsaPss,
        Self::EcP256,
        Self::EcP384,
        Self::EcP521,
        Self::Ed25519,
        Self::Ed448,
        Self::X25519,
        Self::Aes256,
        Self::RsaAlwaysAuth,
    ];

    /// `CKA_LABEL` of the key's objects.
    pub fn label(self) -> &'static str {
        match self {
            Self::Rsa2048 => "rsa2048",
            Self::RsaPss => "rsa-pss",
            Self::EcP256 => "ec-p256",
            Self::EcP384 => "ec-p384",
            Self::EcP521 => "ec-p521",
            Self::Ed25519 => "ed25519",
            Self::Ed448 => "ed448",
            Self::X25519 => "x25519",
            Self::Aes256 => "aes256",
            Self::RsaAlwaysAuth => "rsa-always-auth",
        }
    }

    /// `CKA_ID` of the key's objects (one byte).
    pub fn id(self) -> u8 {
        match self {
            Self::Rsa2048 => 0x01,
            Self::RsaPss => 0x02,
            Self::EcP256 => 0x03,
            Self::EcP384 => 0x04,
            Self::EcP521 => 0x05,
            Self::Ed25519 => 0x06,
            Self::Ed448 => 0x07,
            Self::X25519 => 0x08,
            Self::Aes256 => 0x09,
            Self::RsaAlwaysAuth => 0x0a,
        }
    }

    /// `CKA_ID` as two lower-case hex digits (`"0a"`), as `pkcs11-tool --id` takes it.
    pub fn id_hex(self) -> String {
        format!("{:02x}", self.id())
    }

    /// The key with this label.
    pub fn from_label(label: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|k| k.label() == label)
    }

    /// Whether SoftHSM 2.6.1 can hold this key. Only [`Key::X25519`] is refused: SoftHSM 2.6.1
    /// has no `CKK_EC_MONTGOMERY` (C_CreateObject returns CKR_ATTRIBUTE_VALUE_INVALID).
    pub fn is_supported(self) -> bool {
        self != Self::X25519
    }

    /// Whether the token also holds a certificate for this key.
    pub fn has_certificate(self) -> bool {
        matches!(self, Self::Rsa2048 | Self::EcP256)
    }

    /// Whether this is a key pair (everything but [`Key::Aes256`]).
    pub fn is_pair(self) -> bool {
        self != Self::Aes256
    }

    /// The `openssl genpkey` arguments that make the software key.
    fn genpkey_args(self) -> &'static [&'static str] {
        match self {
            Self::Rsa2048 | Self::RsaPss | Self::RsaAlwaysAuth => {
                &["-algorithm", "RSA", "-pkeyopt", "rsa_keygen_bits:2048"]
            }
            Self::EcP256 => &["-algorithm", "EC", "-pkeyopt", "ec_paramgen_curve:P-256"],
            Self::EcP384 => &["-algorithm", "EC", "-pkeyopt", "ec_paramgen_curve:P-384"],
            Self::EcP521 => &["-algorithm", "EC", "-pkeyopt", "ec_paramgen_curve:P-521"],
            Self::Ed25519 => &["-algorithm", "ED25519"],
            Self::Ed448 => &["-algorithm", "ED448"],
            Self::X25519 => &["-algorithm", "X25519"],
            Self::Aes256 => &[],
        }
    }
}

impl fmt::Display for Key {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.label())
    }
}

/// How a [`TestToken`]'s objects are laid out.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum Profile {
    /// The fixture's own layout (the table in `docs/notes-tests.md`): ids from [`Key::id`],
    /// certificates labelled like their key and made from it.
    #[default]
    Fixture,
    /// Like the token the captures in `../shared/vectors` were recorded against (vectors README
    /// §2, `harness/make-token.c`, `tools/make-token.sh`): `rsa2048` id 01 whose private key has
    /// `CKA_ALLOWED_MECHANISMS` = {RSA_PKCS, SHA256_RSA_PKCS, RSA_PKCS_PSS, SHA256_RSA_PKCS_PSS,
    /// RSA_PKCS_OAEP} and a certificate labelled `rsa2048-cert` (id 01, `CN=p11-kit rpc test
    /// vectors`, self-signed by a key of its own, as `tools/make-token.sh` makes it), `ec-p256`
    /// id 02, `ed25519` id 03, `aes256` id 04; keys carry no `CKA_SUBJECT`. The key values are
    /// ours, so only key-independent bytes can equal the captures. [`TestToken::vectors`] builds it.
    Vectors,
}

impl Profile {
    /// The helper's command-line spelling.
    pub(crate) fn arg(self) -> &'static str {
        match self {
            Self::Fixture => "--profile=fixture",
            Self::Vectors => "--profile=vectors",
        }
    }

    /// Parses [`Profile::arg`].
    pub(crate) fn from_arg(arg: &str) -> Option<Self> {
        [Self::Fixture, Self::Vectors]
            .into_iter()
            .find(|p| p.arg() == arg)
    }

    /// `CKA_ID` of `key`'s objects under this profile.
    pub fn id(self, key: Key) -> u8 {
        match (self, key) {
            (Self::Vectors, Key::Rsa2048) => 0x01,
            (Self::Vectors, Key::EcP256) => 0x02,
            (Self::Vectors, Key::Ed25519) => 0x03,
            (Self::Vectors, Key::Aes256) => 0x04,
            _ => key.id(),
        }
    }

    /// `CKA_LABEL` of `key`'s certificate under this profile.
    pub fn cert_label(self, key: Key) -> String {
        match self {
            Self::Fixture => key.label().to_owned(),
            Self::Vectors => format!("{}-cert", key.label()),
        }
    }

    /// The subject of `key`'s certificate (for `openssl req -subj`).
    fn cert_subject(self, key: Key) -> String {
        match self {
            Self::Fixture => format!("/CN={}/O=p11fwd-test", key.label()),
            Self::Vectors => "/CN=p11-kit rpc test vectors".to_owned(),
        }
    }

    /// Whether the certificate is signed by a key of its own rather than `key`.
    fn cert_has_own_key(self) -> bool {
        self == Self::Vectors
    }

    /// The name of `key`'s material in the key cache.
    fn cache_name(self, key: Key) -> String {
        match (self, key.has_certificate()) {
            (Self::Vectors, true) => format!("vectors-{}", key.label()),
            _ => key.label().to_owned(),
        }
    }
}

/// Builds a [`TestToken`]: `TestToken::builder().with(Key::EcP256).build()`.
#[derive(Debug, Clone)]
pub struct TestTokenBuilder {
    label: String,
    keys: Vec<Key>,
    profile: Profile,
}

impl TestTokenBuilder {
    /// Sets the token label (default `p11fwd-test`, at most 32 bytes).
    pub fn label(mut self, label: &str) -> Self {
        self.label = label.to_owned();
        self
    }

    /// Sets the object layout (default [`Profile::Fixture`]).
    pub fn profile(mut self, profile: Profile) -> Self {
        self.profile = profile;
        self
    }

    /// Adds a key.
    ///
    /// # Panics
    /// If SoftHSM cannot hold it ([`Key::is_supported`]).
    #[track_caller]
    pub fn with(mut self, key: Key) -> Self {
        assert!(
            key.is_supported(),
            "SoftHSM 2.6.1 cannot hold the {key} key (see docs/notes-tests.md)"
        );
        if !self.keys.contains(&key) {
            self.keys.push(key);
        }
        self
    }

    /// Adds every supported key.
    pub fn with_all(mut self) -> Self {
        self.keys = Key::ALL.into_iter().filter(|k| k.is_supported()).collect();
        self
    }

    /// Creates the token.
    ///
    /// # Panics
    /// If a tool is missing or a step fails, with the step's output.
    #[track_caller]
    pub fn build(mut self) -> TestToken {
        self.keys.sort();
        let module = require_file(SOFTHSM_MODULE);
        let openssl = require_tool("openssl");
        let helper = artifacts::test_token_helper();
        let dir = tempfile::Builder::new()
            .prefix("p11fwd-token.")
            .tempdir()
            .expect("temp dir");
        let tokens = dir.path().join("tokens");
        std::fs::create_dir(&tokens).expect("create token dir");
        let conf = dir.path().join("softhsm2.conf");
        std::fs::write(
            &conf,
            format!(
                "directories.tokendir = {}\nobjectstore.backend = file\nlog.level = ERROR\n\
                 slots.removable = false\n",
                tokens.display()
            ),
        )
        .expect("write softhsm2.conf");

        make_key_material(&openssl, dir.path(), &self.keys, self.profile);

        let mut cmd = Command::new(helper);
        cmd.env("SOFTHSM2_CONF", &conf)
            .arg(&module)
            .arg(dir.path())
            .arg(&self.label)
            .args([SO_PIN, USER_PIN])
            .arg(self.profile.arg())
            .args(self.keys.iter().map(|k| k.label()));
        run_ok(&mut cmd);

        TestToken {
            dir: Some(dir),
            conf,
            module,
            label: self.label,
            keys: self.keys,
            profile: self.profile,
        }
    }
}

/// Makes the software key material for `keys` in `dir`, one thread per key: for a pair
/// `<label>.key.pem` (PKCS#8), `<label>.key.der` (PKCS#8), `<label>.pub.pem`, `<label>.pub.der`
/// (SubjectPublicKeyInfo) and, where [`Key::has_certificate`], `<label>.cert.pem` and
/// `<label>.cert.der`; for `aes256`, `aes256.key` (32 raw bytes).
fn make_key_material(openssl: &Path, dir: &Path, keys: &[Key], profile: Profile) {
    thread::scope(|scope| {
        let workers: Vec<_> = keys
            .iter()
            .map(|&key| scope.spawn(move || key_material(openssl, dir, key, profile)))
            .collect();
        for worker in workers {
            if let Err(panic) = worker.join() {
                std::panic::resume_unwind(panic);
            }
        }
    });
}

/// Where generated key material is kept between tests: `<target>/tmp/p11fwd-test-keys/<label>/`.
/// Each key is made once per target dir (RSA generation dominates the fixture's cost) and
/// copied into every token dir; `P11FWD_FRESH_KEYS=1` makes fresh material every time.
fn key_cache() -> Option<PathBuf> {
    if std::env::var_os("P11FWD_FRESH_KEYS").is_some() {
        return None;
    }
    let root = artifacts::target_dir().join("tmp").join("p11fwd-test-keys");
    std::fs::create_dir_all(&root).ok()?;
    Some(root)
}

/// Puts the material of `key` into `dir`, from the cache when it is there.
fn key_material(openssl: &Path, dir: &Path, key: Key, profile: Profile) {
    let Some(cache) = key_cache() else {
        return make_one(openssl, dir, key, profile);
    };
    let cached = cache.join(profile.cache_name(key));
    if !cached.is_dir() {
        // Make it in a scratch dir and rename that into place, so that a concurrent test never
        // sees half of it; if another test got there first, its copy wins.
        let scratch = tempfile::Builder::new()
            .prefix(".new.")
            .tempdir_in(&cache)
            .expect("scratch dir in the key cache");
        make_one(openssl, scratch.path(), key, profile);
        let _ = std::fs::rename(scratch.path(), &cached);
    }
    for entry in std::fs::read_dir(&cached).expect("read the key cache") {
        let entry = entry.expect("read the key cache");
        std::fs::copy(entry.path(), dir.join(entry.file_name())).expect("copy key material");
    }
}

fn make_one(openssl: &Path, dir: &Path, key: Key, profile: Profile) {
    let file = |ext: &str| dir.join(format!("{}.{ext}", key.label()));
    if key == Key::Aes256 {
        let mut value = [0u8; 32];
        std::fs::File::open("/dev/urandom")
            .and_then(|mut f| f.read_exact(&mut value))
            .expect("read /dev/urandom");
        std::fs::write(file("key"), value).expect("write aes256.key");
        return;
    }
    let (pem, pub_pem) = (file("key.pem"), file("pub.pem"));
    let ossl = |sub: &str| {
        let mut cmd = Command::new(openssl);
        cmd.arg(sub);
        cmd
    };
    run_ok(
        ossl("genpkey")
            .args(key.genpkey_args())
            .arg("-out")
            .arg(&pem),
    );
    run_ok(
        ossl("pkcs8")
            .args(["-topk8", "-nocrypt", "-outform", "DER", "-in"])
            .arg(&pem)
            .arg("-out")
            .arg(file("key.der")),
    );
    run_ok(
        ossl("pkey")
            .arg("-in")
            .arg(&pem)
            .arg("-pubout")
            .arg("-out")
            .arg(&pub_pem),
    );
    run_ok(
        ossl("pkey")
            .arg("-pubin")
            .arg("-in")
            .arg(&pub_pem)
            .args(["-outform", "DER", "-out"])
            .arg(file("pub.der")),
    );
    if key.has_certificate() {
        let cert_pem = file("cert.pem");
        let subj = profile.cert_subject(key);
        let signer = if profile.cert_has_own_key() {
            let signer = file("cert-key.pem");
            run_ok(
                ossl("genpkey")
                    .args([
                        "-algorithm",
                        "RSA",
                        "-pkeyopt",
                        "rsa_keygen_bits:2048",
                        "-out",
                    ])
                    .arg(&signer),
            );
            signer
        } else {
            pem.clone()
        };
        run_ok(
            ossl("req")
                .args([
                    "-new", "-x509", "-sha256", "-days", "3650", "-subj", &subj, "-key",
                ])
                .arg(&signer)
                .arg("-out")
                .arg(&cert_pem),
        );
        run_ok(
            ossl("x509")
                .arg("-in")
                .arg(&cert_pem)
                .args(["-outform", "DER", "-out"])
                .arg(file("cert.der")),
        );
    }
}

/// A fresh SoftHSM token in its own temp dir (removed on drop; set `P11FWD_KEEP_TEST_DIRS=1` to
/// keep it). See [`Key`] for what it can hold.
///
/// ```no_run
/// use p11fwd_tests::{Key, TestToken, run_ok};
/// use std::process::Command;
///
/// let token = TestToken::builder().with(Key::EcP256).build();
/// run_ok(
///     Command::new("pkcs11-tool")
///         .envs(token.env())
///         .arg("--module")
///         .arg(token.module_path())
///         .args(["-O", "--login", "--pin", token.user_pin()]),
/// );
/// ```
#[derive(Debug)]
pub struct TestToken {
    dir: Option<TempDir>,
    conf: PathBuf,
    module: PathBuf,
    label: String,
    keys: Vec<Key>,
    profile: Profile,
}

impl TestToken {
    /// A builder for a token with the default label and no keys yet.
    pub fn builder() -> TestTokenBuilder {
        TestTokenBuilder {
            label: DEFAULT_LABEL.to_owned(),
            keys: Vec::new(),
            profile: Profile::Fixture,
        }
    }

    /// A token like the one `../shared/vectors` was captured against ([`Profile::Vectors`]):
    /// label `vectors`, user PIN `123456`, `rsa2048` (with its certificate `rsa2048-cert`),
    /// `ec-p256`, `ed25519` and `aes256`.
    #[track_caller]
    pub fn vectors() -> Self {
        Self::builder()
            .label("vectors")
            .profile(Profile::Vectors)
            .with(Key::Rsa2048)
            .with(Key::EcP256)
            .with(Key::Ed25519)
            .with(Key::Aes256)
            .build()
    }

    /// The object layout.
    pub fn profile(&self) -> Profile {
        self.profile
    }

    /// A token with every supported key ([`Key::ALL`] less X25519).
    #[track_caller]
    pub fn full() -> Self {
        Self::builder().with_all().build()
    }

    /// The fixture directory (`softhsm2.conf`, `tokens/`, the PEM files).
    pub fn dir(&self) -> &Path {
        self.dir
            .as_ref()
            .map_or(Path::new("/nonexistent"), TempDir::path)
    }

    /// The token's `softhsm2.conf`.
    pub fn conf_path(&self) -> &Path {
        &self.conf
    }

    /// The environment a child process needs to see this token: `[("SOFTHSM2_CONF", path)]`.
    /// Pass it to `Command::envs`.
    pub fn env(&self) -> [(&'static str, &Path); 1] {
        [("SOFTHSM2_CONF", &self.conf)]
    }

    /// A command for `program` with [`TestToken::env`] applied.
    pub fn command(&self, program: impl AsRef<OsStr>) -> Command {
        let mut cmd = Command::new(program);
        cmd.envs(self.env());
        cmd
    }

    /// The SoftHSM module (`/usr/lib/softhsm/libsofthsm2.so`).
    pub fn module_path(&self) -> &Path {
        &self.module
    }

    /// The token label.
    pub fn label(&self) -> &str {
        &self.label
    }

    /// The user PIN (`123456`).
    pub fn user_pin(&self) -> &'static str {
        USER_PIN
    }

    /// The SO PIN (`12345678`).
    pub fn so_pin(&self) -> &'static str {
        SO_PIN
    }

    /// The token's keys, in id order.
    pub fn keys(&self) -> &[Key] {
        &self.keys
    }

    /// Whether the token holds `key`.
    pub fn has(&self, key: Key) -> bool {
        self.keys.contains(&key)
    }

    /// The token URI, `pkcs11:token=<label>`.
    pub fn uri(&self) -> String {
        format!("pkcs11:token={}", percent_encode(&self.label))
    }

    /// An object URI, `pkcs11:token=<label>;object=<object label>`.
    pub fn object_uri(&self, object: &str) -> String {
        format!("{};object={}", self.uri(), percent_encode(object))
    }

    #[track_caller]
    fn file(&self, label: &str, ext: &str, what: &str) -> PathBuf {
        let key = Key::from_label(label)
            .unwrap_or_else(|| panic!("no fixture key is labelled {label:?}"));
        assert!(
            self.has(key),
            "the token was built without {label}: add .with(Key::{key:?})"
        );
        let path = self.dir().join(format!("{label}.{ext}"));
        assert!(path.exists(), "{label} has no {what}");
        path
    }

    /// The public key of `label` as a PEM SubjectPublicKeyInfo file, for `openssl ... -pubin`.
    #[track_caller]
    pub fn public_pem(&self, label: &str) -> PathBuf {
        self.file(label, "pub.pem", "public key")
    }

    /// The public key of `label` as a DER SubjectPublicKeyInfo file.
    #[track_caller]
    pub fn public_der(&self, label: &str) -> PathBuf {
        self.file(label, "pub.der", "public key")
    }

    /// The certificate of `label` as a PEM file (`rsa2048` and `ec-p256` have one).
    #[track_caller]
    pub fn cert_pem(&self, label: &str) -> PathBuf {
        self.file(label, "cert.pem", "certificate")
    }

    /// The certificate of `label` as a DER file.
    #[track_caller]
    pub fn cert_der(&self, label: &str) -> PathBuf {
        self.file(label, "cert.der", "certificate")
    }

    /// The software copy of the private key of `label` (PKCS#8 PEM), for computing expected
    /// results (ECDH, decryption) with `openssl`. The token's copy is sensitive.
    #[track_caller]
    pub fn private_pem(&self, label: &str) -> PathBuf {
        self.file(label, "key.pem", "private key")
    }

    /// The value of the secret key `label` (`aes256`: 32 bytes).
    #[track_caller]
    pub fn secret(&self, label: &str) -> Vec<u8> {
        std::fs::read(self.file(label, "key", "secret value")).expect("read secret")
    }

    /// Generates a key pair on the token with `pkcs11-tool --keypairgen`, for layouts the
    /// fixture's keys do not have: `key_type` as pkcs11-tool takes it (`rsa:2048`), `id` in hex,
    /// `extra` pkcs11-tool options (`--allowed-mechanisms RSA-X-509`, `--usage-sign`). Works
    /// while servers run: they see the new objects on their next search.
    ///
    /// # Panics
    /// If pkcs11-tool is missing or fails.
    #[track_caller]
    pub fn generate_key_pair(&self, label: &str, id: &str, key_type: &str, extra: &[&str]) {
        self.generate_key_pair_on(&self.label, self.user_pin(), label, id, key_type, extra);
    }

    #[track_caller]
    fn generate_key_pair_on(
        &self,
        token: &str,
        pin: &str,
        label: &str,
        id: &str,
        key_type: &str,
        extra: &[&str],
    ) {
        run_ok(
            self.pkcs11_tool_on(token, pin)
                .args(["--keypairgen", "--key-type", key_type, "--label", label])
                .args(["--id", id])
                .args(extra),
        );
    }

    /// Initialises a second token in this token's SoftHSM (its free slot): label
    /// [`SECOND_LABEL`], user PIN [`SECOND_PIN`], our SO PIN, and the EC P-256 signing key pair
    /// [`SECOND_KEY`] (id 21). Two tokens behind one module.
    ///
    /// # Panics
    /// If softhsm2-util or pkcs11-tool is missing or fails.
    #[track_caller]
    pub fn add_second_token(&self) {
        run_ok(self.command(require_tool("softhsm2-util")).args([
            "--init-token",
            "--free",
            "--label",
            SECOND_LABEL,
            "--pin",
            SECOND_PIN,
            "--so-pin",
            self.so_pin(),
        ]));
        let usage = ["--usage-sign"];
        self.generate_key_pair_on(
            SECOND_LABEL,
            SECOND_PIN,
            SECOND_KEY,
            "21",
            "EC:prime256v1",
            &usage,
        );
    }

    /// Deletes the object of `kind` (pkcs11-tool's `--type`: `pubkey`, `privkey`, `cert`, ...)
    /// labelled `label`, with `pkcs11-tool --delete-object`: for layouts such as a private key
    /// whose public part is only in its certificate. Running servers see it on their next search.
    ///
    /// # Panics
    /// If pkcs11-tool is missing or fails.
    #[track_caller]
    pub fn delete_object(&self, kind: &str, label: &str) {
        run_ok(
            self.pkcs11_tool()
                .args(["--delete-object", "--type", kind, "--label", label]),
        );
    }

    /// `pkcs11-tool --module <softhsm> --token-label <label> --login --pin <user PIN>`.
    fn pkcs11_tool(&self) -> Command {
        self.pkcs11_tool_on(&self.label, self.user_pin())
    }

    /// `pkcs11-tool --module <softhsm> --token-label <token> --login --pin <pin>`.
    fn pkcs11_tool_on(&self, token: &str, pin: &str) -> Command {
        let mut cmd = self.command(require_tool("pkcs11-tool"));
        cmd.arg("--module").arg(&self.module).args([
            "--token-label",
            token,
            "--login",
            "--pin",
            pin,
        ]);
        cmd
    }
}

impl Drop for TestToken {
    fn drop(&mut self) {
        if std::env::var_os("P11FWD_KEEP_TEST_DIRS").is_some()
            && let Some(dir) = self.dir.take()
        {
            eprintln!("keeping test token dir {}", dir.keep().display());
        }
    }
}
