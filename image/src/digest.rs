//! Content digests (`sha256:<hex>`) and readers that hash what flows through them.
//!
//! Only sha256 is supported: it is what every registry and build tool produces today. A
//! descriptor naming another algorithm is rejected with a clear error rather than trusted.

use std::fmt;
use std::io::{self, Read};
use std::str::FromStr;

use serde::{Deserialize, Deserializer, Serialize, Serializer};
use sha2::{Digest as _, Sha256};

/// Errors of this module.
#[derive(Debug, Clone, thiserror::Error)]
pub enum DigestError {
    #[error("invalid digest {value:?}: {reason}")]
    Invalid { value: String, reason: &'static str },
    #[error("unsupported digest algorithm in {value:?} (only sha256 is supported)")]
    UnsupportedAlgorithm { value: String },
    #[error("content does not match digest {expected}: it hashes to {actual}")]
    Mismatch { expected: Digest, actual: Digest },
    #[error("content of {digest} is {actual} bytes, expected {expected}")]
    SizeMismatch {
        digest: String,
        expected: u64,
        actual: u64,
    },
    #[error("content of {digest} exceeds its declared size of {expected} bytes")]
    TooLarge { digest: String, expected: u64 },
}

/// Result alias of this module.
pub type Result<T, E = DigestError> = std::result::Result<T, E>;

const SHA256_PREFIX: &str = "sha256:";

/// A validated sha256 digest, kept in its canonical string form `sha256:<64 lowercase hex>`.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Digest(String);

impl Digest {
    /// Parses `sha256:<64 lowercase hex>`.
    pub fn parse(value: &str) -> Result<Self> {
        let Some((algorithm, hex)) = value.split_once(':') else {
            return Err(DigestError::Invalid {
                value: value.to_owned(),
                reason: "missing algorithm prefix",
            });
        };
        if algorithm != "sha256" {
            return Err(DigestError::UnsupportedAlgorithm {
                value: value.to_owned(),
            });
        }
        Self::from_hex(hex).map_err(|_| DigestError::Invalid {
            value: value.to_owned(),
            reason: "expected 64 lowercase hex characters after sha256:",
        })
    }

    /// Builds a digest from its 64 lowercase hex characters.
    pub fn from_hex(hex: &str) -> Result<Self> {
        if hex.len() != 64
            || !hex
                .bytes()
                .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
        {
            return Err(DigestError::Invalid {
                value: hex.to_owned(),
                reason: "expected 64 lowercase hex characters",
            });
        }
        Ok(Self(format!("{SHA256_PREFIX}{hex}")))
    }

    /// The digest of `bytes`.
    pub fn of_bytes(bytes: &[u8]) -> Self {
        Self::from_hasher(Sha256::new_with_prefix(bytes))
    }

    fn from_hasher(hasher: Sha256) -> Self {
        Self(format!("{SHA256_PREFIX}{}", hex::encode(hasher.finalize())))
    }

    /// `sha256:<hex>`.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The 64 hex characters.
    pub fn hex(&self) -> &str {
        &self.0[SHA256_PREFIX.len()..]
    }

    /// The first 12 hex characters, as `docker images` shows an image id.
    pub fn short(&self) -> &str {
        &self.hex()[..12]
    }
}

impl fmt::Display for Digest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl fmt::Debug for Digest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl FromStr for Digest {
    type Err = DigestError;
    fn from_str(s: &str) -> Result<Self> {
        Self::parse(s)
    }
}

impl Serialize for Digest {
    fn serialize<S: Serializer>(&self, serializer: S) -> std::result::Result<S::Ok, S::Error> {
        serializer.serialize_str(&self.0)
    }
}

impl<'de> Deserialize<'de> for Digest {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> std::result::Result<Self, D::Error> {
        let s = String::deserialize(deserializer)?;
        Self::parse(&s).map_err(serde::de::Error::custom)
    }
}

impl TryFrom<&oci_spec::image::Digest> for Digest {
    type Error = DigestError;
    fn try_from(d: &oci_spec::image::Digest) -> Result<Self> {
        Self::parse(d.as_ref())
    }
}

/// A reader that hashes and counts everything read through it, and optionally checks the
/// result against an expected digest and size.
///
/// Reading past the expected size fails at once (a hostile source cannot fill the disk), and
/// [`HashingReader::finish`] drains the rest and compares digests.
pub struct HashingReader<R> {
    inner: R,
    hasher: Sha256,
    count: u64,
    expected: Option<Digest>,
    expected_size: Option<u64>,
}

impl<R: Read> HashingReader<R> {
    /// Hashes without an expectation; [`HashingReader::finish`] returns what was seen.
    pub fn new(inner: R) -> Self {
        Self {
            inner,
            hasher: Sha256::new(),
            count: 0,
            expected: None,
            expected_size: None,
        }
    }

