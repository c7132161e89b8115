//! Durable outbound HL7 v2 delivery over MLLP: application acknowledgments and referral status updates to EHRs.
//!
//! A message to send is queued with [`queue`] in the caller's store transaction, so it commits (or rolls back)
//! together with the state change that causes it. The destination is resolved **at queue time** from the message's
//! MSH-5/MSH-6 by the `[[outbound.destinations]]` rules (first match wins), and each destination has its own job
//! queue, `outbound-mllp:<name>`: the store's `claim` takes the oldest due job of one queue, which is what keeps
//! messages to one destination in order while another destination is down. A message no rule matches is not
//! queued ([`OutboundError::NoDestination`]); a message already queued keeps its destination if the rules change.
//!
//! The [`Worker`] runs one task per destination: claim one job, send it on a connection kept open between messages,
//! wait for the ACK, then complete (AA/CA) or fail the job (AE/AR/CE/CR, timeout, refused connection). After a
//! failure the destination waits for that job's retry time before claiming again, so nothing overtakes it; after
//! `max_attempts` the job is dead-lettered (the store's `requeue_dead` sends it again, out of order).
//!
//! Every queued message is also logged (`outbound_messages` table: destination, type, control id, attempts, ACK code,
//! state) in the transaction that queues it, and its row is updated in the transactions that complete or fail its
//! job, so `/admin/outbound` and `sdoh-gateway outbound list` show what was acknowledged, never more.
//!
//! Logs and metrics carry control ids, destination names, ACK codes and counts, never message content.

mod ack;
mod worker;

use serde::{Deserialize, Serialize};
use store::{NewJob, StoreTx};

use crate::config::OutboundConfig;

pub use ack::{AckSender, AppOutcome, application_ack, application_ack_as};
pub use worker::{Worker, spawn};

/// Prefix of the outbound job queues; the queue of a destination is `outbound-mllp:<name>`.
pub const QUEUE_PREFIX: &str = "outbound-mllp";

/// The job queue of a destination.
pub fn queue_name(destination: &str) -> String {
    format!("{QUEUE_PREFIX}:{destination}")
}

/// Errors of queueing and of starting the worker. Messages name control ids, destinations and files, never content.
#[derive(Debug, thiserror::Error)]
pub enum OutboundError {
    /// The bytes are not an HL7 v2 message with a control id (MSH-10).
    #[error("not a sendable HL7 v2 message: {0}")]
    InvalidMessage(String),
    /// No `[[outbound.destinations]]` rule matches the message's MSH-5/MSH-6.
    #[error("no outbound destination for receiving application {application:?}, facility {facility:?}")]
    NoDestination { application: String, facility: String },
    /// A destination's TLS files or server name could not be used.
    #[error("outbound destination {destination:?}: {source}")]
    Destination {
        destination: String,
        #[source]
        source: mllp::Error,
    },
    #[error(transparent)]
    Store(#[from] store::StoreError),
}

/// An HL7 v2 message ready to queue, with the header facts that route and identify it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OutboundMessage {
    bytes: Vec<u8>,
    control_id: String,
    message_type: String,
    receiving_application: String,
    receiving_facility: String,
}

impl OutboundMessage {
    /// Parses the message (ER7) far enough to route and identify it; it is sent byte for byte as given.
    pub fn parse(bytes: impl Into<Vec<u8>>) -> Result<OutboundMessage, OutboundError> {
        let bytes = bytes.into();
        let header = hl7v2::Message::parse(&bytes)
            .map_err(|e| OutboundError::InvalidMessage(format!("HL7 error {} at {}", e.code.code(), e.location)))?
            .header();
        if header.control_id.is_empty() {
            return Err(OutboundError::InvalidMessage("MSH-10 (message control id) is empty".into()));
        }
        let message_type = [&header.message_type, &header.trigger_event, &header.message_structure]
            .iter()
            .map(|s| s.as_str())
            .collect::<Vec<_>>()
            .join("^")
            .trim_end_matches('^')
            .to_owned();
        Ok(OutboundMessage {
            control_id: header.control_id,
            message_type,
            receiving_application: header.receiving_application,
            receiving_facility: header.receiving_facility,
            bytes,
        })
    }

