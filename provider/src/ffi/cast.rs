//! Ownership of the opaque objects OpenSSL holds for us, and raw-pointer conversions.
//!
//! OpenSSL sees provctx, keydata, signature contexts and store contexts as `void *`. Each Rust
//! type behind such a pointer implements [`Castable`] (after rustls-ffi), which fixes once how C
//! owns it:
//! - [`OwnershipArc`] (provctx, keydata): shared and `Sync`; objects that outlive a callback
//!   take their own reference with [`ArcCastable::clone_arc`]. `free`/`teardown` calls
//!   [`ArcCastable::arc_from_raw`].
//! - [`OwnershipBox`] (operation contexts such as a sigctx or store ctx): exactly one owner, and
//!   OpenSSL never uses one context from two threads at once, so callbacks may take `&mut`
//!   ([`BoxCastable::borrow_mut`]). `freectx` calls [`BoxCastable::from_raw`].
//!
//! [`Castable::borrow`] gives a shared reference for the length of a callback for both.
//! All `Box`/`Arc` raw conversions of the crate are in this file.

use core::ffi::{CStr, c_char, c_void};
use std::sync::Arc;

use crate::error::Error;

/// Marker: C holds the only pointer to a `Box<T>`.
#[derive(Debug)]
pub(crate) enum OwnershipBox {}

/// Marker: C holds one strong reference of an `Arc<T>`.
#[derive(Debug)]
pub(crate) enum OwnershipArc {}

/// A Rust type that OpenSSL holds as `void *`.
pub(crate) trait Castable: Sized + Send + Sync + 'static {
    /// [`OwnershipBox`] or [`OwnershipArc`].
    type Ownership;
    /// What the pointer is called in the OpenSSL docs ("provctx", "keydata"), for errors.
    const WHAT: &'static str;

    /// Borrows the object behind `ptr` for the duration of a callback.
    ///
    /// # Safety
    ///
    /// `ptr` is NULL or was returned by this type's `into_raw`/`arc_into_raw` and not freed yet,
    /// and for [`OwnershipBox`] types no `&mut` to it exists for `'a`.
    unsafe fn borrow<'a>(ptr: *mut c_void) -> Result<&'a Self, Error> {
        // SAFETY: per the contract, a non-NULL `ptr` points to a live `Self` (Box and Arc both
        // point at the value itself) that is not mutably borrowed.
        unsafe { ptr.cast::<Self>().as_ref() }.ok_or(Error::NullPointer(Self::WHAT))
    }
}

/// Conversions for [`OwnershipBox`] types.
pub(crate) trait BoxCastable: Castable<Ownership = OwnershipBox> {
    /// Moves `self` to the heap and hands the pointer to C.
    fn into_raw(self) -> *mut c_void {
        Box::into_raw(Box::new(self)).cast()
    }

    /// Takes the object back from C (to drop it, usually). `None` for NULL.
    ///
    /// # Safety
    ///
    /// `ptr` is NULL or came from [`BoxCastable::into_raw`] of `Self` and is not used afterwards.
    unsafe fn from_raw(ptr: *mut c_void) -> Option<Box<Self>> {
        // SAFETY: per the contract, a non-NULL `ptr` is a `Box<Self>` pointer given up by
        // `into_raw`, and C will not use it again.
        (!ptr.is_null()).then(|| unsafe { Box::from_raw(ptr.cast::<Self>()) })
    }

    /// Borrows the object mutably for the duration of a callback.
    ///
    /// # Safety
    ///
    /// As [`Castable::borrow`], and no other reference to the object exists for `'a` (OpenSSL
    /// does not call into one operation context from two threads at once).
    unsafe fn borrow_mut<'a>(ptr: *mut c_void) -> Result<&'a mut Self, Error> {
        // SAFETY: per the contract, a non-NULL `ptr` is a live, unaliased `Box<Self>` value.
        unsafe { ptr.cast::<Self>().as_mut() }.ok_or(Error::NullPointer(Self::WHAT))
    }
}

