// Registers the HNMS operators as torch.ops.hnms.{iou_hash, hnms} with CPU (and, when compiled
// with WITH_CUDA, CUDA) implementations; the dispatcher picks the kernel from the input's device.
// torch.ops.hnms.soft_nms has a CPU kernel only (hnms/soft_nms.py runs other devices in torch).
#include <torch/extension.h>

#include "hnms.h"

namespace hnms {

bool compiled_with_cuda() {
#if defined(WITH_CUDA) || defined(WITH_HIP)
  return true;
#else
  return false;
#endif
}

TORCH_LIBRARY(hnms, m) {
  m.def("iou_hash(Tensor boxes, float alpha, float w0, float h0, float bx, float by) -> Tensor");
  m.def(
      "hnms(Tensor boxes, Tensor scores, Tensor groups, float alpha, int num_hashes, float w0, "
      "float h0, float bx, float by) -> Tensor");
  m.def(
      "soft_nms(Tensor boxes, Tensor scores, Tensor groups, int method, float sigma, "
      "float iou_threshold, float score_threshold) -> (Tensor, Tensor)");
}

TORCH_LIBRARY_IMPL(hnms, CPU, m) {
  m.impl("iou_hash", &iou_hash_cpu);
  m.impl("hnms", &hnms_cpu);
  m.impl("soft_nms", &soft_nms_cpu);
}

#if defined(WITH_CUDA) || defined(WITH_HIP)
TORCH_LIBRARY_IMPL(hnms, CUDA, m) {
  m.impl("iou_hash", &iou_hash_cuda);
  m.impl("hnms", &hnms_cuda);
}
#endif

}  // namespace hnms

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.def("compiled_with_cuda", &hnms::compiled_with_cuda, "whether the CUDA kernels were built");
}
