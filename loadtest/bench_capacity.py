"""The cost of one coupon in each part (`make bench-capacity`), and what a sale of X a second needs.

A sale of --stock coupons (a fresh campaign, distinct users) with 1, 2 and 4 web hosts, each a
`gunicorn -k gevent app:app` of --workers workers on a loopback port of its own (here they share
this machine's cores) with a wrk of its own at --connections (so a worker's load, and so its claim
batches, stay what they were as hosts are added); on a private single Redis and on a private Redis
Cluster of 3 masters with a replica each (neither keeps an append-only file); 2 schedulers (`flask
jobs run`: each flushes); the MariaDB database `coupon_benchcapacity` (made anew; or the one of
BENCH_CAPACITY_DATABASE_URL). The CPU (user +
system) each part used from the sale's start until every claim was in the database (the web
hosts: until the sale sold out), divided by the coupons counted in the database:
  web: each gunicorn's master and workers (/proc/<pid>/stat);
  Redis: each master's INFO cpu (used_cpu_user + used_cpu_sys); the replicas' apart;
  flushers: the schedulers' processes (/proc/<pid>/stat);
  MariaDB: the mariadbd process (/proc) less its threads seen serving other clients' connections
  (others' tests may share it; information_schema.PROCESSLIST's TID), the whole process apart;
  the load generator: wrk's (os.wait4), apart: it is no part of the service; and what the rest of
  the machine used meanwhile (/proc/stat less all the above, the whole mariadbd included: other
  people's tests), which makes every part dearer per coupon.
Linear scaling, on a machine too small to draw the curve: these costs stay flat as hosts and
masters are added, and no shared part (Redis, flushers, MariaDB) takes a growing share of the CPU.
Then the capacity table: for X coupons a second, the cores of each part (X * us per coupon / 1e6),
and which part runs out first (a Redis master is one core at most; MariaDB one server of
--db-cores). The last line: one JSON object of the figures.

    python -m loadtest.bench_capacity [--stock 50000] [--hosts 1,2,4] [--redis single,cluster]
        [--workers 2] [--connections 100] [--db-cores 16] [--quick]
"""
import argparse
import datetime as dt
import json
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time

from sqlalchemy import text
from sqlalchemy.engine import make_url

from coupon.outbox import outbox_stats
from coupon.queries import count_rows
from coupon.redis_state import issued_in_redis
from loadtest.bench import bench_service, machine, need_wrk, outcomes
from loadtest.harness import (
    Gunicorn, Scheduler, cpu_seconds, fresh_database, machine_cpu_seconds, open_campaign, pid_of,
    private_redis, reap_with_cpu, threads_cpu_seconds, users, wrk_command,
)

DATABASE_URL = os.environ.get("BENCH_CAPACITY_DATABASE_URL",
                              "mysql+pymysql://root@127.0.0.1:3306/coupon_benchcapacity")
SCHEDULERS = 2
RATES = (10_000, 50_000, 100_000)  # coupons a second of the capacity table
SERVICE = ("web", "redis", "replicas", "flushers", "mariadb")  # the parts whose CPU is the service's
DRAIN_TIMEOUT = 120.0  # seconds after the sell-out for the flush to finish


def say(*args):
    print(*args, file=sys.stderr, flush=True)


