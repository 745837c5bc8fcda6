//! Helpers for the cross-service tests: the built binaries as child
//! processes, free ports, waiting for files and conditions, reading metrics
//! and trainer logs.

use inception_core::process::{ChildGuard, OnDrop};
use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

/// `target/debug` (or `$CARGO_TARGET_DIR/debug`), where `cargo build --workspace` put the services.
pub fn bin_dir() -> PathBuf {
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("../target"), PathBuf::from);
    target.join("debug")
}

pub fn binary(name: &str) -> PathBuf {
    let p = bin_dir().join(name);
    assert!(p.is_file(), "{} is missing: run `cargo build --workspace --bins` first (make test does)", p.display());
    p
}

/// A port nothing listens on right now.
pub fn free_port() -> u16 {
    let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind a free port");
    l.local_addr().expect("local addr").port()
}

/// A service process whose stdout and stderr go to files; killed on drop.
pub struct Proc {
    pub name: String,
    pub process: ChildGuard,
    pub stdout: PathBuf,
    pub stderr: PathBuf,
}

impl Proc {
    pub fn spawn(name: &str, args: &[&str], env: &[(String, String)], logs: &Path) -> Proc {
        let stdout = logs.join(format!("{name}.out"));
        let stderr = logs.join(format!("{name}.err"));
        let child = Command::new(binary(name))
            .args(args)
            .envs(env.iter().cloned())
            .env("RUST_LOG", "info")
            // An error exit prints its message and causes, not a backtrace
            // that would push them out of a failing test's excerpt.
            .env("RUST_LIB_BACKTRACE", "0")
            .stdin(Stdio::null())
            .stdout(std::fs::File::create(&stdout).expect("stdout file"))
            .stderr(std::fs::File::create(&stderr).expect("stderr file"))
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {name}: {e}"));
        Proc { name: name.to_string(), process: ChildGuard::new(name, child, OnDrop::Kill), stdout, stderr }
    }

    pub fn output(&self) -> (String, String) {
        let read = |p: &Path| {
            let mut s = String::new();
            std::fs::File::open(p).and_then(|mut f| f.read_to_string(&mut s)).ok();
            s
        };
        (read(&self.stdout), read(&self.stderr))
    }

    /// Waits for the process to exit; panics with its output after `limit`.
    pub fn wait(&mut self, limit: Duration) -> ExitStatus {
        if let Some(status) = self.process.wait_for(limit) {
            return status;
        }
        self.process.kill();
        let (out, err) = self.output();
        panic!("{} still running after {limit:?}\nstdout:\n{out}\nstderr:\n{err}", self.name);
    }

    /// Sends SIGTERM and waits for the exit.
    pub fn terminate(&mut self, limit: Duration) -> ExitStatus {
        self.process.signal_terminate();
        self.wait(limit)
    }

    /// SIGKILL (no chance to clean up) and reap.
    pub fn kill(&mut self) {
        assert!(self.process.kill().is_some(), "{} could not be killed and reaped", self.name);
    }

    pub fn id(&self) -> u32 {
        self.process.id()
    }

    pub fn is_running(&mut self) -> bool {
        self.process.is_running()
    }
}

/// The lines of a service's log that say why it failed (errors, panics), at
/// most `most`: a failing test shows them beside the log's tail.
pub fn failure_lines(log: &str, most: usize) -> String {
    log.lines()
        .filter(|l| l.starts_with("Error:") || l.contains(" ERROR ") || l.contains("panicked at"))
        .take(most)
        .collect::<Vec<_>>()
        .join("\n")
}

