//! Upstream endpoints of local mode's Envoy, from files (EDS), so that model servers can be
//! replaced and scaled without restarting Envoy.
//!
//! `envoy::render_bootstrap` renders each variant and shadow cluster as a `STATIC` cluster
//! with one address. [`use_eds`] rewrites those clusters to `type: EDS` with a
//! `path_config_source` per cluster in one watched directory (the mechanism the bootstrap
//! already uses for the filter's ECDS: Envoy re-reads a file when a file is *moved into* the
//! watched directory, so [`write_eds`] writes a temporary file and renames it into place).
//! A model change then writes the cluster's new addresses, waits until Envoy's admin
//! `/clusters` shows them ([`cluster_hosts`]), and only then stops the old servers. This is also
//! how Istio feeds Envoy (EDS), so routing stays equivalent to the cluster's.

use serde_json::{json, Value};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

#[derive(Debug, thiserror::Error)]
pub enum UpstreamError {
    #[error("bootstrap has no static_resources.clusters")]
    NoClusters,
    #[error("{what}: {source}")]
    Io {
        what: String,
        source: std::io::Error,
    },
}

/// The EDS file of a cluster inside `dir`. Cluster names contain `|`, so files are named by a
/// sanitized form.
pub fn eds_path(dir: &Path, cluster: &str) -> PathBuf {
    // The same character rule as metric label values: `[A-Za-z0-9_-]`, anything else `_`.
    let safe = mlep_contract::metrics::sanitize_label_value(cluster);
    dir.join(format!("eds-{safe}.json"))
}

/// Rewrite every `STATIC` cluster of `bootstrap` to EDS from `eds_path(dir, name)`. Returns the
/// clusters rewritten with the addresses they had (write them with [`write_eds`] before Envoy
/// starts: an EDS cluster waits for its first assignment).
pub fn use_eds(
    bootstrap: &mut Value,
    dir: &Path,
) -> Result<Vec<(String, Vec<SocketAddr>)>, UpstreamError> {
    let clusters = bootstrap
        .pointer_mut("/static_resources/clusters")
        .and_then(Value::as_array_mut)
        .ok_or(UpstreamError::NoClusters)?;
    let mut out = Vec::new();
    for c in clusters.iter_mut() {
        if c["type"] != "STATIC" {
            continue;
        }
        let name = c["name"].as_str().unwrap_or_default().to_owned();
        let addrs = addresses(&c["load_assignment"]);
        let Some(obj) = c.as_object_mut() else {
            continue;
        };
        obj.remove("load_assignment");
        obj.insert("type".into(), json!("EDS"));
        obj.insert("eds_cluster_config".into(), eds_config(dir, &name));
        out.push((name, addrs));
    }
    Ok(out)
}

/// The EDS `eds_cluster_config` of a cluster whose file is `eds_path(dir, name)`.
fn eds_config(dir: &Path, name: &str) -> Value {
    json!({
        "eds_config": {
            "path_config_source": {"path": eds_path(dir, name), "watched_directory": {"path": dir}},
            "resource_api_version": "V3"
        }
    })
}

/// Add an EDS cluster (e.g. an endpoint's shadow cluster before it has a shadow, so that one can
/// be added later without restarting Envoy). Write its file with [`write_eds`] (possibly empty).
pub fn add_eds_cluster(bootstrap: &mut Value, name: &str, dir: &Path) -> Result<(), UpstreamError> {
    let clusters = bootstrap
        .pointer_mut("/static_resources/clusters")
        .and_then(Value::as_array_mut)
        .ok_or(UpstreamError::NoClusters)?;
    clusters.push(json!({
        "name": name,
        "type": "EDS",
        "connect_timeout": "1s",
        "eds_cluster_config": eds_config(dir, name)
    }));
    Ok(())
}

/// How often Envoy asks each model server `GET /ping` (also while a cluster has no traffic).
pub const HEALTH_CHECK_INTERVAL: &str = "1s";

