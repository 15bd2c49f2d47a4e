"""The operator CLI through Flask's test runner, against the real database and Redis."""
import json

import pytest

from config.settings import DEV_SECRET_KEY
from coupon import campaigns, create_app
from coupon.signing import Signer
from loadtest.harness import SECRET
from tests.support import app_config, on_single_and_cluster


def test_db_init_is_idempotent(runner):
    for _ in range(2):
        result = runner.invoke(args=["db", "init"])
        assert result.exit_code == 0 and "tables ready" in result.output


@on_single_and_cluster
def test_campaign_lifecycle(runner, client):
    created = runner.invoke(args=["campaign", "create", "--name", "Black Friday", "--stock", "3"])
    assert created.exit_code == 0, created.output
    campaign_id = int(created.output.strip())

    status = json.loads(runner.invoke(args=["campaign", "status", str(campaign_id)]).output)
    assert (status["status"], status["total"], status["issued"]) == ("pending", 3, 0)

    assert runner.invoke(args=["campaign", "open", str(campaign_id)]).exit_code == 0
    token = runner.invoke(args=["token", "alice"]).output.strip()
    response = client.post(f"/api/v1/campaigns/{campaign_id}/issue", headers={"Authorization": f"Bearer {token}"})
    assert response.status_code == 201

    listed = runner.invoke(args=["campaign", "list"]).output
    assert f"{campaign_id}\topen\t1/3\tBlack Friday" in listed

    assert runner.invoke(args=["campaign", "close", str(campaign_id)]).exit_code == 0
    status = json.loads(runner.invoke(args=["campaign", "status", str(campaign_id)]).output)
    assert status["status"] == "closed"
    reopened = runner.invoke(args=["campaign", "open", str(campaign_id)])
    assert reopened.exit_code == 1 and "INVALID_CAMPAIGN" in reopened.output


def test_campaign_create_rejects_bad_input(runner):
    for args in (["--name", "x", "--stock", "0"], ["--name", "x", "--stock", "abc"],
                 ["--name", "x", "--stock", "5", "--opens-at", "tomorrow"],
                 ["--name", "x", "--stock", "5", "--opens-at", "2030-01-02", "--closes-at", "2030-01-01"],
                 ["--name", " ", "--stock", "5"]):
        result = runner.invoke(args=["campaign", "create", *args])
        assert result.exit_code != 0, args
        assert "Traceback" not in result.output
    assert runner.invoke(args=["campaign", "status", "987654"]).exit_code == 1


def test_tokens(runner):
    signer = Signer(SECRET, 3600)
    assert signer.user_of(runner.invoke(args=["token", "alice"]).output.strip()) == "alice"
    bulk = runner.invoke(args=["token", "bulk", "--count", "12", "--prefix", "load-"])
    lines = bulk.output.splitlines()
    assert len(lines) == 12
    pairs = [line.split("\t") for line in lines]
    assert len({uid for uid, _ in pairs}) == 12
    assert all(signer.user_of(token) == uid and uid.startswith("load-") for uid, token in pairs)
    refused = runner.invoke(args=["token", "bad id!"])  # a bad value, as click says it: exit 2
    assert refused.exit_code == 2 and "Invalid value for 'USER_ID'" in refused.output
    assert "BAD_REQUEST" not in refused.output
    assert runner.invoke(args=["token", "bulk"]).exit_code == 2  # bulk needs --count
    ignored = runner.invoke(args=["token", "alice", "--count", "3"])  # one token takes no --count
    assert ignored.exit_code == 2 and "--count" in ignored.output
    for name in ("bulk", "mint"):  # users called like a subcommand get theirs with `mint`
        assert signer.user_of(runner.invoke(args=["token", "mint", name]).output.strip()) == name


def test_production_refuses_the_development_secret(mysql_url, redis_target):
    for secret in (DEV_SECRET_KEY, ""):
        with pytest.raises(RuntimeError, match="SECRET_KEY"):
            create_app(dict(app_config(mysql_url, redis_target), ENV="production", SECRET_KEY=secret))
    app = create_app(dict(app_config(mysql_url, redis_target), ENV="production", SECRET_KEY="a-real-secret"))
    assert app.config["ENV"] == "production"


def test_options_before_the_user_id_and_a_bounded_ttl(runner):
    signer = Signer(SECRET, 3600)
    short = runner.invoke(args=["token", "--ttl", "5", "alice"])
    assert short.exit_code == 0, short.output
    assert signer.user_of(short.output.strip()) == "alice"
    for ttl in ("0", "99999999999999"):
        too_long = runner.invoke(args=["token", "--ttl", ttl, "alice"])
        assert too_long.exit_code == 2 and "--ttl" in too_long.output, too_long.output
    long_prefix = runner.invoke(args=["token", "bulk", "--count", "100", "--prefix", "p" * 63])
    assert long_prefix.exit_code == 2 and "--prefix" in long_prefix.output


def test_campaign_ids_no_row_can_have_are_not_found_without_a_traceback(runner):
    for command in ("open", "close", "status", "recover"):
        for raw in ("99999999999999999999", "2147483648", "987654"):
            result = runner.invoke(args=["campaign", command, raw])
            assert result.exit_code == 1, (command, raw, result.output)
            assert "Error: CAMPAIGN_NOT_FOUND: no campaign" in result.output
            # refused before it starts: no progress bar of a drain or a restore
            assert "Traceback" not in result.output and "draining" not in result.output
            assert "restoring" not in result.output


def test_recover_refuses_before_it_starts(runner, svc):
    campaign_id = campaigns.create_campaign(svc, "held", 5)
    result = runner.invoke(args=["campaign", "recover", str(campaign_id)])
    assert result.exit_code == 1 and "NOTHING_TO_RECOVER" in result.output
    assert "restoring claims" not in result.output


def test_opens_at_in_the_past_is_said(runner):
    result = runner.invoke(args=["campaign", "create", "--name", "late", "--stock", "5",
                                 "--opens-at", "2020-01-01T00:00:00Z"])
    assert result.exit_code == 0, result.output
    assert "note: --opens-at is in the past" in result.output
    assert int(result.output.strip().splitlines()[-1]) > 0


def test_redis_down_is_one_line_and_exit_1(mysql_url, svc):
    campaign_id = campaigns.create_campaign(svc, "redis down", 5)
    app = create_app(app_config(mysql_url, "redis://127.0.0.1:1/0", REDIS_TIMEOUT=0.5))
    result = app.test_cli_runner().invoke(args=["campaign", "open", str(campaign_id)])
    assert result.exit_code == 1 and "Error: UNAVAILABLE: Redis failed: " in result.output
    assert "Traceback" not in result.output
    app.extensions["coupon"].engine.dispose()
