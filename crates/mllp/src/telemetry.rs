//! The `mllp_*` metrics, emitted through the `metrics` facade (the binary installs the recorder).
//!
//! Labels are fixed, low-cardinality strings: never peer addresses, never frame contents.

use metrics::{counter, gauge};

pub(crate) fn connection_opened() {
    counter!("mllp_connections_accepted_total").increment(1);
    gauge!("mllp_connections_open").increment(1.0);
}

pub(crate) fn connection_closed() {
    gauge!("mllp_connections_open").decrement(1.0);
}

pub(crate) fn connection_refused() {
    counter!("mllp_connections_refused_total").increment(1);
}

pub(crate) fn frame_received() {
    counter!("mllp_frames_received_total").increment(1);
}

pub(crate) fn frame_error(reason: &'static str) {
    counter!("mllp_frame_errors_total", "reason" => reason).increment(1);
}

pub(crate) fn discarded_bytes(n: u64) {
    counter!("mllp_discarded_bytes_total").increment(n);
}

pub(crate) fn timeout(kind: &'static str) {
    counter!("mllp_timeouts_total", "kind" => kind).increment(1);
}

pub(crate) fn tls_handshake_failure() {
    counter!("mllp_tls_handshake_failures_total").increment(1);
}
