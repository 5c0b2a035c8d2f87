"""Training unit tests run on one CPU thread; the slow end-to-end runs keep torch's default."""

import pytest
import torch


@pytest.fixture(autouse=True)
def one_thread(request):
    # Tiny tensors: a second OpenMP thread only adds contention on a shared 2-core machine.
    if request.node.get_closest_marker("slow"):
        yield
        return
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
