//! The test API server through kube-rs, exactly as the functions will use it.

use std::time::Duration;

use futures::{StreamExt, TryStreamExt};
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{ConfigMap, Namespace};
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::ResourceExt;
use kube::api::{Api, DeleteParams, ListParams, Patch, PatchParams, PostParams};
use kube::runtime::{WatchStreamExt, reflector, watcher};
use serde_json::json;
use shared::crd::{ImageBackup, ImageBackupStatus, Phase};
use shared::workload::Workload;
use testbed::ApiServer;

fn deployment(name: &str, image: &str) -> Deployment {
    serde_json::from_value(json!({
        "apiVersion": "apps/v1", "kind": "Deployment",
        "metadata": {"name": name, "labels": {"app": name, "tier": "web"}},
        "spec": {"replicas": 2, "selector": {"matchLabels": {"app": name}},
                 "template": {"metadata": {"labels": {"app": name}},
                              "spec": {"containers": [{"name": "main", "image": image}, {"name": "side", "image": "busybox:1"}]}}}
    }))
    .expect("deployment")
}

fn status_code(e: &kube::Error) -> (u16, String) {
    match e {
        kube::Error::Api(s) => (s.code, s.reason.clone()),
        other => panic!("not an API error: {other}"),
    }
}

async fn install_crd(client: &kube::Client) {
    let crds: Api<CustomResourceDefinition> = Api::all(client.clone());
    crds.create(&PostParams::default(), &shared::crd::crd())
        .await
        .expect("create CRD");
}

#[tokio::test]
async fn discovery_and_a_crd_that_starts_serving() {
    let server = ApiServer::start().await.expect("server");
    let client = server.client().expect("client");
    let version = client.apiserver_version().await.expect("version");
    assert_eq!(version.major, "1");
    let ibs: Api<ImageBackup> = Api::all(client.clone());
    assert_eq!(
        status_code(
            &ibs.list(&ListParams::default())
                .await
                .expect_err("not served yet")
        )
        .0,
        404
    );
    install_crd(&client).await;
    let crd: Api<CustomResourceDefinition> = Api::all(client.clone());
    let stored = crd.get("imagebackups.k8slab.io").await.expect("crd");
    assert!(
        stored
            .status
            .expect("status")
            .conditions
            .expect("conditions")
            .iter()
            .any(|c| c.type_ == "Established")
    );

    let discovery = kube::discovery::Discovery::new(client.clone())
        .run()
        .await
        .expect("discovery");
    let kinds: Vec<String> = discovery
        .groups()
        .flat_map(|g| g.recommended_resources().into_iter().map(|(r, _)| r.kind))
        .collect();
    for k in [
        "Deployment",
        "DaemonSet",
        "Namespace",
        "Secret",
        "Lease",
        "CustomResourceDefinition",
        "ImageBackup",
    ] {
        assert!(kinds.iter().any(|x| x == k), "{k} discovered in {kinds:?}");
    }
    let ib = ImageBackup::for_source(
        &shared::Reference::parse_normalized("nginx:1.14.0").expect("ref"),
        &shared::Reference::parse_normalized("localhost:5000/library_nginx:1.14.0").expect("ref"),
    );
    let created = ibs
        .create(&PostParams::default(), &ib)
        .await
        .expect("create ib");
    assert_eq!(created.metadata.namespace, None, "cluster-scoped");
    assert_eq!(created.metadata.generation, Some(1));
    let err = ibs
        .create(&PostParams::default(), &ib)
        .await
        .expect_err("second create");
    assert_eq!(status_code(&err), (409, "AlreadyExists".into()));
}

#[tokio::test]
async fn a_namespaced_crd_without_status_subresource() {
    let server = ApiServer::start().await.expect("server");
    let client = server.client().expect("client");
    let crd: CustomResourceDefinition = serde_json::from_value(json!({
        "apiVersion": "apiextensions.k8s.io/v1", "kind": "CustomResourceDefinition",
        "metadata": {"name": "widgets.example.io"},
        "spec": {"group": "example.io", "scope": "Namespaced",
                 "names": {"plural": "widgets", "singular": "widget", "kind": "Widget"},
                 "versions": [{"name": "v1", "served": true, "storage": true,
                               "schema": {"openAPIV3Schema": {"type": "object", "x-kubernetes-preserve-unknown-fields": true}}}]}
    }))
    .expect("crd");
    Api::<CustomResourceDefinition>::all(client.clone())
        .create(&PostParams::default(), &crd)
        .await
        .expect("create crd");
    let resource = kube::api::ApiResource {
        group: "example.io".into(),
        version: "v1".into(),
        api_version: "example.io/v1".into(),
        kind: "Widget".into(),
        plural: "widgets".into(),
    };
    let widgets: Api<kube::api::DynamicObject> =
        Api::namespaced_with(client.clone(), "default", &resource);
    let mut w = kube::api::DynamicObject::new("w1", &resource);
    w.data = json!({"spec": {"size": 1}, "status": {"ok": true}});
    let created = widgets
        .create(&PostParams::default(), &w)
        .await
        .expect("create widget");
    assert_eq!(created.metadata.namespace.as_deref(), Some("default"));
    // Without a status subresource, status is part of the main resource...
    assert_eq!(created.data["status"]["ok"], true);
    let patched = widgets
        .patch(
            "w1",
            &PatchParams::default(),
            &Patch::Merge(&json!({"status": {"ok": false}})),
        )
        .await
        .expect("patch");
    assert_eq!(patched.data["status"]["ok"], false);
    assert_eq!(patched.metadata.generation, Some(1), "status is not spec");
    // ...and there is no /status to write to.
    let err = widgets
        .patch_status(
            "w1",
            &PatchParams::default(),
            &Patch::Merge(&json!({"status": {}})),
        )
        .await
        .expect_err("no /status");
    assert_eq!(status_code(&err).0, 404);
    assert_eq!(
        widgets
            .list(&ListParams::default())
            .await
            .expect("list")
            .items
            .len(),
        1
    );
    let elsewhere: Api<kube::api::DynamicObject> =
        Api::namespaced_with(client.clone(), "kube-system", &resource);
    assert!(
        elsewhere
            .list(&ListParams::default())
            .await
            .expect("list")
            .items
            .is_empty()
    );
}

