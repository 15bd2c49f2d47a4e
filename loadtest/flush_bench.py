"""Benchmark the write-behind: flush rate into the database, and flush lag during a flood.

  (1) rate: fill the outbox streams of a campaign with ROWS real claims (claim.lua, batched),
      then time one Flusher draining them into the database (batched executemany, one commit
      per round, FLUSH_BATCH entries per stream and round).
  (2) lag: gunicorn (-k gevent -w 2) and the scheduler (`flask jobs run`, default intervals)
      while wrk floods a campaign of STOCK coupons with distinct users; the outbox backlog and
      the age of its oldest entry are sampled every 100 ms.

Uses Redis db 11 and the MariaDB database `coupon_flushbench` (made anew); stops what it starts.

    python -m loadtest.flush_bench [--rows 200000] [--stock 30000] [--duration 10]
"""
import argparse
import os
import subprocess
import sys
import tempfile
import threading
import time

from loadtest import bench

ROOT = bench.ROOT
REDIS_URL = os.environ.get("FLUSH_BENCH_REDIS_URL", "redis://127.0.0.1:6379/11")
DATABASE_URL = os.environ.get("FLUSH_BENCH_DATABASE_URL",
                              "mysql+pymysql://root@127.0.0.1:3306/coupon_flushbench")


def fill_outbox(svc, campaign_id, rows):
    """Claim serials 1..rows for users u1..: the same script and entries as real issuing."""
    from coupon.keys import CampaignKeys

    keys = CampaignKeys(campaign_id, svc.config["CLAIM_SHARDS"])
    per_shard = {}
    for serial in range(1, rows + 1):
        user = f"u{serial}"
        per_shard.setdefault(keys.shard_of(user), []).append((user, serial))
    for k, claims in per_shard.items():
        shard = keys.shard(k)
        for i in range(0, len(claims), 500):
            args = [campaign_id, 0, 10]  # rate limit off
            for user, serial in claims[i:i + 500]:
                args += [user, serial, svc.signer.ticket_code(campaign_id, serial)]
            svc.scripts.claim(keys=[*shard.all(), shard.rate(0)], args=args)


def flush_rate(svc, ops, rows):
    from coupon.outbox import Flusher

    campaign_id = ops.create_campaign(svc, "flush rate", rows)
    ops.open_campaign(svc, campaign_id)
    fill_outbox(svc, campaign_id, rows)
    started = time.perf_counter()
    moved = Flusher(svc, "bench").flush([campaign_id])
    seconds = time.perf_counter() - started
    assert moved == rows, (moved, rows)
    return {"rows": moved, "seconds": seconds, "rows_per_s": moved / seconds}


def flush_lag(svc, ops, env, stock, seconds):
    from coupon.keys import CampaignKeys
    from coupon.outbox import outbox_stats

    campaign_id = ops.create_campaign(svc, "flush lag", stock)
    ops.open_campaign(svc, campaign_id)
    keys = CampaignKeys(campaign_id, svc.config["CLAIM_SHARDS"])
    tmp = tempfile.mkdtemp(prefix="flushbench-")
    tokens = bench.write_tokens(svc.signer, "lag", stock + 20_000, tmp)
    server = bench.Server("app:app", env, os.path.join(ROOT, "reports", "flush-bench-web.log"))
    jobs_log = open(os.path.join(ROOT, "reports", "flush-bench-jobs.log"), "w")
    jobs = subprocess.Popen([sys.executable, "-m", "flask", "jobs", "run"], cwd=ROOT,
                            env=dict(env, FLASK_APP="app.py"), stdout=jobs_log, stderr=subprocess.STDOUT)
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
        jobs.terminate()
        jobs.wait(30)
        jobs_log.close()
    issued = ops.issued_in_redis(svc, keys)
    return {"rps": result["rps"], "issued": issued, "max_backlog": max(b for b, _ in samples),
            "max_lag_s": max(lag for _, lag in samples), "drained_after_s": drained_after,
            "rows": len(ops.mysql_tickets(svc.engine, campaign_id)) if hasattr(ops, "mysql_tickets") else None}


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", type=int, default=200_000)
    parser.add_argument("--stock", type=int, default=30_000)
    parser.add_argument("--duration", type=int, default=10)
    args = parser.parse_args()

    from redis import Redis

    from coupon import campaigns as ops, create_app
    from coupon.db import init_db

    bench.need_wrk()
    os.makedirs(os.path.join(ROOT, "reports"), exist_ok=True)
    Redis.from_url(REDIS_URL).flushdb()
    bench.DATABASE_URL = DATABASE_URL
    bench.fresh_database()
    app = create_app(dict(SECRET_KEY=bench.SECRET, DATABASE_URL=DATABASE_URL, REDIS_URL=REDIS_URL))
    svc = app.extensions["coupon"]
    init_db(svc.engine)
    env = dict(os.environ, DATABASE_URL=DATABASE_URL, REDIS_URL=REDIS_URL, SECRET_KEY=bench.SECRET,
               COUPON_SETTINGS=os.path.join(ROOT, "loadtest", "no-settings-file.py"), PYTHONPATH=ROOT)
    rate = flush_rate(svc, ops, args.rows)
    print(f"(1) flush rate: {rate['rows']} rows in {rate['seconds']:.2f} s = {rate['rows_per_s']:,.0f} rows/s")
    lag = flush_lag(svc, ops, env, args.stock, args.duration)
    print(f"(2) during a flood of {lag['rps']:,.0f} req/s ({lag['issued']} issued): max backlog "
          f"{lag['max_backlog']}, max flush lag {lag['max_lag_s']:.2f} s, drained "
          f"{lag['drained_after_s']:.2f} s after the flood ended")
    Redis.from_url(REDIS_URL).flushdb()


if __name__ == "__main__":
    main()
