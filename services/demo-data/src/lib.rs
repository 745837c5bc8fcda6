//! A deterministic generator of a small labelled image folder, the "flowers"
//! of the demo and the tests: five classes of procedurally drawn textures
//! (stripes three ways, checks, rings), each with its own palette, in varied
//! sizes, saved as JPEG and PNG.
//!
//! Layout: `<dir>/train/<label>/<file>` and `<dir>/validation/<label>/<file>`.
//!
//! A crate of its own, not part of a stage: the `inception` command and the
//! tests of every stage use it, and stages never import each other.

use image::{Rgb, RgbImage};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use std::path::{Path, PathBuf};

/// Class names, borrowed from the flowers data set the original used.
pub const DEMO_LABELS: [&str; 5] = ["daisy", "dandelion", "roses", "sunflowers", "tulips"];

/// What tells the classes apart: a texture over the whole picture, so any
/// crop shows it, and it survives the training colour distortions (which
/// shift hue by up to 72 degrees). Each class also has its own palette.
#[derive(Debug, Clone, Copy)]
enum Pattern {
    HorizontalStripes,
    VerticalStripes,
    Checkerboard,
    Rings,
    DiagonalStripes,
}

struct Style {
    background: [f32; 3],
    foreground: [f32; 3],
    pattern: Pattern,
}

fn style(class: usize) -> Style {
    match class {
        0 => Style {
            background: [40.0, 110.0, 40.0],
            foreground: [245.0, 245.0, 240.0],
            pattern: Pattern::HorizontalStripes,
        },
        1 => Style {
            background: [60.0, 140.0, 60.0],
            foreground: [250.0, 215.0, 30.0],
            pattern: Pattern::VerticalStripes,
        },
        2 => Style { background: [30.0, 30.0, 40.0], foreground: [210.0, 20.0, 40.0], pattern: Pattern::Checkerboard },
        3 => Style { background: [90.0, 160.0, 230.0], foreground: [250.0, 160.0, 20.0], pattern: Pattern::Rings },
        _ => Style {
            background: [230.0, 220.0, 200.0],
            foreground: [200.0, 40.0, 160.0],
            pattern: Pattern::DiagonalStripes,
        },
    }
}

fn draw(class: usize, rng: &mut ChaCha8Rng) -> RgbImage {
    let s = style(class);
    let width = rng.random_range(72..=200u32);
    let height = rng.random_range(72..=200u32);
    let jitter: [f32; 3] =
        [rng.random_range(-25.0..25.0), rng.random_range(-25.0..25.0), rng.random_range(-25.0..25.0)];
    let (cx, cy) = (rng.random_range(0.2..0.8) * width as f32, rng.random_range(0.2..0.8) * height as f32);
    let period = rng.random_range(12.0..20.0f32);
    let phase = rng.random_range(0.0..period);
    let mut img = RgbImage::new(width, height);
    for (x, y, px) in img.enumerate_pixels_mut() {
        let (fx, fy) = (x as f32 + phase, y as f32 + phase);
        let band = |v: f32| (v / period).rem_euclid(1.0) < 0.5;
        let inside = match s.pattern {
            Pattern::HorizontalStripes => band(fy),
            Pattern::VerticalStripes => band(fx),
            Pattern::Checkerboard => band(fx) ^ band(fy),
            Pattern::Rings => band((x as f32 - cx).hypot(y as f32 - cy)),
            Pattern::DiagonalStripes => band((fx + fy) * std::f32::consts::FRAC_1_SQRT_2),
        };
        let base = if inside { s.foreground } else { s.background };
        let noise = rng.random_range(-12.0..12.0f32);
        *px = Rgb(std::array::from_fn(|c| (base[c] + jitter[c] + noise).clamp(0.0, 255.0) as u8));
    }
    img
}

#[derive(Debug, thiserror::Error)]
#[error("cannot write demo image {path}: {message}")]
pub struct DemoError {
    path: PathBuf,
    message: String,
}

