"""The training loop: step s trains on batch_at(s), checkpoints on Pythia's schedule, resumes
bit for bit, and runs data parallel under torchrun."""

from __future__ import annotations

import json
import math
import os
import signal
import sys
import threading
import time
from contextlib import contextmanager, nullcontext
from pathlib import Path
from typing import Protocol

import numpy as np
import torch

from lmsuite import __version__, speedups
from lmsuite.config import SuiteConfig
from lmsuite.data.order import batch_at
from lmsuite.data.tokenizer import load_tokenizer
from lmsuite.data.verify import verify
from lmsuite.durable import write_file
from lmsuite.errors import LmsuiteError
from lmsuite.model.hf import read_weights
from lmsuite.model.neox import GPTNeoX, NeoXConfig, config_for_size, count_parameters
from lmsuite.progress import bar as progress_bar
from lmsuite.progress import say, training_work
from lmsuite.runs import (
    RESUME_CONSEQUENCE,
    Run,
    check_dataset,
    check_existing,
    check_same_training,
    checkpoint_dir,
    read_manifest,
    read_provenance,
    trajectory,
)
from lmsuite.train import distributed as dist
from lmsuite.train.checkpoint import (
    ModelLock,
    drop_trainer_state,
    list_checkpoints,
    load_checkpoint,
    remove_stale_temporaries,
    save_checkpoint,
)
from lmsuite.train.precision import resolve as resolve_precision
from lmsuite.train.schedule import checkpoint_steps, lr_at
from lmsuite.train.tensor_parallel import check_divisible, clip_gradients


@contextmanager
def sigterm_exits():
    """Within (in the main thread): SIGTERM, which schedulers send before they kill a job,
    exits through the usual clean-up, so that the lock is released and a checkpoint being
    written is removed instead of left behind."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def exit_now(signum, frame):
        print("lmsuite: terminated (SIGTERM); --resume continues from the newest checkpoint",
              file=sys.stderr, flush=True)
        raise SystemExit(128 + signum)

    previous = signal.signal(signal.SIGTERM, exit_now)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def check_batch_split(batch_size: int, micro_batch_size: int, world_size: int) -> None:
    """Each of `world_size` processes takes an equal share of every batch, and cuts it into
    equal micro-batches (one, when the share is no larger than micro_batch_size): the mean
    over them is then the mean over the batch."""
    if batch_size % world_size:
        raise LmsuiteError(f"train.batch_size {batch_size} does not split evenly over "
                           f"{world_size} processes; choose a batch size divisible by it")
    share = batch_size // world_size
    if share > micro_batch_size and share % micro_batch_size:
        raise LmsuiteError(f"train.micro_batch_size {micro_batch_size} does not divide each "
                           f"process's {share} rows of a batch ({batch_size} over {world_size} "
                           "processes); choose one that does")


def check_memory(cfg: NeoXConfig, device: torch.device) -> None:
    """Refuse, before allocating it, a model whose weights, gradients and AdamW state (16 bytes
    per parameter) would not fit in this process's share of the machine's memory."""
    needed = 16 * count_parameters(cfg)
    if device.type == "cuda":
        available = torch.cuda.mem_get_info(device)[0]
        where = f"free memory of {device}"
    else:
        available = _available_memory() // max(1, int(os.environ.get("LOCAL_WORLD_SIZE", 1)))
        where = "available memory per process"
    if available and needed > available:
        raise LmsuiteError(f"the model has {count_parameters(cfg):,} parameters: weights, "
                           f"gradients and AdamW state need {needed / 2**30:.1f} GiB, the "
                           f"{where} is {available / 2**30:.1f} GiB (vocab_size "
                           f"{cfg.vocab_size:,}, d_model {cfg.d_model}, layers {cfg.layers})")


def _available_memory() -> int:
    """MemAvailable of /proc/meminfo in bytes (0 where unknown)."""
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 0


def check_data(data_dir: Path, suite: SuiteConfig, cfg: NeoXConfig) -> dict:
    """The dataset's manifest, once it is known to fit this model and schedule."""
    manifest = read_manifest(data_dir)
    if manifest is None:
        raise LmsuiteError(f"{data_dir}: no built dataset (no manifest.json); `lmsuite train` "
                           "and `lmsuite data build` build it")
    verify(data_dir, manifest)  # before anything is written
    seq_len = manifest["params"]["data"]["seq_len"]
    if seq_len != suite.data.seq_len:
        raise LmsuiteError(f"{data_dir}: samples hold seq_len {seq_len} (+1) tokens, "
                           f"the config asks for seq_len {suite.data.seq_len}")
    vocab = manifest["tokenizer"]["vocab_size"]
    if vocab > cfg.vocab_size:
        raise LmsuiteError(f"{data_dir}: the dataset's vocabulary ({vocab} tokens) exceeds the "
                           f"model's ({cfg.vocab_size})")
    needed = suite.train.steps * suite.train.batch_size
    if manifest["counts"]["train_samples"] < needed:
        raise LmsuiteError(f"{data_dir}: holds {manifest['counts']['train_samples']} samples, "
                           f"training needs {needed} (steps x batch_size); rebuild the data")
    return manifest


