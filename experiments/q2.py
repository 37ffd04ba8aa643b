"""Question 2: denoising-autoencoder pretraining -> encoder checkpoint -> fine-tuning -> evaluation.

The stages, composed here:
  `pretrain`        trains the MLP autoencoder on noisy -> clean images (all seeds at once) into
                    <out>/q2_pretrain/<fingerprint>/, whose `encoder/` is the stacked encoder
                    parameters (Orbax); rows that share a pretraining find it there;
  `restore_encoder` reads such a checkpoint back (shapes from its JSON sidecar);
  `finetune`        trains encoder + linear head from those weights (or frozen: a linear probe,
                    or from random init: no pretraining) and writes the row's folder.
The sweeps run epochs first: its pretrainings of 2, 10 and 20 epochs each continue the last, and
the other sweeps' rows find their pretraining (and often their whole row) already done.

Defaults are the report's: base 784-512-256-64-256-512-784, ReLU everywhere, Adam 1e-3,
batch 100, 10 epochs of pretraining then 10 of fine-tuning, 3 seeds.
"""

from __future__ import annotations

import dataclasses
import shlex
import sys
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

from experiments import cli, monitor
from experiments import sweep as sweep_lib
from experiments.cli import Q2_SWEEPS as SWEEPS
from experiments.cli import Options, UsageError
from experiments.context import Context, command_line, make_context, sole_writer
from experiments.sweep import Spec, Sweep
from fmnist_jax import checkpoint, curves, io, plots, results
from fmnist_jax.augment import corrupt
from fmnist_jax.fit import EVAL_NOISE_SEED, init_states
from fmnist_jax.metrics import mean_std
from fmnist_jax.models import ARCHITECTURES, Autoencoder, count_params, with_pretrained_encoder
from fmnist_jax.train import OptimizerConfig, TrainConfig, program

EPOCHS, LR = 10, 1e-3  # the report's (both stages)
PRETRAIN = "q2_pretrain"
TITLES = {
    "lr": "Q2 · learning rate 1e-3 vs 1e-2 (both stages)",
    "arch": "Q2 · architecture: base vs thick",
    "epochs": "Q2 · epochs 2 / 10 / 20 (both stages)",
    "pretraining": "Q2 · value of pretraining: fine-tuned vs frozen probe vs no pretraining",
}
DENOISE_COLUMNS_PER_CLASS = 2


# ----------------------------------------------------------------------------------------------
# Configurations


def pretrain_config(opts: Options, *, arch: str, lr: float, epochs: int) -> TrainConfig:
    """The denoising autoencoder's training (noisy input -> clean target, MSE)."""
    cfg = finetune_config(opts, arch=arch, lr=lr, epochs=epochs)
    return cfg.replace(model="autoencoder", denoise_std=opts.denoise_std)


def finetune_config(
    opts: Options, *, arch: str, lr: float, epochs: int, freeze: bool = False
) -> TrainConfig:
    """The encoder classifier's training (cross-entropy); `freeze`: a linear probe."""
    return TrainConfig(
        model="encoder_classifier",
        init=opts.init,
        num_classes=len(opts.classes),
        widths=ARCHITECTURES[arch],
        freeze_encoder=freeze,
        batch_size=opts.batch_size,
        epochs=1 if opts.quick else epochs,
        augment="none",
        optimizer=OptimizerConfig(name="adam", learning_rate=lr),
    )


def row(
    opts: Options,
    name: str,
    label: str,
    *,
    arch=None,
    lr=None,
    epochs=None,
    pretrain_epochs=None,
    freeze=None,
    pretrained: bool = True,
    role: str | None = None,
) -> Spec:
    """One row: a pretraining (unless not `pretrained`) and a fine-tuning, the options'
    values where not given; `role`: see `experiments.sweep.Spec`."""
    arch, lr = arch or opts.arch, lr or opts.lr or LR
    epochs = epochs or opts.epochs or EPOCHS
    pre = pretrain_config(opts, arch=arch, lr=lr, epochs=pretrain_epochs or opts.pretrain_epochs)
    freeze = opts.freeze_encoder if freeze is None else freeze
    return Spec(
        name,
        label,
        finetune_config(opts, arch=arch, lr=lr, epochs=epochs, freeze=freeze),
        pretrain=pre if pretrained else None,
        role=role,
    )


