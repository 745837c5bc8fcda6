//! Files under deploy/ are checked by the tools that read them.

use std::process::Command;

#[test]
fn nats_server_accepts_the_deploy_config() {
    let binary = inception_core::local_nats::find_binary().expect("nats-server (scripts/setup.sh installs it)");
    let conf = concat!(env!("CARGO_MANIFEST_DIR"), "/../deploy/nats/nats-server.conf");
    let out = Command::new(binary).args(["-t", "-c", conf]).output().expect("run nats-server -t");
    let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert!(out.status.success(), "{text}");
    assert!(text.contains("configuration file") && text.contains("is valid"), "{text}");
}

mod support;
use std::collections::BTreeSet;
use support::{read, repo_file, run, tool, yaml_documents, yaml_file};

fn prometheus_dir() -> std::path::PathBuf {
    repo_file("deploy/prometheus")
}

#[test]
fn promtool_accepts_the_prometheus_config_and_rules() {
    let promtool = tool("promtool");
    let (ok, text) = run(&promtool, &["check", "config", "prometheus.yml"], &prometheus_dir());
    assert!(ok && text.contains("SUCCESS: prometheus.yml is valid"), "{text}");
    let (ok, text) = run(&promtool, &["check", "config", "prometheus-local.yml"], &prometheus_dir());
    assert!(ok && text.contains("SUCCESS: prometheus-local.yml is valid"), "{text}");
    let (ok, text) = run(&promtool, &["check", "rules", "rules/inception.rules.yml"], &prometheus_dir());
    assert!(ok && text.contains("SUCCESS"), "{text}");
    // The config scrapes every service and NATS (through its exporter).
    let config = &yaml_file("deploy/prometheus/prometheus.yml")[0];
    let jobs: BTreeSet<&str> = config["scrape_configs"]
        .as_array()
        .expect("scrape_configs")
        .iter()
        .filter_map(|j| j["job_name"].as_str())
        .collect();
    assert_eq!(jobs, BTreeSet::from(["ingest", "preprocess", "trainer", "evaluator", "serve", "nats"]));
    let text = read("deploy/prometheus/prometheus.yml");
    for target in [
        "ingest:9101",
        "\"preprocess\"",
        "port: 9102",
        "trainer:9103",
        "evaluator:9104",
        "serve:9105",
        "nats-exporter:7777",
    ] {
        assert!(text.contains(target), "{target} is not scraped");
    }
}

#[test]
fn promtool_rejects_a_broken_rule() {
    // The check above means something: a rule with a bad expression fails.
    let dir = tempfile::tempdir().expect("tempdir");
    let broken = read("deploy/prometheus/rules/inception.rules.yml")
        .replace("rate(inception_trainer_data_wait_seconds_sum[10m])", "rate(inception_trainer_data_wait_seconds_sum)");
    std::fs::write(dir.path().join("broken.yml"), broken).expect("write");
    let (ok, text) = run(&tool("promtool"), &["check", "rules", "broken.yml"], dir.path());
    assert!(!ok, "a range function without a range passed: {text}");
}

#[test]
fn alert_rules_pass_their_unit_tests() {
    let (ok, text) = run(&tool("promtool"), &["test", "rules", "tests/inception.rules.test.yml"], &prometheus_dir());
    assert!(ok && text.contains("SUCCESS"), "{text}");
    // Every alert has a unit test that shows it firing.
    let tests = read("deploy/prometheus/tests/inception.rules.test.yml");
    let alerts: Vec<String> = support::alert_rules().into_iter().map(|(name, _)| name).collect();
    for required in [
        "InceptionTrainerStalled",
        "InceptionTrainerLossNotFinite",
        "InceptionTrainerLossDiverging",
        "InceptionEvaluationOverdue",
        "InceptionTrainerStarved",
        "InceptionIngestErrorRate",
    ] {
        assert!(alerts.iter().any(|a| a == required), "no {required} alert");
    }
    for alert in &alerts {
        assert!(
            tests.contains(&format!("alertname: {alert}\n        exp_alerts:\n          -")),
            "{alert} is never shown firing"
        );
    }
}

