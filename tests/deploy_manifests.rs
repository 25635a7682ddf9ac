//! deploy/ holds what an operator applies; nothing here can run a cluster or build an image,
//! so this checks what can be checked without one:
//! - every document of every manifest parses as the k8s-openapi type of its kind, and
//!   serializes back to the same JSON (a misspelt or misplaced field would be dropped by the
//!   type and show up as a difference); the custom resources load through switchyard's own
//!   loader without a problem and plan a bridge for a labelled node;
//! - the DaemonSet names the paths the binary uses (its defaults: control socket, vhost-user
//!   directory, CNI state; host path = container path), the port it passes to `--metrics` is
//!   the container port the probes use, the probe paths are the endpoint's, the capabilities
//!   are exactly the ports' four, the QoS is Guaranteed (exclusive CPUs under the static CPU
//!   manager), every flag it passes is one `switchyard run --help` lists, the init container
//!   installs the CNI plugin under the name NADs use, from where the Containerfile puts it;
//! - RBAC: get/list/watch on exactly the kinds the API source reads (its `Kind::ALL`),
//!   create/patch on Events, bound to the DaemonSet's service account;
//! - the image: the switchyard stage's `apt-get install`, simulated on an empty package
//!   database, brings every library `ldd` finds for the built binary and every DPDK driver it
//!   needs from EAL's plugin directory (`dpkg -S` names their packages); .dockerignore keeps
//!   every tracked file (and all cargo reads) in the build context and leaves out everything
//!   git ignores, target/ and .git;
//! - the KubeVirt hand-off: the DaemonSet's device-plugin container, its arguments parsed by
//!   `switchyard-kubevirt`'s own parser, registers in the kubelet's device-plugins directory,
//!   writes Multus's device-info directory, and uses the switch's vhost-user directory and
//!   control socket (the same hostPaths); the binding registered by deploy/kubevirt/'s merge
//!   patch of the KubeVirt CR (only `spec.configuration.network.binding`, no list) runs the
//!   Containerfile's hook-sidecar image for the binding name the sidecar rewrites, and the VM
//!   there and the example VMI use that binding on NADs (parsed by the CNI plugin's own parser)
//!   that name the device plugin's resource;
//! - a plain `cargo build --release` (docs/cni.md, the design guide) builds the three binaries a
//!   node installs: the workspace's default members (`cargo metadata`) are the packages of
//!   `switchyard`, `switchyard-cni` and `switchyard-kubevirt`, each with that binary.

use clap::Parser;
use k8s_openapi::api::apps::v1::DaemonSet;
use k8s_openapi::api::core::v1::{Container, Namespace, PodSpec, Probe, ServiceAccount};
use k8s_openapi::api::rbac::v1::{ClusterRole, ClusterRoleBinding};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use serde::de::DeserializeOwned;
use serde::Serialize;
use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use switchyard_control::api_source::Kind;
use switchyard_control::cni::DEFAULT_CNI_STATE;
use switchyard_control::ctl::DEFAULT_SOCKET;
use switchyard_control::health::{HEALTHZ_PATH, READYZ_PATH};
use switchyard_control::plan::DEFAULT_VHOST_DIR;
use switchyard_kubevirt::cli::{Cli, Cmd};
use switchyard_kubevirt::device_plugin::{self, PluginConfig};

const BIN: &str = env!("CARGO_BIN_EXE_switchyard");

fn deploy() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("deploy")
}

/// Every YAML document under deploy/ (file, document as JSON).
fn documents() -> Vec<(String, serde_json::Value)> {
    let mut files: Vec<PathBuf> = Vec::new();
    let mut dirs = vec![deploy()];
    while let Some(d) = dirs.pop() {
        for e in std::fs::read_dir(d).unwrap() {
            let p = e.unwrap().path();
            if p.is_dir() {
                dirs.push(p);
            } else if p.extension().is_some_and(|x| x == "yaml" || x == "yml") {
                files.push(p);
            }
        }
    }
    files.sort();
    let mut out = Vec::new();
    for f in files {
        let text = std::fs::read_to_string(&f).unwrap();
        for doc in serde_yaml_ng::Deserializer::from_str(&text) {
            let v = <serde_json::Value as serde::Deserialize>::deserialize(doc)
                .unwrap_or_else(|e| panic!("{}: {e}", f.display()));
            if !v.is_null() {
                out.push((f.strip_prefix(deploy()).unwrap().display().to_string(), v));
            }
        }
    }
    out
}

/// `v` as `T`, which must serialize back to `v` exactly.
fn typed<T: DeserializeOwned + Serialize>(file: &str, v: &serde_json::Value) -> T {
    let t: T = serde_json::from_value(v.clone()).unwrap_or_else(|e| panic!("{file}: {e}"));
    let back = serde_json::to_value(&t).unwrap();
    assert_eq!(&back, v, "{file}: a field the type does not have, or in the wrong place");
    t
}

#[derive(Default)]
struct Deploy {
    daemonsets: Vec<DaemonSet>,
    roles: Vec<ClusterRole>,
    bindings: Vec<ClusterRoleBinding>,
    accounts: Vec<ServiceAccount>,
    namespaces: Vec<Namespace>,
    /// Custom resources by kind.
    custom: BTreeMap<String, usize>,
    /// The custom resources themselves (file, object).
    objects: Vec<(String, serde_json::Value)>,
    /// Merge patches (`*-patch.yaml`, no apiVersion or kind): (file, patch).
    patches: Vec<(String, serde_json::Value)>,
}

