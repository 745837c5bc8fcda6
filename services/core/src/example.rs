//! `tf.Example` records of images, with the feature keys of
//! `build_image_data.py` (written) and `image_processing.py` (read).

use inception_proto::tensorflow::{feature, BytesList, Example, Feature, Features, Int64List};
use inception_proto::Message;
use std::collections::BTreeMap;

pub const KEY_ENCODED: &str = "image/encoded";
pub const KEY_HEIGHT: &str = "image/height";
pub const KEY_WIDTH: &str = "image/width";
pub const KEY_COLORSPACE: &str = "image/colorspace";
pub const KEY_CHANNELS: &str = "image/channels";
pub const KEY_LABEL: &str = "image/class/label";
pub const KEY_TEXT: &str = "image/class/text";
pub const KEY_FORMAT: &str = "image/format";
pub const KEY_FILENAME: &str = "image/filename";

/// One image as `build_image_data.py` stores it: RGB JPEG bytes plus metadata.
#[derive(Debug, Clone, PartialEq)]
pub struct ImageExample {
    pub encoded: Vec<u8>,
    pub height: i64,
    pub width: i64,
    pub label: i64,
    pub text: String,
    pub filename: String,
}

#[derive(Debug, thiserror::Error)]
pub enum ExampleError {
    #[error("not a tf.Example: {0}")]
    Decode(#[from] inception_proto::prost::DecodeError),
    #[error("tf.Example lacks feature {0}")]
    Missing(&'static str),
    #[error("tf.Example feature {0} has the wrong type")]
    WrongType(&'static str),
}

fn bytes_feature(v: Vec<u8>) -> Feature {
    Feature {
        kind: Some(feature::Kind::BytesList(BytesList { value: vec![v] })),
    }
}

fn int64_feature(v: i64) -> Feature {
    Feature {
        kind: Some(feature::Kind::Int64List(Int64List { value: vec![v] })),
    }
}

impl ImageExample {
    /// Serialises with the nine keys of `build_image_data.py::_convert_to_example`.
    pub fn to_bytes(&self) -> Vec<u8> {
        let mut f = BTreeMap::new();
        f.insert(KEY_HEIGHT.to_string(), int64_feature(self.height));
        f.insert(KEY_WIDTH.to_string(), int64_feature(self.width));
        f.insert(KEY_COLORSPACE.to_string(), bytes_feature(b"RGB".to_vec()));
        f.insert(KEY_CHANNELS.to_string(), int64_feature(3));
        f.insert(KEY_LABEL.to_string(), int64_feature(self.label));
        f.insert(KEY_TEXT.to_string(), bytes_feature(self.text.as_bytes().to_vec()));
        f.insert(KEY_FORMAT.to_string(), bytes_feature(b"JPEG".to_vec()));
        f.insert(
            KEY_FILENAME.to_string(),
            bytes_feature(self.filename.as_bytes().to_vec()),
        );
        f.insert(KEY_ENCODED.to_string(), bytes_feature(self.encoded.clone()));
        Example {
            features: Some(Features { feature: f }),
        }
        .encode_to_vec()
    }
}

/// What training and evaluation read from a record (`parse_example_proto`).
#[derive(Debug, Clone, PartialEq)]
pub struct ParsedImage {
    pub encoded: Vec<u8>,
    pub label: i64,
    pub text: String,
}

pub fn parse_image_example(bytes: &[u8]) -> Result<ParsedImage, ExampleError> {
    let example = Example::decode(bytes)?;
    let mut features = example.features.map(|f| f.feature).unwrap_or_default();
    let mut take_bytes = |key: &'static str| -> Result<Option<Vec<u8>>, ExampleError> {
        match features.remove(key).and_then(|f| f.kind) {
            None => Ok(None),
            Some(feature::Kind::BytesList(mut l)) if !l.value.is_empty() => Ok(Some(l.value.swap_remove(0))),
            Some(feature::Kind::BytesList(_)) => Ok(None),
            Some(_) => Err(ExampleError::WrongType(key)),
        }
    };
    let encoded = take_bytes(KEY_ENCODED)?.ok_or(ExampleError::Missing(KEY_ENCODED))?;
    let text = take_bytes(KEY_TEXT)?
        .map(|b| String::from_utf8_lossy(&b).into_owned())
        .unwrap_or_default();
    let label = match features.remove(KEY_LABEL).and_then(|f| f.kind) {
        Some(feature::Kind::Int64List(l)) => *l.value.first().ok_or(ExampleError::Missing(KEY_LABEL))?,
        Some(_) => return Err(ExampleError::WrongType(KEY_LABEL)),
        None => return Err(ExampleError::Missing(KEY_LABEL)),
    };
    Ok(ParsedImage {
        encoded,
        label,
        text,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_keeps_what_training_reads() {
        let ex = ImageExample {
            encoded: vec![0xff, 0xd8, 1, 2, 3],
            height: 10,
            width: 20,
            label: 3,
            text: "roses".into(),
            filename: "a.jpg".into(),
        };
        let bytes = ex.to_bytes();
        let parsed = parse_image_example(&bytes).unwrap();
        assert_eq!(parsed.encoded, ex.encoded);
        assert_eq!(parsed.label, 3);
        assert_eq!(parsed.text, "roses");
        let raw = Example::decode(bytes.as_slice()).unwrap();
        let keys: Vec<_> = raw.features.unwrap().feature.into_keys().collect();
        assert_eq!(keys.len(), 9);
        assert!(keys.contains(&"image/colorspace".to_string()));
    }

    #[test]
    fn missing_label_is_an_error() {
        let raw = Example {
            features: Some(Features {
                feature: BTreeMap::from([(KEY_ENCODED.to_string(), bytes_feature(vec![1]))]),
            }),
        }
        .encode_to_vec();
        let err = parse_image_example(&raw).unwrap_err();
        assert!(err.to_string().contains("image/class/label"), "{err}");
        assert!(parse_image_example(b"\xff\xff\xff").is_err());
    }
}
