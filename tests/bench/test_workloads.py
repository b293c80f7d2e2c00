"""``connecteur bench``'s recv-into and select*2 targets, its scale, client and mux workloads, and ``--check``."""

from __future__ import annotations

import json
import os
import re
import socket
import subprocess
import time
from importlib.util import find_spec
from pathlib import Path

import pytest

from connecteur import COMPILED
from connecteur.bench import check as bench_check
from connecteur.bench import processes as bench_processes
from connecteur.bench import servers
from connecteur.bench.fanout import SUBSCRIBERS
from connecteur.bench.orchestrator import FANOUT_BASELINE, TARGETS
from connecteur.bench.scale import SCALE_CONNECTIONS
from connecteur.cli import main
from tests.bench.test_command import COMMAND, processes_tagged, tagged_environment
from tests.support import TIMEOUT

pytestmark = pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="connecteur bench reads /proc: Linux only")


def run_bench(*arguments: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*COMMAND, *arguments], capture_output=True, text=True, env=env, timeout=TIMEOUT * 6)


def test_the_engine_targets_workers_agree_with_the_servers() -> None:
    """What bench pins (a target with one worker) is what `servers` starts with one worker."""
    for name, (_, _, workers) in servers.ENGINES.items():
        assert TARGETS[name].workers == workers
    assert TARGETS["select*2"].workers == 2 and "recv-into" in servers.PEERS


def test_recv_into_and_two_select_workers_start_echo_and_stop_cleanly(tmp_path: Path) -> None:
    """Both serve rr; the select*2 server is not pinned (when there are CPUs to pin to); no process outlives the run."""
    output = tmp_path / "bench.json"
    env, tag = tagged_environment()
    result = run_bench("--targets", "recv-into,select*2", "--workload", "rr", "--quick", "--json", str(output), env=env)
    assert result.returncode == 0, result.stderr
    document = json.loads(output.read_text())
    for target in ("recv-into", "select*2"):
        assert document["results"][target]["rr"]["per_second"] > 0
    assert document["failures"] == {} and document["notes"] == []  # notes: what a server said on stopping
    if len(os.sched_getaffinity(0)) > 1:
        assert "select*2 not pinned" in result.stdout
    assert processes_tagged(tag) == []


def test_the_client_and_scale_workloads_give_their_figures(tmp_path: Path) -> None:
    """client: both clients' round trips/s and their ratio; scale: 16 connections, the client's CPU under the server's.

    A small share of it, in fact: the scale client must not limit a two-worker server sharing its core.
    """
    output = tmp_path / "bench.json"
    result = run_bench("--targets", "select", "--workload", "client,scale", "--quick", "--json", str(output))
    assert result.returncode == 0, result.stderr
    assert "vs socket" in result.stdout
    figures = json.loads(output.read_text())["results"]["select"]
    client = figures["client"]
    assert client["per_second"] > 0 and client["socket_per_second"] > 0
    assert client["ratio"] == pytest.approx(client["per_second"] / client["socket_per_second"])
    assert client["client_cpu_us_per_message"] > 0 and client["socket_client_cpu_us_per_message"] > 0
    scale = figures["scale"]
    assert scale["per_second"] > 0 and scale["connections"] == SCALE_CONNECTIONS
    assert 0 < scale["client_cpu_us_per_message"] < scale["server_cpu_us_per_message"]
    assert isinstance(scale["client_bound"], bool)


