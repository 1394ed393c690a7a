"""The adversarial-example cache: hits, corruption, concurrency, exact storage, keys, progress."""

from __future__ import annotations

import functools
import logging
import multiprocessing
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, replace
from pathlib import Path

import pytest
import torch
from torch import nn

from addd.advcache import CACHED, GENERATED, REBUILT, SUBDIR, WAITED, AdvCache, AdvCacheError, AdvRequest, AdvSet
from addd.metrics import accuracy_untargeted

# ---- stand-ins: a tiny model, a seeded attack that counts its runs ------------------------


@dataclass
class FakeResult:
    x_adv: torch.Tensor
    target: int | None
    params: dict


def fake_params(name: str, dataset: str, budget: float = 1.0) -> dict:
    return {"eps": 0.1, "nb_iter": max(1, round(10 * budget))}


def fake_versions() -> dict:
    return {"fake-attacks": "1.0"}


def noise_attack(name, model, x, y, *, dataset, budget, seed, device, count_file=None, delay=0.0):
    """Seeded sign noise; targeted names ending in 't' aim at class 3. Appends a line per call."""
    if count_file is not None:
        with open(count_file, "a") as handle:
            handle.write(f"{name}\n")
    time.sleep(delay)
    generator = torch.Generator().manual_seed(seed)
    noise = torch.randn(x.shape, generator=generator).sign() * 0.1
    return FakeResult((x + noise).clamp(0, 1), 3 if name.endswith("t") else None, {"eps": 0.1})


def runs(count_file: Path) -> int:
    return len(count_file.read_text().splitlines()) if count_file.exists() else 0


def tiny_model(seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Flatten(), nn.Linear(16, 4)).eval()


