//! Pulling from an OCI/Docker registry with the distribution API v2.
//!
//! `GET /v2/<name>/manifests/<ref>` with an `Accept` for OCI and Docker schema 2 manifests and
//! indexes, `GET /v2/<name>/blobs/<digest>` for configs and layers (streamed to the blob store,
//! verified). A `401` with a `WWW-Authenticate: Bearer realm=…,service=…,scope=…` challenge is
//! answered with an anonymous token from the realm, once per request. Plain HTTP is used for
//! loopback registries (`localhost`, `127.0.0.0/8`, `::1`) and when `insecure` is set; HTTPS
//! otherwise.

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::time::Duration;

use indicatif::{MultiProgress, ProgressBar, ProgressDrawTarget, ProgressStyle};
use ureq::http::Response;
use ureq::{Agent, Body};

use crate::blobs::{BlobError, BlobStore};
use crate::digest::{Digest, DigestError};
use crate::reference::ImageRef;
use crate::store::{Desc, MAX_MANIFEST_SIZE, Platform, Source, StoreError, media};

/// Errors of this module. Each names the registry and repository.
#[derive(Debug, thiserror::Error)]
pub enum RegistryError {
    #[error("registry {registry}, repository {repository}: {what}: {source}")]
    Http {
        registry: String,
        repository: String,
        what: String,
        #[source]
        source: Box<ureq::Error>,
    },
    #[error("registry {registry}, repository {repository}: {what}: HTTP {status}{detail}")]
    Status {
        registry: String,
        repository: String,
        what: String,
        status: u16,
        detail: String,
    },
    #[error("registry {registry}, repository {repository}: {what}: {source}")]
    Digest {
        registry: String,
        repository: String,
        what: String,
        #[source]
        source: Box<DigestError>,
    },
    #[error("registry {registry}, repository {repository}: blob {digest}: {source}")]
    Blob {
        registry: String,
        repository: String,
        digest: Digest,
        #[source]
        source: Box<BlobError>,
    },
    #[error("registry {registry}, repository {repository}: authentication: {reason}")]
    Auth {
        registry: String,
        repository: String,
        reason: String,
    },
    #[error("registry {registry}, repository {repository}: {what}: {reason}")]
    Protocol {
        registry: String,
        repository: String,
        what: String,
        reason: String,
    },
}

/// Result alias of this module.
pub type Result<T, E = RegistryError> = std::result::Result<T, E>;

/// How to pull.
#[derive(Debug, Clone)]
pub struct PullOptions {
    /// Use plain HTTP even for a non-loopback registry.
    pub insecure: bool,
    /// Draw per-layer progress bars on stderr.
    pub progress: bool,
    /// Which manifest to take from a multi-platform index (default linux/amd64).
    pub platform: Platform,
    /// Connect and per-read timeout.
    pub timeout: Duration,
}

impl Default for PullOptions {
    fn default() -> Self {
        Self {
            insecure: false,
            progress: false,
            platform: Platform::default(),
            timeout: Duration::from_secs(60),
        }
    }
}

/// Whether `host` (optionally `:port`, IPv6 in brackets) is a loopback address.
pub fn is_loopback_host(host: &str) -> bool {
    let bare = if let Some(rest) = host.strip_prefix('[') {
        rest.split(']').next().unwrap_or_default()
    } else {
        match host.rsplit_once(':') {
            Some((h, port)) if !h.contains(':') && port.bytes().all(|b| b.is_ascii_digit()) => h,
            _ => host,
        }
    };
    bare.eq_ignore_ascii_case("localhost")
        || bare.parse::<IpAddr>().is_ok_and(|ip| ip.is_loopback())
}

/// A parsed `WWW-Authenticate` challenge.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Challenge {
    /// Lowercased scheme (`bearer`, `basic`).
    pub scheme: String,
    /// Lowercased parameter names to values.
    pub params: BTreeMap<String, String>,
}

