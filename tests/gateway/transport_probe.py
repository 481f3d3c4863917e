#!/usr/bin/env python3
"""The transport facts docs/protocol.md states, checked against a real
`parley gateway`: the upgrade is accepted on any path, with the subprotocol
parley.v1 or none, refused when only other subprotocols are offered, and a
connection that never finishes its upgrade is closed after about 10 s.
Usage: transport_probe.py <parley binary>"""
import os, re, socket, subprocess, sys, tempfile, time

parley = sys.argv[1]
tmp = tempfile.mkdtemp(prefix="parley-probe-")
cfg = os.path.join(tmp, "gw.yaml")
with open(cfg, "w") as f:
    f.write(f"""listen: 127.0.0.1
port: 0
data_dir: {tmp}/data
bot: probe-bot
principals:
  - name: probe-bot
    role: bot
    token: bot-secret
""")
# The gateway names its port on standard output once it listens.
gw = subprocess.Popen([parley, "gateway", "--config", cfg], stdout=subprocess.PIPE,
                      stderr=subprocess.DEVNULL, text=True)
port = None
deadline = time.time() + 10
while time.time() < deadline and port is None:
    line = gw.stdout.readline()
    if not line:
        break
    m = re.search(r"listening on 127\.0\.0\.1:(\d+)", line)
    if m:
        port = int(m.group(1))
fails = 0

checks = 0


def check(what, ok):
    global fails, checks
    checks += 1
    print(("ok   " if ok else "FAIL ") + what)
    if not ok:
        fails += 1

def upgrade(path, proto):
    s = socket.create_connection(("127.0.0.1", port))
    s.settimeout(3)
    req = (f"GET {path} HTTP/1.1\r\nHost: x\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n"
           "Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n")
    if proto:
        req += f"Sec-WebSocket-Protocol: {proto}\r\n"
    s.sendall((req + "\r\n").encode())
    try:
        data = s.recv(400).decode(errors="replace")
    except OSError:
        data = ""
    s.close()
    return data

try:
    check("the gateway started", port is not None)
    if port:
        for path in ("/", "/any/path"):
            r = upgrade(path, None)
            check(f"upgrade on {path} without a subprotocol", r.startswith("HTTP/1.1 101"))
            r = upgrade(path, "parley.v1")
            check(f"upgrade on {path} with parley.v1",
                  r.startswith("HTTP/1.1 101") and "Sec-WebSocket-Protocol: parley.v1" in r)
            r = upgrade(path, "other, parley.v1")
            check(f"upgrade on {path} offering other and parley.v1 picks parley.v1",
                  r.startswith("HTTP/1.1 101") and "Sec-WebSocket-Protocol: parley.v1" in r)
            r = upgrade(path, "other")
            check(f"upgrade on {path} offering only another subprotocol is refused",
                  not r.startswith("HTTP/1.1 101"))
        s = socket.create_connection(("127.0.0.1", port))
        s.settimeout(20)
        t0 = time.time()
        try:
            closed = s.recv(10) == b""
        except OSError:
            closed = False
        took = time.time() - t0
        check(f"a silent connection is closed before its upgrade ({took:.1f} s)",
              closed and 8 <= took <= 15)
        s.close()
finally:
    gw.terminate()
    gw.wait(timeout=10)
    subprocess.run(["rm", "-rf", tmp])
print(f"{checks - fails} passed, {fails} failed")
sys.exit(1 if fails else 0)
