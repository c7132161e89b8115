//! Builder for outbound ER7 messages (ACKs, RRI^I12, ...) with escaping of text values.

use crate::charset::Charset;
use crate::delim::Delimiters;
use crate::escape::escape;

/// Accumulates segments of one message. Segments are terminated with CR.
#[derive(Debug, Clone)]
pub struct MessageBuilder {
    d: Delimiters,
    charset: Charset,
    buf: Vec<u8>,
}

impl MessageBuilder {
    /// A builder with the given delimiters writing UTF-8.
    pub fn new(d: Delimiters) -> Self {
        MessageBuilder { d, charset: Charset::Utf8, buf: Vec::with_capacity(256) }
    }

    /// Encodes text values in `charset` (raw values are written as given).
    pub fn with_charset(mut self, charset: Charset) -> Self {
        self.charset = charset;
        self
    }

    /// Delimiters in use.
    pub fn delimiters(&self) -> Delimiters {
        self.d
    }

    /// Starts a segment; it is written when the returned builder is dropped. For `MSH`, `FHS`
    /// and `BHS` fields 1 and 2 are written from the delimiters and numbering starts at 3.
    pub fn segment(&mut self, id: &str) -> SegmentBuilder<'_> {
        SegmentBuilder {
            header: matches!(id, "MSH" | "FHS" | "BHS"),
            id: id.as_bytes().iter().copied().take(3).collect(),
            fields: Vec::new(),
            b: self,
        }
    }

    /// The finished message bytes.
    pub fn build(self) -> Vec<u8> {
        self.buf
    }
}

/// Fields of one segment being built.
#[derive(Debug)]
pub struct SegmentBuilder<'b> {
    b: &'b mut MessageBuilder,
    id: Vec<u8>,
    header: bool,
    fields: Vec<Vec<u8>>,
}

impl SegmentBuilder<'_> {
    fn slot(&mut self, n: usize) -> Option<&mut Vec<u8>> {
        // Header fields 1 and 2 come from the delimiters and cannot be overwritten.
        if n == 0 || (self.header && n < 3) {
            return None;
        }
        if self.fields.len() < n {
            self.fields.resize(n, Vec::new());
        }
        self.fields.get_mut(n - 1)
    }

    fn encode_text(&self, text: &str) -> Vec<u8> {
        self.b.charset.encode(&escape(text, &self.b.d)).into_owned()
    }

    /// Sets field `n` to escaped text.
    pub fn field(&mut self, n: usize, text: &str) -> &mut Self {
        let v = self.encode_text(text);
        if let Some(slot) = self.slot(n) {
            *slot = v;
        }
        self
    }

    /// Sets field `n` to ER7 bytes written verbatim (caller guarantees they use these delimiters).
    pub fn field_raw(&mut self, n: usize, raw: &[u8]) -> &mut Self {
        if let Some(slot) = self.slot(n) {
            *slot = raw.to_vec();
        }
        self
    }

    /// Sets field `n` to escaped components; trailing empty components are dropped.
    pub fn components(&mut self, n: usize, parts: &[&str]) -> &mut Self {
        let keep = parts.iter().rposition(|p| !p.is_empty()).map_or(0, |i| i + 1);
        let mut v = Vec::new();
        for (i, p) in parts.iter().take(keep).enumerate() {
            if i > 0 {
                v.push(self.b.d.component);
            }
            v.extend(self.encode_text(p));
        }
        if let Some(slot) = self.slot(n) {
            *slot = v;
        }
        self
    }

    /// Sets field `n` to repetitions of escaped text.
    pub fn repetitions(&mut self, n: usize, reps: &[&str]) -> &mut Self {
        let mut v = Vec::new();
        for (i, r) in reps.iter().enumerate() {
            if i > 0 {
                v.push(self.b.d.repetition);
            }
            v.extend(self.encode_text(r));
        }
        if let Some(slot) = self.slot(n) {
            *slot = v;
        }
        self
    }
}

impl Drop for SegmentBuilder<'_> {
    fn drop(&mut self) {
        let d = self.b.d;
        let keep = self.fields.iter().rposition(|f| !f.is_empty()).map_or(0, |i| i + 1);
        let buf = &mut self.b.buf;
        buf.extend_from_slice(&self.id);
        let skip = if self.header {
            buf.push(d.field);
            buf.extend(d.encoding_chars());
            2
        } else {
            0
        };
        for f in self.fields.iter().take(keep).skip(skip) {
            buf.push(d.field);
            buf.extend_from_slice(f);
        }
        buf.push(b'\r');
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Message;

    #[test]
    fn builds_parseable_message() {
        let mut b = MessageBuilder::new(Delimiters::default());
        b.segment("MSH")
            .field(3, "APP")
            .components(9, &["RRI", "I12", "RRI_I12"])
            .field(10, "X1")
            .field(11, "P")
            .field(12, "2.5.1");
        b.segment("PID").field(5, "O|Brien^Pat").repetitions(3, &["1", "2"]);
        b.segment("NTE");
        let bytes = b.build();
        assert_eq!(bytes, b"MSH|^~\\&|APP||||||RRI^I12^RRI_I12|X1|P|2.5.1\rPID|||1~2||O\\F\\Brien\\S\\Pat\rNTE\r");
        let m = Message::parse(&bytes).unwrap();
        assert_eq!(m.text("PID-5").unwrap(), "O|Brien^Pat");
        assert_eq!(m.text("PID-3[2]").unwrap(), "2");
    }

    #[test]
    fn latin1_output() {
        let mut b = MessageBuilder::new(Delimiters::default()).with_charset(Charset::Latin1);
        b.segment("NTE").field(3, "Müller");
        assert_eq!(b.build(), b"NTE|||M\xfcller\r");
    }
}
