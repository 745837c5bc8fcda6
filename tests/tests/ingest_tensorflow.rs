//! Compatibility with TensorFlow both ways.
//!
//! * Always: golden records written by TensorFlow itself
//!   (tests/fixtures/tensorflow, made by make_fixtures.py with the version
//!   recorded in expected.json) read as TensorFlow wrote them.
//! * When TensorFlow is importable by the Python named in
//!   `INCEPTION_TF_PYTHON`: records the project writes parse with the
//!   original's `parse_example_proto` and decode with `tf.io.decode_jpeg`.
//!   Otherwise the test says it skipped (CI does not install TensorFlow).

use inception_core::example::{parse_bounding_boxes, parse_image_example};
use inception_core::tfrecord;
use inception_proto::tensorflow::{feature, Example};
use inception_proto::Message;
use std::path::Path;

fn fixtures() -> std::path::PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("fixtures/tensorflow")
}

fn int64(ex: &Example, key: &str) -> i64 {
    match ex.features.as_ref().and_then(|f| f.feature.get(key)).and_then(|f| f.kind.clone()) {
        Some(feature::Kind::Int64List(l)) => l.value[0],
        other => panic!("{key}: {other:?}"),
    }
}

fn bytes(ex: &Example, key: &str) -> String {
    match ex.features.as_ref().and_then(|f| f.feature.get(key)).and_then(|f| f.kind.clone()) {
        Some(feature::Kind::BytesList(l)) => String::from_utf8_lossy(&l.value[0]).into_owned(),
        other => panic!("{key}: {other:?}"),
    }
}

#[test]
fn tensorflow_written_records_read_correctly() {
    let data = std::fs::read(fixtures().join("build_image_data.tfrecord")).unwrap();
    let expected: serde_json::Value =
        serde_json::from_slice(&std::fs::read(fixtures().join("expected.json")).unwrap()).unwrap();
    let want = expected["records"].as_array().unwrap();
    let records: Vec<&[u8]> = tfrecord::records(&data).collect::<Result<_, _>>().unwrap();
    assert_eq!(records.len(), want.len(), "made by TensorFlow {}", expected["tensorflow"]);
    for (record, want) in records.iter().zip(want) {
        let parsed = parse_image_example(record).unwrap();
        assert_eq!(parsed.label, want["label"].as_i64().unwrap());
        assert_eq!(parsed.text, want["text"].as_str().unwrap());
        assert_eq!(parsed.encoded.len() as u64, want["encoded_len"].as_u64().unwrap());
        let ex = Example::decode(*record).unwrap();
        assert_eq!(bytes(&ex, "image/filename"), want["filename"].as_str().unwrap());
        assert_eq!(bytes(&ex, "image/colorspace"), "RGB");
        assert_eq!(bytes(&ex, "image/format"), "JPEG");
        assert_eq!(int64(&ex, "image/channels"), 3);
        let (h, w) = (want["height"].as_i64().unwrap(), want["width"].as_i64().unwrap());
        assert_eq!((int64(&ex, "image/height"), int64(&ex, "image/width")), (h, w));
        // Our decoder reads TensorFlow's JPEGs as TensorFlow does, within what
        // two JPEG decoders' IDCT and chroma upsampling differ by (observed up
        // to 1.3 levels of mean on these tiny, sharp 4:2:0 images).
        let img = inception_vision::decode_rgb(&parsed.encoded, 1 << 20).unwrap().image;
        assert_eq!((i64::from(img.height()), i64::from(img.width())), (h, w));
        let mean = img.as_raw().iter().map(|&v| f64::from(v)).sum::<f64>() / img.as_raw().len() as f64;
        let tf_mean = want["mean_pixel"].as_f64().unwrap();
        assert!((mean - tf_mean).abs() < 2.0, "mean pixel {mean} vs TensorFlow's {tf_mean}");
        let boxes = parse_bounding_boxes(record).unwrap();
        let want_boxes = want["bbox"].as_array().unwrap();
        assert_eq!(boxes.len(), want_boxes.len());
        for (b, w) in boxes.iter().zip(want_boxes) {
            let w: Vec<f32> = w.as_array().unwrap().iter().map(|v| v.as_f64().unwrap() as f32).collect();
            assert_eq!(vec![b.xmin, b.ymin, b.xmax, b.ymax], w);
        }
    }
}

#[test]
fn records_we_write_parse_in_tensorflow() {
    let Some(python) = std::env::var_os("INCEPTION_TF_PYTHON").filter(|p| !p.is_empty()) else {
        println!("skipped: set INCEPTION_TF_PYTHON to a Python that can import tensorflow to run this check");
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let images = dir.path().join("images");
    inception_demo_data::generate(&images, 2, 0, 9).unwrap();
    let labels: Vec<String> = inception_demo_data::DEMO_LABELS.iter().map(|s| s.to_string()).collect();
    let mut files = inception_ingest::find_image_files(&images.join("train"), &labels).unwrap();
    files.sort_by(|a, b| a.name.cmp(&b.name));
    let boxes = inception_ingest::bbox::parse(&format!("{},0.25,0.1,0.75,0.9\n", files[0].name)).unwrap();
    let built = inception_ingest::build_shard_with(&files, inception_ingest::ImageChecks::full(1 << 24), &boxes, None);
    assert_eq!(built.written, files.len());
    let shard = dir.path().join("train-00000-of-00001");
    std::fs::write(&shard, &built.bytes).unwrap();
    let out = std::process::Command::new(&python)
        .arg(fixtures().join("parse_with_tf.py"))
        .arg(&shard)
        .env("TF_CPP_MIN_LOG_LEVEL", "3")
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let lines: Vec<serde_json::Value> =
        String::from_utf8_lossy(&out.stdout).lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    assert_eq!(lines.len(), files.len());
    for ((record, file), tf) in tfrecord::records(&built.bytes).zip(&files).zip(&lines) {
        let ex = Example::decode(record.unwrap()).unwrap();
        assert_eq!(tf["label"].as_i64().unwrap(), file.label);
        assert_eq!(tf["text"].as_str().unwrap(), file.text);
        let shape: Vec<i64> = tf["shape"].as_array().unwrap().iter().map(|v| v.as_i64().unwrap()).collect();
        assert_eq!(shape, vec![int64(&ex, "image/height"), int64(&ex, "image/width"), 3]);
        let bbox = tf["bbox"].as_array().unwrap()[0].as_array().unwrap();
        if file.name == files[0].name {
            // [ymin, xmin, ymax, xmax], as image_processing.py assembles them.
            let b: Vec<f64> = bbox[0].as_array().unwrap().iter().map(|v| v.as_f64().unwrap()).collect();
            assert_eq!(b, vec![0.1f32 as f64, 0.25, 0.9f32 as f64, 0.75]);
        } else {
            assert!(bbox.is_empty());
        }
    }
    println!("TensorFlow parsed all {} records", lines.len());
}