fn load() -> Deploy {
    let mut d = Deploy::default();
    for (file, v) in documents() {
        let api = v["apiVersion"].as_str().unwrap_or_default().to_string();
        let kind = v["kind"].as_str().unwrap_or_default().to_string();
        if file.ends_with("-patch.yaml") {
            assert!(api.is_empty() && kind.is_empty(), "{file}: a patch names no apiVersion or kind");
            d.patches.push((file, v));
            continue;
        }
        match (api.as_str(), kind.as_str()) {
            ("apps/v1", "DaemonSet") => d.daemonsets.push(typed(&file, &v)),
            ("rbac.authorization.k8s.io/v1", "ClusterRole") => d.roles.push(typed(&file, &v)),
            ("rbac.authorization.k8s.io/v1", "ClusterRoleBinding") => d.bindings.push(typed(&file, &v)),
            ("v1", "ServiceAccount") => d.accounts.push(typed(&file, &v)),
            ("v1", "Namespace") => d.namespaces.push(typed(&file, &v)),
            ("k8s.cni.cncf.io/v1", "NetworkAttachmentDefinition")
            | ("kubevirt.io/v1", "VirtualMachineInstance")
            | ("nmstate.io/v1", "NodeNetworkConfigurationPolicy")
            | ("k8s.cni.cncf.io/v1beta1", "MultiNetworkPolicy")
            | ("kubevirt.io/v1", "KubeVirt")
            | ("kubevirt.io/v1", "VirtualMachine") => {
                *d.custom.entry(kind).or_default() += 1;
                d.objects.push((file, v));
            }
            _ => panic!("{file}: {api} {kind} is not a kind this test knows how to check"),
        }
    }
    d
}

/// The container's arguments as `--flag` -> value (flags without a value map to "").
fn flags(args: &[String]) -> BTreeMap<String, String> {
    let mut m = BTreeMap::new();
    let mut it = args.iter().skip_while(|a| !a.starts_with("--")).peekable();
    while let Some(a) = it.next() {
        let v = match it.peek() {
            Some(v) if !v.starts_with("--") => it.next().unwrap().clone(),
            _ => String::new(),
        };
        m.insert(a.clone(), v);
    }
    m
}

fn http_probe(p: &Option<Probe>, what: &str) -> (String, IntOrString) {
    let g = p.as_ref().and_then(|p| p.http_get.as_ref()).unwrap_or_else(|| panic!("{what}: no httpGet"));
    (g.path.clone().unwrap_or_default(), g.port.clone())
}

