"""Benchmark the write-behind: flush rate into the database, and flush lag during a flood.

  (1) rate: fill the outbox streams of a campaign with ROWS real claims (claim.lua, batched),
      then time one Flusher draining them into the database (batched executemany, one commit
      per round, about FLUSH_BATCH rows per stream and round); with --flushers 1,2,4, as many
      Flushers at once (each in a process of its own, consumers of one group, as the flush jobs
      of that many schedulers), a fresh campaign for each count.
  (2) lag: gunicorn (-k gevent -w 2) and the scheduler (`flask jobs run`, default intervals)
      while wrk floods a campaign of STOCK coupons with distinct users; the outbox backlog and
      the age of its oldest entry are sampled every 100 ms.
  (3) with --drain N (and EVENTS_URL set): flush N claims of a fresh campaign, so that N
      coupon.issued events wait in the database, bind a quorum queue to the exchange, then time
      one events Publisher (the events job's) draining them all into it.

With EVENTS_URL set (amqp://...), the flush of (1) and (2) writes each coupon's event too.

Uses Redis db 11 and the MariaDB database `coupon_flushbench` (made anew); stops what it starts.

    python -m loadtest.flush_bench [--rows 200000] [--stock 30000] [--duration 10] [--flushers 1,2,4]
                                   [--drain 200000] [--only 1,2,3]
"""
import argparse
import multiprocessing
import os
import tempfile
import threading
import time

from redis import Redis

from coupon import db, events
from coupon.flusher import Flusher
from coupon.outbox import outbox_stats
from coupon.reconcile import mysql_tickets
from coupon.redis_state import Layout, issued_in_redis
from coupon.scripts import claim_args
from loadtest import bench
from loadtest.harness import RedisTarget, Scheduler, open_campaign

ROOT = bench.ROOT
REDIS_URL = os.environ.get("FLUSH_BENCH_REDIS_URL", "redis://127.0.0.1:6379/11")
DATABASE_URL = os.environ.get("FLUSH_BENCH_DATABASE_URL",
                              "mysql+pymysql://root@127.0.0.1:3306/coupon_flushbench")


def fill_outbox(svc, campaign_id, rows):
    """Claim serials 1..rows for users u1..: the same script and entries as real issuing, 500
    claims a call. Return [(claims, seconds)] of each call, in order."""
    keys = svc.keys(campaign_id)
    per_shard = {}
    for serial in range(1, rows + 1):
        user = f"u{serial}"
        per_shard.setdefault(keys.shard_of(user), []).append((user, serial))
    layout = Layout.of(svc.redis.hgetall(keys.meta))
    calls = []
    for k, claims in per_shard.items():
        shard = keys.shard(k)
        for i in range(0, len(claims), 500):
            part = claims[i:i + 500]
            started = time.perf_counter()
            args = claim_args(campaign_id, 0, 10, layout.epoch,  # rate limit off
                              [(user, serial, svc.signer.ticket_code(campaign_id, serial))
                               for user, serial in part])
            buckets = [shard.bucket(keys.bucket_of(user, layout.buckets)) for user, _ in part]
            svc.redis.run(svc.scripts.claim, shard.claim_keys(0, buckets), args)
            calls.append((len(part), time.perf_counter() - started))
    return calls


def flush_rate(svc, rows, flushers=1):
    campaign_id = open_campaign(svc, rows, f"flush rate x{flushers}")
    fill_outbox(svc, campaign_id, rows)
    if flushers == 1:
        started = time.perf_counter()
        moved = Flusher(svc, "bench").flush([campaign_id])
        seconds = time.perf_counter() - started
    else:
        moved, seconds = flush_in_processes(campaign_id, flushers)
    assert moved == rows, (moved, rows)  # each row acknowledged by exactly one of them
    assert len(mysql_tickets(svc.engine, campaign_id)) == rows
    return {"rows": moved, "seconds": seconds, "rows_per_s": moved / seconds}


def flush_in_processes(campaign_id, flushers):
    """Drain the campaign's outbox with `flushers` processes at once, each a Flusher (a consumer
    of its own) started together once all are ready; return (rows they moved, seconds from the
    start to the last one's end)."""
    spawn = multiprocessing.get_context("spawn")
    ready, done = spawn.Barrier(flushers + 1), spawn.Queue()
    procs = [spawn.Process(target=flush_in_child, args=(campaign_id, f"bench-{i}", ready, done))
             for i in range(flushers)]
    for proc in procs:
        proc.start()
    try:
        ready.wait(timeout=60)  # all released at once
        started = time.perf_counter()
        moved = sum(done.get(timeout=600) for _ in procs)
        seconds = time.perf_counter() - started
    finally:
        for proc in procs:
            proc.join(timeout=30)
            if proc.is_alive():
                proc.kill()
    return moved, seconds


def flush_in_child(campaign_id, consumer, ready, done):
    svc, _ = bench.bench_service(DATABASE_URL, RedisTarget(REDIS_URL))
    flusher = Flusher(svc, consumer)
    ready.wait(timeout=60)
    done.put(flusher.flush([campaign_id]))


