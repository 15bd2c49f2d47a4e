"""What the operators' page shows, as the JSON it polls.

It shows the campaigns, the one selected, the health, a live sale's history, a sale's replay and
what is known of its reconciliation.

Global figures (from Redis and the database, the same whichever host answers): the campaigns,
stock and issued, outbox backlog and flush lag, leases, health. Figures of this host (summed
over its gunicorn workers, all campaigns together): answers by outcome, time in the worker,
claims flushed by a scheduler sharing its metrics folder, serials in its workers' local blocks.
The JSON carries counters; the page turns them into rates and keeps the recent history itself,
so a poll costs a few Redis round trips and a read of the campaigns rows (ops_readers.RowsReader:
a poll never waits long for the database). A live sale's coupons per second since its opening
come from Redis, which counts them per second as it claims them (one field a second of each
claim shard), once when the page selects it. A closed sale's replay, and what Redis and the
database were found to agree on, are what its close counted and recorded: the page never
reconciles (that reads every claim and row). While a page polls a campaign, the worker reads
its outbox every SAMPLE_SECONDS (ops_readers.OutboxWatch), so that a poll can say the highest
backlog and lag since the previous one.
"""
import socket
import time

from flask import url_for
from redis.exceptions import RedisError

from coupon import events
from coupon.clock import iso, to_ms
from coupon.health import check_redis
from coupon.keys import SCHEDULER_LEADER, active_campaigns
from coupon.ops_readers import Meanwhile
from coupon.outbox import queue_outbox_stats
from coupon.queries import (
    campaign_row, campaign_status, close_report, into_steps, sale_replay, sale_span, seconds_between,
    status_view, step_of,
)
from coupon.redis_state import holds, issues_per_second, queue_stocks
from coupon.scripts import decode_serials
from coupon.supply import lease_holder


def live_state(svc, campaign_id, state, since=None):
    """What the page shows now.

    `state`: the worker's ops_readers.OpsState; `since`: the previous poll's `now`, for the
    highest outbox figures in between."""
    # the Redis health checks meanwhile: a poll waits for the longer of the two sets of round
    # trips, not their sum (during a big sale each waits behind a busy Redis: BENCHMARKS.md,
    # "A big sale")
    health = Meanwhile(health_checks, svc)
    try:
        active = active_campaigns(svc.redis)
    except RedisError:
        active = []  # Redis down: the health check says so, and the list is the database's alone
    listing, database, read_now = state.rows.read(svc, active)
    try:
        campaigns, view = campaigns_and_view(svc, *listing.split(active), campaign_id, state, since)
    except RedisError:
        campaigns = None
    if campaigns is None or not health.result()["redis"]["ok"]:  # what the database says alone
        campaigns, view = campaigns_and_view(svc, *listing.split([]), campaign_id, state, since)
    return {
        "now": time.time(),
        "host": socket.gethostname(),
        "health": {**health.result(), "database": database},
        "this_host": svc.metrics.totals(),
        "campaigns": campaigns,
        "campaign": view,
        "rows_read_at": listing.read_at,  # when the campaigns rows listed were read
        "rows_read_now": read_now,  # false: the database had not answered within DATABASE_WAIT
    }


def campaigns_and_view(svc, held, closed, campaign_id, state, since):
    """The list of campaigns, and the view of the one asked for (none asked: the first listed).

    The list is `held`, the rows of those Redis holds, then the recently `closed`. What Redis says
    of them is read in one batch, a round trip per node: during a sale each round trip waits behind
    the claims queued on a busy Redis."""
    if campaign_id is None and (held or closed):
        campaign_id = (held or closed)[0].id
    batch = svc.redis.batch()
    stocks = queue_stocks(batch, [svc.keys(row.id) for row in held])
    watched = campaign_id in {row.id for row in held}
    if watched:
        outbox = queue_outbox_stats(batch, svc.keys(campaign_id))
        standing = queue_leases(batch, svc.keys(campaign_id))
    batch.execute()
    stocks = stocks()
    # closed: the database's count is final
    campaigns = ([dict(status_view(row, stocks[row.id][1] if row.id in stocks else row.issued), live=True)
                  for row in held]
                 + [dict(status_view(row, row.issued), live=False) for row in closed])
    listed = next((c for c in campaigns if c["id"] == campaign_id), None)
    view = None
    if campaign_id:
        # the figures of the list when it holds the campaign: the sidebar and the headline agree
        view = dict(listed) if listed else dict(campaign_status(svc, campaign_id), live=False)
        if watched:
            live_view(svc, view, state, state.outbox.read(svc, campaign_id, since, outbox()), standing())
        elif view["status"] == "closed":
            view["replay_url"] = url_for("ops.replay", raw_id=campaign_id)
    return campaigns, view


def health_checks(svc):
    """Redis and the scheduler leader: {name: {"ok", "detail"}} (the database: RowsReader)."""
    checks = {name: {"ok": state == "ok", "detail": state} for name, state in check_redis(svc)[0].items()}
    try:
        leader = svc.redis.get(SCHEDULER_LEADER)
        checks["scheduler"] = (
            {"ok": True, "detail": f"leader {leader}"} if leader else
            {"ok": False, "detail": "no leader: is `flask jobs run` running?"})
    except RedisError as e:
        checks["scheduler"] = {"ok": False, "detail": f"unknown: Redis {type(e).__name__}"}
    return checks


