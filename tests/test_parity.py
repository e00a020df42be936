"""Decision parity with the authors' official training loop (PARITY.md).

``official_loop`` (tests/official_loop.py) replays the control flow of the official ``main.py``.
The first tests check it against hand-worked sequences (and, where PyTorch is installed, against
PyTorch's own optimizer and scheduler); the others feed resetax and the replay the same
validation values and the same uniform draws and compare what they decide.

How the two loops line up: the official iteration ``t`` takes an SGD step, then its reset draw,
then (if ``t % E == 0``) validates the resulting parameters. resetax's update ``t`` takes the
value measured at the parameters it starts from, then draws. So the official draw of iteration
``t`` is resetax's draw of update ``t``, the official learning rate of iteration ``t`` is
resetax's at update ``t``, and the official evaluation at iteration ``j * E`` is the ``value``
of resetax's update ``j * E + 1``. (The trainer evaluates before updates ``0, E, 2E, ...``
instead: the same decisions on an evaluation grid shifted by one step.)
"""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from official_loop import official_loop, official_patience_steps

import resetax

# ------------------------------------------------------------------------------------------
# The replay against hand-worked sequences.
# ------------------------------------------------------------------------------------------

# Evaluations every 10 iterations; the best is at iteration 10 until a new best at 40.
_VALUES = [5.0, 4.0, 4.5, 4.2, 3.9, 4.0]


def _draws(tot_iter, low_at):
    """Draws of 0.9 (no reset at r = 0.5) except the given {iteration: draw}."""
    draws = np.full(tot_iter, 0.9)
    for t, u in low_at.items():
        draws[t] = u
    return draws


# Draws below 0.5 at 25 and 30 come before resetting is on (the draw of iteration 30 precedes
# the evaluation that switches it on) and are ignored; 0.5 at 31 is not below r = 0.5.
_HAND_DRAWS = {25: 0.0, 30: 0.0, 31: 0.5, 33: 0.1, 45: 0.2}


def test_official_loop_hand_worked_decisions():
    # T = 30, E = 10: the best of iteration 10 is still the best two evaluations later, at 30,
    # where resetting switches on; the reset of 33 returns to iteration 10's network, the new
    # best of 40 moves the checkpoint (adaptive) and the reset of 45 returns there.
    trace = official_loop(_VALUES, _draws(60, _HAND_DRAWS), tot_iter=60, log_iter=10,
                          threshold_iter=30, reset_prob=0.5, lr=0.1, lr_schedule="none")
    assert trace.best_iters == [0, 10, 40]
    assert trace.activation_iter == 30
    assert trace.checkpoint_iters == [30, 40]
    assert trace.reset_iters == [33, 45]
    assert trace.reset_sources == [10, 40]
    np.testing.assert_array_equal(trace.learning_rates, np.full(60, 0.1))


def test_official_loop_without_adaptive_keeps_the_activation_checkpoint():
    trace = official_loop(_VALUES, _draws(60, _HAND_DRAWS), tot_iter=60, log_iter=10,
                          threshold_iter=30, reset_prob=0.5, lr=0.1, lr_schedule="none",
                          adaptive=False)
    assert trace.best_iters == [0, 10, 40]  # the reported model still follows the best
    assert trace.checkpoint_iters == [30]
    assert trace.reset_sources == [10, 10]


@pytest.mark.parametrize(
    "threshold_iter, activation_iter",
    # main.py compares with the best ``-T//E`` evaluations back, which Python reads as
    # ``(-T)//E``: T is rounded up to whole evaluations, and the switch comes one evaluation
    # interval before T steps have passed since the best (iteration 10).
    [(20, 20), (21, 30), (25, 30), (30, 30), (31, 40)],
)
def test_official_loop_threshold_rounds_up_to_evaluations(threshold_iter, activation_iter):
    values = [5.0, 4.0, 4.5, 4.2, 4.3, 4.4]
    trace = official_loop(values, np.ones(60), tot_iter=60, log_iter=10,
                          threshold_iter=threshold_iter, reset_prob=0.5, lr=0.1)
    assert trace.activation_iter == activation_iter
    assert trace.activation_iter - 10 == official_patience_steps(threshold_iter, 10)


