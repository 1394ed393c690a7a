"""Content-addressed cache of oblivious adversarial examples, shared by every trial.

Attacks against the target model alone do not depend on the defense, so each set is generated
once per (dataset, split, data sha256, target-model weights sha256, attack, attack parameters,
seed, chunk size, attack-library versions) and read back by every trial, on one machine or many
(the root can be shared storage). A subset of a split is other data, hence another key; the
attack parameters are those of ``addd.attacks.attack_params`` after ``budget``, so two budgets
that give the same parameters share an entry.

The cache of a run lives in ``<cache_dir>/advcache`` (:data:`SUBDIR`): open it with
``AdvCache.under(cache_dir)`` so every user shares it. Layout under ``root``::

    <dataset>/<attack>/<key>/tensors.safetensors   x_adv float32 as generated, y, target (if any)
    <dataset>/<attack>/<key>/manifest.json         AdvManifest, incl. the sha256 of each stored tensor
    .locks/<key>.lock                              one generator per key (filelock)
    .tmp/                                          entries being written, renamed into place

An entry is written in a temporary folder and renamed into place, so readers see all or
nothing. Every read checks the manifest (its own checksum, format, key) and the sha256 of every
tensor it returns (copied out of the file first); a corrupt, truncated or mismatched entry is
logged as a warning naming it, and rebuilt. Tensors are stored bit-exact (no rounding, no
uint8): storing never changes an attack.

Usage::

    cache = AdvCache.under("runs")  # root runs/advcache
    sets = cache.get_many([AdvRequest("digits", "test", x, y, model, "PGDu"), ...])
    sets["PGDu"].x_adv
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import json
import logging
import os
import shutil
import time
import uuid
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable, Iterable, Mapping

import torch
from filelock import FileLock
from torch import nn

from addd.errors import AdddError
from addd.inference import predict
from addd.metrics import accuracy_targeted, accuracy_untargeted
from addd.storage import StorageError, load_tensors, save_tensors, sha256_state_dict, sha256_tensor, stable_hash

logger = logging.getLogger(__name__)

FORMAT_VERSION = 1
SUBDIR = "advcache"  # the cache's folder under a cache dir: use AdvCache.under(cache_dir), never spell it
TENSORS_FILE = "tensors.safetensors"
MANIFEST_FILE = "manifest.json"

ProgressFn = Callable[[str, int, int], None]  # (attack, examples done, total)
MapFn = Callable[[Callable[[Any], Any], list], list]  # map_fn(fn, items) -> [fn(item) ...]


# AdvSet.origin: read from the cache; generated here; generated here because the entry on disk was
# damaged; read after waiting for the lock of another process (another sweep) that generated it
CACHED, GENERATED, REBUILT, WAITED = "cached", "generated", "rebuilt", "waited"
ORIGINS = (CACHED, GENERATED, REBUILT, WAITED)


class AdvCacheError(AdddError):
    """A cache request or an attack's output is unusable; the message says what to fix."""


class _InvalidEntry(AdddError):
    """An entry on disk is corrupt, truncated or not the one asked for (internal: caught, logged, rebuilt)."""


@dataclass(frozen=True, eq=False)
class AdvRequest:
    """One adversarial set to get: ``attack`` run against ``model`` on the clean ``(x, y)``.

    ``model_sha256`` identifies the target model's weights (``TargetModel.weights_sha256``); left
    None, it is computed from the state dict. ``budget`` scales the attack's iterations.
    """

    dataset: str  # dataset name, picks the attack's parameter table
    split: str  # "test", "val", ... (part of the key and the log lines)
    x: torch.Tensor  # (N, C, H, W) float32 in [0, 1], clean images
    y: torch.Tensor  # (N,) int64 labels
    model: nn.Module  # target model M_t (images in [0, 1])
    attack: str  # name in addd.attacks.ATTACK_NAMES
    model_sha256: str | None = None
    budget: float = 1.0
    seed: int = 0
    device: str = "cpu"

    def __post_init__(self) -> None:
        x, y = self.x, self.y
        if not isinstance(x, torch.Tensor) or x.dtype != torch.float32 or x.dim() != 4 or len(x) == 0:
            raise AdvCacheError(
                f"AdvRequest({self.attack}).x must be a non-empty float32 (N, C, H, W) tensor, got "
                f"{getattr(x, 'dtype', type(x))} of shape {tuple(getattr(x, 'shape', ()))}"
            )
        if not isinstance(y, torch.Tensor) or y.dtype != torch.int64 or y.shape != (len(x),):
            raise AdvCacheError(
                f"AdvRequest({self.attack}).y must be an int64 tensor of shape ({len(x)},), got "
                f"{getattr(y, 'dtype', type(y))} of shape {tuple(getattr(y, 'shape', ()))}"
            )
        if self.budget <= 0:
            raise AdvCacheError(f"AdvRequest({self.attack}).budget must be > 0, got {self.budget}")