/// Writes `train_per_class` and `validation_per_class` images of each of the
/// five classes under `dir`. The same seed always gives the same files.
pub fn generate(
    dir: &Path,
    train_per_class: usize,
    validation_per_class: usize,
    seed: u64,
) -> Result<usize, DemoError> {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let mut written = 0;
    for (split, count) in [("train", train_per_class), ("validation", validation_per_class)] {
        for (class, label) in DEMO_LABELS.iter().enumerate() {
            let folder = dir.join(split).join(label);
            std::fs::create_dir_all(&folder).map_err(|e| DemoError { path: folder.clone(), message: e.to_string() })?;
            for i in 0..count {
                let img = draw(class, &mut rng);
                // Mostly JPEG; every third image a PNG, some with an upper-case
                // extension, as real folders have.
                let name = match i % 6 {
                    2 => format!("{label}_{i:04}.png"),
                    5 => format!("{label}_{i:04}.PNG"),
                    _ => format!("{label}_{i:04}.jpg"),
                };
                let path = folder.join(name);
                let format = if i % 3 == 2 { image::ImageFormat::Png } else { image::ImageFormat::Jpeg };
                img.save_with_format(&path, format)
                    .map_err(|e| DemoError { path: path.clone(), message: e.to_string() })?;
                written += 1;
            }
        }
    }
    Ok(written)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn deterministic_and_laid_out_by_label() {
        let a = tempfile::tempdir().unwrap();
        let b = tempfile::tempdir().unwrap();
        assert_eq!(generate(a.path(), 3, 1, 9).unwrap(), 20);
        generate(b.path(), 3, 1, 9).unwrap();
        let f = "train/roses/roses_0002.png";
        assert_eq!(std::fs::read(a.path().join(f)).unwrap(), std::fs::read(b.path().join(f)).unwrap());
        let png = std::fs::read(a.path().join(f)).unwrap();
        assert_eq!(image::guess_format(&png).unwrap(), image::ImageFormat::Png);
        assert!(a.path().join("validation/tulips/tulips_0000.jpg").is_file());
    }
}

/// A TFRecord shard of tf.Example, as ingest writes one, of every image
/// under `folder/<label>/` for the given `labels` (label i + 1, as ingest
/// numbers them), in name order; images that are not JPEG become JPEGs.
/// For tests of the stages that read shards, without the ingest stage.
/// Returns the shard's bytes and how many records it holds.
pub fn shard_of_folder(folder: &Path, labels: &[String]) -> Result<(Vec<u8>, usize), DemoError> {
    use inception_core::example::ImageExample;
    let fail = |path: &Path, e: &dyn std::fmt::Display| DemoError { path: path.to_path_buf(), message: e.to_string() };
    let mut shard = Vec::new();
    let mut records = 0;
    for (index, label) in labels.iter().enumerate() {
        let dir = folder.join(label);
        let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
            .map_err(|e| fail(&dir, &e))?
            .filter_map(|entry| entry.ok().map(|e| e.path()))
            .filter(|p| p.is_file())
            .collect();
        files.sort();
        for path in files {
            let img = image::open(&path).map_err(|e| fail(&path, &e))?.to_rgb8();
            let mut encoded = Vec::new();
            image::codecs::jpeg::JpegEncoder::new_with_quality(&mut encoded, 100)
                .encode_image(&img)
                .map_err(|e| fail(&path, &e))?;
            let example = ImageExample {
                encoded,
                height: i64::from(img.height()),
                width: i64::from(img.width()),
                label: index as i64 + 1,
                text: label.clone(),
                filename: path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default(),
            };
            inception_core::tfrecord::write_record(&mut shard, &example.to_bytes());
            records += 1;
        }
    }
    Ok((shard, records))
}

#[cfg(test)]
mod shard_tests {
    use super::*;

    #[test]
    fn a_generated_folder_becomes_a_shard_of_readable_examples() {
        let dir = tempfile::tempdir().unwrap();
        assert_eq!(generate(dir.path(), 0, 2, 1).unwrap(), 10);
        let labels: Vec<String> = DEMO_LABELS.iter().map(|l| l.to_string()).collect();
        let (shard, records) = shard_of_folder(&dir.path().join("validation"), &labels).unwrap();
        assert_eq!(records, 10);
        let parsed: Vec<_> = inception_core::tfrecord::records(&shard)
            .map(|r| inception_core::example::parse_image_example(r.unwrap()).unwrap())
            .collect();
        assert_eq!(parsed.len(), 10);
        assert_eq!(parsed[0].label, 1);
        assert_eq!(parsed[9].label, 5);
        assert!(parsed.iter().all(|p| p.encoded.starts_with(&[0xff, 0xd8])), "every image is a JPEG");
    }
}
