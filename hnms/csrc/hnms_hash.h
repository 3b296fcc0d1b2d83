// IoUHash (Alg. 1, Eqs. 1-9) and the score order shared by the CPU and CUDA kernels.
//
// Everything here is computed in double precision from boxes given as (x1, y1, x2, y2), with the
// same operations in the same order as the pure-torch reference (hnms/reference.py), so that the
// three backends produce the same codes and the same keep set.
//
// Rounding: every product and sum below must be rounded on its own, as IEEE double arithmetic
// does on the CPU and as the reference's separate torch ops do. A compiler that contracts
// a * b + c into one fused multiply-add (one rounding instead of two) changes the last bit of
// v + 1/2 and so, at a cell border, the code (floor(v + 1/2) of Eqs. 2, 3, 6, 7). nvcc contracts
// by default (-fmad=true), so the CUDA kernel's codes could differ from the CPU kernel's at
// borders (x * (1/δ) - b of Eq. 6: tests/hnms/conftest.py builds such boxes); setup.py therefore
// builds the CUDA kernel with -fmad=false and the C++ kernels with -ffp-contract=off (GCC
// contracts too when the target has FMA, e.g. -march=native or aarch64). Anyone compiling these
// files with their own flags must keep them.
#pragma once

#include <cmath>
#include <cstdint>
#include <cstring>

#if defined(__CUDACC__) || defined(__HIPCC__)
#define HNMS_HD __host__ __device__ __forceinline__
#else
#define HNMS_HD inline
#endif

