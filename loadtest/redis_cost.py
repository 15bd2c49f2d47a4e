"""Redis's CPU per claim, apart from everything else (issue 35: at most 15 us a coupon): claims
sent straight through the workers' ClaimSender (claim.lua, --per-call claims a call, --calls-a-trip
calls a round trip), then flushed by one flusher.Flusher; each part's CPU is read
from the private redis-server's INFO before and after. No web server, no HTTP, no other client:
the figures move only with what Redis does per claim (compare two checkouts: run it in each).

    python -m loadtest.redis_cost [--claims 60000] [--shards 12] [--per-call 1,4,16]
                                  [--calls-a-trip 1,16] [--runs 3]
"""
import argparse
import tempfile

from redis import Redis

from coupon import create_app
from coupon import db as dbm
from coupon.flusher import Flusher
from loadtest.harness import RedisServer, open_campaign


def redis_cpu(client):
    info = client.info("cpu")
    return info["used_cpu_user"] + info["used_cpu_sys"]


def one_run(claims, shards, per_call, calls_a_trip):
    """(us of Redis CPU per claim for the claims, for their flush)."""
    folder = tempfile.mkdtemp(prefix="redis-cost-")
    server = RedisServer(folder, "no file")
    try:
        app = create_app(dict(SECRET_KEY="redis-cost" * 4, DATABASE_URL=f"sqlite:///{folder}/c.db",
                              REDIS_URL=server.url, CLAIM_SHARDS=shards))
        svc = app.extensions["coupon"]
        dbm.metadata.create_all(svc.engine)
        campaign_id = open_campaign(svc, claims, "redis-cost")
        keys, send = svc.keys(campaign_id), svc.issuer.admit(campaign_id).claims._batcher._send
        code_of = svc.signer.ticket_code
        by_shard = {}
        for i in range(claims):
            user = f"u{i}"
            by_shard.setdefault(keys.shard_of(user), []).append(
                (keys.shard_of(user), user, i + 1, code_of(campaign_id, i + 1)))
        calls = [group[i:i + per_call] for group in by_shard.values() for i in range(0, len(group), per_call)]
        client = Redis.from_url(server.url)
        before = redis_cpu(client)
        for i in range(0, len(calls), calls_a_trip):
            replies = send([claim for call in calls[i:i + calls_a_trip] for claim in call])
            assert all(not isinstance(r, Exception) and r.outcome.name == "NEW" for r in replies), replies
        claimed = redis_cpu(client)
        moved = Flusher(svc, "redis-cost").flush()
        assert moved == claims, moved
        flushed = redis_cpu(client)
        svc.engine.dispose()
        return 1e6 * (claimed - before) / claims, 1e6 * (flushed - claimed) / claims
    finally:
        server.stop()


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--claims", type=int, default=60_000)
    parser.add_argument("--shards", type=int, default=12, help="CLAIM_SHARDS")
    parser.add_argument("--per-call", default="1,4,16", help="claims a claim.lua call carries")
    parser.add_argument("--calls-a-trip", default="1,16", help="claim.lua calls a round trip carries")
    parser.add_argument("--runs", type=int, default=3)
    args = parser.parse_args()
    print(f"Redis CPU per claim, us ({args.claims:,} claims a run, {args.shards} shards; median of "
          f"{args.runs} runs, each run's in brackets)")
    print(f"{'claims a call':>14} {'calls a trip':>13} {'claim.lua':>10} {'flush':>8} {'both':>8}")
    for calls_a_trip in [int(n) for n in args.calls_a_trip.split(",")]:
        for per_call in [int(n) for n in args.per_call.split(",")]:
            runs = [one_run(args.claims, args.shards, per_call, calls_a_trip) for _ in range(args.runs)]
            claim, flush = (sorted(part)[len(part) // 2] for part in zip(*runs))
            both = sorted(c + f for c, f in runs)[len(runs) // 2]
            print(f"{per_call:>14} {calls_a_trip:>13} {claim:>10.2f} {flush:>8.2f} {both:>8.2f}   "
                  + " ".join(f"[{c:.2f} + {f:.2f}]" for c, f in runs), flush=True)


if __name__ == "__main__":
    main()
