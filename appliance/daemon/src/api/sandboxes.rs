//! Sandbox wire types (`e2b-protocol.md` §2.3): request bodies tolerate
//! unknown fields, responses always carry the fields py requires.

use std::collections::BTreeMap;

use jiff::Timestamp;
use serde::{Deserialize, Deserializer, Serialize};

/// String map that treats JSON `null` like an absent field.
fn null_as_empty<'de, D>(de: D) -> Result<BTreeMap<String, String>, D::Error>
where
    D: Deserializer<'de>,
{
    Ok(Option::<BTreeMap<String, String>>::deserialize(de)?.unwrap_or_default())
}

/// `POST /sandboxes` body (py 2.45 / js 2.45).
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct NewSandbox {
    /// Template id or alias (SDK default `base`).
    #[serde(rename = "templateID")]
    pub template_id: String,
    /// Timeout in seconds; the server default applies when absent.
    #[serde(default)]
    pub timeout: Option<u64>,
    /// Whether the sandbox gets an envd access token.
    #[serde(default)]
    pub secure: Option<bool>,
    /// Egress on or off; absent means on.
    #[serde(default, rename = "allow_internet_access")]
    pub allow_internet_access: Option<bool>,
    /// User metadata.
    #[serde(default, deserialize_with = "null_as_empty")]
    pub metadata: BTreeMap<String, String>,
    /// Sandbox-wide environment for envd.
    #[serde(default, deserialize_with = "null_as_empty")]
    pub env_vars: BTreeMap<String, String>,
    /// Pause instead of kill on timeout.
    #[serde(default)]
    pub auto_pause: Option<bool>,
    /// Keep memory when auto-pausing.
    #[serde(default)]
    pub auto_pause_memory: Option<bool>,
    /// Resume on traffic.
    #[serde(default)]
    pub auto_resume: Option<AutoResume>,
    /// MCP gateway settings (opaque for now).
    #[serde(default)]
    pub mcp: Option<serde_json::Value>,
    /// Network policy.
    #[serde(default)]
    pub network: Option<SandboxNetworkConfig>,
    /// Identity tokens (opaque for now).
    #[serde(default)]
    pub iam: Option<serde_json::Value>,
    /// Volumes to mount.
    #[serde(default)]
    pub volume_mounts: Option<Vec<VolumeMount>>,
    /// vCPUs for this sandbox instead of the template's (a Lelantos
    /// extension; the stock SDKs never send it).
    #[serde(default)]
    pub cpu_count: Option<u32>,
    /// Memory in MiB instead of the template's (Lelantos extension).
    #[serde(default, rename = "memoryMB")]
    pub memory_mb: Option<u32>,
}

/// `POST /v2/sandboxes` body (py 2.63 / js 2.51): the same fields as
/// [`NewSandbox`] except `secure`, which v2 clients never send because every
/// v2 sandbox is secured — the v2 route applies that, not the type.
/// `timeout` is only present when the caller set it (absent means 300 s).
pub type NewSandboxV2 = NewSandbox;

/// `autoResume` in create bodies.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct AutoResume {
    /// Resume a paused sandbox when traffic arrives.
    #[serde(default)]
    pub enabled: bool,
}

/// A volume mount in create bodies and listings.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct VolumeMount {
    /// Volume name.
    pub name: String,
    /// Mount path in the guest.
    pub path: String,
}

/// Network policy (`network` in create bodies and [`SandboxDetail`]).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct SandboxNetworkConfig {
    /// Allowed egress destinations.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub allow_out: Option<Vec<String>>,
    /// Denied egress destinations.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub deny_out: Option<Vec<String>>,
    /// Whether sandbox ports are reachable without a traffic token.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub allow_public_traffic: Option<bool>,
    /// Host header rewrite for proxied traffic.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mask_request_host: Option<String>,
    /// Per-host transform rules (opaque for now).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rules: Option<serde_json::Value>,
    /// Egress proxy settings (opaque for now).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub egress_proxy: Option<serde_json::Value>,
    /// Custom DNS servers.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dns_servers: Option<Vec<String>>,
    /// Ports treated as HTTPS.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub https_ports: Option<Vec<u16>>,
}

/// `POST /sandboxes/{id}/timeout` body.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
pub struct TimeoutRequest {
    /// New timeout in seconds, counted from now.
    pub timeout: u64,
}

