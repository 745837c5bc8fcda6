//! The shared object store: shards, batches and checkpoints all live here.
//!
//! Keys are `/`-separated paths relative to the configured URL's prefix.
//! Objects that others wait for (shards, checkpoints) are written with
//! `PutMode::Create`, so a reader never sees a partial or replaced object.

use bytes::Bytes;
use futures::TryStreamExt;
use object_store::path::Path;
use object_store::{ObjectStore, ObjectStoreExt, PutMode, PutOptions, PutPayload};
use std::sync::Arc;
use url::Url;

use crate::settings::StoreSettings;

/// Why a store operation failed; each names the store's URL.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The store URL cannot be opened.
    #[error("object store URL {url:?}: {message}")]
    Url {
        /// The URL, as configured.
        url: String,
        /// What is wrong with it.
        message: String,
    },
    /// No object at the key.
    #[error("object {key} not found in {url}")]
    NotFound {
        /// The store's URL.
        url: String,
        /// The missing object's key.
        key: String,
    },
    /// An object exists where a new one was to be created.
    #[error("object {key} already exists in {url}")]
    AlreadyExists {
        /// The store's URL.
        url: String,
        /// The existing object's key.
        key: String,
    },
    /// Any other failure of the object store.
    #[error("object store {url}, {op} {key}: {source}")]
    Io {
        /// The store's URL.
        url: String,
        /// The operation: `get`, `put`, `head`, `delete` or `list`.
        op: &'static str,
        /// The object's key (the prefix, for `list`).
        key: String,
        /// The object store's error.
        source: object_store::Error,
    },
    /// An object larger than its reader accepts ([`Store::get_at_most`]); nothing of it was read.
    #[error("object {key} in {url} is {size} bytes, more than the {max} such an object may have")]
    TooLarge {
        /// The store's URL.
        url: String,
        /// The object's key.
        key: String,
        /// Its size.
        size: u64,
        /// The most its reader accepts.
        max: u64,
    },
    /// A streamed write ended without being committed.
    #[error("object store {url}, put {key}: the writer stopped before the object was complete; nothing was stored")]
    Incomplete {
        /// The store's URL.
        url: String,
        /// The key that was being written.
        key: String,
    },
}

/// One object as listed by [`Store::list_objects`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ObjectInfo {
    /// Relative to the store's prefix, as object_store spells it
    /// (odd characters percent-encoded); read it with [`Store::get_listed`].
    pub key: String,
    /// Size in bytes.
    pub size: u64,
    /// Last modification, milliseconds since the Unix epoch.
    pub modified_ms: i64,
}

#[derive(Clone)]
/// The object store at the configured URL; clones share one client.
pub struct Store {
    inner: Arc<dyn ObjectStore>,
    root: Path,
    url: String,
    /// The folder of a `file://` store.
    local_dir: Option<std::path::PathBuf>,
}

impl std::fmt::Debug for Store {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Store").field("url", &self.url).finish()
    }
}

impl Store {
    /// Opens `file:///abs/dir` (created if missing), `memory:///` or `s3://bucket/prefix`.
    pub fn open(settings: &StoreSettings) -> Result<Self, StoreError> {
        let url_err = |message: String| StoreError::Url { url: settings.url.clone(), message };
        let url = Url::parse(&settings.url).map_err(|e| url_err(e.to_string()))?;
        let mut local_dir = None;
        let (inner, root): (Arc<dyn ObjectStore>, Path) = match url.scheme() {
            "file" => {
                let dir = url.to_file_path().map_err(|_| url_err("not an absolute local path".into()))?;
                std::fs::create_dir_all(&dir).map_err(|e| url_err(format!("cannot create {}: {e}", dir.display())))?;
                let fs =
                    object_store::local::LocalFileSystem::new_with_prefix(&dir).map_err(|e| url_err(e.to_string()))?;
                local_dir = Some(dir);
                (Arc::new(fs), Path::default())
            }
            "memory" => (Arc::new(object_store::memory::InMemory::new()), Path::default()),
            "s3" => {
                let bucket = url.host_str().ok_or_else(|| url_err("missing bucket name".into()))?;
                let mut builder = object_store::aws::AmazonS3Builder::from_env()
                    .with_bucket_name(bucket)
                    .with_region(&settings.s3_region)
                    .with_allow_http(settings.s3_allow_http);
                if !settings.s3_access_key_id.is_empty() {
                    builder = builder
                        .with_access_key_id(&settings.s3_access_key_id)
                        .with_secret_access_key(settings.s3_secret_access_key.expose());
                }
                if !settings.s3_endpoint.is_empty() {
                    builder = builder.with_endpoint(&settings.s3_endpoint);
                }
                let s3 = builder.build().map_err(|e| url_err(e.to_string()))?;
                let prefix = url.path().trim_matches('/');
                (Arc::new(s3), Path::from(prefix))
            }
            other => return Err(url_err(format!("unsupported scheme {other:?} (use file://, memory:// or s3://)"))),
        };
        Ok(Self { inner, root, url: settings.url.clone(), local_dir })
    }

