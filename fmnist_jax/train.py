"""The functional training engine: configuration, train state, and the pure, compiled steps.

A run is a stack of N members (seeds, or learning rates of the same shapes) trained together by
one compiled program over stacked `TrainState`s (see `fmnist_jax.fit`), one `lax.scan` per
epoch over device-resident data, augmentation inside the step.

Keys: member k's root key is `PRNGKey(seed_k)`; `fold_in(root, 0)` initialises the model and
`fold_in(root, 1)` becomes `state.key`, under which each stream has its own namespace:
`fold_in(fold_in(state.key, SHUFFLE), epoch)` permutes an epoch,
`fold_in(fold_in(state.key, STEP), step)` -> {augment, dropout} drives one step, and
`fold_in(state.key, EXPAND)` draws the member's expanded set. No two streams can give the same
key, the same seed and config give the same numbers, and a resumed run continues identically.

Training drops the last partial batch of each epoch (a fresh permutation every epoch, so every
image is still seen); evaluation pads the last batch and masks it, so every image counts.
"""

from __future__ import annotations

import dataclasses
import functools
from dataclasses import dataclass, field
from typing import Any, NamedTuple

import chex
import flax
import jax
import jax.numpy as jnp
import numpy as np
import optax

from fmnist_jax import augment as augment_lib
from fmnist_jax import metrics
from fmnist_jax.models import (
    BASE_WIDTHS,
    CNN,
    CONV_IMPLS,
    INITS,
    NUM_CLASSES,
    POOLS,
    Autoencoder,
    EncoderClassifier,
)

MODELS = ("cnn", "autoencoder", "encoder_classifier")
OPTIMIZERS = ("adam", "sgd")
SCHEDULES = ("constant", "wsd")
IMAGE_SHAPE = (28, 28, 1)

# fold_in constants naming the key streams: under a member's root key, under `state.key`, and
# under one step's key.
_INIT, _TRAIN = 0, 1
_SHUFFLE, _STEP, _EXPAND = 0, 1, 2
_AUGMENT, _DROPOUT = 0, 1

CPU_CNN_EVAL_IMAGES = 150  # see TrainConfig.eval_batch
# The metadata of fields added after results were published: such a field is recorded (and so
# fingerprinted) only when it differs from its default (`fmnist_jax.results.config_to_dict`),
# so the original variant's fingerprints stay those of its published results.
OMIT_DEFAULT = {"omit_default": True}


@dataclass(frozen=True, kw_only=True)
class OptimizerConfig:
    """An optax optimizer by name. The peak learning rate lives in the train state (so N
    learning rates can train side by side); `schedule` multiplies it over the run:
    `constant`, or `wsd` (warm-up-stable-decay without warm-up: constant, then linearly to 0
    over the last `decay_epochs` epochs).

    Raises:
      ValueError: an unknown name or schedule, a rate <= 0, momentum outside [0, 1), or decay
        epochs without the `wsd` schedule.
    """

    name: str = "adam"
    learning_rate: float = 1e-3
    momentum: float = 0.0  # sgd only (PyTorch convention: buf = m * buf + g)
    schedule: str = "constant"
    decay_epochs: float = 0.0  # wsd only

    def __post_init__(self):
        if self.name not in OPTIMIZERS:
            raise ValueError(
                f"unknown optimizer {self.name!r}; choose one of {', '.join(OPTIMIZERS)}"
            )
        if not self.learning_rate > 0:
            raise ValueError(f"learning rate must be > 0, got {self.learning_rate}")
        if not 0 <= self.momentum < 1:
            raise ValueError(f"momentum must be in [0, 1), got {self.momentum}")
        if self.schedule not in SCHEDULES:
            raise ValueError(
                f"unknown schedule {self.schedule!r}; choose one of {', '.join(SCHEDULES)}"
            )
        if not self.decay_epochs >= 0:
            raise ValueError(f"decay epochs must be >= 0, got {self.decay_epochs}")
        if self.decay_epochs and self.schedule != "wsd":
            raise ValueError(
                f"decay epochs ({self.decay_epochs}) belong to the 'wsd' schedule, "
                f"not {self.schedule!r}: set schedule='wsd' or decay_epochs=0"
            )


