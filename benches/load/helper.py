#!/usr/bin/env python3
"""Helper for benches/load/run (Python 3.11, standard library only).

Every network call goes to 127.0.0.1 with a timeout; every loop is bounded by a count or a
deadline. Subcommands are listed in main() at the bottom.
"""

from __future__ import annotations

import argparse
import http.client
import json
import math
import os
import random
import re
import socket
import statistics
import string
import sys
import threading
import time
import zlib

HOST = "127.0.0.1"
TIMEOUT = 10.0
BASE62 = string.digits + string.ascii_uppercase + string.ascii_lowercase


def die(msg: str) -> None:
    print(f"helper: {msg}", file=sys.stderr)
    sys.exit(1)


# ---------------------------------------------------------------- ports and readiness


def cmd_ports(a: argparse.Namespace) -> None:
    """Prints `n` distinct free loopback ports (all bound at once, then released)."""
    socks = []
    try:
        for _ in range(a.n):
            s = socket.socket()
            s.bind((HOST, 0))
            socks.append(s)
        print(" ".join(str(s.getsockname()[1]) for s in socks))
    finally:
        for s in socks:
            s.close()


def cmd_wait_http(a: argparse.Namespace) -> None:
    """Polls GET url until it answers `status` (or the deadline passes)."""
    deadline = time.monotonic() + a.timeout
    last = "no answer"
    while time.monotonic() < deadline:
        try:
            c = http.client.HTTPConnection(HOST, a.port, timeout=2)
            c.request("GET", a.path)
            r = c.getresponse()
            r.read()
            c.close()
            if r.status == a.status:
                return
            last = f"status {r.status}"
        except OSError as e:
            last = str(e)
        time.sleep(0.05)
    die(f"127.0.0.1:{a.port}{a.path} did not answer {a.status} within {a.timeout}s ({last})")


# ---------------------------------------------------------------- admin API


class Admin:
    def __init__(self, port: int, token: str):
        self.port = port
        self.headers = {
            "Authorization": f"Bearer {token}",
            "Content-Type": "application/json",
        }
        self.conn = http.client.HTTPConnection(HOST, port, timeout=TIMEOUT)

    def call(self, method: str, path: str, body: dict | None = None) -> tuple[int, dict]:
        data = None if body is None else json.dumps(body).encode()
        for attempt in range(3):  # a dropped keep-alive connection is retried, bounded
            try:
                self.conn.request(method, path, body=data, headers=self.headers)
                r = self.conn.getresponse()
                raw = r.read()
                return r.status, (json.loads(raw) if raw else {})
            except (http.client.HTTPException, OSError):
                self.conn.close()
                self.conn = http.client.HTTPConnection(HOST, self.port, timeout=TIMEOUT)
                if attempt == 2:
                    raise
        raise AssertionError("unreachable")


def cmd_create_keys(a: argparse.Namespace) -> None:
    """PUTs one user, then POSTs `count` keys over `conns` keep-alive connections.

    Writes one secret per line to `out` (and `out`.ids with the key ids)."""
    admin = Admin(a.port, a.token)
    status, body = admin.call("PUT", f"/v1/users/{a.owner}", {})
    if status not in (200, 201):
        die(f"PUT /v1/users/{a.owner}: {status} {body}")
    secrets: list[str | None] = [None] * a.count
    ids: list[str | None] = [None] * a.count
    errors: list[str] = []
    next_i = [0]
    lock = threading.Lock()

    def worker() -> None:
        me = Admin(a.port, a.token)
        while True:
            with lock:
                i = next_i[0]
                if i >= a.count or errors:
                    return
                next_i[0] = i + 1
            try:
                status, body = me.call("POST", "/v1/keys", {"owner": a.owner, "name": f"load-{i}"})
            except Exception as e:  # noqa: BLE001 - reported below
                with lock:
                    errors.append(f"key {i}: {e}")
                return
            if status != 201 or "key" not in body:
                with lock:
                    errors.append(f"key {i}: {status} {body}")
                return
            secrets[i] = body["key"]
            ids[i] = body["id"]

    started = time.monotonic()
    threads = [threading.Thread(target=worker, daemon=True) for _ in range(a.conns)]
    for t in threads:
        t.start()
    last_report = started
    for t in threads:
        while t.is_alive():
            t.join(timeout=1.0)
            now = time.monotonic()
            if a.progress and now - last_report >= 10:
                last_report = now
                print(f"  … {next_i[0]} keys after {now - started:.0f}s", file=sys.stderr)
    elapsed = time.monotonic() - started
    if errors:
        die("key creation failed: " + "; ".join(errors[:3]))
    with open(a.out, "w") as f:
        f.write("\n".join(s for s in secrets if s) + "\n")
    with open(a.out + ".ids", "w") as f:
        f.write("\n".join(i for i in ids if i) + "\n")
    print(json.dumps({"count": a.count, "seconds": round(elapsed, 2),
                      "per_second": round(a.count / elapsed, 1), "connections": a.conns}))


# ---------------------------------------------------------------- proxy traffic


def read_keys(path: str, limit: int | None = None) -> list[str]:
    with open(path) as f:
        keys = [line.strip() for line in f if line.strip()]
    return keys[:limit] if limit else keys


