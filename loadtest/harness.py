"""What the tests and the benchmarks start: real servers on free loopback ports (gunicorn as
`gunicorn -k gevent app:app`, `flask jobs run`, redis-server, a Redis Cluster), a fresh database,
a campaign opened at once, users with tokens. Every process is stopped by its pid."""
import contextlib
import http.client
import os
import signal
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from typing import NamedTuple

import redis
from redis.cluster import RedisCluster
from sqlalchemy import create_engine, text
from sqlalchemy.engine import make_url

from coupon import campaigns
from coupon.db import init_db, make_engine

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SECRET = "test-secret-not-for-production"
# gunicorn of the virtualenv this runs in, as a user types it
GUNICORN = os.path.join(os.path.dirname(sys.executable), "gunicorn")
# where the servers log unless told otherwise (the test suite: a folder per run, tests/conftest.py)
LOG_DIR = os.path.join(ROOT, "instance", "logs")


def log_file(name):
    """A new log file of that name in LOG_DIR, opened for writing and reading."""
    os.makedirs(LOG_DIR, exist_ok=True)
    return open(os.path.join(LOG_DIR, name), "w+")


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_until(check, timeout=20.0, interval=0.05, what="condition"):
    """Poll check() until it returns a truthy value; fail after timeout seconds."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            value = check()
            if value:
                return value
        except Exception:
            if time.monotonic() > deadline:
                raise
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out waiting for {what}")
        time.sleep(interval)


class RedisTarget(NamedTuple):
    """Where the service under test keeps its live state: a single Redis (its URL), or a
    Redis Cluster (its startup nodes)."""

    url: str = "redis://127.0.0.1:6379/0"
    cluster_nodes: str = ""

    @classmethod
    def of(cls, target):
        """A RedisTarget, or the URL of a single Redis."""
        return target if isinstance(target, cls) else cls(target)

    def settings(self):
        return dict(REDIS_URL=self.url, REDIS_CLUSTER_NODES=self.cluster_nodes)

    def client(self):
        """A client to look at what the service wrote (decoded)."""
        if self.cluster_nodes:
            host, port = self.cluster_nodes.split(",")[0].split(":")
            return RedisCluster(host=host, port=int(port), decode_responses=True)
        return redis.Redis.from_url(self.url, decode_responses=True)


def service_env(database_url, redis_target, **extra):
    """The environment of a service process (gunicorn, `flask jobs run`); extra overrides any
    setting, SECRET_KEY too. The settings file named does not exist: instance/settings.py is
    not read."""
    env = dict(os.environ)
    env.update(
        DATABASE_URL=database_url, SECRET_KEY=SECRET, **RedisTarget.of(redis_target).settings(),
        COUPON_SETTINGS=os.path.join(ROOT, "tests", "no-settings-file.py"),
        PYTHONPATH=ROOT,
    )
    env.update({k: str(v) for k, v in extra.items()})
    return env


def terminate(proc, timeout):
    """Stop a process gracefully (SIGTERM); kill it if it has not exited after timeout seconds."""
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


class ChildProcess:
    """A process a test started (self.proc, logging to self.log), stopped by its pid."""

    stop_timeout = 20  # seconds between SIGTERM and kill

    def kill(self):
        """Die at once (kill -9), without a chance to clean up."""
        self.proc.kill()
        self.proc.wait()

    def stop(self, timeout=None):
        terminate(self.proc, timeout or self.stop_timeout)
        self.log.close()


class Gunicorn(ChildProcess):
    """A real gunicorn master started as the design card says, `gunicorn -k gevent app:app` in the
    repository root (so with ./gunicorn.conf.py), serving `app` on a free loopback port (BIND),
    ready once /healthz answers; with options, as `gunicorn -k gevent -w N -b ADDR app:app` instead.
    It logs to `log_path` (default LOG_DIR/gunicorn-<port>.log); with private_metrics, its
    PROMETHEUS_MULTIPROC_DIR is a fresh temporary folder, removed on stop, so that /metrics counts
    this server's requests only."""

    def __init__(self, env, workers=2, app="app:app", log_path=None, private_metrics=False,
                 options=False, **settings):
        self.app = app
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.command = [GUNICORN, "-k", "gevent", app]
        if options:  # the command line overrides what gunicorn.conf.py reads from the environment
            self.command[3:3] = ["-w", str(workers), "-b", f"127.0.0.1:{self.port}"]
        env = dict(env, BIND=f"127.0.0.1:{self.port}", WEB_WORKERS=str(workers), LOG_LEVEL="warning")
        if options:
            del env["BIND"], env["WEB_WORKERS"]
        self.metrics_dir = tempfile.mkdtemp(prefix="gunicorn-prom-") if private_metrics else None
        if self.metrics_dir:
            env["PROMETHEUS_MULTIPROC_DIR"] = self.metrics_dir
        env.update({k: str(v) for k, v in settings.items()})
        self.log = open(log_path, "w+") if log_path else log_file(f"gunicorn-{self.port}.log")
        self.log_path = self.log.name
        self.proc = subprocess.Popen(self.command, cwd=ROOT, env=env, stdout=self.log,
                                     stderr=subprocess.STDOUT)
        try:
            wait_until(self._healthy, timeout=30, what=f"gunicorn {app} to answer /healthz")
        except BaseException:
            self.stop()
            raise

    def _healthy(self):
        if self.proc.poll() is not None:
            self.log.seek(0)
            raise RuntimeError(f"gunicorn {self.app} exited ({self.log_path}):\n" + self.log.read())
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=5)
        try:
            conn.request("GET", "/healthz")
            return conn.getresponse().status == 200
        finally:
            conn.close()

    def worker_pids(self):
        out = subprocess.run(["ps", "-o", "pid=", "--ppid", str(self.proc.pid)],
                             capture_output=True, text=True).stdout
        return [int(p) for p in out.split()]

    stop_timeout = 30

    def stop(self, timeout=None):
        super().stop(timeout)
        if self.metrics_dir:
            shutil.rmtree(self.metrics_dir, ignore_errors=True)


