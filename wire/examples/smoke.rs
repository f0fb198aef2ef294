//! Smoke run against a live server: `cargo run -p p11fwd-wire --example smoke -- SOCKET PIN`.
#![allow(clippy::unwrap_used)]
use p11fwd_wire::client::{Client, OutCap};
use p11fwd_wire::consts::*;
use p11fwd_wire::transport::blocking::Options;
use p11fwd_wire::{Attribute, Mechanism};

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let c = Client::connect(args[1].as_ref(), Options::default()).unwrap();
    println!("dialect {:?}", c.dialect());
    c.initialize(None).unwrap();
    println!("{:?}", c.get_info().unwrap());
    let slots = c.slots(true).unwrap();
    println!("slots {slots:x?}");
    let ti = c.get_token_info(slots[0]).unwrap();
    println!("token {}", p11fwd_wire::info::unpad(&ti.label));
    println!("mechs {}", c.mechanisms(slots[0]).unwrap().len());
    let s = c.open_session(slots[0], CKF_SERIAL_SESSION).unwrap();
    println!(
        "wrong pin: {:?}",
        c.login(s, CKU_USER, Some(b"000000")).unwrap_err()
    );
    c.login(s, CKU_USER, Some(args[2].as_bytes())).unwrap();
    let keys = c
        .find_all(s, vec![Attribute::ulong(CKA_CLASS, CKO_PRIVATE_KEY)], 16)
        .unwrap();
    println!("private keys {keys:?}");
    for k in keys {
        let a = c
            .attributes(s, k, &[CKA_LABEL, CKA_KEY_TYPE, CKA_ID], 8)
            .unwrap();
        println!("  {a:?}");
        let kt = a[1].as_ulong().unwrap();
        let mech = if kt == CKK_EC {
            Mechanism::new(CKM_ECDSA)
        } else {
            Mechanism::new(CKM_SHA256_RSA_PKCS)
        };
        c.sign_init(s, Some(mech), k).unwrap();
        println!("  size {:?}", c.sign(s, &[1u8; 32], OutCap::Query).unwrap());
        println!(
            "  sig  {:?}",
            c.sign(s, &[1u8; 32], OutCap::Buffer(512)).unwrap()
        );
    }
    println!(
        "random {:?}",
        c.generate_random(s, OutCap::Buffer(16)).unwrap()
    );
    c.logout(s).unwrap();
    c.close_session(s).unwrap();
    c.finalize().unwrap();
}
