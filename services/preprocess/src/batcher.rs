//! Serialized tf.Example records to a training batch: parse, decode, distort.
//! A record that fails any step is counted and skipped, never fatal.

use inception_core::batch::Batch;
use inception_core::example::{parse_bounding_boxes, parse_image_example, ExampleError};
use inception_core::settings::{AugmentSettings, ResizeMethodSetting};
use inception_vision::resize::ResizeMethod;
use inception_vision::{Augmentation, ObjectBox, VisionError};

/// The distortions `[augment]` asks for.
pub fn augmentation(settings: &AugmentSettings) -> Augmentation {
    let method = |m: &ResizeMethodSetting| match m {
        ResizeMethodSetting::Bilinear => ResizeMethod::Bilinear,
        ResizeMethodSetting::Nearest => ResizeMethod::NearestNeighbor,
        ResizeMethodSetting::Bicubic => ResizeMethod::Bicubic,
        ResizeMethodSetting::Area => ResizeMethod::Area,
    };
    Augmentation {
        area_range: (settings.crop_area_min, settings.crop_area_max),
        aspect_ratio_range: (settings.aspect_ratio_min, settings.aspect_ratio_max),
        min_object_covered: settings.min_object_covered,
        max_attempts: settings.crop_attempts,
        flip_probability: settings.flip_probability,
        distort_color: settings.distort_color,
        color_strength: settings.color_strength as f32,
        resize_methods: settings.resize_methods.iter().map(method).collect(),
    }
}
use rand::Rng;

