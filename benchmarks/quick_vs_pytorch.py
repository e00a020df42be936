"""Loop and whole-process time of the ``quick`` protocol: resetax against a PyTorch loop.

The protocol is resetax's ``quick`` preset: MNIST-1D with 40% symmetric label noise, a clean 10%
validation split, the 1-D CNN, SGD (lr 0.05, momentum 0.9), batch 32, validation and test
evaluation every 20 steps, ``reset_prob`` 0.03 after 200 steps without a better validation loss,
adaptive checkpoint = best-validation parameters.

Each run is a subprocess of its own, so that the whole-process time includes interpreter start,
imports and (for resetax) compilation:

- resetax: ``python -m resetax.experiment.cli train --preset quick --no-baseline --quiet``; its
  loop time is read from ``summary.json`` (``wall_time_s``, which includes the first dispatch's
  compilation, unless a more precise field named by ``--resetax-loop-key`` is present).
- PyTorch: this script in ``--worker torch`` mode, a loop written like the authors' official code
  (``qodudrud/stochastic-resetting``, ``main.py``): a host-side NumPy ``rand() < r`` draw per
  step once resetting is on, best and checkpoint kept as module copies updated with
  ``load_state_dict``, optimizer state snapshots (``copy.deepcopy`` of ``state_dict()``) restored
  on a reset (``--opt-reset 1``), evaluation under ``torch.no_grad()`` over the val and test sets.
  It trains on the very arrays resetax trains on (written to an ``.npz`` by this script).

The two are interleaved A/B/A/B for ``--pairs`` pairs; the script prints per-pair times, their
medians, min and max, and the median of the per-pair ratios (PyTorch time / resetax time, so > 1
means resetax is faster), then each run's final numbers and where the PyTorch loop's time went.

    python benchmarks/quick_vs_pytorch.py [--pairs 5] [--num-steps 4000] [--torch-loop lean]

``--torch-loop official`` adds the official code's per-step extras: anomaly detection around the
step, ``gc.collect()`` after every step and evaluation batch, a fresh ``DataLoader`` iterator per
step, and the norm of all weights every step. The default ``lean`` loop leaves them out, which
makes it the faster, harder baseline.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
ARRAYS = tuple(f"{split}_{part}" for split in ("train", "val", "test") for part in "xy")
EVAL_BATCH_SIZE = 4096  # the official code's --test-batch-size: each eval set is one batch
# The last two are the official loop's per-step extras, zero in the lean loop.
PROFILE_PARTS = ("train_step", "reset", "eval", "best_copy", "checkpoint_copy", "weights_norm",
                 "gc_collect")


# --------------------------------------------------------------------------- PyTorch worker


def make_torch_cnn1d(num_classes: int, length: int, channels=(32, 32, 32),
                     kernel_size: int = 5, stride: int = 2):
    """resetax's ``CNN1D`` in PyTorch: ``[Conv1d 'SAME' -> BatchNorm -> ReLU] x 3 -> Linear``.

    Flax's 'SAME' padding of a strided convolution pads ``(total // 2, total - total // 2)``,
    asymmetric for these sizes, so it is an explicit pad here. BatchNorm uses the same decay
    (torch momentum 0.1 = Flax momentum 0.9) and epsilon. Weights start as Flax's default
    (LeCun normal, truncated at 2 std), biases at zero. Only the flatten order differs (channel
    major here, position major in Flax): a permutation of the Linear layer's inputs.
    """
    import torch
    from torch import nn

    layers, in_channels = [], 1
    for width in channels:
        out_length = -(-length // stride)
        total = max((out_length - 1) * stride + kernel_size - length, 0)
        layers += [nn.ConstantPad1d((total // 2, total - total // 2), 0.0),
                   nn.Conv1d(in_channels, width, kernel_size, stride),
                   nn.BatchNorm1d(width, eps=1e-5, momentum=0.1), nn.ReLU()]
        in_channels, length = width, out_length
    layers += [nn.Flatten(), nn.Linear(in_channels * length, num_classes)]
    model = nn.Sequential(*layers)
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, (nn.Conv1d, nn.Linear)):
                fan_in = module.weight[0].numel()
                # 0.8796...: std of a unit normal truncated to [-2, 2] (Flax's correction).
                std = math.sqrt(1.0 / fan_in) / 0.87962566103423978
                nn.init.trunc_normal_(module.weight, std=std, a=-2 * std, b=2 * std)
                nn.init.zeros_(module.bias)
    return model


class _Timer:
    """Total seconds and count per part of the loop; torch runs synchronously on the CPU."""

    def __init__(self):
        self.total = dict.fromkeys(PROFILE_PARTS, 0.0)
        self.count = dict.fromkeys(PROFILE_PARTS, 0)

    def add(self, part: str, seconds: float) -> None:
        self.total[part] += seconds
        self.count[part] += 1


def torch_worker(args) -> dict:
    """Trains the quick protocol in PyTorch; returns the results and the loop's time profile."""
    import copy
    import gc

    import numpy as np
    import torch
    import torch.nn.functional as F
    from torch.utils.data import DataLoader, TensorDataset

    with np.load(args.data) as arrays:
        data = {k: torch.from_numpy(arrays[k]) for k in arrays.files if k in ARRAYS}
        protocol = json.loads(str(arrays["protocol"]))
    torch.set_num_threads(args.torch_threads)
    torch.manual_seed(protocol["seed"])
    reset_rng = np.random.default_rng(protocol["seed"])  # the host-side reset draw
    official = args.torch_loop == "official"
    num_classes = protocol["num_classes"]
    # [N, 40] signals as [N, 1, 40]: one input channel.
    train_set = TensorDataset(data["train_x"][:, None], data["train_y"].long())
    val_set = TensorDataset(data["val_x"][:, None], data["val_y"].long())
    test_set = TensorDataset(data["test_x"][:, None], data["test_y"].long())
    generator = torch.Generator().manual_seed(protocol["seed"])
    train_loader = DataLoader(train_set, batch_size=protocol["batch_size"], shuffle=True,
                              drop_last=True, generator=generator)
    val_loader = DataLoader(val_set, batch_size=EVAL_BATCH_SIZE)
    test_loader = DataLoader(test_set, batch_size=EVAL_BATCH_SIZE)

    model = make_torch_cnn1d(num_classes, data["train_x"].shape[1])
    optimizer = torch.optim.SGD(model.parameters(), lr=protocol["learning_rate"],
                                momentum=protocol["momentum"])
    best_net, reset_net = copy.deepcopy(model), copy.deepcopy(model)
    # Optimizer.load_state_dict keeps references to the tensors it is given (torch 2.13), and SGD
    # updates its momentum buffers in place, so a snapshot is a deep copy or it is no snapshot.
    best_opt = reset_opt = copy.deepcopy(optimizer.state_dict())

    batches = iter(train_loader)

    def next_batch():
        nonlocal batches
        if official:  # main.py: next(iter(trainloader)), a fresh shuffled iterator every step
            return next(iter(train_loader))
        try:
            return next(batches)
        except StopIteration:  # the next epoch, reshuffled
            batches = iter(train_loader)
            return next(batches)

    def train_step():
        model.train()
        x, y = next_batch()
        optimizer.zero_grad()
        loss = F.cross_entropy(model(x), y)
        loss.backward()
        optimizer.step()
        return loss.item()

    def evaluate(net, loader):
        net.eval()
        loss_sum, correct, total = 0.0, 0, 0
        with torch.no_grad():
            for x, y in loader:
                logits = net(x)
                loss_sum += F.cross_entropy(logits, y, reduction="sum").item()
                correct += int((logits.argmax(1) == y).sum())
                total += len(y)
                if official:
                    gc.collect()
        return loss_sum / total, correct / total

    timer = _Timer()
    active, num_resets = False, 0
    best_val_loss, best_step = math.inf, -1
    loop_start = time.perf_counter()
    for step in range(protocol["num_steps"]):
        if official:
            start = time.perf_counter()
            torch.norm(torch.cat([p.detach().view(-1) for p in model.parameters()]))
            timer.add("weights_norm", time.perf_counter() - start)
        start = time.perf_counter()
        with torch.autograd.set_detect_anomaly(official):
            train_step()
        timer.add("train_step", time.perf_counter() - start)
        if official:
            start = time.perf_counter()
            gc.collect()
            timer.add("gc_collect", time.perf_counter() - start)

        if active and reset_rng.random() < protocol["reset_prob"]:
            start = time.perf_counter()
            model.load_state_dict(reset_net.state_dict())
            if protocol["opt_reset"]:
                optimizer.load_state_dict(copy.deepcopy(reset_opt))
            num_resets += 1
            timer.add("reset", time.perf_counter() - start)

        if step % protocol["eval_every"]:
            continue
        start = time.perf_counter()
        val_loss, _ = evaluate(model, val_loader)
        evaluate(model, test_loader)
        timer.add("eval", time.perf_counter() - start)
        if val_loss < best_val_loss:
            start = time.perf_counter()
            best_val_loss, best_step = val_loss, step
            best_net.load_state_dict(model.state_dict())
            best_opt = copy.deepcopy(optimizer.state_dict())
            if protocol["adaptive"] and active:
                reset_net.load_state_dict(best_net.state_dict())
                reset_opt = copy.deepcopy(best_opt)
            timer.add("best_copy", time.perf_counter() - start)
        if not active and step - best_step >= protocol["patience"]:
            start = time.perf_counter()
            active = True
            reset_net.load_state_dict(best_net.state_dict())
            reset_opt = copy.deepcopy(best_opt)
            timer.add("checkpoint_copy", time.perf_counter() - start)
    loop_time = time.perf_counter() - loop_start

    _, test_acc = evaluate(best_net, test_loader)
    _, last_test_acc = evaluate(model, test_loader)
    return {
        "loop_time_s": loop_time,
        "test_acc": test_acc,
        "last_test_acc": last_test_acc,
        "best_val_loss": best_val_loss,
        "best_step": best_step,
        "num_resets": num_resets,
        "torch_version": torch.__version__,
        "torch_threads": torch.get_num_threads(),
        "torch_loop": args.torch_loop,
        "protocol": protocol,
        "profile": {p: [timer.total[p], timer.count[p]] for p in PROFILE_PARTS},
    }