/// `POST /sandboxes/{id}/connect` body (the SDK always sends `timeout`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
pub struct ConnectRequest {
    /// Timeout in seconds, counted from now.
    pub timeout: u64,
}

/// `POST /v2/sandboxes/{id}/connect` body: every field optional.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(default)]
pub struct ConnectRequestV2 {
    /// Timeout in seconds; absent keeps the server default.
    pub timeout: Option<u64>,
    /// `false` asks for a reboot instead of a memory restore.
    pub memory: Option<bool>,
}

/// `POST /sandboxes/{id}/pause` body (`{"memory":true}` from 2.45, `{}` from 2.63).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(default, rename_all = "camelCase")]
pub struct PauseRequest {
    /// Keep memory (in-RAM pause); absent means true.
    pub memory: Option<bool>,
    /// Refuse to pause an unhealthy guest (py 2.63).
    pub require_healthy_guest: Option<bool>,
}

/// `POST /sandboxes/{id}/resume` body (deprecated endpoint).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(default, rename_all = "camelCase")]
pub struct ResumeRequest {
    /// Timeout in seconds; absent means 15.
    pub timeout: Option<u64>,
    /// Pause instead of kill on timeout.
    pub auto_pause: Option<bool>,
}

/// `POST /sandboxes/{id}/refreshes` body.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(default)]
pub struct RefreshRequest {
    /// Seconds to extend by (0..=3600).
    pub duration: Option<u64>,
}

/// Create/connect/resume result.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Sandbox {
    /// Template id.
    #[serde(rename = "templateID")]
    pub template_id: String,
    /// Sandbox id.
    #[serde(rename = "sandboxID")]
    pub sandbox_id: String,
    /// Deprecated, but py's parser requires it.
    #[serde(rename = "clientID")]
    pub client_id: String,
    /// envd version; must parse as a version (the SDK gates features on it).
    pub envd_version: String,
    /// Template alias used to create it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub alias: Option<String>,
    /// envd access token; present whenever the sandbox is secure.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub envd_access_token: Option<String>,
    /// Token for private sandbox ports.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub traffic_access_token: Option<String>,
    /// Domain the SDK should build sandbox URLs with.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub domain: Option<String>,
}

/// A sandbox's state as listings report it: only these two values exist
/// (any other breaks py's parser).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ListedSandboxState {
    /// Running.
    Running,
    /// Paused.
    Paused,
}

/// One entry of `GET /v2/sandboxes`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ListedSandbox {
    /// Template id.
    #[serde(rename = "templateID")]
    pub template_id: String,
    /// Template alias.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub alias: Option<String>,
    /// Sandbox id.
    #[serde(rename = "sandboxID")]
    pub sandbox_id: String,
    /// Deprecated, but required by py.
    #[serde(rename = "clientID")]
    pub client_id: String,
    /// When it started.
    pub started_at: Timestamp,
    /// When it times out.
    pub end_at: Timestamp,
    /// vCPUs.
    pub cpu_count: u32,
    /// Memory in MiB.
    #[serde(rename = "memoryMB")]
    pub memory_mb: u32,
    /// Root disk size in MiB.
    #[serde(rename = "diskSizeMB")]
    pub disk_size_mb: u32,
    /// User metadata.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub metadata: Option<BTreeMap<String, String>>,
    /// Running or paused.
    pub state: ListedSandboxState,
    /// envd version.
    pub envd_version: String,
    /// Mounted volumes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub volume_mounts: Option<Vec<VolumeMount>>,
}

/// What happens when a sandbox times out.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum TimeoutAction {
    /// Kill it.
    Kill,
    /// Pause it.
    Pause,
}

/// `lifecycle` in [`SandboxDetail`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct SandboxLifecycle {
    /// Resume on traffic.
    pub auto_resume: bool,
    /// Action on timeout.
    pub on_timeout: TimeoutAction,
}

/// `GET /sandboxes/{id}`: the listing fields plus details.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct SandboxDetail {
    /// The same fields as a listing entry.
    #[serde(flatten)]
    pub listed: ListedSandbox,
    /// envd access token of a secure sandbox.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub envd_access_token: Option<String>,
    /// Whether egress is allowed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub allow_internet_access: Option<bool>,
    /// Domain for sandbox URLs.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub domain: Option<String>,
    /// Network policy.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub network: Option<SandboxNetworkConfig>,
    /// Timeout and resume behaviour.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lifecycle: Option<SandboxLifecycle>,
}

