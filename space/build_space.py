"""Assemble the Hugging Face Space folder (and optionally upload it).

    python space/build_space.py --output build/space
    python space/build_space.py --output build/space --push your-name/prompt-restoration

A Space repository holds only its own files and pip cannot install a path outside it, so the folder gets
app.py, README.md (the Spaces YAML header), requirements.txt (the dependencies of `modeling`), the screenshot,
and a copy of the installed `modeling` package with its demo weights and example crops (`modeling/demo/`).
On the Space, `python app.py` then imports that copy, because the app's folder comes first on `sys.path`.
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
from pathlib import Path

SPACE_DIR = Path(__file__).resolve().parent
#: Files of this folder that belong in the Space repository.
SPACE_FILES = ("app.py", "README.md", "requirements.txt", "screenshot.png")


def is_space_folder(folder: Path) -> bool:
    """Whether `folder` looks like an earlier `build` (app.py next to a copy of `modeling`)."""
    return (folder / "app.py").is_file() and (folder / "modeling" / "__init__.py").is_file()


def build(output: Path) -> Path:
    """Write the Space folder to `output` and return it; `output` must be new, empty or an earlier build (replaced)."""
    import modeling

    package = Path(modeling.__file__).resolve().parent
    output = output.resolve()
    # Neither inside nor above the sources: a folder above them is deleted whole when it is replaced.
    for source in (SPACE_DIR, package):
        if output == source or source in output.parents or output in source.parents:
            raise ValueError(f"--output must be a separate folder, got {output}")
    if not output.exists():
        from modeling.cli import check_output_folder

        problem = check_output_folder(output)  # a path below a file: one line, not mkdir's traceback
        if problem is not None:
            raise ValueError(f"--output: {problem}")
    if output.exists():
        if not output.is_dir() or (any(output.iterdir()) and not is_space_folder(output)):
            raise ValueError(
                f"--output {output} exists and is not a Space folder built by this script; name a new or empty folder"
            )
    # Built beside it and renamed into place: an interrupted build leaves only the hidden `.partial` folder (replaced
    # by the next build), never a half-built `output` that the check above would then refuse.
    partial = output.with_name(f".{output.name}.partial")
    if partial.exists():
        shutil.rmtree(partial)
    partial.mkdir(parents=True)
    for name in SPACE_FILES:
        if (SPACE_DIR / name).is_file():
            shutil.copy2(SPACE_DIR / name, partial / name)
    shutil.copytree(package, partial / "modeling", ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
    if output.exists():
        shutil.rmtree(output)
    os.replace(partial, output)
    if not (output / "modeling" / "demo" / "config.json").is_file():
        print(
            "warning: modeling/demo/ has no config.json: the Space has no default weights; set SPACE_MODEL "
            "(a Hub id) in the Space's variables.",
            file=sys.stderr,
        )
    return output


class PushError(RuntimeError):
    """An upload that did not happen; its message is one line naming the reason and the local folder."""


def push(folder: Path, repo_id: str, private: bool = False) -> str:
    """Create the Space repository if needed and upload `folder` in one commit; returns the commit URL.

    Raises `PushError` (one line) when offline (``HF_HUB_OFFLINE=1``), without a token, or when the Hub answers
    with an error; the built folder stays as it is.
    """
    from huggingface_hub import HfApi, constants, get_token

    where = f"the Space folder is built in {folder}"
    if constants.is_offline_mode():
        raise PushError(f"upload to {repo_id} failed: offline mode is on (HF_HUB_OFFLINE=1); {where}")
    if not get_token():
        raise PushError(f"upload to {repo_id} failed: no Hugging Face token (set HF_TOKEN or run `hf auth login`); "
                        f"{where}")
    api = HfApi()
    try:
        api.create_repo(repo_id, repo_type="space", space_sdk="gradio", private=private, exist_ok=True)
        info = api.upload_folder(
            repo_id=repo_id, repo_type="space", folder_path=folder, commit_message="Update the Space"
        )
    except Exception as error:  # noqa: BLE001 - network boundary: every failure becomes one clear line
        reason = " ".join(line.strip() for line in str(error).splitlines() if line.strip())
        raise PushError(f"upload to {repo_id} failed: {type(error).__name__}: {reason}; {where}") from error
    return str(info.commit_url)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--output", type=Path, default=Path("build/space"),
                        help="folder to write: new, empty, or an earlier build (replaced)")
    parser.add_argument("--push", metavar="REPO_ID", help="upload the folder to this Space (needs a token)")
    parser.add_argument("--private", action="store_true", help="create the Space as private")
    args = parser.parse_args(argv)
    try:
        folder = build(args.output)
    except ValueError as error:  # a refused --output: one line, not a traceback
        parser.error(str(error))
    print(f"Space folder: {folder}")
    if args.push:
        try:
            print(f"Uploaded: {push(folder, args.push, args.private)}")
        except PushError as error:  # offline, no token, refused by the Hub: one line and exit status 1
            print(f"build_space: error: {error}", file=sys.stderr)
            sys.exit(1)


if __name__ == "__main__":
    main()
