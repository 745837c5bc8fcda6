//! Gloo collectives between ranks that are separate processes, as in a real
//! job: this test binary re-executes itself once per rank, running only
//! `rank_child`, which reads its role from the environment (and returns at
//! once in an ordinary test run, where that is absent).
//!
//! The parent checks each rank's exit status and the lines it printed, so a
//! rank that aborts, hangs (killed at a deadline), or never ran fails it.

use std::io::{BufRead, BufReader, Read};
use std::net::TcpListener;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::mpsc::{self, Receiver, RecvTimeoutError, Sender};
use std::thread;
use std::time::{Duration, Instant};

use inception_torch_ext::distributed::{ProcessGroup, Rendezvous};
use tch::{Device, Kind, Tensor};

const CHILD_TEST: &str = "rank_child";
const SCENARIO: &str = "INCEPTION_GLOO_SCENARIO";
const RANK: &str = "INCEPTION_GLOO_RANK";
const WORLD: &str = "INCEPTION_GLOO_WORLD";
const PORT: &str = "INCEPTION_GLOO_PORT";
const TIMEOUT_MS: &str = "INCEPTION_GLOO_TIMEOUT_MS";
const VICTIM: &str = "INCEPTION_GLOO_VICTIM";
const AGENT_STORE: &str = "INCEPTION_GLOO_AGENT_STORE";

/// A healthy job's time-out: never reached, so generous for 2 loaded cores.
const HEALTHY_TIMEOUT: Duration = Duration::from_secs(60);
/// A failing job's time-out: what the survivor must report within.
const FAILURE_TIMEOUT: Duration = Duration::from_secs(5);
/// How long the parent waits for any one process before killing it.
const DEADLINE: Duration = Duration::from_secs(120);
/// Tensor size of the failure scenarios' collective.
const SMALL: i64 = 1000;

// ---- the child: one rank ----------------------------------------------

/// What the parent told this process to be.
struct Role {
    scenario: String,
    rank: u32,
    world: u32,
    port: u16,
    timeout: Duration,
    victim: Option<u32>,
    agent_store: bool,
}

impl Role {
    fn from_env() -> Option<Self> {
        let scenario = std::env::var(SCENARIO).ok()?;
        let number = |name: &str| std::env::var(name).unwrap().parse::<u64>().unwrap();
        Some(Self {
            scenario,
            rank: number(RANK) as u32,
            world: number(WORLD) as u32,
            port: number(PORT) as u16,
            timeout: Duration::from_millis(number(TIMEOUT_MS)),
            victim: std::env::var(VICTIM).ok().map(|v| v.parse().unwrap()),
            agent_store: std::env::var_os(AGENT_STORE).is_some(),
        })
    }

    fn rendezvous(&self) -> Rendezvous {
        Rendezvous {
            master_addr: "127.0.0.1".into(),
            master_port: self.port,
            rank: self.rank,
            world_size: self.world,
            timeout: self.timeout,
            store_hosted_by_agent: self.agent_store,
        }
    }
}

#[test]
fn rank_child() {
    let Some(role) = Role::from_env() else { return };
    let group = ProcessGroup::gloo(&role.rendezvous()).unwrap();
    assert_eq!((group.rank(), group.world_size()), (role.rank, role.world));
    match role.scenario.as_str() {
        "collectives" => collectives(&group),
        "large" => large(&group),
        "peer_dies" | "peer_exits" | "peer_hangs" => {
            if !survive_a_lost_peer(&group, &role) {
                return; // the victim of "peer_exits": gone without a word
            }
        }
        "timing" => timing(&group),
        "reducer" => reducer(&group),
        other => panic!("unknown scenario {other}"),
    }
    println!("rank {} {} ok", role.rank, role.scenario);
}

/// `values` then `values * 2`, ... on each rank: the sum is `values *
/// world(world+1)/2` plus the rank offsets', exactly, in every kind.
fn rank_values(rank: u32, kind: Kind) -> Tensor {
    let base = Tensor::arange(12, (Kind::Int64, Device::Cpu)).reshape([3, 4]);
    (base * i64::from(rank + 1) + 100 * i64::from(rank)).to_kind(kind)
}

fn expected_sum(world: u32, kind: Kind) -> Tensor {
    let w = i64::from(world);
    let base = Tensor::arange(12, (Kind::Int64, Device::Cpu)).reshape([3, 4]);
    (base * (w * (w + 1) / 2) + 100 * (w * (w - 1) / 2)).to_kind(kind)
}

