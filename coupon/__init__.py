"""First-come-first-served coupon issuing service."""
from flask import Flask, Response
from werkzeug.exceptions import HTTPException

from config.settings import Config, check_production
from coupon import extensions
from coupon.errors import CouponError, as_coupon_error


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
    from coupon.api import IssueEndpoint, NoSessions, bp

    app.register_blueprint(bp)
    app.session_interface = NoSessions()
    app.wsgi_app = IssueEndpoint(app)


HTTP_CODES = {
    400: "BAD_REQUEST", 401: "UNAUTHORIZED", 404: "NOT_FOUND", 405: "METHOD_NOT_ALLOWED",
    413: "PAYLOAD_TOO_LARGE", 429: "RATE_LIMITED",
}


def register_errorhandlers(app):
    from coupon.api import JSON, error_body, error_response

    @app.errorhandler(CouponError)
    def domain_error(e):
        return error_response(e)

    @app.errorhandler(HTTPException)
    def http_error(e):
        code = HTTP_CODES.get(e.code, "HTTP_%d" % e.code)
        response = Response(error_body(code, e.description), e.code, content_type=JSON)
        if e.code == 405 and e.valid_methods:
            response.headers["Allow"] = ", ".join(e.valid_methods)
        return response

    @app.errorhandler(Exception)
    def unexpected(e):
        return error_response(as_coupon_error(e))


def register_commands(app):
    from coupon.cli import register

    register(app)
