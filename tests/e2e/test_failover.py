"""Failover tests: a Redis Cluster master dies, hangs, or dies again after coming back, in the
middle of a flood through real gunicorn workers, with replica acknowledgements on (the cluster's
default: REDIS_REPLICA_ACKS 1) and every master refusing writes without a linked replica
(min-replicas-to-write 1). Then close, and the invariants exactly: never a 500; every ticket a
user was told of has its row, with the same serial and code; no serial or user twice; issued = N.
Each test prints what it injected and what it saw (`pytest -s`)."""
import os
import signal
import time

import pytest
from redis.crc import key_slot

from tests.flood import (NODE_TIMEOUT_MS, REDIS_TIMEOUT, STOCK, close_and_check, demand, issued_counter,
                         once, outcomes, say, service_on, tickets_told)
from loadtest.harness import RedisTarget, open_campaign, wait_until

pytestmark = pytest.mark.fault


def pick_victim(cluster, home_slot, victim):
    """The master to fault: the campaign's home master (its leases and cursor, and claim shards),
    one serving claim shards only, or the master of slot 0 (where a client without its own
    routing sends what it cannot place)."""
    home, slot_0 = cluster.master_of(home_slot), cluster.master_of(0)
    if victim == "home master":
        return home
    if victim == "master of slot 0":
        return slot_0
    others = [m for m in cluster.masters() if m is not home]
    return next((m for m in others if m is not slot_0), others[0])


class Sale:
    """A campaign on a private cluster, and which of its claim shards a master serves."""

    def __init__(self, svc, cluster):
        self.svc, self.cluster = svc, cluster
        self.campaign_id = open_campaign(svc, STOCK)
        self.keys = svc.keys(self.campaign_id)
        self.home_slot = key_slot(self.keys.meta.encode())
        self.issued = issued_counter(svc, self.campaign_id)

    def slots_of(self, node):
        return [(first, last) for first, last, port in self.cluster.slot_map() if port == node.port]

    def shards_in(self, slots):
        return {k for k, shard in enumerate(self.keys.all_shards())
                if any(first <= key_slot(shard.state.encode()) <= last for first, last in slots)}

    def promoted(self, slots, old):
        """Wait until a live master other than `old` serves `slots`; the monotonic time then."""
        wait_until(lambda: self.cluster.master_of(slots[0][0]) not in (None, old), timeout=30,
                   interval=0.05, what="a replica to take over the slots")
        return time.monotonic()

    def rejoined(self):
        """Wait until every master has a replica in sync (writes are taken again)."""
        self.cluster.wait_healthy()
        return time.monotonic()

    def check_and_close(self, web, signer, answers, tokens, window, on_it, only_on_it):
        """After the flood: the answers (check_answers over `window`; with `only_on_it`, every 503
        a user's of the shards `on_it`), then close and the rows (flood.close_and_check).
        Returns the figures every failover test prints."""
        unavailable = check_answers(answers, *window, self.keys, on_it if only_on_it else None)
        told, unsure, holding = tickets_told(web.url, self.campaign_id, answers, tokens)
        close_and_check(self.svc, signer, self.campaign_id, told)  # nothing acknowledged was lost
        return dict(
            requests=len(answers), outcomes=dict(outcomes(answers)), unavailable=len(unavailable),
            of_them_on_its_shards=sum(self.keys.shard_of(a.user) in on_it for a in unavailable),
            unanswered_users=unsure, of_them_holding=holding, rows=STOCK)


def first_write(answers, since, shards, keys):
    """Seconds from `since` to the end of the first new ticket (201) on `shards` after it."""
    ends = [a.started + a.took for a in answers
            if a.status == 201 and a.started > since and keys.shard_of(a.user) in shards]
    return round(min(ends) - since, 2)


