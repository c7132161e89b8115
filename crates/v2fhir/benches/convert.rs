//! Conversion throughput: parse + `v2fhir::convert` of one message per iteration, so criterion's element rate is
//! messages per second on one core (the bench runs single-threaded).
//!
//! `cargo bench -p v2fhir --bench convert -- --warm-up-time 2 --measurement-time 5`

use std::hint::black_box;
use std::path::PathBuf;

use criterion::{Criterion, Throughput, criterion_group, criterion_main};

/// A conformance message (`conformance/v2fhir/<name>.hl7`), as the gateway receives it: segments ending in CR.
fn message(name: &str) -> Vec<u8> {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../conformance/v2fhir").join(name);
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let mut out = String::with_capacity(text.len());
    for line in text.lines().filter(|l| !l.trim().is_empty()) {
        out.push_str(line.trim_end_matches('\r'));
        out.push('\r');
    }
    out.into_bytes()
}

fn bench(c: &mut Criterion) {
    let cases = [
        ("adt_a04", message("adt_a04.hl7")),
        ("adt_a01_in1_nk1", message("adt_a01.hl7")),
        ("oru_r01_hvs_screening", message("oru_r01_hvs.hl7")),
        ("oru_r01_lab", message("oru_r01_lab.hl7")),
    ];
    let mut g = c.benchmark_group("convert");
    g.throughput(Throughput::Elements(1));
    for (name, raw) in &cases {
        // Every case converts (a failing case would measure the error path instead).
        let parsed = hl7v2::Message::parse(raw).expect("parses");
        let out = v2fhir::convert(&parsed).expect("converts");
        assert!(!out.resources.is_empty(), "{name}: no resources");
        g.bench_function(*name, |b| {
            b.iter(|| {
                let m = hl7v2::Message::parse(black_box(raw)).expect("parses");
                black_box(v2fhir::convert(&m).expect("converts"))
            })
        });
    }
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
