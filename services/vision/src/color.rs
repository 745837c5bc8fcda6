//! `distort_color` of `image_processing.py` on RGB floats in [0, 1]:
//! random brightness (±32/255), saturation (×0.5–1.5), hue (±0.2 of the
//! circle) and contrast (×0.5–1.5 around each channel's mean), in one of the
//! two orders, then clipped to [0, 1]. Saturation and hue go through HSV as
//! `tf.image.adjust_saturation` / `adjust_hue` do.
//!
//! The HSV round trip runs on blocks of `LANES` pixels split into r, g and b
//! arrays: straight-line arithmetic on arrays is what the compiler turns
//! into vector instructions (pixel by pixel on interleaved RGB it stays
//! scalar), and [`crate::simd`] compiles it for AVX2 where the CPU has it.

use rand::Rng;

use crate::simd::avx2_dispatch;

pub const MAX_BRIGHTNESS_DELTA: f32 = 32.0 / 255.0;
pub const SATURATION_RANGE: (f32, f32) = (0.5, 1.5);
pub const MAX_HUE_DELTA: f32 = 0.2;
pub const CONTRAST_RANGE: (f32, f32) = (0.5, 1.5);

/// Pixels per block of the HSV kernel (one AVX2 register of f32).
const LANES: usize = 8;

#[inline(always)]
pub fn adjust_brightness(px: &mut [f32], delta: f32) {
    px.iter_mut().for_each(|v| *v += delta);
}

/// Per-channel means of interleaved RGB. Summed in 8 interleaved partial
/// sums per channel (a vector register's worth), then combined: one running
/// sum per channel is a chain of dependent additions the CPU cannot overlap.
#[inline(always)]
fn channel_means(px: &[f32]) -> [f32; 3] {
    let n = (px.len() / 3).max(1) as f32;
    let (blocks, rest) = px.as_chunks::<{ 3 * LANES }>();
    let mut partial = [0f32; 3 * LANES];
    for block in blocks {
        for (acc, v) in partial.iter_mut().zip(block) {
            *acc += v;
        }
    }
    let mut sum = [0f32; 3];
    for (i, v) in partial.iter().chain(rest).enumerate() {
        sum[i % 3] += v;
    }
    sum.map(|m| m / n)
}

/// Per channel: `(x - mean) * factor + mean`.
#[inline(always)]
pub fn adjust_contrast(px: &mut [f32], factor: f32) {
    let mean = channel_means(px);
    // Six channels at a time (two pixels) keeps the loop free of `% 3`.
    let mean6 = [mean[0], mean[1], mean[2], mean[0], mean[1], mean[2]];
    let mut pairs = px.chunks_exact_mut(6);
    for p in &mut pairs {
        for c in 0..6 {
            p[c] = (p[c] - mean6[c]) * factor + mean6[c];
        }
    }
    for (c, v) in pairs.into_remainder().iter_mut().enumerate() {
        *v = (*v - mean[c]) * factor + mean[c];
    }
}

/// RGB -> HSV with h, s, v in [0, 1] (h as a fraction of the circle).
/// Written with selects rather than branches: hue sectors vary pixel to
/// pixel, and mispredicted branches dominated the colour distortion.
#[inline(always)]
pub fn rgb_to_hsv(r: f32, g: f32, b: f32) -> (f32, f32, f32) {
    let max = r.max(g).max(b);
    let min = r.min(g).min(b);
    let delta = max - min;
    let inv = if delta > 0.0 { 1.0 / delta } else { 0.0 };
    let from_r = (g - b) * inv; // in [-1, 1]
    let from_r = if from_r < 0.0 { from_r + 6.0 } else { from_r };
    let from_g = (b - r) * inv + 2.0;
    let from_b = (r - g) * inv + 4.0;
    let h6 = if max == r {
        from_r
    } else if max == g {
        from_g
    } else {
        from_b
    };
    let h = if delta > 0.0 { h6 / 6.0 } else { 0.0 };
    let s = if max > 0.0 { delta / max } else { 0.0 };
    (h, s, max)
}

