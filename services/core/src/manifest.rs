//! Shard manifests: what each shard holds, image by image, in record order
//! (source key, size and SHA-256 of the source bytes, label). Ingest writes
//! one beside every shard it writes ([`crate::keys::shard_manifest`]);
//! `inception lineage` reads them to tell whether an image was in a
//! checkpoint's training data.

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

/// The manifest format's version.
pub const MANIFEST_VERSION: u32 = 1;

/// One shard's manifest (`datasets/<name>/manifests/<shard name>.json`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ShardManifest {
    /// [`MANIFEST_VERSION`].
    pub format_version: u32,
    /// The shard's key.
    pub shard: String,
    /// Records in the shard: `images.len()`.
    pub records: u64,
    /// One entry per record, in record order.
    pub images: Vec<ManifestImage>,
}

/// One record of a shard: the image it was made from.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ManifestImage {
    /// Where the image was read: a path, or `<store url>/<label>/<name>`.
    pub source: String,
    /// Bytes of the source file.
    pub size: u64,
    /// SHA-256 of the source bytes (before any re-encoding), lower-case hex.
    pub sha256: String,
    /// The record's label number (1-based; 0 is the background).
    pub label: i64,
    /// The label's name.
    pub text: String,
}

impl ShardManifest {
    /// A manifest of `images`, in record order.
    pub fn new(shard: &str, images: Vec<ManifestImage>) -> Self {
        Self { format_version: MANIFEST_VERSION, shard: shard.to_string(), records: images.len() as u64, images }
    }

    /// The records (indices) made from the image `query` names: its
    /// SHA-256 (64 hex digits, any case), its source exactly, or the end of
    /// its source after a `/` (`roses/a.jpg` finds `/data/train/roses/a.jpg`).
    pub fn find(&self, query: &str) -> Vec<usize> {
        let hash = is_sha256(query).then(|| query.to_ascii_lowercase());
        self.images
            .iter()
            .enumerate()
            .filter(|(_, image)| match &hash {
                Some(h) => image.sha256 == *h,
                None => {
                    image.source == query || image.source.strip_suffix(query).is_some_and(|rest| rest.ends_with('/'))
                }
            })
            .map(|(i, _)| i)
            .collect()
    }
}

/// Whether `text` is a SHA-256 in hex.
pub fn is_sha256(text: &str) -> bool {
    text.len() == 64 && text.bytes().all(|b| b.is_ascii_hexdigit())
}

/// SHA-256 of `bytes`, lower-case hex.
pub fn sha256_hex(bytes: &[u8]) -> String {
    let digest = Sha256::digest(bytes);
    let mut hex = String::with_capacity(64);
    for b in digest {
        hex.push_str(&format!("{b:02x}"));
    }
    hex
}

#[cfg(test)]
mod tests {
    use super::*;

    fn image(source: &str, bytes: &[u8]) -> ManifestImage {
        ManifestImage {
            source: source.into(),
            size: bytes.len() as u64,
            sha256: sha256_hex(bytes),
            label: 1,
            text: "roses".into(),
        }
    }

    #[test]
    fn sha256_is_the_standard_one() {
        assert_eq!(sha256_hex(b"abc"), "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad");
    }

    #[test]
    fn images_are_found_by_hash_source_or_the_end_of_the_source() {
        let m = ShardManifest::new(
            "datasets/f/train-00000-of-00001",
            vec![image("/data/train/roses/a.jpg", b"a"), image("/data/train/roses/ba.jpg", b"b")],
        );
        assert_eq!(m.records, 2);
        assert_eq!(m.find("/data/train/roses/a.jpg"), vec![0]);
        assert_eq!(m.find("roses/a.jpg"), vec![0]);
        assert_eq!(m.find("a.jpg"), vec![0], "ba.jpg does not end in /a.jpg");
        assert_eq!(m.find(&sha256_hex(b"b").to_uppercase()), vec![1]);
        assert!(m.find("tulips/a.jpg").is_empty());
        let json = serde_json::to_string(&m).unwrap();
        assert_eq!(serde_json::from_str::<ShardManifest>(&json).unwrap(), m);
    }
}
