//! Progress of a one-shot run: a bar when stderr is a terminal, otherwise a
//! log line every 1000 images and at the end (as build_image_data.py prints).

use std::io::IsTerminal;
use std::sync::atomic::{AtomicU64, Ordering};

pub struct Progress {
    split: String,
    total: u64,
    done: AtomicU64,
    bar: Option<indicatif::ProgressBar>,
}

impl Progress {
    pub fn new(split: &str, total: usize) -> Self {
        let bar = std::io::stderr().is_terminal().then(|| {
            let bar = indicatif::ProgressBar::new(total as u64);
            if let Ok(style) = indicatif::ProgressStyle::with_template(
                "{prefix:>10} [{bar:40}] {pos}/{len} images ({per_sec}, {eta} left)",
            ) {
                bar.set_style(style.progress_chars("=> "));
            }
            bar.set_prefix(split.to_string());
            bar
        });
        Progress { split: split.to_string(), total: total as u64, done: AtomicU64::new(0), bar }
    }

    /// One more image handled (written or skipped).
    pub fn inc(&self) {
        let done = self.done.fetch_add(1, Ordering::Relaxed) + 1;
        match &self.bar {
            Some(bar) => bar.inc(1),
            None if done.is_multiple_of(1000) || done == self.total => {
                tracing::info!("{}: processed {done} of {} images", self.split, self.total);
            }
            None => {}
        }
    }

    pub fn finish(&self) {
        if let Some(bar) = &self.bar {
            bar.finish();
        }
    }
}
