"""Question 2's stages and entry point on the real data: pretraining denoises, the encoder
checkpoint round-trips exactly, fine-tuning starts from it (and the frozen probe never moves
it), and `--quick` writes every file with metrics that agree with its predictions.

In-process tests use a small context (3,000 train / 500 val / 1,000 test real images, two
seeds); the command-line tests run the real entry point in `--quick` mode.
"""

from __future__ import annotations

import dataclasses
import re
import shutil
from pathlib import Path

import jax
import numpy as np
import pytest
from _results_checks import check_png, check_run_folder, check_sweep_folder, read_json

from experiments import cli as cli_lib
from experiments import q2
from experiments import sweep as sweep_lib
from experiments.cli import UsageError
from experiments.context import Context
from fmnist_jax import augment
from fmnist_jax import fit as fit_lib
from fmnist_jax import train as train_lib
from fmnist_jax.models import ARCHITECTURES, Autoencoder, Encoder
from tests._cli import run

N_TRAIN, N_VAL, N_TEST = 3000, 500, 1000
SEEDS = [0, 1]
BASE = ARCHITECTURES["base"]


def q2_args(argv):
    return cli_lib.parse(
        cli_lib.parser("test", epochs=q2.EPOCHS, lr=q2.LR, question2=True), list(argv)
    )


def as_numpy(tree):
    return jax.tree_util.tree_map(lambda x: np.array(x), tree)


def trees_equal(a, b) -> bool:
    la, lb = jax.tree_util.tree_leaves(a), jax.tree_util.tree_leaves(b)
    return jax.tree_util.tree_structure(a) == jax.tree_util.tree_structure(b) and all(
        np.array_equal(np.asarray(x), np.asarray(y)) for x, y in zip(la, lb, strict=False)
    )


def tree_distance(a, b) -> float:
    return float(
        np.sqrt(
            sum(
                np.sum((np.asarray(x, np.float64) - np.asarray(y, np.float64)) ** 2)
                for x, y in zip(
                    jax.tree_util.tree_leaves(a), jax.tree_util.tree_leaves(b), strict=False
                )
            )
        )
    )


# ----------------------------------------------------------------------------------------------
# In-process stages on a small context


@pytest.fixture(scope="module")
def ctx(task_data, tmp_path_factory) -> Context:
    out = tmp_path_factory.mktemp("q2_stages")
    args = q2_args(
        [
            "--quiet",
            "--seeds",
            str(len(SEEDS)),
            "--out",
            str(out),
            "--pretrain-epochs",
            "2",
            "--epochs",
            "1",
        ]
    )
    data = dataclasses.replace(
        task_data,
        train_images=task_data.train_images[:N_TRAIN],
        train_labels=task_data.train_labels[:N_TRAIN],
        val_images=task_data.val_images[:N_VAL],
        val_labels=task_data.val_labels[:N_VAL],
        test_images=task_data.test_images[:N_TEST],
        test_labels=task_data.test_labels[:N_TEST],
        info={**task_data.info, "counts": {"train": N_TRAIN, "val": N_VAL, "test": N_TEST}},
    )
    log: list[str] = []
    return Context(opts=args, data=data, seeds=SEEDS, log=log.append)


@pytest.fixture(scope="module")
def pretrained(ctx):
    """q2.pretrain, with the engine's result and the encoder handed to the checkpoint captured."""
    seen = {}
    real_train, real_save = sweep_lib.train, q2.checkpoint.save

    def spy_train(*a, **k):
        seen["result"] = result = real_train(*a, **k)
        return result

    def spy_save(directory, step, state, extra=None, **k):
        if Path(directory).name == "encoder":
            seen["saved"] = as_numpy(state)
        return real_save(directory, step, state, extra, **k)

    cfg = q2.pretrain_config(ctx.opts, arch="base", lr=1e-3, epochs=2)
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(sweep_lib, "train", spy_train)
        mp.setattr(q2.checkpoint, "save", spy_save)
        folder = q2.pretrain(ctx, cfg)
    return folder, cfg, seen["result"], seen["saved"]


