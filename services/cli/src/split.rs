//! The user's image folder as `inception train` reads it: its layout
//! (`<label>/<image>`, or `train/` with an optional `validation/`), the
//! files of each class, and the validation split taken off deterministically
//! when there is none.
//!
//! A file goes to validation when a hash of its path relative to the pool
//! (`<label>/<name>`) falls under the fraction: the same file lands in the
//! same split on every run and machine, a file added later never moves
//! another, and no file is in both. Each class keeps at least one training
//! image, and one validation image when it has two or more.

use anyhow::{bail, Context};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

/// The layout the command expects, for error messages.
pub(crate) const EXPECTED_LAYOUT: &str = "expected DIR/<label>/<image> (one sub-folder per class, e.g. \
     DIR/roses/1.jpg, DIR/tulips/2.jpg), or DIR/train/<label>/<image> with an optional \
     DIR/validation/<label>/<image>";

/// One image file of a class.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Image {
    /// `<label>/<name>`, relative to the folder of its split (what is hashed).
    pub(crate) relative: String,
    pub(crate) label: String,
    /// Where to read it: the file itself (a link's target, resolved).
    pub(crate) path: PathBuf,
}

/// Something in the folder that is not read, and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Ignored {
    pub(crate) path: PathBuf,
    pub(crate) reason: String,
}

/// How the folder is organised.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Layout {
    /// `DIR/<label>/<image>`: validation split off.
    Pool,
    /// `DIR/train/<label>/<image>` only: validation split off the training images.
    TrainOnly,
    /// `DIR/train/` and `DIR/validation/`, used as they are.
    Given,
}

/// The dataset: every image of each split, and what was ignored.
#[derive(Debug, Clone)]
pub(crate) struct Dataset {
    pub(crate) root: PathBuf,
    pub(crate) layout: Layout,
    pub(crate) labels: Vec<String>,
    pub(crate) train: Vec<Image>,
    pub(crate) validation: Vec<Image>,
    pub(crate) ignored: Vec<Ignored>,
}

impl Dataset {
    /// Reads `root`, splitting off `fraction` for validation when it has none.
    pub(crate) fn read(root: &Path, fraction: f64) -> anyhow::Result<Dataset> {
        let meta =
            std::fs::metadata(root).with_context(|| format!("cannot read the image folder {}", root.display()))?;
        if !meta.is_dir() {
            bail!("{} is not a folder: {EXPECTED_LAYOUT}", root.display());
        }
        let (train_dir, validation_dir) = (root.join("train"), root.join("validation"));
        let mut ignored = Vec::new();
        let (layout, train, validation) = if train_dir.is_dir() {
            let train = classes(&train_dir, &mut ignored)?;
            if validation_dir.is_dir() {
                let validation = classes(&validation_dir, &mut ignored)?;
                (Layout::Given, flatten(train), flatten(validation))
            } else {
                let (t, v) = split(train, fraction);
                (Layout::TrainOnly, t, v)
            }
        } else {
            let (t, v) = split(classes(root, &mut ignored)?, fraction);
            (Layout::Pool, t, v)
        };
        let mut labels: Vec<String> = train.iter().map(|i| i.label.clone()).collect();
        labels.dedup();
        if train.is_empty() {
            bail!("{} has no image in its label folders: {EXPECTED_LAYOUT}", root.display());
        }
        if validation.is_empty() {
            bail!(
                "{} leaves no image for validation (each class needs two images or more to split one off; \
                 or give DIR/validation/<label>/<image>)",
                root.display()
            );
        }
        Ok(Dataset { root: root.to_path_buf(), layout, labels, train, validation, ignored })
    }

    /// Files per class: (train, validation).
    pub(crate) fn counts(&self) -> BTreeMap<String, (usize, usize)> {
        let mut counts: BTreeMap<String, (usize, usize)> = BTreeMap::new();
        for i in &self.train {
            counts.entry(i.label.clone()).or_default().0 += 1;
        }
        for i in &self.validation {
            counts.entry(i.label.clone()).or_default().1 += 1;
        }
        counts
    }

