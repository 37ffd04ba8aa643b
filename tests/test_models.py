"""fmnist_jax.models: layer shapes, parameter counts, initialisation, pooling, the conv kernels,
and loading a pretrained encoder, checked on real Fashion-MNIST images."""

import chex
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from fmnist_jax.models import (
    BASE_WIDTHS,
    CNN,
    THICK_WIDTHS,
    Autoencoder,
    EncoderClassifier,
    conv3x3_valid,
    count_params,
    resolve_conv_impl,
    with_pretrained_encoder,
)

N_IMAGES = 16


@pytest.fixture(scope="module")
def images(task_data):
    """A small batch of real task images, float32 [16, 28, 28, 1] in [0, 1]."""
    return jnp.asarray(task_data.train_images[:N_IMAGES])


@pytest.fixture(scope="module")
def cnn_variables():
    return CNN().init(
        {"params": jax.random.PRNGKey(0), "dropout": jax.random.PRNGKey(1)},
        jnp.zeros((1, 28, 28, 1)),
    )


def _record_calls(module, variables, x, **kwargs):
    """Apply `module`, recording every submodule's __call__ input and output: name -> (in, out)."""
    calls = {}

    def interceptor(next_fun, args, kw, context):
        out = next_fun(*args, **kw)
        if context.method_name == "__call__" and context.module.name is not None:
            calls[context.module.name] = (args[0], out)
        return out

    with nn.intercept_methods(interceptor):
        out = module.apply(variables, x, **kwargs)
    return calls, out


# ------------------------------------------------------------------------------------ shapes


def test_cnn_layer_shapes_match_the_reports_table(images, cnn_variables):
    b = N_IMAGES
    for pool in ("avg", "max"):
        model = CNN(pool=pool)
        calls, logits = _record_calls(model, cnn_variables, images, train=False)
        # conv -> BN keep the shape; the table's rows:
        chex.assert_shape(calls["conv_1"][1], (b, 26, 26, 10))
        chex.assert_shape(calls["bn_1"][1], (b, 26, 26, 10))
        chex.assert_shape(calls["conv_2"][0], (b, 13, 13, 10))  # after the first pool
        chex.assert_shape(calls["conv_2"][1], (b, 11, 11, 20))
        chex.assert_shape(calls["conv_3"][1], (b, 9, 9, 40))
        chex.assert_shape(calls["conv_4"][1], (b, 7, 7, 80))
        chex.assert_shape(calls["fc1"][0], (b, 720))  # flatten of the 3x3x80 pooled map
        chex.assert_shape(calls["fc1"][1], (b, 265))
        chex.assert_shape(calls["fc2"][1], (b, 5))
        chex.assert_shape(logits, (b, 5))

        # The pools sit where the table says: conv_2's input is pool(relu(bn_1)) [13x13x10] and
        # fc1's input is pool(relu(bn_4)) [3x3x80] flattened in H, W, C order.
        pool_fn = nn.avg_pool if pool == "avg" else nn.max_pool
        pooled_1 = pool_fn(nn.relu(calls["bn_1"][1]), (2, 2), strides=(2, 2), padding="VALID")
        pooled_4 = pool_fn(nn.relu(calls["bn_4"][1]), (2, 2), strides=(2, 2), padding="VALID")
        chex.assert_shape(pooled_4, (b, 3, 3, 80))
        np.testing.assert_allclose(calls["conv_2"][0], pooled_1, rtol=1e-6, atol=1e-6)
        np.testing.assert_allclose(calls["fc1"][0], pooled_4.reshape(b, 720), rtol=1e-6, atol=1e-6)


def test_autoencoder_and_classifier_output_shapes(images):
    def shapes(widths):
        ae, clf = Autoencoder(widths), EncoderClassifier(widths)
        ae_vars = ae.init(jax.random.PRNGKey(0), images[:1])
        clf_vars = clf.init(jax.random.PRNGKey(0), images[:1])
        return (
            ae.apply(ae_vars, images),
            ae.apply(ae_vars, images, method=Autoencoder.encode),
            clf.apply(clf_vars, images),
        )

    for widths in (BASE_WIDTHS, THICK_WIDTHS):
        recon, code, logits = jax.eval_shape(lambda w=widths: shapes(w))
        assert recon.shape == (N_IMAGES, 784)
        assert code.shape == (N_IMAGES, widths[-1])
        assert logits.shape == (N_IMAGES, 5)


# -------------------------------------------------------------------------- parameter counts


