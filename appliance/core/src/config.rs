//! The daemon's operator configuration: one YAML file (`config/lelantos.yaml`
//! is the documented default), one serde model.
//!
//! Every key has a default, so an empty file is a valid configuration.
//! Unknown keys are refused, single values are checked when they are parsed
//! (`TryFrom` newtypes such as [`Vcpus`] and [`Domain`]) and rules that span
//! several keys are checked by [`DaemonConfig::validate`]. This module does
//! no IO: the caller reads the file and hands its text to
//! [`DaemonConfig::from_yaml`], naming the file so errors can point at it.

use std::fmt;
use std::net::{Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::resources::{MemoryMib, Vcpus};
use crate::yaml::{self, YamlError};

/// The only config file version this build understands.
pub const CONFIG_VERSION: u32 = 1;

/// Why a config file could not be used.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The YAML could not be parsed into the model (syntax, unknown key,
    /// wrong type or a value out of range).
    #[error(transparent)]
    Parse(#[from] YamlError),
    /// The file parsed but breaks a cross-field rule.
    #[error("{file}: invalid config")]
    Invalid {
        /// The file the text came from.
        file: PathBuf,
        /// The broken rule.
        #[source]
        source: ValidationError,
    },
}

/// A rule spanning several keys that the configuration breaks. Each variant
/// names the offending key.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ValidationError {
    /// `limits.max_sandboxes` is zero.
    #[error("limits.max_sandboxes must be at least 1")]
    NoSandboxesAllowed,
    /// `limits.default_timeout_s` is zero.
    #[error("limits.default_timeout_s must be at least 1")]
    ZeroDefaultTimeout,
    /// `limits.default_timeout_s` exceeds `limits.max_timeout_s`.
    #[error("limits.default_timeout_s ({default}) must not exceed limits.max_timeout_s ({max})")]
    DefaultTimeoutAboveMax {
        /// The configured default.
        default: u64,
        /// The configured maximum.
        max: u64,
    },
    /// A resource default lies outside its configured min/max, or min > max.
    #[error("limits.{field}: expected {min} <= default {default} <= {max}")]
    ResourceRange {
        /// `vcpus` or `memory_mib`.
        field: &'static str,
        /// Configured minimum.
        min: u32,
        /// Configured default.
        default: u32,
        /// Configured maximum.
        max: u32,
    },
    /// The metrics listener uses the API listener's address.
    #[error("listen.metrics must differ from listen.api ({addr})")]
    MetricsOnApiAddress {
        /// The shared address.
        addr: SocketAddr,
    },
    /// A path key is empty.
    #[error("{field} must not be empty")]
    EmptyPath {
        /// The key.
        field: &'static str,
    },
    /// Cloud Hypervisor was chosen together with TCG, which it cannot do.
    #[error("vm.accel tcg is not supported by vm.driver cloud-hypervisor (it needs kvm)")]
    CloudHypervisorWithoutKvm,
}

/// The whole daemon configuration.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct DaemonConfig {
    /// File format version; must be 1.
    pub version: ConfigVersion,
    /// Where the daemon listens.
    pub listen: ListenConfig,
    /// Domain for host-based sandbox routing: `{port}-{sandboxID}.{domain}`.
    pub domain: Domain,
    /// Directory for the state database, sandbox disks and snapshots.
    pub data_dir: PathBuf,
    /// Directory of template specs. A relative path is resolved against the
    /// daemon's working directory.
    pub templates_dir: PathBuf,
    /// Template definitions from a git repository instead of `templates_dir`.
    pub templates_git: Option<GitSource>,
    /// Template builds and the reconciler.
    pub builds: BuildsConfig,
    /// Which VMM runs sandboxes and how.
    pub vm: VmConfig,
    /// Sandbox count, timeout and resource limits.
    pub limits: LimitsConfig,
    /// Guest image handling.
    pub images: ImagesConfig,
}

