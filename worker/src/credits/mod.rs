//! Credits: the plan catalog and the ledger that every balance change goes
//! through (`SPEC.md` sections 6 and 9.2–9.3).

pub mod adjust;
pub mod catalog;
pub mod ledger;

pub use catalog::Catalog;
