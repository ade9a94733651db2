//! Object storage on the bed (issue 21): a real S3 server in the cluster (Versity's gateway,
//! `scripts/cluster/versitygw`, serving a host directory), models fetched from `s3://` with
//! credentials from a Secret the Model names, and the endpoint's invocations captured through
//! the gateway into `s3://` by the operator's capture sink, checked byte for byte on disk.
//! Wrong credentials and a missing object get an `ArtifactFetchFailed` condition naming the URI.
//! Then a model from `pvc://`: a claim bound to a volume on the node, mounted read-only into
//! the model's init container only.
//!
//! ```text
//! eval "$(scripts/cluster.sh env | sed 's/^/export /')"
//! cargo test -p mlep-cluster-e2e --test object_storage -- --nocapture
//! ```

// Test code: a failed unwrap is a failed test.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{PersistentVolume, PersistentVolumeClaim, Secret, Service};
use kube::api::{Api, PostParams};
use mlep_cluster_e2e::*;
use mlep_contract::capture::CaptureRecord;
use mlep_core::crd::conditions::REASON_ARTIFACT_FETCH_FAILED;
use mlep_core::crd::{Artifact, DataCaptureSpec, Model, ModelEndpoint};
use mlep_tests::load::Target;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

const ACCESS: &str = "mlep-bed";
const SECRET: &str = "mlep-bed-secret-key";

/// The S3 server's data: a host directory (the bed's kubelet runs on this machine), one
/// sub-directory per bucket; removed on drop.
struct HostDir(PathBuf);

impl Drop for HostDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// A cluster-scoped PersistentVolume (namespaces do not hold it): deleted on drop.
struct Volume(String);

impl Drop for Volume {
    fn drop(&mut self) {
        let _ = std::process::Command::new("kubectl")
            .args([
                "delete",
                "pv",
                &self.0,
                "--ignore-not-found",
                "--wait=false",
            ])
            .stdout(std::process::Stdio::null())
            .status();
    }
}

/// Claim `model-store` in `ns`, bound to a new volume over the node's directory `dir` (the
/// bed's kubelet runs on this machine; no provisioner: the volume is made for the claim).
async fn model_store(bed: &Bed, ns: &str, dir: &Path) -> Volume {
    let name = format!("{ns}-model-store");
    let pv: PersistentVolume = serde_yaml::from_str(&format!(
        r#"
metadata: {{name: {name}}}
spec:
  capacity: {{storage: 64Mi}}
  accessModes: [ReadOnlyMany]
  persistentVolumeReclaimPolicy: Retain
  storageClassName: ""
  claimRef: {{namespace: {ns}, name: model-store}}
  hostPath: {{path: {dir}, type: Directory}}
"#,
        dir = dir.display()
    ))
    .unwrap();
    Api::<PersistentVolume>::all(bed.client.clone())
        .create(&PostParams::default(), &pv)
        .await
        .unwrap();
    let guard = Volume(name.clone());
    let pvc: PersistentVolumeClaim = serde_yaml::from_str(&format!(
        r#"
metadata: {{name: model-store}}
spec:
  accessModes: [ReadOnlyMany]
  storageClassName: ""
  volumeName: {name}
  resources: {{requests: {{storage: 64Mi}}}}
"#
    ))
    .unwrap();
    bed.api::<PersistentVolumeClaim>(ns)
        .create(&PostParams::default(), &pvc)
        .await
        .unwrap();
    guard
}

fn versitygw_image() -> String {
    let gomod = std::fs::read_to_string(repo().join("scripts/cluster/versitygw/go.mod")).unwrap();
    let version = gomod
        .lines()
        .find_map(|l| {
            l.trim()
                .strip_prefix("require github.com/versity/versitygw ")
        })
        .unwrap()
        .trim()
        .to_owned();
    format!("docker.io/mlep/versitygw:{version}")
}