def test_parameter_counts():
    x = jnp.zeros((1, 28, 28, 1))
    cnn = jax.eval_shape(lambda: CNN().init(jax.random.PRNGKey(0), x))
    assert count_params(cnn["params"]) == 230_735  # BN scale/bias included, running stats not
    assert count_params(cnn["batch_stats"]) == 2 * (10 + 20 + 40 + 80)
    base = jax.eval_shape(lambda: Autoencoder(BASE_WIDTHS).init(jax.random.PRNGKey(0), x))
    assert count_params(base["params"]) == 1_100_112
    thick = jax.eval_shape(lambda: Autoencoder(THICK_WIDTHS).init(jax.random.PRNGKey(0), x))
    assert count_params(thick["params"]) == 2_167_596


# ----------------------------------------------------------------------------- initialisation


def _assert_glorot_uniform(kernel, fan_in, fan_out, name):
    w = np.asarray(kernel, np.float64).ravel()
    n = w.size
    limit = np.sqrt(6.0 / (fan_in + fan_out))
    want_var = 2.0 / (fan_in + fan_out)  # = limit**2 / 3
    # For U(-a, a) the sample variance has relative standard deviation sqrt(4/5 * 1/n)
    # ~ 0.894/sqrt(n).
    rel_sd = np.sqrt(0.8 / n)
    got_var = np.mean(w**2)
    assert abs(got_var / want_var - 1) < 5 * rel_sd, (name, got_var, want_var)
    assert abs(w.mean()) < 5 * np.sqrt(want_var / n), (name, w.mean())
    # Uniform, not normal: bounded by the limit, and reaching close to it.
    assert np.abs(w).max() <= limit * (1 + 1e-6), name
    assert np.abs(w).max() > 0.99 * limit, name


def test_kernels_are_glorot_uniform_and_biases_zero():
    x = jnp.zeros((1, 28, 28, 1))
    cnn = CNN().init({"params": jax.random.PRNGKey(3), "dropout": jax.random.PRNGKey(4)}, x)[
        "params"
    ]
    _assert_glorot_uniform(cnn["fc1"]["kernel"], 720, 265, "fc1")
    # A 3x3 conv's fans follow PyTorch's xavier_uniform_: 9 * C_in and 9 * C_out.
    _assert_glorot_uniform(cnn["conv_4"]["kernel"], 9 * 40, 9 * 80, "conv_4")
    _assert_glorot_uniform(cnn["conv_3"]["kernel"], 9 * 20, 9 * 40, "conv_3")

    ae = Autoencoder(BASE_WIDTHS).init(jax.random.PRNGKey(5), x)["params"]
    _assert_glorot_uniform(ae["encoder"]["dense_0"]["kernel"], 784, 512, "encoder dense_0")
    _assert_glorot_uniform(ae["encoder"]["dense_1"]["kernel"], 512, 256, "encoder dense_1")
    _assert_glorot_uniform(ae["decoder"]["dense_2"]["kernel"], 512, 784, "decoder dense_2")

    for params in (cnn, ae):
        flat = jax.tree_util.tree_flatten_with_path(params)[0]
        biases = [(jax.tree_util.keystr(p), v) for p, v in flat if p[-1].key == "bias"]
        assert biases
        for path, value in biases:
            if "bn_" in path:
                continue  # BatchNorm's shift, also zero, checked below
            assert not np.any(np.asarray(value)), path
    for i in range(1, 5):
        assert not np.any(np.asarray(cnn[f"bn_{i}"]["bias"]))
        np.testing.assert_array_equal(cnn[f"bn_{i}"]["scale"], 1.0)


# ------------------------------------------------------------------------------------ pooling


def test_avg_and_max_pooling_differ_on_the_same_params(images, cnn_variables):
    avg_calls, avg_logits = _record_calls(CNN(pool="avg"), cnn_variables, images, train=False)
    max_calls, max_logits = _record_calls(CNN(pool="max"), cnn_variables, images, train=False)
    assert not np.allclose(avg_logits, max_logits, rtol=1e-3, atol=1e-3)
    # Up to the first pool both models compute the same thing; that pool's max >= its mean,
    # strictly somewhere.
    np.testing.assert_array_equal(avg_calls["bn_1"][1], max_calls["bn_1"][1])
    avg_pooled, max_pooled = np.asarray(avg_calls["conv_2"][0]), np.asarray(max_calls["conv_2"][0])
    assert np.all(max_pooled >= avg_pooled - 1e-6)
    assert np.mean(max_pooled > avg_pooled + 1e-4) > 0.1

    with pytest.raises(ValueError, match="pool"):
        CNN(pool="median").apply(cnn_variables, images, train=False)


