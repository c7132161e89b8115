//! Pure SDOH logic: screening QuestionnaireResponses -> SDOHCC Observations, health-concern Conditions and
//! Provenance (SDOH Clinical Care IG 2.2.0), plus the referral Task state machine ([`referral`]), the equity
//! measures ([`measures`]: definitions, evaluator, statistics, suppression) and registry definitions, membership
//! and pseudonyms ([`registry`]).
//!
//! Instruments are data (`profiles/sdoh/instruments/*.json`; domains and Condition codes in
//! `profiles/sdoh/domains.json`), embedded at compile time and parsed once; see `profiles/sdoh/README.md`.
//!
//! # What [`normalize`] derives from one QuestionnaireResponse version
//! - Recognition: `questionnaire` canonical (with or without `|version`), else the item codes (a LOINC `item.code`
//!   or the linkId's last `/` segment, so `/88122-7`, `88122-7`, `/93042-0/71802-3` all work; nested `item.item`
//!   and `answer.item` are searched). Without a canonical, an item only counts if its answer codes fit the
//!   instrument, and at least half of the QR's LOINC-coded items must be the instrument's.
//! - One SDOHCC-ObservationScreeningResponse per answered item (per selected answer for multi-select items), the
//!   instrument's computed items (HVS 88124-3 risk, AHC HITS total), and a panel Observation with `hasMember`.
//!   A computed item's rule wins over a value supplied in the QR; a supplied value alone is kept.
//!   `interpretation` POS only for answers that signal a need (never NEG).
//! - One SDOHCC-Condition (health concern, `unconfirmed`, onset = authored) per domain at risk that has Condition
//!   codes; evidence = the positive computed risk Observation if the domain has one (as in the IG example), else
//!   the positive answers.
//! - A Provenance last: targets = all of the above, entity `source` = `QuestionnaireResponse/<id>/_history/<vid>`,
//!   agent = `Context::agent` (type `assembler`), recorded = `Context::recorded`.
//!
//! # Idempotence, amendments, retraction
//! Ids are [`derived_id`]s of (QR id, kind, item code / domain), identical for every version of the QR, so any
//! new version (status `amended`, or a plain update) overwrites the same resources. Status mapping:
//! `completed`/`stopped` -> Observation `final`; `amended` -> `corrected` (the profile's required status set has no
//! `amended`); `entered-in-error` -> every derived resource `entered-in-error` (Condition: verificationStatus
//! `entered-in-error` and no clinicalStatus, per con-5); `in-progress` -> `Ok(None)`.
//! [`Derived::retractions`] lists every other id the instrument could derive from this QR; where one exists, the
//! caller replaces it with [`retract`] of the stored resource (the record kept, its status `entered-in-error`). A Condition whose domain is no longer at
//! risk after an amendment is retracted as `entered-in-error` rather than `resolved`: an amendment corrects the
//! screening it was derived from (the concern was asserted on wrong data), it does not report that the need went
//! away — a later screening (a new QR) does that, and gets its own Condition.
//! An `entered-in-error` QR whose items were stripped is only recognised through its `questionnaire` canonical; it
//! then derives nothing and retracts every possible id.

mod ids;
pub mod instrument;
pub mod measures;
mod normalize;
pub mod referral;
pub mod registry;

pub use ids::derived_id;
pub use instrument::{DefinitionError, Instrument, Instruments};
pub use normalize::{Context, Derived, NormalizeError, Retraction, normalize, normalize_with, retract};
