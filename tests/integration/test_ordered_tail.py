"""lease.lua in arrival order (ARRIVAL_ORDER=on): a campaign's tail goes to the bids of every
worker in arrival order, up to the earliest frontier any worker holds (the watermark), against
real Redis. The workers' side (arrival.ArrivalGate, supply.SerialSupply) is tested through real
gunicorns in test_arrival_order.py."""
import time

from coupon.arrival import ROLL_STALE_MS, WorkerRoll
from coupon.keys import WORKER_ROLL
from coupon.scripts import LeaseOutcome
from coupon.supply import AHEAD_MS, BIDDER_STALE_MS, CAUGHT_UP_MS, OPENING_MS, UNLISTED_MS
from loadtest.harness import open_campaign
from tests.support import on_single_and_cluster

TTL_MS = 10_000


class Bidder:
    """One worker's calls to lease.lua for a campaign's tail."""

    def __init__(self, svc, campaign_id, name):
        self.svc, self.keys, self.name = svc, svc.keys(campaign_id), name
        self.epoch = svc.redis.hget(self.keys.meta, "epoch")
        self.leases = 0

    def bid(self, frontier, bids=(), stale_ms=BIDDER_STALE_MS, unlisted_ms=UNLISTED_MS,
            opening_ms=OPENING_MS, caught_up_ms=CAUGHT_UP_MS, roll=0, ahead=0):
        """lease.lua's answer to this worker's new bids [(id, arrival ms or "": withdrawn)];
        roll: the workers serving (arrival.WorkerRoll; 0: unknown); ahead: most serials to grant
        ahead."""
        self.leases += 1
        order = (self.name, frontier, stale_ms, unlisted_ms, opening_ms, caught_up_ms, roll, ahead,
                 AHEAD_MS, list(bids))
        return self.svc.scripts.lease(self.keys, self.epoch, f"{self.name}:{self.leases}", 100,
                                      TTL_MS, 10_000, len(bids), order)

    def publish(self, frontier):
        self.svc.scripts.frontier(self.keys, self.name, frontier)


@on_single_and_cluster
def test_the_tail_goes_to_every_workers_bids_in_arrival_order_up_to_the_watermark(svc):
    campaign_id = open_campaign(svc, 3)
    now = svc.clock.fine_now_ms()
    a, b = Bidder(svc, campaign_id, "a"), Bidder(svc, campaign_id, "b")
    b.publish(now - 80)  # b may still hold a request that arrived 80 ms ago, not bid yet

    first = a.bid(now, [(1, now - 100), (2, now - 60)])
    assert (first.outcome, first.granted, len(first.serials)) == (LeaseOutcome.ORDERED, (1,), 1)

    # b bids: 70 ms ago (before a's second), 50 ms ago; it has read everything up to now
    second = b.bid(now, [(1, now - 70), (2, now - 50)])
    # in arrival order: b's first gets a serial, one is kept for a's second, b's second waits:
    # refused only once none is left or in flight (a serial granted may come back unused)
    assert (second.granted, len(second.serials)) == ((1,), 1)

    third = a.bid(now)  # nothing new to bid: a's second bid stood in Redis and gets its serial
    assert (third.granted, len(third.serials)) == ((2,), 1)
    assert sorted(first.serials + second.serials + third.serials) == [1, 2, 3]

    # none left: a later bid waits while serials are leased out (one may come back unused), and
    # is sold out once every lease is settled
    held = a.bid(now, [(3, now - 5)])
    assert (held.outcome, held.granted, held.others_hold) == (LeaseOutcome.ORDERED, (), True)
    assert svc.redis.hget(a.keys.meta, "wanted")  # the holders are asked for what they do not use
    # a serial that comes back unused goes to the earliest bid waiting: b's second, not a's third
    svc.scripts.give_back(a.keys, "b:1", second.serials)
    assert b.bid(now).granted == (2,)
    for lease_id in ("a:1", "a:2", "b:2"):
        svc.scripts.give_back(a.keys, lease_id, [])
    assert a.bid(now).outcome is LeaseOutcome.SOLD_OUT


