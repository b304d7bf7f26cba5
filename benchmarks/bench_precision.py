"""fp32 against bf16 autocast on this CPU, in one run on the same shapes: training tokens/s of
the two largest sizes of configs/tiny.toml taking turns, and the loss after the same 12 steps
on the same batches (a CPU without native bf16 multiplies in it about a hundred times slower:
a few steps make the point). Says whether the CPU reports native bf16 (AVX512_BF16 or AMX),
which is what `precision = "bf16"` and `"auto"` decide by."""

import statistics
import time

from common import configure, emit, figure


def main() -> None:
    configure()
    import torch

    from lmsuite.config import load_suite
    from lmsuite.model.neox import GPTNeoX, config_for_size
    from lmsuite.train.precision import native_bf16

    suite = load_suite("configs/tiny.toml")
    native = native_bf16(torch.device("cpu"))
    g = torch.Generator().manual_seed(0)
    seq = suite.data.seq_len
    batches = [torch.randint(0, suite.data.vocab_size, (8, seq + 1), generator=g)
               for _ in range(12)]
    for size in suite.models[-2:]:
        cfg = config_for_size(size, suite.data.vocab_size, seq)
        rates = {"fp32": [], "bf16": []}
        losses = {}
        models = {}
        for precision in rates:
            model = GPTNeoX(cfg)
            model.init_weights(0)
            models[precision] = (model, torch.optim.AdamW(model.parameters(), lr=3e-3))
        for i, batch in enumerate(batches):
            for precision in (("fp32", "bf16") if i % 2 else ("bf16", "fp32")):
                model, optimizer = models[precision]
                start = time.perf_counter()
                with torch.autocast("cpu", dtype=torch.bfloat16, enabled=precision == "bf16"):
                    _, loss = model(batch[:, :-1], labels=batch[:, 1:])
                loss.backward()
                optimizer.step()
                optimizer.zero_grad(set_to_none=True)
                if i >= 3:
                    rates[precision].append(8 * seq / (time.perf_counter() - start))
                losses[precision] = float(loss.detach())
        emit("precision", size.name,
             {"fp32_tokens_per_s": figure(rates["fp32"], "tokens/s", 0),
              "bf16_tokens_per_s": figure(rates["bf16"], "tokens/s", 0),
              "bf16_over_fp32": figure(statistics.median(rates["bf16"]) /
                                       statistics.median(rates["fp32"]), "x"),
              "loss_fp32": figure(losses["fp32"], "nats"),
              "loss_bf16": figure(losses["bf16"], "nats")},
             native_bf16=native, steps=len(batches))


if __name__ == "__main__":
    main()