fn collectives(group: &ProcessGroup) {
    let (rank, world) = (group.rank(), group.world_size());
    refuses_what_gloo_cannot_take(group);
    for kind in [Kind::Float, Kind::Double, Kind::Int64] {
        let mut tensor = rank_values(rank, kind);
        group.all_reduce_sum(&mut tensor).unwrap();
        assert!(tensor.equal(&expected_sum(world, kind)), "{kind:?} sum on rank {rank}: {tensor}");
    }
    sums_each_of_several(group);
    for root in 0..world.min(2) {
        for kind in [Kind::Float, Kind::Int64] {
            let mut tensor = rank_values(rank, kind);
            group.broadcast(&mut tensor, root).unwrap();
            assert!(tensor.equal(&rank_values(root, kind)), "broadcast from {root} on rank {rank}: {tensor}");
        }
    }
    group.barrier().unwrap();
}

/// Several tensors of different kinds and sizes, reduced together: each
/// comes back its own sum. A bad tensor among them is named by its place,
/// and nothing is started (the group stays usable for what follows).
fn sums_each_of_several(group: &ProcessGroup) {
    let (rank, world) = (group.rank(), group.world_size());
    let mut bad = vec![rank_values(rank, Kind::Float), rank_values(rank, Kind::Float).transpose(0, 1)];
    let err = group.all_reduce_sum_each(&mut bad).unwrap_err();
    assert!(err.operation.contains("tensor 1"), "{err}");
    assert!(err.message.contains("not contiguous"), "{err}");
    assert!(bad[0].equal(&rank_values(rank, Kind::Float)), "refused, yet tensor 0 changed on rank {rank}");

    let kinds = [Kind::Float, Kind::Int64, Kind::Double, Kind::Float];
    let mut tensors: Vec<Tensor> = kinds.iter().map(|&kind| rank_values(rank, kind)).collect();
    // A long one too, so that several are really in flight at once.
    let long = Tensor::arange(300_000, (Kind::Int64, Device::Cpu)).remainder(977).to_kind(Kind::Float);
    tensors.push(&long * i64::from(rank + 1));
    group.all_reduce_sum_each(&mut tensors).unwrap();
    for (i, (tensor, &kind)) in tensors.iter().zip(&kinds).enumerate() {
        assert!(tensor.equal(&expected_sum(world, kind)), "tensor {i} ({kind:?}) on rank {rank}: {tensor}");
    }
    let w = i64::from(world);
    assert!(tensors[4].equal(&(long * (w * (w + 1) / 2))), "the long tensor on rank {rank}");
    group.all_reduce_sum_each(&mut []).unwrap();
}

/// Refused before crossing into C++; the group stays usable (the caller's
/// collectives follow).
fn refuses_what_gloo_cannot_take(group: &ProcessGroup) {
    let mut transposed = Tensor::zeros([4, 4], (Kind::Float, Device::Cpu)).transpose(0, 1);
    let err = group.all_reduce_sum(&mut transposed).unwrap_err();
    assert_eq!(err.operation, "all_reduce of 16 floats");
    assert!(err.message.contains("not contiguous"), "{err}");
    assert_eq!(err.rank, group.rank());
    let mut int32 = Tensor::zeros([3], (Kind::Int, Device::Cpu));
    let err = group.all_reduce_sum(&mut int32).unwrap_err();
    assert!(err.message.contains("not f32, f64 or i64"), "{err}");
    let mut tensor = Tensor::zeros([3], (Kind::Float, Device::Cpu));
    let err = group.broadcast(&mut tensor, group.world_size()).unwrap_err();
    assert!(err.operation.starts_with("broadcast of 3 floats from rank"), "{err}");
    assert!(err.message.contains("not below world_size"), "{err}");
}

