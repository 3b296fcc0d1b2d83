// CUDA kernels: IoUHash (Alg. 1) and hashing-based NMS (Alg. 2, cascaded as in Alg. 3).
//
// No sort on the grouping path (unlike the paper's App. B, which groups codes with torch.unique).
// Per hash function:
//   1. hash_kernel:   code (i, j, m, n) and order-preserving 64-bit score key of every active box.
//   2. insert_kernel: open-addressing table in device memory; a slot is claimed with atomicCAS by
//                     the first box of a cell, later boxes of the same cell find it by comparing
//                     their code with the claimant's code (written by the previous kernel).
//   3. max_kernel:    atomicMax of the score key per cell (exact for every float, also negative
//                     logits and +-inf; no score-to-integer rounding).
//   4. argmin_kernel: atomicMin of the index among the boxes whose key equals the cell maximum,
//                     so ties keep the lowest index, deterministically.
//   5. select_kernel: a box survives if it is its cell's winner or cannot be hashed.
// The survivors (K of them) are then ordered by decreasing score with a stable sort of K keys,
// which the API requires; the N boxes are never sorted.
//
// Build with -fmad=false (setup.py does): nvcc would otherwise contract the a * b + c of the hash
// arithmetic (hnms_hash.h) into fused multiply-adds, which round once instead of twice, and the
// codes of boxes at a cell border would differ from the CPU kernel's and the reference's.
#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/cuda/CUDAContext.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>

#include <algorithm>

#include "hnms.h"
#include "hnms_hash.h"

