"""The study's models and steps in PyTorch (CPU), timed beside ours for the ours/PyTorch ratios
of `benchmarks.run`. Optional: `pip install -e '.[bench]'` (the `bench` extra); without PyTorch
the benchmarks skip these rows with one line.

What is the same as fmnist_jax (models.py, augment.py, train.py; docs/design.md#benchmarks):
the layers and their shapes (the CNN's 230,735 parameters, the autoencoder's 1,100,112: checked
against the Flax model when a program is built), average pooling, BatchNorm (momentum 0.1, eps
1e-5) and dropout 0.5, Xavier-uniform kernels and zero biases, the CNN's convolution biases held
at 0 (`train.held_fixed`), batch 100, an epoch as a fresh permutation of the training images,
online augmentation of each batch (rotation by an angle uniform in +-10 degrees about the image
centre, bilinear, zero fill, as `F.affine_grid` + `F.grid_sample`; Gaussian noise of the same
sigma; clipping to [0, 1]), the denoising autoencoder's corruption, Adam (lr 1e-3, betas 0.9 /
0.999, eps 1e-8), and evaluation over the same padded, masked batches with the same sums (loss,
correct, confusion / reconstruction and noisy-input errors).

What differs: PyTorch's own layout (NCHW), random streams and kernels; PyTorch runs eagerly, op
by op (no torch.compile: on the CPU it needs a C++ toolchain at run time). Ours also keeps the
global norms of gradients, updates and parameters per step. `grid_sample`'s zero padding blends
an edge pixel with the zero outside, where ours (scipy's rule) zeroes a sample whose source point
leaves the image: the same work, slightly different edge pixels.
"""

from __future__ import annotations

from itertools import pairwise

import jax
import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from benchmarks.workload import Compiled
from fmnist_jax.models import count_params
from fmnist_jax.train import TrainConfig, init_state, pad_for_eval, program

VERSION = torch.__version__


class CNN(nn.Module):
    """`fmnist_jax.models.CNN` in NCHW: [B, 1, 28, 28] -> logits [B, 5]."""

    def __init__(self, pool: str = "avg"):
        super().__init__()
        widths = (1, 10, 20, 40, 80)
        self.convs = nn.ModuleList(nn.Conv2d(a, b, 3) for a, b in pairwise(widths))
        self.bns = nn.ModuleList(nn.BatchNorm2d(b, eps=1e-5, momentum=0.1) for b in widths[1:])
        self.pool = F.avg_pool2d if pool == "avg" else F.max_pool2d
        self.fc1, self.fc2 = nn.Linear(720, 265), nn.Linear(265, 5)
        self.dropout = nn.Dropout(0.5)

    def forward(self, x):
        """Logits [B, 5] of images [B, 1, 28, 28]."""
        for i, (conv, bn) in enumerate(zip(self.convs, self.bns, strict=True)):
            x = F.relu(bn(conv(x)))
            if i in (0, 3):
                x = self.pool(x, 2)
        x = self.dropout(F.relu(self.fc1(x.flatten(1))))
        return self.fc2(x)


def autoencoder(widths) -> nn.Sequential:
    """`fmnist_jax.models.Autoencoder`: 784 -> widths -> mirrored back to 784, ReLU after every
    layer (the last included)."""
    dims = (784, *widths, *reversed(widths[:-1]), 784)
    layers = []
    for a, b in pairwise(dims):
        layers += [nn.Linear(a, b), nn.ReLU()]
    return nn.Sequential(*layers)


def build(cfg: TrainConfig) -> nn.Module:
    """The model of `cfg` (cnn or autoencoder), initialised as ours (Xavier-uniform kernels,
    zero biases; the CNN's convolution biases not trained), its parameter count checked
    against the Flax model's.

    Raises:
      ValueError: another model, or a parameter count that differs from ours.
    """
    if cfg.model not in ("cnn", "autoencoder"):
        raise ValueError(f"no PyTorch baseline for model {cfg.model!r}")
    model = CNN(cfg.pool) if cfg.model == "cnn" else autoencoder(cfg.widths)
    for m in model.modules():
        if isinstance(m, nn.Conv2d | nn.Linear):
            nn.init.xavier_uniform_(m.weight)  # the fans of flax's xavier_uniform: models.py
            nn.init.zeros_(m.bias)
        if isinstance(m, nn.Conv2d):
            m.bias.requires_grad_(False)  # train.held_fixed
    ours = count_params(init_state(program(cfg, cfg.batch_size), jax.random.PRNGKey(0)).params)
    theirs = sum(p.numel() for p in model.parameters())
    if theirs != ours:
        raise ValueError(f"PyTorch {cfg.model} has {theirs:,} parameters, ours {ours:,}")
    return model


