//! Where images come from: a local folder, or any object store URL
//! (`file:///dir`, `s3://bucket/prefix`, `memory:///`). Both hold
//! `<label>/<image>`; anything deeper or shallower is ignored, as the
//! original's glob `<dir>/<label>/*` does, and so are hidden names.

use inception_core::settings::StoreSettings;
use inception_core::Store;
use std::path::PathBuf;

use crate::IngestError;

/// Where one image's bytes are.
#[derive(Debug, Clone)]
pub enum Location {
    Path(PathBuf),
    /// A key exactly as the store listed it (read with `get_listed`).
    Store {
        store: Store,
        key: String,
    },
}

impl Location {
    /// Reads the bytes; call from a blocking thread (a store read blocks on
    /// the current Tokio runtime).
    pub fn read_blocking(&self) -> Result<Vec<u8>, String> {
        match self {
            Location::Path(p) => std::fs::read(p).map_err(|e| e.to_string()),
            Location::Store { store, key } => {
                let handle = tokio::runtime::Handle::try_current().map_err(|e| e.to_string())?;
                handle.block_on(store.get_listed(key)).map(|b| b.to_vec()).map_err(|e| e.to_string())
            }
        }
    }

    pub async fn read(&self) -> Result<Vec<u8>, String> {
        match self {
            Location::Path(p) => tokio::fs::read(p).await.map_err(|e| e.to_string()),
            Location::Store { store, key } => {
                store.get_listed(key).await.map(|b| b.to_vec()).map_err(|e| e.to_string())
            }
        }
    }
}

/// One `<label>/<name>` object of a source.
#[derive(Debug, Clone)]
pub struct SourceObject {
    /// `<label>/<name>` as listed: the identity the ledger records.
    pub key: String,
    /// The folder name (decoded).
    pub label: String,
    /// The base name (decoded), stored as `image/filename`.
    pub name: String,
    pub size: u64,
    pub modified_ms: i64,
    pub location: Location,
}

/// A folder or an object store prefix holding `<label>/<image>`.
#[derive(Debug, Clone)]
pub enum Source {
    Local(PathBuf),
    Store(Store),
}

/// True for `scheme://…` (an object store URL) rather than a plain path.
pub fn is_url(location: &str) -> bool {
    location
        .split_once("://")
        .is_some_and(|(scheme, _)| !scheme.is_empty() && scheme.chars().all(|c| c.is_ascii_alphanumeric()))
}

impl Source {
    /// A plain path is a local folder; a URL opens an object store with the
    /// `[store]` settings' S3 endpoint, region and credentials.
    pub fn open(location: &str, store: &StoreSettings) -> Result<Source, IngestError> {
        if is_url(location) {
            let settings = StoreSettings { url: location.to_string(), ..store.clone() };
            Ok(Source::Store(Store::open(&settings)?))
        } else {
            Ok(Source::Local(PathBuf::from(location)))
        }
    }

    pub fn describe(&self) -> String {
        match self {
            Source::Local(p) => p.display().to_string(),
            Source::Store(s) => s.url().to_string(),
        }
    }

    /// Every `<label>/<name>` object, sorted by key. A missing local folder
    /// is an error (a typo should not look like an empty dataset).
    pub async fn list(&self) -> Result<Vec<SourceObject>, IngestError> {
        let mut out = match self {
            Source::Local(dir) => {
                let dir = dir.clone();
                tokio::task::spawn_blocking(move || list_local(&dir))
                    .await
                    .map_err(|e| IngestError::Worker(e.to_string()))??
            }
            Source::Store(store) => store
                .list_objects("")
                .await?
                .into_iter()
                .filter_map(|o| {
                    let (label, name) = o.key.split_once('/')?;
                    if name.contains('/') || hidden(label) || hidden(name) {
                        return None;
                    }
                    Some(SourceObject {
                        label: percent_decode(label),
                        name: percent_decode(name),
                        size: o.size,
                        modified_ms: o.modified_ms,
                        location: Location::Store { store: store.clone(), key: o.key.clone() },
                        key: o.key,
                    })
                })
                .collect(),
        };
        out.sort_by(|a, b| a.key.cmp(&b.key));
        Ok(out)
    }

    /// The label folders present, sorted (the default label set).
    pub async fn label_folders(&self) -> Result<Vec<String>, IngestError> {
        match self {
            Source::Local(dir) => {
                let entries = std::fs::read_dir(dir)
                    .map_err(|e| IngestError::Input { path: dir.display().to_string(), message: e.to_string() })?;
                let mut names: Vec<String> = entries
                    .filter_map(Result::ok)
                    .filter(|e| e.file_type().is_ok_and(|t| t.is_dir()))
                    .filter_map(|e| e.file_name().to_str().map(str::to_string))
                    .filter(|n| !hidden(n))
                    .collect();
                names.sort();
                Ok(names)
            }
            Source::Store(_) => {
                let mut names: Vec<String> = self.list().await?.into_iter().map(|o| o.label).collect();
                names.sort();
                names.dedup();
                Ok(names)
            }
        }
    }
}