def test_the_mux_workload_compares_a_shared_multiplexed_connection_with_one_per_thread(tmp_path: Path) -> None:
    """Both sides' requests/s and server CPU, in the same run; a peer, which speaks no envelope, is skipped."""
    output = tmp_path / "bench.json"
    env, tag = tagged_environment()
    result = run_bench(
        "--targets", "select,asyncio-streams", "--workload", "mux", "--quick", "--json", str(output), env=env
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    document = json.loads(output.read_text())
    figures = document["results"]["select"]["mux"]
    assert figures["per_second"] > 0 and figures["lockstep_per_second"] > 0
    assert figures["server_cpu_us_per_message"] > 0 and figures["lockstep_server_cpu_us_per_message"] > 0
    assert figures["shared_over_lockstep"] == pytest.approx(figures["per_second"] / figures["lockstep_per_second"])
    assert "mux" in document["skipped"]["asyncio-streams"]
    assert document["failures"] == {} and document["notes"] == []
    assert processes_tagged(tag) == []  # the multiplexed twin stopped too


def test_fanout_measures_the_broadcast_against_the_hand_written_broadcaster(tmp_path: Path) -> None:
    """Every subscriber gets every message (the client checks the byte counts); the baseline joins the run by itself."""
    output = tmp_path / "bench.json"
    env, tag = tagged_environment()
    result = run_bench(
        "--targets", "select,processes", "--workload", "fanout,rr", "--quick", "--json", str(output), env=env
    )
    assert result.returncode == 0, result.stderr
    assert "del/s" in result.stdout
    document = json.loads(output.read_text())
    for target in ("select", FANOUT_BASELINE):
        fanout = document["results"][target]["fanout"]
        assert fanout["per_second"] > 0 and fanout["server_cpu_us_per_message"] > 0
        assert fanout["messages"] == fanout["published"] * fanout["subscribers"] == fanout["published"] * SUBSCRIBERS
    assert "no broadcast" in document["skipped"]["processes"]["fanout"]
    assert "fanout workload only" in document["skipped"][FANOUT_BASELINE]["rr"]
    assert document["failures"] == {} and processes_tagged(tag) == []


@pytest.mark.parametrize("option", [["--targets", "select"], ["--workload", "rr"], ["--reference", "select"]])
def test_check_with_a_plan_of_ones_own_is_one_line_and_status_2(
    option: list[str], capsys: pytest.CaptureFixture[str]
) -> None:
    """--check runs a fixed plan: choosing targets, workloads or a reference is a usage error, before anything runs."""
    assert main(["bench", "--check", *option]) == 2
    captured = capsys.readouterr()
    assert captured.out == ""
    assert captured.err == f"connecteur: bench: --check runs a fixed plan: it cannot be combined with {option[0]}\n"


@pytest.mark.skipif(find_spec("uvloop") is None, reason="--check compares with uvloop-protocol: needs uvloop")
def test_check_quick_prints_a_line_per_check_and_exits_0(tmp_path: Path) -> None:
    """The quick check measures only what the checks need, says HOLDS or MISSED for each, and only reports.

    About 6-10 s on 2 cores.
    """
    output = tmp_path / "bench.json"
    env, tag = tagged_environment()
    result = run_bench("--check", "--quick", "--json", str(output), env=env)
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    build = "compiled build (mypyc)" if COMPILED else "pure-Python build"
    assert f"Performance targets of the {build}, indicative only: a quick run is too short to decide them" in lines
    for check in bench_check.CHECKS:
        (line,) = [line for line in lines if line.startswith(check.id + " ")]
        assert re.search(r" (HOLDS|MISSED)( \(client-bound\))?$", line), line
    checks = bench_check.CHECKS
    needed = {(c.target, c.workload) for c in checks} | {(c.baseline, c.workload) for c in checks if c.baseline}
    skipped = len(bench_check.TARGETS) * len({c.workload for c in checks}) - len(needed)
    assert f"skipped: {skipped} pairs: not needed by --check" in lines
    assert len([line for line in result.stderr.splitlines() if line.startswith("[")]) == len(needed)  # one each
    document = json.loads(output.read_text())
    assert [verdict["id"] for verdict in document["checks"]] == [check.id for check in bench_check.CHECKS]
    assert {verdict["outcome"] for verdict in document["checks"]} <= {"HOLDS", "MISSED"}
    assert {verdict["build"] for verdict in document["checks"]} == {"compiled" if COMPILED else "pure"}
    assert processes_tagged(tag) == []


def test_a_bench_server_is_asked_to_stop_once_and_stops_gracefully(tmp_path: Path) -> None:
    """Asking twice (all servers at once, then each as it is waited for) sends one SIGTERM.

    A second SIGTERM stops connecteur's servers at once, not gracefully: with a
    connection still open, the server then ended by the signal, and on a busy
    machine reported a cut-short stop in the bench's notes.
    """
    with (tmp_path / "stderr").open("w+b") as stderr:
        server = bench_processes.Server("select", None, stderr)
        try:
            server.wait_ready()
            with socket.create_connection(server.address, timeout=TIMEOUT):  # holds the graceful stop
                server.terminate()
                server.terminate()
                time.sleep(0.5)  # time for a second signal to arrive, were one sent
            assert server.stop() == ""
            assert server._proc.returncode == 0  # a graceful stop's end, not the signal's
        finally:
            server.stop()
