"""deploy/install.sh into a temporary root: the layout, the user and modes, the enabled unit;
a second run changes nothing; an upgrade keeps the configuration, the state and the totals;
an uninstall keeps the data unless asked; a 32-bit system is refused with the reason."""

from __future__ import annotations

import hashlib
import os
import shutil
import stat
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[2]
SCRIPT = REPO / "deploy" / "install.sh"


def _as_root() -> list[str]:
    """The script writes only inside the temporary root, but it chowns and runs useradd."""
    if os.geteuid() == 0:
        return []
    if shutil.which("sudo") and subprocess.run(["sudo", "-n", "true"], check=False).returncode == 0:
        return ["sudo", "-n", "--preserve-env=PYTHON,MASSGATE_PIP_ARGS"]
    pytest.fail("the install test needs root or password-less sudo (it writes only in tmp_path)")


def _install(
    root: Path, *args: str, prefix: tuple[str, ...] = ()
) -> subprocess.CompletedProcess[str]:
    env = {
        **os.environ,
        "PYTHON": sys.executable,
        # The dependencies are the test environment's business; the layout is this test's.
        "MASSGATE_PIP_ARGS": "--no-deps",
    }
    return subprocess.run(
        [*_as_root(), *prefix, "bash", str(SCRIPT), "--root", str(root), *args],
        capture_output=True,
        text=True,
        timeout=600,
        env=env,
        check=False,
    )


def _minimal_root(root: Path) -> None:
    """What a fresh Debian has that the script relies on: the account files and dialout."""
    etc = root / "etc"
    etc.mkdir(parents=True)
    (etc / "passwd").write_text("root:x:0:0:root:/root:/bin/bash\n")
    (etc / "group").write_text("root:x:0:\ndialout:x:20:\n")
    (etc / "shadow").write_text("root:*:19000:0:99999:7:::\n")
    (etc / "gshadow").write_text("root:*::\ndialout:*::\n")
    for f in ("shadow", "gshadow"):
        (etc / f).chmod(0o640)
    nologin = root / "usr" / "sbin" / "nologin"
    nologin.parent.mkdir(parents=True)
    nologin.write_text("#!/bin/sh\nexit 1\n")
    nologin.chmod(0o755)


def _ids(root: Path, table: str) -> dict[str, list[str]]:
    rows = (line.split(":") for line in (root / "etc" / table).read_text().splitlines())
    return {row[0]: row for row in rows}


def _manifest(root: Path) -> dict[str, tuple[int, int, int, str]]:
    """Mode, owner, group and content of everything outside the virtual environment."""
    result = {}
    for path in sorted(root.rglob("*")):
        relative = path.relative_to(root)
        if relative.parts[:2] == ("opt", "massgate") and relative.parts[2:3] != ("share",):
            continue
        st = path.lstat()
        digest = ""
        if stat.S_ISREG(st.st_mode):
            digest = hashlib.sha256(path.read_bytes()).hexdigest()
        elif stat.S_ISLNK(st.st_mode):
            digest = os.readlink(path)
        result[str(relative)] = (stat.S_IMODE(st.st_mode), st.st_uid, st.st_gid, digest)
    return result


