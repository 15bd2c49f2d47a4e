"""Benchmark with wrk, in one run, with the product's gunicorn config (-k gevent -w 2):

  (a) ceiling:     a bare Flask endpoint returning small JSON (loadtest/ceiling_app.py)
  (b) new tickets: a campaign too large to sell out, a distinct user per request
  (c) sold-out:    a sold-out campaign
  (d) flood:       1000 coupons, 20,000 distinct users
  (e) ceiling without Flask: the same answer as (a) from a plain WSGI function; the product
      serves its issue call without Flask too (coupon.api.IssueEndpoint), so b/e and c/e are
      its cost against gunicorn and gevent alone
  (f) new tickets on a Redis Cluster: (b) against a cluster of 3 masters and 3 replicas the bench
      starts on free ports (no append-only file, as the single Redis it is compared with); for
      (b) and (f) it also reads each master's CPU and commands (INFO cpu, INFO commandstats)
  (g) (f) without replica acknowledgements (REDIS_REPLICA_ACKS=0), on the same cluster: f/g is
      what waiting for a replica (WAIT after each batch, per node) costs
  (h) (b) with RS256 tokens (RSA 2048) of an IdP's JWKS (a file://), every token verified once:
      h/b is what an RSA signature check costs against HS256
  (i) the same with ES256 tokens (P-256)

Every phase uses the same wrk script (pre-minted tokens, one per request), so the load generator
costs the same in each. It starts its own servers on free loopback ports, against Redis db 14 and
the MariaDB database `coupon_bench` (made anew), stops them by pid, and writes the figures with the
machine's description to reports/bench-*.md and .json; with --record also into BENCHMARKS.md
(between the bench markers). With --with-ops-page, the operators' page is open in headless
chromium (loadtest/ops_watch.py, polling every second) during phases b, c and d.

    python -m loadtest.bench [--duration 10] [--connections 100] [--only abcdefghi] [--with-ops-page] [--record]
"""
import argparse
import datetime as dt
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time

import jwt
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from jwt.algorithms import get_default_algorithms
from redis import Redis

from coupon import create_app
from coupon.redis_state import issued_in_redis
from loadtest.harness import (
    ROOT, Gunicorn, LocalCluster, RedisTarget, fresh_database, open_campaign, service_env, terminate,
    users, web_cpu_seconds,
)
from loadtest.run import scrape

REDIS_URL = os.environ.get("BENCH_REDIS_URL", "redis://127.0.0.1:6379/14")
DATABASE_URL = os.environ.get("BENCH_DATABASE_URL", "mysql+pymysql://root@127.0.0.1:3306/coupon_bench")
SECRET = "bench-secret-not-for-production"
WRK_THREADS = 2
ACCEPTED = ("NEW", "HELD", "SOLD_OUT")  # 201, 200, 409 SOLD_OUT; anything else is a fault
MARK_START, MARK_END = "<!-- bench:start -->", "<!-- bench:end -->"
ALL = "abcdefghi"
IDP_KEYS = {"RS256": lambda: rsa.generate_private_key(65537, 2048), "ES256": lambda: ec.generate_private_key(ec.SECP256R1())}


def need_wrk():
    if shutil.which("wrk"):
        return
    if os.geteuid() == 0 and shutil.which("apt-get"):
        print("wrk is missing: installing it with apt-get", flush=True)
        subprocess.run(["apt-get", "install", "-y", "-q", "wrk"], check=False)
    if not shutil.which("wrk"):
        sys.exit("wrk is needed: sudo apt-get install wrk")


def prepare(database_url, redis_url):
    """Empty the Redis db, make the database anew; return the service (in this process) and
    the environment of the servers to start."""
    Redis.from_url(redis_url).flushdb()
    fresh_database(database_url)
    return bench_service(database_url, RedisTarget(redis_url))


def bench_service(database_url, redis_target):
    """The service in this process on `redis_target`, and the environment of its servers."""
    app = create_app(dict(SECRET_KEY=SECRET, DATABASE_URL=database_url, **redis_target.settings()))
    return app.extensions["coupon"], service_env(database_url, redis_target, SECRET_KEY=SECRET)


def redis_usage(masters):
    """{master: (CPU seconds of the process, command calls, command usec)} so far."""
    usage = {}
    for name, client in masters.items():
        cpu, stats = client.info("cpu"), client.info("commandstats")
        usage[name] = (cpu["used_cpu_sys"] + cpu["used_cpu_user"],
                       sum(c["calls"] for c in stats.values()), sum(c["usec"] for c in stats.values()))
    return usage