@dataclass(frozen=True, kw_only=True)
class TrainConfig:
    """Everything static about a training run (hashable: it keys the compiled programs).

    `epochs` counts the run's epochs from its very start: a run that continues another (see
    `fit.fit`'s `start`) trains from the epoch that one reached up to `epochs`.

    `init` names the weight initialisation (`fmnist_jax.models.initializers`), `num_classes`
    the classifiers' output size (the task's classes).

    Raises:
      ValueError: an unknown model, pooling, initialisation, augmentation or convolution,
        classes outside 2..10, a batch size < 1, epochs < 0, a negative denoising sigma, or
        decay epochs longer than the run.
    """

    model: str = "cnn"
    pool: str = "avg"
    init: str = field(default="xavier_uniform", metadata=OMIT_DEFAULT)
    num_classes: int = field(default=NUM_CLASSES, metadata=OMIT_DEFAULT)
    conv_impl: str = "auto"
    widths: tuple[int, ...] = BASE_WIDTHS
    freeze_encoder: bool = False
    optimizer: OptimizerConfig = field(default_factory=OptimizerConfig)
    batch_size: int = 100
    epochs: int = 5
    augment: str = "online"  # none | expand (3x: see `epoch_size`) | online (CNN)
    aug: augment_lib.AugmentConfig = field(default_factory=augment_lib.AugmentConfig)
    denoise_std: float = (
        0.3  # autoencoder: sigma of the corrupting noise (noisy input, clean target)
    )
    eval_batch_size: int | None = None  # None: `eval_batch(n_members)` picks it per backend

    def __post_init__(self):
        if self.model not in MODELS:
            raise ValueError(f"unknown model {self.model!r}; choose one of {', '.join(MODELS)}")
        if self.pool not in POOLS:
            raise ValueError(f"unknown pool {self.pool!r}; choose one of {', '.join(POOLS)}")
        if self.init not in INITS:
            raise ValueError(f"unknown init {self.init!r}; choose one of {', '.join(INITS)}")
        if not 2 <= self.num_classes <= 10:
            raise ValueError(f"num_classes must be in 2..10, got {self.num_classes}")
        if self.augment not in augment_lib.AUG_MODES:
            raise ValueError(
                f"unknown augmentation {self.augment!r}; choose one of "
                f"{', '.join(augment_lib.AUG_MODES)}"
            )
        if self.batch_size < 1 or (self.eval_batch_size is not None and self.eval_batch_size < 1):
            raise ValueError(
                f"batch sizes must be >= 1, got {self.batch_size}, {self.eval_batch_size}"
            )
        if self.epochs < 0:
            raise ValueError(f"epochs must be >= 0, got {self.epochs}")
        if self.denoise_std < 0:
            raise ValueError(f"denoising noise sigma must be >= 0, got {self.denoise_std}")
        if self.conv_impl not in CONV_IMPLS:  # no backend needed to tell a bad name
            raise ValueError(f"unknown conv_impl {self.conv_impl!r}; choose one of {CONV_IMPLS}")
        if self.epochs and self.optimizer.decay_epochs > self.epochs:
            raise ValueError(
                f"decay epochs ({self.optimizer.decay_epochs}) exceed the run's "
                f"{self.epochs} epochs; shorten them or train longer"
            )

    def eval_batch(self, n_members: int = 1) -> int:
        """Images per member in one evaluation call: `eval_batch_size` when set, else automatic.
        `n_members`: the members whose images one op sees together (all of them when vmapped,
        1 when mapped one after another: `placement.side_by_side`).

        Automatic: 1000, except the CNN on the CPU, where members x batch is kept near
        `CPU_CNN_EVAL_IMAGES`: beyond ~200 images per op its eval forward pass runs much slower on
        small CPU hosts (`benchmarks.run --only cnn_infer` measures both). Classifiers evaluate
        without randomness, so only the summation order changes.
        """
        if self.eval_batch_size is not None:
            return self.eval_batch_size
        if self.model == "cnn" and jax.default_backend() == "cpu":
            return max(1, CPU_CNN_EVAL_IMAGES // max(n_members, 1))
        return 1000

    @property
    def is_classifier(self) -> bool:
        """Whether the model outputs class logits (everything but the autoencoder)."""
        return self.model != "autoencoder"

    def replace(self, **changes) -> TrainConfig:
        """A copy with `changes` applied (validated again)."""
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


def epoch_size(cfg: TrainConfig, n_images: int) -> int:
    """Training images per epoch: for the CNN's `expand` mode the originals and their copies
    (3x with rotated + noisy copies, `augment.expanded_batch`), else the originals."""
    if cfg.model == "cnn" and cfg.augment == "expand":
        return (1 + len(augment_lib.expand_copies(cfg.aug))) * n_images
    return n_images


def shuffle_key(state_key: jax.Array, epoch) -> jax.Array:
    """The key that permutes epoch `epoch` (0-based) of a member with training key `state_key`."""
    return jax.random.fold_in(jax.random.fold_in(state_key, _SHUFFLE), epoch)


def step_keys(state_key: jax.Array, step) -> tuple[jax.Array, jax.Array]:
    """The (augment, dropout) keys of step `step` of a member with training key `state_key`."""
    step_key = jax.random.fold_in(jax.random.fold_in(state_key, _STEP), step)
    return jax.random.fold_in(step_key, _AUGMENT), jax.random.fold_in(step_key, _DROPOUT)


def build_model(cfg: TrainConfig):
    """The Flax module `cfg.model` names, with its settings."""
    if cfg.model == "cnn":
        return CNN(
            pool=cfg.pool,
            conv_impl=cfg.conv_impl,
            weight_init=cfg.init,
            num_classes=cfg.num_classes,
        )
    if cfg.model == "autoencoder":
        return Autoencoder(widths=cfg.widths, weight_init=cfg.init)
    return EncoderClassifier(widths=cfg.widths, weight_init=cfg.init, num_classes=cfg.num_classes)


def lr_scales(cfg: TrainConfig, steps_per_epoch: int, epoch: int) -> jax.Array:
    """The schedule's multipliers of the peak learning rate for the steps of epoch `epoch`
    (0-based): float32 [steps_per_epoch], from optax's schedules.

    Computed on the host and passed into the compiled epoch, so that the program does not depend
    on the schedule or the run's length: a run that continues another compiles to the same
    program and matches, bit for bit, the run trained in one go.
    """
    opt = cfg.optimizer
    if opt.schedule == "constant":
        multiplier = optax.constant_schedule(1.0)
    else:
        total = steps_per_epoch * max(cfg.epochs, 1)
        decay = int(round(opt.decay_epochs * steps_per_epoch))
        multiplier = optax.join_schedules(
            [optax.constant_schedule(1.0), optax.linear_schedule(1.0, 0.0, decay)], [total - decay]
        )
    steps = epoch * steps_per_epoch + jnp.arange(steps_per_epoch)
    # broadcast: optax's constant schedule returns a scalar whatever the steps' shape
    return jnp.broadcast_to(jnp.asarray(multiplier(steps), jnp.float32), steps.shape)


def held_fixed(cfg: TrainConfig, params) -> Any:
    """Which parameters training holds at their initial value: a pytree of bools like `params`.

    The frozen probe's encoder (it stays exactly as restored), and the CNN's convolution biases:
    each feeds a train-mode BatchNorm that subtracts it again, so its exact gradient is 0 and the
    computed one is float32 rounding noise, which Adam (dividing by its own size) would turn into
    +-lr steps, leaking into BatchNorm's running means and making results depend on summation
    order (vmap width, device count). They stay at 0.
    """

    def fixed(path, _):
        names = [getattr(k, "key", str(k)) for k in path]
        return bool(
            (cfg.freeze_encoder and names[0] == "encoder")
            or (cfg.model == "cnn" and names[0].startswith("conv_") and names[-1] == "bias")
        )

    return jax.tree_util.tree_map_with_path(fixed, params)


def n_trained_params(cfg: TrainConfig, params) -> int:
    """The number of scalars training updates (all but those `held_fixed`) in one member's
    params."""
    return int(
        sum(
            x.size
            for x, fixed in zip(
                jax.tree_util.tree_leaves(params),
                jax.tree_util.tree_leaves(held_fixed(cfg, params)),
                strict=True,
            )
            if not fixed
        )
    )


def make_direction(cfg: TrainConfig) -> optax.GradientTransformation:
    """The optimizer without its learning rate (the engine scales by -lr * schedule(step)); the
    parameters `held_fixed` get zero updates."""
    opt = cfg.optimizer
    if opt.name == "adam":
        tx = optax.scale_by_adam()
    else:
        tx = optax.trace(decay=opt.momentum) if opt.momentum else optax.identity()
    if cfg.freeze_encoder or cfg.model == "cnn":
        labels = lambda params: jax.tree_util.tree_map(  # noqa: E731
            lambda fixed: "frozen" if fixed else "train", held_fixed(cfg, params)
        )
        tx = optax.multi_transform({"train": tx, "frozen": optax.set_to_zero()}, labels)
    return tx


# ----------------------------------------------------------------------------------------------
# Losses and steps (single member; vmapped or mapped over members by `fmnist_jax.fit`).


def _forward(model, params, batch_stats, inputs, *, train: bool, dropout_key=None):
    variables = {"params": params}
    if batch_stats:
        variables["batch_stats"] = batch_stats
    if train:
        out, updates = model.apply(
            variables, inputs, train=True, rngs={"dropout": dropout_key}, mutable=["batch_stats"]
        )
        return out, updates.get("batch_stats", {})
    return model.apply(variables, inputs, train=False), batch_stats


def _loss(cfg: TrainConfig, outputs, targets):
    """Per-example loss: cross-entropy for classifiers, MSE over pixels for the autoencoder."""
    if cfg.is_classifier:
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
    """What one configuration's compiled functions close over: built once per (config,
    train-set size), cached."""

    cfg: TrainConfig
    model: Any
    direction: optax.GradientTransformation
    steps_per_epoch: int


def program(cfg: TrainConfig, n_train: int) -> Program:
    """The `Program` of `cfg` for `n_train` training images per epoch (see `epoch_size`).
    Configurations that differ only in their length or schedule share one (those enter as
    `lr_scales`).

    Raises:
      ValueError: the batch is larger than the training set (no step per epoch).
    """
    steps_per_epoch = n_train // cfg.batch_size
    if steps_per_epoch == 0:
        raise ValueError(
            f"batch size {cfg.batch_size} is larger than the training split ({n_train} images); "
            "use a smaller --batch-size"
        )
    constant = dataclasses.replace(cfg.optimizer, schedule="constant", decay_epochs=0.0)
    return _program(cfg.replace(epochs=0, optimizer=constant), steps_per_epoch)


@functools.lru_cache(maxsize=64)
def _program(cfg: TrainConfig, steps_per_epoch: int) -> Program:
    return Program(cfg, build_model(cfg), make_direction(cfg), steps_per_epoch)


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


def train_step(
    prog: Program,
    state: TrainState,
    images: jax.Array,
    labels: jax.Array,
    lr_scale: jax.Array | float = 1.0,
):
    """One optimisation step: (state, images float32 [B, 28, 28, 1], labels int32 [B]) ->
    (state, metrics: loss, accuracy (classifiers) and the global norms of the gradients,
    updates and parameters). `lr_scale`: the schedule's multiplier of the peak rate."""
    cfg, model = prog.cfg, prog.model
    chex.assert_shape(images, (None, *IMAGE_SHAPE))
    aug_key, dropout_key = step_keys(state.key, state.step)
    inputs, targets = _inputs_targets(cfg, aug_key, images, labels, train=True)

    def loss_fn(params):
        outputs, new_stats = _forward(
            model, params, state.batch_stats, inputs, train=True, dropout_key=dropout_key
        )
        return jnp.mean(_loss(cfg, outputs, targets)), (outputs, new_stats)

    (loss, (outputs, new_stats)), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.params)
    direction, opt_state = prog.direction.update(grads, state.opt_state, state.params)
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
        chex.assert_shape(outputs, (images.shape[0], cfg.num_classes))
        out["accuracy"] = jnp.mean(jnp.argmax(outputs, -1) == labels)
    new_state = state.replace(
        step=state.step + 1, params=params, batch_stats=new_stats, opt_state=opt_state
    )
    return new_state, out


