//! `p11fwd list [URI]`: the tokens and objects behind a p11-kit compatible socket, each with
//! the exact `pkcs11:` URI that selects it (like `p11tool --list-all` or `pkcs11-tool -O`).
//!
//! Talks to the socket with `wire`'s typed client, so it works with `p11fwd server` and with a
//! stock `p11-kit server` of any generation. Public objects are listed without logging in; a PIN
//! (from the URI, `--pin-source`, or a prompt with `--login`) adds the private ones.

use std::fmt::Write as _;
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{Context, anyhow, bail};
use p11fwd_conf::Zeroizing;
use p11fwd_conf::discovery::{self, ServerAddress};
use p11fwd_conf::{ObjectClass, ObjectView, Pkcs11Uri, TokenView};
use p11fwd_wire::client::{Client, parse, req};
use p11fwd_wire::consts::*;
use p11fwd_wire::info::{TokenInfo, unpad};
use p11fwd_wire::transport::blocking::Options;
use p11fwd_wire::value::AttrSlot;
use p11fwd_wire::{Attribute, Rv};

/// Arguments of `p11fwd list`.
#[derive(Debug, clap::Args)]
pub struct ListArgs {
    /// Only tokens and objects matching this pkcs11: URI (its pin-value or pin-source logs in).
    pub uri: Option<String>,
    /// The server's address (`unix:path=/path` or a socket path). Default: as p11-kit-client.so
    /// finds it (P11_KIT_SERVER_ADDRESS, else $XDG_RUNTIME_DIR/p11-kit/pkcs11).
    #[arg(short, long)]
    pub address: Option<String>,
    /// Log in with the PIN from this source (`file:/path` or a path; first line).
    #[arg(long, value_name = "SOURCE")]
    pub pin_source: Option<String>,
    /// Log in, asking for the PIN on the terminal if no other source gives one.
    #[arg(short, long)]
    pub login: bool,
}

/// Run `p11fwd list`.
pub fn run(args: ListArgs) -> anyhow::Result<ExitCode> {
    let filter = match &args.uri {
        Some(u) => Pkcs11Uri::parse(u).with_context(|| format!("invalid URI {:?}", redact(u)))?,
        None => Pkcs11Uri::new(),
    };
    let (path, described) = socket_path(args.address.as_deref())?;
    // C_Initialize travels with the version byte: one round trip.
    let client = Client::connect_initialized(&path, Options::default(), None).map_err(|e| {
        if e.is_fatal() {
            anyhow!("cannot connect to a p11-kit server at {described}: {e}")
        } else {
            anyhow!("C_Initialize over RPC failed: {e}")
        }
    })?;
    let mut out = String::new();
    let mut failed = false;
    let mut tokens = 0;
    for slot in client.slots(true).context("C_GetSlotList failed")? {
        let info = client
            .get_token_info(slot)
            .with_context(|| format!("C_GetTokenInfo({slot:#x}) failed"))?;
        let view = token_view(&info);
        if !filter.matches_token(&view) {
            continue;
        }
        tokens += 1;
        if let Err(e) = list_token(&client, slot, &info, &filter, &args, &mut out) {
            // Keep listing the other tokens; report this one and fail at the end.
            let _ = writeln!(out, "    error: {e:#}\n");
            failed = true;
        }
    }
    let _ = client.finalize();
    print!("{out}");
    if tokens == 0 {
        bail!("no token matches {}", filter.redacted());
    }
    Ok(if failed {
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    })
}

/// The socket to connect to, and how to describe it in errors.
fn socket_path(address: Option<&str>) -> anyhow::Result<(PathBuf, String)> {
    let (addr, described) = match address {
        Some(a) if a.starts_with('/') => (ServerAddress::Unix(PathBuf::from(a)), a.to_owned()),
        Some(a) => (ServerAddress::parse(a)?, a.to_owned()),
        None => {
            let d = discovery::discover_from_process()?;
            let described = d.to_string();
            (d.address, described)
        }
    };
    match addr.unix_path() {
        Some(p) => Ok((p.to_owned(), described)),
        None => bail!("{described}: only unix:path= addresses are supported"),
    }
}

