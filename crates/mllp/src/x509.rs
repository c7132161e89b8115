//! Just enough DER reading to name a client certificate's subject for `ConnectionInfo`.
//!
//! rustls verifies the certificate but does not expose its subject; a full X.509 parser would be
//! a large dependency for one string. Input is already verified by webpki, but this code still
//! treats it as hostile: every read is bounds-checked and failure yields `None`, never a panic.

/// One DER element: its tag byte and contents.
struct Tlv<'a> {
    tag: u8,
    body: &'a [u8],
    /// The whole element, tag and length included.
    raw: &'a [u8],
}

/// Read one element from the front of `input`, returning it and the rest.
fn read_tlv(input: &[u8]) -> Option<(Tlv<'_>, &[u8])> {
    let tag = *input.first()?;
    if tag & 0x1F == 0x1F {
        // High tag numbers never occur in the parts of a certificate read here.
        return None;
    }
    let first = *input.get(1)?;
    let (len, header) = if first < 0x80 {
        (first as usize, 2)
    } else {
        let n = (first & 0x7F) as usize;
        if n == 0 || n > 4 {
            return None;
        }
        let mut len = 0usize;
        for i in 0..n {
            len = (len << 8) | *input.get(2 + i)? as usize;
        }
        (len, 2 + n)
    };
    let end = header.checked_add(len)?;
    let raw = input.get(..end)?;
    let body = raw.get(header..)?;
    Some((Tlv { tag, body, raw }, input.get(end..)?))
}

const SEQUENCE: u8 = 0x30;
const SET: u8 = 0x31;
const OID: u8 = 0x06;
const CONTEXT_0: u8 = 0xA0;

/// The subject of a DER certificate as an RFC 4514 string (`CN=client,O=Acme`); if the subject
/// is empty, its subjectAltNames (`DNS:ehr.example.org`). `None` if neither can be read.
pub(crate) fn subject_string(cert_der: &[u8]) -> Option<String> {
    let (cert, _) = read_tlv(cert_der)?;
    if cert.tag != SEQUENCE {
        return None;
    }
    let (tbs, _) = read_tlv(cert.body)?;
    if tbs.tag != SEQUENCE {
        return None;
    }
    let mut rest = tbs.body;
    let (first, after) = read_tlv(rest)?;
    if first.tag == CONTEXT_0 {
        // Explicit version; absent in v1 certificates.
        rest = after;
    }
    // serialNumber, signature, issuer and validity precede the subject.
    for _ in 0..4 {
        (_, rest) = read_tlv(rest)?;
    }
    let (subject, rest) = read_tlv(rest)?;
    if subject.tag != SEQUENCE {
        return None;
    }
    let name = format_name(subject.body)?;
    if !name.is_empty() {
        return Some(name);
    }
    // An empty subject is allowed when the identity is in subjectAltName (RFC 5280 4.1.2.6).
    let sans = subject_alt_names(rest)?;
    (!sans.is_empty()).then_some(sans)
}

const CONTEXT_3: u8 = 0xA3;
const OCTET_STRING: u8 = 0x04;
const SUBJECT_ALT_NAME: &[u8] = &[0x55, 0x1D, 0x11];

/// `rest` is what follows the subject in the TBS certificate: the key info, optional unique
/// IDs, then the optional `[3]` extensions. Returns SANs as `DNS:a,email:b,URI:c,IP:d`.
fn subject_alt_names(mut rest: &[u8]) -> Option<String> {
    let mut extensions = None;
    while !rest.is_empty() {
        let (field, after) = read_tlv(rest)?;
        rest = after;
        if field.tag == CONTEXT_3 {
            extensions = Some(field.body);
        }
    }
    let (list, _) = read_tlv(extensions?)?;
    let mut exts = list.body;
    while !exts.is_empty() {
        let (ext, after) = read_tlv(exts)?;
        exts = after;
        let (oid, mut fields) = read_tlv(ext.body)?;
        if oid.tag != OID || oid.body != SUBJECT_ALT_NAME {
            continue;
        }
        // Skip the optional `critical` BOOLEAN to reach the OCTET STRING.
        let value = loop {
            let (f, after) = read_tlv(fields)?;
            fields = after;
            if f.tag == OCTET_STRING {
                break f.body;
            }
        };
        let (names, _) = read_tlv(value)?;
        let mut out = Vec::new();
        let mut items = names.body;
        while !items.is_empty() {
            let (gn, after) = read_tlv(items)?;
            items = after;
            let text = || std::str::from_utf8(gn.body).ok().map(escape_value);
            match gn.tag {
                0x81 => out.push(format!("email:{}", text()?)),
                0x82 => out.push(format!("DNS:{}", text()?)),
                0x86 => out.push(format!("URI:{}", text()?)),
                0x87 => out.push(format!("IP:{}", ip_text(gn.body)?)),
                _ => {}
            }
        }
        return Some(out.join(","));
    }
    Some(String::new())
}

