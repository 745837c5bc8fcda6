//! `serve.precision` (issue 19): a server in bf16 answers with fp32's top-1
//! wherever fp32's lead is clear, and with probabilities from an fp32
//! softmax; fp16 on the CPU is refused at start, naming the key, and the
//! binary exits with the configuration errors' status 2.

mod support;

use inception_core::settings::{DeviceSetting, PrecisionSetting};
use inception_model::precision::Precision;
use inception_serve::Classified;
use std::collections::HashMap;
use support::{
    photo, promote, put_checkpoint_with, scrape, settings, start, wait_ready, Form, JsonResponse, MultipartRequest,
    Part,
};
use tch::nn::VarStore;

/// Every demo photo (5 labels × 3) in one multipart request, each label's
/// probability by image: `[image][index - 1]`.
async fn probabilities(url: &str) -> (Classified, Vec<Vec<f64>>) {
    let form = (0..15).fold(Form::new(), |form, i| form.part(format!("p{i}"), Part::bytes(photo(i % 5, i / 5))));
    let response = reqwest::Client::new().post(format!("{url}?top_k=5")).multipart(form).send().await.unwrap();
    assert_eq!(response.status(), 200);
    let answer: Classified = response.json().await.unwrap();
    let table = answer
        .results
        .iter()
        .map(|r| {
            let by_index: HashMap<i64, f64> = r.predictions.iter().map(|p| (p.index, p.probability)).collect();
            assert_eq!(by_index.len(), 5, "every label: {:?}", r.predictions);
            (1..=5).map(|i| by_index[&i]).collect()
        })
        .collect();
    (answer, table)
}

/// Weights that keep the activations' scale through the layers (He's
/// normal: std √(2 / fan-in); the logits' √(1 / fan-in)), so that the
/// logits differ by whole units as a trained network's do. The truncated
/// normal of a fresh network (std 0.1) shrinks them layer after layer to
/// about 1e-7: every label then gets 1/6, in any precision.
fn lively(vs: &VarStore) {
    tch::no_grad(|| {
        for (name, mut v) in vs.variables() {
            let size = v.size();
            if !name.ends_with("weight") || size.len() < 2 {
                continue;
            }
            let fan_in: i64 = size[1..].iter().product();
            let gain = if size.len() == 4 { 2.0 } else { 1.0 };
            v.copy_(&(v.randn_like() * (gain / fan_in as f64).sqrt()));
        }
    });
}

