//! The serving benchmark's helpers (scripts/bench-serve.sh):
//!
//! * `checkpoint`: writes a checkpoint with fresh random weights (torchvision's
//!   names, average pools counting padding as torchvision does, so that a
//!   PyTorch server of the same weights computes the same function), points
//!   the run's `promoted` pointer at it, and writes a demo photo.
//! * `load`: N concurrent clients POST the photo on loopback, bounded by a
//!   request count and a time limit; prints one JSON line: requests/s and
//!   latency p50/p99.
//! * `forward`: loads DIR's checkpoint as the server does and times its
//!   forward pass alone (`ServedModel::classify`) at a batch size, on the
//!   main thread and on a thread of its own, as the server's batch worker
//!   runs it; prints one JSON line.

use anyhow::{bail, Context};
use bytes::Bytes;
use clap::{Parser, Subcommand};
use inception_core::settings::StoreSettings;
use inception_core::{keys, Settings, Store};
use inception_model::{checkpoint, InceptionV3, ModelConfig};
use std::path::PathBuf;
use std::time::{Duration, Instant};
use tch::nn::VarStore;

#[derive(Debug, Parser)]
struct Args {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Writes a random-weight checkpoint under DIR/store, promotes it, writes DIR/photo.jpg.
    Checkpoint {
        #[arg(long)]
        dir: PathBuf,
        #[arg(long, default_value = "bench")]
        run: String,
        #[arg(long, default_value_t = 299)]
        image_size: i64,
        #[arg(long, default_value_t = 1.0)]
        depth_multiplier: f64,
        #[arg(long, default_value_t = 16)]
        min_depth: i64,
        /// Labels (outputs = labels + 1, the background).
        #[arg(long, default_value_t = 5)]
        labels: usize,
    },
    /// Concurrent clients POSTing one image; prints a JSON line of results.
    Load {
        /// e.g. http://127.0.0.1:8080/v1/classify
        #[arg(long)]
        url: String,
        #[arg(long)]
        image: PathBuf,
        #[arg(long, default_value_t = 1)]
        clients: usize,
        /// Requests in all (spread over the clients).
        #[arg(long, default_value_t = 200)]
        requests: usize,
        /// Stop after this many seconds even if requests are left.
        #[arg(long, default_value_t = 60.0)]
        max_seconds: f64,
    },
    /// Times the server's forward pass on DIR's checkpoint, without HTTP.
    Forward {
        #[arg(long)]
        dir: PathBuf,
        #[arg(long, default_value = "bench")]
        run: String,
        #[arg(long, default_value_t = 1)]
        batch_size: usize,
        #[arg(long, default_value_t = 20)]
        passes: usize,
        /// As serve.precision.
        #[arg(long, default_value = "auto")]
        precision: String,
    },
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    match Args::parse().command {
        Command::Checkpoint { dir, run, image_size, depth_multiplier, min_depth, labels } => {
            write_checkpoint(&dir, &run, image_size, depth_multiplier, min_depth, labels).await
        }
        Command::Load { url, image, clients, requests, max_seconds } => {
            load(&url, &image, clients, requests, Duration::from_secs_f64(max_seconds)).await
        }
        Command::Forward { dir, run, batch_size, passes, precision } => {
            forward(&dir, &run, batch_size, passes, &precision).await
        }
    }
}

async fn forward(dir: &std::path::Path, run: &str, batch: usize, passes: usize, precision: &str) -> anyhow::Result<()> {
    use inception_model::precision::Precision;
    use inception_serve::model::ServedModel;
    let _ = inception_core::memory::retain_freed_memory();
    let mut settings = Settings::defaults()?;
    settings.store = StoreSettings { url: format!("file://{}", dir.join("store").display()), ..settings.store };
    let store = Store::open(&settings.store)?;
    let key = checkpoint::read_promoted(&store, run).await?.context("no promoted checkpoint")?.metadata;
    let (meta, tensors) = checkpoint::read(&store, &key).await?;
    let device = tch::Device::Cpu;
    let setting = serde_json::from_value(serde_json::json!(precision)).context("--precision")?;
    let precision = Precision::resolve(setting, device, "--precision").map_err(anyhow::Error::msg)?;
    let model = ServedModel::build(&key, meta, tensors, device, precision, 0.875)?;
    let photo = std::fs::read(dir.join("photo.jpg"))?;
    let pixels = model.preprocess(&photo, u64::MAX).map_err(|e| anyhow::anyhow!("{e}"))?;
    let time = |model: &ServedModel| -> anyhow::Result<f64> {
        let images: Vec<&[u8]> = (0..batch).map(|_| pixels.as_slice()).collect();
        model.classify(&images, 1).map_err(|f| anyhow::anyhow!(f.message))?;
        let started = Instant::now();
        for _ in 0..passes {
            model.classify(&images, 1).map_err(|f| anyhow::anyhow!(f.message))?;
        }
        Ok(started.elapsed().as_secs_f64() / passes as f64)
    };
    // The second shows what inception_serve::placement avoids: a pass led by a thread
    // other than the initial one while the initial one has a team.
    let main_thread = time(&model)?;
    let own_thread = std::thread::scope(|s| s.spawn(|| time(&model)).join())
        .map_err(|_| anyhow::anyhow!("the timing thread panicked"))??;
    let result = serde_json::json!({
        "batch": batch, "precision": precision.to_string(), "threads": tch::get_num_threads(),
        "main_thread_seconds_per_pass": main_thread, "own_thread_seconds_per_pass": own_thread,
        "images_per_second": batch as f64 / main_thread,
    });
    println!("{result}");
    Ok(())
}

