"""EvalRun -> JUnit XML (junitparser): one testsuite per file, one testcase per conversation or
tool test; a failed expectation is a <failure>, a case the server failed an <error>, a case with
nothing evaluated <skipped>."""

from __future__ import annotations

from pathlib import Path

from .results import ERROR, FAIL, SKIPPED


def junit_xml(run):
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
            text = "\n".join(f"turn {e.turn} {e.kind} ({e.at}): {e.explanation or 'failed'}" for e in failed)
            failure = Failure(f"{len(failed)} expectation(s) failed: " + "; ".join(f"{e.kind} at turn {e.turn}" for e in failed), "failure")
            failure.text = text
            case.result = [failure]
        elif c.outcome == SKIPPED:
            why = next((e.explanation for e in c.expectations if e.explanation), "nothing evaluated")
            case.result = [Skipped(why)]
        case.system_out = "\n".join(f"{e.outcome} turn {e.turn} {e.kind}: {e.explanation}" for e in c.expectations) or None
        suite.add_testcase(case)
    for suite in suites.values():
        suite.update_statistics()
    xml.update_statistics()
    return xml


def write_junit(run, path: str | Path) -> Path:
    path = Path(path)
    junit_xml(run).write(str(path), pretty=True)
    return path
