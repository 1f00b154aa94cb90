"""The exact-mode switch: third-party code calling torch.mm / torch.bmm / addmm /
log_softmax / mean gets batch-invariant kernels; the switch is idempotent, reports what
it replaced, refuses conflicting NCCL settings, and the context manager restores."""
import os

import pytest
import torch

import exact_kernels as ek
from exact_kernels.mode import NCCL_ENV


@pytest.fixture
def clean_env(monkeypatch):
    for k in NCCL_ENV:
        monkeypatch.delenv(k, raising=False)
    monkeypatch.delenv("CUBLAS_WORKSPACE_CONFIG", raising=False)
    yield
    ek.disable_exact_mode()


def _rand(gen, *shape, dtype, device):
    return torch.randn(*shape, generator=gen).to(dtype=dtype, device=device)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_torch_mm_row_invariant_in_exact_mode(device, gen, dtype, clean_env):
    a = _rand(gen, 64, 256, dtype=dtype, device=device)
    b = _rand(gen, 256, 96, dtype=dtype, device=device)
    with ek.exact_mode():
        full = torch.mm(a, b)
        for m in (1, 2, 3, 4, 7, 16, 33, 64):
            assert torch.equal(torch.mm(a[:m], b), full[:m]), f"M={m}"
        assert torch.equal((a[:1] @ b), full[:1])
        bias = _rand(gen, 96, dtype=dtype, device=device)
        assert torch.equal(torch.addmm(bias, a[5:6], b), torch.addmm(bias, a, b)[5:6])
        ab = _rand(gen, 5, 9, 64, dtype=dtype, device=device)
        bb = _rand(gen, 5, 64, 40, dtype=dtype, device=device)
        assert torch.equal(torch.bmm(ab[2:3], bb[2:3]), torch.bmm(ab, bb)[2:3])


def test_linear_backward_bitwise_deterministic_in_exact_mode(device, gen, clean_env):
    layer = torch.nn.Linear(128, 64).to(device)
    x = _rand(gen, 40, 128, dtype=torch.float32, device=device)
    grads = []
    with ek.exact_mode():
        for _ in range(2):
            layer.zero_grad()
            layer(x).square().mean().backward()
            grads.append([p.grad.clone() for p in layer.parameters()])
    assert all(torch.equal(g0, g1) for g0, g1 in zip(*grads))


def test_log_softmax_and_mean_row_invariant_in_exact_mode(device, gen, clean_env):
    x = _rand(gen, 48, 1000, dtype=torch.float32, device=device)
    with ek.exact_mode():
        full = torch.log_softmax(x, dim=-1)
        assert torch.equal(torch.log_softmax(x[7:8], dim=-1), full[7:8])
        assert torch.equal(full, ek.log_softmax(x, 1.0))
        m = x.mean(dim=-1)
        assert torch.equal(x[:1].mean(dim=-1), m[:1])
        assert torch.equal(m, ek.row_mean(x))
        # other dims and keepdim go through the same row kernel
        x3 = x.reshape(6, 8, 1000)
        assert torch.equal(x3.mean(dim=(0, 2), keepdim=True).flatten(),
                           ek.row_mean(x3.permute(1, 0, 2).reshape(8, -1)))


def test_exact_mode_close_to_stock(device, gen, clean_env):
    """Closeness (not bitwise): the routed ops still compute the same function."""
    a = _rand(gen, 17, 300, dtype=torch.float32, device=device)
    b = _rand(gen, 300, 50, dtype=torch.float32, device=device)
    stock_mm, stock_ls, stock_mean = a @ b, torch.log_softmax(a, -1), a.mean(0)
    with ek.exact_mode():
        torch.testing.assert_close(a @ b, stock_mm, rtol=1e-5, atol=1e-4)
        torch.testing.assert_close(torch.log_softmax(a, -1), stock_ls, rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(a.mean(0), stock_mean, rtol=1e-5, atol=1e-6)


def test_switch_is_idempotent_and_reports(clean_env):
    r1 = ek.enable_exact_mode(seed=3)
    r2 = ek.enable_exact_mode()
    assert r1 is r2 and ek.is_exact_mode()
    assert "aten::mm (CPU, CUDA)" in r1.replaced_ops and "aten::mean.dim (CPU, CUDA)" in r1.replaced_ops
    assert os.environ["NCCL_ALGO"] == "Tree" and os.environ["NCCL_MAX_NCHANNELS"] == "1"
    assert torch.backends.cuda.matmul.allow_tf32 is False
    assert "exact mode on" in str(r1)


def test_context_manager_restores(clean_env):
    torch.backends.cuda.matmul.allow_bf16_reduced_precision_reduction = True
    with ek.exact_mode():
        assert torch.backends.cuda.matmul.allow_bf16_reduced_precision_reduction is False
    assert not ek.is_exact_mode()
    assert torch.backends.cuda.matmul.allow_bf16_reduced_precision_reduction is True
    assert "NCCL_ALGO" not in os.environ


def test_conflicting_nccl_env_is_an_error(clean_env, monkeypatch):
    monkeypatch.setenv("NCCL_ALGO", "Ring")
    with pytest.raises(RuntimeError, match=r"NCCL_ALGO=Ring \(needs NCCL_ALGO=Tree\)"):
        ek.enable_exact_mode()
    assert not ek.is_exact_mode()
