#!/usr/bin/env python3
"""Capture stock p11-kit traffic in which the client sends every call id of its generation.

usage: capture.py [--fallback-v0] [--out DIR] CLIENT_VERSION SERVER_VERSION

Runs, in a fresh temporary directory:
  * two SoftHSM tokens: "every-call" (user PIN 123456, random SO PIN) and "scratch"
    (SO PIN 87654321), throwaway test tokens that every_call.c uses;
  * `p11-kit server -f -v --provider libsofthsm2.so -n SOCK pkcs11:token=every-call
    pkcs11:token=scratch` of SERVER_VERSION;
  * a Unix-socket relay (below) in front of it, which records the traffic;
  * every_call.c, compiled here, driving the p11-kit-client.so of CLIENT_VERSION.

and writes DIR/<client>-to-<server>[.fallback-v0].{jsonl,log.txt}.

The .jsonl has the format of ../vectors/*/*.jsonl: one JSON object per chunk read, in order,
{"dir": "C>S"|"S>C", "hex": "..."} and {"dir": ..., "eof": true}; no timestamps. The .log.txt
has the harness's calls and CK_RVs, the client's version negotiation (P11_KIT_DEBUG=rpc lines
that mention the version), the server's stderr, and a list of the captured frames.

--fallback-v0: the relay answers the client's first connection like a pre-0.24 server that
does not know version negotiation: it reads the version byte and, if it is not 0, closes the
connection. Stock 0.24+ clients then reconnect and offer 0 (rpc §2.2), so the stock server
negotiates 0 and the client sends C_InitToken (9) and C_DeriveKey (62) instead of
C_InitToken2 (88) and C_DeriveKey2 (89). Only the second connection is stored.

Peers: 0.24.1 is Debian's (/usr/bin/p11-kit, /usr/lib/x86_64-linux-gnu/pkcs11/
p11-kit-client.so). Any other VERSION is looked up under $P11FWD_PEERS/VERSION (default
/work/peers/VERSION): bin/p11-kit and lib/pkcs11/p11-kit-client.so of a meson build with
--prefix there (see README.md).
"""

import argparse
import json
import re
import os
import secrets
import shutil
import signal
import socket
import struct
import subprocess
import sys
import tempfile
import threading
import time

HERE = os.path.dirname(os.path.abspath(__file__))
SOFTHSM = "/usr/lib/softhsm/libsofthsm2.so"
USER_PIN = "123456"
SCRATCH_SO_PIN = "87654321"
SCRATCH_USER_PIN = "111111"

