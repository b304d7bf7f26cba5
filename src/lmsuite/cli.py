"""The `lmsuite` command and its sub-commands."""

from __future__ import annotations

import argparse
import errno
import json
import sys
import traceback
from pathlib import Path

from lmsuite.errors import LmsuiteError
from lmsuite.runs import Run, default_run_dir, read_manifest


def cmd_model_info(args: argparse.Namespace) -> None:
    from lmsuite.config import load_suite
    from lmsuite.model.neox import config_for_size, count_parameters

    suite = load_suite(args.config)
    rows = []
    for size in suite.models:
        cfg = config_for_size(size, suite.data.vocab_size, suite.data.seq_len)
        rows.append({
            "name": size.name,
            "layers": size.layers,
            "d_model": size.d_model,
            "heads": size.heads,
            "total_params": count_parameters(cfg),
            "non_embedding_params": count_parameters(cfg, embeddings=False),
        })
    if args.memory or args.gpu_memory:
        return _memory_info(suite, args)
    if args.json:
        print(json.dumps(rows, indent=2))
        return
    print(f"{'name':<14}{'layers':>7}{'d_model':>9}{'heads':>7}{'total':>17}{'non-embedding':>17}")
    for r in rows:
        print(f"{r['name']:<14}{r['layers']:>7}{r['d_model']:>9}{r['heads']:>7}"
              f"{r['total_params']:>17,}{r['non_embedding_params']:>17,}")


def _memory_info(suite, args: argparse.Namespace) -> None:
    """Memory per GPU of each size under DDP, FSDP and TP x DP, and the smallest layout that
    fits --gpu-memory."""
    from lmsuite.model.memory import GiB, Layout, estimate, parse_bytes, smallest_fitting
    from lmsuite.model.neox import config_for_size

    t = suite.train
    micro = args.micro_batch or t.micro_batch_size or t.batch_size
    seq = suite.data.seq_len
    recompute = args.activation_checkpointing or t.activation_checkpointing
    limit = parse_bytes(args.gpu_memory) if args.gpu_memory else None
    out = []
    print(f"memory per GPU (GiB) at micro-batch {micro} x {seq} tokens, bf16 activations"
          + (" recomputed per layer" if recompute else "") +
          ": fp32 weights, fp32 gradients, AdamW state, activations")
    for size in suite.models:
        cfg = config_for_size(size, suite.data.vocab_size, seq)
        shown = [Layout("DDP", 1), Layout("FSDP x8", 8, fsdp=8)] + [
            Layout(f"TP {k} x DP", k, tp=k) for k in (2, 4, 8)
            if cfg.heads % k == 0 and cfg.d_ff % k == 0]
        found = [estimate(cfg, layout, micro, seq, recompute) for layout in shown]
        best = smallest_fitting(cfg, limit, micro, seq, recompute) if limit else None
        out.append({"name": size.name, "layouts": [
            {"layout": e.layout.name, "weights": e.weights, "gradients": e.gradients,
             "optimizer": e.optimizer, "activations": e.activations, "total": e.total}
            for e in found], "fits": None if best is None else
            {"layout": best.layout.name, "gpus": best.layout.gpus, "total": best.total}})
        if not args.json:
            print(f"{size.name}")
            for e in found:
                print(f"  {e.layout.name:<10}{e.weights / GiB:>9.2f}{e.gradients / GiB:>9.2f}"
                      f"{e.optimizer / GiB:>9.2f}{e.activations / GiB:>9.2f}  total "
                      f"{e.total / GiB:8.2f}")
            if limit:
                print(f"  smallest layout within {args.gpu_memory} per GPU: " +
                      (f"{best.layout.name} ({best.layout.gpus} GPU"
                       f"{'s' if best.layout.gpus > 1 else ''}, {best.total / GiB:.1f} GiB "
                       "each)" if best else "none up to 1024 GPUs"))
    if args.json:
        print(json.dumps(out, indent=2))


def cmd_data_synth(args: argparse.Namespace) -> None:
    from lmsuite.config import SyntheticConfig, load_suite
    from lmsuite.data.synthetic import write_corpus

    cfg = load_suite(args.config).data.synthetic if args.config else SyntheticConfig()
    meta = write_corpus(args.out, cfg, args.docs, args.seed)
    print(f"wrote {args.docs} documents to {args.out} and their ground truth to {meta}/")


