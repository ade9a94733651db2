//! Reading `Model` and `ModelEndpoint` YAML: the same files `kubectl apply -f` takes (a file
//! or a directory of `*.yaml`/`*.yml`, multi-document), into the operator's typed resources.
//!
//! Errors say where: YAML and type errors carry the file and line from `serde_yaml`'s error
//! location (shifted by the document's start line, since each document is parsed on its own);
//! validation errors (from the operator's `validate_endpoint`/`validate_model`, which name the
//! field path) are mapped back to the line of that field in the file by [`locate`].

use mlep_core::crd::{ModelEndpointSpec, ModelSpec, GROUP, VERSION};
use mlep_core::host_claims::Claimant;
use mlep_core::validate::{validate_endpoint, validate_hosts, validate_model, SpecError};
use serde::Deserialize;
use std::collections::BTreeMap;
use std::fmt;
use std::path::{Path, PathBuf};

/// Where a resource (or a problem) is: file and 1-based line.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Location {
    pub file: PathBuf,
    pub line: usize,
}

impl fmt::Display for Location {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}", self.file.display(), self.line)
    }
}

#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{0}: no *.yaml or *.yml files here")]
    NoFiles(PathBuf),
    #[error("{at}: invalid YAML: {message}")]
    Yaml { at: Location, message: String },
    #[error("{at}: {kind} {name:?}: {message}")]
    Type {
        at: Location,
        kind: String,
        name: String,
        message: String,
    },
    #[error("{at}: unknown kind {kind:?} in {api_version} (expected Model or ModelEndpoint)")]
    UnknownKind {
        at: Location,
        api_version: String,
        kind: String,
    },
    #[error("{at}: {kind} has no metadata.name")]
    NoName { at: Location, kind: String },
    #[error("{0}")]
    Duplicate(Box<Duplicate>),
    #[error("{0}")]
    Invalid(Box<Invalid>),
    #[error("no ModelEndpoint in {0}")]
    NoEndpoints(String),
}

/// A resource defined twice.
#[derive(Debug, thiserror::Error)]
#[error("{at}: {kind} {namespace}/{name} is defined twice (first at {first})")]
pub struct Duplicate {
    pub at: Location,
    pub first: Location,
    pub kind: String,
    pub namespace: String,
    pub name: String,
}

/// A resource that fails validation: where, which resource, which field, what is wrong.
#[derive(Debug, thiserror::Error)]
#[error("{at}: {kind} {namespace}/{name}: {field}: {message}")]
pub struct Invalid {
    pub at: Location,
    pub kind: String,
    pub namespace: String,
    pub name: String,
    pub field: String,
    pub message: String,
}

/// A resource with where it came from.
#[derive(Clone, Debug, PartialEq)]
pub struct Loaded<S> {
    pub name: String,
    pub namespace: String,
    pub annotations: BTreeMap<String, String>,
    pub spec: S,
    /// Where the document starts (its first line).
    pub at: Location,
    /// The document's own text, to locate fields in errors.
    pub text: String,
}

pub type LoadedModel = Loaded<ModelSpec>;
pub type LoadedEndpoint = Loaded<ModelEndpointSpec>;

/// Everything read from the input.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Input {
    pub models: Vec<LoadedModel>,
    pub endpoints: Vec<LoadedEndpoint>,
    /// The files read, in order.
    pub files: Vec<PathBuf>,
    /// Documents skipped because they are not `mlep.dev` resources (e.g. a Namespace).
    pub skipped: Vec<(Location, String)>,
}

impl Input {
    pub fn model(&self, namespace: &str, name: &str) -> Option<&LoadedModel> {
        self.models
            .iter()
            .find(|m| m.namespace == namespace && m.name == name)
    }
}

/// The YAML files an input path stands for: the file itself, or a directory's `*.yaml` and
/// `*.yml` files (not recursive), sorted by name.
pub fn input_files(path: &Path) -> Result<Vec<PathBuf>, LoadError> {
    let io = |source| LoadError::Io {
        path: path.to_owned(),
        source,
    };
    let meta = std::fs::metadata(path).map_err(io)?;
    if !meta.is_dir() {
        return Ok(vec![path.to_owned()]);
    }
    let mut files = Vec::new();
    for entry in std::fs::read_dir(path).map_err(io)? {
        let p = entry.map_err(io)?.path();
        let yaml = matches!(p.extension().and_then(|e| e.to_str()), Some("yaml" | "yml"));
        if yaml && p.is_file() {
            files.push(p);
        }
    }
    files.sort();
    if files.is_empty() {
        return Err(LoadError::NoFiles(path.to_owned()));
    }
    Ok(files)
}

