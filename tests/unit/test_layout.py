"""The rooms of the design card keep to themselves: the service package never imports the jobs,
the load tools or the tests; the jobs never import the load tools or the tests; the load tools
never import the tests nor need pytest."""
import ast
import glob
import os

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
FORBIDDEN = {
    "coupon": {"jobs", "loadtest", "tests", "pytest"},
    "jobs": {"loadtest", "tests", "pytest"},
    "loadtest": {"tests", "pytest"},
}


def imported_packages(path):
    """The top-level names of every module a file imports (absolute imports)."""
    with open(path, encoding="utf-8") as f:
        tree = ast.parse(f.read(), path)
    names = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0:
            names.add(node.module.split(".")[0])
    return names


@pytest.mark.parametrize("room", sorted(FORBIDDEN))
def test_a_room_imports_nothing_of_the_rooms_it_must_not_know(room):
    files = glob.glob(os.path.join(ROOT, room, "**", "*.py"), recursive=True)
    assert files
    wrong = {os.path.relpath(path, ROOT): sorted(imported_packages(path) & FORBIDDEN[room])
             for path in files}
    assert {path: names for path, names in wrong.items() if names} == {}