def epoch_batches(prog: Program, state: TrainState, epoch, n: int) -> jax.Array:
    """Indices [steps_per_epoch, batch] into the epoch's `n` images: a device-side permutation,
    last partial batch dropped."""
    perm = jax.random.permutation(shuffle_key(state.key, epoch), n)
    used = prog.steps_per_epoch * prog.cfg.batch_size
    return perm[:used].reshape(prog.steps_per_epoch, prog.cfg.batch_size)


def train_epoch(
    prog: Program,
    state: TrainState,
    images: jax.Array,
    labels: jax.Array,
    epoch,
    lr_scales: jax.Array,
    batch_sharding=None,
):
    """One epoch as one `lax.scan` over device-resident data (the original images [N, 28, 28, 1]
    and labels [N]) -> (state, per-step metrics [steps_per_epoch]). `epoch` (0-based) keys the
    shuffle; `lr_scales` float32 [steps_per_epoch] are the schedule's multipliers."""
    n = images.shape[0]
    size = epoch_size(prog.cfg, n)
    expand = size != n  # the expanded set: batches are drawn from it on the fly
    idx = epoch_batches(prog, state, epoch, size)

    def body(state, batch):
        batch_idx, lr_scale = batch
        batch_labels = labels[batch_idx % n]
        if expand:  # materialised once per batch, as online augmentation is (see _inputs_targets)
            batch_images = jax.lax.optimization_barrier(
                augment_lib.expanded_batch(
                    jax.random.fold_in(state.key, _EXPAND), images, batch_idx, prog.cfg.aug
                )
            )
        else:
            batch_images = images[batch_idx]
        if batch_sharding is not None:
            batch_images = jax.lax.with_sharding_constraint(batch_images, batch_sharding)
        return train_step(prog, state, batch_images, batch_labels, lr_scale)

    return jax.lax.scan(body, state, (idx, lr_scales))