/// Make Envoy route around a model server that is down, as the kubelet's readiness probe and
/// Istio's default retries do in a cluster:
/// - every EDS cluster health-checks its hosts with `GET /ping` every second (one failure
///   marks a host unhealthy, one success healthy again; `no_traffic_interval` too, else a
///   quiet variant would be checked only once a minute). Hosts that fail are skipped while
///   a healthy one remains (below Envoy's default 50% panic threshold every host is tried, so
///   a variant with a single replica keeps being tried while it restarts).
///   `ignore_health_on_host_removal`: a host removed from the EDS file leaves at once, even
///   while healthy (by default Envoy keeps it until it fails a check, and a model swap waits
///   for the old host to leave before stopping it);
/// - every virtual host that routes retries a request that could not connect or was reset
///   (a replica killed mid-request) on another host (`previous_hosts`), twice at most.
///
/// Verified with Envoy 1.40 by `cli/tests/supervision.rs` (no request fails while one of two
/// replicas is killed).
pub fn route_around_failed_hosts(bootstrap: &mut Value) -> Result<(), UpstreamError> {
    let clusters = bootstrap
        .pointer_mut("/static_resources/clusters")
        .and_then(Value::as_array_mut)
        .ok_or(UpstreamError::NoClusters)?;
    for c in clusters.iter_mut().filter(|c| c["type"] == "EDS") {
        let Some(obj) = c.as_object_mut() else {
            continue;
        };
        obj.insert(
            "health_checks".into(),
            json!([{
                "timeout": "1s",
                "interval": HEALTH_CHECK_INTERVAL,
                "no_traffic_interval": HEALTH_CHECK_INTERVAL,
                "unhealthy_interval": HEALTH_CHECK_INTERVAL,
                "unhealthy_threshold": 1,
                "healthy_threshold": 1,
                "http_health_check": {"path": "/ping"}
            }]),
        );
        obj.insert("ignore_health_on_host_removal".into(), json!(true));
    }
    let retry = json!({
        "retry_on": "connect-failure,refused-stream,reset",
        "num_retries": 2,
        "retry_host_predicate": [{
            "name": "envoy.retry_host_predicates.previous_hosts",
            "typed_config": {"@type": "type.googleapis.com/envoy.extensions.retry.host.previous_hosts.v3.PreviousHostsPredicate"}
        }],
        "host_selection_retry_max_attempts": 3
    });
    for listener in bootstrap
        .pointer_mut("/static_resources/listeners")
        .and_then(Value::as_array_mut)
        .into_iter()
        .flatten()
    {
        for chain in listener["filter_chains"]
            .as_array_mut()
            .into_iter()
            .flatten()
        {
            for filter in chain["filters"].as_array_mut().into_iter().flatten() {
                let vhosts = filter
                    .pointer_mut("/typed_config/route_config/virtual_hosts")
                    .and_then(Value::as_array_mut);
                for vh in vhosts.into_iter().flatten() {
                    let routes = vh["routes"].as_array();
                    if routes.is_some_and(|rs| rs.iter().any(|r| r.get("route").is_some())) {
                        vh["retry_policy"] = retry.clone();
                    }
                }
            }
        }
    }
    Ok(())
}

fn addresses(load_assignment: &Value) -> Vec<SocketAddr> {
    let mut out = Vec::new();
    for locality in load_assignment["endpoints"]
        .as_array()
        .into_iter()
        .flatten()
    {
        for lb in locality["lb_endpoints"].as_array().into_iter().flatten() {
            let sa = &lb["endpoint"]["address"]["socket_address"];
            if let (Some(ip), Some(port)) = (sa["address"].as_str(), sa["port_value"].as_u64()) {
                if let Ok(a) = format!("{ip}:{port}").parse() {
                    out.push(a);
                }
            }
        }
    }
    out
}

/// The EDS `DiscoveryResponse` of one cluster.
pub fn eds_response(cluster: &str, addrs: &[SocketAddr], version: &str) -> Value {
    let lb: Vec<Value> = addrs
        .iter()
        .map(|a| json!({"endpoint": {"address": {"socket_address": {"address": a.ip().to_string(), "port_value": a.port()}}}}))
        .collect();
    json!({
        "version_info": version,
        "resources": [{
            "@type": "type.googleapis.com/envoy.config.endpoint.v3.ClusterLoadAssignment",
            "cluster_name": cluster,
            "endpoints": [{"lb_endpoints": lb}]
        }]
    })
}

/// Atomically replace a cluster's EDS file (temporary file + rename into the watched directory).
pub fn write_eds(
    dir: &Path,
    cluster: &str,
    addrs: &[SocketAddr],
    version: &str,
) -> Result<(), UpstreamError> {
    let path = eds_path(dir, cluster);
    let tmp = dir.join(format!(
        ".{}.tmp",
        path.file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default()
    ));
    let io = |what: String| move |source| UpstreamError::Io { what, source };
    std::fs::create_dir_all(dir).map_err(io(format!("create {}", dir.display())))?;
    std::fs::write(&tmp, eds_response(cluster, addrs, version).to_string())
        .map_err(io(format!("write {}", tmp.display())))?;
    std::fs::rename(&tmp, &path).map_err(io(format!("rename to {}", path.display())))
}

