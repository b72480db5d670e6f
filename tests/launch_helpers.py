"""Helpers for tests that launch the real scripts in subprocesses (accelerate launch, kill -9, resume)."""

from __future__ import annotations

import socket

import psutil


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
