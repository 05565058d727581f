//! Names derived from an image: where its backup lives, its `ImageBackup` object name, the NATS
//! subjects and message ids of its events. Every name in the system is computed here, once.
//!
//! # Backup naming policy
//! The backup registry is `host[:port][/prefix]`. Two layouts are offered ([`Layout`]):
//!
//! * **flat** (default, the original design): the whole source repository becomes one path
//!   component under the prefix, `/` turned into `_`, and the source host kept in front of it when
//!   it is not Docker Hub, with `__` before a port:
//!   `nginx:1.14.0` → `docker.io/acme/library_nginx:1.14.0`,
//!   `quay.io/a/b:1` → `docker.io/acme/quay.io_a_b:1`,
//!   `localhost:5000/x` → `…/localhost__5000_x`. Works on every registry, Docker Hub included.
//! * **nested**: the source host and path are kept as path components under the prefix
//!   (`registry.local/mirror/docker.io/library/nginx:1.14.0`), for registries that allow deep
//!   paths (distribution, Harbor, GitLab, Artifact Registry).
//!
//! Collision freedom: flat names are decodable (hosts have no `_`, and the flat form is only used
//! when the source path has no `_` either and the first Docker Hub component cannot be read as a
//! host), so two distinct sources never share one. Every source that is not decodable that way, or
//! whose name would pass the 255-character limit, gets the **hashed** form instead: a sanitized,
//! truncated name followed by `-` and 16 hex of SHA-256 of the source repository. A flat name never
//! ends in `-` + 16 hex (such sources take the hashed form), so the two forms cannot meet either.
//! Registry hosts compare case-insensitively, as DNS does.
//!
//! Tags are kept. A digest-only source gets the tag `<algorithm>-<hex>` (cut to the grammar's 128
//! characters: a sha512 keeps 121 of its 128 hex digits) so the copy is never an untagged
//! manifest that registry garbage collection may delete. [`NamingPolicy::target`] is total: it
//! never hands back the source itself.

use std::fmt;
use std::str::FromStr;

use sha2::{Digest as _, Sha256};

use crate::reference::{DEFAULT_DOMAIN, NAME_TOTAL_LENGTH_MAX, Reference, ReferenceError};

/// Where backups go: a registry host (with optional port) and an optional path prefix.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BackupRegistry {
    host: String,
    prefix: Option<String>,
}

/// Why a `--backup-registry` value is not usable.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum BackupRegistryError {
    /// The value does not parse as `host[:port][/prefix]` under the reference grammar.
    #[error("backup registry {value:?} is not host[:port][/prefix]: {source}")]
    Invalid {
        /// What was given.
        value: String,
        /// What the grammar said.
        #[source]
        source: ReferenceError,
    },
    /// The value has no registry host (`acme` alone would mean Docker Hub's `library/acme`).
    #[error(
        "backup registry {0:?} must start with a registry host such as docker.io/acme or localhost:5000"
    )]
    NoHost(String),
}

// === impl BackupRegistry ===

impl BackupRegistry {
    /// The registry host, with its port if any: what HTTP requests go to.
    pub fn host(&self) -> &str {
        &self.host
    }

    /// The path prefix under which backups are created, if any.
    pub fn prefix(&self) -> Option<&str> {
        self.prefix.as_deref()
    }

    /// `host/prefix/`: what every backup repository starts with.
    fn base(&self) -> String {
        match &self.prefix {
            Some(p) => format!("{}/{}/", self.host, p),
            None => format!("{}/", self.host),
        }
    }
}

impl FromStr for BackupRegistry {
    type Err = BackupRegistryError;

