"""The launch helper every multi-process test uses: a hang fails with each process's Python stacks, and no
process of the launch survives it."""

from __future__ import annotations

import os
import sys
import textwrap
from pathlib import Path

import psutil
import pytest
from launch_helpers import run_to_end

HANGS = textwrap.dedent(
    """
    import subprocess, sys, threading, time

    def waiting_worker():
        while True:
            time.sleep(1)

    threading.Thread(target=waiting_worker, daemon=True).start()
    # The child says when it runs: faulthandler is armed by then. A SIGABRT that lands while a slow machine is
    # still starting the interpreter would kill it without a dump, and the count below would flake.
    child = subprocess.Popen([sys.executable, "-c", "import time; print('ready', flush=True); time.sleep(600)"],
                             stdout=subprocess.PIPE, text=True)
    child.stdout.readline()
    print("child", child.pid, "ready", flush=True)
    time.sleep(600)
    """
)


def test_a_hung_launch_fails_with_every_stack_and_leaves_nothing_running(tmp_path):
    with pytest.raises(pytest.fail.Exception) as failure:
        run_to_end([sys.executable, "-c", HANGS], env=dict(os.environ), cwd=Path(tmp_path), timeout=10)
    message = str(failure.value)
    assert "did not finish in 10 s" in message
    assert "in waiting_worker" in message  # the parent's threads
    assert message.count("Fatal Python error: Aborted") == 2  # the parent and its child both dumped
    assert not [p for p in psutil.process_iter(["cmdline"]) if "time.sleep(600)" in " ".join(p.info["cmdline"] or [])]


def test_a_finished_command_returns_its_output(tmp_path):
    result = run_to_end([sys.executable, "-c", "import sys; print('out'); print('err', file=sys.stderr)"],
                        env=dict(os.environ), cwd=Path(tmp_path), timeout=60)
    assert (result.returncode, result.stdout, result.stderr) == (0, "out\n", "err\n")
