"""Leases between workers: no worker sits on serials while another answers SOLD_OUT.

Two apps stand for two worker processes (same code, real Redis, each its own Issuer), so that the
test decides which worker serves which request. Through real gunicorn workers: e2e/test_leases.py.
"""
import pytest

from coupon import queries, supply
from coupon.errors import SoldOut
from coupon.scripts import decode_serials
from loadtest.harness import open_campaign, wait_until
from tests.support import issue_directly, on_single_and_cluster

pytestmark = on_single_and_cluster


@pytest.fixture
def workers(make_app):
    return [make_app(STATE_REFRESH=0.2).extensions["coupon"] for _ in range(2)]


def issue_until_sold_out(worker, campaign_id, prefix, limit=1000):
    issued = 0
    for i in range(limit):
        try:
            issue_directly(worker, campaign_id, f"{prefix}{i}")
        except SoldOut:
            return issued
        issued += 1
    return issued


def held_by(worker, campaign_id):
    """Serials the worker's current lease holds, not handed out yet."""
    return worker.issuer.campaign(campaign_id).supply.held


def test_a_dry_worker_gets_the_serials_an_idle_one_holds(workers, redis_client):
    a, b = workers
    campaign_id = open_campaign(a, 200, "tail")
    issue_directly(a, campaign_id, "a0")  # worker a leases a block (a fair share: 50), uses one
    assert held_by(a, campaign_id) > 0
    # then no request comes to a: b runs dry, asks, and a gives back what it holds before b
    # would answer SOLD_OUT (issuing.Issuer's watch of its holdings)
    assert issue_until_sold_out(b, campaign_id, "b") == 199
    assert held_by(a, campaign_id) == 0
    assert issue_until_sold_out(a, campaign_id, "c") == 0
    assert queries.campaign_status(a, campaign_id)["issued"] == 200


def test_in_arrival_order_a_dry_worker_gets_the_serials_an_idle_one_holds(make_app, monkeypatch):
    monkeypatch.setattr(supply, "ORDERED_TAIL", 100)  # the bids' tail: the last 100 of 150
    a, b = [make_app(STATE_REFRESH=0.2, ARRIVAL_ORDER=True).extensions["coupon"] for _ in range(2)]
    campaign_id = open_campaign(a, 150, "ordered tail")
    issue_directly(a, campaign_id, "a0")  # a leases a block before the tail, uses one, then gets no request
    assert held_by(a, campaign_id) > 0
    # b's bids find the rest in flight at a: they ask the holders (Scripts.ask_holders), and a
    # gives back what it holds, rather than b's requests waiting for a bid's patience to run out
    assert issue_until_sold_out(b, campaign_id, "b") == 149
    assert held_by(a, campaign_id) == 0
    assert queries.campaign_status(a, campaign_id)["issued"] == 150


def test_in_arrival_order_a_holder_at_the_tail_bids_at_once_and_the_serial_goes_on(make_app, redis_client,
                                                                                   monkeypatch):
    monkeypatch.setattr(supply, "AHEAD_MOST", 0)  # every request bids (past the opening too)
    a = make_app(ARRIVAL_ORDER=True).extensions["coupon"]
    campaign_id = open_campaign(a, 3, "ordered holders")
    keys = a.keys(campaign_id)
    first = issue_directly(a, campaign_id, "alice")
    # in the ordered tail a request bids at once, without asking first whether its user holds a
    # ticket: alice's bid is granted the next serial, her claim answers her own ticket ...
    again = issue_directly(a, campaign_id, "alice")
    assert (again.new, again.serial, again.code) == (False, first.serial, first.code)
    assert int(redis_client.hget(keys.meta, "cursor")) == 2
    # ... and the serial it left unused is back, for the next bids: the stock goes to others
    assert redis_client.lrange(keys.returned, 0, -1) == ["2"]
    assert sorted(issue_directly(a, campaign_id, user).serial for user in ("bob", "carol")) == [2, 3]
    with pytest.raises(SoldOut):
        issue_directly(a, campaign_id, "dave")
    assert queries.campaign_status(a, campaign_id)["issued"] == 3


