//! `inception records verify|stats|inspect`: look inside TFRecord files
//! (ours or TensorFlow's). `verify` and `stats` take any number of inputs:
//! local files, quoted globs, store keys, a dataset's folder in the
//! configured object store (`datasets/flowers`: its shards), a prefix of
//! shard names (`datasets/flowers/train-`), or object store URLs of any of
//! these (`s3://bucket/datasets/flowers/train-*`). An input that cannot be
//! read is reported by name and the others are still read; the exit status
//! is 1 if any was refused or is corrupt.

use anyhow::{bail, Context};
use inception_cli::glob;
use inception_cli::input::{self, Refused};
use inception_core::cli::CommonArgs;
use inception_core::settings::StoreSettings;
use inception_core::store::StoreError;
use inception_core::tfrecord::{self, TfRecordError};
use inception_core::Store;
use inception_ingest::records::{self, RecordStats};
use serde_json::{json, Value};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

/// Default of `--max-file-bytes`: a shard is read into memory whole, and
/// build_image_data.py's shards are about 150 MB (ImageNet's 1024).
const DEFAULT_MAX_FILE_BYTES: u64 = 4 << 30;

#[derive(Debug, clap::Args)]
pub(crate) struct RecordsArgs {
    #[command(flatten)]
    common: CommonArgs,
    #[command(subcommand)]
    action: Action,
}

#[derive(Debug, clap::Args)]
struct Inputs {
    #[command(flatten)]
    common: CommonArgs,
    /// Local files or quoted globs (`'shards/train-*'`), store keys, a
    /// dataset's folder in the store (`datasets/flowers`: its shards), a
    /// prefix of shard names (`datasets/flowers/train-`), or object store
    /// URLs of any of these.
    #[arg(required = true, value_name = "INPUT")]
    inputs: Vec<String>,
    /// One JSON document instead of text lines.
    #[arg(long)]
    json: bool,
    /// Larger files are refused by name, unread (a shard is read into memory whole).
    #[arg(long, value_name = "BYTES", default_value_t = DEFAULT_MAX_FILE_BYTES)]
    max_file_bytes: u64,
}

#[derive(Debug, clap::Subcommand)]
enum Action {
    /// Check every record's checksums of each input.
    Verify(Inputs),
    /// Count records and labels of each input, and in all.
    Stats(Inputs),
    /// Print the features of one record.
    Inspect {
        #[command(flatten)]
        common: CommonArgs,
        #[arg(value_name = "INPUT")]
        file: String,
        #[arg(long, default_value_t = 0)]
        index: usize,
        /// Larger files are refused by name, unread.
        #[arg(long, value_name = "BYTES", default_value_t = DEFAULT_MAX_FILE_BYTES)]
        max_file_bytes: u64,
    },
}

/// Returns whether every input was read and is sound. `outer`: the
/// `--config` and `--set` given before the subcommand.
pub(crate) fn run(outer: &CommonArgs, args: RecordsArgs) -> anyhow::Result<bool> {
    let levels = |innermost| inception_cli::merged_settings_flags(&[outer, &args.common, innermost]);
    match &args.action {
        Action::Verify(inputs) => Ok(report(&mut Places::new(levels(&inputs.common))?, inputs, false)),
        Action::Stats(inputs) => Ok(report(&mut Places::new(levels(&inputs.common))?, inputs, true)),
        Action::Inspect { common, file, index, max_file_bytes } => {
            inspect(&mut Places::new(levels(common))?, file, *index, *max_file_bytes)?;
            Ok(true)
        }
    }
}

fn inspect(place: &mut Places, file: &str, index: usize, max: u64) -> anyhow::Result<()> {
    let sources = place.resolve(file)?;
    let [source] = sources.as_slice() else {
        bail!("{file}: inspect reads one file; this names {}", sources.len());
    };
    let bytes = place.read(source, max)?;
    if let Some(why) = not_a_tfrecord(&bytes) {
        bail!("{} is not a TFRecord file: {why}", source.name());
    }
    let lines = records::inspect(&bytes, index).map_err(|e| anyhow::anyhow!("{}: {e}", source.name()))?;
    for l in lines {
        println!("{l}");
    }
    Ok(())
}

