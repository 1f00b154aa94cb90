"""log_softmax / token_logprobs / row_mean: closeness to the references (forward and
gradient) per dtype and temperature, including the Qwen3 vocab (V = 151936), and
bitwise invariance (row alone vs in any batch, CPU thread count, backward run to run).
Invariance tests use torch.equal only and are never retried."""
import pytest
import torch

from exact_kernels.logprobs import log_softmax, row_mean, token_logprobs
from exact_kernels.reference import log_softmax_ref, row_mean_ref, token_logprobs_ref

DTYPES = [torch.float32, torch.bfloat16, torch.float16]
SHAPES = [(5, 123), (3, 151936), (2, 1)]
QWEN3_V = 151936


def _logits(shape, dt, device, gen, scale=4.0):
    return (scale * torch.randn(shape, generator=gen)).to(dt).to(device)


@pytest.mark.parametrize("temp", [1.0, 0.7])
@pytest.mark.parametrize("dt", DTYPES)
@pytest.mark.parametrize("shape", SHAPES)
def test_forward_close(device, gen, shape, dt, temp):
    # Same fp32 inputs as the reference; only the order of the sum of exponentials and
    # the exp/log implementations differ: errors of a few fp32 ulps of log(V).
    logits = _logits(shape, dt, device, gen)
    ids = torch.randint(0, shape[1], (shape[0],), generator=gen).to(device)
    lp = log_softmax(logits, temp)
    assert lp.dtype == torch.float32 and lp.shape == shape
    torch.testing.assert_close(lp, log_softmax_ref(logits, temp), rtol=1e-5, atol=2e-5)
    tl = token_logprobs(logits, ids, temp)
    assert tl.dtype == torch.float32 and tl.shape == (shape[0],)
    torch.testing.assert_close(tl, token_logprobs_ref(logits, ids, temp), rtol=1e-5, atol=2e-5)
    assert torch.equal(tl, lp.gather(1, ids[:, None]).squeeze(1))  # one definition


@pytest.mark.parametrize("temp", [1.0, 0.7])
@pytest.mark.parametrize("dt", DTYPES)
@pytest.mark.parametrize("shape", [(5, 123), (2, 151936)])
def test_backward_close(device, gen, shape, dt, temp):
    logits = _logits(shape, dt, device, gen)
    ids = torch.randint(0, shape[1], (shape[0],), generator=gen).to(device)
    rtol, atol = (1e-5, 1e-6) if dt == torch.float32 else (2e-2, 1e-5)
    g = torch.randn(shape[0], generator=gen).to(device)
    a = logits.clone().requires_grad_()
    token_logprobs(a, ids, temp).backward(g)
    b = logits.float().clone().requires_grad_()
    token_logprobs_ref(b, ids, temp).backward(g)
    assert a.grad.dtype == dt
    torch.testing.assert_close(a.grad.float(), b.grad, rtol=rtol, atol=atol)
    G = torch.randn(shape, generator=gen).to(device)
    a = logits.clone().requires_grad_()
    log_softmax(a, temp).backward(G)
    # dx = G - softmax * sum(G): over a 151936 vocabulary sum(G) is ~ +-400 and any fp32
    # evaluation of it (the fp32 reference's too: 7e-4 off here) carries ~1e-6 * |sum(G)|
    # of rounding, so compare with float64 and scale the tolerance by |sum(G)|.
    b = logits.double().clone().requires_grad_()
    torch.log_softmax(b / temp, dim=-1).backward(G.double())
    atol_sum = 2e-6 * float(G.double().sum(-1).abs().max())
    torch.testing.assert_close(a.grad.double(), b.grad, rtol=rtol, atol=10 * atol + 1e-5 + atol_sum)


@pytest.mark.parametrize("dt", DTYPES)
@pytest.mark.parametrize("shape", [(5, 123), (3, 4096), (4, 1)])
def test_row_mean_close(device, gen, dt, shape):
    x = torch.randn(shape, generator=gen).to(dt).to(device)
    y = row_mean(x)
    assert y.dtype == torch.float32 and y.shape == (shape[0],)
    torch.testing.assert_close(y, row_mean_ref(x), rtol=1e-5, atol=1e-6)
    x1 = x.clone().requires_grad_()
    row_mean(x1).backward(torch.ones(shape[0], device=device))
    torch.testing.assert_close(x1.grad.float(), torch.full(shape, 1 / shape[1], device=device), rtol=1e-2, atol=0)


def _check_invariant(fn, x, alone, gen, sizes):
    R = x.shape[0]
    for n in sizes:
        idx = torch.randperm(R, generator=gen)[:n]
        out = fn(x[idx.to(x.device)], idx)
        for k, i in enumerate(idx.tolist()):
            assert torch.equal(out[k], alone[i]), (n, k, i)


