"""The Redis the service talks to: a single Redis or a Redis Cluster, one code path for both.

It is the single Redis of REDIS_URL or, when REDIS_CLUSTER_NODES is set, a Redis Cluster. Above
this module there is one code path for both:

- a command on one key: `redis.hget(key, ...)`, its key first;
- commands on keys of several hash tags go in a `Batch`: one pipeline per node that serves
  them, their round trips overlapping;
- scripts run by EVALSHA on the node serving their keys, loaded again on a node that lacks
  them (a restarted Redis, a promoted replica).

On a cluster every command goes to the master of its key's slot, placed here from the key it
names, through plain per-node clients; redis-py's cluster client only keeps the slot map. Its
own command path is not used: its pipeline refuses EVALSHA and asks a default node (`COMMAND
GETKEYS`) where commands such as XREADGROUP go, so that node's death would stop everything; and
after a failure it reads the map again disconnecting the pools of healthy nodes, failing their
requests in flight. A MOVED or ASK is followed once; a node that fails costs only its own
commands. Every failure, the cluster's own included, is a RedisError: callers answer 503.

Replication is asynchronous: a master that dies before its replica has a write loses it at
failover. A durable batch (`batch(durable=True)`, `run(..., durable=True)`) ends each node's
pipeline with a barrier write and WAIT for REDIS_REPLICA_ACKS replicas. WAIT covers what the
connection itself last propagated; the barrier (a SET, always propagated) makes that everything the
node had done by then, other clients' writes included, so that what the batch read is covered
too (a ticket claimed by an earlier request, an outbox entry, a claimed bit). Short of replicas
within REDIS_REPLICA_TIMEOUT, every reply of that node is a NotReplicated error: the writes stand
on the master, but nothing may rely on them.
"""
import functools
import hashlib
import threading
import time

import gevent
import redis
from redis.backoff import NoBackoff
from redis.cluster import ClusterNode, RedisCluster
from redis.crc import key_slot
from redis.exceptions import (
    AskError, ConnectionError, MovedError, NoScriptError, RedisClusterException, RedisError,
    TimeoutError,
)
from redis.retry import Retry

REFRESH_EVERY = 0.25  # seconds: the slot map is read again at most this often after a failure
BARRIER_TTL_MS = 60_000  # the barrier keys go away by themselves once batches stop


class NotReplicated(RedisError):
    """A node ran the writes, but fewer replicas than REDIS_REPLICA_ACKS confirmed them in time."""


def barrier_key(key):
    """A key in the slot of `key`: where a durable batch writes its barrier on that node.

    The slot is its hash tag's, or the whole key taken as the tag."""
    start = key.find("{")
    end = key.find("}", start + 1)
    tag = key[start + 1:end] if start >= 0 and end > start + 1 else key
    return "{%s}:replicated" % tag


class Script:
    """A Lua script, known by its SHA1; loaded on a node only when the node says NOSCRIPT."""

    def __init__(self, text):
        self.text = text
        self.sha = hashlib.sha1(text.encode()).hexdigest()


