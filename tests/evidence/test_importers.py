"""Evidence importers: real files in, typed records out; bad files refused with a clear reason."""

from __future__ import annotations

import dataclasses
import hashlib
import importlib.util
import json
import math
import sys
import zipfile
from pathlib import Path
from typing import Any

import pytest

from releasegate.errors import InvalidInput
from releasegate.evidence.importers import (
    EvidenceImporter,
    ImporterRegistry,
    builtin_importers,
    default_registry,
    import_file,
)
from releasegate.evidence.inspect_ai import InspectAIImporter
from releasegate.evidence.records import (
    EvalResult,
    Finding,
    FindingStatus,
    ImportBatch,
    Severity,
)

FIXTURES = Path(__file__).parent / "fixtures"
HAS_ZSTANDARD = importlib.util.find_spec("zstandard") is not None
HAS_INSPECT_AI = importlib.util.find_spec("inspect_ai") is not None
BUILTIN_NAMES = ("inspect_ai", "lm_eval", "generic_json", "generic_csv")


def fallback_inspect_registry() -> ImporterRegistry:
    """Built-ins, with the Inspect importer forced onto releasegate's own reader."""
    return default_registry(InspectAIImporter(use_inspect_ai=False))


def refused(
    path: Path, *, fmt: str | None = None, registry: ImporterRegistry | None = None
) -> InvalidInput:
    with pytest.raises(InvalidInput) as caught:
        import_file(path, registry=registry or fallback_inspect_registry(), format=fmt)
    error = caught.value
    assert error.message.startswith(f"{path.name}: ") or path.name in error.message, error.message
    return error


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def by_metric(batch: ImportBatch) -> dict[tuple[str | None, str], EvalResult]:
    return {(r.task, r.metric): r for r in batch.results}


def write_json(path: Path, doc: Any) -> Path:
    path.write_text(json.dumps(doc, indent=2), encoding="utf-8")
    return path


def inspect_header(name: str = "inspect_success.json") -> dict[str, Any]:
    """A real Inspect log as a dict, without its samples (what header.json holds)."""
    doc: dict[str, Any] = json.loads((FIXTURES / name).read_text(encoding="utf-8"))
    doc.pop("samples", None)
    doc.pop("reductions", None)
    return doc


def write_eval_zip(path: Path, header: dict[str, Any] | None, *, start: bool = True) -> Path:
    """A deflate .eval with the given header.json (None: a run that never wrote one)."""
    source = inspect_header()
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as archive:
        if start:
            archive.writestr(
                "_journal/start.json",
                json.dumps({"version": 2, "eval": source["eval"], "plan": source["plan"]}),
            )
        if header is not None:
            archive.writestr("header.json", json.dumps(header))
    return path


# --- Inspect AI ---------------------------------------------------------------------------


def check_arithmetic(batch: ImportBatch, path: Path) -> None:
    assert batch.source_format == "inspect_ai"
    assert batch.source_sha256 == sha256(path)
    assert batch.source_name == path.name
    assert batch.findings == ()
    results = by_metric(batch)
    assert set(results) == {("arithmetic", "match/accuracy"), ("arithmetic", "includes/accuracy")}
    match = results[("arithmetic", "match/accuracy")]
    assert match.suite == "arithmetic"
    assert match.value == pytest.approx(1 / 3)
    assert match.stderr == pytest.approx(1 / 3)
    assert match.samples == 3
    assert match.model == "mockllm/model"
    assert match.started_at is not None and match.started_at.utcoffset() is not None
    assert match.completed_at is not None and match.completed_at >= match.started_at
    assert match.extra["headline"] is True
    assert match.extra["scorer"] == "match"
    assert results[("arithmetic", "includes/accuracy")].extra["headline"] is False
    assert all(r.source_sha256 == batch.source_sha256 for r in batch.results)


def test_inspect_json_log_fallback_reader() -> None:
    path = FIXTURES / "inspect_success.json"
    batch = import_file(path, registry=fallback_inspect_registry())
    check_arithmetic(batch, path)
    assert batch.warnings == ()


def test_inspect_eval_log_deflate_fallback_reader() -> None:
    path = FIXTURES / "inspect_deflate.eval"
    check_arithmetic(import_file(path, registry=fallback_inspect_registry()), path)


