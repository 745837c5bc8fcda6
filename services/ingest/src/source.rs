//! Where images come from: a local folder, or any object store URL
//! (`file:///dir`, `s3://bucket/prefix`, `memory:///`). Both hold
//! `<label>/<image>`; anything deeper or shallower is ignored, as the
//! original's glob `<dir>/<label>/*` does, and so are hidden names.
//!
//! A local folder is read as a [`Tree`]: a symbolic link (to an image, or a
//! label folder) is followed when it leads to a regular file (or folder)
//! inside the source folder, as the original's glob does; one that dangles,
//! loops or leads outside, and anything that is not a regular file (a pipe,
//! a device), is listed with [`Location::Refused`] and the reason, so that
//! it gets a line in the report instead of vanishing. Nothing is
//! de-duplicated: two links to one file are two inputs, as for the original.

use inception_core::settings::StoreSettings;
use inception_core::Store;
use std::path::{Path, PathBuf};

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
    /// Listed but never read: why (a symbolic link that dangles, loops or
    /// leads out of the source folder; not a regular file). Reported as
    /// `skipped_unreadable` with this reason.
    Refused(String),
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
            Location::Refused(reason) => Err(reason.clone()),
        }
    }

    /// As [`Location::read_blocking`], refusing a file of more than `max`
    /// bytes before reading it (and never reading more, should it grow).
    pub fn read_blocking_at_most(&self, max: u64) -> Result<Vec<u8>, String> {
        let too_large = |size: u64| format!("{size} bytes, more than ingest.max_image_bytes = {max}");
        match self {
            Location::Path(p) => {
                use std::io::Read;
                let file = std::fs::File::open(p).map_err(|e| e.to_string())?;
                let size = file.metadata().map_err(|e| e.to_string())?.len();
                if size > max {
                    return Err(too_large(size));
                }
                let mut bytes = Vec::with_capacity(usize::try_from(size).unwrap_or(0));
                file.take(max.saturating_add(1)).read_to_end(&mut bytes).map_err(|e| e.to_string())?;
                if bytes.len() as u64 > max {
                    return Err(too_large(bytes.len() as u64));
                }
                Ok(bytes)
            }
            _ => {
                let bytes = self.read_blocking()?;
                if bytes.len() as u64 > max {
                    return Err(too_large(bytes.len() as u64));
                }
                Ok(bytes)
            }
        }
    }

    pub async fn read(&self) -> Result<Vec<u8>, String> {
        match self {
            Location::Path(p) => tokio::fs::read(p).await.map_err(|e| e.to_string()),
            Location::Store { store, key } => {
                store.get_listed(key).await.map(|b| b.to_vec()).map_err(|e| e.to_string())
            }
            Location::Refused(reason) => Err(reason.clone()),
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
            Source::Local(dir) => Tree::open(dir)?.label_folders(),
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

fn list_local(dir: &Path) -> Result<Vec<SourceObject>, IngestError> {
    let tree = Tree::open(dir)?;
    let mut out = Vec::new();
    for label in tree.label_folders()? {
        match tree.folder(&label) {
            Ok(objects) => out.extend(objects.into_iter().flatten()),
            Err(e) => tracing::warn!("cannot list {}: {e}", dir.join(&label).display()),
        }
    }
    Ok(out)
}

/// A local source folder, resolved once so that links can be checked
/// against it.
#[derive(Debug, Clone)]
pub struct Tree {
    /// As given (what reports show).
    root: PathBuf,
    /// Canonical: links must resolve below it.
    real: PathBuf,
}

impl Tree {
    /// A missing folder is an error (a typo should not look like an empty
    /// dataset).
    pub fn open(root: &Path) -> Result<Tree, IngestError> {
        let real = std::fs::canonicalize(root)
            .map_err(|e| IngestError::Input { path: root.display().to_string(), message: e.to_string() })?;
        Ok(Tree { root: root.to_path_buf(), real })
    }

    /// The label folders, sorted: sub-folders and links to folders (where
    /// they lead is checked when they are listed), hidden names excluded.
    pub fn label_folders(&self) -> Result<Vec<String>, IngestError> {
        let entries = std::fs::read_dir(&self.root)
            .map_err(|e| IngestError::Input { path: self.root.display().to_string(), message: e.to_string() })?;
        let mut names: Vec<String> = entries
            .filter_map(Result::ok)
            .filter(|e| match e.file_type() {
                Ok(t) if t.is_symlink() => std::fs::metadata(e.path()).is_ok_and(|m| m.is_dir()),
                Ok(t) => t.is_dir(),
                Err(_) => false,
            })
            .filter_map(|e| e.file_name().to_str().map(str::to_string))
            .filter(|n| !hidden(n))
            .collect();
        names.sort();
        Ok(names)
    }

    /// The objects of `<root>/<label>/`, sorted by name; None when there is
    /// no such folder. A label folder that is a link leading nowhere usable
    /// is one refused object (`<label>/`), so that it is reported.
    pub fn folder(&self, label: &str) -> std::io::Result<Option<Vec<SourceObject>>> {
        let path = self.root.join(label);
        let meta = match std::fs::symlink_metadata(&path) {
            Ok(m) => m,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(e),
        };
        let real_dir = if meta.file_type().is_symlink() {
            match self.resolve(&path).and_then(|t| if t.is_dir() { Ok(t) } else { Err(not_a_folder(&t)) }) {
                Ok(target) => target,
                Err(reason) => return Ok(Some(vec![refused(label, "", Some(&meta), reason)])),
            }
        } else {
            self.real.join(label)
        };
        let mut out = Vec::new();
        for entry in std::fs::read_dir(&real_dir)?.filter_map(Result::ok) {
            let name = entry.file_name().to_string_lossy().into_owned();
            if !hidden(&name) {
                out.extend(self.entry(label, name, &entry));
            }
        }
        out.sort_by(|a, b| a.key.cmp(&b.key));
        Ok(Some(out))
    }

    /// One entry of a label folder: a file, a followed link, or refused;
    /// None for a sub-folder (deeper than `<label>/<image>`).
    fn entry(&self, label: &str, name: String, entry: &std::fs::DirEntry) -> Option<SourceObject> {
        let meta = match entry.metadata() {
            Ok(m) => m,
            Err(e) => return Some(refused(label, &name, None, format!("cannot be read: {e}"))),
        };
        let t = meta.file_type();
        if t.is_file() {
            return Some(object(label, name, &meta, Location::Path(entry.path())));
        }
        if t.is_dir() {
            return None;
        }
        if !t.is_symlink() {
            return Some(refused(
                label,
                &name,
                Some(&meta),
                "not a regular file (a pipe, socket or device): not read".into(),
            ));
        }
        match self.resolve(&entry.path()) {
            Ok(target) => match std::fs::metadata(&target) {
                Ok(m) if m.is_file() => Some(object(label, name, &m, Location::Path(target))),
                Ok(m) if m.is_dir() => None,
                Ok(_) => Some(refused(
                    label,
                    &name,
                    Some(&meta),
                    format!("symbolic link to {}, which is not a regular file: not read", target.display()),
                )),
                Err(e) => {
                    Some(refused(label, &name, Some(&meta), format!("symbolic link to {}: {e}", target.display())))
                }
            },
            Err(reason) => Some(refused(label, &name, Some(&meta), reason)),
        }
    }

    /// Where a link leads, if that is inside the tree; else why not.
    fn resolve(&self, link: &Path) -> Result<PathBuf, String> {
        let shown = || std::fs::read_link(link).map_or_else(|_| "?".to_string(), |t| t.display().to_string());
        match std::fs::canonicalize(link) {
            Ok(target) if target.starts_with(&self.real) => Ok(target),
            Ok(target) => Err(format!(
                "symbolic link to {}, outside the source folder {}: not followed",
                target.display(),
                self.root.display()
            )),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                Err(format!("dangling symbolic link to {} (no such file)", shown()))
            }
            // `ErrorKind::FilesystemLoop` is not stable yet; its name is.
            Err(e) if format!("{:?}", e.kind()) == "FilesystemLoop" => {
                Err(format!("symbolic link loop through {} ({e})", shown()))
            }
            Err(e) => Err(format!("symbolic link to {} cannot be followed: {e}", shown())),
        }
    }

    /// Where `<label>/<name>` is to be read now (continuous ingest's
    /// rebuild and quarantine): followed and checked as when it was listed.
    pub fn locate(&self, label: &str, name: &str) -> Location {
        let path = self.root.join(label).join(name);
        let linked = std::fs::symlink_metadata(&path).is_ok_and(|m| m.file_type().is_symlink())
            || std::fs::symlink_metadata(self.root.join(label)).is_ok_and(|m| m.file_type().is_symlink());
        if !linked {
            return Location::Path(path);
        }
        match self.resolve(&path) {
            Ok(target) => Location::Path(target),
            Err(reason) => Location::Refused(reason),
        }
    }
}

fn not_a_folder(target: &Path) -> String {
    format!("symbolic link to {}, which is not a folder: not read", target.display())
}

fn modified_ms(meta: &std::fs::Metadata) -> i64 {
    meta.modified().ok().and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok()).map_or(0, |d| d.as_millis() as i64)
}

