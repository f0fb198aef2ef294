//! The ABI of the built `p11fwd.so`: what it exports and how it is linked.

mod common;

use std::collections::BTreeSet;
use std::process::Command;

use common::{TestResult, provider_library};

/// The complete list of symbols the provider exports. OpenSSL needs exactly this one.
const EXPORTS: &[&str] = &["OSSL_provider_init"];

#[test]
fn exports_only_ossl_provider_init() -> TestResult {
    let library = provider_library();
    let output = Command::new("nm")
        .args(["-D", "--defined-only"])
        .arg(&library)
        .output()?;
    assert!(
        output.status.success(),
        "nm failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    let listing = String::from_utf8(output.stdout)?;
    // Lines are `<address> <type> <name>`; `T` is a defined function in the text section.
    let functions: BTreeSet<&str> = listing
        .lines()
        .filter_map(
            |line| match line.split_whitespace().collect::<Vec<_>>()[..] {
                [_, "T" | "t" | "W" | "i", name] => Some(name),
                _ => None,
            },
        )
        .collect();
    let expected: BTreeSet<&str> = EXPORTS.iter().copied().collect();
    assert_eq!(functions, expected, "full listing:\n{listing}");
    Ok(())
}

#[test]
fn is_linked_nodelete() -> TestResult {
    // build.rs: OpenSSL keeps pointers into the library after unloading it.
    let output = Command::new("readelf")
        .arg("-d")
        .arg(provider_library())
        .output()?;
    let dynamic = String::from_utf8(output.stdout)?;
    let flags = dynamic
        .lines()
        .find(|l| l.contains("FLAGS_1"))
        .unwrap_or_default();
    assert!(flags.contains("NODELETE"), "{dynamic}");
    Ok(())
}
