"""The training engine (fmnist_jax.train, fmnist_jax.fit) on small subsets of the real task data.

Every fit here is small (a few hundred to 2,000 images, 1-2 epochs); runs that several tests
inspect are module fixtures, so each is trained once.
"""

import functools

import _numerics as numerics
import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from sklearn.metrics import accuracy_score
from sklearn.metrics import confusion_matrix as sk_confusion_matrix

from fmnist_jax import augment, placement
from fmnist_jax import fit as fit_lib
from fmnist_jax import train as train_lib
from fmnist_jax.models import CNN, with_pretrained_encoder
from fmnist_jax.train import OptimizerConfig, TrainConfig

N_TRAIN = 2000
N_VAL = 500
N_TEST = 1050  # not a multiple of the eval batch: the last batch is padded and masked
BATCH = 50

# The CNN run several tests share: online augmentation, adam 1e-3, 2 epochs of 40 steps.
CNN_CFG = TrainConfig(
    model="cnn", augment="online", batch_size=BATCH, epochs=2, eval_batch_size=1000
)

# Comparisons between *different compiled programs* (3 members vs 1, stacked learning rates)
# run 1 epoch of 3 steps. Training this CNN is chaotic at the level of rounding: programs that
# differ only in float summation order agree to ~1e-7 for a few steps, then a ReLU input within
# ~1e-7 of zero flips in one and not the other, the gradients jump by ~1e-3, and after ~50 steps
# the two runs differ by 1e-2 relative. Bugs (a wrong key, learning rate or member) show from
# the first step, so a short horizon keeps the comparison both tight and meaningful.
N_SHORT = 150
SHORT_CFG = TrainConfig(
    model="cnn", augment="online", batch_size=BATCH, epochs=1, eval_batch_size=1000
)


def assert_same_member(got: fit_lib.FitResult, k: int, want: fit_lib.FitResult, j: int):
    """Member k of `got` and member j of `want` trained identically, up to rounding (the key,
    step count and learning rate exactly; see tests/_numerics.py)."""
    assert got.diverged[k] == want.diverged[j]
    assert_same_trajectory(got, k, want, j, exact=True)


def assert_same_trajectory(got, k, want, j, exact=False):
    """Params (conv biases aside), BatchNorm variances and training metrics agree."""
    numerics.assert_same_member(
        numerics.flat_member(got.states, k),
        numerics.member_history(got.history, k),
        numerics.flat_member(want.states, j),
        numerics.member_history(want.history, j),
        exact=exact,
    )


def member(tree, k):
    return jax.tree_util.tree_map(lambda x: x[k], tree)


@pytest.fixture(scope="module")
def small(task_data):
    """(train, eval_sets) of real images: 2,000 train, 500 val, 1,050 test."""
    train = (task_data.train_images[:N_TRAIN], task_data.train_labels[:N_TRAIN])
    evals = {
        "val": (task_data.val_images[:N_VAL], task_data.val_labels[:N_VAL]),
        "test": (task_data.test_images[:N_TEST], task_data.test_labels[:N_TEST]),
    }
    return train, evals


@pytest.fixture(scope="module")
def tiny(task_data):
    """(train, eval_sets): 150 train images (3 steps of 50), 200 val."""
    train = (task_data.train_images[:N_SHORT], task_data.train_labels[:N_SHORT])
    return train, {"val": (task_data.val_images[:200], task_data.val_labels[:200])}


@pytest.fixture(scope="module")
def three_seeds_twice(small):
    """Seeds 0, 1, 2 trained together (one vmapped program), twice from scratch."""
    return [fit_lib.fit(CNN_CFG, *small, seeds=[0, 1, 2], parallel="none") for _ in range(2)]


@pytest.fixture(scope="module")
def three_seeds(three_seeds_twice):
    return three_seeds_twice[0]


@pytest.fixture(scope="module")
def short_three(tiny):
    return fit_lib.fit(SHORT_CFG, *tiny, seeds=[0, 1, 2], parallel="none", member_map="vmap")


@pytest.fixture(scope="module")
def short_seed_one(tiny):
    return fit_lib.fit(SHORT_CFG, *tiny, seeds=[1], parallel="none")


# ---------------------------------------------------------------------------- single steps


