import pytest
import torch


@pytest.fixture
def one_thread():
    """Tiny models: a second torch thread only adds contention on a shared 2-core machine."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


# The suite runs on two xdist workers, whole files per worker (`--dist loadfile`, pyproject), so a
# module's fixtures (a smoke sweep, a shared cache) are built once. The slowest files go out first:
# the scheduler hands files out in collection order, and one of them left for last would keep one
# worker busy alone at the end (seconds measured on a 2-core AMD EPYC, one worker).
_SLOWEST_FIRST = (
    "test_faults.py",  # ~520 s
    "test_cluster.py",  # ~300 s
    "test_sweep_run.py",  # ~290 s
    "test_study.py",  # ~110 s
    "test_sweep_console.py",  # ~95 s
    "test_pareto_sweep.py",  # ~75 s
)


def pytest_collection_modifyitems(session, config, items):
    def rank(item) -> int:
        name = item.path.name
        return _SLOWEST_FIRST.index(name) if name in _SLOWEST_FIRST else len(_SLOWEST_FIRST)

    items.sort(key=rank)  # stable: each file keeps its own order
