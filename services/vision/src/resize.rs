//! TF1's four resize methods (`tf.image.resize_images`, `align_corners=False`,
//! legacy coordinates: `src = dst * in / out`, no half-pixel shift), as
//! `distort_image` picks them: 0 bilinear, 1 nearest neighbour, 2 bicubic,
//! 3 area. Output: `out x out x 3` floats on the 0..255 scale.

use image::RgbImage;

use crate::transform::CropBox;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ResizeMethod {
    Bilinear,
    NearestNeighbor,
    Bicubic,
    Area,
}

impl ResizeMethod {
    /// TF1's `ResizeMethod` numbering.
    pub fn from_index(i: u32) -> Self {
        match i % 4 {
            0 => Self::Bilinear,
            1 => Self::NearestNeighbor,
            2 => Self::Bicubic,
            _ => Self::Area,
        }
    }
}

/// Resizes `crop` of `img` to `out x out` with `method`. Every method's
/// weights are a product of an x and a y weight, so it runs as two 1-D
/// passes: each needed source row is resampled horizontally once, then
/// output rows combine those. (A 2-D loop costs taps_x * taps_y per pixel.)
pub fn resize(img: &RgbImage, crop: CropBox, out: u32, method: ResizeMethod) -> Vec<f32> {
    let src = Source::new(img, crop);
    let o = out as usize;
    let axis = |len: usize, span: u32| -> Vec<Vec<(usize, f32)>> {
        let scale = span as f32 / out as f32;
        (0..o)
            .map(|i| match method {
                // Coverage over the box size: the mean of the covered pixels.
                ResizeMethod::Area => area_taps(i as f32 * scale, scale, len).into_iter().map(|(k, w)| (k, w / scale)).collect(),
                _ => taps(method, i as f32 * scale, len),
            })
            .collect()
    };
    let (xt, yt) = (axis(src.w, crop.width), axis(src.h, crop.height));
    let row_len = o * 3;
    // Horizontal pass, only for the source rows some output row uses.
    let mut slot = vec![usize::MAX; src.h];
    let mut rows: Vec<f32> = Vec::new();
    for &(yy, _) in yt.iter().flatten() {
        if slot[yy] != usize::MAX {
            continue;
        }
        slot[yy] = rows.len() / row_len;
        let line = src.row(yy);
        for xtaps in &xt {
            let mut acc = [0f32; 3];
            for &(xx, wx) in xtaps {
                let p = &line[xx * 3..xx * 3 + 3];
                for c in 0..3 {
                    acc[c] += wx * f32::from(p[c]);
                }
            }
            rows.extend_from_slice(&acc);
        }
    }
    // Vertical pass.
    let mut dst = vec![0f32; o * row_len];
    for (y, ytaps) in yt.iter().enumerate() {
        let target = &mut dst[y * row_len..(y + 1) * row_len];
        for &(yy, wy) in ytaps {
            let source = &rows[slot[yy] * row_len..(slot[yy] + 1) * row_len];
            for (t, s) in target.iter_mut().zip(source) {
                *t += wy * s;
            }
        }
    }
    dst
}

struct Source<'a> {
    raw: &'a [u8],
    stride: usize,
    x0: usize,
    y0: usize,
    w: usize,
    h: usize,
}

impl<'a> Source<'a> {
    fn new(img: &'a RgbImage, crop: CropBox) -> Self {
        Self {
            raw: img.as_raw(),
            stride: img.width() as usize * 3,
            x0: crop.x as usize,
            y0: crop.y as usize,
            w: crop.width as usize,
            h: crop.height as usize,
        }
    }

    /// Row `y` of the crop, `w * 3` bytes.
    fn row(&self, y: usize) -> &'a [u8] {
        let at = (self.y0 + y) * self.stride + self.x0 * 3;
        &self.raw[at..at + self.w * 3]
    }
}

