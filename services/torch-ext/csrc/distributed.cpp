// c10d for multi-process training: a TCPStore rendezvous and a
// ProcessGroupGloo, both from libtorch_cpu (tch binds neither). Gloo's
// headers come from Debian's libgloo-dev; its code from libtorch_cpu.
// The collectives below serve ProcessGroupNCCL too (nccl.cpp makes it, where
// it is built), through c10d::Backend.
//
// Every entry point returns nullptr or a message (see message.hpp).
// Collectives are waited for on the calling thread with a time-out, so a
// failure on Gloo's worker threads (a dead peer) is rethrown here instead of
// going unnoticed or hanging.
#include <torch/csrc/distributed/c10d/PrefixStore.hpp>
#include <torch/csrc/distributed/c10d/ProcessGroupGloo.hpp>
#include <torch/csrc/distributed/c10d/TCPStore.hpp>

#include <chrono>
#include <cstdint>
#include <exception>
#include <memory>
#include <stdexcept>
#include <string>
#include <vector>

#include "message.hpp"
#include "process_group.hpp"

namespace {

c10::intrusive_ptr<c10d::Store> connect_store(const char* host, uint16_t port, bool is_server, int world_size,
                                              std::chrono::milliseconds timeout) {
  c10d::TCPStoreOptions options;
  options.port = port;
  options.isServer = is_server;
  options.numWorkers = static_cast<size_t>(world_size);
  options.timeout = timeout;
  auto tcp = c10::make_intrusive<c10d::TCPStore>(std::string(host), options);
  // torch.distributed's own prefix: no clash with keys a launcher's agent
  // keeps in the same store.
  return c10::make_intrusive<c10d::PrefixStore>("default_pg", tcp);
}

std::shared_ptr<gloo::transport::Device> make_device(const char* interface, const char* host) {
  if (interface != nullptr) {
    return c10d::ProcessGroupGloo::createDeviceForInterface(interface);
  }
  return c10d::ProcessGroupGloo::createDeviceForHostname(host);
}

// Waits on this thread, so that what fails on Gloo's threads (a peer that
// died or closed its connection) is rethrown here, and gives up after the
// time-out if a peer neither answers nor closes. Given up on, the work still
// runs on a Gloo thread that writes into the caller's tensor; Gloo's own
// time-out (the same) ends it soon after, so wait once more, bounded, and
// report Gloo's error if it came, so the tensor is left alone once this returns.
//
// NCCL's WorkNCCL::wait(timeout) blocks this thread until the work is done,
// and on a time-out or an NCCL error aborts the communicator (stopping its
// kernels) and throws; nothing is left running, so its exception is final.
void wait(const ExtProcessGroup& pg, const c10::intrusive_ptr<c10d::Work>& work) {
  const std::chrono::milliseconds timeout = pg.timeout;
  if (pg.is_nccl) {
    work->wait(timeout);
    return;
  }
  try {
    work->wait(timeout);
    return;
  } catch (...) {
    // Told apart below: a failed work keeps its exception.
  }
  if (!work->isCompleted()) {
    try {
      work->wait(timeout);
    } catch (...) {
      // As above.
    }
  }
  if (work->isCompleted() && work->exception()) {
    std::rethrow_exception(work->exception());
  }
  throw std::runtime_error("not every rank answered within " + std::to_string(timeout.count()) +
                           " ms (a rank is hung, slow, or not in this collective)");
}

}  // namespace

extern "C" {

// Connects to (rank 0 without an agent: hosts) the TCPStore at host:port.
// On success *out owns the store; the group is made by ext_pg_gloo_start.
char* ext_pg_store_new(const char* host, uint16_t port, int is_server, int world_size, int64_t timeout_ms,
                       ExtProcessGroup** out) {
  *out = nullptr;
  return ext::guarded([&] {
    auto pg = std::make_unique<ExtProcessGroup>();
    pg->timeout = std::chrono::milliseconds(timeout_ms);
    pg->store = connect_store(host, port, is_server != 0, world_size, pg->timeout);
    *out = pg.release();
  });
}

// Makes the Gloo group over the store: its device binds `interface` when
// non-null, else the address `host`; then the full mesh is connected.
char* ext_pg_gloo_start(ExtProcessGroup* pg, int rank, int world_size, const char* interface, const char* host) {
  return ext::guarded([&] {
    auto options = c10d::ProcessGroupGloo::Options::create(pg->timeout);
    options->devices.push_back(make_device(interface, host));
    pg->group = c10::make_intrusive<c10d::ProcessGroupGloo>(pg->store, rank, world_size, options);
  });
}

// Sums `tensor` over all ranks, in place.
char* ext_pg_all_reduce_sum(ExtProcessGroup* pg, at::Tensor* tensor) {
  return ext::guarded([&] {
    std::vector<at::Tensor> tensors{*tensor};
    c10d::AllreduceOptions options;
    options.reduceOp = c10d::ReduceOp::SUM;
    options.timeout = pg->timeout;
    wait(*pg, pg->group->allreduce(tensors, options));
  });
}

// Sums each of `tensors` over all ranks, in place: all started at once, so
// that Gloo's worker threads carry several at a time, then waited for in
// order. After a failure the rest are still waited for (each bounded), so
// that none is left writing into its tensor; the first error is reported.
char* ext_pg_all_reduce_sum_each(ExtProcessGroup* pg, at::Tensor* const* tensors, int64_t count) {
  return ext::guarded([&] {
    c10d::AllreduceOptions options;
    options.reduceOp = c10d::ReduceOp::SUM;
    options.timeout = pg->timeout;
    std::vector<c10::intrusive_ptr<c10d::Work>> works;
    works.reserve(static_cast<size_t>(count));
    std::exception_ptr failure;
    for (int64_t i = 0; i < count && !failure; ++i) {
      try {
        std::vector<at::Tensor> one{*tensors[i]};
        works.push_back(pg->group->allreduce(one, options));
      } catch (...) {
        failure = std::current_exception();
      }
    }
    for (const auto& work : works) {
      try {
        wait(*pg, work);
      } catch (...) {
        if (!failure) {
          failure = std::current_exception();
        }
      }
    }
    if (failure) {
      std::rethrow_exception(failure);
    }
  });
}

// Copies rank `root`'s `tensor` into every rank's, in place.
char* ext_pg_broadcast(ExtProcessGroup* pg, at::Tensor* tensor, int root) {
  return ext::guarded([&] {
    std::vector<at::Tensor> tensors{*tensor};
    c10d::BroadcastOptions options;
    options.rootRank = root;
    options.timeout = pg->timeout;
    wait(*pg, pg->group->broadcast(tensors, options));
  });
}

char* ext_pg_barrier(ExtProcessGroup* pg) {
  return ext::guarded([&] {
    c10d::BarrierOptions options;
    options.timeout = pg->timeout;
    wait(*pg, pg->group->barrier(options));
  });
}

// Frees what ext_pg_store_new made. An NCCL group is aborted first (its
// communicators and watchdog stopped without waiting on peers, which may be
// gone); its destructor would do the same, with a warning on stderr.
void ext_pg_free(ExtProcessGroup* pg) {
  if (pg->is_nccl && pg->group) {
    try {
      pg->group->abort();
    } catch (...) {
      // Nothing to report to: the group is going away.
    }
  }
  delete pg;
}

}  // extern "C"