@pytest.mark.skipif(not HAS_ZSTANDARD, reason="zstandard is not installed")
def test_inspect_eval_log_zstandard_fallback_reader() -> None:
    path = FIXTURES / "inspect_success.eval"
    check_arithmetic(import_file(path, registry=fallback_inspect_registry()), path)


def test_inspect_eval_log_zstandard_without_the_package_says_what_to_install(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setitem(sys.modules, "zstandard", None)  # import zstandard -> ImportError
    error = refused(FIXTURES / "inspect_success.eval")
    assert error.code == "evidence_unreadable"
    assert "zstandard" in error.message and "releasegate[inspect_ai]" in error.message


@pytest.mark.skipif(not HAS_INSPECT_AI, reason="inspect_ai is not installed")
@pytest.mark.parametrize("name", ["inspect_success.eval", "inspect_success.json"])
def test_inspect_logs_read_by_inspect_ai_match_the_fallback(name: str) -> None:
    path = FIXTURES / name
    with_inspect = import_file(
        path, registry=default_registry(InspectAIImporter(use_inspect_ai=True))
    )
    check_arithmetic(with_inspect, path)
    without = import_file(FIXTURES / "inspect_success.json", registry=fallback_inspect_registry())
    assert [(r.metric, r.value, r.stderr, r.samples) for r in with_inspect.results] == [
        (r.metric, r.value, r.stderr, r.samples) for r in without.results
    ]


@pytest.mark.skipif(not HAS_INSPECT_AI, reason="inspect_ai is not installed")
def test_inspect_ai_reader_refuses_failed_run() -> None:
    registry = default_registry(InspectAIImporter(use_inspect_ai=True))
    for name in ("inspect_error.eval", "inspect_error.json"):
        error = refused(FIXTURES / name, registry=registry)
        assert error.code == "evidence_run_failed"
        assert "sandbox exploded" in error.message


def test_inspect_epoch_reducers_are_told_apart() -> None:
    batch = import_file(FIXTURES / "inspect_reducers.json", registry=fallback_inspect_registry())
    results = by_metric(batch)
    assert set(results) == {("epochs", "match/accuracy"), ("epochs", "match[max]/accuracy")}
    assert results[("epochs", "match/accuracy")].extra["headline"] is True
    assert results[("epochs", "match[max]/accuracy")].extra["reducer"] == "max"


def test_inspect_real_failed_run_is_refused() -> None:
    error = refused(FIXTURES / "inspect_error.json")
    assert error.code == "evidence_run_failed"
    assert "status 'error'" in error.message and "sandbox exploded" in error.message
    assert error.details["status"] == "error"


@pytest.mark.parametrize("status", ["error", "cancelled", "started"])
def test_inspect_unsuccessful_status_is_refused_in_both_formats(
    tmp_path: Path, status: str
) -> None:
    header = inspect_header()
    header["status"] = status
    for path in (
        write_json(tmp_path / "run.json", header),
        write_eval_zip(tmp_path / "run.eval", header),
    ):
        error = refused(path)
        assert error.code == "evidence_run_failed"
        assert f"status {status!r}" in error.message


def test_inspect_eval_without_header_is_an_unfinished_run(tmp_path: Path) -> None:
    error = refused(write_eval_zip(tmp_path / "unfinished.eval", None))
    assert error.code == "evidence_run_failed"
    assert "never finished" in error.message


def test_inspect_invalidated_log_is_refused(tmp_path: Path) -> None:
    header = inspect_header()
    header["invalidated"] = True
    error = refused(write_json(tmp_path / "run.json", header))
    assert error.code == "evidence_run_failed"
    assert "invalidated" in error.message


def test_inspect_successful_run_without_results_is_refused(tmp_path: Path) -> None:
    header = inspect_header()
    del header["results"]
    error = refused(write_json(tmp_path / "run.json", header))
    assert error.code == "evidence_invalid"
    assert error.details["field"] == "results"


@pytest.mark.parametrize(
    ("value", "shown"),
    [
        ("0.5", "the string '0.5'"),
        (float("nan"), "NaN"),
        (float("inf"), "infinity"),
        (None, "null"),
    ],
)
def test_inspect_metric_that_is_not_a_number_is_refused(
    tmp_path: Path, value: Any, shown: str
) -> None:
    header = inspect_header()
    header["results"]["scores"][1]["metrics"]["accuracy"]["value"] = value
    for path in (
        write_json(tmp_path / "run.json", header),  # json.dumps writes NaN and Infinity literals
        write_eval_zip(tmp_path / "run.eval", header),
    ):
        error = refused(path)
        assert error.code == "evidence_invalid"
        assert error.details["field"] == "results.scores[1].metrics.accuracy.value"
        assert shown in error.message


def test_inspect_partial_completion_is_a_warning(tmp_path: Path) -> None:
    header = inspect_header()
    header["results"]["completed_samples"] = 2
    batch = import_file(
        write_json(tmp_path / "run.json", header), registry=fallback_inspect_registry()
    )
    assert batch.warnings == ("only 2 of 3 samples completed",)


def test_inspect_truncated_json_is_refused_with_position(tmp_path: Path) -> None:
    data = (FIXTURES / "inspect_success.json").read_bytes()
    path = tmp_path / "truncated.json"
    path.write_bytes(data[: len(data) // 2])
    error = refused(path)
    assert error.code == "evidence_unreadable"
    assert "not valid JSON" in error.message and "truncated" in error.message
    assert error.details["line"] > 1


@pytest.mark.parametrize(
    "damage",
    [
        lambda data: data[: len(data) // 2],  # cut off: no central directory
        lambda data: b"PK\x03\x04" + b"\x00" * 200,  # zip magic, nothing behind it
    ],
)
def test_corrupt_eval_zip_is_refused(tmp_path: Path, damage: Any) -> None:
    path = tmp_path / "corrupt.eval"
    path.write_bytes(damage((FIXTURES / "inspect_deflate.eval").read_bytes()))
    error = refused(path)
    assert error.code == "evidence_unreadable"
    assert "zip" in error.message


def test_eval_zip_with_corrupt_member_is_refused(tmp_path: Path) -> None:
    data = bytearray((FIXTURES / "inspect_deflate.eval").read_bytes())
    with zipfile.ZipFile(FIXTURES / "inspect_deflate.eval") as archive:
        info = archive.getinfo("header.json")
    start = info.header_offset + 30 + len(info.filename.encode()) + len(info.extra)
    for offset in range(start + 10, start + 40):
        data[offset] ^= 0xFF
    path = tmp_path / "flipped.eval"
    path.write_bytes(bytes(data))
    error = refused(path)
    assert error.code == "evidence_unreadable"


def test_zip_that_is_not_an_inspect_log_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "other.eval"
    with zipfile.ZipFile(path, "w") as archive:
        archive.writestr("readme.txt", "hello")
    error = refused(path)
    assert "neither header.json" in error.message


# --- lm-evaluation-harness ----------------------------------------------------------------


def test_lm_eval_results_file() -> None:
    path = FIXTURES / "lm_eval_results.json"
    batch = import_file(path)
    assert batch.source_format == "lm_eval"
    assert batch.source_sha256 == sha256(path)
    assert batch.warnings == ()
    results = by_metric(batch)
    assert set(results) == {
        ("arc_easy", "acc"),
        ("arc_easy", "acc_norm"),
        ("gsm8k", "exact_match,strict-match"),
        ("gsm8k", "exact_match,flexible-extract"),
        ("mmlu", "acc"),
        ("mmlu_stem", "acc"),
        ("mmlu_abstract_algebra", "acc"),
        ("mmlu_astronomy", "acc"),
    }
    arc = results[("arc_easy", "acc")]
    assert (arc.suite, arc.value, arc.samples) == ("arc_easy", 0.5, 100)
    assert arc.stderr == pytest.approx(0.050251890762960605)
    assert arc.model == "EleutherAI/pythia-160m"
    assert arc.started_at is not None and arc.started_at.isoformat() == "2024-12-02T16:00:00+00:00"
    assert arc.completed_at is not None
    assert (arc.completed_at - arc.started_at).total_seconds() == pytest.approx(906.7059146649987)
    assert arc.extra["higher_is_better"] is True
    assert arc.extra["num_fewshot"] == 0
    assert arc.extra["lm_eval_version"] == "0.4.7"
    strict = results[("gsm8k", "exact_match,strict-match")]
    assert strict.extra["filter"] == "strict-match" and strict.extra["num_fewshot"] == 5
    # subtasks belong to the outermost group's suite; groups sum their leaves' samples
    assert results[("mmlu_astronomy", "acc")].suite == "mmlu"
    assert results[("mmlu_astronomy", "acc")].stderr is None  # "N/A"
    assert results[("mmlu_stem", "acc")].suite == "mmlu"
    assert results[("mmlu", "acc")].samples == 200
    assert results[("mmlu", "acc")].extra["is_group"] is True
    assert results[("arc_easy", "acc")].extra["is_group"] is False


def lm_eval_doc() -> dict[str, Any]:
    doc: dict[str, Any] = json.loads((FIXTURES / "lm_eval_results.json").read_text("utf-8"))
    return doc


@pytest.mark.parametrize(
    ("value", "shown"),
    [
        ("N/A", "the string 'N/A'"),
        (float("nan"), "NaN"),
        (float("-inf"), "-infinity"),
        ([0.5], "a list"),
    ],
)
def test_lm_eval_metric_that_is_not_a_number_is_refused(
    tmp_path: Path, value: Any, shown: str
) -> None:
    doc = lm_eval_doc()
    doc["results"]["gsm8k"]["exact_match,flexible-extract"] = value
    error = refused(write_json(tmp_path / "results.json", doc))
    assert error.code == "evidence_invalid"
    assert error.details["field"] == 'results.gsm8k["exact_match,flexible-extract"]'
    assert shown in error.message


def test_lm_eval_negative_stderr_is_refused(tmp_path: Path) -> None:
    doc = lm_eval_doc()
    doc["results"]["arc_easy"]["acc_stderr,none"] = -0.1
    error = refused(write_json(tmp_path / "results.json", doc))
    assert error.details["field"] == 'results.arc_easy["acc_stderr,none"]'


def test_lm_eval_file_without_metrics_is_refused(tmp_path: Path) -> None:
    doc = lm_eval_doc()
    doc["results"] = {"arc_easy": {"alias": "arc_easy"}}
    error = refused(write_json(tmp_path / "results.json", doc))
    assert error.code == "evidence_invalid"
    assert '"acc,none"' in error.message


def test_lm_eval_model_falls_back_to_model_args(tmp_path: Path) -> None:
    doc = lm_eval_doc()
    del doc["model_name"]
    batch = import_file(write_json(tmp_path / "results.json", doc))
    assert {r.model for r in batch.results} == {"EleutherAI/pythia-160m"}


# --- generic JSON and CSV -----------------------------------------------------------------


def test_generic_json_results_and_findings() -> None:
    path = FIXTURES / "generic_evidence.json"
    batch = import_file(path)
    assert batch.source_format == "generic_json"
    assert batch.source_sha256 == sha256(path)
    easy, hard, refusals = batch.results
    assert (easy.suite, easy.task, easy.metric, easy.value, easy.stderr, easy.samples) == (
        "cyber-uplift",
        "ctf-easy",
        "solve_rate",
        0.12,
        0.03,
        120,
    )
    assert easy.model == "atlas-7b-2025-06"  # top-level default
    assert hard.stderr is None
    assert refusals.task is None and refusals.model == "atlas-7b-2025-06-rc2"
    assert (
        easy.started_at is not None and easy.started_at.isoformat() == "2025-06-02T09:00:00+00:00"
    )
    role_play, leak = batch.findings
    assert role_play.severity is Severity.HIGH and role_play.status is FindingStatus.MITIGATED
    assert role_play.reproduction.startswith("See red-team ticket")
    assert leak.status is FindingStatus.OPEN and leak.description == ""
    assert leak.source_sha256 == batch.source_sha256


def test_generic_results_csv() -> None:
    path = FIXTURES / "generic_results.csv"
    batch = import_file(path)
    json_batch = import_file(FIXTURES / "generic_evidence.json")
    assert batch.source_format == "generic_csv"
    assert batch.source_sha256 == sha256(path)
    assert [(r.suite, r.task, r.metric, r.value, r.stderr, r.samples) for r in batch.results] == [
        (r.suite, r.task, r.metric, r.value, r.stderr, r.samples) for r in json_batch.results
    ]


def test_generic_findings_csv_with_quoted_multiline_cells() -> None:
    batch = import_file(FIXTURES / "generic_findings.csv")
    assert batch.results == ()
    titles = [(f.title, f.severity, f.status) for f in batch.findings]
    assert titles == [
        (
            "Role-play prompt elicits synthesis route outline",
            Severity.HIGH,
            FindingStatus.MITIGATED,
        ),
        ("System prompt leaks through translation request", Severity.LOW, FindingStatus.OPEN),
        ("Tool call escapes the sandbox allow-list", Severity.CRITICAL, FindingStatus.OPEN),
    ]
    assert "\nto a host outside" in batch.findings[2].description


def generic_doc() -> dict[str, Any]:
    doc: dict[str, Any] = json.loads((FIXTURES / "generic_evidence.json").read_text("utf-8"))
    return doc


@pytest.mark.parametrize(
    ("mutate", "field", "words"),
    [
        (
            lambda d: d["findings"][1].update(severity="urgent"),
            "findings[1].severity",
            "must be one of low, medium, high, critical",
        ),
        (
            lambda d: d["findings"][0].update(status="fixed"),
            "findings[0].status",
            "must be one of open, triaged",
        ),
        (lambda d: d["results"][2].update(value="high"), "results[2].value", "the string 'high'"),
        (lambda d: d["results"][0].update(value=float("nan")), "results[0].value", "NaN"),
        (lambda d: d["results"][0].update(stderr=float("inf")), "results[0].stderr", "infinity"),
        (lambda d: d["results"][0].update(value=True), "results[0].value", "boolean"),
        (lambda d: d["results"][1].pop("metric"), "results[1].metric", "is required"),
        (lambda d: d["results"][1].update(samples=2.5), "results[1].samples", "whole number"),
        (lambda d: d["results"][1].update(stdderr=0.1), "results[1]", "unknown key(s) 'stdderr'"),
        (lambda d: d["findings"][0].pop("title"), "findings[0].title", "is required"),
    ],
)
def test_generic_json_bad_values_are_refused_with_field_path(
    tmp_path: Path, mutate: Any, field: str, words: str
) -> None:
    doc = generic_doc()
    mutate(doc)
    error = refused(write_json(tmp_path / "evidence.json", doc))
    assert error.code == "evidence_invalid"
    assert error.details["field"] == field
    assert words in error.message


def test_generic_json_duplicate_result_is_refused(tmp_path: Path) -> None:
    doc = generic_doc()
    doc["results"].append(dict(doc["results"][0], value=0.5))
    error = refused(write_json(tmp_path / "evidence.json", doc))
    assert "results[3] repeats" in error.message and "results[0]" in error.message


def test_generic_json_with_nothing_in_it_is_refused(tmp_path: Path) -> None:
    error = refused(write_json(tmp_path / "evidence.json", {"results": [], "findings": []}))
    assert "no results and no findings" in error.message


HEADER = "suite,task,metric,value,stderr,samples,model\n"


@pytest.mark.parametrize(
    ("text", "line", "words"),
    [
        (
            HEADER + "s,t,m,0.5,,,\ns,t,m2,abc,,,\n",
            3,
            "line 3, column value must be a number, got the string 'abc'",
        ),
        (HEADER + "s,t,m,nan,,,\n", 2, "must be a finite number, got NaN"),
        (
            HEADER + "s,t,m,0.5,inf,,\n",
            2,
            "line 2, column stderr must be a finite number, got infinity",
        ),
        (HEADER + "s,t,m,0.5,,12.5,\n", 2, "line 2, column samples must be a whole number"),
        (HEADER + "s,t,m,0.5,,-3,\n", 2, "must be >= 0"),
        (HEADER + "s,t,m,,,,\n", 2, "line 2, column value is required"),
        (HEADER + "s,t,m,0.5\n", 2, "has 4 fields, the header has 7"),
        (HEADER + "s,t,m,0.5,,,\ns,t,m,0.6,,,\n", 3, "line 3 repeats"),
        ("suite,metric,stderr\ns,m,0.1\n", 1, "missing required column(s) value"),
        ("metric,value\nm,0.5\n", 1, "missing required column(s) suite"),
        ("suite,metric,value,stdev\ns,m,1,0.1\n", 1, "unknown column(s) 'stdev'"),
        (
            "title,severity\nLeak,urgent\n",
            2,
            "line 2, column severity is 'urgent'; severity must be one of low, medium, high, critical",
        ),
        ("title,status\nLeak,open\n", 1, "missing required column(s) severity"),
        ("name,score\nx,1\n", 1, "must be a results header"),
        (HEADER, None, "has a header but no rows"),
    ],
)
def test_generic_csv_bad_input_names_the_line(
    tmp_path: Path, text: str, line: int | None, words: str
) -> None:
    path = tmp_path / "evidence.csv"
    path.write_text(text, encoding="utf-8")
    error = refused(path)
    assert error.code == "evidence_invalid"
    assert words in error.message
    if line is not None:
        assert f"line {line}" in error.message
        if "repeats" not in words:
            assert error.details.get("line") == line


# --- choosing the importer ----------------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        ("inspect_success.json", "inspect_ai"),
        ("inspect_success.eval", "inspect_ai"),
        ("inspect_deflate.eval", "inspect_ai"),
        ("inspect_error.json", "inspect_ai"),
        ("lm_eval_results.json", "lm_eval"),
        ("generic_evidence.json", "generic_json"),
        ("generic_results.csv", "generic_csv"),
        ("generic_findings.csv", "generic_csv"),
    ],
)
def test_sniffing_picks_the_right_importer(name: str, expected: str) -> None:
    path = FIXTURES / name
    head = path.read_bytes()[: 64 * 1024]
    claims = [importer.name for importer in builtin_importers() if importer.sniff(path, head)]
    assert claims == [expected]


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        ("inspect_success.eval", "inspect_ai"),
        ("generic_results.csv", "generic_csv"),
        ("lm_eval_results.json", "lm_eval"),
    ],
)
def test_sniffing_does_not_depend_on_the_file_name(
    tmp_path: Path, name: str, expected: str
) -> None:
    path = tmp_path / "evidence.dat"
    path.write_bytes((FIXTURES / name).read_bytes())
    head = path.read_bytes()[: 64 * 1024]
    assert [i.name for i in builtin_importers() if i.sniff(path, head)] == [expected]


