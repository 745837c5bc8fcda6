//! The image transforms of `image_processing.py`, on 8-bit RGB.
//!
//! Outputs are `size * size * 3` bytes, HWC. The consumer applies the final
//! `(x / 255 - 0.5) * 2` scaling to [-1, 1].

use image::RgbImage;
use rand::Rng;

use crate::resize::{resize, ResizeMethod};

/// A crop window in pixels.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CropBox {
    pub x: u32,
    pub y: u32,
    pub width: u32,
    pub height: u32,
}

/// Parameters of `tf.image.sample_distorted_bounding_box` in `distort_image`.
pub const MIN_OBJECT_COVERED: f64 = 0.1;
pub const ASPECT_RATIO_RANGE: (f64, f64) = (0.75, 1.33);
pub const AREA_RANGE: (f64, f64) = (0.05, 1.0);
pub const MAX_ATTEMPTS: u32 = 100;

/// `sample_distorted_bounding_box` for an image without boxes (TF then uses
/// the whole image as the box): the crop must cover at least
/// `MIN_OBJECT_COVERED` of it. Falls back to the whole image after
/// `MAX_ATTEMPTS`. Follows TF's `GenerateRandomCrop` sampling.
pub fn sample_distorted_crop<R: Rng>(width: u32, height: u32, rng: &mut R) -> CropBox {
    let whole = CropBox { x: 0, y: 0, width, height };
    let (w0, h0) = (f64::from(width), f64::from(height));
    let image_area = w0 * h0;
    for _ in 0..MAX_ATTEMPTS {
        let aspect = rng.random_range(ASPECT_RATIO_RANGE.0..ASPECT_RATIO_RANGE.1);
        let min_area = AREA_RANGE.0 * image_area;
        let max_area = AREA_RANGE.1 * image_area;
        let mut h = (min_area / aspect).sqrt().round() as i64;
        let mut max_h = (max_area / aspect).sqrt().round() as i64;
        if (max_h as f64 * aspect).round() > w0 {
            max_h = ((w0 + 0.5 - 1e-7) / aspect) as i64;
        }
        max_h = max_h.min(i64::from(height));
        h = h.min(max_h);
        if h < max_h {
            h += rng.random_range(0..=(max_h - h));
        }
        let mut w = (h as f64 * aspect).round() as i64;
        let mut area = (w * h) as f64;
        if area < min_area {
            h += 1;
            w = (h as f64 * aspect).round() as i64;
            area = (w * h) as f64;
        }
        if area > max_area {
            h -= 1;
            w = (h as f64 * aspect).round() as i64;
            area = (w * h) as f64;
        }
        if area < min_area || area > max_area || w <= 0 || h <= 0 || w > i64::from(width) || h > i64::from(height) {
            continue;
        }
        if area / image_area < MIN_OBJECT_COVERED {
            continue;
        }
        let (w, h) = (w as u32, h as u32);
        let y = rng.random_range(0..=(height - h));
        let x = rng.random_range(0..=(width - w));
        return CropBox { x, y, width: w, height: h };
    }
    whole
}

/// `tf.image.central_crop` of TF1: integer offsets `start = dim / k` with
/// `k = int(1 / ((1 - fraction) / 2))` (16 for 0.875), `size = dim - 2 * start`.
pub fn central_crop(width: u32, height: u32, fraction: f64) -> CropBox {
    if fraction >= 1.0 {
        return CropBox { x: 0, y: 0, width, height };
    }
    let k = (1.0 / ((1.0 - fraction) / 2.0)) as u32;
    let (x, y) = (width / k, height / k);
    CropBox {
        x,
        y,
        width: width - 2 * x,
        height: height - 2 * y,
    }
}

/// Bilinear resize of `crop` of `img` to `out x out` bytes, with TF1's
/// `align_corners=False` mapping `src = dst * in / out` (no half-pixel shift).
pub fn resize_bilinear(img: &RgbImage, crop: CropBox, out: u32) -> Vec<u8> {
    quantize(&resize(img, crop, out, ResizeMethod::Bilinear), 1.0)
}

/// Floats (times `scale`) rounded to bytes, clamped to 0..=255.
pub fn quantize(px: &[f32], scale: f32) -> Vec<u8> {
    px.iter().map(|v| (v * scale).round().clamp(0.0, 255.0) as u8).collect()
}

