#!/usr/bin/env python3
"""Helper for integration/bench/run.sh: seed the registry, upload blobs, summarise.

Subcommands (each prints what run.sh needs, and exits non-zero on anything unexpected):

  ports N                      N free TCP ports on 127.0.0.1
  seed BASE CA DIR BLOB UPLOAD push BLOB, UPLOAD (pre-seeded so every measured upload ends
                               the same way), small blobs, a config and an OCI manifest tagged
                               v1 to BASE (the registry itself); write DIR/manifest.json and
                               DIR/seed.json; print the manifest, blob and upload digests
  upload BASE CA REPO FILE DIGEST MODE [CHUNK]
                               one timed upload (MODE mono|chunked); prints MB/s
  load OUTPUT                  req/s, p50 ms, p99 ms, requests answered of one loadgen run;
                               fails on any error
  report SAMPLES META OUT      table with ratios and targets on stdout, JSON to OUT

BASE is https://127.0.0.1:PORT/v2/<name prefix>, e.g. .../v2/bench.local for portcullis.
Only the standard library: http.client + ssl, so the helper needs nothing installed.
"""

import hashlib
import http.client
import inspect
import json
import os
import socket
import ssl
import statistics
import sys
import time
import urllib.parse

MB = 1_000_000
MIB = 1024 * 1024
SEND_BLOCK = 1 * MIB
OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
OCI_CONFIG = "application/vnd.oci.image.config.v1+json"
OCI_LAYER = "application/vnd.oci.image.layer.v1.tar+gzip"


def die(msg):
    print(f"bench.py: {msg}", file=sys.stderr)
    sys.exit(1)


class Registry:
    """One keep-alive HTTPS connection to BASE (a registry, nginx or portcullis)."""

    def __init__(self, base, cafile):
        url = urllib.parse.urlsplit(base)
        self.host, self.port = url.hostname, url.port
        self.prefix = url.path.rstrip("/")  # /v2 or /v2/bench.local
        ctx = ssl.create_default_context(cafile=cafile)
        self.conn = http.client.HTTPSConnection(self.host, self.port, context=ctx)

    def request(self, method, path, body=None, headers=None, expect=(200,)):
        self.conn.request(method, path, body=body, headers=headers or {})
        resp = self.conn.getresponse()
        data = resp.read()
        if resp.status not in expect:
            die(f"{method} {path}: {resp.status} {data[:300]!r}")
        return resp, data

    def path(self, repo, rest):
        return f"{self.prefix}/{repo}/{rest}"

    def start_upload(self, repo):
        resp, _ = self.request("POST", self.path(repo, "blobs/uploads/"), b"", expect=(202,))
        return self.location(resp)

    def location(self, resp):
        loc = resp.getheader("Location")
        if not loc:
            die("upload answer without Location")
        # Absolute (registry, nginx) or relative (portcullis): keep path and query only,
        # the connection already goes to the right place.
        url = urllib.parse.urlsplit(loc)
        if not url.path.startswith(self.prefix + "/"):
            die(f"Location {loc} is not under {self.prefix}/")
        return url.path + (f"?{url.query}" if url.query else "")

    def send_file(self, method, target, path, offset, length, headers):
        """Stream `length` bytes of `path` from `offset` as one request body."""
        self.conn.putrequest(method, target)
        headers = dict(headers, **{"Content-Length": str(length),
                                   "Content-Type": "application/octet-stream"})
        for k, v in headers.items():
            self.conn.putheader(k, v)
        self.conn.endheaders()
        with open(path, "rb") as f:
            f.seek(offset)
            left = length
            while left:
                block = f.read(min(SEND_BLOCK, left))
                if not block:
                    die(f"{path} ended early")
                self.conn.send(block)
                left -= len(block)
        resp = self.conn.getresponse()
        data = resp.read()
        return resp, data

    def upload(self, repo, path, digest, mode, chunk):
        """POST, then one PUT with the whole body (mono) or PATCHes and an empty PUT."""
        size = os.path.getsize(path)
        loc = self.start_upload(repo)
        if mode == "chunked":
            offset = 0
            while offset < size:
                n = min(chunk, size - offset)
                resp, data = self.send_file("PATCH", loc, path, offset, n,
                                            {"Content-Range": f"{offset}-{offset + n - 1}"})
                if resp.status != 202:
                    die(f"PATCH {loc}: {resp.status} {data[:300]!r}")
                loc = self.location(resp)
                offset += n
            self.conn.request("PUT", with_digest(loc, digest), body=b"")
            resp = self.conn.getresponse()
            data = resp.read()
        elif mode == "mono":
            resp, data = self.send_file("PUT", with_digest(loc, digest), path, 0, size, {})
        else:
            die(f"unknown upload mode {mode}")
        if resp.status != 201:
            die(f"PUT {loc}: {resp.status} {data[:300]!r}")
        if resp.getheader("Docker-Content-Digest") != digest:
            die(f"registry stored {resp.getheader('Docker-Content-Digest')}, sent {digest}")


