//! Random bytes from the kernel (`getrandom(2)`), for values that must not be predictable:
//! fresh CKA_IDs, the random TLS premaster used on decryption failures, implicit-rejection
//! secrets. Not OpenSSL's RAND: the provider never calls back into the library context that
//! loaded it.

/// Fills `buf` with random bytes. Aborts the operation by panicking (caught at the C boundary)
/// only if the kernel has no randomness to give, which a running system never lacks.
pub(crate) fn fill(buf: &mut [u8]) {
    let mut done = 0;
    while done < buf.len() {
        let rest = &mut buf[done..];
        // SAFETY: `rest` is a writable buffer of `rest.len()` bytes for the duration of the call.
        let n = unsafe { libc::getrandom(rest.as_mut_ptr().cast(), rest.len(), 0) };
        if n < 0 {
            let err = std::io::Error::last_os_error();
            assert!(
                err.kind() == std::io::ErrorKind::Interrupted,
                "getrandom failed: {err}"
            );
            continue;
        }
        done += n as usize;
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn fills_and_differs() {
        let mut a = [0u8; 32];
        let mut b = [0u8; 32];
        super::fill(&mut a);
        super::fill(&mut b);
        assert_ne!(a, b);
    }
}
