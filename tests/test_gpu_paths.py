"""The GPU's code paths against the CPU's, on either backend: XLA's convolution (`conv_impl="xla"`,
the accelerator default) against the shifted-slice matmul (the CPU default), and vmapped members
(`member_map="vmap"`) against members mapped one after another (`"map"`).

`tests/test_models.py` compares the two convolutions as functions and the CNN in eval mode, and
`tests/test_train.py` map against vmap with the CPU's convolution; here the CNN's training
gradients (BatchNorm on batch statistics, dropout) and a whole `fit`, evaluation included, run
each way. Small real subsets; the fit is 1 epoch of 3 steps (see test_train.py on why
comparisons of different programs keep a short horizon, and why Adam's steps on near-zero
gradients get a tolerance of their own).
"""

import _numerics as numerics
import jax
import jax.numpy as jnp
import numpy as np
import optax

from fmnist_jax import fit as fit_lib
from fmnist_jax.models import CNN
from fmnist_jax.train import TrainConfig

N_TRAIN, N_VAL, N_TEST = 150, 100, 150  # 3 steps of 50; the test set's last eval batch padded
CFG = TrainConfig(model="cnn", augment="online", batch_size=50, epochs=1, eval_batch_size=100)
CPU_PATH = {"conv_impl": "matmul", "member_map": "map"}
GPU_PATH = {"conv_impl": "xla", "member_map": "vmap"}


def _flat(tree) -> dict[str, np.ndarray]:
    return {
        jax.tree_util.keystr(p): np.asarray(x, np.float64)
        for p, x in jax.tree_util.tree_flatten_with_path(tree)[0]
    }


def test_cnn_training_loss_and_gradients_agree_under_both_convolutions(task_data):
    images = jnp.asarray(task_data.train_images[:N_TRAIN])
    labels = jnp.asarray(task_data.train_labels[:N_TRAIN])
    variables = CNN().init(
        {"params": jax.random.PRNGKey(0), "dropout": jax.random.PRNGKey(1)}, images[:1]
    )

    def loss_and_grads(conv_impl):
        def loss(params):
            logits, _ = CNN(conv_impl=conv_impl).apply(
                {**variables, "params": params},
                images,
                train=True,
                rngs={"dropout": jax.random.PRNGKey(2)},
                mutable=["batch_stats"],
            )
            return optax.softmax_cross_entropy_with_integer_labels(logits, labels).mean()

        return jax.jit(jax.value_and_grad(loss))(variables["params"])

    (loss_m, grads_m), (loss_x, grads_x) = loss_and_grads("matmul"), loss_and_grads("xla")
    # Two convolution algorithms: the same products summed in another order (fc1's 720 terms,
    # then the mean over the images), see tests/_numerics.py.
    rtol = numerics.reorder_rtol(numerics.FC1_TERMS) + numerics.reorder_rtol(N_TRAIN)
    np.testing.assert_allclose(loss_x, loss_m, rtol=rtol)
    # A kernel's gradient sums over the images x 26 x 26 positions; normwise it is dominated by
    # its large, well-conditioned elements, which err by less than that sum's reorder bound.
    grad_rtol = numerics.reorder_rtol(N_TRAIN * 26 * 26)
    grads_m, grads_x = _flat(grads_m), _flat(grads_x)
    assert grads_m.keys() == grads_x.keys()
    for path, want in grads_m.items():
        got, scale = grads_x[path], np.linalg.norm(want)
        if numerics.is_conv_bias(path):
            # Exactly 0 in exact arithmetic (BatchNorm subtracts the bias): rounding noise only.
            assert np.max(np.abs(got)) < 1e-5 * max(np.linalg.norm(g) for g in grads_m.values())
        else:
            assert np.linalg.norm(got - want) <= grad_rtol * scale, path


def _fits(task_data):
    train = (task_data.train_images[:N_TRAIN], task_data.train_labels[:N_TRAIN])
    evals = {
        "val": (task_data.val_images[:N_VAL], task_data.val_labels[:N_VAL]),
        "test": (task_data.test_images[:N_TEST], task_data.test_labels[:N_TEST]),
    }
    return [
        fit_lib.fit(
            CFG.replace(conv_impl=path["conv_impl"]),
            train,
            evals,
            seeds=[0, 1],
            parallel="none",
            member_map=path["member_map"],
        )
        for path in (CPU_PATH, GPU_PATH)
    ]


def _assert_same_run(got: fit_lib.FitResult, k: int, want: fit_lib.FitResult, j: int) -> None:
    """Member k of `got` trained and evaluated like member j of `want`, up to rounding."""
    numerics.assert_same_member(
        numerics.flat_member(got.states, k),
        numerics.member_history(got.history, k),
        numerics.flat_member(want.states, j),
        numerics.member_history(want.history, j),
    )
    for split in ("val", "test"):
        g, w = got.final[split], want.final[split]
        np.testing.assert_allclose(g["loss"][k], w["loss"][j], rtol=numerics.EVAL_LOSS_RTOL)
        # Near-ties may flip under the running means' noise (see tests/_numerics.py): 2% of the
        # images; a member of another seed disagrees on far more after 3 steps.
        assert np.mean(g["predictions"][k] == w["predictions"][j]) >= 0.98, split
        assert abs(g["accuracy"][k] - w["accuracy"][j]) <= 0.02, split


def test_a_whole_fit_on_the_gpu_path_equals_the_cpu_path(task_data):
    cpu, gpu = _fits(task_data)
    assert (cpu.member_map, gpu.member_map) == ("map", "vmap")
    assert gpu.final["test"]["predictions"].shape == (2, N_TEST)
    for k in range(2):
        _assert_same_run(gpu, k, cpu, k)
    try:  # the comparison discriminates: another seed's member is far from this one
        _assert_same_run(gpu, 0, cpu, 1)
    except AssertionError:
        pass
    else:
        raise AssertionError("members of different seeds passed as the same run")
