//! The `pkcs11` STORE: resolves an RFC 7512 URI against the tokens behind the server.
//!
//! One search per store context, on the first `load`: match tokens (token, manufacturer, model,
//! serial, slot-id), log in when private keys are wanted (pipelined with the search), find the
//! objects by label/id/class (and the store's subject/alias), read their attributes in one
//! request, pair each key with its public key object and certificate (same CKA_ID), and queue
//! the results: keys as references into [`crate::key::registry`], certificates as DER.
//!
//! The PIN comes from, in order: the URI (`pin-value`, `pin-source`), the configuration
//! (`pkcs11-module-token-pin`), a PIN remembered from an earlier login of this process, then
//! the [`PinPrompt`] the C side builds from the application's passphrase callback and OpenSSL's
//! UI. No PIN is asked for when the token has a protected authentication path.

use std::collections::VecDeque;
use std::ffi::{CStr, CString};
use std::sync::Arc;

use p11fwd_conf::uri::{ObjectClass, Pkcs11Uri, TokenView};
use p11fwd_wire::Attribute;
use p11fwd_wire::consts::*;
use zeroize::Zeroizing;

use crate::backend::{Auth, Link, ObjectAttrs, PinFrom, Token};
use crate::config::LoginBehavior;
use crate::error::Error;
use crate::ffi::cast::{Castable, OwnershipBox};
use crate::key::{self, Key, Parts, registry};
use crate::provider::ProvCtx;

/// What the application expects (`OSSL_STORE_PARAM_EXPECT`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Expect {
    PrivateKey,
    PublicKey,
    Certificate,
    /// Something we never have (CRLs, names, parameters).
    Other,
}

/// Asks the application or the user for a PIN.
pub(crate) trait PinPrompt {
    /// The PIN for the token labelled `token`, and where it came from, or `None`. On the
    /// token's `final_try` only a PIN typed at p11fwd's own prompt.
    fn ask(&mut self, token: &str, final_try: bool) -> Option<(Zeroizing<String>, PinFrom)>;
}

/// One object found.
#[derive(Debug)]
pub(crate) enum Found {
    /// A key, registered; `number` is its registry entry.
    Key {
        number: u64,
        reference: [u8; 16],
        data_type: &'static CStr,
        description: CString,
    },
    /// A certificate's DER.
    Certificate { der: Vec<u8>, description: CString },
}

/// A `pkcs11` store context.
#[derive(Debug)]
pub(crate) struct StoreCtx {
    provctx: Arc<ProvCtx>,
    uri: Pkcs11Uri,
    /// The URI without its PIN, for messages.
    shown: String,
    expect: Option<Expect>,
    subject: Option<Vec<u8>>,
    alias: Option<String>,
    results: Option<VecDeque<Found>>,
    registered: Vec<u64>,
    failed: bool,
}

impl Castable for StoreCtx {
    type Ownership = OwnershipBox;
    const WHAT: &'static str = "store ctx";
}

impl Drop for StoreCtx {
    fn drop(&mut self) {
        for n in self.registered.drain(..) {
            registry::unregister(n);
        }
    }
}

impl StoreCtx {
    /// `OSSL_FUNC_store_open`: parses the URI; nothing is searched yet.
    pub(crate) fn open(provctx: Arc<ProvCtx>, text: &str) -> Result<Self, Error> {
        let uri = Pkcs11Uri::parse(text).map_err(|e| Error::UriParse {
            uri: redact(text),
            problem: e.to_string(),
        })?;
        let shown = uri.to_string_without_pin();
        Ok(Self {
            provctx,
            uri,
            shown,
            expect: None,
            subject: None,
            alias: None,
            results: None,
            registered: Vec::new(),
            failed: false,
        })
    }

    pub(crate) fn set_expect(&mut self, expect: Expect) {
        self.expect = Some(expect);
    }

    pub(crate) fn set_subject(&mut self, subject: &[u8]) {
        self.subject = Some(subject.to_vec());
    }

    pub(crate) fn set_alias(&mut self, alias: &str) {
        self.alias = Some(alias.to_owned());
    }

    /// Everything the search finds, at once; the keys stay registered after this context is
    /// dropped (the caller owns the registrations: the numbers in [`Found::Key`]).
    pub(crate) fn all(mut self, prompt: &mut dyn PinPrompt) -> Result<Vec<Found>, Error> {
        let mut out = Vec::new();
        while let Some(found) = self.next(prompt)? {
            out.push(found);
        }
        self.registered.clear();
        Ok(out)
    }

    /// `OSSL_FUNC_store_eof`.
    pub(crate) fn eof(&self) -> bool {
        self.failed || self.results.as_ref().is_some_and(VecDeque::is_empty)
    }

