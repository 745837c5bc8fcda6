// What a Rust ProcessGroup points to, shared by distributed.cpp (the store,
// Gloo, the collectives) and nccl.cpp (ProcessGroupNCCL, built only where
// its CUDA parts exist).
#pragma once

#include <torch/csrc/distributed/c10d/Backend.hpp>
#include <torch/csrc/distributed/c10d/Store.hpp>

#include <chrono>

// Members are destroyed in reverse order: the group (which joins its
// threads) before the store.
struct ExtProcessGroup {
  c10::intrusive_ptr<c10d::Store> store;
  // ProcessGroupGloo or ProcessGroupNCCL, called through c10d::Backend.
  c10::intrusive_ptr<c10d::Backend> group;
  std::chrono::milliseconds timeout{0};
  // NCCL's work waits on the calling thread itself, throwing at the
  // time-out after aborting its communicator; Gloo's needs the shim's
  // second, bounded wait (see `wait` in distributed.cpp).
  bool is_nccl = false;
};