    /// Deletes the temporary files (`<name>#<n>`) that a local store's
    /// writer leaves behind when its process is killed mid-write, under
    /// `prefix`, if older than `min_age`. Returns how many. Other stores
    /// never show partial objects: nothing to do.
    pub fn remove_stale_temporaries(&self, prefix: &str, min_age: std::time::Duration) -> usize {
        let Some(dir) = &self.local_dir else { return 0 };
        let is_temporary = |name: &str| {
            name.rsplit_once('#').is_some_and(|(_, n)| !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit()))
        };
        let mut removed = 0;
        let mut pending = vec![dir.join(prefix)];
        while let Some(folder) = pending.pop() {
            let Ok(entries) = std::fs::read_dir(&folder) else { continue };
            for entry in entries.filter_map(Result::ok) {
                let path = entry.path();
                let Ok(meta) = entry.metadata() else { continue };
                if meta.is_dir() {
                    pending.push(path);
                    continue;
                }
                let old = meta.modified().ok().and_then(|m| m.elapsed().ok()).is_some_and(|age| age >= min_age);
                if old && entry.file_name().to_str().is_some_and(is_temporary) && std::fs::remove_file(&path).is_ok() {
                    tracing::info!("removed {} (left by a writer that was killed mid-write)", path.display());
                    removed += 1;
                }
            }
        }
        removed
    }

    /// Deletes the temporary files (`<key>#<n>`) that a killed writer of
    /// the one object `key` left behind in a local store, whatever their
    /// age: for an object only the caller writes, so none is in progress.
    /// Returns how many. Other stores never show partial objects.
    pub fn remove_temporaries_of(&self, key: &str) -> usize {
        let Some(dir) = &self.local_dir else { return 0 };
        let path = dir.join(key);
        let (Some(folder), Some(name)) = (path.parent(), path.file_name().and_then(|n| n.to_str())) else { return 0 };
        let Ok(entries) = std::fs::read_dir(folder) else { return 0 };
        let mut removed = 0;
        for entry in entries.filter_map(Result::ok) {
            let file = entry.file_name();
            let Some(n) = file.to_str().and_then(|f| f.strip_prefix(name)).and_then(|f| f.strip_prefix('#')) else {
                continue;
            };
            if !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit()) && std::fs::remove_file(entry.path()).is_ok() {
                tracing::info!("removed {} (left by a writer that was killed mid-write)", entry.path().display());
                removed += 1;
            }
        }
        removed
    }

    /// The store's URL, as configured.
    pub fn url(&self) -> &str {
        &self.url
    }

    fn path(&self, key: &str) -> Path {
        if self.root.as_ref().is_empty() {
            Path::from(key)
        } else {
            Path::from(format!("{}/{key}", self.root))
        }
    }

    fn io(&self, op: &'static str, key: &str, source: object_store::Error) -> StoreError {
        match source {
            object_store::Error::NotFound { .. } => {
                StoreError::NotFound { url: self.url.clone(), key: key.to_string() }
            }
            object_store::Error::AlreadyExists { .. } => {
                StoreError::AlreadyExists { url: self.url.clone(), key: key.to_string() }
            }
            source => StoreError::Io { url: self.url.clone(), op, key: key.to_string(), source },
        }
    }

    /// Writes an object streamed in chunks; it appears whole or not at all.
    /// Writes the chunks that arrive on `chunks` as one object at `key`, so
    /// a large object is stored while it is being made. `Some(bytes)` is
    /// data, `None` commits: only then does the object become visible
    /// (multipart upload; a local store renames a staged file). If the
    /// sender goes away without `None`, the upload is aborted and nothing is
    /// visible. Unlike [`Store::put_new`] this does not refuse to replace an
    /// existing object: check first where that matters.
    pub async fn put_streamed(
        &self,
        key: &str,
        mut chunks: tokio::sync::mpsc::Receiver<Option<Bytes>>,
    ) -> Result<(), StoreError> {
        let upload = self.inner.put_multipart(&self.path(key)).await.map_err(|e| self.io("put", key, e))?;
        let mut writer = object_store::WriteMultipart::new_with_chunk_size(upload, 8 << 20);
        loop {
            match chunks.recv().await {
                Some(Some(bytes)) => {
                    writer.wait_for_capacity(2).await.map_err(|e| self.io("put", key, e))?;
                    writer.put(bytes);
                }
                Some(None) => {
                    writer.finish().await.map_err(|e| self.io("put", key, e))?;
                    return Ok(());
                }
                None => {
                    writer.abort().await.map_err(|e| self.io("put", key, e))?;
                    return Err(StoreError::Incomplete { url: self.url.clone(), key: key.to_string() });
                }
            }
        }
    }

    /// Writes an object that must not exist yet; it appears whole or not at all.
    pub async fn put_new(&self, key: &str, bytes: Bytes) -> Result<(), StoreError> {
        let opts = PutOptions { mode: PutMode::Create, ..Default::default() };
        self.inner
            .put_opts(&self.path(key), PutPayload::from(bytes), opts)
            .await
            .map(|_| ())
            .map_err(|e| self.io("put", key, e))
    }

    /// Writes (or replaces) an object atomically.
    pub async fn put(&self, key: &str, bytes: Bytes) -> Result<(), StoreError> {
        self.inner.put(&self.path(key), PutPayload::from(bytes)).await.map(|_| ()).map_err(|e| self.io("put", key, e))
    }

    /// Reads a whole object.
    pub async fn get(&self, key: &str) -> Result<Bytes, StoreError> {
        let got = self.inner.get(&self.path(key)).await.map_err(|e| self.io("get", key, e))?;
        got.bytes().await.map_err(|e| self.io("get", key, e))
    }

    /// Reads a whole object of at most `max` bytes; a larger one is refused
    /// ([`StoreError::TooLarge`]) from its size, before any of it is read.
    pub async fn get_at_most(&self, key: &str, max: u64) -> Result<Bytes, StoreError> {
        let got = self.inner.get(&self.path(key)).await.map_err(|e| self.io("get", key, e))?;
        if got.meta.size > max {
            return Err(StoreError::TooLarge { url: self.url.clone(), key: key.to_string(), size: got.meta.size, max });
        }
        got.bytes().await.map_err(|e| self.io("get", key, e))
    }

    /// Whether an object exists at `key`.
    pub async fn exists(&self, key: &str) -> Result<bool, StoreError> {
        match self.inner.head(&self.path(key)).await {
            Ok(_) => Ok(true),
            Err(object_store::Error::NotFound { .. }) => Ok(false),
            Err(e) => Err(self.io("head", key, e)),
        }
    }

    /// Deletes an object; a missing one is not an error.
    pub async fn delete(&self, key: &str) -> Result<(), StoreError> {
        match self.inner.delete(&self.path(key)).await {
            Ok(()) | Err(object_store::Error::NotFound { .. }) => Ok(()),
            Err(e) => Err(self.io("delete", key, e)),
        }
    }

    /// Keys (relative to the store's prefix) that start with `prefix`, sorted.
    /// `prefix` may end inside a name (`datasets/x/validation-`).
    pub async fn list(&self, prefix: &str) -> Result<Vec<String>, StoreError> {
        Ok(self.list_objects(prefix).await?.into_iter().map(|o| o.key).collect())
    }

    /// Reads an object by a key exactly as [`Store::list_objects`] returned it
    /// (already percent-encoded where object_store encodes odd characters, so
    /// it is not encoded a second time).
    pub async fn get_listed(&self, key: &str) -> Result<Bytes, StoreError> {
        let full = if self.root.as_ref().is_empty() { key.to_string() } else { format!("{}/{key}", self.root) };
        let location =
            Path::parse(&full).map_err(|e| StoreError::Url { url: self.url.clone(), message: e.to_string() })?;
        let got = self.inner.get(&location).await.map_err(|e| self.io("get", key, e))?;
        got.bytes().await.map_err(|e| self.io("get", key, e))
    }

    /// Objects (key relative to the store's prefix, size, modification time)
    /// whose keys start with `prefix`, sorted by key.
    pub async fn list_objects(&self, prefix: &str) -> Result<Vec<ObjectInfo>, StoreError> {
        // object_store lists whole path segments: list the folder, then filter.
        let folder = prefix.rsplit_once('/').map_or("", |(dir, _)| dir);
        let full = self.path(folder);
        let metas: Vec<_> = match self.inner.list(Some(&full)).try_collect().await {
            Ok(m) => m,
            Err(object_store::Error::NotFound { .. }) => Vec::new(),
            Err(e) => return Err(self.io("list", prefix, e)),
        };
        let root = self.root.as_ref();
        let mut objects: Vec<ObjectInfo> = metas
            .into_iter()
            .map(|m| {
                let loc = m.location.as_ref();
                let key = if root.is_empty() {
                    loc.to_string()
                } else {
                    loc.strip_prefix(root).unwrap_or(loc).trim_start_matches('/').to_string()
                };
                ObjectInfo { key, size: m.size, modified_ms: m.last_modified.timestamp_millis() }
            })
            .filter(|o| o.key.starts_with(prefix))
            .collect();
        objects.sort_by(|a, b| a.key.cmp(&b.key));
        Ok(objects)
    }
}

