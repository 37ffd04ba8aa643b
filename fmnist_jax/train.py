"""The functional training engine.

A run is a stack of N members (seeds, or hyperparameter values of the same shapes) trained
together by one compiled program over stacked `TrainState`s (`jax.vmap` on accelerators,
`lax.map` on the CPU: see `fit.resolve_member_map`), one `lax.scan` per epoch over
device-resident data, augmentation inside the step.

Keys: member k's root key is `PRNGKey(seed_k)`; `fold_in(root, 0)` initialises the model and
`fold_in(root, 1)` becomes `state.key`, from which every later key is derived:
`fold_in(fold_in(state.key, SHUFFLE), epoch)` permutes an epoch, and
`fold_in(state.key, step)` -> {augment, dropout} streams drives one step. So the same seed and
config give the same numbers, and a run resumed from a checkpoint continues identically.

Training drops the last partial batch of each epoch (a fresh permutation every epoch, so every
image is still seen); evaluation pads the last batch and masks it, so every image counts.
"""

from __future__ import annotations

import dataclasses
import functools
from dataclasses import dataclass, field
from typing import Any, Callable, NamedTuple, Sequence

import chex
import flax
import jax
import jax.numpy as jnp
import numpy as np
import optax

from fmnist_jax import augment as augment_lib, metrics
from fmnist_jax.models import (
    BASE_WIDTHS, CNN, NUM_CLASSES, Autoencoder, EncoderClassifier, POOLS, resolve_conv_impl,
)

MODELS = ("cnn", "autoencoder", "encoder_classifier")
OPTIMIZERS = ("adam", "adamw", "sgd", "rmsprop")
SCHEDULES = ("constant", "cosine", "wsd")
IMAGE_SHAPE = (28, 28, 1)

# fold_in constants naming the key streams.
_INIT, _TRAIN = 0, 1
_SHUFFLE = 0x5F
_AUGMENT, _DROPOUT = 0, 1


CPU_CNN_EVAL_IMAGES = 150  # see TrainConfig.eval_batch


@dataclass(frozen=True, kw_only=True)
class OptimizerConfig:
    """An optax optimizer by name. The learning rate itself lives in the train state (so N
    learning rates can be vmapped); `schedule` multiplies it over the run."""

    name: str = "adam"
    learning_rate: float = 1e-3
    momentum: float = 0.0  # sgd only (PyTorch convention: buf = m * buf + g)
    weight_decay: float = 0.0  # adamw only
    # constant | cosine (to 0 over the run, after the warm-up) | wsd: warm-up, stable, decay
    # (constant, then linearly to 0 over the last `decay_epochs` epochs)
    schedule: str = "constant"
    warmup_epochs: float = 0.0
    decay_epochs: float = 0.0  # wsd only

    def __post_init__(self):
        if self.name not in OPTIMIZERS:
            raise ValueError(f"unknown optimizer {self.name!r}; choose one of {', '.join(OPTIMIZERS)}")
        if not self.learning_rate > 0:
            raise ValueError(f"learning rate must be > 0, got {self.learning_rate}")
        if not 0 <= self.momentum < 1:
            raise ValueError(f"momentum must be in [0, 1), got {self.momentum}")
        if self.weight_decay < 0:
            raise ValueError(f"weight decay must be >= 0, got {self.weight_decay}")
        if self.schedule not in SCHEDULES:
            raise ValueError(f"unknown schedule {self.schedule!r}; choose one of {', '.join(SCHEDULES)}")
        if self.warmup_epochs < 0:
            raise ValueError(f"warmup epochs must be >= 0, got {self.warmup_epochs}")
        if not self.decay_epochs >= 0:
            raise ValueError(f"decay epochs must be >= 0, got {self.decay_epochs}")
        if self.decay_epochs and self.schedule != "wsd":
            raise ValueError(f"decay epochs ({self.decay_epochs}) belong to the 'wsd' schedule, "
                             f"not {self.schedule!r}: set schedule='wsd' or decay_epochs=0")


