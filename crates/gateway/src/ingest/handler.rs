//! Turns one received MLLP frame into its acknowledgment: parse, check policy, journal (group commit), ACK.
//!
//! An AA/CA goes out only after the journal transaction holding the message has committed. Anything that cannot
//! be committed is answered AE/CE (the sender resends); anything refused is answered AR/CR with an ERR segment that
//! says why and where. Logs name control ids and counts, never message content.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Instant;

use hl7v2::{Ack, AckCode, AckError, ErrorCode, ErrorLocation, Header, Message, Outcome, Severity};
use store::{JournalOutcome, NewMessage};

use super::commit::{CommitError, GroupCommitter};
use super::policy::{AcceptPolicy, Refusal};

/// Everything a connection needs to answer frames; shared by all connections.
pub struct IngestService {
    committer: GroupCommitter,
    policy: AcceptPolicy,
    ack_ids: AckIds,
}

/// Unique MSH-10 values for our ACKs: a per-process prefix (start time, base 36) plus a counter.
struct AckIds {
    prefix: String,
    next: AtomicU64,
}

impl AckIds {
    fn new() -> Self {
        let started = chrono::Utc::now().timestamp_millis().unsigned_abs();
        AckIds { prefix: format!("G{}", to_base36(started)), next: AtomicU64::new(1) }
    }

    fn next(&self) -> String {
        format!("{}-{}", self.prefix, to_base36(self.next.fetch_add(1, Ordering::Relaxed)))
    }
}

fn to_base36(mut n: u64) -> String {
    const DIGITS: &[u8; 36] = b"0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZ";
    let mut out = Vec::new();
    loop {
        out.push(DIGITS[(n % 36) as usize]);
        n /= 36;
        if n == 0 {
            break;
        }
    }
    out.reverse();
    String::from_utf8(out).unwrap_or_default()
}

/// HL7 DTM for MSH-7 of our ACKs.
fn hl7_now() -> String {
    chrono::Utc::now().format("%Y%m%d%H%M%S%.3f+0000").to_string()
}

impl IngestService {
    pub fn new(committer: GroupCommitter, policy: AcceptPolicy) -> Self {
        IngestService { committer, policy, ack_ids: AckIds::new() }
    }

    /// The reply to one frame, or `None` when the sender asked for no acknowledgment (enhanced mode, MSH-15).
    pub async fn handle_frame(&self, frame: &[u8]) -> Option<Vec<u8>> {
        if frame.is_empty() {
            // An empty frame carries no message: some engines send them as keepalives. Nothing to answer.
            return None;
        }
        let started = Instant::now();
        let (reply, code) =
            if is_batch(frame) { self.handle_batch(frame).await } else { self.handle_message(frame).await };
        metrics::histogram!("hl7_ack_latency_seconds", "code" => code.as_str()).record(started.elapsed().as_secs_f64());
        reply
    }

    async fn handle_message(&self, raw: &[u8]) -> (Option<Vec<u8>>, AckCode) {
        metrics::counter!("hl7_messages_received_total").increment(1);
        let message = match Message::parse(raw) {
            Ok(m) => m,
            Err(e) => {
                let header = hl7v2::salvage_header(raw);
                metrics::counter!("hl7_messages_rejected_total", "reason" => reason_for(e.code)).increment(1);
                tracing::info!(control_id = %header.control_id, code = e.code.code(), location = %e.location, "message refused");
                let ack = Ack::for_error(&header, &e, &hl7_now(), &self.ack_ids.next());
                return (self.reply_if_wanted(&header, Outcome::from(&e), &ack), ack.code());
            }
        };
        let header = message.header();
        if let Err(refusal) = self.policy.check(&header.message_type, &header.trigger_event, &header.processing_id) {
            return self.refuse(&header, refusal);
        }
        let outcome = self.committer.submit(journal_record(&header, raw)).await;
        self.acknowledge(&header, outcome)
    }