def test_official_patience_steps_rejects_thresholds_within_one_evaluation():
    with pytest.raises(ValueError, match="threshold_iter must be an integer > log_iter"):
        official_patience_steps(10, 10)
    with pytest.raises(ValueError, match="log_iter must be an integer > 0"):
        official_patience_steps(100, 0)


def test_official_loop_learning_rate_after_a_reset():
    # CosineAnnealingLR over N = 60 steps multiplies the learning rate by f(t) / f(t - 1), with
    # f(t) = 1 + cos(pi t / N). --scheduler-reset 1 restores the learning rate saved with the
    # checkpoint; the ratios then continue from it.
    n = 60
    f = lambda t: 1 + np.cos(np.pi * np.asarray(t, np.float64) / n)  # noqa: E731
    nominal = 0.1 * f(np.arange(n)) / 2
    common = dict(tot_iter=n, log_iter=10, threshold_iter=30, reset_prob=0.5, lr=0.1)
    restored = official_loop(_VALUES, _draws(n, _HAND_DRAWS), scheduler_reset=1, **common)
    assert restored.reset_iters == [33, 45]  # resets after the step of 33 and 45
    expected = nominal.copy()
    # The reset of 33 restores the learning rate of iteration 10 (the checkpoint's).
    expected[34:46] = nominal[10] * f(np.arange(34, 46)) / f(33)
    # The best of 40 saved that iteration's learning rate; the reset of 45 restores it.
    expected[46:] = expected[40] * f(np.arange(46, n)) / f(45)
    np.testing.assert_allclose(restored.learning_rates, expected, rtol=1e-12)
    assert restored.learning_rates[34] / nominal[34] > 2  # well above the nominal schedule

    continued = official_loop(_VALUES, _draws(n, _HAND_DRAWS), scheduler_reset=0, **common)
    assert continued.reset_iters == [33, 45]
    np.testing.assert_allclose(continued.learning_rates, nominal, rtol=1e-12)


def test_official_loop_restores_parameters_and_momentum():
    # Plain numbers: gradient 1, learning rate 0.5, momentum 0.5 (PyTorch's buffer starts at
    # the first gradient). T = 4, E = 2: best at iteration 2, switch at 4, reset at 5 back to
    # the network and momentum buffer saved after the step of iteration 2. The step of
    # iteration 5 is discarded; iteration 6 then repeats iteration 3 exactly.
    trace = official_loop([3.0, 2.0, 2.5, 2.6], _draws(8, {5: 0.0}), tot_iter=8, log_iter=2,
                          threshold_iter=4, reset_prob=0.5, lr=0.5, lr_schedule="none",
                          momentum=0.5, grads=np.ones((8, 1)))
    assert trace.activation_iter == 4
    assert trace.reset_iters == [5]
    params = [0, -0.5, -1.25, -2.125, -3.0625, -4.03125, -2.125, -3.0625, -4.03125]
    buffers = [0, 1, 1.5, 1.75, 1.875, 1.9375, 1.75, 1.875, 1.9375]
    np.testing.assert_array_equal(trace.params[:, 0], params)
    np.testing.assert_array_equal(trace.momentum_buffers[:, 0], buffers)


def test_official_loop_matches_pytorch():
    # The replay's reading of PyTorch (SGD with momentum and weight decay, optimizer state
    # loaded on a reset, CosineAnnealingLR's recursion) against PyTorch itself, in float64.
    torch = pytest.importorskip("torch")
    n, e, t_threshold = 300, 10, 50
    rng = np.random.default_rng(0)
    values = _validation_sequence(len(range(0, n, e)), seed=1, dips=(10, 20))
    draws = rng.random(n)
    grads = rng.normal(size=(n, 3))
    for scheduler_reset in (0, 1):
        kwargs = dict(tot_iter=n, log_iter=e, threshold_iter=t_threshold, reset_prob=0.0625,
                      lr=0.1, scheduler_reset=scheduler_reset, momentum=0.9, weight_decay=5e-4)
        replay = official_loop(values, draws, grads=grads, **kwargs)
        real = _official_loop_in_pytorch(torch, values, draws, grads, **kwargs)
        assert len(replay.reset_iters) >= 5  # the sequence exercises resets
        assert real["reset_iters"] == replay.reset_iters
        np.testing.assert_allclose(real["learning_rates"], replay.learning_rates, rtol=1e-12)
        np.testing.assert_allclose(real["params"], replay.params, rtol=1e-10, atol=1e-12)


