//! The RFC 7512 §3.3 examples, and a randomized no-panic / round-trip check of the parser.

#![allow(clippy::unwrap_used)] // Tests unwrap: a panic is a test failure.

use p11fwd_conf::{ObjectClass, ObjectView, Pkcs11Uri, TokenView};

/// RFC 7512 §3.3, each example joined onto one line (the RFC wraps them for print).
const RFC_EXAMPLES: [&str; 13] = [
    "pkcs11:",
    "pkcs11:object=my-pubkey;type=public",
    "pkcs11:object=my-key;type=private?pin-source=file:/etc/token",
    "pkcs11:token=The%20Software%20PKCS%2311%20Softtoken;manufacturer=Snake%20Oil,%20Inc.;\
     model=1.0;object=my-certificate;type=cert;id=%69%95%3E%5C%F4%BD%EC%91;serial=\
     ?pin-source=file:/etc/token_pin",
    "pkcs11:object=my-sign-key;type=private?module-name=mypkcs11",
    "pkcs11:object=my-sign-key;type=private?module-path=/mnt/libmypkcs11.so.1",
    "pkcs11:token=Software%20PKCS%2311%20softtoken;manufacturer=Snake%20Oil,%20Inc.\
     ?pin-value=the-pin",
    "pkcs11:slot-description=Sun%20Metaslot",
    "pkcs11:library-manufacturer=Snake%20Oil,%20Inc.;library-description=Soft%20Token%20Library;\
     library-version=1.23",
    "pkcs11:token=My%20token%25%20created%20by%20Joe;library-version=3;\
     id=%01%02%03%Ba%dd%Ca%fe%04%05%06",
    "pkcs11:token=A%20name%20with%20a%20substring%20%25%3B;object=my-certificate;type=cert",
    "pkcs11:token=Name%20with%20a%20small%20A%20with%20acute:%20%C3%A1;object=my-certificate;\
     type=cert",
    "pkcs11:token=my-token;object=my-certificate;type=cert;vendor-aaa=value-a\
     ?pin-source=file:/etc/token_pin&vendor-bbb=value-b",
];

/// `format ∘ parse` is a fixed point, and formatting loses nothing.
fn assert_round_trips(text: &str) -> Pkcs11Uri {
    let uri: Pkcs11Uri = text.parse().unwrap_or_else(|e| panic!("{text}: {e}"));
    let formatted = uri.to_string();
    let reparsed: Pkcs11Uri = formatted
        .parse()
        .unwrap_or_else(|e| panic!("{text} -> {formatted}: {e}"));
    assert_eq!(reparsed, uri, "{text} -> {formatted}");
    assert_eq!(reparsed.to_string(), formatted, "{text}");
    uri
}

#[test]
fn every_rfc_example_parses_and_round_trips() {
    for text in RFC_EXAMPLES {
        assert_round_trips(text);
    }
}

#[test]
fn rfc_examples_decode_to_the_documented_values() {
    let [
        empty,
        pubkey,
        key,
        cert,
        sign_name,
        sign_path,
        pin,
        slot,
        lib,
        joe,
        subst,
        acute,
        vendor,
    ] = RFC_EXAMPLES.map(|t| t.parse::<Pkcs11Uri>().unwrap());

    assert_eq!(empty, Pkcs11Uri::new());

    assert_eq!(pubkey.object(), Some("my-pubkey"));
    assert_eq!(pubkey.object_type(), Some(ObjectClass::PublicKey));

    assert_eq!(key.object_class(), Some(3));
    assert_eq!(key.pin_source(), Some("file:/etc/token"));

    assert_eq!(cert.token(), Some("The Software PKCS#11 Softtoken"));
    assert_eq!(cert.manufacturer(), Some("Snake Oil, Inc."));
    assert_eq!(cert.model(), Some("1.0"));
    assert_eq!(cert.serial(), Some(""));
    assert_eq!(
        cert.id(),
        Some(&[0x69, 0x95, 0x3e, 0x5c, 0xf4, 0xbd, 0xec, 0x91][..])
    );
    assert_eq!(
        cert.to_string(),
        "pkcs11:model=1.0;manufacturer=Snake%20Oil,%20Inc.;serial=;\
         token=The%20Software%20PKCS%2311%20Softtoken;id=%69%95%3E%5C%F4%BD%EC%91;\
         object=my-certificate;type=cert?pin-source=file:/etc/token_pin"
    );

    assert_eq!(sign_name.module_name(), Some("mypkcs11"));
    assert_eq!(sign_path.module_path(), Some("/mnt/libmypkcs11.so.1"));

    assert_eq!(pin.pin_value(), Some("the-pin"));
    assert_eq!(
        pin.redacted().to_string(),
        "pkcs11:manufacturer=Snake%20Oil,%20Inc.;token=Software%20PKCS%2311%20softtoken"
    );

    assert_eq!(slot.slot_description(), Some("Sun Metaslot"));

    assert_eq!(lib.library_manufacturer(), Some("Snake Oil, Inc."));
    assert_eq!(lib.library_description(), Some("Soft Token Library"));
    assert_eq!(lib.library_version(), Some((1, 23)));

    assert_eq!(joe.token(), Some("My token% created by Joe"));
    assert_eq!(joe.library_version(), Some((3, 0)));
    assert_eq!(
        joe.id(),
        Some(&[1, 2, 3, 0xba, 0xdd, 0xca, 0xfe, 4, 5, 6][..])
    );

    assert_eq!(subst.token(), Some("A name with a substring %;"));
    assert_eq!(acute.token(), Some("Name with a small A with acute: á"));

    assert_eq!(
        vendor.other_path_attributes().collect::<Vec<_>>(),
        [("vendor-aaa", &b"value-a"[..])]
    );
    assert_eq!(vendor.query_attribute("vendor-bbb"), Some(&b"value-b"[..]));
    assert!(vendor.has_unknown_path_attributes());
    let token = TokenView {
        label: b"my-token",
        ..TokenView::default()
    };
    assert!(
        !vendor.matches_token(&token),
        "an unknown path attribute must not match"
    );
}

