//! Template listing wire types (`e2b-protocol.md` §2.3). The SDK does not
//! call these endpoints, but the CLI and dashboard do; every field listed as
//! required is always serialized, nullable ones as `null`.

use jiff::Timestamp;
use serde::{Deserialize, Serialize};

/// Build state of a template or one of its builds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum TemplateBuildStatus {
    /// Being built.
    Building,
    /// Queued.
    Waiting,
    /// Usable.
    Ready,
    /// Failed.
    Error,
}

/// Who created a template.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TemplateCreator {
    /// User id (a UUID upstream).
    pub id: String,
    /// Email, if known.
    pub email: Option<String>,
}

/// One entry of `GET /templates`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Template {
    /// Template id.
    #[serde(rename = "templateID")]
    pub template_id: String,
    /// Id of the current build.
    #[serde(rename = "buildID")]
    pub build_id: String,
    /// vCPUs.
    pub cpu_count: u32,
    /// Memory in MiB.
    #[serde(rename = "memoryMB")]
    pub memory_mb: u32,
    /// Root disk size in MiB.
    #[serde(rename = "diskSizeMB")]
    pub disk_size_mb: u32,
    /// Visible to every team.
    pub public: bool,
    /// Aliases.
    pub aliases: Vec<String>,
    /// Names (`team/name:tag` style).
    pub names: Vec<String>,
    /// Creation time.
    pub created_at: Timestamp,
    /// Last update.
    pub updated_at: Timestamp,
    /// Creator; `null` for built-in templates.
    pub created_by: Option<TemplateCreator>,
    /// Last sandbox start from it; `null` if never.
    pub last_spawned_at: Option<Timestamp>,
    /// Sandboxes started from it.
    pub spawn_count: u64,
    /// Builds so far.
    pub build_count: u32,
    /// envd version in the image.
    pub envd_version: String,
    /// State of the current build.
    pub build_status: TemplateBuildStatus,
}

/// One build in [`TemplateWithBuilds`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct TemplateBuild {
    /// Build id.
    #[serde(rename = "buildID")]
    pub build_id: String,
    /// Build state.
    pub status: TemplateBuildStatus,
    /// Creation time.
    pub created_at: Timestamp,
    /// Last update.
    pub updated_at: Timestamp,
    /// vCPUs.
    pub cpu_count: u32,
    /// Memory in MiB.
    #[serde(rename = "memoryMB")]
    pub memory_mb: u32,
    /// When the build finished.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub finished_at: Option<Timestamp>,
    /// Root disk size in MiB.
    #[serde(
        default,
        rename = "diskSizeMB",
        skip_serializing_if = "Option::is_none"
    )]
    pub disk_size_mb: Option<u32>,
    /// envd version in the image.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub envd_version: Option<String>,
}

/// `GET /templates/{id}`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct TemplateWithBuilds {
    /// Template id.
    #[serde(rename = "templateID")]
    pub template_id: String,
    /// Visible to every team.
    pub public: bool,
    /// Aliases.
    pub aliases: Vec<String>,
    /// Names.
    pub names: Vec<String>,
    /// Creation time.
    pub created_at: Timestamp,
    /// Last update.
    pub updated_at: Timestamp,
    /// Last sandbox start from it; `null` if never.
    pub last_spawned_at: Option<Timestamp>,
    /// Sandboxes started from it.
    pub spawn_count: u64,
    /// Its builds.
    pub builds: Vec<TemplateBuild>,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn keys(v: &serde_json::Value) -> Vec<String> {
        let mut k: Vec<String> = v.as_object().unwrap().keys().cloned().collect();
        k.sort_unstable();
        k
    }

    #[test]
    fn template_serializes_every_required_field() {
        let t0: Timestamp = "2026-12-04T15:00:00Z".parse().unwrap();
        let t = Template {
            template_id: "base".into(),
            build_id: "b1".into(),
            cpu_count: 1,
            memory_mb: 512,
            disk_size_mb: 2048,
            public: true,
            aliases: vec!["base".into()],
            names: vec!["base".into()],
            created_at: t0,
            updated_at: t0,
            created_by: None,
            last_spawned_at: None,
            spawn_count: 0,
            build_count: 1,
            envd_version: "0.6.13".into(),
            build_status: TemplateBuildStatus::Ready,
        };
        let v = serde_json::to_value(&t).unwrap();
        assert_eq!(
            keys(&v),
            [
                "aliases",
                "buildCount",
                "buildID",
                "buildStatus",
                "cpuCount",
                "createdAt",
                "createdBy",
                "diskSizeMB",
                "envdVersion",
                "lastSpawnedAt",
                "memoryMB",
                "names",
                "public",
                "spawnCount",
                "templateID",
                "updatedAt"
            ]
        );
        assert!(v["createdBy"].is_null() && v["lastSpawnedAt"].is_null());
        assert_eq!(v["buildStatus"], "ready");

        let w = TemplateWithBuilds {
            template_id: "base".into(),
            public: true,
            aliases: vec![],
            names: vec![],
            created_at: t0,
            updated_at: t0,
            last_spawned_at: Some(t0),
            spawn_count: 3,
            builds: vec![TemplateBuild {
                build_id: "b1".into(),
                status: TemplateBuildStatus::Building,
                created_at: t0,
                updated_at: t0,
                cpu_count: 1,
                memory_mb: 512,
                finished_at: None,
                disk_size_mb: None,
                envd_version: None,
            }],
        };
        let v = serde_json::to_value(&w).unwrap();
        assert_eq!(
            keys(&v["builds"][0]),
            [
                "buildID",
                "cpuCount",
                "createdAt",
                "memoryMB",
                "status",
                "updatedAt"
            ]
        );
        assert_eq!(v["lastSpawnedAt"], "2026-12-04T15:00:00Z");
    }
}
