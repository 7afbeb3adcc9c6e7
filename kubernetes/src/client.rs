//! Where the agent finds its API server: an explicit kubeconfig, or the in-cluster
//! configuration a pod gets from its service account (as kube-proxy does).

use std::path::{Path, PathBuf};

use kube::config::{KubeConfigOptions, Kubeconfig};

#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("reading the kubeconfig {path}: {source}")]
    Kubeconfig {
        path: PathBuf,
        #[source]
        source: kube::config::KubeconfigError,
    },
    #[error(
        "in-cluster configuration (KUBERNETES_SERVICE_HOST/PORT and the service-account mount): {0}"
    )]
    InCluster(#[source] kube::config::InClusterError),
    #[error("building the API client: {0}")]
    Client(#[source] kube::Error),
}

/// How to reach the API server.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ClientSource {
    /// `--kubeconfig PATH`: the file's current context.
    Kubeconfig(PathBuf),
    /// Running in a pod: `KUBERNETES_SERVICE_HOST`/`PORT` and the token and CA under
    /// `/var/run/secrets/kubernetes.io/serviceaccount`.
    InCluster,
}

impl ClientSource {
    /// `--kubeconfig` when given; otherwise the in-cluster configuration when the process runs
    /// in a pod (the API server's service environment is set); otherwise none (files only).
    pub fn detect(kubeconfig: Option<&Path>) -> Option<Self> {
        match kubeconfig {
            Some(path) => Some(ClientSource::Kubeconfig(path.to_owned())),
            None if std::env::var_os("KUBERNETES_SERVICE_HOST").is_some() => {
                Some(ClientSource::InCluster)
            }
            None => None,
        }
    }

    /// Where the configuration came from, for logs and `berth status`.
    pub fn describe(&self) -> String {
        match self {
            ClientSource::Kubeconfig(path) => format!("kubeconfig {}", path.display()),
            ClientSource::InCluster => "in-cluster service account".to_owned(),
        }
    }

    /// The client configuration (reads files, contacts nothing).
    pub async fn config(&self) -> Result<kube::Config, ClientError> {
        match self {
            ClientSource::Kubeconfig(path) => {
                let kubeconfig =
                    Kubeconfig::read_from(path).map_err(|source| ClientError::Kubeconfig {
                        path: path.clone(),
                        source,
                    })?;
                kube::Config::from_custom_kubeconfig(kubeconfig, &KubeConfigOptions::default())
                    .await
                    .map_err(|source| ClientError::Kubeconfig {
                        path: path.clone(),
                        source,
                    })
            }
            ClientSource::InCluster => kube::Config::incluster().map_err(ClientError::InCluster),
        }
    }

    /// A client for the API server (contacts nothing yet: the watchers do, and retry).
    pub async fn client(&self) -> Result<kube::Client, ClientError> {
        let mut config = self.config().await?;
        // An unreachable API server must surface as a watch error within seconds, not after
        // the default 295 s read timeout, so that staleness is visible; watches themselves
        // are kept shorter than this by the server's own timeout.
        config.connect_timeout = Some(std::time::Duration::from_secs(5));
        kube::Client::try_from(config).map_err(ClientError::Client)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn explicit_kubeconfig_wins() {
        assert_eq!(
            ClientSource::detect(Some(Path::new("/etc/kubeconfig"))),
            Some(ClientSource::Kubeconfig("/etc/kubeconfig".into()))
        );
    }

    #[tokio::test]
    async fn a_missing_kubeconfig_names_the_file() {
        let Err(err) = ClientSource::Kubeconfig("/nonexistent/kubeconfig".into())
            .client()
            .await
        else {
            panic!("a client from a missing file")
        };
        assert!(err.to_string().contains("/nonexistent/kubeconfig"), "{err}");
    }

    #[tokio::test]
    async fn a_kubeconfig_client_points_at_its_server() {
        let dir = std::env::temp_dir().join(format!("berth-kube-test-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("dir");
        let path = dir.join("kubeconfig");
        std::fs::write(
            &path,
            "apiVersion: v1\nkind: Config\nclusters:\n- name: c\n  cluster:\n    server: https://10.0.0.1:6443\n    insecure-skip-tls-verify: true\nusers:\n- name: u\n  user:\n    token: t\ncontexts:\n- name: x\n  context: {cluster: c, user: u}\ncurrent-context: x\n",
        )
        .expect("write");
        let config = ClientSource::Kubeconfig(path.clone())
            .config()
            .await
            .expect("config");
        assert_eq!(config.cluster_url.to_string(), "https://10.0.0.1:6443/");
        std::fs::remove_dir_all(&dir).expect("cleanup");
    }
}