fn ip_text(b: &[u8]) -> Option<String> {
    match b.len() {
        4 => Some(std::net::Ipv4Addr::new(b[0], b[1], b[2], b[3]).to_string()),
        16 => {
            let mut a = [0u8; 16];
            a.copy_from_slice(b);
            Some(std::net::Ipv6Addr::from(a).to_string())
        }
        _ => None,
    }
}

fn format_name(mut rdns: &[u8]) -> Option<String> {
    let mut parts = Vec::new();
    while !rdns.is_empty() {
        let (set, rest) = read_tlv(rdns)?;
        rdns = rest;
        if set.tag != SET {
            return None;
        }
        let mut attrs = Vec::new();
        let mut inner = set.body;
        while !inner.is_empty() {
            let (atv, rest) = read_tlv(inner)?;
            inner = rest;
            if atv.tag != SEQUENCE {
                return None;
            }
            let (oid, value_rest) = read_tlv(atv.body)?;
            if oid.tag != OID {
                return None;
            }
            let (value, _) = read_tlv(value_rest)?;
            let name = attribute_name(oid.body).map(str::to_string).unwrap_or_else(|| oid_dotted(oid.body));
            let text = match decode_string(&value) {
                Some(s) => escape_value(&s),
                None => format!("#{}", hex(value.raw)),
            };
            attrs.push(format!("{name}={text}"));
        }
        parts.push(attrs.join("+"));
    }
    // RFC 4514 writes the most specific RDN first, the reverse of the encoded order.
    parts.reverse();
    Some(parts.join(","))
}

fn attribute_name(oid: &[u8]) -> Option<&'static str> {
    Some(match oid {
        [0x55, 0x04, 0x03] => "CN",
        [0x55, 0x04, 0x05] => "serialNumber",
        [0x55, 0x04, 0x06] => "C",
        [0x55, 0x04, 0x07] => "L",
        [0x55, 0x04, 0x08] => "ST",
        [0x55, 0x04, 0x09] => "STREET",
        [0x55, 0x04, 0x0A] => "O",
        [0x55, 0x04, 0x0B] => "OU",
        [0x09, 0x92, 0x26, 0x89, 0x93, 0xF2, 0x2C, 0x64, 0x01, 0x19] => "DC",
        [0x09, 0x92, 0x26, 0x89, 0x93, 0xF2, 0x2C, 0x64, 0x01, 0x01] => "UID",
        [0x2A, 0x86, 0x48, 0x86, 0xF7, 0x0D, 0x01, 0x09, 0x01] => "emailAddress",
        _ => return None,
    })
}

fn oid_dotted(body: &[u8]) -> String {
    let mut arcs: Vec<u128> = Vec::new();
    let mut acc: u128 = 0;
    for &b in body {
        acc = acc.saturating_mul(128).saturating_add((b & 0x7F) as u128);
        if b & 0x80 == 0 {
            if arcs.is_empty() {
                let first = (acc / 40).min(2);
                arcs.push(first);
                arcs.push(acc - first * 40);
            } else {
                arcs.push(acc);
            }
            acc = 0;
        }
    }
    arcs.iter().map(u128::to_string).collect::<Vec<_>>().join(".")
}