    /// The next object, searching first if this is the first call. After an error the context
    /// reports end-of-file, so callers that loop on `eof` stop.
    pub(crate) fn next(&mut self, prompt: &mut dyn PinPrompt) -> Result<Option<Found>, Error> {
        if self.results.is_none() {
            match self.search(prompt) {
                Ok(found) => self.results = Some(found),
                Err(e) => {
                    self.failed = true;
                    return Err(e);
                }
            }
        }
        Ok(self.results.as_mut().and_then(VecDeque::pop_front))
    }

    fn wanted(&self) -> Vec<ObjectClass> {
        if let Some(class) = self.uri.object_type() {
            return vec![class];
        }
        match self.expect {
            Some(Expect::PrivateKey) => vec![ObjectClass::PrivateKey],
            Some(Expect::PublicKey) => vec![ObjectClass::PublicKey],
            Some(Expect::Certificate) => vec![ObjectClass::Certificate],
            Some(Expect::Other) => vec![],
            None => vec![
                ObjectClass::Certificate,
                ObjectClass::PublicKey,
                ObjectClass::PrivateKey,
            ],
        }
    }

    fn search(&mut self, prompt: &mut dyn PinPrompt) -> Result<VecDeque<Found>, Error> {
        let wanted = self.wanted();
        if wanted.is_empty() {
            return Ok(VecDeque::new());
        }
        let backend = self.provctx.backend();
        let link = backend.link()?;
        let mut tokens: Vec<Arc<Token>> = link
            .tokens
            .iter()
            .filter(|t| self.token_matches(&link, t))
            .cloned()
            .collect();
        // A PIN goes to one token only: with several candidates, first find (without a login)
        // which of them holds the object.
        if tokens
            .iter()
            .filter(|t| self.login_needed(t, &wanted))
            .count()
            > 1
        {
            tokens = self.narrow_before_login(&link, tokens, &wanted)?;
        }
        let mut out = VecDeque::new();
        let mut private_candidates: Vec<String> = Vec::new();
        let mut first_error = None;
        for token in &tokens {
            match self.search_token(&link, token, &wanted, prompt) {
                Ok((found, candidates)) => {
                    out.extend(found);
                    private_candidates.extend(candidates);
                }
                Err(e) => {
                    tracing::debug!(token = %token.label(), error = %e, "search failed");
                    first_error.get_or_insert(e);
                }
            }
        }
        if self.expect == Some(Expect::PrivateKey) && private_candidates.len() > 1 {
            for f in &out {
                if let Found::Key { number, .. } = f {
                    registry::unregister(*number);
                }
            }
            return Err(Error::SeveralMatches {
                uri: self.shown.clone(),
                count: private_candidates.len(),
                candidates: private_candidates.join("  "),
            });
        }
        if out.is_empty() {
            if let Some(e) = first_error {
                return Err(e);
            }
            let what = match wanted.as_slice() {
                [ObjectClass::PrivateKey] => "private key",
                [ObjectClass::PublicKey] => "public key",
                [ObjectClass::Certificate] => "certificate",
                _ => "object",
            };
            return Err(Error::NoMatch(format!(
                "{} (no {what} found on {} matching token{})",
                self.shown,
                tokens.len(),
                if tokens.len() == 1 { "" } else { "s" }
            )));
        }
        Ok(out)
    }

    fn token_matches(&self, link: &Link, token: &Token) -> bool {
        let view = TokenView {
            label: &token.info.label,
            manufacturer: &token.info.manufacturer_id,
            model: &token.info.model,
            serial: &token.info.serial_number,
        };
        if !self.uri.matches_token(&view) {
            return false;
        }
        if self.uri.slot_id().is_some_and(|id| id != token.slot) {
            return false;
        }
        if self.uri.slot_description().is_some() || self.uri.slot_manufacturer().is_some() {
            link.count_round_trip();
            let Ok(info) = link.client.get_slot_info(token.slot) else {
                return false;
            };
            let view = p11fwd_conf::uri::SlotView {
                id: token.slot,
                description: &info.slot_description,
                manufacturer: &info.manufacturer_id,
            };
            if !self.uri.matches_slot(&view) {
                return false;
            }
        }
        if self.uri.has_library_attributes() {
            link.count_round_trip();
            let Ok(info) = link.client.get_info() else {
                return false;
            };
            let view = p11fwd_conf::uri::LibraryView {
                manufacturer: &info.manufacturer_id,
                description: &info.library_description,
                version: (info.library_version.major, info.library_version.minor),
            };
            if !self.uri.matches_library(&view) {
                return false;
            }
        }
        true
    }

