// Fused optimizer updates over flat fp32 CPU buffers: one pass over memory
// instead of the ~10 whole-buffer operations (and temporaries) the same
// arithmetic takes as separate libtorch ops. Run in libtorch's own intra-op
// threads (at::parallel_for: the same OpenMP team as the model). Built at
// -O3 whatever the cargo profile (build.rs): a debug build's -O0 loop would
// be slower than the ops it replaces.
#include <ATen/Parallel.h>
#include <ATen/core/Tensor.h>

#include <cmath>
#include <cstdint>

#include "message.hpp"

namespace {

void check_flat(const at::Tensor& t, int64_t n, const char* what) {
  TORCH_CHECK(t.defined() && t.device().is_cpu() && t.scalar_type() == at::kFloat && t.is_contiguous() &&
                  t.numel() == n,
              what, " must be a contiguous fp32 CPU tensor of ", n, " elements");
}

}  // namespace

extern "C" {

// TensorFlow's RMSProp, in place, with L2 weight decay coupled to the
// gradient, on buffers laid end to end (every pointer an at::Tensor* of
// the same length):
//   g    = grad + decay * var            (decay: each element's L2 factor)
//   ms  += (1 - rho) * (g^2 - ms)
//   mom  = momentum * mom + lr * g / sqrt(ms + eps)
//   var -= mom
char* ext_fused_rmsprop(at::Tensor* var, const at::Tensor* grad, const at::Tensor* decay, at::Tensor* ms,
                        at::Tensor* mom, double lr, double rho, double momentum, double eps) {
  return ext::guarded([&] {
    const int64_t n = var->numel();
    check_flat(*var, n, "the variables");
    check_flat(*grad, n, "the gradients");
    check_flat(*decay, n, "the decay factors");
    check_flat(*ms, n, "the mean square slot");
    check_flat(*mom, n, "the momentum slot");
    // Five distinct buffers (checked by the caller): restrict lets the loop vectorise.
    float* __restrict v = var->data_ptr<float>();
    const float* __restrict g = grad->data_ptr<float>();
    const float* __restrict d = decay->data_ptr<float>();
    float* __restrict s = ms->data_ptr<float>();
    float* __restrict m = mom->data_ptr<float>();
    const float keep = static_cast<float>(1.0 - rho), mu = static_cast<float>(momentum);
    const float rate = static_cast<float>(lr), epsilon = static_cast<float>(eps);
    at::parallel_for(0, n, 1 << 16, [&](int64_t begin, int64_t end) {
      for (int64_t i = begin; i < end; ++i) {
        const float gi = g[i] + d[i] * v[i];
        const float si = s[i] + keep * (gi * gi - s[i]);
        s[i] = si;
        const float mi = mu * m[i] + rate * gi / std::sqrt(si + epsilon);
        m[i] = mi;
        v[i] -= mi;
      }
    });
  });
}

}  // extern "C"
