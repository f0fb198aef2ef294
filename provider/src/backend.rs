//! The provider's side of the wire: one RPC connection per provider instance, the tokens behind
//! it, their login state and session pools. Safe code over `p11fwd_wire`'s blocking client.
//!
//! - [`Backend`] lives in the provctx. [`Backend::link`] connects lazily on first use and
//!   reconnects when the connection broke or was inherited across `fork()` (the child never
//!   touches the parent's socket); each connection has an `epoch`, so objects found on an older
//!   one are found again by their attributes ([`crate::key::Key::resolve`]).
//! - [`Link`]: one connection, with every token discovered at connect time (token info and
//!   mechanism list, cached for the connection's life).
//! - [`Token`]: per token, the login state (logged in once per connection; a PIN the token
//!   rejected is never sent again) and a pool of idle sessions, one taken per operation.
//!
//! Round trips are what a remote token costs, so everything whose inputs are known is pipelined
//! with `call_batch`: connecting is the version byte, then `Initialize + GetSlotList`, then
//! `GetTokenInfo + GetMechanismList + OpenSession` for every slot; a search is
//! `Login + FindObjectsInit + FindObjects + FindObjectsFinal`; attribute reads ask for every
//! attribute at once with generous buffers (no size queries).

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use p11fwd_conf::discovery::{self, ServerAddress};
use p11fwd_wire::client::{Client, OutCap, UlongOutput, parse, req};
use p11fwd_wire::consts::*;
use p11fwd_wire::info::TokenInfo;
use p11fwd_wire::transport::blocking::{Connection, Options};
use p11fwd_wire::value::AttrSlot;
use p11fwd_wire::{Arg, Attribute, CallId, Request, Value};
use zeroize::Zeroizing;

use crate::config::{Config, LoginBehavior, PinSource};
use crate::error::Error;

/// Environment override of the server address (before the config key and discovery).
pub(crate) const ADDRESS_ENV: &str = "P11FWD_SERVER_ADDRESS";
/// Environment override of the per-call timeout, in seconds.
pub(crate) const TIMEOUT_ENV: &str = "P11FWD_TIMEOUT";

/// Open a speculative session on at most this many slots when connecting.
const MAX_SPECULATIVE_SESSIONS: usize = 8;
/// Idle sessions kept per token.
const MAX_IDLE_SESSIONS: usize = 8;
/// How often a transiently failing `C_GetTokenInfo` is asked again when connecting.
const TOKEN_INFO_RETRIES: u32 = 3;
/// Object handles asked for per `C_FindObjects`.
const FIND_BATCH: u32 = 256;

/// The connection state of one provider instance.
#[derive(Debug)]
pub(crate) struct Backend {
    server_address: Option<String>,
    token_pin: Option<PinSource>,
    pub(crate) login_behavior: LoginBehavior,
    pub(crate) cache_pins: bool,
    link: Mutex<Option<Arc<Link>>>,
    epochs: AtomicU64,
    /// PINs that worked, by token identity: configured ones, and prompted ones when
    /// `pkcs11-module-cache-pins` is on. Used to log in again on a new connection.
    good_pins: Mutex<HashMap<String, Zeroizing<String>>>,
}

/// One connection and what it found.
#[derive(Debug)]
pub(crate) struct Link {
    pub(crate) client: Client,
    pub(crate) epoch: u64,
    pub(crate) tokens: Vec<Arc<Token>>,
    /// Round trips since the connection was set up: token flags read at round trip `n` are
    /// current as long as this is still `n` (nothing else reached the server since).
    round_trips: AtomicU64,
}

/// A token behind the connection.
#[derive(Debug)]
pub(crate) struct Token {
    pub(crate) slot: u64,
    pub(crate) info: TokenInfo,
    /// [`Token::identity`], made once (every operation looks its token up by it).
    identity: String,
    pub(crate) mechanisms: Vec<u64>,
    state: Mutex<TokenState>,
}

#[derive(Debug, Default)]
struct TokenState {
    logged_in: bool,
    /// The token's flags (CK_TOKEN_INFO.flags) as last read, and the connection's round-trip
    /// count when they were read ([`Link::current_flags`]).
    flags: u64,
    flags_at: u64,
    idle: Vec<u64>,
    /// Sessions not kept (the pool was full, or one was discarded): closed on the server in
    /// the round trip that next opens a session.
    to_close: Vec<u64>,
}

/// PINs a token rejected, in this process (and its fork children), across connections and
/// provider instances: SHA-256 of the token's identity and the PIN, never the PIN itself. A PIN
/// in here is never sent to that token again automatically (a token locks after a few wrong
/// PINs).
fn rejected_pins() -> &'static Mutex<Vec<[u8; 32]>> {
    static REJECTED: Mutex<Vec<[u8; 32]>> = Mutex::new(Vec::new());
    &REJECTED
}

/// Held from the check of a PIN through its `C_Login` to recording the verdict, so that threads
/// logging in at once send one PIN, not one each (the others then see the verdict).
fn login_lock() -> &'static Mutex<()> {
    static LOGIN: Mutex<()> = Mutex::new(());
    &LOGIN
}

