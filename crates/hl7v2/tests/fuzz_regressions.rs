//! Inputs the fuzzers found: each must parse or be refused, and every NAK or ACK we build must parse again.

const CASES: &[&[u8]] = &[
    // MSH-2 with a truncation character, Latin-1 bytes and a second MSH-like run: the NAK must still parse.
    b"MSH|^~\\&.|\x95\x95\x95\x95\x95\x95\x85\x95\x95\x95\x95\xff\xff\xff\xff\xff\xff\xff\xff\xff\xff\xff\xff\xff\xff\xff\xff\xff\xff\xff\xff\xff\xff\xff\xff\xff\xff\xff\xff\xff\xff\xff\xff\xff\xff\xff\xff\xff\xff\xff\xff\xff\xff\xff\xff\xff\xff\xff\xff\xff\xff\xff\xff\xff\xff\xff\xff\xff\xff\x95\x95\x95H|^~\\&|\x95\x95\x95C_E\xe1R\r",
    // `.` as the component separator, NULs and Latin-1 bytes in MSH-9: the NAK must still parse.
    b"MSH|.~\x5c&|CLINIC_EHR^2.16.840.1.\xad13883.3.9999^ISO|NORTH_CLINSCI|DOH_GW|GW_FAC|20240315103000||ADT^A\x00\x00\x00\x00\x00\x00\x00\xff\xff\xff\xff\xff\xff\xff\x1d\x0001^ADT_A01|BAD0023|P|2.52.              499^ISO|NORT\xc8_|1|ST|x^y^LN||caf\xe9\x0d",
    // NULs in MSH-3 under unusual encoding characters: the NAK copies the sender fields without them.
    b"MSH|^~-\\&|CLINIC_EHR^2.16.84\x00\x00\x00\x00\xb4883.3.9999^ISO|NORTH_CLINIC|SDOH_GW|GW_FAC|20240315103000||ADT^A08^ADT_A01|ESC0003|P|2.5.1||||||UNICODE UTF-8||\\X4A\\ones^Ren\\XC3A9\\e\r",
    // A NUL in MSH-9: the refusal's text must not carry it raw.
    b"MSH|^~\\&|APP|FAC|RCV|RFAC|20240101||\0RU^R01|C1|P|2.5.1\r",
];

#[test]
fn every_answer_we_build_parses() {
    for (i, input) in CASES.iter().enumerate() {
        match hl7v2::Message::parse(input) {
            Ok(message) => {
                let ack = hl7v2::Ack::accept(&message.header(), "20260101000000", "X").build();
                assert!(hl7v2::Message::parse(&ack).is_ok(), "case {i}: ACK {:?}", String::from_utf8_lossy(&ack));
            }
            Err(error) => {
                let nak = hl7v2::nak_for_unparseable(input, &error, "20260101000000", "X");
                let parsed = hl7v2::Message::parse(&nak);
                assert!(parsed.is_ok(), "case {i}: NAK {:?} fails: {:?}", String::from_utf8_lossy(&nak), parsed.err());
            }
        }
    }
}