class Scheduler(ChildProcess):
    """A real `flask jobs run` process (the APScheduler leader or a standby), logging to
    `log_path` (default LOG_DIR/jobs-<ns>.log)."""

    def __init__(self, env, log_path=None, **settings):
        env = dict(env, FLASK_APP="app.py", **{k: str(v) for k, v in settings.items()})
        self.log = open(log_path, "w+") if log_path else log_file(f"jobs-{time.time_ns()}.log")
        self.log_path = self.log.name
        self.proc = subprocess.Popen([sys.executable, "-m", "flask", "jobs", "run"], cwd=ROOT, env=env,
                                     stdout=self.log, stderr=subprocess.STDOUT)

    def output(self):
        with open(self.log_path) as f:
            return f.read()


def fresh_database(database_url):
    """Drop and create the database of `database_url` (a SQLite file is only added to), with
    the tables."""
    url = make_url(database_url)
    if url.get_backend_name() != "sqlite":
        server = create_engine(url.set(database=""))
        with server.begin() as conn:
            conn.execute(text(f"DROP DATABASE IF EXISTS `{url.database}`"))
            conn.execute(text(f"CREATE DATABASE `{url.database}` CHARACTER SET utf8mb4"))
        server.dispose()
    engine = make_engine(database_url)
    init_db(engine)
    engine.dispose()


def open_campaign(svc, stock, name="flood"):
    """Create a campaign of `stock` coupons and open it; return its id."""
    campaign_id = campaigns.create_campaign(svc, name, stock)
    campaigns.open_campaign(svc, campaign_id)
    return campaign_id


def users(signer, count, prefix="u", ttl=None):
    """[(user id, bearer token)] of users <prefix>0 .. <prefix><count - 1>."""
    return [(f"{prefix}{i}", signer.mint(f"{prefix}{i}", ttl)) for i in range(count)]