/// Source taps and weights of one output coordinate mapped to `coord`.
fn taps(method: ResizeMethod, coord: f32, len: usize) -> Vec<(usize, f32)> {
    let last = len - 1;
    let floor = coord.floor();
    let i = (floor as usize).min(last);
    let t = coord - floor;
    match method {
        ResizeMethod::NearestNeighbor => vec![(i, 1.0)],
        ResizeMethod::Bilinear => vec![(i, 1.0 - t), ((i + 1).min(last), t)],
        _ => {
            // Keys' cubic convolution with a = -0.5, edges clamped (TF1 legacy bicubic).
            let a = -0.5f32;
            let w = |d: f32| {
                let d = d.abs();
                if d <= 1.0 {
                    ((a + 2.0) * d - (a + 3.0)) * d * d + 1.0
                } else if d < 2.0 {
                    ((a * d - 5.0 * a) * d + 8.0 * a) * d - 4.0 * a
                } else {
                    0.0
                }
            };
            (-1i64..=2)
                .map(|k| {
                    let idx = (i as i64 + k).clamp(0, last as i64) as usize;
                    (idx, w(t - k as f32))
                })
                .collect()
        }
    }
}

/// Source pixels covered by `[start, start + scale)` and their coverage.
fn area_taps(start: f32, scale: f32, len: usize) -> Vec<(usize, f32)> {
    let end = start + scale;
    let mut out = Vec::new();
    let mut i = start.floor() as usize;
    while (i as f32) < end && i < len {
        let lo = start.max(i as f32);
        let hi = end.min(i as f32 + 1.0);
        if hi > lo {
            out.push((i, hi - lo));
        }
        i += 1;
    }
    if out.is_empty() {
        out.push(((start as usize).min(len - 1), scale));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ramp(values: &[u8]) -> RgbImage {
        let mut img = RgbImage::new(values.len() as u32, 1);
        for (x, v) in values.iter().enumerate() {
            img.put_pixel(x as u32, 0, image::Rgb([*v, *v, *v]));
        }
        img
    }

    fn row(img: &RgbImage, out: u32, method: ResizeMethod) -> Vec<f32> {
        let crop = CropBox { x: 0, y: 0, width: img.width(), height: img.height() };
        resize(img, crop, out, method).chunks(3).take(out as usize).map(|p| p[0]).collect()
    }

    #[test]
    fn nearest_and_bilinear_use_legacy_coordinates() {
        let img = ramp(&[0, 100, 200, 250]);
        // 4 -> 8: src = dst / 2.
        assert_eq!(row(&img, 8, ResizeMethod::NearestNeighbor), vec![0., 0., 100., 100., 200., 200., 250., 250.]);
        assert_eq!(row(&img, 8, ResizeMethod::Bilinear), vec![0., 50., 100., 150., 200., 225., 250., 250.]);
    }

    #[test]
    fn area_averages_the_covered_pixels() {
        let img = ramp(&[0, 100, 200, 250]);
        // 4 -> 2: each output averages two inputs; 4 -> 3: scale 4/3 with partial coverage.
        assert_eq!(row(&img, 2, ResizeMethod::Area), vec![50., 225.]);
        let third = row(&img, 3, ResizeMethod::Area);
        let expected = [(0.0 + 100.0 / 3.0) * 0.75, (100.0 * 2.0 / 3.0 + 200.0 * 2.0 / 3.0) * 0.75, (200.0 / 3.0 + 250.0) * 0.75];
        for (g, e) in third.iter().zip(expected) {
            assert!((g - e).abs() < 1e-3, "{third:?} vs {expected:?}");
        }
    }

    #[test]
    fn bicubic_interpolates_smoothly_and_keeps_constants() {
        let flat = ramp(&[80; 6]);
        assert!(row(&flat, 11, ResizeMethod::Bicubic).iter().all(|v| (v - 80.0).abs() < 1e-3));
        let img = ramp(&[0, 0, 100, 100]);
        let up = row(&img, 8, ResizeMethod::Bicubic);
        // Sample points hit the source exactly at even outputs.
        assert_eq!((up[0], up[2], up[4]), (0.0, 0.0, 100.0));
        // Midway between 0 and 100 with symmetric neighbours: exactly 50.
        assert!((up[3] - 50.0).abs() < 1e-4, "{up:?}");
        // Keys' kernel overshoots a step slightly.
        assert!(up[1] < 0.0, "{up:?}");
    }
}