def test_cnn_overfits_a_fixed_batch(task_data):
    """64 real images, no augmentation, 100 adam steps -> every one classified correctly.

    Accuracy is measured in eval mode (`eval_step`: running BatchNorm averages, no dropout).
    """
    n = 64
    images = jnp.asarray(task_data.train_images[:n])
    labels = jnp.asarray(task_data.train_labels[:n])
    assert len(np.unique(np.asarray(labels))) == 5
    cfg = TrainConfig(augment="none", batch_size=n, epochs=1)
    prog = train_lib.program(cfg, n)
    state = train_lib.init_state(prog, jax.random.PRNGKey(0))
    step = jax.jit(functools.partial(train_lib.train_step, prog))
    evaluate = jax.jit(functools.partial(train_lib.eval_step, prog))
    mask, key = jnp.ones(n, bool), jax.random.PRNGKey(0)

    before = evaluate(state, images, labels, mask, key)
    losses = []
    for _ in range(100):
        state, m = step(state, images, labels)
        losses.append(float(m["loss"]))
    after = evaluate(state, images, labels, mask, key)

    assert int(state.step) == 100
    assert float(before["correct"]) < n
    assert float(after["correct"]) == n
    assert float(after["loss_sum"]) / n < 0.05
    assert np.mean(losses[-10:]) < 0.1 * np.mean(losses[:10])


