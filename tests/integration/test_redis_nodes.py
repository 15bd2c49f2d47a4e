"""coupon/redis_nodes.py against a real single Redis and the session's real Redis Cluster: one
command on one key, batches over keys of many hash tags (one pipeline per node, the replies in
the order queued), errors in their place, scripts loaded where a node lacks them, a MOVED
followed, and durable batches that wait for replicas."""
import time
import uuid

import pytest
from redis.crc import key_slot
from redis.exceptions import ResponseError

from coupon.keys import ACTIVE, SCHEDULER_LEADER
from coupon.redis_nodes import NotReplicated, RedisNodes, Script, barrier_key
from tests.support import on_single_and_cluster

TAGS = [f"{{t{i}}}:k" for i in range(12)]  # twelve hash tags: spread over every master of a cluster


def fresh_script():
    """A script no node has seen: its text (so its SHA1) of this call alone."""
    return Script(f"-- {uuid.uuid4()}\nreturn {{KEYS[1], ARGV[1], redis.call('INCR', KEYS[1])}}")


def nodes_of(svc, **settings):
    """A RedisNodes of the test app's settings, with some changed."""
    return RedisNodes({**svc.config, **settings})


@on_single_and_cluster
def test_one_command_goes_to_its_key(svc, redis_client):
    nodes = svc.redis
    for key in TAGS:
        nodes.set(key, key.upper())
    assert [redis_client.get(key) for key in TAGS] == [key.upper() for key in TAGS]
    assert [nodes.get(key) for key in TAGS] == [key.upper() for key in TAGS]
    assert nodes.hget("{t0}:absent", "field") is None


@on_single_and_cluster
def test_a_batch_answers_in_the_order_queued_over_every_node(svc, redis_client, redis_kind):
    nodes = svc.redis
    served_by = {id(nodes.client_for(key)) for key in TAGS}
    assert len(served_by) == (3 if redis_kind == "cluster" else 1)  # each master has some keys
    batch = nodes.batch()
    for i, key in enumerate(TAGS):
        batch.on(key).rpush(key, i, i + 1)
    assert len(batch) == len(TAGS)
    for key in reversed(TAGS):
        batch.on(key).lrange(key, 0, -1)
    replies = batch.execute()
    assert replies[:len(TAGS)] == [2] * len(TAGS)
    assert replies[len(TAGS):] == [[str(i), str(i + 1)] for i in reversed(range(len(TAGS)))]
    assert redis_client.lrange(TAGS[5], 0, -1) == ["5", "6"]


@on_single_and_cluster
def test_each_command_queued_holds_its_own_reply_or_its_error(svc, redis_client):
    nodes = svc.redis
    redis_client.set(TAGS[0], "a string")
    batch = nodes.batch()
    pushed = {key: batch.on(key).rpush(key, *"xy"[:1 + TAGS.index(key) % 2]) for key in TAGS[1:]}
    wrong = batch.on(TAGS[0]).lpush(TAGS[0], "x")  # WRONGTYPE
    read = batch.on(TAGS[0]).get(TAGS[0])
    assert read.raw is None  # nothing before the batch runs
    batch.execute(raise_on_error=False)
    assert {key: reply.get() for key, reply in pushed.items()} == {
        key: 1 + TAGS.index(key) % 2 for key in TAGS[1:]}  # each its own count, not a neighbour's
    assert wrong.failed and "WRONGTYPE" in str(wrong.raw)
    with pytest.raises(ResponseError, match="WRONGTYPE"):
        wrong.get()
    assert not read.failed and read.get() == "a string"


@on_single_and_cluster
def test_an_error_takes_the_place_of_its_reply_and_the_rest_are_run(svc, redis_client):
    nodes = svc.redis
    redis_client.set(TAGS[0], "a string")

    def queued():
        batch = nodes.batch()
        batch.on(TAGS[1]).set(TAGS[1], "before")
        batch.on(TAGS[0]).hget(TAGS[0], "field")  # WRONGTYPE
        batch.on(TAGS[2]).set(TAGS[2], "after")
        return batch

    first, error, last = queued().execute(raise_on_error=False)
    assert first is True and last is True
    assert isinstance(error, ResponseError) and "WRONGTYPE" in str(error)
    assert (redis_client.get(TAGS[1]), redis_client.get(TAGS[2])) == ("before", "after")
    with pytest.raises(ResponseError, match="WRONGTYPE"):
        queued().execute()


@on_single_and_cluster
def test_a_script_is_loaded_on_a_node_that_lacks_it(svc, redis_client):
    """As on a restarted Redis or a replica just promoted: NOSCRIPT, loaded, run, once each."""
    nodes, script = svc.redis, fresh_script()
    assert nodes.run(script, [TAGS[0]], ["a"]) == [TAGS[0], "a", 1]
    batch = nodes.batch()
    for key in TAGS:  # the other nodes lack it still
        batch.script(script, [key], [key])
    assert batch.execute() == [[key, key, 1 + (key == TAGS[0])] for key in TAGS]
    for client in nodes.primaries().values():
        assert client.script_exists(script.sha) == [True]
    assert redis_client.get(TAGS[0]) == "2"