/// Waits until `path` exists, failing with `context()` after `limit`.
pub fn wait_for_file(path: &Path, limit: Duration, mut context: impl FnMut() -> String) {
    let deadline = Instant::now() + limit;
    while !path.exists() {
        assert!(Instant::now() < deadline, "{} did not appear within {limit:?}\n{}", path.display(), context());
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// Waits until `done()`, failing with `what` and `context()` after `limit`.
pub fn wait_until(what: &str, limit: Duration, mut done: impl FnMut() -> bool, context: impl Fn() -> String) {
    let deadline = Instant::now() + limit;
    while !done() {
        assert!(Instant::now() < deadline, "{what} did not happen within {limit:?}\n{}", context());
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// The value of the unlabelled sample `name` on a service's `/metrics`;
/// `None` while it is unreachable or has not recorded the metric yet.
pub fn scraped_value(port: u16, name: &str) -> Option<f64> {
    let (_, body) = http_get(port, "/metrics").ok()?;
    body.lines().find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.trim().parse().ok())
}

/// The `step N,` lines a trainer printed, in order.
pub fn logged_steps(out: &str) -> Vec<u64> {
    out.lines().filter_map(|l| l.split(": step ").nth(1)?.split(',').next()?.parse().ok()).collect()
}

/// The next shard announcement on `sub`, waiting up to `limit`; on timeout
/// the test fails with the ingest process's output.
pub async fn next_shard(
    sub: &mut async_nats::Subscriber,
    ingest: &Proc,
    limit: Duration,
) -> inception_proto::pipeline::ShardReady {
    use futures::StreamExt;
    use inception_proto::Message;
    match tokio::time::timeout(limit, sub.next()).await {
        Ok(Some(m)) => inception_proto::pipeline::ShardReady::decode(m.payload.as_ref()).expect("a ShardReady message"),
        _ => {
            let (out, err) = ingest.output();
            panic!("no shard announced within {limit:?}\n{out}\n{err}")
        }
    }
}

/// The checkpoint pointer of run `default` in a file store, if written.
pub fn checkpoint_pointer(store: &Path) -> Option<serde_json::Value> {
    serde_json::from_slice(&std::fs::read(store.join("checkpoints/default/checkpoint")).ok()?).ok()
}

/// The step the checkpoint pointer names.
pub fn pointer_step(store: &Path) -> Option<u64> {
    checkpoint_pointer(store)?["step"].as_u64()
}

/// Drops `bytes` as `<incoming>/<key>`, written aside under a hidden name and
/// renamed, as an uploader should (ingest ignores hidden names).
pub fn drop_image(incoming: &Path, key: &str, bytes: &[u8]) {
    let path = incoming.join(key);
    std::fs::create_dir_all(path.parent().expect("label folder")).expect("label folder");
    let tmp = path.with_file_name(format!(".{}.part", path.file_name().expect("name").to_string_lossy()));
    std::fs::write(&tmp, bytes).expect("write image");
    std::fs::rename(tmp, path).expect("rename image");
}

/// A plain HTTP GET on loopback; returns (status line, body). HTTP/1.0, so
/// that no server (Prometheus's API included) answers with a chunked body.
pub fn http_get(port: u16, path: &str) -> std::io::Result<(String, String)> {
    use std::io::Write;
    let mut s = std::net::TcpStream::connect(("127.0.0.1", port))?;
    s.set_read_timeout(Some(Duration::from_secs(30)))?;
    s.write_all(format!("GET {path} HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n").as_bytes())?;
    let mut text = String::new();
    s.read_to_string(&mut text)?;
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    Ok((head.lines().next().unwrap_or("").to_string(), body.to_string()))
}

/// An S3-compatible server for tests: `moto_server` (PyPI `moto[server]`,
/// pinned and installed into `.venv` by scripts/setup.sh) on a free loopback
/// port; killed on drop. Credentials are not checked: any key works.
pub struct S3Server {
    _process: ChildGuard,
    pub port: u16,
}

impl S3Server {
    /// `INCEPTION_MOTO_SERVER`, else `.venv/bin/moto_server` of this checkout.
    pub fn binary() -> PathBuf {
        std::env::var_os("INCEPTION_MOTO_SERVER")
            .map_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("../.venv/bin/moto_server"), PathBuf::from)
    }

    pub fn start(logs: &Path) -> S3Server {
        let bin = Self::binary();
        assert!(
            bin.is_file(),
            "{} is missing: run scripts/setup.sh (it installs moto[server] into .venv)",
            bin.display()
        );
        let port = free_port();
        let child = Command::new(&bin)
            .args(["-H", "127.0.0.1", "-p", &port.to_string()])
            .stdin(Stdio::null())
            .stdout(std::fs::File::create(logs.join("moto.out")).expect("moto log"))
            .stderr(std::fs::File::create(logs.join("moto.err")).expect("moto log"))
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {}: {e}", bin.display()));
        let server = S3Server { _process: ChildGuard::new("moto_server", child, OnDrop::Kill), port };
        let deadline = Instant::now() + Duration::from_secs(30);
        while http_get(port, "/").is_err() {
            assert!(Instant::now() < deadline, "moto_server did not answer on port {port} within 30 s");
            std::thread::sleep(Duration::from_millis(100));
        }
        server
    }

    pub fn endpoint(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// Creates a bucket (a plain path-style `PUT /<bucket>`).
    pub fn create_bucket(&self, bucket: &str) {
        use std::io::Write;
        let mut s = std::net::TcpStream::connect(("127.0.0.1", self.port)).expect("connect to moto");
        s.set_read_timeout(Some(Duration::from_secs(10))).ok();
        write!(
            s,
            "PUT /{bucket} HTTP/1.1\r\nHost: 127.0.0.1:{}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n",
            self.port
        )
        .expect("create bucket");
        let mut reply = String::new();
        let _ = s.read_to_string(&mut reply);
        assert!(reply.starts_with("HTTP/1.1 200"), "creating bucket {bucket}: {reply}");
    }

    /// The `INCEPTION__STORE__*` and `AWS_*` variables that point a service at it.
    pub fn env(&self) -> Vec<(String, String)> {
        vec![
            ("INCEPTION__STORE__S3_ENDPOINT".into(), self.endpoint()),
            ("INCEPTION__STORE__S3_ALLOW_HTTP".into(), "true".into()),
            ("AWS_ACCESS_KEY_ID".into(), "test".into()),
            ("AWS_SECRET_ACCESS_KEY".into(), "test".into()),
            ("AWS_DEFAULT_REGION".into(), "us-east-1".into()),
        ]
    }
}

/// A PNG written by hand, so tests can make what image encoders will not:
/// palette and 16-bit images, and headers that claim any size (a
/// decompression bomb). `color_type` and `bit_depth` as in the PNG spec;
/// `rows` are the raw scanlines (without filter bytes).
pub fn png(
    width: u32,
    height: u32,
    color_type: u8,
    bit_depth: u8,
    palette: Option<&[u8]>,
    rows: &[Vec<u8>],
) -> Vec<u8> {
    fn crc32(bytes: &[u8]) -> u32 {
        let mut crc = 0xffff_ffffu32;
        for &b in bytes {
            crc ^= u32::from(b);
            for _ in 0..8 {
                crc = if crc & 1 == 1 { (crc >> 1) ^ 0xedb8_8320 } else { crc >> 1 };
            }
        }
        !crc
    }
    fn chunk(out: &mut Vec<u8>, kind: &[u8], data: &[u8]) {
        out.extend_from_slice(&(data.len() as u32).to_be_bytes());
        let mut body = kind.to_vec();
        body.extend_from_slice(data);
        out.extend_from_slice(&body);
        out.extend_from_slice(&crc32(&body).to_be_bytes());
    }
    let mut raw = Vec::new();
    for row in rows {
        raw.push(0); // filter: none
        raw.extend_from_slice(row);
    }
    // zlib with stored (uncompressed) deflate blocks.
    let mut z = vec![0x78, 0x01];
    let chunks: Vec<&[u8]> = if raw.is_empty() { vec![&[][..]] } else { raw.chunks(65535).collect() };
    for (i, c) in chunks.iter().enumerate() {
        z.push(u8::from(i + 1 == chunks.len()));
        z.extend_from_slice(&(c.len() as u16).to_le_bytes());
        z.extend_from_slice(&(!(c.len() as u16)).to_le_bytes());
        z.extend_from_slice(c);
    }
    let (mut a, mut b) = (1u32, 0u32);
    for &x in &raw {
        a = (a + u32::from(x)) % 65521;
        b = (b + a) % 65521;
    }
    z.extend_from_slice(&((b << 16) | a).to_be_bytes());
    let mut out = b"\x89PNG\r\n\x1a\n".to_vec();
    let mut ihdr = Vec::new();
    ihdr.extend_from_slice(&width.to_be_bytes());
    ihdr.extend_from_slice(&height.to_be_bytes());
    ihdr.extend_from_slice(&[bit_depth, color_type, 0, 0, 0]);
    chunk(&mut out, b"IHDR", &ihdr);
    if let Some(p) = palette {
        chunk(&mut out, b"PLTE", p);
    }
    chunk(&mut out, b"IDAT", &z);
    chunk(&mut out, b"IEND", &[]);
    out
}

/// The `image/filename` of every record of a TFRecord file, checking every CRC.
pub fn record_filenames(bytes: &[u8]) -> Vec<String> {
    use inception_proto::tensorflow::{feature, Example};
    use inception_proto::Message;
    inception_core::tfrecord::records(bytes)
        .map(|r| {
            let ex = Example::decode(r.expect("intact record")).expect("a tf.Example");
            match ex.features.and_then(|f| f.feature.get("image/filename").cloned()).and_then(|f| f.kind) {
                Some(feature::Kind::BytesList(l)) => String::from_utf8_lossy(&l.value[0]).into_owned(),
                _ => panic!("record without image/filename"),
            }
        })
        .collect()
}

/// Every file under `dir`, recursively.
pub fn files_under(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut todo = vec![dir.to_path_buf()];
    while let Some(d) = todo.pop() {
        for e in std::fs::read_dir(&d).into_iter().flatten().flatten() {
            let p = e.path();
            if p.is_dir() {
                todo.push(p);
            } else {
                out.push(p);
            }
        }
    }
    out.sort();
    out
}
