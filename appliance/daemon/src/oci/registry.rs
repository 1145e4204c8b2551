//! Registry access: resolve a reference to one linux/amd64 image manifest,
//! fetch its config, download its layers (digest-verified by the client).

use std::path::Path;
use std::time::Duration;

use oci_client::client::{ClientConfig, ClientProtocol, linux_amd64_resolver};
use oci_client::errors::{OciDistributionError, OciErrorCode};
use oci_client::manifest::{OciDescriptor, OciImageManifest};
use oci_client::secrets::RegistryAuth;
use oci_client::{Client, Reference};
use serde::Deserialize;

use super::{OciError, PullRequest, guest_config};
use crate::templates::GuestConfig;

/// A registry client bound to one reference.
pub(super) struct Registry {
    client: Client,
    image: Reference,
    auth: RegistryAuth,
    reference: String,
}

/// A reference resolved to its platform manifest.
pub(super) struct Resolved {
    pub manifest: OciImageManifest,
    /// Digest of `manifest` (the platform manifest, not the index).
    pub digest: String,
}

/// The parts of an OCI image config we use.
#[derive(Debug, Deserialize)]
struct ImageConfigFile {
    #[serde(default)]
    os: String,
    #[serde(default)]
    architecture: String,
    #[serde(default)]
    config: Option<ImageRuntimeConfig>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "PascalCase")]
struct ImageRuntimeConfig {
    #[serde(default)]
    env: Option<Vec<String>>,
    #[serde(default)]
    working_dir: Option<String>,
    #[serde(default)]
    user: Option<String>,
}

impl Registry {
    pub(super) fn connect(req: &PullRequest) -> Result<Self, OciError> {
        let image: Reference =
            req.reference
                .parse()
                .map_err(|source| OciError::InvalidReference {
                    reference: req.reference.clone(),
                    source,
                })?;
        let client = Client::new(ClientConfig {
            protocol: if req.insecure {
                ClientProtocol::Http
            } else {
                ClientProtocol::Https
            },
            // Guests are x86_64 whatever the host is.
            platform_resolver: Some(Box::new(linux_amd64_resolver)),
            // A registry that stops answering must fail the pull, not hang
            // the template build forever.
            connect_timeout: Some(Duration::from_secs(30)),
            read_timeout: Some(Duration::from_secs(120)),
            ..ClientConfig::default()
        });
        let auth = match &req.auth {
            Some((user, password)) => RegistryAuth::Basic(user.clone(), password.clone()),
            None => RegistryAuth::Anonymous,
        };
        Ok(Self {
            client,
            image,
            auth,
            reference: req.reference.clone(),
        })
    }

    pub(super) async fn resolve(&self) -> Result<Resolved, OciError> {
        let (manifest, digest) = self
            .client
            .pull_image_manifest(&self.image, &self.auth)
            .await
            .map_err(|source| manifest_error(&self.reference, source))?;
        Ok(Resolved { manifest, digest })
    }

    /// Fetches and checks the image config; returns the guest defaults.
    pub(super) async fn config(&self, resolved: &Resolved) -> Result<GuestConfig, OciError> {
        let mut bytes = Vec::new();
        self.client
            .pull_blob(&self.image, &resolved.manifest.config, &mut bytes)
            .await
            .map_err(|source| OciError::Config {
                reference: self.reference.clone(),
                source: Box::new(source),
            })?;
        parse_config(&self.reference, &bytes)
    }

    /// Downloads one layer to `dest`; the client checks its digest.
    pub(super) async fn download(
        &self,
        layer: &OciDescriptor,
        dest: &Path,
    ) -> Result<(), OciError> {
        if !layer.media_type.contains("tar") {
            return Err(OciError::UnsupportedLayer {
                reference: self.reference.clone(),
                digest: layer.digest.clone(),
                media_type: layer.media_type.clone(),
            });
        }
        let download_err = |source: OciDistributionError| OciError::Download {
            reference: self.reference.clone(),
            digest: layer.digest.clone(),
            source: Box::new(source),
        };
        let file = tokio::fs::File::create(dest)
            .await
            .map_err(|e| download_err(e.into()))?;
        let mut out = tokio::io::BufWriter::new(file);
        self.client
            .pull_blob(&self.image, layer, &mut out)
            .await
            .map_err(download_err)?;
        tokio::io::AsyncWriteExt::flush(&mut out)
            .await
            .map_err(|e| download_err(e.into()))?;
        Ok(())
    }
}

