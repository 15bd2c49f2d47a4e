"""Smoke test of the embedded default: SQLite instead of MySQL, same code paths, through real
gunicorn workers. Recover on SQLite: integration/test_recover.py."""
from coupon import create_app, queries
from loadtest.harness import Gunicorn, service_env, users
from tests.support import app_config, flood, issue_call


def test_first_run_on_sqlite(tmp_path, redis_target, signer):
    database_url = f"sqlite:///{tmp_path}/coupon.db"
    app = create_app(app_config(database_url, redis_target))
    runner = app.test_cli_runner()
    assert runner.invoke(args=["db", "init"]).exit_code == 0
    campaign_id = int(runner.invoke(args=["campaign", "create", "--name", "s", "--stock", "20"]).output)
    assert runner.invoke(args=["campaign", "open", str(campaign_id)]).exit_code == 0

    server = Gunicorn(service_env(database_url, redis_target), workers=2)
    try:
        results = flood([issue_call(server.url, campaign_id, u, t) for u, t in users(signer, 40)],
                        concurrency=40)
    finally:
        server.stop()
    assert sorted(status for _, status, _ in results) == [201] * 20 + [409] * 20
    assert len({body["serial"] for _, status, body in results if status == 201}) == 20
    assert queries.campaign_status(app.extensions["coupon"], campaign_id)["issued"] == 20
