use super::*;
use crate::crd::{ModelEndpointSpec, VariantSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;

const WHO: Claimant = Claimant {
    namespace: "team-b",
    name: "titanic",
    cluster_domain: "cluster.local",
};

fn refused(host: &str) -> String {
    classify(host, &WHO).expect_err(host)
}

#[test]
fn the_endpoints_own_service_names_may_be_claimed_in_every_spelling() {
    for h in [
        "titanic",
        "titanic.team-b",
        "titanic.team-b.svc",
        "titanic.team-b.svc.cluster.local",
        "Titanic.Team-B.svc.cluster.local.",
    ] {
        assert_eq!(classify(h, &WHO), Ok(HostKind::OwnService), "{h}");
    }
}

#[test]
fn external_names_and_their_wildcards_may_be_claimed() {
    for h in [
        "titanic.example.com",
        "*.example.com",
        "api.models.example.ai",
        "*.models.example.ai",
    ] {
        assert_eq!(classify(h, &WHO), Ok(HostKind::External), "{h}");
    }
}

#[test]
fn another_namespaces_service_is_refused_in_every_spelling_naming_that_namespace() {
    for h in [
        "alpha.team-a.svc.cluster.local",
        "alpha.team-a.svc",
        "alpha.team-a",
        "titanic.team-a.svc.cluster.local",
        "titanic.team-a",
    ] {
        let why = refused(h);
        assert!(
            why.contains("team-a") || why.contains("in-cluster"),
            "{h}: {why}"
        );
        assert!(why.contains(&format!("{:?}", normalize(h))), "{h}: {why}");
    }
    assert!(refused("alpha.team-a").contains("namespace \"team-a\""));
}

#[test]
fn another_service_of_the_endpoints_own_namespace_is_refused() {
    for h in [
        "iris",
        "iris.team-b",
        "iris.team-b.svc",
        "iris.team-b.svc.cluster.local",
    ] {
        let why = refused(h);
        assert!(
            why.contains("iris") && why.contains("titanic.team-b"),
            "{h}: {why}"
        );
    }
    // The shadow's Service is the operator's, not a host of the endpoint.
    refused("titanic-shadow");
}

#[test]
fn wildcards_that_could_match_a_service_name_and_the_bare_star_are_refused() {
    for h in [
        "*",
        "*.team-a",
        "*.svc",
        "*.team-a.svc",
        "*.cluster.local",
        "*.local",
        "*.svc.cluster.local",
    ] {
        refused(h);
    }
    assert!(refused("*").contains("every host"));
}

#[test]
fn two_label_apex_names_are_refused_as_mesh_names_whatever_namespaces_exist() {
    let why = refused("example.ai");
    assert!(why.contains("namespace \"ai\""), "{why}");
}

#[test]
fn another_cluster_domain_is_read_from_the_claimant() {
    let who = Claimant {
        cluster_domain: "corp.internal",
        ..WHO
    };
    assert_eq!(
        classify("titanic.team-b.svc.corp.internal", &who),
        Ok(HostKind::OwnService)
    );
    assert!(classify("alpha.team-a.svc.corp.internal", &who).is_err());
    assert!(classify("*.corp.internal", &who).is_err());
    assert!(classify("*.internal", &who).is_err());
}

fn endpoint(ns: &str, name: &str, hosts: &[&str], created: Option<&str>) -> ModelEndpoint {
    let mut e = ModelEndpoint::new(
        name,
        ModelEndpointSpec::new(
            hosts.iter().map(|h| (*h).to_owned()).collect(),
            vec![VariantSpec::new("a", "m1", 100)],
        ),
    );
    e.metadata.namespace = Some(ns.into());
    e.metadata.creation_timestamp = created.map(|t| Time(t.parse().unwrap()));
    e
}

const EARLY: Option<&str> = Some("2026-01-01T00:00:00Z");
const LATE: Option<&str> = Some("2026-01-01T00:00:05Z");

#[test]
fn the_endpoint_created_first_keeps_a_host_whatever_the_order_seen() {
    // "z/first" sorts after "a/second" by name: creation decides, not the name.
    let first = endpoint(
        "z",
        "first",
        &["shared.example.com", "z.example.com"],
        EARLY,
    );
    let second = endpoint(
        "a",
        "second",
        &["Shared.Example.com.", "a.example.com"],
        LATE,
    );
    for eps in [
        [first.clone(), second.clone()],
        [second.clone(), first.clone()],
    ] {
        let claims = host_owners(&eps, "cluster.local");
        assert_eq!(claims.holder("shared.example.com"), Some("z/first"));
        assert_eq!(claims.holder("a.example.com"), Some("a/second"));
        assert!(claims.held_by_others(&first).is_empty());
        assert_eq!(
            claims.held_by_others(&second),
            [Held {
                index: 0,
                host: "Shared.Example.com.".into(),
                holder: "z/first".into(),
            }]
        );
    }
}

#[test]
fn deleting_the_first_hands_the_host_to_the_next_created() {
    let mut first = endpoint("z", "first", &["shared.example.com"], EARLY);
    let second = endpoint("a", "second", &["shared.example.com"], LATE);
    let third = endpoint(
        "m",
        "third",
        &["shared.example.com"],
        Some("2026-01-02T00:00:00Z"),
    );
    let without = host_owners(&[second.clone(), third.clone()], "cluster.local");
    assert_eq!(without.holder("shared.example.com"), Some("a/second"));
    assert_eq!(without.held_by_others(&third)[0].holder, "a/second");
    // Being deleted (finalizer pending) already hands it over.
    first.metadata.deletion_timestamp = Some(Time("2026-01-03T00:00:00Z".parse().unwrap()));
    let going = host_owners(&[first, third, second], "cluster.local");
    assert_eq!(going, without);
}

#[test]
fn equal_creation_times_fall_back_to_namespace_and_name_and_unstamped_endpoints_come_last() {
    let a = endpoint("a", "x", &["h.example.com"], EARLY);
    let b = endpoint("b", "x", &["h.example.com"], EARLY);
    let c = endpoint("0", "x", &["h.example.com"], None);
    let claims = host_owners(&[c, b, a], "cluster.local");
    assert_eq!(claims.holder("h.example.com"), Some("a/x"));
}

#[test]
fn service_names_are_never_claims_so_namesakes_in_two_namespaces_do_not_conflict() {
    let a = endpoint("team-a", "titanic", &["titanic", "titanic.team-a"], EARLY);
    let b = endpoint("team-b", "titanic", &["titanic", "alpha.team-a"], LATE);
    let claims = host_owners(&[a.clone(), b.clone()], "cluster.local");
    assert!(claims.held_by_others(&a).is_empty() && claims.held_by_others(&b).is_empty());
    assert_eq!(claims.holder("titanic"), None);
    assert!(
        share_a_host(&a, &b) && !share_a_host(&a, &endpoint("c", "d", &["x.example.com"], None))
    );
}

#[test]
fn an_ip_address_is_refused_as_a_host() {
    for h in ["169.254.169.254", "10.96.0.1", "1.2.3.4"] {
        let why = refused(h);
        assert!(why.contains("is an IP address"), "{h}: {why}");
    }
    for h in ["*.0.0.1", "*.168.1.10"] {
        let why = refused(h);
        assert!(why.contains("matches IP addresses"), "{h}: {why}");
    }
    // A name that merely starts with digits is a name.
    assert_eq!(classify("1.example.com", &WHO), Ok(HostKind::External));
}

#[test]
fn the_operators_host_patterns_give_each_namespace_its_own_names() {
    let patterns = [
        "*.{namespace}.models.example.com".to_owned(),
        "{namespace}.mlep.test".to_owned(),
    ];
    for ok in [
        "titanic.team-b.models.example.com",
        "a.b.team-b.models.example.com",
        "*.team-b.models.example.com",
        "*.x.team-b.models.example.com",
        "team-b.mlep.test",
        "Team-B.mlep.test.",
    ] {
        assert_eq!(permitted(ok, "team-b", &patterns), Ok(()), "{ok}");
    }
    for refused in [
        "titanic.team-a.models.example.com",
        "team-b.models.example.com",
        "*.models.example.com",
        "api.bank.example",
        "x.team-b.mlep.test",
        "*.team-b.mlep.test",
    ] {
        let why = permitted(refused, "team-b", &patterns).expect_err(refused);
        assert!(
            why.contains("MLEP_ALLOWED_HOSTS") && why.contains("{namespace}.mlep.test"),
            "{why}"
        );
    }
    assert_eq!(
        permitted("api.bank.example", "team-b", &[]),
        Ok(()),
        "no patterns: any"
    );
}

#[test]
fn a_host_the_accepted_spec_still_serves_is_held_after_an_edit_dropped_it() {
    let mut older = endpoint("a", "older", &["h.example.com"], EARLY);
    let served = older.spec.clone();
    older.spec.hosts = vec!["other.example.com".into()];
    older.status = Some(crate::crd::ModelEndpointStatus {
        served_spec: Some(served),
        ..Default::default()
    });
    let younger = endpoint("b", "younger", &["h.example.com"], LATE);
    let claims = host_owners(&[younger.clone(), older.clone()], "cluster.local");
    assert_eq!(claims.holder("h.example.com"), Some("a/older"));
    assert_eq!(claims.held_by_others(&younger)[0].holder, "a/older");
    // Once the edit is accepted, the host is free.
    older.status = None;
    let claims = host_owners(&[younger.clone(), older], "cluster.local");
    assert_eq!(claims.holder("h.example.com"), Some("b/younger"));
}
