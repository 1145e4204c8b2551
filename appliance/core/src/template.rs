//! Template definitions: one YAML file per template in `templates.d/` (the
//! same format the GitOps repository holds).
//!
//! Schema version 1 knows a name, aliases, the guest image the template
//! boots and its default resources. Build steps, other bases and start
//! commands come with the template builder; unknown keys are refused so a
//! file written for a newer schema fails loudly instead of half-applying.

use std::path::Path;

use serde::{Deserialize, Serialize};

use crate::resources::{MemoryMib, Vcpus};
use crate::yaml::{self, YamlError};

/// The only template schema version this build understands.
pub const TEMPLATE_VERSION: u32 = 1;

/// Why a template file could not be used.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum TemplateError {
    /// Syntax, unknown key, wrong type or value out of range.
    #[error(transparent)]
    Parse(#[from] YamlError),
    /// The file is empty.
    #[error("{0}: empty template definition")]
    Empty(String),
    /// A rule the parser cannot check.
    #[error("{file}: {message}")]
    Invalid {
        /// The file.
        file: String,
        /// The broken rule.
        message: String,
    },
}

/// One template definition.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TemplateSpec {
    /// Schema version; must be [`TEMPLATE_VERSION`].
    pub version: u32,
    /// Template id (what `templateID` names); `[a-z0-9][a-z0-9_-]*`.
    pub name: String,
    /// Other names a create request may use.
    #[serde(default)]
    pub aliases: Vec<String>,
    /// The guest image it boots: `builtin` is the appliance's Debian image
    /// (kernel, initramfs with envd, `base` rootfs).
    #[serde(default)]
    pub image: ImageRef,
    /// Default resources of its sandboxes.
    #[serde(default)]
    pub resources: TemplateResources,
}

/// Which guest image a template boots.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum ImageRef {
    /// The image `lelantos-image` builds.
    #[default]
    Builtin,
}

/// Resources of a template's sandboxes; unset ones take the daemon's defaults.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TemplateResources {
    /// vCPUs (1–8).
    pub vcpus: Option<Vcpus>,
    /// Memory in MiB (128–8192).
    pub memory_mib: Option<MemoryMib>,
}

impl TemplateSpec {
    /// Parses and checks the definition in `text`, read from `file`.
    pub fn from_yaml(file: &Path, text: &str) -> Result<Self, TemplateError> {
        let name = file.display().to_string();
        let spec: Self =
            yaml::parse(file, text)?.ok_or_else(|| TemplateError::Empty(name.clone()))?;
        let invalid = |message: String| TemplateError::Invalid {
            file: name.clone(),
            message,
        };
        if spec.version != TEMPLATE_VERSION {
            return Err(invalid(format!(
                "unsupported template version {}, expected {TEMPLATE_VERSION}",
                spec.version
            )));
        }
        for n in std::iter::once(&spec.name).chain(&spec.aliases) {
            if !is_valid_name(n) {
                return Err(invalid(format!(
                    "`{n}` is not a valid template name (lowercase letters, digits, '-' and '_', starting with a letter or digit)"
                )));
            }
        }
        Ok(spec)
    }

    /// Every name the template answers to: its id first, then its aliases.
    pub fn names(&self) -> impl Iterator<Item = &str> {
        std::iter::once(self.name.as_str()).chain(self.aliases.iter().map(String::as_str))
    }
}

fn is_valid_name(name: &str) -> bool {
    let mut chars = name.chars();
    chars
        .next()
        .is_some_and(|c| c.is_ascii_lowercase() || c.is_ascii_digit())
        && chars.all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-' || c == '_')
        && name.len() <= 64
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<TemplateSpec, TemplateError> {
        TemplateSpec::from_yaml(Path::new("templates.d/t.yaml"), text)
    }

    #[test]
    fn minimal_and_full() {
        let t = parse("version: 1\nname: base\n").unwrap();
        assert_eq!(t.image, ImageRef::Builtin);
        assert_eq!(t.resources, TemplateResources::default());
        let t = parse(
            "version: 1\nname: py\naliases: [python, py3]\nimage: builtin\nresources:\n  vcpus: 2\n  memory_mib: 1024\n",
        )
        .unwrap();
        assert_eq!(t.names().collect::<Vec<_>>(), ["py", "python", "py3"]);
        assert_eq!(t.resources.vcpus.map(Vcpus::get), Some(2));
    }

    #[test]
    fn errors_name_file_line_and_field() {
        let err = parse("version: 1\nname: base\nresources:\n  vcpus: 9\n").unwrap_err();
        let TemplateError::Parse(e) = &err else {
            panic!("{err:?}")
        };
        assert_eq!((e.line, e.field.as_str()), (4, "resources.vcpus"));
        assert!(
            err.to_string().starts_with("templates.d/t.yaml:4:"),
            "{err}"
        );
        let err = parse("version: 1\nname: base\nsteps: []\n").unwrap_err();
        assert!(
            matches!(&err, TemplateError::Parse(e) if e.line == 3),
            "{err:?}"
        );
        assert!(matches!(parse("# nothing\n"), Err(TemplateError::Empty(_))));
        assert!(matches!(
            parse("version: 2\nname: base\n"),
            Err(TemplateError::Invalid { .. })
        ));
        assert!(matches!(
            parse("version: 1\nname: Base\n"),
            Err(TemplateError::Invalid { .. })
        ));
        assert!(matches!(
            parse("version: 1\nname: base\naliases: ['a/b']\n"),
            Err(TemplateError::Invalid { .. })
        ));
    }
}
