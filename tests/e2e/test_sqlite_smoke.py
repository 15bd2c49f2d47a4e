"""Smoke test of the embedded default: SQLite instead of MySQL, same code paths."""
from sqlalchemy import delete

from coupon import create_app, db, queries
from coupon.flusher import Flusher
from loadtest.harness import Gunicorn, open_campaign, service_env, users
from tests.support import app_config, assert_rebuilt_from, flood, issue_call, issue_directly, lose, rows_of


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


def test_recover_on_sqlite(tmp_path, redis_target, redis_client):
    """Recover reads SQLite's rows one by one (MySQL's come aggregated): the same state."""
    app = create_app(app_config(f"sqlite:///{tmp_path}/coupon.db", redis_target))
    runner = app.test_cli_runner()
    assert runner.invoke(args=["db", "init"]).exit_code == 0
    svc = app.extensions["coupon"]
    campaign_id = open_campaign(svc, 10, "recover sqlite")
    for user in ("r1", "r2", "r3", "r4"):
        issue_directly(svc, campaign_id, user)
    Flusher(svc, consumer="test").flush([campaign_id])
    with svc.engine.begin() as conn:  # a serial between the rows that no row holds
        conn.execute(delete(db.coupons).where(db.coupons.c.user_id == "r2"))
    lose(svc, campaign_id)
    assert runner.invoke(args=["campaign", "recover", str(campaign_id)]).exit_code == 0
    rows = rows_of(svc, campaign_id)
    assert sorted(rows) == ["r1", "r3", "r4"]
    assert_rebuilt_from(redis_client, svc.keys(campaign_id), rows, queries.campaign_row(svc.engine, campaign_id))
    svc.engine.dispose()
