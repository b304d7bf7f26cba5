"""Memorization across training and scale, as Pythia's `eval_memorization.py` defines it.

A training sample's prompt is its tokens [0:k], its target [k:2k] (k = 32). The sample is
memorized when greedy decoding from the prompt reproduces the whole target. That happens
exactly when, in one teacher-forced pass over tokens [0:2k-1], the argmax at each target
position is the true next token: so one forward pass per sample decides it, with the output
layer applied at the k target positions only (`scan`). Pythia's fractional score for the
others (the share of generated tokens equal to the target, position by position) needs real
generation, batched with a key-value cache (`pythia_scores`).

At checkpoint N the study scans every sample trained on before it (items [0, N·B)) and, as a
control, held-out windows of the same length from the validation documents; it counts how
often each sample's 2k-token window occurs in the dataset's train.bin with a suffix-array
index. At the last checkpoint it tests whether memorized samples arrive like a Poisson
process along the training order, and how well smaller models and earlier checkpoints predict
the largest model's memorized set (Biderman et al. 2023).
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import torch

from lmsuite import speedups
from lmsuite.analysis.index import TokenIndex
from lmsuite.analysis.targets import StudyModel, study_models
from lmsuite.data.indexed import IndexedDataset
from lmsuite.durable import write_file
from lmsuite.errors import LmsuiteError
from lmsuite.evaluate.scoring import greedy_generate
from lmsuite.model.hf import load_model
from lmsuite.model.neox import GPTNeoX, count_parameters
from lmsuite.progress import bar as progress_bar
from lmsuite.progress import forward_work
from lmsuite.results import ResultStore, Source

K = 32
DUPLICATE_BINS = ((1, 1), (2, 3), (4, 9), (10, 99), (100, None))
"""Bins of how often a sample's window occurs in train.bin, for the rate by duplicate count."""
LOGIT_ROWS = 4096
"""Target positions whose logits over the vocabulary are computed at once."""


# --- the scan -------------------------------------------------------------------------------


@torch.inference_mode()
def scan(model: GPTNeoX, samples: np.ndarray, k: int = K,
         batch_size: int = 256, bar=None) -> tuple[np.ndarray, np.ndarray]:
    """(memorized, prefix_len) for each row of `samples` (rows of at least 2k tokens):
    whether greedy decoding from tokens [0:k] reproduces tokens [k:2k], and how many target
    tokens it reproduces before the first miss. One forward pass over tokens [0:2k-1]."""
    if samples.shape[1] < 2 * k:
        raise LmsuiteError(f"memorization needs samples of at least 2k = {2 * k} tokens, got "
                           f"{samples.shape[1]}")
    device = next(model.parameters()).device
    prefix = np.zeros(len(samples), np.int16)
    for start in range(0, len(samples), batch_size):
        rows = torch.from_numpy(samples[start:start + batch_size, :2 * k].astype(np.int64))
        rows = rows.to(device)
        hidden = model.hidden_states(rows[:, :2 * k - 1])[:, k - 1:]  # (batch, k, d_model)
        flat = hidden.reshape(-1, hidden.shape[-1])
        predicted = torch.cat([model.embed_out(flat[i:i + LOGIT_ROWS]).argmax(-1)
                               for i in range(0, len(flat), LOGIT_ROWS)])
        hits = (predicted.view(len(rows), k) == rows[:, k:]).int()  # (batch, k)
        prefix[start:start + len(rows)] = hits.cumprod(dim=1).sum(dim=1).cpu().numpy()
        if bar is not None:
            bar.update(len(rows))
    return prefix == k, prefix


def pythia_scores(model: GPTNeoX, samples: np.ndarray, k: int = K) -> np.ndarray:
    """Pythia's memorization score of each sample: the share of the k tokens greedy decoding
    generates from tokens [0:k] that equal tokens [k:2k], position by position."""
    prompts = [row[:k].tolist() for row in samples]
    generated = np.asarray(greedy_generate(model, prompts, k, 2 * k), np.int64)
    if len(generated) == 0:
        return np.zeros(0)
    return (generated == samples[:, k:2 * k]).mean(axis=1)


