//! `tf.Example` records of images, with the feature keys of
//! `build_image_data.py` (written) and `image_processing.py` (read).

use inception_proto::tensorflow::{feature, BytesList, Example, Feature, Features, FloatList, Int64List};
use inception_proto::Message;
use std::collections::BTreeMap;

/// The encoded image (JPEG bytes).
pub const KEY_ENCODED: &str = "image/encoded";
/// Image height in pixels.
pub const KEY_HEIGHT: &str = "image/height";
/// Image width in pixels.
pub const KEY_WIDTH: &str = "image/width";
/// Always `RGB`.
pub const KEY_COLORSPACE: &str = "image/colorspace";
/// Always 3.
pub const KEY_CHANNELS: &str = "image/channels";
/// The class index: the label's line in labels.txt, from 1.
pub const KEY_LABEL: &str = "image/class/label";
/// The label's name.
pub const KEY_TEXT: &str = "image/class/text";
/// Always `JPEG`.
pub const KEY_FORMAT: &str = "image/format";
/// The source image's file name.
pub const KEY_FILENAME: &str = "image/filename";
/// Bounding boxes as `build_imagenet_data.py` writes them: one float list per
/// coordinate (normalised to [0, 1]) and the image's label once per box.
pub const KEY_BBOX_XMIN: &str = "image/object/bbox/xmin";
/// Each box's top edge (see [`KEY_BBOX_XMIN`]).
pub const KEY_BBOX_YMIN: &str = "image/object/bbox/ymin";
/// Each box's right edge.
pub const KEY_BBOX_XMAX: &str = "image/object/bbox/xmax";
/// Each box's bottom edge.
pub const KEY_BBOX_YMAX: &str = "image/object/bbox/ymax";
/// The image's label, once per box.
pub const KEY_BBOX_LABEL: &str = "image/object/bbox/label";

/// One bounding box, coordinates relative to the image size (0..1).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct BoundingBox {
    /// Left edge.
    pub xmin: f32,
    /// Top edge.
    pub ymin: f32,
    /// Right edge.
    pub xmax: f32,
    /// Bottom edge.
    pub ymax: f32,
}

/// One image as `build_image_data.py` stores it: RGB JPEG bytes plus metadata.
#[derive(Debug, Clone, PartialEq)]
pub struct ImageExample {
    /// The RGB JPEG bytes.
    pub encoded: Vec<u8>,
    /// Height in pixels.
    pub height: i64,
    /// Width in pixels.
    pub width: i64,
    /// Class index: the label's line in labels.txt, from 1 (0 is background).
    pub label: i64,
    /// The label's name.
    pub text: String,
    /// The source image's file name.
    pub filename: String,
}