@on_single_and_cluster
def test_no_bid_is_answered_while_a_worker_may_hold_an_earlier_request_that_has_not_bid(svc):
    campaign_id = open_campaign(svc, 2)
    now = svc.clock.fine_now_ms()
    a, b = Bidder(svc, campaign_id, "a"), Bidder(svc, campaign_id, "b")
    b.publish(now - 300)  # b holds a request from 300 ms ago that has not bid
    waiting = a.bid(now, [(1, now - 200)])
    assert (waiting.granted, waiting.serials) == ((), ())

    assert b.bid(now, [(2, now - 300)]).granted == (2,)  # b's bid, the earliest of all
    assert a.bid(now).granted == (1,)  # then a's


@on_single_and_cluster
def test_at_the_opening_with_the_roll_unknown_a_bid_waits_for_workers_not_listed_yet(svc):
    campaign_id = open_campaign(svc, 1)
    a = Bidder(svc, campaign_id, "a")
    # a worker that got a request as early has UNLISTED_MS to read it and list itself (a request
    # stamped 1 s ahead: the first call is sure to come before then, however loaded the machine)
    arrived = svc.clock.fine_now_ms() + 1_000
    opening = dict(opening_ms=60_000)  # a minute from the campaign's opens_at, just now
    assert a.bid(arrived + 60_000, [(1, arrived)], **opening).granted == ()
    time.sleep(1 + 10 * UNLISTED_MS / 1000)
    assert a.bid(arrived + 60_000, **opening).granted == (1,)


@on_single_and_cluster
def test_a_withdrawn_bid_and_the_bids_of_a_worker_gone_silent_keep_nothing(svc):
    now = svc.clock.fine_now_ms()
    campaign_id = open_campaign(svc, 1)
    a, b = Bidder(svc, campaign_id, "a"), Bidder(svc, campaign_id, "b")
    b.publish(now - 600)
    assert a.bid(now, [(1, now - 500)]).granted == ()  # b holds it back
    assert a.bid(now, [(1, "")]).granted == ()  # withdrawn: its request went without a serial
    assert b.bid(now - 400, [(1, now - 450)]).granted == (1,)  # the withdrawn bid kept nothing

    campaign_id = open_campaign(svc, 1)
    a, b = Bidder(svc, campaign_id, "a"), Bidder(svc, campaign_id, "b")
    assert b.bid(now - 600, [(1, now - 550)]).granted == ()  # b's own frontier holds it back
    time.sleep(0.01)
    # b falls silent: past the stale time it holds no one back, and its bid keeps nothing
    assert a.bid(now, [(1, now - 400)], stale_ms=5).granted == (1,)


@on_single_and_cluster
def test_a_worker_caught_up_holds_no_bid_back_one_with_a_queue_does(svc):
    campaign_id = open_campaign(svc, 1)
    now = svc.clock.fine_now_ms()
    a, b = Bidder(svc, campaign_id, "a"), Bidder(svc, campaign_id, "b")
    a.publish(now - 100)  # a holds a request from 100 ms before it said so, not bid yet
    past_opening = dict(opening_ms=0)
    # its frontier lags its word by 100 ms: a queue, so b's later bid waits for a's
    assert b.bid(now, [(1, now - 50)], caught_up_ms=10, **past_opening).granted == ()
    # counted as caught up (lagging 100 ms is within 5 s), a holds no one back: b's bid goes at once
    assert b.bid(now, caught_up_ms=5_000, **past_opening).granted == (1,)


@on_single_and_cluster
def test_caught_up_bounds_a_frontier_behind_now_however_the_time_splits(svc):
    """What a bidder has not bid arrived at most caught_up_ms before now: its frontier's lag behind
    its word and its word's age count together (each within the bound, the sum is not)."""
    campaign_id = open_campaign(svc, 1)
    a, b = Bidder(svc, campaign_id, "a"), Bidder(svc, campaign_id, "b")
    past_opening = dict(opening_ms=0, caught_up_ms=500)
    now = svc.clock.fine_now_ms()
    a.publish(now - 300)  # 300 ms behind its word
    time.sleep(0.25)  # and its word 250 ms old: 550 ms behind now
    later = svc.clock.fine_now_ms()
    assert b.bid(later, [(1, later - 1)], **past_opening).granted == ()
    a.publish(later - 300)  # said anew: 300 ms behind now, within the bound
    assert b.bid(later, **past_opening).granted == (1,)


