use super::*;
use k8s_openapi::api::core::v1::{
    ContainerPort, HostPathVolumeSource, NFSVolumeSource, SELinuxOptions, Sysctl,
    WindowsSecurityContextOptions,
};

use PodSecurityLevel::{Baseline, Restricted};

/// A Model with no security fields of its own.
fn model() -> ModelSpec {
    serde_json::from_value(serde_json::json!({"image": "mlep-model-server:0.1.0"})).unwrap()
}

fn with_container(sc: SecurityContext) -> ModelSpec {
    ModelSpec {
        security_context: Some(sc),
        ..model()
    }
}

fn with_pod(pc: PodSecurityContext) -> ModelSpec {
    ModelSpec {
        pod_security_context: Some(pc),
        ..model()
    }
}

/// The field a level rejects the Model on, if any.
fn rejected_field(m: &ModelSpec, level: PodSecurityLevel) -> Option<String> {
    check_model(m, level).err().map(|e| {
        assert_eq!(e.reason, REASON_POD_SECURITY);
        assert!(e.message.contains(level.as_str()), "{e}");
        e.field
    })
}

fn caps(add: &[&str], drop: &[&str]) -> Option<Capabilities> {
    Some(Capabilities {
        add: Some(add.iter().map(|s| s.to_string()).collect()),
        drop: Some(drop.iter().map(|s| s.to_string()).collect()),
    })
}

#[test]
fn a_model_with_no_security_fields_meets_restricted() {
    assert_eq!(rejected_field(&model(), Restricted), None);
}

#[test]
fn a_models_own_fields_replace_the_defaults_one_by_one() {
    let m = with_container(SecurityContext {
        read_only_root_filesystem: Some(false),
        run_as_user: Some(1000),
        ..SecurityContext::default()
    });
    let c = model_container_context(&m);
    assert_eq!(c.read_only_root_filesystem, Some(false));
    assert_eq!(c.run_as_user, Some(1000));
    assert_eq!(c.allow_privilege_escalation, Some(false));
    assert_eq!(c.capabilities, default_container_context().capabilities);
    let p = model_pod_context(&with_pod(PodSecurityContext {
        run_as_user: Some(1000),
        ..PodSecurityContext::default()
    }));
    assert_eq!((p.run_as_user, p.run_as_non_root), (Some(1000), Some(true)));
    assert_eq!(rejected_field(&m, Restricted), None);
}

#[test]
fn a_privileged_container_is_refused_at_every_level() {
    let m = with_container(SecurityContext {
        privileged: Some(true),
        ..SecurityContext::default()
    });
    for level in [Baseline, Restricted] {
        assert_eq!(
            rejected_field(&m, level).as_deref(),
            Some("spec.securityContext.privileged")
        );
    }
    let e = check_model(&m, Restricted).unwrap_err();
    assert_eq!(
        e.to_string(),
        "spec.securityContext.privileged: true: forbidden by Pod Security \"restricted\""
    );
}

#[test]
fn added_capabilities_follow_each_levels_list() {
    let net_admin = with_container(SecurityContext {
        capabilities: caps(&["NET_ADMIN"], &["ALL"]),
        ..SecurityContext::default()
    });
    let chown = with_container(SecurityContext {
        capabilities: caps(&["CHOWN"], &["ALL"]),
        ..SecurityContext::default()
    });
    let bind = with_container(SecurityContext {
        capabilities: caps(&["NET_BIND_SERVICE"], &["ALL"]),
        ..SecurityContext::default()
    });
    let field = Some("spec.securityContext.capabilities.add".to_owned());
    assert_eq!(rejected_field(&net_admin, Baseline), field);
    assert_eq!(rejected_field(&chown, Baseline), None);
    assert_eq!(rejected_field(&chown, Restricted), field);
    assert_eq!(rejected_field(&bind, Restricted), None);
}

