"""Training and evaluation throughput (images/s) of the PyTorch equivalent of the ResNet steps.

The PyTorch peer of ``benchmarks/throughput.py``: the CIFAR ResNet of ``resetax/models/resnet.py``
(3x3 stem, no max-pool, BasicBlock stages, projection shortcuts, the same initializers), trained
with the step the trainer fuses: batch sampling from uint8 images, random crop (zero padding 4)
and flip, normalization, forward, backward, SGD with momentum 0.9 and weight decay 5e-4 under a
cosine schedule, BatchNorm statistics. The resetting draw is left out: it is one host-side random
number per step, and with the setting-2 patience no reset happens in the timed steps. Evaluation
is a ``torch.no_grad()`` pass in batches. Same synthetic CIFAR-shaped source (random uint8 images,
never used for accuracy) and output table as ``throughput.py``.

    python benchmarks/throughput_torch.py [--batch-size 256] [--steps 20] [--threads 2]
"""

from __future__ import annotations

import argparse
import math
import os
import time

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

CIFAR10_MEAN = (0.4914, 0.4822, 0.4465)  # resetax.data.CIFAR10_MEAN / _STD
CIFAR10_STD = (0.2470, 0.2435, 0.2616)
STAGE_SIZES = {"resnet18": (2, 2, 2, 2), "resnet34": (3, 4, 6, 3)}


