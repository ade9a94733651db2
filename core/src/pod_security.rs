//! Pod Security Standards for the pods the operator renders: the security contexts it gives
//! model pods (a Model's own fields replace the defaults one by one), and the checks of the
//! "baseline" and "restricted" levels, so that a Model whose pods a namespace enforcing the
//! level would refuse is rejected with a condition naming the field, instead of a Deployment
//! whose ReplicaSet never gets a pod.
//!
//! The rules follow Kubernetes' own admission plugin, read in kubernetes/kubernetes
//! `staging/src/k8s.io/pod-security-admission/policy/`:
//! - baseline: `check_privileged.go`, `check_hostNamespaces.go`, `check_hostPorts.go`,
//!   `check_hostPathVolumes.go`, `check_capabilities_baseline.go` (added capabilities only from
//!   the default set), `check_procMount.go`, `check_seLinuxOptions.go`,
//!   `check_seccompProfile_baseline.go` (only `RuntimeDefault`/`Localhost` when set),
//!   `check_sysctls.go` (the 1.0 safe set), `check_windowsHostProcess.go`;
//! - restricted adds: `check_restrictedVolumes.go` (configMap, csi, downwardAPI, emptyDir,
//!   ephemeral, persistentVolumeClaim, projected, secret), `check_allowPrivilegeEscalation.go`
//!   (must be `false`), `check_runAsNonRoot.go` (pod or every container `true`, none `false`),
//!   `check_runAsUser.go` (never 0), `check_seccompProfile_restricted.go` (pod or every
//!   container sets `RuntimeDefault`/`Localhost`), `check_capabilities_restricted.go` (drop
//!   `ALL`, add only `NET_BIND_SERVICE`).
//!
//! Not modelled, because the operator never renders them: AppArmor annotations, user-namespace
//! relaxations (`hostUsers: false`), ephemeral containers.

use crate::crd::conditions::REASON_POD_SECURITY;
use crate::crd::ModelSpec;
use crate::validate::SpecError;
use k8s_openapi::api::core::v1::{
    Capabilities, Container, PodSecurityContext, PodSpec, SELinuxOptions, SeccompProfile,
    SecurityContext, Volume,
};
use serde::de::DeserializeOwned;
use serde::Serialize;
use serde_json::Value;

/// A Pod Security Standard level the operator holds model pods to.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord)]
pub enum PodSecurityLevel {
    /// Prevents known privilege escalations: no privileged containers, host namespaces, host
    /// ports or paths, extra capabilities beyond the default set.
    Baseline,
    /// Baseline plus the hardening best practices (non-root, no privilege escalation, all
    /// capabilities dropped, a seccomp profile, restricted volume types).
    #[default]
    Restricted,
}

impl PodSecurityLevel {
    /// The level's name, as in the `pod-security.kubernetes.io/enforce` label.
    pub fn as_str(self) -> &'static str {
        match self {
            PodSecurityLevel::Baseline => "baseline",
            PodSecurityLevel::Restricted => "restricted",
        }
    }

    fn restricted(self) -> bool {
        self == PodSecurityLevel::Restricted
    }
}

impl std::fmt::Display for PodSecurityLevel {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

impl std::str::FromStr for PodSecurityLevel {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "restricted" => Ok(PodSecurityLevel::Restricted),
            "baseline" => Ok(PodSecurityLevel::Baseline),
            other => Err(format!(
                "{other:?} is not a Pod Security level the operator enforces (restricted or baseline)"
            )),
        }
    }
}

/// One rule a pod breaks: the field (`spec.securityContext.privileged`) and why.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Violation {
    pub field: String,
    pub message: String,
}

/// The user and group model pods run as by default (the distroless `nonroot` user).
pub const DEFAULT_UID: i64 = 65532;