fn pin_digest(identity: &str, pin: &str) -> [u8; 32] {
    use sha2::Digest as _;
    let mut h = sha2::Sha256::new();
    h.update(identity.as_bytes());
    h.update([0u8]);
    h.update(pin.as_bytes());
    h.finalize().into()
}

/// A session taken from a token's pool; given back on drop unless [`SessionGuard::discard`]ed.
#[derive(Debug)]
pub(crate) struct SessionGuard<'a> {
    token: &'a Token,
    pub(crate) handle: u64,
    keep: bool,
}

impl Drop for SessionGuard<'_> {
    fn drop(&mut self) {
        let mut st = lock(&self.token.state);
        if self.keep && st.idle.len() < MAX_IDLE_SESSIONS {
            st.idle.push(self.handle);
        } else {
            st.to_close.push(self.handle);
        }
    }
}

impl SessionGuard<'_> {
    /// Do not give the session back (it is in an unknown state).
    pub(crate) fn discard(&mut self) {
        self.keep = false;
    }
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// How to authenticate for a search or an operation.
#[derive(Debug)]
pub(crate) enum Auth {
    /// No login.
    None,
    /// `C_Login(CKU_USER)` with this PIN (`None`: protected authentication path), which came
    /// from where [`PinFrom`] says.
    User(Option<Zeroizing<String>>, PinFrom),
}

/// Where a PIN came from. When the token says one more wrong PIN locks it
/// (CKF_USER_PIN_FINAL_TRY), only a PIN someone types now is tried: at p11fwd's own terminal
/// prompt, or on the token's PIN pad.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum PinFrom {
    /// The URI, the configuration, an earlier login, the application's passphrase callback:
    /// sent without anyone deciding to, so never on a final try.
    Given,
    /// Typed at p11fwd's terminal prompt, or a PIN pad.
    Typed,
}

/// The attributes p11fwd reads from every object it finds (one `C_GetAttributeValue`).
#[derive(Debug, Clone, Default)]
pub(crate) struct ObjectAttrs {
    pub(crate) handle: u64,
    pub(crate) class: Option<u64>,
    pub(crate) key_type: Option<u64>,
    pub(crate) id: Option<Vec<u8>>,
    pub(crate) label: Option<Vec<u8>>,
    pub(crate) always_authenticate: bool,
    pub(crate) allowed_mechanisms: Option<Vec<u64>>,
    pub(crate) modulus: Option<Vec<u8>>,
    pub(crate) public_exponent: Option<Vec<u8>>,
    pub(crate) ec_params: Option<Vec<u8>>,
    pub(crate) ec_point: Option<Vec<u8>>,
    pub(crate) certificate_type: Option<u64>,
    pub(crate) subject: Option<Vec<u8>>,
    pub(crate) issuer: Option<Vec<u8>>,
    pub(crate) serial: Option<Vec<u8>>,
    /// `CKA_VALUE` of certificates (and data objects); never of keys (not asked).
    pub(crate) value: Option<Vec<u8>>,
}

/// (attribute, buffer size) read for every object. The buffers are generous: the server only
/// sends back what the values need, and a too-small one is retried with a size query.
const ATTRS: &[(u64, u32)] = &[
    (CKA_CLASS, 8),
    (CKA_KEY_TYPE, 8),
    (CKA_ID, 256),
    (CKA_LABEL, 256),
    (CKA_ALWAYS_AUTHENTICATE, 1),
    (CKA_ALLOWED_MECHANISMS, 8 * 64),
    (CKA_MODULUS, 1024),
    (CKA_PUBLIC_EXPONENT, 16),
    (CKA_EC_PARAMS, 256),
    (CKA_EC_POINT, 256),
    (CKA_CERTIFICATE_TYPE, 8),
    (CKA_SUBJECT, 1024),
    (CKA_ISSUER, 1024),
    (CKA_SERIAL_NUMBER, 64),
];

/// `CKA_VALUE` is read for certificates only, in a second request and only when needed
/// ([`Link::certificate_values`]), so that a private key's sensitive value is never asked for.
const CERT_VALUE_BUF: u32 = 16384;

impl Backend {
    /// The backend for a configuration; nothing is connected yet.
    pub(crate) fn new(config: &Config) -> Self {
        Self {
            server_address: config.server_address.clone(),
            token_pin: config.token_pin.clone(),
            login_behavior: config.login_behavior,
            cache_pins: config.cache_pins,
            link: Mutex::new(None),
            epochs: AtomicU64::new(0),
            good_pins: Mutex::new(HashMap::new()),
        }
    }

    /// The server address: `P11FWD_SERVER_ADDRESS`, then `p11fwd-server-address`, then
    /// p11-kit-client.so's discovery (`P11_KIT_SERVER_ADDRESS`, `$XDG_RUNTIME_DIR/p11-kit/pkcs11`).
    fn address(&self) -> Result<(PathBuf, String), Error> {
        let explicit = std::env::var(ADDRESS_ENV)
            .ok()
            .filter(|s| !s.is_empty())
            .map(|a| (a, ADDRESS_ENV))
            .or_else(|| {
                self.server_address
                    .clone()
                    .map(|a| (a, "p11fwd-server-address"))
            });
        if let Some((text, origin)) = explicit {
            let address = ServerAddress::parse(&text).map_err(|e| Error::Config {
                key: origin,
                problem: e.to_string(),
            })?;
            let path = address
                .unix_path()
                .ok_or(Error::Unsupported("a server address other than unix:path="))?;
            return Ok((
                path.to_path_buf(),
                format!("{} (from {origin})", path.display()),
            ));
        }
        let found = discovery::discover_from_process().map_err(|e| Error::Config {
            key: "server address",
            problem: e.to_string(),
        })?;
        let path = found
            .address
            .unix_path()
            .ok_or(Error::Unsupported("a server address other than unix:path="))?;
        Ok((path.to_path_buf(), found.to_string()))
    }

