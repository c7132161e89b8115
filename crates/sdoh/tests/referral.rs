//! Exhaustive check of every (from, to, role) combination of the referral Task state machine.

use sdoh::referral::{REFERRAL_STATUSES, Role, TASK_STATUSES, TransitionError, check_transition};

/// The allowed edges, written out independently of the implementation's tables.
fn expected(from: &str, to: &str) -> Option<Role> {
    use Role::{Owner, Requester};
    Some(match (from, to) {
        ("requested", "accepted" | "rejected") => Owner,
        ("accepted", "in-progress" | "on-hold" | "completed" | "failed") => Owner,
        ("in-progress", "on-hold" | "completed" | "failed") => Owner,
        ("on-hold", "in-progress" | "completed" | "failed") => Owner,
        ("draft", "requested") => Requester,
        ("requested" | "accepted" | "in-progress" | "on-hold", "cancelled") => Requester,
        (f, "entered-in-error") if f != "entered-in-error" => Requester,
        _ => return None,
    })
}

#[test]
fn every_pair_and_role() {
    let mut allowed = 0;
    for from in REFERRAL_STATUSES {
        for to in REFERRAL_STATUSES {
            for by in [Role::Requester, Role::Owner] {
                let got = check_transition(from, to, by);
                if from == to {
                    assert_eq!(got, Ok(()), "{from} unchanged");
                    continue;
                }
                match expected(from, to) {
                    Some(role) if role == by => {
                        assert_eq!(got, Ok(()), "{from} -> {to} by {by:?}");
                        allowed += 1;
                    }
                    Some(role) => assert_eq!(
                        got,
                        Err(TransitionError::WrongRole { from, to, allowed: role }),
                        "{from} -> {to} by {by:?}"
                    ),
                    None => assert_eq!(got, Err(TransitionError::Forbidden { from, to }), "{from} -> {to} by {by:?}"),
                }
            }
        }
    }
    // 12 owner edges + 5 requester edges + 9 entered-in-error edges.
    assert_eq!(allowed, 26);
}

#[test]
fn ready_and_received_are_never_used() {
    for unused in ["ready", "received"] {
        for other in TASK_STATUSES {
            for by in [Role::Requester, Role::Owner] {
                assert_eq!(
                    check_transition(unused, other, by),
                    Err(TransitionError::NotAReferralStatus { status: unused })
                );
                if REFERRAL_STATUSES.contains(&other) {
                    assert_eq!(
                        check_transition(other, unused, by),
                        Err(TransitionError::NotAReferralStatus { status: unused })
                    );
                }
            }
        }
    }
}

#[test]
fn unknown_codes_are_rejected_without_echo() {
    let err = check_transition("requested", "Accepted", Role::Owner).unwrap_err();
    assert_eq!(err, TransitionError::UnknownStatus);
    assert!(!err.to_string().contains("Accepted"));
    assert_eq!(check_transition("", "accepted", Role::Owner), Err(TransitionError::UnknownStatus));
}

#[test]
fn terminal_states_have_no_way_out_but_entered_in_error() {
    for from in ["rejected", "cancelled", "completed", "failed"] {
        for to in REFERRAL_STATUSES {
            if to == from || to == "entered-in-error" {
                continue;
            }
            assert!(matches!(check_transition(from, to, Role::Owner), Err(TransitionError::Forbidden { .. })));
        }
    }
}