def make_optimizer(model: torch.nn.Module, size, suite: SuiteConfig,
                   fused: bool) -> torch.optim.AdamW:
    """AdamW as GPT-NeoX sets it up: no weight decay on biases and LayerNorm parameters."""
    t = suite.train
    decay = [p for p in model.parameters() if p.ndim >= 2]
    no_decay = [p for p in model.parameters() if p.ndim < 2]
    groups = [{"params": decay, "weight_decay": t.weight_decay},
              {"params": no_decay, "weight_decay": 0.0}]
    return torch.optim.AdamW(groups, lr=size.lr, betas=(t.adam_beta1, t.adam_beta2),
                             eps=t.adam_eps, fused=fused)


class Branch(Protocol):
    """A run branched from another's checkpoint, trained on transformed batches from a step
    on (the intervention study's); the trainer runs it as it runs any model."""

    name: str
    """The branch's model name: its folder and its rows."""
    source: Path
    """The original model folder."""
    start_step: int
    """The original's checkpoint the branch starts from."""
    fork_step: int
    """From this step on the batches are transformed; before it (from start_step) the
    original's steps are replayed as they were."""
    fresh_optimizer: bool
    """Start from the checkpoint's weights with a fresh optimizer (it kept no state)."""
    record: dict
    """What the branch is, for its checkpoints' records."""

    def transform(self, rows: np.ndarray, first_item: int) -> tuple[np.ndarray, dict]:
        """Batch rows (items first_item...) as the branch trains on them, and counts to log."""