def sweep_specs(opts: Options, sweep: str) -> list[Spec]:
    """The rows of one sweep (`lr`, `arch`, `epochs` or `pretraining`)."""
    if sweep == "lr":
        return [row(opts, f"lr_{lr:g}", f"lr {lr:g}", lr=lr) for lr in (1e-3, 1e-2)]
    if sweep == "arch":
        return [
            row(opts, arch, f"{arch} {'-'.join(map(str, (784, *ARCHITECTURES[arch])))}", arch=arch)
            for arch in ("base", "thick")
        ]
    if sweep == "epochs":  # --quick trains one epoch per stage: one row, as Q1's epochs sweep
        return [
            row(opts, f"epochs_{e}", f"{e}+{e} epochs", epochs=e, pretrain_epochs=e)
            for e in ((1,) if opts.quick else (2, 10, 20))
        ]
    return [
        row(opts, "finetuned", "pretrained encoder, fine-tuned", role="original"),
        row(opts, "frozen_probe", "pretrained encoder frozen (linear probe)", freeze=True),
        row(
            opts,
            "no_pretraining",
            "same classifier from random init",
            pretrained=False,
            freeze=False,
        ),
    ]


PRETRAINING_NOTE = (
    "The value of the pretraining, not a choice: the pretrained encoder fine-tuned with a linear "
    "head, the same encoder frozen under a trained head (a linear probe), and the same classifier "
    "from random initialisation, each compared with the fine-tuned row on the test images (the Δ "
    "column; no choice is made, so test is where the claim is made), and concluded below."
)


def sweep(name: str, opts: Options) -> Sweep:
    """One Question 2 sweep, its rows run by `finetune`; the report presents them in the order
    of `TITLES`. The rows of `pretraining` measure the pretraining's value: none is an answer."""
    return Sweep(
        f"q2_{name}",
        TITLES[name],
        tuple(sweep_specs(opts, name)),
        finetune,
        **({"note": PRETRAINING_NOTE, "reference": "finetuned"} if name == "pretraining" else {}),
        question="q2",
        position=list(TITLES).index(name),
    )


def encoder_spec(opts: Options) -> Spec:
    """The one row of `--stage finetune --encoder PATH` (its own folder per arch and per
    frozen / fine-tuned, so a probe and a fine-tuning of the same encoder sit side by side)."""
    frozen = "_frozen" if opts.freeze_encoder else ""
    spec = row(
        opts,  # the resolved name: the one checked for characters Orbax reads as syntax
        f"from_{Path(opts.encoder).resolve().parent.name}_{opts.arch}{frozen}",
        f"{'frozen probe on' if frozen else 'fine-tuned from'} {opts.encoder}",
        pretrained=False,
    )
    return dataclasses.replace(spec, encoder=Path(opts.encoder))


# ----------------------------------------------------------------------------------------------
# Stages