#[test]
fn the_daemonset_uses_the_binarys_paths_ports_probes_and_capabilities() {
    let d = load();
    assert_eq!(d.daemonsets.len(), 1);
    let ds = &d.daemonsets[0];
    let pod = ds.spec.template.spec.as_ref().unwrap();
    assert_eq!(pod.host_network, Some(true));
    let c: &Container = pod.containers.iter().find(|c| c.name == "switchyard").unwrap();
    let mut args: Vec<String> = c.command.clone().unwrap_or_default();
    args.extend(c.args.clone().unwrap_or_default());
    assert_eq!(args[..2], ["switchyard".to_string(), "run".to_string()]);
    let f = flags(&args);

    // Every flag is one `run` has. (`--kube` comes with the API source, issue 14 items 1-3; a
    // build without it cannot check that one flag yet, and says so.)
    let help = std::process::Command::new(BIN).args(["run", "--help"]).output().unwrap();
    let help = String::from_utf8(help.stdout).unwrap();
    for flag in f.keys() {
        if flag == "--kube" && !help.contains("--kube") {
            eprintln!("NOTE: this build's `run` has no --kube yet; the DaemonSet's --kube is not checked");
            continue;
        }
        assert!(
            help.contains(&format!("{flag} ")) || help.contains(&format!("{flag}\n")),
            "{flag} is not a flag of `switchyard run`:\n{help}"
        );
    }

    // Paths: the binary's defaults, each inside a hostPath mounted at the same path.
    let socket_dir = Path::new(DEFAULT_SOCKET).parent().unwrap().to_str().unwrap();
    assert_eq!(f["--socket"], DEFAULT_SOCKET);
    assert_eq!(f["--vhost-dir"], DEFAULT_VHOST_DIR);
    assert_eq!(f["--cni-state"], DEFAULT_CNI_STATE);
    let volumes = pod.volumes.as_ref().unwrap();
    let host_path = |name: &str| {
        volumes.iter().find(|v| v.name == name).and_then(|v| v.host_path.as_ref()).map(|h| h.path.clone())
    };
    for dir in [socket_dir, DEFAULT_VHOST_DIR, DEFAULT_CNI_STATE] {
        let m = c.volume_mounts.as_ref().unwrap().iter().find(|m| m.mount_path == dir);
        let m = m.unwrap_or_else(|| panic!("{dir} is not mounted"));
        assert_eq!(host_path(&m.name).as_deref(), Some(dir), "{dir}: not the same path on the host");
    }

    // The metrics port: what --metrics listens on, the container port, the probes' port.
    let port: i32 = f["--metrics"].rsplit_once(':').unwrap().1.parse().unwrap();
    let cport = c.ports.as_ref().unwrap().iter().find(|p| p.container_port == port);
    let cport = cport.unwrap_or_else(|| panic!("--metrics port {port} is not a container port"));
    let named = cport.name.clone().unwrap();
    let resolves = |p: &IntOrString| match p {
        IntOrString::Int(n) => *n == port,
        IntOrString::String(s) => *s == named,
    };
    for (probe, path) in [
        (&c.liveness_probe, HEALTHZ_PATH),
        (&c.readiness_probe, READYZ_PATH),
        (&c.startup_probe, READYZ_PATH),
    ] {
        let (p, on) = http_probe(probe, path);
        assert_eq!(p, path);
        assert!(resolves(&on), "probe {path} on {on:?}, not the metrics port {port}");
    }
    let ann = ds.spec.template.metadata.as_ref().unwrap().annotations.clone().unwrap();
    assert_eq!(ann["prometheus.io/port"], port.to_string());
    assert_eq!(ann["prometheus.io/path"], switchyard_control::health::METRICS_PATH);

    // Capabilities, not privileged.
    let sc = c.security_context.as_ref().unwrap();
    assert_ne!(sc.privileged, Some(true));
    let caps = sc.capabilities.as_ref().unwrap();
    let added: BTreeSet<&str> = caps.add.as_ref().unwrap().iter().map(String::as_str).collect();
    // CHOWN and DAC_OVERRIDE: a vhost-user socket owned by the NAD's socketOwner, in the
    // device plugin's directory (mode 0750 of QEMU's user). BPF: AF_XDP ports (their XSKMAP
    // cannot be made without it: `setpriv --bounding-set` with NET_ADMIN, NET_RAW and IPC_LOCK
    // alone gets EPERM there, and BPF added is enough).
    let want = ["NET_ADMIN", "NET_RAW", "BPF", "IPC_LOCK", "SYS_NICE", "CHOWN", "DAC_OVERRIDE"];
    assert_eq!(added, BTreeSet::from(want));
    assert_eq!(caps.drop.as_deref(), Some(&["ALL".to_string()][..]));

    // Guaranteed QoS with whole CPUs (the static CPU manager's exclusive CPUs), hugepages.
    for k in pod.containers.iter().chain(pod.init_containers.iter().flatten()) {
        let r = k.resources.as_ref().unwrap();
        assert_eq!(r.requests, r.limits, "{}: requests != limits (not Guaranteed)", k.name);
    }
    let req = c.resources.as_ref().unwrap().requests.as_ref().unwrap();
    assert!(req["cpu"].0.parse::<u32>().is_ok_and(|n| n >= 1), "cpu {:?} is not whole CPUs", req["cpu"]);
    assert!(req.keys().any(|k| k.starts_with("hugepages-")));
    let huge =
        volumes.iter().find(|v| v.empty_dir.as_ref().and_then(|e| e.medium.as_deref()) == Some("HugePages"));
    let huge = huge.expect("a HugePages emptyDir");
    assert!(c.volume_mounts.as_ref().unwrap().iter().any(|m| m.name == huge.name));

    // The CNI plugin: installed into the host's CNI bin dir as `switchyard` (the NAD type),
    // copied from where the Containerfile puts it.
    let init = pod.init_containers.as_ref().unwrap().iter().find(|c| c.name == "install-cni").unwrap();
    let cmd = init.command.clone().unwrap();
    let (from, to) = (&cmd[cmd.len() - 2], Path::new(&cmd[cmd.len() - 1]));
    assert_eq!(to.file_name().unwrap(), "switchyard");
    let m = init.volume_mounts.as_ref().unwrap().iter().find(|m| to.starts_with(&m.mount_path)).unwrap();
    assert_eq!(host_path(&m.name).as_deref(), Some("/opt/cni/bin"));
    let containerfile = std::fs::read_to_string(deploy().join("Containerfile")).unwrap();
    let bin_dir = Path::new(from).parent().unwrap().to_str().unwrap();
    assert!(
        containerfile.contains(&format!("/out/switchyard-cni {bin_dir}/")),
        "Containerfile does not put switchyard-cni in {bin_dir}"
    );
    assert!(containerfile.contains("FROM docker.io/library/debian:12"));
    assert!(containerfile.contains("--features dpdk"));
    assert_eq!(init.image, c.image);

    // The service account exists and is the one bound to the role.
    let sa = pod.service_account_name.clone().unwrap();
    let ns = ds.metadata.namespace.clone().unwrap();
    assert!(d
        .accounts
        .iter()
        .any(|a| a.metadata.name.as_deref() == Some(&sa) && a.metadata.namespace.as_deref() == Some(&ns)));
    assert!(d.namespaces.iter().any(|n| n.metadata.name.as_deref() == Some(&ns)));
    let b = &d.bindings[0];
    assert_eq!(b.role_ref.name, d.roles[0].metadata.name.clone().unwrap());
    let subj = &b.subjects.as_ref().unwrap()[0];
    assert_eq!(
        (subj.kind.as_str(), subj.name.as_str(), subj.namespace.as_deref()),
        ("ServiceAccount", sa.as_str(), Some(ns.as_str()))
    );
}

#[test]
fn rbac_reads_exactly_what_the_api_source_watches_and_writes_events() {
    let d = load();
    assert_eq!(d.roles.len(), 1);
    let mut got = BTreeSet::new();
    for r in d.roles[0].rules.as_ref().unwrap() {
        for g in r.api_groups.as_ref().unwrap() {
            for res in r.resources.as_ref().unwrap() {
                let verbs: BTreeSet<&str> = r.verbs.iter().map(String::as_str).collect();
                got.insert((g.clone(), res.clone(), verbs.into_iter().collect::<Vec<_>>().join(",")));
            }
        }
    }
    // Every kind the API source watches (its own list), read; Events written as kube's
    // Recorder writes them (events.k8s.io: create, then patch for a repeat).
    let read = "get,list,watch";
    let mut want: BTreeSet<(String, String, String)> = Kind::ALL
        .iter()
        .map(|k| {
            let (group, _, _, plural) = k.gvk();
            (group.to_string(), plural.to_string(), read.to_string())
        })
        .collect();
    want.insert(("events.k8s.io".into(), "events".into(), "create,patch".into()));
    assert_eq!(got, want);
}