/// Parses `Bearer realm="…",service="…",scope="…"` (quoted values may hold commas and
/// backslash escapes).
pub(crate) fn parse_challenge(header: &str) -> Option<Challenge> {
    let header = header.trim();
    let (scheme, rest) = header
        .split_once(char::is_whitespace)
        .unwrap_or((header, ""));
    if scheme.is_empty() {
        return None;
    }
    let mut params = BTreeMap::new();
    let mut chars = rest.chars().peekable();
    loop {
        while chars.peek().is_some_and(|c| c.is_whitespace() || *c == ',') {
            chars.next();
        }
        if chars.peek().is_none() {
            break;
        }
        let mut key = String::new();
        while let Some(&c) = chars.peek() {
            if c == '=' || c == ',' {
                break;
            }
            key.push(c);
            chars.next();
        }
        if chars.next() != Some('=') {
            return None;
        }
        let mut value = String::new();
        if chars.peek() == Some(&'"') {
            chars.next();
            loop {
                match chars.next() {
                    Some('\\') => value.extend(chars.next()),
                    Some('"') => break,
                    Some(c) => value.push(c),
                    None => return None,
                }
            }
        } else {
            while let Some(&c) = chars.peek() {
                if c == ',' {
                    break;
                }
                value.push(c);
                chars.next();
            }
            value = value.trim().to_owned();
        }
        params.insert(key.trim().to_ascii_lowercase(), value);
    }
    Some(Challenge {
        scheme: scheme.to_ascii_lowercase(),
        params,
    })
}

/// Percent-encodes a query parameter value (everything but RFC 3986 unreserved characters).
fn query_escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~') {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// A pull session against one repository.
pub(crate) struct RegistryClient {
    agent: Agent,
    base: String,
    registry: String,
    repository: String,
    reference: ImageRef,
    plain_http_ok: bool,
    token: Option<String>,
    progress: MultiProgress,
    show_progress: bool,
}

impl RegistryClient {
    pub(crate) fn new(reference: &ImageRef, options: &PullOptions) -> Result<Self, StoreError> {
        let host = reference.api_host().to_owned();
        let loopback = is_loopback_host(&host);
        let plain_http_ok = loopback || options.insecure;
        let scheme = if plain_http_ok { "http" } else { "https" };
        let mut config = Agent::config_builder()
            .http_status_as_error(false)
            .timeout_connect(Some(options.timeout))
            .timeout_recv_response(Some(options.timeout))
            .timeout_per_read(Some(options.timeout))
            .user_agent(concat!("berth/", env!("CARGO_PKG_VERSION")))
            .max_redirects(10)
            .redirect_auth_headers(ureq::config::RedirectAuthHeaders::SameHost);
        if loopback {
            // Never send loopback traffic through an HTTP proxy from the environment.
            config = config.proxy(None);
        }
        let agent: Agent = config.build().into();
        let progress = MultiProgress::with_draw_target(if options.progress {
            ProgressDrawTarget::stderr()
        } else {
            ProgressDrawTarget::hidden()
        });
        Ok(Self {
            agent,
            base: format!("{scheme}://{host}"),
            registry: reference.registry().to_owned(),
            repository: reference.repository().to_owned(),
            reference: reference.clone(),
            plain_http_ok,
            token: None,
            progress,
            show_progress: options.progress,
        })
    }

    fn http_err(&self, what: &str, e: ureq::Error) -> RegistryError {
        RegistryError::Http {
            registry: self.registry.clone(),
            repository: self.repository.clone(),
            what: what.to_owned(),
            source: Box::new(e),
        }
    }

