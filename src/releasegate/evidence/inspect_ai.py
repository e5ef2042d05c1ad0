"""Importer for Inspect AI evaluation logs, both ``.eval`` (zip) and ``.json``.

With the optional ``inspect_ai`` extra installed, logs are read by Inspect's own
``inspect_ai.log.read_eval_log``; without it, by a reader for the documented formats:

- ``.json``: one object with ``version``, ``status``, ``eval``, ``plan``, ``results``,
  ``stats``, ``error``, ``samples``...
- ``.eval``: a zip holding ``header.json`` (the same object without samples), written when the
  run ends, ``_journal/start.json`` (written when it starts), ``summaries.json`` and
  ``samples/*.json``. Inspect 0.3.1xx and later compress members with Zstandard, which Python
  before 3.14 reads only with the ``zstandard`` package; older logs use deflate.

Each (score, metric) in ``results.scores`` becomes one ``EvalResult``: suite and task are the
Inspect task name, metric is ``"<score>/<metric>"`` (``"match/accuracy"``), with the epoch
reducer appended to the score when it is not the default mean (``"match[max]/accuracy"``).
A ``stderr`` metric is the standard error of the other metrics of its score, not a result of
its own. Only a run whose status is ``success`` is evidence; any other status is refused.
"""

from __future__ import annotations

import io
import lzma
import struct
import zipfile
import zlib
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from ._common import (
    SourceFile,
    describe,
    finite_number,
    invalid,
    json_top_level,
    optional_count,
    optional_stderr,
    optional_text,
    parse_json,
    read_source,
    require_unique,
    required_text,
    sha256_of,
    timestamp,
)
from .records import EvalResult, ImportBatch

FORMAT = "inspect_ai"
ZIP_MAGIC = b"PK\x03\x04"
HEADER_JSON = "header.json"
START_JSON = "_journal/start.json"
KNOWN_LOG_VERSIONS = (1, 2)
DEFAULT_REDUCER = "mean"
#: Compression methods the standard library's zipfile reads without help.
_STDLIB_ZIP_METHODS = frozenset(
    {zipfile.ZIP_STORED, zipfile.ZIP_DEFLATED, zipfile.ZIP_BZIP2, zipfile.ZIP_LZMA}
)
_ZIP_ZSTANDARD = 93
_MAX_HEADER_BYTES = 256 * 1024 * 1024
_LOCAL_HEADER = struct.Struct("<4s2B4HL2L2H")


class InspectAIImporter:
    """Reads Inspect AI ``.eval`` and ``.json`` logs of successful runs into results.

    ``use_inspect_ai``: True to require Inspect's own reader, False to always use the
    built-in reader, None (default) to use Inspect's reader when it is installed.
    """

    name = FORMAT

    def __init__(self, *, use_inspect_ai: bool | None = None) -> None:
        self._use_inspect_ai = use_inspect_ai

    def sniff(self, path: Path, head: bytes) -> bool:
        """Claim ``.eval`` zips (or zips holding ``header.json``) and JSON logs with ``eval``."""
        if head.startswith(ZIP_MAGIC):
            if path.suffix == ".eval":
                return True
            try:
                with zipfile.ZipFile(path) as archive:
                    names = set(archive.namelist())
            except (OSError, zipfile.BadZipFile):
                return False
            return HEADER_JSON in names or START_JSON in names
        keys = json_top_level(head)
        return keys is not None and keys.get("eval") == "{" and "status" in keys

    def load(self, path: Path) -> ImportBatch:
        """Read the log and return one result per (score, metric); refuse unsuccessful runs."""
        path = Path(path)
        if self._wants_inspect_ai():
            log, sha256 = _read_with_inspect_ai(path)
            source_name = path.name
        else:
            source = read_source(path)
            log = _read_fallback(source)
            sha256 = source.sha256
            source_name = source.name
        return _batch_from_log(path, log, sha256=sha256, source_name=source_name)

    def _wants_inspect_ai(self) -> bool:
        if self._use_inspect_ai is False:
            return False
        try:
            import inspect_ai.log  # noqa: F401
        except ImportError:
            if self._use_inspect_ai:
                raise RuntimeError(
                    "use_inspect_ai=True but inspect_ai is not installed; "
                    "install the releasegate[inspect_ai] extra"
                ) from None
            return False
        return True


