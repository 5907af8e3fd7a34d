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


VARIANTS = [
    Variant("64 px fp32 (old preset)", 64),
    Variant("48 px fp32", 48),
    Variant("48 px channels-last fp32", 48, channels_last=True),
    Variant("48 px bf16 autocast", 48, bf16=True),
    Variant("48 px bf16 + channels-last", 48, bf16=True, channels_last=True),
    Variant("64 px bf16 + channels-last", 64, bf16=True, channels_last=True),
    Variant("48 px bf16 + CL, widths 48-96-192-384", 48, (48, 96, 192, 384), bf16=True, channels_last=True),
    Variant("48 px bf16 + CL + torch.compile", 48, bf16=True, channels_last=True, compile=True),
]


class Runner:
    def __init__(self, v: Variant, batch_size: int, batches: int) -> None:
        g = torch.Generator().manual_seed(0)
        self.v = v
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
        self.model.train()
        start = time.perf_counter()
        n = 0
        for x, y in self.data:
            self.step(x, y)
            n += len(y)
        return n / (time.perf_counter() - start)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--threads", type=int, default=2, help="torch threads (default: %(default)s)")
    p.add_argument("--batch-size", type=int, default=64, help="(default: %(default)s)")
    p.add_argument("--batches", type=int, default=8, help="timed batches per variant and round (default: %(default)s)")
    p.add_argument("--rounds", type=int, default=5, help="interleaved rounds (default: %(default)s)")
    p.add_argument("--no-compile", action="store_true", help="skip the torch.compile variant")
    p.add_argument("--json", type=Path, metavar="OUT", help="write every measurement here")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s", stream=sys.stderr)
    torch.set_num_threads(args.threads)
    variants = [v for v in VARIANTS if not (v.compile and args.no_compile)]
    runners = []
    for v in variants:
        r = Runner(v, args.batch_size, args.batches)
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
          f"{args.threads} torch thread(s), batch {args.batch_size}, {args.batches} batches x {args.rounds} rounds; "
          f"load average at end {load[0]:.2f}/{load[1]:.2f}/{load[2]:.2f}\n")
    print("| variant | images/s, median (range) | vs first row |")
    print("|---|---|---|")
    for v in variants:
        xs = results[v.name]
        med = statistics.median(xs)
        print(f"| {v.name} | {med:.0f} ({min(xs):.0f}-{max(xs):.0f}) | {med / base:.2f}x |")
    if args.json:
        args.json.write_text(json.dumps({"variants": [asdict(v) for v in variants], "images_per_s": results}, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