def timed_requests(port: int, keys: list[str]) -> tuple[list[float], dict[int, int]]:
    """One GET per key over one keep-alive connection; returns latencies (s) and statuses."""
    conn = http.client.HTTPConnection(HOST, port, timeout=TIMEOUT)
    # Open the connection with a keyless request (refused by arithmetic, no store lookup)
    # so the first timed request does not pay for the TCP handshake.
    conn.request("GET", "/warmup-connection")
    conn.getresponse().read()
    lat: list[float] = []
    statuses: dict[int, int] = {}
    for k in keys:
        t0 = time.perf_counter()
        conn.request("GET", "/load", headers={"X-API-Key": k})
        r = conn.getresponse()
        r.read()
        lat.append(time.perf_counter() - t0)
        statuses[r.status] = statuses.get(r.status, 0) + 1
        if r.getheader("connection", "").lower() == "close":
            conn.close()
            conn = http.client.HTTPConnection(HOST, port, timeout=TIMEOUT)
    conn.close()
    return lat, statuses


def pct(sorted_vals: list[float], p: float) -> float:
    if not sorted_vals:
        return float("nan")
    i = min(len(sorted_vals) - 1, max(0, math.ceil(p / 100 * len(sorted_vals)) - 1))
    return sorted_vals[i]


def summary_ms(lat: list[float]) -> dict:
    s = sorted(lat)
    return {
        "n": len(s),
        "p50_ms": round(pct(s, 50) * 1000, 3),
        "p90_ms": round(pct(s, 90) * 1000, 3),
        "p99_ms": round(pct(s, 99) * 1000, 3),
        "max_ms": round(s[-1] * 1000, 3) if s else None,
        "mean_ms": round(statistics.fmean(s) * 1000, 3) if s else None,
    }


def cmd_warm(a: argparse.Namespace) -> None:
    """One request per key (fills keygate's cache); fails unless every answer is 200."""
    keys = read_keys(a.keys)
    started = time.monotonic()
    _, statuses = timed_requests(a.port, keys)
    bad = {s: n for s, n in statuses.items() if s != 200}
    print(json.dumps({"requests": len(keys), "seconds": round(time.monotonic() - started, 2),
                      "statuses": statuses}))
    if bad:
        die(f"warm-up: non-200 answers {bad}")


def cmd_cold(a: argparse.Namespace) -> None:
    """Interleaved, so that all three series see the same machine conditions: for each key i,
    its first request (a cache miss: keygate loads it from Redis), then key i-1 again (a
    cache hit: same client, same connection), then one Redis PING round trip."""
    keys = read_keys(a.keys, a.count)
    conn = http.client.HTTPConnection(HOST, a.port, timeout=TIMEOUT)
    # Open the connection with a keyless request (refused by arithmetic, no store lookup)
    # so the first timed request does not pay for the TCP handshake.
    conn.request("GET", "/warmup-connection")
    conn.getresponse().read()
    rs = socket.create_connection((HOST, a.redis_port), timeout=TIMEOUT)
    rs.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    def get(key: str) -> tuple[float, int]:
        t0 = time.perf_counter()
        conn.request("GET", "/load", headers={"X-API-Key": key})
        r = conn.getresponse()
        r.read()
        return time.perf_counter() - t0, r.status

    def ping() -> float:
        t0 = time.perf_counter()
        rs.sendall(b"PING\r\n")
        buf = b""
        while not buf.endswith(b"\r\n"):
            chunk = rs.recv(64)
            if not chunk:
                die("redis closed the connection")
            buf += chunk
        return time.perf_counter() - t0

    cold, warm, pings, diffs = [], [], [], []
    statuses: dict[str, dict[int, int]] = {"cold": {}, "warm": {}}
    for i, k in enumerate(keys):
        t, st = get(k)
        cold.append(t)
        statuses["cold"][st] = statuses["cold"].get(st, 0) + 1
        if i > 0:
            w, st = get(keys[i - 1])
            warm.append(w)
            diffs.append(t - w)
            statuses["warm"][st] = statuses["warm"].get(st, 0) + 1
        pings.append(ping())
    conn.close()
    rs.close()
    d = sorted(diffs)
    print(json.dumps({
        "cold": summary_ms(cold) | {"statuses": statuses["cold"]},
        "warm": summary_ms(warm) | {"statuses": statuses["warm"]},
        "ping": summary_ms(pings),
        "miss_minus_hit_ms": {"p50": round(pct(d, 50) * 1000, 3),
                              "p90": round(pct(d, 90) * 1000, 3)},
    }))


