//! Screening instrument definitions (data files under `profiles/sdoh/`) and their loading and validation.

use std::collections::{BTreeSet, HashMap};
use std::sync::LazyLock;

use serde::Deserialize;

/// Built-in instruments. Adding an instrument = adding a data file and one line here.
const BUILTIN_INSTRUMENTS: &[&str] = &[
    include_str!("../../../profiles/sdoh/instruments/hunger-vital-sign.json"),
    include_str!("../../../profiles/sdoh/instruments/ahc-hrsn.json"),
    include_str!("../../../profiles/sdoh/instruments/prapare.json"),
];

const BUILTIN_DOMAINS: &str = include_str!("../../../profiles/sdoh/domains.json");

static BUILTIN: LazyLock<Instruments> = LazyLock::new(|| {
    let mut set = Instruments::empty_with_domains(BUILTIN_DOMAINS).expect("built-in domains.json is valid");
    for doc in BUILTIN_INSTRUMENTS {
        set.add_json_str(doc).expect("built-in instrument definitions are valid");
    }
    set
});

/// Why an instrument or domain definition was rejected.
#[derive(Debug, thiserror::Error)]
pub enum DefinitionError {
    #[error("definition is not valid JSON for its schema: {0}")]
    Json(#[from] serde_json::Error),
    #[error("instrument {instrument}: {reason}")]
    Invalid { instrument: String, reason: String },
}

/// A coding as written in the data files.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Coding {
    pub system: String,
    pub code: String,
    pub display: String,
}

/// An SDOH domain (SDOHCC temporary code) and, when we know the codes, the health concern it raises.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Domain {
    pub code: String,
    pub display: String,
    /// Condition.code codings; `None` means an at-risk finding yields only POS Observations, no Condition.
    #[serde(default)]
    pub condition: Option<Vec<Coding>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct DomainsFile {
    #[serde(rename = "_note", default)]
    _note: Option<String>,
    domains: Vec<Domain>,
}

/// LOINC code + display (panels).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LoincCode {
    pub code: String,
    pub display: String,
}

/// How an item is answered, and so which `value[x]` its Observation carries.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ItemType {
    /// valueCoding with a LOINC answer (LA) code -> valueCodeableConcept.
    Choice,
    /// valueInteger / valueDecimal / valueQuantity -> valueQuantity.
    Quantity,
    /// valueBoolean -> valueBoolean.
    Boolean,
    /// valueString -> valueString.
    String,
}

/// One permitted answer of a choice item.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AnswerDef {
    pub code: String,
    pub display: String,
    /// The answer signals a possible need (Observation.interpretation = POS).
    #[serde(default)]
    pub positive: bool,
    /// Restricts which of the item's domains the need belongs to (e.g. AHC 71802-3); default all of them.
    #[serde(default)]
    pub domains: Option<Vec<String>>,
    /// Points for sum rules (e.g. HITS).
    #[serde(default)]
    pub score: Option<f64>,
}

/// How a computed item is derived from answered items.
#[derive(Debug, Clone, Deserialize)]
#[serde(tag = "kind", rename_all = "kebab-case", deny_unknown_fields)]
pub enum Rule {
    /// Any listed item has a positive answer -> the first positive answer of the computed item; some listed item
    /// answered but none positive -> its first non-positive answer; none answered -> not computed (HVS 88124-3).
    AnyPositive { items: Vec<String> },
    /// Sum of the listed items' answer scores, computed only when all are answered; positive at the threshold.
    Sum { items: Vec<String>, positive_at_least: f64 },
}

/// A question (or calculated item) of an instrument.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ItemDef {
    /// LOINC question code; also what the QR's linkId (last path segment) or item.code carries.
    pub code: String,
    pub display: String,
    #[serde(rename = "type")]
    pub item_type: ItemType,
    /// Several answers allowed; each answer then gets its own Observation (IG guidance for multi-select).
    #[serde(default)]
    pub repeats: bool,
    pub domains: Vec<String>,
    #[serde(default)]
    pub answers: Vec<AnswerDef>,
    /// UCUM unit for quantity items.
    #[serde(default)]
    pub unit: Option<String>,
    /// Present only on computed items.
    #[serde(default)]
    pub rule: Option<Rule>,
}

