//! The device plugin against a kubelet stand-in that speaks the device plugin API v1beta1 as the
//! kubelet does: it serves `Registration` on `kubelet.sock`, and on each Register dials the
//! plugin's endpoint, asks its options, and follows its ListAndWatch stream; a restarted
//! kubelet first removes every socket in the directory, as the kubelet's device manager does.

use std::path::{Path, PathBuf};
use std::time::Duration;
use switchyard_kubevirt::device_plugin::{self, PluginConfig};
use switchyard_kubevirt::proto::deviceplugin::device_plugin_client::DevicePluginClient;
use switchyard_kubevirt::proto::deviceplugin::registration_server::{Registration, RegistrationServer};
use switchyard_kubevirt::proto::deviceplugin::{
    AllocateRequest, ContainerAllocateRequest, ContainerPreferredAllocationRequest, Device, Empty,
    PreferredAllocationRequest, RegisterRequest,
};
use switchyard_kubevirt::uds;
use tokio::sync::{mpsc, oneshot};
use tonic::{Request, Response, Status};

const WAIT: Duration = Duration::from_secs(10);

/// What the stand-in saw: registrations and device lists.
enum Seen {
    Registered(RegisterRequest),
    Devices(Vec<Device>),
}

struct Kubelet {
    dir: PathBuf,
    seen: mpsc::UnboundedSender<Seen>,
}

#[tonic::async_trait]
impl Registration for Kubelet {
    async fn register(&self, r: Request<RegisterRequest>) -> Result<Response<Empty>, Status> {
        let r = r.into_inner();
        if r.version != device_plugin::API_VERSION {
            return Err(Status::invalid_argument(format!("unsupported version {:?}", r.version)));
        }
        let endpoint = self.dir.join(&r.endpoint);
        let seen = self.seen.clone();
        let _ = seen.send(Seen::Registered(r));
        // As the kubelet: dial the plugin, then follow its device list.
        tokio::spawn(async move {
            let Ok(ch) = uds::connect(&endpoint).await else { return };
            let mut c = DevicePluginClient::new(ch);
            if c.get_device_plugin_options(Empty {}).await.is_err() {
                return;
            }
            let Ok(s) = c.list_and_watch(Empty {}).await else { return };
            let mut s = s.into_inner();
            while let Ok(Some(m)) = s.message().await {
                let _ = seen.send(Seen::Devices(m.devices));
            }
        });
        Ok(Response::new(Empty {}))
    }
}

/// Starts a kubelet stand-in in `dir`, removing every socket there first (as a starting
/// kubelet does); dropping the sender stops it.
fn start_kubelet(dir: &Path, seen: mpsc::UnboundedSender<Seen>) -> oneshot::Sender<()> {
    for e in std::fs::read_dir(dir).unwrap().flatten() {
        let _ = std::fs::remove_file(e.path());
    }
    let incoming = uds::bind(&dir.join(device_plugin::KUBELET_SOCKET)).unwrap();
    let (tx, rx) = oneshot::channel::<()>();
    let svc = RegistrationServer::new(Kubelet { dir: dir.to_path_buf(), seen });
    tokio::spawn(tonic::transport::Server::builder().add_service(svc).serve_with_incoming_shutdown(
        incoming,
        async {
            let _ = rx.await;
        },
    ));
    tx
}

async fn next(rx: &mut mpsc::UnboundedReceiver<Seen>) -> Seen {
    tokio::time::timeout(WAIT, rx.recv()).await.expect("the kubelet saw nothing in 10 s").expect("closed")
}

async fn registered(rx: &mut mpsc::UnboundedReceiver<Seen>) -> RegisterRequest {
    loop {
        if let Seen::Registered(r) = next(rx).await {
            return r;
        }
    }
}

/// Waits for a device list with the healths `want` (id, health), in order.
async fn devices_are(rx: &mut mpsc::UnboundedReceiver<Seen>, want: &[(&str, &str)]) -> Vec<Device> {
    loop {
        if let Seen::Devices(d) = next(rx).await {
            if d.iter().map(|d| (d.id.as_str(), d.health.as_str())).eq(want.iter().copied()) {
                return d;
            }
        }
    }
}

/// Waits for a device list where every device has health `h`.
async fn devices_all(rx: &mut mpsc::UnboundedReceiver<Seen>, h: &str) -> Vec<Device> {
    loop {
        if let Seen::Devices(d) = next(rx).await {
            if d.iter().all(|d| d.health == h) {
                return d;
            }
        }
    }
}