fn redact(uri: &str) -> String {
    Pkcs11Uri::parse(uri)
        .map(|u| u.to_string_without_pin())
        .unwrap_or_else(|_| "<unparseable>".into())
}

fn token_view(info: &TokenInfo) -> TokenView<'_> {
    TokenView {
        label: &info.label,
        manufacturer: &info.manufacturer_id,
        model: &info.model,
        serial: &info.serial_number,
    }
}

fn pin_for(
    args: &ListArgs,
    filter: &Pkcs11Uri,
    token: &str,
) -> anyhow::Result<Option<Zeroizing<String>>> {
    if let Some(pin) = p11fwd_conf::pin::resolve_pin(filter)? {
        return Ok(Some(pin));
    }
    if let Some(src) = &args.pin_source {
        return Ok(Some(p11fwd_conf::pin::read_pin_source(src)?));
    }
    if args.login {
        return Ok(Some(p11fwd_conf::pin::prompt_tty(&format!(
            "Enter PIN for {token}: "
        ))?));
    }
    Ok(None)
}

const TOKEN_FLAGS: &[(u64, &str)] = &[
    (CKF_RNG, "RNG"),
    (CKF_WRITE_PROTECTED, "write protected"),
    (CKF_LOGIN_REQUIRED, "login required"),
    (CKF_USER_PIN_INITIALIZED, "user PIN initialized"),
    (
        CKF_PROTECTED_AUTHENTICATION_PATH,
        "protected authentication path",
    ),
    (CKF_TOKEN_INITIALIZED, "token initialized"),
    (CKF_USER_PIN_COUNT_LOW, "user PIN count low"),
    (CKF_USER_PIN_FINAL_TRY, "user PIN final try"),
    (CKF_USER_PIN_LOCKED, "user PIN locked"),
];

fn list_token(
    client: &Client,
    slot: u64,
    info: &TokenInfo,
    filter: &Pkcs11Uri,
    args: &ListArgs,
    out: &mut String,
) -> anyhow::Result<()> {
    let view = token_view(info);
    let label = unpad(&info.label);
    let token_uri = Pkcs11Uri::for_token(&view)?;
    let flags: Vec<&str> = TOKEN_FLAGS
        .iter()
        .filter(|(f, _)| info.flags & f != 0)
        .map(|(_, n)| *n)
        .collect();
    let _ = writeln!(out, "Token: {label}");
    let _ = writeln!(out, "    URI: {token_uri}");
    let _ = writeln!(out, "    Manufacturer: {}", unpad(&info.manufacturer_id));
    let _ = writeln!(out, "    Model: {}", unpad(&info.model));
    let _ = writeln!(out, "    Serial: {}", unpad(&info.serial_number));
    let _ = writeln!(out, "    Flags: {}", flags.join(", "));
    if info.flags & CKF_TOKEN_INITIALIZED == 0 {
        // A free slot (SoftHSM always has one): no session can be opened, nothing to list.
        let _ = writeln!(out, "    (not initialized: no objects)\n");
        return Ok(());
    }

    // The error names the call already.
    let session = client.open_session(slot, CKF_SERIAL_SESSION)?;
    let result = (|| {
        let pin = pin_for(args, filter, &label)?;
        let logged_in = match pin {
            Some(pin) => {
                client
                    .login(session, CKU_USER, Some(pin.as_bytes()))
                    .map_err(|e| match e.rv() {
                        Rv(CKR_PIN_INCORRECT) => {
                            anyhow!("login to {label} failed: wrong PIN (CKR_PIN_INCORRECT)")
                        }
                        _ => anyhow!("login to {label} failed: {e}"),
                    })?;
                true
            }
            None => false,
        };
        list_objects(client, session, &view, filter, out)?;
        if !logged_in && info.flags & CKF_LOGIN_REQUIRED != 0 {
            let _ = writeln!(
                out,
                "    (private objects not shown: log in with --login or --pin-source)"
            );
        }
        if logged_in {
            let _ = client.logout(session);
        }
        anyhow::Ok(())
    })();
    let _ = client.close_session(session);
    let _ = writeln!(out);
    result
}