def tiny_data(n: int = 20, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    return torch.rand(n, 1, 4, 4, generator=generator), torch.randint(0, 4, (n,), generator=generator)


def make_cache(root: Path, count_file: Path | None = None, delay: float = 0.0, chunk_size: int = 8) -> AdvCache:
    attack = functools.partial(noise_attack, count_file=count_file, delay=delay)
    return AdvCache(
        root, run_attack=attack, attack_params=fake_params, library_versions=fake_versions, chunk_size=chunk_size
    )


def make_request(attack: str = "PGDu", **changes) -> AdvRequest:
    x, y = tiny_data()
    request = AdvRequest("digits", "test", x, y, tiny_model(), attack, model_sha256="m0", seed=0)
    return replace(request, **changes)


# ---- hits ---------------------------------------------------------------------------------


def test_second_request_is_a_hit_with_identical_tensors(tmp_path):
    count = tmp_path / "runs.txt"
    cache = make_cache(tmp_path / "cache", count)
    first = cache.get_or_create(make_request("PGDt"))
    assert runs(count) == 3  # 20 examples in chunks of 8
    second = make_cache(tmp_path / "cache", count).get_or_create(make_request("PGDt"))  # fresh instance
    assert runs(count) == 3
    assert torch.equal(first.x_adv, second.x_adv) and torch.equal(first.y, second.y)
    assert torch.equal(first.target, torch.full((20,), 3)) and torch.equal(second.target, first.target)
    assert second.manifest == first.manifest
    assert second.manifest.shapes == {"x_adv": [20, 1, 4, 4], "y": [20], "target": [20]}


def test_manifest_records_generation(tmp_path):
    adv = make_cache(tmp_path).get_or_create(make_request())
    m = adv.manifest
    model, (x, y) = tiny_model(), tiny_data()
    with torch.no_grad():
        expected_acc = (model(adv.x_adv).argmax(1) == y).float().mean().item()
        expected_clean = (model(x).argmax(1) == y).float().mean().item()
    assert m.model_accuracy == pytest.approx(expected_acc)
    assert m.attack_success_rate == pytest.approx(1 - expected_acc)
    assert m.clean_accuracy == pytest.approx(expected_clean)
    assert (m.attack, m.dataset, m.split, m.seed, m.chunk_size) == ("PGDu", "digits", "test", 0, 8)
    assert m.params == fake_params("PGDu", "digits") and m.library_versions == fake_versions()
    assert m.target_class is None and adv.target is None and m.seconds >= 0


def test_manifest_of_a_targeted_set_records_its_class_and_success_rate(tmp_path):
    adv = make_cache(tmp_path).get_or_create(make_request("PGDt"))
    m, y = adv.manifest, tiny_data()[1]
    assert m.target_class == 3 and torch.equal(adv.target, torch.full((20,), 3))
    with torch.no_grad():
        pred = tiny_model()(adv.x_adv).argmax(1)
    attackable = y != 3
    assert m.attack_success_rate == pytest.approx((pred == 3)[attackable].float().mean().item())


def test_under_a_cache_dir_is_the_one_layout(tmp_path):
    cache = AdvCache.under(tmp_path, chunk_size=4, lock_timeout=5)
    assert SUBDIR == "advcache" and cache.root == tmp_path / "advcache"
    assert (cache.chunk_size, cache.lock_timeout) == (4, 5)
    assert AdvCache.under(str(tmp_path)).root == cache.root
    adv = make_cache(AdvCache.under(tmp_path).root).get_or_create(make_request())
    assert list((tmp_path / "advcache" / "digits" / "PGDu").glob("*/manifest.json"))
    assert adv.manifest is not None


# ---- corruption ---------------------------------------------------------------------------


def _tensor_file(cache: AdvCache, request: AdvRequest) -> Path:
    return cache.entry_dir(request) / "tensors.safetensors"


def test_flipped_byte_is_detected_reported_and_rebuilt(tmp_path, caplog):
    count = tmp_path / "runs.txt"
    cache, request = make_cache(tmp_path / "c", count), make_request()
    original = cache.get_or_create(request)
    path = _tensor_file(cache, request)
    data = bytearray(path.read_bytes())
    data[len(data) - 100] ^= 0x01  # inside x_adv's float32 payload: a valid file, wrong numbers
    path.write_bytes(bytes(data))
    with caplog.at_level(logging.WARNING, logger="addd.advcache"):
        rebuilt = cache.get_or_create(request)
    assert runs(count) == 6
    assert cache.key(request) in caplog.text and "sha256" in caplog.text
    assert torch.equal(rebuilt.x_adv, original.x_adv)
    assert _tensor_file(cache, request).read_bytes() != bytes(data)


@pytest.mark.parametrize("damage", ["truncate", "delete_manifest", "edit_manifest", "swap_entry"])
def test_damaged_entry_is_detected_and_rebuilt(tmp_path, caplog, damage):
    count = tmp_path / "runs.txt"
    cache, request = make_cache(tmp_path / "c", count), make_request()
    original = cache.get_or_create(request)
    entry = cache.entry_dir(request)
    if damage == "truncate":
        path = entry / "tensors.safetensors"
        path.write_bytes(path.read_bytes()[:300])
    elif damage == "delete_manifest":
        (entry / "manifest.json").unlink()
    elif damage == "edit_manifest":  # a plausible value, still valid JSON
        manifest = entry / "manifest.json"
        manifest.write_text(manifest.read_text().replace('"seed": 0', '"seed": 1'))
    else:  # another entry's files under this key
        other = make_request(seed=1)
        cache.get_or_create(other)
        for name in ("tensors.safetensors", "manifest.json"):
            (entry / name).write_bytes((cache.entry_dir(other) / name).read_bytes())
    before = runs(count)
    with caplog.at_level(logging.WARNING, logger="addd.advcache"):
        rebuilt = cache.get_or_create(request)
    assert runs(count) == before + 3
    assert str(entry) in caplog.text
    assert torch.equal(rebuilt.x_adv, original.x_adv)



def test_origin_says_generated_cached_rebuilt_and_waited(tmp_path):
    """What the console tells a person: a set generated here, read back, rebuilt because its entry
    was damaged, or read after waiting for another generator of the same entry."""
    cache, request = make_cache(tmp_path / "c", delay=0.2), make_request()
    assert cache.get_or_create(request).origin == GENERATED
    assert cache.get_or_create(request).origin == CACHED
    path = _tensor_file(cache, request)
    path.write_bytes(path.read_bytes()[:300])
    assert cache.get_or_create(request).origin == REBUILT
    assert cache.get_or_create(request).origin == CACHED
    other = make_request("PGDt")
    with ThreadPoolExecutor(3) as pool:
        origins = sorted(pool.map(lambda _: cache.get_or_create(other).origin, range(3)))
    assert origins == sorted([GENERATED, WAITED, WAITED])

def test_failed_generation_leaves_nothing_and_can_be_retried(tmp_path):
    def broken(name, model, x, y, **kwargs):
        raise RuntimeError("attack crashed")

    root = tmp_path / "c"
    cache = AdvCache(root, run_attack=broken, attack_params=fake_params, library_versions=fake_versions)
    with pytest.raises(RuntimeError, match="crashed"):
        cache.get_or_create(make_request())
    assert sorted(p.name for p in root.iterdir()) == [".locks"]  # no entry, no leftovers
    assert make_cache(root).get_or_create(make_request()).x_adv.shape == (20, 1, 4, 4)


def test_attack_output_is_never_cast(tmp_path):
    def float64_attack(name, model, x, y, **kwargs):
        return FakeResult(x.double(), None, {})

    cache = AdvCache(tmp_path, run_attack=float64_attack, attack_params=fake_params, library_versions=fake_versions)
    with pytest.raises(AdvCacheError, match="float32"):
        cache.get_or_create(make_request())
    assert not cache.entry_dir(make_request()).exists()


# ---- concurrency --------------------------------------------------------------------------


def _process_worker(root: str, count_file: str, barrier, queue) -> None:
    barrier.wait()
    try:
        adv = make_cache(Path(root), Path(count_file), delay=0.3).get_or_create(make_request())
        queue.put(adv.x_adv.sum().item())
    except Exception as exc:  # reported to the test instead of leaving it waiting
        queue.put(repr(exc))


@pytest.mark.slow
def test_four_processes_generate_one_missing_entry_once(tmp_path):
    count = tmp_path / "runs.txt"
    context = multiprocessing.get_context("spawn")
    barrier, queue = context.Barrier(4), context.Queue()
    workers = [
        context.Process(target=_process_worker, args=(str(tmp_path / "c"), str(count), barrier, queue))
        for _ in range(4)
    ]
    for worker in workers:
        worker.start()
    sums = [queue.get(timeout=120) for _ in workers]
    for worker in workers:
        worker.join(timeout=60)
        assert worker.exitcode == 0
    assert all(isinstance(s, float) for s in sums), sums
    assert runs(count) == 3  # one generation (3 chunks), the other three waited and read
    assert len(set(sums)) == 1


def test_threads_generate_one_missing_entry_once(tmp_path):
    count = tmp_path / "runs.txt"
    cache = make_cache(tmp_path / "c", count, delay=0.1)
    with ThreadPoolExecutor(4) as pool:
        sets = list(pool.map(lambda _: cache.get_or_create(make_request()), range(4)))
    assert runs(count) == 3
    assert all(torch.equal(s.x_adv, sets[0].x_adv) for s in sets)


# ---- exact storage ------------------------------------------------------------------------


def boundary_model() -> nn.Module:
    """Linear 2-class model: class 1 iff mean pixel > 0.5."""
    model = nn.Sequential(nn.Flatten(), nn.Linear(16, 2))
    with torch.no_grad():
        model[1].weight.copy_(torch.stack([-torch.ones(16), torch.ones(16)]) / 16)
        model[1].bias.copy_(torch.tensor([0.5, -0.5]))
    return model.eval()


def minimal_attack(name, model, x, y, **kwargs):
    """C&W-like: move each image to just across the boundary (a 1e-5 margin, far below 1/255)."""
    mean = x.mean(dim=(1, 2, 3), keepdim=True)
    side = torch.where(y.view(-1, 1, 1, 1) == 1, -1.0, 1.0)
    return FakeResult((x - mean + 0.5 + side * 1e-5).clamp(0, 1), None, {})


def test_storing_preserves_a_minimal_perturbation_attack(tmp_path):
    generator = torch.Generator().manual_seed(0)
    x = 0.5 + 0.3 * (torch.rand(40, 1, 4, 4, generator=generator) - 0.5)
    model = boundary_model()
    with torch.no_grad():
        y = model(x).argmax(1)  # all correct before the attack
    request = AdvRequest("digits", "test", x, y, model, "CWu", model_sha256="b")
    cache = AdvCache(tmp_path, run_attack=minimal_attack, attack_params=fake_params, library_versions=fake_versions)
    generated = minimal_attack("CWu", model, x, y).x_adv
    with torch.no_grad():
        accuracy_after_generation = accuracy_untargeted(model(generated).argmax(1), y)
        quantized = accuracy_untargeted(model((generated * 255).round() / 255).argmax(1), y)
    assert accuracy_after_generation == 0.0 and quantized >= 0.25  # uint8 storage would undo the attack
    stored = AdvCache(tmp_path, run_attack=None, attack_params=fake_params, library_versions=fake_versions)
    cache.get_or_create(request)
    adv = stored.get_or_create(request)  # read back through a cache that cannot attack
    with torch.no_grad():
        assert accuracy_untargeted(model(adv.x_adv).argmax(1), y) == accuracy_after_generation
    assert adv.manifest.model_accuracy == accuracy_after_generation
    assert torch.equal(adv.x_adv, generated)


# ---- keys ---------------------------------------------------------------------------------


def test_key_changes_with_everything_the_entry_depends_on(tmp_path):
    cache = make_cache(tmp_path)
    base = make_request()
    x_changed = base.x.clone()
    x_changed[5, 0, 1, 2] += 1e-6  # same size, one value
    y_changed = base.y.clone()
    y_changed[0] = (y_changed[0] + 1) % 4
    variants = {
        "seed": make_request(seed=1),
        "budget->params": make_request(budget=2.0),
        "data": make_request(x=x_changed),
        "labels": make_request(y=y_changed),
        "model": make_request(model_sha256="m1"),
        "attack": make_request("DDNu"),
        "split": make_request(split="val"),
        "dataset": make_request(dataset="mnist"),
    }
    keys = {name: cache.key(r) for name, r in variants.items()}
    assert cache.key(make_request()) == cache.key(base)
    assert len(set(keys.values()) | {cache.key(base)}) == len(keys) + 1, keys
    assert cache.key(make_request(budget=1.01)) == cache.key(base)  # same params after budget: same entry
    other_versions = AdvCache(tmp_path, attack_params=fake_params, library_versions=lambda: {"fake-attacks": "2.0"})
    assert other_versions.key(base) != cache.key(base)
    assert make_cache(tmp_path, chunk_size=4).key(base) != cache.key(base)
    assert cache.key(make_request(model_sha256=None)) != cache.key(make_request(model_sha256=None, model=tiny_model(1)))


def test_bad_requests_are_refused():
    x, y = tiny_data()
    with pytest.raises(AdvCacheError, match="float32"):
        AdvRequest("digits", "test", x.double(), y, tiny_model(), "PGDu")
    with pytest.raises(AdvCacheError, match="int64"):
        AdvRequest("digits", "test", x, y[:5], tiny_model(), "PGDu")


# ---- several attacks, progress ------------------------------------------------------------


def test_get_many_maps_and_reports_progress(tmp_path):
    count = tmp_path / "runs.txt"
    cache = make_cache(tmp_path / "c", count)
    events, maps = [], []

    def thread_map(fn, items):
        maps.append(len(items))
        with ThreadPoolExecutor(2) as pool:
            return list(pool.map(fn, items))

    requests = [make_request(a) for a in ("PGDu", "PGDt", "DDNu")]
    sets = cache.get_many(requests, map_fn=thread_map, progress=lambda *e: events.append(e))
    assert maps == [3] and sorted(sets) == ["DDNu", "PGDt", "PGDu"]
    assert all(isinstance(s, AdvSet) and s.attack == a for a, s in sets.items())
    assert sets["PGDt"].targeted and not sets["PGDu"].targeted
    for attack in sets:
        done = [d for a, d, total in events if a == attack]
        assert done == [0, 8, 16, 20]  # visible per chunk, monotone, ends at the total
    assert runs(count) == 9
    again = cache.get_many(requests)  # serial, all hits
    assert runs(count) == 9 and torch.equal(again["DDNu"].x_adv, sets["DDNu"].x_adv)
    with pytest.raises(AdvCacheError, match="PGDu"):
        cache.get_many([make_request(), make_request(seed=1)])


@pytest.mark.slow
def test_storing_preserves_the_real_cw_attack(tmp_path):
    from addd.attacks import attack_params, run_attack

    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(1, 4, 3, stride=2), nn.ReLU(), nn.Flatten(), nn.Linear(4 * 15 * 15, 10)).eval()
    with torch.no_grad():  # sharp logits, so C&W's first binary-search steps already succeed
        model[3].weight.mul_(100)
        model[3].bias.mul_(100)
    x = torch.rand(24, 1, 32, 32, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        y = model(x).argmax(1)  # every example starts correctly classified
    generated = []

    def recording_attack(*args, **kwargs):
        result = run_attack(*args, **kwargs)
        generated.append(result.x_adv.clone())
        return result

    request = AdvRequest("digits", "test", x, y, model, "CWu", budget=0.6)
    adv = AdvCache(tmp_path, run_attack=recording_attack, chunk_size=12).get_or_create(request)
    x_generated = torch.cat(generated)
    with torch.no_grad():
        accuracy_after_generation = accuracy_untargeted(model(x_generated).argmax(1), y)
        quantized = accuracy_untargeted(model((x_generated * 255).round() / 255).argmax(1), y)
        stored = accuracy_untargeted(model(adv.x_adv).argmax(1), y)
    assert accuracy_after_generation < 0.5  # the attack worked ...
    assert quantized > accuracy_after_generation  # ... with perturbations 8-bit rounding would undo
    assert stored == accuracy_after_generation == adv.manifest.model_accuracy
    assert torch.equal(adv.x_adv, x_generated)
    assert adv.manifest.run_params["library"] == "advertorch"
    assert adv.manifest.params == attack_params("CWu", "digits", budget=0.6)


def log_progress(attack: str, done: int, total: int) -> None:  # module level: picklable
    logging.getLogger("test_advcache").info("%s %d/%d", attack, done, total)


@pytest.mark.slow
def test_get_many_through_a_process_pool_map(tmp_path):
    """What a Ray map does: the cache, requests and progress are pickled into other processes."""
    from concurrent.futures import ProcessPoolExecutor

    count = tmp_path / "runs.txt"
    cache = make_cache(tmp_path / "c", count)
    context = multiprocessing.get_context("spawn")

    def process_map(fn, items):
        with ProcessPoolExecutor(2, mp_context=context) as pool:
            return list(pool.map(fn, items))

    requests = [make_request(a) for a in ("PGDu", "DDNt")]
    remote = cache.get_many(requests, map_fn=process_map, progress=log_progress)
    assert runs(count) == 6
    local = cache.get_many(requests)  # hits, written by the other processes
    assert runs(count) == 6
    assert all(torch.equal(remote[a].x_adv, local[a].x_adv) for a in ("PGDu", "DDNt"))
    assert torch.equal(remote["DDNt"].target, torch.full((20,), 3))


def test_has_says_whether_an_entry_is_stored_without_generating_it(tmp_path):
    count = tmp_path / "runs.txt"
    cache = make_cache(tmp_path / "cache", count)
    request = make_request("PGDu")
    assert not cache.has(request) and runs(count) == 0  # asking generates nothing
    cache.get_or_create(request)
    assert cache.has(request) and not cache.has(make_request("PGDu", budget=0.5))
    (cache.entry_dir(request) / "manifest.json").unlink()  # an incomplete entry is not there
    assert not cache.has(request)


def test_split_requests_ask_for_the_sweeps_sets_on_the_target_model():
    from types import SimpleNamespace

    from addd.advcache import split_requests

    x, y = tiny_data()
    target = SimpleNamespace(model=tiny_model(), weights_sha256="m0")
    requests = split_requests("digits", "val", x, y, target, ["PGDu", "CWu"], budget=0.5, device="cpu")
    assert [r.attack for r in requests] == ["PGDu", "CWu"]
    assert all(r.model is target.model and r.model_sha256 == "m0" and r.budget == 0.5 and r.seed == 0
               and r.split == "val" and r.x is x for r in requests)
