"""What live campaigns cost while nobody asks for them: part of `make bench-scale`, or
`python -m loadtest.bench_idle [--campaigns 1000] [--seconds 60]`.

C campaigns of 20 coupons, open; each is asked by 5 users through HTTP (so both gunicorn workers
know it and its claims are flushed), then nobody asks for `seconds` while a real scheduler
(`flask jobs run`, default intervals) and the 2 workers run. Measured over that time, after a
warm-up: the Redis commands per second (INFO's total_commands_processed, less this benchmark's
own 2 INFO calls) and the scheduler's CPU (utime + stime of its /proc stat). A private
redis-server, so that nothing else counts.
"""
import argparse
import http.client
import os
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor

from redis import Redis

from coupon.keys import SCHEDULER_LEADER
from coupon.outbox import outbox_stats
from loadtest import bench
from loadtest.harness import Gunicorn, RedisServer, Scheduler, open_campaign, users, wait_until

DATABASE_URL = os.environ.get("IDLE_BENCH_DATABASE_URL",
                              "mysql+pymysql://root@127.0.0.1:3306/coupon_idlebench")
USERS_PER_CAMPAIGN, WARM_UP = 5, 15.0


def issue(port, campaign_id, token):
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    try:
        conn.request("POST", f"/api/v1/campaigns/{campaign_id}/issue",
                     headers={"Authorization": f"Bearer {token}"})
        return conn.getresponse().status
    finally:
        conn.close()


def cpu_seconds(pid):
    fields = open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")  # utime, stime


def measure_idle(campaigns, seconds):
    """{figure: value} of `campaigns` live campaigns nobody asks for, over `seconds`."""
    with tempfile.TemporaryDirectory(prefix="bench-idle-") as folder:
        redis = RedisServer(folder, "no file")
        started = []
        try:
            svc, env = bench.prepare(DATABASE_URL, redis.url)
            ids = [open_campaign(svc, 20, f"idle {i}") for i in range(campaigns)]
            server = Gunicorn(env, workers=2)
            started.append(server)
            scheduler = Scheduler(env)
            started.append(scheduler)
            people = users(svc.signer, USERS_PER_CAMPAIGN)
            with ThreadPoolExecutor(32) as pool:
                answers = list(pool.map(lambda call: issue(server.port, *call),
                                        [(c, token) for c in ids for _, token in people]))
            assert answers.count(201) == len(answers), "every user should get a coupon"
            wait_until(lambda: all(outbox_stats(svc.redis, svc.keys(c))[0] == 0 for c in ids),
                       timeout=120, what="the outbox to drain")
            raw = Redis.from_url(redis.url)
            wait_until(lambda: raw.exists(SCHEDULER_LEADER), what="the scheduler to lead")
            time.sleep(WARM_UP)  # past its first rounds, which look at every campaign once
            commands, cpu = raw.info("stats")["total_commands_processed"], cpu_seconds(scheduler.proc.pid)
            time.sleep(seconds)
            commands = raw.info("stats")["total_commands_processed"] - commands - 1
            cpu = cpu_seconds(scheduler.proc.pid) - cpu
            return {"Redis commands/s": commands / seconds, "scheduler CPU %": 100 * cpu / seconds}
        finally:
            for process in reversed(started):
                process.stop()
            redis.stop()


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--campaigns", type=int, nargs="+", default=[50, 1000])
    parser.add_argument("--seconds", type=float, default=60.0)
    args = parser.parse_args()
    for count in args.campaigns:
        figures = measure_idle(count, args.seconds)
        print(f"== {count} live campaigns, idle for {args.seconds:.0f} s: "
              + ", ".join(f"{name} {value:.1f}" for name, value in figures.items()), flush=True)


if __name__ == "__main__":
    main()