NAMES = """ERROR C_Initialize C_Finalize C_GetInfo C_GetSlotList C_GetSlotInfo C_GetTokenInfo
C_GetMechanismList C_GetMechanismInfo C_InitToken C_OpenSession C_CloseSession
C_CloseAllSessions C_GetSessionInfo C_InitPIN C_SetPIN C_GetOperationState
C_SetOperationState C_Login C_Logout C_CreateObject C_CopyObject C_DestroyObject
C_GetObjectSize C_GetAttributeValue C_SetAttributeValue C_FindObjectsInit C_FindObjects
C_FindObjectsFinal C_EncryptInit C_Encrypt C_EncryptUpdate C_EncryptFinal C_DecryptInit
C_Decrypt C_DecryptUpdate C_DecryptFinal C_DigestInit C_Digest C_DigestUpdate C_DigestKey
C_DigestFinal C_SignInit C_Sign C_SignUpdate C_SignFinal C_SignRecoverInit C_SignRecover
C_VerifyInit C_Verify C_VerifyUpdate C_VerifyFinal C_VerifyRecoverInit C_VerifyRecover
C_DigestEncryptUpdate C_DecryptDigestUpdate C_SignEncryptUpdate C_DecryptVerifyUpdate
C_GenerateKey C_GenerateKeyPair C_WrapKey C_UnwrapKey C_DeriveKey C_SeedRandom
C_GenerateRandom C_WaitForSlotEvent C_LoginUser C_SessionCancel C_MessageEncryptInit
C_EncryptMessage C_EncryptMessageBegin C_EncryptMessageNext C_MessageEncryptFinal
C_MessageDecryptInit C_DecryptMessage C_DecryptMessageBegin C_DecryptMessageNext
C_MessageDecryptFinal C_MessageSignInit C_SignMessage C_SignMessageBegin C_SignMessageNext
C_MessageSignFinal C_MessageVerifyInit C_VerifyMessage C_VerifyMessageBegin
C_VerifyMessageNext C_MessageVerifyFinal C_InitToken2 C_DeriveKey2""".split()
MAX_ID = {"0.24.1": 65, "0.25.5": 88, "0.26.4": 89}
RV_NAMES = {
    0x1: "CKR_CANCEL", 0x2: "CKR_HOST_MEMORY", 0x3: "CKR_SLOT_ID_INVALID",
    0x5: "CKR_GENERAL_ERROR", 0x6: "CKR_FUNCTION_FAILED", 0x7: "CKR_ARGUMENTS_BAD",
    0x8: "CKR_NO_EVENT", 0x10: "CKR_ATTRIBUTE_READ_ONLY", 0x11: "CKR_ATTRIBUTE_SENSITIVE",
    0x12: "CKR_ATTRIBUTE_TYPE_INVALID", 0x13: "CKR_ATTRIBUTE_VALUE_INVALID",
    0x20: "CKR_DATA_INVALID", 0x21: "CKR_DATA_LEN_RANGE", 0x30: "CKR_DEVICE_ERROR",
    0x31: "CKR_DEVICE_MEMORY", 0x32: "CKR_DEVICE_REMOVED", 0x40: "CKR_ENCRYPTED_DATA_INVALID",
    0x41: "CKR_ENCRYPTED_DATA_LEN_RANGE", 0x51: "CKR_FUNCTION_NOT_PARALLEL",
    0x54: "CKR_FUNCTION_NOT_SUPPORTED", 0x60: "CKR_KEY_HANDLE_INVALID",
    0x62: "CKR_KEY_SIZE_RANGE", 0x63: "CKR_KEY_TYPE_INCONSISTENT",
    0x67: "CKR_KEY_INDIGESTIBLE", 0x68: "CKR_KEY_FUNCTION_NOT_PERMITTED",
    0x69: "CKR_KEY_NOT_WRAPPABLE", 0x6a: "CKR_KEY_UNEXTRACTABLE",
    0x70: "CKR_MECHANISM_INVALID", 0x71: "CKR_MECHANISM_PARAM_INVALID",
    0x82: "CKR_OBJECT_HANDLE_INVALID", 0x90: "CKR_OPERATION_ACTIVE",
    0x91: "CKR_OPERATION_NOT_INITIALIZED", 0xa0: "CKR_PIN_INCORRECT", 0xa1: "CKR_PIN_INVALID",
    0xa2: "CKR_PIN_LEN_RANGE", 0xa4: "CKR_PIN_LOCKED", 0xb0: "CKR_SESSION_CLOSED",
    0xb3: "CKR_SESSION_HANDLE_INVALID", 0xb5: "CKR_SESSION_READ_ONLY",
    0xb6: "CKR_SESSION_EXISTS", 0xc0: "CKR_SIGNATURE_INVALID", 0xc1: "CKR_SIGNATURE_LEN_RANGE",
    0xd0: "CKR_TEMPLATE_INCOMPLETE", 0xd1: "CKR_TEMPLATE_INCONSISTENT",
    0xe0: "CKR_TOKEN_NOT_PRESENT", 0xe2: "CKR_TOKEN_WRITE_PROTECTED",
    0xf0: "CKR_UNWRAPPING_KEY_HANDLE_INVALID", 0xf2: "CKR_UNWRAPPING_KEY_TYPE_INCONSISTENT",
    0x100: "CKR_USER_ALREADY_LOGGED_IN", 0x101: "CKR_USER_NOT_LOGGED_IN",
    0x102: "CKR_USER_PIN_NOT_INITIALIZED", 0x103: "CKR_USER_TYPE_INVALID",
    0x110: "CKR_WRAPPED_KEY_INVALID", 0x112: "CKR_WRAPPED_KEY_LEN_RANGE",
    0x113: "CKR_WRAPPING_KEY_HANDLE_INVALID", 0x115: "CKR_WRAPPING_KEY_TYPE_INCONSISTENT",
    0x120: "CKR_RANDOM_SEED_NOT_SUPPORTED", 0x150: "CKR_BUFFER_TOO_SMALL",
    0x160: "CKR_SAVED_STATE_INVALID", 0x170: "CKR_INFORMATION_SENSITIVE",
    0x180: "CKR_STATE_UNSAVEABLE", 0x190: "CKR_CRYPTOKI_NOT_INITIALIZED",
    0x191: "CKR_CRYPTOKI_ALREADY_INITIALIZED",
}


def peer(version):
    if version == "0.24.1":
        return "/usr/bin/p11-kit", "/usr/lib/x86_64-linux-gnu/pkcs11/p11-kit-client.so"
    prefix = os.path.join(os.environ.get("P11FWD_PEERS", "/work/peers"), version)
    return os.path.join(prefix, "bin/p11-kit"), os.path.join(prefix, "lib/pkcs11/p11-kit-client.so")