fn object(label: &str, name: String, meta: &std::fs::Metadata, location: Location) -> SourceObject {
    SourceObject {
        key: format!("{label}/{name}"),
        label: label.to_string(),
        name,
        size: meta.len(),
        modified_ms: modified_ms(meta),
        location,
    }
}

/// A listed entry that is not to be read. The link's own size and time
/// (not its target's) tell continuous ingest when it stops changing.
fn refused(label: &str, name: &str, meta: Option<&std::fs::Metadata>, reason: String) -> SourceObject {
    SourceObject {
        key: format!("{label}/{name}"),
        label: label.to_string(),
        name: name.to_string(),
        size: meta.map_or(0, std::fs::Metadata::len),
        modified_ms: meta.map_or(0, modified_ms),
        location: Location::Refused(reason),
    }
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

    #[test]
    fn a_tree_follows_links_inside_and_refuses_the_others() {
        use std::os::unix::fs::symlink;
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().join("in");
        for p in ["roses/a.jpg", ".pool/b.jpg", ".pool/tulips/c.jpg"] {
            let path = root.join(p);
            std::fs::create_dir_all(path.parent().unwrap()).unwrap();
            std::fs::write(path, p).unwrap();
        }
        std::fs::create_dir_all(dir.path().join("away")).unwrap();
        std::fs::write(dir.path().join("away/d.jpg"), "d").unwrap();
        symlink("../.pool/b.jpg", root.join("roses/b.jpg")).unwrap();
        symlink(".pool/tulips", root.join("tulips")).unwrap();
        symlink(dir.path().join("away"), root.join("daisy")).unwrap();
        symlink("nowhere", root.join("lilies")).unwrap();
        let fifo = std::process::Command::new("mkfifo").arg(root.join("roses/pipe.jpg")).status();
        assert!(fifo.unwrap().success());

        let tree = Tree::open(&root).unwrap();
        // A folder link is a label wherever it leads; a dangling one is not a folder.
        assert_eq!(tree.label_folders().unwrap(), vec!["daisy", "roses", "tulips"]);
        let listed = |label: &str| -> Vec<(String, Result<Vec<u8>, String>)> {
            let objects = tree.folder(label).unwrap().unwrap();
            objects.iter().map(|o| (o.key.clone(), o.location.read_blocking())).collect()
        };
        let roses = listed("roses");
        assert_eq!(roses[0], ("roses/a.jpg".into(), Ok(b"roses/a.jpg".to_vec())));
        assert_eq!(roses[1], ("roses/b.jpg".into(), Ok(b".pool/b.jpg".to_vec())));
        assert_eq!(roses[2].0, "roses/pipe.jpg");
        assert!(roses[2].1.as_ref().unwrap_err().contains("not a regular file"), "{roses:?}");
        assert_eq!(listed("tulips"), vec![("tulips/c.jpg".into(), Ok(b".pool/tulips/c.jpg".to_vec()))]);
        let daisy = listed("daisy");
        assert_eq!(daisy.len(), 1, "{daisy:?}");
        assert_eq!(daisy[0].0, "daisy/");
        assert!(daisy[0].1.as_ref().unwrap_err().contains("outside the source folder"), "{daisy:?}");
        assert!(tree.folder("absent").unwrap().is_none());
        assert!(matches!(tree.locate("roses", "b.jpg"), Location::Path(p) if p.ends_with(".pool/b.jpg")));
        assert!(matches!(tree.locate("daisy", "d.jpg"), Location::Refused(_)));
        assert!(Tree::open(&dir.path().join("missing")).is_err());
    }

    /// Rule 1 of issue 16: an image file larger than `ingest.max_image_bytes`
    /// is refused from its size, before it is read (it used to be read whole).
    #[test]
    fn a_file_over_the_size_bound_is_refused_unread() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("huge.jpg");
        // Sparse: 64 GiB on paper, nothing on disk.
        std::fs::File::create(&path).unwrap().set_len(64 << 30).unwrap();
        let err = Location::Path(path.clone()).read_blocking_at_most(512 << 20).unwrap_err();
        assert!(err.contains("more than ingest.max_image_bytes"), "{err}");
        std::fs::write(&path, b"small").unwrap();
        assert_eq!(Location::Path(path).read_blocking_at_most(5).unwrap(), b"small");
    }
}
