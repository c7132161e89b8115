//! Conversion errors: each names the message location at fault, never the value found there (PHI).

/// Why a message could not be converted. Messages carry segment/field locations only.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ConversionError {
    /// The MSH-9 message type and trigger event pair has no mapping.
    #[error("message type {message_type}^{trigger_event} is not supported")]
    UnsupportedMessageType {
        /// MSH-9.1.
        message_type: String,
        /// MSH-9.2.
        trigger_event: String,
    },
    /// A field the mapping cannot do without is absent or empty.
    #[error("required field {location} is missing")]
    MissingField {
        /// Location such as `PID-3` or `OBX[2]-3`.
        location: String,
    },
    /// A field is present but its value cannot be interpreted.
    #[error("invalid value in {location}: {reason}")]
    InvalidValue {
        /// Location such as `PID-7`.
        location: String,
        /// What is wrong, without repeating the value.
        reason: String,
    },
}

impl ConversionError {
    /// The segment/field location at fault, when there is one.
    pub fn location(&self) -> Option<&str> {
        match self {
            ConversionError::UnsupportedMessageType { .. } => None,
            ConversionError::MissingField { location } | ConversionError::InvalidValue { location, .. } => {
                Some(location)
            }
        }
    }

    /// A code from the message (message type, value type) made safe to echo: HL7 codes are short and
    /// alphanumeric, so anything else is withheld rather than risk copying free text (possibly PHI) into logs.
    pub(crate) fn code_for_log(code: &str) -> String {
        if (1..=7).contains(&code.len()) && code.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_') {
            code.to_owned()
        } else {
            "(unrecognised)".to_owned()
        }
    }

    pub(crate) fn missing(location: impl Into<String>) -> Self {
        ConversionError::MissingField { location: location.into() }
    }

    pub(crate) fn invalid(location: impl Into<String>, reason: impl Into<String>) -> Self {
        ConversionError::InvalidValue { location: location.into(), reason: reason.into() }
    }
}