@pytest.mark.parametrize("augment", ["none", "online"])
def test_scan_epoch_equals_a_python_loop_of_train_steps(task_data, augment):
    """`train_epoch` (one lax.scan) == epoch_batches + the same jitted train_step per batch."""
    n, batch = 300, 50
    images = jnp.asarray(task_data.train_images[:n])
    labels = jnp.asarray(task_data.train_labels[:n])
    cfg = TrainConfig(augment=augment, batch_size=batch, epochs=2)
    prog = train_lib.program(cfg, n)
    state0 = train_lib.init_state(prog, jax.random.PRNGKey(7))

    epoch_fn = jax.jit(functools.partial(train_lib.train_epoch, prog))
    scanned, scan_losses = state0, []
    for epoch in range(2):
        scanned, per_step = epoch_fn(scanned, images, labels, epoch, jnp.ones(n // batch))
        chex.assert_shape(per_step["loss"], (n // batch,))
        scan_losses.append(per_step["loss"])

    step = jax.jit(functools.partial(train_lib.train_step, prog))
    looped, loop_losses = state0, []
    for epoch in range(2):
        idx = np.asarray(train_lib.epoch_batches(prog, looped, epoch, n))
        assert idx.shape == (n // batch, batch)
        assert len(np.unique(idx)) == n  # a permutation: every image once
        for row in idx:
            looped, m = step(looped, images[row], labels[row], jnp.float32(1.0))
            loop_losses.append(m["loss"])

    assert int(scanned.step) == int(looped.step) == 2 * n // batch
    # Two compiled programs (one scan vs 12 jitted steps): equal up to the order of their sums.
    np.testing.assert_allclose(
        np.concatenate(scan_losses), np.stack(loop_losses), rtol=numerics.TRAIN_METRIC_RTOL
    )
    scanned_state, looped_state = (numerics.flat_member(s, None) for s in (scanned, looped))
    params = [p for p in looped_state if p.startswith(".params")]
    numerics.assert_params_close(
        {p: scanned_state[p] for p in params},
        {p: looped_state[p] for p in params},
        cfg.optimizer.learning_rate,
    )
    for path in (p for p in looped_state if p.endswith("['var']")):
        np.testing.assert_allclose(
            scanned_state[path], looped_state[path], rtol=numerics.BN_VAR_RTOL, err_msg=path
        )
    # And training moved the params at all.
    assert not np.allclose(scanned.params["fc1"]["kernel"], state0.params["fc1"]["kernel"])


def test_epochs_are_different_permutations(task_data):
    prog = train_lib.program(TrainConfig(batch_size=50), 500)
    state = train_lib.init_state(prog, jax.random.PRNGKey(0))
    first, second = (np.asarray(train_lib.epoch_batches(prog, state, e, 500)) for e in (0, 1))
    assert not np.array_equal(first, second)
    np.testing.assert_array_equal(np.sort(first.ravel()), np.arange(500))
    np.testing.assert_array_equal(np.sort(second.ravel()), np.arange(500))


def test_train_step_asserts_image_shape(task_data):
    prog = train_lib.program(TrainConfig(batch_size=10), 100)
    state = train_lib.init_state(prog, jax.random.PRNGKey(0))
    images = jnp.asarray(task_data.train_images[:10])
    labels = jnp.asarray(task_data.train_labels[:10])
    bad_batches = [images[:, :27, :27, :], images[..., 0], jnp.concatenate([images] * 3, axis=-1)]
    for bad in bad_batches:
        with pytest.raises(AssertionError):
            train_lib.train_step(prog, state, bad, labels)
        with pytest.raises(AssertionError):
            jax.jit(functools.partial(train_lib.train_step, prog))(state, bad, labels)


# ------------------------------------------------------------------------------------ fit


def test_train_loss_decreases(three_seeds):
    losses = np.asarray(three_seeds.history["train_loss"])
    assert losses.shape == (3, 2)
    assert np.all(np.isfinite(losses))
    assert np.all(losses[:, 1] < losses[:, 0]), losses
    assert np.all(np.asarray(three_seeds.history["val_accuracy"])[:, -1] > 0.8)
    assert three_seeds.diverged == [False, False, False]
    np.testing.assert_array_equal(np.asarray(three_seeds.states.step), 2 * N_TRAIN // BATCH)


def test_vmapped_member_equals_a_separate_run(short_three, short_seed_one):
    assert short_three.seeds == [0, 1, 2] and short_seed_one.seeds == [1]
    assert_same_member(short_three, 1, short_seed_one, 0)
    # The check discriminates: the other members (other seeds) are far from seed 1's run.
    for other in (0, 2):
        with pytest.raises(AssertionError):
            assert_same_trajectory(short_three, other, short_seed_one, 0)


def test_members_mapped_one_after_another_equal_vmapped_ones(tiny, short_three, short_seed_one):
    """`member_map="map"` (lax.map: the CPU default) trains the same members as vmap, and each
    as its own run would, up to summation order."""
    mapped = fit_lib.fit(SHORT_CFG, *tiny, seeds=[0, 1, 2], parallel="none", member_map="map")
    assert (mapped.member_map, short_three.member_map) == ("map", "vmap")
    for k in range(3):
        assert_same_member(mapped, k, short_three, k)
    assert_same_member(mapped, 1, short_seed_one, 0)
    with pytest.raises(AssertionError):  # the check discriminates between members
        assert_same_trajectory(mapped, 0, short_three, 2)
    np.testing.assert_array_equal(mapped.final["val"]["predictions"].shape, (3, 200))


def test_member_map_is_resolved_per_backend_and_mode():
    cpu = jax.default_backend() == "cpu"
    assert placement.resolve_member_map("auto", "none") == ("map" if cpu else "vmap")
    for mode in ("seeds", "data"):  # sharded runs split the member or batch axis: always vmap
        assert placement.resolve_member_map("auto", mode) == "vmap"
    assert placement.resolve_member_map("map", "none") == "map"
    assert placement.side_by_side(3, "vmap") == 3 and placement.side_by_side(3, "map") == 1
    with pytest.raises(ValueError, match="member_map 'pmap'; choose one of"):
        placement.resolve_member_map("pmap", "none")
    with pytest.raises(ValueError, match="parallel mode 'seeds'.*use member_map 'vmap'"):
        placement.resolve_member_map("map", "seeds")


def test_same_seed_gives_identical_results(three_seeds_twice):
    a, b = three_seeds_twice
    assert a.history == b.history  # exact: every metric, every member, every epoch
    chex.assert_trees_all_equal(a.states, b.states)
    for name in a.final:
        for key in a.final[name]:
            np.testing.assert_array_equal(a.final[name][key], b.final[name][key])


def test_learning_rates_at_once_equal_separate_runs(tiny, short_seed_one):
    lrs = [SHORT_CFG.optimizer.learning_rate, 3e-3]
    together = fit_lib.fit(SHORT_CFG, *tiny, seeds=[1, 1], learning_rates=lrs, parallel="none")
    np.testing.assert_array_equal(np.asarray(together.states.learning_rate), np.float32(lrs))
    alone = fit_lib.fit(
        SHORT_CFG.replace(optimizer=OptimizerConfig(learning_rate=lrs[1])),
        *tiny,
        seeds=[1],
        parallel="none",
    )
    assert_same_member(together, 0, short_seed_one, 0)  # seed 1 at the config's rate
    assert_same_member(together, 1, alone, 0)
    with pytest.raises(AssertionError):  # the tolerance tells 1e-3 from 3e-3 after 3 steps
        assert_same_trajectory(together, 0, alone, 0)


def test_a_diverging_member_is_flagged_and_the_other_finishes(small):
    cfg = TrainConfig(
        augment="none",
        batch_size=BATCH,
        epochs=2,
        optimizer=OptimizerConfig(name="sgd", learning_rate=0.05),
    )
    # sgd at 1e20 overflows to inf/NaN within the first epoch. (Rates like 1e6-1e10 explode the
    # loss to ~1e24-1e34 but, BatchNorm keeping activations finite, not to NaN/inf.)
    res = fit_lib.fit(cfg, *small, seeds=[0, 0], learning_rates=[1e20, 0.05], parallel="none")
    assert res.diverged == [True, False]
    assert res.epochs_run == 2  # one healthy member: training goes on
    assert not np.isfinite(res.history["train_loss"][0][0])
    assert np.all(np.isfinite(res.history["train_loss"][1]))
    assert res.history["val_accuracy"][1][-1] > 0.8
    assert res.final["test"]["accuracy"][1] > 0.8
    assert np.all(np.isfinite(jax.tree_util.tree_leaves(member(res.states.params, 1))[0]))


def test_a_test_set_is_never_a_reason_to_flag_divergence(task_data):
    """Divergence is flagged from the training and validation losses only: test data takes no
    part in any decision. Here the test labels lie outside the 5 classes, so the test loss is
    NaN (an out-of-range class has no log-probability)."""
    cfg = TrainConfig(augment="none", batch_size=BATCH, epochs=1)
    bad_labels = np.full(50, 7, np.int32)
    res = fit_lib.fit(
        cfg,
        (task_data.train_images[:200], task_data.train_labels[:200]),
        {
            "val": (task_data.val_images[:100], task_data.val_labels[:100]),
            "test": (task_data.test_images[:50], bad_labels),
        },
        seeds=[0],
        parallel="none",
    )
    assert np.isnan(res.history["test_loss"][0][0]) and res.diverged == [False]


def test_all_members_diverged_stops_early(task_data):
    cfg = TrainConfig(
        augment="none",
        batch_size=BATCH,
        epochs=4,
        optimizer=OptimizerConfig(name="sgd", learning_rate=1e20),
    )
    train = (task_data.train_images[:200], task_data.train_labels[:200])
    res = fit_lib.fit(
        cfg,
        train,
        {"val": (task_data.val_images[:100], task_data.val_labels[:100])},
        seeds=[0],
        parallel="none",
    )
    assert res.diverged == [True]
    assert res.epochs_run == 1
    assert len(res.history["train_loss"][0]) == 1


def test_every_eval_image_counts(three_seeds, small):
    """1,050 test images with eval batch 1,000: padded, masked, all 1,050 counted."""
    _, evals = small
    test_images, test_labels = evals["test"]
    final = three_seeds.final["test"]
    assert final["predictions"].shape == (3, N_TEST)
    for k in range(3):
        preds = final["predictions"][k]
        assert final["confusion"][k].sum() == N_TEST
        np.testing.assert_array_equal(
            final["confusion"][k], sk_confusion_matrix(test_labels, preds, labels=np.arange(5))
        )
        # Ratios of the same exact integer counts: 1e-6 is below one image (1 / 1,050).
        np.testing.assert_allclose(
            final["accuracy"][k], accuracy_score(test_labels, preds), rtol=1e-6
        )
        assert three_seeds.history["test_accuracy"][k][-1] == pytest.approx(
            float(final["accuracy"][k]), rel=1e-6
        )

        # The predictions are this member's, in the order of the images: recompute them directly.
        variables = {
            "params": member(three_seeds.states.params, k),
            "batch_stats": member(three_seeds.states.batch_stats, k),
        }
        logits = np.asarray(
            jax.jit(lambda v, x: CNN().apply(v, x, train=False))(variables, test_images)
        )
        # Another program (all images at once): logits differ by the order of fc1's sums, so a
        # prediction is only compared where its margin exceeds twice that bound.
        top2 = np.sort(logits, axis=-1)[:, -2:]
        bound = numerics.reorder_rtol(numerics.FC1_TERMS) * np.abs(logits).max(axis=-1)
        clear = top2[:, 1] - top2[:, 0] > 2 * bound
        assert clear.mean() > 0.99
        np.testing.assert_array_equal(preds[clear], logits.argmax(-1)[clear])

        # The loss is the mean over exactly the 1,050 images.
        ce = -jax.nn.log_softmax(logits)[np.arange(N_TEST), test_labels]
        # The same logits up to fc1's summation order (see above), then a mean of 1,050 terms.
        rel = numerics.reorder_rtol(numerics.FC1_TERMS) + numerics.reorder_rtol(N_TEST)
        assert three_seeds.history["test_loss"][k][-1] == pytest.approx(float(np.mean(ce)), rel=rel)


def test_automatic_eval_batch_changes_no_result(three_seeds, small):
    """The automatic eval batch (on the CPU, members mapped one after another: 150 images per
    member for the CNN) gives the numbers a batch of 1,000 gives: only the summation order of
    the losses differs."""
    auto = CNN_CFG.replace(eval_batch_size=None, epochs=0)
    assert jax.default_backend() != "cpu" or auto.eval_batch(3) == 50
    assert auto.eval_batch(3) != CNN_CFG.eval_batch(3)  # the runs below really differ in batching
    res = fit_lib.fit(auto, *small, seeds=[0, 1, 2], parallel="none", init=three_seeds.states)
    assert res.epochs_run == 0
    for name in ("val", "test"):
        got, want = res.final[name], three_seeds.final[name]
        assert (got["predictions"] == want["predictions"]).mean() > 0.999  # near-ties may flip
        # At most one flipped prediction (the line above), and a margin of one more.
        np.testing.assert_allclose(got["accuracy"], want["accuracy"], atol=2 / N_TEST)
        # Another batch size: the logits' sums (fc1's) and the loss's sum over the images are
        # taken in another order.
        rtol = numerics.reorder_rtol(numerics.FC1_TERMS) + numerics.reorder_rtol(N_TEST)
        np.testing.assert_allclose(got["loss"], want["loss"], rtol=rtol)


def test_eval_batch_is_automatic_unless_set():
    assert TrainConfig(model="autoencoder").eval_batch(3) == 1000
    assert TrainConfig(model="cnn", eval_batch_size=64).eval_batch(3) == 64
    cpu = jax.default_backend() == "cpu"
    assert TrainConfig(model="cnn").eval_batch(1) == (
        train_lib.CPU_CNN_EVAL_IMAGES if cpu else 1000
    )
    assert TrainConfig(model="cnn").eval_batch(1000) == (1 if cpu else 1000)
    with pytest.raises(ValueError, match="batch size"):
        TrainConfig(eval_batch_size=0)


def test_expand_mode_trains_each_member_on_its_own_expanded_set(task_data):
    """An epoch of `expand` is 3x the originals' steps, and each member draws its own expanded
    set from its own key stream: seeds 0 and 1 see different rotated and noisy copies."""
    n = 300
    images, labels = task_data.train_images[:n], task_data.train_labels[:n]
    cfg = TrainConfig(augment="expand", batch_size=BATCH, epochs=1)
    assert train_lib.epoch_size(cfg, n) == 3 * n
    for other in (
        cfg.replace(augment="none"),
        cfg.replace(augment="online"),
        cfg.replace(model="autoencoder"),
    ):
        assert train_lib.epoch_size(other, n) == n
    res = fit_lib.fit(
        cfg,
        (images, labels),
        {"val": (task_data.val_images[:100], task_data.val_labels[:100])},
        seeds=[0, 1],
        parallel="none",
    )
    np.testing.assert_array_equal(
        np.asarray(res.states.step), 3 * (n // BATCH)
    )  # one epoch = 3x the steps
    assert np.all(np.isfinite(res.history["train_loss"]))
    states = fit_lib.init_states(train_lib.program(cfg, 3 * n), [0, 1])
    copies = [
        np.asarray(
            augment.expanded_batch(
                jax.random.fold_in(states.key[k], train_lib._EXPAND),
                jnp.asarray(images),
                jnp.arange(3 * n),
                cfg.aug,
            )
        )
        for k in (0, 1)
    ]
    np.testing.assert_array_equal(copies[0][:n], copies[1][:n])  # the originals
    assert np.abs(copies[0][n:] - copies[1][n:]).mean() > 0.01  # each seed its own copies


def test_no_two_key_streams_meet():
    """Shuffle keys (one per epoch), augmentation and dropout keys (one each per step) and the
    expanded set's key live in separate fold_in namespaces: over 20 epochs and 5,000 steps no
    key occurs twice (in the former scheme, step 95's augmentation key was epoch 0's shuffle
    key)."""
    state_key = jax.random.fold_in(jax.random.PRNGKey(0), 1)
    shuffles = jax.vmap(lambda e: train_lib.shuffle_key(state_key, e))(jnp.arange(20))
    augments, dropouts = jax.vmap(lambda s: train_lib.step_keys(state_key, s))(jnp.arange(5000))
    expand = jax.random.fold_in(state_key, train_lib._EXPAND)[None]
    keys = np.concatenate([np.asarray(k) for k in (shuffles, augments, dropouts, expand)])
    assert len({tuple(k) for k in keys.tolist()}) == len(keys) == 20 + 2 * 5000 + 1


def test_conv_biases_before_batchnorm_are_not_moved_by_rounding_noise(short_seed_one):
    """A conv bias followed by train-mode BatchNorm has gradient exactly 0 (BN subtracts the
    batch mean, bias included), so training should leave it where it started (0). In float32
    the computed gradient is ~1e-9 of rounding noise; Adam divides it by its own RMS and moves
    the bias by up to lr per step, in a direction set by summation order. The BatchNorm running
    mean absorbs the moving bias with a lag, so evaluation metrics then depend on rounding
    (val loss differs by ~1e-2 between a member trained in a 3-member and a 1-member program)."""
    params = member(short_seed_one.states.params, 0)
    for layer in ("conv_1", "conv_2", "conv_3", "conv_4"):
        # Held at exactly 0 by the engine; one Adam step would be lr = 1e-3.
        assert float(np.max(np.abs(params[layer]["bias"]))) < 1e-6, layer


# -------------------------------------------------------------------- autoencoder & encoder


@pytest.fixture(scope="module")
def autoencoder_run(small):
    train, evals = small
    cfg = TrainConfig(model="autoencoder", batch_size=BATCH, epochs=2, denoise_std=0.3)
    return fit_lib.fit(cfg, train, {"val": evals["val"]}, seeds=[0], parallel="none")


def test_autoencoder_denoises(autoencoder_run):
    h = autoencoder_run.history
    assert "val_accuracy" not in h and "accuracy" not in autoencoder_run.final["val"]
    recon = h["val_loss"][0]
    noisy = h["val_noisy_loss"][0]
    assert recon[1] < recon[0]
    assert recon[-1] < noisy[-1], (recon, noisy)  # reconstruction beats the noisy input itself
    assert h["train_loss"][0][1] < h["train_loss"][0][0]
    # The noisy input's MSE is the corruption's, fixed across epochs (fixed eval noise).
    assert noisy[0] == noisy[1]
    assert 0 < noisy[0] < 0.3**2


def test_frozen_encoder_stays_exactly_as_loaded(small, autoencoder_run):
    train, evals = small
    pretrained = autoencoder_run.states.params["encoder"]  # stacked [1, ...]
    cfg = TrainConfig(
        model="encoder_classifier",
        freeze_encoder=True,
        batch_size=BATCH,
        epochs=1,
        optimizer=OptimizerConfig(learning_rate=1e-2),
    )

    def start_of(cfg):
        fresh = fit_lib.init_states(train_lib.program(cfg, N_TRAIN), [5])
        return fresh.replace(params=with_pretrained_encoder(fresh.params, pretrained))

    start = start_of(cfg)
    res = fit_lib.fit(cfg, train, {"val": evals["val"]}, seeds=[5], init=start, parallel="none")
    chex.assert_trees_all_equal(res.states.params["encoder"], pretrained)
    head_before, head_after = start.params["head"], res.states.params["head"]
    assert not np.allclose(head_before["kernel"], head_after["kernel"])
    assert not np.allclose(head_before["bias"], head_after["bias"])
    assert res.history["val_accuracy"][0][-1] > 0.5  # a linear probe on denoising features learns

    # Without freezing, the same start fine-tunes the encoder too.
    unfrozen_cfg = cfg.replace(freeze_encoder=False)
    unfrozen = fit_lib.fit(
        unfrozen_cfg,
        train,
        {"val": evals["val"]},
        seeds=[5],
        init=start_of(unfrozen_cfg),
        parallel="none",
    )
    assert not np.allclose(
        unfrozen.states.params["encoder"]["dense_0"]["kernel"], pretrained["dense_0"]["kernel"]
    )


# --------------------------------------------------------------------------- bad configs


def test_wsd_schedule_holds_then_falls_linearly_to_zero():
    """5 epochs of 10 steps decaying over the last 2: 1 for 30 steps, then 1 - (s - 30) / 20
    (the formula written out here, independently of optax's schedules); constant: all 1."""
    cfg = TrainConfig(epochs=5, optimizer=OptimizerConfig(schedule="wsd", decay_epochs=2))
    got = np.concatenate([train_lib.lr_scales(cfg, 10, e) for e in range(5)])
    want = [1.0] * 30 + [1 - (s - 30) / 20 for s in range(30, 50)]
    np.testing.assert_allclose(got, want, atol=1e-6)  # float32 scales near 1: eps = 1.2e-7
    assert got[-1] > 0  # the last step still learns
    # The schedule of the first epochs does not depend on the run's length.
    np.testing.assert_array_equal(
        train_lib.lr_scales(cfg.replace(epochs=9), 10, 2), train_lib.lr_scales(cfg, 10, 2)
    )
    np.testing.assert_array_equal(train_lib.lr_scales(TrainConfig(epochs=5), 10, 4), np.ones(10))


def test_configs_that_differ_in_length_or_schedule_share_one_program():
    cfg = TrainConfig(epochs=5)
    wsd = cfg.replace(epochs=7, optimizer=OptimizerConfig(schedule="wsd", decay_epochs=2))
    assert train_lib.program(wsd, 1000) is train_lib.program(cfg, 1000)
    assert train_lib.program(cfg.replace(augment="none"), 1000) is not train_lib.program(cfg, 1000)
    assert train_lib.program(cfg, 2000) is not train_lib.program(cfg, 1000)


def test_bad_configs_raise_clear_errors(task_data):
    with pytest.raises(ValueError, match="adam, sgd"):
        OptimizerConfig(name="lion")
    for lr in (0.0, -1e-3, float("nan")):
        with pytest.raises(ValueError, match="learning rate"):
            OptimizerConfig(learning_rate=lr)
    with pytest.raises(ValueError, match="momentum"):
        OptimizerConfig(name="sgd", momentum=1.0)
    with pytest.raises(ValueError, match="schedule"):
        OptimizerConfig(schedule="step")
    with pytest.raises(ValueError, match="decay epochs must be >= 0"):
        OptimizerConfig(schedule="wsd", decay_epochs=-1)
    with pytest.raises(ValueError, match="belong to the 'wsd' schedule"):
        OptimizerConfig(schedule="constant", decay_epochs=2)
    with pytest.raises(ValueError, match="exceed the run's 3 epochs"):
        TrainConfig(epochs=3, optimizer=OptimizerConfig(schedule="wsd", decay_epochs=3.5))
    with pytest.raises(ValueError, match="cnn, autoencoder, encoder_classifier"):
        TrainConfig(model="rnn")
    with pytest.raises(ValueError, match="none, expand, online"):
        TrainConfig(augment="mixup")
    with pytest.raises(ValueError, match="pool"):
        TrainConfig(pool="median")
    with pytest.raises(ValueError, match="batch size"):
        TrainConfig(batch_size=0)
    with pytest.raises(ValueError, match="conv_impl"):
        TrainConfig(conv_impl="fft")

    train = (task_data.train_images[:60], task_data.train_labels[:60])
    evals = {"val": (task_data.val_images[:10], task_data.val_labels[:10])}
    with pytest.raises(ValueError, match="--batch-size"):
        fit_lib.fit(TrainConfig(batch_size=100, epochs=1), train, evals, seeds=[0], parallel="none")
    with pytest.raises(ValueError, match="one learning rate per seed"):
        fit_lib.fit(
            TrainConfig(batch_size=20, epochs=1),
            train,
            evals,
            seeds=[0, 1],
            learning_rates=[1e-3],
            parallel="none",
        )
    with pytest.raises(ValueError, match="parallel"):
        fit_lib.fit(TrainConfig(batch_size=20, epochs=1), train, evals, seeds=[0], parallel="pmap")
    with pytest.raises(ValueError, match="seed"):
        fit_lib.fit(TrainConfig(batch_size=20, epochs=1), train, evals, seeds=[], parallel="none")