#[cfg(test)]
mod streamed_tests {
    use super::*;

    #[tokio::test]
    async fn streamed_objects_appear_whole_on_commit_and_not_at_all_on_abort() {
        let dir = tempfile::tempdir().unwrap();
        let settings = StoreSettings {
            url: format!("file://{}", dir.path().display()),
            ..crate::Settings::defaults().unwrap().store
        };
        let store = Store::open(&settings).unwrap();
        let (tx, rx) = tokio::sync::mpsc::channel(2);
        let writing = tokio::spawn({
            let store = store.clone();
            async move { store.put_streamed("a/shard", rx).await }
        });
        let mut expected = Vec::new();
        for i in 0..5u8 {
            let chunk = vec![i; 3 << 20];
            expected.extend_from_slice(&chunk);
            tx.send(Some(Bytes::from(chunk))).await.unwrap();
        }
        assert!(!store.exists("a/shard").await.unwrap(), "not visible before the commit");
        tx.send(None).await.unwrap();
        writing.await.unwrap().unwrap();
        assert_eq!(store.get("a/shard").await.unwrap(), Bytes::from(expected));

        let (tx, rx) = tokio::sync::mpsc::channel(2);
        tx.send(Some(Bytes::from_static(b"half"))).await.unwrap();
        drop(tx);
        let err = store.put_streamed("a/broken", rx).await.unwrap_err();
        assert!(matches!(err, StoreError::Incomplete { .. }), "{err}");
        assert!(!store.exists("a/broken").await.unwrap());
        assert!(store.list("a/").await.unwrap() == vec!["a/shard"], "no staged file listed");
        let files: Vec<_> = std::fs::read_dir(dir.path().join("a")).unwrap().map(|e| e.unwrap().file_name()).collect();
        assert_eq!(files, vec![std::ffi::OsString::from("shard")], "nothing staged left behind");
    }

