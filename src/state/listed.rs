//! The cloud models on offer: `models.csv` (or its embedded default) applied to the catalog.

use std::path::Path;
use std::sync::Arc;

use super::catalog::{self, Catalog, Model};
use crate::error::Error;
use crate::util::fs::{read_config, without_bom};

/// The cloud models on offer, in whitelist order. Shared: a request takes its model
/// without copying it.
#[derive(Debug, Default)]
pub struct Listed {
    pub models: Vec<Arc<Model>>,
}

impl Listed {
    pub fn new(models: Vec<Model>) -> Listed {
        Listed {
            models: models.into_iter().map(Arc::new).collect(),
        }
    }

    /// A listed model by short code or id, in any case (see [`catalog::find`]).
    pub fn get(&self, name: &str) -> Option<&Arc<Model>> {
        catalog::find(&self.models, name, |m| &**m)
    }

    /// Reads the whitelist file (or the embedded default when it does not exist) and applies
    /// it to the catalog. Unknown short codes are ignored with a WARN naming them (the
    /// first [`NAMED_UNKNOWN`]; one more line counts the rest, so that a file of junk does
    /// not fill a small box's journal at every reload). A path that is not a regular file,
    /// or a file over [`MAX_FILE`], is an error (see [`read_config`]).
    pub fn load(catalog: &Catalog, path: &Path) -> Result<Listed, Error> {
        let text = match read_config(path, MAX_FILE) {
            Ok(bytes) => String::from_utf8(without_bom(bytes)).map_err(|e| Error::File {
                path: path.to_path_buf(),
                line: 0,
                column: 0,
                message: format!(
                    "not UTF-8 (bad byte at offset {})",
                    e.utf8_error().valid_up_to()
                ),
            })?,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                catalog::DEFAULT_WHITELIST.to_string()
            }
            Err(e) => return Err(Error::io(path, &e)),
        };
        let (models, unknown) = catalog.select(&catalog::parse_whitelist(&text));
        for code in unknown.iter().take(NAMED_UNKNOWN) {
            log::warn!(file = path.display().to_string(), code = code.as_str(); "unknown model short code ignored");
        }
        if unknown.len() > NAMED_UNKNOWN {
            log::warn!(
                file = path.display().to_string(),
                more = unknown.len() - NAMED_UNKNOWN;
                "more unknown model short codes ignored"
            );
        }
        Ok(Listed::new(models))
    }

    /// The short codes in `self` that `other` does not list.
    pub fn missing_from(&self, other: &Listed) -> Vec<String> {
        self.models
            .iter()
            .filter(|m| other.get(&m.short).is_none())
            .map(|m| m.short.clone())
            .collect()
    }
}

/// The largest `models.csv` read: hundreds of thousands of short codes, far beyond the
/// catalog; a larger file is refused (not read whole into memory).
pub const MAX_FILE: u64 = 4 << 20;

/// How many unknown short codes of `models.csv` get a WARN line each.
pub const NAMED_UNKNOWN: usize = 10;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lookup_prefers_short_codes_and_ignores_case() {
        let c = Catalog::embedded();
        let l = Listed::new(vec![
            c.get("gpt41").unwrap().clone(),
            c.get("kimi").unwrap().clone(),
        ]);
        assert_eq!(l.get("GPT-4.1").unwrap().short, "gpt41");
        assert_eq!(l.get(" Kimi ").unwrap().short, "kimi");
        assert!(l.get("claude-h").is_none());
        let only_kimi = Listed::new(vec![c.get("kimi").unwrap().clone()]);
        assert_eq!(l.missing_from(&only_kimi), ["gpt41"]);
    }

    #[test]
    fn files_saved_by_windows_editors_read_as_they_look() {
        // A byte order mark first (Notepad): the first model, key or memory is not lost.
        use crate::state::keys::Keys;
        use crate::state::memory::Memory;
        use crate::util::fs::testdir::TestDir;
        let d = TestDir::new("bom");
        let bom = |text: &str| [&b"\xEF\xBB\xBF"[..], text.as_bytes()].concat();
        let (models, keys, memory) = (
            d.path().join("m.csv"),
            d.path().join("k.csv"),
            d.path().join("m.json"),
        );
        std::fs::write(&models, bom("claude-h\r\nkimi\r\n")).unwrap();
        std::fs::write(
            &keys,
            bom("ana,sha256:2c26b46b68ffc68ff99b453c1d30413413422d706483bfa0f98a5e886266e7ae,*,,\r\n"),
        )
        .unwrap();
        std::fs::write(&memory, bom(r#"{"content": "Be brief."}"#)).unwrap();
        let listed = Listed::load(&Catalog::embedded(), &models).unwrap();
        assert!(listed.get("claude-h").is_some() && listed.get("kimi").is_some());
        assert!(Keys::load(&keys).unwrap().unwrap().has_name("ana"));
        assert_eq!(Memory::load(&memory).unwrap().unwrap().content, "Be brief.");
    }
}