    fn status_err(&self, what: &str, mut resp: Response<Body>) -> RegistryError {
        let status = resp.status().as_u16();
        // Registries explain failures as {"errors":[{"code":…,"message":…}]}.
        let body = resp
            .body_mut()
            .with_config()
            .limit(64 * 1024)
            .read_to_string()
            .unwrap_or_default();
        let detail = serde_json::from_str::<serde_json::Value>(&body)
            .ok()
            .and_then(|v| {
                let errors = v.get("errors")?.as_array()?.clone();
                let parts: Vec<String> = errors
                    .iter()
                    .map(|e| {
                        format!(
                            "{} {}",
                            e.get("code").and_then(|c| c.as_str()).unwrap_or_default(),
                            e.get("message")
                                .and_then(|c| c.as_str())
                                .unwrap_or_default()
                        )
                    })
                    .collect();
                Some(format!(" ({})", parts.join("; ")))
            })
            .unwrap_or_default();
        RegistryError::Status {
            registry: self.registry.clone(),
            repository: self.repository.clone(),
            what: what.to_owned(),
            status,
            detail,
        }
    }

    fn auth_err(&self, reason: impl Into<String>) -> RegistryError {
        RegistryError::Auth {
            registry: self.registry.clone(),
            repository: self.repository.clone(),
            reason: reason.into(),
        }
    }

    /// GET with one retry after answering a bearer challenge. Returns any final response
    /// (the caller checks the status).
    fn get(&mut self, url: &str, accept: Option<&str>, what: &str) -> Result<Response<Body>> {
        let mut answered = false;
        loop {
            let mut req = self.agent.get(url);
            if let Some(a) = accept {
                req = req.header("Accept", a);
            }
            if let Some(t) = &self.token {
                req = req.header("Authorization", format!("Bearer {t}"));
            }
            let resp = req.call().map_err(|e| self.http_err(what, e))?;
            if resp.status().as_u16() != 401 || answered {
                return Ok(resp);
            }
            let challenge = resp
                .headers()
                .get("www-authenticate")
                .and_then(|v| v.to_str().ok())
                .map(str::to_owned);
            self.authenticate(challenge.as_deref())?;
            answered = true;
        }
    }

    /// Fetches an anonymous bearer token for the challenge.
    fn authenticate(&mut self, header: Option<&str>) -> Result<()> {
        let header =
            header.ok_or_else(|| self.auth_err("HTTP 401 without a WWW-Authenticate challenge"))?;
        let challenge = parse_challenge(header)
            .ok_or_else(|| self.auth_err(format!("cannot parse challenge {header:?}")))?;
        if challenge.scheme != "bearer" {
            return Err(self.auth_err(format!(
                "registry requires {} authentication; only anonymous bearer tokens are supported",
                challenge.scheme
            )));
        }
        let realm = challenge
            .params
            .get("realm")
            .ok_or_else(|| self.auth_err("bearer challenge without a realm"))?
            .clone();
        let realm_ok =
            realm.starts_with("https://") || (realm.starts_with("http://") && self.plain_http_ok);
        if !realm_ok {
            return Err(self.auth_err(format!(
                "refusing token realm {realm:?} (needs https, or a loopback/insecure registry)"
            )));
        }
        let scope = challenge
            .params
            .get("scope")
            .cloned()
            .unwrap_or_else(|| format!("repository:{}:pull", self.repository));
        let mut url = realm.clone();
        url.push(if realm.contains('?') { '&' } else { '?' });
        if let Some(service) = challenge.params.get("service") {
            url.push_str(&format!("service={}&", query_escape(service)));
        }
        url.push_str(&format!("scope={}", query_escape(&scope)));
        tracing::debug!(realm = %realm, scope = %scope, "fetching anonymous registry token");
        let mut resp = self
            .agent
            .get(&url)
            .call()
            .map_err(|e| self.http_err("fetching token", e))?;
        if resp.status().as_u16() != 200 {
            let status = resp.status().as_u16();
            return Err(self.auth_err(format!("token endpoint {realm} answered HTTP {status}")));
        }
        #[derive(serde::Deserialize)]
        struct TokenResponse {
            token: Option<String>,
            access_token: Option<String>,
        }
        let bytes = resp
            .body_mut()
            .with_config()
            .limit(1 << 20)
            .read_to_vec()
            .map_err(|e| self.http_err("reading token", e))?;
        let body: TokenResponse = serde_json::from_slice(&bytes)
            .map_err(|e| self.auth_err(format!("token response from {realm}: {e}")))?;
        let token = body
            .token
            .or(body.access_token)
            .filter(|t| !t.is_empty())
            .ok_or_else(|| self.auth_err(format!("token response from {realm} has no token")))?;
        self.token = Some(token);
        Ok(())
    }

