//! Fail fast and say why (issue 17), with the real binaries: a configuration
//! error exits 2 at once naming the setting; a one-shot command gives up on
//! an unreachable NATS with a hint, while a service keeps retrying; one-shot
//! ingest and `--run-once` need only the store; one-shot commands bind no
//! metrics port unless asked; logs carry no colour codes off a terminal and
//! can be JSON; every metric on /metrics has `# HELP` and `# TYPE`.

use inception_core::local_nats::LocalNats;
use inception_integration_tests::{free_port, http_get, wait_until, Proc};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// (binary, settings section of its metrics address).
const SERVICES: [(&str, &str); 4] = [
    ("inception-ingest", "INGEST"),
    ("inception-preprocess", "PREPROCESS"),
    ("inception-trainer", "TRAIN"),
    ("inception-evaluator", "EVAL"),
];

/// A store in `dir`, metrics on a free port, NATS where nothing listens.
fn base_env(dir: &Path, section: &str) -> Vec<(String, String)> {
    vec![
        (format!("INCEPTION__{section}__METRICS_ADDR"), "127.0.0.1:0".to_string()),
        ("INCEPTION__STORE__URL".to_string(), format!("file://{}", dir.join("store").display())),
        ("INCEPTION__NATS__URL".to_string(), format!("nats://127.0.0.1:{}", free_port())),
        ("INCEPTION__NATS__CONNECT_RETRY".to_string(), "0.2s".to_string()),
        ("INCEPTION__NATS__CONNECT_RETRY_MAX".to_string(), "0.5s".to_string()),
    ]
}

fn with(mut env: Vec<(String, String)>, key: &str, value: &str) -> Vec<(String, String)> {
    env.retain(|(k, _)| k != key);
    env.push((key.to_string(), value.to_string()));
    env
}

fn logs(dir: &Path, name: &str) -> PathBuf {
    let d = dir.join(name);
    std::fs::create_dir_all(&d).unwrap();
    d
}

/// Runs `name` to its end (at most `limit`); (exit code, stdout, stderr).
fn run(name: &str, args: &[&str], env: &[(String, String)], logs: &Path, limit: Duration) -> (i32, String, String) {
    let mut p = Proc::spawn(name, args, env, logs);
    let status = p.wait(limit);
    let (out, err) = p.output();
    (status.code().unwrap_or(-1), out, err)
}

/// Demo images: `<dir>/images/{train,validation}/<label>/…`.
fn images(dir: &Path) -> PathBuf {
    let images = dir.join("images");
    inception_demo_data::generate(&images, 2, 1, 7).unwrap();
    images
}

#[test]
fn a_malformed_nats_url_stops_every_service_at_once_with_status_2() {
    let dir = tempfile::tempdir().unwrap();
    for (name, section) in SERVICES {
        let env = with(base_env(dir.path(), section), "INCEPTION__NATS__URL", "htp://foo");
        let started = Instant::now();
        // Were it retried as an unreachable server, the wait would time out.
        let (code, _, err) = run(name, &[], &env, &logs(dir.path(), name), Duration::from_secs(20));
        assert_eq!(code, 2, "{name}: a configuration error exits 2\n{err}");
        assert!(err.contains("nats.url") && err.contains("htp"), "{name} did not name the setting:\n{err}");
        assert!(!err.contains("cannot reach NATS"), "{name} retried a malformed URL:\n{err}");
        assert!(started.elapsed() < Duration::from_secs(15), "{name} took {:?}", started.elapsed());
    }
}

#[test]
fn a_store_url_with_an_unknown_scheme_and_an_unusable_credentials_file_exit_2() {
    let dir = tempfile::tempdir().unwrap();
    for (name, section) in SERVICES {
        let env = with(base_env(dir.path(), section), "INCEPTION__STORE__URL", "ftp://bucket/prefix");
        let (code, _, err) = run(name, &[], &env, &logs(dir.path(), name), Duration::from_secs(20));
        assert_eq!(code, 2, "{name}: an unknown store scheme exits 2\n{err}");
        assert!(err.contains("store.url") && err.contains("ftp"), "{name} did not name the setting:\n{err}");

        let missing = dir.path().join("no-such.creds");
        let env = with(base_env(dir.path(), section), "INCEPTION__NATS__CREDENTIALS_FILE", missing.to_str().unwrap());
        let (code, _, err) = run(name, &[], &env, &logs(dir.path(), name), Duration::from_secs(20));
        assert_eq!(code, 2, "{name}: an unusable credentials file exits 2\n{err}");
        assert!(err.contains("nats.credentials_file") && err.contains("no-such.creds"), "{name}:\n{err}");
    }
}