def pretrain(ctx: Context, cfg: TrainConfig) -> Path:
    """Pretrain the denoising autoencoder (or find it done); -> its folder under
    <out>/q2_pretrain/, holding `encoder/` (Orbax), history.json, metrics.json and figures
    (named in `ctx.trained` when trained here)."""
    spec = Spec("pretrain", "denoising autoencoder", cfg)
    payload = spec.payload(ctx)
    fp = results.config_fingerprint(payload)
    folder = ctx.out / PRETRAIN / fp
    if (folder / "metrics.json").is_file():
        if (folder / "encoder").is_dir():
            ctx.log(f"[{PRETRAIN}] {fp}: complete, reused")
            return folder
        print(
            f"warning: the pretraining in {folder} has no encoder/ checkpoint left: it is "
            "pretrained again",
            file=sys.stderr,
            flush=True,
        )
    widths = "-".join(map(str, (784, *cfg.widths)))
    ctx.log(f"[{PRETRAIN}] {fp}: pretraining {widths}, {cfg.epochs} epochs")
    folder.mkdir(parents=True, exist_ok=True)
    results.clean_stale_temporaries(folder)
    io.write_json(folder / "config.json", {**payload, "fingerprint": fp})
    res = sweep_lib.train(
        ctx, spec, folder / "checkpoint", tensorboard=folder / monitor.TENSORBOARD
    )
    params0 = jax.tree_util.tree_map(lambda x: x[0], res.states.params)
    meta = {"widths": list(cfg.widths), "n_seeds": len(ctx.seeds), "seeds": ctx.seeds}
    meta["denoise_std"] = cfg.denoise_std
    checkpoint.save(folder / "encoder", 0, res.states.params["encoder"], meta)
    history = {"epoch": list(range(1, res.epochs_run + 1)), **res.history}
    io.write_json(folder / "history.json", history)
    plots.learning_curves(
        res.history,
        folder / "reconstruction_curves.png",
        title="denoising autoencoder: reconstruction MSE",
        metrics=("loss",),
        sets=("train", "val", "test", "val_noisy", "test_noisy"),
        ylabels={"loss": "MSE"},
    )
    draw_denoising(ctx, cfg, params0, folder / "denoising.png")
    dead, background = dead_outputs(ctx, cfg, res.states.params)
    io.write_json(
        folder / "metrics.json",
        {
            "val_mse": mean_std(res.final["val"]["loss"]),
            "test_mse": mean_std(res.final["test"]["loss"]),
            "val_noisy_mse": mean_std(res.final["val"]["noisy_loss"]),
            "test_noisy_mse": mean_std(res.final["test"]["noisy_loss"]),
            "denoise_std": cfg.denoise_std,
            "n_params": count_params(params0),
            "dead_outputs": mean_std(dead),
            "dead_outputs_on_background": mean_std(background),
            "diverged": res.diverged,
            "fit_diagnosis": curves.diagnose(res.history),
            "timing": res.timing,
            "epochs_run": res.epochs_run,
            "optimizer_steps": np.asarray(res.states.step).tolist(),
            "complete": True,
        },
    )
    results.remove_tree(folder / "checkpoint")
    ctx.trained.append(folder)
    return folder


def dead_outputs(ctx: Context, cfg: TrainConfig, params) -> tuple[np.ndarray, np.ndarray]:
    """Per seed (stacked `params`), how many of the 784 outputs are 0 for every noisy test image,
    and the share of those on background pixels (mean clean test intensity < 0.05). The
    architecture's final ReLU makes a unit whose input is negative for every image output 0
    everywhere, and pass no gradient back: a dead unit, a black dot in every reconstruction."""
    data = ctx.data
    noisy = corrupt(
        jax.random.PRNGKey(EVAL_NOISE_SEED), jnp.asarray(data.test_images), cfg.denoise_std
    )
    model = Autoencoder(widths=cfg.widths)
    recon = jax.jit(jax.vmap(lambda p: model.apply({"params": p}, noisy)))(params)  # [S, N, 784]
    dead = np.asarray(jnp.all(recon == 0, axis=1))  # [S, 784]
    background = data.test_images.reshape(len(data.test_images), -1).mean(axis=0) < 0.05
    counts = dead.sum(axis=1)
    share = np.where(counts > 0, (dead & background).sum(axis=1) / np.maximum(counts, 1), 0.0)
    return counts, share


