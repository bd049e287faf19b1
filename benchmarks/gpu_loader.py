#!/usr/bin/env python
"""Does ``ssl4eos12.Loader`` keep one GPU busy? The GPU's ceiling on a fixed batch, then fed by the Loader.

    python benchmarks/gpu_loader.py                # on a machine with a CUDA GPU (needs benchmarks/data: run.py makes it)
    python benchmarks/gpu_loader.py --cpu-smoke    # tiny, on the CPU: checks that it runs

The model is a ViT-B/16 built from ``torch.nn`` (12 bands, 224 px crops, bf16 autocast, AdamW): the same work as
timm's ``vit_base_patch16_224`` without needing timm. The Loader gives single-timestamp S2L2A examples cropped
at random to 224 px, copied to the GPU non-blocking from pinned memory and standardized there, one batch
ahead. It reads a ``train`` split that names the benchmark's files many times (``run.repeated_split``), so the
window measures the steady state. Prints one JSON line (and writes it to ``$OUT/gpu_loader.json`` when
``OUT`` is set): images/s on the fixed batch (the ceiling), images/s fed by the Loader, the busy fraction
(their ratio) and the share of the window the training loop waited for data.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

import run


def vit(torch, size: int, dim: int, depth: int, heads: int, bands: int = 12, patch: int = 16):
    nn = torch.nn

    class ViT(nn.Module):
        def __init__(self):
            super().__init__()
            self.embed = nn.Conv2d(bands, dim, patch, patch)
            self.position = nn.Parameter(torch.zeros(1, (size // patch) ** 2, dim))
            layer = nn.TransformerEncoderLayer(dim, heads, 4 * dim, activation="gelu", batch_first=True, norm_first=True)
            self.blocks = nn.TransformerEncoder(layer, depth, enable_nested_tensor=False)
            self.norm = nn.LayerNorm(dim)
            self.head = nn.Linear(dim, 1000)

        def forward(self, x):
            tokens = self.embed(x).flatten(2).transpose(1, 2) + self.position
            return self.head(self.norm(self.blocks(tokens)).mean(1))

    return ViT()


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--cpu-smoke", action="store_true", help="tiny model and batches, on the CPU")
    parser.add_argument("--batch", type=int, default=256, help="images per step (default 256)")
    parser.add_argument("--crop", type=int, default=224)
    parser.add_argument("--seconds", type=float, default=30, help="measuring window of each phase (default 30)")
    parser.add_argument("--threads", type=int, default=None, help="Loader decode threads (default: the CPUs)")
    parser.add_argument("--repeat", type=int, default=64, help="times the train split names each file (default 64)")
    args = parser.parse_args(argv)
    run.hf_environment(Path(tempfile.mkdtemp(prefix="ssl4eos12-gpu-")))  # before datasets is imported
    import torch

    import ssl4eos12

    cuda = torch.cuda.is_available() and not args.cpu_smoke
    if not cuda and not args.cpu_smoke:
        print("error: no CUDA GPU (torch.cuda.is_available() is False); use --cpu-smoke", file=sys.stderr)
        return 2
    device = torch.device("cuda" if cuda else "cpu")
    size, dim, depth, heads = (args.crop, 768, 12, 12) if cuda else (48, 64, 2, 4)
    batch = args.batch if cuda else 8
    seconds = args.seconds if cuda else 3.0
    if cuda:  # the benchmark's full-size files
        data = run.DATA
        run.ensure_data(data, 2)
    else:  # a small sample, written once
        from ssl4eos12.synth import synthesize

        data = Path(tempfile.gettempdir()) / "ssl4eos12-gpu-smoke"
        if not (data / "splits" / "ssl4eos12_val.txt").is_file():
            synthesize(data, splits=("validation",), files=2, samples=8, size=64, modalities=("S2L2A",))
    split = run.repeated_split(data, args.repeat)

    torch.manual_seed(0)
    model = vit(torch, size, dim, depth, heads).to(device)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4, **({"fused": True} if cuda else {}))
    targets = torch.randint(0, 1000, (batch,), device=device)

    def step(x):
        with torch.autocast(device.type, dtype=torch.bfloat16):
            loss = torch.nn.functional.cross_entropy(model(x), targets[:len(x)])
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    def sync():
        if cuda:
            torch.cuda.synchronize()

    fixed = torch.randn(batch, 12, size, size, device=device)
    for _ in range(3):
        step(fixed)
    sync()
    steps, start = 0, time.perf_counter()
    while time.perf_counter() - start < seconds:
        step(fixed)
        steps += 1
        if steps % 5 == 0:
            sync()
    sync()
    ceiling = steps * batch / (time.perf_counter() - start)

    loader = ssl4eos12.Loader("S2L2A", data_dir=str(data), split=split, batch_size=batch, single_timestamp=True,
                              crop=size, normalize=True, device=device, num_threads=args.threads)
    images, waited, steps, begun = 0, 0.0, 0, None
    batches = iter(loader)
    while True:
        asked = time.perf_counter()
        try:
            x = next(batches)["S2L2A"]
        except StopIteration:
            batches = iter(loader)
            continue
        now = time.perf_counter()
        if begun is not None:
            waited += now - asked
        step(x)
        steps += 1
        if steps == 3:  # warm-up over: the window starts
            sync()
            begun = time.perf_counter()
        elif begun is not None:
            images += len(x)
            if now - begun >= seconds:
                break
    sync()
    elapsed = time.perf_counter() - begun
    del batches
    fed = images / elapsed
    result = {"device": torch.cuda.get_device_name(0) if cuda else "cpu (smoke)", "batch": batch, "crop": size,
              "loader_threads": loader.num_threads, "pinned": loader.pin_memory, "ceiling_images_per_s": ceiling,
              "fed_images_per_s": fed, "busy_fraction": fed / ceiling, "data_wait_fraction": waited / elapsed}
    print(json.dumps(result))
    if os.environ.get("OUT"):
        Path(os.environ["OUT"], "gpu_loader.json").write_text(json.dumps(result, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