/// The gradient reducer (c10d's Reducer): refused parameters name
/// themselves; each backward pass leaves every rank's `.grad` the average
/// of the ranks' gradients, for several steps (the buckets are rebuilt
/// after the first), with gradients accumulated into `.grad` in place.
fn reducer(group: &ProcessGroup) {
    let (rank, world) = (group.rank(), group.world_size());
    let err = group.gradient_reducer(&[]).err().unwrap();
    assert!(err.message.contains("no parameters"), "{err}");
    let frozen = Tensor::zeros([3], (Kind::Float, Device::Cpu));
    let err = group.gradient_reducer(&[frozen]).err().unwrap();
    assert!(err.message.contains("parameter 0"), "{err}");
    assert!(err.operation.contains("gradient reducer over 1 parameters"), "{err}");

    let shapes: [&[i64]; 3] = [&[3, 4], &[5], &[2, 2]];
    let weights: Vec<Tensor> =
        shapes.iter().map(|shape| Tensor::ones(*shape, (Kind::Float, Device::Cpu)).set_requires_grad(true)).collect();
    // A 1x1 convolution over a channels_last input, as the model's: left to
    // itself, autograd would give its weight a first gradient with
    // channels_last strides, not the parameter's.
    tch::manual_seed(7);
    let kernel = Tensor::randn([16, 32, 1, 1], (Kind::Float, Device::Cpu)).set_requires_grad(true);
    let input = Tensor::randn([4, 8, 8, 32], (Kind::Float, Device::Cpu)).permute([0, 3, 1, 2]);
    let conv_loss = |k: &Tensor| input.conv2d(k, None::<Tensor>, [1, 1], [0, 0], [1, 1], 1).sum(Kind::Float);
    let unit_kernel_grad = {
        let alone = kernel.detach().copy().set_requires_grad(true);
        Tensor::run_backward(&[&conv_loss(&alone)], &[&alone], false, false).remove(0)
    };
    let mut params: Vec<Tensor> = weights.iter().map(Tensor::shallow_clone).collect();
    params.push(kernel.shallow_clone());
    let reducer = group.gradient_reducer(&params).unwrap();
    for step in 1..=3_i64 {
        tch::no_grad(|| {
            for w in &params {
                let mut grad = w.grad();
                if grad.defined() {
                    let _ = grad.zero_();
                }
            }
        });
        reducer.before_forward().unwrap();
        // d/dw of sum(w * c) is c: rank r's gradient is (r + 1) * step.
        let factor = (i64::from(rank) + 1) * step;
        let loss =
            weights.iter().map(|w| (w * factor).sum(Kind::Float)).fold(conv_loss(&kernel) * factor, |a, b| a + b);
        reducer.before_backward().unwrap();
        reducer.backward(&loss).unwrap();
        let mean = (i64::from(world) + 1) as f64 / 2.0 * step as f64;
        for (i, w) in weights.iter().enumerate() {
            let grad = w.grad();
            let want = Tensor::full(w.size(), mean, (Kind::Float, Device::Cpu));
            assert!(grad.allclose(&want, 1e-6, 1e-6, false), "step {step}, parameter {i} on rank {rank}: {grad}");
        }
        let want = &unit_kernel_grad * mean;
        assert!(kernel.grad().allclose(&want, 1e-5, 1e-5, false), "step {step}, the kernel on rank {rank}");
    }
}

fn large(group: &ProcessGroup) {
    const N: i64 = 25_000_000;
    let world = i64::from(group.world_size());
    let pattern = Tensor::arange(N, (Kind::Int, Device::Cpu)).remainder(1000).to_kind(Kind::Float);
    let mut tensor = &pattern * i64::from(group.rank() + 1);
    let started = Instant::now();
    group.all_reduce_sum(&mut tensor).unwrap();
    println!("rank {}: all_reduce of {N} floats took {:?}", group.rank(), started.elapsed());
    assert!(tensor.equal(&(pattern * (world * (world + 1) / 2))), "25 M sum on rank {}", group.rank());
}

/// The victim leaves after a barrier (killed, exiting, or falling silent);
/// the survivor's next collective must fail with an error naming it and the
/// operation. Returns false for a victim that just exits.
fn survive_a_lost_peer(group: &ProcessGroup, role: &Role) -> bool {
    group.barrier().unwrap();
    if Some(role.rank) == role.victim {
        match role.scenario.as_str() {
            "peer_exits" => return false,
            "peer_dies" => println!("READY to be killed"),
            _ => println!("SILENT from now on"),
        }
        thread::sleep(DEADLINE); // the parent kills it long before
        panic!("the victim was not killed");
    }
    let mut tensor = Tensor::ones([SMALL], (Kind::Float, Device::Cpu));
    let started = Instant::now();
    let err = group.all_reduce_sum(&mut tensor).expect_err("a collective without its peer succeeded");
    let elapsed = started.elapsed();
    println!("SURVIVOR_ERROR after {} ms: {err}", elapsed.as_millis());
    assert_eq!((err.rank, err.world_size), (role.rank, role.world));
    assert_eq!(err.operation, "all_reduce of 1,000 floats");
    // A silent peer is noticed at the time-out (the shim then waits, bounded,
    // for Gloo's own one to retire the work); a gone one at once.
    let limit = if role.scenario == "peer_hangs" { 2 * role.timeout } else { role.timeout };
    assert!(elapsed <= limit, "noticed after {elapsed:?}, time-out {:?}", role.timeout);
    if role.scenario == "peer_hangs" {
        let ms = role.timeout.as_millis().to_string();
        assert!(err.message.contains(&ms), "the error does not name the {ms} ms time-out: {err}");
    }
    let again = group.barrier().unwrap_err();
    assert!(again.message.contains("broken"), "{again}");
    true
}