@dataclass(frozen=True)
class AdvManifest:
    """What an entry holds and how it was made; saved and loaded only by :meth:`save` / :meth:`load`."""

    format_version: int
    key: str
    dataset: str
    split: str
    attack: str
    params: dict[str, Any]  # attack parameters the key was computed from (attacks.attack_params)
    run_params: dict[str, Any]  # parameters the attack runner reported it used (first chunk)
    seed: int
    budget: float
    chunk_size: int
    library_versions: dict[str, Any]
    model_sha256: str
    x_sha256: str  # clean data the set was generated from
    y_sha256: str
    shapes: dict[str, list[int]]  # tensor name -> shape, as stored
    tensor_sha256: dict[str, str]  # tensor name -> storage.sha256_tensor of the stored tensor
    target_class: int | None  # the targeted attack's class, None if untargeted or per-example
    attack_success_rate: float  # untargeted: pred != y; targeted: pred == target, over y != target
    model_accuracy: float  # Acc_u (Acc_t if targeted) of the target model on x_adv, at generation
    clean_accuracy: float  # accuracy of the target model on the clean x
    seconds: float  # generation time
    created: str  # ISO 8601, UTC

    def save(self, path: Path) -> None:
        """Write as JSON with a checksum over the fields (a flipped digit is caught on load)."""
        fields = dataclasses.asdict(self)
        document = {"fields": fields, "checksum": _json_sha256(fields)}
        text = json.dumps(document, indent=1, sort_keys=True)
        path.write_text(text)  # written inside the entry's temporary folder, renamed with it

    @classmethod
    def load(cls, path: Path) -> "AdvManifest":
        """Read a manifest written by :meth:`save`; raises ``_InvalidEntry`` on any mismatch."""
        try:
            document = json.loads(path.read_text())
            fields = document["fields"]
            checksum = document["checksum"]
        except (OSError, ValueError, KeyError, TypeError) as exc:
            raise _InvalidEntry(f"manifest unreadable ({exc.__class__.__name__}: {exc})") from exc
        if _json_sha256(fields) != checksum:
            raise _InvalidEntry("manifest checksum mismatch")
        if fields.get("format_version") != FORMAT_VERSION:
            raise _InvalidEntry(f"format version {fields.get('format_version')} != {FORMAT_VERSION}")
        try:
            return cls(**fields)
        except TypeError as exc:
            raise _InvalidEntry(f"manifest fields do not match ({exc})") from exc


@dataclass(frozen=True, eq=False)
class AdvSet:
    """An adversarial set: ``x_adv`` paired with the clean labels ``y`` (and targets if targeted)."""

    attack: str
    x_adv: torch.Tensor  # (N, C, H, W) float32, bit-exact as generated
    y: torch.Tensor  # (N,) int64 true labels
    target: torch.Tensor | None  # (N,) int64 target classes of a targeted attack, else None
    manifest: AdvManifest | None = None  # None for sets not read from the cache
    # how get_or_create got it: one of ORIGINS ("cached" for sets not made by the cache)
    origin: str = "cached"

    @property
    def targeted(self) -> bool:
        return self.target is not None


