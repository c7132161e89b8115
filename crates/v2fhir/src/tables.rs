//! Mapping tables and screening instruments, embedded from `profiles/v2fhir/` and parsed once.

use serde_json::Value;
use std::sync::LazyLock;

static TABLES: LazyLock<Value> = LazyLock::new(|| parse(include_str!("../../../profiles/v2fhir/tables.json")));
static V2_TABLES: LazyLock<Value> = LazyLock::new(|| parse(include_str!("../../../profiles/v2fhir/v2-tables.json")));
static INSTRUMENTS: LazyLock<Vec<Instrument>> = LazyLock::new(|| {
    let v = parse(include_str!("../../../profiles/v2fhir/screening-instruments.json"));
    v.get("instruments")
        .and_then(Value::as_array)
        .map(|a| a.iter().filter_map(Instrument::from_json).collect())
        .unwrap_or_default()
});

// The data is compiled in and checked by `embedded_tables_parse`, so a parse failure cannot reach production;
// falling back to an empty table keeps even that impossible case from panicking.
fn parse(s: &str) -> Value {
    serde_json::from_str(s).unwrap_or(Value::Null)
}

/// One recognised screening instrument.
#[derive(Debug, Clone)]
pub(crate) struct Instrument {
    pub panel: String,
    pub questionnaire: String,
    pub link_id_prefix: String,
    pub items: Vec<String>,
}

impl Instrument {
    fn from_json(v: &Value) -> Option<Instrument> {
        Some(Instrument {
            panel: v.get("panel")?.as_str()?.to_owned(),
            questionnaire: v.get("questionnaire")?.as_str()?.to_owned(),
            link_id_prefix: v.get("linkIdPrefix").and_then(Value::as_str).unwrap_or("").to_owned(),
            items: v.get("items")?.as_array()?.iter().filter_map(|i| i.as_str().map(str::to_owned)).collect(),
        })
    }

    pub fn has_item(&self, code: &str) -> bool {
        self.items.iter().any(|i| i == code)
    }
}

/// The instrument whose panel code this is.
pub(crate) fn instrument_for_panel(code: &str) -> Option<&'static Instrument> {
    INSTRUMENTS.iter().find(|i| i.panel == code)
}

/// Entry `key` of table `table` (e.g. `lookup("0001", "F")`).
pub(crate) fn lookup(table: &str, key: &str) -> Option<&'static Value> {
    TABLES.get(table)?.get(key)
}

/// Display of `code` in HL7 v2 table `table` (vendored from the HL7 terminology), when the table defines it.
pub(crate) fn v2_display(table: &str, code: &str) -> Option<&'static str> {
    V2_TABLES.get(table)?.get(code)?.as_str()
}

/// Every entry of a table, for reverse lookups.
pub(crate) fn entries(table: &str) -> Option<impl Iterator<Item = (&'static String, &'static Value)>> {
    Some(TABLES.get(table)?.as_object()?.iter())
}

/// A string entry of a table.
pub(crate) fn lookup_str(table: &str, key: &str) -> Option<&'static str> {
    lookup(table, key)?.as_str()
}

/// FHIR system URI for a v2 coding system name (HL7 table 0396). `HLnnnn`/`HL7nnnn` tables map to the
/// terminology.hl7.org v2 code systems; unknown local systems get none rather than an invented URI.
pub(crate) fn coding_system(name: &str) -> Option<String> {
    if let Some(s) = lookup_str("codingSystems", name) {
        return Some(s.to_owned());
    }
    let digits = name.strip_prefix("HL7").or_else(|| name.strip_prefix("HL"))?;
    (digits.len() == 4 && digits.bytes().all(|b| b.is_ascii_digit()))
        .then(|| format!("http://terminology.hl7.org/CodeSystem/v2-{digits}"))
}

/// True when the coding system name denotes the CDC Race & Ethnicity code set.
pub(crate) fn is_cdc_race_system(name: &str) -> bool {
    TABLES
        .get("cdcRaceEthnicitySystems")
        .and_then(Value::as_array)
        .is_some_and(|a| a.iter().any(|s| s.as_str() == Some(name)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn embedded_tables_parse() {
        assert!(TABLES.is_object() && V2_TABLES.is_object());
        assert_eq!(v2_display("0203", "MR"), Some("Medical record number"));
        assert!(INSTRUMENTS.len() >= 3);
        let hvs = instrument_for_panel("88121-9").unwrap();
        assert!(hvs.has_item("88122-7"));
        assert_eq!(lookup_str("0001", "F"), Some("female"));
        assert_eq!(coding_system("LN").as_deref(), Some("http://loinc.org"));
        assert_eq!(coding_system("HL70203").as_deref(), Some("http://terminology.hl7.org/CodeSystem/v2-0203"));
        assert_eq!(coding_system("99LOCAL"), None);
    }
}
