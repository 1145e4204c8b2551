//! Parsing the appliance's YAML files (daemon config, template
//! definitions) into serde models, with errors that name the file, the line
//! and the dotted field.

use std::path::{Path, PathBuf};

use serde::de::DeserializeOwned;

/// A YAML document that does not fit its model (syntax, unknown key, wrong
/// type or a value out of range).
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("{file}:{line}:{column}: invalid value at `{field}`: {message}")]
pub struct YamlError {
    /// The file the text came from.
    pub file: PathBuf,
    /// 1-based line of the offending value (0 when unknown).
    pub line: usize,
    /// 1-based column of the offending value (0 when unknown).
    pub column: usize,
    /// Dotted path of the key, `.` for the document itself.
    pub field: String,
    /// What was wrong, as the YAML parser put it.
    pub message: String,
}

/// Parses `text` (the contents of `file`) into `T`. `None` for a blank or
/// comment-only document, which callers treat as "all defaults".
pub fn parse<T: DeserializeOwned>(file: &Path, text: &str) -> Result<Option<T>, YamlError> {
    if is_blank(text) {
        return Ok(None);
    }
    let de = serde_norway::Deserializer::from_str(text);
    serde_path_to_error::deserialize(de).map(Some).map_err(|e| {
        let field = e.path().to_string();
        let inner = e.into_inner();
        let (line, column) = inner.location().map_or((0, 0), |l| (l.line(), l.column()));
        YamlError {
            file: file.to_path_buf(),
            line,
            column,
            field,
            message: strip_location(&inner.to_string()),
        }
    })
}

fn is_blank(text: &str) -> bool {
    text.lines().all(|l| {
        let l = l.trim();
        l.is_empty() || l.starts_with('#') || l == "---"
    })
}

/// serde_norway appends " at line L column C" to messages; we report the
/// location in its own fields.
fn strip_location(message: &str) -> String {
    match message.rfind(" at line ") {
        Some(i) => message[..i].to_string(),
        None => message.to_string(),
    }
}
