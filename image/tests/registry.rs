//! Pulls from a real registry on loopback: Debian's `docker-registry` (distribution 2.8),
//! with images pushed by `skopeo copy` from OCI layouts this store exported.
//!
//! Needs `/usr/bin/docker-registry`, `skopeo` and `/bin/busybox`
//! (`apt-get install -y --no-install-recommends docker-registry skopeo busybox-static`).
//! When one is missing the test prints `SKIPPED: …`, except under CI=true where it fails.

use std::collections::HashSet;
use std::fs;
use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use berth_image::{Digest, ImageConfig, ImageStore, PullOptions};

/// Reports a skip on the real stderr, past libtest's output capture, so it is seen.
fn skipped(msg: &str) {
    let _ = writeln!(std::io::stderr(), "{msg}");
}

/// Returns false (after a loud skip) when a prerequisite is missing; panics under CI=true.
fn prerequisites() -> bool {
    let mut missing = Vec::new();
    if !Path::new("/usr/bin/docker-registry").exists() {
        missing.push("/usr/bin/docker-registry (apt package docker-registry)");
    }
    if Command::new("skopeo")
        .arg("--version")
        .output()
        .map_or(true, |o| !o.status.success())
    {
        missing.push("skopeo (apt package skopeo)");
    }
    if !Path::new("/bin/busybox").exists() {
        missing.push("/bin/busybox (apt package busybox-static)");
    }
    if missing.is_empty() {
        return true;
    }
    let why = format!("registry test needs {}", missing.join(", "));
    assert!(
        std::env::var("CI").as_deref() != Ok("true"),
        "{why}; CI=true does not allow skipping"
    );
    skipped(&format!("SKIPPED: {why}"));
    false
}

/// A `docker-registry` process on 127.0.0.1, killed on drop (also when the test panics).
struct Registry {
    child: Child,
    addr: String,
    log: PathBuf,
}

impl Registry {
    fn start(dir: &Path) -> Self {
        let port = TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .expect("free port")
            .port();
        let addr = format!("127.0.0.1:{port}");
        let config = dir.join("config.yml");
        fs::write(
            &config,
            format!(
                "version: 0.1\nlog:\n  level: warn\nstorage:\n  filesystem:\n    rootdirectory: {}\n  delete:\n    enabled: true\nhttp:\n  addr: {addr}\n",
                dir.join("data").display()
            ),
        )
        .expect("registry config");
        let log = dir.join("registry.log");
        let out = fs::File::create(&log).expect("log");
        let child = Command::new("/usr/bin/docker-registry")
            .arg("serve")
            .arg(&config)
            .stdin(Stdio::null())
            .stdout(out.try_clone().expect("log fd"))
            .stderr(out)
            .spawn()
            .expect("start docker-registry");
        let mut registry = Self { child, addr, log };
        registry.wait_ready();
        registry
    }

