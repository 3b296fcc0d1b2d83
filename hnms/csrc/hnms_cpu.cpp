// CPU kernels: IoUHash (Alg. 1) and hashing-based NMS (Alg. 2, cascaded as in Alg. 3).
//
// One O(N) pass per hash function. A box's code (i, j, m, n) is packed into 64 bits (always, for
// boxes of any realistic size and position) and looked up with its group in an open-addressing
// table (linear probing) whose slots (16 bytes, 24 with a group id) hold the best box of each
// cell; codes that do not pack go to a general map. "Best" is a total order: higher score first,
// lower index among equal scores, so the result does not depend on the order of the boxes.
//
// The codes are bit-identical to iou_hash_box() (hnms_hash.h), which the CUDA kernel and, up to
// the libm, the pure-torch reference compute: the size indices come from a per-bucket table
// (SizeIndexTable) that defers to the exact computation wherever the rounding of Eqs. (2)/(3)
// could come out differently.
#include <algorithm>
#include <cmath>
#include <limits>
#include <unordered_map>
#include <vector>

#include <ATen/Dispatch.h>

#include "hnms.h"
#include "hnms_hash.h"

namespace hnms {

namespace {

// ---------------------------------------------------------------------------------------------
// IoUHash, fast path

// Size index i of Eq. (2) (or j of Eq. (3)) and 1 / δ_i of Eqs. (1), (4) by table lookup instead
// of a log and an exp per box. Sizes are grouped in buckets by the top 19 bits of their double
// (sign, exponent and 7 mantissa bits: a relative width of 1/128); boxes of one image fall in a
// few hundred buckets. For a bucket, the real-valued v(s) + 1/2 = (log S0 - log s) / log α + 1/2
// (monotone in s) crosses at most one integer k, at s* = exp(log S0 - (k - 1/2) log α). Sizes
// below s* (1 - 1e-9) get i = k - 1, sizes above s* (1 + 1e-9) get k; there the computed
// v + 1/2 is at least 1e-9 |1 / log α| from k, while the rounding errors of log() and of the
// products are below 1e-12 |1 / log α|, so the result is what size_index() computes. Sizes
// inside that band, buckets with several crossings (α close to 1) and sizes that are not
// positive normal numbers return false: the caller then uses the exact size_index().
class SizeIndexTable {
 public:
  SizeIndexTable(double log_s0, const HashParams& p)
      : log_s0_(log_s0), log_alpha_(p.log_alpha), inv_log_alpha_(p.inv_log_alpha), ratio_(p.ratio) {
    for (Entry& e : entries_) {
      e.bucket = ~uint64_t(0);  // no valid bucket (positive sizes have a clear sign bit)
    }
  }

  // Whether the table decides size s; then *i and *inv_delta are size_index()'s and
  // cell_inv_delta()'s results.
  __attribute__((always_inline)) bool lookup(double s, int64_t* i, double* inv_delta) {
    uint64_t bits;
    std::memcpy(&bits, &s, sizeof(bits));
    const uint64_t bucket = bits >> kMantissaBits;
    Entry& e = entries_[bucket & (kEntries - 1)];
    if (e.bucket != bucket) {
      fill(e, bucket);
    }
    const bool above = s > e.band_hi;
    if (!(s < e.band_lo) && !above) {
      return false;  // inside the band around s* (or an undecided bucket)
    }
    *i = e.i + above;
    *inv_delta = above ? e.inv_delta_hi : e.inv_delta_lo;
    return true;
  }

 private:
  static constexpr int kMantissaBits = 45;  // 52 - 7: 128 buckets per octave
  static constexpr size_t kEntries = 1024;  // direct-mapped
  struct Entry {
    uint64_t bucket;
    int64_t i;       // index below the band
    double band_lo;  // s < band_lo: i; s > band_hi: i + 1; otherwise undecided
    double band_hi;
    double inv_delta_lo;  // 1 / δ_i
    double inv_delta_hi;  // 1 / δ_(i+1)
  };

