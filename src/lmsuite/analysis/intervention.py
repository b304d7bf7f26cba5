"""The gender-bias intervention, as Pythia ran it on its deduplicated models: continue a model
from a late step on exactly the batches it trained on, with masculine pronouns swapped for
feminine ones in a fixed share of the source documents, and measure what changes.

The branch starts from the original's newest checkpoint with optimizer state at or before
the fork step, replays the original's batches up to the fork (so the weights there are the
original's, bit for bit on the same compute path), and from the fork trains on the
transformed batches with the original's learning-rate schedule and optimizer state. Its
checkpoints, at the original's schedule steps from the fork on, go to a model folder of its
own, `<model>-swap-pronouns-from<step>[-deduped]`, and its rows are under that name.

A swap that finds far fewer pronouns to swap than the batches hold is an error, not a result:
each batch's swapped words are counted against an independent count of the masculine
pronouns in its decoded text.
"""

from __future__ import annotations

import hashlib
import sys
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from lmsuite.analysis.transform import TRANSFORMS
from lmsuite.config import SuiteConfig, load_suite
from lmsuite.data.indexed import IndexedDataset
from lmsuite.data.order import open_train
from lmsuite.data.tokenizer import load_tokenizer
from lmsuite.durable import write_file
from lmsuite.errors import LmsuiteError
from lmsuite.results import ResultStore, Source
from lmsuite.runs import Run, checkpoint_dir, list_steps, read_json_object

TRAINER_STATE_SETTING = ("[train] keep_trainer_state = true (every checkpoint keeps its "
                         "optimizer state)")


def chosen(doc: np.ndarray, share: float, seed: int) -> np.ndarray:
    """Whether each source document is among the `share` the transform applies to: decided
    by a hash of the document's index and the seed, so the same documents every time."""
    if share >= 1.0:
        return np.ones(len(doc), bool)
    if share <= 0.0:
        return np.zeros(len(doc), bool)
    key = str(seed).encode()
    return np.array([int.from_bytes(hashlib.blake2b(int(d).to_bytes(8, "little"),
                                                    digest_size=8, key=key).digest(), "little")
                     / 2**64 < share for d in doc.tolist()])


class DocumentStream:
    """For each training item of a built dataset: the source document of each of its tokens,
    and the document stream around it."""

    def __init__(self, data_dir: Path):
        needed = [data_dir / n for n in ("train_docs.npy", "document_ids.npy", "documents.idx")]
        if not all(p.is_file() for p in needed):
            raise LmsuiteError(f"{data_dir}: a share below 1 needs each token's source "
                               "document, which only datasets built by lmsuite record")
        self.train_docs = np.load(needed[0], mmap_mode="r")
        self.doc_ids = np.load(needed[1])
        documents = IndexedDataset(data_dir / "documents")
        sizes = documents.sizes.astype(np.int64)
        self.stream = documents.tokens[: int(sizes.sum())]
        self.starts = np.concatenate(([0], np.cumsum(sizes)[:-1]))
        self.length = int(open_train(data_dir).sizes[0])

    def start(self, item: int) -> int:
        doc, offset = self.train_docs[item]
        return int(self.starts[np.searchsorted(self.doc_ids, doc)] + offset)

    def documents(self, item: int) -> np.ndarray:
        """The source document of each token of the item."""
        position = self.start(item) + np.arange(self.length)
        return self.doc_ids[np.searchsorted(self.starts, position, side="right") - 1]

    def around(self, item: int, after: int = 8) -> tuple[int | None, np.ndarray]:
        """The stream's token before the item, and its next `after` tokens."""
        start = self.start(item)
        before = int(self.stream[start - 1]) if start > 0 else None
        return before, np.asarray(self.stream[start + self.length:start + self.length + after])


@dataclass
class Intervention:
    """A branch of one model (see `train.trainer.Branch`) with a batch transform."""

    name: str
    source: Path
    start_step: int
    fork_step: int
    fresh_optimizer: bool
    transform_name: str
    share: float
    seed: int
    data_dir: Path
    steps: int
    record: dict = field(default_factory=dict)
    totals: list = field(default_factory=lambda: [0, 0])
    """Words swapped and masculine pronouns found, since this process began."""

    def __post_init__(self) -> None:
        self.swap = TRANSFORMS[self.transform_name](load_tokenizer(self.data_dir))
        self.stream = DocumentStream(self.data_dir) if (self.share < 1.0 or (
            self.data_dir / "train_docs.npy").is_file()) else None
        self.record = {"transform": self.transform_name, "share": self.share,
                       "share_seed": self.seed, "fork_step": self.fork_step,
                       "fork_fraction": round(self.fork_step / self.steps, 4),
                       "from_checkpoint": self.start_step, "original": self.source.name,
                       "fresh_optimizer": self.fresh_optimizer}

    def transform(self, rows: np.ndarray, first_item: int) -> tuple[np.ndarray, dict]:
        out = rows.copy()
        swapped = pronouns = 0
        for i in range(len(rows)):
            item = first_item + i
            eligible, before, following = None, None, None
            if self.stream is not None:
                eligible = chosen(self.stream.documents(item), self.share, self.seed)
                before, following = self.stream.around(item)
            result = self.swap.apply(rows[i], eligible, before, following)
            out[i] = result.row
            swapped += result.swapped
            pronouns += result.pronouns
        self.totals[0] += swapped
        self.totals[1] += pronouns
        if self.totals[1] >= 20 and self.totals[0] < self.totals[1] / 2:
            raise LmsuiteError(f"{self.name}: the batches up to item {first_item + len(rows)} "
                               f"hold {self.totals[1]} masculine pronouns but the swap changed "
                               f"{self.totals[0]}; the transform does not fit this tokenizer")
        return out, {"swapped": swapped, "pronouns": pronouns}


