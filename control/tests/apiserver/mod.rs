//! An in-process double of the Kubernetes API server, for the real kube-rs client: it speaks
//! HTTP/1.1 with keep-alive, serves JSON lists with a resourceVersion (paged with `limit` and
//! `continue`, each list a snapshot), label selectors (`k=v`) and field selectors
//! (`metadata.name=`, `metadata.namespace=`), watches as chunked streams of JSON events from
//! a resourceVersion (ADDED/MODIFIED/DELETED, DELETED when an object stops matching the
//! selector, BOOKMARK events when asked, an ERROR 410 Gone event for a resourceVersion older
//! than the compaction point, the stream ended at `timeoutSeconds`), and takes POSTed and
//! PATCHed Events. Protocol behaviours a server may show and tests turn on: a too old watch
//! answered with an HTTP 410 Status instead of the ERROR event ([`ApiServer::set_watch_gone_http`]),
//! `resourceVersion=0` lists ("Any") served from a lagging cache ([`ApiServer::freeze_cache`]),
//! and every watch ended early ([`ApiServer::set_watch_limit`]). Tests change objects ([`ApiServer::put`], [`ApiServer::delete`]), drop every
//! connection ([`ApiServer::drop_connections`]), compact the history ([`ApiServer::compact`])
//! and go away ([`ApiServer::set_down`]: the port is closed, connections are refused).
//!
//! Resource paths are `/api/v1/<plural>` and `/apis/<group>/<version>/<plural>`, with
//! `/namespaces/<ns>/` before the plural for one namespace; the plural comes from the kind
//! (lowercase + `s`, or the table below for NADs and MultiNetworkPolicies).

#![allow(dead_code)]

use serde_json::{json, Value};
use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::{Duration, Instant};

/// The node of examples/state.
pub const NODE: &str = "worker-1";

/// The objects of examples/state, the VMIs labelled with their node as virt-controller does.
pub fn example_objects() -> Vec<Value> {
    // The workspace root's examples/state, from the root package or from control/.
    let here = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
    let root = [here.join("examples/state"), here.join("../examples/state")].into_iter().find(|p| p.is_dir());
    let mut files: Vec<_> = walk(&root.expect("examples/state"));
    files.sort();
    let mut out = Vec::new();
    for f in files {
        for mut o in objects_of_yaml(&std::fs::read_to_string(&f).unwrap()) {
            label_vmi(&mut o);
            out.push(o);
        }
    }
    out
}

fn walk(d: &std::path::Path) -> Vec<std::path::PathBuf> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(d).unwrap() {
        let p = e.unwrap().path();
        if p.is_dir() {
            out.extend(walk(&p));
        } else if p.extension().is_some_and(|e| e == "yaml") {
            out.push(p);
        }
    }
    out
}

pub fn label_vmi(o: &mut Value) {
    if o["kind"] == "VirtualMachineInstance" {
        let node = o["status"]["nodeName"].clone();
        o["metadata"]["labels"]["kubevirt.io/nodeName"] = node;
    }
}

/// A VMI on this node with one bridge interface on NAD `net`.
pub fn vmi(name: &str, net: &str, mac: &str) -> Value {
    let mut o = json!({
        "apiVersion": "kubevirt.io/v1", "kind": "VirtualMachineInstance",
        "metadata": {"name": name, "namespace": "tenant-a"},
        "spec": {"domain": {"devices": {"interfaces": [{"name": "data", "bridge": {}, "macAddress": mac}]}},
                 "networks": [{"name": "data", "multus": {"networkName": net}}]},
        "status": {"nodeName": NODE}
    });
    label_vmi(&mut o);
    o
}

/// (group/version or "v1", plural) -> kind and whether it is namespaced.
fn kind_of(gv: &str, plural: &str) -> Option<(&'static str, bool)> {
    Some(match (gv, plural) {
        ("v1", "nodes") => ("Node", false),
        ("v1", "namespaces") => ("Namespace", false),
        ("k8s.cni.cncf.io/v1", "network-attachment-definitions") => ("NetworkAttachmentDefinition", true),
        ("k8s.cni.cncf.io/v1beta1" | "k8s.cni.cncf.io/v1beta2", "multi-networkpolicies") => {
            ("MultiNetworkPolicy", true)
        }
        ("kubevirt.io/v1", "virtualmachineinstances") => ("VirtualMachineInstance", true),
        ("nmstate.io/v1", "nodenetworkconfigurationpolicies") => ("NodeNetworkConfigurationPolicy", false),
        ("events.k8s.io/v1", "events") => ("Event", true),
        _ => return None,
    })
}

