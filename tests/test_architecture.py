"""The import directions of docs/ARCHITECTURE.md ("Layers"), checked on every module's source."""

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = ("common", "animate", "data", "metrics", "experiments")
ALLOWED = {  # package -> the project packages it may import (besides itself)
    "common": set(),
    "animate": {"common"},
    "data": {"common"},
    "metrics": {"common"},
    "experiments": {"common", "animate", "data", "metrics"},
}


def imported_packages(path: Path) -> set[tuple[str, int]]:
    """(top-level project package, line) of every import in a file, function-level ones included."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names = [node.module]
        else:
            continue
        found |= {(name.split(".")[0], node.lineno) for name in names if name.split(".")[0] in PACKAGES}
    return found


@pytest.mark.parametrize("package", PACKAGES)
def test_packages_import_only_the_layers_below(package):
    wrong = [
        f"{path.relative_to(ROOT)}:{line} imports {imported}"
        for path in sorted((ROOT / package).rglob("*.py"))
        for imported, line in imported_packages(path)
        if imported != package and imported not in ALLOWED[package]
    ]
    assert not wrong, f"{package} may import only {sorted(ALLOWED[package]) or 'nothing of the project'}:\n" + "\n".join(wrong)


def test_the_checker_sees_function_level_imports(tmp_path):
    source = tmp_path / "module.py"
    source.write_text("def f():\n    from metrics.suite import MetricSuite\n    import animate.backbone\n")
    assert imported_packages(source) == {("metrics", 2), ("animate", 3)}


def test_the_repository_speaks_to_users_not_to_the_tracker():
    import re
    import subprocess

    tracked = subprocess.run(["git", "ls-files"], cwd=ROOT, capture_output=True, text=True).stdout.split()
    if not tracked:
        pytest.skip("not a git checkout")
    pattern = re.compile(r"\b[Ii]ssues? #?[0-9]+")  # users do not see the tracker: docs and code say what, not which ticket
    texts = [ROOT / name for name in tracked if name.endswith((".py", ".md", ".yaml", ".ipynb", ".toml", ".txt")) and (ROOT / name).is_file()]
    hits = [f"{path.relative_to(ROOT)}:{number}" for path in texts for number, line in enumerate(path.read_text(errors="ignore").splitlines(), 1)
            if pattern.search(line)]
    assert not hits, hits