def intervention_name(model: str, transform: str, share: float, fork_step: int) -> str:
    share_part = "" if share >= 1.0 else f"-{round(share * 100)}pct"
    return f"{model}-{transform}{share_part}-from{fork_step}"


def plan(run: Run, suite: SuiteConfig, model: str, dataset: str, from_step: int | None,
         from_fraction: float | None, share: float, transform: str,
         fresh_optimizer: bool) -> Intervention:
    """The intervention asked for, checked against what the run holds, before any training."""
    if transform not in TRANSFORMS:
        raise LmsuiteError(f"unknown transform {transform!r}; transforms are "
                           f"{', '.join(TRANSFORMS)}")
    if not 0.0 <= share <= 1.0:
        raise LmsuiteError(f"--share must be in [0, 1], got {share}")
    steps = suite.train.steps
    if (from_step is None) == (from_fraction is None):
        raise LmsuiteError("give one of --from-step S or --from-fraction F (the last F of "
                           "training)")
    if from_fraction is not None:
        if not 0.0 < from_fraction < 1.0:
            raise LmsuiteError(f"--from-fraction must be in (0, 1), got {from_fraction}")
        from_step = steps - round(from_fraction * steps)
    if not 0 <= from_step < steps:
        raise LmsuiteError(f"the fork step must be in [0, {steps}), got {from_step}")
    source = run.model(suite.model(model).name, dataset)
    held = [s for s in list_steps(source) if s <= from_step]
    if not held:
        raise LmsuiteError(f"{source}: no checkpoint at or before step {from_step}")
    with_state = [s for s in held
                  if (checkpoint_dir(source, s) / "trainer_state" / "state.json").is_file()]
    if with_state:
        start, fresh = with_state[-1], False
    elif fresh_optimizer:
        start, fresh = held[-1], True
    else:
        raise LmsuiteError(f"{checkpoint_dir(source, held[-1])}: no optimizer state to fork "
                           f"from (no checkpoint at or before step {from_step} kept it); train "
                           f"with {TRAINER_STATE_SETTING}, or pass --fresh-optimizer to fork "
                           "with a fresh one")
    name = intervention_name(model, transform, share, from_step)
    return Intervention(name, source, start, from_step, fresh, transform, share, suite.seed,
                        run.dataset(dataset), steps)


def intervene(run_dir: str, model: str, dataset: str = "deduped", from_step: int | None = None,
              from_fraction: float | None = None, share: float = 1.0,
              transform: str = "swap-pronouns", fresh_optimizer: bool = False,
              config: str | None = None, progress: bool = True) -> Path:
    """Train the intervention (resuming one that was interrupted) and write its record and
    rows; returns its model folder."""
    from lmsuite.train.trainer import train

    run = Run(run_dir)
    config_path = Path(config) if config else run.config
    if not config_path.is_file():
        raise LmsuiteError(f"{config_path}: no suite config; the run was trained before lmsuite "
                           "kept one, pass --config with the suite file it was trained with")
    suite = load_suite(config_path)
    branch = plan(run, suite, model, dataset, from_step, from_fraction, share, transform,
                  fresh_optimizer)
    if progress:
        print(f"lmsuite intervene: {branch.name} ({dataset}): {transform} in "
              f"{share:.0%} of the documents from step {branch.fork_step} "
              f"({branch.record['fork_fraction']:.1%} of training), starting from checkpoint "
              f"{branch.start_step}" + (" with a fresh optimizer" if branch.fresh_optimizer
                                        else ""), file=sys.stderr, flush=True)
    folder = train(suite, model, dataset, run.root, resume=True, progress=progress,
                   branch=branch)
    _record(run, suite, branch, dataset, folder)
    return folder


def _record(run: Run, suite: SuiteConfig, branch: Intervention, dataset: str,
            folder: Path) -> None:
    """intervention.json in the branch's folder (what it is, and the words swapped), and a
    row per checkpoint with the words swapped since the fork."""
    import json

    rows = [json.loads(line) for line in (folder / "metrics.jsonl").read_text().splitlines()
            if line.strip()]
    swapped = np.cumsum([r.get("swapped", 0) for r in rows])
    pronouns = sum(r.get("pronouns", 0) for r in rows)
    write_file(folder / "intervention.json", {**branch.record, "model": branch.name,
                                              "dataset": dataset,
                                              "swapped_words": int(swapped[-1]) if rows else 0,
                                              "masculine_pronouns": int(pronouns),
                                              "steps_transformed": len(rows)})
    store = ResultStore(run.study_results("intervention"))
    by_step = {r["step"] + 1: int(total) for r, total in zip(rows, swapped, strict=True)}
    for step in list_steps(folder):
        source = Source(suite.name, branch.name, dataset, step)
        if step in by_step and not store.done(source, "intervention"):
            store.add(source, "intervention", [source.row(
                "intervention", "swapped_words", by_step[step], step - branch.fork_step,
                fork_step=branch.fork_step, original=branch.source.name)])


def read_record(folder: Path) -> dict | None:
    return read_json_object(folder / "intervention.json", "an intervention's record")