@dataclass
class AdvCache:
    """Get-or-create adversarial sets under ``root``; see the module docstring.

    ``run_attack``, ``attack_params`` and ``library_versions`` default to those of
    :mod:`addd.attacks` (looked up at call time); pass stand-ins to test or count calls. All three
    must be picklable (module-level functions) when ``get_many`` runs in other processes.
    """

    root: Path
    run_attack: Callable[..., Any] | None = None  # (name, model, x, y, *, dataset, budget, seed, device)
    attack_params: Callable[..., dict] | None = None  # (name, dataset, budget) -> dict
    library_versions: Callable[[], dict] | None = None  # () -> dict
    chunk_size: int = 256  # examples per attack call; progress is reported after each chunk
    batch_size: int = 512  # examples per forward pass when measuring accuracy
    lock_timeout: float = -1  # seconds to wait for another generator; -1 waits forever

    @classmethod
    def under(cls, cache_dir: str | os.PathLike, **options: Any) -> "AdvCache":
        """The cache in its one place under a cache dir, ``<cache_dir>/advcache``; ``options`` as
        the constructor's (run_attack, chunk_size, ...)."""
        return cls(Path(cache_dir) / SUBDIR, **options)

    def __post_init__(self) -> None:
        self.root = Path(self.root)
        if self.chunk_size < 1:
            raise AdvCacheError(f"chunk_size must be >= 1, got {self.chunk_size}")

    # ---- keys and paths -------------------------------------------------------------------

    def key_fields(self, request: AdvRequest) -> dict[str, Any]:
        """Everything the entry's content depends on (hashed into its key)."""
        return {
            "format_version": FORMAT_VERSION,
            "dataset": request.dataset,
            "split": request.split,
            "x_sha256": sha256_tensor(request.x),
            "y_sha256": sha256_tensor(request.y),
            "model_sha256": request.model_sha256 or sha256_state_dict(request.model.state_dict()),
            "attack": request.attack,
            "params": _jsonable(self._attack_params()(request.attack, request.dataset, budget=request.budget)),
            "seed": int(request.seed),
            "chunk_size": self.chunk_size,  # seeds are drawn per chunk, so chunking changes x_adv
            "library_versions": _versions(self._library_versions()),
        }

    def key(self, request: AdvRequest) -> str:
        """Content address of the entry ``request`` asks for."""
        return stable_hash(self.key_fields(request), length=32)

    def entry_dir(self, request: AdvRequest, key: str | None = None) -> Path:
        return self.root / request.dataset / request.attack / (key or self.key(request))

    # ---- public API -----------------------------------------------------------------------

    def has(self, request: AdvRequest) -> bool:
        """Whether the entry ``request`` asks for is stored (complete: entries appear whole), without reading it."""
        entry = self.entry_dir(request)
        return (entry / MANIFEST_FILE).is_file() and (entry / TENSORS_FILE).is_file()

    def get_or_create(self, request: AdvRequest, progress: ProgressFn | None = None) -> AdvSet:
        """Read the entry for ``request``, or generate, store and return it (once across workers).
        The set's ``origin`` says which: CACHED, GENERATED, REBUILT (the entry was damaged) or
        WAITED (another process generated it while this one waited for its lock)."""
        fields = self.key_fields(request)
        key = stable_hash(fields, length=32)
        entry = self.entry_dir(request, key)
        try:  # fast path, no lock: entries only ever appear complete
            adv_set = self._read(entry, key, request)
            logger.debug("advcache hit %s", entry)
            _report(progress, request.attack, len(request.x), len(request.x))
            return adv_set
        except _InvalidEntry:
            pass
        lock_path = self.root / ".locks" / f"{key}.lock"
        lock_path.parent.mkdir(parents=True, exist_ok=True)
        with FileLock(str(lock_path), timeout=self.lock_timeout):
            origin = GENERATED
            if entry.exists():
                try:  # another worker made it while we waited
                    adv_set = self._read(entry, key, request)
                    _report(progress, request.attack, len(request.x), len(request.x))
                    return dataclasses.replace(adv_set, origin=WAITED)
                except _InvalidEntry as exc:
                    logger.warning(
                        "advcache entry %s (%s on %s/%s) is invalid: %s; rebuilding it",
                        entry, request.attack, request.dataset, request.split, exc,
                    )
                    self._discard(entry)
                    origin = REBUILT
            self._generate(request, fields, key, entry, progress)
            return dataclasses.replace(self._read(entry, key, request), origin=origin)

    def get_many(
        self,
        requests: Iterable[AdvRequest],
        map_fn: MapFn | None = None,
        progress: ProgressFn | None = None,
    ) -> dict[str, AdvSet]:
        """Get several sets, one per attack; ``map_fn(fn, items) -> list`` may run them in parallel.

        Without ``map_fn`` they run one after another. With one (threads, processes, Ray tasks),
        ``self`` and ``progress`` are sent to the workers, so both must be picklable there.
        """
        requests = list(requests)
        attacks = [r.attack for r in requests]
        duplicates = sorted({a for a in attacks if attacks.count(a) > 1})
        if duplicates:
            raise AdvCacheError(f"get_many got several requests for attack(s) {duplicates}; ask once per attack")
        fn = functools.partial(_get_one, self, progress=progress)
        results = map_fn(fn, requests) if map_fn is not None else [fn(r) for r in requests]
        results = list(results)
        if len(results) != len(requests):
            raise AdvCacheError(f"map_fn returned {len(results)} results for {len(requests)} requests")
        return {r.attack: s for r, s in zip(requests, results)}

    # ---- internals ------------------------------------------------------------------------

    def _attack_params(self) -> Callable[..., dict]:
        if self.attack_params is not None:
            return self.attack_params
        from addd import attacks

        return attacks.attack_params

    def _library_versions(self) -> Callable[[], dict]:
        if self.library_versions is not None:
            return self.library_versions
        from addd import attacks

        return attacks.library_versions

    def _run_attack(self) -> Callable[..., Any]:
        if self.run_attack is not None:
            return self.run_attack
        from addd import attacks

        return attacks.run_attack

    def _read(self, entry: Path, key: str, request: AdvRequest) -> AdvSet:
        """Load and verify an entry; raise ``_InvalidEntry`` saying what is wrong."""
        manifest_path, tensors_path = entry / MANIFEST_FILE, entry / TENSORS_FILE
        if not manifest_path.is_file() or not tensors_path.is_file():
            raise _InvalidEntry("missing" if not entry.exists() else "incomplete (a file is missing)")
        manifest = AdvManifest.load(manifest_path)
        if manifest.key != key:
            raise _InvalidEntry(f"manifest is for key {manifest.key}, not {key}")
        try:
            tensors, metadata = load_tensors(tensors_path)
        except StorageError as exc:
            raise _InvalidEntry(f"unreadable (corrupt or truncated): {exc}") from exc
        # Copy out of the file's memory map, then hash exactly the bytes we hand out.
        tensors = {name: t.clone() for name, t in tensors.items()}
        if metadata.get("key") != key:
            raise _InvalidEntry("tensors file belongs to another entry")
        shapes = {name: list(t.shape) for name, t in tensors.items()}
        if shapes != manifest.shapes:
            raise _InvalidEntry(f"stored shapes {shapes} != manifest {manifest.shapes}")
        hashes = {name: sha256_tensor(t) for name, t in tensors.items()}
        if hashes != manifest.tensor_sha256:
            bad = sorted(name for name in hashes if hashes[name] != manifest.tensor_sha256.get(name))
            raise _InvalidEntry(f"sha256 of stored {bad} does not match the manifest (corrupt data)")
        x_adv, y, target = tensors["x_adv"], tensors["y"], tensors.get("target")
        if x_adv.dtype != torch.float32 or x_adv.shape != request.x.shape or not torch.equal(y, request.y.cpu()):
            raise _InvalidEntry("stored tensors do not match the request's data")
        return AdvSet(request.attack, x_adv, y, target, manifest)

    def _discard(self, entry: Path) -> None:
        """Move a bad entry out of the way (one rename), then delete it."""
        trash = self.root / ".tmp" / f"discarded-{entry.name}-{uuid.uuid4().hex}"
        trash.parent.mkdir(parents=True, exist_ok=True)
        os.replace(entry, trash)
        shutil.rmtree(trash, ignore_errors=True)

    def _generate(
        self, request: AdvRequest, fields: dict[str, Any], key: str, entry: Path, progress: ProgressFn | None
    ) -> None:
        """Run the attack in chunks, measure it, and write the entry atomically."""
        logger.info(
            "advcache: generating %s on %s/%s (%d examples) -> %s",
            request.attack, request.dataset, request.split, len(request.x), entry,
        )
        started = time.perf_counter()
        x_adv, target, run_params = self._attack_in_chunks(request, progress)
        seconds = time.perf_counter() - started
        y = request.y.detach().cpu()
        scores = _measure(request.model, request.x, x_adv, y, target, self.batch_size)
        tensors = {"x_adv": x_adv, "y": y} | ({} if target is None else {"target": target})
        manifest = AdvManifest(
            format_version=FORMAT_VERSION, key=key, dataset=request.dataset, split=request.split,
            attack=request.attack, params=fields["params"], run_params=_jsonable(run_params),
            seed=int(request.seed), budget=float(request.budget), chunk_size=self.chunk_size,
            library_versions=fields["library_versions"], model_sha256=fields["model_sha256"],
            x_sha256=fields["x_sha256"], y_sha256=fields["y_sha256"],
            shapes={k: list(v.shape) for k, v in tensors.items()},
            tensor_sha256={k: sha256_tensor(v) for k, v in tensors.items()}, target_class=_single_class(target),
            **scores, seconds=seconds, created=datetime.now(timezone.utc).isoformat(timespec="seconds"),
        )
        self._write_entry(entry, key, tensors, manifest)
        logger.info(
            "advcache: stored %s (%.1fs, success rate %.3f, model accuracy %.3f) at %s",
            request.attack, seconds, scores["attack_success_rate"], scores["model_accuracy"], entry,
        )

    def _attack_in_chunks(
        self, request: AdvRequest, progress: ProgressFn | None
    ) -> tuple[torch.Tensor, torch.Tensor | None, dict[str, Any]]:
        """(x_adv (N, C, H, W) on CPU, targets (N,) or None, the first chunk's run parameters)."""
        name, n = request.attack, len(request.x)
        run_attack = self._run_attack()
        chunks, targets, run_params = [], [], None
        _report(progress, name, 0, n)
        for index, start in enumerate(range(0, n, self.chunk_size)):
            stop = min(start + self.chunk_size, n)
            result = run_attack(
                name, request.model, request.x[start:stop], request.y[start:stop],
                dataset=request.dataset, budget=request.budget,
                seed=_chunk_seed(request.seed, index), device=request.device,
            )
            chunks.append(_checked_x_adv(name, result.x_adv, request.x[start:stop].shape))
            targets.append(_target_tensor(name, result.target, stop - start))
            run_params = run_params if run_params is not None else dict(result.params)
            _report(progress, name, stop, n)
            logger.info("advcache: %s %d/%d examples", name, stop, n)
        if any(t is None for t in targets) and not all(t is None for t in targets):
            raise AdvCacheError(f"attack {name} returned a target for some chunks and none for others")
        target = None if targets[0] is None else torch.cat(targets)
        return torch.cat(chunks), target, run_params or {}

    def _write_entry(self, entry: Path, key: str, tensors: dict[str, torch.Tensor], manifest: AdvManifest) -> None:
        """Write tensors and manifest in a temporary folder, then rename it into place (atomic)."""
        from addd.storage import write_error

        tmp = self.root / ".tmp" / f"{key}-{uuid.uuid4().hex}"
        try:
            tmp.mkdir(parents=True)
            save_tensors(tmp / TENSORS_FILE, tensors, {"key": key, "attack": manifest.attack})
            manifest.save(tmp / MANIFEST_FILE)
            entry.parent.mkdir(parents=True, exist_ok=True)
            os.rename(tmp, entry)  # atomic; we hold the lock and the entry is absent
        except BaseException as exc:
            shutil.rmtree(tmp, ignore_errors=True)  # no half-written entry, full disk or not
            error = write_error(self.root / key, exc)  # names the cache folder
            if error is exc:
                raise
            raise error from None


