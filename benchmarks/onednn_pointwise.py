"""Whether this machine's torch computes strided 1x1 convolutions on few channels right; writes
``benchmarks/measured/onednn_pointwise.json``.

torch 2.14.1's oneDNN CPU backward of a 1x1 convolution with stride 2 or 4, no padding and fewer
than 8 input channels, in channels-last layout (as kshot fine-tunes), returns a wrong weight
gradient in most steps on an AVX2 machine, and with one thread can corrupt the heap, which is why
:func:`kshot.models.build_backbone` gives such convolutions :class:`SubsampledPointwiseConv2d`.
For each stride and input channel count this runs a batch of 32 images of 8x8 through torch's
float32 convolution and through kshot's form, and counts the trials whose output or gradients
differ from torch's float64 convolution (which takes another kernel) by more than 1e-4 of their
largest value. After a torch upgrade, a run with no wrong trial for torch's own convolution says
the guard can go.

``python benchmarks/onednn_pointwise.py`` (a few seconds; two threads: one can crash on the bug).
"""

from __future__ import annotations

import argparse
import platform
from pathlib import Path

import torch
from torch import nn

from kshot.io import write_json
from kshot.models import SubsampledPointwiseConv2d
from kshot.runtime import cpu_description

ROOT = Path(__file__).resolve().parents[1]


def wrong(conv: nn.Conv2d, generator: torch.Generator) -> bool:
    """Whether ``conv`` (a float32 1x1 convolution, channels-last) differs from its float64 twin
    on one batch."""
    reference = nn.Conv2d(conv.in_channels, conv.out_channels, 1, stride=conv.stride).double()
    reference.load_state_dict(conv.state_dict())
    x = torch.randn(32, conv.in_channels, 8, 8, generator=generator)
    x = x.contiguous(memory_format=torch.channels_last)
    xf, xr = x.clone().requires_grad_(), x.double().requires_grad_()
    out, expected = conv(xf), reference(xr)
    weights = torch.randn(out.shape, generator=generator)
    (out * weights).sum().backward()
    (expected * weights.double()).sum().backward()
    pairs = [(out, expected), (xf.grad, xr.grad), (conv.weight.grad, reference.weight.grad)]
    return any(((a.double() - b).abs().max() > 1e-4 * b.abs().max()).item() for a, b in pairs)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--trials", type=int, default=10)
    parser.add_argument("--out", default=str(ROOT / "benchmarks" / "measured" / "onednn_pointwise.json"))
    args = parser.parse_args()
    torch.set_num_threads(2)
    generator = torch.Generator().manual_seed(0)
    rows = []
    for stride in (1, 2, 3, 4):
        for cin in (1, 2, 3, 4, 5, 6, 7, 8, 9, 16):
            counts = {}
            for form in ("torch", "kshot"):
                n = 0
                for _ in range(args.trials):
                    conv = nn.Conv2d(cin, 16, 1, stride=stride).to(memory_format=torch.channels_last)
                    if form == "kshot":
                        conv.__class__ = SubsampledPointwiseConv2d
                    n += wrong(conv, generator)
                counts[form] = n
            rows.append({"stride": stride, "in_channels": cin, "trials": args.trials, "wrong": counts})
            print(f"stride {stride}, {cin:2d} channels: wrong in {counts} of {args.trials}", flush=True)
    result = {
        "torch": torch.__version__,
        "cpu": cpu_description(),
        "machine": platform.machine(),
        "threads": torch.get_num_threads(),
        "rows": rows,
    }
    write_json(Path(args.out), result)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
