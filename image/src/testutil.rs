//! Test helpers: hand-built tarballs (including hostile ones the `tar` crate refuses to
//! write), OCI layouts, root checks, and a fake registry on loopback.

use std::collections::HashMap;
use std::fs;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use flate2::Compression as GzLevel;
use flate2::write::GzEncoder;
use tar::{EntryType, Header};

use crate::digest::Digest;

/// Reports a skip on the real stderr, past libtest's output capture, so it is seen.
pub fn skipped(msg: &str) {
    let _ = writeln!(std::io::stderr(), "{msg}");
}

/// True when running as root. Otherwise: under CI=true a failure, else a loud skip.
pub fn require_root(test: &str) -> bool {
    if rustix::process::geteuid().is_root() {
        return true;
    }
    assert!(
        std::env::var("CI").as_deref() != Ok("true"),
        "{test} needs root (overlayfs, mknod, trusted.* xattrs); CI=true does not allow skipping"
    );
    skipped(&format!("SKIPPED: {test}: needs root"));
    false
}

/// One tar entry, written with raw header fields (no path validation).
#[derive(Clone, Debug)]
pub struct E {
    pub name: String,
    pub kind: EntryType,
    pub data: Vec<u8>,
    pub link: Option<String>,
    pub mode: u32,
    pub uid: u64,
    pub gid: u64,
    pub mtime: u64,
    pub device: Option<(u32, u32)>,
    pub xattrs: Vec<(String, Vec<u8>)>,
}

impl E {
    pub fn file(name: &str, data: &[u8]) -> Self {
        Self {
            name: name.into(),
            kind: EntryType::Regular,
            data: data.to_vec(),
            link: None,
            mode: 0o644,
            uid: 0,
            gid: 0,
            mtime: 1_600_000_000,
            device: None,
            xattrs: Vec::new(),
        }
    }
    pub fn dir(name: &str) -> Self {
        Self {
            kind: EntryType::Directory,
            mode: 0o755,
            ..Self::file(name, b"")
        }
    }
    pub fn symlink(name: &str, target: &str) -> Self {
        Self {
            kind: EntryType::Symlink,
            link: Some(target.into()),
            mode: 0o777,
            ..Self::file(name, b"")
        }
    }
    pub fn hardlink(name: &str, target: &str) -> Self {
        Self {
            kind: EntryType::Link,
            link: Some(target.into()),
            ..Self::file(name, b"")
        }
    }
    pub fn chardev(name: &str, major: u32, minor: u32) -> Self {
        Self {
            kind: EntryType::Char,
            device: Some((major, minor)),
            mode: 0o666,
            ..Self::file(name, b"")
        }
    }
    pub fn mode(mut self, mode: u32) -> Self {
        self.mode = mode;
        self
    }
    pub fn owner(mut self, uid: u64, gid: u64) -> Self {
        self.uid = uid;
        self.gid = gid;
        self
    }
    pub fn mtime(mut self, mtime: u64) -> Self {
        self.mtime = mtime;
        self
    }
    pub fn xattr(mut self, name: &str, value: &[u8]) -> Self {
        self.xattrs.push((name.into(), value.to_vec()));
        self
    }
}

/// Builds an uncompressed tar from `entries`, names written byte for byte.
pub fn tar_bytes(entries: &[E]) -> Vec<u8> {
    let mut builder = tar::Builder::new(Vec::new());
    for e in entries {
        if !e.xattrs.is_empty() {
            let pax: Vec<(String, &[u8])> = e
                .xattrs
                .iter()
                .map(|(k, v)| (format!("SCHILY.xattr.{k}"), v.as_slice()))
                .collect();
            builder
                .append_pax_extensions(pax.iter().map(|(k, v)| (k.as_str(), *v)))
                .expect("pax");
        }
        let mut h = Header::new_gnu();
        {
            let old = h.as_old_mut();
            assert!(e.name.len() <= 100, "test entry name too long");
            old.name = [0; 100];
            old.name[..e.name.len()].copy_from_slice(e.name.as_bytes());
            if let Some(l) = &e.link {
                old.linkname = [0; 100];
                old.linkname[..l.len()].copy_from_slice(l.as_bytes());
            }
        }
        h.set_entry_type(e.kind);
        h.set_size(e.data.len() as u64);
        h.set_mode(e.mode);
        h.set_uid(e.uid);
        h.set_gid(e.gid);
        h.set_mtime(e.mtime);
        if let Some((major, minor)) = e.device {
            h.set_device_major(major).expect("major");
            h.set_device_minor(minor).expect("minor");
        }
        h.set_cksum();
        builder.append(&h, e.data.as_slice()).expect("append");
    }
    builder.into_inner().expect("finish tar")
}

