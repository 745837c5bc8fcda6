//! Shared by deploy.rs and observability.rs: the repository's paths, the ops
//! tools scripts/setup-ops.sh installs, YAML read through the venv's PyYAML,
//! and the metric names that the services, docs, rules and dashboard use.
#![allow(dead_code)]

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

pub(crate) fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

pub(crate) fn repo_file(relative: &str) -> PathBuf {
    repo_root().join(relative)
}

pub(crate) fn read(relative: &str) -> String {
    std::fs::read_to_string(repo_file(relative)).unwrap_or_else(|e| panic!("read {relative}: {e}"))
}

/// A tool installed by scripts/setup-ops.sh: `.tools/bin/<name>`, `.venv/bin/<name>`,
/// else on PATH. Panics with the fix when it is missing.
pub(crate) fn tool(name: &str) -> PathBuf {
    let root = repo_root();
    for dir in [root.join(".tools/bin"), root.join(".venv/bin")] {
        let p = dir.join(name);
        if p.is_file() {
            return p;
        }
    }
    if let Some(path) = std::env::var_os("PATH") {
        if let Some(p) = std::env::split_paths(&path).map(|d| d.join(name)).find(|p| p.is_file()) {
            return p;
        }
    }
    panic!("{name} is missing: run scripts/setup-ops.sh (make test does)");
}

/// Runs `program args` in `dir`; returns (success, stdout + stderr).
pub(crate) fn run(program: &Path, args: &[&str], dir: &Path) -> (bool, String) {
    let out = Command::new(program)
        .args(args)
        .current_dir(dir)
        .stdin(Stdio::null())
        .output()
        .unwrap_or_else(|e| panic!("cannot run {}: {e}", program.display()));
    let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    (out.status.success(), text)
}

/// Every document of a YAML text, as JSON (PyYAML's safe_load_all in the venv).
pub(crate) fn yaml_documents(text: &str) -> Vec<serde_json::Value> {
    use std::io::Write;
    let python = repo_root().join(".venv/bin/python");
    let mut child = Command::new(&python)
        .args([
            "-c",
            "import sys, json, yaml; print(json.dumps([d for d in yaml.safe_load_all(sys.stdin) if d is not None]))",
        ])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("cannot run {}: {e} (scripts/setup.sh makes the venv)", python.display()));
    child.stdin.take().expect("stdin").write_all(text.as_bytes()).expect("write YAML to python");
    let out = child.wait_with_output().expect("python output");
    assert!(out.status.success(), "YAML does not parse: {}", String::from_utf8_lossy(&out.stderr));
    let docs: serde_json::Value = serde_json::from_slice(&out.stdout).expect("JSON from python");
    docs.as_array().cloned().unwrap_or_default()
}

pub(crate) fn yaml_file(relative: &str) -> Vec<serde_json::Value> {
    yaml_documents(&read(relative))
}

/// `inception_*` metric names in a PromQL expression, with the histogram
/// series suffixes (_bucket, _sum, _count) taken off.
pub(crate) fn metric_names(expr: &str) -> BTreeSet<String> {
    let mut names = BTreeSet::new();
    let bytes = expr.as_bytes();
    let mut i = 0;
    while let Some(pos) = expr[i..].find("inception_") {
        let start = i + pos;
        let boundary = start == 0 || !(bytes[start - 1].is_ascii_alphanumeric() || bytes[start - 1] == b'_');
        let mut end = start;
        while end < bytes.len() && (bytes[end].is_ascii_alphanumeric() || bytes[end] == b'_') {
            end += 1;
        }
        if boundary {
            let mut name = &expr[start..end];
            for suffix in ["_bucket", "_sum", "_count"] {
                if let Some(base) = name.strip_suffix(suffix) {
                    name = base;
                }
            }
            names.insert(name.to_string());
        }
        i = end.max(start + 1);
    }
    names
}

/// Metric names the services record: string literals `"inception_…"` given
/// to the `metrics` macros in services/**/*.rs (the test-only ones left out).
pub(crate) fn exported_metric_names() -> BTreeSet<String> {
    fn walk(dir: &Path, out: &mut BTreeSet<String>) {
        let Ok(entries) = std::fs::read_dir(dir) else { return };
        for entry in entries.flatten() {
            let path = entry.path();
            if path.is_dir() {
                walk(&path, out);
            } else if path.extension().is_some_and(|e| e == "rs") {
                let text = std::fs::read_to_string(&path).unwrap_or_default();
                for (n, _) in text.match_indices("metrics::") {
                    let rest = &text[n..];
                    let Some(open) = rest.find("!(") else { continue };
                    let call = rest[open + 2..].trim_start();
                    if let Some(name) = call.strip_prefix('"').and_then(|s| s.split('"').next()) {
                        if name.starts_with("inception_") && !name.starts_with("inception_test_") {
                            out.insert(name.to_string());
                        }
                    }
                }
            }
        }
    }
    let mut names = BTreeSet::new();
    walk(&repo_file("services"), &mut names);
    names
}

/// Metric names of docs/metrics.md's catalogue table (first column).
pub(crate) fn documented_metric_names() -> BTreeSet<String> {
    read("docs/metrics.md")
        .lines()
        .filter_map(|l| l.strip_prefix("| `"))
        .filter_map(|l| l.split('`').next())
        .filter(|n| n.starts_with("inception_"))
        .map(str::to_string)
        .collect()
}

/// (panel title, expression) of every query of the Grafana dashboard, rows included.
pub(crate) fn dashboard_queries(dashboard: &serde_json::Value) -> Vec<(String, String)> {
    fn collect(panels: &[serde_json::Value], out: &mut Vec<(String, String)>) {
        for p in panels {
            let title = p["title"].as_str().unwrap_or("").to_string();
            for t in p["targets"].as_array().into_iter().flatten() {
                if let Some(expr) = t["expr"].as_str() {
                    out.push((title.clone(), expr.to_string()));
                }
            }
            if let Some(inner) = p["panels"].as_array() {
                collect(inner, out);
            }
        }
    }
    let mut out = Vec::new();
    collect(dashboard["panels"].as_array().map_or(&[][..], Vec::as_slice), &mut out);
    out
}

pub(crate) fn dashboard() -> serde_json::Value {
    serde_json::from_str(&read("deploy/grafana/dashboards/inception.json")).expect("dashboard JSON parses")
}

/// Alert names and expressions of the rules file.
pub(crate) fn alert_rules() -> Vec<(String, String)> {
    let docs = yaml_file("deploy/prometheus/rules/inception.rules.yml");
    let mut out = Vec::new();
    for group in docs[0]["groups"].as_array().expect("groups") {
        for rule in group["rules"].as_array().expect("rules") {
            let name = rule["alert"].as_str().or(rule["record"].as_str()).unwrap_or("").to_string();
            out.push((name, rule["expr"].as_str().expect("expr").to_string()));
        }
    }
    out
}
