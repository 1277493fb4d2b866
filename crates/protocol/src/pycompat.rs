//! Byte-exact re-creations of the two pieces of the Python standard library that Vast's signature
//! check runs through: `json.dumps` string escaping (with its default `ensure_ascii=True`) and
//! `base64.b64decode` (with its default `validate=False`).

const HEX: &[u8; 16] = b"0123456789abcdef";

/// `\uXXXX` with lowercase hex, as CPython's `ascii_escape_unichar` writes it.
fn put_u_escape(unit: u32, out: &mut String) {
    out.push_str("\\u");
    for shift in [12u32, 8, 4, 0] {
        let nibble = ((unit >> shift) & 0xf) as usize;
        out.push(char::from(HEX[nibble]));
    }
}

/// Writes `s` as a JSON string literal exactly as Python's `json.dumps(s)` does with
/// `ensure_ascii=True`: only printable ASCII (0x20..=0x7e) passes through; `"` and `\` and the
/// five C escapes get their short forms; everything else (other control characters, DEL 0x7f,
/// every non-ASCII character) becomes `\uXXXX`, using a UTF-16 surrogate pair above U+FFFF.
pub(crate) fn write_json_str(s: &str, out: &mut String) {
    out.push('"');
    // Copy unescaped runs in one call; most URLs are a single run.
    let mut run_start = 0;
    for (i, c) in s.char_indices() {
        let short = match c {
            '"' => Some("\\\""),
            '\\' => Some("\\\\"),
            '\n' => Some("\\n"),
            '\r' => Some("\\r"),
            '\t' => Some("\\t"),
            '\u{8}' => Some("\\b"),
            '\u{c}' => Some("\\f"),
            ' '..='~' => continue,
            _ => None,
        };
        out.push_str(s.get(run_start..i).unwrap_or_default());
        run_start = i + c.len_utf8();
        match short {
            Some(esc) => out.push_str(esc),
            None => {
                let cp = u32::from(c);
                if cp > 0xffff {
                    let v = cp - 0x1_0000;
                    put_u_escape(0xd800 | (v >> 10), out);
                    put_u_escape(0xdc00 | (v & 0x3ff), out);
                } else {
                    put_u_escape(cp, out);
                }
            }
        }
    }
    out.push_str(s.get(run_start..).unwrap_or_default());
    out.push('"');
}

/// Why [`b64decode_into`] refused its input.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum B64Error {
    /// A character outside ASCII: Python fails converting the `str` to bytes.
    NonAscii,
    /// Data characters left over that do not form whole bytes ("Incorrect padding" and friends).
    Incomplete,
}

const INVALID: u8 = 0xff;

const fn b64_table() -> [u8; 256] {
    let mut t = [INVALID; 256];
    let alphabet = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut i = 0;
    while i < alphabet.len() {
        t[alphabet[i] as usize] = i as u8;
        i += 1;
    }
    t
}

static B64: [u8; 256] = b64_table();