class RedisServer(ChildProcess):
    """A private `redis-server` on a free loopback port, logging every write to an append-only
    file in `folder` (fsync per `appendfsync`; "no file": none), so that it can be killed (what
    is not in the append-only file is lost) and started again. `extra`: more arguments."""

    stop_timeout = 10

    def __init__(self, folder, appendfsync="always", *extra, detach=False):
        self.folder = str(folder)
        self.port = free_port()
        self.url = f"redis://127.0.0.1:{self.port}/0"
        aof = ["--appendonly", "no"] if appendfsync == "no file" else \
            ["--appendonly", "yes", "--appendfsync", appendfsync]
        self.args = ["redis-server", "--port", str(self.port), "--bind", "127.0.0.1",
                     "--dir", self.folder, *aof, "--save", "", *extra]
        self.detach = detach  # in a session of its own: it outlives this process (make cluster)
        self.log = open(os.path.join(self.folder, "redis-server.log"), "a")
        self.proc = None
        self.start()

    def start(self):
        self.proc = subprocess.Popen(self.args, stdout=self.log, stderr=subprocess.STDOUT,
                                     start_new_session=self.detach)
        with self.client() as client:
            wait_until(client.ping, timeout=10, what="redis-server to answer PING")

    def client(self, timeout=2):
        return redis.Redis(port=self.port, socket_timeout=timeout, decode_responses=True)

    def info(self, section):
        with self.client() as client:
            return client.info(section)


class LocalCluster:
    """A real Redis Cluster on free loopback ports: `masters` masters, each with one replica
    (`redis-server --cluster-enabled yes` joined by `redis-cli --cluster create`), every node a
    RedisServer in its own folder under `folder`, stopped by its pid. The tests' session cluster,
    the fault tests' own ones, and `make cluster` (loadtest/cluster.py).

    A master takes writes only while its replica is linked and has acknowledged within
    `max_lag_s` seconds (min-replicas-to-write 1): one cut off from its replica, or a promoted
    replica whose old master has not come back as its replica, refuses writes (NOREPLICAS)."""

    def __init__(self, folder, masters=3, node_timeout_ms=3000, appendfsync="no file", extra=(),
                 detach=False, max_lag_s=10):
        self.folder = str(folder)
        self.nodes = []
        try:
            for i in range(2 * masters):
                node_folder = os.path.join(self.folder, f"node-{i}")
                os.makedirs(node_folder, exist_ok=True)
                self.nodes.append(RedisServer(
                    node_folder, appendfsync, "--cluster-enabled", "yes",
                    "--cluster-config-file", "nodes.conf", "--cluster-port", str(free_port()),
                    "--cluster-node-timeout", str(node_timeout_ms),
                    # a master down stops only its own slots, not the whole cluster
                    "--cluster-require-full-coverage", "no",
                    "--min-replicas-to-write", "1", "--min-replicas-max-lag", str(max_lag_s),
                    # a node back after a failover syncs from its new master at once, not 5 s later
                    "--repl-diskless-sync-delay", "0",
                    *extra, detach=detach))
            subprocess.run(["redis-cli", "--cluster", "create", *(f"127.0.0.1:{n.port}" for n in self.nodes),
                            "--cluster-replicas", "1", "--cluster-yes"],
                           check=True, capture_output=True, timeout=60)
            self.wait_healthy(masters)
        except BaseException:
            self.stop()
            raise

    @property
    def startup_nodes(self):
        """REDIS_CLUSTER_NODES for this cluster."""
        return ",".join(f"127.0.0.1:{n.port}" for n in self.nodes)

    def live(self):
        return [n for n in self.nodes if n.proc.poll() is None]

    def wait_healthy(self, masters=3, timeout=60):
        """Until every live node says cluster_state:ok and `masters` masters each have a replica
        whose link to it is up, and take writes."""
        def healthy():
            for node in self.live():
                with node.client() as client:
                    if client.cluster("info")["cluster_state"] != "ok":
                        return False
            replicas = [n.info("replication") for n in self.live()]
            linked = [r for r in replicas if r["role"] == "slave" and r["master_link_status"] == "up"]
            # and each master counts its replica as good: it takes writes (min-replicas-to-write)
            writable = [r for r in replicas
                        if r["role"] == "master" and r.get("min_slaves_good_slaves", 1) >= 1]
            return len(writable) == masters and len(linked) >= masters
        wait_until(healthy, timeout=timeout, interval=0.2, what="the cluster to be ok, every replica linked")

    def slot_map(self):
        """[(first slot, last slot, port of its master)] as the first live node that answers
        sees the cluster (one may hang: SIGSTOP)."""
        for node in self.live():
            try:
                with node.client(timeout=0.5) as client:
                    slots = client.execute_command("CLUSTER SLOTS")
            except redis.RedisError:
                continue
            return [(first, last, int(master[1])) for first, last, master, *_ in slots]
        raise RuntimeError("no node of the cluster answers")

    def master_of(self, slot):
        """The node that serves `slot` as master (None if that master is dead)."""
        port = next(port for first, last, port in self.slot_map() if first <= slot <= last)
        return next((n for n in self.live() if n.port == port), None)

    def masters(self):
        ports = {port for _, _, port in self.slot_map()}
        return [n for n in self.live() if n.port in ports]

    def replica_of(self, master):
        """The live node that replicates `master`."""
        return next(n for n in self.live() if n is not master and
                    n.info("replication").get("master_port") == master.port)

    def flush(self):
        for node in self.live():
            if node.info("replication")["role"] == "master":
                with node.client() as client:
                    client.flushall()

    def stop(self):
        for node in self.nodes:
            node.stop()


