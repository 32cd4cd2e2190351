"""The ``modelpress`` command line: run, demo, export, report, passes, schema, bench.

Bad input (recipe, checkpoint, data, folder) ends with one plain line per problem
on stderr and exit status 2; an artifact that fails export or parity, exit status 1; a bug in
modelpress, exit status 3 with one line pointing to the traceback saved in the run folder's run.log.
"""

import argparse
import contextlib
import os
import signal
import sys
from importlib import resources
from pathlib import Path

from compress.core.errors import ModelpressError, OutputError

EXAMPLES = {
    "run": "example:\n  modelpress run recipe.yaml --out runs/my-model",
    "demo": "example:\n  modelpress demo --out runs/demo",
    "export": "example:\n  modelpress export recipe.yaml --out runs/my-model   # then: modelpress report runs/my-model",
    "report": "example:\n  modelpress report runs/my-model   # re-measure on this machine, rewrite report.json/md",
    "passes": "example:\n  modelpress passes --verbose   # every key: type, default, range, doc\n"
    "  modelpress passes distill",
    "schema": "example:\n  modelpress schema > recipe.schema.json   # point your editor's YAML schema setting at it",
    "bench": "example:\n  modelpress bench minilm-sts --out reports/benchmarks   # needs: pip install -e '.[bench]'",
    "search": "example:\n  modelpress search recipe.yaml --objective latency --batch-size 32 --max-drop 0.5 "
    "--budget-minutes 10 --out searches/my-model\n  modelpress run searches/my-model/recipe.yaml   # the chosen point\n"
    "  modelpress search recipe.yaml --workers 2 --storage postgresql://user@db/searches   # a shared study\n"
    "  modelpress search recipe.yaml --join postgresql://user@db/searches   # one more worker, on any machine",
}


def demo_recipe_path() -> Path:
    return Path(str(resources.files("compress").joinpath("recipes/demo.yaml")))


def _finish(result) -> int:
    from compress.core.untrusted import escape

    for line in result.failures:
        print(f"modelpress: artifact failed: {escape(line)}", file=sys.stderr)
    if result.report_path:
        print(result.report_path)
    return 1 if result.failures else 0


def _cmd_run(args) -> int:
    from compress.api import run_recipe

    return _finish(run_recipe(args.recipe, args.out, force=args.force, trust_checkpoint=args.trust_checkpoint))


def _cmd_demo(args) -> int:
    from compress.api import run_recipe

    return _finish(run_recipe(demo_recipe_path(), args.out or "runs/demo"))


def _cmd_export(args) -> int:
    from compress.api import run_recipe

    result = run_recipe(args.recipe, args.out, report=False, force=args.force, trust_checkpoint=args.trust_checkpoint)
    for artifact in result.artifacts:
        print(artifact["path"])
    return _finish(result)


def _cmd_report(args) -> int:
    from compress.api import report_run

    return _finish(report_run(args.run_dir, trust_run=args.trust_run))


def _ratios(text: str) -> list[float]:
    try:
        return [float(part) for part in text.split(",") if part.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated ratios like 0.5,0.75; got {text!r}") from None


def _schemes(text: str) -> list[str]:
    return [part.strip() for part in text.split(",") if part.strip()]


def _cmd_search(args) -> int:
    from compress.search.driver import search_recipe

    options = {key: getattr(args, key) for key in SEARCH_OPTIONS}
    result = search_recipe(
        args.recipe,
        trust_checkpoint=args.trust_checkpoint,
        out_dir=args.out,
        force=args.force,
        workers=args.workers,
        storage=args.storage,
        join=args.join,
        **options,
    )
    if args.join:  # a worker of another search: that search writes the report
        return 0
    print(result.recipe_path)
    print(result.report_path)
    return 0


def _cmd_passes(args) -> int:
    from compress.recipe.describe import describe_pass
    from compress.recipe.registry import get_pass, list_passes

    names = [get_pass(args.name).name] if args.name else list_passes()  # an unknown name: exit 2 with hints
    for name in names:
        if args.name or args.verbose:
            print("\n".join(describe_pass(name)))
            continue
        doc = (sys.modules[get_pass(name).apply.__module__].__doc__ or "").strip()
        print(f"{name}: {doc.splitlines()[0].split(': ', 1)[-1] if doc else ''}")
    return 0


def _cmd_schema(args) -> int:
    import json

    from compress.recipe.describe import recipe_schema

    try:
        print(json.dumps(recipe_schema(), indent=2))
        sys.stdout.flush()
    except OSError as exc:  # stdout a full disk (> /dev/full) or a closed pipe
        # What is still buffered goes nowhere: the interpreter's last flush would otherwise fail again.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        raise OutputError(
            f"stdout: the schema could not be written ({exc.strerror or exc}); redirect it to a file with space"
        ) from None
    return 0


