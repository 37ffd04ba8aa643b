"""One configuration, any of it from the command line: every field of a run's training
configuration (`fmnist_jax.train.TrainConfig`) is a flag, and `--config PATH` reruns the run a
saved config.json records, the flags given with it overriding its fields
(docs/variants.md#one-configuration-and---config).

    python -m experiments.run --config results/q1_optimizers/sgd/config.json [--out DIR]
    python -m experiments.run --config results/q1_optimizers/sgd/config.json --lr 0.01
    python -m experiments.run --optimizer sgd --momentum 0.9 --epochs 8 [--classes 0,2,4,6,8]

A config.json rerun as it is has its fingerprint: into the same --out it is found complete and
skipped, elsewhere it is trained again, to the same numbers, in `<out>/<experiment>/<name>/`.
A changed configuration (flags, or none given at all) goes to `<out>/runs/<name>_<fingerprint>/`,
so that it never lands in a sweep's folder. The run a row continues (`start`) and the
pretraining it starts from are rerun as recorded; the flags change the row itself and, for the
data (`--classes`, `--seeds`, `--limit`, ...), all of them.
"""

if __name__ == "__main__":
    from experiments import interrupt

    interrupt.install()
    from fmnist_jax import entry

    entry.start()

import argparse
import dataclasses
import typing
from pathlib import Path

from experiments import cli, q2
from experiments import sweep as sweep_lib
from experiments.cli import Options, UsageError
from experiments.context import Context, make_context, sole_writer
from experiments.sweep import Spec, Sweep
from fmnist_jax import io, results
from fmnist_jax.augment import AUG_MODES, AugmentConfig
from fmnist_jax.models import CONV_IMPLS, INITS, POOLS
from fmnist_jax.train import MODELS, OPTIMIZERS, SCHEDULES, OptimizerConfig, TrainConfig

RUNS = "runs"  # the experiment folder of changed configurations
# A few fields keep the flag names the sweeps give them; the others are their own name.
FLAG_NAMES = {
    "optimizer.name": "optimizer",
    "optimizer.learning_rate": "lr",
    "aug.max_degrees": "rotation-degrees",
}
CHOICES = {
    "model": MODELS,
    "pool": POOLS,
    "init": INITS,
    "conv_impl": CONV_IMPLS,
    "augment": AUG_MODES,
    "optimizer.name": OPTIMIZERS,
    "optimizer.schedule": SCHEDULES,
}
DERIVED = ("num_classes",)  # set by --classes, not a flag of its own


def fields(cls=TrainConfig, prefix: str = "") -> list[tuple[str, type, object]]:
    """(dotted path, type, default) of every leaf field of a config dataclass, nested configs
    (optimizer, augmentation) walked into."""
    hints, out = typing.get_type_hints(cls), []
    for f in dataclasses.fields(cls):
        kind = hints[f.name]
        default = f.default if f.default is not dataclasses.MISSING else f.default_factory()
        if dataclasses.is_dataclass(kind):
            out += fields(kind, f"{prefix}{f.name}.")
        elif f.name not in DERIVED:
            out.append((prefix + f.name, kind, default))
    return out


def int_list(flag: str):
    """An argparse `type` for comma-separated positive integers (a tuple)."""
    one = cli.number(int, flag, low=1)

    def parse(text: str) -> tuple[int, ...]:
        return tuple(one(t) for t in text.split(","))

    return parse


