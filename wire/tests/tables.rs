//! `src/tables.rs` and `src/consts.rs` are what `gen/tables.py` makes from the protocol facts in
//! `gen/*.json` (copied from `../shared/vectors/tools`), formatted by rustfmt: nobody edited the
//! generated tables by hand, and the generator still reproduces them.
#![allow(clippy::unwrap_used)] // Tests: a panic is the failure report.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

fn crate_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// Runs `program` with `args`, feeding it `input`; panics with its stderr if it fails, and with
/// what to do if it is not installed.
fn pipe(program: &str, args: &[&str], input: &[u8], missing: &str) -> Vec<u8> {
    let mut child = Command::new(program)
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("{program} not found ({e}): {missing}"));
    let mut stdin = child.stdin.take().unwrap();
    let input = input.to_vec();
    let writer = std::thread::spawn(move || stdin.write_all(&input));
    let out = child.wait_with_output().unwrap();
    writer.join().unwrap().unwrap();
    assert!(
        out.status.success(),
        "{program} {args:?}: {}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    out.stdout
}

fn generated(which: &[&str]) -> String {
    let script = crate_dir().join("gen/tables.py");
    let gen_dir = crate_dir().join("gen");
    let mut args = vec![script.to_str().unwrap(), gen_dir.to_str().unwrap()];
    args.extend_from_slice(which);
    let raw = pipe("python3", &args, b"", "run `make deps`");
    let formatted = pipe(
        "rustfmt",
        &["--edition", "2024"],
        &raw,
        "install the rustfmt component (`make toolchain`)",
    );
    String::from_utf8(formatted).unwrap()
}

fn assert_same(file: &str, generated: &str) {
    let committed = std::fs::read_to_string(crate_dir().join(file)).unwrap();
    if committed != generated {
        let line = committed
            .lines()
            .zip(generated.lines())
            .position(|(a, b)| a != b)
            .map_or(
                committed.lines().count().min(generated.lines().count()),
                |i| i,
            );
        panic!(
            "{file} differs from what gen/tables.py makes, from line {}:\n  committed: {:?}\n  generated: {:?}\nregenerate it (see gen/tables.py)",
            line + 1,
            committed.lines().nth(line),
            generated.lines().nth(line)
        );
    }
}

#[test]
fn tables_rs_is_what_the_generator_makes() {
    assert_same("src/tables.rs", &generated(&[]));
}

#[test]
fn consts_rs_is_what_the_generator_makes() {
    assert_same("src/consts.rs", &generated(&["consts"]));
}

/// The copies in `gen/` are the shared facts, byte for byte, where `../shared` is next to the
/// repository (the project's machines; a bare clone has only the copies).
#[test]
fn the_generator_inputs_are_the_shared_ones() {
    let shared = crate_dir().join("../../shared/vectors/tools");
    if !Path::new(&shared).is_dir() {
        eprintln!(
            "NOTE: {} is not there: the copies in gen/ are not compared",
            shared.display()
        );
        return;
    }
    for f in ["p11kit-tables.json", "pkcs11-names.json"] {
        assert_eq!(
            std::fs::read(crate_dir().join("gen").join(f)).unwrap(),
            std::fs::read(shared.join(f)).unwrap(),
            "gen/{f} differs from {}: copy it again and regenerate",
            shared.display()
        );
    }
}
