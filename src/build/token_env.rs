//! How a task reaches its identity's OIDC token: environment variables from the token Secret
//! for short tasks, and the Secret mounted as files for long ones (a mounted Secret follows
//! rotation; environment variables never change inside a running container).

use k8s_openapi::api::core::v1::{EnvVar, EnvVarSource, SecretKeySelector, SecretVolumeSource, Volume, VolumeMount};

use crate::api::WindowsTaskIdentity;
use crate::api::refs::{self, ACCESS_TOKEN_KEY, EXPIRES_AT_KEY};

/// Pod volume of the token Secret.
pub(super) const TOKEN_VOLUME: &str = "winflow-token";
pub(super) const WINDOWS_TOKEN_DIR: &str = r"C:\var\run\secrets\winflow.io\token";
pub(super) const LINUX_TOKEN_DIR: &str = "/var/run/secrets/winflow.io/token";

/// The operating system of the container, which decides the mount path.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Os {
    Windows,
    Linux,
}

/// Environment, volume and mount that hand an identity's token to a container.
#[derive(Clone, Debug, PartialEq)]
pub struct TokenWiring {
    pub env: Vec<EnvVar>,
    pub volume: Volume,
    pub mount: VolumeMount,
}

fn from_secret(name: &str, secret: &str, key: &str) -> EnvVar {
    EnvVar {
        name: name.to_owned(),
        value: None,
        value_from: Some(EnvVarSource {
            secret_key_ref: Some(SecretKeySelector {
                name: secret.to_owned(),
                key: key.to_owned(),
                optional: None,
            }),
            ..EnvVarSource::default()
        }),
    }
}

/// `None` when the identity has no token.
pub fn token_wiring(identity: &WindowsTaskIdentity, os: Os) -> Option<TokenWiring> {
    let secret = refs::token_secret(identity)?;
    let (dir, file) = match os {
        Os::Windows => (WINDOWS_TOKEN_DIR, format!(r"{WINDOWS_TOKEN_DIR}\{ACCESS_TOKEN_KEY}")),
        Os::Linux => (LINUX_TOKEN_DIR, format!("{LINUX_TOKEN_DIR}/{ACCESS_TOKEN_KEY}")),
    };
    Some(TokenWiring {
        env: vec![
            from_secret("WINFLOW_ACCESS_TOKEN", &secret, ACCESS_TOKEN_KEY),
            from_secret("WINFLOW_TOKEN_EXPIRES_AT", &secret, EXPIRES_AT_KEY),
            EnvVar {
                name: "WINFLOW_TOKEN_FILE".to_owned(),
                value: Some(file),
                value_from: None,
            },
        ],
        volume: Volume {
            name: TOKEN_VOLUME.to_owned(),
            secret: Some(SecretVolumeSource {
                secret_name: Some(secret),
                ..SecretVolumeSource::default()
            }),
            ..Volume::default()
        },
        mount: VolumeMount {
            name: TOKEN_VOLUME.to_owned(),
            mount_path: dir.to_owned(),
            read_only: Some(true),
            ..VolumeMount::default()
        },
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fixtures;

    #[test]
    fn the_token_reaches_the_container_as_env_and_as_a_file() {
        assert_eq!(token_wiring(&fixtures::key_vault(), Os::Windows), None);
        let identity = fixtures::key_vault_with_token();
        let windows = token_wiring(&identity, Os::Windows).unwrap();
        let names: Vec<&str> = windows.env.iter().map(|e| e.name.as_str()).collect();
        assert_eq!(
            names,
            ["WINFLOW_ACCESS_TOKEN", "WINFLOW_TOKEN_EXPIRES_AT", "WINFLOW_TOKEN_FILE"]
        );
        let token_ref = windows.env[0]
            .value_from
            .as_ref()
            .unwrap()
            .secret_key_ref
            .as_ref()
            .unwrap();
        assert_eq!(
            (token_ref.name.as_str(), token_ref.key.as_str()),
            ("payroll-export-token", "access_token")
        );
        assert_eq!(
            windows.env[2].value.as_deref(),
            Some(r"C:\var\run\secrets\winflow.io\token\access_token")
        );
        assert_eq!(
            windows.volume.secret.as_ref().unwrap().secret_name.as_deref(),
            Some("payroll-export-token")
        );
        assert_eq!(windows.mount.read_only, Some(true));
        let linux = token_wiring(&identity, Os::Linux).unwrap();
        assert_eq!(
            linux.env[2].value.as_deref(),
            Some("/var/run/secrets/winflow.io/token/access_token")
        );
        assert_eq!(linux.mount.mount_path, "/var/run/secrets/winflow.io/token");
    }
}
