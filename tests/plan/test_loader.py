"""Loading plans: every problem reported with its field path, line and column."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from releasegate.errors import InvalidInput
from releasegate.plan.loader import (
    MAX_PLAN_BYTES,
    LoadedPlan,
    PlanError,
    PlanIssue,
    load_plan_file,
    load_plan_text,
    plan_content_hash,
)

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "atlas" / "plan.yaml"

# Line numbers in the cases below refer to this text.
BASE = """\
model: acme/atlas-8b
versions:
  v1:
    api: {upstreams: ["http://127.0.0.1:8001/v1"]}
use_cases:
  chat: {description: Chat with customers.}
tiers:
  internal: {}
  public: {}
roles:
  safety-lead: [alice@acme.example]
stages:
  - name: internal
    audience: {tiers: [internal]}
  - name: public
    audience: {tiers: [internal, public]}
    gate:
      - time_in_stage: {min: 14d}
      - approvals: {roles: [safety-lead]}
"""


def load_errors(text: str) -> list[PlanIssue]:
    with pytest.raises(PlanError) as caught:
        load_plan_text(text, source="plan.yaml")
    return caught.value.errors


def edit(old: str, new: str) -> str:
    assert old in BASE, old
    return BASE.replace(old, new, 1)


def test_base_plan_loads() -> None:
    loaded = load_plan_text(BASE, source="plan.yaml")
    assert isinstance(loaded, LoadedPlan)
    assert loaded.warnings == []
    assert loaded.source == "plan.yaml"
    assert loaded.base_dir is None
    assert [s.name for s in loaded.plan.stages] == ["internal", "public"]


def test_example_plan_loads_cleanly() -> None:
    loaded = load_plan_file(EXAMPLE)
    assert loaded.warnings == []
    assert loaded.base_dir == EXAMPLE.parent
    assert loaded.text == EXAMPLE.read_text()
    assert len(loaded.content_hash) == 64


# (case id, text to replace, replacement, code, path, line, text found at the reported column,
#  words in message or hint)
SCHEMA_CASES = [
    ("unknown field", "audience: {tiers: [internal, public]}", "audience: {tierz: [internal, public]}",
     "unknown_field", "stages[1].audience.tierz", 16, "tierz", "did you mean 'tiers'?"),
    ("unknown top-level field", "roles:", "rolez:", "unknown_field", "rolez", 10, "rolez:", "did you mean 'roles'?"),
    ("wrong type int", "{min: 14d}", "{min: 14d}\n      - traffic: {min_requests: abc}",
     "wrong_type", "stages[1].gate[1].traffic.min_requests", 19, "abc}", "expected an integer, got 'abc'"),
    ("wrong type number", "roles: [safety-lead]}", "roles: [safety-lead]}\n      - eval: {suite: s, metric: m, max: lots}",
     "wrong_type", "stages[1].gate[2].eval.max", 20, "lots}", "expected a number, got 'lots'"),
    ("wrong type mapping", "audience: {tiers: [internal]}", "audience: [internal]",
     "wrong_type", "stages[0].audience", 14, "[internal]", "expected a mapping"),
    ("empty value", "  public: {}", "  public:", "wrong_type", "tiers.public", 9, "", "write {} for an empty mapping"),
    ("missing field", "  - name: internal\n", "  - description: first\n", "missing_field", "stages[0].name", 13, "description: first",
     "required field is missing"),
    ("missing top-level", "model: acme/atlas-8b\n", "", "missing_field", "model", 1, "versions:", "required"),
    ("bad choice", "  - name: internal\n", "  - name: internal\n    channels: [wieghts]\n",
     "invalid_choice", "stages[0].channels[0]", 14, "wieghts]", "did you mean 'weights'?"),
    ("unknown criterion kind", "- time_in_stage:", "- time_in_stag:", "unknown_kind", "stages[1].gate[0]", 18, "time_in_stag:",
     "did you mean 'time_in_stage'?"),
    ("unknown halt rule kind", "      - approvals: {roles: [safety-lead]}\n",
     "      - approvals: {roles: [safety-lead]}\n    halt_on:\n      - incidnt: {severity: high}\n",
     "unknown_kind", "stages[1].halt_on[0]", 21, "incidnt:", "did you mean 'incident'?"),
    ("criterion with two keys", "- time_in_stage: {min: 14d}", "- {time_in_stage: {}, min: 14d}",
     "unknown_kind", "stages[1].gate[0]", 18, "{time_in_stage: {}", "indent min under 'time_in_stage:'"),
    ("criterion without parameters", "- time_in_stage: {min: 14d}", "- time_in_stage",
     "unknown_kind", "stages[1].gate[0]", 18, "time_in_stage", "needs its parameters"),
    ("bad duration", "{min: 14d}", "{min: 14 days}", "invalid_value", "stages[1].gate[0].time_in_stage.min", 18, "14 days}",
     "expected a duration"),
    ("out of range", "- approvals: {roles: [safety-lead]}", "- approvals: {roles: [safety-lead], min: 0}",
     "out_of_range", "stages[1].gate[1].approvals.min", 19, "0}", "at least 1"),
    ("nan refused", "- approvals: {roles: [safety-lead]}",
     "- approvals: {roles: [safety-lead]}\n      - eval: {suite: s, metric: m, max: .nan}",
     "wrong_type", "stages[1].gate[2].eval.max", 20, ".nan}", "finite"),
    ("empty mapping", "  chat: {description: Chat with customers.}\n", "  {}\n",
     "out_of_range", "use_cases", 6, "{}", "must not be empty"),
    ("bad name", "  - name: internal\n", "  - name: Internal Stage\n", "invalid_format", "stages[0].name", 13, "Internal Stage",
     "lowercase letters"),
    ("bad model name", "model: acme/atlas-8b", "model: atlas", "invalid_format", "model", 1, "atlas", "org/name"),
    ("norway", "  - name: internal\n", "  - name: no\n", "wrong_type", "stages[0].name", 13, "no",
     "put it in quotes: \"no\""),
    ("bool key", "  public: {}", "  yes: {}", "wrong_type", "tiers.yes", 9, "yes: {}", "names must be text"),
    ("model validator", "- approvals: {roles: [safety-lead]}",
     "- approvals: {roles: [safety-lead]}\n      - eval: {suite: s, metric: m}",
     "invalid_value", "stages[1].gate[2].eval", 20, "{suite: s, metric: m}", "needs min, max or both"),
    ("unknown field inside criterion", "{min: 14d}", "{min: 14d, mx: 1}", "unknown_field",
     "stages[1].gate[0].time_in_stage.mx", 18, "mx: 1}", "allowed here: min"),
    ("semantic error located", "roles: [safety-lead]}", "roles: [safety-leed]}", "unknown_role",
     "stages[1].gate[1].approvals.roles[0]", 19, "safety-leed]", "did you mean 'safety-lead'?"),
    ("semantic narrowing located", "audience: {tiers: [internal, public]}", "audience: {tiers: [public]}",
     "audience_narrowed", "stages[1].audience", 16, "{tiers: [public]}", "tier 'internal' dropped"),
]


@pytest.mark.parametrize(
    ("old", "new", "code", "path", "line", "at", "words"),
    [case[1:] for case in SCHEMA_CASES],
    ids=[case[0] for case in SCHEMA_CASES],
)
def test_schema_errors_are_located(
    old: str, new: str, code: str, path: str, line: int, at: str, words: str
) -> None:
    text = edit(old, new)
    errors = load_errors(text)
    found = [e for e in errors if e.path == path]
    assert found, f"no error at {path}: {[str(e) for e in errors]}"
    issue = found[0]
    assert (issue.code, issue.line) == (code, line), str(issue)
    assert issue.column is not None
    assert text.splitlines()[line - 1][issue.column - 1 :].startswith(at), str(issue)
    assert words in f"{issue.message}; {issue.hint}"
    assert "Input should" not in issue.message  # plain words, not pydantic's


def test_issue_renders_with_file_line_column_path_and_hint() -> None:
    [issue] = load_errors(edit("audience: {tiers: [internal, public]}", "audience: {tierz: [internal, public]}"))
    assert str(issue) == "plan.yaml:16:16: stages[1].audience.tierz: unknown field; did you mean 'tiers'?"


def test_all_problems_are_reported_not_just_the_first() -> None:
    text = edit("roles:", "rolez:").replace("{min: 14d}", "{min: soon}").replace("[wieghts]", "")
    text = text.replace("  - name: internal\n", "  - name: internal\n    channels: [wieghts]\n")
    codes = sorted(e.code for e in load_errors(text))
    assert codes == ["invalid_choice", "invalid_value", "unknown_field"]


def test_issues_are_sorted_by_position() -> None:
    text = edit("roles:", "rolez:").replace("model: acme/atlas-8b", "model: atlas")
    lines = [e.line or 0 for e in load_errors(text)]
    assert lines == sorted(lines)


def test_plan_error_is_invalid_input_with_details() -> None:
    with pytest.raises(PlanError) as caught:
        load_plan_text(edit("roles:", "rolez:"), source="plan.yaml")
    err = caught.value
    assert isinstance(err, InvalidInput)
    assert err.code == "plan_invalid"
    assert err.http_status == 422
    assert err.details["issues"][0]["path"] == "rolez"
    assert "plan.yaml:10:1: rolez: unknown field" in err.message


def test_duplicate_keys_name_both_lines() -> None:
    text = edit("  public: {}\n", "  public: {}\n  internal: {description: again}\n")
    [issue] = load_errors(text)
    assert (issue.code, issue.path, issue.line, issue.column) == ("duplicate_key", "tiers.internal", 10, 3)
    assert "first at line 8" in issue.message


def test_duplicate_key_in_flow_mapping_names_the_column() -> None:
    [issue] = load_errors(edit("{min: 14d}", "{min: 14d, min: 15d}"))
    assert issue.code == "duplicate_key"
    assert (issue.line, issue.column) == (18, 35)
    assert "first at line 18, column 25" in issue.message


def test_merge_keys_overriding_are_not_duplicates() -> None:
    text = BASE + "    halt_on:\n      - error_rate: &rule {max: 0.2, window: 5m}\n      - error_rate: {<<: *rule, max: 0.3}\n"
    loaded = load_plan_text(text)
    rates = [r.error_rate.max for r in loaded.plan.stages[1].halt_on]  # type: ignore[union-attr]
    assert rates == [0.2, 0.3]


# (case id, text, code, line, column, words)
WHOLE_FILE_CASES = [
    ("unclosed flow list", "model: [acme\nversions: {}\n", "yaml_syntax", 2, 9, "expected ',' or ']'"),
    ("bad indentation", "model: a/b\n  versions: x\n", "yaml_syntax", 2, 11, "mapping values are not allowed"),
    ("tab", "model: a/b\n\tversions: {}\n", "yaml_syntax", 2, 1, "tabs"),
    ("two documents", "model: a/b\n---\nmodel: c/d\n", "yaml_invalid", 2, 1, "remove the extra '---'"),
    ("undefined alias", "model: *nothing\n", "yaml_invalid", 1, 8, "anchor"),
    ("python tag", "model: !!python/object/apply:os.system [ls]\n", "yaml_invalid", 1, 8, "tags are not allowed"),
    ("bad date", "model: a/b\ndescription: 2024-13-45\n", "yaml_invalid", 2, 14, "month must be in 1..12"),
    ("control character", "model: a/b\ndescription: \x07\n", "yaml_invalid", 2, 14, "U+0007"),
    ("list at top", "- model: a/b\n", "not_a_mapping", 1, 1, "holds a list"),
    ("scalar at top", "hello\n", "not_a_mapping", 1, 1, "single value 'hello'"),
    ("recursive alias", "a: &a [1, *a]\n", "recursive_alias", 1, 4, "contains it"),
    ("deep nesting", "a: " + "[" * 100 + "]" * 100 + "\n", "yaml_invalid", 1, 67, "nested more than 64"),
]


@pytest.mark.parametrize(
    ("text", "code", "line", "column", "words"),
    [case[1:] for case in WHOLE_FILE_CASES],
    ids=[case[0] for case in WHOLE_FILE_CASES],
)
def test_whole_file_problems(text: str, code: str, line: int, column: int, words: str) -> None:
    [issue] = load_errors(text)
    assert (issue.code, issue.line, issue.column) == (code, line, column), str(issue)
    assert words in f"{issue.message}; {issue.hint}"


@pytest.mark.parametrize("text", ["", "   \n\n", "# only a comment\n", "---\n", "~\n"])
def test_empty_plan(text: str) -> None:
    [issue] = load_errors(text)
    assert issue.code == "empty"
    assert "empty" in issue.message


def test_billion_laughs_is_refused_quickly() -> None:
    lines = ['a0: &a0 ["lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol"]']
    lines += [f"a{i}: &a{i} [" + ", ".join([f"*a{i - 1}"] * 10) + "]" for i in range(1, 10)]
    [issue] = load_errors("\n".join(lines) + "\n")
    assert issue.code == "too_many_values"
    assert "alias" in (issue.hint or "")


def test_deep_alias_chains_are_refused() -> None:
    lines = ["a0: &a0 [1]"] + [f"a{i}: &a{i} [*a{i - 1}]" for i in range(1, 80)]
    [issue] = load_errors("\n".join(lines) + "\n")
    assert issue.code == "too_deep"


def test_reasonable_aliases_are_allowed() -> None:
    text = BASE.replace("roles: [safety-lead]}", "roles: &leads [safety-lead]}") + (
        "  - name: wider\n    audience: {tiers: [internal, public], max_deployers: 5}\n"
        "    gate:\n      - approvals: {roles: *leads}\n"
    )
    assert load_plan_text(text).plan.stages[2].name == "wider"


def test_too_large_text_is_refused_before_parsing() -> None:
    text = "model: a/b\n" + "#" * MAX_PLAN_BYTES + "\n: [unparseable"
    [issue] = load_errors(text)
    assert issue.code == "too_large"


def test_too_large_file_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "plan.yaml"
    path.write_bytes(b"#" * (MAX_PLAN_BYTES + 1))
    with pytest.raises(PlanError) as caught:
        load_plan_file(path)
    assert [i.code for i in caught.value.issues] == ["too_large"]


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(PlanError) as caught:
        load_plan_file(tmp_path / "nope.yaml")
    [issue] = caught.value.issues
    assert issue.code == "file_unreadable"
    assert issue.source.endswith("nope.yaml")


def test_non_utf8_file(tmp_path: Path) -> None:
    path = tmp_path / "plan.yaml"
    path.write_bytes(b"model: a/b\ndescription: caf\xe9\n")
    with pytest.raises(PlanError) as caught:
        load_plan_file(path)
    [issue] = caught.value.issues
    assert (issue.code, issue.line) == ("not_utf8", 2)


def test_terms_files_are_checked_beside_the_plan_file(tmp_path: Path) -> None:
    text = BASE + "terms:\n  license: {file: terms/license.md}\n"
    (tmp_path / "plan.yaml").write_text(text)
    with pytest.raises(PlanError) as caught:
        load_plan_file(tmp_path / "plan.yaml")
    [issue] = caught.value.errors
    assert (issue.code, issue.path, issue.line) == ("terms_file_missing", "terms.license.file", 21)
    (tmp_path / "terms").mkdir()
    (tmp_path / "terms" / "license.md").write_text("# Terms\n")
    assert load_plan_file(tmp_path / "plan.yaml").base_dir == tmp_path
    assert load_plan_text(text).plan.terms["license"].file == "terms/license.md"  # no base_dir: not checked


def test_warnings_are_returned_with_lines() -> None:
    text = edit("    api: {upstreams: [\"http://127.0.0.1:8001/v1\"]}\n", "    description: nothing served\n")
    [warning] = load_plan_text(text, source="plan.yaml").warnings
    assert (warning.severity, warning.code, warning.path, warning.line) == ("warning", "version_unserved", "versions.v1", 4)
    assert str(warning).startswith("plan.yaml:4:5: warning: versions.v1: ")


def test_content_hash_ignores_comments_formatting_and_spelt_out_defaults() -> None:
    reformatted = (
        "# a comment\n" + BASE.replace("{tiers: [internal]}", "\n      tiers:\n        - internal  # first\n")
        .replace("  - name: internal\n", "  - name: internal\n    channels: [api]\n    auto_promote: false\n")
    )
    assert load_plan_text(reformatted).content_hash == load_plan_text(BASE).content_hash
    changed = BASE.replace("{min: 14d}", "{min: 15d}")
    assert load_plan_text(changed).content_hash != load_plan_text(BASE).content_hash
    assert load_plan_text(BASE).content_hash == plan_content_hash(load_plan_text(BASE).plan)


def test_duration_spellings_hash_alike() -> None:
    assert (
        load_plan_text(BASE).content_hash
        == load_plan_text(BASE.replace("{min: 14d}", "{min: 2w}")).content_hash
    )


# ---------------------------------------------------------------------------- fuzzing

_YAMLISH = st.sampled_from(
    [
        *"abcmsv:-[]{},&*!|>'\"#?%@`0129.\n\n  \t\\",
        *["model: ", "stages:", "versions:", "<<: ", "&a ", "*a", "---", "- ", "name: ", "{min: 1d}"],
        *["gate:", "- eval: ", "yes", "~", "!!str", "!!binary ", "2024-13-01", ".inf", "\x00", "\ud800"],
    ]
)


def _assert_plan_error_only(text: str) -> None:
    try:
        loaded = load_plan_text(text, source="fuzz.yaml")
    except PlanError as e:
        assert e.issues
        for issue in e.issues:
            assert str(issue).startswith("fuzz.yaml")
    else:
        assert loaded.plan.stages


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(_YAMLISH, max_size=60).map("".join))
def test_fuzz_yamlish_text_only_raises_plan_error(text: str) -> None:
    _assert_plan_error_only(text)


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.data())
def test_fuzz_mutated_example_only_raises_plan_error(data: st.DataObject) -> None:
    text = EXAMPLE.read_text()
    for _ in range(data.draw(st.integers(1, 4))):
        at = data.draw(st.integers(0, len(text)))
        cut = data.draw(st.integers(0, 20))
        insert = data.draw(st.lists(_YAMLISH, max_size=5).map("".join))
        text = text[:at] + insert + text[at + cut :]
    _assert_plan_error_only(text)


_SCALARS = st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=10)
_VALUES = st.recursive(
    _SCALARS, lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4),
    max_leaves=30,
)


@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.data())
def test_fuzz_structured_documents_only_raise_plan_error(data: st.DataObject) -> None:
    plan = yaml.safe_load(EXAMPLE.read_text())
    key = data.draw(st.sampled_from([*plan.keys(), "extra"]))
    plan[key] = data.draw(_VALUES)
    _assert_plan_error_only(yaml.safe_dump(plan))
