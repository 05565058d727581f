//! What every registry call addresses: a repository at a registry, and whether the call reads
//! or writes (its token scope).

/// A repository at a registry: what every call addresses.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Repo {
    /// The registry as written in references (`docker.io`, `127.0.0.1:5000`).
    pub registry: String,
    /// The repository path (`library/nginx`).
    pub path: String,
}

impl From<&crate::reference::Reference> for Repo {
    /// The repository a reference names, at its registry.
    fn from(r: &crate::reference::Reference) -> Self {
        Self {
            registry: r.domain().to_string(),
            path: r.path().to_string(),
        }
    }
}

impl std::fmt::Display for Repo {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.registry, self.path)
    }
}

/// What a request does at the registry, for scopes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Access {
    /// Read.
    Pull,
    /// Read and write.
    Push,
}
