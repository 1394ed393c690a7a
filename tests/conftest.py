import pytest
import torch


@pytest.fixture
def one_thread():
    """Tiny models: a second torch thread only adds contention on a shared 2-core machine."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
