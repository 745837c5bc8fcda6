//! Property tests of every decoder of outside bytes in `inception-core`
//! (issue 16: no single bad input stops a service): TFRecord framing,
//! `tf.Example` records, batch objects, the NATS control messages and the
//! shard check, object keys named by messages, and settings values.
//!
//! Each property states exact behaviour (a round trip, the error a given
//! input must get), so that it can fail. A counting allocator measures what
//! a decoder allocates while it runs, so "refused before allocating" is
//! checked too, not only "does not panic".

use inception_core::announcements::{accept_train_shard, ShardRefused};
use inception_core::batch::Batch;
use inception_core::example::{
    self, parse_bounding_boxes, parse_image_example, BoundingBox, ExampleError, ImageExample,
};
use inception_core::limits::MAX_SHARD_RECORDS;
use inception_core::nats::{decode_control, ControlMessageError, MAX_CONTROL_MESSAGE_BYTES};
use inception_core::settings::{Settings, DEFAULT_TOML, ENV_PREFIX};
use inception_core::tfrecord::{self, TfRecordError, FRAMING_BYTES};
use inception_proto::pipeline::{BatchReady, CheckpointReady, EvalResult, ShardReady};
use inception_proto::tensorflow::{feature, BytesList, Example, Feature, Features, FloatList, Int64List};
use inception_proto::Message;
use proptest::prelude::*;
use std::collections::BTreeMap;
use std::sync::Mutex;

#[path = "support/counting_alloc.rs"]
mod counting_alloc;
use counting_alloc::peak_during;

/// The most a decoder may allocate for `len` input bytes: a small multiple
/// (tree nodes, vectors doubling) plus a constant. Any size taken from a
/// declared length or count instead of the bytes present is far above it.
fn justified(len: usize) -> usize {
    64 * len + (64 << 10)
}

/// The seed of every property test's cases unless PROPTEST_RNG_SEED is set.
const PROPERTY_SEED: u64 = 0x1ce9_7107;

fn config(cases: u32) -> ProptestConfig {
    // A fixed seed keeps CI repeatable; PROPTEST_RNG_SEED=<n> explores others.
    let defaults = ProptestConfig::default();
    let rng_seed = match defaults.rng_seed {
        proptest::test_runner::RngSeed::Random => proptest::test_runner::RngSeed::Fixed(PROPERTY_SEED),
        chosen => chosen,
    };
    ProptestConfig { cases, failure_persistence: None, rng_seed, ..defaults }
}

/// Bytes that are sometimes a prefix of `valid` with changes, sometimes noise.
fn mutated(valid: Vec<u8>) -> impl Strategy<Value = Vec<u8>> {
    let len = valid.len().max(1);
    // The cut and the tail are each left out half the time, so that many
    // cases are nearly valid and reach deep into the decoder.
    let cuts = prop_oneof![Just(len), 0..=len];
    let tails = prop_oneof![Just(Vec::new()), prop::collection::vec(any::<u8>(), 0..16)];
    (prop::collection::vec((0..len, any::<u8>()), 0..4), cuts, tails).prop_map(move |(edits, cut, tail)| {
        let mut v = valid.clone();
        for (at, b) in edits {
            if at < v.len() {
                v[at] = b;
            }
        }
        v.truncate(cut);
        v.extend(tail);
        v
    })
}

// ---------------------------------------------------------------------------
// TFRecord framing.

fn framed(records: &[Vec<u8>]) -> Vec<u8> {
    let mut out = Vec::new();
    for r in records {
        tfrecord::write_record(&mut out, r);
    }
    out
}

/// Start offsets of each record of `records` once framed.
fn starts(records: &[Vec<u8>]) -> Vec<usize> {
    records
        .iter()
        .scan(0, |at, r| {
            let s = *at;
            *at += FRAMING_BYTES + r.len();
            Some(s)
        })
        .collect()
}

fn record_lists() -> impl Strategy<Value = Vec<Vec<u8>>> {
    prop::collection::vec(prop::collection::vec(any::<u8>(), 0..48), 0..6)
}