#[test]
fn the_example_resources_load_and_plan_a_bridge_for_a_labelled_node() {
    let d = load();
    for k in [
        "NetworkAttachmentDefinition",
        "VirtualMachineInstance",
        "NodeNetworkConfigurationPolicy",
        "MultiNetworkPolicy",
    ] {
        assert!(d.custom.get(k).is_some_and(|n| *n >= 1), "no example {k} in deploy/");
    }
    let st = switchyard_control::ClusterState::load_dir(&deploy().join("examples")).unwrap();
    assert!(st.problems.is_empty(), "{:?}", st.problems);
    assert_eq!((st.nads.len(), st.vmis.len(), st.nncps.len()), (1, 1, 1));
    let labels = BTreeMap::from([("switchyard.io/dpdk".to_string(), "true".to_string())]);
    let p = switchyard_control::plan(&st, "node-1", &labels, &Default::default());
    assert!(p.problems.is_empty(), "{:?}", p.problems);
    let br = p.config.bridges.iter().find(|b| b.name == "br1").expect("br1 planned");
    assert!(br.ports.iter().any(|p| p.name == "eth1"));
    // The same DaemonSet node selector.
    let ds = &load().daemonsets[0];
    let sel = ds.spec.template.spec.as_ref().unwrap().node_selector.clone().unwrap();
    assert_eq!(sel, labels);
}

/// The host directory mounted at `dir` in container `c` (a hostPath volume), if any.
fn host_dir(pod: &PodSpec, c: &Container, dir: &str) -> Option<String> {
    let m = c.volume_mounts.as_ref()?.iter().find(|m| m.mount_path == dir)?;
    let v = pod.volumes.as_ref()?.iter().find(|v| v.name == m.name)?;
    Some(v.host_path.as_ref()?.path.clone())
}

/// The capabilities a container adds (it must drop ALL and not be privileged).
fn added_caps(c: &Container) -> BTreeSet<String> {
    let sc = c.security_context.as_ref().unwrap();
    assert_ne!(sc.privileged, Some(true), "{}", c.name);
    let caps = sc.capabilities.as_ref().unwrap();
    assert_eq!(caps.drop.as_deref(), Some(&["ALL".to_string()][..]), "{}", c.name);
    caps.add.clone().unwrap_or_default().into_iter().collect()
}

/// The one custom resource of `kind` under deploy/kubevirt/.
fn kubevirt_object<'a>(d: &'a Deploy, kind: &str) -> &'a serde_json::Value {
    let mut it = d.objects.iter().filter(|(f, v)| f.starts_with("kubevirt/") && v["kind"] == kind);
    let (_, v) = it.next().unwrap_or_else(|| panic!("no {kind} in deploy/kubevirt/"));
    assert!(it.next().is_none(), "more than one {kind} in deploy/kubevirt/");
    v
}

/// The device-plugin container's configuration, parsed as `switchyard-kubevirt` parses it.
fn device_plugin_config(c: &Container) -> PluginConfig {
    let mut args: Vec<String> = c.command.clone().unwrap_or_default();
    args.extend(c.args.clone().unwrap_or_default());
    assert_eq!(args[..2], ["switchyard-kubevirt".to_string(), "device-plugin".to_string()]);
    match Cli::try_parse_from(&args).unwrap_or_else(|e| panic!("{args:?}: {e}")).cmd {
        Cmd::DevicePlugin(a) => a.into(),
        Cmd::HookSidecar { .. } => unreachable!("parsed device-plugin"),
    }
}

