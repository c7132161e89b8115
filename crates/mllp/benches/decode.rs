//! Codec decode throughput: many typical-size HL7 messages in one buffer, as a pipelining peer sends them.

use bytes::BytesMut;
use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use mllp::{MllpCodec, encode_frame};
use tokio_util::codec::Decoder;

fn message(len: usize) -> Vec<u8> {
    let mut m = b"MSH|^~\\&|EHR|CLINIC|GW|SDOH|20260101120000||ADT^A04|1|P|2.5.1\r".to_vec();
    while m.len() < len {
        m.extend_from_slice(b"OBX|1|CWE|88122-7^Food insecurity^LN||LA28397-0^Often true^LN||||||F\r");
    }
    m.truncate(len);
    m
}

fn bench_decode(c: &mut Criterion) {
    let mut group = c.benchmark_group("decode");
    for size in [256usize, 4 * 1024, 64 * 1024] {
        let msg = message(size);
        let mut stream = BytesMut::new();
        let count = (1 << 20) / size;
        for _ in 0..count {
            encode_frame(&msg, &mut stream);
        }
        let stream = stream.freeze();
        group.throughput(Throughput::Bytes(stream.len() as u64));
        group.bench_function(format!("{size}B_frames"), |b| {
            b.iter(|| {
                let mut codec = MllpCodec::new(1 << 20);
                let mut buf = BytesMut::from(&stream[..]);
                let mut n = 0;
                while let Ok(Some(frame)) = codec.decode(&mut buf) {
                    n += frame.len();
                }
                n
            })
        });
    }
    group.finish();
}

criterion_group!(benches, bench_decode);
criterion_main!(benches);