/// Added capabilities "baseline" allows (`check_capabilities_baseline.go`).
const BASELINE_CAPABILITIES: &[&str] = &[
    "AUDIT_WRITE",
    "CHOWN",
    "DAC_OVERRIDE",
    "FOWNER",
    "FSETID",
    "KILL",
    "MKNOD",
    "NET_BIND_SERVICE",
    "SETFCAP",
    "SETGID",
    "SETPCAP",
    "SETUID",
    "SYS_CHROOT",
];
/// Sysctls "baseline" allows (`check_sysctls.go`, the 1.0 set: the smallest of its versions).
const SAFE_SYSCTLS: &[&str] = &[
    "kernel.shm_rmid_forced",
    "net.ipv4.ip_local_port_range",
    "net.ipv4.tcp_syncookies",
    "net.ipv4.ping_group_range",
    "net.ipv4.ip_unprivileged_port_start",
];
/// SELinux types "baseline" allows (`check_seLinuxOptions.go`).
const SELINUX_TYPES: &[&str] = &["", "container_t", "container_init_t", "container_kvm_t"];

fn runtime_default() -> SeccompProfile {
    SeccompProfile {
        type_: "RuntimeDefault".into(),
        ..SeccompProfile::default()
    }
}

/// The pod security context model pods get unless the Model sets a field of its own.
pub fn default_pod_context() -> PodSecurityContext {
    PodSecurityContext {
        run_as_non_root: Some(true),
        run_as_user: Some(DEFAULT_UID),
        run_as_group: Some(DEFAULT_UID),
        fs_group: Some(DEFAULT_UID),
        seccomp_profile: Some(runtime_default()),
        ..PodSecurityContext::default()
    }
}

/// The container security context of the operator's own containers (model-init), and of the
/// model container unless the Model sets a field of its own.
pub fn default_container_context() -> SecurityContext {
    SecurityContext {
        allow_privilege_escalation: Some(false),
        read_only_root_filesystem: Some(true),
        run_as_non_root: Some(true),
        privileged: Some(false),
        seccomp_profile: Some(runtime_default()),
        capabilities: Some(Capabilities {
            drop: Some(vec!["ALL".into()]),
            ..Capabilities::default()
        }),
        ..SecurityContext::default()
    }
}

/// `own`'s fields over `defaults`' (a field `own` leaves unset keeps its default).
fn overlay<T: Serialize + DeserializeOwned + Clone>(defaults: T, own: Option<&T>) -> T {
    let Some(own) = own else {
        return defaults;
    };
    match (serde_json::to_value(&defaults), serde_json::to_value(own)) {
        (Ok(Value::Object(mut merged)), Ok(Value::Object(fields))) => {
            merged.extend(fields);
            serde_json::from_value(Value::Object(merged)).unwrap_or_else(|_| own.clone())
        }
        _ => own.clone(),
    }
}

/// The pod security context of a Model's pods: `spec.podSecurityContext` over the defaults.
pub fn model_pod_context(model: &ModelSpec) -> PodSecurityContext {
    overlay(default_pod_context(), model.pod_security_context.as_ref())
}

/// The model container's security context: `spec.securityContext` over the defaults.
pub fn model_container_context(model: &ModelSpec) -> SecurityContext {
    overlay(default_container_context(), model.security_context.as_ref())
}

/// Whether the pods of `model` meet `level`; the error names the Model's field.
pub fn check_model(model: &ModelSpec, level: PodSecurityLevel) -> Result<(), SpecError> {
    let pod = model_pod_context(model);
    let container = model_container_context(model);
    let mut found = pod_context_violations(&pod, "spec.podSecurityContext", level);
    found.extend(container_violations(
        Some(&container),
        Some(&pod),
        "spec.securityContext",
        level,
    ));
    match found.into_iter().next() {
        None => Ok(()),
        Some(v) => Err(SpecError {
            field: v.field,
            message: v.message,
            reason: REASON_POD_SECURITY,
        }),
    }
}

fn forbidden(field: String, what: &str, level: PodSecurityLevel) -> Violation {
    Violation {
        field,
        message: format!("{what}: forbidden by Pod Security {:?}", level.as_str()),
    }
}

fn valid_seccomp(p: &SeccompProfile) -> bool {
    matches!(p.type_.as_str(), "RuntimeDefault" | "Localhost")
}