def cmd_cold_report(a: argparse.Namespace) -> None:
    raw = a.dir
    c = load(os.path.join(raw, "cold.json"))
    d = load(os.path.join(raw, "metrics-diff.json"))
    after = load(os.path.join(raw, "metrics-after.json"))
    cli = open(os.path.join(raw, "redis-cli-latency.txt")).read().split()
    print("| measurement | n | p50 | p90 | p99 | max |")
    print("|---|---:|---:|---:|---:|---:|")

    def row(name: str, s: dict) -> None:
        print(f"| {name} | {s['n']} | {s['p50_ms']:.3f} ms | {s['p90_ms']:.3f} ms | "
              f"{s['p99_ms']:.3f} ms | {s['max_ms']:.3f} ms |")

    row("keygate, first request of a key (cache miss → Redis)", c["cold"])
    row("keygate, a key already cached (cache hit)", c["warm"])
    row("Redis PING round trip (Python, raw TCP)", c["ping"])
    q = after.get("load_key_quantiles") or {}
    if q:
        def f(k: str) -> str:
            return f"{q[k] * 1000:.3f} ms" if k in q else "—"
        print(f"| keygate's own `load_key` store time (/metrics summary, whole run) | "
              f"{d['store_by_op'].get('load_key', 0):.0f} | {f('0.5')} | {f('0.9')} | "
              f"{f('0.99')} | {f('1')} |")
    print()
    def shares(buckets: dict, upto: float) -> tuple[float, str]:
        total = buckets.get("+Inf", 0)
        text = ", ".join(f"≤ {float(le) * 1000:g} ms: {100 * n / total:.1f}%"
                         for le, n in sorted(((k, v) for k, v in buckets.items() if k != "+Inf"),
                                             key=lambda kv: float(kv[0]))
                         if float(le) <= upto) if total else ""
        return total, text

    total, text = shares(after.get("load_key_buckets") or {}, 0.01)
    if total:
        print(f"keygate's own `load_key` store time (`keygate_store_request_duration_seconds` "
              f"histogram, {total:.0f} loads): {text}.")
        print()
    # Whether a slow miss was slow inside keygate (head parsed to response ready) or
    # outside it (sockets, scheduling, the client).
    total, text = shares(after.get("request_buckets") or {}, 0.05)
    if total:
        print(f"keygate's own time per request, misses and hits together "
              f"(`keygate_http_request_duration_seconds`, {total:.0f} requests since keygate "
              f"started): {text}.")
        print()
    if len(cli) >= 4:
        print(f"`redis-cli --latency` (3 s, 1 ms resolution): min {cli[0]} ms, max {cli[1]} ms, "
              f"avg {cli[2]} ms over {cli[3]} samples.")
        print()
    ops = ", ".join(f"{k} {v:.0f}" for k, v in d["store_by_op"].items() if k != "ping") or "none"
    cache = ", ".join(f"{k} {v:.0f}" for k, v in d["cache"].items()) or "none"
    print(f"Statuses: misses {c['cold']['statuses']}, hits {c['warm']['statuses']}. "
          f"Store requests during the loop: {ops}; cache lookups: {cache}.")
    print()
    m, p = c["miss_minus_hit_ms"], c["ping"]
    print(f"Per key, a miss took {m['p50']:.3f} ms longer than the neighbouring hit at the median "
          f"({m['p90']:.3f} ms at p90): {m['p50'] / p['p50_ms']:.1f}× the median Redis PING round "
          f"trip ({p['p50_ms']:.3f} ms). Miss p99 {c['cold']['p99_ms']:.3f} ms, hit p99 "
          f"{c['warm']['p99_ms']:.3f} ms, PING p99 {p['p99_ms']:.3f} ms.")


def cmd_zipf_report(a: argparse.Namespace) -> None:
    raw, info = a.dir, json.loads(a.info)
    print("| run | requests/s | p50 | p99 | p99.9 | non-2xx/3xx | cache hit ratio | misses | "
          "store load_key |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|---:|")
    notes: list[str] = []
    for name, wf, mf in (("warm-up", "keygate-warmup.json", "metrics-warmup.json"),
                         ("measured", "keygate-1.json", "metrics-run.json")):
        w, m = load(os.path.join(raw, wf)), load(os.path.join(raw, mf))
        rps = w["requests"] / (w["duration_us"] / 1e6)
        hr = f"{m['hit_ratio'] * 100:.1f}%" if m["hit_ratio"] is not None else "—"
        if w.get("index_wraps"):
            notes.append(f"{name}: the threads' slices wrapped {w['index_wraps']} time(s), so some "
                         f"samples were replayed (raise ZIPF_SAMPLES)")
        print(f"| {name} | {rps:,.0f} | {w['p50'] / 1000:.2f} ms | {w['p99'] / 1000:.2f} ms | "
              f"{w['p999'] / 1000:.2f} ms | {w['status']} | {hr} | {m['cache'].get('miss', 0):.0f} | "
              f"{m['store_by_op'].get('load_key', 0):.0f} |")
    print()
    for note in notes:
        print(f"Note: {note}.")
        print()
    print(f"For comparison, an ideal cache always holding the {info['cache']:,} most popular keys "
          f"would hit {info['ideal_hit_ratio_top_cache'] * 100:.1f}% of requests drawn from this "
          f"distribution ({info['distinct_in_samples']:,} distinct keys among the "
          f"{info['samples']:,} samples).")
    print()
    print(f"keygate RSS: {a.rss_empty} at start (before key creation); {a.rss_start} after the "
          f"restart (empty cache); {a.rss_end} after the measured run (peak {a.hwm}).")


# ---------------------------------------------------------------- key files


def checksum(text: str) -> str:
    n = zlib.crc32(text.encode()) & 0xFFFFFFFF
    out = []
    for _ in range(6):
        out.append(BASE62[n % 62])
        n //= 62
    return "".join(reversed(out))


