"""Question 2: denoising-autoencoder pretraining -> encoder checkpoint -> fine-tuning -> evaluation.

Stages are plain functions composed here:
  `pretrain`        trains the MLP autoencoder on noisy -> clean images (all seeds at once) and
                    saves the stacked encoder parameters as an Orbax checkpoint;
  `restore_encoder` reads such a checkpoint back (shapes from its JSON sidecar);
  `finetune`        trains encoder + linear head from those weights (or frozen: a linear probe,
                    or from random init: no pretraining) and writes the results folder.
Pretraining runs are cached under <out>/q2_pretrain/<fingerprint>/, so the rows that share an
autoencoder (e.g. full fine-tuning and the frozen probe) pretrain it once.

Defaults are the report's: base 784-512-256-64-256-512-784, ReLU everywhere, Adam 1e-3,
batch 100, 10 epochs of pretraining then 10 of fine-tuning, 3 seeds.
"""

from __future__ import annotations

import dataclasses
import functools
import math
from pathlib import Path
from typing import Sequence

import jax
import jax.numpy as jnp
import numpy as np

from experiments import common
from fmnist_jax import checkpoint, curves, io, plots, results
from fmnist_jax.fit import fit
from fmnist_jax.models import ARCHITECTURES, Autoencoder, count_params, with_pretrained_encoder
from fmnist_jax.train import OptimizerConfig, TrainConfig, epochs_free

SWEEPS = ("lr", "arch", "epochs", "pretraining")
EXPERIMENT = {s: f"q2_{s}" for s in SWEEPS}
TITLES = {
    "lr": "Q2 · learning rate 1e-3 vs 1e-2 (both stages)",
    "arch": "Q2 · architecture: base vs thick",
    "epochs": "Q2 · epochs 2 / 10 / 20 (both stages)",
    "pretraining": "Q2 · value of pretraining: fine-tuned vs frozen probe vs no pretraining",
}
DENOISE_COLUMNS_PER_CLASS = 2


# ----------------------------------------------------------------------------------------------
# Configurations


def pretrain_config(args, *, arch: str, lr: float, epochs: int) -> TrainConfig:
    return TrainConfig(model="autoencoder", widths=ARCHITECTURES[arch], batch_size=args.batch_size,
                       epochs=1 if args.quick else epochs, augment="none", denoise_std=args.denoise_std,
                       optimizer=OptimizerConfig(name="adam", learning_rate=lr))


def finetune_config(args, *, arch: str, lr: float, epochs: int, freeze: bool = False) -> TrainConfig:
    return TrainConfig(model="encoder_classifier", widths=ARCHITECTURES[arch], freeze_encoder=freeze,
                       batch_size=args.batch_size, epochs=1 if args.quick else epochs, augment="none",
                       optimizer=OptimizerConfig(name="adam", learning_rate=lr))


def row(args, name: str, label: str, *, arch=None, lr=None, epochs=None, pretrain_epochs=None,
        freeze=None, pretrained: bool = True) -> common.Spec:
    arch = arch or args.arch
    lr = lr or args.lr
    epochs = epochs or args.epochs
    pretrain_epochs = pretrain_epochs or args.pretrain_epochs
    freeze = args.freeze_encoder if freeze is None else freeze
    pre = pretrain_config(args, arch=arch, lr=lr, epochs=pretrain_epochs) if pretrained else None
    extra = {"pretrain_config": results.config_to_dict(pre) if pre else None,
             "encoder_checkpoint": str(args.encoder) if args.encoder else None}
    return common.Spec(name, label, finetune_config(args, arch=arch, lr=lr, epochs=epochs, freeze=freeze),
                       extra=extra)


def sweep_specs(args, sweep: str) -> list[common.Spec]:
    base = row(args, "base", f"base, lr {args.lr:g}, {args.pretrain_epochs}+{args.epochs} epochs")
    if sweep == "lr":
        return [row(args, f"lr_{lr:g}", f"lr {lr:g}", lr=lr) for lr in (1e-3, 1e-2)]
    if sweep == "arch":
        return [row(args, arch, f"{arch} {'-'.join(map(str, (784, *ARCHITECTURES[arch])))}", arch=arch)
                for arch in ("base", "thick")]
    if sweep == "epochs":
        return [row(args, f"epochs_{e}", f"{e}+{e} epochs", epochs=e, pretrain_epochs=e) for e in (2, 10, 20)]
    return [
        dataclasses.replace(base, name="finetuned", label="pretrained encoder, fine-tuned"),
        row(args, "frozen_probe", "pretrained encoder frozen (linear probe)", freeze=True),
        row(args, "no_pretraining", "same classifier from random init", pretrained=False, freeze=False),
    ]


