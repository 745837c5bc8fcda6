//! What the `inception` command's tests share: running the real binary with
//! a deadline (a command that blocks on a FIFO fails the test instead of
//! hanging it), FIFOs, and small TFRecord shards.

#![allow(dead_code)] // each test file uses part of it

use inception_core::example::ImageExample;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

/// How long one command may take; far more than any of these needs.
const DEADLINE: Duration = Duration::from_secs(60);

/// What a finished command printed.
#[derive(Debug)]
pub(crate) struct Run {
    pub(crate) status: ExitStatus,
    pub(crate) stdout: String,
    pub(crate) stderr: String,
}

impl Run {
    pub(crate) fn code(&self) -> Option<i32> {
        self.status.code()
    }
}

/// The `inception` binary with the given arguments, logs at warnings only.
pub(crate) fn inception<I, S>(args: I) -> Command
where
    I: IntoIterator<Item = S>,
    S: AsRef<std::ffi::OsStr>,
{
    let mut c = Command::new(env!("CARGO_BIN_EXE_inception"));
    c.args(args).env("RUST_LOG", "warn").env_remove("INCEPTION_CONFIG");
    c
}

/// Runs `command` to its end; panics (after killing it) if it is still
/// running after [`DEADLINE`]: it blocked.
pub(crate) fn run(mut command: Command) -> Run {
    let mut child = command
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("cannot start inception");
    let drain = |mut pipe: Box<dyn Read + Send>| {
        std::thread::spawn(move || {
            let mut s = String::new();
            let _ = pipe.read_to_string(&mut s);
            s
        })
    };
    let out = drain(Box::new(child.stdout.take().unwrap()));
    let err = drain(Box::new(child.stderr.take().unwrap()));
    let started = Instant::now();
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        if started.elapsed() > DEADLINE {
            let _ = child.kill();
            let _ = child.wait();
            panic!("{command:?} was still running after {DEADLINE:?}: it blocked; stderr: {}", err.join().unwrap());
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    Run { status, stdout: out.join().unwrap(), stderr: err.join().unwrap() }
}

/// A named pipe at `path` (nobody ever writes to it).
pub(crate) fn mkfifo(path: &Path) -> PathBuf {
    let status = Command::new("mkfifo").arg(path).status().expect("mkfifo");
    assert!(status.success(), "mkfifo {}", path.display());
    path.to_path_buf()
}

/// A TFRecord shard of one small tf.Example per `(label, text)`.
pub(crate) fn shard(records: &[(i64, &str)]) -> Vec<u8> {
    let mut out = Vec::new();
    for (label, text) in records {
        let example = ImageExample {
            encoded: vec![0xff; 40],
            height: 2,
            width: 2,
            label: *label,
            text: text.to_string(),
            filename: format!("{text}.jpg"),
        };
        inception_core::tfrecord::write_record(&mut out, &example.to_bytes());
    }
    out
}

/// Writes `bytes` at `path`, creating its folder.
pub(crate) fn write(path: &Path, bytes: &[u8]) -> PathBuf {
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).unwrap();
    }
    std::fs::write(path, bytes).unwrap();
    path.to_path_buf()
}

/// `store.url=file://<dir>` for `--set`.
pub(crate) fn store_setting(dir: &Path) -> String {
    format!("store.url=file://{}", dir.display())
}

/// One generated demo image (a JPEG) at `dir/<name>`.
pub(crate) fn photo(dir: &Path, name: &str) -> PathBuf {
    let images = tempfile::tempdir().unwrap();
    inception_demo_data::generate(images.path(), 0, 1, 7).unwrap();
    let path = dir.join(name);
    std::fs::create_dir_all(dir).unwrap();
    std::fs::copy(images.path().join("validation/daisy/daisy_0000.jpg"), &path).unwrap();
    path
}
