//! Delimiter set of an ER7 message as declared in MSH-1 and MSH-2.

/// The separators and escape character of one message.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Delimiters {
    /// Field separator (MSH-1).
    pub field: u8,
    /// Component separator (MSH-2, 1st char).
    pub component: u8,
    /// Repetition separator (MSH-2, 2nd char).
    pub repetition: u8,
    /// Escape character (MSH-2, 3rd char).
    pub escape: u8,
    /// Subcomponent separator (MSH-2, 4th char).
    pub subcomponent: u8,
    /// Truncation character (MSH-2, 5th char, v2.7+).
    pub truncation: Option<u8>,
}

impl Default for Delimiters {
    fn default() -> Self {
        Delimiters {
            field: b'|',
            component: b'^',
            repetition: b'~',
            escape: b'\\',
            subcomponent: b'&',
            truncation: None,
        }
    }
}

/// Why MSH-1/MSH-2 cannot be used.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DelimiterError {
    /// MSH-1 is not a legal separator.
    BadFieldSeparator,
    /// MSH-2 has fewer than 4 or more than 5 characters.
    BadEncodingLength,
    /// A character of MSH-2 (0-based index) is illegal or repeats another delimiter.
    BadEncodingChar(usize),
}

/// Alphanumerics would be indistinguishable from data, CR/LF from segment ends, and control or
/// non-ASCII bytes would not survive charset conversion.
fn legal(b: u8) -> bool {
    b.is_ascii_graphic() && !b.is_ascii_alphanumeric()
}

impl Delimiters {
    /// Validates MSH-1 (`field`) and the MSH-2 bytes (`encoding`).
    pub fn new(field: u8, encoding: &[u8]) -> Result<Self, DelimiterError> {
        if !legal(field) {
            return Err(DelimiterError::BadFieldSeparator);
        }
        let [component, repetition, escape, subcomponent, rest @ ..] = encoding else {
            return Err(DelimiterError::BadEncodingLength);
        };
        let truncation = match rest {
            [] => None,
            [t] => Some(*t),
            _ => return Err(DelimiterError::BadEncodingLength),
        };
        for (i, &c) in encoding.iter().enumerate() {
            let earlier = encoding.get(..i).unwrap_or_default();
            if !legal(c) || c == field || earlier.contains(&c) {
                return Err(DelimiterError::BadEncodingChar(i));
            }
        }
        Ok(Delimiters {
            field,
            component: *component,
            repetition: *repetition,
            escape: *escape,
            subcomponent: *subcomponent,
            truncation,
        })
    }

    /// The MSH-2 value.
    pub fn encoding_chars(&self) -> Vec<u8> {
        let mut v = vec![self.component, self.repetition, self.escape, self.subcomponent];
        v.extend(self.truncation);
        v
    }

    /// True for any separator or the escape character.
    pub fn is_special(&self, b: u8) -> bool {
        b == self.field
            || b == self.component
            || b == self.repetition
            || b == self.escape
            || b == self.subcomponent
            || Some(b) == self.truncation
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn standard_and_custom() {
        assert_eq!(Delimiters::new(b'|', b"^~\\&"), Ok(Delimiters::default()));
        let d = Delimiters::new(b'#', b"$%*@").unwrap();
        assert_eq!((d.component, d.repetition, d.escape, d.subcomponent), (b'$', b'%', b'*', b'@'));
        let d = Delimiters::new(b'|', b"^~\\&#").unwrap();
        assert_eq!(d.truncation, Some(b'#'));
        assert_eq!(d.encoding_chars(), b"^~\\&#");
    }

    #[test]
    fn rejects_bad() {
        assert_eq!(Delimiters::new(b'A', b"^~\\&"), Err(DelimiterError::BadFieldSeparator));
        assert_eq!(Delimiters::new(b'\r', b"^~\\&"), Err(DelimiterError::BadFieldSeparator));
        assert_eq!(Delimiters::new(b'|', b"^~\\"), Err(DelimiterError::BadEncodingLength));
        assert_eq!(Delimiters::new(b'|', b"^~\\&#!"), Err(DelimiterError::BadEncodingLength));
        assert_eq!(Delimiters::new(b'|', b"^^\\&"), Err(DelimiterError::BadEncodingChar(1)));
        assert_eq!(Delimiters::new(b'|', b"^|\\&"), Err(DelimiterError::BadEncodingChar(1)));
        assert_eq!(Delimiters::new(b'|', b"^~1&"), Err(DelimiterError::BadEncodingChar(2)));
    }
}
