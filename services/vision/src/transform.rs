//! The image transforms of `image_processing.py`, on 8-bit RGB.
//!
//! Outputs are `size * size * 3` bytes, HWC. The consumer applies the final
//! `(x / 255 - 0.5) * 2` scaling to [-1, 1].

use image::RgbImage;
use rand::Rng;

use crate::resize::{resize, resize_to_bytes, to_byte, CropBox, ResizeMethod};

/// Parameters of `tf.image.sample_distorted_bounding_box` in `distort_image`.
pub const MIN_OBJECT_COVERED: f64 = 0.1;
pub const ASPECT_RATIO_RANGE: (f64, f64) = (0.75, 1.33);
pub const AREA_RANGE: (f64, f64) = (0.05, 1.0);
pub const MAX_ATTEMPTS: u32 = 100;
/// `eval_image`'s central crop.
pub const EVAL_CENTRAL_FRACTION: f64 = 0.875;

/// The training distortions' parameters; [`Default`] is the original's
/// (`distort_image` of image_processing.py).
#[derive(Debug, Clone, PartialEq)]
pub struct Augmentation {
    /// Fraction of the image area a distorted crop covers (min, max).
    pub area_range: (f64, f64),
    /// Width / height ratio of a distorted crop (min, max).
    pub aspect_ratio_range: (f64, f64),
    /// Fraction of an object box (or of the image) a crop must cover.
    pub min_object_covered: f64,
    /// Tries at a crop before the whole image is taken.
    pub max_attempts: u32,
    /// Probability of a left-right flip.
    pub flip_probability: f64,
    /// Whether colours are distorted.
    pub distort_color: bool,
    /// Scale of the colour distortions' ranges (1 = the original's).
    pub color_strength: f32,
    /// The methods a training image's resize method is drawn from, uniformly.
    pub resize_methods: Vec<ResizeMethod>,
}

impl Default for Augmentation {
    fn default() -> Self {
        Self {
            area_range: AREA_RANGE,
            aspect_ratio_range: ASPECT_RATIO_RANGE,
            min_object_covered: MIN_OBJECT_COVERED,
            max_attempts: MAX_ATTEMPTS,
            flip_probability: 0.5,
            distort_color: true,
            color_strength: 1.0,
            resize_methods: (0..4).map(ResizeMethod::from_index).collect(),
        }
    }
}

/// An object's box in coordinates relative to the image (0..1), as the
/// records' `image/object/bbox/*` features hold it.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct ObjectBox {
    pub xmin: f32,
    pub ymin: f32,
    pub xmax: f32,
    pub ymax: f32,
}

impl ObjectBox {
    /// The box in pixels, truncated as TF's `Rectangle(xmin * width, …)`, and
    /// clipped to the image; `None` when empty.
    fn to_pixels(self, width: u32, height: u32) -> Option<(i64, i64, i64, i64)> {
        let (w, h) = (f64::from(width), f64::from(height));
        let clip = |v: f32, limit: f64| (f64::from(v).clamp(0.0, 1.0) * limit) as i64;
        let b = (clip(self.xmin, w), clip(self.ymin, h), clip(self.xmax, w), clip(self.ymax, h));
        (b.2 > b.0 && b.3 > b.1).then_some(b)
    }
}

/// Fraction of box `b` (pixels: xmin, ymin, xmax, ymax) that `crop` covers.
fn covered_fraction(crop: CropBox, b: (i64, i64, i64, i64)) -> f64 {
    let (cx0, cy0) = (i64::from(crop.x), i64::from(crop.y));
    let (cx1, cy1) = (cx0 + i64::from(crop.width), cy0 + i64::from(crop.height));
    let iw = (cx1.min(b.2) - cx0.max(b.0)).max(0);
    let ih = (cy1.min(b.3) - cy0.max(b.1)).max(0);
    (iw * ih) as f64 / ((b.2 - b.0) * (b.3 - b.1)) as f64
}

