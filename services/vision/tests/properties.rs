//! Property tests of the image decoders (issue 16: no single bad input
//! stops a service). Images come from outside: folders ingest reads, the
//! records workers and the evaluator decode. Whatever the bytes, decoding
//! returns an image within the pixel bound or an error, and a header
//! declaring more pixels than the bound is refused before anything of that
//! size is allocated (a counting allocator measures it).

use image::{DynamicImage, ImageFormat, RgbImage};
use inception_vision::{
    decode_rgb, read_jpeg_markers, to_rgb_jpeg_checked, train_image, Augmentation, JpegCheck, ObjectBox, VisionError,
};
use proptest::prelude::*;
use rand::SeedableRng;
use std::io::Cursor;
use std::sync::OnceLock;

#[path = "../../core/tests/support/counting_alloc.rs"]
mod counting_alloc;
use counting_alloc::peak_during;

/// The seed of every property test's cases unless PROPTEST_RNG_SEED is set.
const PROPERTY_SEED: u64 = 0x1ce9_7107;

fn config(cases: u32) -> ProptestConfig {
    // A fixed seed keeps CI repeatable; PROPTEST_RNG_SEED=<n> explores others.
    let defaults = ProptestConfig::default();
    let rng_seed = match defaults.rng_seed {
        proptest::test_runner::RngSeed::Random => proptest::test_runner::RngSeed::Fixed(PROPERTY_SEED),
        chosen => chosen,
    };
    ProptestConfig { cases, failure_persistence: None, rng_seed, ..defaults }
}

/// What decoding an image of at most `max_pixels` may hold at once: the
/// widest decoded layout (8 bytes a pixel), the RGB copy, decoder state
/// (1 MiB, the slack `decode_rgb` gives the decoders) and a multiple of
/// the input. A size taken from a header instead is far above it.
fn bound(max_pixels: u64, input: usize) -> usize {
    (max_pixels as usize) * 11 + (4 << 20) + 64 * input
}

/// Checks what a decode returned: an RGB image within the bound, or an error.
fn check_decoded(
    got: &Result<inception_vision::DecodedImage, VisionError>,
    max_pixels: u64,
) -> Result<(), TestCaseError> {
    if let Ok(d) = got {
        let (w, h) = d.image.dimensions();
        prop_assert!(w > 0 && h > 0);
        prop_assert!(u64::from(w) * u64::from(h) <= max_pixels, "{}x{} decoded with a limit of {}", w, h, max_pixels);
        prop_assert_eq!(d.image.as_raw().len(), w as usize * h as usize * 3);
    }
    Ok(())
}

// ---------------------------------------------------------------------------
// Test images of every format the decoder detects, and synthetic headers.

fn encode(img: DynamicImage, format: ImageFormat) -> Vec<u8> {
    let mut out = Cursor::new(Vec::new());
    img.write_to(&mut out, format).unwrap();
    out.into_inner()
}

/// Small real files: RGB and grey JPEG, RGBA and 16-bit PNG, GIF, BMP, WebP, TIFF.
fn samples() -> &'static [Vec<u8>] {
    static SAMPLES: OnceLock<Vec<Vec<u8>>> = OnceLock::new();
    SAMPLES.get_or_init(|| {
        let rgb = RgbImage::from_fn(13, 9, |x, y| image::Rgb([(x * 19) as u8, (y * 27) as u8, ((x ^ y) * 7) as u8]));
        let rgba = DynamicImage::ImageRgb8(rgb.clone()).into_rgba8();
        vec![
            encode(DynamicImage::ImageRgb8(rgb.clone()), ImageFormat::Jpeg),
            encode(DynamicImage::ImageRgb8(rgb.clone()).grayscale(), ImageFormat::Jpeg),
            encode(DynamicImage::ImageRgba8(rgba.clone()), ImageFormat::Png),
            encode(DynamicImage::ImageRgb8(rgb.clone()).into_luma16().into(), ImageFormat::Png),
            encode(DynamicImage::ImageRgba8(rgba.clone()), ImageFormat::Gif),
            encode(DynamicImage::ImageRgb8(rgb.clone()), ImageFormat::Bmp),
            encode(DynamicImage::ImageRgba8(rgba), ImageFormat::WebP),
            encode(DynamicImage::ImageRgb8(rgb), ImageFormat::Tiff),
        ]
    })
}