class RedisNodes:
    """Commands on one key, batches, scripts, the node serving a key, and the primaries.

    A command on one key: `nodes.hget(key, ...)`."""

    def __init__(self, config):
        self.startup_nodes = [n.strip() for n in config["REDIS_CLUSTER_NODES"].split(",") if n.strip()]
        self.cluster = bool(self.startup_nodes)
        timeout = config["REDIS_TIMEOUT"]
        self._options = dict(
            max_connections=config["REDIS_POOL_SIZE"], socket_timeout=timeout,
            socket_connect_timeout=timeout, health_check_interval=30, decode_responses=True,
        )
        self._timeout = timeout
        acks = config["REDIS_REPLICA_ACKS"]
        self.replica_acks = int(self.cluster) if acks is None else acks
        # at most half of REDIS_TIMEOUT, so that the reply comes before the socket gives up; never
        # 0, which would wait for ever
        self.replica_timeout_ms = max(1, int(min(config["REDIS_REPLICA_TIMEOUT"], timeout / 2) * 1000))
        self._lock = threading.Lock()
        self._next_refresh = 0.0
        self._client = None if self.cluster else self._single(config["REDIS_URL"])

    def _single(self, url):
        """A client whose pool waits for a free connection instead of failing at once."""
        pool = redis.BlockingConnectionPool.from_url(url, timeout=self._timeout, **self._options)
        return redis.Redis(connection_pool=pool)

    def _connect_cluster(self):
        (host, port), *others = [n.rsplit(":", 1) for n in self.startup_nodes]
        try:
            return RedisCluster(
                url=f"redis://{host}:{port}/0",  # a URL, so that each node's pool is ours
                startup_nodes=[ClusterNode(h, int(p)) for h, p in others],
                connection_pool_class=functools.partial(redis.BlockingConnectionPool, timeout=self._timeout),
                require_full_coverage=False,  # the slots of live masters are served meanwhile
                retry=Retry(NoBackoff(), 0),
                **self._options,
            )
        except RedisClusterException as e:  # no startup node answered: try again next call
            raise ConnectionError(f"Redis Cluster: {e}") from e

    @property
    def client(self):
        """The single Redis's client, or the cluster's.

        Made at first use: a worker starts while the cluster is down, and answers 503 until it is
        up."""
        if self._client is None:
            with self._lock:
                if self._client is None:
                    self._client = self._connect_cluster()
        return self._client

    def __getattr__(self, command):
        """`nodes.hget(key, field)`: one command on one key (its first argument)."""
        if self.cluster:
            def one(key, *args, **kwargs):
                batch = self.batch()
                getattr(batch.on(key), command)(key, *args, **kwargs)
                return batch.execute()[0]
            return one
        return getattr(self._client, command)

    def client_for(self, key):
        """The plain client of the node serving `key` (on a single Redis: the client)."""
        if not self.cluster:
            return self._client
        try:
            node = self.client.nodes_manager.get_node_from_slot(key_slot(key.encode()))
        except RedisClusterException as e:  # the slot's master is unknown
            self.refresh()
            raise ConnectionError(f"Redis Cluster: {e}") from e
        if node.redis_connection is None:  # a master first heard of in a MOVED
            self.refresh(at_once=True)
            raise ConnectionError(f"Redis Cluster: {node.name} not connected yet")
        return node.redis_connection

    def client_at(self, host, port):
        node = self.client.get_node(host=host, port=port)
        if node is None:
            self.refresh(at_once=True)
            raise ConnectionError(f"Redis Cluster: no node {host}:{port} known")
        return node.redis_connection

    def primaries(self):
        """{name: client} of every master (the single Redis: one)."""
        if not self.cluster:
            return {"redis": self._client}
        return {node.name: node.redis_connection for node in self.client.get_primaries()}

    def refresh(self, at_once=False):
        """Read the slot map again after a node failed or a slot moved.

        At most once every REFRESH_EVERY seconds, however many requests saw the change (unless
        `at_once`)."""
        if not self.cluster or self._client is None:
            return
        now = time.monotonic()
        with self._lock:
            if now < self._next_refresh and not at_once:
                return
            self._next_refresh = now + REFRESH_EVERY
        try:  # without disconnecting the pools of the nodes it asks: they serve meanwhile
            self._client.nodes_manager.initialize(disconnect_startup_nodes_pools=False)
        except (RedisError, RedisClusterException):
            pass  # no node answered: the next failure tries again

    def time_at(self, key):
        """The clock (epoch ms, to the microsecond) of the node serving `key`.

        It is what its scripts stamp with."""
        seconds, micros = self.client_for(key).time()
        return seconds * 1000 + micros / 1000

    def run(self, script, keys, args, durable=False):
        """Run a script on the node serving its keys; its reply (durable: see the module)."""
        batch = self.batch(durable)
        batch.script(script, keys, args)
        return batch.execute()[0]

    def batch(self, durable=False):
        """A Batch, durable or not.

        durable: each node's replies only once REDIS_REPLICA_ACKS replicas hold its writes (else
        NotReplicated)."""
        return Batch(self, durable)


class Reply:
    """The reply of one command queued in a Batch, there once the batch has run.

    So each reply is read where its command was queued, never found by its position among the
    others."""

    __slots__ = ("raw",)

    def __init__(self):
        self.raw = None  # the reply, or the command's error (execute(raise_on_error=False))

    @property
    def failed(self):
        return isinstance(self.raw, Exception)

    def get(self):
        """The reply; the command's error raised."""
        if isinstance(self.raw, Exception):
            raise self.raw
        return self.raw


class _Queue:
    def __init__(self, batch, key):
        self._batch = batch
        self._key = key

    def __getattr__(self, method):
        def queue(*args, **kwargs):
            return self._batch._queue((self._key, method, args, kwargs, None))
        return queue


