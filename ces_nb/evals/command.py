"""`ces-nb eval PATH...`: run evaluations, print a summary table, write JUnit XML.
Exit status 0 when all pass, 1 when any fails (or, with --baseline, latency regressed), 2 when
it could not run (bad files, bad arguments, no connection)."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

USAGE, FAILED, OK = 2, 1, 0


def add_eval_parser(sub) -> None:
    p = sub.add_parser("eval", help="run goldens, tool tests, turn evals and CES Evaluations; JUnit XML for CI",
                       description=__doc__)
    p.add_argument("paths", nargs="+", metavar="PATH", help="evaluation files or folders (.yaml/.yml/.json)")
    p.add_argument("--endpoint", metavar="HOST:PORT", help="an emulator (default: the local one, started if needed)")
    p.add_argument("--app", metavar="A", help="an app id, or a full projects/…/apps/… name (real CES without --endpoint)")
    p.add_argument("--junit", metavar="FILE", help="write JUnit XML: one testcase per conversation or tool test")
    p.add_argument("--parallel", type=int, default=1, metavar="N", help="cases at once (default 1)")
    p.add_argument("--baseline", metavar="RUN.json", help="a saved run (EvalRun.save / --save): also fail on pass→fail and "
                                                            "on latency regressions beyond --latency-threshold")
    p.add_argument("--latency-threshold", type=float, default=0.25, metavar="R",
                   help="with --baseline: a span kind's p90 may grow by this fraction (default 0.25)")
    p.add_argument("--save", metavar="RUN.json", help="save this run, to read again or use as a baseline")
    p.add_argument("--html", metavar="FILE", help="write the HTML report")
    p.set_defaults(func=run_command, log_level="WARNING")


def _client(args):
    from ..client import connect

    if args.endpoint:
        return connect(app=args.app if args.app and args.app.startswith("projects/") else None, endpoint=args.endpoint)
    if args.app and args.app.startswith("projects/"):
        return connect(args.app)
    return connect()


def run_command(args: argparse.Namespace) -> int:
    from ..errors import CesError
    from .errors import EvalFileError
    from .junit import write_junit
    from .run import EvalRun
    from .runner import evaluate

    if args.parallel < 1:
        print("ces-nb eval: --parallel takes a number from 1 up", file=sys.stderr)
        return USAGE
    if args.latency_threshold < 0:
        print("ces-nb eval: --latency-threshold is a fraction from 0 up (0.25: p90 may grow by a quarter)", file=sys.stderr)
        return USAGE
    if args.baseline and not Path(args.baseline).expanduser().is_file():
        print(f"ces-nb eval: {args.baseline}: no such file (--baseline takes a run saved with --save or EvalRun.save)", file=sys.stderr)
        return USAGE
    try:
        baseline = EvalRun.load(args.baseline) if args.baseline else None
        client = _client(args)
        run = evaluate(args.paths, client=client, app=args.app, parallel=args.parallel, progress=sys.stderr.isatty())
    except (EvalFileError, CesError, ValueError, FileNotFoundError) as exc:
        print(f"ces-nb eval: {exc}", file=sys.stderr)
        return USAGE
    comparison = run.compare(baseline) if baseline is not None else None
    if comparison is not None:
        comparison.threshold = args.latency_threshold
    slow = comparison.latency_regressions(args.latency_threshold) if comparison is not None else []
    # files first: a closed stdout (`| head`) must not lose the JUnit file CI reads
    if args.junit:
        write_junit(run, args.junit, latency_regressions=slow, threshold=args.latency_threshold)
    if args.save:
        run.save(args.save)
    if args.html:
        Path(args.html).write_text(html_document(run, comparison), encoding="utf-8")
    status = OK if run.passed else FAILED
    if comparison is not None and (comparison.regressions or slow):
        status = FAILED
    try:
        table = run.cases_frame.drop(columns=["tags"])
        table["latency_ms"] = [f"{v:.1f} ms" if v == v and v is not None else "" for v in table["latency_ms"]]
        print(table.rename(columns={"latency_ms": "latency"}).to_string(index=False))
        print()
        print(run.text(cases=False))
        if comparison is not None:
            print()
            print(comparison.text())
        sys.stdout.flush()
    except BrokenPipeError:
        # the reader went away (`ces-nb eval … | head`): as Python's signal docs advise, point
        # stdout at devnull so the interpreter's final flush does not raise again
        import os

        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
    return status


def html_document(run, comparison=None) -> str:
    """The HTML report as a page of its own (`--html`)."""
    import html

    title = html.escape(f"ces_nb evaluation: {run.meta.get('app', '')}".strip())
    body = (comparison._repr_mimebundle_()["text/html"] if comparison is not None else "") + run._repr_mimebundle_()["text/html"]
    return (f"<!doctype html>\n<html lang=\"en\">\n<head>\n<meta charset=\"utf-8\">\n<title>{title}</title>\n</head>\n"
            f"<body>\n{body}\n</body>\n</html>\n")