    pub fn bytes(&self) -> &[u8] {
        &self.bytes
    }

    /// MSH-10.
    pub fn control_id(&self) -> &str {
        &self.control_id
    }

    /// MSH-9 as `TYPE^EVENT^STRUCTURE` (trailing empty components dropped).
    pub fn message_type(&self) -> &str {
        &self.message_type
    }

    /// MSH-5.1.
    pub fn receiving_application(&self) -> &str {
        &self.receiving_application
    }

    /// MSH-6.1.
    pub fn receiving_facility(&self) -> &str {
        &self.receiving_facility
    }
}

/// The routing rules of `[[outbound.destinations]]`, in order. Cheap to clone.
#[derive(Debug, Clone, Default)]
pub struct Routes {
    rules: std::sync::Arc<[Rule]>,
}

#[derive(Debug, Clone)]
struct Rule {
    name: String,
    application: String,
    facility: String,
    max_attempts: i32,
}

impl Routes {
    pub fn new(config: &OutboundConfig) -> Routes {
        let rules: Vec<Rule> = config
            .destinations
            .iter()
            .map(|d| Rule {
                name: d.name.clone(),
                application: d.receiving_application.trim().to_owned(),
                facility: d.receiving_facility.trim().to_owned(),
                max_attempts: d.max_attempts.max(1),
            })
            .collect();
        Routes { rules: rules.into() }
    }

    /// The destination for a receiving application (MSH-5.1) and facility (MSH-6.1): the first rule whose
    /// non-empty values equal them.
    pub fn resolve(&self, application: &str, facility: &str) -> Option<&str> {
        self.rule(application, facility).map(|r| r.name.as_str())
    }

    fn rule(&self, application: &str, facility: &str) -> Option<&Rule> {
        let matches = |want: &str, got: &str| want.is_empty() || want == got.trim();
        self.rules.iter().find(|r| matches(&r.application, application) && matches(&r.facility, facility))
    }
}

/// Where a queued message went.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Queued {
    pub destination: String,
    pub queue: String,
    /// The message's row in the outbound log.
    pub log_id: i64,
}

/// Queues `message` for delivery in the caller's transaction: it is sent only if (and after) that transaction
/// commits. The destination is chosen now from MSH-5/MSH-6 (see the module documentation).
pub async fn queue(tx: &mut StoreTx, routes: &Routes, message: OutboundMessage) -> Result<Queued, OutboundError> {
    let Some(rule) = routes.rule(&message.receiving_application, &message.receiving_facility) else {
        tracing::info!(control_id = %message.control_id, "no outbound destination matches; message not queued");
        return Err(OutboundError::NoDestination {
            application: message.receiving_application,
            facility: message.receiving_facility,
        });
    };
    let queue = queue_name(&rule.name);
    let payload = Payload::new(&rule.name, &message).to_json();
    let job_id = tx.enqueue_returning_id(&NewJob::new(queue.clone(), payload).max_attempts(rule.max_attempts)).await?;
    let log_id = tx.log_outbound_queued(job_id, &rule.name, &message.message_type, &message.control_id).await?;
    tracing::debug!(
        control_id = %message.control_id,
        message_type = %message.message_type,
        destination = %rule.name,
        "outbound message queued"
    );
    Ok(Queued { destination: rule.name.clone(), queue, log_id })
}

/// How the message bytes are kept in the JSON payload.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub(crate) enum Encoding {
    /// The message is valid UTF-8 and stored as is.
    Utf8,
    /// Any other bytes: each byte is stored as the character U+0000..U+00FF of the same value.
    Latin1,
}

/// The job payload (JSON) of one outbound message.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct Payload {
    pub destination: String,
    pub control_id: String,
    pub message_type: String,
    pub encoding: Encoding,
    pub message: String,
}

