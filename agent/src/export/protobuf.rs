//! A small protobuf encoder: just what the native Perfetto trace needs
//! (varints, 64-bit fixed values, length-delimited strings and nested
//! messages), so the export needs no code generator and no extra crate.
//!
//! Invariants: fields are appended in call order; a nested message is
//! written in place and its length prefix inserted when it closes, so the
//! output is always minimal (no padded lengths) and a message can nest
//! messages to any depth. Signed `int32`/`int64` values use the two's
//! complement varint protobuf specifies (10 bytes when negative); nothing
//! here uses zigzag (`sint*`) encoding.

/// Wire type of varint fields (`uint64`, `int64`, `bool`, enums).
const VARINT: u32 = 0;
/// Wire type of 64-bit fields (`fixed64`, `double`).
const I64: u32 = 1;
/// Wire type of length-delimited fields (strings, bytes, messages).
const LEN: u32 = 2;

/// How many bytes `v` takes as a varint.
fn varint_len(v: u64) -> usize {
    // One byte per started group of 7 bits; 0 still takes a byte.
    (64 - (v | 1).leading_zeros() as usize).div_ceil(7)
}

/// A growing buffer of encoded fields.
#[derive(Debug, Default)]
pub struct Encoder {
    buf: Vec<u8>,
}

impl Encoder {
    /// The bytes written so far.
    pub fn as_bytes(&self) -> &[u8] {
        &self.buf
    }

    /// Forgets what was written (keeps the allocation).
    pub fn clear(&mut self) {
        self.buf.clear();
    }

    fn raw_varint(&mut self, mut v: u64) {
        while v >= 0x80 {
            self.buf.push((v as u8) | 0x80);
            v >>= 7;
        }
        self.buf.push(v as u8);
    }

    fn key(&mut self, field: u32, wire: u32) {
        self.raw_varint(u64::from((field << 3) | wire));
    }

    /// An unsigned varint field (`uint32`, `uint64`, an enum).
    pub fn uint(&mut self, field: u32, v: u64) {
        self.key(field, VARINT);
        self.raw_varint(v);
    }

    /// A signed varint field (`int32`, `int64`): two's complement.
    pub fn int(&mut self, field: u32, v: i64) {
        self.uint(field, v as u64);
    }

    /// A `bool` field.
    pub fn boolean(&mut self, field: u32, v: bool) {
        self.uint(field, u64::from(v));
    }

    /// A `fixed64` field.
    pub fn fixed64(&mut self, field: u32, v: u64) {
        self.key(field, I64);
        self.buf.extend_from_slice(&v.to_le_bytes());
    }

    /// A `double` field.
    pub fn double(&mut self, field: u32, v: f64) {
        self.key(field, I64);
        self.buf.extend_from_slice(&v.to_le_bytes());
    }

    /// A `string` field.
    pub fn string(&mut self, field: u32, v: &str) {
        self.key(field, LEN);
        self.raw_varint(v.len() as u64);
        self.buf.extend_from_slice(v.as_bytes());
    }

    /// A nested message field whose content `body` writes.
    pub fn message(&mut self, field: u32, body: impl FnOnce(&mut Self)) {
        self.key(field, LEN);
        let start = self.buf.len();
        body(self);
        let len = self.buf.len() - start;
        let n = varint_len(len as u64);
        // Make room for the length in front of the content, then write it.
        self.buf.resize(self.buf.len() + n, 0);
        self.buf.copy_within(start..start + len, start + n);
        let mut v = len as u64;
        for b in &mut self.buf[start..start + n] {
            *b = (v as u8 & 0x7f) | 0x80;
            v >>= 7;
        }
        self.buf[start + n - 1] &= 0x7f;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn bytes(f: impl FnOnce(&mut Encoder)) -> Vec<u8> {
        let mut e = Encoder::default();
        f(&mut e);
        e.as_bytes().to_vec()
    }

    #[test]
    fn varints_match_the_protobuf_encoding() {
        // The protobuf documentation's example: field 1 = 150.
        assert_eq!(bytes(|e| e.uint(1, 150)), [0x08, 0x96, 0x01]);
        assert_eq!(bytes(|e| e.uint(2, 0)), [0x10, 0x00]);
        assert_eq!(bytes(|e| e.uint(1, 127)), [0x08, 0x7f]);
        assert_eq!(bytes(|e| e.uint(1, u64::MAX)).len(), 11);
        // Negative ints take ten bytes, sign-extended.
        assert_eq!(
            bytes(|e| e.int(1, -1)),
            [0x08, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x01]
        );
        // Field numbers past 15 take a two-byte key.
        assert_eq!(bytes(|e| e.boolean(87, true)), [0xb8, 0x05, 0x01]);
        for v in [0, 1, 127, 128, 16_383, 16_384, u64::from(u32::MAX), u64::MAX] {
            let mut e = Encoder::default();
            e.raw_varint(v);
            assert_eq!(e.as_bytes().len(), varint_len(v), "{v}");
        }
    }

    #[test]
    fn fixed_and_length_delimited_fields() {
        assert_eq!(bytes(|e| e.string(2, "testing")), b"\x12\x07testing");
        assert_eq!(bytes(|e| e.fixed64(47, 1)), [0xf9, 0x02, 1, 0, 0, 0, 0, 0, 0, 0]);
        assert_eq!(bytes(|e| e.double(1, 1.5))[1..], 1.5f64.to_le_bytes());
    }

    #[test]
    fn nested_messages_get_minimal_length_prefixes() {
        // The documentation's example: field 3 holding {1: 150}.
        assert_eq!(
            bytes(|e| e.message(3, |m| m.uint(1, 150))),
            [0x1a, 0x03, 0x08, 0x96, 0x01]
        );
        // A body of 200 bytes needs a two-byte length; the content follows intact.
        let long = "x".repeat(197);
        let out = bytes(|e| {
            e.message(1, |m| {
                m.message(2, |inner| inner.string(3, &long));
                m.uint(4, 1);
            });
        });
        // Inner body: key, two-byte length and the 197 bytes of field 3.
        let inner_len = 1 + 2 + 197;
        assert_eq!(out[0], 0x0a);
        // Outer body: the inner message (key, two-byte length, body) and field 4.
        let outer = 1 + 2 + inner_len + 2;
        assert_eq!(usize::from(out[1] & 0x7f) | (usize::from(out[2]) << 7), outer);
        assert_eq!(out.len(), 3 + outer);
        assert_eq!(&out[out.len() - 2..], [0x20, 0x01]);
        assert!(out.windows(197).any(|w| w == long.as_bytes()));
    }
}
