//! ACK construction: original (AA/AE/AR) and enhanced (CA/CE/CR) mode, version-specific ERR.

use crate::builder::MessageBuilder;
use crate::charset::Charset;
use crate::error::{ErrorClass, ErrorCode, ErrorLocation, ParseError};
use crate::escape::escape;
use crate::header::{AckCondition, Header, salvage_header};
use crate::message::SUPPORTED_VERSIONS;

/// MSA-1 acknowledgment code (HL7 table 0008).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum AckCode {
    /// Original mode: application accept.
    AA,
    /// Original mode: application error.
    AE,
    /// Original mode: application reject.
    AR,
    /// Enhanced mode: commit accept.
    CA,
    /// Enhanced mode: commit error.
    CE,
    /// Enhanced mode: commit reject.
    CR,
}

/// Which acknowledgment protocol the sender asked for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum AckMode {
    /// MSH-15 and MSH-16 empty.
    Original,
    /// MSH-15 or MSH-16 valued.
    Enhanced,
}

/// What happened to a received message.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Outcome {
    /// Accepted.
    Accepted,
    /// Understood but in error.
    Error,
    /// Rejected (header-level problem or unsupported).
    Rejected,
}

impl From<&ParseError> for Outcome {
    fn from(e: &ParseError) -> Outcome {
        match e.class {
            ErrorClass::Reject => Outcome::Rejected,
            ErrorClass::Error => Outcome::Error,
        }
    }
}

impl AckCode {
    /// The code for an outcome in a mode.
    pub fn for_outcome(mode: AckMode, outcome: Outcome) -> AckCode {
        match (mode, outcome) {
            (AckMode::Original, Outcome::Accepted) => AckCode::AA,
            (AckMode::Original, Outcome::Error) => AckCode::AE,
            (AckMode::Original, Outcome::Rejected) => AckCode::AR,
            (AckMode::Enhanced, Outcome::Accepted) => AckCode::CA,
            (AckMode::Enhanced, Outcome::Error) => AckCode::CE,
            (AckMode::Enhanced, Outcome::Rejected) => AckCode::CR,
        }
    }

    /// The two-letter code.
    pub fn as_str(self) -> &'static str {
        match self {
            AckCode::AA => "AA",
            AckCode::AE => "AE",
            AckCode::AR => "AR",
            AckCode::CA => "CA",
            AckCode::CE => "CE",
            AckCode::CR => "CR",
        }
    }

    /// Parses a two-letter code.
    pub fn from_code(s: &str) -> Option<AckCode> {
        [AckCode::AA, AckCode::AE, AckCode::AR, AckCode::CA, AckCode::CE, AckCode::CR]
            .into_iter()
            .find(|c| c.as_str() == s)
    }
}

/// Enhanced mode when either MSH-15 or MSH-16 is valued.
pub fn ack_mode(h: &Header) -> AckMode {
    if h.enhanced_mode() { AckMode::Enhanced } else { AckMode::Original }
}

fn condition_allows(cond: Option<AckCondition>, outcome: Outcome) -> bool {
    match cond {
        None | Some(AckCondition::Always) => true,
        Some(AckCondition::Never) => false,
        Some(AckCondition::ErrorOnly) => outcome != Outcome::Accepted,
        Some(AckCondition::SuccessOnly) => outcome == Outcome::Accepted,
    }
}

/// Whether the receiver should send the (accept) ACK at all. Original mode always answers;
/// enhanced mode follows MSH-15 (empty counts as AL).
pub fn should_send_accept_ack(h: &Header, outcome: Outcome) -> bool {
    match ack_mode(h) {
        AckMode::Original => true,
        AckMode::Enhanced => condition_allows(h.accept_ack_type, outcome),
    }
}

/// Whether an application ACK is wanted under MSH-16 (enhanced mode only; original mode's
/// single ACK is the application ACK).
pub fn should_send_application_ack(h: &Header, outcome: Outcome) -> bool {
    match ack_mode(h) {
        AckMode::Original => true,
        AckMode::Enhanced => condition_allows(h.application_ack_type, outcome),
    }
}

/// ERR-4 severity (HL7 table 0516).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Severity {
    /// `E`.
    Error,
    /// `W`.
    Warning,
    /// `I`.
    Information,
    /// `F`.
    Fatal,
}