def _measure(
    model: nn.Module,
    x: torch.Tensor,
    x_adv: torch.Tensor,
    y: torch.Tensor,
    target: torch.Tensor | None,
    batch_size: int,
) -> dict[str, float]:
    """The manifest's attack_success_rate, model_accuracy (Acc_u, or Acc_t) and clean_accuracy."""
    pred = predict(model, x_adv, batch_size=batch_size)
    clean_pred = predict(model, x, batch_size=batch_size)
    if target is None:
        model_accuracy = accuracy_untargeted(pred, y)
        success = float((pred != y).float().mean())
    else:
        model_accuracy = accuracy_targeted(pred, y, target)
        attackable = y != target
        success = float((pred == target)[attackable].float().mean()) if attackable.any() else float("nan")
    return {
        "attack_success_rate": success,
        "model_accuracy": model_accuracy,
        "clean_accuracy": accuracy_untargeted(clean_pred, y),
    }


def _single_class(target: torch.Tensor | None) -> int | None:
    """The one class every example is aimed at, or None (untargeted, or targets differ)."""
    if target is None or not bool((target == target[0]).all()):
        return None
    return int(target[0])

def _get_one(cache: AdvCache, request: AdvRequest, progress: ProgressFn | None = None) -> AdvSet:
    """Module-level so ``functools.partial`` of it pickles for process/Ray map functions."""
    return cache.get_or_create(request, progress=progress)