class BasicBlock(nn.Module):
    """Two 3x3 conv-BN layers with an identity or projection (1x1 conv + BN) shortcut."""

    def __init__(self, in_features: int, features: int, stride: int):
        super().__init__()
        self.conv1 = nn.Conv2d(in_features, features, 3, stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(features)
        self.conv2 = nn.Conv2d(features, features, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(features)
        self.shortcut = nn.Identity()
        if stride != 1 or in_features != features:
            self.shortcut = nn.Sequential(
                nn.Conv2d(in_features, features, 1, stride, bias=False), nn.BatchNorm2d(features))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = F.relu(self.bn1(self.conv1(x)))
        y = self.bn2(self.conv2(y))
        return F.relu(y + self.shortcut(x))


class ResNet(nn.Module):
    """CIFAR ResNet: 3x3 stride-1 stem, BasicBlock stages, global average pool, Linear.

    BatchNorm keeps PyTorch's defaults, which resetax's ``batch_norm`` copies (decay 0.9,
    epsilon 1e-5). Convolutions start Kaiming-normal (fan-out), the Linear layer LeCun-normal
    truncated at 2 std with a zero bias: Flax's initializers in resetax's model.
    """

    def __init__(self, stage_sizes, num_classes: int, num_filters: int = 64):
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, num_filters, 3, padding=1, bias=False),
                                  nn.BatchNorm2d(num_filters), nn.ReLU())
        blocks, in_features = [], num_filters
        for i, num_blocks in enumerate(stage_sizes):
            for j in range(num_blocks):
                features = num_filters * 2**i
                blocks.append(BasicBlock(in_features, features, 2 if i > 0 and j == 0 else 1))
                in_features = features
        self.blocks = nn.Sequential(*blocks)
        self.fc = nn.Linear(in_features, num_classes)
        with torch.no_grad():
            for module in self.modules():
                if isinstance(module, nn.Conv2d):
                    nn.init.kaiming_normal_(module.weight, mode="fan_out", nonlinearity="relu")
            # 0.8796...: std of a unit normal truncated to [-2, 2] (Flax's correction).
            std = math.sqrt(1.0 / in_features) / 0.87962566103423978
            nn.init.trunc_normal_(self.fc.weight, std=std, a=-2 * std, b=2 * std)
            nn.init.zeros_(self.fc.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.blocks(self.stem(x))
        return self.fc(x.mean(dim=(2, 3)))


def preprocess(images: torch.Tensor, memory_format: torch.memory_format) -> torch.Tensor:
    """uint8 NHWC -> normalized float32 NCHW, as resetax's ``normalize``."""
    mean = torch.tensor(CIFAR10_MEAN).view(1, 3, 1, 1)
    std = torch.tensor(CIFAR10_STD).view(1, 3, 1, 1)
    x = images.permute(0, 3, 1, 2).float().div_(255)
    return ((x - mean) / std).contiguous(memory_format=memory_format)


def augment(images: torch.Tensor, generator: torch.Generator, padding: int = 4) -> torch.Tensor:
    """Random crop after zero padding, then a random horizontal flip (uint8 NHWC)."""
    n, h, w, _ = images.shape
    padded = F.pad(images, (0, 0, padding, padding, padding, padding))
    offsets = torch.randint(0, 2 * padding + 1, (n, 2), generator=generator).tolist()
    flips = torch.rand(n, generator=generator).lt(0.5).tolist()
    out = torch.stack([padded[i, dy:dy + h, dx:dx + w] for i, (dy, dx) in enumerate(offsets)])
    flipped = out.flip(2)
    mask = torch.tensor(flips).view(n, 1, 1, 1)
    return torch.where(mask, flipped, out)


def measure(model_name: str, args, data) -> None:
    train_x, train_y, eval_x, eval_y = data
    memory_format = torch.channels_last if args.channels_last else torch.contiguous_format
    model = ResNet(STAGE_SIZES[model_name], 10).to(memory_format=memory_format)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9, weight_decay=5e-4)
    schedule = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=50_000)
    generator = torch.Generator().manual_seed(0)

    def train_step():
        model.train()
        indices = torch.randint(0, len(train_y), (args.batch_size,), generator=generator)
        x = preprocess(augment(train_x[indices], generator), memory_format)
        optimizer.zero_grad()
        loss = F.cross_entropy(model(x), train_y[indices])
        loss.backward()
        optimizer.step()
        schedule.step()
        return loss.item()

    def evaluate():
        model.eval()
        correct = 0
        with torch.no_grad():
            for start in range(0, len(eval_y), args.eval_batch_size):
                x = preprocess(eval_x[start:start + args.eval_batch_size], memory_format)
                y = eval_y[start:start + args.eval_batch_size]
                correct += int((model(x).argmax(1) == y).sum())
        return correct

    for _ in range(args.warmup):  # first-call allocations and kernel selection
        train_step()
    start = time.perf_counter()
    for _ in range(args.steps):
        train_step()
    train_rate = args.steps * args.batch_size / (time.perf_counter() - start)
    evaluate()
    start = time.perf_counter()
    evaluate()
    eval_rate = len(eval_y) / (time.perf_counter() - start)
    print(f"| {model_name} | {args.batch_size} | {train_rate:,.0f} | {eval_rate:,.0f} |",
          flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--warmup", type=int, default=2, help="untimed steps first")
    parser.add_argument("--num-train", type=int, default=50_000)
    parser.add_argument("--num-eval", type=int, default=10_000)
    parser.add_argument("--eval-batch-size", type=int, default=1000)
    parser.add_argument("--models", nargs="+", default=["resnet18", "resnet34"],
                        choices=sorted(STAGE_SIZES))
    parser.add_argument("--threads", type=int, default=os.cpu_count(),
                        help="torch.set_num_threads (default: all cores)")
    parser.add_argument("--channels-last", action="store_true",
                        help="NHWC memory format for the model and its inputs")
    args = parser.parse_args()
    for name in ("batch_size", "steps", "num_train", "num_eval", "eval_batch_size", "threads"):
        if getattr(args, name) < 1:
            raise ValueError(f"{name} must be >= 1, got {getattr(args, name)}.")
    if args.warmup < 0:
        raise ValueError(f"warmup must be >= 0, got {args.warmup}.")
    torch.set_num_threads(args.threads)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads of {os.cpu_count()} "
          f"cores, {'channels_last' if args.channels_last else 'NCHW'}")
    rng = np.random.default_rng(0)
    data = (torch.from_numpy(rng.integers(0, 256, (args.num_train, 32, 32, 3), dtype=np.uint8)),
            torch.from_numpy(rng.integers(0, 10, args.num_train)),
            torch.from_numpy(rng.integers(0, 256, (args.num_eval, 32, 32, 3), dtype=np.uint8)),
            torch.from_numpy(rng.integers(0, 10, args.num_eval)))
    print("| model | global batch | train images/s | eval images/s |")
    print("|---|---|---|---|")
    for name in args.models:
        measure(name, args, data)


if __name__ == "__main__":
    main()