def encoder_spec(args) -> common.Spec:
    """The one row of `--stage finetune --encoder PATH` (its own folder per arch and per
    frozen / fine-tuned, so a probe and a fine-tuning of the same encoder sit side by side)."""
    frozen = "_frozen" if args.freeze_encoder else ""
    spec = row(args, f"from_{Path(args.encoder).parent.name}_{args.arch}{frozen}",
               f"{'frozen probe on' if frozen else 'fine-tuned from'} {args.encoder}", pretrained=False)
    return dataclasses.replace(spec, extra={**spec.extra, "encoder_checkpoint": str(args.encoder)})


# ----------------------------------------------------------------------------------------------
# Stages


def _pretrain_folder(ctx: common.Context, cfg: TrainConfig) -> tuple[Path, dict]:
    """The cache folder of a pretraining configuration and the payload it is fingerprinted from."""
    payload = {"pretrain": results.config_to_dict(cfg), "seeds": ctx.seeds,
               # What decides the images it sees (tfds has its own order, so its own split).
               "data": {k: ctx.data.info.get(k) for k in ("source", "split_seed", "val_fraction", "counts",
                                                          "standardised", "quick")}}
    fp = results.config_fingerprint(payload)
    return ctx.out / "q2_pretrain" / fp, {**payload, "fingerprint": fp}


def _start_folder(folder: Path, config: dict) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    results.clean_stale_temporaries(folder)
    io.write_json(folder / "config.json", config)


def pretrain(ctx: common.Context, cfg: TrainConfig, snapshot_epochs: Sequence[int] = ()) -> Path:
    """Pretrain (or reuse) the denoising autoencoder; returns its cache folder, which holds
    `encoder/` (Orbax), history.json, metrics.json and denoising.png.

    `snapshot_epochs`: shorter pretrainings of the same configuration to write on the way, from
    the epoch they end at (only where `train.epochs_free(cfg)`, so that they equal those
    configurations trained on their own; ones already complete are left alone)."""
    folder, config = _pretrain_folder(ctx, cfg)
    fp = config["fingerprint"]
    if (folder / "metrics.json").is_file():
        ctx.log(f"[q2_pretrain] {fp}: complete, reused")
        return folder
    wanted: dict[int, tuple[TrainConfig, Path, dict]] = {}
    if epochs_free(cfg):
        for k in sorted(set(snapshot_epochs)):
            if 0 < k < cfg.epochs:
                sub_folder, sub_config = _pretrain_folder(ctx, cfg.replace(epochs=k))
                if not (sub_folder / "metrics.json").is_file():
                    wanted[k] = (cfg.replace(epochs=k), sub_folder, sub_config)
    also = f" (writing epochs {', '.join(map(str, wanted))} on the way)" if wanted else ""
    ctx.log(f"[q2_pretrain] {fp}: pretraining {'-'.join(map(str, (784, *cfg.widths)))}, "
            f"{cfg.epochs} epochs{also}")
    _start_folder(folder, config)

    def on_epoch(partial) -> None:
        if partial.epochs_run not in wanted:
            return
        sub_cfg, sub_folder, sub_config = wanted[partial.epochs_run]
        _start_folder(sub_folder, {**sub_config, "snapshot_of": str(folder),
                                   "snapshot_epoch": partial.epochs_run})
        _write_pretraining(ctx, sub_cfg, sub_folder, partial)
        ctx.log(f"[q2_pretrain] {sub_config['fingerprint']}: written from epoch {partial.epochs_run} of {fp}")

    data = ctx.data
    res = fit(cfg, (data.train_images, data.train_labels),
              {"val": (data.val_images, data.val_labels), "test": (data.test_images, data.test_labels)},
              ctx.seeds, checkpoint_dir=folder / "checkpoint", parallel=ctx.args.parallel,
              progress=ctx.progress, desc=f"pretrain {fp[:6]}", on_epoch=on_epoch if wanted else None)
    _write_pretraining(ctx, cfg, folder, res)
    results.remove_tree(folder / "checkpoint")
    return folder


