"""The README as a user reads it: every picture it shows is in the repository."""

import re
import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
README = (ROOT / "README.md").read_text()
PICTURES = sorted(set(re.findall(r"!\[[^\]]*\]\(([^)#\s]+)\)", README)) - {""})


def tracked() -> set[str] | None:
    """The files git tracks, or None outside a git checkout (an unpacked source archive)."""
    if not (ROOT / ".git").exists() or shutil.which("git") is None:
        return None
    out = subprocess.run(["git", "ls-files"], cwd=ROOT, capture_output=True, text=True,
                         check=True).stdout
    return set(out.splitlines())


def test_the_readme_shows_pictures():
    assert len(PICTURES) >= 8


@pytest.mark.parametrize("picture", PICTURES)
def test_every_picture_the_readme_shows_is_committed(picture):
    assert not picture.startswith(("http://", "https://")), "pictures live in the repository"
    assert (ROOT / picture).is_file(), f"{picture} is not on disk"
    files = tracked()
    if files is not None:  # on disk is not enough: .gitignore has hidden images before
        assert picture in files, f"{picture} is not committed (check .gitignore)"
