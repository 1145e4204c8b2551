//! What `/init` configures: the sandbox-wide environment, the access token,
//! the default user and working directory.
//!
//! Readers take a cheap snapshot; only `/init` writes.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::{Arc, RwLock};

use crate::users::{Accounts, User};

/// Settings that `/init` may change at runtime.
#[derive(Debug, Clone, Default)]
pub struct Settings {
    /// Required `X-Access-Token`, when set.
    pub access_token: Option<String>,
    /// Sandbox-wide environment (`envVars` of the create request).
    pub env_vars: HashMap<String, String>,
    /// User for requests that name none.
    pub default_user: String,
    /// Working directory for requests that name none.
    pub default_workdir: Option<PathBuf>,
}

/// Shared handle to the sandbox settings.
#[derive(Debug, Clone)]
pub struct Sandbox {
    settings: Arc<RwLock<Settings>>,
}

impl Sandbox {
    /// Starts with no token, no extra environment and the given default user.
    pub fn new(default_user: &str) -> Self {
        Self {
            settings: Arc::new(RwLock::new(Settings {
                default_user: default_user.to_owned(),
                ..Settings::default()
            })),
        }
    }

    /// A copy of the current settings.
    pub fn settings(&self) -> Settings {
        match self.settings.read() {
            Ok(s) => s.clone(),
            // A writer panicked mid-update; the data is plain values, still usable.
            Err(poisoned) => poisoned.into_inner().clone(),
        }
    }

    /// Applies a change under the write lock.
    pub fn update(&self, f: impl FnOnce(&mut Settings)) {
        let mut guard = match self.settings.write() {
            Ok(g) => g,
            Err(poisoned) => poisoned.into_inner(),
        };
        f(&mut guard);
    }

    /// The access token, if one is required.
    pub fn access_token(&self) -> Option<String> {
        self.settings().access_token
    }

    /// Resolves the user a request runs as: the named one, else the default.
    pub fn resolve_user(&self, name: Option<&str>) -> Result<User, crate::users::Error> {
        let settings = self.settings();
        let accounts = Accounts::load()?;
        accounts.user(name.unwrap_or(&settings.default_user))
    }

    /// The environment every process gets before its own `envs`: the target
    /// user's identity, then the sandbox environment. `PATH` is envd's own.
    pub fn process_env(&self, user: &User) -> Vec<(String, String)> {
        let settings = self.settings();
        let path = std::env::var("PATH").unwrap_or_else(|_| {
            "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin".to_owned()
        });
        let mut env = vec![
            ("PATH".to_owned(), path),
            ("HOME".to_owned(), user.home.display().to_string()),
            ("USER".to_owned(), user.name.clone()),
            ("LOGNAME".to_owned(), user.name.clone()),
            ("E2B_SANDBOX".to_owned(), "true".to_owned()),
        ];
        let mut vars: Vec<_> = settings.env_vars.into_iter().collect();
        vars.sort();
        env.extend(vars);
        env
    }
}