/// Why a record could not become a training image.
#[derive(Debug, thiserror::Error)]
pub enum RecordError {
    /// Not a tf.Example with the image keys, or with bad boxes.
    #[error(transparent)]
    Example(#[from] ExampleError),
    /// The image inside cannot be decoded (or is over the pixel limit).
    #[error(transparent)]
    Image(#[from] VisionError),
}

/// Appends the transformed image of `record` to `batch`; returns why when
/// the record is unusable.
pub fn add_record<R: Rng>(
    batch: &mut Batch,
    record: &[u8],
    max_pixels: u64,
    aug: &Augmentation,
    rng: &mut R,
) -> Result<(), RecordError> {
    let parsed = parse_image_example(record)?;
    // Object boxes (build_imagenet_data.py-style records) guide the crop.
    let boxes: Vec<ObjectBox> = parse_bounding_boxes(record)?
        .into_iter()
        .map(|b| ObjectBox { xmin: b.xmin, ymin: b.ymin, xmax: b.xmax, ymax: b.ymax })
        .collect();
    let decoded = inception_vision::decode_rgb(&parsed.encoded, max_pixels)?;
    let pixels = inception_vision::train_image(&decoded.image, batch.image_size, &boxes, aug, rng);
    batch.images.extend_from_slice(&pixels);
    batch.labels.push(parsed.label);
    Ok(())
}

/// Builds one batch from `records`, skipping bad ones (counted by kind).
pub fn build_batch<R: Rng>(
    records: &[Vec<u8>],
    image_size: u32,
    max_pixels: u64,
    aug: &Augmentation,
    rng: &mut R,
) -> Batch {
    build_batch_marking_used(records, image_size, max_pixels, aug, rng).0
}

/// As [`build_batch`], also saying which records made it into the batch.
pub fn build_batch_marking_used<R: Rng>(
    records: &[Vec<u8>],
    image_size: u32,
    max_pixels: u64,
    aug: &Augmentation,
    rng: &mut R,
) -> (Batch, Vec<bool>) {
    let mut batch = Batch { image_size, images: Vec::new(), labels: Vec::new() };
    batch.images.reserve(records.len() * (image_size as usize).pow(2) * 3);
    let mut used = Vec::with_capacity(records.len());
    for record in records {
        let result = add_record(&mut batch, record, max_pixels, aug, rng);
        used.push(result.is_ok());
        if let Err(reason) = result {
            metrics::counter!("inception_preprocess_errors_total", "kind" => "record").increment(1);
            tracing::warn!("skipping a record: {reason}");
        }
    }
    (batch, used)
}

#[cfg(test)]
mod tests {
    use super::*;
    use inception_core::example::ImageExample;
    use rand::SeedableRng;

    #[test]
    fn augment_settings_reach_the_distortions() {
        let mut settings = inception_core::Settings::defaults().unwrap().augment;
        assert_eq!(augmentation(&settings), Augmentation::default(), "the defaults are the original's");
        settings.flip_probability = 0.0;
        settings.crop_area_min = 1.0;
        settings.resize_methods = vec![ResizeMethodSetting::Area];
        settings.color_strength = 0.5;
        let aug = augmentation(&settings);
        assert_eq!(aug.flip_probability, 0.0);
        assert_eq!(aug.area_range, (1.0, 1.0));
        assert_eq!(aug.resize_methods, [ResizeMethod::Area]);
        assert_eq!(aug.color_strength, 0.5);
    }

    #[test]
    fn bad_records_are_skipped() {
        let img = image::RgbImage::from_pixel(40, 30, image::Rgb([255, 0, 0]));
        let mut png = std::io::Cursor::new(Vec::new());
        img.write_to(&mut png, image::ImageFormat::Png).unwrap();
        let good = ImageExample {
            encoded: png.into_inner(),
            height: 30,
            width: 40,
            label: 2,
            text: "x".into(),
            filename: "x.png".into(),
        }
        .to_bytes();
        let bad_image = ImageExample {
            encoded: b"not an image".to_vec(),
            ..ImageExample {
                encoded: vec![],
                height: 1,
                width: 1,
                label: 1,
                text: String::new(),
                filename: String::new(),
            }
        }
        .to_bytes();
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(3);
        let batch = build_batch(
            &[good.clone(), b"garbage".to_vec(), bad_image, good],
            16,
            1 << 20,
            &Augmentation::default(),
            &mut rng,
        );
        assert_eq!(batch.labels, vec![2, 2]);
        assert_eq!(batch.images.len(), 2 * 16 * 16 * 3);
        // Every transform is uniform over the image (crop, resize, flip, and
        // colour changes that depend on the image only through its mean):
        // a one-colour image stays one colour.
        for image in batch.images.chunks(16 * 16 * 3) {
            assert!(image.chunks(3).all(|p| p == &image[..3]), "{:?}", &image[..6]);
        }
    }

    #[test]
    fn crops_keep_the_records_object_box() {
        use inception_core::example::BoundingBox;
        // Red top-left quadrant, blue elsewhere; the object is the 10x10 corner.
        let img = image::RgbImage::from_fn(200, 200, |x, y| {
            image::Rgb(if x < 100 && y < 100 { [255, 0, 0] } else { [0, 0, 255] })
        });
        let mut png = std::io::Cursor::new(Vec::new());
        img.write_to(&mut png, image::ImageFormat::Png).unwrap();
        let example = ImageExample {
            encoded: png.into_inner(),
            height: 200,
            width: 200,
            label: 1,
            text: "x".into(),
            filename: "x.png".into(),
        };
        let corner = BoundingBox { xmin: 0.0, ymin: 0.0, xmax: 0.05, ymax: 0.05 };
        let with_box = example.to_bytes_with_boxes(&[corner]);
        let without = example.to_bytes();
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(5);
        let plain = Augmentation { distort_color: false, ..Augmentation::default() };
        let has_red = |image: &[u8]| image.chunks(3).any(|p| p[0] > 200 && p[2] < 50);
        let boxed = build_batch(&vec![with_box; 40], 32, 1 << 20, &plain, &mut rng);
        assert!(boxed.images.chunks(32 * 32 * 3).all(has_red), "every crop keeps part of the object");
        let free = build_batch(&vec![without; 40], 32, 1 << 20, &plain, &mut rng);
        assert!(!free.images.chunks(32 * 32 * 3).all(has_red), "without the box some crops miss the corner");
    }
}
