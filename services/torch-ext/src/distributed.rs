//! Multi-process training over torch.distributed's c10d, which tch does not
//! bind: a TCPStore rendezvous and a `ProcessGroupGloo` (CPU tensors over
//! TCP), both from libtorch_cpu through csrc/distributed.cpp, and a
//! `ProcessGroupNCCL` (CUDA tensors, libtorch_cuda, csrc/nccl.cpp) on the
//! same store where build.rs found NCCL's parts ([`nccl_built`]).
//!
//! Error model: every failure, whether refused here before anything crosses
//! into C++ or thrown by libtorch (rendezvous time-outs, a peer that died
//! mid-collective, Gloo's own time-out), comes back as a [`DistributedError`]
//! naming this rank and the operation. Collectives are waited for on the
//! calling thread with the rendezvous time-out, so a dead or silent peer
//! becomes an error here instead of a hang. After a collective has failed the
//! group is broken (its peers' connections are gone or out of step) and
//! refuses further collectives; the way on is to exit and let the launcher
//! restart the job.
//!
//! All ranks must call the same collectives, in the same order, on tensors of
//! the same size and kind: Gloo cannot match them up otherwise, and a
//! mismatch it notices on its own threads ends the process.
//!
//! NCCL: errors are surfaced on the calling thread where libtorch allows.
//! Unless the environment already sets it, the shim sets
//! `TORCH_NCCL_ASYNC_ERROR_HANDLING=2` (CleanUpOnly) before making the
//! group: on a time-out or an NCCL error ProcessGroupNCCL's watchdog thread
//! aborts the communicator and marks the work failed instead of ending the
//! process (2.13's default, 3, ends it), and the collective's wait on the
//! calling thread (`WorkNCCL::wait(timeout)`) throws. What can still end the
//! process: a CUDA error the watchdog meets while polling
//! (`TORCH_NCCL_RETHROW_CUDA_ERRORS`, default on), its heartbeat monitor
//! when the watchdog itself is stuck (`TORCH_NCCL_ENABLE_MONITORING`, after
//! `TORCH_NCCL_HEARTBEAT_TIMEOUT_SEC`), and a user's own
//! `TORCH_NCCL_ASYNC_ERROR_HANDLING=1` or `3`.

use std::cell::Cell;
use std::ffi::{c_char, c_int, c_void, CString};
use std::io;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, ToSocketAddrs, UdpSocket};
use std::ptr::{self, NonNull};
use std::time::Duration;

use tch::{Device, Kind, Tensor};

use crate::take_message;

mod reducer;
pub use reducer::GradientReducer;

/// The C++ side: the store and the group (opaque here).
#[repr(C)]
struct ExtProcessGroup {
    _private: [u8; 0],
}

extern "C" {
    fn ext_pg_store_new(
        host: *const c_char,
        port: u16,
        is_server: c_int,
        world_size: c_int,
        timeout_ms: i64,
        out: *mut *mut ExtProcessGroup,
    ) -> *mut c_char;
    fn ext_pg_gloo_start(
        group: *mut ExtProcessGroup,
        rank: c_int,
        world_size: c_int,
        interface: *const c_char,
        host: *const c_char,
    ) -> *mut c_char;
    #[cfg(inception_nccl)]
    fn ext_pg_nccl_start(
        group: *mut ExtProcessGroup,
        rank: c_int,
        world_size: c_int,
        device: c_int,
        device_out: *mut c_int,
    ) -> *mut c_char;
    fn ext_pg_all_reduce_sum(group: *mut ExtProcessGroup, tensor: *mut c_void) -> *mut c_char;
    fn ext_pg_all_reduce_sum_each(group: *mut ExtProcessGroup, tensors: *const *mut c_void, count: i64) -> *mut c_char;
    fn ext_pg_broadcast(group: *mut ExtProcessGroup, tensor: *mut c_void, root: c_int) -> *mut c_char;
    fn ext_pg_barrier(group: *mut ExtProcessGroup) -> *mut c_char;
    fn ext_pg_free(group: *mut ExtProcessGroup);
}

