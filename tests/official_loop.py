"""The control flow of the authors' official training loop, re-implemented in NumPy for tests.

The official PyTorch code (GitHub ``qodudrud/stochastic-resetting``, ``main.py`` lines 181-298 at
commit ``ce7a9a6``) decides when to reset, which checkpoint to return to and which learning rate
to use on the host, around one SGD step per iteration. :func:`official_loop` replays exactly that
bookkeeping without a network: it is fed the validation values the official code would have
measured (one per evaluation) and one uniform draw per iteration, and it reports the iterations
that reset, the checkpoints, the activation and the learning rate of every step. Given synthetic
gradients it also replays PyTorch's SGD (momentum, weight decay) on a parameter vector, with the
optimizer state saved and restored as the official code does with ``--opt-reset 1``.

Iteration ``t`` of the official loop, in order (``E`` is ``--log-iter``):

1. one SGD step with the learning rate currently held by the optimizer (``train``);
2. if resetting is on, a draw: below ``--reset-prob`` the network *and* the optimizer state
   (momentum buffers and the learning rate) are loaded from the reset checkpoint; with
   ``--scheduler-reset 0`` the learning rate of this iteration is written back;
3. if ``t % E == 0``: validation of the parameters after steps 1-2; a strictly lower loss is a
   new best (network and optimizer state snapshotted; with ``--adaptive 1`` and resetting on, the
   reset checkpoint moves there); then, while resetting is off, it switches on when the best has
   not improved over the last ``ceil(T / E) - 1`` evaluations (``T`` is ``--threshold-iter``), and
   the reset checkpoint becomes the best;
4. ``CosineAnnealingLR.step()``: PyTorch's recursive form multiplies the optimizer's current
   learning rate by ``(1 + cos(pi (t + 1) / N)) / (1 + cos(pi t / N))``, so after a restore the
   schedule continues from the checkpoint's learning rate instead of its nominal value.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import NamedTuple

import numpy as np

# The patience that matches --threshold-iter lives beside the presets that use it; the tests
# import it from here, next to the loop it is checked against.
from resetax.experiment.config import official_patience_steps

__all__ = ["OfficialTrace", "official_loop", "official_patience_steps"]

LR_SCHEDULES = ("cosineannealing", "none")


class OfficialTrace(NamedTuple):
    """What the official loop did, iteration by iteration.

    Attributes:
      reset_iters: Iterations whose draw reset the network.
      reset_sources: For each reset, the evaluation iteration whose network it restored.
      best_iters: Evaluation iterations with a new best validation loss (the reported model).
      checkpoint_iters: Evaluation iterations at which the reset checkpoint was loaded: the
        activation, then (``adaptive``) every new best after it.
      activation_iter: Evaluation iteration at which resetting switched on, or ``None``.
      learning_rates: ``float64 [tot_iter]``, the learning rate of each iteration's SGD step.
      params: ``float64 [tot_iter + 1, D]``, the parameters before the first iteration and after
        each iteration (resets included), when gradients were given; else ``None``.
      momentum_buffers: ``float64 [tot_iter + 1, D]``, PyTorch's momentum buffer at the same
        moments (zeros before the first step), when gradients were given; else ``None``.
    """

    reset_iters: list[int]
    reset_sources: list[int]
    best_iters: list[int]
    checkpoint_iters: list[int]
    activation_iter: int | None
    learning_rates: np.ndarray
    params: np.ndarray | None
    momentum_buffers: np.ndarray | None


class _Snapshot(NamedTuple):
    """A ``state_dict`` copy: the network, the optimizer's momentum buffer and learning rate."""

    iteration: int
    params: np.ndarray | None
    buffer: np.ndarray | None
    learning_rate: float


