//! Names of PKCS#11 constants, for logs and error messages.

use crate::tables;

fn lookup(table: &'static [(u64, &'static str)], v: u64) -> Option<&'static str> {
    table
        .binary_search_by_key(&v, |(k, _)| *k)
        .ok()
        .map(|i| table[i].1)
}

/// `CKR_*` name of a return value.
pub fn rv_name(v: u64) -> Option<&'static str> {
    lookup(&tables::RV_NAMES, v)
}

/// `CKA_*` name of an attribute type.
pub fn attr_name(v: u64) -> Option<&'static str> {
    lookup(&tables::ATTR_NAMES, v)
}

/// `CKM_*` name of a mechanism type.
pub fn mech_name(v: u64) -> Option<&'static str> {
    lookup(&tables::MECH_NAMES, v)
}

/// `CKO_*` name of an object class.
pub fn class_name(v: u64) -> Option<&'static str> {
    lookup(&tables::CLASS_NAMES, v)
}

/// `CKK_*` name of a key type.
pub fn key_type_name(v: u64) -> Option<&'static str> {
    lookup(&tables::KEY_TYPE_NAMES, v)
}

/// A printable name: the constant's name, or its value in hex.
pub fn or_hex(name: Option<&'static str>, v: u64) -> String {
    match name {
        Some(n) => n.to_owned(),
        None => format!("0x{v:x}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_resolve() {
        assert_eq!(rv_name(0xa0), Some("CKR_PIN_INCORRECT"));
        assert_eq!(mech_name(0x1041), Some("CKM_ECDSA"));
        assert_eq!(attr_name(0x40000600), Some("CKA_ALLOWED_MECHANISMS"));
        assert_eq!(or_hex(rv_name(0x8765_4321), 0x8765_4321), "0x87654321");
        assert!(tables::RV_NAMES.windows(2).all(|w| w[0].0 < w[1].0));
        assert!(tables::MECH_NAMES.windows(2).all(|w| w[0].0 < w[1].0));
    }
}