#[test]
fn the_device_plugin_uses_the_kubelets_directories_and_the_switchs_sockets() {
    let d = load();
    let pod = d.daemonsets[0].spec.template.spec.as_ref().unwrap();
    let c = |name: &str| pod.containers.iter().find(|c| c.name == name).unwrap();
    let (switch, dp) = (c("switchyard"), c("device-plugin"));
    let cfg = device_plugin_config(dp);

    // The kubelet's socket and the plugin's own live in the kubelet's device-plugins
    // directory: the same path on the host, where the kubelet looks.
    assert_eq!(cfg.plugin_dir, Path::new(device_plugin::DEFAULT_PLUGIN_DIR));
    assert_eq!(
        cfg.plugin_dir.join(device_plugin::KUBELET_SOCKET),
        Path::new("/var/lib/kubelet/device-plugins/kubelet.sock")
    );
    let plugin_dir = cfg.plugin_dir.to_str().unwrap();
    assert_eq!(host_dir(pod, dp, plugin_dir).as_deref(), Some(plugin_dir));
    // Multus reads the device-info from its host directory.
    assert_eq!(cfg.devinfo_dir, Path::new(device_plugin::DEFAULT_DEVINFO_DIR));
    let devinfo = cfg.devinfo_dir.to_str().unwrap();
    assert_eq!(host_dir(pod, dp, devinfo).as_deref(), Some(devinfo));

    // The switch's vhost-user directory (where the CNI ADD puts a device's socket) and its
    // control socket (the devices' health): the switch's own, from the same host directories.
    let f = flags(&[switch.command.clone().unwrap(), switch.args.clone().unwrap()].concat());
    assert_eq!(cfg.vhost_dir, f["--vhost-dir"]);
    assert_eq!(host_dir(pod, dp, &cfg.vhost_dir), host_dir(pod, switch, &f["--vhost-dir"]));
    assert!(host_dir(pod, dp, &cfg.vhost_dir).is_some());
    let ctl = cfg.switch_socket.clone().expect("--switch-socket");
    assert_eq!(ctl, Path::new(&f["--socket"]));
    let ctl_dir = ctl.parent().unwrap().to_str().unwrap();
    assert_eq!(host_dir(pod, dp, ctl_dir), host_dir(pod, switch, ctl_dir));
    assert!(host_dir(pod, dp, ctl_dir).is_some());
    // Every socket path the plugin will use fits sun_path, as its own start-up check says.
    cfg.check().unwrap_or_else(|e| panic!("{e}"));

    // The directories belong to QEMU's user: CHOWN; looking into them (0750): DAC_READ_SEARCH.
    assert_eq!(added_caps(dp), BTreeSet::from(["CHOWN".to_string(), "DAC_READ_SEARCH".to_string()]));

    // The binary is in the image, where the command finds it.
    let containerfile = std::fs::read_to_string(deploy().join("Containerfile")).unwrap();
    assert!(containerfile.contains("-p switchyard-kubevirt"));
    assert!(containerfile.contains("/out/switchyard-kubevirt /usr/local/bin/"));
    assert_eq!(dp.image, switch.image);
}

#[test]
fn the_kubevirt_binding_runs_the_hook_sidecar_for_the_device_plugins_resource() {
    let d = load();
    let pod = d.daemonsets[0].spec.template.spec.as_ref().unwrap();
    let dp = pod.containers.iter().find(|c| c.name == "device-plugin").unwrap();
    let cfg = device_plugin_config(dp);

    // The sidecar as the image's entrypoint runs it (no arguments: its defaults).
    let Cmd::HookSidecar { binding, socket, network_info, .. } =
        Cli::try_parse_from(["switchyard-kubevirt", "hook-sidecar"]).unwrap().cmd
    else {
        unreachable!("parsed hook-sidecar")
    };
    // virt-launcher looks for sidecar sockets in this directory; `downwardAPI: device-info`
    // writes the networks' device-info to this file.
    assert_eq!(socket.parent().unwrap(), Path::new("/var/run/kubevirt-hooks"));
    assert_eq!(network_info, Path::new("/etc/podinfo/network-info"));

    // The registration: the binding the sidecar rewrites, the image the Containerfile builds
    // with the sidecar as its entrypoint, the device-info passed down.
    let reg = registered_binding(&d, &binding);
    assert_eq!(reg["downwardAPI"], "device-info");
    let image = reg["sidecarImage"].as_str().unwrap();
    let containerfile = std::fs::read_to_string(deploy().join("Containerfile")).unwrap();
    assert!(containerfile.contains(&format!("--target hook-sidecar \\\n#     -t {image} .")), "{image}");
    let stage = containerfile.split("AS hook-sidecar").nth(1).expect("a hook-sidecar stage");
    let stage = stage.split("FROM ").next().unwrap();
    assert!(
        stage.contains(r#"ENTRYPOINT ["/usr/local/bin/switchyard-kubevirt", "hook-sidecar"]"#),
        "{stage}"
    );

    // The VM of deploy/kubevirt/ and the example VMI: their interfaces use that binding.
    let vm = kubevirt_object(&d, "VirtualMachine");
    assert_eq!(bound_interfaces(&d, &cfg, &binding, vm, &vm["spec"]["template"]["spec"]), 1);
    let mut vmis =
        d.objects.iter().filter(|(f, v)| f.starts_with("examples/") && v["kind"] == "VirtualMachineInstance");
    let (_, vmi) = vmis.next().expect("an example VMI");
    assert_eq!(bound_interfaces(&d, &cfg, &binding, vmi, &vmi["spec"]), 1);
}

/// The KubeVirt registration of binding `name`: the one merge patch of the KubeVirt CR under
/// deploy/kubevirt/, which must change `spec.configuration.network.binding` and nothing else,
/// and hold no list (a merge patch replaces a list whole: the CR's `featureGates`, say).
fn registered_binding<'a>(d: &'a Deploy, name: &str) -> &'a serde_json::Value {
    let mut it = d.patches.iter().filter(|(f, _)| f.starts_with("kubevirt/"));
    let (file, patch) = it.next().expect("a merge patch of the KubeVirt CR in deploy/kubevirt/");
    assert!(it.next().is_none(), "more than one patch in deploy/kubevirt/");
    fn leaves(v: &serde_json::Value, path: String, out: &mut Vec<String>) {
        match v {
            serde_json::Value::Object(m) if !m.is_empty() => {
                for (k, v) in m {
                    leaves(v, format!("{path}/{k}"), out);
                }
            }
            serde_json::Value::Array(_) => {
                panic!("{path}: a list in a merge patch replaces the CR's whole list")
            }
            _ => out.push(path),
        }
    }
    let mut paths = Vec::new();
    leaves(patch, String::new(), &mut paths);
    for p in &paths {
        assert!(
            p.starts_with("/spec/configuration/network/binding/"),
            "{file}: {p} is not under the bindings"
        );
    }
    let reg = &patch["spec"]["configuration"]["network"]["binding"][name];
    assert!(reg.is_object(), "{file}: no binding {name:?} registered: {patch}");
    reg
}