def with_digest(loc, digest):
    sep = "&" if "?" in loc else "?"
    return f"{loc}{sep}digest={urllib.parse.quote(digest, safe='')}"


def sha256_file(path):
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(SEND_BLOCK):
            h.update(block)
    return "sha256:" + h.hexdigest()


def cmd_ports(n):
    socks = [socket.socket() for _ in range(int(n))]
    for s in socks:
        s.bind(("127.0.0.1", 0))
    print(" ".join(str(s.getsockname()[1]) for s in socks))
    for s in socks:
        s.close()


def cmd_seed(base, cafile, outdir, blob, upload_file):
    """Push everything the benchmark reads, straight to the registry."""
    reg = Registry(base, cafile)
    repo = "bench/app"

    def push_bytes(data):
        digest = "sha256:" + hashlib.sha256(data).hexdigest()
        loc = reg.start_upload(repo)
        reg.request("PUT", with_digest(loc, digest), data,
                    {"Content-Type": "application/octet-stream"}, expect=(201,))
        return {"mediaType": OCI_LAYER, "digest": digest, "size": len(data)}

    big_digest = sha256_file(blob)
    reg.upload(repo, blob, big_digest, "mono", 0)
    upload_digest = sha256_file(upload_file)
    # The measured uploads then all find the blob present, as the first would not.
    reg.upload("bench/upload", upload_file, upload_digest, "mono", 0)

    layers = [{"mediaType": OCI_LAYER, "digest": big_digest, "size": os.path.getsize(blob)}]
    for size in (1024, 16 * 1024, 64 * 1024):
        layers.append(push_bytes(os.urandom(size)))
    config = json.dumps({
        "architecture": "amd64", "os": "linux",
        "config": {"Env": ["PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin"],
                   "Cmd": ["/bin/sh"]},
        "rootfs": {"type": "layers", "diff_ids": [l["digest"] for l in layers]},
        "history": [{"created_by": f"benchmark layer {i}"} for i in range(len(layers))],
    }).encode()
    cfg = push_bytes(config)
    cfg["mediaType"] = OCI_CONFIG
    manifest = json.dumps({
        "schemaVersion": 2, "mediaType": OCI_MANIFEST, "config": cfg, "layers": layers,
        "annotations": {"org.opencontainers.image.title": "portcullis benchmark"},
    }, indent=3).encode()
    resp, _ = reg.request("PUT", reg.path(repo, "manifests/v1"), manifest,
                          {"Content-Type": OCI_MANIFEST}, expect=(201,))
    digest = "sha256:" + hashlib.sha256(manifest).hexdigest()
    if resp.getheader("Docker-Content-Digest") != digest:
        die("manifest digest differs from what the registry stored")
    seed = {"repo": repo, "tag": "v1", "manifest_digest": digest,
            "manifest_bytes": len(manifest), "blob_digest": big_digest,
            "blob_bytes": os.path.getsize(blob), "upload_digest": upload_digest,
            "upload_bytes": os.path.getsize(upload_file)}
    with open(os.path.join(outdir, "seed.json"), "w") as f:
        json.dump(seed, f)
    with open(os.path.join(outdir, "manifest.json"), "wb") as f:
        f.write(manifest)
    print(f"{digest} {big_digest} {upload_digest}")


