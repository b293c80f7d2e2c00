"""``connecteur bench``, through real subprocesses (and `main(argv)` for the plot's missing dependency)."""

from __future__ import annotations

import importlib.util
import json
import os
import signal
import subprocess
import sys
import uuid
from pathlib import Path

import pytest

from connecteur.bench.orchestrator import DEFAULT_WORKLOADS, FANOUT_BASELINE, TARGETS, WORKLOADS, available_targets
from connecteur.cli import bench as bench_cli
from connecteur.cli import main
from tests.support import TIMEOUT, wait_until

pytestmark = pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="connecteur bench reads /proc: Linux only")

COMMAND = [sys.executable, "-m", "connecteur", "bench"]
QUICK_WAIT = TIMEOUT * 30
"""How long the test waits for `--quick` to end: far beyond the time its help
claims, which a busy machine can exceed at will, so a hang fails, not a slow spell."""
HAS_MATPLOTLIB = importlib.util.find_spec("matplotlib") is not None


def tagged_environment() -> tuple[dict[str, str], str]:
    """This environment plus a unique variable, which every process the run starts inherits."""
    tag = uuid.uuid4().hex
    return {**os.environ, "CONNECTEUR_BENCH_TEST_TAG": tag}, tag


def processes_tagged(tag: str) -> list[int]:
    """The live processes (not zombies) whose environment holds `tag`."""
    found = []
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        try:
            environ = Path(entry.path, "environ").read_bytes()
            state = Path(entry.path, "stat").read_text().rpartition(")")[2].split()[0]
        except OSError:  # gone, or not ours to read
            continue
        if f"CONNECTEUR_BENCH_TEST_TAG={tag}".encode() in environ and state != "Z":
            found.append(int(entry.name))
    return found


def assert_one_line_error(result: subprocess.CompletedProcess[str], status: int, *words: str) -> None:
    assert result.returncode == status, result
    lines = result.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("connecteur: "), result.stderr
    for word in words:
        assert word in lines[0], lines[0]


def test_quick_measures_every_target_and_workload_and_leaves_no_process(tmp_path: Path) -> None:
    """The default targets and workloads, each with a positive headline figure.

    The default workloads are all but scale and client, which run on request (test_workloads.py).
    Its duration is not asserted: the time in `--quick`'s help is a measurement
    (src/connecteur/cli/bench.py says where), not a promise a busy machine keeps.
    """
    output = tmp_path / "bench.json"
    env, tag = tagged_environment()
    result = subprocess.run(
        [*COMMAND, "--quick", "--json", str(output)], capture_output=True, text=True, env=env, timeout=QUICK_WAIT
    )
    assert result.returncode == 0, result.stderr
    assert "Reference: select." in result.stdout
    document = json.loads(output.read_text())
    assert document["seconds"] > 0
    assert document["reference"] == "select"
    assert {"cpu", "cpus", "python", "os"} <= document["machine"].keys()
    assert [target["name"] for target in document["targets"]] == available_targets()
    assert list(document["workloads"]) == DEFAULT_WORKLOADS == ["rr", "pipeline", "bulk", "many", "idle"]
    for target in available_targets():
        for workload in DEFAULT_WORKLOADS:
            spec = WORKLOADS[workload]
            if workload in document["skipped"].get(target, {}):  # a process per connection may not fit
                assert target == "processes"
                continue
            figures = document["results"][target][workload]
            assert figures[spec.headline] > 0, (target, workload, figures)
            if workload != "idle":
                assert figures["server_cpu_seconds"] > 0 and isinstance(figures["client_bound"], bool)
    assert document["failures"] == {}
    assert processes_tagged(tag) == []


def test_targets_and_reference_choose_the_rows_and_the_ratios(tmp_path: Path) -> None:
    """A reference other than select is stated, and its row holds figures while the other holds ratios."""
    output = tmp_path / "bench.json"
    command = [*COMMAND, "--quick", "--targets", "socketserver,asyncio-protocol", "--workload", "rr"]
    result = subprocess.run(
        [*command, "--reference", "asyncio-protocol", "--json", str(output)],
        capture_output=True,
        text=True,
        timeout=TIMEOUT * 3,
    )
    assert result.returncode == 0, result.stderr
    assert "Reference: asyncio-protocol." in result.stdout
    rows = {
        line.split()[0]: line
        for line in result.stdout.splitlines()
        if line.split()[:1] in (["socketserver"], ["asyncio-protocol"])
    }
    assert "\N{MULTIPLICATION SIGN}" in rows["socketserver"]
    assert "\N{MULTIPLICATION SIGN}" not in rows["asyncio-protocol"]
    document = json.loads(output.read_text())
    assert list(document["results"]) == ["socketserver", "asyncio-protocol"]
    assert list(document["results"]["socketserver"]) == ["rr"]