fn timing(group: &ProcessGroup) {
    const N: i64 = 27_000_000;
    let mut tensor = Tensor::ones([N], (Kind::Float, Device::Cpu));
    group.all_reduce_sum(&mut tensor).unwrap(); // warm-up: first-use allocations
    let mut times = Vec::new();
    for _ in 0..5 {
        let _ = tensor.fill_(1.0);
        let started = Instant::now();
        group.all_reduce_sum(&mut tensor).unwrap();
        times.push(started.elapsed());
    }
    assert!(tensor.equal(&Tensor::full([N], f64::from(group.world_size()), (Kind::Float, Device::Cpu))));
    times.sort();
    println!(
        "TIMING rank {}: all_reduce of 27,000,000 floats, 5 runs: min {:?}, median {:?}, max {:?}",
        group.rank(),
        times[0],
        times[2],
        times[4]
    );
}

// ---- the parent: spawning and watching ranks ---------------------------

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

/// One multi-process run.
struct Job {
    scenario: &'static str,
    world: u32,
    port: u16,
    timeout: Duration,
    victim: Option<u32>,
    agent_store: bool,
}

impl Job {
    fn new(scenario: &'static str, world: u32, timeout: Duration) -> Self {
        Self { scenario, world, port: free_port(), timeout, victim: None, agent_store: false }
    }

    fn spawn_all(&self) -> Vec<RankProcess> {
        (0..self.world).map(|rank| RankProcess::spawn(self, rank)).collect()
    }
}

/// A rank's process and the lines it prints (stdout and stderr).
struct RankProcess {
    rank: u32,
    child: Child,
    lines: Receiver<String>,
    seen: Vec<String>,
}

fn forward_lines(pipe: impl Read + Send + 'static, lines: Sender<String>) {
    thread::spawn(move || {
        for line in BufReader::new(pipe).lines().map_while(Result::ok) {
            if lines.send(line).is_err() {
                break;
            }
        }
    });
}

impl RankProcess {
    fn spawn(job: &Job, rank: u32) -> Self {
        let mut command = Command::new(std::env::current_exe().unwrap());
        command
            .args(["--exact", CHILD_TEST, "--nocapture", "--test-threads=1"])
            .env(SCENARIO, job.scenario)
            .env(RANK, rank.to_string())
            .env(WORLD, job.world.to_string())
            .env(PORT, job.port.to_string())
            .env(TIMEOUT_MS, job.timeout.as_millis().to_string())
            .env_remove(VICTIM)
            .env_remove(AGENT_STORE)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        if let Some(victim) = job.victim {
            command.env(VICTIM, victim.to_string());
        }
        if job.agent_store {
            command.env(AGENT_STORE, "1");
        }
        let mut child = command.spawn().unwrap();
        let (sender, lines) = mpsc::channel();
        forward_lines(child.stdout.take().unwrap(), sender.clone());
        forward_lines(child.stderr.take().unwrap(), sender);
        Self { rank, child, lines, seen: Vec::new() }
    }

    /// Waits (until `DEADLINE`) for a line containing `needle`.
    fn wait_for_line(&mut self, needle: &str) {
        let deadline = Instant::now() + DEADLINE;
        while let Some(left) = deadline.checked_duration_since(Instant::now()) {
            match self.lines.recv_timeout(left) {
                Ok(line) => {
                    let found = line.contains(needle);
                    self.seen.push(line);
                    if found {
                        return;
                    }
                }
                Err(RecvTimeoutError::Timeout) => break,
                Err(RecvTimeoutError::Disconnected) => break,
            }
        }
        let _ = self.child.kill();
        panic!("rank {} never printed {needle:?}:\n{}", self.rank, self.seen.join("\n"));
    }

    fn kill(&mut self) {
        self.child.kill().unwrap();
    }