/// `tf.image.sample_distorted_bounding_box` with the parameters of `aug`
/// (the original's: a crop of 5–100 % of the image area and aspect ratio
/// 0.75–1.33) that covers at least `aug.min_object_covered` of one of
/// `boxes` (of the whole image when there are none, as TF does). Falls back
/// to the whole image after `aug.max_attempts`. Follows TF's `GenerateRandomCrop`.
pub fn sample_distorted_crop<R: Rng>(
    width: u32,
    height: u32,
    boxes: &[ObjectBox],
    aug: &Augmentation,
    rng: &mut R,
) -> CropBox {
    let whole = CropBox { x: 0, y: 0, width, height };
    let mut targets: Vec<_> = boxes.iter().filter_map(|b| b.to_pixels(width, height)).collect();
    if targets.is_empty() {
        targets.push((0, 0, i64::from(width), i64::from(height)));
    }
    let (w0, h0) = (f64::from(width), f64::from(height));
    let image_area = w0 * h0;
    let (aspect_min, aspect_max) = aug.aspect_ratio_range;
    for _ in 0..aug.max_attempts {
        // A range of one value is that value (random_range refuses empty ranges).
        let aspect = if aspect_max > aspect_min { rng.random_range(aspect_min..aspect_max) } else { aspect_min };
        let min_area = aug.area_range.0 * image_area;
        let max_area = aug.area_range.1 * image_area;
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
        let (w, h) = (w as u32, h as u32);
        let y = rng.random_range(0..=(height - h));
        let x = rng.random_range(0..=(width - w));
        let crop = CropBox { x, y, width: w, height: h };
        if targets.iter().any(|&b| covered_fraction(crop, b) >= aug.min_object_covered) {
            return crop;
        }
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
    CropBox { x, y, width: width - 2 * x, height: height - 2 * y }
}

/// Bilinear resize of `crop` of `img` to `out x out` bytes, with TF1's
/// `align_corners=False` mapping `src = dst * in / out` (no half-pixel shift).
pub fn resize_bilinear(img: &RgbImage, crop: CropBox, out: u32) -> Vec<u8> {
    resize_to_bytes(img, crop, out, ResizeMethod::Bilinear)
}

/// Floats (times `scale`) rounded half up to bytes, clamped to 0..=255.
pub fn quantize(px: &[f32], scale: f32) -> Vec<u8> {
    px.iter().map(|v| to_byte(v * scale)).collect()
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
/// method drawn per example from `aug.resize_methods` (TF's four by
/// default); left-right flip with `aug.flip_probability`; colour distortion
/// in one of the two orders, drawn per example; clip to [0, 1]. (The
/// original ties method and order to the preprocessing thread id; a
/// per-example draw gives the same mixture.) `aug.distort_color = false`
/// skips the colour step. `boxes`: the record's object boxes, if any.
pub fn train_image<R: Rng>(img: &RgbImage, size: u32, boxes: &[ObjectBox], aug: &Augmentation, rng: &mut R) -> Vec<u8> {
    let crop = sample_distorted_crop(img.width(), img.height(), boxes, aug, rng);
    let methods = &aug.resize_methods;
    let method = match methods.len() {
        0 => ResizeMethod::Bilinear,
        n => methods[rng.random_range(0..n)],
    };
    let flip = rng.random_bool(aug.flip_probability.clamp(0.0, 1.0));
    if !aug.distort_color {
        let mut px = resize_to_bytes(img, crop, size, method);
        if flip {
            flip_left_right(&mut px, size);
        }
        return px;
    }
    let mut px = resize(img, crop, size, method);
    if flip {
        flip_left_right(&mut px, size);
    }
    px.iter_mut().for_each(|v| *v /= 255.0);
    crate::color::distort_color_scaled(&mut px, rng.random_range(0..2), aug.color_strength, rng);
    quantize(&px, 255.0)
}

/// Evaluation transform (`eval_image`): central crop 0.875, bilinear resize.
pub fn eval_image(img: &RgbImage, size: u32) -> Vec<u8> {
    eval_image_with(img, size, EVAL_CENTRAL_FRACTION)
}

/// [`eval_image`] with another central fraction (`augment.eval_central_fraction`).
pub fn eval_image_with(img: &RgbImage, size: u32, central_fraction: f64) -> Vec<u8> {
    let crop = central_crop(img.width(), img.height(), central_fraction);
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
    fn quantize_rounds_half_up_and_clamps() {
        let px = [0.0, 0.49, 0.5, 127.5, 254.4, 254.5, 300.0, -3.0, f32::NAN, f32::INFINITY];
        assert_eq!(quantize(&px, 1.0), vec![0, 0, 1, 128, 254, 255, 255, 0, 0, 255]);
        assert_eq!(quantize(&[0.5, 1.0], 255.0), vec![128, 255]);
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
            let c = sample_distorted_crop(w, h, &[], &Augmentation::default(), &mut rng);
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
        let a =
            sample_distorted_crop(w, h, &[], &Augmentation::default(), &mut rand_chacha::ChaCha8Rng::seed_from_u64(1));
        let b =
            sample_distorted_crop(w, h, &[], &Augmentation::default(), &mut rand_chacha::ChaCha8Rng::seed_from_u64(1));
        assert_eq!(a, b, "deterministic for a seed");
    }

    #[test]
    fn crops_cover_a_tenth_of_some_object_box() {
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(11);
        let (w, h) = (500u32, 400u32);
        // A small object in the top-left corner: 50x40 pixels, 1 % of the image.
        let small = ObjectBox { xmin: 0.0, ymin: 0.0, xmax: 0.1, ymax: 0.1 };
        let mut whole_image = 0;
        for _ in 0..500 {
            let c = sample_distorted_crop(w, h, &[small], &Augmentation::default(), &mut rng);
            let (ix, iy) = (50u32.saturating_sub(c.x).min(c.width), 40u32.saturating_sub(c.y).min(c.height));
            let covered = f64::from(ix * iy) / 2000.0;
            assert!(covered >= MIN_OBJECT_COVERED, "{c:?} covers {covered} of the object");
            whole_image += usize::from(c == CropBox { x: 0, y: 0, width: w, height: h });
        }
        assert!(whole_image < 50, "most draws find a crop before the fallback: {whole_image}");
        // Any of several boxes may satisfy the constraint; a degenerate box is ignored.
        let far = ObjectBox { xmin: 0.9, ymin: 0.9, xmax: 1.0, ymax: 1.0 };
        let empty = ObjectBox { xmin: 0.5, ymin: 0.5, xmax: 0.5, ymax: 0.7 };
        let (mut near_hits, mut far_hits) = (0, 0);
        for _ in 0..500 {
            let c = sample_distorted_crop(w, h, &[small, far, empty], &Augmentation::default(), &mut rng);
            near_hits += usize::from(c.x < 50 && c.y < 40);
            far_hits += usize::from(c.x + c.width > 450 && c.y + c.height > 360);
        }
        assert!(near_hits > 50 && far_hits > 50, "both objects get crops: {near_hits} {far_hits}");
        // Only the empty box: treated as no boxes at all (whole-image constraint).
        let c = sample_distorted_crop(w, h, &[empty], &Augmentation::default(), &mut rng);
        assert!(f64::from(c.width * c.height) >= 0.1 * f64::from(w * h));
    }

    fn photo(w: u32, h: u32) -> RgbImage {
        RgbImage::from_fn(w, h, |x, y| image::Rgb([(x * 7 % 256) as u8, (y * 5 % 256) as u8, ((x + y) % 256) as u8]))
    }

    #[test]
    fn a_flip_probability_of_zero_never_flips_and_one_always_does() {
        // A left-right ramp: a flipped image is darker on the left.
        let img = RgbImage::from_fn(64, 64, |x, _| image::Rgb([(x * 4) as u8; 3]));
        let whole = Augmentation { area_range: (1.0, 1.0), distort_color: false, ..Augmentation::default() };
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(3);
        for (probability, flipped) in [(0.0, false), (1.0, true)] {
            let aug = Augmentation { flip_probability: probability, ..whole.clone() };
            for _ in 0..50 {
                let px = train_image(&img, 32, &[], &aug, &mut rng);
                let (left, right) = (px[0], px[31 * 3]);
                assert_eq!(left > right, flipped, "flip probability {probability}: left {left}, right {right}");
            }
        }
    }

    #[test]
    fn a_crop_area_range_of_exactly_one_always_takes_the_whole_image() {
        let aug = Augmentation { area_range: (1.0, 1.0), ..Augmentation::default() };
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(5);
        for (w, h) in [(100, 100), (300, 200), (37, 91)] {
            for _ in 0..200 {
                let c = sample_distorted_crop(w, h, &[], &aug, &mut rng);
                assert_eq!(c, CropBox { x: 0, y: 0, width: w, height: h });
            }
        }
    }

    #[test]
    fn crop_settings_bound_the_crops() {
        let aug = Augmentation { area_range: (0.5, 0.6), aspect_ratio_range: (1.0, 1.0), ..Augmentation::default() };
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(9);
        for _ in 0..500 {
            let c = sample_distorted_crop(400, 400, &[], &aug, &mut rng);
            let area = f64::from(c.width * c.height) / 160_000.0;
            assert!((0.5..=0.6).contains(&area), "{c:?}: {area}");
            assert!(c.width.abs_diff(c.height) <= 1, "square crops: {c:?}");
        }
    }

    #[test]
    fn one_resize_method_and_the_eval_fraction_are_used() {
        let img = photo(90, 70);
        let nearest = Augmentation {
            area_range: (1.0, 1.0),
            flip_probability: 0.0,
            distort_color: false,
            resize_methods: vec![ResizeMethod::NearestNeighbor],
            ..Augmentation::default()
        };
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(1);
        let whole = CropBox { x: 0, y: 0, width: 90, height: 70 };
        let expected = resize_to_bytes(&img, whole, 40, ResizeMethod::NearestNeighbor);
        for _ in 0..20 {
            assert_eq!(train_image(&img, 40, &[], &nearest, &mut rng), expected);
        }
        assert_eq!(eval_image_with(&img, 40, 0.875), eval_image(&img, 40));
        assert_eq!(eval_image_with(&img, 40, 1.0), resize_bilinear(&img, whole, 40));
    }

    #[test]
    fn a_colour_strength_of_zero_leaves_colours_nearly_alone() {
        let img = photo(60, 60);
        let base = Augmentation { area_range: (1.0, 1.0), flip_probability: 0.0, ..Augmentation::default() };
        let calm = Augmentation { color_strength: 0.0, resize_methods: vec![ResizeMethod::Bilinear], ..base };
        let plain = Augmentation { distort_color: false, ..calm.clone() };
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(2);
        let a = train_image(&img, 30, &[], &plain, &mut rng);
        let b = train_image(&img, 30, &[], &calm, &mut rng);
        let worst = a.iter().zip(&b).map(|(x, y)| x.abs_diff(*y)).max().unwrap_or(0);
        assert!(worst <= 1, "strength 0 changes a pixel by {worst}");
    }
}
