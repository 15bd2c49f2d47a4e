"""What a big sale costs: `make bench-scale [N=1000000]` (N up to 10,000,000).

  (1) N distinct users issued a coupon each: through HTTP (wrk, 100 connections, against
      `gunicorn -k gevent app:app` with 2 workers, offered 2N users) up to HTTP_UP_TO coupons, else straight
      through claim.lua (the script and layout of real issuing, in batches of 500: this machine
      would flood 10M users through HTTP for half an hour); the coupons per second of the last
      tenth against the first; flushed into the database by the Flusher;
  (2) Redis memory per held coupon: used_memory (and MEMORY USAGE of the campaign's keys) after
      the outbox drained, less what it was before;
  (3) `flask campaign recover` after the campaign's keys are deleted (Redis lost it): seconds
      and peak RSS of the command;
  (4) `flask campaign close`: seconds and peak RSS of the command, its report;
  (5) the operators' page of the campaign, served by one gevent worker: live.json polled while
      the claims are written and flushed (as its pollers waited, and as the worker's access log
      timed its answers), history.json, and replay.json while Redis holds the campaign and
      again once it is closed, each with the longest wait of a second client.
  (6) what live campaigns cost while nobody asks for them (loadtest/bench_idle.py): Redis
      commands per second and the scheduler's CPU, with IDLE campaigns (default 1000).
  (7) with RabbitMQ at SCALE_BENCH_EVENTS_URL (default the machine's, guest/guest; "off": none):
      the coupon.issued events of (1), written by the flush and published by the events job's
      Publisher in a thread while the sale and the flush run, to a quorum queue bound to the
      exchange: events/s, and how long after the last row's commit the last was confirmed.

A redis-server of its own (or SCALE_BENCH_REDIS_URL, emptied) and the MariaDB database
`coupon_scalebench` (made anew); prints a table.
"""
import argparse
import contextlib
import http.client
import json
import os
import signal
import subprocess
import sys
import tempfile
import threading
import time

from redis import Redis

from coupon import events, redis_state
from coupon.flusher import Flusher
from coupon.outbox import outbox_stats
from coupon.queries import count_rows
from loadtest import bench
from loadtest.bench_idle import measure_idle
from loadtest.flush_bench import fill_outbox
from loadtest.harness import ROOT, Gunicorn, RedisServer, open_campaign

REDIS_URL = os.environ.get("SCALE_BENCH_REDIS_URL")  # unset: a redis-server of its own
DATABASE_URL = os.environ.get("SCALE_BENCH_DATABASE_URL",
                              "mysql+pymysql://root@127.0.0.1:3306/coupon_scalebench")
FLASK = os.path.join(ROOT, ".venv", "bin", "flask")
IDLE_SECONDS = 60.0
HTTP_UP_TO = 1_000_000  # coupons issued through HTTP; a bigger sale goes through claim.lua
EVENTS_URL = os.environ.get("SCALE_BENCH_EVENTS_URL", "amqp://guest:guest@127.0.0.1:5672/")
EVENTS_QUEUE = "bench-scale-events"  # a quorum queue bound to the exchange, as a consumer's


# runs a command and prints its peak RSS (KB) last on stderr. A child's peak counts the RSS of
# the process it was forked from (Linux), so the command is forked from this small one, never
# from the benchmark, which holds the claims it made
PEAK_RSS = ("import os, subprocess, sys; p = subprocess.Popen(sys.argv[1:]); "
            "_, status, usage = os.wait4(p.pid, 0); print(usage.ru_maxrss, file=sys.stderr); "
            "sys.exit(os.waitstatus_to_exitcode(status))")


