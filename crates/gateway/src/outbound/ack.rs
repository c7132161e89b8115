//! Application acknowledgments (enhanced mode, MSH-16): built with `hl7v2::Ack`, sent later through the outbound queue.

use std::sync::OnceLock;
use std::sync::atomic::{AtomicU64, Ordering};

use hl7v2::{Ack, AckCode, AckCondition, AckError, ErrorCode, ErrorLocation, Message, Outcome, Severity};

/// What the application made of a message it had already accepted (committed) in enhanced mode.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AppOutcome {
    /// Processed: MSA-1 `AA`.
    Accepted,
    /// Understood but in error: MSA-1 `AE`, with an ERR segment.
    Error { code: ErrorCode, location: Option<ErrorLocation>, text: String },
    /// Refused: MSA-1 `AR`, with an ERR segment.
    Rejected { code: ErrorCode, location: Option<ErrorLocation>, text: String },
}

impl AppOutcome {
    fn outcome(&self) -> Outcome {
        match self {
            AppOutcome::Accepted => Outcome::Accepted,
            AppOutcome::Error { .. } => Outcome::Error,
            AppOutcome::Rejected { .. } => Outcome::Rejected,
        }
    }
}

/// Our own application and facility for MSH-3/MSH-4, when they should differ from how the sender addressed us.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AckSender {
    pub application: String,
    pub facility: String,
}

/// The application acknowledgment for `original`, or `None` when its MSH-16 does not ask for one: `AL` always,
/// `ER` only for an error or rejection, `SU` only on success; `NE`, an empty MSH-16, and original-mode messages
/// (MSH-15 and MSH-16 empty, whose one ACK is already the application ACK) get none.
///
/// The ACK is `ACK^<trigger>^ACK` (`ACK^<trigger>` before v2.3.1) in the original's version, delimiters and
/// character set, MSA-1 `AA`/`AE`/`AR`, MSA-2 = the original MSH-10, MSH-5/MSH-6 = the original MSH-3/MSH-4, and
/// MSH-3/MSH-4 = the original MSH-5/MSH-6 (how the sender addresses us, as in our accept ACK). Errors get an ERR
/// segment laid out for the version (ERR-2/3/4/8 from v2.5, ERR-1 and MSA-3 before).
pub fn application_ack(original: &Message<'_>, outcome: AppOutcome) -> Option<Vec<u8>> {
    application_ack_as(original, &outcome, None)
}

/// [`application_ack`] with MSH-3/MSH-4 set to `sender` instead of the original's MSH-5/MSH-6.
pub fn application_ack_as(original: &Message<'_>, outcome: &AppOutcome, sender: Option<&AckSender>) -> Option<Vec<u8>> {
    let mut header = original.header();
    match header.application_ack_type {
        None | Some(AckCondition::Never) => return None,
        Some(_) => {}
    }
    if !hl7v2::should_send_application_ack(&header, outcome.outcome()) {
        return None;
    }
    if let Some(sender) = sender {
        let d = header.delimiters;
        header.receiving_application_raw = hl7v2::escape(&sender.application, &d).into_owned().into_bytes();
        header.receiving_facility_raw = hl7v2::escape(&sender.facility, &d).into_owned().into_bytes();
    }
    let (code, error) = match outcome {
        AppOutcome::Accepted => (AckCode::AA, None),
        AppOutcome::Error { code, location, text } => (AckCode::AE, Some((code, location, text))),
        AppOutcome::Rejected { code, location, text } => (AckCode::AR, Some((code, location, text))),
    };
    let mut ack = Ack::new(&header, code, &hl7_now(), &next_control_id());
    if let Some((code, location, text)) = error {
        ack = ack.text(text).error(AckError {
            code: *code,
            location: location.clone(),
            severity: Severity::Error,
            message: text.clone(),
        });
    }
    Some(ack.build())
}

/// HL7 DTM for MSH-7.
fn hl7_now() -> String {
    chrono::Utc::now().format("%Y%m%d%H%M%S%.3f+0000").to_string()
}

/// Unique MSH-10 values for our application ACKs: `O`, the process start time in base 36, and a counter (the
/// ingest listener's accept ACKs use a `G` prefix, so the two never collide).
fn next_control_id() -> String {
    static PREFIX: OnceLock<String> = OnceLock::new();
    static NEXT: AtomicU64 = AtomicU64::new(1);
    let prefix = PREFIX.get_or_init(|| format!("O{}", to_base36(chrono::Utc::now().timestamp_millis().unsigned_abs())));
    format!("{prefix}-{}", to_base36(NEXT.fetch_add(1, Ordering::Relaxed)))
}

