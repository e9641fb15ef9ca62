//! What differs between Kubernetes versions, decided from what the binaries and the server
//! say: the flags hack/k8s-flags.sh chooses from recorded `--version` and `--help` outputs of
//! 1.20 (the binaries built here) and of a current release, and the shape in which
//! `support::add_ephemeral_container` writes ephemeral containers. No control plane.

use std::process::Command;

use serde_json::json;
use winflow_test_support::{REPO, with_ephemeral_container};

/// Lines of `kube-apiserver --help` around the feature gates, as 1.20.2 prints them.
const APISERVER_1_20_HELP: &str = "      --feature-gates mapStringBool                  A set of key=value pairs that describe feature gates for alpha/experimental features. Options are:
                                                     APIListChunking=true|false (BETA - default=true)
                                                     EndpointSliceTerminatingCondition=true|false (ALPHA - default=false)
                                                     EphemeralContainers=true|false (ALPHA - default=false)
                                                     ExpandCSIVolumes=true|false (BETA - default=true)
";

/// The same lines from 1.36: ephemeral containers are GA (1.25) and their gate is gone.
const APISERVER_1_36_HELP: &str = "      --feature-gates colonSeparatedMultimapStringString
                Comma-separated list of component:key=value pairs that describe feature gates for alpha/experimental features of different components.
                If the component is not specified, defaults to \"kube\". This flag can be repeatedly invoked. For example: --feature-gates 'wardle:featureA=true,wardle:featureB=false' --feature-gates 'kube:featureC=true'Options are:
                kube:APIResponseCompression=true|false (BETA - default=true)
                kube:AllAlpha=true|false (ALPHA - default=false)
                kube:AllBeta=true|false (BETA - default=false)
                kube:DRAAdminAccess=true|false (BETA - default=true)
                kube:InPlacePodVerticalScaling=true|false (BETA - default=true)
";

/// `kubelet --help` lines for the pause image flag: listed by 1.20, gone in 1.36.
const KUBELET_1_20_HELP: &str = "      --pod-infra-container-image string                         The image whose network/ipc namespaces containers in each pod will use. This docker-specific flag only works when container-runtime is set to docker. (default \"k8s.gcr.io/pause:3.2\")
      --pod-manifest-path string                                 Path to the directory containing static pod files to run, or the path to a single static pod file. Files starting with dots will be ignored. (DEPRECATED: This parameter should be set via the config file specified by the Kubelet's --config flag.)
";
const KUBELET_1_36_HELP: &str = "      --pod-manifest-path string                                 Path to the directory containing static pod files to run, or the path to a single static pod file. Files starting with dots will be ignored. (DEPRECATED: This parameter should be set via the config file specified by the Kubelet's --config flag.)
      --provider-id string                                       Unique identifier for identifying the node in a machine database, i.e cloud provider
";

/// Runs `function args...` from hack/k8s-flags.sh and returns what it printed and whether
/// it succeeded.
fn flags(function: &str, args: &[&str]) -> (String, bool) {
    let output = Command::new("bash")
        .arg("-c")
        .arg(format!(". {REPO}/hack/k8s-flags.sh && {function} \"$@\""))
        .arg("k8s-flags")
        .args(args)
        .output()
        .expect("bash runs");
    assert!(output.stderr.is_empty(), "{}", String::from_utf8_lossy(&output.stderr));
    (
        String::from_utf8(output.stdout).unwrap().trim().to_string(),
        output.status.success(),
    )
}

#[test]
fn the_minor_version_is_read_from_version_output() {
    assert_eq!(flags("k8s_minor", &["Kubernetes v1.20.2"]).0, "20");
    assert_eq!(flags("k8s_minor", &["Kubernetes v1.36.2"]).0, "36");
    assert_eq!(flags("k8s_minor", &["Kubernetes v1.30.0-rc.1+abc"]).0, "30");
    assert_eq!(flags("k8s_minor", &["unknown"]).0, "");
}

#[test]
fn the_insecure_port_is_switched_off_only_where_the_flag_exists() {
    // kube-controller-manager and kube-scheduler removed --port in 1.24.
    assert_eq!(flags("insecure_port_args", &["Kubernetes v1.20.2"]).0, "--port=0");
    assert_eq!(flags("insecure_port_args", &["Kubernetes v1.23.17"]).0, "--port=0");
    assert_eq!(flags("insecure_port_args", &["Kubernetes v1.24.0"]).0, "");
    assert_eq!(flags("insecure_port_args", &["Kubernetes v1.36.2"]).0, "");
}

#[test]
fn the_ephemeral_containers_gate_is_set_only_where_the_api_server_lists_it() {
    let gate = |help: &str| flags("feature_gate_args", &[help, "EphemeralContainers"]).0;
    assert_eq!(gate(APISERVER_1_20_HELP), "--feature-gates=EphemeralContainers=true");
    assert_eq!(gate(APISERVER_1_36_HELP), "");
    // Current releases list gates with their component's prefix.
    assert_eq!(
        flags("feature_gate_args", &[APISERVER_1_36_HELP, "InPlacePodVerticalScaling"]).0,
        "--feature-gates=InPlacePodVerticalScaling=true"
    );
    // Several gates are joined into one flag; unknown ones are left out.
    assert_eq!(
        flags(
            "feature_gate_args",
            &[
                APISERVER_1_20_HELP,
                "EphemeralContainers",
                "NoSuchGate",
                "ExpandCSIVolumes"
            ]
        )
        .0,
        "--feature-gates=EphemeralContainers=true,ExpandCSIVolumes=true"
    );
}

#[test]
fn kubelet_flags_follow_its_version_and_help() {
    // --container-runtime was removed in 1.27 (a remote CRI runtime is the only kind).
    assert_eq!(
        flags("kubelet_runtime_args", &["Kubernetes v1.20.2"]).0,
        "--container-runtime=remote"
    );
    assert_eq!(flags("kubelet_runtime_args", &["Kubernetes v1.27.0"]).0, "");
    let listed = |help: &str| flags("help_lists_flag", &[help, "--pod-infra-container-image"]).1;
    assert!(listed(KUBELET_1_20_HELP));
    assert!(!listed(KUBELET_1_36_HELP));
    // A flag is not found inside another one's name.
    assert!(!flags("help_lists_flag", &[KUBELET_1_20_HELP, "--pod-infra"]).1);
}

#[test]
fn an_ephemeral_container_goes_where_the_subresource_kind_keeps_it() {
    let debug = json!({"name": "debug", "image": "busybox"});
    // Up to 1.21: an EphemeralContainers object.
    let old = json!({"kind": "EphemeralContainers", "apiVersion": "v1",
        "metadata": {"name": "task"}, "ephemeralContainers": []});
    let written = with_ephemeral_container("EphemeralContainers", old, debug.clone()).unwrap();
    assert_eq!(written["ephemeralContainers"], json!([debug]));
    // From 1.22: the whole Pod, its other ephemeral containers kept.
    let pod = json!({"kind": "Pod", "apiVersion": "v1", "metadata": {"name": "task"},
        "spec": {"containers": [{"name": "base", "image": "app"}],
                 "ephemeralContainers": [{"name": "first", "image": "busybox"}]}});
    let written = with_ephemeral_container("Pod", pod, debug.clone()).unwrap();
    assert_eq!(
        written["spec"]["ephemeralContainers"],
        json!([{"name": "first", "image": "busybox"}, debug])
    );
    assert_eq!(written["spec"]["containers"][0]["name"], "base");
    assert!(with_ephemeral_container("Status", json!({}), debug).is_err());
}
