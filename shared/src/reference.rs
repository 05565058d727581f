//! Image references: parsing and normalization exactly as the canonical grammar of
//! `distribution/reference` (the one Docker, containerd and the kubelet use).
//!
//! Why our own parser: `oci-client` re-exports oci-spec's `Reference`, which departs from the
//! grammar (no IPv6 hosts, Unicode `\w` in tags, digests checked for length only, 64-hex IDs
//! accepted as names, `latest` added at parse time).
//! This module mirrors the Go code closely (the same regular expressions with ASCII classes,
//! `splitDockerDomain`, `ParseNormalizedNamed`, `digest.Parse`) and its tests cover the grammar's
//! edge cases, valid and invalid. It must not do any network access or naming policy: that is [`crate::naming`].
//!
//! ```text
//! reference        := name [ ":" tag ] [ "@" digest ]
//! name             := [domain '/'] remote-name
//! domain           := host [':' port-number]
//! host             := domain-name | IPv4address | \[ IPv6address \]
//! domain-component := /([a-zA-Z0-9]|[a-zA-Z0-9][a-zA-Z0-9-]*[a-zA-Z0-9])/
//! path-component   := alpha-numeric [separator alpha-numeric]*
//! alpha-numeric    := /[a-z0-9]+/
//! separator        := /[_.]|__|[-]+/
//! tag              := /[\w][\w.-]{0,127}/
//! digest           := algorithm ":" hex   (sha256: 64, sha384: 96, sha512: 128 lower-case hex)
//! ```
//!
//! Over 400 lines: the whole grammar, its normalization and the familiar form live here once
//! (every function parses references through this file).

use std::fmt;
use std::str::FromStr;
use std::sync::LazyLock;

use regex::Regex;
use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// The registry Docker Hub images live in once normalized.
pub const DEFAULT_DOMAIN: &str = "docker.io";
/// The historical Docker Hub host, normalized to [`DEFAULT_DOMAIN`].
const LEGACY_DEFAULT_DOMAIN: &str = "index.docker.io";
/// The host Docker Hub's registry API answers on (`docker.io` itself serves no `/v2/`).
pub const DOCKER_HUB_API_HOST: &str = "registry-1.docker.io";
/// Every host name that means Docker Hub: in references, in docker config keys, in API URLs.
/// The one list of them; [`canonical_host`] folds them to [`DEFAULT_DOMAIN`].
pub const DOCKER_HUB_HOSTS: [&str; 4] = [
    DEFAULT_DOMAIN,
    LEGACY_DEFAULT_DOMAIN,
    DOCKER_HUB_API_HOST,
    "registry.hub.docker.com",
];
/// The namespace of single-component Docker Hub names (`nginx` is `library/nginx`).
const OFFICIAL_REPO_PREFIX: &str = "library/";
/// The tag a reference without tag or digest means.
pub const DEFAULT_TAG: &str = "latest";
/// The longest repository path the grammar allows: distribution/reference v0.6 (what Kubernetes
/// and Docker vendor) applies it to the path after normalization (`library/` counts, the domain
/// does not).
pub const NAME_TOTAL_LENGTH_MAX: usize = 255;

const DOMAIN_COMPONENT: &str = r"(?:[a-zA-Z0-9]|[a-zA-Z0-9][a-zA-Z0-9-]*[a-zA-Z0-9])";
const IPV6: &str = r"\[(?:[a-fA-F0-9:]+)\]";
const PATH_COMPONENT: &str = r"[a-z0-9]+(?:(?:[._]|__|[-]+)[a-z0-9]+)*";
/// Go's `\w` is ASCII-only; Rust's is Unicode (and compiles to a far larger automaton).
const TAG: &str = r"[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}";
const DIGEST: &str = r"[A-Za-z][A-Za-z0-9]*(?:[-_+.][A-Za-z][A-Za-z0-9]*)*[:][0-9a-fA-F]{32,}";

fn domain_pattern() -> String {
    let name = format!("{DOMAIN_COMPONENT}(?:\\.{DOMAIN_COMPONENT})*");
    format!("(?:{name}|{IPV6})(?::[0-9]+)?")
}

fn name_pattern() -> String {
    format!(
        "(?:{}/)?{PATH_COMPONENT}(?:/{PATH_COMPONENT})*",
        domain_pattern()
    )
}