/// The fields pod and container security contexts share, and the rules on them.
struct Shared<'a> {
    seccomp: Option<&'a SeccompProfile>,
    selinux: Option<&'a SELinuxOptions>,
    host_process: Option<bool>,
    run_as_non_root: Option<bool>,
    run_as_user: Option<i64>,
}

/// The [`Shared`] fields of a pod or a container security context (the two types name them
/// alike, with no trait in common).
macro_rules! shared_of {
    ($ctx:expr) => {
        Shared {
            seccomp: $ctx.seccomp_profile.as_ref(),
            selinux: $ctx.se_linux_options.as_ref(),
            host_process: $ctx.windows_options.as_ref().and_then(|w| w.host_process),
            run_as_non_root: $ctx.run_as_non_root,
            run_as_user: $ctx.run_as_user,
        }
    };
}

impl Shared<'_> {
    fn check(&self, level: PodSecurityLevel, fail: &mut impl FnMut(&str, String)) {
        if let Some(p) = self.seccomp.filter(|p| !valid_seccomp(p)) {
            let what = format!("{:?} (only RuntimeDefault or Localhost)", p.type_);
            fail("seccompProfile.type", what);
        }
        if let Some(what) = self.selinux.and_then(selinux_problem) {
            fail("seLinuxOptions", what);
        }
        if self.host_process == Some(true) {
            fail("windowsOptions.hostProcess", "true".into());
        }
        if level.restricted() {
            if self.run_as_non_root == Some(false) {
                fail("runAsNonRoot", "false".into());
            }
            if self.run_as_user == Some(0) {
                fail("runAsUser", "0 (root)".into());
            }
        }
    }
}

/// The rules on a pod-level security context, fields named under `at`.
pub fn pod_context_violations(
    pod: &PodSecurityContext,
    at: &str,
    level: PodSecurityLevel,
) -> Vec<Violation> {
    let mut out = Vec::new();
    let mut fail =
        |field: &str, what: String| out.push(forbidden(format!("{at}.{field}"), &what, level));
    shared_of!(pod).check(level, &mut fail);
    for (i, s) in pod.sysctls.iter().flatten().enumerate() {
        if !SAFE_SYSCTLS.contains(&s.name.as_str()) {
            let what = format!("{:?} is not a safe sysctl", s.name);
            fail(&format!("sysctls[{i}].name"), what);
        }
    }
    out
}

fn selinux_problem(o: &SELinuxOptions) -> Option<String> {
    let kind = o.type_.as_deref().unwrap_or("");
    if !SELINUX_TYPES.contains(&kind) {
        return Some(format!("type {kind:?}"));
    }
    if o.user.as_deref().is_some_and(|u| !u.is_empty()) {
        return Some("a user".into());
    }
    if o.role.as_deref().is_some_and(|r| !r.is_empty()) {
        return Some("a role".into());
    }
    None
}

/// The rules on one container's security context `c` in a pod with context `pod` (the pod's
/// `runAsNonRoot` and seccomp profile stand in for fields the container leaves unset), fields
/// named under `at`.
pub fn container_violations(
    c: Option<&SecurityContext>,
    pod: Option<&PodSecurityContext>,
    at: &str,
    level: PodSecurityLevel,
) -> Vec<Violation> {
    let mut out = Vec::new();
    let mut fail =
        |field: &str, what: String| out.push(forbidden(format!("{at}.{field}"), &what, level));
    let none = SecurityContext::default();
    let c = c.unwrap_or(&none);
    if c.privileged == Some(true) {
        fail("privileged", "true".into());
    }
    let added: Vec<&str> = c
        .capabilities
        .as_ref()
        .and_then(|k| k.add.as_ref())
        .map(|a| a.iter().map(String::as_str).collect())
        .unwrap_or_default();
    let allowed: &[&str] = if level.restricted() {
        &["NET_BIND_SERVICE"]
    } else {
        BASELINE_CAPABILITIES
    };
    if let Some(cap) = added.iter().find(|a| !allowed.contains(a)) {
        fail("capabilities.add", format!("{cap:?}"));
    }
    if c.proc_mount.as_deref().is_some_and(|m| m != "Default") {
        fail(
            "procMount",
            format!("{:?} (only Default)", c.proc_mount.as_deref().unwrap_or("")),
        );
    }
    shared_of!(c).check(level, &mut fail);
    if level.restricted() {
        restricted_container(c, pod, &mut fail);
    }
    out
}