/// HSV -> RGB; `h` may be up to one turn outside [0, 1) (hue shifts wrap).
/// Channel n (r = 5, g = 3, b = 1) is `v - v s clamp(min(k, 4 - k), 0, 1)`
/// with `k = (n + 6h) mod 6`: the sector table without branches.
#[inline(always)]
pub fn hsv_to_rgb(h: f32, s: f32, v: f32) -> (f32, f32, f32) {
    let h = if h < 0.0 {
        h + 1.0
    } else if h >= 1.0 {
        h - 1.0
    } else {
        h
    };
    let h6 = h * 6.0;
    let channel = |n: f32| {
        let k = n + h6;
        let k = if k >= 6.0 { k - 6.0 } else { k };
        v - v * s * k.min(4.0 - k).clamp(0.0, 1.0)
    };
    (channel(5.0), channel(3.0), channel(1.0))
}

/// Saturation times `factor` (clipped to [0, 1]), then hue rotated by
/// `delta`, in one HSV round trip, on `LANES` pixels.
#[inline(always)]
fn saturation_and_hue_lanes(r: &mut [f32; LANES], g: &mut [f32; LANES], b: &mut [f32; LANES], factor: f32, delta: f32) {
    for i in 0..LANES {
        let (h, s, v) = rgb_to_hsv(r[i], g[i], b[i]);
        (r[i], g[i], b[i]) = hsv_to_rgb(h + delta, (s * factor).clamp(0.0, 1.0), v);
    }
}

#[inline(always)]
fn saturation_and_hue_block(block: &mut [f32; 3 * LANES], factor: f32, delta: f32) {
    let (mut r, mut g, mut b) = ([0f32; LANES], [0f32; LANES], [0f32; LANES]);
    for i in 0..LANES {
        (r[i], g[i], b[i]) = (block[3 * i], block[3 * i + 1], block[3 * i + 2]);
    }
    saturation_and_hue_lanes(&mut r, &mut g, &mut b, factor, delta);
    for i in 0..LANES {
        (block[3 * i], block[3 * i + 1], block[3 * i + 2]) = (r[i], g[i], b[i]);
    }
}

#[inline(always)]
fn saturation_and_hue_portable(px: &mut [f32], factor: f32, delta: f32) {
    let (blocks, rest) = px.as_chunks_mut::<{ 3 * LANES }>();
    for block in blocks {
        saturation_and_hue_block(block, factor, delta);
    }
    if !rest.is_empty() {
        // Zero padding is a valid pixel (black) and is dropped afterwards.
        let mut padded = [0f32; 3 * LANES];
        padded[..rest.len()].copy_from_slice(rest);
        saturation_and_hue_block(&mut padded, factor, delta);
        rest.copy_from_slice(&padded[..rest.len()]);
    }
}

avx2_dispatch!(
    /// Saturation then hue in one HSV round trip (they are adjacent in both
    /// orders); the same as [`adjust_saturation`] followed by [`adjust_hue`].
    pub fn adjust_saturation_and_hue(px: &mut [f32], factor: f32, delta: f32) => saturation_and_hue_portable
);

/// Saturation times `factor`, clipped to [0, 1].
pub fn adjust_saturation(px: &mut [f32], factor: f32) {
    adjust_saturation_and_hue(px, factor, 0.0);
}

/// Hue rotated by `delta` (a fraction of the circle).
pub fn adjust_hue(px: &mut [f32], delta: f32) {
    adjust_saturation_and_hue(px, 1.0, delta);
}

/// The original's `distort_color` with `ordering` 0 or 1, then the clip.
pub fn distort_color<R: Rng>(px: &mut [f32], ordering: u32, rng: &mut R) {
    distort_color_scaled(px, ordering, 1.0, rng);
}

