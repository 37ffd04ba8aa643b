"""The suite's float tolerances, each derived from arithmetic, and the one check that two trained
members match.

Two computations that run the *same* compiled program on the same inputs are compared bit for
bit (XLA's CPU programs are deterministic). Everything else here compares *different* compiled
programs of the same maths (a scanned epoch vs a loop of steps, 1 member vs N, 1 device vs 8, two
convolution algorithms): their float32 sums are taken in another order. Summing n terms in any
order errs by at most (n - 1) u sum|x_i| (u = eps / 2; Higham, *Accuracy and Stability of
Numerical Algorithms*, 2nd ed., section 4.2), so two orders of a sum of same-signed terms differ
by less than n eps relative: `reorder_rtol(n)`. The tolerances below take the largest sum in the
computation compared, so they hold on any x86-64 CPU (AVX2 or AVX-512, 1 or 2 threads), where
only the order of the sums differs.

Training a CNN with Adam adds two effects, which is why trained members are compared by
`assert_same_member` rather than element by element:
- Adam's step is about lr whatever the gradient's size, so a gradient within rounding of zero
  turns a rounding difference into a fraction of a step. The CNN's conv biases feed a train-mode
  BatchNorm, which subtracts them again: their gradient is exactly zero in exact arithmetic, so
  their values (and the running means that absorb them) are pure noise, and are not compared.
- A ReLU input within rounding of zero can flip in one program and not the other; the affected
  units' gradients jump. Comparisons of training therefore keep a short horizon (<= 12 steps),
  where rounding has not yet grown into chaos, and allow 1% of a leaf's elements outside the
  bound; a member trained with another key, batch order or learning rate differs by whole steps
  in most of its elements from the first step on, so the check still fails on every real bug.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np

F32_EPS = float(np.finfo(np.float32).eps)  # 2**-23 = 1.19e-7


def reorder_rtol(n_terms: int) -> float:
    """Relative bound on the difference of two summation orders of `n_terms` same-signed float32
    terms (see the module doc)."""
    return n_terms * F32_EPS


# The largest sums of the CNN at batch 50: a conv kernel's gradient and the first BatchNorm's
# statistics sum over 50 images x 26 x 26 positions; fc1's dot products over 720 inputs.
CONV_TERMS = 50 * 26 * 26
FC1_TERMS = 720

# Epoch-mean training loss and accuracy of a short run: each step's loss rounds like fc1's
# 720-term sums (reorder_rtol(720) = 8.6e-5), and the parameters that later steps see have
# drifted by about as much per step; over the <= 12 steps of a comparison, < 10x that.
TRAIN_METRIC_RTOL = 10 * reorder_rtol(FC1_TERMS)  # 8.6e-4
TRAIN_METRIC_ATOL = F32_EPS  # for a metric at 0
# BatchNorm running variances: means of squares (positive terms) over CONV_TERMS positions.
BN_VAR_RTOL = reorder_rtol(CONV_TERMS)  # 4.0e-3
# Parameters, after a few Adam steps: an element's difference is its steps' differences. A
# well-conditioned gradient carries the relative error of its sum, < reorder_rtol(CONV_TERMS) =
# 4e-3, into its step, so those elements stay within a few thousandths of a step (lr) plus the
# same share of their leaf's scale; a gradient within rounding of zero (cancellation) is turned
# by Adam's normalisation into a step anywhere in +-lr, hence the OUTLIER_SHARE allowance. The
# bound is PARAMS_RTOL x the leaf's largest magnitude + ADAM_STEP_SHARE x lr, with a tenth of a
# step (25x the well-conditioned bound per step) for the bulk.
PARAMS_RTOL = reorder_rtol(CONV_TERMS)
ADAM_STEP_SHARE = 0.1
OUTLIER_SHARE = 0.01  # of a leaf's elements: units hit by a flipped ReLU (see the module doc)
# Gradient, update and parameter norms: a flipped ReLU moves a unit's gradient by ~1e-3 of the
# whole; the norms aggregate every unit, so 1% covers several flips while another member's
# norms differ by tens of percent.
NORMS_RTOL = 1e-2
# Validation loss: evaluated with the running means, which carry the conv biases' noise (up to
# +-lr per step for 12 steps, i.e. 1.2e-2 of a unit-scale activation): 2%.
EVAL_LOSS_RTOL = 2e-2


def is_conv_bias(path: str) -> bool:
    """A CNN conv bias (exactly-zero gradient before a train-mode BatchNorm: noise, see above)."""
    return "conv_" in path and path.endswith("['bias']")


def assert_params_close(got: Mapping, want: Mapping, learning_rate: float) -> None:
    """Two members' parameters ({path: array}) agree: in every leaf but the conv biases, at most
    OUTLIER_SHARE of the elements differ by more than PARAMS_RTOL x the leaf's largest magnitude
    + ADAM_STEP_SHARE x learning_rate."""
    assert got.keys() == want.keys()
    for path, y in want.items():
        if is_conv_bias(path):
            continue
        x, y = np.asarray(got[path], np.float64), np.asarray(y, np.float64)
        assert x.shape == y.shape, path
        tol = PARAMS_RTOL * np.max(np.abs(y)) + ADAM_STEP_SHARE * learning_rate
        share = np.mean(np.abs(x - y) > tol)
        assert share <= OUTLIER_SHARE, f"{path}: {share:.2%} of the elements differ by > {tol:.2g}"


def assert_same_member(
    got: Mapping, got_history: Mapping, want: Mapping, want_history: Mapping, exact: bool = True
) -> None:
    """Member `got` trained like member `want`, up to rounding (see the module doc).

    `got`, `want`: one member's train state as {key path: array}, the paths as
    `jax.tree_util.keystr` writes them for the whole state (".params['fc1']['kernel']", ".key",
    ".learning_rate", ...); `*_history`: that member's per-epoch history {name: [values]}.
    `exact`: also require the same key, step count and learning rate, bit for bit.
    """
    assert got.keys() == want.keys()
    if exact:
        for path in (p for p in want if p.startswith((".key", ".step", ".learning_rate"))):
            np.testing.assert_array_equal(got[path], want[path], err_msg=path)
    params = [p for p in want if p.startswith(".params")]
    learning_rate = float(np.max(want[".learning_rate"]))
    assert_params_close({p: got[p] for p in params}, {p: want[p] for p in params}, learning_rate)
    for path in (p for p in want if p.startswith(".batch_stats") and p.endswith("['var']")):
        np.testing.assert_allclose(got[path], want[path], rtol=BN_VAR_RTOL, err_msg=path)
    for name in ("train_loss", "train_accuracy"):
        np.testing.assert_allclose(
            got_history[name],
            want_history[name],
            rtol=TRAIN_METRIC_RTOL,
            atol=TRAIN_METRIC_ATOL,
            err_msg=name,
        )
    for name in ("train_grad_norm", "train_update_norm", "train_param_norm"):
        np.testing.assert_allclose(
            got_history[name], want_history[name], rtol=NORMS_RTOL, err_msg=name
        )
    np.testing.assert_allclose(
        got_history["val_loss"], want_history["val_loss"], rtol=EVAL_LOSS_RTOL
    )


def flat_member(states, k: int | None) -> dict[str, np.ndarray]:
    """Member k of stacked train states (any pytree) as {key path: array}; k None: an unstacked
    state as it is."""
    import jax

    leaves = jax.tree_util.tree_flatten_with_path(states)[0]
    return {jax.tree_util.keystr(p): np.asarray(x if k is None else x[k]) for p, x in leaves}


def member_history(history: Mapping, k: int) -> dict[str, list]:
    """Member k's curves of a [n_members][n_epochs] history."""
    return {name: rows[k] for name, rows in history.items() if len(rows) > k}