pub fn gzip(bytes: &[u8]) -> Vec<u8> {
    let mut enc = GzEncoder::new(Vec::new(), GzLevel::fast());
    enc.write_all(bytes).expect("gzip");
    enc.finish().expect("gzip finish")
}

/// Names and contents of a directory tree (relative paths), for "nothing left behind".
pub fn tree(dir: &Path) -> Vec<String> {
    let mut out = Vec::new();
    fn walk(base: &Path, dir: &Path, out: &mut Vec<String>) {
        let Ok(rd) = fs::read_dir(dir) else { return };
        for e in rd.flatten() {
            let p = e.path();
            out.push(p.strip_prefix(base).expect("prefix").display().to_string());
            if fs::symlink_metadata(&p).is_ok_and(|m| m.is_dir()) {
                walk(base, &p, out);
            }
        }
    }
    walk(dir, dir, &mut out);
    out.sort();
    out
}

/// The entries of the busybox rootfs used across tests, or None when `/bin/busybox`
/// (Debian's busybox-static) is missing.
pub fn busybox_entries() -> Option<Vec<E>> {
    let busybox = fs::read("/bin/busybox").ok()?;
    let mut v = vec![
        E::dir("bin/"),
        E::dir("etc/"),
        E::dir("tmp/").mode(0o1777),
        E::file("bin/busybox", &busybox).mode(0o755),
        E::file("etc/passwd", b"root:x:0:0:root:/root:/bin/sh\n"),
    ];
    for applet in ["sh", "true", "echo", "ls", "cat", "sleep"] {
        v.push(E::symlink(&format!("bin/{applet}"), "busybox"));
    }
    Some(v)
}

/// A busybox rootfs tarball, or a loud skip (a failure under CI=true) when busybox-static
/// is not installed.
pub fn busybox_rootfs(test: &str) -> Option<Vec<u8>> {
    match busybox_entries() {
        Some(e) => Some(tar_bytes(&e)),
        None => {
            assert!(
                std::env::var("CI").as_deref() != Ok("true"),
                "{test} needs /bin/busybox (apt-get install busybox-static); CI=true does not allow skipping"
            );
            skipped(&format!(
                "SKIPPED: {test}: /bin/busybox missing (apt-get install busybox-static)"
            ));
            None
        }
    }
}

/// One image written into an OCI layout directory: returns (manifest digest, config digest).
pub struct LayoutImage {
    pub manifest: Vec<u8>,
    pub manifest_digest: Digest,
    pub config: Vec<u8>,
    pub config_digest: Digest,
    /// (media type, blob) per layer.
    pub layers: Vec<(String, Vec<u8>)>,
}