def rotate(images, degrees):
    """Images [B, C, H, W] rotated about their centre by `degrees` [B] (scipy's direction, as
    `fmnist_jax.augment.rotate`), bilinear, zero fill."""
    t = torch.deg2rad(degrees)
    cos, sin, zero = torch.cos(t), torch.sin(t), torch.zeros_like(t)
    # affine_grid maps output (x, y) to input (x, y), normalised so that align_corners=True puts
    # -1 and 1 on the outer pixels' centres: the rotation is about (H - 1) / 2, (W - 1) / 2.
    theta = torch.stack([cos, -sin, zero, sin, cos, zero], 1).view(-1, 2, 3)
    grid = F.affine_grid(theta, list(images.shape), align_corners=True)
    return F.grid_sample(images, grid, "bilinear", "zeros", align_corners=True)


def augment(images, cfg: TrainConfig):
    """Online augmentation of a batch [B, 1, 28, 28]: rotate, add noise, clip (as
    `fmnist_jax.augment.augment_batch` with the default switches)."""
    b = images.shape[0]
    if cfg.aug.rotate:
        degrees = (2 * torch.rand(b) - 1) * cfg.aug.max_degrees
        images = rotate(images, degrees)
    return _corrupt(images, cfg.aug.noise_std) if cfg.aug.noise else images


def _tensor(images: np.ndarray, cfg: TrainConfig):
    x = torch.from_numpy(np.ascontiguousarray(images, np.float32))
    return x.permute(0, 3, 1, 2).contiguous() if cfg.model == "cnn" else x.reshape(len(x), -1)


def _corrupt(x, std: float):
    return (x + std * torch.randn_like(x)).clamp_(0.0, 1.0)


def train_epoch_program(cfg: TrainConfig, images: np.ndarray, labels: np.ndarray) -> Compiled:
    """One training epoch of `cfg`'s model as `run()`: images float32 [N, 28, 28, 1], labels
    int [N]; `(N // batch) * batch` images per call, each epoch a fresh permutation."""
    torch.manual_seed(0)
    model = build(cfg).train()
    opt = torch.optim.Adam(
        [p for p in model.parameters() if p.requires_grad],
        lr=cfg.optimizer.learning_rate,
        foreach=True,  # one multi-tensor op per update step, not one op per tensor
    )
    x_all, y_all = _tensor(images, cfg), torch.from_numpy(np.asarray(labels, np.int64))
    b = cfg.batch_size
    steps = len(x_all) // b

    def run():
        loss_sum = torch.zeros(())
        for idx in torch.randperm(len(x_all))[: steps * b].view(steps, b):
            x = x_all[idx]
            if cfg.model == "cnn":
                out = model(augment(x, cfg) if cfg.augment == "online" else x)
                loss = F.cross_entropy(out, y_all[idx])
            else:
                loss = F.mse_loss(model(_corrupt(x, cfg.denoise_std)), x)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            loss_sum += loss.detach()
        return float(loss_sum)

    return Compiled(run, 0.0, steps * b, "none", 1, b)


def eval_program(cfg: TrainConfig, images: np.ndarray, labels: np.ndarray, batch: int) -> Compiled:
    """Evaluation of `cfg`'s model over `images` [N, 28, 28, 1] in padded, masked batches of
    `batch`, the sums of `fmnist_jax.train.eval_step`, as `run()`."""
    torch.manual_seed(0)
    model = build(cfg).eval()
    padded_images, padded_labels = pad_for_eval(images, labels, batch)  # ours: the same batches
    batches = [
        (_tensor(x, cfg), torch.from_numpy(y.astype(np.int64)))
        for x, y in zip(padded_images, padded_labels, strict=True)
    ]

    @torch.inference_mode()
    def run():
        sums = torch.zeros(3)  # loss, correct (CNN) or noisy-input error (autoencoder), count
        confusion = torch.zeros(25, dtype=torch.int64)
        for x, y in batches:
            mask = (y >= 0).float()
            if cfg.model == "cnn":
                out = model(x)
                preds = out.argmax(1)
                per_example = F.cross_entropy(out, y.clamp(min=0), reduction="none")
                other = (preds == y).float()
                confusion += torch.bincount((y * 5 + preds)[y >= 0], minlength=25)
            else:
                noisy = _corrupt(x, cfg.denoise_std)
                per_example = ((model(noisy) - x) ** 2).mean(1)
                other = ((noisy - x) ** 2).mean(1)
            sums += torch.stack([(per_example * mask).sum(), (other * mask).sum(), mask.sum()])
        return sums.tolist(), confusion.tolist()

    return Compiled(run, 0.0, len(images), "none", 1, batch)


def set_threads(n: int) -> None:
    """PyTorch's intra-op threads (its OpenMP team and MKL)."""
    torch.set_num_threads(n)


def matmul(n: int):
    """A call that multiplies two float32 [n, n] matrices with PyTorch (MKL here)."""
    a, b = torch.rand(n, n), torch.rand(n, n)
    return lambda: torch.mm(a, b)