def _bench_suites() -> list[str]:
    try:
        from benchmarks.__main__ import SUITES
    except ImportError:  # an installed wheel ships no benchmarks package
        return []
    return sorted(SUITES)


def _version() -> str:
    from export.measure.environment import package_version

    return package_version("modelpress") or "unknown (not installed)"


def _cmd_bench(args) -> int:
    from benchmarks.__main__ import main as bench_main

    return bench_main([args.suite, *(["--quick"] if args.quick else []), "--out", args.out])


COMMANDS = {
    "run": (_cmd_run, "compress a checkpoint with a recipe, export ONNX, verify, benchmark, report"),
    "demo": (_cmd_demo, "run the embedded default recipe on a residual CNN trained on digits"),
    "export": (_cmd_export, "run the recipe's passes (resuming) and export + verify the ONNX artifacts"),
    "report": (_cmd_report, "measure the artifacts of a run folder in ONNX Runtime and write the report"),
    "passes": (_cmd_passes, "list the registered passes; --verbose or NAME: every key with type, default, range"),
    "schema": (_cmd_schema, "print the JSON Schema of a recipe (every pass's keys included)"),
    "bench": (_cmd_bench, "run a benchmark suite beside the peer tools; write reports/benchmarks/<suite>.md/.json"),
    "search": (_cmd_search, "search pruning, distillation and quantization for the fastest model within a budget"),
}
# The search's flags, each overriding the key of the recipe's ``search:`` section with its name.
SEARCH_OPTIONS = {
    "objective": dict(choices=["latency", "size"], help="minimize p50 latency at --batch-size, or the ONNX file size"),
    "batch_size": dict(type=int, help="batch size latency is measured at (default 32)"),
    "max_drop": dict(type=float, help="accuracy budget in points below fp32 on validation (default 1.0)"),
    "budget_minutes": dict(type=float, help="no trial starts after this many minutes (default 60)"),
    "prune_ratios": dict(type=_ratios, help="structured pruning ratios to try, e.g. 0.5,0.625,0.75"),
    "quantize": dict(type=_schemes, help="quantization schemes to try, e.g. none,int8_static"),
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="modelpress",
        description="Prune, distill and quantize PyTorch models; export verified ONNX with a report.",
        epilog="example:\n  modelpress demo --out runs/demo",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"modelpress {_version()}")
    _add_verbosity(parser, False)
    sub = parser.add_subparsers(dest="command", required=True)
    for name, (handler, help_text) in COMMANDS.items():
        cmd = sub.add_parser(
            name,
            help=help_text,
            description=help_text,
            epilog=EXAMPLES[name],
            formatter_class=argparse.RawDescriptionHelpFormatter,
        )
        # SUPPRESS: a subcommand's default must not overwrite "-v" given before the subcommand.
        _add_verbosity(cmd, argparse.SUPPRESS)
        cmd.set_defaults(handler=handler)
        if name in ("run", "export", "search"):
            cmd.add_argument("recipe", help="recipe YAML file")
        if name == "report":
            cmd.add_argument("run_dir", help="folder of an earlier run or export")
            cmd.add_argument(
                "--trust-run",
                action="store_true",
                help="import the data factory and custom metric named by the folder's recipe (they run code): "
                "only for folders you trust; without it the report is re-measured from the stored .npz files",
            )
        if name in ("run", "demo", "export"):
            cmd.add_argument("--out", help="run folder (default: runs/<recipe name>); rerunning into it resumes")
        if name == "search":
            for key, settings in SEARCH_OPTIONS.items():
                cmd.add_argument(f"--{key.replace('_', '-')}", dest=key, **settings)
            cmd.add_argument("--out", help="search folder (default: searches/<recipe name>); rerunning into it resumes")
            cmd.add_argument(
                "--workers", type=int, default=1, help="worker processes on this machine running trials (default 1)"
            )
            cmd.add_argument(
                "--storage",
                help="Optuna storage URL of the search's study (default: study.db, SQLite, in the search folder); "
                "postgresql://... to share it with --join workers of other machines",
            )
            cmd.add_argument(
                "--join",
                metavar="STORAGE",
                help="add a worker to the running search of this recipe whose study is at STORAGE (a URL, or the "
                "search folder on this machine); its trials' files go to --out",
            )
        if name in ("run", "export", "search"):
            cmd.add_argument("--force", action="store_true", help="replace a run of another recipe in --out")
            cmd.add_argument(
                "--trust-checkpoint",
                action="store_true",
                help="allow a checkpoint that needs full unpickling (it can run code): only for files you trust",
            )
        if name == "passes":
            cmd.add_argument("name", nargs="?", help="one pass: print all its keys")
        if name == "bench":
            suites = _bench_suites()
            cmd.add_argument("suite", choices=suites or None, help=f"suite: {', '.join(suites) or 'none installed'}")
            cmd.add_argument("--quick", action="store_true", help="smoke mode: a few batches, few timing rounds")
            cmd.add_argument("--out", default="reports/benchmarks", help="folder for <suite>.md/.json")
    return parser