class Meter:
    """The CPU seconds so far of each part of a setting, read at once."""

    def __init__(self, hosts, masters, replicas, schedulers, engine, database):
        self.hosts, self.masters, self.replicas, self.schedulers = hosts, masters, replicas, schedulers
        self.engine, self.database = engine, database
        self.mariadb = pid_of("mariadbd")  # None: not on this machine (or MySQL's): not measured
        self.ours, self.others, self.noted = set(), set(), 0.0  # mariadbd threads, by whose connection

    def web(self):
        # the gunicorn masters and their workers; a pid gone (a worker replaced) loses its CPU: flagged
        pids = [pid for host in self.hosts for pid in (host.proc.pid, *host.worker_pids())]
        return {pid: seconds for pid in pids if (seconds := cpu_seconds(pid)) is not None}

    def settle(self, processes, timeout=30.0):
        """Until every web process is up and idle (a worker imports the app as it boots, after the
        first one answers /healthz): that is no cost of the sale."""
        deadline, last = time.monotonic() + timeout, None
        while time.monotonic() < deadline:
            now = self.web()
            idle = 0.01 * (len(self.hosts) + 1)  # CPU seconds in 0.5 s; an idle host spends ~5 ms a second
            if last and len(now) == processes and sum(now.values()) - sum(last.values()) < idle:
                return
            last = now
            time.sleep(0.5)
        raise RuntimeError("the web hosts did not settle")

    def shared(self):
        def redis_cpu(node):
            cpu = node.info("cpu")
            return cpu["used_cpu_user"] + cpu["used_cpu_sys"]
        return {
            "redis": {node.port: redis_cpu(node) for node in self.masters},
            "replicas": {node.port: redis_cpu(node) for node in self.replicas},
            "flushers": sum(cpu_seconds(s.proc.pid) or 0.0 for s in self.schedulers),
            "mariadb": cpu_seconds(self.mariadb) if self.mariadb else None,
            "mariadb_threads": threads_cpu_seconds(self.mariadb) if self.mariadb else {},
            "machine": machine_cpu_seconds(),
        }

    def note_clients(self, every=0.25):
        """Note which mariadbd threads serve this bench's database and which serve other clients
        (others' tests share this MariaDB: their threads' CPU is taken out), at most `every` s."""
        if not self.mariadb or time.monotonic() < self.noted + every:
            return
        self.noted = time.monotonic()
        with self.engine.connect() as conn:
            rows = conn.execute(text("SELECT TID, DB FROM information_schema.PROCESSLIST")).all()
        self.ours.update(tid for tid, db in rows if db == self.database)
        self.others.update(tid for tid, db in rows if db != self.database)


def spent(before, after, ours=(), others=()):
    """CPU seconds of each part between two Meter.shared() readings; MariaDB: the whole mariadbd
    less the threads seen serving other clients (only), and apart the threads seen serving ours."""
    used = {part: {k: after[part][k] - before[part][k] for k in after[part]} for part in ("redis", "replicas")}
    used["flushers"] = after["flushers"] - before["flushers"]

    def threads(tids):
        return sum(after["mariadb_threads"].get(t, 0.0) - before["mariadb_threads"].get(t, 0.0) for t in tids)
    whole = None if after["mariadb"] is None else after["mariadb"] - before["mariadb"]
    used["mariadb_whole"] = whole
    used["mariadb_ours"] = threads(ours)
    # never below our threads' own: each thread's figure is rounded to a clock tick
    used["mariadb"] = None if whole is None else max(whole - threads(set(others) - set(ours)), used["mariadb_ours"])
    used["machine"] = after["machine"] - before["machine"]
    return used


def per_coupon(web_s, used, load_s, coupons):
    """Microseconds of CPU per coupon of each part, each Redis master apart; each part's share of
    the service's CPU (the load generator apart)."""
    us = lambda seconds: seconds * 1e6 / coupons  # noqa: E731
    figures = {
        "web": us(web_s),
        "redis": us(sum(used["redis"].values())),
        "redis_masters": {str(port): us(s) for port, s in used["redis"].items()},
        "replicas": us(sum(used["replicas"].values())),
        "flushers": us(used["flushers"]),
        "mariadb": None if used["mariadb"] is None else us(used["mariadb"]),
        "mariadb_whole": None if used["mariadb_whole"] is None else us(used["mariadb_whole"]),
        "mariadb_ours": us(used["mariadb_ours"]),
        "load_generator": us(load_s),
    }
    total = sum(figures[p] or 0.0 for p in SERVICE)
    shares = {p: (figures[p] or 0.0) / total for p in SERVICE}
    return figures, shares


def token_files(pool, count, folder):
    """`count` wrk token files, the pool's users dealt out in turn: distinct users on every host."""
    paths = []
    for i in range(count):
        paths.append(os.path.join(folder, f"host{i}-of-{count}.tokens"))
        with open(paths[-1], "w") as f:
            f.writelines(token + "\n" for _, token in pool[i::count])
    return paths


