// The shim's error convention: an entry point returns nullptr on success or
// a malloc'd copy of the C++ exception's message (freed by ext_free_message),
// so that Rust sees an error, never an exception crossing the boundary.
#pragma once

#include <c10/util/Exception.h>

#include <cstdlib>
#include <cstring>
#include <exception>

namespace ext {

inline char* copy_message(const char* message) {
  size_t n = std::strlen(message) + 1;
  char* copy = static_cast<char*>(std::malloc(n));
  if (copy != nullptr) {
    std::memcpy(copy, message, n);
  }
  return copy;
}

// Runs `body`, turning any exception into a returned message. c10::Error's
// message without its C++ backtrace: Rust adds the rank and the operation.
template <typename F>
char* guarded(F&& body) noexcept {
  try {
    body();
    return nullptr;
  } catch (const c10::Error& e) {
    return copy_message(e.what_without_backtrace());
  } catch (const std::exception& e) {
    return copy_message(e.what());
  } catch (...) {
    return copy_message("unknown C++ exception");
  }
}

}  // namespace ext
