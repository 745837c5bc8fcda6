//! The NCCL backend. This machine kind has no GPU, so what runs here is the
//! failure path: with NCCL built (`cfg(inception_nccl)`), making an NCCL
//! group returns a `DistributedError` (libtorch finds no usable CUDA device)
//! instead of aborting, for a world of one and for two ranks as separate
//! processes, which then exit normally; without it, the "not built" error.
//! The collectives themselves need GPUs: `two_gpus_sum_and_broadcast` is
//! ignored and says so.
//!
//! As in gloo.rs, the test binary re-executes itself per rank, running only
//! `nccl_rank_child`, which reads its role from the environment.

use std::net::TcpListener;
use std::process::{Command, Output};
use std::time::Duration;

use inception_torch_ext::distributed::{nccl_built, Backend, ProcessGroup, Rendezvous};

const CHILD_TEST: &str = "nccl_rank_child";
const SCENARIO: &str = "INCEPTION_NCCL_SCENARIO";
const RANK: &str = "INCEPTION_NCCL_RANK";
const WORLD: &str = "INCEPTION_NCCL_WORLD";
const PORT: &str = "INCEPTION_NCCL_PORT";

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

fn rendezvous(rank: u32, world_size: u32, port: u16) -> Rendezvous {
    Rendezvous {
        master_addr: "127.0.0.1".into(),
        master_port: port,
        rank,
        world_size,
        timeout: Duration::from_secs(60),
        store_hosted_by_agent: false,
    }
}

fn cuda_devices() -> usize {
    usize::try_from(tch::Cuda::device_count()).unwrap_or(0)
}

/// What an NCCL group on a machine without a usable GPU must fail with.
fn assert_no_gpu_error(err: &inception_torch_ext::distributed::DistributedError, rank: u32, world: u32, port: u16) {
    assert_eq!((err.rank, err.world_size), (rank, world), "{err}");
    assert_eq!(err.operation, format!("rendezvous with 127.0.0.1:{port}"), "{err}");
    if nccl_built().is_ok() {
        assert!(err.message.starts_with("ProcessGroupNCCL: "), "{err}");
        let m = err.message.to_lowercase();
        assert!(m.contains("cuda") || m.contains("gpu"), "not about CUDA: {err}");
    } else {
        assert!(err.message.starts_with("NCCL is not built into this binary: "), "{err}");
    }
}

// ---- the child: one rank ----------------------------------------------

#[test]
fn nccl_rank_child() {
    let Ok(scenario) = std::env::var(SCENARIO) else { return };
    let number = |name: &str| std::env::var(name).unwrap().parse::<u32>().unwrap();
    let (rank, world, port) = (number(RANK), number(WORLD), number(PORT) as u16);
    let r = rendezvous(rank, world, port);
    match scenario.as_str() {
        "no_gpu" => {
            let err = ProcessGroup::new(&r, Backend::Nccl).err().expect("an NCCL group without a GPU");
            println!("NCCL_ERROR rank {rank}: {err}");
            assert_no_gpu_error(&err, rank, world, port);
        }
        "collectives" => two_ranks_collectives(&r),
        other => panic!("unknown scenario {other}"),
    }
    println!("rank {rank} {scenario} ok");
}

fn two_ranks_collectives(r: &Rendezvous) {
    use tch::{Device, Kind, Tensor};
    let group = ProcessGroup::new(r, Backend::Nccl).unwrap();
    let device = Device::Cuda(group.cuda_device().unwrap());
    assert_eq!(group.backend(), Backend::Nccl);
    let mut cpu = Tensor::zeros([3], (Kind::Float, Device::Cpu));
    let err = group.all_reduce_sum(&mut cpu).unwrap_err();
    assert_eq!(err.operation, "all_reduce of 3 floats");
    assert!(err.message.contains("Nccl cannot take a tensor on Cpu"), "{err}");
    let rank = i64::from(r.rank);
    let mut tensor = (Tensor::arange(12, (Kind::Int64, device)) + 100 * rank).to_kind(Kind::Float);
    group.all_reduce_sum(&mut tensor).unwrap();
    let expected = (Tensor::arange(12, (Kind::Int64, device)) * 2 + 100).to_kind(Kind::Float);
    assert!(tensor.equal(&expected), "rank {rank}: {tensor}");
    let mut tensor = Tensor::full([5], rank as f64, (Kind::Double, device));
    group.broadcast(&mut tensor, 1).unwrap();
    assert!(tensor.equal(&Tensor::ones([5], (Kind::Double, device))), "rank {rank}: {tensor}");
    group.barrier().unwrap();
}

// ---- the parent ---------------------------------------------------------

fn run_ranks(scenario: &str, world: u32) -> Vec<Output> {
    let port = free_port();
    let children: Vec<_> = (0..world)
        .map(|rank| {
            Command::new(std::env::current_exe().unwrap())
                .args(["--exact", CHILD_TEST, "--nocapture", "--test-threads=1"])
                .env(SCENARIO, scenario)
                .env(RANK, rank.to_string())
                .env(WORLD, world.to_string())
                .env(PORT, port.to_string())
                .stdout(std::process::Stdio::piped())
                .stderr(std::process::Stdio::piped())
                .spawn()
                .unwrap()
        })
        .collect();
    children.into_iter().map(|child| child.wait_with_output().unwrap()).collect()
}