/// Checks the interfaces of `spec` (a VMI's spec, or a VM's template spec; `obj` the object)
/// that use a network binding plugin: each names `binding` (the sidecar's, registered), on a
/// network whose NAD names the device plugin's resource and has a config the CNI plugin
/// takes, in vhostuser mode, on the switch's control socket, its socket owned by the user the
/// plugin gives the directories. Returns how many there are.
fn bound_interfaces(
    d: &Deploy,
    cfg: &PluginConfig,
    binding: &str,
    obj: &serde_json::Value,
    spec: &serde_json::Value,
) -> usize {
    let what = format!("{} {}", obj["kind"], obj["metadata"]["name"]);
    let mut n = 0;
    for iface in spec["domain"]["devices"]["interfaces"].as_array().unwrap() {
        let Some(name) = iface["binding"]["name"].as_str() else { continue };
        assert_eq!(name, binding, "{what}: interface {} uses a binding nothing registers", iface["name"]);
        let net = spec["networks"].as_array().unwrap().iter().find(|n| n["name"] == iface["name"]).unwrap();
        let nad_name = net["multus"]["networkName"].as_str().unwrap();
        let nad = d
            .objects
            .iter()
            .map(|(_, v)| v)
            .find(|v| {
                v["kind"] == "NetworkAttachmentDefinition"
                    && v["metadata"]["name"] == nad_name
                    && v["metadata"]["namespace"] == obj["metadata"]["namespace"]
            })
            .unwrap_or_else(|| panic!("{what}: no NAD {nad_name} in its namespace"));
        assert_eq!(
            nad["metadata"]["annotations"]["k8s.v1.cni.cncf.io/resourceName"],
            cfg.resource.as_str(),
            "NAD {nad_name}: not the device plugin's resource"
        );
        let conf = switchyard_cni::config::NetConf::parse(nad["spec"]["config"].as_str().unwrap().as_bytes())
            .unwrap_or_else(|e| panic!("NAD {nad_name}: {e}"));
        assert_eq!(conf.mode, switchyard_cni::config::Mode::Vhostuser);
        assert_eq!(conf.socket, Path::new(DEFAULT_SOCKET));
        assert_eq!((conf.socket_owner, conf.socket_group), (Some(cfg.owner), Some(cfg.group)));
        n += 1;
    }
    n
}

/// `cmd args`'s stdout, or None when the command is not there.
fn output(cmd: &str, args: &[&str]) -> Option<std::process::Output> {
    std::process::Command::new(cmd).args(args).output().ok()
}

/// The packages the Containerfile's last stage (the switchyard image) installs: the words of
/// its `apt-get install` that are not options, `${DPDK_EXTRA}` at its default (empty).
fn runtime_packages(containerfile: &str) -> Vec<String> {
    let stage = containerfile.rsplit("\nFROM ").next().unwrap();
    let joined = stage.replace("\\\n", " ");
    let line =
        joined.lines().find(|l| l.contains("apt-get install")).expect("an apt-get install in the last stage");
    let words = line.split("apt-get install").nth(1).unwrap().split("&&").next().unwrap();
    assert!(stage.contains("ARG DPDK_EXTRA=\"\"\n"), "DPDK_EXTRA's default is not empty");
    words
        .split_whitespace()
        .filter(|w| !w.starts_with('-') && *w != "${DPDK_EXTRA}")
        .map(str::to_string)
        .collect()
}

/// The package that owns `path` (dpkg -S; the path as given, else its canonical form, as
/// /lib is a link to /usr/lib).
fn owner(path: &Path) -> Option<String> {
    let canon = std::fs::canonicalize(path).ok();
    for p in [Some(path.to_path_buf()), canon].into_iter().flatten() {
        let o = output("dpkg", &["-S", p.to_str()?])?;
        if o.status.success() {
            let s = String::from_utf8_lossy(&o.stdout);
            let pkg = s.lines().next()?.split(':').next()?.trim().to_string();
            return Some(pkg);
        }
    }
    None
}

