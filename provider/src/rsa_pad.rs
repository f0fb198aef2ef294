//! RSA decryption padding, checked in constant time: PKCS#1 v1.5 type 2 (plain, TLS premaster
//! and implicit rejection) and OAEP, as OpenSSL's `rsa_pk1.c`/`rsa_oaep.c` do it. And the two
//! signature encodings (EMSA-PKCS1-v1_5, EMSA-PSS), for keys the token lets sign only with raw
//! RSA (`CKM_RSA_X_509`): their input is public, so they need no constant-time care.
//!
//! The input is the raw RSA result (`CKM_RSA_X_509` on the token), left-padded to the modulus
//! length. Every function reads every byte of its input and computes the result with masks;
//! the only data-dependent branch is the final "error or data" of the functions that return an
//! error (plain PKCS#1 without implicit rejection, OAEP), exactly where OpenSSL's own functions
//! return -1. Masks go through `black_box` so that the compiler does not turn them back into
//! branches.
//!
//! Implicit rejection follows OpenSSL 3.2 (draft-irtf-cfrg-rsa-guidance): a synthetic message
//! derived with HMAC-SHA256 from a key-derivation key (KDK) and the ciphertext. OpenSSL's KDK is
//! `HMAC(SHA256(d), ciphertext)`; the private exponent never leaves the token, so p11fwd uses a
//! per-key secret of 32 random bytes instead (see [`KdkSecrets`]).

use core::hint::black_box;
use std::collections::HashMap;
use std::sync::{Mutex, OnceLock};

use sha2::Digest as _;
use zeroize::Zeroizing;

use crate::hash::Hash;

/// Size of the TLS premaster secret.
pub(crate) const TLS_PREMASTER_LEN: usize = 48;
/// The PKCS#1 v1.5 padding overhead (00 02, at least 8 padding bytes, 00).
pub(crate) const PKCS1_PADDING_SIZE: usize = 11;

// ---- constant-time helpers (OpenSSL's constant_time.h, on usize masks) ----

#[inline]
fn msb(a: usize) -> usize {
    black_box(0usize.wrapping_sub(a >> (usize::BITS - 1)))
}

/// All ones if `a < b`.
#[inline]
fn ct_lt(a: usize, b: usize) -> usize {
    msb(a ^ ((a ^ b) | (a.wrapping_sub(b) ^ b)))
}

/// All ones if `a >= b`.
#[inline]
fn ct_ge(a: usize, b: usize) -> usize {
    !ct_lt(a, b)
}

/// All ones if `a == 0`.
#[inline]
fn ct_is_zero(a: usize) -> usize {
    msb(!a & a.wrapping_sub(1))
}

/// All ones if `a == b`.
#[inline]
fn ct_eq(a: usize, b: usize) -> usize {
    ct_is_zero(a ^ b)
}

#[inline]
fn ct_select(mask: usize, a: usize, b: usize) -> usize {
    (mask & a) | (!mask & b)
}

#[inline]
fn ct_select_8(mask: usize, a: u8, b: u8) -> u8 {
    let m = mask as u8;
    (m & a) | (!m & b)
}

/// HMAC-SHA256 (RFC 2104).
pub(crate) fn hmac_sha256(key: &[u8], parts: &[&[u8]]) -> [u8; 32] {
    let mut k = Zeroizing::new([0u8; 64]);
    if key.len() > 64 {
        k[..32].copy_from_slice(&sha2::Sha256::digest(key));
    } else {
        k[..key.len()].copy_from_slice(key);
    }
    let mut inner = sha2::Sha256::new();
    let ipad: Zeroizing<Vec<u8>> = Zeroizing::new(k.iter().map(|b| b ^ 0x36).collect());
    inner.update(&*ipad);
    for p in parts {
        inner.update(p);
    }
    let inner = inner.finalize();
    let mut outer = sha2::Sha256::new();
    let opad: Zeroizing<Vec<u8>> = Zeroizing::new(k.iter().map(|b| b ^ 0x5c).collect());
    outer.update(&*opad);
    outer.update(inner);
    outer.finalize().into()
}