    /// The current connection, connecting (or reconnecting) as needed.
    pub(crate) fn link(&self) -> Result<Arc<Link>, Error> {
        let mut slot = lock(&self.link);
        if let Some(link) = slot.as_ref() {
            let conn = link.client.connection();
            if conn.is_inherited() {
                tracing::debug!("connection inherited across fork(); reconnecting");
            } else if conn.is_broken() {
                tracing::debug!("connection broken; reconnecting");
            } else {
                return Ok(Arc::clone(link));
            }
        }
        // Dropping an inherited connection leaves the parent's socket alone (wire's Drop).
        *slot = None;
        let epoch = self.epochs.fetch_add(1, Ordering::Relaxed) + 1;
        let mut link = self.connect(epoch)?;
        // No token at all: maybe one that several processes share was being written when this
        // connection's server process looked (a stock server filters its slots once, through
        // C_GetTokenInfo, which then fails): a new connection looks again.
        for attempt in 1..=TOKEN_INFO_RETRIES {
            if !link.tokens.is_empty() {
                break;
            }
            tracing::debug!(attempt, "no token behind this connection; connecting again");
            link.client.connection().close();
            std::thread::sleep(Duration::from_millis(25 * u64::from(attempt)));
            link = self.connect(epoch)?;
        }
        let link = Arc::new(link);
        *slot = Some(Arc::clone(&link));
        Ok(link)
    }

    fn connect(&self, epoch: u64) -> Result<Link, Error> {
        let (path, shown) = self.address()?;
        let timeout = std::env::var(TIMEOUT_ENV)
            .ok()
            .and_then(|s| s.parse::<u64>().ok())
            .map_or(Duration::from_secs(60), Duration::from_secs);
        let opts = Options {
            timeout,
            ..Options::default()
        };
        let unreachable = |e: p11fwd_wire::Error| Error::ServerUnreachable {
            address: shown.clone(),
            source: std::io::Error::other(e.to_string()),
        };
        // Round trip 1: the version byte, C_Initialize and the slot list in one write (their
        // encoding does not depend on the version the server will answer).
        let (conn, replies) = Connection::connect_with(
            &path,
            opts,
            &[
                req::initialize(None),
                req::get_slot_list(true, OutCap::Buffer(64)),
            ],
        )
        .map_err(unreachable)?;
        let client = Client::new(conn);
        let c = client.connection();
        let mut replies = replies.into_iter();
        let init = replies.next().unwrap_or(Err(p11fwd_wire::Error::Closed));
        parse::unit(init.map_err(unreachable)?).map_err(Error::from)?;
        let slots = match replies.next().unwrap_or(Err(p11fwd_wire::Error::Closed)) {
            Ok(args) => match parse::ulong_output(args)? {
                UlongOutput::Data(v) => v,
                UlongOutput::Size(_) => client.slots(true)?,
            },
            Err(p11fwd_wire::Error::Rv { rv, .. }) if rv.0 == CKR_BUFFER_TOO_SMALL => {
                client.slots(true)?
            }
            Err(e) => return Err(e.into()),
        };
        // Round trip 2: token info, mechanisms and a first session for every slot.
        let speculative = slots.len() <= MAX_SPECULATIVE_SESSIONS;
        let mut tokens = Vec::new();
        let mut pending = slots;
        for attempt in 0..=TOKEN_INFO_RETRIES {
            if pending.is_empty() {
                break;
            }
            if attempt > 0 {
                std::thread::sleep(Duration::from_millis(25 * u64::from(attempt)));
            }
            let mut batch = Vec::new();
            for &slot in &pending {
                batch.push(req::get_token_info(slot));
                batch.push(req::get_mechanism_list(slot, OutCap::Buffer(512)));
                if speculative {
                    batch.push(req::open_session(slot, CKF_SERIAL_SESSION));
                }
            }
            let mut replies = c.call_batch(&batch).into_iter();
            let mut again = Vec::new();
            for &slot in &pending {
                let info = replies.next().unwrap_or(Err(p11fwd_wire::Error::Closed));
                let mechs = replies.next().unwrap_or(Err(p11fwd_wire::Error::Closed));
                let session = if speculative { replies.next() } else { None };
                let info = match info {
                    Ok(args) => TokenInfo::from_args(args).map_err(p11fwd_wire::Error::from)?,
                    // A token that several processes share (SoftHSM behind a stock server,
                    // which forks one process per connection) can fail transiently while
                    // another process writes it: ask again a few times.
                    Err(p11fwd_wire::Error::Rv { rv, .. })
                        if matches!(rv.0, CKR_GENERAL_ERROR | CKR_DEVICE_ERROR)
                            && attempt < TOKEN_INFO_RETRIES =>
                    {
                        tracing::debug!(slot, rv = %rv, attempt, "token info failed; retrying");
                        if let Some(Ok(args)) = session
                            && let Ok(h) = parse::ulong(args)
                        {
                            let _ = c.call_batch(&[req::close_session(h)]);
                        }
                        again.push(slot);
                        continue;
                    }
                    Err(e) if !e.is_fatal() => {
                        tracing::debug!(slot, cause = %e, "skipping slot");
                        continue;
                    }
                    Err(e) => return Err(e.into()),
                };
                let mechanisms = match mechs.and_then(parse::ulong_output) {
                    Ok(UlongOutput::Data(v)) => v,
                    Ok(UlongOutput::Size(_)) => client.mechanisms(slot)?,
                    Err(p11fwd_wire::Error::Rv { rv, .. }) if rv.0 == CKR_BUFFER_TOO_SMALL => {
                        client.mechanisms(slot)?
                    }
                    Err(e) => return Err(e.into()),
                };
                let mut state = TokenState {
                    flags: info.flags,
                    ..TokenState::default()
                };
                if let Some(Ok(args)) = session {
                    state.idle.push(parse::ulong(args)?);
                }
                tracing::debug!(
                    slot,
                    label = %p11fwd_wire::info::unpad(&info.label),
                    mechanisms = mechanisms.len(),
                    "token"
                );
                tokens.push(Arc::new(Token {
                    slot,
                    identity: Token::identity_of(&info),
                    info,
                    mechanisms,
                    state: Mutex::new(state),
                }));
            }
            pending = again;
        }
        tracing::debug!(address = %shown, epoch, tokens = tokens.len(), "connected");
        Ok(Link {
            client,
            epoch,
            tokens,
            round_trips: AtomicU64::new(0),
        })
    }

