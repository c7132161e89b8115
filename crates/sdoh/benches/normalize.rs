//! Screening normalization throughput: `sdoh::normalize` of one QuestionnaireResponse per iteration, so criterion's
//! element rate is QuestionnaireResponses per second on one core (the bench runs single-threaded). Target from the
//! issue: >= 10,000 QRs/s. `normalize/*` takes an already parsed `serde_json::Value` (what the gateway hands over);
//! `parse_and_normalize/*` also parses the JSON bytes, the conservative figure.
//!
//! `cargo bench -p sdoh --bench normalize -- --warm-up-time 2 --measurement-time 5`

use std::hint::black_box;
use std::path::PathBuf;

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use sdoh::{Context, normalize};
use serde_json::Value;

/// The allocator the `sdoh-gateway` binary runs normalization with, so the figure is the gateway's.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

const CTX: Context<'static> = Context { recorded: "2026-01-01T00:00:00Z", agent: "Device/sdoh-gateway" };

/// A conformance input (`conformance/sdoh/<name>.input.json`) as raw bytes.
fn input(name: &str) -> Vec<u8> {
    let path =
        PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../conformance/sdoh").join(format!("{name}.input.json"));
    std::fs::read(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

fn bench(c: &mut Criterion) {
    let cases = [
        // The IG's Hunger Vital Sign example: 3 Observations + panel + Condition + Provenance.
        ("hvs_ig_example", input("ig-hvs-example")),
        // AHC HRSN core, 10 answered items (one multi-select): 12 Observations + panel + 3 Conditions + Provenance.
        ("ahc_hrsn_several_domains", input("ahc-hrsn-several-domains")),
    ];
    let mut g = c.benchmark_group("normalize");
    g.throughput(Throughput::Elements(1));
    for (name, raw) in &cases {
        let qr: Value = serde_json::from_slice(raw).expect("case parses");
        // Every case normalizes (a failing case would measure the error path instead).
        let d = normalize(&qr, &CTX).expect("normalizes").expect("supported instrument");
        assert!(d.resources.len() > 3, "{name}: too few resources");
        g.bench_function(*name, |b| b.iter(|| black_box(normalize(black_box(&qr), &CTX))));
    }
    g.finish();

    let mut g = c.benchmark_group("parse_and_normalize");
    g.throughput(Throughput::Elements(1));
    for (name, raw) in &cases {
        g.bench_function(*name, |b| {
            b.iter(|| {
                let qr: Value = serde_json::from_slice(black_box(raw)).expect("parses");
                black_box(normalize(&qr, &CTX))
            })
        });
    }
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