/// Bytes that are `valid` with a few bytes changed, cut and extended.
fn mutated(valid: &[u8]) -> impl Strategy<Value = Vec<u8>> {
    let valid = valid.to_vec();
    let len = valid.len();
    // The cut and the tail are each left out half the time, so that many
    // cases are nearly valid and reach deep into the decoder.
    let cuts = prop_oneof![Just(len), 0..=len];
    let tails = prop_oneof![Just(Vec::new()), prop::collection::vec(any::<u8>(), 0..16)];
    (prop::collection::vec((0..len, any::<u8>()), 0..4), cuts, tails).prop_map(move |(edits, cut, tail)| {
        let mut v = valid.clone();
        for (at, b) in edits {
            v[at] = b;
        }
        v.truncate(cut);
        v.extend(tail);
        v
    })
}

/// The signatures by which formats are detected, each to be followed by noise.
const MAGIC: [&[u8]; 10] = [
    b"",
    b"\xFF\xD8\xFF",
    b"\xFF\xD8\xFF\xC0\x00\x11\x08",
    b"\x89PNG\r\n\x1a\n",
    b"\x89PNG\r\n\x1a\n\x00\x00\x00\x0dIHDR",
    b"GIF89a",
    b"BM",
    b"RIFF\x00\x00\x00\x00WEBPVP8 ",
    b"II*\x00",
    b"MM\x00*",
];

/// A JPEG with one 8-bit, 3-component frame header of `width` x `height`
/// and one scan of two bytes: what the marker walk accepts; no tables, so
/// it decodes to nothing.
fn jpeg_header(width: u16, height: u16) -> Vec<u8> {
    let mut v = vec![0xFF, 0xD8, 0xFF, 0xC0, 0x00, 0x11, 0x08];
    v.extend_from_slice(&height.to_be_bytes());
    v.extend_from_slice(&width.to_be_bytes());
    v.extend_from_slice(&[0x03, 0x01, 0x22, 0x00, 0x02, 0x11, 0x01, 0x03, 0x11, 0x01]);
    v.extend_from_slice(&[0xFF, 0xDA, 0x00, 0x0C, 0x03, 0x01, 0x00, 0x02, 0x11, 0x03, 0x11, 0x00, 0x3F, 0x00]);
    v.extend_from_slice(&[0x00, 0x00, 0xFF, 0xD9]);
    v
}

/// CRC-32 (ISO-HDLC) as PNG chunks carry it.
fn crc32(bytes: &[u8]) -> u32 {
    let mut crc = !0u32;
    for &b in bytes {
        crc ^= u32::from(b);
        for _ in 0..8 {
            crc = if crc & 1 == 1 { (crc >> 1) ^ 0xEDB8_8320 } else { crc >> 1 };
        }
    }
    !crc
}

fn png_chunk(kind: &[u8; 4], data: &[u8], out: &mut Vec<u8>) {
    out.extend_from_slice(&(data.len() as u32).to_be_bytes());
    let mut body = kind.to_vec();
    body.extend_from_slice(data);
    out.extend_from_slice(&body);
    out.extend_from_slice(&crc32(&body).to_be_bytes());
}

/// A PNG whose header declares an 8-bit RGB image of `width` x `height`,
/// with an empty image data stream.
fn png_header(width: u32, height: u32) -> Vec<u8> {
    let mut v = b"\x89PNG\r\n\x1a\n".to_vec();
    let mut ihdr = width.to_be_bytes().to_vec();
    ihdr.extend_from_slice(&height.to_be_bytes());
    ihdr.extend_from_slice(&[8, 2, 0, 0, 0]);
    png_chunk(b"IHDR", &ihdr, &mut v);
    png_chunk(b"IDAT", &[0x78, 0x9C, 0x03, 0x00, 0x00, 0x00, 0x00, 0x01], &mut v);
    png_chunk(b"IEND", &[], &mut v);
    v
}