def flush_lag(svc, env, stock, seconds):
    campaign_id = open_campaign(svc, stock, "flush lag")
    keys = svc.keys(campaign_id)
    tmp = tempfile.mkdtemp(prefix="flushbench-")
    tokens = bench.write_tokens(svc.signer, "lag", stock + 20_000, tmp)
    server = bench.start_server(env, "app:app", "flush-bench-web")
    jobs = Scheduler(env, log_path=os.path.join(ROOT, "reports", "flush-bench-jobs.log"))
    samples, done = [], threading.Event()

    def sample():
        while not done.is_set():
            samples.append(outbox_stats(svc.redis, keys))
            time.sleep(0.1)

    sampler = threading.Thread(target=sample)
    try:
        time.sleep(2)  # the scheduler takes the lead
        sampler.start()
        result = bench.wrk(server.url, f"/api/v1/campaigns/{campaign_id}/issue", tokens, seconds, 100)
        ended = time.monotonic()
        while outbox_stats(svc.redis, keys)[0] and time.monotonic() - ended < 60:
            time.sleep(0.05)
        drained_after = time.monotonic() - ended
    finally:
        done.set()
        if sampler.is_alive():
            sampler.join()
        server.stop()
        jobs.stop(30)
    issued = issued_in_redis(svc.redis, keys)
    return {"rps": result["rps"], "issued": issued, "max_backlog": max(b for b, _ in samples),
            "max_lag_s": max(lag for _, lag in samples), "drained_after_s": drained_after,
            "rows": len(mysql_tickets(svc.engine, campaign_id))}


DRAIN_QUEUE = "flush-bench-events"


def drain_rate(svc, rows):
    """Flush `rows` claims with events on, then time a Publisher sending their events to a
    quorum queue bound to the exchange; return the figures (the queue is deleted after)."""
    import pika

    with svc.engine.begin() as conn:  # the events (1) and (2) wrote: only this part's are timed
        for table in db.metadata.sorted_tables:
            if table.name in ("event_outbox", "issued_events"):
                conn.execute(table.delete())
    campaign_id = open_campaign(svc, rows, "events drain")
    fill_outbox(svc, campaign_id, rows)
    assert Flusher(svc, "bench").flush([campaign_id]) == rows
    waiting = events.pending(svc.engine)[0]
    connection = pika.BlockingConnection(pika.URLParameters(svc.config["EVENTS_URL"]))
    channel = connection.channel()
    try:
        channel.exchange_declare(events.EXCHANGE, "topic", durable=True)
        channel.queue_declare(DRAIN_QUEUE, durable=True, arguments={"x-queue-type": "quorum"})
        channel.queue_purge(DRAIN_QUEUE)
        channel.queue_bind(DRAIN_QUEUE, events.EXCHANGE, "#")
        publisher = events.Publisher(svc.engine, svc.config)
        started = time.perf_counter()
        try:
            sent = publisher.publish()
        finally:
            publisher.close()
        seconds = time.perf_counter() - started
        left = events.pending(svc.engine)[0]
        got = channel.queue_delete(DRAIN_QUEUE).method.message_count
    finally:
        connection.close()
    assert left == 0 and got >= waiting, (left, got, waiting)
    return {"events": sent, "seconds": seconds, "per_s": sent / seconds, "queued": got}


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", type=int, default=200_000)
    parser.add_argument("--stock", type=int, default=30_000)
    parser.add_argument("--duration", type=int, default=10)
    parser.add_argument("--flushers", default="1",
                        help="flushers at once for (1), comma-separated counts, each measured: 1,2,4")
    parser.add_argument("--drain", type=int, default=0,
                        help="(3): events to drain, with EVENTS_URL set (0: none)")
    parser.add_argument("--only", default="1,2,3", help="which parts to run: 1,2,3")
    args = parser.parse_args()
    counts = [int(n) for n in args.flushers.split(",")]
    parts = {int(n) for n in args.only.split(",")}

    bench.need_wrk()
    os.makedirs(os.path.join(ROOT, "reports"), exist_ok=True)
    svc, env = bench.prepare(DATABASE_URL, REDIS_URL)
    print(f"events: {'on' if events.enabled(svc.config) else 'off'}", flush=True)
    first = None
    for n in counts if 1 in parts else ():
        rate = flush_rate(svc, args.rows, n)
        first = first or rate["rows_per_s"]
        print(f"(1) flush rate, {n} flusher{'s' if n > 1 else ''}: {rate['rows']} rows in "
              f"{rate['seconds']:.2f} s = {rate['rows_per_s']:,.0f} rows/s "
              f"(x{rate['rows_per_s'] / first:.2f} of {counts[0]})", flush=True)
    if 2 in parts:
        lag = flush_lag(svc, env, args.stock, args.duration)
        print(f"(2) during a flood of {lag['rps']:,.0f} req/s ({lag['issued']} issued): max backlog "
              f"{lag['max_backlog']}, max flush lag {lag['max_lag_s']:.2f} s, drained "
              f"{lag['drained_after_s']:.2f} s after the flood ended", flush=True)
    if 3 in parts and args.drain:
        if not events.enabled(svc.config):
            raise SystemExit("--drain needs EVENTS_URL (amqp://...)")
        drain = drain_rate(svc, args.drain)
        print(f"(3) events drain: {drain['events']:,} events confirmed in {drain['seconds']:.2f} s = "
              f"{drain['per_s']:,.0f} events/s (the queue got {drain['queued']:,})")
    Redis.from_url(REDIS_URL).flushdb()


if __name__ == "__main__":
    main()
