//! What `query_operation` answers: one static [`AlgorithmTable`] per operation.
//!
//! Names follow OpenSSL's default provider, so that keys loaded from the store bind to our
//! keymgmt by their type name and operations are fetched by the names OpenSSL uses. Every
//! algorithm carries `provider=p11fwd`; encoders add `output=` and `structure=`.

use core::ffi::c_int;

use crate::ffi::dispatch::{AlgorithmTable, algorithm, algorithm_table};
use crate::ffi::{asym_cipher, decoder, digest, encoder, exchange, keymgmt, signature, store};
use crate::provider::PROPERTIES;
use crate::sys;

/// `OSSL_OP_STORE`: the `pkcs11` URI scheme.
static STORE: AlgorithmTable = algorithm_table![algorithm(
    c"pkcs11",
    PROPERTIES,
    &store::STORE_FUNCTIONS,
    c"p11fwd: pkcs11: URIs of the forwarded token",
)];

/// `OSSL_OP_KEYMGMT`: keys that live on the token.
static KEYMGMT: AlgorithmTable = algorithm_table![
    algorithm(
        c"RSA:rsaEncryption:1.2.840.113549.1.1.1",
        PROPERTIES,
        &keymgmt::RSA_FUNCTIONS,
        c"p11fwd RSA token keys"
    ),
    algorithm(
        c"RSA-PSS:RSASSA-PSS:1.2.840.113549.1.1.10",
        PROPERTIES,
        &keymgmt::RSA_PSS_FUNCTIONS,
        c"p11fwd RSA-PSS token keys"
    ),
    algorithm(
        c"EC:id-ecPublicKey:1.2.840.10045.2.1",
        PROPERTIES,
        &keymgmt::EC_FUNCTIONS,
        c"p11fwd EC token keys"
    ),
    algorithm(
        c"ED25519:1.3.101.112",
        PROPERTIES,
        &keymgmt::ED25519_FUNCTIONS,
        c"p11fwd Ed25519 token keys"
    ),
    algorithm(
        c"ED448:1.3.101.113",
        PROPERTIES,
        &keymgmt::ED448_FUNCTIONS,
        c"p11fwd Ed448 token keys"
    ),
    algorithm(
        c"X25519:1.3.101.110",
        PROPERTIES,
        &keymgmt::X25519_FUNCTIONS,
        c"p11fwd X25519 token keys"
    ),
    algorithm(
        c"X448:1.3.101.111",
        PROPERTIES,
        &keymgmt::X448_FUNCTIONS,
        c"p11fwd X448 token keys"
    ),
];

/// `OSSL_OP_SIGNATURE`.
static SIGNATURE: AlgorithmTable = algorithm_table![
    algorithm(
        c"RSA:rsaEncryption:1.2.840.113549.1.1.1",
        PROPERTIES,
        &signature::RSA_FUNCTIONS,
        c"p11fwd RSA signatures on the token"
    ),
    algorithm(
        c"ECDSA",
        PROPERTIES,
        &signature::ECDSA_FUNCTIONS,
        c"p11fwd ECDSA on the token"
    ),
    algorithm(
        c"ED25519:1.3.101.112",
        PROPERTIES,
        &signature::ED25519_FUNCTIONS,
        c"p11fwd Ed25519 on the token"
    ),
    algorithm(
        c"ED448:1.3.101.113",
        PROPERTIES,
        &signature::ED448_FUNCTIONS,
        c"p11fwd Ed448 on the token"
    ),
];

/// `OSSL_OP_DIGEST`: local SHA-1/SHA-2.
static DIGEST: AlgorithmTable = algorithm_table![
    algorithm(
        c"SHA1:SHA-1:SSL3-SHA1:1.3.14.3.2.26",
        PROPERTIES,
        &digest::SHA1_FUNCTIONS,
        c"p11fwd SHA-1"
    ),
    algorithm(
        c"SHA2-224:SHA-224:SHA224:2.16.840.1.101.3.4.2.4",
        PROPERTIES,
        &digest::SHA224_FUNCTIONS,
        c"p11fwd SHA-224"
    ),
    algorithm(
        c"SHA2-256:SHA-256:SHA256:2.16.840.1.101.3.4.2.1",
        PROPERTIES,
        &digest::SHA256_FUNCTIONS,
        c"p11fwd SHA-256"
    ),
    algorithm(
        c"SHA2-384:SHA-384:SHA384:2.16.840.1.101.3.4.2.2",
        PROPERTIES,
        &digest::SHA384_FUNCTIONS,
        c"p11fwd SHA-384"
    ),
    algorithm(
        c"SHA2-512:SHA-512:SHA512:2.16.840.1.101.3.4.2.3",
        PROPERTIES,
        &digest::SHA512_FUNCTIONS,
        c"p11fwd SHA-512"
    ),
];

macro_rules! encoders {
    ($($names:literal / $short:literal),* $(,)?) => {
        algorithm_table![
            $(
                algorithm(
                    $names,
                    c"provider=p11fwd,output=der,structure=SubjectPublicKeyInfo",
                    &encoder::SPKI_DER_FUNCTIONS,
                    $short,
                ),
                algorithm(
                    $names,
                    c"provider=p11fwd,output=pem,structure=SubjectPublicKeyInfo",
                    &encoder::SPKI_PEM_FUNCTIONS,
                    $short,
                ),
                algorithm($names, c"provider=p11fwd,output=text", &encoder::TEXT_FUNCTIONS, $short),
                algorithm(
                    $names,
                    c"provider=p11fwd,output=pem,structure=PrivateKeyInfo",
                    &encoder::URI_PEM_FUNCTIONS,
                    $short,
                ),
                algorithm(
                    $names,
                    c"provider=p11fwd,output=der,structure=PrivateKeyInfo",
                    &encoder::URI_DER_FUNCTIONS,
                    $short,
                ),
            )*
        ]
    };
}