/// The image's run-time libraries: simulates the last stage's `apt-get install` on an empty
/// package database against this host's Debian 12 package lists (every package the install
/// would bring, dependencies included: a superset of what debian:12-slim adds to its own), and
/// checks that each shared library `ldd` finds for the built `switchyard` belongs to one of
/// them, and so does each driver EAL needs from its plugin directory. Debian's `dpdk` with
/// `--no-install-recommends` (what the image had) brings no librte library at all, and fails
/// here.
#[test]
fn the_image_installs_every_library_and_driver_the_binary_loads() {
    let containerfile = std::fs::read_to_string(deploy().join("Containerfile")).unwrap();
    let last = containerfile.rsplit("\nFROM ").next().unwrap();
    assert!(last.starts_with("docker.io/library/debian:12"), "{last}");
    let bookworm =
        std::fs::read_to_string("/etc/os-release").is_ok_and(|s| s.contains("VERSION_CODENAME=bookworm"));
    let tools = ["apt-get", "dpkg", "ldd"].iter().all(|t| output(t, &["--version"]).is_some());
    if !bookworm || !tools {
        eprintln!("SKIP: needs a Debian 12 host with apt-get, dpkg and ldd (the image's base)");
        return;
    }
    let lists = std::fs::read_dir("/var/lib/apt/lists").into_iter().flatten().flatten();
    if !lists.into_iter().any(|e| e.file_name().to_string_lossy().contains("_Packages")) {
        eprintln!("SKIP: no apt package lists on this host (apt-get update never ran)");
        return;
    }
    let pkgs = runtime_packages(&containerfile);
    let dir = tempfile::tempdir().unwrap();
    let status = dir.path().join("status");
    std::fs::write(&status, "").unwrap();
    let mut args = vec![
        "install".to_string(),
        "-s".into(),
        "--no-install-recommends".into(),
        "-o".into(),
        format!("Dir::State::status={}", status.display()),
    ];
    args.extend(pkgs.iter().cloned());
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let sim = output("apt-get", &args).unwrap();
    let text = String::from_utf8_lossy(&sim.stdout);
    assert!(sim.status.success(), "apt-get {args:?}: {}", String::from_utf8_lossy(&sim.stderr));
    let installed: BTreeSet<String> = text
        .lines()
        .filter_map(|l| l.strip_prefix("Inst "))
        .filter_map(|l| l.split_whitespace().next())
        .map(str::to_string)
        .collect();
    for p in &pkgs {
        assert!(installed.contains(p), "{p} is in the list but apt would not install it");
    }

    // What the binary links: every library ldd resolves (a library not found here fails).
    let ldd = output("ldd", &[BIN]).unwrap();
    let ldd = String::from_utf8_lossy(&ldd.stdout);
    let mut libs: Vec<PathBuf> = Vec::new();
    for l in ldd.lines() {
        assert!(!l.contains("not found"), "{BIN}: {l}");
        if let Some((_, rest)) = l.split_once("=> ") {
            libs.push(PathBuf::from(rest.split(" (").next().unwrap().trim()));
        } else if let Some(p) = l.trim().split(" (").next().filter(|p| p.starts_with('/')) {
            libs.push(PathBuf::from(p)); // the dynamic loader
        }
    }
    let rte = libs.iter().filter(|p| p.file_name().unwrap().to_string_lossy().starts_with("librte_")).count();
    if cfg!(feature = "dpdk") {
        assert!(rte > 0, "a --features dpdk build that links no DPDK library:\n{ldd}");
    } else {
        eprintln!("NOTE: built without --features dpdk: the DPDK libraries are not checked (run with --features dpdk)");
    }

    // What EAL loads at start: every driver in its plugin directory (the packages' links there);
    // those switchyard needs: the ring mempool (the default mempool ops of every mbuf pool), the
    // PCI and vdev buses, and the net drivers ports/src/dpdk.rs supports (virtio_user is in
    // net_virtio; mlx5 is optional, DPDK_EXTRA).
    if cfg!(feature = "dpdk") {
        let header =
            std::fs::read_to_string("/usr/include/x86_64-linux-gnu/dpdk/rte_build_config.h").unwrap();
        let pmd_dir = header
            .lines()
            .find_map(|l| l.strip_prefix("#define RTE_EAL_PMD_PATH "))
            .expect("RTE_EAL_PMD_PATH")
            .trim_matches('"')
            .to_string();
        for drv in [
            "mempool_ring",
            "bus_pci",
            "bus_vdev",
            "net_ring",
            "net_null",
            "net_pcap",
            "net_vhost",
            "net_virtio",
            "net_tap",
            "net_af_packet",
            "net_iavf",
        ] {
            let so = Path::new(&pmd_dir).join(format!("librte_{drv}.so"));
            let so = std::fs::read_dir(&pmd_dir)
                .unwrap()
                .filter_map(Result::ok)
                .map(|e| e.path())
                .find(|p| p.file_name().unwrap().to_string_lossy().starts_with(&format!("librte_{drv}.so.")))
                .unwrap_or_else(|| panic!("{}: no such driver on this host", so.display()));
            libs.push(so);
        }
    }
    let mut missing = Vec::new();
    for lib in &libs {
        let pkg = owner(lib).unwrap_or_else(|| panic!("{}: no package owns it (dpkg -S)", lib.display()));
        if !installed.contains(&pkg) {
            missing.push(format!("{} ({pkg})", lib.display()));
        }
    }
    assert!(missing.is_empty(), "the image would lack: {missing:?}");
}

/// Whether `name` matches the one-segment glob `pat` (`*`, `?`).
fn glob_segment(pat: &[u8], name: &[u8]) -> bool {
    match (pat.first(), name.first()) {
        (None, None) => true,
        (Some(b'*'), _) => {
            glob_segment(&pat[1..], name) || (!name.is_empty() && glob_segment(pat, &name[1..]))
        }
        (Some(b'?'), Some(_)) => glob_segment(&pat[1..], &name[1..]),
        (Some(p), Some(n)) if p == n => glob_segment(&pat[1..], &name[1..]),
        _ => false,
    }
}

/// Whether the path segments `path` match the pattern segments `pat` (`**`: any number of
/// segments).
fn glob_path(pat: &[&str], path: &[&str]) -> bool {
    match (pat.first(), path.first()) {
        (None, None) => true,
        (Some(&"**"), _) => glob_path(&pat[1..], path) || (!path.is_empty() && glob_path(pat, &path[1..])),
        (Some(p), Some(n)) => glob_segment(p.as_bytes(), n.as_bytes()) && glob_path(&pat[1..], &path[1..]),
        _ => false,
    }
}

