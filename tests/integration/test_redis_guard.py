"""coupon/redis_guard.py in this process against the session's real Redis Cluster: every master
is checked, and one set to evict makes /readyz 503 naming it. On private servers, with real
gunicorn and scheduler processes: e2e/test_redis_guard.py."""
from coupon import create_app, redis_guard
from loadtest.harness import RedisTarget
from tests.support import app_config


def test_every_master_of_a_cluster_is_checked(mysql_url, session_cluster, monkeypatch):
    monkeypatch.setattr(redis_guard, "CHECK_EVERY", 0)
    target = RedisTarget(cluster_nodes=session_cluster.startup_nodes)
    app = create_app(app_config(mysql_url, target, ENV="production"))
    client = app.test_client()
    assert client.get("/readyz").status_code == 200  # no append-only file: its replicas keep claims
    master = session_cluster.masters()[1]
    try:
        with master.client() as admin:
            admin.config_set("maxmemory-policy", "volatile-lru")
        response = client.get("/readyz")
        assert response.status_code == 503
        settings = response.json["checks"]["redis settings"]
        assert settings.startswith(f"Redis 127.0.0.1:{master.port} has maxmemory-policy volatile-lru")
        assert settings.count("Redis 127.0.0.1:") == 1  # that master only
    finally:
        with master.client() as admin:
            admin.config_set("maxmemory-policy", "noeviction")
    assert client.get("/readyz").status_code == 200
    app.extensions["coupon"].engine.dispose()