# -------------------------------------------------------------------------------- conv kernels


def _relative_error(a, b):
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    return np.linalg.norm(a - b) / np.linalg.norm(b)


@pytest.mark.parametrize("c_in,c_out", [(1, 10), (10, 20), (40, 80)])
def test_matmul_conv_equals_xla_conv_with_gradients(images, c_in, c_out):
    key_x, key_k, key_r = jax.random.split(jax.random.PRNGKey(c_in), 3)
    if c_in == 1:
        x = images
    else:
        # Real images lifted to c_in channels by a random 1x1 mixing (keeps the spatial structure).
        mix = jax.random.normal(key_x, (1, c_in))
        x = jnp.tanh(images * mix)
    kernel = jax.random.normal(key_k, (3, 3, c_in, c_out)) * 0.3
    out_shape = (x.shape[0], 26, 26, c_out)
    probe = jax.random.normal(key_r, out_shape)

    def functional(impl):
        return jax.jit(
            jax.value_and_grad(
                lambda x, k: jnp.sum(conv3x3_valid(x, k, impl) * probe), argnums=(0, 1)
            )
        )

    out_m = conv3x3_valid(x, kernel, "matmul")
    out_x = conv3x3_valid(x, kernel, "xla")
    chex.assert_shape(out_m, out_shape)
    chex.assert_equal_shape([out_m, out_x])
    assert _relative_error(out_m, out_x) < 1e-5
    np.testing.assert_allclose(out_m, out_x, rtol=1e-5, atol=1e-5 * float(jnp.abs(out_x).max()))

    (val_m, (gx_m, gk_m)) = functional("matmul")(x, kernel)
    (val_x, (gx_x, gk_x)) = functional("xla")(x, kernel)
    np.testing.assert_allclose(val_m, val_x, rtol=1e-5)
    for got, want in ((gx_m, gx_x), (gk_m, gk_x)):
        chex.assert_equal_shape([got, want])
        assert _relative_error(got, want) < 1e-5
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5 * float(jnp.abs(want).max()))


def test_resolve_conv_impl():
    want = "matmul" if jax.default_backend() == "cpu" else "xla"
    assert resolve_conv_impl("auto") == want
    assert resolve_conv_impl("xla") == "xla"
    assert resolve_conv_impl("matmul") == "matmul"
    with pytest.raises(ValueError, match="conv_impl"):
        resolve_conv_impl("fft")


def test_cnn_is_the_same_function_under_both_conv_impls(images, cnn_variables):
    out_m = CNN(conv_impl="matmul").apply(cnn_variables, images, train=False)
    out_x = CNN(conv_impl="xla").apply(cnn_variables, images, train=False)
    assert _relative_error(out_m, out_x) < 1e-5


# --------------------------------------------------------------------------- pretrained encoder


@pytest.mark.parametrize("widths", [BASE_WIDTHS, THICK_WIDTHS])
def test_with_pretrained_encoder_injects_exactly(images, widths):
    ae_params = Autoencoder(widths).init(jax.random.PRNGKey(10), images[:1])["params"]
    clf_params = EncoderClassifier(widths).init(jax.random.PRNGKey(11), images[:1])["params"]
    encoder = ae_params["encoder"]
    # Different keys: the classifier's own encoder differs before injection.
    assert not np.array_equal(
        clf_params["encoder"]["dense_0"]["kernel"], encoder["dense_0"]["kernel"]
    )

    injected = with_pretrained_encoder(clf_params, encoder)
    chex.assert_trees_all_equal(injected["encoder"], encoder)
    chex.assert_trees_all_equal(injected["head"], clf_params["head"])
    assert set(injected) == set(clf_params)

    calls, logits = _record_calls(EncoderClassifier(widths), {"params": injected}, images)
    want = Autoencoder(widths).apply({"params": ae_params}, images, method=Autoencoder.encode)
    np.testing.assert_allclose(calls["encoder"][1], want, rtol=1e-6, atol=1e-7)
    chex.assert_shape(logits, (N_IMAGES, 5))


def test_with_pretrained_encoder_rejects_other_widths(images):
    ae_params = Autoencoder(BASE_WIDTHS).init(jax.random.PRNGKey(0), images[:1])["params"]
    clf_params = EncoderClassifier(THICK_WIDTHS).init(jax.random.PRNGKey(1), images[:1])["params"]
    with pytest.raises(ValueError, match="--arch"):
        with_pretrained_encoder(clf_params, ae_params["encoder"])
