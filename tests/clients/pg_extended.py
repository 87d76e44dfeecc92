#!/usr/bin/env python3
"""A careless Postgres extended-protocol client, message by message (no driver
hides these): a Bind with fewer result formats than columns, named portals left
suspended by a row limit (outside and inside BEGIN), a portal executed after the
Sync that closed it, a WITH HOLD cursor across Sync, FETCH bound with a format
per column, and a zoned timestamp read in text. Prints one JSON object of what it saw.

    pg_extended.py HOST PORT METRICS_URL
"""
import json
import socket
import struct
import sys
import time
import urllib.request

host, port, metrics_url = sys.argv[1], int(sys.argv[2]), sys.argv[3]
sock = socket.create_connection((host, port), timeout=30)


def send(kind, body=b""):
    sock.sendall(kind + struct.pack("!I", len(body) + 4) + body)


def cstr(s):
    return s.encode() + b"\0"


def recv_exact(n):
    data = b""
    while len(data) < n:
        chunk = sock.recv(n - len(data))
        if not chunk:
            raise SystemExit("connection closed by the server")
        data += chunk
    return data


def message():
    kind = recv_exact(1)
    (length,) = struct.unpack("!I", recv_exact(4))
    return kind, recv_exact(length - 4)


def error_fields(body):
    fields = {}
    for part in body.split(b"\0"):
        if part:
            fields[chr(part[0])] = part[1:].decode()
    return {"code": fields.get("C"), "message": fields.get("M")}


def until(stop):
    """Messages up to and including the first of kind `stop`."""
    seen = []
    while True:
        kind, body = message()
        seen.append((kind, body))
        if kind == stop:
            return seen


def running():
    for line in urllib.request.urlopen(metrics_url, timeout=10).read().decode().splitlines():
        if line.startswith("vigil_queries_running "):
            return float(line.split()[1])
    return None


def bind(portal, statement, formats):
    body = cstr(portal) + cstr(statement) + struct.pack("!hh", 0, 0)
    body += struct.pack("!h", len(formats)) + b"".join(struct.pack("!h", f) for f in formats)
    send(b"B", body)


def execute(portal, max_rows):
    send(b"E", cstr(portal) + struct.pack("!i", max_rows))


startup = struct.pack("!I", 196608) + cstr("user") + cstr("postgres") + cstr("database") + cstr("vigil") + b"\0"
sock.sendall(struct.pack("!I", len(startup) + 4) + startup)
until(b"Z")
out = {}

# Two result formats for three columns.
send(b"P", cstr("s1") + cstr("SELECT 1 AS a, 2 AS b, 'x' AS c") + struct.pack("!h", 0))
bind("p1", "s1", [1, 0])
send(b"D", b"P" + cstr("p1"))
execute("p1", 0)
send(b"S")
seen = until(b"Z")
out["short_formats"] = [error_fields(b) for k, b in seen if k == b"E"]
send(b"Q", cstr("SELECT 41 + 1 AS answer"))
seen = until(b"Z")
out["after_short_formats"] = [b[6:].decode() for k, b in seen if k == b"D"]

# Three named portals suspended after one row each.
send(b"P", cstr("s2") + cstr("SELECT value FROM generate_series(1, 100000000) AS value") + struct.pack("!h", 0))
for i in range(3):
    bind(f"p{i}", "s2", [])
    execute(f"p{i}", 1)
send(b"H")  # Flush: the results, without ending the transaction
suspended = 0
while suspended < 3:
    kind, body = message()
    if kind == b"s":
        suspended += 1
    elif kind == b"E":
        out["suspend_error"] = error_fields(body)
        break
out["running_while_suspended"] = running()
send(b"S")
until(b"Z")
deadline = time.time() + 5
while running() and time.time() < deadline:
    time.sleep(0.1)
out["running_after_sync"] = running()
execute("p0", 1)
send(b"S")
seen = until(b"Z")
out["closed_portal"] = [error_fields(b) for k, b in seen if k == b"E"]

# A WITH HOLD cursor declared over the extended protocol outlives its Sync.
send(b"P", cstr("") + cstr("DECLARE c1 CURSOR WITH HOLD FOR SELECT value FROM generate_series(1, 10) AS value") + struct.pack("!h", 0))
bind("", "", [])
execute("", 0)
send(b"S")
out["declare_errors"] = [error_fields(b) for k, b in until(b"Z") if k == b"E"]
send(b"Q", cstr("FETCH 2 FROM c1"))
seen = until(b"Z")
out["held_cursor"] = {"rows": sum(1 for k, _ in seen if k == b"D"),
                      "errors": [error_fields(b) for k, b in seen if k == b"E"]}

# Portals suspended inside BEGIN stay open across Sync and close at COMMIT.
send(b"Q", cstr("BEGIN"))
until(b"Z")
for i in range(2):
    bind(f"t{i}", "s2", [])
    execute(f"t{i}", 1)
send(b"S")
until(b"Z")
out["running_in_transaction"] = running()
send(b"Q", cstr("COMMIT"))
until(b"Z")
deadline = time.time() + 5
while running() and time.time() < deadline:
    time.sleep(0.1)
out["running_after_commit"] = running()

# FETCH from a cursor, bound with a result format per column.
send(b"Q", cstr("BEGIN; DECLARE c2 CURSOR FOR SELECT value AS v, value * 2 AS w FROM generate_series(1, 10) AS value"))
until(b"Z")
send(b"P", cstr("") + cstr("FETCH 2 FROM c2") + struct.pack("!h", 0))
bind("", "", [0, 0])
execute("", 0)
send(b"S")
seen = until(b"Z")
out["fetch_with_formats"] = {"rows": sum(1 for k, _ in seen if k == b"D"),
                             "errors": [error_fields(b) for k, b in seen if k == b"E"]}
send(b"Q", cstr("COMMIT"))
until(b"Z")

# A timestamp in a zone with a half-hour offset, in text.
send(b"Q", cstr("SELECT to_timestamp(1700000000) AT TIME ZONE 'Asia/Kolkata' AS t"))
seen = until(b"Z")
out["kolkata"] = [b[6:].decode() for k, b in seen if k == b"D"]
send(b"X")
print(json.dumps(out))