#[tokio::test]
async fn crud_resource_versions_generation_and_status() {
    let server = ApiServer::start().await.expect("server");
    server.simulate_workloads(false);
    let client = server.client().expect("client");
    let api: Api<Deployment> = Api::namespaced(client.clone(), "default");
    let created = api
        .create(&PostParams::default(), &deployment("web", "nginx:1.14.0"))
        .await
        .expect("create");
    assert!(created.metadata.uid.is_some() && created.metadata.creation_timestamp.is_some());
    assert_eq!(created.metadata.generation, Some(1));
    let rv1: u64 = created
        .resource_version()
        .expect("rv")
        .parse()
        .expect("numeric rv");

    // generateName.
    let mut generated = deployment("x", "nginx");
    generated.metadata.name = None;
    generated.metadata.generate_name = Some("gen-".into());
    let g = api
        .create(&PostParams::default(), &generated)
        .await
        .expect("generateName");
    assert!(g.name_any().starts_with("gen-") && g.name_any().len() == 9);

    // Status through the main resource is ignored; status through /status changes only status.
    let mut with_status = created.clone();
    with_status.status = Some(serde_json::from_value(json!({"replicas": 7})).expect("status"));
    with_status
        .metadata
        .labels
        .get_or_insert_default()
        .insert("extra".into(), "1".into());
    let replaced = api
        .replace("web", &PostParams::default(), &with_status)
        .await
        .expect("replace");
    assert!(
        replaced.status.is_none(),
        "status ignored on the main resource"
    );
    assert_eq!(
        replaced.metadata.generation,
        Some(1),
        "metadata changes do not bump generation"
    );
    let rv2: u64 = replaced
        .resource_version()
        .expect("rv")
        .parse()
        .expect("rv");
    assert!(rv2 > rv1);

    let status_patch =
        json!({"status": {"observedGeneration": 1, "replicas": 2}, "spec": {"replicas": 9}});
    let after = api
        .patch_status("web", &PatchParams::default(), &Patch::Merge(&status_patch))
        .await
        .expect("status patch");
    assert_eq!(after.status.as_ref().and_then(|s| s.replicas), Some(2));
    assert_eq!(
        after.spec.as_ref().and_then(|s| s.replicas),
        Some(2),
        "spec ignored on /status"
    );
    assert_eq!(
        after.metadata.generation,
        Some(1),
        "status writes do not bump generation"
    );

    // Spec change bumps generation; a stale resourceVersion is a Conflict.
    let mut stale = replaced.clone();
    stale.spec.as_mut().expect("spec").replicas = Some(3);
    let err = api
        .replace("web", &PostParams::default(), &stale)
        .await
        .expect_err("stale");
    assert_eq!(status_code(&err), (409, "Conflict".into()));
    let mut fresh = api.get("web").await.expect("get");
    fresh.spec.as_mut().expect("spec").replicas = Some(3);
    let bumped = api
        .replace("web", &PostParams::default(), &fresh)
        .await
        .expect("replace");
    assert_eq!(bumped.metadata.generation, Some(2));

    // Errors are metav1.Status with the real reasons.
    assert_eq!(
        status_code(&api.get("nope").await.expect_err("missing")),
        (404, "NotFound".into())
    );
    let other_ns: Api<Deployment> = Api::namespaced(client.clone(), "missing-ns");
    assert_eq!(
        status_code(
            &other_ns
                .create(&PostParams::default(), &deployment("a", "nginx"))
                .await
                .expect_err("no ns")
        )
        .0,
        404
    );
    let mut bad = deployment("Bad_Name", "nginx");
    bad.metadata.name = Some("Bad_Name".into());
    assert_eq!(
        status_code(
            &api.create(&PostParams::default(), &bad)
                .await
                .expect_err("invalid")
        ),
        (422, "Invalid".into())
    );
}