/// OpenSSL's `ossl_rsa_prf`: `len` bytes of HMAC-SHA256(kdk, iter || label || bitlen) blocks.
fn rsa_prf(kdk: &[u8; 32], label: &[u8], len: usize) -> Zeroizing<Vec<u8>> {
    let bitlen = u16::try_from(len * 8).unwrap_or(u16::MAX).to_be_bytes();
    let mut out = Zeroizing::new(Vec::with_capacity(len + 32));
    let mut iter: u16 = 0;
    while out.len() < len {
        let block = hmac_sha256(kdk, &[&iter.to_be_bytes(), label, &bitlen]);
        out.extend_from_slice(&block);
        iter = iter.wrapping_add(1);
    }
    out.truncate(len);
    out
}

/// The KDK for one ciphertext: `HMAC(secret, ciphertext left-padded to the modulus length)`.
pub(crate) fn kdk(secret: &[u8; 32], ciphertext: &[u8], modulus_len: usize) -> [u8; 32] {
    let pad = vec![0u8; modulus_len.saturating_sub(ciphertext.len())];
    hmac_sha256(secret, &[&pad, ciphertext])
}

/// Per-key implicit-rejection secrets of this process, by key identity.
///
/// OpenSSL's secret is `SHA256(d)`. p11fwd derives its own from something only the key holder
/// can compute and that is the same in every process: `SHA256(label || x)` where `x` is the raw
/// RSA decryption of a fixed input ([`fixed_input`]) or, for keys without raw RSA, a PKCS#1
/// v1.5 signature of a fixed message (deterministic). Keys that allow neither get a random
/// secret per process. Same ciphertext, same key → same synthetic message.
#[derive(Debug)]
pub(crate) struct KdkSecrets;

fn secrets() -> &'static Mutex<HashMap<String, Zeroizing<[u8; 32]>>> {
    static MAP: OnceLock<Mutex<HashMap<String, Zeroizing<[u8; 32]>>>> = OnceLock::new();
    MAP.get_or_init(|| Mutex::new(HashMap::new()))
}

impl KdkSecrets {
    /// The secret of `key_id`, if it was made in this process.
    pub(crate) fn cached(key_id: &str) -> Option<Zeroizing<[u8; 32]>> {
        secrets()
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .get(key_id)
            .cloned()
    }

    /// Derives, remembers and returns the secret of `key_id` from `x` (see the type docs).
    pub(crate) fn derive(key_id: &str, x: &[u8]) -> Zeroizing<[u8; 32]> {
        let mut h = sha2::Sha256::new();
        h.update(b"p11fwd implicit rejection secret v1\0");
        h.update(x);
        let s = Zeroizing::new(<[u8; 32]>::from(h.finalize()));
        secrets()
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .insert(key_id.to_owned(), s.clone());
        s
    }

    /// A random secret for `key_id`, made once per process.
    pub(crate) fn random(key_id: &str) -> Zeroizing<[u8; 32]> {
        let mut map = secrets()
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        map.entry(key_id.to_owned())
            .or_insert_with(|| {
                let mut s = Zeroizing::new([0u8; 32]);
                crate::ffi::rand::fill(&mut s[..]);
                s
            })
            .clone()
    }
}

/// The fixed raw-RSA input whose decryption keys the implicit-rejection secret: `k` bytes, the
/// first zero (so it is below any modulus of `k` bytes), the rest SHA-256 output.
pub(crate) fn fixed_input(k: usize) -> Vec<u8> {
    let mut out = vec![0u8];
    let mut counter: u32 = 0;
    while out.len() < k {
        let mut h = sha2::Sha256::new();
        h.update(b"p11fwd implicit rejection input v1");
        h.update(counter.to_be_bytes());
        out.extend_from_slice(&h.finalize());
        counter += 1;
    }
    out.truncate(k);
    out
}

