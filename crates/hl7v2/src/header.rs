//! MSH header accessors and best-effort header salvage from unparseable input.

use memchr::memmem;

use crate::charset::Charset;
use crate::delim::Delimiters;
use crate::escape::unescape;
use crate::message::{Split, comp, header_delimiters, header_fields, index_lines};

/// MSH-15 / MSH-16 acknowledgment condition (HL7 table 0155).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum AckCondition {
    /// `AL`: always.
    Always,
    /// `NE`: never.
    Never,
    /// `ER`: only on error or reject.
    ErrorOnly,
    /// `SU`: only on success.
    SuccessOnly,
}

impl AckCondition {
    /// Parses a table 0155 code.
    pub fn from_code(code: &[u8]) -> Option<AckCondition> {
        match code {
            b"AL" => Some(AckCondition::Always),
            b"NE" => Some(AckCondition::Never),
            b"ER" => Some(AckCondition::ErrorOnly),
            b"SU" => Some(AckCondition::SuccessOnly),
            _ => None,
        }
    }

    /// The table 0155 code.
    pub fn code(self) -> &'static str {
        match self {
            AckCondition::Always => "AL",
            AckCondition::Never => "NE",
            AckCondition::ErrorOnly => "ER",
            AckCondition::SuccessOnly => "SU",
        }
    }
}

/// MSH fields, raw where an ACK must copy them verbatim and decoded where code reads them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Header {
    /// Delimiters of the message (defaults when salvage could not read them).
    pub delimiters: Delimiters,
    /// MSH-3 as ER7 (all HD components).
    pub sending_application_raw: Vec<u8>,
    /// MSH-4 as ER7.
    pub sending_facility_raw: Vec<u8>,
    /// MSH-5 as ER7.
    pub receiving_application_raw: Vec<u8>,
    /// MSH-6 as ER7.
    pub receiving_facility_raw: Vec<u8>,
    /// MSH-11 as ER7 (processing id and mode).
    pub processing_id_raw: Vec<u8>,
    /// MSH-3.1 decoded.
    pub sending_application: String,
    /// MSH-4.1 decoded.
    pub sending_facility: String,
    /// MSH-5.1 decoded.
    pub receiving_application: String,
    /// MSH-6.1 decoded.
    pub receiving_facility: String,
    /// MSH-9.1.
    pub message_type: String,
    /// MSH-9.2.
    pub trigger_event: String,
    /// MSH-9.3.
    pub message_structure: String,
    /// MSH-10.
    pub control_id: String,
    /// MSH-11.1.
    pub processing_id: String,
    /// MSH-12.1.
    pub version: String,
    /// MSH-15.
    pub accept_ack_type: Option<AckCondition>,
    /// MSH-16.
    pub application_ack_type: Option<AckCondition>,
    /// MSH-18 when it names a supported charset.
    pub charset: Option<Charset>,
    /// MSH-18 as written.
    pub charset_name: String,
    /// True when produced by [`salvage_header`] rather than from a valid message.
    pub salvaged: bool,
}

impl Header {
    pub(crate) fn from_msh(
        seg: &[u8],
        d: Delimiters,
        declared: Option<Charset>,
        decode_as: Charset,
        salvaged: bool,
    ) -> Header {
        let f = header_fields(seg, &d);
        let get = |n: usize| f.get(n).copied().unwrap_or_default();
        let text = |b: &[u8]| -> String { decode_as.decode(unescape(b, &d)).into_owned() };
        let first = |n: usize| text(comp(get(n), &d, 1));
        let msh9 = get(9);
        let control = Split::new(get(10), d.repetition).next().unwrap_or_default();
        Header {
            delimiters: d,
            sending_application_raw: get(3).to_vec(),
            sending_facility_raw: get(4).to_vec(),
            receiving_application_raw: get(5).to_vec(),
            receiving_facility_raw: get(6).to_vec(),
            processing_id_raw: get(11).to_vec(),
            sending_application: first(3),
            sending_facility: first(4),
            receiving_application: first(5),
            receiving_facility: first(6),
            message_type: text(comp(msh9, &d, 1)),
            trigger_event: text(comp(msh9, &d, 2)),
            message_structure: text(comp(msh9, &d, 3)),
            control_id: text(control),
            processing_id: first(11),
            version: first(12),
            accept_ack_type: AckCondition::from_code(get(15)),
            application_ack_type: AckCondition::from_code(get(16)),
            charset: declared,
            charset_name: text(Split::new(get(18), d.repetition).next().unwrap_or_default()),
            salvaged,
        }
    }

    /// True when MSH-15 or MSH-16 is valued, which selects enhanced acknowledgment mode.
    pub fn enhanced_mode(&self) -> bool {
        self.accept_ack_type.is_some() || self.application_ack_type.is_some()
    }
}

/// Keeps only bytes that cannot break an ER7 field with default delimiters, for fields read with
/// guessed delimiters.
fn sanitize(b: &[u8], d: &Delimiters) -> Vec<u8> {
    b.iter().copied().filter(|&c| c.is_ascii_graphic() || c == b' ').filter(|&c| !d.is_special(c)).take(199).collect()
}

