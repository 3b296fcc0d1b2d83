// CPU kernels: IoUHash (Alg. 1) and hashing-based NMS (Alg. 2, cascaded as in Alg. 3).
//
// One O(N) pass per hash function with an open-addressing hash table (linear probing) that maps
// (i, j, m, n, group) to a compact array of cells; each cell keeps its best box. "Best" is a
// total order: higher score first, lower index among equal scores, so the result does not depend
// on the order in which boxes are visited.
#include <algorithm>
#include <limits>
#include <vector>

#include <ATen/Dispatch.h>

#include "hnms.h"
#include "hnms_hash.h"

namespace hnms {

namespace {

struct Cell {
  int64_t code[4];
  int64_t group;
  uint64_t best_key;
  int64_t best;
};

struct Candidate {
  uint64_t key;
  int64_t index;
};

// Higher score first; lower index first among equal scores.
inline bool better(uint64_t key_a, int64_t idx_a, uint64_t key_b, int64_t idx_b) {
  return key_a > key_b || (key_a == key_b && idx_a < idx_b);
}

// 1 / δ_i of Eqs. (4)/(8) memoised per i (direct-mapped): boxes of one image have few distinct
// sizes, so this removes exp() from almost every box. Computed by cell_inv_delta(): same bits.
class DeltaCache {
 public:
  DeltaCache(double s0, double log_alpha, double ratio)
      : s0_(s0), log_alpha_(log_alpha), ratio_(ratio) {
    for (auto& e : entries_) {
      e.i = kInvalidCode;
      e.delta = 0.0;
    }
  }
  double get(int64_t i) {
    Entry& e = entries_[static_cast<uint64_t>(i) & (kSize - 1)];
    if (e.i != i) {
      e.i = i;
      e.delta = cell_inv_delta(i, s0_, log_alpha_, ratio_);
    }
    return e.delta;
  }