#[test]
fn rules_and_dashboard_use_only_metrics_the_services_export_and_the_docs_list() {
    let exported = support::exported_metric_names();
    let documented = support::documented_metric_names();
    assert!(exported.len() >= 25, "{exported:?}");
    // The catalogue lists every metric the services record, and nothing else.
    assert_eq!(exported, documented, "docs/metrics.md and services/ disagree");
    let mut used = Vec::new();
    for (name, expr) in support::alert_rules() {
        used.push((format!("rule {name}"), expr));
    }
    for (title, expr) in support::dashboard_queries(&support::dashboard()) {
        used.push((format!("panel {title:?}"), expr));
    }
    for (place, expr) in &used {
        let names = support::metric_names(expr);
        assert!(!names.is_empty() || expr.contains("up{"), "{place}: no pipeline metric in {expr}");
        for name in names {
            assert!(exported.contains(&name), "{place} uses {name}, which no service exports");
        }
    }
}

#[test]
fn grafana_provisioning_points_at_the_dashboard_and_its_datasource() {
    let datasource = &yaml_file("deploy/grafana/provisioning/datasources/prometheus.yml")[0]["datasources"][0];
    assert_eq!(datasource["type"], "prometheus");
    let uid = datasource["uid"].as_str().expect("datasource uid");
    let provider = &yaml_file("deploy/grafana/provisioning/dashboards/inception.yml")[0]["providers"][0];
    let path = provider["options"]["path"].as_str().expect("provider path");
    // Compose mounts the dashboards where the provider looks for them.
    let compose = read("deploy/compose/docker-compose.yml");
    assert!(compose.contains(&format!("../grafana/dashboards:{path}:ro")), "dashboards not mounted at {path}");
    let dashboard = support::dashboard();
    let mut ids = BTreeSet::new();
    let panels = dashboard["panels"].as_array().expect("panels");
    for p in panels {
        assert!(ids.insert(p["id"].as_i64().expect("panel id")), "duplicate panel id {}", p["id"]);
        if p["type"] != "row" {
            assert_eq!(p["datasource"]["uid"], uid, "panel {} uses another data source", p["title"]);
            assert!(!p["targets"].as_array().expect("targets").is_empty(), "panel {} has no query", p["title"]);
        }
    }
    let titles: Vec<&str> = panels.iter().filter_map(|p| p["title"].as_str()).collect();
    for wanted in [
        "Examples per second by stage",
        "Step time p50 / p95",
        "Loss",
        "Learning rate",
        "Precision@1 and recall@5 against checkpoint step",
        "Per-class precision@1",
        "Per-class recall",
        "Batch queue depth",
        "Preprocess workers",
        "Errors per second",
        "Serve latency p50 / p99",
        "Serve requests by outcome",
        "Served and promoted step",
        "Promotion decisions",
    ] {
        assert!(titles.contains(&wanted), "no panel {wanted:?}: {titles:?}");
    }
    let queries = support::dashboard_queries(&dashboard);
    assert!(queries
        .iter()
        .any(|(_, e)| e.contains("histogram_quantile(0.95") && e.contains("inception_trainer_step_seconds_bucket")));
    assert!(queries
        .iter()
        .any(|(_, e)| e.contains("histogram_quantile(0.5,") && e.contains("inception_trainer_step_seconds_bucket")));
    for quantile in ["histogram_quantile(0.5,", "histogram_quantile(0.99,"] {
        assert!(queries
            .iter()
            .any(|(_, e)| e.contains(quantile) && e.contains("inception_serve_request_seconds_bucket")));
    }
    assert!(queries.iter().any(|(_, e)| e.contains("inception_promotions_total") && e.contains("decision")));
}

fn compose_dir() -> std::path::PathBuf {
    repo_file("deploy/compose")
}