def flask(env, *args):
    """Run `flask ARGS` as an operator would; return (seconds, its peak RSS in MB, its output)."""
    started = time.perf_counter()
    done = subprocess.run([sys.executable, "-c", PEAK_RSS, FLASK, *args], cwd=ROOT, env=env,
                          capture_output=True, text=True)
    seconds = time.perf_counter() - started
    if done.returncode:
        raise SystemExit(f"flask {' '.join(args)} failed:\n{done.stdout}{done.stderr}")
    return seconds, int(done.stderr.split()[-1]) / 1024, done.stdout


# polls GET http://127.0.0.1:PORT/PATH every INTERVAL s (0: back to back) until its stdin closes,
# passing the previous answer's `now` as `since` as the page does; prints each poll's start
# (time.monotonic(), the same clock in every process), seconds, and 0 if it answered from rows
# read before it (live.json's rows_read_now), else 1. A process of its own: in the
# benchmark's, a poll would wait for the GIL the claims hold
POLLER = """
import http.client, json, sys, threading, time
port, path, interval = int(sys.argv[1]), sys.argv[2], float(sys.argv[3])
done = threading.Event()
threading.Thread(target=lambda: (sys.stdin.read(), done.set()), daemon=True).start()
conn, since = http.client.HTTPConnection("127.0.0.1", port, timeout=120), None
while not done.is_set():
    started, started_at = time.perf_counter(), time.monotonic()
    conn.request("GET", path + (f"&since={since}" if since else ""))
    answer = conn.getresponse()
    body = answer.read()
    seconds = time.perf_counter() - started
    assert answer.status == 200, (answer.status, body)
    state = json.loads(body) if "?" in path else {}
    since = state.get("now")
    print(started_at, seconds, int(state.get("rows_read_now", True)), flush=True)
    done.wait(max(0.0, interval - seconds))
"""


def ops_page(env, campaign_id, label, during=None):
    """The operators' page of the campaign, served by one gevent worker (a slow answer makes
    every other request to it wait): live.json polled every 0.5 s (two pages open) while
    `during()` runs; then history.json once and replay.json twice, while a second client asks
    /healthz back to back: its longest wait is about the longest time the worker's loop was held
    (gevent's monitor thread would say it too, but each report it writes walks every object of
    the worker, holding the loop far longer than what it reports). Returns the rows of the table."""
    os.makedirs(os.path.join(ROOT, "reports"), exist_ok=True)
    # its access log gives each answer's own time (%(D)s µs), apart from the wait for a core
    server = Gunicorn({**env, "ACCESS_LOG": "-", "GUNICORN_CMD_ARGS": "--access-logformat '%(U)s %(D)s'"},
                      workers=1, private_metrics=True,
                      log_path=os.path.join(ROOT, "reports", "bench-scale-ops.log"))

    def poll(path, interval):
        # into a file: a pipe nobody reads until the end fills up (64 KB, two seconds of /healthz
        # back to back) and stops the poller
        out = tempfile.TemporaryFile("w+")
        poller = subprocess.Popen([sys.executable, "-c", POLLER, str(server.port), path, str(interval)],
                                  stdin=subprocess.PIPE, stdout=out, text=True)
        poller.out = out
        return poller

    def stop(poller):
        poller.communicate("")
        if poller.returncode:
            raise SystemExit(f"polling the operators' page failed (exit {poller.returncode})")
        poller.out.seek(0)
        return [tuple(map(float, line.split())) for line in poller.out.read().splitlines()]

    def get(path):
        conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=120)
        started = time.perf_counter()
        conn.request("GET", path)
        answer = conn.getresponse()
        body = answer.read()
        seconds = time.perf_counter() - started
        conn.close()
        if answer.status != 200:
            raise SystemExit(f"GET {path}: {answer.status} {body[:200]}")
        return seconds, json.loads(body)

    def ms(seconds):
        return f"{seconds * 1000:.0f} ms"

    rows, base = [], f"/ops/campaigns/{campaign_id}"
    try:
        get(f"/ops/live.json?campaign={campaign_id}")  # a worker long up: connected to both stores
        if during:
            live = poll(f"/ops/live.json?campaign={campaign_id}", 0.5)
            during()
            answers = stop(live)
            polls = sorted(seconds for _, seconds, _ in answers)
            earlier = sum(not read_now for _, _, read_now in answers)
            served = sorted(served_seconds(server.log_path, "/ops/live.json")[1:])  # not the first get
            rows.append(("ops live.json, during the sale", f"median {ms(polls[len(polls) // 2])}, "
                         f"max {ms(polls[-1])}", f"{len(polls)} polls, {earlier} from rows read "
                         f"before them; in the worker: median "
                         f"{ms(served[len(served) // 2])}, max {ms(served[-1])}"))
            seconds, history = get(f"{base}/history.json")
            rows.append(("ops history.json", ms(seconds), f"{history['rows']:,} rows"))
        prober = poll("/healthz", 0)
        time.sleep(1)  # the prober's own pace first
        asked = time.monotonic()
        (first, replay), (second, _) = get(f"{base}/replay.json"), get(f"{base}/replay.json")
        answered = time.monotonic()
        time.sleep(1)
        probes = stop(prober)
        waits = sorted(s for t, s, _ in probes if t + s > asked and t < answered)  # overlapping the replays
        around = sorted(s for t, s, _ in probes if not (t + s > asked and t < answered))
        rows.append((f"ops replay.json, {label}", f"{ms(first)}, then {ms(second)}",
                     f"{replay['rows']:,} rows"))
        rows.append(("  /healthz meanwhile", f"median {ms(waits[len(waits) // 2])}, max {ms(waits[-1])}"
                     if waits else "none asked", f"{len(waits)} asked back to back; "
                     f"in the 2 s around: max {ms(around[-1])}"))
    finally:
        server.stop()
    return rows