    fn wait_ready(&mut self) {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if let Some(status) = self.child.try_wait().expect("try_wait") {
                panic!(
                    "docker-registry exited with {status}: {}",
                    fs::read_to_string(&self.log).unwrap_or_default()
                );
            }
            if let Ok(mut s) = TcpStream::connect(&self.addr) {
                let _ = s.set_read_timeout(Some(Duration::from_secs(2)));
                let req = format!(
                    "GET /v2/ HTTP/1.1\r\nHost: {}\r\nConnection: close\r\n\r\n",
                    self.addr
                );
                let mut resp = String::new();
                if s.write_all(req.as_bytes()).is_ok()
                    && s.read_to_string(&mut resp).is_ok()
                    && resp.starts_with("HTTP/1.1 200")
                {
                    return;
                }
            }
            assert!(
                Instant::now() < deadline,
                "docker-registry not ready on {}: {}",
                self.addr,
                fs::read_to_string(&self.log).unwrap_or_default()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

impl Drop for Registry {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn skopeo_copy(args: &[&str]) {
    let out = Command::new("skopeo")
        .arg("--insecure-policy")
        .arg("copy")
        .arg("--quiet")
        .args(args)
        .output()
        .expect("run skopeo");
    assert!(
        out.status.success(),
        "skopeo copy {args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A busybox root filesystem tarball: /bin/busybox plus applet symlinks.
fn busybox_tar() -> Vec<u8> {
    let mut b = tar::Builder::new(Vec::new());
    let dir = |b: &mut tar::Builder<Vec<u8>>, name: &str, mode: u32| {
        let mut h = tar::Header::new_gnu();
        h.set_entry_type(tar::EntryType::Directory);
        h.set_mode(mode);
        h.set_size(0);
        h.set_mtime(1_700_000_000);
        h.set_uid(0);
        h.set_gid(0);
        b.append_data(&mut h, name, std::io::empty()).expect("dir");
    };
    dir(&mut b, "bin", 0o755);
    dir(&mut b, "etc", 0o755);
    dir(&mut b, "tmp", 0o1777);
    let busybox = fs::read("/bin/busybox").expect("read busybox");
    let mut h = tar::Header::new_gnu();
    h.set_entry_type(tar::EntryType::Regular);
    h.set_mode(0o755);
    h.set_size(busybox.len() as u64);
    h.set_mtime(1_700_000_000);
    h.set_uid(0);
    h.set_gid(0);
    b.append_data(&mut h, "bin/busybox", busybox.as_slice())
        .expect("busybox");
    for applet in ["sh", "true", "echo", "ls", "cat", "sleep"] {
        let mut h = tar::Header::new_gnu();
        h.set_entry_type(tar::EntryType::Symlink);
        h.set_mode(0o777);
        h.set_size(0);
        h.set_mtime(1_700_000_000);
        h.set_uid(0);
        h.set_gid(0);
        b.append_link(&mut h, format!("bin/{applet}"), "busybox")
            .expect("symlink");
    }
    b.into_inner().expect("finish tar")
}

fn put_blob(layout: &Path, bytes: &[u8]) -> Digest {
    let d = Digest::of_bytes(bytes);
    fs::write(layout.join("blobs/sha256").join(d.hex()), bytes).expect("blob");
    d
}

/// Turns an exported single-image layout into a two-platform index (linux/arm64 with a
/// dummy layer, then linux/amd64 = the exported image), tagged `tag`.
fn add_arm64_and_index(layout: &Path, tag: &str) {
    let index: serde_json::Value =
        serde_json::from_slice(&fs::read(layout.join("index.json")).expect("index")).expect("json");
    let amd64 = index["manifests"][0].clone();

    let mut tar = tar::Builder::new(Vec::new());
    let mut h = tar::Header::new_gnu();
    h.set_size(5);
    h.set_mode(0o644);
    h.set_entry_type(tar::EntryType::Regular);
    tar.append_data(&mut h, "arch", &b"arm64"[..])
        .expect("arm layer");
    let layer = tar.into_inner().expect("tar");
    let layer_digest = put_blob(layout, &layer);
    let config = serde_json::to_vec(&serde_json::json!({
        "architecture": "arm64", "os": "linux",
        "config": {"Cmd": ["/arm"]},
        "rootfs": {"type": "layers", "diff_ids": [layer_digest]},
    }))
    .expect("config");
    let config_digest = put_blob(layout, &config);
    let manifest = serde_json::to_vec(&serde_json::json!({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": config_digest, "size": config.len()},
        "layers": [{"mediaType": "application/vnd.oci.image.layer.v1.tar", "digest": layer_digest, "size": layer.len()}],
    }))
    .expect("manifest");
    let manifest_digest = put_blob(layout, &manifest);
    let image_index = serde_json::to_vec(&serde_json::json!({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.index.v1+json",
        "manifests": [
            {"mediaType": "application/vnd.oci.image.manifest.v1+json", "digest": manifest_digest,
             "size": manifest.len(), "platform": {"architecture": "arm64", "os": "linux"}},
            {"mediaType": amd64["mediaType"], "digest": amd64["digest"], "size": amd64["size"],
             "platform": {"architecture": "amd64", "os": "linux"}},
        ],
    }))
    .expect("image index");
    let index_digest = put_blob(layout, &image_index);
    let top = serde_json::json!({
        "schemaVersion": 2,
        "manifests": [{
            "mediaType": "application/vnd.oci.image.index.v1+json",
            "digest": index_digest, "size": image_index.len(),
            "annotations": {"org.opencontainers.image.ref.name": tag},
        }],
    });
    fs::write(
        layout.join("index.json"),
        serde_json::to_vec(&top).expect("json"),
    )
    .expect("write");
}

#[test]
fn pull_from_docker_registry() {
    if !prerequisites() {
        return;
    }
    let tmp = tempfile::tempdir().expect("tempdir");
    let registry = Registry::start(tmp.path());
    let addr = registry.addr.clone();

    // Build the image with our own store and export it as an OCI layout for skopeo.
    let source = ImageStore::open(tmp.path().join("source-store")).expect("source store");
    let rootfs = tmp.path().join("busybox.tar");
    fs::write(&rootfs, busybox_tar()).expect("rootfs");
    let given = ImageConfig {
        cmd: vec!["/bin/sh".into(), "-c".into(), "echo hi".into()],
        env: vec!["PATH=/bin".into(), "GREETING=hello".into()],
        working_dir: Some("/tmp".into()),
        labels: [("org.berth.test".to_owned(), "yes".to_owned())].into(),
        exposed_ports: ["8080/tcp".to_owned()].into(),
        ..ImageConfig::default()
    };
    let built = source
        .import_rootfs_tar(&rootfs, "berth/busybox:test", &given)
        .expect("import rootfs");
    let layout = tmp.path().join("layout");
    source
        .export_oci_layout(&built, &layout, "test")
        .expect("export layout");
    let layout_ref = format!("oci:{}:test", layout.display());
    skopeo_copy(&[
        &layout_ref,
        &format!("docker://{addr}/berth/busybox:test"),
        "--dest-tls-verify=false",
    ]);
    // The same image as Docker schema 2 (gzip layers, Docker media types).
    skopeo_copy(&[
        &layout_ref,
        &format!("docker://{addr}/berth/busybox:docker"),
        "--dest-tls-verify=false",
        "--format",
        "v2s2",
    ]);

    // Pull into a fresh store.
    let store = ImageStore::open(tmp.path().join("store")).expect("store");
    let options = PullOptions {
        progress: true,
        ..PullOptions::default()
    };
    let reference = format!("{addr}/berth/busybox:test");
    let image = store.pull(&reference, &options).expect("pull oci");
    assert_eq!(image.name, reference);
    assert_eq!(
        image.id, built.id,
        "config blob identical after the round trip"
    );
    // skopeo may re-serialise the manifest (e.g. compress layers), but the content is the same.
    assert_eq!(image.layers[0].diff_id, built.layers[0].diff_id);
    let dirs = store.layer_dirs(&image).expect("layer dirs");
    assert_eq!(dirs.len(), 1);
    let busybox = dirs[0].join("bin/busybox");
    assert!(busybox.is_file(), "{} missing", busybox.display());
    assert_eq!(
        fs::read(&busybox).expect("busybox"),
        fs::read("/bin/busybox").expect("host busybox")
    );
    assert_eq!(
        fs::read_link(dirs[0].join("bin/sh")).expect("sh"),
        PathBuf::from("busybox")
    );
    assert_eq!(store.config(&image).expect("config"), given);

    let docker = store
        .pull(
            &format!("{addr}/berth/busybox:docker"),
            &PullOptions::default(),
        )
        .expect("pull docker v2s2");
    assert_eq!(
        docker.manifest_media_type,
        "application/vnd.docker.distribution.manifest.v2+json"
    );
    assert_eq!(
        docker.layers[0].media_type,
        "application/vnd.docker.image.rootfs.diff.tar.gzip"
    );
    assert_eq!(docker.layers[0].diff_id, image.layers[0].diff_id);
    assert_eq!(store.config(&docker).expect("docker config"), given);
    assert_eq!(
        store.layer_dirs(&docker).expect("dirs")[0],
        dirs[0],
        "same diff id: the unpacked layer is shared"
    );

    // A multi-platform index: the linux/amd64 manifest is chosen.
    add_arm64_and_index(&layout, "multi");
    skopeo_copy(&[
        "--all",
        &format!("oci:{}:multi", layout.display()),
        &format!("docker://{addr}/berth/busybox:multi"),
        "--dest-tls-verify=false",
    ]);
    let multi = store
        .pull(
            &format!("{addr}/berth/busybox:multi"),
            &PullOptions::default(),
        )
        .expect("pull index");
    assert_eq!(multi.id, built.id);
    assert_eq!(multi.architecture, "amd64");

    // Errors name the registry, the repository and the status.
    let err = store
        .pull(
            &format!("{addr}/berth/nothing:here"),
            &PullOptions::default(),
        )
        .expect_err("missing repository");
    let msg = err.to_string();
    assert!(
        msg.contains(&addr) && msg.contains("berth/nothing") && msg.contains("404"),
        "{msg}"
    );

    // Removing every name collects everything.
    for name in [reference.as_str(), &docker.name, &multi.name] {
        store.remove(name, &HashSet::new()).expect("remove");
    }
    assert!(store.list().expect("list").is_empty());
    assert!(store.blobs().list().expect("blobs").is_empty());
    assert_eq!(
        fs::read_dir(store.root().join("layers"))
            .expect("layers")
            .count(),
        0
    );
}
