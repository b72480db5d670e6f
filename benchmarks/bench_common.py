"""What bench_infer.py and bench_train.py share: the peak-memory child process and the table they print."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from typing import Mapping, Optional, Sequence


def peak_rss_kib() -> int:
    """This process's peak resident memory in KiB: ``VmHWM`` of /proc/self/status, the high-water mark of this
    process image's own memory. ``ru_maxrss`` cannot be used: Linux carries it over ``exec``, so a child started
    by a larger parent (vfork + exec) reports the parent's peak whenever that is higher."""
    with open("/proc/self/status") as status:
        return next(int(line.split()[1]) for line in status if line.startswith("VmHWM:"))


def report_child_peak() -> None:
    """In a `--child-path` process: print this process's peak RSS (KiB) as the last line, for `child_peak_mib`."""
    print(json.dumps({"peak_kib": peak_rss_kib()}))


def child_peak_mib(script: str, argv: Sequence[str], threads: int) -> float:
    """Peak RSS (MiB) of `python script *argv` in a fresh interpreter: one path's CPU memory, free of the memory
    every other path of the parent already touched."""
    env = dict(os.environ, OMP_NUM_THREADS=str(threads))
    result = subprocess.run([sys.executable, script, *argv], capture_output=True, text=True, env=env, check=True)
    return json.loads(result.stdout.strip().splitlines()[-1])["peak_kib"] / 1024


def print_table(rows: list[dict], quality_key: Optional[str] = None, quality_label: str = "",
                quality_format: str = ".3f", difference_format: str = ".3f") -> None:
    """One line per path: ms, img/s, peak MiB, the speed ratio to the reference and, if given, a quality column
    with its difference to the reference (``<quality_key>_vs_reference``)."""
    header = f"{'path':<24}{'ms':>10}{'img/s':>9}{'peak MiB':>10}{'ratio':>8}{'(ref ms)':>10}"
    if quality_key:
        header += f"{quality_label:>12}{'vs ref':>10}"
    print(header)
    for row in rows:
        peak = "-" if row.get("peak_mib") is None else f"{row['peak_mib']:.0f}"
        ratio = "-" if row.get("ratio") is None else f"{row['ratio']:.2f}x"  # None: the reference had no row
        # The reference is timed again in each phase's rounds: the ratio is to that phase's reference ms.
        reference = "-" if row.get("reference_ms") is None else f"({row['reference_ms']:.1f})"
        ms = "-" if row.get("ms") is None else f"{row['ms']:.1f}"  # None: not timed (bench_train --curve-only)
        speed = "-" if row.get("images_per_s") is None else f"{row['images_per_s']:.2f}"
        line = f"{row['path']:<24}{ms:>10}{speed:>9}{peak:>10}{ratio:>8}{reference:>10}"
        if quality_key:
            line += f"{row[quality_key]:>12{quality_format}}{row[quality_key + '_vs_reference']:>+10{difference_format}}"
        print(line)
    sys.stdout.flush()  # a benchmark killed later (a time limit) still leaves the table it printed


def path_names(paths: Sequence[str], requested: Optional[Sequence[str]], bf16: bool, compiled: bool) -> list[str]:
    """The rows to time, in `paths` order: `requested` (`--paths`) when given, else the reference and
    channels-last, plus the bf16 pair when `bf16` and the bf16 compiled pair when `compiled`; the reference
    always runs, since every ratio is against it."""
    if requested:
        return ["reference"] + [name for name in paths if name in requested and name != "reference"]
    names = ["reference", "channels-last"] + (["bf16", "channels-last+bf16"] if bf16 else [])
    return names + (["bf16+compile", "channels-last+bf16+compile"] if compiled else [])


def compilation_phases(names: Sequence[str], compiled: Mapping[str, object]) -> list[list[str]]:
    """`names` split into the eager paths, then one phase per kind of compilation (``compiled[name]``: None for
    eager, e.g. "blocks", then "model", in the order they first appear), dropping empty phases: each phase is warmed
    up, timed and reported before the next, so a time limit hit while a path compiles (minutes on a GPU) keeps the
    rows of the eager paths and of the compilations that finished."""
    kinds = list(dict.fromkeys([None] + [compiled[name] for name in names]))
    phases = [[name for name in names if compiled[name] == kind] for kind in kinds]
    return [phase for phase in phases if phase]


def time_phase(phase: Sequence[str], available: Sequence[str], run_once, repeats: int,
               per: float = 1) -> dict[str, tuple[float, Optional[float], Optional[float]]]:
    """``{path: (median seconds / per, ratio to the reference or None, the reference's median seconds / per in
    these rounds or None)}`` for `phase`'s paths in `available` (those not out of memory), timed in the same rounds
    as the reference when it is available."""
    timed = list(dict.fromkeys((["reference"] if "reference" in available else [])
                               + [name for name in phase if name in available]))
    if not timed:
        return {}
    medians = {name: seconds / per for name, seconds in interleaved_medians(timed, run_once, repeats).items()}
    reference = medians.get("reference")
    return {name: (medians[name], reference / medians[name] if reference else None, reference)
            for name in timed if name in phase}


def timing_rows(names: Sequence[str], timings: Mapping[str, tuple], peaks: Mapping[str, float],
                batch: int) -> list[dict]:
    """One row per timed path, in `names` order: ms, img/s, peak MiB (None when not measured), the ratio and the
    reference ms it is taken against (the reference timed in the same rounds: ratio = reference_ms / ms)."""
    rows = []
    for name in names:
        if name in timings:
            seconds, ratio, reference = timings[name]
            rows.append({"path": name, "ms": seconds * 1000, "images_per_s": batch / seconds,
                         "peak_mib": peaks.get(name), "ratio": ratio,
                         "reference_ms": None if reference is None else reference * 1000})
    return rows


def interleaved_medians(names: Sequence[str], run_once, repeats: int) -> dict[str, float]:
    """Median seconds of `run_once(name)` per path, timed in `repeats` rounds that each run every path once, so
    load from other programs affects all paths alike. `run_once` must wait for the device itself."""
    import statistics
    import time

    times: dict[str, list[float]] = {name: [] for name in names}
    for _ in range(repeats):
        for name in names:
            start = time.perf_counter()
            run_once(name)
            times[name].append(time.perf_counter() - start)
    return {name: statistics.median(values) for name, values in times.items()}