def served_seconds(log_path, path):
    """Seconds of each answer to `path` so far, as the worker's access log timed them (from
    reading the request to its last byte written)."""
    with open(log_path) as log:
        return [int(line.split()[1]) / 1e6 for line in log if line.startswith(path + " ")]


def campaign_bytes(svc, raw, keys):
    """MEMORY USAGE of every key of the campaign (SAMPLES 0: every element of each counted); its
    claims buckets, and how many of them Redis keeps as a plain hash rather than a listpack."""
    buckets = redis_state.Layout.of(svc.redis.hgetall(keys.meta)).buckets
    bucket_keys = [shard.bucket(i) for shard in keys.all_shards() for i in range(buckets)]
    sizes = pipelined(raw, keys.every_key(buckets), lambda pipe, key: pipe.memory_usage(key, samples=0))
    encodings = pipelined(raw, bucket_keys, lambda pipe, key: pipe.object("encoding", key))
    return sum(size or 0 for size in sizes), len(bucket_keys), sum(e != b"listpack" for e in encodings)


def pipelined(raw, keys, command, per_round=1000):
    """command(pipeline, key)'s replies for each key, per_round keys a round trip."""
    for first in range(0, len(keys), per_round):
        pipe = raw.pipeline(transaction=False)
        for key in keys[first:first + per_round]:
            command(pipe, key)
        yield from pipe.execute()


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--n", type=int, default=1_000_000)
    parser.add_argument("--idle", type=int, default=1000, help="live campaigns of (6); 0: skip it")
    args = parser.parse_args()
    if not 1000 <= args.n <= 10_000_000:
        raise SystemExit("N is from 1000 to 10,000,000")
    with tempfile.TemporaryDirectory(prefix="bench-scale-") as folder:
        # a redis-server of its own, unless one is named: used_memory counts this campaign only
        server = None if REDIS_URL else RedisServer(folder, "no file")
        try:
            big_sale(args.n, REDIS_URL or server.url, folder)
        finally:
            if server:
                server.stop()
    if args.idle:
        figures = measure_idle(args.idle, IDLE_SECONDS)
        print(f"== bench-scale: {args.idle:,} live campaigns nobody asks for, over {IDLE_SECONDS:.0f} s")
        for what, figure in figures.items():
            print(f"  {what:<30} {figure:.1f}")


