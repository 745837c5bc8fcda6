//! The page: one HTML document with its styles and charts inline. Every
//! text that comes from the store goes through [`esc`]; the page has no
//! script, and its Content Security Policy refuses any, so that a label
//! named like markup stays text.

use super::charts::{line_chart, time_unit, Series, BLUE_LINE, GREEN_LINE, ORANGE_DOTS};
use super::RunData;
use inception_evaluator::scores::ConfusionMatrix;
use inception_evaluator::Evaluation;
use std::fmt::Write;

/// Beyond this many labels the confusion matrix is shown as its largest
/// off-diagonal cells instead of a table of every pair.
const MAX_MATRIX_LABELS: usize = 40;
/// Confusions listed for a larger matrix.
const TOP_CONFUSIONS: usize = 30;
/// Skipped files of the ingest report listed (all are counted).
const MAX_SKIPPED_LISTED: usize = 20;
/// Label names listed in the dataset section.
const MAX_LABELS_LISTED: usize = 100;

const STYLE: &str = "
body{font-family:sans-serif;margin:24px;color:#222;background:#fff;max-width:1200px}
h1{font-size:1.6em;margin-bottom:4px}h2{border-bottom:1px solid #ccc;padding-bottom:4px;margin-top:32px}
.meta{color:#666}.cards{display:flex;flex-wrap:wrap;gap:12px;margin:16px 0}
.card{border:1px solid #ddd;border-radius:6px;padding:8px 14px;min-width:150px}
.card b{display:block;font-size:1.3em}.charts{display:flex;flex-wrap:wrap;gap:16px}
figure{margin:0;border:1px solid #eee}figcaption{font-weight:bold;padding:4px 8px;background:#f7f7f7}
table{border-collapse:collapse;margin:8px 0}td,th{border:1px solid #ddd;padding:3px 8px;text-align:right}
th{background:#f3f3f3}td.l,th.l{text-align:left}.missing{color:#8a5a00;background:#fff8e6;padding:8px;border-left:4px solid #f0b400}
.problem{color:#a00}pre{background:#f7f7f7;padding:8px;overflow-x:auto;font-size:0.85em}
.matrix td{min-width:28px}
";

/// Escapes text for HTML element content and quoted attribute values.
pub(crate) fn esc(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

fn time(unix: i64) -> String {
    chrono::DateTime::from_timestamp(unix, 0)
        .map_or_else(|| format!("{unix} (Unix time)"), |t| t.format("%Y-%m-%d %H:%M:%S UTC").to_string())
}

fn num(v: f64) -> String {
    if v.is_finite() {
        format!("{v:.4}")
    } else {
        "-".to_string()
    }
}

fn ratio(v: Option<f64>) -> String {
    v.map_or_else(|| "-".to_string(), num)
}

/// The whole page.
pub fn render(data: &RunData) -> String {
    let mut page = String::new();
    let title = format!("Run {} — Inception-v3 training report", data.run);
    let _ = writeln!(
        page,
        "<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">\
         <meta http-equiv=\"Content-Security-Policy\" content=\"default-src 'none'; style-src 'unsafe-inline'\">\
         <meta name=\"viewport\" content=\"width=device-width\"><title>{}</title><style>{STYLE}</style></head><body>",
        esc(&title)
    );
    let _ = writeln!(
        page,
        "<h1>Run {}</h1><p class=\"meta\">Dataset {} · store {} · made {}</p>",
        esc(&data.run),
        esc(&data.dataset),
        esc(&data.store_url),
        time(data.generated_unix)
    );
    summary(&mut page, data);
    curves(&mut page, data);
    latest_evaluation(&mut page, data);
    evaluations(&mut page, data);
    dataset(&mut page, data);
    model_and_settings(&mut page, data);
    if !data.problems.is_empty() {
        page.push_str("<h2>Objects that could not be read</h2><ul>");
        for p in &data.problems {
            let _ = write!(page, "<li class=\"problem\">{}</li>", esc(p));
        }
        page.push_str("</ul>\n");
    }
    page.push_str("</body></html>\n");
    page
}

fn card(page: &mut String, name: &str, value: &str, note: &str) {
    let _ = write!(page, "<div class=\"card\">{}<b>{}</b>{}</div>", esc(name), esc(value), esc(note));
}

fn summary(page: &mut String, data: &RunData) {
    page.push_str("<div class=\"cards\">");
    let step = data.latest.as_ref().map(|m| m.step).or(data.pointer.as_ref().map(|p| p.step));
    let logged = data.steps.last().map(|s| s.step);
    match (step, logged) {
        (Some(s), _) => card(page, "latest checkpoint", &format!("step {s}"), ""),
        (None, Some(s)) => card(page, "latest logged step", &format!("step {s}"), ""),
        (None, None) => card(page, "latest checkpoint", "none yet", ""),
    }
    if let Some(m) = &data.latest {
        card(page, "examples seen", &m.examples_seen.to_string(), "");
    }
    if let Some(s) = data.steps.last() {
        card(page, "last logged loss", &num(s.loss), &format!(" at step {}", s.step));
    }
    match data.evaluations.last() {
        Some(e) => {
            card(page, "latest precision@1", &num(e.precision_at_1), &format!(" at step {}", e.step));
            card(page, "latest recall@5", &num(e.recall_at_5), "");
        }
        None => card(page, "precision@1", "not evaluated yet", ""),
    }
    if let Some(b) = &data.best {
        card(page, "best precision@1", &num(b.precision_at_1), &format!(" at step {}", b.step));
    }
    page.push_str("</div>\n");
}

/// The six charts: loss, learning rate and precision@1, each against step and time.
fn curves(page: &mut String, data: &RunData) {
    page.push_str("<h2>Training curves</h2>\n");
    if data.steps.is_empty() {
        let _ = writeln!(
            page,
            "<p class=\"missing\">No logged step of this run in the store yet: the trainer writes its log lines \
             ({}…) after each checkpoint (train.checkpoint_every_steps) and at its end.</p>",
            esc(&inception_core::keys::train_log_prefix(&data.run))
        );
    }
    if data.evaluations.is_empty() {
        page.push_str("<p class=\"missing\">No evaluation of this run yet: precision@1 and the validation loss are drawn once the evaluator has scored a checkpoint.</p>\n");
    }
    let start = data
        .steps
        .iter()
        .map(|s| s.unix_seconds)
        .chain(data.evaluations.iter().map(|e| e.evaluated_at_unix as f64))
        .fold(f64::INFINITY, f64::min);
    let end = data
        .steps
        .iter()
        .map(|s| s.unix_seconds)
        .chain(data.evaluations.iter().map(|e| e.evaluated_at_unix as f64))
        .fold(f64::NEG_INFINITY, f64::max);
    let (unit, unit_name) = time_unit(end - start);
    let time_label = format!("time since the first record ({unit_name})");
    let at = |unix: f64| (unix - start) / unit;

    type Axis<'a> = (
        &'a str,
        Box<dyn Fn(&inception_trainer::history::StepRecord) -> f64 + 'a>,
        Box<dyn Fn(&Evaluation) -> f64 + 'a>,
    );
    let axes: [Axis<'_>; 2] = [
        ("step", Box::new(|s| s.step as f64), Box::new(|e| e.step as f64)),
        (&time_label, Box::new(|s| at(s.unix_seconds)), Box::new(|e| at(e.evaluated_at_unix as f64))),
    ];
    page.push_str("<div class=\"charts\">\n");
    for (x_name, x_of_step, x_of_eval) in &axes {
        let loss = [
            Series {
                name: "training loss (with L2)",
                points: data.steps.iter().map(|s| (x_of_step(s), s.loss)).collect(),
                color: BLUE_LINE,
                dots: false,
            },
            Series {
                name: "validation loss",
                points: data.evaluations.iter().map(|e| (x_of_eval(e), e.validation_loss)).collect(),
                color: ORANGE_DOTS,
                dots: true,
            },
        ];
        figure(page, &format!("Loss against {}", axis_word(x_name)), line_chart(x_name, "loss", &loss));
    }
    for (x_name, x_of_step, _) in &axes {
        let lr = [Series {
            name: "learning rate",
            points: data.steps.iter().map(|s| (x_of_step(s), s.learning_rate)).collect(),
            color: GREEN_LINE,
            dots: false,
        }];
        figure(page, &format!("Learning rate against {}", axis_word(x_name)), line_chart(x_name, "learning rate", &lr));
    }
    for (x_name, _, x_of_eval) in &axes {
        let scores = [
            Series {
                name: "precision@1",
                points: data.evaluations.iter().map(|e| (x_of_eval(e), e.precision_at_1)).collect(),
                color: BLUE_LINE,
                dots: false,
            },
            Series {
                name: "recall@5",
                points: data.evaluations.iter().map(|e| (x_of_eval(e), e.recall_at_5)).collect(),
                color: ORANGE_DOTS,
                dots: false,
            },
        ];
        figure(
            page,
            &format!("Precision@1 against {}", axis_word(x_name)),
            line_chart(x_name, "fraction of examples", &scores),
        );
    }
    page.push_str("</div>\n");
}

fn axis_word(x_name: &str) -> &str {
    if x_name == "step" {
        "step"
    } else {
        "time"
    }
}

fn figure(page: &mut String, caption: &str, svg: Option<String>) {
    let body = svg.unwrap_or_else(|| {
        format!(
            "<div class=\"missing\" style=\"width:{}px;height:60px\">Nothing to draw yet.</div>",
            super::charts::WIDTH - 20
        )
    });
    let _ = writeln!(page, "<figure><figcaption>{}</figcaption>{body}</figure>", esc(caption));
}

fn latest_evaluation(page: &mut String, data: &RunData) {
    page.push_str("<h2>Latest evaluation</h2>\n");
    let Some(e) = data.evaluations.last() else {
        page.push_str("<p class=\"missing\">This run has not been evaluated yet (no eval/&lt;run&gt;/step-*.json in the store).</p>\n");
        return;
    };
    let _ = writeln!(
        page,
        "<p>Checkpoint at step {} ({}), {} validation examples, evaluated {}: precision@1 <b>{}</b>, recall@5 <b>{}</b>, validation loss <b>{}</b>.</p>",
        e.step,
        esc(&e.checkpoint),
        e.examples,
        time(e.evaluated_at_unix),
        num(e.precision_at_1),
        num(e.recall_at_5),
        num(e.validation_loss)
    );
    page.push_str("<h3>By label</h3>\n");
    if e.classes.is_empty() {
        page.push_str(
            "<p class=\"missing\">This evaluation has no per-label scores (written by an older evaluator).</p>\n",
        );
    } else {
        page.push_str("<table><tr><th class=\"l\">label</th><th>index</th><th>examples</th><th>predicted</th><th>correct</th><th>precision</th><th>recall</th></tr>\n");
        for c in &e.classes {
            let _ = writeln!(
                page,
                "<tr><td class=\"l\">{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td{}>{}</td></tr>",
                esc(&c.label),
                c.index,
                c.examples,
                c.predicted,
                c.correct,
                ratio(c.precision),
                shade(c.recall.unwrap_or(0.0), (44, 160, 44)),
                ratio(c.recall)
            );
        }
        page.push_str("</table>\n");
    }
    page.push_str("<h3>Confusion matrix</h3>\n");
    confusion(page, &e.confusion);
}

/// A cell background whose strength is `fraction` (0..1) of `rgb`.
fn shade(fraction: f64, rgb: (u8, u8, u8)) -> String {
    let a = if fraction.is_finite() { fraction.clamp(0.0, 1.0) * 0.6 } else { 0.0 };
    format!(" style=\"background:rgba({},{},{},{a:.3})\"", rgb.0, rgb.1, rgb.2)
}

/// The off-diagonal counts that are not zero, as (count, row, column), from
/// the dense matrix or, of very many labels, from its list of cells.
fn confusions(m: &ConfusionMatrix) -> Vec<(u64, usize, usize)> {
    if m.counts.is_empty() {
        let at = |index: u64| m.indices.iter().position(|&i| i as u64 == index);
        return m
            .cells
            .iter()
            .filter(|c| c[0] != c[1] && c[2] > 0)
            .filter_map(|c| Some((c[2], at(c[0])?, at(c[1])?)))
            .collect();
    }
    m.counts
        .iter()
        .enumerate()
        .flat_map(|(i, row)| row.iter().enumerate().filter(move |(j, _)| *j != i).map(move |(j, &n)| (n, i, j)))
        .filter(|c| c.0 > 0)
        .collect()
}

fn confusion(page: &mut String, m: &ConfusionMatrix) {
    let sparse = m.counts.is_empty() && !m.cells.is_empty();
    if m.labels.is_empty() || (m.counts.len() != m.labels.len() && !sparse) {
        page.push_str("<p class=\"missing\">This evaluation has no confusion matrix.</p>\n");
        return;
    }
    if m.labels.len() > MAX_MATRIX_LABELS {
        let mut cells = confusions(m);
        cells.sort_by(|a, b| b.0.cmp(&a.0).then(a.1.cmp(&b.1)).then(a.2.cmp(&b.2)));
        let _ = writeln!(
            page,
            "<p>{} labels: the {} most frequent confusions (true label, predicted as).</p>\
             <table><tr><th class=\"l\">true label</th><th class=\"l\">predicted as</th><th>examples</th></tr>",
            m.labels.len(),
            TOP_CONFUSIONS.min(cells.len())
        );
        for (n, i, j) in cells.into_iter().take(TOP_CONFUSIONS) {
            let _ = writeln!(
                page,
                "<tr><td class=\"l\">{}</td><td class=\"l\">{}</td><td>{n}</td></tr>",
                esc(&m.labels[i]),
                esc(&m.labels[j])
            );
        }
        page.push_str("</table>\n");
        return;
    }
    page.push_str("<p>Rows: true label; columns: top-1 prediction; shaded by the share of the row.</p><table class=\"matrix\"><tr><th class=\"l\">true \\ predicted</th>");
    for label in &m.labels {
        let _ = write!(page, "<th>{}</th>", esc(label));
    }
    page.push_str("</tr>\n");
    for (label, row) in m.labels.iter().zip(&m.counts) {
        let total: u64 = row.iter().sum();
        let _ = write!(page, "<tr><th class=\"l\">{}</th>", esc(label));
        for (j, &n) in row.iter().enumerate() {
            let fraction = if total > 0 { n as f64 / total as f64 } else { 0.0 };
            let on_diagonal = m.labels.get(j) == Some(label);
            let colour = if on_diagonal { (44, 160, 44) } else { (214, 39, 40) };
            let _ = write!(page, "<td{}>{n}</td>", shade(fraction, colour));
        }
        page.push_str("</tr>\n");
    }
    page.push_str("</table>\n");
}

fn evaluations(page: &mut String, data: &RunData) {
    if data.evaluations.is_empty() {
        return;
    }
    page.push_str("<h2>Every evaluation</h2>\n<table><tr><th>step</th><th>precision@1</th><th>recall@5</th><th>validation loss</th><th>examples</th><th class=\"l\">evaluated</th><th class=\"l\"></th></tr>\n");
    for e in data.evaluations.iter().rev() {
        let best = data.best.as_ref().is_some_and(|b| b.step == e.step);
        let _ = writeln!(
            page,
            "<tr><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td class=\"l\">{}</td><td class=\"l\">{}</td></tr>",
            e.step,
            num(e.precision_at_1),
            num(e.recall_at_5),
            num(e.validation_loss),
            e.examples,
            time(e.evaluated_at_unix),
            if best { "best" } else { "" }
        );
    }
    page.push_str("</table>\n");
}

fn dataset(page: &mut String, data: &RunData) {
    let _ = writeln!(page, "<h2>Dataset {}</h2>", esc(&data.dataset));
    let labels = data.labels.as_ref().or(data.ingest.as_ref().map(|r| &r.labels));
    match labels {
        Some(labels) => {
            let listed: Vec<String> = labels.iter().take(MAX_LABELS_LISTED).map(|l| esc(l)).collect();
            let more = labels.len().saturating_sub(MAX_LABELS_LISTED);
            let _ = writeln!(
                page,
                "<p>{} labels: {}{}</p>",
                labels.len(),
                listed.join(", "),
                if more > 0 { format!(" and {more} more") } else { String::new() }
            );
        }
        None => page.push_str("<p class=\"missing\">No label file of this dataset in the store.</p>\n"),
    }
    let Some(report) = &data.ingest else {
        page.push_str("<p class=\"missing\">No ingest report of this dataset in the store (one-shot ingest writes datasets/&lt;name&gt;/ingest/report.json; continuous ingest writes none).</p>\n");
        return;
    };
    page.push_str("<table><tr><th class=\"l\">split</th><th>images found</th><th>written</th><th>skipped</th><th>shards</th></tr>\n");
    for s in &report.splits {
        let _ = writeln!(
            page,
            "<tr><td class=\"l\">{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td></tr>",
            esc(&s.split),
            s.found,
            s.written,
            s.skipped.len(),
            s.shards.len()
        );
    }
    page.push_str("</table>\n");
    if !report.counts.is_empty() {
        page.push_str("<table><tr><th class=\"l\">outcome</th><th>images</th></tr>\n");
        for (outcome, n) in &report.counts {
            let name =
                serde_json::to_value(outcome).ok().and_then(|v| v.as_str().map(String::from)).unwrap_or_default();
            let _ = writeln!(page, "<tr><td class=\"l\">{}</td><td>{n}</td></tr>", esc(&name));
        }
        page.push_str("</table>\n");
    }
    let skipped: Vec<_> = report.splits.iter().flat_map(|s| s.skipped.iter().map(move |k| (&s.split, k))).collect();
    if !skipped.is_empty() {
        let _ = writeln!(
            page,
            "<p>Skipped files (the first {} of {}):</p><table><tr><th class=\"l\">split</th><th class=\"l\">file</th><th class=\"l\">reason</th></tr>",
            MAX_SKIPPED_LISTED.min(skipped.len()),
            skipped.len()
        );
        for (split, k) in skipped.into_iter().take(MAX_SKIPPED_LISTED) {
            let _ = writeln!(
                page,
                "<tr><td class=\"l\">{}</td><td class=\"l\">{}</td><td class=\"l\">{}</td></tr>",
                esc(split),
                esc(&k.file),
                esc(&k.reason)
            );
        }
        page.push_str("</table>\n");
    }
}

fn model_and_settings(page: &mut String, data: &RunData) {
    page.push_str("<h2>Model and settings</h2>\n");
    match &data.latest {
        Some(m) => {
            let _ = writeln!(
                page,
                "<p>Latest checkpoint: step {}, written {}, {} examples seen, weights {}.</p>",
                m.step,
                time(m.created_unix),
                m.examples_seen,
                esc(&m.weights)
            );
            if let Ok(serde_json::Value::Object(fields)) = serde_json::to_value(&m.model) {
                page.push_str("<table><tr><th class=\"l\">model</th><th class=\"l\">value</th></tr>\n");
                for (k, v) in fields {
                    let _ = writeln!(
                        page,
                        "<tr><td class=\"l\">{}</td><td class=\"l\">{}</td></tr>",
                        esc(&k),
                        esc(&v.to_string())
                    );
                }
                page.push_str("</table>\n");
            }
        }
        None => page.push_str("<p class=\"missing\">No checkpoint of this run in the store yet.</p>\n"),
    }
    match &data.settings {
        Some(s) => {
            let _ = writeln!(page, "<p>Settings the trainer read when it last started ({}):</p>", time(s.written_unix));
            for (section, text) in &s.sections {
                let _ = writeln!(page, "<h3>[{}]</h3><pre>{}</pre>", esc(section), esc(text));
            }
        }
        None => {
            let _ = writeln!(
                page,
                "<p class=\"missing\">The settings are not recorded: the trainer writes {} when it starts.</p>",
                esc(&inception_core::keys::train_settings(&data.run))
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn markup_in_text_is_escaped() {
        assert_eq!(
            esc("<script>alert('1')</script> & \"x\""),
            "&lt;script&gt;alert(&#39;1&#39;)&lt;/script&gt; &amp; &quot;x&quot;"
        );
    }

    #[test]
    fn a_run_with_nothing_but_its_name_says_what_is_missing() {
        let data = RunData { run: "<b>r</b>".into(), dataset: "d".into(), ..RunData::default() };
        let page = render(&data);
        assert!(page.contains("No logged step") && page.contains("not been evaluated yet"), "{page}");
        assert!(page.contains("&lt;b&gt;r&lt;/b&gt;") && !page.contains("<b>r</b>"));
    }
}