def parser() -> argparse.ArgumentParser:
    """The common flags, `--config`, and one flag per training-configuration field (these
    replace the sweeps' flags of the same names: here they set the one configuration)."""
    p = cli.parser(__doc__.splitlines()[0])
    p.prog = "python -m experiments.run"
    p.conflict_handler = "resolve"  # the groups below replace --pool, --batch-size, ...
    p.add_argument(
        "--config",
        type=Path,
        metavar="PATH",
        help="a run's config.json to rerun; the other flags given override its fields",
    )
    g = p.add_argument_group("training configuration (fmnist_jax.train.TrainConfig)")
    for path, kind, default in fields():
        flag = "--" + FLAG_NAMES.get(path, path.rsplit(".", 1)[-1].replace("_", "-"))
        common = {"dest": path, "default": default, "help": f"TrainConfig.{path}"}
        if kind is bool:
            g.add_argument(flag, action=argparse.BooleanOptionalAction, **common)
        elif path in CHOICES:
            g.add_argument(flag, choices=CHOICES[path], **common)
        elif kind in (int, float, int | None):
            number = float if kind is float else int
            metavar = "X" if kind is float else "N"
            g.add_argument(flag, type=cli.number(number, flag), metavar=metavar, **common)
        elif kind == tuple[int, ...]:
            g.add_argument(flag, type=int_list(flag), metavar="N,N,...", **common)
        else:  # a new field of a kind not handled here: a test keeps this list complete
            raise TypeError(f"TrainConfig.{path}: no flag for a {kind}")
    return p


def read_config(path: Path) -> dict:
    """A run's config.json.

    Raises:
      UsageError: it cannot be read, or records no training configuration.
    """
    try:
        config = io.read_json_object(path)
    except (OSError, ValueError) as e:
        raise UsageError(
            f"--config {path} cannot be read ({e}); pass a run's config.json"
        ) from None
    if not isinstance(config.get("train_config"), dict):
        raise UsageError(
            f"--config {path} records no train_config: pass the config.json of a run's folder "
            "(e.g. results/q1_optimizers/sgd/config.json)"
        )
    return config


def recorded_flags(config: dict) -> dict:
    """The flag values (by dest) a config.json records: its training configuration's fields and
    the options that fixed its data and seeds.

    Raises:
      UsageError: a value of it is not one this code takes (e.g. seeds other than 0..N-1).
    """
    data, info = config.get("data") or {}, config.get("data_info") or {}
    seeds = config.get("seeds") or [0]
    if seeds != list(range(len(seeds))):
        raise UsageError(f"the config's seeds {seeds} are not 0..N-1, which --seeds N trains")
    out = {
        "seeds": len(seeds),
        "quick": bool(data.get("quick")),
        "limit": info.get("limit"),
        "split_seed": data.get("split_seed", 0),
        "source": {"csv": "idx"}.get(data.get("source"), data.get("source", "idx")),
        "allow_unverified_data": not info.get("verified", True),
        "classes": tuple(data.get("classes") or info.get("classes") or cli.CLASSES),
    }
    cfg = _config(config["train_config"], "the config's train_config")
    return out | {path: _get(cfg, path) for path, _, _ in fields()}


def _get(cfg, path: str):
    for name in path.split("."):
        cfg = getattr(cfg, name)
    return cfg


def _config(recorded: dict, what: str) -> TrainConfig:
    try:
        return results.config_from_dict(recorded)
    except ValueError as e:
        raise UsageError(f"{what} is not a training configuration this code takes: {e}") from None


def train_config(args: argparse.Namespace, opts: Options) -> TrainConfig:
    """The configuration the flags describe.

    Raises:
      UsageError: a value out of its range (the message says the range).
    """
    values = {path: getattr(args, path) for path, _, _ in fields()}
    nested = {
        name: {p.split(".", 1)[1]: v for p, v in values.items() if p.startswith(name + ".")}
        for name in ("optimizer", "aug")
    }
    top = {p: v for p, v in values.items() if "." not in p}
    try:
        return TrainConfig(
            **top,
            optimizer=OptimizerConfig(**nested["optimizer"]),
            aug=AugmentConfig(**nested["aug"]),
            num_classes=len(opts.classes),
        )
    except ValueError as e:
        raise UsageError(str(e)) from None