class Relay:
    """Unix-socket man in the middle; one record list per accepted connection."""

    def __init__(self, listen, upstream, refuse_first_nonzero):
        self.upstream = upstream
        self.refuse = refuse_first_nonzero
        self.conns = []  # list of (records, notes)
        self.threads = []
        self.lock = threading.Lock()
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.bind(listen)
        self.sock.listen(16)
        threading.Thread(target=self.accept_loop, daemon=True).start()

    def accept_loop(self):
        while True:
            try:
                c, _ = self.sock.accept()
            except OSError:
                return
            records, notes = [], []
            with self.lock:
                self.conns.append((records, notes))
                first = len(self.conns) == 1
            if first and self.refuse:
                b = c.recv(1)
                records.append({"dir": "C>S", "hex": b.hex()})
                if b and b != b"\0":
                    notes.append(f"version byte {b.hex()} refused: closed like a pre-0.24 server")
                    c.close()
                    records.append({"dir": "S>C", "eof": True})
                    continue
                notes.append("version byte 00: passed on")
                u = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
                u.connect(self.upstream)
                u.sendall(b)
            else:
                u = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
                u.connect(self.upstream)
            for src, dst, tag in ((c, u, "C>S"), (u, c, "S>C")):
                t = threading.Thread(target=self.pump, args=(src, dst, tag, records), daemon=True)
                t.start()
                self.threads.append(t)

    def pump(self, src, dst, tag, records):
        while True:
            try:
                data = src.recv(65536)
            except OSError:
                data = b""
            with self.lock:
                records.append({"dir": tag, "hex": data.hex()} if data else {"dir": tag, "eof": True})
            if not data:
                try:
                    dst.shutdown(socket.SHUT_WR)
                except OSError:
                    pass
                return
            try:
                dst.sendall(data)
            except OSError:
                pass

    def finish(self, timeout):
        deadline = time.time() + timeout
        for t in list(self.threads):
            t.join(max(0.0, deadline - time.time()))
        self.sock.close()


def frames(stream):
    out, i = [], 0
    while i + 12 <= len(stream):
        code, optlen, bodylen = struct.unpack(">III", stream[i : i + 12])
        end = i + 12 + optlen + bodylen
        if end > len(stream):
            break
        out.append((code, stream[i + 12 + optlen : end]))
        i = end
    return out, len(stream) - i


def describe(records, generation):
    c2s = bytes.fromhex("".join(r.get("hex", "") for r in records if r["dir"] == "C>S"))
    s2c = bytes.fromhex("".join(r.get("hex", "") for r in records if r["dir"] == "S>C"))
    lines = []
    if not c2s or not s2c:
        return ["(no frames)"], set()
    lines.append(f"version byte C>S {c2s[:1].hex()}, S>C {s2c[:1].hex()}")
    reqs, rest_c = frames(c2s[1:])
    reps, rest_s = frames(s2c[1:])
    replies = {code: body for code, body in reps}
    sent = set()
    for code, body in reqs:
        cid = struct.unpack(">I", body[:4])[0]
        sent.add(cid)
        name = NAMES[cid] if cid < len(NAMES) else "?"
        rep = replies.get(code)
        if rep is None:
            what = "no reply"
        elif struct.unpack(">I", rep[:4])[0] == 0:
            rv = struct.unpack(">Q", rep[-8:])[0]
            what = f"ERROR 0x{rv:x} {RV_NAMES.get(rv, '')}".rstrip()
        else:
            what = "reply"
        lines.append(f"0x{code:04x}  {cid:2d} {name:24s} -> {what}")
    if rest_c or rest_s:
        lines.append(f"incomplete trailing frame bytes: C>S {rest_c}, S>C {rest_s}")
    top = MAX_ID.get(generation, 89)
    missing = [i for i in range(1, top + 1) if i not in sent]
    lines.append(f"call ids sent: {len(sent & set(range(1, top + 1)))} of 1..{top}; "
                 f"not sent here: {missing or 'none'}")
    return lines, sent


def make_tokens(tmp):
    conf = os.path.join(tmp, "softhsm2.conf")
    os.makedirs(os.path.join(tmp, "tokens"))
    with open(conf, "w") as f:
        f.write(f"directories.tokendir = {tmp}/tokens\nobjectstore.backend = file\n"
                "log.level = ERROR\nslots.removable = false\n")
    env = dict(os.environ, SOFTHSM2_CONF=conf)
    for label, so, user in (("every-call", secrets.token_hex(8), USER_PIN),
                            ("scratch", SCRATCH_SO_PIN, SCRATCH_USER_PIN)):
        subprocess.run(["softhsm2-util", "--init-token", "--free", "--label", label,
                        "--so-pin", so, "--pin", user], env=env, check=True,
                       stdout=subprocess.DEVNULL)
    return env


