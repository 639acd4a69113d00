//! The plan catalog (`CREDIT_PLANS`, a TOML file): how many credits each plan
//! grants per period and each pack adds.

use std::{collections::BTreeMap, path::Path};

use serde::Deserialize;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct CatalogFile {
    default_plan: Option<String>,
    #[serde(default)]
    plans: BTreeMap<String, Entry>,
    #[serde(default)]
    packs: BTreeMap<String, Entry>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Entry {
    credits: i64,
}

/// A validated catalog.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Catalog {
    default_plan: Option<String>,
    plans: BTreeMap<String, i32>,
    packs: BTreeMap<String, i32>,
}

/// Why a catalog was refused.
#[derive(Debug, thiserror::Error)]
pub enum CatalogError {
    #[error("cannot read the plan catalog {path}")]
    Read {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("the plan catalog {path} is not valid: {message}")]
    Parse { path: String, message: String },
    #[error("the plan catalog {path} names default_plan \"{plan}\", which is not under [plans]")]
    UnknownDefault { path: String, plan: String },
    #[error("the plan catalog {path} gives \"{slug}\" {credits} credits; use 0 to {max}")]
    BadCredits {
        path: String,
        slug: String,
        credits: i64,
        max: i32,
    },
    #[error("the plan catalog {path} lists \"{slug}\" both as a plan and as a pack")]
    Ambiguous { path: String, slug: String },
}

impl Catalog {
    /// Reads and validates the file at `path`.
    pub fn load(path: &Path) -> Result<Self, CatalogError> {
        let shown = path.display().to_string();
        let text = std::fs::read_to_string(path).map_err(|source| CatalogError::Read {
            path: shown.clone(),
            source,
        })?;
        Self::parse(&text, &shown)
    }

    /// Validates a catalog's text; `path` only names it in errors.
    pub fn parse(text: &str, path: &str) -> Result<Self, CatalogError> {
        let file: CatalogFile = toml::from_str(text).map_err(|e| CatalogError::Parse {
            path: path.to_owned(),
            message: e.message().to_owned(),
        })?;
        let check = |entries: BTreeMap<String, Entry>| {
            entries
                .into_iter()
                .map(|(slug, entry)| match i32::try_from(entry.credits) {
                    Ok(credits) if credits >= 0 => Ok((slug, credits)),
                    _ => Err(CatalogError::BadCredits {
                        path: path.to_owned(),
                        slug,
                        credits: entry.credits,
                        max: i32::MAX,
                    }),
                })
                .collect::<Result<BTreeMap<_, _>, _>>()
        };
        let plans = check(file.plans)?;
        let packs = check(file.packs)?;
        if let Some(slug) = plans.keys().find(|slug| packs.contains_key(*slug)) {
            return Err(CatalogError::Ambiguous {
                path: path.to_owned(),
                slug: slug.clone(),
            });
        }
        if let Some(default) = &file.default_plan {
            if !plans.contains_key(default) {
                return Err(CatalogError::UnknownDefault {
                    path: path.to_owned(),
                    plan: default.clone(),
                });
            }
        }
        Ok(Self {
            default_plan: file.default_plan,
            plans,
            packs,
        })
    }

    /// Credits a plan grants per period, if the plan is in the catalog.
    pub fn plan(&self, slug: &str) -> Option<i32> {
        self.plans.get(slug).copied()
    }

    /// Credits a pack adds, if the pack is in the catalog.
    pub fn pack(&self, slug: &str) -> Option<i32> {
        self.packs.get(slug).copied()
    }

    /// The plan an account falls back to when its plan ends, with its credits.
    pub fn default_plan(&self) -> Option<(&str, i32)> {
        let slug = self.default_plan.as_deref()?;
        Some((slug, self.plan(slug)?))
    }

    pub fn is_empty(&self) -> bool {
        self.plans.is_empty() && self.packs.is_empty()
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    const EXAMPLE: &str = r#"
default_plan = "free_user"
[plans.free_user]
credits = 10
[plans.pro]
credits = 1000
[packs.credits_500]
credits = 500
"#;

    #[test]
    fn the_documented_example_parses() {
        let catalog = Catalog::parse(EXAMPLE, "plans.toml").unwrap();
        assert_eq!(catalog.plan("pro"), Some(1000));
        assert_eq!(catalog.pack("credits_500"), Some(500));
        assert_eq!(catalog.plan("credits_500"), None);
        assert_eq!(catalog.default_plan(), Some(("free_user", 10)));
    }

    #[test]
    fn an_unknown_default_plan_is_refused_with_its_name() {
        let error = Catalog::parse(
            "default_plan = \"gold\"\n[plans.pro]\ncredits = 1\n",
            "p.toml",
        )
        .unwrap_err();
        assert!(error.to_string().contains("\"gold\""), "{error}");
    }

    #[test]
    fn bad_files_are_refused() {
        for text in [
            "default_plan = ",
            "[plans.pro]\ncredits = -1\n",
            "[plans.pro]\ncredits = 99999999999\n",
            "[plans.pro]\ncredits = \"many\"\n",
            "[plans.pro]\ncreditz = 1\n",
            "[plans.x]\ncredits = 1\n[packs.x]\ncredits = 1\n",
            "surprise = true\n",
        ] {
            assert!(Catalog::parse(text, "p.toml").is_err(), "{text}");
        }
    }
}