/// `OSSL_OP_ENCODER`: public keys (SubjectPublicKeyInfo, text) and, as "PrivateKeyInfo", the
/// URI-PEM file of a token key (no key material).
static ENCODER: AlgorithmTable = encoders![
    c"RSA:rsaEncryption:1.2.840.113549.1.1.1" / c"p11fwd RSA public key",
    c"RSA-PSS:RSASSA-PSS:1.2.840.113549.1.1.10" / c"p11fwd RSA-PSS public key",
    c"EC:id-ecPublicKey:1.2.840.10045.2.1" / c"p11fwd EC public key",
    c"ED25519:1.3.101.112" / c"p11fwd Ed25519 public key",
    c"ED448:1.3.101.113" / c"p11fwd Ed448 public key",
    c"X25519:1.3.101.110" / c"p11fwd X25519 public key",
    c"X448:1.3.101.111" / c"p11fwd X448 public key",
];

/// `OSSL_OP_ASYM_CIPHER`: RSA decryption on the token (encryption in software).
static ASYM_CIPHER: AlgorithmTable = algorithm_table![algorithm(
    c"RSA:rsaEncryption:1.2.840.113549.1.1.1",
    PROPERTIES,
    &asym_cipher::RSA_FUNCTIONS,
    c"p11fwd RSA decryption on the token"
)];
/// `OSSL_OP_KEYEXCH`: ECDH (`CKM_ECDH1_DERIVE`) with token keys.
static KEYEXCH: AlgorithmTable = algorithm_table![
    algorithm(
        c"ECDH",
        PROPERTIES,
        &exchange::FUNCTIONS,
        c"p11fwd ECDH on the token"
    ),
    algorithm(
        c"X25519:1.3.101.110",
        PROPERTIES,
        &exchange::FUNCTIONS,
        c"p11fwd X25519 on the token"
    ),
    algorithm(
        c"X448:1.3.101.111",
        PROPERTIES,
        &exchange::FUNCTIONS,
        c"p11fwd X448 on the token"
    ),
];
/// `OSSL_OP_DECODER`: pkcs11-provider's URI-PEM files (PEM to DER, then DER to a token key).
static DECODER: AlgorithmTable = algorithm_table![
    algorithm(
        c"DER",
        c"provider=p11fwd,input=pem",
        &decoder::PEM_FUNCTIONS,
        c"p11fwd: PKCS#11 PROVIDER URI PEM blocks"
    ),
    algorithm(
        c"RSA:rsaEncryption:1.2.840.113549.1.1.1",
        c"provider=p11fwd,input=der,structure=pk11-uri",
        &decoder::RSA_FUNCTIONS,
        c"p11fwd: RSA token key from a URI-PEM file"
    ),
    algorithm(
        c"RSA-PSS:RSASSA-PSS:1.2.840.113549.1.1.10",
        c"provider=p11fwd,input=der,structure=pk11-uri",
        &decoder::RSA_PSS_FUNCTIONS,
        c"p11fwd: RSA-PSS token key from a URI-PEM file"
    ),
    algorithm(
        c"EC:id-ecPublicKey:1.2.840.10045.2.1",
        c"provider=p11fwd,input=der,structure=pk11-uri",
        &decoder::EC_FUNCTIONS,
        c"p11fwd: EC token key from a URI-PEM file"
    ),
    algorithm(
        c"ED25519:1.3.101.112",
        c"provider=p11fwd,input=der,structure=pk11-uri",
        &decoder::ED25519_FUNCTIONS,
        c"p11fwd: Ed25519 token key from a URI-PEM file"
    ),
    algorithm(
        c"ED448:1.3.101.113",
        c"provider=p11fwd,input=der,structure=pk11-uri",
        &decoder::ED448_FUNCTIONS,
        c"p11fwd: Ed448 token key from a URI-PEM file"
    ),
    algorithm(
        c"X25519:1.3.101.110",
        c"provider=p11fwd,input=der,structure=pk11-uri",
        &decoder::X25519_FUNCTIONS,
        c"p11fwd: X25519 token key from a URI-PEM file"
    ),
    algorithm(
        c"X448:1.3.101.111",
        c"provider=p11fwd,input=der,structure=pk11-uri",
        &decoder::X448_FUNCTIONS,
        c"p11fwd: X448 token key from a URI-PEM file"
    ),
];

/// The table for `operation_id`, `None` for operations p11fwd never implements.
pub(crate) fn for_operation(operation_id: c_int) -> Option<&'static AlgorithmTable> {
    match operation_id {
        sys::OSSL_OP_STORE => Some(&STORE),
        sys::OSSL_OP_KEYMGMT => Some(&KEYMGMT),
        sys::OSSL_OP_SIGNATURE => Some(&SIGNATURE),
        sys::OSSL_OP_DIGEST => Some(&DIGEST),
        sys::OSSL_OP_ASYM_CIPHER => Some(&ASYM_CIPHER),
        sys::OSSL_OP_KEYEXCH => Some(&KEYEXCH),
        sys::OSSL_OP_ENCODER => Some(&ENCODER),
        sys::OSSL_OP_DECODER => Some(&DECODER),
        _ => None,
    }
}
