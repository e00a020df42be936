"""Tests of the trainer's options that follow the official code (PARITY.md, P1-P11).

Each option is checked where it acts: the config's checks, the data it loads, the batches and
losses of a step, and a tiny run that stops and resumes with all of them on.
"""

import json

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from runs import tiny, without_times

from resetax import data as resetax_data
from resetax import losses, models
from resetax.experiment import optimization, runner, steps, train_state
from resetax.experiment.config import get_config
from resetax.experiment.data_input import load_data, preprocess


@pytest.mark.parametrize(
    "fields, message",
    [
        ({"schedule_on_reset": "restore"}, "schedule_on_reset='restore' needs reset_inner_state"),
        ({"schedule_on_reset": "reset"}, "schedule_on_reset must be one of"),
        ({"val_loss": "mae"}, "val_loss must be one of"),
        ({"val_source": "valid"}, "val_source must be one of"),
        ({"val_source": "train_unused"}, "val_source='train_unused' needs num_per_class"),
        ({"val_size": 100}, "val_size is only used with val_source='train_unused'"),
        ({"val_size": 0, "val_source": "train_unused", "num_per_class": 5}, "val_size must be"),
        ({"subset": "last"}, "subset must be one of"),
        ({"batch_sampling": "replace"}, "batch_sampling must be one of"),
        ({"init": "xavier"}, "init must be one of"),
        ({"pad_mode": "edge"}, "pad_mode must be one of"),
        ({"test_every": 30, "eval_every": 20}, "test_every (30) must be a multiple of eval_every"),
        ({"gce_q": 0.0}, "gce_q must be in (0, 1]"),
        ({"truncated_gce_k": 1.0}, "truncated_gce_k must be in [0, 1)"),
        ({"sce_alpha": -1.0}, "sce_alpha must be a finite number >= 0"),
        ({"nce_rce_beta": float("inf")}, "nce_rce_beta must be a finite number >= 0"),
        ({"elr_beta": 1.0}, "elr_beta must be in [0, 1)"),
        ({"loss": "elr100"}, "loss must be one of"),
    ],
)
def test_bad_official_options_are_named(fields, message):
    with pytest.raises(ValueError) as error:
        get_config("quick", **fields)
    assert message in str(error.value)


# ------------------------------------------------------------------------------------------
# Data: setting 1's subset and validation, the official validation on the test images.


def _digits(**fields):
    return get_config("quick", dataset="digits", model="mlp", noise_rate=0.4,
                      **{"clean_validation": False, **fields})


def test_first_subset_and_validation_on_unused_training_images():
    config = _digits(num_per_class=20, subset="first", val_source="train_unused", val_size=300,
                     clean_validation=True)
    data = load_data(config)
    full = resetax_data.load("digits", split="train")  # in the source's order
    assert len(data.train) == 200 and len(data.val) == 300
    for label in range(10):  # the first 20 of each class, in the source's order
        np.testing.assert_array_equal(data.train.indices[data.train.clean_labels == label],
                                      full.indices[full.clean_labels == label][:20])
    assert not np.isin(data.val.indices, data.train.indices).any()
    np.testing.assert_array_equal(data.val.labels, data.val.clean_labels)
    # 40% of the 200 subset labels flipped: binomial s.d. 3.5 points, so 4 s.d. is 14 points.
    assert abs(data.train.is_noisy.mean() - 0.4) < 0.14
    # The same subset whatever the seed: "first" draws nothing.
    np.testing.assert_array_equal(load_data(config.replace(seed=3)).train.indices,
                                  data.train.indices)

    noisy_val = load_data(config.replace(clean_validation=False)).val
    np.testing.assert_array_equal(noisy_val.indices, data.val.indices)
    # 300 validation labels at 40%: s.d. 2.8 points; 4 s.d. is 11.3.
    assert abs(noisy_val.is_noisy.mean() - 0.4) < 0.113
    with pytest.raises(ValueError, match="val_size"):
        load_data(config.replace(val_size=5000))


def test_validation_on_the_test_images_with_noisy_labels():
    data = load_data(_digits(val_source="test"))
    np.testing.assert_array_equal(data.val.inputs, data.test.inputs)
    np.testing.assert_array_equal(data.test.labels, data.test.clean_labels)  # test stays clean
    # 359 test images at 40%: binomial s.d. 2.6 points; 4 s.d. is 10.3.
    assert abs(data.val.is_noisy.mean() - 0.4) < 0.103
    assert len(data.train) == 1438  # nothing held out of the training split
    clean = load_data(_digits(val_source="test", clean_validation=True))
    np.testing.assert_array_equal(clean.val.labels, clean.test.labels)


