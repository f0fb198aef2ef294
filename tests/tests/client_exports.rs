//! `p11fwd-client.so` exports exactly the symbols in `client/exports.txt` (which a unit test
//! of the client checks against its function lists): `C_GetFunctionList`,
//! `C_GetInterfaceList`, `C_GetInterface` and every `C_*` function, nothing else.

use std::process::Command;

use p11fwd_tests::{artifacts, require_tool, run_ok};

#[test]
fn exports_exactly_the_pkcs11_functions() {
    let module = artifacts::client_module();
    let out = run_ok(
        Command::new(require_tool("nm"))
            .args(["-D", "--defined-only"])
            .arg(&module),
    );
    let mut exported: Vec<&str> = out
        .stdout
        .lines()
        .filter_map(|l| l.split_whitespace().nth(2))
        .collect();
    exported.sort_unstable();
    let list = include_str!("../../client/exports.txt");
    let mut expected: Vec<&str> = list
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .collect();
    expected.sort_unstable();
    assert_eq!(
        exported,
        expected,
        "nm -D --defined-only {}",
        module.display()
    );
    assert_eq!(expected.len(), 92);
}