/// Builds an image from uncompressed layer tars (gzipped when `gzip_layers`) with a config
/// holding `cmd`, architecture `arch`.
pub fn make_image(
    layer_tars: &[Vec<u8>],
    gzip_layers: bool,
    cmd: &[&str],
    arch: &str,
) -> LayoutImage {
    let diff_ids: Vec<String> = layer_tars
        .iter()
        .map(|t| Digest::of_bytes(t).to_string())
        .collect();
    let config = serde_json::to_vec(&serde_json::json!({
        "architecture": arch,
        "os": "linux",
        "config": {"Cmd": cmd, "Env": ["PATH=/bin", "HELLO=world"], "WorkingDir": "/tmp",
                   "Labels": {"org.example": "yes"}, "ExposedPorts": {"8080/tcp": {}}},
        "rootfs": {"type": "layers", "diff_ids": diff_ids},
    }))
    .expect("config");
    let config_digest = Digest::of_bytes(&config);
    let layers: Vec<(String, Vec<u8>)> = layer_tars
        .iter()
        .map(|t| {
            if gzip_layers {
                (crate::store::media::OCI_LAYER_GZIP.to_owned(), gzip(t))
            } else {
                (crate::store::media::OCI_LAYER.to_owned(), t.clone())
            }
        })
        .collect();
    let manifest = serde_json::to_vec(&serde_json::json!({
        "schemaVersion": 2,
        "mediaType": crate::store::media::OCI_MANIFEST,
        "config": {"mediaType": crate::store::media::OCI_CONFIG, "digest": config_digest, "size": config.len()},
        "layers": layers.iter().map(|(mt, b)| serde_json::json!({
            "mediaType": mt, "digest": Digest::of_bytes(b), "size": b.len()
        })).collect::<Vec<_>>(),
    }))
    .expect("manifest");
    LayoutImage {
        manifest_digest: Digest::of_bytes(&manifest),
        manifest,
        config,
        config_digest,
        layers,
    }
}

fn put_blob(dir: &Path, bytes: &[u8]) -> Digest {
    let d = Digest::of_bytes(bytes);
    let blobs = dir.join("blobs").join("sha256");
    fs::create_dir_all(&blobs).expect("mkdir blobs");
    fs::write(blobs.join(d.hex()), bytes).expect("write blob");
    d
}

/// Writes an OCI layout directory holding `image` tagged `tag`.
pub fn write_layout(dir: &Path, image: &LayoutImage, tag: &str) {
    put_blob(dir, &image.config);
    for (_, b) in &image.layers {
        put_blob(dir, b);
    }
    put_blob(dir, &image.manifest);
    fs::write(dir.join("oci-layout"), br#"{"imageLayoutVersion":"1.0.0"}"#).expect("oci-layout");
    let index = serde_json::json!({
        "schemaVersion": 2,
        "manifests": [{
            "mediaType": crate::store::media::OCI_MANIFEST,
            "digest": image.manifest_digest,
            "size": image.manifest.len(),
            "annotations": {"org.opencontainers.image.ref.name": tag},
        }],
    });
    fs::write(
        dir.join("index.json"),
        serde_json::to_vec(&index).expect("index"),
    )
    .expect("index.json");
}

/// Tars a directory (as `oci-archive:` would).
pub fn tar_dir(dir: &Path) -> Vec<u8> {
    let mut b = tar::Builder::new(Vec::new());
    b.append_dir_all(".", dir).expect("tar dir");
    b.into_inner().expect("finish")
}

/// A minimal HTTP/1.1 registry on 127.0.0.1 serving fixed responses, optionally behind an
/// anonymous bearer-token challenge. Each connection serves one request (`Connection: close`).
pub struct FakeRegistry {
    pub addr: String,
    stop: Arc<AtomicBool>,
    pub requests: Arc<Mutex<Vec<String>>>,
    pub token_requests: Arc<AtomicUsize>,
    thread: Option<std::thread::JoinHandle<()>>,
}

/// path → (status, content type, body, extra headers)
pub type Routes = HashMap<String, (u16, String, Vec<u8>, Vec<(String, String)>)>;

impl FakeRegistry {
    pub fn start(routes: Routes, require_token: bool) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
        let addr = listener.local_addr().expect("addr").to_string();
        listener.set_nonblocking(true).expect("nonblocking");
        let stop = Arc::new(AtomicBool::new(false));
        let requests = Arc::new(Mutex::new(Vec::new()));
        let token_requests = Arc::new(AtomicUsize::new(0));
        let thread = {
            let (stop, requests, token_requests, addr) = (
                stop.clone(),
                requests.clone(),
                token_requests.clone(),
                addr.clone(),
            );
            std::thread::spawn(move || {
                while !stop.load(Ordering::SeqCst) {
                    match listener.accept() {
                        Ok((stream, _)) => {
                            let _ = serve(
                                stream,
                                &routes,
                                require_token,
                                &addr,
                                &requests,
                                &token_requests,
                            );
                        }
                        Err(_) => std::thread::sleep(std::time::Duration::from_millis(5)),
                    }
                }
            })
        };
        Self {
            addr,
            stop,
            requests,
            token_requests,
            thread: Some(thread),
        }
    }
}