fn decode_string(v: &Tlv<'_>) -> Option<String> {
    match v.tag {
        // UTF8String, PrintableString, IA5String, NumericString, VisibleString
        0x0C | 0x13 | 0x16 | 0x12 | 0x1A => std::str::from_utf8(v.body).ok().map(str::to_string),
        // TeletexString: in practice Latin-1.
        0x14 => Some(v.body.iter().map(|&b| b as char).collect()),
        // BMPString
        0x1E => {
            if !v.body.len().is_multiple_of(2) {
                return None;
            }
            let units: Vec<u16> = v.body.chunks_exact(2).map(|c| u16::from_be_bytes([c[0], c[1]])).collect();
            String::from_utf16(&units).ok()
        }
        // UniversalString
        0x1C => {
            if !v.body.len().is_multiple_of(4) {
                return None;
            }
            v.body.chunks_exact(4).map(|c| char::from_u32(u32::from_be_bytes([c[0], c[1], c[2], c[3]]))).collect()
        }
        _ => None,
    }
}

fn escape_value(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    let last = s.chars().count().saturating_sub(1);
    for (i, c) in s.chars().enumerate() {
        match c {
            ',' | '+' | '"' | '\\' | '<' | '>' | ';' | '=' => {
                out.push('\\');
                out.push(c);
            }
            '#' if i == 0 => out.push_str("\\#"),
            ' ' if i == 0 || i == last => out.push_str("\\ "),
            // Control characters would let a certificate forge log lines.
            c if c.is_control() => {
                let mut buf = [0u8; 4];
                for b in c.encode_utf8(&mut buf).bytes() {
                    out.push_str(&format!("\\{b:02x}"));
                }
            }
            c => out.push(c),
        }
    }
    out
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn garbage_is_none_not_panic() {
        assert_eq!(subject_string(&[]), None);
        assert_eq!(subject_string(&[0x30]), None);
        assert_eq!(subject_string(&[0x30, 0x84, 0xFF, 0xFF, 0xFF, 0xFF]), None);
        assert_eq!(subject_string(&[0x30, 0x85, 1, 1, 1, 1, 1]), None);
        for len in 0..64u8 {
            let input: Vec<u8> = (0..len).map(|i| i.wrapping_mul(37) ^ 0x30).collect();
            let _ = subject_string(&input);
        }
    }

    #[test]
    fn escapes_special_and_control_characters() {
        assert_eq!(escape_value("a,b"), "a\\,b");
        assert_eq!(escape_value(" x "), "\\ x\\ ");
        assert_eq!(escape_value("#x"), "\\#x");
        assert_eq!(escape_value("a\nb"), "a\\0ab");
    }

    fn self_signed(sans: Vec<String>, dn: &[(rcgen::DnType, &str)]) -> Vec<u8> {
        let key = rcgen::KeyPair::generate().unwrap();
        let mut params = rcgen::CertificateParams::new(sans).unwrap();
        params.distinguished_name = rcgen::DistinguishedName::new();
        for (t, v) in dn {
            params.distinguished_name.push(t.clone(), *v);
        }
        params.self_signed(&key).unwrap().der().to_vec()
    }

    #[test]
    fn subject_from_real_certificates() {
        use rcgen::DnType;
        let der = self_signed(
            vec!["ehr.example.org".into()],
            &[(DnType::CountryName, "US"), (DnType::OrganizationName, "Clinic, Inc"), (DnType::CommonName, "ehr-1")],
        );
        assert_eq!(subject_string(&der).as_deref(), Some("CN=ehr-1,O=Clinic\\, Inc,C=US"));

        let der = self_signed(vec!["ehr.example.org".into(), "10.0.0.1".into()], &[]);
        assert_eq!(subject_string(&der).as_deref(), Some("DNS:ehr.example.org,IP:10.0.0.1"));

        assert_eq!(subject_string(&self_signed(vec![], &[])), None);

        // Every truncation of a real certificate is handled without panicking.
        for cut in 0..der.len() {
            let _ = subject_string(&der[..cut]);
        }
    }

    #[test]
    fn dotted_oid() {
        assert_eq!(oid_dotted(&[0x2A, 0x86, 0x48, 0x86, 0xF7, 0x0D, 0x01, 0x09, 0x01]), "1.2.840.113549.1.9.1");
        assert_eq!(oid_dotted(&[0x55, 0x04, 0x03]), "2.5.4.3");
    }
}