    /// The configured PIN (`pkcs11-module-token-pin`), read now.
    pub(crate) fn configured_pin(&self) -> Result<Option<Zeroizing<String>>, Error> {
        match &self.token_pin {
            None => Ok(None),
            Some(PinSource::Literal(pin)) => Ok(Some(pin.clone())),
            Some(PinSource::File(path)) => {
                p11fwd_conf::pin::read_pin_file(path)
                    .map(Some)
                    .map_err(|e| Error::Config {
                        key: "pkcs11-module-token-pin",
                        problem: e.to_string(),
                    })
            }
        }
    }

    /// The PIN from the URI (`pin-value`, `pin-source`), else the configuration's, else one
    /// that worked for `token` before in this process. `shown` is the URI for messages.
    pub(crate) fn given_pin(
        &self,
        uri: &p11fwd_conf::uri::Pkcs11Uri,
        shown: &str,
        token: &Token,
    ) -> Result<Option<Zeroizing<String>>, Error> {
        let from_uri = p11fwd_conf::pin::resolve_pin(uri).map_err(|e| Error::UriParse {
            uri: shown.to_owned(),
            problem: e.to_string(),
        })?;
        if let Some(pin) = from_uri {
            return Ok(Some(pin));
        }
        if let Some(pin) = self.configured_pin()? {
            return Ok(Some(pin));
        }
        Ok(self.remembered_pin(token))
    }

    /// The PIN for a user login on `token`, after reading its PIN state again
    /// ([`Link::current_flags`]): none with a PIN pad; `given` (from [`Backend::given_pin`])
    /// unless the token is on its final try; else `prompt` (the application's passphrase
    /// callback and p11fwd's terminal prompt; on the final try the terminal prompt only). A
    /// locked PIN, or one the token wants changed, is never asked for. A PIN that was asked
    /// for is remembered only with `pkcs11-module-cache-pins`.
    pub(crate) fn login_pin(
        &self,
        link: &Link,
        token: &Token,
        given: Option<Zeroizing<String>>,
        prompt: &mut dyn crate::store::PinPrompt,
    ) -> Result<(Option<Zeroizing<String>>, PinFrom), Error> {
        let flags = link.current_flags(token)?;
        if token.protected_path() {
            token.check_pin_state(PinFrom::Typed)?;
            return Ok((None, PinFrom::Typed));
        }
        let final_try = flags & CKF_USER_PIN_FINAL_TRY != 0;
        token.check_pin_state(PinFrom::Typed)?;
        if !final_try && let Some(pin) = given {
            return Ok((Some(pin), PinFrom::Given));
        }
        match prompt.ask(&token.label(), final_try) {
            Some((pin, from)) => {
                token.check_pin_state(from)?;
                if self.cache_pins {
                    self.remember_pin(token, &pin);
                }
                Ok((Some(pin), from))
            }
            // On the final try: why nothing was sent (the error names the state).
            None if final_try => Err(token
                .check_pin_state(PinFrom::Given)
                .err()
                .unwrap_or_else(|| Error::PinRequired(token.label()))),
            None => Err(Error::PinRequired(token.label())),
        }
    }

    /// A PIN that worked for `token` before (configured or cached).
    pub(crate) fn remembered_pin(&self, token: &Token) -> Option<Zeroizing<String>> {
        lock(&self.good_pins).get(token.identity()).cloned()
    }