fn start_plugin(cfg: PluginConfig) -> (oneshot::Sender<()>, tokio::task::JoinHandle<()>) {
    let (tx, rx) = oneshot::channel::<()>();
    let h = tokio::spawn(async move {
        device_plugin::run(cfg, async {
            let _ = rx.await;
        })
        .await
        .expect("the device plugin failed");
    });
    (tx, h)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn registers_lists_allocates_and_survives_restarts() {
    let tmp = tempfile::tempdir().unwrap();
    let kdir = tmp.path().join("device-plugins");
    std::fs::create_dir_all(&kdir).unwrap();
    let switch_sock = tmp.path().join("switch.sock");
    let switch = std::os::unix::net::UnixListener::bind(&switch_sock).unwrap();
    // The directories go to whoever runs the test (root or not).
    let me = std::fs::metadata(tmp.path()).unwrap();
    let cfg = PluginConfig {
        resource: "switchyard.io/blue".into(),
        devices: 2,
        vhost_dir: tmp.path().join("vhost").display().to_string(),
        container_dir: device_plugin::DEFAULT_CONTAINER_DIR.into(),
        plugin_dir: kdir.clone(),
        devinfo_dir: tmp.path().join("devinfo"),
        owner: std::os::unix::fs::MetadataExt::uid(&me),
        group: std::os::unix::fs::MetadataExt::gid(&me),
        switch_socket: Some(switch_sock.clone()),
        poll: Duration::from_millis(100),
        qemu_listens: false,
        spare: 1,
    };
    let (seen_tx, mut seen) = mpsc::unbounded_channel();
    let kubelet = start_kubelet(&kdir, seen_tx.clone());
    let (stop_plugin, plugin) = start_plugin(cfg.clone());

    let r = registered(&mut seen).await;
    assert_eq!((r.version.as_str(), r.resource_name.as_str()), ("v1beta1", "switchyard.io/blue"));
    assert_eq!(r.endpoint, "switchyard-blue.sock");
    assert!(r.options.unwrap().get_preferred_allocation_available);
    let d = devices_all(&mut seen, "Healthy").await;
    assert_eq!(d.iter().map(|d| d.id.as_str()).collect::<Vec<_>>(), ["blue-0", "blue-1"]);

    // The switch goes away: every device turns unhealthy; it comes back: healthy again.
    drop(switch);
    std::fs::remove_file(&switch_sock).unwrap();
    devices_all(&mut seen, "Unhealthy").await;
    let switch = std::os::unix::net::UnixListener::bind(&switch_sock).unwrap();
    devices_all(&mut seen, "Healthy").await;
    // One device's directory goes (a node cleanup): that device alone turns unhealthy, and
    // healthy again when the directory is back.
    let dir1 = format!("{}/dev-blue-1", cfg.vhost_dir);
    std::fs::remove_dir(&dir1).unwrap();
    devices_are(&mut seen, &[("blue-0", "Healthy"), ("blue-1", "Unhealthy")]).await;
    std::fs::create_dir(&dir1).unwrap();
    devices_are(&mut seen, &[("blue-0", "Healthy"), ("blue-1", "Healthy")]).await;
    // Attachments come (the switch's sockets appear in both directories): one spare device is
    // kept, so the pool grows to three; they go: it shrinks back to two.
    let socks: Vec<_> = ["dev-blue-0", "dev-blue-1"]
        .iter()
        .map(|d| {
            let p = Path::new(&cfg.vhost_dir).join(d).join("sock");
            (std::os::unix::net::UnixListener::bind(&p).unwrap(), p)
        })
        .collect();
    devices_are(&mut seen, &[("blue-0", "Healthy"), ("blue-1", "Healthy"), ("blue-2", "Healthy")]).await;
    assert!(Path::new(&cfg.vhost_dir).join("dev-blue-2").is_dir(), "a device without its directory");
    for (l, p) in socks {
        drop(l);
        std::fs::remove_file(p).unwrap();
    }
    devices_are(&mut seen, &[("blue-0", "Healthy"), ("blue-1", "Healthy")]).await;

    // Allocate, as the kubelet calls it for a pod's container.
    let mut c = DevicePluginClient::new(uds::connect(&kdir.join(&r.endpoint)).await.unwrap());
    let pref = c
        .get_preferred_allocation(PreferredAllocationRequest {
            container_requests: vec![ContainerPreferredAllocationRequest {
                available_device_i_ds: vec!["blue-1".into(), "blue-0".into()],
                must_include_device_i_ds: vec![],
                allocation_size: 1,
            }],
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(pref.container_responses[0].device_i_ds, ["blue-0"]);
    let a = c
        .allocate(AllocateRequest {
            container_requests: vec![ContainerAllocateRequest { devices_ids: vec!["blue-1".into()] }],
        })
        .await
        .unwrap()
        .into_inner();
    let m = &a.container_responses[0].mounts;
    assert_eq!(m.len(), 1);
    assert_eq!(m[0].container_path, "/var/run/switchyard/kubevirt/blue-0");
    assert_eq!(m[0].host_path, format!("{}/dev-blue-1", cfg.vhost_dir));
    assert!(!m[0].read_only);
    assert!(Path::new(&m[0].host_path).is_dir());
    let info: serde_json::Value =
        serde_json::from_slice(&std::fs::read(cfg.devinfo_path("blue-1")).unwrap()).unwrap();
    assert_eq!(
        info,
        serde_json::json!({"type": "vhost-user", "version": "1.1.0",
            "vhost-user": {"mode": "client", "path": "/var/run/switchyard/kubevirt/blue-0/sock"}})
    );
    let e = c
        .allocate(AllocateRequest {
            container_requests: vec![ContainerAllocateRequest { devices_ids: vec!["red-0".into()] }],
        })
        .await
        .unwrap_err();
    assert_eq!(e.code(), tonic::Code::InvalidArgument);

    // The kubelet restarts (removing the plugin's socket): the plugin registers again.
    drop(kubelet);
    tokio::time::sleep(Duration::from_millis(200)).await;
    let kubelet = start_kubelet(&kdir, seen_tx.clone());
    assert_eq!(registered(&mut seen).await.resource_name, "switchyard.io/blue");
    devices_all(&mut seen, "Healthy").await;

    // The plugin restarts: it registers again and lists its devices to the same kubelet.
    stop_plugin.send(()).unwrap();
    plugin.await.unwrap();
    assert!(!kdir.join(&r.endpoint).exists(), "the stopped plugin left its socket");
    let (stop_plugin, plugin) = start_plugin(cfg.clone());
    assert_eq!(registered(&mut seen).await.endpoint, "switchyard-blue.sock");
    assert_eq!(devices_all(&mut seen, "Healthy").await.len(), 2);

    stop_plugin.send(()).unwrap();
    plugin.await.unwrap();
    drop((kubelet, switch));
}

/// A kubelet that refuses every registration, saying why (as the kubelet does for a resource
/// name another plugin holds, or an API version it does not serve).
struct Refusing(std::sync::Arc<std::sync::atomic::AtomicUsize>);

const REFUSAL: &str = "resource switchyard.io/blue is served by another plugin";

#[tonic::async_trait]
impl Registration for Refusing {
    async fn register(&self, _: Request<RegisterRequest>) -> Result<Response<Empty>, Status> {
        self.0.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        Err(Status::invalid_argument(REFUSAL))
    }
}

/// What a tracing subscriber writes, kept for the test to read.
#[derive(Clone, Default)]
struct Log(std::sync::Arc<std::sync::Mutex<Vec<u8>>>);

impl std::io::Write for Log {
    fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(b);
        Ok(b.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// A refused registration is a warning with the kubelet's reason (at info level, the
/// default, a debug line would not show: the plugin would look registered and idle), once
/// for a kubelet that keeps refusing for that reason while the plugin retries.
#[tokio::test]
async fn a_refused_registration_is_a_warning_with_the_kubelets_reason() {
    let log = Log::default();
    let w = log.clone();
    // The test's runtime has one thread: the plugin's tasks log through this subscriber.
    let _guard = tracing::subscriber::set_default(
        tracing_subscriber::fmt()
            .with_writer(move || w.clone())
            .with_ansi(false)
            .with_max_level(tracing::Level::INFO)
            .finish(),
    );
    let tmp = tempfile::tempdir().unwrap();
    let kdir = tmp.path().join("device-plugins");
    std::fs::create_dir_all(&kdir).unwrap();
    let incoming = uds::bind(&kdir.join(device_plugin::KUBELET_SOCKET)).unwrap();
    let tries = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let kubelet = tokio::spawn(
        tonic::transport::Server::builder()
            .add_service(RegistrationServer::new(Refusing(tries.clone())))
            .serve_with_incoming(incoming),
    );
    let cfg = PluginConfig {
        resource: "switchyard.io/blue".into(),
        devices: 1,
        vhost_dir: tmp.path().join("vhost").display().to_string(),
        container_dir: device_plugin::DEFAULT_CONTAINER_DIR.into(),
        plugin_dir: kdir.clone(),
        devinfo_dir: tmp.path().join("devinfo"),
        owner: std::os::unix::fs::MetadataExt::uid(&std::fs::metadata(tmp.path()).unwrap()),
        group: std::os::unix::fs::MetadataExt::gid(&std::fs::metadata(tmp.path()).unwrap()),
        switch_socket: None,
        poll: Duration::from_millis(50),
        qemu_listens: false,
        spare: 0,
    };
    let (stop_plugin, plugin) = start_plugin(cfg);
    let text = || String::from_utf8_lossy(&log.0.lock().unwrap()).into_owned();
    let t0 = tokio::time::Instant::now();
    while !text().lines().any(|l| l.contains("WARN") && l.contains(REFUSAL)) {
        assert!(t0.elapsed() < WAIT, "no warning with the kubelet's reason:\n{}", text());
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(!text().contains("registered with the kubelet"), "{}", text());
    // Retried every poll (50 ms here), warned about once.
    let seen = tries.load(std::sync::atomic::Ordering::SeqCst);
    while tries.load(std::sync::atomic::Ordering::SeqCst) < seen + 5 {
        assert!(t0.elapsed() < WAIT, "no retry after the refusal");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let warnings = text().lines().filter(|l| l.contains("WARN") && l.contains(REFUSAL)).count();
    assert_eq!(warnings, 1, "one warning for one reason:\n{}", text());
    stop_plugin.send(()).unwrap();
    plugin.await.unwrap();
    kubelet.abort();
}
