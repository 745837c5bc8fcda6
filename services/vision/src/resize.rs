//! TF1's four resize methods (`tf.image.resize_images`, `align_corners=False`,
//! legacy coordinates: `src = dst * in / out`, no half-pixel shift), as
//! `distort_image` picks them: 0 bilinear, 1 nearest neighbour, 2 bicubic,
//! 3 area. Output: `out x out x 3` floats on the 0..255 scale.

use image::RgbImage;

use crate::simd::avx2_dispatch;

/// A crop window in pixels: the part of an image that a resize reads.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CropBox {
    pub x: u32,
    pub y: u32,
    pub width: u32,
    pub height: u32,
}

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
    let mut dst = Vec::with_capacity(out as usize * out as usize * 3);
    resize_dispatch(img, crop, out, method, &mut Output::Floats(&mut dst));
    dst
}

/// [`resize`] rounded to bytes as each output row is made (as
/// `quantize(&resize(..), 1.0)` does, without the whole float image).
pub fn resize_to_bytes(img: &RgbImage, crop: CropBox, out: u32, method: ResizeMethod) -> Vec<u8> {
    let mut dst = Vec::with_capacity(out as usize * out as usize * 3);
    resize_dispatch(img, crop, out, method, &mut Output::Bytes(&mut dst));
    dst
}