impl Default for DaemonConfig {
    fn default() -> Self {
        Self {
            version: ConfigVersion,
            listen: ListenConfig::default(),
            domain: Domain::default(),
            data_dir: PathBuf::from("/var/lib/lelantos"),
            templates_dir: PathBuf::from("templates.d"),
            templates_git: None,
            builds: BuildsConfig::default(),
            vm: VmConfig::default(),
            limits: LimitsConfig::default(),
            images: ImagesConfig::default(),
        }
    }
}

impl DaemonConfig {
    /// Parses `text` (the contents of `file`) and validates the result. An
    /// empty or comment-only document yields the defaults.
    pub fn from_yaml(file: &Path, text: &str) -> Result<Self, ConfigError> {
        let config: Self = yaml::parse(file, text)?.unwrap_or_default();
        config.validate().map_err(|source| ConfigError::Invalid {
            file: file.to_path_buf(),
            source,
        })?;
        Ok(config)
    }

    /// Checks the rules that span several keys.
    pub fn validate(&self) -> Result<(), ValidationError> {
        if let Some(metrics) = self.listen.metrics
            && metrics == self.listen.api
        {
            return Err(ValidationError::MetricsOnApiAddress { addr: metrics });
        }
        if self.data_dir.as_os_str().is_empty() {
            return Err(ValidationError::EmptyPath { field: "data_dir" });
        }
        if self.templates_dir.as_os_str().is_empty() {
            return Err(ValidationError::EmptyPath {
                field: "templates_dir",
            });
        }
        if self.vm.driver == VmDriver::CloudHypervisor && self.vm.accel == Accel::Tcg {
            return Err(ValidationError::CloudHypervisorWithoutKvm);
        }
        self.limits.validate()
    }
}

/// The config file version. Only [`CONFIG_VERSION`] exists.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(try_from = "u32", into = "u32")]
pub struct ConfigVersion;

/// A config version this build does not know.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("unsupported config version {0}, expected {CONFIG_VERSION}")]
pub struct VersionError(u32);

impl TryFrom<u32> for ConfigVersion {
    type Error = VersionError;
    fn try_from(v: u32) -> Result<Self, VersionError> {
        if v == CONFIG_VERSION {
            Ok(Self)
        } else {
            Err(VersionError(v))
        }
    }
}

impl From<ConfigVersion> for u32 {
    fn from(_: ConfigVersion) -> u32 {
        CONFIG_VERSION
    }
}

/// Listener addresses.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ListenConfig {
    /// The one listener for the REST API and the sandbox proxy, so that
    /// `E2B_API_URL` and `E2B_SANDBOX_URL` can be the same URL.
    pub api: SocketAddr,
    /// Prometheus metrics listener; `null` turns metrics serving off.
    pub metrics: Option<SocketAddr>,
}

impl Default for ListenConfig {
    fn default() -> Self {
        Self {
            api: SocketAddr::from((Ipv4Addr::LOCALHOST, 3000)),
            metrics: Some(SocketAddr::from((Ipv4Addr::LOCALHOST, 9464))),
        }
    }
}

/// A DNS name (letters, digits, `-` and `.`; 1–253 characters; no empty
/// label), used as the suffix of sandbox host names.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct Domain(String);

/// A rejected domain.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("invalid domain '{0}': expected a DNS name such as localhost or sandbox.example.com")]
pub struct DomainError(String);

impl Domain {
    /// The domain as text.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl Default for Domain {
    fn default() -> Self {
        Self("localhost".to_string())
    }
}

impl TryFrom<String> for Domain {
    type Error = DomainError;
    fn try_from(value: String) -> Result<Self, DomainError> {
        let ok = !value.is_empty()
            && value.len() <= 253
            && value.split('.').all(|label| {
                !label.is_empty()
                    && label.len() <= 63
                    && !label.starts_with('-')
                    && !label.ends_with('-')
                    && label
                        .bytes()
                        .all(|b| b.is_ascii_alphanumeric() || b == b'-')
            });
        if ok {
            Ok(Self(value.to_ascii_lowercase()))
        } else {
            Err(DomainError(value))
        }
    }
}

impl From<Domain> for String {
    fn from(d: Domain) -> String {
        d.0
    }
}