#[test]
fn restricted_needs_all_capabilities_dropped() {
    let m = with_container(SecurityContext {
        capabilities: caps(&[], &["NET_RAW"]),
        ..SecurityContext::default()
    });
    assert_eq!(
        rejected_field(&m, Restricted).as_deref(),
        Some("spec.securityContext.capabilities.drop")
    );
    assert_eq!(rejected_field(&m, Baseline), None);
}

#[test]
fn privilege_escalation_is_refused_by_restricted_only() {
    let m = with_container(SecurityContext {
        allow_privilege_escalation: Some(true),
        ..SecurityContext::default()
    });
    assert_eq!(
        rejected_field(&m, Restricted).as_deref(),
        Some("spec.securityContext.allowPrivilegeEscalation")
    );
    assert_eq!(rejected_field(&m, Baseline), None);
}

#[test]
fn root_is_refused_by_restricted_on_the_pod_and_the_container() {
    let pod_root = with_pod(PodSecurityContext {
        run_as_user: Some(0),
        ..PodSecurityContext::default()
    });
    assert_eq!(
        rejected_field(&pod_root, Restricted).as_deref(),
        Some("spec.podSecurityContext.runAsUser")
    );
    let pod_maybe_root = with_pod(PodSecurityContext {
        run_as_non_root: Some(false),
        ..PodSecurityContext::default()
    });
    assert_eq!(
        rejected_field(&pod_maybe_root, Restricted).as_deref(),
        Some("spec.podSecurityContext.runAsNonRoot")
    );
    let container_root = with_container(SecurityContext {
        run_as_user: Some(0),
        ..SecurityContext::default()
    });
    assert_eq!(
        rejected_field(&container_root, Restricted).as_deref(),
        Some("spec.securityContext.runAsUser")
    );
    let container_maybe_root = with_container(SecurityContext {
        run_as_non_root: Some(false),
        ..SecurityContext::default()
    });
    assert_eq!(
        rejected_field(&container_maybe_root, Restricted).as_deref(),
        Some("spec.securityContext.runAsNonRoot")
    );
    for m in [
        pod_root,
        pod_maybe_root,
        container_root,
        container_maybe_root,
    ] {
        assert_eq!(rejected_field(&m, Baseline), None);
    }
}

#[test]
fn seccomp_unconfined_is_refused_and_restricted_needs_a_profile() {
    let unconfined = || {
        Some(SeccompProfile {
            type_: "Unconfined".into(),
            ..SeccompProfile::default()
        })
    };
    let pod = with_pod(PodSecurityContext {
        seccomp_profile: unconfined(),
        ..PodSecurityContext::default()
    });
    let container = with_container(SecurityContext {
        seccomp_profile: unconfined(),
        ..SecurityContext::default()
    });
    for level in [Baseline, Restricted] {
        assert_eq!(
            rejected_field(&pod, level).as_deref(),
            Some("spec.podSecurityContext.seccompProfile.type")
        );
        assert_eq!(
            rejected_field(&container, level).as_deref(),
            Some("spec.securityContext.seccompProfile.type")
        );
    }
    // No profile anywhere: only restricted minds.
    let none = SecurityContext::default();
    let found = container_violations(Some(&none), None, "c", Restricted);
    assert!(
        found.iter().any(|v| v.field == "c.seccompProfile"),
        "{found:?}"
    );
    assert!(container_violations(Some(&none), None, "c", Baseline).is_empty());
    let localhost = PodSecurityContext {
        run_as_non_root: Some(true),
        seccomp_profile: Some(SeccompProfile {
            type_: "Localhost".into(),
            localhost_profile: Some("profiles/model.json".into()),
        }),
        ..PodSecurityContext::default()
    };
    let locked = SecurityContext {
        seccomp_profile: None,
        ..default_container_context()
    };
    assert!(container_violations(Some(&locked), Some(&localhost), "c", Restricted).is_empty());
}