/// The fixed message whose PKCS#1 v1.5 signature keys the secret of keys without raw RSA.
pub(crate) const FIXED_MESSAGE: &[u8] = b"p11fwd implicit rejection secret v1";

/// The length and bytes of a synthetic message (OpenSSL 3.2's implicit rejection), for a
/// modulus of `num` bytes.
fn synthetic(kdk: &[u8; 32], num: usize) -> (usize, Zeroizing<Vec<u8>>) {
    const MAX_LEN_GEN_TRIES: usize = 128;
    let message = rsa_prf(kdk, b"message", num);
    let lengths = rsa_prf(kdk, b"length", MAX_LEN_GEN_TRIES * 2);
    let max_sep_offset = num - 2 - 8;
    let mut len_mask = max_sep_offset;
    len_mask |= len_mask >> 1;
    len_mask |= len_mask >> 2;
    len_mask |= len_mask >> 4;
    len_mask |= len_mask >> 8;
    let mut synthetic_length = 0usize;
    for pair in lengths.chunks_exact(2) {
        let candidate = ((usize::from(pair[0]) << 8) | usize::from(pair[1])) & len_mask;
        synthetic_length = ct_select(
            ct_lt(candidate, max_sep_offset),
            candidate,
            synthetic_length,
        );
    }
    (synthetic_length, message)
}

/// Constant-time search for the PKCS#1 type 2 separator: (good mask, index of the zero byte).
fn pkcs1_type2_scan(em: &[u8]) -> (usize, usize) {
    let mut good = ct_is_zero(usize::from(em[0]));
    good &= ct_eq(usize::from(em[1]), 2);
    let mut found_zero = 0usize;
    let mut zero_index = 0usize;
    for (i, &b) in em.iter().enumerate().skip(2) {
        let equals0 = ct_is_zero(usize::from(b));
        zero_index = ct_select(!found_zero & equals0, i, zero_index);
        found_zero |= equals0;
    }
    // At least 8 padding bytes; a missing separator leaves zero_index at 0 and fails here too.
    good &= ct_ge(zero_index, 2 + 8);
    (black_box(good), zero_index)
}

/// PKCS#1 v1.5 decoding with implicit rejection: always a message, the real one if the padding
/// is good, else a synthetic one determined by `kdk`. `em` is the modulus-length raw result.
pub(crate) fn pkcs1_implicit(em: &[u8], kdk: &[u8; 32]) -> Zeroizing<Vec<u8>> {
    let num = em.len();
    let (synthetic_length, synthetic) = synthetic(kdk, num);
    let synth_msg_index = num - synthetic_length;
    let (good, zero_index) = pkcs1_type2_scan(em);
    let msg_index = ct_select(good, zero_index + 1, synth_msg_index);
    // `msg_index` no longer tells whether the padding was good; read both buffers anyway.
    let mut out = Zeroizing::new(Vec::with_capacity(num));
    for i in msg_index..num {
        out.push(ct_select_8(good, em[i], synthetic[i]));
    }
    out
}

/// PKCS#1 v1.5 decoding without implicit rejection (OpenSSL 3.0's default, and 3.2+ with
/// `implicit-rejection=0`): the message, or `None`.
pub(crate) fn pkcs1(em: &[u8]) -> Option<Zeroizing<Vec<u8>>> {
    let num = em.len();
    let (good, zero_index) = pkcs1_type2_scan(em);
    let msg_index = zero_index + 1;
    let mlen = num.saturating_sub(msg_index);
    // Move the message to a fixed place in constant time (OpenSSL's log-shift loop), then cut.
    let mut buf = Zeroizing::new(em.to_vec());
    let window = num - PKCS1_PADDING_SIZE;
    let shift = window.wrapping_sub(mlen);
    let mut step = 1usize;
    while step < window {
        let mask = !ct_eq(step & shift, 0);
        for i in PKCS1_PADDING_SIZE..num - step {
            buf[i] = ct_select_8(mask, buf[i + step], buf[i]);
        }
        step <<= 1;
    }
    let mut out = Zeroizing::new(vec![0u8; window]);
    for (i, o) in out.iter_mut().enumerate() {
        let mask = good & ct_lt(i, mlen);
        *o = ct_select_8(mask, buf[i + PKCS1_PADDING_SIZE], 0);
    }
    if black_box(good) == 0 {
        return None;
    }
    out.truncate(mlen);
    Some(out)
}

