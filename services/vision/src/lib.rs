//! Images: decoding any common format by content, conversion to the RGB JPEG
//! that records hold, and the transforms of `image_processing.py` for
//! training (random crop, flip) and evaluation (central crop). Pure Rust, no
//! libtorch, so preprocess workers stay small.

pub mod decode;
pub mod transform;

pub use decode::{decode_rgb, to_rgb_jpeg, DecodedImage, VisionError};
pub use transform::{central_crop, eval_image, flip_left_right, resize_bilinear, train_image, CropBox};