fn to_base36(mut n: u64) -> String {
    const DIGITS: &[u8; 36] = b"0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZ";
    let mut out = Vec::new();
    loop {
        out.push(char::from(DIGITS[(n % 36) as usize]));
        n /= 36;
        if n == 0 {
            break;
        }
    }
    out.iter().rev().collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn msg(version: &str, msh15: &str, msh16: &str) -> Vec<u8> {
        format!(
            "MSH|^~\\&|EHR^1.2.3^ISO|CLINIC|SDOH-GW|HUB|20240101120000||REF^I12^REF_I12|M-{version}|P|{version}|||{msh15}|{msh16}\rPID|1||123"
        )
        .into_bytes()
    }

    fn error() -> AppOutcome {
        AppOutcome::Error {
            code: ErrorCode::RequiredFieldMissing,
            location: Some(ErrorLocation::field("PID", 1, 3)),
            text: "patient identifier missing".into(),
        }
    }

    fn rejected() -> AppOutcome {
        AppOutcome::Rejected { code: ErrorCode::UnknownKeyIdentifier, location: None, text: "unknown referral".into() }
    }

    fn wanted(msh16: &str, outcome: AppOutcome) -> bool {
        let raw = msg("2.5.1", "AL", msh16);
        application_ack(&Message::parse(&raw).unwrap(), outcome).is_some()
    }

    #[test]
    fn msh16_decides_whether_an_application_ack_is_sent() {
        for outcome in [AppOutcome::Accepted, error(), rejected()] {
            assert!(wanted("AL", outcome.clone()), "AL: {outcome:?}");
            assert!(!wanted("NE", outcome.clone()), "NE: {outcome:?}");
            assert!(!wanted("", outcome.clone()), "empty MSH-16: {outcome:?}");
        }
        assert!(!wanted("ER", AppOutcome::Accepted));
        assert!(wanted("ER", error()));
        assert!(wanted("ER", rejected()));
        assert!(wanted("SU", AppOutcome::Accepted));
        assert!(!wanted("SU", error()));
        assert!(!wanted("SU", rejected()));
        // Original mode (MSH-15 and MSH-16 empty): the accept ACK was the application ACK.
        let raw = msg("2.5.1", "", "");
        assert!(application_ack(&Message::parse(&raw).unwrap(), AppOutcome::Accepted).is_none());
    }

    #[test]
    fn accept_ack_swaps_sender_and_receiver_and_echoes_the_control_id() {
        let raw = msg("2.5.1", "AL", "AL");
        let ack = application_ack(&Message::parse(&raw).unwrap(), AppOutcome::Accepted).unwrap();
        let a = Message::parse(&ack).unwrap();
        assert_eq!(a.get("MSH-3").unwrap().raw(), b"SDOH-GW");
        assert_eq!(a.get("MSH-4").unwrap().raw(), b"HUB");
        assert_eq!(a.get("MSH-5").unwrap().raw(), b"EHR^1.2.3^ISO");
        assert_eq!(a.get("MSH-6").unwrap().raw(), b"CLINIC");
        assert_eq!(a.get("MSH-9").unwrap().raw(), b"ACK^I12^ACK");
        assert!(a.text("MSH-10").unwrap().starts_with('O'));
        assert_eq!(a.text("MSH-12").unwrap(), "2.5.1");
        assert_eq!(a.text("MSA-1").unwrap(), "AA");
        assert_eq!(a.text("MSA-2").unwrap(), "M-2.5.1");
        assert!(a.segment("ERR", 1).is_none());
        assert!(a.get("MSH-16").is_none(), "an ACK asks for no acknowledgment");
        let again = application_ack(&Message::parse(&raw).unwrap(), AppOutcome::Accepted).unwrap();
        let b = Message::parse(&again).unwrap();
        assert_ne!(a.text("MSH-10"), b.text("MSH-10"), "every ACK has its own control id");
    }

    #[test]
    fn error_ack_v25_uses_err_2_3_4_8() {
        let raw = msg("2.5.1", "AL", "ER");
        let ack = application_ack(&Message::parse(&raw).unwrap(), error()).unwrap();
        let a = Message::parse(&ack).unwrap();
        assert_eq!(a.text("MSA-1").unwrap(), "AE");
        assert_eq!(a.text("MSA-2").unwrap(), "M-2.5.1");
        assert!(a.get("MSA-3").is_none(), "MSA-3 is withdrawn in v2.5");
        assert_eq!(a.get("ERR-2").unwrap().raw(), b"PID^1^3^1");
        assert_eq!(a.text("ERR-3.1").unwrap(), "101");
        assert_eq!(a.text("ERR-3.3").unwrap(), "HL70357");
        assert_eq!(a.text("ERR-4").unwrap(), "E");
        assert_eq!(a.text("ERR-8").unwrap(), "patient identifier missing");
        assert!(a.get("ERR-1").is_none_or(|v| v.is_empty()));
    }

    #[test]
    fn reject_ack_v23_uses_err_1_and_msa_3() {
        let raw = msg("2.3", "AL", "AL");
        let ack = application_ack(&Message::parse(&raw).unwrap(), rejected()).unwrap();
        let a = Message::parse(&ack).unwrap();
        assert_eq!(a.get("MSH-9").unwrap().raw(), b"ACK^I12", "no MSH-9.3 before v2.3.1");
        assert_eq!(a.text("MSH-12").unwrap(), "2.3");
        assert_eq!(a.text("MSA-1").unwrap(), "AR");
        assert_eq!(a.text("MSA-2").unwrap(), "M-2.3");
        assert_eq!(a.text("MSA-3").unwrap(), "unknown referral");
        assert_eq!(a.text("ERR-1.4.1").unwrap(), "204");
        assert_eq!(a.text("ERR-1.4.3").unwrap(), "HL70357");
        assert!(a.get("ERR-3").is_none());
    }

    #[test]
    fn our_identity_can_replace_the_addressed_one() {
        let raw = msg("2.5.1", "AL", "AL");
        let sender = AckSender { application: "SDOH-GATEWAY".into(), facility: "SDOH^HUB".into() };
        let ack = application_ack_as(&Message::parse(&raw).unwrap(), &AppOutcome::Accepted, Some(&sender)).unwrap();
        let a = Message::parse(&ack).unwrap();
        assert_eq!(a.text("MSH-3").unwrap(), "SDOH-GATEWAY");
        assert_eq!(a.get("MSH-4").unwrap().raw(), b"SDOH\\S\\HUB", "escaped, not split into components");
        assert_eq!(a.get("MSH-5").unwrap().raw(), b"EHR^1.2.3^ISO");
    }
}