def test_sniffers_decline_garbage_without_raising(tmp_path: Path) -> None:
    path = tmp_path / "noise.bin"
    samples = [
        b"\x00\xff" * 100,
        b"{",
        b'{"results": 5}',
        b"[1, 2]",
        b"hello, world\n",
        b"PK\x03\x04",
    ]
    for head in samples:
        path.write_bytes(head)
        assert [i.name for i in builtin_importers() if i.sniff(path, head)] == []


def test_unrecognised_file_is_refused_with_the_known_formats(tmp_path: Path) -> None:
    path = tmp_path / "notes.txt"
    path.write_text("the model did fine\n", encoding="utf-8")
    error = refused(path)
    assert error.code == "evidence_format_unknown"
    for name in BUILTIN_NAMES:
        assert name in error.message
    assert error.details["known_formats"] == list(BUILTIN_NAMES)


def test_explicit_unknown_format_is_refused_with_the_known_formats() -> None:
    with pytest.raises(InvalidInput) as caught:
        import_file(FIXTURES / "generic_results.csv", format="helm")
    error = caught.value
    assert error.code == "evidence_format_unknown"
    assert "'helm'" in error.message
    assert "known formats: inspect_ai, lm_eval, generic_json, generic_csv" in error.message
    assert error.details["known_formats"] == list(BUILTIN_NAMES)


