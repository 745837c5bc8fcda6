//! Decoding with guards: the format is detected from the bytes (not the file
//! name) and the pixel count is checked before any pixel is decoded, so a
//! decompression bomb costs nothing.

use image::{ImageFormat, ImageReader, RgbImage};
use std::io::Cursor;

#[derive(Debug, thiserror::Error)]
pub enum VisionError {
    #[error("empty file")]
    Empty,
    #[error("not a recognised image format")]
    UnknownFormat,
    #[error("image is {width}x{height} = {pixels} pixels, above the limit of {limit}")]
    TooLarge { width: u32, height: u32, pixels: u64, limit: u64 },
    #[error("cannot decode {format:?} image: {message}")]
    Decode { format: ImageFormat, message: String },
    #[error("truncated JPEG: no end-of-image marker after the last scan")]
    TruncatedJpeg,
    #[error("cannot encode JPEG: {0}")]
    Encode(String),
}

/// A decoded image, always 8-bit RGB, and the format its bytes were in.
pub struct DecodedImage {
    pub image: RgbImage,
    pub format: ImageFormat,
    /// True when the source was already 8-bit, 3-channel RGB (no conversion).
    pub was_rgb8: bool,
}

/// Decodes any supported format to 8-bit RGB (grey, palette, RGBA, 16-bit and
/// CMYK are converted), refusing images over `max_pixels`.
pub fn decode_rgb(bytes: &[u8], max_pixels: u64) -> Result<DecodedImage, VisionError> {
    if bytes.is_empty() {
        return Err(VisionError::Empty);
    }
    let format = image::guess_format(bytes).map_err(|_| VisionError::UnknownFormat)?;
    let decode_err = |e: image::ImageError| VisionError::Decode { format, message: e.to_string() };
    if format == ImageFormat::Tiff {
        // The TIFF decoder reads a tag's values as its entry declares them
        // (up to 1 MiB a tag) before any size is known.
        check_tiff_entries(bytes)?;
    }
    let (width, height) = if format == ImageFormat::Jpeg {
        // Walked first because the JPEG decoder fills a cut-off scan with
        // grey instead of failing; the frame header it reads gives the size.
        let header = read_jpeg_markers(bytes)?;
        (header.width, header.height)
    } else {
        ImageReader::with_format(Cursor::new(bytes), format).into_dimensions().map_err(decode_err)?
    };
    let pixels = u64::from(width) * u64::from(height);
    if pixels > max_pixels || pixels == 0 {
        return Err(VisionError::TooLarge { width, height, pixels, limit: max_pixels });
    }
    let mut reader = ImageReader::with_format(Cursor::new(bytes), format);
    let mut limits = image::Limits::default();
    // RGBA16 is the widest layout decoders produce: 8 bytes per pixel.
    limits.max_alloc = Some(pixels.saturating_mul(8).saturating_add(1 << 20));
    reader.limits(limits);
    let dynamic = reader.decode().map_err(decode_err)?;
    let was_rgb8 = matches!(dynamic, image::DynamicImage::ImageRgb8(_));
    Ok(DecodedImage { image: dynamic.into_rgb8(), format, was_rgb8 })
}

/// Refuses a TIFF whose first directory (the image decoded) has an entry
/// declaring more bytes of values than the whole file holds: such a count
/// cannot be true, and the decoder would allocate for it.
pub fn check_tiff_entries(bytes: &[u8]) -> Result<(), VisionError> {
    let bad = |message: String| VisionError::Decode { format: ImageFormat::Tiff, message };
    let little = match bytes.get(..2) {
        Some(b"II") => true,
        Some(b"MM") => false,
        _ => return Err(bad("no byte-order mark".into())),
    };
    let read = |at: usize, len: usize| -> Option<u64> {
        let field = bytes.get(at..at.checked_add(len)?)?;
        let fold = |acc: u64, b: &u8| (acc << 8) | u64::from(*b);
        Some(if little { field.iter().rev().fold(0, fold) } else { field.iter().fold(0, fold) })
    };
    let truncated = || bad("the first directory is cut off".into());
    // Classic TIFF: 4-byte offsets and counts, 12-byte entries; BigTIFF: 8 and 20.
    let (offset_len, entry_len, count_len, first) = match read(2, 2) {
        Some(42) => (4, 12, 2, read(4, 4)),
        Some(43) => (8, 20, 8, read(8, 8)),
        _ => return Err(bad("not TIFF's magic number".into())),
    };
    let ifd = usize::try_from(first.ok_or_else(truncated)?).map_err(|_| truncated())?;
    let entries = read(ifd, count_len).ok_or_else(truncated)?;
    let file_len = bytes.len() as u64;
    for i in 0..entries {
        let at = ifd + count_len + i as usize * entry_len;
        let (Some(tag), Some(kind), Some(count)) = (read(at, 2), read(at + 2, 2), read(at + 4, offset_len)) else {
            return Err(truncated());
        };
        let declared = count.saturating_mul(tiff_type_bytes(kind));
        if declared > file_len {
            return Err(bad(format!(
                "tag {tag} declares {count} values ({declared} bytes) in a file of {file_len} bytes"
            )));
        }
    }
    Ok(())
}