def draw_denoising(ctx: Context, cfg: TrainConfig, params, path: Path) -> None:
    """Rows of noisy input / reconstruction / clean target for test images of every class."""
    data = ctx.data
    idx = np.concatenate(
        [
            np.flatnonzero(data.test_labels == c)[:DENOISE_COLUMNS_PER_CLASS]
            for c in range(len(data.class_names))
        ]
    )
    clean = jnp.asarray(data.test_images[idx])
    noisy = corrupt(jax.random.PRNGKey(EVAL_NOISE_SEED), clean, cfg.denoise_std)
    recon = Autoencoder(widths=cfg.widths).apply({"params": params}, noisy)
    plots.denoising_rows(
        np.asarray(noisy),
        np.asarray(recon),
        np.asarray(clean),
        path,
        title=f"denoising (σ = {cfg.denoise_std}), seed 0",
        labels=[data.class_names[c] for c in data.test_labels[idx]],
    )


def _seeds(n) -> str:
    return f"{n} seed{'s' * (int(n) != 1)}"


def encoder_metadata(path: Path, widths, n_seeds: int) -> dict:
    """The JSON sidecar of an encoder checkpoint, checked against the run that wants it.
    Reads no arrays.

    Raises:
      UsageError: no encoder checkpoint there, or one of other widths or seeds.
    """
    path = Path(path)
    meta = None
    if path.is_dir():  # Orbax's manager would create a missing folder: look first
        try:
            meta = checkpoint.restore_extra(path)
        except OSError:  # none there, or unreadable (CheckpointError)
            meta = None
    if not meta or "widths" not in meta or "n_seeds" not in meta:
        raise UsageError(
            f"no encoder checkpoint in {path}; pass the `encoder` folder a "
            "pretraining run wrote (see --stage pretrain)"
        )
    if tuple(meta["widths"]) != tuple(widths) or int(meta["n_seeds"]) != n_seeds:
        arch = next(
            (name for name, w in ARCHITECTURES.items() if tuple(w) == tuple(meta["widths"])), None
        )
        raise UsageError(
            f"the encoder in {path} has widths {meta['widths']}"
            f"{f' (--arch {arch})' if arch else ''} and {_seeds(meta['n_seeds'])}; this run "
            f"needs widths {list(widths)} and {_seeds(n_seeds)}: pass matching --arch and --seeds"
        )
    return meta


def restore_encoder(path: Path, widths, n_seeds: int):
    """Stacked encoder params [n_seeds, ...] from an encoder checkpoint.

    Raises:
      UsageError: see `encoder_metadata`.
      CheckpointError: the checkpoint is damaged; the message says how to replace it.
    """
    encoder_metadata(path, widths, n_seeds)
    model = Autoencoder(widths=tuple(widths))
    shapes = jax.eval_shape(
        lambda: model.init(jax.random.PRNGKey(0), jnp.zeros((1, 784)))["params"]["encoder"]
    )
    target = jax.tree_util.tree_map(
        lambda s: jax.ShapeDtypeStruct((n_seeds, *s.shape), s.dtype), shapes
    )
    try:
        encoder, _ = checkpoint.restore(path, target)
    except checkpoint.CheckpointError as e:
        folder = Path(path).parent  # a finished pretraining is never replaced silently: say how
        fix = (
            f"it belongs to the pretraining in {folder}: set that aside and the same command "
            f"pretrains again: mv {shlex.quote(str(folder))} {shlex.quote(str(folder))}.damaged && "
            f"{command_line()}"
            if folder.parent.name == PRETRAIN
            else "pass another --encoder, or pretrain one (--stage pretrain)"
        )
        raise checkpoint.CheckpointError(
            f"the encoder checkpoint in {path} cannot be restored ({e}); {fix}"
        ) from None
    return encoder


