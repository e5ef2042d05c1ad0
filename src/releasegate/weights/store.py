"""Where weight files live: a small ``ArtifactStore`` interface and the local-directory default.

Artifacts are content-addressed by their sha256, so registering the same file for two versions
stores it once and a stored object never changes under a key. An object store (S3, GCS) can
implement the same interface later; ``local_path`` returning None tells the server it cannot
serve the bytes itself.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import re
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from releasegate.errors import InvalidInput

_READ = 8 * 1024 * 1024
_KEY_RE = re.compile(r"^[0-9a-f]{64}$")
MAX_PATH_LEN = 500
# Files Hugging Face keeps in LFS: weights and other large binaries.
LFS_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth", ".ckpt", ".gguf", ".onnx", ".h5", ".msgpack", ".npz", ".model")
LFS_MIN_SIZE = 10 * 1024 * 1024


class ArtifactStore(Protocol):
    """Keeps weight files by sha256.

    ``put`` stores ``source`` (whose sha256 the caller computed) and returns its key;
    ``local_path`` is the file to serve for ``key``, or None if this store cannot serve it
    from the local file system; ``exists`` says whether ``key`` is stored.
    """

    def put(self, source: Path, *, sha256: str) -> str: ...

    def local_path(self, key: str) -> Path | None: ...

    def exists(self, key: str) -> bool: ...


class LocalDirectoryStore:
    """Artifacts under ``root/<sha[:2]>/<sha>``; hard-linked from the source when possible, else copied."""

    def __init__(self, root: Path) -> None:
        self.root = Path(root)

    def _path(self, key: str) -> Path:
        if not _KEY_RE.match(key):
            raise InvalidInput(f"{key!r} is not an artifact key", code="invalid_artifact_key")
        return self.root / key[:2] / key

    def put(self, source: Path, *, sha256: str) -> str:
        target = self._path(sha256)
        if target.is_file() and target.stat().st_size == source.stat().st_size:
            return sha256
        target.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{sha256[:12]}.", suffix=".part", dir=target.parent)
        os.close(fd)
        try:
            os.unlink(tmp)
            try:
                # A hard link costs no space; the store treats its files as read-only.
                os.link(source, tmp)
            except OSError:
                shutil.copyfile(source, tmp)
            os.chmod(tmp, 0o444)
            os.replace(tmp, target)
        finally:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(tmp)
        return sha256

    def local_path(self, key: str) -> Path | None:
        p = self._path(key)
        return p if p.is_file() else None

    def exists(self, key: str) -> bool:
        return self._path(key).is_file()


def default_store(data_dir: Path) -> LocalDirectoryStore:
    return LocalDirectoryStore(Path(data_dir) / "artifacts")


@dataclass(frozen=True)
class FileDigest:
    size: int
    sha256: str
    git_oid: str  # what git would call the blob: sha1("blob <size>\0" + content)


def digest_file(path: Path) -> FileDigest:
    """Size, sha256 and git blob id of ``path`` in one pass."""
    size = path.stat().st_size
    sha = hashlib.sha256()
    git = hashlib.sha1(f"blob {size}\0".encode(), usedforsecurity=False)
    with path.open("rb") as f:
        while piece := f.read(_READ):
            sha.update(piece)
            git.update(piece)
    return FileDigest(size=size, sha256=sha.hexdigest(), git_oid=git.hexdigest())


def is_lfs(path: str, size: int) -> bool:
    """Would the Hugging Face Hub keep this file in LFS? (weights by suffix, anything large)."""
    return path.lower().endswith(LFS_SUFFIXES) or size >= LFS_MIN_SIZE


def lfs_pointer_oid(sha256: str, size: int) -> str:
    """The git blob id of the LFS pointer file, which is what the Hub lists as an LFS file's oid."""
    pointer = f"version https://git-lfs.github.com/spec/v1\noid sha256:{sha256}\nsize {size}\n".encode()
    return hashlib.sha1(f"blob {len(pointer)}\0".encode() + pointer, usedforsecurity=False).hexdigest()


def check_repo_path(path: str) -> str:
    """``path`` if it is a safe relative file name inside a repository, else InvalidInput (``invalid_path``).

    Refused: empty, absolute, backslashes, ``.``/``..`` or empty components, control characters,
    over-long names. The check is on the decoded name, so ``%2e%2e%2f`` is refused as ``../``.
    """
    problem = None
    if not path or len(path) > MAX_PATH_LEN:
        problem = "it is empty or too long"
    elif path.startswith("/") or re.match(r"^[A-Za-z]:", path):
        problem = "it is absolute"
    elif "\\" in path or any(ord(c) < 32 or ord(c) == 127 for c in path):
        problem = "it contains a backslash or a control character"
    elif any(part in ("", ".", "..") for part in path.split("/")):
        problem = "it has an empty, '.' or '..' component"
    if problem:
        raise InvalidInput(f"file name {path!r} is not allowed: {problem}", code="invalid_path", details={"path": path})
    return path


def scan_directory(directory: Path) -> list[tuple[str, Path]]:
    """Every regular file under ``directory`` as (repository path, file), skipping dot-files and dot-dirs."""
    root = Path(directory)
    if not root.is_dir():
        raise InvalidInput(f"{root} is not a directory of weight files", code="weights_dir_missing")
    found: list[tuple[str, Path]] = []
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        for name in sorted(filenames):
            if name.startswith("."):
                continue
            full = Path(dirpath) / name
            if not full.is_file():
                continue
            rel = full.relative_to(root).as_posix()
            found.append((check_repo_path(rel), full))
    if not found:
        raise InvalidInput(f"{root} holds no files to register", code="weights_dir_empty")
    return found
