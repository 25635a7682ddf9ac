#!/usr/bin/python3
"""scapy's VXLAN and Geneve layers as the independent implementation for tunnel_scapy.rs.

recv KIND LOCAL PORT COUNT: receives COUNT datagrams on LOCAL:PORT (5 s at most) and prints one
  JSON line per datagram as scapy dissects it.
send KIND LOCAL PORT DEST: sends the receive cases (built with scapy) from LOCAL:PORT to
  DEST:PORT and prints them as one JSON list: the inner frame and the verdict expected
  ("deliver" or a drop reason).
"""
import json
import socket
import sys

from scapy.contrib.geneve import GENEVE, GeneveOptions
from scapy.layers.l2 import Ether
from scapy.layers.vxlan import VXLAN
from scapy.packet import Raw

VNI = 5001


def inner(n, size=60):
    e = Ether(dst="02:00:00:00:00:02", src="02:00:00:00:0b:%02x" % n, type=0x88B5)
    pad = bytes((n + i) & 0xFF for i in range(size - 14))
    return bytes(e / Raw(pad))


def cases(kind):
    out = []
    if kind == "vxlan":
        out.append(("deliver", bytes(VXLAN(vni=VNI, flags=0x08) / Raw(inner(1)))))
        # Reserved flag bits and reserved fields set: ignored on receipt (RFC 7348).
        v = bytearray(bytes(VXLAN(vni=VNI, flags=0x08 | 0x80 | 0x01) / Raw(inner(2))))
        v[1:4] = b"\xff\xff\xff"
        v[7] = 0xFF
        out.append(("deliver", bytes(v)))
        out.append(("tunnel_bad_header", bytes(VXLAN(vni=VNI, flags=0x00) / Raw(inner(3)))))
        out.append(("tunnel_wrong_vni", bytes(VXLAN(vni=VNI + 1, flags=0x08) / Raw(inner(4)))))
        out.append(("tunnel_inner_runt", bytes(VXLAN(vni=VNI, flags=0x08) / Raw(inner(5)[:13]))))
        out.append(("tunnel_truncated", bytes(VXLAN(vni=VNI, flags=0x08))[:5]))
    else:
        g = lambda **kw: GENEVE(vni=VNI, proto=0x6558, **kw)
        opts = [
            GeneveOptions(classid=0x0102, type=0x03, data=b"\xaa\xbb\xcc\xdd"),
            GeneveOptions(classid=0xFFFF, type=0x01, data=b"\x01\x02\x03\x04\x05\x06\x07\x08"),
        ]
        out.append(("deliver", bytes(g() / Raw(inner(1)))))
        # Non-critical TLVs, skipped by length, with and without the C bit.
        out.append(("deliver", bytes(g(options=opts) / Raw(inner(2)))))
        out.append(("deliver", bytes(g(options=opts, critical=1) / Raw(inner(3)))))
        # Reserved fields set: ignored.
        r = bytearray(bytes(g(options=opts) / Raw(inner(4))))
        r[1] |= 0x3F
        r[7] = 0xFF
        out.append(("deliver", bytes(r)))
        crit = [GeneveOptions(classid=0x0102, type=0x83, data=b"\x00\x00\x00\x00")]
        out.append(("geneve_bad_options", bytes(g(options=crit, critical=1) / Raw(inner(5)))))
        # Opt Len says 60 bytes of options; the packet ends before.
        p = bytearray(bytes(g() / Raw(inner(6, 20))))
        p[0] = (p[0] & 0xC0) | 15
        out.append(("geneve_bad_options", bytes(p)))
        out.append(("tunnel_bad_header", bytes(g(oam=1) / Raw(inner(7)))))
        out.append(("tunnel_bad_header", bytes(GENEVE(vni=VNI, proto=0x0800) / Raw(inner(8)))))
        out.append(("tunnel_bad_header", bytes(g(version=1) / Raw(inner(9)))))
        out.append(("tunnel_wrong_vni", bytes(GENEVE(vni=VNI + 1, proto=0x6558) / Raw(inner(10)))))
        out.append(("tunnel_inner_runt", bytes(g(options=opts) / Raw(inner(11)[:10]))))
        out.append(("tunnel_truncated", bytes(g())[:7]))
    return out


def payload_of(kind, d):
    if kind == "vxlan":
        p = VXLAN(d)
        return {"vni": p.vni, "flags": int(p.flags), "inner": bytes(p.payload).hex()}
    p = GENEVE(d)
    return {"vni": p.vni, "version": p.version, "optionlen": p.optionlen, "oam": int(p.oam),
            "critical": int(p.critical), "proto": p.proto, "inner": bytes(p.payload).hex()}


def main():
    mode, kind, local, port = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])
    fam = socket.AF_INET6 if ":" in local else socket.AF_INET
    s = socket.socket(fam, socket.SOCK_DGRAM)
    s.bind((local, port))
    if mode == "recv":
        count = int(sys.argv[5])
        s.settimeout(5)
        print("ready", flush=True)
        for _ in range(count):
            d, _ = s.recvfrom(65535)
            print(json.dumps(payload_of(kind, d)), flush=True)
    else:
        dest = sys.argv[5]
        sent = []
        for verdict, d in cases(kind):
            s.sendto(d, (dest, port))
            off = 8 if kind == "vxlan" else 8 + (d[0] & 0x3F) * 4 if len(d) >= 8 else 0
            sent.append({"verdict": verdict, "inner": d[off:].hex()})
        print(json.dumps(sent), flush=True)


main()
