//! Registry definitions: the built-in files, membership as Conditions come and go, pseudonyms, and clear errors for
//! bad definition files.

use chrono::NaiveDate;
use sdoh::registry::{
    Code, ConditionFacts, Content, ICD_10_CM, KeyTooShort, Membership, PseudonymKey, Registries, RegistryDefinition,
    RegistryPatient, SNOMED_CT, birth_year, is_member, pseudonym,
};

fn day(text: &str) -> NaiveDate {
    NaiveDate::parse_from_str(text, "%Y-%m-%d").unwrap()
}

fn registry(id: &str) -> &'static RegistryDefinition {
    Registries::builtin().get(id).unwrap_or_else(|| panic!("built-in registry {id}"))
}

fn condition(system: &str, code: &str, onset: &str) -> ConditionFacts {
    ConditionFacts {
        codes: vec![Code { system: system.into(), code: code.into() }],
        clinical_status: Some("active".into()),
        verification_status: Some("confirmed".into()),
        onset: Some(day(onset)),
        ..ConditionFacts::default()
    }
}

fn adult(conditions: Vec<ConditionFacts>) -> RegistryPatient {
    RegistryPatient { birth_date: Some(day("1960-05-20")), conditions }
}

const AS_OF: &str = "2026-06-30";

fn member(id: &str, patient: &RegistryPatient) -> Option<Membership> {
    is_member(registry(id), patient, day(AS_OF))
}

#[test]
fn builtin_registries_load_with_their_content_and_key_names() {
    let ids: Vec<&str> = Registries::builtin().definitions().iter().map(|r| r.id.as_str()).collect();
    assert_eq!(ids, ["copd-asthma", "diabetes", "ckd"]);
    for definition in Registries::builtin().definitions() {
        assert_eq!(definition.minimum_age, Some(18));
        assert_eq!(definition.pseudonym_key, definition.id);
        assert!(
            definition.content.contains(&Content::SdohScreenings) && definition.content.contains(&Content::Referrals)
        );
    }
}

#[test]
fn condition_codes_by_code_prefix_and_system() {
    let with = |system, code| adult(vec![condition(system, code, "2020-01-01")]);
    // ICD-10-CM prefixes, written with or without the dot and in either case.
    assert!(member("copd-asthma", &with(ICD_10_CM, "J44.1")).is_some());
    assert!(member("copd-asthma", &with(ICD_10_CM, "j441")).is_some());
    assert!(member("copd-asthma", &with(ICD_10_CM, "J45.909")).is_some());
    assert!(member("copd-asthma", &with(ICD_10_CM, "J43.9")).is_none());
    assert!(member("diabetes", &with(ICD_10_CM, "E11.9")).is_some());
    assert!(member("diabetes", &with(ICD_10_CM, "E10.9")).is_none());
    // CKD: stage 3 and its children, 4 and 5 exactly; not stage 2 or ESRD.
    for code in ["N18.3", "N18.30", "N18.31", "N18.32", "N18.4", "N184", "N18.5"] {
        assert!(member("ckd", &with(ICD_10_CM, code)).is_some(), "{code}");
    }
    for code in ["N18.2", "N18.6", "N18.9", "N18"] {
        assert!(member("ckd", &with(ICD_10_CM, code)).is_none(), "{code}");
    }
    // SNOMED CT codes match exactly; the same code under another system does not.
    assert!(member("diabetes", &with(SNOMED_CT, "44054006")).is_some());
    assert!(member("ckd", &with(SNOMED_CT, "700379002")).is_some());
    assert!(member("copd-asthma", &with(SNOMED_CT, "195967001")).is_some());
    assert!(member("diabetes", &with(SNOMED_CT, "4405400")).is_none());
    assert!(member("diabetes", &with("http://example.org/codes", "E11.9")).is_none());
    // Any of a Condition's codings may qualify it.
    let mut both = condition("http://example.org/local", "DM2", "2020-01-01");
    both.codes.push(Code { system: SNOMED_CT.into(), code: "44054006".into() });
    assert!(member("diabetes", &adult(vec![both])).is_some());
}

