//! Which threads run libtorch's CPU work, and why it matters.
//!
//! libtorch's CPU kernels run in OpenMP teams (GNU libgomp). Between the
//! forward pass's ~200 parallel regions a team's threads spin, which is
//! what keeps a pass fast, but only while libgomp counts no more OpenMP
//! threads than cores. A team led by any thread but the process's initial
//! one counts one thread more, and on a machine where every core has an
//! OpenMP thread (the default) that is one too many: its threads sleep and
//! wake on a futex around each region instead. Measured on 2 cores at 299
//! px in bf16 (`serve_bench forward`): 45 ms per single-image pass on the
//! main thread, 65–80 ms on another, with 250 times the context switches.
//!
//! So the binary lends its main thread to the batch worker
//! ([`lend_this_thread`]), and checkpoints are built on a thread that ends
//! with the build ([`on_passing_thread`]), whose team ends with it.

use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::mpsc;

/// Work for a lent thread.
type Work = Box<dyn FnOnce() + Send>;

/// Where the batch worker runs.
pub enum WorkerThread {
    /// A thread of its own (tests, and embedders that keep their main thread).
    Own,
    /// A thread lent by [`lend_this_thread`].
    Lent(mpsc::Sender<Work>),
}

/// The lending side of [`WorkerThread::Lent`].
pub struct Lender {
    work: mpsc::Receiver<Work>,
}

/// A [`WorkerThread`] that hands its work to the calling thread, which runs
/// it in [`Lender::run`].
pub fn lend_this_thread() -> (WorkerThread, Lender) {
    let (send, work) = mpsc::channel();
    (WorkerThread::Lent(send), Lender { work })
}

impl Lender {
    /// Runs what the [`WorkerThread`] is given, on this thread, until it and
    /// every copy of its sender are dropped.
    pub fn run(self) {
        for work in self.work {
            work();
        }
    }
}

/// Tells when work handed to a [`WorkerThread`] has ended.
pub struct Finished(mpsc::Receiver<bool>);

impl Finished {
    /// Blocks until the work has ended; false if it panicked or never ran.
    pub fn wait(self) -> bool {
        self.0.recv().unwrap_or(false)
    }
}

impl WorkerThread {
    /// Runs `work` where this placement says, once.
    pub(crate) fn run(self, name: &str, work: impl FnOnce() + Send + 'static) -> std::io::Result<Finished> {
        let (done, finished) = mpsc::sync_channel(1);
        let wrapped = move || {
            let ok = catch_unwind(AssertUnwindSafe(work)).is_ok();
            let _ = done.send(ok);
        };
        match self {
            WorkerThread::Own => {
                std::thread::Builder::new().name(name.into()).spawn(wrapped)?;
            }
            WorkerThread::Lent(lender) => lender
                .send(Box::new(wrapped))
                .map_err(|_| std::io::Error::other("the thread lent to the batch worker has stopped"))?,
        }
        Ok(Finished(finished))
    }
}

/// Runs `work` on a new thread that ends with it, and waits for its result
/// without blocking the async runtime. None if it panicked.
pub(crate) async fn on_passing_thread<T: Send + 'static>(
    name: &str,
    work: impl FnOnce() -> T + Send + 'static,
) -> std::io::Result<Option<T>> {
    let (send, result) = tokio::sync::oneshot::channel();
    std::thread::Builder::new().name(name.into()).spawn(move || {
        let _ = send.send(catch_unwind(AssertUnwindSafe(work)).ok());
    })?;
    Ok(result.await.ok().flatten())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lent_work_runs_on_the_lending_thread_and_the_lender_ends_after_it() {
        let (placement, lender) = lend_this_thread();
        let here = std::thread::current().id();
        let (ran_on, seen) = mpsc::channel();
        let finished = std::thread::spawn(move || {
            placement.run("test", move || ran_on.send(std::thread::current().id()).unwrap()).unwrap()
        })
        .join()
        .unwrap();
        lender.run();
        assert_eq!(seen.recv().unwrap(), here);
        assert!(finished.wait());
    }

    #[test]
    fn a_panic_is_reported_not_propagated() {
        let finished = WorkerThread::Own.run("test", || panic!("deliberately")).unwrap();
        assert!(!finished.wait());
        let (placement, lender) = lend_this_thread();
        let finished = placement.run("test", || panic!("deliberately")).unwrap();
        lender.run();
        assert!(!finished.wait());
    }

    #[tokio::test]
    async fn passing_threads_return_their_result_and_end() {
        let id = on_passing_thread("test", || std::thread::current().id()).await.unwrap().unwrap();
        assert_ne!(id, std::thread::current().id());
        assert_eq!(on_passing_thread("test", || -> u8 { panic!("deliberately") }).await.unwrap(), None);
    }
}