    fn manifest_url(&self, reference: &str) -> String {
        format!(
            "{}/v2/{}/manifests/{}",
            self.base, self.repository, reference
        )
    }

    /// Fetches manifest `reference` (tag or digest); returns its bytes, digest and type.
    fn fetch_manifest(&mut self, reference: &str, what: &str) -> Result<(Vec<u8>, Digest, String)> {
        let url = self.manifest_url(reference);
        let accept = media::MANIFEST_TYPES.join(", ");
        let mut resp = self.get(&url, Some(&accept), what)?;
        if resp.status().as_u16() != 200 {
            return Err(self.status_err(what, resp));
        }
        let content_type = resp
            .headers()
            .get("content-type")
            .and_then(|v| v.to_str().ok())
            .map(|v| v.split(';').next().unwrap_or_default().trim().to_owned())
            .unwrap_or_default();
        let header_digest = resp
            .headers()
            .get("docker-content-digest")
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned);
        let bytes = resp
            .body_mut()
            .with_config()
            .limit(MAX_MANIFEST_SIZE)
            .read_to_vec()
            .map_err(|e| self.http_err(what, e))?;
        let digest = Digest::of_bytes(&bytes);
        if let Some(h) = header_digest
            && let Ok(claimed) = Digest::parse(&h)
            && claimed != digest
        {
            return Err(RegistryError::Digest {
                registry: self.registry.clone(),
                repository: self.repository.clone(),
                what: format!("{what} (Docker-Content-Digest header)"),
                source: Box::new(DigestError::Mismatch {
                    expected: claimed,
                    actual: digest,
                }),
            });
        }
        Ok((bytes, digest, content_type))
    }

    /// Fetches the manifest or index the reference names.
    pub(crate) fn fetch_top_manifest(&mut self) -> Result<(Desc, Vec<u8>), StoreError> {
        let reference = self.reference.manifest_reference();
        let what = format!("manifest {reference}");
        let (bytes, digest, content_type) = self.fetch_manifest(&reference, &what)?;
        if let Some(pinned) = self.reference.digest()
            && pinned != digest
        {
            return Err(RegistryError::Digest {
                registry: self.registry.clone(),
                repository: self.repository.clone(),
                what,
                source: Box::new(DigestError::Mismatch {
                    expected: pinned,
                    actual: digest,
                }),
            }
            .into());
        }
        let desc = Desc {
            media_type: content_type,
            digest,
            size: bytes.len() as u64,
        };
        Ok((desc, bytes))
    }

    fn bar(&self, desc: &Desc) -> ProgressBar {
        if !self.show_progress {
            return ProgressBar::hidden();
        }
        let bar = self.progress.add(ProgressBar::new(desc.size));
        if let Ok(style) = ProgressStyle::with_template(
            "{prefix} [{bar:30}] {bytes:>10}/{total_bytes:<10} {bytes_per_sec:>12} {msg}",
        ) {
            bar.set_style(style.progress_chars("=> "));
        }
        bar.set_prefix(desc.digest.short().to_owned());
        bar
    }

    /// Clears the progress display.
    pub(crate) fn finish(&self) {
        let _ = self.progress.clear();
    }
}

