#!/usr/bin/env python3
"""Build the fuzz seed corpora from the golden captures in wire/tests/vectors.

server_input: every client->server frame (header + options + body), one file each.
client_input: every server->client reply body, prefixed with the call id of its request (the
              fuzz target maps the first byte to the call it decodes the body as) and the
              request's mechanism type as a big-endian u32 (0 when it has none; what a
              C_DeriveKey2 reply's parameter update is decoded by).

The corpus directories are emptied first, so they hold exactly what the captures give (every
capture under wire/tests/vectors, the every-call ones included: ids 1-89).
"""
import glob, hashlib, json, os, shutil, struct, sys

root = os.path.dirname(os.path.abspath(__file__))
vectors = os.path.join(root, "..", "wire", "tests", "vectors")

def streams(path):
    c2s, s2c = b"", b""
    for line in open(path):
        o = json.loads(line)
        if "hex" in o:
            b = bytes.fromhex(o["hex"])
            if o["dir"] == "C>S": c2s += b
            else: s2c += b
    return c2s[1:], s2c[1:]

def frames(b):
    out = []
    while len(b) >= 12:
        code, ol, bl = struct.unpack(">III", b[:12])
        n = 12 + ol + bl
        if len(b) < n: break
        out.append((code, b[:n], b[12 + ol:n]))
        b = b[n:]
    return out

def save(d, data):
    os.makedirs(d, exist_ok=True)
    name = hashlib.sha1(data).hexdigest()[:16]
    with open(os.path.join(d, name), "wb") as f:
        f.write(data)

# Calls whose request signature starts "uM" (session, mechanism): the mechanism type is read
# from there for the client_input prefix.
tables = json.load(open(os.path.join(root, "..", "wire", "gen", "p11kit-tables.json")))
MECH_AFTER_SESSION = {cid for cid, _, req, _ in tables["0.26.4"]["calls"] if (req or "").startswith("uM")}

def mechanism(call, body):
    if call not in MECH_AFTER_SESSION:
        return 0
    siglen = struct.unpack(">I", body[4:8])[0]
    off = 8 + siglen + 8  # call id, signature, the session ulong (8 bytes on the wire)
    if len(body) < off + 4:
        return 0
    return struct.unpack(">I", body[off:off + 4])[0]

for d in ("server_input", "client_input"):
    shutil.rmtree(os.path.join(root, "corpus", d), ignore_errors=True)

ids = set()
for path in sorted(glob.glob(os.path.join(vectors, "*", "*.jsonl"))):
    c2s, s2c = streams(path)
    calls = {}
    for code, raw, body in frames(c2s):
        save(os.path.join(root, "corpus", "server_input"), raw)
        call = struct.unpack(">I", body[:4])[0]
        calls[code] = (call, mechanism(call, body))
        ids.add(call)
    for code, raw, body in frames(s2c):
        if code in calls:
            call, mech = calls[code]
            save(os.path.join(root, "corpus", "client_input"),
                 bytes([call]) + struct.pack(">I", mech) + body)

# No capture has a C_DeriveKey2 reply whose parameter update has a serializer (only the IBM
# BTC and Kyber mechanisms have one, and SoftHSM has neither): hand-made replies, so that the
# fuzzer starts inside those codecs. Body: call 89, signature "uPu", CK_RV 0, P, key handle.
def derive2_reply(mech, update):
    body = struct.pack(">II", 89, 3) + b"uPu" + struct.pack(">Q", 0) + update + struct.pack(">Q", 5)
    return bytes([89]) + struct.pack(">I", mech) + body

CKM_IBM_BTC_DERIVE, CKM_IBM_KYBER = 0x80070001, 0x80010024
for mech, update in [
    (CKM_IBM_BTC_DERIVE, b"\x01\x01" + struct.pack(">I", 4) + b"code"),  # chain code
    (CKM_IBM_BTC_DERIVE, b"\x01\x00" + struct.pack(">I", 32)),  # its length only
    (CKM_IBM_KYBER, b"\x01\x01\x01" + struct.pack(">I", 3) + b"ct!"),  # encapsulate, cipher
    (CKM_IBM_KYBER, b"\x01\x00"),  # decapsulate: mode only
]:
    save(os.path.join(root, "corpus", "client_input"), derive2_reply(mech, update))

missing = sorted(set(range(1, 90)) - ids)
print(f"call ids in the seeds: {len(ids)}; missing: {missing or 'none'}")
for d in ("server_input", "client_input"):
    print(d, len(os.listdir(os.path.join(root, "corpus", d))), "files")