    /// Remembers a PIN that worked, for later logins on new connections.
    pub(crate) fn remember_pin(&self, token: &Token, pin: &Zeroizing<String>) {
        lock(&self.good_pins).insert(token.identity().to_owned(), pin.clone());
    }
}

impl Token {
    /// Label, manufacturer, model and serial: what identifies the token across connections.
    pub(crate) fn identity(&self) -> &str {
        &self.identity
    }

    fn identity_of(info: &TokenInfo) -> String {
        use p11fwd_wire::info::unpad;
        format!(
            "{}\u{0}{}\u{0}{}\u{0}{}",
            unpad(&info.label),
            unpad(&info.manufacturer_id),
            unpad(&info.model),
            unpad(&info.serial_number)
        )
    }

    /// The label, for messages.
    pub(crate) fn label(&self) -> String {
        p11fwd_wire::info::unpad(&self.info.label)
    }

    /// The token's flags as last read (at connect time, or by [`Link::current_flags`]).
    pub(crate) fn flags(&self) -> u64 {
        lock(&self.state).flags
    }

    /// The token's flags say a login is needed for private objects.
    pub(crate) fn login_required(&self) -> bool {
        self.flags() & CKF_LOGIN_REQUIRED != 0
    }

    /// The PIN is entered on the device (no PIN is ever sent).
    pub(crate) fn protected_path(&self) -> bool {
        self.flags() & CKF_PROTECTED_AUTHENTICATION_PATH != 0
    }

    /// Whether the connection has logged in to this token.
    pub(crate) fn logged_in(&self) -> bool {
        lock(&self.state).logged_in
    }

    /// Whether the token's PIN state (as last read) lets a PIN from `from` be sent: never to a
    /// locked PIN or one that must be changed first (pkcs11-provider refuses those too), and on
    /// the final try only a typed one. Checked before a PIN is asked for as well as before it
    /// is sent.
    pub(crate) fn check_pin_state(&self, from: PinFrom) -> Result<(), Error> {
        let flags = self.flags();
        if flags & CKF_USER_PIN_LOCKED != 0 {
            return Err(Error::PinLocked(self.label()));
        }
        if flags & CKF_USER_PIN_TO_BE_CHANGED != 0 {
            return Err(Error::PinNotSent {
                token: self.label(),
                why: "the token says the user PIN must be changed first \
                      (CKF_USER_PIN_TO_BE_CHANGED); change it with the token's own tools",
            });
        }
        if flags & CKF_USER_PIN_FINAL_TRY != 0 && from == PinFrom::Given {
            return Err(Error::PinNotSent {
                token: self.label(),
                why: "the token says one more wrong PIN locks it (CKF_USER_PIN_FINAL_TRY), so \
                      p11fwd sends no PIN from a URI, the configuration or the application; \
                      log in once with the token's own tools, or type the PIN at p11fwd's \
                      terminal prompt",
            });
        }
        Ok(())
    }

    /// Whether `pin` from `from` may be sent: [`Token::check_pin_state`], and not a PIN this
    /// token rejected before.
    pub(crate) fn check_pin_allowed(
        &self,
        pin: Option<&Zeroizing<String>>,
        from: PinFrom,
    ) -> Result<(), Error> {
        self.check_pin_state(from)?;
        if let Some(pin) = pin
            && lock(rejected_pins()).contains(&pin_digest(self.identity(), pin))
        {
            return Err(Error::PinIncorrect);
        }
        Ok(())
    }

    /// A session from the pool, or a new one (one round trip).
    pub(crate) fn session<'a>(&'a self, link: &Link) -> Result<SessionGuard<'a>, Error> {
        let (idle, to_close) = {
            let mut st = lock(&self.state);
            match st.idle.pop() {
                Some(h) => (Some(h), Vec::new()),
                None => (None, std::mem::take(&mut st.to_close)),
            }
        };
        let handle = match idle {
            Some(h) => h,
            None => {
                // Sessions not kept are closed in the round trip that opens this one.
                let mut batch: Vec<Request> =
                    to_close.iter().map(|&s| req::close_session(s)).collect();
                batch.push(req::open_session(self.slot, CKF_SERIAL_SESSION));
                let opened = link
                    .batch(&batch)
                    .pop()
                    .unwrap_or(Err(p11fwd_wire::Error::Closed));
                parse::ulong(opened?)?
            }
        };
        Ok(SessionGuard {
            token: self,
            handle,
            keep: true,
        })
    }

    pub(crate) fn record_login(
        &self,
        result: &Result<Vec<Arg>, p11fwd_wire::Error>,
        pin: Option<&Zeroizing<String>>,
    ) -> Result<(), Error> {
        let mut st = lock(&self.state);
        match result {
            Ok(_) => {
                st.logged_in = true;
                // By definition these count wrong PINs since the last successful login.
                st.flags &= !(CKF_USER_PIN_COUNT_LOW | CKF_USER_PIN_FINAL_TRY);
                Ok(())
            }
            Err(p11fwd_wire::Error::Rv { rv, .. }) if rv.0 == CKR_USER_ALREADY_LOGGED_IN => {
                st.logged_in = true;
                Ok(())
            }
            Err(p11fwd_wire::Error::Rv { rv, .. }) if rv.0 == CKR_PIN_INCORRECT => {
                if let Some(pin) = pin {
                    let digest = pin_digest(self.identity(), pin);
                    let mut rejected = lock(rejected_pins());
                    if !rejected.contains(&digest) {
                        rejected.push(digest);
                    }
                }
                Err(Error::PinIncorrect)
            }
            Err(p11fwd_wire::Error::Rv { rv, .. }) if rv.0 == CKR_PIN_LOCKED => {
                Err(Error::PinLocked(self.label()))
            }
            Err(e) => Err(Error::from(clone_error(e))),
        }
    }
}

