//! Thin views over `hl7v2` segments and composites that yield cleaned text and name locations for errors.

use hl7v2::{Component, Field, Message, Repetition, Segment, Subcomponent, Value};

/// Decoded, trimmed text; `None` for absent, empty or explicit-null (`""`) values.
pub(crate) fn clean(v: Value<'_>) -> Option<String> {
    if v.is_empty() || v.is_null() {
        return None;
    }
    let t = v.text();
    let t = t.trim();
    (!t.is_empty()).then(|| t.to_owned())
}

/// True when `clean` would give `None`, without building the string.
fn blank(v: Value<'_>) -> bool {
    if v.is_empty() || v.is_null() {
        return true;
    }
    // Raw bytes that are all ASCII whitespace decode to whitespace only (escape sequences start with a
    // non-space delimiter); anything else needs the decoded text.
    if v.raw().iter().all(u8::is_ascii_whitespace) {
        return true;
    }
    v.text().trim().is_empty()
}

/// The parts of one composite value: the components of a repetition, or the subcomponents of a component
/// (a composite nested as a component, such as CX-4 HD).
#[derive(Debug, Clone)]
pub(crate) enum Parts<'a> {
    Comps(Vec<Component<'a>>),
    Subs(Vec<Subcomponent<'a>>),
}

impl<'a> Parts<'a> {
    pub fn of(rep: Repetition<'a>) -> Self {
        Parts::Comps(rep.components().collect())
    }

    /// Text of part `n` (1-based).
    pub fn s(&self, n: usize) -> Option<String> {
        let i = n.checked_sub(1)?;
        match self {
            Parts::Comps(c) => clean(c.get(i)?.value()),
            Parts::Subs(s) => clean(s.get(i)?.value()),
        }
    }

    /// Part `n` viewed as a nested composite.
    pub fn sub(&self, n: usize) -> Parts<'a> {
        let i = n.saturating_sub(1);
        match self {
            Parts::Comps(c) => Parts::Subs(c.get(i).map(|c| c.subcomponents().collect()).unwrap_or_default()),
            Parts::Subs(s) => Parts::Subs(s.get(i).copied().into_iter().collect()),
        }
    }

    /// True when no part has text.
    pub fn is_blank(&self) -> bool {
        match self {
            Parts::Comps(c) => c.iter().all(|c| blank(c.value())),
            Parts::Subs(s) => s.iter().all(|s| blank(s.value())),
        }
    }
}

/// A segment with its occurrence number among segments of the same id, for locations like `OBX[2]-5`.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Seg<'a> {
    seg: Segment<'a>,
    occurrence: usize,
}

impl<'a> Seg<'a> {
    pub fn id(&self) -> &'a str {
        self.seg.id()
    }

    /// Location of field `n` in hl7v2 path style; the occurrence is shown only after the first.
    pub fn loc(&self, n: usize) -> String {
        if self.occurrence > 1 {
            format!("{}[{}]-{n}", self.id(), self.occurrence)
        } else {
            format!("{}-{n}", self.id())
        }
    }

    fn field(&self, n: usize) -> Option<Field<'a>> {
        self.seg.field(n)
    }

    /// Non-blank repetitions of field `n`, each as a composite.
    pub fn reps(&self, n: usize) -> Vec<Parts<'a>> {
        self.field(n).map(|f| f.repetitions().map(Parts::of).filter(|p| !p.is_blank()).collect()).unwrap_or_default()
    }

    /// First non-blank repetition of field `n`.
    pub fn first(&self, n: usize) -> Option<Parts<'a>> {
        self.field(n)?.repetitions().map(Parts::of).find(|p| !p.is_blank())
    }

    /// The segment with its occurrence, e.g. `OBX[3]`, for naming a whole row in warnings.
    pub fn label(&self) -> String {
        format!("{}[{}]", self.id(), self.occurrence)
    }

    /// Text of component `c` of the first repetition of field `n`.
    pub fn comp(&self, n: usize, c: usize) -> Option<String> {
        self.field(n)?.repetition(1)?.component(c).and_then(|v| clean(v.value()))
    }

    /// Text of the first component of field `n` (the whole value for primitive fields).
    pub fn text(&self, n: usize) -> Option<String> {
        self.comp(n, 1)
    }

    /// Text of component 1 of every repetition of field `n`.
    pub fn rep_texts(&self, n: usize) -> Vec<String> {
        self.reps(n).iter().filter_map(|p| p.s(1)).collect()
    }
}

/// All segments in order, each with its occurrence number.
pub(crate) fn segments<'a>(msg: &Message<'a>) -> Vec<Seg<'a>> {
    let mut counts: Vec<(&'a str, usize)> = Vec::new();
    msg.segments()
        .map(|seg| {
            let id = seg.id();
            let occurrence = match counts.iter_mut().find(|(i, _)| *i == id) {
                Some((_, n)) => {
                    *n += 1;
                    *n
                }
                None => {
                    counts.push((id, 1));
                    1
                }
            };
            Seg { seg, occurrence }
        })
        .collect()
}
