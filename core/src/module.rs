//! Where proxies fetch the filter module: one contract for the operator (which serves it), the
//! renderer (which writes the URL and sha256 into every filter object) and `mlep render`.
//!
//! The URL is versioned by the module's sha256: `/mlep_filter/<sha256>.wasm`. A server only
//! answers the path of the module it holds (404 otherwise), so during a rolling update of the
//! operator (two replicas, old and new module behind one Service) a proxy asking for the new
//! module never receives the old bytes under the new checksum: it gets a 404 from an old
//! replica, which Istio's agent retries (pkg/wasm/httpfetcher.go: up to 5 attempts with
//! exponential backoff within the `http_uri` timeout), and the bytes it does get always
//! match the sha256 it verifies.

/// Path prefix of the module on the operator's HTTP server.
pub const MODULE_PATH_PREFIX: &str = "/mlep_filter/";
/// Name of the operator's Service and its namespace in `manifests/`.
pub const OPERATOR_SERVICE: &str = "mlep-operator";
pub const OPERATOR_NAMESPACE: &str = "mlep-system";
/// The operator's admin port: `/healthz`, `/metrics` (`MLEP_HTTP_ADDR` default).
pub const OPERATOR_HTTP_PORT: u16 = 8080;
/// The operator's module port, serving nothing but the module (`MLEP_MODULE_ADDR` default, the
/// Service's `module` port in `manifests/`).
pub const MODULE_PORT: u16 = 8081;

/// `/mlep_filter/<sha256>.wasm`.
pub fn module_path(sha256: &str) -> String {
    format!("{MODULE_PATH_PREFIX}{sha256}.wasm")
}

/// The sha256 a request path asks for, when it is a module path.
pub fn requested_sha256(path: &str) -> Option<&str> {
    path.strip_prefix(MODULE_PATH_PREFIX)?.strip_suffix(".wasm")
}

/// The in-cluster base URL of the operator's Service.
pub fn operator_base_url(namespace: &str, cluster_domain: &str, port: u16) -> String {
    format!("http://{OPERATOR_SERVICE}.{namespace}.svc.{cluster_domain}:{port}")
}

/// The module's URL under a base URL (no trailing slash).
pub fn module_url(base: &str, sha256: &str) -> String {
    format!("{}{}", base.trim_end_matches('/'), module_path(sha256))
}

/// Whether a string is a lowercase hex sha256 (what Istio's agent compares against).
pub fn is_sha256_hex(s: &str) -> bool {
    s.len() == 64
        && s.bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_module_url_carries_its_sha256_and_the_operators_module_port() {
        let sha = "ab".repeat(32);
        let url = module_url(
            &operator_base_url(OPERATOR_NAMESPACE, "cluster.local", MODULE_PORT),
            &sha,
        );
        assert_eq!(
            url,
            format!(
                "http://mlep-operator.mlep-system.svc.cluster.local:8081/mlep_filter/{sha}.wasm"
            )
        );
        assert_eq!(requested_sha256(&module_path(&sha)), Some(sha.as_str()));
        assert_eq!(requested_sha256("/mlep_filter.wasm"), None);
    }

    #[test]
    fn only_lowercase_hex_of_64_digits_is_a_sha256() {
        assert!(is_sha256_hex(&"0a".repeat(32)));
        assert!(!is_sha256_hex(&"0A".repeat(32)));
        assert!(!is_sha256_hex(&"0a".repeat(31)));
    }
}