impl Severity {
    /// The one-letter code.
    pub fn code(self) -> &'static str {
        match self {
            Severity::Error => "E",
            Severity::Warning => "W",
            Severity::Information => "I",
            Severity::Fatal => "F",
        }
    }
}

/// One ERR segment's content.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AckError {
    /// Table 0357 code.
    pub code: ErrorCode,
    /// Where, if known.
    pub location: Option<ErrorLocation>,
    /// Severity.
    pub severity: Severity,
    /// User message (ERR-8; MSA-3 before v2.5).
    pub message: String,
}

impl From<&ParseError> for AckError {
    fn from(e: &ParseError) -> AckError {
        AckError {
            code: e.code,
            location: Some(e.location.clone()),
            severity: Severity::Error,
            message: e.message.clone(),
        }
    }
}

/// A header field copied into the ACK as written, minus control characters: an ACK must parse even when the
/// message it answers did not (a salvaged header can carry NULs or line breaks).
fn printable(raw: &[u8]) -> Vec<u8> {
    raw.iter().copied().filter(|b| !b.is_ascii_control()).collect()
}

/// `(major, minor, patch)` of a version string like `2.5.1`.
pub fn version_tuple(v: &str) -> (u32, u32, u32) {
    let mut it = v.split('.').map(|p| p.trim().parse::<u32>().unwrap_or(0));
    (it.next().unwrap_or(0), it.next().unwrap_or(0), it.next().unwrap_or(0))
}

/// Builds one ACK for a received header.
#[derive(Debug, Clone)]
pub struct Ack<'h> {
    header: &'h Header,
    code: AckCode,
    timestamp: String,
    control_id: String,
    text: Option<String>,
    errors: Vec<AckError>,
}

impl<'h> Ack<'h> {
    /// An ACK with an explicit code. `timestamp` becomes MSH-7 and `control_id` MSH-10 (the
    /// crate has no clock or id generator of its own).
    pub fn new(header: &'h Header, code: AckCode, timestamp: &str, control_id: &str) -> Self {
        Ack {
            header,
            code,
            timestamp: timestamp.to_owned(),
            control_id: control_id.to_owned(),
            text: None,
            errors: Vec::new(),
        }
    }

    /// AA or CA, by the header's mode.
    pub fn accept(header: &'h Header, timestamp: &str, control_id: &str) -> Self {
        let code = AckCode::for_outcome(ack_mode(header), Outcome::Accepted);
        Ack::new(header, code, timestamp, control_id)
    }

    /// AE/AR or CE/CR for a parse error, with its ERR segment.
    pub fn for_error(header: &'h Header, err: &ParseError, timestamp: &str, control_id: &str) -> Self {
        let code = AckCode::for_outcome(ack_mode(header), Outcome::from(err));
        Ack::new(header, code, timestamp, control_id).error(AckError::from(err))
    }

    /// MSA-3 text (only written for versions before 2.5, where MSA-3 exists).
    pub fn text(mut self, text: &str) -> Self {
        self.text = Some(text.to_owned());
        self
    }

    /// Adds an ERR segment.
    pub fn error(mut self, e: AckError) -> Self {
        self.errors.push(e);
        self
    }

    /// The MSA-1 code.
    pub fn code(&self) -> AckCode {
        self.code
    }

