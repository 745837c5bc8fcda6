//! Serialized tf.Example records to a training batch: parse, decode, distort.
//! A record that fails any step is counted and skipped, never fatal.

use inception_core::batch::Batch;
use inception_core::example::parse_image_example;
use rand::Rng;

/// Appends the transformed image of `record` to `batch`; returns the reason
/// when the record is unusable.
pub fn add_record<R: Rng>(batch: &mut Batch, record: &[u8], max_pixels: u64, distort_color: bool, rng: &mut R) -> Result<(), String> {
    let parsed = parse_image_example(record).map_err(|e| e.to_string())?;
    let decoded = inception_vision::decode_rgb(&parsed.encoded, max_pixels).map_err(|e| e.to_string())?;
    let pixels = inception_vision::train_image(&decoded.image, batch.image_size, &[], distort_color, rng);
    batch.images.extend_from_slice(&pixels);
    batch.labels.push(parsed.label);
    Ok(())
}

/// Builds one batch from `records`, skipping bad ones (counted by kind).
pub fn build_batch<R: Rng>(records: &[Vec<u8>], image_size: u32, max_pixels: u64, distort_color: bool, rng: &mut R) -> Batch {
    let mut batch = Batch { image_size, images: Vec::new(), labels: Vec::new() };
    batch.images.reserve(records.len() * (image_size as usize).pow(2) * 3);
    for record in records {
        if let Err(reason) = add_record(&mut batch, record, max_pixels, distort_color, rng) {
            metrics::counter!("inception_preprocess_errors_total", "kind" => "record").increment(1);
            tracing::warn!("skipping a record: {reason}");
        }
    }
    batch
}

#[cfg(test)]
mod tests {
    use super::*;
    use inception_core::example::ImageExample;
    use rand::SeedableRng;

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
        let bad_image = ImageExample { encoded: b"not an image".to_vec(), ..ImageExample {
            encoded: vec![], height: 1, width: 1, label: 1, text: String::new(), filename: String::new() } }
        .to_bytes();
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(3);
        let batch = build_batch(&[good.clone(), b"garbage".to_vec(), bad_image, good], 16, 1 << 20, true, &mut rng);
        assert_eq!(batch.labels, vec![2, 2]);
        assert_eq!(batch.images.len(), 2 * 16 * 16 * 3);
        // Every transform is uniform over the image (crop, resize, flip, and
        // colour changes that depend on the image only through its mean):
        // a one-colour image stays one colour.
        for image in batch.images.chunks(16 * 16 * 3) {
            assert!(image.chunks(3).all(|p| p == &image[..3]), "{:?}", &image[..6]);
        }
    }
}