/// Overrides the Gloo device's choice with a network interface, as in PyTorch.
const GLOO_SOCKET_IFNAME: &str = "GLOO_SOCKET_IFNAME";

/// Longest time-out passed on: std::chrono adds it to "now", which must not
/// overflow (~24 days, far beyond any useful collective).
const MAX_TIMEOUT_MS: i64 = i32::MAX as i64;

/// Where and how the ranks of one job meet.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rendezvous {
    /// Host name or IP of rank 0's TCPStore.
    pub master_addr: String,
    pub master_port: u16,
    pub rank: u32,
    pub world_size: u32,
    /// Rendezvous and every collective.
    pub timeout: std::time::Duration,
    /// torchrun's agent already hosts the TCPStore
    /// (TORCHELASTIC_USE_AGENT_STORE=True): rank 0 connects as a client then.
    pub store_hosted_by_agent: bool,
}

/// A collective or rendezvous that failed, on this rank.
#[derive(Debug, thiserror::Error)]
#[error("distributed training, rank {rank} of {world_size}: {operation}: {message}")]
pub struct DistributedError {
    pub rank: u32,
    pub world_size: u32,
    pub operation: String,
    pub message: String,
}

/// The communication library under a [`ProcessGroup`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum Backend {
    /// Gloo over TCP: CPU tensors.
    Gloo,
    /// NCCL: CUDA tensors on the group's one device. Present in every build;
    /// usable where [`nccl_built`] (else [`ProcessGroup::new`] says why not).
    Nccl,
}

/// Whether this binary has the NCCL backend: `Err` says what build.rs found
/// missing (or that `INCEPTION_TORCH_EXT_NO_NCCL` was set).
pub fn nccl_built() -> Result<(), &'static str> {
    #[cfg(inception_nccl)]
    return Ok(());
    #[cfg(not(inception_nccl))]
    return Err(env!("INCEPTION_NCCL_MISSING"));
}

impl Rendezvous {
    fn operation(&self) -> String {
        format!("rendezvous with {}:{}", self.master_addr, self.master_port)
    }

    fn error(&self, message: impl Into<String>) -> DistributedError {
        DistributedError {
            rank: self.rank,
            world_size: self.world_size,
            operation: self.operation(),
            message: message.into(),
        }
    }

    /// What would make the C++ side misbehave, refused up front.
    fn validate(&self) -> Result<(), String> {
        if self.world_size == 0 {
            return Err("world_size must be at least 1".into());
        }
        if self.rank >= self.world_size {
            return Err(format!("rank {} is not below world_size {}", self.rank, self.world_size));
        }
        if c_int::try_from(self.world_size).is_err() {
            return Err(format!("world_size {} is too large", self.world_size));
        }
        if self.master_addr.is_empty() {
            return Err("master_addr is empty".into());
        }
        if self.timeout < Duration::from_millis(1) {
            return Err("the time-out must be at least 1 ms".into());
        }
        Ok(())
    }

    fn timeout_ms(&self) -> i64 {
        i64::try_from(self.timeout.as_millis()).unwrap_or(i64::MAX).min(MAX_TIMEOUT_MS)
    }

    /// Rank 0 hosts the store unless a launcher's agent does.
    fn hosts_store(&self) -> bool {
        self.rank == 0 && !self.store_hosted_by_agent
    }
}

/// What Gloo's TCP device binds to.
enum GlooDevice {
    Interface(CString),
    Address(CString),
}