# ------------------------------------------------------------------------------------------
# Steps: batches, losses, normalization.


def _indices_of_steps(config, num_train, num_steps):
    """The training indices each step uses, read through a loss that keeps them as its state."""
    model = models.get_model("mlp", 3, hidden_sizes=(4,))
    tx = optimization.make_optimizer(config, jax.eval_shape(model.init, jax.random.key(0),
                                                     jnp.zeros((1, 2)))["params"])

    def loss_fn(logits, labels, indices, loss_state):
        return optax.softmax_cross_entropy_with_integer_labels(logits, labels), indices

    state = jax.jit(lambda: train_state.init_state(  # one compilation, not one per operation
        config, model, tx, jnp.zeros((1, 2)), jnp.zeros(config.batch_size, jnp.int32),
        num_train=num_train))()
    x = jnp.ones((num_train, 2))
    data = train_state.DeviceData(x, jnp.zeros(num_train, jnp.int32), x[:1],
                                  jnp.zeros(1, jnp.int32), jnp.ones(1), x[:1],
                                  jnp.zeros(1, jnp.int32), jnp.ones(1))
    step = jax.jit(steps.make_train_step(config, model, tx, loss_fn, num_train))
    out = []
    for _ in range(num_steps):
        state, _ = step(state, data, steps.Evaluation.missing())
        out.append(np.asarray(state.loss_state))
    return out


def test_iid_batches_are_fresh_draws_without_replacement():
    config = get_config("quick", batch_size=5, batch_sampling="iid")
    batches = _indices_of_steps(config, num_train=10, num_steps=6)
    assert all(len(set(b.tolist())) == 5 for b in batches)  # without replacement in a batch
    # Epoch sampling covers the 10 examples in steps 0-1 and 2-3; independent draws of 5 of 10
    # overlap with probability 1 - 1/252 per pair: with this seed, both first pairs overlap.
    assert all(len(set(np.concatenate(batches[i:i + 2]).tolist())) < 10 for i in (0, 2))
    epochs = _indices_of_steps(config.replace(batch_sampling="epoch"), num_train=10, num_steps=4)
    assert all(sorted(np.concatenate(epochs[i:i + 2]).tolist()) == list(range(10))
               for i in (0, 2))


def test_validation_loss_train_is_the_training_loss_with_its_hyperparameters():
    model = models.get_model("mlp", 3, hidden_sizes=(8,))
    x = jax.random.normal(jax.random.key(0), (7, 4))
    y = jnp.arange(7) % 3
    config = get_config("quick", loss="gce", gce_q=0.3, val_loss="train", eval_test=False)
    state = jax.jit(lambda: train_state.init_state(config, model, optax.sgd(0.1), x[:1],
                                             num_train=7))()
    data = train_state.DeviceData(x, y, x, y, jnp.ones(7), x, y, jnp.ones(7))
    logits = model.apply({"params": state.params, "batch_stats": state.batch_stats}, x)
    evaluation = jax.jit(steps.make_eval_step(config, model, 4))(state, data)
    expected = losses.generalized_cross_entropy(logits, y, q=0.3).mean()
    np.testing.assert_allclose(evaluation.val_loss, expected, rtol=1e-6)
    ce = jax.jit(steps.make_eval_step(config.replace(val_loss="ce"), model, 4))(state, data)
    np.testing.assert_allclose(ce.val_loss, losses.cross_entropy(logits, y).mean(), rtol=1e-6)
    elr = jax.jit(steps.make_eval_step(config.replace(loss="elr_official"), model, 4))(
        state, data)
    np.testing.assert_allclose(elr.val_loss, ce.val_loss, rtol=1e-6)  # CE, as the official code