def cmd_garbage(a: argparse.Namespace) -> None:
    """Half random non-key strings, half `kg_`-shaped strings whose checksum is wrong."""
    rng = random.Random(a.seed)
    visible = string.ascii_letters + string.digits + "-._~+/="
    out = []
    for i in range(a.count):
        if i % 2 == 0:
            out.append("".join(rng.choice(visible) for _ in range(rng.randint(1, 64))))
        else:
            body = f"{a.prefix}_" + "".join(rng.choice(BASE62) for _ in range(30))
            good = checksum(body)
            bad = good
            while bad == good:
                bad = "".join(rng.choice(BASE62) for _ in range(6))
            out.append(body + bad)
    with open(a.out, "w") as f:
        f.write("\n".join(out) + "\n")


def cmd_zipf(a: argparse.Namespace) -> None:
    """`m` samples of key indexes (0-based) with P(rank r) ∝ 1/r^s; rank→key is shuffled.

    Also prints the hit ratio an ideal cache holding the `cache` most popular keys would get."""
    rng = random.Random(a.seed)
    weights = [1.0 / (r ** a.s) for r in range(1, a.n + 1)]
    total = sum(weights)
    cum, acc = [], 0.0
    for w in weights:
        acc += w
        cum.append(acc)
    ranks = rng.choices(range(a.n), cum_weights=cum, k=a.m)
    perm = list(range(a.n))
    rng.shuffle(perm)
    with open(a.out, "w") as f:
        f.write("\n".join(str(perm[r]) for r in ranks) + "\n")
    ideal = sum(weights[: a.cache]) / total
    distinct = len(set(ranks))
    print(json.dumps({"n": a.n, "s": a.s, "samples": a.m, "cache": a.cache,
                      "distinct_in_samples": distinct,
                      "ideal_hit_ratio_top_cache": round(ideal, 4)}))


# ---------------------------------------------------------------- metrics and CPU


def scrape(port: int) -> dict:
    c = http.client.HTTPConnection(HOST, port, timeout=TIMEOUT)
    c.request("GET", "/metrics")
    r = c.getresponse()
    text = r.read().decode()
    c.close()
    out: dict = {"store_by_op": {}, "store_total_non_ping": 0.0, "cache": {}, "load_key_quantiles": {}}
    for line in text.splitlines():
        if line.startswith("#") or not line.strip():
            continue
        name_labels, _, value = line.rpartition(" ")
        try:
            v = float(value)
        except ValueError:
            continue
        name, _, labels = name_labels.partition("{")
        lab = dict(
            part.split("=", 1) for part in labels.rstrip("}").split(",") if "=" in part
        )
        lab = {k: val.strip('"') for k, val in lab.items()}
        if name == "keygate_store_requests_total":
            op = lab.get("op", "?")
            out["store_by_op"][op] = out["store_by_op"].get(op, 0.0) + v
            if op != "ping":
                out["store_total_non_ping"] += v
        elif name == "keygate_http_requests_total":
            code = lab.get("code", "?")
            out.setdefault("http_by_code", {})
            out["http_by_code"][code] = out["http_by_code"].get(code, 0.0) + v
        elif name == "keygate_auth_cache_lookups_total":
            res = lab.get("result", "?")
            out["cache"][res] = out["cache"].get(res, 0.0) + v
        elif name == "keygate_store_request_duration_seconds" and lab.get("op") == "load_key" \
                and "quantile" in lab:
            out["load_key_quantiles"][lab["quantile"]] = v
        elif name == "keygate_store_request_duration_seconds_bucket" and lab.get("op") == "load_key":
            out.setdefault("load_key_buckets", {})[lab.get("le", "?")] = v
        elif name == "keygate_http_request_duration_seconds_bucket":
            # Every route and status together: keygate's own time per request.
            buckets = out.setdefault("request_buckets", {})
            le = lab.get("le", "?")
            buckets[le] = buckets.get(le, 0.0) + v
    return out


def cmd_metrics(a: argparse.Namespace) -> None:
    print(json.dumps(scrape(a.port)))


def cmd_metrics_diff(a: argparse.Namespace) -> None:
    """Difference of two `metrics` snapshots (JSON files)."""
    with open(a.before) as f:
        b = json.load(f)
    with open(a.after) as f:
        c = json.load(f)
    ops = sorted(set(b["store_by_op"]) | set(c["store_by_op"]))
    by_op = {op: c["store_by_op"].get(op, 0) - b["store_by_op"].get(op, 0) for op in ops}
    res = sorted(set(b["cache"]) | set(c["cache"]))
    cache = {r: c["cache"].get(r, 0) - b["cache"].get(r, 0) for r in res}
    lookups = sum(cache.values())
    bc, cc = b.get("http_by_code", {}), c.get("http_by_code", {})
    codes = {k: cc.get(k, 0) - bc.get(k, 0) for k in sorted(set(bc) | set(cc))}
    print(json.dumps({
        "http_by_code": {k: v for k, v in codes.items() if v},
        "store_non_ping": c["store_total_non_ping"] - b["store_total_non_ping"],
        "store_by_op": {k: v for k, v in by_op.items() if v},
        "cache": cache,
        "hit_ratio": round(cache.get("hit", 0) / lookups, 4) if lookups else None,
    }))