def cmd_data_build(args: argparse.Namespace) -> None:
    from lmsuite.config import load_suite
    from lmsuite.data.build import build_data

    suite = load_suite(args.config)
    out = Path(args.out) if args.out else Run(default_run_dir(suite.name)).data
    for folder in build_data(suite, out, force=args.force, progress=not args.no_progress):
        counts = json.loads((folder / "manifest.json").read_text())["counts"]
        print(f"{folder}: {counts['train_documents']} documents, {counts['document_tokens']:,} "
              f"tokens, {counts['train_samples']} samples ({counts['epochs']} epochs)")


def cmd_data_verify(args: argparse.Namespace) -> None:
    from lmsuite.data.verify import verify

    manifest = read_manifest(args.data_dir)
    if manifest is None:
        raise LmsuiteError(f"{args.data_dir}: no manifest.json; not a dataset lmsuite built")
    print(f"{args.data_dir}: intact ({verify(args.data_dir, manifest, full=args.full)} "
          "checked)")


def cmd_batch(args: argparse.Namespace) -> None:
    import numpy as np

    from lmsuite.data.order import batch_at, batch_documents, open_train

    batch = batch_at(args.data_dir, args.step, args.batch_size)
    if args.seq_len is not None and batch.shape[1] != args.seq_len:
        raise LmsuiteError(f"{args.data_dir}: samples hold {batch.shape[1]} tokens, "
                           f"not --seq-len {args.seq_len}")
    size = len(batch)
    first = args.step * size
    source = open_train(args.data_dir).bin_path
    print(f"step {args.step}: items [{first}, {first + size}) of {source}, shape {batch.shape}, "
          f"{batch.dtype}")
    if args.out:
        np.save(args.out, batch)
        print(f"saved {args.out}")
    held = None
    if args.docs:
        held = [", ".join(f"doc {d['doc']} from token {d['offset']} ({d['tokens']} tokens)"
                          for d in docs)
                for docs in batch_documents(args.data_dir, args.step, size)]
    if args.text:
        from lmsuite.data.tokenizer import load_tokenizer

        tok = load_tokenizer(args.tokenizer or args.data_dir)
        for i, row in enumerate(batch):
            # With --docs, each row's documents head its text.
            print(f"--- row {i} (item {first + i})" + (f": {held[i]}" if held else ""))
            print(tok.decode(row.tolist(), skip_special_tokens=False))
    elif held:
        for i, line in enumerate(held):
            print(f"row {i}: {line}")


def _run_with_data(args: argparse.Namespace):
    """(suite, run folder) of a training command, its data built first where it is missing
    (under torchrun every process asks; one builds while the others wait on its lock)."""
    import os

    from lmsuite.config import load_suite, save_suite
    from lmsuite.data.build import build_data

    suite = load_suite(args.config)
    layout = {k: v for k, v in (("tensor_parallel", getattr(args, "tensor_parallel", None)),
                                ("activation_checkpointing",
                                 getattr(args, "activation_checkpointing", False) or None))
              if v is not None}
    if layout:  # how the run is laid out, not what it computes: not part of its settings
        import dataclasses

        suite = dataclasses.replace(suite, train=dataclasses.replace(suite.train, **layout))
    run = Run(Path(args.out) if args.out else default_run_dir(suite.name))
    if getattr(args, "resume", True):  # before the data is built, which at scale takes hours
        _check_trained_as_configured(args, suite, run)
    main = os.environ.get("RANK", "0") == "0"
    build_data(suite, run.data, progress=not args.no_progress and main)
    if main:  # what the run was trained with, for the commands that continue it (intervene)
        save_suite(suite, run.config)
    return suite, run


def _check_trained_as_configured(args: argparse.Namespace, suite, run: Run) -> None:
    from lmsuite.runs import (
        DATASETS,
        RESUME_CONSEQUENCE,
        SUITE_CONSEQUENCE,
        check_existing,
    )

    if args.command == "train":
        check_existing(run, suite, suite.model(args.model), args.dataset, RESUME_CONSEQUENCE)
        return
    for size in suite.models:
        for dataset in DATASETS:
            check_existing(run, suite, size, dataset, SUITE_CONSEQUENCE)


def cmd_train(args: argparse.Namespace) -> None:
    from lmsuite.train.trainer import train

    suite, run = _run_with_data(args)
    train(suite, args.model, args.dataset, run.root, resume=args.resume, fsdp=args.fsdp,
          progress=not args.no_progress)


def cmd_suite(args: argparse.Namespace) -> None:
    from lmsuite.train.suite import train_suite

    suite, run = _run_with_data(args)
    train_suite(suite, run.root, progress=not args.no_progress)


