"""benchmarks.run --quick end to end, in a subprocess: the JSON contract of
docs/design.md#benchmarks.

No wall-clock assertions: the numbers depend on the machine and on what else runs on it.
"""

import json
import math

from tests._cli import run

REQUIRED_ROWS = ("cnn_train", "cnn_infer", "ae_train", "ae_infer")
ENV_KEYS = (
    "jax",
    "flax",
    "backend",
    "device_kind",
    "device_count",
    "cpu_count",
    "xla_flags",
    "data",
)


def test_quick_run_writes_the_json_contract(tmp_path):
    out = tmp_path / "x.json"
    done = run("benchmarks.run", "--quick", "--json", out)
    assert done.returncode == 0, done.stderr[-3000:]
    result = json.loads(out.read_text())

    env = result["env"]
    for key in ENV_KEYS:
        assert key in env, key
    assert env["device_count"] >= 1 and env["cpu_count"] >= 1

    rows = {r["name"]: r for r in result["rows"]}
    assert len(rows) == len(result["rows"]), "row names are unique"
    for name in REQUIRED_ROWS:
        assert name in rows, f"missing row {name}; got {sorted(rows)}"
    for r in result["rows"]:
        v = r["images_per_s"]
        assert isinstance(v, (int, float)) and math.isfinite(v) and v > 0, r
        assert r["device"], r
    assert rows["cnn_train"]["batch_size"] == 100 and rows["cnn_train"]["n_members"] == 1
    assert rows["cnn_train"]["compile_s"] > 0

    ratios = result["ratios"]
    assert isinstance(ratios, dict) and ratios
    for key, value in ratios.items():
        assert math.isfinite(value) and value > 0, (key, value)
    assert math.isfinite(ratios["scan_over_loop"]) and ratios["scan_over_loop"] > 0
    assert any(k.startswith("cnn_seeds_vmap_N2_over") for k in ratios)
    assert any(k.startswith("cnn_seeds_map_N2_over") for k in ratios)  # members one after another
    assert rows["cnn_seeds_map_N2"]["n_members"] == 2
    if env["backend"] == "cpu":  # two host devices, forced in a subprocess
        assert any(k.startswith("cnn_dev2_seeds_N2_over") for k in ratios), result["skipped"]

    table = out.with_suffix(".md").read_text()
    assert "| cnn_train |" in table and "scan_over_loop" in table