fn hidden(name: &str) -> bool {
    name.starts_with('.')
}

fn list_local(dir: &std::path::Path) -> Result<Vec<SourceObject>, IngestError> {
    let input = |p: &std::path::Path, e: std::io::Error| IngestError::Input {
        path: p.display().to_string(),
        message: e.to_string(),
    };
    let mut out = Vec::new();
    for label_entry in std::fs::read_dir(dir).map_err(|e| input(dir, e))?.filter_map(Result::ok) {
        let label = label_entry.file_name().to_string_lossy().into_owned();
        if hidden(&label) || !label_entry.file_type().is_ok_and(|t| t.is_dir()) {
            continue;
        }
        let folder = label_entry.path();
        let entries = match std::fs::read_dir(&folder) {
            Ok(e) => e,
            Err(e) => {
                tracing::warn!("cannot list {}: {e}", folder.display());
                continue;
            }
        };
        for e in entries.filter_map(Result::ok) {
            let name = e.file_name().to_string_lossy().into_owned();
            if hidden(&name) || !e.file_type().is_ok_and(|t| t.is_file()) {
                continue;
            }
            let meta = e.metadata().ok();
            let modified_ms = meta
                .as_ref()
                .and_then(|m| m.modified().ok())
                .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
                .map_or(0, |d| d.as_millis() as i64);
            out.push(SourceObject {
                key: format!("{label}/{name}"),
                label: label.clone(),
                name,
                size: meta.map_or(0, |m| m.len()),
                modified_ms,
                location: Location::Path(e.path()),
            });
        }
    }
    Ok(out)
}

/// Undoes object_store's percent-encoding of odd characters in a path part.
pub fn percent_decode(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' && i + 2 < bytes.len() {
            let hex = |b: u8| (b as char).to_digit(16);
            if let (Some(h), Some(l)) = (hex(bytes[i + 1]), hex(bytes[i + 2])) {
                out.push((h * 16 + l) as u8);
                i += 3;
                continue;
            }
        }
        out.push(bytes[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;

    #[test]
    fn urls_and_paths() {
        assert!(is_url("s3://bucket/prefix"));
        assert!(is_url("file:///tmp/x"));
        assert!(!is_url("/tmp/x"));
        assert!(!is_url("photos/train"));
        assert_eq!(percent_decode("a%20b%25c"), "a b%c");
        assert_eq!(percent_decode("100%"), "100%");
        assert_eq!(percent_decode("x%2"), "x%2");
    }

    #[tokio::test]
    async fn local_and_store_sources_list_label_slash_name_only() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().join("in");
        for (p, b) in [
            ("roses/a.jpg", "1"),
            ("roses/.partial", "2"),
            ("daisy/b c#1.png", "3"),
            ("top.jpg", "4"),
            ("daisy/deep/x.jpg", "5"),
        ] {
            let path = root.join(p);
            std::fs::create_dir_all(path.parent().unwrap()).unwrap();
            std::fs::write(path, b).unwrap();
        }
        let settings = inception_core::Settings::defaults().unwrap().store;
        let local = Source::open(root.to_str().unwrap(), &settings).unwrap();
        let keys: Vec<String> = local.list().await.unwrap().into_iter().map(|o| o.key).collect();
        assert_eq!(keys, vec!["daisy/b c#1.png", "roses/a.jpg"]);
        assert_eq!(local.label_folders().await.unwrap(), vec!["daisy", "roses"]);

        let url = format!("file://{}", dir.path().join("store").display());
        let store = Store::open(&StoreSettings { url: url.clone(), ..settings.clone() }).unwrap();
        store.put("daisy/b c#1.png", Bytes::from_static(b"3")).await.unwrap();
        store.put("roses/a.jpg", Bytes::from_static(b"1")).await.unwrap();
        store.put("top.jpg", Bytes::from_static(b"4")).await.unwrap();
        let remote = Source::open(&url, &settings).unwrap();
        let objects = remote.list().await.unwrap();
        let names: Vec<(&str, &str)> = objects.iter().map(|o| (o.label.as_str(), o.name.as_str())).collect();
        assert_eq!(names, vec![("daisy", "b c#1.png"), ("roses", "a.jpg")]);
        assert_eq!(objects[0].location.read().await.unwrap(), b"3");
    }
}
