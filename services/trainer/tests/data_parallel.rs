//! Data-parallel steps between ranks that are separate processes (Gloo over
//! 127.0.0.1): this test binary re-executes itself once per rank, running
//! only `rank_child`, which reads its role from the environment (and returns
//! at once in an ordinary test run).
//!
//! - The averaged gradient equals the one-process gradient of the combined
//!   batch split over as many towers as there are ranks (each tower, like
//!   each rank, normalises with its own share's batch statistics).
//! - After several steps every rank's state (weights, batch-norm statistics,
//!   moving averages, optimizer slots) is bit-identical, though rank 1
//!   started from other weights (rank 0's are broadcast).
//! - One rank's divergence stops every rank.
//!
//! Each both ways: gradients all-reduced after the backward pass
//! (`DataParallel::reduce`) and during it (`DataParallel::step` with the
//! overlap on: c10d's Reducer, DistributedDataParallel's engine).

use inception_core::Settings;
use inception_model::ModelConfig;
use inception_torch_ext::distributed::{Backend, Rendezvous};
use inception_trainer::distributed::DataParallel;
use inception_trainer::{TrainError, TrainState};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};
use tch::{Device, Kind, Tensor};

const CHILD_TEST: &str = "rank_child";
const SCENARIO: &str = "INCEPTION_DP_SCENARIO";
const RANK: &str = "INCEPTION_DP_RANK";
const WORLD: &str = "INCEPTION_DP_WORLD";
const PORT: &str = "INCEPTION_DP_PORT";
const OUT: &str = "INCEPTION_DP_OUT";
/// Images each rank trains on per step.
const PER_RANK: i64 = 3;
const STEPS: u64 = 3;
/// Held while this process draws from libtorch's random generator.
static REFERENCE: std::sync::Mutex<()> = std::sync::Mutex::new(());

fn cfg() -> ModelConfig {
    ModelConfig { dropout: 0.0, ..ModelConfig::tiny(6) }
}

fn labels() -> Vec<String> {
    (1..=5).map(|i| format!("class{i}")).collect()
}

/// A job's whole batch of step `step`, the same in every process.
fn global_batch(step: u64, world: i64) -> (Tensor, Tensor) {
    tch::manual_seed(100 + step as i64);
    let n = PER_RANK * world;
    let size = cfg().image_size;
    let images = Tensor::randint(256, [n, size, size, 3], (Kind::Uint8, Device::Cpu));
    let labels = Tensor::randint_low(1, 6, [n], (Kind::Int64, Device::Cpu));
    (images, labels)
}

fn state(seed: i64, towers: usize) -> TrainState {
    let mut settings = Settings::defaults().expect("defaults");
    settings.train.seed = seed;
    TrainState::new(&cfg(), labels(), &settings, &vec![Device::Cpu; towers])
}

// ---- the child: one rank ----------------------------------------------

#[test]
fn rank_child() {
    let Ok(scenario) = std::env::var(SCENARIO) else { return };
    let number = |name: &str| std::env::var(name).unwrap().parse::<u32>().unwrap();
    let (rank, world) = (number(RANK), number(WORLD));
    let out = PathBuf::from(std::env::var(OUT).unwrap());
    tch::set_num_threads(1);
    // Rank 0's seed is the reference's; the others start elsewhere.
    let mut state = state(7 + i64::from(rank) * 1000, 1);
    let overlap = scenario.starts_with("overlap");
    let diverge = scenario.ends_with("diverge");
    let mut group = DataParallel::join(
        &Rendezvous {
            master_addr: "127.0.0.1".into(),
            master_port: number(PORT) as u16,
            rank,
            world_size: world,
            timeout: Duration::from_secs(60),
            store_hosted_by_agent: false,
        },
        Backend::Gloo,
        Device::Cpu,
    )
    .unwrap()
    .with_overlap(overlap);
    group.broadcast_state(&mut state).unwrap();
    if overlap && diverge && rank == 1 {
        // Its forward pass gives a NaN loss, its gradients are NaN: all-reduced all the same.
        let _ = tch::no_grad(|| state.optimizer.variables()[0].shallow_clone().fill_(f64::NAN));
    }
    for step in 0..STEPS {
        let (images, labels) = global_batch(step, i64::from(world));
        let (mine, my_labels) = (
            images.narrow(0, i64::from(rank) * PER_RANK, PER_RANK),
            labels.narrow(0, i64::from(rank) * PER_RANK, PER_RANK),
        );
        let outcome = if overlap {
            group.step(&mut state, &mine, &my_labels, PER_RANK as u64)
        } else {
            let local = if diverge && rank == 1 {
                Err(TrainError::Diverged { step: state.step, loss: f64::NAN })
            } else {
                state.compute_gradients(&mine, &my_labels)
            };
            group.reduce(&state, local, PER_RANK as u64)
        };
        let mut reduced = match outcome {
            Err(TrainError::Diverged { .. }) if diverge => {
                println!("rank {rank}: diverged together");
                return;
            }
            other => other.unwrap(),
        };
        assert_eq!(reduced.examples, (PER_RANK as u64) * u64::from(world), "every rank's examples are counted");
        if step == 0 {
            let named: Vec<(String, Tensor)> =
                state.optimizer.names().into_iter().zip(reduced.gradients.iter().map(Tensor::shallow_clone)).collect();
            Tensor::write_safetensors(&named, out.join(format!("gradients-{rank}.safetensors"))).unwrap();
        }
        state.apply_update(0.05, &mut reduced.gradients, reduced.examples);
    }
    Tensor::write_safetensors(&state.checkpoint_tensors(), out.join(format!("state-{rank}.safetensors"))).unwrap();
    println!("rank {rank}: done at step {}", state.step);
}