@dataclass(frozen=True, kw_only=True)
class TrainConfig:
    """Everything static about a training run (hashable: it keys the compiled programs)."""

    model: str = "cnn"
    pool: str = "avg"
    conv_impl: str = "auto"
    widths: tuple[int, ...] = BASE_WIDTHS
    freeze_encoder: bool = False
    optimizer: OptimizerConfig = field(default_factory=OptimizerConfig)
    batch_size: int = 100
    epochs: int = 5
    augment: str = "online"  # none | expand | online (CNN); the expand set is built by the caller
    # The augmentation of a `wsd` schedule's decay epochs (None: `augment` throughout), e.g.
    # train on the expanded set, then decay on the originals (see `phase_config`).
    decay_augment: str | None = None
    aug: augment_lib.AugmentConfig = field(default_factory=augment_lib.AugmentConfig)
    denoise_std: float = 0.3  # autoencoder: sigma of the corrupting noise (noisy input, clean target)
    label_smoothing: float = 0.0  # classifiers: the training objective only (reported losses are plain CE)
    eval_batch_size: int | None = None  # None: `eval_batch(n_members)` picks it per backend

    def __post_init__(self):
        if self.model not in MODELS:
            raise ValueError(f"unknown model {self.model!r}; choose one of {', '.join(MODELS)}")
        if self.pool not in POOLS:
            raise ValueError(f"unknown pool {self.pool!r}; choose one of {', '.join(POOLS)}")
        if self.augment not in augment_lib.AUG_MODES:
            raise ValueError(
                f"unknown augmentation {self.augment!r}; choose one of {', '.join(augment_lib.AUG_MODES)}"
            )
        if self.batch_size < 1 or (self.eval_batch_size is not None and self.eval_batch_size < 1):
            raise ValueError(f"batch sizes must be >= 1, got {self.batch_size}, {self.eval_batch_size}")
        if self.epochs < 0:
            raise ValueError(f"epochs must be >= 0, got {self.epochs}")
        if self.denoise_std < 0:
            raise ValueError(f"denoising noise sigma must be >= 0, got {self.denoise_std}")
        if not 0 <= self.label_smoothing < 1:
            raise ValueError(f"label smoothing must be in [0, 1), got {self.label_smoothing}")
        resolve_conv_impl(self.conv_impl)  # validates
        opt = self.optimizer
        if self.decay_augment is not None:
            if self.decay_augment not in augment_lib.AUG_MODES:
                raise ValueError(f"unknown decay augmentation {self.decay_augment!r}; choose one "
                                 f"of {', '.join(augment_lib.AUG_MODES)}")
            if opt.schedule != "wsd" or not opt.decay_epochs:
                raise ValueError("a decay augmentation needs decay epochs: use the 'wsd' schedule "
                                 "with decay_epochs > 0, or leave decay_augment unset")
            if opt.decay_epochs != int(opt.decay_epochs):
                raise ValueError(f"with a decay augmentation the decay must last whole epochs (the "
                                 f"training set changes between epochs), got {opt.decay_epochs}")
        if self.epochs and opt.warmup_epochs + opt.decay_epochs > self.epochs:
            raise ValueError(
                f"warm-up ({opt.warmup_epochs}) plus decay ({opt.decay_epochs}) epochs exceed the "
                f"run's {self.epochs} epochs; shorten them or train longer")

    def eval_batch(self, n_members: int = 1) -> int:
        """Images per member in one evaluation call: `eval_batch_size` when set, else automatic.
        `n_members`: the members whose images one op sees together (all of them when vmapped,
        1 when `fit` maps them one after another: `fit.side_by_side`).

        Automatic: 1000, except the CNN on the CPU, where the members' images per call are kept
        near `CPU_CNN_EVAL_IMAGES`: measured on 2-core AMD EPYC hosts, the vmapped eval forward
        pass falls from ~7,000 to ~4,000 images/s once members x batch exceeds ~200 (its
        intermediates leave the cache; `benchmarks.run --only cnn_infer` shows both).
        Evaluation has no randomness for classifiers, so only the summation order changes.
        """
        if self.eval_batch_size is not None:
            return self.eval_batch_size
        if self.model == "cnn" and jax.default_backend() == "cpu":
            return max(1, CPU_CNN_EVAL_IMAGES // max(n_members, 1))
        return 1000

    @property
    def is_classifier(self) -> bool:
        return self.model != "autoencoder"

    def replace(self, **changes) -> "TrainConfig":
        return dataclasses.replace(self, **changes)


@flax.struct.dataclass
class TrainState:
    """One member's (or, stacked, N members') whole training state."""

    step: jax.Array  # int32 []
    params: Any
    batch_stats: Any  # {} for models without BatchNorm
    opt_state: Any
    learning_rate: jax.Array  # float32 [], the peak learning rate (vmappable)
    key: jax.Array  # uint32 [2], the member's training key


def build_model(cfg: TrainConfig):
    if cfg.model == "cnn":
        return CNN(pool=cfg.pool, conv_impl=cfg.conv_impl)
    if cfg.model == "autoencoder":
        return Autoencoder(widths=cfg.widths)
    return EncoderClassifier(widths=cfg.widths)


def _lr_multiplier(opt: OptimizerConfig, total_steps: int, steps_per_epoch: int) -> optax.Schedule:
    warmup = int(round(opt.warmup_epochs * steps_per_epoch))
    if opt.schedule == "constant":
        main = optax.constant_schedule(1.0)
    elif opt.schedule == "wsd":
        decay = int(round(opt.decay_epochs * steps_per_epoch))
        main = optax.join_schedules([optax.constant_schedule(1.0), optax.linear_schedule(1.0, 0.0, decay)],
                                    [total_steps - decay - warmup])
    else:
        main = optax.cosine_decay_schedule(1.0, max(total_steps - warmup, 1))
    if warmup == 0:
        return main
    return optax.join_schedules([optax.linear_schedule(0.0, 1.0, warmup), main], [warmup])


def epochs_free(cfg: TrainConfig) -> bool:
    """Whether a run's first k epochs do not depend on `cfg.epochs`, so that a run of k epochs is
    exactly the first k epochs of a longer one with the same seeds. True for a constant schedule
    (shuffling, augmentation and dropout keys depend on the seed and step only); a cosine
    schedule decays over the whole run, so its early steps depend on the total."""
    return cfg.optimizer.schedule == "constant"


def stable_epochs(cfg: TrainConfig) -> float:
    """How many leading epochs of a run have the multiplier a constant schedule would give
    (1 after the same warm-up): all of them for `constant`, all but the decay for `wsd`, none
    for `cosine`."""
    schedule = cfg.optimizer.schedule
    if schedule == "constant":
        return float(cfg.epochs)
    if schedule == "wsd":
        return cfg.epochs - cfg.optimizer.decay_epochs
    return 0.0


def as_constant(cfg: TrainConfig) -> TrainConfig:
    """`cfg` with a constant schedule after its warm-up (what its stable phase trains)."""
    return cfg.replace(optimizer=dataclasses.replace(cfg.optimizer, schedule="constant", decay_epochs=0.0),
                       decay_augment=None)


def phase_config(cfg: TrainConfig, epoch: int) -> TrainConfig:
    """The configuration epoch `epoch` (0-based) trains: `cfg` itself, or in the decay epochs of
    a run with a `decay_augment`, `cfg` with that augmentation. Its program's schedule is the
    same `wsd` counted in the decay set's steps, so the rate falls linearly from 1 to 0 over
    the decay epochs whatever the two sets' sizes."""
    if cfg.decay_augment is None or epoch < stable_epochs(cfg):
        return cfg
    return cfg.replace(augment=cfg.decay_augment, decay_augment=None)


def starts_with(host: TrainConfig, run: TrainConfig) -> bool:
    """Whether `run` is exactly the first `run.epochs` epochs of `host` with the same seeds
    (tested bit for bit): `run` has a constant schedule, `host` is the same configuration but
    for its length and a schedule that stays constant at least that long (`constant` or the
    stable phase of `wsd`). E.g. a 5-epoch constant run starts a 7-epoch `wsd` run whose last
    2 epochs decay."""
    return (epochs_free(run) and run.epochs <= stable_epochs(host)
            and as_constant(host).replace(epochs=run.epochs) == run)


def make_direction(cfg: TrainConfig) -> optax.GradientTransformation:
    """The optimizer without its learning rate: the engine scales by -lr * schedule(step)."""
    opt = cfg.optimizer
    if opt.name == "adam":
        tx = optax.scale_by_adam()
    elif opt.name == "adamw":
        tx = optax.chain(optax.scale_by_adam(), optax.add_decayed_weights(opt.weight_decay))
    elif opt.name == "rmsprop":
        tx = optax.scale_by_rms()
    else:
        tx = optax.trace(decay=opt.momentum) if opt.momentum else optax.identity()
    if cfg.freeze_encoder:
        # A linear probe: the encoder gets zero updates, so its weights stay exactly as restored.
        def labels(params):
            return {k: jax.tree_util.tree_map(lambda _: "frozen" if k == "encoder" else "train", v)
                    for k, v in params.items()}
        tx = optax.multi_transform({"train": tx, "frozen": optax.set_to_zero()}, labels)
    if cfg.model == "cnn":
        # Each conv bias feeds a train-mode BatchNorm that subtracts it again: its exact gradient
        # is 0 and the computed one is float32 rounding noise, which Adam (dividing by its own
        # size) would turn into +-lr steps, leaking into BatchNorm's running means and making
        # results depend on summation order (vmap width, device count). Hold them at 0.
        def cnn_labels(params):
            return {layer: {name: "frozen" if layer.startswith("conv_") and name == "bias" else "train"
                            for name in leaves} for layer, leaves in params.items()}
        tx = optax.multi_transform({"train": tx, "frozen": optax.set_to_zero()}, cnn_labels)
    return tx


# ----------------------------------------------------------------------------------------------
# Losses and steps (single member; vmapped or mapped over members by the callers).


def _forward(cfg: TrainConfig, model, params, batch_stats, inputs, *, train: bool, dropout_key=None):
    variables = {"params": params}
    if batch_stats:
        variables["batch_stats"] = batch_stats
    if train:
        out, updates = model.apply(
            variables, inputs, train=True, rngs={"dropout": dropout_key}, mutable=["batch_stats"]
        )
        return out, updates.get("batch_stats", {})
    return model.apply(variables, inputs, train=False), batch_stats


def _loss(cfg: TrainConfig, outputs, targets, *, train: bool = False):
    """Per-example loss: cross-entropy for classifiers (against labels smoothed by
    `cfg.label_smoothing` when training), MSE over pixels for the autoencoder."""
    if cfg.is_classifier:
        if train and cfg.label_smoothing:
            soft = optax.smooth_labels(jax.nn.one_hot(targets, outputs.shape[-1]), cfg.label_smoothing)
            return optax.softmax_cross_entropy(outputs, soft)
        return optax.softmax_cross_entropy_with_integer_labels(outputs, targets)
    return jnp.mean((outputs - targets) ** 2, axis=-1)


def _inputs_targets(cfg: TrainConfig, key, images, labels, *, train: bool):
    if cfg.model == "autoencoder":
        noisy = augment_lib.corrupt(key, images, cfg.denoise_std)
        return noisy, images.reshape(images.shape[0], -1)
    if train and cfg.augment == "online":
        # The barrier materialises the augmented batch once; without it XLA fuses the
        # rotation and noise into each of the conv's nine shifted slices and recomputes them.
        images = jax.lax.optimization_barrier(augment_lib.augment_batch(key, images, cfg.aug))
    return images, labels


def _global_norm(tree) -> jax.Array:
    return optax.tree.norm(tree) if jax.tree_util.tree_leaves(tree) else jnp.float32(0)


class Program(NamedTuple):
    """The compiled functions of one (config, train-set size): built once, cached."""

    cfg: TrainConfig
    model: Any
    direction: optax.GradientTransformation
    lr_multiplier: optax.Schedule
    steps_per_epoch: int


@functools.lru_cache(maxsize=64)
def program(cfg: TrainConfig, n_train: int) -> Program:
    steps_per_epoch = n_train // cfg.batch_size
    if steps_per_epoch == 0:
        raise ValueError(
            f"batch size {cfg.batch_size} is larger than the training split ({n_train} images); "
            "use a smaller --batch-size"
        )
    total = steps_per_epoch * max(cfg.epochs, 1)
    return Program(cfg, build_model(cfg), make_direction(cfg),
                   _lr_multiplier(cfg.optimizer, total, steps_per_epoch), steps_per_epoch)


def init_state(prog: Program, seed_key: jax.Array, learning_rate=None) -> TrainState:
    """A fresh member from its root key. `learning_rate` overrides the config's (for lr sweeps)."""
    cfg = prog.cfg
    init_key = jax.random.fold_in(seed_key, _INIT)
    variables = prog.model.init(
        {"params": init_key, "dropout": init_key}, jnp.zeros((1, *IMAGE_SHAPE), jnp.float32)
    )
    params = variables["params"]
    lr = cfg.optimizer.learning_rate if learning_rate is None else learning_rate
    return TrainState(
        step=jnp.zeros((), jnp.int32),
        params=params,
        batch_stats=variables.get("batch_stats", {}),
        opt_state=prog.direction.init(params),
        learning_rate=jnp.asarray(lr, jnp.float32),
        key=jax.random.fold_in(seed_key, _TRAIN),
    )


def train_step(prog: Program, state: TrainState, images: jax.Array, labels: jax.Array,
               lr_scale: jax.Array | None = None):
    """One optimisation step on a batch: (state, images [B,28,28,1], labels [B]) -> (state, metrics).
    `lr_scale`: the schedule's multiplier for this step; by default computed from `state.step`."""
    cfg, model = prog.cfg, prog.model
    chex.assert_shape(images, (None, *IMAGE_SHAPE))
    step_key = jax.random.fold_in(state.key, state.step)
    aug_key = jax.random.fold_in(step_key, _AUGMENT)
    dropout_key = jax.random.fold_in(step_key, _DROPOUT)
    inputs, targets = _inputs_targets(cfg, aug_key, images, labels, train=True)

    def loss_fn(params):
        outputs, new_stats = _forward(cfg, model, params, state.batch_stats, inputs,
                                      train=True, dropout_key=dropout_key)
        return jnp.mean(_loss(cfg, outputs, targets, train=True)), (outputs, new_stats)

    (loss, (outputs, new_stats)), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.params)
    direction, opt_state = prog.direction.update(grads, state.opt_state, state.params)
    if lr_scale is None:
        lr_scale = prog.lr_multiplier(state.step)
    scale = -state.learning_rate * lr_scale
    updates = jax.tree_util.tree_map(lambda d: scale * d, direction)
    params = optax.apply_updates(state.params, updates)
    out = {
        "loss": loss,
        "grad_norm": _global_norm(grads),
        "update_norm": _global_norm(updates),
        "param_norm": _global_norm(params),
    }
    if cfg.is_classifier:
        chex.assert_shape(outputs, (images.shape[0], NUM_CLASSES))
        out["accuracy"] = jnp.mean(jnp.argmax(outputs, -1) == labels)
        if cfg.label_smoothing:
            # Report the plain cross-entropy as `loss`, comparable with the evaluation losses
            # (curves, the fit diagnosis); the smoothed objective the gradient came from beside it.
            out["smoothed_loss"] = loss
            out["loss"] = jnp.mean(_loss(cfg, outputs, labels))
    new_state = state.replace(step=state.step + 1, params=params, batch_stats=new_stats,
                              opt_state=opt_state)
    return new_state, out


