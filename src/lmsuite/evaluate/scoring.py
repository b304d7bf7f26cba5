"""Batched, padded scoring under inference_mode: target log-probabilities and greedy decoding."""

from __future__ import annotations

import functools
from dataclasses import dataclass

import torch
from tokenizers import Tokenizer

from lmsuite.model.neox import GPTNeoX, KVCache

BATCH_TOKENS = 16384
"""Padded tokens per forward pass."""
LOGIT_ROWS = 2048
"""Positions whose logits over the vocabulary are computed at once."""


@dataclass
class Scored:
    """Log-probabilities of a request's target tokens, whether each was the argmax, and the
    argmax itself (what greedy decoding would give at that position)."""

    logprobs: list[float]
    greedy: list[bool]
    argmax: list[int]

    @property
    def total(self) -> float:
        return float(sum(self.logprobs))

    @property
    def is_greedy(self) -> bool:
        return all(self.greedy)


def _batches(order: list[int], lengths: list[int]):
    """Indices grouped so that each padded batch holds about BATCH_TOKENS tokens."""
    batch: list[int] = []
    for i in order:
        if batch and (len(batch) + 1) * lengths[batch[0]] > BATCH_TOKENS:
            yield batch
            batch = []
        batch.append(i)
    if batch:
        yield batch


def _hidden_states(model: GPTNeoX, rows: list[list[int]]) -> torch.Tensor:
    """The trunk's output (batch, longest, d_model) for right-padded rows; causal attention
    keeps the padding at the end from touching the real positions."""
    device = next(model.parameters()).device
    longest = max(len(r) for r in rows)
    ids = torch.zeros(len(rows), longest, dtype=torch.long)
    for i, r in enumerate(rows):
        ids[i, : len(r)] = torch.tensor(r, dtype=torch.long)
    return model.hidden_states(ids.to(device))


@torch.inference_mode()
def score(model: GPTNeoX, inputs: list[list[int]], targets: list[list[int]]) -> list[Scored]:
    """For each request, the log-probabilities of `targets[i]`, predicted at the last
    len(targets[i]) positions of `inputs[i]` (so targets[i][-1] follows inputs[i][-1]).
    Logits are computed at those positions only: the output layer over the whole vocabulary
    can be most of a small model's work, and a continuation is a few tokens of a long context."""
    lengths = [len(x) for x in inputs]
    order = sorted(range(len(inputs)), key=lambda i: -lengths[i])
    out: list[Scored | None] = [None] * len(inputs)
    for batch in _batches(order, lengths):
        hidden = _hidden_states(model, [inputs[i] for i in batch])
        rows = torch.cat([torch.full((len(targets[i]),), row) for row, i in enumerate(batch)])
        positions = torch.cat([torch.arange(lengths[i] - len(targets[i]), lengths[i])
                               for i in batch])
        picked = hidden[rows.to(hidden.device), positions.to(hidden.device)]  # (targets, d)
        target = torch.tensor([t for i in batch for t in targets[i]], device=picked.device)
        logp, argmax = [], []
        for chunk in range(0, len(target), LOGIT_ROWS):
            logits = model.embed_out(picked[chunk:chunk + LOGIT_ROWS]).float()  # (rows, vocab)
            want = target[chunk:chunk + LOGIT_ROWS]
            logp += torch.log_softmax(logits, dim=-1).gather(1, want[:, None])[:, 0].tolist()
            argmax += logits.argmax(-1).tolist()
        greedy = [a == t for a, t in zip(argmax, target.tolist(), strict=True)]
        start = 0
        for i in batch:
            end = start + len(targets[i])
            out[i] = Scored(logp[start:end], greedy[start:end], argmax[start:end])
            start = end
    return out  # type: ignore[return-value]


@torch.inference_mode()
def next_token_logprobs(model: GPTNeoX, inputs: list[list[int]],
                        candidates: list[int]) -> list[list[float]]:
    """For each input, the log-probabilities of the candidate tokens coming next: one forward
    pass per input, where scoring each candidate as a continuation would take one each."""
    lengths = [len(x) for x in inputs]
    order = sorted(range(len(inputs)), key=lambda i: -lengths[i])
    out: list[list[float] | None] = [None] * len(inputs)
    want = torch.tensor(candidates)
    for batch in _batches(order, lengths):
        hidden = _hidden_states(model, [inputs[i] for i in batch])
        last = hidden[torch.arange(len(batch)), torch.tensor([lengths[i] - 1 for i in batch])]
        logp = torch.log_softmax(model.embed_out(last).float(), dim=-1)[:, want.to(last.device)]
        for row, i in enumerate(batch):
            out[i] = logp[row].tolist()
    return out  # type: ignore[return-value]


@functools.lru_cache(maxsize=1 << 16)
def encode_pair(tok: Tokenizer, context: str, continuation: str) -> tuple[list[int], list[int]]:
    """Context and continuation tokens as lm-evaluation-harness makes them: trailing spaces of
    the context move to the continuation, and the continuation is what the joint encoding
    adds to the context's. Kept for the tokenizer object given: an evaluation encodes the same
    items at every checkpoint (the results are not to be changed)."""
    spaces = len(context) - len(context.rstrip())
    if spaces:
        continuation = context[-spaces:] + continuation
        context = context[:-spaces]
    whole = tok.encode(context + continuation, add_special_tokens=False).ids
    head = tok.encode(context, add_special_tokens=False).ids
    return head, whole[len(head):]


def continuation_requests(pairs: list[tuple[list[int], list[int]]],
                          max_len: int) -> tuple[list[list[int]], list[list[int]]]:
    """(inputs, targets) scoring each continuation after its context: the input is
    (context + continuation)[:-1], cut from the left to the model's context length."""
    inputs = [(ctx + cont)[:-1][-max_len:] for ctx, cont in pairs]
    return inputs, [cont for _, cont in pairs]


@torch.inference_mode()
def greedy_generate(model: GPTNeoX, prompts: list[list[int]], max_new_tokens: int,
                    max_len: int) -> list[list[int]]:
    """Greedy continuations of each prompt (cut from the left to leave room), batched: prompts
    are left-padded (masked out; rotary scores depend on relative positions only) and decoded
    with a key-value cache."""
    device = next(model.parameters()).device
    prompts = [p[-(max_len - max_new_tokens):] for p in prompts]
    lengths = [len(p) for p in prompts]
    order = sorted(range(len(prompts)), key=lambda i: -lengths[i])
    out: list[list[int]] = [[] for _ in prompts]
    for batch in _batches(order, [n + max_new_tokens for n in lengths]):
        longest = lengths[batch[0]]
        ids = torch.zeros(len(batch), longest, dtype=torch.long)
        padding = torch.ones(len(batch), longest, dtype=torch.bool)
        for row, i in enumerate(batch):
            ids[row, longest - lengths[i]:] = torch.tensor(prompts[i], dtype=torch.long)
            padding[row, longest - lengths[i]:] = False
        ids, padding = ids.to(device), padding.to(device)
        cache = KVCache(model.config.layers)
        last = model.hidden_states(ids, cache=cache, padding=padding)[:, -1]  # (batch, d_model)
        generated = []
        for step in range(max_new_tokens):
            token = model.embed_out(last).argmax(-1)  # (batch,): logits at the last position
            generated.append(token)
            if step + 1 < max_new_tokens:
                padding = torch.cat((padding, padding.new_zeros(len(batch), 1)), dim=1)
                last = model.hidden_states(token[:, None], cache=cache, padding=padding)[:, -1]
        tokens = torch.stack(generated, dim=1).tolist()
        for row, i in enumerate(batch):
            out[i] = tokens[row]
    return out