/// The device: `GLOO_SOCKET_IFNAME` when set (PyTorch's override), else this
/// host's address on the route to the master. Not `createDefaultDevice`: it
/// binds whatever the host name resolves to, often 127.0.1.1 or nothing in
/// containers, unreachable from other hosts; the route to the master is the
/// network the job's peers share, and loopback when all ranks are local.
fn gloo_device(rendezvous: &Rendezvous) -> Result<GlooDevice, String> {
    if let Some(name) = std::env::var_os(GLOO_SOCKET_IFNAME).filter(|name| !name.is_empty()) {
        let name = name.into_string().map_err(|_| format!("{GLOO_SOCKET_IFNAME} is not UTF-8"))?;
        if name.contains(',') {
            return Err(format!("{GLOO_SOCKET_IFNAME}={name}: only one interface is supported"));
        }
        return CString::new(name).map(GlooDevice::Interface).map_err(|_| format!("{GLOO_SOCKET_IFNAME} has a NUL"));
    }
    let local = local_address_towards(&rendezvous.master_addr, rendezvous.master_port)
        .map_err(|e| format!("finding this host's address towards {}: {e}", rendezvous.master_addr))?;
    CString::new(local.to_string()).map(GlooDevice::Address).map_err(|e| e.to_string())
}

/// The local address the kernel routes `host` from: a UDP socket's
/// `connect` picks it without sending anything.
fn local_address_towards(host: &str, port: u16) -> io::Result<IpAddr> {
    let mut last = io::Error::new(io::ErrorKind::NotFound, "the name resolves to no address");
    for target in (host, port).to_socket_addrs()? {
        let any: SocketAddr =
            if target.is_ipv4() { (Ipv4Addr::UNSPECIFIED, 0).into() } else { (Ipv6Addr::UNSPECIFIED, 0).into() };
        let local = UdpSocket::bind(any).and_then(|socket| {
            socket.connect(target)?;
            socket.local_addr()
        });
        match local {
            Ok(local) => return Ok(local.ip()),
            Err(e) => last = e,
        }
    }
    Err(last)
}

/// One rank's membership of a job: collectives with the other ranks.
pub struct ProcessGroup {
    /// Owned; freed in `drop`. Never null once constructed.
    raw: NonNull<ExtProcessGroup>,
    rank: u32,
    world_size: u32,
    backend: Backend,
    /// NCCL's device; `None` for Gloo.
    cuda_device: Option<usize>,
    /// Set when a collective failed: later ones are refused.
    failed: Cell<bool>,
}

// SAFETY: the C++ object (intrusive pointers to the store and the group,
// whose work queue is mutex-protected) has no thread affinity, so it may move
// to another thread. It is not `Sync`: collectives must come from one thread
// at a time, in the same order on every rank.
unsafe impl Send for ProcessGroup {}

impl ProcessGroup {
    /// Joins the job with `backend`. NCCL takes CUDA device `rank % the
    /// number of visible devices`, which is the local rank when every node
    /// runs one rank per device in rank order (torchrun's layout); other
    /// layouts name the device with [`ProcessGroup::nccl`].
    pub fn new(rendezvous: &Rendezvous, backend: Backend) -> Result<Self, DistributedError> {
        match backend {
            Backend::Gloo => Self::gloo(rendezvous),
            Backend::Nccl => Self::start_nccl(rendezvous, None),
        }
    }

    /// Connects to the TCPStore as [`ProcessGroup::gloo`] does, then makes a
    /// ProcessGroupNCCL over it bound to CUDA device `cuda_device` and
    /// connects its communicator at once (so a rank that never comes fails
    /// this call, not the first collective). Collectives then take
    /// contiguous tensors on that device only.
    pub fn nccl(rendezvous: &Rendezvous, cuda_device: usize) -> Result<Self, DistributedError> {
        Self::start_nccl(rendezvous, Some(cuda_device))
    }

    #[cfg(not(inception_nccl))]
    fn start_nccl(rendezvous: &Rendezvous, _cuda_device: Option<usize>) -> Result<Self, DistributedError> {
        rendezvous.validate().map_err(|message| rendezvous.error(message))?;
        let missing = nccl_built().err().unwrap_or_default();
        Err(rendezvous.error(format!("NCCL is not built into this binary: {missing}")))
    }

