//! One-shot ingest of a folder full of awkward input: every bad file is
//! skipped with its own result and reason in the JSON report, every
//! convertible one (16-bit, RGBA, palette, odd names, a PNG named .jpg) is
//! written, bounding boxes come from the CSV, and the shards verify.

use inception_core::example::{parse_bounding_boxes, parse_image_example};
use inception_core::local_nats::LocalNats;
use inception_core::settings::env_vars;
use inception_core::tfrecord;
use inception_integration_tests::{png, record_filenames, Proc};
use std::collections::BTreeMap;
use std::path::Path;
use std::process::Command;
use std::time::Duration;

fn write_inputs(train: &Path) {
    let roses = train.join("roses");
    let daisy = train.join("daisy");
    let good = std::fs::read(roses.join("roses_0000.jpg")).unwrap();
    std::fs::write(roses.join("truncated.jpg"), &good[..good.len() / 3]).unwrap();
    std::fs::write(roses.join("empty.jpg"), b"").unwrap();
    std::fs::write(roses.join("notes.jpg"), b"this is text, not a JPEG").unwrap();
    // 16-bit grey, RGBA, palette: converted to RGB JPEG.
    let deep: Vec<Vec<u8>> =
        (0..6).map(|y| (0..8u16).flat_map(|x| (x * 8000 + y * 100).to_be_bytes()).collect()).collect();
    std::fs::write(daisy.join("deep16.png"), png(8, 6, 0, 16, None, &deep)).unwrap();
    let rgba: Vec<Vec<u8>> = (0..5).map(|_| (0..7).flat_map(|x| [200, x * 30, 10, 128]).collect()).collect();
    std::fs::write(daisy.join("rgba.PNG"), png(7, 5, 6, 8, None, &rgba)).unwrap();
    let palette = [255, 0, 0, 0, 255, 0, 0, 0, 255];
    let indexed: Vec<Vec<u8>> = (0..4).map(|y| (0..4).map(|x| ((x + y) % 3) as u8).collect()).collect();
    std::fs::write(daisy.join("palette.jpg"), png(4, 4, 3, 8, Some(&palette), &indexed)).unwrap();
    // A header claiming 100000 x 100000 pixels: refused before decoding.
    std::fs::write(daisy.join("bomb.png"), png(100_000, 100_000, 0, 8, None, &[vec![0; 16]])).unwrap();
    // Odd names, valid JPEGs.
    std::fs::write(daisy.join("rose #1 (copy) 50%.jpg"), &good).unwrap();
    std::fs::write(daisy.join("ünïcødé 花.jpeg"), &good).unwrap();
    {
        use std::os::unix::ffi::OsStrExt;
        std::fs::write(daisy.join(std::ffi::OsStr::from_bytes(b"latin1-\xe9t\xe9.jpg")), &good).unwrap();
    }
    std::fs::write(daisy.join(".hidden.jpg"), &good).unwrap();
}