    /// How to log in to `token`: the PIN in the documented order (`Backend::login_pin`).
    fn auth(&self, link: &Link, token: &Token, prompt: &mut dyn PinPrompt) -> Result<Auth, Error> {
        let given = self.pin_without_prompt(token)?;
        let (pin, from) = self
            .provctx
            .backend()
            .login_pin(link, token, given, prompt)?;
        Ok(Auth::User(pin, from))
    }

    /// The PIN from the URI, the configuration or an earlier login.
    fn pin_without_prompt(&self, token: &Token) -> Result<Option<Zeroizing<String>>, Error> {
        self.provctx
            .backend()
            .given_pin(&self.uri, &self.shown, token)
    }

    fn template(&self, class: Option<ObjectClass>) -> Vec<Attribute> {
        let mut t = Vec::new();
        if let Some(class) = class {
            t.push(Attribute::ulong(CKA_CLASS, class.ck_value()));
        }
        if let Some(label) = self.uri.object().or(self.alias.as_deref()) {
            t.push(Attribute::bytes(CKA_LABEL, label.as_bytes().to_vec()));
        }
        if let Some(id) = self.uri.id() {
            t.push(Attribute::bytes(CKA_ID, id.to_vec()));
        }
        if let Some(subject) = &self.subject {
            t.push(Attribute::bytes(CKA_SUBJECT, subject.clone()));
        }
        t
    }

    /// Whether the URI (or the store's alias) names an object: a label or an id.
    fn names_object(&self) -> bool {
        self.uri.object().is_some() || self.uri.id().is_some() || self.alias.is_some()
    }

    /// Whether searching `token` for `wanted` would log in with a PIN.
    fn login_needed(&self, token: &Token, wanted: &[ObjectClass]) -> bool {
        let behavior = self.provctx.backend().login_behavior;
        let wants_private = wanted.contains(&ObjectClass::PrivateKey);
        behavior != LoginBehavior::Never
            && !token.logged_in()
            && !token.protected_path()
            && (behavior == LoginBehavior::Always || (wants_private && token.login_required()))
    }

    /// Of several tokens a PIN would be sent to, those that show an object matching the URI
    /// (a public key or certificate of the key) without a login; an error rather than a PIN
    /// sent to several tokens (each wrong PIN counts towards a token's lock-out).
    fn narrow_before_login(
        &self,
        link: &Arc<Link>,
        tokens: Vec<Arc<Token>>,
        wanted: &[ObjectClass],
    ) -> Result<Vec<Arc<Token>>, Error> {
        let mut holders = Vec::new();
        let mut others = Vec::new();
        for token in tokens {
            if !self.login_needed(&token, wanted) {
                others.push(token);
                continue;
            }
            // A token that cannot be searched (not initialised, say) holds nothing.
            let shows = token.session(link).and_then(|session| {
                link.find(&token, session.handle, self.template(None), &Auth::None)
                    .map(|(handles, _)| !handles.is_empty())
            });
            let shows = shows.unwrap_or_else(|e| {
                tracing::debug!(token = %token.label(), error = %e, "cannot search before logging in");
                false
            });
            if shows {
                holders.push(token);
            }
        }
        match holders.len() {
            1 => {
                others.extend(holders);
                Ok(others)
            }
            0 if !others.is_empty() => Ok(others),
            n => Err(Error::NoMatch(format!(
                "{} on one token: {} matching tokens would need a PIN and {n} of them show a \
                 matching object before logging in; add token= (or serial=) to the URI so that \
                 the PIN goes to one token only",
                self.shown,
                self.tokens_needing_login(link, wanted),
            ))),
        }
    }

    fn tokens_needing_login(&self, link: &Link, wanted: &[ObjectClass]) -> usize {
        link.tokens
            .iter()
            .filter(|t| self.token_matches(link, t) && self.login_needed(t, wanted))
            .count()
    }

