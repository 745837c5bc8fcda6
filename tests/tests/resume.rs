//! A trainer killed with SIGKILL resumes from its latest complete checkpoint;
//! the evaluator watching that run skips broken checkpoints (of another
//! model shape, or with unreadable weights) once each and keeps serving.

use inception_core::local_nats::LocalNats;
use inception_core::settings::env_vars;
use inception_integration_tests::{
    free_port, http_get, logged_steps, pointer_step, scraped_value, wait_for_file, Proc,
};
use std::path::Path;
use std::time::{Duration, Instant};

#[test]
fn killed_trainer_resumes_from_the_latest_complete_checkpoint() {
    let dir = tempfile::tempdir().unwrap();
    let (images, store, logs) = (dir.path().join("images"), dir.path().join("store"), dir.path().join("logs"));
    std::fs::create_dir_all(logs.join("second")).unwrap();
    inception_demo_data::generate(&images, 12, 2, 3).unwrap();
    let nats = LocalNats::start(&dir.path().join("nats")).unwrap();
    let env: Vec<(String, String)> = env_vars([
        ("NATS__URL", nats.url()),
        ("STORE__URL", format!("file://{}", store.display())),
        ("MODEL__IMAGE_SIZE", "75".into()),
        ("MODEL__DEPTH_MULTIPLIER", "0.1".into()),
        ("MODEL__MIN_DEPTH", "8".into()),
        ("PIPELINE__BATCH_SIZE", "8".into()),
        ("TRAIN__MAX_STEPS", "60".into()),
        ("TRAIN__CHECKPOINT_EVERY_STEPS", "10".into()),
        ("TRAIN__KEEP_CHECKPOINTS", "2".into()),
        ("TRAIN__LOG_EVERY_STEPS", "1".into()),
        ("INGEST__METRICS_ADDR", "127.0.0.1:0".into()),
        ("PREPROCESS__METRICS_ADDR", "127.0.0.1:0".into()),
        ("TRAIN__METRICS_ADDR", "127.0.0.1:0".into()),
    ]);
    let (train_dir, validation_dir) = (images.join("train"), images.join("validation"));
    let mut ingest = Proc::spawn(
        "inception-ingest",
        &["--train-directory", train_dir.to_str().unwrap(), "--validation-directory", validation_dir.to_str().unwrap()],
        &env,
        &logs,
    );
    assert!(ingest.wait(Duration::from_secs(60)).success(), "{:?}", ingest.output());
    let _worker = Proc::spawn("inception-preprocess", &[], &env, &logs);

    let mut first = Proc::spawn("inception-trainer", &[], &env, &logs);
    let deadline = Instant::now() + Duration::from_secs(300);
    while pointer_step(&store).unwrap_or(0) < 20 {
        assert!(Instant::now() < deadline && first.is_running(), "no checkpoint at step 20: {:?}", first.output());
        std::thread::sleep(Duration::from_millis(50));
    }
    first.kill(); // SIGKILL: no chance to save
    let saved = pointer_step(&store).unwrap();
    let (first_out, _) = first.output();
    let reached = *logged_steps(&first_out).last().unwrap();
    assert!(reached >= saved && saved >= 20 && saved.is_multiple_of(10), "saved {saved}, reached {reached}");

    let mut second = Proc::spawn("inception-trainer", &[], &env, &logs.join("second"));
    assert!(second.wait(Duration::from_secs(300)).success(), "{:?}", second.output());
    let (out, err) = second.output();
    assert!(
        err.contains(&format!("resumed from checkpoints/default/model.ckpt-{saved}.json at step {saved}")),
        "{err}"
    );
    let steps = logged_steps(&out);
    assert_eq!(steps.first(), Some(&(saved + 1)), "continues right after the checkpoint: {steps:?}");
    assert!(steps.windows(2).all(|w| w[1] == w[0] + 1), "never goes backwards: {steps:?}");
    assert_eq!(steps.last(), Some(&60));
    assert_eq!(pointer_step(&store), Some(60));

    // Only the last two checkpoints are kept, each complete.
    let pointer: serde_json::Value =
        serde_json::from_slice(&std::fs::read(store.join("checkpoints/default/checkpoint")).unwrap()).unwrap();
    let kept: Vec<&str> = pointer["all"].as_array().unwrap().iter().map(|v| v.as_str().unwrap()).collect();
    assert_eq!(kept, vec!["checkpoints/default/model.ckpt-50.json", "checkpoints/default/model.ckpt-60.json"]);
    for k in &kept {
        wait_for_file(&store.join(k), Duration::from_secs(1), String::new);
        wait_for_file(&store.join(k.replace(".json", ".safetensors")), Duration::from_secs(1), String::new);
    }
    assert!(!store.join("checkpoints/default/model.ckpt-10.safetensors").exists());

    evaluator_skips_broken_checkpoints_and_keeps_serving(&store, &env, &logs);

    // A new run fine-tuned from that checkpoint (a store key): weights only,
    // the logits layers fresh, the step from 0.
    std::fs::create_dir_all(logs.join("tuned")).unwrap();
    let mut tuned = Proc::spawn(
        "inception-trainer",
        &[
            "--run",
            "tuned",
            "--max-steps",
            "3",
            "--fine-tune",
            "--pretrained-checkpoint",
            "checkpoints/default/model.ckpt-60.safetensors",
        ],
        &env,
        &logs.join("tuned"),
    );
    assert!(tuned.wait(Duration::from_secs(120)).success(), "{:?}", tuned.output());
    let (out, err) = tuned.output();
    assert!(err.contains("variables from checkpoints/default/model.ckpt-60.safetensors"), "{err}");
    assert!(err.contains("freshly initialised: AuxLogits.fc.bias, AuxLogits.fc.weight, fc.bias, fc.weight"), "{err}");
    // Our own checkpoint: its moving averages (what its evaluation scored), and
    // its averages and optimizer slots are not reported as ignored.
    assert!(err.contains("loaded the moving averages of"), "{err}");
    assert!(!err.contains("were ignored"), "{err}");
    assert_eq!(logged_steps(&out), vec![1, 2, 3]);
    assert!(store.join("checkpoints/tuned/model.ckpt-3.json").is_file());
}