/// Buffer sizes for the attributes we show: generous enough that no retry is needed for any
/// usual object, so each batch is one round trip.
const LABEL_BUF: u32 = 256;
const ID_BUF: u32 = 256;
const EC_PARAMS_BUF: u32 = 256;

fn slot(ty: u64, buflen: u32) -> AttrSlot {
    AttrSlot {
        ty,
        buflen,
        nested: None,
    }
}

fn list_objects(
    client: &Client,
    session: u64,
    token: &TokenView<'_>,
    filter: &Pkcs11Uri,
    out: &mut String,
) -> anyhow::Result<()> {
    let mut template = Vec::new();
    if let Some(class) = filter.object_class() {
        template.push(Attribute::ulong(CKA_CLASS, class));
    }
    if let Some(label) = filter.object() {
        template.push(Attribute::bytes(CKA_LABEL, label.as_bytes().to_vec()));
    }
    if let Some(id) = filter.id() {
        template.push(Attribute::bytes(CKA_ID, id.to_vec()));
    }
    let handles = client
        .find_all(session, template, 4096)
        .context("C_FindObjects failed")?;
    // One pipelined batch for the identifying attributes of every object, then one for the
    // class-specific ones. Classes go first: asking a certificate for CKA_KEY_TYPE is harmless
    // but some tokens blank the whole template when any attribute is invalid.
    let ident: Vec<_> = handles
        .iter()
        .map(|h| {
            req::get_attribute_value(
                session,
                *h,
                vec![
                    slot(CKA_CLASS, 8),
                    slot(CKA_LABEL, LABEL_BUF),
                    slot(CKA_ID, ID_BUF),
                ],
            )
        })
        .collect();
    let idents = client.connection().call_batch(&ident);
    let mut objects = Vec::new();
    // Labels and IDs that did not fit their buffers, as (object index, attribute type).
    let mut long = Vec::new();
    for (h, r) in handles.iter().zip(idents) {
        let (attrs, _) = parse::attributes(r.context("C_GetAttributeValue failed")?)?;
        let get = |t| attrs.iter().find(|a| a.ty == t);
        let class = get(CKA_CLASS).and_then(Attribute::as_ulong);
        let mut bytes = |t| {
            let a = get(t)?;
            let v = a.as_bytes().map(<[u8]>::to_vec);
            if v.is_none() {
                long.push((objects.len(), t));
            }
            v
        };
        let label = bytes(CKA_LABEL);
        let id = bytes(CKA_ID);
        objects.push((*h, class, label, id));
    }
    let wanted: Vec<(u64, u64)> = long.iter().map(|(i, ty)| (objects[*i].0, *ty)).collect();
    for ((i, ty), value) in long.iter().zip(refetch(client, session, &wanted)) {
        let o = &mut objects[*i];
        match *ty {
            CKA_LABEL => o.2 = value,
            _ => o.3 = value,
        }
    }
    let details: Vec<_> = objects
        .iter()
        .map(|(h, class, ..)| {
            let types: Vec<AttrSlot> = match *class {
                Some(CKO_PRIVATE_KEY | CKO_PUBLIC_KEY) => {
                    // CKA_MODULUS as a size query: private keys often lack CKA_MODULUS_BITS.
                    vec![
                        slot(CKA_KEY_TYPE, 8),
                        slot(CKA_MODULUS, 0),
                        slot(CKA_EC_PARAMS, EC_PARAMS_BUF),
                    ]
                }
                Some(CKO_SECRET_KEY) => vec![slot(CKA_KEY_TYPE, 8), slot(CKA_VALUE_LEN, 8)],
                Some(CKO_CERTIFICATE) => vec![slot(CKA_CERTIFICATE_TYPE, 8)],
                _ => vec![],
            };
            req::get_attribute_value(session, *h, types)
        })
        .collect();
    let details = client.connection().call_batch(&details);
    let mut shown = 0;
    for ((_, class, label, id), detail) in objects.iter().zip(details) {
        let class_enum = class.and_then(ObjectClass::from_ck);
        let view = ObjectView {
            label: label.as_deref(),
            id: id.as_deref(),
            class: class_enum,
        };
        if !filter.matches_object(&view) {
            continue;
        }
        let attrs = detail
            .ok()
            .and_then(|r| parse::attributes(r).ok())
            .map(|(a, _)| a)
            .unwrap_or_default();
        // An RFC 7512 `object` is text: a label that is not UTF-8 is left out of the URI (which
        // still names the token, the ID and the type) rather than failing the whole token.
        let text_label = label
            .as_deref()
            .is_none_or(|l| std::str::from_utf8(l).is_ok());
        let uri = Pkcs11Uri::for_object(
            token,
            &ObjectView {
                label: view.label.filter(|_| text_label),
                ..view
            },
        )?;
        let _ = writeln!(out, "    Object: {}", describe(*class, &attrs));
        let _ = writeln!(out, "        URI: {uri}");
        if let Some(l) = label {
            let note = if text_label {
                ""
            } else {
                " (not UTF-8: not in the URI)"
            };
            let _ = writeln!(out, "        Label: {}{note}", String::from_utf8_lossy(l));
        }
        if let Some(i) = id {
            let hex: String = i.iter().map(|b| format!("{b:02x}")).collect();
            let _ = writeln!(out, "        ID: {hex}");
        }
        shown += 1;
    }
    if shown == 0 {
        let _ = writeln!(out, "    (no objects)");
    }
    Ok(())
}