/// Why bytes are not a usable image record.
#[derive(Debug, thiserror::Error)]
pub enum ExampleError {
    /// The bytes are not an `Example` protobuf.
    #[error("not a tf.Example: {0}")]
    Decode(#[from] inception_proto::prost::DecodeError),
    /// A required feature is absent; its key.
    #[error("tf.Example lacks feature {0}")]
    Missing(&'static str),
    /// A feature holds another kind of list than expected; its key.
    #[error("tf.Example feature {0} has the wrong type")]
    WrongType(&'static str),
    /// The four coordinate lists differ in length; their lengths.
    #[error("tf.Example bounding-box lists differ in length: {0}")]
    BoxLengths(String),
    /// More features or list values than any image record has; what and how many.
    #[error("tf.Example holds {count} {what}, more than the {max} an image record may have")]
    TooMany {
        /// `features` or `list values`.
        what: &'static str,
        /// How many it holds (counted up to one past the bound).
        count: usize,
        /// The bound.
        max: usize,
    },
}

/// Most features one record may have: build_image_data.py writes 9,
/// build_imagenet_data.py 14.
pub const MAX_EXAMPLE_FEATURES: usize = 1024;

/// Most values all lists of one record may hold together (bounding boxes
/// are 5 per box). Decoded, each value costs up to 24 bytes, however few
/// bytes it takes in the record: an empty bytes value is 2 bytes, so a
/// 100 MB record could otherwise become 1.2 GB of empty vectors.
pub const MAX_EXAMPLE_VALUES: usize = 1 << 20;

/// Decodes a `tf.Example` after counting its features and list values on
/// the wire, so that no record makes the decoder allocate far more than its
/// own size ([`MAX_EXAMPLE_FEATURES`], [`MAX_EXAMPLE_VALUES`]).
pub fn decode_example(bytes: &[u8]) -> Result<Example, ExampleError> {
    let mut counts = Counts::default();
    counts.example(bytes)?;
    Ok(Example::decode(bytes)?)
}

/// Features and values seen so far by a walk over an `Example`'s wire form.
/// Malformed bytes end the walk quietly: decoding then refuses them, having
/// allocated no more than the values before the fault.
#[derive(Default)]
struct Counts {
    features: usize,
    values: usize,
}

/// One protobuf field: its number and, for length-delimited ones, the payload.
enum Field<'a> {
    Scalar(u32),
    Delimited(u32, &'a [u8]),
}

fn fields(bytes: &[u8]) -> impl Iterator<Item = Field<'_>> {
    let mut rest = bytes;
    std::iter::from_fn(move || {
        let key = read_varint(&mut rest)?;
        let number = u32::try_from(key >> 3).ok()?;
        match key & 7 {
            0 => read_varint(&mut rest).map(|_| Field::Scalar(number)),
            1 => skip(&mut rest, 8).map(|()| Field::Scalar(number)),
            5 => skip(&mut rest, 4).map(|()| Field::Scalar(number)),
            2 => {
                let len = usize::try_from(read_varint(&mut rest)?).ok()?;
                let payload = rest.get(..len)?;
                rest = &rest[len..];
                Some(Field::Delimited(number, payload))
            }
            _ => None,
        }
    })
}

fn read_varint(bytes: &mut &[u8]) -> Option<u64> {
    let mut value = 0u64;
    for shift in (0..64).step_by(7) {
        let (&b, rest) = bytes.split_first()?;
        *bytes = rest;
        value |= u64::from(b & 0x7f) << shift;
        if b < 0x80 {
            return Some(value);
        }
    }
    None
}

fn skip(bytes: &mut &[u8], n: usize) -> Option<()> {
    *bytes = bytes.get(n..)?;
    Some(())
}

impl Counts {
    fn example(&mut self, bytes: &[u8]) -> Result<(), ExampleError> {
        for field in fields(bytes) {
            if let Field::Delimited(1, features) = field {
                for entry in fields(features) {
                    if let Field::Delimited(1, entry) = entry {
                        self.feature_entry(entry)?;
                    }
                }
            }
        }
        Ok(())
    }

    fn feature_entry(&mut self, entry: &[u8]) -> Result<(), ExampleError> {
        self.features += 1;
        if self.features > MAX_EXAMPLE_FEATURES {
            return Err(ExampleError::TooMany { what: "features", count: self.features, max: MAX_EXAMPLE_FEATURES });
        }
        for field in fields(entry) {
            if let Field::Delimited(2, feature) = field {
                for list in fields(feature) {
                    if let Field::Delimited(kind @ 1..=3, list) = list {
                        self.list_values(kind, list)?;
                    }
                }
            }
        }
        Ok(())
    }

    /// Values of a bytes (1), float (2) or int64 (3) list, packed or not.
    fn list_values(&mut self, kind: u32, list: &[u8]) -> Result<(), ExampleError> {
        for field in fields(list) {
            self.values += match (kind, field) {
                (_, Field::Scalar(1)) | (1, Field::Delimited(1, _)) => 1,
                (2, Field::Delimited(1, packed)) => packed.len() / 4,
                (3, Field::Delimited(1, packed)) => packed.iter().filter(|&&b| b < 0x80).count(),
                _ => 0,
            };
            if self.values > MAX_EXAMPLE_VALUES {
                return Err(ExampleError::TooMany { what: "list values", count: self.values, max: MAX_EXAMPLE_VALUES });
            }
        }
        Ok(())
    }
}

fn bytes_feature(v: Vec<u8>) -> Feature {
    Feature { kind: Some(feature::Kind::BytesList(BytesList { value: vec![v] })) }
}

fn int64_feature(v: i64) -> Feature {
    Feature { kind: Some(feature::Kind::Int64List(Int64List { value: vec![v] })) }
}

fn float_list_feature(v: Vec<f32>) -> Feature {
    Feature { kind: Some(feature::Kind::FloatList(FloatList { value: v })) }
}

impl ImageExample {
    /// Serialises with the nine keys of `build_image_data.py::_convert_to_example`.
    pub fn to_bytes(&self) -> Vec<u8> {
        self.to_bytes_with_boxes(&[])
    }

    /// As [`ImageExample::to_bytes`], plus `build_imagenet_data.py`'s five
    /// bounding-box features when `boxes` is not empty.
    pub fn to_bytes_with_boxes(&self, boxes: &[BoundingBox]) -> Vec<u8> {
        self.clone().into_bytes_with_boxes(boxes)
    }

    /// As [`ImageExample::to_bytes_with_boxes`], moving the image bytes
    /// into the message instead of copying them.
    pub fn into_bytes_with_boxes(self, boxes: &[BoundingBox]) -> Vec<u8> {
        let mut f = BTreeMap::new();
        f.insert(KEY_HEIGHT.to_string(), int64_feature(self.height));
        f.insert(KEY_WIDTH.to_string(), int64_feature(self.width));
        f.insert(KEY_COLORSPACE.to_string(), bytes_feature(b"RGB".to_vec()));
        f.insert(KEY_CHANNELS.to_string(), int64_feature(3));
        f.insert(KEY_LABEL.to_string(), int64_feature(self.label));
        f.insert(KEY_TEXT.to_string(), bytes_feature(self.text.as_bytes().to_vec()));
        f.insert(KEY_FORMAT.to_string(), bytes_feature(b"JPEG".to_vec()));
        f.insert(KEY_FILENAME.to_string(), bytes_feature(self.filename.as_bytes().to_vec()));
        f.insert(KEY_ENCODED.to_string(), bytes_feature(self.encoded));
        if !boxes.is_empty() {
            let list = |g: fn(&BoundingBox) -> f32| float_list_feature(boxes.iter().map(g).collect());
            f.insert(KEY_BBOX_XMIN.to_string(), list(|b| b.xmin));
            f.insert(KEY_BBOX_YMIN.to_string(), list(|b| b.ymin));
            f.insert(KEY_BBOX_XMAX.to_string(), list(|b| b.xmax));
            f.insert(KEY_BBOX_YMAX.to_string(), list(|b| b.ymax));
            f.insert(
                KEY_BBOX_LABEL.to_string(),
                Feature { kind: Some(feature::Kind::Int64List(Int64List { value: vec![self.label; boxes.len()] })) },
            );
        }
        Example { features: Some(Features { feature: f }) }.encode_to_vec()
    }
}

/// What training and evaluation read from a record (`parse_example_proto`).
#[derive(Debug, Clone, PartialEq)]
pub struct ParsedImage {
    /// The encoded image, as stored.
    pub encoded: Vec<u8>,
    /// Class index (0 is background).
    pub label: i64,
    /// The label's name; empty when the record has none.
    pub text: String,
}

/// Reads a record's encoded image, label and label text; only the
/// text may be absent.
pub fn parse_image_example(bytes: &[u8]) -> Result<ParsedImage, ExampleError> {
    let example = decode_example(bytes)?;
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
    let text = take_bytes(KEY_TEXT)?.map(|b| String::from_utf8_lossy(&b).into_owned()).unwrap_or_default();
    let label = match features.remove(KEY_LABEL).and_then(|f| f.kind) {
        Some(feature::Kind::Int64List(l)) => *l.value.first().ok_or(ExampleError::Missing(KEY_LABEL))?,
        Some(_) => return Err(ExampleError::WrongType(KEY_LABEL)),
        None => return Err(ExampleError::Missing(KEY_LABEL)),
    };
    Ok(ParsedImage { encoded, label, text })
}

/// The bounding boxes of a record (`image_processing.py` reads the four
/// coordinate lists as `VarLenFeature(float32)`); none when absent.
pub fn parse_bounding_boxes(bytes: &[u8]) -> Result<Vec<BoundingBox>, ExampleError> {
    let example = decode_example(bytes)?;
    let features = example.features.map(|f| f.feature).unwrap_or_default();
    let floats = |key: &'static str| -> Result<Vec<f32>, ExampleError> {
        match features.get(key).and_then(|f| f.kind.as_ref()) {
            None => Ok(Vec::new()),
            Some(feature::Kind::FloatList(l)) => Ok(l.value.clone()),
            Some(_) => Err(ExampleError::WrongType(key)),
        }
    };
    let (xmin, ymin, xmax, ymax) =
        (floats(KEY_BBOX_XMIN)?, floats(KEY_BBOX_YMIN)?, floats(KEY_BBOX_XMAX)?, floats(KEY_BBOX_YMAX)?);
    if ![ymin.len(), xmax.len(), ymax.len()].iter().all(|&n| n == xmin.len()) {
        return Err(ExampleError::BoxLengths(format!(
            "xmin {}, ymin {}, xmax {}, ymax {}",
            xmin.len(),
            ymin.len(),
            xmax.len(),
            ymax.len()
        )));
    }
    Ok((0..xmin.len()).map(|i| BoundingBox { xmin: xmin[i], ymin: ymin[i], xmax: xmax[i], ymax: ymax[i] }).collect())
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
    fn bounding_boxes_round_trip_with_their_labels() {
        let ex =
            ImageExample { encoded: vec![1], height: 4, width: 4, label: 2, text: "b".into(), filename: "f".into() };
        assert!(parse_bounding_boxes(&ex.to_bytes()).unwrap().is_empty());
        let boxes = [
            BoundingBox { xmin: 0.1, ymin: 0.2, xmax: 0.5, ymax: 0.9 },
            BoundingBox { xmin: 0.0, ymin: 0.0, xmax: 1.0, ymax: 1.0 },
        ];
        let bytes = ex.to_bytes_with_boxes(&boxes);
        assert_eq!(parse_bounding_boxes(&bytes).unwrap(), boxes.to_vec());
        assert_eq!(parse_image_example(&bytes).unwrap().label, 2);
        let raw = Example::decode(bytes.as_slice()).unwrap().features.unwrap().feature;
        assert_eq!(raw.len(), 14);
        match raw[KEY_BBOX_LABEL].kind.as_ref() {
            Some(feature::Kind::Int64List(l)) => assert_eq!(l.value, vec![2, 2]),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn missing_label_is_an_error() {
        let raw = Example {
            features: Some(Features { feature: BTreeMap::from([(KEY_ENCODED.to_string(), bytes_feature(vec![1]))]) }),
        }
        .encode_to_vec();
        let err = parse_image_example(&raw).unwrap_err();
        assert!(err.to_string().contains("image/class/label"), "{err}");
        assert!(parse_image_example(b"\xff\xff\xff").is_err());
    }

    /// A 100 MB record of 50 million empty bytes values used to take 1.6 GB
    /// to decode (issue 16); it is refused from its wire form. Scaled down:
    /// one value past the bound, in each kind of list.
    #[test]
    fn records_with_too_many_values_or_features_are_refused_before_decoding() {
        let n = MAX_EXAMPLE_VALUES + 1;
        let lists = [
            feature::Kind::BytesList(BytesList { value: vec![Vec::new(); n] }),
            feature::Kind::Int64List(Int64List { value: vec![0; n] }),
            feature::Kind::FloatList(FloatList { value: vec![0.0; n] }),
        ];
        let sample =
            ImageExample { encoded: vec![1], height: 1, width: 1, label: 2, text: "a".into(), filename: "f".into() };
        for list in lists {
            let mut raw = Example::decode(sample.to_bytes().as_slice()).unwrap();
            raw.features.as_mut().unwrap().feature.insert("flood".into(), Feature { kind: Some(list) });
            let err = parse_image_example(&raw.encode_to_vec()).unwrap_err();
            assert!(matches!(err, ExampleError::TooMany { what: "list values", .. }), "{err}");
        }
        let mut raw = Example::decode(sample.to_bytes().as_slice()).unwrap();
        for i in 0..MAX_EXAMPLE_FEATURES {
            raw.features.as_mut().unwrap().feature.insert(format!("f{i}"), int64_feature(1));
        }
        let err = parse_image_example(&raw.encode_to_vec()).unwrap_err();
        assert!(matches!(err, ExampleError::TooMany { what: "features", .. }), "{err}");
        // Within the bounds: decoded as before.
        assert_eq!(parse_image_example(&sample.to_bytes()).unwrap().label, 2);
    }
}