namespace hnms {

namespace {

constexpr int kThreads = 256;
constexpr unsigned long long kEmpty = 0xFFFFFFFFFFFFFFFFULL;

enum : uint8_t { kDropped = 0, kHashed = 1, kPassThrough = 2 };

inline int num_blocks(int64_t n) {
  const int64_t blocks = (n + kThreads - 1) / kThreads;
  return static_cast<int>(std::max<int64_t>(1, std::min<int64_t>(blocks, 65535)));
}

template <typename box_t>
__global__ void iou_hash_kernel(int64_t n, const box_t* boxes, HashParams p, int64_t* codes) {
  for (int64_t idx = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; idx < n;
       idx += static_cast<int64_t>(blockDim.x) * gridDim.x) {
    const box_t* b = boxes + 4 * idx;
    iou_hash_box(
        to_double(b[0]), to_double(b[1]), to_double(b[2]), to_double(b[3]), p, codes + 4 * idx);
  }
}

// Stage 0: every box with a non-NaN score is active.
template <typename score_t>
__global__ void init_active_kernel(int64_t n, const score_t* scores, uint8_t* active) {
  for (int64_t idx = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; idx < n;
       idx += static_cast<int64_t>(blockDim.x) * gridDim.x) {
    active[idx] = score_is_nan(to_double(scores[idx])) ? 0 : 1;
  }
}

template <typename box_t, typename score_t>
__global__ void hash_kernel(
    int64_t n,
    const box_t* boxes,
    const score_t* scores,
    const uint8_t* active,
    HashParams p,
    int64_t* codes,
    unsigned long long* keys,
    uint8_t* state) {
  for (int64_t idx = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; idx < n;
       idx += static_cast<int64_t>(blockDim.x) * gridDim.x) {
    if (!active[idx]) {
      state[idx] = kDropped;
      continue;
    }
    const box_t* b = boxes + 4 * idx;
    const bool ok = iou_hash_box(
        to_double(b[0]), to_double(b[1]), to_double(b[2]), to_double(b[3]), p, codes + 4 * idx);
    state[idx] = ok ? kHashed : kPassThrough;
    keys[idx] = score_key(to_double(scores[idx]));
  }
}

__device__ __forceinline__ bool same_cell(
    const int64_t* codes, const int64_t* groups, int64_t a, int64_t b) {
  const int64_t* ca = codes + 4 * a;
  const int64_t* cb = codes + 4 * b;
  return ca[0] == cb[0] && ca[1] == cb[1] && ca[2] == cb[2] && ca[3] == cb[3] &&
         (groups == nullptr || groups[a] == groups[b]);
}

__global__ void insert_kernel(
    int64_t n,
    const int64_t* codes,
    const int64_t* groups,
    const uint8_t* state,
    unsigned long long* table,
    unsigned long long mask,
    int64_t* slot_of) {
  for (int64_t idx = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; idx < n;
       idx += static_cast<int64_t>(blockDim.x) * gridDim.x) {
    if (state[idx] != kHashed) {
      continue;
    }
    const int64_t group = groups ? groups[idx] : 0;
    unsigned long long slot = hash_code(codes + 4 * idx, group) & mask;
    while (true) {
      const unsigned long long prev =
          atomicCAS(table + slot, kEmpty, static_cast<unsigned long long>(idx));
      if (prev == kEmpty || same_cell(codes, groups, static_cast<int64_t>(prev), idx)) {
        slot_of[idx] = static_cast<int64_t>(slot);
        break;
      }
      slot = (slot + 1) & mask;
    }
  }
}

__global__ void max_kernel(
    int64_t n,
    const uint8_t* state,
    const int64_t* slot_of,
    const unsigned long long* keys,
    unsigned long long* best_key) {
  for (int64_t idx = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; idx < n;
       idx += static_cast<int64_t>(blockDim.x) * gridDim.x) {
    if (state[idx] == kHashed) {
      atomicMax(best_key + slot_of[idx], keys[idx]);
    }
  }
}

__global__ void argmin_kernel(
    int64_t n,
    const uint8_t* state,
    const int64_t* slot_of,
    const unsigned long long* keys,
    const unsigned long long* best_key,
    unsigned long long* best_idx) {
  for (int64_t idx = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; idx < n;
       idx += static_cast<int64_t>(blockDim.x) * gridDim.x) {
    if (state[idx] == kHashed && keys[idx] == best_key[slot_of[idx]]) {
      atomicMin(best_idx + slot_of[idx], static_cast<unsigned long long>(idx));
    }
  }
}

__global__ void select_kernel(
    int64_t n,
    const uint8_t* state,
    const int64_t* slot_of,
    const unsigned long long* best_idx,
    uint8_t* active) {
  for (int64_t idx = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; idx < n;
       idx += static_cast<int64_t>(blockDim.x) * gridDim.x) {
    const uint8_t s = state[idx];
    active[idx] = (s == kPassThrough) ||
                  (s == kHashed && best_idx[slot_of[idx]] == static_cast<unsigned long long>(idx));
  }
}

// Signed, order-preserving version of the score key, for the final stable sort.
__global__ void signed_key_kernel(
    int64_t k, const int64_t* kept, const unsigned long long* keys, int64_t* out) {
  for (int64_t t = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; t < k;
       t += static_cast<int64_t>(blockDim.x) * gridDim.x) {
    out[t] = static_cast<int64_t>(keys[kept[t]] ^ 0x8000000000000000ULL);
  }
}

}  // namespace

at::Tensor iou_hash_cuda(
    const at::Tensor& boxes_, double alpha, double w0, double h0, double bx, double by) {
  TORCH_CHECK(boxes_.is_cuda(), "iou_hash_cuda: boxes must be a CUDA tensor");
  TORCH_CHECK(
      boxes_.dim() == 2 && boxes_.size(1) == 4, "iou_hash: boxes must have shape [N, 4], got ",
      boxes_.sizes());
  check_hash_params("iou_hash", alpha, w0, h0, bx, by, 1);
  at::cuda::CUDAGuard device_guard(boxes_.device());
  const at::Tensor boxes = boxes_.contiguous();
  const int64_t n = boxes.size(0);
  at::Tensor codes = at::empty({n, 4}, boxes.options().dtype(at::kLong));
  if (n == 0) {
    return codes;
  }
  const HashParams p = make_hash_params(alpha, w0, h0, bx, by, 0, 1);
  cudaStream_t stream = at::cuda::getCurrentCUDAStream();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, boxes.scalar_type(), "iou_hash", [&] {
    iou_hash_kernel<scalar_t><<<num_blocks(n), kThreads, 0, stream>>>(
        n, boxes.data_ptr<scalar_t>(), p, codes.data_ptr<int64_t>());
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
  return codes;
}

at::Tensor hnms_cuda(
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
  TORCH_CHECK(boxes_.is_cuda(), "hnms_cuda: boxes must be a CUDA tensor");
  at::cuda::CUDAGuard device_guard(boxes_.device());
  const at::Tensor boxes = boxes_.contiguous();
  const at::Tensor scores = scores_.contiguous();
  const at::Tensor groups = groups_.contiguous();
  const int64_t n = boxes.size(0);
  const auto long_opts = boxes.options().dtype(at::kLong);
  if (n == 0) {
    return at::empty({0}, long_opts);
  }
  const int64_t* g = groups.numel() > 0 ? groups.data_ptr<int64_t>() : nullptr;

  int64_t capacity = 16;
  while (capacity < 2 * n) {
    capacity <<= 1;
  }
  const unsigned long long mask = static_cast<unsigned long long>(capacity - 1);
  at::Tensor active = at::empty({n}, boxes.options().dtype(at::kByte));
  at::Tensor state = at::empty({n}, boxes.options().dtype(at::kByte));
  at::Tensor codes = at::empty({n, 4}, long_opts);
  at::Tensor keys = at::empty({n}, long_opts);
  at::Tensor slot_of = at::empty({n}, long_opts);
  at::Tensor table = at::empty({capacity}, long_opts);
  at::Tensor best_key = at::empty({capacity}, long_opts);
  at::Tensor best_idx = at::empty({capacity}, long_opts);
  auto* keys_p = reinterpret_cast<unsigned long long*>(keys.data_ptr<int64_t>());
  auto* table_p = reinterpret_cast<unsigned long long*>(table.data_ptr<int64_t>());
  auto* best_key_p = reinterpret_cast<unsigned long long*>(best_key.data_ptr<int64_t>());
  auto* best_idx_p = reinterpret_cast<unsigned long long*>(best_idx.data_ptr<int64_t>());
  uint8_t* active_p = active.data_ptr<uint8_t>();
  uint8_t* state_p = state.data_ptr<uint8_t>();
  int64_t* slot_p = slot_of.data_ptr<int64_t>();
  cudaStream_t stream = at::cuda::getCurrentCUDAStream();
  const int blocks = num_blocks(n);

  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, boxes.scalar_type(), "hnms_boxes", [&] {
    using box_t = scalar_t;
    AT_DISPATCH_FLOATING_TYPES_AND2(
        at::kHalf, at::kBFloat16, scores.scalar_type(), "hnms_scores", [&] {
          using score_t = scalar_t;
          init_active_kernel<score_t>
              <<<blocks, kThreads, 0, stream>>>(n, scores.data_ptr<score_t>(), active_p);
          C10_CUDA_KERNEL_LAUNCH_CHECK();
          // Alg. 3: the K hash functions of Eq. (16), each on the survivors of the previous one.
          for (int64_t k = 0; k < num_hashes; ++k) {
            const HashParams p = make_hash_params(alpha, w0, h0, bx, by, k, num_hashes);
            table.fill_(-1);     // kEmpty
            best_key.zero_();    // below the key of every non-NaN score
            best_idx.fill_(-1);  // kEmpty, above every index
            hash_kernel<box_t, score_t><<<blocks, kThreads, 0, stream>>>(
                n, boxes.data_ptr<box_t>(), scores.data_ptr<score_t>(), active_p, p,
                codes.data_ptr<int64_t>(), keys_p, state_p);
            C10_CUDA_KERNEL_LAUNCH_CHECK();
            insert_kernel<<<blocks, kThreads, 0, stream>>>(
                n, codes.data_ptr<int64_t>(), g, state_p, table_p, mask, slot_p);
            C10_CUDA_KERNEL_LAUNCH_CHECK();
            max_kernel<<<blocks, kThreads, 0, stream>>>(n, state_p, slot_p, keys_p, best_key_p);
            C10_CUDA_KERNEL_LAUNCH_CHECK();
            argmin_kernel<<<blocks, kThreads, 0, stream>>>(
                n, state_p, slot_p, keys_p, best_key_p, best_idx_p);
            C10_CUDA_KERNEL_LAUNCH_CHECK();
            select_kernel<<<blocks, kThreads, 0, stream>>>(
                n, state_p, slot_p, best_idx_p, active_p);
            C10_CUDA_KERNEL_LAUNCH_CHECK();
          }
        });
  });

  // Survivors in increasing index order, then a stable sort by decreasing score.
  at::Tensor kept = at::nonzero(active).view({-1});
  const int64_t k = kept.size(0);
  if (k == 0) {
    return kept;
  }
  at::Tensor signed_keys = at::empty({k}, long_opts);
  signed_key_kernel<<<num_blocks(k), kThreads, 0, stream>>>(
      k, kept.data_ptr<int64_t>(), keys_p, signed_keys.data_ptr<int64_t>());
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  at::Tensor order = std::get<1>(signed_keys.sort(/*stable=*/true, /*dim=*/0, /*descending=*/true));
  return kept.index_select(0, order);
}

}  // namespace hnms