class EventsRun:
    """(7): the events job's Publisher in a thread, publishing while the sale and the flush run."""

    def __init__(self, svc):
        with self.channel() as channel:
            channel.exchange_declare(events.EXCHANGE, "topic", durable=True)
            channel.queue_declare(EVENTS_QUEUE, durable=True, arguments={"x-queue-type": "quorum"})
            channel.queue_purge(EVENTS_QUEUE)
            channel.queue_bind(EVENTS_QUEUE, events.EXCHANGE, "#")
        self.svc, self.sent, self.stop = svc, 0, threading.Event()
        self.publisher = events.Publisher(svc.engine, svc.config)
        self.thread = threading.Thread(target=self.run, daemon=True)
        self.thread.start()

    @staticmethod
    @contextlib.contextmanager
    def channel():
        import pika

        connection = pika.BlockingConnection(pika.URLParameters(EVENTS_URL))
        try:
            yield connection.channel()
        finally:
            connection.close()

    def run(self):
        while not self.stop.is_set():
            try:
                self.sent += self.publisher.publish()
            except events.BrokerUnavailable as e:
                print(f"events: {e}", file=sys.stderr)
            time.sleep(self.svc.config["EVENTS_INTERVAL"])

    def finish(self, flush_started, last_commit):
        """Wait until every event is confirmed; return the row of the table. Deletes the queue."""
        while events.pending(self.svc.engine)[0]:
            time.sleep(0.25)  # a count of up to N rows each time
        done = time.perf_counter()
        self.stop.set()
        self.thread.join()
        self.publisher.close()
        with self.channel() as channel:
            got = channel.queue_delete(EVENTS_QUEUE).method.message_count
        # the flush writes the events: none to publish before it starts
        return [("events confirmed by RabbitMQ", f"{done - last_commit:.1f} s after the last row's commit",
                 f"{self.sent:,} events, {self.sent / (done - flush_started):,.0f}/s from the flush's "
                 f"start to the last confirm; the quorum queue got {got:,} ({got - self.sent:,} repeats)")]


