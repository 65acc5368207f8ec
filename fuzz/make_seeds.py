#!/usr/bin/env python3
"""Regenerates the committed seed corpora (fuzz/corpus/<target>/) from real traffic.

seeds/http/<conn>-<direction>.bin are one connection's reassembled streams as the agent
captured them (`hoptrace capture --dump-dir`, curl against tests/fixtures/chain_service.py).
The AMQP, NATS and Kafka seeds are the parsers' recorded unit-test fixtures
(agent/src/protocols/testdata: real client libraries against real brokers). All are
encoded in the script format of `hoptrace_fuzz::fuzz_protocol` (src/lib.rs).
Run from fuzz/: python3 make_seeds.py
"""
import glob
import hashlib
import os

METHODS = (b"GET ", b"POST ", b"PUT ", b"HEAD ", b"DELETE ", b"OPTIONS ", b"PATCH ")


def data_ops(direction, payload, piece=None):
    """One data op per <= 256-byte syscall (direction: 0 egress, 1 ingress)."""
    out = b""
    for i in range(0, len(payload), 256):
        chunk = payload[i:i + 256]
        op = direction
        if piece:
            op |= 0x20 | ((piece - 1) & 0x1f)
        out += bytes([op, len(chunk) - 1]) + chunk
    return out


def write(target, name, blob):
    d = os.path.join("corpus", target)
    os.makedirs(d, exist_ok=True)
    with open(os.path.join(d, name), "wb") as f:
        f.write(blob)


def connections():
    streams = {}
    for path in glob.glob("seeds/http/*.bin"):
        conn, direction = os.path.basename(path)[:-4].rsplit("-", 1)
        streams.setdefault(conn, {})[direction] = open(path, "rb").read()
    for conn, s in sorted(streams.items()):
        ingress, egress = s.get("ingress", b""), s.get("egress", b"")
        if ingress.startswith(METHODS):
            yield conn, 2, (1, ingress), (0, egress)  # server: requests arrive
        elif egress.startswith(METHODS):
            yield conn, 1, (0, egress), (1, ingress)  # client: requests leave


# Hand-written edge cases (framings the captured traffic lacks), server view.
EXTRA = [
    (b"POST /up HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n4;ext=1\r\nWiki\r\n0\r\nX-T: 1\r\n\r\n",
     b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n"),
    (b"GET /a HTTP/1.1\r\n\r\nGET /b HTTP/1.1\r\n\r\nHEAD /c HTTP/1.1\r\n\r\n",
     b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nokHTTP/1.1 204 No Content\r\n\r\nHTTP/1.1 200 OK\r\nContent-Length: 99\r\n\r\n"),
    (b"GET /old HTTP/1.0\r\n\r\n", b"HTTP/1.0 200 OK\r\n\r\nbody until close"),
    (b"CONNECT db:5432 HTTP/1.1\r\n\r\n\x00\x01\x02", b"HTTP/1.1 200 Connection established\r\n\r\n\x03\x04"),
]

n = 0
for conn, role, (rd, req), (sd, resp) in connections():
    # Whole syscalls, and the same split into 3-byte segments.
    write("http1", f"real-{conn}", bytes([role]) + data_ops(rd, req) + data_ops(sd, resp) + b"\x06")
    write("http1", f"real-{conn}-split", bytes([role]) + data_ops(rd, req, 3) + data_ops(sd, resp, 3) + b"\x06")
    n += 1
for i, (req, resp) in enumerate(EXTRA):
    blob = bytes([2]) + data_ops(1, req) + data_ops(0, resp)
    write("http1", f"edge-{i}", blob)
    # A capture-cap gap in the middle of the response.
    write("http1", f"edge-{i}-gap", bytes([2]) + data_ops(1, req) + bytes([0x04, 7]) + data_ops(0, resp) + b"\x06")
for f in glob.glob("corpus/http1/*"):
    write("protocols", os.path.basename(f), open(f, "rb").read())

# AMQP, NATS, Kafka: the client's view of the recorded connections (role 1: client;
# egress = client to broker). Each goes to its protocol's target and to `protocols`.
TESTDATA = "../agent/src/protocols/testdata"


def read(path):
    return open(path, "rb").read() if os.path.exists(path) else b""


mq = 0
for c2s in sorted(glob.glob(f"{TESTDATA}/*.c2s")):
    name = os.path.basename(c2s)[:-4]
    target = name.split("_")[0]  # amqp_publish -> amqp, nats_sub -> nats
    sent, received = read(c2s), read(c2s[:-4] + ".s2c")
    # Whole syscalls, and the same cut into 3-byte segments.
    whole = data_ops(0, sent) + data_ops(1, received) + b"\x06"
    split = data_ops(0, sent, 3) + data_ops(1, received, 3) + b"\x06"
    for suffix, blob in (("", whole), ("-split", split)):
        write(target, f"real-{name}{suffix}", bytes([1]) + blob)
        write("protocols", f"real-{name}{suffix}", bytes([1]) + blob)
    mq += 1
# HPACK alone: the recorded HTTP/2 header blocks, framed as the `hpack` target reads them
# (a mode byte, then length-prefixed blocks), for a decoder from the start and a joined one.
h2 = read(f"{TESTDATA}/http2_grpc.c2s")
if h2:
    blocks, pos = [], 24  # after the connection preface
    while pos + 9 <= len(h2):
        length = int.from_bytes(h2[pos:pos + 3], "big")
        if h2[pos + 3] == 1 and length < 256:  # HEADERS (grpcio sets no padding/priority)
            blocks.append(h2[pos + 9:pos + 9 + length])
        pos += 9 + length
    framed = b"".join(bytes([len(b)]) + b for b in blocks)
    write("hpack", "real-grpcio-requests", b"\x00" + framed)
    write("hpack", "real-grpcio-requests-joined", b"\x01" + framed)
for conn in sorted(glob.glob(f"{TESTDATA}/kafka/*/conn-*.txt")):
    run = os.path.basename(os.path.dirname(conn))
    ops = b""
    for line in open(conn):
        arrow, _, hexbytes = line.strip().partition(" ")
        if arrow in (">", "<") and hexbytes:
            ops += data_ops(0 if arrow == ">" else 1, bytes.fromhex(hexbytes))
    name = f"real-{run}-{os.path.basename(conn)[:-4]}"
    write("kafka", name, bytes([1]) + ops + b"\x06")
    write("protocols", name, bytes([1]) + ops + b"\x06")
    mq += 1

CONTEXT = [
    b"00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
    b"01-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-03-future",
    b"rojo=00f067aa0ba902b7,congo=t61rcWkgMzE\xffvendor@tenant=v1",
    b"userId=alice,serverNode=DF%2028;p=1,isProduction=false",
    b"k1=v1;prop1=x;prop2,k2=%E2%82%AC\xffk3=v3",
]
for i, c in enumerate(CONTEXT):
    write("trace_context", f"seed-{i}", c)

ROUTES = [
    b"/customers/12345/orders?token=abc",
    b"/mail/maria%40example.com",
    b"/api/v1/users/550e8400-e29b-41d4-a716-446655440000/cards/4111111111111111",
    b"http://proxy.example/path/123.456.789-09#frag",
    b"/tokens/eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiIxIn0.c2lnbmF0dXJl",
    b"+55 11 91234-5678 a@b.co 11.222.333/0001-81",
]
for i, r in enumerate(ROUTES):
    write("redact_route", f"seed-{i}", r)
print(f"{n} captured HTTP connections, {mq} AMQP/NATS/Kafka connections; corpora written under corpus/")
