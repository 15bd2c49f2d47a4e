"""First-come-first-served coupon issuing service.

Importing the package imports nothing else: gunicorn's master imports coupon.worker with its
settings, before the gevent workers fork and monkey-patch, and Flask (threading, ssl) must not
come with it. `from coupon import create_app` imports coupon/app.py on first use (PEP 562).
"""


def __getattr__(name):
    if name == "create_app":
        from coupon.app import create_app

        return create_app
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