@pytest.mark.parametrize(
    "loss, fields, reference",
    [
        ("gce", dict(gce_q=0.3), lambda z, y: losses.generalized_cross_entropy(z, y, q=0.3)),
        ("sce", dict(sce_alpha=6.0, sce_beta=0.1),
         lambda z, y: losses.symmetric_cross_entropy(z, y, alpha=6.0, beta=0.1)),
        ("nce_rce", dict(nce_rce_alpha=10.0, nce_rce_beta=0.1),
         lambda z, y: losses.nce_rce(z, y, alpha=10.0, beta=0.1)),
        ("truncated_gce", dict(gce_q=0.5, truncated_gce_k=0.2),
         lambda z, y: losses.truncated_generalized_cross_entropy(z, y, q=0.5, k=0.2)),
        ("elr_official", dict(elr_lambda=7.0, elr_beta=0.9),
         lambda z, y: losses.memoryless_elr(z, y, lam=7.0, beta=0.9)),
    ],
)
def test_loss_hyperparameters_reach_the_loss(loss, fields, reference):
    logits = jax.random.normal(jax.random.key(1), (6, 5))
    labels = jnp.arange(6) % 5
    loss_fn, _ = optimization.make_loss(get_config("quick", loss=loss, **fields), 6, 5)
    got, _ = loss_fn(logits, labels, jnp.arange(6), optax.EmptyState())
    np.testing.assert_allclose(got, reference(logits, labels), rtol=1e-6)
    default, _ = optimization.make_loss(get_config("quick", loss=loss), 6, 5)[0](
        logits, labels, jnp.arange(6), optax.EmptyState())
    assert np.abs(np.asarray(default) - np.asarray(got)).max() > 1e-3  # the fields matter


def test_elr_hyperparameters_reach_the_stateful_loss():
    logits = jax.random.normal(jax.random.key(2), (4, 3))
    labels, indices = jnp.arange(4) % 3, jnp.arange(4)
    loss_fn, state = optimization.make_loss(get_config("quick", loss="elr", elr_lambda=7.0,
                                                elr_beta=0.9), 4, 3)
    got, _ = loss_fn(logits, labels, indices, state)
    expected, _ = losses.elr_loss(logits, labels, indices, state, lam=7.0, beta=0.9)
    np.testing.assert_allclose(got, expected, rtol=1e-6)


def test_cifar100_images_use_cifar100_statistics_in_the_steps():
    model = models.get_model("mlp", 3, hidden_sizes=(8,))
    x = jnp.asarray(np.random.default_rng(3).integers(0, 256, (5, 4, 4, 3)), jnp.uint8)
    y = jnp.arange(5) % 3
    data = train_state.DeviceData(x, y, x, y, jnp.ones(5), x, y, jnp.ones(5))
    results = {}
    for dataset in ("cifar10", "cifar100"):
        config = get_config("quick", dataset=dataset, model="mlp", eval_test=False)
        state = jax.jit(lambda config=config: train_state.init_state(
            config, model, optax.sgd(0.1), x[:1], num_train=5))()
        logits = model.apply({"params": state.params, "batch_stats": state.batch_stats},
                             preprocess(x, dataset))
        results[dataset] = steps.make_eval_step(config, model, 8)(state, data).val_loss
        np.testing.assert_allclose(results[dataset], losses.cross_entropy(logits, y).mean(),
                                   rtol=1e-6)
    assert results["cifar10"] != results["cifar100"]


# ------------------------------------------------------------------------------------------
# A run with every official option on.

_OFFICIAL = dict(reset_inner_state=True, schedule_on_reset="restore", schedule="cosine",
                 learning_rate=0.1, loss="gce", val_loss="train", batch_sampling="iid",
                 init="pytorch", eval_test=True, test_every=20, reset_prob=0.2, patience=0,
                 num_steps=80, checkpoint_every=40)


@pytest.mark.slow
def test_official_options_run_stops_and_resumes_identically(tmp_path):
    config = tiny(**_OFFICIAL)
    whole = runner.train(config, tmp_path / "whole", progress=False).summary
    assert runner.train(config, tmp_path / "parts", progress=False,
                        stop_after=40) == runner.Stopped(40, None, 40)
    resumed = runner.train(config, tmp_path / "parts", progress=False, resume=True).summary
    assert without_times(resumed) == without_times(whole)
    assert (tmp_path / "parts" / "metrics.jsonl").read_text() == (
        tmp_path / "whole" / "metrics.jsonl").read_text()

    lines = [json.loads(line) for line in
             (tmp_path / "whole" / "metrics.jsonl").read_text().splitlines()]
    # Tested every 20 steps, validated every 10.
    assert [line["test_acc"] is not None for line in lines] == [
        line["step"] % 20 == 0 for line in lines]
    assert whole["num_resets"] > 0 and np.isfinite(whole["test_acc"])
    # After a reset the learning rate is the checkpoint's, above the nominal cosine's.
    nominal = optax.cosine_decay_schedule(0.1, 80)
    after = [line for line in lines if line["step"] > min(
        s for line in lines for s in line["reset_steps"])]
    assert any(line["learning_rate"] > 1.01 * float(nominal(line["step"])) for line in after)