    #[tokio::test]
    async fn an_object_larger_than_its_reader_accepts_is_refused() {
        let store =
            Store::open(&StoreSettings { url: "memory:///".into(), ..crate::Settings::defaults().unwrap().store })
                .unwrap();
        store.put("big", Bytes::from(vec![7u8; 100])).await.unwrap();
        assert_eq!(store.get_at_most("big", 100).await.unwrap().len(), 100);
        let err = store.get_at_most("big", 99).await.unwrap_err();
        assert!(matches!(err, StoreError::TooLarge { size: 100, max: 99, .. }), "{err}");
        assert!(err.to_string().contains("big") && err.to_string().contains("100 bytes"), "{err}");
        assert!(matches!(store.get_at_most("missing", 1).await, Err(StoreError::NotFound { .. })));
    }
}

#[cfg(test)]
mod temporary_tests {
    use super::*;

    #[test]
    fn stale_temporaries_of_a_local_store_are_removed() {
        let dir = tempfile::tempdir().unwrap();
        let settings = StoreSettings {
            url: format!("file://{}", dir.path().display()),
            ..crate::Settings::defaults().unwrap().store
        };
        let store = Store::open(&settings).unwrap();
        std::fs::create_dir_all(dir.path().join("checkpoints/run/sub")).unwrap();
        for name in [
            "checkpoints/run/model.ckpt-10.safetensors#3",
            "checkpoints/run/sub/x#12",
            "checkpoints/run/keep#me",
            "checkpoints/run/model.ckpt-10.json",
            "other#1",
        ] {
            std::fs::write(dir.path().join(name), b"x").unwrap();
        }
        assert_eq!(
            store.remove_stale_temporaries("checkpoints/run", std::time::Duration::from_secs(3600)),
            0,
            "too young"
        );
        assert_eq!(store.remove_stale_temporaries("checkpoints/run", std::time::Duration::ZERO), 2);
        assert!(
            dir.path().join("checkpoints/run/keep#me").exists()
                && dir.path().join("checkpoints/run/model.ckpt-10.json").exists()
        );
        assert!(dir.path().join("other#1").exists(), "outside the prefix");
        let memory = Store::open(&StoreSettings { url: "memory:///".into(), ..settings }).unwrap();
        assert_eq!(memory.remove_stale_temporaries("", std::time::Duration::ZERO), 0);
    }

