//! A plan catalog written to a file for `CREDIT_PLANS`, removed on drop.

use std::path::PathBuf;

/// A temporary catalog file.
pub struct PlansFile(PathBuf);

impl PlansFile {
    /// Writes `toml` to a fresh file.
    pub fn write(toml: &str) -> Self {
        let path =
            std::env::temp_dir().join(format!("plans-{}.toml", uuid::Uuid::new_v4().simple()));
        std::fs::write(&path, toml).expect("write the plan catalog");
        Self(path)
    }

    /// The path, for `CREDIT_PLANS`.
    pub fn path(&self) -> String {
        self.0.display().to_string()
    }
}

impl Drop for PlansFile {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}