def _names(flag: str, value: str | None) -> list[str] | None:
    """The comma-separated task names given to `flag`; None when it was not given."""
    if value is None:
        return None
    names = [t for t in value.split(",") if t]
    if not names:
        raise LmsuiteError(f"{flag} {value!r} names no task")
    return names


def cmd_eval(args: argparse.Namespace) -> None:
    from lmsuite.evaluate.runner import evaluate

    tasks, harness = _names("--tasks", args.tasks), _names("--harness", args.harness)
    path = evaluate(args.target, tasks=tasks, steps=args.steps, results=args.results,
                    data=args.data, lambada_file=args.lambada, harness=harness,
                    progress=not args.no_progress)
    print(f"results in {path}")


def cmd_memorization(args: argparse.Namespace) -> None:
    from lmsuite.analysis.memorization import memorization

    path = memorization(args.target, steps=args.steps, k=args.k, pythia_score=args.pythia_score,
                        heldout=args.heldout, data=args.data, batch_size=args.batch_size,
                        seq_len=args.seq_len, results=args.results,
                        progress=not args.no_progress)
    print(f"results in {path}")


def cmd_frequency(args: argparse.Namespace) -> None:
    from lmsuite.analysis.frequency import frequency

    path = frequency(args.target, steps=args.steps, data=args.data, batch_size=args.batch_size,
                     seq_len=args.seq_len, results=args.results, progress=not args.no_progress,
                     items=args.items)
    print(f"results in {path}")


def cmd_find(args: argparse.Namespace) -> None:
    from dataclasses import asdict

    from lmsuite.analysis.find import find

    found = find(args.target, args.text, dataset=args.dataset, limit=args.limit,
                 batch_size=args.batch_size)
    if args.json:
        print(json.dumps(asdict(found), indent=2))
        return
    counts = ", ".join(f"{v!r}: {n}" for v, n in found.variants.items())
    first = "never" if found.first_step is None else f"first at step {found.first_step}"
    print(f"{found.count} occurrences in training ({counts}); {first}")
    for o in found.occurrences:
        where = "" if o.document is None else f", document {o.document} token {o.document_offset}"
        print(f"step {o.step}, sample {o.item} token {o.offset}{where}: {o.text!r}")
    if found.count > len(found.occurrences):
        print(f"... {found.count - len(found.occurrences)} more (--limit)")


def cmd_intervene(args: argparse.Namespace) -> None:
    from lmsuite.analysis.intervention import intervene

    folder = intervene(args.run_dir, args.model, dataset=args.dataset, from_step=args.from_step,
                       from_fraction=args.from_fraction, share=args.share,
                       transform=args.transform, fresh_optimizer=args.fresh_optimizer,
                       config=args.config, progress=not args.no_progress)
    print(f"{folder}: trained; `lmsuite eval {args.run_dir}` evaluates it beside the original")


def cmd_import_lm_eval(args: argparse.Namespace) -> None:
    from lmsuite.evaluate.imports import import_files, pythia_files

    files = list(args.files)
    if args.all:
        files += pythia_files(args.all)
    if not files:
        raise LmsuiteError("name result files, or a copy of Pythia's evals/ folder with --all")
    suite = args.suite if args.suite is not None else ("pythia" if args.all else None)
    added, read = import_files(files, args.results, model=args.model, dataset=args.dataset,
                               suite=suite, step_from_name=args.step_from_name)
    print(f"{read} files: {added} rows added to {args.results}")


def cmd_run(args: argparse.Namespace) -> None:
    from lmsuite.pipeline import run

    index = run(args.config, args.out, show=not args.no_progress)
    print(f"report: {index}")


def cmd_report(args: argparse.Namespace) -> None:
    from lmsuite.report import write_report

    print(f"report: {write_report(args.run_dir, args.markdown, args.compare)}")