    /// Encodes the ACK (CR segment terminators, the original's delimiters and charset).
    pub fn build(&self) -> Vec<u8> {
        let h = self.header;
        let version = if SUPPORTED_VERSIONS.contains(&h.version.as_str()) { h.version.as_str() } else { "2.5.1" };
        let v = version_tuple(version);
        // The truncation character (v2.7+) is not carried over: the ACK writes values such as the version `2.5.1`
        // that would otherwise need escaping wherever the sender chose `.` or another common character for it.
        let d = crate::delim::Delimiters { truncation: None, ..h.delimiters };
        let mut b = MessageBuilder::new(d).with_charset(h.charset.unwrap_or(Charset::Utf8));
        {
            let mut msh = b.segment("MSH");
            msh.field_raw(3, &printable(&h.receiving_application_raw))
                .field_raw(4, &printable(&h.receiving_facility_raw))
                .field_raw(5, &printable(&h.sending_application_raw))
                .field_raw(6, &printable(&h.sending_facility_raw))
                .field(7, &self.timestamp);
            // A salvaged header may hold garbage; the ACK itself must always be valid.
            let code_like = |t: &str| t.len() == 3 && t.bytes().all(|b| b.is_ascii_uppercase() || b.is_ascii_digit());
            let trig = if code_like(&h.trigger_event) { h.trigger_event.as_str() } else { "" };
            // MSH-9.3 (message structure) only exists from v2.3.1 on.
            match (trig.is_empty(), v >= (2, 3, 1)) {
                (true, _) => msh.field(9, "ACK"),
                (false, true) => msh.components(9, &["ACK", trig, "ACK"]),
                (false, false) => msh.components(9, &["ACK", trig]),
            };
            msh.field(10, &self.control_id);
            if !matches!(h.processing_id.as_str(), "P" | "D" | "T") {
                msh.field(11, "P");
            } else {
                msh.field_raw(11, &h.processing_id_raw);
            }
            msh.field(12, version);
            if let Some(cs) = h.charset {
                msh.field(18, cs.hl7_name());
            }
        }
        {
            let mut msa = b.segment("MSA");
            msa.field(1, self.code.as_str()).field(2, &h.control_id);
            if v < (2, 5, 0) {
                let text = self.text.as_deref().or_else(|| self.errors.first().map(|e| e.message.as_str()));
                if let Some(t) = text {
                    msa.field(3, t);
                }
            }
        }
        for e in &self.errors {
            let mut err = b.segment("ERR");
            let code = e.code.code().to_string();
            if v >= (2, 5, 0) {
                if let Some(loc) = &e.location {
                    let parts = loc.erl_parts();
                    let parts: Vec<&str> = parts.iter().map(String::as_str).collect();
                    err.components(2, &parts);
                }
                err.components(3, &[&code, e.code.text(), "HL70357"]).field(4, e.severity.code()).field(8, &e.message);
            } else {
                // ELD: segment^sequence^field^code&text&HL70357 (CE as subcomponents).
                let esc = |s: &str| escape(s, &d).into_owned();
                let loc = e.location.clone().unwrap_or_default();
                let field = if loc.field > 0 { loc.field.to_string() } else { String::new() };
                let seq = if loc.segment.is_empty() { String::new() } else { loc.sequence.max(1).to_string() };
                let sub = char::from(d.subcomponent).to_string();
                let ce = [code.as_str(), e.code.text(), "HL70357"].map(esc).join(&sub);
                let comp = char::from(d.component).to_string();
                let eld = [esc(&loc.segment), seq, field, ce].join(&comp);
                err.field_raw(1, eld.as_bytes());
            }
        }
        b.build()
    }
}