def usage_delta(after, before):
    return {name: tuple(a - b for a, b in zip(after[name], before[name])) for name in after}


def start_server(env, app, log_name):
    """The product's gunicorn (-w 2) serving `app`, logging to reports/<log_name>.log; its
    /metrics counts its own requests only."""
    log_path = os.path.join(ROOT, "reports", f"{log_name}.log")
    return Gunicorn(env, app=app, log_path=log_path, private_metrics=True)


class OpsPage:
    """The operators' page open in headless chromium (loadtest/ops_watch.py) while a phase runs."""

    def __init__(self, url):
        self.proc = subprocess.Popen([sys.executable, "-m", "loadtest.ops_watch", url], cwd=ROOT,
                                     stdout=subprocess.PIPE, text=True)
        if self.proc.stdout.readline().strip() != "ready":  # its first figures are shown
            self.stop()
            raise RuntimeError(f"the operators' page did not open: {url}")

    def stop(self):
        """Close it; return how many times it polled."""
        terminate(self.proc, 10)
        said = self.proc.stdout.read()
        self.proc.stdout.close()
        return int(said.split()[3]) if said.startswith("the page polled") else 0


def outcomes(server):
    """Issue outcomes counted by the server so far ({} for the ceilings: no /metrics)."""
    if server.app != "app:app":
        return {}
    return {code: int(n) for code, n in scrape(server.url, "coupon_issue_total", "outcome").items()}


def wrk(url, path, tokens_file, seconds, connections):
    cmd = ["wrk", "-t", str(WRK_THREADS), "-c", str(connections), "-d", f"{seconds}s",
           "--timeout", "5s", "-s", os.path.join(ROOT, "loadtest", "tokens.lua"), url + path,
           "--", tokens_file, str(WRK_THREADS)]
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=seconds + 60).stdout
    line = [l for l in out.splitlines() if l.startswith("{")][-1]
    r = json.loads(line)
    r["rps"] = r["requests"] / (r["duration_us"] / 1e6)
    return r


def write_tokens(signer, prefix, count, folder):
    """A token file for wrk (loadtest/tokens.lua): users <prefix>0.., one token a line."""
    path = os.path.join(folder, f"{prefix}.tokens")
    with open(path, "w") as f:
        f.writelines(token + "\n" for _, token in users(signer, count, prefix, ttl=6 * 3600))
    return path


def write_idp(folder, count):
    """An IdP's JWKS file (a key per IDP_KEYS algorithm) and, per algorithm, a token file of
    `count` users signed under its key: ({alg: path}, the JWKS file:// URL)."""
    keys, paths, expires = [], {}, int(time.time()) + 6 * 3600
    for alg, make in IDP_KEYS.items():
        private = make()
        keys.append({**json.loads(get_default_algorithms()[alg].to_jwk(private.public_key())), "kid": alg, "alg": alg})
        paths[alg] = os.path.join(folder, f"{alg}.tokens")
        with open(paths[alg], "w") as f:
            f.writelines(jwt.encode({"sub": f"{alg}-{i}", "exp": expires}, private, alg, headers={"kid": alg}) + "\n"
                         for i in range(count))
    jwks_path = os.path.join(folder, "jwks.json")
    with open(jwks_path, "w") as f:
        json.dump({"keys": keys}, f)
    return paths, "file://" + jwks_path


def machine():
    cpu = "unknown CPU"
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next(l.split(":", 1)[1].strip() for l in f if l.startswith("model name"))
    except (OSError, StopIteration):
        pass
    try:
        with open("/proc/meminfo") as f:
            mem = int(f.readline().split()[1]) // 1024 // 1024
    except (OSError, ValueError, IndexError):
        mem = "?"
    return (f"{os.cpu_count()} cores ({cpu}), {mem} GiB RAM, shared by wrk, gunicorn, Redis and "
            f"MariaDB; Python {platform.python_version()}, {platform.system()} {platform.release()}")


def delta(after, before):
    return {k: after.get(k, 0) - before.get(k, 0) for k in after if after.get(k, 0) != before.get(k, 0)}


