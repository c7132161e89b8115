//! The HL7 v2 message a resource was made from, written as the resource's `meta.source` URI and read back.
//!
//! `meta.source` is FHIR's place for "the source system of this version" (a uri). A referral's ServiceRequest and
//! Task carry `https://sdoh-gateway.org/hl7v2/{MSH-3}/{MSH-4}#{MSH-10}`, each HD as `namespace^universal id^type`
//! percent-encoded, so that a status update can be addressed back to the sending application and facility and can
//! name the referral message it answers. Everything before `#` names the sender; the fragment names the message.

use crate::v2::Parts;

/// Prefix of every `meta.source` this crate writes for a converted message.
pub const MESSAGE_SOURCE_PREFIX: &str = "https://sdoh-gateway.org/hl7v2/";

/// A hierarchic designator (HD): namespace id, universal id, universal id type.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Hd {
    /// HD-1.
    pub namespace_id: String,
    /// HD-2 (an OID, UUID or URI).
    pub universal_id: String,
    /// HD-3 (`ISO`, `UUID`, `URI`, ...).
    pub universal_id_type: String,
}

impl Hd {
    pub(crate) fn from_parts(p: &Parts<'_>) -> Hd {
        Hd {
            namespace_id: p.s(1).unwrap_or_default(),
            universal_id: p.s(2).unwrap_or_default(),
            universal_id_type: p.s(3).unwrap_or_default(),
        }
    }

    /// The components in order, for a builder.
    pub fn components(&self) -> [&str; 3] {
        [&self.namespace_id, &self.universal_id, &self.universal_id_type]
    }

    fn encode(&self) -> String {
        let joined = self.components().join("^");
        percent_encode(joined.trim_end_matches('^'))
    }

    fn decode(text: &str) -> Option<Hd> {
        let text = percent_decode(text)?;
        let mut parts = text.split('^').map(str::to_owned);
        Some(Hd {
            namespace_id: parts.next().unwrap_or_default(),
            universal_id: parts.next().unwrap_or_default(),
            universal_id_type: parts.next().unwrap_or_default(),
        })
    }
}

/// Who sent a message (MSH-3, MSH-4) and its control id (MSH-10).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct MessageSource {
    /// MSH-3.
    pub sending_application: Hd,
    /// MSH-4.
    pub sending_facility: Hd,
    /// MSH-10.
    pub control_id: String,
}

impl MessageSource {
    /// The `meta.source` URI.
    pub fn to_uri(&self) -> String {
        format!(
            "{MESSAGE_SOURCE_PREFIX}{}/{}#{}",
            self.sending_application.encode(),
            self.sending_facility.encode(),
            percent_encode(&self.control_id)
        )
    }

    /// Reads a `meta.source` written by [`MessageSource::to_uri`]; `None` for any other URI.
    pub fn parse(uri: &str) -> Option<MessageSource> {
        let rest = uri.strip_prefix(MESSAGE_SOURCE_PREFIX)?;
        let (sender, control_id) = rest.split_once('#')?;
        let (application, facility) = sender.split_once('/')?;
        if facility.contains('/') {
            return None;
        }
        Some(MessageSource {
            sending_application: Hd::decode(application)?,
            sending_facility: Hd::decode(facility)?,
            control_id: percent_decode(control_id)?,
        })
    }

    /// `meta.source` of a resource, when it names a converted message.
    pub fn of(resource: &serde_json::Value) -> Option<MessageSource> {
        MessageSource::parse(resource.get("meta")?.get("source")?.as_str()?)
    }
}

/// Everything except RFC 3986 unreserved characters as `%XX` of its UTF-8 bytes.
fn percent_encode(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for b in text.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~') {
            out.push(char::from(b));
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

fn percent_decode(text: &str) -> Option<String> {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            let hex = std::str::from_utf8(bytes.get(i + 1..i + 3)?).ok()?;
            out.push(u8::from_str_radix(hex, 16).ok()?);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8(out).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sources_round_trip_and_other_uris_are_not_sources() {
        let source = MessageSource {
            sending_application: Hd { namespace_id: "EPIC".into(), ..Hd::default() },
            sending_facility: Hd {
                namespace_id: "CLINIC 1/north".into(),
                universal_id: "2.16.840.1.113883.19.5".into(),
                universal_id_type: "ISO".into(),
            },
            control_id: "REF#0001".into(),
        };
        let uri = source.to_uri();
        assert_eq!(
            uri,
            "https://sdoh-gateway.org/hl7v2/EPIC/CLINIC%201%2Fnorth%5E2.16.840.1.113883.19.5%5EISO#REF%230001"
        );
        assert!(!uri.contains(char::is_whitespace), "a FHIR uri has no whitespace");
        assert_eq!(MessageSource::parse(&uri), Some(source));
        assert_eq!(MessageSource::parse("https://example.org/fhir#abc"), None);
        assert_eq!(MessageSource::parse("https://sdoh-gateway.org/hl7v2/A/B/C#1"), None);
        assert_eq!(MessageSource::parse("https://sdoh-gateway.org/hl7v2/A/B#%zz"), None);
    }
}
