//! Image references (`busybox`, `busybox:1.36`, `127.0.0.1:5000/library/busybox@sha256:…`),
//! parsed with oci-spec's port of Docker's reference grammar and normalised the way Docker
//! does: default registry `docker.io`, `library/` for official images, default tag `latest`.

use std::fmt;
use std::str::FromStr;

use oci_spec::distribution::{ParseError, Reference};

use crate::digest::Digest;

/// Errors of this module.
#[derive(Debug, thiserror::Error)]
pub enum ReferenceError {
    #[error("invalid image reference {reference:?}: {source}")]
    Invalid {
        reference: String,
        #[source]
        source: ParseError,
    },
    #[error("invalid image reference {reference:?}: {source}")]
    Digest {
        reference: String,
        #[source]
        source: crate::digest::DigestError,
    },
}

/// Result alias of this module.
pub type Result<T, E = ReferenceError> = std::result::Result<T, E>;

/// A parsed, normalised image reference.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct ImageRef {
    inner: Reference,
}

impl ImageRef {
    /// Parses and normalises `reference`.
    pub fn parse(reference: &str) -> Result<Self> {
        let inner = Reference::try_from(reference).map_err(|source| ReferenceError::Invalid {
            reference: reference.to_owned(),
            source,
        })?;
        if let Some(d) = inner.digest() {
            Digest::parse(d).map_err(|source| ReferenceError::Digest {
                reference: reference.to_owned(),
                source,
            })?;
        }
        Ok(Self { inner })
    }

    /// The normalised form, e.g. `docker.io/library/busybox:latest`; this is the name the
    /// store records.
    pub fn name(&self) -> String {
        self.inner.whole()
    }

    /// Registry host (and port), e.g. `docker.io` or `127.0.0.1:5000`.
    pub fn registry(&self) -> &str {
        self.inner.registry()
    }

    /// Host to talk to for the distribution API (`docker.io` is served by
    /// `registry-1.docker.io`).
    pub fn api_host(&self) -> &str {
        match self.registry() {
            "docker.io" | "index.docker.io" => "registry-1.docker.io",
            other => other,
        }
    }

    /// Repository path within the registry, e.g. `library/busybox`.
    pub fn repository(&self) -> &str {
        self.inner.repository()
    }

    /// The tag, when the reference has one (`latest` when it had neither tag nor digest).
    pub fn tag(&self) -> Option<&str> {
        self.inner.tag()
    }

    /// The digest, when the reference pins one.
    pub fn digest(&self) -> Option<Digest> {
        // Validated in `parse`.
        self.inner.digest().and_then(|d| Digest::parse(d).ok())
    }

    /// What to ask the registry's manifest endpoint for: the digest if pinned, else the tag.
    pub fn manifest_reference(&self) -> String {
        match (self.digest(), self.tag()) {
            (Some(d), _) => d.to_string(),
            (None, Some(t)) => t.to_owned(),
            (None, None) => "latest".to_owned(),
        }
    }

    /// The same repository pinned to `digest` (tag kept), for lookups by content.
    pub fn with_digest(&self, digest: &Digest) -> Self {
        let inner = match self.tag() {
            Some(tag) => Reference::with_tag_and_digest(
                self.registry().to_owned(),
                self.repository().to_owned(),
                tag.to_owned(),
                digest.to_string(),
            ),
            None => Reference::with_digest(
                self.registry().to_owned(),
                self.repository().to_owned(),
                digest.to_string(),
            ),
        };
        Self { inner }
    }
}

impl fmt::Display for ImageRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.name())
    }
}

impl FromStr for ImageRef {
    type Err = ReferenceError;
    fn from_str(s: &str) -> Result<Self> {
        Self::parse(s)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const HEX: &str = "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855";

    #[test]
    fn normalises() {
        let cases = [
            ("busybox", "docker.io/library/busybox:latest"),
            ("busybox:latest", "docker.io/library/busybox:latest"),
            ("busybox:1.36", "docker.io/library/busybox:1.36"),
            ("library/busybox", "docker.io/library/busybox:latest"),
            ("docker.io/busybox", "docker.io/library/busybox:latest"),
            (
                "index.docker.io/library/busybox:1",
                "docker.io/library/busybox:1",
            ),
            ("someone/tool:v2", "docker.io/someone/tool:v2"),
            (
                "127.0.0.1:5000/library/busybox:1.36",
                "127.0.0.1:5000/library/busybox:1.36",
            ),
            (
                "127.0.0.1:5000/berth/busybox",
                "127.0.0.1:5000/berth/busybox:latest",
            ),
            ("localhost/app", "localhost/app:latest"),
            ("localhost:5000/a/b/c:t", "localhost:5000/a/b/c:t"),
            ("quay.io/x/y:1.0-rc.1", "quay.io/x/y:1.0-rc.1"),
        ];
        for (input, want) in cases {
            let r = ImageRef::parse(input).unwrap_or_else(|e| panic!("{input}: {e}"));
            assert_eq!(r.name(), want, "{input}");
            // Normalisation is idempotent.
            assert_eq!(ImageRef::parse(&r.name()).expect("reparse").name(), want);
        }
    }

    #[test]
    fn parts_and_digests() {
        let r = ImageRef::parse("127.0.0.1:5000/library/busybox:1.36").expect("parse");
        assert_eq!(r.registry(), "127.0.0.1:5000");
        assert_eq!(r.api_host(), "127.0.0.1:5000");
        assert_eq!(r.repository(), "library/busybox");
        assert_eq!(r.tag(), Some("1.36"));
        assert_eq!(r.manifest_reference(), "1.36");

        let pinned = format!("busybox@sha256:{HEX}");
        let r = ImageRef::parse(&pinned).expect("parse");
        assert_eq!(r.tag(), None);
        assert_eq!(r.digest().map(|d| d.hex().to_owned()).as_deref(), Some(HEX));
        assert_eq!(r.manifest_reference(), format!("sha256:{HEX}"));
        assert_eq!(r.name(), format!("docker.io/library/busybox@sha256:{HEX}"));
        assert_eq!(r.api_host(), "registry-1.docker.io");

        let t = ImageRef::parse("x:1").expect("parse");
        let d = Digest::parse(&format!("sha256:{HEX}")).expect("digest");
        assert_eq!(
            t.with_digest(&d).name(),
            format!("docker.io/library/x:1@sha256:{HEX}")
        );
    }

    #[test]
    fn rejects() {
        for bad in [
            "",
            "Busybox",
            "busybox:",
            ":tag",
            "a/../b",
            "/abs",
            "busy box",
            "busybox:tag with space",
            "busybox@sha256:abc",
            "busybox@md5:d41d8cd98f00b204e9800998ecf8427e",
            "registry:5000/",
            "busybox:-tag",
        ] {
            assert!(ImageRef::parse(bad).is_err(), "{bad:?} should be rejected");
        }
    }
}