def _save_traceback() -> Path:
    """Append the current exception's traceback to the run folder's run.log (or a temp file)."""
    import tempfile
    import time
    import traceback

    from compress.core.io import active_folder

    text = f"--- internal error {time.strftime('%Y-%m-%dT%H:%M:%S')} ---\n{traceback.format_exc()}"
    folder = active_folder()
    if folder is not None:
        from compress.core.untrusted import open_append

        try:
            with open_append(folder / "run.log", "run.log") as log_file:  # never through a planted link
                log_file.write(text)
            return folder / "run.log"
        except (OSError, ModelpressError):
            pass  # the folder itself may be the problem: fall back to the temp dir
    fd, name = tempfile.mkstemp(prefix="modelpress-error-", suffix=".log")
    with os.fdopen(fd, "w") as log_file:
        log_file.write(text)
    return Path(name)


def _interrupt_on_sigterm() -> None:
    # SIGTERM unwinds like Ctrl-C, so temporary folders (with-blocks) are removed on the way out.
    def handler(signum, frame):
        raise KeyboardInterrupt

    try:
        signal.signal(signal.SIGTERM, handler)
    except ValueError:
        pass  # not the main thread (main() called from a worker): keep the default


def _add_verbosity(parser: argparse.ArgumentParser, default) -> None:
    group = parser.add_mutually_exclusive_group()
    group.add_argument("-q", "--quiet", action="store_true", default=default, help="print only warnings and results")
    group.add_argument(
        "-v", "--verbose", action="store_true", default=default, help="also show third-party output (always in run.log)"
    )


def main(argv: list[str] | None = None) -> int:
    from compress.core import log
    from compress.core.io import set_active_folder

    args = build_parser().parse_args(argv)
    log.set_verbosity(quiet=args.quiet, verbose=args.verbose)
    log.reopen_closed_handlers()
    set_active_folder(None)
    previous = signal.getsignal(signal.SIGTERM)
    _interrupt_on_sigterm()
    try:
        return args.handler(args)
    except ModelpressError as exc:
        from compress.core.untrusted import escape

        for line in str(exc).splitlines():
            print(f"modelpress: error: {escape(line)}", file=sys.stderr)  # it may quote a folder's names
        return exc.exit_code
    except KeyboardInterrupt:
        print("modelpress: interrupted; completed stages are kept, rerun the same command to resume", file=sys.stderr)
        return 130
    except Exception as exc:  # noqa: BLE001  (a bug in modelpress: one line here, the traceback in the log)
        from compress.core.untrusted import escape

        reason = escape(str(exc).splitlines()[0]) if str(exc) else ""
        path = _save_traceback()
        print(
            f"modelpress: internal error: {type(exc).__name__}: {reason}; full traceback in {path} "
            "(please report it with that file)",
            file=sys.stderr,
        )
        return 3
    finally:
        with contextlib.suppress(ValueError):
            signal.signal(signal.SIGTERM, previous)


if __name__ == "__main__":
    sys.exit(main())
