"""Helpers the tests share: real servers on free ports, real concurrent clients."""
import http.client
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import redis

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SECRET = "test-secret-not-for-production"


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


def service_env(database_url, redis_url, **extra):
    env = dict(os.environ)
    env.update(
        DATABASE_URL=database_url, REDIS_URL=redis_url, SECRET_KEY=SECRET,
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


class Gunicorn:
    """A real `gunicorn -k gevent app:app` master on a free loopback port."""

    def __init__(self, env, workers=2, **settings):
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        env = dict(env, BIND=f"127.0.0.1:{self.port}", WEB_WORKERS=str(workers), LOG_LEVEL="warning")
        env.update({k: str(v) for k, v in settings.items()})
        self.log = open(os.path.join(ROOT, "instance", f"gunicorn-{self.port}.log"), "w+")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "gunicorn", "-c", "config/gunicorn.conf.py",
             "--no-control-socket", "app:app"],
            cwd=ROOT, env=env, stdout=self.log, stderr=subprocess.STDOUT,
        )
        try:
            wait_until(self._healthy, timeout=30, what="gunicorn to answer /healthz")
        except BaseException:
            self.stop()
            raise

    def _healthy(self):
        if self.proc.poll() is not None:
            self.log.seek(0)
            raise RuntimeError("gunicorn exited:\n" + self.log.read())
        return get(self.url, "/healthz")[0] == 200

    def worker_pids(self):
        out = subprocess.run(["ps", "-o", "pid=", "--ppid", str(self.proc.pid)],
                             capture_output=True, text=True).stdout
        return [int(p) for p in out.split()]

    def stop(self, timeout=30):
        terminate(self.proc, timeout)
        self.log.close()


class Scheduler:
    """A real `flask jobs run` process (the APScheduler leader or a standby)."""

    def __init__(self, env, **settings):
        env = dict(env, FLASK_APP="app.py", **{k: str(v) for k, v in settings.items()})
        self.log_path = os.path.join(ROOT, "instance", f"jobs-{time.time_ns()}.log")
        self.log = open(self.log_path, "w")
        self.proc = subprocess.Popen([sys.executable, "-m", "flask", "jobs", "run"], cwd=ROOT, env=env,
                                     stdout=self.log, stderr=subprocess.STDOUT)

    def output(self):
        with open(self.log_path) as f:
            return f.read()

    def kill(self):
        """Die without a chance to clean up (kill -9)."""
        self.proc.kill()
        self.proc.wait()

    def stop(self, timeout=20):
        terminate(self.proc, timeout)
        self.log.close()


def request(base_url, method, path, token=None, body=None, headers=None, timeout=30):
    """One HTTP request on a fresh connection; returns (status, parsed JSON body, headers)."""
    host, port = base_url.split("//")[1].split(":")
    conn = http.client.HTTPConnection(host, int(port), timeout=timeout)
    hdrs = dict(headers or {})
    if token:
        hdrs["Authorization"] = f"Bearer {token}"
    try:
        conn.request(method, path, body=body, headers=hdrs)
        resp = conn.getresponse()
        raw = resp.read()
        return resp.status, json.loads(raw) if raw else None, dict(resp.getheaders())
    finally:
        conn.close()


def get(base_url, path, token=None):
    status, body, _ = request(base_url, "GET", path, token)
    return status, body


def flood(calls, concurrency=100):
    """Run calls (zero-argument functions) from `concurrency` threads; the first wave starts at once."""
    wave = min(concurrency, len(calls))
    arrived, go, lock = [0], threading.Event(), threading.Lock()

    def run(call):
        with lock:
            arrived[0] += 1
            if arrived[0] >= wave:
                go.set()
        go.wait(timeout=10)
        return call()

    with ThreadPoolExecutor(max_workers=concurrency) as pool:
        return list(pool.map(run, calls))


def issue_call(base_url, campaign_id, user_id, token):
    def call():
        status, body, _ = request(base_url, "POST", f"/api/v1/campaigns/{campaign_id}/issue", token)
        return user_id, status, body

    return call


class RedisServer:
    """A private `redis-server` on a free loopback port, logging every write to an append-only
    file in `folder` (fsync per `appendfsync`), so that it can be killed and started again."""

    def __init__(self, folder, appendfsync="always"):
        self.folder = str(folder)
        self.port = free_port()
        self.url = f"redis://127.0.0.1:{self.port}/0"
        self.args = ["redis-server", "--port", str(self.port), "--bind", "127.0.0.1",
                     "--dir", self.folder, "--appendonly", "yes", "--appendfsync", appendfsync,
                     "--save", ""]
        self.log = open(os.path.join(self.folder, "redis-server.log"), "a")
        self.proc = None
        self.start()

    def start(self):
        self.proc = subprocess.Popen(self.args, stdout=self.log, stderr=subprocess.STDOUT)
        client = redis.Redis(port=self.port, socket_timeout=1)
        try:
            wait_until(client.ping, timeout=10, what="redis-server to answer PING")
        finally:
            client.close()

    def kill(self):
        """Die at once (kill -9): what is not in the append-only file is lost."""
        self.proc.kill()
        self.proc.wait()

    def stop(self, timeout=10):
        terminate(self.proc, timeout)
        self.log.close()


class TcpProxy:
    """A loopback TCP forwarder to `upstream` that a test can cut (listener and every connection
    closed, so clients see refused and dropped connections) and restore on the same port."""

    def __init__(self, upstream_port, upstream_host="127.0.0.1"):
        self.upstream = (upstream_host, upstream_port)
        self.port = free_port()
        self._lock = threading.Lock()
        self._sockets = set()
        self._listener = None
        self.restore()

    def restore(self):
        listener = socket.socket()
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        listener.bind(("127.0.0.1", self.port))
        listener.listen(128)
        self._listener = listener
        threading.Thread(target=self._accept, args=(listener,), daemon=True).start()

    def cut(self):
        listener, self._listener = self._listener, None
        if listener is not None:
            _close(listener)  # shutdown() wakes the thread blocked in accept()
        with self._lock:
            sockets, self._sockets = self._sockets, set()
        for sock in sockets:
            _close(sock)

    def _accept(self, listener):
        while True:
            try:
                client, _ = listener.accept()
            except OSError:
                return  # cut
            try:
                upstream = socket.create_connection(self.upstream, timeout=5)
                upstream.settimeout(None)
            except OSError:
                client.close()
                continue
            with self._lock:
                if listener is not self._listener:  # cut meanwhile
                    _close(client), _close(upstream)
                    return
                self._sockets.update((client, upstream))
            for src, dst in ((client, upstream), (upstream, client)):
                threading.Thread(target=self._pipe, args=(src, dst), daemon=True).start()

    def _pipe(self, src, dst):
        try:
            while data := src.recv(65536):
                dst.sendall(data)
        except OSError:
            pass
        finally:
            with self._lock:
                self._sockets.difference_update((src, dst))
            _close(src), _close(dst)


def _close(sock):
    try:
        sock.shutdown(socket.SHUT_RDWR)
    except OSError:
        pass
    sock.close()