    #[cfg(inception_nccl)]
    fn start_nccl(rendezvous: &Rendezvous, cuda_device: Option<usize>) -> Result<Self, DistributedError> {
        rendezvous.validate().map_err(|message| rendezvous.error(message))?;
        let device = match cuda_device {
            None => -1,
            Some(index) => {
                c_int::try_from(index).map_err(|_| rendezvous.error(format!("CUDA device {index} is out of range")))?
            }
        };
        let mut group = Self::connect_store(rendezvous)?;
        // Validated to fit in `validate`.
        let (rank, world_size) = (group.rank as c_int, group.world_size as c_int);
        let mut bound: c_int = -1;
        // SAFETY: `raw` is live; `bound` receives the device index.
        let message = unsafe { ext_pg_nccl_start(group.raw.as_ptr(), rank, world_size, device, &mut bound) };
        if let Some(message) = take_message(message) {
            return Err(rendezvous.error(format!("ProcessGroupNCCL: {message}")));
        }
        group.backend = Backend::Nccl;
        group.cuda_device = usize::try_from(bound).ok();
        Ok(group)
    }

    /// Connects to the TCPStore (rank 0 hosts it unless
    /// `store_hosted_by_agent`), then makes a Gloo group over it whose
    /// connections and collectives time out after `rendezvous.timeout`.
    /// Blocks until every rank has joined, or the time-out.
    pub fn gloo(rendezvous: &Rendezvous) -> Result<Self, DistributedError> {
        rendezvous.validate().map_err(|message| rendezvous.error(message))?;
        let group = Self::connect_store(rendezvous)?;
        // After the store: it retries the master's name until the time-out
        // (a Kubernetes Service may not resolve yet), so it resolves now.
        let device = gloo_device(rendezvous).map_err(|e| rendezvous.error(format!("choosing the Gloo device: {e}")))?;
        group.start_gloo(rendezvous, &device)?;
        Ok(group)
    }

    fn connect_store(rendezvous: &Rendezvous) -> Result<Self, DistributedError> {
        let host = CString::new(rendezvous.master_addr.as_str())
            .map_err(|_| rendezvous.error("master_addr contains a NUL byte"))?;
        let world_size = c_int::try_from(rendezvous.world_size).map_err(|e| rendezvous.error(e.to_string()))?;
        let mut raw = ptr::null_mut();
        // SAFETY: `host` outlives the call; `raw` receives an owned pointer.
        let message = unsafe {
            ext_pg_store_new(
                host.as_ptr(),
                rendezvous.master_port,
                c_int::from(rendezvous.hosts_store()),
                world_size,
                rendezvous.timeout_ms(),
                &mut raw,
            )
        };
        if let Some(message) = take_message(message) {
            return Err(rendezvous.error(format!("TCPStore: {message}")));
        }
        let raw = NonNull::new(raw).ok_or_else(|| rendezvous.error("TCPStore: no store was made"))?;
        Ok(Self {
            raw,
            rank: rendezvous.rank,
            world_size: rendezvous.world_size,
            backend: Backend::Gloo,
            cuda_device: None,
            failed: Cell::new(false),
        })
    }

    fn start_gloo(&self, rendezvous: &Rendezvous, device: &GlooDevice) -> Result<(), DistributedError> {
        let (interface, host) = match device {
            GlooDevice::Interface(name) => (name.as_ptr(), ptr::null()),
            GlooDevice::Address(address) => (ptr::null(), address.as_ptr()),
        };
        // Validated to fit in `validate`.
        let (rank, world_size) = (self.rank as c_int, self.world_size as c_int);
        // SAFETY: `raw` is live; the strings outlive the call.
        let message = unsafe { ext_pg_gloo_start(self.raw.as_ptr(), rank, world_size, interface, host) };
        match take_message(message) {
            Some(message) => Err(rendezvous.error(format!("ProcessGroupGloo: {message}"))),
            None => Ok(()),
        }
    }

    pub fn rank(&self) -> u32 {
        self.rank
    }

    pub fn world_size(&self) -> u32 {
        self.world_size
    }

    pub fn backend(&self) -> Backend {
        self.backend
    }

    /// The CUDA device an NCCL group is bound to; `None` for Gloo.
    pub fn cuda_device(&self) -> Option<usize> {
        self.cuda_device
    }