# -- what the benchmarks measure with --------------------------------------------------------------

CLOCK_TICK = os.sysconf("SC_CLK_TCK")  # /proc's unit of CPU time, per second


def cpu_seconds(pid, thread=None):
    """User + system CPU seconds of a process so far, all its threads (or of one of its threads,
    by its tid), from /proc; None once it is gone."""
    path = f"/proc/{pid}/task/{thread}/stat" if thread else f"/proc/{pid}/stat"
    try:
        with open(path) as f:
            fields = f.read().rsplit(")", 1)[1].split()  # the name, in parentheses, may hold spaces
    except (FileNotFoundError, ProcessLookupError):
        return None
    return (int(fields[11]) + int(fields[12])) / CLOCK_TICK  # utime, stime: fields 14 and 15 of stat


def web_cpu_seconds(servers):
    """CPU seconds the Gunicorn servers' masters and workers have used so far."""
    return sum(cpu_seconds(pid) or 0.0 for server in servers
               for pid in (server.proc.pid, *server.worker_pids()))


def threads_cpu_seconds(pid):
    """{tid: CPU seconds so far} of every thread of a process."""
    try:
        tids = os.listdir(f"/proc/{pid}/task")
    except FileNotFoundError:
        return {}
    seconds = {int(tid): cpu_seconds(pid, tid) for tid in tids}
    return {tid: s for tid, s in seconds.items() if s is not None}


def machine_cpu_seconds():
    """The CPU seconds every process of this machine has used so far, all cores (/proc/stat)."""
    with open("/proc/stat") as f:
        user, nice, system, _idle, _iowait, irq, softirq = map(int, f.readline().split()[1:8])
    return (user + nice + system + irq + softirq) / CLOCK_TICK


def pid_of(name):
    """The pid of a process of this machine whose command name is `name` (the lowest), or None."""
    for entry in sorted((e for e in os.listdir("/proc") if e.isdigit()), key=int):
        try:
            with open(f"/proc/{entry}/comm") as f:
                if f.read().strip() == name:
                    return int(entry)
        except OSError:  # gone meanwhile
            pass
    return None


def wrk_command(url, tokens_file, seconds, connections, threads=2):
    """wrk sending each request with the next user's token of `tokens_file` (loadtest/tokens.lua),
    for at most `seconds`; its last line of output is one JSON object of its figures."""
    return ["wrk", "-t", str(threads), "-c", str(connections), "-d", f"{seconds}s", "--timeout", "5s",
            "-s", os.path.join(ROOT, "loadtest", "tokens.lua"), url, "--", tokens_file, str(threads)]


def reap_with_cpu(proc):
    """Wait for a child process to exit; its user + system CPU seconds (os.wait4's)."""
    _, status, usage = os.wait4(proc.pid, 0)
    proc.returncode = os.waitstatus_to_exitcode(status)
    return usage.ru_utime + usage.ru_stime


@contextlib.contextmanager
def private_redis(kind, folder):
    """A private Redis of `kind` on free loopback ports, without an append-only file: "single", a
    RedisServer, or "cluster", a LocalCluster of 3 masters with a replica each; yields (it, its
    RedisTarget) and stops it by pid after."""
    os.makedirs(folder, exist_ok=True)
    server = RedisServer(folder, "no file") if kind == "single" else LocalCluster(folder)
    try:
        yield server, (RedisTarget(server.url) if kind == "single"
                       else RedisTarget(cluster_nodes=server.startup_nodes))
    finally:
        server.stop()