#[tokio::test]
async fn the_four_patch_types() {
    let server = ApiServer::start().await.expect("server");
    server.simulate_workloads(false);
    let client = server.client().expect("client");
    let api: Api<Deployment> = Api::namespaced(client.clone(), "default");
    api.create(&PostParams::default(), &deployment("web", "nginx:1.14.0"))
        .await
        .expect("create");

    // Strategic merge: containers merged by name, the other container untouched.
    let smp = json!({"spec": {"template": {"spec": {"containers": [{"name": "main", "image": "backup/nginx@sha256:abc"}]}}}});
    let d = api
        .patch("web", &PatchParams::default(), &Patch::Strategic(&smp))
        .await
        .expect("strategic");
    let containers = d.spec.expect("spec").template.spec.expect("pod").containers;
    let images: Vec<_> = containers
        .iter()
        .map(|c| (c.name.as_str(), c.image.as_deref().unwrap_or("")))
        .collect();
    assert_eq!(
        images,
        [("main", "backup/nginx@sha256:abc"), ("side", "busybox:1")]
    );

    // JSON merge patch replaces lists.
    let merge = json!({"metadata": {"labels": {"tier": null, "merged": "yes"}}});
    let d = api
        .patch("web", &PatchParams::default(), &Patch::Merge(&merge))
        .await
        .expect("merge");
    let labels = d.metadata.labels.expect("labels");
    assert_eq!(
        (labels.get("tier"), labels.get("merged").map(String::as_str)),
        (None, Some("yes"))
    );

    // JSON patch with a passing and a failing test.
    let ok: json_patch::Patch = serde_json::from_value(json!([
        {"op": "test", "path": "/spec/replicas", "value": 2},
        {"op": "replace", "path": "/spec/replicas", "value": 4}
    ]))
    .expect("patch");
    let d = api
        .patch("web", &PatchParams::default(), &Patch::Json::<()>(ok))
        .await
        .expect("json patch");
    assert_eq!(d.spec.expect("spec").replicas, Some(4));
    let failing: json_patch::Patch =
        serde_json::from_value(json!([{"op": "test", "path": "/spec/replicas", "value": 99}]))
            .expect("patch");
    let err = api
        .patch("web", &PatchParams::default(), &Patch::Json::<()>(failing))
        .await
        .expect_err("test fails");
    assert_eq!(status_code(&err), (422, "Invalid".into()));

    // Server-side apply creates and updates.
    let applied = json!({"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": "applied"},
        "spec": {"selector": {"matchLabels": {"app": "a"}}, "template": {"metadata": {"labels": {"app": "a"}}, "spec": {"containers": [{"name": "c", "image": "redis:7"}]}}}});
    let params = PatchParams::apply("testbed-test").force();
    let d = api
        .patch("applied", &params, &Patch::Apply(&applied))
        .await
        .expect("apply create");
    assert_eq!(d.metadata.generation, Some(1));
    let mut changed = applied.clone();
    changed["spec"]["template"]["spec"]["containers"][0]["image"] = "redis:7.2".into();
    let d = api
        .patch("applied", &params, &Patch::Apply(&changed))
        .await
        .expect("apply update");
    assert_eq!(d.metadata.generation, Some(2));
    let err = api
        .patch("applied", &PatchParams::default(), &Patch::Apply(&changed))
        .await
        .expect_err("no field manager");
    assert_eq!(status_code(&err).0, 400);

    // Strategic merge is refused for custom resources, as kube-apiserver does.
    install_crd(&client).await;
    let ibs: Api<ImageBackup> = Api::all(client.clone());
    let ib = ImageBackup::for_source(
        &shared::Reference::parse_normalized("nginx").expect("ref"),
        &shared::Reference::parse_normalized("localhost:5000/library_nginx").expect("ref"),
    );
    ibs.create(&PostParams::default(), &ib).await.expect("ib");
    let err = ibs
        .patch(
            &ib.name_any(),
            &PatchParams::default(),
            &Patch::Strategic(&json!({"spec": {}})),
        )
        .await
        .expect_err("smp on CR");
    assert_eq!(status_code(&err).0, 415);
    let status = ImageBackupStatus {
        phase: Some(Phase::Copying),
        ..Default::default()
    };
    let patched = ibs
        .patch_status(
            &ib.name_any(),
            &PatchParams::default(),
            &Patch::Merge(&json!({"status": status})),
        )
        .await
        .expect("status patch");
    assert_eq!(patched.phase(), Phase::Copying);
}

