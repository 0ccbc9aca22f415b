"""The five llmint8 ops against float64 / exact integer references, opcheck, and bad input."""
import itertools

import pytest
import torch

import llmint8
from llmint8 import ops

M_VALUES = [0, 1, 17, 300]
K_VALUES = [1, 3, 8, 172, 4096]
N_VALUES = [1, 5, 64, 4096]
THRESHOLD = 6.0


def random_activations(shape, dtype, device, outlier_cols=()):
    """Gaussian activations with the given columns scaled ×20, as in real LLM.int8 inputs."""
    x = torch.randn(shape, dtype=torch.float32, device=device)
    rows = x.view(-1, shape[-1]) if shape[-1] else x
    for col in outlier_cols:
        x[..., col] *= 20.0
        if rows.shape[0]:
            rows[0, col] = 30.0  # every planted column crosses the threshold, whatever the draw
    return x.to(dtype)


def reference_outlier_cols(x, threshold):
    if threshold == 0:
        return torch.empty(0, dtype=torch.long)
    hits = (x.double().abs() >= threshold).reshape(-1, x.shape[-1]).any(dim=0)
    return hits.nonzero().flatten().cpu()


def reference_quantize(x, excluded_cols=()):
    """float64 absmax quantization: (exact q before rounding, absmax), excluded columns zeroed."""
    x64 = x.double().cpu().clone()
    x64[..., list(excluded_cols)] = 0.0
    absmax = x64.abs().amax(dim=-1) if x64.shape[-1] else torch.zeros(x64.shape[:-1])
    safe = torch.where(absmax > 0, absmax, torch.ones_like(absmax))
    return x64 * 127.0 / safe[..., None], absmax


def assert_quantized_matches(q, absmax, x, excluded_cols=()):
    exact, ref_absmax = reference_quantize(x, excluded_cols)
    assert q.dtype == torch.int8 and absmax.dtype == torch.float32
    assert q.shape == x.shape and absmax.shape == x.shape[:-1]
    torch.testing.assert_close(absmax.double().cpu(), ref_absmax, rtol=0, atol=0)
    # Round-half-even of the fp32 product may differ from the float64 value by one at exact
    # ties only; everywhere else it is the nearest integer.
    distance = (q.double().cpu() - exact).abs()
    assert distance.max().item() <= 0.5 + 1e-4 if q.numel() else True
    assert q.abs().max().item() <= 127 if q.numel() else True


# ---- outlier_split -------------------------------------------------------------------------