def build_harness(tmp):
    exe = os.path.join(tmp, "every_call")
    subprocess.run(["gcc", "-Wall", "-Wextra", "-O1", "-I/usr/include/p11-kit-1", "-o", exe,
                    os.path.join(HERE, "every_call.c"), "-ldl"], check=True)
    return exe


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("client")
    ap.add_argument("server")
    ap.add_argument("--fallback-v0", action="store_true")
    ap.add_argument("--out", default=os.path.join(HERE, "..", "vectors", "every-call"))
    ap.add_argument("--keep", action="store_true", help="keep the temporary directory")
    a = ap.parse_args()
    server_bin, _ = peer(a.server)
    _, client_so = peer(a.client)
    for p in (server_bin, client_so):
        if not os.path.exists(p):
            sys.exit(f"missing peer file {p}")
    tmp = tempfile.mkdtemp(prefix="every-call.")
    env = make_tokens(tmp)
    for k in ("P11_KIT_PRIVATEDIR", "P11_KIT_SERVER_ADDRESS", "P11_KIT_DEBUG"):
        env.pop(k, None)
    exe = build_harness(tmp)
    srv_sock = os.path.join(tmp, "srv.sock")
    relay_sock = os.path.join(tmp, "relay.sock")
    srv_cmd = [server_bin, "server", "-f", "-v", "--provider", SOFTHSM, "-n", srv_sock,
               "pkcs11:token=every-call", "pkcs11:token=scratch"]
    srv_err = open(os.path.join(tmp, "server.stderr"), "w+")
    srv = subprocess.Popen(srv_cmd, env=env, stdout=subprocess.DEVNULL, stderr=srv_err)
    for _ in range(200):
        if os.path.exists(srv_sock):
            break
        time.sleep(0.05)
    relay = Relay(relay_sock, srv_sock, a.fallback_v0)
    cenv = dict(env, P11_KIT_SERVER_ADDRESS=f"unix:path={relay_sock}", P11_KIT_DEBUG="rpc")
    h = subprocess.run([exe, client_so], env=cenv, capture_output=True, text=True, timeout=300)
    relay.finish(10)
    srv.send_signal(signal.SIGTERM)
    srv.wait(10)
    srv_err.seek(0)
    server_stderr = srv_err.read()

    os.makedirs(a.out, exist_ok=True)
    base = os.path.join(a.out, f"{a.client}-to-{a.server}" + (".fallback-v0" if a.fallback_v0 else ""))
    conns = relay.conns
    stored = conns[-1][0] if conns else []
    with open(base + ".jsonl", "w") as f:
        for r in stored:
            f.write(json.dumps(r) + "\n")
    desc, _ = describe(stored, a.client)
    # "(p11-kit:PID) ..." -> "(p11-kit) ...": keep the logs stable across runs
    version_lines = [re.sub(r"^\(p11-kit:\d+\)", "(p11-kit)", l) for l in h.stderr.splitlines()
                     if "authenticat" in l or "version" in l]
    with open(base + ".log.txt", "w") as f:
        f.write(f"# client {a.client} ({client_so})\n")
        f.write(f"# server {a.server} ({os.path.basename(server_bin)} server -f -v --provider "
                f"libsofthsm2.so -n SOCK pkcs11:token=every-call pkcs11:token=scratch)\n")
        f.write(f"# relay: {'fallback-v0 (first connection refused if it offers > 0)' if a.fallback_v0 else 'plain'}; "
                f"{len(conns)} connection(s); the .jsonl is the last one\n")
        for i, (_, notes) in enumerate(conns, 1):
            for n in notes:
                f.write(f"#   connection {i}: {n}\n")
        f.write(f"# harness exit status: {h.returncode}\n")
        f.write(h.stdout)
        f.write("# ---- client P11_KIT_DEBUG=rpc: version negotiation ----\n")
        f.write("".join(l + "\n" for l in version_lines))
        f.write("# ---- server stderr (-v) ----\n")
        f.write(server_stderr)
        f.write("# ---- captured frames: code, call id, reply ----\n")
        f.write("".join(l + "\n" for l in desc))
    print(f"{a.client} -> {a.server}{' (fallback-v0)' if a.fallback_v0 else ''}: "
          f"harness rc={h.returncode}, {len(conns)} connection(s); {desc[-1]}")
    if a.keep:
        print("kept", tmp)
    else:
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