/// The TLS premaster check (RFC 5246 §7.4.7.1; OpenSSL's
/// `ossl_rsa_padding_check_PKCS1_type_2_TLS`): always 48 bytes, the decrypted premaster when
/// the padding and the version are right, else `random`.
pub(crate) fn tls_premaster(
    em: &[u8],
    client_version: u32,
    alt_version: u32,
    random: &[u8; TLS_PREMASTER_LEN],
) -> Zeroizing<[u8; TLS_PREMASTER_LEN]> {
    let flen = em.len();
    let mut good = ct_is_zero(usize::from(em[0]));
    good &= ct_eq(usize::from(em[1]), 2);
    let sep = flen - TLS_PREMASTER_LEN - 1;
    for &b in &em[2..sep] {
        good &= !ct_is_zero(usize::from(b));
    }
    good &= ct_is_zero(usize::from(em[sep]));
    let v0 = usize::from(em[flen - TLS_PREMASTER_LEN]);
    let v1 = usize::from(em[flen - TLS_PREMASTER_LEN + 1]);
    let mut version_good = ct_eq(v0, ((client_version >> 8) & 0xff) as usize);
    version_good &= ct_eq(v1, (client_version & 0xff) as usize);
    if alt_version > 0 {
        let mut workaround = ct_eq(v0, ((alt_version >> 8) & 0xff) as usize);
        workaround &= ct_eq(v1, (alt_version & 0xff) as usize);
        version_good |= workaround;
    }
    good &= version_good;
    let good = black_box(good);
    let mut out = Zeroizing::new([0u8; TLS_PREMASTER_LEN]);
    for (i, o) in out.iter_mut().enumerate() {
        *o = ct_select_8(good, em[flen - TLS_PREMASTER_LEN + i], random[i]);
    }
    out
}

/// The TLS premaster from a message the token already unpadded (`CKM_RSA_PKCS`): `msg` is
/// `None` when the token refused the padding. Same answer as [`tls_premaster`].
pub(crate) fn tls_premaster_from_message(
    msg: Option<&[u8]>,
    client_version: u32,
    alt_version: u32,
    random: &[u8; TLS_PREMASTER_LEN],
) -> Zeroizing<[u8; TLS_PREMASTER_LEN]> {
    let zeros = [0u8; TLS_PREMASTER_LEN];
    let (present, m) = match msg {
        Some(m) if m.len() == TLS_PREMASTER_LEN => (usize::MAX, m),
        _ => (0, &zeros[..]),
    };
    let mut version_good = ct_eq(usize::from(m[0]), ((client_version >> 8) & 0xff) as usize);
    version_good &= ct_eq(usize::from(m[1]), (client_version & 0xff) as usize);
    if alt_version > 0 {
        let mut workaround = ct_eq(usize::from(m[0]), ((alt_version >> 8) & 0xff) as usize);
        workaround &= ct_eq(usize::from(m[1]), (alt_version & 0xff) as usize);
        version_good |= workaround;
    }
    let good = black_box(present & version_good);
    let mut out = Zeroizing::new([0u8; TLS_PREMASTER_LEN]);
    for (i, o) in out.iter_mut().enumerate() {
        *o = ct_select_8(good, m[i], random[i]);
    }
    out
}