#[test]
fn bad_inputs_are_skipped_with_reasons_and_the_rest_is_written() {
    let dir = tempfile::tempdir().unwrap();
    let (images, store, logs) = (dir.path().join("images"), dir.path().join("store"), dir.path().join("logs"));
    std::fs::create_dir_all(&logs).unwrap();
    inception_demo_data::generate(&images, 3, 0, 5).unwrap();
    let train = images.join("train");
    write_inputs(&train);
    let boxes = dir.path().join("boxes.csv");
    std::fs::write(&boxes, "roses_0001.jpg,0.1,0.2,0.6,0.7\nroses_0001.jpg,0,0,1,1\n").unwrap();
    let report = dir.path().join("report.json");
    let nats = LocalNats::start(&dir.path().join("nats")).unwrap();
    let mut env = env_vars([
        ("NATS__URL", nats.url()),
        ("STORE__URL", format!("file://{}", store.display())),
        ("DATASET__NAME", "odd".to_string()),
        ("INGEST__METRICS_ADDR", "127.0.0.1:0".to_string()),
    ]);
    env.push(("NO_COLOR".into(), "1".into()));
    let mut ingest = Proc::spawn(
        "inception-ingest",
        &[
            "--train-directory",
            train.to_str().unwrap(),
            "--train-shards",
            "1",
            "--validation-shards",
            "1",
            "--num-threads",
            "1",
            "--bounding-box-file",
            boxes.to_str().unwrap(),
            "--report",
            report.to_str().unwrap(),
            "--max-image-pixels",
            "1000000",
        ],
        &env,
        &logs,
    );
    let status = ingest.wait(Duration::from_secs(120));
    let (out, err) = ingest.output();
    assert!(status.success(), "ingest failed\n{out}\n{err}");
    // Not a terminal: plain progress lines, no bar.
    assert!(err.contains("processed"), "{err}");

    let json: serde_json::Value = serde_json::from_slice(&std::fs::read(&report).unwrap()).unwrap();
    let split = &json["splits"][0];
    let results: BTreeMap<String, String> = split["skipped"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| {
            let file = s["file"].as_str().unwrap();
            let name = Path::new(file).file_name().unwrap().to_string_lossy().into_owned();
            assert!(!s["reason"].as_str().unwrap().is_empty(), "{s}");
            (name, s["result"].as_str().unwrap().to_string())
        })
        .collect();
    let expected: BTreeMap<String, String> = [
        ("truncated.jpg", "skipped_corrupt"),
        ("empty.jpg", "skipped_empty"),
        ("notes.jpg", "skipped_not_image"),
        ("bomb.png", "skipped_too_large"),
    ]
    .iter()
    .map(|(a, b)| (a.to_string(), b.to_string()))
    .collect();
    assert_eq!(results, expected, "{json}");
    // 5 labels x 3 generated + 6 convertible extras.
    assert_eq!(split["written"], 21, "{json}");
    assert_eq!(json["counts"]["written"], 21);
    assert_eq!(json["counts"]["skipped_empty"], 1);
    let stored: serde_json::Value =
        serde_json::from_slice(&std::fs::read(store.join("datasets/odd/ingest/report.json")).unwrap()).unwrap();
    assert_eq!(stored, json);
    assert!(out.contains("skipped") && out.contains("bomb.png"), "{out}");

    let shard = store.join("datasets/odd/train-00000-of-00001");
    let bytes = std::fs::read(&shard).unwrap();
    let names = record_filenames(&bytes);
    assert_eq!(names.len(), 21);
    for n in [
        "deep16.png",
        "rgba.PNG",
        "palette.jpg",
        "rose #1 (copy) 50%.jpg",
        "ünïcødé 花.jpeg",
        "latin1-\u{fffd}t\u{fffd}.jpg",
    ] {
        assert!(names.iter().any(|x| x == n), "{n} missing from {names:?}");
    }
    assert!(!names.iter().any(|x| x.starts_with('.')), "{names:?}");
    // Every record is a 3-channel JPEG the decoder accepts; boxes where the CSV had them.
    for record in tfrecord::records(&bytes) {
        let record = record.unwrap();
        let parsed = parse_image_example(record).unwrap();
        let decoded = is_three_channel_jpeg(&parsed.encoded);
        assert!(decoded, "record of label {} does not decode", parsed.label);
        let boxes = parse_bounding_boxes(record).unwrap();
        if boxes.len() == 2 {
            assert_eq!((boxes[0].xmin, boxes[0].ymax), (0.1, 0.7));
        } else {
            assert!(boxes.is_empty());
        }
    }
    assert_eq!(
        tfrecord::records(&bytes).filter(|r| parse_bounding_boxes(r.as_ref().unwrap()).unwrap().len() == 2).count(),
        1
    );

    // The records tool agrees, and reports a cut file with its byte offset.
    let cli = inception_integration_tests::binary("inception");
    let verify = Command::new(&cli).args(["records", "verify", shard.to_str().unwrap()]).output().unwrap();
    assert!(verify.status.success(), "{verify:?}");
    assert!(String::from_utf8_lossy(&verify.stdout).contains("21 records"), "{verify:?}");
    let cut = dir.path().join("cut");
    std::fs::write(&cut, &bytes[..bytes.len() - 7]).unwrap();
    let verify = Command::new(&cli).args(["records", "verify", cut.to_str().unwrap()]).output().unwrap();
    let text = String::from_utf8_lossy(&verify.stderr);
    assert!(!verify.status.success() && text.contains("cut") && text.contains("at byte"), "{text}");
}

/// True when the bytes are a JPEG whose header says 3 components.
fn is_three_channel_jpeg(bytes: &[u8]) -> bool {
    if bytes.len() < 4 || bytes[..2] != [0xFF, 0xD8] {
        return false;
    }
    // Find SOF0/SOF2 and read the component count.
    let mut i = 2;
    while i + 9 < bytes.len() {
        if bytes[i] != 0xFF {
            return false;
        }
        let marker = bytes[i + 1];
        let len = usize::from(u16::from_be_bytes([bytes[i + 2], bytes[i + 3]]));
        if matches!(marker, 0xC0..=0xC2) {
            return bytes[i + 9] == 3;
        }
        i += 2 + len;
    }
    false
}