def test_in_arrival_order_with_no_queue_the_next_requests_take_serials_granted_ahead(make_app, redis_client,
                                                                                   monkeypatch):
    monkeypatch.setattr(supply, "OPENING_MS", 0)  # the opening is over at once
    monkeypatch.setattr(supply, "AHEAD_MS", 1_000)  # the next request comes in time on a slow machine
    a = make_app(ARRIVAL_ORDER=True).extensions["coupon"]
    campaign_id = open_campaign(a, 10, "ahead")
    keys = a.keys(campaign_id)
    cursor = lambda: int(redis_client.hget(keys.meta, "cursor"))  # noqa: E731
    # no queue, no other bid: the bid is granted, and one serial ahead (one request in AHEAD_MS)
    assert (issue_directly(a, campaign_id, "u0").serial, cursor()) == (1, 2)
    # the next request takes it without a bid; with none left the lease is settled
    assert (issue_directly(a, campaign_id, "u1").serial, cursor()) == (2, 2)
    assert redis_client.zcard(keys.leases) == 0
    # the next bid: granted, with serials ahead again; not taken in time, they go back
    assert issue_directly(a, campaign_id, "u2").serial == 3
    leased = cursor()
    assert leased > 3
    wait_until(lambda: redis_client.zcard(keys.leases) == 0, timeout=10, what="the serials ahead back")
    assert sorted(map(int, redis_client.lrange(keys.returned, 0, -1))) == list(range(4, leased + 1))
    assert queries.campaign_status(a, campaign_id)["issued"] == 3


def test_a_lease_whose_give_back_failed_is_settled_at_the_next_refill(workers, redis_client):
    a, _ = workers
    campaign_id = open_campaign(a, 1000, "retry")  # a block of many serials, not the tail
    first = issue_directly(a, campaign_id, "u0")
    keys = a.keys(campaign_id)
    (old_lease,) = redis_client.zrange(keys.leases, 0, -1)
    unused = set(decode_serials(redis_client.hget(keys.lease_serials, old_lease))) - {first.serial}
    assert len(unused) == held_by(a, campaign_id) > 0
    redis_client.rename(keys.leases, keys.leases + ":away")  # give_back finds no lease ...
    redis_client.set(keys.leases, "not a zset")  # ... and fails like an unreachable Redis would
    a.issuer.campaign(campaign_id).supply.retire()  # what another worker running dry asks for
    redis_client.delete(keys.leases)
    redis_client.rename(keys.leases + ":away", keys.leases)
    assert redis_client.zrange(keys.leases, 0, -1) == [old_lease]  # not settled: still standing

    issue_directly(a, campaign_id, "u1")  # the refill settles the old lease first ...
    (new_lease,) = redis_client.zrange(keys.leases, 0, -1)
    assert new_lease != old_lease  # ... so it no longer stands, and its unused serials came
    assert redis_client.hget(keys.lease_serials, old_lease) is None  # back: the new lease has them
    assert unused <= set(decode_serials(redis_client.hget(keys.lease_serials, new_lease)))


def test_at_the_tail_a_user_who_holds_a_ticket_takes_no_serial(workers, redis_client):
    a, b = workers
    campaign_id = open_campaign(a, 10, "holders")
    first = issue_directly(a, campaign_id, "alice")
    keys = a.keys(campaign_id)
    cursor = int(redis_client.hget(keys.meta, "cursor"))
    again = issue_directly(b, campaign_id, "alice")  # b has no serial at hand: it only asks
    assert (again.new, again.serial, again.code) == (False, first.serial, first.code)
    assert int(redis_client.hget(keys.meta, "cursor")) == cursor  # no serial leased for her
    assert held_by(b, campaign_id) == 0 and redis_client.zcard(keys.leases) == 0
    bob = issue_directly(b, campaign_id, "bob")  # a user without a ticket gets one the same way
    assert bob.new and bob.serial != first.serial
    assert queries.campaign_status(a, campaign_id)["issued"] == 2
