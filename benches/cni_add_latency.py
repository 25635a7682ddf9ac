#!/usr/bin/env python3
"""Times `cni_add` requests on a running `switchyard run` control socket (the JSON request of
control/src/cni.rs), each for an afpacket port on its own interface, then deletes them.
Derived from the lead's /tmp/lat/lat.py.

usage: cni_add_latency.py SOCKET RX_MODE IFACE_PREFIX FIRST COUNT
       adds ports on IFACE_PREFIX<FIRST> .. IFACE_PREFIX<FIRST+COUNT-1> with rx_mode RX_MODE
       (ring or recvmmsg) and prints the median and p99 of the add and del times."""
import json, socket, statistics, sys, time

sock, mode, prefix, first, count = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4]), int(sys.argv[5])


def req(o):
    s = socket.socket(socket.AF_UNIX)
    s.connect(sock)
    s.sendall((json.dumps(o) + "\n").encode())
    out = b""
    while True:
        d = s.recv(65536)
        if not d:
            break
        out += d
    return json.loads(out)


def pct(v, p):
    v = sorted(v)
    return v[min(len(v) - 1, int(len(v) * p / 100))]


add = []
for i in range(first, first + count):
    p = {"bridge": "br1", "attachment": {"container_id": "c%d" % i, "ifname": "net1"},
         "port": {"name": "ns/p%d/net1" % i, "type": "afpacket", "iface": "%s%d" % (prefix, i),
                  "tag": 10, "rx_mode": mode}}
    t = time.perf_counter()
    r = req({"v": 1, "op": "cni_add", "cni": p})
    add.append((time.perf_counter() - t) * 1000)
    assert r["ok"], r
dl = []
for i in range(first, first + count):
    t = time.perf_counter()
    r = req({"v": 1, "op": "cni_del", "attachment": {"container_id": "c%d" % i, "ifname": "net1"}})
    dl.append((time.perf_counter() - t) * 1000)
    assert r["ok"], r
print("cni_add %s: median %.2f ms p99 %.2f ms; cni_del: median %.2f ms p99 %.2f ms"
      % (mode, statistics.median(add), pct(add, 99), statistics.median(dl), pct(dl, 99)))
