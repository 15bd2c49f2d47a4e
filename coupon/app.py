"""create_app: the Flask app of the service, put together from its parts.

The parts are its settings, gateways, routes, error handlers and CLI commands."""
from flask import Flask

from config import settings
from coupon import extensions
from coupon.errors import register_errorhandlers


def create_app(config=None):
    """Build the app: settings, gateways, routes, error handlers, CLI commands."""
    app = Flask("coupon", instance_relative_config=True)  # the package: its root, name and logger
    settings.load_into(app.config, overrides=config)
    app.json.sort_keys = False
    register_extensions(app)
    register_blueprints(app)
    register_errorhandlers(app)
    register_commands(app)
    return app


def register_extensions(app):
    extensions.init_app(app)


def register_blueprints(app):
    from coupon import ops_page
    from coupon.api import IssueEndpoint, NoSessions, bp
    from coupon.bodies import BodyGuard

    app.register_blueprint(bp)
    ops_page.register(app)  # the operators' page, where it is enabled
    app.session_interface = NoSessions()
    # the issue call without a body first (the flood's kind), then every body through the guard
    guarded = BodyGuard(app.wsgi_app, app.config["MAX_CONTENT_LENGTH"], app.config["BODY_TIMEOUT"])
    app.wsgi_app = IssueEndpoint(guarded, extensions.services(app))


def register_commands(app):
    from coupon.cli import register

    register(app)