    /// Parses `host[:port][/prefix]` (`docker.io/acme`, `localhost:5000`, `r.local:443/a/b`).
    fn from_str(value: &str) -> Result<Self, Self::Err> {
        let trimmed = value.trim_end_matches('/');
        let (host, prefix) = match trimmed.split_once('/') {
            Some((h, p)) => (h, Some(p)),
            None => (trimmed, None),
        };
        let looks_like_host = host.contains(['.', ':']) || host == "localhost";
        if !looks_like_host {
            return Err(BackupRegistryError::NoHost(value.to_string()));
        }
        // Validate with the grammar by parsing a reference under it.
        let probe = format!("{host}/{}", prefix.unwrap_or("probe"));
        Reference::parse(&probe).map_err(|source| BackupRegistryError::Invalid {
            value: value.to_string(),
            source,
        })?;
        Ok(Self {
            host: host.to_string(),
            prefix: prefix.map(str::to_string),
        })
    }
}

impl fmt::Display for BackupRegistry {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.base().trim_end_matches('/'))
    }
}

/// How a source repository is laid out under the backup registry (see the module docs).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, clap::ValueEnum)]
pub enum Layout {
    /// One path component per source repository: `acme/library_nginx`. Works on Docker Hub.
    #[default]
    Flat,
    /// The source host and path kept as components: `mirror/docker.io/library/nginx`.
    Nested,
}

/// The naming policy: a backup registry and a layout. Cheap to clone.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NamingPolicy {
    /// Where backups go.
    pub registry: BackupRegistry,
    /// How source repositories map to backup repositories.
    pub layout: Layout,
}

/// The longest tag the grammar allows.
const TAG_MAX: usize = 128;

/// A backup name could not be built for a source (a defect in this module: see
/// [`NamingPolicy::target`]).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("no valid backup name for {source_ref}: {reason}")]
pub struct NamingError {
    /// The source reference.
    pub source_ref: String,
    /// What the grammar said of the name built for it.
    #[source]
    pub reason: ReferenceError,
}

/// Length of the hash suffix that keeps long or ambiguous names unique (64 bits).
const HASH_HEX: usize = 16;

// === impl NamingPolicy ===

impl NamingPolicy {
    /// A flat policy for `registry`, the default layout.
    pub fn flat(registry: BackupRegistry) -> Self {
        Self {
            registry,
            layout: Layout::Flat,
        }
    }

    /// True when `image` already lives in the backup registry (under the prefix): such images
    /// need no backup. This is the needs-backup rule; nothing else decides it.
    pub fn is_backup(&self, image: &Reference) -> bool {
        image
            .repository()
            .to_lowercase()
            .starts_with(&self.registry.base().to_lowercase())
    }

    /// The backup reference for `source`: same tag (or `<algorithm>-<hex>` for digest-only
    /// sources), no digest (the digest is what the copy produces and the rollout pins).
    ///
    /// Built from grammar-valid pieces and parsed once more, so the invariant is checked in one
    /// place; the error is unreachable by construction (the tests cover every shape) and is
    /// returned rather than papered over, so a defect can never back an image up to itself.
    pub fn target(&self, source: &Reference) -> Result<Reference, NamingError> {
        let base = self.registry.base();
        // Targets stay within 255 characters including the host, the older rule, so registries
        // that still apply it accept them too.
        let budget = NAME_TOTAL_LENGTH_MAX.saturating_sub(base.len());
        let repo = match self.layout {
            Layout::Flat => flat_name(source).filter(|n| n.len() <= budget),
            Layout::Nested => nested_name(source).filter(|n| n.len() <= budget),
        }
        .unwrap_or_else(|| hashed_name(source, budget));
        let tag = match (source.tag(), source.digest()) {
            (Some(t), _) => t.to_string(),
            (None, Some(d)) => d.replacen(':', "-", 1).chars().take(TAG_MAX).collect(),
            (None, None) => crate::reference::DEFAULT_TAG.to_string(),
        };
        let full = format!("{base}{repo}:{tag}");
        Reference::parse(&full).map_err(|reason| NamingError {
            source_ref: source.to_string(),
            reason,
        })
    }
}

/// The lower-cased source host in a form allowed in a path component, `:` → `__`; `None` for
/// hosts that cannot be written so (IPv6).
fn host_component(domain: &str) -> Option<String> {
    let host = domain.to_lowercase();
    if host.starts_with('[') {
        return None;
    }
    Some(host.replacen(':', "__", 1))
}