def epoch_batches(prog: Program, state: TrainState, epoch, n: int) -> jax.Array:
    """Indices [steps_per_epoch, batch] of one epoch: a device-side permutation, last partial batch dropped."""
    key = jax.random.fold_in(jax.random.fold_in(state.key, _SHUFFLE), epoch)
    perm = jax.random.permutation(key, n)
    used = prog.steps_per_epoch * prog.cfg.batch_size
    return perm[:used].reshape(prog.steps_per_epoch, prog.cfg.batch_size)


def epoch_lr_scales(prog: Program, epoch: int) -> jax.Array:
    """The schedule's multipliers for the steps of epoch `epoch`: float32 [steps_per_epoch].

    `fit` computes them outside its compiled epoch and passes them in, so the program does not
    depend on the schedule: a constant run and one that decays only later compile to the same
    program and agree bit for bit until the decay (`starts_with`)."""
    return _scales(prog, epoch * prog.steps_per_epoch)


def _scales(prog: Program, first_step) -> jax.Array:
    steps = first_step + jnp.arange(prog.steps_per_epoch)
    # broadcast: optax's constant schedule returns a scalar whatever the steps' shape
    return jnp.broadcast_to(jnp.asarray(prog.lr_multiplier(steps), jnp.float32), steps.shape)


