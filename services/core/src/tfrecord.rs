//! TFRecord framing, as TensorFlow's `TFRecordWriter` writes it:
//! `u64 length (LE) | u32 masked crc32c(length) | data | u32 masked crc32c(data)`,
//! with `masked = ((crc >> 15) | (crc << 17)) + 0xa282ead8`.

const MASK_DELTA: u32 = 0xa282_ead8;

fn masked_crc(bytes: &[u8]) -> u32 {
    let crc = crc32c::crc32c(bytes);
    crc.rotate_right(15).wrapping_add(MASK_DELTA)
}

/// Why a TFRecord file cannot be read further; offsets count bytes from
/// the file's start.
#[derive(Debug, Clone, thiserror::Error, PartialEq, Eq)]
pub enum TfRecordError {
    /// Fewer than 12 bytes are left for a record's length and its checksum.
    #[error("truncated record header at byte {offset}")]
    TruncatedHeader {
        /// Where the record starts.
        offset: usize,
    },
    /// The length's checksum does not match.
    #[error("length checksum mismatch at byte {offset}")]
    LengthCrc {
        /// Where the record starts.
        offset: usize,
    },
    /// The data and its checksum would run past the end of the file.
    #[error("record at byte {offset} claims {length} bytes but only {available} remain")]
    TruncatedData {
        /// Where the record starts.
        offset: usize,
        /// The data length the header claims.
        length: u64,
        /// Bytes left after the header.
        available: usize,
    },
    /// The data's checksum does not match.
    #[error("data checksum mismatch in the record at byte {offset}")]
    DataCrc {
        /// Where the record starts.
        offset: usize,
    },
}

/// Bytes a record takes besides its data: length, its CRC, the data's CRC.
pub const FRAMING_BYTES: usize = 8 + 4 + 4;

/// Appends one framed record to `out`.
pub fn write_record(out: &mut Vec<u8>, data: &[u8]) {
    let len = (data.len() as u64).to_le_bytes();
    out.extend_from_slice(&len);
    out.extend_from_slice(&masked_crc(&len).to_le_bytes());
    out.extend_from_slice(data);
    out.extend_from_slice(&masked_crc(data).to_le_bytes());
}

/// Iterates over the records of a whole TFRecord file held in memory,
/// verifying both checksums. After the first error it yields nothing more.
pub struct Records<'a> {
    bytes: &'a [u8],
    offset: usize,
    failed: bool,
}

/// The records of `bytes`, a whole TFRecord file (see [`Records`]).
pub fn records(bytes: &[u8]) -> Records<'_> {
    Records { bytes, offset: 0, failed: false }
}

fn u32_at(b: &[u8], at: usize) -> u32 {
    let mut a = [0u8; 4];
    a.copy_from_slice(&b[at..at + 4]);
    u32::from_le_bytes(a)
}

impl<'a> Records<'a> {
    fn next_record(&mut self) -> Result<&'a [u8], TfRecordError> {
        let offset = self.offset;
        let rest = &self.bytes[offset..];
        if rest.len() < 12 {
            return Err(TfRecordError::TruncatedHeader { offset });
        }
        let mut len_bytes = [0u8; 8];
        len_bytes.copy_from_slice(&rest[..8]);
        if u32_at(rest, 8) != masked_crc(&len_bytes) {
            return Err(TfRecordError::LengthCrc { offset });
        }
        let length = u64::from_le_bytes(len_bytes);
        let available = rest.len() - 12;
        // Room for the data and its 4-byte checksum; fewer than 4 bytes
        // leave room for no data at all, not even an empty record's.
        if available.checked_sub(4).is_none_or(|room| length > room as u64) {
            return Err(TfRecordError::TruncatedData { offset, length, available });
        }
        let n = length as usize;
        let data = &rest[12..12 + n];
        if u32_at(rest, 12 + n) != masked_crc(data) {
            return Err(TfRecordError::DataCrc { offset });
        }
        self.offset += 16 + n;
        Ok(data)
    }
}

impl<'a> Iterator for Records<'a> {
    type Item = Result<&'a [u8], TfRecordError>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.failed || self.offset >= self.bytes.len() {
            return None;
        }
        let r = self.next_record();
        self.failed = r.is_err();
        Some(r)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn matches_tensorflow_bytes() {
        // The layout TensorFlow's TFRecordWriter uses for the record b"abcd".
        let mut out = Vec::new();
        write_record(&mut out, b"abcd");
        assert_eq!(out.len(), 20);
        assert_eq!(&out[..8], &4u64.to_le_bytes());
        assert_eq!(&out[12..16], b"abcd");
        assert_eq!(u32_at(&out, 16), masked_crc(b"abcd"));
        // The CRC-32C check value of "123456789" is 0xE3069283; mask it by hand.
        let crc: u32 = 0xe306_9283;
        let masked = crc.rotate_right(15).wrapping_add(0xa282_ead8);
        assert_eq!(masked_crc(b"123456789"), masked);
    }

    #[test]
    fn round_trip_and_errors_carry_offsets() {
        let mut out = Vec::new();
        write_record(&mut out, b"first");
        write_record(&mut out, b"");
        write_record(&mut out, &[7u8; 300]);
        let all: Vec<_> = records(&out).collect::<Result<_, _>>().unwrap();
        assert_eq!(all, vec![&b"first"[..], &b""[..], &[7u8; 300][..]]);

        let second = 16 + 5;
        let mut bad = out.clone();
        bad[second + 12 + 16 + 3] ^= 1; // flip a data byte of the third record
        let got: Vec<_> = records(&bad).collect();
        assert_eq!(got.len(), 3);
        assert_eq!(got[2], Err(TfRecordError::DataCrc { offset: second + 16 }));

        let cut = &out[..out.len() - 10];
        let last = records(cut).last().unwrap();
        assert!(matches!(last, Err(TfRecordError::TruncatedData { .. })), "{last:?}");

        // An empty record cut inside its data checksum (12 to 15 bytes left).
        let mut empty = Vec::new();
        write_record(&mut empty, b"");
        for cut in 12..16 {
            let got: Vec<_> = records(&empty[..cut]).collect();
            assert_eq!(got, [Err(TfRecordError::TruncatedData { offset: 0, length: 0, available: cut - 12 })]);
        }
    }
}