/// Bytes of one value of a TIFF field type (unknown types: 1).
fn tiff_type_bytes(kind: u64) -> u64 {
    match kind {
        3 | 8 => 2,
        4 | 9 | 11 | 13 => 4,
        5 | 10 | 12 | 16 | 17 | 18 => 8,
        _ => 1,
    }
}

/// What a JPEG's marker segments say, read without decoding a pixel.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct JpegHeader {
    pub width: u32,
    pub height: u32,
    pub components: u8,
    pub precision: u8,
}

/// Walks a JPEG's marker segments from SOI to EOI (every scan of a
/// progressive file included), checking their lengths and order: a frame
/// header before the first scan, Huffman or arithmetic tables, every scan's
/// entropy-coded data ended by a marker, and the end-of-image marker. This
/// catches cut-off files, non-JPEG data and broken headers; it cannot see
/// damage inside the entropy-coded data (a full decode can).
pub fn read_jpeg_markers(bytes: &[u8]) -> Result<JpegHeader, VisionError> {
    let bad = |message: String| VisionError::Decode { format: ImageFormat::Jpeg, message };
    if bytes.len() < 4 || bytes[0] != 0xFF || bytes[1] != 0xD8 {
        return Err(bad("no start-of-image marker".into()));
    }
    let mut at = 2;
    let mut header: Option<JpegHeader> = None;
    let mut scans = 0;
    loop {
        // Markers may be preceded by fill bytes (0xFF).
        while at < bytes.len() && bytes[at] == 0xFF && at + 1 < bytes.len() && bytes[at + 1] == 0xFF {
            at += 1;
        }
        if at + 1 >= bytes.len() {
            return Err(VisionError::TruncatedJpeg);
        }
        if bytes[at] != 0xFF {
            return Err(bad(format!("expected a marker at byte {at}, found 0x{:02X}", bytes[at])));
        }
        let marker = bytes[at + 1];
        at += 2;
        match marker {
            0xD9 => break,
            0xD0..=0xD7 | 0x01 => continue,
            _ => {}
        }
        if at + 2 > bytes.len() {
            return Err(VisionError::TruncatedJpeg);
        }
        let length = usize::from(u16::from_be_bytes([bytes[at], bytes[at + 1]]));
        if length < 2 || at + length > bytes.len() {
            return Err(if at + length > bytes.len() {
                VisionError::TruncatedJpeg
            } else {
                bad(format!("segment 0xFF{marker:02X} at byte {} has length {length}", at - 2))
            });
        }
        let segment = &bytes[at + 2..at + length];
        match marker {
            // Start of frame (not DHT C4, JPG C8, DAC CC).
            0xC0..=0xCF if !matches!(marker, 0xC4 | 0xC8 | 0xCC) => {
                if segment.len() < 6 {
                    return Err(bad("short frame header".into()));
                }
                let h = JpegHeader {
                    precision: segment[0],
                    height: u32::from(u16::from_be_bytes([segment[1], segment[2]])),
                    width: u32::from(u16::from_be_bytes([segment[3], segment[4]])),
                    components: segment[5],
                };
                if h.width == 0
                    || h.height == 0
                    || !matches!(h.components, 1 | 3 | 4)
                    || segment.len() < 6 + 3 * usize::from(h.components)
                {
                    return Err(bad(format!("invalid frame header {h:?}")));
                }
                header = Some(h);
            }
            0xDA => {
                if header.is_none() {
                    return Err(bad("scan before the frame header".into()));
                }
                scans += 1;
                // Entropy-coded data: 0xFF is followed by 0x00 (stuffing) or a
                // restart marker inside it; anything else ends it.
                let mut i = at + length;
                loop {
                    let Some(ff) = memchr::memchr(0xFF, &bytes[i..]) else { return Err(VisionError::TruncatedJpeg) };
                    i += ff;
                    match bytes.get(i + 1) {
                        None => return Err(VisionError::TruncatedJpeg),
                        Some(0x00 | 0xD0..=0xD7 | 0xFF) => i += 1,
                        Some(_) => break,
                    }
                }
                at = i;
                continue;
            }
            _ => {}
        }
        at += length;
    }
    match header {
        Some(h) if scans > 0 => Ok(h),
        Some(_) => Err(bad("no scan".into())),
        None => Err(bad("no frame header".into())),
    }
}

