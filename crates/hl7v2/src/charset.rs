//! Character sets named in MSH-18 and decoding of field bytes to UTF-8 text.

use std::borrow::Cow;

/// A character set this crate can decode.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Charset {
    /// `ASCII` / `ISO IR6`.
    Ascii,
    /// `UNICODE UTF-8`.
    Utf8,
    /// `8859/1` / `ISO IR100`.
    Latin1,
}

impl Charset {
    /// Maps an MSH-18 value (HL7 table 0211). `Ok(None)` for an empty value, `Err(())` for a
    /// value this crate cannot decode.
    #[allow(clippy::result_unit_err)]
    pub fn from_hl7(name: &[u8]) -> Result<Option<Charset>, ()> {
        let name = name.trim_ascii();
        if name.is_empty() {
            return Ok(None);
        }
        let is = |n: &[u8]| name.eq_ignore_ascii_case(n);
        if is(b"ASCII") || is(b"ISO IR6") {
            Ok(Some(Charset::Ascii))
        } else if is(b"UNICODE UTF-8") {
            Ok(Some(Charset::Utf8))
        } else if is(b"8859/1") || is(b"ISO IR100") {
            Ok(Some(Charset::Latin1))
        } else {
            Err(())
        }
    }

    /// The canonical table 0211 name.
    pub fn hl7_name(self) -> &'static str {
        match self {
            Charset::Ascii => "ASCII",
            Charset::Utf8 => "UNICODE UTF-8",
            Charset::Latin1 => "8859/1",
        }
    }

    /// Decodes bytes to text. UTF-8 input that turns out invalid (e.g. produced by a `\X..\`
    /// escape) is decoded lossily rather than failing: the message itself was validated at parse.
    pub fn decode<'a>(self, bytes: Cow<'a, [u8]>) -> Cow<'a, str> {
        match self {
            Charset::Latin1 => {
                if bytes.is_ascii() {
                    return match bytes {
                        Cow::Borrowed(b) => Cow::Borrowed(std::str::from_utf8(b).unwrap_or_default()),
                        Cow::Owned(v) => Cow::Owned(String::from_utf8(v).unwrap_or_default()),
                    };
                }
                Cow::Owned(bytes.iter().map(|&b| char::from(b)).collect())
            }
            Charset::Ascii | Charset::Utf8 => match bytes {
                Cow::Borrowed(b) => String::from_utf8_lossy(b),
                Cow::Owned(v) => match String::from_utf8(v) {
                    Ok(s) => Cow::Owned(s),
                    Err(e) => Cow::Owned(String::from_utf8_lossy(e.as_bytes()).into_owned()),
                },
            },
        }
    }

    /// Encodes text for output in this charset; characters Latin-1 cannot hold become `?`.
    pub fn encode(self, text: &str) -> Cow<'_, [u8]> {
        match self {
            Charset::Latin1 if !text.is_ascii() => {
                Cow::Owned(text.chars().map(|c| u8::try_from(c).unwrap_or(b'?')).collect())
            }
            _ => Cow::Borrowed(text.as_bytes()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names() {
        assert_eq!(Charset::from_hl7(b"UNICODE UTF-8"), Ok(Some(Charset::Utf8)));
        assert_eq!(Charset::from_hl7(b"8859/1"), Ok(Some(Charset::Latin1)));
        assert_eq!(Charset::from_hl7(b"ascii"), Ok(Some(Charset::Ascii)));
        assert_eq!(Charset::from_hl7(b""), Ok(None));
        assert_eq!(Charset::from_hl7(b"KLINGON"), Err(()));
    }

    #[test]
    fn decode_encode() {
        assert_eq!(Charset::Latin1.decode(Cow::Borrowed(b"M\xfcller")), "Müller");
        assert_eq!(Charset::Utf8.decode(Cow::Borrowed("山田".as_bytes())), "山田");
        assert_eq!(Charset::Latin1.encode("Müller").as_ref(), b"M\xfcller");
        assert_eq!(Charset::Latin1.encode("山").as_ref(), b"?");
    }
}