/// Whether the build context leaves out `path` (relative to the context), by the rules of
/// .dockerignore as Docker and podman read it: patterns relative to the context root, `*` and
/// `?` within a segment, `**` any number of segments, `!` takes a path back, the last matching
/// pattern decides, and a path is left out when it or a directory above it matches.
fn ignored_by(patterns: &[String], path: &str) -> bool {
    let segs: Vec<&str> = path.trim_end_matches('/').split('/').collect();
    let mut out = false;
    for p in patterns {
        let (neg, p) = match p.strip_prefix('!') {
            Some(p) => (true, p),
            None => (false, p.as_str()),
        };
        let pat: Vec<&str> = p.trim_start_matches('/').trim_end_matches('/').split('/').collect();
        if (1..=segs.len()).any(|n| glob_path(&pat, &segs[..n])) {
            out = !neg;
        }
    }
    out
}

/// `podman build -f deploy/Containerfile .` sends the repository root as its context, and the
/// build stage copies all of it (`COPY . .`): .dockerignore must leave out the build outputs
/// (target/ alone is tens of GB) and .git, and keep everything the build reads. Checked with
/// git: every tracked file stays in the context (so `cargo build --locked` sees the checkout as
/// a clone would), and every path git ignores (build outputs, fuzz corpora) is left out, as are
/// the usual outputs when they are not there.
#[test]
fn the_build_context_is_the_checkout_without_its_outputs() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let text = std::fs::read_to_string(root.join(".dockerignore")).expect("a .dockerignore");
    let patterns: Vec<String> = text
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .map(str::to_string)
        .collect();
    for p in &patterns {
        assert!(!p.contains('[') && !p.contains('\\'), "{p}: a pattern this test cannot read");
    }
    assert!(
        !root.join(".containerignore").exists(),
        ".containerignore would win over .dockerignore in podman"
    );

    let git = |args: &[&str]| {
        let o = std::process::Command::new("git").current_dir(root).args(args).output().ok()?;
        o.status.success().then(|| String::from_utf8_lossy(&o.stdout).into_owned())
    };
    let Some(tracked) = git(&["ls-files", "-z"]) else {
        eprintln!("SKIP: not a git checkout (or no git): the context cannot be compared");
        return;
    };
    let tracked: Vec<&str> = tracked.split('\0').filter(|f| !f.is_empty()).collect();
    assert!(tracked.contains(&"Cargo.lock") && tracked.contains(&"deploy/Containerfile"));
    let dropped: Vec<&&str> = tracked.iter().filter(|f| ignored_by(&patterns, f)).collect();
    assert!(dropped.is_empty(), "tracked files left out of the build context: {dropped:?}");

    // The members' manifests and every target's source, as cargo sees them.
    let meta = std::process::Command::new(env!("CARGO"))
        .current_dir(root)
        .args(["metadata", "--no-deps", "--offline", "--format-version", "1"])
        .output()
        .unwrap();
    assert!(meta.status.success(), "{}", String::from_utf8_lossy(&meta.stderr));
    let meta: serde_json::Value = serde_json::from_slice(&meta.stdout).unwrap();
    let mut needed = 0;
    for pkg in meta["packages"].as_array().unwrap() {
        let files = std::iter::once(&pkg["manifest_path"])
            .chain(pkg["targets"].as_array().unwrap().iter().map(|t| &t["src_path"]));
        for f in files {
            let rel =
                Path::new(f.as_str().unwrap()).strip_prefix(root).unwrap().to_str().unwrap().to_string();
            assert!(!ignored_by(&patterns, &rel), "{rel}: cargo needs it, the context leaves it out");
            needed += 1;
        }
    }
    assert!(needed > 10, "{needed}");

    let ignored =
        git(&["ls-files", "-z", "--others", "--ignored", "--exclude-standard", "--directory"]).unwrap();
    let mut outputs: Vec<&str> = ignored.split('\0').filter(|f| !f.is_empty()).collect();
    outputs.extend([
        ".git",
        ".git/HEAD",
        "target/release/switchyard",
        "fuzz/target/x",
        "fuzz/corpus/x",
        "fuzz/artifacts/x",
    ]);
    let kept: Vec<&&str> = outputs.iter().filter(|f| !ignored_by(&patterns, f)).collect();
    assert!(kept.is_empty(), "build outputs or git's objects in the build context: {kept:?}");
}

/// `cargo build --release` with no `-p` builds the workspace's default members: they must hold
/// the binaries docs/cni.md and docs/kubevirt.md install from target/release.
#[test]
fn a_plain_release_build_builds_every_binary_a_node_installs() {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let out = std::process::Command::new(cargo)
        .args(["metadata", "--no-deps", "--format-version", "1", "--offline"])
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .output()
        .expect("runs cargo metadata");
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let m: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let defaults: Vec<&str> = m["workspace_default_members"]
        .as_array()
        .expect("cargo 1.71+")
        .iter()
        .filter_map(|v| v.as_str())
        .collect();
    let bins: Vec<String> = m["packages"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|p| defaults.contains(&p["id"].as_str().unwrap_or_default()))
        .flat_map(|p| p["targets"].as_array().unwrap().iter())
        .filter(|t| t["kind"].as_array().is_some_and(|k| k.iter().any(|k| k == "bin")))
        .filter_map(|t| t["name"].as_str().map(str::to_string))
        .collect();
    for want in ["switchyard", "switchyard-cni", "switchyard-kubevirt"] {
        assert!(bins.iter().any(|b| b == want), "`cargo build --release` does not build {want}: {bins:?}");
    }
}