/// Read and validate the input at `path` (file or directory).
pub fn load(path: &Path) -> Result<Input, LoadError> {
    let mut input = Input::default();
    for file in input_files(path)? {
        let text = std::fs::read_to_string(&file).map_err(|source| LoadError::Io {
            path: file.clone(),
            source,
        })?;
        parse_into(&mut input, &file, &text)?;
        input.files.push(file);
    }
    validate(&input)?;
    if input.endpoints.is_empty() {
        return Err(LoadError::NoEndpoints(path.display().to_string()));
    }
    Ok(input)
}

/// Split a YAML stream into documents: `(first line, text)`. A document starts after a line
/// that is `---` (optionally followed by a space and more); empty documents are dropped.
pub fn split_documents(text: &str) -> Vec<(usize, String)> {
    let mut docs = Vec::new();
    let mut cur = String::new();
    let mut start = 1;
    for (i, line) in text.lines().enumerate() {
        let is_sep = line == "---" || line.starts_with("--- ") || line.starts_with("---\t");
        if is_sep || line == "..." {
            push_doc(&mut docs, start, std::mem::take(&mut cur));
            start = i + 2;
            continue;
        }
        cur.push_str(line);
        cur.push('\n');
    }
    push_doc(&mut docs, start, cur);
    docs
}