def cmd_upload(base, cafile, repo, path, digest, mode, chunk=str(16 * MIB)):
    reg = Registry(base, cafile)
    reg.request("GET", "/v2/")  # connect and handshake outside the timed part, as docker does
    started = time.monotonic()
    reg.upload(repo, path, digest, mode, int(chunk))
    elapsed = time.monotonic() - started
    print(f"{os.path.getsize(path) / elapsed / MB:.1f}")


def cmd_load(path):
    """The JSON of one loadgen run: prints req/s, p50 ms, p99 ms, requests answered."""
    with open(path) as f:
        r = json.load(f)
    if r["requests"] == 0 or r["errors"] or r["non_2xx"]:
        die(f"{path}: {r}")
    print(f"{r['rps']:.0f} {r['p50_ms']:.3f} {r['p99_ms']:.3f} {r['completed']}")


# --- report ---------------------------------------------------------------------------

# relay: nginx's stream module as a bare TLS relay in front of the registry (decrypt,
# re-encrypt, no HTTP), measured for blob downloads only: the most any proxy that
# terminates TLS can get on this machine, which tells a proxy's cost from TLS's.
PATHS = ("direct", "nginx", "relay", "portcullis", "signed")

# (key, label, unit); for latency, memory and CPU lower is better
ROWS = [
    ("blob_1", "blob download, 1 stream", "MB/s"),
    ("blob_8", "blob download, 8 streams", "MB/s"),
    ("blob_64", "blob download, 64 streams", "MB/s"),
    ("upload_mono", "blob upload, monolithic", "MB/s"),
    ("upload_chunked", "blob upload, chunked", "MB/s"),
]
for _kind, _label in (("get_tag", "GET manifest by tag"), ("get_digest", "GET manifest by digest"),
                      ("head_tag", "HEAD manifest by tag")):
    for _c in (32, 256):
        ROWS += [(f"{_kind}_c{_c}_rps", f"{_label}, {_c} conns", "req/s"),
                 (f"{_kind}_c{_c}_p50", "  p50", "ms"),
                 (f"{_kind}_c{_c}_p99", "  p99", "ms")]
for _kind, _label in (("get_tag", "GET manifest by tag"), ("head_tag", "HEAD manifest by tag")):
    ROWS += [(f"{_kind}_paced_p50", f"{_label}, 32 conns, paced, p50", "ms"),
             (f"{_kind}_paced_p99", "  p99", "ms")]
ROWS += [("rss_c256", "peak RSS, 256-conn manifest runs", "MiB"),
         ("rss_blob_64", "peak RSS, 64 blob streams", "MiB"),
         # What the figures cost: CPU (user + system) of the proxy and of the registry.
         ("blob_1_cpu_proxy", "proxy CPU, blob 1 stream", "s/GB"),
         ("blob_1_cpu_total", "all CPU (registry+proxy+curl), 1 stream", "s/GB"),
         ("blob_8_cpu_proxy", "proxy CPU, blob 8 streams", "s/GB"),
         ("blob_8_cpu_registry", "registry CPU, blob 8 streams", "s/GB"),
         ("blob_8_cpu_client", "curl CPU, blob 8 streams", "s/GB"),
         ("blob_8_cpu_total", "all CPU (registry+proxy+curl), 8 streams", "s/GB"),
         ("upload_mono_cpu_proxy", "proxy CPU, upload monolithic", "s/GB"),
         ("get_tag_c32_cpu_proxy", "proxy CPU, GET by tag, 32 conns", "us/req"),
         ("get_tag_c32_cpu_registry", "registry CPU, GET by tag, 32 conns", "us/req"),
         ("get_digest_c32_cpu_proxy", "proxy CPU, GET by digest, 32 conns", "us/req"),
         ("head_tag_c256_cpu_proxy", "proxy CPU, HEAD by tag, 256 conns", "us/req"),
         ("head_tag_c256_cpu_registry", "registry CPU, HEAD by tag, 256 conns", "us/req")]


