// ProcessGroupNCCL (libtorch_cuda) over the shim's TCPStore: CUDA tensors.
// Compiled by build.rs only where libtorch_cuda, NCCL's and CUDA's headers
// are all present, with -DUSE_C10D_NCCL (without it the header declares
// nothing); the Rust side sees it as cfg(inception_nccl).
//
// Errors: the constructor throws on this thread where there is no usable
// GPU ("CUDA driver version is insufficient", "no GPUs found"); the eager
// connect below runs NCCL's rendezvous here too, so a peer that never comes
// fails this call at the store's time-out. Collectives are waited for on
// the calling thread with a time-out (distributed.cpp's `wait`): on a
// time-out or an NCCL error WorkNCCL::wait aborts the communicator and
// rethrows here. The watchdog thread is told (TORCH_NCCL_ASYNC_ERROR_HANDLING
// = 2, CleanUpOnly, unless the user chose) to abort communicators without
// taking the process down, so the calling thread is where errors appear.
#include <torch/csrc/distributed/c10d/ProcessGroupNCCL.hpp>

#include <c10/cuda/CUDAFunctions.h>
#include <c10/util/env.h>

#include <cstdint>
#include <stdexcept>
#include <string>

#include "message.hpp"
#include "process_group.hpp"

namespace {

// Sets `name` to `value` unless the user set it: c10's own environment
// functions, which hold the lock its readers take.
void default_env(const char* name, const char* value) {
  if (!c10::utils::get_env(name).has_value()) {
    c10::utils::set_env(name, value, /*overwrite=*/false);
  }
}

}  // namespace

extern "C" {

// Makes the NCCL group over pg's store on CUDA device `device` (or, when it
// is negative, `rank % the number of visible devices`), connects its
// communicator at once, and writes the device used to *device_out.
char* ext_pg_nccl_start(ExtProcessGroup* pg, int rank, int world_size, int device, int* device_out) {
  *device_out = -1;
  return ext::guarded([&] {
    // Read by the constructor. 2 = CleanUpOnly: on a time-out or NCCL error
    // the watchdog aborts the communicators and marks the work failed, and
    // the calling thread's wait throws; the default (3, SkipCleanUp) would
    // end the process from the watchdog thread.
    default_env("TORCH_NCCL_ASYNC_ERROR_HANDLING", "2");
    auto options = c10d::ProcessGroupNCCL::Options::create();
    options->timeout = pg->timeout;
    auto group = c10::make_intrusive<c10d::ProcessGroupNCCL>(pg->store, rank, world_size, options);
    int count = static_cast<int>(c10::cuda::device_count());
    if (count <= 0) {
      throw std::runtime_error("no CUDA device is visible");
    }
    int index = device < 0 ? rank % count : device;
    if (index >= count) {
      throw std::runtime_error("CUDA device " + std::to_string(index) + " does not exist (" +
                               std::to_string(count) + " visible)");
    }
    at::Device bound(at::kCUDA, static_cast<c10::DeviceIndex>(index));
    group->setBoundDeviceId(bound);
    group->eagerConnectSingleDevice(bound);
    pg->group = group;
    pg->is_nccl = true;
    *device_out = index;
  });
}

}  // extern "C"