    /// Writes the split as `<dir>/train/<label>/<name>` and
    /// `<dir>/validation/<label>/<name>`: hard links where the file system
    /// allows, else copies. Every training class gets a validation folder.
    pub(crate) fn materialise(&self, dir: &Path) -> anyhow::Result<(PathBuf, PathBuf)> {
        if dir.exists() {
            std::fs::remove_dir_all(dir).with_context(|| format!("cannot clear {}", dir.display()))?;
        }
        let (train, validation) = (dir.join("train"), dir.join("validation"));
        for label in &self.labels {
            for split in [&train, &validation] {
                std::fs::create_dir_all(split.join(label))?;
            }
        }
        for (split, images) in [(&train, &self.train), (&validation, &self.validation)] {
            for image in images {
                let to = split.join(&image.relative);
                if let Some(parent) = to.parent() {
                    std::fs::create_dir_all(parent)?;
                }
                if std::fs::hard_link(&image.path, &to).is_err() {
                    std::fs::copy(&image.path, &to)
                        .with_context(|| format!("cannot copy {} to {}", image.path.display(), to.display()))?;
                }
            }
        }
        Ok((train, validation))
    }
}

/// Whether the name is hidden (`.DS_Store`, `.git`): never read, never reported.
fn hidden(name: &str) -> bool {
    name.starts_with('.')
}

/// The images of each label folder of `dir`, by label, each sorted by name.
fn classes(dir: &Path, ignored: &mut Vec<Ignored>) -> anyhow::Result<BTreeMap<String, Vec<Image>>> {
    let real_root = std::fs::canonicalize(dir).with_context(|| format!("cannot read {}", dir.display()))?;
    let mut out = BTreeMap::new();
    let mut loose = 0usize;
    for entry in std::fs::read_dir(dir).with_context(|| format!("cannot list {}", dir.display()))? {
        let entry = entry?;
        let name = entry.file_name().to_string_lossy().into_owned();
        if hidden(&name) {
            continue;
        }
        let path = entry.path();
        if !std::fs::metadata(&path).is_ok_and(|m| m.is_dir()) {
            loose += 1;
            ignored.push(Ignored { path, reason: "not in a label folder: only <label>/<image> is read".into() });
            continue;
        }
        let mut images = Vec::new();
        for file in std::fs::read_dir(&path).with_context(|| format!("cannot list {}", path.display()))? {
            let file = file?;
            let file_name = file.file_name().to_string_lossy().into_owned();
            if hidden(&file_name) {
                continue;
            }
            let file_path = file.path();
            match readable(&file_path, &real_root) {
                Ok(target) => {
                    images.push(Image { relative: format!("{name}/{file_name}"), label: name.clone(), path: target });
                }
                Err(reason) => ignored.push(Ignored { path: file_path, reason }),
            }
        }
        images.sort_by(|a, b| a.relative.cmp(&b.relative));
        out.insert(name, images);
    }
    if out.is_empty() {
        let found = if loose > 0 { format!(" (it has {loose} file(s) and no sub-folder)") } else { String::new() };
        bail!("{} has no label folders{found}: {EXPECTED_LAYOUT}", dir.display());
    }
    Ok(out)
}

/// The file to read for `path`: a regular file, or a link to one inside the folder.
fn readable(path: &Path, real_root: &Path) -> Result<PathBuf, String> {
    let meta = std::fs::symlink_metadata(path).map_err(|e| format!("cannot be read: {e}"))?;
    if meta.is_dir() {
        return Err("a folder inside a label folder: only <label>/<image> is read".into());
    }
    let target = std::fs::canonicalize(path).map_err(|e| format!("cannot be followed: {e}"))?;
    if meta.file_type().is_symlink() && !target.starts_with(real_root) {
        return Err(format!("symbolic link to {}, outside the folder: not followed", target.display()));
    }
    match std::fs::metadata(&target) {
        Ok(m) if m.is_file() => Ok(target),
        Ok(m) if m.is_dir() => Err("a folder inside a label folder: only <label>/<image> is read".into()),
        Ok(_) => Err("not a regular file (a pipe, socket or device): not read".into()),
        Err(e) => Err(format!("cannot be read: {e}")),
    }
}

fn flatten(classes: BTreeMap<String, Vec<Image>>) -> Vec<Image> {
    classes.into_values().flatten().collect()
}

/// FNV-1a over the bytes, with a final mix: the same on every machine.
pub(crate) fn stable_hash(text: &str) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in text.as_bytes() {
        h ^= u64::from(*b);
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    // splitmix64's finaliser spreads similar names over the whole range.
    h ^= h >> 30;
    h = h.wrapping_mul(0xbf58_476d_1ce4_e5b9);
    h ^= h >> 27;
    h = h.wrapping_mul(0x94d0_49bb_1331_11eb);
    h ^ (h >> 31)
}

/// Where the hash of `relative` falls in [0, 1).
fn position(relative: &str) -> f64 {
    (stable_hash(relative) >> 11) as f64 / (1u64 << 53) as f64
}

