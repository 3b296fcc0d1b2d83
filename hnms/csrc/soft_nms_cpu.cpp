// Soft-NMS (Bodla et al., ICCV 2017), CPU: the suppression the HNMS paper pre-filters in its
// Appendix C.3 (Table 4). Per group, repeatedly take the box M with the highest current score,
// output it, and decay every remaining box b_i by f(IoU(M, b_i)):
//   linear:   f = 1 - IoU   if IoU >= N_t, else 1
//   gaussian: f = exp(-IoU^2 / sigma)
// then drop every remaining box whose score is below score_threshold. As in Bodla et al.'s
// Algorithm 1 (and the pruning of their released code), M is output before any thresholding, so
// the best box of a group is output whatever its score; every later box has score >=
// score_threshold. NaN-scored boxes are dropped first; +-inf scores are rejected (a ValueError in
// Python, in a traced model too). O(n^2) per group of n boxes: one pass per output box decays,
// drops and finds the next maximum at once.
//
// Everything is computed in double with the expressions of hnms/soft_nms.py's reference, in the
// same order, so both give the same boxes. Ties in score go to the lower index. A box with a
// non-finite coordinate, width/height <= 0 or an area that overflows has IoU 0 with every box:
// it is neither decayed nor decays others (as in hnms()).
#include <algorithm>
#include <cmath>
#include <limits>
#include <numeric>
#include <tuple>
#include <vector>

#include <ATen/Dispatch.h>

#include "hnms.h"

namespace hnms {

namespace {

// The boxes of one group that are still candidates, as a structure of arrays.
struct Pool {
  std::vector<double> x1, y1, x2, y2, area, score;
  std::vector<int64_t> index;

  void reserve(size_t n) {
    for (auto* v : {&x1, &y1, &x2, &y2, &area, &score}) {
      v->reserve(n);
    }
    index.reserve(n);
  }

