//! Conversion state shared by the message mappers: segments, collected resources and warnings.

use crate::Conversion;
use crate::datatypes::{hd_key, obj, opt};
use crate::error::ConversionError;
use crate::ids::resource_id;
use crate::source::{Hd, MessageSource};
use crate::time::Dtm;
use crate::v2::{Seg, segments};
use serde_json::{Value, json};

pub(crate) struct Ctx<'a> {
    pub segs: Vec<Seg<'a>>,
    resources: Vec<Value>,
    warnings: Vec<String>,
    /// Namespace for identifiers that carry no assigning authority: the sending facility (MSH-4), so two
    /// facilities' unqualified MRN "123" never collide.
    pub facility: String,
}

impl<'a> Ctx<'a> {
    pub fn new(msg: &hl7v2::Message<'a>) -> Self {
        let segs = segments(msg);
        let facility = segs.first().and_then(|msh| msh.first(4)).and_then(|hd| hd_key(&hd)).unwrap_or_default();
        Ctx { segs, resources: Vec::new(), warnings: Vec::new(), facility }
    }

    pub fn finish(self) -> Conversion {
        Conversion { resources: self.resources, warnings: self.warnings }
    }

    pub fn msh(&self) -> Option<Seg<'a>> {
        self.segs.first().copied()
    }

    /// First segment with this id.
    pub fn first(&self, id: &str) -> Option<Seg<'a>> {
        self.segs.iter().find(|s| s.id() == id).copied()
    }

    /// All segments with this id.
    pub fn all(&self, id: &str) -> Vec<Seg<'a>> {
        self.segs.iter().filter(|s| s.id() == id).copied().collect()
    }

    /// Adds a resource and returns its reference. A second resource with the same type and id (say, the same
    /// organization named twice) is dropped: the first is already in place and referenced.
    pub fn push(&mut self, resource: Value) -> String {
        let reference = format!(
            "{}/{}",
            resource["resourceType"].as_str().unwrap_or_default(),
            resource["id"].as_str().unwrap_or_default()
        );
        let dup =
            self.resources.iter().any(|r| r["resourceType"] == resource["resourceType"] && r["id"] == resource["id"]);
        if !dup {
            self.resources.push(resource);
        }
        reference
    }

    pub fn warn(&mut self, w: impl Into<String>) {
        let w = w.into();
        if !self.warnings.contains(&w) {
            self.warnings.push(w);
        }
    }

    fn dtm(&self, seg: &Seg<'_>, n: usize) -> Result<Option<Dtm>, ConversionError> {
        seg.text(n).map(|t| Dtm::parse(&t, &seg.loc(n))).transpose()
    }

    /// Field `n` as FHIR dateTime; a time without offset is cut to the date, with a warning.
    pub fn date_time(&mut self, seg: &Seg<'_>, n: usize) -> Result<Option<String>, ConversionError> {
        let Some(d) = self.dtm(seg, n)? else { return Ok(None) };
        let (s, exact) = d.date_time();
        if !exact {
            self.warn(format!("{} has a time without UTC offset; only the date was kept", seg.loc(n)));
        }
        Ok(Some(s))
    }

    /// Field `n` as FHIR date.
    pub fn date(&self, seg: &Seg<'_>, n: usize) -> Result<Option<String>, ConversionError> {
        Ok(self.dtm(seg, n)?.map(|d| d.date()))
    }

    /// Field `n` as FHIR instant, when precise enough.
    pub fn instant(&mut self, seg: &Seg<'_>, n: usize) -> Result<Option<String>, ConversionError> {
        let Some(d) = self.dtm(seg, n)? else { return Ok(None) };
        let i = d.instant();
        if i.is_none() {
            self.warn(format!("{} is not precise to the second with UTC offset; not used as an instant", seg.loc(n)));
        }
        Ok(i)
    }

    /// Who sent this message and its control id, for `meta.source`.
    pub fn message_source(&self) -> MessageSource {
        let msh = self.msh();
        let hd = |n| msh.and_then(|m| m.first(n)).map(|p| Hd::from_parts(&p)).unwrap_or_default();
        MessageSource {
            sending_application: hd(3),
            sending_facility: hd(4),
            control_id: msh.and_then(|m| m.text(10)).unwrap_or_default(),
        }
    }

    /// The sending facility (MSH-4) as an Organization, when named.
    pub fn sending_organization(&mut self) -> Option<String> {
        let hd = self.msh()?.first(4)?;
        let key = hd_key(&hd)?;
        let system = crate::datatypes::hd_system(&hd);
        // HD universal ids are URIs in their own right (v2-to-FHIR HD[Organization]).
        let identifier = match (&system, hd.s(1)) {
            (Some(sys), _) => json!([{"system": "urn:ietf:rfc:3986", "value": sys}]),
            (None, Some(ns)) => json!([{"value": ns}]),
            _ => Value::Null,
        };
        let org = obj(vec![
            ("resourceType", json!("Organization")),
            ("id", json!(resource_id("Organization", &["MSH-4", &key]))),
            ("identifier", identifier),
            ("active", json!(true)),
            ("name", opt(hd.s(1).or_else(|| hd.s(2)))),
        ]);
        Some(self.push(org))
    }
}
