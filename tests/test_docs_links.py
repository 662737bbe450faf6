"""Every relative link in the README, docs/ and the projects' pages (``projects/*/README.md``,
``projects/*/docs/*.md``) leads somewhere: the file exists and, for a ``#section`` of a
Markdown file, that file has a heading GitHub gives that anchor."""
import glob
import os
import re

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PAGES = [os.path.join(ROOT, "README.md")] + sorted(
    glob.glob(os.path.join(ROOT, "docs", "*.md"))
    + glob.glob(os.path.join(ROOT, "projects", "*", "README.md"))
    + glob.glob(os.path.join(ROOT, "projects", "*", "docs", "*.md")))
LINK = re.compile(r"!?\[[^\]]*\]\(([^)\s]+)\)")


def _prose(path):
    """The page without its fenced code blocks (``[x](y)`` there is code, not a link)."""
    text = open(path, encoding="utf-8").read()
    return re.sub(r"^```.*?^```", "", text, flags=re.S | re.M)


def _anchors(path):
    """GitHub's heading anchors: lower case, punctuation dropped, spaces to hyphens."""
    anchors = set()
    for line in _prose(path).splitlines():
        m = re.match(r"#{1,6}\s+(.*)", line)
        if m:
            title = re.sub(r"[^\w\- ]", "", m.group(1).strip().lower())
            anchors.add(title.replace(" ", "-"))
    return anchors


def _broken_links(page):
    broken = []
    for target in LINK.findall(_prose(page)):
        if re.match(r"[a-z]+:", target):  # http(s):, mailto:: not checked offline
            continue
        path, _, anchor = target.partition("#")
        resolved = os.path.normpath(os.path.join(os.path.dirname(page), path)) if path else page
        if not os.path.exists(resolved):
            broken.append(f"{target}: no such file")
        elif anchor and resolved.endswith(".md") and anchor not in _anchors(resolved):
            broken.append(f"{target}: no heading with that anchor")
    return broken


@pytest.mark.parametrize("page", PAGES, ids=lambda p: os.path.relpath(p, ROOT))
def test_relative_links_resolve(page):
    assert _broken_links(page) == []


def test_the_projects_pages_are_among_those_checked():
    # A project's pages link across three levels (../../../docs/X.md): a glob that misses
    # them would let those links rot unseen.
    pages = {os.path.relpath(p, ROOT) for p in PAGES}
    assert {"projects/SSBStudy/README.md", "projects/SSBStudy/docs/accuracy.md"} <= pages


def test_the_link_rules_by_hand(tmp_path):
    (tmp_path / "other.md").write_text("## Where to sample: per-stage ratios\n")
    (tmp_path / "pic.png").write_bytes(b"")
    page = tmp_path / "p.md"
    page.write_text(
        "# A second task: tiny objects; and is it used?\n"
        "[ok](other.md#where-to-sample-per-stage-ratios) ![ok](pic.png) [ok](#a-second-task-"
        "tiny-objects-and-is-it-used) [web](https://example.org/x#y)\n"
        "[bad](missing.md) [bad](other.md#where-to-sample) ![bad](gone.png)\n"
        "```\n# not a heading\n[code](not-a-link.md)\n```\n")
    assert _anchors(str(page)) == {"a-second-task-tiny-objects-and-is-it-used"}
    assert _broken_links(str(page)) == [
        "missing.md: no such file", "other.md#where-to-sample: no heading with that anchor",
        "gone.png: no such file"]