/// Each class's images into (train, validation) by [`position`]; a class
/// keeps one training image (the highest position) and, with two or more
/// images, gives one to validation (the lowest).
fn split(classes: BTreeMap<String, Vec<Image>>, fraction: f64) -> (Vec<Image>, Vec<Image>) {
    let (mut train, mut validation) = (Vec::new(), Vec::new());
    for (_, mut images) in classes {
        images
            .sort_by(|a, b| position(&a.relative).total_cmp(&position(&b.relative)).then(a.relative.cmp(&b.relative)));
        let n = images.len();
        let mut held = images.iter().take_while(|i| position(&i.relative) < fraction).count();
        if n >= 2 && fraction > 0.0 {
            held = held.clamp(1, n - 1);
        } else {
            held = held.min(n.saturating_sub(1));
        }
        let kept = images.split_off(held);
        validation.extend(images);
        train.extend(kept);
    }
    let by_name = |a: &Image, b: &Image| a.relative.cmp(&b.relative);
    train.sort_by(by_name);
    validation.sort_by(by_name);
    (train, validation)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashSet;

    fn pool(dir: &Path, classes: &[(&str, usize)]) {
        for (label, n) in classes {
            std::fs::create_dir_all(dir.join(label)).unwrap();
            for i in 0..*n {
                std::fs::write(dir.join(label).join(format!("{i:03}.jpg")), b"x").unwrap();
            }
        }
    }

    #[test]
    fn the_hash_is_fixed() {
        const FIXED: u64 = 8_920_657_574_306_487_711;
        // Fixed values: a change here would move files between splits.
        assert_eq!(stable_hash("roses/1.jpg"), FIXED);
        assert_ne!(stable_hash("roses/1.jpg"), stable_hash("roses/2.jpg"));
    }

    #[test]
    fn the_split_is_deterministic_disjoint_and_near_the_fraction() {
        let dir = tempfile::tempdir().unwrap();
        pool(dir.path(), &[("a", 200), ("b", 100), ("c", 2), ("d", 1)]);
        let first = Dataset::read(dir.path(), 0.1).unwrap();
        let again = Dataset::read(dir.path(), 0.1).unwrap();
        assert_eq!(first.train, again.train);
        assert_eq!(first.validation, again.validation);
        assert_eq!(first.layout, Layout::Pool);
        let train: HashSet<_> = first.train.iter().map(|i| &i.relative).collect();
        assert!(first.validation.iter().all(|i| !train.contains(&i.relative)), "no file in both");
        assert_eq!(first.train.len() + first.validation.len(), 303);
        let counts = first.counts();
        assert!((10..=35).contains(&counts["a"].1), "about 10 % of 200: {:?}", counts["a"]);
        assert_eq!(counts["c"], (1, 1), "two images: one each");
        assert_eq!(counts["d"], (1, 0), "one image stays in training");
        // A file added later never moves another.
        std::fs::write(dir.path().join("a/new.jpg"), b"x").unwrap();
        let grown = Dataset::read(dir.path(), 0.1).unwrap();
        let before: HashSet<_> = first.validation.iter().map(|i| &i.relative).collect();
        let after: HashSet<_> = grown.validation.iter().map(|i| &i.relative).collect();
        assert!(before.iter().all(|r| after.contains(r)));
    }

    #[test]
    fn layouts_and_what_is_ignored() {
        let dir = tempfile::tempdir().unwrap();
        pool(&dir.path().join("train"), &[("a", 5), ("b", 5)]);
        let only_train = Dataset::read(dir.path(), 0.2).unwrap();
        assert_eq!(only_train.layout, Layout::TrainOnly);
        assert!(!only_train.validation.is_empty());
        pool(&dir.path().join("validation"), &[("a", 2), ("b", 1)]);
        std::fs::write(dir.path().join("train/README.txt"), b"x").unwrap();
        std::fs::create_dir_all(dir.path().join("train/a/deeper")).unwrap();
        let given = Dataset::read(dir.path(), 0.2).unwrap();
        assert_eq!(given.layout, Layout::Given);
        assert_eq!((given.train.len(), given.validation.len()), (10, 3));
        assert_eq!(given.ignored.len(), 2, "{:?}", given.ignored);
        let out = tempfile::tempdir().unwrap();
        let (t, v) = given.materialise(&out.path().join("split")).unwrap();
        assert!(t.join("a/000.jpg").is_file() && v.join("b/000.jpg").is_file());
    }

    #[test]
    fn a_flat_folder_is_refused_with_the_expected_layout() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("1.jpg"), b"x").unwrap();
        let e = Dataset::read(dir.path(), 0.1).unwrap_err().to_string();
        assert!(e.contains("no label folders") && e.contains("DIR/<label>/<image>") && e.contains("1 file(s)"), "{e}");
    }
}