def test_explicit_format_overrides_sniffing(tmp_path: Path) -> None:
    path = tmp_path / "evidence.txt"
    path.write_bytes((FIXTURES / "generic_results.csv").read_bytes())
    assert import_file(path, format="generic_csv").source_format == "generic_csv"
    # the wrong explicit format is "mine, but bad", not a silent pass
    with pytest.raises(InvalidInput):
        import_file(FIXTURES / "generic_results.csv", format="lm_eval")


@pytest.mark.parametrize("content", [b"", b"  \n\t\n"])
@pytest.mark.parametrize("fmt", [None, "generic_csv", "inspect_ai", "lm_eval"])
def test_empty_file_is_refused(tmp_path: Path, content: bytes, fmt: str | None) -> None:
    path = tmp_path / "results.json"
    path.write_bytes(content)
    error = refused(path, fmt=fmt)
    assert error.code == "evidence_invalid"
    assert error.message == "results.json: the file is empty"


def test_missing_file_is_refused(tmp_path: Path) -> None:
    error = refused(tmp_path / "nowhere.eval")
    assert error.code == "evidence_unreadable"
    assert "no such file" in error.message


def test_suite_override_keeps_the_original() -> None:
    batch = import_file(
        FIXTURES / "inspect_success.json", registry=fallback_inspect_registry(), suite="arith-v2"
    )
    assert {r.suite for r in batch.results} == {"arith-v2"}
    assert {r.extra["source_suite"] for r in batch.results} == {"arithmetic"}


