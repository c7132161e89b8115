//! Property tests: byte-identical re-encoding, escape round trips and no panics on any input.

use hl7v2::{Batch, Delimiters, Message, escape, salvage_header, unescape};
use proptest::prelude::*;

/// Text without CR/LF or delimiters, used as raw ER7 atoms.
fn atom() -> impl Strategy<Value = String> {
    proptest::string::string_regex("[A-Za-z0-9 .,:;()\"'_/=+-]{0,8}").expect("regex")
}

fn field() -> impl Strategy<Value = String> {
    // repetitions of components of subcomponents
    prop::collection::vec(prop::collection::vec(prop::collection::vec(atom(), 1..3), 1..3), 1..3).prop_map(|reps| {
        reps.iter().map(|c| c.iter().map(|s| s.join("&")).collect::<Vec<_>>().join("^")).collect::<Vec<_>>().join("~")
    })
}

fn segment() -> impl Strategy<Value = String> {
    (
        proptest::string::string_regex("(PID|OBX|NTE|PV1|Z[A-Z0-9]{2})").expect("regex"),
        prop::collection::vec(field(), 0..6),
    )
        .prop_map(|(id, fields)| {
            let mut s = id;
            for f in fields {
                s.push('|');
                s.push_str(&f);
            }
            s
        })
}

fn message() -> impl Strategy<Value = (Vec<u8>, usize)> {
    (prop::collection::vec(segment(), 0..8), prop::sample::select(vec!["\r", "\n", "\r\n"]), any::<bool>()).prop_map(
        |(segs, term, trailing)| {
            let mut all = vec!["MSH|^~\\&|APP|FAC|RCV|RFAC|20240101||ORU^R01^ORU_R01|C1|P|2.5.1".to_owned()];
            all.extend(segs);
            let n = all.len();
            let mut s = all.join(term);
            if trailing {
                s.push_str(term);
            }
            (s.into_bytes(), n)
        },
    )
}

proptest! {
    #[test]
    fn encode_parse_is_identity((bytes, n) in message()) {
        let m = Message::parse(&bytes).expect("generated message parses");
        prop_assert_eq!(m.encode(), bytes.clone());
        prop_assert_eq!(m.segment_count(), n);
        // Reassembling from the typed view gives back each segment exactly.
        for seg in m.segments().skip(1) {
            let mut rebuilt = seg.id().as_bytes().to_vec();
            for f in seg.fields() {
                rebuilt.push(b'|');
                let reps: Vec<Vec<u8>> = f.repetitions().map(|r| {
                    let comps: Vec<Vec<u8>> = r.components().map(|c| {
                        c.subcomponents().map(|s| s.raw().to_vec()).collect::<Vec<_>>().join(&b'&')
                    }).collect();
                    comps.join(&b'^')
                }).collect();
                rebuilt.extend(reps.join(&b'~'));
            }
            prop_assert_eq!(rebuilt, seg.raw().to_vec());
        }
    }

    #[test]
    fn escape_unescape_round_trip(text in "\\PC{0,40}", custom in any::<bool>()) {
        let d = if custom { Delimiters::new(b'#', b"$%*@!").expect("valid") } else { Delimiters::default() };
        let e = escape(&text, &d);
        prop_assert!(!e.bytes().any(|b| b == d.field || b == d.component || b == b'\r' || b == b'\n'));
        let back = unescape(e.as_bytes(), &d);
        prop_assert_eq!(back.as_ref(), text.as_bytes());
    }

    #[test]
    fn built_text_reads_back(value in "\\PC{0,30}") {
        let mut b = hl7v2::MessageBuilder::new(Delimiters::default());
        b.segment("MSH").components(9, &["ADT", "A01"]).field(10, "X").field(11, "P").field(12, "2.5.1");
        b.segment("NTE").field(3, &value);
        let bytes = b.build();
        let m = Message::parse(&bytes).expect("built message parses");
        let got = m.text("NTE-3").unwrap_or_default();
        prop_assert_eq!(got.as_ref(), value.as_str());
    }

    #[test]
    fn never_panics_on_arbitrary_bytes(bytes in prop::collection::vec(any::<u8>(), 0..300)) {
        let _ = Message::parse(&bytes);
        let _ = Batch::parse(&bytes);
        let _ = salvage_header(&bytes);
        let _ = unescape(&bytes, &Delimiters::default());
    }

    #[test]
    fn never_panics_on_mutated_messages((bytes, _) in message(), pos in any::<prop::sample::Index>(), b in any::<u8>()) {
        let mut bytes = bytes;
        let i = pos.index(bytes.len());
        if let Some(x) = bytes.get_mut(i) { *x = b; }
        if let Ok(m) = Message::parse(&bytes) {
            for seg in m.segments() {
                for f in seg.fields() {
                    let _ = f.text();
                    let _ = f.component(2).map(|c| c.subcomponent(2));
                }
            }
            let _ = m.header();
            let _ = m.get("PID-3[2].1.1");
        } else if let Err(e) = Message::parse(&bytes) {
            let h = salvage_header(&bytes);
            let ack = hl7v2::Ack::for_error(&h, &e, "20240101", "A").build();
            prop_assert!(Message::parse(&ack).is_ok(), "ACK must parse: {:?}", String::from_utf8_lossy(&ack));
        }
    }
}