 private:
  static constexpr size_t kSize = 64;
  struct Entry {
    int64_t i;
    double delta;
  };
  Entry entries_[kSize];
  double s0_, log_alpha_, ratio_;
};

// Alg. 1 with cached δ; same result as iou_hash_box().
inline bool iou_hash_box_cached(
    double x1,
    double y1,
    double x2,
    double y2,
    const HashParams& p,
    DeltaCache& wcache,
    DeltaCache& hcache,
    int64_t* code) {
  const double w = x2 - x1;
  const double h = y2 - y1;
  const double cx = (x1 + x2) * 0.5;
  const double cy = (y1 + y2) * 0.5;
  return size_index(w, cx, p.log_w0, p.inv_log_alpha, &code[0]) &&
      size_index(h, cy, p.log_h0, p.inv_log_alpha, &code[1]) &&
      offset_index(cx, wcache.get(code[0]), p.bx, &code[2]) &&
      offset_index(cy, hcache.get(code[1]), p.by, &code[3]);
}

// Stable LSD radix sort by decreasing key (8-bit digits; digits on which all keys agree, such as
// the low mantissa bytes of float32 scores, are skipped). Equal keys keep their input order.
void radix_sort_by_key_desc(std::vector<Candidate>& a) {
  const size_t n = a.size();
  if (n < 2) {
    return;
  }
  std::vector<size_t> hist(8 * 256, 0);
  for (const Candidate& c : a) {
    const uint64_t k = ~c.key;
    for (int d = 0; d < 8; ++d) {
      ++hist[d * 256 + ((k >> (8 * d)) & 255)];
    }
  }
  std::vector<Candidate> tmp(n);
  Candidate* src = a.data();
  Candidate* dst = tmp.data();
  for (int d = 0; d < 8; ++d) {
    size_t* h = hist.data() + d * 256;
    bool trivial = false;
    size_t offset = 0;
    for (int bucket = 0; bucket < 256; ++bucket) {
      trivial = trivial || h[bucket] == n;
      const size_t count = h[bucket];
      h[bucket] = offset;
      offset += count;
    }
    if (trivial) {
      continue;
    }
    for (size_t t = 0; t < n; ++t) {
      const uint64_t k = ~src[t].key;
      dst[h[(k >> (8 * d)) & 255]++] = src[t];
    }
    std::swap(src, dst);
  }
  if (src != a.data()) {
    std::copy(src, src + n, a.data());
  }
}

// One pass of Alg. 2 over the boxes `list[0..count)` (or 0..count when list is null). Appends the
// survivors to `out`: the best box of every cell, and every box that cannot be hashed.
// Boxes are processed in batches: hash a batch and prefetch its table slots, then prefetch the
// cells those slots point to, then update the cells in order. The prefetches hide the cache
// misses of the random table/cell accesses; the updates are the plain sequential Alg. 2.
template <typename box_t, typename score_t>
void hash_pass(
    const box_t* boxes,
    const score_t* scores,
    const int64_t* groups,
    const int64_t* list,
    int64_t count,
    const HashParams& p,
    std::vector<int32_t>& table,
    std::vector<Cell>& cells,
    std::vector<int64_t>& out) {
  size_t capacity = 16;
  while (capacity < 2 * static_cast<size_t>(count)) {
    capacity <<= 1;
  }
  const size_t mask = capacity - 1;
  table.assign(capacity, -1);
  cells.clear();
  cells.reserve(static_cast<size_t>(count));  // no reallocation: prefetched addresses stay valid
  DeltaCache wcache(p.w0, p.log_alpha, p.ratio);
  DeltaCache hcache(p.h0, p.log_alpha, p.ratio);

  constexpr int kBatch = 16;
  struct Pending {
    int64_t idx;
    int64_t code[4];
    int64_t group;
    uint64_t key;
    size_t slot;
  };
  Pending batch[kBatch];
  for (int64_t t0 = 0; t0 < count; t0 += kBatch) {
    const int64_t t1 = std::min<int64_t>(count, t0 + kBatch);
    int nb = 0;
    for (int64_t t = t0; t < t1; ++t) {  // 1. hash, prefetch the table slot
      const int64_t idx = list ? list[t] : t;
      const double s = to_double(scores[idx]);
      if (score_is_nan(s)) {
        continue;  // a NaN-scored box is never kept and suppresses nothing
      }
      const box_t* b = boxes + 4 * idx;
      Pending& q = batch[nb];
      if (!iou_hash_box_cached(
              to_double(b[0]), to_double(b[1]), to_double(b[2]), to_double(b[3]), p, wcache,
              hcache, q.code)) {
        out.push_back(idx);  // unhashable: its own cell (kept, suppresses nothing)
        continue;
      }
      q.idx = idx;
      q.group = groups ? groups[idx] : 0;
      q.key = score_key(s);
      q.slot = static_cast<size_t>(hash_code(q.code, q.group)) & mask;
      __builtin_prefetch(&table[q.slot]);
      ++nb;
    }
    for (int k = 0; k < nb; ++k) {  // 2. prefetch the cell the slot points to (a hint only)
      const int32_t c = table[batch[k].slot];
      if (c >= 0) {
        __builtin_prefetch(&cells.data()[c]);
      }
    }
    for (int k = 0; k < nb; ++k) {  // 3. Alg. 2: keep the best box of the cell
      const Pending& q = batch[k];
      size_t slot = q.slot;
      while (true) {
        const int32_t c = table[slot];
        if (c < 0) {
          table[slot] = static_cast<int32_t>(cells.size());
          cells.push_back(Cell{{q.code[0], q.code[1], q.code[2], q.code[3]}, q.group, q.key, q.idx});
          break;
        }
        Cell& cell = cells[c];
        if (cell.code[0] == q.code[0] && cell.code[1] == q.code[1] &&
            cell.code[2] == q.code[2] && cell.code[3] == q.code[3] && cell.group == q.group) {
          if (better(q.key, q.idx, cell.best_key, cell.best)) {
            cell.best_key = q.key;
            cell.best = q.idx;
          }
          break;
        }
        slot = (slot + 1) & mask;
      }
    }
  }
  for (const Cell& cell : cells) {
    out.push_back(cell.best);
  }
}

template <typename box_t, typename score_t>
at::Tensor hnms_cpu_impl(
    const at::Tensor& boxes,
    const at::Tensor& scores,
    const at::Tensor& groups,
    double alpha,
    int64_t num_hashes,
    double w0,
    double h0,
    double bx,
    double by) {
  const int64_t n = boxes.size(0);
  const box_t* b = boxes.data_ptr<box_t>();
  const score_t* s = scores.data_ptr<score_t>();
  const int64_t* g = groups.numel() > 0 ? groups.data_ptr<int64_t>() : nullptr;

  std::vector<int32_t> table;
  std::vector<Cell> cells;
  std::vector<int64_t> current;
  std::vector<int64_t> next;
  // Alg. 3: apply the K hash functions of Eq. (16) one after another to the survivors.
  for (int64_t k = 0; k < num_hashes; ++k) {
    const HashParams p = make_hash_params(alpha, w0, h0, bx, by, k, num_hashes);
    next.clear();
    if (k == 0) {
      hash_pass(b, s, g, nullptr, n, p, table, cells, next);
    } else {
      hash_pass(
          b, s, g, current.data(), static_cast<int64_t>(current.size()), p, table, cells, next);
    }
    current.swap(next);
  }

  // Survivors in increasing index order (one flag per box), then a stable sort by decreasing
  // score, so equal scores keep the lower index first. Inputs sorted by score (as after a top-k)
  // are already in this order, and the sort is skipped.
  std::vector<uint8_t> flag(static_cast<size_t>(n), 0);
  for (const int64_t idx : current) {
    flag[idx] = 1;
  }
  std::vector<Candidate> kept;
  kept.reserve(current.size());
  for (int64_t idx = 0; idx < n; ++idx) {
    if (flag[idx]) {
      kept.push_back(Candidate{score_key(to_double(s[idx])), idx});
    }
  }
  auto by_key_desc = [](const Candidate& a, const Candidate& c) { return a.key > c.key; };
  if (!std::is_sorted(kept.begin(), kept.end(), by_key_desc)) {
    radix_sort_by_key_desc(kept);
  }
  at::Tensor keep = at::empty({static_cast<int64_t>(kept.size())}, boxes.options().dtype(at::kLong));
  int64_t* out = keep.data_ptr<int64_t>();
  for (size_t t = 0; t < kept.size(); ++t) {
    out[t] = kept[t].index;
  }
  return keep;
}

} // namespace

at::Tensor iou_hash_cpu(
    const at::Tensor& boxes_,
    double alpha,
    double w0,
    double h0,
    double bx,
    double by) {
  TORCH_CHECK(boxes_.device().is_cpu(), "iou_hash_cpu: boxes must be a CPU tensor");
  TORCH_CHECK(
      boxes_.dim() == 2 && boxes_.size(1) == 4, "iou_hash: boxes must have shape [N, 4], got ",
      boxes_.sizes());
  TORCH_CHECK(alpha > 0.0 && alpha < 1.0, "iou_hash: alpha must be in (0, 1), got ", alpha);
  TORCH_CHECK(w0 > 0.0 && h0 > 0.0, "iou_hash: w0 and h0 must be > 0");
  const at::Tensor boxes = boxes_.contiguous();
  const int64_t n = boxes.size(0);
  at::Tensor codes = at::empty({n, 4}, boxes.options().dtype(at::kLong));
  int64_t* out = codes.data_ptr<int64_t>();
  const HashParams p = make_hash_params(alpha, w0, h0, bx, by, 0, 1);
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, boxes.scalar_type(), "iou_hash", [&] {
    const scalar_t* b = boxes.data_ptr<scalar_t>();
    for (int64_t t = 0; t < n; ++t) {
      iou_hash_box(
          to_double(b[4 * t]), to_double(b[4 * t + 1]), to_double(b[4 * t + 2]),
          to_double(b[4 * t + 3]), p, out + 4 * t);
    }
  });
  return codes;
}