#[test]
fn selinux_proc_mount_sysctls_and_host_process_are_baseline_rules() {
    let selinux = with_pod(PodSecurityContext {
        se_linux_options: Some(SELinuxOptions {
            user: Some("system_u".into()),
            ..SELinuxOptions::default()
        }),
        ..PodSecurityContext::default()
    });
    let sysctl = with_pod(PodSecurityContext {
        sysctls: Some(vec![Sysctl {
            name: "kernel.msgmax".into(),
            value: "1".into(),
        }]),
        ..PodSecurityContext::default()
    });
    let proc_mount = with_container(SecurityContext {
        proc_mount: Some("Unmasked".into()),
        ..SecurityContext::default()
    });
    let host_process = with_container(SecurityContext {
        windows_options: Some(WindowsSecurityContextOptions {
            host_process: Some(true),
            ..WindowsSecurityContextOptions::default()
        }),
        ..SecurityContext::default()
    });
    for (m, field) in [
        (selinux, "spec.podSecurityContext.seLinuxOptions"),
        (sysctl, "spec.podSecurityContext.sysctls[0].name"),
        (proc_mount, "spec.securityContext.procMount"),
        (
            host_process,
            "spec.securityContext.windowsOptions.hostProcess",
        ),
    ] {
        assert_eq!(rejected_field(&m, Baseline).as_deref(), Some(field));
    }
}

fn locked_pod() -> PodSpec {
    PodSpec {
        security_context: Some(default_pod_context()),
        containers: vec![Container {
            name: "model".into(),
            security_context: Some(default_container_context()),
            ..Container::default()
        }],
        ..PodSpec::default()
    }
}

#[test]
fn host_namespaces_ports_and_paths_are_refused_in_a_pod_spec() {
    assert!(pod_spec_violations(&locked_pod(), Restricted).is_empty());
    let mut p = locked_pod();
    p.host_network = Some(true);
    p.host_pid = Some(true);
    p.host_ipc = Some(true);
    p.containers[0].ports = Some(vec![ContainerPort {
        container_port: 8080,
        host_port: Some(8080),
        ..ContainerPort::default()
    }]);
    p.volumes = Some(vec![Volume {
        name: "root".into(),
        host_path: Some(HostPathVolumeSource {
            path: "/".into(),
            ..HostPathVolumeSource::default()
        }),
        ..Volume::default()
    }]);
    let fields: Vec<String> = pod_spec_violations(&p, Baseline)
        .into_iter()
        .map(|v| v.field)
        .collect();
    assert_eq!(
        fields,
        [
            "spec.hostNetwork",
            "spec.hostPID",
            "spec.hostIPC",
            "spec.volumes[0].hostPath",
            "spec.containers[0].ports[0].hostPort"
        ]
    );
}

#[test]
fn restricted_allows_only_its_volume_types() {
    let mut p = locked_pod();
    p.volumes = Some(vec![Volume {
        name: "share".into(),
        nfs: Some(NFSVolumeSource {
            server: "nfs".into(),
            path: "/x".into(),
            ..NFSVolumeSource::default()
        }),
        ..Volume::default()
    }]);
    assert!(pod_spec_violations(&p, Baseline).is_empty());
    let found = pod_spec_violations(&p, Restricted);
    assert_eq!(found.len(), 1, "{found:?}");
    assert_eq!(found[0].field, "spec.volumes[0]");
}

#[test]
fn an_init_container_is_held_to_the_same_rules() {
    let mut p = locked_pod();
    p.init_containers = Some(vec![Container {
        name: "setup".into(),
        ..Container::default()
    }]);
    let fields: Vec<String> = pod_spec_violations(&p, Restricted)
        .into_iter()
        .map(|v| v.field)
        .collect();
    assert_eq!(
        fields,
        [
            "spec.initContainers[0].securityContext.allowPrivilegeEscalation",
            "spec.initContainers[0].securityContext.capabilities.drop"
        ]
    );
}

#[test]
fn levels_parse_from_their_label_names() {
    assert_eq!("restricted".parse(), Ok(Restricted));
    assert_eq!("baseline".parse(), Ok(Baseline));
    assert!("privileged".parse::<PodSecurityLevel>().is_err());
    assert_eq!(PodSecurityLevel::default(), Restricted);
}
