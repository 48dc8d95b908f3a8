"""``cdca cloud``: the cloud's jobs: the teacher's text prompts (CoOp), distillation, export, the server."""

from __future__ import annotations

import argparse
import json
import shlex
import time
from collections.abc import Sequence
from pathlib import Path

from cloud.distill import command as distill_command
from cloud.export import command as export_command
from cloud.project_cli import add_project_arguments, project_from_args
from cloud.server import command as server_command


def main(argv: Sequence[str], prog: str = "cdca cloud") -> int:
    """Parse ``argv`` and run one cloud command; returns the exit code."""
    parser = argparse.ArgumentParser(
        prog=prog,
        description="Cloud-side jobs: the teacher's prompts, distillation, export and "
        "the server. Each reads the project file (--project, docs/configuration.md).",
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="command")
    learn = sub.add_parser(
        "learn-prompts",
        help="CoOp: learn text prompts for the teacher from K labelled images per class",
        description="Trains CoOp context vectors for the project's teacher on K shots per class "
        "of its training images (data.train) and reports zero-shot vs learned accuracy on "
        "clean (data.test) and shifted (data.shifted) images. Set teacher.prompts to a written "
        "file to distil with it.",
        epilog="example: cdca cloud learn-prompts --project cdca.toml --shots 4,16",
    )
    learn.add_argument("--teacher", help="teacher.model: builtin | open_clip name | local-dir:DIR")
    learn.add_argument("--pretrained", help="teacher.pretrained: open_clip tag or weights file")
    learn.add_argument(
        "--shots", default="1,4,16", help="comma-separated shot counts (default: %(default)s)"
    )
    learn.add_argument(
        "--num-ctx", type=int, default=16, help="context tokens when not initialised from words"
    )
    learn.add_argument(
        "--ctx-init", default="a photo of a", help="initial words; '' for random init"
    )
    learn.add_argument("--class-specific", action="store_true", help="one context per class (CSC)")
    learn.add_argument(
        "--position", default="end", choices=["end", "middle"], help="class token position"
    )
    learn.add_argument(
        "--epochs", type=int, default=None, help="override CoOp's epochs-per-shots schedule"
    )
    learn.add_argument("--severity", type=int, default=5)
    learn.add_argument("--num-test", type=int, default=2000, help="clean test images")
    learn.add_argument(
        "--num-per-domain", type=int, default=500, help="shifted images per corruption"
    )
    learn.add_argument("--seed", type=int, default=0)
    learn.add_argument(
        "--out", type=Path, default=None, help="output folder (default: runs/coop-<time>)"
    )
    add_project_arguments(learn)
    learn.set_defaults(handler=_learn_prompts)
    distill_command.add_parser(sub)
    export_command.add_parser(sub)
    server_command.add_parsers(sub)
    args = parser.parse_args(argv)
    args.command_line = " ".join([prog, *(shlex.quote(a) for a in argv)])  # stored in checkpoints
    return int(args.handler(args))


def _learn_prompts(args: argparse.Namespace) -> int:
    import torch

    from cloud.coop import CoOpPromptLearner
    from cloud.coop.fewshot import (
        FewShotConfig,
        evaluate_domains,
        few_shot_indices,
        image_features,
    )
    from cloud.coop.fewshot import train_prompts as fit
    from cloud.coop.storage import save_prompts
    from cloud.data.cli import parse_corruptions
    from cloud.data.formats import open_benchmark
    from cloud.data.labelled import LabelledImages
    from cloud.data.splits import load_split
    from cloud.teacher.factory import teacher_for
    from cloud.teacher.text_encoder import TextEncoder
    from protocol.errors import ConfigError

    shots = [int(s) for s in args.shots.split(",") if s.strip()]
    if not shots or min(shots) < 1:
        raise ConfigError(f"--shots needs positive integers, got {args.shots!r}")
    project = project_from_args(
        args, {"teacher.model": args.teacher, "teacher.pretrained": args.pretrained}
    )
    train = load_split(project.data, "train")
    test = load_split(project.data, "test").take(args.num_test)
    teacher = teacher_for(project.teacher, train.class_names, project.data.image_size)
    domains = {"clean": (image_features(teacher, test.images), test.labels)}
    data = project.data.shifted
    if Path(data.partition(":")[2] or data).is_dir():
        bench = open_benchmark(data)
        for name in [c for c in parse_corruptions("test") if c in bench.corruptions()]:
            count = min(args.num_per_domain, bench.count(name))
            shifted = bench.load(name, args.severity, count)
            domains[name] = (image_features(teacher, shifted.images), shifted.labels)
    encoder = TextEncoder(teacher)
    zero_shot = teacher.class_vectors(train.class_names, project.teacher.template)
    rows = {"zero-shot": evaluate_domains(domains, zero_shot)}
    out = args.out or project.root / "runs" / time.strftime("coop-%Y%m%d-%H%M%S")
    out.mkdir(parents=True, exist_ok=True)
    for k in shots:
        learner = CoOpPromptLearner(
            encoder,
            train.class_names,
            args.num_ctx,
            args.ctx_init or None,
            args.class_specific,
            args.position,
            seed=args.seed,
        )
        idx = few_shot_indices(train.labels, k, args.seed)
        subset = LabelledImages(
            train.images[idx], train.labels[idx], train.class_names, f"{k}-shot"
        )
        losses = fit(learner, teacher, subset, FewShotConfig(epochs=args.epochs, seed=args.seed))
        with torch.no_grad():
            rows[f"CoOp {k}-shot"] = evaluate_domains(domains, learner.class_vectors())
        save_prompts(out / f"coop_{k}shot.pt", learner, {"shots": k, "final_loss": losses[-1]})
    _write_prompt_report(out, rows, vars(args))
    print(f'to distil with a prompt, set teacher.prompts = "{out / f"coop_{shots[-1]}shot.pt"}"')
    return 0


def _write_prompt_report(
    out: Path, rows: dict[str, dict[str, float]], args: dict[str, object]
) -> None:
    from cloud.coop.fewshot import mean_of

    lines = [
        "# CoOp prompt learning on the teacher",
        "",
        "Command arguments: " + ", ".join(f"{k}={v}" for k, v in args.items() if k != "handler"),
        "",
        "| prompts | clean (%) | shifted mean (%) |",
        "|---|---|---|",
    ]
    summary = {}
    for name, accs in rows.items():
        shifted = [v for k, v in accs.items() if k != "clean"]
        summary[name] = {
            "clean": accs["clean"],
            "shifted_mean": mean_of(shifted),
            "per_domain": accs,
        }
        lines.append(f"| {name} | {100 * accs['clean']:.1f} | {100 * mean_of(shifted):.1f} |")
    (out / "results.json").write_text(json.dumps(summary, indent=2) + "\n")
    (out / "results.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    print(f"wrote {out / 'results.json'}, {out / 'results.md'} and the learned prompts")
