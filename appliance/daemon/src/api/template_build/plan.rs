//! Pure translation of an SDK build request into the builder's terms:
//! template names, E2B instructions → [`Step`]s, and the build's cache key.
//!
//! Instruction arguments, as py and js send them:
//!
//! | type    | args                                   |
//! |---------|----------------------------------------|
//! | RUN     | `[cmd]` or `[cmd, user]`               |
//! | ENV     | `[k1, v1, k2, v2, …]`                  |
//! | WORKDIR | `[path]`                               |
//! | USER    | `[name]`                               |
//! | COPY    | `[src, dest, user_or_empty, mode_or_empty]` + `filesHash` |
//!
//! One instruction may become several steps (a RUN with a user switches the
//! user for that command only), so the plan keeps, for every step, the
//! 1-based instruction number the SDK knows it by.

use std::collections::BTreeMap;
use std::path::{Component, Path};

use lelantos_core::template::{CopyStep, Step};
use serde::Serialize;
use sha2::{Digest, Sha256};

use super::wire::TemplateStep;

/// The user the builder runs steps as when neither the base nor an
/// instruction names one (as a Dockerfile `RUN` does). A RUN with its own
/// user switches back to this; [`Plan::final_user`] then keeps the switch
/// back out of the template's defaults.
pub const BUILD_DEFAULT_USER: &str = "root";

/// A request the plan cannot be made from (a 400 for the SDK).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PlanError {
    /// The template name is unusable.
    #[error(
        "`{0}` is not a valid template name (lowercase letters, digits, '-' and '_', starting with a letter or digit, at most 64)"
    )]
    Name(String),
    /// A tag is unusable.
    #[error("`{0}` is not a valid tag")]
    Tag(String),
    /// An instruction type this server does not know.
    #[error("step {number}: unknown instruction type `{kind}`")]
    UnknownType {
        /// 1-based instruction number.
        number: usize,
        /// What was sent.
        kind: String,
    },
    /// An instruction's arguments are wrong.
    #[error("step {number} ({kind}): {message}")]
    Args {
        /// 1-based instruction number.
        number: usize,
        /// Instruction type.
        kind: String,
        /// What is wrong.
        message: String,
    },
}

/// `name[:tag]` split and checked: the template id is the lowercased name.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TemplateName {
    /// Template id (what sandboxes are created from).
    pub id: String,
    /// The tag after `:`, if any.
    pub tag: Option<String>,
}

impl TemplateName {
    /// Parses `name` or `name:tag`.
    pub fn parse(raw: &str) -> Result<Self, PlanError> {
        let raw = raw.trim();
        let (name, tag) = match raw.split_once(':') {
            Some((n, t)) => (n, Some(t)),
            None => (raw, None),
        };
        let id = name.to_ascii_lowercase();
        if !is_valid_name(&id) {
            return Err(PlanError::Name(raw.to_owned()));
        }
        let tag = match tag {
            Some(t) if !is_valid_tag(t) => return Err(PlanError::Tag(t.to_owned())),
            Some(t) => Some(t.to_owned()),
            None => None,
        };
        Ok(Self { id, tag })
    }
}

/// Template ids: as `templates.d` requires.
pub use lelantos_core::template::is_valid_name;

/// Tags: Docker's rule (`[A-Za-z0-9_][A-Za-z0-9_.-]*`, ≤ 128).
pub fn is_valid_tag(tag: &str) -> bool {
    let mut chars = tag.chars();
    chars
        .next()
        .is_some_and(|c| c.is_ascii_alphanumeric() || c == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-'))
        && tag.len() <= 128
}

/// Upload hashes name files on disk: lowercase hex only, so no path tricks.
pub fn is_valid_files_hash(hash: &str) -> bool {
    !hash.is_empty() && hash.len() <= 128 && hash.bytes().all(|b| b.is_ascii_hexdigit())
}

/// The builder's steps for one request.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Plan {
    /// Steps, in order.
    pub steps: Vec<Step>,
    /// For each step, the 1-based SDK instruction it came from.
    pub origin: Vec<usize>,
    /// Upload hashes the COPY steps read, in order (duplicates removed).
    pub files: Vec<String>,
    /// The default user the template's sandboxes get: the base's, or the
    /// last USER instruction's. Differs from the builder's final user when
    /// a RUN-as-user had to switch back to [`BUILD_DEFAULT_USER`] on a base
    /// without a user (sandboxes must then keep envd's default).
    pub final_user: Option<String>,
}

