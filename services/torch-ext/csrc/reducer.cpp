// DDP's own gradient bucketing engine, c10d::Reducer (libtorch_cpu), over
// the shim's group: it hooks each parameter's gradient accumulator and, as
// the backward pass makes a bucket's gradients ready, starts that bucket's
// all-reduce, so communication overlaps the rest of the backward pass. The
// pass ends (inside autograd's engine) by waiting for every bucket and
// writing the averaged gradients to the parameters' `.grad`, which are views
// of the buckets (gradient_as_bucket_view).
//
// Buckets as DistributedDataParallel makes them: one bucket at first, then,
// after the first backward pass, rebuilt in the order the gradients became
// ready (25 MiB each, the first 1 MiB), rank 0's order broadcast to all.
#include <torch/csrc/distributed/c10d/ProcessGroup.hpp>
#include <torch/csrc/distributed/c10d/reducer.hpp>

#include <cstddef>
#include <cstdint>
#include <memory>
#include <numeric>
#include <stdexcept>
#include <string>
#include <unordered_map>
#include <vector>

#include "message.hpp"
#include "process_group.hpp"

// Members are destroyed in reverse order: the reducer (which removes its
// autograd hooks) before the process group it calls.
struct ExtReducer {
  c10::intrusive_ptr<c10d::ProcessGroup> group;
  std::unique_ptr<c10d::Reducer> reducer;
};

extern "C" {

// A reducer over `count` parameters (`params`, each an at::Tensor*), all on
// one device, whose collectives go through `pg`'s backend.
char* ext_reducer_new(ExtProcessGroup* pg, int rank, int world_size, at::Tensor* const* params, size_t count,
                      ExtReducer** out) {
  *out = nullptr;
  return ext::guarded([&] {
    if (count == 0 || !pg->group) {
      throw std::invalid_argument("a reducer needs parameters and a started group");
    }
    std::vector<at::Tensor> tensors;
    tensors.reserve(count);
    for (size_t i = 0; i < count; ++i) {
      at::Tensor param = *params[i];
      // A zero `.grad` in the parameter's own layout before the first pass:
      // the reducer makes it a bucket view now, and autograd accumulates
      // into it in place. Left undefined, a channels_last model's first
      // backward pass makes its convolutions' gradients channels_last,
      // which the reducer must copy (warning that the strides differ).
      if (!param.mutable_grad().defined()) {
        param.mutable_grad() = at::zeros_like(param, at::MemoryFormat::Preserve);
      }
      tensors.push_back(std::move(param));
    }
    auto r = std::make_unique<ExtReducer>();
    r->group = c10::make_intrusive<c10d::ProcessGroup>(pg->store, rank, world_size);
    const auto type = pg->is_nccl ? c10d::ProcessGroup::BackendType::NCCL : c10d::ProcessGroup::BackendType::GLOO;
    r->group->setBackend(tensors.front().device().type(), type, pg->group);
    r->group->setDefaultBackend(type);
    std::vector<size_t> all(count);
    std::iota(all.begin(), all.end(), 0);
    constexpr int64_t kBucketBytes = 25 * 1024 * 1024;  // DDP's bucket_cap_mb
    constexpr int64_t kFirstBucketBytes = 1024 * 1024;  // DDP's first bucket
    r->reducer = std::make_unique<c10d::Reducer>(
        std::move(tensors), std::vector<std::vector<size_t>>{all}, r->group, std::vector<bool>(count, false),
        kBucketBytes, /*find_unused_parameters=*/false, /*gradient_as_bucket_view=*/true,
        std::unordered_map<size_t, std::string>{}, kFirstBucketBytes, /*skip_all_reduce_unused_params=*/false,
        /*use_python_reducer=*/false, std::vector<int64_t>{});
    *out = r.release();
  });
}

// Before the forward pass of a step: after the first backward pass, the
// buckets are rebuilt once (a collective: every rank calls it at the same step).
char* ext_reducer_before_forward(ExtReducer* r) {
  return ext::guarded([&] {
    r->reducer->prepare_for_forward();
    r->reducer->rebuild_buckets();
  });
}

// Before the backward pass of a step: its gradients are to be all-reduced.
char* ext_reducer_before_backward(ExtReducer* r) {
  return ext::guarded([&] { r->reducer->prepare_for_backward({}); });
}

void ext_reducer_free(ExtReducer* r) {
  try {
    delete r;
  } catch (...) {
    // ~Reducer may throw (noexcept(false)); nothing to report to here.
  }
}

}  // extern "C"