  __attribute__((noinline)) void fill(Entry& e, uint64_t bucket) {
    e.bucket = bucket;
    e.band_lo = -std::numeric_limits<double>::infinity();  // undecided until proven otherwise
    e.band_hi = std::numeric_limits<double>::infinity();
    const uint64_t sign_exponent = bucket >> 7;
    if (sign_exponent == 0 || sign_exponent >= 2047) {
      return;  // zero, subnormal, inf/NaN or negative: the exact path decides
    }
    double lo;
    double hi;
    const uint64_t lo_bits = bucket << kMantissaBits;
    const uint64_t hi_bits = lo_bits | ((uint64_t(1) << kMantissaBits) - 1);
    std::memcpy(&lo, &lo_bits, sizeof(lo));
    std::memcpy(&hi, &hi_bits, sizeof(hi));
    // v + 1/2 over the bucket, widened by a margin far above its rounding error
    const double margin = 1e-7 * std::max(1.0, std::fabs(inv_log_alpha_));
    const double v_lo = (log_s0_ - std::log(lo)) * inv_log_alpha_ + 0.5;
    const double v_hi = (log_s0_ - std::log(hi)) * inv_log_alpha_ + 0.5;
    const double k_lo = std::floor(std::min(v_lo, v_hi) - margin);
    const double k_hi = std::floor(std::max(v_lo, v_hi) + margin);
    if (!(k_lo > -kMaxCode && k_hi < kMaxCode) || k_hi > k_lo + 1) {
      return;
    }
    // i grows with s when log α < 0 (always: α < 1)
    e.i = static_cast<int64_t>(k_lo);
    e.inv_delta_lo = cell_inv_delta(e.i, log_s0_, log_alpha_, ratio_);
    e.inv_delta_hi = cell_inv_delta(e.i + 1, log_s0_, log_alpha_, ratio_);
    if (!valid_inv_delta(e.inv_delta_lo) || !valid_inv_delta(e.inv_delta_hi)) {
      return;  // a cell size that over- or underflows: the exact path rejects the box
    }
    if (k_hi == k_lo) {
      e.band_lo = std::numeric_limits<double>::infinity();  // one index for the whole bucket
      return;
    }
    const double s_star = std::exp(log_s0_ - (k_hi - 0.5) * log_alpha_);
    e.band_lo = s_star * (1.0 - 1e-9);
    e.band_hi = s_star * (1.0 + 1e-9);
  }

  Entry entries_[kEntries];
  double log_s0_, log_alpha_, inv_log_alpha_, ratio_;
};

// Alg. 1 for one box with the result of iou_hash_box(): true and the code (i, j, m, n), or false
// and kInvalidCode for a box that cannot be hashed. Sizes go through SizeIndexTable; Eqs. (6)/(7)
// are computed as in iou_hash_box(); anything the table does not decide (and every invalid box)
// takes iou_hash_box()'s own path.
class FastHasher {
 public:
  explicit FastHasher(const HashParams& p) : p_(p), widths_(p.log_w0, p), heights_(p.log_h0, p) {}

  // inlined into the per-box loop (GCC would otherwise call it)
  __attribute__((always_inline)) bool hash(
      double x1, double y1, double x2, double y2, int64_t* code) {
    const double w = x2 - x1;
    const double h = y2 - y1;
    const double cx = (x1 + x2) * 0.5;
    const double cy = (y1 + y2) * 0.5;
    double inv_dw;
    double inv_dh;
    if (!(hnms_isfinite(cx) & hnms_isfinite(cy)) || !widths_.lookup(w, &code[0], &inv_dw) ||
        !heights_.lookup(h, &code[1], &inv_dh)) {
      return iou_hash_box(x1, y1, x2, y2, p_, code);
    }
    const double vm = cx * inv_dw - p_.bx + 0.5;  // Eq. (6) + 1/2
    const double vn = cy * inv_dh - p_.by + 0.5;  // Eq. (7) + 1/2
    // floor(v) is in (-2^52, 2^52) (round_code's range) for v in [1 - 2^52, 2^52); the few
    // values near the limits go to the exact path
    constexpr double kLow = 1.0 - kMaxCode;
    if (!((vm >= kLow) & (vm < kMaxCode) & (vn >= kLow) & (vn < kMaxCode))) {
      return iou_hash_box(x1, y1, x2, y2, p_, code);
    }
    code[2] = floor_int(vm);
    code[3] = floor_int(vn);
    return true;
  }

