//! A child process that cannot outlive its owner: `inception demo` runs the
//! services this way, and so do the cross-service tests.

use std::process::{Child, ExitStatus};
use std::time::{Duration, Instant};

/// What dropping a [`ChildGuard`] does to a child that still runs.
#[derive(Debug, Clone, Copy)]
pub enum OnDrop {
    /// SIGKILL at once.
    Kill,
    /// SIGTERM, then SIGKILL if it has not exited within the grace period.
    Terminate(Duration),
}

/// Owns a child process; stops it when dropped (see [`OnDrop`]).
#[derive(Debug)]
pub struct ChildGuard {
    name: String,
    child: Child,
    on_drop: OnDrop,
}

impl ChildGuard {
    /// Guards `child`; `name` stands for it in log lines.
    pub fn new(name: impl Into<String>, child: Child, on_drop: OnDrop) -> Self {
        Self { name: name.into(), child, on_drop }
    }

    /// The name given to [`ChildGuard::new`].
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The child's process id.
    pub fn id(&self) -> u32 {
        self.child.id()
    }

    /// The exit status if it has exited (reaping it), else None.
    pub fn exited(&mut self) -> Option<ExitStatus> {
        self.child.try_wait().ok().flatten()
    }

    /// Whether the child has not exited yet.
    pub fn is_running(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }

    /// Waits up to `limit` for the exit; None if it still runs.
    pub fn wait_for(&mut self, limit: Duration) -> Option<ExitStatus> {
        let deadline = Instant::now() + limit;
        loop {
            if let Some(status) = self.exited() {
                return Some(status);
            }
            if Instant::now() >= deadline {
                return None;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Asks the child to stop (SIGTERM) without waiting.
    pub fn signal_terminate(&self) {
        if let Ok(pid) = libc::pid_t::try_from(self.child.id()) {
            // SAFETY: kill(2) with a pid we spawned and have not reaped yet.
            unsafe {
                libc::kill(pid, libc::SIGTERM);
            }
        }
    }

    /// SIGKILL and reap.
    pub fn kill(&mut self) -> Option<ExitStatus> {
        let _ = self.child.kill();
        self.child.wait().ok()
    }

    /// SIGTERM, up to `grace` for the exit, then SIGKILL. Returns the exit
    /// status and whether it had to be killed.
    pub fn terminate(&mut self, grace: Duration) -> (Option<ExitStatus>, bool) {
        if let Some(status) = self.exited() {
            return (Some(status), false);
        }
        self.signal_terminate();
        match self.wait_for(grace) {
            Some(status) => (Some(status), false),
            None => (self.kill(), true),
        }
    }
}

impl Drop for ChildGuard {
    fn drop(&mut self) {
        match self.on_drop {
            OnDrop::Kill => {
                self.kill();
            }
            OnDrop::Terminate(grace) => {
                if let (_, true) = self.terminate(grace) {
                    tracing::warn!("{} did not stop within {grace:?} of SIGTERM; killed it", self.name);
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::process::Command;

    fn sleeper() -> Child {
        Command::new("sleep").arg("30").spawn().expect("spawn sleep")
    }

    #[test]
    fn terminate_stops_a_child_with_sigterm() {
        let mut guard = ChildGuard::new("sleep", sleeper(), OnDrop::Kill);
        assert!(guard.is_running());
        let (status, killed) = guard.terminate(Duration::from_secs(10));
        assert!(!killed, "sleep obeys SIGTERM");
        use std::os::unix::process::ExitStatusExt;
        assert_eq!(status.and_then(|s| s.signal()), Some(libc::SIGTERM));
    }

    #[test]
    fn dropping_the_guard_stops_the_child() {
        let guard = ChildGuard::new("sleep", sleeper(), OnDrop::Terminate(Duration::from_secs(5)));
        let pid = guard.id() as libc::pid_t;
        drop(guard);
        // SAFETY: signal 0 only asks whether the pid exists.
        let alive = unsafe { libc::kill(pid, 0) } == 0;
        assert!(!alive, "the child was reaped when the guard was dropped");
    }

    #[test]
    fn a_child_that_ignores_sigterm_is_killed_after_the_grace_period() {
        let child = Command::new("sh").args(["-c", "trap '' TERM; sleep 30"]).spawn().expect("spawn sh");
        let mut guard = ChildGuard::new("stubborn", child, OnDrop::Kill);
        std::thread::sleep(Duration::from_millis(200)); // let the trap be installed
        let (status, killed) = guard.terminate(Duration::from_millis(300));
        assert!(killed);
        use std::os::unix::process::ExitStatusExt;
        assert_eq!(status.and_then(|s| s.signal()), Some(libc::SIGKILL));
    }
}
