#!/usr/bin/env python3
"""Writes the example of README "Compare with native flow logs": ten minutes
of traffic on two interfaces as AWS would log it (native/, S3 key layout,
gzip text with a header line, 60-second windows that start 23 s past the
minute) and as the agent would (agent.txt, its own format, no header,
windows aligned to the minute), with known differences:

- the agent missed a short DNS exchange (only native);
- AWS does not log traffic to the instance metadata service (only agent);
- the agent counted 2 packets fewer on the HTTPS response flow;
- the agent's clock is 1 s ahead on the database flow, whose SYN-ACK it
  did not see (tcp-flags differ);
- the agent names the second interface eni-2ee1fb4213a13053a (no metadata).

Deterministic: running it again writes the same files.
"""
import gzip, os, shutil

T0 = 1795593600  # 2026-11-24T08:00:00Z
ACCOUNT = "123456789012"
ENI1, ENI2, AGENT_ENI2 = "eni-0a1b2c3d4e5f60718", "eni-0f9e8d7c6b5a40312", "eni-2ee1fb4213a13053a"
HERE = os.path.dirname(os.path.abspath(__file__))

def flow(iface, src, dst, sport, dport, proto, direction, pkts):
    return dict(iface=iface, src=src, dst=dst, sport=sport, dport=dport, proto=proto, dir=direction, pkts=pkts)

def pkts(start, n, every, size, flags=0):
    return [(start + i * every, size, flags) for i in range(n)]

https_req = pkts(T0 + 5, 290, 2, 120); https_req[0] = (T0 + 5, 60, 2); https_req[-1] = (https_req[-1][0], 52, 1)
https_resp = pkts(T0 + 5, 290, 2, 1400); https_resp[0] = (T0 + 5, 60, 18); https_resp[-1] = (https_resp[-1][0], 52, 1)
db_req = pkts(T0 + 100, 40, 5, 300); db_req[0] = (T0 + 100, 60, 2)
db_resp = pkts(T0 + 100, 40, 5, 900); db_resp[0] = (T0 + 100, 60, 18)
dns_q, dns_a = pkts(T0 + 200, 1, 1, 74), pkts(T0 + 200, 1, 1, 190)
imds_req = pkts(T0 + 300, 3, 1, 250); imds_resp = pkts(T0 + 300, 3, 1, 1200)

native = [
    flow(ENI1, "10.0.1.17", "52.94.236.248", 44312, 443, 6, "egress", https_req),
    flow(ENI1, "52.94.236.248", "10.0.1.17", 443, 44312, 6, "ingress", https_resp),
    flow(ENI1, "10.0.1.17", "10.0.0.2", 53001, 53, 17, "egress", dns_q),
    flow(ENI1, "10.0.0.2", "10.0.1.17", 53, 53001, 17, "ingress", dns_a),
    flow(ENI2, "10.0.2.40", "10.0.3.8", 50210, 5432, 6, "egress", db_req),
    flow(ENI2, "10.0.3.8", "10.0.2.40", 5432, 50210, 6, "ingress", db_resp),
]
resp_missing = {https_resp[100][0], https_resp[200][0]}
agent = [
    flow(ENI1, "10.0.1.17", "52.94.236.248", 44312, 443, 6, "egress", https_req),
    flow(ENI1, "52.94.236.248", "10.0.1.17", 443, 44312, 6, "ingress", [p for p in https_resp if p[0] not in resp_missing]),
    flow(ENI1, "10.0.1.17", "169.254.169.254", 39120, 80, 6, "egress", imds_req),
    flow(ENI1, "169.254.169.254", "10.0.1.17", 80, 39120, 6, "ingress", imds_resp),
    flow(AGENT_ENI2, "10.0.2.40", "10.0.3.8", 50210, 5432, 6, "egress", [(t + 1, b, f) for t, b, f in db_req]),
    flow(AGENT_ENI2, "10.0.3.8", "10.0.2.40", 5432, 50210, 6, "ingress", [(t + 1, b, 0) for t, b, f in db_resp]),
]

def records(flows, offset, idle):
    """(window, record dict) of every flow cut into 60 s windows at +offset,
    plus NODATA records for the interfaces in `idle` windows."""
    out = []
    for i, f in enumerate(flows):
        cur = None
        for t, b, fl in f["pkts"]:
            w = (t - offset) // 60
            if cur is None or cur["w"] != w:
                cur = dict(f, w=w, i=i, packets=0, bytes=0, start=t, end=t, flags=0, status="OK")
                out.append(cur)
            cur["packets"] += 1; cur["bytes"] += b; cur["end"] = t; cur["flags"] |= fl
    for iface, w in idle:
        out.append(dict(iface=iface, w=w, i=99, start=w * 60 + offset, end=w * 60 + offset + 60, status="NODATA"))
    return sorted(out, key=lambda r: (r["w"], r["i"]))

def field(r, name):
    if r["status"] != "OK" and name not in ("version", "account-id", "interface-id", "start", "end", "log-status"):
        return "-"
    return str({
        "version": 5, "account-id": ACCOUNT, "interface-id": r["iface"], "srcaddr": r.get("src"), "dstaddr": r.get("dst"),
        "srcport": r.get("sport"), "dstport": r.get("dport"), "protocol": r.get("proto"), "packets": r.get("packets"),
        "bytes": r.get("bytes"), "start": r["start"], "end": r["end"], "action": "ACCEPT", "log-status": r["status"],
        "tcp-flags": r.get("flags"), "flow-direction": r.get("dir"), "vpc-id": "vpc-0c0ffee0c0ffee000", "traffic-path": "-" if r.get("dir") == "ingress" else 1,
    }[name])

NATIVE_FIELDS = "version account-id interface-id vpc-id flow-direction traffic-path srcaddr dstaddr srcport dstport protocol tcp-flags packets bytes start end action log-status".split()
AGENT_FIELDS = "version account-id interface-id srcaddr dstaddr srcport dstport protocol packets bytes start end action log-status tcp-flags".split()

shutil.rmtree(os.path.join(HERE, "native"), ignore_errors=True)
objects = {}
for r in records(native, 23, [(ENI2, (T0 + 420) // 60), (ENI2, (T0 + 480) // 60)]):
    objects.setdefault(r["end"] // 300 * 300, []).append(r)
day = os.path.join(HERE, "native", "AWSLogs", ACCOUNT, "vpcflowlogs", "us-east-1", "2026", "11", "24")
os.makedirs(day)
for n, (t, rs) in enumerate(sorted(objects.items())):
    hh, mm = (t % 86400) // 3600, (t % 3600) // 60
    name = f"{ACCOUNT}_vpcflowlogs_us-east-1_fl-0123456789abcdef0_20261124T{hh:02}{mm:02}Z_{0x3f2a9c1e + n:08x}.log.gz"
    text = " ".join(NATIVE_FIELDS) + "\n" + "".join(" ".join(field(r, f) for f in NATIVE_FIELDS) + "\n" for r in rs)
    with open(os.path.join(day, name), "wb") as fh:
        fh.write(gzip.compress(text.encode(), mtime=0))
with open(os.path.join(HERE, "agent.txt"), "w") as fh:
    for r in records(agent, 0, [(AGENT_ENI2, (T0 + 420) // 60)]):
        fh.write(" ".join(field(r, f) if f != "version" else "3" for f in AGENT_FIELDS) + "\n")