def descendants(root: int) -> list[int]:
    children: dict[int, list[int]] = {}
    for d in os.listdir("/proc"):
        if not d.isdigit():
            continue
        try:
            with open(f"/proc/{d}/stat") as f:
                st = f.read()
        except OSError:
            continue
        ppid = int(st.rpartition(")")[2].split()[1])
        children.setdefault(ppid, []).append(int(d))
    out, todo = [], [root]
    while todo and len(out) < 10000:
        p = todo.pop()
        out.append(p)
        todo.extend(children.get(p, []))
    return out


def user_system_ticks(pid: int) -> tuple[int, int]:
    """utime and stime of a process (all its threads), in clock ticks."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rpartition(")")[2].split()
        return int(fields[11]), int(fields[12])
    except OSError:
        return 0, 0


def ticks(pid: int) -> int:
    return sum(user_system_ticks(pid))


def cmd_times(a: argparse.Namespace) -> None:
    """User and system CPU seconds of the processes `pids` (comma-separated), as JSON."""
    hz = os.sysconf("SC_CLK_TCK")
    user = system = 0
    for pid in a.pids.split(","):
        u, s = user_system_ticks(int(pid))
        user, system = user + u, system + s
    print(json.dumps({"t": time.time(), "user_s": user / hz, "system_s": system / hz}))


def cmd_cpu(a: argparse.Namespace) -> None:
    """CPU ticks of named process trees (name=pid ...) and of each CPU (/proc/stat)."""
    groups = {}
    for spec in a.groups:
        name, _, pid = spec.partition("=")
        groups[name] = sum(ticks(p) for p in descendants(int(pid)))
    cores = {}
    with open("/proc/stat") as f:
        for line in f:
            if line.startswith("cpu") and line[3].isdigit():
                parts = line.split()
                vals = [int(x) for x in parts[1:]]
                idle = vals[3] + vals[4]
                cores[parts[0]] = {"busy": sum(vals[:8]) - idle, "total": sum(vals[:8]),
                                   "irq": vals[5] + vals[6], "steal": vals[7]}
    threads = {}
    if a.threads_of:
        for t in os.listdir(f"/proc/{a.threads_of}/task"):
            try:
                with open(f"/proc/{a.threads_of}/task/{t}/stat") as f:
                    st = f.read()
            except OSError:
                continue
            comm = st[st.index("(") + 1: st.rindex(")")]
            fields = st.rpartition(")")[2].split()
            threads[f"{comm}#{t}"] = int(fields[11]) + int(fields[12])
    print(json.dumps({"t": time.time(), "groups": groups, "cores": cores, "threads": threads}))


# ---------------------------------------------------------------- reports


def load(path: str) -> dict:
    with open(path) as f:
        return json.load(f)


def cpu_delta(before: dict, after: dict, hz: int) -> dict:
    groups = {k: (after["groups"].get(k, 0) - v) / hz for k, v in before["groups"].items()}
    cores = {}
    for k, v in before["cores"].items():
        w = after["cores"][k]
        total = w["total"] - v["total"]
        cores[k] = round(100.0 * (w["busy"] - v["busy"]) / total, 1) if total else 0.0
    threads = {k: (after["threads"].get(k, 0) - v) / hz for k, v in before["threads"].items()}
    def total(field: str) -> float:
        return sum(after["cores"][k][field] - v[field] for k, v in before["cores"].items()) / hz
    ours = sum(groups.values())
    groups["irq"] = total("irq")      # hard + soft interrupts: mostly loopback TCP
    groups["steal"] = total("steal")  # time the hypervisor gave to other guests
    # CPU time of processes that are not part of this benchmark (other work on the machine).
    groups["others"] = max(0.0, total("busy") - ours - groups["irq"] - groups["steal"])
    return {"groups": groups, "cores": cores, "threads": threads}


def cmd_report(a: argparse.Namespace) -> None:
    """Builds the comparison table from the wrk JSON files in `dir` (<target>-<round>.json
    and cpu-<target>-<round>-{before,after}.json)."""
    hz = os.sysconf("SC_CLK_TCK")
    targets = a.targets.split(",")
    names = dict(item.split("=", 1) for item in a.names.split(";")) if a.names else {}
    procs = dict(item.split("=", 1) for item in a.procs.split(";")) if a.procs else {}
    runs: dict[str, list[dict]] = {t: [] for t in targets}
    for t in targets:
        for r in range(1, a.rounds + 1):
            path = os.path.join(a.dir, f"{t}-{r}.json")
            if not os.path.exists(path):
                continue
            w = load(path)
            w["round"] = r
            w["rps"] = w["requests"] / (w["duration_us"] / 1e6)
            w["errors"] = w["connect"] + w["read"] + w["write"] + w["timeout"]
            cb = os.path.join(a.dir, f"cpu-{t}-{r}-before.json")
            ca = os.path.join(a.dir, f"cpu-{t}-{r}-after.json")
            if os.path.exists(cb) and os.path.exists(ca):
                d = cpu_delta(load(cb), load(ca), hz)
                w["cpu"] = d
                proc = procs.get(t)
                if proc and proc in d["groups"] and w["requests"]:
                    w["cpu_us_per_req"] = d["groups"][proc] * 1e6 / w["requests"]
            runs[t].append(w)
    best = {t: max(rs, key=lambda w: w["rps"]) for t, rs in runs.items() if rs}
    kg = best.get(a.reference)

    def ms(us: float) -> str:
        return f"{us / 1000:.2f} ms"

    def ratio(x: float | None, y: float | None) -> str:
        return f"{x / y:.2f}×" if x and y else "—"

    head = ("| target | requests/s | p50 | p99 | non-2xx/3xx | socket errors | "
            f"CPU µs/req (proxy) | {a.reference} rps ÷ this | {a.reference} p99 ÷ this |")
    lines = [head, "|---|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for t in targets:
        w = best.get(t)
        if not w:
            lines.append(f"| {names.get(t, t)} | (no run) | | | | | | | |")
            continue
        cpu = f"{w['cpu_us_per_req']:.1f}" if "cpu_us_per_req" in w else "—"
        lines.append(
            f"| {names.get(t, t)} | {w['rps']:,.0f} | {ms(w['p50'])} | {ms(w['p99'])} | "
            f"{w['status']} | {w['errors']} | {cpu} | "
            f"{ratio(kg['rps'], w['rps']) if kg else '—'} | "
            f"{ratio(kg['p99'], w['p99']) if kg else '—'} |"
        )
    table = "\n".join(lines)
    # Every run, in the order they ran.
    all_lines = ["| run | target | requests/s | p50 | p99 | p99.9 | max | non-2xx/3xx | "
                 "CPU busy per core | CPU s: target / upstream / wrk / softirq / steal / other processes |",
                 "|---:|---|---:|---:|---:|---:|---:|---:|---|---|"]
    order = sorted((w["round"], targets.index(t), t, w) for t, rs in runs.items() for w in rs)
    for r, _, t, w in order:
        cpu = w.get("cpu", {})
        cores = "/".join(f"{v:.0f}%" for v in cpu.get("cores", {}).values()) or "—"
        g = cpu.get("groups", {})
        proc = procs.get(t)
        secs = " / ".join(
            f"{g[k]:.1f}" if k in g else "—" for k in (proc or "-", "upstream", "wrk", "irq", "steal", "others")
        ) if g else "—"
        all_lines.append(
            f"| {r} | {names.get(t, t)} | {w['rps']:,.0f} | {ms(w['p50'])} | {ms(w['p99'])} | "
            f"{ms(w['p999'])} | {ms(w['max'])} | {w['status']} | {cores} | {secs} |"
        )
    # keygate's busiest threads in its best run.
    thread_lines = []
    if kg and kg.get("cpu", {}).get("threads"):
        th = sorted(kg["cpu"]["threads"].items(), key=lambda kv: -kv[1])
        dur = kg["duration_us"] / 1e6
        thread_lines = [f"{name}: {secs:.1f} s ({100 * secs / dur:.0f}% of one core)"
                        for name, secs in th[:6] if secs > 0]
    # Runs during which processes outside the benchmark took a noticeable share of the CPUs.
    ncpu = os.cpu_count() or 1
    noisy = []
    for r, _, t, w in order:
        g = w.get("cpu", {}).get("groups", {})
        share = g.get("others", 0.0) / (ncpu * w["duration_us"] / 1e6)
        if share > 0.05:
            noisy.append(f"{names.get(t, t)} round {r}: {100 * share:.0f}%")
        stolen = g.get("steal", 0.0) / (ncpu * w["duration_us"] / 1e6)
        if stolen > 0.05:
            noisy.append(f"{names.get(t, t)} round {r}: {100 * stolen:.0f}% to other guests (steal)")
    noise = ("Other processes on the machine, or the hypervisor for other guests, took a share of "
             "the CPUs during: " + "; ".join(noisy) + ". Those runs are disturbed; compare rounds, "
             "or rerun on a quiet machine.") if noisy else \
        "No run was disturbed by other processes or by the hypervisor (each under 5% of the CPUs)."
    result = {
        "noise": noise,
        "table": table,
        "runs": "\n".join(all_lines),
        "keygate_threads": thread_lines,
        "best": {t: {k: w[k] for k in ("round", "rps", "p50", "p99", "status", "errors")}
                 for t, w in best.items()},
    }
    with open(a.out, "w") as f:
        json.dump(result, f)
    print(table)


def cmd_garbage_summary(a: argparse.Namespace) -> None:
    """Markdown lines for the garbage flood: refusals per target, keygate's store traffic."""
    ok = True
    for t in a.targets.split(","):
        for r in range(1, a.rounds + 1):
            path = os.path.join(a.dir, f"{t}-{r}.json")
            if os.path.exists(path):
                w = load(path)
                print(f"- {t}, round {r}: {w['status']:,} of {w['requests']:,} answers refused (status ≥ 400)")
    print()
    for r in range(1, a.rounds + 1):
        d = load(os.path.join(a.dir, f"metrics-{r}-diff.json"))
        ok = ok and d["store_non_ping"] == 0
        by_op = ", ".join(f"{k} {v:.0f}" for k, v in d["store_by_op"].items()) or "none"
        cache = ", ".join(f"{k} {v:.0f}" for k, v in d["cache"].items()) or "none"
        print(f"keygate store requests during flood round {r} (sum of `keygate_store_requests_total` "
              f"over op ≠ ping, from /metrics before the run and 6 s after it): "
              f"**{d['store_non_ping']:.0f}** (by op: {by_op}; ping excluded); "
              f"cache lookups during the flood: {cache}; keygate's answers by status "
              f"(`keygate_http_requests_total`): "
              f"{', '.join(f'{k}: {v:,.0f}' for k, v in d.get('http_by_code', {}).items()) or 'none'}.")
        print()
    print(f"Verdict: **{'PASS' if ok else 'FAIL'}** (zero store requests during the flood).")
    sys.exit(0 if ok else 3)