#[test]
fn docker_compose_validates_the_compose_files() {
    let compose = tool("docker-compose");
    let (ok, text) = run(&compose, &["-f", "docker-compose.yml", "config", "--quiet"], &compose_dir());
    assert!(ok, "{text}");
    let (ok, text) = run(
        &compose,
        &["-f", "docker-compose.yml", "-f", "docker-compose.gpu.yml", "config", "--quiet"],
        &compose_dir(),
    );
    assert!(ok, "{text}");
    let (ok, services) = run(&compose, &["-f", "docker-compose.yml", "config", "--services"], &compose_dir());
    assert!(ok, "{services}");
    let services: BTreeSet<&str> = services.lines().collect();
    for s in [
        "nats",
        "nats-exporter",
        "minio",
        "prometheus",
        "grafana",
        "ingest",
        "preprocess",
        "trainer",
        "evaluator",
        "serve",
    ] {
        assert!(services.contains(s), "no {s} service: {services:?}");
    }
    // The resolved file: JetStream on, each service's metrics on 0.0.0.0 and its port.
    let (ok, resolved) = run(&compose, &["-f", "docker-compose.yml", "config"], &compose_dir());
    assert!(ok, "{resolved}");
    let doc = &yaml_documents(&resolved)[0];
    for (service, key, port) in [
        ("ingest", "INGEST", 9101),
        ("preprocess", "PREPROCESS", 9102),
        ("trainer", "TRAIN", 9103),
        ("evaluator", "EVAL", 9104),
        ("serve", "SERVE", 9105),
    ] {
        let env = &doc["services"][service]["environment"];
        assert_eq!(env[format!("INCEPTION__{key}__METRICS_ADDR")], format!("0.0.0.0:{port}"), "{service}");
        assert_eq!(env["INCEPTION__NATS__URL"], "nats://nats:4222", "{service}");
        assert!(env["INCEPTION__STORE__URL"].as_str().is_some_and(|u| u.starts_with("s3://")), "{service}");
        assert_eq!(doc["services"][service]["build"]["dockerfile"], "deploy/compose/Dockerfile", "{service}");
    }
    // The server's API listens on the container's address, published on the host's loopback only.
    let serve = &doc["services"]["serve"];
    assert_eq!(serve["environment"]["INCEPTION__SERVE__LISTEN_ADDR"], "0.0.0.0:8080");
    let published = serve["ports"].as_array().expect("serve ports");
    // docker-compose v1 resolves "HOST:PUBLISHED:TARGET" to a string, v2 to an object.
    let on_loopback = |p: &serde_json::Value| {
        p.as_str().is_some_and(|p| p.starts_with("127.0.0.1:") && p.contains(":8080"))
            || (p["host_ip"] == "127.0.0.1" && p["target"] == 8080)
    };
    assert!(!published.is_empty() && published.iter().all(on_loopback), "{published:?}");
    assert!(read("deploy/nats/nats-server.conf").contains("jetstream"), "the mounted nats config enables JetStream");
    let gpu = read("deploy/compose/docker-compose.gpu.yml");
    assert!(gpu.contains("driver: nvidia") && gpu.contains("capabilities: [gpu]"), "{gpu}");
}

#[test]
fn docker_compose_rejects_a_broken_file() {
    let dir = tempfile::tempdir().expect("tempdir");
    let broken = read("deploy/compose/docker-compose.yml")
        .replace("    image: nats:2.12.8\n", "    image: nats:2.12.8\n    no_such_option: 1\n");
    std::fs::write(dir.path().join("docker-compose.yml"), broken).expect("write");
    let (ok, text) = run(&tool("docker-compose"), &["-f", "docker-compose.yml", "config", "--quiet"], dir.path());
    assert!(!ok && text.contains("no_such_option"), "{text}");
}

#[test]
fn dockerfile_gets_libtorch_from_the_pinned_pypi_torch() {
    let dockerfile = read("deploy/compose/Dockerfile");
    let setup = read("scripts/setup.sh");
    let version = setup
        .lines()
        .find_map(|l| l.strip_prefix("TORCH_VERSION="))
        .and_then(|v| v.split_whitespace().next())
        .expect("TORCH_VERSION in setup.sh");
    assert!(dockerfile.contains(&format!("torch=={version}")), "Dockerfile's torch differs from setup.sh's {version}");
    assert!(dockerfile.contains("LIBTORCH_USE_PYTORCH=1"));
    for bin in
        ["inception-ingest", "inception-preprocess", "inception-trainer", "inception-evaluator", "inception-serve"]
    {
        assert!(
            dockerfile.contains(&format!("-p {bin}")) && dockerfile.contains(&format!("target/release/{bin}")),
            "{bin} not built"
        );
    }
}

/// `kubectl kustomize deploy/k8s`, as JSON documents.
fn kustomize() -> (String, Vec<serde_json::Value>) {
    let (ok, built) = run(&tool("kubectl"), &["kustomize", "deploy/k8s"], &support::repo_root());
    assert!(ok, "{built}");
    let docs = yaml_documents(&built);
    (built, docs)
}