    /// Searches one token: returns what to hand out and the URIs of the private keys found.
    fn search_token(
        &mut self,
        link: &Arc<Link>,
        token: &Arc<Token>,
        wanted: &[ObjectClass],
        prompt: &mut dyn PinPrompt,
    ) -> Result<(Vec<Found>, Vec<String>), Error> {
        let backend = self.provctx.backend();
        let wants_private = wanted.contains(&ObjectClass::PrivateKey);
        let behavior = backend.login_behavior;
        let login_now = behavior != LoginBehavior::Never
            && !token.logged_in()
            && (behavior == LoginBehavior::Always || (wants_private && token.login_required()));
        let mut pin_used = None;
        let auth = if login_now {
            match self.auth(link, token, prompt) {
                Ok(auth) => {
                    if let Auth::User(pin, _) = &auth {
                        pin_used.clone_from(pin);
                    }
                    auth
                }
                // Everything was asked for: list what is visible without a login.
                Err(Error::PinRequired(_)) if wanted.len() > 1 => Auth::None,
                Err(e) => return Err(e),
            }
        } else {
            Auth::None
        };
        // One class only when it is all we want and the URI names no object: otherwise take
        // every class, so a key's public key and certificate come in the same reply.
        let class = match wanted {
            // Every class when the URI names the key: its certificate (or private key) stands
            // in for a missing public-key object.
            [ObjectClass::PublicKey] if self.names_object() => None,
            [c] if *c != ObjectClass::PrivateKey => Some(*c),
            [c] if self.uri.object().is_none() && self.uri.id().is_none() => Some(*c),
            _ => None,
        };
        let session = token.session(link)?;
        let (mut handles, login_error) =
            link.find(token, session.handle, self.template(class), &auth)?;
        if let Some(e) = login_error {
            if wants_private && wanted.len() == 1 {
                return Err(e);
            }
            tracing::debug!(error = %e, "login failed; listing public objects");
        } else if let (Auth::User(_, PinFrom::Given), Some(pin)) = (&auth, &pin_used)
            && self.pin_without_prompt(token).ok().flatten().is_some()
        {
            // A configured PIN that worked: kept for logins on later connections (fork).
            backend.remember_pin(token, pin);
        }
        // login-behavior=auto: public objects may need a login on some tokens.
        if handles.is_empty()
            && behavior == LoginBehavior::Auto
            && !wants_private
            && token.login_required()
            && !token.logged_in()
            && let Ok(auth) = self.auth(link, token, prompt)
        {
            let (again, err) = link.find(token, session.handle, self.template(class), &auth)?;
            if let Some(e) = err {
                return Err(e);
            }
            handles = again;
        }
        let mut objects = link.attributes(session.handle, &handles)?;
        // A key whose public part we need but did not get: look for its public key object and
        // certificate by CKA_ID (one more round trip, only in that case).
        let needs_companion = objects.iter().any(|o| {
            o.class == Some(CKO_PRIVATE_KEY)
                && o.key_type != Some(CKK_RSA)
                && !objects.iter().any(|p| {
                    p.handle != o.handle
                        && matches!(p.class, Some(CKO_PUBLIC_KEY | CKO_CERTIFICATE))
                        && p.id == o.id
                })
        });
        if needs_companion {
            let ids: Vec<Vec<u8>> = objects
                .iter()
                .filter(|o| o.class == Some(CKO_PRIVATE_KEY))
                .filter_map(|o| o.id.clone())
                .collect();
            for id in ids {
                let t = vec![Attribute::bytes(CKA_ID, id)];
                let (more, _) = link.find(token, session.handle, t, &Auth::None)?;
                let more: Vec<u64> = more.into_iter().filter(|h| !handles.contains(h)).collect();
                handles.extend(&more);
                objects.extend(link.attributes(session.handle, &more)?);
            }
        }
        // Certificate bodies: when certificates were asked for, or are the only source of a
        // key's public part.
        let key_without_public = objects.iter().any(|o| {
            o.class == Some(CKO_PRIVATE_KEY)
                && o.key_type != Some(CKK_RSA)
                && !objects.iter().any(|p| {
                    p.class == Some(CKO_PUBLIC_KEY) && p.id == o.id && p.ec_point.is_some()
                })
        });
        // Public keys asked for, and a certificate without a public-key object of its id.
        let public_from_cert = wanted == [ObjectClass::PublicKey]
            && self.names_object()
            && objects.iter().any(|c| {
                c.class == Some(CKO_CERTIFICATE)
                    && !objects
                        .iter()
                        .any(|p| p.class == Some(CKO_PUBLIC_KEY) && p.id == c.id)
            });
        if wanted.contains(&ObjectClass::Certificate) || key_without_public || public_from_cert {
            link.certificate_values(session.handle, &mut objects)?;
        }
        drop(session);
        self.collect(link, token, wanted, &objects, pin_used)
    }

