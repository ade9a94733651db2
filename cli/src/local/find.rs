//! Finding what local mode runs: the model server, the filter, a free listener port.

use super::LocalError;
use std::path::{Path, PathBuf};

fn exe_dir() -> Option<PathBuf> {
    std::env::current_exe()
        .ok()
        .and_then(|p| p.parent().map(Path::to_owned))
}

fn on_path(name: &str) -> Option<PathBuf> {
    std::env::var_os("PATH").and_then(|paths| {
        std::env::split_paths(&paths)
            .map(|d| d.join(name))
            .find(|p| p.is_file())
    })
}

/// A binary of this project: beside the `mlep` executable, else on `PATH`.
pub(super) fn exe_dir_or_path(name: &str) -> Option<PathBuf> {
    exe_dir()
        .map(|d| d.join(name))
        .filter(|p| p.is_file())
        .or_else(|| on_path(name))
}

/// `mlep-model-server`: `--model-server`, else beside the `mlep` executable, else on `PATH`.
pub fn find_model_server(explicit: Option<&Path>) -> Result<PathBuf, LocalError> {
    if let Some(p) = explicit {
        return if p.is_file() {
            Ok(p.to_owned())
        } else {
            Err(LocalError::Missing {
                what: format!("--model-server {}", p.display()),
                hint: "no such file".into(),
            })
        };
    }
    exe_dir()
        .map(|d| d.join("mlep-model-server"))
        .filter(|p| p.is_file())
        .or_else(|| on_path("mlep-model-server"))
        .ok_or_else(|| LocalError::Missing {
            what: "mlep-model-server".into(),
            hint: "looked beside the mlep executable and on PATH; build it with `cargo build --release -p mlep-model-server` \
                   (or pass --model-server PATH)"
                .into(),
        })
}

/// The filter: `--filter-wasm`, else `$MLEP_FILTER_WASM`, else `mlep_filter.wasm` beside the
/// executable, else the workspace build output `target/wasm32-wasip1/release/mlep_filter.wasm`
/// relative to the executable in `target/<profile>/`.
pub fn find_filter_wasm(explicit: Option<&Path>) -> Result<PathBuf, LocalError> {
    let mut candidates: Vec<PathBuf> = Vec::new();
    if let Some(p) = explicit {
        candidates.push(p.to_owned());
    } else {
        if let Some(p) = std::env::var_os("MLEP_FILTER_WASM") {
            candidates.push(PathBuf::from(p));
        }
        if let Some(d) = exe_dir() {
            candidates.push(d.join("mlep_filter.wasm"));
            candidates.push(d.join("../wasm32-wasip1/release/mlep_filter.wasm"));
            candidates.push(d.join("../../wasm32-wasip1/release/mlep_filter.wasm"));
        }
    }
    candidates.iter().find(|p| p.is_file()).cloned().ok_or_else(|| LocalError::Missing {
        what: "the mlep filter (mlep_filter.wasm)".into(),
        hint: format!(
            "looked at {}; build it with `rustup target add wasm32-wasip1 && cargo build -p mlep-filter --target wasm32-wasip1 --release` \
             (or pass --filter-wasm PATH)",
            candidates.iter().map(|p| p.display().to_string()).collect::<Vec<_>>().join(", ")
        ),
    })
}

/// The filter's native build (`mlep_contract::build`): `--filter-native`, else
/// `$MLEP_FILTER_NATIVE`, else `libmlep_filter_native.so` beside the executable (where
/// `cargo build --release` puts both). `None` when there is none: every config then runs on
/// the Wasm build. A path given explicitly must exist.
pub fn find_filter_native(explicit: Option<&Path>) -> Result<Option<PathBuf>, LocalError> {
    const FILE: &str = "libmlep_filter_native.so";
    if let Some(p) = explicit {
        return match p.is_file() {
            true => Ok(Some(p.to_owned())),
            false => Err(LocalError::Missing {
                what: format!("the filter's native build {}", p.display()),
                hint: "build it with `cargo build -p mlep-filter-native --release`".into(),
            }),
        };
    }
    let env = std::env::var_os("MLEP_FILTER_NATIVE").map(PathBuf::from);
    let beside = exe_dir().map(|d| d.join(FILE));
    Ok(env.into_iter().chain(beside).find(|p| p.is_file()))
}

/// Fail early and clearly when the listener port is taken.
pub fn check_port_free(port: u16) -> Result<(), LocalError> {
    reserve_port(port).map(drop)
}

/// Bind the listener port and keep it bound: while held, the kernel hands it to no other
/// socket (a model server's free port, a connection's ephemeral source port), which it could
/// between a check and Envoy's own bind seconds later (seen in CI: Envoy's listener failed
/// with "Address already in use" after the model servers started). Dropped just before
/// Envoy starts.
pub fn reserve_port(port: u16) -> Result<std::net::TcpListener, LocalError> {
    std::net::TcpListener::bind(("127.0.0.1", port))
        .map_err(|source| LocalError::PortInUse { port, source })
}