/// Where output rows go.
enum Output<'a> {
    Floats(&'a mut Vec<f32>),
    Bytes(&'a mut Vec<u8>),
}

thread_local! {
    /// The horizontal pass's rows, kept between calls: a worker resizes
    /// image after image, and a fresh buffer would be zeroed (~1 MB) each time.
    static ROWS: std::cell::RefCell<Vec<f32>> = const { std::cell::RefCell::new(Vec::new()) };
}

avx2_dispatch!(fn resize_dispatch(img: &RgbImage, crop: CropBox, out: u32, method: ResizeMethod, dst: &mut Output) => resize_portable);

#[inline(always)]
fn resize_portable(img: &RgbImage, crop: CropBox, out: u32, method: ResizeMethod, dst: &mut Output) {
    let src = Source::new(img, crop);
    let o = out as usize;
    let (xt, yt) = (Taps::new(method, src.w, crop.width, out), Taps::new(method, src.h, crop.height, out));
    let row_len = o * 3;
    // Horizontal pass, only for the source rows some output row uses.
    let mut slot = vec![usize::MAX; src.h];
    let mut used = 0;
    for &yy in &yt.index {
        if slot[yy] == usize::MAX {
            slot[yy] = used;
            used += 1;
        }
    }
    // Taken out rather than used inside `with`: a closure would not be
    // compiled for AVX2 with this function.
    let mut rows = ROWS.take();
    if rows.len() < used * row_len {
        rows.resize(used * row_len, 0.0);
    }
    let mut line = vec![0f32; src.w * 3];
    for (yy, &s) in slot.iter().enumerate() {
        if s != usize::MAX {
            src.row_into(yy, &mut line);
            horizontal(&line, &xt, &mut rows[s * row_len..(s + 1) * row_len]);
        }
    }
    // Vertical pass, one output row at a time.
    let mut target = vec![0f32; row_len];
    for y in 0..o {
        let mut taps = yt.of(y);
        if let Some((&yy, &wy)) = taps.next() {
            let source = &rows[slot[yy] * row_len..(slot[yy] + 1) * row_len];
            for (t, s) in target.iter_mut().zip(source) {
                *t = wy * s;
            }
        }
        for (&yy, &wy) in taps {
            let source = &rows[slot[yy] * row_len..(slot[yy] + 1) * row_len];
            for (t, s) in target.iter_mut().zip(source) {
                *t += wy * s;
            }
        }
        match dst {
            Output::Floats(v) => v.extend_from_slice(&target),
            Output::Bytes(v) => v.extend(target.iter().map(|&f| to_byte(f))),
        }
    }
    ROWS.set(rows);
}

/// `v` rounded half up to a byte, clamped to 0..=255 (NaN becomes 0).
#[inline(always)]
#[allow(clippy::manual_clamp)] // clamp keeps NaN, which the cast below must not see
pub(crate) fn to_byte(v: f32) -> u8 {
    // max/min (unlike clamp) turn NaN into 0, so `half_up` is always in
    // [0.5, 255.5]; truncating it rounds half up like round(), without
    // round()'s library call.
    let half_up = v.max(0.0).min(255.0) + 0.5;
    // SAFETY: `half_up` is finite and within i32; the unchecked cast
    // vectorises where the saturating `as` does not.
    unsafe { half_up.to_int_unchecked::<i32>() as u8 }
}

/// The source taps of every output coordinate along one axis, flattened:
/// output `i` reads `index[i * per..]` with `weight[i * per..]`. Methods
/// with fewer taps for some outputs (area) are padded with zero weights,
/// which leave the sums unchanged.
struct Taps {
    per: usize,
    index: Vec<usize>,
    weight: Vec<f32>,
}

impl Taps {
    fn new(method: ResizeMethod, len: usize, span: u32, out: u32) -> Self {
        let lists: Vec<Vec<(usize, f32)>> = (0..out as usize).map(|i| output_taps(method, i, len, span, out)).collect();
        let per = lists.iter().map(Vec::len).max().unwrap_or(1);
        let (mut index, mut weight) = (Vec::with_capacity(per * lists.len()), Vec::with_capacity(per * lists.len()));
        for list in &lists {
            for k in 0..per {
                let (i, w) = list.get(k).copied().unwrap_or((list[0].0, 0.0));
                index.push(i);
                weight.push(w);
            }
        }
        Self { per, index, weight }
    }

    /// Taps of output `i`: (source index, weight) pairs.
    fn of(&self, i: usize) -> impl Iterator<Item = (&usize, &f32)> {
        let at = i * self.per;
        self.index[at..at + self.per].iter().zip(&self.weight[at..at + self.per])
    }
}

/// One source row (`line`, RGB floats) resampled along x into `out`.
#[inline(always)]
fn horizontal(line: &[f32], xt: &Taps, out: &mut [f32]) {
    match xt.per {
        1 => horizontal_fixed::<1>(line, xt, out),
        2 => horizontal_fixed::<2>(line, xt, out),
        3 => horizontal_fixed::<3>(line, xt, out),
        4 => horizontal_fixed::<4>(line, xt, out),
        _ => {
            for (x, acc) in out.chunks_exact_mut(3).enumerate() {
                acc.fill(0.0); // `out` holds an earlier image's row
                for (&xx, &wx) in xt.of(x) {
                    for c in 0..3 {
                        acc[c] += wx * line[xx * 3 + c];
                    }
                }
            }
        }
    }
}

/// [`horizontal`] with the tap count known at compile time, so the tap loop
/// unrolls (bilinear 2, nearest 1, bicubic 4, area mostly 2–3).
#[inline(always)]
fn horizontal_fixed<const T: usize>(line: &[f32], xt: &Taps, out: &mut [f32]) {
    let (index, weight) = (xt.index.as_chunks::<T>().0, xt.weight.as_chunks::<T>().0);
    for ((acc, idx), w) in out.chunks_exact_mut(3).zip(index).zip(weight) {
        let mut sum = [0f32; 3];
        for k in 0..T {
            let p = &line[idx[k] * 3..idx[k] * 3 + 3];
            for c in 0..3 {
                sum[c] += w[k] * p[c];
            }
        }
        acc.copy_from_slice(&sum);
    }
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

    /// Row `y` of the crop as `w * 3` floats.
    #[inline(always)]
    fn row_into(&self, y: usize, line: &mut [f32]) {
        let at = (self.y0 + y) * self.stride + self.x0 * 3;
        for (f, &b) in line.iter_mut().zip(&self.raw[at..at + self.w * 3]) {
            *f = f32::from(b);
        }
    }
}

/// Source taps and weights of output coordinate `i` of `out`, along an axis
/// of `len` pixels of which the crop spans `span`.
fn output_taps(method: ResizeMethod, i: usize, len: usize, span: u32, out: u32) -> Vec<(usize, f32)> {
    let scale = span as f32 / out as f32;
    match method {
        // Coverage over the box size: the mean of the covered pixels.
        ResizeMethod::Area => {
            area_taps(i as f32 * scale, scale, len).into_iter().map(|(k, w)| (k, w / scale)).collect()
        }
        _ => taps(method, i as f32 * scale, len),
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

    /// Every output pixel as a direct 2-D weighted sum (no separable passes).
    fn direct(img: &RgbImage, crop: CropBox, out: u32, method: ResizeMethod) -> Vec<f32> {
        let axis = |len: usize, span: u32| -> Vec<Vec<(usize, f32)>> {
            (0..out as usize).map(|i| output_taps(method, i, len, span, out)).collect()
        };
        let (xt, yt) = (axis(crop.width as usize, crop.width), axis(crop.height as usize, crop.height));
        let mut dst = Vec::new();
        for ys in &yt {
            for xs in &xt {
                for c in 0..3 {
                    let mut sum = 0f32;
                    for &(yy, wy) in ys {
                        for &(xx, wx) in xs {
                            sum += wy * wx * f32::from(img.get_pixel(crop.x + xx as u32, crop.y + yy as u32)[c]);
                        }
                    }
                    dst.push(sum);
                }
            }
        }
        dst
    }

    #[test]
    fn separable_passes_equal_the_direct_sum_for_every_method() {
        let img =
            RgbImage::from_fn(37, 29, |x, y| image::Rgb([(x * 7 + y * 3) as u8, (x * y) as u8, (255 - x * 5) as u8]));
        let crop = CropBox { x: 3, y: 2, width: 31, height: 23 };
        for method in (0..4).map(ResizeMethod::from_index) {
            // Down (area: 1-3 taps per output), up, and an odd ratio.
            for out in [9, 40, 17] {
                let (got, want) = (resize(&img, crop, out, method), direct(&img, crop, out, method));
                assert_eq!(got.len(), want.len());
                for (i, (g, w)) in got.iter().zip(&want).enumerate() {
                    assert!((g - w).abs() < 1e-2, "{method:?} to {out}: element {i} is {g}, direct sum {w}");
                }
            }
        }
    }

    #[test]
    fn avx2_and_portable_builds_give_the_same_bits() {
        let img =
            RgbImage::from_fn(53, 41, |x, y| image::Rgb([(x * 5 + y) as u8, (x * y % 251) as u8, (200 - y * 3) as u8]));
        let crop = CropBox { x: 4, y: 3, width: 45, height: 33 };
        for method in (0..4).map(ResizeMethod::from_index) {
            for out in [19, 64] {
                let mut portable = Vec::new();
                resize_portable(&img, crop, out, method, &mut Output::Floats(&mut portable));
                assert_eq!(resize(&img, crop, out, method), portable, "{method:?} to {out}");
                let mut bytes = Vec::new();
                resize_portable(&img, crop, out, method, &mut Output::Bytes(&mut bytes));
                assert_eq!(resize_to_bytes(&img, crop, out, method), bytes, "{method:?} to {out}, bytes");
            }
        }
    }

    #[test]
    fn bytes_are_the_floats_rounded() {
        let img =
            RgbImage::from_fn(61, 47, |x, y| image::Rgb([(x * 4 + y) as u8, (x * y % 253) as u8, (250 - y * 5) as u8]));
        let crop = CropBox { x: 5, y: 1, width: 50, height: 44 };
        for method in (0..4).map(ResizeMethod::from_index) {
            // Twice: the second call reuses the thread's row buffer.
            for out in [23, 23, 70] {
                let floats = resize(&img, crop, out, method);
                let bytes: Vec<u8> = floats.iter().map(|&f| to_byte(f)).collect();
                assert_eq!(resize_to_bytes(&img, crop, out, method), bytes, "{method:?} to {out}");
            }
        }
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
        let expected =
            [(0.0 + 100.0 / 3.0) * 0.75, (100.0 * 2.0 / 3.0 + 200.0 * 2.0 / 3.0) * 0.75, (200.0 / 3.0 + 250.0) * 0.75];
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
