"""Forgetting to bump `RESULTS_VERSION` is hard.

Results are reused (skipped, copied, resumed) only when their fingerprint matches, and the
fingerprint holds `fmnist_jax.results.RESULTS_VERSION`, which must be bumped whenever a code
change moves a number. The code that decides a run's numbers (NUMERIC_CODE) is hashed here —
its syntax tree without docstrings, so comments, docstrings and formatting do not count — and the
hash is recorded beside the version in tests/results_version.json. Any change to that code fails
this test until the hash is recorded again, which asks the question: did numbers move? If they
did, bump RESULTS_VERSION first; then record:

    python -m tests.test_results_version --record
"""

import ast
import hashlib
import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
RECORD = Path(__file__).with_name("results_version.json")
# Everything between the data files and a saved metric: the task split, augmentation, models,
# the training engine, device placement, the metrics, and the experiments' training pipelines.
NUMERIC_CODE = (
    "fmnist_jax/data.py",
    "fmnist_jax/augment.py",
    "fmnist_jax/models.py",
    "fmnist_jax/train.py",
    "fmnist_jax/fit.py",
    "fmnist_jax/placement.py",
    "fmnist_jax/metrics.py",
    "experiments/q2.py",
)


def code_digest() -> str:
    """sha256 of NUMERIC_CODE's syntax trees, docstrings removed, as `ast.unparse` writes them."""
    digest = hashlib.sha256()
    for name in NUMERIC_CODE:
        tree = ast.parse((ROOT / name).read_text(encoding="utf-8"))
        for node in ast.walk(tree):
            body = getattr(node, "body", None)
            if (
                isinstance(body, list)
                and body
                and isinstance(body[0], ast.Expr)
                and isinstance(body[0].value, ast.Constant)
                and isinstance(body[0].value.value, str)
            ):
                node.body = body[1:] or [ast.Pass()]
        digest.update(name.encode() + b"\0" + ast.unparse(tree).encode() + b"\0")
    return digest.hexdigest()


def current_version() -> int:
    sys.path.insert(0, str(ROOT))
    from fmnist_jax.results import RESULTS_VERSION

    return RESULTS_VERSION


def test_numeric_code_is_recorded_for_this_results_version():
    recorded = json.loads(RECORD.read_text())
    version = current_version()
    assert recorded["results_version"] == version, (
        f"RESULTS_VERSION is {version} but {RECORD.name} records version "
        f"{recorded['results_version']}: record the code of this version "
        "(python -m tests.test_results_version --record)"
    )
    assert recorded["code_sha256"] == code_digest(), (
        "the code that decides the numbers changed since RESULTS_VERSION "
        f"{version} was recorded: if numbers move, bump RESULTS_VERSION in "
        "fmnist_jax/results.py; then run python -m tests.test_results_version --record"
    )


def test_the_digest_ignores_docstrings_and_comments_but_not_code(tmp_path, monkeypatch):
    """The digest of a module is unchanged by a docstring or comment, changed by a constant."""
    module = tmp_path / "fmnist_jax" / "m.py"
    module.parent.mkdir()
    variants = {
        "base": 'def f(x):\n    """Doc."""\n    return x * 0.1\n',
        "docs": 'def f(x):\n    """Other words."""\n    # a comment\n    return x*0.1\n',
        "code": 'def f(x):\n    """Doc."""\n    return x * 0.2\n',
    }
    monkeypatch.setattr(sys.modules[__name__], "ROOT", tmp_path)
    monkeypatch.setattr(sys.modules[__name__], "NUMERIC_CODE", ("fmnist_jax/m.py",))
    digests = {}
    for name, text in variants.items():
        module.write_text(text)
        digests[name] = code_digest()
    assert digests["base"] == digests["docs"] != digests["code"]


if __name__ == "__main__" and sys.argv[1:] == ["--record"]:
    RECORD.write_text(
        json.dumps({"results_version": current_version(), "code_sha256": code_digest()}, indent=2)
        + "\n"
    )
    print(f"recorded results version {current_version()}: {RECORD}")
