"""Nine experts' convolutions in a loop against one grouped convolution, on this CPU.

Issue #14 asks whether the mixture's evaluation gets cheaper when its nine experts run as one
batched network in eval mode. An attack step needs the input gradient, so each case times a
3x3 convolution forward and backward (input gradient only), fp32, at the laptop's 1/4 width
(16 base channels: 16, 32, 64, 128 channels at 32, 16, 8, 4 pixels), batch 200, one thread,
side by side in one run: nine separate convolutions ("loop") against one convolution with
groups=9 over the nine experts' stacked channels ("grouped"), each contiguous and channels_last.
``python benchmarks/bench.py`` measures the whole mixture's attack step with a loop and with vmap.

    python benchmarks/grouped_conv.py
"""
import time

import torch
import torch.nn.functional as F

EXPERTS, BATCH = 9, 200


def seconds(fn, repeats: int = 5) -> float:
    fn()                                  # warm-up (oneDNN primitive creation)
    t0 = time.perf_counter()
    for _ in range(repeats):
        fn()
    return (time.perf_counter() - t0) / repeats


def main() -> None:
    torch.set_num_threads(1)
    print(f"torch {torch.__version__}, {torch.backends.cpu.get_cpu_capability()}, 1 thread, batch {BATCH}, "
          f"{EXPERTS} experts; seconds per forward+backward (input gradient)")
    print(f"{'channels':>8} {'pixels':>6} {'loop':>8} {'grouped':>8} {'loop CL':>8} {'grouped CL':>10}  winner")
    for channels, pixels in ((16, 32), (32, 16), (64, 8), (128, 4)):
        weights = [torch.randn(channels, channels, 3, 3) for _ in range(EXPERTS)]
        stacked = torch.cat(weights, 0)
        out = {}
        for layout in (torch.contiguous_format, torch.channels_last):
            xs = [torch.randn(BATCH, channels, pixels, pixels).contiguous(memory_format=layout).requires_grad_()
                  for _ in range(EXPERTS)]
            xg = torch.cat([x.detach() for x in xs], 1).contiguous(memory_format=layout).requires_grad_()
            cl = " CL" if layout is torch.channels_last else ""
            out["loop" + cl] = seconds(lambda: sum(F.conv2d(x, w, padding=1).sum()
                                                   for x, w in zip(xs, weights)).backward())
            out["grouped" + cl] = seconds(lambda: F.conv2d(xg, stacked, padding=1, groups=EXPERTS).sum().backward())
        best = min(out, key=out.get)
        print(f"{channels:>8} {pixels:>6} {out['loop']:>8.4f} {out['grouped']:>8.4f} {out['loop CL']:>8.4f} "
              f"{out['grouped CL']:>10.4f}  {best}")


if __name__ == "__main__":
    main()