/// True when `s` ends in `-` + 16 hex: reserved for the hashed form.
fn ends_like_hash(s: &str) -> bool {
    let bytes = s.as_bytes();
    bytes.len() > HASH_HEX
        && bytes[bytes.len() - HASH_HEX - 1] == b'-'
        && bytes[bytes.len() - HASH_HEX..]
            .iter()
            .all(|b| b.is_ascii_hexdigit() && !b.is_ascii_uppercase())
}

/// The flat, decodable name, or `None` when the source must take the hashed form.
fn flat_name(source: &Reference) -> Option<String> {
    let path = source.path();
    if path.contains('_') || ends_like_hash(path) {
        return None;
    }
    let name = if source.domain().eq_ignore_ascii_case(DEFAULT_DOMAIN) {
        let first = path.split('/').next().unwrap_or_default();
        if first.contains('.') || first == "localhost" {
            return None;
        }
        path.replace('/', "_")
    } else {
        format!(
            "{}_{}",
            host_component(source.domain())?,
            path.replace('/', "_")
        )
    };
    Some(name)
}

/// The nested name: `host/path`, or `None` for hosts that cannot be a path component.
fn nested_name(source: &Reference) -> Option<String> {
    let host = host_component(source.domain())?;
    Some(format!("{host}/{}", source.path()))
}

/// The hashed form: sanitized, truncated to fit `budget`, plus `-` and 16 hex of the source
/// repository's SHA-256. Always a single valid path component.
fn hashed_name(source: &Reference, budget: usize) -> String {
    let repository = format!("{}/{}", source.domain().to_lowercase(), source.path());
    let hash = &hex::encode(Sha256::digest(repository.as_bytes()))[..HASH_HEX];
    // Docker Hub's host adds nothing a reader needs; the hash covers it either way.
    let readable = if source.domain().eq_ignore_ascii_case(DEFAULT_DOMAIN) {
        source.path()
    } else {
        repository.as_str()
    };
    // Letters and digits stay; '.' stays and anything else becomes '_', but only one separator
    // between two alphanumerics, which keeps the result inside the grammar.
    let mut sanitized = String::with_capacity(readable.len());
    for c in readable.to_lowercase().chars() {
        let last_alnum = sanitized
            .chars()
            .last()
            .is_some_and(|l: char| l.is_ascii_alphanumeric());
        if c.is_ascii_lowercase() || c.is_ascii_digit() {
            sanitized.push(c);
        } else if last_alnum {
            sanitized.push(if c == '.' { '.' } else { '_' });
        }
    }
    let room = budget.saturating_sub(HASH_HEX + 1);
    sanitized.truncate(room);
    let sanitized = sanitized.trim_end_matches(['_', '.']);
    if sanitized.is_empty() {
        format!("image-{hash}")
    } else {
        format!("{sanitized}-{hash}")
    }
}

/// The `ImageBackup` object name for a normalized source: `ib-` + 16 hex of its SHA-256, so
/// every creator computes the same name and a race ends in one object (409 for the others).
pub fn image_backup_name(source: &Reference) -> String {
    let hash = hex::encode(Sha256::digest(source.to_string().as_bytes()));
    format!("ib-{}", &hash[..16])
}

