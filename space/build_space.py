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
import shutil
import sys
from pathlib import Path

SPACE_DIR = Path(__file__).resolve().parent
#: Files of this folder that belong in the Space repository.
SPACE_FILES = ("app.py", "README.md", "requirements.txt", "screenshot.png")


def build(output: Path) -> Path:
    """Write the Space folder to `output` (replaced if it exists) and return it."""
    import modeling

    package = Path(modeling.__file__).resolve().parent
    output = output.resolve()
    if output == SPACE_DIR or SPACE_DIR in output.parents or output in package.parents or output == package:
        raise ValueError(f"--output must be a separate folder, got {output}")
    if output.exists():
        shutil.rmtree(output)
    output.mkdir(parents=True)
    for name in SPACE_FILES:
        if (SPACE_DIR / name).is_file():
            shutil.copy2(SPACE_DIR / name, output / name)
    shutil.copytree(package, output / "modeling", ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
    if not (output / "modeling" / "demo" / "config.json").is_file():
        print(
            "warning: modeling/demo/ has no config.json: the Space has no default weights; set SPACE_MODEL "
            "(a Hub id) in the Space's variables.",
            file=sys.stderr,
        )
    return output


def push(folder: Path, repo_id: str, private: bool = False) -> str:
    """Create the Space repository if needed and upload `folder` in one commit; returns the commit URL."""
    from huggingface_hub import HfApi

    api = HfApi()
    api.create_repo(repo_id, repo_type="space", space_sdk="gradio", private=private, exist_ok=True)
    info = api.upload_folder(
        repo_id=repo_id, repo_type="space", folder_path=folder, commit_message="Update the Space"
    )
    return str(info.commit_url)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--output", type=Path, default=Path("build/space"), help="folder to write (replaced)")
    parser.add_argument("--push", metavar="REPO_ID", help="upload the folder to this Space (needs a token)")
    parser.add_argument("--private", action="store_true", help="create the Space as private")
    args = parser.parse_args(argv)
    folder = build(args.output)
    print(f"Space folder: {folder}")
    if args.push:
        print(f"Uploaded: {push(folder, args.push, args.private)}")


if __name__ == "__main__":
    main()
