//! Which messages the gateway accepts: message types and events, processing ids.

/// Why a well-formed message is refused (HL7 table 0357 codes 200-202).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    UnsupportedMessageType,
    UnsupportedEvent,
    UnsupportedProcessingId,
}

impl Refusal {
    pub fn reason(self) -> &'static str {
        match self {
            Refusal::UnsupportedMessageType => "unsupported_message_type",
            Refusal::UnsupportedEvent => "unsupported_event",
            Refusal::UnsupportedProcessingId => "unsupported_processing_id",
        }
    }
}

/// Accepted `TYPE^EVENT` patterns (`TYPE^*` for every event) and processing ids.
#[derive(Debug, Clone)]
pub struct AcceptPolicy {
    patterns: Vec<(String, Option<String>)>,
    processing_ids: Vec<String>,
}

impl AcceptPolicy {
    pub fn new(patterns: &[String], processing_ids: &[String]) -> Self {
        let patterns = patterns
            .iter()
            .filter_map(|p| p.split_once('^'))
            .map(|(t, e)| (t.to_owned(), (e != "*").then(|| e.to_owned())))
            .collect();
        AcceptPolicy { patterns, processing_ids: processing_ids.to_vec() }
    }

    /// Checks MSH-9 (type, event) and MSH-11 (processing id, first component).
    pub fn check(&self, message_type: &str, event: &str, processing_id: &str) -> Result<(), Refusal> {
        let of_type: Vec<&Option<String>> =
            self.patterns.iter().filter(|(t, _)| t == message_type).map(|(_, e)| e).collect();
        if of_type.is_empty() {
            return Err(Refusal::UnsupportedMessageType);
        }
        if !of_type.iter().any(|e| e.as_deref().is_none_or(|e| e == event)) {
            return Err(Refusal::UnsupportedEvent);
        }
        if !self.processing_ids.iter().any(|p| p == processing_id) {
            return Err(Refusal::UnsupportedProcessingId);
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy() -> AcceptPolicy {
        let patterns = ["ADT^A01", "ADT^A04", "ORU^*"].map(String::from);
        AcceptPolicy::new(&patterns, &["P".to_owned(), "T".to_owned()])
    }

    #[test]
    fn types_events_and_processing_ids() {
        let p = policy();
        assert_eq!(p.check("ADT", "A01", "P"), Ok(()));
        assert_eq!(p.check("ORU", "R30", "T"), Ok(()), "wildcard event");
        assert_eq!(p.check("MFN", "M02", "P"), Err(Refusal::UnsupportedMessageType));
        assert_eq!(p.check("ADT", "A99", "P"), Err(Refusal::UnsupportedEvent));
        assert_eq!(p.check("ADT", "A04", "D"), Err(Refusal::UnsupportedProcessingId));
    }
}
