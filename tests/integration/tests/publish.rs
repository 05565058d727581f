//! Test images onto a cluster's source registry, whatever it speaks: pushed straight to a plain
//! one, or — for a source in token mode over HTTPS ([`Cluster::start_internet_like`]), which
//! the test bed's pusher does not speak — pushed to a plain staging registry and copied there
//! by the source's publisher with the product's copier. And [`trusting`]: the client options
//! every test that copies to or from HTTPS test registries starts from.

use backup::copy::auth::DockerConfig;
use backup::copy::{ClientOptions, Copier, RegistryClient};
use testbed::cluster::Cluster;
use testbed::{ImageSpec, PushedImage, Pusher, Registry};

/// Client options that trust the CAs of the HTTPS registries `https`, speak plain HTTP to the
/// hosts `plain`, and log in with `credentials`; the rest default.
pub fn trusting(https: &[&Registry], plain: &[String], credentials: DockerConfig) -> ClientOptions {
    ClientOptions {
        insecure: plain.iter().cloned().collect(),
        credentials,
        ca_certificates: https
            .iter()
            .flat_map(|r| {
                let pem = r.ca_pem().expect("an HTTPS registry");
                reqwest::Certificate::from_pem_bundle(pem.as_bytes()).expect("its CA")
            })
            .collect(),
        ..Default::default()
    }
}

/// Puts images on one cluster's source registry.
pub struct Publisher {
    pusher: Pusher,
    /// For an HTTPS token source: the staging registry and the copier into the source.
    relay: Option<(Registry, Copier)>,
    source: String,
}

impl Publisher {
    /// A publisher for `c`'s source registry.
    pub async fn new(c: &Cluster) -> Self {
        let source = c.source.host();
        let Some(user) = c.source_publisher() else {
            return Self {
                pusher: c.source_pusher(),
                relay: None,
                source,
            };
        };
        let staging = Registry::start().await.expect("staging registry");
        let mut credentials = DockerConfig::default();
        credentials.insert_basic(&source, &user.username, &user.password);
        let copier = Copier::new(
            RegistryClient::new(trusting(&[&c.source], &[staging.host()], credentials))
                .expect("client"),
            4,
        );
        Self {
            pusher: Pusher::new(&staging.host(), None),
            relay: Some((staging, copier)),
            source,
        }
    }

    /// Pushes a generated image to `repo:tag` of the source.
    pub async fn push_image(&self, repo: &str, tag: &str, spec: &ImageSpec) -> PushedImage {
        let image = self
            .pusher
            .push_image(repo, tag, spec)
            .await
            .expect("push image");
        if let Some((staging, copier)) = &self.relay {
            let at = |host: &str| {
                shared::Reference::parse_normalized(&format!("{host}/{repo}:{tag}"))
                    .expect("reference")
            };
            let copied = copier
                .copy(&at(&staging.host()), &at(&self.source), None)
                .await
                .expect("publish to the source");
            assert_eq!(copied.digest, image.digest);
        }
        image
    }
}