impl<T: Castable<Ownership = OwnershipBox>> BoxCastable for T {}

/// Conversions for [`OwnershipArc`] types.
pub(crate) trait ArcCastable: Castable<Ownership = OwnershipArc> {
    /// Hands one strong reference to C.
    fn arc_into_raw(this: Arc<Self>) -> *mut c_void {
        Arc::into_raw(this).cast_mut().cast()
    }

    /// Takes C's strong reference back (to drop it, usually). `None` for NULL.
    ///
    /// # Safety
    ///
    /// `ptr` is NULL or came from [`ArcCastable::arc_into_raw`] of `Self`, and C gives up that
    /// reference (does not use `ptr` afterwards).
    unsafe fn arc_from_raw(ptr: *mut c_void) -> Option<Arc<Self>> {
        // SAFETY: per the contract, a non-NULL `ptr` is a strong reference made by
        // `Arc::into_raw`, which C hands back.
        (!ptr.is_null()).then(|| unsafe { Arc::from_raw(ptr.cast_const().cast::<Self>()) })
    }

    /// The object behind C's only reference, mutably: for a keydata that `new` just made and
    /// `import` fills in before anyone else sees it. Fails if the object is shared.
    ///
    /// # Safety
    ///
    /// `ptr` is NULL or a live reference made by [`ArcCastable::arc_into_raw`] of `Self`, and
    /// C does not use the object from another thread for `'a`.
    unsafe fn unique_mut<'a>(ptr: *mut c_void) -> Result<&'a mut Self, Error> {
        if ptr.is_null() {
            return Err(Error::NullPointer(Self::WHAT));
        }
        // SAFETY: per the contract, a live strong reference; `ManuallyDrop` leaves it to C.
        let mut arc =
            core::mem::ManuallyDrop::new(unsafe { Arc::from_raw(ptr.cast_const().cast::<Self>()) });
        let unique: *mut Self = Arc::get_mut(&mut arc).ok_or(Error::Internal(
            "the object is shared and cannot be changed",
        ))?;
        // SAFETY: `get_mut` proved this is the only reference; the allocation lives as long as
        // C's reference, which C keeps for 'a.
        Ok(unsafe { &mut *unique })
    }

    /// A new strong reference for Rust, while C keeps its own (e.g. keydata holding provctx).
    ///
    /// # Safety
    ///
    /// `ptr` is NULL or came from [`ArcCastable::arc_into_raw`] of `Self` and is still live.
    unsafe fn clone_arc(ptr: *mut c_void) -> Result<Arc<Self>, Error> {
        if ptr.is_null() {
            return Err(Error::NullPointer(Self::WHAT));
        }
        let ptr = ptr.cast_const().cast::<Self>();
        // SAFETY: per the contract, `ptr` is a live strong reference made by `Arc::into_raw`;
        // incrementing first and then taking ownership of one reference leaves C's intact.
        unsafe { Arc::increment_strong_count(ptr) };
        // SAFETY: the reference counted just above is the one we take.
        Ok(unsafe { Arc::from_raw(ptr) })
    }
}

impl<T: Castable<Ownership = OwnershipArc>> ArcCastable for T {}

/// Borrows a C string argument.
///
/// # Safety
///
/// `ptr` is NULL or points to a NUL-terminated string that stays valid and unchanged for `'a`.
pub(crate) unsafe fn c_str<'a>(ptr: *const c_char, what: &'static str) -> Result<&'a CStr, Error> {
    if ptr.is_null() {
        return Err(Error::NullPointer(what));
    }
    // SAFETY: non-NULL, and per the contract NUL-terminated and valid for 'a.
    Ok(unsafe { CStr::from_ptr(ptr) })
}