fn push_doc(docs: &mut Vec<(usize, String)>, start: usize, text: String) {
    let has_content = text.lines().any(|l| {
        let t = l.trim();
        !t.is_empty() && !t.starts_with('#')
    });
    if has_content {
        docs.push((start, text));
    }
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct Head {
    #[serde(default)]
    api_version: String,
    #[serde(default)]
    kind: String,
    #[serde(default)]
    metadata: Meta,
}

#[derive(Deserialize, Default)]
struct Meta {
    #[serde(default)]
    name: Option<String>,
    #[serde(default)]
    namespace: Option<String>,
    #[serde(default)]
    annotations: BTreeMap<String, String>,
}

#[derive(Deserialize)]
struct Doc<S> {
    spec: S,
}

fn yaml_at(file: &Path, first_line: usize, e: &serde_yaml::Error) -> Location {
    let line = e.location().map(|l| l.line()).unwrap_or(1);
    Location {
        file: file.to_owned(),
        line: first_line + line - 1,
    }
}

/// Parse one file's text into `input` (pure: no I/O; `file` only labels errors).
pub fn parse_into(input: &mut Input, file: &Path, text: &str) -> Result<(), LoadError> {
    for (first, doc) in split_documents(text) {
        let head: Head = serde_yaml::from_str(&doc).map_err(|e| LoadError::Yaml {
            at: yaml_at(file, first, &e),
            message: strip_location(&e.to_string()),
        })?;
        let at = Location {
            file: file.to_owned(),
            line: first,
        };
        let group = head
            .api_version
            .split_once('/')
            .map(|(g, _)| g)
            .unwrap_or("");
        if group != GROUP {
            input
                .skipped
                .push((at, format!("{} {}", head.api_version, head.kind)));
            continue;
        }
        let Some(name) = head.metadata.name.clone() else {
            return Err(LoadError::NoName {
                at,
                kind: head.kind,
            });
        };
        let namespace = head
            .metadata
            .namespace
            .clone()
            .unwrap_or_else(|| "default".to_owned());
        let (kind, type_name) = (head.kind.clone(), name.clone());
        let type_err = move |e: serde_yaml::Error| LoadError::Type {
            at: yaml_at(file, first, &e),
            kind,
            name: type_name,
            message: strip_location(&e.to_string()),
        };
        let annotations = head.metadata.annotations;
        let doc_info = DocInfo {
            name,
            namespace,
            annotations,
            at,
            text: doc,
        };
        match head.kind.as_str() {
            "Model" => push_resource(&mut input.models, "Model", doc_info, type_err)?,
            "ModelEndpoint" => {
                push_resource(&mut input.endpoints, "ModelEndpoint", doc_info, type_err)?
            }
            _ => {
                return Err(LoadError::UnknownKind {
                    at: doc_info.at,
                    api_version: head.api_version.clone(),
                    kind: head.kind,
                })
            }
        }
        let _ = VERSION;
    }
    Ok(())
}

/// One `mlep.dev` document's identity and text, before its spec is typed.
struct DocInfo {
    name: String,
    namespace: String,
    annotations: BTreeMap<String, String>,
    at: Location,
    text: String,
}

/// Type the document's spec as `S` and append it to `list`, refusing a second resource of the
/// same kind, namespace and name.
fn push_resource<S: serde::de::DeserializeOwned>(
    list: &mut Vec<Loaded<S>>,
    kind: &str,
    d: DocInfo,
    type_err: impl FnOnce(serde_yaml::Error) -> LoadError,
) -> Result<(), LoadError> {
    let typed: Doc<S> = serde_yaml::from_str(&d.text).map_err(type_err)?;
    if let Some(first) = list
        .iter()
        .find(|l| l.namespace == d.namespace && l.name == d.name)
    {
        return Err(dup(d.at, first.at.clone(), kind, &d.namespace, &d.name));
    }
    list.push(Loaded {
        name: d.name,
        namespace: d.namespace,
        annotations: d.annotations,
        spec: typed.spec,
        at: d.at,
        text: d.text,
    });
    Ok(())
}

fn dup(at: Location, first: Location, kind: &str, namespace: &str, name: &str) -> LoadError {
    LoadError::Duplicate(Box::new(Duplicate {
        at,
        first,
        kind: kind.into(),
        namespace: namespace.into(),
        name: name.into(),
    }))
}

/// serde_yaml appends " at line X column Y"; we print our own (file-relative) location.
/// It may also be followed by more context (`, while parsing a flow sequence`).
fn strip_location(msg: &str) -> String {
    let Some(i) = msg.find(" at line ") else {
        return msg.to_owned();
    };
    let rest = &msg[i + " at line ".len()..];
    let rest = rest.trim_start_matches(|c: char| c.is_ascii_digit());
    let rest = rest
        .strip_prefix(" column ")
        .map(|r| r.trim_start_matches(|c: char| c.is_ascii_digit()))
        .unwrap_or(rest);
    format!("{}{rest}", &msg[..i])
}

/// Validate every resource with the operator's own checks; the error names the file, the
/// line of the offending field, the resource and the field path.
pub fn validate(input: &Input) -> Result<(), LoadError> {
    for m in &input.models {
        validate_model(&m.spec).map_err(|e| invalid(m, "Model", &e))?;
    }
    for ep in &input.endpoints {
        validate_endpoint(&ep.spec, |name| {
            input.model(&ep.namespace, name).map(|m| &m.spec)
        })
        .map_err(|e| invalid(ep, "ModelEndpoint", &e))?;
        // The cluster's rules, so a file that runs here is accepted by the operator too.
        let who = Claimant {
            namespace: &ep.namespace,
            name: &ep.name,
            cluster_domain: mlep_core::meta::DEFAULT_CLUSTER_DOMAIN,
        };
        validate_hosts(&ep.spec, &who).map_err(|e| invalid(ep, "ModelEndpoint", &e))?;
    }
    Ok(())
}

fn invalid<S>(r: &Loaded<S>, kind: &str, e: &SpecError) -> LoadError {
    let line = locate(&r.text, &e.field)
        .map(|l| r.at.line + l - 1)
        .unwrap_or(r.at.line);
    LoadError::Invalid(Box::new(Invalid {
        at: Location {
            file: r.at.file.clone(),
            line,
        },
        kind: kind.into(),
        namespace: r.namespace.clone(),
        name: r.name.clone(),
        field: e.field.clone(),
        message: e.message.clone(),
    }))
}

/// The 1-based line of a field path such as `spec.variants[1].weight` in a block-style YAML
/// document, or of its deepest ancestor found. Approximate by design (block style, as people
/// write Kubernetes YAML); `None` only when not even the first key is found.
pub fn locate(doc: &str, path: &str) -> Option<usize> {
    let lines: Vec<&str> = doc.lines().collect();
    let indent = |l: &str| l.len() - l.trim_start().len();
    let meaningful = |l: &str| {
        let t = l.trim();
        !t.is_empty() && !t.starts_with('#')
    };
    // Current search window [lo, hi) and the indentation of its parent.
    let (mut lo, mut hi) = (0usize, lines.len());
    let mut parent_indent: Option<usize> = None;
    let mut found: Option<usize> = None;
    for seg in path_segments(path) {
        let within = |i: usize| {
            let l = lines[i];
            meaningful(l)
                && parent_indent.is_none_or(|p| {
                    indent(l) > p || (l.trim_start().starts_with("- ") && indent(l) >= p)
                })
        };
        let hit = match &seg {
            Seg::Key(k) => (lo..hi).find(|&i| {
                let t = lines[i].trim_start().trim_start_matches("- ");
                within(i)
                    && (t.starts_with(&format!("{k}:")) || t.starts_with(&format!("\"{k}\":")))
            }),
            Seg::Index(n) => {
                let items: Vec<usize> = (lo..hi)
                    .filter(|&i| within(i) && lines[i].trim_start().starts_with('-'))
                    .collect();
                // Only items at the list's own indentation (the first item's).
                let list_indent = items.first().map(|&i| indent(lines[i]));
                items
                    .into_iter()
                    .filter(|&i| Some(indent(lines[i])) == list_indent)
                    .nth(*n)
            }
        };
        let Some(i) = hit else { break };
        found = Some(i + 1);
        let ind = indent(lines[i]);
        // The child's block ends at the next meaningful line at or left of this indentation
        // (a sibling list item `- ` at the same indentation ends it too).
        let end = (i + 1..hi)
            .find(|&j| meaningful(lines[j]) && indent(lines[j]) <= ind)
            .unwrap_or(hi);
        lo = i;
        hi = end;
        parent_indent = Some(ind);
        // A list item's keys start on the item's own line (`- name: a`), so keep `lo = i`.
    }
    found
}

enum Seg {
    Key(String),
    Index(usize),
}

fn path_segments(path: &str) -> Vec<Seg> {
    let mut out = Vec::new();
    for part in path.split('.') {
        let (key, rest) = part
            .split_once('[')
            .map(|(k, r)| (k, Some(r)))
            .unwrap_or((part, None));
        if !key.is_empty() {
            out.push(Seg::Key(key.to_owned()));
        }
        if let Some(rest) = rest {
            for idx in rest.split('[') {
                if let Ok(n) = idx.trim_end_matches(']').parse() {
                    out.push(Seg::Index(n));
                }
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    const MODELS: &str = "\
# two models
apiVersion: mlep.dev/v1alpha1
kind: Model
metadata:
  name: m1
spec:
  image: ghcr.io/x/mlep-model-server:0.1.0
  artifact:
    uri: https://example.com/m1.tar.gz
    sha256: 0000000000000000000000000000000000000000000000000000000000000000
---
apiVersion: mlep.dev/v1alpha1
kind: Model
metadata:
  name: m2
  annotations:
    mlep.dev/local-command: python3 serve.py
spec:
  image: example.com/custom:1
";

    const ENDPOINT: &str = "\
apiVersion: mlep.dev/v1alpha1
kind: ModelEndpoint
metadata:
  name: ep
spec:
  hosts: [ep.example.com]
  variants:
    - name: a
      model: m1
      weight: 80
    - name: b
      model: m2
      weight: 20
  routing:
    sticky:
      header: x-user-id
";

    fn parse(files: &[(&str, &str)]) -> Result<Input, LoadError> {
        let mut input = Input::default();
        for (f, t) in files {
            parse_into(&mut input, Path::new(f), t)?;
        }
        validate(&input)?;
        Ok(input)
    }

    #[test]
    fn multi_document_files_load_into_typed_resources_with_their_lines() {
        let input = parse(&[("models.yaml", MODELS), ("endpoint.yaml", ENDPOINT)]).unwrap();
        assert_eq!(input.models.len(), 2);
        assert_eq!(input.models[0].at.line, 1);
        assert_eq!(input.models[1].at.line, 12);
        assert_eq!(
            input.models[1].annotations["mlep.dev/local-command"],
            "python3 serve.py"
        );
        assert_eq!(input.endpoints[0].spec.variants[1].weight, 20);
        assert_eq!(input.endpoints[0].namespace, "default");
    }

    #[test]
    fn a_host_naming_another_namespaces_service_is_refused_as_the_operator_would() {
        let bad = ENDPOINT.replace(
            "hosts: [ep.example.com]",
            "hosts: [ep.example.com, ep.team-a.svc.cluster.local]",
        );
        let err = parse(&[("models.yaml", MODELS), ("endpoint.yaml", &bad)]).unwrap_err();
        let text = err.to_string();
        assert!(
            text.contains("spec.hosts[1]") && text.contains("namespace \"team-a\""),
            "{text}"
        );
    }

    #[test]
    fn broken_yaml_names_file_and_line() {
        let bad = MODELS.replace("  name: m2\n", "  name: [m2\n");
        let err = parse(&[("models.yaml", &bad)]).unwrap_err();
        assert!(matches!(err, LoadError::Yaml { .. }), "{err}");
        let text = err.to_string();
        assert!(text.starts_with("models.yaml:1"), "{text}");
    }

    #[test]
    fn a_wrongly_typed_field_names_file_line_and_resource() {
        let bad = ENDPOINT.replace("weight: 20", "weight: twenty");
        let err = parse(&[("models.yaml", MODELS), ("endpoint.yaml", &bad)]).unwrap_err();
        let text = err.to_string();
        assert!(
            text.starts_with("endpoint.yaml:13: ModelEndpoint \"ep\""),
            "{text}"
        );
        assert!(text.contains("weight"), "{text}");
    }

    #[test]
    fn validation_errors_point_at_the_field_line() {
        let bad = ENDPOINT.replace("weight: 20", "weight: 30");
        let err = parse(&[("models.yaml", MODELS), ("endpoint.yaml", &bad)]).unwrap_err();
        assert_eq!(
            err.to_string(),
            "endpoint.yaml:7: ModelEndpoint default/ep: spec.variants: weights sum to 110, must be 100 (a=80,b=30)"
        );
    }

    #[test]
    fn an_unknown_model_is_reported_at_the_variant_model_line() {
        let bad = ENDPOINT.replace("model: m2", "model: nope");
        let err = parse(&[("models.yaml", MODELS), ("endpoint.yaml", &bad)]).unwrap_err();
        let text = err.to_string();
        assert!(text.starts_with("endpoint.yaml:12: ModelEndpoint default/ep: spec.variants[1].model: no Model named \"nope\""), "{text}");
    }

    #[test]
    fn an_invalid_model_is_reported_in_its_own_document() {
        let bad = MODELS.replace(
            "sha256: 0000000000000000000000000000000000000000000000000000000000000000",
            "sha256: abc",
        );
        let err = parse(&[("models.yaml", &bad)]).unwrap_err();
        assert_eq!(err.to_string(), "models.yaml:10: Model default/m1: spec.artifact.sha256: \"abc\" is not 64 lowercase hex digits");
    }

    #[test]
    fn duplicates_and_unknown_kinds_are_errors_and_other_groups_are_skipped() {
        let err = parse(&[("a.yaml", MODELS), ("b.yaml", MODELS)]).unwrap_err();
        assert_eq!(
            err.to_string(),
            "b.yaml:1: Model default/m1 is defined twice (first at a.yaml:1)"
        );
        let err = parse(&[(
            "a.yaml",
            "apiVersion: mlep.dev/v1alpha1\nkind: Endpoint\nmetadata: {name: x}\n",
        )])
        .unwrap_err();
        assert!(matches!(err, LoadError::UnknownKind { .. }), "{err}");
        let input = parse(&[(
            "a.yaml",
            "apiVersion: v1\nkind: Namespace\nmetadata: {name: x}\n---\n",
        )])
        .unwrap();
        assert_eq!(input.skipped.len(), 1);
    }

    #[test]
    fn serde_yaml_positions_are_removed_from_messages() {
        assert_eq!(strip_location("bad at line 3 column 5"), "bad");
        assert_eq!(
            strip_location("bad at line 18 column 15, while parsing a flow sequence"),
            "bad, while parsing a flow sequence"
        );
        assert_eq!(strip_location("plain"), "plain");
    }

    #[test]
    fn locate_follows_keys_and_list_indices() {
        assert_eq!(locate(ENDPOINT, "spec.variants[1].weight"), Some(13));
        assert_eq!(locate(ENDPOINT, "spec.variants[0].name"), Some(8));
        assert_eq!(locate(ENDPOINT, "spec.variants[1].model"), Some(12));
        assert_eq!(locate(ENDPOINT, "spec.routing.sticky.header"), Some(16));
        assert_eq!(locate(ENDPOINT, "spec.hosts[0]"), Some(6));
        assert_eq!(locate(ENDPOINT, "spec.shadow.percent"), Some(5));
        assert_eq!(locate(ENDPOINT, "nothing"), None);
    }

    #[test]
    fn the_titanic_example_loads() {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples/titanic");
        let input = load(&dir).unwrap();
        assert_eq!(input.endpoints[0].name, "titanic");
        assert_eq!(input.models.len(), 2);
    }
}