def _official_loop_in_pytorch(torch, values, draws, grads, *, tot_iter, log_iter,
                              threshold_iter, reset_prob, lr, scheduler_reset, momentum,
                              weight_decay):
    """main.py's loop with PyTorch's optimizer and scheduler, on a loss whose gradient is given.

    The snapshots are deep copies of ``state_dict()``, which is what ``load_state_dict`` did in
    PyTorch 1.12.1, the version the official ``env.yml`` pins (since PyTorch 2.1 it keeps
    references to the state tensors instead, pytorch/pytorch#106082).
    """
    import copy

    theta = torch.nn.Parameter(torch.zeros(grads.shape[1], dtype=torch.float64))
    optimizer = torch.optim.SGD([theta], lr=lr, momentum=momentum, weight_decay=weight_decay)
    scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=tot_iter)
    reset_flag, best_valid_loss, history = False, np.inf, [[np.inf, 0]]
    best = reset = None
    reset_iters, learning_rates, params = [], [], [theta.detach().numpy().copy()]
    for t in range(tot_iter):
        optimizer.zero_grad()
        (torch.as_tensor(grads[t]) * theta).sum().backward()
        optimizer.step()
        lr_used = optimizer.param_groups[0]["lr"]
        learning_rates.append(lr_used)
        if reset_flag and draws[t] < reset_prob:
            reset_iters.append(t)
            with torch.no_grad():
                theta.copy_(reset[0])
            optimizer.load_state_dict(copy.deepcopy(reset[1]))
            if scheduler_reset == 0:
                optimizer.param_groups[0]["lr"] = lr_used
        if t % log_iter == 0:
            if values[t // log_iter] < best_valid_loss:
                best_valid_loss = values[t // log_iter]
                best = (theta.detach().clone(), copy.deepcopy(optimizer.state_dict()))
                if reset_flag:
                    reset = best
            history.append([best_valid_loss, t])
            if not reset_flag and t > 0 and len(history) > threshold_iter // log_iter and (
                best_valid_loss == history[-threshold_iter // log_iter][0]
            ):
                reset_flag, reset = True, best
        scheduler.step()
        params.append(theta.detach().numpy().copy())
    return dict(reset_iters=reset_iters, learning_rates=np.array(learning_rates),
                params=np.stack(params))


# ------------------------------------------------------------------------------------------
# resetax against the replay.
# ------------------------------------------------------------------------------------------

_N, _E, _T = 1000, 10, 50
# 2**-4: the same number in float32 (resetax's comparison) and float64 (the official one).
_R = 0.0625
# resetax runs in float32, the replay in float64: over these 1000 momentum steps the largest
# difference measured was 3.8e-5 on parameters up to 61 in size (6e-7 relative, ~10 float32
# roundings). A momentum buffer not restored, or a reset missed, moves the next step by
# lr * 0.9 * O(1) ~ 0.1, far outside this.
_PARAMS_TOLERANCE = dict(rtol=1e-5, atol=1e-5)


def _validation_sequence(num_evals, seed, dips=(60, 75)):
    """Noisy U-shaped validation losses, with two late dips that are new bests.

    Stored as float32, so that resetax's float32 comparisons and the replay's float64 ones see
    the same numbers.
    """
    rng = np.random.default_rng(seed)
    j = np.arange(num_evals)
    values = 2.0 * np.exp(-j / 8) + 0.01 * j + 0.03 * rng.normal(size=num_evals)
    low = values.min()
    values[dips[0]], values[dips[1]] = low - 0.05, low - 0.10
    return values.astype(np.float32).astype(np.float64)


def _values_by_update(values, num_updates, log_iter):
    """resetax's ``value`` per update: evaluation ``j`` goes to update ``j * E + 1``, else NaN."""
    by_update = np.full(num_updates, np.nan, np.float32)
    by_update[np.arange(len(values)) * log_iter + 1] = values
    return by_update


def _uniforms(key, num_updates):
    """The uniform of each update's reset draw, split from the state's key as update_fn does."""

    def split(key, _):
        key, draw_key = jax.random.split(key)
        return key, jax.random.uniform(draw_key)

    _, draws = jax.lax.scan(split, key, length=num_updates)
    return np.asarray(draws, np.float64)


def _state_key(tx, params):
    return jax.random.wrap_key_data(resetax.find_resetting_state(tx.init(params)).key)


def _drive(tx, params, grads, values, learning_rate=None):
    """Runs ``tx`` over the updates inside one jitted scan; returns per-update records.

    ``learning_rate(state, step)``, if given, is recorded from the state before each update.
    """

    def step(carry, inputs):
        params, state = carry
        grad, value, t = inputs
        record = {} if learning_rate is None else {"learning_rate": learning_rate(state, t)}
        updates, state = tx.update(grad, state, params, value=value)
        params = resetax.apply_updates(params, updates, state)
        resetting = resetax.find_resetting_state(state)
        record.update(params=params, updates=updates, did_reset=resetting.did_reset,
                      active=resetting.active, checkpoint_updated=resetting.checkpoint_updated)
        return (params, state), record

    run = jax.jit(lambda carry, xs: jax.lax.scan(step, carry, xs))
    xs = (jnp.asarray(grads), jnp.asarray(values), jnp.arange(len(values), dtype=jnp.int32))
    _, records = run((params, tx.init(params)), xs)
    return jax.tree.map(np.asarray, records)


def _decisions(records):
    """Reset updates, checkpoint updates, each reset's checkpoint update, the activation."""
    resets = np.flatnonzero(records["did_reset"])
    takes = np.flatnonzero(records["checkpoint_updated"])
    sources = [int(takes[takes <= t].max()) for t in resets]
    active = np.flatnonzero(records["active"])
    return resets.tolist(), takes.tolist(), sources, int(active[0]) if active.size else None


def _check_decisions(records, trace, adaptive):
    resets, takes, sources, activation = _decisions(records)
    assert activation == trace.activation_iter + 1
    assert resets == trace.reset_iters
    # resetax's checkpoint taken at update s holds the parameters the official code validated
    # at iteration s - 1.
    assert [s - 1 for s in sources] == trace.reset_sources
    improvements = [s - 1 for s in takes if s > 0]  # update 0 snapshots the initial params
    if adaptive:
        assert improvements == trace.best_iters
    else:  # the checkpoint stops at the best before the activation; the reported model does not
        assert improvements == [b for b in trace.best_iters if b < trace.activation_iter]


@pytest.mark.parametrize("adaptive", [True, False])
def test_core_transform_matches_the_official_loop(adaptive):
    # SGD with momentum 0.9, weight decay 5e-4 and a cosine schedule, restoring momentum on a
    # reset (reset_inner_state=True is --opt-reset 1); the learning rate continues
    # (--scheduler-reset 0). Same resets, same checkpoints, same parameters at every step.
    values = _validation_sequence(len(range(0, _N, _E)), seed=0)
    grads = np.random.default_rng(1).normal(size=(_N, 3)).astype(np.float32)
    params = jnp.zeros(3, jnp.float32)
    inner = optax.chain(optax.add_decayed_weights(5e-4),
                        optax.sgd(optax.cosine_decay_schedule(0.1, _N), momentum=0.9))
    tx = resetax.stochastic_resetting(inner, _R, key=3, patience=official_patience_steps(_T, _E),
                                      adaptive=adaptive, reset_inner_state=True)
    draws = _uniforms(_state_key(tx, params), _N)
    trace = official_loop(values, draws, tot_iter=_N, log_iter=_E, threshold_iter=_T,
                          reset_prob=_R, lr=0.1, scheduler_reset=0, adaptive=adaptive,
                          momentum=0.9, weight_decay=5e-4, grads=grads.astype(np.float64))
    # The sequence exercises the paths under test: resets, and new bests after the switch.
    assert len(trace.reset_iters) >= 10
    assert any(b > trace.activation_iter for b in trace.best_iters)

    records = _drive(tx, params, grads, _values_by_update(values, _N, _E))
    _check_decisions(records, trace, adaptive)
    np.testing.assert_allclose(records["params"], trace.params[1:], **_PARAMS_TOLERANCE)


def test_core_transform_draws_one_uniform_per_update_from_its_key():
    tx = resetax.stochastic_resetting(optax.sgd(0.1), 0.3, key=7, patience=None)
    params = jnp.zeros(2)
    records = _drive(tx, params, np.ones((200, 2), np.float32), np.full(200, np.nan, np.float32))
    draws = _uniforms(_state_key(tx, params), 200)
    np.testing.assert_array_equal(records["did_reset"], draws < 0.3)


# The trainer's transformation (resetax.experiment): the glue to the experiment package is here
# only, so that a renamed config field or factory is changed in one place.


def _trainer_transform(params, **fields):
    """The trainer's optimizer and its ``learning_rate(opt_state, step)`` metric."""
    from resetax.experiment import optimization
    from resetax.experiment.config import get_config

    config = get_config("quick", num_steps=_N, eval_every=_E, reset_prob=_R, seed=0,
                        schedule="cosine", learning_rate=0.1, reset_inner_state=True, **fields)
    return (optimization.make_optimizer(config, params),
            lambda opt_state, step: optimization.learning_rate(config, opt_state, step))


def _trainer_run(params, grads, values, **fields):
    tx, learning_rate = _trainer_transform(params, **fields)
    draws = _uniforms(_state_key(tx, params), _N)
    records = _drive(tx, params, grads, _values_by_update(values, _N, _E), learning_rate)
    return records, draws


def _learning_rates_outside_resets(records, trace):
    """With gradient 1 and no momentum an update is minus the learning rate (resets aside).

    Returns the steps that reset in neither loop, resetax's rates there and the official ones.
    """
    kept = ~records["did_reset"]
    kept[trace.reset_iters] = False
    steps = np.flatnonzero(kept)
    return steps, -records["updates"][steps, 0].astype(np.float64), trace.learning_rates[steps]


def test_trainer_transform_matches_the_official_loop():
    # The transformation the trainer builds, given the patience that corresponds to the
    # official threshold, decides as the official loop and restores momentum as it does.
    values = _validation_sequence(len(range(0, _N, _E)), seed=0)
    grads = np.random.default_rng(1).normal(size=(_N, 3)).astype(np.float32)
    params = jnp.zeros(3, jnp.float32)
    records, draws = _trainer_run(params, grads, values, momentum=0.9, weight_decay=5e-4,
                                  patience=official_patience_steps(_T, _E))
    trace = official_loop(values, draws, tot_iter=_N, log_iter=_E, threshold_iter=_T,
                          reset_prob=_R, lr=0.1, scheduler_reset=0, momentum=0.9,
                          weight_decay=5e-4, grads=grads.astype(np.float64))
    _check_decisions(records, trace, adaptive=True)
    np.testing.assert_allclose(records["params"], trace.params[1:], **_PARAMS_TOLERANCE)


def test_trainer_learning_rate_continues_through_resets():
    # --scheduler-reset 0: the schedule's step count keeps counting through a reset, as the
    # optax schedule's integer count does under reset_inner_state=True.
    values = _validation_sequence(len(range(0, _N, _E)), seed=0)
    params = jnp.zeros(1, jnp.float32)
    records, draws = _trainer_run(params, np.ones((_N, 1), np.float32), values,
                                  patience=official_patience_steps(_T, _E), momentum=0.0)
    trace = official_loop(values, draws, tot_iter=_N, log_iter=_E, threshold_iter=_T,
                          reset_prob=_R, lr=0.1, scheduler_reset=0)
    assert records["did_reset"].sum() >= 10
    _, ours, official = _learning_rates_outside_resets(records, trace)
    # float32 cosine against PyTorch's float64 recursion: at most 1.5e-8 apart (measured), so
    # atol 1e-7 for a peak of 0.1; any step of the schedule moves it by >= 2.5e-7.
    np.testing.assert_allclose(ours, official, rtol=1e-5, atol=1e-7)


def test_trainer_learning_rate_restore_matches_scheduler_reset_1():
    values = _validation_sequence(len(range(0, _N, _E)), seed=0)
    params = jnp.zeros(1, jnp.float32)
    records, draws = _trainer_run(params, np.ones((_N, 1), np.float32), values,
                                  patience=official_patience_steps(_T, _E), momentum=0.0,
                                  schedule_on_reset="restore")
    trace = official_loop(values, draws, tot_iter=_N, log_iter=_E, threshold_iter=_T,
                          reset_prob=_R, lr=0.1, scheduler_reset=1)
    assert np.flatnonzero(records["did_reset"]).tolist() == trace.reset_iters
    steps, ours, official = _learning_rates_outside_resets(records, trace)
    # float32 rounds 1 + cos(pi t / N) to ~2**-23 absolute, a relative error of ~1e-7 / f(t)
    # that grows towards the end of the schedule, where f(t) = 1 + cos(pi t / N) -> 0; a restored
    # rate carries it, scaled up with the rate. Allowed: 1e-5 relative plus four such roundings.
    # scale_by_restorable_schedule uses 10% of this; restoring the rate one step off moves it by
    # ~1e-3 relative mid-schedule, not restoring it by a factor of 2.
    f = 1 + np.cos(np.pi * steps / _N)
    np.testing.assert_array_less(np.abs(ours - official), official * (1e-5 + 4 * 2.0**-23 / f))
    # The trainer's learning_rate metric is the rate each update used, reset steps included
    # (the official iteration takes its step at that rate before it resets).
    f = 1 + np.cos(np.pi * np.arange(_N) / _N)
    np.testing.assert_array_less(np.abs(records["learning_rate"] - trace.learning_rates),
                                 trace.learning_rates * (1e-5 + 4 * 2.0**-23 / f))


def test_trainer_learning_rate_metric_is_the_schedule_with_continue():
    values = _validation_sequence(len(range(0, _N, _E)), seed=0)
    params = jnp.zeros(1, jnp.float32)
    records, _ = _trainer_run(params, np.ones((_N, 1), np.float32), values, momentum=0.0,
                              patience=official_patience_steps(_T, _E))
    assert records["did_reset"].sum() >= 10
    kept = ~records["did_reset"]
    np.testing.assert_array_equal(records["learning_rate"][kept], -records["updates"][kept, 0])


# The presets against the official command line (README.md of the official repository):
#   --model resnet34 --opt sgd --best-metric loss --opt-reset 1 --tot-iter 50000 --log-iter 10
#   --lr 0.1 --lr-schedule cosineannealing --weight-decay 0.0005 --batch-size 256
#   --reset-prob 0.001 --threshold-iter 5000 --warmup-iter 0 --momentum 0.9 --adaptive 1
#   --loss-type ce    (and the defaults --scheduler-reset 1 --noisy-valid 1)

_PAPER_PRESETS = ["setting2-cifar10", "setting2-cifar100", "cifar10n-aggre", "cifar10n-worse",
                  "cifar10n-random1", "cifar100n"]


@pytest.mark.parametrize("preset", _PAPER_PRESETS)
def test_paper_presets_match_the_official_command(preset):
    from resetax.experiment.config import get_config

    config = get_config(preset)
    assert (config.model, config.optimizer, config.loss, config.select_by) == (
        "resnet34", "sgd", "ce", "loss")
    assert (config.num_steps, config.schedule, config.learning_rate) == (50_000, "cosine", 0.1)
    assert (config.momentum, config.weight_decay, config.batch_size) == (0.9, 5e-4, 256)
    assert (config.reset_prob, config.adaptive, config.augment) == (1e-3, True, True)


@pytest.mark.parametrize("preset", _PAPER_PRESETS)
def test_paper_presets_follow_the_official_flags(preset):
    from resetax.experiment.config import get_config

    config = get_config(preset)
    assert config.reset_inner_state
    assert config.patience == official_patience_steps(5000, 10)
    assert config.eval_every == 10
    assert config.schedule_on_reset == "restore"
    assert config.val_loss == "train"
    assert config.batch_sampling == "iid"
    assert config.init == "pytorch"


def test_setting1_preset_follows_the_official_data():
    from resetax.experiment.config import get_config

    config = get_config("setting1")
    assert (config.num_per_class, config.subset) == (50, "first")
    assert (config.augment, config.pad_mode) == (True, "reflect")
    assert (config.val_source, config.val_size, config.clean_validation) == (
        "train_unused", 10_000, True)
    assert config.patience == official_patience_steps(1000, config.eval_every)