def check_answers(answers, start, end, keys, shards=None):
    """Never a 500 or a hang; every 503 is UNAVAILABLE, ended after `start` (a request in flight
    then may be refused) and started before `end`; with `shards`, every 503 was a user's of those
    shards. Returns the 503s."""
    seen = outcomes(answers)
    assert set(seen) <= {200, 201, "SOLD_OUT", 503}, seen
    unavailable = [a for a in answers if a.status == 503]
    assert all(a.body["error"]["code"] == "UNAVAILABLE" for a in unavailable)
    early_or_late = [(round(a.started - start, 2), round(a.took, 2)) for a in unavailable
                     if not (start <= a.started + a.took and a.started < end)]
    assert not early_or_late, (end - start, early_or_late[:10])
    if shards is not None:
        stray = [(a.user, keys.shard_of(a.user)) for a in unavailable if keys.shard_of(a.user) not in shards]
        assert not stray, (sorted(shards), stray[:10])
    return unavailable


BALLAST = 32 << 20  # bytes: more than the kernel buffers of the link to a stopped replica


@pytest.mark.parametrize("victim", ["home master", "master of claim shards only", "master of slot 0"])
def test_master_killed_while_its_replica_lags(victim, mysql_url, signer, private_cluster):
    # The replica is stopped, and a ballast written to its master fills their link, so that what
    # the master does next stays in its own memory; a second later the master is killed. Its
    # claims and leases of that second never reach the replica that takes over: without replica
    # acknowledgements they would have been told to users and workers and lost at failover (a
    # told ticket without its row, a serial issued twice). The killed master is started again
    # once its replica has taken over: it comes back as that replica's replica, and from then on
    # the slots take writes again (min-replicas-to-write 1).
    cluster = private_cluster
    with service_on(mysql_url, RedisTarget(cluster_nodes=cluster.startup_nodes)) as (svc, web):
        sale = Sale(svc, cluster)
        node = pick_victim(cluster, sale.home_slot, victim)
        replica = cluster.replica_of(node)
        slots = sale.slots_of(node)
        on_it = sale.shards_in(slots)
        home_on_it = node is cluster.master_of(sale.home_slot)
        ballast = sale.keys.shard(min(on_it)).prefix + ":ballast"  # a key of the victim's
        t = {}

        def lag_then_kill():
            t["issued"] = sale.issued()
            t["lag"] = time.monotonic()
            os.kill(replica.proc.pid, signal.SIGSTOP)
            try:
                with node.client() as client:
                    client.set(ballast, b"x" * BALLAST)
                time.sleep(1.0)  # the master goes on: its writes are not acknowledged (503s)
                t["down"] = time.monotonic()
                node.kill()
            finally:
                os.kill(replica.proc.pid, signal.SIGCONT)
            t["promoted"] = sale.promoted(slots, node)
            node.start()
            t["rejoined"] = sale.rejoined()

        with once(lambda: sale.issued() >= 400, lag_then_kill):
            answers, tokens = demand(web.url, sale.campaign_id, signer, sale.issued, seconds=60)

        seen = sale.check_and_close(web, signer, answers, tokens, (t["lag"], t["rejoined"] + REDIS_TIMEOUT),
                                    on_it, only_on_it=not home_on_it)
        say(f"cluster, replica behind, kill -9 of the {victim}", shards_on_it=sorted(on_it),
            home_on_it=home_on_it, issued_at_fault=t["issued"],
            kill_to_promoted_s=round(t["promoted"] - t["down"], 2),
            kill_to_rejoined_s=round(t["rejoined"] - t["down"], 2),
            kill_to_writes_again_s=first_write(answers, t["down"], on_it, sale.keys), **seen)