/// [`distort_color`] with every range scaled by `strength` around its
/// neutral value (1 = the original's ranges, 0 = no change).
pub fn distort_color_scaled<R: Rng>(px: &mut [f32], ordering: u32, strength: f32, rng: &mut R) {
    let around_one = |(low, high): (f32, f32)| (1.0 - (1.0 - low) * strength, 1.0 + (high - 1.0) * strength);
    let (max_brightness, max_hue) = (MAX_BRIGHTNESS_DELTA * strength, MAX_HUE_DELTA * strength);
    let (saturation_range, contrast_range) = (around_one(SATURATION_RANGE), around_one(CONTRAST_RANGE));
    let brightness = rng.random_range(-max_brightness..=max_brightness);
    let saturation = rng.random_range(saturation_range.0..=saturation_range.1);
    let hue = rng.random_range(-max_hue..=max_hue);
    let contrast = rng.random_range(contrast_range.0..=contrast_range.1);
    apply_color(px, ordering, brightness, saturation, hue, contrast);
}

avx2_dispatch!(fn apply_color(px: &mut [f32], ordering: u32, brightness: f32, saturation: f32, hue: f32, contrast: f32) => apply_color_portable);

#[inline(always)]
fn apply_color_portable(px: &mut [f32], ordering: u32, brightness: f32, saturation: f32, hue: f32, contrast: f32) {
    adjust_brightness(px, brightness);
    if ordering.is_multiple_of(2) {
        saturation_and_hue_portable(px, saturation, hue);
        adjust_contrast(px, contrast);
    } else {
        adjust_contrast(px, contrast);
        saturation_and_hue_portable(px, saturation, hue);
    }
    px.iter_mut().for_each(|v| *v = v.clamp(0.0, 1.0));
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;

    fn close(a: &[f32], b: &[f32]) -> bool {
        a.iter().zip(b).all(|(x, y)| (x - y).abs() < 1e-5)
    }

    #[test]
    fn hsv_matches_the_textbook_definition() {
        assert_eq!(rgb_to_hsv(1.0, 0.0, 0.0), (0.0, 1.0, 1.0));
        let (h, s, v) = rgb_to_hsv(0.0, 0.5, 0.5); // cyan, half bright
        assert!((h - 0.5).abs() < 1e-6 && (s - 1.0).abs() < 1e-6 && (v - 0.5).abs() < 1e-6);
        let (h, s, v) = rgb_to_hsv(0.2, 0.4, 0.8); // max blue: h = (4 + (r-g)/d)/6
        assert!((h - (4.0 + (0.2 - 0.4) / 0.6) / 6.0).abs() < 1e-6, "{h}");
        assert!((s - 0.75).abs() < 1e-6 && (v - 0.8).abs() < 1e-6);
        for rgb in [(0.1f32, 0.7f32, 0.3f32), (0.9, 0.2, 0.6), (0.5, 0.5, 0.5)] {
            let (h, s, v) = rgb_to_hsv(rgb.0, rgb.1, rgb.2);
            let back = hsv_to_rgb(h, s, v);
            assert!(close(&[back.0, back.1, back.2], &[rgb.0, rgb.1, rgb.2]), "{rgb:?} -> {back:?}");
        }
    }

    #[test]
    fn hue_rotates_red_to_green_and_saturation_scales_towards_grey() {
        let mut px = vec![1.0, 0.0, 0.0];
        adjust_hue(&mut px, 1.0 / 3.0);
        assert!(close(&px, &[0.0, 1.0, 0.0]), "{px:?}");
        let mut px = vec![0.8, 0.4, 0.4]; // s = 0.5, v = 0.8
        adjust_saturation(&mut px, 0.5); // s = 0.25: min = v * (1 - s) = 0.6
        assert!(close(&px, &[0.8, 0.6, 0.6]), "{px:?}");
        let mut px = vec![0.8, 0.4, 0.4];
        adjust_saturation(&mut px, 4.0); // clipped at s = 1
        assert!(close(&px, &[0.8, 0.0, 0.0]), "{px:?}");
    }

    #[test]
    fn one_round_trip_equals_saturation_then_hue() {
        let base = vec![0.8, 0.4, 0.4, 0.1, 0.7, 0.3, 0.5, 0.5, 0.5];
        let (mut a, mut b) = (base.clone(), base);
        adjust_saturation(&mut a, 1.3);
        adjust_hue(&mut a, -0.15);
        adjust_saturation_and_hue(&mut b, 1.3, -0.15);
        assert!(close(&a, &b), "{a:?} vs {b:?}");
    }

    #[test]
    fn blocked_kernel_equals_pixel_by_pixel_round_trip() {
        // 37 pixels: four full blocks of 8 and a padded remainder of 5.
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(5);
        let base: Vec<f32> = (0..37 * 3).map(|_| rng.random_range(0.0..1.0)).collect();
        let mut fast = base.clone();
        adjust_saturation_and_hue(&mut fast, 1.4, 0.17);
        let reference: Vec<f32> = base
            .chunks_exact(3)
            .flat_map(|p| {
                let (h, s, v) = rgb_to_hsv(p[0], p[1], p[2]);
                let (r, g, b) = hsv_to_rgb(h + 0.17, (s * 1.4).clamp(0.0, 1.0), v);
                [r, g, b]
            })
            .collect();
        // Bit for bit: vector or scalar, the same IEEE operations in the same order.
        assert_eq!(fast, reference);
    }

    #[test]
    fn avx2_and_portable_builds_give_the_same_bits() {
        // On a CPU with AVX2 the public functions take the AVX2 copy; the
        // portable one is what CPUs without it run. No FMA: equal bits.
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(13);
        let base: Vec<f32> = (0..101 * 3).map(|_| rng.random_range(-0.1..1.1)).collect();
        for ordering in [0, 1] {
            let (mut fast, mut portable) = (base.clone(), base.clone());
            apply_color(&mut fast, ordering, 0.05, 1.3, -0.12, 0.7);
            apply_color_portable(&mut portable, ordering, 0.05, 1.3, -0.12, 0.7);
            assert_eq!(fast, portable, "ordering {ordering}");
        }
    }

    #[test]
    fn contrast_zero_gives_every_pixel_its_channel_mean() {
        // 37 pixels: blocked partial sums plus a remainder.
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(9);
        let mut px: Vec<f32> = (0..37 * 3).map(|_| rng.random_range(0.0..1.0)).collect();
        let mean: Vec<f64> =
            (0..3).map(|c| px.iter().skip(c).step_by(3).map(|&v| f64::from(v)).sum::<f64>() / 37.0).collect();
        adjust_contrast(&mut px, 0.0);
        for (i, v) in px.iter().enumerate() {
            assert!((f64::from(*v) - mean[i % 3]).abs() < 1e-6, "element {i}: {v} vs mean {}", mean[i % 3]);
        }
    }

    #[test]
    fn contrast_handles_an_odd_pixel_count() {
        let mut px = vec![0.2, 0.0, 1.0, 0.6, 0.5, 0.0, 0.4, 1.0, 0.5]; // means 0.4, 0.5, 0.5
        adjust_contrast(&mut px, 2.0);
        assert!(close(&px, &[0.0, -0.5, 1.5, 0.8, 0.5, -0.5, 0.4, 1.5, 0.5]), "{px:?}");
    }

    #[test]
    fn contrast_scales_around_each_channel_mean() {
        let mut px = vec![0.2, 0.0, 1.0, 0.6, 0.5, 0.0];
        adjust_contrast(&mut px, 0.5); // means 0.4, 0.25, 0.5
        assert!(close(&px, &[0.3, 0.125, 0.75, 0.5, 0.375, 0.25]), "{px:?}");
        let mut px = vec![0.5, 0.5, 0.5];
        adjust_brightness(&mut px, 0.1);
        assert!(close(&px, &[0.6, 0.6, 0.6]));
    }

    #[test]
    fn distortion_stays_in_range_and_is_seeded() {
        let base: Vec<f32> = (0..300).map(|i| (i % 256) as f32 / 255.0).collect();
        let run = |seed, ordering| {
            let mut px = base.clone();
            distort_color(&mut px, ordering, &mut rand_chacha::ChaCha8Rng::seed_from_u64(seed));
            px
        };
        let a = run(3, 0);
        assert!(a.iter().all(|v| (0.0..=1.0).contains(v)));
        assert_eq!(a, run(3, 0));
        assert_ne!(a, run(3, 1), "the two orders differ");
        assert_ne!(a, run(4, 0));
    }
}
