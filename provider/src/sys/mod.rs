//! Raw OpenSSL 3 declarations, and nothing else: no calls happen here (they are in `crate::ffi`).
//!
//! - `generated`: committed output of `provider/gen/bindgen.sh` (types, `OSSL_FUNC_*_fn`
//!   typedefs, every `OSSL_FUNC_*`/`OSSL_OP_*`/`OSSL_PARAM_*` integer and every core_names.h /
//!   core_object.h name as `&CStr`, and the `ossl_func!` id/typedef pairing).
//! - openssl-sys for what it already declares (`OSSL_PARAM`, `ERR_*`), so that no C type is
//!   declared twice.
//! - `libcrypto`: the few libcrypto functions openssl-sys lacks.
//!
//! The test at the bottom compiles a C program against the installed headers and fails if any
//! committed constant or struct layout disagrees with them.

// Generated code keeps the C names and is not all used; bindgen makes every item `pub`.
#[allow(
    non_camel_case_types,
    non_snake_case,
    non_upper_case_globals,
    dead_code,
    unreachable_pub,
    unused_imports,
    clippy::all
)]
mod generated;
mod libcrypto;

pub(crate) use generated::ossl_func;
pub use generated::*;
pub use libcrypto::*;
pub use openssl_sys::{
    ERR_GET_LIB, ERR_GET_REASON, ERR_PACK, ERR_STRING_DATA, ERR_get_next_error_library,
    ERR_load_strings, ERR_new, ERR_set_debug, ERR_set_error, OSSL_PARAM,
};

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;
    use std::fmt::Write as _;
    use std::mem::{offset_of, size_of};
    use std::process::Command;

    use super::*;

    /// A C struct's name, `size_of`, and `(field, offset_of)` pairs.
    type Layout = (&'static str, usize, Vec<(&'static str, usize)>);

    /// Struct layouts the provider relies on.
    fn rust_layouts() -> Vec<Layout> {
        vec![
            (
                "OSSL_DISPATCH",
                size_of::<OSSL_DISPATCH>(),
                vec![
                    ("function_id", offset_of!(OSSL_DISPATCH, function_id)),
                    ("function", offset_of!(OSSL_DISPATCH, function)),
                ],
            ),
            (
                "OSSL_ALGORITHM",
                size_of::<OSSL_ALGORITHM>(),
                vec![
                    (
                        "algorithm_names",
                        offset_of!(OSSL_ALGORITHM, algorithm_names),
                    ),
                    (
                        "property_definition",
                        offset_of!(OSSL_ALGORITHM, property_definition),
                    ),
                    ("implementation", offset_of!(OSSL_ALGORITHM, implementation)),
                    (
                        "algorithm_description",
                        offset_of!(OSSL_ALGORITHM, algorithm_description),
                    ),
                ],
            ),
            (
                "OSSL_ITEM",
                size_of::<OSSL_ITEM>(),
                vec![
                    ("id", offset_of!(OSSL_ITEM, id)),
                    ("ptr", offset_of!(OSSL_ITEM, ptr)),
                ],
            ),
            (
                "OSSL_PARAM",
                size_of::<OSSL_PARAM>(),
                vec![
                    ("key", offset_of!(OSSL_PARAM, key)),
                    ("data_type", offset_of!(OSSL_PARAM, data_type)),
                    ("data", offset_of!(OSSL_PARAM, data)),
                    ("data_size", offset_of!(OSSL_PARAM, data_size)),
                    ("return_size", offset_of!(OSSL_PARAM, return_size)),
                ],
            ),
        ]
    }

    /// A C program that prints, for every committed name, `I NAME <u64>`, `S NAME <hex bytes>`
    /// or `MISSING NAME`, and `L TYPE FIELD OFFSET` / `L TYPE sizeof SIZE` for the layouts.
    fn c_program() -> String {
        let mut c = String::from(
            "#include <stdio.h>\n#include <stddef.h>\n#include <openssl/core.h>\n\
             #include <openssl/core_dispatch.h>\n#include <openssl/core_names.h>\n\
             #include <openssl/core_object.h>\n#include <openssl/params.h>\n\
             static void pint(const char *n, unsigned long long v) { printf(\"I %s %llu\\n\", n, v); }\n\
             static void pstr(const char *n, const char *s) {\n\
               printf(\"S %s \", n); for (; *s; s++) printf(\"%02x\", (unsigned char)*s); printf(\"\\n\"); }\n\
             #define P(n) _Generic((n), char *: pstr, const char *: pstr, default: pint)(#n, (n))\n\
             int main(void) {\n",
        );
        let names = INT_CONSTANTS
            .iter()
            .map(|(n, _)| *n)
            .chain(STR_CONSTANTS.iter().map(|(n, _)| *n));
        for name in names {
            writeln!(
                c,
                "#ifdef {name}\n  P({name});\n#else\n  printf(\"MISSING {name}\\n\");\n#endif"
            )
            .unwrap();
        }
        for (ty, _, fields) in rust_layouts() {
            writeln!(c, "  printf(\"L {ty} sizeof %zu\\n\", sizeof({ty}));").unwrap();
            for (field, _) in fields {
                writeln!(
                    c,
                    "  printf(\"L {ty} {field} %zu\\n\", offsetof({ty}, {field}));"
                )
                .unwrap();
            }
        }
        c.push_str("  return 0;\n}\n");
        c
    }

    fn run_c_program(source: &str) -> String {
        let dir = tempfile::tempdir().unwrap();
        let src = dir.path().join("check.c");
        let exe = dir.path().join("check");
        std::fs::write(&src, source).unwrap();
        let cc = std::env::var("CC").unwrap_or_else(|_| "cc".to_owned());
        let mut cmd = Command::new(&cc);
        cmd.arg("-std=c11");
        // Same override as openssl-sys uses for a non-system OpenSSL.
        if let Ok(include) = std::env::var("OPENSSL_INCLUDE_DIR") {
            cmd.arg(format!("-I{include}"));
        }
        let out = cmd
            .arg(&src)
            .arg("-o")
            .arg(&exe)
            .output()
            .unwrap_or_else(|e| {
                panic!("cannot run the C compiler `{cc}` (needed by openssl-sys too): {e}")
            });
        assert!(
            out.status.success(),
            "the header check program does not compile against the installed OpenSSL headers \
             (a committed name is not defined there?):\n{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let out = Command::new(&exe).output().unwrap();
        assert!(out.status.success());
        String::from_utf8(out.stdout).unwrap()
    }

    /// Fails loudly if `generated.rs` disagrees with the installed headers: a different id or
    /// name string, a name the headers no longer define, or a different struct layout.
    #[test]
    fn constants_match_installed_headers() {
        let output = run_c_program(&c_program());
        let ints: BTreeMap<&str, u64> = INT_CONSTANTS.iter().copied().collect();
        let strs: BTreeMap<&str, &[u8]> = STR_CONSTANTS
            .iter()
            .map(|(n, v)| (*n, v.to_bytes()))
            .collect();
        let layouts: BTreeMap<(String, String), usize> = rust_layouts()
            .into_iter()
            .flat_map(|(ty, size, fields)| {
                std::iter::once(((ty.to_owned(), "sizeof".to_owned()), size)).chain(
                    fields
                        .into_iter()
                        .map(move |(f, o)| ((ty.to_owned(), f.to_owned()), o)),
                )
            })
            .collect();

        let mut problems = Vec::new();
        let mut checked = 0;
        for line in output.lines() {
            let parts: Vec<&str> = line.split(' ').collect();
            match parts.as_slice() {
                ["MISSING", name] => problems.push(format!("{name}: not defined by the headers")),
                ["I", name, value] => {
                    let header: u64 = value.parse().unwrap();
                    if ints[name] != header {
                        problems.push(format!("{name}: rust {} != header {header}", ints[name]));
                    }
                    checked += 1;
                }
                ["S", name, hex] => {
                    let header = hex::decode_lossless(hex);
                    if strs.get(name).copied() != Some(header.as_slice()) {
                        problems.push(format!(
                            "{name}: rust {:?} != header {:?}",
                            strs.get(name).map(|b| String::from_utf8_lossy(b)),
                            String::from_utf8_lossy(&header)
                        ));
                    }
                    checked += 1;
                }
                ["L", ty, field, value] => {
                    let header: usize = value.parse().unwrap();
                    let rust = layouts[&((*ty).to_owned(), (*field).to_owned())];
                    if rust != header {
                        problems.push(format!("{ty}.{field}: rust {rust} != header {header}"));
                    }
                }
                _ => problems.push(format!("unexpected output line {line:?}")),
            }
        }
        assert!(
            problems.is_empty(),
            "generated.rs disagrees with the installed OpenSSL headers \
             (regenerate with provider/gen/bindgen.sh):\n  {}",
            problems.join("\n  ")
        );
        assert_eq!(checked, INT_CONSTANTS.len() + STR_CONSTANTS.len());
        // The subset the provider uses today, spelled out so a broken table cannot hide them.
        assert!(INT_CONSTANTS.len() > 250 && STR_CONSTANTS.len() > 350);
        assert_eq!(OSSL_FUNC_PROVIDER_GET_PARAMS, 1026);
        assert_eq!(OSSL_OP_STORE, 22);
        assert_eq!(OSSL_PROV_PARAM_NAME, c"name");
    }

    /// Hex decoding without a dependency (the C side prints two lowercase digits per byte).
    mod hex {
        pub(super) fn decode_lossless(hex: &str) -> Vec<u8> {
            (0..hex.len())
                .step_by(2)
                .map(|i| u8::from_str_radix(&hex[i..i + 2], 16).unwrap())
                .collect()
        }
    }
}
