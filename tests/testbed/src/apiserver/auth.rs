//! Who is asking, may they, and what did they do: kube-apiserver's bearer-token authentication,
//! its RBAC authorizer and its audit log, small enough to read.
//!
//! - **Identity.** Each bearer token the server issued names a user and its groups; a service
//!   account's token names `system:serviceaccount:<ns>:<name>` in the groups kube-apiserver gives
//!   it. A request without a token is anonymous: by default the test bed lets it act as the admin
//!   (so `curl` and the older tests keep working); [`Identities::require_authentication`] makes
//!   it a 401 as on a hardened cluster. An unknown token is always 401.
//! - **Authorization.** Members of `system:masters` may do anything. Everyone else gets exactly
//!   what the stored ClusterRoles/Roles grant through ClusterRoleBindings (everywhere) and
//!   RoleBindings (in their namespace): apiGroups, resources (`*`, `resource/subresource`),
//!   verbs and resourceNames matched as kube-apiserver's RBAC does, and non-resource URLs
//!   (`/version`, discovery, OpenAPI) by the rules' `nonResourceURLs`; the bootstrap policy
//!   ([`super::policy`]) grants discovery and `can-i` to every authenticated user.
//! - **Impersonation.** `Impersonate-User` and `Impersonate-Group` (`kubectl --as`,
//!   `--as-group`) make an admin act as another user; anyone else asking is refused (403).
//! - **Audit.** Every resource request is recorded as (user, verb, group, resource, subresource,
//!   namespace, name, status code), so a test can compare what a function did with what its role
//!   grants.

use std::collections::HashMap;

use serde_json::{Value, json};

use super::store::{Key, Store};

/// An authenticated user.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct User {
    /// `admin`, `jane`, `system:serviceaccount:image-backup:watcher`.
    pub name: String,
    /// Groups (`system:masters`, `system:serviceaccounts`, ...).
    pub groups: Vec<String>,
}

impl User {
    /// The cluster admin the default kubeconfig names.
    pub fn admin() -> Self {
        Self {
            name: "admin".into(),
            groups: vec!["system:masters".into(), "system:authenticated".into()],
        }
    }

    /// A service account's identity, with the groups kube-apiserver gives it.
    pub fn service_account(namespace: &str, name: &str) -> Self {
        Self {
            name: format!("system:serviceaccount:{namespace}:{name}"),
            groups: vec![
                "system:serviceaccounts".into(),
                format!("system:serviceaccounts:{namespace}"),
                "system:authenticated".into(),
            ],
        }
    }

    fn is_admin(&self) -> bool {
        self.groups.iter().any(|g| g == "system:masters")
    }
}

/// The tokens the server knows.
#[derive(Debug)]
pub struct Identities {
    tokens: HashMap<String, User>,
    anonymous_is_admin: bool,
}

impl Default for Identities {
    fn default() -> Self {
        Self {
            tokens: HashMap::new(),
            anonymous_is_admin: true,
        }
    }
}

/// Why a request has no user.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Unauthenticated {
    /// A token the server never issued (or a malformed Authorization header).
    UnknownToken,
    /// No token while authentication is required.
    Anonymous,
}

impl Identities {
    /// Issues a new random token for `user`.
    pub fn issue(&mut self, user: User) -> String {
        let token = hex::encode(rand::random::<[u8; 24]>());
        self.tokens.insert(token.clone(), user);
        token
    }

    /// Whether anonymous requests are refused (401) instead of acting as the admin.
    pub fn require_authentication(&mut self, required: bool) {
        self.anonymous_is_admin = !required;
    }

    /// The user of a request, from its `Authorization` header value.
    pub fn authenticate(&self, authorization: Option<&str>) -> Result<User, Unauthenticated> {
        match authorization {
            None if self.anonymous_is_admin => Ok(User::admin()),
            None => Err(Unauthenticated::Anonymous),
            Some(value) => {
                let mut user = value
                    .strip_prefix("Bearer ")
                    .and_then(|t| self.tokens.get(t.trim()))
                    .cloned()
                    .ok_or(Unauthenticated::UnknownToken)?;
                // Every authenticated user is in this group, as kube-apiserver adds it.
                if !user.groups.iter().any(|g| g == "system:authenticated") {
                    user.groups.push("system:authenticated".into());
                }
                Ok(user)
            }
        }
    }
}