// ---- the parent ---------------------------------------------------------

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

/// Runs `world` ranks of `scenario`; each rank's output, after checking
/// that it exited successfully within two minutes.
fn run_ranks(scenario: &str, world: u32, out: &Path) -> Vec<String> {
    let port = free_port().to_string();
    let children: Vec<_> = (0..world)
        .map(|rank| {
            Command::new(std::env::current_exe().unwrap())
                .args(["--exact", CHILD_TEST, "--nocapture", "--test-threads=1"])
                .env(SCENARIO, scenario)
                .env(RANK, rank.to_string())
                .env(WORLD, world.to_string())
                .env(PORT, &port)
                .env(OUT, out)
                .stdout(Stdio::piped())
                .stderr(Stdio::piped())
                .spawn()
                .unwrap()
        })
        .collect();
    let deadline = Instant::now() + Duration::from_secs(120);
    children
        .into_iter()
        .enumerate()
        .map(|(rank, mut child)| {
            while child.try_wait().unwrap().is_none() {
                if Instant::now() > deadline {
                    child.kill().ok();
                }
                std::thread::sleep(Duration::from_millis(50));
            }
            let output = child.wait_with_output().unwrap();
            let text =
                format!("{}{}", String::from_utf8_lossy(&output.stdout), String::from_utf8_lossy(&output.stderr));
            assert!(output.status.success(), "rank {rank} failed:\n{text}");
            text
        })
        .collect()
}

fn read(path: &Path) -> Vec<(String, Tensor)> {
    let mut named = Tensor::read_safetensors(path).unwrap();
    named.sort_by(|a, b| a.0.cmp(&b.0));
    named
}

fn check_job(world: u32, scenario: &str) {
    let dir = tempfile::tempdir().unwrap();
    let outputs = run_ranks(scenario, world, dir.path());
    for (rank, text) in outputs.iter().enumerate() {
        assert!(text.contains(&format!("rank {rank}: done at step {STEPS}")), "{text}");
    }

    // Bit-identical state on every rank.
    let reference = read(&dir.path().join("state-0.safetensors"));
    assert!(reference.len() > 100, "weights, statistics, averages and slots");
    for rank in 1..world {
        let other = read(&dir.path().join(format!("state-{rank}.safetensors")));
        assert_eq!(other.len(), reference.len());
        for ((name, a), (other_name, b)) in reference.iter().zip(&other) {
            assert_eq!(name, other_name);
            assert!(a.equal(b), "rank {rank}'s {name} differs from rank 0's");
        }
    }

    // The averaged gradient: one process, the combined batch over `world`
    // towers, with the ranks' one thread (the tiny model's early layers are
    // so ill-conditioned that another thread count's summation order moves
    // their gradients by percents).
    // Under a lock: libtorch's random generator is one per process, and
    // tests run on parallel threads (another test's draws between the
    // seed and ours changed the reference's weights or batch).
    let (single, expected) = {
        let _alone = REFERENCE.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        tch::set_num_threads(1);
        let mut single = state(7, world as usize);
        let (images, labels) = global_batch(0, i64::from(world));
        let (expected, _) = single.compute_gradients(&images, &labels).unwrap();
        (single, expected)
    };
    let got = read(&dir.path().join("gradients-0.safetensors"));
    let by_name: std::collections::HashMap<String, Tensor> = got.into_iter().collect();
    let mut compared = 0;
    for (name, want) in single.optimizer.names().into_iter().zip(&expected) {
        let have = &by_name[&name];
        // Relative to the tensor's largest entry (at least 1): three ranks
        // sum in another order than three towers do.
        let difference = (have - want).abs().max().double_value(&[]);
        let size = want.abs().max().double_value(&[]).max(1.0);
        assert!(difference <= 1e-5 * size, "{name}: averaged gradient differs by {difference} (largest entry {size})");
        compared += 1;
    }
    assert!(compared > 100);
    let scale = expected.iter().map(|g| g.abs().max().double_value(&[])).fold(0.0, f64::max);
    assert!(scale > 1e-3, "gradients are not all zero, so the comparison means something");
}

#[test]
fn two_ranks_average_gradients_and_stay_bit_identical() {
    check_job(2, "train");
}

#[test]
fn three_ranks_average_gradients_and_stay_bit_identical() {
    check_job(3, "train");
}

#[test]
fn two_ranks_overlapping_the_all_reduce_average_gradients_and_stay_bit_identical() {
    check_job(2, "overlap");
}

#[test]
fn three_ranks_overlapping_the_all_reduce_average_gradients_and_stay_bit_identical() {
    check_job(3, "overlap");
}

fn check_divergence(scenario: &str) {
    let dir = tempfile::tempdir().unwrap();
    let outputs = run_ranks(scenario, 2, dir.path());
    for (rank, text) in outputs.iter().enumerate() {
        assert!(text.contains(&format!("rank {rank}: diverged together")), "{text}");
    }
}

#[test]
fn one_ranks_divergence_stops_every_rank() {
    check_divergence("diverge");
}

#[test]
fn one_ranks_divergence_stops_every_rank_overlapping_the_all_reduce() {
    check_divergence("overlap-diverge");
}
