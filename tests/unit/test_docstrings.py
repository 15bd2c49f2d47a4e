"""Every docstring of the service opens with a one-line summary.

Its first line is the whole first paragraph: the docstring ends there, or a blank line follows
and then the rest. Modules, classes and functions of coupon/, jobs/, config/ and app.py alike.
"""
import ast
import glob
import os

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
PATTERNS = ("coupon/*.py", "jobs/*.py", "config/*.py", "app.py")
DOCUMENTED = (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)


def checked_files():
    """The files held to the rule, as paths from the repository root."""
    paths = {os.path.relpath(path, ROOT).replace(os.sep, "/")
             for pattern in PATTERNS for path in glob.glob(os.path.join(ROOT, pattern))}
    return sorted(paths)


def long_summaries(path):
    """The "path:line" of each docstring of the file whose first paragraph is not one line."""
    with open(os.path.join(ROOT, path), encoding="utf-8") as f:
        tree = ast.parse(f.read(), path)
    found = []
    for node in ast.walk(tree):
        if not isinstance(node, DOCUMENTED) or not node.body:
            continue
        first = node.body[0]
        if not (isinstance(first, ast.Expr) and isinstance(first.value, ast.Constant)
                and isinstance(first.value.value, str)):
            continue
        lines = first.value.value.split("\n")
        if not lines[0].strip() or (len(lines) > 1 and lines[1].strip()):
            found.append(f"{path}:{first.lineno}")
    return found


def test_the_files_are_found():
    files = checked_files()
    assert {"app.py", "jobs/scheduler.py", "config/settings.py", "coupon/issuing.py"} <= set(files)


def test_every_docstring_opens_with_a_one_line_summary():
    found = [where for path in checked_files() for where in long_summaries(path)]
    assert found == [], "summary not on one line: " + ", ".join(found)
