// libtorch features that tch 0.26 does not bind. Every entry point catches
// C++ exceptions and returns the message (malloc'd; freed by
// ext_free_message) so that Rust sees an error, never an abort.
#include <ATen/autocast_mode.h>
#include <c10/core/DeviceType.h>
#include <c10/core/ScalarType.h>

#include <cstdlib>

#include "message.hpp"

namespace {

c10::DeviceType device_of(int device) { return device == 1 ? c10::DeviceType::CUDA : c10::DeviceType::CPU; }

at::ScalarType dtype_of(int dtype) { return dtype == 1 ? at::kHalf : at::kBFloat16; }

}  // namespace

extern "C" {

// Enables autocast on `device` (0 CPU, 1 CUDA) to `dtype` (0 bf16, 1 fp16)
// for this thread; nested enters are counted.
char* ext_autocast_enter(int device, int dtype) {
  return ext::guarded([&] {
    at::autocast::set_autocast_dtype(device_of(device), dtype_of(dtype));
    at::autocast::set_autocast_enabled(device_of(device), true);
    at::autocast::increment_nesting();
  });
}

// Leaves what ext_autocast_enter entered: back to full precision, and the
// cache of cast weights dropped when the outermost one is left.
char* ext_autocast_exit(int device, int was_enabled) {
  return ext::guarded([&] {
    if (at::autocast::decrement_nesting() == 0) {
      at::autocast::clear_cache();
    }
    at::autocast::set_autocast_enabled(device_of(device), was_enabled != 0);
  });
}

int ext_autocast_is_enabled(int device) {
  try {
    return at::autocast::is_autocast_enabled(device_of(device)) ? 1 : 0;
  } catch (...) {
    return 0;
  }
}

void ext_free_message(char* message) { std::free(message); }

}  // extern "C"