/// One input file: in a local folder, or an object of a store.
#[derive(Debug)]
enum Source {
    Local(PathBuf),
    Object {
        store: Store,
        key: String,
        /// Its size, when it was found by listing (its key is then as listed).
        listed_size: Option<u64>,
        /// How the user named the store: `None` for the configured one.
        url: Option<String>,
    },
}

impl Source {
    fn name(&self) -> String {
        match self {
            Source::Local(p) => p.display().to_string(),
            Source::Object { key, url: None, .. } => key.clone(),
            Source::Object { key, url: Some(url), .. } => format!("{url}/{key}"),
        }
    }
}

/// Where inputs are looked for: the local file system, then the configured
/// store (opened when first needed: local files need no settings) or the
/// store a URL names.
struct Places {
    common: CommonArgs,
    runtime: tokio::runtime::Runtime,
    store: Option<Store>,
}

impl Places {
    fn new(common: CommonArgs) -> anyhow::Result<Self> {
        let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
        Ok(Self { common, runtime, store: None })
    }

    fn configured_store(&mut self) -> anyhow::Result<Store> {
        if let Some(s) = &self.store {
            return Ok(s.clone());
        }
        let settings = self.common.settings(Vec::new())?;
        let store = Store::open(&settings.store)?;
        self.store = Some(store.clone());
        Ok(store)
    }

    /// The files one input names, in order.
    fn resolve(&mut self, input: &str) -> anyhow::Result<Vec<Source>> {
        let path = Path::new(input);
        // A local name first; a special file is refused when it is read.
        if let Ok(meta) = std::fs::metadata(path) {
            if meta.is_dir() {
                return local_folder(path);
            }
            return Ok(vec![Source::Local(path.to_path_buf())]);
        }
        let url = inception_ingest::source::is_url(input);
        if !url && glob::has_wildcards(input) {
            let found = local_glob(path)?;
            if !found.is_empty() {
                return Ok(found);
            }
        }
        let (store, key, url) = if url {
            let (folder, key) = input.rsplit_once('/').with_context(|| format!("{input}: no object name"))?;
            let settings = self.common.settings(Vec::new())?;
            let store = Store::open(&StoreSettings { url: folder.to_string(), ..settings.store })?;
            (store, key.to_string(), Some(folder.to_string()))
        } else {
            (self.configured_store()?, input.to_string(), None)
        };
        let found = self.runtime.block_on(objects(&store, &key))?;
        if found.is_empty() {
            bail!("{input}: no local file, and no object, dataset folder or shard names in {} match it", store.url());
        }
        let source = |(key, listed_size)| Source::Object { store: store.clone(), key, listed_size, url: url.clone() };
        Ok(found.into_iter().map(source).collect())
    }

    /// The whole file, if it is a regular file or object of at most `max` bytes.
    fn read(&self, source: &Source, max: u64) -> anyhow::Result<Vec<u8>> {
        let (store, key, listed_size) = match source {
            Source::Local(path) => return Ok(input::read(path, max)?),
            Source::Object { store, key, listed_size, .. } => (store, key, *listed_size),
        };
        let too_large = |size| Refused::TooLarge { path: source.name(), size, max };
        let bytes = match listed_size {
            Some(size) if size > max => return Err(too_large(size).into()),
            Some(_) => self.runtime.block_on(store.get_listed(key)),
            None => self.runtime.block_on(store.get_at_most(key, max)),
        };
        match bytes {
            Ok(b) => Ok(b.to_vec()),
            Err(StoreError::TooLarge { size, .. }) => Err(too_large(size).into()),
            Err(e) => Err(e.into()),
        }
    }
}

/// The shards directly in a local folder, sorted.
fn local_folder(dir: &Path) -> anyhow::Result<Vec<Source>> {
    let mut names: Vec<String> = std::fs::read_dir(dir)
        .with_context(|| format!("cannot list {}", dir.display()))?
        .filter_map(|e| e.ok()?.file_name().into_string().ok())
        .filter(|n| looks_like_shard(n))
        .collect();
    names.sort();
    if names.is_empty() {
        bail!("{}: a folder without TFRecord shards (names like train-00000-of-00002 or *.tfrecord)", dir.display());
    }
    Ok(names.into_iter().map(|n| Source::Local(dir.join(n))).collect())
}

