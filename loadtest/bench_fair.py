"""Fairness under a flood (`make bench-fair`): do the coupons go to the earliest senders?

--users (3,000) distinct users, one issue request each on a connection of its own, written in a
fixed order at a pace above what the service answers, for a campaign of --stock (500) coupons.
A setting: Redis (a private redis-server, or a local Redis Cluster of 3 masters) / web workers per
host (`gunicorn -k gevent app:app`, the project's config) / hosts (1, or 2 gunicorn masters on the
same Redis and database, the second's clock CLOCK_SHIFT s ahead as tests/shifted_clock does; users
alternate between them) / connections (pooled: opened and warmed with one GET /healthz each, then
a 1 s pause, as a proxy's keep-alive pool; fresh: each connected at its user's turn, written once
connected) / pace (xK: K times the capacity measured first for that Redis, workers and hosts, or
--rate). Each run: a fresh campaign, fresh users. The client forks a writer that only writes,
paced by busy-waiting on CLOCK_MONOTONIC (shared by the processes) and telling the reader each
write's time over a pipe, and a reader that only reads (epoll). A table, then one JSON line with
every run's figures, to stdout and reports/bench-fair.md; MariaDB database `coupon_benchfair`.

    python -m loadtest.bench_fair [--users 3000] [--stock 500] [--workers 2,4] [--redis single,cluster]
        [--modes pooled,fresh] [--hosts 1,2] [--multiples 2,5] [--rate R,..] [--runs 1] [--only 'single/w2/*']
"""
import argparse
import contextlib
import datetime as dt
import errno
import fcntl
import fnmatch
import gc
import itertools
import json
import os
import pickle
import re
import select
import socket
import struct
import sys
import tempfile
import time
import traceback
import urllib.request
from collections import Counter
from typing import NamedTuple, Optional

from coupon.fairness import NOTE_EVERY, SaleOrder
from coupon.redis_state import issued_in_redis
from loadtest.bench import bench_service, machine
from loadtest.harness import (
    ROOT, Gunicorn, LocalCluster, RedisServer, RedisTarget, fresh_database, open_campaign, users,
    web_cpu_seconds,
)

DATABASE_URL = os.environ.get("BENCH_FAIR_DATABASE_URL", "mysql+pymysql://root@127.0.0.1:3306/coupon_benchfair")
LEAD_MS = 50  # a refusal sent this much before the last winner's request is plainly unfair
RUN_TIMEOUT = 60.0  # seconds from the fork to the last answer waited for
PAUSE = 1.0  # seconds between warming the pool and the first issue request
KEEPALIVE = float(os.environ.get("KEEPALIVE", 5))  # the server's: a pooled connection idle longer is closed
CLOCK_SHIFT = 3  # seconds the second host's clock is ahead
RECORD = struct.Struct("<iqi")  # writer to reader: user index, send time (monotonic ns), errno
LENGTH = re.compile(rb"\r\ncontent-length:[ \t]*(\d+)", re.I)


class Send(NamedTuple):
    user: str
    sent_ns: Optional[int]  # None: never written (the run timed out)


class Answer(NamedTuple):
    outcome: str  # "201", "409 SOLD_OUT", "503 UNAVAILABLE", "closed", "econnreset", "failed ECONNREFUSED", ...
    serial: Optional[int]
    user: Optional[str]  # the ticket's user_id
    received_ns: int