/// An object's key: (kind, namespace, name).
type Key = (String, String, String);

struct Change {
    rv: u64,
    kind: String,
    old: Option<Value>,
    new: Option<Value>,
}

#[derive(Default)]
struct St {
    rv: u64,
    objects: BTreeMap<Key, Value>,
    log: Vec<Change>,
    /// Watches from a resourceVersion below this get 410 Gone.
    compacted: u64,
    down: bool,
    /// Whether a watch from before the compaction point is answered HTTP 410 (a Status), not
    /// 200 with an ERROR event.
    watch_gone_http: bool,
    /// What `resourceVersion=0` lists see while a cache lags: (resourceVersion, objects).
    cache: Option<(u64, BTreeMap<Key, Value>)>,
    /// The longest a watch runs (the server ends it, cleanly, after this).
    watch_limit: Option<Duration>,
    /// List requests with a `continue` token still to be answered 410 Expired.
    expire_continues: usize,
    /// The kind whose list tokens `expire_continues` expires.
    expire_kind: &'static str,
    /// The kinds of the lists whose `continue` token was answered 410, one entry each.
    expired: Vec<&'static str>,
    /// A kind whose lists without `limit` (whole lists) are answered 500, as an overloaded
    /// server answers a list too large to serve at once.
    fail_whole_lists: Option<&'static str>,
    /// Resources (plurals) answered 403 Forbidden, as when RBAC does not grant them.
    forbidden: std::collections::BTreeSet<String>,
    /// API versions ("group/version") answered 404, as for a CRD version not served.
    unserved: std::collections::BTreeSet<String>,
    /// Two API servers disagreeing on two versions of a CRD: ([the version each serves
    /// alone], the server the last request of either went to).
    split: Option<([String; 2], usize)>,
    /// Bumped to end every connection.
    epoch: u64,
    conns: Vec<TcpStream>,
    /// Events POSTed or PATCHed (the bodies).
    pub events: Vec<Value>,
    /// Request lines served (method and path with query).
    requests: Vec<String>,
    /// List snapshots by continue token id: (resourceVersion, items).
    snapshots: BTreeMap<u64, (u64, Vec<Value>)>,
    next_snapshot: u64,
}

struct Inner {
    st: Mutex<St>,
    cv: Condvar,
    port: u16,
    bookmark_every: Duration,
}

pub struct ApiServer {
    inner: Arc<Inner>,
    accept: Option<std::thread::JoinHandle<()>>,
}

fn lock(i: &Inner) -> MutexGuard<'_, St> {
    i.st.lock().unwrap_or_else(|e| e.into_inner())
}

fn meta_str<'a>(o: &'a Value, f: &str) -> &'a str {
    o.get("metadata").and_then(|m| m.get(f)).and_then(|v| v.as_str()).unwrap_or("")
}

fn key_of(o: &Value) -> Key {
    let kind = o.get("kind").and_then(|k| k.as_str()).unwrap_or("").to_string();
    (kind, meta_str(o, "namespace").to_string(), meta_str(o, "name").to_string())
}

/// The objects of a YAML text (multi-document), as JSON.
pub fn objects_of_yaml(text: &str) -> Vec<Value> {
    use serde::Deserialize;
    let mut out = Vec::new();
    for doc in serde_yaml_ng::Deserializer::from_str(text) {
        let v = serde_yaml_ng::Value::deserialize(doc).expect("test manifest parses");
        if v.is_null() {
            continue;
        }
        out.push(serde_json::to_value(v).expect("YAML as JSON"));
    }
    out
}

struct Query {
    label: Vec<(String, String)>,
    field: Vec<(String, String)>,
    watch: bool,
    rv: Option<u64>,
    limit: Option<usize>,
    cont: Option<String>,
    timeout: Option<u64>,
    bookmarks: bool,
}