/// Byte-array values that did not fit the first buffers, by (object, attribute type). PKCS#11
/// 2.40 has a module answer a buffer that is too small with `CK_UNAVAILABLE_INFORMATION`
/// (SoftHSM does), so the size is asked first, then the value with a buffer of that size: two
/// pipelined round trips for all of them, and none when everything fit. `None` where the
/// object has no such attribute.
fn refetch(client: &Client, session: u64, wanted: &[(u64, u64)]) -> Vec<Option<Vec<u8>>> {
    if wanted.is_empty() {
        return Vec::new();
    }
    let one = |r: p11fwd_wire::Result<Vec<p11fwd_wire::Arg>>| {
        r.ok()
            .and_then(|r| parse::attributes(r).ok())
            .and_then(|(a, _)| a.into_iter().next())
    };
    let sizes: Vec<_> = wanted
        .iter()
        .map(|(h, ty)| req::get_attribute_value(session, *h, vec![slot(*ty, 0)]))
        .collect();
    let sizes: Vec<Option<u32>> = client
        .connection()
        .call_batch(&sizes)
        .into_iter()
        .map(|r| one(r).and_then(|a| a.native_len()))
        .collect();
    let fetches: Vec<_> = wanted
        .iter()
        .zip(&sizes)
        .filter_map(|((h, ty), len)| {
            len.filter(|l| *l > 0)
                .map(|l| req::get_attribute_value(session, *h, vec![slot(*ty, l)]))
        })
        .collect();
    let mut fetched = client.connection().call_batch(&fetches).into_iter();
    sizes
        .iter()
        .map(|len| match len {
            None => None,
            Some(0) => Some(Vec::new()),
            Some(_) => fetched
                .next()
                .and_then(one)
                .and_then(|a| a.as_bytes().map(<[u8]>::to_vec)),
        })
        .collect()
}

