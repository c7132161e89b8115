//! String normalisation for `string` search: lower case, accents folded, whitespace collapsed.
//!
//! The folding covers Latin-1, Latin Extended-A and combining diacritical marks (already-decomposed input), which
//! is what the names and addresses the gateway sees need. It is deliberately table-driven and dependency-free; the
//! SQL layer stores the normalised form so queries compare like with like.

/// Normalises text for case- and accent-insensitive comparison.
pub fn normalize(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    let mut pending_space = false;
    for c in s.chars().flat_map(char::to_lowercase) {
        if c.is_whitespace() {
            pending_space = !out.is_empty();
            continue;
        }
        if ('\u{300}'..='\u{36f}').contains(&c) {
            continue;
        }
        if pending_space {
            out.push(' ');
            pending_space = false;
        }
        match fold(c) {
            Some(folded) => out.push_str(folded),
            None => out.push(c),
        }
    }
    out
}

fn fold(c: char) -> Option<&'static str> {
    Some(match c {
        'à' | 'á' | 'â' | 'ã' | 'ä' | 'å' | 'ā' | 'ă' | 'ą' => "a",
        'æ' => "ae",
        'ç' | 'ć' | 'ĉ' | 'ċ' | 'č' => "c",
        'ď' | 'đ' | 'ð' => "d",
        'è' | 'é' | 'ê' | 'ë' | 'ē' | 'ĕ' | 'ė' | 'ę' | 'ě' => "e",
        'ĝ' | 'ğ' | 'ġ' | 'ģ' => "g",
        'ĥ' | 'ħ' => "h",
        'ì' | 'í' | 'î' | 'ï' | 'ĩ' | 'ī' | 'ĭ' | 'į' | 'ı' => "i",
        'ĳ' => "ij",
        'ĵ' => "j",
        'ķ' | 'ĸ' => "k",
        'ĺ' | 'ļ' | 'ľ' | 'ŀ' | 'ł' => "l",
        'ñ' | 'ń' | 'ņ' | 'ň' | 'ŉ' | 'ŋ' => "n",
        'ò' | 'ó' | 'ô' | 'õ' | 'ö' | 'ø' | 'ō' | 'ŏ' | 'ő' => "o",
        'œ' => "oe",
        'ŕ' | 'ŗ' | 'ř' => "r",
        'ś' | 'ŝ' | 'ş' | 'š' | 'ș' => "s",
        'ß' => "ss",
        'ţ' | 'ť' | 'ŧ' | 'ț' => "t",
        'ù' | 'ú' | 'û' | 'ü' | 'ũ' | 'ū' | 'ŭ' | 'ů' | 'ű' | 'ų' => "u",
        'ŵ' => "w",
        'ý' | 'ÿ' | 'ŷ' => "y",
        'ź' | 'ż' | 'ž' => "z",
        'þ' => "th",
        _ => return None,
    })
}

#[cfg(test)]
mod tests {
    use super::normalize;

    #[test]
    fn folds_case_accents_and_space() {
        assert_eq!(normalize("  José   ÁLVAREZ-Muñoz "), "jose alvarez-munoz");
        assert_eq!(normalize("Straße"), "strasse");
        assert_eq!(normalize("Łódź"), "lodz");
        assert_eq!(normalize("Cafe\u{301}"), "cafe");
        assert_eq!(normalize("Zoë Ørsted"), "zoe orsted");
        assert_eq!(normalize(""), "");
    }
}