/// Turns a Kubernetes name into one NATS subject token: `.` (allowed in names, a token separator
/// in NATS) becomes `_` (never in names), so the mapping stays one-to-one.
pub fn subject_token(name: &str) -> String {
    name.replace('.', "_")
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    fn policy(r: &str) -> NamingPolicy {
        NamingPolicy::flat(r.parse().unwrap())
    }

    fn target(p: &NamingPolicy, s: &str) -> String {
        p.target(&Reference::parse_normalized(s).unwrap())
            .unwrap()
            .to_string()
    }

    #[test]
    fn original_design_examples() {
        let p = policy("docker.io/acme");
        assert_eq!(
            target(&p, "nginx:1.14.0"),
            "docker.io/acme/library_nginx:1.14.0"
        );
        assert_eq!(
            target(&p, "fluent/fluentd:v1"),
            "docker.io/acme/fluent_fluentd:v1"
        );
        assert_eq!(target(&p, "quay.io/a/b:1"), "docker.io/acme/quay.io_a_b:1");
        assert_eq!(target(&p, "nginx"), "docker.io/acme/library_nginx:latest");
        let p = policy("localhost:5000");
        assert_eq!(
            target(&p, "localhost:5001/x/y:2"),
            "localhost:5000/localhost__5001_x_y:2"
        );
    }

    #[test]
    fn digests_become_tags_and_hosts_fold_case() {
        let p = policy("localhost:5000/backup");
        let d = format!("sha256:{}", "a".repeat(64));
        assert_eq!(
            target(&p, &format!("nginx@{d}")),
            format!(
                "localhost:5000/backup/library_nginx:sha256-{}",
                "a".repeat(64)
            )
        );
        assert_eq!(
            target(&p, &format!("nginx:1@{d}")),
            "localhost:5000/backup/library_nginx:1"
        );
        assert_eq!(target(&p, "Quay.IO/a:1"), target(&p, "quay.io/a:1"));
    }

    #[test]
    fn ambiguous_or_long_sources_are_hashed() {
        let p = policy("docker.io/acme");
        let a = target(&p, "my_org/app:1");
        let b = target(&p, "my/org_app:1");
        assert_ne!(a, b);
        assert!(a.starts_with("docker.io/acme/my_org_app-"), "{a}");
        // A Docker Hub path that looks like a host does not meet the real host.
        assert_ne!(
            target(&p, "docker.io/quay.io/a:1"),
            target(&p, "quay.io/a:1")
        );
        assert_ne!(
            target(&p, "docker.io/localhost/a:1"),
            target(&p, "localhost/a:1")
        );
        let long = format!("quay.io/{}:1", "a".repeat(240));
        let t = Reference::parse_normalized(&long).unwrap();
        let out = p.target(&t).unwrap();
        assert!(out.repository().len() <= 255);
        assert!(ends_like_hash(out.path()));
        // IPv6 hosts cannot be a path component: hashed, and valid.
        assert!(ends_like_hash(
            p.target(&Reference::parse_normalized("[::1]:5000/a").unwrap())
                .unwrap()
                .path()
        ));
    }

    fn hex_of(rng: &mut rand::rngs::StdRng, n: usize) -> String {
        use rand::Rng as _;
        (0..n)
            .map(|_| char::from(b"0123456789abcdef"[rng.random_range(0..16)]))
            .collect()
    }

    #[test]
    fn digest_only_sources_get_a_tag_that_fits() {
        let p = policy("localhost:5000/backup");
        let sha512 = format!("nginx@sha512:{}", "ab".repeat(64));
        let t = p
            .target(&Reference::parse_normalized(&sha512).unwrap())
            .unwrap();
        let tag = t.tag().unwrap();
        assert_eq!(tag.len(), 128);
        assert!(tag.starts_with("sha512-abab"));
        assert_eq!(t.repository(), "localhost:5000/backup/library_nginx");
        let sha256 = format!("nginx@sha256:{}", "cd".repeat(32));
        let t = p
            .target(&Reference::parse_normalized(&sha256).unwrap())
            .unwrap();
        assert_eq!(
            t.tag(),
            Some(format!("sha256-{}", "cd".repeat(32)).as_str())
        );
    }

    #[test]
    fn nested_layout_keeps_the_path() {
        let p = NamingPolicy {
            registry: "registry.local/mirror".parse().unwrap(),
            layout: Layout::Nested,
        };
        assert_eq!(
            target(&p, "nginx:1.14.0"),
            "registry.local/mirror/docker.io/library/nginx:1.14.0"
        );
        assert_eq!(
            target(&p, "localhost:5000/a/b"),
            "registry.local/mirror/localhost__5000/a/b:latest"
        );
    }

    #[test]
    fn backup_registry_values() {
        assert!("acme".parse::<BackupRegistry>().is_err());
        assert!("docker.io/Acme".parse::<BackupRegistry>().is_err());
        let r: BackupRegistry = "localhost:5000/a/b/".parse().unwrap();
        assert_eq!((r.host(), r.prefix()), ("localhost:5000", Some("a/b")));
        assert_eq!(r.to_string(), "localhost:5000/a/b");
    }

    #[test]
    fn backups_are_recognised() {
        let p = policy("localhost:5000/backup");
        let yes = Reference::parse_normalized("localhost:5000/backup/library_nginx:1").unwrap();
        let no = Reference::parse_normalized("localhost:5000/other/x:1").unwrap();
        assert!(p.is_backup(&yes));
        assert!(!p.is_backup(&no));
        assert!(p.is_backup(&p.target(&no).unwrap()));
    }

    #[test]
    fn object_names_and_subject_tokens() {
        let r = Reference::parse_normalized("nginx:1.14.0").unwrap();
        let n = image_backup_name(&r);
        assert_eq!(n.len(), 19);
        assert!(n.starts_with("ib-"));
        assert_eq!(
            n,
            image_backup_name(
                &Reference::parse_normalized("docker.io/library/nginx:1.14.0").unwrap()
            )
        );
        assert_eq!(subject_token("my.app"), "my_app");
    }

    /// Generates distinct sources of every shape the grammar allows (hosts with and without
    /// ports, Docker Hub look-alikes, `_`, `__`, `-` and `.` separators, deep paths, long names)
    /// and checks that no two map to one target.
    #[test]
    fn no_two_sources_share_a_target() {
        use rand::{Rng, SeedableRng, rngs::StdRng};
        let mut rng = StdRng::seed_from_u64(7);
        let hosts = [
            "docker.io",
            "quay.io",
            "ghcr.io",
            "localhost",
            "localhost:5000",
            "registry:5000",
            "my-reg.example.com",
            "my-reg.example.com:443",
            "10.0.0.1:5000",
            "[::1]:5000",
        ];
        let alphabet = b"abc01";
        let separators = ["_", "__", "-", "--", ".", "/"];
        let component = |rng: &mut StdRng| {
            let mut s = String::new();
            let parts = rng.random_range(1..=3);
            for i in 0..parts {
                if i > 0 {
                    s.push_str(separators[rng.random_range(0..separators.len())]);
                }
                for _ in 0..rng.random_range(1..=3) {
                    s.push(alphabet[rng.random_range(0..alphabet.len())] as char);
                }
            }
            s
        };
        let mut seen: HashMap<String, String> = HashMap::new();
        let policies = [
            policy("docker.io/acme"),
            NamingPolicy {
                registry: "localhost:5000/m".parse().unwrap(),
                layout: Layout::Nested,
            },
        ];
        let mut sources = std::collections::HashSet::new();
        while sources.len() < 100_000 {
            let host = hosts[rng.random_range(0..hosts.len())];
            let mut path = component(&mut rng);
            if rng.random_bool(0.02) {
                path.push_str(&"x".repeat(rng.random_range(100..240)));
            }
            // Tags, and digest-only sources of every algorithm (a sha512 tag would not fit
            // in 128 characters whole).
            let s = match rng.random_range(0..4) {
                0 => format!("{host}/{path}@sha256:{}", hex_of(&mut rng, 64)),
                1 => format!("{host}/{path}@sha512:{}", hex_of(&mut rng, 128)),
                2 => format!("{host}/{path}@sha384:{}", hex_of(&mut rng, 96)),
                _ => format!("{host}/{path}:t"),
            };
            if let Ok(r) = Reference::parse_normalized(&s) {
                sources.insert(r);
            }
        }
        for p in &policies {
            seen.clear();
            for src in &sources {
                let t = p.target(src).unwrap();
                assert!(t.repository().len() <= 255);
                assert!(!p.is_backup(src) && p.is_backup(&t), "{src} -> {t}");
                assert_eq!(Reference::parse(&t.to_string()).as_ref(), Ok(&t));
                if let Some(prev) = seen.insert(t.to_string(), src.to_string()) {
                    panic!("{prev} and {src} both map to {t}");
                }
            }
        }
    }
}