proptest! {
    #![proptest_config(config(256))]

    /// Any bytes: every item is Ok or Err, nothing follows an Err, each Ok
    /// item is the data at its place in the file, no more bytes are taken
    /// than there are, and iterating allocates nothing.
    #[test]
    fn tfrecord_any_bytes_yield_records_then_at_most_one_error(
        bytes in prop_oneof![
            prop::collection::vec(any::<u8>(), 0..256),
            record_lists().prop_flat_map(|r| mutated(framed(&r))),
        ]
    ) {
        let (items, peak) = peak_during(|| {
            let mut n = 0usize;
            let mut out = [const { None }; 64];
            for item in tfrecord::records(&bytes) {
                if n < out.len() {
                    out[n] = Some(item.map(|d| (d.as_ptr() as usize, d.len())));
                }
                n += 1;
            }
            (n, out)
        });
        prop_assert_eq!(peak, 0, "iterating over records allocated");
        let (n, items) = items;
        prop_assert!(n <= items.len());
        prop_assert!(n <= bytes.len() / FRAMING_BYTES + 1);
        let mut at = 0usize;
        for (i, item) in items.iter().take(n).enumerate() {
            match item.as_ref().unwrap() {
                Ok((ptr, len)) => {
                    prop_assert_eq!(*ptr, bytes.as_ptr() as usize + at + 12, "record {} is not where it was framed", i);
                    at += FRAMING_BYTES + len;
                    prop_assert!(at <= bytes.len());
                }
                Err(e) => {
                    prop_assert_eq!(i, n - 1, "an item after the error {:?}", e);
                    let offset = match e {
                        TfRecordError::TruncatedHeader { offset }
                        | TfRecordError::LengthCrc { offset }
                        | TfRecordError::DataCrc { offset }
                        | TfRecordError::TruncatedData { offset, .. } => *offset,
                    };
                    prop_assert_eq!(offset, at, "the error names another offset than the record's");
                    if bytes.len() - at < 12 {
                        prop_assert_eq!(e, &TfRecordError::TruncatedHeader { offset: at });
                    }
                }
            }
        }
        if n == 0 {
            prop_assert!(bytes.is_empty());
        }
    }

    /// Framed records read back as they were written, and nothing else.
    #[test]
    fn tfrecord_framed_records_round_trip(records in record_lists()) {
        let bytes = framed(&records);
        prop_assert_eq!(bytes.len(), records.iter().map(|r| r.len() + FRAMING_BYTES).sum::<usize>());
        let back: Vec<&[u8]> = tfrecord::records(&bytes).collect::<Result<_, _>>().unwrap();
        prop_assert_eq!(back, records.iter().map(Vec::as_slice).collect::<Vec<_>>());
    }

    /// Changing any one byte of a framed file is detected at the record it
    /// falls in (CRC-32C catches every burst of up to 32 bits): the records
    /// before it are read unchanged, then the length's or the data's
    /// checksum fails, and nothing more is read.
    #[test]
    fn tfrecord_any_single_byte_change_is_detected_at_its_record(
        records in prop::collection::vec(prop::collection::vec(any::<u8>(), 0..40), 1..6),
        at in any::<prop::sample::Index>(),
        flip in 1u8..=255,
    ) {
        let mut bytes = framed(&records);
        let pos = at.index(bytes.len());
        bytes[pos] ^= flip;
        let starts = starts(&records);
        let k = starts.iter().rposition(|&s| s <= pos).unwrap();
        let got: Vec<_> = tfrecord::records(&bytes).collect();
        prop_assert_eq!(got.len(), k + 1);
        for (i, r) in got[..k].iter().enumerate() {
            prop_assert_eq!(r.as_ref().ok().copied(), Some(records[i].as_slice()));
        }
        let expected = if pos - starts[k] < 12 {
            TfRecordError::LengthCrc { offset: starts[k] }
        } else {
            TfRecordError::DataCrc { offset: starts[k] }
        };
        prop_assert_eq!(got[k].clone(), Err(expected));
    }

    /// A file cut anywhere yields the whole records before the cut, then
    /// (unless the cut falls between records) one truncation error.
    #[test]
    fn tfrecord_a_cut_file_keeps_the_whole_records_before_the_cut(
        records in prop::collection::vec(prop::collection::vec(any::<u8>(), 0..40), 1..6),
        at in any::<prop::sample::Index>(),
    ) {
        let bytes = framed(&records);
        let cut = at.index(bytes.len());
        let starts = starts(&records);
        let whole = starts.iter().zip(&records).take_while(|(s, r)| *s + FRAMING_BYTES + r.len() <= cut).count();
        let got: Vec<_> = tfrecord::records(&bytes[..cut]).collect();
        for (i, r) in got.iter().take(whole).enumerate() {
            prop_assert_eq!(r.as_ref().ok().copied(), Some(records[i].as_slice()));
        }
        if starts.contains(&cut) || cut == 0 {
            prop_assert_eq!(got.len(), whole);
        } else {
            prop_assert_eq!(got.len(), whole + 1);
            let last = got[whole].clone().unwrap_err();
            let offset = starts[whole];
            if cut - offset < 12 {
                prop_assert_eq!(last, TfRecordError::TruncatedHeader { offset });
            } else {
                prop_assert_eq!(
                    last,
                    TfRecordError::TruncatedData { offset, length: records[whole].len() as u64, available: cut - offset - 12 }
                );
            }
        }
    }

    /// A length (with a valid checksum) beyond the bytes present is
    /// TruncatedData with the exact numbers, and costs no allocation.
    #[test]
    fn tfrecord_a_declared_length_beyond_the_bytes_is_an_error_not_an_allocation(
        present in 0usize..64,
        over in prop_oneof![1u64..8, any::<u64>()],
    ) {
        let length = (present.saturating_sub(4) as u64).saturating_add(over.max(1));
        // The claimed length with its valid checksum, then `present` bytes.
        let mut header = length.to_le_bytes().to_vec();
        header.extend_from_slice(&crc32c_masked(&length.to_le_bytes()).to_le_bytes());
        header.extend(std::iter::repeat_n(0xAB, present));
        let (first, peak) = peak_during(|| tfrecord::records(&header).next());
        prop_assert_eq!(peak, 0);
        prop_assert_eq!(first, Some(Err(TfRecordError::TruncatedData { offset: 0, length, available: present })));
    }
}

/// CRC-32C (Castagnoli), bit by bit, masked as TFRecord does: an
/// independent implementation, checked against `write_record` below.
fn crc32c_masked(bytes: &[u8]) -> u32 {
    let mut crc = !0u32;
    for &b in bytes {
        crc ^= u32::from(b);
        for _ in 0..8 {
            crc = if crc & 1 == 1 { (crc >> 1) ^ 0x82F6_3B78 } else { crc >> 1 };
        }
    }
    (!crc).rotate_right(15).wrapping_add(0xa282_ead8)
}