fn find<'a>(docs: &'a [serde_json::Value], kind: &str, name: &str) -> &'a serde_json::Value {
    docs.iter()
        .find(|d| d["kind"] == kind && d["metadata"]["name"] == name)
        .unwrap_or_else(|| panic!("no {kind} {name}"))
}

#[test]
fn kustomize_builds_objects_that_pass_the_kubernetes_schemas() {
    let (built, docs) = kustomize();
    let dir = tempfile::tempdir().expect("tempdir");
    let file = dir.path().join("inception.yaml");
    std::fs::write(&file, &built).expect("write");
    let file = file.to_str().expect("utf-8 path");
    let (ok, text) = run(&tool("kubernetes-validate"), &["--strict", file], dir.path());
    assert!(ok, "{text}");
    // Every built-in kind was checked against a schema (only the CRDs lack one).
    for d in &docs {
        let (kind, name) = (d["kind"].as_str().unwrap_or(""), d["metadata"]["name"].as_str().unwrap_or(""));
        if kind == "ScaledObject" || kind == "PodMonitor" {
            continue;
        }
        assert!(
            text.contains(&format!("passed for resource {}/{name}", kind.to_lowercase())),
            "{kind}/{name} not validated: {text}"
        );
    }
    // A misspelt field is caught by the same check.
    std::fs::write(dir.path().join("bad.yaml"), built.replacen("readinessProbe:", "readinesProbe:", 1)).expect("write");
    let (ok, text) = run(&tool("kubernetes-validate"), &["--strict", "bad.yaml"], dir.path());
    assert!(!ok && text.contains("readinesProbe"), "{text}");
}

#[test]
fn kubernetes_workloads_have_probes_ports_and_the_trainer_a_gpu() {
    let (_, docs) = kustomize();
    let config = &find(&docs, "ConfigMap", "inception-config")["data"];
    for (kind, name, key, port) in [
        ("Deployment", "ingest", "INGEST", 9101),
        ("Deployment", "preprocess", "PREPROCESS", 9102),
        ("Deployment", "trainer", "TRAIN", 9103),
        ("Deployment", "evaluator", "EVAL", 9104),
        ("Deployment", "serve", "SERVE", 9105),
    ] {
        let pod = &find(&docs, kind, name)["spec"]["template"];
        let c = &pod["spec"]["containers"][0];
        assert_eq!(config[format!("INCEPTION__{key}__METRICS_ADDR")], format!("0.0.0.0:{port}"), "{name}");
        assert_eq!(c["ports"][0]["name"], "metrics", "{name}");
        assert_eq!(c["ports"][0]["containerPort"], port, "{name}");
        assert_eq!(c["livenessProbe"]["httpGet"]["path"], "/healthz", "{name}");
        assert_eq!(c["readinessProbe"]["httpGet"]["path"], "/readyz", "{name}");
        assert_eq!(c["livenessProbe"]["httpGet"]["port"], "metrics", "{name}");
        assert_eq!(pod["metadata"]["annotations"]["prometheus.io/port"], port.to_string(), "{name}");
        assert_eq!(pod["metadata"]["labels"]["app.kubernetes.io/name"], name);
    }
    let trainer = &find(&docs, "Deployment", "trainer")["spec"];
    assert_eq!(trainer["replicas"], 1);
    assert_eq!(trainer["template"]["spec"]["containers"][0]["resources"]["limits"]["nvidia.com/gpu"], 1);
    // The server: ready only with a checkpoint loaded (its API port), a
    // Service in front, and replicas added on CPU.
    assert_eq!(config["INCEPTION__SERVE__LISTEN_ADDR"], "0.0.0.0:8080");
    let serve = &find(&docs, "Deployment", "serve")["spec"]["template"]["spec"]["containers"][0];
    assert_eq!(serve["readinessProbe"]["httpGet"]["port"], "http");
    assert!(serve["ports"]
        .as_array()
        .expect("ports")
        .iter()
        .any(|p| p["name"] == "http" && p["containerPort"] == 8080));
    let service = &find(&docs, "Service", "serve")["spec"];
    assert_eq!(service["selector"]["app.kubernetes.io/name"], "serve");
    assert_eq!(service["ports"][0]["targetPort"], "http");
    let hpa = &find(&docs, "HorizontalPodAutoscaler", "serve")["spec"];
    assert_eq!(hpa["scaleTargetRef"]["name"], "serve");
    assert_eq!(hpa["metrics"][0]["resource"]["name"], "cpu");
    assert!(hpa["minReplicas"].as_i64() >= Some(1) && hpa["maxReplicas"].as_i64() > hpa["minReplicas"].as_i64());
    let monitor = &find(&docs, "PodMonitor", "inception")["spec"];
    assert_eq!(monitor["jobLabel"], "app.kubernetes.io/name");
    assert_eq!(monitor["podMetricsEndpoints"][0]["port"], "metrics");
}