/// How thoroughly [`to_rgb_jpeg_checked`] checks a JPEG that it keeps as is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum JpegCheck {
    /// Decode every pixel (what build_image_data.py does).
    Decode,
    /// Read the marker structure only (see [`read_jpeg_markers`]): many
    /// times faster; damage inside the entropy-coded data is then found by
    /// the preprocess workers, which skip and count such records.
    Markers,
}

/// The bytes a record stores: the original bytes when they already are an
/// 8-bit RGB JPEG (as build_image_data.py keeps them), otherwise a JPEG
/// re-encoded at quality 100 (as it does for PNG). Returns bytes, width, height.
pub fn to_rgb_jpeg(bytes: &[u8], max_pixels: u64) -> Result<(Vec<u8>, u32, u32), VisionError> {
    to_rgb_jpeg_checked(bytes, max_pixels, JpegCheck::Decode)
}

/// As [`to_rgb_jpeg`], checking 8-bit 3-component JPEGs as `check` says
/// (anything else is decoded: it must be converted anyway).
pub fn to_rgb_jpeg_checked(
    bytes: &[u8],
    max_pixels: u64,
    check: JpegCheck,
) -> Result<(Vec<u8>, u32, u32), VisionError> {
    match inspect(bytes, max_pixels, check)? {
        Verdict::Keep(w, h) => Ok((bytes.to_vec(), w, h)),
        Verdict::Converted(out, w, h) => Ok((out, w, h)),
    }
}

/// As [`to_rgb_jpeg_checked`], taking the bytes: a kept JPEG is returned
/// without a copy.
pub fn into_rgb_jpeg_checked(
    bytes: Vec<u8>,
    max_pixels: u64,
    check: JpegCheck,
) -> Result<(Vec<u8>, u32, u32), VisionError> {
    match inspect(&bytes, max_pixels, check)? {
        Verdict::Keep(w, h) => Ok((bytes, w, h)),
        Verdict::Converted(out, w, h) => Ok((out, w, h)),
    }
}

enum Verdict {
    /// The bytes are an 8-bit RGB JPEG of this width and height.
    Keep(u32, u32),
    /// Re-encoded as an RGB JPEG.
    Converted(Vec<u8>, u32, u32),
}

fn inspect(bytes: &[u8], max_pixels: u64, check: JpegCheck) -> Result<Verdict, VisionError> {
    if check == JpegCheck::Markers && bytes.starts_with(&[0xFF, 0xD8]) {
        let h = read_jpeg_markers(bytes)?;
        let pixels = u64::from(h.width) * u64::from(h.height);
        if pixels > max_pixels {
            return Err(VisionError::TooLarge { width: h.width, height: h.height, pixels, limit: max_pixels });
        }
        if h.precision == 8 && h.components == 3 {
            return Ok(Verdict::Keep(h.width, h.height));
        }
    }
    let decoded = decode_rgb(bytes, max_pixels)?;
    let (w, h) = decoded.image.dimensions();
    if decoded.format == ImageFormat::Jpeg && decoded.was_rgb8 {
        return Ok(Verdict::Keep(w, h));
    }
    let mut out = Vec::new();
    let encoder = image::codecs::jpeg::JpegEncoder::new_with_quality(&mut out, 100);
    decoded.image.write_with_encoder(encoder).map_err(|e| VisionError::Encode(e.to_string()))?;
    Ok(Verdict::Converted(out, w, h))
}

#[cfg(test)]
mod marker_tests {
    use super::*;

    fn jpeg(w: u32, h: u32) -> Vec<u8> {
        let img =
            image::RgbImage::from_fn(w, h, |x, y| image::Rgb([(x * 7) as u8, (y * 5) as u8, ((x ^ y) * 3) as u8]));
        let mut out = Cursor::new(Vec::new());
        image::DynamicImage::ImageRgb8(img).write_to(&mut out, ImageFormat::Jpeg).unwrap();
        out.into_inner()
    }