impl Source for RegistryClient {
    fn manifest(&mut self, desc: &Desc) -> Result<Vec<u8>, StoreError> {
        let what = format!("manifest {}", desc.digest);
        let (bytes, digest, _) = self.fetch_manifest(desc.digest.as_str(), &what)?;
        if digest != desc.digest {
            return Err(RegistryError::Digest {
                registry: self.registry.clone(),
                repository: self.repository.clone(),
                what,
                source: Box::new(DigestError::Mismatch {
                    expected: desc.digest.clone(),
                    actual: digest,
                }),
            }
            .into());
        }
        Ok(bytes)
    }

    fn blob(&mut self, desc: &Desc, blobs: &BlobStore) -> Result<(), StoreError> {
        let show = media::is_layer(&desc.media_type);
        if blobs.contains(&desc.digest) {
            if show {
                let bar = self.bar(desc);
                bar.finish_with_message("already present");
            }
            return Ok(());
        }
        let what = format!("blob {}", desc.digest);
        let url = format!("{}/v2/{}/blobs/{}", self.base, self.repository, desc.digest);
        let resp = self.get(&url, None, &what)?;
        if resp.status().as_u16() != 200 {
            return Err(self.status_err(&what, resp).into());
        }
        let bar = if show {
            self.bar(desc)
        } else {
            ProgressBar::hidden()
        };
        let reader = bar.wrap_read(resp.into_body().into_reader());
        let result = blobs.write(reader, Some(&desc.digest), Some(desc.size));
        match result {
            Ok(_) => {
                bar.finish_with_message("done");
                tracing::debug!(blob = %desc.digest, size = desc.size, "fetched blob");
                Ok(())
            }
            Err(source) => {
                bar.abandon_with_message("failed");
                Err(RegistryError::Blob {
                    registry: self.registry.clone(),
                    repository: self.repository.clone(),
                    digest: desc.digest.clone(),
                    source: Box::new(source),
                }
                .into())
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn loopback_hosts() {
        for h in [
            "localhost",
            "localhost:5000",
            "127.0.0.1",
            "127.0.0.1:5000",
            "127.1.2.3:80",
            "[::1]:5000",
            "::1",
        ] {
            assert!(is_loopback_host(h), "{h}");
        }
        for h in [
            "docker.io",
            "registry-1.docker.io",
            "10.0.0.1:5000",
            "quay.io:443",
            "[::2]:5000",
            "localhost.example.com",
        ] {
            assert!(!is_loopback_host(h), "{h}");
        }
    }

    #[test]
    fn parses_bearer_challenges() {
        let c = parse_challenge(
            r#"Bearer realm="https://auth.docker.io/token",service="registry.docker.io",scope="repository:samalba/my-app:pull,push""#,
        )
        .expect("parse");
        assert_eq!(c.scheme, "bearer");
        assert_eq!(c.params["realm"], "https://auth.docker.io/token");
        assert_eq!(c.params["service"], "registry.docker.io");
        assert_eq!(c.params["scope"], "repository:samalba/my-app:pull,push");

        let c = parse_challenge(r#"Basic realm="Registry Realm""#).expect("parse");
        assert_eq!(c.scheme, "basic");
        assert_eq!(c.params["realm"], "Registry Realm");

        let c = parse_challenge(r#"Bearer realm=http://x/t, error="invalid_token", x="a\"b""#)
            .expect("parse");
        assert_eq!(c.params["realm"], "http://x/t");
        assert_eq!(c.params["error"], "invalid_token");
        assert_eq!(c.params["x"], "a\"b");

        assert!(parse_challenge(r#"Bearer realm="unterminated"#).is_none());
        assert!(parse_challenge("").is_none());
    }

    #[test]
    fn escapes_query() {
        assert_eq!(
            query_escape("repository:a/b:pull"),
            "repository%3Aa%2Fb%3Apull"
        );
        assert_eq!(query_escape("x-y.z_~"), "x-y.z_~");
    }
}
