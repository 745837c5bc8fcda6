//! `inception report RUN`: a fake run written into a file store (the
//! records a trainer, an evaluator and ingest leave, made with their own
//! types; no training), the page the real binary makes of it, and that page
//! opened in headless Chromium: the screenshot shows the charts and the
//! browser logs no console message. A label named like a script stays text.

mod support;

use inception_core::{keys, Settings, Store};
use inception_evaluator::scores::Tally;
use inception_evaluator::Evaluation;
use inception_ingest::{Outcome, RunReport, Skipped, SplitReport};
use inception_model::checkpoint::{self, BestPointer, CheckpointMeta, CheckpointPointer};
use inception_model::ModelConfig;
use inception_trainer::history::{to_json_lines, SettingsRecord, StepRecord};
use std::path::{Path, PathBuf};
use std::process::Command;
use support::{inception, run, store_setting, write};

const RUN: &str = "default";
const DATASET: &str = "flowers";
/// A user's folder names become labels: one of them is markup.
const LABELS: [&str; 3] = ["daisy", "<script>alert(1)</script>", "tulips & \"roses\""];
const SKIPPED_FILE: &str = "daisy/<img src=x onerror=alert(2)>.jpg";
/// The first logged step's time.
const T0: f64 = 1_750_000_000.0;

fn json(path: &Path, value: &impl serde::Serialize) {
    write(path, &serde_json::to_vec_pretty(value).unwrap());
}

/// An evaluation at `step` whose scores come from a real tally of
/// `right` out of 4 examples per label right (the rest predicted as the next label).
fn evaluation(step: u64, right: usize) -> Evaluation {
    let names: Vec<String> = LABELS.iter().map(|l| l.to_string()).collect();
    let classes = names.len() + 1;
    let mut tally = Tally::new(classes);
    for label in 1..classes {
        for i in 0..4 {
            let predicted = if i < right { label } else { label % (classes - 1) + 1 };
            let mut logits = vec![0.0f32; classes];
            logits[predicted] = 3.0;
            tally.add(&logits, &[label as i64]).unwrap();
        }
    }
    Evaluation {
        run: RUN.into(),
        step,
        checkpoint: keys::checkpoint_metadata(RUN, step),
        precision_at_1: right as f64 / 4.0,
        recall_at_5: 1.0,
        examples: tally.examples(),
        evaluated_at_unix: T0 as i64 + step as i64 * 10 + 5,
        weights: keys::checkpoint_weights(RUN, step),
        validation_loss: tally.validation_loss(),
        classes: tally.class_scores(&names),
        confusion: tally.confusion(&names),
    }
}