#[test]
fn keda_scales_preprocess_on_the_real_batch_queue() {
    let (_, docs) = kustomize();
    let scaled = &find(&docs, "ScaledObject", "preprocess")["spec"];
    assert_eq!(scaled["scaleTargetRef"]["name"], "preprocess");
    find(&docs, "Deployment", "preprocess");
    let trigger = &scaled["triggers"][0];
    assert_eq!(trigger["type"], "nats-jetstream");
    let meta = &trigger["metadata"];
    // The stream and the durable consumer the services really use.
    let settings = inception_core::Settings::load(None, &[]).expect("default settings");
    let subjects = inception_core::nats::Subjects::new(&settings.nats.subject_prefix);
    assert_eq!(meta["stream"], subjects.stream_name("BATCHES"));
    let consumer = meta["consumer"].as_str().expect("consumer");
    let durable = format!("durable_name: Some(\"{consumer}\".into())");
    let sources = ["services/core/src/nats.rs", "services/trainer/src/lib.rs"];
    assert!(sources.iter().any(|f| read(f).contains(&durable)), "no durable consumer {consumer} in {sources:?}");
    assert_eq!(meta["account"], "$G");
    // The formula scales on free room: capacity is pipeline.queue_capacity.
    let formula = scaled["advanced"]["scalingModifiers"]["formula"].as_str().expect("formula");
    let capacity = settings.pipeline.queue_capacity;
    assert_eq!(
        formula,
        format!(
            "{name} < {capacity} ? {capacity} - {name} : 0",
            name = trigger["name"].as_str().expect("trigger name")
        )
    );
    // NATS from the official chart: JetStream on, monitoring where KEDA looks.
    let values = &yaml_file("deploy/k8s/nats/values.yaml")[0];
    assert_eq!(values["config"]["jetstream"]["enabled"], true);
    assert_eq!(values["config"]["monitor"]["enabled"], true);
    let port = values["config"]["monitor"]["port"].as_i64().expect("monitor port");
    assert!(meta["natsServerMonitoringEndpoint"].as_str().is_some_and(|e| e.ends_with(&format!(":{port}"))), "{meta}");
    assert_eq!(values["promExporter"]["enabled"], true);
    let nats_url = find(&docs, "ConfigMap", "inception-config")["data"]["INCEPTION__NATS__URL"]
        .as_str()
        .expect("nats url")
        .to_string();
    let host = meta["natsServerMonitoringEndpoint"].as_str().and_then(|e| e.split(':').next()).expect("host");
    assert!(nats_url.contains(host), "services use {nats_url}, KEDA watches {host}");
}

// Training on several pods: deploy/k8s/trainer-pytorchjob.yaml (Kubeflow
// Training Operator) and deploy/k8s/trainer-indexed-job.yaml (plain
// Kubernetes). Both run the trainer Deployment's container once per rank.

/// The variables a launcher sets and the trainer reads (they override `[distributed]`).
const LAUNCHER_VARIABLES: [&str; 4] = ["RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT"];

/// The rendezvous port: torch's default, and `distributed.master_port`'s.
const MASTER_PORT: i64 = 29500;

/// The trainer Deployment's pod spec (deploy/k8s/trainer.yaml).
fn trainer_deployment_pod() -> serde_json::Value {
    let docs = yaml_file("deploy/k8s/trainer.yaml");
    assert_eq!(docs[0]["kind"], "Deployment");
    docs[0]["spec"]["template"]["spec"].clone()
}

/// The `env` entry `name` of a container, if any.
fn env<'a>(container: &'a serde_json::Value, name: &str) -> Option<&'a serde_json::Value> {
    container["env"].as_array().into_iter().flatten().find(|e| e["name"] == name)
}