    fn collect(
        &mut self,
        link: &Link,
        token: &Token,
        wanted: &[ObjectClass],
        objects: &[ObjectAttrs],
        pin: Option<Zeroizing<String>>,
    ) -> Result<(Vec<Found>, Vec<String>), Error> {
        let of_class = |c: u64| objects.iter().filter(move |o| o.class == Some(c));
        let companion = |o: &ObjectAttrs, class: u64| {
            objects
                .iter()
                .filter(|p| p.class == Some(class) && p.handle != o.handle)
                .find(|p| match (&o.id, &p.id) {
                    (Some(a), Some(b)) if !a.is_empty() => a == b,
                    _ => o.label.is_some() && o.label == p.label,
                })
        };
        let subject_ok = |o: &ObjectAttrs| match &self.subject {
            Some(s) => o.subject.as_ref() == Some(s),
            None => true,
        };
        let mut found = Vec::new();
        let mut private_uris = Vec::new();
        if wanted.contains(&ObjectClass::Certificate) {
            for c in of_class(CKO_CERTIFICATE).filter(|c| subject_ok(c)) {
                let Some(der) = c.value.clone() else { continue };
                let description = desc(&key::object_uri(token, c, ObjectClass::Certificate)?);
                found.push(Found::Certificate { der, description });
            }
        }
        if wanted.contains(&ObjectClass::PublicKey) {
            let mut seen_ids = Vec::new();
            for p in of_class(CKO_PUBLIC_KEY) {
                let parts = Parts {
                    private: None,
                    public: Some(p),
                    cert: companion(p, CKO_CERTIFICATE),
                };
                match Key::build(&self.provctx, link, token, &parts, false) {
                    Ok(key) => {
                        seen_ids.push(p.id.clone());
                        found.push(self.register(key));
                    }
                    Err(e) => tracing::debug!(error = %e, "skipping public key"),
                }
            }
            // Private keys without a public key object give their public part (only when
            // public keys are what was asked for).
            if wanted == [ObjectClass::PublicKey] {
                for k in of_class(CKO_PRIVATE_KEY) {
                    if seen_ids.contains(&k.id) {
                        continue;
                    }
                    let parts = Parts {
                        private: Some(k),
                        public: companion(k, CKO_PUBLIC_KEY),
                        cert: companion(k, CKO_CERTIFICATE),
                    };
                    if let Ok(key) = Key::build(&self.provctx, link, token, &parts, true) {
                        seen_ids.push(k.id.clone());
                        found.push(self.register(key.public_only()));
                    }
                }
                // Certificates whose key has neither a public-key object nor a private key
                // visible here give theirs, when the URI names that key (not when listing: a
                // CA certificate on the token is no key of the token).
                for c in of_class(CKO_CERTIFICATE) {
                    if seen_ids.contains(&c.id) || !self.names_object() {
                        continue;
                    }
                    match Key::from_certificate_object(&self.provctx, token, c) {
                        Ok(key) => {
                            seen_ids.push(c.id.clone());
                            found.push(self.register(key));
                        }
                        Err(e) => tracing::debug!(error = %e, "skipping a certificate's key"),
                    }
                }
            }
        }
        if wanted.contains(&ObjectClass::PrivateKey) {
            for k in of_class(CKO_PRIVATE_KEY) {
                let parts = Parts {
                    private: Some(k),
                    public: companion(k, CKO_PUBLIC_KEY),
                    cert: companion(k, CKO_CERTIFICATE),
                };
                match Key::build(&self.provctx, link, token, &parts, true) {
                    Ok(key) => {
                        if key.always_authenticate {
                            // The PIN of this search, or (the token was logged in already) the
                            // one the URI, the configuration or an earlier login gives.
                            let auth_pin = match &pin {
                                Some(p) => Some(p.clone()),
                                None => self.pin_without_prompt(token).ok().flatten(),
                            };
                            *key.auth_pin
                                .lock()
                                .unwrap_or_else(std::sync::PoisonError::into_inner) = auth_pin;
                        }
                        private_uris.push(key.uri.clone());
                        found.push(self.register(key));
                    }
                    Err(e) => {
                        tracing::debug!(error = %e, "skipping private key");
                        if wanted == [ObjectClass::PrivateKey] {
                            return Err(e);
                        }
                    }
                }
            }
        }
        Ok((found, private_uris))
    }

    fn register(&mut self, key: Key) -> Found {
        let data_type = key.kind.name();
        let description = desc(&key.uri);
        let (number, reference) = registry::register(Arc::new(key));
        self.registered.push(number);
        Found::Key {
            number,
            reference,
            data_type,
            description,
        }
    }
}

fn desc(uri: &str) -> CString {
    CString::new(uri.replace('\0', "")).unwrap_or_default()
}

/// The URI with any `pin-value` removed, for error messages about URIs that do not parse.
fn redact(text: &str) -> String {
    text.split([';', '?', '&'])
        .map(|part| {
            if part.trim_start().starts_with("pin-value=") {
                "pin-value=***"
            } else {
                part
            }
        })
        .collect::<Vec<_>>()
        .join(";")
}