def cmd_steal(a: argparse.Namespace) -> None:
    """The share of all CPUs' time the hypervisor gave to other guests between two `cpu`
    snapshots, in percent (whole number)."""
    before, after = load(a.before), load(a.after)
    stolen = sum(after["cores"][k]["steal"] - v["steal"] for k, v in before["cores"].items())
    total = sum(after["cores"][k]["total"] - v["total"] for k, v in before["cores"].items())
    print(round(100.0 * stolen / total) if total else 0)


def cmd_trace_report(a: argparse.Namespace) -> None:
    """Markdown table from `trace.bt` outputs (trace-<target>.txt in `dir`): socket waits by
    (reader, sender) and proxy worker preemptions. bpftrace prints each map twice (once by
    `print`, once on exit); the second copy overwrites the first."""
    classes = {"1": "wrk", "2": "upstream", "3": "proxy", "4": "other"}
    print("| target | proxy reads wrk's request | upstream reads proxy's request | "
          "proxy reads upstream's answer | wrk reads proxy's answer | proxy workers preempted: "
          "times; ≥ 2 ms, by whom | steal |")
    print("|---|---|---|---|---|---|---:|")
    for t in a.targets.split(","):
        path = os.path.join(a.dir, f"trace-{t}.txt")
        if not os.path.exists(path):
            continue
        text = open(path).read()
        waits: dict[tuple[str, str], dict[int, int]] = {}
        for block in re.split(r"\n(?=@)", text):
            m = re.match(r"@wait_us\[(\d+), (\d+)\]:", block)
            if not m:
                continue
            rows = {int(lo): int(n) for lo, n in re.findall(r"\[(\d+), \d+\)\s+(\d+)", block)}
            rows.update({10000: int(n) for n in re.findall(r"\[10000, \.\.\.\)\s+(\d+)", block)})
            waits[(classes.get(m.group(1), "?"), classes.get(m.group(2), "?"))] = rows

        def summary(reader: str, sender: str) -> str:
            rows = waits.get((reader, sender))
            if not rows:
                return "—"
            n = sum(rows.values())
            mean = sum((lo + 50) * c for lo, c in rows.items()) / n

            def q(p: float) -> str:  # the upper bound of the 100 µs bucket holding quantile p
                acc = 0
                for lo in sorted(rows):
                    acc += rows[lo]
                    if acc >= p * n:
                        return "≥ 10" if lo >= 10000 else f"{(lo + 100) / 1000:.1f}"
                return "?"
            return f"{mean / 1000:.2f} / {q(0.99)} / {q(0.999)} ms"

        pre = re.search(r"@preempted: (\d+)", text)
        long = dict(re.findall(r"@long_preemptions\[(.*?)\]: (\d+)", text))
        long_sum = sum(int(n) for n in long.values())
        by = ", ".join(f"{who} {n}" for who, n in sorted(long.items(), key=lambda x: -int(x[1]))) or "none"
        steal_path = os.path.join(a.dir, f"trace-{t}.steal")
        steal = open(steal_path).read().strip() + "%" if os.path.exists(steal_path) else "—"
        print(f"| {t} | {summary('proxy', 'wrk')} | {summary('upstream', 'proxy')} | "
              f"{summary('proxy', 'upstream')} | {summary('wrk', 'proxy')} | "
              f"{pre.group(1) if pre else '?'}; {long_sum} ({by}) | {steal} |")