def _study_arguments(command: argparse.ArgumentParser) -> None:
    command.add_argument("target", help="a run folder, one model folder, or a Pythia model "
                         "folder (its step<N>/ revisions, or one HF folder) with --data")
    command.add_argument("--steps", default="log",
                         help="all, log (0, powers of two, last; the default) or 0,100,200")
    command.add_argument("--data", help="the training data (default: the run's dataset of "
                         "each model); Pythia's pre-shuffled files with --batch-size 1024 "
                         "--seq-len 2048")
    command.add_argument("--batch-size", type=int, help="sequences per step (default: from "
                         "the data's manifest)")
    command.add_argument("--seq-len", type=int, help="check that samples hold this + 1 tokens")
    command.add_argument("--results", help="results file (default: <run>/results/<study>.jsonl)")
    command.add_argument("--no-progress", action="store_true", help="no progress bar")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="lmsuite", description="Train and study suites of language models, as Pythia.")
    parser.add_argument("--debug", action="store_true", help="show tracebacks of errors")
    # Leaf commands take --debug too; SUPPRESS keeps them from overriding the top-level flag.
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--debug", action="store_true", default=argparse.SUPPRESS,
                        help="show tracebacks of errors")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    job = commands.add_parser("run", parents=[common],
                              help="the whole suite, from nothing to its report (resumes)")
    job.add_argument("config", nargs="?", help="suite TOML file (default: the built-in suite)")
    job.add_argument("--out", help="run folder (default runs/<suite>)")
    job.add_argument("--no-progress", action="store_true", help="no progress line")
    job.set_defaults(func=cmd_run)

    report = commands.add_parser("report", parents=[common],
                                 help="the run's report: RUN_DIR/report/index.html")
    report.add_argument("run_dir", help="the run folder")
    report.add_argument("--markdown", help="also write the findings and timings as Markdown")
    report.add_argument("--compare", metavar="PYTHIA_EVALS_DIR",
                        help="draw Pythia's published results (a copy of its evals/ folder) "
                        "beside the run's")
    report.set_defaults(func=cmd_report)

    imports = commands.add_parser("import", help="results from elsewhere, as lmsuite's rows")
    import_commands = imports.add_subparsers(dest="import_command", required=True,
                                             metavar="KIND")
    lm_eval = import_commands.add_parser("lm-eval", parents=[common],
                                         help="lm-evaluation-harness result files")
    lm_eval.add_argument("files", nargs="*", help="result JSON files (either format)")
    lm_eval.add_argument("--all", metavar="EVALS_DIR",
                         help="every file of a copy of Pythia's evals/ folder")
    lm_eval.add_argument("--model", help="model name (default: from config.model_args)")
    lm_eval.add_argument("--dataset", choices=["standard", "deduped"],
                         help="dataset (default: from the model's name)")
    lm_eval.add_argument("--suite", help="suite name in the rows (default: pythia with --all)")
    lm_eval.add_argument("--step-from-name", action="store_true",
                         help="take the step from the file name (..._step1000.json)")
    lm_eval.add_argument("--results", default="results/imported.jsonl",
                         help="results file to add to (results/imported.jsonl)")
    lm_eval.set_defaults(func=cmd_import_lm_eval)

    model = commands.add_parser("model", help="model sizes of a suite")
    model_commands = model.add_subparsers(dest="model_command", required=True, metavar="ACTION")
    info = model_commands.add_parser("info", parents=[common],
                                    help="layers, width, heads and parameter counts")
    info.add_argument("config", help="suite TOML file")
    info.add_argument("--json", action="store_true", help="print a JSON list")
    info.add_argument("--memory", action="store_true", help="memory per GPU of training each "
                      "size under DDP, FSDP and TP x DP")
    info.add_argument("--gpu-memory", help="with --memory: the smallest layout that fits this "
                      "much per GPU (80GiB, 141GB)")
    info.add_argument("--micro-batch", type=int, help="sequences per forward pass (default: "
                      "[train] micro_batch_size)")
    info.add_argument("--activation-checkpointing", action="store_true",
                      help="estimate with activations recomputed per layer")
    info.set_defaults(func=cmd_model_info)

    data = commands.add_parser("data", help="build training data")
    data_commands = data.add_subparsers(dest="data_command", required=True, metavar="ACTION")
    synth = data_commands.add_parser("synth", parents=[common],
                                     help="write the built-in corpus and its ground truth")
    synth.add_argument("--out", required=True, help="corpus file to write (.jsonl)")
    synth.add_argument("--docs", type=int, default=20000, help="number of documents")
    synth.add_argument("--seed", type=int, default=1234, help="seed of the corpus")
    synth.add_argument("--config", help="suite TOML whose [data.synthetic] settings to use")
    synth.set_defaults(func=cmd_data_synth)
    build = data_commands.add_parser("build", parents=[common],
                                     help="tokenize, deduplicate, order: standard/ and deduped/")
    build.add_argument("config", help="suite TOML file")
    build.add_argument("--out", help="output folder (default runs/<suite>/data)")
    build.add_argument("--force", action="store_true", help="rebuild even if built already")
    build.add_argument("--no-progress", action="store_true", help="no progress bar")
    build.set_defaults(func=cmd_data_build)
    check = data_commands.add_parser("verify", parents=[common],
                                     help="check a dataset's files against its manifest")
    check.add_argument("data_dir", help="a dataset folder (standard/ or deduped/ of a run's data)")
    check.add_argument("--full", action="store_true",
                       help="read every byte against the full sha256 (training itself checks "
                       "sizes and sampled blocks at each start)")
    check.set_defaults(func=cmd_data_verify)

    batch = commands.add_parser("batch", parents=[common],
                                help="the exact tokens of one training step")
    batch.add_argument("data_dir", help="a dataset folder (or Pythia's pre-shuffled files)")
    batch.add_argument("--step", type=int, required=True, help="training step")
    batch.add_argument("--batch-size", type=int,
                       help="sequences per step (default: from manifest.json)")
    batch.add_argument("--seq-len", type=int,
                       help="check that samples hold this many tokens (2049 for Pythia's files)")
    batch.add_argument("--out", help="save the (batch, tokens) array as .npy")
    batch.add_argument("--text", action="store_true", help="print each row decoded")
    batch.add_argument("--docs", action="store_true", help="print the documents in each row")
    batch.add_argument("--tokenizer", help="tokenizer.json for --text (default: the data's)")
    batch.set_defaults(func=cmd_batch)

    train = commands.add_parser("train", parents=[common], help="train one model of a suite")
    train.add_argument("config", help="suite TOML file")
    train.add_argument("--model", required=True, help="name of the size to train")
    train.add_argument("--dataset", choices=["standard", "deduped"], default="standard")
    train.add_argument("--out", help="run folder (default runs/<suite>)")
    train.add_argument("--resume", action="store_true",
                       help="continue from the newest complete checkpoint")
    train.add_argument("--fsdp", action="store_true",
                       help="shard the model with FSDP2 (under torchrun)")
    train.add_argument("--tensor-parallel", type=int, metavar="N",
                       help="split each model's layers over N processes (under torchrun; "
                       "default: [train] tensor_parallel)")
    train.add_argument("--activation-checkpointing", action="store_true",
                       help="recompute each layer's activations in the backward pass")
    train.add_argument("--no-progress", action="store_true", help="no progress bar")
    train.set_defaults(func=cmd_train)

    suite = commands.add_parser("suite", parents=[common],
                                help="train every size on both datasets (resumes)")
    suite.add_argument("config", help="suite TOML file")
    suite.add_argument("--out", help="run folder (default runs/<suite>)")
    suite.add_argument("--no-progress", action="store_true", help="no progress bar")
    suite.set_defaults(func=cmd_suite)

    evaluate = commands.add_parser("eval", parents=[common],
                                   help="evaluate checkpoints; rows go to results/eval.jsonl")
    evaluate.add_argument("target",
                          help="a run folder, one model folder, or any HF GPT-NeoX folder")
    evaluate.add_argument("--tasks", help="comma-separated: lambada, perplexity, arithmetic, "
                          "facts, pronouns, stereotypes (default: all); empty for none")
    evaluate.add_argument("--steps", default="all",
                          help="all, log (0, powers of two, last) or a list like 0,100,200")
    evaluate.add_argument("--results", help="results file (default: <run>/results/eval.jsonl)")
    evaluate.add_argument("--data", help="dataset folder for items and held-out documents "
                          "(default: the run's standard dataset)")
    evaluate.add_argument("--lambada", help="jsonl with a text field to use for lambada "
                          "(e.g. the lambada_openai test file)")
    evaluate.add_argument("--harness", help="comma-separated lm-evaluation-harness tasks "
                          "(lmsuite_lambada, lmsuite_arithmetic, or tasks in the local cache)")
    evaluate.add_argument("--no-progress", action="store_true", help="no progress bar")
    evaluate.set_defaults(func=cmd_eval)

    memorize = commands.add_parser("memorization", parents=[common],
                                   help="which training samples each checkpoint memorized")
    _study_arguments(memorize)
    memorize.add_argument("--k", type=int, default=32, help="prompt and target length (32)")
    memorize.add_argument("--pythia-score", action="store_true",
                          help="also Pythia's fractional score (generates for the samples "
                          "not memorized)")
    memorize.add_argument("--heldout", type=int, default=1024,
                          help="held-out validation windows scanned as a control (1024)")
    memorize.set_defaults(func=cmd_memorization)

    frequency = commands.add_parser("frequency", parents=[common],
                                    help="accuracy against pretraining term frequency")
    _study_arguments(frequency)
    frequency.add_argument("--items", help="a dataset folder built from the built-in corpus "
                           "whose arithmetic and facts items to ask (for data without them, "
                           "such as Pythia's)")
    frequency.set_defaults(func=cmd_frequency)

    intervene = commands.add_parser("intervene", parents=[common],
                                    help="retrain from a late step with pronouns swapped")
    intervene.add_argument("run_dir", help="the run folder")
    intervene.add_argument("--model", required=True, help="the size to branch")
    intervene.add_argument("--dataset", choices=["standard", "deduped"], default="deduped")
    fork = intervene.add_mutually_exclusive_group(required=True)
    fork.add_argument("--from-step", type=int, help="the step the swap starts at")
    fork.add_argument("--from-fraction", type=float,
                      help="swap over the last F of training (Pythia: 0.07 and 0.21)")
    intervene.add_argument("--share", type=float, default=1.0,
                           help="share of the source documents transformed (1.0)")
    intervene.add_argument("--transform", default="swap-pronouns", help="swap-pronouns")
    intervene.add_argument("--fresh-optimizer", action="store_true",
                           help="fork a checkpoint that kept no optimizer state, with a fresh "
                           "optimizer (recorded)")
    intervene.add_argument("--config", help="the suite file (default: the run's suite.toml)")
    intervene.add_argument("--no-progress", action="store_true", help="no progress bar")
    intervene.set_defaults(func=cmd_intervene)

    find = commands.add_parser("find", parents=[common],
                               help="where training saw a text: steps, samples, documents")
    find.add_argument("target", help="a run folder or a dataset folder")
    find.add_argument("text", help="the text, tokenized as the dataset was")
    find.add_argument("--dataset", choices=["standard", "deduped"], default="standard")
    find.add_argument("--limit", type=int, default=20, help="occurrences listed (20)")
    find.add_argument("--batch-size", type=int, help="sequences per step (default: manifest)")
    find.add_argument("--json", action="store_true", help="print JSON")
    find.set_defaults(func=cmd_find)
    return parser