# --- the registry -------------------------------------------------------------------------


class ShoutingImporter:
    """A user's importer: claims files starting with 'SCORE'."""

    name = "shouting"

    def sniff(self, path: Path, head: bytes) -> bool:
        return head.startswith(b"SCORE")

    def load(self, path: Path) -> ImportBatch:
        data = path.read_bytes()
        _, suite, metric, value = data.decode().split()
        digest = hashlib.sha256(data).hexdigest()
        result = EvalResult(
            suite=suite,
            task=None,
            metric=metric,
            value=float(value),
            source_format=self.name,
            source_sha256=digest,
            source_name=path.name,
        )
        return ImportBatch(
            source_format=self.name, source_sha256=digest, source_name=path.name, results=(result,)
        )


def test_user_importer_goes_through_the_same_door(tmp_path: Path) -> None:
    path = tmp_path / "score.csv"  # the built-in CSV importer would claim it by its suffix
    path.write_text("SCORE bio-uplift pass_rate 0.07", encoding="utf-8")
    registry = default_registry(ShoutingImporter())
    assert isinstance(ShoutingImporter(), EvidenceImporter)
    assert registry.names() == ("shouting", *BUILTIN_NAMES)
    batch = import_file(path, registry=registry)
    assert batch.source_format == "shouting"
    assert batch.results[0].value == 0.07