impl Plan {
    /// The SDK's name of the step the builder calls `index`.
    pub fn sdk_step(&self, index: usize) -> Option<usize> {
        self.origin.get(index).copied()
    }

    fn push(&mut self, number: usize, step: Step) {
        self.steps.push(step);
        self.origin.push(number);
    }
}

/// Translates the SDK's instructions. `base_user`/`base_workdir` are the
/// base's defaults: a RUN with its own user switches back to the user in
/// effect, and relative paths resolve against the workdir in effect.
pub fn plan(
    steps: &[TemplateStep],
    base_user: Option<&str>,
    base_workdir: Option<&str>,
) -> Result<Plan, PlanError> {
    let mut out = Plan::default();
    let mut user = base_user.map(str::to_owned);
    let mut workdir = base_workdir.map(str::to_owned);
    for (i, s) in steps.iter().enumerate() {
        let number = i + 1;
        let kind = s.kind.to_ascii_uppercase();
        let bad = |message: String| PlanError::Args {
            number,
            kind: kind.clone(),
            message,
        };
        let arg = |n: usize| s.args.get(n).map(String::as_str).unwrap_or("");
        match kind.as_str() {
            "RUN" => {
                let cmd = arg(0);
                if cmd.trim().is_empty() || s.args.len() > 2 {
                    return Err(bad("expected [command] or [command, user]".into()));
                }
                let current = user.as_deref().unwrap_or(BUILD_DEFAULT_USER);
                match s.args.get(1).map(|u| u.trim()).filter(|u| !u.is_empty()) {
                    Some(as_user) if as_user != current => {
                        let back = current.to_owned();
                        out.push(number, Step::User(as_user.to_owned()));
                        out.push(number, Step::Run(cmd.to_owned()));
                        out.push(number, Step::User(back));
                    }
                    _ => out.push(number, Step::Run(cmd.to_owned())),
                }
            }
            "ENV" => {
                if s.args.is_empty() || s.args.len() % 2 != 0 {
                    return Err(bad("expected [key, value, key, value, …]".into()));
                }
                let mut vars = BTreeMap::new();
                for pair in s.args.chunks_exact(2) {
                    if let [k, v] = pair {
                        if !is_env_name(k) {
                            return Err(bad(format!("`{k}` is not a valid variable name")));
                        }
                        vars.insert(k.clone(), v.clone());
                    }
                }
                out.push(number, Step::Env(vars));
            }
            "WORKDIR" => {
                if s.args.len() != 1 || arg(0).trim().is_empty() {
                    return Err(bad("expected [path]".into()));
                }
                let dir = absolute(arg(0), workdir.as_deref()).map_err(bad)?;
                workdir = Some(dir.clone());
                out.push(number, Step::Workdir(dir));
            }
            "USER" => {
                let name = arg(0).trim();
                if s.args.len() != 1 || name.is_empty() {
                    return Err(bad("expected [user]".into()));
                }
                user = Some(name.to_owned());
                out.push(number, Step::User(name.to_owned()));
            }
            "COPY" => {
                if !(2..=4).contains(&s.args.len()) {
                    return Err(bad("expected [src, dest, user, mode]".into()));
                }
                let src = arg(0).trim_start_matches("./");
                if !is_relative_inside(src) {
                    return Err(bad(format!(
                        "source `{src}` must be a relative path inside the context"
                    )));
                }
                if src.contains(['*', '?', '[']) {
                    return Err(bad(format!(
                        "source `{src}` is a glob pattern; copy a file or directory instead"
                    )));
                }
                let Some(hash) = s.files_hash.as_deref().filter(|h| is_valid_files_hash(h)) else {
                    return Err(bad("filesHash (hex) is required".into()));
                };
                let dest = absolute(arg(1), workdir.as_deref()).map_err(bad)?;
                let owner = Some(arg(2).trim()).filter(|u| !u.is_empty());
                let mode = Some(arg(3).trim()).filter(|m| !m.is_empty());
                if let Some(m) = mode
                    && u32::from_str_radix(m, 8).map_or(true, |v| v > 0o7777)
                {
                    return Err(bad(format!("mode must be octal like \"0755\", got `{m}`")));
                }
                let hash = hash.to_ascii_lowercase();
                if !out.files.contains(&hash) {
                    out.files.push(hash);
                }
                out.push(
                    number,
                    Step::Copy(CopyStep {
                        src: src.to_owned(),
                        dest,
                        user: owner.map(str::to_owned),
                        mode: mode.map(str::to_owned),
                    }),
                );
            }
            _ => {
                return Err(PlanError::UnknownType {
                    number,
                    kind: s.kind.clone(),
                });
            }
        }
    }
    out.final_user = user;
    Ok(out)
}

