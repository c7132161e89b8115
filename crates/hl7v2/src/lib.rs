//! Zero-copy HL7 v2 (ER7) parsing, path access, escaping, batches, message building and ACKs.
//!
//! ```
//! use hl7v2::Message;
//! let raw = b"MSH|^~\\&|APP|FAC|GW|GWF|20240101120000||ADT^A01^ADT_A01|MSG001|P|2.5.1\rPID|1||123^^^MRN~456^^^SSN||Doe^Jane\r";
//! let msg = Message::parse(raw).unwrap();
//! assert_eq!(msg.text("PID-5.2").unwrap(), "Jane");
//! assert_eq!(msg.text("PID-3[2].1").unwrap(), "456");
//! assert_eq!(msg.header().trigger_event, "A01");
//! ```
#![forbid(unsafe_code)]
#![warn(missing_docs)]

mod ack;
mod batch;
mod builder;
mod charset;
mod delim;
mod error;
mod escape;
mod header;
mod message;
mod path;

pub use ack::{
    Ack, AckCode, AckError, AckMode, Outcome, Severity, ack_mode, nak_for_unparseable, should_send_accept_ack,
    should_send_application_ack, version_tuple,
};
pub use batch::{Batch, BatchGroup};
pub use builder::{MessageBuilder, SegmentBuilder};
pub use charset::Charset;
pub use delim::{DelimiterError, Delimiters};
pub use error::{ErrorClass, ErrorCode, ErrorLocation, ParseError};
pub use escape::{escape, unescape};
pub use header::{AckCondition, Header, salvage_header};
pub use message::{Component, Field, Fields, Message, Repetition, SUPPORTED_VERSIONS, Segment, Subcomponent, Value};
pub use path::{Path, PathError};