/// The hosts Envoy's admin `/clusters` (text format) lists for `cluster`.
pub fn cluster_hosts(admin_clusters: &str, cluster: &str) -> Vec<SocketAddr> {
    let prefix = format!("{cluster}::");
    let mut out: Vec<SocketAddr> = admin_clusters
        .lines()
        .filter_map(|l| l.strip_prefix(&prefix))
        .filter_map(|rest| rest.split("::").next())
        .filter_map(|a| a.parse().ok())
        .collect();
    out.sort();
    out.dedup();
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn bootstrap() -> Value {
        json!({"static_resources": {"clusters": [
            {"name": "mlep|titanic|a", "type": "STATIC", "connect_timeout": "1s",
             "load_assignment": {"cluster_name": "mlep|titanic|a", "endpoints": [{"lb_endpoints": [
                {"endpoint": {"address": {"socket_address": {"address": "127.0.0.1", "port_value": 8001}}}}]}]}},
            {"name": "other", "type": "STRICT_DNS"}
        ]}})
    }

    #[test]
    fn static_clusters_become_eds_from_files_in_the_watched_directory() {
        let mut b = bootstrap();
        let dir = Path::new("/run/mlep/eds");
        let rewritten = use_eds(&mut b, dir).unwrap();
        assert_eq!(
            rewritten,
            vec![(
                "mlep|titanic|a".to_owned(),
                vec!["127.0.0.1:8001".parse().unwrap()]
            )]
        );
        let c = &b["static_resources"]["clusters"][0];
        assert_eq!(c["type"], "EDS");
        assert!(c.get("load_assignment").is_none());
        let src = &c["eds_cluster_config"]["eds_config"]["path_config_source"];
        assert_eq!(src["path"], "/run/mlep/eds/eds-mlep_titanic_a.json");
        assert_eq!(src["watched_directory"]["path"], "/run/mlep/eds");
        assert_eq!(b["static_resources"]["clusters"][1]["type"], "STRICT_DNS");
    }

    #[test]
    fn eds_clusters_are_health_checked_on_ping_and_routes_retry_on_another_host() {
        let mut b = bootstrap();
        b["static_resources"]["listeners"] = json!([{"filter_chains": [{"filters": [{"typed_config": {"route_config": {"virtual_hosts": [
            {"name": "titanic", "routes": [{"match": {"prefix": "/"}, "route": {"cluster": "mlep|titanic|a"}}]},
            {"name": "no-endpoint", "routes": [{"match": {"prefix": "/"}, "direct_response": {"status": 404}}]}
        ]}}}]}]}]);
        use_eds(&mut b, Path::new("/eds")).unwrap();
        route_around_failed_hosts(&mut b).unwrap();
        let c = &b["static_resources"]["clusters"][0];
        assert_eq!(c["health_checks"][0]["http_health_check"]["path"], "/ping");
        assert_eq!(c["health_checks"][0]["no_traffic_interval"], "1s");
        assert_eq!(c["ignore_health_on_host_removal"], true);
        assert!(
            b["static_resources"]["clusters"][1]
                .get("health_checks")
                .is_none(),
            "only EDS clusters"
        );
        let vhosts = &b["static_resources"]["listeners"][0]["filter_chains"][0]["filters"][0]
            ["typed_config"]["route_config"]["virtual_hosts"];
        assert_eq!(
            vhosts[0]["retry_policy"]["retry_on"],
            "connect-failure,refused-stream,reset"
        );
        assert!(
            vhosts[1].get("retry_policy").is_none(),
            "a 404 needs no retries"
        );
    }

    #[test]
    fn eds_responses_list_every_replica() {
        let addrs: Vec<SocketAddr> = vec![
            "127.0.0.1:1".parse().unwrap(),
            "127.0.0.1:2".parse().unwrap(),
        ];
        let v = eds_response("c", &addrs, "3");
        let r = &v["resources"][0];
        assert_eq!(r["cluster_name"], "c");
        assert_eq!(
            r["endpoints"][0]["lb_endpoints"][1]["endpoint"]["address"]["socket_address"]
                ["port_value"],
            2
        );
        assert_eq!(v["version_info"], "3");
    }

    #[test]
    fn admin_cluster_output_is_parsed_per_cluster() {
        let text = "mlep|titanic|a::observability_name::mlep|titanic|a\n\
                    mlep|titanic|a::127.0.0.1:8001::cx_active::0\n\
                    mlep|titanic|a::127.0.0.1:8001::rq_total::3\n\
                    mlep|titanic|a::127.0.0.1:8003::cx_active::0\n\
                    mlep|titanic|b::127.0.0.1:8002::cx_active::0\n";
        let a: Vec<SocketAddr> = vec![
            "127.0.0.1:8001".parse().unwrap(),
            "127.0.0.1:8003".parse().unwrap(),
        ];
        assert_eq!(cluster_hosts(text, "mlep|titanic|a"), a);
        assert_eq!(
            cluster_hosts(text, "mlep|titanic|c"),
            Vec::<SocketAddr>::new()
        );
    }
}
