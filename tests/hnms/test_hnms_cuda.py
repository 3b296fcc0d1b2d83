"""CUDA twins of the CPU tests: the CUDA kernel against the CPU kernel and the reference.

Skipped without a GPU or without an hnms._C built with FORCE_CUDA=1
(benchmarks/gpu/run_hnms_gpu.sh builds and runs these on a GPU machine).
"""

import pytest
import torch

import hnms
from hnms import INVALID_CODE, _ext

pytestmark = [
    pytest.mark.skipif(not torch.cuda.is_available(), reason="no GPU"),
    pytest.mark.skipif(
        not (torch.cuda.is_available() and _ext.has_cuda_kernels()),
        reason="hnms._C was built without the CUDA kernels (FORCE_CUDA=1)",
    ),
]


def _inputs(make_crowd, n, seed):
    boxes, scores = make_crowd(n, seed=seed)
    boxes[:10, 2] = boxes[:10, 0]  # zero width
    boxes[10, 0] = float("nan")
    boxes[11, 3] = float("inf")
    scores[20:30] = float("nan")
    scores[30:40] = -torch.rand(10) * 5  # logits
    scores[40:50] = scores[50]  # ties
    idxs = torch.randint(0, 3, (n,), generator=torch.Generator().manual_seed(seed))
    return boxes, scores, idxs


@pytest.mark.parametrize("num_hashes", [1, 2, 4])
@pytest.mark.parametrize("n", [1, 1000, 20000])
def test_cuda_kernel_matches_cpu_and_reference(make_crowd, num_hashes, n):
    boxes, scores, idxs = _inputs(make_crowd, max(n, 60), seed=n)
    boxes, scores, idxs = boxes[:n], scores[:n], idxs[:n]
    for alpha in (0.5, 0.7, 0.9):
        cpu = hnms.hnms(boxes, scores, alpha, num_hashes, backend="ext")
        gpu = hnms.hnms(boxes.cuda(), scores.cuda(), alpha, num_hashes, backend="ext")
        ref = hnms.hnms(boxes.cuda(), scores.cuda(), alpha, num_hashes, backend="torch")
        assert gpu.device.type == "cuda" and gpu.dtype == torch.int64
        assert torch.equal(gpu.cpu(), cpu) and torch.equal(ref.cpu(), cpu)
        cpu_b = hnms.batched_hnms(boxes, scores, idxs, alpha, num_hashes, backend="ext")
        gpu_b = hnms.batched_hnms(
            boxes.cuda(), scores.cuda(), idxs.cuda(), alpha, num_hashes, backend="ext"
        )
        assert torch.equal(gpu_b.cpu(), cpu_b)
        codes = hnms.iou_hash(boxes.cuda(), alpha, backend="ext")
        assert torch.equal(codes.cpu(), hnms.iou_hash(boxes, alpha, backend="ext"))


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float64])
def test_cuda_dtypes(make_crowd, dtype):
    boxes, scores = make_crowd(3000, seed=3)
    boxes, scores = boxes.round().to(dtype), scores.to(dtype)
    cpu = hnms.hnms(boxes, scores, 0.7, backend="ext")
    assert torch.equal(hnms.hnms(boxes.cuda(), scores.cuda(), 0.7, backend="ext").cpu(), cpu)


def test_cuda_edge_cases():
    empty = hnms.hnms(torch.zeros(0, 4, device="cuda"), torch.zeros(0, device="cuda"), 0.7)
    assert empty.device.type == "cuda" and empty.shape == (0,)
    boxes = torch.tensor([[10.0, 10.0, 50.0, 40.0]] * 4 + [[5.0, 5.0, 5.0, 9.0]], device="cuda")
    scores = torch.tensor([0.9, 0.9, float("nan"), 0.95, 0.1], device="cuda")
    assert hnms.hnms(boxes, scores, 0.7).tolist() == [3, 4]
    codes = hnms.iou_hash(boxes, 0.7)
    assert (codes[4] == INVALID_CODE).all()
    strided = torch.cat([boxes, boxes], 1)[:, :4]
    assert hnms.hnms(strided, scores, 0.7).tolist() == [3, 4]
    with pytest.raises(ValueError, match="scores is on cpu but boxes is on cuda"):
        hnms.hnms(boxes, scores.cpu(), 0.7)


def test_cuda_deterministic(make_crowd):
    boxes, scores = make_crowd(50000, seed=5)
    scores = (scores * 10).round() / 10  # many ties: resolved by the lowest index
    boxes, scores = boxes.cuda(), scores.cuda()
    runs = [hnms.hnms(boxes, scores, 0.7, 2) for _ in range(5)]
    assert all(torch.equal(r, runs[0]) for r in runs)


def test_cuda_hash_arithmetic_is_not_contracted(fma_border):
    # nvcc contracts x * (1/δ) - b into an FMA unless built with -fmad=false (setup.py): these
    # boxes would then get m one higher than on the CPU
    boxes, alpha, b, expected = fma_border()
    codes = hnms.iou_hash(boxes.cuda(), alpha, bx=b, by=b, backend="ext").cpu()
    assert torch.equal(codes[:, 2], expected) and torch.equal(codes[:, 3], expected)
    assert torch.equal(codes, hnms.iou_hash(boxes, alpha, bx=b, by=b, backend="ext"))
    scores = torch.linspace(1, 0, len(boxes), dtype=torch.float64)
    assert torch.equal(
        hnms.hnms(boxes.cuda(), scores.cuda(), alpha, bx=b, by=b, backend="ext").cpu(),
        hnms.hnms(boxes, scores, alpha, bx=b, by=b, backend="ext"),
    )
