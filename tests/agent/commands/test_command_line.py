"""No traceback from any command: a misused option is one line and exit 2, a closed pipe is
quiet, and the configuration reader refuses what is not a configuration file at once."""

from __future__ import annotations

import json
import os
import re
import socket
import sqlite3
import subprocess
import sys
import threading
import zlib
from pathlib import Path

import pytest

from massgate.agent import config as config_module
from massgate.agent.commands.cli import main
from massgate.agent.core.yamlsource import ConfigError


def _run_main(argv: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str]:
    try:
        code = main(argv)
    except SystemExit as exc:
        code = int(exc.code or 0)
    return code, capsys.readouterr().err


MISUSE = [
    ["sim", "--base-port", "70000"],
    ["sim", "--base-port", "65530"],
    ["sim", "--rtu", "/dev/null", "--base-port", "0"],
    ["sim", "--rtu", "/nonexistent/tty", "--base-port", "0"],
    ["sim", "--leak-at", "-3"],
    ["probe", "--host", "127.0.0.1", "--register", "-1"],
    ["probe", "--host", "127.0.0.1", "--register", "0", "--unit", "-1"],
    ["probe", "--host", "127.0.0.1", "--register", "0", "--unit", "300"],
    ["probe", "--serial", "/dev/ttyS0", "--register", "0", "--unit", "0"],
    ["probe", "--host", "127.0.0.1", "--register", "0", "--port", "99999"],
    ["probe", "--host", "127.0.0.1", "--register", "0", "--count", "0"],
    ["probe", "--host", "127.0.0.1", "--register", "0", "--timeout", "-1"],
    ["probe", "--host", "127.0.0.1", "--register", "0", "--timeout", "nan"],
    ["probe", "--host", "127.0.0.1", "--register", "65535", "--type", "float32"],
    ["probe", "--host", "127.0.0.1"],
    ["scan", "--host", "127.0.0.1", "--units", "abc"],
    ["scan", "--serial", "/dev/ttyS0", "--units", "0-10"],
    ["demo", "--duration", "-5"],
    ["demo", "--duration", "inf"],
    ["demo", "--leak-rate", "-1"],
    ["report", "cfg.yaml", "--from", "1h", "--to", "2h"],
    ["density", "api", "--commodity", "crude", "--base-density", "850", "--temperature", "9 C"],
    ["density", "api", "--commodity", "special", "--base-density", "8 t/m3", "--temperature",
     "9 C"],
    ["density", "api", "--commodity", "crude", "--base-density", "850 kg/m3", "--temperature",
     "9 C", "--base", "20C"],
    ["density", "api", "--commodity", "crude", "--base-density", "850 kg/m3", "--temperature",
     "9 C", "--alpha60", "5e-4 1/degF"],
    ["density", "water", "--temperature", "hot"],
    ["density", "water", "--temperature", "20 degC", "--pressure", "-2 bar"],
    ["density", "gas"],
    ["density", "gas", "--model", "gerg2008", "--composition", "methane=0.9", "--temperature",
     "15 degC", "--pressure", "70 bar"],
    ["density", "gas", "--model", "ideal", "--composition", "methane=1,methan=0", "--temperature",
     "15 degC", "--pressure", "70 bar"],
    ["density", "gas", "--model", "ideal", "--composition", "methane=1", "--temperature",
     "15 degC", "--pressure", "-1 bar"],
    ["density", "gas", "--model", "aga8", "--composition", "methane=1", "--temperature",
     "15 degC", "--pressure", "1 bar"],
    ["reconcile", "--network", "n.yaml", "--data", "d.csv", "--estimator", "tukey"],
    ["report", "cfg.yaml", "--by", "shift"],
    ["report", "cfg.yaml", "--by", "day", "--shifts", "6h"],
    ["batch", "start", "cfg.yaml", "--node", "reactor", "--batch", "C7-012"],
    ["batch", "end", "cfg.yaml"],
    ["enter", "cfg.yaml", "--stream", "lorry", "--quantity", "2 t"],
    ["enter", "cfg.yaml", "--quantity", "2 t"],
    ["nosuchcommand"],
]  # fmt: skip


@pytest.mark.parametrize("argv", MISUSE, ids=[" ".join(a) for a in MISUSE])
def test_a_misused_option_is_one_line_and_exit_2(
    argv: list[str], capsys: pytest.CaptureFixture[str], tmp_path: Path, monkeypatch
):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "cfg.yaml").write_text(
        f"gateway: {{site: s, id: g, state_dir: {tmp_path / 'state'}}}\n"
        "devices:\n  - {name: ft1, protocol: modbus_tcp, host: 127.0.0.1, profile: coriolis}\n"
    )
    code, err = _run_main(argv, capsys)
    assert code == 2, err
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert "Traceback" not in err
    assert re.match(r"massgate( \w+)*: error: ", lines[0]), lines[0]