fn is_env_name(k: &str) -> bool {
    !k.is_empty()
        && !k.starts_with(|c: char| c.is_ascii_digit())
        && k.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')
}

fn is_relative_inside(p: &str) -> bool {
    let path = Path::new(p);
    !p.is_empty()
        && !path.is_absolute()
        && !path.components().any(|c| matches!(c, Component::ParentDir))
}

/// Absolute paths pass; relative ones join the workdir in effect (as the
/// SDK's docs promise); with no workdir they are refused.
fn absolute(p: &str, workdir: Option<&str>) -> Result<String, String> {
    if p.starts_with('/') {
        return Ok(p.to_owned());
    }
    match workdir {
        Some(w) => Ok(format!("{}/{}", w.trim_end_matches('/'), p)),
        None => Err(format!(
            "`{p}` is relative and no working directory is set; use an absolute path"
        )),
    }
}

/// Everything that decides a build's result, hashed into the builder's key
/// (which names its output directory and makes a repeat build a cache hit).
#[derive(Debug, Serialize)]
pub struct KeyInput<'a> {
    /// What the base is (image reference and rootfs, template build id, …).
    pub base: &'a str,
    /// The steps.
    pub steps: &'a [Step],
    /// Upload hashes (the COPY contents).
    pub files: &'a [String],
    /// Start command.
    pub start_cmd: Option<&'a str>,
    /// Ready command.
    pub ready_cmd: Option<&'a str>,
    /// Set when the SDK asked to skip caches: the build id, so the key is new.
    pub nonce: Option<&'a str>,
}