@pytest.mark.parametrize("redis_kind", ["cluster"])
def test_a_command_sent_to_the_wrong_master_follows_its_moved_once(svc, redis_client):
    """A slot map out of date (a failover, a slot migrated): the master asked answers MOVED; the
    command goes again to the master it names, and the map is right from then on."""
    nodes = svc.redis
    key = TAGS[0]
    redis_client.set(key, "here")
    slot = key_slot(key.encode())
    manager = nodes.client.nodes_manager
    owner = manager.slots_cache[slot][0]
    stranger = next(node for node in nodes.client.get_primaries() if node.name != owner.name)
    manager.slots_cache[slot] = [stranger]  # what the map said before the slot moved
    assert nodes.client_for(key) is stranger.redis_connection

    batch = nodes.batch()
    batch.on(key).get(key)
    batch.on(key).set(key, "moved")
    assert batch.execute() == ["here", True]
    assert manager.slots_cache[slot][0].name == owner.name
    assert redis_client.get(key) == "moved"


@on_single_and_cluster
def test_the_barrier_of_a_key_is_in_its_slot(svc, redis_kind):
    keys = [*TAGS, *svc.keys(12).every_key(1), ACTIVE, SCHEDULER_LEADER, "no tag", "{open:brace"]
    for key in keys:
        barrier = barrier_key(key)
        assert barrier.endswith(":replicated")
        assert key_slot(barrier.encode()) == key_slot(key.encode()), (key, barrier)
        if redis_kind == "cluster":  # and as the node itself places it
            client = svc.redis.client_for(key)
            slots = [client.execute_command("CLUSTER", "KEYSLOT", k) for k in (barrier, key)]
            assert slots[0] == slots[1], (key, barrier)


@on_single_and_cluster
def test_a_durable_batch_short_of_replicas_is_not_replicated_but_stands(svc, redis_client, redis_kind):
    """Asking for more replicas than any master has: every reply of the batch is NotReplicated,
    an error of its own excepted; the writes stand on the master all the same."""
    nodes = nodes_of(svc, REDIS_REPLICA_ACKS=2, REDIS_REPLICA_TIMEOUT=0.05)  # the cluster: 1 each
    redis_client.set(TAGS[0], "a string")
    batch = nodes.batch(durable=True)
    batch.on(TAGS[1]).set(TAGS[1], "written")
    batch.on(TAGS[0]).hget(TAGS[0], "field")  # WRONGTYPE: wrote nothing, its own error stands
    started = time.monotonic()
    written, wrong = batch.execute(raise_on_error=False)
    assert time.monotonic() - started < 1.0  # waited REDIS_REPLICA_TIMEOUT, not for ever
    assert isinstance(written, NotReplicated), written
    assert f"{1 if redis_kind == 'cluster' else 0} of 2" in str(written)
    assert isinstance(wrong, ResponseError) and not isinstance(wrong, NotReplicated)
    assert redis_client.get(TAGS[1]) == "written"
    assert redis_client.get(barrier_key(TAGS[1])) == "1"
    assert 0 < redis_client.pttl(barrier_key(TAGS[1])) <= 60_000


@on_single_and_cluster
def test_a_durable_batch_with_its_replicas_answers_as_any(svc, redis_client, redis_kind):
    """On the cluster each master has its replica: WAIT 1 is met. On the single Redis no
    replica is asked for by default: a durable batch is a plain one."""
    nodes = nodes_of(svc, REDIS_REPLICA_ACKS=None)
    assert nodes.replica_acks == (1 if redis_kind == "cluster" else 0)
    batch = nodes.batch(durable=True)
    for key in TAGS:
        batch.on(key).incr(key)
    assert batch.execute() == [1] * len(TAGS)
    # one barrier a node, in the slot of the first key queued for it
    first_of_node = {}
    for key in TAGS:
        first_of_node.setdefault(id(nodes.client_for(key)), key)
    barriers = [key for key in TAGS if redis_client.exists(barrier_key(key))]
    assert barriers == (sorted(first_of_node.values(), key=TAGS.index) if redis_kind == "cluster" else [])


@on_single_and_cluster
def test_time_at_is_the_clock_of_the_node_serving_the_key(svc):
    before = time.time() * 1000
    stamps = [svc.redis.time_at(key) for key in TAGS]
    after = time.time() * 1000
    assert all(before - 5 <= stamp <= after + 5 for stamp in stamps)  # one host: one clock
    assert any(stamp != int(stamp) for stamp in stamps)  # to the microsecond