    /// Whether the collectives take tensors on `device`.
    fn takes(&self, device: Device) -> bool {
        match self.backend {
            Backend::Gloo => device == Device::Cpu,
            Backend::Nccl => self.cuda_device.is_some_and(|index| device == Device::Cuda(index)),
        }
    }

    /// Sums `tensor` over all ranks, in place (a contiguous tensor of
    /// f32/f64/i64: on the CPU for Gloo, on the group's device for NCCL).
    pub fn all_reduce_sum(&self, tensor: &mut Tensor) -> Result<(), DistributedError> {
        let operation = format!("all_reduce of {}", describe(tensor));
        self.check_tensor(tensor, &operation)?;
        if !matches!(tensor.kind(), Kind::Float | Kind::Double | Kind::Int64) {
            return Err(self.error(operation, format!("{:?} is not f32, f64 or i64", tensor.kind())));
        }
        let tensor = tensor.as_mut_ptr().cast();
        // SAFETY: `raw` is live; `tensor` is an `at::Tensor*` valid for the
        // call, and the shim returns only once the backend is done with it.
        self.finish(&operation, unsafe { ext_pg_all_reduce_sum(self.raw.as_ptr(), tensor) })
    }

    /// [`ProcessGroup::all_reduce_sum`] of each of `tensors`, all started
    /// at once (the backend's threads carry several together; on two
    /// cores that is faster than one after another), then waited for.
    pub fn all_reduce_sum_each(&self, tensors: &mut [Tensor]) -> Result<(), DistributedError> {
        let elements: usize = tensors.iter().filter(|t| t.defined()).map(Tensor::numel).sum();
        let operation = format!("all_reduce of {} tensors ({} elements)", tensors.len(), thousands(elements));
        for (i, tensor) in tensors.iter().enumerate() {
            let what = format!("{operation}, tensor {i}: {}", describe(tensor));
            self.check_tensor(tensor, &what)?;
            if !matches!(tensor.kind(), Kind::Float | Kind::Double | Kind::Int64) {
                return Err(self.error(what, format!("{:?} is not f32, f64 or i64", tensor.kind())));
            }
        }
        let raw: Vec<*mut c_void> = tensors.iter_mut().map(|t| t.as_mut_ptr().cast()).collect();
        let count = i64::try_from(raw.len()).map_err(|_| self.error(&operation, "too many tensors"))?;
        // SAFETY: as in `all_reduce_sum`, for each of `count` live tensors.
        self.finish(&operation, unsafe { ext_pg_all_reduce_sum_each(self.raw.as_ptr(), raw.as_ptr(), count) })
    }

    /// Copies rank `root`'s `tensor` into every rank's, in place.
    pub fn broadcast(&self, tensor: &mut Tensor, root: u32) -> Result<(), DistributedError> {
        let operation = format!("broadcast of {} from rank {root}", describe(tensor));
        self.check_tensor(tensor, &operation)?;
        if root >= self.world_size {
            return Err(self.error(operation, format!("root {root} is not below world_size {}", self.world_size)));
        }
        let tensor = tensor.as_mut_ptr().cast();
        // SAFETY: as in `all_reduce_sum`; `root` is below world_size, which fits a c_int.
        self.finish(&operation, unsafe { ext_pg_broadcast(self.raw.as_ptr(), tensor, root as c_int) })
    }

    /// Returns once every rank has called it.
    pub fn barrier(&self) -> Result<(), DistributedError> {
        let operation = "barrier";
        self.check_usable(operation)?;
        // SAFETY: `raw` is live.
        self.finish(operation, unsafe { ext_pg_barrier(self.raw.as_ptr()) })
    }

    fn error(&self, operation: impl Into<String>, message: impl Into<String>) -> DistributedError {
        DistributedError {
            rank: self.rank,
            world_size: self.world_size,
            operation: operation.into(),
            message: message.into(),
        }
    }

    fn check_usable(&self, operation: &str) -> Result<(), DistributedError> {
        if self.failed.get() {
            return Err(self.error(operation, "an earlier collective failed; this process group is broken"));
        }
        Ok(())
    }