/// Extracts what it can of an MSH from input that failed to parse, so that a NAK can still
/// echo MSH-10 in MSA-2 and address the sender. Never fails: unreadable parts stay empty.
pub fn salvage_header(raw: &[u8]) -> Header {
    let empty = || Header::from_msh(b"MSH|^~\\&", Delimiters::default(), None, Charset::Utf8, true);
    let Some(start) = memmem::find(raw, b"MSH") else {
        return empty();
    };
    let tail = raw.get(start..).unwrap_or_default();
    // An MSH line is short; bounding the scan keeps offsets within u32 for any input size.
    let tail = tail.get(..tail.len().min(1 << 20)).unwrap_or(tail);
    let Some(&(s, e)) = index_lines(tail).first() else {
        return empty();
    };
    let seg = tail.get(s as usize..e as usize).unwrap_or_default();
    let cs_of = |seg: &[u8], d: &Delimiters| {
        let f = header_fields(seg, d);
        let name = f.get(18).copied().unwrap_or_default();
        let name = crate::escape::unescape(Split::new(name, d.repetition).next().unwrap_or_default(), d);
        Charset::from_hl7(&name).ok().flatten()
    };
    match header_delimiters(seg) {
        Ok(d) => {
            let declared = cs_of(seg, &d);
            let decode_as =
                declared.unwrap_or(if std::str::from_utf8(seg).is_ok() { Charset::Utf8 } else { Charset::Latin1 });
            let mut h = Header::from_msh(seg, d, declared, decode_as, true);
            // Copied verbatim into the NAK, so CR/LF or stray control bytes must not survive.
            for f in [
                &mut h.sending_application_raw,
                &mut h.sending_facility_raw,
                &mut h.receiving_application_raw,
                &mut h.receiving_facility_raw,
                &mut h.processing_id_raw,
            ] {
                f.retain(|&c| c.is_ascii_graphic() || c == b' ' || c >= 0x80);
                if declared == Some(Charset::Utf8) && std::str::from_utf8(f).is_err() {
                    *f = String::from_utf8_lossy(f).into_owned().into_bytes();
                }
            }
            h
        }
        Err(_) => {
            // Delimiters are unusable: guess '|' fields and keep only plain first components.
            let d = Delimiters::default();
            let fs = match seg.get(3) {
                Some(&c) if c.is_ascii_punctuation() => c,
                _ => return empty(),
            };
            let mut parts: Vec<&[u8]> = Split::new(seg, fs).collect();
            // An MSH-2 that contains the field separator (`^~|&`) spills into the next part;
            // drop such punctuation-only fragments so that MSH-3 onwards stay in place.
            let mut enc_len = parts.get(1).map_or(0, |p| p.len());
            while enc_len < 4
                && parts.len() > 2
                && parts.get(2).is_some_and(|p| !p.is_empty() && p.len() < 4 && p.iter().all(u8::is_ascii_punctuation))
            {
                enc_len += parts.remove(2).len() + 1;
            }
            let get = |n: usize| {
                let f = parts.get(n.saturating_sub(1)).copied().unwrap_or_default();
                sanitize(Split::new(f, b'^').next().unwrap_or_default(), &d)
            };
            let mut rebuilt = b"MSH|^~\\&".to_vec();
            for n in 3..=18 {
                rebuilt.push(b'|');
                rebuilt.extend(get(n));
            }
            let declared = cs_of(&rebuilt, &d);
            Header::from_msh(&rebuilt, d, declared, Charset::Latin1, true)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn salvage_good_delimiters() {
        let h = salvage_header(b"junk\rMSH|^~\\&|APP^1.2^ISO|FAC|RAPP|RFAC|2024||ADT^A01|CTL9|P|9.9|||AL\rPID|bad");
        assert_eq!(h.control_id, "CTL9");
        assert_eq!(h.sending_application, "APP");
        assert_eq!(h.sending_application_raw, b"APP^1.2^ISO");
        assert_eq!(h.version, "9.9");
        assert!(h.enhanced_mode());
        assert!(h.salvaged);
    }

    #[test]
    fn salvage_bad_delimiters() {
        let h = salvage_header(b"MSH|^^\\&|APP|FAC|RAPP|RFAC|2024||ADT^A01|C\\TL|P|2.5");
        assert_eq!(h.delimiters, Delimiters::default());
        assert_eq!(h.control_id, "CTL");
        assert_eq!(h.receiving_application, "RAPP");
        assert_eq!(h.trigger_event, "");
    }

    #[test]
    fn salvage_field_separator_in_msh2() {
        let h = salvage_header(b"MSH|^~|&|APP|FAC|RAPP|RFAC|2024||ADT^A01|CTL8|P|2.5");
        assert_eq!(h.control_id, "CTL8");
        assert_eq!(h.sending_application, "APP");
    }

    #[test]
    fn salvage_nothing() {
        let h = salvage_header(b"\x00\x01garbage");
        assert_eq!(h.control_id, "");
        let h = salvage_header(b"");
        assert_eq!(h.version, "");
    }
}
