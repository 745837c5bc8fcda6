//! `inception-serve`: serves the run's promoted checkpoint over HTTP.

use clap::Parser;
use inception_core::bootstrap::{self, ServiceSpec};
use inception_core::cli::{flag, CommonArgs, LogArgs};
use inception_core::shutdown::CancellationToken;
use inception_serve::placement::WorkerThread;
use std::process::ExitCode;

/// Answers POST /v1/classify (an image as the body, or several as
/// multipart/form-data) with each image's top-k labels, from the run's
/// promoted checkpoint (serve.checkpoint), swapped in as new ones are
/// promoted. Needs only the store; NATS announcements make swaps immediate.
#[derive(Debug, Parser)]
#[command(name = "inception-serve", version)]
struct Args {
    #[command(flatten)]
    common: CommonArgs,
    #[command(flatten)]
    logs: LogArgs,
    /// Name of the training run whose checkpoints to serve (pipeline.run).
    #[arg(long)]
    run: Option<String>,
    /// Listen here for the API (serve.listen_addr).
    #[arg(long)]
    listen_addr: Option<String>,
    /// Serve metrics and health here (serve.metrics_addr).
    #[arg(long)]
    metrics_addr: Option<String>,
    /// Which checkpoint: promoted, best or latest (serve.checkpoint).
    #[arg(long)]
    checkpoint: Option<String>,
}

const SPEC: ServiceSpec = ServiceSpec {
    name: "serve",
    metrics_addr: |s| &s.serve.metrics_addr,
    metrics_addr_key: "serve.metrics_addr",
    retain_freed_memory: Some((|s| s.serve.retain_freed_memory, "serve.retain_freed_memory")),
    one_shot: |_| false,
};

fn main() -> ExitCode {
    let args = Args::parse();
    // The batch worker runs here, on the initial thread, where libtorch's
    // OpenMP teams keep spinning between kernels (inception_serve::placement);
    // the async runtime gets a thread of its own.
    let (placement, lender) = inception_serve::placement::lend_this_thread();
    let runtime = std::thread::Builder::new()
        .name("serve-runtime".into())
        .spawn(move || bootstrap::block_on(run(args, placement)));
    let outcome = match runtime {
        Ok(runtime) => {
            lender.run();
            runtime.join().unwrap_or_else(|_| Err(anyhow::anyhow!("the server's runtime panicked")))
        }
        Err(e) => Err(anyhow::anyhow!("cannot start the server's runtime thread: {e}")),
    };
    bootstrap::exit(outcome)
}

async fn run(args: Args, placement: WorkerThread) -> anyhow::Result<()> {
    let mut o = Vec::new();
    flag(&mut o, "pipeline.run", &args.run);
    flag(&mut o, "serve.listen_addr", &args.listen_addr);
    flag(&mut o, "serve.metrics_addr", &args.metrics_addr);
    flag(&mut o, "serve.checkpoint", &args.checkpoint);
    let local = bootstrap::start_local(&SPEC, &args.common, &args.logs, o).await?;
    let shutdown = local.shutdown.clone();
    let (settings, store, readiness) = (&local.settings, local.store.clone(), local.readiness.clone());
    let server = inception_serve::Server::start_on(settings, store, readiness, shutdown.clone(), placement)
        .await
        .map_err(inception_serve::ServeError::into_anyhow)?;
    // Announcements only speed swaps up: the server serves from the store
    // while NATS is away (it is retried without end).
    let (hints, which, run) = (server.hints(), server.checkpoint(), server.run().to_string());
    tokio::spawn(async move { follow(local, hints, which, run, shutdown).await });
    server.wait().await?;
    Ok(())
}

async fn follow(
    local: bootstrap::Local,
    hints: tokio::sync::mpsc::Sender<inception_serve::Hint>,
    which: inception_core::settings::ServedCheckpoint,
    run: String,
    shutdown: CancellationToken,
) {
    match local.connect().await {
        Ok(Some(service)) => {
            if let Err(e) = inception_serve::follow_announcements(&service.streams, &run, which, hints, &shutdown).await
            {
                tracing::warn!("announcements not followed ({e}); the store is polled (serve.poll_interval)");
            }
        }
        Ok(None) => {}
        Err(e) => tracing::warn!("NATS: {e}; the store is polled (serve.poll_interval)"),
    }
}
