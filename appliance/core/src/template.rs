//! Template definitions: one YAML file per template in `templates.d/` (the
//! same format the GitOps repository holds), plus `pools.yaml`.
//!
//! ```yaml
//! version: 1
//! name: py                       # the template id, [a-z0-9][a-z0-9_-]*
//! aliases: [python]
//! base: builtin                  # or {debian: bookworm}, {image: "registry/x:tag"}, {template: base}
//! steps:                         # applied in order, in a build VM of the base
//!   - run: "pip install flask"
//!   - copy: {src: app/, dest: /home/user/app, user: user, mode: "0755"}
//!   - env: {PORT: "8080"}
//!   - workdir: /home/user/app
//!   - user: user
//! start_cmd: "python app.py"     # started in every new sandbox
//! ready_cmd: "curl -sf localhost:8080"   # the sandbox is ready when this exits 0
//! resources: {vcpus: 2, memory_mib: 1024, disk_mib: 4096}
//! ```
//!
//! Unknown keys are refused so a file written for a newer schema fails
//! loudly instead of half-applying.

use std::collections::BTreeMap;
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
    /// What the template starts from.
    #[serde(default, with = "serde_norway::with::singleton_map")]
    pub base: Base,
    /// Build steps, in order.
    #[serde(default, with = "serde_norway::with::singleton_map_recursive")]
    pub steps: Vec<Step>,
    /// Command started (in the background) in every new sandbox.
    #[serde(default)]
    pub start_cmd: Option<String>,
    /// Command polled until it exits 0 before a new sandbox is handed out.
    #[serde(default)]
    pub ready_cmd: Option<String>,
    /// Default resources of its sandboxes.
    #[serde(default)]
    pub resources: TemplateResources,
}

/// What a template starts from.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", deny_unknown_fields)]
pub enum Base {
    /// The appliance's own image (`lelantos-image`: Debian bookworm with
    /// bash, python3, curl, git, sudo and user `user`).
    #[default]
    Builtin,
    /// A Debian suite bootstrapped with mmdebstrap (the builtin recipe on
    /// another suite).
    Debian(String),
    /// An OCI image reference (`registry/repo:tag` or `…@sha256:…`).
    Image(String),
    /// Another template's current build.
    Template(String),
}

/// One build step.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", deny_unknown_fields)]
pub enum Step {
    /// A shell command (`/bin/sh -c`), as the current user in the current
    /// workdir with the current env; a non-zero exit fails the build.
    Run(String),
    /// Files from the repository (relative to the definitions directory).
    Copy(CopyStep),
    /// Environment variables for later steps and for every sandbox.
    Env(BTreeMap<String, String>),
    /// Working directory for later steps and for every sandbox.
    Workdir(String),
    /// User for later steps and for every sandbox.
    User(String),
}

/// `copy` step.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CopyStep {
    /// Source, relative to the definitions directory; a directory is copied
    /// recursively.
    pub src: String,
    /// Absolute destination in the guest.
    pub dest: String,
    /// Owner of the copied files (default: the current user).
    #[serde(default)]
    pub user: Option<String>,
    /// Octal permissions such as `"0755"` (default: as in the repository).
    #[serde(default)]
    pub mode: Option<String>,
}

/// Resources of a template's sandboxes; unset ones take the daemon's defaults.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TemplateResources {
    /// vCPUs (1–8).
    pub vcpus: Option<Vcpus>,
    /// Memory in MiB (128–8192).
    pub memory_mib: Option<MemoryMib>,
    /// Root disk size in MiB (at least the base's; 512–65536).
    pub disk_mib: Option<u32>,
}

/// `pools.yaml`: how many warm sandboxes to keep per template.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PoolsSpec {
    /// Schema version; must be [`TEMPLATE_VERSION`].
    pub version: u32,
    /// Template name → desired warm sandboxes.
    #[serde(default)]
    pub pools: BTreeMap<String, u32>,
}

