//! Decoding pkcs11-provider's URI-PEM key files (`-----BEGIN PKCS#11 PROVIDER URI-----`), so
//! that code which only loads keys from files (`PEM_read_bio_PrivateKey`,
//! `SSL_CTX_use_PrivateKey_file`, curl 7.88's `--key`) reaches token keys.
//!
//! Two decoders, as in pkcs11-provider: `DER` (`input=pem`) turns the PEM block into its DER
//! body with data structure `pk11-uri`; one per key type (`input=der,structure=pk11-uri`)
//! reads the URI from the DER, searches the token with the `pkcs11` store and hands OpenSSL a
//! key reference of that type. OpenSSL tries the key-type decoders one after the other, so the
//! search is done once per URI and shared for a short while ([`cached_search`]).

use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use p11fwd_conf::uripem;

use crate::error::Error;
use crate::ffi::cast::{Castable, OwnershipBox};
use crate::key::registry;
use crate::provider::ProvCtx;
use crate::store::{Expect, Found, PinPrompt, StoreCtx};

/// How long a URI-PEM search is reused by the other key-type decoders.
const CACHE_FOR: Duration = Duration::from_secs(10);

/// A decoder context (both kinds).
#[derive(Debug)]
pub(crate) struct DecoderCtx {
    pub(crate) provctx: Arc<ProvCtx>,
}

impl Castable for DecoderCtx {
    type Ownership = OwnershipBox;
    const WHAT: &'static str = "decoder ctx";
}

/// What the PEM decoder found.
#[derive(Debug)]
pub(crate) enum PemOutcome {
    /// A URI-PEM block: its DER body.
    UriPem(Vec<u8>),
    /// Something else (another PEM type, not PEM): other decoders' business.
    NotOurs,
}

/// Reads the first PEM block from `next_line` (which yields lines, empty at the end) and
/// returns its DER body if it is a URI-PEM block. Stops reading at the block's END line.
pub(crate) fn read_pem(
    mut next_line: impl FnMut() -> Result<Vec<u8>, Error>,
) -> Result<PemOutcome, Error> {
    let mut text = String::new();
    let mut label: Option<String> = None;
    for _ in 0..10_000 {
        let line = next_line()?;
        if line.is_empty() {
            return Ok(PemOutcome::NotOurs);
        }
        let Ok(line) = String::from_utf8(line) else {
            return Ok(PemOutcome::NotOurs);
        };
        let trimmed = line.trim();
        match &label {
            None => {
                if let Some(l) = trimmed
                    .strip_prefix("-----BEGIN ")
                    .and_then(|r| r.strip_suffix("-----"))
                {
                    if l != uripem::PEM_LABEL {
                        return Ok(PemOutcome::NotOurs);
                    }
                    label = Some(l.to_owned());
                    text.push_str(trimmed);
                    text.push('\n');
                }
            }
            Some(_) => {
                text.push_str(trimmed);
                text.push('\n');
                if trimmed.starts_with("-----END ") {
                    return match uripem::pem_block_der(&text) {
                        Ok(der) => Ok(PemOutcome::UriPem(der)),
                        Err(e) => Err(Error::UriParse {
                            uri: String::new(),
                            problem: format!("URI-PEM file: {e}"),
                        }),
                    };
                }
            }
        }
    }
    Ok(PemOutcome::NotOurs)
}

/// A key found for a URI-PEM file.
#[derive(Debug, Clone)]
pub(crate) struct FoundKey {
    pub(crate) reference: [u8; 16],
    pub(crate) data_type: &'static std::ffi::CStr,
    pub(crate) description: std::ffi::CString,
}

#[derive(Debug)]
struct CachedSearch {
    provctx: usize,
    uri: String,
    at: Instant,
    keys: Vec<FoundKey>,
    numbers: Vec<u64>,
}

fn cache() -> &'static Mutex<Vec<CachedSearch>> {
    static CACHE: OnceLock<Mutex<Vec<CachedSearch>>> = OnceLock::new();
    CACHE.get_or_init(|| Mutex::new(Vec::new()))
}

fn drop_entries(keep: impl Fn(&CachedSearch) -> bool) {
    let mut c = cache()
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    c.retain(|e| {
        let k = keep(e);
        if !k {
            for n in &e.numbers {
                registry::unregister(*n);
            }
        }
        k
    });
}

/// Forgets the cached searches of a provider instance (at its teardown).
pub(crate) fn forget(provctx: &ProvCtx) {
    let me = std::ptr::from_ref(provctx) as usize;
    drop_entries(|e| e.provctx != me);
}

/// The keys `uri` names, searched once and shared by the key-type decoders for a few seconds.
fn cached_search(
    provctx: &Arc<ProvCtx>,
    uri: &str,
    prompt: &mut dyn PinPrompt,
) -> Result<Vec<FoundKey>, Error> {
    let me = Arc::as_ptr(provctx) as usize;
    drop_entries(|e| e.at.elapsed() < CACHE_FOR);
    {
        let c = cache()
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if let Some(e) = c.iter().find(|e| e.provctx == me && e.uri == uri) {
            return Ok(e.keys.clone());
        }
    }
    let mut store = StoreCtx::open(Arc::clone(provctx), uri)?;
    store.set_expect(Expect::PrivateKey);
    let found = store.all(prompt)?;
    let mut keys = Vec::new();
    let mut numbers = Vec::new();
    for f in found {
        if let Found::Key {
            number,
            reference,
            data_type,
            description,
        } = f
        {
            numbers.push(number);
            keys.push(FoundKey {
                reference,
                data_type,
                description,
            });
        }
    }
    cache()
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
        .push(CachedSearch {
            provctx: me,
            uri: uri.to_owned(),
            at: Instant::now(),
            keys: keys.clone(),
            numbers,
        });
    Ok(keys)
}

/// The key-type decoder: the key of type `desired` that the URI in `der` names, if any.
pub(crate) fn key_for_der(
    provctx: &Arc<ProvCtx>,
    der: &[u8],
    desired: &std::ffi::CStr,
    prompt: &mut dyn PinPrompt,
) -> Result<Option<FoundKey>, Error> {
    let uri = uripem::decode_der(der).map_err(|e| Error::UriParse {
        uri: String::new(),
        problem: format!("URI-PEM file: {e}"),
    })?;
    let keys = cached_search(provctx, &uri, prompt)?;
    Ok(keys.into_iter().find(|k| k.data_type == desired))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lines(text: &str) -> impl FnMut() -> Result<Vec<u8>, Error> + '_ {
        let mut it = text.split_inclusive('\n');
        move || Ok(it.next().map(|l| l.as_bytes().to_vec()).unwrap_or_default())
    }

    #[test]
    fn reads_only_uri_pem_blocks() {
        let uri = "pkcs11:token=t;object=k;type=private";
        let pem = uripem::encode_pem(uri);
        match read_pem(lines(&format!("junk\n{pem}-----BEGIN X-----\n"))).unwrap() {
            PemOutcome::UriPem(der) => assert_eq!(uripem::decode_der(&der).unwrap(), uri),
            PemOutcome::NotOurs => panic!("not found"),
        }
        assert!(matches!(
            read_pem(lines(
                "-----BEGIN PRIVATE KEY-----\nMAA=\n-----END PRIVATE KEY-----\n"
            ))
            .unwrap(),
            PemOutcome::NotOurs
        ));
        assert!(matches!(read_pem(lines("")).unwrap(), PemOutcome::NotOurs));
    }
}