# --- what the samples are -------------------------------------------------------------------


def window_counts(index: TokenIndex, items: int, k: int = K,
                  bar=None) -> np.ndarray:
    """How often each of the first `items` training samples' first 2k tokens occur in the
    token file, inside samples (an occurrence across two samples was never seen whole)."""
    counts = np.empty(items, np.int64)
    length = index.sample_len
    for i in range(items):
        counts[i] = index.count(index.tokens[i * length:i * length + 2 * k].tolist())
        if bar is not None and i % 256 == 255:
            bar.update(256)
    return counts


def heldout_windows(data_dir: Path, count: int, k: int = K) -> np.ndarray:
    """Up to `count` windows of 2k tokens from the validation documents, back to back."""
    val_prefix = data_dir / "val"
    if count <= 0 or not Path(str(val_prefix) + ".idx").is_file():
        return np.zeros((0, 2 * k), np.int64)
    val = IndexedDataset(val_prefix)
    stream = val.tokens[: int(val.sizes.sum(dtype=np.int64))]
    windows = len(stream) // (2 * k)
    return np.asarray(stream[: min(windows, count) * 2 * k]).reshape(-1, 2 * k)


def duplicate_bin_name(low: int, high: int | None) -> str:
    return f"rate_dups_{low}" if low == high else (
        f"rate_dups_{low}_{high}" if high else f"rate_dups_{low}_plus")


# --- the study -----------------------------------------------------------------------------


class _Counts:
    """Window counts per dataset, computed once and kept in the run's results."""

    def __init__(self) -> None:
        self.indexes: dict[Path, TokenIndex] = {}

    def index(self, data_dir: Path, progress: bool) -> TokenIndex:
        if data_dir not in self.indexes:
            self.indexes[data_dir] = TokenIndex.open(data_dir, progress=progress)
        return self.indexes[data_dir]

    def counts(self, m: StudyModel, items: int, k: int, progress: bool) -> np.ndarray:
        path = m.run.window_counts(m.dataset or "standard")
        index = self.index(m.data_dir, progress)
        source = f"{index.data.bin_path.resolve()} {index.tokens.size} k={k}"
        if path.is_file():
            saved = np.load(path)
            if str(saved["source"]) == source and len(saved["counts"]) >= items:
                return saved["counts"][:items]
        total = len(index.data)
        bar = progress_bar(total, "window counts", "sample", enabled=progress, weight=1e6)
        counts = window_counts(index, total, k, bar)
        bar.close()
        path.parent.mkdir(parents=True, exist_ok=True)
        write_file(path, lambda tmp: _save_npz(tmp, counts=counts, source=np.array(source)))
        return counts[:items]


def _save_npz(path: Path, **arrays) -> None:
    with open(path, "wb") as f:  # a file object: numpy would add ".npz" to a path
        np.savez(f, **arrays)


def _rate(flags: np.ndarray) -> float:
    return float(flags.mean()) if len(flags) else float("nan")


def memorization(target: str, steps: str = "log", k: int = K, pythia_score: bool = False,
                 heldout: int = 1024, data: str | None = None, batch_size: int | None = None,
                 seq_len: int | None = None, results: str | None = None,
                 progress: bool = True, scan_batch: int = 256) -> Path:
    """Scan the chosen checkpoints of every model of `target`; rows go to results (default:
    the run's results/memorization.jsonl), per-sample flags to results/memorization/. A rerun
    skips the checkpoints already scanned. Returns the results file."""
    models = study_models(target, steps, data, batch_size, seq_len)
    store = ResultStore(results or models[0].run.study_results("memorization"))
    counts = _Counts()
    for m in models:
        _scan_model(m, store, counts, k, pythia_score, heldout, progress, scan_batch)
        _poisson(m, store, k)
    _predictability(models, store)
    return store.path