@pytest.mark.parametrize(
    ("arguments", "words"),
    [
        (["--workload", "rr,nope"], ["--workload", "'nope'", "rr,pipeline,bulk,many,idle"]),
        (["--targets", "select,sellect"], ["--targets", "'sellect'"]),
        (["--targets", "select,select"], ["'select' is listed twice"]),
        (["--targets", "threads", "--reference", "select"], ["--reference", "'select'", "threads"]),
        (["--json", "/nonexistent/dir/figures.json"], ["--json", "/nonexistent/dir"]),
        (["--quik"], ["--quik"]),
    ],
)
def test_bad_options_say_what_in_one_line_with_status_2(
    arguments: list[str], words: list[str], monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """Before anything runs: nothing on stdout, one line naming the bad value on stderr.

    In-process (`main(argv)`, a second each saved), with the measuring replaced
    by a failure: an option checked too late fails the test, not run a
    benchmark. The real command's exit status is the next test's.
    """
    monkeypatch.setattr(bench_cli.orchestrator, "run", lambda *_, **__: pytest.fail("the benchmark started"))
    assert main(["bench", *arguments]) == 2
    captured = capsys.readouterr()
    lines = captured.err.splitlines()
    assert len(lines) == 1 and lines[0].startswith("connecteur: "), captured.err
    for word in words:
        assert word in lines[0], lines[0]
    assert captured.out == ""


def test_a_bad_option_of_the_real_command_is_one_line_and_status_2() -> None:
    """The same through ``python -m connecteur bench``: the status and the one line reach the shell."""
    result = subprocess.run([*COMMAND, "--quik"], capture_output=True, text=True, timeout=TIMEOUT)
    assert_one_line_error(result, 2, "--quik")
    assert result.stdout == ""


def test_plot_without_matplotlib_is_one_line_and_status_2(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    """Checked before anything runs, whether matplotlib is installed here or not."""
    real_find_spec = importlib.util.find_spec
    monkeypatch.setattr(bench_cli, "find_spec", lambda name: None if name == "matplotlib" else real_find_spec(name))
    assert main(["bench", "--quick", "--plot", str(tmp_path / "plot.png")]) == 2
    captured = capsys.readouterr()
    assert captured.out == ""
    assert captured.err == "connecteur: bench: --plot needs matplotlib: pip install 'connecteur[plot]'\n"


@pytest.mark.skipif(not HAS_MATPLOTLIB, reason="matplotlib is not installed (the optional extra 'plot')")
def test_plot_writes_a_png(tmp_path: Path) -> None:
    """A PNG file, even with only some targets and workloads."""
    plot = tmp_path / "bench.png"
    command = [
        *COMMAND,
        "--quick",
        "--targets",
        "select,asyncio-protocol",
        "--workload",
        "rr,idle",
        "--plot",
        str(plot),
    ]
    result = subprocess.run(command, capture_output=True, text=True, timeout=TIMEOUT * 6)
    assert result.returncode == 0, result.stderr
    assert plot.read_bytes().startswith(b"\x89PNG\r\n\x1a\n")


def test_sigint_stops_every_process_and_exits_130() -> None:
    """Interrupted mid-run, during the processes engine's forks: no server or client outlives it."""
    env, tag = tagged_environment()
    process = subprocess.Popen(
        [*COMMAND, "--quick", "--targets", "select,processes,socketserver", "--workload", "many,idle"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
    )
    try:
        assert process.stderr is not None
        first = process.stderr.readline()  # a measurement is done: every server and the client run
        assert first.startswith("[1/"), first
        assert len(processes_tagged(tag)) > 3
        process.send_signal(signal.SIGINT)
        assert process.wait(TIMEOUT) == 130
        assert process.stderr.read().strip().splitlines()[-1] == "connecteur: interrupted"
        wait_until(lambda: not processes_tagged(tag), what="every benchmark process to exit")
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
        if process.stderr is not None:
            process.stderr.close()


def test_the_default_targets_are_all_but_uvloops_when_it_is_missing() -> None:
    """Every engine and every peer, in the table's order; the uvloop ones only with uvloop.

    Not the fanout workload's baseline, which serves nothing else: a run of that workload adds it.
    """
    missing = [] if importlib.util.find_spec("uvloop") is not None else ["asyncio@uvloop", "uvloop-protocol"]
    assert [name for name in TARGETS if name not in available_targets()] == [*missing, FANOUT_BASELINE]
    assert {target.kind for target in TARGETS.values()} == {"engine", "peer"}