# --------------------------------------------------------------------------- harness


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def write_data(config, path: Path) -> None:
    """The exact splits resetax trains on and the protocol, for the PyTorch worker.

    The worker reads everything from this file, so that it never imports jax or resetax and its
    whole-process time is PyTorch's own.
    """
    import numpy as np

    from resetax.experiment.data_input import load_data

    data = load_data(config)
    protocol = {field: getattr(config, field) for field in (
        "seed", "num_steps", "batch_size", "learning_rate", "momentum", "eval_every",
        "reset_prob", "patience", "adaptive")}
    if protocol["patience"] is None:  # resetting on from the start
        protocol["patience"] = 0
    # The official code's --opt-reset 1: a reset restores the momentum buffers too.
    protocol.update(num_classes=data.num_classes, opt_reset=True)
    np.savez(path, protocol=json.dumps(protocol),
             **{f"{name}_{part}": getattr(getattr(data, name), attr)
                for name in ("train", "val", "test")
                for part, attr in (("x", "inputs"), ("y", "labels"))})


def timed(cmd: list[str]) -> tuple[float, str]:
    """Runs a command; returns its whole-process wall time and stdout (fails loudly)."""
    start = time.perf_counter()
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True)
    elapsed = time.perf_counter() - start
    if proc.returncode:
        raise RuntimeError(f"{' '.join(cmd)} exited with {proc.returncode}:\n{proc.stderr}")
    return elapsed, proc.stdout