def run(seconds, connections, only=ALL, with_ops_page=False):
    need_wrk()
    os.makedirs(os.path.join(ROOT, "reports"), exist_ok=True)
    svc, env = prepare(DATABASE_URL, REDIS_URL)
    cluster = csvc = None
    # enough distinct users that (b) never wraps around at this machine's speed
    new_users = max(60_000, 12_000 * seconds)
    tmp = tempfile.mkdtemp(prefix="bench-")
    results = {}
    server = None
    try:
        tokens = {name: write_tokens(svc.signer, name, count, tmp) for name, count in
                  (("warm", 20_000), ("new", new_users), ("soldout", 20_000), ("flood", 20_000))}
        ids = {"b": open_campaign(svc, 2_000_000, "bench new tickets"),
               "c": open_campaign(svc, 1, "bench sold out"), "d": open_campaign(svc, 1000, "bench flood")}
        masters = {"b": {"single": Redis.from_url(REDIS_URL)}}
        envs = {}
        if "h" in only or "i" in only:  # fewer users than (b): an RSA signature costs ~1 ms to make
            idp, jwks_url = write_idp(tmp, 4000 * seconds)
            tokens.update(idp)
            envs.update(h=dict(env, AUTH_JWKS_URL=jwks_url), i=dict(env, AUTH_JWKS_URL=jwks_url))
            ids.update(h=open_campaign(svc, 2_000_000, "bench RS256"), i=open_campaign(svc, 2_000_000, "bench ES256"))
            masters.update(h=masters["b"], i=masters["b"])
        if "f" in only or "g" in only:
            cluster = LocalCluster(os.path.join(tmp, "cluster"))
            csvc, cenv = bench_service(DATABASE_URL, RedisTarget(cluster_nodes=cluster.startup_nodes))
            envs = {"f": cenv, "g": dict(cenv, REDIS_REPLICA_ACKS="0")}
            ids["f"] = open_campaign(csvc, 2_000_000, "bench new tickets on a cluster")
            ids["g"] = open_campaign(csvc, 2_000_000, "bench new tickets on a cluster, no replica acks")
            masters["f"] = masters["g"] = {n.port: n.client() for n in cluster.masters()}
        phases = [
            ("a", "ceiling: bare Flask endpoint", "loadtest.ceiling_app:app", "/api/v1/campaigns/1/issue", "warm", "new"),
            ("b", "new tickets (too large to sell out)", "app:app", f"/api/v1/campaigns/{ids['b']}/issue", "warm", "new"),
            ("c", "sold out", "app:app", f"/api/v1/campaigns/{ids['c']}/issue", "soldout", "soldout"),
            ("d", "flood: 1000 coupons, 20,000 users", "app:app", f"/api/v1/campaigns/{ids['d']}/issue", None, "flood"),
            ("e", "ceiling without Flask: bare WSGI", "loadtest.ceiling_app:bare", "/api/v1/campaigns/1/issue", "warm", "new"),
            ("f", "new tickets on a Redis Cluster (3 masters)", "app:app", f"/api/v1/campaigns/{ids.get('f')}/issue", "warm", "new"),
            ("g", "(f) without replica acknowledgements", "app:app", f"/api/v1/campaigns/{ids.get('g')}/issue", "warm", "new"),
            ("h", "(b) with RS256 tokens of a JWKS", "app:app", f"/api/v1/campaigns/{ids.get('h')}/issue", "warm", "RS256"),
            ("i", "(b) with ES256 tokens of a JWKS", "app:app", f"/api/v1/campaigns/{ids.get('i')}/issue", "warm", "ES256"),
        ]
        for key, title, module, path, warm, measured in phases:
            if key not in only:
                continue
            if server is None or server.app != module or key in envs:
                if server:
                    server.stop()
                label = "cluster" if key in "fg" else "jwks" if key in envs else module.split(".")[-1].split(":")[0]
                server = start_server(envs.get(key, env), module, f"bench-{label}")
            page = None
            if with_ops_page and module == "app:app":
                page = OpsPage(f"{server.url}/ops/?campaign={ids[key]}")
            try:
                if warm:  # the first requests load state and fill pools; not measured
                    wrk(server.url, path, tokens[warm], 2, connections)
                print(f"({key}) {title}: {seconds} s, {connections} connections"
                      + (", the operators' page open" if page else "") + " ...", flush=True)
                before, used = outcomes(server), redis_usage(masters.get(key, {}))
                cpu = web_cpu_seconds([server])
                r = wrk(server.url, path, tokens[measured], seconds, connections)
                # per request: steadier than req/s on a shared machine (wrk's CPU is not in it)
                r["web_cpu_us"] = (web_cpu_seconds([server]) - cpu) * 1e6 / max(1, r["requests"])
                time.sleep(0.5)  # answers in flight when wrk stopped reach the counters
                r["redis"] = usage_delta(redis_usage(masters.get(key, {})), used)
            finally:
                polls = page.stop() if page else None
            if page:
                r["ops_page_polls"] = polls
            r["outcomes"] = delta(outcomes(server), before)
            r["title"] = title
            if module == "app:app":
                r["other_answers"] = sum(v for k, v in r["outcomes"].items() if k not in ACCEPTED)
            results[key] = r
        for key in "bdfghi":
            if key in results:
                on = csvc if key in "fg" else svc
                results[key]["issued"] = issued_in_redis(on.redis, on.keys(ids[key]))
    finally:  # stopped by pid even when a phase fails
        if server:
            server.stop()
        if cluster:
            cluster.stop()
            csvc.engine.dispose()
        shutil.rmtree(tmp, ignore_errors=True)
        svc.engine.dispose()
    return results


