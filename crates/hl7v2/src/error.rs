//! Parse errors carrying HL7 table 0357 codes and ERR-2 style error locations.

use std::fmt;

/// HL7 table 0357 (message error condition codes).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum ErrorCode {
    /// 0: message accepted.
    Accepted,
    /// 100: segment sequence error.
    SegmentSequence,
    /// 101: required field missing.
    RequiredFieldMissing,
    /// 102: data type error.
    DataType,
    /// 103: table value not found.
    TableValueNotFound,
    /// 104: value too long.
    ValueTooLong,
    /// 200: unsupported message type.
    UnsupportedMessageType,
    /// 201: unsupported event code.
    UnsupportedEventCode,
    /// 202: unsupported processing id.
    UnsupportedProcessingId,
    /// 203: unsupported version id.
    UnsupportedVersionId,
    /// 204: unknown key identifier.
    UnknownKeyIdentifier,
    /// 205: duplicate key identifier.
    DuplicateKeyIdentifier,
    /// 206: application record locked.
    ApplicationRecordLocked,
    /// 207: application internal error.
    ApplicationInternalError,
}

impl ErrorCode {
    /// Every code, for lookups by number.
    pub const ALL: [ErrorCode; 14] = [
        ErrorCode::Accepted,
        ErrorCode::SegmentSequence,
        ErrorCode::RequiredFieldMissing,
        ErrorCode::DataType,
        ErrorCode::TableValueNotFound,
        ErrorCode::ValueTooLong,
        ErrorCode::UnsupportedMessageType,
        ErrorCode::UnsupportedEventCode,
        ErrorCode::UnsupportedProcessingId,
        ErrorCode::UnsupportedVersionId,
        ErrorCode::UnknownKeyIdentifier,
        ErrorCode::DuplicateKeyIdentifier,
        ErrorCode::ApplicationRecordLocked,
        ErrorCode::ApplicationInternalError,
    ];

    /// The numeric table 0357 value.
    pub fn code(self) -> u16 {
        match self {
            ErrorCode::Accepted => 0,
            ErrorCode::SegmentSequence => 100,
            ErrorCode::RequiredFieldMissing => 101,
            ErrorCode::DataType => 102,
            ErrorCode::TableValueNotFound => 103,
            ErrorCode::ValueTooLong => 104,
            ErrorCode::UnsupportedMessageType => 200,
            ErrorCode::UnsupportedEventCode => 201,
            ErrorCode::UnsupportedProcessingId => 202,
            ErrorCode::UnsupportedVersionId => 203,
            ErrorCode::UnknownKeyIdentifier => 204,
            ErrorCode::DuplicateKeyIdentifier => 205,
            ErrorCode::ApplicationRecordLocked => 206,
            ErrorCode::ApplicationInternalError => 207,
        }
    }

    /// The table 0357 display text.
    pub fn text(self) -> &'static str {
        match self {
            ErrorCode::Accepted => "Message accepted",
            ErrorCode::SegmentSequence => "Segment sequence error",
            ErrorCode::RequiredFieldMissing => "Required field missing",
            ErrorCode::DataType => "Data type error",
            ErrorCode::TableValueNotFound => "Table value not found",
            ErrorCode::ValueTooLong => "Value too long",
            ErrorCode::UnsupportedMessageType => "Unsupported message type",
            ErrorCode::UnsupportedEventCode => "Unsupported event code",
            ErrorCode::UnsupportedProcessingId => "Unsupported processing id",
            ErrorCode::UnsupportedVersionId => "Unsupported version id",
            ErrorCode::UnknownKeyIdentifier => "Unknown key identifier",
            ErrorCode::DuplicateKeyIdentifier => "Duplicate key identifier",
            ErrorCode::ApplicationRecordLocked => "Application record locked",
            ErrorCode::ApplicationInternalError => "Application internal error",
        }
    }

    /// Looks a code up by its table 0357 number.
    pub fn from_code(code: u16) -> Option<ErrorCode> {
        ErrorCode::ALL.into_iter().find(|c| c.code() == code)
    }
}

impl fmt::Display for ErrorCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} ({})", self.code(), self.text())
    }
}

/// Where an error is, as HL7 ERR-2 (ERL) wants it. Zero means "not given"; positions are 1-based.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct ErrorLocation {
    /// Segment id as found (may be malformed when the id itself is the problem).
    pub segment: String,
    /// Occurrence of that segment id in the message, 1-based.
    pub sequence: u32,
    /// Field position (MSH-1 is the field separator).
    pub field: u32,
    /// Field repetition, 1-based.
    pub repetition: u32,
    /// Component position.
    pub component: u32,
    /// Subcomponent position.
    pub subcomponent: u32,
}

