"""Published PSNR/SSIM of the all-in-one restoration papers, per protocol, with the table each row comes from.

Transcribed from the compiled tables in the project's research notes (``data_and_results.md`` §3-6, §10), one
source table per row (the same baseline is reprinted with different last digits across papers, so rows are never
merged from two tables). Columns use the names of :mod:`training.evaluate_protocol` (``noise-25``, ``rain``,
``haze``, ``blur``, ``low-light``, the CDD-11 types); a missing column is ``None``. SSIM columns are only
comparable between rows of the same SSIM convention (``ssim_window``: MoCE-IR and InstructIR use a Gaussian
window, PromptIR / AdaIR / CPL / DPPD / OneRestore skimage's uniform 7x7 window). PIP's own tables were not found in
any source, so PIP has no row here (rather than numbers from memory).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

Score = tuple[float, Optional[float]]  # (PSNR dB, SSIM or None)


@dataclass(frozen=True)
class PublishedRow:
    """One method's published numbers under one protocol.

    Args:
        method: method name as printed in the source table.
        source: the table the numbers come from (repository file or paper table).
        scores: ``{column: (psnr, ssim | None)}``; columns the table does not give are absent.
        average: the average as printed (never recomputed: papers round per column first).
        ssim_window: ``"uniform7"`` or ``"gaussian"`` (the SSIM convention of the source).
        note: caveats (reprinted from another paper, typo in the source, ...).
    """

    method: str
    source: str
    scores: dict[str, Score]
    average: Optional[Score] = None
    ssim_window: str = "uniform7"
    note: str = ""


def _row(method: str, source: str, columns: tuple[str, ...], values: list, average: Optional[Score], **kw) -> PublishedRow:
    return PublishedRow(method, source, {c: v for c, v in zip(columns, values) if v is not None}, average, **kw)


_T3 = ("haze", "rain", "noise-15", "noise-25", "noise-50")
_CPL3 = ("noise-15", "noise-25", "noise-50", "haze", "rain")  # column order of CPL/DPPD Table I
_T5 = ("haze", "rain", "noise-25", "blur", "low-light")
_CPL5 = ("noise-25", "haze", "rain", "blur", "low-light")  # CPL Table II
_INSTRUCTIR5 = ("rain", "haze", "noise-25", "blur", "low-light")  # InstructIR Table 2
CDD11_COLUMNS = ("low", "haze", "rain", "snow", "low_haze", "low_rain", "low_snow", "haze_rain", "haze_snow",
                 "low_haze_rain", "low_haze_snow")

PROMPTIR_T1 = "va1shn9v/PromptIR:prompt-ir-results.png (PromptIR paper Table 1)"
ADAIR_3D = "c-yn/AdaIR:figs/adair3d.PNG (AdaIR paper, 3-task table)"
ADAIR_5D = "c-yn/AdaIR:figs/adair5d.PNG (AdaIR paper, 5-task table)"
MOCE_T1 = "eduardzamfir/MoCE-IR:assets/results_aio_3.png (MoCE-IR paper Table 1)"
MOCE_T2 = "eduardzamfir/MoCE-IR:assets/results_aio_5.png (MoCE-IR paper Table 2)"
INSTRUCTIR_T2 = "mv-lab/InstructIR:static/tables/table1.png (InstructIR paper Table 2, 5D)"
INSTRUCTIR_T4 = "mv-lab/InstructIR:static/tables/table-3d.png (InstructIR paper Table 4, 3D)"
CPL_T1 = "Aitical/CPLIR:assets/result1.png (CPL paper Table I)"
CPL_T2 = "Aitical/CPLIR:assets/result2.png (CPL paper Table II)"
CPL_T5 = "Aitical/CPLIR:assets/result5.png (CPL paper Table V)"
DPPD_T1 = "Aitical/DPPD:assets/result1.png (DPPD paper Table I)"
DPPD_T2 = "Aitical/DPPD:assets/result2.png (DPPD paper Table II)"
DPPD_T4 = "Aitical/DPPD:assets/result4.png (DPPD paper Table IV)"
ONERESTORE = "gy65896/OneRestore:README.md and img_file/metrics_CDD-11_psnr_ssim.xlsx"

PUBLISHED: dict[str, list[PublishedRow]] = {
    "3-task": [
        _row("AirNet", PROMPTIR_T1, _T3, [(27.94, .962), (34.90, .967), (33.92, .933), (31.26, .888), (28.00, .797)],
             (31.20, .910)),
        _row("Restormer", CPL_T1, _CPL3, [(33.72, .930), (30.67, .865), (27.63, .792), (27.78, .958), (33.78, .958)],
             (30.75, .901), note="all-in-one retrain reported by CPL"),
        _row("PromptIR", PROMPTIR_T1, _T3, [(30.58, .974), (36.37, .972), (33.98, .933), (31.31, .888), (28.06, .799)],
             (32.06, .913), note="users re-running the official checkpoint report Rain100L 37.44 dB (PromptIR#35)"),
        _row("InstructIR-3D", INSTRUCTIR_T4, _T3,
             [(30.22, .959), (37.98, .978), (34.15, .933), (31.52, .890), (28.30, .804)], (32.43, .913),
             ssim_window="gaussian",
             note="InstructIR pre-generates its noisy images (seed 42) and scores SSIM with pytorch_msssim"),
        _row("AdaIR", ADAIR_3D, _T3, [(31.06, .980), (38.64, .983), (34.12, .935), (31.45, .892), (28.19, .802)],
             (32.69, .918)),
        _row("MoCE-IR", MOCE_T1, _T3, [(31.34, .979), (38.57, .984), (34.11, .932), (31.45, .888), (28.18, .800)],
             (32.73, .917), ssim_window="gaussian"),
        _row("PromptIR + DPPD", DPPD_T1, _CPL3,
             [(34.12, .941), (31.80, .891), (28.17, .809), (31.10, .981), (37.74, .982)], (32.59, .921)),
        _row("PromptIR + CPL", CPL_T1, _CPL3,
             [(34.15, .933), (31.50, .889), (28.23, .800), (31.27, .980), (38.77, .985)], (32.78, .917)),
    ],
    "5-task": [
        _row("AirNet", ADAIR_5D, _T5, [(21.04, .884), (32.98, .951), (30.91, .882), (24.35, .781), (18.18, .735)],
             (25.49, .846), note="IDR (CVPR'23) numbers reprinted by AdaIR"),
        _row("Restormer", ADAIR_5D, _T5, [(24.09, .927), (34.81, .962), (31.49, .884), (27.22, .829), (20.41, .806)],
             (27.60, .881), note="IDR (CVPR'23) numbers reprinted by AdaIR"),
        _row("IDR", ADAIR_5D, _T5, [(25.24, .943), (35.63, .965), (31.60, .887), (27.87, .846), (21.34, .826)],
             (28.34, .893)),
        _row("PromptIR", CPL_T2, _CPL5, [(31.47, .886), (26.54, .949), (36.37, .970), (28.71, .881), (22.68, .832)],
             (29.15, .904), note="5-task retrain 'cited from previous works' by CPL"),
        _row("InstructIR-5D", INSTRUCTIR_T2, _INSTRUCTIR5,
             [(36.84, .973), (27.10, .956), (31.40, .887), (29.40, .886), (23.00, .836)], (29.55, .907),
             ssim_window="gaussian", note="SSIM with pytorch_msssim's Gaussian 11x11 window"),
        _row("AdaIR", ADAIR_5D, _T5, [(30.53, .978), (38.02, .981), (31.35, .889), (28.12, .858), (23.00, .845)],
             (30.20, .910)),
        _row("MoCE-IR", MOCE_T2, _T5, [(30.48, .974), (38.04, .982), (31.34, .887), (30.05, .899), (23.00, .852)],
             (30.58, .919), ssim_window="gaussian"),
        _row("PromptIR + DPPD", DPPD_T2, _T5,
             [(30.31, .980), (37.32, .980), (31.33, .885), (28.74, .875), (22.73, .846)], (30.09, .913)),
        _row("PromptIR + CPL", CPL_T2, _CPL5,
             [(31.41, .887), (30.82, .978), (38.20, .983), (28.72, .874), (23.65, .855)], (30.55, .915)),
    ],
    "cdd11": [
        _row("Input", ONERESTORE, CDD11_COLUMNS,
             [(v, None) for v in (12.00, 15.87, 22.02, 23.62, 14.94, 14.61, 13.50, 14.78, 14.79, 15.25, 14.63)],
             (16.00, .6008), note="per-type PSNR from the xlsx, average from the README"),
        _row("AirNet", CPL_T5, CDD11_COLUMNS,
             [(v, None) for v in (24.83, 24.21, 26.55, 26.79, 23.23, 22.82, 23.29, 22.21, 23.29, 21.80, 22.24)],
             (23.75, None)),
        _row("Restormer", ONERESTORE, CDD11_COLUMNS, [], (26.99, .8646)),
        _row("PromptIR", CPL_T5, CDD11_COLUMNS,
             [(v, None) for v in (26.32, 26.10, 31.56, 31.53, 24.49, 25.05, 24.51, 24.54, 23.70, 23.74, 23.33)],
             (25.90, None)),
        _row("InstructIR", CPL_T5, CDD11_COLUMNS,
             [(v, None) for v in (26.70, 32.61, 33.51, 34.45, 24.36, 25.41, 25.63, 28.80, 29.64, 24.84, 24.32)],
             (28.21, None)),
        _row("OneRestore", CPL_T5, CDD11_COLUMNS,
             [(v, None) for v in (26.55, 32.71, 33.48, 34.50, 26.15, 25.83, 25.56, 30.27, 30.46, 25.18, 25.28)],
             (28.47, None), note="as printed: the average (OneRestore's README figure) is not the mean of the "
             "columns (28.72)"),
        _row("PromptIR + DPPD", DPPD_T4, CDD11_COLUMNS,
             [(v, None) for v in (27.22, 31.08, 34.53, 35.48, 26.29, 26.36, 26.11, 29.87, 29.64, 25.30, 25.37)],
             (28.84, None)),
        _row("PromptIR + CPL", CPL_T5, CDD11_COLUMNS,
             [(v, None) for v in (27.35, 32.79, 34.60, 35.35, 26.18, 26.32, 26.10, 30.40, 29.95, 25.40, 25.35)],
             (29.07, None)),
    ],
}
"""Published rows per protocol (``"3-task"``, ``"5-task"``, ``"cdd11"``)."""


def published_rows(protocol: str) -> list[PublishedRow]:
    """The published rows of `protocol` (KeyError naming the known protocols otherwise)."""
    if protocol not in PUBLISHED:
        raise KeyError(f"no published results for protocol {protocol!r}; known: {sorted(PUBLISHED)}")
    return list(PUBLISHED[protocol])


def row_as_dict(row: PublishedRow) -> dict:
    """JSON-ready form of a row: ``{"method", "source", "ssim_window", "note", "tasks": {col: {"psnr", "ssim"}},
    "average": {"psnr", "ssim"} | None}``."""
    return {
        "method": row.method,
        "source": row.source,
        "ssim_window": row.ssim_window,
        "note": row.note,
        "tasks": {column: {"psnr": psnr, "ssim": ssim} for column, (psnr, ssim) in row.scores.items()},
        "average": None if row.average is None else {"psnr": row.average[0], "ssim": row.average[1]},
    }


__all__ = ["CDD11_COLUMNS", "PUBLISHED", "PublishedRow", "published_rows", "row_as_dict"]