/// The user a request acts as: `user`, or whom its `Impersonate-User`/`Impersonate-Group`
/// headers name when `user` is an admin. `Err` (a 403 message) for anyone else impersonating.
pub fn impersonated(user: User, headers: &axum::http::HeaderMap) -> Result<User, String> {
    let Some(name) = headers
        .get("impersonate-user")
        .and_then(|v| v.to_str().ok())
    else {
        return Ok(user);
    };
    if !user.is_admin() {
        return Err(format!(
            "users \"{name}\" is forbidden: User \"{}\" cannot impersonate resource \"users\" in API group \"\" at the cluster scope",
            user.name
        ));
    }
    let mut groups: Vec<String> = headers
        .get_all("impersonate-group")
        .iter()
        .filter_map(|v| v.to_str().ok().map(str::to_string))
        .collect();
    groups.push("system:authenticated".into());
    Ok(User {
        name: name.to_string(),
        groups,
    })
}

/// What a resource request asks to do, as RBAC sees it.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Attributes {
    /// get, list, watch, create, update, patch, delete, deletecollection.
    pub verb: String,
    /// API group ("" for core).
    pub group: String,
    /// Plural resource.
    pub resource: String,
    /// `status`, `scale` or "".
    pub subresource: String,
    /// Namespace ("" for cluster-scoped or all namespaces).
    pub namespace: String,
    /// Object name ("" for collections).
    pub name: String,
}

/// One audited request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AuditEntry {
    /// Who.
    pub user: String,
    /// What they asked.
    pub attributes: Attributes,
    /// The HTTP status answered.
    pub code: u16,
}

/// Whether `user` may do `attrs`, by the RBAC objects in `store`.
pub fn authorize(store: &Store, user: &User, attrs: &Attributes) -> bool {
    if user.is_admin() {
        return true;
    }
    rules_for(store, user, &attrs.namespace)
        .iter()
        .any(|rule| rule_allows(rule, attrs))
}

/// The rules that apply to `user` in `namespace` ("": only cluster-wide bindings).
pub fn rules_for(store: &Store, user: &User, namespace: &str) -> Vec<Value> {
    let mut rules = Vec::new();
    // Looked up by name and read in place: this runs for every request (kube-apiserver's
    // authorizer reads its informers' caches the same way).
    let role_rules = |kind: &str, name: &str, ns: &str| -> Vec<Value> {
        let (storage_key, namespace) = match kind {
            "ClusterRole" => ("rbac.authorization.k8s.io/clusterroles", ""),
            _ => ("rbac.authorization.k8s.io/roles", ns),
        };
        store
            .get(&Key {
                storage_key: storage_key.to_string(),
                namespace: namespace.to_string(),
                name: name.to_string(),
            })
            .and_then(|r| r["rules"].as_array().cloned())
            .unwrap_or_default()
    };
    for binding in store.iter("rbac.authorization.k8s.io/clusterrolebindings", None) {
        if binds(binding, user) {
            rules.extend(role_rules(
                "ClusterRole",
                binding["roleRef"]["name"].as_str().unwrap_or_default(),
                "",
            ));
        }
    }
    if !namespace.is_empty() {
        for binding in store.iter("rbac.authorization.k8s.io/rolebindings", Some(namespace)) {
            if binds(binding, user) {
                rules.extend(role_rules(
                    binding["roleRef"]["kind"].as_str().unwrap_or_default(),
                    binding["roleRef"]["name"].as_str().unwrap_or_default(),
                    namespace,
                ));
            }
        }
    }
    rules
}

/// Whether a binding names the user, one of its groups, or its service account.
fn binds(binding: &Value, user: &User) -> bool {
    binding["subjects"]
        .as_array()
        .into_iter()
        .flatten()
        .any(|s| {
            let name = s["name"].as_str().unwrap_or_default();
            match s["kind"].as_str() {
                Some("User") => user.name == name,
                Some("Group") => user.groups.iter().any(|g| g == name),
                Some("ServiceAccount") => {
                    let ns = s["namespace"]
                        .as_str()
                        .or_else(|| binding["metadata"]["namespace"].as_str())
                        .unwrap_or_default();
                    user.name == format!("system:serviceaccount:{ns}:{name}")
                }
                _ => false,
            }
        })
}

fn contains(list: &Value, wanted: &str) -> bool {
    list.as_array()
        .into_iter()
        .flatten()
        .filter_map(Value::as_str)
        .any(|v| v == "*" || v == wanted)
}

