"""benchmarks.run --quick end to end, in a subprocess: the JSON contract of
docs/design.md#benchmarks.

No wall-clock assertions: the numbers depend on the machine and on what else runs on it.
"""

import importlib.util
import json
import math
import os

from tests._cli import child_env, run

REQUIRED_ROWS = ("cnn_train", "cnn_infer", "ae_train", "ae_infer")
VERSUS_PYTORCH = ("cnn_train", "cnn_train_1thread", "cnn_infer", "ae_train", "ae_infer")
HAS_TORCH = importlib.util.find_spec("torch") is not None  # the optional `bench` extra
# Matmul FLOPs per image, by hand from the layer shapes (docs/design.md#models): 2 per
# multiply-add = output positions x kernel size, for conv1-4 (3x3 kernels) and fc1, fc2.
CNN_MACS = [26 * 26 * 9 * 10, 11 * 11 * 90 * 20, 9 * 9 * 180 * 40, 7 * 7 * 360 * 80, 720 * 265]
CNN_MACS += [265 * 5]
CNN_FLOPS = {"infer": 2 * sum(CNN_MACS), "train": 6 * sum(CNN_MACS) - 2 * CNN_MACS[0]}
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

    # Against PyTorch and the FLOP bound (docs/design.md#benchmarks).
    assert rows["cnn_train"]["flops_per_image"] == CNN_FLOPS["train"]
    assert rows["cnn_infer"]["flops_per_image"] == CNN_FLOPS["infer"]
    peaks = env["matmul_peak_gflops"]
    assert rows["cnn_train"]["threads"] == env["cpu_count"]
    one = rows["cnn_train_1thread"]  # the pinned worker (Linux): never more than one core busy
    assert one["threads"] == 1 and one["cpu_per_wall"] <= 1.05, one  # slack: clock granularity
    for name in VERSUS_PYTORCH:
        r = rows[name]
        peak = peaks[str(r["threads"])]["best"]  # the peak at the row's own thread count
        assert math.isclose(  # rel_tol: the same product and quotient in another order
            r["flop_bound_fraction"],
            r["images_per_s"] * r["flops_per_image"] / (peak * 1e9),
            rel_tol=1e-12,
        )
    pytorch_skips = [s for s in result["skipped"] if s["name"].startswith("pytorch")]
    if HAS_TORCH:
        assert env["pytorch"] and not pytorch_skips, result["skipped"]
        for name in VERSUS_PYTORCH:
            twin = rows[f"pytorch_{name}"]
            assert twin["threads"] == rows[name]["threads"]
            assert twin["flops_per_image"] == rows[name]["flops_per_image"]
            assert twin["images_per_rep"] == rows[name]["images_per_rep"]  # the same work
            assert twin["rounds"] == rows[name]["rounds"]  # timed in the same rounds
            assert ratios[f"{name}_over_pytorch_{name}"] == rows[name]["ratio"]
        assert all("pytorch" in p for p in peaks.values())
    else:
        assert_pytorch_skipped(result, pytorch_skips)
    assert "| vs PyTorch |" in table and "| cnn_train_1thread | 1 |" in table


def assert_pytorch_skipped(result, pytorch_skips):
    """One skip line says PyTorch is missing and how to add it; no PyTorch row or figure."""
    assert len(pytorch_skips) == 1 and "pip install -e '.[bench]'" in pytorch_skips[0]["why"]
    assert result["env"]["pytorch"] is None
    assert not [r["name"] for r in result["rows"] if r["name"].startswith("pytorch")]
    assert not any("pytorch" in p for p in result["env"]["matmul_peak_gflops"].values())


def test_without_pytorch_its_rows_are_skipped_in_one_line(tmp_path):
    """PyTorch made unimportable (a stand-in package first on the path raises ImportError, as
    a missing one does), whether or not the `bench` extra is installed."""
    (tmp_path / "hide" / "torch").mkdir(parents=True)
    (tmp_path / "hide" / "torch" / "__init__.py").write_text("raise ImportError('hidden')\n")
    path = [str(tmp_path / "hide"), *filter(None, [child_env().get("PYTHONPATH")])]
    out = tmp_path / "x.json"
    env = child_env(PYTHONPATH=os.pathsep.join(path))
    done = run("benchmarks.run", "--quick", "--only", "cnn_infer", "--json", out, env=env)
    assert done.returncode == 0, done.stderr[-3000:]
    result = json.loads(out.read_text())
    assert [r["name"] for r in result["rows"]] == ["cnn_infer"]
    assert_pytorch_skipped(result, result["skipped"])
    assert "| cnn_infer |" in out.with_suffix(".md").read_text()