/// The index (0-based) of the largest value.
fn argmax(row: &[f64]) -> usize {
    (0..row.len()).fold(0, |best, i| if row[i] > row[best] { i } else { best })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bf16_serving_agrees_with_fp32_where_its_lead_is_clear() {
    let endpoint = support::metrics_endpoint().await;
    let dir = tempfile::tempdir().unwrap();
    let full_settings = settings(dir.path());
    let mut low_settings = settings(dir.path());
    low_settings.serve.precision = PrecisionSetting::Bf16;
    let full = start(&full_settings).await;
    let low = start(&low_settings).await;
    assert_eq!(full.server.as_ref().unwrap().precision(), Precision::Fp32);
    assert_eq!(low.server.as_ref().unwrap().precision(), Precision::Bf16, "bf16 even without bf16 instructions");
    // The only test here that draws weights: seeded, the same every run.
    tch::manual_seed(0);
    put_checkpoint_with(&full.store, 10, lively).await;
    promote(&full.store, 10).await;
    wait_ready(&full).await;
    wait_ready(&low).await;

    let (full_answer, p) = probabilities(&full.url("/v1/classify")).await;
    let (low_answer, q) = probabilities(&low.url("/v1/classify")).await;
    assert_eq!((full_answer.step, low_answer.step), (10, 10));

    // Log-probabilities are the logits less one constant per image, so a
    // difference of two of them is the difference of the two logits.
    let log = |t: &[Vec<f64>]| -> Vec<Vec<f64>> { t.iter().map(|r| r.iter().map(|p| p.ln()).collect()).collect() };
    let (lp, lq) = (log(&p), log(&q));
    // The most bf16 moved the difference of any two logits of any image, and
    // the largest spread of fp32's logits of an image.
    let mut moved = 0.0f64;
    let mut spread = 0.0f64;
    for (a, b) in lp.iter().zip(&lq) {
        let shift: Vec<f64> = a.iter().zip(b).map(|(x, y)| y - x).collect();
        let range = |v: &[f64]| v.iter().cloned().fold(f64::MIN, f64::max) - v.iter().cloned().fold(f64::MAX, f64::min);
        moved = moved.max(range(&shift));
        spread = spread.max(range(a));
    }
    eprintln!("bf16 moved logit differences by at most {moved}; fp32's largest spread {spread}");
    assert!(moved > 0.0, "bf16 was used: the answers differ from fp32's");
    // As services/model/tests/precision.rs: bf16 keeps 8 bits of mantissa,
    // ~0.4 % per operation, a few percent over the network's layers.
    assert!(moved < 0.1 * spread, "bf16 moved logit differences by {moved} (fp32's spread {spread})");
    // The top label agrees wherever fp32's lead over the runner-up exceeds
    // what bf16 moved a difference of two logits (a random network's logits
    // are close, so not every image has such a lead).
    let mut compared = 0;
    for (image, (a, b)) in lp.iter().zip(&lq).enumerate() {
        let top = argmax(a);
        let runner_up = (0..a.len()).filter(|&i| i != top).map(|i| a[i]).fold(f64::MIN, f64::max);
        let lead = a[top] - runner_up;
        if lead > moved {
            assert_eq!(argmax(b), top, "image {image}: fp32's lead {lead}, bf16 moved up to {moved}");
            compared += 1;
        }
    }
    eprintln!("{compared} of {} images compared", lp.len());
    assert!(compared > 0, "no image's lead exceeds bf16's rounding ({moved}): nothing compared");

    // The softmax ran in fp32: bf16 holds 8 significant bits, an f32 24; a
    // probability with any of the 16 lower bits of an f32 set is no bf16.
    let not_bf16 = q.iter().flatten().filter(|&&x| (x as f32).to_bits() & 0xffff != 0).count();
    assert!(not_bf16 > q.len(), "probabilities look rounded to bf16: {q:?}");
    let sums: Vec<f64> = q.iter().map(|r| r.iter().sum()).collect();
    assert!(sums.iter().all(|&s| s > 0.0 && s < 1.0 + 1e-6), "the background takes the rest: {sums:?}");

    // /metrics says which arithmetic each server runs.
    let text = scrape(endpoint).await;
    for precision in ["fp32", "bf16"] {
        let line = text.lines().find(|l| {
            l.starts_with("inception_serve_info{")
                && l.contains(&format!("precision=\"{precision}\""))
                && l.contains("device=\"cpu\"")
        });
        assert!(line.is_some_and(|l| l.ends_with(" 1")), "no inception_serve_info for {precision}:\n{text}");
    }
    assert!(text.contains("# HELP inception_serve_info "), "{text}");
    full.stop().await;
    low.stop().await;
}

#[tokio::test]
async fn fp16_on_the_cpu_is_refused_at_start_naming_the_key() {
    let dir = tempfile::tempdir().unwrap();
    let mut s = settings(dir.path());
    s.serve.device = DeviceSetting::Cpu;
    s.serve.precision = PrecisionSetting::Fp16;
    let store = inception_core::Store::open(&s.store).unwrap();
    let refused = inception_serve::Server::start(
        &s,
        store,
        inception_core::telemetry::Readiness::default(),
        inception_core::shutdown::CancellationToken::new(),
    )
    .await;
    let Err(e) = refused else { panic!("fp16 on the CPU was accepted") };
    let message = e.to_string();
    assert!(message.contains("serve.precision = \"fp16\" needs a CUDA device"), "{message}");
    assert!(
        inception_core::bootstrap::is_configuration_error(&e.into_anyhow()),
        "a configuration error (exit status 2): {message}"
    );
}

/// The binary: fp16 on the CPU exits 2 before it serves, naming the key.
#[test]
fn the_binary_exits_2_for_fp16_on_the_cpu() {
    let dir = tempfile::tempdir().unwrap();
    let mut command = std::process::Command::new(env!("CARGO_BIN_EXE_inception-serve"));
    // Only these settings: none of the environment's.
    for (name, _) in std::env::vars_os() {
        if name.to_string_lossy().to_ascii_uppercase().starts_with("INCEPTION") {
            command.env_remove(&name);
        }
    }
    let store = format!("store.url=file://{}", dir.path().join("store").display());
    for set in [
        "serve.precision=fp16",
        "serve.device=cpu",
        "serve.listen_addr=127.0.0.1:0",
        "serve.metrics_addr=127.0.0.1:0",
        "nats.url=nats://127.0.0.1:1",
        &store,
    ] {
        command.args(["--set", set]);
    }
    let mut child = command.stderr(std::process::Stdio::piped()).stdout(std::process::Stdio::null()).spawn().unwrap();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    while child.try_wait().unwrap().is_none() {
        if std::time::Instant::now() > deadline {
            let _ = child.kill();
            panic!("inception-serve kept running with serve.precision = fp16 on the CPU");
        }
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    let out = child.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(stderr.contains("serve.precision = \"fp16\" needs a CUDA device"), "{stderr}");
}
