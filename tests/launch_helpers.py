"""Helpers for tests that launch the real scripts in subprocesses (accelerate launch, kill -9, resume)."""

from __future__ import annotations

import shutil
import signal
import socket
import subprocess
import sys
from pathlib import Path
from typing import Callable, Optional

import psutil
import pytest


def free_port() -> int:
    """A port nothing listens on now (bound by the OS and released), for one launch's rendezvous."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def kill_tree(pid: int) -> None:
    """SIGKILL a process and every descendant. torch's elastic agent starts each rank in a new session, so
    killing the launcher's process group would leave the ranks running (holding ports, CPU and our pipes)."""
    try:
        parent = psutil.Process(pid)
        processes = parent.children(recursive=True) + [parent]
    except psutil.NoSuchProcess:
        return
    for process in processes:
        try:
            process.kill()
        except psutil.NoSuchProcess:
            pass
    psutil.wait_procs(processes, timeout=30)


def accelerate_launch(processes: int = 2) -> list[str]:
    """The `accelerate launch` prefix for ``processes`` CPU ranks on a port of their own.

    ``--multi_gpu`` is what gives real processes on CPU (``--cpu --num_processes 2`` silently runs one), and
    accelerate's default port 29500 is shared by every launch on the machine (another test run's, say).
    """
    accelerate = Path(sys.executable).with_name("accelerate")
    return [str(accelerate), "launch", "--multi_gpu", "--num_processes", str(processes), "--num_machines", "1",
            "--mixed_precision", "no", "--dynamo_backend", "no", "--main_process_port", str(free_port())]


def native_stacks(processes: list[psutil.Process]) -> None:
    """Where py-spy is installed (a developer's tool, not a dependency), print each process's native and Python
    stacks to this process's stderr: a hang inside a C++ destructor shows only as its Python caller otherwise."""
    py_spy = shutil.which("py-spy") or shutil.which("py-spy", path=str(Path(sys.executable).parent))
    if py_spy is None:
        return
    for process in processes:
        try:
            dump = subprocess.run([py_spy, "dump", "--native", "--pid", str(process.pid)], capture_output=True,
                                  text=True, timeout=60)
            print(f"py-spy dump --native --pid {process.pid}:\n{dump.stdout}{dump.stderr}", file=sys.stderr)
        except (OSError, subprocess.SubprocessError) as error:
            print(f"py-spy could not read {process.pid}: {error}", file=sys.stderr)


def dump_stacks_and_kill(pid: int, settle: float = 5.0) -> None:
    """SIGABRT every process of the tree below ``pid`` (and ``pid``): with ``PYTHONFAULTHANDLER`` set, each Python
    process prints every thread's stack to its stderr before it dies, so a hang leaves its place in the log. Then
    SIGKILL whatever is left."""
    try:
        parent = psutil.Process(pid)
        processes = [*reversed(parent.children(recursive=True)), parent]
    except psutil.NoSuchProcess:
        processes = []
    native_stacks(processes)
    # The ranks first, their launcher last (it forwards their stderr), and one at a time: processes sharing a
    # stderr pipe that dump together interleave their lines mid-word.
    for process in processes:
        try:
            process.send_signal(signal.SIGABRT)
        except psutil.NoSuchProcess:
            continue
        psutil.wait_procs([process], timeout=settle)
    kill_tree(pid)


def run_to_end(command: list[str], *, env: dict[str, str], cwd: Path, timeout: float,
               preexec_fn: Optional[Callable[[], None]] = None) -> subprocess.CompletedProcess:
    """Run ``command`` in a session of its own and wait; on timeout fail with the log and every process's stacks.

    Whatever happens, nothing of the launch outlives it: a rank left behind holds a port and the CPU and makes
    the next launch hang. ``preexec_fn`` runs in the child before the command (to set a resource limit, say).
    """
    env = {**env, "PYTHONFAULTHANDLER": "1"}  # stacks on SIGABRT (see dump_stacks_and_kill)
    process = subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                               cwd=cwd, start_new_session=True, preexec_fn=preexec_fn)
    try:
        stdout, stderr = process.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        dump_stacks_and_kill(process.pid)
        stdout, stderr = process.communicate()
        pytest.fail(f"{' '.join(command[:8])} ... did not finish in {timeout} s; stderr (with the stacks of its "
                    f"processes at the timeout):\n{stderr[-12000:]}")
    finally:
        kill_tree(process.pid)
    return subprocess.CompletedProcess(command, process.returncode, stdout, stderr)