/// The local files a pattern in the last part of a path matches, sorted;
/// hidden files only when the pattern starts with a dot, as in a shell.
fn local_glob(pattern: &Path) -> anyhow::Result<Vec<Source>> {
    let (Some(name), dir) = (pattern.file_name().and_then(|n| n.to_str()), pattern.parent()) else {
        return Ok(Vec::new());
    };
    let dir = dir.filter(|d| !d.as_os_str().is_empty());
    if dir.is_some_and(|d| glob::has_wildcards(&d.to_string_lossy())) {
        bail!("{}: wildcards are matched in the last part of a path only", pattern.display());
    }
    let Ok(entries) = std::fs::read_dir(dir.unwrap_or(Path::new("."))) else { return Ok(Vec::new()) };
    let mut names: Vec<String> = entries
        .filter_map(|e| e.ok()?.file_name().into_string().ok())
        .filter(|n| glob::matches(name, n) && (name.starts_with('.') || !n.starts_with('.')))
        .collect();
    names.sort();
    let path = |n: String| dir.map_or_else(|| PathBuf::from(&n), |d| d.join(&n));
    Ok(names.into_iter().map(|n| Source::Local(path(n))).collect())
}

/// The objects of `store` that `key` names, with their listed sizes: the
/// object itself; else the shards in the folder `key/`; else the shards
/// whose names start with `key`; a pattern: the objects that match it.
async fn objects(store: &Store, key: &str) -> Result<Vec<(String, Option<u64>)>, StoreError> {
    let listed = |objects: Vec<inception_core::store::ObjectInfo>, keep: &dyn Fn(&str) -> bool| {
        objects.into_iter().filter(|o| keep(&o.key)).map(|o| (o.key, Some(o.size))).collect::<Vec<_>>()
    };
    if glob::has_wildcards(key) {
        let fixed = &key[..key.find(['*', '?', '[']).unwrap_or(key.len())];
        return Ok(listed(store.list_objects(fixed).await?, &|k| glob::matches(key, k)));
    }
    if !key.is_empty() && !key.ends_with('/') && store.exists(key).await? {
        return Ok(vec![(key.to_string(), None)]);
    }
    let folder = if key.is_empty() || key.ends_with('/') { key.to_string() } else { format!("{key}/") };
    let shards = listed(store.list_objects(&folder).await?, &|k| shard_directly_in(k, &folder));
    if !shards.is_empty() || key.ends_with('/') || key.is_empty() {
        return Ok(shards);
    }
    let parent = key.rsplit_once('/').map_or(String::new(), |(dir, _)| format!("{dir}/"));
    Ok(listed(store.list_objects(key).await?, &|k| shard_directly_in(k, &parent)))
}

/// Whether `key` is a shard in `folder` itself (not in a folder below it).
fn shard_directly_in(key: &str, folder: &str) -> bool {
    key.strip_prefix(folder).is_some_and(|name| !name.contains('/') && looks_like_shard(name))
}

/// Whether a file name is one of a TFRecord shard: build_image_data.py's
/// `train-00000-of-01024`, continuous ingest's `train-live-00000042`, or
/// `*.tfrecord*` / `*.tfrec` as TensorFlow users name them. Labels, ledgers
/// and reports beside the shards are not.
fn looks_like_shard(name: &str) -> bool {
    let digits = |s: &str| !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit());
    let numbered = name
        .rsplit_once("-of-")
        .is_some_and(|(head, total)| digits(total) && head.rsplit_once('-').is_some_and(|(_, index)| digits(index)));
    let live = name.rsplit_once("-live-").is_some_and(|(_, n)| digits(n));
    numbered || live || name.contains(".tfrecord") || name.ends_with(".tfrec")
}