/// A copy of a wire error (they are not `Clone`: `io::Error`).
fn clone_error(e: &p11fwd_wire::Error) -> p11fwd_wire::Error {
    match e {
        p11fwd_wire::Error::Rv { call, rv } => p11fwd_wire::Error::Rv {
            call: *call,
            rv: *rv,
        },
        p11fwd_wire::Error::Closed => p11fwd_wire::Error::Closed,
        p11fwd_wire::Error::Timeout => p11fwd_wire::Error::Timeout,
        other => p11fwd_wire::Error::Io(std::io::Error::other(other.to_string())),
    }
}

impl Link {
    /// Sends `batch` in one write and collects the replies: one round trip.
    pub(crate) fn batch(&self, batch: &[Request]) -> Vec<Result<Vec<Arg>, p11fwd_wire::Error>> {
        tracing::debug!(calls = ?batch.iter().map(|r| r.call.name()).collect::<Vec<_>>(), "round trip");
        self.count_round_trip();
        self.client.connection().call_batch(batch)
    }

    /// Counts a request sent with `client` directly (`batch` counts its own).
    pub(crate) fn count_round_trip(&self) {
        self.round_trips.fetch_add(1, Ordering::Relaxed);
    }

    /// `token`'s flags, read again first (`C_GetTokenInfo`, one round trip) unless they came in
    /// the last reply of this connection: a PIN's state (final try, locked, to be changed) can
    /// change whenever someone else logs in. Called before every automatic user login; the
    /// login right after connecting (the usual key load) costs nothing extra.
    pub(crate) fn current_flags(&self, token: &Token) -> Result<u64, Error> {
        let now = self.round_trips.load(Ordering::Relaxed);
        {
            let st = lock(&token.state);
            if st.flags_at == now {
                return Ok(st.flags);
            }
        }
        let mut attempt = 0;
        let info = loop {
            self.count_round_trip();
            match self.client.get_token_info(token.slot) {
                Ok(info) => break info,
                // A token file shared by several processes, as when connecting.
                Err(p11fwd_wire::Error::Rv { rv, .. })
                    if matches!(rv.0, CKR_GENERAL_ERROR | CKR_DEVICE_ERROR)
                        && attempt < TOKEN_INFO_RETRIES =>
                {
                    attempt += 1;
                    std::thread::sleep(Duration::from_millis(25 * u64::from(attempt)));
                }
                Err(e) => return Err(e.into()),
            }
        };
        tracing::debug!(token = %token.label(), flags = format_args!("{:#x}", info.flags), "token flags read again");
        let mut st = lock(&token.state);
        st.flags = info.flags;
        st.flags_at = self.round_trips.load(Ordering::Relaxed);
        Ok(st.flags)
    }

    /// Logs in to `token` on `session` (one round trip), unless the connection already is.
    pub(crate) fn login(&self, token: &Token, session: u64, auth: &Auth) -> Result<(), Error> {
        let Auth::User(pin, from) = auth else {
            return Ok(());
        };
        if token.logged_in() {
            return Ok(());
        }
        let _one_at_a_time = lock(login_lock());
        if token.logged_in() {
            return Ok(());
        }
        self.current_flags(token)?;
        token.check_pin_allowed(pin.as_ref(), *from)?;
        let r = self
            .batch(&[req::login(
                session,
                CKU_USER,
                pin.as_ref().map(|p| p.as_bytes()),
            )])
            .pop()
            .unwrap_or(Err(p11fwd_wire::Error::Closed));
        token.record_login(&r, pin.as_ref())
    }

    /// Searches `token` with `template`, logging in first in the same round trip when `auth`
    /// asks for it and the connection is not logged in yet. Returns the handles, and the login
    /// error if the login failed (the search then ran without it).
    ///
    /// A login that fails with `CKR_GENERAL_ERROR`/`CKR_DEVICE_ERROR` (never a PIN verdict) is
    /// tried again a few times: a token file shared by several processes (SoftHSM behind a stock
    /// server, which forks per connection) fails like that while another process writes it,
    /// e.g. when prefork workers all log in at once.
    pub(crate) fn find(
        &self,
        token: &Token,
        session: u64,
        template: Vec<Attribute>,
        auth: &Auth,
    ) -> Result<(Vec<u64>, Option<Error>), Error> {
        let mut attempt = 0;
        loop {
            let r = self.find_once(token, session, template.clone(), auth)?;
            let transient = matches!(&r.1, Some(Error::Token { call: "C_Login", rv })
                if rv.contains("CKR_GENERAL_ERROR") || rv.contains("CKR_DEVICE_ERROR"));
            if !transient || attempt >= TOKEN_INFO_RETRIES {
                return Ok(r);
            }
            attempt += 1;
            tracing::debug!(attempt, "login failed transiently; retrying");
            std::thread::sleep(Duration::from_millis(25 * u64::from(attempt)));
        }
    }