def test_pretraining_denoises_real_images(pretrained, ctx):
    folder, cfg, result, _ = pretrained
    m = read_json(folder / "metrics.json")
    for split in ("val", "test"):
        got, noisy = m[f"{split}_mse"]["per_seed"], m[f"{split}_noisy_mse"]["per_seed"]
        assert all(g < n for g, n in zip(got, noisy, strict=False)), (split, got, noisy)
    # Recomputed here, independently of the engine's evaluation: fresh noise on the test images.
    clean = ctx.data.test_images
    noisy = np.asarray(augment.corrupt(jax.random.PRNGKey(99), clean, cfg.denoise_std))
    clean_flat = clean.reshape(len(clean), -1)
    noisy_mse = float(np.mean((noisy.reshape(len(clean), -1) - clean_flat) ** 2))
    model = Autoencoder(widths=cfg.widths)
    for k in range(len(SEEDS)):
        params = jax.tree_util.tree_map(lambda x, k=k: x[k], result.states.params)
        recon = np.asarray(model.apply({"params": params}, noisy))
        mse = float(np.mean((recon - clean_flat) ** 2))
        assert mse < 0.9 * noisy_mse, (k, mse, noisy_mse)
    h = read_json(folder / "history.json")
    assert all(row[-1] < row[0] for row in h["train_loss"])
    for name in ("reconstruction_curves.png", "denoising.png"):
        check_png(folder / name)
    assert read_json(folder / "config.json")["train_config"]["denoise_std"] == cfg.denoise_std


def test_dead_output_units_are_counted(pretrained, ctx):
    """The outputs that are 0 for every noisy test image, per seed: recomputed here from the
    trained autoencoder (its last ReLU is why the reconstructions show black dots)."""
    folder, cfg, result, _ = pretrained
    m = read_json(folder / "metrics.json")
    noisy = np.asarray(
        augment.corrupt(
            jax.random.PRNGKey(fit_lib.EVAL_NOISE_SEED), ctx.data.test_images, cfg.denoise_std
        )
    )
    model = Autoencoder(widths=cfg.widths)
    for k in range(len(SEEDS)):
        params = jax.tree_util.tree_map(lambda x, k=k: x[k], result.states.params)
        recon = np.asarray(model.apply({"params": params}, noisy))
        assert m["dead_outputs"]["per_seed"][k] == int(np.all(recon == 0, axis=0).sum())
    assert 0 <= m["dead_outputs_on_background"]["mean"] <= 1


def test_a_pretraining_without_its_encoder_is_pretrained_again(pretrained, ctx, tmp_path, capsys):
    """Its encoder/ gone (deleted, damaged beyond restoring), a finished pretraining is no longer
    complete: the next row that needs it pretrains it again, with a warning."""
    folder, cfg, _, _ = pretrained
    copy_ctx = dataclasses.replace(ctx, opts=ctx.opts.replace(out=tmp_path / "out"), runs={})
    again = tmp_path / "out" / folder.parent.name / folder.name
    shutil.copytree(folder, again)
    shutil.rmtree(again / "encoder")
    assert q2.pretrain(copy_ctx, cfg) == again
    assert "has no encoder/ checkpoint left: it is pretrained again" in capsys.readouterr().err
    assert q2.restore_encoder(again / "encoder", cfg.widths, len(SEEDS)) is not None


def test_restored_encoder_gives_identical_outputs(pretrained, ctx):
    folder, cfg, result, saved = pretrained
    assert trees_equal(saved, result.states.params["encoder"])
    restored = q2.restore_encoder(folder / "encoder", cfg.widths, len(SEEDS))
    assert trees_equal(restored, saved)
    x = ctx.data.test_images[:256]
    encoder = Encoder(widths=cfg.widths)
    outputs = lambda p: np.asarray(jax.vmap(lambda q: encoder.apply({"params": q}, x))(p))  # noqa: E731
    got, want = outputs(restored), outputs(saved)
    assert got.shape == (len(SEEDS), 256, cfg.widths[-1])
    assert np.array_equal(got, want)
    assert not np.array_equal(got[0], got[1])  # two seeds, two encoders


