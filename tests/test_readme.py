"""The repository presents itself truthfully: the README's results block is what the committed
reference run (docs/results/) says, its first commands are the two that set up and run, every
relative link resolves, and nothing points outside the repository."""

import hashlib
import re
import subprocess
from pathlib import Path

from fmnist_jax import report

ROOT = Path(__file__).resolve().parent.parent
README = ROOT / "README.md"
RESULTS = ROOT / "docs" / "results"


def test_the_readme_results_block_is_the_reference_run():
    text = README.read_text(encoding="utf-8")
    begin, end = report.README_MARKERS
    block = text.split(begin, 1)[1].split(end, 1)[0].strip()
    assert block == report.results_table(RESULTS), (
        "README.md's results differ from docs/results/: run "
        "python -m fmnist_jax.report docs/results --readme README.md"
    )
    # It shows the headline and every sweep's answer, with intervals.
    assert "**CNN vs autoencoder** (test images)" in block and "95% CI" in block
    assert text.index(begin) < 60 * 80  # in the first screen (about 60 lines)


def files(folder: Path) -> list[Path]:
    return [p for p in folder.rglob("*") if p.is_file()]


def test_the_reference_run_is_complete_and_small():
    assert (RESULTS / "REPORT.md").is_file() and (RESULTS / "study.json").is_file()
    sweeps = report.find_sweeps(RESULTS)
    assert {s.question for s in sweeps} == {"q1", "q2"}
    for s in sweeps:
        assert (s.dir / "choice.json").is_file(), s.name
        assert s.rows and all(r.complete for r in s.rows), s.name
    # What the repository carries: git stores identical files once, and a reused row (a sweep's
    # row trained by another sweep, docs/design.md#reuse) is a byte copy of that row.
    blobs = {hashlib.sha256(p.read_bytes()).digest(): p.stat().st_size for p in files(RESULTS)}
    assert sum(blobs.values()) < 6 * 2**20, (
        f"docs/results/ holds {sum(blobs.values()) / 2**20:.1f} MiB"
    )


def test_the_readme_opens_with_the_two_commands():
    text = README.read_text(encoding="utf-8")
    first_block = text.split("```bash\n", 1)[1].split("```", 1)[0].splitlines()
    assert [line.split()[0] for line in first_block] == ["scripts/study.sh", "scripts/test.sh"]
    assert len(text.splitlines()) <= 132  # about 130 lines: a front door, not a manual


LINK = re.compile(r"\]\(([^)\s]+)\)")


def test_every_relative_link_in_the_docs_resolves():
    pages = [README, *(ROOT / "docs").glob("*.md"), *(ROOT / "notebooks").glob("*.ipynb")]
    for page in pages:
        for target in LINK.findall(page.read_text(encoding="utf-8")):
            if re.match(r"[a-z]+:", target) or target.startswith("#"):
                continue  # a web address, or an anchor on the same page
            path = (page.parent / target.split("#", 1)[0]).resolve()
            assert path.exists(), f"{page.relative_to(ROOT)}: broken link {target}"


def test_no_file_refers_outside_the_repository():
    tracked = subprocess.run(
        ["git", "ls-files"], cwd=ROOT, capture_output=True, text=True, check=True
    ).stdout.split()
    pattern = re.compile(r"\.\./shared|SEED_REPORT|DESIGN\.md\s*§|shared/DESIGN")
    for name in tracked:
        path = ROOT / name
        if path.suffix in {".py", ".md", ".sh", ".toml", ".txt", ".ipynb"} and path.is_file():
            if name == "tests/test_readme.py":
                continue
            found = pattern.search(path.read_text(encoding="utf-8", errors="replace"))
            assert found is None, f"{name} refers to {found.group(0)!r}, outside the repository"
