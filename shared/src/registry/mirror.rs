//! Registry mirrors, with containerd's `hosts.toml` semantics: reads of `HOST`'s repositories
//! go to each of its mirrors in turn, then to `HOST` itself unless mirrors are the only way out
//! (`--mirror-only`, containerd's hosts file without the upstream `server`). A mirror changes
//! where bytes come from, never a name: references, ImageBackup sources and backup targets stay
//! `HOST`'s, and every byte read from a mirror is verified against the digest it must have, as
//! bytes from `HOST` are.
//!
//! This module only decides the order of hosts; the client does the trying
//! ([`super::client::RegistryClient::locate_manifest`]): the first host that has an image's
//! manifest serves every other read of that image, so one image is read from one place, and
//! lookups of what a mirror may lack (signature tags) do not reach past it. Mirrors apply to
//! reading sources only: pushes, mounts and the checks of a backup go to the registry named.

use std::collections::HashMap;
use std::str::FromStr;

use crate::reference::{Reference, canonical_host};

/// One `HOST=MIRROR` setting.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MirrorSpec {
    /// The registry mirrored, canonical (`docker.io` for every Docker Hub alias).
    pub host: String,
    /// Where its repositories are read from (`host[:port]`).
    pub mirror: String,
    /// True when the mirror was written `http://…`: it is spoken to over plain HTTP.
    pub plain_http: bool,
}

/// Why a `HOST=MIRROR` setting is not one.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum MirrorError {
    /// No `=` between the two hosts.
    #[error("{0:?} is not HOST=MIRROR (e.g. docker.io=mirror.local:5000)")]
    Shape(String),
    /// One side is not a registry host (`host[:port]`).
    #[error("{value:?}: {side} {host:?} is not a registry host (host[:port], no path)")]
    Host {
        /// The whole setting.
        value: String,
        /// `HOST` or `MIRROR`.
        side: &'static str,
        /// The offending part.
        host: String,
    },
    /// A registry that mirrors itself would loop.
    #[error("{0:?} mirrors a registry to itself")]
    Itself(String),
}

/// True when `host` is a registry host as references write it (`host[:port]`, no path).
fn is_registry_host(host: &str) -> bool {
    !host.is_empty()
        && !host.contains('/')
        && Reference::parse(&format!("{host}/probe")).is_ok_and(|r| r.domain() == host)
}

impl FromStr for MirrorSpec {
    type Err = MirrorError;

    /// Parses `HOST=MIRROR`: `docker.io=mirror.local:5000`, `ghcr.io=http://10.0.0.5:5000`.
    fn from_str(value: &str) -> Result<Self, Self::Err> {
        let (host, mirror) = value
            .split_once('=')
            .ok_or_else(|| MirrorError::Shape(value.to_string()))?;
        let (host, mirror) = (host.trim(), mirror.trim().trim_end_matches('/'));
        let (mirror, plain_http) = match mirror.strip_prefix("http://") {
            Some(rest) => (rest, true),
            None => (mirror.strip_prefix("https://").unwrap_or(mirror), false),
        };
        for (side, h) in [("HOST", host), ("MIRROR", mirror)] {
            if !is_registry_host(h) {
                return Err(MirrorError::Host {
                    value: value.to_string(),
                    side,
                    host: h.to_string(),
                });
            }
        }
        let host = canonical_host(host);
        if canonical_host(mirror) == host {
            return Err(MirrorError::Itself(value.to_string()));
        }
        Ok(Self {
            host,
            mirror: mirror.to_string(),
            plain_http,
        })
    }
}

/// Every mirror setting of a process.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Mirrors {
    /// Mirrors by canonical registry host, in the order given.
    by_host: HashMap<String, Vec<String>>,
    /// No fall-back to the registry itself for a mirrored host.
    only: bool,
}

impl Mirrors {
    /// Mirrors from settings (several for one host are tried in the order given).
    pub fn new(specs: &[MirrorSpec], only: bool) -> Self {
        let mut by_host: HashMap<String, Vec<String>> = HashMap::new();
        for s in specs {
            let list = by_host.entry(s.host.clone()).or_default();
            if !list.contains(&s.mirror) {
                list.push(s.mirror.clone());
            }
        }
        Self { by_host, only }
    }

    /// True when no mirror is set.
    pub fn is_empty(&self) -> bool {
        self.by_host.is_empty()
    }

    /// True when `registry` (any alias) has a mirror.
    pub fn mirrors(&self, registry: &str) -> bool {
        self.by_host.contains_key(&canonical_host(registry))
    }

    /// The registries to read `registry`'s repositories from, in order: its mirrors, then
    /// `registry` itself unless mirrors are the only way out. Just `registry` when unmirrored.
    pub fn hosts_for(&self, registry: &str) -> Vec<String> {
        match self.by_host.get(&canonical_host(registry)) {
            None => vec![registry.to_string()],
            Some(mirrors) => {
                let mut hosts = mirrors.clone();
                if !self.only {
                    hosts.push(registry.to_string());
                }
                hosts
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(s: &str) -> MirrorSpec {
        s.parse().unwrap()
    }

    #[test]
    fn settings_parse_with_docker_hub_aliases_folded() {
        assert_eq!(
            spec("index.docker.io=mirror.local:5000"),
            MirrorSpec {
                host: "docker.io".into(),
                mirror: "mirror.local:5000".into(),
                plain_http: false
            }
        );
        let plain = spec("ghcr.io=http://127.0.0.1:5000/");
        assert_eq!(plain.mirror, "127.0.0.1:5000");
        assert!(plain.plain_http);
        assert_eq!(spec("quay.io=https://m.example").mirror, "m.example");
    }

    #[test]
    fn bad_settings_are_refused_with_the_reason() {
        assert!(matches!(
            "docker.io".parse::<MirrorSpec>(),
            Err(MirrorError::Shape(_))
        ));
        assert!(matches!(
            "docker.io=mirror.local/path".parse::<MirrorSpec>(),
            Err(MirrorError::Host { side: "MIRROR", .. })
        ));
        assert!(matches!(
            "=mirror.local".parse::<MirrorSpec>(),
            Err(MirrorError::Host { side: "HOST", .. })
        ));
        assert!(matches!(
            "docker.io=registry-1.docker.io".parse::<MirrorSpec>(),
            Err(MirrorError::Itself(_))
        ));
        assert!(matches!(
            "docker.io=a b".parse::<MirrorSpec>(),
            Err(MirrorError::Host { .. })
        ));
    }

    #[test]
    fn hosts_are_tried_mirrors_first_then_the_registry_unless_mirror_only() {
        let specs = [
            spec("docker.io=m1.local"),
            spec("docker.io=m2.local:5000"),
            spec("docker.io=m1.local"),
        ];
        let m = Mirrors::new(&specs, false);
        assert_eq!(
            m.hosts_for("docker.io"),
            ["m1.local", "m2.local:5000", "docker.io"]
        );
        assert_eq!(m.hosts_for("quay.io"), ["quay.io"]);
        assert!(m.mirrors("index.docker.io"));
        assert!(!m.mirrors("quay.io"));
        let only = Mirrors::new(&specs, true);
        assert_eq!(only.hosts_for("docker.io"), ["m1.local", "m2.local:5000"]);
        assert_eq!(only.hosts_for("quay.io"), ["quay.io"]);
    }
}