def test_encoder_checkpoint_that_does_not_fit_is_a_usage_error(pretrained):
    folder = pretrained[0]
    with pytest.raises(UsageError, match="--arch"):
        q2.restore_encoder(folder / "encoder", ARCHITECTURES["thick"], len(SEEDS))
    with pytest.raises(UsageError, match="--seeds"):
        q2.restore_encoder(folder / "encoder", BASE, 3)
    with pytest.raises(UsageError, match="no encoder checkpoint"):
        q2.restore_encoder(folder / "missing", BASE, len(SEEDS))
    assert not (folder / "missing").exists()


@pytest.fixture(scope="module")
def finetuned(ctx, pretrained):
    """The pretraining sweep (fine-tuned, frozen probe, no pretraining) on the small context, with
    every classifier fit observed: the states it starts from and the states it ends with."""
    calls = {}
    real_fit = sweep_lib.fit

    def spy_fit(cfg, train, eval_sets, seeds, *, init=None, **k):
        if cfg.model == "autoencoder":
            raise AssertionError("the autoencoder was pretrained again instead of reused")
        fresh = fit_lib.init_states(train_lib.program(cfg, len(train[1])), seeds)
        start = init if init is not None else fresh
        call = {
            "cfg": cfg,
            "hooked": init is not None,
            "fresh": as_numpy(fresh.params),
            "start": as_numpy(start.params),
        }
        result = real_fit(cfg, train, eval_sets, seeds, init=init, **k)
        call["end"] = as_numpy(result.states.params)
        # The engine donates the states it trains: the states it was given must not be among
        # them (they stay usable, e.g. for a second run or a resume).
        call["init_arrays_alive"] = init is None or not any(
            x.is_deleted() for x in jax.tree_util.tree_leaves(init)
        )
        calls[Path(k["checkpoint_dir"]).parent.name] = call
        return result

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(sweep_lib, "fit", spy_fit)
        sweep_lib.run_sweep(ctx, q2.sweep("pretraining", ctx.opts))
    return calls


def test_finetuning_starts_from_the_pretrained_encoder(finetuned, pretrained, ctx):
    checkpoint_encoder = pretrained[3]
    assert sorted(finetuned) == ["finetuned", "frozen_probe", "no_pretraining"]
    for name in ("finetuned", "frozen_probe"):
        run = finetuned[name]
        assert run["hooked"] and run["init_arrays_alive"]
        assert trees_equal(run["start"]["encoder"], checkpoint_encoder)
        assert not trees_equal(run["fresh"]["encoder"], checkpoint_encoder)
        # The head is the classifier's own fresh one.
        assert trees_equal(run["start"]["head"], run["fresh"]["head"])
        # The row keeps its own copy of the encoder it started from.
        row_copy = q2.restore_encoder(
            ctx.out / "q2_pretraining" / name / "encoder", BASE, len(SEEDS)
        )
        assert trees_equal(row_copy, checkpoint_encoder)
        assert read_json(ctx.out / "q2_pretraining" / name / "metrics.json")["pretrain"]["complete"]
    # Full fine-tuning moves the encoder, and ends nearer the pretrained weights than the
    # random initialisation it would have had.
    full = finetuned["finetuned"]
    moved = tree_distance(full["end"]["encoder"], checkpoint_encoder)
    assert 0 < moved < tree_distance(full["end"]["encoder"], full["fresh"]["encoder"])
    # No pretraining: random init, no hook.
    scratch = finetuned["no_pretraining"]
    assert not scratch["hooked"] and trees_equal(scratch["start"], scratch["fresh"])
    assert not (ctx.out / "q2_pretraining" / "no_pretraining" / "encoder").exists()


def test_frozen_probe_leaves_the_encoder_exactly_unchanged(finetuned, ctx):
    # Its trained parameters are the head's alone (64 x 5 + 5), not the frozen encoder's.
    m = read_json(ctx.out / "q2_pretraining" / "frozen_probe" / "metrics.json")
    assert (m["n_trained_params"], m["n_params"]) == (325, 550_021)
    assert (
        read_json(ctx.out / "q2_pretraining" / "finetuned" / "metrics.json")["n_trained_params"]
        == 550_021
    )
    probe = finetuned["frozen_probe"]
    assert probe["cfg"].freeze_encoder and not finetuned["finetuned"]["cfg"].freeze_encoder
    assert trees_equal(probe["end"]["encoder"], probe["start"]["encoder"])
    assert tree_distance(probe["end"]["head"], probe["start"]["head"]) > 0
    assert not trees_equal(
        finetuned["finetuned"]["end"]["encoder"], finetuned["finetuned"]["start"]["encoder"]
    )