impl ItemDef {
    pub fn answer(&self, code: &str) -> Option<&AnswerDef> {
        self.answers.iter().find(|a| a.code == code)
    }

    /// Domains in which `answer` signals a need.
    pub fn need_domains<'a>(&'a self, answer: &'a AnswerDef) -> &'a [String] {
        answer.domains.as_deref().unwrap_or(&self.domains)
    }
}

/// One screening instrument as data.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Instrument {
    pub id: String,
    pub title: String,
    /// Questionnaire canonicals (without `|version`) that identify this instrument.
    #[serde(default)]
    pub questionnaires: Vec<String>,
    pub panel: LoincCode,
    /// Group linkIds/codes that belong to the instrument but carry no answers.
    #[serde(default)]
    pub groups: Vec<String>,
    pub items: Vec<ItemDef>,
    #[serde(default)]
    pub computed: Vec<ItemDef>,
}

impl Instrument {
    /// Answered and computed items, in output order.
    pub fn all_items(&self) -> impl Iterator<Item = &ItemDef> {
        self.items.iter().chain(self.computed.iter())
    }

    pub fn item(&self, code: &str) -> Option<&ItemDef> {
        self.all_items().find(|i| i.code == code)
    }

    /// Every code that may appear as a QR item of this instrument.
    pub(crate) fn known_codes(&self) -> BTreeSet<&str> {
        let mut set: BTreeSet<&str> = self.all_items().map(|i| i.code.as_str()).collect();
        set.insert(&self.panel.code);
        set.extend(self.groups.iter().map(String::as_str));
        set
    }

    /// Domains of the instrument, in first-seen order.
    pub fn domains(&self) -> Vec<&str> {
        let mut out: Vec<&str> = Vec::new();
        for d in self.all_items().flat_map(|i| i.domains.iter()) {
            if !out.contains(&d.as_str()) {
                out.push(d);
            }
        }
        out
    }
}

#[derive(Deserialize)]
#[serde(untagged)]
enum OneOrMany {
    One(Box<Instrument>),
    Many(Vec<Instrument>),
}

/// A validated set of instruments plus the SDOH domain table they refer to.
#[derive(Debug, Clone)]
pub struct Instruments {
    instruments: Vec<Instrument>,
    domains: Vec<Domain>,
    domain_index: HashMap<String, usize>,
}