impl ErrorLocation {
    /// A location naming a whole segment.
    pub fn segment(id: &str, sequence: u32) -> Self {
        ErrorLocation { segment: id.to_owned(), sequence, ..Default::default() }
    }

    /// A location naming a field of a segment.
    pub fn field(id: &str, sequence: u32, field: u32) -> Self {
        ErrorLocation { segment: id.to_owned(), sequence, field, ..Default::default() }
    }

    /// Same location narrowed to a component.
    pub fn with_component(mut self, component: u32) -> Self {
        self.component = component;
        self
    }

    /// The ERL components (segment^sequence^field^repetition^component^subcomponent), trailing
    /// unknown parts left out so receivers don't read a zero as a real position.
    pub fn erl_parts(&self) -> Vec<String> {
        let mut parts = vec![self.segment.clone(), self.sequence.max(1).to_string()];
        let rest = [self.field, self.repetition.max(u32::from(self.field > 0)), self.component, self.subcomponent];
        let keep = rest.iter().rposition(|&v| v > 0).map_or(0, |i| i + 1);
        parts.extend(rest.iter().take(keep).map(|v| if *v == 0 { String::new() } else { v.to_string() }));
        parts
    }
}

impl fmt::Display for ErrorLocation {
    /// `SEG[seq]-field[rep].component.subcomponent`, omitting defaults, e.g. `MSH-9` or `PID[2]-3[2].1`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.segment)?;
        if self.sequence > 1 {
            write!(f, "[{}]", self.sequence)?;
        }
        if self.field > 0 {
            write!(f, "-{}", self.field)?;
            if self.repetition > 1 {
                write!(f, "[{}]", self.repetition)?;
            }
            if self.component > 0 {
                write!(f, ".{}", self.component)?;
                if self.subcomponent > 0 {
                    write!(f, ".{}", self.subcomponent)?;
                }
            }
        }
        Ok(())
    }
}

/// Whether a problem means the message cannot be processed at all (header level) or only that
/// its content is in error.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ErrorClass {
    /// AR / CR: the header is unusable or unsupported.
    Reject,
    /// AE / CE: the message was understood but its content is wrong.
    Error,
}

/// A parse or validation failure, ready to be put into an ACK.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("HL7 error {code} at {location}: {message}")]
pub struct ParseError {
    /// Table 0357 code.
    pub code: ErrorCode,
    /// ERR-2 location.
    pub location: ErrorLocation,
    /// Short human-readable explanation.
    pub message: String,
    /// Reject (AR/CR) or error (AE/CE).
    pub class: ErrorClass,
}

impl ParseError {
    pub(crate) fn reject(code: ErrorCode, location: ErrorLocation, message: impl Into<String>) -> Self {
        ParseError { code, location, message: message.into(), class: ErrorClass::Reject }
    }

    pub(crate) fn error(code: ErrorCode, location: ErrorLocation, message: impl Into<String>) -> Self {
        ParseError { code, location, message: message.into(), class: ErrorClass::Error }
    }

    /// True when the answer must be AR/CR rather than AE/CE.
    pub fn is_reject(&self) -> bool {
        self.class == ErrorClass::Reject
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn location_display_omits_defaults() {
        assert_eq!(ErrorLocation::field("MSH", 1, 9).to_string(), "MSH-9");
        let l = ErrorLocation {
            segment: "PID".into(),
            sequence: 2,
            field: 3,
            repetition: 2,
            component: 1,
            subcomponent: 2,
        };
        assert_eq!(l.to_string(), "PID[2]-3[2].1.2");
        assert_eq!(ErrorLocation::segment("MSH", 1).to_string(), "MSH");
    }

    #[test]
    fn erl_parts_trim_trailing() {
        assert_eq!(ErrorLocation::field("MSH", 1, 9).erl_parts(), ["MSH", "1", "9", "1"]);
        assert_eq!(ErrorLocation::segment("PID", 0).erl_parts(), ["PID", "1"]);
        assert_eq!(ErrorLocation::field("MSH", 1, 9).with_component(2).erl_parts(), ["MSH", "1", "9", "1", "2"]);
    }

    #[test]
    fn codes_round_trip() {
        for c in ErrorCode::ALL {
            assert_eq!(ErrorCode::from_code(c.code()), Some(c));
        }
        assert_eq!(ErrorCode::from_code(999), None);
    }
}