/// Versity's gateway as Service `s3` (port 7070) over `dir`, and Secrets `s3-creds` (right)
/// and `s3-wrong` (a wrong secret key) naming it by `AWS_ENDPOINT_URL`.
async fn s3_server(bed: &Bed, ns: &str, dir: &Path) {
    let deploy: Deployment = serde_yaml::from_str(&format!(
        r#"
metadata: {{name: s3}}
spec:
  selector: {{matchLabels: {{app: s3}}}}
  template:
    metadata:
      labels: {{app: s3}}
      annotations: {{sidecar.istio.io/inject: "false"}}
    spec:
      securityContext: {{runAsNonRoot: true, runAsUser: 65532, runAsGroup: 65532}}
      containers:
        - name: versitygw
          image: {image}
          imagePullPolicy: Never
          args: [--access, {ACCESS}, --secret, {SECRET}, --port, ":7070", --quiet, posix, --nometa, /data]
          ports: [{{name: http, containerPort: 7070}}]
          readinessProbe: {{tcpSocket: {{port: http}}, periodSeconds: 2}}
          volumeMounts: [{{name: data, mountPath: /data}}]
      volumes: [{{name: data, hostPath: {{path: {dir}, type: Directory}}}}]
"#,
        image = versitygw_image(),
        dir = dir.display()
    ))
    .unwrap();
    bed.api::<Deployment>(ns)
        .create(&PostParams::default(), &deploy)
        .await
        .unwrap();
    let svc: Service = serde_yaml::from_str(
        "metadata: {name: s3}\nspec:\n  selector: {app: s3}\n  ports: [{name: http, port: 7070, targetPort: http, protocol: TCP}]\n",
    )
    .unwrap();
    bed.api::<Service>(ns)
        .create(&PostParams::default(), &svc)
        .await
        .unwrap();
    for (name, secret) in [("s3-creds", SECRET), ("s3-wrong", "not-the-secret")] {
        let s = Secret {
            metadata: meta(name),
            string_data: Some(BTreeMap::from([
                ("AWS_ACCESS_KEY_ID".to_owned(), ACCESS.to_owned()),
                ("AWS_SECRET_ACCESS_KEY".to_owned(), secret.to_owned()),
                ("AWS_REGION".to_owned(), "us-east-1".to_owned()),
                (
                    "AWS_ENDPOINT_URL".to_owned(),
                    format!("http://s3.{ns}.svc.cluster.local:7070"),
                ),
            ])),
            ..Default::default()
        };
        bed.api::<Secret>(ns)
            .create(&PostParams::default(), &s)
            .await
            .unwrap();
    }
}

fn jsonl_records(root: &Path) -> Vec<(String, CaptureRecord)> {
    let mut out = Vec::new();
    let mut stack = vec![root.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).into_iter().flatten().flatten() {
            let p = e.path();
            if p.is_dir() {
                stack.push(p);
            } else if p.extension().is_some_and(|x| x == "jsonl") {
                let rel = p.strip_prefix(root).unwrap().display().to_string();
                for l in std::fs::read_to_string(&p).unwrap().lines() {
                    out.push((rel.clone(), serde_json::from_str(l).unwrap()));
                }
            }
        }
    }
    out
}

