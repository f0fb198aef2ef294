#!/usr/bin/env bash
# Regenerates provider/src/sys/generated.rs from the installed OpenSSL 3 headers.
#
# Maintainer tool, not run by builds or CI: the output is committed so that building the provider
# needs no libclang. Run it on a machine whose headers are the *minimum* supported OpenSSL (3.0.x;
# Debian 12 has 3.0.19), because ids and names only ever get added in later 3.x releases.
# `cargo test -p p11fwd-provider` checks the committed constants against whatever headers are
# installed (sys::tests::constants_match_installed_headers).
#
# Usage: provider/gen/bindgen.sh [include dir, default /usr/include]
# Env:   P11FWD_BINDGEN_DIR  scratch crate location (default /tmp/p11fwd-bindgen)
#        P11FWD_NO_APT=1     do not try to apt-get install libclang-dev
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
out="$here/../src/sys/generated.rs"
include="${1:-/usr/include}"
scratch="${P11FWD_BINDGEN_DIR:-/tmp/p11fwd-bindgen}"

if [[ ! -f "$include/openssl/core_dispatch.h" ]]; then
    echo "no OpenSSL 3 headers under $include (install libssl-dev)" >&2
    exit 1
fi

# bindgen loads libclang at run time.
if ! ls /usr/lib/llvm-*/lib/libclang.so >/dev/null 2>&1 && [[ -z "${LIBCLANG_PATH:-}" ]]; then
    if [[ -z "${P11FWD_NO_APT:-}" ]] && command -v apt-get >/dev/null; then
        apt-get install -y libclang-dev
    else
        echo "libclang not found: install libclang-dev or set LIBCLANG_PATH" >&2
        exit 1
    fi
fi

# A throwaway crate outside the workspace, so the workspace never depends on bindgen.
mkdir -p "$scratch/src"
cat >"$scratch/Cargo.toml" <<'EOF'
[package]
name = "p11fwd-bindgen"
version = "0.0.0"
edition = "2024"
publish = false

[workspace]

[dependencies]
bindgen = { version = "0.72", default-features = false, features = ["runtime"] }
EOF
cp "$here/generate.rs" "$scratch/src/main.rs"

cargo run --quiet --release --manifest-path "$scratch/Cargo.toml" -- "$include" "$out"
echo "now run: cargo test -p p11fwd-provider sys::tests" >&2