/// Checks that one rank's pod template runs the trainer as the Deployment
/// does (image, command, settings, store secret, device, GPU, metrics,
/// liveness) and opens the rendezvous port; returns its container.
fn check_rank_pod<'a>(pod: &'a serde_json::Value, place: &str) -> &'a serde_json::Value {
    let deployment = trainer_deployment_pod();
    let trainer = &deployment["containers"][0];
    let containers = pod["spec"]["containers"].as_array().unwrap_or_else(|| panic!("{place}: no containers"));
    assert_eq!(containers.len(), 1, "{place}");
    let c = &containers[0];
    assert_eq!(c["image"], trainer["image"], "{place}: not the trainer Deployment's image");
    assert_eq!(c["command"], serde_json::json!(["inception-trainer"]), "{place}");
    assert_eq!(c["envFrom"], trainer["envFrom"], "{place}: other settings or store credentials");
    assert_eq!(env(c, "INCEPTION__TRAIN__DEVICE"), env(trainer, "INCEPTION__TRAIN__DEVICE"), "{place}");
    assert_eq!(c["resources"], trainer["resources"], "{place}");
    assert_eq!(c["resources"]["limits"]["nvidia.com/gpu"], 1, "{place}");
    assert_eq!(c["securityContext"], trainer["securityContext"], "{place}");
    assert_eq!(c["livenessProbe"], trainer["livenessProbe"], "{place}");
    for key in ["tolerations", "terminationGracePeriodSeconds"] {
        assert_eq!(pod["spec"][key], deployment[key], "{place}: {key}");
    }
    let ports = c["ports"].as_array().unwrap_or_else(|| panic!("{place}: no ports"));
    assert!(ports.iter().any(|p| p["name"] == "metrics" && p["containerPort"] == 9103), "{place}: {ports:?}");
    assert!(ports.iter().any(|p| p["containerPort"] == MASTER_PORT), "{place}: no rendezvous port: {ports:?}");
    // job="trainer" for the PodMonitor, the alert rules and the dashboard.
    assert_eq!(pod["metadata"]["labels"]["app.kubernetes.io/name"], "trainer", "{place}");
    assert_eq!(pod["metadata"]["annotations"]["prometheus.io/port"], "9103", "{place}");
    c
}

/// `kubernetes-validate --strict` on `docs`; returns its report (panics on a failure).
fn validate_strict(docs: &[serde_json::Value]) -> String {
    let dir = tempfile::tempdir().expect("tempdir");
    let text: Vec<String> = docs.iter().map(|d| d.to_string()).collect();
    std::fs::write(dir.path().join("objects.yaml"), text.join("\n---\n")).expect("write");
    let (ok, report) = run(&tool("kubernetes-validate"), &["--strict", "objects.yaml"], dir.path());
    assert!(ok, "{report}");
    report
}

/// A pod template as a core/v1 PodTemplate, which the schemas know.
fn as_pod_template(name: &str, template: &serde_json::Value) -> serde_json::Value {
    serde_json::json!({"apiVersion": "v1", "kind": "PodTemplate", "metadata": {"name": name}, "template": template})
}