#[test]
fn one_shot_ingest_gives_up_on_an_unreachable_nats_with_a_hint_while_services_keep_trying() {
    let dir = tempfile::tempdir().unwrap();
    let images = images(dir.path());
    let env = with(base_env(dir.path(), "INGEST"), "INCEPTION__NATS__ONE_SHOT_CONNECT_TIMEOUT", "2s");
    let mut service = Proc::spawn(
        "inception-preprocess",
        &[],
        &with(env.clone(), "INCEPTION__PREPROCESS__METRICS_ADDR", "127.0.0.1:0"),
        &logs(dir.path(), "service"),
    );
    let train = images.join("train");
    let started = Instant::now();
    let (code, _, err) = run(
        "inception-ingest",
        &["--train-directory", train.to_str().unwrap()],
        &env,
        &logs(dir.path(), "ingest"),
        Duration::from_secs(30),
    );
    assert_eq!(code, 1, "an unreachable NATS is not a configuration error\n{err}");
    assert!(started.elapsed() < Duration::from_secs(20), "gave up after {:?}", started.elapsed());
    assert!(err.contains("cannot reach NATS"), "each try is reported:\n{err}");
    assert!(err.contains("nats-server -js") && err.contains("nats.one_shot_connect_timeout"), "no hint:\n{err}");
    assert!(!dir.path().join("store/datasets/flowers/train-00000-of-00002").exists(), "nothing written");
    // The long-running service ignores the one-shot bound and keeps trying.
    assert!(service.is_running(), "preprocess gave up: {:?}", service.output());
    assert!(service.terminate(Duration::from_secs(20)).success(), "{:?}", service.output());
}

#[test]
fn one_shot_ingest_needs_no_nats_and_announce_only_announces_the_stored_shards() {
    let dir = tempfile::tempdir().unwrap();
    let images = images(dir.path());
    let env = base_env(dir.path(), "INGEST");
    let (train, validation) = (images.join("train"), images.join("validation"));
    let args = [
        "--train-directory",
        train.to_str().unwrap(),
        "--validation-directory",
        validation.to_str().unwrap(),
        "--no-announce",
    ];
    let (code, out, err) = run("inception-ingest", &args, &env, &logs(dir.path(), "ingest"), Duration::from_secs(60));
    assert_eq!(code, 0, "{out}\n{err}");
    assert!(!err.contains("cannot reach NATS"), "it tried NATS:\n{err}");
    let store = dir.path().join("store/datasets/flowers");
    let shard = |name: &str| store.join(name);
    assert!(shard("train-00000-of-00002").is_file() && shard("validation-00001-of-00002").is_file(), "{out}");

    // Later, with NATS: the shards in the store are announced, with the
    // records each really holds.
    let nats = LocalNats::start(&dir.path().join("nats")).unwrap();
    let env = with(env, "INCEPTION__NATS__URL", &nats.url());
    let (code, out, err) =
        run("inception-ingest", &["--announce-only"], &env, &logs(dir.path(), "announce"), Duration::from_secs(60));
    assert_eq!(code, 0, "{out}\n{err}");
    assert!(out.contains("announced 4 shards"), "{out}\n{err}");
    let announced = tokio::runtime::Runtime::new().unwrap().block_on(async {
        use inception_core::nats::{self, Streams};
        use inception_proto::Message;
        let settings = inception_core::Settings::load(None, &[("nats.url".into(), nats.url())]).expect("settings");
        let shutdown = inception_core::shutdown::CancellationToken::new();
        let client = nats::connect(&settings.nats, "test", &shutdown).await.unwrap();
        let streams = Streams::new(client, "inception");
        let stream = streams.shards().await.unwrap();
        let mut all = Vec::new();
        for split in ["train", "validation"] {
            let history = streams.history(&stream, &streams.subjects.shards("flowers", split)).await.unwrap();
            all.extend(history.iter().map(|p| inception_proto::pipeline::ShardReady::decode(p.as_ref()).unwrap()));
        }
        all
    });
    assert_eq!(announced.len(), 4, "{announced:?}");
    for s in &announced {
        let bytes = std::fs::read(dir.path().join("store").join(&s.uri)).unwrap();
        let records = inception_core::tfrecord::records(&bytes).count() as u64;
        assert_eq!(s.records, records, "{} announced with {} records, holds {records}", s.uri, s.records);
        assert_eq!(s.num_shards, 2);
        assert_eq!(s.labels.len(), inception_demo_data::DEMO_LABELS.len());
    }
}

#[test]
fn evaluator_run_once_needs_only_the_store() {
    let dir = tempfile::tempdir().unwrap();
    let env = with(base_env(dir.path(), "EVAL"), "INCEPTION__NATS__ONE_SHOT_CONNECT_TIMEOUT", "60s");
    let started = Instant::now();
    let (code, out, err) =
        run("inception-evaluator", &["--run-once"], &env, &logs(dir.path(), "eval"), Duration::from_secs(30));
    // No checkpoint in the empty store: said at once, without waiting for NATS.
    assert_eq!(code, 1, "{out}\n{err}");
    assert!(out.contains("No checkpoint file found at checkpoints/default/checkpoint"), "{out}\n{err}");
    assert!(!err.contains("cannot reach NATS"), "it tried NATS:\n{err}");
    assert!(started.elapsed() < Duration::from_secs(20), "{:?}", started.elapsed());
}

