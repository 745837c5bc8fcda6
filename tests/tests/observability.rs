//! The monitoring, checked against the real thing: a Prometheus server
//! (Debian's, from scripts/setup-ops.sh) on a loopback port scrapes the four
//! services and the server during a short end-to-end run (a tiny model, a few dozen steps),
//! loads the project's alert rules, and answers every query of the Grafana
//! dashboard with data.
//!
//! Some series exist only after something goes wrong (error counters), so the
//! run is given a little of everything: unreadable input images, a shard and a
//! validation file that are not TFRecords, a malformed shard announcement, a
//! batch message that points outside the dataset, and an announcement of a
//! checkpoint that does not exist. The pipeline must shrug these off.

mod support;

use inception_core::local_nats::LocalNats;
use inception_core::nats::Streams;
use inception_core::settings::env_vars;
use inception_core::shutdown::CancellationToken;
use inception_integration_tests::{free_port, http_get, scraped_value, wait_for_file, wait_until, Proc};
use inception_proto::pipeline::{BatchReady, CheckpointReady, ShardReady};
use inception_proto::Message;
use std::collections::BTreeSet;
use std::path::Path;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

const STEPS: u64 = 30;
const DATASET: &str = "obs";

fn encode(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => (b as char).to_string(),
            _ => format!("%{b:02X}"),
        })
        .collect()
}

/// A Prometheus API call; panics unless it answers `"status": "success"`.
fn api(port: u16, path: &str) -> serde_json::Value {
    let (status, body) = http_get(port, path).unwrap_or_else(|e| panic!("Prometheus {path}: {e}"));
    let doc: serde_json::Value = serde_json::from_str(&body).unwrap_or_else(|e| panic!("{path}: {e}: {status} {body}"));
    assert_eq!(doc["status"], "success", "{path}: {body}");
    doc["data"].clone()
}

/// Series of a range query over [start, end] with a 0.5 s step.
fn query_range(port: u16, expr: &str, start: f64, end: f64) -> Vec<serde_json::Value> {
    let path = format!("/api/v1/query_range?query={}&start={start:.3}&end={end:.3}&step=0.5", encode(expr));
    api(port, &path)["result"].as_array().cloned().unwrap_or_default()
}

fn has_finite_value(series: &[serde_json::Value]) -> bool {
    series.iter().any(|s| {
        s["values"]
            .as_array()
            .into_iter()
            .flatten()
            .any(|v| v[1].as_str().and_then(|x| x.parse::<f64>().ok()).is_some_and(f64::is_finite))
    })
}

/// POSTs `body` to `path` on loopback `port`; (status line, body).
fn http_post(port: u16, path: &str, body: &[u8]) -> std::io::Result<(String, String)> {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(("127.0.0.1", port))?;
    s.set_read_timeout(Some(Duration::from_secs(30)))?;
    let head = format!("POST {path} HTTP/1.0\r\nHost: 127.0.0.1\r\nContent-Length: {}\r\n\r\n", body.len());
    s.write_all(head.as_bytes())?;
    s.write_all(body)?;
    let mut text = String::new();
    s.read_to_string(&mut text)?;
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    Ok((head.lines().next().unwrap_or("").to_string(), body.to_string()))
}

fn now() -> f64 {
    SystemTime::now().duration_since(UNIX_EPOCH).expect("clock").as_secs_f64()
}

/// Debian's prometheus binary on `port`, killed on drop (a [`Proc`]).
fn spawn_prometheus(config: &Path, tsdb: &Path, port: u16, logs: &Path) -> Proc {
    let (stdout, stderr) = (logs.join("prometheus.out"), logs.join("prometheus.err"));
    let child = std::process::Command::new(support::tool("prometheus"))
        .arg(format!("--config.file={}", config.display()))
        .arg(format!("--storage.tsdb.path={}", tsdb.display()))
        .arg(format!("--web.listen-address=127.0.0.1:{port}"))
        .arg("--log.level=warn")
        .stdin(std::process::Stdio::null())
        .stdout(std::fs::File::create(&stdout).expect("stdout file"))
        .stderr(std::fs::File::create(&stderr).expect("stderr file"))
        .spawn()
        .expect("start prometheus (scripts/setup-ops.sh installs it)");
    let process = inception_core::process::ChildGuard::new("prometheus", child, inception_core::process::OnDrop::Kill);
    Proc { name: "prometheus".into(), process, stdout, stderr }
}