#[test]
fn pytorchjob_runs_the_trainer_as_one_master_and_workers() {
    let docs = yaml_file("deploy/k8s/trainer-pytorchjob.yaml");
    assert_eq!(docs.len(), 1);
    let job = &docs[0];
    assert_eq!(job["apiVersion"], "kubeflow.org/v1");
    assert_eq!(job["kind"], "PyTorchJob");
    assert_eq!(job["metadata"]["namespace"], "inception");
    let specs = &job["spec"]["pytorchReplicaSpecs"];
    let roles: BTreeSet<&str> = specs.as_object().expect("pytorchReplicaSpecs").keys().map(String::as_str).collect();
    assert_eq!(roles, BTreeSet::from(["Master", "Worker"]));
    assert_eq!(specs["Master"]["replicas"], 1);
    assert!(specs["Worker"]["replicas"].as_i64() >= Some(1), "{}", specs["Worker"]);
    // The operator's WORLD_SIZE is replicas × nprocPerNode: one process per pod.
    let nproc = &job["spec"]["nprocPerNode"];
    assert!(nproc.is_null() || nproc == "1" || nproc == "auto", "nprocPerNode {nproc}");
    // A failed rank restarts in place; the others fail within the time-out and restart too.
    assert!(job["spec"]["runPolicy"]["backoffLimit"].as_i64() > Some(0), "{}", job["spec"]["runPolicy"]);
    for role in ["Master", "Worker"] {
        assert_eq!(specs[role]["restartPolicy"], "OnFailure", "{role}");
        let c = check_rank_pod(&specs[role]["template"], role);
        // The operator sets MASTER_PORT from the port pytorchjob-port of the container named pytorch.
        assert_eq!(c["name"], "pytorch", "{role}");
        let ports = c["ports"].as_array().expect("ports");
        assert!(ports.iter().any(|p| p["name"] == "pytorchjob-port" && p["containerPort"] == MASTER_PORT), "{role}");
        // ... and RANK, WORLD_SIZE and MASTER_ADDR: none set by hand.
        for var in LAUNCHER_VARIABLES {
            assert!(env(c, var).is_none(), "{role} sets {var}, which the operator sets");
        }
        // MASTER_ADDR is the Master's headless Service, which lists ready pods only.
        assert!(c.get("readinessProbe").is_none(), "{role}: a readiness probe can hide the master");
    }
    assert_eq!(specs["Master"]["template"], specs["Worker"]["template"], "Master and Worker pods differ");
    // The pod template and its commented several-GPU variant pass the Kubernetes schemas.
    let template = &specs["Master"]["template"];
    let variant = several_gpu_variant();
    assert_eq!(env(&variant, "INCEPTION__TRAIN__NUM_GPUS").map(|e| &e["value"]), Some(&serde_json::json!("4")));
    for key in ["requests", "limits"] {
        assert_eq!(variant["resources"][key]["nvidia.com/gpu"], 4, "{key}");
    }
    let mut several = template.clone();
    several["spec"]["containers"][0]["env"] = variant["env"].clone();
    several["spec"]["containers"][0]["resources"] = variant["resources"].clone();
    let report = validate_strict(&[as_pod_template("master", template), as_pod_template("several-gpus", &several)]);
    for name in ["master", "several-gpus"] {
        assert!(report.contains(&format!("passed for resource podtemplate/{name}")), "{report}");
    }
}

/// The commented `env` and `resources` of trainer-pytorchjob.yaml's "Several
/// GPUs in one pod" variant, uncommented and parsed.
fn several_gpu_variant() -> serde_json::Value {
    let text = read("deploy/k8s/trainer-pytorchjob.yaml");
    let start = text.find("# Several GPUs in one pod, e.g. 4").expect("the several-GPU variant");
    let block: Vec<&str> = text[start..]
        .lines()
        .skip_while(|l| !l.trim_start().starts_with("#   env:"))
        .map_while(|l| l.trim_start().strip_prefix("#   "))
        .collect();
    assert!(!block.is_empty(), "no commented env/resources in the variant");
    yaml_documents(&block.join("\n")).into_iter().next().expect("the variant parses")
}

#[test]
fn indexed_job_and_its_service_pass_the_kubernetes_schemas() {
    let docs = yaml_file("deploy/k8s/trainer-indexed-job.yaml");
    let kinds: BTreeSet<&str> = docs.iter().filter_map(|d| d["kind"].as_str()).collect();
    assert_eq!(kinds, BTreeSet::from(["Job", "Service"]));
    let file = repo_file("deploy/k8s/trainer-indexed-job.yaml");
    let file = file.to_str().expect("utf-8 path");
    let (ok, text) = run(&tool("kubernetes-validate"), &["--strict", file], &support::repo_root());
    assert!(ok, "{text}");
    for d in &docs {
        let (kind, name) = (d["kind"].as_str().unwrap_or(""), d["metadata"]["name"].as_str().unwrap_or(""));
        assert!(text.contains(&format!("passed for resource {}/{name}", kind.to_lowercase())), "{kind}/{name}: {text}");
    }
    // The check reads the Job's fields: a misspelt one fails.
    let dir = tempfile::tempdir().expect("tempdir");
    let broken = read("deploy/k8s/trainer-indexed-job.yaml").replacen("completionMode:", "completionMod:", 1);
    std::fs::write(dir.path().join("bad.yaml"), broken).expect("write");
    let (ok, text) = run(&tool("kubernetes-validate"), &["--strict", "bad.yaml"], dir.path());
    assert!(!ok && text.contains("completionMod"), "{text}");
}