impl fmt::Display for Domain {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// VMM selection.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct VmConfig {
    /// Which VMM runs sandboxes.
    pub driver: VmDriver,
    /// QEMU binary; unset means search `PATH`.
    pub qemu_binary: Option<PathBuf>,
    /// Cloud Hypervisor binary; unset means search `PATH`.
    pub cloud_hypervisor_binary: Option<PathBuf>,
    /// Hardware acceleration.
    pub accel: Accel,
}

/// Which VMM runs sandboxes.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum VmDriver {
    /// Cloud Hypervisor when it and KVM are usable, else QEMU.
    #[default]
    Auto,
    /// QEMU `microvm` (KVM or TCG).
    Qemu,
    /// Cloud Hypervisor (needs KVM).
    CloudHypervisor,
}

/// Hardware acceleration for the VMM.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Accel {
    /// KVM when `/dev/kvm` is usable, else TCG.
    #[default]
    Auto,
    /// KVM only; fail if it is unusable.
    Kvm,
    /// QEMU's software emulation (slow; QEMU only).
    Tcg,
}

/// Sandbox count, timeout and resource limits.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct LimitsConfig {
    /// Most sandboxes (running or paused) at once.
    pub max_sandboxes: u32,
    /// Timeout of a sandbox whose create request sets none, in seconds.
    pub default_timeout_s: u64,
    /// Largest timeout a request may ask for, in seconds.
    pub max_timeout_s: u64,
    /// vCPUs of a sandbox whose template and request set none.
    pub default_vcpus: Vcpus,
    /// Fewest vCPUs a template or request may ask for.
    pub min_vcpus: Vcpus,
    /// Most vCPUs a template or request may ask for.
    pub max_vcpus: Vcpus,
    /// Memory (MiB) of a sandbox whose template and request set none.
    pub default_memory_mib: MemoryMib,
    /// Least memory (MiB) a template or request may ask for.
    pub min_memory_mib: MemoryMib,
    /// Most memory (MiB) a template or request may ask for.
    pub max_memory_mib: MemoryMib,
}

/// Builds a value that is in range by construction.
fn vcpus(n: u32) -> Vcpus {
    // Callers pass constants inside Vcpus::MIN..=Vcpus::MAX.
    Vcpus::try_from(n).unwrap_or_else(|_| unreachable!("vcpus constant out of range"))
}

/// Builds a value that is in range by construction.
fn mib(n: u32) -> MemoryMib {
    // Callers pass constants inside MemoryMib::MIN..=MemoryMib::MAX.
    MemoryMib::try_from(n).unwrap_or_else(|_| unreachable!("memory constant out of range"))
}

impl Default for LimitsConfig {
    fn default() -> Self {
        Self {
            max_sandboxes: 64,
            default_timeout_s: 300,
            max_timeout_s: 86_400,
            default_vcpus: vcpus(1),
            min_vcpus: vcpus(Vcpus::MIN),
            max_vcpus: vcpus(Vcpus::MAX),
            default_memory_mib: mib(512),
            min_memory_mib: mib(MemoryMib::MIN),
            max_memory_mib: mib(MemoryMib::MAX),
        }
    }
}

impl LimitsConfig {
    fn validate(&self) -> Result<(), ValidationError> {
        if self.max_sandboxes == 0 {
            return Err(ValidationError::NoSandboxesAllowed);
        }
        if self.default_timeout_s == 0 {
            return Err(ValidationError::ZeroDefaultTimeout);
        }
        if self.default_timeout_s > self.max_timeout_s {
            return Err(ValidationError::DefaultTimeoutAboveMax {
                default: self.default_timeout_s,
                max: self.max_timeout_s,
            });
        }
        let ranges = [
            (
                "vcpus",
                self.min_vcpus.get(),
                self.default_vcpus.get(),
                self.max_vcpus.get(),
            ),
            (
                "memory_mib",
                self.min_memory_mib.get(),
                self.default_memory_mib.get(),
                self.max_memory_mib.get(),
            ),
        ];
        for (field, min, default, max) in ranges {
            if !(min <= default && default <= max) {
                return Err(ValidationError::ResourceRange {
                    field,
                    min,
                    default,
                    max,
                });
            }
        }
        Ok(())
    }
}