#[test]
fn a_new_condition_adds_a_member_and_entered_in_error_removes_one() {
    let mut patient = adult(vec![condition(ICD_10_CM, "I10", "2019-03-01")]);
    assert_eq!(member("diabetes", &patient), None);

    patient.conditions.push(condition(ICD_10_CM, "E11.65", "2021-09-14"));
    assert_eq!(
        member("diabetes", &patient),
        Some(Membership { start: Some(day("2021-09-14")), end: None, inactive: false })
    );

    patient.conditions[1].verification_status = Some("entered-in-error".into());
    assert_eq!(member("diabetes", &patient), None);
    patient.conditions[1].verification_status = Some("refuted".into());
    assert_eq!(member("diabetes", &patient), None);
    // Unconfirmed and provisional diagnoses count; so does a Condition without a verification status.
    for status in [Some("unconfirmed"), Some("provisional"), None] {
        patient.conditions[1].verification_status = status.map(Into::into);
        assert!(member("diabetes", &patient).is_some(), "{status:?}");
    }
}

#[test]
fn membership_period_and_remission() {
    let mut earlier = condition(SNOMED_CT, "195967001", "2015-02-01");
    let later = condition(ICD_10_CM, "J44.9", "2022-07-01");
    // Onset missing: the recorded date stands in.
    earlier.onset = None;
    earlier.recorded = Some(day("2016-04-04"));
    let mut patient = adult(vec![later, earlier]);
    assert_eq!(member("copd-asthma", &patient).unwrap().start, Some(day("2016-04-04")));

    // Both resolved with dates: the membership ends at the last abatement and is inactive.
    for (c, abated) in patient.conditions.iter_mut().zip(["2024-01-10", "2023-05-05"]) {
        c.clinical_status = Some("resolved".into());
        c.abatement = Some(day(abated));
    }
    assert_eq!(
        member("copd-asthma", &patient),
        Some(Membership { start: Some(day("2016-04-04")), end: Some(day("2024-01-10")), inactive: true })
    );
    // One still active: no end.
    patient.conditions[0].clinical_status = Some("recurrence".into());
    assert_eq!(
        member("copd-asthma", &patient),
        Some(Membership { start: Some(day("2016-04-04")), end: None, inactive: false })
    );
    // No dates at all: a member with an unknown start.
    let undated = ConditionFacts { onset: None, ..condition(ICD_10_CM, "E11.9", "2000-01-01") };
    assert_eq!(member("diabetes", &adult(vec![undated])).unwrap().start, None);
}

#[test]
fn minimum_age_on_the_evaluation_day() {
    let diagnosed_as_child = condition(ICD_10_CM, "J45.20", "2015-09-01");
    let patient = RegistryPatient { birth_date: Some(day("2008-07-01")), conditions: vec![diagnosed_as_child] };
    // 17 on 2026-06-30, 18 on 2026-07-01; membership starts on the 18th birthday, not at the childhood onset.
    assert_eq!(is_member(registry("copd-asthma"), &patient, day("2026-06-30")), None);
    assert_eq!(
        is_member(registry("copd-asthma"), &patient, day("2026-07-01")),
        Some(Membership { start: Some(day("2026-07-01")), end: None, inactive: false })
    );
    // Without a birth date the age cannot be shown to be 18.
    let unknown_age = RegistryPatient { birth_date: None, ..patient };
    assert_eq!(is_member(registry("copd-asthma"), &unknown_age, day("2026-07-01")), None);
}

const MINIMAL: &str = r#"
id = "site-limited"
title = "Diabetes at two sites"
content = ["conditions"]
pseudonym_key = "SITE_LIMITED_KEY"
source_organizations = ["Organization/clinic-a", "Organization/clinic-b"]

[[inclusion]]
system = "http://hl7.org/fhir/sid/icd-10-cm"
prefix = "E11"
display = "Type 2 diabetes mellitus"
"#;

#[test]
fn source_organizations_limit_which_conditions_count() {
    let definition = RegistryDefinition::from_toml_str("site-limited.toml", MINIMAL).unwrap();
    assert_eq!(definition.minimum_age, None);
    let mut diabetes = condition(ICD_10_CM, "E11.9", "2020-01-01");
    let as_of = day(AS_OF);
    assert_eq!(is_member(&definition, &adult(vec![diabetes.clone()]), as_of), None);
    diabetes.source_organization = Some("Organization/clinic-z".into());
    assert_eq!(is_member(&definition, &adult(vec![diabetes.clone()]), as_of), None);
    diabetes.source_organization = Some("Organization/clinic-b".into());
    assert!(is_member(&definition, &adult(vec![diabetes.clone()]), as_of).is_some());
    // No minimum age: a child with no birth date on file is a member.
    let child = RegistryPatient { birth_date: None, conditions: vec![diabetes] };
    assert!(is_member(&definition, &child, as_of).is_some());
}