#[test]
fn the_independent_crc_matches_write_record() {
    for n in [0usize, 1, 5, 300, 65_536] {
        let mut out = Vec::new();
        tfrecord::write_record(&mut out, &vec![7u8; n]);
        assert_eq!(u32::from_le_bytes(out[8..12].try_into().unwrap()), crc32c_masked(&(n as u64).to_le_bytes()));
        assert_eq!(u32::from_le_bytes(out[12 + n..].try_into().unwrap()), crc32c_masked(&vec![7u8; n]));
    }
}

// ---------------------------------------------------------------------------
// tf.Example records.

fn image_examples() -> impl Strategy<Value = ImageExample> {
    (
        prop::collection::vec(any::<u8>(), 0..200),
        any::<i64>(),
        any::<i64>(),
        any::<i64>(),
        any::<String>(),
        any::<String>(),
    )
        .prop_map(|(encoded, height, width, label, text, filename)| ImageExample {
            encoded,
            height,
            width,
            label,
            text,
            filename,
        })
}

fn boxes() -> impl Strategy<Value = Vec<BoundingBox>> {
    prop::collection::vec(
        (any::<f32>(), any::<f32>(), any::<f32>(), any::<f32>()).prop_map(|(xmin, ymin, xmax, ymax)| BoundingBox {
            xmin,
            ymin,
            xmax,
            ymax,
        }),
        0..5,
    )
}

fn bits(b: &BoundingBox) -> [u32; 4] {
    [b.xmin.to_bits(), b.ymin.to_bits(), b.xmax.to_bits(), b.ymax.to_bits()]
}

/// A varint, as protobuf writes one.
fn varint(mut v: u64, out: &mut Vec<u8>) {
    while v >= 0x80 {
        out.push((v as u8) | 0x80);
        v >>= 7;
    }
    out.push(v as u8);
}

/// A length-delimited field: tag, length, `body`.
fn delimited(field: u32, body: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    varint(u64::from(field << 3 | 2), &mut out);
    varint(body.len() as u64, &mut out);
    out.extend_from_slice(body);
    out
}

/// `Example { features { feature { key: value } } }` with `value` the
/// encoded `Feature` bytes given (possibly malformed), every enclosing
/// length right.
fn example_with_feature_bytes(key: &str, feature_bytes: &[u8]) -> Vec<u8> {
    let mut entry = delimited(1, key.as_bytes());
    entry.extend(delimited(2, feature_bytes));
    let features = delimited(1, &entry);
    delimited(1, &features)
}

fn example_of(features: BTreeMap<String, Feature>) -> Vec<u8> {
    Example { features: Some(Features { feature: features }) }.encode_to_vec()
}

proptest! {
    #![proptest_config(config(256))]

    /// Any bytes (noise, or a real record changed): parsing never panics
    /// and allocates no more than the bytes justify.
    #[test]
    fn example_any_bytes_never_panic(
        bytes in prop_oneof![
            prop::collection::vec(any::<u8>(), 0..256),
            (image_examples(), boxes()).prop_flat_map(|(e, b)| mutated(e.to_bytes_with_boxes(&b))),
        ]
    ) {
        let ((image, boxes), peak) = peak_during(|| (parse_image_example(&bytes).is_ok(), parse_bounding_boxes(&bytes).is_ok()));
        prop_assert!(peak <= justified(bytes.len()), "{} bytes allocated for {} input bytes", peak, bytes.len());
        let _ = (image, boxes);
    }

    /// What ingest writes is what training reads: image bytes, label, text
    /// and the boxes (bit for bit, NaN included).
    #[test]
    fn example_encode_then_parse_round_trips(ex in image_examples(), boxes in boxes()) {
        let bytes = ex.to_bytes_with_boxes(&boxes);
        let parsed = parse_image_example(&bytes).unwrap();
        prop_assert_eq!(&parsed.encoded, &ex.encoded);
        prop_assert_eq!(parsed.label, ex.label);
        prop_assert_eq!(&parsed.text, &ex.text);
        let back = parse_bounding_boxes(&bytes).unwrap();
        prop_assert_eq!(back.iter().map(bits).collect::<Vec<_>>(), boxes.iter().map(bits).collect::<Vec<_>>());
    }

    /// A feature of another kind than its key needs is refused with that key.
    #[test]
    fn example_a_feature_of_the_wrong_kind_is_refused_with_its_key(
        ex in image_examples(),
        which in 0usize..3,
        kind in 0usize..2,
    ) {
        let mut raw = Example::decode(ex.to_bytes().as_slice()).unwrap().features.unwrap().feature;
        let key = [example::KEY_ENCODED, example::KEY_TEXT, example::KEY_LABEL][which];
        let wrong = if key == example::KEY_LABEL {
            [feature::Kind::BytesList(BytesList { value: vec![b"3".to_vec()] }), feature::Kind::FloatList(FloatList { value: vec![3.0] })]
        } else {
            [feature::Kind::Int64List(Int64List { value: vec![3] }), feature::Kind::FloatList(FloatList { value: vec![3.0] })]
        };
        raw.insert(key.to_string(), Feature { kind: Some(wrong[kind].clone()) });
        let err = parse_image_example(&example_of(raw)).unwrap_err();
        prop_assert!(matches!(err, ExampleError::WrongType(k) if k == key), "{err:?}");
    }

    /// A list whose declared length (of a bytes value, or of a packed
    /// int64/float list) runs past the record is refused by decoding,
    /// before anything of that size is allocated.
    #[test]
    fn example_a_declared_length_beyond_the_record_is_refused_before_allocating(
        kind in 0u32..3,
        declared in prop_oneof![Just(u64::MAX >> 1), 1u64 << 20..1u64 << 62, 65u64..4096],
        present in prop::collection::vec(any::<u8>(), 0..64),
        key in prop::sample::select(vec![example::KEY_ENCODED, example::KEY_LABEL, example::KEY_BBOX_XMIN]),
    ) {
        // Feature { bytes_list = 1 | float_list = 2 | int64_list = 3 }, each
        // with its repeated `value = 1`; packed for the numbers.
        let mut list = Vec::new();
        varint(u64::from(1u32 << 3 | 2), &mut list);
        varint(declared, &mut list);
        list.extend_from_slice(&present);
        let feature = delimited(kind + 1, &list);
        let bytes = example_with_feature_bytes(key, &feature);
        let ((image, boxes), peak) = peak_during(|| (parse_image_example(&bytes), parse_bounding_boxes(&bytes)));
        prop_assert!(matches!(image, Err(ExampleError::Decode(_))), "{image:?}");
        prop_assert!(matches!(boxes, Err(ExampleError::Decode(_))), "{boxes:?}");
        prop_assert!(peak <= justified(bytes.len()), "{} bytes allocated for {} input bytes", peak, bytes.len());
    }
}