class Trainer:
    """Trains one size of a suite on one of its built datasets into RUN_DIR/<model>[-deduped]/
    (the data must be built first: `data.build.build_data`), or a `Branch` of one."""

    def __init__(self, suite: SuiteConfig, model: str, dataset: str, run_dir: str | os.PathLike,
                 fsdp: bool = False, progress: bool = True, branch: Branch | None = None):
        self.suite, self.size = suite, suite.model(model)
        self.dataset, self.fsdp, self.progress = check_dataset(dataset), fsdp, progress
        self.run_folder = Run(run_dir)
        self.branch, self.branch_counts = branch, {}
        self.model_dir = self.run_folder.model(branch.name if branch else model, dataset)
        self.cfg = config_for_size(self.size, suite.data.vocab_size, suite.data.seq_len)
        tp = suite.train.tensor_parallel
        check_divisible(self.cfg.heads, self.cfg.d_ff, tp, self.size.name)
        self.world = dist.init_world(tp)
        if fsdp and self.world.size == 1:
            raise LmsuiteError("--fsdp shards the model over processes: run it under torchrun "
                               "with more than one (torchrun --nproc_per_node N -m lmsuite "
                               "train ...)")
        check_batch_split(suite.train.batch_size, suite.train.micro_batch_size,
                          self.world.dp_size)
        self.precision, why = resolve_precision(suite.train.precision, self.world.device)
        if why and self.world.main:
            print(f"lmsuite train: {why}", file=sys.stderr)

    # --- pieces of a step -------------------------------------------------------------------

    def micro_batches(self, step: int) -> list[torch.Tensor]:
        """This rank's rows of batch_at(step), cut into micro-batches, as int64 tensors."""
        t = self.suite.train
        rows = batch_at(self.data_dir, step, t.batch_size)
        if self.branch is not None and step >= self.branch.fork_step:
            rows, self.branch_counts = self.branch.transform(rows, step * t.batch_size)
        rows = rows[self.world.rows(t.batch_size)]
        self.check_ids(rows, step)
        tokens = torch.from_numpy(rows.astype(np.int64)).to(self.world.device)
        return list(tokens.split(t.micro_batch_size))

    def check_ids(self, rows: np.ndarray, step: int) -> None:
        """Every token id of a batch inside the model's vocabulary, before the embedding."""
        if rows.size and int(rows.max()) >= self.cfg.vocab_size:
            raise LmsuiteError(f"{self.data_dir}: step {step} holds token id {int(rows.max())}, "
                               f"past the model's vocabulary of {self.cfg.vocab_size}; the data "
                               "is damaged or built with another tokenizer")

    def train_step(self, step: int) -> tuple[float, float]:
        """One optimizer update on batch_at(step); returns (mean loss, gradient norm)."""
        t = self.suite.train
        lr = lr_at(step, self.size.lr, t.steps, t.warmup_fraction, t.min_lr_fraction)
        for group in self.optimizer.param_groups:
            group["lr"] = lr
        micro = self.micro_batches(step)
        total = torch.zeros((), device=self.world.device)
        bf16 = self.precision == "bf16"
        for i, tokens in enumerate(micro):
            with (dist.no_gradient_sync(self.model, sync=i == len(micro) - 1),
                  torch.autocast(self.world.device.type, dtype=torch.bfloat16, enabled=bf16)):
                _, loss = self.model(tokens[:, :-1], labels=tokens[:, 1:])
                (loss / len(micro)).backward()
            total += loss.detach()
        max_norm = t.grad_clip if t.grad_clip > 0 else float("inf")
        if self.world.tp > 1:  # sharded and whole gradients side by side
            norm = clip_gradients(self.model, max_norm)
        else:
            norm = torch.nn.utils.clip_grad_norm_(self.model.parameters(), max_norm)
        loss = float(dist.mean_over_ranks(total / len(micro), self.world))
        grad_norm = dist.grad_norm_value(norm)
        if not (math.isfinite(loss) and math.isfinite(grad_norm)):
            saved = list_checkpoints(self.model_dir)
            raise LmsuiteError(f"{self.model_dir.name}: step {step} gave loss {loss} and "
                               f"gradient norm {grad_norm}; training stopped before that update"
                               ", so no checkpoint holds it; the last good checkpoint is "
                               + (f"step{saved[-1]}" if saved else "none") +
                               " (lower lr, raise warmup or set grad_clip)")
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        return loss, grad_norm

    def save(self, step: int, elapsed: float) -> None:
        model_state, optimizer_state = dist.full_state(self.model, self.optimizer)
        if self.world.main:
            state = {"step": step, "tokens": step * self.tokens_per_step, "elapsed_s": elapsed,
                     "suite": self.suite.name, "dataset": self.dataset,
                     "model": self.branch.name if self.branch else self.size.name,
                     "world_size": self.world.size, "layout": self.world.layout(),
                     "precision": self.precision, "lmsuite_version": __version__,
                     "train_bin_sha256": self.manifest["sha256"]["train.bin"],
                     "train_samples": self.manifest["counts"]["train_samples"],
                     "trajectory": trajectory(self.suite, self.size), "compute": self.compute}
            if self.branch is not None:
                state["branch"] = self.branch.record
            save_checkpoint(self.model_dir, step, model_state, self.cfg, self.tokenizer,
                            optimizer_state, state)
            if not self.suite.train.keep_trainer_state:
                drop_trainer_state(self.model_dir, keep=step)
        dist.barrier(self.world)

    # --- the run ----------------------------------------------------------------------------

    def setup(self, resume: bool) -> int:
        """Build the model and optimizer, restore the newest checkpoint when resuming; returns
        the step to continue from."""
        self.data_dir = self.run_folder.dataset(self.dataset)
        self.manifest = check_data(self.data_dir, self.suite, self.cfg)
        self.tokenizer = load_tokenizer(self.data_dir)
        self.tokens_per_step = self.suite.train.batch_size * self.suite.data.seq_len
        if self.world.device.type == "cpu":
            torch.use_deterministic_algorithms(True)
        check_memory(self.cfg, self.world.device)
        model = GPTNeoX(self.cfg)
        model.init_weights(self.suite.seed)
        model = model.to(self.world.device)
        model.checkpoint_layers = self.suite.train.activation_checkpointing
        # The CPU kernels compute whole layers; under tensor parallelism they step aside.
        kernels = speedups.attach(model) if self.world.tp == 1 else []
        self.compute = speedups.compute_path(kernels)
        self.model = dist.wrap(model, self.world, self.fsdp)
        self.optimizer = make_optimizer(self.model, self.size, self.suite,
                                        fused=not self.fsdp and self.world.tp == 1)
        saved = list_checkpoints(self.model_dir, with_trainer_state=True)
        if saved and not resume:
            raise LmsuiteError(f"{self.model_dir}: already holds checkpoints (up to step "
                               f"{saved[-1]}); pass --resume to continue it")
        if not saved:
            return 0 if self.branch is None else self._start_branch()
        newest = checkpoint_dir(self.model_dir, saved[-1])
        model_state, optimizer_state, state = load_checkpoint(newest)
        check_same_training(newest / "trainer_state" / "state.json", state, self.suite,
                            self.size, self.manifest, RESUME_CONSEQUENCE)
        if self.branch is not None and state.get("branch") != self.branch.record:
            raise LmsuiteError(f"{newest}: a branch {state.get('branch')}, not "
                               f"{self.branch.record}; remove the folder to start it afresh")
        self._say_if_computed_otherwise(newest, state.get("compute"))
        self._say_if_laid_out_otherwise(newest, state)
        dist.load_full_state(self.model, self.optimizer, model_state, optimizer_state)
        self.elapsed_before = state["elapsed_s"]
        return saved[-1]

    def _start_branch(self) -> int:
        """Load the original's checkpoint the branch starts from; the step to go on from."""
        branch = self.branch
        source = checkpoint_dir(branch.source, branch.start_step)
        if branch.fresh_optimizer:
            model_state, optimizer_state = read_weights(source), None
            record = read_provenance(source) or {}
        else:
            model_state, optimizer_state, record = load_checkpoint(source)
        check_same_training(source, record, self.suite, self.size, self.manifest,
                            "The branch would not continue that run: restore those settings")
        if optimizer_state is None:
            dist.load_model_state(self.model, model_state)
        else:
            dist.load_full_state(self.model, self.optimizer, model_state, optimizer_state)
        return branch.start_step

    def _say_if_laid_out_otherwise(self, checkpoint: Path, state: dict) -> None:
        """One line when the resumed run is laid out (data x tensor parallel) or computes in a
        precision other than the checkpoint's: it continues correctly, within float rounding."""
        saved = state.get("layout") or {"data_parallel": state.get("world_size", 1),
                                         "tensor_parallel": 1}
        now = self.world.layout()
        changes = []
        if saved != now:
            changes.append(f"data parallel {saved['data_parallel']} x tensor parallel "
                           f"{saved['tensor_parallel']} -> {now['data_parallel']} x "
                           f"{now['tensor_parallel']}")
        if state.get("precision", "fp32") != self.precision:
            changes.append(f"precision {state.get('precision', 'fp32')} -> {self.precision}")
        if changes and self.world.main:
            print(f"lmsuite train: resuming {checkpoint} with " + "; ".join(changes) +
                  ": training continues correctly, equal to the original layout within float "
                  "rounding, not byte for byte", file=sys.stderr)

    def _say_if_computed_otherwise(self, checkpoint: Path, saved: dict | None) -> None:
        """One line when the resumed run computes on another path than the checkpoint's
        (kernels, matrix products): it continues correctly, but not byte for byte."""
        if saved is not None and saved != self.compute and self.world.main:
            print(f"lmsuite train: {checkpoint} was computed with {_path_text(saved)}, this "
                  f"process computes with {_path_text(self.compute)}; training continues "
                  "correctly but not byte-identical to a run never stopped", file=sys.stderr)

    def run(self, resume: bool = False) -> Path:
        """Train to the last step (or resume from the newest checkpoint); returns the folder.
        PyTorch's deterministic-algorithms setting, which training on CPU turns on, is restored
        afterwards for the caller's own code."""
        deterministic = torch.are_deterministic_algorithms_enabled()
        warn_only = torch.is_deterministic_algorithms_warn_only_enabled()
        try:
            if self.world.main:
                self.model_dir.mkdir(parents=True, exist_ok=True)
            with sigterm_exits(), ModelLock(self.model_dir) if self.world.main else nullcontext():
                if self.world.main:
                    remove_stale_temporaries(self.model_dir)
                if resume:  # before anything is loaded
                    check_existing(self.run_folder, self.suite, self.size, self.dataset,
                                   RESUME_CONSEQUENCE)
                self.elapsed_before = 0.0
                start = self.setup(resume)
                self._loop(start)
        finally:
            dist.close_world(self.world)
            torch.use_deterministic_algorithms(deterministic, warn_only=warn_only)
        return self.model_dir

    def _loop(self, start: int) -> None:
        t = self.suite.train
        if start >= t.steps:
            if self.world.main:
                say(f"{self.model_dir}: finished already (step {start})")
            return
        saves = set(checkpoint_steps(t.steps, t.checkpoint_every, t.log_checkpoints))
        first = 0 if self.branch is None else self.branch.fork_step  # logged and saved from
        saves = {s for s in saves if s > first}
        metrics = self.model_dir / "metrics.jsonl"
        if self.world.main:
            _truncate_metrics(metrics, start)
        if start == first:
            # the first batch's token ids are checked before anything is written
            self.check_ids(batch_at(self.data_dir, start, t.batch_size), start)
            self.save(first, 0.0)
        began = time.perf_counter()
        work = training_work(count_parameters(self.cfg), self.tokens_per_step)
        bar = progress_bar(t.steps, self.model_dir.name, "step", initial=start, weight=work,
                           enabled=self.progress and self.world.main)
        with open(metrics, "a") if self.world.main else nullcontext() as log:
            for step in range(start, t.steps):
                tick = time.perf_counter()
                loss, grad_norm = self.train_step(step)
                took = time.perf_counter() - tick
                elapsed = self.elapsed_before + time.perf_counter() - began
                if step + 1 == first:  # the branch's fork, reached by replaying the original
                    self.save(first, elapsed)
                if self.world.main and step >= first:
                    row = {"step": step, "loss": loss, "lr": self.optimizer.param_groups[0]["lr"],
                           "grad_norm": grad_norm, "tokens": (step + 1) * self.tokens_per_step,
                           "tokens_per_s": self.tokens_per_step / took, "elapsed_s": elapsed,
                           **self.branch_counts}
                    log.write(json.dumps(row) + "\n")
                    log.flush()
                    bar.set_postfix(loss=f"{loss:.3f}", tok_s=f"{row['tokens_per_s']:.0f}",
                                    refresh=False)
                bar.update(1)
                if step + 1 in saves:
                    self.save(step + 1, elapsed)
        bar.close()


def _truncate_metrics(path: Path, start: int) -> None:
    """Keep the rows of steps before `start`: a killed run may have logged steps past its last
    checkpoint, which the resumed run trains again."""
    if not path.exists():
        return
    rows = []
    for line in path.read_text().splitlines():
        try:
            if json.loads(line)["step"] < start:
                rows.append(line)
        except (json.JSONDecodeError, KeyError, TypeError):
            continue  # the torn last line of a run killed while writing it
    write_file(path, "".join(row + "\n" for row in rows))


def _path_text(compute: dict) -> str:
    kernels = ", ".join(compute.get("cpu_kernels") or []) or "none"
    return f"CPU kernels {kernels} and {compute.get('blas')} matrix products"


def train(suite: SuiteConfig, model: str, dataset: str, run_dir: str | os.PathLike,
          resume: bool = False, fsdp: bool = False, progress: bool = True,
          branch: Branch | None = None) -> Path:
    """Train one model of the suite on one dataset (or a branch of it); see `Trainer`."""
    return Trainer(suite, model, dataset, run_dir, fsdp=fsdp, progress=progress,
                   branch=branch).run(resume)