# ----------------------------------------------------------------------------------------------
# The sweeps' configurations (nothing trained)


def test_sweep_specs():
    args = q2_args([])
    lr = q2.sweep_specs(args, "lr")
    assert [s.name for s in lr] == ["lr_0.001", "lr_0.01"]
    assert [s.cfg.optimizer.learning_rate for s in lr] == [1e-3, 1e-2]
    assert [s.pretrain.optimizer.learning_rate for s in lr] == [1e-3, 1e-2]

    arch = q2.sweep_specs(args, "arch")
    assert [s.name for s in arch] == ["base", "thick"]
    assert [s.cfg.widths for s in arch] == [(512, 256, 64), (600, 550, 512)]
    assert [s.pretrain.widths for s in arch] == [(512, 256, 64), (600, 550, 512)]

    epochs = q2.sweep_specs(args, "epochs")
    assert [s.cfg.epochs for s in epochs] == [2, 10, 20]
    assert [s.pretrain.epochs for s in epochs] == [2, 10, 20]
    # --quick trains 1 + 1 epochs: one row (three would be copies, "chosen" over themselves).
    [quick] = q2.sweep_specs(q2_args(["--quick"]), "epochs")
    assert (quick.label, quick.cfg.epochs, quick.pretrain.epochs) == ("1+1 epochs", 1, 1)

    value = {s.name: s for s in q2.sweep_specs(args, "pretraining")}
    assert sorted(value) == ["finetuned", "frozen_probe", "no_pretraining"]
    assert value["frozen_probe"].cfg.freeze_encoder and not value["finetuned"].cfg.freeze_encoder
    assert value["no_pretraining"].pretrain is None
    assert not value["no_pretraining"].cfg.freeze_encoder

    # Every row: the report's defaults where not swept, on both stages.
    for spec in [*lr, *arch, *epochs, *value.values()]:
        cfg, pre = spec.cfg, spec.pretrain
        assert (cfg.model, cfg.batch_size, cfg.optimizer.name, cfg.augment) == (
            "encoder_classifier",
            100,
            "adam",
            "none",
        )
        if spec not in lr:
            assert cfg.optimizer.learning_rate == 1e-3
        if spec not in epochs:
            assert cfg.epochs == 10
        if pre is not None:
            assert (pre.model, pre.batch_size, pre.denoise_std, pre.widths) == (
                "autoencoder",
                100,
                0.3,
                cfg.widths,
            )
            assert pre.optimizer.learning_rate == cfg.optimizer.learning_rate
            assert pre.epochs == cfg.epochs
    # The default row is one configuration shared by the sweeps (trained once, reused).
    assert lr[0].cfg == arch[0].cfg == epochs[1].cfg == value["finetuned"].cfg
    assert lr[0].pretrain == arch[0].pretrain == epochs[1].pretrain == value["finetuned"].pretrain


def test_a_longer_pretraining_continues_the_shorter_one(ctx, tmp_path):
    """In one process, a 2-epoch pretraining continues the 1-epoch one (the epochs sweep's 2, 10
    and 20 alike), and equals that configuration pretrained on its own in a fresh process:
    fingerprint, encoder, history and metrics."""
    log: list[str] = []
    chained = dataclasses.replace(
        ctx, opts=ctx.opts.replace(out=tmp_path / "chained"), runs={}, log=log.append
    )
    cfg = q2.pretrain_config(ctx.opts, arch="base", lr=1e-3, epochs=2)
    q2.pretrain(chained, cfg.replace(epochs=1))
    folder = q2.pretrain(chained, cfg)
    assert "  pretrain: continues the 1-epoch run" in log
    alone = q2.pretrain(
        dataclasses.replace(ctx, opts=ctx.opts.replace(out=tmp_path / "alone"), runs={}), cfg
    )
    assert alone.name == folder.name  # the same fingerprint
    assert trees_equal(
        q2.restore_encoder(folder / "encoder", BASE, len(SEEDS)),
        q2.restore_encoder(alone / "encoder", BASE, len(SEEDS)),
    )
    assert read_json(folder / "history.json") == read_json(alone / "history.json")
    got, want = read_json(folder / "metrics.json"), read_json(alone / "metrics.json")
    for m in (got, want):
        m.pop("timing")
    assert got == want and got["epochs_run"] == 2
    # A second call finds it complete and trains nothing.
    log.clear()
    q2.pretrain(chained, cfg)
    assert log == [f"[q2_pretrain] {folder.name}: complete, reused"]