// ---------------------------------------------------------------------------
// Batch objects.

fn batches() -> impl Strategy<Value = Batch> {
    (1u32..6, 1usize..5).prop_flat_map(|(size, n)| {
        let pixels = n * size as usize * size as usize * 3;
        (prop::collection::vec(any::<u8>(), pixels), prop::collection::vec(any::<i64>(), n))
            .prop_map(move |(images, labels)| Batch { image_size: size, images, labels })
    })
}

/// A safetensors file with `header` (JSON) and `data`.
fn safetensors(header: &serde_json::Value, data: &[u8]) -> Vec<u8> {
    let header = header.to_string();
    let mut out = (header.len() as u64).to_le_bytes().to_vec();
    out.extend_from_slice(header.as_bytes());
    out.extend_from_slice(data);
    out
}

/// A number as a header may give it: small, near a product's overflow, or any.
fn header_number() -> impl Strategy<Value = u64> {
    prop_oneof![4 => 0u64..6, 1 => Just(1u64 << 62), 1 => Just(u64::MAX), 1 => any::<u64>()]
}

/// Shapes, label count, offsets and data of a batch header: anything, or
/// a consistent one with at most one value moved by one (so that both
/// acceptance and each refusal are reached).
#[allow(clippy::type_complexity)]
fn batch_headers() -> impl Strategy<Value = (u64, u64, u64, u64, u64, [u64; 4], Vec<u8>)> {
    let anything = (
        (header_number(), header_number(), header_number(), prop_oneof![Just(3u64), header_number()]),
        header_number(),
        prop::collection::vec(header_number(), 4),
        prop::collection::vec(any::<u8>(), 0..160),
    )
        .prop_map(|((b, h, w, c), lb, o, data)| (b, h, w, c, lb, [o[0], o[1], o[2], o[3]], data));
    let near =
        (1u64..4, 1u64..5, 0usize..8, prop_oneof![3 => Just(None), 1 => (0usize..10, any::<bool>()).prop_map(Some)])
            .prop_flat_map(|(b, s, slack, nudge)| {
                let need = (b * s * s * 3 + 8 * b) as usize;
                (Just((b, s, nudge)), prop::collection::vec(any::<u8>(), need + slack))
            })
            .prop_map(|((b, s, nudge), mut data)| {
                let img = b * s * s * 3;
                let mut v = [b, s, s, 3, b, 0, img, img, img + 8 * b];
                if let Some((i, up)) = nudge {
                    if i == 9 {
                        data.truncate(data.len().min((img + 8 * b) as usize).saturating_sub(1));
                    } else {
                        v[i] = if up { v[i] + 1 } else { v[i].saturating_sub(1) };
                    }
                }
                (v[0], v[1], v[2], v[3], v[4], [v[5], v[6], v[7], v[8]], data)
            });
    prop_oneof![anything, near]
}