def finetune(ctx: Context, spec: Spec, run_dir: Path) -> None:
    """A row: its pretraining (found or trained) or given encoder, then the classifier from it
    (fresh states with the encoder put in), and the row's folder with a copy of the encoder."""
    init, extra_history, figures, pre_metrics = None, {}, {}, None
    encoder_path = spec.encoder
    if encoder_path is None and spec.pretrain is not None:
        folder = pretrain(ctx, spec.pretrain)
        encoder_path = folder / "encoder"
        extra_history = {
            f"pretrain_{k}": v for k, v in io.read_json(folder / "history.json").items()
        }
        pre_metrics = io.read_json(folder / "metrics.json")
        figures = {
            name: (lambda p, src=folder / name: io.write_bytes(p, src.read_bytes()))
            for name in ("reconstruction_curves.png", "denoising.png")
        }
    if encoder_path is not None:
        encoder = restore_encoder(encoder_path, spec.cfg.widths, len(ctx.seeds))
        fresh = init_states(program(spec.cfg, len(ctx.data.train_labels)), ctx.seeds)
        init = fresh.replace(params=jax.vmap(with_pretrained_encoder)(fresh.params, encoder))
        checkpoint.save(run_dir / "encoder", 0, encoder, checkpoint.restore_extra(encoder_path))
    result = sweep_lib.train(
        ctx, spec, run_dir / "checkpoint", init=init, tensorboard=run_dir / monitor.TENSORBOARD
    )
    pre_s = (pre_metrics or {}).get("timing", {}).get("wall_s", 0.0)
    extra = {"pretrain": pre_metrics} if pre_metrics else {}
    extra.update(
        encoder_checkpoint=str(encoder_path) if encoder_path else None,
        total_train_s=pre_s + result.timing.get("wall_s", 0.0),
    )
    sweep_lib.write_row(
        ctx,
        spec,
        run_dir,
        result,
        extra_metrics=extra,
        extra_history=extra_history,
        figures=figures,
    )
    sweep_lib.remove_checkpoints(ctx, run_dir)


# ----------------------------------------------------------------------------------------------
# Entry


def check(opts: Options) -> None:
    """Flag combinations argparse cannot check; before any data is loaded or file written.

    Raises:
      UsageError: `--stage finetune` without `--encoder`, `--freeze-encoder` without it, or an
        encoder that does not fit.
    """
    if opts.stage == "finetune" and not opts.encoder:
        raise UsageError(
            "--stage finetune needs --encoder PATH (an `encoder` folder from a pretraining run)"
        )
    if opts.freeze_encoder and not opts.encoder:
        raise UsageError(
            "--freeze-encoder makes the fine-tuning of a given encoder a linear probe: use it "
            "with --stage finetune --encoder PATH. The sweeps have their own probe row "
            "(q2_pretraining/frozen_probe), and would otherwise report a probe as fine-tuned"
        )
    if opts.encoder and opts.stage != "pretrain":
        encoder_metadata(opts.encoder, ARCHITECTURES[opts.arch], opts.seeds)


def run(ctx: Context) -> None:
    """What the options ask: a pretraining alone, a fine-tuning of a given encoder, or sweeps."""
    opts = ctx.opts
    if opts.stage == "pretrain":
        cfg = pretrain_config(opts, arch=opts.arch, lr=opts.lr or LR, epochs=opts.pretrain_epochs)
        print(f"encoder checkpoint: {pretrain(ctx, cfg) / 'encoder'}")
        return
    if opts.stage == "finetune" or opts.encoder:
        title = "Q2 · fine-tuning a given encoder"
        specs = (encoder_spec(opts),)
        sweep_lib.run_sweep(
            ctx,
            Sweep(
                "q2_finetune",
                title,
                specs,
                finetune,
                question="q2",
                position=len(TITLES),
                keeps_other_rows=True,  # one row per encoder fine-tuned
            ),
        )
        return
    sweeps = [sweep(s, opts) for s in (SWEEPS if opts.sweep == "all" else (opts.sweep,))]
    sweep_lib.check_all(ctx, sweeps)
    for s in sweeps:
        sweep_lib.run_sweep(ctx, s)


def main(argv=None) -> None:
    """`python -m experiments.q2_autoencoder`."""

    def go():
        opts = cli.parse(
            cli.parser(__doc__.splitlines()[0], epochs=EPOCHS, lr=LR, question2=True), argv
        )
        check(opts)
        ctx = make_context(opts)
        with sole_writer(opts):
            run(ctx)

    cli.main_guard(go)