def spec_of(recorded: dict, name: str, label: str, num_classes: int) -> Spec:
    """A recorded payload (a config.json, or its `start`: the run it continues) as a Spec, the
    run it continues and the pretraining it starts from included, with `num_classes` classes."""
    fix = {"num_classes": num_classes}
    start = recorded.get("start")
    pretrain = recorded.get("pretrain_config")
    encoder = recorded.get("encoder_checkpoint")
    return Spec(
        name,
        label,
        _config(recorded["train_config"], "a train_config").replace(**fix),
        start=spec_of(start, "start", "the run it continues", num_classes) if start else None,
        pretrain=_config(pretrain, "pretrain_config").replace(**fix) if pretrain else None,
        encoder=Path(encoder) if encoder else None,
    )


def run(ctx: Context, cfg: TrainConfig, config: dict | None) -> None:
    """Train (or find complete) the one configuration `cfg`, continuing or fine-tuning from
    what `config` (a config.json, if any) records; a pretraining goes to Question 2's cache.

    Raises:
      UsageError: the config's data are not the data loaded now, though the options that
        select them are the same (other files).
    """
    if cfg.model == "autoencoder":
        print(f"pretraining: {q2.pretrain(ctx, cfg)}")
        return
    recorded = spec_of(config, "run", "run", cfg.num_classes) if config else None
    label = (config or {}).get("label") or (
        f"{cfg.model}, {cfg.optimizer.name} lr {cfg.optimizer.learning_rate:g}, {cfg.epochs} epochs"
    )
    spec = dataclasses.replace(recorded, cfg=cfg) if recorded else Spec("run", label, cfg)
    new = sweep_lib.config_json(ctx, RUNS, spec)
    if config and new["fingerprint"] == config.get("fingerprint"):
        experiment, name = config.get("experiment", RUNS), config.get("name", "run")
    else:
        experiment, name = RUNS, f"{(config or {}).get('name', cfg.model)}_{new['fingerprint'][:8]}"
    if config and new["fingerprint"] != config.get("fingerprint"):
        keys = ("results_version", "train_config", "seeds", "data", "start", "pretrain_config")
        changed = [k for k in keys if new.get(k) != config.get(k)]
        old, now = config.get("data") or {}, new["data"]
        same_choice = all(old.get(k) == now.get(k) for k in ("source", "split_seed", "counts"))
        if same_choice and "digest" in old and old["digest"] != now["digest"]:
            raise UsageError(
                f"the data loaded now are not those of --config (digest {now['digest']}, the "
                f"config's {old['digest']}): pass the --data-dir it used "
                f"({(config.get('data_info') or {}).get('directory')})"
            )
        ctx.log(f"a changed configuration ({', '.join(changed)}): {experiment}/{name}")
    spec = dataclasses.replace(spec, name=name, label=str(label))
    execute = q2.finetune if cfg.model == "encoder_classifier" else None
    sweep = Sweep(experiment, str(label), (spec,), execute)
    (item,) = sweep_lib.plan(ctx, sweep)
    sweep_lib.run_planned(ctx, sweep, item)
    print(f"{item.run_dir}: {'complete, skipped' if item.status == 'skip' else 'done'}")


def main(argv=None) -> None:
    """`python -m experiments.run`."""

    def go():
        p = parser()
        pre = argparse.ArgumentParser(add_help=False)
        pre.add_argument("--config", type=Path)
        path = pre.parse_known_args(argv)[0].config
        config = read_config(path) if path else None
        # Flags not given keep the config's values: argparse sets a default only where the
        # namespace has no value yet.
        args = p.parse_args(argv, argparse.Namespace(**recorded_flags(config) if config else {}))
        opts = cli.options(args)
        cfg = train_config(args, opts)
        opts = opts.replace(batch_size=cfg.batch_size)  # checked against the data
        with sole_writer(opts):
            run(make_context(opts), cfg, config)

    cli.main_guard(go)


if __name__ == "__main__":
    main()
