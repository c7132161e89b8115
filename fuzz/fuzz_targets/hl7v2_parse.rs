//! Fuzz target: the HL7 v2 parser, path access, batches and NAK building must never panic on any bytes.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    match hl7v2::Message::parse(data) {
        Ok(message) => {
            // A well-formed message re-encodes byte-identically and every field is reachable.
            assert_eq!(message.encode(), data);
            for segment in message.segments() {
                for field in segment.fields() {
                    let _ = field.text();
                }
            }
            let header = message.header();
            let ack = hl7v2::Ack::accept(&header, "20260101000000", "FUZZ").build();
            assert!(hl7v2::Message::parse(&ack).is_ok(), "our own ACK parses");
        }
        Err(error) => {
            let nak = hl7v2::nak_for_unparseable(data, &error, "20260101000000", "FUZZ");
            assert!(hl7v2::Message::parse(&nak).is_ok(), "our own NAK parses");
        }
    }
    let _ = hl7v2::Batch::parse(data);
});