fn assert_ranks_ok(scenario: &str, outputs: &[Output]) {
    for (rank, output) in outputs.iter().enumerate() {
        let text = format!("{}{}", String::from_utf8_lossy(&output.stdout), String::from_utf8_lossy(&output.stderr));
        assert!(output.status.success(), "rank {rank} failed ({}):\n{text}", output.status);
        assert!(text.contains(&format!("rank {rank} {scenario} ok")), "rank {rank}:\n{text}");
        if let Some(line) = text.lines().find(|line| line.contains("NCCL_ERROR")) {
            println!("{line}");
        }
    }
}

// ---- the tests ----------------------------------------------------------

/// Without the cfg the backend exists and says why it is absent; with it,
/// on this GPU-less machine kind, libtorch's refusal comes back as an error.
#[test]
fn an_nccl_group_without_a_gpu_is_an_error_not_an_abort() {
    if cuda_devices() > 0 {
        println!("skipped: this machine has a CUDA device");
        return;
    }
    let port = free_port();
    let err = ProcessGroup::new(&rendezvous(0, 1, port), Backend::Nccl).err().expect("an NCCL group without a GPU");
    println!("{err}");
    assert_no_gpu_error(&err, 0, 1, port);
    // The explicit device form fails the same way; the process carries on
    // (a Gloo group works afterwards) and exits normally at the end.
    let port = free_port();
    let err = ProcessGroup::nccl(&rendezvous(0, 1, port), 0).err().expect("an NCCL group without a GPU");
    assert_no_gpu_error(&err, 0, 1, port);
    let gloo = ProcessGroup::new(&rendezvous(0, 1, free_port()), Backend::Gloo).unwrap();
    gloo.barrier().unwrap();
}

/// Two ranks as processes: both get the error and exit 0 (no abort, no
/// hang on the store the failed rank 0 hosted).
#[test]
fn two_ranks_without_a_gpu_both_fail_and_exit_normally() {
    if cuda_devices() > 0 {
        println!("skipped: this machine has a CUDA device");
        return;
    }
    assert_ranks_ok("no_gpu", &run_ranks("no_gpu", 2));
}

#[test]
#[cfg(not(inception_nccl))]
fn without_the_cfg_the_error_names_what_was_missing() {
    let reason = nccl_built().unwrap_err();
    assert!(!reason.is_empty());
    let err = ProcessGroup::new(&rendezvous(0, 1, free_port()), Backend::Nccl).err().unwrap();
    assert_eq!(err.message, format!("NCCL is not built into this binary: {reason}"));
}

#[test]
#[cfg(inception_nccl)]
fn with_the_cfg_nccl_is_built() {
    assert_eq!(nccl_built(), Ok(()));
}

/// A bad rendezvous is refused before anything else, NCCL built or not.
#[test]
fn a_bad_rendezvous_is_refused_first() {
    let err = ProcessGroup::new(&rendezvous(2, 2, 29500), Backend::Nccl).err().unwrap();
    assert!(err.message.contains("rank 2 is not below world_size 2"), "{err}");
}

/// One rank on the first GPU, where there is one (skipped here): the
/// collectives are identities, a CPU tensor is refused, and the group's
/// device is the rank's (`0 % devices`).
#[test]
fn a_world_of_one_on_a_gpu_needs_no_peers() {
    use tch::{Device, Kind, Tensor};
    if cuda_devices() < 1 || nccl_built().is_err() {
        println!("skipped: needs a CUDA device and NCCL built");
        return;
    }
    let group = ProcessGroup::new(&rendezvous(0, 1, free_port()), Backend::Nccl).unwrap();
    assert_eq!(group.cuda_device(), Some(0));
    let mut tensor = Tensor::arange(12, (Kind::Float, Device::Cuda(0)));
    group.all_reduce_sum(&mut tensor).unwrap();
    group.broadcast(&mut tensor, 0).unwrap();
    group.barrier().unwrap();
    assert!(tensor.equal(&Tensor::arange(12, (Kind::Float, Device::Cuda(0)))));
    let mut cpu = Tensor::zeros([3], (Kind::Float, Device::Cpu));
    assert!(group.all_reduce_sum(&mut cpu).unwrap_err().message.contains("cannot take a tensor on Cpu"));
}

/// Needs 2 CUDA devices on one machine (one per rank) and NCCL built: sums,
/// a broadcast from rank 1, a barrier, and a CPU tensor refused. Run with
/// `cargo test -p inception-torch-ext --test nccl -- --ignored --nocapture`.
#[test]
#[ignore = "needs 2 CUDA GPUs"]
fn two_gpus_sum_and_broadcast() {
    nccl_built().expect("NCCL is not built into this binary");
    assert!(cuda_devices() >= 2, "needs 2 CUDA devices, found {}", cuda_devices());
    assert_ranks_ok("collectives", &run_ranks("collectives", 2));
}
