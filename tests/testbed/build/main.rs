//! Reads the generated sources of two dependencies at build time, so the test API server knows
//! every built-in kind without a hand-written list:
//!
//! - [`k8s_pb`]: the kube-rs project's protobuf bindings (`k8s-pb`), whose `#[prost(...)]`
//!   attributes are the Kubernetes protobuf schema (field numbers and types of every message).
//!   The server decodes and encodes `application/vnd.kubernetes.protobuf` bodies with it.
//! - [`k8s_openapi`]: the resource types of `k8s-openapi` (group, version, kind, plural, scope,
//!   whether they are listable and have a status), for discovery and OpenAPI.
//!
//! Both crates are generated from Kubernetes' own definitions; reading them keeps the server in
//! step with the versions in `Cargo.lock`. Their sources are found with `cargo metadata`.

mod k8s_openapi;
mod k8s_pb;

use std::path::{Path, PathBuf};
use std::process::Command;

fn main() {
    println!("cargo::rerun-if-changed=build");
    println!("cargo::rerun-if-changed=../../Cargo.lock");
    let out = PathBuf::from(std::env::var("OUT_DIR").expect("cargo sets OUT_DIR"));
    let metadata = metadata();
    let (pb_dir, _) = package(&metadata, "k8s-pb");
    let schema = k8s_pb::generate(&pb_dir.join("src"));
    write(&out.join("k8s_pb_schema.rs"), &schema);
    let (openapi_dir, features) = package(&metadata, "k8s-openapi");
    let version = features
        .iter()
        .find(|f| f.starts_with("v1_"))
        .expect("k8s-openapi is built with one v1_NN feature");
    let resources = k8s_openapi::generate(&openapi_dir.join("src").join(version));
    write(&out.join("k8s_openapi_resources.rs"), &resources);
}

fn write(path: &Path, text: &str) {
    std::fs::write(path, text).unwrap_or_else(|e| panic!("cannot write {}: {e}", path.display()));
}

/// `cargo metadata` for this target (offline first: the build has the sources already).
fn metadata() -> serde_json::Value {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let manifest = PathBuf::from(std::env::var("CARGO_MANIFEST_DIR").expect("cargo sets it"))
        .join("Cargo.toml");
    let target = std::env::var("TARGET").expect("cargo sets TARGET");
    let run = |offline: bool| {
        let mut command = Command::new(&cargo);
        command
            .args(["metadata", "--format-version", "1", "--filter-platform"])
            .arg(&target)
            .arg("--manifest-path")
            .arg(&manifest);
        if offline {
            command.arg("--offline");
        }
        command.output().ok().filter(|o| o.status.success())
    };
    let output = run(true)
        .or_else(|| run(false))
        .expect("cargo metadata finds the dependencies' sources");
    serde_json::from_slice(&output.stdout).expect("cargo metadata prints JSON")
}

/// A package's directory and the features it is built with.
fn package(metadata: &serde_json::Value, name: &str) -> (PathBuf, Vec<String>) {
    let package = metadata["packages"]
        .as_array()
        .into_iter()
        .flatten()
        .find(|p| p["name"] == name)
        .unwrap_or_else(|| panic!("{name} is a dependency"));
    let manifest = PathBuf::from(package["manifest_path"].as_str().unwrap_or_default());
    let dir = manifest
        .parent()
        .unwrap_or_else(|| panic!("{name} has a manifest directory"))
        .to_path_buf();
    let id = &package["id"];
    let features = metadata["resolve"]["nodes"]
        .as_array()
        .into_iter()
        .flatten()
        .find(|n| &n["id"] == id)
        .and_then(|n| n["features"].as_array())
        .into_iter()
        .flatten()
        .filter_map(|f| f.as_str().map(str::to_string))
        .collect();
    (dir, features)
}

/// The Rust files under `dir`, each with its module path relative to `root` (`mod.rs` is its
/// directory's module), sorted so the output is stable.
fn rust_files(root: &Path, dir: &Path, out: &mut Vec<(Vec<String>, PathBuf)>) {
    let mut entries: Vec<_> = std::fs::read_dir(dir)
        .unwrap_or_else(|e| panic!("cannot read {}: {e}", dir.display()))
        .filter_map(|e| e.ok().map(|e| e.path()))
        .collect();
    entries.sort();
    for path in entries {
        if path.is_dir() {
            rust_files(root, &path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            let relative = path.strip_prefix(root).unwrap_or(&path);
            let mut module: Vec<String> = relative
                .parent()
                .into_iter()
                .flat_map(|p| p.iter())
                .map(|s| s.to_string_lossy().into_owned())
                .collect();
            let stem = path.file_stem().map(|s| s.to_string_lossy().into_owned());
            if let Some(stem) = stem.filter(|s| s != "mod" && s != "lib") {
                module.push(stem);
            }
            out.push((module, path));
        }
    }
}

fn parse(path: &Path) -> syn::File {
    let text = std::fs::read_to_string(path)
        .unwrap_or_else(|e| panic!("cannot read {}: {e}", path.display()));
    syn::parse_file(&text).unwrap_or_else(|e| panic!("cannot parse {}: {e}", path.display()))
}

/// A string constant of an impl block (`const KIND: &'static str = "Deployment";`).
fn const_str(item: &syn::ItemImpl, name: &str) -> Option<String> {
    item.items.iter().find_map(|i| match i {
        syn::ImplItem::Const(c) if c.ident == name => match &c.expr {
            syn::Expr::Lit(syn::ExprLit {
                lit: syn::Lit::Str(s),
                ..
            }) => Some(s.value()),
            _ => None,
        },
        _ => None,
    })
}

/// The last segment of a trait impl's path (`crate::Resource` is `Resource`).
fn trait_name(item: &syn::ItemImpl) -> Option<String> {
    let (_, path, _) = item.trait_.as_ref()?;
    path.segments.last().map(|s| s.ident.to_string())
}

/// The type an impl block is for, when it is a plain name.
fn self_name(item: &syn::ItemImpl) -> Option<String> {
    match &*item.self_ty {
        syn::Type::Path(p) if item.generics.params.is_empty() => {
            p.path.segments.last().map(|s| s.ident.to_string())
        }
        _ => None,
    }
}
