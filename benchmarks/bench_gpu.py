"""The GPU path, measured: training tokens/s and model FLOPs utilisation (MFU) of the pythia-70m,
160m and 410m shapes at sequence 2,048, bf16 autocast, flash attention (SDPA), fused AdamW,
eager and under torch.compile; and the 160m shape's loss after 50 steps in bf16 on the GPU
against fp32 on the CPU, on the same batches (close, not equal).

MFU = 6 x N x tokens/s over the GPU's dense bf16 peak, read from a table by device name
(N: non-embedding parameters plus the output layer; attention's own products counted as
bench_train.py counts them). Needs CUDA: without it, it says so and measures nothing.
Target (issue): at least 45% MFU for the 160m shape on one H100/H200-class GPU.
"""

import argparse
import sys
import time

from common import emit, figure

PEAK_BF16_TFLOPS = {"H200": 989.0, "H100": 989.0, "A100": 312.0, "L40S": 362.0, "A10": 125.0,
                    "L4": 121.0, "RTX 4090": 165.0, "A6000": 155.0}
"""Dense bf16 peaks (no sparsity), by a substring of torch.cuda.get_device_name()."""


def peak_tflops(name: str) -> float | None:
    return next((v for k, v in PEAK_BF16_TFLOPS.items() if k in name), None)


def shape(name: str):
    from lmsuite.config import load_suite
    from lmsuite.model.neox import config_for_size

    suite = load_suite("configs/pythia.toml")
    return config_for_size(suite.model(name), suite.data.vocab_size, 2048)


def measure(name: str, micro: int, steps: int, compiled: bool) -> tuple[float, float]:
    import torch
    from bench_train import flops_per_token

    from lmsuite.model.neox import GPTNeoX

    cfg = shape(name)
    model = GPTNeoX(cfg).cuda()
    model.init_weights(0)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4, fused=True)
    run = torch.compile(model) if compiled else model
    tokens = torch.randint(0, cfg.vocab_size, (micro, 2049), device="cuda")
    times = []
    for i in range(steps + 5):
        torch.cuda.synchronize()
        start = time.perf_counter()
        with torch.autocast("cuda", dtype=torch.bfloat16):
            _, loss = run(tokens[:, :-1], labels=tokens[:, 1:])
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        torch.cuda.synchronize()
        if i >= 5:
            times.append(time.perf_counter() - start)
    rate = micro * 2048 / sorted(times)[len(times) // 2]
    peak = peak_tflops(torch.cuda.get_device_name())
    mfu = flops_per_token(cfg, 2048) * rate / (peak * 1e12) if peak else float("nan")
    return rate, mfu


def loss_agreement(steps: int = 50) -> tuple[float, float]:
    """Loss after `steps` steps of the 160m shape on the same random batches: bf16 on the GPU,
    fp32 on the CPU (a few sequences, to fit the CPU)."""
    import torch

    from lmsuite.model.neox import GPTNeoX

    cfg = shape("pythia-160m")
    g = torch.Generator().manual_seed(0)
    batches = [torch.randint(0, 1000, (2, 257), generator=g) for _ in range(steps)]
    out = []
    for device, bf16 in (("cuda", True), ("cpu", False)):
        model = GPTNeoX(cfg).to(device)
        model.init_weights(0)
        optimizer = torch.optim.AdamW(model.parameters(), lr=6e-4)
        for batch in batches:
            batch = batch.to(device)
            with torch.autocast(device, dtype=torch.bfloat16, enabled=bf16):
                _, loss = model(batch[:, :-1], labels=batch[:, 1:])
            loss.backward()
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
        out.append(float(loss))
    return out[0], out[1]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--micro-batch", type=int, default=16)
    args = parser.parse_args()
    import torch

    if not torch.cuda.is_available():
        print("bench_gpu: no CUDA device here; nothing measured", file=sys.stderr)
        return
    device = torch.cuda.get_device_name()
    for name in ("pythia-70m", "pythia-160m", "pythia-410m"):
        for compiled in (False, True):
            rate, mfu = measure(name, args.micro_batch, args.steps, compiled)
            emit("gpu", f"{name} {'compiled' if compiled else 'eager'}",
                 {"tokens_per_s": figure(rate, "tokens/s", 0), "mfu": figure(mfu, "share")},
                 device=device, micro_batch=args.micro_batch, seq_len=2048, precision="bf16")
    gpu, cpu = loss_agreement()
    emit("gpu", "pythia-160m loss after 50 steps", {"bf16_gpu": figure(gpu, "nats"),
                                                      "fp32_cpu": figure(cpu, "nats")},
         device=device)


if __name__ == "__main__":
    main()