def _write_pretraining(ctx: common.Context, cfg: TrainConfig, folder: Path, res) -> None:
    """A pretraining folder's files from a fit result; metrics.json (the completion mark) last."""
    encoder = res.states.params["encoder"]
    checkpoint.save(folder / "encoder", 0, encoder, {"widths": list(cfg.widths), "n_seeds": len(ctx.seeds),
                                                     "seeds": ctx.seeds, "denoise_std": cfg.denoise_std})
    io.write_json(folder / "history.json", {"epoch": list(range(1, res.epochs_run + 1)), **res.history})
    plots.learning_curves(res.history, folder / "reconstruction_curves.png",
                          title="denoising autoencoder: reconstruction MSE", metrics=("loss",),
                          sets=("train", "val", "test", "val_noisy", "test_noisy"), ylabels={"loss": "MSE"})
    draw_denoising(ctx, cfg, jax.tree_util.tree_map(lambda x: x[0], res.states.params), folder / "denoising.png")
    metrics = {
        "val_mse": common_ms(res.final["val"]["loss"]), "test_mse": common_ms(res.final["test"]["loss"]),
        "val_noisy_mse": common_ms(res.final["val"]["noisy_loss"]),
        "test_noisy_mse": common_ms(res.final["test"]["noisy_loss"]),
        "denoise_std": cfg.denoise_std, "n_params": count_params(jax.tree_util.tree_map(lambda x: x[0], res.states.params)),
        "diverged": res.diverged, "fit_diagnosis": curves.diagnose(res.history), "timing": res.timing,
        "epochs_run": res.epochs_run, "complete": True,
    }
    io.write_json(folder / "metrics.json", metrics)


def pretraining_configs(args, sweeps: Sequence[str]) -> list[TrainConfig]:
    """The pretrainings the rows of these sweeps start from (each once, in order of first use)."""
    out: list[TrainConfig] = []
    for sweep in sweeps:
        for spec in sweep_specs(args, sweep):
            cfg = row_pretrain_config(args, spec)
            if cfg is not None and cfg not in out:
                out.append(cfg)
    return out


def row_pretrain_config(args, spec: common.Spec) -> TrainConfig | None:
    """The pretraining a row starts from (None: it starts from random init)."""
    pre = spec.extra.get("pretrain_config")
    if pre is None:
        return None
    return pretrain_config(args, arch=_arch_of(spec.cfg), lr=pre["optimizer"]["learning_rate"],
                           epochs=pre["epochs"])


def pretrain_shared(ctx: common.Context, sweeps: Sequence[str]) -> None:
    """Pretrain first what several rows can share: where pretrainings differ only in their epochs
    (and the schedule is constant), train the longest and write the shorter ones from it. Rows
    then find their pretraining complete; the others are pretrained when a row first needs them."""
    groups: dict[TrainConfig, list[int]] = {}
    for cfg in pretraining_configs(ctx.args, sweeps):
        if epochs_free(cfg):
            groups.setdefault(cfg.replace(epochs=0), []).append(cfg.epochs)
    for base, epochs in groups.items():
        longest, shorter = max(epochs), [e for e in epochs if e != max(epochs)]
        pending = [e for e in epochs if not (_pretrain_folder(ctx, base.replace(epochs=e))[0]
                                              / "metrics.json").is_file()]
        if shorter and pending:
            pretrain(ctx, base.replace(epochs=longest), snapshot_epochs=shorter)


def common_ms(values):
    from fmnist_jax.metrics import mean_std

    return mean_std(values)


def draw_denoising(ctx, cfg: TrainConfig, params, path: Path) -> None:
    """Rows of noisy input / reconstruction / clean target for test images of every class."""
    from fmnist_jax.augment import corrupt
    from fmnist_jax.fit import EVAL_NOISE_SEED

    data = ctx.data
    idx = np.concatenate([np.flatnonzero(data.test_labels == c)[:DENOISE_COLUMNS_PER_CLASS]
                          for c in range(len(data.class_names))])
    clean = jnp.asarray(data.test_images[idx])
    noisy = corrupt(jax.random.PRNGKey(EVAL_NOISE_SEED), clean, cfg.denoise_std)
    recon = Autoencoder(widths=cfg.widths).apply({"params": params}, noisy)
    plots.denoising_rows(np.asarray(noisy), np.asarray(recon), np.asarray(clean), path,
                         title=f"denoising (σ = {cfg.denoise_std}), seed 0",
                         labels=[data.class_names[c] for c in data.test_labels[idx]])


