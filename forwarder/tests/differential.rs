//! The same call script against the stock `p11-kit server` (0.24.1) and `p11fwd server`, over
//! the same SoftHSM token: the results must be identical (handles aside, which differ by
//! design: stock passes the module's object handles through, we hand out our own).
#![allow(clippy::unwrap_used)]

mod common;

use std::path::Path;

use common::connect;
use p11fwd_tests::{Key, StockServer, TestToken};
use p11fwd_wire::client::{Client, OutCap};
use p11fwd_wire::consts::*;
use p11fwd_wire::info::unpad;
use p11fwd_wire::value::{AttrSlot, Attribute, MechParam, Mechanism};

fn script(socket: &Path, pin: &str) -> Vec<String> {
    let c: Client = connect(socket, 0);
    let mut out = Vec::new();
    let mut log = |what: &str, r: String| out.push(format!("{what}: {r}"));
    let slots = c.slots(true).unwrap();
    log("slots", format!("{slots:x?}"));
    let slot = slots[0];
    let ti = c.get_token_info(slot).unwrap();
    log(
        "token",
        format!(
            "{} {} {} flags={:x}",
            unpad(&ti.label),
            unpad(&ti.model),
            unpad(&ti.serial_number),
            ti.flags
        ),
    );
    let si = c.get_slot_info(slot).unwrap();
    log(
        "slot",
        format!("{} {:x}", unpad(&si.slot_description), si.flags),
    );
    log("mechanisms", format!("{:x?}", c.mechanisms(slot).unwrap()));
    log(
        "mechinfo",
        format!("{:?}", c.get_mechanism_info(slot, CKM_RSA_PKCS).unwrap()),
    );
    log(
        "bad slot",
        format!("{:?}", c.get_slot_info(0x99).map_err(|e| e.rv())),
    );
    let s = c
        .open_session(slot, CKF_SERIAL_SESSION | CKF_RW_SESSION)
        .unwrap();
    log("session", format!("{:?}", c.get_session_info(s).unwrap()));
    log(
        "wrong pin",
        format!(
            "{:?}",
            c.login(s, CKU_USER, Some(b"000000")).map_err(|e| e.rv())
        ),
    );
    c.login(s, CKU_USER, Some(pin.as_bytes())).unwrap();
    log("state", format!("{}", c.get_session_info(s).unwrap().state));
    let find = |class, label: &str| {
        c.find_all(
            s,
            vec![
                Attribute::ulong(CKA_CLASS, class),
                Attribute::bytes(CKA_LABEL, label.as_bytes().to_vec()),
            ],
            8,
        )
        .unwrap()
    };
    let all = c.find_all(s, vec![], 64).unwrap();
    log("objects", format!("{}", all.len()));
    let private = find(CKO_PRIVATE_KEY, "rsa2048");
    let public = find(CKO_PUBLIC_KEY, "rsa2048");
    log("found", format!("{} {}", private.len(), public.len()));
    let (private, public) = (private[0], public[0]);
    let q = |ty, buflen| AttrSlot {
        ty,
        buflen,
        nested: None,
    };
    let (a, rv) = c
        .get_attribute_value(
            s,
            public,
            vec![q(CKA_MODULUS, 0), q(CKA_KEY_TYPE, 0), q(CKA_LABEL, 0)],
        )
        .unwrap();
    log("size query", format!("{a:?} {rv:?}"));
    let (a, rv) = c
        .get_attribute_value(
            s,
            public,
            vec![q(CKA_MODULUS, 256), q(CKA_KEY_TYPE, 8), q(CKA_LABEL, 7)],
        )
        .unwrap();
    log(
        "values",
        format!(
            "{:?} {:?} {rv:?}",
            a[0].as_bytes().map(hex::encode),
            &a[1..]
        ),
    );
    let (a, rv) = c
        .get_attribute_value(
            s,
            private,
            vec![
                q(CKA_PRIVATE_EXPONENT, 256),
                q(0x0bad_beef, 4),
                q(CKA_LABEL, 2),
            ],
        )
        .unwrap();
    log("sensitive", format!("{a:?} {rv:?}"));
    c.sign_init(s, Some(Mechanism::new(CKM_SHA256_RSA_PKCS)), private)
        .unwrap();
    log(
        "sign query",
        format!("{:?}", c.sign(s, b"differential", OutCap::Query).unwrap()),
    );
    log(
        "sign small",
        format!(
            "{:?}",
            c.sign(s, b"differential", OutCap::Buffer(16)).unwrap()
        ),
    );
    let sig = c.sign(s, b"differential", OutCap::Buffer(256)).unwrap();
    log(
        "signature",
        format!(
            "{sig:?} {}",
            hex::encode(sig.clone().into_data(p11fwd_wire::CallId::Sign).unwrap())
        ),
    );
    c.sign_init(
        s,
        Some(Mechanism::with(
            CKM_RSA_PKCS_PSS,
            MechParam::RsaPkcsPss {
                hash_alg: CKM_SHA256,
                mgf: CKG_MGF1_SHA256,
                salt_len: 32,
            },
        )),
        private,
    )
    .unwrap();
    let pss = c
        .sign(s, &[1; 32], OutCap::Buffer(256))
        .unwrap()
        .into_data(p11fwd_wire::CallId::Sign)
        .unwrap();
    c.verify_init(
        s,
        Some(Mechanism::with(
            CKM_RSA_PKCS_PSS,
            MechParam::RsaPkcsPss {
                hash_alg: CKM_SHA256,
                mgf: CKG_MGF1_SHA256,
                salt_len: 32,
            },
        )),
        public,
    )
    .unwrap();
    log(
        "pss verify",
        format!("{:?}", c.verify(s, &[1; 32], &pss).map_err(|e| e.rv())),
    );
    log(
        "bad verify",
        format!("{:?}", {
            c.verify_init(s, Some(Mechanism::new(CKM_SHA256_RSA_PKCS)), public)
                .unwrap();
            c.verify(s, b"other", &pss).map_err(|e| e.rv())
        }),
    );
    c.digest_init(s, Some(Mechanism::new(CKM_SHA256))).unwrap();
    log(
        "digest",
        format!(
            "{:?}",
            c.digest(s, b"abc", OutCap::Buffer(32))
                .unwrap()
                .into_data(p11fwd_wire::CallId::Digest)
                .map(hex::encode)
        ),
    );
    log(
        "random",
        format!(
            "{:?}",
            c.generate_random(s, OutCap::Buffer(16)).map(|o| o
                .into_data(p11fwd_wire::CallId::GenerateRandom)
                .unwrap()
                .len())
        ),
    );
    log("logout", format!("{:?}", c.logout(s).map_err(|e| e.rv())));
    log(
        "logout again",
        format!("{:?}", c.logout(s).map_err(|e| e.rv())),
    );
    log(
        "public objects",
        format!("{}", c.find_all(s, vec![], 64).unwrap().len()),
    );
    log(
        "close",
        format!("{:?}", c.close_session(s).map_err(|e| e.rv())),
    );
    log(
        "closed",
        format!("{:?}", c.get_session_info(s).map_err(|e| e.rv())),
    );
    c.finalize().unwrap();
    out
}