// The patterns below are constants: `expect` can only fire on a defect in them, which every test
// of this module would show at once.

/// `ReferenceRegexp` anchored: name, tag, digest.
static REFERENCE: LazyLock<Regex> = LazyLock::new(|| {
    Regex::new(&format!(
        "^({})(?::({TAG}))?(?:@({DIGEST}))?$",
        name_pattern()
    ))
    .expect("static regex")
});

/// `anchoredNameRegexp`: an optional domain and the path.
static NAME: LazyLock<Regex> = LazyLock::new(|| {
    Regex::new(&format!(
        "^(?:({})/)?({PATH_COMPONENT}(?:/{PATH_COMPONENT})*)$",
        domain_pattern()
    ))
    .expect("static regex")
});

/// `anchoredTagRegexp`: used to say which part of an invalid reference is wrong.
static ANCHORED_TAG: LazyLock<Regex> =
    LazyLock::new(|| Regex::new(&format!("^{TAG}$")).expect("static regex"));

/// How many parsed texts [`Reference::parse`] remembers before it forgets them all (a bound on
/// the memory the texts of a hostile cluster can take: at most this many of
/// [`PARSED_KEPT_LEN`] bytes).
pub const PARSED_KEPT: usize = 4096;

/// Texts longer than this are parsed every time, never remembered.
pub const PARSED_KEPT_LEN: usize = 512;

/// What [`Reference::parse`] has parsed, by text: a [`Recent`](crate::recent::Recent) whose
/// entries never expire (a text always parses the same), so it forgets only when full.
type Parsed = crate::recent::Recent<String, Result<Reference, ReferenceError>>;
static PARSED: LazyLock<std::sync::Mutex<Parsed>> =
    LazyLock::new(|| std::sync::Mutex::new(Parsed::new(std::time::Duration::MAX, PARSED_KEPT)));

/// `anchoredIdentifierRegexp`: a bare image ID, which is not a name.
static IDENTIFIER: LazyLock<Regex> =
    LazyLock::new(|| Regex::new("^[a-f0-9]{64}$").expect("static regex"));

/// Why a string is not a valid image reference. Each variant names one thing a user can fix.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ReferenceError {
    /// The string was empty.
    #[error("image reference is empty")]
    Empty,
    /// The repository path (after normalization, without the registry) is longer than 255
    /// characters.
    #[error("repository path is {0} characters long; at most 255 are allowed")]
    NameTooLong(usize),
    /// The repository path has upper-case letters, which the grammar forbids.
    #[error("repository name {0:?} must be lowercase")]
    NameContainsUppercase(String),
    /// A bare 64-hex image ID was given where a name was expected.
    #[error("{0:?} is a 64-character hexadecimal image ID, not a repository name")]
    IdentifierNotName(String),
    /// The tag is not `[\w][\w.-]{{0,127}}`.
    #[error(
        "tag {0:?} is invalid: at most 128 characters of letters, digits, '_', '.' and '-', not starting with '.' or '-'"
    )]
    InvalidTag(String),
    /// The digest's algorithm is not one registries support.
    #[error("digest {0:?} uses an unsupported algorithm (sha256, sha384 and sha512 are)")]
    UnsupportedDigest(String),
    /// The digest's hex part has the wrong length or case for its algorithm.
    #[error("digest {0:?} is invalid: {1}")]
    InvalidDigest(String, &'static str),
    /// Anything else the grammar rejects (bad characters, empty components, stray separators).
    #[error("invalid reference format: {0:?}")]
    InvalidFormat(String),
}

/// A parsed, normalized image reference: registry, repository path, optional tag and digest.
///
/// Invariants: `domain` and `path` together match the grammar, `path` is lowercase, the whole
/// path is at most 255 characters, and `digest` (if any) is valid for its algorithm.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Reference {
    domain: String,
    path: String,
    tag: Option<String>,
    digest: Option<String>,
}

// === impl Reference ===