impl PoolsSpec {
    /// Parses `pools.yaml` read from `file`.
    pub fn from_yaml(file: &Path, text: &str) -> Result<Self, TemplateError> {
        let name = file.display().to_string();
        let spec: Self = yaml::parse(file, text)?.unwrap_or(Self {
            version: TEMPLATE_VERSION,
            pools: BTreeMap::new(),
        });
        if spec.version != TEMPLATE_VERSION {
            return Err(TemplateError::Invalid {
                file: name,
                message: format!(
                    "unsupported pools version {}, expected {TEMPLATE_VERSION}",
                    spec.version
                ),
            });
        }
        Ok(spec)
    }
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
        if let Base::Template(other) = &spec.base
            && (other == &spec.name || !is_valid_name(other))
        {
            return Err(invalid(format!(
                "base template `{other}` is not valid here"
            )));
        }
        if let Some(disk) = spec.resources.disk_mib
            && !(512..=65536).contains(&disk)
        {
            return Err(invalid(format!(
                "resources.disk_mib must be between 512 and 65536, got {disk}"
            )));
        }
        for (i, step) in spec.steps.iter().enumerate() {
            check_step(step).map_err(|m| invalid(format!("steps[{i}]: {m}")))?;
        }
        Ok(spec)
    }

    /// Every name the template answers to: its id first, then its aliases.
    pub fn names(&self) -> impl Iterator<Item = &str> {
        std::iter::once(self.name.as_str()).chain(self.aliases.iter().map(String::as_str))
    }
}

fn check_step(step: &Step) -> Result<(), String> {
    let absolute = |what: &str, p: &str| {
        if p.starts_with('/') {
            Ok(())
        } else {
            Err(format!("{what} must be an absolute path, got `{p}`"))
        }
    };
    match step {
        Step::Run(cmd) if cmd.trim().is_empty() => Err("run: empty command".to_owned()),
        Step::Run(_) => Ok(()),
        Step::Copy(c) => {
            let src = Path::new(&c.src);
            if c.src.is_empty()
                || src.is_absolute()
                || src
                    .components()
                    .any(|p| matches!(p, std::path::Component::ParentDir))
            {
                return Err(format!(
                    "copy.src must be a relative path inside the repository, got `{}`",
                    c.src
                ));
            }
            absolute("copy.dest", &c.dest)?;
            match &c.mode {
                Some(m) if u32::from_str_radix(m, 8).map_or(true, |v| v > 0o7777) => {
                    Err(format!("copy.mode must be octal like \"0755\", got `{m}`"))
                }
                _ => Ok(()),
            }
        }
        Step::Env(vars) => match vars.keys().find(|k| {
            k.is_empty()
                || k.starts_with(|c: char| c.is_ascii_digit())
                || !k.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')
        }) {
            Some(k) => Err(format!("env: `{k}` is not a valid variable name")),
            None => Ok(()),
        },
        Step::Workdir(p) => absolute("workdir", p),
        Step::User(u) if u.trim().is_empty() => Err("user: empty name".to_owned()),
        Step::User(_) => Ok(()),
    }
}

/// Whether `name` may be a template id or alias: `[a-z0-9][a-z0-9_-]*`,
/// at most 64 characters.
pub fn is_valid_name(name: &str) -> bool {
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
        assert_eq!(t.base, Base::Builtin);
        assert_eq!(t.resources, TemplateResources::default());
        let t = parse(
            "version: 1\nname: py\naliases: [python, py3]\nbase: {template: base}\nresources:\n  vcpus: 2\n  memory_mib: 1024\n  disk_mib: 4096\nsteps:\n  - run: echo hi > /etc/marker\n  - copy: {src: app/, dest: /app, mode: \"0755\"}\n  - env: {PORT: \"8080\"}\n  - workdir: /app\n  - user: user\nstart_cmd: python app.py\nready_cmd: curl -sf localhost:8080\n",
        )
        .unwrap();
        assert_eq!(t.base, Base::Template("base".into()));
        assert_eq!(t.steps.len(), 5);
        assert!(matches!(&t.steps[1], Step::Copy(c) if c.dest == "/app"));
        let img = parse("version: 1\nname: o\nbase: {image: \"localhost:5000/x:1\"}\n").unwrap();
        assert_eq!(img.base, Base::Image("localhost:5000/x:1".into()));
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
        let err = parse("version: 1\nname: base\nstep: []\n").unwrap_err();
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
        for bad_step in [
            "- run: ''",
            "- copy: {src: ../etc, dest: /x}",
            "- copy: {src: a, dest: rel}",
            "- copy: {src: a, dest: /x, mode: '999'}",
            "- env: {'1X': v}",
            "- workdir: rel",
            "- frobnicate: x",
        ] {
            let err = parse(&format!("version: 1\nname: t\nsteps:\n  {bad_step}\n")).unwrap_err();
            assert!(
                matches!(err, TemplateError::Invalid { .. } | TemplateError::Parse(_)),
                "{bad_step}: {err:?}"
            );
        }
        assert!(matches!(
            parse("version: 1\nname: t\nbase: {template: t}\n"),
            Err(TemplateError::Invalid { .. })
        ));
        let pools =
            PoolsSpec::from_yaml(Path::new("pools.yaml"), "version: 1\npools:\n  base: 2\n")
                .unwrap();
        assert_eq!(pools.pools["base"], 2);
    }
}