# ----------------------------------------------------------------------------------------------
# The command line, --quick


def cli(*argv):
    return run("experiments.q2_autoencoder", *argv)


QUICK = ("--quick", "--quiet", "--seeds", "2")


@pytest.fixture(scope="module")
def quick_sweep(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("q2_quick")
    proc = cli(*QUICK, "--sweep", "pretraining", "--out", str(out))
    assert proc.returncode == 0, proc.stderr[-4000:]
    return out


def test_quick_pretraining_sweep_writes_every_file(quick_sweep):
    sweep_dir = quick_sweep / "q2_pretraining"
    names = ["finetuned", "frozen_probe", "no_pretraining"]
    for name in names:
        run_dir = sweep_dir / name
        config = check_run_folder(run_dir, 2, epochs=1)
        assert config["train_config"]["model"] == "encoder_classifier"
        h = read_json(run_dir / "history.json")
        m = read_json(run_dir / "metrics.json")
        pretrained = name != "no_pretraining"
        for extra in ("reconstruction_curves.png", "denoising.png"):
            assert (run_dir / extra).is_file() == pretrained, (name, extra)
        assert (run_dir / "encoder").is_dir() == pretrained
        if pretrained:
            for key in (
                "pretrain_train_loss",
                "pretrain_val_loss",
                "pretrain_val_noisy_loss",
                "pretrain_test_loss",
            ):
                assert len(h[key]) == 2 and len(h[key][0]) == 1, key
            assert set(m["pretrain"]) >= {"test_mse", "test_noisy_mse", "n_params", "denoise_std"}
            assert m["pretrain"]["n_params"] == 1_100_112
            assert q2.restore_encoder(run_dir / "encoder", BASE, 2) is not None
        else:
            assert not any(k.startswith("pretrain_") for k in h) and "pretrain" not in m
        assert "verdict" in m["fit_diagnosis"] and m["total_train_s"] > 0
    choice = check_sweep_folder(sweep_dir, names)
    # The value of pretraining, not a choice: the probe is never an answer; the rows are
    # compared with the fine-tuned one.
    assert choice["reference"] == "finetuned" and "not a choice" in choice["note"]
    summary = (sweep_dir / "summary.md").read_text()
    assert "Δ test vs reference" in summary and "**chosen**" not in summary
    # A note section makes no choice, so its claims are made on the test images, in words: the
    # fine-tuned encoder against each other row, with the difference recomputed here.
    with np.load(sweep_dir / "finetuned" / "labels.npz") as labels:
        test_labels = labels["test"]

    def test_accuracy(name):  # mean over seeds and images of the saved test predictions
        return np.mean(np.load(sweep_dir / name / "test_predictions.npy") == test_labels[None])

    for other, label in (("frozen_probe", "linear probe"), ("no_pretraining", "random init")):
        diff = 100 * (test_accuracy("finetuned") - test_accuracy(other))
        sentence = re.search(
            rf"\*\*On the test images\*\*, pretrained encoder, fine-tuned against [^:]*{label}[^:]*"
            rf": [a-z ]+(\([^)]*\))?, ([+-]\d+\.\d\d) points",
            summary,
        )
        assert sentence, other
        assert float(sentence.group(2)) == pytest.approx(diff, abs=0.005)  # printed to 0.01
    assert re.search(
        r"^\| \[pretrained encoder, fine-tuned\].*\| \*\*reference\*\* \|", summary, re.M
    )
    # One pretraining, shared by both pretrained rows.
    assert len(list((quick_sweep / "q2_pretrain").iterdir())) == 1
    assert (
        read_json(sweep_dir / "finetuned" / "metrics.json")["encoder_checkpoint"]
        == read_json(sweep_dir / "frozen_probe" / "metrics.json")["encoder_checkpoint"]
    )


def test_pretrain_stage_then_finetune_stage(quick_sweep, tmp_path, capsys):
    """The two stages through the entry point's main in this process (the sweep above is the
    command line's run)."""
    out = tmp_path / "staged"
    q2.main([*QUICK, "--stage", "pretrain", "--out", str(out)])
    printed = capsys.readouterr().out
    line = next(t for t in printed.splitlines() if t.startswith("encoder checkpoint: "))
    encoder = Path(line.removeprefix("encoder checkpoint: "))
    assert encoder.is_dir() and encoder.parent.parent == out / "q2_pretrain"
    assert not (out / "q2_pretraining").exists()  # the pretrain stage trains no classifier

    q2.main([*QUICK, "--stage", "finetune", "--encoder", str(encoder), "--out", str(out)])
    (run_dir,) = [p for p in (out / "q2_finetune").iterdir() if p.is_dir()]
    config = check_run_folder(run_dir, 2, epochs=1)
    assert config["encoder_checkpoint"] == str(encoder)
    assert trees_equal(
        q2.restore_encoder(run_dir / "encoder", BASE, 2), q2.restore_encoder(encoder, BASE, 2)
    )
    # The same pretraining and fine-tuning as the sweep's fine-tuned row, in two commands: the
    # same predictions.
    assert np.array_equal(
        np.load(run_dir / "test_predictions.npy"),
        np.load(quick_sweep / "q2_pretraining" / "finetuned" / "test_predictions.npy"),
    )


def test_finetune_stage_without_encoder_exits_2(tmp_path, capsys):
    out = tmp_path / "out"
    with pytest.raises(SystemExit) as exc:
        q2.main([*QUICK, "--stage", "finetune", "--out", str(out)])
    assert exc.value.code == 2
    assert "--stage finetune needs --encoder" in capsys.readouterr().err
    assert not out.exists()


def test_encoder_of_another_architecture_exits_2(quick_sweep, tmp_path):
    encoder = quick_sweep / "q2_pretraining" / "finetuned" / "encoder"
    out = tmp_path / "out"
    proc = cli(*QUICK, "--stage", "finetune", "--encoder", encoder, "--arch", "thick", "--out", out)
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert "widths [512, 256, 64] (--arch base)" in proc.stderr and "--arch" in proc.stderr
    assert "Traceback" not in proc.stderr
    assert not out.exists()


@pytest.mark.parametrize(
    "argv,flag",
    [
        (["--stage", "finetune", "--encoder", "/nonexistent/encoder"], "no encoder checkpoint"),
        (["--epochs", "0"], "argument --epochs"),
        (["--pretrain-epochs", "-2"], "argument --pretrain-epochs"),
        (["--lr", "0"], "argument --lr"),
        (["--arch", "huge"], "argument --arch"),
        (["--stage", "both", "--sweep", "nope"], "argument --sweep"),
        (
            ["--freeze-encoder"],
            "--freeze-encoder makes the fine-tuning of a given encoder a linear probe",
        ),
        (["--sweep", "lr", "--freeze-encoder"], "--stage finetune --encoder PATH"),
    ],
)
def test_bad_flags_exit_2(tmp_path, capsys, argv, flag):
    out = tmp_path / "out"
    with pytest.raises(SystemExit) as exc:
        q2.main([*QUICK, "--out", str(out), *argv])
    assert exc.value.code == 2
    assert flag in capsys.readouterr().err
    assert not out.exists()
    assert not Path("/nonexistent").exists()


def test_encoder_row_names_keep_probe_and_finetuning_apart():
    enc = "/r/q2_pretrain/abc/encoder"
    full = q2.encoder_spec(q2_args(["--stage", "finetune", "--encoder", enc]))
    probe = q2.encoder_spec(q2_args(["--stage", "finetune", "--encoder", enc, "--freeze-encoder"]))
    assert (full.name, probe.name) == ("from_abc_base", "from_abc_base_frozen")
    assert probe.cfg.freeze_encoder and not full.cfg.freeze_encoder
    assert full.pretrain is None and full.encoder == Path(enc)
