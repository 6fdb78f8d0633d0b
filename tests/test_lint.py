"""ruff and mypy are part of the suite, so main cannot go unclean unnoticed."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent


def _run(*command: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        command, cwd=ROOT, capture_output=True, text=True, timeout=300, check=False
    )


def test_ruff_is_clean():
    result = _run(str(BIN / "ruff"), "check", ".")
    assert result.returncode == 0, result.stdout + result.stderr


def test_mypy_is_clean_on_agent_and_drivers():
    result = _run(sys.executable, "-m", "mypy", "agent", "drivers")
    assert result.returncode == 0, result.stdout + result.stderr


def test_every_package_is_in_the_distribution():
    """An editable install finds any package; a wheel only those listed in pyproject.toml."""
    import tomllib

    listed = set(
        tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["packages"]
    )
    on_disk = {
        "massgate." + ".".join(init.parent.relative_to(ROOT).parts)
        for top in ("agent", "drivers")
        for init in (ROOT / top).rglob("__init__.py")
    }
    assert on_disk <= listed, f"missing from [tool.setuptools] packages: {on_disk - listed}"
