"""Operator commands: flask db, campaign, token and events (`flask jobs` is jobs/cli.py).

Each command is a thin layer over a service function. A refusal or a store that fails prints
`Error: CODE: message` and exits 1; a mistyped command, option or value exits 2 (click's usage
error), naming what to fix.
"""
import functools
import json
import sys

import click
from flask import current_app
from flask.cli import AppGroup
from redis.exceptions import RedisError
from sqlalchemy.exc import SQLAlchemyError

from coupon import campaigns, events, queries
from coupon.clock import parse_time, utcnow
from coupon.db import init_db
from coupon.errors import BadRequest, CouponError, InvalidCampaign
from coupon.extensions import services
from coupon.fairness import SaleOrder
from coupon.outbox import outbox_stats
from coupon.recovery import lost_campaign, recover_campaign
from coupon.signing import check_user_id

db_cli = AppGroup("db", help="Database schema.")
campaign_cli = AppGroup("campaign", help="Create, open, close and inspect campaigns.")
events_cli = AppGroup("events", help="The events published to RabbitMQ (EVENTS_URL).")


def operator_errors(f):
    """Turn domain errors, and Redis or the database failing, into one line and exit status 1."""

    @functools.wraps(f)
    def wrapper(*args, **kwargs):
        try:
            return f(*args, **kwargs)
        except CouponError as e:
            raise click.ClickException(f"{e.code}: {e.message}") from None
        except (RedisError, SQLAlchemyError) as e:
            store = "Redis" if isinstance(e, RedisError) else "the database"
            detail = str(getattr(e, "orig", None) or e).splitlines()[0]
            raise click.ClickException(f"UNAVAILABLE: {store} failed: {detail}") from None

    return wrapper


def svc():
    """The services, having said first what in Redis's settings would lose claims (redis_guard)."""
    service = services(current_app)
    service.redis_guard.verdict()
    return service


class Checked(click.ParamType):
    """A value the service checks: `check` returns it or raises one of `errors`.

    A refusal is click's usage error, naming the option."""

    def __init__(self, name, check, errors):
        self.name, self.check, self.errors = name, check, errors

    def convert(self, value, param, ctx):
        try:
            return self.check(value)
        except self.errors as e:
            self.fail(getattr(e, "message", str(e)), param, ctx)


USER_ID = Checked("user id", check_user_id, BadRequest)
ISO_TIME = Checked("ISO-8601 time", parse_time, ValueError)


@db_cli.command("init")
def db_init():
    """Create the tables (safe to run again)."""
    init_db(svc().engine)
    click.echo("tables ready")


@campaign_cli.command("create")
@click.option("--name", required=True, help="Shown to users.")
@click.option("--stock", required=True, type=click.IntRange(1, campaigns.MAX_STOCK), help="Coupons.")
@click.option("--opens-at", type=ISO_TIME, help="Opens by itself then (UTC if no offset).")
@click.option("--closes-at", type=ISO_TIME, help="Stops issuing then (UTC if no offset).")
@operator_errors
def campaign_create(name, stock, opens_at, closes_at):
    """Create a campaign and print its id."""
    campaign_id = campaigns.create_campaign(svc(), name, stock, opens_at, closes_at)
    if opens_at and opens_at <= utcnow():
        click.echo(f"note: --opens-at is in the past: campaign {campaign_id} opens at once "
                   "(the scheduler's next round)", err=True)
    click.echo(campaign_id)


@campaign_cli.command("open")
@click.argument("campaign_id", type=int)
@operator_errors
def campaign_open(campaign_id):
    """Open a campaign now."""
    campaigns.open_campaign(svc(), campaign_id)
    click.echo(f"campaign {campaign_id} is open")


@campaign_cli.command("add-stock")
@click.argument("campaign_id", type=int)
@click.argument("amount", type=click.IntRange(1, campaigns.MAX_STOCK))
@click.option("--request-id", type=Checked("request id", campaigns.check_request_id, InvalidCampaign),
              help="Names this addition: asked again with it, nothing more is added [a new one].")
@operator_errors
def campaign_add_stock(campaign_id, amount, request_id):
    """Add AMOUNT coupons to a live campaign, issued after the existing ones.

    Safe to run again with the same --request-id (printed when not given).
    """
    if request_id is None:
        request_id = campaigns.new_request_id()
        click.echo(f"request id {request_id} (if this fails, run again with --request-id "
                   f"{request_id}: it adds nothing twice)", err=True)
    added = campaigns.add_stock(svc(), campaign_id, amount, request_id)
    if added.new:
        click.echo(f"campaign {campaign_id}: added {amount} coupons, {added.total} in all")
    else:
        click.echo(f"campaign {campaign_id}: request {request_id} had added {amount} coupons "
                   f"already; nothing more added, {added.total} in all")


@campaign_cli.command("close")
@click.argument("campaign_id", type=int)
@operator_errors
def campaign_close(campaign_id):
    """Stop issuing, drain the outbox into the database, reconcile, release the Redis keys.

    Exits 1 and keeps the keys if Redis and the database differ. Safe to run again.
    """
    service = svc()
    queries.campaign_row(service.engine, campaign_id)  # an unknown id: refused before anything
    backlog = outbox_stats(service.redis, service.keys(campaign_id))[0]
    with click.progressbar(length=backlog, label="draining outbox", file=sys.stderr) as bar:
        report = campaigns.close_campaign(service, campaign_id, progress=bar.update)
    click.echo("\n".join(report.lines()))
    if events.enabled(service.config):  # the close does not wait for the broker
        click.echo(f"events: {events.pending(service.engine, campaign_id)[0]} still to go")
    click.echo(f"campaign {campaign_id} is closed")