def _source(m: StudyModel, step: int) -> Source:
    return Source(m.suite, m.model, m.dataset, step)


def _scan_model(m: StudyModel, store: ResultStore, counts: _Counts, k: int,
                pythia_score: bool, heldout: int, progress: bool, scan_batch: int) -> None:
    data = counts.index(m.data_dir, progress).data
    held = heldout_windows(m.data_dir, heldout, k)
    for step in m.steps:
        source = _source(m, step)
        if store.done(source, "memorization"):
            continue
        items = min(step * m.batch_size, len(data))
        # a memory map: scanned a batch at a time, never read whole
        samples = data.rows(0, items) if items else np.zeros((0, 2 * k), np.int64)
        window = counts.counts(m, items, k, progress)
        model = load_model(m.checkpoint(step))
        speedups.attach(model)
        bar = progress_bar(items + len(held), f"{m.name} step {step}", "sample",
                           enabled=progress, weight=forward_work(count_parameters(model.config),
                                                                 2 * k - 1, calls=0))
        memorized, prefix = scan(model, samples, k, scan_batch, bar)
        held_memorized, _ = scan(model, held, k, scan_batch, bar) if len(held) else (
            np.zeros(0, bool), None)
        bar.close()
        arrays = {"index": np.arange(items), "memorized": memorized, "prefix_len": prefix,
                  "window_count": window, "heldout_memorized": held_memorized}
        rows = [source.row("memorization", "rate", _rate(memorized), items),
                source.row("memorization", "count", int(memorized.sum()), items),
                source.row("memorization", "heldout_rate", _rate(held_memorized), len(held)),
                source.row("memorization", "heldout_count", int(held_memorized.sum()),
                           len(held))]
        for low, high in DUPLICATE_BINS:
            chosen = (window >= low) & (window <= (high if high else np.inf))
            rows.append(source.row("memorization", duplicate_bin_name(low, high),
                                   _rate(memorized[chosen]), int(chosen.sum())))
        if pythia_score:
            score = np.ones(items)
            score[~memorized] = pythia_scores(model, samples[~memorized], k)
            arrays["score"] = score
            rows.append(source.row("memorization", "pythia_score",
                                   float(score.mean()) if items else float("nan"), items))
        path = m.run.memorization(m.name, step)
        path.parent.mkdir(parents=True, exist_ok=True)
        write_file(path, lambda tmp, arrays=arrays: _save_npz(tmp, **arrays))
        store.add(source, "memorization", rows)


# --- the last checkpoint: Poisson, and predictability --------------------------------------


def poisson_view(memorized: np.ndarray, window: int) -> dict:
    """Memorized samples per window of `window` consecutive samples in training order: the
    rate λ, the dispersion index (variance / mean; 1 for a Poisson process), a chi-square
    goodness-of-fit p-value against Poisson(λ), the points of a Q-Q plot, and the trend along
    the training order (Spearman's rho and its p-value)."""
    from scipy import stats

    windows = len(memorized) // window
    per_window = memorized[: windows * window].reshape(windows, window).sum(axis=1)
    lam = float(per_window.mean())
    dispersion = float(per_window.var(ddof=1) / lam) if lam > 0 and windows > 1 else math.nan
    # Observed against expected counts per value, the tail merged until each expects 5 or more.
    top = int(per_window.max()) if windows else 0
    observed = np.bincount(per_window, minlength=top + 1).astype(float)
    expected = stats.poisson.pmf(np.arange(top + 1), lam) * windows
    expected[-1] += stats.poisson.sf(top, lam) * windows
    obs, exp, acc_o, acc_e = [], [], 0.0, 0.0
    for o, e in zip(observed, expected, strict=True):
        acc_o, acc_e = acc_o + o, acc_e + e
        if acc_e >= 5:
            obs.append(acc_o)
            exp.append(acc_e)
            acc_o = acc_e = 0.0
    if acc_e > 0 and exp:
        obs[-1] += acc_o
        exp[-1] += acc_e
    chi2_p = (float(stats.chisquare(obs, exp, ddof=1).pvalue)
              if len(obs) > 2 and lam > 0 else math.nan)
    quantiles = (np.arange(1, windows + 1) - 0.5) / max(windows, 1)
    rho, rho_p = (stats.spearmanr(np.arange(windows), per_window) if windows > 2 and
                  per_window.std() > 0 else (math.nan, math.nan))
    return {"window": window, "windows": windows, "per_window": per_window, "lambda": lam,
            "dispersion": dispersion, "chi2_p": chi2_p,
            "qq_observed": np.sort(per_window), "qq_poisson": stats.poisson.ppf(quantiles, lam),
            "position_rho": float(rho), "position_p": float(rho_p)}


