"""Training-step throughput of the scratch CNN under the CPU speed levers of issue 12.

Each variant (input size, memory format, bfloat16 autocast, torch.compile, network width) trains the
same model on the same fixed synthetic batches (random pixels: the cost of a step does not depend on
what the pixels show). Variants take turns round by round in a rotating order, so a slow spell on the
machine falls on all of them; the result is the median images/s over the rounds with the range.

It measures speed only. Whether accuracy holds under a lever is measured by training
(``time_to_accuracy.py``), not here.

    .venv/bin/python benchmarks/scratch_levers.py --threads 2 --rounds 5 --json /tmp/levers.json
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import os
import statistics
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from hostinfo import cpu_model  # noqa: E402  (benchmarks/hostinfo.py, beside this script)

from research.models.scratch import ScratchCNN  # noqa: E402

log = logging.getLogger("scratch_levers")


@dataclass(frozen=True)
class Variant:
    name: str
    size: int
    widths: tuple[int, ...] = (32, 64, 128, 256)
    bf16: bool = False
    channels_last: bool = False
    compile: bool = False
    batch: int | None = None  # None: --batch-size
    threads: int | None = None  # None: --threads
    flush_denormal: bool = False


# The bfloat16 set (issue 12, measured on an AVX-512 BF16 CPU) ...
BF16_VARIANTS = [
    Variant("64 px fp32 (old preset)", 64),
    Variant("48 px fp32", 48),
    Variant("48 px channels-last fp32", 48, channels_last=True),
    Variant("48 px bf16 autocast", 48, bf16=True),
    Variant("48 px bf16 + channels-last", 48, bf16=True, channels_last=True),
    Variant("64 px bf16 + channels-last", 64, bf16=True, channels_last=True),
    Variant("48 px bf16 + CL, widths 48-96-192-384", 48, (48, 96, 192, 384), bf16=True, channels_last=True),
    Variant("48 px bf16 + CL + torch.compile", 48, bf16=True, channels_last=True, compile=True),
]
# ... and the float32 set (issue 24): what is left on CPUs without bfloat16 (AVX2), where the trainer
# stays in float32. The first row is the preset's path there (48 px, channels-last, batch 64).
FP32_VARIANTS = [
    Variant("48 px fp32 channels-last (preset)", 48, channels_last=True),
    Variant("48 px fp32 contiguous", 48),
    Variant("48 px fp32 CL + torch.compile", 48, channels_last=True, compile=True),
    Variant("48 px fp32 contiguous + torch.compile", 48, compile=True),
    Variant("48 px fp32 CL, flush denormals", 48, channels_last=True, flush_denormal=True),
    Variant("48 px fp32 CL, 1 thread", 48, channels_last=True, threads=1),
    Variant("48 px fp32 CL, batch 128", 48, channels_last=True, batch=128),
    Variant("48 px fp32 CL, batch 256", 48, channels_last=True, batch=256),
    Variant("48 px fp32 CL, widths 16-64-128-256", 48, (16, 64, 128, 256), channels_last=True),
    Variant("48 px fp32 contiguous, widths 16-64-128-256", 48, (16, 64, 128, 256)),
]
# Narrower networks (issue 24): the convolutions are ~80 % of a float32 step on AVX2 (torch.profiler), so
# only fewer multiply-adds make a step much faster; whether accuracy holds is measured by training.
ARCH_VARIANTS = [
    Variant("48 px fp32 CL (preset) 32-64-128-256", 48, channels_last=True),
    Variant("48 px fp32 CL, 16-64-128-256", 48, (16, 64, 128, 256), channels_last=True),
    Variant("48 px fp32 CL, 16-48-128-256", 48, (16, 48, 128, 256), channels_last=True),
    Variant("48 px fp32 CL, 24-48-96-192", 48, (24, 48, 96, 192), channels_last=True),
    Variant("48 px fp32 CL, 32-64-128-192", 48, (32, 64, 128, 192), channels_last=True),
    Variant("48 px fp32 CL, 16-32-64-128 (scratch_cnn_small)", 48, (16, 32, 64, 128), channels_last=True),
    Variant("40 px fp32 CL, 32-64-128-256", 40, channels_last=True),
]
SETS = {"bf16": BF16_VARIANTS, "fp32": FP32_VARIANTS, "widths": ARCH_VARIANTS}
VARIANTS = BF16_VARIANTS + FP32_VARIANTS


class Runner:
    def __init__(self, v: Variant, batch_size: int, batches: int, threads: int) -> None:
        g = torch.Generator().manual_seed(0)
        self.v = v
        self.threads = v.threads or threads
        batch_size = v.batch or batch_size
        self.model: nn.Module = ScratchCNN(7, in_chans=1, widths=v.widths)
        fmt = torch.channels_last if v.channels_last else torch.contiguous_format
        self.model = self.model.to(memory_format=fmt)
        self.step_model: nn.Module = torch.compile(self.model) if v.compile else self.model
        self.opt = torch.optim.AdamW(self.model.parameters(), lr=1e-3)
        self.data = [
            (
                torch.randn(batch_size, 1, v.size, v.size, generator=g).contiguous(memory_format=fmt),
                torch.randint(0, 7, (batch_size,), generator=g),
            )
            for _ in range(batches)
        ]

    def step(self, x: torch.Tensor, y: torch.Tensor) -> None:
        ctx = torch.autocast("cpu", dtype=torch.bfloat16) if self.v.bf16 else contextlib.nullcontext()
        with ctx:
            logits = self.step_model(x)
        loss = nn.functional.cross_entropy(logits.float(), y, label_smoothing=0.1)
        self.opt.zero_grad(set_to_none=True)
        loss.backward()
        self.opt.step()

    def images_per_s(self) -> float:
        """Images per second over this variant's batches, with its thread count and denormal setting."""
        self.model.train()
        torch.set_num_threads(self.threads)
        torch.set_flush_denormal(self.v.flush_denormal)
        try:
            start = time.perf_counter()
            n = 0
            for x, y in self.data:
                self.step(x, y)
                n += len(y)
            return n / (time.perf_counter() - start)
        finally:
            torch.set_flush_denormal(False)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--threads", type=int, default=2, help="torch threads (default: %(default)s)")
    p.add_argument("--batch-size", type=int, default=64, help="(default: %(default)s)")
    p.add_argument("--batches", type=int, default=8, help="timed batches per variant and round (default: %(default)s)")
    p.add_argument("--rounds", type=int, default=5, help="interleaved rounds (default: %(default)s)")
    p.add_argument("--no-compile", action="store_true", help="skip the torch.compile variants")
    p.add_argument("--set", choices=("all", *SETS), default="all",
                   help="bf16: the levers of an AVX-512 BF16 CPU; fp32: those left without bfloat16 (AVX2) (default: all)")
    p.add_argument("--json", type=Path, metavar="OUT", help="write every measurement here")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s", stream=sys.stderr)
    torch.set_num_threads(args.threads)
    chosen = VARIANTS if args.set == "all" else SETS[args.set]
    variants = [v for v in chosen if not (v.compile and args.no_compile)]
    runners = []
    for v in variants:
        r = Runner(v, args.batch_size, args.batches, args.threads)
        t0 = time.perf_counter()
        for x, y in r.data[:2]:  # warm-up: allocator, oneDNN primitives, compilation
            r.step(x, y)
        log.info("warm-up %-45s %.1f s", v.name, time.perf_counter() - t0)
        runners.append(r)
    results: dict[str, list[float]] = {v.name: [] for v in variants}
    for k in range(args.rounds):
        order = runners[k % len(runners):] + runners[: k % len(runners)]
        for r in order:
            results[r.v.name].append(r.images_per_s())
        log.info("round %d/%d done", k + 1, args.rounds)
    base = statistics.median(results[variants[0].name])
    load = os.getloadavg()
    print(f"Machine: {cpu_model()}, nproc {os.cpu_count()}, torch {torch.__version__}, "
          f"CPU capability {torch.backends.cpu.get_cpu_capability()}, "
          f"{args.threads} torch thread(s), batch {args.batch_size}, {args.batches} batches x {args.rounds} rounds; "
          f"load average at end {load[0]:.2f}/{load[1]:.2f}/{load[2]:.2f}\n")
    print("| variant | images/s, median (range) | vs first row |")
    print("|---|---|---|")
    for v in variants:
        xs = results[v.name]
        med = statistics.median(xs)
        print(f"| {v.name} | {med:.0f} ({min(xs):.0f}-{max(xs):.0f}) | {med / base:.2f}x |")
    if args.json:
        args.json.write_text(json.dumps({
            "machine": cpu_model(), "cpu_capability": torch.backends.cpu.get_cpu_capability(), "torch": torch.__version__,
            "threads": args.threads, "batch_size": args.batch_size, "load_average_end": load,
            "variants": [asdict(v) for v in variants], "images_per_s": results}, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