    fn refuse(&self, header: &Header, refusal: Refusal) -> (Option<Vec<u8>>, AckCode) {
        let (code, location, text) = match refusal {
            Refusal::UnsupportedMessageType => (
                ErrorCode::UnsupportedMessageType,
                ErrorLocation::field("MSH", 1, 9).with_component(1),
                format!("message type {} is not accepted here", header.message_type),
            ),
            Refusal::UnsupportedEvent => (
                ErrorCode::UnsupportedEventCode,
                ErrorLocation::field("MSH", 1, 9).with_component(2),
                format!("event {}^{} is not accepted here", header.message_type, header.trigger_event),
            ),
            Refusal::UnsupportedProcessingId => (
                ErrorCode::UnsupportedProcessingId,
                ErrorLocation::field("MSH", 1, 11),
                format!("processing id {} is not accepted here", header.processing_id),
            ),
        };
        metrics::counter!("hl7_messages_rejected_total", "reason" => refusal.reason()).increment(1);
        tracing::info!(control_id = %header.control_id, code = code.code(), "message refused by policy");
        let ack_code = AckCode::for_outcome(hl7v2::ack_mode(header), Outcome::Rejected);
        let ack = Ack::new(header, ack_code, &hl7_now(), &self.ack_ids.next()).text(&text).error(AckError {
            code,
            location: Some(location),
            severity: Severity::Error,
            message: text.clone(),
        });
        (self.reply_if_wanted(header, Outcome::Rejected, &ack), ack_code)
    }

    fn acknowledge(&self, header: &Header, outcome: Result<JournalOutcome, CommitError>) -> (Option<Vec<u8>>, AckCode) {
        match outcome {
            Ok(stored) => {
                match stored {
                    JournalOutcome::Stored { id } => {
                        metrics::counter!("hl7_messages_accepted_total", "type" => header.message_type.clone())
                            .increment(1);
                        tracing::debug!(control_id = %header.control_id, journal_id = id, "message journaled");
                    }
                    JournalOutcome::Duplicate => {
                        metrics::counter!("hl7_messages_duplicate_total").increment(1);
                        tracing::info!(control_id = %header.control_id, "resent message acknowledged, not stored again");
                    }
                }
                let ack = Ack::accept(header, &hl7_now(), &self.ack_ids.next());
                (self.reply_if_wanted(header, Outcome::Accepted, &ack), ack.code())
            }
            Err(e) => {
                metrics::counter!("hl7_messages_rejected_total", "reason" => "not_stored").increment(1);
                tracing::warn!(control_id = %header.control_id, error = %e, "message not stored; sender must resend");
                let text = format!("message not stored ({e}); please resend");
                let code = AckCode::for_outcome(hl7v2::ack_mode(header), Outcome::Error);
                let ack = Ack::new(header, code, &hl7_now(), &self.ack_ids.next()).text(&text).error(AckError {
                    code: ErrorCode::ApplicationInternalError,
                    location: None,
                    severity: Severity::Error,
                    message: text.clone(),
                });
                (self.reply_if_wanted(header, Outcome::Error, &ack), code)
            }
        }
    }

    fn reply_if_wanted(&self, header: &Header, outcome: Outcome, ack: &Ack<'_>) -> Option<Vec<u8>> {
        hl7v2::should_send_accept_ack(header, outcome).then(|| ack.build())
    }

    /// A batch (FHS/BHS ... BTS/FTS): each message is journaled on its own and the reply is a batch of ACKs.
    async fn handle_batch(&self, raw: &[u8]) -> (Option<Vec<u8>>, AckCode) {
        let batch = match hl7v2::Batch::parse(raw) {
            Ok(b) => b,
            Err(e) => {
                metrics::counter!("hl7_messages_rejected_total", "reason" => reason_for(e.code)).increment(1);
                tracing::info!(code = e.code.code(), location = %e.location, "batch refused");
                let ack = hl7v2::nak_for_unparseable(raw, &e, &hl7_now(), &self.ack_ids.next());
                let code = if e.is_reject() { AckCode::AR } else { AckCode::AE };
                return (Some(ack), code);
            }
        };
        let mut acks: Vec<Vec<u8>> = Vec::new();
        let mut worst = AckCode::AA;
        let mut pending = Vec::new();
        for group in batch.groups() {
            for message in &group.messages {
                match message {
                    Ok(m) => pending.push(m.as_bytes()),
                    Err(e) => {
                        metrics::counter!("hl7_messages_received_total").increment(1);
                        metrics::counter!("hl7_messages_rejected_total", "reason" => reason_for(e.code)).increment(1);
                        let header = Header { salvaged: true, ..hl7v2::salvage_header(b"") };
                        let ack = Ack::for_error(&header, e, &hl7_now(), &self.ack_ids.next());
                        worst = worse(worst, ack.code());
                        acks.push(ack.build());
                    }
                }
            }
        }
        // All of the batch's messages are submitted at once so they share group commits.
        let results = futures::future::join_all(pending.iter().map(|raw| self.handle_message(raw))).await;
        for (reply, code) in results {
            worst = worse(worst, code);
            if let Some(reply) = reply {
                acks.push(reply);
            }
        }
        (Some(batch_reply(&batch, &acks, &self.ack_ids.next())), worst)
    }
}

