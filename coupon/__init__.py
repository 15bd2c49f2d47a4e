"""First-come-first-served coupon issuing service."""
import logging

from flask import Flask, jsonify
from redis.exceptions import RedisError
from sqlalchemy.exc import SQLAlchemyError
from werkzeug.exceptions import HTTPException

from config.settings import Config, check_production
from coupon import extensions
from coupon.errors import CouponError, RateLimited

log = logging.getLogger(__name__)


def create_app(config=None):
    """Build the app: settings, gateways, routes, error handlers, CLI commands."""
    app = Flask(__name__, instance_relative_config=True)
    app.config.update(Config.load())
    app.config.update(config or {})
    check_production(app.config)
    app.json.sort_keys = False
    register_extensions(app)
    register_blueprints(app)
    register_errorhandlers(app)
    register_commands(app)
    return app


def register_extensions(app):
    extensions.init_app(app)


def register_blueprints(app):
    from coupon.api import NoSessions, bp

    app.register_blueprint(bp)
    app.session_interface = NoSessions()


def error_response(status, code, message):
    return jsonify(error={"code": code, "message": message}), status


HTTP_CODES = {
    400: "BAD_REQUEST", 401: "UNAUTHORIZED", 404: "NOT_FOUND", 405: "METHOD_NOT_ALLOWED",
    413: "PAYLOAD_TOO_LARGE", 429: "RATE_LIMITED",
}


def register_errorhandlers(app):
    @app.errorhandler(CouponError)
    def domain_error(e):
        response = error_response(e.status, e.code, e.message)
        if isinstance(e, RateLimited):
            response[0].headers["Retry-After"] = str(e.retry_after)
        return response

    @app.errorhandler(HTTPException)
    def http_error(e):
        code = HTTP_CODES.get(e.code, "HTTP_%d" % e.code)
        response = error_response(e.code, code, e.description)
        if e.code == 405 and e.valid_methods:
            response[0].headers["Allow"] = ", ".join(e.valid_methods)
        return response

    @app.errorhandler(RedisError)
    def redis_down(e):
        log.warning("Redis unavailable: %s", e)
        return error_response(503, "UNAVAILABLE", "the service is unavailable; retry shortly")

    @app.errorhandler(SQLAlchemyError)
    def database_down(e):
        log.warning("database error: %s", e)
        return error_response(503, "UNAVAILABLE", "the service is unavailable; retry shortly")

    @app.errorhandler(Exception)
    def internal(e):
        log.exception("unhandled error")
        return error_response(500, "INTERNAL", "internal error")


def register_commands(app):
    from coupon.cli import register

    register(app)
