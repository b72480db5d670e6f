"""Console-script launcher of ``prompt-restore``: answers ``--help`` and usage errors without importing torch.

``import modeling`` registers every model with transformers (users rely on that), so it imports torch and
transformers, which takes seconds. The CLI itself lives in ``modeling/cli.py``, whose module level imports only the
standard library; this launcher loads that file *without* running ``modeling/__init__.py`` and calls its ``main``,
which parses the arguments (argparse prints ``--help`` and usage errors) and runs the checks that need no model
before its first heavy import. The launcher lives here because a console script's module must sit in an installed
package whose ``__init__`` is cheap: ``training/__init__.py`` is a docstring, while any module under ``modeling``
runs ``modeling/__init__.py`` first. It imports only the standard library, and never ``training``'s own modules.

    python -m training.cli_launcher --help      # what the installed ``prompt-restore`` runs
"""

from __future__ import annotations

import importlib.util
import os
import sys
from types import ModuleType
from typing import Optional, Sequence


def _cli_module() -> ModuleType:
    """``modeling/cli.py`` as module ``modeling.cli``, without importing the ``modeling`` package yet.

    The relative imports inside its ``main`` (``from .inference import ...``) import the real package then.
    """
    if "modeling.cli" in sys.modules:
        return sys.modules["modeling.cli"]
    package = importlib.util.find_spec("modeling")  # finds a top-level package without executing it
    locations = list(package.submodule_search_locations or []) if package is not None else []
    path = os.path.join(locations[0], "cli.py") if locations else ""
    if not os.path.isfile(path):  # an unusual install (zip, frozen): take the slow, ordinary import
        import modeling.cli

        return modeling.cli
    spec = importlib.util.spec_from_file_location("modeling.cli", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Entry point of the ``prompt-restore`` console script; returns the exit code of `modeling.cli.main`."""
    return _cli_module().main(argv)


if __name__ == "__main__":
    sys.exit(main())
