"""coupon/worker.py, as gunicorn's master meets it: imported by gunicorn.conf.py before the gevent
workers fork and monkey-patch, it must not bring Flask in (with Flask imported in the master,
gevent warns "Monkey-patching ssl after ssl has already been imported" in every worker)."""
import os
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def modules_after(code):
    """Which of Flask, werkzeug and coupon/app.py a fresh interpreter in the repository root has
    imported after running `code`."""
    watched = ("flask", "werkzeug", "coupon.app")
    probe = f"{code}\nimport sys\nprint(sorted(m for m in {watched!r} if m in sys.modules))"
    done = subprocess.run([sys.executable, "-c", probe], cwd=ROOT, capture_output=True, text=True,
                          check=True, env=dict(os.environ, PROMETHEUS_MULTIPROC_DIR=os.devnull))
    return done.stdout.strip()


def test_reading_the_gunicorn_settings_imports_no_flask():
    assert modules_after("import runpy; runpy.run_path('gunicorn.conf.py')") == "[]"


def test_create_app_is_still_imported_from_the_package():
    assert modules_after("from coupon import create_app") == "['coupon.app', 'flask', 'werkzeug']"