at::Tensor hnms_cpu(
    const at::Tensor& boxes_,
    const at::Tensor& scores_,
    const at::Tensor& groups_,
    double alpha,
    int64_t num_hashes,
    double w0,
    double h0,
    double bx,
    double by) {
  check_hnms_args(boxes_, scores_, groups_, alpha, num_hashes);
  TORCH_CHECK(boxes_.device().is_cpu(), "hnms_cpu: boxes must be a CPU tensor");
  TORCH_CHECK(w0 > 0.0 && h0 > 0.0, "hnms: w0 and h0 must be > 0");
  TORCH_CHECK(
      boxes_.size(0) < std::numeric_limits<int32_t>::max() / 2,
      "hnms: at most 2^30 boxes per call are supported");
  const at::Tensor boxes = boxes_.contiguous();
  const at::Tensor scores = scores_.contiguous();
  const at::Tensor groups = groups_.contiguous();
  at::Tensor keep;
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, boxes.scalar_type(), "hnms_boxes", [&] {
    using box_t = scalar_t;
    AT_DISPATCH_FLOATING_TYPES_AND2(
        at::kHalf, at::kBFloat16, scores.scalar_type(), "hnms_scores", [&] {
          keep = hnms_cpu_impl<box_t, scalar_t>(
              boxes, scores, groups, alpha, num_hashes, w0, h0, bx, by);
        });
  });
  return keep;
}

} // namespace hnms