def test_user_importer_can_replace_a_builtin() -> None:
    class Replacement(ShoutingImporter):
        name = "generic_csv"

    replacement = Replacement()
    registry = default_registry(replacement)
    assert registry.get("generic_csv") is replacement
    assert registry.names().count("generic_csv") == 1


def test_registry_refuses_duplicates_and_non_importers() -> None:
    registry = ImporterRegistry(builtin_importers())
    with pytest.raises(ValueError, match="already registered"):
        registry.register(InspectAIImporter())
    registry.register(InspectAIImporter(use_inspect_ai=False), replace=True)
    with pytest.raises(TypeError):
        registry.register(object())  # type: ignore[arg-type]


def test_registries_are_independent() -> None:
    first, second = default_registry(), default_registry()
    first.register(ShoutingImporter())
    assert "shouting" in first and "shouting" not in second


# --- records --------------------------------------------------------------------------------


def test_records_are_frozen_and_check_their_invariants() -> None:
    result = import_file(FIXTURES / "generic_evidence.json").results[0]
    with pytest.raises(dataclasses.FrozenInstanceError):
        result.value = 1.0  # type: ignore[misc]
    with pytest.raises(TypeError):
        result.extra["x"] = 1  # type: ignore[index]
    hash(result)
    for bad in (math.nan, math.inf):
        with pytest.raises(ValueError):
            dataclasses.replace(result, value=bad)
    with pytest.raises(ValueError):
        dataclasses.replace(result, stderr=-1.0)
    finding = import_file(FIXTURES / "generic_evidence.json").findings[0]
    with pytest.raises(ValueError):
        dataclasses.replace(finding, severity="urgent")  # type: ignore[arg-type]
    assert isinstance(finding, Finding)