/// What a run of 30 steps leaves in the store at `dir`: log lines in two
/// objects (written after the checkpoints of steps 20 and 30), the
/// settings, the checkpoint metadata and pointers, and, with `evaluated`,
/// three evaluations; the dataset's labels and ingest report.
fn fake_run(dir: &Path, evaluated: bool) {
    let steps: Vec<StepRecord> = (1..=30u64)
        .filter(|s| *s == 1 || s % 2 == 0)
        .map(|step| StepRecord {
            step,
            unix_seconds: T0 + step as f64 * 10.0,
            loss: 4.0 * (-(step as f64) / 15.0).exp() + 0.5,
            learning_rate: if step <= 10 { 0.01 * step as f64 / 10.0 } else { 0.01 * 0.9f64.powi(step as i32 - 10) },
            examples_per_sec: 64.0,
        })
        .collect();
    let (first, second): (Vec<_>, Vec<_>) = steps.into_iter().partition(|s| s.step <= 20);
    write(&dir.join(keys::train_log(RUN, 20)), &to_json_lines(&first));
    write(&dir.join(keys::train_log(RUN, 30)), &to_json_lines(&second));

    let settings = Settings::load(None, &[("train.max_steps".into(), "30".into())]).unwrap();
    json(&dir.join(keys::train_settings(RUN)), &SettingsRecord::of(&settings));

    let names: Vec<String> = LABELS.iter().map(|l| l.to_string()).collect();
    let mut all = Vec::new();
    for step in [20u64, 30] {
        let meta = CheckpointMeta {
            format_version: checkpoint::FORMAT_VERSION,
            run: RUN.into(),
            step,
            labels: names.clone(),
            model: ModelConfig::tiny(names.len() as i64 + 1),
            bn_updates: step,
            examples_seen: step * 32,
            weights: keys::checkpoint_weights(RUN, step),
            created_unix: T0 as i64 + step as i64 * 10,
            lineage: Default::default(),
        };
        json(&dir.join(keys::checkpoint_metadata(RUN, step)), &meta);
        all.push(keys::checkpoint_metadata(RUN, step));
    }
    let pointer = CheckpointPointer { step: 30, metadata: keys::checkpoint_metadata(RUN, 30), all };
    json(&dir.join(keys::checkpoint_pointer(RUN)), &pointer);

    if evaluated {
        for (step, right) in [(10u64, 1usize), (20, 3), (30, 2)] {
            json(&dir.join(keys::eval_result(RUN, step)), &evaluation(step, right));
        }
        let best = BestPointer {
            step: 20,
            metadata: keys::checkpoint_metadata(RUN, 20),
            weights: keys::checkpoint_weights(RUN, 20),
            precision_at_1: 0.75,
            validation_loss: 0.5,
        };
        json(&dir.join(keys::checkpoint_best(RUN)), &best);
    }

    write(&dir.join(keys::labels(DATASET)), (names.join("\n") + "\n").as_bytes());
    let split = |name: &str, written: usize, skipped: Vec<Skipped>| SplitReport {
        split: name.into(),
        found: written + skipped.len(),
        written,
        skipped,
        shards: vec![keys::shard(DATASET, name, 0, 1)],
    };
    let skipped =
        Skipped { file: SKIPPED_FILE.into(), result: Outcome::SkippedCorrupt, reason: "truncated JPEG".into() };
    let report =
        RunReport::new(DATASET, &names, vec![split("validation", 12, vec![]), split("train", 40, vec![skipped])]);
    write(&dir.join(keys::ingest_report(DATASET)), &report.to_json());
}

/// `inception report` with the store at `store`; returns the run.
fn report(store: &Path, args: &[&str]) -> support::Run {
    let mut command = inception(["report"]);
    command.args(args).args(["--set", &store_setting(store)]);
    run(command)
}

/// The tags of `page`: name and attribute names, lower case.
fn tags(page: &str) -> Vec<(String, Vec<String>)> {
    let mut found = Vec::new();
    let mut rest = page;
    while let Some(at) = rest.find('<') {
        rest = &rest[at + 1..];
        if !rest.starts_with(|c: char| c.is_ascii_alphabetic()) {
            continue;
        }
        let inside = &rest[..rest.find('>').unwrap_or(rest.len())];
        let mut words = inside.split(|c: char| c.is_whitespace() || c == '/');
        let name = words.next().unwrap_or_default().to_lowercase();
        let attributes =
            words.filter_map(|w| w.split('=').next()).filter(|a| !a.is_empty()).map(str::to_lowercase).collect();
        found.push((name, attributes));
    }
    found
}

/// The text of the page, checked for what every page must be: one
/// document, every text from the store escaped, nothing fetched or run.
fn checked_page(path: &Path) -> String {
    let page = std::fs::read_to_string(path).unwrap();
    assert!(page.to_lowercase().starts_with("<!doctype html>"), "{}", &page[..100.min(page.len())]);
    assert!(!page.contains("<script>alert(1)") && !page.contains("<img src=x"), "markup from the store, unescaped");
    for (name, attributes) in tags(&page) {
        assert!(
            !["script", "img", "iframe", "object", "embed", "link", "image", "use", "a", "foreignobject"]
                .contains(&name.as_str()),
            "a <{name}> element in the page"
        );
        for a in attributes {
            assert!(!a.starts_with("on"), "an event handler {a} on <{name}>");
            assert!(
                !["src", "href", "xlink:href", "action"].contains(&a.as_str()),
                "<{name} {a}=…>: outside resources"
            );
        }
    }
    // The SVG namespace is the one URL a page of inline SVG names.
    let stripped = page.replace("xmlns=\"http://www.w3.org/2000/svg\"", "");
    for outside in ["http://", "https://", "@import", "url("] {
        assert!(!stripped.contains(outside), "the page refers to something outside it ({outside})");
    }
    page
}

