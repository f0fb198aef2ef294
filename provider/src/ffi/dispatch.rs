//! Static C tables: `OSSL_DISPATCH` (function tables), `OSSL_ALGORITHM` (what
//! `query_operation` returns) and `OSSL_ITEM` (reason strings), plus the lookup of core upcalls
//! in the `in` table of `OSSL_provider_init`.
//!
//! Tables are plain `static`s built at compile time (no `static mut`, no `Once`). The wrappers
//! exist only to be `Sync` (the C structs hold raw pointers) and to check termination:
//!
//! ```ignore
//! static SIGNATURE_FUNCTIONS: DispatchTable = dispatch_table![
//!     signature_newctx => sig_newctx,
//!     signature_freectx => sig_freectx,
//! ];
//! ```
//!
//! `dispatch_table!` pairs each name with its id and C typedef through the generated
//! `ossl_func!` (core_dispatch.h's `OSSL_CORE_MAKE_FUNC(type, name, args)` with
//! `OSSL_FUNC_<NAME>`), so a function with the wrong signature or a wrong id does not compile.

use core::ffi::{CStr, c_int};

use crate::error::Error;
use crate::sys::{OSSL_ALGORITHM, OSSL_DISPATCH, OSSL_ITEM};

/// The generic function pointer type of `OSSL_DISPATCH::function`.
pub(crate) type AnyFn = unsafe extern "C" fn();

/// The terminating `OSSL_DISPATCH` entry (`OSSL_DISPATCH_END` in 3.2+ headers).
pub(crate) const DISPATCH_END: OSSL_DISPATCH = OSSL_DISPATCH {
    function_id: 0,
    function: None,
};

/// A static, 0-terminated function table.
#[derive(Debug)]
pub(crate) struct DispatchTable(&'static [OSSL_DISPATCH]);

// SAFETY: immutable 'static data: ids and pointers to functions, which are Sync.
unsafe impl Sync for DispatchTable {}

impl DispatchTable {
    /// Wraps `entries`, which must end with exactly one [`DISPATCH_END`].
    pub(crate) const fn new(entries: &'static [OSSL_DISPATCH]) -> Self {
        let mut i = 0;
        while i < entries.len() {
            let is_end = entries[i].function_id == 0;
            assert!(
                is_end == (i + 1 == entries.len()),
                "DispatchTable must end with DISPATCH_END"
            );
            i += 1;
        }
        assert!(
            !entries.is_empty(),
            "DispatchTable must end with DISPATCH_END"
        );
        Self(entries)
    }

    /// The pointer to hand to OpenSSL.
    pub(crate) const fn as_ptr(&'static self) -> *const OSSL_DISPATCH {
        self.0.as_ptr()
    }

    /// The function ids in the table, for tests and traces.
    pub(crate) fn ids(&self) -> impl Iterator<Item = c_int> + '_ {
        self.0
            .iter()
            .map(|d| d.function_id)
            .take_while(|&id| id != 0)
    }
}

/// One `OSSL_DISPATCH` entry from a dispatch id, the C typedef (an `Option<unsafe extern "C"
/// fn(..)>` alias) and a function. Used by `dispatch_table!` through `ossl_func!`.
macro_rules! dispatch_entry {
    ($id:expr, $fn_type:ty, $function:expr) => {
        $crate::sys::OSSL_DISPATCH {
            function_id: $id,
            function: {
                // The typed value first: a signature that does not match the typedef fails here.
                let typed: $fn_type = Some($function);
                // SAFETY: `Option<unsafe extern "C" fn(..)>` and `Option<unsafe extern "C" fn()>`
                // have the same size and niche (NULL is None); OpenSSL casts the pointer back
                // to the typedef of `$id` before calling it, exactly as C providers do.
                unsafe {
                    ::core::mem::transmute::<
                        $fn_type,
                        ::core::option::Option<$crate::ffi::dispatch::AnyFn>,
                    >(typed)
                }
            },
        }
    };
}
pub(crate) use dispatch_entry;

/// Declares a [`DispatchTable`]: `dispatch_table![provider_teardown => my_teardown, ...]`, with
/// the `OSSL_CORE_MAKE_FUNC` names of core_dispatch.h. The END entry is appended.
macro_rules! dispatch_table {
    ($($name:ident => $function:expr),* $(,)?) => {
        $crate::ffi::dispatch::DispatchTable::new({
            // A const item, so the array is 'static (entries are not promotable temporaries).
            const ENTRIES: &[$crate::sys::OSSL_DISPATCH] = &[
                $($crate::sys::ossl_func!($name, [$crate::ffi::dispatch::dispatch_entry] $function),)*
                $crate::ffi::dispatch::DISPATCH_END,
            ];
            ENTRIES
        })
    };
}
pub(crate) use dispatch_table;

