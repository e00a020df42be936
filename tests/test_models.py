"""Tests of resetax.models: parameter counts, forward/backward, BatchNorm modes, pmap, registry."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from resetax import models


def _count(tree):
    return sum(math.prod(leaf.shape) for leaf in jax.tree.leaves(tree))


def _shapes(model, x):
    return jax.eval_shape(model.init, jax.random.key(0), x)


def _fake_variables(model, x, seed=0):
    """Random variables with the model's structure, without compiling its initializers.

    XLA on CPU compiles the random initializers of a deep net slowly (about 5 s for a ResNet-18,
    9 s before its kernels were drawn as vectors); forward and backward passes do not depend on
    how the values were drawn.
    """
    rng = np.random.default_rng(seed)

    def fill(path, leaf):
        name = path[-1].key
        if name == "kernel":
            fan_in = math.prod(leaf.shape[:-1])
            return jnp.asarray(rng.normal(size=leaf.shape) / np.sqrt(fan_in), leaf.dtype)
        if name in ("scale", "var"):
            return jnp.ones(leaf.shape, leaf.dtype)
        return jnp.zeros(leaf.shape, leaf.dtype)

    return jax.tree_util.tree_map_with_path(fill, _shapes(model, x))


# --------------------------------------------------------------------------------------------
# Parameter counts, computed layer by layer from the architecture


def _conv(k, c_in, c_out, bias=False):
    return k * k * c_in * c_out + (c_out if bias else 0)


def _bn(c):
    return 2 * c  # scale and bias; running statistics are not parameters.


def _cifar_resnet_params(stage_sizes, num_classes):
    total = _conv(3, 3, 64) + _bn(64)
    c_in = 64
    for i, blocks in enumerate(stage_sizes):
        width = 64 * 2**i
        for j in range(blocks):
            total += _conv(3, c_in, width) + _bn(width) + _conv(3, width, width) + _bn(width)
            if c_in != width or (i > 0 and j == 0):
                total += _conv(1, c_in, width) + _bn(width)
            c_in = width
    return total + 512 * num_classes + num_classes


@pytest.mark.parametrize(
    "name, stage_sizes, millions",
    [("resnet18", (2, 2, 2, 2), 11.17), ("resnet34", (3, 4, 6, 3), 21.28)],
)
@pytest.mark.parametrize("num_classes", [10, 100])
def test_cifar_resnet_parameter_counts(name, stage_sizes, millions, num_classes):
    expected = _cifar_resnet_params(stage_sizes, num_classes)
    if num_classes == 10:
        assert round(expected / 1e6, 2) == millions  # The figures quoted for CIFAR ResNets.
    variables = _shapes(models.get_model(name, num_classes), jnp.zeros((1, 32, 32, 3)))
    assert _count(variables["params"]) == expected
    # Three projection shortcuts (stages 2-4): 20 BatchNorms in ResNet-18, 36 in ResNet-34.
    num_bn = 1 + 2 * sum(stage_sizes) + 3
    assert len(jax.tree.leaves(variables["batch_stats"])) == 2 * num_bn


def test_vcnn_parameter_count():
    widths = [3, 32, 64, 128, 128, 256, 256]
    expected = sum(
        _conv(3, a, b, bias=True) + _bn(b) for a, b in zip(widths[:-1], widths[1:], strict=True)
    )
    flat = 256 * 4 * 4  # 32x32 halved by three pools.
    expected += (flat * 1024 + 1024 + _bn(1024)) + (1024 * 512 + 512 + _bn(512)) + 512 * 7 + 7
    variables = _shapes(models.VCNN(num_classes=7), jnp.zeros((1, 32, 32, 3)))
    assert _count(variables["params"]) == expected


def test_mnist1d_model_parameter_counts():
    mlp = _shapes(models.MLP(10, hidden_sizes=(100, 50)), jnp.zeros((1, 40)))
    assert _count(mlp["params"]) == (40 * 100 + 100 + _bn(100)) + (100 * 50 + 50 + _bn(50)) + 510
    cnn = _shapes(models.CNN1D(10), jnp.zeros((1, 40)))
    convs = (5 * 1 * 32 + 32) + 2 * (5 * 32 * 32 + 32) + 3 * _bn(32)
    assert _count(cnn["params"]) == convs + (5 * 32) * 10 + 10  # 40 -> 20 -> 10 -> 5 positions.


# --------------------------------------------------------------------------------------------
# Forward and backward passes


def _loss_fn(model, batch_stats, x, labels):
    def loss(params):
        logits, updates = model.apply(
            {"params": params, "batch_stats": batch_stats},
            x,
            train=True,
            mutable=["batch_stats"],
            rngs={"dropout": jax.random.key(1)},
        )
        return optax.softmax_cross_entropy_with_integer_labels(logits, labels).mean(), updates

    return loss


TINY_MODELS = [
    ("resnet18", dict(num_filters=4), (2, 32, 32, 3)),
    ("vcnn", {}, (2, 8, 8, 3)),
    ("mlp", dict(hidden_sizes=(16, 16)), (4, 40)),
    ("cnn1d", {}, (4, 40)),
]


@pytest.mark.parametrize("name, kwargs, shape", TINY_MODELS)
def test_forward_and_backward(name, kwargs, shape):
    model = models.get_model(name, 5, **kwargs)
    x = jnp.asarray(np.random.default_rng(0).normal(size=shape), jnp.float32)
    labels = jnp.arange(shape[0]) % 5
    variables = _fake_variables(model, x)
    logits = jax.jit(model.apply)(variables, x)
    assert logits.shape == (shape[0], 5) and logits.dtype == jnp.float32
    loss = _loss_fn(model, variables["batch_stats"], x, labels)
    (value, _), grads = jax.jit(jax.value_and_grad(loss, has_aux=True))(variables["params"])
    assert np.isfinite(value)
    for path, grad in jax.tree_util.tree_leaves_with_path(grads):
        assert np.isfinite(grad).all(), path
        assert np.abs(grad).max() > 0, path


def test_real_initializers_give_float32_params():
    for model in (models.MLP(3, hidden_sizes=(8,)), models.CNN1D(3, channels=(4, 4))):
        variables = jax.jit(model.init)(jax.random.key(0), jnp.zeros((2, 40)))
        assert {leaf.dtype for leaf in jax.tree.leaves(variables)} == {jnp.dtype(jnp.float32)}
        kernel = variables["params"]["Dense_0"]["kernel"]
        assert float(jnp.std(kernel)) > 0


def test_reduced_precision_computes_in_dtype_with_float32_params():
    x = jnp.asarray(np.random.default_rng(0).normal(size=(4, 40)), jnp.float32)
    full = models.CNN1D(3)
    half = models.CNN1D(3, dtype=jnp.bfloat16)
    variables = _fake_variables(full, x)
    assert _shapes(half, x)["params"]["Conv_0"]["kernel"].dtype == jnp.float32
    out_full, out_half = jax.jit(full.apply)(variables, x), jax.jit(half.apply)(variables, x)
    assert out_half.dtype == jnp.float32
    np.testing.assert_allclose(out_half, out_full, rtol=0.1, atol=0.1)
    assert not np.array_equal(out_half, out_full)  # Rounded to bfloat16 along the way.


# --------------------------------------------------------------------------------------------
# BatchNorm and dropout modes


def test_batch_norm_train_and_eval_modes():
    model = models.MLP(3, hidden_sizes=(8,))
    x = jnp.asarray(np.random.default_rng(0).normal(size=(6, 5)) * 3 + 1, jnp.float32)
    variables = _fake_variables(model, x)

    # Train mode normalizes with the batch: an example's output depends on the others.
    train_out, updates = model.apply(variables, x, train=True, mutable=["batch_stats"])
    other_out, _ = model.apply(
        variables, x.at[1:].multiply(2.0), train=True, mutable=["batch_stats"]
    )
    assert not np.allclose(train_out[0], other_out[0])
    stats = updates["batch_stats"]["BatchNorm_0"]
    hidden = np.asarray(x @ variables["params"]["Dense_0"]["kernel"])
    np.testing.assert_allclose(stats["mean"], 0.1 * hidden.mean(0), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(stats["var"], 0.9 + 0.1 * hidden.var(0), rtol=1e-5)

    # Eval mode uses the running averages: outputs are per-example and nothing is updated.
    eval_out = model.apply(variables, x)
    np.testing.assert_allclose(model.apply(variables, x[:1]), eval_out[:1], rtol=1e-5)
    assert not np.allclose(eval_out, train_out)
    _, no_updates = model.apply(variables, x, train=False, mutable=["batch_stats"])
    assert jax.tree.all(
        jax.tree.map(np.array_equal, no_updates["batch_stats"], variables["batch_stats"])
    )
    # Training without a mutable batch_stats collection is an error, not a silent no-op.
    with pytest.raises(Exception, match="batch_stats"):
        model.apply(variables, x, train=True)


def test_vcnn_dropout_only_in_train_mode():
    model = models.VCNN(4, dropout_rate=0.5)
    x = jnp.asarray(np.random.default_rng(0).normal(size=(4, 8, 8, 3)), jnp.float32)
    variables = _fake_variables(model, x)

    @jax.jit
    def train_out(key):
        return model.apply(variables, x, train=True, mutable=["batch_stats"], rngs={"dropout": key})

    a, _ = train_out(jax.random.key(0))
    b, _ = train_out(jax.random.key(1))
    assert not np.allclose(a, b)
    np.testing.assert_array_equal(a, train_out(jax.random.key(0))[0])
    eval_out = jax.jit(model.apply)  # eager, each of the VCNN's operations would compile alone
    np.testing.assert_array_equal(eval_out(variables, x), eval_out(variables, x))


# --------------------------------------------------------------------------------------------
# Cross-replica BatchNorm under pmap


@pytest.mark.parametrize("axis_name", ["batch", None])
def test_pmap_batch_norm_statistics(axis_name):
    num_devices = jax.local_device_count()
    assert num_devices == 8  # Simulated by the root conftest.
    model = models.CNN1D(3, channels=(4,), axis_name=axis_name)
    x = np.random.default_rng(0).normal(size=(num_devices * 2, 40)).astype(np.float32)
    x *= np.linspace(0.5, 3.0, len(x))[:, None]  # Shards with different statistics.
    variables = _fake_variables(model, jnp.asarray(x))

    def batch_stats(model, variables, x):
        _, updates = model.apply(variables, x, train=True, mutable=["batch_stats"])
        return updates["batch_stats"]

    stats = jax.pmap(lambda v, x: batch_stats(model, v, x), axis_name="batch", in_axes=(None, 0))(
        variables, x.reshape(num_devices, 2, 40)
    )
    global_stats = batch_stats(models.CNN1D(3, channels=(4,)), variables, jnp.asarray(x))
    for leaf, global_leaf in zip(
        jax.tree.leaves(stats), jax.tree.leaves(global_stats), strict=True
    ):
        if axis_name is None:
            # Each replica only sees its own shard.
            assert not np.allclose(leaf[0], leaf[-1])
        else:
            for replica in leaf:
                np.testing.assert_allclose(replica, global_leaf, rtol=1e-4, atol=1e-6)


# --------------------------------------------------------------------------------------------
# Registry


def test_get_model_registry():
    expected = {
        "resnet18": models.ResNet,
        "resnet34": models.ResNet,
        "vcnn": models.VCNN,
        "mlp": models.MLP,
        "cnn1d": models.CNN1D,
    }
    assert set(models.MODELS) == set(expected)
    for name, cls in expected.items():
        model = models.get_model(name, 7, axis_name="batch")
        assert isinstance(model, cls)
        assert model.num_classes == 7 and model.axis_name == "batch"
    assert models.get_model("resnet34", 10).stage_sizes == (3, 4, 6, 3)


def test_get_model_rejects_bad_input():
    with pytest.raises(ValueError, match="name") as error:
        models.get_model("resnet50", 10)
    assert "resnet34" in str(error.value)
    for bad in (0, -1, 2.0, True):
        with pytest.raises(ValueError, match="num_classes"):
            models.get_model("mlp", bad)


@pytest.mark.parametrize("make, shape", [
    # XLA:CPU compiles the initializers of the two CNNs in 3-5 s each (about 10 s before the
    # kernels were drawn as vectors).
    pytest.param(
        lambda **kw: models.ResNet(stage_sizes=(1, 1), num_classes=10, num_filters=8, **kw),
        (2, 8, 8, 3), marks=pytest.mark.slow, id="resnet"),
    pytest.param(lambda **kw: models.VCNN(10, **kw), (2, 8, 8, 3), marks=pytest.mark.slow,
                 id="vcnn"),
    pytest.param(lambda **kw: models.MLP(10, hidden_sizes=(64,), **kw), (2, 40), id="mlp"),
    pytest.param(lambda **kw: models.CNN1D(10, **kw), (2, 40), id="cnn1d"),
])
def test_pytorch_initialization_is_uniform_in_one_over_sqrt_fan_in(make, shape):
    params = jax.jit(make(init_scheme="pytorch").init)(jax.random.key(0), jnp.zeros(shape))[
        "params"]
    flax_params = jax.jit(make().init)(jax.random.key(0), jnp.zeros(shape))["params"]
    checked = 0
    for path, kernel in jax.tree_util.tree_leaves_with_path(params):
        if path[-1].key != "kernel":
            continue
        fan_in = math.prod(kernel.shape[:-1])
        bound = 1 / math.sqrt(fan_in)
        assert np.abs(kernel).max() <= bound, path
        if kernel.size >= 1000:
            # U(-b, b) has s.d. b / sqrt(3); the sample s.d. of n draws has s.d. b / sqrt(15 n)
            # ((mu4 - sigma^4) / (4 sigma^2 n) with mu4 = b^4 / 5): 4 of those allowed. Flax's
            # LeCun normal has s.d. b, He normal more: both far outside.
            np.testing.assert_allclose(np.std(kernel), bound / math.sqrt(3),
                                       atol=4 * bound / math.sqrt(15 * kernel.size))
            checked += 1
        layer = path[:-1]
        bias = params
        for key in layer:
            bias = bias[key.key]
        if "bias" in bias:  # PyTorch draws biases too, with the layer's fan-in
            assert np.abs(bias["bias"]).max() <= bound and np.abs(bias["bias"]).max() > 0, path
    assert checked > 0
    # The Flax scheme is another distribution: not bounded by 1/sqrt(fan_in) everywhere.
    assert any(np.abs(k).max() > 1 / math.sqrt(math.prod(k.shape[:-1]))
               for p, k in jax.tree_util.tree_leaves_with_path(flax_params)
               if p[-1].key == "kernel")


def test_variance_scaling_draws_jax_initializers_values_bit_for_bit():
    # The kernels are drawn as one vector (fast to compile on XLA:CPU); the values must be
    # exactly those of JAX's initializer for the kernel's shape, with both threefry variants.
    # (Few cases: the reference compiles slowly for kernels of three or four axes.)
    from resetax.models.initializers import variance_scaling

    cases = [(True, (5, 1, 32), 1.0, "fan_in", "truncated_normal", jnp.float32),
             (True, (1, 1, 16, 3), 1 / 3, "fan_in", "uniform", jnp.bfloat16),
             (True, (7, 10), 2.0, "fan_out", "normal", jnp.float16),
             (False, (2, 2, 1, 128), 2.0, "fan_out", "normal", jnp.float32)]
    for i, (partitionable, shape, scale, mode, distribution, dtype) in enumerate(cases):
        with jax.threefry_partitionable(partitionable):
            key = jax.random.key(i)
            ours = variance_scaling(scale, mode, distribution)(key, shape, dtype)
            theirs = jax.nn.initializers.variance_scaling(scale, mode, distribution)(
                key, shape, dtype)
        assert ours.dtype == theirs.dtype and ours.shape == theirs.shape
        np.testing.assert_array_equal(np.asarray(ours, np.float32),
                                      np.asarray(theirs, np.float32), err_msg=str(cases[i]))
        assert float(jnp.std(ours.astype(jnp.float32))) > 0


def test_variance_scaling_refuses_bad_arguments():
    from resetax.models.initializers import variance_scaling

    with pytest.raises(ValueError, match="mode must be one of"):
        variance_scaling(1.0, "fan_avg", "normal")
    with pytest.raises(ValueError, match="distribution must be one of"):
        variance_scaling(1.0, "fan_in", "cauchy")
    with pytest.raises(ValueError, match=r"shape must have at least 2 axes .*got \(5,\)"):
        variance_scaling(1.0, "fan_in", "normal")(jax.random.key(0), (5,))


def test_unknown_init_scheme_is_refused():
    with pytest.raises(ValueError, match="init_scheme must be one of"):
        models.get_model("mlp", 10, init_scheme="xavier")