    #[test]
    fn temporaries_of_one_object_are_removed_and_nothing_else() {
        let dir = tempfile::tempdir().unwrap();
        let settings = StoreSettings {
            url: format!("file://{}", dir.path().display()),
            ..crate::Settings::defaults().unwrap().store
        };
        let store = Store::open(&settings).unwrap();
        std::fs::create_dir_all(dir.path().join("checkpoints/run")).unwrap();
        let names = ["best#1", "best#22", "best", "best#x", "bestx#1", "model.ckpt-10.safetensors#3"];
        for name in names {
            std::fs::write(dir.path().join("checkpoints/run").join(name), b"x").unwrap();
        }
        assert_eq!(store.remove_temporaries_of("checkpoints/run/best"), 2);
        let left: Vec<bool> = names.iter().map(|n| dir.path().join("checkpoints/run").join(n).exists()).collect();
        assert_eq!(left, vec![false, false, true, true, true, true]);
        assert_eq!(store.remove_temporaries_of("checkpoints/absent/best"), 0);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn local(dir: &std::path::Path) -> Store {
        Store::open(&StoreSettings {
            url: format!("file://{}", dir.join("store").display()),
            s3_endpoint: String::new(),
            s3_allow_http: false,
            s3_region: "us-east-1".into(),
            s3_access_key_id: String::new(),
            s3_secret_access_key: Default::default(),
        })
        .unwrap()
    }

    #[tokio::test]
    async fn put_new_refuses_to_replace_and_list_is_relative() {
        let dir = tempfile::tempdir().unwrap();
        let store = local(dir.path());
        store.put_new("a/b/one", Bytes::from_static(b"1")).await.unwrap();
        let err = store.put_new("a/b/one", Bytes::from_static(b"2")).await.unwrap_err();
        assert!(matches!(err, StoreError::AlreadyExists { .. }), "{err}");
        assert_eq!(store.get("a/b/one").await.unwrap(), Bytes::from_static(b"1"));
        store.put("a/c", Bytes::from_static(b"3")).await.unwrap();
        assert_eq!(store.list("a/").await.unwrap(), vec!["a/b/one", "a/c"]);
        assert_eq!(store.list("a/b/o").await.unwrap(), vec!["a/b/one"]);
        assert_eq!(store.list("a/c").await.unwrap(), vec!["a/c"]);
        assert!(store.list("nothing").await.unwrap().is_empty());
        let listed = store.list_objects("a/").await.unwrap();
        assert_eq!(listed[0].size, 1);
        assert_eq!(store.get_listed(&listed[0].key).await.unwrap(), Bytes::from_static(b"1"));
        store.put("odd/50% #1.jpg", Bytes::from_static(b"odd")).await.unwrap();
        let odd = store.list_objects("odd/").await.unwrap();
        assert_eq!(store.get_listed(&odd[0].key).await.unwrap(), Bytes::from_static(b"odd"));
        store.delete("a/c").await.unwrap();
        assert!(!store.exists("a/c").await.unwrap());
        let err = store.get("a/c").await.unwrap_err();
        assert!(err.to_string().contains("a/c"), "{err}");
    }

    #[test]
    fn unsupported_scheme_is_named() {
        let err = Store::open(&StoreSettings {
            url: "ftp://x/y".into(),
            s3_endpoint: String::new(),
            s3_allow_http: false,
            s3_region: String::new(),
            s3_access_key_id: String::new(),
            s3_secret_access_key: Default::default(),
        })
        .unwrap_err();
        assert!(err.to_string().contains("ftp"), "{err}");
    }
}
