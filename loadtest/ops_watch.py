"""Keep the operators' page open in a headless browser: `python -m loadtest.ops_watch URL`.

Opens URL (say http://127.0.0.1:8000/ops/?campaign=7) in Debian's chromium through Playwright,
prints "ready" once the page shows its first figures, and keeps it polling (once a second, as
an operator's open tab does) until SIGTERM, Ctrl-C or --seconds; then prints how many polls it
made. `make bench WITH_OPS_PAGE=1` runs one beside each phase that serves the product, to measure
what an open page costs the service.
"""
import argparse
import signal
import sys
import time

from playwright.sync_api import sync_playwright

CHROMIUM = "/usr/bin/chromium"


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("url")
    p.add_argument("--seconds", type=float, default=float("inf"), help="stop after this long")
    p.add_argument("--chromium", default=CHROMIUM)
    args = p.parse_args()
    stopping = []
    signal.signal(signal.SIGTERM, lambda *_: stopping.append(True))
    deadline = time.monotonic() + args.seconds
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=args.chromium, headless=True)
        try:
            page = browser.new_page(viewport={"width": 1440, "height": 1000})
            page.goto(args.url)
            page.wait_for_function("window.opsPage && window.opsPage.state", timeout=30_000)
            print("ready", flush=True)
            while not stopping and time.monotonic() < deadline:
                page.wait_for_timeout(200)  # the page's own timers run meanwhile
            print(f"the page polled {page.evaluate('window.opsPage.polls')} times", flush=True)
        except KeyboardInterrupt:
            pass
        finally:
            browser.close()


if __name__ == "__main__":
    sys.exit(main())