def run_resetax(args, run_dir: Path) -> dict:
    cmd = [sys.executable, "-m", "resetax.experiment.cli", "train", "--preset", "quick",
           "--no-baseline", "--quiet", "--run-dir", str(run_dir), "--seed", str(args.seed),
           "--num-steps", str(args.num_steps)]
    process_time, _ = timed(cmd)
    summary = json.loads((run_dir / "summary.json").read_text())
    key = args.resetax_loop_key if args.resetax_loop_key in summary else "wall_time_s"
    return dict(summary, loop_time_s=summary[key], loop_key=key, process_time_s=process_time)


def run_torch(args, data_path: Path) -> dict:
    cmd = [sys.executable, str(Path(__file__).resolve()), "--worker", "torch",
           "--data", str(data_path), "--torch-threads", str(args.torch_threads),
           "--torch-loop", args.torch_loop]
    process_time, stdout = timed(cmd)
    return dict(json.loads(stdout.strip().splitlines()[-1]), process_time_s=process_time)


def summarize(name: str, a: list[float], b: list[float]) -> None:
    ratios = [y / x for x, y in zip(a, b, strict=True)]
    print(f"| {name} | {statistics.median(a):.2f} [{min(a):.2f}, {max(a):.2f}] "
          f"| {statistics.median(b):.2f} [{min(b):.2f}, {max(b):.2f}] "
          f"| {statistics.median(ratios):.2f}x [{min(ratios):.2f}, {max(ratios):.2f}] |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pairs", type=int, default=5, help="A/B pairs (resetax, PyTorch)")
    parser.add_argument("--num-steps", type=int, default=None,
                        help="training steps (default: the quick preset's 4000)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--torch-threads", type=int, default=1,
                        help="torch.set_num_threads (default 1: see benchmarks/README.md)")
    parser.add_argument("--torch-loop", choices=("lean", "official"), default="lean")
    parser.add_argument("--resetax-loop-key", default="loop_time_s",
                        help="summary.json field with resetax's loop time, if present "
                             "(else wall_time_s)")
    parser.add_argument("--worker", choices=("torch",), help=argparse.SUPPRESS)
    parser.add_argument("--data", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.pairs < 1:
        raise ValueError(f"pairs must be >= 1, got {args.pairs}.")
    if args.torch_threads < 1:
        raise ValueError(f"torch_threads must be >= 1, got {args.torch_threads}.")

    if args.worker == "torch":
        print(json.dumps(torch_worker(args)))
        return

    from resetax.experiment.config import get_config

    config = get_config("quick", seed=args.seed,
                        **({} if args.num_steps is None else {"num_steps": args.num_steps}))
    args.num_steps = config.num_steps
    print(f"quick protocol: {config.dataset}, {config.model}, noise {config.noise} "
          f"{config.noise_rate}, clean val {config.clean_validation}, {config.num_steps} steps, "
          f"batch {config.batch_size}, lr {config.learning_rate}, momentum {config.momentum}, "
          f"eval every {config.eval_every}, reset_prob {config.reset_prob}, "
          f"patience {config.patience}, seed {config.seed}")
    import jax

    print(f"machine: {cpu_model()}, {os.cpu_count()} cores, load average "
          f"{' '.join(f'{x:.2f}' for x in os.getloadavg())}; Python {platform.python_version()}, "
          f"jax {jax.__version__} ({jax.default_backend()}), torch threads {args.torch_threads}, "
          f"torch loop {args.torch_loop}, XLA_FLAGS={os.environ.get('XLA_FLAGS', '')!r}")

    root = Path(tempfile.mkdtemp(prefix="resetax-vs-torch-"))
    data_path = root / "data.npz"
    write_data(config, data_path)
    runs = []
    print("\n| pair | resetax loop s | torch loop s | loop ratio | resetax process s "
          "| torch process s | process ratio | load avg |")
    print("|---|---|---|---|---|---|---|---|")
    for pair in range(args.pairs):
        load = os.getloadavg()[0]
        a = run_resetax(args, root / f"resetax-{pair}")
        b = run_torch(args, data_path)
        runs.append((a, b))
        print(f"| {pair} | {a['loop_time_s']:.2f} | {b['loop_time_s']:.2f} "
              f"| {b['loop_time_s'] / a['loop_time_s']:.2f}x | {a['process_time_s']:.2f} "
              f"| {b['process_time_s']:.2f} | {b['process_time_s'] / a['process_time_s']:.2f}x "
              f"| {load:.2f} |", flush=True)

    print(f"\ntorch {runs[0][1]['torch_version']}; resetax loop time from summary.json "
          f"'{runs[0][0]['loop_key']}'. Ratio = PyTorch time / resetax time (> 1: resetax "
          "faster). Median [min, max] over pairs:\n")
    print("| time | resetax s | PyTorch s | ratio, median of pairs [min, max] |")
    print("|---|---|---|---|")
    for name, key in (("training loop", "loop_time_s"), ("whole process", "process_time_s")):
        summarize(name, [a[key] for a, _ in runs], [b[key] for _, b in runs])
    loop_ratio = statistics.median(b["loop_time_s"] / a["loop_time_s"] for a, b in runs)
    print(f"\nloop speed-up target >= 3x: {'met' if loop_ratio >= 3 else 'NOT met'} "
          f"({loop_ratio:.2f}x)")

    print("\nSame protocol, different random streams (accuracy: best-validation model on test):\n")
    print("| pair | run | test acc % | last test acc % | best val loss | best step | resets |")
    print("|---|---|---|---|---|---|---|")
    for pair, (a, b) in enumerate(runs):
        for name, r in (("resetax", a), ("PyTorch", b)):
            print(f"| {pair} | {name} | {100 * r['test_acc']:.1f} | {100 * r['last_test_acc']:.1f} "
                  f"| {r['best_val_loss']:.4f} | {r['best_step']} | {r['num_resets']} |")

    print("\nPyTorch loop profile (mean over runs; per call, and share of the loop time):\n")
    print("| part | calls per run | ms per call | s per run | share of loop |")
    print("|---|---|---|---|---|")
    loop = statistics.mean(b["loop_time_s"] for _, b in runs)
    for part in PROFILE_PARTS:
        total = statistics.mean(b["profile"][part][0] for _, b in runs)
        count = statistics.mean(b["profile"][part][1] for _, b in runs)
        if not count:
            continue
        per_call = 1e3 * total / count
        print(f"| {part} | {count:.0f} | {per_call:.3f} | {total:.2f} "
              f"| {100 * total / loop:.1f}% |")
    rest = loop - sum(statistics.mean(b["profile"][p][0] for _, b in runs) for p in PROFILE_PARTS)
    print(f"| rest of the loop | | | {rest:.2f} | {100 * rest / loop:.1f}% |")
    print(f"\nruns in {root}")


if __name__ == "__main__":
    main()
