"""`flask jobs run`: the scheduler in the foreground.

The `flask` command finds this group through the project's "flask.commands" entry point
(pyproject.toml); the coupon package does not know it."""
import logging

from flask import current_app
from flask.cli import AppGroup

from jobs.scheduler import run_scheduler

jobs_cli = AppGroup("jobs", help="The scheduler of the batch jobs.")


@jobs_cli.command("run")
def jobs_run():
    """Run the scheduler in the foreground (flush, stock sync, lifecycle, reclaim)."""
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    run_scheduler(current_app._get_current_object())
