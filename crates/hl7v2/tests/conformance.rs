//! Data-driven conformance tests over `conformance/hl7v2/{wellformed,malformed}`.

use std::fs;
use std::path::PathBuf;

use hl7v2::{Ack, Batch, Message, ParseError, salvage_header, version_tuple};
use serde_json::Value as Json;

fn dir(kind: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../conformance/hl7v2").join(kind)
}

fn cases(kind: &str, ext: &str) -> Vec<(String, Vec<u8>, Json)> {
    let mut out = Vec::new();
    for entry in fs::read_dir(dir(kind)).expect("conformance folder") {
        let path = entry.expect("dir entry").path();
        let name = path.file_name().and_then(|n| n.to_str()).unwrap_or_default().to_owned();
        let Some(stem) = name.strip_suffix(ext) else { continue };
        let bytes = fs::read(&path).expect("case bytes");
        let exp_path = path.with_file_name(format!("{stem}.expected.json"));
        let exp: Json = serde_json::from_str(&fs::read_to_string(&exp_path).expect("expected.json"))
            .unwrap_or_else(|e| panic!("{}: {e}", exp_path.display()));
        out.push((stem.to_owned(), bytes, exp));
    }
    out.sort_by(|a, b| a.0.cmp(&b.0));
    out
}

fn s<'j>(j: &'j Json, key: &str) -> &'j str {
    j.get(key).and_then(Json::as_str).unwrap_or_default()
}

fn check_message(name: &str, m: &Message<'_>, exp: &Json, check_segments: bool) -> Vec<String> {
    let mut fails = Vec::new();
    let h = m.header();
    for (key, got) in [
        ("control_id", &h.control_id),
        ("message_type", &h.message_type),
        ("trigger", &h.trigger_event),
        ("version", &h.version),
    ] {
        if s(exp, key) != got {
            fails.push(format!("{name}: {key} expected {:?} got {got:?}", s(exp, key)));
        }
    }
    if check_segments {
        let ids: Vec<&str> = m.segments().map(|s| s.id()).collect();
        let want: Vec<&str> = exp["segments"].as_array().expect("segments").iter().filter_map(Json::as_str).collect();
        if ids != want {
            fails.push(format!("{name}: segments {ids:?} != {want:?}"));
        }
    }
    for (path, want) in exp["values"].as_object().expect("values") {
        let got = m.text(path).unwrap_or_default();
        if Some(got.as_ref()) != want.as_str() {
            fails.push(format!("{name}: {path} expected {want} got {got:?}"));
        }
    }
    fails
}

#[test]
fn wellformed_corpus() {
    let cases = cases("wellformed", ".hl7");
    assert!(cases.len() >= 40, "only {} wellformed cases", cases.len());
    let mut fails = Vec::new();
    for (name, bytes, exp) in &cases {
        if let Some(n) = exp.get("messages_in_batch").and_then(Json::as_u64) {
            let b = match Batch::parse(bytes) {
                Ok(b) => b,
                Err(e) => {
                    fails.push(format!("{name}: batch failed: {e}"));
                    continue;
                }
            };
            if b.message_count() as u64 != n || b.messages().count() as u64 != n {
                fails.push(format!("{name}: {} messages, want {n}", b.message_count()));
            }
            let mut ids: Vec<&str> = b.file_header().map(|s| s.id()).into_iter().collect();
            for g in b.groups() {
                ids.push(g.header.id());
                for m in g.messages.iter().flatten() {
                    ids.extend(m.segments().map(|s| s.id()));
                }
                ids.extend(g.trailer.map(|s| s.id()));
            }
            ids.extend(b.file_trailer().map(|s| s.id()));
            let want: Vec<&str> =
                exp["segments"].as_array().expect("segments").iter().filter_map(Json::as_str).collect();
            if ids != want {
                fails.push(format!("{name}: batch segments {ids:?} != {want:?}"));
            }
            match b.messages().next() {
                Some(m) => fails.extend(check_message(name, m, exp, false)),
                None => fails.push(format!("{name}: no message")),
            }
            continue;
        }
        match Message::parse(bytes) {
            Ok(m) => {
                fails.extend(check_message(name, &m, exp, true));
                if m.encode() != *bytes {
                    fails.push(format!("{name}: re-encoding differs"));
                }
                // Touch every value so decoding is exercised on the whole corpus.
                for seg in m.segments() {
                    for f in seg.fields() {
                        for r in f.repetitions() {
                            for c in r.components() {
                                for sc in c.subcomponents() {
                                    let _ = sc.text();
                                }
                            }
                        }
                    }
                }
            }
            Err(e) => fails.push(format!("{name}: parse failed: {e}")),
        }
    }
    assert!(fails.is_empty(), "{} failures:\n{}", fails.len(), fails.join("\n"));
}

fn parse_any(bytes: &[u8]) -> Result<(), ParseError> {
    if bytes.starts_with(b"FHS") || bytes.starts_with(b"BHS") {
        Batch::parse(bytes).map(|_| ())
    } else {
        Message::parse(bytes).map(|_| ())
    }
}

#[test]
fn malformed_corpus() {
    let cases = cases("malformed", ".bin");
    assert!(cases.len() >= 30, "only {} malformed cases", cases.len());
    let mut fails = Vec::new();
    let mut message_layer = 0;
    for (name, bytes, exp) in &cases {
        let answer = s(exp, "answer");
        assert!(["AE", "AR", "CE", "CR", "AA", "close", "none"].contains(&answer), "{name}: bad answer {answer}");
        if s(exp, "layer") != "message" {
            assert_eq!(s(exp, "layer"), "frame", "{name}: bad layer");
            continue;
        }
        message_layer += 1;
        let err = match parse_any(bytes) {
            Ok(()) => {
                fails.push(format!("{name}: parsed but should fail"));
                continue;
            }
            Err(e) => e,
        };
        let code = exp["err_code"].as_u64().expect("err_code");
        if u64::from(err.code.code()) != code {
            fails.push(format!("{name}: code {} want {code} ({})", err.code.code(), err.message));
        }
        if err.location.to_string() != s(exp, "err_location") {
            fails.push(format!("{name}: location {} want {}", err.location, s(exp, "err_location")));
        }
        let want_reject = answer.ends_with('R');
        if err.is_reject() != want_reject {
            fails.push(format!("{name}: reject={} but answer {answer}", err.is_reject()));
        }
        let header = salvage_header(bytes);
        let ack_bytes = Ack::for_error(&header, &err, "20240315103001", "ACK-1").build();
        let ack = match Message::parse(&ack_bytes) {
            Ok(a) => a,
            Err(e) => {
                fails.push(format!("{name}: ACK does not parse: {e}: {:?}", String::from_utf8_lossy(&ack_bytes)));
                continue;
            }
        };
        let msa1 = ack.text("MSA-1").unwrap_or_default();
        if msa1 != answer {
            fails.push(format!("{name}: MSA-1 {msa1} want {answer}"));
        }
        if ack.text("MSA-2").unwrap_or_default() != header.control_id {
            fails.push(format!("{name}: MSA-2 does not echo the salvaged control id"));
        }
        let err_path = if version_tuple(&ack.header().version) >= (2, 5, 0) { "ERR-3.1" } else { "ERR-1.4.1" };
        if ack.text(err_path).unwrap_or_default() != code.to_string() {
            fails.push(format!("{name}: {err_path} lacks {code}: {:?}", String::from_utf8_lossy(&ack_bytes)));
        }
    }
    assert!(message_layer >= 25, "only {message_layer} message-layer cases");
    assert!(fails.is_empty(), "{} failures:\n{}", fails.len(), fails.join("\n"));
}
