//! Dynamic batching: images of concurrent requests share forward passes.
//! One worker thread takes the first waiting image, waits at most
//! `max_wait` for others (up to `batch_size`), and runs them together on
//! the model each was preprocessed for, so that a swap never mixes models in
//! a pass and a request in flight finishes on the model it started with.
//! It waits only while other images are being decoded (about to be queued):
//! a lone request is not held back for companions that are not coming.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::mpsc::{self, Receiver, RecvTimeoutError, SyncSender, TrySendError};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::oneshot;

use crate::model::{Prediction, ServedModel};
use crate::placement::{Finished, WorkerThread};

/// What a job's requester gets: its predictions, or why the pass failed.
pub(crate) type Reply = Result<Vec<Prediction>, String>;

/// One preprocessed image waiting for a forward pass.
pub(crate) struct Job {
    pub(crate) model: Arc<ServedModel>,
    pub(crate) pixels: Vec<u8>,
    pub(crate) top_k: usize,
    pub(crate) reply: oneshot::Sender<Reply>,
}

/// Why a job was not queued.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Refused {
    /// The queue holds `serve.queue_images` images already.
    Full,
    /// The worker has stopped (shutting down).
    Stopped,
}

/// The queue's sending end (cheap to clone).
#[derive(Clone)]
pub(crate) struct Batcher {
    queue: SyncSender<Job>,
    /// Images of requests being decoded, not yet queued.
    coming: Arc<AtomicUsize>,
}

/// Counts a request's images as coming until dropped (queued or refused).
pub(crate) struct Coming {
    count: usize,
    coming: Arc<AtomicUsize>,
}

impl Coming {
    /// One of the images is no longer coming (it is being queued).
    fn arrived(&mut self) {
        if self.count > 0 {
            self.count -= 1;
            self.coming.fetch_sub(1, Ordering::SeqCst);
        }
    }
}

impl Drop for Coming {
    fn drop(&mut self) {
        self.coming.fetch_sub(self.count, Ordering::SeqCst);
    }
}

impl Batcher {
    /// Starts the worker where `placement` says; it ends once every [`Batcher`] is dropped
    /// and the jobs already queued are done.
    pub(crate) fn start(
        batch_size: usize,
        max_wait: Duration,
        capacity: usize,
        placement: WorkerThread,
    ) -> std::io::Result<(Self, Finished)> {
        let (queue, jobs) = mpsc::sync_channel(capacity);
        let coming = Arc::new(AtomicUsize::new(0));
        let waiting_for = Arc::clone(&coming);
        let worker = placement.run("serve-batches", move || work(&jobs, batch_size.max(1), max_wait, &waiting_for))?;
        Ok((Self { queue, coming }, worker))
    }

    /// Announces `count` images that will be queued soon (decoding now).
    pub(crate) fn coming(&self, count: usize) -> Coming {
        self.coming.fetch_add(count, Ordering::SeqCst);
        Coming { count, coming: Arc::clone(&self.coming) }
    }

    /// Queues a job without waiting for room; it is no longer `coming`.
    /// (Uncounted before it is queued: a worker that saw it still coming
    /// after it had arrived would wait `max_wait` for nothing.)
    pub(crate) fn submit(&self, job: Job, coming: &mut Coming) -> Result<(), Refused> {
        coming.arrived();
        self.queue.try_send(job).map_err(|e| match e {
            TrySendError::Full(_) => Refused::Full,
            TrySendError::Disconnected(_) => Refused::Stopped,
        })
    }
}

fn work(jobs: &Receiver<Job>, batch_size: usize, max_wait: Duration, coming: &AtomicUsize) {
    while let Some(batch) = collect(jobs, batch_size, max_wait, coming) {
        for group in by_model(batch) {
            run(group);
        }
    }
    tracing::debug!("batch worker stopped");
}

/// The next batch: the first job, and whatever else arrives within
/// `max_wait` of it while more images are `coming`, up to `batch_size`.
/// None once no sender is left.
fn collect(jobs: &Receiver<Job>, batch_size: usize, max_wait: Duration, coming: &AtomicUsize) -> Option<Vec<Job>> {
    let first = jobs.recv().ok()?;
    let deadline = Instant::now() + max_wait;
    let mut batch = vec![first];
    while batch.len() < batch_size {
        // Jobs already waiting join at once, even past the deadline.
        match jobs.try_recv() {
            Ok(job) => {
                batch.push(job);
                continue;
            }
            Err(mpsc::TryRecvError::Disconnected) => break,
            Err(mpsc::TryRecvError::Empty) => {}
        }
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() || coming.load(Ordering::SeqCst) == 0 {
            break;
        }
        match jobs.recv_timeout(left) {
            Ok(job) => batch.push(job),
            Err(RecvTimeoutError::Timeout | RecvTimeoutError::Disconnected) => break,
        }
    }
    Some(batch)
}

/// Splits a batch by the model its jobs were preprocessed for (one group
/// but around a swap), keeping their order.
fn by_model(batch: Vec<Job>) -> Vec<Vec<Job>> {
    let mut groups: Vec<Vec<Job>> = Vec::new();
    for job in batch {
        match groups.iter_mut().find(|g| Arc::ptr_eq(&g[0].model, &job.model)) {
            Some(group) => group.push(job),
            None => groups.push(vec![job]),
        }
    }
    groups
}

/// One forward pass over `group`; every job gets its answer.
fn run(group: Vec<Job>) {
    metrics::histogram!("inception_serve_batch_images").record(group.len() as f64);
    let model = Arc::clone(&group[0].model);
    let k = group.iter().map(|j| j.top_k).max().unwrap_or(1);
    let images: Vec<&[u8]> = group.iter().map(|j| j.pixels.as_slice()).collect();
    let started = Instant::now();
    let outcome = model.classify(&images, k);
    metrics::histogram!("inception_serve_forward_seconds").record(started.elapsed().as_secs_f64());
    drop(images);
    match outcome {
        Ok(all) => {
            for (job, mut predictions) in group.into_iter().zip(all) {
                predictions.truncate(job.top_k);
                // A requester that went away (client disconnected) needs nothing.
                let _ = job.reply.send(Ok(predictions));
            }
        }
        Err(failure) => {
            tracing::error!(step = model.step, "forward pass failed: {}", failure.message);
            for job in group {
                let _ = job.reply.send(Err(format!("the model failed: {}", failure.message)));
            }
        }
    }
}