def encoder_metadata(path: Path, widths, n_seeds: int) -> dict:
    """The JSON sidecar of an encoder checkpoint, checked against the run that wants it
    (a usage error, exit 2, when it is missing or does not fit). Reads no arrays."""
    path = Path(path)
    # Orbax's manager would create a missing folder: look first.
    meta = None
    if path.is_dir():
        try:
            meta = checkpoint.restore_extra(path)
        except (FileNotFoundError, ValueError):
            meta = None
    if not meta or "widths" not in meta or "n_seeds" not in meta:
        raise common.UsageError(f"no encoder checkpoint in {path}; pass the `encoder` folder a "
                                "pretraining run wrote (see --stage pretrain)")
    if tuple(meta["widths"]) != tuple(widths) or int(meta["n_seeds"]) != n_seeds:
        arch = next((name for name, w in ARCHITECTURES.items() if tuple(w) == tuple(meta["widths"])), None)
        raise common.UsageError(
            f"the encoder in {path} has widths {meta['widths']}"
            f"{f' (--arch {arch})' if arch else ''} and {meta['n_seeds']} seeds; this run "
            f"needs widths {list(widths)} and {n_seeds} seeds: pass matching --arch and --seeds")
    return meta


def restore_encoder(path: Path, widths, n_seeds: int):
    """Stacked encoder params [n_seeds, ...] from an encoder checkpoint."""
    encoder_metadata(path, widths, n_seeds)
    model = Autoencoder(widths=tuple(widths))
    shapes = jax.eval_shape(lambda: model.init(jax.random.PRNGKey(0), jnp.zeros((1, 784)))["params"]["encoder"])
    target = jax.tree_util.tree_map(lambda s: jax.ShapeDtypeStruct((n_seeds, *s.shape), s.dtype), shapes)
    encoder, _ = checkpoint.restore(path, target)
    return encoder


def finetune(ctx: common.Context, spec: common.Spec, run_dir: Path) -> None:
    """Pretrain if the row needs it (cached), then train the classifier and write its folder."""
    pre_cfg = row_pretrain_config(ctx.args, spec)
    init_hook, extra_history, extra_metrics, extra_figures = None, {}, {}, {}
    if ctx.args.encoder:
        encoder_path = Path(ctx.args.encoder)
    elif pre_cfg is not None:
        folder = pretrain(ctx, pre_cfg)
        encoder_path = folder / "encoder"
        pre_hist = io.read_json(folder / "history.json")
        extra_history = {f"pretrain_{k}": v for k, v in pre_hist.items()}
        pre_metrics = io.read_json(folder / "metrics.json")
        extra_metrics = {"pretrain": pre_metrics}
        extra_figures = {
            "reconstruction_curves.png": lambda p: io.write_bytes(p, (folder / "reconstruction_curves.png").read_bytes()),
            "denoising.png": lambda p: io.write_bytes(p, (folder / "denoising.png").read_bytes()),
        }
    else:
        encoder_path = None
    if encoder_path is not None:
        encoder = restore_encoder(encoder_path, spec.cfg.widths, len(ctx.seeds))
        init_hook = functools.partial(_inject, encoder)
        # The row's own copy of the encoder it started from.
        checkpoint.save(run_dir / "encoder", 0, encoder, checkpoint.restore_extra(encoder_path))
    pre_train_s = extra_metrics.get("pretrain", {}).get("timing", {}).get("wall_s", 0.0)
    result = common.train_classifier(ctx, spec, run_dir, init_hook=init_hook, extra_history=extra_history,
                                     extra_metrics={**extra_metrics, "encoder_checkpoint": str(encoder_path)
                                                    if encoder_path else None},
                                     extra_figures=extra_figures)
    metrics = io.read_json(run_dir / "metrics.json")
    metrics["total_train_s"] = pre_train_s + result.timing.get("wall_s", 0.0)
    io.write_json(run_dir / "metrics.json", metrics)


