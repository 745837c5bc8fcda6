//! Label names: from a labels file (one per line, as build_image_data.py's
//! `--labels_file`) or, by default, the sorted sub-folder names. Label i+1 is
//! line i; 0 is left for the background class.

use bytes::Bytes;
use inception_core::{keys, Store};
use std::path::Path;

use crate::source::Source;
use crate::IngestError;

/// The label set for a source: the labels file when given, else the sorted
/// label folders of the source (a local folder or a store prefix).
pub async fn resolve(labels_file: &str, source: &Source) -> Result<Vec<String>, IngestError> {
    match source {
        Source::Local(dir) => read_labels(labels_file, dir),
        Source::Store(_) if labels_file.is_empty() => check(source.label_folders().await?, &source.describe()),
        Source::Store(_) => read_labels(labels_file, Path::new("")),
    }
}

/// Writes `datasets/<name>/labels.txt`.
pub async fn publish(store: &Store, dataset: &str, labels: &[String]) -> Result<(), IngestError> {
    let mut text = labels.join("\n");
    text.push('\n');
    store.put(&keys::labels(dataset), Bytes::from(text)).await?;
    Ok(())
}

/// Parses a labels.txt (one per line) as [`read_labels`] does.
pub fn parse(text: &str, origin: &str) -> Result<Vec<String>, IngestError> {
    check(text.lines().map(str::trim).filter(|l| !l.is_empty()).map(str::to_string).collect(), origin)
}

pub fn read_labels(labels_file: &str, train_directory: &Path) -> Result<Vec<String>, IngestError> {
    let labels: Vec<String> = if labels_file.is_empty() {
        let entries = std::fs::read_dir(train_directory)
            .map_err(|e| IngestError::Input { path: train_directory.display().to_string(), message: e.to_string() })?;
        let mut names: Vec<String> = entries
            .filter_map(Result::ok)
            .filter(|e| e.file_type().is_ok_and(|t| t.is_dir()))
            .filter_map(|e| e.file_name().to_str().map(str::to_string))
            .filter(|n| !n.starts_with('.'))
            .collect();
        names.sort();
        names
    } else {
        let text = std::fs::read_to_string(labels_file)
            .map_err(|e| IngestError::Input { path: labels_file.to_string(), message: e.to_string() })?;
        text.lines().map(str::trim).filter(|l| !l.is_empty()).map(str::to_string).collect()
    };
    let origin = if labels_file.is_empty() { train_directory.display().to_string() } else { labels_file.to_string() };
    check(labels, &origin)
}

fn check(labels: Vec<String>, labels_file: &str) -> Result<Vec<String>, IngestError> {
    if labels.is_empty() {
        return Err(IngestError::Input { path: labels_file.to_string(), message: "no labels found".into() });
    }
    for label in &labels {
        if label.contains('/') || label.contains('\\') || label == ".." || label.chars().any(char::is_control) {
            return Err(IngestError::Input {
                path: labels_file.to_string(),
                message: format!("label {label:?} is not a plain folder name"),
            });
        }
    }
    let mut seen = std::collections::HashSet::new();
    if let Some(dup) = labels.iter().find(|l| !seen.insert(l.as_str())) {
        return Err(IngestError::Input {
            path: labels_file.to_string(),
            message: format!("label {dup:?} appears twice"),
        });
    }
    Ok(labels)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sorted_folders_by_default_and_file_order_otherwise() {
        let dir = tempfile::tempdir().unwrap();
        for d in ["tulips", "daisy", "roses"] {
            std::fs::create_dir(dir.path().join(d)).unwrap();
        }
        std::fs::write(dir.path().join("LICENSE.txt"), "x").unwrap();
        assert_eq!(read_labels("", dir.path()).unwrap(), vec!["daisy", "roses", "tulips"]);
        let file = dir.path().join("labels.txt");
        std::fs::write(&file, "tulips\n\n daisy \n").unwrap();
        assert_eq!(read_labels(file.to_str().unwrap(), dir.path()).unwrap(), vec!["tulips", "daisy"]);
        std::fs::write(&file, "a\na\n").unwrap();
        assert!(read_labels(file.to_str().unwrap(), dir.path()).unwrap_err().to_string().contains("twice"));
        let err = read_labels("/no/such/labels.txt", dir.path()).unwrap_err().to_string();
        assert!(err.contains("/no/such/labels.txt"), "{err}");
    }
}