#[test]
fn pseudonyms_are_stable_per_registry_and_differ_across_registries() {
    let key = PseudonymKey::new(vec![b'k'; 32]).unwrap();
    let diabetes = pseudonym(&key, "diabetes", "patient-1");
    // HMAC-SHA-256(key = 32 x 'k', "diabetes" 0x00 "patient-1"), first 16 bytes; from Python's hmac module.
    assert_eq!(diabetes, "1cc52ea40e620046b94ea29c098b3d1b");
    assert_eq!(pseudonym(&key, "diabetes", "patient-1"), diabetes);
    assert_eq!(pseudonym(&key, "ckd", "patient-1"), "6b52d60127ed28282ec4462bbe5e9730");
    assert_ne!(pseudonym(&key, "diabetes", "patient-2"), diabetes);
    let other_key = PseudonymKey::new(vec![b'j'; 32]).unwrap();
    assert_ne!(pseudonym(&other_key, "diabetes", "patient-1"), diabetes);
    // The separator keeps the registry and patient ids apart.
    assert_ne!(pseudonym(&key, "ab", "c"), pseudonym(&key, "a", "bc"));
    assert!(diabetes.len() == 32 && diabetes.bytes().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b)));

    assert_eq!(PseudonymKey::new(vec![0u8; 31]).unwrap_err(), KeyTooShort);
    let debug = format!("{key:?}");
    assert!(!debug.contains("107") && !debug.contains('k'), "{debug}");
}

#[test]
fn birth_year_only() {
    assert_eq!(birth_year("1956-04-12"), Some(1956));
    assert_eq!(birth_year("1956-04"), Some(1956));
    assert_eq!(birth_year("1956"), Some(1956));
    for bad in ["", "56", "19x6-01-01", "19560412", "１９５６"] {
        assert_eq!(birth_year(bad), None, "{bad}");
    }
}

fn error_of(text: &str) -> String {
    RegistryDefinition::from_toml_str("bad.toml", text).expect_err("refused").to_string()
}

#[test]
fn bad_definition_files_give_clear_errors() {
    let syntax = error_of("id = \"x\"\ntitle = \n");
    assert!(syntax.starts_with("bad.toml: ") && syntax.contains("line 2"), "{syntax}");

    let with_key = format!("{MINIMAL}\nkey = \"c2VjcmV0\"\n");
    let unknown = error_of(&with_key);
    assert!(unknown.contains("unknown field `key`"), "{unknown}");

    let missing = error_of(&MINIMAL.replace("pseudonym_key = \"SITE_LIMITED_KEY\"\n", ""));
    assert!(missing.contains("missing field `pseudonym_key`"), "{missing}");

    let cases = [
        (MINIMAL.replace("\"SITE_LIMITED_KEY\"", "\"base64:c2VjcmV0/+==\""), "pseudonym_key must be a key name"),
        (MINIMAL.replace("prefix = \"E11\"", "prefix = \"E11\"\ncode = \"E11.9\""), "exactly one of code and prefix"),
        (MINIMAL.replace("prefix = \"E11\"", "prefix = \"11E\""), "not an ICD-10-CM code or prefix"),
        (
            MINIMAL.replace("http://hl7.org/fhir/sid/icd-10-cm", "http://snomed.info/sct").replace("E11", "44054"),
            "SNOMED CT has no prefix matching",
        ),
        (MINIMAL.replace("http://hl7.org/fhir/sid/icd-10-cm", "icd10"), "is neither"),
        (MINIMAL.replace("content = [\"conditions\"]", "content = []"), "content must list"),
        (MINIMAL.replace("content = [\"conditions\"]", "content = [\"conditions\", \"conditions\"]"), "each once"),
        (MINIMAL.replace("id = \"site-limited\"", "id = \"Site Limited\""), "id must be"),
        (MINIMAL.replace("\"Organization/clinic-a\"", "\" \""), "empty entry"),
        (MINIMAL.split("[[inclusion]]").next().unwrap().to_owned(), "inclusion"),
    ];
    for (text, expected) in cases {
        let error = error_of(&text);
        assert!(error.contains(expected) && error.starts_with("bad.toml: "), "{expected:?} not in {error:?}");
    }
    let unknown_content = error_of(&MINIMAL.replace("[\"conditions\"]", "[\"labs\"]"));
    assert!(unknown_content.contains("unknown variant `labs`"), "{unknown_content}");

    let mut registries = Registries::default();
    registries.add_toml_str("a.toml", MINIMAL).unwrap();
    let duplicate = registries.add_toml_str("b.toml", MINIMAL).unwrap_err().to_string();
    assert!(duplicate.contains("b.toml") && duplicate.contains("another registry has this id"), "{duplicate}");
    assert_eq!(registries.definitions().len(), 1);
}