 private:
  // floor(x) for |x| < 2^52: bit-identical to std::floor, without the libm call.
  static int64_t floor_int(double x) {
    const int64_t t = static_cast<int64_t>(x);  // truncation
    return t - (static_cast<double>(t) > x);
  }

  const HashParams p_;
  SizeIndexTable widths_;
  SizeIndexTable heights_;
};

// ---------------------------------------------------------------------------------------------
// Cell tables

// Higher score first; lower index first among equal scores.
template <typename key_t>
inline bool better(key_t key_a, int64_t idx_a, key_t key_b, int64_t idx_b) {
  return key_a > key_b || (key_a == key_b && idx_a < idx_b);
}

// Order-preserving 32-bit key of a float score (non-NaN; -0 and +0 equal), for scores that are
// float32 or narrower; double scores use score_key() of hnms_hash.h.
inline uint32_t score_key32(float s) {
  s = s + 0.0f;
  uint32_t bits;
  std::memcpy(&bits, &s, sizeof(bits));
  return (bits >> 31) ? ~bits : (bits | 0x80000000u);
}

template <typename score_t>
struct ScoreKey {
  using type = uint32_t;
  static uint32_t of(score_t s) {
    return score_key32(static_cast<float>(s));
  }
};
template <>
struct ScoreKey<double> {
  using type = uint64_t;
  static uint64_t of(double s) {
    return score_key(s);
  }
};

// (i, j, m, n) packed into 64 bits: i and j in 12 bits, m and n in 20 bits (two's complement).
constexpr int kSizeBits = 12;
constexpr int kOffsetBits = 20;
inline bool pack_code(const int64_t* c, uint64_t* packed) {
  constexpr int64_t kSizeLim = int64_t(1) << (kSizeBits - 1);
  constexpr int64_t kOffsetLim = int64_t(1) << (kOffsetBits - 1);
  const bool fits = (c[0] >= -kSizeLim) & (c[0] < kSizeLim) & (c[1] >= -kSizeLim) &
                    (c[1] < kSizeLim) & (c[2] >= -kOffsetLim) & (c[2] < kOffsetLim) &
                    (c[3] >= -kOffsetLim) & (c[3] < kOffsetLim);
  constexpr uint64_t kSizeMask = (uint64_t(1) << kSizeBits) - 1;
  constexpr uint64_t kOffsetMask = (uint64_t(1) << kOffsetBits) - 1;
  *packed = (static_cast<uint64_t>(c[0]) & kSizeMask) |
            ((static_cast<uint64_t>(c[1]) & kSizeMask) << kSizeBits) |
            ((static_cast<uint64_t>(c[2]) & kOffsetMask) << (2 * kSizeBits)) |
            ((static_cast<uint64_t>(c[3]) & kOffsetMask) << (2 * kSizeBits + kOffsetBits));
  return fits;
}

// Slot of the cell table: the packed code, the group (only for batched calls: without it a slot
// of a float-scored call is 16 bytes) and the best box with its score key; best < 0: empty.
template <typename key_t, bool kGrouped>
struct Slot {
  uint64_t code;
  key_t key;
  int32_t group;
  int32_t best;
  int32_t group_id() const {
    return group;
  }
  void set(uint64_t c, key_t k, int32_t g, int32_t b) {
    code = c;
    key = k;
    group = g;
    best = b;
  }
};
template <typename key_t>
struct Slot<key_t, false> {
  uint64_t code;
  key_t key;
  int32_t best;
  int32_t group_id() const {
    return 0;
  }
  void set(uint64_t c, key_t k, int32_t /*g*/, int32_t b) {
    code = c;
    key = k;
    best = b;
  }
};

// Open-addressing table of cells keyed by (packed code, group). Starts at half the number of
// boxes (cells are usually far fewer than boxes) and doubles when 5/8 full.
template <typename key_t, bool kGrouped>
class CellTable {
 public:
  using SlotT = Slot<key_t, kGrouped>;