/// The terminating `OSSL_ALGORITHM` entry.
pub(crate) const ALGORITHM_END: OSSL_ALGORITHM = OSSL_ALGORITHM {
    algorithm_names: core::ptr::null(),
    property_definition: core::ptr::null(),
    implementation: core::ptr::null(),
    algorithm_description: core::ptr::null(),
};

/// One algorithm: `names` is OpenSSL's colon-separated name list (`"RSA:rsaEncryption"`),
/// `properties` the property definition (see `provider::PROPERTIES`).
pub(crate) const fn algorithm(
    names: &'static CStr,
    properties: &'static CStr,
    implementation: &'static DispatchTable,
    description: &'static CStr,
) -> OSSL_ALGORITHM {
    OSSL_ALGORITHM {
        algorithm_names: names.as_ptr(),
        property_definition: properties.as_ptr(),
        implementation: implementation.as_ptr(),
        algorithm_description: description.as_ptr(),
    }
}

/// A static, NULL-name-terminated algorithm table for one operation.
#[derive(Debug)]
pub(crate) struct AlgorithmTable(&'static [OSSL_ALGORITHM]);

// SAFETY: immutable 'static data pointing to 'static strings and Sync dispatch tables.
unsafe impl Sync for AlgorithmTable {}

impl AlgorithmTable {
    /// Wraps `entries`, which must end with exactly one [`ALGORITHM_END`].
    pub(crate) const fn new(entries: &'static [OSSL_ALGORITHM]) -> Self {
        let mut i = 0;
        while i < entries.len() {
            let is_end = entries[i].algorithm_names.is_null();
            assert!(
                is_end == (i + 1 == entries.len()),
                "AlgorithmTable must end with ALGORITHM_END"
            );
            i += 1;
        }
        assert!(
            !entries.is_empty(),
            "AlgorithmTable must end with ALGORITHM_END"
        );
        Self(entries)
    }

    /// Whether the table has no algorithms (`query_operation` then answers NULL).
    pub(crate) const fn is_empty(&self) -> bool {
        self.0.len() == 1
    }

    /// The number of algorithms.
    pub(crate) const fn len(&self) -> usize {
        self.0.len() - 1
    }

    /// The pointer to hand to OpenSSL.
    pub(crate) const fn as_ptr(&'static self) -> *const OSSL_ALGORITHM {
        self.0.as_ptr()
    }
}

/// Declares an [`AlgorithmTable`]: `algorithm_table![algorithm(c"pkcs11", PROPERTIES, &STORE,
/// c"p11fwd pkcs11: URI store"), ...]`. The END entry is appended.
macro_rules! algorithm_table {
    ($($entry:expr),* $(,)?) => {
        $crate::ffi::dispatch::AlgorithmTable::new({
            const ENTRIES: &[$crate::sys::OSSL_ALGORITHM] = &[
                $($entry,)*
                $crate::ffi::dispatch::ALGORITHM_END,
            ];
            ENTRIES
        })
    };
}
pub(crate) use algorithm_table;

/// A static, 0-id-terminated `OSSL_ITEM` table (reason strings).
#[derive(Debug)]
pub(crate) struct ItemTable(&'static [OSSL_ITEM]);

// SAFETY: immutable 'static data pointing to 'static C strings that OpenSSL only reads.
unsafe impl Sync for ItemTable {}

impl ItemTable {
    /// Wraps `items`, which must end with exactly one `{0, NULL}` entry.
    pub(crate) const fn new(items: &'static [OSSL_ITEM]) -> Self {
        let mut i = 0;
        while i < items.len() {
            let is_end = items[i].id == 0;
            assert!(
                is_end == (i + 1 == items.len()),
                "ItemTable must end with one ITEM_END"
            );
            i += 1;
        }
        assert!(!items.is_empty(), "ItemTable must end with ITEM_END");
        Self(items)
    }

    /// The pointer to hand to OpenSSL.
    pub(crate) const fn as_ptr(&'static self) -> *const OSSL_ITEM {
        self.0.as_ptr()
    }
}

/// One `OSSL_ITEM` naming `id` with `text`.
pub(crate) const fn item(id: u32, text: &'static CStr) -> OSSL_ITEM {
    OSSL_ITEM {
        id,
        // OSSL_ITEM::ptr is `void *` but OpenSSL only reads through it.
        ptr: text.as_ptr().cast_mut().cast(),
    }
}

/// The terminating `OSSL_ITEM`.
pub(crate) const ITEM_END: OSSL_ITEM = OSSL_ITEM {
    id: 0,
    ptr: core::ptr::null_mut(),
};

/// The core's function table (`in` of `OSSL_provider_init`), for upcall lookup with
/// [`core_upcall!`]. It is a static array inside libcrypto, valid for the life of the process.
#[derive(Debug, Clone, Copy)]
pub(crate) struct CoreDispatch(*const OSSL_DISPATCH);

// SAFETY: a pointer to libcrypto's immutable, process-lifetime core dispatch table.
unsafe impl Send for CoreDispatch {}
// SAFETY: as above; it is only read.
unsafe impl Sync for CoreDispatch {}

impl CoreDispatch {
    /// Wraps the `in` table.
    ///
    /// # Safety
    ///
    /// `ptr` is NULL or the 0-terminated dispatch table the core passed to `OSSL_provider_init`
    /// (valid for the life of the process).
    pub(crate) unsafe fn from_ptr(ptr: *const OSSL_DISPATCH) -> Result<Self, Error> {
        if ptr.is_null() {
            return Err(Error::NullPointer("core dispatch table"));
        }
        Ok(Self(ptr))
    }

    /// The raw table (for `OSSL_LIB_CTX_new_child(handle, in)`).
    pub(crate) fn as_ptr(self) -> *const OSSL_DISPATCH {
        self.0
    }

    /// The untyped function registered under `id`, if the core offers it. Use
    /// [`core_upcall!`], which also casts it to its typedef.
    pub(crate) fn find(self, id: c_int) -> Option<AnyFn> {
        let mut entry = self.0;
        loop {
            // SAFETY: `entry` is inside the 0-terminated table (`from_ptr` contract); we stop at
            // the terminator.
            let d = unsafe { &*entry };
            if d.function_id == 0 {
                return None;
            }
            if d.function_id == id {
                return d.function;
            }
            // SAFETY: `d` is not the terminator, so the next entry exists.
            entry = unsafe { entry.add(1) };
        }
    }
}

/// Looks up a core upcall by its `OSSL_CORE_MAKE_FUNC` name and returns it as its typedef
/// (`Option<unsafe extern "C" fn(..)>`): `core_upcall!(core_in, core_get_params)`.
macro_rules! core_upcall {
    ($core:expr, $name:ident) => {
        $crate::sys::ossl_func!($name, [$crate::ffi::dispatch::core_upcall] @cast $core)
    };
    ($id:expr, $fn_type:ty, @cast $core:expr) => {{
        let found: ::core::option::Option<$crate::ffi::dispatch::AnyFn> = $core.find($id);
        // SAFETY: the core registered this function under `$id`, whose C typedef is `$fn_type`
        // (the `ossl_func!` pairing); both Option types are one nullable function pointer.
        unsafe { ::core::mem::transmute::<::core::option::Option<$crate::ffi::dispatch::AnyFn>, $fn_type>(found) }
    }};
}
pub(crate) use core_upcall;

#[cfg(test)]
mod tests {
    use core::ffi::c_void;

    use super::*;
    use crate::sys;

    unsafe extern "C" fn teardown(_provctx: *mut c_void) {}

    unsafe extern "C" fn get_params(_provctx: *mut c_void, _params: *mut sys::OSSL_PARAM) -> c_int {
        7
    }

    static TABLE: DispatchTable = dispatch_table![
        provider_teardown => teardown,
        provider_get_params => get_params,
    ];

    static ALGORITHMS: AlgorithmTable =
        algorithm_table![algorithm(c"pkcs11", c"provider=p11fwd", &TABLE, c"test")];

    static EMPTY: AlgorithmTable = algorithm_table![];

    #[test]
    fn tables_carry_ids_and_terminators() {
        assert_eq!(
            TABLE.ids().collect::<Vec<_>>(),
            [
                sys::OSSL_FUNC_PROVIDER_TEARDOWN,
                sys::OSSL_FUNC_PROVIDER_GET_PARAMS
            ]
        );
        assert_eq!(ALGORITHMS.len(), 1);
        assert!(!ALGORITHMS.is_empty());
        assert!(EMPTY.is_empty());
    }

    #[test]
    fn core_upcall_finds_and_types_a_function() {
        // The provider table doubles as a fake `in` table: lookup is by id only.
        // SAFETY: a 0-terminated static table.
        let core = unsafe { CoreDispatch::from_ptr(TABLE.as_ptr()) }.unwrap();
        let f = core_upcall!(core, provider_get_params).expect("registered");
        // SAFETY: `get_params` ignores its arguments.
        let rc = unsafe { f(core::ptr::null_mut(), core::ptr::null_mut()) };
        assert_eq!(rc, 7);
        assert!(core_upcall!(core, core_get_libctx).is_none());
    }
}