impl KeyInput<'_> {
    /// Hex SHA-256 of the canonical JSON of `self`.
    pub fn key(&self) -> String {
        // Serializing plain structs, strings and a BTreeMap cannot fail;
        // an empty input would still give a distinct, stable hash.
        let json = serde_json::to_vec(self).unwrap_or_default();
        let digest = Sha256::digest(&json);
        digest.iter().map(|b| format!("{b:02x}")).collect()
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn step(kind: &str, args: &[&str]) -> TemplateStep {
        TemplateStep {
            kind: kind.into(),
            args: args.iter().map(|s| (*s).to_owned()).collect(),
            files_hash: (kind == "COPY").then(|| "ABCdef01".into()),
            force: Some(false),
        }
    }

    #[test]
    fn names_and_tags() {
        assert_eq!(
            TemplateName::parse("My-Tpl:v1.2").unwrap(),
            TemplateName {
                id: "my-tpl".into(),
                tag: Some("v1.2".into())
            }
        );
        assert_eq!(TemplateName::parse("x").unwrap().tag, None);
        assert!(matches!(
            TemplateName::parse("team/x"),
            Err(PlanError::Name(_))
        ));
        assert!(matches!(TemplateName::parse(""), Err(PlanError::Name(_))));
        assert!(matches!(
            TemplateName::parse("x:bad tag"),
            Err(PlanError::Tag(_))
        ));
        assert!(is_valid_files_hash("0af9"));
        assert!(!is_valid_files_hash("../x"));
    }

    #[test]
    fn maps_every_instruction() {
        let p = plan(
            &[
                step("RUN", &["echo hi"]),
                step("RUN", &["make", "user"]),
                step("ENV", &["A", "1", "B", "two words"]),
                step("WORKDIR", &["/app"]),
                step("COPY", &["./f.txt", "f.txt", "", ""]),
                step("COPY", &["dir", "/opt/d", "user:user", "0755"]),
                step("USER", &["root"]),
                step("RUN", &["id", "root"]),
                step("workdir", &["sub"]),
            ],
            None,
            None,
        )
        .unwrap();
        assert_eq!(
            p.steps,
            vec![
                Step::Run("echo hi".into()),
                Step::User("user".into()),
                Step::Run("make".into()),
                Step::User("root".into()),
                Step::Env(BTreeMap::from([
                    ("A".into(), "1".into()),
                    ("B".into(), "two words".into())
                ])),
                Step::Workdir("/app".into()),
                Step::Copy(CopyStep {
                    src: "f.txt".into(),
                    dest: "/app/f.txt".into(),
                    user: None,
                    mode: None
                }),
                Step::Copy(CopyStep {
                    src: "dir".into(),
                    dest: "/opt/d".into(),
                    user: Some("user:user".into()),
                    mode: Some("0755".into())
                }),
                Step::User("root".into()),
                // Already root: no switch around it.
                Step::Run("id".into()),
                Step::Workdir("/app/sub".into()),
            ]
        );
        assert_eq!(p.origin, vec![1, 2, 2, 2, 3, 4, 5, 6, 7, 8, 9]);
        assert_eq!(p.files, vec!["abcdef01".to_owned()]);
        assert_eq!(p.sdk_step(3), Some(2));
        assert_eq!(p.sdk_step(99), None);
        assert_eq!(p.final_user.as_deref(), Some("root"));
    }

    #[test]
    fn run_as_user_restores_the_base_user() {
        let p = plan(&[step("RUN", &["x", "root"])], Some("app"), None).unwrap();
        assert_eq!(p.steps.last(), Some(&Step::User("app".into())));
        assert_eq!(p.final_user.as_deref(), Some("app"));
        // No user anywhere: the builder's root comes back, the template
        // keeps no default user.
        let p = plan(&[step("RUN", &["x", "user"])], None, None).unwrap();
        assert_eq!(p.steps.last(), Some(&Step::User("root".into())));
        assert_eq!(p.final_user, None);
        let p = plan(&[step("RUN", &["x", "root"])], None, None).unwrap();
        assert_eq!(p.steps, vec![Step::Run("x".into())]);
    }

    #[test]
    fn refuses_bad_instructions() {
        let cases: &[TemplateStep] = &[
            step("RUN", &[]),
            step("RUN", &["a", "b", "c"]),
            step("ENV", &["A"]),
            step("ENV", &["1A", "x"]),
            step("WORKDIR", &["relative"]),
            step("USER", &[""]),
            step("COPY", &["../etc", "/x"]),
            step("COPY", &["/etc", "/x"]),
            step("COPY", &["*.txt", "/x"]),
            step("COPY", &["a", "/x", "", "999"]),
            TemplateStep {
                files_hash: None,
                ..step("COPY", &["a", "/x"])
            },
        ];
        for (i, s) in cases.iter().enumerate() {
            let err = plan(std::slice::from_ref(s), None, None).unwrap_err();
            assert!(
                matches!(err, PlanError::Args { number: 1, .. }),
                "{i}: {err}"
            );
        }
        assert!(matches!(
            plan(&[step("ADD", &["x"])], None, None),
            Err(PlanError::UnknownType { number: 1, .. })
        ));
    }

    #[test]
    fn key_changes_with_inputs() {
        let steps = vec![Step::Run("a".into())];
        let k = |base: &str, nonce: Option<&str>| {
            KeyInput {
                base,
                steps: &steps,
                files: &[],
                start_cmd: None,
                ready_cmd: None,
                nonce,
            }
            .key()
        };
        assert_eq!(k("b1", None), k("b1", None));
        assert_ne!(k("b1", None), k("b2", None));
        assert_ne!(k("b1", None), k("b1", Some("build")));
        assert_eq!(k("b1", None).len(), 64);
    }
}