/// The synthetic message for a ciphertext the token refused (`CKM_RSA_PKCS` with implicit
/// rejection): what [`pkcs1_implicit`] returns for a bad padding.
pub(crate) fn implicit_rejection_message(kdk: &[u8; 32], num: usize) -> Zeroizing<Vec<u8>> {
    let (len, message) = synthetic(kdk, num);
    Zeroizing::new(message[num - len..].to_vec())
}

/// MGF1 with `hash`.
fn mgf1(hash: Hash, seed: &[u8], len: usize) -> Zeroizing<Vec<u8>> {
    let mut out = Zeroizing::new(Vec::with_capacity(len + hash.size()));
    let mut counter: u32 = 0;
    while out.len() < len {
        let mut h = hash.hasher();
        h.update(seed);
        h.update(&counter.to_be_bytes());
        out.extend_from_slice(&h.finish());
        counter = counter.wrapping_add(1);
    }
    out.truncate(len);
    out
}

/// OAEP decoding (RFC 8017 §7.1.2, OpenSSL's `RSA_padding_check_PKCS1_OAEP_mgf1`): the message,
/// or `None` (one answer for every kind of failure).
pub(crate) fn oaep(em: &[u8], md: Hash, mgf1_md: Hash, label: &[u8]) -> Option<Zeroizing<Vec<u8>>> {
    let num = em.len();
    let mdlen = md.size();
    if num < 2 * mdlen + 2 {
        return None;
    }
    let dblen = num - mdlen - 1;
    let mut good = ct_is_zero(usize::from(em[0]));
    let masked_seed = &em[1..1 + mdlen];
    let masked_db = &em[1 + mdlen..];
    let seed_mask = mgf1(mgf1_md, masked_db, mdlen);
    let seed: Zeroizing<Vec<u8>> = Zeroizing::new(
        seed_mask
            .iter()
            .zip(masked_seed)
            .map(|(a, b)| a ^ b)
            .collect(),
    );
    let db_mask = mgf1(mgf1_md, &seed, dblen);
    let db: Zeroizing<Vec<u8>> =
        Zeroizing::new(db_mask.iter().zip(masked_db).map(|(a, b)| a ^ b).collect());
    let lhash = md.digest(label);
    let mut diff = 0usize;
    for (a, b) in db[..mdlen].iter().zip(&lhash) {
        diff |= usize::from(a ^ b);
    }
    good &= ct_is_zero(diff);
    let mut found_one = 0usize;
    let mut one_index = 0usize;
    for (i, &b) in db.iter().enumerate().skip(mdlen) {
        let equals1 = ct_eq(usize::from(b), 1);
        let equals0 = ct_is_zero(usize::from(b));
        one_index = ct_select(!found_one & equals1, i, one_index);
        found_one |= equals1;
        good &= found_one | equals0;
    }
    good &= found_one;
    // From here on `good` is zero unless the plaintext was valid (plaintext awareness).
    if black_box(good) == 0 {
        return None;
    }
    Some(Zeroizing::new(db[one_index + 1..].to_vec()))
}

// ---- signature encodings (RFC 8017 §9), for raw RSA on the token ----

/// EMSA-PKCS1-v1_5 (RFC 8017 §9.2, steps 3-6): `00 01 FF.. 00 || t`, `k` bytes, with `t` the
/// DigestInfo (or, without a digest, the caller's input, as OpenSSL's `RSA_PKCS1_PADDING`).
/// `None` when `t` does not fit with 8 bytes of padding.
pub(crate) fn pkcs1_type1(t: &[u8], k: usize) -> Option<Vec<u8>> {
    let ps = k.checked_sub(t.len() + 3).filter(|&n| n >= 8)?;
    let mut em = Vec::with_capacity(k);
    em.extend_from_slice(&[0x00, 0x01]);
    em.resize(2 + ps, 0xff);
    em.push(0x00);
    em.extend_from_slice(t);
    Some(em)
}