    fn find_once(
        &self,
        token: &Token,
        session: u64,
        template: Vec<Attribute>,
        auth: &Auth,
    ) -> Result<(Vec<u64>, Option<Error>), Error> {
        let mut batch = Vec::with_capacity(4);
        let mut login_pin = None;
        let mut login_sent = false;
        let mut login_error = None;
        // Until the login's verdict is recorded (see `login_lock`).
        let _one_at_a_time =
            (matches!(auth, Auth::User(..)) && !token.logged_in()).then(|| lock(login_lock()));
        if let Auth::User(pin, from) = auth
            && !token.logged_in()
        {
            let allowed = self
                .current_flags(token)
                .and_then(|_| token.check_pin_allowed(pin.as_ref(), *from));
            match allowed {
                Ok(()) => {
                    batch.push(req::login(
                        session,
                        CKU_USER,
                        pin.as_ref().map(|p| p.as_bytes()),
                    ));
                    login_pin = pin.as_ref();
                    login_sent = true;
                }
                Err(e) => login_error = Some(e),
            }
        }
        batch.push(req::find_objects_init(session, template));
        batch.push(req::find_objects(session, FIND_BATCH));
        batch.push(req::find_objects_final(session));
        let mut replies = self.batch(&batch).into_iter();
        if login_sent {
            let r = replies.next().unwrap_or(Err(p11fwd_wire::Error::Closed));
            if let Err(e) = token.record_login(&r, login_pin) {
                login_error = Some(e);
            }
        }
        let init = replies.next().unwrap_or(Err(p11fwd_wire::Error::Closed));
        let found = replies.next().unwrap_or(Err(p11fwd_wire::Error::Closed));
        let fin = replies.next().unwrap_or(Err(p11fwd_wire::Error::Closed));
        parse::unit(init?)?;
        let mut handles = match parse::ulong_output(found?)? {
            UlongOutput::Data(v) => v,
            UlongOutput::Size(_) => Vec::new(),
        };
        parse::unit(fin?)?;
        if handles.len() == FIND_BATCH as usize {
            // More than one batch: search again, page by page (rare).
            handles = self.find_all(session, &batch_template(&batch))?;
        }
        Ok((handles, login_error))
    }

    fn find_all(&self, session: u64, template: &[Attribute]) -> Result<Vec<u64>, Error> {
        let c = &self.client;
        self.count_round_trip();
        c.find_objects_init(session, template.to_vec())?;
        let mut all = Vec::new();
        loop {
            let more = c.find_objects(session, FIND_BATCH)?;
            let done = more.len() < FIND_BATCH as usize;
            all.extend(more);
            if done {
                break;
            }
        }
        c.find_objects_final(session)?;
        Ok(all)
    }

    /// Reads [`ATTRS`] of every object in one round trip (plus a retry for any buffer that was
    /// too small).
    pub(crate) fn attributes(
        &self,
        session: u64,
        handles: &[u64],
    ) -> Result<Vec<ObjectAttrs>, Error> {
        self.attributes_and(session, handles, None)
    }

    /// [`Link::attributes`], with `last` sent in the same write (its reply is only logged).
    pub(crate) fn attributes_then(
        &self,
        session: u64,
        handles: &[u64],
        last: Request,
    ) -> Result<Vec<ObjectAttrs>, Error> {
        self.attributes_and(session, handles, Some(last))
    }

    fn attributes_and(
        &self,
        session: u64,
        handles: &[u64],
        last: Option<Request>,
    ) -> Result<Vec<ObjectAttrs>, Error> {
        if handles.is_empty() {
            if let Some(last) = last {
                let _ = self.batch(&[last]);
            }
            return Ok(Vec::new());
        }
        let template = || {
            ATTRS
                .iter()
                .map(|&(ty, buflen)| AttrSlot {
                    ty,
                    buflen,
                    nested: None,
                })
                .collect::<Vec<_>>()
        };
        let mut batch: Vec<Request> = handles
            .iter()
            .map(|&h| req::get_attribute_value(session, h, template()))
            .collect();
        let has_last = last.is_some();
        batch.extend(last);
        let mut replies = self.batch(&batch);
        if has_last && let Some(Err(e)) = replies.pop() {
            tracing::debug!(error = %e, "the call after the attribute reads failed");
        }
        let mut out = Vec::with_capacity(handles.len());
        for (&handle, reply) in handles.iter().zip(replies) {
            let attrs = match reply {
                Ok(args) => parse::attributes(args)?.0,
                // The object went away between the search and the read.
                Err(p11fwd_wire::Error::Rv { rv, .. }) if rv.0 == CKR_OBJECT_HANDLE_INVALID => {
                    continue;
                }
                Err(e) => return Err(e.into()),
            };
            let mut o = ObjectAttrs {
                handle,
                ..ObjectAttrs::default()
            };
            let mut too_small = Vec::new();
            for (a, &(ty, buflen)) in attrs.iter().zip(ATTRS) {
                if a.is_unavailable() {
                    continue;
                }
                if a.native_len().is_some_and(|n| n > buflen) {
                    too_small.push(ty);
                    continue;
                }
                assign(&mut o, ty, a);
            }
            for ty in too_small {
                if let Some(a) = self.attribute_exact(session, handle, ty)? {
                    assign(&mut o, ty, &a);
                }
            }
            out.push(o);
        }
        Ok(out)
    }

