"""Safe, atomic storage of tensors (safetensors) with JSON metadata: the one adapter to
safetensors used by target models, defenses and the adversarial-example cache.

Files are written to a temporary name in the destination folder and renamed into place, so a
reader never sees a half-written file and a crash leaves no partial entry behind. They get the
mode a plain ``open()`` would give (0o666 minus the umask), not the temporary file's 0o600.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import json
import os
import tempfile
from pathlib import Path
from typing import Any, Iterator, Mapping

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from safetensors import safe_open

from addd.errors import AdddError

METADATA_KEY = "addd"  # safetensors metadata is str -> str; ours is one JSON document


class StorageError(AdddError):
    """A stored file is missing, unreadable or not what it claims to be; the message says what to do."""


_NO_SPACE = {errno.ENOSPC, getattr(errno, "EDQUOT", errno.ENOSPC)}
_NOT_WRITABLE = {errno.EROFS, errno.EACCES, errno.EPERM}


def write_error(path: str | os.PathLike, exc: BaseException) -> BaseException:
    """A StorageError saying what to do for a failed write of ``path`` (full or read-only
    storage), else ``exc`` itself."""
    code = getattr(exc, "errno", None)
    if code is None and "No space left" in str(exc):  # safetensors' own errors carry no errno
        code = errno.ENOSPC
    folder = Path(path).parent
    if code in _NO_SPACE:
        return StorageError(f"no space left on the device of {folder} while writing {Path(path).name}; "
                            f"free some space or point the option that chose {folder} at a larger disk")
    if code in _NOT_WRITABLE:
        return StorageError(f"{folder} is not writable ({os.strerror(code)}); "
                            f"make it writable or point the option that chose it at a writable folder")
    return exc


def _umask() -> int:
    """The process umask, read without changing it where Linux tells it (os.umask(0) would leave
    other threads a moment of 0o666 files)."""
    try:
        with open("/proc/self/status") as status:
            for line in status:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    mask = os.umask(0o077)
    os.umask(mask)
    return mask


def publish_mode(path: str | os.PathLike) -> None:
    """Give a file the mode a plain ``open()`` would have (0o666 minus the umask): temporary files
    are created 0o600, and results on a shared folder must be readable by the team."""
    os.chmod(path, 0o666 & ~_umask())


@contextlib.contextmanager
def _atomic(path: Path) -> Iterator[Path]:
    """A temporary file beside ``path`` to write; on success it is fsynced, given the umask's
    mode and renamed into place. A full or read-only folder raises StorageError, and nothing is
    left behind either way."""
    tmp = None
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
        os.close(fd)
        yield Path(tmp)
        with open(tmp, "rb+") as handle:
            os.fsync(handle.fileno())
        publish_mode(tmp)
        os.replace(tmp, path)
    except BaseException as exc:
        if tmp is not None:
            Path(tmp).unlink(missing_ok=True)
        error = write_error(path, exc)
        if error is exc:
            raise
        raise error from None


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> None:
    """Write ``data`` to ``path`` atomically (temporary file in the same folder + rename).
    A full or read-only folder raises StorageError and leaves nothing behind."""
    with _atomic(Path(path)) as tmp:
        tmp.write_bytes(data)


def save_tensors(path: str | os.PathLike, tensors: Mapping[str, torch.Tensor], metadata: Mapping[str, Any]) -> None:
    """Atomically save tensors (made contiguous, moved to CPU) with JSON-serialisable metadata."""
    with _atomic(Path(path)) as tmp:
        cpu = {name: t.detach().to("cpu").contiguous() for name, t in tensors.items()}
        save_file(cpu, str(tmp), metadata={METADATA_KEY: json.dumps(dict(metadata), sort_keys=True)})


def load_tensors(path: str | os.PathLike) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """Load tensors and metadata saved by :func:`save_tensors`; clear error if unreadable."""
    path = Path(path)
    if not path.is_file():
        raise StorageError(f"no file at {path}")
    try:
        tensors = load_file(str(path))
        return tensors, read_metadata(path)
    except (SafetensorError, OSError, ValueError, json.JSONDecodeError) as exc:
        raise StorageError(f"{path} is not a readable addd safetensors file ({exc}); delete it and rebuild") from exc


def read_metadata(path: str | os.PathLike) -> dict[str, Any]:
    """Read only the metadata of a file saved by :func:`save_tensors`."""
    try:
        with safe_open(str(path), framework="pt") as handle:
            raw = (handle.metadata() or {}).get(METADATA_KEY)
    except (SafetensorError, OSError) as exc:
        raise StorageError(f"{path} is not a readable safetensors file ({exc})") from exc
    if raw is None:
        raise StorageError(f"{path} has no addd metadata; it was not written by addd")
    return json.loads(raw)


def sha256_tensor(tensor: torch.Tensor) -> str:
    """SHA-256 of a tensor's dtype, shape and raw bytes (identical data -> identical hash)."""
    t = tensor.detach().to("cpu").contiguous()
    digest = hashlib.sha256(f"{t.dtype}|{tuple(t.shape)}|".encode())
    digest.update(t.reshape(-1).view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return digest.hexdigest()


def sha256_state_dict(state: Mapping[str, torch.Tensor]) -> str:
    """SHA-256 over a state dict's names and tensors, in sorted order."""
    digest = hashlib.sha256()
    for name in sorted(state):
        digest.update(name.encode())
        digest.update(sha256_tensor(state[name]).encode())
    return digest.hexdigest()


def stable_hash(obj: Any, length: int = 16) -> str:
    """Short SHA-256 of a JSON-serialisable object (keys sorted): a cache key."""
    text = json.dumps(obj, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:length]
