//! A protobuf reader over a borrowed buffer, for the remote-write body:
//! strings come out as `&str` slices of the body (checked UTF-8), so a
//! label costs no allocation.
//!
//! It reads what `prost` reads for the messages Strata decodes, and refuses
//! what `prost` refuses: a truncated field, a varint longer than ten bytes,
//! a length past the end, a field of the wrong wire type, invalid UTF-8 in a
//! string. Unknown fields are skipped; group wire types (deprecated, never
//! sent by Prometheus) are refused.

pub(crate) type WireResult<T> = Result<T, String>;

/// Protobuf wire types.
pub(crate) const VARINT: u8 = 0;
pub(crate) const FIXED64: u8 = 1;
pub(crate) const LEN: u8 = 2;
pub(crate) const FIXED32: u8 = 5;

pub(crate) struct Wire<'a> {
    buf: &'a [u8],
    pos: usize,
}

impl<'a> Wire<'a> {
    pub(crate) fn new(buf: &'a [u8]) -> Self {
        Self { buf, pos: 0 }
    }

    /// How many bytes were read.
    pub(crate) fn pos(&self) -> usize {
        self.pos
    }

    pub(crate) fn done(&self) -> bool {
        self.pos >= self.buf.len()
    }

    pub(crate) fn varint(&mut self) -> WireResult<u64> {
        let mut v = 0u64;
        for i in 0..10 {
            let Some(&b) = self.buf.get(self.pos) else {
                return Err("a varint is cut off".to_string());
            };
            self.pos += 1;
            if i == 9 && b > 1 {
                return Err("a varint overflows 64 bits".to_string());
            }
            v |= u64::from(b & 0x7f) << (7 * i);
            if b < 0x80 {
                return Ok(v);
            }
        }
        Err("a varint overflows 64 bits".to_string())
    }

    /// The next field's number and wire type.
    pub(crate) fn key(&mut self) -> WireResult<(u32, u8)> {
        let key = self.varint()?;
        let field = key >> 3;
        if field == 0 || field > u64::from(u32::MAX >> 3) {
            return Err(format!("invalid field number {field}"));
        }
        Ok((field as u32, (key & 7) as u8))
    }

    fn take(&mut self, n: usize) -> WireResult<&'a [u8]> {
        let end = self
            .pos
            .checked_add(n)
            .filter(|&end| end <= self.buf.len())
            .ok_or_else(|| "a field runs past the end of its message".to_string())?;
        let out = &self.buf[self.pos..end];
        self.pos = end;
        Ok(out)
    }

    /// A length-delimited field's bytes.
    pub(crate) fn bytes(&mut self) -> WireResult<&'a [u8]> {
        let len = self.varint()?;
        let len = usize::try_from(len).map_err(|_| "a length overflows".to_string())?;
        self.take(len)
    }

    pub(crate) fn str(&mut self) -> WireResult<&'a str> {
        std::str::from_utf8(self.bytes()?)
            .map_err(|_| "a string field is not valid UTF-8".to_string())
    }

    pub(crate) fn fixed64(&mut self) -> WireResult<u64> {
        let b = self.take(8)?;
        let mut a = [0u8; 8];
        a.copy_from_slice(b);
        Ok(u64::from_le_bytes(a))
    }

    /// Skips a field of an unknown number.
    pub(crate) fn skip(&mut self, wire: u8) -> WireResult<()> {
        match wire {
            VARINT => self.varint().map(drop),
            FIXED64 => self.take(8).map(drop),
            LEN => self.bytes().map(drop),
            FIXED32 => self.take(4).map(drop),
            other => Err(format!("unsupported wire type {other}")),
        }
    }
}

/// The error for a known field sent with another wire type.
pub(crate) fn wrong_type(message: &str, field: u32, wire: u8) -> String {
    format!("{message} field {field} has wire type {wire}, not its declared type")
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn varints_and_their_limits() {
        assert_eq!(Wire::new(&[0x96, 0x01]).varint().unwrap(), 150);
        let max = [0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x01];
        assert_eq!(Wire::new(&max).varint().unwrap(), u64::MAX);
        let over = [0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x02];
        assert!(Wire::new(&over).varint().is_err());
        assert!(Wire::new(&[0x80]).varint().is_err());
        // A length past the end.
        assert!(Wire::new(&[0x05, b'a']).bytes().is_err());
        assert!(Wire::new(&[0x02, 0xff, 0xfe]).str().is_err());
        assert!(Wire::new(&[0x00]).key().is_err());
        assert!(Wire::new(&[]).skip(3).is_err());
    }
}
