"""The PyTorch peers of the benchmarks compute what resetax's models and protocol compute.

PyTorch is the optional ``bench`` extra, so these tests are skipped where it is not installed.
"""

import argparse
import importlib.util
import json
from pathlib import Path

import jax
import numpy as np
import pytest

torch = pytest.importorskip("torch")

from resetax import models  # noqa: E402

BENCHMARKS = Path(__file__).resolve().parent.parent / "benchmarks"


def _load(name):
    spec = importlib.util.spec_from_file_location(name, BENCHMARKS / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


quick_vs_pytorch = _load("quick_vs_pytorch")
throughput_torch = _load("throughput_torch")


def _tensor(x):
    return torch.from_numpy(np.array(x, np.float32))


def _copy_batch_norm(bn, params, stats):
    with torch.no_grad():
        bn.weight.copy_(_tensor(params["scale"]))
        bn.bias.copy_(_tensor(params["bias"]))
        bn.running_mean.copy_(_tensor(stats["mean"]))
        bn.running_var.copy_(_tensor(stats["var"]))


def _random_stats(batch_stats, seed):
    """Non-trivial running statistics, so that evaluation mode is tested too."""
    rng = np.random.default_rng(seed)

    def draw(path, leaf):
        if path[-1].key == "var":
            return rng.uniform(0.5, 2.0, leaf.shape).astype(np.float32)
        return rng.normal(size=leaf.shape).astype(np.float32)

    return jax.tree_util.tree_map_with_path(draw, batch_stats)


def _random_params(params, seed):
    """Flax params with every leaf redrawn, so that BatchNorm scales and biases matter too."""
    rng = np.random.default_rng(seed)
    return jax.tree.map(lambda p: (0.3 * rng.normal(size=p.shape)).astype(np.float32), params)


@pytest.mark.parametrize("train", [False, True])
def test_torch_cnn1d_matches_flax_cnn1d(train):
    flax_model = models.CNN1D(num_classes=10)
    x = np.random.default_rng(0).normal(size=(6, 40)).astype(np.float32)
    variables = flax_model.init(jax.random.key(0), x)
    params = _random_params(variables["params"], 1)
    stats = _random_stats(variables["batch_stats"], 2)
    model = quick_vs_pytorch.make_torch_cnn1d(10, 40)
    assert (sum(p.numel() for p in model.parameters())
            == sum(p.size for p in jax.tree.leaves(params)))
    convs = [m for m in model if isinstance(m, torch.nn.Conv1d)]
    norms = [m for m in model if isinstance(m, torch.nn.BatchNorm1d)]
    with torch.no_grad():
        for i, (conv, bn) in enumerate(zip(convs, norms, strict=True)):
            # Flax kernels are [width, in, out]; torch's are [out, in, width].
            conv.weight.copy_(_tensor(params[f"Conv_{i}"]["kernel"]).permute(2, 1, 0))
            conv.bias.copy_(_tensor(params[f"Conv_{i}"]["bias"]))
            _copy_batch_norm(bn, params[f"BatchNorm_{i}"], stats[f"BatchNorm_{i}"])
        # Flax flattens [N, 5, 32] position-major, torch [N, 32, 5] channel-major.
        kernel = _tensor(params["Dense_0"]["kernel"]).reshape(5, 32, 10)
        model[-1].weight.copy_(kernel.permute(2, 1, 0).reshape(10, 160))
        model[-1].bias.copy_(_tensor(params["Dense_0"]["bias"]))
    expected = flax_model.apply({"params": params, "batch_stats": stats}, x, train=train,
                                mutable=["batch_stats"] if train else False)
    expected = expected[0] if train else expected
    model.train(train)
    with torch.no_grad():
        got = model(torch.from_numpy(x)[:, None]).numpy()
    np.testing.assert_allclose(got, np.asarray(expected), rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("train", [False, True])
def test_torch_resnet_matches_flax_resnet(train):
    stage_sizes = (1, 2)  # a projection shortcut (stage 2) and an identity one (its 2nd block)
    flax_model = models.ResNet(stage_sizes=stage_sizes, num_classes=3, num_filters=4)
    x = np.random.default_rng(0).normal(size=(5, 8, 8, 3)).astype(np.float32)
    variables = flax_model.init(jax.random.key(0), x)
    params = _random_params(variables["params"], 1)
    stats = _random_stats(variables["batch_stats"], 2)
    model = throughput_torch.ResNet(stage_sizes, num_classes=3, num_filters=4)

    def conv(module, kernel):  # Flax [kh, kw, in, out] -> torch [out, in, kh, kw]
        module.weight.copy_(_tensor(kernel).permute(3, 2, 0, 1))

    with torch.no_grad():
        conv(model.stem[0], params["Conv_0"]["kernel"])
        _copy_batch_norm(model.stem[1], params["BatchNorm_0"], stats["BatchNorm_0"])
        for k, block in enumerate(model.blocks):
            p, s = params[f"BasicBlock_{k}"], stats[f"BasicBlock_{k}"]
            conv(block.conv1, p["Conv_0"]["kernel"])
            _copy_batch_norm(block.bn1, p["BatchNorm_0"], s["BatchNorm_0"])
            conv(block.conv2, p["Conv_1"]["kernel"])
            _copy_batch_norm(block.bn2, p["BatchNorm_1"], s["BatchNorm_1"])
            assert ("Conv_2" in p) == isinstance(block.shortcut, torch.nn.Sequential)
            if "Conv_2" in p:
                conv(block.shortcut[0], p["Conv_2"]["kernel"])
                _copy_batch_norm(block.shortcut[1], p["BatchNorm_2"], s["BatchNorm_2"])
        model.fc.weight.copy_(_tensor(params["Dense_0"]["kernel"]).T)
        model.fc.bias.copy_(_tensor(params["Dense_0"]["bias"]))
    expected = flax_model.apply({"params": params, "batch_stats": stats}, x, train=train,
                                mutable=["batch_stats"] if train else False)
    expected = expected[0] if train else expected
    model.train(train)
    with torch.no_grad():
        got = model(torch.from_numpy(x).permute(0, 3, 1, 2)).numpy()
    np.testing.assert_allclose(got, np.asarray(expected), rtol=1e-4, atol=1e-4)


def test_torch_resnet18_has_resetax_parameter_count():
    model = throughput_torch.ResNet(throughput_torch.STAGE_SIZES["resnet18"], 10)
    assert sum(p.numel() for p in model.parameters()) == 11_173_962  # models.resnet18(10)


def test_augment_crops_and_flips_like_a_padded_window():
    images = torch.arange(2 * 6 * 6 * 3, dtype=torch.int32).reshape(2, 6, 6, 3).to(torch.uint8)
    out = throughput_torch.augment(images, torch.Generator().manual_seed(0), padding=2)
    assert out.shape == images.shape and out.dtype == torch.uint8
    padded = torch.nn.functional.pad(images, (0, 0, 2, 2, 2, 2))
    for i in range(2):  # each output is one of the 5 x 5 windows, flipped or not
        windows = [w for dy in range(5) for dx in range(5)
                   for w in (padded[i, dy:dy + 6, dx:dx + 6],
                             padded[i, dy:dy + 6, dx:dx + 6].flip(1))]
        assert any(torch.equal(out[i], w) for w in windows)


def _worker(tmp_path, loop="lean", **protocol):
    """Runs the PyTorch quick-protocol worker on a small synthetic problem."""
    rng = np.random.default_rng(0)
    arrays = {f"{split}_x": rng.normal(size=(n, 40)).astype(np.float32)
              for split, n in (("train", 96), ("val", 40), ("test", 50))}
    arrays.update({f"{split}_y": rng.integers(0, 10, n).astype(np.int32)
                   for split, n in (("train", 96), ("val", 40), ("test", 50))})
    protocol = {"seed": 0, "num_steps": 60, "batch_size": 32, "learning_rate": 0.05,
                "momentum": 0.9, "eval_every": 20, "reset_prob": 0.0, "patience": 200,
                "adaptive": True, "num_classes": 10, "opt_reset": True, **protocol}
    path = tmp_path / "data.npz"
    np.savez(path, protocol=json.dumps(protocol), **arrays)
    args = argparse.Namespace(data=str(path), torch_threads=1, torch_loop=loop)
    return quick_vs_pytorch.torch_worker(args)


@pytest.mark.parametrize("loop", ["lean", "official"])
def test_torch_worker_resets_to_the_checkpoint_every_step_with_reset_prob_one(tmp_path, loop):
    # patience 0: resetting switches on at the first evaluation (step 0), whose params become
    # the checkpoint; with reset_prob 1 every later step is undone, so the last params are the
    # checkpoint and no later evaluation can improve on it.
    result = _worker(tmp_path, loop, reset_prob=1.0, patience=0)
    assert result["num_resets"] == 59
    assert result["best_step"] == 0
    assert result["last_test_acc"] == result["test_acc"]
    profile = result["profile"]
    assert profile["train_step"][1] == 60 and profile["eval"][1] == 3
    assert profile["reset"][1] == 59 and profile["checkpoint_copy"][1] == 1


def test_torch_worker_never_resets_before_patience_runs_out(tmp_path):
    result = _worker(tmp_path, reset_prob=1.0, patience=200)  # 60 steps < patience
    assert result["num_resets"] == 0
    assert result["profile"]["checkpoint_copy"][1] == 0
    assert 0.0 <= result["test_acc"] <= 1.0
