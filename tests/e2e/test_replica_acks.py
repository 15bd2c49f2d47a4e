"""Replica acknowledgements (REDIS_REPLICA_ACKS): nothing is told to a user or relied on by a
worker before a replica holds it, and what may be sent again does its work once.

A private Redis with one replica (`replicaof`), stopped (SIGSTOP) to make the acknowledgements
fall short; the service in this process with REDIS_REPLICA_ACKS 1. A lease asked again and the
serials of an old epoch, on the suite's Redis: integration/test_replica_acks.py."""
import os
import signal
from contextlib import contextmanager

import pytest

from coupon import create_app, redis_state
from coupon.clock import iso_ms
from coupon.errors import Unavailable
from coupon.scripts import decode_serials
from loadtest.harness import RedisServer, open_campaign, wait_until
from tests.support import app_config, assert_error, issue


@pytest.fixture
def replica_pair(tmp_path):
    """(master, replica): two private Redis servers, the second replicating the first."""
    (tmp_path / "master").mkdir()
    (tmp_path / "replica").mkdir()
    # the replica's first sync at once, not after the default 5 s of waiting for more replicas
    master = RedisServer(tmp_path / "master", "no file", "--repl-diskless-sync-delay", "0")
    replica = RedisServer(tmp_path / "replica", "no file", "--replicaof", "127.0.0.1", str(master.port))
    wait_until(lambda: replica.info("replication")["master_link_status"] == "up", timeout=20,
               what="the replica to link up")
    # and the master counts it: online, acknowledging a write (WAIT)
    with master.client(timeout=10) as client:
        wait_until(lambda: client.info("replication").get("slave0", {}).get("state") == "online"
                   and client.set("linked", 1) and client.execute_command("WAIT", 1, 1000) == 1,
                   timeout=20, what="the master to count its replica")
        client.delete("linked")
    yield master, replica
    replica.stop()
    master.stop()


@pytest.fixture
def acked_app(mysql_url, replica_pair):
    app = create_app(app_config(mysql_url, replica_pair[0].url, REDIS_REPLICA_ACKS=1,
                                REDIS_REPLICA_TIMEOUT=0.2))
    yield app
    app.extensions["coupon"].engine.dispose()


@contextmanager
def stopped(server):
    """The server stopped (SIGSTOP) while the block runs: it acknowledges nothing."""
    os.kill(server.proc.pid, signal.SIGSTOP)
    try:
        yield
    finally:
        os.kill(server.proc.pid, signal.SIGCONT)


def held_ticket(svc, keys, user):
    """The claim Redis holds for `user`, or None."""
    return redis_state.stored_claim(svc.redis, keys, user)


def test_a_claim_short_of_replica_acks_answers_503_and_stands(acked_app, replica_pair, signer):
    svc, client = acked_app.extensions["coupon"], acked_app.test_client()
    campaign_id = open_campaign(svc, 100)
    keys = svc.keys(campaign_id)
    assert issue(client, campaign_id, signer.mint("a")).status_code == 201  # a lease at hand
    with stopped(replica_pair[1]):
        assert_error(issue(client, campaign_id, signer.mint("b")), 503, "UNAVAILABLE")
        claim = held_ticket(svc, keys, "b")
        assert claim  # written on the master, never told
    again = issue(client, campaign_id, signer.mint("b"))
    assert again.status_code == 200, again.json
    assert (again.json["serial"], again.json["code"]) == (
        claim.serial, signer.ticket_code(campaign_id, claim.serial))
    assert again.json["issued_at"] == iso_ms(claim.issued_at_ms)


def test_a_lease_short_of_replica_acks_is_not_used_then_asked_for_again(acked_app, replica_pair):
    svc = acked_app.extensions["coupon"]
    campaign_id = open_campaign(svc, 100)
    keys = svc.keys(campaign_id)
    supply = svc.issuer.admit(campaign_id).supply
    with stopped(replica_pair[1]):
        with pytest.raises(Unavailable):
            supply.take()
        (lease_id,) = svc.redis.zrange(keys.leases, 0, -1)  # leased on the master, not used
        block = decode_serials(svc.redis.hget(keys.lease_serials, lease_id))
        cursor = int(svc.redis.hget(keys.meta, "cursor"))
        assert block and cursor == max(block) and not supply.held
    with supply.take() as taken:
        # asked again under the same lease id: the same serials, not a second block
        assert taken.lease.id == lease_id and taken.serial in block
        assert svc.redis.zrange(keys.leases, 0, -1) == [lease_id]
        assert int(svc.redis.hget(keys.meta, "cursor")) == cursor
        taken.answered(unused=True)


def test_not_ready_while_the_master_is_short_of_replicas(acked_app, replica_pair):
    client = acked_app.test_client()
    assert client.get("/readyz").json["checks"]["redis"] == "ok"
    replica_pair[1].kill()
    down = wait_until(lambda: client.get("/readyz").status_code == 503 and client.get("/readyz"),
                      timeout=10, what="/readyz to say the replica is gone")
    assert down.json["checks"]["redis"] == "down: 0 of 1 replicas"