/// A git repository holding template definitions (the GitOps source).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GitSource {
    /// Clone URL: `file://`, `https://` or `ssh://` (`user@host:path` too).
    pub url: String,
    /// Branch to follow.
    #[serde(default = "default_branch")]
    pub branch: String,
    /// Directory inside the repository holding the definitions.
    #[serde(default = "default_git_path")]
    pub path: String,
    /// Seconds between fetches (`POST /reconcile` fetches at once).
    #[serde(default = "default_poll")]
    pub poll_interval_s: u64,
    /// User name for https (with `password_file`) or ssh.
    #[serde(default)]
    pub username: Option<String>,
    /// File holding the https password or token.
    #[serde(default)]
    pub password_file: Option<PathBuf>,
    /// Private key file for ssh.
    #[serde(default)]
    pub ssh_key: Option<PathBuf>,
}

fn default_branch() -> String {
    "main".to_owned()
}

fn default_git_path() -> String {
    ".".to_owned()
}

fn default_poll() -> u64 {
    30
}

/// Template builds.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct BuildsConfig {
    /// Builds running at once (each boots a build VM).
    pub max_parallel: u32,
    /// Seconds between reconcile passes when nothing triggers one.
    pub resync_interval_s: u64,
}

impl Default for BuildsConfig {
    fn default() -> Self {
        Self {
            max_parallel: 1,
            resync_interval_s: 300,
        }
    }
}