@pytest.mark.parametrize("m,k", list(itertools.product(M_VALUES, K_VALUES)))
def test_outlier_split_finds_exactly_the_threshold_crossing_columns(m, k, dtype, device):
    planted = [c for c in (0, k // 2, k - 1) if c < k]
    x = random_activations((m, k), dtype, device, planted)
    capacity = k  # room for every column: the split must be exact
    cols, count, x_outliers = ops.outlier_split(x, THRESHOLD, capacity)
    expected = reference_outlier_cols(x, THRESHOLD)
    assert count.item() == len(expected)
    assert cols[: len(expected)].long().cpu().tolist() == expected.tolist()
    assert (cols[len(expected):] == -1).all()
    assert x_outliers.shape == (m, capacity) and x_outliers.dtype == dtype
    torch.testing.assert_close(x_outliers[:, : len(expected)], x[:, expected.to(device)], rtol=0, atol=0)
    assert (x_outliers[:, len(expected):] == 0).all()


def test_outlier_split_3d_input_and_threshold_zero(dtype, device):
    x = random_activations((2, 5, 40), dtype, device, outlier_cols=(3, 17))
    cols, count, x_outliers = ops.outlier_split(x, THRESHOLD, 8)
    assert x_outliers.shape == (2, 5, 8)
    assert cols[:2].tolist() == [3, 17] and count.item() == 2
    torch.testing.assert_close(x_outliers[..., :2], x[..., [3, 17]], rtol=0, atol=0)
    cols0, count0, x0 = ops.outlier_split(x, 0.0, 8)
    assert count0.item() == 0 and (cols0 == -1).all() and (x0 == 0).all()


def test_outlier_split_over_capacity_reports_the_true_count(device):
    x = random_activations((4, 64), torch.float32, device, outlier_cols=range(0, 64, 4))
    cols, count, x_outliers = ops.outlier_split(x, THRESHOLD, 5)
    assert count.item() == 16
    assert cols.tolist() == [0, 4, 8, 12, 16]
    torch.testing.assert_close(x_outliers, x[:, [0, 4, 8, 12, 16]], rtol=0, atol=0)


def test_outlier_split_threshold_is_inclusive(device):
    x = torch.zeros(3, 4, device=device)
    x[1, 2] = -6.0
    x[2, 3] = 5.999
    cols, count, _ = ops.outlier_split(x, 6.0, 4)
    assert count.item() == 1 and cols.tolist() == [2, -1, -1, -1]


# ---- quantize_rowwise / quantize_colwise ----------------------------------------------------


@pytest.mark.parametrize("m,k", list(itertools.product(M_VALUES, K_VALUES)))
def test_quantize_rowwise_matches_float64(m, k, dtype, device):
    x = random_activations((m, k), dtype, device)
    q, absmax = ops.quantize_rowwise(x)
    assert_quantized_matches(q, absmax, x)


@pytest.mark.parametrize("m,k", list(itertools.product([1, 17, 300], [3, 172, 4096])))
def test_quantize_rowwise_excludes_outlier_columns(m, k, dtype, device):
    planted = [0, k - 1]
    x = random_activations((m, k), dtype, device, planted)
    cols, _, _ = ops.outlier_split(x, THRESHOLD, 8)
    q, absmax = ops.quantize_rowwise(x, cols)
    excluded = reference_outlier_cols(x, THRESHOLD).tolist()
    assert_quantized_matches(q, absmax, x, excluded)
    assert (q[:, excluded] == 0).all()


def test_quantize_rowwise_3d_and_zero_rows(dtype, device):
    x = random_activations((3, 4, 33), dtype, device)
    x[1, 2] = 0
    q, absmax = ops.quantize_rowwise(x)
    assert_quantized_matches(q, absmax, x)
    assert absmax[1, 2] == 0 and (q[1, 2] == 0).all()
    assert not torch.isnan(absmax).any()


def test_quantize_rowwise_rounds_half_to_even(device):
    # absmax 127 makes the step exactly 1, so x itself is rounded: ties go to the even integer.
    x = torch.tensor([[127.0, 0.5, 1.5, 2.5, -0.5, -1.5, -2.5, 3.4999]], device=device)
    q, _ = ops.quantize_rowwise(x)
    assert q.tolist() == [[127, 0, 2, 2, 0, -2, -2, 3]]


@pytest.mark.parametrize("n,k", list(itertools.product(N_VALUES, K_VALUES)))
def test_quantize_colwise_matches_float64(n, k, dtype, device):
    w = random_activations((n, k), dtype, device)
    q, absmax = ops.quantize_colwise(w)
    assert_quantized_matches(q, absmax, w)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
@pytest.mark.parametrize("m,k", list(itertools.product(M_VALUES, K_VALUES)))
def test_quantize_is_bit_identical_on_cpu_and_cuda(m, k, dtype):
    x = random_activations((m, k), dtype, "cpu", [c for c in (1, k - 2) if 0 <= c < k])
    cols_cpu, count_cpu, xo_cpu = ops.outlier_split(x, THRESHOLD, 8)
    cols_gpu, count_gpu, xo_gpu = ops.outlier_split(x.cuda(), THRESHOLD, 8)
    assert torch.equal(cols_cpu, cols_gpu.cpu()) and torch.equal(count_cpu, count_gpu.cpu())
    assert torch.equal(xo_cpu, xo_gpu.cpu())
    for cpu_out, gpu_out in zip(ops.quantize_rowwise(x, cols_cpu), ops.quantize_rowwise(x.cuda(), cols_gpu)):
        assert torch.equal(cpu_out, gpu_out.cpu())
    for cpu_out, gpu_out in zip(ops.quantize_colwise(x), ops.quantize_colwise(x.cuda())):
        assert torch.equal(cpu_out, gpu_out.cpu())


# ---- int8_matmul ----------------------------------------------------------------------------


def random_int8(shape, device):
    return torch.randint(-127, 128, shape, dtype=torch.int8, device=device)


@pytest.mark.parametrize("m,k,n", list(itertools.product(M_VALUES, K_VALUES, N_VALUES)))
def test_int8_matmul_is_exact(m, k, n, device):
    a, b = random_int8((m, k), device), random_int8((n, k), device)
    c = ops.int8_matmul(a, b)
    assert c.dtype == torch.int32 and c.shape == (m, n)
    # Products of int8 summed over K <= 4096 stay far below 2**53: float64 is exact here.
    expected = (a.double().cpu() @ b.double().cpu().T).to(torch.int32)
    assert torch.equal(c.cpu(), expected)


def test_int8_matmul_extreme_values_and_3d(device):
    a = torch.full((2, 3, 4096), -127, dtype=torch.int8, device=device)
    b = torch.full((7, 4096), -127, dtype=torch.int8, device=device)
    c = ops.int8_matmul(a, b)
    assert c.shape == (2, 3, 7) and (c == 127 * 127 * 4096).all()


def test_int8_matmul_k_zero_gives_zeros(device):
    c = ops.int8_matmul(random_int8((3, 0), device), random_int8((4, 0), device))
    assert c.shape == (3, 4) and (c == 0).all()


@pytest.mark.skipif(torch.cuda.device_count() < 2, reason="needs two CUDA GPUs")
def test_ops_run_on_a_second_gpu():
    x = random_activations((17, 172), torch.float16, "cuda:1", [5])
    w_q, w_absmax = ops.quantize_colwise(random_activations((64, 172), torch.float16, "cuda:1"))
    out = ops.int8_linear(x, w_q, w_absmax)
    assert out.device == torch.device("cuda:1")
    expected = ops.int8_linear(x.cpu(), w_q.cpu(), w_absmax.cpu())
    torch.testing.assert_close(out.cpu(), expected, rtol=2e-3, atol=2e-3)


# ---- dequant_outer --------------------------------------------------------------------------


@pytest.mark.parametrize("m,n", list(itertools.product(M_VALUES, N_VALUES)))
@pytest.mark.parametrize("with_bias", [False, True])
def test_dequant_outer_matches_float64(m, n, with_bias, dtype, device):
    acc = torch.randint(-(2**24), 2**24, (m, n), dtype=torch.int32, device=device)
    row = torch.rand(m, device=device) * 10
    col = torch.rand(n, device=device) * 3
    bias = torch.randn(n, device=device).to(dtype) if with_bias else None
    out = ops.dequant_outer(acc, row, col, bias, dtype)
    expected = acc.double() * row.double()[:, None] * col.double()[None, :] / 127.0**2
    if with_bias:
        expected = expected + bias.double()
    assert out.dtype == dtype and out.shape == (m, n)
    torch.testing.assert_close(out, expected.to(dtype), rtol=1e-5 if dtype == torch.float32 else None,
                               atol=1e-5 if dtype == torch.float32 else None)


def test_dequant_outer_3d(dtype, device):
    acc = torch.randint(-1000, 1000, (2, 3, 5), dtype=torch.int32, device=device)
    row, col = torch.rand(2, 3, device=device), torch.rand(5, device=device)
    out = ops.dequant_outer(acc, row, col, None, dtype)
    expected = acc.double() * row.double()[..., None] * col.double() / 127.0**2
    torch.testing.assert_close(out, expected.to(dtype))


# ---- the composed layer ---------------------------------------------------------------------


@pytest.mark.parametrize("shape", [(17, 172), (1, 4096), (2, 9, 64)])
def test_composed_layer_close_to_float64(shape, dtype, device):
    k = shape[-1]
    x = random_activations(shape, dtype, device, outlier_cols=[c for c in (2, k // 3) if c < k])
    w = torch.randn(48, k, device=device).to(dtype) / k**0.5
    bias = torch.randn(48, device=device).to(dtype)
    w_q, w_absmax = ops.quantize_colwise(w)
    out = ops.int8_linear(x, w_q, w_absmax, bias, THRESHOLD)
    expected = x.double() @ w.double().T + bias.double()
    rel = (out.double() - expected).norm() / expected.norm()
    assert out.dtype == dtype and out.shape == (*shape[:-1], 48)
    assert rel < 2e-2, f"relative error {rel:.3g}"


def test_outliers_are_what_keeps_the_error_small(device):
    x = random_activations((64, 1024), torch.float32, device, outlier_cols=range(0, 1024, 128))
    w = torch.randn(256, 1024, device=device) / 32
    w_q, w_absmax = ops.quantize_colwise(w)
    expected = x.double() @ w.double().T

    def rel_error(threshold):
        out = ops.int8_linear(x, w_q, w_absmax, None, threshold)
        return ((out.double() - expected).norm() / expected.norm()).item()

    assert rel_error(THRESHOLD) < rel_error(0.0) / 2


# ---- opcheck --------------------------------------------------------------------------------


def opcheck_samples(device):
    x = random_activations((5, 12), torch.bfloat16, device, outlier_cols=[3])
    x3d = random_activations((2, 3, 12), torch.float16, device, outlier_cols=[7])
    cols = ops.outlier_split(x, THRESHOLD, 4)[0]
    a, b = random_int8((5, 12), device), random_int8((7, 12), device)
    acc = ops.int8_matmul(a, b)
    row, col = torch.rand(5, device=device), torch.rand(7, device=device)
    return [
        (torch.ops.llmint8.outlier_split, (x, THRESHOLD, 4)),
        (torch.ops.llmint8.outlier_split, (x3d, THRESHOLD, 2)),
        (torch.ops.llmint8.quantize_rowwise, (x, cols)),
        (torch.ops.llmint8.quantize_rowwise, (x3d, None)),
        (torch.ops.llmint8.quantize_colwise, (x,)),
        (torch.ops.llmint8.int8_matmul, (a, b)),
        (torch.ops.llmint8.dequant_outer, (acc, row, col, torch.randn(7, device=device), torch.bfloat16)),
        (torch.ops.llmint8.dequant_outer, (acc, row, col, None, torch.float32)),
    ]


def test_opcheck_every_op(device):
    samples = opcheck_samples(device)
    assert {op._qualified_op_name for op, _ in samples} == {
        f"llmint8::{name}"
        for name in ["outlier_split", "quantize_rowwise", "quantize_colwise", "int8_matmul", "dequant_outer"]
    }
    for op, args in samples:
        torch.library.opcheck(op, args)


# ---- bad input ------------------------------------------------------------------------------


def test_bad_input_raises_errors_naming_the_argument(device):
    x = torch.randn(4, 8, device=device)
    a, b = random_int8((4, 8), device), random_int8((3, 8), device)
    acc = ops.int8_matmul(a, b)
    row, col = torch.rand(4, device=device), torch.rand(3, device=device)
    cases = [
        (lambda: ops.outlier_split(x.double(), THRESHOLD), "x must be float16, bfloat16 or float32"),
        (lambda: ops.outlier_split(x, -1.0), "threshold must be a finite number >= 0"),
        (lambda: ops.outlier_split(x, float("nan")), "threshold must be a finite number >= 0"),
        (lambda: ops.outlier_split(x, THRESHOLD, -3), "capacity must be >= 0"),
        (lambda: ops.quantize_rowwise(a), "x must be float16, bfloat16 or float32"),
        (lambda: ops.quantize_rowwise(x, torch.zeros(2, device=device)), "outlier_cols must be int32"),
        (lambda: ops.quantize_rowwise(x, torch.zeros(2, 2, dtype=torch.int32, device=device)), "outlier_cols must be 1D"),
        (lambda: ops.quantize_colwise(torch.randn(2, 3, 4, device=device)), "weight must be 2D"),
        (lambda: ops.quantize_colwise(a), "weight must be float16, bfloat16 or float32"),
        (lambda: ops.int8_matmul(x, b), "a must be int8"),
        (lambda: ops.int8_matmul(a, x), "b must be int8"),
        (lambda: ops.int8_matmul(a, random_int8((3, 5), device)), r"a's last dimension \(K = 8\) must equal"),
        (lambda: ops.int8_matmul(a, random_int8((2, 3, 8), device)), "b must be 2D"),
        (lambda: ops.dequant_outer(acc.float(), row, col), "acc must be int32"),
        (lambda: ops.dequant_outer(acc, row.half(), col), "row_absmax must be float32"),
        (lambda: ops.dequant_outer(acc, row[:3], col), "row_absmax must have shape"),
        (lambda: ops.dequant_outer(acc, row, col[:2]), "col_absmax must have shape"),
        (lambda: ops.dequant_outer(acc, row, col, torch.randn(5, device=device)), "bias must have shape"),
        (lambda: ops.dequant_outer(acc, row, col, None, torch.int32), "out_dtype must be float16"),
    ]
    for call, message in cases:
        with pytest.raises(RuntimeError, match=message):
            call()


def test_bad_outlier_column_index_is_rejected_on_cpu():
    x = torch.randn(2, 8)
    with pytest.raises(RuntimeError, match="outlier_cols entries must be -1"):
        ops.quantize_rowwise(x, torch.tensor([9], dtype=torch.int32))


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_tensors_on_different_devices_are_rejected():
    a, b = random_int8((4, 8), "cuda"), random_int8((3, 8), "cpu")
    with pytest.raises(RuntimeError, match="b must be on the same device as a"):
        ops.int8_matmul(a, b)
    acc = ops.int8_matmul(a, b.cuda())
    with pytest.raises(RuntimeError, match="row_absmax must be on the same device as acc"):
        ops.dequant_outer(acc, torch.rand(4), torch.rand(3, device="cuda"))
    x = torch.randn(4, 8, device="cuda")
    with pytest.raises(RuntimeError, match="outlier_cols must be on the same device as x"):
        ops.quantize_rowwise(x, torch.zeros(2, dtype=torch.int32))


def test_public_names_are_exported():
    for name in ["outlier_split", "quantize_rowwise", "quantize_colwise", "int8_matmul", "dequant_outer"]:
        assert getattr(llmint8, name) is getattr(ops, name)


# ---- int8_weight_linear (the small-batch fast path) -------------------------------------------


# On Hopper, rows 17..128 with K % 16 == 0 and N % 8 == 0 take the CUTLASS kernel: (256, 136)
# and (1024, 264), whose short K narrows its row tile to 32 (its other tilings: the test below).
@pytest.mark.parametrize("m", [0, 1, 5, 16, 17, 40, 64, 100, 129])
@pytest.mark.parametrize("k,n", [(1, 5), (172, 64), (4096, 1), (1024, 300), (96, 33), (256, 136), (1024, 264)])
def test_int8_weight_linear_matches_float64(m, k, n, dtype, device):
    check_int8_weight_linear_against_float64(m, k, n, dtype, device)


# The Hopper kernel's tiles by shape (H100 and H200: 132 SMs): the narrowest row tile whose output
# tiles fit one wave, from the smallest that holds every row (at most 256). K <= 1024 narrows to 32
# rows, 128 wide in K where they leave half the SMs idle (n = 264: 3 weight tiles of 128 times 2
# row tiles) and 64 wide where they do not (n = 6344: 50 times 2); 64 rows where 32-row tiles
# would not fit (n = 8576: 67 times 2 = 134), 128 where 64-row ones would not (m = 300, n = 4096:
# 32 times 5), 256 where 128-row ones would not (m = 600, n = 3456: 27 times 5). K = 2048 narrows
# no further than 128 rows, and leaves short output grids to stream-K.
@pytest.mark.parametrize(
    "m,k,n",
    [(40, 1024, 264), (40, 1024, 6344), (40, 1024, 8576), (300, 1024, 4096), (600, 1024, 3456), (64, 2048, 264),
     (100, 2048, 264), (600, 2048, 3456)],
)
def test_int8_weight_linear_matches_float64_in_each_hopper_tiling(m, k, n, dtype, device):
    check_int8_weight_linear_against_float64(m, k, n, dtype, device)


def check_int8_weight_linear_against_float64(m, k, n, dtype, device):
    x = random_activations((m, k), dtype, device, outlier_cols=[c for c in (0, k - 1) if c < k])
    w_int8, w_absmax = ops.quantize_colwise(torch.randn(n, k, device=device))
    bias = torch.randn(n, device=device).to(dtype)
    out = ops.int8_weight_linear(x, w_int8, w_absmax, bias)
    weight64 = w_int8.double() * w_absmax.double()[:, None] / 127.0
    expected = x.double() @ weight64.T + bias.double()
    assert out.dtype == dtype and out.shape == (m, n) and out.is_contiguous()
    # Only accumulation order and the output rounding differ from the float64 product.
    tolerance = {torch.float32: 1e-5, torch.float16: 2e-3, torch.bfloat16: 1.6e-2}[dtype]
    torch.testing.assert_close(out.double(), expected, rtol=tolerance, atol=tolerance * expected.abs().max().item() if m else 0)


# Widening an int8 weight to x's dtype is exact, so one-hot rows of x (absmax 127: scale 1) must
# read back weight values bit for bit; the weight holds every value from -127 to 127. Rows 40 and
# 128 take Hopper's CUTLASS kernel (mixed-input wgmma).
@pytest.mark.parametrize("m", [1, 16, 40, 128])
def test_int8_weight_linear_widens_every_weight_value_exactly(m, dtype, device):
    k, n = 128, 264
    w_int8 = (torch.arange(n * k, device=device) % 255 - 127).to(torch.int8).view(n, k)
    w_absmax = torch.full((n,), 127.0, device=device)
    columns = torch.arange(m, device=device) * 7 % k
    x = torch.nn.functional.one_hot(columns, k).to(dtype)
    out = ops.int8_weight_linear(x, w_int8, w_absmax)
    torch.testing.assert_close(out, w_int8.T[columns].to(dtype), rtol=0, atol=0)


# On Hopper the small-batch kernel may start while the kernel before it drains (programmatic
# dependent launch) and must wait for it before it reads x: a chain of layers, each reading what
# the one before it wrote, equals the same chain with the device synchronized between layers.
@pytest.mark.parametrize("rows", [1, 16])
def test_int8_weight_linear_chain_reads_each_input_after_it_is_written(rows, dtype, device):
    layers = [ops.quantize_colwise(torch.randn(2048, 2048, device=device) / 45) for _ in range(6)]
    x = random_activations((rows, 2048), dtype, device)

    def chain(synchronize):
        out = x
        for w_int8, w_absmax in layers:
            out = ops.int8_weight_linear(out, w_int8, w_absmax)
            if synchronize and out.is_cuda:
                torch.cuda.synchronize()
        return out

    overlapped = chain(synchronize=False)
    assert overlapped.abs().max() > 0
    torch.testing.assert_close(overlapped, chain(synchronize=True), rtol=0, atol=0)


@pytest.mark.parametrize("rows", [ops.SMALL_BATCH_ROWS, ops.TENSOR_CORE_WEIGHT_ONLY_ROWS, ops.SMALL_PRODUCT_ROWS])
def test_int8_weight_linear_is_at_least_as_accurate_as_the_decomposition(rows, dtype, device):
    x = random_activations((rows, 1024), dtype, device, outlier_cols=range(0, 1024, 128))
    w = torch.randn(512, 1024, device=device) / 32
    w_int8, w_absmax = ops.quantize_colwise(w)
    expected = x.double() @ w.double().T

    def rel_error(out):
        return ((out.double() - expected).norm() / expected.norm()).item()

    fast = rel_error(ops.int8_weight_linear(x, w_int8, w_absmax))
    composed = rel_error(ops.int8_linear(x, w_int8, w_absmax, None, THRESHOLD))
    assert fast <= composed


# The kernels read a bias as it comes instead of converting it to fp32 first; a 16-bit bias must
# give exactly what its fp32 copy gives. Rows 1 and 16: the streaming kernel (K split and not);
# 40 and 300: Hopper's CUTLASS kernel (which reads it in x's dtype), or the decomposition
# elsewhere, which int8_linear checks on every device. The bias is a view one element into its
# storage, so not 16-byte aligned.
@pytest.mark.parametrize("m", [1, 16, 40, 300])
@pytest.mark.parametrize("bias_dtype", [torch.float16, torch.bfloat16, torch.float32])
def test_bias_in_any_float_dtype_equals_its_fp32_copy(m, bias_dtype, dtype, device):
    x = random_activations((m, 2048), dtype, device, outlier_cols=[3, 700])
    w_int8, w_absmax = ops.quantize_colwise(torch.randn(264, 2048, device=device))
    bias = torch.randn(265, device=device).to(bias_dtype)[1:]
    for forward in (ops.llm_int8_linear, ops.int8_linear):
        out = forward(x, w_int8, w_absmax, bias, THRESHOLD)
        torch.testing.assert_close(out, forward(x, w_int8, w_absmax, bias.float(), THRESHOLD), rtol=0, atol=0)
    x_int8, row_absmax = ops.quantize_rowwise(x)
    acc = ops.int8_matmul(x_int8, w_int8)
    torch.testing.assert_close(ops.dequant_outer(acc, row_absmax, w_absmax, bias, dtype),
                               ops.dequant_outer(acc, row_absmax, w_absmax, bias.float(), dtype), rtol=0, atol=0)


def test_int8_weight_linear_3d_and_bad_input(device):
    x = random_activations((2, 3, 64), torch.bfloat16, device)
    w_int8, w_absmax = ops.quantize_colwise(torch.randn(8, 64, device=device))
    assert ops.int8_weight_linear(x, w_int8, w_absmax).shape == (2, 3, 8)
    with pytest.raises(RuntimeError, match="weight_int8 must be int8"):
        ops.int8_weight_linear(x, w_int8.float(), w_absmax)
    with pytest.raises(RuntimeError, match=r"x's last dimension \(K = 32\) must equal"):
        ops.int8_weight_linear(x[..., :32], w_int8, w_absmax)
    with pytest.raises(RuntimeError, match="weight_absmax must have shape"):
        ops.int8_weight_linear(x, w_int8, w_absmax[:3])
    torch.library.opcheck(torch.ops.llmint8.int8_weight_linear, (x, w_int8, w_absmax, None))


# ---- llm_int8_linear (the layer forward: picks int8_weight_linear or int8_linear) --------------


def forward_paths(x, w_int8, w_absmax, bias):
    return (ops.llm_int8_linear(x, w_int8, w_absmax, bias, THRESHOLD),
            ops.int8_weight_linear(x, w_int8, w_absmax, bias),
            ops.int8_linear(x, w_int8, w_absmax, bias, THRESHOLD))


@pytest.mark.parametrize("rows", [0, 1, ops.SMALL_BATCH_ROWS])
def test_forward_takes_the_int8_weight_path_for_small_batches(rows, dtype, device):
    x = random_activations((rows, 256), dtype, device, outlier_cols=[3])
    w_int8, w_absmax = ops.quantize_colwise(torch.randn(136, 256, device=device))
    out, weight_only, _ = forward_paths(x, w_int8, w_absmax, None)
    torch.testing.assert_close(out, weight_only, rtol=0, atol=0)


@pytest.mark.parametrize("rows", [ops.SMALL_BATCH_ROWS, ops.SMALL_PRODUCT_ROWS + 1])
def test_forward_takes_the_decomposition_when_asked_or_past_every_weight_only_kernel(rows, device):
    x = random_activations((rows, 256), torch.float16, device, outlier_cols=[3])
    w_int8, w_absmax = ops.quantize_colwise(torch.randn(136, 256, device=device))
    bias = torch.randn(136, device=device).half()
    exact = rows <= ops.SMALL_PRODUCT_ROWS
    out = ops.llm_int8_linear(x, w_int8, w_absmax, bias, THRESHOLD, exact_decomposition=exact)
    torch.testing.assert_close(out, ops.int8_linear(x, w_int8, w_absmax, bias, THRESHOLD), rtol=0, atol=0)


# Whichever path the rows take (1: the int8-weight path everywhere; 40: Hopper's tensor-core
# kernel, else the decomposition; 2100: the decomposition), a bad threshold or capacity is refused.
@pytest.mark.parametrize("rows", [1, 40, ops.SMALL_PRODUCT_ROWS + 52])
@pytest.mark.parametrize("exact_decomposition", [False, True])
def test_forward_refuses_a_bad_threshold_or_capacity_on_every_path(rows, exact_decomposition, device):
    x = random_activations((rows, 64), torch.float16, device)
    w_int8, w_absmax = ops.quantize_colwise(torch.randn(8, 64, device=device))
    with pytest.raises(RuntimeError, match="threshold must be a finite number >= 0"):
        ops.llm_int8_linear(x, w_int8, w_absmax, None, -1.0, exact_decomposition=exact_decomposition)
    with pytest.raises(RuntimeError, match="capacity must be >= 0"):
        ops.llm_int8_linear(x, w_int8, w_absmax, None, THRESHOLD, -3, exact_decomposition=exact_decomposition)


# 100 rows: within Hopper's 128; 600: past it, within SMALL_PRODUCT_ROWS with a small product.
@pytest.mark.parametrize("shape", [(100, 256), (4, 25, 256), (600, 256)])
def test_forward_between_the_row_limits_depends_on_the_device(shape, device):
    x = random_activations(shape, torch.bfloat16, device, outlier_cols=[3])
    w_int8, w_absmax = ops.quantize_colwise(torch.randn(136, 256, device=device))
    out, weight_only, decomposed = forward_paths(x, w_int8, w_absmax, None)
    hopper_kernel = device.type == "cuda" and torch.cuda.get_device_capability() == (9, 0)
    # On Hopper the tensor-core kernel runs if llmint8 was built with CUTLASS (gpu_check.sh does).
    expected = [weight_only, decomposed] if hopper_kernel else [decomposed]
    assert any(torch.equal(out, e) for e in expected)


def test_forward_op_checks(device):
    x = random_activations((20, 64), torch.float16, device, outlier_cols=[1])
    w_int8, w_absmax = ops.quantize_colwise(torch.randn(24, 64, device=device))
    bias = torch.randn(24, device=device).half()
    for exact in (False, True):
        torch.library.opcheck(torch.ops.llmint8.llm_int8_linear, (x, w_int8, w_absmax, bias, 6.0, 8, exact))
    with pytest.raises(RuntimeError, match=r"x's last dimension \(K = 32\) must equal"):
        ops.llm_int8_linear(x[:, :32], w_int8, w_absmax)


def test_outlier_split_pads_with_zeros_even_next_to_inf(device):
    x = torch.randn(3, 16, device=device)
    x[1, 0] = float("inf")
    cols, count, x_outliers = ops.outlier_split(x, THRESHOLD, 4)
    assert cols.tolist() == [0, -1, -1, -1] and count.item() == 1
    assert torch.isinf(x_outliers[1, 0]) and torch.equal(x_outliers[:, 1:], torch.zeros(3, 3, device=device))


# ---- int8_linear (the fused LLM.int8 layer) ---------------------------------------------------


@pytest.mark.parametrize("shape", [(0, 64), (1, 3), (17, 172), (300, 256), (2, 9, 64)])
@pytest.mark.parametrize("threshold,capacity", [(THRESHOLD, 8), (THRESHOLD, 1), (0.0, 8), (THRESHOLD, 0)])
@pytest.mark.parametrize("with_bias", [False, True])
def test_fused_int8_linear_equals_the_composed_five_ops(shape, threshold, capacity, with_bias, dtype, device):
    k = shape[-1]
    x = random_activations(shape, dtype, device, outlier_cols=[c for c in (0, k // 2, k - 1) if c < k])
    w_int8, w_absmax = ops.quantize_colwise(torch.randn(33, k, device=device))
    bias = torch.randn(33, device=device).to(dtype) if with_bias else None
    assert_fused_equals_composed(x, w_int8, w_absmax, bias, threshold, capacity)


def assert_fused_equals_composed(x, w_int8, w_absmax, bias, threshold, capacity):
    fused = ops.int8_linear(x, w_int8, w_absmax, bias, threshold, capacity)
    composed = ops.int8_linear_composed(x, w_int8, w_absmax, bias, threshold, capacity)
    assert fused.dtype == x.dtype and fused.shape == (*x.shape[:-1], w_int8.shape[0])
    # Same int8 values and int32 sums; only where the outlier product is rounded differs.
    scale = composed.abs().max().item() if composed.numel() else 1.0
    tolerance = {torch.float32: 1e-5, torch.float16: 2e-3, torch.bfloat16: 1.6e-2}[x.dtype]
    torch.testing.assert_close(fused.double(), composed.double(), rtol=tolerance, atol=tolerance * scale)


# Shapes the Hopper GEMM takes (K % 16 == 0, N % 8 == 0) across its row buckets (<= 128, <= 1024,
# larger), with N off the 128-column tile and M off every tile.
@pytest.mark.parametrize("shape,n", [((1, 64), 8), ((17, 64), 136), ((100, 256), 64), ((129, 512), 264),
                                     ((2, 300, 128), 512), ((1025, 64), 72), ((2048, 256), 128)])
# Capacity 2 keeps two of the three outlier columns split off and quantizes the third.
@pytest.mark.parametrize("threshold,capacity", [(THRESHOLD, 8), (THRESHOLD, 2), (0.0, 8)])
@pytest.mark.parametrize("with_bias", [False, True])
def test_fused_int8_linear_on_tensor_core_friendly_shapes(shape, n, threshold, capacity, with_bias, dtype, device):
    k = shape[-1]
    x = random_activations(shape, dtype, device, outlier_cols=[3, k // 2, k - 5])
    # Per-channel scales that differ by channel, so a transposed broadcast would show.
    w_int8, w_absmax = ops.quantize_colwise(torch.randn(n, k, device=device) * torch.rand(n, 1, device=device))
    bias = torch.randn(n, device=device).to(dtype) if with_bias else None
    assert_fused_equals_composed(x, w_int8, w_absmax, bias, threshold, capacity)


# More outlier columns than the usual handful: 12, and 40, past one 16-slot tensor-core step of the
# Hopper epilogue; with room for all of them (capacity 100 is past the 64 slots that epilogue takes,
# so another path runs), for most, and for few, across the Hopper GEMM's row buckets.
@pytest.mark.parametrize("shape,n", [((100, 256), 136), ((300, 512), 264), ((1100, 128), 72)])
@pytest.mark.parametrize("outliers", [12, 40])
@pytest.mark.parametrize("capacity", [100, 64, 10, 5])
def test_fused_int8_linear_with_many_outlier_columns(shape, n, outliers, capacity, dtype, device):
    k = shape[-1]
    x = random_activations(shape, dtype, device, outlier_cols=list(range(1, k, k // outliers))[:outliers])
    w_int8, w_absmax = ops.quantize_colwise(torch.randn(n, k, device=device) * torch.rand(n, 1, device=device))
    bias = torch.randn(n, device=device).to(dtype)
    assert ops.outlier_split(x, THRESHOLD, 64)[1].item() == outliers
    assert_fused_equals_composed(x, w_int8, w_absmax, bias, THRESHOLD, capacity)


# Threshold 6 on inputs that have no outlier column: the Hopper epilogue then multiplies one chunk
# of zeros, which the split must have written (garbage there could make 0 * NaN), in each row bucket.
@pytest.mark.parametrize("shape,n", [((100, 256), 136), ((300, 512), 264), ((1100, 128), 72)])
@pytest.mark.parametrize("capacity", [64, 5])
def test_fused_int8_linear_with_no_outlier_present(shape, n, capacity, dtype, device):
    x = random_activations(shape, dtype, device).clamp(-5.0, 5.0)  # |x| < 6 with certainty, not just likely
    w_int8, w_absmax = ops.quantize_colwise(torch.randn(n, shape[-1], device=device))
    bias = torch.randn(n, device=device).to(dtype)
    assert ops.outlier_split(x, THRESHOLD, capacity)[1].item() == 0
    assert_fused_equals_composed(x, w_int8, w_absmax, bias, THRESHOLD, capacity)


# On CUDA the split runs in one launch. Where every row gets a warp team of its own and the
# blocks' column words fit one round of reads, the teams scan the rows they keep in registers
# ((5, 40, 1000) in one-warp teams; (100, 4096) in teams of two warps, four in fp32); otherwise it
# scans x in row chunks and, past a block's width of vectors, column blocks. Each outlier sits in
# a single row, spread over the chunks (or blocks), in columns spread over the column blocks.
# Capacity 3 splits off the first three and leaves the fourth in int8.
# 4500 x 2048 is past a third of an H100's L2, where separate kernels split x instead.
@pytest.mark.parametrize("shape,n", [((3000, 64), 40), ((70, 8192), 24), ((33, 5003), 16), ((5, 40, 1000), 8),
                                     ((100, 4096), 8), ((4500, 2048), 8)])
@pytest.mark.parametrize("capacity", [64, 3])
def test_fused_int8_linear_finds_outliers_in_any_row_and_column_block(shape, n, capacity, dtype, device):
    k = shape[-1]
    x = torch.randn(shape, device=device).clamp(-5.0, 5.0)
    rows = x.view(-1, k)
    cols = [0, k // 3, k // 2 + 1, k - 1]
    for i, col in enumerate(cols):
        rows[(i + 1) * rows.shape[0] // len(cols) - 1, col] = 40.0 * (-1) ** i
    x = x.to(dtype)
    w_int8, w_absmax = ops.quantize_colwise(torch.randn(n, k, device=device) * torch.rand(n, 1, device=device))
    split_cols, count, _ = ops.outlier_split(x, THRESHOLD, capacity)
    assert count.item() == len(cols) and split_cols[:min(capacity, len(cols))].tolist() == cols[:capacity]
    assert_fused_equals_composed(x, w_int8, w_absmax, None, THRESHOLD, capacity)


# More output tiles than an H100 has SMs, so that each CTA of the Hopper GEMM runs several and its
# epilogue's double-buffered outlier operands are refilled while the tile before is still being
# written: 128 x 128 tiles (M <= 1024) and 128 x 256 ones (M > 1024). 20 outlier columns take two
# of the epilogue's 16-slot chunks, 5 take one; capacity 18 leaves two of the 20 in int8.
@pytest.mark.parametrize("m,n", [(1000, 4096), (2100, 4096)])
@pytest.mark.parametrize("outliers,capacity", [(20, 64), (5, 64), (20, 18)])
def test_fused_int8_linear_over_many_tiles_per_sm(m, n, outliers, capacity, dtype, device):
    k = 64
    x = random_activations((m, k), dtype, device, outlier_cols=range(1, k, k // outliers)[:outliers])
    w_int8, w_absmax = ops.quantize_colwise(torch.randn(n, k, device=device) * torch.rand(n, 1, device=device))
    bias = torch.randn(n, device=device).to(dtype)
    assert ops.outlier_split(x, THRESHOLD, 64)[1].item() == outliers
    assert_fused_equals_composed(x, w_int8, w_absmax, bias, THRESHOLD, capacity)


def test_fused_int8_linear_opcheck_and_bad_input(device):
    x = random_activations((5, 64), torch.float16, device, outlier_cols=[7])
    w_int8, w_absmax = ops.quantize_colwise(torch.randn(8, 64, device=device))
    torch.library.opcheck(torch.ops.llmint8.int8_linear, (x, w_int8, w_absmax, None, THRESHOLD, 4))
    torch.library.opcheck(torch.ops.llmint8.int8_linear, (x, w_int8, w_absmax, torch.randn(8, device=device), 0.0, 4))
    with pytest.raises(RuntimeError, match="threshold must be a finite number >= 0"):
        ops.int8_linear(x, w_int8, w_absmax, None, -2.0)
    with pytest.raises(RuntimeError, match="capacity must be >= 0"):
        ops.int8_linear(x, w_int8, w_absmax, None, THRESHOLD, -1)
    with pytest.raises(RuntimeError, match="weight_int8 must be 2D"):
        ops.int8_linear(x, w_int8[None], w_absmax)