/// Why `bytes` is not a TFRecord file at all (as opposed to a damaged
/// one): its first record has no valid header. `None` when it has one or is empty.
fn not_a_tfrecord(bytes: &[u8]) -> Option<String> {
    match tfrecord::records(bytes).next() {
        Some(Err(TfRecordError::LengthCrc { offset: 0 } | TfRecordError::TruncatedHeader { offset: 0 })) => {
            Some(looks_like(bytes))
        }
        _ => None,
    }
}

/// What a file that is not a TFRecord seems to be, from its first bytes.
fn looks_like(bytes: &[u8]) -> String {
    let starts = |magic: &[u8]| bytes.starts_with(magic);
    let kind = if starts(b"\xff\xd8\xff") {
        "a JPEG image"
    } else if starts(b"\x89PNG\r\n\x1a\n") {
        "a PNG image"
    } else if starts(b"GIF8") {
        "a GIF image"
    } else if starts(b"RIFF") && bytes.get(8..12) == Some(b"WEBP") {
        "a WebP image"
    } else if starts(b"II*\0") || starts(b"MM\0*") {
        "a TIFF image"
    } else if starts(b"\x1f\x8b") {
        return "it is gzip-compressed (a TFRecord file written with compression? decompress it first)".into();
    } else if starts(b"PK\x03\x04") {
        "a zip archive"
    } else if is_text(bytes) {
        "text"
    } else if bytes.len() < tfrecord::FRAMING_BYTES - 4 {
        return format!("it has {} bytes, fewer than one record's header", bytes.len());
    } else {
        return "its first bytes are no record header".into();
    };
    format!("it starts like {kind}")
}

fn is_text(bytes: &[u8]) -> bool {
    let head = &bytes[..bytes.len().min(512)];
    // A multi-byte character cut at the end of the sample is still text.
    let valid = match std::str::from_utf8(head) {
        Ok(s) => s,
        Err(e) if e.error_len().is_none() => std::str::from_utf8(&head[..e.valid_up_to()]).unwrap_or_default(),
        Err(_) => return false,
    };
    !valid.is_empty() && !valid.chars().any(|c| c.is_control() && !c.is_whitespace())
}

/// What one input file held, or why it was not read or is not sound.
struct Checked {
    name: String,
    stats: Option<RecordStats>,
    error: Option<String>,
}

fn check(place: &Places, source: &Source, max: u64) -> Checked {
    let name = source.name();
    let bytes = match place.read(source, max) {
        Ok(b) => b,
        Err(e) => return Checked { name, stats: None, error: Some(format!("{e:#}")) },
    };
    if let Some(why) = not_a_tfrecord(&bytes) {
        return Checked { error: Some(format!("{name} is not a TFRecord file: {why}")), name, stats: None };
    }
    let stats = records::stats(&bytes);
    tracing::debug!(file = %name, records = stats.records, "read");
    let error = stats.framing.as_ref().map(|e| format!("{name}: corrupt framing after {} records: {e}", stats.records));
    Checked { name, stats: Some(stats), error }
}

/// Reads every input, prints what each held (and, for `stats`, the labels
/// of all together); returns whether all were read and sound.
fn report(place: &mut Places, inputs: &Inputs, with_labels: bool) -> bool {
    let mut checked = Vec::new();
    for input in &inputs.inputs {
        match place.resolve(input) {
            Ok(sources) => checked.extend(sources.iter().map(|s| check(place, s, inputs.max_file_bytes))),
            Err(e) => checked.push(Checked { name: input.clone(), stats: None, error: Some(format!("{e:#}")) }),
        }
    }
    if inputs.json {
        println!("{}", serde_json::to_string_pretty(&as_json(&checked, with_labels)).unwrap_or_default());
    } else {
        print_text(&checked, with_labels);
    }
    checked.iter().all(|c| c.error.is_none())
}

/// label -> (text, count) over every file read.
fn all_labels(checked: &[Checked]) -> BTreeMap<i64, (String, usize)> {
    let mut all: BTreeMap<i64, (String, usize)> = BTreeMap::new();
    for (label, (text, count)) in checked.iter().filter_map(|c| c.stats.as_ref()).flat_map(|s| &s.labels) {
        all.entry(*label).or_insert_with(|| (text.clone(), 0)).1 += count;
    }
    all
}

