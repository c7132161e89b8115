//! Deterministic ids for derived resources, so reprocessing any version of a QR updates the same resources.

use sha2::{Digest, Sha256};

/// `sdoh-<kind>-<32 hex>`: the first 128 bits of SHA-256 over (QR id, kind, key). Stable across versions and
/// releases, at most 64 characters for kinds up to 22 characters, and free of the QR id's characters. A
/// cryptographic hash because QR ids are client-chosen: a client must not be able to craft an id whose derived
/// resources overwrite another patient's.
pub fn derived_id(kind: &str, qr_id: &str, key: &str) -> String {
    let mut h = Sha256::new();
    // Length prefixes keep ("a", "bc") and ("ab", "c") apart.
    for part in ["sdoh-gateway/v1", qr_id, kind, key] {
        h.update((part.len() as u64).to_be_bytes());
        h.update(part.as_bytes());
    }
    let digest = h.finalize();
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let mut out = String::with_capacity(6 + kind.len() + 32);
    out.push_str("sdoh-");
    out.push_str(kind);
    out.push('-');
    // Hex by table: this runs for every derivable id of every QR (no per-byte `format!` allocation).
    for &b in &digest[..16] {
        out.push(char::from(HEX[usize::from(b >> 4)]));
        out.push(char::from(HEX[usize::from(b & 0x0f)]));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::derived_id;

    #[test]
    fn stable_and_distinct() {
        let a = derived_id("obs", "qr1", "88122-7");
        assert_eq!(a, derived_id("obs", "qr1", "88122-7"));
        assert_ne!(a, derived_id("obs", "qr2", "88122-7"));
        assert_ne!(a, derived_id("obs", "qr1", "88123-5"));
        assert_ne!(derived_id("obs", "a", "bc"), derived_id("obs", "ab", "c"));
        assert_eq!(a.len(), "sdoh-obs-".len() + 32);
    }
}