def fairness(sends, answers, stock, lead_ms=LEAD_MS):
    """The figures of one run: `sends` in the users' order (rank = index + 1), `answers[i]` the
    answer to sends[i] (None: none came). Pure: no service needed."""
    sent = [s.sent_ns for s in sends if s.sent_ns is not None]
    http = [(s, a) for s, a in zip(sends, answers) if a and a.outcome[0].isdigit()]  # not closed, reset, failed
    outcomes = Counter(a.outcome for a in answers if a)
    outcomes["no answer"] = sum(1 for s, a in zip(sends, answers) if s.sent_ns is not None and a is None)
    won = [i for i, a in enumerate(answers) if a and a.outcome == "201"]
    early = Counter(a.outcome for a in answers[:stock] if a)
    # the N earliest by when they were written: fresh connections are ranked by when their
    # connects started, and a connect that took longer writes later (what the service sees)
    written = sorted((s.sent_ns, i) for i, s in enumerate(sends) if s.sent_ns is not None)[:stock]
    last_sent = max((sends[i].sent_ns for i in won), default=None)  # fresh: writes may overtake
    refused = [s.sent_ns for s, a in http if a.outcome == "409 SOLD_OUT" and last_sent is not None
               and s.sent_ns <= last_sent - lead_ms * 1_000_000]
    latencies = sorted(a.received_ns - s.sent_ns for s, a in http)
    wins = sorted(answers[i].received_ns - sends[i].sent_ns for i in won)  # what a winner waits
    first = min(sent, default=0)
    span, send_span = max((a.received_ns for _, a in http), default=first) - first, max(sent, default=0) - first
    flags = [] if len({s.user for s in sends}) == len(sends) else ["users not distinct"]
    if len(won) != min(stock, len(sent)):
        flags.append(f"{len(won)} coupons issued to {len(sent)} users for a stock of {stock}")
    if any(answers[i].user != sends[i].user for i in won):
        flags.append("a ticket names another user than its sender")
    if len({answers[i].serial for i in won}) != len(won):
        flags.append("a serial was issued twice")
    if outcomes["no answer"]:
        flags.append(f"{outcomes['no answer']} requests unanswered")
    return {
        "sent": len(sent),
        "outcomes": {k: v for k, v in sorted(outcomes.items()) if v},
        "winners": len(won),
        "early_won": early["201"],
        "early_share": early["201"] / stock,
        "early_written_won": sum(1 for _, i in written if answers[i] and answers[i].outcome == "201"),
        "early_sold_out": early["409 SOLD_OUT"],
        "last_winner_rank": won[-1] + 1 if won else None,
        "refused_early": len(refused),
        "max_lead_ms": (last_sent - min(refused)) / 1e6 if refused else None,
        "p50_ms": latencies[len(latencies) // 2] / 1e6 if latencies else None,
        "p99_ms": latencies[min(len(latencies) - 1, int(len(latencies) * 0.99))] / 1e6 if latencies else None,
        "win_p50_ms": wins[len(wins) // 2] / 1e6 if wins else None,
        "answered_per_s": len(http) / (span / 1e9) if span > 0 else None,
        "written_per_s": (len(sent) - 1) / (send_span / 1e9) if send_span > 0 else None,
        "flags": flags,
    }


# -- the client ---------------------------------------------------------------------------------

def take_answer(buf):
    """(status, body) of the HTTP answer at the start of buf once it is whole, else None."""
    end = buf.find(b"\r\n\r\n")
    if end < 0:
        return None
    length = LENGTH.search(buf, 0, end + 2)
    stop = end + 4 + (int(length.group(1)) if length else 0)
    return (int(buf[9:12]), buf[end + 4:stop]) if len(buf) >= stop else None


def warm(socks, addrs, window=200, timeout=30.0):
    """Connect each socket and ask one GET /healthz on it, `window` at a time, so that the server
    has accepted and holds each connection (a connect alone may sit in the listen backlog); the
    time of its answer per socket. /healthz: the campaign's status reads a database row, ~4x
    slower, and the first connections warmed would outlive the server's keep-alive."""
    poller, waiting, warmed = select.epoll(), {}, [None] * len(socks)
    deadline, todo = time.monotonic() + timeout, iter(range(len(socks)))
    try:
        while True:
            for i in itertools.islice(todo, window - len(waiting)):
                (host, port), sock = addrs[i], socks[i]
                sock.connect((host, port))  # blocking, then not: the reader will share it
                sock.setblocking(False)
                sock.send(f"GET /healthz HTTP/1.1\r\nHost: {host}:{port}\r\n\r\n".encode())
                poller.register(sock.fileno(), select.EPOLLIN)
                waiting[sock.fileno()] = [i, b""]
            if not waiting:
                return warmed
            if time.monotonic() > deadline:
                raise TimeoutError(f"{len(waiting)} connections not warmed in {timeout} s")
            for fd, _ in poller.poll(0.5):
                data = os.read(fd, 65536)
                if not data:
                    raise RuntimeError("the server closed a connection being warmed")
                waiting[fd][1] += data
                answer = take_answer(waiting[fd][1])
                if answer:
                    if answer[0] != 200:
                        raise RuntimeError(f"warming a connection: {answer}")
                    warmed[waiting.pop(fd)[0]] = time.monotonic_ns()
                    poller.unregister(fd)
    finally:
        poller.close()


def write(socks, requests, addrs, rate, fresh, pipe, start_ns, deadline_ns):
    """The writer: user i's turn comes at start + i / rate (rate None: at once). Pooled, it writes
    requests[i] on socks[i]; fresh, it starts connecting socks[i] and writes once connected (a
    slow connect holds up no other user). Each write's time and errno down the pipe."""
    period, clock = (1e9 / rate if rate else 0.0), time.monotonic_ns
    connecting, pending = select.epoll(), {}  # fresh: connects under way, fd: user

    def send(i, err=0):
        if not err:
            try:
                socks[i].send(requests[i])
            except OSError as e:
                err = e.errno or errno.EIO
        os.write(pipe, RECORD.pack(i, clock(), err))

    def connected(wait):
        for fd, _ in connecting.poll(wait):
            connecting.unregister(fd)
            i = pending.pop(fd)
            send(i, socks[i].getsockopt(socket.SOL_SOCKET, socket.SO_ERROR))

    for i, sock in enumerate(socks):
        due = start_ns + int(i * period)
        if due >= deadline_ns:  # the reader stops then
            break
        while clock() < due:  # a sleep would wake 50-100 us late: a busy wait
            if pending:
                connected(0)
        if not fresh:
            send(i)
        elif (err := sock.connect_ex(addrs[i])) == errno.EINPROGRESS:
            pending[sock.fileno()] = i
            connecting.register(sock.fileno(), select.EPOLLOUT)
        else:
            send(i, err)
    while pending and clock() < deadline_ns:
        connected(0.1)
    for i in pending.values():
        send(i, errno.ETIMEDOUT)


def read(socks, pipe, deadline_ns, out_path):
    """The reader: learns of each request from the writer's pipe, then reads its socket until
    the answer is whole; (sends, answers) pickled to out_path: [(sent ns, errno)] and
    [(status or failure, body, received ns)], None where nothing came."""
    count = len(socks)
    sends, answers, bufs, user_of = [None] * count, [None] * count, {}, {}
    poller, partial, writing = select.epoll(), b"", True
    poller.register(pipe, select.EPOLLIN)
    while (writing or bufs) and time.monotonic_ns() < deadline_ns:
        for fd, _ in poller.poll(0.2):
            now = time.monotonic_ns()
            if fd == pipe:
                data = os.read(pipe, 1 << 16)
                if not data:  # the writer is done
                    writing = False
                    poller.unregister(pipe)
                    continue
                partial += data
                whole = len(partial) - len(partial) % RECORD.size
                for i, sent_ns, err in RECORD.iter_unpack(partial[:whole]):
                    sends[i] = (sent_ns, err)
                    if err:
                        answers[i] = ("failed " + errno.errorcode.get(err, str(err)), b"", sent_ns)
                    else:
                        user_of[socks[i].fileno()] = i
                        bufs[socks[i].fileno()] = b""
                        poller.register(socks[i].fileno(), select.EPOLLIN)
                partial = partial[whole:]
                continue
            i = user_of[fd]
            try:
                data = os.read(fd, 65536)
            except BlockingIOError:
                continue
            except OSError as e:  # reset, mostly
                answer = (errno.errorcode.get(e.errno, "error").lower(), b"")
            else:
                answer = take_answer(bufs[fd] + data) if data else ("closed", b"")
                if answer is None:
                    bufs[fd] += data
                    continue
            answers[i] = (*answer, now)
            poller.unregister(fd)
            del bufs[fd]
    with open(out_path, "wb") as f:
        pickle.dump((sends, answers), f)


def fork(run):
    """Run `run()` in a forked child (which never returns here); its pid."""
    pid = os.fork()
    if pid == 0:
        code = 1
        try:
            gc.disable()  # no collection pause in the middle of the pace
            run()
            code = 0
        except BaseException:
            traceback.print_exc()
        finally:
            os._exit(code)  # no atexit, no flush of the parent's buffers, no engine disposal
    return pid


def reap(pids, deadline):
    """Wait for the children; kill by pid those still running at `deadline` (monotonic s), or
    when this is interrupted."""
    try:
        for pid in pids:
            while os.waitpid(pid, os.WNOHANG) == (0, 0) and time.monotonic() < deadline:
                time.sleep(0.02)
    finally:
        for pid in pids:
            with contextlib.suppress(ChildProcessError):  # reaped already
                if os.waitpid(pid, os.WNOHANG) == (0, 0):
                    os.kill(pid, 9)
                    os.waitpid(pid, 0)


def flood(addrs, requests, rate, fresh, timeout=RUN_TIMEOUT):
    """Write requests[i] to addrs[i], each on a connection of its own, in order, at `rate` a
    second; (sends, answers, warmed) as the reader saw them (see read), warmed: the pool's
    answer times (pooled) or None (fresh)."""
    socks = [socket.socket() for _ in requests]
    try:
        warmed = None
        if fresh:
            for sock in socks:
                sock.setblocking(False)
        else:
            warmed = warm(socks, addrs)
            time.sleep(PAUSE)
        pipe_r, pipe_w = os.pipe()
        fcntl.fcntl(pipe_w, fcntl.F_SETPIPE_SZ, 1 << 20)  # the writer must never wait for the reader
        fd, out_path = tempfile.mkstemp(prefix="bench-fair-")
        os.close(fd)
        sys.stdout.flush(), sys.stderr.flush()
        start_ns = time.monotonic_ns() + 50_000_000  # both children are up by then
        deadline_ns = start_ns + int(timeout * 1e9)
        reader = fork(lambda: (os.close(pipe_w), read(socks, pipe_r, deadline_ns, out_path)))
        writer = fork(lambda: (os.close(pipe_r),
                               write(socks, requests, addrs, rate, fresh, pipe_w, start_ns, deadline_ns)))
        os.close(pipe_r), os.close(pipe_w)
        reap([writer, reader], time.monotonic() + timeout + 5)
        try:
            with open(out_path, "rb") as f:
                sends, answers = pickle.load(f)
        except (OSError, EOFError, pickle.UnpicklingError):
            raise RuntimeError("the reader left no result (killed at the timeout, or failed)") from None
        finally:
            os.remove(out_path)
        return sends, answers, warmed
    finally:
        for sock in socks:
            sock.close()


def listen_drops():
    """Connections the kernel dropped so far because a listen queue was full (host-wide): a
    dropped connect is retried a second later."""
    with open("/proc/net/netstat") as f:
        names, values = [line.split() for line in f if line.startswith("TcpExt:")]
    return int(dict(zip(names, values))["ListenDrops"])


def answer_of(raw):
    """An Answer from the reader's (status or failure, body, received ns)."""
    status, body, received_ns = raw
    if isinstance(status, str):
        return Answer(status, None, None, received_ns)
    try:
        doc = json.loads(body)
    except ValueError:
        doc = {}
    if status in (200, 201):
        return Answer(str(status), doc.get("serial"), doc.get("user_id"), received_ns)
    return Answer(f"{status} {(doc.get('error') or {}).get('code', '?')}", None, None, received_ns)


# -- the service --------------------------------------------------------------------------------

@contextlib.contextmanager
def redis_service(kind, folder):
    """(the service in this process, the servers' environment) on a private Redis of `kind`
    ("single" or "cluster"), stopped by pid after."""
    os.makedirs(folder, exist_ok=True)
    redis = RedisServer(folder, "no file") if kind == "single" else LocalCluster(folder)
    target = RedisTarget(redis.url) if kind == "single" else RedisTarget(cluster_nodes=redis.startup_nodes)
    svc = None
    try:
        svc, env = bench_service(DATABASE_URL, target)
        yield svc, env
    finally:
        if svc:
            svc.engine.dispose()
        redis.stop()


@contextlib.contextmanager
def hosts(env, workers, count, order="on"):
    """`count` gunicorn masters of `workers` workers each, ARRIVAL_ORDER `order`; the second's
    clock CLOCK_SHIFT s ahead."""
    started = []
    try:
        for i in range(count):
            shifted = dict(PYTHONPATH=f"{ROOT}/tests/shifted_clock:{ROOT}", CLOCK_SHIFT=CLOCK_SHIFT) if i else {}
            started.append(Gunicorn(env, workers=workers, private_metrics=True, ARRIVAL_ORDER=order, **shifted))
        yield started
    finally:
        for server in started:
            server.stop()


def run_setting(svc, servers, users_count, stock, rate, fresh, label="run"):
    """One run: a fresh campaign of `stock`, `users_count` fresh users alternating between
    `servers`, written at `rate` a second (None: as fast as the writer goes), pooled or fresh
    connections; the figures (fairness), with what Redis counts as issued. Small, in a test:
        fresh_database(DATABASE_URL)
        with redis_service("single", folder) as (svc, env), hosts(env, 2, 1) as servers:
            figures = run_setting(svc, servers, 600, 100, 4000, fresh=False)"""
    campaign_id = open_campaign(svc, stock, f"bench-fair {label}")
    crowd = users(svc.signer, users_count, prefix=f"fair{time.time_ns()}-")
    addrs = [("127.0.0.1", servers[i % len(servers)].port) for i in range(users_count)]
    requests = [f"POST /api/v1/campaigns/{campaign_id}/issue HTTP/1.1\r\nHost: {host}:{port}\r\n"
                f"Authorization: Bearer {token}\r\nContent-Length: 0\r\n\r\n".encode()
                for (host, port), (_, token) in zip(addrs, crowd)]
    drops, spent, cpu = listen_drops(), issue_parts(servers), web_cpu_seconds(servers)
    raw_sends, raw_answers, warmed = flood(addrs, requests, rate, fresh)
    drops, spent, cpu = listen_drops() - drops, issue_parts(servers) - spent, web_cpu_seconds(servers) - cpu
    sends = [Send(user, s and s[0]) for (user, _), s in zip(crowd, raw_sends)]
    figures = fairness(sends, [a and answer_of(a) for a in raw_answers], stock)
    figures["rate"] = rate
    # where an issue call's time went, ms per call on average (metrics.IssueParts)
    figures["parts_ms"] = {part: round(seconds * 1000 / users_count, 3) for part, seconds in sorted(spent.items())}
    # the web processes' CPU a request (its connection's warm-up included): what bounds answers/s
    # once they saturate, steadier from run to run than answers/s on this shared machine
    figures["web_cpu_us"] = round(cpu * 1e6 / users_count, 1)
    figures["issued_in_redis"] = issued_in_redis(svc.redis, svc.keys(campaign_id))
    # the service's own count, by its arrival stamps (its close report's; each worker notes them
    # every NOTE_EVERY): fewer refusals ahead than the client counts means the stamps, not the
    # order they were served in, put those requests late
    time.sleep(3 * NOTE_EVERY)
    figures["service_order"] = SaleOrder.read(svc.redis, svc.keys(campaign_id)).figures()
    if figures["issued_in_redis"] != figures["winners"]:
        figures["flags"].append(f"Redis counts {figures['issued_in_redis']} issued, the client {figures['winners']}")
    if drops:
        figures["flags"].append(f"{drops} connects dropped for a full listen queue (host-wide count)")
    if rate and sends[0].sent_ns:  # how far behind its schedule a write fell (fresh: the connect's wait)
        figures["writer_max_lag_ms"] = max(s.sent_ns - sends[0].sent_ns - i * 1e9 / rate
                                           for i, s in enumerate(sends) if s.sent_ns) / 1e6
    if warmed:
        figures["max_idle_s"] = max(s.sent_ns - w for s, w in zip(sends, warmed) if s.sent_ns) / 1e9
        if figures["max_idle_s"] > KEEPALIVE - 0.5:
            figures["flags"].append(f"a pooled connection idle {figures['max_idle_s']:.1f} s: "
                                    f"the server's keep-alive is {KEEPALIVE:g} s")
    return figures


PART = re.compile(r'^coupon_issue_part_seconds_total\{part="(\w+)"\} (\S+)$', re.M)


def issue_parts(servers):
    """Seconds the servers' issue calls spent in each part so far (their /metrics)."""
    spent = Counter()
    for server in servers:
        with urllib.request.urlopen(f"{server.url}/metrics", timeout=10) as answer:
            for part, seconds in PART.findall(answer.read().decode()):
                spent[part] += float(seconds)
    return spent


# -- the benchmark ------------------------------------------------------------------------------

class Setting(NamedTuple):
    redis: str
    order: str  # ARRIVAL_ORDER: on | off
    workers: int
    hosts: int
    mode: str  # pooled | fresh
    pace: str  # "x2": twice the capacity, or "10000/s"

    @property
    def label(self):
        return f"{self.redis}/{self.order}/w{self.workers}/h{self.hosts}/{self.mode}/{self.pace}"


def say(*args):
    print(*args, file=sys.stderr, flush=True)


def bench(settings, users_count, stock, runs, folder):
    """Run every setting `runs` times (settings in order of Redis, workers, hosts: each Redis and
    each group of hosts is started once); (capacities {redis/wN/hN: answers/s}, [(setting, figures)]).
    A capacity is measured by the first group of its Redis, workers and hosts (--order off first:
    today's), and paces both orders."""
    fresh_database(DATABASE_URL)
    capacities, results = {}, []
    for kind, of_kind in itertools.groupby(settings, lambda s: s.redis):
        with redis_service(kind, os.path.join(folder, kind)) as (svc, env):
            for (workers, count, order), group in itertools.groupby(
                    of_kind, lambda s: (s.workers, s.hosts, s.order)):
                group, key = list(group), f"{kind}/w{workers}/h{count}"
                with hosts(env, workers, count, order) as servers:
                    if key not in capacities and any(s.pace.startswith("x") for s in group):  # best of two: the first warms up
                        say(f"{key}: capacity ...")
                        measured = [run_setting(svc, servers, users_count, 10 * users_count, None, False, "capacity")
                                    for _ in range(2)]
                        capacities[key] = max(m["answered_per_s"] or 0 for m in measured)
                        if not capacities[key]:
                            raise RuntimeError(f"{key}: no answer in the capacity runs: {measured}")
                        say(f"{key}: capacity {capacities[key]:,.0f} answers/s",
                            *(m["flags"] for m in measured if m["flags"]))
                    for s, n in itertools.product(group, range(runs)):
                        rate = (round(float(s.pace[1:]) * capacities[key]) if s.pace.startswith("x")
                                else int(s.pace[:-2]))
                        figures = run_setting(svc, servers, users_count, stock, rate, s.mode == "fresh", s.label)
                        order = figures["service_order"]
                        say(f"{s.label} #{n + 1}: {rate}/s, {figures['early_won']} of {stock} to the earliest, "
                            f"last winner #{figures['last_winner_rank']}; by the service's stamps "
                            f"{order['refused_ahead']} refused ahead (the earliest {order['max_lead_ms']} ms)",
                            *figures["flags"])
                        results.append((s, figures))
    return capacities, results


def fmt(value, spec=",.0f"):
    return "-" if value is None else format(value, spec)


def report(capacities, results, users_count, stock, argv):
    lines = [
        f"Measured {dt.datetime.now():%Y-%m-%d %H:%M} with `{' '.join(['python -m loadtest.bench_fair', *argv])}`: "
        f"{users_count:,} users, each one issue request on a connection of its own, a stock of N = {stock}. "
        "Rank: the order the users' turns came (pooled: the order written; fresh: the order their "
        "connects started); a fresh request is written once connected. Setting: Redis / workers per "
        f"host / hosts (the second's clock {CLOCK_SHIFT:+} s) / connections / pace (xK: K times the capacity).",
        "", f"Machine: {machine().replace('wrk', 'the client')}.", "",
        *(["Capacity (pooled, unpaced, a stock that never sells out; best of two): "
           + ", ".join(f"{k} {v:,.0f} answers/s" for k, v in capacities.items()) + ".", ""] if capacities else []),
        "| setting | rate/s | written/s (max lag ms) | answers | to the N earliest | of the N earliest "
        f"refused SOLD_OUT | last winner's rank | SOLD_OUT written >= {LEAD_MS} ms before the last winner "
        "(max lead ms) | p50 / p99 ms | a winner's p50 ms | answered/s | web CPU us a request | flags |",
        "| --- | ---: | ---: | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | --- |",
    ]
    for s, f in results:
        lines.append(
            f"| {s.label} | {f['rate']:,} | {fmt(f['written_per_s'])} ({fmt(f.get('writer_max_lag_ms'), '.1f')}) "
            f"| {', '.join(f'{k} {v}' for k, v in f['outcomes'].items())} | {f['early_won']} "
            f"({fmt(f['early_share'], '.1%')}; by write {f['early_written_won']}) | {f['early_sold_out']} | {fmt(f['last_winner_rank'])} "
            f"| {f['refused_early']} ({fmt(f['max_lead_ms'])}) | {fmt(f['p50_ms'])} / {fmt(f['p99_ms'])} "
            f"| {fmt(f['win_p50_ms'])} | {fmt(f['answered_per_s'])} | {fmt(f['web_cpu_us'])} "
            f"| {'; '.join(f['flags']) or 'ok'} |")
    figures = {"users": users_count, "stock": stock, "capacity": capacities,
               "runs": [{"setting": s.label, **s._asdict(), **f} for s, f in results]}
    return "\n".join(lines) + "\n\n" + json.dumps(figures)


def main():
    def items(kind):
        return lambda text: [kind(x) for x in text.split(",") if x]

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--users", type=int, default=3000)
    parser.add_argument("--stock", type=int, default=500)
    parser.add_argument("--order", type=items(str), default=["off", "on"],
                        help="ARRIVAL_ORDER of the servers: off (as before), on")
    parser.add_argument("--workers", type=items(int), default=[2, 4], help="web workers per host, e.g. 2,4")
    parser.add_argument("--redis", type=items(str), default=["single", "cluster"])
    parser.add_argument("--modes", type=items(str), default=["pooled", "fresh"])
    parser.add_argument("--hosts", type=items(int), default=[1, 2])
    parser.add_argument("--multiples", type=items(float), default=[2, 5], help="paces, times the capacity")
    parser.add_argument("--rate", type=items(int), default=[], help="paces in requests/s instead of --multiples")
    parser.add_argument("--runs", type=int, default=1, help="runs of each setting")
    parser.add_argument("--only", type=items(str), default=["*"],
                        help="settings whose label matches one of these patterns, e.g. 'single/w2/h1/*'")
    args = parser.parse_args()
    if not set(args.redis) <= {"single", "cluster"} or not set(args.modes) <= {"pooled", "fresh"} \
            or not set(args.hosts) <= {1, 2} or not set(args.order) <= {"on", "off"}:
        parser.error("--redis single,cluster; --order off,on; --modes pooled,fresh; --hosts 1,2")
    paces = [f"{r}/s" for r in args.rate] or [f"x{m:g}" for m in args.multiples]
    settings = [s for s in (Setting(r, o, w, h, m, p) for r in args.redis for w in args.workers
                            for h in args.hosts for o in args.order for m in args.modes for p in paces)
                if any(fnmatch.fnmatchcase(s.label, pattern) for pattern in args.only)]
    if not settings:
        parser.error("no setting matches --only")
    os.makedirs(os.path.join(ROOT, "reports"), exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="bench-fair-") as folder:
        capacities, results = bench(settings, args.users, args.stock, args.runs, folder)
    text = report(capacities, results, args.users, args.stock, sys.argv[1:])
    with open(os.path.join(ROOT, "reports", "bench-fair.md"), "w") as f:
        f.write(text + "\n")
    print(text)


if __name__ == "__main__":
    main()