proptest! {
    #![proptest_config(config(256))]

    /// Any bytes (noise, or a real batch changed): never a panic, never
    /// more allocated than the bytes justify, and what is accepted is
    /// consistent (B x S x S x 3 pixels, B labels, at least one image).
    #[test]
    fn batch_any_bytes_never_panic_nor_overallocate(
        bytes in prop_oneof![
            prop::collection::vec(any::<u8>(), 0..256),
            batches().prop_flat_map(|b| mutated(b.to_bytes())),
        ]
    ) {
        let (got, peak) = peak_during(|| Batch::from_bytes(&bytes));
        prop_assert!(peak <= justified(bytes.len()), "{} bytes allocated for {} input bytes", peak, bytes.len());
        if let Ok(b) = got {
            let s = b.image_size as usize;
            prop_assert!(!b.is_empty() && s > 0);
            prop_assert_eq!(b.images.len(), b.len() * s * s * 3);
        }
    }

    /// What a preprocess worker stores is what the trainer reads.
    #[test]
    fn batch_to_bytes_then_from_bytes_round_trips(batch in batches()) {
        let bytes = batch.to_bytes();
        prop_assert_eq!(Batch::from_bytes(&bytes).unwrap(), batch);
    }

    /// Any header of the two tensors over any data: accepted exactly when
    /// the shapes are [B, S, S, 3] and [B] with B, S > 0, the two tensors
    /// tile the data (in offset order: from 0, one after the other, to the
    /// end, as the safetensors format requires), and the sizes they span are
    /// what the shapes need (computed here in 128 bits). A header claiming more images or pixels than are
    /// present is refused, without an allocation of the claimed size.
    #[test]
    fn batch_a_header_is_accepted_exactly_when_it_matches_the_bytes(
        (b, h, w, c, lb, [a0, a1, b0, b1], data) in batch_headers(),
    ) {
        let header = serde_json::json!({
            "images": {"dtype": "U8", "shape": [b, h, w, c], "data_offsets": [a0, a1]},
            "labels": {"dtype": "I64", "shape": [lb], "data_offsets": [b0, b1]},
        });
        let bytes = safetensors(&header, &data);
        let len = data.len() as u64;
        let ((first_start, first_end), (second_start, second_end)) =
            if (a0, a1) <= (b0, b1) { ((a0, a1), (b0, b1)) } else { ((b0, b1), (a0, a1)) };
        let tiled = first_start == 0
            && first_start <= first_end
            && second_start == first_end
            && second_start <= second_end
            && second_end == len;
        let expected = tiled
            && c == 3
            && h == w
            && lb == b
            && b > 0
            && h > 0
            && [b, h, w, 3].iter().try_fold(1u128, |n, &x| n.checked_mul(u128::from(x))) == Some(u128::from(a1 - a0))
            && u128::from(b1 - b0) == 8 * u128::from(b);
        let (got, peak) = peak_during(|| Batch::from_bytes(&bytes));
        prop_assert!(peak <= justified(bytes.len()), "{} bytes allocated for {} input bytes", peak, bytes.len());
        prop_assert_eq!(got.is_ok(), expected, "{:?} for header {}", got.as_ref().err(), header);
        if let Ok(batch) = got {
            prop_assert_eq!(batch.image_size as u64, h);
            prop_assert_eq!(&batch.images[..], &data[a0 as usize..a1 as usize]);
            let labels: Vec<i64> = data[b0 as usize..b1 as usize]
                .chunks_exact(8)
                .map(|c| i64::from_le_bytes(c.try_into().unwrap()))
                .collect();
            prop_assert_eq!(batch.labels, labels);
        }
    }

    /// A real batch whose header claims more images, or larger ones, than
    /// its bytes hold is refused.
    #[test]
    fn batch_a_header_claiming_more_than_present_is_refused(
        batch in batches(),
        more_images in 0u64..1 << 40,
        more_side in 0u64..1 << 20,
    ) {
        prop_assume!(more_images > 0 || more_side > 0);
        let (n, s) = (batch.len() as u64, u64::from(batch.image_size));
        let (bn, bs) = (n + more_images, s + more_side);
        let img_len = batch.images.len();
        let header = serde_json::json!({
            "images": {"dtype": "U8", "shape": [bn, bs, bs, 3], "data_offsets": [0, img_len]},
            "labels": {"dtype": "I64", "shape": [bn], "data_offsets": [img_len, img_len + 8 * batch.len()]},
        });
        let mut data = batch.images.clone();
        data.extend(batch.labels.iter().flat_map(|l| l.to_le_bytes()));
        let bytes = safetensors(&header, &data);
        let (got, peak) = peak_during(|| Batch::from_bytes(&bytes));
        prop_assert!(peak <= justified(bytes.len()));
        let err = got.unwrap_err().to_string();
        prop_assert!(err.contains("tensor shapes disagree with their sizes"), "{}", err);
    }
}

// ---------------------------------------------------------------------------
// NATS control messages and the checks of what they name.

fn shard_readies() -> impl Strategy<Value = ShardReady> {
    (
        any::<String>(),
        any::<String>(),
        any::<String>(),
        any::<u64>(),
        prop::collection::vec(any::<String>(), 0..4),
        any::<u32>(),
        any::<u32>(),
    )
        .prop_map(|(dataset, split, uri, records, labels, shard_index, num_shards)| ShardReady {
            dataset,
            split,
            uri,
            records,
            labels,
            shard_index,
            num_shards,
        })
}

fn batch_readies() -> impl Strategy<Value = BatchReady> {
    (
        any::<String>(),
        any::<u32>(),
        any::<u32>(),
        any::<String>(),
        any::<u64>(),
        prop::collection::vec(any::<i64>(), 0..8),
    )
        .prop_map(|(uri, batch_size, image_size, producer, sequence, labels)| BatchReady {
            uri,
            batch_size,
            image_size,
            producer,
            sequence,
            labels,
            shards: Vec::new(),
        })
}

fn checkpoint_readies() -> impl Strategy<Value = CheckpointReady> {
    (any::<String>(), any::<u64>(), any::<String>(), any::<String>())
        .prop_map(|(run, step, uri, metadata_uri)| CheckpointReady { run, step, uri, metadata_uri })
}