  void reset(int64_t num_boxes) {
    size_t capacity = 16;
    while (capacity < static_cast<size_t>(num_boxes) / 2) {
      capacity <<= 1;
    }
    allocate(capacity);
  }
  size_t mask() const {
    return mask_;
  }
  size_t home(uint64_t code, int32_t group) const {
    const uint64_t mixed =
        kGrouped ? code * 0x9e3779b97f4a7c15ULL + static_cast<uint32_t>(group) : code;
    return static_cast<size_t>(mix64(mixed)) & mask_;
  }
  SlotT& at(size_t slot) {
    return slots_[slot];
  }
  void prefetch(size_t slot) const {
    __builtin_prefetch(&slots_[slot]);
  }
  // Claims the empty slot `slot` for a new cell; returns true if the table grew (slots moved).
  bool claim(size_t slot, uint64_t code, key_t key, int32_t group, int32_t best) {
    slots_[slot].set(code, key, group, best);
    if (++used_ * 8 <= slots_.size() * 5) {
      return false;
    }
    std::vector<SlotT> old;
    old.swap(slots_);
    allocate(old.size() * 2);
    used_ = 0;
    for (const SlotT& e : old) {
      if (e.best >= 0) {
        size_t t = home(e.code, e.group_id());
        while (slots_[t].best >= 0) {
          t = (t + 1) & mask_;
        }
        slots_[t] = e;
        ++used_;
      }
    }
    return true;
  }
  // Appends the best box of every cell to `out` (branch-free: cells are randomly spread).
  void append_best(std::vector<int64_t>& out) const {
    const size_t start = out.size();
    out.resize(start + used_ + 1);  // one spare entry for the unconditional store
    int64_t* dst = out.data() + start;
    size_t count = 0;
    for (const SlotT& e : slots_) {
      dst[count] = e.best;
      count += e.best >= 0;
    }
    out.resize(start + count);
  }