    #[test]
    fn markers_give_the_frame_and_catch_cut_and_broken_files() {
        let good = jpeg(50, 30);
        assert_eq!(
            read_jpeg_markers(&good).unwrap(),
            JpegHeader { width: 50, height: 30, components: 3, precision: 8 }
        );
        for cut in [good.len() - 2, good.len() / 2, 200, 3] {
            assert!(read_jpeg_markers(&good[..cut]).is_err(), "cut at {cut} of {}", good.len());
            assert!(to_rgb_jpeg_checked(&good[..cut], 1 << 20, JpegCheck::Markers).is_err());
        }
        assert!(read_jpeg_markers(b"\xFF\xD8not really").is_err());
        let (kept, w, h) = to_rgb_jpeg_checked(&good, 1 << 20, JpegCheck::Markers).unwrap();
        assert_eq!((kept.as_slice(), w, h), (good.as_slice(), 50, 30));
        // The pixel limit applies without decoding.
        assert!(matches!(
            to_rgb_jpeg_checked(&good, 1000, JpegCheck::Markers),
            Err(VisionError::TooLarge { pixels: 1500, .. })
        ));
        // A broken segment length.
        let mut broken = good;
        let sof = broken.windows(2).position(|w| w == [0xFF, 0xC0]).unwrap();
        broken[sof + 2] = 0xFF;
        assert!(read_jpeg_markers(&broken).is_err());
        // Grey JPEGs are converted (decoded) whatever the check.
        let grey = {
            let img = image::GrayImage::from_fn(20, 20, |x, _| image::Luma([x as u8 * 10]));
            let mut out = Cursor::new(Vec::new());
            image::DynamicImage::ImageLuma8(img).write_to(&mut out, ImageFormat::Jpeg).unwrap();
            out.into_inner()
        };
        let (converted, _, _) = to_rgb_jpeg_checked(&grey, 1 << 20, JpegCheck::Markers).unwrap();
        assert_ne!(converted, grey);
        assert_eq!(read_jpeg_markers(&converted).unwrap().components, 3);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use image::{ImageBuffer, Luma, Rgba};

    fn encode(img: image::DynamicImage, format: ImageFormat) -> Vec<u8> {
        let mut out = Cursor::new(Vec::new());
        img.write_to(&mut out, format).unwrap();
        out.into_inner()
    }

    #[test]
    fn rgb_jpeg_bytes_are_kept_and_png_is_converted() {
        let rgb = image::DynamicImage::ImageRgb8(RgbImage::from_pixel(8, 6, image::Rgb([200, 10, 10])));
        let jpeg = encode(rgb, ImageFormat::Jpeg);
        let (kept, w, h) = to_rgb_jpeg(&jpeg, 1000).unwrap();
        assert_eq!((kept.as_slice(), w, h), (jpeg.as_slice(), 8, 6));

        let rgba = image::DynamicImage::ImageRgba8(ImageBuffer::from_pixel(5, 4, Rgba([0, 255, 0, 128])));
        let png = encode(rgba, ImageFormat::Png);
        let (converted, w, h) = to_rgb_jpeg(&png, 1000).unwrap();
        assert_eq!((w, h), (5, 4));
        assert_eq!(image::guess_format(&converted).unwrap(), ImageFormat::Jpeg);
        let back = decode_rgb(&converted, 1000).unwrap().image;
        assert!(back.get_pixel(2, 2)[1] > 240, "green survives: {:?}", back.get_pixel(2, 2));
    }

    #[test]
    fn grey_and_16_bit_become_rgb() {
        let grey = image::DynamicImage::ImageLuma8(ImageBuffer::from_pixel(3, 3, Luma([77u8])));
        let d = decode_rgb(&encode(grey, ImageFormat::Png), 100).unwrap();
        assert!(!d.was_rgb8);
        assert_eq!(d.image.get_pixel(1, 1).0, [77, 77, 77]);
        let deep = image::DynamicImage::ImageLuma16(ImageBuffer::from_pixel(3, 3, Luma([65535u16])));
        let d = decode_rgb(&encode(deep, ImageFormat::Png), 100).unwrap();
        assert_eq!(d.image.get_pixel(0, 0).0, [255, 255, 255]);
    }

    #[test]
    fn bad_inputs_give_reasons() {
        assert!(matches!(decode_rgb(b"", 10), Err(VisionError::Empty)));
        assert!(matches!(decode_rgb(b"hello, I am text", 10), Err(VisionError::UnknownFormat)));
        let rgb = image::DynamicImage::ImageRgb8(RgbImage::new(100, 100));
        let jpeg = encode(rgb, ImageFormat::Jpeg);
        assert!(matches!(decode_rgb(&jpeg, 9_999), Err(VisionError::TooLarge { pixels: 10_000, .. })));
        let truncated = &jpeg[..jpeg.len() - 40];
        assert!(matches!(decode_rgb(truncated, 1_000_000), Err(VisionError::TruncatedJpeg)));
        assert!(decode_rgb(&jpeg, 1_000_000).is_ok());
    }
}