    /// Its exit status and everything it printed; killed at `DEADLINE`.
    fn finish(mut self) -> (ExitStatus, String) {
        let deadline = Instant::now() + DEADLINE;
        let status = loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                break status;
            }
            if Instant::now() > deadline {
                let _ = self.child.kill();
                let _ = self.child.wait();
                self.seen.extend(self.lines.try_iter());
                panic!("rank {} hung; killed. Output:\n{}", self.rank, self.seen.join("\n"));
            }
            thread::sleep(Duration::from_millis(20));
        };
        // The readers end at the pipes' end-of-file.
        self.seen.extend(self.lines.iter());
        (status, self.seen.join("\n"))
    }
}

/// Every rank exits 0 having printed its "ok" line.
fn assert_all_ok(job: &Job, ranks: Vec<RankProcess>) -> Vec<String> {
    ranks
        .into_iter()
        .map(|process| {
            let rank = process.rank;
            let (status, output) = process.finish();
            assert!(status.success(), "rank {rank} of {} failed ({status}):\n{output}", job.world);
            let ok = format!("rank {rank} {} ok", job.scenario);
            assert!(output.contains(&ok), "rank {rank} never said {ok:?}:\n{output}");
            output
        })
        .collect()
}

fn run_healthy(scenario: &'static str, world: u32) -> Vec<String> {
    let job = Job::new(scenario, world, HEALTHY_TIMEOUT);
    let ranks = job.spawn_all();
    assert_all_ok(&job, ranks)
}

// ---- the tests ----------------------------------------------------------

#[test]
fn two_ranks_sum_broadcast_and_meet() {
    run_healthy("collectives", 2);
}

#[test]
fn three_ranks_sum_broadcast_and_meet() {
    run_healthy("collectives", 3);
}

/// The reducer's gradients are its bucket views from the first pass on:
/// libtorch warns when one arrives in another layout and must be copied.
fn assert_no_layout_copies(outputs: &[String]) {
    for output in outputs {
        assert!(!output.contains("strides do not match"), "a gradient was copied into its bucket:\n{output}");
    }
}

#[test]
fn two_ranks_average_gradients_during_the_backward_pass() {
    assert_no_layout_copies(&run_healthy("reducer", 2));
}

#[test]
fn three_ranks_average_gradients_during_the_backward_pass() {
    assert_no_layout_copies(&run_healthy("reducer", 3));
}

#[test]
fn a_25_million_float_buffer_all_reduces_exactly() {
    for output in run_healthy("large", 2) {
        println!("{}", output.lines().find(|line| line.contains("took")).unwrap_or_default());
    }
}

/// Runs a 2-rank failure scenario with `victim` as the lost rank; returns
/// the survivor's output after checking it exited 0 with the error.
fn run_losing_a_peer(scenario: &'static str, victim: u32) -> String {
    let job = Job { victim: Some(victim), ..Job::new(scenario, 2, FAILURE_TIMEOUT) };
    let mut ranks = job.spawn_all();
    let survivor = ranks.remove(1 - victim as usize);
    let mut lost = ranks.remove(0);
    match scenario {
        "peer_dies" => {
            lost.wait_for_line("READY");
            lost.kill();
        }
        "peer_hangs" => lost.wait_for_line("SILENT"),
        _ => {}
    }
    let (status, output) = survivor.finish();
    let survivor_rank = 1 - victim;
    assert!(status.success(), "surviving rank {survivor_rank} failed ({status}):\n{output}");
    assert!(output.contains(&format!("rank {survivor_rank} {scenario} ok")), "{output}");
    let error = format!("distributed training, rank {survivor_rank} of 2: all_reduce of 1,000 floats: ");
    assert!(output.contains(&error), "no {error:?} in:\n{output}");
    if scenario == "peer_hangs" {
        lost.kill();
    }
    let (lost_status, lost_output) = lost.finish();
    if scenario == "peer_exits" {
        assert!(lost_status.success(), "the exiting rank failed:\n{lost_output}");
    }
    output
}

#[test]
fn a_killed_rank_1_fails_rank_0s_next_collective() {
    let output = run_losing_a_peer("peer_dies", 1);
    println!("{}", output.lines().find(|line| line.contains("SURVIVOR_ERROR")).unwrap_or_default());
}

#[test]
fn a_killed_rank_0_fails_rank_1s_next_collective() {
    let output = run_losing_a_peer("peer_dies", 0);
    println!("{}", output.lines().find(|line| line.contains("SURVIVOR_ERROR")).unwrap_or_default());
}