_VERSIONS_MEMO: dict[Callable[[], dict], dict[str, Any]] = {}


def _versions(library_versions: Callable[[], dict]) -> dict[str, Any]:
    """``library_versions()`` once per process (reading package metadata takes ~10 ms a call)."""
    if library_versions not in _VERSIONS_MEMO:
        _VERSIONS_MEMO[library_versions] = _jsonable(library_versions())
    return dict(_VERSIONS_MEMO[library_versions])


def _report(progress: ProgressFn | None, attack: str, done: int, total: int) -> None:
    if progress is not None:
        progress(attack, done, total)


def _chunk_seed(seed: int, index: int) -> int:
    """A distinct, reproducible seed per chunk (so chunks do not share random starts)."""
    return int(stable_hash([int(seed), index], length=8), 16) % (2**31)


def _checked_x_adv(name: str, x_adv: torch.Tensor, shape: torch.Size) -> torch.Tensor:
    if not isinstance(x_adv, torch.Tensor) or x_adv.dtype != torch.float32 or x_adv.shape != shape:
        raise AdvCacheError(
            f"attack {name} returned x_adv of {getattr(x_adv, 'dtype', type(x_adv))} "
            f"{tuple(getattr(x_adv, 'shape', ()))}; the cache stores float32 {tuple(shape)} exactly as "
            f"generated, so fix the attack's output rather than let the cache cast it"
        )
    return x_adv.detach().cpu()