/// The restricted-only rules on a container.
fn restricted_container(
    c: &SecurityContext,
    pod: Option<&PodSecurityContext>,
    fail: &mut impl FnMut(&str, String),
) {
    if c.allow_privilege_escalation != Some(false) {
        fail(
            "allowPrivilegeEscalation",
            "unset or true (must be false)".into(),
        );
    }
    let drops_all = c
        .capabilities
        .as_ref()
        .and_then(|k| k.drop.as_ref())
        .is_some_and(|d| d.iter().any(|x| x == "ALL"));
    if !drops_all {
        fail(
            "capabilities.drop",
            "keeping capabilities (must drop ALL)".into(),
        );
    }
    let pod_non_root = pod.and_then(|p| p.run_as_non_root) == Some(true);
    if c.run_as_non_root.is_none() && !pod_non_root {
        let what = "unset (pod or container must set true)".into();
        fail("runAsNonRoot", what);
    }
    let pod_seccomp = pod
        .and_then(|p| p.seccomp_profile.as_ref())
        .is_some_and(valid_seccomp);
    if c.seccomp_profile.is_none() && !pod_seccomp {
        fail(
            "seccompProfile",
            "unset (pod or container must set RuntimeDefault or Localhost)".into(),
        );
    }
}

/// Volume types "restricted" allows (`check_restrictedVolumes.go`).
fn restricted_volume(v: &Volume) -> bool {
    v.config_map.is_some()
        || v.csi.is_some()
        || v.downward_api.is_some()
        || v.empty_dir.is_some()
        || v.ephemeral.is_some()
        || v.persistent_volume_claim.is_some()
        || v.projected.is_some()
        || v.secret.is_some()
}

/// Every rule of `level` a whole pod spec breaks, fields named from the pod
/// (`spec.containers[0].securityContext.privileged`).
pub fn pod_spec_violations(spec: &PodSpec, level: PodSecurityLevel) -> Vec<Violation> {
    let mut out = Vec::new();
    for (field, on) in [
        ("hostNetwork", spec.host_network),
        ("hostPID", spec.host_pid),
        ("hostIPC", spec.host_ipc),
    ] {
        if on == Some(true) {
            out.push(forbidden(format!("spec.{field}"), "true", level));
        }
    }
    if let Some(pod) = &spec.security_context {
        out.extend(pod_context_violations(pod, "spec.securityContext", level));
    }
    for (i, v) in spec.volumes.iter().flatten().enumerate() {
        if v.host_path.is_some() {
            out.push(forbidden(
                format!("spec.volumes[{i}].hostPath"),
                "a host path",
                level,
            ));
        } else if level.restricted() && !restricted_volume(v) {
            out.push(forbidden(
                format!("spec.volumes[{i}]"),
                "this volume type",
                level,
            ));
        }
    }
    let containers = [
        ("initContainers", spec.init_containers.as_deref()),
        ("containers", Some(&spec.containers[..])),
    ];
    for (list, cs) in containers {
        for (i, c) in cs.unwrap_or_default().iter().enumerate() {
            out.extend(container_spec_violations(
                c,
                spec,
                &format!("spec.{list}[{i}]"),
                level,
            ));
        }
    }
    out
}

fn container_spec_violations(
    c: &Container,
    pod: &PodSpec,
    at: &str,
    level: PodSecurityLevel,
) -> Vec<Violation> {
    let mut out = container_violations(
        c.security_context.as_ref(),
        pod.security_context.as_ref(),
        &format!("{at}.securityContext"),
        level,
    );
    for (j, p) in c.ports.iter().flatten().enumerate() {
        if p.host_port.is_some_and(|h| h != 0) {
            out.push(forbidden(
                format!("{at}.ports[{j}].hostPort"),
                "a host port",
                level,
            ));
        }
    }
    out
}

#[cfg(test)]
mod tests;