def train_epoch(prog: Program, state: TrainState, images: jax.Array, labels: jax.Array, epoch,
                batch_sharding=None, lr_scales: jax.Array | None = None):
    """One epoch as one `lax.scan` over device-resident data -> (state, per-step metrics).
    `lr_scales` [steps_per_epoch]: the schedule's multipliers (`epoch_lr_scales`); by default
    computed in the program from `state.step`."""
    idx = epoch_batches(prog, state, epoch, images.shape[0])
    if lr_scales is None:
        lr_scales = _scales(prog, state.step)

    def body(state, batch):
        batch_idx, lr_scale = batch
        batch_images, batch_labels = images[batch_idx], labels[batch_idx]
        if batch_sharding is not None:
            batch_images = jax.lax.with_sharding_constraint(batch_images, batch_sharding)
        return train_step(prog, state, batch_images, batch_labels, lr_scale)

    return jax.lax.scan(body, state, (idx, lr_scales))


def eval_step(prog: Program, state: TrainState, images, labels, mask, key):
    """Sums over a (padded) batch: loss, correct, confusion matrix, predictions."""
    cfg = prog.cfg
    inputs, targets = _inputs_targets(cfg, key, images, labels, train=False)
    outputs, _ = _forward(cfg, prog.model, state.params, state.batch_stats, inputs, train=False)
    per_example = _loss(cfg, outputs, targets)
    maskf = mask.astype(jnp.float32)
    out = {"loss_sum": jnp.sum(per_example * maskf), "count": jnp.sum(maskf)}
    if cfg.is_classifier:
        preds = jnp.argmax(outputs, -1).astype(jnp.int32)
        out["predictions"] = preds
        out["correct"] = jnp.sum((preds == labels) * maskf)
        out["confusion"] = metrics.confusion_matrix(labels, preds, NUM_CLASSES, mask=mask)
    else:
        noisy_mse = jnp.mean((inputs.reshape(targets.shape) - targets) ** 2, axis=-1)
        out["noisy_loss_sum"] = jnp.sum(noisy_mse * maskf)
    return out


