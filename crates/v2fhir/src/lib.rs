//! Pure mapping of parsed HL7 v2 messages to FHIR R4 JSON resources, following the HL7 v2-to-FHIR IG.
//!
//! | message | resources |
//! |---|---|
//! | ADT A01/A02/A03/A04/A08/A28/A31 | Organization (MSH-4), Patient (PID), payer Organization + Coverage (IN1), RelatedPerson (NK1), Encounter (PV1/PV2) |
//! | ADT A40 | surviving Patient (`link` replaces) and prior Patient (inactive, `link` replaced-by) |
//! | ORU R01 | Patient, Observations + DiagnosticReport per OBR; rows of a known screening instrument (OBR-4 panel or an OBX panel row heading its OBX-4 sub-ID group) become one QuestionnaireResponse instead |
//! | REF I12/I14 | Organizations/Practitioner/PractitionerRole (PRD), Patient, SDOHCC ServiceRequest and referral Task (RF1) |
//!
//! Ids are `v2-` + 128 bits of SHA-256 over the resource type and the namespaced source identifier (PID-3 with
//! its assigning authority, PV1-19, the OBR/ORC filler or placer number, RF1-6), so reprocessing and update
//! messages land on the same resources. Times keep the sender's precision; a time of day without a UTC offset
//! cannot be placed on the timeline, so only its date is kept (with a warning). Mapping tables and the
//! screening-instrument list are data in `profiles/v2fhir/`.
//!
//! ```
//! let raw = b"MSH|^~\\&|APP|FAC|GW|GWF|20240101120000||ADT^A04^ADT_A01|MSG001|P|2.5.1\rPID|1||123^^^HOSP^MR||Doe^Jane||19800101|F\r";
//! let msg = hl7v2::Message::parse(raw).unwrap();
//! let out = v2fhir::convert(&msg).unwrap();
//! assert!(out.resources.iter().any(|r| r["resourceType"] == "Patient" && r["gender"] == "female"));
//! ```
#![forbid(unsafe_code)]
#![warn(missing_docs)]

mod adt;
mod ctx;
mod datatypes;
mod error;
mod ids;
mod oru;
mod patient;
mod referral;
mod rri;
mod source;
mod tables;
mod time;
mod v2;

pub use error::ConversionError;
pub use rri::{ReferralStatusUpdate, RriError, build_rri, rri_control_id};
pub use source::{Hd, MESSAGE_SOURCE_PREFIX, MessageSource};

/// The FHIR resources made from one message.
#[derive(Debug, Clone, PartialEq)]
pub struct Conversion {
    /// Resources to upsert, each with resourceType and a deterministic id. Order: referenced before referencing.
    pub resources: Vec<serde_json::Value>,
    /// Non-fatal notes (e.g. "OBX-2 value type XYZ not mapped; OBX 3 skipped") for operators; no PHI.
    pub warnings: Vec<String>,
}

/// Converts one message. The same message always yields the same resources and ids, so reprocessing and
/// update messages (A08, I14, corrected results) overwrite what an earlier conversion made.
pub fn convert(message: &hl7v2::Message<'_>) -> Result<Conversion, ConversionError> {
    let header = message.header();
    let mut ctx = ctx::Ctx::new(message);
    match (header.message_type.as_str(), header.trigger_event.as_str()) {
        ("ADT", "A01" | "A02" | "A03" | "A04" | "A08" | "A28" | "A31") => {
            adt::convert(&mut ctx, &header.trigger_event)?
        }
        ("ADT", "A40") => adt::merge(&mut ctx)?,
        ("ORU", "R01") => oru::convert(&mut ctx)?,
        ("REF", "I12" | "I14") => referral::convert(&mut ctx, &header.trigger_event)?,
        _ => {
            return Err(ConversionError::UnsupportedMessageType {
                message_type: ConversionError::code_for_log(&header.message_type),
                trigger_event: ConversionError::code_for_log(&header.trigger_event),
            });
        }
    }
    Ok(ctx.finish())
}
