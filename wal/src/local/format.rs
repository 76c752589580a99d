//! The on-disk record format of the local WAL.
//!
//! A segment file is a sequence of records. Each record is a 24-byte header
//! followed by the payload, all integers little-endian:
//!
//! ```text
//! +---------+---------+------------+-----------+-----------------+
//! | len u32 | crc u32 | offset u64 | epoch u64 | payload (len B) |
//! +---------+---------+------------+-----------+-----------------+
//! ```
//!
//! `crc` is CRC-32 (IEEE) over `offset`, `epoch` and the payload. Offsets within
//! a segment are consecutive, starting at the offset in the file name. A
//! record whose header or payload is short, whose CRC does not match, or whose
//! offset breaks the sequence ends the valid part of the segment: on reopen
//! the last segment is truncated there (a torn tail from a crash mid-write).

use std::io::{self, Read};

pub const HEADER_LEN: usize = 24;

/// The largest payload one record may hold.
pub const MAX_PAYLOAD: usize = 256 * 1024 * 1024;

pub fn checksum(offset: u64, epoch: u64, payload: &[u8]) -> u32 {
    let mut hasher = crc32fast::Hasher::new();
    hasher.update(&offset.to_le_bytes());
    hasher.update(&epoch.to_le_bytes());
    hasher.update(payload);
    hasher.finalize()
}

/// Appends one encoded record to `buf`.
pub fn encode(buf: &mut Vec<u8>, offset: u64, epoch: u64, payload: &[u8]) {
    // Callers check MAX_PAYLOAD first, so the length fits in u32.
    let len = u32::try_from(payload.len()).unwrap_or(u32::MAX);
    buf.extend_from_slice(&len.to_le_bytes());
    buf.extend_from_slice(&checksum(offset, epoch, payload).to_le_bytes());
    buf.extend_from_slice(&offset.to_le_bytes());
    buf.extend_from_slice(&epoch.to_le_bytes());
    buf.extend_from_slice(payload);
}

/// A decoded record header.
#[derive(Debug, Clone, Copy)]
pub struct Header {
    pub len: u32,
    pub crc: u32,
    pub offset: u64,
    pub epoch: u64,
}

/// Why reading a record stopped.
#[derive(Debug)]
pub enum ReadOutcome {
    /// A whole, valid record.
    Record(Header, Vec<u8>),
    /// Clean end of file at a record boundary.
    Eof,
    /// The file ends inside a record, or the record is invalid.
    Invalid(String),
}

/// Reads the next header; `Ok(None)` at a clean end of file.
pub fn read_header(reader: &mut impl Read) -> io::Result<Result<Option<Header>, String>> {
    let mut buf = [0u8; HEADER_LEN];
    let mut filled = 0;
    while filled < HEADER_LEN {
        let n = reader.read(&mut buf[filled..])?;
        if n == 0 {
            break;
        }
        filled += n;
    }
    if filled == 0 {
        return Ok(Ok(None));
    }
    if filled < HEADER_LEN {
        return Ok(Err(format!(
            "short header ({filled} of {HEADER_LEN} bytes)"
        )));
    }
    let word = |range: std::ops::Range<usize>| -> [u8; 8] {
        let mut out = [0u8; 8];
        out[..range.len()].copy_from_slice(&buf[range]);
        out
    };
    let header = Header {
        len: u32::from_le_bytes([buf[0], buf[1], buf[2], buf[3]]),
        crc: u32::from_le_bytes([buf[4], buf[5], buf[6], buf[7]]),
        offset: u64::from_le_bytes(word(8..16)),
        epoch: u64::from_le_bytes(word(16..24)),
    };
    if header.len as usize > MAX_PAYLOAD {
        return Ok(Err(format!(
            "record length {} exceeds the maximum",
            header.len
        )));
    }
    Ok(Ok(Some(header)))
}

/// Reads and verifies one whole record.
pub fn read_record(reader: &mut impl Read) -> io::Result<ReadOutcome> {
    let header = match read_header(reader)? {
        Ok(Some(h)) => h,
        Ok(None) => return Ok(ReadOutcome::Eof),
        Err(reason) => return Ok(ReadOutcome::Invalid(reason)),
    };
    let mut payload = vec![0u8; header.len as usize];
    let mut filled = 0;
    while filled < payload.len() {
        let n = reader.read(&mut payload[filled..])?;
        if n == 0 {
            return Ok(ReadOutcome::Invalid(format!(
                "short payload ({filled} of {} bytes)",
                header.len
            )));
        }
        filled += n;
    }
    if checksum(header.offset, header.epoch, &payload) != header.crc {
        return Ok(ReadOutcome::Invalid(format!(
            "checksum mismatch at offset {}",
            header.offset
        )));
    }
    Ok(ReadOutcome::Record(header, payload))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn roundtrip_and_detect_corruption() {
        let mut buf = Vec::new();
        encode(&mut buf, 7, 3, b"hello");
        let mut cursor = std::io::Cursor::new(buf.clone());
        match read_record(&mut cursor).unwrap_or(ReadOutcome::Eof) {
            ReadOutcome::Record(h, p) => {
                assert_eq!((h.offset, h.epoch, p.as_slice()), (7, 3, &b"hello"[..]));
            }
            other => panic!("expected a record, got {other:?}"),
        }
        let last = buf.len() - 1;
        buf[last] ^= 0xff;
        let mut cursor = std::io::Cursor::new(buf.clone());
        assert!(matches!(
            read_record(&mut cursor),
            Ok(ReadOutcome::Invalid(_))
        ));
        let mut cursor = std::io::Cursor::new(buf[..10].to_vec());
        assert!(matches!(
            read_record(&mut cursor),
            Ok(ReadOutcome::Invalid(_))
        ));
    }
}