def _arch_of(cfg: TrainConfig) -> str:
    return next(name for name, widths in ARCHITECTURES.items() if tuple(widths) == tuple(cfg.widths))


def _inject(encoder, states):
    # Fresh buffers: `fit` donates the states it trains, and would otherwise delete the
    # restored arrays this hook holds (a second call, e.g. a resume, would then fail).
    encoder = jax.tree_util.tree_map(jnp.copy, encoder)
    params = jax.vmap(with_pretrained_encoder)(states.params, encoder)
    return states.replace(params=params)


# ----------------------------------------------------------------------------------------------
# Entry


def add_flags(p) -> None:
    g = p.add_argument_group("question 2")
    g.add_argument("--sweep", choices=(*SWEEPS, "all"), default="all")
    g.add_argument("--stage", choices=("pretrain", "finetune", "both"), default="both",
                   help="pretrain only (writes an encoder checkpoint), fine-tune only (needs --encoder), or both")
    g.add_argument("--encoder", type=Path, default=None, help="fine-tune from this encoder checkpoint folder")
    g.add_argument("--arch", choices=tuple(ARCHITECTURES), default="base")
    g.add_argument("--pretrain-epochs", type=common._number(int, "--pretrain-epochs", low=1), default=10)
    g.add_argument("--denoise-std", type=common._number(float, "--denoise-std", low=0, high=1), default=0.3,
                   help="sigma of the corrupting noise in pretraining (noisy input, clean target)")
    g.add_argument("--freeze-encoder", action="store_true",
                   help="train only the head on top of the pretrained encoder (a linear probe)")


def check_args(args) -> None:
    """Flag combinations argparse cannot check; called before any data is loaded or file written."""
    if args.stage == "finetune" and not args.encoder:
        raise common.UsageError("--stage finetune needs --encoder PATH (an `encoder` folder from a pretraining run)")
    if args.encoder and args.stage != "pretrain":
        encoder_metadata(args.encoder, ARCHITECTURES[args.arch], args.seeds)


def run(ctx: common.Context, sweeps=None) -> list[dict]:
    args = ctx.args
    check_args(args)
    if args.stage == "pretrain":
        folder = pretrain(ctx, pretrain_config(args, arch=args.arch, lr=args.lr, epochs=args.pretrain_epochs))
        print(f"encoder checkpoint: {folder / 'encoder'}")
        return []
    if args.stage == "finetune" or args.encoder:
        return common.run_sweep(ctx, "q2_finetune", [encoder_spec(args)], finetune,
                                title="Q2 · fine-tuning a given encoder", extra_columns=COLUMNS)
    rows = []
    sweeps = sweeps or (SWEEPS if args.sweep == "all" else (args.sweep,))
    pretrain_shared(ctx, sweeps)
    for sweep in sweeps:
        rows += common.run_sweep(ctx, EXPERIMENT[sweep], sweep_specs(args, sweep), finetune,
                                 title=TITLES[sweep], extra_columns=COLUMNS)
    return rows


def _number(value, digits: int) -> str:
    """A float cell; NaN/inf (stored in JSON as strings, e.g. by a diverged run) print as such."""
    x = float(value)
    return f"{x:.{digits}f}" if math.isfinite(x) else str(x)


COLUMNS = {
    # Two counts, never mixed in one column: the autoencoder pretrained (if any), the classifier trained.
    "AE params": lambda m: f"{m['pretrain']['n_params']:,}" if m.get("pretrain") else "–",
    "classifier params": lambda m: f"{m.get('n_params', 0):,}",
    "val−train loss": lambda m: _number(m.get("fit_diagnosis", {}).get("final_val_minus_train_loss", "nan"), 3),
    "fit": lambda m: m.get("fit_diagnosis", {}).get("verdict", "–"),
    "recon MSE (noisy)": lambda m: (f"{_number(m['pretrain']['test_mse']['mean'], 4)} "
                                    f"({_number(m['pretrain']['test_noisy_mse']['mean'], 4)})"
                                    if m.get("pretrain") else "–"),
}


def main(argv=None) -> None:
    def go():
        p = common.parser(__doc__.splitlines()[0], epochs=10, lr=1e-3)
        add_flags(p)
        args = p.parse_args(argv)
        check_args(args)
        run(common.make_context(args))

    common.main_guard(go)