/// Borrows a byte buffer argument; NULL is accepted for an empty buffer.
///
/// # Safety
///
/// `ptr` is NULL or points to `len` readable bytes that stay valid and unchanged for `'a`.
pub(crate) unsafe fn bytes<'a>(
    ptr: *const u8,
    len: usize,
    what: &'static str,
) -> Result<&'a [u8], Error> {
    if ptr.is_null() {
        return if len == 0 {
            Ok(&[])
        } else {
            Err(Error::NullPointer(what))
        };
    }
    // SAFETY: non-NULL, and per the contract `len` bytes are readable for 'a.
    Ok(unsafe { core::slice::from_raw_parts(ptr, len) })
}

/// Writes an out-parameter (`*out = value`).
///
/// # Safety
///
/// `ptr` is NULL or valid for a write of `T` (the previous value is not dropped).
pub(crate) unsafe fn write_out<T>(ptr: *mut T, value: T, what: &'static str) -> Result<(), Error> {
    if ptr.is_null() {
        return Err(Error::NullPointer(what));
    }
    // SAFETY: non-NULL and, per the contract, valid for writes.
    unsafe { ptr.write(value) };
    Ok(())
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicUsize, Ordering};

    use super::*;

    static DROPS: AtomicUsize = AtomicUsize::new(0);

    struct Shared(u32);
    impl Castable for Shared {
        type Ownership = OwnershipArc;
        const WHAT: &'static str = "shared";
    }
    impl Drop for Shared {
        fn drop(&mut self) {
            DROPS.fetch_add(1, Ordering::SeqCst);
        }
    }

    struct Owned(Vec<u8>);
    impl Castable for Owned {
        type Ownership = OwnershipBox;
        const WHAT: &'static str = "owned";
    }

    #[test]
    fn arc_round_trip_keeps_counts_right() {
        let raw = Shared::arc_into_raw(Arc::new(Shared(7)));
        // SAFETY: `raw` came from arc_into_raw and is live until arc_from_raw below.
        let shared = unsafe { Shared::borrow(raw) }.unwrap();
        assert_eq!(shared.0, 7);
        // SAFETY: as above.
        let extra = unsafe { Shared::clone_arc(raw) }.unwrap();
        assert_eq!(Arc::strong_count(&extra), 2);
        drop(extra);
        assert_eq!(DROPS.load(Ordering::SeqCst), 0);
        // SAFETY: C gives its reference back; `raw` is not used again.
        drop(unsafe { Shared::arc_from_raw(raw) });
        assert_eq!(DROPS.load(Ordering::SeqCst), 1);
    }

    #[test]
    fn box_round_trip_and_null() {
        let raw = Owned(vec![1, 2]).into_raw();
        // SAFETY: `raw` came from into_raw; no other reference exists.
        unsafe { Owned::borrow_mut(raw) }.unwrap().0.push(3);
        // SAFETY: handed back once.
        let owned = unsafe { Owned::from_raw(raw) }.unwrap();
        assert_eq!(owned.0, [1, 2, 3]);
        // SAFETY: NULL is allowed.
        assert!(unsafe { Owned::from_raw(core::ptr::null_mut()) }.is_none());
        // SAFETY: NULL is allowed.
        let err = unsafe { Owned::borrow(core::ptr::null_mut()) }
            .err()
            .unwrap();
        assert_eq!(err.message(), "NULL owned");
    }

    #[test]
    fn pointer_helpers_reject_null() {
        // SAFETY: NULL is an accepted input of every helper.
        let uri = unsafe { c_str(core::ptr::null(), "uri") };
        assert!(uri.is_err());
        // SAFETY: as above.
        let empty = unsafe { bytes(core::ptr::null(), 0, "tbs") };
        assert_eq!(empty.unwrap(), &[] as &[u8]);
        // SAFETY: as above.
        let missing = unsafe { bytes(core::ptr::null(), 1, "tbs") };
        assert!(missing.is_err());
        // SAFETY: as above.
        let out = unsafe { write_out(core::ptr::null_mut::<u8>(), 1, "out") };
        assert!(out.is_err());
    }
}