def cmd_tree(a: argparse.Namespace) -> None:
    print(",".join(str(p) for p in descendants(a.pid)))


def cmd_perfstat_report(a: argparse.Namespace) -> None:
    """Per-request system calls, context switches and CPU time from `perf stat -x,` files,
    and the CPU time split into user and kernel (system) time from /proc around the window
    (times-<target>-before/after.json): the kernel's part is mostly loopback TCP, which
    every proxy pays alike; the user part is the proxy's own code."""
    print("| target | requests/s (this run) | syscalls/request | context switches/request | "
          "CPU µs/request | user / system µs/request |")
    print("|---|---:|---:|---:|---:|---|")
    for t in a.targets.split(","):
        csv = os.path.join(a.dir, f"perfstat-{t}.csv")
        wj = os.path.join(a.dir, f"perfstat-{t}.json")
        if not (os.path.exists(csv) and os.path.exists(wj)):
            continue
        w = load(wj)
        rps = w["requests"] / (w["duration_us"] / 1e6)
        counts = {}
        for line in open(csv):
            parts = line.strip().split(",")
            if len(parts) > 2 and parts[0] and not line.startswith("#"):
                try:
                    counts[parts[2]] = float(parts[0])
                except ValueError:
                    pass
        reqs = rps * a.window
        sc = counts.get("raw_syscalls:sys_enter")
        cs = counts.get("context-switches")
        cpu = counts.get("cpu-clock")  # milliseconds
        f = lambda v, scale=1.0: f"{v * scale / reqs:.2f}" if v is not None and reqs else "—"
        split = "—"
        before = os.path.join(a.dir, f"times-{t}-before.json")
        after = os.path.join(a.dir, f"times-{t}-after.json")
        if os.path.exists(before) and os.path.exists(after):
            b, e = load(before), load(after)
            # The /proc snapshots bracket the perf stat window (a little longer: perf's
            # start-up), so they are scaled by requests over their own elapsed time.
            span = e["t"] - b["t"]
            n = rps * span
            if n:
                split = (f"{(e['user_s'] - b['user_s']) * 1e6 / n:.2f} / "
                         f"{(e['system_s'] - b['system_s']) * 1e6 / n:.2f}")
        print(f"| {t} | {rps:,.0f} | {f(sc)} | {f(cs)} | {f(cpu, 1000.0)} | {split} |")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__)
    sub = p.add_subparsers(dest="cmd", required=True)

    s = sub.add_parser("ports"); s.add_argument("n", type=int); s.set_defaults(f=cmd_ports)
    s = sub.add_parser("wait-http"); s.add_argument("port", type=int); s.add_argument("path")
    s.add_argument("--status", type=int, default=200); s.add_argument("--timeout", type=float, default=30)
    s.set_defaults(f=cmd_wait_http)
    s = sub.add_parser("create-keys"); s.add_argument("port", type=int); s.add_argument("token")
    s.add_argument("owner"); s.add_argument("count", type=int); s.add_argument("out")
    s.add_argument("--conns", type=int, default=8); s.add_argument("--progress", action="store_true")
    s.set_defaults(f=cmd_create_keys)
    s = sub.add_parser("warm"); s.add_argument("port", type=int); s.add_argument("keys")
    s.set_defaults(f=cmd_warm)
    s = sub.add_parser("cold"); s.add_argument("port", type=int); s.add_argument("keys")
    s.add_argument("count", type=int); s.add_argument("redis_port", type=int)
    s.set_defaults(f=cmd_cold)
    s = sub.add_parser("cold-report"); s.add_argument("dir"); s.set_defaults(f=cmd_cold_report)
    s = sub.add_parser("zipf-report"); s.add_argument("dir"); s.add_argument("info")
    s.add_argument("rss_empty"); s.add_argument("rss_start"); s.add_argument("rss_end")
    s.add_argument("hwm"); s.set_defaults(f=cmd_zipf_report)
    s = sub.add_parser("garbage"); s.add_argument("count", type=int); s.add_argument("out")
    s.add_argument("--prefix", default="kg"); s.add_argument("--seed", type=int, default=7)
    s.set_defaults(f=cmd_garbage)
    s = sub.add_parser("zipf"); s.add_argument("n", type=int); s.add_argument("m", type=int)
    s.add_argument("out"); s.add_argument("--s", type=float, default=1.1)
    s.add_argument("--cache", type=int, default=20000); s.add_argument("--seed", type=int, default=11)
    s.set_defaults(f=cmd_zipf)
    s = sub.add_parser("metrics"); s.add_argument("port", type=int); s.set_defaults(f=cmd_metrics)
    s = sub.add_parser("metrics-diff"); s.add_argument("before"); s.add_argument("after")
    s.set_defaults(f=cmd_metrics_diff)
    s = sub.add_parser("cpu"); s.add_argument("groups", nargs="*")
    s.add_argument("--threads-of", type=int); s.set_defaults(f=cmd_cpu)
    s = sub.add_parser("garbage-summary"); s.add_argument("dir"); s.add_argument("targets")
    s.add_argument("rounds", type=int); s.set_defaults(f=cmd_garbage_summary)
    s = sub.add_parser("steal"); s.add_argument("before"); s.add_argument("after")
    s.set_defaults(f=cmd_steal)
    s = sub.add_parser("trace-report"); s.add_argument("dir"); s.add_argument("targets")
    s.set_defaults(f=cmd_trace_report)
    s = sub.add_parser("tree"); s.add_argument("pid", type=int); s.set_defaults(f=cmd_tree)
    s = sub.add_parser("times"); s.add_argument("pids"); s.set_defaults(f=cmd_times)
    s = sub.add_parser("perfstat-report"); s.add_argument("dir"); s.add_argument("targets")
    s.add_argument("window", type=float); s.set_defaults(f=cmd_perfstat_report)
    s = sub.add_parser("report"); s.add_argument("dir"); s.add_argument("targets")
    s.add_argument("rounds", type=int); s.add_argument("out")
    s.add_argument("--reference", default="keygate"); s.add_argument("--names", default="")
    s.add_argument("--procs", default=""); s.set_defaults(f=cmd_report)

    a = p.parse_args()
    a.f(a)


if __name__ == "__main__":
    main()