def table(results, seconds, connections, with_ops_page=False):
    a = results["a"]["rps"] if "a" in results else float("nan")
    # vs (a) by CPU: (a)'s CPU a request over the phase's, so that it reads like req/s against (a)
    a_cpu = results["a"]["web_cpu_us"] if "a" in results else float("nan")
    page = ("; the operators' page open in headless chromium during b, c and d, polls: "
            + ", ".join(f"({k}) {r['ops_page_polls']}" for k, r in sorted(results.items())
                        if "ops_page_polls" in r)) if with_ops_page else ""
    lines = [
        f"Measured {dt.datetime.now().strftime('%Y-%m-%d %H:%M')} with `make bench` "
        f"(wrk -t{WRK_THREADS} -c{connections} -d{seconds}s, gunicorn -k gevent -w 2{page}).",
        "",
        f"Machine: {machine()}.",
        "",
        "| phase | req/s | p50 ms | p99 ms | max ms | vs (a) | web CPU us a request (vs (a)) "
        "| answers (server side) | socket errors |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: | --- | ---: |",
    ]
    for key in sorted(results):
        r = results[key]
        answers = ", ".join(f"{k} {v}" for k, v in sorted(r.get("outcomes", {}).items())) or "small JSON, not counted"
        if "issued" in r:
            answers += f"; issued in Redis {r['issued']}"
        errors = r["connect"] + r["read"] + r["write"] + r["timeout"]
        lines.append(
            f"| ({key}) {r['title']} | {r['rps']:,.0f} | {r['p50_us'] / 1000:.1f} | "
            f"{r['p99_us'] / 1000:.1f} | {r['max_us'] / 1000:.0f} | {r['rps'] / a:.2f} | "
            f"{r['web_cpu_us']:.0f} ({a_cpu / r['web_cpu_us']:.2f}) | {answers} | {errors} |"
        )
    if "f" in results and "b" in results:
        lines += cluster_lines(results["b"], results["f"])
    if "f" in results and "g" in results:
        lines += replica_ack_lines(results["f"], results["g"])
    if not all(k in results for k in "abcde"):
        return "\n".join(lines)
    b, c, e = results["b"]["rps"], results["c"]["rps"], results["e"]["rps"]
    other = sum(results[k].get("other_answers", 0) for k in "bcd")
    lines += [
        "",
        f"Ratios: b/a = {b / a:.2f} (goal >= 0.8), c/a = {c / a:.2f} (goal >= 0.95); without Flask "
        f"in the ceiling: b/e = {b / e:.2f}, c/e = {c / e:.2f}; p99 (b) "
        f"{results['b']['p99_us'] / 1000:.1f} ms, (c) {results['c']['p99_us'] / 1000:.1f} ms "
        f"(goal <= 100); answers other than 201/200/409 SOLD_OUT: {other} (goal 0).",
    ]
    return "\n".join(lines)


def cpu_us_per_coupon(r):
    """Redis CPU (user + sys, summed over the masters measured) per NEW answer of a phase."""
    return sum(cpu for cpu, _, _ in r["redis"].values()) * 1e6 / max(1, r["outcomes"].get("NEW", 0))


def replica_ack_lines(acked, unacked):
    """(f) against (g): what replica acknowledgements cost."""
    return [
        "",
        f"Replica acknowledgements (f) against none (g), same cluster, same run: "
        f"{acked['rps'] / unacked['rps']:.2f}x the new tickets per second (goal >= 0.9), p99 "
        f"{acked['p99_us'] / 1000:.1f} ms against {unacked['p99_us'] / 1000:.1f} ms; Redis CPU per "
        f"issued coupon, summed over the masters, {cpu_us_per_coupon(acked):.0f} us against "
        f"{cpu_us_per_coupon(unacked):.0f} us.",
    ]