#[test]
fn the_synthetic_headers_are_what_the_decoders_read() {
    assert_eq!(read_jpeg_markers(&jpeg_header(640, 480)).unwrap().width, 640);
    let dims =
        image::ImageReader::with_format(Cursor::new(png_header(640, 480)), ImageFormat::Png).into_dimensions().unwrap();
    assert_eq!(dims, (640, 480));
    for (i, s) in samples().iter().enumerate() {
        assert!(decode_rgb(s, 1 << 20).is_ok(), "sample {i}");
    }
}

/// Found by `damaged_images_decode_within_the_limit_or_fail`: a TIFF whose
/// StripByteCounts entry claims 196,609 values had the decoder allocate
/// 6 MB for a 600-byte file. A count that the file cannot hold is refused.
#[test]
fn a_tiff_entry_declaring_more_values_than_the_file_holds_is_refused() {
    let tiff = samples().iter().find(|s| s.starts_with(b"II*\0")).expect("a little-endian TIFF sample").clone();
    let ifd = u32::from_le_bytes(tiff[4..8].try_into().unwrap()) as usize;
    let entries = u16::from_le_bytes([tiff[ifd], tiff[ifd + 1]]) as usize;
    let strip_byte_counts = (0..entries)
        .map(|i| ifd + 2 + 12 * i)
        .find(|&at| u16::from_le_bytes([tiff[at], tiff[at + 1]]) == 279)
        .expect("a StripByteCounts entry");
    let mut bad = tiff.clone();
    bad[strip_byte_counts + 4..strip_byte_counts + 8].copy_from_slice(&196_609u32.to_le_bytes());
    let (got, peak) = peak_during(|| decode_rgb(&bad, 1));
    let message = got.err().expect("refused").to_string();
    assert!(message.contains("tag 279 declares 196609 values"), "{message}");
    assert!(peak < 64 << 10, "{peak} bytes allocated");
    assert!(decode_rgb(&tiff, 1 << 20).is_ok(), "the intact file still decodes");
}

/// The most reading a header may allocate: the readers' buffers (the PNG
/// decoder's are 64 KiB), independent of the size the header declares.
const HEADER_ONLY: usize = 192 << 10;

/// Pixel limits: tiny, around a sample's 117 pixels, or generous.
fn limits() -> impl Strategy<Value = u64> {
    prop_oneof![1u64..200, Just(117u64), 1u64..1 << 16]
}