def test_a_taken_port_is_named_with_a_way_out(capsys: pytest.CaptureFixture[str]):
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", 0))
        holder.listen()
        port = holder.getsockname()[1]
        code, err = _run_main(["sim", "--base-port", str(port)], capsys)
    assert code == 2
    assert f"cannot listen on 127.0.0.1:{port} (Address already in use)" in err
    assert "--base-port 0" in err


def test_a_closed_pipe_is_quiet(tmp_path: Path):
    """`massgate demo --plain | head -1`: the reader goes away while the table is still
    printed every few seconds; nothing on stderr, no traceback, the plant stopped."""
    demo = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "massgate.agent.commands.cli",
            "demo",
            "--plain",
            "--duration",
            "60",
            "--state-dir",
            str(tmp_path / "demo"),
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    assert demo.stdout is not None
    assert demo.stderr is not None
    demo.stdout.readline()
    demo.stdout.close()  # the next table the demo prints meets a closed pipe
    try:
        code = demo.wait(timeout=60)
    finally:
        if demo.poll() is None:
            demo.kill()
            demo.wait()
    err = demo.stderr.read().decode()
    demo.stderr.close()
    assert "Traceback" not in err, err
    assert err == "", err
    assert code == 1


# --- the configuration reader ------------------------------------------------------------


def _problems(path: Path) -> list[str]:
    with pytest.raises(ConfigError) as info:
        config_module.load(path)
    return [str(p) for p in info.value.problems]


def test_a_device_file_is_refused_without_reading_it():
    assert _problems(Path("/dev/zero")) == [
        "/dev/zero:0: is not a regular file (a device, FIFO or socket); name the YAML file"
    ]


def test_a_fifo_is_refused_without_waiting_for_a_writer(tmp_path: Path):
    fifo = tmp_path / "massgate.yaml"
    os.mkfifo(fifo)
    done: list[list[str]] = []
    reader = threading.Thread(target=lambda: done.append(_problems(fifo)), daemon=True)
    reader.start()
    reader.join(timeout=30)
    if reader.is_alive():  # unblock the reader so that the thread ends, then fail
        with open(fifo, "w") as writer:
            writer.write("x")
        reader.join()
        pytest.fail("the loader opened the FIFO and waited for a writer")
    assert done == [
        [f"{fifo}:0: is not a regular file (a device, FIFO or socket); name the YAML file"]
    ]


def test_a_directory_is_refused(tmp_path: Path):
    assert _problems(tmp_path) == [f"{tmp_path}:0: is a directory, not a configuration file"]


def test_a_file_over_4_mib_is_refused_before_it_is_parsed(tmp_path: Path):
    big = tmp_path / "massgate.yaml"
    big.write_bytes(b"# " + b"x" * (4 * 1024 * 1024) + b"\n")
    assert _problems(big) == [
        f"{big}:0: is {big.stat().st_size} bytes; a configuration file is at most 4 MiB"
    ]


def test_deep_nesting_is_a_message_not_a_recursion_error(tmp_path: Path):
    deep = tmp_path / "massgate.yaml"
    deep.write_text("devices: " + "{a: " * 5000 + "1" + "}" * 5000 + "\n")
    problems = _problems(deep)
    assert len(problems) == 1
    assert problems[0].startswith(f"{deep}:1: nested deeper than 64 levels")


def test_the_first_demo_on_a_fresh_machine_agrees_with_the_plant_from_its_first_table(
    tmp_path: Path,
):
    """An empty numba cache (a fresh machine): the kernels compile before the plant's clock
    starts, so no stall leaves mass untotalized, and every table row agrees within 0.5 %."""
    env = {**os.environ, "NUMBA_CACHE_DIR": str(tmp_path / "numba")}
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "massgate.agent.commands.cli",
            "demo",
            "--plain",
            "--duration",
            "7",
            "--state-dir",
            str(tmp_path / "demo"),
        ],
        capture_output=True,
        text=True,
        timeout=180,
        env=env,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    rows = re.findall(r"^(feed|product) +\S+ +(\S+) +(\S+) +([-+]\d+\.\d+)%$", result.stdout, re.M)
    assert len(rows) >= 4, result.stdout
    for stream, total, true, error in rows:
        assert float(total) > 0, (stream, total, true)
        assert abs(float(error)) <= 0.5, (stream, total, true, error)
    assert f"kept in {tmp_path / 'demo'}" in result.stdout
    assert (tmp_path / "demo" / "demo.log").exists()
    # No stall of the pipeline left a gap in any stream (the demo bridges at most 2 s).
    with sqlite3.connect(tmp_path / "demo" / "state.sqlite") as db:
        payloads = [
            (zlib.decompress(p) if packed else bytes(p)).decode()
            for p, packed in db.execute("SELECT payload, packed FROM outbox")
        ]
    totals = [json.loads(p) for p in payloads if '"period_start"' in p]
    assert totals, payloads[:3]
    gaps = [s["gap_s"] for t in totals for s in t["streams"]]
    assert gaps, totals
    assert all(g == 0 for g in gaps), gaps