def test_install_upgrade_uninstall_in_a_temporary_root(tmp_path: Path):
    root = tmp_path / "root"
    _minimal_root(root)

    first = _install(root)
    assert first.returncode == 0, first.stdout + first.stderr
    assert "created user massgate" in first.stdout
    assert "wrote /etc/massgate/massgate.yaml" in first.stdout

    # The program, in its own virtual environment.
    massgate = root / "opt" / "massgate" / "bin" / "massgate"
    assert os.access(massgate, os.X_OK)
    version = subprocess.run(
        [str(root / "opt/massgate/bin/python"), "-c",
         "from importlib.metadata import version; print(version('massgate'))"],
        capture_output=True, text=True, check=True,
    )  # fmt: skip
    assert version.stdout.strip() == "0.1.0"
    assert (root / "opt/massgate/share/examples/99-massgate-rs485.rules").is_file()
    # The user, in the dialout group, without a login.
    passwd, group = _ids(root, "passwd"), _ids(root, "group")
    user = passwd["massgate"]
    assert user[6] == "/usr/sbin/nologin"
    uid, gid = int(user[2]), int(user[3])
    assert int(group["massgate"][2]) == gid
    assert "massgate" in group["dialout"][3].split(",")
    # Configuration readable by root and the massgate group only; state owned by the user.
    conf = root / "etc/massgate/massgate.yaml"
    assert conf.read_text() == (REPO / "config.example.yaml").read_text()
    st = conf.stat()
    assert (stat.S_IMODE(st.st_mode), st.st_uid, st.st_gid) == (0o640, 0, gid)
    assert stat.S_IMODE((root / "etc/massgate").stat().st_mode) == 0o750
    state = root / "var/lib/massgate"
    st = state.stat()
    assert (stat.S_IMODE(st.st_mode), st.st_uid, st.st_gid) == (0o750, uid, gid)
    assert (root / "var/cache/massgate/numba").stat().st_uid == uid
    # The unit, enabled.
    unit = root / "etc/systemd/system/massgate.service"
    assert unit.read_text() == (REPO / "systemd/massgate.service").read_text()
    wants = root / "etc/systemd/system/multi-user.target.wants/massgate.service"
    assert wants.is_symlink()
    assert os.readlink(wants) == "/etc/systemd/system/massgate.service"

    # Idempotent: a second run changes nothing outside the program itself.
    before = _manifest(root)
    again = _install(root)
    assert again.returncode == 0, again.stdout + again.stderr
    assert "created" not in again.stdout
    assert "kept /etc/massgate/massgate.yaml" in again.stdout
    assert _manifest(root) == before

    # Upgrade: the edited configuration, the outbox and its totals stay as they were.
    conf.write_text(conf.read_text() + "\n## edited on site\n")
    conf.chmod(0o644)  # someone loosened it; the upgrade tightens it again
    outbox = state / "state.sqlite"
    outbox.write_bytes(b"outbox and totals")
    upgrade = _install(root)
    assert upgrade.returncode == 0, upgrade.stdout + upgrade.stderr
    assert conf.read_text().endswith("## edited on site\n")
    assert stat.S_IMODE(conf.stat().st_mode) == 0o640
    assert outbox.read_bytes() == b"outbox and totals"

    # Uninstall keeps configuration, state and the user.
    removed = _install(root, "--uninstall")
    assert removed.returncode == 0, removed.stdout + removed.stderr
    assert not (root / "opt/massgate").exists()
    assert not unit.exists()
    assert not wants.exists()
    assert not wants.is_symlink()
    assert conf.is_file()
    assert outbox.read_bytes() == b"outbox and totals"
    assert "massgate" in _ids(root, "passwd")

    # --purge removes them too.
    purged = _install(root, "--uninstall", "--purge")
    assert purged.returncode == 0, purged.stdout + purged.stderr
    assert not (root / "etc/massgate").exists()
    assert not state.exists()
    assert "massgate" not in _ids(root, "passwd")
    assert "massgate" not in _ids(root, "group")
    assert _ids(root, "group")["dialout"][3] == ""


def test_a_32_bit_system_gets_the_python_engine(tmp_path: Path):
    """No numba wheels on 32-bit ARM: the install goes on, and the configuration it writes
    runs the totalizer on its Python engine."""
    root = tmp_path / "root"
    _minimal_root(root)
    result = _install(root, prefix=("setarch", "i686"))
    assert result.returncode == 0, result.stdout + result.stderr
    assert "32-bit" in result.stdout
    assert "Python engine" in result.stdout
    written = (root / "etc/massgate/massgate.yaml").read_text()
    assert yaml.safe_load(written)["totals"] == {"engine": "python"}
    assert "compiled the totalizer's kernels" not in result.stdout


def test_help_and_bad_arguments():
    shown = subprocess.run(
        ["bash", str(SCRIPT), "--help"], capture_output=True, text=True, check=False
    )
    assert shown.returncode == 0
    assert "--uninstall" in shown.stdout
    assert "MASSGATE_PIP_ARGS" in shown.stdout
    bad = subprocess.run(
        ["bash", str(SCRIPT), "--bogus"], capture_output=True, text=True, check=False
    )
    assert bad.returncode == 2
    assert "unknown argument '--bogus'" in bad.stderr
