"""EvalRun -> JUnit XML (junitparser): one testsuite per file, one testcase per conversation or
tool test; a failed expectation is a <failure>, a case the server failed an <error>, a case with
nothing evaluated <skipped>."""

from __future__ import annotations

from pathlib import Path

from .report import rule_text
from .results import ERROR, FAIL, SKIPPED


def junit_xml(run, latency_regressions: list[str] | None = None, threshold: float | None = None):
    """`latency_regressions` (RunComparison.latency_regressions' lines, with --baseline): a
    testsuite "latency" with a failed testcase per span kind whose p90 regressed."""
    from junitparser import Error, Failure, JUnitXml, Skipped, TestCase, TestSuite

    xml = JUnitXml(name="ces_nb evaluate")
    suites: dict[str, TestSuite] = {}
    for c in run.cases:
        source = c.key.split("::", 1)[0] if "::" in c.key else "cases"
        suite = suites.get(source)
        if suite is None:
            suite = suites[source] = TestSuite(source)
            xml.add_testsuite(suite)
        case = TestCase(c.name, classname=f"{c.kind}.{source}", time=round((c.latency_ms or 0) / 1000, 3))
        failed = [e for e in c.expectations if e.outcome in (FAIL, ERROR)]
        if c.outcome == ERROR:
            case.result = [Error(c.error, "error")]
        elif failed:
            from .report import failure_lines

            text = "\n".join(line for e in failed for line in failure_lines(e))
            failure = Failure(f"{len(failed)} expectation(s) failed: " + "; ".join(f"{e.kind} at turn {e.turn}" for e in failed), "failure")
            failure.text = text
            case.result = [failure]
        elif c.outcome == SKIPPED:
            why = next((e.explanation for e in c.expectations if e.explanation), "nothing evaluated")
            case.result = [Skipped(why)]
        case.system_out = "\n".join(f"{e.outcome} turn {e.turn} {e.kind} ({e.at}): {rule_text(e)}"
                                     + (f" · {e.explanation}" if e.explanation else "") for e in c.expectations) or None
        suite.add_testcase(case)
    if latency_regressions:
        suite = TestSuite("latency")
        xml.add_testsuite(suite)
        limit = f" (more than {threshold:.0%})" if threshold is not None else ""
        for problem in latency_regressions:
            kind = problem.split(":", 1)[0]
            case = TestCase(f"{kind} p90", classname="latency")
            failure = Failure(f"latency regression: {kind} p90 grew{limit} against the baseline", "latency")
            failure.text = problem
            case.result = [failure]
            suite.add_testcase(case)
    for suite in suites.values():
        suite.update_statistics()
    xml.update_statistics()
    return xml


def write_junit(run, path: str | Path, latency_regressions: list[str] | None = None, threshold: float | None = None) -> Path:
    path = Path(path)
    junit_xml(run, latency_regressions, threshold).write(str(path), pretty=True)
    return path