async fn write_checkpoint(
    dir: &std::path::Path,
    run: &str,
    image_size: i64,
    depth_multiplier: f64,
    min_depth: i64,
    labels: usize,
) -> anyhow::Result<()> {
    let mut settings = Settings::defaults()?;
    settings.store = StoreSettings { url: format!("file://{}", dir.join("store").display()), ..settings.store };
    let store = Store::open(&settings.store)?;
    let model = ModelConfig {
        num_classes: labels as i64 + 1,
        image_size,
        depth_multiplier,
        min_depth,
        dropout: 0.2,
        aux_logits: true,
        avg_pool_count_include_pad: true,
    };
    tch::manual_seed(0);
    let vs = VarStore::new(tch::Device::Cpu);
    let _ = InceptionV3::new(&vs.root(), &model);
    let named: Vec<_> = vs.variables().into_iter().collect();
    let step = 1;
    let weights = keys::checkpoint_weights(run, step);
    store.put(&weights, Bytes::from(checkpoint::tensors_to_bytes(&named)?)).await?;
    let meta = serde_json::json!({
        "format_version": checkpoint::FORMAT_VERSION, "run": run, "step": step,
        "labels": (1..=labels).map(|i| format!("class-{i}")).collect::<Vec<_>>(),
        "model": model, "bn_updates": 0, "examples_seen": 0, "weights": weights, "created_unix": 0,
    });
    let metadata = keys::checkpoint_metadata(run, step);
    store.put(&metadata, Bytes::from(meta.to_string())).await?;
    let pointer = serde_json::json!({ "step": step, "metadata": metadata, "weights": weights,
        "precision_at_1": 0.0, "validation_loss": 0.0 });
    store.put(&keys::checkpoint_promoted(run), Bytes::from(pointer.to_string())).await?;
    let photos = tempfile::tempdir()?;
    inception_demo_data::generate(photos.path(), 0, 1, 7)?;
    std::fs::copy(photos.path().join("validation/daisy/daisy_0000.jpg"), dir.join("photo.jpg"))?;
    // The weights' file, for the PyTorch baseline.
    println!("{}", dir.join("store").join(&weights).display());
    Ok(())
}

async fn load(
    url: &str,
    image: &std::path::Path,
    clients: usize,
    requests: usize,
    limit: Duration,
) -> anyhow::Result<()> {
    if !url.starts_with("http://127.0.0.1") && !url.starts_with("http://localhost") {
        bail!("{url}: the load generator only talks to loopback");
    }
    let body = Bytes::from(std::fs::read(image).with_context(|| image.display().to_string())?);
    let http = reqwest::Client::builder().pool_max_idle_per_host(clients).build()?;
    let next = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let started = Instant::now();
    let deadline = started + limit;
    let tasks: Vec<_> = (0..clients)
        .map(|_| {
            let (http, url, body, next) = (http.clone(), url.to_string(), body.clone(), next.clone());
            tokio::spawn(async move {
                let (mut latencies, mut failed) = (Vec::new(), 0usize);
                while next.fetch_add(1, std::sync::atomic::Ordering::Relaxed) < requests && Instant::now() < deadline {
                    let sent = Instant::now();
                    let answered = match http.post(&url).body(body.clone()).send().await {
                        Ok(r) => r.status().is_success() && r.bytes().await.is_ok(),
                        Err(_) => false,
                    };
                    if answered {
                        latencies.push(sent.elapsed().as_secs_f64());
                    } else {
                        failed += 1;
                    }
                }
                (latencies, failed)
            })
        })
        .collect();
    let (mut latencies, mut failed) = (Vec::new(), 0);
    for t in tasks {
        let (l, f) = t.await?;
        latencies.extend(l);
        failed += f;
    }
    let seconds = started.elapsed().as_secs_f64();
    latencies.sort_by(f64::total_cmp);
    let quantile = |q: f64| {
        if latencies.is_empty() {
            return f64::NAN;
        }
        let i = ((latencies.len() as f64 * q).ceil() as usize).clamp(1, latencies.len()) - 1;
        latencies[i] * 1000.0
    };
    let result = serde_json::json!({
        "clients": clients, "ok": latencies.len(), "failed": failed, "seconds": seconds,
        "requests_per_second": latencies.len() as f64 / seconds,
        "p50_ms": quantile(0.5), "p99_ms": quantile(0.99),
    });
    println!("{result}");
    Ok(())
}