/// kube-apiserver's `RuleAllows` for resource requests.
pub fn rule_allows(rule: &Value, attrs: &Attributes) -> bool {
    let resource = if attrs.subresource.is_empty() {
        attrs.resource.clone()
    } else {
        format!("{}/{}", attrs.resource, attrs.subresource)
    };
    let resource_ok = rule["resources"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(Value::as_str)
        .any(|r| {
            r == "*"
                || r == resource
                || (!attrs.subresource.is_empty() && r == format!("*/{}", attrs.subresource))
        });
    let names = rule["resourceNames"].as_array().filter(|n| !n.is_empty());
    let name_ok = match names {
        None => true,
        Some(names) => {
            !attrs.name.is_empty() && names.iter().any(|n| n.as_str() == Some(&attrs.name))
        }
    };
    contains(&rule["verbs"], &attrs.verb)
        && contains(&rule["apiGroups"], &attrs.group)
        && resource_ok
        && name_ok
}

/// Whether `user` may `verb` (`get`) the non-resource URL `path` (`/version`, `/apis/apps`):
/// a rule's `nonResourceURLs` entry equal to the path, or ending in `*` and prefixing it.
pub fn authorize_path(store: &Store, user: &User, verb: &str, path: &str) -> bool {
    if user.is_admin() {
        return true;
    }
    rules_for(store, user, "").iter().any(|rule| {
        contains(&rule["verbs"], verb)
            && rule["nonResourceURLs"]
                .as_array()
                .into_iter()
                .flatten()
                .filter_map(Value::as_str)
                .any(|url| match url.strip_suffix('*') {
                    Some(prefix) => path.starts_with(prefix),
                    None => url == path,
                })
    })
}

/// The 403 message kube-apiserver gives for a non-resource URL.
pub fn forbidden_path_message(user: &User, verb: &str, path: &str) -> String {
    format!(
        "forbidden: User \"{}\" cannot {verb} path \"{path}\"",
        user.name
    )
}

/// The 403 message kube-apiserver gives.
pub fn forbidden_message(user: &User, attrs: &Attributes) -> String {
    let qualified = if attrs.group.is_empty() {
        attrs.resource.clone()
    } else {
        format!("{}.{}", attrs.resource, attrs.group)
    };
    let subject = if attrs.name.is_empty() {
        qualified
    } else {
        format!("{qualified} \"{}\"", attrs.name)
    };
    let resource = if attrs.subresource.is_empty() {
        format!("resource \"{}\"", attrs.resource)
    } else {
        format!("resource \"{}/{}\"", attrs.resource, attrs.subresource)
    };
    let scope = if attrs.namespace.is_empty() {
        "at the cluster scope".to_string()
    } else {
        format!("in the namespace \"{}\"", attrs.namespace)
    };
    format!(
        "{subject} is forbidden: User \"{}\" cannot {} {resource} in API group \"{}\" {scope}",
        user.name, attrs.verb, attrs.group
    )
}

/// A SelfSubjectAccessReview answered for `user` (what `kubectl auth can-i VERB RESOURCE` asks).
pub fn access_review(store: &Store, user: &User, review: &Value) -> Value {
    let spec = &review["spec"]["resourceAttributes"];
    let s = |f: &str| spec[f].as_str().unwrap_or_default().to_string();
    let attrs = Attributes {
        verb: s("verb"),
        group: s("group"),
        resource: s("resource"),
        subresource: s("subresource"),
        namespace: s("namespace"),
        name: s("name"),
    };
    let allowed = !review["spec"]["resourceAttributes"].is_null() && authorize(store, user, &attrs);
    let mut answer = review.clone();
    answer["apiVersion"] = "authorization.k8s.io/v1".into();
    answer["kind"] = "SelfSubjectAccessReview".into();
    answer["status"] = if allowed {
        json!({"allowed": true, "reason": if user.is_admin() { "the user is a member of system:masters" } else { "allowed by RBAC" }})
    } else {
        json!({"allowed": false})
    };
    answer
}

/// A TokenReview answered: `who` is the token's user (`None`: not a token of this server).
pub fn token_review(review: &Value, who: Option<&User>) -> Value {
    let mut answer = review.clone();
    answer["apiVersion"] = "authentication.k8s.io/v1".into();
    answer["kind"] = "TokenReview".into();
    if let Some(spec) = answer["spec"].as_object_mut() {
        // kube-apiserver does not echo the token back.
        spec.remove("token");
    }
    answer["status"] = match who {
        Some(user) => json!({"authenticated": true,
                             "user": {"username": user.name, "groups": user.groups}}),
        None => json!({"authenticated": false, "error": "invalid bearer token"}),
    };
    answer
}

/// A SubjectAccessReview answered: may the user and groups of its spec do what its resource
/// or non-resource attributes say, by the cluster's RBAC.
pub fn subject_access_review(store: &Store, review: &Value) -> Value {
    let spec = &review["spec"];
    let user = User {
        name: spec["user"].as_str().unwrap_or_default().to_string(),
        groups: spec["groups"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|g| g.as_str().map(str::to_string))
            .collect(),
    };
    let s = |v: &Value, f: &str| v[f].as_str().unwrap_or_default().to_string();
    let non_resource = &spec["nonResourceAttributes"];
    let resource = &spec["resourceAttributes"];
    let allowed = if non_resource.is_object() {
        authorize_path(
            store,
            &user,
            &s(non_resource, "verb"),
            &s(non_resource, "path"),
        )
    } else if resource.is_object() {
        let attrs = Attributes {
            verb: s(resource, "verb"),
            group: s(resource, "group"),
            resource: s(resource, "resource"),
            subresource: s(resource, "subresource"),
            namespace: s(resource, "namespace"),
            name: s(resource, "name"),
        };
        authorize(store, &user, &attrs)
    } else {
        false
    };
    let mut answer = review.clone();
    answer["apiVersion"] = "authorization.k8s.io/v1".into();
    answer["kind"] = "SubjectAccessReview".into();
    answer["status"] = json!({"allowed": allowed});
    answer
}

/// A SelfSubjectRulesReview (`kubectl auth can-i --list`): the resource rules in a namespace.
pub fn rules_review(store: &Store, user: &User, review: &Value) -> Value {
    let namespace = review["spec"]["namespace"].as_str().unwrap_or_default();
    let rules: Vec<Value> = if user.is_admin() {
        vec![
            json!({"verbs": ["*"], "apiGroups": ["*"], "resources": ["*"]}),
            json!({"verbs": ["*"], "nonResourceURLs": ["*"]}),
        ]
    } else {
        rules_for(store, user, namespace)
    };
    let (non_resource, resource): (Vec<Value>, Vec<Value>) = rules
        .into_iter()
        .partition(|r| r["nonResourceURLs"].is_array());
    let mut answer = review.clone();
    answer["apiVersion"] = "authorization.k8s.io/v1".into();
    answer["kind"] = "SelfSubjectRulesReview".into();
    answer["status"] = json!({
        "resourceRules": resource,
        "nonResourceRules": non_resource,
        "incomplete": false,
    });
    answer
}

#[cfg(test)]
mod tests {
    use super::*;

    fn attrs(verb: &str, group: &str, resource: &str, sub: &str) -> Attributes {
        Attributes {
            verb: verb.into(),
            group: group.into(),
            resource: resource.into(),
            subresource: sub.into(),
            namespace: "ns".into(),
            name: "x".into(),
        }
    }

    #[test]
    fn rules_match_as_rbac_does() {
        let rule =
            json!({"apiGroups": ["apps"], "resources": ["deployments"], "verbs": ["get", "list"]});
        assert!(rule_allows(&rule, &attrs("get", "apps", "deployments", "")));
        assert!(!rule_allows(
            &rule,
            &attrs("patch", "apps", "deployments", "")
        ));
        assert!(!rule_allows(&rule, &attrs("get", "", "deployments", "")));
        // A subresource needs its own entry.
        assert!(!rule_allows(
            &rule,
            &attrs("get", "apps", "deployments", "status")
        ));
        let sub =
            json!({"apiGroups": ["apps"], "resources": ["deployments/scale"], "verbs": ["*"]});
        assert!(rule_allows(
            &sub,
            &attrs("patch", "apps", "deployments", "scale")
        ));
        let names = json!({"apiGroups": [""], "resources": ["secrets"], "verbs": ["get"], "resourceNames": ["y"]});
        assert!(!rule_allows(&names, &attrs("get", "", "secrets", "")));
        let star = json!({"apiGroups": ["*"], "resources": ["*"], "verbs": ["*"]});
        assert!(rule_allows(
            &star,
            &attrs("delete", "k8slab.io", "imagebackups", "")
        ));
    }

    #[test]
    fn tokens_name_users() {
        let mut ids = Identities::default();
        let token = ids.issue(User::service_account("image-backup", "watcher"));
        let user = ids
            .authenticate(Some(&format!("Bearer {token}")))
            .expect("issued token");
        assert_eq!(user.name, "system:serviceaccount:image-backup:watcher");
        assert_eq!(
            ids.authenticate(Some("Bearer nope")),
            Err(Unauthenticated::UnknownToken)
        );
        assert_eq!(ids.authenticate(None), Ok(User::admin()));
        ids.require_authentication(true);
        assert_eq!(ids.authenticate(None), Err(Unauthenticated::Anonymous));
    }
}
