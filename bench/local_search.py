"""The local search attack (LSu), advertorch's class against ours (addd/_advertorch.py), in one run.

Both run the digits suite's LS parameters (C.1's p, r, t with the digits table's 3 rounds) on
the same validation images of ``digits_ablation`` against its target model, seeded alike, one
torch thread, alternating (original, ours) ``--repeats`` times. It prints each one's seconds,
whether the adversarial images are identical bit for bit (they must be: the same algorithm with
its loops as tensor operations), and ends with ``ratio: X`` = original seconds / ours (median
over repeats; > 1: ours is faster). LS was the costliest set of the quick start's prepare.

    python bench/local_search.py             # 64 validation images, 2 repeats
    python bench/local_search.py --n 200     # the whole digits_ablation validation split
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

LS_KEYS = ("p", "r", "t", "d", "k", "round_ub", "seed_ratio", "max_nb_seeds")


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--n", type=int, default=64, help="validation images attacked (default 64)")
    p.add_argument("--repeats", type=int, default=2, help="runs of each, alternating (default 2)")
    p.add_argument("--cache-dir", type=Path, help="where the target model is cached (default: a temp folder)")
    args = p.parse_args()
    import torch

    from addd import _advertorch
    from addd.attacks import attack_params
    from addd.data import load_dataset
    from addd.inference import frozen
    from addd.target_models import get_target_model
    from sweeps.spaces import get_space

    torch.set_num_threads(1)
    space = get_space("digits_ablation")
    sizes = space.split_sizes()
    data = load_dataset(space.dataset, "./data", n_train=sizes["n_train"], n_val=sizes["n_val"],
                        n_test=sizes["n_test"], seed=sizes["split_seed"])
    with tempfile.TemporaryDirectory() as tmp:
        target = get_target_model(data, arch=space.target_arch, cache_dir=args.cache_dir or Path(tmp))
    model = target.model.eval()
    x, y = data.val.x[: args.n], data.val.y[: args.n]
    params = attack_params("LSu", space.dataset, budget=space.attack_budget)
    kwargs = {key: params[key] for key in LS_KEYS}
    classes = {"advertorch": _advertorch._import().attacks.LocalSearchAttack, "ours": _advertorch._local_search_class()}
    seconds = {name: [] for name in classes}
    images = {}
    with frozen(model):
        for _ in range(args.repeats):
            for name, cls in classes.items():
                torch.manual_seed(0)
                start = time.perf_counter()
                images[name] = cls(model, **kwargs).perturb(x.clone(), y.clone())
                seconds[name].append(time.perf_counter() - start)
    identical = torch.equal(images["advertorch"], images["ours"])
    moved = int((images["ours"] != x).flatten(1).any(1).sum())
    print(f"LSu on {len(x)} digits_ablation val images ({moved} moved), params {kwargs}")
    for name, values in seconds.items():
        print(f"{name}: {', '.join(f'{v:.2f}s' for v in values)}")
    print(f"identical images: {identical}")
    if not identical:
        print("error: the two classes disagree; do not use ours", file=sys.stderr)
        return 1
    print(f"ratio: {statistics.median(seconds['advertorch']) / statistics.median(seconds['ours']):.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