def _read_with_inspect_ai(path: Path) -> tuple[dict[str, Any], str]:
    """Read the log header with Inspect's reader; the hash is of the bytes it read."""
    from inspect_ai.log import read_eval_log

    try:
        before = sha256_of(path)
    except FileNotFoundError:
        raise invalid(path, "no such file", code="evidence_unreadable") from None
    except OSError as exc:
        raise invalid(path, f"cannot be read ({exc.strerror})", code="evidence_unreadable") from exc
    try:
        log = read_eval_log(str(path), header_only=True)
    except Exception as exc:  # Inspect raises many types for a bad file; all mean "unreadable"
        raise invalid(
            path,
            f"Inspect AI could not read this log: {type(exc).__name__}: {exc}",
            code="evidence_unreadable",
        ) from exc
    if sha256_of(path) != before:
        raise invalid(path, "the file changed while it was being read", code="evidence_unreadable")
    dumped: dict[str, Any] = log.model_dump(exclude={"samples", "reductions"})
    return dumped, before


def _read_fallback(source: SourceFile) -> Any:
    """Parse the log's header object without Inspect installed."""
    if not source.data.startswith(ZIP_MAGIC):
        return parse_json(source)
    try:
        with zipfile.ZipFile(io.BytesIO(source.data)) as archive:
            names = set(archive.namelist())
            if HEADER_JSON in names:
                return parse_json(
                    source, _read_member(source, archive, HEADER_JSON), member=HEADER_JSON
                )
            if START_JSON in names:
                raise invalid(
                    source,
                    "the run never finished: the log has _journal/start.json but no header.json "
                    "(status 'started'); only a successful run is evidence",
                    code="evidence_run_failed",
                    status="started",
                )
            raise invalid(
                source,
                "is a zip but not an Inspect .eval log: it has neither header.json nor "
                "_journal/start.json",
            )
    except zipfile.BadZipFile as exc:
        raise invalid(
            source, f"is not a readable .eval (zip) file: {exc}", code="evidence_unreadable"
        ) from None


def _read_member(source: SourceFile, archive: zipfile.ZipFile, name: str) -> bytes:
    """The uncompressed bytes of one zip member, Zstandard included, checked against its CRC."""
    info = archive.getinfo(name)
    if info.file_size > _MAX_HEADER_BYTES:
        raise invalid(source, f"member {name} is implausibly large ({info.file_size} bytes)")
    if info.compress_type in _STDLIB_ZIP_METHODS:
        try:
            return archive.read(name)
        except (zipfile.BadZipFile, zlib.error, lzma.LZMAError, EOFError, OSError) as exc:
            raise invalid(
                source, f"member {name} is corrupt: {exc}", code="evidence_unreadable"
            ) from None
    if info.compress_type != _ZIP_ZSTANDARD:
        raise invalid(
            source,
            f"member {name} uses zip compression method {info.compress_type}, which releasegate "
            "cannot read",
            code="evidence_unreadable",
        )
    try:
        import zstandard
    except ImportError:
        raise invalid(
            source,
            "is compressed with Zstandard (Inspect AI 0.3.1xx and later); reading it needs the "
            "'zstandard' package or the releasegate[inspect_ai] extra",
            code="evidence_unreadable",
        ) from None
    offset = info.header_offset
    local = source.data[offset : offset + _LOCAL_HEADER.size]
    if len(local) != _LOCAL_HEADER.size or not local.startswith(ZIP_MAGIC):
        raise invalid(source, f"member {name} has a damaged zip header", code="evidence_unreadable")
    fields = _LOCAL_HEADER.unpack(local)
    start = offset + _LOCAL_HEADER.size + fields[10] + fields[11]
    compressed = source.data[start : start + info.compress_size]
    try:
        reader = zstandard.ZstdDecompressor().stream_reader(
            io.BytesIO(compressed), read_across_frames=True
        )
        data: bytes = reader.read(info.file_size + 1)
    except zstandard.ZstdError as exc:
        raise invalid(
            source, f"member {name} is corrupt: {exc}", code="evidence_unreadable"
        ) from None
    if len(data) != info.file_size or zlib.crc32(data) != info.CRC:
        raise invalid(
            source, f"member {name} is corrupt (size or CRC mismatch)", code="evidence_unreadable"
        )
    return data