impl Reference {
    /// Parses a reference as a user writes it (`nginx`, `quay.io/a/b:1`, `localhost:5000/x@sha256:…`)
    /// and normalizes it the way Docker and the kubelet do (`ParseNormalizedNamed`): default
    /// registry `docker.io`, `library/` for single-component Docker Hub names, `index.docker.io`
    /// read as `docker.io`. No tag is added: see [`Reference::with_default_tag`].
    pub fn parse_normalized(s: &str) -> Result<Self, ReferenceError> {
        if s.is_empty() {
            return Err(ReferenceError::Empty);
        }
        if IDENTIFIER.is_match(s) {
            return Err(ReferenceError::IdentifierNotName(s.to_string()));
        }
        let (domain, remainder) = split_docker_domain(s);
        let remote_name = remainder
            .find(':')
            .map_or(remainder.as_str(), |i| &remainder[..i]);
        if remote_name.to_lowercase() != remote_name {
            return Err(ReferenceError::NameContainsUppercase(
                remote_name.to_string(),
            ));
        }
        // Errors quote what the user wrote, not our normalized form of it.
        Self::parse(&format!("{domain}/{remainder}")).map_err(|e| match e {
            ReferenceError::InvalidFormat(_) => ReferenceError::InvalidFormat(s.to_string()),
            other => other,
        })
    }

    /// Parses a fully qualified reference without normalizing it (`reference.Parse`). Prefer
    /// [`Reference::parse_normalized`] for anything a user typed.
    ///
    /// The result for a given text is remembered ([`PARSED_KEPT`] texts of up to
    /// [`PARSED_KEPT_LEN`] bytes): a cluster runs a few hundred images in thousands of
    /// workloads, and the grammar's regular expressions were a fifth of the rollout's CPU at
    /// 10,000 workloads, parsing the same texts again for every workload.
    pub fn parse(s: &str) -> Result<Self, ReferenceError> {
        if s.len() > PARSED_KEPT_LEN {
            return Self::parse_uncached(s);
        }
        let now = std::time::Instant::now();
        if let Some(known) = PARSED.lock().ok().and_then(|m| m.get(s, now).cloned()) {
            return known;
        }
        let parsed = Self::parse_uncached(s);
        if let Ok(mut memo) = PARSED.lock() {
            memo.insert(s.to_string(), parsed.clone(), now);
        }
        parsed
    }

    fn parse_uncached(s: &str) -> Result<Self, ReferenceError> {
        if s.is_empty() {
            return Err(ReferenceError::Empty);
        }
        let Some(caps) = REFERENCE.captures(s) else {
            if REFERENCE.is_match(&s.to_lowercase()) {
                return Err(ReferenceError::NameContainsUppercase(s.to_string()));
            }
            return Err(classify_invalid(s));
        };
        let name = caps.get(1).map_or("", |m| m.as_str());
        let name_caps = NAME
            .captures(name)
            .ok_or_else(|| ReferenceError::InvalidFormat(s.to_string()))?;
        let domain = name_caps.get(1).map_or("", |m| m.as_str()).to_string();
        let path = name_caps.get(2).map_or("", |m| m.as_str()).to_string();
        if path.len() > NAME_TOTAL_LENGTH_MAX {
            return Err(ReferenceError::NameTooLong(path.len()));
        }
        let tag = caps.get(2).map(|m| m.as_str().to_string());
        let digest = match caps.get(3) {
            Some(m) => Some(validate_digest(m.as_str())?),
            None => None,
        };
        Ok(Self {
            domain,
            path,
            tag,
            digest,
        })
    }

    /// The registry host (and port): `docker.io`, `quay.io`, `localhost:5000`, `[::1]:5000`.
    pub fn domain(&self) -> &str {
        &self.domain
    }

    /// The repository path inside the registry: `library/nginx`.
    pub fn path(&self) -> &str {
        &self.path
    }

    /// The tag, if the reference has one.
    pub fn tag(&self) -> Option<&str> {
        self.tag.as_deref()
    }

    /// The digest (`sha256:…`), if the reference has one.
    pub fn digest(&self) -> Option<&str> {
        self.digest.as_deref()
    }

    /// `domain/path`: the repository without tag or digest.
    pub fn repository(&self) -> String {
        if self.domain.is_empty() {
            self.path.clone()
        } else {
            format!("{}/{}", self.domain, self.path)
        }
    }

    /// What to ask the registry for: the digest when there is one (it wins over the tag, as
    /// in the kubelet), else the tag, else `latest`.
    pub fn pull_reference(&self) -> &str {
        self.digest
            .as_deref()
            .or(self.tag.as_deref())
            .unwrap_or(DEFAULT_TAG)
    }