impl Payload {
    fn new(destination: &str, m: &OutboundMessage) -> Payload {
        let (encoding, message) = match std::str::from_utf8(&m.bytes) {
            Ok(s) => (Encoding::Utf8, s.to_owned()),
            Err(_) => (Encoding::Latin1, m.bytes.iter().map(|&b| char::from(b)).collect()),
        };
        Payload {
            destination: destination.to_owned(),
            control_id: m.control_id.clone(),
            message_type: m.message_type.clone(),
            encoding,
            message,
        }
    }

    fn to_json(&self) -> String {
        serde_json::to_string(self).unwrap_or_default()
    }

    pub(crate) fn from_json(s: &str) -> Option<Payload> {
        serde_json::from_str(s).ok()
    }

    /// The message bytes exactly as queued.
    pub(crate) fn bytes(&self) -> Option<Vec<u8>> {
        match self.encoding {
            Encoding::Utf8 => Some(self.message.as_bytes().to_vec()),
            Encoding::Latin1 => self.message.chars().map(|c| u8::try_from(u32::from(c)).ok()).collect(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::OutboundDestination;

    fn destination(name: &str, app: &str, facility: &str) -> OutboundDestination {
        OutboundDestination {
            name: name.into(),
            address: "127.0.0.1:2575".into(),
            receiving_application: app.into(),
            receiving_facility: facility.into(),
            connect_timeout_secs: 10,
            ack_timeout_secs: 30,
            max_attempts: 3,
            tls: None,
        }
    }

    #[test]
    fn routes_take_the_first_match_and_empty_matches_any() {
        let config = OutboundConfig {
            destinations: vec![
                destination("a", "EPIC", "MAIN"),
                destination("b", "EPIC", ""),
                destination("c", "", "NORTH"),
            ],
            ..OutboundConfig::default()
        };
        let routes = Routes::new(&config);
        assert_eq!(routes.resolve("EPIC", "MAIN"), Some("a"));
        assert_eq!(routes.resolve("EPIC", "SOUTH"), Some("b"));
        assert_eq!(routes.resolve("CERNER", "NORTH"), Some("c"));
        assert_eq!(routes.resolve("CERNER", "SOUTH"), None);
    }

    #[test]
    fn messages_are_identified_and_payloads_keep_every_byte() {
        let raw =
            b"MSH|^~\\&|GW|HUB|EPIC|MAIN|20240101||ACK^A01^ACK|C1|P|2.5.1|||||||8859/1\rMSA|AA|M1\rNTE|1||caf\xe9";
        let m = OutboundMessage::parse(raw.to_vec()).unwrap();
        assert_eq!(m.control_id(), "C1");
        assert_eq!(m.message_type(), "ACK^A01^ACK");
        assert_eq!((m.receiving_application(), m.receiving_facility()), ("EPIC", "MAIN"));
        let p = Payload::new("a", &m);
        assert_eq!(p.encoding, Encoding::Latin1);
        let back = Payload::from_json(&p.to_json()).unwrap();
        assert_eq!(back.bytes().unwrap(), raw.to_vec());
        let utf8 =
            OutboundMessage::parse(b"MSH|^~\\&|GW|HUB|EPIC|MAIN|2024||ACK^A01|C2|P|2.3\rMSA|AA|M1".to_vec()).unwrap();
        assert_eq!(utf8.message_type(), "ACK^A01");
        assert_eq!(Payload::new("a", &utf8).encoding, Encoding::Utf8);
        assert!(matches!(OutboundMessage::parse(b"garbage".to_vec()), Err(OutboundError::InvalidMessage(_))));
        assert!(matches!(
            OutboundMessage::parse(b"MSH|^~\\&|GW|HUB|EPIC|MAIN|2024||ACK^A01||P|2.3".to_vec()),
            Err(OutboundError::InvalidMessage(_))
        ));
    }
}