#[test]
fn a_rank_exiting_without_taking_part_fails_the_next_collective() {
    let output = run_losing_a_peer("peer_exits", 1);
    println!("{}", output.lines().find(|line| line.contains("SURVIVOR_ERROR")).unwrap_or_default());
}

#[test]
fn a_silent_rank_fails_the_next_collective_at_the_timeout() {
    let output = run_losing_a_peer("peer_hangs", 1);
    println!("{}", output.lines().find(|line| line.contains("SURVIVOR_ERROR")).unwrap_or_default());
}

/// Nobody ever comes: as a client (rank 1, or rank 0 under an agent) and as
/// the host of the store whose peers never connect.
#[test]
fn a_rendezvous_nobody_joins_fails_within_the_timeout() {
    let timeout = Duration::from_millis(1500);
    for (rank, agent) in [(1, false), (0, true), (0, false)] {
        let rendezvous = Rendezvous {
            master_addr: "127.0.0.1".into(),
            master_port: free_port(),
            rank,
            world_size: 2,
            timeout,
            store_hosted_by_agent: agent,
        };
        let started = Instant::now();
        let err = ProcessGroup::gloo(&rendezvous).err().expect("a rendezvous without peers succeeded");
        let elapsed = started.elapsed();
        assert_eq!((err.rank, err.world_size), (rank, 2));
        assert_eq!(err.operation, format!("rendezvous with 127.0.0.1:{}", rendezvous.master_port));
        // c10d's client overshoots: each connect attempt may last the whole
        // time-out, and one more follows a back-off (3 s for 1.5 s seen).
        assert!(elapsed < 2 * timeout + Duration::from_secs(5), "rank {rank}, agent {agent}: {elapsed:?}: {err}");
        println!("rank {rank}, agent store {agent}: failed after {elapsed:?}: {err}");
    }
}

/// One process is a whole job: collectives are identities.
#[test]
fn a_world_of_one_needs_no_peers() {
    let rendezvous = Rendezvous {
        master_addr: "127.0.0.1".into(),
        master_port: free_port(),
        rank: 0,
        world_size: 1,
        timeout: HEALTHY_TIMEOUT,
        store_hosted_by_agent: false,
    };
    let group = ProcessGroup::gloo(&rendezvous).unwrap();
    let mut tensor = rank_values(0, Kind::Double);
    group.all_reduce_sum(&mut tensor).unwrap();
    group.broadcast(&mut tensor, 0).unwrap();
    group.barrier().unwrap();
    assert!(tensor.equal(&rank_values(0, Kind::Double)));
}

/// Under torchrun the agent hosts the TCPStore and rank 0 is a client: here
/// PyTorch's own TCPStore (from the venv's torch) stands in for the agent.
#[test]
fn ranks_meet_on_a_store_the_agent_hosts() {
    let python = std::env::var("PYTHON").unwrap_or_else(|_| "python3".to_string());
    let script = "import sys, time\n\
                  from torch.distributed import TCPStore\n\
                  store = TCPStore('127.0.0.1', 0, is_master=True, wait_for_workers=False)\n\
                  print(store.port, flush=True)\n\
                  time.sleep(120)\n";
    let mut agent = Command::new(python).args(["-c", script]).stdout(Stdio::piped()).spawn().unwrap();
    let mut port = String::new();
    BufReader::new(agent.stdout.take().unwrap()).read_line(&mut port).unwrap();
    let port: u16 = port.trim().parse().unwrap_or_else(|_| {
        let _ = agent.kill();
        panic!("the agent's store printed no port: {port:?}")
    });
    let job = Job { port, agent_store: true, ..Job::new("collectives", 2, HEALTHY_TIMEOUT) };
    let ranks = job.spawn_all();
    let outcome = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| assert_all_ok(&job, ranks)));
    let _ = agent.kill();
    let _ = agent.wait();
    if let Err(panic) = outcome {
        std::panic::resume_unwind(panic);
    }
}

/// The figure for docs and reports, not a check: `cargo test -p
/// inception-torch-ext --release --test gloo -- --ignored --nocapture`.
#[test]
#[ignore = "a measurement; run by hand"]
fn time_an_all_reduce_of_27_million_floats_on_two_ranks() {
    for output in run_healthy("timing", 2) {
        println!("{}", output.lines().find(|line| line.contains("TIMING")).unwrap_or_default());
    }
}
