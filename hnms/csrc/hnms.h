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

#include "hnms_hash.h"

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

// Argument checks shared by both backends (the Python wrapper gives friendlier messages first;
// these make the registered ops safe to call directly). `op` prefixes the messages.
inline void check_hnms_tensors(
    const char* op, const at::Tensor& boxes, const at::Tensor& scores, const at::Tensor& groups) {
  TORCH_CHECK(
      boxes.dim() == 2 && boxes.size(1) == 4, op, ": boxes must have shape [N, 4], got ",
      boxes.sizes());
  TORCH_CHECK(
      scores.dim() == 1 && scores.size(0) == boxes.size(0), op,
      ": scores must have shape [N] with N = boxes.size(0), got ", scores.sizes());
  TORCH_CHECK(
      groups.numel() == 0 || (groups.dim() == 1 && groups.size(0) == boxes.size(0)), op,
      ": groups must be empty or have shape [N], got ", groups.sizes());
  TORCH_CHECK(
      groups.numel() == 0 || groups.scalar_type() == at::kLong, op, ": groups must be int64");
  TORCH_CHECK(
      boxes.device() == scores.device() &&
          (groups.numel() == 0 || groups.device() == boxes.device()),
      op, ": boxes, scores and groups must be on the same device");
}

// The parameters of the K hash functions of Eq. (16). Rejects values for which no box could be
// hashed (every box would be its own cell and nothing would be suppressed, silently): a
// non-finite or non-positive W0 or H0, one that overflows when Eq. (16) scales it by α^(-k/K),
// or an offset b with |b| >= 2^52 (every |m| = |round(x / δ - b)| would exceed the code range for
// any box whose centre is known to a fraction of a cell). Only b mod 1 changes which boxes share
// a cell, so offsets in [0, 1) are all one needs.
inline void check_hash_params(
    const char* op, double alpha, double w0, double h0, double bx, double by, int64_t num_hashes) {
  TORCH_CHECK(alpha > 0.0 && alpha < 1.0, op, ": alpha must be in (0, 1), got ", alpha);
  TORCH_CHECK(num_hashes >= 1, op, ": num_hashes must be >= 1, got ", num_hashes);
  TORCH_CHECK(
      std::isfinite(w0) && w0 > 0.0 && std::isfinite(h0) && h0 > 0.0, op,
      ": w0 and h0 must be finite and > 0, got w0 = ", w0, ", h0 = ", h0);
  TORCH_CHECK(
      std::isfinite(bx) && std::isfinite(by) && std::fabs(bx) < kMaxCode &&
          std::fabs(by) < kMaxCode,
      op, ": bx and by must be finite with |b| < 2^52 (offsets in cell units; only b mod 1 ",
      "changes the cells), got bx = ", bx, ", by = ", by);
  // the last hash function has the largest W0^(k) = W0 α^(-k/K) and b^(k) = b + k/K
  const HashParams p = make_hash_params(alpha, w0, h0, bx, by, num_hashes - 1, num_hashes);
  TORCH_CHECK(
      std::isfinite(p.w0) && std::isfinite(p.h0) && std::isfinite(p.log_w0) &&
          std::isfinite(p.log_h0),
      op, ": w0 and h0 times alpha^(-k/K) (the base sizes of the K = ", num_hashes,
      " hash functions of Eq. (16)) must stay finite, got w0 = ", w0, ", h0 = ", h0,
      ", alpha = ", alpha);
  TORCH_CHECK(
      std::fabs(p.bx) < kMaxCode && std::fabs(p.by) < kMaxCode, op,
      ": bx and by plus k/K (Eq. 16) must stay below 2^52 in magnitude, got bx = ", bx,
      ", by = ", by);
}

inline void check_soft_nms_args(
    const at::Tensor& boxes,
    const at::Tensor& scores,
    const at::Tensor& groups,
    int64_t method,
    double sigma,
    double iou_threshold,
    double score_threshold) {
  check_hnms_tensors("soft_nms", boxes, scores, groups);
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