/// Checks the platform and maps the config to guest defaults.
fn parse_config(reference: &str, bytes: &[u8]) -> Result<GuestConfig, OciError> {
    let file: ImageConfigFile =
        serde_json::from_slice(bytes).map_err(|source| OciError::ConfigParse {
            reference: reference.to_owned(),
            source,
        })?;
    // An image straight from a single-platform manifest skips the resolver;
    // an arm64 one would unpack fine and then never boot.
    if file.os != "linux" || file.architecture != "amd64" {
        return Err(OciError::Platform {
            reference: reference.to_owned(),
            platform: format!("{}/{}", file.os, file.architecture),
        });
    }
    let c = file.config.unwrap_or_default();
    Ok(guest_config(
        c.env.as_deref().unwrap_or_default(),
        c.working_dir.as_deref(),
        c.user.as_deref(),
    ))
}

/// Tells "no such image" and "not allowed" apart from other failures: they
/// are the caller's mistakes and deserve their own message.
fn manifest_error(reference: &str, source: OciDistributionError) -> OciError {
    let reference = reference.to_owned();
    let (kind, source) = (classify(&source), Box::new(source));
    match kind {
        Kind::NotFound => OciError::NotFound { reference, source },
        Kind::Unauthorized => OciError::Unauthorized { reference, source },
        Kind::Other => OciError::Manifest { reference, source },
    }
}

enum Kind {
    NotFound,
    Unauthorized,
    Other,
}

fn classify(source: &OciDistributionError) -> Kind {
    let not_found = match source {
        OciDistributionError::RegistryError { envelope, .. } => envelope.errors.iter().any(|e| {
            matches!(
                e.code,
                OciErrorCode::ManifestUnknown | OciErrorCode::NameUnknown | OciErrorCode::NotFound
            )
        }),
        OciDistributionError::ServerError { code, .. } => *code == 404,
        OciDistributionError::ImageManifestNotFoundError(_) => true,
        _ => false,
    };
    if not_found {
        return Kind::NotFound;
    }
    let unauthorized = match source {
        OciDistributionError::UnauthorizedError { .. }
        | OciDistributionError::AuthenticationFailure(_) => true,
        OciDistributionError::RegistryError { envelope, .. } => envelope
            .errors
            .iter()
            .any(|e| matches!(e.code, OciErrorCode::Unauthorized | OciErrorCode::Denied)),
        _ => false,
    };
    if unauthorized {
        return Kind::Unauthorized;
    }
    Kind::Other
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn config_rejects_other_platforms() {
        let arm = br#"{"os":"linux","architecture":"arm64","config":{}}"#;
        let err = parse_config("r:1", arm).expect_err("arm64");
        assert!(err.to_string().contains("linux/arm64"), "{err}");
        assert!(err.to_string().contains("r:1"), "{err}");
    }

    #[test]
    fn config_without_runtime_section_is_empty() {
        let c = parse_config("r", br#"{"os":"linux","architecture":"amd64"}"#).expect("parses");
        assert_eq!(c, GuestConfig::default());
    }

    #[test]
    fn config_reads_pascal_case_fields() {
        let json = br#"{"os":"linux","architecture":"amd64","config":
            {"Env":["PATH=/bin","X=1"],"WorkingDir":"/w","User":"1000:1000"}}"#;
        let c = parse_config("r", json).expect("parses");
        assert_eq!(c.env.len(), 2);
        assert_eq!(c.workdir.as_deref(), Some("/w"));
        assert_eq!(c.user.as_deref(), Some("1000:1000"));
    }
}