fn worse(a: AckCode, b: AckCode) -> AckCode {
    let rank = |c: AckCode| match c {
        AckCode::AA | AckCode::CA => 0,
        AckCode::AE | AckCode::CE => 1,
        AckCode::AR | AckCode::CR => 2,
    };
    if rank(b) > rank(a) { b } else { a }
}

fn is_batch(frame: &[u8]) -> bool {
    let start = frame.iter().position(|b| !b.is_ascii_whitespace()).unwrap_or(0);
    matches!(frame.get(start..start + 3), Some(b"FHS" | b"BHS"))
}

/// BHS, the ACK messages, BTS with their count; sender and receiver of the batch header swapped.
fn batch_reply(batch: &hl7v2::Batch<'_>, acks: &[Vec<u8>], control_id: &str) -> Vec<u8> {
    let field = |n: usize| -> String {
        batch
            .groups()
            .first()
            .and_then(|g| g.header.field(n))
            .map(|f| String::from_utf8_lossy(f.raw()).into_owned())
            .unwrap_or_default()
    };
    let mut out = format!(
        "BHS|^~\\&|{}|{}|{}|{}|{}||||{}|{}\r",
        field(5),
        field(6),
        field(3),
        field(4),
        hl7_now(),
        control_id,
        field(11)
    )
    .into_bytes();
    for ack in acks {
        out.extend_from_slice(ack);
        if !ack.ends_with(b"\r") {
            out.push(b'\r');
        }
    }
    out.extend_from_slice(format!("BTS|{}\r", acks.len()).as_bytes());
    out
}

fn journal_record(header: &Header, raw: &[u8]) -> NewMessage {
    NewMessage {
        sending_application: header.sending_application.clone(),
        sending_facility: header.sending_facility.clone(),
        receiving_application: header.receiving_application.clone(),
        receiving_facility: header.receiving_facility.clone(),
        message_type: format!("{}^{}", header.message_type, header.trigger_event),
        control_id: header.control_id.clone(),
        version: header.version.clone(),
        raw: raw.to_vec(),
    }
}

/// A metric label per HL7 error code (bounded set).
fn reason_for(code: ErrorCode) -> &'static str {
    match code {
        ErrorCode::SegmentSequence => "segment_sequence",
        ErrorCode::RequiredFieldMissing => "required_field_missing",
        ErrorCode::DataType => "data_type",
        ErrorCode::TableValueNotFound => "table_value_not_found",
        ErrorCode::ValueTooLong => "value_too_long",
        ErrorCode::UnsupportedMessageType => "unsupported_message_type",
        ErrorCode::UnsupportedEventCode => "unsupported_event",
        ErrorCode::UnsupportedProcessingId => "unsupported_processing_id",
        ErrorCode::UnsupportedVersionId => "unsupported_version",
        _ => "other",
    }
}

impl mllp::Handler for IngestService {
    async fn handle(&self, _conn: &mllp::ConnectionInfo, frame: bytes::Bytes) -> mllp::Reply {
        match self.handle_frame(&frame).await {
            Some(reply) => mllp::Reply::Send(reply.into()),
            None => mllp::Reply::Nothing,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn base36_and_ack_ids_are_unique() {
        assert_eq!(to_base36(0), "0");
        assert_eq!(to_base36(35), "Z");
        assert_eq!(to_base36(36), "10");
        let ids = AckIds::new();
        let (a, b) = (ids.next(), ids.next());
        assert_ne!(a, b);
        assert!(a.len() <= 20, "fits MSH-10 (ST 20 in v2.5): {a}");
    }

    #[test]
    fn batches_are_recognised_by_their_first_segment() {
        assert!(is_batch(b"FHS|^~\\&|\rBHS|^~\\&|"));
        assert!(is_batch(b"BHS|^~\\&|"));
        assert!(!is_batch(b"MSH|^~\\&|"));
        assert!(!is_batch(b""));
    }
}