@on_single_and_cluster
def test_at_the_opening_no_bid_is_answered_until_every_worker_on_the_roll_is_listed(svc):
    campaign_id = open_campaign(svc, 2)
    now = svc.clock.fine_now_ms()
    a, b = Bidder(svc, campaign_id, "a"), Bidder(svc, campaign_id, "b")
    opening = dict(opening_ms=60_000, unlisted_ms=0)  # a minute from opens_at (just now)
    b.publish(now)
    # three workers serve, two are listed: the third may hold the earliest requests, unlisted
    # (swamped by the opening flood, it has not read them yet)
    assert a.bid(now, [(1, now - 1)], roll=3, **opening).granted == ()
    # two serve, both listed: none can hold an earlier request unlisted, the bid goes at once
    assert a.bid(now, roll=2, **opening).granted == (1,)


@on_single_and_cluster
def test_the_opening_holds_bids_back_only_while_it_lasts(svc):
    campaign_id = open_campaign(svc, 2)
    now = svc.clock.fine_now_ms()
    a = Bidder(svc, campaign_id, "a")
    floor = dict(unlisted_ms=60_000)  # the roll unknown: a bid waits a minute for others to list
    assert a.bid(now, [(1, now - 1)], opening_ms=60_000, **floor).granted == ()
    assert a.bid(now, opening_ms=0, **floor).granted == (1,)  # past the opening, at once
    # with the roll: a worker on it not listed holds the bids back at the opening only
    assert a.bid(now, [(2, now - 1)], opening_ms=60_000, roll=2).granted == ()
    assert a.bid(now, opening_ms=0, roll=2).granted == (2,)


@on_single_and_cluster
def test_the_roll_counts_the_workers_that_said_they_serve_lately(svc):
    a, b = (WorkerRoll(svc.redis, name, svc.clock) for name in ("a", "b"))
    svc.redis.zadd(WORKER_ROLL, {"gone": svc.clock.now_ms() - ROLL_STALE_MS - 1})  # silent too long
    a.say()
    b.say()
    a.say()
    assert (a.size, b.size) == (2, 2)  # the silent one is off
    b.leave()
    a.say()
    assert a.size == 1


@on_single_and_cluster
def test_with_no_queue_anywhere_a_grant_comes_with_serials_ahead_else_none(svc):
    """Serials granted ahead (for the worker's next requests, without a bid) only while every
    bidder is caught up, no bid waits and the opening is over; they are the lease's as any other."""
    campaign_id = open_campaign(svc, 10)
    now = svc.clock.fine_now_ms()
    a, b = Bidder(svc, campaign_id, "a"), Bidder(svc, campaign_id, "b")
    # caught up within 10 s: the calls below are not slower than that, however loaded the machine
    past_opening = dict(opening_ms=0, caught_up_ms=10_000, ahead=3)
    b.publish(now)  # caught up
    first = a.bid(now, [(1, now - 1)], **past_opening)
    assert (first.granted, len(first.serials)) == ((1,), 4)  # its own, and 3 ahead
    redis_now = svc.clock.fine_now_ms()
    assert redis_now - 1_000 < first.ahead_until - AHEAD_MS <= redis_now
    assert svc.scripts.give_back(a.keys, "a:1", first.serials[1:]) == 3  # the lease's: back

    # at the opening, every worker on the roll listed (a and b): granted, nothing ahead
    opening = a.bid(now, [(2, now - 1)], **{**past_opening, "opening_ms": 60_000, "roll": 2})
    assert (opening.granted, len(opening.serials), opening.ahead_until) == ((2,), 1, 0)

    b.publish(now - 30_000)  # b has a queue: a's earlier bid is granted, nothing ahead
    lagging = a.bid(now, [(3, now - 40_000)], **past_opening)
    assert (lagging.granted, len(lagging.serials), lagging.ahead_until) == ((3,), 1, 0)

    assert b.bid(now - 30_000, [(1, now - 5)], **past_opening).granted == ()  # its own queue
    b.publish(now)  # caught up: a's later bid is granted, b's waits for b's next call
    waiting = a.bid(now, [(4, now - 1)], **past_opening)
    assert (waiting.granted, len(waiting.serials), waiting.ahead_until) == ((4,), 1, 0)
    assert b.bid(now, **{**past_opening, "ahead": 0}).granted == (1,)

    # ahead only as many as are left (10, of which 5 went to bids: 4 after this one's)
    last = a.bid(now, [(5, now - 1)], **{**past_opening, "ahead": 8})
    assert (last.granted, len(last.serials)) == ((5,), 5)