def evaluate_arrays(prog: Program, state: TrainState, images, labels, key):
    """Evaluate one member on padded [n_batches, B, ...] data with its mask -> summed metrics."""
    images_b, labels_b, mask_b = images, labels, labels >= 0

    def body(_, batch):
        imgs, labs, msk = batch
        return None, eval_step(prog, state, imgs, jnp.maximum(labs, 0), msk, key)

    _, per_batch = jax.lax.scan(body, None, (images_b, labels_b, mask_b))
    out = {k: jnp.sum(v, axis=0) for k, v in per_batch.items() if k != "predictions"}
    if "predictions" in per_batch:
        out["predictions"] = per_batch["predictions"].reshape(-1)
    return out


def pad_for_eval(images: np.ndarray, labels: np.ndarray, batch_size: int):
    """Pad to whole batches; padded labels are -1 (masked). -> images [nb, B, ...], labels [nb, B]."""
    n = images.shape[0]
    nb = -(-n // batch_size)
    pad = nb * batch_size - n
    images = np.concatenate([images, np.zeros((pad, *images.shape[1:]), images.dtype)])
    labels = np.concatenate([np.asarray(labels, np.int32), -np.ones(pad, np.int32)])
    return images.reshape(nb, batch_size, *images.shape[1:]), labels.reshape(nb, batch_size)