/// Mirrors an `size x size` HWC buffer left to right, in place.
pub fn flip_left_right<T>(pixels: &mut [T], size: u32) {
    let s = size as usize;
    for row in pixels.chunks_exact_mut(s * 3) {
        for x in 0..s / 2 {
            for c in 0..3 {
                row.swap(x * 3 + c, (s - 1 - x) * 3 + c);
            }
        }
    }
}

/// Training transform (`distort_image`): distorted-box crop; resize with a
/// method drawn per example from TF's four; random left-right flip; colour
/// distortion in one of the two orders, drawn per example; clip to [0, 1].
/// (The original ties method and order to the preprocessing thread id; a
/// per-example draw gives the same mixture.) `distort_color = false` skips
/// the colour step.
pub fn train_image<R: Rng>(img: &RgbImage, size: u32, distort_color: bool, rng: &mut R) -> Vec<u8> {
    let crop = sample_distorted_crop(img.width(), img.height(), rng);
    let method = ResizeMethod::from_index(rng.random_range(0..4));
    let mut px = resize(img, crop, size, method);
    if rng.random_bool(0.5) {
        flip_left_right(&mut px, size);
    }
    if !distort_color {
        return quantize(&px, 1.0);
    }
    px.iter_mut().for_each(|v| *v /= 255.0);
    crate::color::distort_color(&mut px, rng.random_range(0..2), rng);
    quantize(&px, 255.0)
}

/// Evaluation transform (`eval_image`): central crop 0.875, bilinear resize.
pub fn eval_image(img: &RgbImage, size: u32) -> Vec<u8> {
    let crop = central_crop(img.width(), img.height(), 0.875);
    resize_bilinear(img, crop, size)
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;

    #[test]
    fn central_crop_uses_tf1_integer_offsets() {
        // 299 / 16 = 18 -> 263 wide; 375 / 16 = 23 -> 329 high.
        assert_eq!(central_crop(299, 375, 0.875), CropBox { x: 18, y: 23, width: 263, height: 329 });
        assert_eq!(central_crop(15, 15, 0.875), CropBox { x: 0, y: 0, width: 15, height: 15 });
    }

    #[test]
    fn bilinear_matches_tf1_legacy_mapping() {
        // A 4x1 ramp resized to 8x1 (and height 1 -> 8): src = dst * 0.5.
        let mut img = RgbImage::new(4, 1);
        for (x, v) in [0u8, 100, 200, 250].into_iter().enumerate() {
            img.put_pixel(x as u32, 0, image::Rgb([v, v, v]));
        }
        let crop = CropBox { x: 0, y: 0, width: 4, height: 1 };
        let out = resize_bilinear(&img, crop, 8);
        let row: Vec<u8> = out[..24].chunks(3).map(|p| p[0]).collect();
        // dst 0..7 -> src 0, .5, 1, 1.5, 2, 2.5, 3, 3.5 (clamped to the last pixel).
        assert_eq!(row, vec![0, 50, 100, 150, 200, 225, 250, 250]);
        assert_eq!(&out[24..48], &out[..24], "every row samples the single source row");
    }

    #[test]
    fn flip_mirrors_rows() {
        let mut px: Vec<u8> = (0..12).collect(); // 2x2 image
        flip_left_right(&mut px, 2);
        assert_eq!(px, vec![3, 4, 5, 0, 1, 2, 9, 10, 11, 6, 7, 8]);
    }

    #[test]
    fn distorted_crops_obey_the_constraints() {
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(7);
        let (w, h) = (500u32, 375u32);
        let mut smallest = 1.0f64;
        for _ in 0..2000 {
            let c = sample_distorted_crop(w, h, &mut rng);
            assert!(c.x + c.width <= w && c.y + c.height <= h);
            let covered = f64::from(c.width * c.height) / f64::from(w * h);
            assert!(covered >= MIN_OBJECT_COVERED - 1e-9, "{c:?}");
            if c != (CropBox { x: 0, y: 0, width: w, height: h }) {
                let aspect = f64::from(c.width) / f64::from(c.height);
                assert!((0.70..=1.40).contains(&aspect), "aspect {aspect} of {c:?}");
            }
            smallest = smallest.min(covered);
        }
        assert!(smallest < 0.2, "small crops do occur: {smallest}");
        let a = sample_distorted_crop(w, h, &mut rand_chacha::ChaCha8Rng::seed_from_u64(1));
        let b = sample_distorted_crop(w, h, &mut rand_chacha::ChaCha8Rng::seed_from_u64(1));
        assert_eq!(a, b, "deterministic for a seed");
    }
}