namespace hnms {

// Code value of a box that cannot be hashed (non-finite coordinates, width or height <= 0, a
// cell size W_i or H_i that is not a positive finite double, or a code component that is not in
// (-2^52, 2^52)). Such a box is its own cell.
constexpr int64_t kInvalidCode = INT64_MIN;
// |code component| must stay below this. A double of magnitude >= 2^52 has no fractional bits,
// so v + 1/2 of Eqs. (2), (3), (6), (7) is already rounded before floor() sees it, and the code
// of a box is decided by rounding errors of x / δ (one ulp of the divisor changes it by ~1): two
// touching boxes one ulp wide (IoU 0) can share a cell, and backends whose exp() differs in the
// last bit give different codes. Below 2^52, v + 1/2 keeps at least one fractional bit.
constexpr double kMaxCode = 4503599627370496.0;  // 2^52

// Parameters of one IoUHash function (Alg. 1). Logarithms are computed once per call on the host.
struct HashParams {
  double log_alpha;      // log(α), α in (0, 1)
  double inv_log_alpha;  // 1 / log(α)
  double log_w0;         // log(W0)
  double log_h0;         // log(H0)
  double w0;
  double h0;
  double bx;
  double by;
  double ratio;  // (1 - α) / (1 + α) of Eqs. 4 and 8
};

// Parameters of the k-th of K hash functions, Eq. (16):
//   log W0^(k) = log W0 - log(α) k / K,  b_x^(k) = b_x + k / K  (and likewise for H0, b_y).
// With W0 = H0 = 1 and b_x = b_y = 0 this is exactly Eq. (16).
inline HashParams make_hash_params(
    double alpha, double w0, double h0, double bx, double by, int64_t k, int64_t num_hashes) {
  HashParams p;
  const double frac = static_cast<double>(k) / static_cast<double>(num_hashes);
  const double scale = std::pow(alpha, -frac);
  p.w0 = w0 * scale;
  p.h0 = h0 * scale;
  p.bx = bx + frac;
  p.by = by + frac;
  p.log_alpha = std::log(alpha);
  p.inv_log_alpha = 1.0 / p.log_alpha;
  p.log_w0 = std::log(p.w0);
  p.log_h0 = std::log(p.h0);
  p.ratio = (1.0 - alpha) / (1.0 + alpha);
  return p;
}

HNMS_HD bool hnms_isfinite(double v) {
  return (v - v) == 0.0;  // false for +-inf and NaN
}

// round() of Eqs. 2, 3, 6, 7: floor(v + 1/2), so that the offset to the cell centre lies in
// [-1/2, 1/2) as in Eq. (15). Returns false when v is not finite or the code is not in
// (-2^52, 2^52) (see kMaxCode).
HNMS_HD bool round_code(double v, int64_t* out) {
  const double r = floor(v + 0.5);
  if (!(r > -kMaxCode && r < kMaxCode)) {
    return false;  // also catches NaN
  }
  *out = static_cast<int64_t>(r);
  return true;
}

// Quantise one dimension: size s (width or height) and centre c.
//   Eq. (2)/(3):  i = round((log W0 - log w) / log α)
//   Eq. (1)/(9):  W_i = W0 / α^i = exp(log W0 - i log α)  (in log space: W0 * exp(-i log α)
//                 overflowed for a subnormal W0, whose W_i is an ordinary size)
//   Eq. (4)/(8):  δ_i = W_i (1 - α) / (1 + α)
//   Eq. (6)/(7):  m = round(x / δ_i - b_x)
// The divisions are multiplications by the reciprocals 1 / log α and 1 / δ_i (the reference
// does the same). Split in three steps so that the CPU kernel can cache 1 / δ_i per i.
HNMS_HD bool size_index(
    double size, double center, double log_s0, double inv_log_alpha, int64_t* i) {
  if (!(size > 0.0) || !hnms_isfinite(size) || !hnms_isfinite(center)) {
    return false;
  }
  return round_code((log_s0 - log(size)) * inv_log_alpha, i);  // Eq. (2)/(3)
}

// 1 / δ_i
HNMS_HD double cell_inv_delta(int64_t i, double log_s0, double log_alpha, double ratio) {
  const double s_i = exp(log_s0 - static_cast<double>(i) * log_alpha);  // Eq. (1)/(9)
  return 1.0 / (s_i * ratio);                                           // Eq. (4)/(8)
}

// Whether 1 / δ_i describes a real cell: positive and finite. A cell size W_i that overflows to
// inf (a box about 1e308 wide) gives 1 / δ_i = 0, and every centre would get m = round(-b_x);
// one that underflows to 0 gives inf. Such boxes cannot be hashed.
HNMS_HD bool valid_inv_delta(double inv_delta) {
  return inv_delta > 0.0 && hnms_isfinite(inv_delta);
}

HNMS_HD bool offset_index(double center, double inv_delta, double b, int64_t* m) {
  return round_code(center * inv_delta - b, m);  // Eq. (6)/(7)
}

HNMS_HD bool hash_dim(
    double size,
    double center,
    double log_s0,
    double b,
    double log_alpha,
    double inv_log_alpha,
    double ratio,
    int64_t* size_code,
    int64_t* offset_code) {
  int64_t i;
  int64_t m;
  if (!size_index(size, center, log_s0, inv_log_alpha, &i)) {
    return false;
  }
  const double inv_delta = cell_inv_delta(i, log_s0, log_alpha, ratio);
  if (!valid_inv_delta(inv_delta) || !offset_index(center, inv_delta, b, &m)) {
    return false;
  }
  *size_code = i;
  *offset_code = m;
  return true;
}

// Alg. 1: code (i, j, m, n) of the box (x1, y1, x2, y2). Returns false (and writes kInvalidCode)
// when the box cannot be hashed.
HNMS_HD bool iou_hash_box(
    double x1, double y1, double x2, double y2, const HashParams& p, int64_t* code) {
  const double w = x2 - x1;
  const double h = y2 - y1;
  const double cx = (x1 + x2) * 0.5;
  const double cy = (y1 + y2) * 0.5;
  if (hash_dim(w, cx, p.log_w0, p.bx, p.log_alpha, p.inv_log_alpha, p.ratio, &code[0], &code[2]) &&
      hash_dim(h, cy, p.log_h0, p.by, p.log_alpha, p.inv_log_alpha, p.ratio, &code[1], &code[3])) {
    return true;
  }
  code[0] = code[1] = code[2] = code[3] = kInvalidCode;
  return false;
}

// Order-preserving map of a double score to an unsigned 64-bit key: a < b <=> key(a) < key(b)
// for all non-NaN doubles (including +-inf); -0.0 and +0.0 get the same key.
HNMS_HD uint64_t score_key(double s) {
  s = s + 0.0;  // -0.0 -> +0.0
  uint64_t bits;
  memcpy(&bits, &s, sizeof(bits));
  return (bits >> 63) ? ~bits : (bits | 0x8000000000000000ULL);
}

HNMS_HD bool score_is_nan(double s) {
  return s != s;
}

// 64-bit mix of a code (i, j, m, n) and a group id (class/level), for open addressing.
HNMS_HD uint64_t mix64(uint64_t x) {
  x ^= x >> 33;
  x *= 0xff51afd7ed558ccdULL;
  x ^= x >> 33;
  x *= 0xc4ceb9fe1a85ec53ULL;
  x ^= x >> 33;
  return x;
}

HNMS_HD uint64_t hash_code(const int64_t* code, int64_t group) {
  // polynomial combination with odd multipliers, then one finalising mix (bucket choice only:
  // cells are always compared on the full code)
  uint64_t h = static_cast<uint64_t>(group);
  h = h * 0x9e3779b97f4a7c15ULL + static_cast<uint64_t>(code[0]);
  h = h * 0xbf58476d1ce4e5b9ULL + static_cast<uint64_t>(code[1]);
  h = h * 0x94d049bb133111ebULL + static_cast<uint64_t>(code[2]);
  h = h * 0xd6e8feb86659fd93ULL + static_cast<uint64_t>(code[3]);
  return mix64(h);
}

template <typename T>
HNMS_HD double to_double(T v) {
  return static_cast<double>(static_cast<float>(v));
}
template <>
HNMS_HD double to_double<double>(double v) {
  return v;
}
template <>
HNMS_HD double to_double<float>(float v) {
  return static_cast<double>(v);
}

}  // namespace hnms