#[tokio::test]
async fn finalizers_selectors_and_all_namespaces() {
    let server = ApiServer::start().await.expect("server");
    let client = server.client().expect("client");
    let namespaces: Api<Namespace> = Api::all(client.clone());
    namespaces
        .create(
            &PostParams::default(),
            &serde_json::from_value(json!({"metadata": {"name": "team-a"}})).expect("ns"),
        )
        .await
        .expect("ns");
    let cms_default: Api<ConfigMap> = Api::namespaced(client.clone(), "default");
    let cms_a: Api<ConfigMap> = Api::namespaced(client.clone(), "team-a");
    let cm = |name: &str, app: &str| -> ConfigMap {
        serde_json::from_value(json!({"metadata": {"name": name, "labels": {"app": app}}}))
            .expect("cm")
    };
    cms_default
        .create(&PostParams::default(), &cm("one", "x"))
        .await
        .expect("cm");
    cms_default
        .create(&PostParams::default(), &cm("two", "y"))
        .await
        .expect("cm");
    cms_a
        .create(&PostParams::default(), &cm("three", "x"))
        .await
        .expect("cm");
    let all: Api<ConfigMap> = Api::all(client.clone());
    let names = |list: kube::core::ObjectList<ConfigMap>| {
        list.items
            .iter()
            .map(ResourceExt::name_any)
            .collect::<Vec<_>>()
    };
    let cases: [(ListParams, &[&str]); 6] = [
        (ListParams::default(), &["one", "two", "three"]),
        (ListParams::default().labels("app=x"), &["one", "three"]),
        (ListParams::default().labels("app in (y,z)"), &["two"]),
        (ListParams::default().labels("app!=x"), &["two"]),
        (
            ListParams::default().fields("metadata.namespace=team-a"),
            &["three"],
        ),
        (
            ListParams::default().fields("metadata.name=two,metadata.namespace=default"),
            &["two"],
        ),
    ];
    for (params, want) in cases {
        let got = names(all.list(&params).await.expect("list"));
        assert_eq!(
            got, want,
            "{:?} {:?}",
            params.label_selector, params.field_selector
        );
    }
    assert_eq!(
        names(
            cms_default
                .list(&ListParams::default().fields("metadata.name=two"))
                .await
                .expect("list")
        ),
        ["two"]
    );
    assert_eq!(
        status_code(
            &all.list(&ListParams::default().fields("spec.x=1"))
                .await
                .expect_err("bad field")
        )
        .0,
        400
    );

    // A finalizer keeps a deleted object, with a deletionTimestamp, until it is removed.
    cms_default
        .patch(
            "one",
            &PatchParams::default(),
            &Patch::Merge(&json!({"metadata": {"finalizers": ["k8slab.io/test"]}})),
        )
        .await
        .expect("add finalizer");
    cms_default
        .delete("one", &DeleteParams::default())
        .await
        .expect("delete");
    let held = cms_default.get("one").await.expect("still there");
    assert!(held.metadata.deletion_timestamp.is_some());
    cms_default
        .patch(
            "one",
            &PatchParams::default(),
            &Patch::Merge(&json!({"metadata": {"finalizers": null}})),
        )
        .await
        .expect("remove finalizer");
    assert_eq!(
        status_code(&cms_default.get("one").await.expect_err("gone")).0,
        404
    );
}

