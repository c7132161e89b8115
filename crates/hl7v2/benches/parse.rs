//! Parse throughput of this crate against the crates.io `hl7-parser` and `rust-hl7` crates.

use std::hint::black_box;
use std::path::PathBuf;

use criterion::{Criterion, Throughput, criterion_group, criterion_main};

/// Well-formed conformance messages that every compared parser accepts (UTF-8, CR-terminated,
/// single messages), so all of them do the same work on the same bytes.
fn corpus() -> Vec<String> {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../conformance/hl7v2/wellformed");
    let mut paths: Vec<_> = std::fs::read_dir(&dir)
        .expect("conformance corpus")
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|e| e == "hl7"))
        .collect();
    paths.sort();
    let mut out = Vec::new();
    for p in paths {
        let Ok(text) = String::from_utf8(std::fs::read(&p).expect("read")) else {
            continue;
        };
        let text = text.trim_end_matches(['\r', '\n']).to_owned();
        if !text.starts_with("MSH|") || text.contains('\n') || hl7v2::Message::parse(text.as_bytes()).is_err() {
            continue;
        }
        if hl7_parser::Message::parse(&text).is_err() || rusthl7::message::Message::try_from(text.as_str()).is_err() {
            continue;
        }
        out.push(text);
    }
    out
}

fn ours_touch(m: &hl7v2::Message<'_>) -> usize {
    let mut n = 0;
    for seg in m.segments() {
        for f in seg.fields() {
            for r in f.repetitions() {
                for c in r.components() {
                    for s in c.subcomponents() {
                        n += s.raw().len() + 1;
                    }
                }
            }
        }
    }
    n
}

fn hl7_parser_touch(m: &hl7_parser::Message<'_>) -> usize {
    let mut n = 0;
    for seg in m.segments() {
        for f in seg.fields() {
            for r in f.repeats() {
                for c in r.components() {
                    for s in c.subcomponents() {
                        n += s.value.len() + 1;
                    }
                }
            }
        }
    }
    n
}

fn rust_hl7_touch(m: &rusthl7::message::Message<'_>) -> usize {
    let mut n = 0;
    for seg in &m.segments {
        for f in &seg.fields {
            for r in &f.subcomponents {
                for c in r {
                    for s in c {
                        n += s.len() + 1;
                    }
                }
            }
        }
    }
    n
}

fn bench(c: &mut Criterion) {
    let corpus = corpus();
    let bytes: usize = corpus.iter().map(String::len).sum();
    eprintln!("corpus: {} messages, {bytes} bytes", corpus.len());
    let mut g = c.benchmark_group("parse");
    g.throughput(Throughput::Bytes(bytes as u64));
    g.bench_function("hl7v2/parse_only", |b| {
        b.iter(|| {
            for m in &corpus {
                black_box(hl7v2::Message::parse(black_box(m.as_bytes())).ok());
            }
        })
    });
    g.bench_function("hl7v2/parse_touch_all", |b| {
        b.iter(|| {
            let mut n = 0;
            for m in &corpus {
                if let Ok(m) = hl7v2::Message::parse(black_box(m.as_bytes())) {
                    n += ours_touch(&m);
                }
            }
            black_box(n)
        })
    });
    g.bench_function("hl7-parser/parse_only", |b| {
        b.iter(|| {
            for m in &corpus {
                black_box(hl7_parser::Message::parse(black_box(m)).ok());
            }
        })
    });
    g.bench_function("hl7-parser/parse_touch_all", |b| {
        b.iter(|| {
            let mut n = 0;
            for m in &corpus {
                if let Ok(m) = hl7_parser::Message::parse(black_box(m)) {
                    n += hl7_parser_touch(&m);
                }
            }
            black_box(n)
        })
    });
    g.bench_function("rust-hl7/parse_only", |b| {
        b.iter(|| {
            for m in &corpus {
                black_box(rusthl7::message::Message::try_from(black_box(m.as_str())).ok());
            }
        })
    });
    g.bench_function("rust-hl7/parse_touch_all", |b| {
        b.iter(|| {
            let mut n = 0;
            for m in &corpus {
                if let Ok(m) = rusthl7::message::Message::try_from(black_box(m.as_str())) {
                    n += rust_hl7_touch(&m);
                }
            }
            black_box(n)
        })
    });
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