    /// Reads `CKA_VALUE` of the certificates among `objects` (one round trip, if any).
    pub(crate) fn certificate_values(
        &self,
        session: u64,
        out: &mut [ObjectAttrs],
    ) -> Result<(), Error> {
        let certs: Vec<usize> = out
            .iter()
            .enumerate()
            .filter(|(_, o)| o.class == Some(CKO_CERTIFICATE))
            .map(|(i, _)| i)
            .collect();
        if !certs.is_empty() {
            let batch: Vec<Request> = certs
                .iter()
                .map(|&i| {
                    req::get_attribute_value(
                        session,
                        out[i].handle,
                        vec![AttrSlot {
                            ty: CKA_VALUE,
                            buflen: CERT_VALUE_BUF,
                            nested: None,
                        }],
                    )
                })
                .collect();
            let replies = self.batch(&batch);
            for (&i, reply) in certs.iter().zip(replies) {
                let Ok(args) = reply else { continue };
                let (attrs, _) = parse::attributes(args)?;
                match attrs.first() {
                    Some(a) if a.native_len().is_some_and(|n| n > CERT_VALUE_BUF) => {
                        let handle = out[i].handle;
                        if let Some(a) = self.attribute_exact(session, handle, CKA_VALUE)? {
                            out[i].value = a.as_bytes().map(<[u8]>::to_vec);
                        }
                    }
                    Some(a) => out[i].value = a.as_bytes().map(<[u8]>::to_vec),
                    None => {}
                }
            }
        }
        Ok(())
    }

    /// One attribute, with a size query first (for values larger than the generous buffers).
    fn attribute_exact(
        &self,
        session: u64,
        handle: u64,
        ty: u64,
    ) -> Result<Option<Attribute>, Error> {
        self.count_round_trip();
        let query = self.client.get_attribute_value(
            session,
            handle,
            vec![AttrSlot {
                ty,
                buflen: 0,
                nested: None,
            }],
        )?;
        let Some(len) = query.0.first().and_then(Attribute::native_len) else {
            return Ok(None);
        };
        let (attrs, _) = self.client.get_attribute_value(
            session,
            handle,
            vec![AttrSlot {
                ty,
                buflen: len,
                nested: None,
            }],
        )?;
        Ok(attrs.into_iter().next().filter(|a| !a.is_unavailable()))
    }
}

fn batch_template(batch: &[Request]) -> Vec<Attribute> {
    batch
        .iter()
        .find(|r| r.call == CallId::FindObjectsInit)
        .and_then(|r| {
            r.args.iter().find_map(|a| match a {
                Arg::Attributes(t) => Some(t.clone()),
                _ => None,
            })
        })
        .unwrap_or_default()
}

fn assign(o: &mut ObjectAttrs, ty: u64, a: &Attribute) {
    let bytes = || a.as_bytes().map(<[u8]>::to_vec);
    match ty {
        CKA_CLASS => o.class = a.as_ulong(),
        CKA_KEY_TYPE => o.key_type = a.as_ulong(),
        CKA_ID => o.id = bytes(),
        CKA_LABEL => o.label = bytes(),
        CKA_ALWAYS_AUTHENTICATE => o.always_authenticate = a.as_bool().unwrap_or(false),
        CKA_ALLOWED_MECHANISMS => {
            o.allowed_mechanisms = match a.value() {
                Some(Value::Mechanisms(m)) => Some(m.clone()),
                Some(Value::Bytes(Some(b))) => Some(
                    b.chunks_exact(8)
                        .map(|c| u64::from_le_bytes(c.try_into().unwrap_or_default()))
                        .collect(),
                ),
                _ => None,
            }
        }
        CKA_MODULUS => o.modulus = bytes(),
        CKA_PUBLIC_EXPONENT => o.public_exponent = bytes(),
        CKA_EC_PARAMS => o.ec_params = bytes(),
        CKA_EC_POINT => o.ec_point = bytes(),
        CKA_CERTIFICATE_TYPE => o.certificate_type = a.as_ulong(),
        CKA_SUBJECT => o.subject = bytes(),
        CKA_ISSUER => o.issuer = bytes(),
        CKA_SERIAL_NUMBER => o.serial = bytes(),
        CKA_VALUE => o.value = bytes(),
        _ => {}
    }
}

impl From<p11fwd_wire::Error> for Error {
    fn from(e: p11fwd_wire::Error) -> Self {
        match e {
            p11fwd_wire::Error::Rv { call, rv } => Self::Token {
                call: call.name(),
                rv: rv.to_string(),
            },
            p11fwd_wire::Error::Unsupported { what, .. } => Self::Unsupported(what),
            p11fwd_wire::Error::Protocol(p) => Self::Protocol(p.to_string()),
            p11fwd_wire::Error::Invalid(what) => Self::Unsupported(what),
            other => Self::Connection(other.to_string()),
        }
    }
}