fn eval_results() -> impl Strategy<Value = EvalResult> {
    (
        any::<String>(),
        any::<u64>(),
        any::<String>(),
        any::<f64>(),
        any::<f64>(),
        any::<u64>(),
        any::<i64>(),
        any::<f64>(),
    )
        .prop_map(
            |(run, step, checkpoint_uri, precision_at_1, recall_at_5, examples, evaluated_at_unix, validation_loss)| {
                EvalResult {
                    run,
                    step,
                    checkpoint_uri,
                    precision_at_1,
                    recall_at_5,
                    examples,
                    evaluated_at_unix,
                    validation_loss,
                }
            },
        )
}

/// Decodes `payload` as `M`, checking the size rule and the allocation.
fn decode_checked<M: Message + Default>(payload: &[u8]) -> Result<Result<M, ControlMessageError>, TestCaseError> {
    let (got, peak) = peak_during(|| decode_control::<M>(payload));
    prop_assert!(peak <= justified(payload.len().min(MAX_CONTROL_MESSAGE_BYTES)));
    let too_large = matches!(got, Err(ControlMessageError::TooLarge { bytes, .. }) if bytes == payload.len());
    prop_assert_eq!(too_large, payload.len() > MAX_CONTROL_MESSAGE_BYTES);
    Ok(got)
}

/// Decodes `payload` as `M` ([`decode_checked`]); a message it gives
/// encodes again to bytes that decode to it (compared encoded, as NaN
/// fields are not equal to themselves).
fn stable<M: Message + Default>(payload: &[u8]) -> Result<(), TestCaseError> {
    if let Ok(message) = decode_checked::<M>(payload)? {
        let again = message.encode_to_vec();
        prop_assert_eq!(M::decode(again.as_slice()).unwrap().encode_to_vec(), again);
    }
    Ok(())
}

/// Bytes that are noise, a real message of each type changed, or just over the size limit.
fn payloads() -> impl Strategy<Value = Vec<u8>> {
    prop_oneof![
        3 => prop::collection::vec(any::<u8>(), 0..256),
        1 => shard_readies().prop_flat_map(|m| mutated(m.encode_to_vec())),
        1 => batch_readies().prop_flat_map(|m| mutated(m.encode_to_vec())),
        1 => checkpoint_readies().prop_flat_map(|m| mutated(m.encode_to_vec())),
        1 => eval_results().prop_flat_map(|m| mutated(m.encode_to_vec())),
        1 => (0usize..4).prop_map(|extra| {
            let name = "x".repeat(MAX_CONTROL_MESSAGE_BYTES - 8 + extra);
            CheckpointReady { run: name, ..Default::default() }.encode_to_vec()
        }),
    ]
}

/// The dataset the shard tests use.
const DATASET: &str = "flowers";

/// `accept_train_shard` written out from its contract, independently.
fn expected_shard_verdict(uri: &str, records: u64) -> Result<(), ShardRefused> {
    let dir = format!("datasets/{DATASET}/");
    let Some(name) = uri.strip_prefix(&dir).filter(|_| !uri.contains("..")) else {
        return Err(ShardRefused::Outside { uri: uri.into(), dir: format!("datasets/{DATASET}") });
    };
    if name.contains('/') || !name.starts_with("train-") {
        return Err(ShardRefused::NotTrain { uri: uri.into(), dataset: DATASET.into() });
    }
    if records > MAX_SHARD_RECORDS {
        return Err(ShardRefused::TooManyRecords { uri: uri.into(), records });
    }
    Ok(())
}

/// Announced shard keys: mostly near the accepted form, some anything.
fn shard_uris() -> impl Strategy<Value = String> {
    let folder = prop::sample::select(vec![
        "datasets/flowers/",
        "datasets/flowers",
        "datasets/flowersx/",
        "datasets/other/",
        "datasets/flowers/ingest/",
        "datasets/flowers/../",
        "",
    ]);
    let name = prop::sample::select(vec!["train-", "train", "validation-", "Train-", "../train-", "train-/", ""]);
    prop_oneof![
        2 => "[a-z0-9-]{0,12}".prop_map(|rest| format!("datasets/flowers/train-{rest}")),
        4 => (folder, name, "[a-z0-9./-]{0,12}").prop_map(|(f, n, rest)| format!("{f}{n}{rest}")),
        1 => any::<String>(),
    ]
}

/// Claimed record counts: small, around the bound, or any.
fn record_counts() -> impl Strategy<Value = u64> {
    prop_oneof![0u64..10_000, (MAX_SHARD_RECORDS - 2)..=(MAX_SHARD_RECORDS + 2), any::<u64>(), Just(u64::MAX),]
}