    /// What the backend cannot take, refused before anything crosses.
    fn check_tensor(&self, tensor: &Tensor, operation: &str) -> Result<(), DistributedError> {
        self.check_usable(operation)?;
        if !tensor.defined() {
            return Err(self.error(operation, "the tensor is undefined"));
        }
        let device = tensor.device();
        if !self.takes(device) {
            let group_device = match self.cuda_device {
                Some(index) => format!(" (this group's device is Cuda({index}))"),
                None => String::new(),
            };
            return Err(
                self.error(operation, format!("{:?} cannot take a tensor on {device:?}{group_device}", self.backend))
            );
        }
        if !tensor.is_contiguous() {
            return Err(self.error(operation, "the tensor is not contiguous"));
        }
        Ok(())
    }

    /// The collective's outcome; a failure breaks the group.
    fn finish(&self, operation: &str, message: *mut c_char) -> Result<(), DistributedError> {
        match take_message(message) {
            Some(message) => {
                self.failed.set(true);
                Err(self.error(operation, message))
            }
            None => Ok(()),
        }
    }
}

impl Drop for ProcessGroup {
    fn drop(&mut self) {
        // SAFETY: owned, freed once. Joins Gloo's threads (bounded by its
        // time-out) or aborts NCCL's communicator and joins its watchdog,
        // and, on a hosting rank 0, stops the store.
        unsafe { ext_pg_free(self.raw.as_ptr()) }
    }
}

/// "27,000,000 floats": what a collective moves, for error messages.
fn describe(tensor: &Tensor) -> String {
    if !tensor.defined() {
        return "an undefined tensor".into();
    }
    let what = match tensor.kind() {
        Kind::Float => "floats".to_string(),
        Kind::Double => "doubles".to_string(),
        Kind::Int64 => "int64s".to_string(),
        kind => format!("{kind:?} values"),
    };
    format!("{} {what}", thousands(tensor.numel()))
}

fn thousands(n: usize) -> String {
    let digits = n.to_string();
    // Commas go where the digits left to write are a multiple of three.
    let first_group = digits.len() % 3;
    let mut out = String::with_capacity(digits.len() + digits.len() / 3);
    for (i, digit) in digits.chars().enumerate() {
        if i > 0 && i % 3 == first_group {
            out.push(',');
        }
        out.push(digit);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rendezvous(rank: u32, world_size: u32) -> Rendezvous {
        Rendezvous {
            master_addr: "127.0.0.1".into(),
            master_port: 29500,
            rank,
            world_size,
            timeout: Duration::from_secs(1),
            store_hosted_by_agent: false,
        }
    }

    #[test]
    fn counts_get_thousands_separators() {
        assert_eq!(thousands(0), "0");
        assert_eq!(thousands(999), "999");
        assert_eq!(thousands(1000), "1,000");
        assert_eq!(thousands(27_000_000), "27,000,000");
        assert_eq!(describe(&Tensor::zeros([2, 3], (Kind::Float, Device::Cpu))), "6 floats");
    }

    #[test]
    fn bad_rendezvous_is_refused_before_connecting() {
        for (rank, world_size, says) in [(0, 0, "at least 1"), (2, 2, "rank 2 is not below world_size 2")] {
            let err = ProcessGroup::gloo(&rendezvous(rank, world_size)).err().unwrap();
            assert!(err.message.contains(says), "{err}");
            assert_eq!(err.operation, "rendezvous with 127.0.0.1:29500");
            assert!(err.to_string().starts_with(&format!("distributed training, rank {rank} of {world_size}: ")));
        }
        let mut no_timeout = rendezvous(0, 1);
        no_timeout.timeout = Duration::ZERO;
        assert!(ProcessGroup::gloo(&no_timeout).err().unwrap().message.contains("time-out"));
    }

    #[test]
    fn the_route_to_loopback_starts_on_loopback() {
        assert_eq!(local_address_towards("127.0.0.1", 29500).unwrap(), IpAddr::V4(Ipv4Addr::LOCALHOST));
    }
}