@campaign_cli.command("recover")
@click.argument("campaign_id", type=int)
@operator_errors
def campaign_recover(campaign_id):
    """Rebuild a campaign's Redis state from the database after Redis lost it; the sale goes on.

    Refuses while Redis still holds the campaign. Prints what it restored and what may have been
    lost: claims acknowledged to users but never flushed into the database.
    """
    service = svc()
    lost_campaign(service, campaign_id)  # its refusals before anything is written
    rows = queries.count_rows(service.engine, campaign_id)
    with click.progressbar(length=rows, label="restoring claims", file=sys.stderr) as bar:
        report = recover_campaign(service, campaign_id, progress=bar.update)
    click.echo("\n".join(report.lines()))
    click.echo(f"campaign {campaign_id} is live again")


@campaign_cli.command("status")
@click.argument("campaign_id", type=int)
@operator_errors
def campaign_status(campaign_id):
    """Print a campaign's status as JSON.

    It has the outbox backlog, the flush lag, the events still to go to the broker (with
    EVENTS_URL), the stock added since it was created, and how its coupons went against the order
    its requests arrived in (as its close found it, once closed)."""
    service = svc()
    status = queries.campaign_status(service, campaign_id)
    backlog, lag = outbox_stats(service.redis, service.keys(campaign_id))
    status["outbox"] = {"backlog": backlog, "flush_lag_seconds": lag}
    if events.enabled(service.config):
        pending, events_lag = events.pending(service.engine, campaign_id)
        status["events"] = {"pending": pending, "lag_seconds": events_lag}
    status["stock_additions"] = queries.stock_additions(service.engine, campaign_id)
    record = queries.close_report(service.engine, campaign_id)
    if record is None:
        status["order"] = SaleOrder.read(service.redis, service.keys(campaign_id)).figures()
    else:
        status["order"] = {"at_close": next(
            (line for line in record["report"].splitlines() if line.startswith("order:")), None)}
    click.echo(json.dumps(status, indent=2))


@campaign_cli.command("list")
@operator_errors
def campaign_list():
    """List every campaign, one line each."""
    for c in queries.list_campaigns(svc()):
        click.echo(f"{c['id']}\t{c['status']}\t{c['issued']}/{c['total']}\t{c['name']}")


@events_cli.command("tail")
@click.option("--count", type=click.IntRange(1), help="Stop after this many events [never].")
@click.option("--seconds", type=click.FloatRange(0, min_open=True), help="Stop after this long [never].")
@click.option("--pattern", default="#", show_default=True,
              help="Routing keys to show (a topic pattern: coupon.issued, campaign.*).")
def events_tail(count, seconds, pattern):
    """Print the events published from now on, one line each: message id, routing key, body."""
    config = current_app.config
    if not events.enabled(config):
        raise click.ClickException("NO_EVENTS: EVENTS_URL is not set: no events are published")
    try:
        events.tail(config["EVENTS_URL"], lambda *event: click.echo("\t".join(event)),
                    count, seconds, pattern)
    except events.BrokerUnavailable as e:
        raise click.ClickException(f"UNAVAILABLE: the event broker failed: {e}") from None
    except KeyboardInterrupt:
        pass


class TokenGroup(AppGroup):
    """`flask token [--ttl N] USER_ID` is `flask token mint [--ttl N] USER_ID`.

    `mint`, `bulk` and `--help` first name the subcommand or ask for help."""

    def parse_args(self, ctx, args):
        if args and args[0] not in self.commands and args[0] != "--help":
            args = ["mint", *args]
        return super().parse_args(ctx, args)


token_cli = TokenGroup("token", help="Bearer tokens for users (`flask token USER_ID` mints one).")
MAX_TTL = 366 * 24 * 3600  # a year: a longer-lived token is a standing key to the user's coupons
TTL = click.option("--ttl", type=click.IntRange(1, MAX_TTL),
                   help="Seconds the tokens stay valid, at most a year [TOKEN_TTL].")


@token_cli.command("mint")
@click.argument("user_id", type=USER_ID)
@TTL
@operator_errors
def token_mint(user_id, ttl):
    """Print a bearer token for USER_ID (also `flask token USER_ID`)."""
    click.echo(svc().signer.mint(user_id, ttl))


@token_cli.command("bulk")
@click.option("--count", required=True, type=click.IntRange(1, 10_000_000), help="How many tokens.")
@click.option("--prefix", default="user-", show_default=True, type=USER_ID, help="User id prefix.")
@TTL
@operator_errors
def token_bulk(count, prefix, ttl):
    """Print COUNT lines `user_id<TAB>token`, for users PREFIX1, PREFIX2, ... (zero-padded)."""
    signer = svc().signer
    width = len(str(count))
    if len(prefix) + width > 64:
        raise click.BadParameter(f"user ids are at most 64 characters: {prefix!r} leaves {64 - len(prefix)} "
                                 f"for the {width} digits of the number", param_hint="'--prefix'")
    for i in range(1, count + 1):
        user_id = f"{prefix}{i:0{width}d}"
        click.echo(f"{user_id}\t{signer.mint(user_id, ttl)}")


def register(app):
    app.cli.add_command(db_cli)
    app.cli.add_command(campaign_cli)
    app.cli.add_command(token_cli)
    app.cli.add_command(events_cli)