proptest! {
    #![proptest_config(config(256))]

    /// Noise behind any format's signature: never a panic; an image only
    /// within the limit; no more allocated than the limit and the bytes
    /// justify. The marker walk never panics nor allocates.
    #[test]
    fn any_bytes_decode_within_the_limit_or_fail(
        magic in prop::sample::select(MAGIC.to_vec()),
        tail in prop::collection::vec(any::<u8>(), 0..512),
        max_pixels in limits(),
    ) {
        let mut bytes = magic.to_vec();
        bytes.extend(tail);
        let (got, peak) = peak_during(|| decode_rgb(&bytes, max_pixels));
        check_decoded(&got, max_pixels)?;
        prop_assert!(peak <= bound(max_pixels, bytes.len()), "{} bytes allocated", peak);
        // The walk itself allocates nothing; only an error's message does.
        let (header, peak) = peak_during(|| read_jpeg_markers(&bytes));
        prop_assert!(peak < 1024, "{} bytes allocated", peak);
        if let Ok(h) = header {
            prop_assert!(h.width > 0 && h.height > 0 && matches!(h.components, 1 | 3 | 4));
        }
        let (kept, peak) = peak_during(|| to_rgb_jpeg_checked(&bytes, max_pixels, JpegCheck::Markers));
        prop_assert!(peak <= bound(max_pixels, bytes.len()), "{} bytes allocated", peak);
        if let Ok((_, w, h)) = kept {
            prop_assert!(u64::from(w) * u64::from(h) <= max_pixels);
        }
    }

    /// A real file of each format, damaged: the same guarantees.
    #[test]
    fn damaged_images_decode_within_the_limit_or_fail(
        bytes in (0..samples().len()).prop_flat_map(|i| mutated(&samples()[i])),
        max_pixels in limits(),
    ) {
        let (got, peak) = peak_during(|| decode_rgb(&bytes, max_pixels));
        check_decoded(&got, max_pixels)?;
        prop_assert!(peak <= bound(max_pixels, bytes.len()), "{} bytes allocated", peak);
        let _ = read_jpeg_markers(&bytes);
        for check in [JpegCheck::Markers, JpegCheck::Decode] {
            let (kept, peak) = peak_during(|| to_rgb_jpeg_checked(&bytes, max_pixels, check));
            prop_assert!(peak <= bound(max_pixels, bytes.len()) + (1 << 20), "{} bytes allocated", peak);
            if let Ok((_, w, h)) = kept {
                prop_assert!(u64::from(w) * u64::from(h) <= max_pixels);
            }
        }
    }

    /// A real JPEG given a second frame header of any size, before or
    /// after its own: the decoders may disagree on which one counts, but
    /// no image beyond the limit comes out and none is allocated.
    #[test]
    fn a_second_frame_header_cannot_smuggle_a_large_image(
        width in 1u16..=u16::MAX,
        height in 1u16..=u16::MAX,
        after in any::<bool>(),
        max_pixels in 100u64..1 << 14,
    ) {
        let jpeg = &samples()[0];
        let sof = jpeg.windows(2).position(|w| w == [0xFF, 0xC0]).unwrap();
        let own = 2 + usize::from(u16::from_be_bytes([jpeg[sof + 2], jpeg[sof + 3]]));
        let header = jpeg_header(width, height);
        let extra = &header[2..2 + 2 + 0x11];
        let at = if after { sof + own } else { sof };
        let mut bytes = jpeg[..at].to_vec();
        bytes.extend_from_slice(extra);
        bytes.extend_from_slice(&jpeg[at..]);
        let (got, peak) = peak_during(|| decode_rgb(&bytes, max_pixels));
        check_decoded(&got, max_pixels)?;
        prop_assert!(peak <= bound(max_pixels, bytes.len()), "{} bytes allocated", peak);
    }

    /// A JPEG frame header declaring more pixels than the limit is refused
    /// as TooLarge with its exact size, before decoding: nothing of the
    /// declared size is allocated (only a reader's buffers, under
    /// [`HEADER_ONLY`]), whichever check ingest uses.
    #[test]
    fn a_jpeg_declaring_more_pixels_than_the_limit_is_refused_before_decoding(
        width in 1u16..=u16::MAX,
        height in 1u16..=u16::MAX,
        under in any::<prop::sample::Index>(),
    ) {
        let pixels = u64::from(width) * u64::from(height);
        prop_assume!(pixels > 1);
        let limit = 1 + under.index((pixels - 1) as usize) as u64; // 1..pixels-1
        let bytes = jpeg_header(width, height);
        let expected = (u32::from(width), u32::from(height), pixels, limit);
        let too_large = |r: &VisionError| match *r {
            VisionError::TooLarge { width, height, pixels, limit } => Some((width, height, pixels, limit)),
            _ => None,
        };
        let (got, peak) = peak_during(|| decode_rgb(&bytes, limit).map(|_| ()));
        prop_assert!(peak < HEADER_ONLY, "{} bytes allocated", peak);
        prop_assert_eq!(got.as_ref().err().and_then(too_large), Some(expected), "{:?}", got);
        for check in [JpegCheck::Markers, JpegCheck::Decode] {
            let (got, peak) = peak_during(|| to_rgb_jpeg_checked(&bytes, limit, check).map(|_| ()));
            prop_assert!(peak < HEADER_ONLY, "{} bytes allocated", peak);
            prop_assert_eq!(got.as_ref().err().and_then(too_large), Some(expected), "{:?}", got);
        }
    }

    /// The same for a PNG header, up to PNG's largest side (2^31 - 1).
    /// Reading it allocates only the reader's buffers.
    #[test]
    fn a_png_declaring_more_pixels_than_the_limit_is_refused_before_decoding(
        width in prop_oneof![1u32..70_000, Just((1u32 << 31) - 1), 1u32..1 << 31],
        height in prop_oneof![1u32..70_000, Just((1u32 << 31) - 1), 1u32..1 << 31],
        under in any::<prop::sample::Index>(),
    ) {
        let pixels = u64::from(width) * u64::from(height);
        prop_assume!(pixels > 1);
        let limit = 1 + under.index(usize::try_from(pixels - 1).unwrap_or(usize::MAX)) as u64;
        let bytes = png_header(width, height);
        let (got, peak) = peak_during(|| decode_rgb(&bytes, limit).map(|_| ()));
        prop_assert!(peak < HEADER_ONLY, "{} bytes allocated", peak);
        // The PNG decoder refuses by itself, while reading the header, a row
        // wider than its memory allowance (image's default 512 MiB): then
        // the error is that, not TooLarge.
        let row = u64::from(width) * 3;
        let allowance = 512u64 << 20;
        let exact = matches!(got, Err(VisionError::TooLarge { width: w, height: h, pixels: p, limit: l })
            if (w, h, p, l) == (width, height, pixels, limit));
        let row_refused = matches!(&got, Err(VisionError::Decode { format: ImageFormat::Png, message })
            if message.contains("limit"));
        if row + 16 < allowance {
            prop_assert!(exact, "{:?}", got);
        } else if row > allowance + 16 {
            prop_assert!(row_refused, "{:?}", got);
        } else {
            prop_assert!(exact || row_refused, "{:?}", got);
        }
    }

    /// Headers within the limit are not refused as too large (whatever
    /// else is wrong with these empty images).
    #[test]
    fn headers_within_the_limit_are_not_refused_as_too_large(
        width in 1u16..64,
        height in 1u16..64,
        spare in 0u64..1000,
        png in any::<bool>(),
    ) {
        let limit = u64::from(width) * u64::from(height) + spare;
        let bytes = if png { png_header(width.into(), height.into()) } else { jpeg_header(width, height) };
        let got = decode_rgb(&bytes, limit);
        prop_assert!(!matches!(got, Err(VisionError::TooLarge { .. })), "{:?}", got.err());
        check_decoded(&got, limit)?;
    }

    /// A record's object boxes are outside data too (any floats, NaN and
    /// infinities included, reversed or outside the image): the training
    /// transform still gives one `size x size` RGB image.
    #[test]
    fn any_object_boxes_give_a_training_image(
        boxes in prop::collection::vec((any::<f32>(), any::<f32>(), any::<f32>(), any::<f32>()), 0..4),
        (w, h) in (1u32..40, 1u32..40),
        size in 1u32..24,
        seed in any::<u64>(),
        min_object_covered in prop_oneof![Just(0.1), 0.0f64..=1.0],
    ) {
        let img = RgbImage::from_fn(w, h, |x, y| image::Rgb([x as u8, y as u8, (x + y) as u8]));
        let boxes: Vec<ObjectBox> =
            boxes.into_iter().map(|(xmin, ymin, xmax, ymax)| ObjectBox { xmin, ymin, xmax, ymax }).collect();
        let aug = Augmentation { min_object_covered, max_attempts: 10, ..Augmentation::default() };
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(seed);
        let px = train_image(&img, size, &boxes, &aug, &mut rng);
        prop_assert_eq!(px.len(), (size * size * 3) as usize);
    }
}
