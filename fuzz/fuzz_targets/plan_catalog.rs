//! `worker::credits::Catalog::parse` on arbitrary text: nothing panics, a
//! refusal names the file, and an accepted catalog says exactly what a plain
//! TOML parse of the same text says: every plan and pack with its credits
//! (0 to `i32::MAX`), no slug both a plan and a pack, and the default plan
//! among the plans.
#![no_main]

use libfuzzer_sys::fuzz_target;
use toml::{Table, Value};
use worker::credits::Catalog;

const PATH: &str = "fuzz/plans.toml";

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let catalog = match Catalog::parse(text, PATH) {
        Ok(catalog) => catalog,
        Err(error) => {
            assert!(error.to_string().contains(PATH), "{error}");
            return;
        }
    };
    let table: Table = toml::from_str(text).expect("an accepted catalog is TOML");
    let section = |name: &str| {
        table
            .get(name)
            .map(|section| section.as_table().expect("a section is a table").clone())
            .unwrap_or_default()
    };
    let plans = section("plans");
    let packs = section("packs");
    for (slug, entry) in &plans {
        assert_eq!(catalog.plan(slug), Some(credits(entry)), "plan {slug}");
        assert_eq!(catalog.pack(slug), None, "{slug} is a plan and a pack");
    }
    for (slug, entry) in &packs {
        assert_eq!(catalog.pack(slug), Some(credits(entry)), "pack {slug}");
        assert_eq!(catalog.plan(slug), None, "{slug} is a plan and a pack");
    }
    assert_eq!(catalog.is_empty(), plans.is_empty() && packs.is_empty());
    match table.get("default_plan") {
        Some(Value::String(slug)) => {
            let credits = credits(&plans[slug]);
            assert_eq!(catalog.default_plan(), Some((slug.as_str(), credits)));
        }
        None => assert_eq!(catalog.default_plan(), None),
        Some(other) => panic!("default_plan {other:?} accepted"),
    }
    for key in table.keys() {
        assert!(
            ["default_plan", "plans", "packs"].contains(&key.as_str()),
            "unknown key {key} accepted"
        );
    }
});

/// The credits of one `[plans.x]` or `[packs.x]` entry, which the catalog
/// accepted: an integer from 0 to `i32::MAX`, and nothing else in the entry.
fn credits(entry: &Value) -> i32 {
    let entry = entry.as_table().expect("an entry is a table");
    assert_eq!(entry.len(), 1, "an entry has only credits: {entry:?}");
    let credits = entry["credits"]
        .as_integer()
        .expect("credits is an integer");
    let credits = i32::try_from(credits).expect("credits fit an i32");
    assert!(credits >= 0, "negative credits accepted");
    credits
}
