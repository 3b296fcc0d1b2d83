// Hashing-based NMS (Wang et al., arXiv 2005.11426): kernels and their device dispatcher.
//
// Two operators, registered as torch.ops.hnms.* in vision.cpp:
//   iou_hash(boxes[N,4], alpha, w0, h0, bx, by) -> int64 [N,4]      Alg. 1
//   hnms(boxes[N,4], scores[N], groups[N] or [0], alpha, num_hashes, w0, h0, bx, by) -> int64 [K]
//                                                                     Alg. 2 (K=1), Alg. 3 (K>1)
// and, CPU only, the suppression that HNMS pre-filters in the paper's Appendix C.3:
//   soft_nms(boxes[N,4], scores[N], groups[N] or [0], method, sigma, iou_threshold,
//            score_threshold) -> (int64 keep [K], decayed scores [K])    Soft-NMS, Bodla et al.
// Boxes are (x1, y1, x2, y2) in any floating dtype; all arithmetic is done in double.
#pragma once

#include <cmath>
#include <tuple>

#include <torch/types.h>

namespace hnms {

at::Tensor iou_hash_cpu(
    const at::Tensor& boxes, double alpha, double w0, double h0, double bx, double by);

at::Tensor hnms_cpu(
    const at::Tensor& boxes,
    const at::Tensor& scores,
    const at::Tensor& groups,
    double alpha,
    int64_t num_hashes,
    double w0,
    double h0,
    double bx,
    double by);

// method: 0 = linear (f = 1 - IoU if IoU >= iou_threshold), 1 = gaussian (f = exp(-IoU^2/sigma)).
std::tuple<at::Tensor, at::Tensor> soft_nms_cpu(
    const at::Tensor& boxes,
    const at::Tensor& scores,
    const at::Tensor& groups,
    int64_t method,
    double sigma,
    double iou_threshold,
    double score_threshold);

#if defined(WITH_CUDA) || defined(WITH_HIP)
at::Tensor iou_hash_cuda(
    const at::Tensor& boxes, double alpha, double w0, double h0, double bx, double by);

at::Tensor hnms_cuda(
    const at::Tensor& boxes,
    const at::Tensor& scores,
    const at::Tensor& groups,
    double alpha,
    int64_t num_hashes,
    double w0,
    double h0,
    double bx,
    double by);
#endif

// Argument checks shared by both backends (the Python wrapper gives friendlier messages first).
inline void check_hnms_args(
    const at::Tensor& boxes,
    const at::Tensor& scores,
    const at::Tensor& groups,
    double alpha,
    int64_t num_hashes) {
  TORCH_CHECK(
      boxes.dim() == 2 && boxes.size(1) == 4, "hnms: boxes must have shape [N, 4], got ",
      boxes.sizes());
  TORCH_CHECK(
      scores.dim() == 1 && scores.size(0) == boxes.size(0),
      "hnms: scores must have shape [N] with N = boxes.size(0), got ", scores.sizes());
  TORCH_CHECK(
      groups.numel() == 0 || (groups.dim() == 1 && groups.size(0) == boxes.size(0)),
      "hnms: groups must be empty or have shape [N], got ", groups.sizes());
  TORCH_CHECK(
      groups.numel() == 0 || groups.scalar_type() == at::kLong, "hnms: groups must be int64");
  TORCH_CHECK(
      boxes.device() == scores.device() &&
          (groups.numel() == 0 || groups.device() == boxes.device()),
      "hnms: boxes, scores and groups must be on the same device");
  TORCH_CHECK(alpha > 0.0 && alpha < 1.0, "hnms: alpha must be in (0, 1), got ", alpha);
  TORCH_CHECK(num_hashes >= 1, "hnms: num_hashes must be >= 1, got ", num_hashes);
}

inline void check_soft_nms_args(
    const at::Tensor& boxes,
    const at::Tensor& scores,
    const at::Tensor& groups,
    int64_t method,
    double sigma,
    double iou_threshold,
    double score_threshold) {
  check_hnms_args(boxes, scores, groups, 0.5, 1);
  TORCH_CHECK(method == 0 || method == 1, "soft_nms: method must be 0 (linear) or 1 (gaussian)");
  TORCH_CHECK(sigma > 0.0 && std::isfinite(sigma), "soft_nms: sigma must be > 0, got ", sigma);
  TORCH_CHECK(
      iou_threshold >= 0.0 && iou_threshold <= 1.0,
      "soft_nms: iou_threshold must be in [0, 1], got ", iou_threshold);
  TORCH_CHECK(
      score_threshold >= 0.0 && std::isfinite(score_threshold),
      "soft_nms: score_threshold must be a finite float >= 0, got ", score_threshold);
}

// Device dispatcher (the registered operators dispatch by themselves; this is for C++ callers).
inline at::Tensor hnms(
    const at::Tensor& boxes,
    const at::Tensor& scores,
    const at::Tensor& groups,
    double alpha,
    int64_t num_hashes,
    double w0,
    double h0,
    double bx,
    double by) {
  if (boxes.device().is_cuda()) {
#if defined(WITH_CUDA) || defined(WITH_HIP)
    return hnms_cuda(boxes, scores, groups, alpha, num_hashes, w0, h0, bx, by);
#else
    TORCH_CHECK(
        false, "hnms: the extension was not compiled with GPU support (rebuild with FORCE_CUDA=1)");
#endif
  }
  return hnms_cpu(boxes, scores, groups, alpha, num_hashes, w0, h0, bx, by);
}

inline at::Tensor iou_hash(
    const at::Tensor& boxes, double alpha, double w0, double h0, double bx, double by) {
  if (boxes.device().is_cuda()) {
#if defined(WITH_CUDA) || defined(WITH_HIP)
    return iou_hash_cuda(boxes, alpha, w0, h0, bx, by);
#else
    TORCH_CHECK(
        false,
        "iou_hash: the extension was not compiled with GPU support (rebuild with FORCE_CUDA=1)");
#endif
  }
  return iou_hash_cpu(boxes, alpha, w0, h0, bx, by);
}

}  // namespace hnms