def poisson_window(samples: int) -> int:
    """Pythia's 512 samples a window, fewer for small suites so that there are 30 or more."""
    return max(1, min(512, samples // 30))


def _poisson(m: StudyModel, store: ResultStore, k: int) -> None:
    last = m.all_steps[-1]
    path = m.run.memorization(m.name, last)
    source = _source(m, last)
    if not path.is_file() or store.done(source, "memorization_poisson"):
        return
    memorized = np.load(path)["memorized"]
    view = poisson_view(memorized, poisson_window(len(memorized)))
    summary = m.run.memorization_summary(m.name)
    write_file(summary, lambda tmp: _save_npz(tmp, **{key: np.asarray(v)
                                                      for key, v in view.items()}))
    n = view["windows"]
    store.add(source, "memorization_poisson", [
        source.row("memorization_poisson", name, view[name], n)
        for name in ("lambda", "dispersion", "chi2_p", "window", "position_rho",
                     "position_p")])


def _parameters(m: StudyModel) -> int:
    from lmsuite.model.hf import read_model_config

    return count_parameters(read_model_config(m.checkpoint(m.all_steps[-1])))


def _flags(m: StudyModel, step: int) -> np.ndarray | None:
    path = m.run.memorization(m.name, step)
    return np.load(path)["memorized"] if path.is_file() else None


def predict(predictor: np.ndarray, truth: np.ndarray) -> tuple[float, float, int]:
    """(precision, recall, samples compared) of `predictor`'s memorized set as a prediction of
    `truth`'s, on the samples both saw."""
    n = min(len(predictor), len(truth))
    p, t = predictor[:n], truth[:n]
    both = int((p & t).sum())
    precision = both / int(p.sum()) if p.sum() else math.nan
    recall = both / int(t.sum()) if t.sum() else math.nan
    return precision, recall, n


def _predictability(models: list[StudyModel], store: ResultStore) -> None:
    """For each dataset with several models: how well each smaller model's last checkpoint,
    and each earlier checkpoint of the largest model, predict the largest model's memorized
    set at its last checkpoint."""
    by_dataset: dict[str | None, list[StudyModel]] = {}
    for m in models:
        by_dataset.setdefault(m.dataset, []).append(m)
    for group in by_dataset.values():
        largest = max(group, key=_parameters)
        truth = _flags(largest, largest.all_steps[-1])
        if truth is None:
            continue
        predictors = [(m, m.all_steps[-1]) for m in group if m is not largest]
        predictors += [(largest, s) for s in largest.steps if s != largest.all_steps[-1]]
        for m, step in predictors:
            flags = _flags(m, step)
            source = _source(m, step)
            if flags is None or store.done(source, "memorization_prediction"):
                continue
            precision, recall, n = predict(flags, truth)
            against = f"{largest.name} step {largest.all_steps[-1]}"
            store.add(source, "memorization_prediction", [
                source.row("memorization_prediction", "precision", precision, n,
                           against=against),
                source.row("memorization_prediction", "recall", recall, n, against=against)])