#[test]
fn rfc_example_matches_its_token_and_object() {
    let uri: Pkcs11Uri = RFC_EXAMPLES[3].parse().unwrap();
    let token = TokenView {
        label: b"The Software PKCS#11 Softtoken  ",
        manufacturer: b"Snake Oil, Inc.                 ",
        model: b"1.0             ",
        serial: b"                ",
    };
    assert!(uri.matches_token(&token));
    let object = ObjectView {
        label: Some(b"my-certificate"),
        id: Some(&[0x69, 0x95, 0x3e, 0x5c, 0xf4, 0xbd, 0xec, 0x91]),
        class: ObjectClass::from_ck(1),
    };
    assert!(uri.matches_object(&object));
    let rebuilt = Pkcs11Uri::for_object(&token, &object).unwrap();
    assert_eq!(
        rebuilt.to_string(),
        "pkcs11:model=1.0;manufacturer=Snake%20Oil,%20Inc.;\
         token=The%20Software%20PKCS%2311%20Softtoken;id=%69%95%3E%5C%F4%BD%EC%91;\
         object=my-certificate;type=cert"
    );
}

/// xorshift64*: deterministic, no dependencies.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    fn below(&mut self, n: usize) -> usize {
        usize::try_from(self.next() % n as u64).unwrap()
    }

    fn pick<'a>(&mut self, items: &[&'a str]) -> &'a str {
        items[self.below(items.len())]
    }
}

/// Pieces that make the parser take its interesting branches.
const PIECES: &[&str] = &[
    "pkcs11:",
    "PKCS11:",
    "pkcs11",
    ":",
    ";",
    "?",
    "&",
    "=",
    "%",
    "%2",
    "%41",
    "%zz",
    "%C3%A1",
    "%00",
    "%FF",
    "token",
    "object",
    "id",
    "type",
    "object-type",
    "serial",
    "model",
    "manufacturer",
    "slot-id",
    "library-version",
    "library-manufacturer",
    "slot-description",
    "pin-value",
    "pin-source",
    "pinfile",
    "module-path",
    "module-name",
    "x-vendor",
    "write-protected",
    "cert",
    "private",
    "secret-key",
    "otp",
    "1",
    "1.2",
    "255",
    "256",
    "18446744073709551616",
    "a",
    "/",
    " ",
    "\n",
    "\t",
    "\u{a0}",
    "á",
    "\u{0}",
    "-",
    "_",
    "~",
    "|",
    "#",
    "'",
    "yes",
];

fn random_input(rng: &mut Rng) -> String {
    let mut s = String::new();
    if rng.below(4) != 0 {
        s.push_str("pkcs11:");
    }
    let parts = rng.below(12);
    for _ in 0..parts {
        match rng.below(10) {
            0 => {
                // Raw random bytes, made into text the lossy way.
                let len = rng.below(8);
                let bytes: Vec<u8> = (0..len).map(|_| rng.next() as u8).collect();
                s.push_str(&String::from_utf8_lossy(&bytes));
            }
            1..=3 => {
                let name = rng.pick(PIECES);
                let value = rng.pick(PIECES);
                let sep = rng.pick(&[";", "?", "&", ""]);
                s.push_str(&format!("{name}={value}{sep}"));
            }
            _ => s.push_str(rng.pick(PIECES)),
        }
    }
    s
}

#[test]
fn random_inputs_never_panic_and_round_trip_on_success() {
    let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
    let token = TokenView {
        label: b"a",
        manufacturer: b"",
        model: b"1",
        serial: b"1.2",
    };
    let object = ObjectView {
        label: Some(b"a"),
        id: Some(b"A"),
        class: ObjectClass::from_ck(1),
    };
    let mut parsed = 0;
    for _ in 0..50_000 {
        let input = random_input(&mut rng);
        let Ok(uri) = input.parse::<Pkcs11Uri>() else {
            continue;
        };
        parsed += 1;
        let formatted = uri.to_string();
        let again: Pkcs11Uri = formatted
            .parse()
            .unwrap_or_else(|e| panic!("{input:?} -> {formatted:?}: {e}"));
        assert_eq!(again, uri, "{input:?} -> {formatted:?}");
        assert_eq!(again.to_string(), formatted, "{input:?}");
        let redacted = uri.redacted().to_string();
        assert_eq!(
            redacted.parse::<Pkcs11Uri>().unwrap(),
            uri.clone().without_pin_value()
        );
        let _ = format!("{uri:?}");
        let _ = uri.matches_token(&token) && uri.matches_object(&object);
    }
    // The generator must exercise the success path too.
    assert!(parsed > 5_000, "only {parsed} inputs parsed");
}

#[test]
fn random_byte_strings_never_panic() {
    let mut rng = Rng(42);
    for _ in 0..20_000 {
        let len = rng.below(40);
        let mut bytes: Vec<u8> = (0..len).map(|_| rng.next() as u8).collect();
        if rng.below(2) == 0 {
            bytes.splice(0..0, b"pkcs11:".iter().copied());
        }
        let text = String::from_utf8_lossy(&bytes);
        if let Ok(uri) = text.parse::<Pkcs11Uri>() {
            let formatted = uri.to_string();
            assert_eq!(formatted.parse::<Pkcs11Uri>().unwrap(), uri, "{text:?}");
        }
    }
}
