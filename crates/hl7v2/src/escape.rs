//! HL7 escape sequences: decoding `\F\ \S\ \T\ \R\ \E\ \P\ \Xhh\ \H\ \N\` and encoding text.

use std::borrow::Cow;

use memchr::memchr;

use crate::Delimiters;

fn hex(b: u8) -> Option<u8> {
    match b {
        b'0'..=b'9' => Some(b - b'0'),
        b'a'..=b'f' => Some(b - b'a' + 10),
        b'A'..=b'F' => Some(b - b'A' + 10),
        _ => None,
    }
}

fn decode_hex(seq: &[u8], out: &mut Vec<u8>) -> bool {
    if seq.is_empty() || !seq.len().is_multiple_of(2) || !seq.iter().all(|b| hex(*b).is_some()) {
        return false;
    }
    for pair in seq.chunks_exact(2) {
        if let [h, l] = pair {
            out.push(hex(*h).unwrap_or(0) << 4 | hex(*l).unwrap_or(0));
        }
    }
    true
}

/// Decodes escape sequences. Highlighting (`\H\`, `\N\`) is dropped because decoded text is
/// plain; formatting commands (`\.br\`, ...), charset switches and unknown or unterminated
/// sequences are kept verbatim so no information is lost.
pub fn unescape<'a>(raw: &'a [u8], d: &Delimiters) -> Cow<'a, [u8]> {
    let esc = d.escape;
    let Some(first) = memchr(esc, raw) else {
        return Cow::Borrowed(raw);
    };
    let mut out = Vec::with_capacity(raw.len());
    let (head, mut rest) = raw.split_at(first);
    out.extend_from_slice(head);
    // `rest` always starts with the escape character here.
    while let Some(body) = rest.get(1..) {
        let Some(end) = memchr(esc, body) else {
            out.extend_from_slice(rest);
            break;
        };
        let (seq, after) = body.split_at(end);
        let after = after.get(1..).unwrap_or(&[]);
        let single = match seq {
            b"F" => Some(d.field),
            b"S" => Some(d.component),
            b"T" => Some(d.subcomponent),
            b"R" => Some(d.repetition),
            b"E" => Some(d.escape),
            b"P" => d.truncation,
            _ => None,
        };
        if let Some(c) = single {
            out.push(c);
        } else if seq == b"H" || seq == b"N" {
            // Highlighting has no plain-text form.
        } else if let Some(hexes) = seq.strip_prefix(b"X") {
            if !decode_hex(hexes, &mut out) {
                out.push(esc);
                out.extend_from_slice(seq);
                out.push(esc);
            }
        } else {
            out.push(esc);
            out.extend_from_slice(seq);
            out.push(esc);
        }
        match memchr(esc, after) {
            Some(next) => {
                let (plain, tail) = after.split_at(next);
                out.extend_from_slice(plain);
                rest = tail;
            }
            None => {
                out.extend_from_slice(after);
                break;
            }
        }
    }
    Cow::Owned(out)
}

/// Encodes text for an ER7 field: delimiters and the escape character become escape sequences,
/// and control characters become `\Xhh\` (CR and LF would end the segment; parsers refuse the others, e.g. NUL).
pub fn escape<'a>(text: &'a str, d: &Delimiters) -> Cow<'a, str> {
    // Control characters (NUL, CR, LF, ...) cannot appear raw in ER7: CR and LF end segments and parsers refuse
    // the rest, so they travel as hexadecimal escapes.
    let needs = |b: u8| d.is_special(b) || b.is_ascii_control();
    if !text.bytes().any(needs) {
        return Cow::Borrowed(text);
    }
    let esc = char::from(d.escape);
    let mut out = String::with_capacity(text.len() + 8);
    for ch in text.chars() {
        let code: Option<&str> = match u8::try_from(ch) {
            Ok(b) if b == d.field => Some("F"),
            Ok(b) if b == d.component => Some("S"),
            Ok(b) if b == d.subcomponent => Some("T"),
            Ok(b) if b == d.repetition => Some("R"),
            Ok(b) if b == d.escape => Some("E"),
            Ok(b) if Some(b) == d.truncation => Some("P"),
            Ok(b) if b.is_ascii_control() => {
                out.push(esc);
                out.push_str(&format!("X{b:02X}"));
                out.push(esc);
                continue;
            }
            _ => None,
        };
        match code {
            Some(c) => {
                out.push(esc);
                out.push_str(c);
                out.push(esc);
            }
            None => out.push(ch),
        }
    }
    Cow::Owned(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn un(s: &str) -> String {
        String::from_utf8(unescape(s.as_bytes(), &Delimiters::default()).into_owned()).unwrap()
    }

    #[test]
    fn all_sequences() {
        assert_eq!(un(r"a\F\b\S\c\T\d\R\e\E\f"), r"a|b^c&d~e\f");
        assert_eq!(un(r"\X4142\"), "AB");
        assert_eq!(un(r"\XC3A9\"), "é");
        assert_eq!(un(r"\H\bold\N\"), "bold");
        assert_eq!(un(r"line\.br\next"), r"line\.br\next");
        assert_eq!(un(r"\Q\ \X4\ \Xzz\"), r"\Q\ \X4\ \Xzz\");
        assert_eq!(un(r"open\F"), r"open\F");
        assert_eq!(un(r"\P\"), r"\P\");
        assert_eq!(un("plain"), "plain");
        assert!(matches!(unescape(b"plain", &Delimiters::default()), Cow::Borrowed(_)));
    }

    #[test]
    fn truncation_and_custom() {
        let d = Delimiters::new(b'#', b"$%*@!").unwrap();
        assert_eq!(unescape(b"*F**S**R**T**E**P*", &d).as_ref(), b"#$%@*!");
        assert_eq!(escape("#$%@*!", &d), "*F**S**R**T**E**P*");
    }

    #[test]
    fn escape_round_trip() {
        let d = Delimiters::default();
        let s = "a|b^c~d&e\\f\r\ng é";
        let e = escape(s, &d);
        assert_eq!(e, r"a\F\b\S\c\R\d\T\e\E\f\X0D\\X0A\g é");
        assert_eq!(un(&e), s);
        assert!(matches!(escape("plain", &d), Cow::Borrowed(_)));
    }

    #[test]
    fn control_characters_travel_as_hex_escapes() {
        let d = Delimiters::default();
        assert_eq!(escape("a\0b\x1Fc", &d), r"a\X00\b\X1F\c");
        assert_eq!(unescape(escape("x\0y", &d).as_bytes(), &d).as_ref(), b"x\0y");
    }
}