class Batch:
    """Commands on keys of any hash tags, as one pipeline per node serving them.

    Queue with `batch.on(key).hget(key, field)` (one command per `on`) or `batch.script(...)`,
    each of which returns its Reply; execute() fills them, and returns the replies in the order
    queued.

    A command a node redirected (MOVED after a failover, ASK during a slot migration) or could
    not run for want of its script is sent once more where it belongs; a node that failed
    answers its commands with the error (their outcome unknown: never sent again here).
    """

    def __init__(self, nodes, durable=False):
        self._nodes = nodes
        # durable: WAIT for (replicas, ms) after each node's commands; nothing when none are asked
        self._wait = ((nodes.replica_acks, nodes.replica_timeout_ms)
                      if durable and nodes.replica_acks else None)
        self._commands = []  # (key, method, args, kwargs, script or None)
        self._replies = []  # the Reply of each

    def on(self, key):
        return _Queue(self, key)

    def _queue(self, command):
        self._commands.append(command)
        self._replies.append(Reply())
        return self._replies[-1]

    def __len__(self):
        """Commands queued."""
        return len(self._commands)

    def script(self, script, keys, args):
        return self._queue((keys[0], "evalsha", (script.sha, len(keys), *keys, *args), {}, script))

    def execute(self, raise_on_error=True):
        replies = [None] * len(self._commands)
        groups = self._by_node(range(len(self._commands)), replies)
        for attempt in (1, 2):
            again = []
            for indexes, sent in zip(groups.values(), self._send_all(groups)):
                for i, reply in zip(indexes, sent):
                    replies[i] = reply
                    if attempt == 1 and isinstance(reply, (AskError, NoScriptError)):
                        again.append(i)
            if not again:
                break
            groups = self._redirect(again, replies)
        for reply, raw in zip(self._replies, replies):
            reply.raw = raw
        if raise_on_error:
            for reply in replies:
                if isinstance(reply, Exception):
                    raise reply
        return replies

    def _by_node(self, indexes, replies):
        groups = {}
        for i in indexes:
            try:
                client = self._nodes.client_for(self._commands[i][0])
            except RedisError as e:
                replies[i] = e
                continue
            groups.setdefault((client, False), []).append(i)
        return groups

    def _redirect(self, indexes, replies):
        """Where each command goes again.

        The new master of a moved slot, the node an ASK names (after ASKING), the same node once
        the script is loaded there."""
        groups, moved, loaded = {}, [], set()  # loaded: (node, script), once each
        for i in indexes:
            error = replies[i]
            try:
                if isinstance(error, MovedError):
                    self._nodes.client.nodes_manager.move_slot(error)
                    moved.append(i)
                    continue
                if isinstance(error, AskError):
                    target = (self._nodes.client_at(error.host, error.port), True)
                else:  # NOSCRIPT
                    client, script = self._nodes.client_for(self._commands[i][0]), self._commands[i][4]
                    if (client, script) not in loaded:
                        client.script_load(script.text)
                        loaded.add((client, script))
                    target = (client, False)
            except (RedisError, RedisClusterException) as e:
                replies[i] = e if isinstance(e, RedisError) else ConnectionError(str(e))
                continue
            groups.setdefault(target, []).append(i)
        if moved:
            self._nodes.refresh()
            for target, more in self._by_node(moved, replies).items():
                groups.setdefault(target, []).extend(more)
        return groups

    def _send_all(self, groups):
        """Each node's replies, the nodes' round trips overlapping.

        They run in greenlets: concurrent under the web workers' gevent, one after the other where
        sockets are not patched."""
        if len(groups) == 1:
            return [self._send(*target, indexes) for target, indexes in groups.items()]
        sent = [gevent.spawn(self._send, *target, indexes) for target, indexes in groups.items()]
        gevent.joinall(sent)
        return [greenlet.get() for greenlet in sent]  # get(): an unexpected error is raised here

    def _send(self, client, asking, indexes):
        pipe = client.pipeline(transaction=False)
        for i in indexes:
            _, method, args, kwargs, _ = self._commands[i]
            if asking:
                pipe.execute_command("ASKING")
            getattr(pipe, method)(*args, **kwargs)
        if self._wait:  # the barrier, then WAIT, on the same connection
            if asking:
                pipe.execute_command("ASKING")
            pipe.set(barrier_key(self._commands[indexes[0]][0]), 1, px=BARRIER_TTL_MS)
            pipe.execute_command("WAIT", *self._wait)
        try:
            replies = pipe.execute(raise_on_error=False)
        except RedisError as e:  # the node failed: each of its commands gets the error
            if isinstance(e, (ConnectionError, TimeoutError)):
                self._nodes.refresh()
            return [e] * len(indexes)
        if not self._wait:
            return replies[1::2] if asking else replies
        barrier, acked = replies[-2:]
        replies = replies[1:-3:2] if asking else replies[:-2]
        if isinstance(barrier, Exception) or isinstance(acked, Exception) or acked < self._wait[0]:
            why = barrier if isinstance(barrier, Exception) else f"{acked} of {self._wait[0]}"
            short = NotReplicated(f"replicas did not acknowledge in {self._wait[1]} ms: {why}")
            # a command refused (NOSCRIPT, MOVED, NOREPLICAS) wrote nothing: its own error stands
            return [reply if isinstance(reply, Exception) else short for reply in replies]
        return replies