def cluster_lines(single, cluster):
    """(f) against (b): speed, each master's share, Redis CPU per coupon, and what K masters carry."""

    masters = cluster["redis"]
    total = [sum(m[i] for m in masters.values()) or 1 for i in range(3)]
    shares = {name: [m[i] / total[i] for i in range(3)] for name, m in sorted(masters.items())}
    hottest = [max(s[i] for s in shares.values()) * len(masters) for i in range(3)]
    single_us, cluster_us = cpu_us_per_coupon(single), cpu_us_per_coupon(cluster)
    lines = [
        "",
        f"Redis Cluster (f) against a single Redis (b), same run: {cluster['rps'] / single['rps']:.2f}x "
        f"the new tickets per second (goal >= 0.9), p99 {cluster['p99_us'] / 1000:.1f} ms against "
        f"{single['p99_us'] / 1000:.1f} ms.",
        "",
        "| master (f) | share of commands | of command time (commandstats usec) | of Redis CPU (INFO cpu) |",
        "| --- | ---: | ---: | ---: |",
        *(f"| {name} | {s[1]:.1%} | {s[2]:.1%} | {s[0]:.1%} |" for name, s in shares.items()),
        f"| hottest / even share | {hottest[1]:.2f} | {hottest[2]:.2f} | {hottest[0]:.2f} |",
        "",
        f"Redis CPU per issued coupon (user + sys of the redis-server processes, over the measured "
        f"phase): {single_us:.0f} us on the single Redis, {cluster_us:.0f} us summed over the "
        f"cluster's masters. One master saturates at one core, 1,000,000 us a second; the cluster "
        f"at its hottest master. Coupons a second the Redis side can carry (the web workers "
        f"are the limit on this machine, far below):",
        "",
        "| Redis | issued / s, Redis CPU bound |",
        "| --- | ---: |",
        f"| single Redis (measured per coupon) | {1e6 / single_us:,.0f} |",
        *(f"| cluster of {k} masters ({'measured' if k == len(masters) else 'projected'}: CPU per "
          f"coupon as measured, hottest master {hottest[0]:.2f}x an even share) "
          f"| {k * 1e6 / cluster_us / hottest[0]:,.0f} |" for k in (len(masters), 6, 12)),
    ]
    return lines


def write_benchmarks(text):
    path = os.path.join(ROOT, "BENCHMARKS.md")
    doc = open(path).read() if os.path.exists(path) else "# Benchmarks\n\n"
    block = f"{MARK_START}\n{text}\n{MARK_END}"
    if MARK_START in doc and MARK_END in doc:
        head, rest = doc.split(MARK_START, 1)
        doc = head + block + rest.split(MARK_END, 1)[1]
    else:
        doc = doc.rstrip("\n") + "\n\n## Latest run\n\n" + block + "\n"
    with open(path, "w") as f:
        f.write(doc)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--duration", type=int, default=10, help="seconds per measured phase")
    parser.add_argument("--connections", type=int, default=100)
    parser.add_argument("--only", default=ALL, help="phases to run, e.g. ac")
    parser.add_argument("--with-ops-page", action="store_true",
                        help="keep the operators' page open (headless chromium) during b, c and d")
    parser.add_argument("--record", action="store_true",
                        help="also write the figures into BENCHMARKS.md (all phases, no page open)")
    parser.add_argument("--no-write", action="store_true", help=argparse.SUPPRESS)  # the default now
    args = parser.parse_args()
    if args.record and (args.only != ALL or args.with_ops_page):
        parser.error("--record takes the full run (all phases) without --with-ops-page")
    os.chdir(ROOT)
    results = run(args.duration, args.connections, args.only, args.with_ops_page)
    text = table(results, args.duration, args.connections, args.with_ops_page)
    print("\n" + text)
    stamp = dt.datetime.now().strftime("%Y%m%d-%H%M%S")
    base = os.path.join(ROOT, "reports", f"bench-{stamp}" + ("-ops-page" if args.with_ops_page else ""))
    with open(base + ".json", "w") as f:
        json.dump(results, f, indent=2)
    with open(base + ".md", "w") as f:
        f.write(text + "\n")
    print(f"\nwritten to {os.path.relpath(base, ROOT)}.md and .json"
          + ("; BENCHMARKS.md updated" if args.record else " (make bench RECORD=1 updates BENCHMARKS.md)"))
    if args.record:
        write_benchmarks(text)


if __name__ == "__main__":
    main()