  void push(const double* b, double s, int64_t i) {
    const double w = b[2] - b[0], h = b[3] - b[1];
    // w * h must be finite too: an area that overflows (1e30 x 1e300) would give NaN IoUs
    if (std::isfinite(b[0]) && std::isfinite(b[1]) && std::isfinite(b[2]) && std::isfinite(b[3]) &&
        w > 0.0 && h > 0.0 && std::isfinite(w * h)) {
      x1.push_back(b[0]);
      y1.push_back(b[1]);
      x2.push_back(b[2]);
      y2.push_back(b[3]);
      area.push_back(w * h);
    } else {
      // An empty interval: every intersection with it is empty, so its IoU is 0.
      const double inf = std::numeric_limits<double>::infinity();
      x1.push_back(inf);
      y1.push_back(inf);
      x2.push_back(-inf);
      y2.push_back(-inf);
      area.push_back(0.0);
    }
    score.push_back(s);
    index.push_back(i);
  }
};

// Whether candidate (s_a, i_a) goes before (s_b, i_b): higher score, then lower index.
inline bool before(double s_a, int64_t i_a, double s_b, int64_t i_b) {
  return s_a > s_b || (s_a == s_b && i_a < i_b);
}

template <int kMethod>  // 0: linear, 1: gaussian
void soft_nms_group(
    Pool& p,
    double inv_sigma,
    double iou_threshold,
    double score_threshold,
    std::vector<std::pair<double, int64_t>>* out) {
  int64_t n = static_cast<int64_t>(p.index.size());
  int64_t best = -1;
  for (int64_t i = 0; i < n; ++i) {
    if (best < 0 || before(p.score[i], p.index[i], p.score[best], p.index[best])) {
      best = i;
    }
  }
  while (n > 0) {
    const double mx1 = p.x1[best], my1 = p.y1[best], mx2 = p.x2[best], my2 = p.y2[best];
    const double marea = p.area[best];
    out->emplace_back(p.score[best], p.index[best]);
    int64_t kept = 0;
    int64_t next = -1;
    for (int64_t i = 0; i < n; ++i) {
      if (i == best) {
        continue;
      }
      const double iw = std::min(mx2, p.x2[i]) - std::max(mx1, p.x1[i]);
      const double ih = std::min(my2, p.y2[i]) - std::max(my1, p.y1[i]);
      double s = p.score[i];
      if (iw > 0.0 && ih > 0.0) {
        const double inter = iw * ih;
        const double iou = inter / ((marea + p.area[i]) - inter);
        if (kMethod == 0) {
          if (iou >= iou_threshold) {
            s = s * (1.0 - iou);
          }
        } else {
          s = s * std::exp(-(iou * iou) * inv_sigma);
        }
      }
      if (!(s >= score_threshold)) {
        continue;  // dropped (NaN fails the test too)
      }
      p.x1[kept] = p.x1[i];
      p.y1[kept] = p.y1[i];
      p.x2[kept] = p.x2[i];
      p.y2[kept] = p.y2[i];
      p.area[kept] = p.area[i];
      p.score[kept] = s;
      p.index[kept] = p.index[i];
      if (next < 0 || before(s, p.index[kept], p.score[next], p.index[next])) {
        next = kept;
      }
      ++kept;
    }
    n = kept;
    best = next;
  }
}

template <typename box_t, typename score_t>
std::tuple<at::Tensor, at::Tensor> soft_nms_cpu_impl(
    const at::Tensor& boxes,
    const at::Tensor& scores,
    const at::Tensor& groups,
    int64_t method,
    double sigma,
    double iou_threshold,
    double score_threshold) {
  const int64_t n = boxes.size(0);
  const box_t* b = boxes.data_ptr<box_t>();
  const score_t* s = scores.data_ptr<score_t>();
  const int64_t* g = groups.numel() ? groups.data_ptr<int64_t>() : nullptr;

  // Candidates (every non-NaN score: the best of a group is output before thresholding),
  // ordered by group, then index.
  std::vector<int64_t> order;
  order.reserve(n);
  for (int64_t i = 0; i < n; ++i) {
    const double si = static_cast<double>(s[i]);
    // the text of INF_SCORES_MESSAGE in hnms/soft_nms.py
    TORCH_CHECK_VALUE(
        !std::isinf(si),
        "scores must be finite (or NaN, which is dropped), got +-inf; Soft-NMS multiplies scores "
        "by decay factors, so pass probabilities (e.g. scores.sigmoid() for logits)");
    if (si == si) {
      order.push_back(i);
    }
  }
  if (g != nullptr) {
    std::stable_sort(order.begin(), order.end(), [g](int64_t a, int64_t c) { return g[a] < g[c]; });
  }
  std::vector<std::pair<double, int64_t>> out;
  out.reserve(order.size());
  Pool pool;
  for (size_t start = 0; start < order.size();) {
    size_t end = start + 1;
    while (end < order.size() && (g == nullptr || g[order[end]] == g[order[start]])) {
      ++end;
    }
    pool = Pool();
    pool.reserve(end - start);
    for (size_t k = start; k < end; ++k) {
      const int64_t i = order[k];
      const double box[4] = {
          static_cast<double>(b[4 * i]), static_cast<double>(b[4 * i + 1]),
          static_cast<double>(b[4 * i + 2]), static_cast<double>(b[4 * i + 3])};
      pool.push(box, static_cast<double>(s[i]), i);
    }
    if (method == 0) {
      soft_nms_group<0>(pool, 1.0 / sigma, iou_threshold, score_threshold, &out);
    } else {
      soft_nms_group<1>(pool, 1.0 / sigma, iou_threshold, score_threshold, &out);
    }
    start = end;
  }
  // Merge the groups: decreasing decayed score, lower index first among equal scores.
  std::sort(out.begin(), out.end(), [](const auto& a, const auto& c) {
    return before(a.first, a.second, c.first, c.second);
  });
  at::Tensor keep = at::empty({static_cast<int64_t>(out.size())}, boxes.options().dtype(at::kLong));
  at::Tensor new_scores =
      at::empty({static_cast<int64_t>(out.size())}, scores.options().dtype(at::kDouble));
  int64_t* k = keep.data_ptr<int64_t>();
  double* ns = new_scores.data_ptr<double>();
  for (size_t i = 0; i < out.size(); ++i) {
    k[i] = out[i].second;
    ns[i] = out[i].first;
  }
  return {keep, new_scores.to(scores.scalar_type())};
}

}  // namespace

std::tuple<at::Tensor, at::Tensor> soft_nms_cpu(
    const at::Tensor& boxes,
    const at::Tensor& scores,
    const at::Tensor& groups,
    int64_t method,
    double sigma,
    double iou_threshold,
    double score_threshold) {
  check_soft_nms_args(boxes, scores, groups, method, sigma, iou_threshold, score_threshold);
  const at::Tensor b = boxes.contiguous();
  const at::Tensor s = scores.contiguous();
  const at::Tensor g = groups.contiguous();
  std::tuple<at::Tensor, at::Tensor> result;
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, b.scalar_type(), "soft_nms_b", [&] {
    using box_t = scalar_t;
    AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, s.scalar_type(), "soft_nms_s", [&] {
      result = soft_nms_cpu_impl<box_t, scalar_t>(
          b, s, g, method, sigma, iou_threshold, score_threshold);
    });
  });
  return result;
}

}  // namespace hnms