def live_view(svc, view, state, outbox, leases):
    """Add to the view of a campaign Redis holds what the page shows of a live one."""
    campaign_id = view["id"]
    if view["status"] == "closed":  # its close under way
        view["replay_url"] = url_for("ops.replay", raw_id=campaign_id)
    view["history_url"] = url_for("ops.history", raw_id=campaign_id)
    view["outbox"], view["leases"] = outbox, leases
    if events.enabled(svc.config):
        view["events"] = state.events.read(svc.engine, campaign_id)
    if view["issued"] >= view["total"]:
        # sold out and the outbox empty: every claim is in the database (the flusher deletes an
        # entry only after its row was committed), so the replay is whole. Not counted here: a
        # count of a million rows takes 170 ms
        everything_in = view["outbox"]["backlog"] == 0
        view["sold_out_after_seconds"] = (sold_out_after(svc, campaign_id, view["total"], state.finished)
                                          if everything_in else None)
        if view["sold_out_after_seconds"] is not None:
            view["replay_url"] = url_for("ops.replay", raw_id=campaign_id)


def queue_leases(batch, keys):
    """Queue the reads of the leases standing in Redis; return what lists them, by worker.

    Call what it returns once the batch has run. The list gives per worker the serials leased and
    seconds until expiry (negative: expired, its unclaimed serials wait for the reclaim job)."""
    expiries = batch.on(keys.leases).zrange(keys.leases, 0, -1, withscores=True)
    encoded = batch.on(keys.lease_serials).hgetall(keys.lease_serials)
    clock = batch.on(keys.leases).time()  # the clock lease.lua stamped with

    def leases():
        (seconds, micros), encoded_of = clock.get(), encoded.get()
        now_ms = seconds * 1000 + micros // 1000
        return [
            {"worker": lease_holder(lease_id),
             "lease": lease_id, "serials": len(decode_serials(encoded_of.get(lease_id, ""))),
             "expires_in": round((expiry - now_ms) / 1000, 1)}
            for lease_id, expiry in expiries.get()]
    return leases


def sold_out_after(svc, campaign_id, total, finished):
    """Seconds from open to the last coupon; call it once every row is in the database."""
    key = ("sold_out_after", campaign_id, total)  # add-stock makes another sale of it
    if key not in finished:
        opened, last = sale_span(svc.engine, campaign_row(svc.engine, campaign_id))
        if last is None:
            return None
        finished[key] = seconds_between(opened, last)
    return finished[key]


def sale_history(svc, campaign_id):
    """A live sale's coupons per step from its opening to `until` (epoch s), from Redis's count.

    A step is a second, or several in a long sale. Redis counts new tickets per second (claim.lua
    counts each in the call that claims it): every claim stamped before `until` is there, in the
    database or not yet. The page counts what follows from the live polls."""
    row = campaign_row(svc.engine, campaign_id)
    per_second, now = issues_per_second(svc.redis, svc.keys(campaign_id))
    start = min(now, to_ms(row.opens_at) // 1000) if row.opens_at else now
    step = step_of(now - start)
    steps = (now - start) // step  # whole steps only
    issues = into_steps(per_second, start, steps, step)
    return {"id": campaign_id, "start": start, "step_seconds": step, "issues": issues,
            "until": start + steps * step, "rows": sum(issues)}


def replay_of(svc, campaign_id, finished):
    """A sale replayed: issues per second, time to sell out, what is known of its reconciliation.

    Issues are per second (or per step of several seconds) from open to the last coupon. The replay
    a close counted once Redis and the database agreed (the rows are final then); while Redis holds
    the campaign, its count per second; else the database's, counted now."""
    key = ("replay", campaign_id)
    if key in finished:
        return finished[key]
    row = campaign_row(svc.engine, campaign_id)
    keys = svc.keys(campaign_id)
    keys_kept = holds(svc.redis, keys)
    record = close_report(svc.engine, campaign_id)
    if record and record["replay"]:
        counted = record["replay"]
    else:
        counted = sale_replay(svc.engine, row, issues_per_second(svc.redis, keys)[0] if keys_kept else None)
    replay = {"id": campaign_id, "name": row.name, "total": row.total, **counted,
              "reconciliation": reconciliation(row, keys_kept, record, counted["rows"])}
    if row.status == "closed" and not keys_kept:  # released: nothing of it can change
        finished[key] = replay
    return replay


def reconciliation(row, keys_kept, record, rows):
    """Whether Redis and the database agree on the campaign's tickets, as the last close found.

    Read from db.close_reports: never reconciled here, which reads every claim and every row.
    agree: True, False, or None when no close has reconciled them yet."""
    close = f"`flask campaign close {row.id}`"
    if record:
        found = [f"the close of {iso(record['reconciled_at'])} found:", *record["report"].splitlines()]
    if keys_kept and row.status != "closed":
        state = "sold out" if rows >= row.total else "the sale is live"  # `rows`: Redis's count
        return {"agree": None, "lines": [
            f"not reconciled yet: {state}, not closed; {close} drains, reconciles and releases it"]}
    if keys_kept and not record:
        return {"agree": None, "lines": [
            f"not reconciled yet: closed, but its close is under way or stopped before it "
            f"reconciled; {close} (safe to run again) drains, reconciles and releases it"]}
    if keys_kept:
        return {"agree": record["agree"], "lines": found + [
            f"Redis still holds the campaign: {close} reconciles again, and releases it once "
            "Redis and the database agree"]}
    if row.status != "closed":
        return {"agree": False, "lines": [
            f"campaign {row.id} was never closed and Redis does not hold it (lost?): "
            f"its {rows} rows in the database are all that is known"]}
    if record:
        return {"agree": record["agree"], "lines": found}
    # closed before close recorded its reports: close releases the Redis keys only after Redis
    # and the database agreed, and then records the count in the campaigns row
    return {"agree": True, "lines": [
        f"campaign {row.id}: Redis and the database agreed at close on {row.issued} tickets"]}
