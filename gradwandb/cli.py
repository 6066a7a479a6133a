"""The ``gradwandb`` command line.

Each subcommand is one function, named after it, listed in :data:`COMMANDS`: it receives its
own argument parser, adds its flags, and returns the handler that runs it with the parsed
arguments and returns the exit status. Its docstring's first line is its ``--help`` summary.

    gradwandb demo --steps 100 --cell lstm
    python -m gradwandb demo --online
    gradwandb report wandb/offline-run-*-broken wandb/offline-run-*-fixed -o report.html
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Sequence

from gradwandb import __version__
from gradwandb.models import CELLS

Handler = Callable[[argparse.Namespace], int]
Command = Callable[[argparse.ArgumentParser], Handler]


def positive_int(text: str) -> int:
    """An argparse type: an integer above zero."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}") from None
    if value <= 0:
        raise argparse.ArgumentTypeError(f"must be a positive integer, got {value}")
    return value


def positive_float(text: str) -> float:
    """An argparse type: a finite number above zero."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive number, got {text!r}") from None
    if not 0 < value < float("inf"):
        raise argparse.ArgumentTypeError(f"must be a positive number, got {text}")
    return value


def clip_value(text: str) -> float | None:
    """An argparse type: a max gradient norm, or ``none`` for no clipping."""
    if text.strip().lower() in ("none", "off"):
        return None
    return positive_float(text)


def demo(parser: argparse.ArgumentParser) -> Handler:
    """Train a seq2seq RNN whose gradients explode, then with the fix gradwandb suggests."""
    parser.description = (
        "Two W&B runs of a seq2seq RNN learning to reverse sequences: demo-broken (recurrent "
        "weights that start too large, no clipping) and demo-fixed (fixes gradwandb's diagnosis "
        "suggests: orthogonal recurrent weights, --clip, and --cell if you choose another). "
        "Prints each run's loss, accuracy and diagnosis, and where the runs are."
    )
    parser.add_argument("--steps", type=positive_int, default=600, help="optimizer steps per run")
    parser.add_argument("--batch", type=positive_int, default=128, help="sequences per batch")
    parser.add_argument("--seq-len", type=positive_int, default=8, help="sequence length")
    parser.add_argument("--vocab", type=_vocab_size, default=12, help="vocabulary size")
    parser.add_argument("--hidden", type=positive_int, default=64, help="hidden size")
    parser.add_argument(
        "--cell", choices=sorted(CELLS), default="rnn", help="the fixed run's recurrent cell"
    )
    parser.add_argument(
        "--lr", type=positive_float, default=1e-2, help="Adam learning rate (cosine decay)"
    )
    parser.add_argument(
        "--clip",
        type=clip_value,
        default=1.0,
        metavar="MAX_NORM",
        help="the fixed run clips the global gradient norm to this, or 'none'",
    )
    parser.add_argument(
        "--only", choices=("broken", "fixed"), default=None, help="train only this run"
    )
    parser.add_argument("--seed", type=int, default=0, help="seed for weights and data")
    parser.add_argument("--project", default="gradwandb-demo", help="W&B project")
    parser.add_argument(
        "--dir",
        metavar="DIR",
        help="write the runs under DIR/wandb/; unset: under $WANDB_DIR or the current folder",
    )
    parser.add_argument(
        "--online",
        action="store_true",
        help="let W&B decide the mode (log in and upload live) instead of logging offline",
    )
    parser.add_argument("--no-progress", action="store_true", help="hide the progress bars")

    def handler(args: argparse.Namespace) -> int:
        from gradwandb.demo import run_demo

        run_demo(
            steps=args.steps,
            batch=args.batch,
            seq_len=args.seq_len,
            vocab=args.vocab,
            hidden=args.hidden,
            cell=args.cell,
            lr=args.lr,
            clip=args.clip,
            only=args.only,
            seed=args.seed,
            project=args.project,
            dir=args.dir,
            online=args.online,
            progress=not args.no_progress,
        )
        return 0

    return handler


def sweep(parser: argparse.ArgumentParser) -> Handler:
    """Run a W&B sweep on this machine, with no server: runs offline, a table at the end."""
    parser.description = (
        "Run the sweep in FILE (W&B's sweep YAML) here, with no W&B server: the open-source "
        "sweep engine suggests each run's configuration (grid, random, bayes; hyperband stops "
        "runs early), and each program starts as `wandb agent` starts it (the same command "
        "macros, the parameter file in WANDB_SWEEP_PARAM_PATH, WANDB_SWEEP_ID). Runs log "
        "offline unless WANDB_MODE says otherwise, under DIR/wandb, grouped under the sweep. "
        "The sweep's state lives in DIR: started again, it finishes what is left. At the end it "
        "prints config -> verdict, final loss and accuracy, max gradient norm and clip rate, "
        "and writes them to DIR/results.csv and DIR/results.md."
    )
    parser.add_argument("file", metavar="FILE", help="the sweep YAML (e.g. sweeps/smoke.yaml)")
    parser.add_argument(
        "--count",
        type=positive_int,
        default=None,
        metavar="N",
        help="runs in all (default: the whole grid; random and bayes need it)",
    )
    parser.add_argument(
        "--workers", type=positive_int, default=1, metavar="K", help="programs run at once"
    )
    parser.add_argument(
        "--dir",
        metavar="DIR",
        default=None,
        help="the sweep folder: state, runs and results (default: sweep-runs/<sweep name>)",
    )
    parser.add_argument("--seed", type=int, default=0, help="seed of the random and bayes search")
    parser.add_argument("--no-progress", action="store_true", help="hide the progress bar")

    def handler(args: argparse.Namespace) -> int:
        from gradwandb.read.sweep import SweepError, load_sweep
        from gradwandb.read.sweep_runner import run_sweep

        try:
            spec = load_sweep(args.file)
            folder = args.dir if args.dir is not None else f"sweep-runs/{spec.name}"
            run_sweep(
                spec,
                folder,
                count=args.count,
                workers=args.workers,
                seed=args.seed,
                progress=not args.no_progress,
            )
        except SweepError as error:
            print(f"gradwandb sweep: {error}", file=sys.stderr)
            return 2
        return 0

    return handler


def step_list(text: str) -> list[int]:
    """An argparse type: optimizer steps separated by commas (``0,50,100``)."""
    try:
        steps = [int(part) for part in text.split(",") if part.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"expected optimizer steps separated by commas (e.g. 0,50,100), got {text!r}"
        ) from None
    if not steps or any(s < 0 for s in steps):
        raise argparse.ArgumentTypeError(f"expected steps of 0 or more, got {text!r}")
    return steps


def report(parser: argparse.ArgumentParser) -> Handler:
    """Turn runs or a sweep into one self-contained HTML page, or a W&B Report."""
    parser.description = (
        "Read what runs logged (offline run directories, or entity/project/run_id on W&B) and "
        "write one HTML file that opens with no network: the global norm and clip "
        "coefficient, the layer x step heatmap, gradient-flow bars, per-timestep (BPTT) "
        "curves, the verdict and findings with their fixes, the parameter table and config. "
        "Several runs are shown side by side (before and after a fix). With --sweep, the "
        "sweep's phase diagram, parameter-versus-outcome plots and table. With --publish, a W&B "
        "Report in --entity/--project instead (needs `wandb login` and "
        "pip install 'gradwandb[reports]'); it prints the report's URL."
    )
    parser.add_argument(
        "runs",
        nargs="*",
        metavar="RUN",
        help="offline run directory or entity/project/run_id%(default).0s",
    )
    parser.add_argument(
        "--sweep",
        metavar="SWEEP",
        help="a sweep folder (gradwandb sweep --dir) or a W&B sweep%(default).0s",
    )
    parser.add_argument(
        "-o", "--output", metavar="FILE", default=None,
        help="the HTML file (default: report.html, or sweep-report.html with --sweep)%(default).0s",
    )  # fmt: skip
    parser.add_argument(
        "--steps", type=step_list, default=None, metavar="S,S,...",
        help="optimizer steps of the flow bars (default: first, middle, last)%(default).0s",
    )  # fmt: skip
    parser.add_argument("--title", default=None, help="the page's (or Report's) title%(default).0s")
    parser.add_argument(
        "--publish", action="store_true", help="save a W&B Report instead%(default).0s"
    )
    parser.add_argument(
        "--entity", default=None, help="W&B entity of the Report (--publish)%(default).0s"
    )
    parser.add_argument(
        "--project", default=None, help="W&B project of the Report (--publish)%(default).0s"
    )
    parser.add_argument(
        "--no-progress", action="store_true", help="hide the progress bars%(default).0s"
    )

    def handler(args: argparse.Namespace) -> int:
        from gradwandb.report import PublishError, ReportError

        try:
            if not args.runs and not args.sweep:
                raise ReportError("pass one or more RUN directories, or --sweep SWEEP")
            if args.publish:
                print(_publish(args))
                return 0
            if args.sweep:
                from gradwandb.report.sweep import write_sweep_report

                path = write_sweep_report(
                    args.sweep,
                    args.output or "sweep-report.html",
                    title=args.title,
                    progress=not args.no_progress,
                )
                if args.runs:
                    print("gradwandb report: with --sweep, the RUN arguments are ignored",
                          file=sys.stderr)  # fmt: skip
            else:
                from gradwandb.report.render import write_report

                path = write_report(
                    args.runs,
                    args.output or "report.html",
                    steps=args.steps,
                    title=args.title,
                    progress=not args.no_progress,
                )
        except ReportError as error:
            print(f"gradwandb report: {error}", file=sys.stderr)
            return 2
        except PublishError as error:
            print(f"gradwandb report --publish: {error}", file=sys.stderr)
            return 1
        print(f"report: {path.resolve()} ({path.stat().st_size / 1e6:.2f} MB)")
        return 0

    return handler


def _publish(args: argparse.Namespace) -> str:
    """Build the W&B Report of ``args`` and save it; returns its URL."""
    from gradwandb.report.publish import PublishError, brief_of, build_wandb_report, save_report
    from gradwandb.report.sources import load_run
    from gradwandb.report.sweep import load_sweep_data

    if not args.entity or not args.project:
        raise PublishError("--publish needs --entity E and --project P (where the runs are)")
    briefs = [brief_of(label, log) for label, _, log in (load_run(r) for r in args.runs)]
    sweep = load_sweep_data(args.sweep) if args.sweep else None
    built = build_wandb_report(
        args.entity, args.project, runs=briefs, sweep=sweep, title=args.title
    )
    return save_report(built)


COMMANDS: tuple[Command, ...] = (demo, report, sweep)


def build_parser() -> argparse.ArgumentParser:
    """The ``gradwandb`` parser with every subcommand in :data:`COMMANDS`."""
    parser = argparse.ArgumentParser(
        prog="gradwandb",
        description="Gradient health for PyTorch training, logged to Weights & Biases.",
    )
    parser.add_argument("--version", action="version", version=f"gradwandb {__version__}")
    subparsers = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for command in COMMANDS:
        summary = (command.__doc__ or "").strip().splitlines()[0]
        sub = subparsers.add_parser(
            command.__name__,
            help=summary,
            description=summary,
            formatter_class=argparse.ArgumentDefaultsHelpFormatter,
        )
        sub.set_defaults(handler=command(sub))
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run ``gradwandb`` with ``argv`` (default ``sys.argv[1:]``); returns the exit status."""
    args = build_parser().parse_args(argv)
    handler: Handler = args.handler
    try:
        return handler(args)
    except KeyboardInterrupt:
        print("gradwandb: interrupted", file=sys.stderr)
        return 130


def _vocab_size(text: str) -> int:
    value = positive_int(text)
    if value < 2:
        raise argparse.ArgumentTypeError(f"must be at least 2, got {value}")
    return value