impl Drop for FakeRegistry {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

const TOKEN: &str = "berth-test-token";

fn serve(
    stream: TcpStream,
    routes: &Routes,
    require_token: bool,
    addr: &str,
    requests: &Mutex<Vec<String>>,
    token_requests: &AtomicUsize,
) -> std::io::Result<()> {
    stream.set_nonblocking(false)?;
    let mut reader = BufReader::new(stream.try_clone()?);
    let mut line = String::new();
    reader.read_line(&mut line)?;
    let path = line
        .split_whitespace()
        .nth(1)
        .unwrap_or_default()
        .to_owned();
    let mut auth = None;
    loop {
        let mut h = String::new();
        reader.read_line(&mut h)?;
        if h.trim().is_empty() {
            break;
        }
        if let Some((k, v)) = h.split_once(':')
            && k.eq_ignore_ascii_case("authorization")
        {
            auth = Some(v.trim().to_owned());
        }
    }
    requests.lock().expect("lock").push(path.clone());
    let mut out = stream;
    let respond = |out: &mut TcpStream,
                   status: u16,
                   ct: &str,
                   body: &[u8],
                   extra: &[(String, String)]| {
        let mut head = format!(
            "HTTP/1.1 {status} X\r\nContent-Type: {ct}\r\nContent-Length: {}\r\nConnection: close\r\n",
            body.len()
        );
        for (k, v) in extra {
            head.push_str(&format!("{k}: {v}\r\n"));
        }
        head.push_str("\r\n");
        out.write_all(head.as_bytes())?;
        out.write_all(body)?;
        out.flush()
    };
    if path.starts_with("/token?") {
        token_requests.fetch_add(1, Ordering::SeqCst);
        let body = format!(r#"{{"token":"{TOKEN}"}}"#);
        return respond(&mut out, 200, "application/json", body.as_bytes(), &[]);
    }
    if require_token && auth.as_deref() != Some(&format!("Bearer {TOKEN}")) {
        let challenge = format!(
            r#"Bearer realm="http://{addr}/token",service="fake-registry",scope="repository:test/busybox:pull""#
        );
        return respond(
            &mut out,
            401,
            "application/json",
            br#"{"errors":[{"code":"UNAUTHORIZED","message":"authentication required"}]}"#,
            &[("WWW-Authenticate".into(), challenge)],
        );
    }
    match routes.get(&path) {
        Some((status, ct, body, extra)) => respond(&mut out, *status, ct, body, extra),
        None => respond(
            &mut out,
            404,
            "application/json",
            br#"{"errors":[{"code":"MANIFEST_UNKNOWN","message":"manifest unknown"}]}"#,
            &[],
        ),
    }
}

/// Routes serving `image` as `repo:tag` (and by digest), plus its blobs.
pub fn image_routes(repo: &str, tag: &str, image: &LayoutImage) -> Routes {
    let mut r = Routes::new();
    let mt = crate::store::media::OCI_MANIFEST.to_owned();
    for reference in [tag.to_owned(), image.manifest_digest.to_string()] {
        r.insert(
            format!("/v2/{repo}/manifests/{reference}"),
            (
                200,
                mt.clone(),
                image.manifest.clone(),
                vec![(
                    "Docker-Content-Digest".into(),
                    image.manifest_digest.to_string(),
                )],
            ),
        );
    }
    r.insert(
        format!("/v2/{repo}/blobs/{}", image.config_digest),
        (
            200,
            "application/octet-stream".into(),
            image.config.clone(),
            vec![],
        ),
    );
    for (_, b) in &image.layers {
        r.insert(
            format!("/v2/{repo}/blobs/{}", Digest::of_bytes(b)),
            (200, "application/octet-stream".into(), b.clone(), vec![]),
        );
    }
    r
}

/// Reads a whole file, for assertions.
pub fn read(path: &Path) -> Vec<u8> {
    let mut v = Vec::new();
    fs::File::open(path)
        .and_then(|mut f| f.read_to_end(&mut v))
        .unwrap_or_else(|e| panic!("reading {}: {e}", path.display()));
    v
}
