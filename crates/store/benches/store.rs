//! Store throughput benchmarks (placeholder replaced below).
fn main() {}