/// Points the run's `checkpoint` pointer at `metadata` (what a trainer does last).
fn point_at(store: &Path, step: u64, metadata: &str) {
    let pointer = serde_json::json!({ "step": step, "metadata": metadata, "all": [metadata] });
    std::fs::write(store.join("checkpoints/default/checkpoint"), serde_json::to_vec(&pointer).unwrap()).unwrap();
}

fn evaluator_skips_broken_checkpoints_and_keeps_serving(store: &Path, env: &[(String, String)], logs: &Path) {
    let port = free_port();
    let mut env = env.to_vec();
    env.extend(env_vars([
        ("EVAL__EVAL_INTERVAL", "1s".to_string()),
        ("EVAL__METRICS_ADDR", format!("127.0.0.1:{port}")),
    ]));
    std::fs::create_dir_all(logs.join("eval")).unwrap();
    let mut evaluator = Proc::spawn("inception-evaluator", &[], &env, &logs.join("eval"));
    let ckpt = store.join("checkpoints/default");
    wait_for_file(&store.join("eval/default/step-60.json"), Duration::from_secs(120), || {
        format!("{:?}", evaluator.output())
    });

    // Step 70: a checkpoint of another model shape (wider layers than its weights).
    let mut meta: serde_json::Value =
        serde_json::from_slice(&std::fs::read(ckpt.join("model.ckpt-60.json")).unwrap()).unwrap();
    meta["step"] = 70.into();
    meta["model"]["depth_multiplier"] = 0.3.into();
    std::fs::write(ckpt.join("model.ckpt-70.json"), serde_json::to_vec(&meta).unwrap()).unwrap();
    point_at(store, 70, "checkpoints/default/model.ckpt-70.json");
    let deadline = Instant::now() + Duration::from_secs(60);
    while scraped_value(port, "inception_eval_failures_total").unwrap_or(0.0) < 1.0 {
        assert!(Instant::now() < deadline && evaluator.is_running(), "step 70 not rejected: {:?}", evaluator.output());
        std::thread::sleep(Duration::from_millis(200));
    }
    // Step 80: weights that are not a safetensors file.
    meta["step"] = 80.into();
    meta["model"]["depth_multiplier"] = 0.1.into();
    meta["weights"] = "checkpoints/default/model.ckpt-80.safetensors".into();
    std::fs::write(ckpt.join("model.ckpt-80.safetensors"), b"not a tensor file").unwrap();
    std::fs::write(ckpt.join("model.ckpt-80.json"), serde_json::to_vec(&meta).unwrap()).unwrap();
    point_at(store, 80, "checkpoints/default/model.ckpt-80.json");
    let deadline = Instant::now() + Duration::from_secs(60);
    while scraped_value(port, "inception_eval_failures_total").unwrap_or(0.0) < 2.0 {
        assert!(Instant::now() < deadline && evaluator.is_running(), "step 80 not rejected: {:?}", evaluator.output());
        std::thread::sleep(Duration::from_millis(200));
    }
    // Several more polls of the same broken pointer: not retried.
    std::thread::sleep(Duration::from_secs(4));
    assert_eq!(scraped_value(port, "inception_eval_failures_total").unwrap_or(0.0), 2.0);
    // Steps 50 and 60: the evaluator catches up with every kept checkpoint.
    assert_eq!(scraped_value(port, "inception_eval_evaluations_total").unwrap_or(0.0), 2.0);
    assert!(evaluator.is_running(), "{:?}", evaluator.output());
    assert!(http_get(port, "/healthz").unwrap().0.contains("200"));
    let (_, err) = evaluator.output();
    let skipped: Vec<&str> = err.lines().filter(|l| l.contains("evaluation skipped")).collect();
    assert_eq!(skipped.len(), 2, "{err}");
    assert!(skipped[0].contains("checkpoints/default/model.ckpt-70.json"), "{}", skipped[0]);
    assert!(skipped[1].contains("checkpoints/default/model.ckpt-80.safetensors"), "{}", skipped[1]);
    assert!(!store.join("eval/default/step-70.json").exists() && !store.join("eval/default/step-80.json").exists());

    // A good checkpoint afterwards is still evaluated.
    meta["step"] = 90.into();
    meta["weights"] = "checkpoints/default/model.ckpt-60.safetensors".into();
    std::fs::write(ckpt.join("model.ckpt-90.json"), serde_json::to_vec(&meta).unwrap()).unwrap();
    point_at(store, 90, "checkpoints/default/model.ckpt-90.json");
    wait_for_file(&store.join("eval/default/step-90.json"), Duration::from_secs(60), || {
        format!("{:?}", evaluator.output())
    });
    assert!(evaluator.terminate(Duration::from_secs(30)).success(), "{:?}", evaluator.output());
}