proptest! {
    #![proptest_config(config(256))]

    /// Any payload as every message type: decoded or refused, never a panic;
    /// refused as too large exactly when over the limit; what decodes
    /// encodes again to bytes that decode to the same message.
    #[test]
    fn control_any_bytes_decode_or_are_refused(payload in payloads()) {
        stable::<ShardReady>(&payload)?;
        stable::<BatchReady>(&payload)?;
        stable::<CheckpointReady>(&payload)?;
        stable::<EvalResult>(&payload)?;
    }

    /// Every message type decodes to what was encoded (floats bit for bit).
    #[test]
    fn control_messages_round_trip(
        shard in shard_readies(),
        batch in batch_readies(),
        checkpoint in checkpoint_readies(),
        eval in eval_results(),
    ) {
        prop_assert_eq!(decode_checked::<ShardReady>(&shard.encode_to_vec())?.unwrap(), shard);
        prop_assert_eq!(decode_checked::<BatchReady>(&batch.encode_to_vec())?.unwrap(), batch);
        prop_assert_eq!(decode_checked::<CheckpointReady>(&checkpoint.encode_to_vec())?.unwrap(), checkpoint);
        let back = decode_checked::<EvalResult>(&eval.encode_to_vec())?.unwrap();
        // proto3 leaves out a field equal to its default, so -0.0 comes back as 0.0.
        let bits = |v: f64| if v == 0.0 { 0 } else { v.to_bits() };
        let floats = |e: &EvalResult| [bits(e.precision_at_1), bits(e.recall_at_5), bits(e.validation_loss)];
        prop_assert_eq!(floats(&back), floats(&eval));
        prop_assert_eq!((&back.run, back.step, &back.checkpoint_uri, back.examples, back.evaluated_at_unix),
            (&eval.run, eval.step, &eval.checkpoint_uri, eval.examples, eval.evaluated_at_unix));
    }

    /// A decoded shard announcement is accepted exactly when its key is a
    /// train shard directly in the dataset's folder and it claims at most
    /// MAX_SHARD_RECORDS records; the refusal names the first rule broken.
    #[test]
    fn shard_announcements_are_accepted_exactly_within_their_bounds(uri in shard_uris(), records in record_counts()) {
        let shard = ShardReady { uri: uri.clone(), records, ..Default::default() };
        let decoded: ShardReady = decode_checked::<ShardReady>(&shard.encode_to_vec())?.unwrap();
        prop_assert_eq!(accept_train_shard(&decoded, DATASET), expected_shard_verdict(&uri, records));
    }

    /// Counting the records of a history of announcements, as the trainer
    /// does (decode, check, keep the accepted ones by key): the refused ones
    /// change nothing, and no sum can exceed the bound per shard.
    #[test]
    fn refused_announcements_change_no_count(
        history in prop::collection::vec((shard_uris(), record_counts(), any::<bool>()), 0..12),
    ) {
        let mut counted = BTreeMap::new();
        let mut accepted_only = BTreeMap::new();
        for (uri, records, garble) in &history {
            let mut payload = ShardReady { uri: uri.clone(), records: *records, ..Default::default() }.encode_to_vec();
            if *garble {
                payload.push(0xFF); // a truncated varint tag: malformed
            }
            let verdict = decode_checked::<ShardReady>(&payload)?
                .map_err(|e| e.to_string())
                .and_then(|s| accept_train_shard(&s, DATASET).map(|()| s).map_err(|e| e.to_string()));
            if let Ok(s) = verdict {
                counted.insert(s.uri, s.records);
            }
            if !*garble && expected_shard_verdict(uri, *records).is_ok() {
                accepted_only.insert(uri.clone(), *records);
            }
        }
        prop_assert_eq!(&counted, &accepted_only);
        let sum = counted.values().fold(0u64, |s, r| s.saturating_add(*r));
        prop_assert!(u128::from(sum) <= counted.len() as u128 * u128::from(MAX_SHARD_RECORDS));
    }

    /// Keys named by messages: `below` gives the rest of a key inside the
    /// folder (and only then), never one with `..` in it.
    #[test]
    fn keys_below_a_folder_are_exactly_the_keys_inside_it(
        dir in prop::sample::select(vec!["batches/demo", "datasets/flowers", "checkpoints/run-1"]),
        key in prop_oneof![
            "(batches/demo|datasets/flowers|checkpoints/run-1|batches/demox)?(/|\\.\\./|/\\.\\.)?[a-z0-9./-]{0,12}",
            any::<String>(),
        ],
    ) {
        let got = inception_core::keys::below(&key, dir);
        if key.contains("..") {
            prop_assert_eq!(got, None);
        } else {
            match got {
                Some(rest) => prop_assert_eq!(format!("{dir}/{rest}"), key.clone()),
                None => {
                    let inside = key.starts_with(&format!("{dir}/"));
                    prop_assert!(!inside, "{} is inside {}", key, dir);
                }
            }
        }
    }
}

// ---------------------------------------------------------------------------
// Settings values.

/// Settings read the environment: every test that sets a variable or
/// loads settings holds this lock.
static ENV: Mutex<()> = Mutex::new(());

/// The keys of `config/default.toml` by the kind of their default.
struct Keys {
    integers: Vec<String>,
    floats: Vec<String>,
    strings: Vec<String>,
}

fn keys() -> &'static Keys {
    static KEYS: std::sync::OnceLock<Keys> = std::sync::OnceLock::new();
    KEYS.get_or_init(|| {
        let defaults = config::Config::builder()
            .add_source(config::File::from_str(DEFAULT_TOML, config::FileFormat::Toml))
            .build()
            .unwrap();
        let mut keys = Keys { integers: Vec::new(), floats: Vec::new(), strings: Vec::new() };
        let config::ValueKind::Table(root) = &defaults.cache.kind else { panic!("defaults are not a table") };
        for (section, table) in root {
            let config::ValueKind::Table(table) = &table.kind else { continue };
            for (key, value) in table {
                let name = format!("{section}.{key}");
                match &value.kind {
                    config::ValueKind::I64(_) | config::ValueKind::U64(_) => keys.integers.push(name),
                    config::ValueKind::Float(_) => keys.floats.push(name),
                    config::ValueKind::String(_) => keys.strings.push(name),
                    _ => {}
                }
            }
        }
        assert!(keys.integers.len() > 20 && keys.floats.len() > 20 && keys.strings.len() > 20);
        keys
    })
}

