//! Images: decoding any common format by content, conversion to the RGB JPEG
//! that records hold, and the transforms of `image_processing.py` for
//! training (distorted crop, four resize methods, flip, colour distortion)
//! and evaluation (central crop, bilinear resize). Pure Rust, no
//! libtorch, so preprocess workers stay small.

pub mod color;
pub mod decode;
pub mod resize;
mod simd;
pub mod transform;

pub use decode::{
    decode_rgb, into_rgb_jpeg_checked, read_jpeg_markers, to_rgb_jpeg, to_rgb_jpeg_checked, DecodedImage, JpegCheck,
    JpegHeader, VisionError,
};
pub use resize::{CropBox, ResizeMethod};
pub use transform::{
    central_crop, eval_image, eval_image_with, flip_left_right, quantize, resize_bilinear, train_image, Augmentation,
    ObjectBox,
};
