"""The README and the docs/ pages as a user reads them: every picture they show is in the
repository, every link leads to a file, and the README stays a landing page."""

import re
import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
QUICK_START = ("    pip install -e . && ganflow run --plugin dcgan\n"
               "    pip install -e '.[test]' && pytest\n")


def targets(pattern: str) -> list[tuple[str, str]]:
    """(page, target) for every match of ``pattern`` in every page, the target's #anchor cut
    off and its path resolved from the page's folder, relative to the repository."""
    found = set()
    for page in PAGES:
        text = re.sub(r"```.*?```", "", page.read_text(), flags=re.S)  # code is not Markdown
        for target in re.findall(pattern, text):
            path = target.split("#")[0]
            if path and not path.startswith(("http://", "https://", "mailto:")):
                resolved = (page.parent / path).resolve()
                target = (resolved.relative_to(ROOT).as_posix()
                          if resolved.is_relative_to(ROOT) else str(resolved))
            found.add((page.relative_to(ROOT).as_posix(), target))
    return sorted(found)


PICTURES = targets(r"!\[[^\]]*\]\(([^)\s]+)\)")
LINKS = [(page, target) for page, target in targets(r"(?<!!)\[[^\]]*\]\(([^)\s]+)\)")
         if not target.startswith(("http://", "https://", "mailto:", "#"))]


def tracked() -> set[str] | None:
    """The files git tracks, or None outside a git checkout (an unpacked source archive)."""
    if not (ROOT / ".git").exists() or shutil.which("git") is None:
        return None
    out = subprocess.run(["git", "ls-files"], cwd=ROOT, capture_output=True, text=True,
                         check=True).stdout
    return set(out.splitlines())


def test_the_readme_shows_pictures():
    assert len({picture for _, picture in PICTURES}) >= 8
    assert any(page == "README.md" for page, _ in PICTURES), "the landing page shows a picture"


@pytest.mark.parametrize(("page", "picture"), PICTURES)
def test_every_picture_the_readme_shows_is_committed(page, picture):
    assert not picture.startswith(("http://", "https://")), "pictures live in the repository"
    assert (ROOT / picture).is_file(), f"{page} shows {picture}, which is not on disk"
    files = tracked()
    if files is not None:  # on disk is not enough: .gitignore has hidden images before
        assert picture in files, f"{page} shows {picture}: not committed (check .gitignore)"


def test_the_readme_links_every_page():
    linked = {target for page, target in LINKS if page == "README.md"}
    pages = {page.relative_to(ROOT).as_posix() for page in PAGES[1:] if page.name != "README.md"}
    assert pages <= linked, f"the README links no {sorted(pages - linked)}"


@pytest.mark.parametrize(("page", "link"), LINKS)
def test_every_relative_link_leads_to_a_file(page, link):
    assert (ROOT / link).exists(), f"{page} links to {link}, which does not exist"


def test_the_readme_is_a_landing_page():
    readme = PAGES[0].read_text()
    assert len(readme.splitlines()) < 250
    assert QUICK_START in readme, "the quick start's two commands, verbatim"


def test_the_layout_page_names_every_module():
    layout = (ROOT / "docs" / "layout.md").read_text()
    modules = sorted(p.name for p in (ROOT / "ganflow").glob("*.py"))
    assert [m for m in modules if f"`{m}`" not in layout] == []



def slugs(page: Path) -> set[str]:
    """The anchors GitHub gives a page's headings: lower case, punctuation dropped, spaces made
    hyphens, a repeated heading's anchor numbered (-1, -2, ...)."""
    text = re.sub(r"```.*?```", "", page.read_text(), flags=re.S)
    seen: dict[str, int] = {}
    found = set()
    for heading in re.findall(r"^#{1,6} +(.+?) *$", text, flags=re.M):
        slug = re.sub(r"[^\w\- ]", "", heading.lower()).replace(" ", "-")
        found.add(f"{slug}-{seen[slug]}" if slug in seen else slug)
        seen[slug] = seen.get(slug, 0) + 1
    return found


def anchors() -> list[tuple[str, str, str]]:
    """(page, target page, anchor) for every relative link with a #anchor in every page."""
    found = set()
    for page in PAGES:
        text = re.sub(r"```.*?```", "", page.read_text(), flags=re.S)
        for path, anchor in re.findall(r"(?<!!)\[[^\]]*\]\(([^)\s#]*)#([^)\s]+)\)", text):
            if not path.startswith(("http://", "https://")):
                target = (page.parent / path).resolve() if path else page
                found.add((page.relative_to(ROOT).as_posix(),
                           target.relative_to(ROOT).as_posix(), anchor))
    return sorted(found)


@pytest.mark.parametrize(("page", "target", "anchor"), anchors())
def test_every_anchor_leads_to_a_heading(page, target, anchor):
    assert anchor in slugs(ROOT / target), f"{page} links to {target}#{anchor}: no such heading"


def test_every_exit_code_is_in_the_errors_table():
    """Each exit code ganflow's source gives is a row of docs/errors.md's table of them."""
    source = "\n".join(p.read_text() for p in (ROOT / "ganflow").glob("*.py"))
    codes = {int(a or b) for a, b in re.findall(r"exit_code = (\d+)|sys\.exit\((\d+)\)",
                                                 source)} - {0}
    errors = (ROOT / "docs" / "errors.md").read_text()
    table = {int(c) for c in re.findall(r"^\| (\d+) \|", errors, flags=re.M)}
    assert codes <= table, f"not in errors.md's table: {sorted(codes - table)}"
