//! Two tokens of one module behind `p11fwd server`: a URI that selects one of them, and object
//! handles that are only unique per token (`tests/fixtures/fake-handles.c`, SoftHSM with its
//! handles numbered per slot).
#![allow(clippy::unwrap_used)]

mod common;

use std::collections::HashMap;
use std::process::Command;

use common::slow::FakeModule;
use common::{FwdExt, find_one, rv_of};
use p11fwd_tests::{
    Key, P11KIT_CLIENT_MODULE, SECOND_KEY, SECOND_LABEL, SECOND_PIN, TestToken, require_tool,
};
use p11fwd_wire::client::{Client, OutCap};
use p11fwd_wire::consts::*;
use p11fwd_wire::value::{Attribute, Mechanism};

const SECOND: &str = SECOND_LABEL;

/// The fixture's token plus the second one (`ec-second`, its own PIN) in the same SoftHSM.
fn two_tokens() -> TestToken {
    let token = TestToken::builder().with(Key::EcP256).build();
    token.add_second_token();
    token
}

/// A token of [`two_tokens`]: its label, user PIN and key label.
#[derive(Clone, Copy, Debug)]
struct Which<'a> {
    label: &'a str,
    pin: &'a str,
    key: &'a str,
}

fn both(token: &TestToken) -> [Which<'_>; 2] {
    [
        Which {
            label: token.label(),
            pin: token.user_pin(),
            key: "ec-p256",
        },
        Which {
            label: SECOND,
            pin: SECOND_PIN,
            key: SECOND_KEY,
        },
    ]
}

/// The virtual slots of `c` by token label.
fn slots_by_label(c: &Client) -> HashMap<String, u64> {
    c.slots(true)
        .unwrap()
        .into_iter()
        .map(|slot| {
            let info = c.get_token_info(slot).unwrap();
            (p11fwd_wire::info::unpad(&info.label).to_owned(), slot)
        })
        .collect()
}

/// A logged-in session on `slot`, and an ECDSA signature with the token's key verified.
fn login_and_sign(c: &Client, slot: u64, t: Which<'_>) -> u64 {
    let s = c
        .open_session(slot, CKF_SERIAL_SESSION | CKF_RW_SESSION)
        .unwrap();
    c.login(s, CKU_USER, Some(t.pin.as_bytes())).unwrap();
    let key = find_one(c, s, t.key, CKO_PRIVATE_KEY);
    let public = find_one(c, s, t.key, CKO_PUBLIC_KEY);
    let mech = || Some(Mechanism::new(CKM_ECDSA));
    c.sign_init(s, mech(), key).unwrap();
    let sig = c
        .sign(s, &[3; 32], OutCap::Buffer(128))
        .unwrap()
        .into_data(p11fwd_wire::CallId::Sign)
        .unwrap();
    c.verify_init(s, mech(), public).unwrap();
    c.verify(s, &[3; 32], &sig).unwrap();
    s
}

/// A URI selecting the token SoftHSM lists second: it is slot 0x11, the other is invisible.
#[test]
fn a_uri_selects_the_second_token_alone() {
    let token = two_tokens();
    let [first, second] = both(&token);
    let uris = [first, second].map(|t| format!("pkcs11:token={}", t.label));
    // Which of them the module lists second: with both served, the one at 0x12.
    let fwd = common::builder(&token).uris(uris.clone()).start();
    let listed = slots_by_label(&fwd.client(2));
    assert_eq!(listed.len(), 2, "{listed:?}");
    let (chosen, other) = if listed[second.label] == 0x12 {
        (second, first)
    } else {
        (first, second)
    };
    assert_eq!(listed[chosen.label], 0x12, "{listed:?}");
    drop(fwd);

    let fwd = common::builder(&token)
        .uri(format!("pkcs11:token={}", chosen.label))
        .start();
    let c = fwd.client(2);
    assert_eq!(
        slots_by_label(&c),
        HashMap::from([(chosen.label.to_owned(), 0x11)])
    );
    assert_eq!(rv_of(c.get_token_info(0x12)), CKR_SLOT_ID_INVALID);
    // The other token's PIN is not this one's, and its key is not here.
    let s = c
        .open_session(0x11, CKF_SERIAL_SESSION | CKF_RW_SESSION)
        .unwrap();
    assert_eq!(
        rv_of(c.login(s, CKU_USER, Some(other.pin.as_bytes()))),
        CKR_PIN_INCORRECT
    );
    login_and_sign(&c, 0x11, chosen);
    assert!(common::find(&c, s, other.key, CKO_PRIVATE_KEY).is_empty());
    // The stock client sees the same.
    let out = fwd
        .p11env()
        .run_ok(Command::new(require_tool("pkcs11-tool")).args([
            "--module",
            P11KIT_CLIENT_MODULE,
            "-L",
        ]));
    assert!(out.stdout.contains("(0x11)"), "{out}");
    assert!(!out.stdout.contains("(0x12)"), "{out}");
    assert!(out.stdout.contains(chosen.label), "{out}");
    assert!(!out.stdout.contains(other.label), "{out}");
}