    /// The same reference with `:latest` added when it has neither tag nor digest
    /// (`TagNameOnly`): the form the cluster actually runs.
    #[must_use]
    pub fn with_default_tag(mut self) -> Self {
        if self.tag.is_none() && self.digest.is_none() {
            self.tag = Some(DEFAULT_TAG.to_string());
        }
        self
    }

    /// The short form people write (`nginx:1.14.0`, `quay.io/a/b`): Docker's `FamiliarString`.
    pub fn familiar(&self) -> String {
        let mut path = self.path.as_str();
        let mut out = String::new();
        // Docker Hub's host can be left out unless the first path component would then be read
        // as a host (`docker.io/a.b/c`), which Docker's own FamiliarString gets wrong.
        let first = path.split('/').next().unwrap_or_default();
        let first_looks_like_host =
            first.contains(['.', ':']) || first == "localhost" || !path.contains('/');
        if self.domain == DEFAULT_DOMAIN && !first_looks_like_host {
            if let Some(rest) = path.strip_prefix(OFFICIAL_REPO_PREFIX)
                && !rest.contains('/')
            {
                path = rest;
            }
        } else {
            out.push_str(&self.domain);
            out.push('/');
        }
        out.push_str(path);
        self.push_tag_digest(&mut out);
        out
    }

    fn push_tag_digest(&self, out: &mut String) {
        if let Some(tag) = &self.tag {
            out.push(':');
            out.push_str(tag);
        }
        if let Some(digest) = &self.digest {
            out.push('@');
            out.push_str(digest);
        }
    }
}

impl fmt::Display for Reference {
    /// The fully qualified form: `docker.io/library/nginx:1.14.0`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut out = self.repository();
        self.push_tag_digest(&mut out);
        f.write_str(&out)
    }
}

impl FromStr for Reference {
    type Err = ReferenceError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::parse_normalized(s)
    }
}

impl Serialize for Reference {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for Reference {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        Self::parse_normalized(&s).map_err(serde::de::Error::custom)
    }
}

/// `splitDockerDomain`: decides whether the first component is a registry host.
fn split_docker_domain(name: &str) -> (String, String) {
    let (mut domain, remainder) = match name.find('/') {
        Some(i) => {
            let first = &name[..i];
            let is_host =
                first.contains(['.', ':']) || first == "localhost" || first.to_lowercase() != first;
            if is_host {
                (first.to_string(), name[i + 1..].to_string())
            } else {
                (DEFAULT_DOMAIN.to_string(), name.to_string())
            }
        }
        None => (DEFAULT_DOMAIN.to_string(), name.to_string()),
    };
    if domain == LEGACY_DEFAULT_DOMAIN {
        domain = DEFAULT_DOMAIN.to_string();
    }
    let remainder = if domain == DEFAULT_DOMAIN && !remainder.contains('/') {
        format!("{OFFICIAL_REPO_PREFIX}{remainder}")
    } else {
        remainder
    };
    (domain, remainder)
}

/// A registry host as written in a reference, a docker config key (`https://index.docker.io/v1/`)
/// or a URL, reduced to the host it names: scheme and path dropped, lower-cased, Docker Hub's
/// aliases ([`DOCKER_HUB_HOSTS`]) folded to `docker.io`.
pub fn canonical_host(key: &str) -> String {
    let no_scheme = key
        .strip_prefix("https://")
        .or_else(|| key.strip_prefix("http://"))
        .unwrap_or(key);
    let host = no_scheme
        .split('/')
        .next()
        .unwrap_or(no_scheme)
        .to_lowercase();
    if DOCKER_HUB_HOSTS.contains(&host.as_str()) {
        DEFAULT_DOMAIN.to_string()
    } else {
        host
    }
}

/// Names the part of an invalid reference that is wrong, so the error says what to fix.
fn classify_invalid(s: &str) -> ReferenceError {
    // A tag is whatever follows the last ':' after the last '/', before any '@'.
    let before_digest = s.split('@').next().unwrap_or(s);
    let last_slash = before_digest.rfind('/').map_or(0, |i| i + 1);
    if let Some(colon) = before_digest[last_slash..].rfind(':') {
        let tag = &before_digest[last_slash + colon + 1..];
        if !ANCHORED_TAG.is_match(tag) {
            return ReferenceError::InvalidTag(tag.to_string());
        }
    }
    if let Some((_, digest)) = s.split_once('@')
        && let Err(e) = validate_digest(digest)
    {
        return e;
    }
    ReferenceError::InvalidFormat(s.to_string())
}