/// One sample of `GET /sandboxes/{id}/metrics`; every field is required by py.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct SandboxMetric {
    /// Sample time.
    pub timestamp: Timestamp,
    /// Sample time in unix seconds.
    pub timestamp_unix: i64,
    /// vCPUs.
    pub cpu_count: u32,
    /// CPU use in percent.
    pub cpu_used_pct: f64,
    /// Memory used, bytes.
    pub mem_used: u64,
    /// Memory total, bytes.
    pub mem_total: u64,
    /// Page cache, bytes.
    pub mem_cache: u64,
    /// Disk used, bytes.
    pub disk_used: u64,
    /// Disk total, bytes.
    pub disk_total: u64,
}

/// `GET /sandboxes/metrics`: the latest sample per sandbox id.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct SandboxesWithMetrics {
    /// Sandbox id → latest sample.
    pub sandboxes: BTreeMap<String, SandboxMetric>,
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn keys(v: &serde_json::Value) -> Vec<&str> {
        let mut k: Vec<&str> = v.as_object().unwrap().keys().map(String::as_str).collect();
        k.sort_unstable();
        k
    }

    fn listed() -> ListedSandbox {
        ListedSandbox {
            template_id: "base".into(),
            alias: None,
            sandbox_id: "isbx0001".into(),
            client_id: "lelantos".into(),
            started_at: "2026-12-04T15:00:00Z".parse().unwrap(),
            end_at: "2026-12-04T15:05:00Z".parse().unwrap(),
            cpu_count: 1,
            memory_mb: 512,
            disk_size_mb: 2048,
            metadata: None,
            state: ListedSandboxState::Running,
            envd_version: "0.6.13".into(),
            volume_mounts: None,
        }
    }

    #[test]
    fn parses_py_2_45_create_body() {
        let b: NewSandbox = serde_json::from_str(
            r#"{"templateID":"base","timeout":300,"secure":true,"allow_internet_access":true,"metadata":{},"envVars":{}}"#,
        )
        .unwrap();
        assert_eq!(b.template_id, "base");
        assert_eq!(b.timeout, Some(300));
        assert_eq!(b.secure, Some(true));
        assert_eq!(b.allow_internet_access, Some(true));
        assert!(b.metadata.is_empty() && b.env_vars.is_empty());
    }

    #[test]
    fn parses_js_2_45_create_body_and_spaced_json() {
        let b: NewSandbox = serde_json::from_str(
            r#"{"templateID":"base","timeout":300,"secure":true,"allow_internet_access":true}"#,
        )
        .unwrap();
        assert_eq!(b.allow_internet_access, Some(true));
        // py 2.45 style separators, null maps, unknown fields from newer SDKs.
        let b: NewSandbox = serde_json::from_str(
            r#"{"templateID": "base", "timeout": 60, "metadata": null, "envVars": {"A": "1"}, "autoResume": {"enabled": true}, "someNewField": [1, 2]}"#,
        )
        .unwrap();
        assert_eq!(b.timeout, Some(60));
        assert_eq!(b.env_vars.get("A").map(String::as_str), Some("1"));
        assert_eq!(b.auto_resume, Some(AutoResume { enabled: true }));
        assert!(serde_json::from_str::<NewSandbox>(r#"{"timeout":1}"#).is_err());
    }

    #[test]
    fn parses_v2_create_bodies() {
        let py: NewSandboxV2 =
            serde_json::from_str(r#"{"templateID":"base","metadata":{},"envVars":{}}"#).unwrap();
        assert_eq!(py.timeout, None);
        let js: NewSandboxV2 = serde_json::from_str(r#"{"templateID":"base"}"#).unwrap();
        assert_eq!(js.template_id, "base");
        // `secure` is not part of v2 but must not be refused.
        let b: NewSandboxV2 = serde_json::from_str(
            r#"{"templateID":"x","secure":true,"network":{"allowOut":["1.1.1.1"]}}"#,
        )
        .unwrap();
        assert_eq!(
            b.network.and_then(|n| n.allow_out),
            Some(vec!["1.1.1.1".to_string()])
        );
    }

    #[test]
    fn parses_small_request_bodies() {
        let t: TimeoutRequest = serde_json::from_str(r#"{"timeout":120}"#).unwrap();
        assert_eq!(t.timeout, 120);
        let c: ConnectRequest = serde_json::from_str(r#"{"timeout": 300}"#).unwrap();
        assert_eq!(c.timeout, 300);
        let c: ConnectRequestV2 = serde_json::from_str("{}").unwrap();
        assert_eq!(c, ConnectRequestV2::default());
        let c: ConnectRequestV2 = serde_json::from_str(r#"{"memory":false}"#).unwrap();
        assert_eq!(c.memory, Some(false));
        let p: PauseRequest = serde_json::from_str(r#"{"memory":true}"#).unwrap();
        assert_eq!(p.memory, Some(true));
        let p: PauseRequest = serde_json::from_str(r#"{"requireHealthyGuest":true}"#).unwrap();
        assert_eq!(p.require_healthy_guest, Some(true));
        let r: RefreshRequest = serde_json::from_str(r#"{"duration":60}"#).unwrap();
        assert_eq!(r.duration, Some(60));
        let r: ResumeRequest = serde_json::from_str(r#"{"autoPause":true}"#).unwrap();
        assert_eq!(r.auto_pause, Some(true));
    }

    #[test]
    fn sandbox_json_keys() {
        let s = Sandbox {
            template_id: "base".into(),
            sandbox_id: "isbx0001".into(),
            client_id: "lelantos".into(),
            envd_version: "0.6.13".into(),
            alias: None,
            envd_access_token: Some("envd-tok-123".into()),
            traffic_access_token: None,
            domain: None,
        };
        let v = serde_json::to_value(&s).unwrap();
        assert_eq!(
            keys(&v),
            [
                "clientID",
                "envdAccessToken",
                "envdVersion",
                "sandboxID",
                "templateID"
            ]
        );
        assert_eq!(v["envdAccessToken"], "envd-tok-123");
    }

    #[test]
    fn listed_sandbox_json_keys() {
        let v = serde_json::to_value(listed()).unwrap();
        assert_eq!(
            keys(&v),
            [
                "clientID",
                "cpuCount",
                "diskSizeMB",
                "endAt",
                "envdVersion",
                "memoryMB",
                "sandboxID",
                "startedAt",
                "state",
                "templateID"
            ]
        );
        assert_eq!(v["startedAt"], "2026-12-04T15:00:00Z");
        assert_eq!(v["state"], "running");
        let mut p = listed();
        p.state = ListedSandboxState::Paused;
        p.metadata = Some(BTreeMap::from([("k".into(), "v".into())]));
        let v = serde_json::to_value(p).unwrap();
        assert_eq!(v["state"], "paused");
        assert_eq!(v["metadata"], json!({"k": "v"}));
    }

    #[test]
    fn detail_flattens_listing() {
        let d = SandboxDetail {
            listed: listed(),
            envd_access_token: Some("t".into()),
            allow_internet_access: Some(true),
            domain: None,
            network: None,
            lifecycle: Some(SandboxLifecycle {
                auto_resume: false,
                on_timeout: TimeoutAction::Kill,
            }),
        };
        let v = serde_json::to_value(&d).unwrap();
        assert_eq!(v["sandboxID"], "isbx0001");
        assert_eq!(v["allowInternetAccess"], true);
        assert_eq!(
            v["lifecycle"],
            json!({"autoResume": false, "onTimeout": "kill"})
        );
        assert_eq!(keys(&v).len(), 13);
        let back: SandboxDetail = serde_json::from_value(v).unwrap();
        assert_eq!(back, d);
    }

    #[test]
    fn metric_json_keys() {
        let m = SandboxMetric {
            timestamp: "2026-12-04T15:00:00Z".parse().unwrap(),
            timestamp_unix: 1_796_396_400,
            cpu_count: 2,
            cpu_used_pct: 12.5,
            mem_used: 1,
            mem_total: 2,
            mem_cache: 3,
            disk_used: 4,
            disk_total: 5,
        };
        let v = serde_json::to_value(&m).unwrap();
        assert_eq!(
            keys(&v),
            [
                "cpuCount",
                "cpuUsedPct",
                "diskTotal",
                "diskUsed",
                "memCache",
                "memTotal",
                "memUsed",
                "timestamp",
                "timestampUnix"
            ]
        );
    }
}