def big_sale(n, redis_url, folder):
    if EVENTS_URL != "off":
        os.environ["EVENTS_URL"] = EVENTS_URL  # the service here and the flask commands write events
    svc, env = bench.prepare(DATABASE_URL, redis_url)
    raw = Redis.from_url(redis_url)
    rows = []
    tokens = None
    if n <= HTTP_UP_TO:
        bench.need_wrk()
        # each of wrk's two threads gets N users of its own: with N in all, the faster thread ran
        # out of new users before the sale sold out and sent served ones again, so that the end
        # of the sale went at the slower thread's rate alone (BENCHMARKS.md)
        tokens = bench.write_tokens(svc.signer, "scale", 2 * n, folder)

    before = raw.info("memory")["used_memory"]
    campaign_id = open_campaign(svc, n, "scale")
    keys = svc.keys(campaign_id)

    def sale():
        events_run = EventsRun(svc) if events.enabled(svc.config) else None
        started = time.perf_counter()
        if tokens:
            http_sale(env, svc, campaign_id, n, tokens)
            tenths = issued_tenths(svc, keys, n)
            rows.append(("users through HTTP (wrk)", f"{time.perf_counter() - started:.1f} s",
                         f"coupons/s, last tenth against the first: {tenths[-1]:.2f} "
                         f"(each tenth: {' '.join(f'{r:.2f}' for r in tenths)})"))
        else:
            calls = fill_outbox(svc, campaign_id, n)
            rows.append(("claims through claim.lua", f"{time.perf_counter() - started:.1f} s",
                         f"claims/s, last tenth against the first: {tenths_ratio(calls):.2f}"))
        started, flusher = time.perf_counter(), Flusher(svc, "scale-bench")
        while outbox_stats(svc.redis, keys)[0]:
            flusher.flush([campaign_id])
        last_commit = time.perf_counter()
        rows.append(("flushed into the database", f"{last_commit - started:.1f} s",
                     f"{count_rows(svc.engine, campaign_id):,} rows"))
        if events_run:
            rows.extend(events_run.finish(started, last_commit))

    ops = ops_page(env, campaign_id, "Redis holds it", during=sale)
    used = raw.info("memory")["used_memory"] - before
    in_keys, buckets, plain = campaign_bytes(svc, raw, keys)
    rows.append(("Redis memory per held coupon", f"{used / n:.0f} B (used_memory)",
                 f"{in_keys / n:.0f} B (MEMORY USAGE of its keys; {buckets:,} claims buckets, "
                 f"{plain} not a listpack)"))

    redis_state.delete_keys(svc.redis, keys)  # Redis lost the campaign
    seconds, peak, _ = flask(env, "campaign", "recover", str(campaign_id))
    rows.append(("flask campaign recover", f"{seconds:.1f} s ({seconds / n * 1e6:.1f} s per million)",
                 f"peak RSS {peak:.0f} MB"))
    seconds, peak, out = flask(env, "campaign", "close", str(campaign_id))
    rows.append(("flask campaign close", f"{seconds:.1f} s ({seconds / n * 1e6:.1f} s per million)",
                 f"peak RSS {peak:.0f} MB"))
    report = next(line for line in out.splitlines() if line.startswith("campaign "))
    rows += ops + ops_page(env, campaign_id, "closed")

    print(f"== bench-scale: one campaign of {n:,} coupons")
    for what, figure, more in rows:
        print(f"  {what:<34} {figure:<34} {more}")
    print(f"  close's report: {report}")
    raw.flushdb()


def http_sale(env, svc, campaign_id, n, tokens):
    """Flood the campaign with the users of the token file through HTTP until it sold out."""
    server = Gunicorn(env, workers=2)
    try:
        flood = subprocess.Popen(
            ["wrk", "-t", "2", "-c", "100", "-d", f"{n // 500 + 60}s", "--timeout", "5s",
             "-s", os.path.join(ROOT, "loadtest", "tokens.lua"),
             f"{server.url}/api/v1/campaigns/{campaign_id}/issue", "--", tokens, "2"],
            stdout=subprocess.DEVNULL)
        try:
            while redis_state.issued_in_redis(svc.redis, svc.keys(campaign_id)) < n:
                if flood.poll() is not None:
                    raise SystemExit(f"wrk stopped (exit {flood.returncode}) before the sale sold out")
                time.sleep(0.2)
        finally:
            flood.send_signal(signal.SIGINT)  # wrk stops at once
            flood.wait(timeout=30)
    finally:
        server.stop()


def issued_tenths(svc, keys, n):
    """Coupons per second in each tenth of the sale, against the first, from the issued_at of the
    claims (scripts.StoredClaim: Redis's clock at each claim)."""
    at = sorted(claim.issued_at_ms for shard in keys.all_shards()
                for _, claim in redis_state.shard_claims(svc.redis, shard))
    tenth = n // 10
    rates = [tenth / max(1, at[i + tenth - 1] - at[i]) for i in range(0, tenth * 10, tenth)]
    return [rate / rates[0] for rate in rates]


def tenths_ratio(calls):
    """Claims per second in the last tenth of the claims against the first (calls: [(claims,
    seconds)] in order): 1.0 is a flat issue rate, however full the claims buckets get."""
    total, done, first, last = sum(c for c, _ in calls), 0, [0, 0.0], [0, 0.0]
    for claims, seconds in calls:
        part = first if done < total / 10 else last if done >= total * 9 / 10 else None
        if part is not None:
            part[0] += claims
            part[1] += seconds
        done += claims
    return (last[0] / last[1]) / (first[0] / first[1])


if __name__ == "__main__":
    main()