def _batch_from_log(path: Path, log: Any, *, sha256: str, source_name: str) -> ImportBatch:
    """Check the run succeeded, then turn ``results.scores`` into results."""
    if not isinstance(log, Mapping):
        raise invalid(path, f"an Inspect log must be a JSON object, got {describe(log)}")
    warnings: list[str] = []

    version = log.get("version")
    if (
        isinstance(version, int)
        and not isinstance(version, bool)
        and version not in KNOWN_LOG_VERSIONS
    ):
        warnings.append(f"log format version {version} is newer than releasegate knows (1, 2)")

    status = log.get("status")
    if status != "success":
        error = log.get("error")
        message = error.get("message") if isinstance(error, Mapping) else None
        raise invalid(
            path,
            f"the evaluation run did not succeed (status {status!r})"
            + (f": {message}" if message else "")
            + "; only a successful run is evidence",
            code="evidence_run_failed",
            status=status,
            **({"run_error": message} if message else {}),
        )
    if log.get("invalidated") is True:
        raise invalid(
            path,
            "the log marks samples as invalidated; re-run or re-score the evaluation before "
            "importing it",
            code="evidence_run_failed",
            status="invalidated",
        )

    spec = log.get("eval")
    if not isinstance(spec, Mapping):
        raise invalid(path, "eval must be an object", field="eval")
    task = required_text(path, spec.get("task"), "eval.task")
    model = optional_text(path, spec.get("model"), "eval.model")

    results = log.get("results")
    if not isinstance(results, Mapping):
        raise invalid(
            path, "results is missing: a successful run must carry results", field="results"
        )
    scores = results.get("scores")
    if not isinstance(scores, list):
        raise invalid(path, "results.scores must be a list", field="results.scores")
    total = optional_count(path, results.get("total_samples"), "results.total_samples")
    completed = optional_count(path, results.get("completed_samples"), "results.completed_samples")
    if total is not None and completed is not None and completed < total:
        warnings.append(f"only {completed} of {total} samples completed")

    raw_stats = log.get("stats")
    stats: Mapping[str, Any] = raw_stats if isinstance(raw_stats, Mapping) else {}
    started_at = timestamp(path, stats.get("started_at"), "stats.started_at", warnings)
    completed_at = timestamp(path, stats.get("completed_at"), "stats.completed_at", warnings)
    headline = results.get("headline") if isinstance(results.get("headline"), Mapping) else None

    packages = spec.get("packages")
    run_extra: dict[str, Any] = {
        "log_version": version,
        "eval_id": spec.get("eval_id"),
        "run_id": spec.get("run_id"),
        "task_id": spec.get("task_id"),
        "task_version": spec.get("task_version"),
        "created": spec.get("created"),
        "total_samples": total,
        "completed_samples": completed,
        "inspect_ai_version": packages.get("inspect_ai") if isinstance(packages, Mapping) else None,
    }
    dataset = spec.get("dataset")
    if isinstance(dataset, Mapping) and isinstance(dataset.get("name"), str):
        run_extra["dataset"] = dataset["name"]

    records: list[EvalResult] = []
    for index, score in enumerate(scores):
        where = f"results.scores[{index}]"
        if not isinstance(score, Mapping):
            raise invalid(path, f"{where} must be an object", field=where)
        score_name = required_text(path, score.get("name"), f"{where}.name")
        scorer = optional_text(path, score.get("scorer"), f"{where}.scorer") or score_name
        reducer = optional_text(path, score.get("reducer"), f"{where}.reducer")
        samples = optional_count(path, score.get("scored_samples"), f"{where}.scored_samples")
        metrics = score.get("metrics")
        if not isinstance(metrics, Mapping):
            raise invalid(path, f"{where}.metrics must be an object", field=f"{where}.metrics")
        values: dict[str, float] = {}
        for key, metric in metrics.items():
            metric_where = f"{where}.metrics.{key}"
            raw = metric.get("value") if isinstance(metric, Mapping) else metric
            values[key] = finite_number(path, raw, f"{metric_where}.value")
        stderr = (
            optional_stderr(path, values["stderr"], f"{where}.metrics.stderr.value")
            if "stderr" in values
            else None
        )
        label = score_name if reducer in (None, DEFAULT_REDUCER) else f"{score_name}[{reducer}]"
        for key, value in values.items():
            if key == "stderr":
                continue
            is_headline = bool(
                headline
                and headline.get("score", headline.get("scorer")) == score_name
                and headline.get("metric") == key
                and headline.get("reducer") == reducer
            )
            records.append(
                EvalResult(
                    suite=task,
                    task=task,
                    metric=f"{label}/{key}",
                    value=value,
                    stderr=stderr,
                    model=model,
                    samples=samples if samples is not None else completed,
                    source_format=FORMAT,
                    source_sha256=sha256,
                    source_name=source_name,
                    started_at=started_at,
                    completed_at=completed_at,
                    extra={
                        **run_extra,
                        "score": score_name,
                        "scorer": scorer,
                        "reducer": reducer,
                        "headline": is_headline,
                    },
                )
            )
        if values and set(values) == {"stderr"}:
            warnings.append(f"{where} ({score_name}) has only a stderr metric; nothing imported")
    if not records:
        raise invalid(
            path, "the log has no metric values in results.scores", field="results.scores"
        )
    require_unique(path, records)
    return ImportBatch(
        source_format=FORMAT,
        source_sha256=sha256,
        source_name=source_name,
        results=tuple(records),
        warnings=tuple(warnings),
    )