/// `digest.Parse` + `Validate`: known algorithm, right length, lower-case hex.
pub fn validate_digest(d: &str) -> Result<String, ReferenceError> {
    let Some((algorithm, hex)) = d.split_once(':') else {
        return Err(ReferenceError::InvalidDigest(
            d.to_string(),
            "missing ':' between algorithm and hex",
        ));
    };
    let len = match algorithm {
        "sha256" => 64,
        "sha384" => 96,
        "sha512" => 128,
        _ => return Err(ReferenceError::UnsupportedDigest(d.to_string())),
    };
    if hex.len() != len {
        return Err(ReferenceError::InvalidDigest(
            d.to_string(),
            "wrong length for its algorithm",
        ));
    }
    if !hex.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f')) {
        return Err(ReferenceError::InvalidDigest(
            d.to_string(),
            "hex must be lower-case 0-9a-f",
        ));
    }
    Ok(d.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_remembered_parse_answers_what_parsing_answers() {
        let texts = [
            "docker.io/library/nginx:1.25".to_string(),
            "docker.io/library/Nginx:1.25".to_string(),
            "quay.io/a/b@sha256:0000".to_string(),
            format!("docker.io/{}:1", "a".repeat(600)),
        ];
        for text in &texts {
            let first = Reference::parse(text);
            assert_eq!(first, Reference::parse_uncached(text), "{text}");
            assert_eq!(Reference::parse(text), first, "asked again: {text}");
        }
        // Past the bound the memo starts over; answers stay the same.
        for i in 0..PARSED_KEPT + 10 {
            let text = format!("registry.local/app{i}:1");
            assert_eq!(Reference::parse(&text), Reference::parse_uncached(&text));
        }
        assert_eq!(
            Reference::parse(&texts[0]).map(|r| r.to_string()),
            Ok("docker.io/library/nginx:1.25".to_string())
        );
        assert!(
            PARSED
                .lock()
                .map(|m| m.len() <= PARSED_KEPT)
                .unwrap_or(false)
        );
    }
    use proptest::prelude::*;

    const D: &str = "sha256:ffffffffffffffffffffffffffffffffffffffffffffffffffffffffffffffff";

    fn norm(s: &str) -> String {
        Reference::parse_normalized(s)
            .unwrap_or_else(|e| panic!("{s}: {e}"))
            .to_string()
    }

    #[test]
    fn docker_hub_names_are_normalized() {
        assert_eq!(norm("nginx"), "docker.io/library/nginx");
        assert_eq!(norm("nginx:1.14.0"), "docker.io/library/nginx:1.14.0");
        assert_eq!(norm("library/nginx"), "docker.io/library/nginx");
        assert_eq!(norm("docker.io/nginx"), "docker.io/library/nginx");
        assert_eq!(norm("index.docker.io/nginx"), "docker.io/library/nginx");
        assert_eq!(
            norm("index.docker.io/fluent/fluentd:v1"),
            "docker.io/fluent/fluentd:v1"
        );
        assert_eq!(norm("bitnami/redis:7"), "docker.io/bitnami/redis:7");
        assert_eq!(norm("a/b/c"), "docker.io/a/b/c");
    }

    #[test]
    fn registries_ports_localhost_and_ipv6() {
        let r = Reference::parse_normalized("quay.io/prometheus/node-exporter:v1.8").unwrap();
        assert_eq!(
            (r.domain(), r.path(), r.tag()),
            ("quay.io", "prometheus/node-exporter", Some("v1.8"))
        );
        let r = Reference::parse_normalized("localhost:5000/foo/bar:tag").unwrap();
        assert_eq!((r.domain(), r.path()), ("localhost:5000", "foo/bar"));
        let r = Reference::parse_normalized("localhost/foo").unwrap();
        assert_eq!((r.domain(), r.path()), ("localhost", "foo"));
        // Without a '/' the ':' is a tag: Docker reads `localhost:5000` as image localhost, tag 5000.
        let r = Reference::parse_normalized("localhost:5000").unwrap();
        assert_eq!(
            (r.domain(), r.path(), r.tag()),
            ("docker.io", "library/localhost", Some("5000"))
        );
        let r = Reference::parse_normalized("[::1]:5000/foo:v1").unwrap();
        assert_eq!(
            (r.domain(), r.path(), r.tag()),
            ("[::1]:5000", "foo", Some("v1"))
        );
        let r = Reference::parse_normalized("[2001:db8::1]/foo").unwrap();
        assert_eq!(r.domain(), "[2001:db8::1]");
        let r = Reference::parse_normalized("127.0.0.1:5000/a/b").unwrap();
        assert_eq!(r.domain(), "127.0.0.1:5000");
        // Upper case is allowed in the host, never in the path.
        let r = Reference::parse_normalized("Foo.Example.com/bar").unwrap();
        assert_eq!(r.domain(), "Foo.Example.com");
        let r = Reference::parse_normalized("xn--n3h.com:443/a").unwrap();
        assert_eq!(r.domain(), "xn--n3h.com:443");
    }

    #[test]
    fn tags_and_digests() {
        let r = Reference::parse_normalized(&format!("nginx@{D}")).unwrap();
        assert_eq!((r.tag(), r.digest()), (None, Some(D)));
        assert_eq!(r.pull_reference(), D);
        let r = Reference::parse_normalized(&format!("nginx:1.2@{D}")).unwrap();
        assert_eq!((r.tag(), r.digest()), (Some("1.2"), Some(D)));
        assert_eq!(r.pull_reference(), D);
        assert_eq!(r.to_string(), format!("docker.io/library/nginx:1.2@{D}"));
        let r = Reference::parse_normalized("localhost:5000/a@sha512:".to_string().as_str());
        assert!(r.is_err());
        let tag128 = "a".repeat(128);
        assert!(Reference::parse_normalized(&format!("nginx:{tag128}")).is_ok());
        assert_eq!(
            Reference::parse_normalized(&format!("nginx:{tag128}b")),
            Err(ReferenceError::InvalidTag(format!("{tag128}b")))
        );
        assert_eq!(
            Reference::parse_normalized("nginx")
                .unwrap()
                .with_default_tag()
                .tag(),
            Some("latest")
        );
        assert_eq!(
            Reference::parse_normalized(&format!("nginx@{D}"))
                .unwrap()
                .with_default_tag()
                .tag(),
            None
        );
        assert!(Reference::parse_normalized("nginx:_under").is_ok());
        // `\w` in the grammar is ASCII, as in Go.
        assert_eq!(
            Reference::parse_normalized("nginx:caf\u{e9}"),
            Err(ReferenceError::InvalidTag("caf\u{e9}".into()))
        );
        assert!(Reference::parse_normalized("nginx:1.0-rc.1").is_ok());
    }

    #[test]
    fn familiar_form_round_trips() {
        for s in [
            "nginx:1.14.0",
            "fluent/fluentd:v1.16",
            "quay.io/a/b",
            "localhost:5000/x@sha256:ffffffffffffffffffffffffffffffffffffffffffffffffffffffffffffffff",
        ] {
            assert_eq!(Reference::parse_normalized(s).unwrap().familiar(), s);
        }
    }

    #[test]
    fn invalid_references_name_the_problem() {
        use ReferenceError::*;
        let cases: Vec<(String, ReferenceError)> = vec![
            ("".into(), Empty),
            (
                "Uppercase:tag".into(),
                NameContainsUppercase("library/Uppercase".into()),
            ),
            (
                "docker.io/Foo/bar".into(),
                NameContainsUppercase("Foo/bar".into()),
            ),
            (
                "a".repeat(64).replace('a', "f"),
                IdentifierNotName("f".repeat(64)),
            ),
            ("nginx:-tag".into(), InvalidTag("-tag".into())),
            ("nginx:.tag".into(), InvalidTag(".tag".into())),
            ("nginx:ta/g".into(), InvalidFormat("nginx:ta/g".into())),
            (
                "nginx@sha256:abc".into(),
                InvalidDigest("sha256:abc".into(), "wrong length for its algorithm"),
            ),
            (
                format!("nginx@md5:{}", "f".repeat(32)),
                UnsupportedDigest(format!("md5:{}", "f".repeat(32))),
            ),
            (
                format!("nginx@sha256:{}", "f".repeat(63)),
                InvalidDigest(
                    format!("sha256:{}", "f".repeat(63)),
                    "wrong length for its algorithm",
                ),
            ),
            (
                format!("nginx@sha256:{}", "F".repeat(64)),
                InvalidDigest(
                    format!("sha256:{}", "F".repeat(64)),
                    "hex must be lower-case 0-9a-f",
                ),
            ),
            ("a//b".into(), InvalidFormat("a//b".into())),
            ("a/b/".into(), InvalidFormat("a/b/".into())),
            ("/a".into(), InvalidFormat("/a".into())),
            ("a..b".into(), InvalidFormat("a..b".into())),
            ("a___b".into(), InvalidFormat("a___b".into())),
            ("-a".into(), InvalidFormat("-a".into())),
            ("a-".into(), InvalidFormat("a-".into())),
            ("a_".into(), InvalidFormat("a_".into())),
            (
                "a@b@c".into(),
                InvalidDigest("b@c".into(), "missing ':' between algorithm and hex"),
            ),
            ("-host.io/a".into(), InvalidFormat("-host.io/a".into())),
            (
                "host.io:port/a".into(),
                InvalidFormat("host.io:port/a".into()),
            ),
            ("[::1/a".into(), InvalidFormat("[::1/a".into())),
            ("a b".into(), InvalidFormat("a b".into())),
            ("nginx:".into(), InvalidTag("".into())),
        ];
        for (input, want) in cases {
            assert_eq!(Reference::parse_normalized(&input), Err(want), "{input:?}");
        }
    }

    #[test]
    fn length_limit_is_on_the_normalized_path() {
        // As distribution/reference v0.6: `library/` counts, the domain does not.
        let ok = format!("library/{}", "a".repeat(247));
        assert!(Reference::parse_normalized(&ok).is_ok());
        assert!(Reference::parse_normalized(&format!("docker.io/{ok}")).is_ok());
        let long_host = format!("{}.example.com/{}", "h".repeat(40), "a".repeat(255));
        assert!(Reference::parse_normalized(&long_host).is_ok());
        let long = format!("{}.example.com/{}", "h".repeat(40), "a".repeat(256));
        assert_eq!(
            Reference::parse_normalized(&long),
            Err(ReferenceError::NameTooLong(256))
        );
        // A single-component Docker Hub name gains `library/`, which counts.
        assert_eq!(
            Reference::parse_normalized(&"a".repeat(250)),
            Err(ReferenceError::NameTooLong(258))
        );
        // The tag does not count towards the name.
        assert!(Reference::parse_normalized(&format!("{ok}:{}", "t".repeat(128))).is_ok());
    }

    #[test]
    fn docker_hub_aliases_fold_to_one_host() {
        for alias in [
            "docker.io",
            "https://index.docker.io/v1/",
            "registry-1.docker.io",
            "REGISTRY.hub.docker.com",
        ] {
            assert_eq!(canonical_host(alias), "docker.io", "{alias}");
        }
        assert_eq!(canonical_host("http://localhost:5000"), "localhost:5000");
        assert_eq!(canonical_host("Quay.io"), "quay.io");
    }

    #[test]
    fn double_underscore_and_dash_runs_are_separators() {
        assert!(Reference::parse_normalized("a__b").is_ok());
        assert!(Reference::parse_normalized("a---b").is_ok());
        assert!(Reference::parse_normalized("a.b_c-d").is_ok());
    }

    proptest! {
        #[test]
        fn never_panics(s in "\\PC{0,300}") {
            let _ = Reference::parse_normalized(&s);
        }

        #[test]
        fn never_panics_on_reference_like_input(s in "[a-zA-Z0-9:/@._\\-\\[\\]]{0,80}") {
            if let Ok(r) = Reference::parse_normalized(&s) {
                // Whatever parses prints to something that parses to itself.
                prop_assert_eq!(Reference::parse_normalized(&r.to_string()), Ok(r.clone()));
                prop_assert_eq!(Reference::parse_normalized(&r.familiar()), Ok(r));
            }
        }
    }
}
