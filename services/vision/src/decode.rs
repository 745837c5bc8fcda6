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
    TooLarge {
        width: u32,
        height: u32,
        pixels: u64,
        limit: u64,
    },
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
    if format == ImageFormat::Jpeg && !jpeg_is_complete(bytes) {
        // The JPEG decoder fills a cut-off scan with grey instead of failing.
        return Err(VisionError::TruncatedJpeg);
    }
    let decode_err = |e: image::ImageError| VisionError::Decode {
        format,
        message: e.to_string(),
    };
    let (width, height) = ImageReader::with_format(Cursor::new(bytes), format)
        .into_dimensions()
        .map_err(decode_err)?;
    let pixels = u64::from(width) * u64::from(height);
    if pixels > max_pixels || pixels == 0 {
        return Err(VisionError::TooLarge {
            width,
            height,
            pixels,
            limit: max_pixels,
        });
    }
    let mut reader = ImageReader::with_format(Cursor::new(bytes), format);
    let mut limits = image::Limits::default();
    // RGBA16 is the widest layout decoders produce: 8 bytes per pixel.
    limits.max_alloc = Some(pixels.saturating_mul(8).saturating_add(1 << 20));
    reader.limits(limits);
    let dynamic = reader.decode().map_err(decode_err)?;
    let was_rgb8 = matches!(dynamic, image::DynamicImage::ImageRgb8(_));
    Ok(DecodedImage {
        image: dynamic.into_rgb8(),
        format,
        was_rgb8,
    })
}

/// True when an end-of-image marker (FFD9) follows the last start-of-scan
/// (FFDA). Inside entropy-coded data a 0xFF byte is always followed by 0x00
/// or a restart marker, so FFD9 there means the real end.
fn jpeg_is_complete(bytes: &[u8]) -> bool {
    let last_scan = bytes.windows(2).rposition(|w| w == [0xFF, 0xDA]);
    match last_scan {
        Some(at) => bytes[at..].windows(2).any(|w| w == [0xFF, 0xD9]),
        None => false,
    }
}

/// The bytes a record stores: the original bytes when they already are an
/// 8-bit RGB JPEG (as build_image_data.py keeps them), otherwise a JPEG
/// re-encoded at quality 100 (as it does for PNG). Returns bytes, width, height.
pub fn to_rgb_jpeg(bytes: &[u8], max_pixels: u64) -> Result<(Vec<u8>, u32, u32), VisionError> {
    let decoded = decode_rgb(bytes, max_pixels)?;
    let (w, h) = decoded.image.dimensions();
    if decoded.format == ImageFormat::Jpeg && decoded.was_rgb8 {
        return Ok((bytes.to_vec(), w, h));
    }
    let mut out = Vec::new();
    let encoder = image::codecs::jpeg::JpegEncoder::new_with_quality(&mut out, 100);
    decoded
        .image
        .write_with_encoder(encoder)
        .map_err(|e| VisionError::Encode(e.to_string()))?;
    Ok((out, w, h))
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
        let jpeg = encode(rgb.clone(), ImageFormat::Jpeg);
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