fn total_records(checked: &[Checked]) -> usize {
    checked.iter().filter_map(|c| c.stats.as_ref()).map(|s| s.records).sum()
}

fn print_text(checked: &[Checked], with_labels: bool) {
    for c in checked {
        if let Some(s) = &c.stats {
            let ok = if c.error.is_none() && !with_labels { ", every checksum matches" } else { "" };
            println!("{}: {} records{ok}", c.name, s.records);
            for (i, reason) in s.unreadable.iter().filter(|_| with_labels) {
                println!("{}: record {i}: {reason}", c.name);
            }
        }
        if let Some(e) = &c.error {
            eprintln!("{e}");
        }
    }
    if with_labels {
        for (label, (text, count)) in all_labels(checked) {
            println!("label {label} {text:?}: {count}");
        }
    }
    if checked.len() > 1 {
        let failed = checked.iter().filter(|c| c.error.is_some()).count();
        let failed = if failed > 0 { format!(" ({failed} refused, unreadable or corrupt)") } else { String::new() };
        println!("total: {} records in {} files{failed}", total_records(checked), checked.len());
    }
}

fn labels_json(labels: &BTreeMap<i64, (String, usize)>) -> Value {
    labels.iter().map(|(label, (text, count))| json!({"label": label, "text": text, "count": count})).collect()
}

fn as_json(checked: &[Checked], with_labels: bool) -> Value {
    let files: Vec<Value> = checked
        .iter()
        .map(|c| {
            let mut file = json!({ "file": c.name });
            if let Some(s) = &c.stats {
                file["records"] = json!(s.records);
                if with_labels {
                    file["labels"] = labels_json(&s.labels);
                    let unreadable: Vec<Value> =
                        s.unreadable.iter().map(|(i, reason)| json!({"record": i, "reason": reason})).collect();
                    file["unreadable"] = json!(unreadable);
                }
            }
            if let Some(e) = &c.error {
                file["error"] = json!(e);
            }
            file
        })
        .collect();
    let failed = checked.iter().filter(|c| c.error.is_some()).count();
    let mut total = json!({ "files": checked.len(), "records": total_records(checked), "failed": failed });
    if with_labels {
        total["labels"] = labels_json(&all_labels(checked));
    }
    json!({ "files": files, "total": total })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shard_names_are_told_from_what_lies_beside_them() {
        for shard in
            ["train-00000-of-00002", "validation-00001-of-01024", "train-live-00000042", "x.tfrecord-3", "a.tfrec"]
        {
            assert!(looks_like_shard(shard), "{shard}");
        }
        for other in ["labels.txt", "report.json", "train-of-2", "00000042.done", "train-live-"] {
            assert!(!looks_like_shard(other), "{other}");
        }
        assert!(shard_directly_in("d/x/train-00000-of-00001", "d/x/"));
        assert!(!shard_directly_in("d/x/ingest/train-00000-of-00001", "d/x/"));
    }

    #[test]
    fn what_a_file_that_is_not_a_tfrecord_looks_like() {
        assert_eq!(not_a_tfrecord(b"\xff\xd8\xff\xe0 rest of a jpeg").as_deref(), Some("it starts like a JPEG image"));
        assert_eq!(not_a_tfrecord("héllo wörld, no records\n".as_bytes()).as_deref(), Some("it starts like text"));
        assert_eq!(not_a_tfrecord(b"\x01\x02").as_deref(), Some("it has 2 bytes, fewer than one record's header"));
        assert!(not_a_tfrecord(b"\x1f\x8b\x08\0\0\0\0\0\0\0\0\0\0").unwrap().contains("gzip"));
        assert_eq!(not_a_tfrecord(b""), None, "an empty file is a TFRecord file of no records");
        let mut one = Vec::new();
        tfrecord::write_record(&mut one, b"data");
        assert_eq!(not_a_tfrecord(&one), None);
        one.truncate(one.len() - 1);
        assert_eq!(not_a_tfrecord(&one), None, "damaged, but a TFRecord file");
    }
}