#[tokio::test]
async fn watcher_and_reflector_survive_a_forced_410() {
    let server = ApiServer::start().await.expect("server");
    let client = server.client().expect("client");
    let api: Api<ConfigMap> = Api::namespaced(client.clone(), "default");
    let cm = |name: &str| -> ConfigMap {
        serde_json::from_value(json!({"metadata": {"name": name}})).expect("cm")
    };
    api.create(&PostParams::default(), &cm("before"))
        .await
        .expect("cm");

    let (reader, writer) = reflector::store::<ConfigMap>();
    let inits = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let counter = inits.clone();
    let stream = reflector(
        writer,
        watcher(api.clone(), watcher::Config::default().any_semantic()),
    )
    .inspect_ok(move |e| {
        if matches!(e, watcher::Event::Init) {
            counter.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        }
    })
    .default_backoff()
    .applied_objects();
    let task = tokio::spawn(async move {
        let mut stream = std::pin::pin!(stream);
        while let Some(_item) = stream.next().await {}
    });
    reader.wait_until_ready().await.expect("store ready");
    assert_eq!(reader.state().len(), 1);

    api.create(&PostParams::default(), &cm("during"))
        .await
        .expect("cm");
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while reader.state().len() != 2 {
        assert!(tokio::time::Instant::now() < deadline, "event not seen");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // Compaction ends the watch; resuming from the watcher's last resourceVersion gets 410 Gone,
    // and the watcher must re-list (a second Init).
    server.compact();
    api.create(&PostParams::default(), &cm("after"))
        .await
        .expect("cm");
    // A watch cut after each event also keeps the reflector whole (it resumes without a re-list).
    server.cut_watches_after(Some(1));
    api.create(&PostParams::default(), &cm("cut"))
        .await
        .expect("cm");
    api.create(&PostParams::default(), &cm("cut2"))
        .await
        .expect("cm");
    server.cut_watches_after(None);
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    loop {
        let mut names: Vec<String> = reader.state().iter().map(|c| c.name_any()).collect();
        names.sort();
        if names == ["after", "before", "cut", "cut2", "during"]
            && inits.load(std::sync::atomic::Ordering::SeqCst) >= 2
        {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "reflector did not converge: {names:?}, inits {}",
            inits.load(std::sync::atomic::Ordering::SeqCst)
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    api.delete("before", &DeleteParams::default())
        .await
        .expect("delete");
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while reader.state().len() != 4 {
        assert!(tokio::time::Instant::now() < deadline, "delete not seen");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    task.abort();
}

#[tokio::test]
async fn raw_watch_bookmarks_and_gone() {
    let server = ApiServer::start().await.expect("server");
    let client = server.client().expect("client");
    let api: Api<ConfigMap> = Api::namespaced(client.clone(), "default");
    let rv = api
        .list(&ListParams::default())
        .await
        .expect("list")
        .metadata
        .resource_version
        .expect("rv");
    let params = kube::api::WatchParams::default().timeout(5);
    let mut stream = api.watch(&params, &rv).await.expect("watch").boxed();
    api.create(
        &PostParams::default(),
        &serde_json::from_value(json!({"metadata": {"name": "w"}})).expect("cm"),
    )
    .await
    .expect("create");
    let mut saw_added = false;
    let mut saw_bookmark = false;
    while let Some(event) = tokio::time::timeout(Duration::from_secs(6), stream.next())
        .await
        .expect("event in time")
    {
        match event.expect("event") {
            kube::api::WatchEvent::Added(cm) => saw_added |= cm.name_any() == "w",
            kube::api::WatchEvent::Bookmark(_) => saw_bookmark = true,
            _ => {}
        }
        if saw_added && saw_bookmark {
            break;
        }
    }
    assert!(saw_added && saw_bookmark);
    server.compact();
    let mut stream = api
        .watch(&kube::api::WatchParams::default(), &rv)
        .await
        .expect("watch")
        .boxed();
    match stream.next().await.expect("an event").expect("decoded") {
        kube::api::WatchEvent::Error(e) => {
            assert_eq!((e.code, e.reason.as_str()), (410, "Expired"))
        }
        other => panic!("expected 410, got {other:?}"),
    }
}

/// A watch that stops reading while more changes happen than the server holds for it is
/// closed as kube-apiserver's cacher closes an unresponsive watcher: the stream just ends, with
/// no ERROR event (a 410 would make every client list everything again), and a watch from the
/// last resourceVersion it saw carries on where it stopped.
#[tokio::test]
async fn an_unresponsive_watch_is_closed_without_an_error_and_resumes_where_it_stopped() {
    const CREATED: usize = 8000;
    let server = ApiServer::start().await.expect("server");
    let client = server.client().expect("client");
    let api: Api<ConfigMap> = Api::namespaced(client.clone(), "default");
    let rv = server.resource_version().to_string();
    let params = kube::api::WatchParams::default().timeout(290);
    let stream = api.watch(&params, &rv).await.expect("watch").boxed();
    // Not read while 8,000 ConfigMaps of 8 KiB are created: more than the server keeps for a
    // watcher (4,096 changes) beyond what loopback's socket buffers hold.
    let data = "x".repeat(8192);
    futures::stream::iter(0..CREATED)
        .for_each_concurrent(16, |i| {
            let (api, data) = (api.clone(), data.clone());
            async move {
                let cm = json!({"metadata": {"name": format!("cm-{i}")}, "data": {"d": data}});
                api.create(
                    &PostParams::default(),
                    &serde_json::from_value(cm).expect("cm"),
                )
                .await
                .expect("create");
            }
        })
        .await;
    let drain = |mut stream: futures::stream::BoxStream<
        'static,
        kube::Result<kube::api::WatchEvent<ConfigMap>>,
    >| async move {
        let (mut added, mut last) = (0, None);
        loop {
            match tokio::time::timeout(Duration::from_secs(20), stream.next())
                .await
                .expect("the watch ends")
            {
                None => return (added, last),
                Some(Ok(kube::api::WatchEvent::Added(cm))) => {
                    added += 1;
                    last = cm.resource_version();
                }
                Some(Ok(kube::api::WatchEvent::Bookmark(_))) => {}
                Some(other) => panic!("only additions, then the end: {other:?}"),
            }
        }
    };
    let (seen, last) = drain(stream).await;
    assert!(
        seen < CREATED,
        "closed before it was sent every change ({seen} of {CREATED})"
    );
    let last = last.expect("some changes were sent before it was closed");
    let params = kube::api::WatchParams::default().timeout(3);
    let resumed = api
        .watch(&params, &last)
        .await
        .expect("watch again")
        .boxed();
    let (rest, _) = drain(resumed).await;
    assert_eq!(seen + rest, CREATED, "nothing lost, nothing twice");
}

/// Creates empty ConfigMaps named `names`.
async fn create_config_maps(api: &Api<ConfigMap>, names: &[&str]) {
    for name in names {
        api.create(
            &PostParams::default(),
            &serde_json::from_value(json!({"metadata": {"name": name}})).expect("cm"),
        )
        .await
        .expect("create");
    }
}

/// A streaming list as kube-apiserver serves it (every object, then the bookmark annotated
/// `k8s.io/initial-events-end`), its refusal with WatchList off (422 Invalid on
/// `ListOptions.meta.k8s.io`), and kube-apiserver's rules for `resourceVersionMatch` on a watch.
#[tokio::test]
async fn streaming_lists_end_with_their_bookmark_and_are_refused_with_watch_list_off() {
    let server = ApiServer::start().await.expect("server");
    let client = server.client().expect("client");
    let api: Api<ConfigMap> = Api::namespaced(client.clone(), "default");
    create_config_maps(&api, &["a", "b", "c"]).await;
    let params = kube::api::WatchParams::streaming_lists().timeout(5);
    let mut stream = api.watch(&params, "0").await.expect("watch").boxed();
    let mut added = Vec::new();
    let end = loop {
        let event = tokio::time::timeout(Duration::from_secs(6), stream.next())
            .await
            .expect("event in time")
            .expect("an event")
            .expect("decoded");
        match event {
            kube::api::WatchEvent::Added(cm) => added.push(cm.name_any()),
            kube::api::WatchEvent::Bookmark(b) => break b,
            other => panic!("unexpected {other:?}"),
        }
    };
    assert_eq!(added, ["a", "b", "c"], "every object before the bookmark");
    assert_eq!(
        end.metadata
            .annotations
            .get("k8s.io/initial-events-end")
            .map(String::as_str),
        Some("true")
    );
    assert_eq!(
        end.metadata.resource_version,
        server.resource_version().to_string(),
        "the bookmark carries the list's resourceVersion"
    );

    server.watch_list(false);
    let refused = api.watch(&params, "0").await.err().expect("refused");
    let kube::Error::Api(status) = refused else {
        panic!("not an API error: {refused}")
    };
    assert_eq!((status.code, status.reason.as_str()), (422, "Invalid"));
    assert_eq!(
        status.message,
        "ListOptions.meta.k8s.io \"\" is invalid: sendInitialEvents: Forbidden: sendInitialEvents is forbidden for watch unless the WatchList feature gate is enabled"
    );
    server.watch_list(true);

    // resourceVersionMatch on a watch needs sendInitialEvents, and only NotOlderThan.
    for query in [
        "watch=true&resourceVersionMatch=NotOlderThan",
        "watch=true&sendInitialEvents=true&allowWatchBookmarks=true",
        "watch=true&sendInitialEvents=true&resourceVersionMatch=Exact",
    ] {
        let request = http::Request::get(format!("/api/v1/namespaces/default/configmaps?{query}"))
            .body(Vec::new())
            .expect("request");
        let e = client
            .request::<serde_json::Value>(request)
            .await
            .expect_err("refused");
        assert_eq!(status_code(&e), (422, "Invalid".to_string()), "{query}");
    }
}

/// The functions' watch (`shared::initial_list::watch`, `auto`) against each kind of server:
/// streaming where served, paged after a refusal, and paged after streaming lists that never
/// reach their end bookmark — the cache complete and no error passed on in every case.
#[tokio::test]
async fn the_functions_watch_falls_back_to_paged_lists_where_streaming_ones_fail() {
    use shared::initial_list::{InitialList, UNFINISHED_LIMIT, watch};
    let server = ApiServer::start().await.expect("server");
    let client = server.client().expect("client");
    let api: Api<ConfigMap> = Api::namespaced(client.clone(), "default");
    create_config_maps(&api, &["a", "b", "c"]).await;
    // What one start yields up to its first InitDone: the Inits seen, the names of the last
    // list, and every error passed on.
    let start = async |how: InitialList| {
        let mut stream = watch(api.clone(), how).boxed();
        let (mut inits, mut names, mut errors) = (0, Vec::new(), Vec::new());
        loop {
            let item = tokio::time::timeout(Duration::from_secs(30), stream.next())
                .await
                .expect("the initial list finishes")
                .expect("the watch never ends");
            match item {
                Ok(watcher::Event::Init) => {
                    inits += 1;
                    names.clear();
                }
                Ok(watcher::Event::InitApply(cm)) => names.push(cm.name_any()),
                Ok(watcher::Event::InitDone) => return (inits, names, errors),
                Ok(other) => panic!("unexpected {other:?}"),
                Err(e) => errors.push(e.to_string()),
            }
        }
    };
    server.reset_requests();
    let served = start(InitialList::Auto).await;
    assert_eq!(
        served,
        (1, vec!["a".into(), "b".into(), "c".into()], vec![])
    );
    assert_eq!(
        server.initial_lists("configmaps"),
        (1, 0),
        "streamed, never paged"
    );

    server.watch_list(false);
    server.reset_requests();
    let refused = start(InitialList::Auto).await;
    assert_eq!(
        refused,
        (1, vec!["a".into(), "b".into(), "c".into()], vec![]),
        "the refusal is the switch, not an error: one Init, the paged list's"
    );
    assert_eq!(
        server.initial_lists("configmaps"),
        (1, 1),
        "one refused, then paged"
    );
    // Told `streaming`, it never falls back: the refusal is passed on for the backoff.
    let first = watch(api.clone(), InitialList::Streaming)
        .boxed()
        .next()
        .await
        .expect("an item");
    assert!(
        matches!(&first, Err(e) if e.to_string().contains("sendInitialEvents is forbidden")),
        "{first:?}"
    );
    server.watch_list(true);

    // A server (or a proxy) that cuts every streaming list before its bookmark.
    server.cut_watches_after(Some(1));
    server.reset_requests();
    let cut = start(InitialList::Auto).await;
    server.cut_watches_after(None);
    assert_eq!(
        cut.0 as u32,
        UNFINISHED_LIMIT + 1,
        "the cut lists' Inits and the paged list's"
    );
    assert_eq!(cut.1, ["a", "b", "c"]);
    assert!(cut.2.is_empty(), "{:?}", cut.2);
    assert_eq!(
        server.initial_lists("configmaps"),
        (UNFINISHED_LIMIT as usize + 1, 1),
        "the cut streaming lists (and the next, open when the last cut one is seen), then one paged list"
    );
}

#[tokio::test]
async fn tables_show_the_crd_printer_columns() {
    let server = ApiServer::start().await.expect("server");
    let client = server.client().expect("client");
    install_crd(&client).await;
    let ibs: Api<ImageBackup> = Api::all(client.clone());
    let ib = ImageBackup::for_source(
        &shared::Reference::parse_normalized("nginx:1.14.0").expect("ref"),
        &shared::Reference::parse_normalized("localhost:5000/library_nginx:1.14.0").expect("ref"),
    );
    ibs.create(&PostParams::default(), &ib)
        .await
        .expect("create");
    let status = json!({"status": {"phase": "Copying", "progress": "1/4 blobs, 25%"}});
    ibs.patch_status(
        &ib.name_any(),
        &PatchParams::default(),
        &Patch::Merge(&status),
    )
    .await
    .expect("status");
    let request = http::Request::get("/apis/k8slab.io/v1alpha1/imagebackups")
        .header(
            "Accept",
            "application/json;as=Table;g=meta.k8s.io;v=v1,application/json",
        )
        .body(Vec::new())
        .expect("request");
    let table: serde_json::Value = client.request(request).await.expect("table");
    assert_eq!(table["kind"], "Table");
    let columns: Vec<&str> = table["columnDefinitions"]
        .as_array()
        .expect("columns")
        .iter()
        .filter_map(|c| c["name"].as_str())
        .collect();
    assert_eq!(
        columns,
        [
            "Name", "Source", "Target", "Phase", "Progress", "Digest", "Age"
        ]
    );
    let cells = &table["rows"][0]["cells"];
    assert_eq!(cells[1], "docker.io/library/nginx:1.14.0");
    assert_eq!(cells[3], "Copying");
    assert_eq!(cells[4], "1/4 blobs, 25%");
    assert!(cells[6].as_str().expect("age").ends_with('s'));
}

#[tokio::test]
async fn workloads_become_ready_unless_held() {
    let server = ApiServer::start().await.expect("server");
    let client = server.client().expect("client");
    let api: Api<Deployment> = Api::namespaced(client.clone(), "default");
    server.hold_not_ready("default", "held");
    api.create(&PostParams::default(), &deployment("web", "nginx:1"))
        .await
        .expect("create");
    api.create(&PostParams::default(), &deployment("held", "nginx:1"))
        .await
        .expect("create");
    let ready = |d: Deployment| Workload::Deployment(Box::new(d)).is_ready();
    let wait_ready = |name: &'static str| {
        let api = api.clone();
        async move {
            let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
            loop {
                if ready(api.get(name).await.expect("get")) {
                    return;
                }
                assert!(
                    tokio::time::Instant::now() < deadline,
                    "{name} never became Ready"
                );
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    };
    wait_ready("web").await;
    // A spec change makes it not-Ready until the simulated rollout completes.
    let patched = api
        .patch("web", &PatchParams::default(), &Patch::Strategic(&json!({"spec": {"template": {"spec": {"containers": [{"name": "main", "image": "nginx:2"}]}}}})))
        .await
        .expect("patch");
    assert!(!ready(patched), "not Ready right after a spec change");
    wait_ready("web").await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let held = api.get("held").await.expect("get");
    assert_eq!(held.status.as_ref().and_then(|s| s.ready_replicas), Some(0));
    assert!(!ready(held));
    server.release("default", "held");
    wait_ready("held").await;

    // DaemonSets too: desiredNumberScheduled pods on the simulated nodes, all ready.
    let daemonsets: Api<k8s_openapi::api::apps::v1::DaemonSet> =
        Api::namespaced(client.clone(), "default");
    let ds: k8s_openapi::api::apps::v1::DaemonSet = serde_json::from_value(json!({
        "metadata": {"name": "agent"},
        "spec": {"selector": {"matchLabels": {"app": "agent"}}, "template": {"metadata": {"labels": {"app": "agent"}}, "spec": {"containers": [{"name": "a", "image": "fluentd:1"}]}}}
    }))
    .expect("ds");
    daemonsets
        .create(&PostParams::default(), &ds)
        .await
        .expect("create ds");
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        let ds = daemonsets.get("agent").await.expect("get");
        if Workload::DaemonSet(Box::new(ds.clone())).is_ready() {
            assert_eq!(ds.status.expect("status").desired_number_scheduled, 2);
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "DaemonSet never became Ready"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test]
async fn injected_faults_and_latency() {
    let server = ApiServer::start().await.expect("server");
    let client = server.client().expect("client");
    let api: Api<ConfigMap> = Api::namespaced(client.clone(), "default");
    // The server answers injected faults as kube-apiserver would (Status JSON, Retry-After)...
    server.fail_next(&[503, 429]);
    shared::tls::ensure_crypto_provider();
    let http = reqwest::Client::new();
    let resp = http
        .get(format!(
            "{}/api/v1/namespaces/default/configmaps",
            server.url()
        ))
        .send()
        .await
        .expect("get");
    assert_eq!(resp.status().as_u16(), 503);
    let body: serde_json::Value = resp.json().await.expect("status json");
    assert_eq!(
        (body["kind"].as_str(), body["reason"].as_str()),
        (Some("Status"), Some("ServiceUnavailable"))
    );
    let resp = http
        .get(format!(
            "{}/api/v1/namespaces/default/configmaps",
            server.url()
        ))
        .send()
        .await
        .expect("get");
    assert_eq!(resp.status().as_u16(), 429);
    assert_eq!(
        resp.headers()
            .get("retry-after")
            .and_then(|v| v.to_str().ok()),
        Some("1")
    );
    // ...and kube-rs's own retry of 429/503 rides them out.
    server.fail_next(&[503, 429]);
    api.list(&ListParams::default())
        .await
        .expect("served after kube-rs retries");
    server.fail_next(&[500]);
    assert_eq!(
        status_code(
            &api.list(&ListParams::default())
                .await
                .expect_err("500 is not retried")
        )
        .0,
        500
    );
    server.set_latency(Duration::from_millis(200));
    let started = std::time::Instant::now();
    api.list(&ListParams::default()).await.expect("slow");
    assert!(started.elapsed() >= Duration::from_millis(200));
}

/// Patches of one object sent at once all land, none lost and none refused: each is applied to
/// the object as read and written only if nothing changed meanwhile, else applied again to the
/// new one (kube-apiserver's GuaranteedUpdate). A write that changes nothing keeps its
/// resourceVersion and sends no watch event, as kube-apiserver skips it.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_patches_all_land_and_a_write_that_changes_nothing_is_skipped() {
    const PATCHES: usize = 24;
    let server = ApiServer::start().await.expect("server");
    let client = server.client().expect("client");
    let api: Api<ConfigMap> = Api::namespaced(client.clone(), "default");
    // Large enough that applying a patch takes a while: the server's workers overlap.
    let big = json!({"metadata": {"name": "shared"}, "data": {"big": "x".repeat(512 * 1024)}});
    api.create(
        &PostParams::default(),
        &serde_json::from_value(big).expect("cm"),
    )
    .await
    .expect("create");
    futures::stream::iter(0..PATCHES)
        .for_each_concurrent(PATCHES, |i| {
            let api = api.clone();
            async move {
                let patch = json!({"metadata": {"labels": {format!("l{i}"): "x"}}, "data": {format!("k{i}"): i.to_string()}});
                api.patch("shared", &PatchParams::default(), &Patch::Merge(&patch))
                    .await
                    .expect("every patch lands");
            }
        })
        .await;
    let cm = api.get("shared").await.expect("get");
    assert_eq!(cm.labels().len(), PATCHES, "labels: {:?}", cm.labels());
    assert_eq!(cm.data.as_ref().map_or(0, |d| d.len()), PATCHES + 1);

    // The same again: nothing changes, so no new resourceVersion and no event.
    let rv = cm.resource_version().expect("rv");
    let params = kube::api::WatchParams::default().timeout(10);
    let mut events = api.watch(&params, &rv).await.expect("watch").boxed();
    let same = json!({"data": {"k0": "0"}});
    let patched = api
        .patch("shared", &PatchParams::default(), &Patch::Merge(&same))
        .await
        .expect("patch");
    assert_eq!(patched.resource_version().as_deref(), Some(rv.as_str()));
    let replaced = api
        .replace("shared", &PostParams::default(), &cm)
        .await
        .expect("replace");
    assert_eq!(replaced.resource_version().as_deref(), Some(rv.as_str()));
    // A real change comes through as the first event after the skipped writes.
    let changed = json!({"data": {"k0": "changed"}});
    let after = api
        .patch("shared", &PatchParams::default(), &Patch::Merge(&changed))
        .await
        .expect("patch");
    assert_ne!(after.resource_version().as_deref(), Some(rv.as_str()));
    let first = loop {
        match tokio::time::timeout(Duration::from_secs(10), events.next())
            .await
            .expect("an event within 10 s")
        {
            Some(Ok(kube::api::WatchEvent::Bookmark(_))) => continue,
            other => break other,
        }
    };
    match first {
        Some(Ok(kube::api::WatchEvent::Modified(cm))) => {
            assert_eq!(cm.resource_version(), after.resource_version());
        }
        other => panic!("expected the change as the first event, got {other:?}"),
    }
}