fn key_hash(ns: &str, user: &str) -> String {
    format!(
        "{:016x}",
        mlep_contract::hash::hash_key(&format!("{ns}/titanic"), user)
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn models_come_from_s3_and_invocations_are_captured_to_s3() {
    let bed = Bed::connect().await;
    let ns = TempNs::create(&bed, "s3").await;
    let dir = HostDir(std::env::temp_dir().join(format!("mlep-e2e-s3-{}", std::process::id())));
    for bucket in ["models", "captures"] {
        std::fs::create_dir_all(dir.0.join(bucket)).unwrap();
    }
    // The server runs as 65532: it writes captures into what root created here.
    let _ = std::process::Command::new("chmod")
        .args(["-R", "a+rwX"])
        .arg(&dir.0)
        .status();
    for v in ["titanic-v1.tar.gz", "titanic-v2.tar.gz"] {
        std::fs::copy(
            repo().join("examples/titanic/artifacts").join(v),
            dir.0.join("models").join(v),
        )
        .unwrap();
    }
    s3_server(&bed, &ns.name, &dir.0).await;
    let host = format!("{}.mlep.test", ns.name);
    let t = Titanic {
        ns: ns.name.clone(),
        artifacts: "s3://models".into(),
        gateway: Target::titanic(bed.gateway, &host),
        host,
        bed: bed.clone(),
    };
    t.wait_deployment_ready("s3", Duration::from_secs(120))
        .await;

    // Models from s3://, credentials from the Secret the Model names.
    let models: Api<Model> = bed.api(&ns.name);
    let mut all = t.example_models();
    for m in &mut all {
        if let Some(a) = m.spec.artifact.as_mut() {
            a.credentials_secret = Some("s3-creds".into());
        }
    }
    let v2 = all[1].clone();
    let variant_of = |name: &str, f: &dyn Fn(&mut Artifact)| {
        let mut m = v2.clone();
        m.metadata.name = Some(name.to_owned());
        if let Some(a) = m.spec.artifact.as_mut() {
            f(a);
        }
        m
    };
    all.push(variant_of("titanic-denied", &|a| {
        a.credentials_secret = Some("s3-wrong".into())
    }));
    all.push(variant_of("titanic-missing", &|a| {
        a.uri = "s3://models/absent.tar.gz".into()
    }));
    for m in &all {
        models.create(&PostParams::default(), m).await.unwrap();
    }
    let mut e: ModelEndpoint = serde_yaml::from_str(
        &std::fs::read_to_string(repo().join("manifests/example/endpoint.yaml")).unwrap(),
    )
    .unwrap();
    e.spec.hosts = vec![t.host.clone()];
    e.spec.expose = Some(true);
    e.spec.data_capture = Some(DataCaptureSpec {
        enabled: None,
        sampling_percent: 100.0,
        capture: vec![],
        destination_uri: "s3://captures/bed".into(),
        credentials_secret: Some("s3-creds".into()),
        max_payload_bytes: None,
        content_types: vec![],
    });
    let t0 = Instant::now();
    t.endpoints()
        .create(&PostParams::default(), &e)
        .await
        .unwrap();
    t.wait_ready(Duration::from_secs(300)).await;
    measure(format!(
        "models from s3:// and the capture sink: apply -> Ready {:.1} s",
        t0.elapsed().as_secs_f64()
    ));
    ok("both models fetched from s3:// with the Secret's credentials; endpoint Ready");

    // 30 users through the gateway, each captured once, request and prediction byte for byte.
    eventually(Duration::from_secs(180), "the gateway assigns", || async {
        let o = t.gateway.invoke(&[("x-user-id", "probe")]).await;
        (o.status() == Some(200) && o.variant().is_some()).then_some(())
    })
    .await;
    let request = std::fs::read(repo().join("examples/titanic/request.json")).unwrap();
    let mut sent: BTreeMap<String, (String, String)> = BTreeMap::new();
    for i in 0..30 {
        let user = format!("cap-{i}");
        let o = t.gateway.invoke(&[("x-user-id", &user)]).await;
        assert_eq!(o.status(), Some(200), "{}", o.kind());
        sent.insert(
            key_hash(&ns.name, &user),
            (o.variant().unwrap().to_owned(), o.body().to_owned()),
        );
    }
    let root = dir.0.join("captures/bed");
    // The sink writes a file a minute after its first record (its default rotation).
    let got = eventually(Duration::from_secs(150), "30 captured records", || async {
        let r = jsonl_records(&root);
        let ours: Vec<_> = r
            .into_iter()
            .filter(|(_, r)| {
                r.event_metadata
                    .sticky_key_hash
                    .as_ref()
                    .is_some_and(|h| sent.contains_key(h))
            })
            .collect();
        (ours.len() >= 30).then_some(ours)
    })
    .await;
    assert_eq!(got.len(), 30, "each invocation once");
    for (file, r) in &got {
        let m = &r.event_metadata;
        let (variant, body) = &sent[m.sticky_key_hash.as_ref().unwrap()];
        assert_eq!(&m.variant_name, variant);
        assert!(file.starts_with(&format!("titanic/{variant}/")), "{file}");
        let input = r.capture_data.endpoint_input.as_ref().unwrap();
        assert_eq!(
            input.data.as_deref().unwrap().as_bytes(),
            request.as_slice()
        );
        let output = r.capture_data.endpoint_output.as_ref().unwrap();
        assert_eq!(output.data.as_deref(), Some(body.as_str()));
    }
    ok("30 invocations through the gateway captured to s3:// byte for byte, under <endpoint>/<variant>/<yyyy>/<mm>/<dd>/<hh>/");

    // Wrong credentials, then a missing object: named with the URI, nothing served from them.
    for (model, says) in [
        (
            "titanic-denied",
            "artifact s3://models/titanic-v2.tar.gz refused",
        ),
        (
            "titanic-missing",
            "artifact s3://models/absent.tar.gz not available",
        ),
    ] {
        t.edit(|s| s.variants[1].model = model.to_owned()).await;
        let c = eventually(
            Duration::from_secs(180),
            &format!("{model} named"),
            || async {
                let e = t.endpoint().await;
                condition(&e, "Ready")
                    .filter(|c| {
                        c.reason == REASON_ARTIFACT_FETCH_FAILED && c.message.contains(says)
                    })
                    .cloned()
            },
        )
        .await;
        println!("    Ready/{}: {}", c.reason, c.message);
        let o = t.gateway.invoke(&[("x-mlep-target-variant", "b")]).await;
        assert_eq!(
            (o.status(), o.model()),
            (Some(200), Some("titanic:v2")),
            "b keeps serving its last good model"
        );
    }
    ok("wrong credentials and a missing object: ArtifactFetchFailed naming the URI; the last good model serves");

    // A model from a claim: titanic-v1's artifact on the volume, now variant b's model.
    let _volume = model_store(&bed, &ns.name, &dir.0.join("models")).await;
    let mut from_pvc = all[0].clone();
    from_pvc.metadata.name = Some("titanic-pvc".into());
    if let Some(a) = from_pvc.spec.artifact.as_mut() {
        a.uri = "pvc://model-store/titanic-v1.tar.gz".into();
        a.credentials_secret = None;
    }
    models
        .create(&PostParams::default(), &from_pvc)
        .await
        .unwrap();
    let t0 = Instant::now();
    t.edit(|s| s.variants[1].model = "titanic-pvc".to_owned())
        .await;
    // Ready again, and b answered by the claim's artifact (titanic-v1's model id).
    eventually(
        Duration::from_secs(180),
        "b served from the claim",
        || async {
            let ready = condition(&t.endpoint().await, "Ready").is_some_and(|c| c.status == "True");
            let o = t.gateway.invoke(&[("x-mlep-target-variant", "b")]).await;
            (ready && o.status() == Some(200) && o.model() == Some("titanic:v1")).then_some(())
        },
    )
    .await;
    measure(format!(
        "pvc:// model: edit -> b served from the claim {:.1} s",
        t0.elapsed().as_secs_f64()
    ));
    ok("a model from pvc://: the claim mounted read-only into model-init, b serves its artifact");
}