def eval_step(prog: Program, state: TrainState, images, labels, mask, key):
    """Sums over a (padded) batch of B images: loss, count, and for classifiers the correct
    count, the confusion matrix [k, k] (k = cfg.num_classes) and predictions int32 [B]; for
    the autoencoder the MSE of the noisy input itself (`key` draws that noise)."""
    cfg = prog.cfg
    inputs, targets = _inputs_targets(cfg, key, images, labels, train=False)
    outputs, _ = _forward(prog.model, state.params, state.batch_stats, inputs, train=False)
    per_example = _loss(cfg, outputs, targets)
    maskf = mask.astype(jnp.float32)
    out = {"loss_sum": jnp.sum(per_example * maskf), "count": jnp.sum(maskf)}
    if cfg.is_classifier:
        preds = jnp.argmax(outputs, -1).astype(jnp.int32)
        out["predictions"] = preds
        out["correct"] = jnp.sum((preds == labels) * maskf)
        out["confusion"] = metrics.confusion_matrix(labels, preds, cfg.num_classes, mask=mask)
    else:
        noisy_mse = jnp.mean((inputs.reshape(targets.shape) - targets) ** 2, axis=-1)
        out["noisy_loss_sum"] = jnp.sum(noisy_mse * maskf)
    return out


def pad_for_eval(images: np.ndarray, labels: np.ndarray, batch_size: int):
    """Pad to whole batches; padded labels are -1 (masked).

    -> images [nb, B, ...], labels [nb, B]."""
    n = images.shape[0]
    nb = -(-n // batch_size)
    pad = nb * batch_size - n
    images = np.concatenate([images, np.zeros((pad, *images.shape[1:]), images.dtype)])
    labels = np.concatenate([np.asarray(labels, np.int32), -np.ones(pad, np.int32)])
    return images.reshape(nb, batch_size, *images.shape[1:]), labels.reshape(nb, batch_size)
