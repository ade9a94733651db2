//! `mlep-operator`: runs the operator (no arguments), or `mlep-operator crd [DIR]` writes the
//! CRDs (default `manifests/crds`). Logs: `RUST_LOG` sets the level, `MLEP_LOG_FORMAT=json`
//! switches to JSON lines.

use mlep_operator::app;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if args.first().map(String::as_str) == Some("crd") {
        for path in app::write_crds(args.get(1).map(String::as_str).unwrap_or("manifests/crds"))? {
            println!("wrote {path}");
        }
        return Ok(());
    }
    if let Some(a) = args.first() {
        anyhow::bail!("unknown argument {a:?}; usage: mlep-operator [crd [DIR]]");
    }
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info,kube=warn"));
    let fmt = tracing_subscriber::fmt().with_env_filter(filter);
    if std::env::var("MLEP_LOG_FORMAT").is_ok_and(|v| v == "json") {
        fmt.json().init();
    } else {
        fmt.init();
    }
    app::run(app::Config::from_env()?).await?;
    Ok(())
}