fn unescape(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::new();
    let mut i = 0;
    while i < b.len() {
        match b[i] {
            b'%' if i + 2 < b.len() => {
                let h =
                    std::str::from_utf8(&b[i + 1..i + 3]).ok().and_then(|h| u8::from_str_radix(h, 16).ok());
                match h {
                    Some(h) => {
                        out.push(h);
                        i += 3;
                    }
                    None => {
                        out.push(b'%');
                        i += 1;
                    }
                }
            }
            b'+' => {
                out.push(b' ');
                i += 1;
            }
            c => {
                out.push(c);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

fn selector(s: &str) -> Vec<(String, String)> {
    s.split(',')
        .filter(|p| !p.is_empty())
        .filter_map(|p| {
            p.split_once('=')
                .map(|(k, v)| (k.trim_end_matches('=').to_string(), v.trim_start_matches('=').to_string()))
        })
        .collect()
}

fn parse_query(q: &str) -> Query {
    let mut out = Query {
        label: vec![],
        field: vec![],
        watch: false,
        rv: None,
        limit: None,
        cont: None,
        timeout: None,
        bookmarks: false,
    };
    for kv in q.split('&').filter(|s| !s.is_empty()) {
        let (k, v) = kv.split_once('=').unwrap_or((kv, ""));
        let v = unescape(v);
        match k {
            "labelSelector" => out.label = selector(&v),
            "fieldSelector" => out.field = selector(&v),
            "watch" => out.watch = v == "true" || v == "1",
            "resourceVersion" => out.rv = v.parse().ok(),
            "limit" => out.limit = v.parse().ok(),
            "continue" => out.cont = Some(v),
            "timeoutSeconds" => out.timeout = v.parse().ok(),
            "allowWatchBookmarks" => out.bookmarks = v == "true",
            _ => {}
        }
    }
    out
}

/// What a request addresses: a kind (collection), maybe in one namespace, maybe one object.
struct Target {
    gv: String,
    kind: &'static str,
    ns: Option<String>,
    name: Option<String>,
}

fn parse_path(path: &str) -> Option<Target> {
    let parts: Vec<&str> = path.trim_start_matches('/').split('/').collect();
    let (gv, rest) = match parts.as_slice() {
        ["api", v, rest @ ..] => (v.to_string(), rest),
        ["apis", g, v, rest @ ..] => (format!("{g}/{v}"), rest),
        _ => return None,
    };
    let (ns, rest) = match rest {
        ["namespaces", ns, r @ ..] if !r.is_empty() => (Some(ns.to_string()), r),
        r => (None, r),
    };
    let (plural, name) = match rest {
        [p] => (*p, None),
        [p, n] => (*p, Some(n.to_string())),
        _ => return None,
    };
    let (kind, _) = kind_of(&gv, plural)?;
    Some(Target { gv, kind, ns, name })
}

fn matches(o: &Value, t: &Target, q: &Query) -> bool {
    if let Some(ns) = &t.ns {
        if meta_str(o, "namespace") != ns {
            return false;
        }
    }
    let labels = o.get("metadata").and_then(|m| m.get("labels"));
    for (k, v) in &q.label {
        if labels.and_then(|l| l.get(k)).and_then(|x| x.as_str()) != Some(v.as_str()) {
            return false;
        }
    }
    for (k, v) in &q.field {
        let f = match k.as_str() {
            "metadata.name" => meta_str(o, "name"),
            "metadata.namespace" => meta_str(o, "namespace"),
            _ => return false,
        };
        if f != v {
            return false;
        }
    }
    true
}

fn status(code: u16, reason: &str, message: &str) -> Value {
    json!({"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
           "message": message, "reason": reason, "code": code})
}

impl ApiServer {
    /// Starts serving `objects` on 127.0.0.1 (a free port), with a BOOKMARK event every
    /// `bookmark_every` on watches that ask for them.
    pub fn start(objects: Vec<Value>, bookmark_every: Duration) -> ApiServer {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind the API server double");
        let port = listener.local_addr().unwrap().port();
        let inner =
            Arc::new(Inner { st: Mutex::new(St::default()), cv: Condvar::new(), port, bookmark_every });
        let s = ApiServer { inner, accept: None };
        for o in objects {
            s.put(o);
        }
        let mut s = s;
        s.accept = Some(spawn_accept(s.inner.clone(), listener));
        s
    }

    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.inner.port)
    }

    /// A kube client configuration for this server.
    pub fn kube_config(&self) -> kube::Config {
        let mut c = kube::Config::new(self.url().parse().unwrap());
        c.connect_timeout = Some(Duration::from_secs(2));
        c
    }

    /// A kubeconfig (YAML) whose current context is this server.
    pub fn kubeconfig_yaml(&self) -> String {
        format!(
            "apiVersion: v1\nkind: Config\nclusters:\n- name: double\n  cluster: {{server: \"{}\"}}\n\
             users:\n- name: u\n  user: {{}}\ncontexts:\n- name: c\n  context: {{cluster: double, user: u}}\n\
             current-context: c\n",
            self.url()
        )
    }

    /// Creates or replaces an object (a new resourceVersion); returns it.
    pub fn put(&self, mut o: Value) -> u64 {
        let mut st = lock(&self.inner);
        st.rv += 1;
        let rv = st.rv;
        let k = key_of(&o);
        let meta = o.as_object_mut().unwrap().entry("metadata").or_insert(json!({}));
        meta["resourceVersion"] = json!(rv.to_string());
        if meta.get("uid").is_none() {
            meta["uid"] = json!(format!("uid-{}-{}-{}", k.0, k.1, k.2));
        }
        let old = st.objects.insert(k.clone(), o.clone());
        st.log.push(Change { rv, kind: k.0, old, new: Some(o) });
        drop(st);
        self.inner.cv.notify_all();
        rv
    }

    /// Deletes an object; returns whether it existed.
    pub fn delete(&self, kind: &str, ns: &str, name: &str) -> bool {
        let mut st = lock(&self.inner);
        let Some(mut old) = st.objects.remove(&(kind.into(), ns.into(), name.into())) else {
            return false;
        };
        st.rv += 1;
        let rv = st.rv;
        old["metadata"]["resourceVersion"] = json!(rv.to_string());
        st.log.push(Change { rv, kind: kind.into(), old: Some(old), new: None });
        drop(st);
        self.inner.cv.notify_all();
        true
    }

    /// The object stored under (kind, namespace, name).
    pub fn get(&self, kind: &str, ns: &str, name: &str) -> Option<Value> {
        lock(&self.inner).objects.get(&(kind.into(), ns.into(), name.into())).cloned()
    }

    /// Forgets the history: a watch from any resourceVersion before now gets 410 Gone.
    pub fn compact(&self) {
        let mut st = lock(&self.inner);
        st.compacted = st.rv + 1;
        st.log.clear();
        st.snapshots.clear();
    }

    /// Serves API version `gv` ("group/version") or not (404 for its paths, as for a CRD
    /// version with `served: false`). Every version of the table is served at first.
    pub fn set_served(&self, gv: &str, served: bool) {
        let mut st = lock(&self.inner);
        if served {
            st.unserved.remove(gv);
        } else {
            st.unserved.insert(gv.to_string());
        }
    }

    /// From now on, the requests for API versions `a` and `b` ("group/version") are served as by
    /// two API servers behind one load balancer that disagree on the CRD's served versions
    /// (one updated, the other not yet): the first serves `a` alone, the second `b` alone (404
    /// for the other). A watch goes to the other server than the request before it (a new
    /// connection, balanced elsewhere), the requests after it to the server it went to. The
    /// first request after this goes to the first server unless it is a watch.
    pub fn split_versions(&self, a: &str, b: &str) {
        lock(&self.inner).split = Some(([a.to_string(), b.to_string()], 0));
    }

    /// Answers a watch from a resourceVersion older than the compaction point with an HTTP 410
    /// Gone Status (`reason: Expired`) rather than 200 and an ERROR event: the API concepts
    /// ("410 Gone responses") allow either, and clients must tolerate both.
    pub fn set_watch_gone_http(&self, on: bool) {
        lock(&self.inner).watch_gone_http = on;
    }

    /// From now until [`ApiServer::thaw_cache`], lists with `resourceVersion=0` ("Any": data
    /// at any resource version may be served, API concepts "resourceVersion semantics") see the
    /// objects as they are now, as from a watch cache that stopped catching up (an HA API
    /// server behind the others); lists without resourceVersion (most recent) see the truth.
    pub fn freeze_cache(&self) {
        let mut st = lock(&self.inner);
        st.cache = Some((st.rv, st.objects.clone()));
    }

    pub fn thaw_cache(&self) {
        lock(&self.inner).cache = None;
    }

    /// Ends every watch (the chunked stream closed cleanly) once it has run `limit`, whatever
    /// its `timeoutSeconds`: a server may end a watch at any time. `Duration::ZERO` ends each
    /// right after its response headers, with no event.
    pub fn set_watch_limit(&self, limit: Option<Duration>) {
        lock(&self.inner).watch_limit = limit;
        self.inner.cv.notify_all();
    }

    /// Answers the next `n` list requests of `kind` that carry a `continue` token 410 Expired, as the
    /// API server does once the list's resourceVersion is compacted ("Retrieving large results
    /// sets in chunks": the client must start the list again).
    pub fn expire_continues(&self, kind: &'static str, n: usize) {
        let mut st = lock(&self.inner);
        st.expire_continues = n;
        st.expire_kind = kind;
    }

    /// Answers every list of `kind` without `limit` 500 (or, with `None`, none).
    pub fn fail_whole_lists(&self, kind: Option<&'static str>) {
        lock(&self.inner).fail_whole_lists = kind;
    }

    /// How many `continue` tokens of lists of `kind` were answered 410.
    pub fn expired_continues(&self, kind: &str) -> usize {
        lock(&self.inner).expired.iter().filter(|k| **k == kind).count()
    }

    /// Answers every request for resource `plural` 403 Forbidden (or serves it again), as the
    /// API server does for a resource the client's RBAC does not grant.
    pub fn set_forbidden(&self, plural: &str, forbidden: bool) {
        let mut st = lock(&self.inner);
        if forbidden {
            st.forbidden.insert(plural.to_string());
        } else {
            st.forbidden.remove(plural);
        }
    }

    /// Ends every open connection abruptly (watches included), as a restarting server or a
    /// broken network does.
    pub fn drop_connections(&self) {
        let mut st = lock(&self.inner);
        st.epoch += 1;
        for c in st.conns.drain(..) {
            let _ = c.shutdown(Shutdown::Both);
        }
        drop(st);
        self.inner.cv.notify_all();
    }

    /// Down: the port is closed (connections refused) and every connection ends. Up again:
    /// the same port listens.
    pub fn set_down(&mut self, down: bool) {
        lock(&self.inner).down = down;
        if down {
            self.drop_connections();
            if let Some(t) = self.accept.take() {
                let _ = t.join();
            }
        } else if self.accept.is_none() {
            let addr = format!("127.0.0.1:{}", self.inner.port);
            let deadline = Instant::now() + Duration::from_secs(5);
            let listener = loop {
                match TcpListener::bind(&addr) {
                    Ok(l) => break l,
                    Err(e) if Instant::now() > deadline => panic!("rebind {addr}: {e}"),
                    Err(_) => std::thread::sleep(Duration::from_millis(50)),
                }
            };
            self.accept = Some(spawn_accept(self.inner.clone(), listener));
        }
    }

    /// The Events POSTed (or PATCHed) so far.
    pub fn events(&self) -> Vec<Value> {
        lock(&self.inner).events.clone()
    }

    /// The request lines served so far (`GET /api/v1/nodes?...`).
    pub fn requests(&self) -> Vec<String> {
        lock(&self.inner).requests.clone()
    }
}

impl Drop for ApiServer {
    fn drop(&mut self) {
        self.set_down(true);
    }
}

fn spawn_accept(inner: Arc<Inner>, listener: TcpListener) -> std::thread::JoinHandle<()> {
    listener.set_nonblocking(true).unwrap();
    std::thread::spawn(move || loop {
        if lock(&inner).down {
            return;
        }
        match listener.accept() {
            Ok((c, _)) => {
                let _ = c.set_nonblocking(false);
                let _ = c.set_nodelay(true);
                let epoch = {
                    let mut st = lock(&inner);
                    if let Ok(c2) = c.try_clone() {
                        st.conns.push(c2);
                    }
                    st.epoch
                };
                let i = inner.clone();
                std::thread::spawn(move || {
                    let _ = serve(&i, c, epoch);
                });
            }
            Err(_) => std::thread::sleep(Duration::from_millis(5)),
        }
    })
}

/// Serves the requests of one connection until it closes or the epoch changes.
fn serve(inner: &Inner, c: TcpStream, epoch: u64) -> std::io::Result<()> {
    let mut r = BufReader::new(c.try_clone()?);
    let mut w = c;
    loop {
        let mut line = String::new();
        if r.read_line(&mut line)? == 0 {
            return Ok(());
        }
        let line = line.trim_end().to_string();
        let mut len = 0usize;
        loop {
            let mut h = String::new();
            if r.read_line(&mut h)? == 0 {
                return Ok(());
            }
            let h = h.trim_end();
            if h.is_empty() {
                break;
            }
            if let Some((k, v)) = h.split_once(':') {
                if k.eq_ignore_ascii_case("content-length") {
                    len = v.trim().parse().unwrap_or(0);
                }
            }
        }
        let mut body = vec![0u8; len];
        r.read_exact(&mut body)?;
        if lock(inner).epoch != epoch {
            return Ok(());
        }
        lock(inner).requests.push(line.clone());
        let mut it = line.split(' ');
        let (method, target) = (it.next().unwrap_or(""), it.next().unwrap_or(""));
        let (path, query) = target.split_once('?').unwrap_or((target, ""));
        let q = parse_query(query);
        let served = |t: &Target| {
            let mut st = lock(inner);
            if let Some((versions, at)) = st.split.as_mut().filter(|(v, _)| v.contains(&t.gv)) {
                if q.watch {
                    *at ^= 1;
                }
                if versions[*at] != t.gv {
                    return false;
                }
            }
            !st.unserved.contains(&t.gv)
        };
        let Some(t) = parse_path(path).filter(served) else {
            respond(&mut w, 404, &status(404, "NotFound", &format!("the server could not find {path}")))?;
            continue;
        };
        if path.rsplit('/').any(|seg| lock(inner).forbidden.contains(seg)) {
            let msg = format!("cannot {method} {path}: forbidden by RBAC");
            respond(&mut w, 403, &status(403, "Forbidden", &msg))?;
            continue;
        }
        match method {
            "GET" if q.watch => watch(inner, &mut w, &t, &q, epoch)?,
            "GET" => list(inner, &mut w, &t, &q)?,
            "POST" | "PATCH" if t.kind == "Event" => {
                let v: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
                lock(inner).events.push(v.clone());
                respond(&mut w, if method == "POST" { 201 } else { 200 }, &v)?;
            }
            _ => respond(&mut w, 405, &status(405, "MethodNotAllowed", method))?,
        }
    }
}

fn respond(w: &mut TcpStream, code: u16, body: &Value) -> std::io::Result<()> {
    let b = serde_json::to_vec(body).unwrap();
    let text = match code {
        200 => "OK",
        201 => "Created",
        403 => "Forbidden",
        404 => "Not Found",
        410 => "Gone",
        _ => "Error",
    };
    write!(
        w,
        "HTTP/1.1 {code} {text}\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n",
        b.len()
    )?;
    w.write_all(&b)?;
    w.flush()
}

fn list(inner: &Inner, w: &mut TcpStream, t: &Target, q: &Query) -> std::io::Result<()> {
    let mut st = lock(inner);
    if q.limit.is_none() && st.fail_whole_lists == Some(t.kind) {
        drop(st);
        return respond(w, 500, &status(500, "InternalError", "the list is too large to serve at once"));
    }
    let (id, rv, offset) = match &q.cont {
        Some(c) => {
            let parsed =
                c.split_once(':').and_then(|(a, b)| Some((a.parse::<u64>().ok()?, b.parse::<usize>().ok()?)));
            let expire = st.expire_continues > 0 && st.expire_kind == t.kind;
            if expire {
                st.expire_continues -= 1;
            }
            match parsed
                .filter(|_| !expire)
                .and_then(|(id, off)| st.snapshots.get(&id).map(|s| (id, s.0, off)))
            {
                Some(x) => x,
                None => {
                    st.expired.push(t.kind);
                    drop(st);
                    return respond(
                        w,
                        410,
                        &status(410, "Expired", "the provided continue parameter is too old"),
                    );
                }
            }
        }
        None => {
            // "Any" may be served from a lagging cache; an unset resourceVersion is a quorum read.
            let (rv, objects) = match (&st.cache, q.rv) {
                (Some((rv, objects)), Some(0)) => (*rv, objects),
                _ => (st.rv, &st.objects),
            };
            let items: Vec<Value> = objects
                .iter()
                .filter(|(k, o)| k.0 == t.kind && matches(o, t, q))
                .map(|(_, o)| served_as(o.clone(), &t.gv))
                .collect();
            let id = st.next_snapshot;
            st.next_snapshot += 1;
            st.snapshots.insert(id, (rv, items));
            (id, rv, 0)
        }
    };
    let all = &st.snapshots[&id].1;
    let end = q.limit.filter(|l| *l > 0).map_or(all.len(), |l| (offset + l).min(all.len()));
    let items: Vec<Value> = all[offset..end].to_vec();
    let mut meta = json!({"resourceVersion": rv.to_string()});
    if end < all.len() {
        meta["continue"] = json!(format!("{id}:{end}"));
        meta["remainingItemCount"] = json!(all.len() - end);
    } else {
        st.snapshots.remove(&id);
    }
    drop(st);
    let body =
        json!({"apiVersion": t.gv, "kind": format!("{}List", t.kind), "metadata": meta, "items": items});
    respond(w, 200, &body)
}

/// An object as the API server returns it at API version `gv` (a CRD's versions here differ
/// in name only, as with the `None` conversion strategy).
fn served_as(mut o: Value, gv: &str) -> Value {
    if let Some(m) = o.as_object_mut() {
        m.insert("apiVersion".into(), json!(gv));
    }
    o
}

fn chunk(w: &mut TcpStream, v: &Value) -> std::io::Result<()> {
    let mut b = serde_json::to_vec(v).unwrap();
    b.push(b'\n');
    write!(w, "{:x}\r\n", b.len())?;
    w.write_all(&b)?;
    w.write_all(b"\r\n")?;
    w.flush()
}

/// A watch: the changes after `resourceVersion` that concern the selection, then new ones as
/// they come, bookmarks, until `timeoutSeconds`, the epoch changes or the server goes down.
fn watch(inner: &Inner, w: &mut TcpStream, t: &Target, q: &Query, epoch: u64) -> std::io::Result<()> {
    let start = q.rv.unwrap_or(0);
    let st = lock(inner);
    let too_old = start != 0 && start + 1 < st.compacted;
    let msg = format!("too old resource version: {start}");
    if too_old && st.watch_gone_http {
        drop(st);
        return respond(w, 410, &status(410, "Expired", &msg));
    }
    let started = Instant::now();
    let timeout = started + Duration::from_secs(q.timeout.unwrap_or(1800));
    drop(st);
    write!(w, "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n")?;
    w.flush()?;
    let mut st = lock(inner);
    if too_old {
        drop(st);
        chunk(w, &json!({"type": "ERROR", "object": status(410, "Expired", &msg)}))?;
        w.write_all(b"0\r\n\r\n")?;
        return w.flush();
    }
    let mut seen = if start == 0 { st.rv } else { start };
    // The limit applies to the watches running when it is set too.
    let deadline = |st: &St| st.watch_limit.map_or(timeout, |l| timeout.min(started + l));
    let mut last_bookmark = Instant::now();
    loop {
        if st.epoch != epoch || st.down {
            return Ok(());
        }
        let mut out = Vec::new();
        for c in st.log.iter().filter(|c| c.rv > seen && c.kind == t.kind) {
            let was = c.old.as_ref().is_some_and(|o| matches(o, t, q));
            let is = c.new.as_ref().is_some_and(|o| matches(o, t, q));
            let ev = match (was, is) {
                (false, true) => ("ADDED", c.new.clone()),
                (true, true) => ("MODIFIED", c.new.clone()),
                (true, false) => {
                    let mut o = c.new.clone().or_else(|| c.old.clone()).unwrap();
                    o["metadata"]["resourceVersion"] = json!(c.rv.to_string());
                    ("DELETED", Some(o))
                }
                (false, false) => continue,
            };
            out.push(json!({"type": ev.0, "object": ev.1.map(|o| served_as(o, &t.gv))}));
        }
        seen = st.rv;
        let deadline = deadline(&st);
        drop(st);
        for e in &out {
            chunk(w, e)?;
        }
        if q.bookmarks && last_bookmark.elapsed() >= inner.bookmark_every {
            last_bookmark = Instant::now();
            chunk(
                w,
                &json!({"type": "BOOKMARK", "object": {"kind": t.kind, "apiVersion": t.gv,
                        "metadata": {"resourceVersion": seen.to_string()}}}),
            )?;
        }
        if Instant::now() >= deadline {
            w.write_all(b"0\r\n\r\n")?;
            return w.flush();
        }
        st = lock(inner);
        if st.rv == seen && st.epoch == epoch && !st.down {
            let wait = inner.bookmark_every.min(deadline.saturating_duration_since(Instant::now()));
            st = inner.cv.wait_timeout(st, wait).unwrap_or_else(|e| e.into_inner()).0;
        }
    }
}
