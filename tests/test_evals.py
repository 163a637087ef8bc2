"""Evaluations against the real emulator, over a real socket, through the official client:
every format passes on the apps they were written for, deliberate breakage fails exactly where
expected, bad files name the file and the place, parallel runs, compare, JUnit against a schema."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

import ces_nb
from ces_nb.evals import EvalFileError, EvalRun, load
from conftest import EmulatorProcess

ROOT = Path(__file__).resolve().parent.parent
DEMO_EVALS = ROOT / "ces_nb" / "demo_app" / "evals"
DEMO_APP = ROOT / "ces_nb" / "demo_app" / "skyway"
ACME = ROOT / "tests" / "apps" / "cxas_project"
PET_CLINIC = ROOT / "notebooks" / "pet_clinic" / "cxas_app" / "Pet Clinic"
XSD = ROOT / "tests" / "evals_fixtures" / "junit.xsd"
GOLDENS = DEMO_EVALS / "goldens" / "skyway.yaml"
NATIVE = DEMO_EVALS / "evaluations" / "book_seat.evaluation.json"

# What the broken copy of the demo app gets wrong, and so exactly where its goldens must fail.
BROKEN_WHERE = {
    ("goldens/skyway.yaml::flight_status", 1, "agent_response"),
    ("goldens/skyway.yaml::goodbye", 1, "end_session"),
    ("goldens/skyway.yaml::book_seat", 1, "tool_call"),
    ("evaluations/book_seat.evaluation.json::book_seat_native", 1, "tool_call"),
}


def _break_demo_app(dest: Path) -> Path:
    app = dest / "skyway"
    shutil.copytree(DEMO_APP, app)
    flight = app / "examples" / "flight_status" / "flight_status.yaml"
    flight.write_text(flight.read_text().replace("It departs from gate {gate} at {departure_time}.", "Have a nice day."))
    goodbye = app / "examples" / "goodbye" / "goodbye.yaml"
    data = yaml.safe_load(goodbye.read_text())
    data["messages"][1]["chunks"] = [c for c in data["messages"][1]["chunks"] if "toolCall" not in c]
    goodbye.write_text(yaml.safe_dump(data))
    book = app / "examples" / "book_seat" / "book_seat.json"
    book.write_text(book.read_text().replace('"cabin": "economy"', '"cabin": "business"'))
    return app


@pytest.fixture(scope="module")
def client(emulator):
    return ces_nb.connect(endpoint=emulator.address, app="skyway")


@pytest.fixture(scope="module")
def other(tmp_path_factory):
    """A second emulator serving a broken copy of the demo app and the cxas-scrapi test project."""
    tmp = tmp_path_factory.mktemp("evals")
    broken = _break_demo_app(tmp)
    process = EmulatorProcess("--db", str(tmp / "db.sqlite"), "--workers", "1", "--app", str(broken), "--app", str(ACME / "cxas_app" / "Acme Support"),
                              "--app", str(PET_CLINIC))
    yield process
    process.stop()


@pytest.fixture(scope="module")
def broken_client(other):
    return ces_nb.connect(endpoint=other.address, app="skyway")


@pytest.fixture(scope="module")
def good_run(client):
    return ces_nb.evaluate([DEMO_EVALS], client=client, progress=False)


@pytest.fixture(scope="module")
def broken_run(broken_client):
    return ces_nb.evaluate([DEMO_EVALS], client=broken_client, progress=False)


def _failing(run) -> set:
    f = run.frame
    return {(r.conversation, r.turn, r.kind) for r in f[f.outcome.isin(["FAIL", "ERROR"])].itertuples()}


# -- all pass, every format ----------------------------------------------------------------------

def test_the_demo_evals_all_pass_in_every_format(good_run):
    assert good_run.passed, good_run.text()
    kinds = {c.kind for c in good_run.cases}
    assert kinds == {"golden", "turn_eval", "tool_test", "scenario"}
    frame = good_run.frame
    assert set(frame.kind) == {"tool_call", "agent_transfer", "end_session", "agent_response", "no_tool_calls",
                               "tool_output", "tool_response", "rubric", "scenario"}  # tool_order: test_tool_order_and_extra_calls
    assert (frame.outcome == "PASS").sum() >= 30
    assert list(frame.columns[:8]) == ["conversation", "turn", "kind", "metric", "match", "expected", "observed", "outcome"]
    # each golden ran in its own session
    sessions = [c.session for c in good_run.cases if c.kind != "tool_test"]
    assert len(set(sessions)) == len(sessions)


def test_natural_language_and_scenarios_are_marked_not_evaluated_offline(good_run):
    scenario = good_run["anxious_flyer"]
    assert scenario.outcome == "SKIPPED"
    assert all("simulated user" in e.explanation for e in scenario.expectations)
    rubric = [e for e in good_run["goodbye"].expectations if e.kind == "rubric"]
    assert len(rubric) == 1 and rubric[0].outcome == "SKIPPED" and "LLM judge" in rubric[0].explanation
    semantic = [e for e in good_run["greeting"].expectations if e.kind == "agent_response"]
    assert all("text similarity" in e.explanation and "not CES semantic similarity" in e.explanation for e in semantic)


def test_the_scrapi_test_project_passes(other):
    acme = ces_nb.connect(endpoint=other.address, app="acme-support")
    run = ces_nb.evaluate([ACME / "evals"], client=acme, progress=False)
    assert run.passed, run.text()
    assert {c.kind for c in run.cases} == {"golden", "tool_test", "turn_eval"}
    assert len(run.cases) == 7


def test_golden_answers_for_client_tools_are_what_the_agent_sees(good_run):
    # select_seat is a client function: the golden's output (seat 14C, 129) is sent back as the
    # mock response, and the agent's next words quote it.
    case = good_run["book_seat"]
    turn1 = case.turn_objects(1)
    assert len(turn1) == 2  # the call, then the turn the mock response resumed
    assert "You're in seat 14C for 129 USD" in turn1[-1].text
    native = good_run["book_seat_native"].turn_objects(1)[-1]
    assert "seat 3F for 99 USD" in native.text


# -- deliberate mutations ------------------------------------------------------------------------

def test_a_broken_app_fails_exactly_where_it_was_broken(broken_run):
    assert not broken_run.passed
    assert _failing(broken_run) == BROKEN_WHERE
    book = next(e for e in broken_run["book_seat"].expectations if e.kind == "tool_call")
    assert book.score == pytest.approx(2 / 3, abs=0.01) and "cabin" in book.explanation
    assert broken_run["book_seat"].outcome == "FAIL" and broken_run["greeting"].outcome == "PASS"


def test_a_mutated_golden_fails_at_its_mutation(client, tmp_path):
    data = yaml.safe_load(GOLDENS.read_text())
    flight = next(c for c in data["conversations"] if c["conversation"] == "flight_status")
    flight["turns"][0]["tool_calls"][0]["args"]["flight_number"] = "SW999"
    greeting = next(c for c in data["conversations"] if c["conversation"] == "greeting")
    greeting["turns"][1]["agent"] = {"$matchType": "exact", "$matchValue": "You are a SkyWay Miles Silver member, Ada."}
    path = tmp_path / "goldens" / "mutated.yaml"
    path.parent.mkdir()
    path.write_text(yaml.safe_dump(data))
    run = ces_nb.evaluate(path, client=client, progress=False)
    assert _failing(run) == {("goldens/mutated.yaml::flight_status", 1, "tool_call"),
                             ("goldens/mutated.yaml::greeting", 2, "agent_response")}
    call = next(e for e in run["flight_status"].expectations if e.kind == "tool_call")
    assert call.score == 0.0 and "flight_number" in call.explanation and call.observed["args"] == {"flight_number": "SW123"}


@pytest.mark.parametrize("args, passes", [
    ({"flight_number": {"$matchType": "contains", "$matchValue": "W12"}}, True),
    ({"flight_number": {"$matchType": "contains", "$matchValue": "XX"}}, False),
    ({"flight_number": {"$matchType": "regexp", "$matchValue": "^SW\\d+$"}}, True),
    ({"flight_number": {"$matchType": "regexp", "$matchValue": "^AA"}}, False),
    ({"flight_number": {"$matchType": "ignore", "$matchValue": ""}}, True),
    ({"flight_number": {"$matchType": "semantic", "$matchValue": "SW123"}}, True),
    ({"flight_number": {"$matchType": "semantic", "$matchValue": "a train to Paris"}}, False),
    ({"flight_number": {"value": "SW123", "$matchType": "exact"}}, True),
    ({"flight_number": "SW124"}, False),
])
def test_match_types_on_real_tool_calls(client, args, passes):
    golden = {"conversations": [{"conversation": "m", "turns": [{"user": "What's the status of flight SW123?",
                                                                  "tool_calls": [{"action": "get_flight_status", "args": args}]}]}]}
    run = ces_nb.evaluate(golden, client=client, progress=False)
    (row,) = [e for e in run.cases[0].expectations if e.kind == "tool_call"]
    assert (row.outcome == "PASS") is passes, row.explanation


def test_tool_order_and_extra_calls(client):
    golden = {"conversations": [{"conversation": "order", "turns": [{"user": "What's the status of flight SW123?", "tool_calls": [
        {"action": "get_flight_status", "args": {}}, {"action": "search_policies", "args": {}}]}]}]}
    run = ces_nb.evaluate(golden, client=client, progress=False)
    by_kind = {(e.kind, e.expected["tool"] if e.kind == "tool_call" else None): e for e in run.cases[0].expectations}
    assert by_kind[("tool_call", "get_flight_status")].outcome == "PASS"
    assert by_kind[("tool_call", "search_policies")].outcome == "FAIL"
    assert by_kind[("tool_order", None)].score == 0.5


# -- bad files -----------------------------------------------------------------------------------

BAD = [
    ("goldens/x.yaml", {"conversations": [{"conversation": "a", "turns": [{"user": "hi"}]}] * 2 + [
        {"conversation": "c", "turns": [{"user": "hi", "tool_calls": [{"action": "t"}, {"args": {}}]}]}]},
     "conversations[2].turns[0].tool_calls[1]", "expected 'action'"),
    ("goldens/x.yaml", {"conversations": [{"conversation": "a", "turns": [{"agent": "hello"}]}]},
     "conversations[0].turns[0]", "expected 'user'"),
    ("goldens/x.yaml", {"conversations": [{"conversation": "a", "turns": "hi"}]}, "conversations[0].turns", "(a list)"),
    ("goldens/x.yaml", {"conversations": [{"conversation": "a", "turns": [{"user": "hi", "tool_calls": [
        {"action": "t", "args": {"q": {"$matchType": "fuzzy"}}}]}]}]},
     "conversations[0].turns[0].tool_calls[0].args.q.$matchType", "exact, contains, regexp, semantic, ignore"),
    ("goldens/x.yaml", {"conversations": [{"conversation": "a", "turns": [{"user": "hi", "tool_calls": [
        {"action": "t", "args": {"q": {"$matchType": "regexp", "$matchValue": "("}}}]}]}]},
     "conversations[0].turns[0].tool_calls[0].args.q", "does not compile"),
    ("tool_tests/x.yaml", {"tests": [{"name": "a", "tool": "t", "expectations": {"response": [{"path": "$.result.x", "operator": "bigger"}]}}]},
     "tests[0].expectations.response[0].operator", "equals, contains"),
    ("tool_tests/x.yaml", {"tests": [{"name": "a", "tool": "t", "expectations": {"response": [{"path": "$$..[", "operator": "equals"}]}}]},
     "tests[0].expectations.response[0].path", "not a JSONPath"),
    ("turn_evals/x.yaml", {"conversations": [{"name": "a", "user": "hi", "expectations": [{"type": "tool_input", "value": "x"}]}]},
     "conversations[0].expectations[0].value", "takes a mapping"),
    ("turn_evals/x.yaml", {"conversations": [{"name": "a", "user": "hi", "expectations": [{"type": "sounds_like", "value": "x"}]}]},
     "conversations[0].expectations[0].type", "contains, not_contains"),
    ("evaluations/x.json", {"displayName": "a", "golden": {"turns": [{"steps": [{"usrInput": {"text": "hi"}}]}]}},
     "golden.turns[0].steps[0].usrInput", "unknown field 'usrInput'; did you mean 'userInput'?"),
    ("evaluations/x.json", [{"displayName": "a", "golden": {"turns": [{"steps": [{"userInput": {"text": "hi"}},
                                                                                  {"expectation": {"noToolCalls": True}}]}]}}, {"displayName": "b", "golden": {"turns": [{"steps": [
        {"expectation": {"toolCall": {"displayName": "t", "args": 3}}}]}]}}], "[1].golden.turns[0].steps[0].expectation.toolCall.args", ""),
    # misspelt keys at every level: an error naming the key and what it may have meant, never a silent SKIPPED/PASS
    ("goldens/x.yaml", {"conversations": [{"conversation": "a", "turns": [{"user": "hi", "agnet": "Hello"}]}]},
     "conversations[0].turns[0].agnet", "unknown key 'agnet'; did you mean 'agent'? (expected one of user, event, agent"),
    ("goldens/x.yaml", {"conversations": [{"conversation": "a", "turns": [{"user": "hi", "agent": "Hi", "tool_call": [{"action": "t"}]}]}]},
     "conversations[0].turns[0].tool_call", "did you mean 'tool_calls'?"),
    ("goldens/x.yaml", {"conversations": [{"conversation": "a", "turns": [{"user": "hi", "tool_calls": [{"action": "t", "arg": {}}]}]}]},
     "conversations[0].turns[0].tool_calls[0].arg", "did you mean 'args'?"),
    ("goldens/x.yaml", {"conversations": [{"conversation": "a", "turn": [{"user": "hi"}]}]}, "conversations[0].turn", "did you mean 'turns'?"),
    ("goldens/x.yaml", {"conversation": [{"conversation": "a", "turns": [{"user": "hi"}]}]}, "", "'conversations'"),
    ("tool_tests/x.yaml", {"tests": [{"name": "a", "tool": "t", "expectation": {"response": [{"path": "$.x", "operator": "equals"}]}}]},
     "tests[0].expectation", "did you mean 'expectations'?"),
    ("tool_tests/x.yaml", {"tests": [{"name": "a", "tool": "t", "expectations": {"respones": [{"path": "$.x", "operator": "equals"}]}}]},
     "tests[0].expectations.respones", "did you mean 'response'?"),
    ("tool_tests/x.yaml", {"tests": [{"name": "a", "tool": "t", "expectations": {"response": [{"path": "$.x", "operator": "equals", "valeu": 1}]}}]},
     "tests[0].expectations.response[0].valeu", "did you mean 'value'?"),
    ("turn_evals/x.yaml", {"conversations": [{"name": "a", "user": "hi", "expectation": [{"type": "contains", "value": "x"}]}]},
     "conversations[0].expectation", "did you mean 'expectations'?"),
    ("turn_evals/x.yaml", {"conversations": [{"name": "a", "user": "hi", "expectations": [{"type": "contains", "vaule": "x"}]}]},
     "conversations[0].expectations[0].vaule", "did you mean 'value'?"),
    ("evaluations/x.json", {"displayName": "a", "golden": {"turns": [{"steps": [{"userInput": {"text": "hi"}},
                                                                                 {"expectation": {"tolCall": {"displayName": "t"}}}]}]}},
     "golden.turns[0].steps[1].expectation.tolCall", "unknown field 'tolCall'; did you mean 'toolCall'?"),
    # a case that evaluates nothing is an error, not a green run
    ("goldens/x.yaml", {"conversations": [{"conversation": "a", "turns": [{"user": "hi"}]}]}, "conversations[0]", "evaluates nothing"),
    ("turn_evals/x.yaml", {"conversations": [{"name": "a", "user": "hi"}]}, "conversations[0]", "evaluates nothing"),
    ("evaluations/x.json", {"displayName": "a", "golden": {"turns": [{"steps": [{"userInput": {"text": "hi"}}]}]}},
     "golden", "evaluates nothing"),
]


@pytest.mark.parametrize("name, data, at, problem", BAD)
def test_bad_files_name_the_file_the_place_and_what_was_expected(tmp_path, name, data, at, problem):
    path = tmp_path / name
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data) if name.endswith(".json") else yaml.safe_dump(data))
    with pytest.raises(EvalFileError) as info:
        load(path)
    assert info.value.path == str(path)
    assert info.value.at == at, str(info.value)
    assert problem in str(info.value)
    assert str(info.value).startswith(f"{path}: {at}")


def test_unparsable_files(tmp_path):
    bad = tmp_path / "broken.yaml"
    bad.write_text("conversations: [\n  - {")
    with pytest.raises(EvalFileError, match=r"broken.yaml: line \d+ column \d+: not YAML"):
        load(bad)
    (tmp_path / "empty").mkdir()
    with pytest.raises(EvalFileError, match="no .yaml, .yml or .json"):
        load(tmp_path / "empty")


# -- parallel, save/load, report -----------------------------------------------------------------

def test_parallel_runs_give_the_same_verdicts(client, good_run):
    run = ces_nb.evaluate([DEMO_EVALS], client=client, parallel=4, progress=False)
    assert run.meta["parallel"] == 4
    mine = run.frame[["conversation", "turn", "kind", "outcome"]].values.tolist()
    theirs = good_run.frame[["conversation", "turn", "kind", "outcome"]].values.tolist()
    assert mine == theirs


def test_save_and_load_with_no_server(broken_run, tmp_path):
    path = broken_run.save(tmp_path / "run.json")
    again = EvalRun.load(path)
    assert again.frame.drop(columns=["expected", "observed"]).equals(broken_run.frame.drop(columns=["expected", "observed"]))
    assert _failing(again) == BROKEN_WHERE
    html = again._repr_mimebundle_()["text/html"]
    assert html.count('class="ces-turn"') >= 4  # the real turn cards under the failures
    assert "spans</summary>" in html
    assert html.index("<b>flight_status</b>") < html.index("<b>greeting</b>")  # failures first
    with pytest.raises(ValueError, match="not an eval run"):
        EvalRun.from_dict({"cases": []})


def test_the_report_escapes_what_files_and_agents_say(client):
    golden = {"conversations": [{"conversation": "<img src=x onerror=alert(1)>", "tags": ["<b>t</b>"], "turns": [
        {"user": "Hello", "agent": "<script>alert(1)</script>"}]}]}
    run = ces_nb.evaluate(golden, client=client, progress=False)
    html = run._repr_mimebundle_()["text/html"]
    assert "<script>alert" not in html and "&lt;script&gt;alert(1)&lt;/script&gt;" in html
    assert "<img src=x" not in html and "&lt;img src=x onerror=alert(1)&gt;" in html
    assert "<b>t</b>" not in html


def test_summary_by_kind_and_tag(broken_run):
    summary = broken_run.summary
    assert summary.loc[("kind", "end_session"), "failed"] == 1
    assert summary.loc[("tag", "booking"), "failed"] == 2
    assert summary.loc[("tag", "flights"), "pass_rate"] < 1.0
    assert summary.loc[("kind", "tool_response"), "pass_rate"] == 1.0


# -- compare ------------------------------------------------------------------------------------

def test_compare_lists_regressions_first_and_latency_by_span_kind(good_run, broken_run):
    cmp = broken_run.compare(good_run)
    assert {(r["conversation"], r["turn"], r["kind"]) for r in cmp.regressions} == BROKEN_WHERE
    assert cmp.fixed == []
    assert all(r["change"] == "pass→fail" for r in cmp.changes[:len(BROKEN_WHERE)])
    back = good_run.compare(broken_run)
    assert {(r["conversation"], r["turn"], r["kind"]) for r in back.fixed} == BROKEN_WHERE and back.regressions == []
    latency = cmp.latency
    assert {"turn", "LLM", "Tool"} <= set(latency.index)
    row = latency.loc["turn"]
    assert row["p50_ci_low"] <= row["p50_delta"] <= row["p50_ci_high"]
    html = cmp._repr_mimebundle_()["text/html"]
    assert html.index("pass→fail") < html.index("latency by span kind")


def test_latency_regressions_are_found_with_a_confidence_interval(good_run):
    slow = EvalRun.from_dict(good_run.to_dict())
    for case in slow.cases:
        case.spans = [[k, ms * 3 + 50] if k == "LLM" else [k, ms] for k, ms in case.spans]
    found = slow.compare(good_run).latency_regressions(0.25)
    assert len(found) == 1 and found[0].startswith("LLM: p90")
    assert good_run.compare(good_run).latency_regressions(0.25) == []


# -- CLI and JUnit -------------------------------------------------------------------------------

def _cli(*args):
    return subprocess.run([sys.executable, "-m", "ces_nb", "eval", *map(str, args)], capture_output=True, text=True, timeout=300)


def test_cli_passes_fails_and_writes_junit_that_validates(emulator, other, tmp_path):
    import xmlschema
    from junitparser import JUnitXml

    schema = xmlschema.XMLSchema(str(XSD))
    good = _cli(DEMO_EVALS, "--endpoint", emulator.address, "--app", "skyway", "--junit", tmp_path / "good.xml",
                "--save", tmp_path / "good.json", "--parallel", "2")
    assert good.returncode == 0, good.stderr
    assert "goldens/skyway.yaml::book_seat" in good.stdout and "11 passed, 0 failed" in good.stdout
    bad = _cli(DEMO_EVALS, "--endpoint", other.address, "--app", "projects/p/locations/us/apps/skyway",
               "--junit", tmp_path / "bad.xml", "--baseline", tmp_path / "good.json")
    assert bad.returncode == 1, bad.stderr
    assert "pass→fail" in bad.stdout
    for name, failures in (("good.xml", 0), ("bad.xml", 4)):
        schema.validate(str(tmp_path / name))
        xml = JUnitXml.fromfile(str(tmp_path / name))
        slow = sum(1 for suite in xml if suite.name == "latency" for _ in suite)  # bad.xml has a baseline: latency may regress
        assert xml.tests == 12 + slow and xml.failures == failures + slow and xml.skipped == 1
        assert sum(1 for suite in xml if suite.name != "latency" for _ in suite) == 12  # one testcase per conversation or tool test
    failed = {case.name for suite in JUnitXml.fromfile(str(tmp_path / "bad.xml")) if suite.name != "latency" for case in suite
              if not case.is_passed and not case.is_skipped}
    assert failed == {"flight_status", "goodbye", "book_seat", "book_seat_native"}
    # --baseline also fails on latency: a baseline whose spans took a twentieth of the time
    fast = json.loads((tmp_path / "good.json").read_text())
    for case in fast["cases"]:
        case["spans"] = [[kind, ms / 20] for kind, ms in case["spans"]]
    (tmp_path / "fast.json").write_text(json.dumps(fast))
    slower = _cli(DEMO_EVALS / "goldens", "--endpoint", emulator.address, "--app", "skyway", "--baseline", tmp_path / "fast.json")
    assert slower.returncode == 1, slower.stdout
    assert "latency   turn: p90" in slower.stdout and "0 pass→fail" in slower.stdout


def test_cli_usage_errors_exit_2(emulator, tmp_path):
    bad = tmp_path / "goldens" / "bad.yaml"
    bad.parent.mkdir()
    bad.write_text(yaml.safe_dump({"conversations": [{"turns": [{"agent": "x"}]}]}))
    out = _cli(bad, "--endpoint", emulator.address)
    assert out.returncode == 2 and "conversations[0].turns[0]" in out.stderr
    assert _cli(DEMO_EVALS, "--endpoint", emulator.address, "--parallel", "0").returncode == 2
    assert _cli("--endpoint", emulator.address).returncode == 2  # no PATH


# -- the magic and to_golden ---------------------------------------------------------------------

def test_cescmd_eval_in_a_notebook(ip, tmp_path):
    from IPython.core.error import UsageError

    run = ip.run_line_magic("cescmd", f"eval {DEMO_EVALS / 'goldens'} --parallel 2 --junit {tmp_path / 'j.xml'}")
    assert isinstance(run, EvalRun) and run.passed and len(run.cases) == 5
    assert (tmp_path / "j.xml").is_file()
    with pytest.raises(UsageError, match="no such file"):
        ip.run_line_magic("cescmd", f"eval {tmp_path / 'missing.yaml'}")
    # %ces never reads "eval" as a command
    turn = ip.run_line_magic("ces", "eval my trip please")
    assert turn.user_text == "eval my trip please"


@pytest.mark.parametrize("suffix", [".yaml", ".json"])
def test_to_golden_makes_a_session_into_a_passing_regression_test(client, tmp_path, suffix):
    session = client.session()
    session.send("Hello", variables={"customer_name": "Grace"})
    session.send("I'd like to book a seat on flight SW123")
    session.respond({cid: {"seat": "7A", "confirmed": True, "price": 210.0} for cid in session.pending}, how="form")
    path = tmp_path / f"explored{suffix}"
    text = session.to_golden(path, name="explored", tags=["nb"])
    assert path.read_text() == text
    if suffix == ".json":
        data = json.loads(text)
        mocks = [s["expectation"]["mockToolResponse"] for t in data["golden"]["turns"] for s in t["steps"]
                 if "mockToolResponse" in s.get("expectation", {})]
        assert mocks == [{"displayName": "select_seat", "response": {"seat": "7A", "confirmed": True, "price": 210.0}}]
    else:
        data = yaml.safe_load(text)
        calls = data["conversations"][0]["turns"][1]["tool_calls"]
        assert calls[1]["output"] == {"seat": "7A", "confirmed": True, "price": 210.0}
        assert data["conversations"][0]["session_parameters"] == {"customer_name": "Grace"}
    run = ces_nb.evaluate(path, client=client, progress=False)
    assert run.passed, run.text()
    assert "seat 7A for 210 USD" in run.cases[0].turn_objects(2)[-1].text
    # and the same golden from the saved transcript, with no server
    saved = session.save(tmp_path / "t.json")
    assert ces_nb.Transcript.load(saved).to_golden(format=suffix[1:], name="explored", tags=["nb"]) == text


# -- native goldens: updated variables and thresholds -------------------------------------------

def _pet_clinic_golden(pet_variable: str, args: dict, threshold: float | None = None) -> dict:
    call = {"toolCall": {"displayName": "find_appointment", "args": args}}
    if threshold is not None:
        call["expectationLevelMetricsThresholdsOverride"] = {"toolInvocationParameterCorrectnessThreshold": threshold}
    return {"displayName": "appointment", "golden": {"turns": [
        {"steps": [{"userInput": {"variables": {"owner_name": "Sam"}}}, {"userInput": {"event": {"event": "welcome"}}}]},
        {"steps": [{"userInput": {"text": "When is Bella's next appointment?"}},
                   {"expectation": call},
                   {"expectation": {"updatedVariables": {"pet_name": pet_variable}}},
                   {"expectation": {"agentResponse": {"role": "agent", "chunks": [{"text": "Monday at 14:30"}]},
                                    "comparisonType": "CONTAINS"}}]}]}}


def test_updated_variables_from_a_python_tool(other):
    pets = ces_nb.connect(endpoint=other.address, app="pet-clinic")
    good = ces_nb.evaluate(_pet_clinic_golden("Bella", {"pet_name": "Bella"}), client=pets, progress=False)
    assert good.passed, good.text()
    row = next(e for e in good.cases[0].expectations if e.kind == "updated_variables")
    assert row.observed["pet_name"] == "Bella" and row.turn == 2
    bad = ces_nb.evaluate(_pet_clinic_golden("Max", {"pet_name": "Bella"}), client=pets, progress=False)
    assert _failing(bad) == {("appointment", 2, "updated_variables")}


def test_parameter_threshold_overrides(other, tmp_path):
    pets = ces_nb.connect(endpoint=other.address, app="pet-clinic")
    args = {"pet_name": "Bella", "owner": "Sam"}  # one of two parameters is right
    strict = ces_nb.evaluate(_pet_clinic_golden("Bella", args), client=pets, progress=False)
    assert _failing(strict) == {("appointment", 2, "tool_call")}
    assert next(e for e in strict.cases[0].expectations if e.kind == "tool_call").score == 0.5
    lenient = ces_nb.evaluate(_pet_clinic_golden("Bella", args, threshold=0.5), client=pets, progress=False)
    assert lenient.passed, lenient.text()
    # a thresholds file (EvaluationMetricsThresholds) applies to every case of the run
    (tmp_path / "thresholds.json").write_text(json.dumps({"goldenEvaluationMetricsThresholds": {
        "expectationLevelMetricsThresholds": {"toolInvocationParameterCorrectnessThreshold": 0.5},
        "toolMatchingSettings": {"extraToolCallBehavior": "FAIL"}}}))
    (tmp_path / "golden.json").write_text(json.dumps(_pet_clinic_golden("Bella", args)))
    run = ces_nb.evaluate(tmp_path, client=pets, progress=False)
    assert run.passed, run.text()


def test_extra_tool_calls_fail_when_the_thresholds_say_so(client):
    from ces_nb.evals import Thresholds

    golden = {"conversations": [{"conversation": "extra", "turns": [{"user": "What's the status of flight SW123?",
                                                                      "tool_calls": [{"action": "search_policies", "args": {}}]}]}]}
    allowed = ces_nb.evaluate(golden, client=client, progress=False)
    strict = ces_nb.evaluate(golden, client=client, progress=False, thresholds=Thresholds(extra_tool_call_behavior="FAIL"))
    assert len([e for e in strict.cases[0].expectations if e.outcome == "FAIL"]) == \
        len([e for e in allowed.cases[0].expectations if e.outcome == "FAIL"]) + 1
    extra = [e for e in strict.cases[0].expectations if "extraToolCallBehavior" in e.explanation]
    assert extra and extra[0].observed["tool"] == "get_flight_status"


def test_the_progress_bar_counts_cases(client, capsys):
    ces_nb.evaluate(GOLDENS, client=client, progress=True)
    err = capsys.readouterr().err
    assert "evaluating" in err and "5/5" in err


# -- audit fixes ---------------------------------------------------------------------------------

def _goodbye(reason) -> dict:
    return {"conversations": [{"conversation": "bye", "turns": [{"user": "That's all, thanks. Goodbye!", "tool_calls": [
        {"action": "end_session", "args": {"reason": reason}}]}]}]}


@pytest.mark.parametrize("reason, passes", [
    ({"$matchType": "semantic", "$matchValue": "the customer said goodbye"}, True),
    ({"$matchType": "semantic", "$matchValue": "escalation to a human supervisor was required"}, False),
    ({"$matchType": "regexp", "$matchValue": "^refund"}, False),
    ({"$matchType": "ignore", "$matchValue": ""}, True),
    ("the flight was cancelled", False),
])
def test_end_session_args_are_scored_under_their_match_type(client, reason, passes):
    run = ces_nb.evaluate(_goodbye(reason), client=client, progress=False)
    (row,) = [e for e in run.cases[0].expectations if e.kind == "end_session"]
    assert (row.outcome == "PASS") is passes, (row.observed, row.explanation)
    assert run.passed is passes
    if not passes:
        assert "reason" in row.explanation


@pytest.mark.parametrize("target, passes", [("Booking Agent", True), ("booking_agent", True), ("booking-agent", True),
                                            ("Agent", False), ("ooking Agent", False)])
def test_agent_transfer_matches_the_whole_name_not_its_end(client, target, passes):
    golden = {"conversations": [{"conversation": "t", "turns": [{"user": "I'd like to book a seat on SW123", "tool_calls": [
        {"action": "transfer_to_agent", "args": {"agent": target}}]}]}]}
    run = ces_nb.evaluate(golden, client=client, progress=False)
    (row,) = [e for e in run.cases[0].expectations if e.kind == "agent_transfer"]
    assert (row.outcome == "PASS") is passes, (row.observed, row.explanation)


def test_cli_latency_regressions_are_junit_failures(emulator, tmp_path):
    from junitparser import JUnitXml

    good = _cli(DEMO_EVALS / "goldens", "--endpoint", emulator.address, "--app", "skyway", "--save", tmp_path / "good.json")
    assert good.returncode == 0, good.stderr
    fast = json.loads((tmp_path / "good.json").read_text())
    for case in fast["cases"]:
        case["spans"] = [[kind, ms / 20] for kind, ms in case["spans"]]
    (tmp_path / "fast.json").write_text(json.dumps(fast))
    slower = _cli(DEMO_EVALS / "goldens", "--endpoint", emulator.address, "--app", "skyway", "--baseline", tmp_path / "fast.json",
                  "--junit", tmp_path / "slow.xml")
    assert slower.returncode == 1, slower.stdout
    xml = JUnitXml.fromfile(str(tmp_path / "slow.xml"))
    latency = [case for suite in xml if suite.name == "latency" for case in suite]
    assert latency and all(not c.is_passed for c in latency)
    assert any(c.name == "turn p90" for c in latency)
    assert xml.failures == len(latency)
    # the same run against itself: no latency suite, nothing failed
    same = _cli(DEMO_EVALS / "goldens", "--endpoint", emulator.address, "--app", "skyway", "--baseline", tmp_path / "good.json",
                "--junit", tmp_path / "same.xml", "--latency-threshold", "1000")
    assert same.returncode == 0, same.stdout
    assert JUnitXml.fromfile(str(tmp_path / "same.xml")).failures == 0


def test_cli_usage_messages(emulator, tmp_path):
    neg = _cli(DEMO_EVALS / "goldens", "--endpoint", emulator.address, "--app", "skyway", "--latency-threshold", "-0.5")
    assert neg.returncode == 2 and "--latency-threshold" in neg.stderr
    missing = _cli(DEMO_EVALS / "goldens", "--endpoint", emulator.address, "--app", "skyway", "--baseline", tmp_path / "nope.json")
    assert missing.returncode == 2 and "nope.json: no such file" in missing.stderr and "Errno" not in missing.stderr
    # an app that is not there: one message, exit 2, before any case runs
    nosuch = _cli(DEMO_EVALS, "--endpoint", emulator.address, "--app", "nosuchapp")
    assert nosuch.returncode == 2, nosuch.stdout + nosuch.stderr
    assert nosuch.stderr.strip().count("\n") == 0 and "nosuchapp" in nosuch.stderr and "not found" in nosuch.stderr and not nosuch.stdout
    # an unclosed quote: the line where the string started and where the scanner gave up
    bad = tmp_path / "goldens" / "quote.yaml"
    bad.parent.mkdir()
    bad.write_text('conversations:\n  - conversation: a\n    turns:\n      - user: "hello\n        agent: hi\n      - user: x\n')
    with pytest.raises(EvalFileError) as info:
        load(bad)
    assert "line 4" in str(info.value), str(info.value)


def test_cli_output_into_a_closed_pipe_and_html_document(emulator, tmp_path):
    command = (f"{sys.executable} -m ces_nb eval {DEMO_EVALS} --endpoint {emulator.address} --app skyway "
               f"--html {tmp_path / 'r.html'} | head -c 10")
    out = subprocess.run(["bash", "-o", "pipefail", "-c", command], capture_output=True, text=True, timeout=300)
    assert "Traceback" not in out.stderr and "BrokenPipeError" not in out.stderr, out.stderr
    page = (tmp_path / "r.html").read_text()
    assert page.startswith("<!doctype html>") and "<html" in page and "<head>" in page and "<title>" in page and "<body>" in page
    assert page.rstrip().endswith("</html>")


def test_cli_failures_say_what_was_expected_and_what_the_agent_said(other, tmp_path):
    from junitparser import JUnitXml

    out = _cli(DEMO_EVALS / "goldens", "--endpoint", other.address, "--app", "skyway", "--junit", tmp_path / "bad.xml")
    assert out.returncode == 1
    # the broken flight_status answers "Have a nice day."
    assert "observed: " in out.stdout and "Have a nice day." in out.stdout and "expected: semantic ≈" in out.stdout and "(≥0.8)" in out.stdout
    # each case once: in the table, and again only if it failed
    assert out.stdout.count("goldens/skyway.yaml::greeting") == 1
    failure = next(c for s in JUnitXml.fromfile(str(tmp_path / "bad.xml")) for c in s if c.name == "flight_status").result[0]
    assert "Have a nice day." in failure.text and "expected: semantic ≈" in failure.text


def test_the_report_reads_as_text_not_raw_json(broken_run, good_run):
    html = broken_run._repr_html_() if hasattr(broken_run, "_repr_html_") else broken_run._repr_mimebundle_()["text/html"]
    assert "$matchType" not in html and "&quot;args&quot;: null" not in html and "&quot;tool&quot;: null" not in html
    assert "semantic ≈ &#x27;the customer said goodbye&#x27;" in html  # end_session's reason as a rule
    assert "regexp /^\\d{4}-\\d{2}-\\d{2}$/" in html
    book = broken_run["book_seat"]
    transfer = next(e for e in book.expectations if e.kind == "agent_transfer")
    from ces_nb.evals.report import match_label, observed_value

    assert observed_value(transfer) == "Booking Agent"
    assert match_label(next(e for e in broken_run["goodbye"].expectations if e.kind == "end_session")) == "semantic"
    assert match_label(next(e for e in broken_run["goodbye"].expectations if e.kind == "rubric")) == "LLM judge"
    # a scenario's fields on lines of their own, its one skip reason said once
    scenario = good_run["anxious_flyer"]
    assert "\n" in scenario.description
    card = good_run._repr_mimebundle_()["text/html"]
    from ces_nb.evals.native import NOT_SIMULATED
    from html import escape

    assert card.count(escape(NOT_SIMULATED)) == 1
    # tables: fixed layout inside scroll containers, every rule scoped under .ces-root so JupyterLab's do not win
    from ces_nb.evals.report import _css

    import re

    css = re.sub(r"/\*.*?\*/", "", _css(), flags=re.S)
    eval_rules = [r.split("{")[0] for r in css.split("}") if ".ces-eval" in r.split("{")[0]]
    assert eval_rules and all(sel.strip().startswith(".ces-root") for rule in eval_rules for sel in rule.split(",") if sel.strip()), eval_rules
    assert "tr.ces-eval-row-fail:nth-child(odd)" in css and "table-layout: fixed" in css and "overflow-wrap: anywhere" in css
    assert "#" not in "".join(r.split("{", 1)[1] for r in css.split("}") if ".ces-eval" in r.split("{")[0] and "{" in r)  # no literal colours
    assert "ces-eval-scroll" in card


def test_a_comparison_of_different_files_collapses_what_only_one_run_has(good_run, broken_run):
    from ces_nb.evals.run import EvalRun

    only_goldens = EvalRun([c for c in broken_run.cases if c.key.startswith("goldens/")], broken_run.meta)
    cmp = only_goldens.compare(good_run)
    html = cmp._repr_mimebundle_()["text/html"]
    top, _, collapsed = html.partition("<details class='ces-eval-more'>")
    assert "pass→fail" in top and "gone" not in top.split("</thead>", 1)[-1]
    assert "gone expectation(s)" in collapsed
    assert "  gone " not in cmp.text() and "gone expectation(s)" in cmp.text()


@pytest.mark.parametrize("line, passes", [
    ("You're in seat 14C for 129 USD. Shall I charge your card on file?", True),
    ("Please pick your seat in the app.", True),
    ("Your flight to Paris was cancelled and refunded.", False),
])
def test_one_agent_line_against_several_messages(client, line, passes):
    # the agent says three messages in this turn (hand-over, the seat form, the price)
    golden = {"conversations": [{"conversation": "one_line", "turns": [{"user": "I'd like to book a seat on flight SW123", "tool_calls": [
        {"action": "select_seat", "args": {"flight": {"number": "SW123", "date": {"$matchType": "ignore", "$matchValue": ""}},
                                           "passengers": {"$matchType": "ignore", "$matchValue": ""}, "cabin": "economy"},
         "output": {"seat": "14C", "confirmed": True, "price": 129.0}}], "agent": line}]}]}
    run = ces_nb.evaluate(golden, client=client, progress=False)
    (row,) = [e for e in run.cases[0].expectations if e.kind == "agent_response"]
    assert (row.outcome == "PASS") is passes, row.explanation
    assert "the agent said 3 messages" in row.explanation and "compared with each and with all joined" in row.explanation


def test_to_golden_edges(client, tmp_path):
    import warnings

    # an unanswered client call: a warning naming the tool and what to do
    session = client.session()
    session.send("I'd like to book a seat on flight SW123")
    assert session.pending
    with pytest.warns(UserWarning, match=r"select_seat.*never answered.*session.respond"):
        session.to_golden()
    # an empty conversation: a clear error
    with pytest.raises(ValueError, match="no turns"):
        client.session().to_golden()
    # several agent messages: separate lines, not one item with blank lines inside
    answered = client.session()
    answered.send("I'd like to book a seat on flight SW123")
    answered.respond({cid: {"seat": "7A", "confirmed": True, "price": 210.0} for cid in answered.pending}, how="form")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        text = answered.to_golden(tmp_path / "g.yaml", name="lines")
    agent = yaml.safe_load(text)["conversations"][0]["turns"][0]["agent"]
    assert isinstance(agent, list) and len(agent) == 3 and all("\n" not in line for line in agent), agent
    assert "\n\n\n" not in text
    run = ces_nb.evaluate(tmp_path / "g.yaml", client=client, progress=False)
    assert run.passed, run.text()


def test_cescmd_eval_with_a_baseline_gives_the_run_and_the_comparison(ip, tmp_path):
    from IPython.core.error import UsageError

    first = ip.run_line_magic("cescmd", f"eval {DEMO_EVALS / 'goldens'}")
    first.save(tmp_path / "base.json")
    both = ip.run_line_magic("cescmd", f"eval {DEMO_EVALS / 'goldens'} --baseline {tmp_path / 'base.json'}")
    run, comparison = both
    assert isinstance(run, EvalRun) and len(run.cases) == 5 and comparison.regressions == []
    bundle = both._repr_mimebundle_()
    html = bundle["text/html"]
    assert html.index("<b>Comparison</b>") < html.index("<b>Evaluation</b>")
    assert bundle["text/plain"].startswith("RunComparison") and "EvalRun: 5 case(s)" in bundle["text/plain"]
    with pytest.raises(UsageError, match=r"nope.json: no such file"):
        ip.run_line_magic("cescmd", f"eval {DEMO_EVALS / 'goldens'} --baseline {tmp_path / 'nope.json'}")


def test_a_folder_and_a_file_inside_it_run_each_case_once():
    cases, _ = load([DEMO_EVALS, GOLDENS, str(GOLDENS)])
    keys = [c.key for c in cases]
    assert len(keys) == len(set(keys)) == len(load(DEMO_EVALS)[0])
    assert not any(k.endswith("(2)") for k in keys)


def test_start_emulator_again_with_the_same_apps_reuses_the_one_it_started(tmp_path):
    from ces_nb import local_emulator

    app = shutil.copytree(DEMO_APP, tmp_path / "skyway")
    first = ces_nb.start_emulator(app)
    try:
        assert ces_nb.start_emulator(app) == first  # a notebook's Run All, again: no second emulator
        assert ces_nb.connect(endpoint=first, app="skyway").apps()
    finally:
        local_emulator._stop(local_emulator._started.pop(first))
    second = ces_nb.start_emulator(app)  # the first one stopped: a new one
    try:
        assert local_emulator._started[second].poll() is None
    finally:
        local_emulator._stop(local_emulator._started.pop(second))