def official_loop(
    val_values: Sequence[float],
    draws: Sequence[float],
    *,
    tot_iter: int,
    log_iter: int,
    threshold_iter: int,
    reset_prob: float,
    lr: float,
    lr_schedule: str = "cosineannealing",
    scheduler_reset: int = 1,
    adaptive: bool = True,
    warmup_iter: int = 0,
    momentum: float = 0.0,
    weight_decay: float = 0.0,
    grads: np.ndarray | None = None,
    init_params: np.ndarray | None = None,
) -> OfficialTrace:
    """Replays the official loop's decisions for given validation values and uniform draws.

    The official code draws ``np.random.rand()`` only while resetting is on; here ``draws[t]`` is
    the draw of iteration ``t``, used only then, so that another implementation can be fed the
    same random numbers step for step. ``--opt-reset 1`` is assumed: with 0 the official code
    stops with a ``NameError`` at its first best (``best_optimizer`` is only created when
    ``--opt-reset`` is set), so every published run restored the optimizer.

    Args:
      val_values: The validation loss of evaluation ``j``, taken at iteration ``j * log_iter``
        after that iteration's step and draw; at least ``ceil(tot_iter / log_iter)`` values.
      draws: ``tot_iter`` uniform numbers in ``[0, 1)``.
      tot_iter: ``--tot-iter``, iterations (the cosine schedule's length).
      log_iter: ``--log-iter``, iterations between evaluations.
      threshold_iter: ``--threshold-iter``, the paper's ``T``.
      reset_prob: ``--reset-prob``.
      lr: ``--lr``, the initial learning rate.
      lr_schedule: ``"cosineannealing"`` (``CosineAnnealingLR(T_max=tot_iter)``) or ``"none"``.
      scheduler_reset: ``--scheduler-reset``: 1 (the default) restores the checkpoint's learning
        rate on a reset, 0 keeps the current one.
      adaptive: ``--adaptive``: the reset checkpoint follows every new best once resetting is on.
      warmup_iter: ``--warmup-iter`` (0 in the published command).
      momentum: SGD momentum; used only with ``grads``.
      weight_decay: SGD weight decay (added to the gradient, as ``torch.optim.SGD`` does); used
        only with ``grads``.
      grads: optional ``[tot_iter, D]`` gradient of each iteration's loss, independent of the
        parameters; with it the parameters and momentum buffers are replayed too.
      init_params: ``[D]`` parameters before the first iteration (zeros by default).

    Returns:
      An :class:`OfficialTrace`.

    Examples:
      >>> trace = official_loop([5.0, 4.0, 4.5, 4.2, 3.9, 4.0], [0.9] * 60, tot_iter=60,
      ...                       log_iter=10, threshold_iter=30, reset_prob=0.5, lr=0.1)
      >>> trace.best_iters, trace.activation_iter, trace.reset_iters
      ([0, 10, 40], 30, [])
    """
    num_evals = len(range(0, tot_iter, log_iter))
    if len(val_values) < num_evals:
        raise ValueError(
            f"val_values must hold at least {num_evals} values, got {len(val_values)}.")
    if len(draws) < tot_iter:
        raise ValueError(f"draws must hold at least tot_iter={tot_iter} values, got {len(draws)}.")
    if lr_schedule not in LR_SCHEDULES:
        raise ValueError(f"lr_schedule must be one of {list(LR_SCHEDULES)}, got {lr_schedule!r}.")
    if scheduler_reset not in (0, 1):
        raise ValueError(f"scheduler_reset must be one of [0, 1], got {scheduler_reset!r}.")

    replay = grads is not None
    if replay:
        grads = np.asarray(grads, np.float64)
        params = (np.zeros(grads.shape[1]) if init_params is None
                  else np.array(init_params, np.float64))
        buffer = None  # torch.optim.SGD creates the momentum buffer at the first step
        params_history = [params.copy()]
        buffer_history = [np.zeros_like(params)]
    group_lr = float(lr)  # optimizer.param_groups[0]["lr"]
    last_epoch = 0  # the scheduler's step count
    learning_rates = np.empty(tot_iter)

    reset_flag = False
    best_valid_loss = math.inf
    loss_valid_best = [[math.inf, 0]]  # results["loss_valid_best"], with its sentinel first
    best = reset = None
    reset_iters, reset_sources, best_iters, checkpoint_iters = [], [], [], []
    activation_iter = None

    def snapshot(iteration: int) -> _Snapshot:
        if not replay:
            return _Snapshot(iteration, None, None, group_lr)
        return _Snapshot(iteration, params.copy(), None if buffer is None else buffer.copy(),
                         group_lr)

    for t in range(tot_iter):
        # 1. train(): one SGD step at the optimizer's learning rate.
        learning_rates[t] = group_lr
        if replay:
            d_p = grads[t] + weight_decay * params
            if momentum:
                buffer = d_p.copy() if buffer is None else momentum * buffer + d_p
                d_p = buffer
            params = params - group_lr * d_p

        # 2. The reset draw, after the step: a reset discards that step's parameters and
        # optimizer state.
        if reset_flag and draws[t] < reset_prob:
            reset_iters.append(t)
            reset_sources.append(reset.iteration)
            if replay:
                params = reset.params.copy()
                buffer = None if reset.buffer is None else reset.buffer.copy()
            group_lr = reset.learning_rate if scheduler_reset else learning_rates[t]

        # 3. Validation, best tracking and the activation check.
        if t % log_iter == 0:
            valid_loss = float(val_values[t // log_iter])
            if valid_loss < best_valid_loss:
                best_valid_loss = valid_loss
                best_iters.append(t)
                best = snapshot(t)
                if adaptive and reset_flag:
                    reset = best
                    checkpoint_iters.append(t)
            if t >= warmup_iter:
                loss_valid_best.append([best_valid_loss, t])
            if not reset_flag:
                # main.py indexes with -threshold_iter//log_iter, which Python reads as
                # (-threshold_iter)//log_iter: the threshold rounds up to whole evaluations.
                metric_flag = (
                    len(loss_valid_best) > threshold_iter // log_iter
                    and best_valid_loss == loss_valid_best[-threshold_iter // log_iter][0]
                )
                if t > warmup_iter and metric_flag:
                    reset_flag = True
                    activation_iter = t
                    reset = best
                    checkpoint_iters.append(t)

        # 4. The scheduler steps at the end of every iteration.
        if lr_schedule == "cosineannealing":
            last_epoch += 1
            group_lr = _cosine_annealing_step(group_lr, last_epoch, tot_iter, lr)
        if replay:
            params_history.append(params.copy())
            buffer_history.append(np.zeros_like(params) if buffer is None else buffer.copy())

    return OfficialTrace(
        reset_iters=reset_iters,
        reset_sources=reset_sources,
        best_iters=best_iters,
        checkpoint_iters=checkpoint_iters,
        activation_iter=activation_iter,
        learning_rates=learning_rates,
        params=np.stack(params_history) if replay else None,
        momentum_buffers=np.stack(buffer_history) if replay else None,
    )


def _cosine_annealing_step(group_lr: float, epoch: int, t_max: int, base_lr: float) -> float:
    """``torch.optim.lr_scheduler.CosineAnnealingLR.get_lr`` with ``eta_min=0``: recursive."""
    if epoch == 0:
        return group_lr
    if (epoch - 1 - t_max) % (2 * t_max) == 0:
        return group_lr + base_lr * (1 - math.cos(math.pi / t_max)) / 2
    return (
        (1 + math.cos(math.pi * epoch / t_max)) / (1 + math.cos(math.pi * (epoch - 1) / t_max))
        * group_lr
    )
