#!/usr/bin/env python3
"""Build the fuzz seed corpora from the golden captures in wire/tests/vectors.

server_input: every client->server frame (header + options + body), one file each.
client_input: every server->client reply body, prefixed with the call id of its request (the
              fuzz target maps the first byte to the call it decodes the body as).
"""
import glob, hashlib, json, os, struct, sys

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

for path in glob.glob(os.path.join(vectors, "*", "*.jsonl")):
    c2s, s2c = streams(path)
    calls = {}
    for code, raw, body in frames(c2s):
        save(os.path.join(root, "corpus", "server_input"), raw)
        calls[code] = struct.unpack(">I", body[:4])[0]
    for code, raw, body in frames(s2c):
        if code in calls:
            save(os.path.join(root, "corpus", "client_input"), bytes([calls[code]]) + body)
