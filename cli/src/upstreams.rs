//! Upstream endpoints of local mode's Envoy, from files (EDS), so that model servers can be
//! replaced and scaled without restarting Envoy.
//!
//! `envoy::render_bootstrap_with(.., Upstreams::Eds)` renders each variant, rollout and shadow
//! cluster as [`eds_cluster`]: `type: EDS` with a `path_config_source` per cluster in one
//! watched directory (the mechanism the bootstrap already uses for the filter's ECDS: Envoy
//! re-reads a file when a file is *moved into* the watched directory, so [`write_eds`] writes
//! a temporary file and renames it into place).
//! A model change then writes the cluster's new addresses, waits until Envoy's admin
//! `/clusters` shows them ([`cluster_hosts`]), and only then stops the old servers. This is also
//! how Istio feeds Envoy (EDS), so routing stays equivalent to the cluster's.

use serde_json::{json, Value};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

#[derive(Debug, thiserror::Error)]
pub enum UpstreamError {
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

/// The EDS `eds_cluster_config` of a cluster whose file is `eds_path(dir, name)`.
fn eds_config(dir: &Path, name: &str) -> Value {
    json!({
        "eds_config": {
            "path_config_source": {"path": eds_path(dir, name), "watched_directory": {"path": dir}},
            "resource_api_version": "V3"
        }
    })
}

/// How often Envoy asks each model server `GET /ping` (also while a cluster has no traffic).
pub const HEALTH_CHECK_INTERVAL: &str = "1s";

/// The cluster `name` from its EDS file in `dir`, routed around a model server that is down, as
/// the kubelet's readiness probe and Istio's default retries do in a cluster:
/// - every EDS cluster health-checks its hosts with `GET /ping` every second (one failure
///   marks a host unhealthy, one success healthy again; `no_traffic_interval` too, else a
///   quiet variant would be checked only once a minute). Hosts that fail are skipped while
///   a healthy one remains (below Envoy's default 50% panic threshold every host is tried, so
///   a variant with a single replica keeps being tried while it restarts).
///   `ignore_health_on_host_removal`: a host removed from the EDS file leaves at once, even
///   while healthy (by default Envoy keeps it until it fails a check, and a model swap waits
///   for the old host to leave before stopping it);
/// - every virtual host that routes retries ([`retry_policy`]) a request that could not connect or was reset
///   (a replica killed mid-request) on another host (`previous_hosts`), twice at most.
///
/// Verified with Envoy 1.40 by `cli/tests/supervision.rs` (no request fails while one of two
/// replicas is killed).
pub fn eds_cluster(name: &str, dir: &Path) -> Value {
    json!({
        "name": name,
        "type": "EDS",
        "connect_timeout": "1s",
        "eds_cluster_config": eds_config(dir, name),
        "health_checks": [{
            "timeout": "1s",
            "interval": HEALTH_CHECK_INTERVAL,
            "no_traffic_interval": HEALTH_CHECK_INTERVAL,
            "unhealthy_interval": HEALTH_CHECK_INTERVAL,
            "unhealthy_threshold": 1,
            "healthy_threshold": 1,
            "http_health_check": {"path": "/ping"}
        }],
        "ignore_health_on_host_removal": true
    })
}

/// The retry policy of every virtual host that routes (see [`eds_cluster`]).
pub fn retry_policy() -> Value {
    json!({
        "retry_on": "connect-failure,refused-stream,reset",
        "num_retries": 2,
        "retry_host_predicate": [{
            "name": "envoy.retry_host_predicates.previous_hosts",
            "typed_config": {"@type": "type.googleapis.com/envoy.extensions.retry.host.previous_hosts.v3.PreviousHostsPredicate"}
        }],
        "host_selection_retry_max_attempts": 3
    })
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

    #[test]
    fn eds_clusters_read_their_file_in_the_watched_directory_and_are_health_checked_on_ping() {
        let c = eds_cluster("mlep|titanic|a", Path::new("/run/mlep/eds"));
        assert_eq!(
            (c["name"].as_str(), c["type"].as_str()),
            (Some("mlep|titanic|a"), Some("EDS"))
        );
        let src = &c["eds_cluster_config"]["eds_config"]["path_config_source"];
        assert_eq!(src["path"], "/run/mlep/eds/eds-mlep_titanic_a.json");
        assert_eq!(src["watched_directory"]["path"], "/run/mlep/eds");
        assert_eq!(c["health_checks"][0]["http_health_check"]["path"], "/ping");
        assert_eq!(c["health_checks"][0]["no_traffic_interval"], "1s");
        assert_eq!(c["ignore_health_on_host_removal"], true);
        assert_eq!(
            retry_policy()["retry_on"],
            "connect-failure,refused-stream,reset"
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
