"""The documentation matches the code: docs/configuration.md lists exactly the settings the code
reads, and every relative link in README.md and docs/*.md leads somewhere. No Redis, no database:
these tests read files (and import config.settings) only."""
import glob
import os
import re

from tests.support_docs import FENCE, anchors, slug

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

NAME = r"([A-Z][A-Z0-9_]*)"
# how the code reads a setting: from the environment, or from the loaded settings
READS = [re.compile(pattern) for pattern in (
    rf"""os\.environ\.get\(\s*["']{NAME}["']""",
    rf"""os\.environ\[\s*["']{NAME}["']\s*\]""",
    rf"""os\.getenv\(\s*["']{NAME}["']""",
    rf"""environ\.setdefault\(\s*["']{NAME}["']""",
    rf"""\bconfig\[\s*["']{NAME}["']\s*\]""",
    rf"""\bconfig\.get\(\s*["']{NAME}["']""",
    rf"""\bcfg\[\s*["']{NAME}["']\s*\]""",
    rf"""\bcfg\.get\(\s*["']{NAME}["']""",
)]
# read by the code, but no setting of the service: set by gunicorn or systemd on a re-exec, or by
# Flask's test mode
NOT_SETTINGS = {"GUNICORN_FD", "LISTEN_FDS", "LISTEN_PID", "TESTING"}
# where the service reads settings, today's layout and the planned one alike
SOURCES = ("app.py", "gunicorn.conf.py", "config/**/*.py", "coupon/**/*.py", "jobs/**/*.py")


def source_files():
    found = set()
    for pattern in SOURCES:
        found.update(glob.glob(os.path.join(ROOT, pattern), recursive=True))
    return sorted(found)


def settings_the_code_reads():
    from config.settings import SETTINGS

    names = set(SETTINGS)
    for path in source_files():
        with open(path, encoding="utf-8") as f:
            text = f.read()
        for pattern in READS:
            names.update(pattern.findall(text))
    return names - NOT_SETTINGS


def settings_the_docs_list(path):
    """The backticked names in the first column of every table of the file."""
    names = set()
    with open(path, encoding="utf-8") as f:
        for line in f:
            if not line.startswith("|"):
                continue
            first = line.strip().strip("|").split("|", 1)[0]
            names.update(re.findall(rf"`{NAME}`", first))
    return names


def test_configuration_lists_exactly_the_settings_the_code_reads():
    read = settings_the_code_reads()
    listed = settings_the_docs_list(os.path.join(ROOT, "docs", "configuration.md"))
    assert read, "found no setting in the code: are the source globs right?"
    assert listed == read, (
        f"read by the code, missing from docs/configuration.md: {sorted(read - listed)}; "
        f"listed in docs/configuration.md, read nowhere: {sorted(listed - read)}")


def test_the_settings_scan_covers_the_gunicorn_settings():
    """The scan itself finds the settings of each kind (guards the globs and the regexes)."""
    read = settings_the_code_reads()
    assert {"BIND", "WEB_WORKERS", "PROMETHEUS_MULTIPROC_DIR", "COUPON_SETTINGS", "REDIS_URL"} <= read


# --- links ---------------------------------------------------------------------------------------

CODE_SPAN = re.compile(r"(`+).+?\1", re.S)
LINK = re.compile(r"!?\[(?:[^\[\]]|\[[^\]]*\])*\]\(\s*<?([^)\s>]+)>?(?:\s+\"[^\"]*\")?\s*\)")


def prose(text):
    """The text without code blocks and code spans, where a [..](..) is no link."""
    return CODE_SPAN.sub("", FENCE.sub("", text))


def doc_files():
    return [os.path.join(ROOT, "README.md")] + sorted(glob.glob(os.path.join(ROOT, "docs", "*.md")))


def broken_links(path):
    with open(path, encoding="utf-8") as f:
        text = prose(f.read())
    broken = []
    for target in LINK.findall(text):
        if re.match(r"[a-z][a-z0-9+.-]*:", target, re.I) or target.startswith("//"):
            continue  # http:, https:, mailto:: not a file of this repository
        file_part, _, anchor = target.partition("#")
        dest = os.path.normpath(os.path.join(os.path.dirname(path), file_part)) if file_part else path
        if not os.path.exists(dest):
            broken.append(f"{target}: no file {os.path.relpath(dest, ROOT)}")
        elif anchor and dest.endswith(".md") and anchor not in anchors(dest):
            broken.append(f"{target}: no heading #{anchor} in {os.path.relpath(dest, ROOT)}")
    return broken


def test_slug_follows_githubs_rules():
    assert slug("Write-behind and the jobs") == "write-behind-and-the-jobs"
    assert slug("The operators' page") == "the-operators-page"
    assert slug("Hostile clients, and what a front proxy adds") == "hostile-clients-and-what-a-front-proxy-adds"
    assert slug("`POST /api/v1/campaigns/<id>/issue`") == "post-apiv1campaignsidissue"
    assert slug("Write-behind (`python -m loadtest.flush_bench`, 12:39)") == "write-behind-python--m-loadtestflush_bench-1239"
    assert slug("coupon — first-come-first-served") == "coupon--first-come-first-served"


def test_docs_links_resolve():
    files = doc_files()
    assert len(files) > 1, "no docs/*.md found"
    broken = {os.path.relpath(path, ROOT): links for path in files if (links := broken_links(path))}
    assert not broken, f"links that lead nowhere: {broken}"
