"""Test markers: `gpu` tests skip cleanly without CUDA; `slow` marks tests that take
more than a few seconds on a 2-core CPU (they still run in CI)."""
import pytest
import torch


def pytest_collection_modifyitems(config, items):
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs CUDA (gpu marker); this machine has no GPU")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)


@pytest.fixture(scope="module")
def local_ray():
    """A local Ray for one test module, on loopback, no dashboard (as the loop starts it)."""
    ray = pytest.importorskip("ray")
    if not ray.is_initialized():
        ray.init(address="local", include_dashboard=False, num_cpus=2, _node_ip_address="127.0.0.1",
                 log_to_driver=False)
    yield ray
    ray.shutdown()


@pytest.fixture(autouse=True)
def _exact_mode_does_not_leak():
    """Exact mode is process-wide (aten overrides): a test that leaves it on changes the
    stock reference path of every later test, so leaving it on is a failure here."""
    from exact_kernels import disable_exact_mode, is_exact_mode

    was_on = is_exact_mode()
    yield
    if is_exact_mode() and not was_on:
        disable_exact_mode()
        pytest.fail("the test left exact mode on (use exact_mode() or disable_exact_mode())")


@pytest.fixture(scope="session")
def gsm8k_dir():
    """../shared/data/gsm8k beside the repository (where CI and the recipes read it);
    tests that need it skip, saying so, where it is absent."""
    import pathlib

    path = pathlib.Path(__file__).resolve().parents[1].parent / "shared" / "data" / "gsm8k"
    if not ((path / "train.jsonl").is_file() and (path / "test.jsonl").is_file()):
        pytest.skip(reason=f"GSM8K (train.jsonl, test.jsonl) not found at {path}: the shared data "
                           "directory is expected next to the repository")
    return path