@pytest.mark.parametrize("dt", [torch.bfloat16, torch.float32])
def test_token_logprobs_invariant_to_batch(device, gen, dt):
    R = 80
    logits = _logits((R, QWEN3_V), dt, device, gen)
    ids = torch.randint(0, QWEN3_V, (R,), generator=gen).to(device)
    for temp in (1.0, 0.6):
        alone = [token_logprobs(logits[i:i + 1].clone(), ids[i:i + 1].clone(), temp)[0] for i in range(R)]
        sizes = list(range(1, 65)) + [80] if temp == 1.0 else [1, 5, 64, 80]
        _check_invariant(lambda x, idx: token_logprobs(x, ids[idx.to(device)], temp), logits, alone, gen, sizes)


def test_log_softmax_invariant_to_batch(device, gen):
    R, V = 300, 32003
    logits = _logits((R, V), torch.bfloat16, device, gen)
    alone = [log_softmax(logits[i:i + 1].clone())[0] for i in range(R)]
    _check_invariant(lambda x, idx: log_softmax(x), logits, alone, gen, list(range(1, 65)) + [97, 255, 300])


def test_row_mean_invariant_to_batch(device, gen):
    R, N = 300, 4099
    x = torch.randn((R, N), generator=gen).to(torch.bfloat16).to(device)
    alone = [row_mean(x[i:i + 1].clone())[0] for i in range(R)]
    _check_invariant(lambda x, idx: row_mean(x), x, alone, gen, list(range(1, 65)) + [97, 255, 300])


def test_rows_invariant_every_position_and_view(device, gen):
    B, V = 64, 1001  # V * 2 bytes is not a multiple of 16: views of single rows are misaligned
    logits = _logits((B, V), torch.bfloat16, device, gen)
    ids = torch.randint(0, V, (B,), generator=gen).to(device)
    target, tid = logits[0].clone(), ids[:1].clone()
    ref = token_logprobs(target[None], tid)[0]
    for p in range(B):
        batch, bids = logits.clone(), ids.clone()
        batch[p], bids[p] = target, tid[0]
        assert torch.equal(token_logprobs(batch, bids)[p], ref), p
        assert torch.equal(token_logprobs(batch[p:p + 1], bids[p:p + 1])[0], ref), p


def test_invariant_to_cpu_threads(gen):
    logits = _logits((9, QWEN3_V), torch.bfloat16, "cpu", gen)
    ids = torch.randint(0, QWEN3_V, (9,), generator=gen)
    n = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        one = (token_logprobs(logits, ids), log_softmax(logits), row_mean(logits))
    finally:
        torch.set_num_threads(n)
    two = (token_logprobs(logits, ids), log_softmax(logits), row_mean(logits))
    assert all(torch.equal(a, b) for a, b in zip(one, two))


def test_backward_invariant_and_deterministic(device, gen):
    R, V = 16, QWEN3_V
    logits = _logits((R, V), torch.bfloat16, device, gen)
    ids = torch.randint(0, V, (R,), generator=gen).to(device)
    g = torch.randn(R, generator=gen).to(device)
    G = torch.randn((R, V), generator=gen).to(device)

    def grads(n):
        a = logits[:n].clone().requires_grad_()
        token_logprobs(a, ids[:n], 0.8).backward(g[:n])
        b = logits[:n].clone().requires_grad_()
        log_softmax(b, 0.8).backward(G[:n])
        return a.grad, b.grad

    ga, gb = grads(R)
    ga2, gb2 = grads(R)
    assert torch.equal(ga, ga2) and torch.equal(gb, gb2)
    for n in (1, 3, 8):
        a, b = grads(n)
        assert torch.equal(a, ga[:n]) and torch.equal(b, gb[:n]), n


@pytest.mark.parametrize("case", ["dtype", "shape", "temp0", "temp_neg", "temp_nan", "ids_dtype", "ids_len"])
def test_bad_input(device, case):
    logits = torch.randn(4, 10, device=device)
    ids = torch.arange(4, device=device)
    args = {"dtype": (logits.long(), ids), "shape": (logits[0], ids), "temp0": (logits, ids, 0.0),
            "temp_neg": (logits, ids, -1.0), "temp_nan": (logits, ids, float("nan")),
            "ids_dtype": (logits, ids.float()), "ids_len": (logits, ids[:3])}[case]
    with pytest.raises(ValueError, match="token_logprobs"):
        token_logprobs(*args)
    if case in ("dtype", "shape", "temp0"):
        with pytest.raises(ValueError, match="log_softmax"):
            log_softmax(*(args[:1] + args[2:]))
    with pytest.raises(ValueError, match="row_mean"):
        row_mean(torch.ones(3, 0, device=device))


def test_token_ids_out_of_range_cpu():
    logits = torch.randn(3, 10)
    for bad in ([0, 10, 1], [-1, 0, 1]):
        with pytest.raises(ValueError, match=r"token_logprobs.*\[0, 10\)"):
            token_logprobs(logits, torch.tensor(bad))


@pytest.mark.gpu
def test_token_ids_out_of_range_cuda_give_nan():
    logits = torch.randn(3, 10, device="cuda")
    out = token_logprobs(logits, torch.tensor([0, 10, 1], device="cuda"))
    assert out[1].isnan() and not out[0].isnan() and not out[2].isnan()