def test_master_hung_longer_than_the_node_timeout(mysql_url, signer, private_cluster):
    # SIGSTOP of the campaign's home master (its leases, cursor and a third of the claim shards)
    # until its replica has been promoted, then SIGCONT: it comes back believing it is the
    # master, takes what it finds in its sockets, learns it was replaced and becomes a replica,
    # throwing its own late writes away. Nothing it acknowledged before hanging may be lost, and
    # nothing it takes after may be acknowledged (its old replica no longer answers its WAIT).
    cluster = private_cluster
    with service_on(mysql_url, RedisTarget(cluster_nodes=cluster.startup_nodes)) as (svc, web):
        sale = Sale(svc, cluster)
        node = cluster.master_of(sale.home_slot)
        slots = sale.slots_of(node)
        on_it = sale.shards_in(slots)
        t = {}

        def hang():
            t["issued"] = sale.issued()
            t["down"] = time.monotonic()
            os.kill(node.proc.pid, signal.SIGSTOP)
            try:
                t["promoted"] = sale.promoted(slots, node)
                time.sleep(0.5)
            finally:
                os.kill(node.proc.pid, signal.SIGCONT)
            t["resumed"] = time.monotonic()
            t["rejoined"] = sale.rejoined()

        with once(lambda: sale.issued() >= 400, hang):
            answers, tokens = demand(web.url, sale.campaign_id, signer, sale.issued, seconds=60)

        assert t["promoted"] - t["down"] > NODE_TIMEOUT_MS / 1000  # it hung past the node timeout
        assert node.info("replication")["role"] == "slave"  # and came back as a replica
        seen = sale.check_and_close(web, signer, answers, tokens, (t["down"], t["rejoined"] + REDIS_TIMEOUT),
                                    on_it, only_on_it=False)
        say("cluster, home master hung (SIGSTOP)", shards_on_it=sorted(on_it),
            issued_at_fault=t["issued"], hang_to_promoted_s=round(t["promoted"] - t["down"], 2),
            hung_s=round(t["resumed"] - t["down"], 2),
            hang_to_rejoined_s=round(t["rejoined"] - t["down"], 2),
            hang_to_writes_again_s=first_write(answers, t["down"], on_it, sale.keys), **seen)


def test_node_back_as_replica_then_the_new_master_killed(mysql_url, signer, private_cluster):
    # kill -9 of a master of claim shards; once its replica has taken over, the dead node is
    # started again and resyncs as that replica's replica; then the new master is killed: the
    # resynced node is promoted in turn, with every claim acknowledged by either master.
    cluster = private_cluster
    with service_on(mysql_url, RedisTarget(cluster_nodes=cluster.startup_nodes)) as (svc, web):
        sale = Sale(svc, cluster)
        first = pick_victim(cluster, sale.home_slot, "master of claim shards only")
        slots = sale.slots_of(first)
        on_it = sale.shards_in(slots)
        kills = []

        def kill_and_restart(node):
            kill = {"issued": sale.issued(), "down": time.monotonic(), "port": node.port}
            node.kill()
            kill["promoted"] = sale.promoted(slots, node)
            node.start()
            kill["rejoined"] = sale.rejoined()
            kills.append(kill)

        def kill_the_new_master():
            second = cluster.master_of(slots[0][0])
            assert second is not first
            kill_and_restart(second)
            assert cluster.master_of(slots[0][0]) is first  # the resynced node serves them again

        with once(lambda: sale.issued() >= 200, lambda: kill_and_restart(first)), \
                once(lambda: len(kills) == 1, kill_the_new_master):
            # paced slower, so that stock remains through both failovers
            answers, tokens = demand(web.url, sale.campaign_id, signer, sale.issued, seconds=90, pause=1.0)

        assert len(kills) == 2 and kills[1]["issued"] < STOCK, kills
        seen = sale.check_and_close(web, signer, answers, tokens,
                                    (kills[0]["down"], kills[1]["rejoined"] + REDIS_TIMEOUT), on_it,
                                    only_on_it=True)
        say("cluster, killed node back as a replica, then the new master killed",
            shards_on_it=sorted(on_it), issued_at_kills=[k["issued"] for k in kills],
            kill_to_promoted_s=[round(k["promoted"] - k["down"], 2) for k in kills],
            kill_to_rejoined_s=[round(k["rejoined"] - k["down"], 2) for k in kills],
            kill_to_writes_again_s=[first_write(answers, k["down"], on_it, sale.keys) for k in kills],
            **seen)