#[test]
fn the_page_has_the_charts_the_latest_evaluation_the_dataset_and_the_settings() {
    let store = tempfile::tempdir().unwrap();
    fake_run(store.path(), true);
    let out = tempfile::tempdir().unwrap();
    let file = out.path().join("nested/run.html");
    let done = report(store.path(), &[RUN, "--output", file.to_str().unwrap()]);
    assert_eq!(done.code(), Some(0), "{}", done.stderr);
    assert_eq!(done.stdout.trim(), file.display().to_string(), "prints the page's path");
    let page = checked_page(&file);

    assert_eq!(page.matches("<svg").count(), 6, "loss, learning rate and precision@1 against step and time");
    for caption in [
        "Loss against step",
        "Loss against time",
        "Learning rate against step",
        "Learning rate against time",
        "Precision@1 against step",
        "Precision@1 against time",
    ] {
        assert!(page.contains(caption), "no chart {caption:?}");
    }
    assert!(page.contains("polyline"), "the charts have lines");
    assert!(!page.contains("Nothing to draw yet"));
    // The latest evaluation (step 30: 2 of 4 right per label), its table and matrix.
    assert!(page.contains("Checkpoint at step 30"), "the latest evaluation is the one shown");
    assert!(page.contains("precision@1 <b>0.5000</b>"));
    assert!(page.contains("&lt;script&gt;alert(1)&lt;/script&gt;"), "the label is shown, escaped");
    assert!(page.contains("tulips &amp; &quot;roses&quot;"));
    assert!(
        page.contains("<td class=\"l\">daisy</td><td>1</td><td>4</td><td>4</td><td>2</td><td>0.5000</td>"),
        "daisy's row"
    );
    assert!(page.contains("class=\"matrix\""), "the confusion matrix");
    assert!(page.matches("<tr><td>").count() >= 3, "every evaluation listed");
    assert!(page.contains("<td>20</td><td>0.7500</td>") && page.contains(">best<"), "the best one marked");
    // The dataset: splits, outcomes and the skipped file, escaped.
    assert!(page.contains("Dataset flowers") && page.contains("3 labels"));
    assert!(page.contains("<td class=\"l\">train</td><td>41</td><td>40</td><td>1</td><td>1</td>"), "the train split");
    assert!(page.contains("skipped_corrupt") && page.contains("&lt;img src=x onerror=alert(2)&gt;.jpg"));
    // The model and the settings.
    assert!(page.contains("Latest checkpoint: step 30") && page.contains("960 examples seen"));
    assert!(page.contains("max_steps: 30"), "the trainer's settings");
    assert!(page.contains("[train]") && page.contains("[model]"));
    assert!(!page.contains("Objects that could not be read"));
}

#[test]
fn a_run_not_evaluated_yet_says_so_and_still_draws_its_training() {
    let store = tempfile::tempdir().unwrap();
    fake_run(store.path(), false);
    // An unreadable evaluation is named on the page, not fatal.
    write(&store.path().join(keys::eval_result(RUN, 40)), b"{ not json");
    let out = tempfile::tempdir().unwrap();
    let file = out.path().join("r.html");
    let settings = Settings::load(None, &[("store.url".into(), format!("file://{}", store.path().display()))]).unwrap();
    let store_handle = Store::open(&settings.store).unwrap();
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    let written = runtime.block_on(inception_cli::report::write_report(&store_handle, RUN, DATASET, &file)).unwrap();
    assert_eq!(written, file);
    let page = checked_page(&file);
    assert!(page.contains("This run has not been evaluated yet"), "says there is no evaluation");
    assert!(page.contains("No evaluation of this run yet"));
    assert_eq!(page.matches("<svg").count(), 4, "loss and learning rate drawn; precision@1 has nothing yet");
    assert_eq!(page.matches("Nothing to draw yet").count(), 2);
    assert!(page.contains("Objects that could not be read") && page.contains("step-40.json"));
}