/// Guest image handling.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ImagesConfig {
    /// Where built guest images are cached; unset means `<data_dir>/images`.
    pub cache_dir: Option<PathBuf>,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<DaemonConfig, ConfigError> {
        DaemonConfig::from_yaml(Path::new("lelantos.yaml"), text)
    }

    #[test]
    fn shipped_default_file_equals_defaults() {
        let text = include_str!("../../../config/lelantos.yaml");
        let parsed = parse(text).unwrap();
        assert_eq!(parsed, DaemonConfig::default());
    }

    #[test]
    fn shipped_default_file_documents_every_key() {
        // Every key line carries a comment directly above it.
        let text = include_str!("../../../config/lelantos.yaml");
        let lines: Vec<&str> = text.lines().collect();
        for (i, line) in lines.iter().enumerate() {
            let t = line.trim_start();
            if t.is_empty() || t.starts_with('#') {
                continue;
            }
            let above = if i > 0 { lines[i - 1].trim_start() } else { "" };
            assert!(above.starts_with('#'), "undocumented key: {line}");
        }
    }

    #[test]
    fn empty_file_is_defaults() {
        assert_eq!(parse("").unwrap(), DaemonConfig::default());
        assert_eq!(parse("# nothing\n---\n").unwrap(), DaemonConfig::default());
        assert_eq!(parse("{}").unwrap(), DaemonConfig::default());
    }

    #[test]
    fn defaults_validate_and_round_trip() {
        let d = DaemonConfig::default();
        d.validate().unwrap();
        let text = serde_norway::to_string(&d).unwrap();
        assert_eq!(parse(&text).unwrap(), d);
    }

    #[test]
    fn partial_file_keeps_other_defaults() {
        let c = parse(
            "version: 1\nlisten:\n  api: 0.0.0.0:8080\n  metrics: null\nvm:\n  driver: qemu\n  accel: tcg\nlimits:\n  default_vcpus: 2\n",
        )
        .unwrap();
        assert_eq!(c.listen.api, "0.0.0.0:8080".parse().unwrap());
        assert_eq!(c.listen.metrics, None);
        assert_eq!(c.vm.driver, VmDriver::Qemu);
        assert_eq!(c.vm.accel, Accel::Tcg);
        assert_eq!(c.limits.default_vcpus.get(), 2);
        assert_eq!(c.limits.max_sandboxes, 64);
        assert_eq!(c.domain.as_str(), "localhost");
    }

    #[test]
    fn unknown_key_names_file_line_and_field() {
        let err = parse("version: 1\nlimits:\n  max_sandboxes: 3\n  max_sandbox: 4\n").unwrap_err();
        let ConfigError::Parse(YamlError {
            file,
            line,
            field,
            message,
            ..
        }) = &err
        else {
            panic!("{err:?}")
        };
        assert_eq!(file, Path::new("lelantos.yaml"));
        assert_eq!(*line, 4);
        assert!(field.starts_with("limits"), "{field}");
        assert!(message.contains("max_sandbox"), "{message}");
        assert!(err.to_string().starts_with("lelantos.yaml:4:"), "{err}");
    }

    #[test]
    fn bad_value_names_its_field() {
        let err = parse("limits:\n  default_vcpus: 12\n").unwrap_err();
        let ConfigError::Parse(YamlError {
            line,
            field,
            message,
            ..
        }) = &err
        else {
            panic!("{err:?}")
        };
        assert_eq!(*line, 2);
        assert_eq!(field, "limits.default_vcpus");
        assert!(message.contains("between 1 and 8"), "{message}");

        let err = parse("vm:\n  driver: firecracker\n").unwrap_err();
        assert!(
            matches!(&err, ConfigError::Parse(YamlError { field, line: 2, .. }) if field == "vm.driver")
        );
        let err = parse("version: 2\n").unwrap_err();
        assert!(
            err.to_string().contains("unsupported config version 2"),
            "{err}"
        );
        let err = parse("domain: \"bad domain\"\n").unwrap_err();
        assert!(matches!(&err, ConfigError::Parse(YamlError { field, .. }) if field == "domain"));
        let err = parse("listen:\n  api: nonsense\n").unwrap_err();
        assert!(
            matches!(&err, ConfigError::Parse(YamlError { field, .. }) if field == "listen.api")
        );
    }

    #[test]
    fn cross_field_rules() {
        let cases: &[(&str, ValidationError)] = &[
            (
                "limits:\n  default_timeout_s: 100\n  max_timeout_s: 50\n",
                ValidationError::DefaultTimeoutAboveMax {
                    default: 100,
                    max: 50,
                },
            ),
            (
                "limits:\n  default_timeout_s: 0\n",
                ValidationError::ZeroDefaultTimeout,
            ),
            (
                "limits:\n  max_sandboxes: 0\n",
                ValidationError::NoSandboxesAllowed,
            ),
            (
                "limits:\n  default_vcpus: 4\n  max_vcpus: 2\n",
                ValidationError::ResourceRange {
                    field: "vcpus",
                    min: 1,
                    default: 4,
                    max: 2,
                },
            ),
            (
                "limits:\n  min_memory_mib: 1024\n",
                ValidationError::ResourceRange {
                    field: "memory_mib",
                    min: 1024,
                    default: 512,
                    max: 8192,
                },
            ),
            (
                "listen:\n  api: 127.0.0.1:9464\n",
                ValidationError::MetricsOnApiAddress {
                    addr: "127.0.0.1:9464".parse().unwrap(),
                },
            ),
            (
                "data_dir: \"\"\n",
                ValidationError::EmptyPath { field: "data_dir" },
            ),
            (
                "vm:\n  driver: cloud-hypervisor\n  accel: tcg\n",
                ValidationError::CloudHypervisorWithoutKvm,
            ),
        ];
        for (text, want) in cases {
            match parse(text) {
                Err(ConfigError::Invalid { source, .. }) => assert_eq!(&source, want, "{text}"),
                other => panic!("{text}: {other:?}"),
            }
        }
    }

    #[test]
    fn domain_rules() {
        assert!(Domain::try_from("sandbox.example.com".to_string()).is_ok());
        assert_eq!(
            Domain::try_from("LocalHost".to_string()).unwrap().as_str(),
            "localhost"
        );
        for bad in ["", "a..b", "-a.com", "a_b", "a b", ".a"] {
            assert!(Domain::try_from(bad.to_string()).is_err(), "{bad}");
        }
    }
}
