//! Label names: from a labels file (one per line, as build_image_data.py's
//! `--labels_file`) or, by default, the sorted sub-folder names. Label i+1 is
//! line i; 0 is left for the background class.

use bytes::Bytes;
use inception_core::store::StoreError;
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

/// Refuses a label map that differs from the dataset's stored
/// `labels.txt` once shards exist: their records carry label numbers of
/// the stored map, and a new `labels.txt` would silently rename them all.
/// A stored map without shards (a run that wrote none) may be replaced.
/// `origin` says where `labels` came from.
pub async fn check_unchanged(store: &Store, dataset: &str, labels: &[String], origin: &str) -> Result<(), IngestError> {
    let key = keys::labels(dataset);
    let stored = match store.get(&key).await {
        Ok(bytes) => parse(&String::from_utf8_lossy(&bytes), &key)?,
        Err(StoreError::NotFound { .. }) => return Ok(()),
        Err(e) => return Err(e.into()),
    };
    let Some(difference) = difference(&stored, labels, &key, origin) else { return Ok(()) };
    let shards = shards_of(store, dataset).await?;
    if shards == 0 {
        tracing::info!("{key} differs from {origin} ({difference}) but no shard uses it: replaced");
        return Ok(());
    }
    Err(IngestError::LabelsChanged {
        dataset: dataset.to_string(),
        stored: key,
        origin: origin.to_string(),
        difference,
        shards,
    })
}

/// The first difference between two label maps, in words; None if equal.
pub fn difference(stored: &[String], new: &[String], stored_name: &str, new_name: &str) -> Option<String> {
    let at = (0..stored.len().max(new.len())).find(|&i| stored.get(i) != new.get(i))?;
    let name = |l: Option<&String>| l.map_or_else(|| "absent".to_string(), |l| format!("{l:?}"));
    Some(format!(
        "label {} is {} in {stored_name} but {} in {new_name}",
        at + 1,
        name(stored.get(at)),
        name(new.get(at))
    ))
}

/// How many shards (one-shot `<split>-NNNNN-of-NNNNN` or continuous
/// `<split>-live-NNNNNNNN`) the dataset's folder holds.
async fn shards_of(store: &Store, dataset: &str) -> Result<usize, IngestError> {
    let dir = format!("{}/", keys::dataset_dir(dataset));
    let listed = store.list(&dir).await?;
    Ok(listed.iter().filter_map(|k| k.strip_prefix(&dir)).filter(|n| is_shard_name(n)).count())
}

/// A shard's name as [`keys::shard`] or [`keys::live_shard`] makes it.
pub fn is_shard_name(name: &str) -> bool {
    let digits = |s: &str| !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit());
    let Some((rest, last)) = name.rsplit_once('-') else { return false };
    if !digits(last) || rest.contains('/') {
        return false;
    }
    if let Some(split) = rest.strip_suffix("-live") {
        return !split.is_empty();
    }
    rest.strip_suffix("-of")
        .and_then(|r| r.rsplit_once('-'))
        .is_some_and(|(split, index)| !split.is_empty() && digits(index))
}

/// Parses a labels.txt (one per line) as [`read_labels`] does.
pub fn parse(text: &str, origin: &str) -> Result<Vec<String>, IngestError> {
    check(text.lines().map(str::trim).filter(|l| !l.is_empty()).map(str::to_string).collect(), origin)
}

pub fn read_labels(labels_file: &str, train_directory: &Path) -> Result<Vec<String>, IngestError> {
    let labels: Vec<String> = if labels_file.is_empty() {
        let folders = crate::source::Tree::open(train_directory)?.label_folders()?;
        if folders.is_empty() {
            return Err(IngestError::Input {
                path: train_directory.display().to_string(),
                message: "no label folders: expected one sub-folder per label holding its images (<label>/<image>)"
                    .into(),
            });
        }
        folders
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
    fn shard_names_and_first_differences() {
        for name in ["train-00000-of-00002", "validation-00001-of-00002", "train-live-00000042"] {
            assert!(is_shard_name(name), "{name}");
        }
        for name in ["labels.txt", "ingest/report.json", "train-live-", "-00000-of-00002", "train-00000-of-x"] {
            assert!(!is_shard_name(name), "{name}");
        }
        let l = |v: &[&str]| v.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        assert_eq!(difference(&l(&["a", "b"]), &l(&["a", "b"]), "s", "n"), None);
        assert_eq!(
            difference(&l(&["a", "b"]), &l(&["b", "a"]), "s", "n").unwrap(),
            r#"label 1 is "a" in s but "b" in n"#
        );
        assert_eq!(
            difference(&l(&["a"]), &l(&["a", "c"]), "s", "n").unwrap(),
            r#"label 2 is absent in s but "c" in n"#
        );
    }

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