fn prometheus_config(dir: &Path, ports: &[(&str, u16)]) -> std::path::PathBuf {
    let rules = support::repo_file("deploy/prometheus/rules/inception.rules.yml");
    let rules = rules.canonicalize().expect("rules file");
    let mut text = format!(
        "global:\n  scrape_interval: 200ms\n  scrape_timeout: 200ms\n  evaluation_interval: 1s\nrule_files:\n  - {}\nscrape_configs:\n",
        rules.display()
    );
    for (job, port) in ports {
        // One-shot ingest lives for a fraction of a second here: scrape it often.
        let interval = if *job == "ingest" { "10ms" } else { "200ms" };
        text.push_str(&format!(
            "  - job_name: {job}\n    scrape_interval: {interval}\n    scrape_timeout: {interval}\n    static_configs:\n      - targets: [\"127.0.0.1:{port}\"]\n"
        ));
    }
    let path = dir.join("prometheus.yml");
    std::fs::write(&path, text).expect("write prometheus.yml");
    path
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn prometheus_scrapes_the_pipeline_and_answers_every_dashboard_query() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (images, store, logs) = (dir.path().join("images"), dir.path().join("store"), dir.path().join("logs"));
    std::fs::create_dir_all(&logs).expect("logs dir");
    inception_demo_data::generate(&images, 60, 20, 3).expect("generate images");
    std::fs::write(images.join("train/roses/notes.jpg"), b"this is text, not a JPEG").expect("write");
    std::fs::write(images.join("train/roses/empty.jpg"), b"").expect("write");
    let nats = LocalNats::start(&dir.path().join("nats")).expect("nats-server");

    let ports = [
        ("ingest", free_port()),
        ("preprocess", free_port()),
        ("trainer", free_port()),
        ("evaluator", free_port()),
        ("serve", free_port()),
    ];
    let api_port = free_port();
    let port_of = |job: &str| ports.iter().find(|(j, _)| *j == job).map(|(_, p)| *p).expect("port");
    let prom_port = free_port();
    let config = prometheus_config(dir.path(), &ports);
    let mut prometheus = spawn_prometheus(&config, &dir.path().join("tsdb"), prom_port, &logs);
    wait_until(
        "Prometheus ready",
        Duration::from_secs(30),
        || http_get(prom_port, "/-/ready").is_ok_and(|(s, _)| s.contains("200")),
        || format!("{:?}", prometheus.output()),
    );
    // Prometheus applies discovered targets every 5 s: wait for all four.
    wait_until(
        "Prometheus targets",
        Duration::from_secs(30),
        || {
            http_get(prom_port, "/api/v1/targets")
                .is_ok_and(|(_, body)| ports.iter().all(|(_, p)| body.contains(&format!("127.0.0.1:{p}"))))
        },
        || format!("{:?}", prometheus.output()),
    );
    let start = now() - 1.0;

    let env = env_vars([
        ("NATS__URL", nats.url()),
        ("STORE__URL", format!("file://{}", store.display())),
        ("DATASET__NAME", DATASET.to_string()),
        ("MODEL__IMAGE_SIZE", "75".to_string()),
        ("MODEL__DEPTH_MULTIPLIER", "0.25".to_string()),
        ("MODEL__MIN_DEPTH", "8".to_string()),
        ("PIPELINE__BATCH_SIZE", "8".to_string()),
        ("AUGMENT__DISTORT_COLOR", "false".to_string()),
        ("PIPELINE__QUEUE_CAPACITY", "2".to_string()),
        ("TRAIN__MAX_STEPS", STEPS.to_string()),
        ("TRAIN__CHECKPOINT_EVERY_STEPS", (STEPS / 3).to_string()),
        ("TRAIN__LOG_EVERY_STEPS", "1".to_string()),
        ("TRAIN__DEVICE", "cpu".to_string()),
        ("EVAL__DEVICE", "cpu".to_string()),
        ("EVAL__NUM_EXAMPLES", "0".to_string()),
        ("EVAL__BATCH_SIZE", "25".to_string()),
        ("EVAL__EVAL_INTERVAL", "5s".to_string()),
        ("INGEST__METRICS_ADDR", format!("127.0.0.1:{}", port_of("ingest"))),
        ("PREPROCESS__METRICS_ADDR", format!("127.0.0.1:{}", port_of("preprocess"))),
        ("TRAIN__METRICS_ADDR", format!("127.0.0.1:{}", port_of("trainer"))),
        ("EVAL__METRICS_ADDR", format!("127.0.0.1:{}", port_of("evaluator"))),
        ("SERVE__METRICS_ADDR", format!("127.0.0.1:{}", port_of("serve"))),
        ("SERVE__LISTEN_ADDR", format!("127.0.0.1:{api_port}")),
        ("SERVE__DEVICE", "cpu".to_string()),
        ("SERVE__THREADS", "1".to_string()),
        ("SERVE__POLL_INTERVAL", "1s".to_string()),
    ]);

    // Ingest: two unreadable images are skipped.
    let (train, validation) =
        (images.join("train").display().to_string(), images.join("validation").display().to_string());
    // It runs for a fraction of a second; should the 10 ms scrapes miss it
    // (a loaded machine), it runs again: a re-run keeps and re-announces the shards.
    let ingest_seen = |prom_port: u16| {
        let t = now();
        let written =
            query_range(prom_port, "count_over_time(inception_ingest_images_total{result=\"written\"}[5m]) >= 2", t, t);
        let skipped =
            query_range(prom_port, "count_over_time(inception_ingest_images_total{result!=\"written\"}[5m])", t, t);
        has_finite_value(&written) && has_finite_value(&skipped)
    };
    for attempt in 1..=3 {
        let ingest_logs = logs.join(format!("ingest-{attempt}"));
        std::fs::create_dir_all(&ingest_logs).expect("logs dir");
        let mut ingest = Proc::spawn(
            "inception-ingest",
            &["--train-directory", &train, "--validation-directory", &validation],
            &env,
            &ingest_logs,
        );
        assert!(ingest.wait(Duration::from_secs(120)).success(), "{:?}", ingest.output());
        std::thread::sleep(Duration::from_millis(500));
        if ingest_seen(prom_port) {
            break;
        }
        eprintln!("ingest run {attempt} was not scraped twice; again");
    }

    // Things that must be counted, not crash anything.
    let client = async_nats::connect(nats.url()).await.expect("connect");
    let streams = Streams::new(client, "inception");
    let stop = CancellationToken::new();
    let junk = b"\x00\x01 definitely not a TFRecord \xff\xfe".repeat(8);
    std::fs::write(store.join(format!("datasets/{DATASET}/train-junk")), &junk).expect("junk shard");
    std::fs::write(store.join(format!("datasets/{DATASET}/validation-junk")), &junk).expect("junk validation file");
    streams.shards().await.expect("shards stream");
    let junk_shard = ShardReady {
        dataset: DATASET.into(),
        split: "train".into(),
        uri: format!("datasets/{DATASET}/train-junk"),
        records: 4,
        labels: inception_demo_data::DEMO_LABELS.iter().map(|l| l.to_string()).collect(),
        ..Default::default()
    };
    let subject = streams.subjects.shards(DATASET, "train");
    streams
        .publish_acked(&subject, junk_shard.encode_to_vec().into(), "obs-junk-shard", &stop)
        .await
        .expect("announce junk shard");
    streams
        .publish_acked(&subject, b"\xff\xff\xff not protobuf".to_vec().into(), "obs-garbage", &stop)
        .await
        .expect("announce garbage");
    let batches = streams.batches(2).await.expect("batch queue");
    drop(batches);
    let stray = BatchReady {
        uri: "batches/elsewhere/x.safetensors".into(),
        batch_size: 8,
        image_size: 75,
        labels: vec![1; 8],
        ..Default::default()
    };
    streams
        .publish_acked(&streams.subjects.batches(DATASET), stray.encode_to_vec().into(), "obs-stray-batch", &stop)
        .await
        .expect("queue a stray batch");

    // Evaluator and one worker; the worker fills the queue (capacity 2, one
    // slot taken by the stray message) and then waits for room.
    let mut evaluator = Proc::spawn("inception-evaluator", &[], &env, &logs);
    // The server: not ready until the gate promotes a checkpoint.
    let server = Proc::spawn("inception-serve", &[], &env, &logs);
    let mut worker = Proc::spawn("inception-preprocess", &["--worker-id", "w1"], &env, &logs);
    let (eval_port, worker_port) = (port_of("evaluator"), port_of("preprocess"));
    wait_until(
        "evaluator ready",
        Duration::from_secs(60),
        || http_get(eval_port, "/readyz").is_ok_and(|(s, _)| s.contains("200")),
        || format!("{:?}", evaluator.output()),
    );
    streams.checkpoints().await.expect("checkpoint stream");
    let missing = CheckpointReady {
        run: "default".into(),
        step: 3,
        uri: "checkpoints/default/model.ckpt-3.safetensors".into(),
        metadata_uri: "checkpoints/default/model.ckpt-3.json".into(),
    };
    streams
        .publish_acked(
            &streams.subjects.checkpoints("default"),
            missing.encode_to_vec().into(),
            "obs-missing-ckpt",
            &stop,
        )
        .await
        .expect("announce a missing checkpoint");
    wait_until(
        "a batch from the worker",
        Duration::from_secs(120),
        || scraped_value(worker_port, "inception_preprocess_batches_total").is_some_and(|v| v >= 1.0),
        || format!("{:?}", worker.output()),
    );
    std::thread::sleep(Duration::from_secs(2)); // the next batch waits for room

    let mut trainer = Proc::spawn("inception-trainer", &[], &env, &logs);
    assert!(trainer.wait(Duration::from_secs(600)).success(), "trainer: {:?}", trainer.output());
    let result = store.join(format!("eval/default/step-{STEPS}.json"));
    wait_for_file(&result, Duration::from_secs(300), || format!("{:?}", evaluator.output()));
    // The promoted checkpoint is served: good requests, and a corrupt image.
    wait_until(
        "the server ready",
        Duration::from_secs(120),
        || http_get(api_port, "/readyz").is_ok_and(|(s, _)| s.contains("200")),
        || format!("{:?}", server.output()),
    );
    let photo = std::fs::read(images.join("validation/daisy/daisy_0000.jpg")).expect("a validation photo");
    for round in 0..6 {
        let (status, body) = http_post(api_port, "/v1/classify", &photo).expect("classify");
        assert!(status.contains("200"), "{status} {body}");
        if round == 0 {
            let (status, body) = http_post(api_port, "/v1/classify", b"not an image").expect("classify junk");
            assert!(status.contains("400"), "{status} {body}");
        }
        std::thread::sleep(Duration::from_millis(300));
    }
    // Two more scrapes of the evaluator and a rule evaluation after it.
    std::thread::sleep(Duration::from_secs(2));
    let end = now();

    // The rules loaded and every one evaluates without error on real series.
    let groups = api(prom_port, "/api/v1/rules");
    let rules: Vec<serde_json::Value> = groups["groups"]
        .as_array()
        .expect("groups")
        .iter()
        .flat_map(|g| g["rules"].as_array().cloned().unwrap_or_default())
        .collect();
    let expected: BTreeSet<String> = support::alert_rules().into_iter().map(|(name, _)| name).collect();
    let loaded: BTreeSet<String> = rules.iter().filter_map(|r| r["name"].as_str().map(str::to_string)).collect();
    assert_eq!(loaded, expected);
    for r in &rules {
        assert_eq!(r["health"], "ok", "rule {} does not evaluate: {}", r["name"], r["lastError"]);
    }

    // All four services were scraped (ingest only briefly: over the range).
    let range = format!("{}s", (end - start).ceil() as u64 + 1);
    for (job, _) in &ports {
        let up = query_range(prom_port, &format!("max_over_time(up{{job=\"{job}\"}}[{range}]) == 1"), end, end);
        assert!(has_finite_value(&up), "{job} was never scraped successfully");
    }

    // Every dashboard query returns data (Grafana's interval variables as a
    // short run needs them: a 5 s rate window, the whole run as the range).
    let mut empty = Vec::new();
    let queries = support::dashboard_queries(&support::dashboard());
    assert!(queries.len() >= 20, "{queries:?}");
    for (title, expr) in &queries {
        let q = expr.replace("$__rate_interval", "5s").replace("$__range", &range).replace("$__interval", "1s");
        assert!(!q.contains('$'), "{title}: unknown variable in {expr}");
        if !has_finite_value(&query_range(prom_port, &q, start, end)) {
            empty.push(format!("{title}: {q}"));
        }
    }
    assert!(empty.is_empty(), "dashboard queries without data:\n{}", empty.join("\n"));

    // Every pipeline metric Prometheus saw is in the catalogue.
    let names = api(prom_port, "/api/v1/label/__name__/values");
    let documented = support::documented_metric_names();
    let seen: BTreeSet<String> =
        names.as_array().expect("names").iter().filter_map(|n| n.as_str()).flat_map(support::metric_names).collect();
    let undocumented: Vec<&String> = seen.difference(&documented).collect();
    assert!(undocumented.is_empty(), "scraped but not in docs/metrics.md: {undocumented:?}");
    assert!(seen.len() >= 25, "{seen:?}");

    // The injected faults were counted and shrugged off.
    for (job, metric) in [
        ("ingest", "inception_ingest_images_total{result!=\"written\"}"),
        ("preprocess", "inception_preprocess_errors_total"),
        ("preprocess", "inception_preprocess_rejected_messages_total"),
        ("trainer", "inception_trainer_rejected_batches_total"),
        ("evaluator", "inception_eval_failures_total"),
        ("evaluator", "inception_eval_errors_total"),
    ] {
        assert!(
            has_finite_value(&query_range(prom_port, &format!("max_over_time({metric}[{range}]) > 0"), start, end)),
            "{job}: {metric} never counted"
        );
    }
    assert!(
        worker.is_running() && evaluator.is_running(),
        "a service died: {:?} {:?}",
        worker.output(),
        evaluator.output()
    );
    assert!(worker.terminate(Duration::from_secs(30)).success(), "{:?}", worker.output());
    assert!(evaluator.terminate(Duration::from_secs(30)).success(), "{:?}", evaluator.output());
    prometheus.terminate(Duration::from_secs(30));
}
