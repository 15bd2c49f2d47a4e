"""config.settings: each setting parsed from the environment by its own parser, Flask's config
loading in the documented order, and what production refuses."""
import flask
import pytest

from config import settings


def load(monkeypatch, tmp_path, environ=(), file_text=None, overrides=None):
    """The settings with only `environ` set and a settings file of `file_text` (None: no file)."""
    path = tmp_path / f"settings-{len(list(tmp_path.iterdir()))}.py"
    if file_text is not None:
        path.write_text(file_text)
    monkeypatch.setenv("COUPON_SETTINGS", str(path))
    for name in settings.SETTINGS:
        monkeypatch.delenv(name, raising=False)
    for name, value in dict(environ).items():
        monkeypatch.setenv(name, value)
    return settings.load_into(flask.Config(str(tmp_path)), overrides)


def test_each_setting_is_parsed_by_its_own_parser(monkeypatch, tmp_path):
    config = load(monkeypatch, tmp_path, {"REDIS_TIMEOUT": "0.5", "RATE_LIMIT": "0", "REDIS_REPLICA_ACKS": ""})
    assert config["REDIS_TIMEOUT"] == 0.5 and config["RATE_LIMIT"] == 0
    assert config["REDIS_REPLICA_ACKS"] is None  # empty: the default for the kind of Redis
    assert load(monkeypatch, tmp_path, {"REDIS_REPLICA_ACKS": "2"})["REDIS_REPLICA_ACKS"] == 2


def test_a_value_that_does_not_parse_is_refused_with_its_name(monkeypatch, tmp_path):
    with pytest.raises(RuntimeError, match="BLOCK_SIZE='many' is not a valid int"):
        load(monkeypatch, tmp_path, {"BLOCK_SIZE": "many"})


def test_defaults_then_the_file_then_the_environment_then_overrides(monkeypatch, tmp_path):
    text = "RATE_LIMIT = 50\nBLOCK_SIZE = 100\nLEASE_TTL = 9.0\n"
    config = load(monkeypatch, tmp_path, {"BLOCK_SIZE": "200", "LEASE_TTL": "8"}, text, {"LEASE_TTL": 7.0})
    assert (config["STATE_REFRESH"], config["RATE_LIMIT"], config["BLOCK_SIZE"], config["LEASE_TTL"]) == (
        1.0, 50, 200, 7.0)
    assert load(monkeypatch, tmp_path)["RATE_LIMIT"] == 20  # no file: the defaults


def test_production_refuses_the_development_secret_and_the_sqlite_default(monkeypatch, tmp_path):
    mysql = "mysql+pymysql://app@db.internal/coupon"
    for secret in (settings.DEV_SECRET_KEY, ""):
        with pytest.raises(RuntimeError, match="SECRET_KEY"):
            load(monkeypatch, tmp_path, {"ENV": "production", "SECRET_KEY": secret, "DATABASE_URL": mysql})
    for database in (settings.SQLITE_DEFAULT, ""):
        with pytest.raises(RuntimeError, match="DATABASE_URL"):
            load(monkeypatch, tmp_path, {"ENV": "production", "SECRET_KEY": "private", "DATABASE_URL": database})
    with pytest.raises(RuntimeError, match="DATABASE_URL"):  # none set at all: the SQLite default
        load(monkeypatch, tmp_path, {"ENV": "production", "SECRET_KEY": "private"})
    config = load(monkeypatch, tmp_path, {"ENV": "production", "SECRET_KEY": "private", "DATABASE_URL": mysql})
    assert config["DATABASE_URL"] == mysql
    # development runs on the defaults
    assert load(monkeypatch, tmp_path)["DATABASE_URL"] == settings.SQLITE_DEFAULT


def test_production_with_a_jwks_requires_an_issuer_and_an_audience(monkeypatch, tmp_path):
    prod = {"ENV": "production", "SECRET_KEY": "private", "DATABASE_URL": "mysql+pymysql://app@db/coupon",
            "AUTH_JWKS_URL": "https://login.shop.example/.well-known/jwks.json"}
    for missing in ({}, {"AUTH_ISSUER": "https://login.shop.example/"}, {"AUTH_AUDIENCE": "coupon"}):
        with pytest.raises(RuntimeError, match="AUTH_ISSUER and AUTH_AUDIENCE"):
            load(monkeypatch, tmp_path, {**prod, **missing})
    load(monkeypatch, tmp_path, {**prod, "AUTH_ISSUER": "https://login.shop.example/", "AUTH_AUDIENCE": "coupon"})
    assert load(monkeypatch, tmp_path, {"AUTH_JWKS_URL": prod["AUTH_JWKS_URL"]})["AUTH_ISSUER"] == ""  # development


@pytest.mark.parametrize("url, accepted", [
    ("https://login.shop.example/jwks.json", True), ("file:///etc/coupon/jwks.json", True),
    ("http://127.0.0.1:8080/jwks.json", True), ("http://[::1]:8080/jwks.json", True),
    ("http://localhost/jwks.json", True), ("http://login.shop.example/jwks.json", False),
    ("ftp://login.shop.example/jwks.json", False), ("login.shop.example/jwks.json", False),
])
def test_a_jwks_url_is_https_a_file_or_http_on_loopback(monkeypatch, tmp_path, url, accepted):
    if accepted:
        assert load(monkeypatch, tmp_path, {"AUTH_JWKS_URL": url})["AUTH_JWKS_URL"] == url
    else:
        with pytest.raises(RuntimeError, match="AUTH_JWKS_URL must be"):
            load(monkeypatch, tmp_path, {"AUTH_JWKS_URL": url})


def test_a_short_shared_secret_is_refused(monkeypatch, tmp_path):
    with pytest.raises(RuntimeError, match="AUTH_JWT_SECRET must be at least 32 bytes"):
        load(monkeypatch, tmp_path, {"AUTH_JWT_SECRET": "short"})
    assert load(monkeypatch, tmp_path, {"AUTH_JWT_SECRET": "x" * 32})["AUTH_JWT_SECRET"] == "x" * 32