fn describe(class: Option<u64>, attrs: &[Attribute]) -> String {
    let get = |t| attrs.iter().find(|a| a.ty == t);
    let class_name = match class {
        Some(CKO_PRIVATE_KEY) => "private key",
        Some(CKO_PUBLIC_KEY) => "public key",
        Some(CKO_SECRET_KEY) => "secret key",
        Some(CKO_CERTIFICATE) => "certificate",
        Some(CKO_DATA) => "data",
        _ => "object",
    };
    let key = match get(CKA_KEY_TYPE).and_then(Attribute::as_ulong) {
        Some(CKK_RSA) => match get(CKA_MODULUS).and_then(Attribute::native_len) {
            Some(bytes) if bytes > 0 => format!("RSA-{}", bytes * 8),
            _ => "RSA".into(),
        },
        Some(CKK_EC | CKK_EC_EDWARDS | CKK_EC_MONTGOMERY) => {
            match get(CKA_EC_PARAMS)
                .and_then(Attribute::as_bytes)
                .and_then(curve_name)
            {
                Some(c) => c.into(),
                None => "EC".into(),
            }
        }
        Some(CKK_AES) => match get(CKA_VALUE_LEN).and_then(Attribute::as_ulong) {
            Some(n) => format!("AES-{}", n * 8),
            None => "AES".into(),
        },
        Some(t) => p11fwd_wire::names::or_hex(p11fwd_wire::names::key_type_name(t), t),
        None => match get(CKA_CERTIFICATE_TYPE).and_then(Attribute::as_ulong) {
            Some(0) => "X.509".into(),
            _ => String::new(),
        },
    };
    if key.is_empty() {
        class_name.into()
    } else {
        format!("{class_name} ({key})")
    }
}

/// The curve named by a DER `CKA_EC_PARAMS` (an OID, or a PrintableString for Edwards and
/// Montgomery curves as some tokens write them).
fn curve_name(params: &[u8]) -> Option<&'static str> {
    const CURVES: &[(&[u8], &str)] = &[
        (
            &[0x06, 0x08, 0x2a, 0x86, 0x48, 0xce, 0x3d, 0x03, 0x01, 0x07],
            "EC P-256",
        ),
        (&[0x06, 0x05, 0x2b, 0x81, 0x04, 0x00, 0x22], "EC P-384"),
        (&[0x06, 0x05, 0x2b, 0x81, 0x04, 0x00, 0x23], "EC P-521"),
        (&[0x06, 0x05, 0x2b, 0x81, 0x04, 0x00, 0x0a], "EC secp256k1"),
        (&[0x06, 0x03, 0x2b, 0x65, 0x70], "Ed25519"),
        (&[0x06, 0x03, 0x2b, 0x65, 0x71], "Ed448"),
        (&[0x06, 0x03, 0x2b, 0x65, 0x6e], "X25519"),
        (&[0x06, 0x03, 0x2b, 0x65, 0x6f], "X448"),
    ];
    const NAMES: &[(&[u8], &str)] = &[
        (b"edwards25519", "Ed25519"),
        (b"edwards448", "Ed448"),
        (b"curve25519", "X25519"),
        (b"curve448", "X448"),
    ];
    if let Some((_, n)) = CURVES.iter().find(|(der, _)| *der == params) {
        return Some(n);
    }
    // PrintableString: tag 0x13, short length.
    match params {
        [0x13, len, rest @ ..] if usize::from(*len) == rest.len() => {
            NAMES.iter().find(|(s, _)| *s == rest).map(|(_, n)| *n)
        }
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_curves() {
        assert_eq!(curve_name(&[0x06, 0x03, 0x2b, 0x65, 0x70]), Some("Ed25519"));
        assert_eq!(curve_name(b"\x13\x0cedwards25519"), Some("Ed25519"));
        assert_eq!(curve_name(b"\x13\x0dedwards25519"), None);
        assert_eq!(curve_name(&[]), None);
    }

    #[test]
    fn describes_keys() {
        let attrs = vec![
            Attribute::ulong(CKA_KEY_TYPE, CKK_RSA),
            Attribute::size_only(CKA_MODULUS, 256, p11fwd_wire::Dialect::V0),
        ];
        assert_eq!(
            describe(Some(CKO_PRIVATE_KEY), &attrs),
            "private key (RSA-2048)"
        );
        assert_eq!(
            describe(
                Some(CKO_CERTIFICATE),
                &[Attribute::ulong(CKA_CERTIFICATE_TYPE, 0)]
            ),
            "certificate (X.509)"
        );
    }
}