/// The module numbers its object handles per token, so both tokens have objects 1, 2, ...:
/// one connection's handles for them stay apart, each signs on its own token, and a session
/// object made on one token by another connection hides nothing on the other.
#[test]
fn handles_unique_only_per_token_stay_apart() {
    let token = two_tokens();
    let both = both(&token);
    let fake = FakeModule::build("fake-handles", "P11FWD_FAKE_HANDLES");
    let fwd = fake
        .builder(&token)
        .uris(both.map(|t| format!("pkcs11:token={}", t.label)))
        .start();
    let c = fwd.client(2);
    let slots = slots_by_label(&c);
    let sessions = both.map(|t| login_and_sign(&c, slots[t.label], t));
    // Every object of each token: the module handed out 1, 2, 3 and 1, 2.
    let objects = sessions.map(|s| c.find_all(s, vec![], 16).unwrap());
    assert_eq!((objects[0].len(), objects[1].len()), (3, 2), "{objects:?}");
    assert!(
        objects[0].iter().all(|h| !objects[1].contains(h)),
        "one virtual handle for objects of two tokens: {objects:?}"
    );
    // Each key still signs on its own token after the other token's objects were seen.
    for (t, s) in both.iter().zip(sessions) {
        let key = find_one(&c, s, t.key, CKO_PRIVATE_KEY);
        c.sign_init(s, Some(Mechanism::new(CKM_ECDSA)), key)
            .unwrap();
        c.sign(s, &[4; 32], OutCap::Buffer(128)).unwrap();
    }
    // Another connection's session object on the second token gets the module's handle 3,
    // which on the first token is a token object: that one stays visible.
    let open = |c: &Client, label: &str| {
        c.open_session(slots[label], CKF_SERIAL_SESSION | CKF_RW_SESSION)
            .unwrap()
    };
    let data = |c: &Client, s: u64, label: &str| {
        c.create_object(
            s,
            vec![
                Attribute::ulong(CKA_CLASS, CKO_DATA),
                Attribute::bool(CKA_TOKEN, false),
                Attribute::bool(CKA_PRIVATE, false),
                Attribute::bytes(CKA_LABEL, label.as_bytes().to_vec()),
            ],
        )
        .unwrap()
    };
    let x = fwd.client(2);
    data(&x, open(&x, SECOND), "x-only");
    let y = fwd.client(2);
    let ys = login_and_sign(&y, slots[token.label()], both[0]);
    assert_eq!(y.find_all(ys, vec![], 16).unwrap().len(), 3);
    // Z's session object on the first token and Y's on the second both get the module's
    // handle 4: Y still cannot see Z's, and Z still sees its own.
    let z = fwd.client(2);
    let zs = open(&z, token.label());
    data(&z, zs, "z-only");
    data(&y, open(&y, SECOND), "y-only");
    assert!(common::find(&y, ys, "z-only", CKO_DATA).is_empty());
    assert_eq!(common::find(&z, zs, "z-only", CKO_DATA).len(), 1);
}
