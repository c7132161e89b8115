//! Checks that every vendored R4 search parameter of the gateway's resource types loads, or is explicitly listed.

use fhir_server::search::{GATEWAY_RESOURCE_TYPES, NOT_INDEXED_CODES, SearchParamRegistry};

/// Parameters of our types that the registry is allowed not to load, with the reason. Empty: every R4 expression
/// of our types is inside the supported FHIRPath subset. A vendoring update that adds an unsupported construct
/// fails this test until the evaluator learns it or the parameter is listed here with a reason.
const KNOWN_UNSUPPORTED: &[(&str, &str)] = &[];

const DEFINITIONS: &str = include_str!("../../../profiles/fhir/r4/search-parameters.json");

#[test]
fn every_parameter_of_our_types_loads_or_is_listed() {
    let registry = SearchParamRegistry::r4().expect("embedded definitions load");
    let unsupported: Vec<(&str, &str)> =
        registry.unsupported().iter().map(|u| (u.url.as_str(), u.reason.as_str())).collect();
    let unexpected: Vec<_> =
        unsupported.iter().filter(|(url, _)| !KNOWN_UNSUPPORTED.iter().any(|(known, _)| known == url)).collect();
    assert!(unexpected.is_empty(), "unsupported search parameters not on the documented list: {unexpected:#?}");

    // Cross-check against the vendored file itself: each (type, code) it defines for our types is in the registry.
    let bundle: serde_json::Value = serde_json::from_str(DEFINITIONS).unwrap();
    let mut expected = 0;
    for entry in bundle["entry"].as_array().unwrap() {
        let sp = &entry["resource"];
        let url = sp["url"].as_str().unwrap();
        let code = sp["code"].as_str().unwrap();
        let base: Vec<&str> = sp["base"].as_array().unwrap().iter().filter_map(|b| b.as_str()).collect();
        let common = base.contains(&"Resource") || base.contains(&"DomainResource");
        for ty in GATEWAY_RESOURCE_TYPES {
            if !(common || base.contains(ty)) {
                continue;
            }
            expected += 1;
            let listed = KNOWN_UNSUPPORTED.iter().any(|(known, _)| *known == url);
            let loaded = registry.get(ty, code);
            assert!(loaded.is_some() || listed, "{ty}.{code} ({url}) neither loaded nor listed");
            if let Some(p) = loaded {
                assert_eq!(p.def.url, url, "{ty}.{code} resolved to another definition");
                assert!(
                    p.is_indexed() || NOT_INDEXED_CODES.contains(&code),
                    "{ty}.{code} has no expression but is not a server-answered parameter"
                );
            }
        }
    }
    let loaded: usize = GATEWAY_RESOURCE_TYPES.iter().map(|t| registry.params_for(t).count()).sum();
    assert_eq!(loaded, expected);
}

#[test]
fn common_parameters_apply_to_every_type() {
    let registry = SearchParamRegistry::r4().unwrap();
    for ty in GATEWAY_RESOURCE_TYPES {
        for code in ["_id", "_lastUpdated", "_tag", "_profile", "_security", "_source"] {
            let p = registry.get(ty, code).unwrap_or_else(|| panic!("{ty}.{code} missing"));
            assert!(p.is_indexed(), "{ty}.{code}");
        }
        let own = registry.params_for(ty).filter(|p| !p.code().starts_with('_')).count();
        assert!(own > 0, "{ty} has no parameters of its own");
    }
}

/// Prints the per-type counts (`cargo test -p fhir-server --test registry -- --nocapture`), handy in reviews.
#[test]
fn report_counts() {
    let registry = SearchParamRegistry::r4().unwrap();
    for ty in GATEWAY_RESOURCE_TYPES {
        let all = registry.params_for(ty).count();
        let indexed = registry.params_for(ty).filter(|p| p.is_indexed()).count();
        println!("{ty:<22} {all:>3} parameters ({indexed} indexed)");
    }
}
