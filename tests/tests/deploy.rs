//! The monitoring files in `deploy/` refer only to metrics the services export.

#![allow(clippy::unwrap_used)]

use std::{collections::BTreeSet, path::Path};

fn repo_file(path: &str) -> String {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap();
    std::fs::read_to_string(root.join(path)).unwrap()
}

/// Every `clerk_…` metric name a text mentions.
fn metric_names(text: &str) -> BTreeSet<String> {
    let mut names = BTreeSet::new();
    let bytes = text.as_bytes();
    let mut i = 0;
    while let Some(offset) = text[i..].find("clerk_") {
        let start = i + offset;
        let boundary =
            start == 0 || !(bytes[start - 1].is_ascii_alphanumeric() || bytes[start - 1] == b'_');
        let end = start
            + text[start..]
                .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
                .unwrap_or(text.len() - start);
        if boundary
            && (text[start..end].starts_with("clerk_ingress_")
                || text[start..end].starts_with("clerk_worker_"))
        {
            names.insert(text[start..end].to_owned());
        }
        i = end;
    }
    names
}

/// The sample names the services render.
fn exported() -> BTreeSet<String> {
    let ingress = ingress::metrics::Metrics::default().render();
    let worker = worker::metrics::Metrics::default();
    worker.latency("user.created", 0.1);
    let worker = worker.render();
    ingress
        .lines()
        .chain(worker.lines())
        .filter(|line| !line.starts_with('#') && !line.is_empty())
        .filter_map(|line| line.split(['{', ' ']).next())
        .map(str::to_owned)
        .collect()
}

#[test]
fn the_dashboard_is_json_and_every_metric_it_queries_is_exported() {
    let dashboard = repo_file("deploy/grafana/clerk-events.json");
    let parsed: serde_json::Value = serde_json::from_str(&dashboard).unwrap();
    assert!(parsed["panels"].as_array().is_some_and(|p| !p.is_empty()));
    let exported = exported();

    let unknown: Vec<String> = metric_names(&dashboard)
        .into_iter()
        .filter(|n| !exported.contains(n))
        .collect();

    assert!(
        unknown.is_empty(),
        "the dashboard queries metrics nobody exports: {unknown:?}"
    );
}

#[test]
fn every_metric_the_alert_rules_use_is_exported() {
    let rules = repo_file("deploy/prometheus/alerts.yml");
    let exported = exported();

    let unknown: Vec<String> = metric_names(&rules)
        .into_iter()
        .filter(|n| !exported.contains(n))
        .collect();

    assert!(!metric_names(&rules).is_empty());
    assert!(
        unknown.is_empty(),
        "the alert rules use metrics nobody exports: {unknown:?}"
    );
}
