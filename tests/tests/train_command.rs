//! `inception train DIR` as a user runs it: one folder of `<label>/<image>`
//! to a trained model and the command that classifies with it; a second
//! run keeps the first one's model; mistakes refused at once.

use inception_integration_tests::Proc;
use std::path::Path;
use std::time::Duration;

/// A tiny model for a few steps: the command's plumbing, not learning.
const TINY: [&str; 8] = ["--steps", "12", "--image-size", "75", "--depth-multiplier", "0.1", "--batch-size", "8"];

fn train(images: &Path, work: &Path, extra: &[&str], logs: &Path, limit: Duration) -> (bool, String, String) {
    let mut args = vec!["train", images.to_str().unwrap(), "--work", work.to_str().unwrap()];
    args.extend(extra);
    let mut p = Proc::spawn("inception", &args, &[], logs);
    let status = p.wait(limit);
    let (out, err) = p.output();
    (status.success(), out, err)
}

/// One folder of classes, no train/ or validation/: the generated images of both splits together.
fn pool(dir: &Path) -> std::path::PathBuf {
    let generated = dir.join("generated");
    inception_demo_data::generate(&generated, 6, 2, 7).unwrap();
    let pool = dir.join("photos");
    for split in ["train", "validation"] {
        for class in std::fs::read_dir(generated.join(split)).unwrap() {
            let class = class.unwrap();
            let to = pool.join(class.file_name());
            std::fs::create_dir_all(&to).unwrap();
            for image in std::fs::read_dir(class.path()).unwrap() {
                let image = image.unwrap();
                std::fs::copy(image.path(), to.join(format!("{split}-{}", image.file_name().to_string_lossy())))
                    .unwrap();
            }
        }
    }
    std::fs::write(pool.join("notes.txt"), b"not a class").unwrap();
    pool
}

#[test]
fn one_folder_of_classes_trains_prints_a_working_classify_command_and_keeps_every_run() {
    let dir = tempfile::tempdir().unwrap();
    let (photos, work) = (pool(dir.path()), dir.path().join("work"));
    let limit = Duration::from_secs(400);
    let (ok, out, err) = train(&photos, &work, &TINY, dir.path(), limit);
    assert!(ok, "stdout:\n{out}\nstderr:\n{err}");
    // The summary first: the split, per class counts, the skipped file.
    let summary = out.find("dataset:").expect("a dataset summary");
    assert!(summary < out.find("step ").unwrap_or(usize::MAX), "{out}");
    assert!(out.contains("10 % of each class held out"), "{out}");
    assert!(out.lines().any(|l| l.trim_start().starts_with("roses")), "per class counts:\n{out}");
    assert!(out.contains("notes.txt: not in a label folder"), "{out}");
    assert!(out.contains("new run run-1"), "{out}");
    assert!(work.join("runs/run-1/report.html").is_file(), "{out}\n{err}");
    // The command it printed works as printed.
    let lines: Vec<&str> = out.lines().collect();
    let at = lines.iter().position(|l| l.starts_with("for example")).expect("an example command");
    let command = lines[at + 1].trim();
    assert!(command.contains("--run run-1") && command.contains("--checkpoint best"), "{command}");
    assert!(command.contains(&format!("store.url=file://{}", work.join("store").display())), "{command}");
    let classified = std::process::Command::new("sh").arg("-c").arg(command).output().unwrap();
    let printed = String::from_utf8_lossy(&classified.stdout);
    assert!(classified.status.success(), "{command}\n{printed}\n{}", String::from_utf8_lossy(&classified.stderr));
    assert!(["daisy", "dandelion", "roses", "sunflowers", "tulips"].iter().any(|l| printed.contains(l)), "{printed}");

    // Run again: a new run, the first one's model still there.
    let first_best = std::fs::read(work.join("store/checkpoints/run-1/best")).unwrap();
    let (ok, out, err) = train(&photos, &work, &TINY, dir.path(), limit);
    assert!(ok, "stdout:\n{out}\nstderr:\n{err}");
    assert!(out.contains("new run run-2 (kept: run-1)"), "{out}");
    assert_eq!(std::fs::read(work.join("store/checkpoints/run-1/best")).unwrap(), first_best);
    assert!(work.join("store/checkpoints/run-1/model.ckpt-12.safetensors").is_file());
    assert!(work.join("store/checkpoints/run-2/best").is_file());
}

#[test]
fn zero_steps_and_a_flat_folder_are_refused_at_once() {
    let dir = tempfile::tempdir().unwrap();
    let work = dir.path().join("work");
    let flat = dir.path().join("flat");
    std::fs::create_dir_all(&flat).unwrap();
    std::fs::write(flat.join("1.jpg"), b"x").unwrap();
    let quick = Duration::from_secs(20);

    let (ok, out, err) = train(&flat, &work, &["--steps", "0"], dir.path(), quick);
    assert!(!ok && err.contains("--steps"), "stdout:\n{out}\nstderr:\n{err}");

    let (ok, out, err) = train(&flat, &work, &[], dir.path(), quick);
    assert!(!ok, "{out}");
    assert!(err.contains("no label folders") && err.contains("DIR/<label>/<image>"), "{err}");

    // The demo too: no hang waiting for an evaluation of step 0.
    let mut p = Proc::spawn("inception", &["demo", "--steps", "0", "--work", work.to_str().unwrap()], &[], dir.path());
    assert!(!p.wait(quick).success());
}