def describe_error(e: BaseException) -> str:
    """One line for an error: lmsuite's own as they are, an operating system's as the path and
    the cause (with what is safe where the disk is full)."""
    if isinstance(e, LmsuiteError):
        return str(e)
    if isinstance(e, UnicodeDecodeError):
        return f"text that is not UTF-8 (byte {e.start}: {e.reason})"
    if isinstance(e, OSError):
        path = e.filename if e.filename is not None else "a file"
        cause = e.strerror or str(e)
        if e.errno == errno.ENOSPC:
            return (f"{path}: no space left on the device; what was saved before (the previous "
                    "checkpoint, the rows written) is intact: free space and run the command "
                    "again to continue")
        if e.errno in (errno.EACCES, errno.EPERM):
            cause = "permission denied"
        elif e.errno == errno.EISDIR:
            cause = "is a folder, expected a file"
        elif e.errno == errno.ENOTDIR:
            cause = "a part of the path is a file, expected a folder"
        elif e.errno == errno.EEXIST:
            cause = "exists already"
        elif e.errno == errno.ENOENT:
            cause = "not found"
        return f"{path}: {cause}"
    return str(e)


def _is_write_failure(e: RuntimeError) -> bool:
    text = str(e)
    return any(s in text for s in ("unexpected pos", "PytorchStreamWriter failed",
                                   "file write failed", "No space left"))


def main(argv: list[str] | None = None) -> None:
    from lmsuite import accel

    accel.configure_process()  # first: MKL's products are chosen when torch is imported
    args = build_parser().parse_args(argv)
    try:
        args.func(args)
    except (LmsuiteError, OSError, UnicodeDecodeError) as e:
        if args.debug:
            traceback.print_exc()
        print(f"lmsuite: error: {describe_error(e)}", file=sys.stderr)
        sys.exit(2)
    except RuntimeError as e:  # torch's writers report a full disk as a RuntimeError
        if not _is_write_failure(e):
            raise
        if args.debug:
            traceback.print_exc()
        print(f"lmsuite: error: {describe_error(OSError(errno.ENOSPC, 'write failed'))}",
              file=sys.stderr)
        sys.exit(2)
    except KeyboardInterrupt:
        print("lmsuite: interrupted", file=sys.stderr)
        sys.exit(130)