#[test]
fn an_unknown_run_is_an_error_that_names_it_and_writes_nothing() {
    let store = tempfile::tempdir().unwrap();
    fake_run(store.path(), true);
    let out = tempfile::tempdir().unwrap();
    let file = out.path().join("r.html");
    let done = report(store.path(), &["no-such-run", "--output", file.to_str().unwrap()]);
    assert_eq!(done.code(), Some(1), "{}", done.stderr);
    assert!(done.stderr.contains("nothing of a run named \"no-such-run\""), "{}", done.stderr);
    assert!(!file.exists());
}

/// Debian's chromium, which scripts/setup.sh installs.
fn chromium() -> PathBuf {
    let name = std::env::var("INCEPTION_CHROMIUM").unwrap_or_else(|_| "chromium".into());
    let found = std::env::var_os("PATH")
        .iter()
        .flat_map(std::env::split_paths)
        .map(|dir| dir.join(&name))
        .chain([PathBuf::from(&name)])
        .find(|p| p.is_absolute() && p.is_file());
    found.unwrap_or_else(|| {
        panic!(
            "{name} is not installed: the report's browser test needs headless Chromium; run scripts/setup.sh \
             (it installs Debian's chromium), or point INCEPTION_CHROMIUM at one"
        )
    })
}

/// Pixels of `image` within 40 (each channel) of `rgb`.
fn pixels_near(image: &image::RgbaImage, rgb: (u8, u8, u8)) -> usize {
    let near = |a: u8, b: u8| a.abs_diff(b) <= 40;
    image.pixels().filter(|p| near(p[0], rgb.0) && near(p[1], rgb.1) && near(p[2], rgb.2)).count()
}

#[test]
fn chromium_shows_the_charts_and_logs_no_console_message() {
    let browser = chromium();
    let store = tempfile::tempdir().unwrap();
    fake_run(store.path(), true);
    let out = tempfile::tempdir().unwrap();
    let file = out.path().join("report.html");
    let done = report(store.path(), &[RUN, "--output", file.to_str().unwrap()]);
    assert_eq!(done.code(), Some(0), "{}", done.stderr);

    let shot = out.path().join("shot.png");
    let profile = out.path().join("profile");
    let mut command = Command::new(&browser);
    command.args([
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--no-first-run",
        "--hide-scrollbars",
        "--enable-logging=stderr",
        "--v=0",
        "--window-size=1200,2000",
    ]);
    command.arg(format!("--user-data-dir={}", profile.display()));
    command.arg(format!("--screenshot={}", shot.display()));
    command.arg(format!("file://{}", file.display()));
    let browsed = run(command);
    assert_eq!(browsed.code(), Some(0), "{browser:?} failed: {}", browsed.stderr);
    // Every console message (an error, a refused script or resource)
    // is logged as `…:CONSOLE:<line>] "<message>", source: …`.
    let console: Vec<&str> = browsed.stderr.lines().filter(|l| l.contains(":CONSOLE")).collect();
    assert!(console.is_empty(), "the page logged console messages:\n{}", console.join("\n"));

    let image = image::open(&shot).unwrap_or_else(|e| panic!("screenshot {}: {e}", shot.display())).to_rgba8();
    assert_eq!(image.dimensions().0, 1200, "the window's width");
    let not_white = image.pixels().filter(|p| p[0] < 240 || p[1] < 240 || p[2] < 240).count();
    assert!(not_white > 20_000, "the screenshot is almost blank: {not_white} pixels not white");
    let mut colours: Vec<[u8; 4]> = image.pixels().map(|p| p.0).collect();
    colours.sort_unstable();
    colours.dedup();
    assert!(colours.len() > 50, "only {} colours in the screenshot", colours.len());
    // The lines of the charts: loss and precision@1 in blue, the learning
    // rate in green, the evaluations' points in orange.
    let blue = pixels_near(&image, (31, 119, 180));
    let green = pixels_near(&image, (44, 160, 44));
    let orange = pixels_near(&image, (255, 127, 14));
    assert!(blue > 1_000 && green > 500 && orange > 100, "chart lines: blue {blue}, green {green}, orange {orange}");
}
