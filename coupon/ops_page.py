"""The operators' live page: GET /ops/, and the JSON it polls every second. Read-only.

The routes and their password are here; what the JSON says is in ops_figures.py, and what a
worker reads in the background so that a poll never waits long, in ops_readers.py. The page
keeps its state in one OpsState per app (app.extensions["coupon_ops"]).

In production the page asks for HTTP Basic with OPS_PASSWORD (any user name); with no password
set it is not registered at all (404 to every method). In development it is open.
"""
import hmac
import math
import os
import socket

from flask import Blueprint, current_app, jsonify, render_template, request, send_from_directory, url_for

from coupon.api import campaign_id_of
from coupon.errors import Unauthorized, error_response
from coupon.extensions import services
from coupon.ops_figures import live_state, replay_of, sale_history
from coupon.ops_readers import SAMPLE_SECONDS, OpsState

bp = Blueprint("ops", __name__, url_prefix="/ops")

POLL_SECONDS = 1.0


def enabled(config):
    """Whether the page exists: always in development, with a password in production."""
    return config["ENV"] != "production" or bool(config["OPS_PASSWORD"])


def register(app):
    app.add_url_rule("/favicon.ico", "favicon", favicon)  # where browsers ask for it by themselves
    if enabled(app.config):
        app.register_blueprint(bp)
        app.extensions["coupon_ops"] = OpsState()


def state():
    """This app's OpsState."""
    return current_app.extensions["coupon_ops"]


def favicon():
    """The page's icon (the API's own answers are JSON), an SVG."""
    return send_from_directory(os.path.join(current_app.root_path, "static"), "favicon.svg",
                               mimetype="image/svg+xml", max_age=86400)


@bp.before_request
def require_password():
    config = current_app.config
    if config["ENV"] != "production":
        return None
    try:
        auth = request.authorization
    except ValueError:  # Basic credentials with a byte above 0x7F: werkzeug lets b64decode's error out
        auth = None
    given = (auth.password or "") if auth and auth.type == "basic" else ""
    if given and hmac.compare_digest(given.encode(), config["OPS_PASSWORD"].encode()):
        return None
    response = error_response(Unauthorized("the operators' page needs HTTP Basic with OPS_PASSWORD"))
    response.headers["WWW-Authenticate"] = 'Basic realm="coupon ops", charset="UTF-8"'
    return response


@bp.get("/")
def page():
    return render_template("ops.html", host=socket.gethostname(), poll_seconds=POLL_SECONDS,
                           sample_seconds=SAMPLE_SECONDS, live_url=url_for("ops.live"))


@bp.get("/live.json")
def live():
    raw = request.args.get("campaign", "")
    campaign_id = campaign_id_of(raw) if raw else None
    return jsonify(live_state(services(current_app), campaign_id, state(), since_of(request.args)))


@bp.get("/campaigns/<raw_id>/history.json")
def history(raw_id):
    return jsonify(sale_history(services(current_app), campaign_id_of(raw_id)))


@bp.get("/campaigns/<raw_id>/replay.json")
def replay(raw_id):
    return jsonify(replay_of(services(current_app), campaign_id_of(raw_id), state().finished))


def since_of(args):
    """The `since` of a poll (the previous poll's `now`), or None if absent or not a number."""
    try:
        since = float(args.get("since", ""))
    except ValueError:
        return None
    return since if math.isfinite(since) else None