/// Decodes `input` the way CPython's `base64.b64decode(s)` does by default (`binascii.a2b_base64`
/// in non-strict mode), writing at most `out.len()` bytes and returning the full decoded length.
///
/// The rules, taken from CPython's `binascii.c`:
/// - characters outside the standard alphabet (whitespace, `-`, `_`, ...) are skipped;
/// - `=` only counts once at least two data characters of a quad are in; a pad sequence that
///   completes the quad ends decoding, and anything after it is ignored;
/// - leftover bits in the final quad are dropped (so `QR==` decodes like `QQ==`);
/// - one or more dangling data characters without their padding is an error.
///
/// Output beyond `out.len()` is counted but not stored: the caller needs an exact length
/// (an RSA signature is exactly the modulus size) and rejects any other length anyway.
pub(crate) fn b64decode_into(input: &str, out: &mut [u8]) -> Result<usize, B64Error> {
    let mut written = 0usize;
    let mut push = |byte: u8| {
        if let Some(slot) = out.get_mut(written) {
            *slot = byte;
        }
        written += 1;
    };
    let mut quad_pos = 0u8;
    let mut left = 0u8;
    let mut pads = 0u8;
    // Python converts the whole `str` to ASCII bytes before decoding anything.
    if !input.is_ascii() {
        return Err(B64Error::NonAscii);
    }
    for &ch in input.as_bytes() {
        if ch == b'=' {
            if quad_pos >= 2 {
                pads += 1;
                if quad_pos + pads >= 4 {
                    return Ok(written);
                }
            }
            continue;
        }
        let v = B64[usize::from(ch)];
        if v == INVALID {
            continue;
        }
        pads = 0;
        match quad_pos {
            0 => {
                left = v;
                quad_pos = 1;
            }
            1 => {
                push((left << 2) | (v >> 4));
                left = v & 0x0f;
                quad_pos = 2;
            }
            2 => {
                push((left << 4) | (v >> 2));
                left = v & 0x03;
                quad_pos = 3;
            }
            _ => {
                push((left << 6) | v);
                left = 0;
                quad_pos = 0;
            }
        }
    }
    if quad_pos == 0 {
        Ok(written)
    } else {
        Err(B64Error::Incomplete)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn json(s: &str) -> String {
        let mut out = String::new();
        write_json_str(s, &mut out);
        out
    }

    fn b64(s: &str) -> Result<Vec<u8>, B64Error> {
        let mut buf = [0u8; 64];
        let n = b64decode_into(s, &mut buf)?;
        Ok(buf[..n.min(64)].to_vec())
    }

    #[test]
    fn escapes_like_python() {
        assert_eq!(json("http://a:1"), "\"http://a:1\"");
        assert_eq!(json("\"\\\n\r\t\u{8}\u{c}"), r#""\"\\\n\r\t\b\f""#);
        assert_eq!(json("\u{0}\u{1f}\u{7f}"), r#""\u0000\u001f\u007f""#);
        assert_eq!(json("é€"), r#""\u00e9\u20ac""#);
        assert_eq!(json("😀"), r#""\ud83d\ude00""#);
        assert_eq!(json("a😀b"), r#""a\ud83d\ude00b""#);
    }

    #[test]
    fn decodes_like_cpython_non_strict() {
        assert_eq!(b64("QUJD"), Ok(b"ABC".to_vec()));
        assert_eq!(b64("QUI="), Ok(b"AB".to_vec()));
        assert_eq!(b64("QQ=="), Ok(b"A".to_vec()));
        // Skipped characters, trailing bits, data after padding.
        assert_eq!(b64(" Q U\nJ D "), Ok(b"ABC".to_vec()));
        assert_eq!(b64("QR=="), Ok(b"A".to_vec()));
        assert_eq!(b64("QQ==QUJD"), Ok(b"A".to_vec()));
        // A lone `=` does not end a quad; the data after it continues it.
        assert_eq!(b64("QQ=x="), Ok(b"A\x0c".to_vec()));
        // Padding where a quad has not started is ignored.
        assert_eq!(b64("=QUJD"), Ok(b"ABC".to_vec()));
        assert_eq!(b64("QUJD=QQ=="), Ok(b"ABCA".to_vec()));
        assert_eq!(b64(""), Ok(vec![]));
        assert_eq!(b64("QQ"), Err(B64Error::Incomplete));
        assert_eq!(b64("QUJDQ"), Err(B64Error::Incomplete));
        assert_eq!(b64("QQ=é"), Err(B64Error::NonAscii));
        assert_eq!(b64("QQ==é"), Err(B64Error::NonAscii));
    }

    /// Cases run through CPython's `base64.b64decode` by `tests/fixtures/gen_fixtures.py`.
    #[test]
    fn decodes_like_python_fixtures() {
        let fixtures: serde_json::Value =
            serde_json::from_str(include_str!("../tests/fixtures/fixtures.json")).unwrap();
        let cases = fixtures["b64decode"].as_array().unwrap();
        assert!(cases.len() > 20);
        for case in cases {
            let input = case["input"].as_str().unwrap();
            let expected = case["output_hex"].as_str().map(|hex| {
                (0..hex.len())
                    .step_by(2)
                    .map(|i| u8::from_str_radix(&hex[i..i + 2], 16).unwrap())
                    .collect::<Vec<u8>>()
            });
            assert_eq!(b64(input).ok(), expected, "input {input:?}");
        }
    }

    #[test]
    fn counts_past_the_buffer() {
        let mut buf = [0u8; 2];
        assert_eq!(b64decode_into("QUJD", &mut buf), Ok(3));
        assert_eq!(&buf, b"AB");
    }
}