#[test]
fn indexed_job_gives_each_rank_its_rank_and_the_rendezvous() {
    let docs = yaml_file("deploy/k8s/trainer-indexed-job.yaml");
    let service = docs.iter().find(|d| d["kind"] == "Service").expect("a Service");
    let job = docs.iter().find(|d| d["kind"] == "Job").expect("a Job");
    let (service_name, job_name) =
        (service["metadata"]["name"].as_str().expect("name"), job["metadata"]["name"].as_str().expect("name"));
    for d in [service, job] {
        assert_eq!(d["metadata"]["namespace"], "inception");
    }
    let spec = &job["spec"];
    assert_eq!(spec["completionMode"], "Indexed");
    let world = spec["parallelism"].as_i64().expect("parallelism");
    assert!(world >= 2, "parallelism {world}");
    assert_eq!(spec["completions"], world, "completions and parallelism differ");
    let pod = &spec["template"];
    let c = check_rank_pod(pod, "Job");
    // Each pod is <job>-<index>.<service>: the Service is headless, selects
    // the pods, and names them before they are ready.
    assert_eq!(pod["spec"]["subdomain"], service_name);
    assert_eq!(service["spec"]["clusterIP"], "None");
    assert_eq!(service["spec"]["publishNotReadyAddresses"], true);
    let selector = service["spec"]["selector"].as_object().expect("selector");
    for (key, value) in selector {
        assert_eq!(&pod["metadata"]["labels"][key], value, "the Service does not select the pods ({key})");
    }
    let port = &service["spec"]["ports"][0];
    assert_eq!(port["port"], MASTER_PORT);
    assert!(
        c["ports"]
            .as_array()
            .expect("ports")
            .iter()
            .any(|p| p["name"] == port["targetPort"] && p["containerPort"] == MASTER_PORT),
        "the Service's targetPort {} is not the rendezvous port",
        port["targetPort"]
    );
    // The launcher variables: RANK from the completion index, rank 0 the master.
    let rank = &env(c, "RANK").expect("RANK")["valueFrom"]["fieldRef"]["fieldPath"];
    assert_eq!(rank, "metadata.annotations['batch.kubernetes.io/job-completion-index']");
    assert_eq!(env(c, "WORLD_SIZE").expect("WORLD_SIZE")["value"], world.to_string());
    assert_eq!(env(c, "MASTER_ADDR").expect("MASTER_ADDR")["value"], format!("{job_name}-0.{service_name}"));
    assert_eq!(env(c, "MASTER_PORT").expect("MASTER_PORT")["value"], MASTER_PORT.to_string());
    // Failures: every rank's exit is counted (one fault spends up to WORLD_SIZE),
    // a configuration error (exit 2) ends the Job.
    assert!(spec["backoffLimit"].as_i64() >= Some(world), "backoffLimit {} < {world}", spec["backoffLimit"]);
    assert_eq!(pod["spec"]["restartPolicy"], "Never");
    let rules = spec["podFailurePolicy"]["rules"].as_array().expect("podFailurePolicy");
    assert!(
        rules.iter().any(|r| r["action"] == "FailJob"
            && r["onExitCodes"]["containerName"] == c["name"]
            && r["onExitCodes"]["operator"] == "In"
            && r["onExitCodes"]["values"].as_array().is_some_and(|v| v.contains(&serde_json::json!(2)))),
        "{rules:?}"
    );
}

#[test]
fn multi_pod_trainers_stay_out_of_the_default_kustomization() {
    // Each replaces the trainer Deployment, and a cluster without the
    // Training Operator has no PyTorchJob kind: both are applied by hand.
    let kustomization = &yaml_file("deploy/k8s/kustomization.yaml")[0];
    let resources: Vec<&str> =
        kustomization["resources"].as_array().expect("resources").iter().filter_map(|r| r.as_str()).collect();
    assert!(resources.contains(&"trainer.yaml"), "{resources:?}");
    for file in ["trainer-pytorchjob.yaml", "trainer-indexed-job.yaml"] {
        assert!(repo_file(&format!("deploy/k8s/{file}")).is_file(), "deploy/k8s/{file} is missing");
        assert!(!resources.contains(&file), "{file} is in the default kustomization");
    }
}