    /// Hashes and verifies against `expected` (and `size`, when known) at [`HashingReader::finish`].
    pub fn verifying(inner: R, expected: Digest, size: Option<u64>) -> Self {
        Self {
            inner,
            hasher: Sha256::new(),
            count: 0,
            expected: Some(expected),
            expected_size: size,
        }
    }

    /// Bytes read so far.
    pub fn count(&self) -> u64 {
        self.count
    }

    /// Reads the remainder to EOF, then returns the digest and size, or an error when they
    /// differ from the expectation. The inner reader is returned so callers can drain layers
    /// underneath.
    pub fn finish(mut self) -> Result<(Digest, u64, R), FinishError> {
        io::copy(&mut self, &mut io::sink()).map_err(FinishError::Io)?;
        let actual = Digest::from_hasher(self.hasher);
        if let Some(expected) = self.expected {
            if let Some(size) = self.expected_size
                && size != self.count
            {
                return Err(FinishError::Digest(DigestError::SizeMismatch {
                    digest: expected.to_string(),
                    expected: size,
                    actual: self.count,
                }));
            }
            if expected != actual {
                return Err(FinishError::Digest(DigestError::Mismatch {
                    expected,
                    actual,
                }));
            }
        }
        Ok((actual, self.count, self.inner))
    }
}

/// Why [`HashingReader::finish`] failed: reading the rest, or the content is wrong.
#[derive(Debug, thiserror::Error)]
pub enum FinishError {
    #[error("reading content: {0}")]
    Io(#[source] io::Error),
    #[error(transparent)]
    Digest(DigestError),
}

impl<R: Read> Read for HashingReader<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.hasher.update(&buf[..n]);
        self.count += n as u64;
        if let Some(size) = self.expected_size
            && self.count > size
        {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                DigestError::TooLarge {
                    digest: self
                        .expected
                        .as_ref()
                        .map(Digest::to_string)
                        .unwrap_or_default(),
                    expected: size,
                },
            ));
        }
        Ok(n)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const EMPTY: &str = "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855";

    #[test]
    fn parses_and_rejects() {
        let d = Digest::parse(&format!("sha256:{EMPTY}")).expect("valid");
        assert_eq!(d.hex(), EMPTY);
        assert_eq!(d.short(), &EMPTY[..12]);
        assert_eq!(Digest::of_bytes(b""), d);
        assert!(matches!(
            Digest::parse(&format!("sha512:{EMPTY}")),
            Err(DigestError::UnsupportedAlgorithm { .. })
        ));
        assert!(Digest::parse(EMPTY).is_err());
        assert!(Digest::parse("sha256:abc").is_err());
        assert!(Digest::parse(&format!("sha256:{}", EMPTY.to_uppercase())).is_err());
        assert!(Digest::parse(&format!("sha256:{EMPTY}/../x")).is_err());
    }

    #[test]
    fn hashing_reader_verifies() {
        let data = b"hello world";
        let good = Digest::of_bytes(data);
        let r = HashingReader::verifying(&data[..], good.clone(), Some(11));
        let (d, n, _) = r.finish().expect("matches");
        assert_eq!((d, n), (good.clone(), 11));

        let bad = Digest::of_bytes(b"other");
        let r = HashingReader::verifying(&data[..], bad, None);
        assert!(matches!(
            r.finish(),
            Err(FinishError::Digest(DigestError::Mismatch { .. }))
        ));

        let r = HashingReader::verifying(&data[..], good.clone(), Some(12));
        assert!(matches!(
            r.finish(),
            Err(FinishError::Digest(DigestError::SizeMismatch { .. }))
        ));

        let mut r = HashingReader::verifying(&data[..], good, Some(4));
        let err = io::copy(&mut r, &mut io::sink()).expect_err("too large");
        assert!(
            err.to_string().contains("exceeds its declared size"),
            "{err}"
        );
    }
}
