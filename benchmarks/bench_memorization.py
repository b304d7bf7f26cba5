"""The memorization scan against generating: one teacher-forced pass (lmsuite's scan) against
transformers' `generate` (greedy, 32 new tokens, batched) on the same checkpoint and samples.
Checks that the memorized flags are identical; times both at batch 16 and 256 (targets: the
scan at least 5x and 1.5x faster); the scan's forward FLOP/s as a share of this machine's fp32
matmul rate measured in the same run (target at least 60%); peak resident memory of each, each
in its own process. The checkpoint: tiny-8's last of runs/tiny (`make demo`), or, without
it, tiny-8 trained here for the purpose."""

import json
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from common import configure, emit, figure, matmul_gflops

ROOT = Path(__file__).resolve().parents[1]
SAMPLES, K = 1024, 32


def checkpoint() -> tuple[Path, Path]:
    run = ROOT / "runs" / "tiny"
    folder = run / "tiny-8" / "step516"
    if folder.is_dir():
        return folder, run / "data" / "standard"
    out = Path(tempfile.mkdtemp(prefix="bench-mem-"))
    subprocess.run([sys.executable, "-m", "lmsuite", "train", str(ROOT / "configs" / "tiny.toml"),
                    "--model", "tiny-8", "--out", str(out), "--no-progress"], check=True)
    steps = sorted(int(p.name[4:]) for p in (out / "tiny-8").glob("step*"))
    return out / "tiny-8" / f"step{steps[-1]}", out / "data" / "standard"


def worker(method: str, folder: str, data: str, batch: int) -> None:
    configure()
    import numpy as np
    import torch

    from lmsuite.data.order import open_train

    samples = np.asarray(open_train(data).rows(0, SAMPLES))
    if method == "scan":
        from lmsuite import speedups
        from lmsuite.analysis.memorization import scan
        from lmsuite.model import load_model

        model = load_model(folder).eval()
        speedups.attach(model)
        scan(model, samples[:batch], K, batch_size=batch)  # warm-up
        start = time.perf_counter()
        memorized, _ = scan(model, samples, K, batch_size=batch)
        seconds = time.perf_counter() - start
    else:
        from transformers import GenerationConfig, GPTNeoXForCausalLM

        hf = GPTNeoXForCausalLM.from_pretrained(folder, local_files_only=True).eval()
        # EOD is a token like any other: no end-of-sequence stop and no suppression of it before
        # 32 tokens (min_new_tokens would forbid the EOD a training sample's target may hold)
        greedy = GenerationConfig(max_new_tokens=K, do_sample=False, pad_token_id=1,
                                  eos_token_id=None, bos_token_id=None)
        hits = []
        start = time.perf_counter()
        with torch.no_grad():
            for i in range(0, SAMPLES, batch):
                prompts = torch.from_numpy(samples[i:i + batch, :K].astype(np.int64))
                out = hf.generate(prompts, attention_mask=torch.ones_like(prompts),
                                  generation_config=greedy)
                hits.append((out[:, K:].numpy() == samples[i:i + batch, K:2 * K]).all(axis=1))
        seconds = time.perf_counter() - start
        memorized = np.concatenate(hits)
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    print(json.dumps({"seconds": seconds, "memorized": memorized.astype(int).tolist(),
                      "peak_bytes": peak}))


def run(method: str, folder: Path, data: Path, batch: int) -> dict:
    out = subprocess.run([sys.executable, __file__, "--worker", method, str(folder), str(data),
                          str(batch)], capture_output=True, text=True, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    if "--worker" in sys.argv:
        method, folder, data, batch = sys.argv[sys.argv.index("--worker") + 1:]
        return worker(method, folder, data, int(batch))
    folder, data = checkpoint()
    from lmsuite.model import read_model_config
    from lmsuite.model.neox import count_parameters

    cfg = read_model_config(folder)
    # forward FLOPs of the scan: the trunk over 2k-1 tokens, the output layer at k positions
    flops = SAMPLES * (2 * count_parameters(cfg, embeddings=False) * (2 * K - 1)
                       + 2 * cfg.d_model * cfg.vocab_size * K)
    for batch in (16, 256):
        scanned = run("scan", folder, data, batch)
        generated = run("generate", folder, data, batch)
        rate = matmul_gflops()
        emit("memorization", f"batch {batch}",
             {"scan_s": figure(scanned["seconds"], "s"),
              "generate_s": figure(generated["seconds"], "s"),
              "speedup": figure(generated["seconds"] / scanned["seconds"], "x"),
              "scan_share_of_matmul": figure(flops / scanned["seconds"] / 1e9 / rate, "share"),
              "scan_peak_mib": figure(scanned["peak_bytes"] / 2**20, "MiB", 0),
              "generate_peak_mib": figure(generated["peak_bytes"] / 2**20, "MiB", 0)},
             identical=scanned["memorized"] == generated["memorized"],
             memorized=sum(scanned["memorized"]), samples=SAMPLES, checkpoint=str(folder),
             matmul_gflops_now=round(rate, 1))


if __name__ == "__main__":
    main()