/// Loads the settings with `key = value` given as an override (a flag or
/// `--set`) or as its `INCEPTION__SECTION__KEY` environment variable.
fn load_with(key: &str, value: &str, from_env: bool) -> Result<Settings, String> {
    let _held = ENV.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
    if !from_env {
        return Settings::load(None, &[(key.to_string(), value.to_string())]).map_err(|e| e.to_string());
    }
    let var = format!("{ENV_PREFIX}__{}", key.to_uppercase().replace('.', "__"));
    std::env::set_var(&var, value);
    let got = Settings::load(None, &[]).map_err(|e| e.to_string());
    std::env::remove_var(&var);
    got
}

/// The value of string setting `key`.
fn string_setting(s: &Settings, key: &str) -> String {
    match key {
        "pipeline.run" => s.pipeline.run.clone(),
        "dataset.name" => s.dataset.name.clone(),
        "preprocess.worker_id" => s.preprocess.worker_id.clone(),
        "ingest.train_directory" => s.ingest.train_directory.clone(),
        "ingest.labels_file" => s.ingest.labels_file.clone(),
        "train.tensorboard_dir" => s.train.tensorboard_dir.clone(),
        "train.pretrained_checkpoint" => s.train.pretrained_checkpoint.clone(),
        "nats.tls_ca_file" => s.nats.tls_ca_file.clone(),
        "nats.user" => s.nats.user.clone(),
        "nats.token" => s.nats.token.expose().to_string(),
        "store.s3_region" => s.store.s3_region.clone(),
        "store.s3_access_key_id" => s.store.s3_access_key_id.clone(),
        other => panic!("no accessor for {other}"),
    }
}

/// Text a string setting may hold; several look like numbers or flags.
fn string_values() -> impl Strategy<Value = String> {
    prop_oneof![
        "0[0-9]{1,6}",
        "[0-9]{1,4}\\.[0-9]{0,3}0",
        "[0-9]e[0-9]",
        "-0|\\+1|0x1F|1_000|inf|NaN",
        "(true|false|True|FALSE|yes|on)",
        "[A-Za-z0-9_-]{1,24}",
    ]
}

proptest! {
    #![proptest_config(config(64))]

    /// An integer setting given a fraction, a flag word or other text is
    /// refused naming its key, whether from a flag or the environment.
    #[test]
    fn settings_integers_refuse_fractions_flags_and_text(
        key in prop::sample::select(keys().integers.clone()),
        value in prop_oneof![
            (0u32..100_000, 1u32..1000).prop_map(|(w, f)| format!("{w}.{f}")),
            "(true|false)",
            "[a-z][a-z0-9 ]{0,8}",
        ],
        from_env in any::<bool>(),
    ) {
        let err = load_with(&key, &value, from_env).expect_err("accepted");
        prop_assert!(err.contains(key.as_str()), "{} = {:?} refused without naming it: {}", key, value, err);
    }

    /// A float setting given NaN or an infinity is refused naming its key.
    #[test]
    fn settings_floats_refuse_nan_and_infinities(
        key in prop::sample::select(keys().floats.clone()),
        value in prop::sample::select(vec!["nan", "NaN", "inf", "-inf", "+inf", "infinity", "-Infinity"]),
        from_env in any::<bool>(),
    ) {
        let err = load_with(&key, value, from_env).expect_err("accepted");
        prop_assert!(err.contains(key.as_str()), "{} = {} refused without naming it: {}", key, value, err);
    }

    /// A string setting keeps its text exactly, leading zeros and all,
    /// from a flag or from the environment (a run named 007 is not run 7).
    #[test]
    fn settings_strings_are_kept_verbatim(
        key in prop::sample::select(vec![
            "pipeline.run", "dataset.name", "preprocess.worker_id", "ingest.train_directory",
            "ingest.labels_file", "train.tensorboard_dir", "train.pretrained_checkpoint",
            "nats.tls_ca_file", "nats.user", "nats.token", "store.s3_region", "store.s3_access_key_id",
        ]),
        value in string_values(),
        from_env in any::<bool>(),
    ) {
        // Names that become keys and subjects take only [A-Za-z0-9_-].
        let token = value.chars().all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-');
        let named = ["pipeline.run", "dataset.name", "preprocess.worker_id"].contains(&key);
        prop_assume!(token || !named);
        let s = load_with(key, &value, from_env).map_err(TestCaseError::fail)?;
        prop_assert_eq!(string_setting(&s, key), value);
    }
}

#[test]
fn settings_whole_numbers_are_still_read_from_the_environment() {
    let s = load_with("train.max_steps", "42", true).unwrap();
    assert_eq!(s.train.max_steps, 42);
    let s = load_with("model.depth_multiplier", "0.5", true).unwrap();
    assert_eq!(s.model.depth_multiplier, 0.5);
    let s = load_with("train.fine_tune", "true", true).unwrap();
    assert!(s.train.fine_tune);
    let s = load_with("pipeline.max_image_pixels", "1000", true).unwrap();
    assert_eq!(s.pipeline.max_image_pixels, 1000);
}