def median_ratio(samples, key, num, den):
    """Median over rounds of the per-round ratio: a round's paths ran back to back."""
    a, b = samples.get((key, num), {}), samples.get((key, den), {})
    ratios = [a[r] / b[r] for r in a if r in b and b[r] > 0]
    return statistics.median(ratios) if ratios else None


def median_diff(samples, key, a, b):
    x, y = samples.get((key, a), {}), samples.get((key, b), {})
    diffs = [x[r] - y[r] for r in x if r in y]
    return statistics.median(diffs) if diffs else None


def add_cpu_totals(samples):
    """blob_N_cpu_total: every process on the path (registry, proxy, curl), CPU s per GB."""
    for n in (1, 8, 64):
        for p in PATHS:
            parts = [samples.get((f"blob_{n}_cpu_{who}", p), {})
                     for who in ("registry", "client") + (("proxy",) if p != "direct" else ())]
            rounds = set.intersection(*(set(x) for x in parts)) if all(parts) else set()
            if rounds:
                samples[(f"blob_{n}_cpu_total", p)] = {r: sum(x[r] for x in parts) for r in rounds}


def targets(samples):
    """Each target of issue 7 with the measured figure: (text, figure, met)."""
    out = []

    def ratio(key, den, minimum, label):
        r = median_ratio(samples, key, "portcullis", den)
        out.append((label, None if r is None else f"{r:.3f}x", r is not None and r >= minimum))

    for key, what in (("blob_1", "1 stream"), ("blob_8", "8 streams")):
        ratio(key, "nginx", 1.0, f"blob download {what} >= 1.0x nginx")
        ratio(key, "direct", 0.9, f"blob download {what} >= 0.9x direct")
        # With every core busy, throughput goes as 1 / (CPU per byte of the whole path):
        # the ratio a CPU-bound machine allows is direct's CPU/GB over portcullis' CPU/GB.
        ceiling = median_ratio(samples, f"{key}_cpu_total", "direct", "portcullis")
        if ceiling is not None:
            out.append((f"  (CPU/GB of direct over CPU/GB via portcullis, {what})",
                        f"{ceiling:.2f}x", None))
        relay = median_ratio(samples, key, "relay", "direct")
        if relay is not None:
            out.append((f"  (bare TLS relay over direct, {what}: the most TLS allows)",
                        f"{relay:.3f}x", None))
            over = median_ratio(samples, key, "portcullis", "relay")
            out.append((f"  (portcullis over the bare TLS relay, {what})", f"{over:.3f}x", None))
    for key, what in (("upload_mono", "monolithic"), ("upload_chunked", "chunked")):
        ratio(key, "nginx", 1.0, f"blob upload {what} >= 1.0x nginx")
        ratio(key, "direct", 0.9, f"blob upload {what} >= 0.9x direct")
    for kind in ("get_tag", "get_digest", "head_tag"):
        for c in (32, 256):
            ratio(f"{kind}_c{c}_rps", "nginx", 1.0, f"{kind} req/s at {c} conns >= 1.0x nginx")
    for kind in ("get_tag", "head_tag"):
        d = median_diff(samples, f"{kind}_paced_p99", "portcullis", "direct")
        out.append((f"{kind} p99 added over direct, 32 conns paced, <= 1 ms",
                    None if d is None else f"{d:+.2f} ms", d is not None and d <= 1.0))
    for kind in ("get_tag", "head_tag"):
        # The same portcullis with a containers-policy.json requiring a GPG signature
        # (issue 15): what a verified pull by tag adds once its decision is cached.
        d = median_diff(samples, f"{kind}_paced_p99", "signed", "portcullis")
        out.append((f"{kind} p99 added by signature policy (cached), paced, <= 1 ms",
                    None if d is None else f"{d:+.2f} ms", d is not None and d <= 1.0))
        d50 = median_diff(samples, f"{kind}_paced_p50", "signed", "portcullis")
        out.append((f"  ({kind} p50 added by signature policy, paced)",
                    None if d50 is None else f"{d50:+.2f} ms", None))
    for kind in ("get_tag", "get_digest", "head_tag"):
        # Closed loop, every core busy: p99 is mostly queueing for a CPU, so this follows
        # the req/s ratio above more than it measures what the proxy adds to one request.
        d = median_diff(samples, f"{kind}_c32_p99", "portcullis", "direct")
        out.append((f"  ({kind} p99 added over direct, 32 conns saturated)",
                    None if d is None else f"{d:+.2f} ms", None))
    for c in (32, 256):
        ratio(f"get_digest_c{c}_rps", "direct", 2.0, f"get_digest req/s at {c} conns >= 2x direct")
    rss = samples.get(("rss_blob_64", "portcullis"), {})
    peak = max(rss.values()) if rss else None
    out.append(("peak RSS with 64 blob streams <= 100 MiB",
                None if peak is None else f"{peak:.1f} MiB", peak is not None and peak <= 100))
    return out


