"""Evidence importers: the plug-in interface, the registry, and ``import_file``.

An importer turns one file in one format into an ``ImportBatch``. It answers two questions:
``sniff`` ("is this file mine?", False to decline so the next importer is asked) and ``load``
("read it", raising ``InvalidInput`` when the file is mine but bad). The built-in importers
are registered through the same ``ImporterRegistry.register`` a user's importer goes through,
after the user's, so a user's importer can claim a file first or replace a built-in by name.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Protocol, runtime_checkable

from releasegate.errors import InvalidInput

from ._common import invalid, read_head
from .records import ImportBatch


@runtime_checkable
class EvidenceImporter(Protocol):
    """Reads one evidence format.

    Contract:
    - ``name`` is the format's stable identifier (``import_file(format=...)``, and
      ``ImportBatch.source_format``); lowercase, unique within a registry.
    - ``sniff(path, head)`` gets the path and up to the first 64 KiB of the file. Return True
      only for a file this importer should read; return False ("not mine") otherwise. It must
      not raise for a file it does not recognise, and should be cheap.
    - ``load(path)`` reads the whole file and returns an ``ImportBatch`` whose
      ``source_sha256`` is the SHA-256 of the file's bytes. A file that is this importer's
      format but unusable (unreadable, malformed, a failed run, a value that is not a number)
      raises ``releasegate.errors.InvalidInput`` naming the file and, where it can, the field
      or line. It never returns a partial batch silently: anything dropped is in ``warnings``.
    """

    @property
    def name(self) -> str: ...

    def sniff(self, path: Path, head: bytes) -> bool: ...

    def load(self, path: Path) -> ImportBatch: ...


class ImporterRegistry:
    """An ordered set of importers, asked in registration order when sniffing."""

    def __init__(self, importers: Iterable[EvidenceImporter] = ()) -> None:
        self._importers: dict[str, EvidenceImporter] = {}
        for importer in importers:
            self.register(importer)

    def register(self, importer: EvidenceImporter, *, replace: bool = False) -> None:
        """Add an importer; a second one with the same name is refused unless ``replace``."""
        if not isinstance(importer, EvidenceImporter):
            raise TypeError(f"{importer!r} does not implement EvidenceImporter")
        name = importer.name
        if not name or name != name.strip().lower():
            raise ValueError(f"importer name must be non-empty lowercase, got {name!r}")
        if name in self._importers and not replace:
            raise ValueError(f"an importer named {name!r} is already registered")
        self._importers[name] = importer

    def get(self, name: str) -> EvidenceImporter:
        """The importer for ``name``; an unknown name is refused with the list of known ones."""
        try:
            return self._importers[name]
        except KeyError:
            known = ", ".join(self.names()) or "(none registered)"
            raise InvalidInput(
                f"unknown evidence format {name!r}; known formats: {known}",
                code="evidence_format_unknown",
                details={"format": name, "known_formats": list(self.names())},
            ) from None

    def names(self) -> tuple[str, ...]:
        """Names of the registered importers, in the order they are asked."""
        return tuple(self._importers)

    def detect(self, path: Path, head: bytes) -> EvidenceImporter | None:
        """The first importer whose ``sniff`` claims the file, or None if none does."""
        for importer in self._importers.values():
            if importer.sniff(path, head):
                return importer
        return None

    def __iter__(self) -> Iterator[EvidenceImporter]:
        return iter(tuple(self._importers.values()))

    def __len__(self) -> int:
        return len(self._importers)

    def __contains__(self, name: object) -> bool:
        return name in self._importers


def builtin_importers() -> tuple[EvidenceImporter, ...]:
    """Fresh instances of the importers releasegate ships, in the order they are asked."""
    from .generic import GenericCsvImporter, GenericJsonImporter
    from .inspect_ai import InspectAIImporter
    from .lm_eval import LmEvalImporter

    return (InspectAIImporter(), LmEvalImporter(), GenericJsonImporter(), GenericCsvImporter())


def default_registry(*importers: EvidenceImporter) -> ImporterRegistry:
    """A registry with ``importers`` first and then the built-ins.

    A given importer whose name is a built-in's replaces that built-in.
    """
    registry = ImporterRegistry(importers)
    for builtin in builtin_importers():
        if builtin.name not in registry:
            registry.register(builtin)
    return registry


def import_file(
    path: str | Path,
    registry: ImporterRegistry | None = None,
    format: str | None = None,
    *,
    suite: str | None = None,
) -> ImportBatch:
    """Read one evidence file into an ``ImportBatch``.

    The importer is the one named by ``format``, or else the first in ``registry`` (default:
    the built-ins) whose ``sniff`` claims the file. ``suite``, when given, replaces the suite
    of every result (the original is kept in ``extra["source_suite"]``). Raises
    ``InvalidInput`` for a missing or empty file, an unknown or unrecognised format, and
    whatever the importer refuses.
    """
    path = Path(path)
    registry = registry if registry is not None else default_registry()
    if format is not None:
        importer = registry.get(format)
        read_head(path)  # missing or empty: the same clear refusal whatever the importer
    else:
        importer_or_none = registry.detect(path, read_head(path))
        if importer_or_none is None:
            known = ", ".join(registry.names()) or "(none registered)"
            raise invalid(
                path,
                f"no importer recognises this file; name its format explicitly (known: {known})",
                code="evidence_format_unknown",
                known_formats=list(registry.names()),
            )
        importer = importer_or_none
    batch = importer.load(path)
    if suite is not None:
        if not suite.strip():
            raise InvalidInput("suite must not be empty", code="evidence_invalid")
        batch = dataclasses.replace(
            batch,
            results=tuple(
                dataclasses.replace(
                    result, suite=suite, extra={**result.extra, "source_suite": result.suite}
                )
                for result in batch.results
            ),
        )
    return batch