/// EMSA-PSS encoding (RFC 8017 §9.1.1) of the digest `m_hash` for a modulus of `mod_bits` bits,
/// with a random salt of `salt_len` bytes, left-padded to the modulus length (the input of raw
/// RSA). `None` when the digest and salt do not fit.
pub(crate) fn pss_encode(
    m_hash: &[u8],
    md: Hash,
    mgf1_md: Hash,
    salt_len: usize,
    mod_bits: usize,
) -> Option<Vec<u8>> {
    let h_len = md.size();
    if m_hash.len() != h_len || mod_bits < 2 {
        return None;
    }
    let em_bits = mod_bits - 1;
    let em_len = em_bits.div_ceil(8);
    let db_len = em_len.checked_sub(h_len + 1)?;
    let ps_len = db_len.checked_sub(salt_len + 1)?;
    let mut salt = vec![0u8; salt_len];
    crate::ffi::rand::fill(&mut salt);
    // H = Hash(00 x 8 || mHash || salt)
    let mut hasher = md.hasher();
    hasher.update(&[0u8; 8]);
    hasher.update(m_hash);
    hasher.update(&salt);
    let h = hasher.finish();
    // maskedDB = (PS || 01 || salt) xor MGF1(H)
    let mut db = vec![0u8; ps_len];
    db.push(0x01);
    db.extend_from_slice(&salt);
    let mask = mgf1(mgf1_md, &h, db_len);
    for (b, m) in db.iter_mut().zip(mask.iter()) {
        *b ^= m;
    }
    // The leftmost 8 * emLen - emBits bits of maskedDB are zero.
    db[0] &= 0xff >> (8 * em_len - em_bits);
    let k = mod_bits.div_ceil(8);
    let mut em = vec![0u8; k - em_len];
    em.extend_from_slice(&db);
    em.extend_from_slice(&h);
    em.push(0xbc);
    Some(em)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pkcs1_encode(msg: &[u8], num: usize) -> Vec<u8> {
        let mut em = vec![0u8, 2];
        em.extend(std::iter::repeat_n(0x5a, num - 3 - msg.len()));
        em.push(0);
        em.extend_from_slice(msg);
        em
    }

    fn oaep_encode(msg: &[u8], num: usize, md: Hash, label: &[u8]) -> Vec<u8> {
        let mdlen = md.size();
        let dblen = num - mdlen - 1;
        let mut db = md.digest(label);
        db.extend(std::iter::repeat_n(0, dblen - mdlen - 1 - msg.len()));
        db.push(1);
        db.extend_from_slice(msg);
        let seed = vec![0x42u8; mdlen];
        let db_mask = mgf1(md, &seed, dblen);
        let masked_db: Vec<u8> = db.iter().zip(db_mask.iter()).map(|(a, b)| a ^ b).collect();
        let seed_mask = mgf1(md, &masked_db, mdlen);
        let masked_seed: Vec<u8> = seed
            .iter()
            .zip(seed_mask.iter())
            .map(|(a, b)| a ^ b)
            .collect();
        let mut em = vec![0u8];
        em.extend(masked_seed);
        em.extend(masked_db);
        em
    }

    #[test]
    fn masks() {
        assert_eq!(ct_lt(1, 2), usize::MAX);
        assert_eq!(ct_lt(2, 1), 0);
        assert_eq!(ct_lt(2, 2), 0);
        assert_eq!(ct_ge(2, 2), usize::MAX);
        assert_eq!(ct_is_zero(0), usize::MAX);
        assert_eq!(ct_is_zero(7), 0);
        assert_eq!(ct_eq(5, 5), usize::MAX);
        assert_eq!(ct_select(usize::MAX, 1, 2), 1);
        assert_eq!(ct_select(0, 1, 2), 2);
        assert_eq!(ct_lt(usize::MAX, 0), 0);
        assert_eq!(ct_lt(0, usize::MAX), usize::MAX);
    }

    #[test]
    fn hmac_known_answer() {
        // RFC 4231 test case 2.
        let mac = hmac_sha256(b"Jefe", &[b"what do ya want ", b"for nothing?"]);
        assert_eq!(mac[..8], [0x5b, 0xdc, 0xc1, 0x46, 0xbf, 0x60, 0x75, 0x4e]);
        // RFC 4231 test case 6 (a key longer than the block).
        let mac = hmac_sha256(
            &[0xaa; 131],
            &[b"Test Using Larger Than Block-Size Key - Hash Key First"],
        );
        assert_eq!(mac[..8], [0x60, 0xe4, 0x31, 0x59, 0x1e, 0xe0, 0xb6, 0x7f]);
    }

    #[test]
    fn pkcs1_good_and_bad() {
        for len in [0usize, 1, 16, 48, 245] {
            let msg: Vec<u8> = (0..len).map(|i| i as u8 | 1).collect();
            let em = pkcs1_encode(&msg, 256);
            assert_eq!(pkcs1(&em).unwrap().as_slice(), msg);
            let kdk = [7u8; 32];
            assert_eq!(pkcs1_implicit(&em, &kdk).as_slice(), msg);
        }
        let good = pkcs1_encode(b"hello", 256);
        let mut bads = Vec::new();
        let mut b = good.clone();
        b[0] = 1;
        bads.push(b);
        let mut b = good.clone();
        b[1] = 1;
        bads.push(b);
        // Separator too early (fewer than 8 padding bytes).
        let mut b = good.clone();
        b[5] = 0;
        for x in &mut b[6..] {
            if *x == 0 {
                *x = 9;
            }
        }
        bads.push(b);
        // No separator at all.
        let b: Vec<u8> = [0u8, 2]
            .into_iter()
            .chain(std::iter::repeat_n(9, 254))
            .collect();
        bads.push(b);
        let kdk = [3u8; 32];
        for bad in &bads {
            assert!(pkcs1(bad).is_none());
            let synth = pkcs1_implicit(bad, &kdk);
            // Deterministic for a given KDK, and what the token-side path returns.
            assert_eq!(synth, pkcs1_implicit(bad, &kdk));
            assert_eq!(synth, implicit_rejection_message(&kdk, 256));
            assert!(synth.len() <= 256 - 10);
        }
        // Another KDK gives another message.
        assert_ne!(
            implicit_rejection_message(&[3u8; 32], 256),
            implicit_rejection_message(&[4u8; 32], 256)
        );
    }

    #[test]
    fn tls_premaster_checks_padding_and_version() {
        let mut pm = [0u8; 48];
        pm[0] = 3;
        pm[1] = 3;
        for (i, b) in pm.iter_mut().enumerate().skip(2) {
            *b = i as u8;
        }
        let random = [0xeeu8; 48];
        let em = pkcs1_encode(&pm, 256);
        assert_eq!(*tls_premaster(&em, 0x0303, 0, &random), pm);
        assert_eq!(*tls_premaster(&em, 0x0302, 0, &random), random);
        assert_eq!(*tls_premaster(&em, 0x0302, 0x0303, &random), pm);
        let mut bad = em.clone();
        bad[1] = 1;
        assert_eq!(*tls_premaster(&bad, 0x0303, 0, &random), random);
        let short = pkcs1_encode(&pm[..47], 256);
        assert_eq!(*tls_premaster(&short, 0x0303, 0, &random), random);
        assert_eq!(
            *tls_premaster_from_message(Some(&pm), 0x0303, 0, &random),
            pm
        );
        assert_eq!(
            *tls_premaster_from_message(Some(&pm[..47]), 0x0303, 0, &random),
            random
        );
        assert_eq!(
            *tls_premaster_from_message(None, 0x0303, 0, &random),
            random
        );
    }

    #[test]
    fn oaep_round_trips_and_rejects() {
        for (md, label) in [
            (Hash::Sha1, &b""[..]),
            (Hash::Sha256, &b"label"[..]),
            (Hash::Sha512, &b""[..]),
        ] {
            let em = oaep_encode(b"secret", 256, md, label);
            assert_eq!(oaep(&em, md, md, label).unwrap().as_slice(), b"secret");
            assert!(oaep(&em, md, md, b"other").is_none());
            let mut bad = em.clone();
            bad[0] = 1;
            assert!(oaep(&bad, md, md, label).is_none());
            let mut bad = em.clone();
            bad[100] ^= 1;
            assert!(oaep(&bad, md, md, label).is_none());
        }
    }

    /// EMSA-PSS verification (RFC 8017 §9.1.2), for the tests: the salt, or `None`.
    fn pss_verify(em: &[u8], m_hash: &[u8], md: Hash, mod_bits: usize) -> Option<Vec<u8>> {
        let em_bits = mod_bits - 1;
        let em = &em[em.len() - em_bits.div_ceil(8)..];
        let h_len = md.size();
        let (masked, rest) = em.split_at(em.len() - h_len - 1);
        let (h, trailer) = rest.split_at(h_len);
        if trailer != [0xbc] || masked[0] & !(0xff >> (8 * em.len() - em_bits)) != 0 {
            return None;
        }
        let mask = mgf1(md, h, masked.len());
        let mut db: Vec<u8> = masked.iter().zip(mask.iter()).map(|(a, b)| a ^ b).collect();
        db[0] &= 0xff >> (8 * em.len() - em_bits);
        let one = db.iter().position(|&b| b != 0)?;
        if db[one] != 1 {
            return None;
        }
        let salt = db[one + 1..].to_vec();
        let mut hasher = md.hasher();
        hasher.update(&[0u8; 8]);
        hasher.update(m_hash);
        hasher.update(&salt);
        (hasher.finish() == h).then_some(salt)
    }

    #[test]
    fn pkcs1_type1_pads_to_the_modulus() {
        let em = pkcs1_type1(b"digest-info", 64).unwrap();
        assert_eq!(em.len(), 64);
        assert_eq!(&em[..2], [0, 1]);
        assert!(em[2..64 - 12].iter().all(|&b| b == 0xff));
        assert_eq!(em[64 - 12], 0);
        assert_eq!(&em[64 - 11..], b"digest-info");
        assert!(
            pkcs1_type1(&[0u8; 54], 64).is_none(),
            "fewer than 8 padding bytes"
        );
        assert!(pkcs1_type1(&[0u8; 53], 64).is_some());
    }

    #[test]
    fn pss_encodings_verify_for_every_modulus_size_and_salt() {
        let m_hash = Hash::Sha256.digest(b"message");
        for mod_bits in [1024, 1025, 1031, 2048, 2049] {
            for salt_len in [0, 20, 32] {
                let em =
                    pss_encode(&m_hash, Hash::Sha256, Hash::Sha256, salt_len, mod_bits).unwrap();
                assert_eq!(em.len(), mod_bits.div_ceil(8));
                let salt = pss_verify(&em, &m_hash, Hash::Sha256, mod_bits).unwrap();
                assert_eq!(salt.len(), salt_len);
                let other = Hash::Sha256.digest(b"other");
                assert!(pss_verify(&em, &other, Hash::Sha256, mod_bits).is_none());
            }
        }
        // The largest salt that fits, and one byte more.
        let max = 2047usize.div_ceil(8) - 32 - 2;
        assert!(pss_encode(&m_hash, Hash::Sha256, Hash::Sha256, max, 2048).is_some());
        assert!(pss_encode(&m_hash, Hash::Sha256, Hash::Sha256, max + 1, 2048).is_none());
        assert!(pss_encode(&m_hash[..31], Hash::Sha256, Hash::Sha256, 32, 2048).is_none());
    }
}