#[test]
fn same_results_as_stock_p11_kit_server() {
    let token = TestToken::builder()
        .with(Key::Rsa2048)
        .with(Key::EcP256)
        .build();
    let stock = script(StockServer::start(&token).socket_path(), token.user_pin());
    let ours = script(common::start(&token).socket_path(), token.user_pin());
    for (a, b) in stock.iter().zip(&ours) {
        assert_eq!(a, b, "stock vs p11fwd");
    }
    assert_eq!(stock.len(), ours.len());
}

/// The shared `servers()` fixture: one body, both servers, a stock client listing the token.
#[test]
fn both_servers_list_the_token_through_the_stock_client() {
    use p11fwd_tests::{P11KIT_CLIENT_MODULE, Server, ServerKind, require_tool, servers};
    use std::process::Command;
    let token = TestToken::builder().with(Key::EcP256).build();
    let all = servers(&token);
    let kinds: Vec<ServerKind> = all.iter().map(Server::kind).collect();
    assert_eq!(kinds, [ServerKind::Stock, ServerKind::Forwarder]);
    for server in &all {
        let out = server.p11env().run_ok(
            Command::new(require_tool("pkcs11-tool"))
                .args(["--module", P11KIT_CLIENT_MODULE, "-O", "--login", "--pin"])
                .arg(token.user_pin()),
        );
        assert!(
            out.stdout.contains("ec-p256"),
            "{}: {out}\n{}",
            server.kind(),
            server.log()
        );
        assert!(server.socket_path().exists());
        assert!(server.pid() > 0);
    }
    let fwd = all[1].as_forwarder().unwrap();
    assert!(fwd.stderr().contains("p11fwd::call"), "{}", fwd.log());
}
