import pytest
import torch

from attnlib.cost import peak_memory

MB = 1 << 20


def test_peak_memory_counts_live_tensors_not_freed_ones():
    def one_at_a_time():
        for _ in range(3):
            torch.ones(MB)  # 4 MB each, freed at once

    def three_alive():
        kept = [torch.ones(MB) for _ in range(3)]
        return sum(t.sum() for t in kept)

    assert peak_memory(one_at_a_time) == pytest.approx(4 * MB, rel=0.01)
    assert peak_memory(three_alive) == pytest.approx(12 * MB, rel=0.01)


def test_peak_memory_sees_allocations_inside_torch_kernels():
    x = torch.randn(512, 512)
    # x @ x.T allocates its 1 MB result inside the matmul kernel
    assert peak_memory(lambda: x @ x.T) == pytest.approx(512 * 512 * 4, rel=0.01)


def test_peak_memory_prints_nothing(capfd):
    peak_memory(lambda: torch.ones(10) + 1)
    out, err = capfd.readouterr()
    assert out == "" and err == ""


def test_peak_memory_rejects_bad_arguments():
    with pytest.raises(TypeError, match="fn must be callable, got int"):
        peak_memory(3)
    with pytest.raises(ValueError, match="device must be 'cpu' or 'cuda', got 'meta'"):
        peak_memory(lambda: None, device="meta")


def test_attention_flops_counts_the_two_matrix_products():
    n, d = 6, 4
    # count multiply-adds by brute force: Q K^T has n*n dot products of length d, A V too
    multiply_adds = sum(1 for _ in range(n) for _ in range(n) for _ in range(d)) * 2
    from attnlib.cost import attention_flops

    assert attention_flops(n, d) == 2 * multiply_adds
    assert attention_flops(n, d, heads=8, batch=3) == 24 * attention_flops(n, d)
    assert attention_flops(n, d, causal=True) == attention_flops(n, d) // 2
    with pytest.raises(ValueError, match="n must be >= 1, got -5"):
        attention_flops(-5, 4)
    with pytest.raises(TypeError, match="d must be an int, got float"):
        attention_flops(5, 4.0)