 private:
  void allocate(size_t capacity) {
    SlotT empty{};
    empty.best = -1;
    slots_.assign(capacity, empty);
    mask_ = capacity - 1;
    used_ = 0;
  }
  std::vector<SlotT> slots_;
  size_t mask_ = 0;
  size_t used_ = 0;
};

// Cells whose code does not pack or whose group does not fit in 32 bits (rare): a general map.
struct WideKey {
  int64_t code[4];
  int64_t group;
  bool operator==(const WideKey& o) const {
    return code[0] == o.code[0] && code[1] == o.code[1] && code[2] == o.code[2] &&
           code[3] == o.code[3] && group == o.group;
  }
};
struct WideKeyHash {
  size_t operator()(const WideKey& k) const {
    return static_cast<size_t>(hash_code(k.code, k.group));
  }
};

// One pass of Alg. 2 over the boxes `list[0..count)` (or 0..count when list is null). Appends the
// survivors to `out`: the best box of every cell, and every box that cannot be hashed.
// Boxes are processed in batches: hash a batch and prefetch its home slots, then update the
// cells in order (the plain sequential Alg. 2); the prefetches hide the random-access misses.
template <bool kGrouped, typename box_t, typename score_t>
void hash_pass(
    const box_t* boxes,
    const score_t* scores,
    const int64_t* groups,
    const int64_t* list,
    int64_t count,
    const HashParams& p,
    CellTable<typename ScoreKey<score_t>::type, kGrouped>& table,
    std::vector<int64_t>& out) {
  using key_t = typename ScoreKey<score_t>::type;
  table.reset(count);
  std::unordered_map<WideKey, int64_t, WideKeyHash> wide;
  FastHasher hasher(p);

  constexpr int kBatch = 16;
  struct Pending {
    uint64_t code;
    size_t slot;
    key_t key;
    int32_t idx;
    int32_t group;
  };
  Pending batch[kBatch];
  for (int64_t t0 = 0; t0 < count; t0 += kBatch) {
    const int64_t t1 = std::min<int64_t>(count, t0 + kBatch);
    int nb = 0;
    for (int64_t t = t0; t < t1; ++t) {  // 1. hash, prefetch the home slot
      const int64_t idx = list ? list[t] : t;
      const score_t s = scores[idx];
      if (score_is_nan(to_double(s))) {
        continue;  // a NaN-scored box is never kept and suppresses nothing
      }
      const box_t* b = boxes + 4 * idx;
      int64_t code[4];
      if (!hasher.hash(to_double(b[0]), to_double(b[1]), to_double(b[2]), to_double(b[3]), code)) {
        out.push_back(idx);  // unhashable: its own cell (kept, suppresses nothing)
        continue;
      }
      const key_t key = ScoreKey<score_t>::of(s);
      const int64_t group = kGrouped ? groups[idx] : 0;
      Pending& q = batch[nb];
      if (!pack_code(code, &q.code) || group != static_cast<int32_t>(group)) {
        const WideKey wk{{code[0], code[1], code[2], code[3]}, group};
        auto it = wide.emplace(wk, idx).first;
        if (better(key, idx, ScoreKey<score_t>::of(scores[it->second]), it->second)) {
          it->second = idx;
        }
        continue;
      }
      q.idx = static_cast<int32_t>(idx);
      q.group = static_cast<int32_t>(group);
      q.key = key;
      q.slot = table.home(q.code, q.group);
      table.prefetch(q.slot);
      ++nb;
    }
    for (int k = 0; k < nb; ++k) {  // 2. Alg. 2: keep the best box of the cell
      const Pending& q = batch[k];
      size_t slot = q.slot;
      while (true) {
        auto& e = table.at(slot);
        if (e.best < 0) {
          if (table.claim(slot, q.code, q.key, q.group, q.idx)) {  // grown: new home slots
            for (int r = k + 1; r < nb; ++r) {
              batch[r].slot = table.home(batch[r].code, batch[r].group);
            }
          }
          break;
        }
        if (e.code == q.code && e.group_id() == q.group) {
          if (better(q.key, q.idx, e.key, e.best)) {
            e.key = q.key;
            e.best = q.idx;
          }
          break;
        }
        slot = (slot + 1) & table.mask();
      }
    }
  }
  table.append_best(out);
  for (const auto& kv : wide) {
    out.push_back(kv.second);
  }
}

// Stable LSD radix sort by decreasing key (11-bit digits; digits on which all keys agree, such as
// the low mantissa bits of float scores widened to double, are skipped). Equal keys keep their
// input order.
template <typename key_t>
struct Candidate {
  key_t key;
  int32_t index;
};

template <typename key_t>
void radix_sort_by_key_desc(std::vector<Candidate<key_t>>& a) {
  constexpr int kBits = 11;
  constexpr int kBuckets = 1 << kBits;
  constexpr int kDigits = (8 * sizeof(key_t) + kBits - 1) / kBits;
  const size_t n = a.size();
  if (n < 2) {
    return;
  }
  std::vector<size_t> hist(kDigits * kBuckets, 0);
  for (const auto& c : a) {
    const key_t k = static_cast<key_t>(~c.key);
    for (int d = 0; d < kDigits; ++d) {
      ++hist[d * kBuckets + ((k >> (kBits * d)) & (kBuckets - 1))];
    }
  }
  std::vector<Candidate<key_t>> tmp(n);
  Candidate<key_t>* src = a.data();
  Candidate<key_t>* dst = tmp.data();
  for (int d = 0; d < kDigits; ++d) {
    size_t* h = hist.data() + d * kBuckets;
    bool trivial = false;
    size_t offset = 0;
    for (int bucket = 0; bucket < kBuckets; ++bucket) {
      trivial = trivial || h[bucket] == n;
      const size_t c = h[bucket];
      h[bucket] = offset;
      offset += c;
    }
    if (trivial) {
      continue;
    }
    for (size_t t = 0; t < n; ++t) {
      const key_t k = static_cast<key_t>(~src[t].key);
      dst[h[(k >> (kBits * d)) & (kBuckets - 1)]++] = src[t];
    }
    std::swap(src, dst);
  }
  if (src != a.data()) {
    std::copy(src, src + n, a.data());
  }
}

// Alg. 3: the K hash functions of Eq. (16) applied one after another to the survivors.
template <bool kGrouped, typename box_t, typename score_t>
void cascade(
    const box_t* b,
    const score_t* s,
    const int64_t* g,
    int64_t n,
    double alpha,
    int64_t num_hashes,
    double w0,
    double h0,
    double bx,
    double by,
    std::vector<int64_t>& survivors) {
  CellTable<typename ScoreKey<score_t>::type, kGrouped> table;
  std::vector<int64_t> next;
  for (int64_t k = 0; k < num_hashes; ++k) {
    const HashParams p = make_hash_params(alpha, w0, h0, bx, by, k, num_hashes);
    next.clear();
    if (k == 0) {
      hash_pass<kGrouped>(b, s, g, nullptr, n, p, table, next);
    } else {
      hash_pass<kGrouped>(
          b, s, g, survivors.data(), static_cast<int64_t>(survivors.size()), p, table, next);
    }
    survivors.swap(next);
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
  using key_t = typename ScoreKey<score_t>::type;
  const int64_t n = boxes.size(0);
  const box_t* b = boxes.data_ptr<box_t>();
  const score_t* s = scores.data_ptr<score_t>();
  const int64_t* g = groups.numel() > 0 ? groups.data_ptr<int64_t>() : nullptr;

  std::vector<int64_t> current;
  if (g != nullptr) {
    cascade<true>(b, s, g, n, alpha, num_hashes, w0, h0, bx, by, current);
  } else {
    cascade<false>(b, s, g, n, alpha, num_hashes, w0, h0, bx, by, current);
  }

  // Survivors in increasing index order (one flag per box), then a stable sort by decreasing
  // score, so equal scores keep the lower index first. Inputs sorted by score (as after a top-k)
  // are already in this order, and the sort is skipped.
  std::vector<uint8_t> flag(static_cast<size_t>(n), 0);
  for (const int64_t idx : current) {
    flag[idx] = 1;
  }
  std::vector<Candidate<key_t>> kept(current.size() + 1);  // + 1: unconditional store
  size_t num_kept = 0;
  for (int64_t idx = 0; idx < n; ++idx) {  // branch-free: survivors are randomly spread
    kept[num_kept] = Candidate<key_t>{ScoreKey<score_t>::of(s[idx]), static_cast<int32_t>(idx)};
    num_kept += flag[idx];
  }
  kept.resize(num_kept);
  auto by_key_desc = [](const Candidate<key_t>& a, const Candidate<key_t>& c) {
    return a.key > c.key;
  };
  if (!std::is_sorted(kept.begin(), kept.end(), by_key_desc)) {
    radix_sort_by_key_desc(kept);
  }
  at::Tensor keep =
      at::empty({static_cast<int64_t>(kept.size())}, boxes.options().dtype(at::kLong));
  int64_t* out = keep.data_ptr<int64_t>();
  for (size_t t = 0; t < kept.size(); ++t) {
    out[t] = kept[t].index;
  }
  return keep;
}

}  // namespace

at::Tensor iou_hash_cpu(
    const at::Tensor& boxes_, double alpha, double w0, double h0, double bx, double by) {
  TORCH_CHECK(boxes_.device().is_cpu(), "iou_hash_cpu: boxes must be a CPU tensor");
  TORCH_CHECK(
      boxes_.dim() == 2 && boxes_.size(1) == 4, "iou_hash: boxes must have shape [N, 4], got ",
      boxes_.sizes());
  check_hash_params("iou_hash", alpha, w0, h0, bx, by, 1);
  const at::Tensor boxes = boxes_.contiguous();
  const int64_t n = boxes.size(0);
  at::Tensor codes = at::empty({n, 4}, boxes.options().dtype(at::kLong));
  int64_t* out = codes.data_ptr<int64_t>();
  FastHasher hasher(make_hash_params(alpha, w0, h0, bx, by, 0, 1));
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, boxes.scalar_type(), "iou_hash", [&] {
    const scalar_t* b = boxes.data_ptr<scalar_t>();
    for (int64_t t = 0; t < n; ++t) {
      hasher.hash(
          to_double(b[4 * t]), to_double(b[4 * t + 1]), to_double(b[4 * t + 2]),
          to_double(b[4 * t + 3]), out + 4 * t);
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
  check_hnms_tensors("hnms", boxes_, scores_, groups_);
  check_hash_params("hnms", alpha, w0, h0, bx, by, num_hashes);
  TORCH_CHECK(boxes_.device().is_cpu(), "hnms_cpu: boxes must be a CPU tensor");
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

}  // namespace hnms