def _target_tensor(name: str, target: Any, n: int) -> torch.Tensor | None:
    if target is None:
        return None
    target = torch.as_tensor(target, dtype=torch.int64).detach().cpu()
    if target.dim() == 0:
        return target.expand(n).clone()
    if target.shape != (n,):
        raise AdvCacheError(f"attack {name} returned targets of shape {tuple(target.shape)}, expected ({n},)")
    return target


def _json_sha256(obj: Any) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True).encode()).hexdigest()


def _jsonable(params: Mapping[str, Any]) -> dict[str, Any]:
    """Round-trip through JSON (non-JSON values become strings) so the manifest checksum is stable."""
    return json.loads(json.dumps(dict(params), sort_keys=True, default=str))


def split_requests(dataset: str, split: str, x: torch.Tensor, y: torch.Tensor, target: Any, attacks: Iterable[str], *,
                   budget: float, device: str, seed: int = 0) -> list[AdvRequest]:
    """The requests for one split's adversarial sets as a sweep makes them: each attack on the
    target model ``target`` (a ``TargetModel``: its ``model`` and ``weights_sha256``) at ``budget``
    with ``seed``. The sweep's driver, its study and ``ablations.evaluate`` all ask through this,
    so they hit the same cache entries."""
    return [AdvRequest(dataset, split, x, y, target.model, attack, model_sha256=target.weights_sha256, budget=budget,
                       seed=seed, device=device) for attack in attacks]