/// A NAK for input that could not be parsed: the header is salvaged as far as possible, the
/// code follows the error class and the (salvaged) mode.
pub fn nak_for_unparseable(raw: &[u8], err: &ParseError, timestamp: &str, control_id: &str) -> Vec<u8> {
    let h = salvage_header(raw);
    Ack::for_error(&h, err, timestamp, control_id).build()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Message;

    const ADT: &[u8] = b"MSH|^~\\&|SND^1.2.3^ISO|SFAC|RCV|RFAC|20240101||ADT^A01^ADT_A01|MSG1|P|2.5.1\rPID|1||123";

    #[test]
    fn original_accept() {
        let m = Message::parse(ADT).unwrap();
        let h = m.header();
        let ack = Ack::accept(&h, "20240102", "ACK1").build();
        assert_eq!(ack, b"MSH|^~\\&|RCV|RFAC|SND^1.2.3^ISO|SFAC|20240102||ACK^A01^ACK|ACK1|P|2.5.1\rMSA|AA|MSG1\r");
        let a = Message::parse(&ack).unwrap();
        assert_eq!(a.text("MSA-1").unwrap(), "AA");
    }

    #[test]
    fn enhanced_error_v25() {
        let raw = b"MSH|^~\\&|S|F|R|G|20240101||ORU^R01|M2|P|2.6|||AL|NE||UNICODE UTF-8\rOBX|1|ST|x||\xff\r";
        let err = Message::parse(raw).unwrap_err();
        assert_eq!(err.code, ErrorCode::DataType);
        assert_eq!(err.location.to_string(), "OBX-5");
        assert!(!err.is_reject());
        let h = salvage_header(raw);
        assert_eq!(ack_mode(&h), AckMode::Enhanced);
        let ack = Ack::for_error(&h, &err, "20240102", "A2").build();
        let a = Message::parse(&ack).unwrap();
        assert_eq!(a.text("MSA-1").unwrap(), "CE");
        assert_eq!(a.text("MSA-2").unwrap(), "M2");
        assert_eq!(a.get("ERR-2").unwrap().raw(), b"OBX^1^5^1");
        assert_eq!(a.text("ERR-3.1").unwrap(), "102");
        assert_eq!(a.text("ERR-3.3").unwrap(), "HL70357");
        assert_eq!(a.text("ERR-4").unwrap(), "E");
        assert_eq!(a.text("MSH-18").unwrap(), "UNICODE UTF-8");
        assert!(a.get("MSA-3").is_none());
        assert!(should_send_accept_ack(&h, Outcome::Error));
        assert!(!should_send_application_ack(&h, Outcome::Error));
    }

    #[test]
    fn original_error_v23_eld() {
        let raw = b"MSH|^~\\&|S|F|R|G|20240101||ADT^A08|M3|P|2.3\rpid|1";
        let err = Message::parse(raw).unwrap_err();
        let h = salvage_header(raw);
        let ack = Ack::for_error(&h, &err, "20240102", "A3").build();
        let a = Message::parse(&ack).unwrap();
        assert_eq!(a.text("MSH-9").unwrap(), "ACK^A08");
        assert_eq!(a.text("MSA-1").unwrap(), "AE");
        assert!(a.text("MSA-3").unwrap().contains("segment id"));
        assert_eq!(a.text("ERR-1.1").unwrap(), "pid");
        assert_eq!(a.text("ERR-1.4.1").unwrap(), "100");
        assert_eq!(a.text("ERR-1.4.3").unwrap(), "HL70357");
    }

    #[test]
    fn reject_unsupported_version_falls_back() {
        let raw = b"MSH|^~\\&|S|F|R|G|20240101||ADT^A01|M4|P|3.0";
        let err = Message::parse(raw).unwrap_err();
        assert_eq!(err.code, ErrorCode::UnsupportedVersionId);
        let ack = nak_for_unparseable(raw, &err, "t", "A4");
        let a = Message::parse(&ack).unwrap();
        assert_eq!(a.text("MSA-1").unwrap(), "AR");
        assert_eq!(a.text("MSH-12").unwrap(), "2.5.1");
        assert_eq!(a.text("ERR-2").unwrap(), "MSH^1^12^1");
    }

    #[test]
    fn accept_ack_conditions() {
        let mut h = salvage_header(ADT);
        assert!(should_send_accept_ack(&h, Outcome::Accepted));
        h.accept_ack_type = Some(AckCondition::Never);
        assert!(!should_send_accept_ack(&h, Outcome::Rejected));
        h.accept_ack_type = Some(AckCondition::ErrorOnly);
        assert!(!should_send_accept_ack(&h, Outcome::Accepted));
        assert!(should_send_accept_ack(&h, Outcome::Error));
        h.accept_ack_type = Some(AckCondition::SuccessOnly);
        assert!(should_send_accept_ack(&h, Outcome::Accepted));
        assert!(!should_send_accept_ack(&h, Outcome::Rejected));
        assert_eq!(version_tuple("2.5.1"), (2, 5, 1));
        assert!(version_tuple("2.4") < (2, 5, 0));
    }

    #[test]
    fn nak_for_garbage() {
        let raw = b"\x00\x01\x02garbage";
        let err = Message::parse(raw).unwrap_err();
        let ack = nak_for_unparseable(raw, &err, "t", "A5");
        let a = Message::parse(&ack).unwrap();
        assert_eq!(a.text("MSA-1").unwrap(), "AR");
        assert!(a.get("MSA-2").is_none());
        assert_eq!(a.text("MSH-9").unwrap(), "ACK");
    }
}