def fmt(v):
    if v is None:
        return "-"
    if v >= 100:
        return f"{v:,.0f}"
    return f"{v:.2f}"


def cmd_report(samples_path, meta_path, out_path):
    samples = {}  # (metric, path) -> {round: value}
    with open(samples_path) as f:
        raw = [json.loads(line) for line in f]
    for s in raw:
        samples.setdefault((s["metric"], s["path"]), {})[s["round"]] = s["value"]
    add_cpu_totals(samples)
    with open(meta_path) as f:
        meta = json.load(f)

    table = []
    lines = [f"{'metric':<42}{'unit':>6}{'direct':>10}{'nginx':>10}{'relay':>8}"
             f"{'portcullis':>12}{'p/direct':>10}{'p/nginx':>9}{'signed':>9}"]
    for key, label, unit in ROWS:
        med = {p: statistics.median(samples[(key, p)].values()) if (key, p) in samples else None
               for p in PATHS}
        if all(v is None for v in med.values()):
            continue
        r_direct = median_ratio(samples, key, "portcullis", "direct")
        r_nginx = median_ratio(samples, key, "portcullis", "nginx")
        table.append({"metric": key, "label": label.strip(), "unit": unit, **med,
                      "portcullis_over_direct": r_direct, "portcullis_over_nginx": r_nginx,
                      "rounds": {p: samples.get((key, p), {}) for p in PATHS}})
        lines.append(f"{label:<42}{unit:>6}{fmt(med['direct']):>10}{fmt(med['nginx']):>10}"
                     f"{fmt(med['relay']):>8}{fmt(med['portcullis']):>12}{fmt(r_direct):>10}"
                     f"{fmt(r_nginx):>9}{fmt(med['signed']):>9}")
    checks = targets(samples)
    if meta.get("paced_only"):
        # Only the paced runs were made: a figure they don't give is "not run", not missed.
        checks = [(t, f, None if f is None else m) for t, f, m in checks]
    lines.append("")
    lines.append(f"{'target (issue 7)':<60}{'measured':>12}  status")
    for text, figure, met in checks:
        status = {True: "met", False: "MISSED", None: ""}[met]
        lines.append(f"{text:<60}{figure or '-':>12}  {status}")
    print("\n".join(lines))

    result = dict(meta, table=table,
                  targets=[{"target": t, "measured": f, "met": m} for t, f, m in checks],
                  text="\n".join(lines), samples=raw)
    with open(out_path, "w") as f:
        json.dump(result, f, indent=1)
        f.write("\n")


def main(argv):
    commands = {"ports": cmd_ports, "seed": cmd_seed, "upload": cmd_upload,
                "load": cmd_load, "report": cmd_report}
    if len(argv) < 2 or argv[1] not in commands:
        die(__doc__)
    command = commands[argv[1]]
    try:
        inspect.signature(command).bind(*argv[2:])
    except TypeError as e:
        die(f"{argv[1]}: {e}\n{__doc__}")
    command(*argv[2:])


if __name__ == "__main__":
    main(sys.argv)