#[test]
fn one_shot_commands_bind_a_metrics_port_only_when_asked() {
    let dir = tempfile::tempdir().unwrap();
    let images = images(dir.path());
    let train = images.join("train");
    // Hold the default port (or find it held already): a one-shot ingest
    // that bound it by default would fail.
    let _held = std::net::TcpListener::bind("127.0.0.1:9101");
    let mut env = base_env(dir.path(), "INGEST");
    env.retain(|(k, _)| !k.ends_with("METRICS_ADDR"));
    for run_no in 0..2 {
        let args = ["--train-directory", train.to_str().unwrap(), "--no-announce", "--dataset", "d"];
        let (code, out, err) = run(
            "inception-ingest",
            &args,
            &env,
            &logs(dir.path(), &format!("ingest{run_no}")),
            Duration::from_secs(60),
        );
        assert_eq!(code, 0, "one-shot run {run_no}:\n{out}\n{err}");
        assert!(!err.contains("metrics and health endpoints listening"), "{err}");
    }
    // Asked for, it is served (and a port in use is an error, not a configuration error).
    let held = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = held.local_addr().unwrap().port().to_string();
    let args = ["--train-directory", train.to_str().unwrap(), "--no-announce", "--dataset", "e", "--metrics-addr"];
    let mut args: Vec<&str> = args.to_vec();
    let addr = format!("127.0.0.1:{port}");
    args.push(&addr);
    let (code, _, err) = run("inception-ingest", &args, &env, &logs(dir.path(), "asked"), Duration::from_secs(60));
    assert_eq!(code, 1, "{err}");
    assert!(err.contains("ingest.metrics_addr") && err.contains(&addr), "{err}");
}

#[test]
fn logs_are_plain_off_a_terminal_and_json_when_asked() {
    let dir = tempfile::tempdir().unwrap();
    let env = base_env(dir.path(), "PREPROCESS");
    let mut plain = Proc::spawn("inception-preprocess", &[], &env, &logs(dir.path(), "plain"));
    wait_until(
        "a retry line",
        Duration::from_secs(30),
        || plain.output().1.contains("cannot reach NATS"),
        || plain.output().1,
    );
    plain.terminate(Duration::from_secs(20));
    let (_, err) = plain.output();
    assert!(!err.contains('\u{1b}'), "colour codes in a log file:\n{err:?}");

    let json_env = with(env.clone(), "INCEPTION_LOG_FORMAT", "json");
    for (name, args, env) in [("env", &[][..], &json_env), ("flag", &["--log-format", "json"][..], &env)] {
        let mut p = Proc::spawn("inception-preprocess", args, env, &logs(dir.path(), name));
        wait_until(
            "a retry line",
            Duration::from_secs(30),
            || p.output().1.contains("cannot reach NATS"),
            || p.output().1,
        );
        p.terminate(Duration::from_secs(20));
        let (_, err) = p.output();
        for line in err.lines().filter(|l| !l.trim().is_empty()) {
            let v: serde_json::Value =
                serde_json::from_str(line).unwrap_or_else(|e| panic!("{name}: not JSON ({e}): {line}\n{err}"));
            assert!(v["level"].is_string() && v["timestamp"].is_string(), "{name}: {line}");
        }
        assert!(err.contains("\"message\":\"cannot reach NATS"), "{name}:\n{err}");
    }
    // A configuration error ends a JSON log with a JSON line too.
    let bad = with(json_env, "INCEPTION__NATS__URL", "htp://foo");
    let (code, _, err) = run("inception-preprocess", &[], &bad, &logs(dir.path(), "bad"), Duration::from_secs(20));
    assert_eq!(code, 2, "{err}");
    let last = err.lines().rev().find(|l| !l.trim().is_empty()).unwrap_or_default();
    let v: serde_json::Value = serde_json::from_str(last).unwrap_or_else(|e| panic!("not JSON ({e}): {last}"));
    assert_eq!(v["level"], "ERROR", "{last}");
    assert!(v["message"].as_str().is_some_and(|m| m.contains("nats.url")), "{last}");
}

#[test]
fn every_metric_on_metrics_has_help_and_type() {
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let env =
        with(base_env(dir.path(), "PREPROCESS"), "INCEPTION__PREPROCESS__METRICS_ADDR", &format!("127.0.0.1:{port}"));
    let mut service = Proc::spawn("inception-preprocess", &[], &env, &logs(dir.path(), "metrics"));
    let mut body = String::new();
    wait_until(
        "metrics",
        Duration::from_secs(30),
        || {
            body = http_get(port, "/metrics").map(|(_, b)| b).unwrap_or_default();
            body.contains("process_resident_memory_bytes")
        },
        || format!("{:?}", service.output()),
    );
    service.terminate(Duration::from_secs(20));
    let lines: Vec<&str> = body.lines().collect();
    let typed: Vec<&str> = lines.iter().filter_map(|l| l.strip_prefix("# TYPE ")?.split(' ').next()).collect();
    assert!(typed.len() >= 2, "{body}");
    for name in typed {
        assert!(lines.iter().any(|l| l.starts_with(&format!("# HELP {name} "))), "{name}: no # HELP\n{body}");
    }
}
