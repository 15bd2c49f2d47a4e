"""A host whose clock is off: on PYTHONPATH, this shifts time.time() (and time.time_ns()) of the
process by CLOCK_SHIFT seconds. tests/e2e/test_one_clock.py starts gunicorn hosts with it."""
import os
import time

_SHIFT = float(os.environ.get("CLOCK_SHIFT") or 0)
if _SHIFT:
    _time, _time_ns = time.time, time.time_ns
    time.time = lambda: _time() + _SHIFT
    time.time_ns = lambda: _time_ns() + int(_SHIFT * 1e9)