impl Instruments {
    /// The instruments shipped in `profiles/sdoh/` (Hunger Vital Sign, AHC HRSN core, PRAPARE core).
    pub fn builtin() -> &'static Instruments {
        &BUILTIN
    }

    /// Instruments from a JSON document (one instrument object or an array of them), using the built-in domain
    /// table. Use [`Instruments::add_json_str`] on a clone of [`Instruments::builtin`] to extend the built-in set.
    pub fn from_json_str(json: &str) -> Result<Instruments, DefinitionError> {
        let mut set = Instruments {
            instruments: Vec::new(),
            domains: BUILTIN.domains.clone(),
            domain_index: BUILTIN.domain_index.clone(),
        };
        set.add_json_str(json)?;
        Ok(set)
    }

    fn empty_with_domains(json: &str) -> Result<Instruments, DefinitionError> {
        let file: DomainsFile = serde_json::from_str(json)?;
        let mut domain_index = HashMap::new();
        for (i, d) in file.domains.iter().enumerate() {
            if domain_index.insert(d.code.clone(), i).is_some() {
                return Err(invalid("domains", format!("domain {} listed twice", d.code)));
            }
        }
        Ok(Instruments { instruments: Vec::new(), domains: file.domains, domain_index })
    }

    /// Adds the instruments of a JSON document (one object or an array), validating them first.
    pub fn add_json_str(&mut self, json: &str) -> Result<(), DefinitionError> {
        let parsed: OneOrMany = serde_json::from_str(json)?;
        let list = match parsed {
            OneOrMany::One(i) => vec![*i],
            OneOrMany::Many(v) => v,
        };
        for instrument in list {
            self.validate(&instrument)?;
            self.instruments.push(instrument);
        }
        Ok(())
    }

    pub fn iter(&self) -> impl Iterator<Item = &Instrument> {
        self.instruments.iter()
    }

    pub fn get(&self, id: &str) -> Option<&Instrument> {
        self.instruments.iter().find(|i| i.id == id)
    }

    pub fn domain(&self, code: &str) -> Option<&Domain> {
        self.domain_index.get(code).map(|&i| &self.domains[i])
    }

    fn validate(&self, ins: &Instrument) -> Result<(), DefinitionError> {
        let fail = |reason: String| Err(invalid(&ins.id, reason));
        if self.get(&ins.id).is_some() {
            return fail("instrument id already loaded".into());
        }
        if ins.id.is_empty() || !ins.id.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-') {
            return fail("id must be non-empty [A-Za-z0-9-]".into());
        }
        let mut seen = BTreeSet::new();
        for item in ins.all_items() {
            if !seen.insert(item.code.as_str()) {
                return fail(format!("item {} defined twice", item.code));
            }
            if item.domains.is_empty() {
                return fail(format!("item {} has no domain", item.code));
            }
            for d in &item.domains {
                if self.domain(d).is_none() {
                    return fail(format!("item {} uses unknown domain {d}", item.code));
                }
            }
            match item.item_type {
                ItemType::Choice if item.answers.is_empty() => {
                    return fail(format!("choice item {} has no answers", item.code));
                }
                ItemType::Choice => {}
                _ if !item.answers.is_empty() => {
                    return fail(format!("non-choice item {} lists answers", item.code));
                }
                _ => {}
            }
            let mut answer_codes = BTreeSet::new();
            for a in &item.answers {
                if !answer_codes.insert(a.code.as_str()) {
                    return fail(format!("item {} lists answer {} twice", item.code, a.code));
                }
                if let Some(ds) = &a.domains
                    && let Some(d) = ds.iter().find(|d| !item.domains.contains(d))
                {
                    return fail(format!("answer {} of {} names domain {d} not on the item", a.code, item.code));
                }
            }
        }
        for item in &ins.items {
            if item.rule.is_some() {
                return fail(format!("answered item {} has a rule; move it to computed", item.code));
            }
        }
        for c in &ins.computed {
            let sources = match &c.rule {
                None => return fail(format!("computed item {} has no rule", c.code)),
                Some(Rule::AnyPositive { items }) => {
                    if c.item_type != ItemType::Choice
                        || !c.answers.iter().any(|a| a.positive)
                        || !c.answers.iter().any(|a| !a.positive)
                    {
                        return fail(format!("any-positive item {} needs positive and negative answers", c.code));
                    }
                    items
                }
                Some(Rule::Sum { items, .. }) => {
                    if c.item_type != ItemType::Quantity {
                        return fail(format!("sum item {} must be a quantity", c.code));
                    }
                    items
                }
            };
            for s in sources {
                match ins.items.iter().find(|i| &i.code == s) {
                    None => return fail(format!("rule of {} refers to unknown item {s}", c.code)),
                    Some(src) if src.repeats => {
                        return fail(format!("rule of {} refers to repeating item {s}", c.code));
                    }
                    Some(src)
                        if matches!(c.rule, Some(Rule::Sum { .. }))
                            && src.answers.iter().any(|a| a.score.is_none()) =>
                    {
                        return fail(format!("sum rule of {} needs scores on every answer of {s}", c.code));
                    }
                    Some(_) => {}
                }
            }
        }
        Ok(())
    }
}

fn invalid(instrument: &str, reason: String) -> DefinitionError {
    DefinitionError::Invalid { instrument: instrument.to_owned(), reason }
}