def sell_out(svc, keys, hosts, tokens, stock, connections, meter):
    """Flood the hosts, a wrk each (one thread, on users of its own), until the campaign sold out;
    then stop them. (monotonic time of the first coupon, of the sell-out; the web processes' CPU
    then; wrk's CPU seconds; its socket errors)."""
    path, wrks, first = f"/api/v1/campaigns/{keys.campaign_id}/issue", [], None
    try:
        for host, tokens_file in zip(hosts, tokens):  # -d: a bound only, it is stopped at the sell-out
            command = wrk_command(host.url + path, tokens_file, stock // 500 + 60, connections, threads=1)
            wrks.append(subprocess.Popen(command, stdout=subprocess.PIPE, text=True))
        while (issued := issued_in_redis(svc.redis, keys) or 0) < stock:
            first = first or (issued and time.monotonic())
            meter.note_clients()
            if any(w.poll() is not None for w in wrks):
                raise RuntimeError(f"wrk stopped before the sale sold out ({issued} issued)")
            time.sleep(0.05)
        sold_out, web = time.monotonic(), meter.web()
        for w in wrks:
            w.send_signal(signal.SIGINT)  # wrk stops at once, printing its figures
        load_s = sum(reap_with_cpu(w) for w in wrks)
        said = [json.loads(w.communicate()[0].strip().splitlines()[-1]) for w in wrks]
        errors = sum(r[k] for r in said for k in ("connect", "read", "write", "timeout"))
        return first or sold_out, sold_out, web, load_s, errors
    finally:
        for w in wrks:  # by pid, also when this failed half-way
            if w.returncode is None:
                w.kill()
                w.wait()


def run_setting(svc, env, redis, schedulers, kind, host_count, args, pool, folder):
    """One sale on `host_count` fresh hosts, measured until the last claim is in the database;
    its figures."""
    label = f"{kind}/h{host_count}"
    campaign_id = open_campaign(svc, args.stock, f"capacity {label}")
    keys = svc.keys(campaign_id)
    tokens = token_files(pool, host_count, folder)
    hosts = []
    try:
        for _ in range(host_count):
            hosts.append(Gunicorn(env, workers=args.workers, private_metrics=True))
        masters = redis.masters() if kind == "cluster" else [redis]
        replicas = [n for n in redis.live() if n not in masters] if kind == "cluster" else []
        meter = Meter(hosts, masters, replicas, schedulers, svc.engine, make_url(DATABASE_URL).database)
        meter.settle(host_count * (args.workers + 1))
        web_before, before, started = meter.web(), meter.shared(), time.monotonic()
        meter.note_clients(every=0)
        first, sold_out, web_after, load_s, errors = sell_out(
            svc, keys, hosts, tokens, args.stock, args.connections, meter)
        time.sleep(0.5)  # answers in flight at the stop reach the counters
        answers = {}
        for host in hosts:
            for outcome, n in outcomes(host).items():
                answers[outcome] = answers.get(outcome, 0) + n
        while outbox_stats(svc.redis, keys)[0] or count_rows(svc.engine, campaign_id) < args.stock:
            if time.monotonic() - sold_out > DRAIN_TIMEOUT:
                raise RuntimeError(f"{label}: the outbox not flushed {DRAIN_TIMEOUT:.0f} s after the sell-out")
            meter.note_clients()
            time.sleep(0.1)
        drained = time.monotonic()
        meter.note_clients(every=0)
        used = spent(before, meter.shared(), meter.ours, meter.others)
    finally:
        for host in hosts:
            host.stop()
    coupons = count_rows(svc.engine, campaign_id)
    lost = [pid for pid in web_before if pid not in web_after]
    web_s = sum(web_after[pid] - web_before.get(pid, 0.0) for pid in web_after)
    figures, shares = per_coupon(web_s, used, load_s, coupons)
    # the cores the rest of the machine used meanwhile (others' tests, but for their MariaDB
    # threads; this process): a setting measured on a busier machine costs more per coupon all over
    ours = web_s + sum(used["redis"].values()) + sum(used["replicas"].values()) + used["flushers"] \
        + (used["mariadb_whole"] or 0.0) + load_s
    flags = [f"{len(lost)} web processes gone during the sale: their CPU is not counted"] if lost else []
    if errors:
        flags.append(f"{errors} socket errors (wrk)")
    if answers.get("HELD"):
        flags.append(f"{answers['HELD']} answers to users who held a coupon (a wrk ran out of new users)")
    return {"setting": label, "redis": kind, "hosts": host_count, "coupons": coupons,
            "per_s": coupons / max(sold_out - first, 1e-3), "drain_s": drained - sold_out, "answers": answers,
            "us": figures, "shares": shares, "others_cores": (used["machine"] - ours) / (drained - started),
            "flags": flags}


def bench(args, folder):
    fresh_database(DATABASE_URL)
    results = []
    for kind in args.redis:
        with private_redis(kind, os.path.join(folder, kind)) as (redis, target):
            svc, env = bench_service(DATABASE_URL, target)
            # the users' tokens: for every setting, half again the stock, dealt out over its hosts
            pool = users(svc.signer, args.stock * 3 // 2 + 1000 * max(args.hosts), f"cap-{kind}-", ttl=6 * 3600)
            schedulers = [Scheduler(env) for _ in range(SCHEDULERS)]
            try:
                time.sleep(2)  # a leader, and each flusher's first round, before the first sale
                for count in args.hosts:
                    say(f"{kind}/h{count}: a sale of {args.stock:,} on {count} host(s) ...")
                    results.append(run_setting(svc, env, redis, schedulers, kind, count, args, pool,
                                               os.path.join(folder, kind)))
                    r = results[-1]
                    say(f"{r['setting']}: {r['coupons']:,} coupons, {r['per_s']:,.0f}/s, flushed "
                        f"{r['drain_s']:.1f} s after the sell-out", *r["flags"])
            finally:
                for s in schedulers:
                    s.stop()
                svc.engine.dispose()
    return results


# -- the tables -----------------------------------------------------------------------------------

def fmt(value, spec=",.0f"):
    return "-" if value is None else format(value, spec)


def median_costs(results, kind):
    """Each part's median microseconds per coupon over the host counts of one Redis kind, and the
    hottest master's (the one that caps a cluster)."""
    runs = [r["us"] for r in results if r["redis"] == kind]
    costs = {p: statistics.median(r[p] for r in runs if r[p] is not None)
             for p in (*SERVICE, "mariadb_whole", "mariadb_ours", "load_generator")
             if any(r[p] is not None for r in runs)}
    costs["redis_hottest"] = statistics.median(max(r["redis_masters"].values()) for r in runs)
    costs["masters"] = len(runs[0]["redis_masters"])
    return costs


def capacity(costs, db_cores, rates=RATES):
    """[(part, us per coupon, what one instance gives, [cores needed at each rate], the coupons a
    second where it runs out, None where it scales out)], from the lowest ceiling up."""
    masters = costs["masters"]
    rows = [
        ("web workers", costs["web"], "1 core a worker; add hosts", None),
        (f"Redis, {masters} master{'s' if masters > 1 else ''}", costs["redis"],
         "1 core a master: the hottest caps it", 1e6 / costs["redis_hottest"]),
        ("flushers", costs["flushers"], "1 core a scheduler; add schedulers", None),
    ]
    if costs.get("replicas"):  # a replica applies its master's writes: one core too
        rows.insert(2, ("Redis replicas", costs["replicas"], "1 core a replica", 1e6 * masters / costs["replicas"]))
    if costs.get("mariadb"):  # a MariaDB of this machine: its CPU measured
        rows.append(("MariaDB", costs["mariadb"], f"one server of {db_cores} cores", db_cores * 1e6 / costs["mariadb"]))
    table = [(part, us, limit, [x * us / 1e6 for x in rates], ceiling) for part, us, limit, ceiling in rows]
    return sorted(table, key=lambda row: row[4] or float("inf"))


def rounded(value):
    """The figures for the JSON line: floats to 0.1, in dicts and lists too."""
    if isinstance(value, float):
        return round(value, 1)
    if isinstance(value, dict):
        return {str(k): rounded(v) for k, v in value.items()}
    return value


NAMES = {"web": "web", "redis": "Redis masters", "replicas": "replicas", "flushers": "flushers",
         "mariadb": "MariaDB", "mariadb_whole": "(all mariadbd)", "load_generator": "load gen (apart)"}


def report(results, args):
    """The tables, then one JSON line of the figures."""
    lines = [
        f"== bench-capacity, {dt.datetime.now():%Y-%m-%d %H:%M}: a sale of {args.stock:,} coupons a setting; "
        f"a host: {args.workers} gevent workers, wrk {args.connections} connections; {SCHEDULERS} schedulers; "
        "Redis without an append-only file; the cluster's writes wait for a replica (REDIS_REPLICA_ACKS 1)",
        f"Machine: {machine()}. The hosts are gunicorns on loopback ports of this one machine: they share its "
        "cores, so coupons/s does not grow with them; what must stay flat is the CPU each part spends per coupon.",
        "",
        "CPU microseconds per issued coupon (user + system; web until the sell-out, the rest until flushed;",
        "MariaDB: mariadbd less the threads seen serving other clients; others: the cores the rest of the",
        "machine used meanwhile, other people's tests mostly):",
        f"  {'setting':<11} {'coupons/s':>9} {'others':>6}" + "".join(f"{NAMES[p]:>17}" for p in NAMES)
        + "  Redis per master",
    ]
    for r in results:
        lines.append(f"  {r['setting']:<11} {r['per_s']:>9,.0f} {r['others_cores']:>6.2f}"
                     + "".join(f"{fmt(r['us'][p]):>17}" for p in NAMES)
                     + "  " + " ".join(f"{v:.0f}" for v in r["us"]["redis_masters"].values()))
    lines += ["", "Share of the service's CPU (the load generator apart):",
              f"  {'setting':<11}" + "".join(f"{NAMES[p]:>15}" for p in SERVICE)]
    for r in results:
        lines.append(f"  {r['setting']:<11}" + "".join(f"{r['shares'][p]:>15.1%}" for p in SERVICE))
    for kind in args.redis:  # the trend: the most hosts against the fewest
        runs = [r for r in results if r["redis"] == kind]
        a, b = min(runs, key=lambda r: r["hosts"]), max(runs, key=lambda r: r["hosts"])
        if a["hosts"] != b["hosts"]:
            lines.append(f"  {kind}, h{b['hosts']} against h{a['hosts']}: per coupon "
                         + ", ".join(f"{NAMES[p]} x{b['us'][p] / a['us'][p]:.2f}" for p in SERVICE if a["us"][p])
                         + "; share of " + ", ".join(f"{NAMES[p]} x{b['shares'][p] / a['shares'][p]:.2f}"
                                                     for p in SERVICE[1:] if a["shares"][p]))
    summary = {"stock": args.stock, "workers": args.workers, "connections": args.connections,
               "db_cores": args.db_cores, "settings": {}, "capacity": {}}
    for kind in args.redis:
        costs = median_costs(results, kind)
        table = capacity(costs, args.db_cores)
        name = "a single Redis" if kind == "single" else f"a Redis Cluster of {costs['masters']} masters"
        lines += ["", f"Capacity on {name}, from the median cost per coupon of its "
                  f"{sum(r['redis'] == kind for r in results)} runs: cores needed",
                  f"  {'part':<20} {'us/coupon':>9}  {'one instance':<38}" + "".join(f"{x:>10,}/s" for x in RATES)
                  + "  runs out at"]
        for part, us, limit, cores, at in table:
            lines.append(f"  {part:<20} {us:>9.0f}  {limit:<38}" + "".join(f"{c:>12.2f}" for c in cores)
                         + f"  {fmt(at) + '/s' if at else 'scales out'}")
        first, then = table[0], table[1]
        lines.append(f"  runs out first: {first[0]}, at {first[4]:,.0f} coupons/s"
                     + (f"; then {then[0]}, at {then[4]:,.0f}/s" if then[4] else "")
                     + f". The load generator (apart): {costs['load_generator']:.0f} us a coupon.")
        if kind == "cluster":  # it scales out too: the hottest master's ceiling, per master
            lines.append(f"  each master added (with its replica), as evenly loaded: about "
                         f"{1e6 / costs['redis_hottest'] / costs['masters']:,.0f} coupons/s more")
        summary["capacity"][kind] = {"us_per_coupon": rounded(costs), "runs_out_first": first[0],
                                     "at_per_s": round(first[4])}
    for r in results:
        summary["settings"][r["setting"]] = rounded(
            {"coupons": r["coupons"], "per_s": r["per_s"], "drain_s": r["drain_s"], "us_per_coupon": r["us"],
             "share_pct": {p: v * 100 for p, v in r["shares"].items()},
             "others_cores": round(r["others_cores"], 2), "answers": r["answers"],
             "flags": r["flags"]})
    flags = [f"{r['setting']}: {f}" for r in results for f in r["flags"]]
    lines += ["", "Flags: " + ("; ".join(flags) if flags else "none"), json.dumps(summary)]
    return "\n".join(lines)


def main():
    def items(kind):
        return lambda text: [kind(x) for x in text.split(",") if x]

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--stock", type=int, help="coupons of each setting's sale (default 50,000)")
    parser.add_argument("--hosts", type=items(int), default=[1, 2, 4], help="web hosts of each setting")
    parser.add_argument("--redis", type=items(str), default=["single", "cluster"])
    parser.add_argument("--workers", type=int, default=2, help="gevent workers a host")
    parser.add_argument("--connections", type=int, default=100, help="wrk's, for each host")
    parser.add_argument("--db-cores", type=int, default=16, help="the cores of the one MariaDB server planned for")
    parser.add_argument("--quick", action="store_true", help="a smoke run: 1 and 2 hosts, a stock of 3,000")
    args = parser.parse_args()
    args.stock = args.stock or (3_000 if args.quick else 50_000)
    if args.quick:
        args.hosts = [1, 2]
    if not set(args.redis) <= {"single", "cluster"} or args.stock < 1000:
        parser.error("--redis single,cluster; --stock 1000 at least")
    need_wrk()
    with tempfile.TemporaryDirectory(prefix="bench-capacity-") as folder:
        results = bench(args, folder)
    print(report(results, args))


if __name__ == "__main__":
    main()
