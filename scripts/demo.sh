#!/usr/bin/env bash
# p11fwd demo: a throwaway SoftHSM token with an EC P-256 key, served over the p11-kit RPC
# protocol, and used from the "remote" side.
#
#   scripts/demo.sh                     # p11fwd server + the p11fwd provider (default)
#   DEMO_SERVER=stock scripts/demo.sh   # the same token through stock p11-kit server and client
#
# p11fwd: `eval $(p11fwd server ...)` serves the token; `p11fwd list` shows it through the socket;
#         `openssl req -provider p11fwd` signs a CSR with the key; `openssl req -verify` checks it.
# stock:  `p11-kit server` serves the token; pkcs11-tool lists token and objects through the stock
#         p11-kit-client.so.
#
# Everything lives in a temp dir that is removed on exit, together with the server process.
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
TARGET_DIR=${CARGO_TARGET_DIR:-$ROOT/target}
DEMO_SERVER=${DEMO_SERVER:-p11fwd}
SOFTHSM_MODULE=${SOFTHSM_MODULE:-/usr/lib/softhsm/libsofthsm2.so}
P11KIT_CLIENT=${P11KIT_CLIENT:-/usr/lib/x86_64-linux-gnu/pkcs11/p11-kit-client.so}

# Throwaway token and PINs, for this demo only.
TOKEN_LABEL=p11fwd-demo
KEY_LABEL=demo-key
SO_PIN=12345678
USER_PIN=123456

WORK=$(mktemp -d "${TMPDIR:-/tmp}/p11fwd-demo.XXXXXX")
SERVER_PID=

cleanup() {
    local status=$?
    if [[ -n "$SERVER_PID" ]] && kill -0 "$SERVER_PID" 2>/dev/null; then
        kill "$SERVER_PID" 2>/dev/null || true
        for _ in $(seq 50); do kill -0 "$SERVER_PID" 2>/dev/null || break; sleep 0.1; done
        kill -9 "$SERVER_PID" 2>/dev/null || true
    fi
    rm -rf "$WORK"
    exit "$status"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

step() { printf '\n\033[1m==> %s\033[0m\n' "$*"; }
run() { printf '$ %s\n' "$*"; "$@"; }
need() {
    for tool in "$@"; do
        command -v "$tool" >/dev/null || { echo "$tool not found: run \`make deps\`" >&2; exit 1; }
    done
}

# --- the machine with the token -----------------------------------------------------------------

make_token() {
    need softhsm2-util pkcs11-tool
    step "A throwaway SoftHSM token in $WORK"
    mkdir -p "$WORK/tokens"
    cat >"$WORK/softhsm2.conf" <<EOF
directories.tokendir = $WORK/tokens
objectstore.backend = file
log.level = ERROR
EOF
    export SOFTHSM2_CONF=$WORK/softhsm2.conf
    run softhsm2-util --init-token --free --label "$TOKEN_LABEL" --so-pin "$SO_PIN" --pin "$USER_PIN"
    run pkcs11-tool --module "$SOFTHSM_MODULE" --token-label "$TOKEN_LABEL" --login --pin "$USER_PIN" \
        --keypairgen --key-type EC:prime256v1 --label "$KEY_LABEL" --id 01 --usage-sign --usage-derive
}

# Waits for the server socket named in P11_KIT_SERVER_ADDRESS.
wait_for_socket() {
    local path=${P11_KIT_SERVER_ADDRESS#unix:path=}
    for _ in $(seq 100); do
        [[ -S "$path" ]] && return 0
        sleep 0.1
    done
    echo "server socket $path did not appear" >&2
    return 1
}

# ===== STOCK SERVER: the same token through stock p11-kit, for comparison ======================

start_stock_server() {
    need p11-kit
    step "Serve the token with the stock p11-kit server"
    printf '$ eval "$(p11-kit server -s --provider %s -n %s %s)"\n' \
        "$SOFTHSM_MODULE" "$WORK/server.sock" "pkcs11:token=$TOKEN_LABEL"
    eval "$(p11-kit server -s --provider "$SOFTHSM_MODULE" -n "$WORK/server.sock" \
        "pkcs11:token=$TOKEN_LABEL")"
    SERVER_PID=$P11_KIT_SERVER_PID
    echo "P11_KIT_SERVER_ADDRESS=$P11_KIT_SERVER_ADDRESS (pid $SERVER_PID)"
    wait_for_socket
}

demo_stock() {
    make_token
    start_stock_server
    need pkcs11-tool
    step "On the remote side: the token through the stock p11-kit-client.so"
    run pkcs11-tool --module "$P11KIT_CLIENT" --list-slots
    run pkcs11-tool --module "$P11KIT_CLIENT" --list-objects --login --pin "$USER_PIN"
    step "Done: the token was reached over the p11-kit RPC protocol (stock server and client)"
}

# ===== END STOCK SERVER ============================================================================

# ===== FINAL DEMO: p11fwd server + the p11fwd OpenSSL provider ====================================

start_p11fwd_server() {
    local p11fwd=$TARGET_DIR/debug/p11fwd
    [[ -x "$p11fwd" ]] || { echo "$p11fwd not found: run \`make build\`" >&2; exit 1; }
    step "Serve the token with p11fwd server (a drop-in for p11-kit server)"
    printf '$ eval "$(p11fwd server -s --provider %s -n %s %s)"\n' \
        "$SOFTHSM_MODULE" "$WORK/server.sock" "pkcs11:token=$TOKEN_LABEL"
    eval "$("$p11fwd" server -s --provider "$SOFTHSM_MODULE" -n "$WORK/server.sock" \
        "pkcs11:token=$TOKEN_LABEL")"
    SERVER_PID=$P11_KIT_SERVER_PID
    echo "P11_KIT_SERVER_ADDRESS=$P11_KIT_SERVER_ADDRESS (pid $SERVER_PID)"
    wait_for_socket
}

demo_p11fwd() {
    need openssl
    make_token
    start_p11fwd_server
    printf '%s\n' "$USER_PIN" >"$WORK/pin"
    # OpenSSL finds a provider by file name: it must be called p11fwd.so.
    mkdir -p "$WORK/ossl-modules"
    ln -s "$TARGET_DIR/debug/libp11fwd_provider.so" "$WORK/ossl-modules/p11fwd.so"
    export OPENSSL_MODULES=$WORK/ossl-modules
    step "On the remote side (the socket is what ssh -R would forward): the token and its keys"
    run "$TARGET_DIR/debug/p11fwd" list --pin-source "$WORK/pin"
    step "On the remote side: a CSR signed by the forwarded key through the p11fwd provider"
    local key="pkcs11:token=$TOKEN_LABEL;object=$KEY_LABEL?pin-source=file:$WORK/pin"
    run openssl req -new -provider p11fwd -provider default -key "$key" -subj /CN=demo \
        -out "$WORK/demo.csr"
    run openssl req -verify -noout -in "$WORK/demo.csr"
    run openssl req -noout -subject -in "$WORK/demo.csr"
    step "Done: the CSR was signed by the token key, forwarded by p11fwd"
}

# ===== END FINAL DEMO =============================================================================

case "$DEMO_SERVER" in
    stock) demo_stock ;;
    p11fwd) demo_p11fwd ;;
    *) echo "DEMO_SERVER must be stock or p11fwd, not $DEMO_SERVER" >&2; exit 2 ;;
esac
