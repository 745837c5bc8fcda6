//! The batch object handed from preprocess workers to the trainer through the
//! store: a safetensors file with `images` (u8, `[B, H, W, 3]`, RGB) and
//! `labels` (i64, `[B]`). Pixels are stored as bytes (4x smaller than f32);
//! the consumer maps them to [-1, 1] with `(x / 255 - 0.5) * 2`, the
//! original's final scaling. Any safetensors reader can open it.

use safetensors::{Dtype, SafeTensorError, SafeTensors};
use serde_json::json;

/// Square RGB images of one size, with their labels.
#[derive(Debug, Clone, PartialEq)]
pub struct Batch {
    /// Height and width of every image, in pixels.
    pub image_size: u32,
    /// `batch * size * size * 3` bytes, NHWC.
    pub images: Vec<u8>,
    /// One class index per image, in image order.
    pub labels: Vec<i64>,
}

/// Why bytes are not a batch object.
#[derive(Debug, thiserror::Error)]
pub enum BatchError {
    /// Not a safetensors file of the two tensors; what is wrong.
    #[error("batch object is malformed: {0}")]
    Malformed(String),
}

impl Batch {
    /// Number of images.
    pub fn len(&self) -> usize {
        self.labels.len()
    }

    /// Whether there are no images.
    pub fn is_empty(&self) -> bool {
        self.labels.is_empty()
    }

    /// The safetensors file: header (padded with spaces to a multiple of 8),
    /// then `images`, then `labels` (little-endian).
    pub fn to_bytes(&self) -> Vec<u8> {
        let b = self.labels.len();
        let s = self.image_size as usize;
        let img_len = self.images.len();
        let header = json!({
            "images": {"dtype": "U8", "shape": [b, s, s, 3], "data_offsets": [0, img_len]},
            "labels": {"dtype": "I64", "shape": [b], "data_offsets": [img_len, img_len + 8 * b]},
        })
        .to_string();
        // safetensors pads the header with spaces to a multiple of 8.
        let mut header = header.into_bytes();
        while !header.len().is_multiple_of(8) {
            header.push(b' ');
        }
        let mut out = Vec::with_capacity(8 + header.len() + img_len + 8 * b);
        out.extend_from_slice(&(header.len() as u64).to_le_bytes());
        out.extend_from_slice(&header);
        out.extend_from_slice(&self.images);
        for l in &self.labels {
            out.extend_from_slice(&l.to_le_bytes());
        }
        out
    }

    /// Parses a batch object with the `safetensors` crate (a well-kept
    /// parser: header size bounded, offsets contiguous and within the file,
    /// sizes computed with checked arithmetic), then checks that it holds
    /// `images` `[B, S, S, 3]` u8 and `labels` `[B]` i64 with B > 0. Any
    /// safetensors file with such tensors is accepted.
    pub fn from_bytes(bytes: &[u8]) -> Result<Self, BatchError> {
        let bad = |m: &str| BatchError::Malformed(m.to_string());
        let file = SafeTensors::deserialize(bytes).map_err(|e| match e {
            SafeTensorError::TensorInvalidInfo | SafeTensorError::ValidationOverflow => {
                bad("tensor shapes disagree with their sizes")
            }
            other => BatchError::Malformed(format!("not a safetensors file of whole tensors ({other:?})")),
        })?;
        let tensor = |name: &str, dtype: Dtype| -> Result<(Vec<usize>, &[u8]), BatchError> {
            let t = file.tensor(name).map_err(|_| bad(&format!("no tensor {name}")))?;
            if t.dtype() != dtype {
                return Err(bad(&format!("{name} is not {dtype:?}")));
            }
            Ok((t.shape().to_vec(), t.data()))
        };
        let (ishape, images) = tensor("images", Dtype::U8)?;
        let (lshape, labels) = tensor("labels", Dtype::I64)?;
        let [b, h, w, c] = ishape[..] else {
            return Err(bad("images must be 4-D"));
        };
        if h != w || c != 3 || lshape != [b] {
            return Err(bad("images must be [B, S, S, 3] and labels [B]"));
        }
        if b == 0 || h == 0 {
            return Err(bad("it holds no images"));
        }
        let image_size = u32::try_from(h).map_err(|_| bad("image size"))?;
        Ok(Batch {
            image_size,
            images: images.to_vec(),
            labels: labels
                .chunks_exact(8)
                .map(|c| {
                    let mut a = [0u8; 8];
                    a.copy_from_slice(c);
                    i64::from_le_bytes(a)
                })
                .collect(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_and_rejects_garbage() {
        let batch = Batch { image_size: 2, images: (0..24).collect(), labels: vec![1, 5] };
        let bytes = batch.to_bytes();
        assert_eq!((u64::from_le_bytes(bytes[..8].try_into().unwrap()) % 8), 0);
        assert_eq!(Batch::from_bytes(&bytes).unwrap(), batch);
        assert!(Batch::from_bytes(&bytes[..bytes.len() - 1]).is_err());
        assert!(Batch::from_bytes(b"\x10\0\0\0\0\0\0\0{}").is_err());
        assert!(Batch::from_bytes(&[]).is_err());
    }

    /// A safetensors file with the given header and `data` after it.
    fn with_header(header: &str, data: &[u8]) -> Vec<u8> {
        let mut out = (header.len() as u64).to_le_bytes().to_vec();
        out.extend_from_slice(header.as_bytes());
        out.extend_from_slice(data);
        out
    }

    #[test]
    fn declared_sizes_that_cannot_match_the_bytes_are_refused() {
        // Shapes whose element count overflows: refused, not a panic.
        let huge = r#"{"images":{"dtype":"U8","shape":[4611686018427387904,2,2,3],"data_offsets":[0,0]},
            "labels":{"dtype":"I64","shape":[4611686018427387904],"data_offsets":[0,0]}}"#;
        assert!(Batch::from_bytes(&with_header(huge, &[])).is_err());
        // More images declared than bytes present.
        let short = r#"{"images":{"dtype":"U8","shape":[2,1,1,3],"data_offsets":[0,3]},
            "labels":{"dtype":"I64","shape":[2],"data_offsets":[3,19]}}"#;
        assert!(Batch::from_bytes(&with_header(short, &[0; 19])).is_err());
        // A header length beyond the file.
        let mut bytes = Batch { image_size: 1, images: vec![0; 3], labels: vec![1] }.to_bytes();
        bytes[..8].copy_from_slice(&u64::MAX.to_le_bytes());
        assert!(Batch::from_bytes(&bytes).is_err());
        // No images at all: nothing to train on.
        let empty = Batch { image_size: 75, images: Vec::new(), labels: Vec::new() }.to_bytes();
        let err = Batch::from_bytes(&empty).unwrap_err().to_string();
        assert!(err.contains("no images"), "{err}");
    }
}
